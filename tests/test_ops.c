/* Unit tests for core/ops.c: every builtin, dtype, promotion and error. */
#include "drpc/ops.h"

#include <math.h>
#include <stdint.h>

#include "test.h"

static const drpc_dtype DTYPES[3] = {DRPC_FLOAT32, DRPC_FLOAT64, DRPC_INT64};

/* ---- helpers ----------------------------------------------------------- */

/* A contiguous tensor of dtype dt holding vals (converted). */
static drpc_tensor *make(drpc_dtype dt, int ndim, const int64_t *shape,
                         const double *vals) {
  drpc_tensor *t = drpc_tensor_empty(dt, ndim, shape);
  int64_t n = drpc_tensor_numel(t);
  void *p = drpc_tensor_data(t);
  for (int64_t i = 0; i < n; i++) {
    switch (dt) {
    case DRPC_FLOAT32:
      ((float *)p)[i] = (float)vals[i];
      break;
    case DRPC_FLOAT64:
      ((double *)p)[i] = vals[i];
      break;
    case DRPC_INT64:
      ((int64_t *)p)[i] = (int64_t)vals[i];
      break;
    case DRPC_INT32:
      ((int32_t *)p)[i] = (int32_t)vals[i];
      break;
    default:
      ((uint8_t *)p)[i] = (uint8_t)vals[i];
      break;
    }
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

/* Runs op name and frees args and kwargs; err is cleared first. */
static drpc_value *run(const char *name, drpc_value *args, drpc_value *kwargs,
                       drpc_error *err) {
  drpc_error_clear(err);
  drpc_value *r = drpc_op_run(name, args, kwargs, err);
  drpc_value_free(args);
  drpc_value_free(kwargs);
  return r;
}

static drpc_value *kw1(const char *key, drpc_value *v) {
  drpc_value *d = drpc_value_dict();
  drpc_dict_set(d, key, v);
  return d;
}

/* Checks that r is a tensor of dtype dt and shape, holding want; frees r. */
static void check_tensor_(const char *file, int line, drpc_value *r,
                          drpc_dtype dt, int ndim, const int64_t *shape,
                          const double *want) {
  int ok = r != NULL && r->kind == DRPC_VAL_TENSOR && r->u.t != NULL;
  const drpc_tensor *t = ok ? r->u.t : NULL;
  ok = ok && t->dtype == dt && t->ndim == ndim;
  for (int d = 0; ok && d < ndim; d++) {
    ok = t->shape[d] == shape[d];
  }
  ok = ok && drpc_tensor_is_contiguous(t);
  int64_t n = ok ? drpc_tensor_numel(t) : 0;
  for (int64_t i = 0; ok && i < n; i++) {
    double got = drpc_tensor_get_f64(t, i);
    ok = got == want[i] || (isnan(got) && isnan(want[i]));
    if (!ok) {
      fprintf(stderr, "%s:%d: element %lld is %.17g, want %.17g\n", file, line,
              (long long)i, got, want[i]);
    }
  }
  if (!ok && t != NULL) {
    fprintf(stderr, "%s:%d: got dtype %s ndim %d\n", file, line,
            drpc_dtype_name(t->dtype), t->ndim);
  }
  if (ok) {
    test_passed_++;
  } else {
    test_failed_++;
    fprintf(stderr, "%s:%d: [%s] tensor result mismatch\n", file, line,
            test_current_);
  }
  drpc_value_free(r);
}

#define CHECK_TENSOR(r, dt, ndim, shape, want)                                 \
  check_tensor_(__FILE__, __LINE__, (r), (dt), (ndim), (shape), (want))

/* Checks that the call failed with code and a message containing text. */
#define CHECK_FAILS(r, err, want_code, text)                                   \
  do {                                                                         \
    drpc_value *r_ = (r);                                                      \
    CHECK(r_ == NULL);                                                         \
    drpc_value_free(r_);                                                       \
    CHECK_EQ_INT((err)->code, (want_code));                                    \
    CHECK_CONTAINS((err)->msg, (text));                                        \
  } while (0)

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})
#define VALS(...) ((const double[]){__VA_ARGS__})

/* ---- elementwise ops on every dtype ------------------------------------ */

static void test_binary_every_dtype(void) {
  drpc_error err = DRPC_ERROR_INIT;
  for (int k = 0; k < 3; k++) {
    drpc_dtype dt = DTYPES[k];
    const double *a = VALS(1, 2, 3, -4), *b = VALS(5, -6, 7, 8);
#define AB                                                                     \
  drpc_value_list_of(2, mk(dt, 2, SHAPE(2, 2), a), mk(dt, 2, SHAPE(2, 2), b))
    CHECK_TENSOR(run("aten::add", AB, NULL, &err), dt, 2, SHAPE(2, 2),
                 VALS(6, -4, 10, 4));
    CHECK_TENSOR(run("aten::sub", AB, NULL, &err), dt, 2, SHAPE(2, 2),
                 VALS(-4, 8, -4, -12));
    CHECK_TENSOR(run("aten::mul", AB, NULL, &err), dt, 2, SHAPE(2, 2),
                 VALS(5, -12, 21, -32));
    /* Division is true division: integers give float32. */
    drpc_dtype div_dt = dt == DRPC_INT64 ? DRPC_FLOAT32 : dt;
    double q[4] = {1.0 / 5, 2.0 / -6, 3.0 / 7, -4.0 / 8};
    if (div_dt == DRPC_FLOAT32) {
      for (int i = 0; i < 4; i++) {
        q[i] = (float)q[i];
      }
    }
    CHECK_TENSOR(run("aten::div", AB, NULL, &err), div_dt, 2, SHAPE(2, 2), q);
#undef AB
  }
  drpc_error_clear(&err);
}

static void test_div_special(void) {
  drpc_error err = DRPC_ERROR_INIT;
  /* 7 / 2 on ints is 3.5, not 3. */
  CHECK_TENSOR(
      run("aten::div",
          drpc_value_list_of(2, mk(DRPC_INT64, 1, SHAPE(2), VALS(7, -7)),
                             drpc_value_int(2)),
          NULL, &err),
      DRPC_FLOAT32, 1, SHAPE(2), VALS(3.5, -3.5));
  /* Integer division by zero cannot trap: it is float division. */
  CHECK_TENSOR(
      run("aten::div",
          drpc_value_list_of(2, mk(DRPC_INT64, 1, SHAPE(3), VALS(1, -1, 0)),
                             mk(DRPC_INT64, 1, SHAPE(3), VALS(0, 0, 0))),
          NULL, &err),
      DRPC_FLOAT32, 1, SHAPE(3), VALS(INFINITY, -INFINITY, NAN));
  CHECK_TENSOR(run("aten::div",
                   drpc_value_list_of(2, mk(DRPC_FLOAT64, 0, NULL, VALS(1)),
                                      drpc_value_float(0.0)),
                   NULL, &err),
               DRPC_FLOAT64, 0, NULL, VALS(INFINITY));
  /* int64 values that float32 cannot hold are rounded before dividing. */
  CHECK_TENSOR(
      run("aten::div",
          drpc_value_list_of(2, mk(DRPC_INT64, 1, SHAPE(1), VALS(16777217)),
                             drpc_value_int(1)),
          NULL, &err),
      DRPC_FLOAT32, 1, SHAPE(1), VALS(16777216));
  drpc_error_clear(&err);
}

static void test_int_wraps(void) {
  drpc_error err = DRPC_ERROR_INIT;
  /* int64 overflow wraps as in PyTorch (and never trips UBSan). */
  drpc_tensor *t = drpc_tensor_new(DRPC_INT64, 1, SHAPE(2));
  ((int64_t *)drpc_tensor_data(t))[0] = INT64_MAX;
  ((int64_t *)drpc_tensor_data(t))[1] = INT64_MIN;
  drpc_value *r =
      run("aten::add",
          drpc_value_list_of(2, drpc_value_tensor(t), drpc_value_int(1)), NULL,
          &err);
  CHECK(r != NULL);
  CHECK_EQ_INT(drpc_tensor_get_i64(r->u.t, 0), INT64_MIN);
  CHECK_EQ_INT(drpc_tensor_get_i64(r->u.t, 1), INT64_MIN + 1);
  drpc_value_free(r);
  r = run("aten::mul",
          drpc_value_list_of(2, drpc_value_tensor(t), drpc_value_int(2)), NULL,
          &err);
  CHECK_EQ_INT(drpc_tensor_get_i64(r->u.t, 0), -2);
  drpc_value_free(r);
  r = run("aten::sub",
          drpc_value_list_of(2, drpc_value_int(INT64_MIN), drpc_value_int(1)),
          NULL, &err);
  CHECK(r != NULL && r->kind == DRPC_VAL_INT);
  CHECK_EQ_INT(r->u.i, INT64_MAX);
  drpc_value_free(r);
  r = run("aten::sum", drpc_value_list_of(1, drpc_value_tensor(t)), NULL, &err);
  CHECK_EQ_INT(drpc_tensor_get_i64(r->u.t, 0), -1);
  drpc_value_free(r);
  drpc_tensor_decref(t);
  drpc_error_clear(&err);
}

