/* Futures: completed once with a value or an error; waitable from any thread;
 * callbacks and chaining. */
#ifndef DRPC_FUTURE_H
#define DRPC_FUTURE_H

#include <stdbool.h>
#include <stdint.h>

#include "drpc/env.h"
#include "drpc/error.h"
#include "drpc/value.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct drpc_future drpc_future;

/* Creates an incomplete future whose waits use env's sync primitives. The
 * creator holds one reference. NULL on no memory. */
drpc_future *drpc_future_new(const drpc_env *env);
void drpc_future_incref(drpc_future *f);
/* Drops a reference; the last one frees the value and error. */
void drpc_future_decref(drpc_future *f);

/* Completes with a value (ownership moves to the future; NULL means nil).
 * Returns DRPC_ESTATE (and frees value) when already complete. */
int drpc_future_set_value(drpc_future *f, drpc_value *value);
/* The same for a value whose CUDA tensors are still being copied into place:
 * ready (owned by the future from now on; NULL: none) says where they are
 * done. Waits (drpc_future_wait, _get, _value, _take_value) then make the
 * calling thread's current streams of those devices wait for it, and
 * callbacks run on pool streams that wait for it, so nobody waits on the
 * host and nobody reads the tensors early. */
typedef struct drpc_devready drpc_devready;
int drpc_future_set_value_ready(drpc_future *f, drpc_value *value,
                                drpc_devready *ready);
/* Completes with an error (code and message copied). DRPC_ESTATE when
 * already complete. */
int drpc_future_set_error(drpc_future *f, const drpc_error *err);
int drpc_future_fail(drpc_future *f, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

bool drpc_future_done(drpc_future *f);
/* Waits until done or timeout_s passes (< 0: forever). Returns 0 when done,
 * DRPC_ETIMEOUT, or DRPC_EDEADLOCK when called on the thread that owns the
 * agent core (it could never complete). Does not look at the outcome. */
int drpc_future_wait(drpc_future *f, double timeout_s);
/* Borrowed value of a completed future (NULL when not done or failed). */
const drpc_value *drpc_future_value(drpc_future *f);
/* Moves the value out (the future then holds nil). */
drpc_value *drpc_future_take_value(drpc_future *f);
/* The error of a completed future: 0 when it succeeded. Copies the message
 * into err when err is non-NULL. */
int drpc_future_error(drpc_future *f, drpc_error *err);

/* Waits (timeout_s < 0: forever) and returns the outcome: 0 and a borrowed
 * value, or the error. */
int drpc_future_get(drpc_future *f, double timeout_s, const drpc_value **value,
                    drpc_error *err);

/* Callback run once the future completes (at once when it already has).
 * Callbacks run in the order added, on the thread that completes the future
 * or the one adding the callback; they must not block. */
typedef void (*drpc_future_cb)(drpc_future *f, void *arg);
int drpc_future_add_done_callback(drpc_future *f, drpc_future_cb cb, void *arg);

/* Chaining: when f completes, fn runs with f and returns the child's value
 * (return 0 and set *out) or an error (return non-zero with err set). When
 * f fails, fn still runs and may recover. The child future is returned with
 * one reference for the caller. */
typedef int (*drpc_then_fn)(drpc_future *f, void *arg, drpc_value **out,
                            drpc_error *err);
drpc_future *drpc_future_then(drpc_future *f, drpc_then_fn fn, void *arg);

/* Waits for all futures (timeout_s < 0: forever; shared deadline). Returns 0
 * when all succeeded, else the first error in list order (copied into err),
 * or DRPC_ETIMEOUT. */
int drpc_future_wait_all(drpc_future **fs, size_t n, double timeout_s,
                         drpc_error *err);

/* The env a future was made with. */
const drpc_env *drpc_future_env(drpc_future *f);

#ifdef __cplusplus
}
#endif
#endif
