/* The key-value store: generic entry points, the sorted table every store
 * keeps its data in, and the in-memory and prefix stores. */
#include "drpc/store.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_proto.h"

/* ---- argument checks and generic entry points ------------------------ */

int drpc_store_check_key(const char *what, const char *key, size_t klen,
                         drpc_error *err) {
  if (!key)
    return drpc_error_set(err, DRPC_EINVAL, "%s is NULL", what);
  if (klen == 0)
    return drpc_error_set(err, DRPC_EINVAL, "%s is empty", what);
  if (klen > DRPC_STORE_MAX_KEY)
    return drpc_error_set(err, DRPC_ETOOBIG, "%s length %zu exceeds limit %d",
                          what, klen, DRPC_STORE_MAX_KEY);
  const char *nul = memchr(key, 0, klen);
  if (nul)
    return drpc_error_set(err, DRPC_EINVAL, "%s has a NUL byte at index %zu",
                          what, (size_t)(nul - key));
  return 0;
}

/* Keys reach the API as C strings, so strnlen bounds the scan: a key
 * without a terminator within the limit is reported as too long. */
static int check_ckey(const char *key, drpc_error *err) {
  if (!key)
    return drpc_error_set(err, DRPC_EINVAL, "key is NULL");
  size_t klen = strnlen(key, DRPC_STORE_MAX_KEY + 1);
  return drpc_store_check_key("key", key, klen, err);
}

static int check_value(const char *what, const void *val, size_t len,
                       drpc_error *err) {
  if (!val && len > 0)
    return drpc_error_set(err, DRPC_EINVAL, "%s is NULL but its length is %zu",
                          what, len);
  if (len > DRPC_STORE_MAX_VALUE)
    return drpc_error_set(err, DRPC_ETOOBIG, "%s length %zu exceeds limit %u",
                          what, len, DRPC_STORE_MAX_VALUE);
  return 0;
}

static int check_store(const drpc_store *s, drpc_error *err) {
  if (!s || !s->ops)
    return drpc_error_set(err, DRPC_EINVAL, "store is NULL");
  return 0;
}

static int check_timeout(double timeout_s, drpc_error *err) {
  /* NaN compares unequal to itself; core avoids math.h for one test. */
  if (timeout_s != timeout_s)
    return drpc_error_set(err, DRPC_EINVAL, "timeout_s is not a number");
  return 0;
}

double drpc_store_resolve_timeout(const drpc_store *s, double timeout_s) {
  if (timeout_s >= 0)
    return timeout_s;
  if (s && s->timeout_s > 0)
    return s->timeout_s;
  return 0;
}

int drpc_store_set(drpc_store *s, const char *key, const void *val, size_t len,
                   drpc_error *err) {
  int rc;
  if ((rc = check_store(s, err)) || (rc = check_ckey(key, err)) ||
      (rc = check_value("value", val, len, err)))
    return rc;
  return s->ops->set(s, key, val ? val : "", len, err);
}

int drpc_store_set_str(drpc_store *s, const char *key, const char *val,
                       drpc_error *err) {
  if (!val)
    return drpc_error_set(err, DRPC_EINVAL, "value is NULL");
  return drpc_store_set(s, key, val, strlen(val), err);
}

int drpc_store_get(drpc_store *s, const char *key, double timeout_s, void **val,
                   size_t *len, drpc_error *err) {
  int rc;
  if (val)
    *val = NULL;
  if (len)
    *len = 0;
  if ((rc = check_store(s, err)) || (rc = check_ckey(key, err)) ||
      (rc = check_timeout(timeout_s, err)))
    return rc;
  if (!val || !len)
    return drpc_error_set(err, DRPC_EINVAL, "get needs val and len outputs");
  rc = s->ops->get(s, key, drpc_store_resolve_timeout(s, timeout_s), val, len,
                   err);
  if (rc) {
    free(*val);
    *val = NULL;
    *len = 0;
  }
  return rc;
}

int drpc_store_add(drpc_store *s, const char *key, int64_t delta, int64_t *out,
                   drpc_error *err) {
  int rc;
  int64_t ignored;
  if (out)
    *out = 0;
  if ((rc = check_store(s, err)) || (rc = check_ckey(key, err)))
    return rc;
  return s->ops->add(s, key, delta, out ? out : &ignored, err);
}

