/* Builtin operators ("aten::add", ...) that any worker runs for DRPC_BUILTIN
 * calls, on CPU float32 / float64 / int64 tensors and scalars. */
#ifndef DRPC_OPS_H
#define DRPC_OPS_H

#include <stdbool.h>

#include "drpc/error.h"
#include "drpc/value.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef drpc_value *(*drpc_op_fn)(const drpc_value *args,
                                  const drpc_value *kwargs, drpc_error *err);

/* The implementation of a builtin op, NULL when name is unknown. */
drpc_op_fn drpc_op_lookup(const char *name);
/* Runs op name on args (a list) and kwargs (a dict or NULL, both borrowed).
 * Returns the result, or NULL with err set: DRPC_ENOTFOUND for an unknown
 * op, DRPC_EINVAL / DRPC_ETYPE for bad arguments (shape mismatch, wrong
 * dtype), with a message naming the op. */
drpc_value *drpc_op_run(const char *name, const drpc_value *args,
                        const drpc_value *kwargs, drpc_error *err);
/* NULL-terminated list of every builtin name. */
const char *const *drpc_op_names(void);

#ifdef __cplusplus
}
#endif
#endif