/* ---- broadcasting ------------------------------------------------------ */

static void test_broadcast(void) {
  drpc_error err = DRPC_ERROR_INIT;
  /* (2,3) + (3,) */
  CHECK_TENSOR(
      run("aten::add",
          drpc_value_list_of(
              2, mk(DRPC_FLOAT32, 2, SHAPE(2, 3), VALS(0, 1, 2, 3, 4, 5)),
              mk(DRPC_FLOAT32, 1, SHAPE(3), VALS(10, 20, 30))),
          NULL, &err),
      DRPC_FLOAT32, 2, SHAPE(2, 3), VALS(10, 21, 32, 13, 24, 35));
  /* (3,1) * (1,4) -> (3,4) */
  CHECK_TENSOR(run("aten::mul",
                   drpc_value_list_of(
                       2, mk(DRPC_INT64, 2, SHAPE(3, 1), VALS(1, 2, 3)),
                       mk(DRPC_INT64, 2, SHAPE(1, 4), VALS(1, 10, 100, 1000))),
                   NULL, &err),
               DRPC_INT64, 2, SHAPE(3, 4),
               VALS(1, 10, 100, 1000, 2, 20, 200, 2000, 3, 30, 300, 3000));
  /* 0-d with (2,2), the scalar tensor on the left. */
  CHECK_TENSOR(run("aten::sub",
                   drpc_value_list_of(
                       2, mk(DRPC_FLOAT64, 0, NULL, VALS(10)),
                       mk(DRPC_FLOAT64, 2, SHAPE(2, 2), VALS(1, 2, 3, 4))),
                   NULL, &err),
               DRPC_FLOAT64, 2, SHAPE(2, 2), VALS(9, 8, 7, 6));
  /* (2,1,3) + (4,1): three dimensions out. */
  double want[24];
  for (int i = 0; i < 2; i++) {
    for (int j = 0; j < 4; j++) {
      for (int k = 0; k < 3; k++) {
        want[i * 12 + j * 3 + k] = (i * 3 + k) + 100 * j;
      }
    }
  }
  CHECK_TENSOR(
      run("aten::add",
          drpc_value_list_of(
              2, mk(DRPC_FLOAT64, 3, SHAPE(2, 1, 3), VALS(0, 1, 2, 3, 4, 5)),
              mk(DRPC_FLOAT64, 2, SHAPE(4, 1), VALS(0, 100, 200, 300))),
          NULL, &err),
      DRPC_FLOAT64, 3, SHAPE(2, 4, 3), want);
  /* Broadcasting with an empty dimension gives an empty result. */
  CHECK_TENSOR(
      run("aten::add",
          drpc_value_list_of(2, mk(DRPC_FLOAT32, 2, SHAPE(0, 3), VALS(0)),
                             mk(DRPC_FLOAT32, 1, SHAPE(3), VALS(1, 2, 3))),
          NULL, &err),
      DRPC_FLOAT32, 2, SHAPE(0, 3), VALS(0));
  drpc_error_clear(&err);
}

static void test_broadcast_errors(void) {
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_FAILS(
      run("aten::add",
          drpc_value_list_of(2, mk(DRPC_FLOAT32, 1, SHAPE(3), VALS(1, 2, 3)),
                             mk(DRPC_FLOAT32, 1, SHAPE(4), VALS(1, 2, 3, 4))),
          NULL, &err),
      &err, DRPC_EINVAL,
      "aten::add: The size of tensor a (3) must match the size of "
      "tensor b (4) at non-singleton dimension 0");
  /* The dimension is counted in the broadcast result. */
  CHECK_FAILS(
      run("aten::mul",
          drpc_value_list_of(
              2, mk(DRPC_FLOAT32, 1, SHAPE(3), VALS(1, 2, 3)),
              mk(DRPC_FLOAT32, 2, SHAPE(2, 4), VALS(0, 0, 0, 0, 0, 0, 0, 0))),
          NULL, &err),
      &err, DRPC_EINVAL,
      "aten::mul: The size of tensor a (3) must match the size of "
      "tensor b (4) at non-singleton dimension 1");
  CHECK_FAILS(
      run("aten::sub",
          drpc_value_list_of(2, mk(DRPC_INT64, 2, SHAPE(2, 1), VALS(1, 2)),
                             mk(DRPC_INT64, 2, SHAPE(3, 1), VALS(1, 2, 3))),
          NULL, &err),
      &err, DRPC_EINVAL,
      "aten::sub: The size of tensor a (2) must match the size of "
      "tensor b (3) at non-singleton dimension 0");
  drpc_error_clear(&err);
}

/* ---- type promotion ---------------------------------------------------- */

static void test_promotion(void) {
  drpc_error err = DRPC_ERROR_INIT;
  const struct {
    drpc_dtype a, b, want;
  } cases[] = {
      {DRPC_INT64, DRPC_FLOAT32, DRPC_FLOAT32},
      {DRPC_FLOAT32, DRPC_INT64, DRPC_FLOAT32},
      {DRPC_FLOAT32, DRPC_FLOAT64, DRPC_FLOAT64},
      {DRPC_FLOAT64, DRPC_FLOAT32, DRPC_FLOAT64},
      {DRPC_INT64, DRPC_INT64, DRPC_INT64},
      {DRPC_INT64, DRPC_FLOAT64, DRPC_FLOAT64},
      {DRPC_FLOAT32, DRPC_FLOAT32, DRPC_FLOAT32},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    CHECK_TENSOR(
        run("aten::add",
            drpc_value_list_of(2, mk(cases[i].a, 1, SHAPE(2), VALS(1, 2)),
                               mk(cases[i].b, 1, SHAPE(2), VALS(3, 4))),
            NULL, &err),
        cases[i].want, 1, SHAPE(2), VALS(4, 6));
  }
  /* PyTorch's result_type: a 0-d tensor does not raise the dtype of a
   * tensor with dimensions in the same category... */
  CHECK_TENSOR(
      run("aten::mul",
          drpc_value_list_of(2, mk(DRPC_FLOAT32, 1, SHAPE(2), VALS(1, 2)),
                             mk(DRPC_FLOAT64, 0, NULL, VALS(3))),
          NULL, &err),
      DRPC_FLOAT32, 1, SHAPE(2), VALS(3, 6));
  /* ...but it does bring floating point to an integer tensor. */
  CHECK_TENSOR(
      run("aten::mul",
          drpc_value_list_of(2, mk(DRPC_INT64, 1, SHAPE(2), VALS(1, 2)),
                             mk(DRPC_FLOAT64, 0, NULL, VALS(3))),
          NULL, &err),
      DRPC_FLOAT64, 1, SHAPE(2), VALS(3, 6));
  /* Two 0-d tensors promote normally. */
  CHECK_TENSOR(run("aten::add",
                   drpc_value_list_of(2, mk(DRPC_FLOAT32, 0, NULL, VALS(1)),
                                      mk(DRPC_FLOAT64, 0, NULL, VALS(2))),
                   NULL, &err),
               DRPC_FLOAT64, 0, NULL, VALS(3));
  /* Division of int64 by float64 stays float64. */
  CHECK_TENSOR(run("aten::div",
                   drpc_value_list_of(2, mk(DRPC_INT64, 1, SHAPE(1), VALS(1)),
                                      mk(DRPC_FLOAT64, 1, SHAPE(1), VALS(3))),
                   NULL, &err),
               DRPC_FLOAT64, 1, SHAPE(1), VALS(1.0 / 3));
  drpc_error_clear(&err);
}

/* ---- numbers ----------------------------------------------------------- */

