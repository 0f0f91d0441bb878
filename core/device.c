/* The device interface: the installed CUDA backend, stream pools, the
 * calling thread's current streams, and tensors on devices. */
#include "drpc/device.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const drpc_device_backend *g_backend;
static void *g_ctx;
static int g_count;
/* Pool streams, made on first use; a slot lost in a race is kept by the
 * backend until shutdown, like every stream. */
static _Atomic(drpc_stream *) g_pool[DRPC_DEVICE_MAX][DRPC_STREAM_POOL_SIZE];
static atomic_uint g_next[DRPC_DEVICE_MAX];
/* Bumped by drpc_device_use so threads drop current streams of an old
 * backend. */
static atomic_uint g_generation;

static char g_host[128];

static _Thread_local drpc_stream *t_current[DRPC_DEVICE_MAX];
static _Thread_local unsigned t_generation;

void drpc_device_use(const drpc_device_backend *b, void *ctx) {
  if (g_backend && g_backend->shutdown)
    g_backend->shutdown(g_ctx);
  for (int d = 0; d < DRPC_DEVICE_MAX; d++)
    for (int i = 0; i < DRPC_STREAM_POOL_SIZE; i++)
      atomic_store(&g_pool[d][i], NULL);
  g_backend = b;
  g_ctx = ctx;
  int n = b ? b->device_count(ctx) : 0;
  g_count = n < 0 ? 0 : n > DRPC_DEVICE_MAX ? DRPC_DEVICE_MAX : n;
  atomic_fetch_add(&g_generation, 1);
}

void drpc_device_set_host(const char *host) {
  snprintf(g_host, sizeof g_host, "%s", host ? host : "");
}

const char *drpc_device_host(void) {
  return g_host;
}

const drpc_device_backend *drpc_device_backend_get(void **ctx) {
  if (ctx)
    *ctx = g_ctx;
  return g_backend;
}

int drpc_device_count(void) {
  return g_backend ? g_count : 0;
}

bool drpc_device_valid(drpc_device d) {
  if (d.type == DRPC_DEVICE_CPU)
    return true;
  return d.type == DRPC_DEVICE_CUDA && d.index >= 0 &&
         d.index < drpc_device_count();
}

static bool index_ok(int index) {
  return index >= 0 && index < drpc_device_count();
}

/* ---- streams and events ------------------------------------------------ */

drpc_stream *drpc_stream_default(int index) {
  return index_ok(index) ? g_backend->stream_default(g_ctx, index) : NULL;
}

drpc_stream *drpc_stream_from_pool(int index) {
  if (!index_ok(index))
    return NULL;
  unsigned k = atomic_fetch_add(&g_next[index], 1) % DRPC_STREAM_POOL_SIZE;
  drpc_stream *s = atomic_load(&g_pool[index][k]);
  if (s)
    return s;
  drpc_stream *made = g_backend->stream_new(g_ctx, index, NULL);
  if (!made)
    return g_backend->stream_default(g_ctx, index);
  drpc_stream *expected = NULL;
  if (atomic_compare_exchange_strong(&g_pool[index][k], &expected, made))
    return made;
  return expected; /* another thread filled the slot first */
}

static void check_generation(void) {
  unsigned g = atomic_load(&g_generation);
  if (t_generation != g) {
    memset(t_current, 0, sizeof t_current);
    t_generation = g;
  }
}

drpc_stream *drpc_stream_current(int index) {
  if (!index_ok(index))
    return NULL;
  check_generation();
  drpc_stream *s = t_current[index];
  return s ? s : g_backend->stream_default(g_ctx, index);
}

void drpc_stream_set_current(int index, drpc_stream *s) {
  if (index < 0 || index >= DRPC_DEVICE_MAX)
    return;
  check_generation();
  t_current[index] = s;
}

void drpc_stream_swap_currents(drpc_stream **state) {
  check_generation();
  for (int i = 0; i < DRPC_DEVICE_MAX; i++) {
    drpc_stream *s = t_current[i];
    t_current[i] = state[i];
    state[i] = s;
  }
}

int drpc_stream_sync(drpc_stream *s, drpc_error *err) {
  if (!g_backend || !s)
    return drpc_error_set(err, DRPC_EINVAL, "no such stream");
  return g_backend->stream_sync(g_ctx, s, err);
}

