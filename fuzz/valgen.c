/* Value trees from fuzzer bytes, their writer, and strict comparison. */
#include "valgen.h"

#include <stdio.h>

static void *must(void *p) {
  if (!p) {
    fprintf(stderr, "valgen: out of memory\n");
    abort();
  }
  return p;
}

void vg_init(vg *g, fz *in, int max_nodes, bool allow_rref) {
  memset(g, 0, sizeof(*g));
  g->in = in;
  g->max_nodes = max_nodes;
  g->allow_rref = allow_rref;
}

void vg_done(vg *g) {
  drpc_tensor_decref(g->last);
  g->last = NULL;
}

/* A NUL-free C string from a blob (cut at the first NUL). */
static char *blob_cstr(fz *in, size_t max) {
  size_t n;
  const uint8_t *p = fz_blob(in, max, &n);
  const uint8_t *nul = memchr(p, 0, n);
  if (nul)
    n = (size_t)(nul - p);
  char *s = must(malloc(n + 1));
  memcpy(s, p, n);
  s[n] = '\0';
  return s;
}

static drpc_value *read_tensor(vg *g) {
  fz *in = g->in;
  uint8_t flags = fz_u8(in);
  if ((flags & 1) && g->last)
    return must(drpc_value_tensor(g->last));
  drpc_dtype dt = (drpc_dtype)fz_range(in, 0, DRPC_DTYPE_COUNT - 1);
  int ndim = (int)fz_range(in, 0, VG_MAX_NDIM);
  int64_t shape[DRPC_TENSOR_MAX_DIMS] = {0};
  size_t numel = 1;
  for (int d = 0; d < ndim; d++) {
    shape[d] = (int64_t)fz_range(in, 0, VG_MAX_DIM);
    numel *= (size_t)shape[d];
  }
  size_t nbytes = numel * drpc_dtype_size(dt), got;
  const uint8_t *src = fz_bytes(in, nbytes, &got);
  uint8_t buf[VG_MAX_DIM * VG_MAX_DIM * VG_MAX_DIM * 8] = {0};
  memcpy(buf, src, got);
  bool transpose = (flags & 2) && ndim == 2;
  drpc_tensor *t;
  if (transpose) {
    /* Storage laid out as the transpose; the view swaps it back, so the
     * encoder has to copy a non-contiguous tensor. */
    int64_t tshape[2] = {shape[1], shape[0]};
    t = must(drpc_tensor_from_data(dt, 2, tshape, buf, true));
    t->shape[0] = shape[0];
    t->shape[1] = shape[1];
    t->strides[0] = 1;
    t->strides[1] = shape[0] ? shape[0] : 1;
  } else {
    t = must(drpc_tensor_from_data(dt, ndim, shape, buf, true));
  }
  drpc_value *v = must(drpc_value_tensor(t));
  drpc_tensor_decref(g->last);
  g->last = t; /* keeps the creation reference */
  return v;
}

static drpc_value *read_rref(vg *g) {
  fz *in = g->in;
  drpc_value tmp;
  memset(&tmp, 0, sizeof(tmp));
  if (g->small_rrefs) {
    tmp.u.r.owner = (int16_t)(fz_u8(in) % 3);
    tmp.u.r.rref_created_on = (int16_t)(fz_u8(in) % 3);
    tmp.u.r.rref_local_id = fz_u8(in) % 8;
    tmp.u.r.fork_created_on = (int16_t)(fz_u8(in) % 3);
    tmp.u.r.fork_local_id = fz_u8(in) % 8;
    tmp.u.r.parent = (int16_t)(fz_u8(in) % 3);
  } else {
    tmp.u.r.owner = (int16_t)fz_u16(in);
    tmp.u.r.rref_created_on = (int16_t)fz_u16(in);
    tmp.u.r.rref_local_id = (int64_t)fz_u64(in);
    tmp.u.r.fork_created_on = (int16_t)fz_u16(in);
    tmp.u.r.fork_local_id = (int64_t)fz_u64(in);
    tmp.u.r.parent = (int16_t)fz_u16(in);
  }
  char *tn = blob_cstr(in, VG_MAX_NAME);
  if (!g->allow_rref) {
    free(tn);
    return must(drpc_value_nil());
  }
  drpc_value *v = must(drpc_value_nil());
  v->kind = DRPC_VAL_RREF;
  v->u.r = tmp.u.r;
  if (tn[0])
    v->u.r.type_name = tn;
  else
    free(tn);
  return v;
}

