/* Tensors: dtype, shape, strides, device, and reference-counted storage. */
#ifndef DRPC_TENSOR_H
#define DRPC_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DRPC_TENSOR_MAX_DIMS 8
/* Storage (and tensor data on the wire) is aligned to this many bytes. */
#define DRPC_TENSOR_ALIGN 64

typedef enum drpc_dtype {
  DRPC_FLOAT32 = 0,
  DRPC_FLOAT64 = 1,
  DRPC_INT64 = 2,
  DRPC_INT32 = 3,
  DRPC_UINT8 = 4,
  DRPC_BOOL = 5,
  DRPC_DTYPE_COUNT
} drpc_dtype;

/* Size in bytes of one element, 0 for an invalid dtype. */
size_t drpc_dtype_size(drpc_dtype dt);
/* "float32", "float64", ...; "invalid" for unknown values. */
const char *drpc_dtype_name(drpc_dtype dt);

typedef enum drpc_device_type {
  DRPC_DEVICE_CPU = 0,
  DRPC_DEVICE_CUDA = 1,
} drpc_device_type;

typedef struct drpc_device {
  int8_t type;  /* drpc_device_type */
  int8_t index; /* -1 for cpu */
} drpc_device;

#define DRPC_CPU ((drpc_device){DRPC_DEVICE_CPU, -1})

/* Parses "cpu", "cuda", "cuda:N" or "N" (a CUDA index). */
int drpc_device_parse(const char *s, drpc_device *out);
/* Writes "cpu" or "cuda:N" into buf; returns buf. */
char *drpc_device_format(drpc_device d, char *buf, size_t n);
bool drpc_device_equal(drpc_device a, drpc_device b);

/* Reference-counted bytes that back one or more tensors. The free function,
 * when set, is called with (free_ctx, data) once the count drops to zero. */
typedef struct drpc_storage {
  _Atomic int refcount;
  void *data;
  size_t nbytes;
  drpc_device device;
  void (*free_fn)(void *free_ctx, void *data);
  void *free_ctx;
} drpc_storage;

/* Allocates nbytes of CPU memory aligned to DRPC_TENSOR_ALIGN, zero-filled
 * when zero is true. Returns NULL on allocation failure. Count starts at 1. */
drpc_storage *drpc_storage_new(size_t nbytes, bool zero);
/* Wraps caller memory; free_fn (may be NULL) runs when the last ref goes. */
drpc_storage *drpc_storage_wrap(void *data, size_t nbytes, drpc_device dev,
                                void (*free_fn)(void *, void *),
                                void *free_ctx);
void drpc_storage_incref(drpc_storage *s);
void drpc_storage_decref(drpc_storage *s);

/* A view of a storage. Tensors are reference counted so that values, frames
 * in flight and user code can share one without copying. */
typedef struct drpc_tensor {
  _Atomic int refcount;
  drpc_dtype dtype;
  int ndim;
  int64_t shape[DRPC_TENSOR_MAX_DIMS];
  int64_t strides[DRPC_TENSOR_MAX_DIMS]; /* in elements */
  int64_t offset;                        /* in elements */
  drpc_storage *storage;
} drpc_tensor;

/* New contiguous CPU tensor; its data is zero-filled. shape may be NULL when
 * ndim is 0 (a scalar). Returns NULL on bad arguments or no memory. */
drpc_tensor *drpc_tensor_new(drpc_dtype dt, int ndim, const int64_t *shape);
/* Same without zero-filling (callers that overwrite every byte). */
drpc_tensor *drpc_tensor_empty(drpc_dtype dt, int ndim, const int64_t *shape);
/* Contiguous tensor over an existing storage (takes a new reference). */
drpc_tensor *drpc_tensor_from_storage(drpc_storage *s, drpc_dtype dt, int ndim,
                                      const int64_t *shape, int64_t offset);
/* Contiguous tensor over caller memory (copied when copy is true, else
 * borrowed until free_fn runs). */
drpc_tensor *drpc_tensor_from_data(drpc_dtype dt, int ndim,
                                   const int64_t *shape, const void *data,
                                   bool copy);

void drpc_tensor_incref(drpc_tensor *t);
void drpc_tensor_decref(drpc_tensor *t);

/* Number of elements; -1 when a dimension is negative or the product
 * overflows (possible only for a tensor filled in by hand). */
int64_t drpc_tensor_numel(const drpc_tensor *t);
/* numel times the element size; 0 when numel is -1 or the product does not
 * fit in a size_t. */
size_t drpc_tensor_nbytes(const drpc_tensor *t);
bool drpc_tensor_is_contiguous(const drpc_tensor *t);
/* Pointer to the first element (storage data + offset). */
void *drpc_tensor_data(const drpc_tensor *t);
/* Returns t with a new reference when it is contiguous, else a contiguous
 * copy. NULL on no memory, or when a copy is needed and t is not on the CPU
 * (device copies belong to gpu/). */
drpc_tensor *drpc_tensor_contiguous(drpc_tensor *t);
/* Deep copy into fresh contiguous CPU storage. NULL on no memory or when t
 * is not on the CPU. */
drpc_tensor *drpc_tensor_clone(const drpc_tensor *t);
/* Element i (row-major logical index, honouring strides) converted to
 * double / int64; NaN / 0 when i is out of range. */
double drpc_tensor_get_f64(const drpc_tensor *t, int64_t i);
int64_t drpc_tensor_get_i64(const drpc_tensor *t, int64_t i);
/* Same shape, dtype and element values (NaN never equals). */
bool drpc_tensor_equal(const drpc_tensor *a, const drpc_tensor *b);

#ifdef __cplusplus
}
#endif
#endif
