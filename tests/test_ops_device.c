/* Unit tests for core/ops.c on CUDA devices: every builtin computes on
 * cuda:N what it computes on the CPU, on simcuda and, where one is present,
 * on a real GPU. */
#include "drpc/device.h"
#include "drpc/gpu.h"
#include "drpc/ops.h"

#include <math.h>
#include <stdint.h>

#include "test.h"

static const drpc_dtype ALL_DTYPES[6] = {DRPC_FLOAT32, DRPC_FLOAT64, DRPC_INT64,
                                         DRPC_INT32,   DRPC_UINT8,   DRPC_BOOL};
static const drpc_dtype COMPUTE[3] = {DRPC_FLOAT32, DRPC_FLOAT64, DRPC_INT64};
static const char *const BINARY[4] = {"aten::add", "aten::sub", "aten::mul",
                                      "aten::div"};

/* The device the suite runs on (cuda:0 of simcuda or of the GPU). */
static drpc_device g_dev = {DRPC_DEVICE_CUDA, 0};

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})
#define VALS(...) ((const double[]){__VA_ARGS__})

/* ---- helpers ----------------------------------------------------------- */

static bool is_compute(drpc_dtype dt) {
  return dt == DRPC_FLOAT32 || dt == DRPC_FLOAT64 || dt == DRPC_INT64;
}

static void store(drpc_dtype dt, void *p, int64_t i, double v) {
  switch (dt) {
  case DRPC_FLOAT32:
    ((float *)p)[i] = (float)v;
    break;
  case DRPC_FLOAT64:
    ((double *)p)[i] = v;
    break;
  case DRPC_INT64:
    ((int64_t *)p)[i] = (int64_t)v;
    break;
  case DRPC_INT32:
    ((int32_t *)p)[i] = (int32_t)v;
    break;
  case DRPC_BOOL:
    ((uint8_t *)p)[i] = v != 0;
    break;
  default:
    ((uint8_t *)p)[i] = (uint8_t)v;
    break;
  }
}

/* A contiguous CPU tensor of dtype dt holding vals (converted). */
static drpc_tensor *make(drpc_dtype dt, int ndim, const int64_t *shape,
                         const double *vals) {
  drpc_tensor *t = drpc_tensor_empty(dt, ndim, shape);
  int64_t n = drpc_tensor_numel(t);
  for (int64_t i = 0; i < n; i++) {
    store(dt, drpc_tensor_data(t), i, vals[i]);
  }
  return t;
}

/* 0, 1, 2, ... (small enough for uint8; bool gets 0 then 1s). */
static drpc_tensor *iota(drpc_dtype dt, int ndim, const int64_t *shape) {
  drpc_tensor *t = drpc_tensor_empty(dt, ndim, shape);
  int64_t n = drpc_tensor_numel(t);
  for (int64_t i = 0; i < n; i++) {
    store(dt, drpc_tensor_data(t), i, (double)(i % 100));
  }
  return t;
}

/* A value that takes over the caller's reference to t. */
static drpc_value *tv(drpc_tensor *t) {
  drpc_value *v = drpc_value_tensor(t);
  drpc_tensor_decref(t);
  return v;
}

static drpc_value *mk(drpc_dtype dt, int ndim, const int64_t *shape,
                      const double *vals) {
  return tv(make(dt, ndim, shape, vals));
}

static drpc_value *kw1(const char *key, drpc_value *v) {
  drpc_value *d = drpc_value_dict();
  drpc_dict_set(d, key, v);
  return d;
}

/* The transpose of a 2x3 tensor holding 0..5: a 3x2 view, strides (1, 3). */
static drpc_value *transposed(drpc_dtype dt) {
  drpc_tensor *base = make(dt, 2, SHAPE(2, 3), VALS(0, 1, 2, 3, 4, 5));
  drpc_tensor *t =
      drpc_tensor_from_storage(base->storage, dt, 2, SHAPE(3, 2), 0);
  drpc_tensor_decref(base);
  t->strides[0] = 1;
  t->strides[1] = 3;
  return tv(t);
}

/* Column 1 of a 3x3 tensor holding 1..9: shape (3,), offset 1, stride 3. */
static drpc_value *column(drpc_dtype dt) {
  drpc_tensor *base = make(dt, 2, SHAPE(3, 3), VALS(1, 2, 3, 4, 5, 6, 7, 8, 9));
  drpc_tensor *t = drpc_tensor_from_storage(base->storage, dt, 1, SHAPE(3), 1);
  drpc_tensor_decref(base);
  t->strides[0] = 3;
  return tv(t);
}

/* 1 2 3 read backwards: offset 2, stride -1. */
static drpc_value *reversed(drpc_dtype dt) {
  drpc_tensor *t = make(dt, 1, SHAPE(3), VALS(1, 2, 3));
  t->offset = 2;
  t->strides[0] = -1;
  return tv(t);
}

/* One row of 3 seen as 2 rows (stride 0), as torch.expand makes. */
static drpc_value *expanded(drpc_dtype dt) {
  drpc_tensor *t = make(dt, 1, SHAPE(3), VALS(4, 5, 6));
  drpc_tensor *e = drpc_tensor_from_storage(t->storage, dt, 2, SHAPE(1, 3), 0);
  drpc_tensor_decref(t);
  e->shape[0] = 2;
  e->strides[0] = 0;
  return tv(e);
}

/* A view of t's storage, copied byte for byte to dev, with t's dtype,
 * shape, strides and offset: strided tensors stay strided on the device
 * (drpc_tensor_to would make them contiguous). */
static drpc_tensor *mirror(const drpc_tensor *t, drpc_device dev) {
  drpc_error err = DRPC_ERROR_INIT;
  int64_t nbytes = (int64_t)t->storage->nbytes;
  drpc_tensor *raw =
      drpc_tensor_from_storage(t->storage, DRPC_UINT8, 1, &nbytes, 0);
  drpc_tensor *moved = raw ? drpc_tensor_to(raw, dev, NULL, &err) : NULL;
  drpc_tensor_decref(raw);
  if (moved == NULL) {
    fprintf(stderr, "mirror: %s\n", err.msg ? err.msg : "out of memory");
    drpc_error_clear(&err);
    return NULL;
  }
  drpc_tensor *v =
      drpc_tensor_from_storage(moved->storage, t->dtype, 1, SHAPE(0), 0);
  drpc_tensor_decref(moved);
  v->ndim = t->ndim;
  memcpy(v->shape, t->shape, sizeof v->shape);
  memcpy(v->strides, t->strides, sizeof v->strides);
  v->offset = t->offset;
  return v;
}

