/* Value trees: constructors, list and dict operations, copy, compare, print. */
#include "drpc/value.h"

#include "drpc/error.h"
#include "drpc/rref.h"

#include "tcache.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Copies len bytes and adds a NUL, so strings and bytes can be handed to C
 * string functions whatever they hold. */
static char *copy_bytes(const void *p, size_t len) {
  if (len == SIZE_MAX)
    return NULL;
  char *s = malloc(len + 1);
  if (!s)
    return NULL;
  if (len)
    memcpy(s, p, len);
  s[len] = '\0';
  return s;
}

static char *copy_cstr(const char *s) {
  return copy_bytes(s, strlen(s));
}

/* Freed value nodes, kept per thread for the next ones (decoding a message
 * makes a node per value, and freeing it frees them all). */
#define NODE_CACHE 256
typedef struct node_cache {
  drpc_value *v[NODE_CACHE];
  int n;
} node_cache;

static _Thread_local node_cache *tl_nodes;

static void nodes_destroy(void *arg) {
  node_cache *c = arg;
  while (c->n)
    free(c->v[--c->n]);
  free(c);
}

static drpc_value *node_new(drpc_value_kind kind) {
  node_cache *c = tl_nodes;
  drpc_value *v;
  if (DRPC_TCACHE_ON && c && c->n) {
    v = c->v[--c->n];
    memset(v, 0, sizeof(*v));
  } else {
    v = calloc(1, sizeof(*v));
  }
  if (v)
    v->kind = kind;
  return v;
}

static void node_free(drpc_value *v) {
  node_cache *c = tl_nodes;
  if (DRPC_TCACHE_ON && !c)
    c = tl_nodes =
        drpc_tcache_make(DRPC_TCACHE_VALUES, sizeof(*c), nodes_destroy);
  if (!DRPC_TCACHE_ON || !c || c->n == NODE_CACHE) {
    free(v);
    return;
  }
  c->v[c->n++] = v;
}

drpc_value *drpc_value_nil(void) {
  return node_new(DRPC_VAL_NIL);
}

drpc_value *drpc_value_bool(bool b) {
  drpc_value *v = node_new(DRPC_VAL_BOOL);
  if (v)
    v->u.b = b;
  return v;
}

drpc_value *drpc_value_int(int64_t i) {
  drpc_value *v = node_new(DRPC_VAL_INT);
  if (v)
    v->u.i = i;
  return v;
}

drpc_value *drpc_value_float(double f) {
  drpc_value *v = node_new(DRPC_VAL_FLOAT);
  if (v)
    v->u.f = f;
  return v;
}

static drpc_value *bytes_node(drpc_value_kind kind, const void *p, size_t len) {
  if (!p && len)
    return NULL;
  drpc_value *v = node_new(kind);
  if (!v)
    return NULL;
  v->u.s.data = copy_bytes(p, len);
  if (!v->u.s.data) {
    node_free(v);
    return NULL;
  }
  v->u.s.len = len;
  return v;
}

drpc_value *drpc_value_str(const char *s) {
  if (!s)
    s = "";
  return bytes_node(DRPC_VAL_STR, s, strlen(s));
}

drpc_value *drpc_value_strn(const char *s, size_t len) {
  return bytes_node(DRPC_VAL_STR, s, len);
}

drpc_value *drpc_value_bytes(const void *p, size_t len) {
  return bytes_node(DRPC_VAL_BYTES, p, len);
}

drpc_value *drpc_value_list(void) {
  return node_new(DRPC_VAL_LIST);
}

drpc_value *drpc_value_dict(void) {
  return node_new(DRPC_VAL_DICT);
}

drpc_value *drpc_value_tensor(drpc_tensor *t) {
  drpc_value *v = node_new(DRPC_VAL_TENSOR);
  if (!v)
    return NULL;
  if (t)
    drpc_tensor_incref(t);
  v->u.t = t;
  return v;
}

drpc_value *drpc_value_worker(int16_t id, const char *name) {
  drpc_value *v = node_new(DRPC_VAL_WORKER);
  if (!v)
    return NULL;
  v->u.w.id = id;
  v->u.w.name = copy_cstr(name ? name : "");
  if (!v->u.w.name) {
    node_free(v);
    return NULL;
  }
  return v;
}

