/* Conformance tests of the device interface (core/device.c over a backend):
 * run on simcuda always, and again on the CUDA runtime where one is present.
 * The simcuda-only tests show that its streams are strict: a missing wait is
 * observable as stale data. */
#include "drpc/device.h"
#include "drpc/error.h"
#include "drpc/gpu.h"
#include "drpc/tensor.h"

#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "test.h"

/* The backend under test and, on simcuda, its context (NULL on cuda). */
static const drpc_device_backend *g_b;
static void *g_ctx;
static void *g_sim;

/* Fails the check and leaves the test: what follows would use NULL. cond
 * is evaluated once (it may start a thread). */
#define REQUIRE(cond)                                                          \
  do {                                                                         \
    bool ok_ = (cond);                                                         \
    CHECK(ok_ &&#cond);                                                        \
    if (!ok_)                                                                  \
      return;                                                                  \
  } while (0)

static drpc_device dev(int i) {
  return (drpc_device){DRPC_DEVICE_CUDA, (int8_t)i};
}

static void report(const char *what, drpc_error *err) {
  if (err->code)
    fprintf(stderr, "  %s: %s: %s\n", what, drpc_errname(err->code),
            err->msg ? err->msg : "");
  drpc_error_clear(err);
}

/* A contiguous tensor on cuda:d holding vals (native values of dt). */
static drpc_tensor *on_dev(int d, drpc_dtype dt, int ndim, const int64_t *shape,
                           const void *vals) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_tensor *h = drpc_tensor_from_data(dt, ndim, shape, vals, true);
  drpc_tensor *t = h ? drpc_tensor_to(h, dev(d), NULL, &err) : NULL;
  report("on_dev", &err);
  drpc_tensor_decref(h);
  return t;
}

/* t copied to the host through stream s (NULL: the current one). */
static drpc_tensor *to_cpu(const drpc_tensor *t, drpc_stream *s) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_tensor *h = t ? drpc_tensor_to(t, DRPC_CPU, s, &err) : NULL;
  report("to_cpu", &err);
  return h;
}

static drpc_tensor *empty(int d, drpc_dtype dt, int ndim, const int64_t *shape,
                          drpc_stream *s) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_tensor *t = drpc_tensor_empty_on(dev(d), dt, ndim, shape, s, &err);
  report("empty", &err);
  return t;
}

static int tdev(const drpc_tensor *t) {
  return drpc_tensor_device(t).index;
}

static drpc_stream *or_current(const drpc_tensor *t, drpc_stream *s) {
  return s ? s : drpc_stream_current(tdev(t));
}

static int k_fill(drpc_tensor *t, double v, drpc_stream *s) {
  drpc_error err = DRPC_ERROR_INIT;
  int rc = g_b->fill(g_ctx, or_current(t, s), drpc_tensor_data(t), t->dtype,
                     drpc_tensor_numel(t), v, &err);
  report("fill", &err);
  return rc;
}

static int sync_s(drpc_stream *s) {
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_stream_sync(s, &err);
  report("sync", &err);
  return rc;
}

/* Runs every stream of every device, so queued frees happen. */
static void settle(void) {
  for (int d = 0; d < drpc_device_count(); d++) {
    sync_s(drpc_stream_default(d));
    for (int k = 0; k < DRPC_STREAM_POOL_SIZE; k++)
      sync_s(drpc_stream_from_pool(d));
  }
}

static void check_no_leak(void) {
  if (!g_sim)
    return;
  settle();
  for (int d = 0; d < drpc_device_count(); d++)
    CHECK_EQ_INT(drpc_simcuda_allocated(g_sim, d), 0);
}

/* ---- the suite, on every backend --------------------------------------- */

static void test_devices(void) {
  drpc_error err = DRPC_ERROR_INIT;
  int n = drpc_device_count();
  REQUIRE(n >= 1);
  if (g_sim)
    CHECK_EQ_INT(n, 2);
  CHECK(drpc_device_valid(DRPC_CPU));
  CHECK(drpc_device_valid(dev(0)));
  CHECK(drpc_device_valid(dev(n - 1)));
  CHECK(!drpc_device_valid(dev(n)));
  CHECK(!drpc_device_valid(dev(-1)));

  drpc_stream *s0 = drpc_stream_default(0);
  REQUIRE(s0 != NULL);
  CHECK_EQ_INT(drpc_stream_device(s0), 0);
  CHECK_EQ_INT(drpc_stream_device(drpc_stream_default(n - 1)), n - 1);
  CHECK(drpc_stream_default(n) == NULL);
  CHECK(drpc_stream_current(0) == s0);

  drpc_stream *p = drpc_stream_from_pool(n - 1);
  REQUIRE(p != NULL);
  CHECK(p != drpc_stream_default(n - 1));
  CHECK(drpc_stream_from_pool(n - 1) != p);
  CHECK_EQ_INT(drpc_stream_device(p), n - 1);
  CHECK(drpc_stream_from_pool(n) == NULL);
  drpc_stream_set_current(n - 1, p);
  CHECK(drpc_stream_current(n - 1) == p);
  drpc_stream_set_current(n - 1, NULL);
  CHECK(drpc_stream_current(n - 1) == drpc_stream_default(n - 1));

  CHECK_EQ_INT(drpc_stream_sync(s0, &err), 0);
  CHECK_EQ_INT(drpc_stream_sync(NULL, &err), DRPC_EINVAL);
  drpc_error_clear(&err);
  CHECK(drpc_devevent_new(n, &err) == NULL);
  CHECK_EQ_INT(err.code, DRPC_EINVAL);
  drpc_error_clear(&err);
  /* An event never recorded is complete. */
  drpc_devevent *e = drpc_devevent_new(0, &err);
  REQUIRE(e != NULL);
  CHECK_EQ_INT(drpc_devevent_sync(e, &err), 0);
  CHECK_EQ_INT(drpc_stream_wait_event(s0, e, &err), 0);
  CHECK_EQ_INT(sync_s(s0), 0);
  drpc_devevent_free(e);
  report("devices", &err);
}

static void test_alloc_free(void) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_stream *s = drpc_stream_from_pool(0);
  size_t before = g_sim ? drpc_simcuda_allocated(g_sim, 0) : 0;
  drpc_storage *st = drpc_device_storage_new(dev(0), 1000, s, &err);
  REQUIRE(st != NULL);
  CHECK(st->data != NULL);
  CHECK_EQ_INT(st->nbytes, 1000);
  CHECK(drpc_device_equal(st->device, dev(0)));
  CHECK(drpc_storage_stream(st) == s);
  CHECK_EQ_INT((uintptr_t)st->data % DRPC_TENSOR_ALIGN, 0);
  if (g_sim)
    CHECK_EQ_INT(drpc_simcuda_allocated(g_sim, 0), before + 1000);

  /* 0 bytes still give a pointer; no stream means the current one. */
  drpc_storage *z = drpc_device_storage_new(dev(0), 0, NULL, &err);
  REQUIRE(z != NULL);
  CHECK(z->data != NULL);
  CHECK(drpc_storage_stream(z) == drpc_stream_current(0));

  drpc_storage_decref(st);
  drpc_storage_decref(z);
  /* simcuda hands memory back only when its stream runs that far. */
  if (g_sim)
    CHECK_EQ_INT(drpc_simcuda_allocated(g_sim, 0), before + 1000);
  CHECK_EQ_INT(sync_s(s), 0);
  CHECK_EQ_INT(sync_s(drpc_stream_current(0)), 0);
  if (g_sim)
    CHECK_EQ_INT(drpc_simcuda_allocated(g_sim, 0), before);

  CHECK(drpc_device_storage_new(dev(drpc_device_count()), 8, NULL, &err) ==
        NULL);
  CHECK_EQ_INT(err.code, DRPC_EINVAL);
  drpc_error_clear(&err);
  drpc_storage *c = drpc_device_storage_new(DRPC_CPU, 16, NULL, &err);
  REQUIRE(c != NULL);
  CHECK(drpc_storage_stream(c) == NULL);
  drpc_storage_decref(c);

  int64_t shape[2] = {3, 5};
  drpc_tensor *t = empty(0, DRPC_INT32, 2, shape, NULL);
  REQUIRE(t != NULL);
  CHECK(drpc_device_equal(drpc_tensor_device(t), dev(0)));
  CHECK_EQ_INT(drpc_tensor_nbytes(t), 60);
  CHECK(drpc_tensor_is_contiguous(t));
  drpc_tensor_decref(t);
}