/* v with every tensor (at any depth) mirrored to dev. */
static drpc_value *mirror_value(const drpc_value *v, drpc_device dev) {
  if (v == NULL) {
    return NULL;
  }
  if (v->kind == DRPC_VAL_TENSOR) {
    return tv(mirror(v->u.t, dev));
  }
  if (v->kind == DRPC_VAL_LIST) {
    drpc_value *l = drpc_value_list();
    for (size_t k = 0; k < drpc_value_len(v); k++) {
      drpc_list_append(l, mirror_value(drpc_list_at(v, k), dev));
    }
    return l;
  }
  if (v->kind == DRPC_VAL_DICT) {
    drpc_value *d = drpc_value_dict();
    for (size_t k = 0; k < drpc_value_len(v); k++) {
      drpc_dict_set(d, v->u.c.keys[k], mirror_value(drpc_list_at(v, k), dev));
    }
    return d;
  }
  return drpc_value_clone(v);
}

static drpc_value *run(const char *name, const drpc_value *args,
                       const drpc_value *kwargs, drpc_error *err) {
  drpc_error_clear(err);
  return drpc_op_run(name, args, kwargs, err);
}

static void dump(const char *what, const drpc_tensor *t) {
  fprintf(stderr, "  %s: %s [", what, drpc_dtype_name(t->dtype));
  for (int d = 0; d < t->ndim; d++) {
    fprintf(stderr, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
  }
  fprintf(stderr, "]");
  int64_t n = drpc_tensor_numel(t);
  for (int64_t i = 0; i < n && i < 24; i++) {
    fprintf(stderr, " %.17g", drpc_tensor_get_f64(t, i));
  }
  fprintf(stderr, "\n");
}

/* Checks that r is a contiguous tensor on dev, ordered on the calling
 * thread's current stream there, and returns it copied to the CPU (NULL
 * after a failed check). */
static drpc_tensor *device_result(const char *file, int line, drpc_value *r,
                                  drpc_device dev) {
  if (r == NULL || r->kind != DRPC_VAL_TENSOR || r->u.t == NULL) {
    test_failed_++;
    fprintf(stderr, "%s:%d: [%s] no tensor result\n", file, line,
            test_current_);
    return NULL;
  }
  const drpc_tensor *t = r->u.t;
  char name[16];
  if (!drpc_device_equal(drpc_tensor_device(t), dev) ||
      !drpc_tensor_is_contiguous(t) ||
      drpc_storage_stream(t->storage) != drpc_stream_current(dev.index)) {
    test_failed_++;
    fprintf(stderr,
            "%s:%d: [%s] result on %s (contiguous %d), not on the current "
            "stream of the device\n",
            file, line, test_current_,
            drpc_device_format(drpc_tensor_device(t), name, sizeof name),
            (int)drpc_tensor_is_contiguous(t));
    return NULL;
  }
  test_passed_++;
  drpc_error err = DRPC_ERROR_INIT;
  drpc_tensor *back = drpc_tensor_to(t, DRPC_CPU, NULL, &err);
  if (back == NULL) {
    test_failed_++;
    fprintf(stderr, "%s:%d: [%s] copy back: %s\n", file, line, test_current_,
            err.msg);
  }
  drpc_error_clear(&err);
  return back;
}

/* Runs name on args and kwargs (holding CPU tensors) on the CPU and again
 * with every tensor mirrored to g_dev. Both must succeed with equal tensors
 * (same dtype, shape and elements), the device's on g_dev. Frees args and
 * kwargs. */
static void check_same_(const char *file, int line, const char *name,
                        drpc_value *args, drpc_value *kwargs) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_value *dargs = mirror_value(args, g_dev);
  drpc_value *dkwargs = mirror_value(kwargs, g_dev);
  drpc_value *want = run(name, args, kwargs, &err);
  if (want == NULL || want->kind != DRPC_VAL_TENSOR) {
    test_failed_++;
    fprintf(stderr, "%s:%d: [%s] %s on the CPU: %s\n", file, line,
            test_current_, name, err.msg ? err.msg : "not a tensor");
  }
  drpc_value *got = run(name, dargs, dkwargs, &err);
  if (got == NULL) {
    test_failed_++;
    fprintf(stderr, "%s:%d: [%s] %s on the device: %s\n", file, line,
            test_current_, name, err.msg);
  } else if (want != NULL && want->kind == DRPC_VAL_TENSOR) {
    drpc_tensor *back = device_result(file, line, got, g_dev);
    if (back != NULL && drpc_tensor_equal(back, want->u.t)) {
      test_passed_++;
    } else if (back != NULL) {
      test_failed_++;
      fprintf(stderr, "%s:%d: [%s] %s differs on the device\n", file, line,
              test_current_, name);
      dump("cpu", want->u.t);
      dump("device", back);
    }
    drpc_tensor_decref(back);
  }
  drpc_value_free(got);
  drpc_value_free(want);
  drpc_value_free(args);
  drpc_value_free(kwargs);
  drpc_value_free(dargs);
  drpc_value_free(dkwargs);
  drpc_error_clear(&err);
}

#define CHECK_SAME(name, args, kwargs)                                         \
  check_same_(__FILE__, __LINE__, (name), (args), (kwargs))

/* As check_same_, but both runs must fail, with code and the same message,
 * which contains text. */
static void check_same_error_(const char *file, int line, const char *name,
                              drpc_value *args, drpc_value *kwargs, int code,
                              const char *text) {
  drpc_error cpu = DRPC_ERROR_INIT, dev = DRPC_ERROR_INIT;
  drpc_value *dargs = mirror_value(args, g_dev);
  drpc_value *dkwargs = mirror_value(kwargs, g_dev);
  drpc_value *r1 = run(name, args, kwargs, &cpu);
  drpc_value *r2 = run(name, dargs, dkwargs, &dev);
  bool ok = r1 == NULL && r2 == NULL && cpu.code == code && dev.code == code &&
            cpu.msg != NULL && dev.msg != NULL &&
            strcmp(cpu.msg, dev.msg) == 0 && strstr(cpu.msg, text) != NULL;
  if (ok) {
    test_passed_++;
  } else {
    test_failed_++;
    fprintf(stderr,
            "%s:%d: [%s] %s: want %d \"...%s...\" on both; cpu %s %d \"%s\", "
            "device %s %d \"%s\"\n",
            file, line, test_current_, name, code, text, r1 ? "ok" : "failed",
            cpu.code, cpu.msg ? cpu.msg : "", r2 ? "ok" : "failed", dev.code,
            dev.msg ? dev.msg : "");
  }
  drpc_value_free(r1);
  drpc_value_free(r2);
  drpc_value_free(args);
  drpc_value_free(kwargs);
  drpc_value_free(dargs);
  drpc_value_free(dkwargs);
  drpc_error_clear(&cpu);
  drpc_error_clear(&dev);
}

#define CHECK_SAME_ERROR(name, args, kwargs, code, text)                       \
  check_same_error_(__FILE__, __LINE__, (name), (args), (kwargs), (code),      \
                    (text))