static void test_tensor_and_number(void) {
  drpc_error err = DRPC_ERROR_INIT;
  /* A Python float does not raise a float tensor's dtype. */
  CHECK_TENSOR(
      run("aten::add",
          drpc_value_list_of(2, mk(DRPC_FLOAT32, 1, SHAPE(2), VALS(1, 2)),
                             drpc_value_float(0.5)),
          NULL, &err),
      DRPC_FLOAT32, 1, SHAPE(2), VALS(1.5, 2.5));
  /* An int64 tensor with a float becomes float32. */
  CHECK_TENSOR(
      run("aten::mul",
          drpc_value_list_of(2, mk(DRPC_INT64, 1, SHAPE(2), VALS(1, 2)),
                             drpc_value_float(2.5)),
          NULL, &err),
      DRPC_FLOAT32, 1, SHAPE(2), VALS(2.5, 5));
  /* An int64 tensor with an int stays int64. */
  CHECK_TENSOR(
      run("aten::sub",
          drpc_value_list_of(2, mk(DRPC_INT64, 1, SHAPE(2), VALS(1, 2)),
                             drpc_value_int(5)),
          NULL, &err),
      DRPC_INT64, 1, SHAPE(2), VALS(-4, -3));
  /* float64 with an int stays float64; the number may come first. */
  CHECK_TENSOR(
      run("aten::sub",
          drpc_value_list_of(2, drpc_value_int(10),
                             mk(DRPC_FLOAT64, 1, SHAPE(2), VALS(1, 2))),
          NULL, &err),
      DRPC_FLOAT64, 1, SHAPE(2), VALS(9, 8));
  CHECK_TENSOR(
      run("aten::div",
          drpc_value_list_of(2, drpc_value_float(1.0),
                             mk(DRPC_FLOAT32, 1, SHAPE(2), VALS(2, 4))),
          NULL, &err),
      DRPC_FLOAT32, 1, SHAPE(2), VALS(0.5, 0.25));
  /* The number is cast to float32: 0.1 rounds before it is added. */
  CHECK_TENSOR(run("aten::add",
                   drpc_value_list_of(2, mk(DRPC_FLOAT32, 1, SHAPE(1), VALS(0)),
                                      drpc_value_float(0.1)),
                   NULL, &err),
               DRPC_FLOAT32, 1, SHAPE(1), VALS((float)0.1));
  /* bool is an int. */
  CHECK_TENSOR(run("aten::add",
                   drpc_value_list_of(2, mk(DRPC_INT64, 1, SHAPE(1), VALS(1)),
                                      drpc_value_bool(true)),
                   NULL, &err),
               DRPC_INT64, 1, SHAPE(1), VALS(2));
  drpc_error_clear(&err);
}

static void check_number(drpc_value *r, drpc_value_kind kind, double want) {
  CHECK(r != NULL && r->kind == kind);
  if (r != NULL && r->kind == DRPC_VAL_INT) {
    CHECK_EQ_INT(r->u.i, (int64_t)want);
  } else if (r != NULL && r->kind == DRPC_VAL_FLOAT) {
    CHECK(r->u.f == want || (isnan(want) && isnan(r->u.f)));
  }
  drpc_value_free(r);
}

static void test_numbers(void) {
  drpc_error err = DRPC_ERROR_INIT;
#define NUMS(x, y) drpc_value_list_of(2, (x), (y))
  check_number(
      run("aten::add", NUMS(drpc_value_int(2), drpc_value_int(3)), NULL, &err),
      DRPC_VAL_INT, 5);
  check_number(
      run("aten::sub", NUMS(drpc_value_int(2), drpc_value_int(3)), NULL, &err),
      DRPC_VAL_INT, -1);
  check_number(
      run("aten::mul", NUMS(drpc_value_int(6), drpc_value_int(7)), NULL, &err),
      DRPC_VAL_INT, 42);
  check_number(
      run("aten::div", NUMS(drpc_value_int(7), drpc_value_int(2)), NULL, &err),
      DRPC_VAL_FLOAT, 3.5);
  check_number(
      run("aten::div", NUMS(drpc_value_int(6), drpc_value_int(3)), NULL, &err),
      DRPC_VAL_FLOAT, 2.0);
  check_number(run("aten::add", NUMS(drpc_value_int(2), drpc_value_float(0.5)),
                   NULL, &err),
               DRPC_VAL_FLOAT, 2.5);
  check_number(run("aten::mul",
                   NUMS(drpc_value_float(1.5), drpc_value_float(2.0)), NULL,
                   &err),
               DRPC_VAL_FLOAT, 3.0);
  check_number(run("aten::div", NUMS(drpc_value_float(1.0), drpc_value_int(0)),
                   NULL, &err),
               DRPC_VAL_FLOAT, INFINITY);
  check_number(run("aten::add",
                   NUMS(drpc_value_bool(true), drpc_value_bool(true)), NULL,
                   &err),
               DRPC_VAL_INT, 2);
  /* alpha on numbers: 1 + 3*2 and 1 - 0.5*2. */
  check_number(run("aten::add",
                   drpc_value_list_of(3, drpc_value_int(1), drpc_value_int(2),
                                      drpc_value_int(3)),
                   NULL, &err),
               DRPC_VAL_INT, 7);
  check_number(run("aten::sub", NUMS(drpc_value_int(1), drpc_value_int(2)),
                   kw1("alpha", drpc_value_float(0.5)), &err),
               DRPC_VAL_FLOAT, 0.0);
#undef NUMS
  drpc_error_clear(&err);
}

/* ---- keyword arguments ------------------------------------------------- */

static void test_alpha(void) {
  drpc_error err = DRPC_ERROR_INIT;
  for (int k = 0; k < 3; k++) {
    drpc_dtype dt = DTYPES[k];
    /* Positional alpha. */
    CHECK_TENSOR(run("aten::add",
                     drpc_value_list_of(3, mk(dt, 1, SHAPE(2), VALS(1, 2)),
                                        mk(dt, 1, SHAPE(2), VALS(10, 20)),
                                        drpc_value_int(3)),
                     NULL, &err),
                 dt, 1, SHAPE(2), VALS(31, 62));
    /* Keyword alpha. */
    CHECK_TENSOR(run("aten::sub",
                     drpc_value_list_of(2, mk(dt, 1, SHAPE(2), VALS(1, 2)),
                                        mk(dt, 1, SHAPE(2), VALS(10, 20))),
                     kw1("alpha", drpc_value_int(2)), &err),
                 dt, 1, SHAPE(2), VALS(-19, -38));
  }
  CHECK_TENSOR(
      run("aten::add",
          drpc_value_list_of(2, mk(DRPC_FLOAT64, 1, SHAPE(2), VALS(1, 2)),
                             mk(DRPC_FLOAT64, 1, SHAPE(2), VALS(10, 20))),
          kw1("alpha", drpc_value_float(0.5)), &err),
      DRPC_FLOAT64, 1, SHAPE(2), VALS(6, 12));
  /* alpha is cast to float32 for a float32 result, as in PyTorch: 0.1f * 9
   * rounds to 0.900000036, where a double alpha would give 0.899999976. */
  CHECK_TENSOR(run("aten::add",
                   drpc_value_list_of(2, mk(DRPC_FLOAT32, 1, SHAPE(1), VALS(0)),
                                      mk(DRPC_FLOAT32, 1, SHAPE(1), VALS(9))),
                   kw1("alpha", drpc_value_float(0.1)), &err),
               DRPC_FLOAT32, 1, SHAPE(1), VALS((double)(0.1f * 9.0f)));
  /* A nil alpha means the default. */
  CHECK_TENSOR(run("aten::add",
                   drpc_value_list_of(2, mk(DRPC_INT64, 1, SHAPE(1), VALS(1)),
                                      mk(DRPC_INT64, 1, SHAPE(1), VALS(2))),
                   kw1("alpha", drpc_value_nil()), &err),
               DRPC_INT64, 1, SHAPE(1), VALS(3));
  /* Integer tensors refuse a float alpha, as PyTorch does. */
  CHECK_FAILS(run("aten::add",
                  drpc_value_list_of(2, mk(DRPC_INT64, 1, SHAPE(1), VALS(1)),
                                     mk(DRPC_INT64, 1, SHAPE(1), VALS(2))),
                  kw1("alpha", drpc_value_float(0.5)), &err),
              &err, DRPC_ETYPE,
              "aten::add: For integral input tensors, argument alpha must "
              "not be a floating point number.");
  CHECK_FAILS(run("aten::add",
                  drpc_value_list_of(2, mk(DRPC_INT64, 1, SHAPE(1), VALS(1)),
                                     mk(DRPC_INT64, 1, SHAPE(1), VALS(2))),
                  kw1("alpha", mk(DRPC_INT64, 0, NULL, VALS(2))), &err),
              &err, DRPC_ETYPE, "aten::add: argument 'alpha' must be a number");
  CHECK_FAILS(run("aten::sub",
                  drpc_value_list_of(2, mk(DRPC_INT64, 1, SHAPE(1), VALS(1)),
                                     mk(DRPC_INT64, 1, SHAPE(1), VALS(2))),
                  kw1("alpha", drpc_value_str("x")), &err),
              &err, DRPC_ETYPE,
              "aten::sub: argument 'alpha' must be a tensor or a number, not");
  /* alpha given twice. */
  CHECK_FAILS(run("aten::add",
                  drpc_value_list_of(3, drpc_value_int(1), drpc_value_int(2),
                                     drpc_value_int(3)),
                  kw1("alpha", drpc_value_int(2)), &err),
              &err, DRPC_EINVAL,
              "aten::add: got multiple values for argument 'alpha'");
  /* mul takes no alpha. */
  CHECK_FAILS(run("aten::mul",
                  drpc_value_list_of(2, drpc_value_int(1), drpc_value_int(2)),
                  kw1("alpha", drpc_value_int(2)), &err),
              &err, DRPC_EINVAL,
              "aten::mul: unexpected keyword argument 'alpha'");
  drpc_error_clear(&err);
}