/* Streams do not carry their device through the interface; the backend's
 * default and pool streams are looked up instead. Backends put the index
 * first in their stream objects so that this stays O(1). */
int drpc_stream_device(const drpc_stream *s) {
  return s ? *(const int *)(const void *)s : -1;
}

drpc_devevent *drpc_devevent_new(int index, drpc_error *err) {
  if (!index_ok(index)) {
    drpc_error_set(err, DRPC_EINVAL, "no CUDA device %d", index);
    return NULL;
  }
  return g_backend->event_new(g_ctx, index, err);
}

void drpc_devevent_free(drpc_devevent *e) {
  if (e && g_backend)
    g_backend->event_free(g_ctx, e);
}

int drpc_devevent_record(drpc_devevent *e, drpc_stream *s, drpc_error *err) {
  if (!g_backend || !e || !s)
    return drpc_error_set(err, DRPC_EINVAL, "no such event or stream");
  return g_backend->event_record(g_ctx, e, s, err);
}

int drpc_stream_wait_event(drpc_stream *s, drpc_devevent *e, drpc_error *err) {
  if (!g_backend || !e || !s)
    return drpc_error_set(err, DRPC_EINVAL, "no such event or stream");
  return g_backend->stream_wait(g_ctx, s, e, err);
}

int drpc_devevent_sync(drpc_devevent *e, drpc_error *err) {
  if (!g_backend || !e)
    return drpc_error_set(err, DRPC_EINVAL, "no such event");
  return g_backend->event_sync(g_ctx, e, err);
}

int drpc_stream_wait_stream(drpc_stream *waiter, drpc_stream *on,
                            drpc_error *err) {
  if (waiter == on)
    return 0;
  drpc_devevent *e = drpc_devevent_new(drpc_stream_device(on), err);
  if (!e)
    return err ? err->code : DRPC_ENOMEM;
  int rc = drpc_devevent_record(e, on, err);
  if (!rc)
    rc = drpc_stream_wait_event(waiter, e, err);
  drpc_devevent_free(e);
  return rc;
}

/* ---- readiness of received device data ---------------------------------- */

struct drpc_devready {
  unsigned generation; /* the backend the events belong to */
  int n;
  int8_t dev[DRPC_DEVICE_MAX];
  drpc_devevent *ev[DRPC_DEVICE_MAX];
  drpc_stream *st[DRPC_DEVICE_MAX]; /* where the data arrived */
};

drpc_devready *drpc_devready_new(void) {
  drpc_devready *r = calloc(1, sizeof *r);
  if (r)
    r->generation = atomic_load(&g_generation);
  return r;
}

void drpc_devready_free(drpc_devready *r) {
  if (!r)
    return;
  /* A replaced backend freed its events when it shut down. */
  if (r->generation == atomic_load(&g_generation))
    for (int i = 0; i < r->n; i++)
      drpc_devevent_free(r->ev[i]);
  free(r);
}

int drpc_devready_count(const drpc_devready *r) {
  return r ? r->n : 0;
}

static bool ready_live(const drpc_devready *r, drpc_error *err) {
  if (r->generation == atomic_load(&g_generation))
    return true;
  drpc_error_set(err, DRPC_ESTATE,
                 "the CUDA backend was replaced while device data was in "
                 "flight");
  return false;
}

int drpc_devready_add(drpc_devready *r, drpc_stream *s, drpc_error *err) {
  if (!r || !s)
    return drpc_error_set(err, DRPC_EINVAL, "no such stream");
  if (!ready_live(r, err))
    return DRPC_ESTATE;
  int dev = drpc_stream_device(s), i = 0;
  while (i < r->n && r->dev[i] != dev)
    i++;
  if (i == r->n) {
    if (r->n == DRPC_DEVICE_MAX)
      return drpc_error_set(err, DRPC_EINVAL, "no CUDA device %d", dev);
    drpc_devevent *e = drpc_devevent_new(dev, err);
    if (!e)
      return err && err->code ? err->code : DRPC_ENOMEM;
    r->dev[i] = (int8_t)dev;
    r->ev[i] = e;
    r->n++;
  }
  r->st[i] = s;
  return drpc_devevent_record(r->ev[i], s, err);
}