/* Checks that the call failed with code and exactly the message text. */
#define CHECK_FAILS_WITH(r, err, want_code, text)                              \
  do {                                                                         \
    drpc_value *r_ = (r);                                                      \
    CHECK(r_ == NULL);                                                         \
    drpc_value_free(r_);                                                       \
    CHECK_EQ_INT((err)->code, (want_code));                                    \
    CHECK_STR_EQ((err)->msg, (text));                                          \
  } while (0)

/* Runs name on args and kwargs and frees them. */
static drpc_value *run_free(const char *name, drpc_value *args,
                            drpc_value *kwargs, drpc_error *err) {
  drpc_value *r = run(name, args, kwargs, err);
  drpc_value_free(args);
  drpc_value_free(kwargs);
  return r;
}

/* A tensor on dev wrapping host memory no backend owns: for device checks
 * that must fail before any kernel could read it. */
static drpc_tensor *fake_on(drpc_device dev) {
  static float mem[4];
  drpc_storage *s = drpc_storage_wrap(mem, sizeof mem, dev, NULL, NULL);
  drpc_tensor *t = drpc_tensor_from_storage(s, DRPC_FLOAT32, 1, SHAPE(4), 0);
  drpc_storage_decref(s);
  return t;
}

/* ---- elementwise ops --------------------------------------------------- */

static void test_binary_dtypes(void) {
  /* Every pair of dtypes: compute dtypes promote, the others are refused
   * on the device as on the CPU. */
  for (int op = 0; op < 4; op++) {
    for (int i = 0; i < 6; i++) {
      for (int j = 0; j < 6; j++) {
        drpc_dtype a = ALL_DTYPES[i], b = ALL_DTYPES[j];
        drpc_value *args =
            drpc_value_list_of(2, mk(a, 2, SHAPE(2, 3), VALS(1, 2, 3, 4, 5, 6)),
                               mk(b, 2, SHAPE(2, 3), VALS(3, 1, 2, 1, 4, 2)));
        if (is_compute(a) && is_compute(b)) {
          CHECK_SAME(BINARY[op], args, NULL);
        } else {
          CHECK_SAME_ERROR(BINARY[op], args, NULL, DRPC_ETYPE,
                           "unsupported dtype");
        }
      }
    }
  }
}

static void test_numbers(void) {
  for (int op = 0; op < 4; op++) {
    for (int k = 0; k < 3; k++) {
      drpc_dtype dt = COMPUTE[k];
      drpc_value *nums[3] = {drpc_value_int(3), drpc_value_float(2.5),
                             drpc_value_bool(true)};
      for (int n = 0; n < 3; n++) {
        CHECK_SAME(BINARY[op],
                   drpc_value_list_of(2,
                                      mk(dt, 2, SHAPE(2, 2), VALS(1, -2, 3, 4)),
                                      drpc_value_clone(nums[n])),
                   NULL);
        CHECK_SAME(
            BINARY[op],
            drpc_value_list_of(2, drpc_value_clone(nums[n]),
                               mk(dt, 2, SHAPE(2, 2), VALS(1, -2, 3, 4))),
            NULL);
        drpc_value_free(nums[n]);
      }
    }
  }
  /* Numbers are converted to the compute dtype as on the CPU: 16777217
   * rounds to a float32 before adding, 0.1 too. */
  CHECK_SAME("aten::add",
             drpc_value_list_of(2, mk(DRPC_FLOAT32, 1, SHAPE(2), VALS(0, 1)),
                                drpc_value_int(16777217)),
             NULL);
  CHECK_SAME("aten::mul",
             drpc_value_list_of(2, mk(DRPC_FLOAT32, 1, SHAPE(2), VALS(3, 7)),
                                drpc_value_float(0.1)),
             NULL);
  CHECK_SAME("aten::sub",
             drpc_value_list_of(2, drpc_value_float(0.1),
                                mk(DRPC_FLOAT64, 1, SHAPE(2), VALS(3, 7))),
             NULL);
  /* int64 wraps. */
  drpc_tensor *big = drpc_tensor_new(DRPC_INT64, 1, SHAPE(2));
  ((int64_t *)drpc_tensor_data(big))[0] = INT64_MAX;
  ((int64_t *)drpc_tensor_data(big))[1] = INT64_MIN;
  CHECK_SAME("aten::add",
             drpc_value_list_of(2, drpc_value_tensor(big), drpc_value_int(1)),
             NULL);
  CHECK_SAME("aten::mul",
             drpc_value_list_of(2, drpc_value_tensor(big), drpc_value_int(3)),
             NULL);
  drpc_tensor_decref(big);
  /* Division: int64 / int64 is float32, 16777217 rounds first, and x / 0
   * is infinite. */
  CHECK_SAME(
      "aten::div",
      drpc_value_list_of(2, mk(DRPC_INT64, 1, SHAPE(3), VALS(16777217, 7, -7)),
                         drpc_value_int(2)),
      NULL);
  CHECK_SAME("aten::div",
             drpc_value_list_of(2, mk(DRPC_INT64, 1, SHAPE(2), VALS(1, -1)),
                                mk(DRPC_INT64, 1, SHAPE(2), VALS(0, 0))),
             NULL);
  /* A 0-d device tensor with a number. */
  CHECK_SAME("aten::mul",
             drpc_value_list_of(2, mk(DRPC_INT64, 0, NULL, VALS(6)),
                                drpc_value_float(0.5)),
             NULL);
}

static void test_alpha(void) {
  for (int k = 0; k < 3; k++) {
    drpc_dtype dt = COMPUTE[k];
    const char *ops[2] = {"aten::add", "aten::sub"};
    for (int op = 0; op < 2; op++) {
      CHECK_SAME(ops[op],
                 drpc_value_list_of(3, mk(dt, 1, SHAPE(3), VALS(1, 2, 3)),
                                    mk(dt, 1, SHAPE(3), VALS(4, 5, 6)),
                                    drpc_value_int(-3)),
                 NULL);
      CHECK_SAME(ops[op],
                 drpc_value_list_of(2, mk(dt, 1, SHAPE(3), VALS(1, 2, 3)),
                                    drpc_value_int(7)),
                 kw1("alpha", drpc_value_bool(true)));
      if (dt == DRPC_INT64) {
        CHECK_SAME_ERROR(
            ops[op],
            drpc_value_list_of(3, mk(dt, 1, SHAPE(3), VALS(1, 2, 3)),
                               mk(dt, 1, SHAPE(3), VALS(4, 5, 6)),
                               drpc_value_float(0.5)),
            NULL, DRPC_ETYPE,
            "For integral input tensors, argument alpha must not be a "
            "floating point number.");
      } else {
        /* float32 rounds alpha to float32 first. */
        CHECK_SAME(ops[op],
                   drpc_value_list_of(2, mk(dt, 1, SHAPE(3), VALS(1, 2, 3)),
                                      mk(dt, 1, SHAPE(3), VALS(4, 5, 6))),
                   kw1("alpha", drpc_value_float(0.1)));
      }
    }
  }
  CHECK_SAME_ERROR("aten::add",
                   drpc_value_list_of(3, mk(DRPC_FLOAT32, 1, SHAPE(1), VALS(1)),
                                      drpc_value_int(1),
                                      mk(DRPC_FLOAT32, 1, SHAPE(1), VALS(1))),
                   NULL, DRPC_ETYPE,
                   "aten::add: argument 'alpha' must be a number, not tensor");
}

