/* Tensors and their reference-counted, aligned storage. */
#include "drpc/tensor.h"

#include "drpc/error.h"
#include "tcache.h"

#include <assert.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- dtypes and devices ------------------------------------------------ */

size_t drpc_dtype_size(drpc_dtype dt) {
  switch (dt) {
  case DRPC_FLOAT32:
    return 4;
  case DRPC_FLOAT64:
    return 8;
  case DRPC_INT64:
    return 8;
  case DRPC_INT32:
    return 4;
  case DRPC_UINT8:
    return 1;
  case DRPC_BOOL:
    return 1;
  default:
    return 0;
  }
}

const char *drpc_dtype_name(drpc_dtype dt) {
  switch (dt) {
  case DRPC_FLOAT32:
    return "float32";
  case DRPC_FLOAT64:
    return "float64";
  case DRPC_INT64:
    return "int64";
  case DRPC_INT32:
    return "int32";
  case DRPC_UINT8:
    return "uint8";
  case DRPC_BOOL:
    return "bool";
  default:
    return "invalid";
  }
}

/* The largest CUDA index a drpc_device can hold (its index is an int8_t). */
#define DEVICE_MAX_INDEX 127

/* Parses a non-empty run of decimal digits that makes up all of s. Signs and
 * spaces are refused so that "-1", "+1" and " 1" never name a device. */
static int parse_index(const char *s, int *out) {
  if (*s == '\0') {
    return DRPC_EINVAL;
  }
  int v = 0;
  for (const char *p = s; *p; p++) {
    if (*p < '0' || *p > '9') {
      return DRPC_EINVAL;
    }
    v = v * 10 + (*p - '0');
    if (v > DEVICE_MAX_INDEX) {
      return DRPC_EINVAL;
    }
  }
  *out = v;
  return 0;
}

int drpc_device_parse(const char *s, drpc_device *out) {
  if (s == NULL || out == NULL) {
    return DRPC_EINVAL;
  }
  int index = 0;
  if (strcmp(s, "cpu") == 0) {
    *out = DRPC_CPU;
    return 0;
  }
  if (strcmp(s, "cuda") == 0) {
    index = 0;
  } else if (strncmp(s, "cuda:", 5) == 0) {
    if (parse_index(s + 5, &index) != 0) {
      return DRPC_EINVAL;
    }
  } else if (parse_index(s, &index) != 0) {
    return DRPC_EINVAL;
  }
  out->type = DRPC_DEVICE_CUDA;
  out->index = (int8_t)index;
  return 0;
}

char *drpc_device_format(drpc_device d, char *buf, size_t n) {
  if (buf == NULL || n == 0) {
    return buf;
  }
  if (d.type == DRPC_DEVICE_CPU) {
    snprintf(buf, n, "cpu");
  } else if (d.type == DRPC_DEVICE_CUDA) {
    snprintf(buf, n, "cuda:%d", (int)d.index);
  } else {
    snprintf(buf, n, "invalid");
  }
  return buf;
}

bool drpc_device_equal(drpc_device a, drpc_device b) {
  if (a.type != b.type) {
    return false;
  }
  /* A CPU has no index worth comparing; CUDA devices differ by index. */
  return a.type == DRPC_DEVICE_CPU || a.index == b.index;
}

/* ---- storage ----------------------------------------------------------- */

/* Frees memory that drpc_storage_new took from aligned_alloc. */
static void free_aligned(void *ctx, void *data) {
  (void)ctx;
  free(data);
}

/* A small cache of large blocks. Receiving a tensor allocates its storage;
 * for tens of megabytes a fresh allocation is a fresh mapping whose every
 * page faults on first touch, which costs as much as the copy from the
 * socket. Keeping a few freed blocks makes repeated transfers of similar
 * sizes reuse warm memory. Bounded in entries and bytes; guarded by a spin
 * flag because the critical sections are a few loads and stores. */
#define CACHE_MIN_BYTES (1u << 20)
#define CACHE_SLOTS 4
#define CACHE_MAX_BYTES (512ull << 20)