int drpc_store_wait(drpc_store *s, const char *const *keys, size_t n,
                    double timeout_s, drpc_error *err) {
  int rc;
  if ((rc = check_store(s, err)) || (rc = check_timeout(timeout_s, err)))
    return rc;
  if (n == 0)
    return 0;
  if (!keys)
    return drpc_error_set(err, DRPC_EINVAL, "keys is NULL but n is %zu", n);
  if (n > DRPC_STORE_MAX_WAIT_KEYS)
    return drpc_error_set(err, DRPC_ETOOBIG,
                          "wait names %zu keys, more than the limit %d", n,
                          DRPC_STORE_MAX_WAIT_KEYS);
  for (size_t i = 0; i < n; i++)
    if ((rc = check_ckey(keys[i], err))) {
      drpc_error_prefix(err, "wait key %zu", i);
      return rc;
    }
  return s->ops->wait(s, keys, n, drpc_store_resolve_timeout(s, timeout_s),
                      err);
}

int drpc_store_compare_set(drpc_store *s, const char *key, const void *expected,
                           size_t elen, const void *desired, size_t dlen,
                           void **actual, size_t *alen, drpc_error *err) {
  int rc;
  void *ignored_val = NULL;
  size_t ignored_len;
  if (actual)
    *actual = NULL;
  if (alen)
    *alen = 0;
  if ((rc = check_store(s, err)) || (rc = check_ckey(key, err)) ||
      (rc = check_value("expected value", expected, elen, err)) ||
      (rc = check_value("desired value", desired, dlen, err)))
    return rc;
  void **a = actual ? actual : &ignored_val;
  size_t *al = alen ? alen : &ignored_len;
  rc = s->ops->compare_set(s, key, expected ? expected : "", elen,
                           desired ? desired : "", dlen, a, al, err);
  if (rc || !actual) {
    free(*a);
    *a = NULL;
    *al = 0;
  }
  return rc;
}

int drpc_store_delete(drpc_store *s, const char *key, bool *deleted,
                      drpc_error *err) {
  int rc;
  bool ignored;
  if (deleted)
    *deleted = false;
  if ((rc = check_store(s, err)) || (rc = check_ckey(key, err)))
    return rc;
  return s->ops->del(s, key, deleted ? deleted : &ignored, err);
}

int drpc_store_num_keys(drpc_store *s, int64_t *out, drpc_error *err) {
  int rc;
  if (out)
    *out = 0;
  if ((rc = check_store(s, err)))
    return rc;
  if (!out)
    return drpc_error_set(err, DRPC_EINVAL, "num_keys needs an output");
  return s->ops->num_keys(s, out, err);
}

int drpc_store_list(drpc_store *s, const char *prefix, char ***keys, size_t *n,
                    drpc_error *err) {
  int rc;
  if (keys)
    *keys = NULL;
  if (n)
    *n = 0;
  if ((rc = check_store(s, err)))
    return rc;
  if (!keys || !n)
    return drpc_error_set(err, DRPC_EINVAL, "list needs keys and n outputs");
  if (!prefix)
    prefix = "";
  size_t plen = strnlen(prefix, DRPC_STORE_MAX_KEY + 1);
  if (plen > DRPC_STORE_MAX_KEY)
    return drpc_error_set(err, DRPC_ETOOBIG,
                          "list prefix length exceeds limit %d",
                          DRPC_STORE_MAX_KEY);
  rc = s->ops->list(s, prefix, keys, n, err);
  if (rc) {
    drpc_store_keys_free(*keys, *n);
    *keys = NULL;
    *n = 0;
  }
  return rc;
}

void drpc_store_incref(drpc_store *s) {
  if (s)
    __atomic_add_fetch(&s->refcount, 1, __ATOMIC_RELAXED);
}

void drpc_store_decref(drpc_store *s) {
  if (!s)
    return;
  int left = __atomic_sub_fetch(&s->refcount, 1, __ATOMIC_ACQ_REL);
  assert(left >= 0);
  if (left == 0)
    s->ops->free(s);
}

