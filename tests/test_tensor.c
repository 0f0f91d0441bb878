/* Unit tests for core/tensor.c: dtypes, devices, storage, views and copies. */
#include "drpc/error.h"
#include "drpc/tensor.h"

#include <math.h>
#include <stdint.h>

#include "test.h"

/* Counts free_fn calls so tests can see that storage is freed exactly once
 * and only after the last reference goes. */
typedef struct free_counter {
  int calls;
  void *last_data;
} free_counter;

static void count_free(void *ctx, void *data) {
  free_counter *c = ctx;
  c->calls++;
  c->last_data = data;
}

static void test_dtype(void) {
  CHECK_EQ_INT(drpc_dtype_size(DRPC_FLOAT32), 4);
  CHECK_EQ_INT(drpc_dtype_size(DRPC_FLOAT64), 8);
  CHECK_EQ_INT(drpc_dtype_size(DRPC_INT64), 8);
  CHECK_EQ_INT(drpc_dtype_size(DRPC_INT32), 4);
  CHECK_EQ_INT(drpc_dtype_size(DRPC_UINT8), 1);
  CHECK_EQ_INT(drpc_dtype_size(DRPC_BOOL), 1);
  CHECK_EQ_INT(drpc_dtype_size(DRPC_DTYPE_COUNT), 0);
  CHECK_EQ_INT(drpc_dtype_size((drpc_dtype)-1), 0);
  CHECK_STR_EQ(drpc_dtype_name(DRPC_FLOAT32), "float32");
  CHECK_STR_EQ(drpc_dtype_name(DRPC_FLOAT64), "float64");
  CHECK_STR_EQ(drpc_dtype_name(DRPC_INT64), "int64");
  CHECK_STR_EQ(drpc_dtype_name(DRPC_INT32), "int32");
  CHECK_STR_EQ(drpc_dtype_name(DRPC_UINT8), "uint8");
  CHECK_STR_EQ(drpc_dtype_name(DRPC_BOOL), "bool");
  CHECK_STR_EQ(drpc_dtype_name(DRPC_DTYPE_COUNT), "invalid");
}

static void test_device_parse(void) {
  drpc_device d = {9, 9};
  CHECK_EQ_INT(drpc_device_parse("cpu", &d), 0);
  CHECK_EQ_INT(d.type, DRPC_DEVICE_CPU);
  CHECK_EQ_INT(d.index, -1);
  CHECK_EQ_INT(drpc_device_parse("cuda", &d), 0);
  CHECK_EQ_INT(d.type, DRPC_DEVICE_CUDA);
  CHECK_EQ_INT(d.index, 0);
  CHECK_EQ_INT(drpc_device_parse("cuda:3", &d), 0);
  CHECK_EQ_INT(d.type, DRPC_DEVICE_CUDA);
  CHECK_EQ_INT(d.index, 3);
  CHECK_EQ_INT(drpc_device_parse("2", &d), 0);
  CHECK_EQ_INT(d.type, DRPC_DEVICE_CUDA);
  CHECK_EQ_INT(d.index, 2);
  CHECK_EQ_INT(drpc_device_parse("cuda:127", &d), 0);
  CHECK_EQ_INT(d.index, 127);
  CHECK_EQ_INT(drpc_device_parse("0", &d), 0);
  CHECK_EQ_INT(d.index, 0);

  /* A failed parse leaves the output alone. */
  drpc_device keep = {DRPC_DEVICE_CUDA, 5};
  const char *bad[] = {"cuda:-1", "-1",    "cuda:",   "cuda:1x",  "",    "gpu",
                       " 1",      "+1",    "cuda:+1", "cuda:128", "128", "CPU",
                       "cuda:0 ", "cpu:0", "1.5",     "cuda0",    "cudA"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    d = keep;
    int rc = drpc_device_parse(bad[i], &d);
    CHECK_EQ_INT(rc, DRPC_EINVAL);
    if (rc == 0) {
      fprintf(stderr, "  accepted \"%s\"\n", bad[i]);
    }
    CHECK(drpc_device_equal(d, keep));
  }
  CHECK_EQ_INT(drpc_device_parse(NULL, &d), DRPC_EINVAL);
  CHECK_EQ_INT(drpc_device_parse("cpu", NULL), DRPC_EINVAL);
}