drpc_value *drpc_value_list_of(size_t n, ...) {
  drpc_value *list = drpc_value_list();
  bool failed = list == NULL;
  va_list ap;
  va_start(ap, n);
  /* Every argument is consumed even after a failure, so that each one the
   * caller handed over is freed exactly once. */
  for (size_t i = 0; i < n; i++) {
    drpc_value *x = va_arg(ap, drpc_value *);
    if (!x)
      failed = true;
    else if (failed)
      drpc_value_free(x);
    else if (drpc_list_append(list, x) != 0)
      failed = true;
  }
  va_end(ap);
  if (failed) {
    drpc_value_free(list);
    return NULL;
  }
  return list;
}

/* Makes room for one more item, doubling the capacity; every size is
 * checked so that the arithmetic cannot wrap. */
static int reserve_one(drpc_value *c) {
  if (c->u.c.len < c->u.c.cap)
    return 0;
  size_t cap = c->u.c.cap ? c->u.c.cap : 4;
  if (c->u.c.cap) {
    if (cap > SIZE_MAX / 2)
      return DRPC_ENOMEM;
    cap *= 2;
  }
  if (cap > SIZE_MAX / sizeof(void *))
    return DRPC_ENOMEM;
  drpc_value **items = realloc(c->u.c.items, cap * sizeof(*items));
  if (!items)
    return DRPC_ENOMEM;
  c->u.c.items = items;
  if (c->kind == DRPC_VAL_DICT) {
    char **keys = realloc(c->u.c.keys, cap * sizeof(*keys));
    if (!keys)
      return DRPC_ENOMEM; /* items grew but cap did not: still consistent */
    c->u.c.keys = keys;
  }
  c->u.c.cap = cap;
  return 0;
}

int drpc_list_append(drpc_value *list, drpc_value *v) {
  /* A NULL v is what a constructor returns when memory ran out. */
  if (!v)
    return DRPC_ENOMEM;
  if (!list || list->kind != DRPC_VAL_LIST) {
    drpc_value_free(v);
    return DRPC_ETYPE;
  }
  int rc = reserve_one(list);
  if (rc) {
    drpc_value_free(v);
    return rc;
  }
  list->u.c.items[list->u.c.len++] = v;
  return 0;
}

static size_t dict_find(const drpc_value *dict, const char *key) {
  for (size_t i = 0; i < dict->u.c.len; i++)
    if (strcmp(dict->u.c.keys[i], key) == 0)
      return i;
  return SIZE_MAX;
}

int drpc_dict_set(drpc_value *dict, const char *key, drpc_value *v) {
  if (!v)
    return DRPC_ENOMEM;
  if (!dict || dict->kind != DRPC_VAL_DICT) {
    drpc_value_free(v);
    return DRPC_ETYPE;
  }
  if (!key) {
    drpc_value_free(v);
    return DRPC_EINVAL;
  }
  size_t i = dict_find(dict, key);
  if (i != SIZE_MAX) {
    /* Replacing in place keeps the key's original insertion position. */
    drpc_value_free(dict->u.c.items[i]);
    dict->u.c.items[i] = v;
    return 0;
  }
  char *k = copy_cstr(key);
  if (!k || reserve_one(dict) != 0) {
    free(k);
    drpc_value_free(v);
    return DRPC_ENOMEM;
  }
  dict->u.c.keys[dict->u.c.len] = k;
  dict->u.c.items[dict->u.c.len++] = v;
  return 0;
}

const drpc_value *drpc_dict_get(const drpc_value *dict, const char *key) {
  if (!dict || dict->kind != DRPC_VAL_DICT || !key)
    return NULL;
  size_t i = dict_find(dict, key);
  return i == SIZE_MAX ? NULL : dict->u.c.items[i];
}

size_t drpc_value_len(const drpc_value *v) {
  if (!v)
    return 0;
  switch (v->kind) {
  case DRPC_VAL_LIST:
  case DRPC_VAL_DICT:
    return v->u.c.len;
  case DRPC_VAL_STR:
  case DRPC_VAL_BYTES:
    return v->u.s.len;
  default:
    return 0;
  }
}

const drpc_value *drpc_list_at(const drpc_value *list, size_t i) {
  if (!list || (list->kind != DRPC_VAL_LIST && list->kind != DRPC_VAL_DICT))
    return NULL;
  return i < list->u.c.len ? list->u.c.items[i] : NULL;
}