static atomic_flag cache_lock = ATOMIC_FLAG_INIT;
static struct {
  void *data;
  size_t nbytes;
  uint64_t stamp; /* insertion order, for eviction */
} cache[CACHE_SLOTS];
static size_t cache_bytes;
static uint64_t cache_clock;

static void cache_acquire(void) {
  while (atomic_flag_test_and_set_explicit(&cache_lock, memory_order_acquire))
    ;
}

static void cache_release(void) {
  atomic_flag_clear_explicit(&cache_lock, memory_order_release);
}

/* Takes a cached block of at least nbytes and at most twice that. */
static void *cache_take(size_t nbytes, size_t *got) {
  void *data = NULL;
  cache_acquire();
  int best = -1;
  for (int i = 0; i < CACHE_SLOTS; i++)
    if (cache[i].data && cache[i].nbytes >= nbytes &&
        cache[i].nbytes / 2 <= nbytes &&
        (best < 0 || cache[i].nbytes < cache[best].nbytes))
      best = i;
  if (best >= 0) {
    data = cache[best].data;
    *got = cache[best].nbytes;
    cache_bytes -= cache[best].nbytes;
    cache[best].data = NULL;
  }
  cache_release();
  return data;
}

/* The free function of large blocks: ctx carries the block's size. The
 * newest block always gets a place (the oldest ones make room), since the
 * next transfer is most likely the same size as the last. */
static void free_cached(void *ctx, void *data) {
  size_t nbytes = (size_t)(uintptr_t)ctx;
  void *evicted[CACHE_SLOTS];
  int nevicted = 0;
  if (nbytes > CACHE_MAX_BYTES) {
    free(data);
    return;
  }
  cache_acquire();
  for (;;) {
    int empty = -1, oldest = -1;
    for (int i = 0; i < CACHE_SLOTS; i++) {
      if (!cache[i].data)
        empty = empty < 0 ? i : empty;
      else if (oldest < 0 || cache[i].stamp < cache[oldest].stamp)
        oldest = i;
    }
    if (empty >= 0 && cache_bytes + nbytes <= CACHE_MAX_BYTES) {
      cache[empty].data = data;
      cache[empty].nbytes = nbytes;
      cache[empty].stamp = ++cache_clock;
      cache_bytes += nbytes;
      break;
    }
    evicted[nevicted++] = cache[oldest].data;
    cache_bytes -= cache[oldest].nbytes;
    cache[oldest].data = NULL;
  }
  cache_release();
  for (int i = 0; i < nevicted; i++)
    free(evicted[i]);
}

/* Storages up to this size carry their data in the header's block, at the
 * first DRPC_TENSOR_ALIGN-aligned address past the header. Blocks are whole
 * grains. */
#define INLINE_MAX_BYTES (64u << 10)
#define INLINE_DATA_OFFSET (sizeof(drpc_storage) + DRPC_TENSOR_ALIGN - 1)
#define POOL_GRAIN 1024u
#define POOL_CLASSES                                                           \
  ((INLINE_DATA_OFFSET + INLINE_MAX_BYTES + POOL_GRAIN - 1) / POOL_GRAIN)
#define POOL_DEPTH 8
#define POOL_MAX_BYTES (256u << 10)

/* A thread's freed inline blocks, a few per size class and at most
 * POOL_MAX_BYTES in all. Blocks of a few KiB are past malloc's per-thread
 * cache: each such request would first merge every small freed block
 * back into the heap, which made a tenth of a simulated cluster's time
 * (tensors of 4 KiB in every message). Any thread may free a block another
 * took; it joins the freeing thread's pool. Without a pool under
 * AddressSanitizer, which must see every block freed. */
#define POOL_ON DRPC_TCACHE_ON

typedef struct block_pool {
  void *blk[POOL_CLASSES][POOL_DEPTH];
  uint8_t n[POOL_CLASSES];
  size_t bytes;
} block_pool;

static _Thread_local block_pool *tl_pool;