static void test_round_trip(void) {
  int64_t shape[2] = {3, 4};
  double vals[12] = {1.5, -2, 3.25, 0, 1e300, -1e-300, 7, 8, 9, 10, 11, 12};
  drpc_tensor *h = drpc_tensor_from_data(DRPC_FLOAT64, 2, shape, vals, true);
  drpc_tensor *d0 = on_dev(0, DRPC_FLOAT64, 2, shape, vals);
  REQUIRE(h && d0);
  CHECK(drpc_device_equal(drpc_tensor_device(d0), dev(0)));
  CHECK_EQ_INT(d0->ndim, 2);
  CHECK_EQ_INT(d0->shape[1], 4);
  drpc_tensor *last = d0;
  drpc_tensor *d1 = NULL;
  if (drpc_device_count() >= 2) {
    /* The copy runs on cuda:1's current stream, here ordered after cuda:0's
     * by the caller (test_to_across_devices drops the wait). */
    drpc_error err = DRPC_ERROR_INIT;
    CHECK_EQ_INT(drpc_stream_wait_stream(drpc_stream_current(1),
                                         drpc_stream_current(0), &err),
                 0);
    d1 = drpc_tensor_to(d0, dev(1), drpc_stream_current(1), &err);
    report("to cuda:1", &err);
    REQUIRE(d1 != NULL);
    CHECK(drpc_device_equal(drpc_tensor_device(d1), dev(1)));
    last = d1;
  }
  drpc_tensor *back = to_cpu(last, NULL);
  REQUIRE(back != NULL);
  CHECK(drpc_device_equal(drpc_tensor_device(back), DRPC_CPU));
  CHECK(drpc_tensor_equal(back, h));

  /* Bytes travel unchanged, whatever the dtype. */
  int64_t n3 = 3;
  int64_t iv[3] = {INT64_MIN, -1, INT64_MAX};
  drpc_tensor *di = on_dev(drpc_device_count() - 1, DRPC_INT64, 1, &n3, iv);
  drpc_tensor *bi = to_cpu(di, NULL);
  REQUIRE(bi != NULL);
  for (int i = 0; i < 3; i++)
    CHECK(drpc_tensor_get_i64(bi, i) == iv[i]);
  drpc_tensor_decref(h);
  drpc_tensor_decref(d0);
  drpc_tensor_decref(d1);
  drpc_tensor_decref(back);
  drpc_tensor_decref(di);
  drpc_tensor_decref(bi);
}

/* A view of t's storage with the given shape, strides and offset. */
static drpc_tensor *view(const drpc_tensor *t, int ndim, const int64_t *shape,
                         const int64_t *strides, int64_t offset) {
  drpc_tensor *v =
      drpc_tensor_from_storage(t->storage, t->dtype, ndim, shape, offset);
  if (v) {
    for (int d = 0; d < ndim; d++)
      v->strides[d] = strides[d];
  }
  return v;
}

/* t and v hold the same values element by element. */
static void check_same(const drpc_tensor *t, const drpc_tensor *v) {
  CHECK_EQ_INT(drpc_tensor_numel(t), drpc_tensor_numel(v));
  for (int64_t i = 0; i < drpc_tensor_numel(t); i++)
    CHECK(drpc_tensor_get_f64(t, i) == drpc_tensor_get_f64(v, i));
}

static void test_to_noncontiguous(void) {
  int64_t shape[2] = {3, 4}, tshape[2] = {4, 3}, tstrides[2] = {1, 4};
  float vals[12];
  for (int i = 0; i < 12; i++)
    vals[i] = (float)i * 1.5f;
  drpc_tensor *h = drpc_tensor_from_data(DRPC_FLOAT32, 2, shape, vals, true);
  REQUIRE(h != NULL);
  drpc_tensor *ht = view(h, 2, tshape, tstrides, 0);
  REQUIRE(ht != NULL);
  CHECK(!drpc_tensor_is_contiguous(ht));

  /* A transposed host tensor to the device and back. */
  drpc_error err = DRPC_ERROR_INIT;
  drpc_tensor *d = drpc_tensor_to(ht, dev(0), NULL, &err);
  report("to cuda:0", &err);
  REQUIRE(d != NULL);
  CHECK(drpc_tensor_is_contiguous(d));
  CHECK_EQ_INT(d->shape[0], 4);
  drpc_tensor *back = to_cpu(d, NULL);
  REQUIRE(back != NULL);
  check_same(back, ht);

  /* Strided views of device memory, read back to the host: transposed, a
   * row at an offset, a column. */
  drpc_tensor *dc = on_dev(0, DRPC_FLOAT32, 2, shape, vals);
  REQUIRE(dc != NULL);
  int64_t rshape[1] = {4}, rstrides[1] = {1};
  int64_t cshape[1] = {3}, cstrides[1] = {4};
  drpc_tensor *views[3] = {view(dc, 2, tshape, tstrides, 0),
                           view(dc, 1, rshape, rstrides, 4),
                           view(dc, 1, cshape, cstrides, 2)};
  drpc_tensor *hviews[3] = {view(h, 2, tshape, tstrides, 0),
                            view(h, 1, rshape, rstrides, 4),
                            view(h, 1, cshape, cstrides, 2)};
  for (int i = 0; i < 3; i++) {
    drpc_tensor *b = to_cpu(views[i], NULL);
    CHECK(b != NULL);
    if (b)
      check_same(b, hviews[i]);
    drpc_tensor_decref(b);
  }
  for (int i = 0; i < 3; i++) {
    drpc_tensor_decref(views[i]);
    drpc_tensor_decref(hviews[i]);
  }
  drpc_tensor_decref(dc);
  drpc_tensor_decref(h);
  drpc_tensor_decref(ht);
  drpc_tensor_decref(d);
  drpc_tensor_decref(back);
}

/* x.to("cuda:1") as in PyTorch, which orders the copy after the work queued
 * on the source device's current stream and the destination's (a two-way
 * barrier), so the caller needs no wait; a strided source is made
 * contiguous on its own device. */