void drpc_value_free(drpc_value *v) {
  if (!v)
    return;
  switch (v->kind) {
  case DRPC_VAL_STR:
  case DRPC_VAL_BYTES:
    free(v->u.s.data);
    break;
  case DRPC_VAL_LIST:
  case DRPC_VAL_DICT:
    for (size_t i = 0; i < v->u.c.len; i++) {
      drpc_value_free(v->u.c.items[i]);
      if (v->u.c.keys)
        free(v->u.c.keys[i]);
    }
    free(v->u.c.items);
    free(v->u.c.keys);
    break;
  case DRPC_VAL_TENSOR:
    /* A decoder may free a tree before its tensors were attached. */
    if (v->u.t)
      drpc_tensor_decref(v->u.t);
    break;
  case DRPC_VAL_WORKER:
    free(v->u.w.name);
    break;
  case DRPC_VAL_RREF:
    free(v->u.r.type_name);
    drpc_rref_decref(v->u.r.handle);
    break;
  default:
    break;
  }
  node_free(v);
}

drpc_value *drpc_value_clone(const drpc_value *v) {
  if (!v)
    return NULL;
  switch (v->kind) {
  case DRPC_VAL_NIL:
    return drpc_value_nil();
  case DRPC_VAL_BOOL:
    return drpc_value_bool(v->u.b);
  case DRPC_VAL_INT:
    return drpc_value_int(v->u.i);
  case DRPC_VAL_FLOAT:
    return drpc_value_float(v->u.f);
  case DRPC_VAL_STR:
  case DRPC_VAL_BYTES:
    return bytes_node(v->kind, v->u.s.data, v->u.s.len);
  case DRPC_VAL_LIST:
  case DRPC_VAL_DICT: {
    drpc_value *c = node_new(v->kind);
    if (!c)
      return NULL;
    size_t n = v->u.c.len;
    if (n == 0)
      return c;
    /* The copy is sized once and filled in order; len counts the filled
     * slots so that freeing a half-made copy is safe. */
    if (n > SIZE_MAX / sizeof(void *))
      goto fail;
    c->u.c.items = malloc(n * sizeof(*c->u.c.items));
    if (!c->u.c.items)
      goto fail;
    if (v->kind == DRPC_VAL_DICT) {
      c->u.c.keys = malloc(n * sizeof(*c->u.c.keys));
      if (!c->u.c.keys)
        goto fail;
    }
    c->u.c.cap = n;
    for (size_t i = 0; i < n; i++) {
      drpc_value *item = drpc_value_clone(v->u.c.items[i]);
      if (!item)
        goto fail;
      if (v->kind == DRPC_VAL_DICT) {
        c->u.c.keys[i] = copy_cstr(v->u.c.keys[i]);
        if (!c->u.c.keys[i]) {
          drpc_value_free(item);
          goto fail;
        }
      }
      c->u.c.items[i] = item;
      c->u.c.len = i + 1;
    }
    return c;
  fail:
    drpc_value_free(c);
    return NULL;
  }
  case DRPC_VAL_TENSOR:
    return drpc_value_tensor(v->u.t);
  case DRPC_VAL_WORKER:
    return drpc_value_worker(v->u.w.id, v->u.w.name);
  case DRPC_VAL_RREF: {
    drpc_value *c = node_new(DRPC_VAL_RREF);
    if (!c)
      return NULL;
    c->u.r = v->u.r;
    c->u.r.type_name = NULL;
    if (v->u.r.type_name) {
      c->u.r.type_name = copy_cstr(v->u.r.type_name);
      if (!c->u.r.type_name) {
        free(c);
        return NULL;
      }
    }
    if (c->u.r.handle)
      drpc_rref_incref(c->u.r.handle);
    return c;
  }
  default:
    return NULL;
  }
}

static bool str_equal_nullable(const char *a, const char *b) {
  if (!a || !b)
    return a == b;
  return strcmp(a, b) == 0;
}