static drpc_value *read_value(vg *g);

drpc_value *vg_value(vg *g) {
  g->depth++;
  drpc_value *v = g->depth > VG_MAX_DEPTH || g->nodes >= g->max_nodes ||
                          fz_remaining(g->in) == 0
                      ? must(drpc_value_nil())
                      : read_value(g);
  g->depth--;
  return v;
}

static drpc_value *read_value(vg *g) {
  fz *in = g->in;
  g->nodes++;
  int tag = fz_u8(in) % VG_KINDS;
  switch (tag) {
  case VG_NIL:
    return must(drpc_value_nil());
  case VG_BOOL:
    return must(drpc_value_bool(fz_bool(in)));
  case VG_INT:
    return must(drpc_value_int((int64_t)fz_u64(in)));
  case VG_FLOAT: {
    uint64_t bits = fz_u64(in);
    double d;
    memcpy(&d, &bits, sizeof(d));
    return must(drpc_value_float(d));
  }
  case VG_STR:
  case VG_BYTES: {
    size_t n;
    const uint8_t *p =
        fz_blob(in, tag == VG_STR ? VG_MAX_STR : VG_MAX_BYTES, &n);
    return must(tag == VG_STR ? drpc_value_strn((const char *)p, n)
                              : drpc_value_bytes(p, n));
  }
  case VG_LIST: {
    size_t n = (size_t)fz_range(in, 0, VG_MAX_ITEMS);
    drpc_value *l = must(drpc_value_list());
    for (size_t i = 0; i < n; i++)
      if (drpc_list_append(l, vg_value(g)) != 0)
        abort();
    return l;
  }
  case VG_DICT: {
    size_t n = (size_t)fz_range(in, 0, VG_MAX_ITEMS);
    drpc_value *d = must(drpc_value_dict());
    for (size_t i = 0; i < n; i++) {
      char *key = blob_cstr(in, VG_MAX_KEY);
      if (drpc_dict_set(d, key, vg_value(g)) != 0)
        abort();
      free(key);
    }
    return d;
  }
  case VG_TENSOR:
    return read_tensor(g);
  case VG_WORKER: {
    int16_t id = (int16_t)fz_u16(in);
    char *name = blob_cstr(in, VG_MAX_NAME);
    drpc_value *v = must(drpc_value_worker(id, name));
    free(name);
    return v;
  }
  case VG_RREF:
    return read_rref(g);
  case VG_NEST: {
    unsigned levels = (unsigned)fz_range(in, 1, VG_MAX_NEST);
    if (levels > (unsigned)(VG_MAX_DEPTH - g->depth))
      levels = (unsigned)(VG_MAX_DEPTH - g->depth);
    g->depth += (int)levels;
    drpc_value *v = vg_value(g);
    g->depth -= (int)levels;
    for (unsigned i = 0; i < levels; i++) {
      drpc_value *l = must(drpc_value_list());
      if (drpc_list_append(l, v) != 0)
        abort();
      v = l;
    }
    return v;
  }
  default:
    abort();
  }
}

/* ---- comparison ---------------------------------------------------------- */

static bool str_same(const char *a, const char *b) {
  return strcmp(a ? a : "", b ? b : "") == 0;
}