static void test_to_across_devices(void) {
  if (drpc_device_count() < 2) {
    printf("SKIP %s test_to_across_devices: one device\n", g_b->name);
    return;
  }
  int64_t shape[2] = {3, 4}, tshape[2] = {4, 3}, tstrides[2] = {1, 4};
  float vals[12];
  for (int i = 0; i < 12; i++)
    vals[i] = (float)i - 5.5f;
  drpc_tensor *h = drpc_tensor_from_data(DRPC_FLOAT32, 2, shape, vals, true);
  drpc_tensor *d0 = on_dev(0, DRPC_FLOAT32, 2, shape, vals);
  REQUIRE(h && d0);
  drpc_error err = DRPC_ERROR_INIT;
  drpc_tensor *d1 = drpc_tensor_to(d0, dev(1), NULL, &err);
  report("to cuda:1", &err);
  drpc_tensor *b1 = to_cpu(d1, NULL);
  CHECK(b1 && drpc_tensor_equal(b1, h));

  drpc_tensor *ht = view(h, 2, tshape, tstrides, 0);
  drpc_tensor *dt = view(d0, 2, tshape, tstrides, 0);
  REQUIRE(ht && dt);
  drpc_tensor *dt1 = drpc_tensor_to(dt, dev(1), NULL, &err);
  report("strided to cuda:1", &err);
  CHECK(dt1 != NULL);
  drpc_tensor *bt = to_cpu(dt1, NULL);
  if (bt)
    check_same(bt, ht);
  drpc_tensor *all[] = {h, d0, d1, b1, ht, dt, dt1, bt};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    drpc_tensor_decref(all[i]);
}

static void test_fill(void) {
  static const struct {
    drpc_dtype dt;
    double value, want;
  } cases[] = {
      {DRPC_FLOAT32, 2.5, 2.5}, {DRPC_FLOAT64, -1.25, -1.25},
      {DRPC_INT64, -3.7, -3},   {DRPC_INT32, 7.9, 7},
      {DRPC_UINT8, 200, 200},   {DRPC_BOOL, 0.5, 1},
      {DRPC_BOOL, 0, 0},        {DRPC_FLOAT32, 0.1, (float)0.1},
  };
  int64_t n = 5;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    drpc_tensor *t = empty(0, cases[i].dt, 1, &n, NULL);
    REQUIRE(t != NULL);
    CHECK_EQ_INT(k_fill(t, cases[i].value, NULL), 0);
    drpc_tensor *h = to_cpu(t, NULL);
    REQUIRE(h != NULL);
    for (int j = 0; j < n; j++)
      CHECK(drpc_tensor_get_f64(h, j) == cases[i].want);
    drpc_tensor_decref(t);
    drpc_tensor_decref(h);
  }
}

/* src (a device tensor) read through shape/strides into a new contiguous
 * tensor of ddt, brought back to the host. */
static drpc_tensor *strided_to(const drpc_tensor *src, drpc_dtype ddt, int ndim,
                               const int64_t *shape, const int64_t *strides) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_tensor *out = empty(tdev(src), ddt, ndim, shape, NULL);
  if (!out)
    return NULL;
  int rc = g_b->strided_copy(g_ctx, drpc_stream_current(tdev(src)),
                             drpc_tensor_data(out), ddt, drpc_tensor_data(src),
                             src->dtype, ndim, shape, strides, &err);
  report("strided_copy", &err);
  drpc_tensor *h = rc ? NULL : to_cpu(out, NULL);
  drpc_tensor_decref(out);
  return h;
}

static void test_strided_copy(void) {
  /* Every dtype from float64 values each destination can hold. */
  int64_t shape[2] = {2, 3}, strides[2] = {3, 1};
  double pos[6] = {0, 2.7, 255.9, 0.25, 100, 1};
  drpc_tensor *dp = on_dev(0, DRPC_FLOAT64, 2, shape, pos);
  REQUIRE(dp != NULL);
  for (drpc_dtype dt = 0; dt < DRPC_DTYPE_COUNT; dt++) {
    drpc_tensor *h = strided_to(dp, dt, 2, shape, strides);
    REQUIRE(h != NULL);
    CHECK_EQ_INT(h->dtype, dt);
    for (int i = 0; i < 6; i++) {
      double want = dt == DRPC_FLOAT32   ? (float)pos[i]
                    : dt == DRPC_FLOAT64 ? pos[i]
                    : dt == DRPC_BOOL    ? pos[i] != 0
                    : dt == DRPC_UINT8   ? (uint8_t)pos[i]
                                         : (double)(int64_t)pos[i];
      CHECK(drpc_tensor_get_f64(h, i) == want);
    }
    drpc_tensor_decref(h);
  }
  /* Negative values, -0.0 into bool, read transposed. */
  double neg[6] = {-1.5, -2.7, 3.5, -0.0, 7, -100};
  drpc_tensor *dn = on_dev(0, DRPC_FLOAT64, 2, shape, neg);
  REQUIRE(dn != NULL);
  int64_t tshape[2] = {3, 2}, tstrides[2] = {1, 3};
  int64_t want_i[6] = {-1, 0, -2, 7, 3, -100};
  uint8_t want_b[6] = {1, 0, 1, 1, 1, 1};
  drpc_tensor *hi = strided_to(dn, DRPC_INT64, 2, tshape, tstrides);
  drpc_tensor *h32 = strided_to(dn, DRPC_INT32, 2, tshape, tstrides);
  drpc_tensor *hb = strided_to(dn, DRPC_BOOL, 2, tshape, tstrides);
  REQUIRE(hi && h32 && hb);
  for (int i = 0; i < 6; i++) {
    CHECK_EQ_INT(drpc_tensor_get_i64(hi, i), want_i[i]);
    CHECK_EQ_INT(drpc_tensor_get_i64(h32, i), want_i[i]);
    CHECK_EQ_INT(drpc_tensor_get_i64(hb, i), want_b[i]);
  }
  /* Integer sources, converted as C casts them. */
  int64_t n4 = 4, one[1] = {1};
  int64_t iv[4] = {16777217, 9007199254740993, -1, 263};
  drpc_tensor *di = on_dev(0, DRPC_INT64, 1, &n4, iv);
  REQUIRE(di != NULL);
  drpc_tensor *f32 = strided_to(di, DRPC_FLOAT32, 1, &n4, one);
  drpc_tensor *f64 = strided_to(di, DRPC_FLOAT64, 1, &n4, one);
  drpc_tensor *u8 = strided_to(di, DRPC_UINT8, 1, &n4, one);
  drpc_tensor *b = strided_to(di, DRPC_BOOL, 1, &n4, one);
  REQUIRE(f32 && f64 && u8 && b);
  for (int i = 0; i < 4; i++) {
    CHECK(drpc_tensor_get_f64(f32, i) == (float)iv[i]);
    CHECK(drpc_tensor_get_f64(f64, i) == (double)iv[i]);
    CHECK_EQ_INT(drpc_tensor_get_i64(u8, i), (uint8_t)iv[i]);
    CHECK_EQ_INT(drpc_tensor_get_i64(b, i), 1);
  }
  CHECK(drpc_tensor_get_f64(f32, 0) == 16777216.0);
  /* Small dtypes as sources. */
  uint8_t bv[4] = {0, 1, 1, 0}, uv[4] = {255, 0, 7, 128};
  int32_t i32v[4] = {-7, 0, 2147483647, -2147483647 - 1};
  drpc_tensor *db = on_dev(0, DRPC_BOOL, 1, &n4, bv);
  drpc_tensor *du = on_dev(0, DRPC_UINT8, 1, &n4, uv);
  drpc_tensor *d32 = on_dev(0, DRPC_INT32, 1, &n4, i32v);
  REQUIRE(db && du && d32);
  drpc_tensor *bf = strided_to(db, DRPC_FLOAT32, 1, &n4, one);
  drpc_tensor *ui = strided_to(du, DRPC_INT64, 1, &n4, one);
  drpc_tensor *id = strided_to(d32, DRPC_FLOAT64, 1, &n4, one);
  REQUIRE(bf && ui && id);
  for (int i = 0; i < 4; i++) {
    CHECK(drpc_tensor_get_f64(bf, i) == bv[i]);
    CHECK_EQ_INT(drpc_tensor_get_i64(ui, i), uv[i]);
    CHECK(drpc_tensor_get_f64(id, i) == i32v[i]);
  }
  drpc_tensor *all[] = {dp, dn, hi, h32, hb,  di, f32, f64,
                        u8, b,  db, du,  d32, bf, ui,  id};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    drpc_tensor_decref(all[i]);
}