bool drpc_value_equal(const drpc_value *a, const drpc_value *b) {
  if (!a || !b)
    return a == b;
  if (a->kind != b->kind)
    return false;
  switch (a->kind) {
  case DRPC_VAL_NIL:
    return true;
  case DRPC_VAL_BOOL:
    return a->u.b == b->u.b;
  case DRPC_VAL_INT:
    return a->u.i == b->u.i;
  case DRPC_VAL_FLOAT:
    /* IEEE comparison, like tensors: NaN never equals, -0.0 equals 0.0. */
    return a->u.f == b->u.f;
  case DRPC_VAL_STR:
  case DRPC_VAL_BYTES:
    return a->u.s.len == b->u.s.len &&
           (a->u.s.len == 0 ||
            memcmp(a->u.s.data, b->u.s.data, a->u.s.len) == 0);
  case DRPC_VAL_LIST:
    if (a->u.c.len != b->u.c.len)
      return false;
    for (size_t i = 0; i < a->u.c.len; i++)
      if (!drpc_value_equal(a->u.c.items[i], b->u.c.items[i]))
        return false;
    return true;
  case DRPC_VAL_DICT:
    /* Dicts compare like Python's: same keys and values, in any order. */
    if (a->u.c.len != b->u.c.len)
      return false;
    for (size_t i = 0; i < a->u.c.len; i++) {
      const drpc_value *bv = drpc_dict_get(b, a->u.c.keys[i]);
      if (!bv || !drpc_value_equal(a->u.c.items[i], bv))
        return false;
    }
    return true;
  case DRPC_VAL_TENSOR:
    if (!a->u.t || !b->u.t)
      return a->u.t == b->u.t;
    return drpc_tensor_equal(a->u.t, b->u.t);
  case DRPC_VAL_WORKER:
    return a->u.w.id == b->u.w.id &&
           str_equal_nullable(a->u.w.name, b->u.w.name);
  case DRPC_VAL_RREF:
    if (a->u.r.handle || b->u.r.handle)
      return a->u.r.handle && b->u.r.handle &&
             drpc_rref_same(a->u.r.handle, b->u.r.handle);
    return a->u.r.owner == b->u.r.owner &&
           a->u.r.rref_created_on == b->u.r.rref_created_on &&
           a->u.r.rref_local_id == b->u.r.rref_local_id &&
           a->u.r.fork_created_on == b->u.r.fork_created_on &&
           a->u.r.fork_local_id == b->u.r.fork_local_id &&
           a->u.r.parent == b->u.r.parent &&
           str_equal_nullable(a->u.r.type_name, b->u.r.type_name);
  default:
    return false;
  }
}

/* A bounded output buffer. Once something does not fit, the writer stops
 * and remembers it, so the end can be marked with "...". */
typedef struct writer {
  char *buf;
  size_t n;
  size_t pos;
  bool truncated;
} writer;

static void put(writer *w, const char *s, size_t len) {
  if (w->truncated)
    return;
  size_t avail = w->n ? w->n - 1 - w->pos : 0;
  if (len > avail) {
    memcpy(w->buf + w->pos, s, avail);
    w->pos += avail;
    w->truncated = true;
    return;
  }
  memcpy(w->buf + w->pos, s, len);
  w->pos += len;
}

static void puts_(writer *w, const char *s) {
  put(w, s, strlen(s));
}

static void putf(writer *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void putf(writer *w, const char *fmt, ...) {
  char tmp[256];
  va_list ap;
  va_start(ap, fmt);
  int len = vsnprintf(tmp, sizeof(tmp), fmt, ap);
  va_end(ap);
  if (len < 0)
    return;
  put(w, tmp, (size_t)len < sizeof(tmp) ? (size_t)len : sizeof(tmp) - 1);
}

/* Writes a double the way Python's repr does: the shortest form that reads
 * back as the same number, with ".0" added when it would look like an int. */
static void put_double(writer *w, double f) {
  if (isnan(f)) {
    puts_(w, "nan");
    return;
  }
  if (isinf(f)) {
    puts_(w, f < 0 ? "-inf" : "inf");
    return;
  }
  char tmp[40];
  for (int prec = 1; prec <= 17; prec++) {
    snprintf(tmp, sizeof(tmp), "%.*g", prec, f);
    if (strtod(tmp, NULL) == f)
      break;
  }
  if (!strpbrk(tmp, ".e"))
    strcat(tmp, ".0");
  puts_(w, tmp);
}

/* Quotes s with the escapes a reader needs to see every byte. */
static void put_quoted(writer *w, const char *s, size_t len) {
  put(w, "\"", 1);
  for (size_t i = 0; i < len && !w->truncated; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch == '"' || ch == '\\') {
      char esc[2] = {'\\', (char)ch};
      put(w, esc, 2);
    } else if (ch == '\n') {
      put(w, "\\n", 2);
    } else if (ch == '\t') {
      put(w, "\\t", 2);
    } else if (ch == '\r') {
      put(w, "\\r", 2);
    } else if (ch < 0x20 || ch == 0x7f) {
      putf(w, "\\x%02x", ch);
    } else {
      put(w, (const char *)&ch, 1);
    }
  }
  put(w, "\"", 1);
}