static void test_broadcast(void) {
  for (int op = 0; op < 4; op++) {
    /* (2,3) with (3,), (3,1) with (1,4), (2,1,3) with (4,1). */
    CHECK_SAME(BINARY[op],
               drpc_value_list_of(
                   2, mk(DRPC_FLOAT32, 2, SHAPE(2, 3), VALS(0, 1, 2, 3, 4, 5)),
                   mk(DRPC_FLOAT32, 1, SHAPE(3), VALS(10, 20, 30))),
               NULL);
    CHECK_SAME(BINARY[op],
               drpc_value_list_of(
                   2, mk(DRPC_INT64, 2, SHAPE(3, 1), VALS(1, 2, 3)),
                   mk(DRPC_INT64, 2, SHAPE(1, 4), VALS(1, 10, 100, 1000))),
               NULL);
    CHECK_SAME(BINARY[op],
               drpc_value_list_of(
                   2, tv(iota(DRPC_FLOAT64, 3, SHAPE(2, 1, 3))),
                   mk(DRPC_FLOAT64, 2, SHAPE(4, 1), VALS(1, 100, 200, 300))),
               NULL);
    /* A 0-d tensor on either side, and two of them. */
    CHECK_SAME(
        BINARY[op],
        drpc_value_list_of(2, mk(DRPC_FLOAT64, 0, NULL, VALS(10)),
                           mk(DRPC_FLOAT64, 2, SHAPE(2, 2), VALS(1, 2, 3, 4))),
        NULL);
    CHECK_SAME(
        BINARY[op],
        drpc_value_list_of(2, mk(DRPC_INT64, 2, SHAPE(2, 2), VALS(1, 2, 3, 4)),
                           mk(DRPC_INT64, 0, NULL, VALS(3))),
        NULL);
    CHECK_SAME(BINARY[op],
               drpc_value_list_of(2, mk(DRPC_FLOAT32, 0, NULL, VALS(1)),
                                  mk(DRPC_FLOAT64, 0, NULL, VALS(2))),
               NULL);
    /* result_type: a float64 0-d tensor leaves a float32 tensor float32,
     * but makes an int64 tensor float64. */
    CHECK_SAME(BINARY[op],
               drpc_value_list_of(2, mk(DRPC_FLOAT32, 1, SHAPE(2), VALS(1, 2)),
                                  mk(DRPC_FLOAT64, 0, NULL, VALS(0.1))),
               NULL);
    CHECK_SAME(BINARY[op],
               drpc_value_list_of(2, mk(DRPC_INT64, 1, SHAPE(2), VALS(1, 2)),
                                  mk(DRPC_FLOAT64, 0, NULL, VALS(0.1))),
               NULL);
    /* An empty result. */
    CHECK_SAME(BINARY[op],
               drpc_value_list_of(2, mk(DRPC_FLOAT32, 2, SHAPE(0, 3), VALS(0)),
                                  mk(DRPC_FLOAT32, 1, SHAPE(3), VALS(1, 2, 3))),
               NULL);
  }
  CHECK_SAME_ERROR(
      "aten::mul",
      drpc_value_list_of(2, mk(DRPC_FLOAT32, 1, SHAPE(3), VALS(1, 2, 3)),
                         tv(iota(DRPC_FLOAT32, 2, SHAPE(2, 4)))),
      NULL, DRPC_EINVAL,
      "aten::mul: The size of tensor a (3) must match the size of tensor b "
      "(4) at non-singleton dimension 1");
}

/* ---- strided input ----------------------------------------------------- */

static void test_non_contiguous(void) {
  for (int k = 0; k < 3; k++) {
    drpc_dtype dt = COMPUTE[k];
    for (int op = 0; op < 4; op++) {
      CHECK_SAME(BINARY[op],
                 drpc_value_list_of(
                     2, transposed(dt),
                     mk(dt, 2, SHAPE(3, 2), VALS(10, 20, 30, 40, 50, 60))),
                 NULL);
      CHECK_SAME(BINARY[op], drpc_value_list_of(2, column(dt), reversed(dt)),
                 NULL);
      CHECK_SAME(BINARY[op],
                 drpc_value_list_of(2, transposed(dt),
                                    mk(dt, 1, SHAPE(2), VALS(1, 2))),
                 NULL);
      CHECK_SAME(BINARY[op],
                 drpc_value_list_of(2, expanded(dt), drpc_value_int(2)), NULL);
    }
    CHECK_SAME("aten::sum", drpc_value_list_of(1, transposed(dt)), NULL);
    CHECK_SAME("aten::sum",
               drpc_value_list_of(2, transposed(dt), drpc_value_int(0)), NULL);
    CHECK_SAME("aten::sum",
               drpc_value_list_of(3, transposed(dt), drpc_value_int(1),
                                  drpc_value_bool(true)),
               NULL);
    CHECK_SAME("aten::sum", drpc_value_list_of(1, reversed(dt)), NULL);
    CHECK_SAME("aten::sum",
               drpc_value_list_of(2, expanded(dt), drpc_value_int(0)), NULL);
    CHECK_SAME("aten::clone", drpc_value_list_of(1, transposed(dt)), NULL);
    CHECK_SAME("aten::clone", drpc_value_list_of(1, column(dt)), NULL);
    CHECK_SAME("aten::clone", drpc_value_list_of(1, reversed(dt)), NULL);
    CHECK_SAME("aten::clone", drpc_value_list_of(1, expanded(dt)), NULL);
  }
}

/* ---- aten::sum --------------------------------------------------------- */