static drpc_dev_operand operand_of(const drpc_tensor *t, int ndim,
                                   const int64_t *strides) {
  drpc_dev_operand o;
  memset(&o, 0, sizeof o);
  o.data = drpc_tensor_data(t);
  o.dtype = t->dtype;
  for (int d = 0; d < ndim; d++)
    o.strides[d] = strides[d];
  return o;
}

static drpc_dev_operand number_f(double f) {
  drpc_dev_operand o;
  memset(&o, 0, sizeof o);
  o.dtype = DRPC_FLOAT64;
  o.is_float = true;
  o.f = f;
  return o;
}

static drpc_dev_operand number_i(int64_t i) {
  drpc_dev_operand o;
  memset(&o, 0, sizeof o);
  o.dtype = DRPC_INT64;
  o.i = i;
  return o;
}

/* a op b into a new tensor of dt on cuda:0, brought back to the host. */
static drpc_tensor *binary_to(drpc_devop op, drpc_dtype dt, int ndim,
                              const int64_t *shape, drpc_dev_operand a,
                              drpc_dev_operand b, double alpha_f,
                              int64_t alpha_i) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_tensor *out = empty(0, dt, ndim, shape, NULL);
  if (!out)
    return NULL;
  int rc = g_b->binary(g_ctx, drpc_stream_current(0), op, drpc_tensor_data(out),
                       dt, ndim, shape, &a, &b, alpha_f, alpha_i, &err);
  report("binary", &err);
  drpc_tensor *h = rc ? NULL : to_cpu(out, NULL);
  drpc_tensor_decref(out);
  return h;
}

static void test_binary(void) {
  int64_t shape[2] = {2, 3}, n3 = 3, rows[2] = {3, 1}, bcast[2] = {0, 1};
  float av[6] = {1, 2, 3, 4, 5, 6}, bv[3] = {10, 20, 30};
  drpc_tensor *a = on_dev(0, DRPC_FLOAT32, 2, shape, av);
  drpc_tensor *b = on_dev(0, DRPC_FLOAT32, 1, &n3, bv);
  REQUIRE(a && b);
  drpc_dev_operand oa = operand_of(a, 2, rows), ob = operand_of(b, 2, bcast);
  static const drpc_devop ops[4] = {DRPC_DEVOP_ADD, DRPC_DEVOP_SUB,
                                    DRPC_DEVOP_MUL, DRPC_DEVOP_DIV};
  for (int k = 0; k < 4; k++) {
    drpc_tensor *h = binary_to(ops[k], DRPC_FLOAT32, 2, shape, oa, ob, 2, 0);
    REQUIRE(h != NULL);
    for (int i = 0; i < 6; i++) {
      double x = av[i], y = bv[i % 3];
      double r = k == 0   ? x + 2 * y
                 : k == 1 ? x - 2 * y
                 : k == 2 ? x * y
                          : x / y;
      CHECK(drpc_tensor_get_f64(h, i) == (float)r);
    }
    drpc_tensor_decref(h);
  }
  /* Numbers on either side, as a float and as an integer. */
  drpc_tensor *h = binary_to(DRPC_DEVOP_MUL, DRPC_FLOAT32, 2, shape, oa,
                             number_f(0.5), 1, 0);
  drpc_tensor *h2 =
      binary_to(DRPC_DEVOP_SUB, DRPC_FLOAT32, 2, shape, number_i(3), oa, 1, 0);
  REQUIRE(h && h2);
  for (int i = 0; i < 6; i++) {
    CHECK(drpc_tensor_get_f64(h, i) == av[i] * 0.5);
    CHECK(drpc_tensor_get_f64(h2, i) == 3 - av[i]);
  }
  drpc_tensor_decref(h);
  drpc_tensor_decref(h2);

  /* float32 results are computed in double and rounded once: float
   * arithmetic would round alpha * y first and give 0x1.45f1dcp-2. */
  float x = 0x1.d4ed44p-3f, y = 0x1.c9681cp-1f;
  int64_t n1 = 1, unit[1] = {1};
  drpc_tensor *dx = on_dev(0, DRPC_FLOAT32, 1, &n1, &x);
  drpc_tensor *dy = on_dev(0, DRPC_FLOAT32, 1, &n1, &y);
  REQUIRE(dx && dy);
  drpc_tensor *hr =
      binary_to(DRPC_DEVOP_ADD, DRPC_FLOAT32, 1, &n1, operand_of(dx, 1, unit),
                operand_of(dy, 1, unit), 0.1, 0);
  REQUIRE(hr != NULL);
  CHECK(drpc_tensor_get_f64(hr, 0) == 0x1.45f1dap-2);
  drpc_tensor_decref(hr);

  /* int64 wraps; alpha_i scales b. */
  int64_t iv[3] = {INT64_MAX, INT64_MIN, 5};
  drpc_tensor *di = on_dev(0, DRPC_INT64, 1, &n3, iv);
  REQUIRE(di != NULL);
  drpc_dev_operand oi = operand_of(di, 1, unit);
  drpc_tensor *add =
      binary_to(DRPC_DEVOP_ADD, DRPC_INT64, 1, &n3, oi, number_i(1), 0, 1);
  drpc_tensor *mul =
      binary_to(DRPC_DEVOP_MUL, DRPC_INT64, 1, &n3, oi, number_i(2), 0, 1);
  drpc_tensor *sub =
      binary_to(DRPC_DEVOP_SUB, DRPC_INT64, 1, &n3, oi, oi, 0, 3);
  REQUIRE(add && mul && sub);
  int64_t want_add[3] = {INT64_MIN, INT64_MIN + 1, 6};
  int64_t want_mul[3] = {-2, 0, 10};
  /* x - 3x = -2x, wrapped: -2 * (2^63 - 1) = 2 - 2^64. */
  int64_t want_sub[3] = {2, 0, -10};
  for (int i = 0; i < 3; i++) {
    CHECK(drpc_tensor_get_i64(add, i) == want_add[i]);
    CHECK(drpc_tensor_get_i64(mul, i) == want_mul[i]);
    CHECK(drpc_tensor_get_i64(sub, i) == want_sub[i]);
  }
  /* An int64 operand read into a float64 result. */
  drpc_tensor *mixed =
      binary_to(DRPC_DEVOP_DIV, DRPC_FLOAT64, 1, &n3, oi, number_f(2), 1, 0);
  REQUIRE(mixed != NULL);
  for (int i = 0; i < 3; i++)
    CHECK(drpc_tensor_get_f64(mixed, i) == (double)iv[i] / 2);
  drpc_tensor *all[] = {a, b, dx, dy, di, add, mul, sub, mixed};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    drpc_tensor_decref(all[i]);
}