static void pool_destroy(void *arg) {
  block_pool *p = arg;
  for (size_t c = 0; c < POOL_CLASSES; c++)
    while (p->n[c])
      free(p->blk[c][--p->n[c]]);
  free(p);
}

/* The block size of an inline storage of alloc_nbytes (a multiple of
 * DRPC_TENSOR_ALIGN, at most INLINE_MAX_BYTES). */
static size_t inline_block(size_t alloc_nbytes) {
  return (INLINE_DATA_OFFSET + alloc_nbytes + POOL_GRAIN - 1) &
         ~(size_t)(POOL_GRAIN - 1);
}

static void *block_take(size_t block) {
  block_pool *p = tl_pool;
  size_t c = block / POOL_GRAIN - 1;
  if (POOL_ON && p && p->n[c]) {
    p->bytes -= block;
    return p->blk[c][--p->n[c]];
  }
  return malloc(block);
}

static void block_put(void *b, size_t block) {
  block_pool *p = tl_pool;
  if (POOL_ON && !p)
    p = tl_pool =
        drpc_tcache_make(DRPC_TCACHE_STORAGE, sizeof *p, pool_destroy);
  size_t c = block / POOL_GRAIN - 1;
  if (!POOL_ON || !p || p->n[c] == POOL_DEPTH ||
      p->bytes + block > POOL_MAX_BYTES) {
    free(b);
    return;
  }
  p->blk[c][p->n[c]++] = b;
  p->bytes += block;
}

/* The free function of inline storages: the data goes with the header. */
static void free_inline(void *ctx, void *data) {
  (void)ctx;
  (void)data;
}

drpc_storage *drpc_storage_new(size_t nbytes, bool zero) {
  /* aligned_alloc wants a size that is a multiple of the alignment, and a
   * zero-byte request may return NULL, so every storage owns at least one
   * aligned block. */
  size_t alloc_nbytes = nbytes == 0 ? DRPC_TENSOR_ALIGN : nbytes;
  if (alloc_nbytes > SIZE_MAX - (DRPC_TENSOR_ALIGN - 1)) {
    return NULL;
  }
  alloc_nbytes =
      (alloc_nbytes + DRPC_TENSOR_ALIGN - 1) & ~(size_t)(DRPC_TENSOR_ALIGN - 1);
  if (alloc_nbytes <= INLINE_MAX_BYTES) {
    /* Small storage: header and data in one block, the data aligned inside
     * it (one allocation, and malloc's common path instead of the
     * split-and-return path of aligned_alloc). Freed with the header. */
    drpc_storage *s = block_take(inline_block(alloc_nbytes));
    if (s == NULL) {
      return NULL;
    }
    uintptr_t d = ((uintptr_t)(s + 1) + DRPC_TENSOR_ALIGN - 1) &
                  ~(uintptr_t)(DRPC_TENSOR_ALIGN - 1);
    if (zero) {
      memset((void *)d, 0, alloc_nbytes);
    }
    atomic_init(&s->refcount, 1);
    s->data = (void *)d;
    s->nbytes = nbytes;
    s->device = DRPC_CPU;
    s->free_fn = free_inline;
    s->free_ctx = (void *)(uintptr_t)inline_block(alloc_nbytes);
    return s;
  }
  drpc_storage *s = malloc(sizeof *s);
  if (s == NULL) {
    goto fail_struct;
  }
  void *data = NULL;
  void (*free_fn)(void *, void *) = free_aligned;
  void *free_ctx = NULL;
  if (alloc_nbytes >= CACHE_MIN_BYTES) {
    size_t got = 0;
    data = cache_take(alloc_nbytes, &got);
    if (data)
      alloc_nbytes = got;
    free_fn = free_cached;
  }
  if (data == NULL)
    data = aligned_alloc(DRPC_TENSOR_ALIGN, alloc_nbytes);
  if (data == NULL) {
    goto fail_data;
  }
  if (free_fn == free_cached)
    free_ctx = (void *)(uintptr_t)alloc_nbytes;
  if (zero) {
    memset(data, 0, alloc_nbytes);
  }
  atomic_init(&s->refcount, 1);
  s->data = data;
  s->nbytes = nbytes;
  s->device = DRPC_CPU;
  s->free_fn = free_fn;
  s->free_ctx = free_ctx;
  return s;

fail_data:
  free(s);
fail_struct:
  return NULL;
}