static void test_sum(void) {
  for (int k = 0; k < 6; k++) {
    drpc_dtype dt = ALL_DTYPES[k];
#define T23 mk(dt, 2, SHAPE(2, 3), VALS(1, 2, 3, 4, 5, 6))
    if (!is_compute(dt)) {
      CHECK_SAME_ERROR("aten::sum", drpc_value_list_of(1, T23), NULL,
                       DRPC_ETYPE, "aten::sum: unsupported dtype");
      continue;
    }
    CHECK_SAME("aten::sum", drpc_value_list_of(1, T23), NULL);
    for (int d = -2; d < 2; d++) {
      CHECK_SAME("aten::sum", drpc_value_list_of(2, T23, drpc_value_int(d)),
                 NULL);
      CHECK_SAME(
          "aten::sum",
          drpc_value_list_of(3, T23, drpc_value_int(d), drpc_value_bool(true)),
          NULL);
    }
    CHECK_SAME("aten::sum", drpc_value_list_of(1, T23),
               kw1("keepdim", drpc_value_bool(true)));
    CHECK_SAME("aten::sum", drpc_value_list_of(1, T23),
               kw1("dim", drpc_value_list()));
    CHECK_SAME("aten::sum", drpc_value_list_of(1, T23),
               kw1("dim", drpc_value_list_of(2, drpc_value_int(0),
                                             drpc_value_int(-1))));
    /* Three dimensions: the outer two reduced (kept or not), the middle
     * one. */
    for (int keep = 0; keep < 2; keep++) {
      CHECK_SAME("aten::sum",
                 drpc_value_list_of(3, tv(iota(dt, 3, SHAPE(2, 3, 4))),
                                    drpc_value_list_of(2, drpc_value_int(0),
                                                       drpc_value_int(2)),
                                    drpc_value_bool(keep)),
                 NULL);
      CHECK_SAME("aten::sum",
                 drpc_value_list_of(3, tv(iota(dt, 3, SHAPE(2, 3, 4))),
                                    drpc_value_int(1), drpc_value_bool(keep)),
                 NULL);
    }
    /* Empty tensors sum to zeros; a 0-d tensor to itself. */
    CHECK_SAME("aten::sum",
               drpc_value_list_of(1, mk(dt, 2, SHAPE(0, 3), VALS(0))), NULL);
    CHECK_SAME("aten::sum",
               drpc_value_list_of(2, mk(dt, 2, SHAPE(0, 3), VALS(0)),
                                  drpc_value_int(0)),
               NULL);
    CHECK_SAME("aten::sum",
               drpc_value_list_of(2, mk(dt, 2, SHAPE(3, 0), VALS(0)),
                                  drpc_value_int(0)),
               NULL);
    CHECK_SAME("aten::sum", drpc_value_list_of(1, mk(dt, 0, NULL, VALS(7))),
               NULL);
    CHECK_SAME(
        "aten::sum",
        drpc_value_list_of(2, mk(dt, 0, NULL, VALS(7)), drpc_value_int(-1)),
        NULL);
    CHECK_SAME_ERROR("aten::sum", drpc_value_list_of(2, T23, drpc_value_int(2)),
                     NULL, DRPC_EINVAL,
                     "aten::sum: Dimension out of range (expected to be in "
                     "range of [-2, 1], but got 2)");
    CHECK_SAME_ERROR("aten::sum", drpc_value_list_of(1, T23),
                     kw1("dim", drpc_value_list_of(2, drpc_value_int(1),
                                                   drpc_value_int(-1))),
                     DRPC_EINVAL, "dim 1 appears multiple times");
#undef T23
  }
  /* int64 sums wrap. */
  drpc_tensor *big = drpc_tensor_new(DRPC_INT64, 1, SHAPE(2));
  ((int64_t *)drpc_tensor_data(big))[0] = INT64_MAX;
  ((int64_t *)drpc_tensor_data(big))[1] = 2;
  CHECK_SAME("aten::sum", drpc_value_list_of(1, tv(big)), NULL);
}

/* ---- aten::ones / aten::zeros ------------------------------------------ */

/* ones/zeros with kwargs on dev (given as device=name) against the CPU. */
static void check_filled_(const char *file, int line, const char *name,
                          drpc_value *args, drpc_value *kwargs,
                          drpc_device dev) {
  char dev_name[16];
  drpc_device_format(dev, dev_name, sizeof dev_name);
  drpc_value *dkwargs = kwargs ? drpc_value_clone(kwargs) : drpc_value_dict();
  drpc_dict_set(dkwargs, "device", drpc_value_str(dev_name));
  drpc_error err = DRPC_ERROR_INIT;
  drpc_value *want = run(name, args, kwargs, &err);
  if (want == NULL) {
    test_failed_++;
    fprintf(stderr, "%s:%d: [%s] %s on the CPU: %s\n", file, line,
            test_current_, name, err.msg);
  }
  drpc_value *got = run(name, args, dkwargs, &err);
  drpc_tensor *back = device_result(file, line, got, dev);
  if (back != NULL && want != NULL && drpc_tensor_equal(back, want->u.t)) {
    test_passed_++;
  } else if (back != NULL) {
    test_failed_++;
    fprintf(stderr, "%s:%d: [%s] %s differs on %s\n", file, line, test_current_,
            name, dev_name);
  }
  drpc_tensor_decref(back);
  drpc_value_free(got);
  drpc_value_free(want);
  drpc_value_free(args);
  drpc_value_free(kwargs);
  drpc_value_free(dkwargs);
  drpc_error_clear(&err);
}

#define CHECK_FILLED(name, args, kwargs, dev)                                  \
  check_filled_(__FILE__, __LINE__, (name), (args), (kwargs), (dev))