/* The sum of src (read through shape/src_strides) into dst_numel elements
 * of ddt, landing by dst_strides, brought back to the host. dst starts as
 * garbage: the kernel zeroes it. */
static drpc_tensor *sum_to(const drpc_tensor *src, drpc_dtype ddt,
                           int64_t dst_numel, int ndim, const int64_t *shape,
                           const int64_t *src_strides,
                           const int64_t *dst_strides) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_tensor *out = empty(0, ddt, 1, &dst_numel, NULL);
  if (!out || k_fill(out, 99, NULL))
    return NULL;
  int rc = g_b->sum(g_ctx, drpc_stream_current(0), drpc_tensor_data(out), ddt,
                    dst_numel, drpc_tensor_data(src), src->dtype, ndim, shape,
                    src_strides, dst_strides, &err);
  report("sum", &err);
  drpc_tensor *h = rc ? NULL : to_cpu(out, NULL);
  drpc_tensor_decref(out);
  return h;
}

static void test_sum(void) {
  int64_t shape[2] = {2, 3}, rows[2] = {3, 1};
  int64_t iv[6] = {1, 2, 3, 4, 5, 6};
  drpc_tensor *di = on_dev(0, DRPC_INT64, 2, shape, iv);
  REQUIRE(di != NULL);
  int64_t all_dims[2] = {0, 0}, dim0[2] = {0, 1}, dim1[2] = {1, 0};
  drpc_tensor *full = sum_to(di, DRPC_INT64, 1, 2, shape, rows, all_dims);
  drpc_tensor *s0 = sum_to(di, DRPC_INT64, 3, 2, shape, rows, dim0);
  drpc_tensor *s1 = sum_to(di, DRPC_INT64, 2, 2, shape, rows, dim1);
  /* Read transposed (3 x 2), summed along its dim 1. */
  int64_t tshape[2] = {3, 2}, tstrides[2] = {1, 3};
  drpc_tensor *st = sum_to(di, DRPC_INT64, 3, 2, tshape, tstrides, dim1);
  REQUIRE(full && s0 && s1 && st);
  CHECK_EQ_INT(drpc_tensor_get_i64(full, 0), 21);
  CHECK_EQ_INT(drpc_tensor_get_i64(s0, 0), 5);
  CHECK_EQ_INT(drpc_tensor_get_i64(s0, 1), 7);
  CHECK_EQ_INT(drpc_tensor_get_i64(s0, 2), 9);
  CHECK_EQ_INT(drpc_tensor_get_i64(s1, 0), 6);
  CHECK_EQ_INT(drpc_tensor_get_i64(s1, 1), 15);
  CHECK_EQ_INT(drpc_tensor_get_i64(st, 0), 5);
  CHECK_EQ_INT(drpc_tensor_get_i64(st, 2), 9);

  /* int64 wraps; float32 accumulates in double (float would give 0). */
  int64_t n2 = 2, n3 = 3, unit[1] = {1}, zero[1] = {0};
  int64_t wv[2] = {INT64_MAX, 1};
  float fv[3] = {1e8f, 1, -1e8f};
  drpc_tensor *dw = on_dev(0, DRPC_INT64, 1, &n2, wv);
  drpc_tensor *df = on_dev(0, DRPC_FLOAT32, 1, &n3, fv);
  REQUIRE(dw && df);
  drpc_tensor *ws = sum_to(dw, DRPC_INT64, 1, 1, &n2, unit, zero);
  drpc_tensor *fs = sum_to(df, DRPC_FLOAT32, 1, 1, &n3, unit, zero);
  REQUIRE(ws && fs);
  CHECK(drpc_tensor_get_i64(ws, 0) == INT64_MIN);
  CHECK(drpc_tensor_get_f64(fs, 0) == 1.0);
  drpc_tensor *all[] = {di, full, s0, s1, st, dw, df, ws, fs};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    drpc_tensor_decref(all[i]);
}

static void test_matmul(void) {
  drpc_error err = DRPC_ERROR_INIT;
  int64_t sa[2] = {2, 3}, sb[2] = {3, 2}, so[2] = {2, 2};
  double av[6] = {1, 2, 3, 4, 5, 6}, bv[6] = {7, 8, 9, 10, 11, 12};
  int64_t ia[6] = {1, 2, 3, 4, 5, 6}, ib[6] = {7, 8, 9, 10, 11, INT64_MAX};
  struct {
    drpc_dtype dt;
    const void *a, *b;
  } cases[2] = {{DRPC_FLOAT64, av, bv}, {DRPC_INT64, ia, ib}};
  for (int c = 0; c < 2; c++) {
    drpc_tensor *a = on_dev(0, cases[c].dt, 2, sa, cases[c].a);
    drpc_tensor *b = on_dev(0, cases[c].dt, 2, sb, cases[c].b);
    drpc_tensor *o = empty(0, cases[c].dt, 2, so, NULL);
    REQUIRE(a && b && o);
    CHECK_EQ_INT(g_b->matmul(g_ctx, drpc_stream_current(0), drpc_tensor_data(o),
                             cases[c].dt, drpc_tensor_data(a),
                             drpc_tensor_data(b), 2, 3, 2, &err),
                 0);
    report("matmul", &err);
    drpc_tensor *h = to_cpu(o, NULL);
    REQUIRE(h != NULL);
    if (c == 0) {
      CHECK(drpc_tensor_get_f64(h, 0) == 58);
      CHECK(drpc_tensor_get_f64(h, 1) == 64);
      CHECK(drpc_tensor_get_f64(h, 2) == 139);
      CHECK(drpc_tensor_get_f64(h, 3) == 154);
    } else {
      CHECK_EQ_INT(drpc_tensor_get_i64(h, 0), 58);
      CHECK_EQ_INT(drpc_tensor_get_i64(h, 2), 139);
      /* 4*8 + 5*10 + 6*INT64_MAX, wrapped. */
      CHECK(drpc_tensor_get_i64(h, 3) ==
            (int64_t)(82u + 6u * (uint64_t)INT64_MAX));
    }
    drpc_tensor_decref(a);
    drpc_tensor_decref(b);
    drpc_tensor_decref(o);
    drpc_tensor_decref(h);
  }
}

