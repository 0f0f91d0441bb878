/* Key-value rendezvous store: one interface, several implementations
 * (in-memory and prefix here; TCP and file in net/). All calls block the
 * calling thread up to their timeout and are safe from several threads.
 *
 * Timeouts (get and wait): timeout_s < 0 uses the store's default
 * (s->timeout_s, where 0 means forever), timeout_s == 0 waits forever and
 * timeout_s > 0 waits that many seconds. When it passes the call fails with
 * DRPC_ETIMEOUT and a message that names the missing keys:
 * "timed out after 1.50 s waiting for keys: names/2, names/3".
 *
 * Keys are NUL-terminated, non-empty and at most DRPC_STORE_MAX_KEY bytes;
 * values are byte strings of at most DRPC_STORE_MAX_VALUE bytes. Integers
 * (add) are kept as decimal text, as PyTorch's stores keep them. */
#ifndef DRPC_STORE_H
#define DRPC_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "drpc/env.h"
#include "drpc/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Longest key and value accepted by every implementation. */
#define DRPC_STORE_MAX_KEY 4096
#define DRPC_STORE_MAX_VALUE (16u << 20)
/* Most keys one wait may name. */
#define DRPC_STORE_MAX_WAIT_KEYS 4096
/* Most keys one store holds; a set beyond it fails with DRPC_ETOOBIG. */
#define DRPC_STORE_MAX_KEYS (1u << 20)
/* Most bytes of keys and values one store holds (DRPC_ETOOBIG beyond). */
#define DRPC_STORE_MAX_BYTES (1ull << 30)
/* The default wait timeout of stores whose constructor takes none (the
 * memory store), as PyTorch's TCPStore default of five minutes. */
#define DRPC_STORE_DEFAULT_TIMEOUT_S 300.0

typedef struct drpc_store drpc_store;

typedef struct drpc_store_ops {
  int (*set)(drpc_store *s, const char *key, const void *val, size_t len,
             drpc_error *err);
  /* Waits up to timeout_s (see the top of this file) for key; *val is
   * malloc'd (NUL-terminated beyond len) and freed by the caller. */
  int (*get)(drpc_store *s, const char *key, double timeout_s, void **val,
             size_t *len, drpc_error *err);
  /* Adds delta to the integer stored at key (missing = 0); returns the new
   * value in *out (may be NULL). A value that is not decimal integer text,
   * or a sum that overflows int64, fails with DRPC_EINVAL. */
  int (*add)(drpc_store *s, const char *key, int64_t delta, int64_t *out,
             drpc_error *err);
  /* Waits until every key exists. DRPC_ETIMEOUT names the missing keys. */
  int (*wait)(drpc_store *s, const char *const *keys, size_t n,
              double timeout_s, drpc_error *err);
  /* Sets key to desired when its current value equals expected (an empty
   * expected matches a missing key). *actual (malloc'd, NUL-terminated
   * beyond *alen; actual may be NULL) receives the value after the
   * operation; a key that stays missing gives an empty value (PyTorch hands
   * back expected there, which its own source calls a lie). */
  int (*compare_set)(drpc_store *s, const char *key, const void *expected,
                     size_t elen, const void *desired, size_t dlen,
                     void **actual, size_t *alen, drpc_error *err);
  /* *deleted (may be NULL) tells whether the key existed. */
  int (*del)(drpc_store *s, const char *key, bool *deleted, drpc_error *err);
  int (*num_keys)(drpc_store *s, int64_t *out, drpc_error *err);
  /* Keys starting with prefix (malloc'd array of malloc'd strings, sorted
   * by byte value; free with drpc_store_keys_free). The generic entry point
   * passes "" for a NULL prefix. */
  int (*list)(drpc_store *s, const char *prefix, char ***keys, size_t *n,
              drpc_error *err);
  /* Releases the implementation; called by drpc_store_decref. */
  void (*free)(drpc_store *s);
} drpc_store_ops;

struct drpc_store {
  const drpc_store_ops *ops;
  double timeout_s; /* default wait timeout; 0 = forever */
  int refcount;     /* starts at 1; changed atomically */
};

/* Generic entry points (NULL-safe on err). They check their arguments
 * (DRPC_EINVAL for a NULL store, an empty or NULL key, a NULL output;
 * DRPC_ETOOBIG for a key or value over its limit), resolve a timeout_s < 0
 * to the store's default, and call the implementation. Output pointers
 * are cleared on failure. Implementations add DRPC_ETIMEOUT (get, wait),
 * DRPC_ECONN / DRPC_EIO (TCP and file stores) and DRPC_ENOMEM. */
int drpc_store_set(drpc_store *s, const char *key, const void *val, size_t len,
                   drpc_error *err);
int drpc_store_set_str(drpc_store *s, const char *key, const char *val,
                       drpc_error *err);
int drpc_store_get(drpc_store *s, const char *key, double timeout_s, void **val,
                   size_t *len, drpc_error *err);
int drpc_store_add(drpc_store *s, const char *key, int64_t delta, int64_t *out,
                   drpc_error *err);
int drpc_store_wait(drpc_store *s, const char *const *keys, size_t n,
                    double timeout_s, drpc_error *err);
int drpc_store_compare_set(drpc_store *s, const char *key, const void *expected,
                           size_t elen, const void *desired, size_t dlen,
                           void **actual, size_t *alen, drpc_error *err);
int drpc_store_delete(drpc_store *s, const char *key, bool *deleted,
                      drpc_error *err);
int drpc_store_num_keys(drpc_store *s, int64_t *out, drpc_error *err);
int drpc_store_list(drpc_store *s, const char *prefix, char ***keys, size_t *n,
                    drpc_error *err);
/* The effective timeout of a get or wait: timeout_s itself when >= 0,
 * otherwise s->timeout_s (a negative default also means forever, 0). */
double drpc_store_resolve_timeout(const drpc_store *s, double timeout_s);
/* Reference counting: a new store holds one reference; the last decref
 * frees it. Both are NULL-safe. */
void drpc_store_incref(drpc_store *s);
void drpc_store_decref(drpc_store *s);
/* Frees an array returned by list. */
void drpc_store_keys_free(char **keys, size_t n);

/* In-memory store for agents in one process (tests, the simulator); waits
 * use env's sync primitives and clock (env is borrowed and must outlive the
 * store). The default timeout is DRPC_STORE_DEFAULT_TIMEOUT_S. NULL when
 * memory runs out or env is NULL. */
drpc_store *drpc_store_memory_new(const drpc_env *env);

/* A view of base under "prefix/" (takes a reference to base): every key k
 * becomes "prefix/k", list strips the prefix again and num_keys counts only
 * the keys under the prefix. Timeout messages name the full keys. The
 * default timeout is copied from base. NULL for a NULL base, an empty or
 * NULL prefix, or no memory. */
drpc_store *drpc_store_prefix_new(drpc_store *base, const char *prefix);

#ifdef __cplusplus
}
#endif
#endif