static void test_device_format(void) {
  char buf[32];
  CHECK_STR_EQ(drpc_device_format(DRPC_CPU, buf, sizeof buf), "cpu");
  drpc_device c3 = {DRPC_DEVICE_CUDA, 3};
  CHECK_STR_EQ(drpc_device_format(c3, buf, sizeof buf), "cuda:3");
  CHECK(drpc_device_format(c3, buf, sizeof buf) == buf);
  /* Round trip through parse. */
  drpc_device back;
  CHECK_EQ_INT(drpc_device_parse(buf, &back), 0);
  CHECK(drpc_device_equal(back, c3));
  /* Short buffers truncate and stay NUL-terminated. */
  char small[5];
  CHECK_STR_EQ(drpc_device_format(c3, small, sizeof small), "cuda");
  /* n == 0 writes nothing. */
  buf[0] = 'x';
  drpc_device_format(c3, buf, 0);
  CHECK_EQ_INT(buf[0], 'x');
  drpc_device weird = {7, 0};
  CHECK_STR_EQ(drpc_device_format(weird, buf, sizeof buf), "invalid");
}

static void test_device_equal(void) {
  drpc_device c0 = {DRPC_DEVICE_CUDA, 0}, c1 = {DRPC_DEVICE_CUDA, 1};
  drpc_device cpu_odd = {DRPC_DEVICE_CPU, 4};
  CHECK(drpc_device_equal(DRPC_CPU, DRPC_CPU));
  CHECK(drpc_device_equal(DRPC_CPU, cpu_odd));
  CHECK(drpc_device_equal(c0, c0));
  CHECK(!drpc_device_equal(c0, c1));
  CHECK(!drpc_device_equal(c0, DRPC_CPU));
}

static void test_storage_new(void) {
  const size_t sizes[] = {0, 1, 3, 63, 64, 65, 1000, 4096};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    drpc_storage *s = drpc_storage_new(sizes[i], true);
    CHECK(s != NULL);
    if (s == NULL) {
      continue;
    }
    CHECK(s->data != NULL);
    CHECK_EQ_INT((uintptr_t)s->data % DRPC_TENSOR_ALIGN, 0);
    CHECK_EQ_INT(s->nbytes, sizes[i]);
    CHECK_EQ_INT(s->refcount, 1);
    CHECK_EQ_INT(s->device.type, DRPC_DEVICE_CPU);
    int zero = 1;
    for (size_t j = 0; j < sizes[i]; j++) {
      zero = zero && ((unsigned char *)s->data)[j] == 0;
    }
    CHECK(zero);
    drpc_storage_decref(s);
  }
  drpc_storage *s = drpc_storage_new(100, false);
  CHECK(s != NULL && s->data != NULL);
  /* All 100 bytes are writable (ASan would catch otherwise). */
  memset(s->data, 0xab, 100);
  drpc_storage_decref(s);
  /* Sizes that cannot be rounded up fail instead of wrapping. */
  CHECK(drpc_storage_new(SIZE_MAX, false) == NULL);
  CHECK(drpc_storage_new(SIZE_MAX - 10, false) == NULL);
}

static void test_storage_refcount(void) {
  static char buf[16];
  free_counter fc = {0, NULL};
  drpc_device c2 = {DRPC_DEVICE_CUDA, 2};
  drpc_storage *s = drpc_storage_wrap(buf, sizeof buf, c2, count_free, &fc);
  CHECK(s != NULL);
  CHECK(s->data == buf);
  CHECK(drpc_device_equal(s->device, c2));
  CHECK_EQ_INT(s->refcount, 1);
  drpc_storage_incref(s);
  drpc_storage_incref(s);
  CHECK_EQ_INT(s->refcount, 3);
  drpc_storage_decref(s);
  drpc_storage_decref(s);
  CHECK_EQ_INT(fc.calls, 0);
  drpc_storage_decref(s);
  CHECK_EQ_INT(fc.calls, 1);
  CHECK(fc.last_data == buf);
  /* NULL is ignored. */
  drpc_storage_incref(NULL);
  drpc_storage_decref(NULL);
  /* A NULL free function is allowed. */
  s = drpc_storage_wrap(buf, sizeof buf, DRPC_CPU, NULL, NULL);
  CHECK(s != NULL);
  drpc_storage_decref(s);
  /* Zero bytes may have no data; nonzero bytes need some. */
  s = drpc_storage_wrap(NULL, 0, DRPC_CPU, NULL, NULL);
  CHECK(s != NULL);
  drpc_storage_decref(s);
  CHECK(drpc_storage_wrap(NULL, 8, DRPC_CPU, NULL, NULL) == NULL);
}