int drpc_devready_wait_current(const drpc_devready *r, drpc_error *err) {
  if (!r || !r->n)
    return 0;
  if (!ready_live(r, err))
    return DRPC_ESTATE;
  for (int i = 0; i < r->n; i++) {
    int rc =
        drpc_stream_wait_event(drpc_stream_current(r->dev[i]), r->ev[i], err);
    if (rc)
      return rc;
  }
  return 0;
}

int drpc_devready_sync(const drpc_devready *r, drpc_error *err) {
  if (!r || !r->n)
    return 0;
  if (!ready_live(r, err))
    return DRPC_ESTATE;
  for (int i = 0; i < r->n; i++) {
    int rc = drpc_devevent_sync(r->ev[i], err);
    if (rc)
      return rc;
  }
  return 0;
}

/* Makes the calling thread's current streams of r's devices r's own
 * (own) or fresh pool streams that wait for r, saving the old ones. */
static int enter(const drpc_devready *r, drpc_stream **saved, bool own,
                 drpc_error *err) {
  if (!r || !r->n)
    return 0;
  if (!ready_live(r, err))
    return DRPC_ESTATE;
  check_generation();
  for (int i = 0; i < r->n; i++)
    saved[r->dev[i]] = t_current[r->dev[i]];
  for (int i = 0; i < r->n; i++) {
    drpc_stream *s = own ? r->st[i] : drpc_stream_from_pool(r->dev[i]);
    int rc =
        !s    ? drpc_error_set(err, DRPC_EINVAL, "no CUDA device %d", r->dev[i])
        : own ? 0
              : drpc_stream_wait_event(s, r->ev[i], err);
    if (rc) {
      for (int j = 0; j < i; j++)
        t_current[r->dev[j]] = saved[r->dev[j]];
      return rc;
    }
    t_current[r->dev[i]] = s;
  }
  return 0;
}

int drpc_devready_enter(const drpc_devready *r, drpc_stream **saved,
                        drpc_error *err) {
  return enter(r, saved, false, err);
}

int drpc_devready_enter_own(const drpc_devready *r, drpc_stream **saved,
                            drpc_error *err) {
  return enter(r, saved, true, err);
}

void drpc_devready_leave(const drpc_devready *r, drpc_stream *const *saved,
                         bool to_default) {
  if (!r || !r->n || !ready_live(r, NULL))
    return;
  for (int i = 0; i < r->n; i++) {
    int d = r->dev[i];
    if (to_default)
      (void)drpc_stream_wait_stream(drpc_stream_default(d),
                                    drpc_stream_current(d), NULL);
    t_current[d] = saved[d];
  }
}

/* ---- storages ---------------------------------------------------------- */

/* Other streams a storage is recorded on (record_stream); past them, a
 * further stream is waited for at once rather than at the free. */
#define DEV_MEM_USES 6

typedef struct dev_mem {
  const drpc_device_backend *backend;
  void *ctx;
  drpc_stream *stream;
  int index;
  size_t nbytes;
  _Atomic int nused;
  drpc_stream *_Atomic used[DEV_MEM_USES];
} dev_mem;

static void dev_mem_free(void *ctx, void *data) {
  dev_mem *m = ctx;
  /* Memory of a backend that has been replaced went with its shutdown. */
  if (m->backend == g_backend && m->ctx == g_ctx) {
    int n = atomic_load(&m->nused);
    for (int i = 0; i < n && i < DEV_MEM_USES; i++) {
      drpc_stream *u = atomic_load(&m->used[i]);
      if (u)
        (void)drpc_stream_wait_stream(m->stream, u, NULL);
    }
    m->backend->free(m->ctx, m->index, data, m->nbytes, m->stream);
  }
  free(m);
}

void drpc_storage_record_stream(drpc_storage *st, drpc_stream *s) {
  if (!st || !s || st->device.type == DRPC_DEVICE_CPU ||
      st->free_fn != dev_mem_free)
    return;
  dev_mem *m = st->free_ctx;
  if (s == m->stream || m->backend != g_backend)
    return;
  int n = atomic_load(&m->nused);
  for (int i = 0; i < n && i < DEV_MEM_USES; i++)
    if (atomic_load(&m->used[i]) == s)
      return;
  int k = atomic_fetch_add(&m->nused, 1);
  if (k < DEV_MEM_USES)
    atomic_store(&m->used[k], s);
  else
    (void)drpc_stream_wait_stream(m->stream, s, NULL); /* no room: now */
}