void drpc_store_keys_free(char **keys, size_t n) {
  if (!keys)
    return;
  for (size_t i = 0; i < n; i++)
    free(keys[i]);
  free(keys);
}

/* ---- the table -------------------------------------------------------- */

/* One allocation per entry: the struct, the key and the value, each string
 * NUL-terminated so callers may treat them as C strings. A set replaces the
 * whole entry, which keeps borrowed pointers simple to reason about. */
typedef struct entry {
  size_t klen, vlen;
  uint8_t *val;
  char key[];
} entry;

struct drpc_store_table {
  entry **e; /* sorted by key bytes */
  size_t n, cap;
  size_t bytes; /* sum of klen + vlen, bounded by DRPC_STORE_MAX_BYTES */
};

drpc_store_table *drpc_store_table_new(void) {
  return calloc(1, sizeof(drpc_store_table));
}

void drpc_store_table_free(drpc_store_table *t) {
  if (!t)
    return;
  for (size_t i = 0; i < t->n; i++)
    free(t->e[i]);
  free(t->e);
  free(t);
}

static int key_cmp(const char *a, size_t alen, const char *b, size_t blen) {
  int c = memcmp(a, b, alen < blen ? alen : blen);
  if (c)
    return c;
  return alen < blen ? -1 : alen > blen;
}