drpc_storage *drpc_storage_wrap(void *data, size_t nbytes, drpc_device dev,
                                void (*free_fn)(void *, void *),
                                void *free_ctx) {
  if (data == NULL && nbytes > 0) {
    return NULL;
  }
  drpc_storage *s = malloc(sizeof *s);
  if (s == NULL) {
    return NULL;
  }
  atomic_init(&s->refcount, 1);
  s->data = data;
  s->nbytes = nbytes;
  s->device = dev;
  s->free_fn = free_fn;
  s->free_ctx = free_ctx;
  return s;
}

void drpc_storage_incref(drpc_storage *s) {
  if (s == NULL) {
    return;
  }
  /* Taking a reference needs no ordering: the caller already holds one. */
  int before = atomic_fetch_add_explicit(&s->refcount, 1, memory_order_relaxed);
  assert(before > 0);
  (void)before;
}

void drpc_storage_decref(drpc_storage *s) {
  if (s == NULL) {
    return;
  }
  /* Release publishes this holder's writes; the acquire half lets the last
   * holder see every other holder's writes before the memory goes. */
  int before = atomic_fetch_sub_explicit(&s->refcount, 1, memory_order_acq_rel);
  assert(before > 0);
  if (before != 1) {
    return;
  }
  if (s->free_fn == free_inline) {
    block_put(s, (size_t)(uintptr_t)s->free_ctx);
    return;
  }
  if (s->free_fn != NULL) {
    s->free_fn(s->free_ctx, s->data);
  }
  free(s);
}

/* ---- shapes ------------------------------------------------------------ */

/* Checks a dtype and shape and computes the element count. Strides of a
 * contiguous tensor are products of max(dim, 1), so that product (times the
 * element size) must fit in int64 even when a zero dimension makes the
 * tensor empty. Returns false for bad input. */
static bool check_shape(drpc_dtype dt, int ndim, const int64_t *shape,
                        int64_t *numel_out) {
  size_t elem_size = drpc_dtype_size(dt);
  if (elem_size == 0 || ndim < 0 || ndim > DRPC_TENSOR_MAX_DIMS) {
    return false;
  }
  if (ndim > 0 && shape == NULL) {
    return false;
  }
  int64_t span = 1;
  bool empty = false;
  for (int d = 0; d < ndim; d++) {
    int64_t n = shape[d];
    if (n < 0) {
      return false;
    }
    if (n == 0) {
      empty = true;
      continue;
    }
    if (span > INT64_MAX / n) {
      return false;
    }
    span *= n;
  }
  if (span > INT64_MAX / (int64_t)elem_size) {
    return false;
  }
  *numel_out = empty ? 0 : span;
  return true;
}

/* Fills row-major strides for shape; dimensions of size 0 count as 1 so the
 * strides stay meaningful for empty tensors. */
static void contiguous_strides(int ndim, const int64_t *shape,
                               int64_t *strides) {
  int64_t stride = 1;
  for (int d = ndim - 1; d >= 0; d--) {
    strides[d] = stride;
    stride *= shape[d] > 0 ? shape[d] : 1;
  }
}

/* Builds the tensor struct around a storage, taking over the caller's
 * reference to it. */
static drpc_tensor *tensor_wrap(drpc_storage *s, drpc_dtype dt, int ndim,
                                const int64_t *shape, int64_t offset) {
  drpc_tensor *t = malloc(sizeof *t);
  if (t == NULL) {
    return NULL;
  }
  memset(t, 0, sizeof *t);
  atomic_init(&t->refcount, 1);
  t->dtype = dt;
  t->ndim = ndim;
  for (int d = 0; d < ndim; d++) {
    t->shape[d] = shape[d];
  }
  contiguous_strides(ndim, t->shape, t->strides);
  t->offset = offset;
  t->storage = s;
  return t;
}