static bool tensor_same(drpc_tensor *a, drpc_tensor *b) {
  if (!a || !b)
    return a == b;
  if (a->dtype != b->dtype || a->ndim != b->ndim)
    return false;
  for (int d = 0; d < a->ndim; d++)
    if (a->shape[d] != b->shape[d])
      return false;
  drpc_tensor *ca = must(drpc_tensor_contiguous(a));
  drpc_tensor *cb = must(drpc_tensor_contiguous(b));
  size_t na = drpc_tensor_nbytes(ca), nb = drpc_tensor_nbytes(cb);
  bool same = na == nb && (na == 0 || memcmp(drpc_tensor_data(ca),
                                             drpc_tensor_data(cb), na) == 0);
  drpc_tensor_decref(ca);
  drpc_tensor_decref(cb);
  return same;
}

bool vg_same(const drpc_value *a, const drpc_value *b) {
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
    return memcmp(&a->u.f, &b->u.f, sizeof(double)) == 0;
  case DRPC_VAL_STR:
  case DRPC_VAL_BYTES:
    return a->u.s.len == b->u.s.len &&
           (a->u.s.len == 0 ||
            memcmp(a->u.s.data, b->u.s.data, a->u.s.len) == 0);
  case DRPC_VAL_LIST:
  case DRPC_VAL_DICT:
    if (a->u.c.len != b->u.c.len)
      return false;
    for (size_t i = 0; i < a->u.c.len; i++) {
      if (a->kind == DRPC_VAL_DICT &&
          strcmp(a->u.c.keys[i], b->u.c.keys[i]) != 0)
        return false;
      if (!vg_same(a->u.c.items[i], b->u.c.items[i]))
        return false;
    }
    return true;
  case DRPC_VAL_TENSOR:
    return tensor_same(a->u.t, b->u.t);
  case DRPC_VAL_WORKER:
    return a->u.w.id == b->u.w.id && str_same(a->u.w.name, b->u.w.name);
  case DRPC_VAL_RREF:
    return a->u.r.handle == NULL && b->u.r.handle == NULL &&
           a->u.r.owner == b->u.r.owner &&
           a->u.r.rref_created_on == b->u.r.rref_created_on &&
           a->u.r.rref_local_id == b->u.r.rref_local_id &&
           a->u.r.fork_created_on == b->u.r.fork_created_on &&
           a->u.r.fork_local_id == b->u.r.fork_local_id &&
           a->u.r.parent == b->u.r.parent &&
           str_same(a->u.r.type_name, b->u.r.type_name);
  default:
    return false;
  }
}

typedef struct order {
  drpc_tensor *const *ts;
  uint32_t n, next;
  bool ok;
} order;

static void walk_order(order *o, const drpc_value *v) {
  if (!o->ok || !v)
    return;
  if (v->kind == DRPC_VAL_TENSOR) {
    bool listed = false;
    for (uint32_t i = 0; i < o->n && !listed; i++)
      listed = o->ts[i] == v->u.t;
    if (!listed)
      return; /* not in the data section (a tensor shared by handle) */
    for (uint32_t i = 0; i < o->next; i++)
      if (o->ts[i] == v->u.t)
        return;
    if (o->next >= o->n || o->ts[o->next] != v->u.t)
      o->ok = false;
    else
      o->next++;
  } else if (v->kind == DRPC_VAL_LIST || v->kind == DRPC_VAL_DICT) {
    for (size_t i = 0; i < v->u.c.len; i++)
      walk_order(o, v->u.c.items[i]);
  }
}

bool vg_tensors_in_order(const drpc_value *body, drpc_tensor *const *ts,
                         uint32_t n) {
  order o = {ts, n, 0, true};
  walk_order(&o, body);
  return o.ok && o.next == n;
}

bool vg_has_nan(const drpc_value *v) {
  if (!v)
    return false;
  switch (v->kind) {
  case DRPC_VAL_FLOAT:
    return v->u.f != v->u.f;
  case DRPC_VAL_LIST:
  case DRPC_VAL_DICT:
    for (size_t i = 0; i < v->u.c.len; i++)
      if (vg_has_nan(v->u.c.items[i]))
        return true;
    return false;
  case DRPC_VAL_TENSOR: {
    const drpc_tensor *t = v->u.t;
    if (!t || (t->dtype != DRPC_FLOAT32 && t->dtype != DRPC_FLOAT64))
      return false;
    int64_t n = drpc_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) {
      double d = drpc_tensor_get_f64(t, i);
      if (d != d)
        return true;
    }
    return false;
  }
  default:
    return false;
  }
}