static void record_value(const drpc_value *v, int depth) {
  if (!v || depth > 512)
    return;
  if (v->kind == DRPC_VAL_TENSOR && v->u.t && v->u.t->storage &&
      v->u.t->storage->device.type == DRPC_DEVICE_CUDA)
    drpc_storage_record_stream(
        v->u.t->storage, drpc_stream_current(v->u.t->storage->device.index));
  else if (v->kind == DRPC_VAL_LIST || v->kind == DRPC_VAL_DICT)
    for (size_t i = 0; i < v->u.c.len; i++)
      record_value(v->u.c.items[i], depth + 1);
}

void drpc_value_record_streams(const drpc_value *v) {
  record_value(v, 0);
}

drpc_storage *drpc_device_storage_new(drpc_device dev, size_t nbytes,
                                      drpc_stream *s, drpc_error *err) {
  if (dev.type == DRPC_DEVICE_CPU) {
    drpc_storage *st = drpc_storage_new(nbytes, false);
    if (!st)
      drpc_error_set(err, DRPC_ENOMEM, "out of memory (%zu bytes)", nbytes);
    return st;
  }
  if (!drpc_device_valid(dev)) {
    char name[16];
    drpc_error_set(err, DRPC_EINVAL, "no such device: %s",
                   drpc_device_format(dev, name, sizeof name));
    return NULL;
  }
  if (!s)
    s = drpc_stream_current(dev.index);
  dev_mem *m = malloc(sizeof *m);
  if (!m) {
    drpc_error_set(err, DRPC_ENOMEM, "out of memory");
    return NULL;
  }
  void *p = g_backend->alloc(g_ctx, dev.index, nbytes, s, err);
  if (!p) {
    free(m);
    return NULL;
  }
  *m = (dev_mem){.backend = g_backend,
                 .ctx = g_ctx,
                 .stream = s,
                 .index = dev.index,
                 .nbytes = nbytes};
  drpc_storage *st = drpc_storage_wrap(p, nbytes, dev, dev_mem_free, m);
  if (!st) {
    g_backend->free(g_ctx, dev.index, p, nbytes, s);
    free(m);
    drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  }
  return st;
}

drpc_stream *drpc_storage_stream(const drpc_storage *st) {
  if (!st || st->device.type == DRPC_DEVICE_CPU || st->free_fn != dev_mem_free)
    return NULL;
  return ((const dev_mem *)st->free_ctx)->stream;
}

drpc_device drpc_tensor_device(const drpc_tensor *t) {
  return t && t->storage ? t->storage->device : DRPC_CPU;
}

static bool contiguous_shape(int ndim, const int64_t *shape, int64_t *numel) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0 || (shape[i] > 0 && n > INT64_MAX / shape[i]))
      return false;
    n *= shape[i];
  }
  *numel = n;
  return true;
}

drpc_tensor *drpc_tensor_empty_on(drpc_device dev, drpc_dtype dt, int ndim,
                                  const int64_t *shape, drpc_stream *s,
                                  drpc_error *err) {
  int64_t numel = 0;
  if (ndim < 0 || ndim > DRPC_TENSOR_MAX_DIMS || drpc_dtype_size(dt) == 0 ||
      (ndim > 0 && !shape) || !contiguous_shape(ndim, shape, &numel) ||
      (uint64_t)numel > SIZE_MAX / 8) {
    drpc_error_set(err, DRPC_EINVAL, "invalid tensor shape or dtype");
    return NULL;
  }
  if (dev.type == DRPC_DEVICE_CPU) {
    drpc_tensor *t = drpc_tensor_empty(dt, ndim, shape);
    if (!t)
      drpc_error_set(err, DRPC_ENOMEM, "out of memory");
    return t;
  }
  size_t nbytes = (size_t)numel * drpc_dtype_size(dt);
  drpc_storage *st = drpc_device_storage_new(dev, nbytes, s, err);
  if (!st)
    return NULL;
  drpc_tensor *t = drpc_tensor_from_storage(st, dt, ndim, shape, 0);
  drpc_storage_decref(st);
  if (!t)
    drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  return t;
}