static void test_ones_zeros(void) {
  int ndev = drpc_device_count();
  const char *names[2] = {"aten::ones", "aten::zeros"};
  const char *dtypes[3] = {"float32", "torch.float64", "long"};
  for (int i = 0; i < ndev && i < 2; i++) {
    drpc_device dev = {DRPC_DEVICE_CUDA, (int8_t)i};
    for (int n = 0; n < 2; n++) {
      for (int k = 0; k < 3; k++) {
        CHECK_FILLED(
            names[n],
            drpc_value_list_of(2, drpc_value_int(2), drpc_value_int(3)),
            kw1("dtype", drpc_value_str(dtypes[k])), dev);
      }
      CHECK_FILLED(
          names[n],
          drpc_value_list_of(1, drpc_value_list_of(1, drpc_value_int(5))), NULL,
          dev);
      CHECK_FILLED(names[n], NULL, kw1("size", drpc_value_int(4)), dev);
      CHECK_FILLED(names[n], drpc_value_list_of(1, drpc_value_list()), NULL,
                   dev);
      CHECK_FILLED(names[n],
                   drpc_value_list_of(2, drpc_value_int(0), drpc_value_int(3)),
                   NULL, dev);
    }
  }
  /* "cuda" is cuda:0, as drpc_device_parse reads it. */
  drpc_error err = DRPC_ERROR_INIT;
  drpc_value *r =
      run_free("aten::ones", drpc_value_list_of(1, drpc_value_int(2)),
               kw1("device", drpc_value_str("cuda")), &err);
  drpc_tensor *back =
      device_result(__FILE__, __LINE__, r, (drpc_device){DRPC_DEVICE_CUDA, 0});
  CHECK(back != NULL && drpc_tensor_get_f64(back, 1) == 1.0);
  drpc_tensor_decref(back);
  drpc_value_free(r);
  /* Errors are the CPU's: checked before the device is touched. */
  drpc_value *kw = drpc_value_dict();
  drpc_dict_set(kw, "device", drpc_value_str("cuda:0"));
  drpc_dict_set(kw, "dtype", drpc_value_str("int32"));
  CHECK_FAILS_WITH(run_free("aten::ones",
                            drpc_value_list_of(1, drpc_value_int(2)), kw, &err),
                   &err, DRPC_ETYPE, "aten::ones: unsupported dtype int32");
  CHECK_FAILS_WITH(
      run_free("aten::zeros",
               drpc_value_list_of(2, drpc_value_int(2), drpc_value_int(-1)),
               kw1("device", drpc_value_str("cuda:0")), &err),
      &err, DRPC_EINVAL,
      "aten::zeros: Trying to create tensor with negative dimension -1: "
      "[2, -1]");
  CHECK_FAILS_WITH(
      run_free(
          "aten::ones",
          drpc_value_list_of(2, drpc_value_int(1LL << 30), drpc_value_int(2)),
          kw1("device", drpc_value_str("cuda:0")), &err),
      &err, DRPC_EINVAL,
      "aten::ones: result of 8589934592 bytes exceeds limit 4294967296");
  /* One past the last device. */
  char name[16], want[64];
  snprintf(name, sizeof name, "cuda:%d", ndev);
  snprintf(want, sizeof want, "aten::zeros: no such device %s", name);
  CHECK_FAILS_WITH(run_free("aten::zeros",
                            drpc_value_list_of(1, drpc_value_int(2)),
                            kw1("device", drpc_value_str(name)), &err),
                   &err, DRPC_EINVAL, want);
  drpc_error_clear(&err);
}

/* ---- aten::clone ------------------------------------------------------- */

static void test_clone(void) {
  /* clone copies elements, so every dtype works on the device too. */
  for (int k = 0; k < 6; k++) {
    drpc_dtype dt = ALL_DTYPES[k];
    CHECK_SAME("aten::clone",
               drpc_value_list_of(1, tv(iota(dt, 2, SHAPE(3, 4)))), NULL);
    CHECK_SAME("aten::clone", drpc_value_list_of(1, transposed(dt)), NULL);
    CHECK_SAME("aten::clone", drpc_value_list_of(1, mk(dt, 0, NULL, VALS(1))),
               NULL);
    CHECK_SAME("aten::clone",
               drpc_value_list_of(1, mk(dt, 2, SHAPE(0, 2), VALS(0))), NULL);
  }
  /* A new storage, on the same device. */
  drpc_error err = DRPC_ERROR_INIT;
  drpc_tensor *cpu = make(DRPC_FLOAT32, 1, SHAPE(3), VALS(1, 2, 3));
  drpc_tensor *t = drpc_tensor_to(cpu, g_dev, NULL, &err);
  drpc_value *r = run_free(
      "aten::clone", drpc_value_list_of(1, drpc_value_tensor(t)), NULL, &err);
  CHECK(r != NULL && r->u.t->storage != t->storage);
  drpc_tensor *back = device_result(__FILE__, __LINE__, r, g_dev);
  CHECK(back != NULL && drpc_tensor_equal(back, cpu));
  CHECK_EQ_INT(t->refcount, 1);
  drpc_tensor_decref(back);
  drpc_value_free(r);
  drpc_tensor_decref(t);
  drpc_tensor_decref(cpu);
  drpc_error_clear(&err);
}

/* ---- aten::matmul ------------------------------------------------------ */

static void test_matmul(void) {
  for (int i = 0; i < 6; i++) {
    for (int j = 0; j < 6; j++) {
      drpc_dtype a = ALL_DTYPES[i], b = ALL_DTYPES[j];
      drpc_value *args = drpc_value_list_of(
          2, tv(iota(a, 2, SHAPE(2, 3))),
          mk(b, 2, SHAPE(3, 4), VALS(1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3)));
      if (is_compute(a) && is_compute(b)) {
        CHECK_SAME("aten::matmul", args, NULL);
      } else {
        CHECK_SAME_ERROR("aten::matmul", args, NULL, DRPC_ETYPE,
                         "aten::matmul: unsupported dtype");
      }
    }
  }
  for (int k = 0; k < 3; k++) {
    drpc_dtype dt = COMPUTE[k];
    /* Strided operands are made contiguous first. */
    CHECK_SAME(
        "aten::matmul",
        drpc_value_list_of(2, transposed(dt), tv(iota(dt, 2, SHAPE(2, 3)))),
        NULL);
    CHECK_SAME(
        "aten::matmul",
        drpc_value_list_of(2, tv(iota(dt, 2, SHAPE(2, 3))), transposed(dt)),
        NULL);
    CHECK_SAME("aten::matmul",
               drpc_value_list_of(2, expanded(dt), transposed(dt)), NULL);
    /* Empty sums are zeros; empty results are empty. */
    CHECK_SAME("aten::matmul",
               drpc_value_list_of(2, mk(dt, 2, SHAPE(2, 0), VALS(0)),
                                  mk(dt, 2, SHAPE(0, 3), VALS(0))),
               NULL);
    CHECK_SAME("aten::matmul",
               drpc_value_list_of(2, mk(dt, 2, SHAPE(0, 2), VALS(0)),
                                  tv(iota(dt, 2, SHAPE(2, 3)))),
               NULL);
  }
  CHECK_SAME_ERROR("aten::matmul",
                   drpc_value_list_of(2, tv(iota(DRPC_FLOAT32, 2, SHAPE(2, 3))),
                                      tv(iota(DRPC_FLOAT32, 2, SHAPE(2, 3)))),
                   NULL, DRPC_EINVAL,
                   "aten::matmul: mat1 and mat2 shapes cannot be multiplied "
                   "(2x3 and 2x3)");
  CHECK_SAME_ERROR("aten::matmul",
                   drpc_value_list_of(2, tv(iota(DRPC_FLOAT32, 1, SHAPE(3))),
                                      tv(iota(DRPC_FLOAT32, 2, SHAPE(3, 3)))),
                   NULL, DRPC_EINVAL,
                   "aten::matmul: only 2-D tensors are supported, got 1-D and "
                   "2-D");
}

/* ---- devices ----------------------------------------------------------- */