static void test_tensor_new(void) {
  int64_t shape[3] = {2, 3, 4};
  drpc_tensor *t = drpc_tensor_new(DRPC_FLOAT32, 3, shape);
  CHECK(t != NULL);
  CHECK_EQ_INT(t->refcount, 1);
  CHECK_EQ_INT(t->ndim, 3);
  CHECK_EQ_INT(t->shape[2], 4);
  CHECK_EQ_INT(t->strides[0], 12);
  CHECK_EQ_INT(t->strides[1], 4);
  CHECK_EQ_INT(t->strides[2], 1);
  CHECK_EQ_INT(t->offset, 0);
  CHECK_EQ_INT(drpc_tensor_numel(t), 24);
  CHECK_EQ_INT(drpc_tensor_nbytes(t), 96);
  CHECK_EQ_INT(t->storage->nbytes, 96);
  CHECK(drpc_tensor_is_contiguous(t));
  CHECK(drpc_tensor_data(t) == t->storage->data);
  CHECK_EQ_INT((uintptr_t)drpc_tensor_data(t) % DRPC_TENSOR_ALIGN, 0);
  double sum = 0;
  for (int64_t i = 0; i < 24; i++) {
    sum += fabs(drpc_tensor_get_f64(t, i));
  }
  CHECK(sum == 0);
  drpc_tensor_decref(t);

  /* A scalar: ndim 0, shape may be NULL, one element. */
  t = drpc_tensor_new(DRPC_INT64, 0, NULL);
  CHECK(t != NULL);
  CHECK_EQ_INT(drpc_tensor_numel(t), 1);
  CHECK_EQ_INT(drpc_tensor_nbytes(t), 8);
  CHECK(drpc_tensor_is_contiguous(t));
  drpc_tensor_decref(t);

  /* Empty tensors still get valid storage. */
  int64_t empty_shape[2] = {0, 5};
  t = drpc_tensor_empty(DRPC_FLOAT64, 2, empty_shape);
  CHECK(t != NULL);
  CHECK_EQ_INT(drpc_tensor_numel(t), 0);
  CHECK_EQ_INT(drpc_tensor_nbytes(t), 0);
  CHECK(t->storage != NULL && t->storage->data != NULL);
  CHECK_EQ_INT(t->strides[0], 5);
  CHECK(drpc_tensor_is_contiguous(t));
  drpc_tensor_decref(t);

  /* Every dtype works. */
  for (int dt = 0; dt < DRPC_DTYPE_COUNT; dt++) {
    t = drpc_tensor_new((drpc_dtype)dt, 1, (int64_t[]){3});
    CHECK(t != NULL);
    CHECK_EQ_INT(drpc_tensor_nbytes(t), 3 * drpc_dtype_size((drpc_dtype)dt));
    drpc_tensor_decref(t);
  }
}