drpc_tensor *drpc_tensor_to(const drpc_tensor *t, drpc_device dev,
                            drpc_stream *s, drpc_error *err) {
  if (!t || !t->storage) {
    drpc_error_set(err, DRPC_EINVAL, "null tensor");
    return NULL;
  }
  drpc_device src = t->storage->device;
  if (!drpc_device_valid(src) || !drpc_device_valid(dev)) {
    char a[16], b[16];
    drpc_error_set(err, DRPC_EINVAL, "cannot copy a tensor from %s to %s",
                   drpc_device_format(src, a, sizeof a),
                   drpc_device_format(dev, b, sizeof b));
    return NULL;
  }
  if (src.type == DRPC_DEVICE_CPU && dev.type == DRPC_DEVICE_CPU) {
    drpc_tensor *c = drpc_tensor_clone(t);
    if (!c)
      drpc_error_set(err, DRPC_ENOMEM, "out of memory");
    return c;
  }
  int side = dev.type == DRPC_DEVICE_CUDA ? dev.index : src.index;
  if (!s)
    s = drpc_stream_current(side);
  /* From one CUDA device to another: the copy runs on the destination's
   * stream after the work queued on the source device's current stream,
   * and that stream then waits for the copy (a two-way barrier), so the
   * source is neither read early nor reused under the copy. */
  drpc_stream *ss =
      src.type == DRPC_DEVICE_CUDA && drpc_stream_device(s) != src.index
          ? drpc_stream_current(src.index)
          : NULL;
  /* A strided device source is made contiguous on its own device first. */
  drpc_tensor *dense = NULL;
  const drpc_tensor *from = t;
  if (!drpc_tensor_is_contiguous(t)) {
    drpc_stream *ds = ss ? ss : s;
    if (src.type == DRPC_DEVICE_CPU) {
      dense = drpc_tensor_contiguous((drpc_tensor *)t);
    } else {
      dense = drpc_tensor_empty_on(src, t->dtype, t->ndim, t->shape, ds, err);
      if (dense && g_backend->strided_copy(
                       g_ctx, ds, drpc_tensor_data(dense), t->dtype,
                       (const char *)t->storage->data +
                           t->offset * (int64_t)drpc_dtype_size(t->dtype),
                       t->dtype, t->ndim, t->shape, t->strides, err)) {
        drpc_tensor_decref(dense);
        return NULL;
      }
    }
    if (!dense) {
      if (err && !err->code)
        drpc_error_set(err, DRPC_ENOMEM, "out of memory");
      return NULL;
    }
    from = dense;
  }
  drpc_tensor *out =
      drpc_tensor_empty_on(dev, t->dtype, t->ndim, t->shape,
                           dev.type == DRPC_DEVICE_CPU ? NULL : s, err);
  size_t n = drpc_tensor_nbytes(t);
  int rc = out ? 0 : DRPC_ENOMEM;
  if (!rc && ss)
    rc = drpc_stream_wait_stream(s, ss, err);
  if (!rc && n > 0)
    rc = g_backend->copy(g_ctx, drpc_tensor_data(out), dev,
                         drpc_tensor_data(from), src, n, s, err);
  if (!rc && ss)
    rc = drpc_stream_wait_stream(ss, s, err);
  if (!rc && out && dev.type == DRPC_DEVICE_CPU)
    rc = g_backend->stream_sync(g_ctx, s, err);
  drpc_tensor_decref(dense);
  if (rc) {
    drpc_tensor_decref(out);
    return NULL;
  }
  return out;
}

/* Pinned host memory goes back to the backend that gave it, unless that
 * backend was replaced meanwhile (its memory went with it). */
typedef struct host_mem {
  const drpc_device_backend *backend;
  void *ctx;
  unsigned generation;
} host_mem;

static void host_mem_free(void *vctx, void *data) {
  host_mem *m = vctx;
  if (m->generation == atomic_load(&g_generation))
    m->backend->host_free(m->ctx, data);
  free(m);
}