/* The index of the first entry not less than key. */
static size_t lower_bound(const drpc_store_table *t, const char *key,
                          size_t klen) {
  size_t lo = 0, hi = t->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (key_cmp(t->e[mid]->key, t->e[mid]->klen, key, klen) < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

static entry *lookup(const drpc_store_table *t, const char *key, size_t klen,
                     size_t *idx) {
  size_t i = lower_bound(t, key, klen);
  if (idx)
    *idx = i;
  if (i < t->n && key_cmp(t->e[i]->key, t->e[i]->klen, key, klen) == 0)
    return t->e[i];
  return NULL;
}

bool drpc_store_table_find(const drpc_store_table *t, const char *key,
                           size_t klen, const uint8_t **val, size_t *len) {
  entry *e = lookup(t, key, klen, NULL);
  if (val)
    *val = e ? e->val : NULL;
  if (len)
    *len = e ? e->vlen : 0;
  return e != NULL;
}

/* Inserts or replaces key; on success *out points at the stored entry. */
static int table_put(drpc_store_table *t, const char *key, size_t klen,
                     const void *val, size_t len, entry **out,
                     drpc_error *err) {
  size_t idx;
  entry *old = lookup(t, key, klen, &idx);
  size_t bytes = t->bytes - (old ? old->klen + old->vlen : 0) + klen + len;
  if (!old && t->n >= DRPC_STORE_MAX_KEYS)
    return drpc_error_set(err, DRPC_ETOOBIG,
                          "store already holds %zu keys, its limit", t->n);
  if (bytes > DRPC_STORE_MAX_BYTES)
    return drpc_error_set(err, DRPC_ETOOBIG,
                          "store would hold %zu bytes, more than its limit "
                          "%llu",
                          bytes, (unsigned long long)DRPC_STORE_MAX_BYTES);
  if (!old && t->n == t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 16;
    if (cap > DRPC_STORE_MAX_KEYS)
      cap = DRPC_STORE_MAX_KEYS;
    entry **e = realloc(t->e, cap * sizeof(*e));
    if (!e)
      return drpc_error_set(err, DRPC_ENOMEM, "out of memory growing store");
    t->e = e;
    t->cap = cap;
  }
  entry *ne = malloc(sizeof(entry) + klen + 1 + len + 1);
  if (!ne)
    return drpc_error_set(err, DRPC_ENOMEM,
                          "out of memory storing a %zu-byte value", len);
  ne->klen = klen;
  ne->vlen = len;
  memcpy(ne->key, key, klen);
  ne->key[klen] = 0;
  ne->val = (uint8_t *)ne->key + klen + 1;
  if (len)
    memcpy(ne->val, val, len);
  ne->val[len] = 0;
  if (old) {
    free(old);
  } else {
    memmove(&t->e[idx + 1], &t->e[idx], (t->n - idx) * sizeof(*t->e));
    t->n++;
  }
  t->e[idx] = ne;
  t->bytes = bytes;
  *out = ne;
  return 0;
}

int drpc_store_table_set(drpc_store_table *t, const char *key, size_t klen,
                         const void *val, size_t len, drpc_error *err) {
  entry *e;
  return table_put(t, key, klen, val, len, &e, err);
}

/* Parses decimal integer text (optional sign, 1-19 digits) as add accepts
 * it; false for anything else or an out-of-range number. */
static bool parse_i64(const uint8_t *p, size_t len, int64_t *out) {
  size_t i = 0;
  bool neg = false;
  if (len > 0 && (p[0] == '-' || p[0] == '+')) {
    neg = p[0] == '-';
    i = 1;
  }
  if (i == len)
    return false;
  uint64_t v = 0;
  const uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
  for (; i < len; i++) {
    if (p[i] < '0' || p[i] > '9')
      return false;
    unsigned d = p[i] - '0';
    if (v > (limit - d) / 10)
      return false;
    v = v * 10 + d;
  }
  *out = neg ? (int64_t)(0 - v) : (int64_t)v;
  return true;
}

/* Describes a value for an error message without dumping binary or huge
 * data into it. */
static void value_preview(const uint8_t *p, size_t len, char *buf, size_t n) {
  bool printable = len <= 40;
  for (size_t i = 0; printable && i < len; i++)
    printable = p[i] >= 0x20 && p[i] < 0x7f;
  if (printable)
    snprintf(buf, n, "'%.*s'", (int)len, (const char *)p);
  else
    snprintf(buf, n, "a %zu-byte value", len);
}

int drpc_store_table_add(drpc_store_table *t, const char *key, size_t klen,
                         int64_t delta, int64_t *out, drpc_error *err) {
  const uint8_t *val;
  size_t len;
  int64_t cur = 0, sum;
  if (drpc_store_table_find(t, key, klen, &val, &len) &&
      !parse_i64(val, len, &cur)) {
    char preview[64];
    value_preview(val, len, preview, sizeof(preview));
    return drpc_error_set(err, DRPC_EINVAL,
                          "add: value of key '%.*s' is not an integer: %s",
                          (int)klen, key, preview);
  }
  if (__builtin_add_overflow(cur, delta, &sum))
    return drpc_error_set(err, DRPC_EINVAL,
                          "add: %lld + %lld at key '%.*s' overflows int64",
                          (long long)cur, (long long)delta, (int)klen, key);
  char text[24];
  int tlen = snprintf(text, sizeof(text), "%lld", (long long)sum);
  int rc = drpc_store_table_set(t, key, klen, text, (size_t)tlen, err);
  if (rc == 0 && out)
    *out = sum;
  return rc;
}

int drpc_store_table_compare_set(drpc_store_table *t, const char *key,
                                 size_t klen, const void *expected, size_t elen,
                                 const void *desired, size_t dlen,
                                 const uint8_t **actual, size_t *alen,
                                 bool *changed, drpc_error *err) {
  static const uint8_t empty[1] = {0};
  entry *e = lookup(t, key, klen, NULL);
  bool match =
      e ? (e->vlen == elen && memcmp(e->val, expected, elen) == 0) : elen == 0;
  if (changed)
    *changed = false;
  if (match) {
    int rc = table_put(t, key, klen, desired, dlen, &e, err);
    if (rc)
      return rc;
    if (changed)
      *changed = true;
  }
  *actual = e ? e->val : empty;
  *alen = e ? e->vlen : 0;
  return 0;
}

bool drpc_store_table_delete(drpc_store_table *t, const char *key,
                             size_t klen) {
  size_t idx;
  entry *e = lookup(t, key, klen, &idx);
  if (!e)
    return false;
  t->bytes -= e->klen + e->vlen;
  free(e);
  memmove(&t->e[idx], &t->e[idx + 1], (t->n - idx - 1) * sizeof(*t->e));
  t->n--;
  return true;
}

size_t drpc_store_table_count(const drpc_store_table *t) {
  return t->n;
}

int drpc_store_table_list(const drpc_store_table *t, const char *prefix,
                          size_t plen, char ***keys, size_t *n,
                          drpc_error *err) {
  size_t first = lower_bound(t, prefix, plen), end = first;
  while (end < t->n && t->e[end]->klen >= plen &&
         memcmp(t->e[end]->key, prefix, plen) == 0)
    end++;
  *keys = NULL;
  *n = 0;
  /* One slot more than needed so an empty result is still an allocation
   * the caller frees the same way. */
  char **out = calloc(end - first + 1, sizeof(*out));
  if (!out)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory listing keys");
  for (size_t i = first; i < end; i++) {
    out[i - first] = malloc(t->e[i]->klen + 1);
    if (!out[i - first]) {
      drpc_store_keys_free(out, i - first);
      return drpc_error_set(err, DRPC_ENOMEM, "out of memory listing keys");
    }
    memcpy(out[i - first], t->e[i]->key, t->e[i]->klen + 1);
  }
  *keys = out;
  *n = end - first;
  return 0;
}

void drpc_store_table_entry(const drpc_store_table *t, size_t i,
                            const char **key, size_t *klen, const uint8_t **val,
                            size_t *vlen) {
  assert(i < t->n);
  *key = t->e[i]->key;
  *klen = t->e[i]->klen;
  *val = t->e[i]->val;
  *vlen = t->e[i]->vlen;
}

int drpc_store_timeout_error(drpc_error *err, double timeout_s,
                             const char *const *keys, const size_t *lens,
                             size_t named_n, size_t total_missing) {
  static const char head[] = "timed out after %.2f s waiting for keys: ";
  char first[128];
  int flen = snprintf(first, sizeof(first), head, timeout_s);
  if (flen < 0 || (size_t)flen >= sizeof(first))
    flen = 0;
  size_t size = (size_t)flen + 64;
  for (size_t i = 0; i < named_n; i++)
    size += lens[i] + 2;
  char *msg = malloc(size);
  if (!msg)
    return drpc_error_set(err, DRPC_ETIMEOUT,
                          "timed out after %.2f s waiting for %zu keys",
                          timeout_s, total_missing);
  size_t at = (size_t)flen;
  memcpy(msg, first, at);
  for (size_t i = 0; i < named_n; i++) {
    if (i) {
      memcpy(msg + at, ", ", 2);
      at += 2;
    }
    memcpy(msg + at, keys[i], lens[i]);
    at += lens[i];
  }
  msg[at] = 0;
  if (total_missing > named_n)
    snprintf(msg + at, size - at, ", and %zu more", total_missing - named_n);
  drpc_error_set(err, DRPC_ETIMEOUT, "%s", msg);
  free(msg);
  return DRPC_ETIMEOUT;
}

/* ---- the in-memory store ---------------------------------------------- */

typedef struct mem_store {
  drpc_store base;
  const drpc_env *env;
  drpc_sync sync; /* guards t; broadcast on every change */
  drpc_store_table *t;
} mem_store;

static void mem_lock(mem_store *m) {
  m->env->ops->sync_lock(m->env->ctx, &m->sync);
}

static void mem_unlock(mem_store *m) {
  m->env->ops->sync_unlock(m->env->ctx, &m->sync);
}

static void mem_changed(mem_store *m) {
  m->env->ops->sync_broadcast(m->env->ctx, &m->sync);
}

/* The env-clock deadline for timeout_s from now; 0 means none. Timeouts
 * too long to represent are treated as forever. */
static uint64_t mem_deadline(mem_store *m, double timeout_s) {
  if (timeout_s <= 0)
    return 0;
  uint64_t now = drpc_env_now(m->env);
  if (timeout_s >= 1e9)
    return 0;
  uint64_t d = now + (uint64_t)(timeout_s * 1e9);
  return d ? d : 1;
}

/* Waits on the sync once; false when the deadline has passed. Called with
 * the lock held. */
static bool mem_wait_once(mem_store *m, uint64_t deadline_ns) {
  if (deadline_ns && drpc_env_now(m->env) >= deadline_ns)
    return false;
  m->env->ops->sync_wait(m->env->ctx, &m->sync, deadline_ns);
  return true;
}

static int mem_set(drpc_store *s, const char *key, const void *val, size_t len,
                   drpc_error *err) {
  mem_store *m = (mem_store *)s;
  mem_lock(m);
  int rc = drpc_store_table_set(m->t, key, strlen(key), val, len, err);
  if (rc == 0)
    mem_changed(m);
  mem_unlock(m);
  return rc;
}

static int mem_get(drpc_store *s, const char *key, double timeout_s, void **val,
                   size_t *len, drpc_error *err) {
  mem_store *m = (mem_store *)s;
  size_t klen = strlen(key);
  timeout_s = drpc_store_resolve_timeout(s, timeout_s);
  int rc = 0;
  mem_lock(m);
  uint64_t deadline_ns = mem_deadline(m, timeout_s);
  const uint8_t *v;
  size_t vlen;
  while (!drpc_store_table_find(m->t, key, klen, &v, &vlen)) {
    if (!mem_wait_once(m, deadline_ns)) {
      rc = drpc_store_timeout_error(err, timeout_s, &key, &klen, 1, 1);
      goto out;
    }
  }
  *val = malloc(vlen + 1);
  if (!*val) {
    rc = drpc_error_set(err, DRPC_ENOMEM,
                        "out of memory copying a %zu-byte value", vlen);
    goto out;
  }
  memcpy(*val, v, vlen + 1);
  *len = vlen;
out:
  mem_unlock(m);
  return rc;
}

static int mem_add(drpc_store *s, const char *key, int64_t delta, int64_t *out,
                   drpc_error *err) {
  mem_store *m = (mem_store *)s;
  mem_lock(m);
  int rc = drpc_store_table_add(m->t, key, strlen(key), delta, out, err);
  if (rc == 0)
    mem_changed(m);
  mem_unlock(m);
  return rc;
}

/* Counts the missing keys and remembers the first few for a message. */
static size_t mem_missing(mem_store *m, const char *const *keys, size_t n,
                          const char **named, size_t *lens, size_t *named_n) {
  size_t missing = 0;
  *named_n = 0;
  for (size_t i = 0; i < n; i++) {
    size_t klen = strlen(keys[i]);
    if (drpc_store_table_find(m->t, keys[i], klen, NULL, NULL))
      continue;
    if (missing < DRPC_STORE_TIMEOUT_NAMED_KEYS) {
      named[missing] = keys[i];
      lens[missing] = klen;
      *named_n = missing + 1;
    }
    missing++;
  }
  return missing;
}

static int mem_wait(drpc_store *s, const char *const *keys, size_t n,
                    double timeout_s, drpc_error *err) {
  mem_store *m = (mem_store *)s;
  const char *named[DRPC_STORE_TIMEOUT_NAMED_KEYS];
  size_t lens[DRPC_STORE_TIMEOUT_NAMED_KEYS], named_n;
  int rc = 0;
  timeout_s = drpc_store_resolve_timeout(s, timeout_s);
  mem_lock(m);
  uint64_t deadline_ns = mem_deadline(m, timeout_s);
  size_t missing;
  while ((missing = mem_missing(m, keys, n, named, lens, &named_n)) > 0) {
    if (!mem_wait_once(m, deadline_ns)) {
      rc = drpc_store_timeout_error(err, timeout_s, named, lens, named_n,
                                    missing);
      break;
    }
  }
  mem_unlock(m);
  return rc;
}

static int mem_compare_set(drpc_store *s, const char *key, const void *expected,
                           size_t elen, const void *desired, size_t dlen,
                           void **actual, size_t *alen, drpc_error *err) {
  mem_store *m = (mem_store *)s;
  const uint8_t *a;
  size_t al;
  bool changed;
  mem_lock(m);
  int rc = drpc_store_table_compare_set(m->t, key, strlen(key), expected, elen,
                                        desired, dlen, &a, &al, &changed, err);
  if (rc == 0) {
    if (changed)
      mem_changed(m);
    *actual = malloc(al + 1);
    if (*actual) {
      memcpy(*actual, a, al + 1);
      *alen = al;
    } else {
      rc = drpc_error_set(err, DRPC_ENOMEM,
                          "out of memory copying a %zu-byte value", al);
    }
  }
  mem_unlock(m);
  return rc;
}

static int mem_del(drpc_store *s, const char *key, bool *deleted,
                   drpc_error *err) {
  mem_store *m = (mem_store *)s;
  (void)err;
  mem_lock(m);
  *deleted = drpc_store_table_delete(m->t, key, strlen(key));
  if (*deleted)
    mem_changed(m);
  mem_unlock(m);
  return 0;
}

static int mem_num_keys(drpc_store *s, int64_t *out, drpc_error *err) {
  mem_store *m = (mem_store *)s;
  (void)err;
  mem_lock(m);
  *out = (int64_t)drpc_store_table_count(m->t);
  mem_unlock(m);
  return 0;
}

static int mem_list(drpc_store *s, const char *prefix, char ***keys, size_t *n,
                    drpc_error *err) {
  mem_store *m = (mem_store *)s;
  mem_lock(m);
  int rc = drpc_store_table_list(m->t, prefix, strlen(prefix), keys, n, err);
  mem_unlock(m);
  return rc;
}

static void mem_free(drpc_store *s) {
  mem_store *m = (mem_store *)s;
  m->env->ops->sync_destroy(m->env->ctx, &m->sync);
  drpc_store_table_free(m->t);
  free(m);
}

static const drpc_store_ops mem_ops = {
    .set = mem_set,
    .get = mem_get,
    .add = mem_add,
    .wait = mem_wait,
    .compare_set = mem_compare_set,
    .del = mem_del,
    .num_keys = mem_num_keys,
    .list = mem_list,
    .free = mem_free,
};

drpc_store *drpc_store_memory_new(const drpc_env *env) {
  if (!env || !env->ops)
    return NULL;
  mem_store *m = calloc(1, sizeof(*m));
  if (!m)
    goto fail_alloc;
  m->t = drpc_store_table_new();
  if (!m->t)
    goto fail_table;
  m->env = env;
  env->ops->sync_init(env->ctx, &m->sync);
  m->base.ops = &mem_ops;
  m->base.timeout_s = DRPC_STORE_DEFAULT_TIMEOUT_S;
  m->base.refcount = 1;
  return &m->base;

fail_table:
  free(m);
fail_alloc:
  return NULL;
}

/* ---- the prefix store ------------------------------------------------- */

typedef struct prefix_store {
  drpc_store base;
  drpc_store *inner; /* a reference we own */
  char *prefix;      /* "prefix/" */
  size_t plen;       /* including the slash */
} prefix_store;

/* "prefix/key" in a new string; NULL when memory runs out. */
static char *prefixed(const prefix_store *p, const char *key) {
  size_t klen = strlen(key);
  char *s = malloc(p->plen + klen + 1);
  if (!s)
    return NULL;
  memcpy(s, p->prefix, p->plen);
  memcpy(s + p->plen, key, klen + 1);
  return s;
}

static int no_memory(drpc_error *err) {
  return drpc_error_set(err, DRPC_ENOMEM, "out of memory building a key");
}

static int prefix_set(drpc_store *s, const char *key, const void *val,
                      size_t len, drpc_error *err) {
  prefix_store *p = (prefix_store *)s;
  char *k = prefixed(p, key);
  if (!k)
    return no_memory(err);
  int rc = drpc_store_set(p->inner, k, val, len, err);
  free(k);
  return rc;
}

static int prefix_get(drpc_store *s, const char *key, double timeout_s,
                      void **val, size_t *len, drpc_error *err) {
  prefix_store *p = (prefix_store *)s;
  char *k = prefixed(p, key);
  if (!k)
    return no_memory(err);
  /* Resolved here so the view's own default applies, not the base's. */
  int rc = drpc_store_get(p->inner, k, drpc_store_resolve_timeout(s, timeout_s),
                          val, len, err);
  free(k);
  return rc;
}

static int prefix_add(drpc_store *s, const char *key, int64_t delta,
                      int64_t *out, drpc_error *err) {
  prefix_store *p = (prefix_store *)s;
  char *k = prefixed(p, key);
  if (!k)
    return no_memory(err);
  int rc = drpc_store_add(p->inner, k, delta, out, err);
  free(k);
  return rc;
}

static int prefix_wait(drpc_store *s, const char *const *keys, size_t n,
                       double timeout_s, drpc_error *err) {
  prefix_store *p = (prefix_store *)s;
  int rc = 0;
  char **ks = calloc(n ? n : 1, sizeof(*ks));
  if (!ks)
    return no_memory(err);
  for (size_t i = 0; i < n && rc == 0; i++)
    if (!(ks[i] = prefixed(p, keys[i])))
      rc = no_memory(err);
  if (rc == 0)
    rc = drpc_store_wait(p->inner, (const char *const *)ks, n,
                         drpc_store_resolve_timeout(s, timeout_s), err);
  drpc_store_keys_free(ks, n);
  return rc;
}

static int prefix_compare_set(drpc_store *s, const char *key,
                              const void *expected, size_t elen,
                              const void *desired, size_t dlen, void **actual,
                              size_t *alen, drpc_error *err) {
  prefix_store *p = (prefix_store *)s;
  char *k = prefixed(p, key);
  if (!k)
    return no_memory(err);
  int rc = drpc_store_compare_set(p->inner, k, expected, elen, desired, dlen,
                                  actual, alen, err);
  free(k);
  return rc;
}

static int prefix_del(drpc_store *s, const char *key, bool *deleted,
                      drpc_error *err) {
  prefix_store *p = (prefix_store *)s;
  char *k = prefixed(p, key);
  if (!k)
    return no_memory(err);
  int rc = drpc_store_delete(p->inner, k, deleted, err);
  free(k);
  return rc;
}

static int prefix_list(drpc_store *s, const char *prefix, char ***keys,
                       size_t *n, drpc_error *err) {
  prefix_store *p = (prefix_store *)s;
  char *k = prefixed(p, prefix);
  if (!k)
    return no_memory(err);
  int rc = drpc_store_list(p->inner, k, keys, n, err);
  free(k);
  if (rc)
    return rc;
  /* Every listed key starts with our prefix, so stripping is a move. */
  for (size_t i = 0; i < *n; i++) {
    size_t len = strlen((*keys)[i]);
    assert(len >= p->plen);
    memmove((*keys)[i], (*keys)[i] + p->plen, len - p->plen + 1);
  }
  return 0;
}

static int prefix_num_keys(drpc_store *s, int64_t *out, drpc_error *err) {
  char **keys;
  size_t n;
  int rc = prefix_list(s, "", &keys, &n, err);
  if (rc)
    return rc;
  drpc_store_keys_free(keys, n);
  *out = (int64_t)n;
  return 0;
}

static void prefix_free(drpc_store *s) {
  prefix_store *p = (prefix_store *)s;
  drpc_store_decref(p->inner);
  free(p->prefix);
  free(p);
}

static const drpc_store_ops prefix_ops = {
    .set = prefix_set,
    .get = prefix_get,
    .add = prefix_add,
    .wait = prefix_wait,
    .compare_set = prefix_compare_set,
    .del = prefix_del,
    .num_keys = prefix_num_keys,
    .list = prefix_list,
    .free = prefix_free,
};

drpc_store *drpc_store_prefix_new(drpc_store *base, const char *prefix) {
  if (!base || !prefix || !*prefix)
    return NULL;
  size_t len = strnlen(prefix, DRPC_STORE_MAX_KEY + 1);
  if (len >= DRPC_STORE_MAX_KEY)
    return NULL;
  prefix_store *p = calloc(1, sizeof(*p));
  if (!p)
    goto fail_alloc;
  p->prefix = malloc(len + 2);
  if (!p->prefix)
    goto fail_prefix;
  memcpy(p->prefix, prefix, len);
  p->prefix[len] = '/';
  p->prefix[len + 1] = 0;
  p->plen = len + 1;
  p->inner = base;
  drpc_store_incref(base);
  p->base.ops = &prefix_ops;
  p->base.timeout_s = base->timeout_s;
  p->base.refcount = 1;
  return &p->base;

fail_prefix:
  free(p);
fail_alloc:
  return NULL;
}
