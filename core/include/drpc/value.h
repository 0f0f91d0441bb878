/* Values: the trees that travel as RPC arguments and results. */
#ifndef DRPC_VALUE_H
#define DRPC_VALUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "drpc/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum drpc_value_kind {
  DRPC_VAL_NIL = 0,
  DRPC_VAL_BOOL = 1,
  DRPC_VAL_INT = 2,
  DRPC_VAL_FLOAT = 3,
  DRPC_VAL_STR = 4,
  DRPC_VAL_BYTES = 5,
  DRPC_VAL_LIST = 6,
  DRPC_VAL_DICT = 7,
  DRPC_VAL_TENSOR = 8,
  DRPC_VAL_WORKER = 9,
  DRPC_VAL_RREF = 10, /* a remote reference (see drpc/rref.h) */
  DRPC_VAL_KIND_COUNT
} drpc_value_kind;

/* Nesting deeper than this is rejected by the decoder and by
 * drpc_value_validate. */
#define DRPC_VALUE_MAX_DEPTH 64

/* A value node. Fields are readable directly (like cJSON); build and change
 * values through the functions below. A tree owns its children: freeing the
 * root frees everything, dropping one reference to each tensor. Strings and
 * bytes are NUL-terminated copies (len excludes the NUL). */
typedef struct drpc_value drpc_value;
struct drpc_rref;
struct drpc_value {
  drpc_value_kind kind;
  union {
    bool b;
    int64_t i;
    double f;
    struct {
      char *data;
      size_t len;
    } s; /* STR and BYTES */
    struct {
      drpc_value **items;
      char **keys; /* DICT only; keys[i] names items[i] */
      size_t len;
      size_t cap;
    } c; /* LIST and DICT (dicts keep insertion order) */
    drpc_tensor *t;
    struct {
      int16_t id;
      char *name;
    } w;
    struct {
      int16_t owner;
      int16_t rref_created_on;
      int64_t rref_local_id;
      int16_t fork_created_on;
      int64_t fork_local_id;
      int16_t parent;
      char *type_name;
      /* The RRef handle this node holds one reference to (built with
       * drpc_value_rref, or accepted by an agent from the wire), or NULL
       * for bare fork data (what the decoder produces). The fields above
       * are the fork data; for a handle they are informational. */
      struct drpc_rref *handle;
    } r;
  } u;
};

/* Constructors return NULL only when memory runs out. */
drpc_value *drpc_value_nil(void);
drpc_value *drpc_value_bool(bool b);
drpc_value *drpc_value_int(int64_t i);
drpc_value *drpc_value_float(double f);
drpc_value *drpc_value_str(const char *s);
drpc_value *drpc_value_strn(const char *s, size_t len);
drpc_value *drpc_value_bytes(const void *p, size_t len);
drpc_value *drpc_value_list(void);
drpc_value *drpc_value_dict(void);
/* Takes a new reference to t. */
drpc_value *drpc_value_tensor(drpc_tensor *t);
drpc_value *drpc_value_worker(int16_t id, const char *name);
/* A list made of n values, taking ownership of each (NULL items make the
 * whole call fail and free the others). */
drpc_value *drpc_value_list_of(size_t n, ...);

/* Appends v (ownership moves to the list, also on failure, when v is freed).
 * Returns 0, DRPC_ETYPE when list is not a list, DRPC_ENOMEM. */
int drpc_list_append(drpc_value *list, drpc_value *v);
/* Sets key (copied) to v, replacing an existing entry. Ownership of v moves
 * to the dict, also on failure. */
int drpc_dict_set(drpc_value *dict, const char *key, drpc_value *v);
/* Borrowed lookup; NULL when absent or when dict is not a dict. */
const drpc_value *drpc_dict_get(const drpc_value *dict, const char *key);
/* Number of items of a list or dict, bytes of a string; 0 otherwise. */
size_t drpc_value_len(const drpc_value *v);
/* Borrowed item i of a list or dict; NULL when out of range. */
const drpc_value *drpc_list_at(const drpc_value *list, size_t i);

void drpc_value_free(drpc_value *v);
/* Copies the tree; tensors are shared (new references), not copied. */
drpc_value *drpc_value_clone(const drpc_value *v);
/* Structural equality; tensors compare by value. */
bool drpc_value_equal(const drpc_value *a, const drpc_value *b);
/* Human-readable rendering into buf (truncated with "..." when it does not
 * fit). Returns the length written, excluding the NUL. */
size_t drpc_value_format(const drpc_value *v, char *buf, size_t n);

const char *drpc_value_kind_name(drpc_value_kind k);

#ifdef __cplusplus
}
#endif
#endif