static void format_value(writer *w, const drpc_value *v, int depth) {
  if (w->truncated)
    return;
  if (!v) {
    puts_(w, "(null)");
    return;
  }
  /* Deeper trees than the wire allows are cut short rather than risking the
   * stack on a cyclic or hostile structure. */
  if (depth > DRPC_VALUE_MAX_DEPTH) {
    puts_(w, "...");
    return;
  }
  switch (v->kind) {
  case DRPC_VAL_NIL:
    puts_(w, "None");
    break;
  case DRPC_VAL_BOOL:
    puts_(w, v->u.b ? "True" : "False");
    break;
  case DRPC_VAL_INT:
    putf(w, "%lld", (long long)v->u.i);
    break;
  case DRPC_VAL_FLOAT:
    put_double(w, v->u.f);
    break;
  case DRPC_VAL_STR:
    put_quoted(w, v->u.s.data, v->u.s.len);
    break;
  case DRPC_VAL_BYTES:
    putf(w, "b'%zu bytes'", v->u.s.len);
    break;
  case DRPC_VAL_LIST:
    put(w, "[", 1);
    for (size_t i = 0; i < v->u.c.len && !w->truncated; i++) {
      if (i)
        put(w, ", ", 2);
      format_value(w, v->u.c.items[i], depth + 1);
    }
    put(w, "]", 1);
    break;
  case DRPC_VAL_DICT:
    put(w, "{", 1);
    for (size_t i = 0; i < v->u.c.len && !w->truncated; i++) {
      if (i)
        put(w, ", ", 2);
      put_quoted(w, v->u.c.keys[i], strlen(v->u.c.keys[i]));
      put(w, ": ", 2);
      format_value(w, v->u.c.items[i], depth + 1);
    }
    put(w, "}", 1);
    break;
  case DRPC_VAL_TENSOR: {
    const drpc_tensor *t = v->u.t;
    if (!t) {
      puts_(w, "tensor(null)");
      break;
    }
    putf(w, "tensor(%s, [", drpc_dtype_name(t->dtype));
    for (int d = 0; d < t->ndim && d < DRPC_TENSOR_MAX_DIMS; d++)
      putf(w, d ? ", %lld" : "%lld", (long long)t->shape[d]);
    put(w, "]", 1);
    if (t->storage && t->storage->device.type != DRPC_DEVICE_CPU) {
      char dev[32];
      putf(w, ", device=%s",
           drpc_device_format(t->storage->device, dev, sizeof(dev)));
    }
    put(w, ")", 1);
    break;
  }
  case DRPC_VAL_WORKER:
    putf(w, "WorkerInfo(id=%d, name=", (int)v->u.w.id);
    puts_(w, v->u.w.name ? v->u.w.name : "");
    put(w, ")", 1);
    break;
  case DRPC_VAL_RREF:
    if (v->u.r.handle) {
      char hb[256];
      drpc_rref_format(v->u.r.handle, hb, sizeof hb);
      puts_(w, hb);
      break;
    }
    putf(w, "RRef(owner=%d, rref_id=(%d, %lld), fork_id=(%d, %lld), parent=%d",
         (int)v->u.r.owner, (int)v->u.r.rref_created_on,
         (long long)v->u.r.rref_local_id, (int)v->u.r.fork_created_on,
         (long long)v->u.r.fork_local_id, (int)v->u.r.parent);
    if (v->u.r.type_name) {
      puts_(w, ", type=");
      puts_(w, v->u.r.type_name);
    }
    put(w, ")", 1);
    break;
  default:
    putf(w, "<invalid value kind %d>", (int)v->kind);
    break;
  }
}

size_t drpc_value_format(const drpc_value *v, char *buf, size_t n) {
  if (!buf || n == 0)
    return 0;
  writer w = {buf, n, 0, false};
  format_value(&w, v, 1);
  if (w.truncated) {
    /* The last three characters that fit become the "..." marker. */
    size_t start = w.pos >= 3 ? w.pos - 3 : 0;
    memcpy(buf + start, "...", w.pos - start);
  }
  buf[w.pos] = '\0';
  return w.pos;
}

const char *drpc_value_kind_name(drpc_value_kind k) {
  switch (k) {
  case DRPC_VAL_NIL:
    return "nil";
  case DRPC_VAL_BOOL:
    return "bool";
  case DRPC_VAL_INT:
    return "int";
  case DRPC_VAL_FLOAT:
    return "float";
  case DRPC_VAL_STR:
    return "str";
  case DRPC_VAL_BYTES:
    return "bytes";
  case DRPC_VAL_LIST:
    return "list";
  case DRPC_VAL_DICT:
    return "dict";
  case DRPC_VAL_TENSOR:
    return "tensor";
  case DRPC_VAL_WORKER:
    return "worker";
  case DRPC_VAL_RREF:
    return "rref";
  default:
    return "invalid";
  }
}