static void test_named_operands(void) {
  drpc_error err = DRPC_ERROR_INIT;
  /* input and other may be named, as torch.add(input=..., other=...). */
  drpc_value *kw = drpc_value_dict();
  drpc_dict_set(kw, "other", drpc_value_int(1));
  drpc_dict_set(kw, "input", mk(DRPC_FLOAT32, 1, SHAPE(2), VALS(1, 2)));
  CHECK_TENSOR(run("aten::sub", drpc_value_list(), kw, &err), DRPC_FLOAT32, 1,
               SHAPE(2), VALS(0, 1));
  CHECK_TENSOR(
      run("aten::div",
          drpc_value_list_of(1, mk(DRPC_FLOAT64, 1, SHAPE(2), VALS(1, 2))),
          kw1("other", drpc_value_int(4)), &err),
      DRPC_FLOAT64, 1, SHAPE(2), VALS(0.25, 0.5));
  /* NULL args means no positional arguments. */
  kw = drpc_value_dict();
  drpc_dict_set(kw, "input", drpc_value_int(4));
  drpc_dict_set(kw, "other", drpc_value_int(5));
  drpc_value *r = drpc_op_run("aten::mul", NULL, kw, &err);
  check_number(r, DRPC_VAL_INT, 20);
  drpc_value_free(kw);
  /* A nil kwargs is no kwargs. */
  check_number(run("aten::mul",
                   drpc_value_list_of(2, drpc_value_int(2), drpc_value_int(3)),
                   drpc_value_nil(), &err),
               DRPC_VAL_INT, 6);
  drpc_error_clear(&err);
}

/* ---- argument errors --------------------------------------------------- */

static void test_arg_errors(void) {
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_FAILS(
      run("aten::add", drpc_value_list_of(1, drpc_value_int(1)), NULL, &err),
      &err, DRPC_EINVAL, "aten::add: expected 2 or 3 arguments, got 1");
  CHECK_STR_EQ(err.msg, "aten::add: expected 2 or 3 arguments, got 1");
  CHECK_FAILS(run("aten::sub",
                  drpc_value_list_of(4, drpc_value_int(1), drpc_value_int(1),
                                     drpc_value_int(1), drpc_value_int(1)),
                  NULL, &err),
              &err, DRPC_EINVAL, "aten::sub: expected 2 or 3 arguments, got 4");
  CHECK_FAILS(run("aten::mul",
                  drpc_value_list_of(3, drpc_value_int(1), drpc_value_int(1),
                                     drpc_value_int(1)),
                  NULL, &err),
              &err, DRPC_EINVAL, "aten::mul: expected 2 arguments, got 3");
  CHECK_FAILS(run("aten::div", drpc_value_list(), NULL, &err), &err,
              DRPC_EINVAL, "aten::div: expected 2 arguments, got 0");
  CHECK_FAILS(run("aten::clone", drpc_value_list(), NULL, &err), &err,
              DRPC_EINVAL, "aten::clone: expected 1 argument, got 0");
  CHECK_FAILS(run("aten::sum", drpc_value_list(), NULL, &err), &err,
              DRPC_EINVAL, "aten::sum: expected 1 to 3 arguments, got 0");
  CHECK_FAILS(
      run("aten::matmul", drpc_value_list_of(1, drpc_value_int(1)), NULL, &err),
      &err, DRPC_EINVAL, "aten::matmul: expected 2 arguments, got 1");
  CHECK_FAILS(run("aten::add",
                  drpc_value_list_of(2, drpc_value_int(1), drpc_value_int(2)),
                  kw1("beta", drpc_value_int(2)), &err),
              &err, DRPC_EINVAL,
              "aten::add: unexpected keyword argument 'beta'");
  CHECK_FAILS(run("aten::add",
                  drpc_value_list_of(2, drpc_value_int(1), drpc_value_int(2)),
                  kw1("input", drpc_value_int(2)), &err),
              &err, DRPC_EINVAL,
              "aten::add: got multiple values for argument 'input'");
  /* Operands that are not numbers or tensors. */
  CHECK_FAILS(run("aten::add",
                  drpc_value_list_of(2, drpc_value_int(1), drpc_value_str("x")),
                  NULL, &err),
              &err, DRPC_ETYPE,
              "aten::add: argument 'other' must be a tensor or a number, not");
  CHECK_FAILS(run("aten::mul",
                  drpc_value_list_of(2, drpc_value_list(), drpc_value_int(1)),
                  NULL, &err),
              &err, DRPC_ETYPE, "aten::mul: argument 'input' must be a tensor");
  CHECK_FAILS(run("aten::mul",
                  drpc_value_list_of(2, drpc_value_nil(), drpc_value_int(1)),
                  NULL, &err),
              &err, DRPC_ETYPE,
              "aten::mul: argument 'input' must be a tensor or a number, not");
  /* A tensor value holding no tensor. */
  CHECK_FAILS(
      run("aten::add",
          drpc_value_list_of(2, drpc_value_tensor(NULL), drpc_value_int(1)),
          NULL, &err),
      &err, DRPC_EINVAL, "aten::add: argument 'input' is a null tensor");
  /* args must be a list and kwargs a dict. */
  CHECK_FAILS(run("aten::add", drpc_value_dict(), NULL, &err), &err, DRPC_ETYPE,
              "aten::add: args must be a list");
  CHECK_FAILS(run("aten::add",
                  drpc_value_list_of(2, drpc_value_int(1), drpc_value_int(2)),
                  drpc_value_list(), &err),
              &err, DRPC_ETYPE, "aten::add: kwargs must be a dict");
  CHECK_FAILS(run("aten::ones", drpc_value_int(3), NULL, &err), &err,
              DRPC_ETYPE, "aten::ones: args must be a list");
  /* A NULL error object is allowed. */
  drpc_value *args = drpc_value_list();
  CHECK(drpc_op_run("aten::add", args, NULL, NULL) == NULL);
  CHECK(drpc_op_run("aten::nope", args, NULL, NULL) == NULL);
  drpc_value_free(args);
  drpc_error_clear(&err);
}

static void test_unsupported(void) {
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_FAILS(run("aten::add",
                  drpc_value_list_of(2, mk(DRPC_UINT8, 1, SHAPE(2), VALS(1, 2)),
                                     drpc_value_int(1)),
                  NULL, &err),
              &err, DRPC_ETYPE, "aten::add: unsupported dtype uint8");
  CHECK_STR_EQ(err.msg, "aten::add: unsupported dtype uint8");
  CHECK_FAILS(run("aten::mul",
                  drpc_value_list_of(2, drpc_value_int(1),
                                     mk(DRPC_INT32, 1, SHAPE(2), VALS(1, 2))),
                  NULL, &err),
              &err, DRPC_ETYPE, "aten::mul: unsupported dtype int32");
  CHECK_FAILS(run("aten::sum",
                  drpc_value_list_of(1, mk(DRPC_BOOL, 1, SHAPE(2), VALS(1, 0))),
                  NULL, &err),
              &err, DRPC_ETYPE, "aten::sum: unsupported dtype bool");
  CHECK_FAILS(run("aten::matmul",
                  drpc_value_list_of(2, mk(DRPC_UINT8, 2, SHAPE(1, 1), VALS(1)),
                                     mk(DRPC_FLOAT32, 2, SHAPE(1, 1), VALS(1))),
                  NULL, &err),
              &err, DRPC_ETYPE, "aten::matmul: unsupported dtype uint8");

  /* Tensors on a CUDA device are not for builtin CPU ops. */
  static float dev_mem[4];
  drpc_device c1 = {DRPC_DEVICE_CUDA, 1};
  drpc_storage *s = drpc_storage_wrap(dev_mem, sizeof dev_mem, c1, NULL, NULL);
  drpc_tensor *t = drpc_tensor_from_storage(s, DRPC_FLOAT32, 1, SHAPE(4), 0);
  drpc_storage_decref(s);
  const char *names[] = {"aten::add", "aten::sub", "aten::mul", "aten::div"};
  for (int i = 0; i < 4; i++) {
    CHECK_FAILS(
        run(names[i],
            drpc_value_list_of(2, drpc_value_tensor(t), drpc_value_int(1)),
            NULL, &err),
        &err, DRPC_EUNSUPPORTED, "got one on cuda:1");
    CHECK_CONTAINS(err.msg, names[i]);
  }
  CHECK_FAILS(
      run("aten::sum", drpc_value_list_of(1, drpc_value_tensor(t)), NULL, &err),
      &err, DRPC_EUNSUPPORTED,
      "aten::sum: expected a CPU tensor for argument 'input', got one "
      "on cuda:1");
  CHECK_FAILS(run("aten::clone", drpc_value_list_of(1, drpc_value_tensor(t)),
                  NULL, &err),
              &err, DRPC_EUNSUPPORTED, "aten::clone: expected a CPU tensor");
  CHECK_FAILS(run("aten::matmul",
                  drpc_value_list_of(
                      2, mk(DRPC_FLOAT32, 2, SHAPE(1, 4), VALS(1, 2, 3, 4)),
                      drpc_value_tensor(t)),
                  NULL, &err),
              &err, DRPC_EUNSUPPORTED,
              "aten::matmul: expected a CPU tensor for argument 'other'");
  drpc_tensor_decref(t);
  drpc_error_clear(&err);
}