static void test_tensor_new_rejects(void) {
  CHECK(drpc_tensor_new(DRPC_FLOAT32, 1, (int64_t[]){-1}) == NULL);
  CHECK(drpc_tensor_new(DRPC_FLOAT32, 2, (int64_t[]){3, -2}) == NULL);
  CHECK(drpc_tensor_new(DRPC_FLOAT32, -1, NULL) == NULL);
  CHECK(drpc_tensor_new(DRPC_FLOAT32, 9, (int64_t[9]){1}) == NULL);
  CHECK(drpc_tensor_new(DRPC_FLOAT32, 2, NULL) == NULL);
  CHECK(drpc_tensor_new(DRPC_DTYPE_COUNT, 1, (int64_t[]){2}) == NULL);
  /* Products that overflow int64, in elements or in bytes. */
  CHECK(drpc_tensor_new(DRPC_FLOAT32, 2, (int64_t[]){INT64_MAX, 2}) == NULL);
  CHECK(drpc_tensor_new(DRPC_UINT8, 3,
                        (int64_t[]){1LL << 31, 1LL << 31, 1LL << 2}) == NULL);
  CHECK(drpc_tensor_new(DRPC_FLOAT64, 1, (int64_t[]){INT64_MAX / 4}) == NULL);
  /* A zero dimension does not hide an overflow in the others, which would
   * make the strides unrepresentable. */
  CHECK(drpc_tensor_new(DRPC_FLOAT32, 3,
                        (int64_t[]){0, 1LL << 40, 1LL << 40}) == NULL);
  CHECK(drpc_tensor_empty(DRPC_FLOAT32, 1, (int64_t[]){-5}) == NULL);
  CHECK(drpc_tensor_from_data(DRPC_FLOAT32, 1, (int64_t[]){-5}, NULL, true) ==
        NULL);
  /* Eight dimensions is the limit, and it is allowed. */
  int64_t eight[8] = {1, 2, 1, 2, 1, 2, 1, 2};
  drpc_tensor *t = drpc_tensor_new(DRPC_UINT8, 8, eight);
  CHECK(t != NULL);
  CHECK_EQ_INT(drpc_tensor_numel(t), 16);
  drpc_tensor_decref(t);
}

static void test_numel_by_hand(void) {
  /* Tensors filled in by hand (as a decoder might) report bad shapes. */
  drpc_tensor t;
  memset(&t, 0, sizeof t);
  t.dtype = DRPC_FLOAT64;
  t.ndim = 2;
  t.shape[0] = INT64_MAX;
  t.shape[1] = 2;
  CHECK_EQ_INT(drpc_tensor_numel(&t), -1);
  CHECK_EQ_INT(drpc_tensor_nbytes(&t), 0);
  t.shape[0] = -3;
  CHECK_EQ_INT(drpc_tensor_numel(&t), -1);
  t.shape[0] = INT64_MAX / 2;
  t.shape[1] = 1;
  CHECK_EQ_INT(drpc_tensor_numel(&t), INT64_MAX / 2);
  /* numel fits but numel * 8 bytes does not fit a size_t on 64-bit. */
  CHECK_EQ_INT(drpc_tensor_nbytes(&t), 0);
  t.ndim = 9;
  CHECK_EQ_INT(drpc_tensor_numel(&t), -1);
  CHECK_EQ_INT(drpc_tensor_numel(NULL), -1);
  CHECK_EQ_INT(drpc_tensor_nbytes(NULL), 0);
}

static void test_from_storage(void) {
  free_counter fc = {0, NULL};
  double *buf = calloc(10, sizeof(double));
  for (int i = 0; i < 10; i++) {
    buf[i] = i;
  }
  drpc_storage *s =
      drpc_storage_wrap(buf, 10 * sizeof(double), DRPC_CPU, count_free, &fc);
  drpc_tensor *t =
      drpc_tensor_from_storage(s, DRPC_FLOAT64, 2, (int64_t[]){2, 3}, 4);
  CHECK(t != NULL);
  CHECK_EQ_INT(s->refcount, 2);
  CHECK(drpc_tensor_data(t) == (void *)(buf + 4));
  CHECK(drpc_tensor_get_f64(t, 0) == 4.0);
  CHECK(drpc_tensor_get_f64(t, 5) == 9.0);
  CHECK_EQ_INT(drpc_tensor_get_i64(t, 3), 7);
  /* Views that run past the storage, or start before it, are refused. */
  CHECK(drpc_tensor_from_storage(s, DRPC_FLOAT64, 1, (int64_t[]){7}, 4) ==
        NULL);
  CHECK(drpc_tensor_from_storage(s, DRPC_FLOAT64, 1, (int64_t[]){1}, 10) ==
        NULL);
  CHECK(drpc_tensor_from_storage(s, DRPC_FLOAT64, 1, (int64_t[]){1}, -1) ==
        NULL);
  CHECK(drpc_tensor_from_storage(s, DRPC_FLOAT64, 1, (int64_t[]){1},
                                 INT64_MAX) == NULL);
  CHECK(drpc_tensor_from_storage(NULL, DRPC_FLOAT64, 0, NULL, 0) == NULL);
  /* An exact fit and an empty view at the end are fine. */
  drpc_tensor *whole =
      drpc_tensor_from_storage(s, DRPC_FLOAT64, 1, (int64_t[]){10}, 0);
  drpc_tensor *end =
      drpc_tensor_from_storage(s, DRPC_FLOAT64, 1, (int64_t[]){0}, 10);
  CHECK(whole != NULL);
  CHECK(end != NULL);
  CHECK_EQ_INT(s->refcount, 4);
  /* Reading the same bytes as another dtype is a valid view too. */
  drpc_tensor *bytes =
      drpc_tensor_from_storage(s, DRPC_UINT8, 1, (int64_t[]){80}, 0);
  CHECK(bytes != NULL);
  drpc_tensor_decref(bytes);
  drpc_tensor_decref(whole);
  drpc_tensor_decref(end);
  drpc_storage_decref(s);
  CHECK_EQ_INT(fc.calls, 0);
  /* The tensor keeps the storage alive after the creator lets go. */
  CHECK(drpc_tensor_get_f64(t, 1) == 5.0);
  drpc_tensor_decref(t);
  CHECK_EQ_INT(fc.calls, 1);
  CHECK(fc.last_data == buf);
  free(buf);
}