static drpc_tensor *tensor_alloc(drpc_dtype dt, int ndim, const int64_t *shape,
                                 bool zero) {
  int64_t numel;
  if (!check_shape(dt, ndim, shape, &numel)) {
    return NULL;
  }
  drpc_storage *s = drpc_storage_new((size_t)numel * drpc_dtype_size(dt), zero);
  if (s == NULL) {
    goto fail_storage;
  }
  drpc_tensor *t = tensor_wrap(s, dt, ndim, shape, 0);
  if (t == NULL) {
    goto fail_tensor;
  }
  return t;

fail_tensor:
  drpc_storage_decref(s);
fail_storage:
  return NULL;
}

drpc_tensor *drpc_tensor_new(drpc_dtype dt, int ndim, const int64_t *shape) {
  return tensor_alloc(dt, ndim, shape, true);
}

drpc_tensor *drpc_tensor_empty(drpc_dtype dt, int ndim, const int64_t *shape) {
  return tensor_alloc(dt, ndim, shape, false);
}

drpc_tensor *drpc_tensor_from_storage(drpc_storage *s, drpc_dtype dt, int ndim,
                                      const int64_t *shape, int64_t offset) {
  int64_t numel;
  if (s == NULL || offset < 0 || !check_shape(dt, ndim, shape, &numel)) {
    return NULL;
  }
  /* The view must lie inside the storage; the division keeps the check
   * itself from overflowing. */
  int64_t elem_size = (int64_t)drpc_dtype_size(dt);
  int64_t capacity = (int64_t)(s->nbytes / (size_t)elem_size);
  if (s->nbytes / (size_t)elem_size > (size_t)INT64_MAX || offset > capacity ||
      numel > capacity - offset) {
    return NULL;
  }
  drpc_tensor *t = tensor_wrap(s, dt, ndim, shape, offset);
  if (t == NULL) {
    return NULL;
  }
  drpc_storage_incref(s);
  return t;
}

drpc_tensor *drpc_tensor_from_data(drpc_dtype dt, int ndim,
                                   const int64_t *shape, const void *data,
                                   bool copy) {
  int64_t numel;
  if (!check_shape(dt, ndim, shape, &numel)) {
    return NULL;
  }
  size_t nbytes = (size_t)numel * drpc_dtype_size(dt);
  if (data == NULL && nbytes > 0) {
    return NULL;
  }
  if (copy) {
    drpc_tensor *t = drpc_tensor_empty(dt, ndim, shape);
    if (t != NULL && nbytes > 0) {
      memcpy(t->storage->data, data, nbytes);
    }
    return t;
  }
  /* Borrowed memory: the storage has no free function, so the caller keeps
   * ownership and must outlive every reference. */
  drpc_storage *s =
      drpc_storage_wrap((void *)data, nbytes, DRPC_CPU, NULL, NULL);
  if (s == NULL) {
    return NULL;
  }
  drpc_tensor *t = tensor_wrap(s, dt, ndim, shape, 0);
  if (t == NULL) {
    drpc_storage_decref(s);
  }
  return t;
}

void drpc_tensor_incref(drpc_tensor *t) {
  if (t == NULL) {
    return;
  }
  int before = atomic_fetch_add_explicit(&t->refcount, 1, memory_order_relaxed);
  assert(before > 0);
  (void)before;
}

void drpc_tensor_decref(drpc_tensor *t) {
  if (t == NULL) {
    return;
  }
  int before = atomic_fetch_sub_explicit(&t->refcount, 1, memory_order_acq_rel);
  assert(before > 0);
  if (before != 1) {
    return;
  }
  drpc_storage_decref(t->storage);
  free(t);
}

/* ---- queries ----------------------------------------------------------- */