static void test_unknown_op(void) {
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_FAILS(run("aten::foo", drpc_value_list(), NULL, &err), &err,
              DRPC_ENOTFOUND, "unknown builtin operator 'aten::foo'");
  CHECK_STR_EQ(err.msg, "unknown builtin operator 'aten::foo'");
  CHECK(drpc_op_lookup("aten::foo") == NULL);
  CHECK(drpc_op_lookup("add") == NULL);
  CHECK(drpc_op_lookup("") == NULL);
  CHECK(drpc_op_lookup(NULL) == NULL);
  CHECK_FAILS(run(NULL, drpc_value_list(), NULL, &err), &err, DRPC_ENOTFOUND,
              "unknown builtin operator");
  drpc_error_clear(&err);
}

static void test_names(void) {
  const char *const want[] = {"aten::add",   "aten::sub",   "aten::mul",
                              "aten::div",   "aten::sum",   "aten::ones",
                              "aten::zeros", "aten::clone", "aten::matmul"};
  const char *const *names = drpc_op_names();
  size_t n = 0;
  while (names[n] != NULL) {
    CHECK(drpc_op_lookup(names[n]) != NULL);
    n++;
  }
  CHECK_EQ_INT(n, 9);
  for (size_t i = 0; i < 9; i++) {
    int found = 0;
    for (size_t j = 0; j < n; j++) {
      found = found || strcmp(names[j], want[i]) == 0;
    }
    CHECK(found);
    /* Distinct names map to distinct functions. */
    for (size_t j = i + 1; j < 9; j++) {
      CHECK(drpc_op_lookup(want[i]) != drpc_op_lookup(want[j]));
    }
  }
  /* lookup and run agree. */
  drpc_error err = DRPC_ERROR_INIT;
  drpc_value *args =
      drpc_value_list_of(2, drpc_value_int(2), drpc_value_int(5));
  drpc_value *r = drpc_op_lookup("aten::mul")(args, NULL, &err);
  check_number(r, DRPC_VAL_INT, 10);
  drpc_value_free(args);
}

/* ---- non-contiguous input ---------------------------------------------- */

/* The transpose of a 2x3 tensor holding 0..5: a 3x2 view with strides
 * (1, 3), reading 0 3 / 1 4 / 2 5. */
static drpc_value *transposed(drpc_dtype dt) {
  drpc_tensor *base = make(dt, 2, SHAPE(2, 3), VALS(0, 1, 2, 3, 4, 5));
  drpc_tensor *t =
      drpc_tensor_from_storage(base->storage, dt, 2, SHAPE(3, 2), 0);
  drpc_tensor_decref(base);
  t->strides[0] = 1;
  t->strides[1] = 3;
  return tv(t);
}

/* Column 1 of a 3x3 tensor holding 0..8: shape (3,), offset 1, stride 3. */
static drpc_value *column(drpc_dtype dt) {
  drpc_tensor *base = make(dt, 2, SHAPE(3, 3), VALS(0, 1, 2, 3, 4, 5, 6, 7, 8));
  drpc_tensor *t = drpc_tensor_from_storage(base->storage, dt, 1, SHAPE(3), 1);
  drpc_tensor_decref(base);
  t->strides[0] = 3;
  return tv(t);
}

static void test_non_contiguous(void) {
  drpc_error err = DRPC_ERROR_INIT;
  for (int k = 0; k < 3; k++) {
    drpc_dtype dt = DTYPES[k];
    CHECK_TENSOR(run("aten::add",
                     drpc_value_list_of(
                         2, transposed(dt),
                         mk(dt, 2, SHAPE(3, 2), VALS(10, 20, 30, 40, 50, 60))),
                     NULL, &err),
                 dt, 2, SHAPE(3, 2), VALS(10, 23, 31, 44, 52, 65));
    CHECK_TENSOR(run("aten::mul", drpc_value_list_of(2, column(dt), column(dt)),
                     NULL, &err),
                 dt, 1, SHAPE(3), VALS(1, 16, 49));
    /* A broadcast against a non-contiguous view. */
    CHECK_TENSOR(run("aten::sub",
                     drpc_value_list_of(2, transposed(dt),
                                        mk(dt, 1, SHAPE(2), VALS(1, 2))),
                     NULL, &err),
                 dt, 2, SHAPE(3, 2), VALS(-1, 1, 0, 2, 1, 3));
    CHECK_TENSOR(
        run("aten::sum", drpc_value_list_of(1, transposed(dt)), NULL, &err), dt,
        0, NULL, VALS(15));
    CHECK_TENSOR(run("aten::sum",
                     drpc_value_list_of(2, transposed(dt), drpc_value_int(0)),
                     NULL, &err),
                 dt, 1, SHAPE(2), VALS(3, 12));
    CHECK_TENSOR(run("aten::sum",
                     drpc_value_list_of(2, transposed(dt), drpc_value_int(1)),
                     NULL, &err),
                 dt, 1, SHAPE(3), VALS(3, 5, 7));
    CHECK_TENSOR(
        run("aten::clone", drpc_value_list_of(1, transposed(dt)), NULL, &err),
        dt, 2, SHAPE(3, 2), VALS(0, 3, 1, 4, 2, 5));
    /* transpose(A) @ A with A = [[0,1,2],[3,4,5]]. */
    CHECK_TENSOR(
        run("aten::matmul",
            drpc_value_list_of(2, transposed(dt),
                               mk(dt, 2, SHAPE(2, 3), VALS(0, 1, 2, 3, 4, 5))),
            NULL, &err),
        dt, 2, SHAPE(3, 3), VALS(9, 12, 15, 12, 17, 22, 15, 22, 29));
  }
  drpc_error_clear(&err);
}

static void test_bad_layout(void) {
  drpc_error err = DRPC_ERROR_INIT;
  /* Strides that reach past the storage are refused, not read. */
  drpc_tensor *t = drpc_tensor_new(DRPC_FLOAT32, 1, SHAPE(4));
  t->strides[0] = 2;
  CHECK_FAILS(run("aten::add", drpc_value_list_of(2, tv(t), drpc_value_int(1)),
                  NULL, &err),
              &err, DRPC_EINVAL,
              "aten::add: argument 'input' has a shape, strides or offset "
              "outside its storage");
  t = drpc_tensor_new(DRPC_FLOAT32, 1, SHAPE(4));
  t->offset = 1;
  CHECK_FAILS(run("aten::sum", drpc_value_list_of(1, tv(t)), NULL, &err), &err,
              DRPC_EINVAL, "outside its storage");
  t = drpc_tensor_new(DRPC_FLOAT32, 1, SHAPE(4));
  t->strides[0] = -1;
  CHECK_FAILS(run("aten::clone", drpc_value_list_of(1, tv(t)), NULL, &err),
              &err, DRPC_EINVAL, "outside its storage");
  t = drpc_tensor_new(DRPC_FLOAT32, 1, SHAPE(4));
  t->strides[0] = INT64_MAX;
  CHECK_FAILS(run("aten::mul", drpc_value_list_of(2, drpc_value_int(1), tv(t)),
                  NULL, &err),
              &err, DRPC_EINVAL, "argument 'other' has a shape");
  t = drpc_tensor_new(DRPC_FLOAT32, 1, SHAPE(4));
  t->shape[0] = -1;
  CHECK_FAILS(run("aten::mul", drpc_value_list_of(2, drpc_value_int(1), tv(t)),
                  NULL, &err),
              &err, DRPC_EINVAL, "outside its storage");
  /* A negative stride that stays inside the storage is readable: reverse. */
  t = make(DRPC_INT64, 1, SHAPE(3), VALS(1, 2, 3));
  t->offset = 2;
  t->strides[0] = -1;
  CHECK_TENSOR(run("aten::mul",
                   drpc_value_list_of(2, tv(t), drpc_value_int(10)), NULL,
                   &err),
               DRPC_INT64, 1, SHAPE(3), VALS(30, 20, 10));
  /* A stride-0 view of one element is fine while small... */
  t = make(DRPC_FLOAT64, 1, SHAPE(1), VALS(2));
  t->shape[0] = 5;
  t->strides[0] = 0;
  CHECK_TENSOR(run("aten::sum", drpc_value_list_of(1, tv(t)), NULL, &err),
               DRPC_FLOAT64, 0, NULL, VALS(10));
  /* ...and refused once its logical size passes the bound. */
  t = make(DRPC_FLOAT64, 1, SHAPE(1), VALS(2));
  t->ndim = 2;
  t->shape[0] = 1LL << 40;
  t->shape[1] = 1LL << 22;
  t->strides[0] = 0;
  t->strides[1] = 0;
  CHECK_FAILS(run("aten::sum", drpc_value_list_of(1, tv(t)), NULL, &err), &err,
              DRPC_EINVAL, "aten::sum: argument 'input' size overflows");
  t = make(DRPC_FLOAT64, 1, SHAPE(1), VALS(2));
  t->shape[0] = 1LL << 30;
  t->strides[0] = 0;
  CHECK_FAILS(run("aten::sum", drpc_value_list_of(1, tv(t)), NULL, &err), &err,
              DRPC_EINVAL,
              "aten::sum: argument 'input' of 8589934592 bytes exceeds limit "
              "4294967296");
  drpc_error_clear(&err);
}