static void test_mixed_devices(void) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_tensor *cpu = make(DRPC_FLOAT32, 2, SHAPE(2, 2), VALS(1, 2, 3, 4));
  drpc_tensor *dev = drpc_tensor_to(cpu, g_dev, NULL, &err);
  CHECK(dev != NULL);
  for (int op = 0; op < 4; op++) {
    char want[160];
    snprintf(want, sizeof want,
             "%s: Expected all tensors to be on the same device, but found at "
             "least two devices, cuda:0 and cpu!",
             BINARY[op]);
    CHECK_FAILS_WITH(run_free(BINARY[op],
                              drpc_value_list_of(2, drpc_value_tensor(dev),
                                                 drpc_value_tensor(cpu)),
                              NULL, &err),
                     &err, DRPC_EINVAL, want);
  }
  /* The devices are named in the order of the operands. */
  CHECK_FAILS_WITH(run_free("aten::sub",
                            drpc_value_list_of(2, drpc_value_tensor(cpu),
                                               drpc_value_tensor(dev)),
                            NULL, &err),
                   &err, DRPC_EINVAL,
                   "aten::sub: Expected all tensors to be on the same device, "
                   "but found at least two devices, cpu and cuda:0!");
  CHECK_FAILS_WITH(run_free("aten::matmul",
                            drpc_value_list_of(2, drpc_value_tensor(cpu),
                                               drpc_value_tensor(dev)),
                            NULL, &err),
                   &err, DRPC_EINVAL,
                   "aten::matmul: Expected all tensors to be on the same "
                   "device, but found at least two devices, cpu and cuda:0!");
  /* Named arguments count in parameter order, not in the order given. */
  drpc_value *kw = drpc_value_dict();
  drpc_dict_set(kw, "other", drpc_value_tensor(dev));
  drpc_dict_set(kw, "input", drpc_value_tensor(cpu));
  CHECK_FAILS_WITH(run_free("aten::add", drpc_value_list(), kw, &err), &err,
                   DRPC_EINVAL,
                   "aten::add: Expected all tensors to be on the same device, "
                   "but found at least two devices, cpu and cuda:0!");
  /* A 0-d CPU tensor is a tensor too. */
  CHECK_FAILS_WITH(
      run_free("aten::mul",
               drpc_value_list_of(2, drpc_value_tensor(dev),
                                  mk(DRPC_FLOAT32, 0, NULL, VALS(2))),
               NULL, &err),
      &err, DRPC_EINVAL,
      "aten::mul: Expected all tensors to be on the same device, but found "
      "at least two devices, cuda:0 and cpu!");
  if (drpc_device_count() >= 2) {
    drpc_tensor *dev1 =
        drpc_tensor_to(cpu, (drpc_device){DRPC_DEVICE_CUDA, 1}, NULL, &err);
    CHECK_FAILS_WITH(run_free("aten::add",
                              drpc_value_list_of(2, drpc_value_tensor(dev),
                                                 drpc_value_tensor(dev1)),
                              NULL, &err),
                     &err, DRPC_EINVAL,
                     "aten::add: Expected all tensors to be on the same "
                     "device, but found at least two devices, cuda:0 and "
                     "cuda:1!");
    /* Work on cuda:1 runs on cuda:1's current stream. */
    drpc_value *r = run_free(
        "aten::add",
        drpc_value_list_of(2, drpc_value_tensor(dev1), drpc_value_tensor(dev1)),
        NULL, &err);
    drpc_tensor *back = device_result(__FILE__, __LINE__, r,
                                      (drpc_device){DRPC_DEVICE_CUDA, 1});
    CHECK(back != NULL && drpc_tensor_get_f64(back, 3) == 8.0);
    drpc_tensor_decref(back);
    drpc_value_free(r);
    drpc_tensor_decref(dev1);
  }
  /* Numbers go with any device. */
  drpc_value *r = run_free(
      "aten::add",
      drpc_value_list_of(2, drpc_value_float(0.5), drpc_value_tensor(dev)),
      kw1("alpha", drpc_value_int(2)), &err);
  drpc_tensor *back = device_result(__FILE__, __LINE__, r, g_dev);
  CHECK(back != NULL && drpc_tensor_get_f64(back, 0) == 2.5);
  drpc_tensor_decref(back);
  drpc_value_free(r);
  drpc_tensor_decref(dev);
  drpc_tensor_decref(cpu);
  drpc_error_clear(&err);
}

/* A tensor on a CUDA index the backend does not have. */
static void test_no_such_device(int index) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_device bad = {DRPC_DEVICE_CUDA, (int8_t)index};
  char name[16], want[96];
  drpc_device_format(bad, name, sizeof name);
  drpc_tensor *t = fake_on(bad);
  snprintf(want, sizeof want, "aten::add: no such device %s (argument 'input')",
           name);
  CHECK_FAILS_WITH(
      run_free("aten::add",
               drpc_value_list_of(2, drpc_value_tensor(t), drpc_value_int(1)),
               NULL, &err),
      &err, DRPC_EINVAL, want);
  snprintf(want, sizeof want,
           "aten::matmul: no such device %s (argument 'other')", name);
  CHECK_FAILS_WITH(
      run_free("aten::matmul",
               drpc_value_list_of(2, tv(iota(DRPC_FLOAT32, 2, SHAPE(1, 4))),
                                  drpc_value_tensor(t)),
               NULL, &err),
      &err, DRPC_EINVAL, want);
  snprintf(want, sizeof want,
           "aten::clone: no such device %s (argument 'input')", name);
  CHECK_FAILS_WITH(run_free("aten::clone",
                            drpc_value_list_of(1, drpc_value_tensor(t)), NULL,
                            &err),
                   &err, DRPC_EINVAL, want);
  drpc_tensor_decref(t);
  snprintf(want, sizeof want, "aten::ones: no such device %s", name);
  CHECK_FAILS_WITH(run_free("aten::ones",
                            drpc_value_list_of(1, drpc_value_int(2)),
                            kw1("device", drpc_value_str(name)), &err),
                   &err, DRPC_EINVAL, want);
  drpc_error_clear(&err);
}

static void test_no_such_device_last(void) {
  test_no_such_device(drpc_device_count());
}

/* Work queued on the thread's current stream: set a pool stream current
 * and the op's result belongs to it. */
static void test_current_stream(void) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_tensor *cpu = make(DRPC_FLOAT64, 1, SHAPE(3), VALS(1, 2, 3));
  drpc_tensor *dev = drpc_tensor_to(cpu, g_dev, NULL, &err);
  drpc_stream *side = drpc_stream_from_pool(g_dev.index);
  CHECK(side != NULL && side != drpc_stream_default(g_dev.index));
  /* The input was copied on the default stream: order the side stream
   * after it, as a PyTorch user would. */
  CHECK_EQ_INT(
      drpc_stream_wait_stream(side, drpc_stream_default(g_dev.index), &err), 0);
  drpc_stream_set_current(g_dev.index, side);
  drpc_value *r =
      run_free("aten::mul",
               drpc_value_list_of(2, drpc_value_tensor(dev), drpc_value_int(4)),
               NULL, &err);
  CHECK(r != NULL && drpc_storage_stream(r->u.t->storage) == side);
  drpc_tensor *back = device_result(__FILE__, __LINE__, r, g_dev);
  CHECK(back != NULL && drpc_tensor_get_f64(back, 2) == 12.0);
  drpc_tensor_decref(back);
  drpc_value_free(r);
  drpc_tensor_decref(dev);
  drpc_stream_set_current(g_dev.index, NULL);
  CHECK_EQ_INT(drpc_stream_sync(side, &err), 0);
  drpc_tensor_decref(cpu);
  drpc_error_clear(&err);
}