static void test_stream_ordering(void) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_stream *A = drpc_stream_from_pool(0), *B = drpc_stream_from_pool(0);
  REQUIRE(A && B && A != B);
  int64_t n = 6, unit[1] = {1};
  float v[6] = {1, 2, 3, 4, 5, 6};
  drpc_tensor *h = drpc_tensor_from_data(DRPC_FLOAT32, 1, &n, v, true);
  drpc_tensor *x = drpc_tensor_to(h, dev(0), A, &err);
  drpc_tensor *y = empty(0, DRPC_FLOAT32, 1, &n, A);
  REQUIRE(h && x && y);
  drpc_dev_operand ox = operand_of(x, 1, unit);
  drpc_dev_operand three = number_f(3);
  CHECK_EQ_INT(g_b->binary(g_ctx, A, DRPC_DEVOP_MUL, drpc_tensor_data(y),
                           DRPC_FLOAT32, 1, &n, &ox, &three, 1, 0, &err),
               0);
  /* B reads y after an event recorded on A. */
  drpc_devevent *e = drpc_devevent_new(0, &err);
  REQUIRE(e != NULL);
  CHECK_EQ_INT(drpc_devevent_record(e, A, &err), 0);
  CHECK_EQ_INT(drpc_stream_wait_event(B, e, &err), 0);
  drpc_tensor *r = to_cpu(y, B);
  REQUIRE(r != NULL);
  for (int i = 0; i < 6; i++)
    CHECK(drpc_tensor_get_f64(r, i) == 3 * v[i]);
  drpc_tensor_decref(r);

  /* The same through drpc_stream_wait_stream. */
  drpc_dev_operand oy = operand_of(y, 1, unit);
  drpc_dev_operand one = number_f(1);
  CHECK_EQ_INT(g_b->binary(g_ctx, A, DRPC_DEVOP_ADD, drpc_tensor_data(x),
                           DRPC_FLOAT32, 1, &n, &oy, &one, 1, 0, &err),
               0);
  CHECK_EQ_INT(drpc_stream_wait_stream(B, A, &err), 0);
  CHECK_EQ_INT(drpc_stream_wait_stream(B, B, &err), 0);
  r = to_cpu(x, B);
  REQUIRE(r != NULL);
  for (int i = 0; i < 6; i++)
    CHECK(drpc_tensor_get_f64(r, i) == 3 * v[i] + 1);
  drpc_tensor_decref(r);

  /* event_sync waits for the point, after which the host may read. */
  CHECK_EQ_INT(k_fill(y, 8, A), 0);
  CHECK_EQ_INT(drpc_devevent_record(e, A, &err), 0);
  CHECK_EQ_INT(drpc_devevent_sync(e, &err), 0);
  r = to_cpu(y, A);
  REQUIRE(r != NULL);
  CHECK(drpc_tensor_get_f64(r, 5) == 8);
  report("ordering", &err);
  drpc_devevent_free(e);
  drpc_tensor_decref(r);
  drpc_tensor_decref(h);
  drpc_tensor_decref(x);
  drpc_tensor_decref(y);
}

static void test_ipc(void) {
  drpc_error err = DRPC_ERROR_INIT;
  if (!g_b->ipc_export) {
    printf("SKIP %s ipc: not supported\n", g_b->name);
    return;
  }
  int64_t n = 16;
  drpc_tensor *x = empty(0, DRPC_FLOAT32, 1, &n, NULL);
  REQUIRE(x != NULL);
  const char *p = (const char *)drpc_tensor_data(x) + 16;
  uint8_t handle[DRPC_IPC_HANDLE_MAX];
  size_t len = 0, off = 0;
  CHECK_EQ_INT(g_b->ipc_export(g_ctx, p, handle, &len, &off, &err), 0);
  report("ipc_export", &err);
  CHECK(len > 0 && len <= DRPC_IPC_HANDLE_MAX);
  CHECK_EQ_INT(off, 16);
  if (!g_sim) {
    /* The CUDA runtime opens handles only in another process. */
    printf("SKIP %s ipc_open: needs a second process\n", g_b->name);
    drpc_tensor_decref(x);
    return;
  }
  char *base = g_b->ipc_open(g_ctx, 0, handle, len, &err);
  CHECK(base == drpc_tensor_data(x));
  CHECK(base + off == p);
  CHECK(g_b->ipc_open(g_ctx, 0, handle, len, &err) == base);
  CHECK(g_b->ipc_open(g_ctx, 1, handle, len, &err) == NULL);
  CHECK_EQ_INT(err.code, DRPC_EINVAL);
  drpc_error_clear(&err);
  CHECK(g_b->ipc_open(g_ctx, 0, handle, len - 1, &err) == NULL);
  CHECK_EQ_INT(err.code, DRPC_EINVAL);
  drpc_error_clear(&err);
  uint8_t bad[DRPC_IPC_HANDLE_MAX];
  memcpy(bad, handle, len);
  bad[0] ^= 0x5a;
  CHECK(g_b->ipc_open(g_ctx, 0, bad, len, &err) == NULL);
  CHECK_EQ_INT(err.code, DRPC_EINVAL);
  CHECK_CONTAINS(err.msg, "unknown or freed");
  drpc_error_clear(&err);

  /* An IPC event carries the recorded point to whoever opens it. */
  drpc_stream *A = drpc_stream_from_pool(0), *B = drpc_stream_from_pool(0);
  drpc_devevent *e = g_b->ipc_event_new(g_ctx, 0, &err);
  REQUIRE(e != NULL);
  CHECK_EQ_INT(k_fill(x, 5, A), 0);
  CHECK_EQ_INT(drpc_devevent_record(e, A, &err), 0);
  uint8_t eh[DRPC_IPC_HANDLE_MAX];
  size_t elen = 0;
  CHECK_EQ_INT(g_b->ipc_event_export(g_ctx, e, eh, &elen, &err), 0);
  drpc_devevent *opened = g_b->ipc_event_open(g_ctx, eh, elen, &err);
  REQUIRE(opened != NULL);
  CHECK_EQ_INT(drpc_stream_wait_event(B, opened, &err), 0);
  drpc_tensor *h = to_cpu(x, B);
  REQUIRE(h != NULL);
  CHECK(drpc_tensor_get_f64(h, 15) == 5);
  drpc_tensor_decref(h);
  drpc_devevent_free(opened);
  drpc_devevent_free(e);
  report("ipc event", &err);
  CHECK(g_b->ipc_event_open(g_ctx, eh, elen, &err) == NULL);
  CHECK_EQ_INT(err.code, DRPC_EINVAL);
  drpc_error_clear(&err);
  drpc_devevent *plain = drpc_devevent_new(0, &err);
  REQUIRE(plain != NULL);
  CHECK_EQ_INT(g_b->ipc_event_export(g_ctx, plain, eh, &elen, &err),
               DRPC_EINVAL);
  drpc_error_clear(&err);
  drpc_devevent_free(plain);

  /* A freed allocation no longer opens. */
  drpc_tensor_decref(x);
  settle();
  CHECK(g_b->ipc_open(g_ctx, 0, handle, len, &err) == NULL);
  CHECK_EQ_INT(err.code, DRPC_EINVAL);
  drpc_error_clear(&err);
}

/* ---- two threads ------------------------------------------------------- */

typedef struct worker {
  int id;
  int failures;
  drpc_tensor *shared; /* written by worker 0, read by worker 1 */
  drpc_devevent *ready;
  pthread_barrier_t *barrier;
} worker;