/* ---- aten::sum --------------------------------------------------------- */

static void test_sum(void) {
  drpc_error err = DRPC_ERROR_INIT;
  for (int k = 0; k < 3; k++) {
    drpc_dtype dt = DTYPES[k];
    const double *v = VALS(1, 2, 3, 4, 5, 6);
#define T23 mk(dt, 2, SHAPE(2, 3), v)
    /* Everything: a 0-d tensor of the same dtype (int64 stays int64). */
    CHECK_TENSOR(run("aten::sum", drpc_value_list_of(1, T23), NULL, &err), dt,
                 0, NULL, VALS(21));
    CHECK_TENSOR(run("aten::sum", drpc_value_list_of(2, T23, drpc_value_int(0)),
                     NULL, &err),
                 dt, 1, SHAPE(3), VALS(5, 7, 9));
    CHECK_TENSOR(run("aten::sum", drpc_value_list_of(2, T23, drpc_value_int(1)),
                     NULL, &err),
                 dt, 1, SHAPE(2), VALS(6, 15));
    CHECK_TENSOR(run("aten::sum",
                     drpc_value_list_of(2, T23, drpc_value_int(-1)), NULL,
                     &err),
                 dt, 1, SHAPE(2), VALS(6, 15));
    CHECK_TENSOR(run("aten::sum",
                     drpc_value_list_of(3, T23, drpc_value_int(1),
                                        drpc_value_bool(true)),
                     NULL, &err),
                 dt, 2, SHAPE(2, 1), VALS(6, 15));
    /* Keyword dim and keepdim. */
    drpc_value *kw = drpc_value_dict();
    drpc_dict_set(kw, "dim", drpc_value_int(0));
    drpc_dict_set(kw, "keepdim", drpc_value_bool(true));
    CHECK_TENSOR(run("aten::sum", drpc_value_list_of(1, T23), kw, &err), dt, 2,
                 SHAPE(1, 3), VALS(5, 7, 9));
    CHECK_TENSOR(run("aten::sum", drpc_value_list_of(1, T23),
                     kw1("keepdim", drpc_value_bool(false)), &err),
                 dt, 0, NULL, VALS(21));
    /* keepdim without dim keeps every dimension as 1. */
    CHECK_TENSOR(run("aten::sum", drpc_value_list_of(1, T23),
                     kw1("keepdim", drpc_value_bool(true)), &err),
                 dt, 2, SHAPE(1, 1), VALS(21));
    /* A list of dims. */
    CHECK_TENSOR(run("aten::sum", drpc_value_list_of(1, T23),
                     kw1("dim", drpc_value_list_of(2, drpc_value_int(0),
                                                   drpc_value_int(-1))),
                     &err),
                 dt, 0, NULL, VALS(21));
    CHECK_TENSOR(run("aten::sum", drpc_value_list_of(1, T23),
                     kw1("dim", drpc_value_list_of(1, drpc_value_int(1))),
                     &err),
                 dt, 1, SHAPE(2), VALS(6, 15));
    /* dim=None is everything. */
    CHECK_TENSOR(run("aten::sum", drpc_value_list_of(2, T23, drpc_value_nil()),
                     NULL, &err),
                 dt, 0, NULL, VALS(21));
    /* Empty tensors sum to 0; a 0-d tensor sums to itself. */
    CHECK_TENSOR(run("aten::sum",
                     drpc_value_list_of(1, mk(dt, 2, SHAPE(0, 3), v)), NULL,
                     &err),
                 dt, 0, NULL, VALS(0));
    CHECK_TENSOR(
        run("aten::sum",
            drpc_value_list_of(2, mk(dt, 2, SHAPE(0, 3), v), drpc_value_int(0)),
            NULL, &err),
        dt, 1, SHAPE(3), VALS(0, 0, 0));
    CHECK_TENSOR(run("aten::sum",
                     drpc_value_list_of(1, mk(dt, 0, NULL, VALS(7))), NULL,
                     &err),
                 dt, 0, NULL, VALS(7));
    CHECK_TENSOR(
        run("aten::sum",
            drpc_value_list_of(2, mk(dt, 0, NULL, VALS(7)), drpc_value_int(-1)),
            NULL, &err),
        dt, 0, NULL, VALS(7));
#undef T23
  }
  /* Three dimensions, the middle one reduced. */
  double v24[24], want[8];
  for (int i = 0; i < 24; i++) {
    v24[i] = i;
  }
  for (int i = 0; i < 2; i++) {
    for (int k = 0; k < 4; k++) {
      want[i * 4 + k] = 0;
      for (int j = 0; j < 3; j++) {
        want[i * 4 + k] += i * 12 + j * 4 + k;
      }
    }
  }
  CHECK_TENSOR(run("aten::sum",
                   drpc_value_list_of(2, mk(DRPC_INT64, 3, SHAPE(2, 3, 4), v24),
                                      drpc_value_int(1)),
                   NULL, &err),
               DRPC_INT64, 2, SHAPE(2, 4), want);
  drpc_error_clear(&err);
}

static void test_sum_errors(void) {
  drpc_error err = DRPC_ERROR_INIT;
  const double *v = VALS(1, 2, 3, 4, 5, 6);
  CHECK_FAILS(run("aten::sum",
                  drpc_value_list_of(2, mk(DRPC_FLOAT32, 2, SHAPE(2, 3), v),
                                     drpc_value_int(2)),
                  NULL, &err),
              &err, DRPC_EINVAL,
              "aten::sum: Dimension out of range (expected to be in range of "
              "[-2, 1], but got 2)");
  CHECK_FAILS(run("aten::sum",
                  drpc_value_list_of(2, mk(DRPC_FLOAT32, 2, SHAPE(2, 3), v),
                                     drpc_value_int(-3)),
                  NULL, &err),
              &err, DRPC_EINVAL, "but got -3");
  CHECK_FAILS(run("aten::sum",
                  drpc_value_list_of(2, mk(DRPC_FLOAT32, 0, NULL, v),
                                     drpc_value_int(1)),
                  NULL, &err),
              &err, DRPC_EINVAL, "range of [-1, 0], but got 1");
  CHECK_FAILS(run("aten::sum",
                  drpc_value_list_of(2, mk(DRPC_FLOAT32, 2, SHAPE(2, 3), v),
                                     drpc_value_list_of(2, drpc_value_int(1),
                                                        drpc_value_int(-1))),
                  NULL, &err),
              &err, DRPC_EINVAL,
              "aten::sum: dim 1 appears multiple times in the list of dims");
  CHECK_FAILS(run("aten::sum",
                  drpc_value_list_of(2, mk(DRPC_FLOAT32, 2, SHAPE(2, 3), v),
                                     drpc_value_float(1.0)),
                  NULL, &err),
              &err, DRPC_ETYPE,
              "aten::sum: argument 'dim' must be an int or a list of ints");
  CHECK_FAILS(
      run("aten::sum",
          drpc_value_list_of(2, mk(DRPC_FLOAT32, 2, SHAPE(2, 3), v),
                             drpc_value_list_of(1, drpc_value_str("0"))),
          NULL, &err),
      &err, DRPC_ETYPE, "found element of type");
  CHECK_FAILS(run("aten::sum",
                  drpc_value_list_of(3, mk(DRPC_FLOAT32, 2, SHAPE(2, 3), v),
                                     drpc_value_int(0), drpc_value_int(1)),
                  NULL, &err),
              &err, DRPC_ETYPE, "aten::sum: argument 'keepdim' must be bool");
  CHECK_FAILS(
      run("aten::sum", drpc_value_list_of(1, drpc_value_int(3)), NULL, &err),
      &err, DRPC_ETYPE, "aten::sum: argument 'input' must be a tensor");
  CHECK_FAILS(run("aten::sum",
                  drpc_value_list_of(1, mk(DRPC_FLOAT32, 1, SHAPE(2), v)),
                  kw1("dtype", drpc_value_str("float64")), &err),
              &err, DRPC_EINVAL, "aten::sum: unexpected keyword argument");
  drpc_error_clear(&err);
}