/* ---- simcuda only ------------------------------------------------------ */

/* Ops only queue work: nothing runs on simcuda until the host waits. */
static void test_async(void) {
  drpc_error err = DRPC_ERROR_INIT;
  void *ctx = NULL;
  drpc_device_backend_get(&ctx);
  drpc_tensor *cpu = make(DRPC_FLOAT32, 2, SHAPE(2, 2), VALS(1, 2, 3, 4));
  drpc_tensor *a = drpc_tensor_to(cpu, g_dev, NULL, &err);
  uint64_t before = drpc_simcuda_ops_run(ctx);
  drpc_value *s = run_free(
      "aten::add",
      drpc_value_list_of(2, drpc_value_tensor(a), drpc_value_tensor(a)), NULL,
      &err);
  drpc_value *m =
      run_free("aten::matmul",
               drpc_value_list_of(2, drpc_value_clone(s), drpc_value_tensor(a)),
               NULL, &err);
  drpc_value *t =
      run_free("aten::sum", drpc_value_list_of(1, drpc_value_clone(m)),
               kw1("dim", drpc_value_int(0)), &err);
  drpc_value *o =
      run_free("aten::ones", drpc_value_list_of(1, drpc_value_int(3)),
               kw1("device", drpc_value_str("cuda:0")), &err);
  drpc_value *c = run_free(
      "aten::clone", drpc_value_list_of(1, drpc_value_clone(o)), NULL, &err);
  CHECK(s != NULL && m != NULL && t != NULL && o != NULL && c != NULL);
  CHECK_EQ_INT(drpc_simcuda_ops_run(ctx), before);
  /* Bringing the last result back runs the whole chain in order:
   * (2A) A = [[14, 20], [30, 44]], column sums 44 64. */
  drpc_tensor *back = device_result(__FILE__, __LINE__, t, g_dev);
  CHECK(drpc_simcuda_ops_run(ctx) > before);
  CHECK(back != NULL && drpc_tensor_get_f64(back, 0) == 44.0 &&
        drpc_tensor_get_f64(back, 1) == 64.0);
  drpc_tensor_decref(back);
  back = device_result(__FILE__, __LINE__, c, g_dev);
  CHECK(back != NULL && drpc_tensor_get_f64(back, 2) == 1.0);
  drpc_tensor_decref(back);
  drpc_value_free(s);
  drpc_value_free(m);
  drpc_value_free(t);
  drpc_value_free(o);
  drpc_value_free(c);
  drpc_tensor_decref(a);
  drpc_tensor_decref(cpu);
  drpc_error_clear(&err);
}

/* Every temporary (converted matmul operands, dropped results) went back
 * to the device once the streams ran. */
static void test_no_leaks(void) {
  drpc_error err = DRPC_ERROR_INIT;
  void *ctx = NULL;
  drpc_device_backend_get(&ctx);
  for (int i = 0; i < drpc_device_count(); i++) {
    CHECK_EQ_INT(drpc_stream_sync(drpc_stream_default(i), &err), 0);
    for (int k = 0; k < DRPC_STREAM_POOL_SIZE; k++) {
      CHECK_EQ_INT(drpc_stream_sync(drpc_stream_from_pool(i), &err), 0);
    }
    CHECK_EQ_INT(drpc_simcuda_allocated(ctx, i), 0);
  }
  drpc_error_clear(&err);
}

static void test_sim_cuda5(void) {
  test_no_such_device(5);
}

/* With no backend, CUDA tensors (made by hand) and devices are refused. */
static void test_no_backend(void) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_tensor *t = fake_on((drpc_device){DRPC_DEVICE_CUDA, 0});
  CHECK_FAILS_WITH(
      run_free("aten::add",
               drpc_value_list_of(2, drpc_value_tensor(t), drpc_value_int(1)),
               NULL, &err),
      &err, DRPC_EUNSUPPORTED,
      "aten::add: expected a CPU tensor for argument 'input', got one on "
      "cuda:0: no CUDA backend");
  CHECK_FAILS_WITH(run_free("aten::sum",
                            drpc_value_list_of(1, drpc_value_tensor(t)), NULL,
                            &err),
                   &err, DRPC_EUNSUPPORTED,
                   "aten::sum: expected a CPU tensor for argument 'input', got "
                   "one on cuda:0: no CUDA backend");
  drpc_tensor_decref(t);
  CHECK_FAILS_WITH(run_free("aten::zeros",
                            drpc_value_list_of(1, drpc_value_int(2)),
                            kw1("device", drpc_value_str("cuda:0")), &err),
                   &err, DRPC_EUNSUPPORTED,
                   "aten::zeros: builtin ops run on the CPU, not cuda:0: no "
                   "CUDA backend");
  drpc_error_clear(&err);
}

/* ---- suites ------------------------------------------------------------ */

/* Everything that holds for any backend, on g_dev. */
static void run_suite(void) {
  RUN(test_binary_dtypes);
  RUN(test_numbers);
  RUN(test_alpha);
  RUN(test_broadcast);
  RUN(test_non_contiguous);
  RUN(test_sum);
  RUN(test_ones_zeros);
  RUN(test_clone);
  RUN(test_matmul);
  RUN(test_mixed_devices);
  RUN(test_no_such_device_last);
  RUN(test_current_stream);
}

static void test_real_cuda(void) {
  drpc_error err = DRPC_ERROR_INIT;
  if (drpc_gpu_setup("cuda", &err) != 0) {
    printf("SKIP test_real_cuda: %s\n", err.msg ? err.msg : "no CUDA");
    drpc_error_clear(&err);
    return;
  }
  fprintf(stderr, "real CUDA: %s\n", drpc_gpu_describe());
  run_suite();
  drpc_gpu_teardown();
}

int main(void) {
  drpc_error err = DRPC_ERROR_INIT;
  if (drpc_gpu_setup("sim:2", &err) != 0) {
    fprintf(stderr, "drpc_gpu_setup(sim:2): %s\n", err.msg);
    return 1;
  }
  run_suite();
  RUN(test_async);
  RUN(test_sim_cuda5);
  RUN(test_no_leaks);
  drpc_gpu_teardown();
  RUN(test_no_backend);
  test_real_cuda();
  return test_finish();
}