int64_t drpc_tensor_numel(const drpc_tensor *t) {
  if (t == NULL || t->ndim < 0 || t->ndim > DRPC_TENSOR_MAX_DIMS) {
    return -1;
  }
  int64_t numel = 1;
  bool empty = false;
  for (int d = 0; d < t->ndim; d++) {
    int64_t n = t->shape[d];
    if (n < 0) {
      return -1;
    }
    if (n == 0) {
      empty = true;
    } else if (numel > INT64_MAX / n) {
      return -1;
    } else {
      numel *= n;
    }
  }
  return empty ? 0 : numel;
}

size_t drpc_tensor_nbytes(const drpc_tensor *t) {
  int64_t numel = drpc_tensor_numel(t);
  size_t elem_size = t ? drpc_dtype_size(t->dtype) : 0;
  if (numel < 0 || elem_size == 0 ||
      (uint64_t)numel > (uint64_t)(SIZE_MAX / elem_size)) {
    return 0;
  }
  return (size_t)numel * elem_size;
}

bool drpc_tensor_is_contiguous(const drpc_tensor *t) {
  if (drpc_tensor_numel(t) == 0) {
    return true;
  }
  /* As in PyTorch, the stride of a size-1 dimension never matters. */
  int64_t expected = 1;
  for (int d = t->ndim - 1; d >= 0; d--) {
    if (t->shape[d] == 1) {
      continue;
    }
    if (t->strides[d] != expected) {
      return false;
    }
    expected *= t->shape[d];
  }
  return true;
}

void *drpc_tensor_data(const drpc_tensor *t) {
  if (t == NULL || t->storage == NULL || t->storage->data == NULL) {
    return NULL;
  }
  return (char *)t->storage->data +
         t->offset * (int64_t)drpc_dtype_size(t->dtype);
}

/* Storage offset (in elements) of the element at row-major index i. */
static int64_t element_offset(const drpc_tensor *t, int64_t i) {
  int64_t off = t->offset;
  for (int d = t->ndim - 1; d >= 0; d--) {
    int64_t n = t->shape[d];
    off += (i % n) * t->strides[d];
    i /= n;
  }
  return off;
}

static const char *element_ptr(const drpc_tensor *t, int64_t i) {
  return (const char *)t->storage->data +
         element_offset(t, i) * (int64_t)drpc_dtype_size(t->dtype);
}

/* memcpy keeps loads from unaligned or type-punned memory well defined. */
static double load_f64(drpc_dtype dt, const char *p) {
  switch (dt) {
  case DRPC_FLOAT32: {
    float v;
    memcpy(&v, p, sizeof v);
    return v;
  }
  case DRPC_FLOAT64: {
    double v;
    memcpy(&v, p, sizeof v);
    return v;
  }
  case DRPC_INT64: {
    int64_t v;
    memcpy(&v, p, sizeof v);
    return (double)v;
  }
  case DRPC_INT32: {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return v;
  }
  case DRPC_UINT8:
    return (uint8_t)*p;
  case DRPC_BOOL:
    return *p != 0;
  default:
    return NAN;
  }
}

/* Floats convert like a C cast, except that NaN and out-of-range values,
 * which a cast would make undefined, become 0 and the nearest limit. */
static int64_t load_i64(drpc_dtype dt, const char *p) {
  switch (dt) {
  case DRPC_INT64: {
    int64_t v;
    memcpy(&v, p, sizeof v);
    return v;
  }
  case DRPC_INT32: {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return v;
  }
  case DRPC_UINT8:
    return (uint8_t)*p;
  case DRPC_BOOL:
    return *p != 0;
  case DRPC_FLOAT32:
  case DRPC_FLOAT64: {
    double v = load_f64(dt, p);
    if (isnan(v)) {
      return 0;
    }
    if (v >= 9223372036854775808.0) {
      return INT64_MAX;
    }
    if (v < -9223372036854775808.0) {
      return INT64_MIN;
    }
    return (int64_t)v;
  }
  default:
    return 0;
  }
}

double drpc_tensor_get_f64(const drpc_tensor *t, int64_t i) {
  int64_t numel = drpc_tensor_numel(t);
  if (i < 0 || i >= numel || drpc_tensor_data(t) == NULL) {
    return NAN;
  }
  return load_f64(t->dtype, element_ptr(t, i));
}