/* ---- aten::ones / aten::zeros ------------------------------------------ */

static void test_ones_zeros(void) {
  drpc_error err = DRPC_ERROR_INIT;
  const double *ones6 = VALS(1, 1, 1, 1, 1, 1),
               *zeros6 = VALS(0, 0, 0, 0, 0, 0);
  /* A list size, default dtype float32. */
  CHECK_TENSOR(
      run("aten::ones",
          drpc_value_list_of(
              1, drpc_value_list_of(2, drpc_value_int(2), drpc_value_int(3))),
          NULL, &err),
      DRPC_FLOAT32, 2, SHAPE(2, 3), ones6);
  /* Several int arguments. */
  CHECK_TENSOR(run("aten::zeros",
                   drpc_value_list_of(2, drpc_value_int(3), drpc_value_int(2)),
                   NULL, &err),
               DRPC_FLOAT32, 2, SHAPE(3, 2), zeros6);
  CHECK_TENSOR(
      run("aten::ones", drpc_value_list_of(1, drpc_value_int(4)), NULL, &err),
      DRPC_FLOAT32, 1, SHAPE(4), ones6);
  /* An empty list is a 0-d tensor; a zero size an empty one. */
  CHECK_TENSOR(
      run("aten::ones", drpc_value_list_of(1, drpc_value_list()), NULL, &err),
      DRPC_FLOAT32, 0, NULL, ones6);
  CHECK_TENSOR(run("aten::zeros",
                   drpc_value_list_of(2, drpc_value_int(0), drpc_value_int(5)),
                   NULL, &err),
               DRPC_FLOAT32, 2, SHAPE(0, 5), zeros6);
  /* Every dtype by name, with and without the torch. prefix. */
  const char *names[] = {"float32", "float64", "int64"};
  const char *alias[] = {"torch.float", "torch.double", "long"};
  for (int k = 0; k < 3; k++) {
    CHECK_TENSOR(run("aten::ones", drpc_value_list_of(1, drpc_value_int(6)),
                     kw1("dtype", drpc_value_str(names[k])), &err),
                 DTYPES[k], 1, SHAPE(6), ones6);
    CHECK_TENSOR(run("aten::zeros", drpc_value_list_of(1, drpc_value_int(6)),
                     kw1("dtype", drpc_value_str(names[k])), &err),
                 DTYPES[k], 1, SHAPE(6), zeros6);
    CHECK_TENSOR(
        run("aten::ones",
            drpc_value_list_of(2, drpc_value_int(2), drpc_value_int(3)),
            kw1("dtype", drpc_value_str(alias[k])), &err),
        DTYPES[k], 2, SHAPE(2, 3), ones6);
  }
  /* size by keyword, device "cpu", dtype None. */
  drpc_value *kw = drpc_value_dict();
  drpc_dict_set(kw, "size", drpc_value_list_of(1, drpc_value_int(2)));
  drpc_dict_set(kw, "device", drpc_value_str("cpu"));
  drpc_dict_set(kw, "dtype", drpc_value_nil());
  CHECK_TENSOR(run("aten::ones", drpc_value_list(), kw, &err), DRPC_FLOAT32, 1,
               SHAPE(2), ones6);
  CHECK_TENSOR(run("aten::zeros", NULL, kw1("size", drpc_value_int(3)), &err),
               DRPC_FLOAT32, 1, SHAPE(3), zeros6);
  drpc_error_clear(&err);
}

static void test_ones_zeros_errors(void) {
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_FAILS(run("aten::ones",
                  drpc_value_list_of(2, drpc_value_int(2), drpc_value_int(-1)),
                  NULL, &err),
              &err, DRPC_EINVAL,
              "aten::ones: Trying to create tensor with negative dimension "
              "-1: [2, -1]");
  CHECK_FAILS(run("aten::zeros", drpc_value_list(), NULL, &err), &err,
              DRPC_EINVAL, "aten::zeros: missing argument 'size'");
  CHECK_FAILS(
      run("aten::ones",
          drpc_value_list_of(2, drpc_value_int(2), drpc_value_float(1.5)), NULL,
          &err),
      &err, DRPC_ETYPE,
      "aten::ones: argument 'size' must be a list of ints, but found "
      "element of type");
  CHECK_FAILS(run("aten::ones",
                  drpc_value_list_of(2, drpc_value_list(), drpc_value_int(1)),
                  NULL, &err),
              &err, DRPC_EINVAL, "aten::ones: expected a size as one list");
  CHECK_FAILS(run("aten::ones", drpc_value_list_of(1, drpc_value_int(2)),
                  kw1("size", drpc_value_int(3)), &err),
              &err, DRPC_EINVAL, "got multiple values for argument 'size'");
  drpc_value *nine = drpc_value_list();
  for (int i = 0; i < 9; i++) {
    drpc_list_append(nine, drpc_value_int(1));
  }
  CHECK_FAILS(run("aten::ones", nine, NULL, &err), &err, DRPC_EINVAL,
              "aten::ones: a size of 9 dimensions exceeds limit 8");
  CHECK_FAILS(run("aten::ones", drpc_value_list_of(1, drpc_value_int(2)),
                  kw1("dtype", drpc_value_str("uint8")), &err),
              &err, DRPC_ETYPE, "aten::ones: unsupported dtype uint8");
  CHECK_FAILS(run("aten::zeros", drpc_value_list_of(1, drpc_value_int(2)),
                  kw1("dtype", drpc_value_str("complex64")), &err),
              &err, DRPC_EINVAL, "aten::zeros: unknown dtype 'complex64'");
  CHECK_FAILS(run("aten::zeros", drpc_value_list_of(1, drpc_value_int(2)),
                  kw1("dtype", drpc_value_int(6)), &err),
              &err, DRPC_ETYPE, "aten::zeros: argument 'dtype' must be");
  CHECK_FAILS(run("aten::ones", drpc_value_list_of(1, drpc_value_int(2)),
                  kw1("device", drpc_value_str("cuda:0")), &err),
              &err, DRPC_EUNSUPPORTED,
              "aten::ones: builtin ops run on the CPU, not cuda:0");
  CHECK_FAILS(run("aten::ones", drpc_value_list_of(1, drpc_value_int(2)),
                  kw1("device", drpc_value_str("tpu")), &err),
              &err, DRPC_EINVAL, "aten::ones: invalid device");
  CHECK_FAILS(run("aten::ones", drpc_value_list_of(1, drpc_value_int(2)),
                  kw1("requires_grad", drpc_value_bool(true)), &err),
              &err, DRPC_EINVAL,
              "aten::ones: unexpected keyword argument 'requires_grad'");
  /* The result bound: 2^30 float32s is exactly 4 GiB and allowed in
   * principle; one more element is refused before allocating. */
  CHECK_FAILS(
      run("aten::ones",
          drpc_value_list_of(2, drpc_value_int(1LL << 30), drpc_value_int(2)),
          NULL, &err),
      &err, DRPC_EINVAL,
      "aten::ones: result of 8589934592 bytes exceeds limit "
      "4294967296");
  CHECK_FAILS(
      run("aten::zeros",
          drpc_value_list_of(3, drpc_value_int(1LL << 40),
                             drpc_value_int(1LL << 40), drpc_value_int(0)),
          NULL, &err),
      &err, DRPC_EINVAL, "aten::zeros: result size overflows");
  drpc_error_clear(&err);
}

/* ---- aten::clone ------------------------------------------------------- */

static void test_clone(void) {
  drpc_error err = DRPC_ERROR_INIT;
  for (int k = 0; k < 3; k++) {
    drpc_tensor *t = make(DTYPES[k], 1, SHAPE(3), VALS(1, 2, 3));
    drpc_value *r = run(
        "aten::clone", drpc_value_list_of(1, drpc_value_tensor(t)), NULL, &err);
    CHECK(r != NULL && r->kind == DRPC_VAL_TENSOR);
    CHECK(r->u.t != t);
    CHECK(r->u.t->storage != t->storage);
    CHECK(drpc_tensor_equal(r->u.t, t));
    /* The argument list let go of its reference; the caller's remains. */
    CHECK_EQ_INT(t->refcount, 1);
    drpc_value_free(r);
    drpc_tensor_decref(t);
  }
  /* clone copies bytes, so any dtype works. */
  CHECK_TENSOR(
      run("aten::clone",
          drpc_value_list_of(1, mk(DRPC_UINT8, 1, SHAPE(2), VALS(200, 7))),
          NULL, &err),
      DRPC_UINT8, 1, SHAPE(2), VALS(200, 7));
  CHECK_FAILS(run("aten::clone", drpc_value_list_of(1, drpc_value_float(1)),
                  NULL, &err),
              &err, DRPC_ETYPE,
              "aten::clone: argument 'input' must be a tensor, not");
  CHECK_FAILS(run("aten::clone",
                  drpc_value_list_of(1, mk(DRPC_FLOAT32, 0, NULL, VALS(1))),
                  kw1("memory_format", drpc_value_str("x")), &err),
              &err, DRPC_EINVAL, "unexpected keyword argument 'memory_format'");
  drpc_error_clear(&err);
}