drpc_tensor *drpc_tensor_empty_pinned(drpc_dtype dt, int ndim,
                                      const int64_t *shape, drpc_error *err) {
  int64_t numel = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0 || (shape[i] && numel > INT64_MAX / shape[i])) {
      drpc_error_set(err, DRPC_EINVAL, "bad tensor shape");
      return NULL;
    }
    numel *= shape[i];
  }
  size_t es = drpc_dtype_size(dt);
  if (es == 0 || (uint64_t)numel > SIZE_MAX / es) {
    drpc_error_set(err, DRPC_EINVAL, "bad tensor shape");
    return NULL;
  }
  size_t n = (size_t)numel * es;
  host_mem *m = NULL;
  drpc_storage *st = NULL;
  if (n > 0 && g_backend && g_backend->host_alloc && g_backend->host_free &&
      (m = malloc(sizeof *m)) != NULL) {
    void *p = g_backend->host_alloc(g_ctx, n, NULL);
    if (p) {
      *m = (host_mem){g_backend, g_ctx, atomic_load(&g_generation)};
      st = drpc_storage_wrap(p, n, DRPC_CPU, host_mem_free, m);
      if (!st)
        host_mem_free(m, p);
      m = NULL;
    }
  }
  free(m);
  if (!st)
    st = drpc_storage_new(n, false);
  drpc_tensor *t = st ? drpc_tensor_from_storage(st, dt, ndim, shape, 0) : NULL;
  drpc_storage_decref(st);
  if (!t)
    drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  return t;
}

/* ---- bytes staged from a device, chunk by chunk ---------------------------
 */

struct drpc_devchunks {
  unsigned generation;
  uint32_t n, cap, done; /* chunks; the first `done` were waited for */
  uint64_t *start, *end;
  drpc_devevent **ev;
};

drpc_devchunks *drpc_devchunks_new(void) {
  drpc_devchunks *c = calloc(1, sizeof *c);
  if (c)
    c->generation = atomic_load(&g_generation);
  return c;
}

int drpc_devchunks_count(const drpc_devchunks *c) {
  return c ? (int)c->n : 0;
}

int drpc_devchunks_add(drpc_devchunks *c, uint64_t start, uint64_t end,
                       drpc_devevent *ev, drpc_error *err) {
  if (c->n == c->cap) {
    uint32_t cap = c->cap ? c->cap * 2 : 8;
    uint64_t *s2 = realloc(c->start, cap * sizeof *s2);
    if (s2)
      c->start = s2;
    uint64_t *e2 = s2 ? realloc(c->end, cap * sizeof *e2) : NULL;
    if (e2)
      c->end = e2;
    drpc_devevent **v2 = e2 ? realloc(c->ev, cap * sizeof *v2) : NULL;
    if (!v2) {
      /* Not kept: the caller's copy is waited for here instead. */
      int rc = drpc_devevent_sync(ev, err);
      drpc_devevent_free(ev);
      return rc;
    }
    c->ev = v2;
    c->cap = cap;
  }
  c->start[c->n] = start;
  c->end[c->n] = end;
  c->ev[c->n] = ev;
  c->n++;
  return 0;
}

uint64_t drpc_devchunks_wait(drpc_devchunks *c, uint64_t pos, int *rc,
                             drpc_error *err) {
  *rc = 0;
  if (!c)
    return UINT64_MAX;
  if (c->generation != atomic_load(&g_generation)) {
    *rc = drpc_error_set(err, DRPC_ESTATE,
                         "the CUDA backend was replaced while a frame was "
                         "being staged");
    return pos;
  }
  while (c->done < c->n && c->start[c->done] <= pos) {
    int r = drpc_devevent_sync(c->ev[c->done], err);
    if (r) {
      *rc = r;
      return pos;
    }
    c->done++;
  }
  return c->done < c->n ? c->start[c->done] : UINT64_MAX;
}

void drpc_devchunks_free(drpc_devchunks *c) {
  if (!c)
    return;
  int rc = 0;
  (void)drpc_devchunks_wait(c, UINT64_MAX - 1, &rc, NULL);
  if (c->generation == atomic_load(&g_generation))
    for (uint32_t i = 0; i < c->n; i++)
      drpc_devevent_free(c->ev[i]);
  free(c->start);
  free(c->end);
  free(c->ev);
  free(c);
}