int64_t drpc_tensor_get_i64(const drpc_tensor *t, int64_t i) {
  int64_t numel = drpc_tensor_numel(t);
  if (i < 0 || i >= numel || drpc_tensor_data(t) == NULL) {
    return 0;
  }
  return load_i64(t->dtype, element_ptr(t, i));
}

static bool is_float(drpc_dtype dt) {
  return dt == DRPC_FLOAT32 || dt == DRPC_FLOAT64;
}

bool drpc_tensor_equal(const drpc_tensor *a, const drpc_tensor *b) {
  if (a == NULL || b == NULL) {
    return false;
  }
  if (a->dtype != b->dtype || a->ndim != b->ndim) {
    return false;
  }
  for (int d = 0; d < a->ndim; d++) {
    if (a->shape[d] != b->shape[d]) {
      return false;
    }
  }
  int64_t numel = drpc_tensor_numel(a);
  if (numel < 0) {
    return false;
  }
  if (numel == 0) {
    return true;
  }
  if (drpc_tensor_data(a) == NULL || drpc_tensor_data(b) == NULL) {
    return false;
  }
  bool floating = is_float(a->dtype);
  for (int64_t i = 0; i < numel; i++) {
    const char *pa = element_ptr(a, i), *pb = element_ptr(b, i);
    if (floating ? !(load_f64(a->dtype, pa) == load_f64(b->dtype, pb))
                 : load_i64(a->dtype, pa) != load_i64(b->dtype, pb)) {
      return false;
    }
  }
  return true;
}

/* ---- copies ------------------------------------------------------------ */

/* Copies the elements of src, in row-major order, into dst (contiguous).
 * An odometer over the outer dimensions avoids a division per element; the
 * innermost dimension is a strided run copied with a fixed element size. */
static void copy_strided(const drpc_tensor *src, char *dst) {
  size_t elem_size = drpc_dtype_size(src->dtype);
  int64_t numel = drpc_tensor_numel(src);
  const char *base = src->storage->data;
  if (src->ndim == 0) {
    memcpy(dst, base + src->offset * (int64_t)elem_size, elem_size);
    return;
  }
  int last = src->ndim - 1;
  int64_t inner = src->shape[last];
  int64_t inner_stride_nbytes = src->strides[last] * (int64_t)elem_size;
  int64_t idx[DRPC_TENSOR_MAX_DIMS] = {0};
  int64_t off = src->offset;
  for (int64_t done = 0; done < numel; done += inner) {
    const char *p = base + off * (int64_t)elem_size;
    if (inner_stride_nbytes == (int64_t)elem_size) {
      memcpy(dst, p, (size_t)inner * elem_size);
      dst += (size_t)inner * elem_size;
    } else {
      for (int64_t j = 0; j < inner; j++) {
        memcpy(dst, p, elem_size);
        dst += elem_size;
        p += inner_stride_nbytes;
      }
    }
    /* Advance the odometer over dimensions 0..last-1. */
    for (int d = last - 1; d >= 0; d--) {
      off += src->strides[d];
      if (++idx[d] < src->shape[d]) {
        break;
      }
      off -= src->strides[d] * src->shape[d];
      idx[d] = 0;
    }
  }
}

drpc_tensor *drpc_tensor_clone(const drpc_tensor *t) {
  if (t == NULL ||
      (t->storage != NULL && t->storage->device.type != DRPC_DEVICE_CPU)) {
    return NULL;
  }
  drpc_tensor *c = drpc_tensor_empty(t->dtype, t->ndim, t->shape);
  if (c == NULL) {
    return NULL;
  }
  if (drpc_tensor_numel(t) > 0 && drpc_tensor_data(t) != NULL) {
    copy_strided(t, c->storage->data);
  }
  return c;
}

drpc_tensor *drpc_tensor_contiguous(drpc_tensor *t) {
  if (t == NULL) {
    return NULL;
  }
  if (drpc_tensor_is_contiguous(t)) {
    drpc_tensor_incref(t);
    return t;
  }
  return drpc_tensor_clone(t);
}