/* ---- aten::matmul ------------------------------------------------------ */

static void test_matmul(void) {
  drpc_error err = DRPC_ERROR_INIT;
  for (int k = 0; k < 3; k++) {
    drpc_dtype dt = DTYPES[k];
    CHECK_TENSOR(run("aten::matmul",
                     drpc_value_list_of(
                         2, mk(dt, 2, SHAPE(2, 3), VALS(1, 2, 3, 4, 5, 6)),
                         mk(dt, 2, SHAPE(3, 2), VALS(7, 8, 9, 10, 11, 12))),
                     NULL, &err),
                 dt, 2, SHAPE(2, 2), VALS(58, 64, 139, 154));
  }
  /* Promotion: int64 @ float32 -> float32; float32 @ float64 -> float64. */
  CHECK_TENSOR(
      run("aten::matmul",
          drpc_value_list_of(2, mk(DRPC_INT64, 2, SHAPE(1, 2), VALS(1, 2)),
                             mk(DRPC_FLOAT32, 2, SHAPE(2, 1), VALS(0.5, 0.25))),
          NULL, &err),
      DRPC_FLOAT32, 2, SHAPE(1, 1), VALS(1));
  CHECK_TENSOR(
      run("aten::matmul",
          drpc_value_list_of(2, mk(DRPC_FLOAT32, 2, SHAPE(1, 1), VALS(3)),
                             mk(DRPC_FLOAT64, 2, SHAPE(1, 3), VALS(1, 2, 3))),
          NULL, &err),
      DRPC_FLOAT64, 2, SHAPE(1, 3), VALS(3, 6, 9));
  /* An empty inner dimension gives zeros; an empty outer one nothing. */
  CHECK_TENSOR(
      run("aten::matmul",
          drpc_value_list_of(2, mk(DRPC_FLOAT32, 2, SHAPE(2, 0), VALS(0)),
                             mk(DRPC_FLOAT32, 2, SHAPE(0, 3), VALS(0))),
          NULL, &err),
      DRPC_FLOAT32, 2, SHAPE(2, 3), VALS(0, 0, 0, 0, 0, 0));
  CHECK_TENSOR(
      run("aten::matmul",
          drpc_value_list_of(
              2, mk(DRPC_FLOAT32, 2, SHAPE(0, 2), VALS(0)),
              mk(DRPC_FLOAT32, 2, SHAPE(2, 3), VALS(0, 0, 0, 0, 0, 0))),
          NULL, &err),
      DRPC_FLOAT32, 2, SHAPE(0, 3), VALS(0));
  /* A larger product against a naive reference. */
  enum { M = 17, K = 33, N = 9 };
  double a[M * K], b[K * N], want[M * N];
  for (int i = 0; i < M * K; i++) {
    a[i] = (i * 7) % 11 - 5;
  }
  for (int i = 0; i < K * N; i++) {
    b[i] = (i * 5) % 13 - 6;
  }
  for (int i = 0; i < M; i++) {
    for (int j = 0; j < N; j++) {
      want[i * N + j] = 0;
      for (int p = 0; p < K; p++) {
        want[i * N + j] += a[i * K + p] * b[p * N + j];
      }
    }
  }
  for (int k = 0; k < 3; k++) {
    CHECK_TENSOR(run("aten::matmul",
                     drpc_value_list_of(2, mk(DTYPES[k], 2, SHAPE(M, K), a),
                                        mk(DTYPES[k], 2, SHAPE(K, N), b)),
                     NULL, &err),
                 DTYPES[k], 2, SHAPE(M, N), want);
  }
  drpc_error_clear(&err);
}

static void test_matmul_errors(void) {
  drpc_error err = DRPC_ERROR_INIT;
  double z[20] = {0};
  CHECK_FAILS(run("aten::matmul",
                  drpc_value_list_of(2, mk(DRPC_FLOAT32, 2, SHAPE(2, 3), z),
                                     mk(DRPC_FLOAT32, 2, SHAPE(4, 5), z)),
                  NULL, &err),
              &err, DRPC_EINVAL,
              "aten::matmul: mat1 and mat2 shapes cannot be multiplied (2x3 "
              "and 4x5)");
  CHECK_STR_EQ(err.msg, "aten::matmul: mat1 and mat2 shapes cannot be "
                        "multiplied (2x3 and 4x5)");
  CHECK_FAILS(run("aten::matmul",
                  drpc_value_list_of(2, mk(DRPC_FLOAT32, 1, SHAPE(3), z),
                                     mk(DRPC_FLOAT32, 2, SHAPE(3, 5), z)),
                  NULL, &err),
              &err, DRPC_EINVAL,
              "aten::matmul: only 2-D tensors are supported, got 1-D and 2-D");
  CHECK_FAILS(run("aten::matmul",
                  drpc_value_list_of(2, mk(DRPC_FLOAT32, 2, SHAPE(3, 1), z),
                                     mk(DRPC_FLOAT32, 3, SHAPE(1, 2, 2), z)),
                  NULL, &err),
              &err, DRPC_EINVAL, "got 2-D and 3-D");
  CHECK_FAILS(run("aten::matmul",
                  drpc_value_list_of(2, mk(DRPC_FLOAT32, 2, SHAPE(1, 1), z),
                                     drpc_value_int(2)),
                  NULL, &err),
              &err, DRPC_ETYPE,
              "aten::matmul: argument 'other' must be a tensor, not");
  drpc_error_clear(&err);
}

/* ---- ownership --------------------------------------------------------- */

/* Counts frees of a wrapped storage. */
static int storage_frees;
static void count_free(void *ctx, void *data) {
  (void)ctx;
  (void)data;
  storage_frees++;
}

static void test_refcounts(void) {
  drpc_error err = DRPC_ERROR_INIT;
  static double mem[4] = {1, 2, 3, 4};
  storage_frees = 0;
  drpc_storage *s =
      drpc_storage_wrap(mem, sizeof mem, DRPC_CPU, count_free, NULL);
  drpc_tensor *t = drpc_tensor_from_storage(s, DRPC_FLOAT64, 1, SHAPE(4), 0);
  drpc_storage_decref(s);
  /* Ops borrow their inputs: the input is intact and its counts unchanged
   * after every op, success or failure. */
  const char *names[] = {"aten::add", "aten::sub", "aten::mul", "aten::div",
                         "aten::matmul"};
  for (int i = 0; i < 5; i++) {
    drpc_value *args =
        drpc_value_list_of(2, drpc_value_tensor(t), drpc_value_tensor(t));
    drpc_value *r = drpc_op_run(names[i], args, NULL, &err);
    CHECK_EQ_INT(t->refcount, 3);
    drpc_value_free(r);
    drpc_value_free(args);
    CHECK_EQ_INT(t->refcount, 1);
    CHECK_EQ_INT(s->refcount, 1);
    drpc_error_clear(&err);
  }
  drpc_value *args = drpc_value_list_of(1, drpc_value_tensor(t));
  drpc_value *r = drpc_op_run("aten::sum", args, NULL, &err);
  CHECK(r != NULL && r->u.t->refcount == 1);
  CHECK(r != NULL && r->u.t->storage->refcount == 1);
  drpc_value_free(r);
  drpc_value_free(args);
  CHECK_EQ_INT(storage_frees, 0);
  CHECK(mem[0] == 1 && mem[3] == 4);
  drpc_tensor_decref(t);
  CHECK_EQ_INT(storage_frees, 1);
  drpc_error_clear(&err);
}

int main(void) {
  RUN(test_binary_every_dtype);
  RUN(test_div_special);
  RUN(test_int_wraps);
  RUN(test_broadcast);
  RUN(test_broadcast_errors);
  RUN(test_promotion);
  RUN(test_tensor_and_number);
  RUN(test_numbers);
  RUN(test_alpha);
  RUN(test_named_operands);
  RUN(test_arg_errors);
  RUN(test_unsupported);
  RUN(test_unknown_op);
  RUN(test_names);
  RUN(test_non_contiguous);
  RUN(test_bad_layout);
  RUN(test_sum);
  RUN(test_sum_errors);
  RUN(test_ones_zeros);
  RUN(test_ones_zeros_errors);
  RUN(test_clone);
  RUN(test_matmul);
  RUN(test_matmul_errors);
  RUN(test_refcounts);
  return test_finish();
}