/* ---- the writer ---------------------------------------------------------- */

static void tag(fzo *o, int t) {
  fzo_u8(o, (uint8_t)t);
}

void vgo_nil(fzo *o) {
  tag(o, VG_NIL);
}

void vgo_bool(fzo *o, bool b) {
  tag(o, VG_BOOL);
  fzo_bool(o, b);
}

void vgo_int(fzo *o, int64_t i) {
  tag(o, VG_INT);
  fzo_u64(o, (uint64_t)i);
}

void vgo_float(fzo *o, double d) {
  uint64_t bits;
  memcpy(&bits, &d, sizeof(bits));
  tag(o, VG_FLOAT);
  fzo_u64(o, bits);
}

void vgo_str(fzo *o, const char *s) {
  tag(o, VG_STR);
  fzo_blob(o, VG_MAX_STR, s, strlen(s));
}

void vgo_bytes(fzo *o, const void *p, size_t n) {
  tag(o, VG_BYTES);
  fzo_blob(o, VG_MAX_BYTES, p, n);
}

void vgo_list(fzo *o, size_t n) {
  tag(o, VG_LIST);
  fzo_range(o, 0, VG_MAX_ITEMS, n);
}

void vgo_dict(fzo *o, size_t n) {
  tag(o, VG_DICT);
  fzo_range(o, 0, VG_MAX_ITEMS, n);
}

void vgo_key(fzo *o, const char *key) {
  fzo_blob(o, VG_MAX_KEY, key, strlen(key));
}

void vgo_tensor(fzo *o, uint8_t flags, int dtype, int ndim,
                const unsigned *dims, const void *data, size_t len) {
  tag(o, VG_TENSOR);
  fzo_u8(o, flags);
  fzo_range(o, 0, DRPC_DTYPE_COUNT - 1, (uint64_t)dtype);
  fzo_range(o, 0, VG_MAX_NDIM, (uint64_t)ndim);
  size_t numel = 1;
  for (int d = 0; d < ndim; d++) {
    fzo_range(o, 0, VG_MAX_DIM, dims[d]);
    numel *= dims[d];
  }
  size_t want = numel * drpc_dtype_size((drpc_dtype)dtype);
  fzo_bytes(o, data, len < want ? len : want);
  for (size_t i = len; i < want; i++)
    fzo_u8(o, 0);
}

void vgo_worker(fzo *o, int16_t id, const char *name) {
  tag(o, VG_WORKER);
  fzo_u16(o, (uint16_t)id);
  fzo_blob(o, VG_MAX_NAME, name, strlen(name));
}

void vgo_rref(fzo *o, int16_t owner, int16_t rc, uint64_t rl, int16_t fc,
              uint64_t fl, int16_t parent, const char *type_name) {
  tag(o, VG_RREF);
  fzo_u16(o, (uint16_t)owner);
  fzo_u16(o, (uint16_t)rc);
  fzo_u64(o, rl);
  fzo_u16(o, (uint16_t)fc);
  fzo_u64(o, fl);
  fzo_u16(o, (uint16_t)parent);
  fzo_blob(o, VG_MAX_NAME, type_name, strlen(type_name));
}

void vgo_rref_small(fzo *o, int owner, int rc, int rl, int fc, int fl,
                    int parent, const char *type_name) {
  tag(o, VG_RREF);
  fzo_u8(o, (uint8_t)owner);
  fzo_u8(o, (uint8_t)rc);
  fzo_u8(o, (uint8_t)rl);
  fzo_u8(o, (uint8_t)fc);
  fzo_u8(o, (uint8_t)fl);
  fzo_u8(o, (uint8_t)parent);
  fzo_blob(o, VG_MAX_NAME, type_name, strlen(type_name));
}

void vgo_nest(fzo *o, unsigned levels) {
  tag(o, VG_NEST);
  fzo_range(o, 1, VG_MAX_NEST, levels);
}