static void test_from_data(void) {
  int64_t vals[4] = {1, -2, 3, -4};
  drpc_tensor *copy =
      drpc_tensor_from_data(DRPC_INT64, 2, (int64_t[]){2, 2}, vals, true);
  drpc_tensor *borrow =
      drpc_tensor_from_data(DRPC_INT64, 2, (int64_t[]){2, 2}, vals, false);
  CHECK(copy != NULL && borrow != NULL);
  CHECK(drpc_tensor_data(copy) != (void *)vals);
  CHECK(drpc_tensor_data(borrow) == (void *)vals);
  CHECK_EQ_INT((uintptr_t)drpc_tensor_data(copy) % DRPC_TENSOR_ALIGN, 0);
  CHECK(drpc_tensor_equal(copy, borrow));
  vals[3] = 40;
  CHECK_EQ_INT(drpc_tensor_get_i64(copy, 3), -4);
  CHECK_EQ_INT(drpc_tensor_get_i64(borrow, 3), 40);
  CHECK(!drpc_tensor_equal(copy, borrow));
  drpc_tensor_decref(copy);
  /* Borrowed memory is not freed by the tensor (ASan would catch a free of
   * a stack array). */
  drpc_tensor_decref(borrow);
  /* Empty data may be NULL. */
  drpc_tensor *e =
      drpc_tensor_from_data(DRPC_FLOAT32, 1, (int64_t[]){0}, NULL, false);
  CHECK(e != NULL);
  drpc_tensor_decref(e);
  CHECK(drpc_tensor_from_data(DRPC_FLOAT32, 1, (int64_t[]){2}, NULL, true) ==
        NULL);
}

static void test_tensor_refcount(void) {
  free_counter fc = {0, NULL};
  float *buf = calloc(6, sizeof(float));
  drpc_storage *s =
      drpc_storage_wrap(buf, 6 * sizeof(float), DRPC_CPU, count_free, &fc);
  drpc_tensor *a =
      drpc_tensor_from_storage(s, DRPC_FLOAT32, 1, (int64_t[]){6}, 0);
  drpc_tensor *b =
      drpc_tensor_from_storage(s, DRPC_FLOAT32, 2, (int64_t[]){2, 2}, 2);
  drpc_storage_decref(s);
  CHECK_EQ_INT(s->refcount, 2);
  drpc_tensor_incref(a);
  CHECK_EQ_INT(a->refcount, 2);
  drpc_tensor_decref(a);
  drpc_tensor_decref(a);
  CHECK_EQ_INT(fc.calls, 0);
  CHECK_EQ_INT(s->refcount, 1);
  drpc_tensor_decref(b);
  CHECK_EQ_INT(fc.calls, 1);
  free(buf);
  drpc_tensor_incref(NULL);
  drpc_tensor_decref(NULL);
}