static void *worker_main(void *arg) {
  worker *w = arg;
  drpc_error err = DRPC_ERROR_INIT;
  drpc_stream *s = drpc_stream_from_pool(0);
  drpc_stream_set_current(0, s);
  int64_t n = 8, unit[1] = {1};
  for (int it = 0; it < 40; it++) {
    float v[8];
    for (int i = 0; i < 8; i++)
      v[i] = (float)(w->id * 1000 + it * 10 + i);
    drpc_tensor *h = drpc_tensor_from_data(DRPC_FLOAT32, 1, &n, v, true);
    drpc_tensor *d = h ? drpc_tensor_to(h, dev(0), NULL, &err) : NULL;
    drpc_tensor *y =
        d ? drpc_tensor_empty_on(dev(0), DRPC_FLOAT32, 1, &n, NULL, &err)
          : NULL;
    drpc_dev_operand od = operand_of(d ? d : h, 1, unit);
    drpc_dev_operand k = number_f(it);
    int rc = y ? g_b->binary(g_ctx, s, DRPC_DEVOP_ADD, drpc_tensor_data(y),
                             DRPC_FLOAT32, 1, &n, &od, &k, 1, 0, &err)
               : -1;
    drpc_tensor *back = rc ? NULL : drpc_tensor_to(y, DRPC_CPU, NULL, &err);
    if (!back)
      w->failures++;
    for (int i = 0; back && i < 8; i++)
      w->failures += drpc_tensor_get_f64(back, i) != v[i] + it;
    drpc_tensor_decref(h);
    drpc_tensor_decref(d);
    drpc_tensor_decref(y);
    drpc_tensor_decref(back);
    drpc_error_clear(&err);
  }
  /* Worker 0 fills the shared tensor and records; worker 1 waits on the
   * event from its own stream and reads. */
  if (w->id == 0) {
    w->failures += g_b->fill(g_ctx, s, drpc_tensor_data(w->shared),
                             DRPC_FLOAT32, 8, 42, &err) != 0;
    w->failures += drpc_devevent_record(w->ready, s, &err) != 0;
  }
  pthread_barrier_wait(w->barrier);
  if (w->id == 1) {
    w->failures += drpc_stream_wait_event(s, w->ready, &err) != 0;
    drpc_tensor *back = drpc_tensor_to(w->shared, DRPC_CPU, s, &err);
    w->failures += !back || drpc_tensor_get_f64(back, 7) != 42;
    drpc_tensor_decref(back);
  }
  pthread_barrier_wait(w->barrier);
  drpc_error_clear(&err);
  return NULL;
}

static void test_threads(void) {
  drpc_error err = DRPC_ERROR_INIT;
  int64_t n = 8;
  pthread_barrier_t barrier;
  pthread_barrier_init(&barrier, NULL, 2);
  drpc_tensor *shared = empty(0, DRPC_FLOAT32, 1, &n, NULL);
  drpc_devevent *ready = drpc_devevent_new(0, &err);
  REQUIRE(shared && ready);
  worker w[2];
  pthread_t th[2];
  for (int i = 0; i < 2; i++) {
    w[i] = (worker){i, 0, shared, ready, &barrier};
    REQUIRE(pthread_create(&th[i], NULL, worker_main, &w[i]) == 0);
  }
  for (int i = 0; i < 2; i++) {
    pthread_join(th[i], NULL);
    CHECK_EQ_INT(w[i].failures, 0);
  }
  pthread_barrier_destroy(&barrier);
  drpc_devevent_free(ready);
  drpc_tensor_decref(shared);
  report("threads", &err);
}

/* ---- simcuda only: strictness ------------------------------------------ */

/* With simcuda, device memory is host memory: read it directly. */
static float peek(const drpc_tensor *t, int i) {
  return ((const float *)drpc_tensor_data(t))[i];
}

static void test_sim_missing_wait(void) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_stream *A = drpc_stream_from_pool(0), *B = drpc_stream_from_pool(0);
  int64_t n = 4;
  drpc_tensor *x = empty(0, DRPC_FLOAT32, 1, &n, A);
  REQUIRE(x != NULL);
  CHECK_EQ_INT(k_fill(x, 7, A), 0);
  CHECK_EQ_INT(sync_s(A), 0);
  CHECK(peek(x, 0) == 7);

  /* Queued work does not run until something waits for it. */
  uint64_t ran = drpc_simcuda_ops_run(g_sim);
  CHECK_EQ_INT(k_fill(x, 1, A), 0);
  CHECK(peek(x, 3) == 7);
  CHECK_EQ_INT(drpc_simcuda_ops_run(g_sim), ran);
  /* B forgot to wait for A: it copies the stale 7. */
  drpc_tensor *h = to_cpu(x, B);
  REQUIRE(h != NULL);
  CHECK(drpc_tensor_get_f64(h, 0) == 7);
  CHECK(peek(x, 0) == 7);
  drpc_tensor_decref(h);
  CHECK_EQ_INT(sync_s(A), 0);
  CHECK(peek(x, 0) == 1);
  CHECK(drpc_simcuda_ops_run(g_sim) > ran);

  /* With the wait, B sees A's work. */
  drpc_devevent *e = drpc_devevent_new(0, &err);
  REQUIRE(e != NULL);
  CHECK_EQ_INT(k_fill(x, 2, A), 0);
  CHECK_EQ_INT(drpc_devevent_record(e, A, &err), 0);
  CHECK_EQ_INT(drpc_stream_wait_event(B, e, &err), 0);
  CHECK(peek(x, 0) == 1);
  h = to_cpu(x, B);
  REQUIRE(h != NULL);
  CHECK(drpc_tensor_get_f64(h, 0) == 2);
  drpc_tensor_decref(h);

  /* A wait takes the point the event has when it is queued; recording
   * the event again moves only later waits. An event syncs to its point,
   * not past it. */
  CHECK_EQ_INT(k_fill(x, 3, A), 0);
  CHECK_EQ_INT(drpc_devevent_record(e, A, &err), 0);
  CHECK_EQ_INT(k_fill(x, 4, A), 0);
  CHECK_EQ_INT(drpc_stream_wait_event(B, e, &err), 0);
  CHECK_EQ_INT(drpc_devevent_record(e, A, &err), 0);
  CHECK_EQ_INT(k_fill(x, 5, A), 0);
  CHECK_EQ_INT(sync_s(B), 0);
  CHECK(peek(x, 0) == 3);
  CHECK_EQ_INT(drpc_devevent_sync(e, &err), 0);
  CHECK(peek(x, 0) == 4);
  CHECK_EQ_INT(sync_s(A), 0);
  CHECK(peek(x, 0) == 5);
  report("missing wait", &err);
  drpc_devevent_free(e);
  drpc_tensor_decref(x);
}

/* Memory handed back on its own stream while another stream still has work
 * queued that reads it (PyTorch's record_stream case) is reported by the
 * next sync, not read after free. */
static void test_sim_use_after_free(void) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_stream *A = drpc_stream_from_pool(0), *B = drpc_stream_from_pool(0);
  int64_t n = 4, unit[1] = {1};
  drpc_tensor *x = empty(0, DRPC_FLOAT32, 1, &n, A);
  drpc_tensor *y = empty(0, DRPC_FLOAT32, 1, &n, B);
  REQUIRE(x && y);
  CHECK_EQ_INT(k_fill(x, 1, A), 0);
  CHECK_EQ_INT(drpc_stream_wait_stream(B, A, &err), 0);
  CHECK_EQ_INT(g_b->strided_copy(g_ctx, B, drpc_tensor_data(y), DRPC_FLOAT32,
                                 drpc_tensor_data(x), DRPC_FLOAT32, 1, &n, unit,
                                 &err),
               0);
  drpc_tensor_decref(x); /* freed on A, with no event from B */
  CHECK_EQ_INT(sync_s(A), 0);
  CHECK_EQ_INT(drpc_stream_sync(B, &err), DRPC_ESTATE);
  CHECK_CONTAINS(err.msg, "freed before the work ran");
  drpc_error_clear(&err);
  CHECK_EQ_INT(sync_s(B), 0); /* reported once */
  drpc_tensor_decref(y);
}