/* A 2x3 float64 tensor holding 0..5 and its transpose, a 3x2 view with
 * strides (1, 3) over the same storage. */
static drpc_tensor *make_2x3(void) {
  double v[6] = {0, 1, 2, 3, 4, 5};
  return drpc_tensor_from_data(DRPC_FLOAT64, 2, (int64_t[]){2, 3}, v, true);
}

static drpc_tensor *transpose_view(drpc_tensor *t) {
  drpc_tensor *v = drpc_tensor_from_storage(
      t->storage, t->dtype, 2, (int64_t[]){t->shape[1], t->shape[0]},
      t->offset);
  v->strides[0] = t->strides[1];
  v->strides[1] = t->strides[0];
  return v;
}

static void test_non_contiguous(void) {
  drpc_tensor *t = make_2x3();
  drpc_tensor *tt = transpose_view(t);
  CHECK(!drpc_tensor_is_contiguous(tt));
  CHECK_EQ_INT(t->storage->refcount, 2);
  /* Logical row-major order of the transpose is 0 3 1 4 2 5. */
  const double want[6] = {0, 3, 1, 4, 2, 5};
  for (int64_t i = 0; i < 6; i++) {
    CHECK(drpc_tensor_get_f64(tt, i) == want[i]);
    CHECK_EQ_INT(drpc_tensor_get_i64(tt, i), (int64_t)want[i]);
  }
  drpc_tensor *c = drpc_tensor_contiguous(tt);
  CHECK(c != NULL && c != tt);
  CHECK(drpc_tensor_is_contiguous(c));
  CHECK(c->storage != tt->storage);
  CHECK_EQ_INT(c->shape[0], 3);
  CHECK_EQ_INT(c->strides[0], 2);
  const double *cd = drpc_tensor_data(c);
  for (int i = 0; i < 6; i++) {
    CHECK(cd[i] == want[i]);
  }
  CHECK(drpc_tensor_equal(c, tt));
  CHECK(!drpc_tensor_equal(c, t));
  drpc_tensor *k = drpc_tensor_clone(tt);
  CHECK(drpc_tensor_equal(k, c));
  drpc_tensor_decref(k);
  drpc_tensor_decref(c);

  /* A column view with an offset: t[:, 1], shape (2,), stride 3. */
  drpc_tensor *col =
      drpc_tensor_from_storage(t->storage, DRPC_FLOAT64, 1, (int64_t[]){2}, 1);
  col->strides[0] = 3;
  CHECK(!drpc_tensor_is_contiguous(col));
  CHECK(drpc_tensor_get_f64(col, 0) == 1.0);
  CHECK(drpc_tensor_get_f64(col, 1) == 4.0);
  drpc_tensor *cc = drpc_tensor_clone(col);
  CHECK(drpc_tensor_is_contiguous(cc));
  CHECK_EQ_INT(cc->offset, 0);
  CHECK(((double *)drpc_tensor_data(cc))[1] == 4.0);
  drpc_tensor_decref(cc);
  drpc_tensor_decref(col);

  /* Strided copies across three dimensions: a (2,2,2) view with permuted
   * strides over 8 int32s. */
  int32_t v8[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  drpc_tensor *cube =
      drpc_tensor_from_data(DRPC_INT32, 3, (int64_t[]){2, 2, 2}, v8, true);
  cube->strides[0] = 1;
  cube->strides[1] = 2;
  cube->strides[2] = 4;
  drpc_tensor *cubec = drpc_tensor_contiguous(cube);
  const int32_t want8[8] = {0, 4, 2, 6, 1, 5, 3, 7};
  for (int i = 0; i < 8; i++) {
    CHECK_EQ_INT(((int32_t *)drpc_tensor_data(cubec))[i], want8[i]);
    CHECK_EQ_INT(drpc_tensor_get_i64(cube, i), want8[i]);
  }
  drpc_tensor_decref(cubec);
  drpc_tensor_decref(cube);

  drpc_tensor_decref(tt);
  CHECK_EQ_INT(t->storage->refcount, 1);
  drpc_tensor_decref(t);
}

static void test_contiguous_shares(void) {
  drpc_tensor *t = make_2x3();
  drpc_tensor *c = drpc_tensor_contiguous(t);
  CHECK(c == t);
  CHECK_EQ_INT(t->refcount, 2);
  drpc_tensor_decref(c);
  CHECK_EQ_INT(t->refcount, 1);
  /* Strides of size-1 dimensions do not matter, as in PyTorch. */
  drpc_tensor *row = drpc_tensor_from_storage(t->storage, DRPC_FLOAT64, 2,
                                              (int64_t[]){1, 3}, 3);
  row->strides[0] = 99;
  CHECK(drpc_tensor_is_contiguous(row));
  CHECK(drpc_tensor_get_f64(row, 2) == 5.0);
  drpc_tensor_decref(row);
  /* A clone of a contiguous tensor is still a fresh copy. */
  drpc_tensor *k = drpc_tensor_clone(t);
  CHECK(k != t && k->storage != t->storage);
  CHECK(drpc_tensor_equal(k, t));
  ((double *)drpc_tensor_data(k))[0] = 42;
  CHECK(drpc_tensor_get_f64(t, 0) == 0.0);
  drpc_tensor_decref(k);
  drpc_tensor_decref(t);
}

static void test_get_out_of_range(void) {
  drpc_tensor *t = make_2x3();
  CHECK(isnan(drpc_tensor_get_f64(t, -1)));
  CHECK(isnan(drpc_tensor_get_f64(t, 6)));
  CHECK_EQ_INT(drpc_tensor_get_i64(t, 6), 0);
  CHECK_EQ_INT(drpc_tensor_get_i64(t, -1), 0);
  drpc_tensor_decref(t);
}

static void test_get_conversions(void) {
  /* Every dtype reads as double and int64. */
  uint8_t u8[2] = {200, 7};
  drpc_tensor *t =
      drpc_tensor_from_data(DRPC_UINT8, 1, (int64_t[]){2}, u8, true);
  CHECK(drpc_tensor_get_f64(t, 0) == 200.0);
  CHECK_EQ_INT(drpc_tensor_get_i64(t, 1), 7);
  drpc_tensor_decref(t);
  bool b[2] = {true, false};
  t = drpc_tensor_from_data(DRPC_BOOL, 1, (int64_t[]){2}, b, true);
  CHECK_EQ_INT(drpc_tensor_get_i64(t, 0), 1);
  CHECK(drpc_tensor_get_f64(t, 1) == 0.0);
  drpc_tensor_decref(t);
  int32_t i32[1] = {-5};
  t = drpc_tensor_from_data(DRPC_INT32, 1, (int64_t[]){1}, i32, true);
  CHECK_EQ_INT(drpc_tensor_get_i64(t, 0), -5);
  drpc_tensor_decref(t);
  /* Floats truncate toward zero; NaN and huge values stay defined. */
  float f[4] = {2.75f, -2.75f, NAN, 1e30f};
  t = drpc_tensor_from_data(DRPC_FLOAT32, 1, (int64_t[]){4}, f, true);
  CHECK_EQ_INT(drpc_tensor_get_i64(t, 0), 2);
  CHECK_EQ_INT(drpc_tensor_get_i64(t, 1), -2);
  CHECK_EQ_INT(drpc_tensor_get_i64(t, 2), 0);
  CHECK_EQ_INT(drpc_tensor_get_i64(t, 3), INT64_MAX);
  CHECK(drpc_tensor_get_f64(t, 0) == 2.75);
  drpc_tensor_decref(t);
  int64_t big[1] = {INT64_MIN};
  t = drpc_tensor_from_data(DRPC_INT64, 0, NULL, big, true);
  CHECK_EQ_INT(drpc_tensor_get_i64(t, 0), INT64_MIN);
  drpc_tensor_decref(t);
}

static void test_equal(void) {
  drpc_tensor *a = make_2x3(), *b = make_2x3();
  CHECK(drpc_tensor_equal(a, b));
  CHECK(drpc_tensor_equal(a, a));
  ((double *)drpc_tensor_data(b))[5] = 6;
  CHECK(!drpc_tensor_equal(a, b));
  drpc_tensor_decref(b);
  /* Same values, different shape. */
  double v[6] = {0, 1, 2, 3, 4, 5};
  b = drpc_tensor_from_data(DRPC_FLOAT64, 2, (int64_t[]){3, 2}, v, true);
  CHECK(!drpc_tensor_equal(a, b));
  drpc_tensor_decref(b);
  b = drpc_tensor_from_data(DRPC_FLOAT64, 1, (int64_t[]){6}, v, true);
  CHECK(!drpc_tensor_equal(a, b));
  drpc_tensor_decref(b);
  /* Same values, different dtype. */
  int64_t iv[6] = {0, 1, 2, 3, 4, 5};
  b = drpc_tensor_from_data(DRPC_INT64, 2, (int64_t[]){2, 3}, iv, true);
  CHECK(!drpc_tensor_equal(a, b));
  drpc_tensor *b2 =
      drpc_tensor_from_data(DRPC_INT64, 2, (int64_t[]){2, 3}, iv, true);
  CHECK(drpc_tensor_equal(b, b2));
  drpc_tensor_decref(b2);
  drpc_tensor_decref(b);
  /* NaN never equals, not even itself. */
  float n[1] = {NAN};
  drpc_tensor *na =
      drpc_tensor_from_data(DRPC_FLOAT32, 1, (int64_t[]){1}, n, true);
  CHECK(!drpc_tensor_equal(na, na));
  drpc_tensor_decref(na);
  /* Empty tensors of the same shape are equal. */
  drpc_tensor *e1 = drpc_tensor_new(DRPC_FLOAT32, 2, (int64_t[]){0, 3});
  drpc_tensor *e2 = drpc_tensor_new(DRPC_FLOAT32, 2, (int64_t[]){0, 3});
  drpc_tensor *e3 = drpc_tensor_new(DRPC_FLOAT32, 2, (int64_t[]){3, 0});
  CHECK(drpc_tensor_equal(e1, e2));
  CHECK(!drpc_tensor_equal(e1, e3));
  drpc_tensor_decref(e1);
  drpc_tensor_decref(e2);
  drpc_tensor_decref(e3);
  /* 0.0 equals -0.0 as values. */
  double z1[1] = {0.0}, z2[1] = {-0.0};
  drpc_tensor *p = drpc_tensor_from_data(DRPC_FLOAT64, 0, NULL, z1, true);
  drpc_tensor *m = drpc_tensor_from_data(DRPC_FLOAT64, 0, NULL, z2, true);
  CHECK(drpc_tensor_equal(p, m));
  drpc_tensor_decref(p);
  drpc_tensor_decref(m);
  CHECK(!drpc_tensor_equal(a, NULL));
  CHECK(!drpc_tensor_equal(NULL, NULL));
  drpc_tensor_decref(a);
}

static void test_clone_non_cpu(void) {
  /* The core never copies device memory: that is gpu/'s job. */
  static double buf[6];
  drpc_device c0 = {DRPC_DEVICE_CUDA, 0};
  drpc_storage *s = drpc_storage_wrap(buf, sizeof buf, c0, NULL, NULL);
  drpc_tensor *t =
      drpc_tensor_from_storage(s, DRPC_FLOAT64, 2, (int64_t[]){2, 3}, 0);
  drpc_storage_decref(s);
  CHECK(drpc_tensor_clone(t) == NULL);
  /* A contiguous device tensor is simply shared. */
  drpc_tensor *c = drpc_tensor_contiguous(t);
  CHECK(c == t);
  drpc_tensor_decref(c);
  drpc_tensor *tt = transpose_view(t);
  CHECK(drpc_tensor_contiguous(tt) == NULL);
  drpc_tensor_decref(tt);
  drpc_tensor_decref(t);
}

int main(void) {
  RUN(test_dtype);
  RUN(test_device_parse);
  RUN(test_device_format);
  RUN(test_device_equal);
  RUN(test_storage_new);
  RUN(test_storage_refcount);
  RUN(test_tensor_new);
  RUN(test_tensor_new_rejects);
  RUN(test_numel_by_hand);
  RUN(test_from_storage);
  RUN(test_from_data);
  RUN(test_tensor_refcount);
  RUN(test_non_contiguous);
  RUN(test_contiguous_shares);
  RUN(test_get_out_of_range);
  RUN(test_get_conversions);
  RUN(test_equal);
  RUN(test_clone_non_cpu);
  return test_finish();
}