static void test_sim_bad_arguments(void) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_stream *s0 = drpc_stream_default(0), *s1 = drpc_stream_default(1);
  int64_t n = 4;
  float host[4] = {0};
  drpc_tensor *x = empty(0, DRPC_FLOAT32, 1, &n, NULL);
  REQUIRE(x != NULL);
  void *p = drpc_tensor_data(x);

  CHECK(g_b->alloc(g_ctx, 0, 8, NULL, &err) == NULL);
  CHECK_EQ_INT(err.code, DRPC_EINVAL);
  drpc_error_clear(&err);
  CHECK(g_b->alloc(g_ctx, 0, 8, s1, &err) == NULL);
  CHECK_EQ_INT(err.code, DRPC_EINVAL);
  drpc_error_clear(&err);
  CHECK(g_b->stream_new(g_ctx, 2, &err) == NULL);
  CHECK_EQ_INT(err.code, DRPC_EINVAL);
  drpc_error_clear(&err);
  /* Kernels take device memory of their stream's device only. */
  CHECK_EQ_INT(g_b->fill(g_ctx, s0, host, DRPC_FLOAT32, 4, 1, &err),
               DRPC_EINVAL);
  CHECK_CONTAINS(err.msg, "not device memory");
  drpc_error_clear(&err);
  CHECK_EQ_INT(g_b->fill(g_ctx, s1, p, DRPC_FLOAT32, 4, 1, &err), DRPC_EINVAL);
  CHECK_CONTAINS(err.msg, "another device");
  drpc_error_clear(&err);
  CHECK_EQ_INT(g_b->fill(g_ctx, s0, p, DRPC_FLOAT32, 5, 1, &err), DRPC_EINVAL);
  CHECK_CONTAINS(err.msg, "past the end");
  drpc_error_clear(&err);
  CHECK_EQ_INT(g_b->fill(g_ctx, NULL, p, DRPC_FLOAT32, 4, 1, &err),
               DRPC_EINVAL);
  drpc_error_clear(&err);
  CHECK_EQ_INT(g_b->copy(g_ctx, host, DRPC_CPU, p, dev(0), 4, s1, &err),
               DRPC_EINVAL);
  drpc_error_clear(&err);
  drpc_dev_operand a = number_i(1);
  CHECK_EQ_INT(g_b->binary(g_ctx, s0, DRPC_DEVOP_DIV, p, DRPC_INT64, 1, &n, &a,
                           &a, 1, 1, &err),
               DRPC_EINVAL);
  drpc_error_clear(&err);
  int64_t bad_strides[1] = {2}, zero[1] = {0};
  CHECK_EQ_INT(g_b->strided_copy(g_ctx, s0, p, DRPC_FLOAT32, p, DRPC_FLOAT32, 1,
                                 &n, bad_strides, &err),
               DRPC_EINVAL);
  drpc_error_clear(&err);
  CHECK_EQ_INT(g_b->sum(g_ctx, s0, p, DRPC_FLOAT32, 1, p, DRPC_FLOAT32, 1, &n,
                        zero, bad_strides, &err),
               DRPC_EINVAL);
  drpc_error_clear(&err);
  drpc_devevent *e = drpc_devevent_new(0, &err);
  REQUIRE(e != NULL);
  CHECK_EQ_INT(drpc_devevent_record(e, s1, &err), DRPC_EINVAL);
  drpc_error_clear(&err);
  drpc_devevent_free(e);
  /* free returns nothing: a bad one is reported by the next sync. */
  g_b->free(g_ctx, 0, host, 16, s0);
  CHECK_EQ_INT(drpc_stream_sync(s1, &err), DRPC_EINVAL);
  CHECK_CONTAINS(err.msg, "not a live allocation");
  drpc_error_clear(&err);
  drpc_tensor_decref(x);
}

/* simcuda's SIM_QUEUE_MAX: a stream holding that much work runs its queue
 * before taking more, so memory stays bounded when nothing ever waits. */
#define SIM_QUEUE_MAX 65536

static void test_sim_queue_bound(void) {
  drpc_stream *s = drpc_stream_from_pool(1);
  int64_t n = 1;
  drpc_tensor *x = empty(1, DRPC_INT64, 1, &n, s);
  REQUIRE(x != NULL);
  CHECK_EQ_INT(sync_s(s), 0);
  uint64_t ran = drpc_simcuda_ops_run(g_sim);
  int failed = 0;
  for (int i = 0; i < SIM_QUEUE_MAX; i++)
    failed += k_fill(x, i, s) != 0;
  CHECK_EQ_INT(failed, 0);
  CHECK_EQ_INT(drpc_simcuda_ops_run(g_sim), ran);
  REQUIRE(k_fill(x, -1, s) == 0);
  CHECK_EQ_INT(drpc_simcuda_ops_run(g_sim), ran + SIM_QUEUE_MAX);
  CHECK_EQ_INT(*(const int64_t *)drpc_tensor_data(x), SIM_QUEUE_MAX - 1);
  CHECK_EQ_INT(sync_s(s), 0);
  CHECK_EQ_INT(*(const int64_t *)drpc_tensor_data(x), -1);
  drpc_tensor_decref(x);
}

/* ---- driver ------------------------------------------------------------ */

#define RUN_DEV(fn)                                                            \
  do {                                                                         \
    RUN(fn);                                                                   \
    check_no_leak();                                                           \
  } while (0)

static void suite(void) {
  g_b = drpc_device_backend_get(&g_ctx);
  printf("suite on %s\n", drpc_gpu_describe());
  RUN_DEV(test_devices);
  RUN_DEV(test_alloc_free);
  RUN_DEV(test_round_trip);
  RUN_DEV(test_to_noncontiguous);
  RUN_DEV(test_to_across_devices);
  RUN_DEV(test_fill);
  RUN_DEV(test_strided_copy);
  RUN_DEV(test_binary);
  RUN_DEV(test_sum);
  RUN_DEV(test_matmul);
  RUN_DEV(test_stream_ordering);
  RUN_DEV(test_ipc);
  RUN_DEV(test_threads);
}

int main(void) {
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_gpu_setup("sim:2", &err), 0);
  g_sim = NULL;
  drpc_device_backend_get(&g_sim);
  suite();
  RUN_DEV(test_sim_missing_wait);
  RUN_DEV(test_sim_use_after_free);
  RUN_DEV(test_sim_bad_arguments);
  RUN_DEV(test_sim_queue_bound);
  drpc_gpu_teardown();
  CHECK_EQ_INT(drpc_device_count(), 0);

  g_sim = NULL;
  if (drpc_gpu_setup("cuda", &err) == 0) {
    suite();
    drpc_gpu_teardown();
  } else {
    printf("SKIP cuda: %s\n", err.msg ? err.msg : drpc_strerror(err.code));
  }
  drpc_error_clear(&err);
  return test_finish();
}
