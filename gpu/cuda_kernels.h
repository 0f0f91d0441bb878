/* The CUDA kernels behind gpu/cuda.c: C launchers, compiled by nvcc in
 * gpu/kernels.cu.
 *
 * This header is read by both the C compiler and nvcc (as C++), so it uses
 * no drpc header: tensor.h holds _Atomic members that C++ does not accept.
 * Dtype and op codes are drpc_dtype's and drpc_devop's values; cuda.c
 * checks at compile time that they agree.
 *
 * Every launcher queues work on stream st of the calling thread's current
 * device (cuda.c sets it), returns cudaSuccess or the launch's error
 * (cudaErrorInvalidValue for arguments it cannot take), and never waits for
 * the kernel. All pointers are device memory; shapes and strides count
 * elements; arrays are read at call time and may be freed on return. */
#ifndef DRPC_CUDA_KERNELS_H
#define DRPC_CUDA_KERNELS_H

#include <cuda_runtime_api.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* DRPC_TENSOR_MAX_DIMS. */
#define DRPC_CK_MAX_DIMS 8

/* drpc_dtype. */
enum {
  DRPC_CK_FLOAT32 = 0,
  DRPC_CK_FLOAT64 = 1,
  DRPC_CK_INT64 = 2,
  DRPC_CK_INT32 = 3,
  DRPC_CK_UINT8 = 4,
  DRPC_CK_BOOL = 5,
  DRPC_CK_DTYPE_COUNT = 6,
};

/* drpc_devop. */
enum {
  DRPC_CK_ADD = 0,
  DRPC_CK_SUB = 1,
  DRPC_CK_MUL = 2,
  DRPC_CK_DIV = 3,
};

/* Bytes of scratch device memory drpc_ck_sum may use for a full reduction
 * (dst_numel == 1) of more than DRPC_CK_SUM_SERIAL_MAX elements; it must
 * stay valid until the kernels have run, which memory handed back on st
 * afterwards does. */
#define DRPC_CK_SUM_SCRATCH_BYTES 2048
/* Reductions of at most this many elements per output run one thread per
 * output, adding in core/ops.c's order (float64 sums match the CPU's
 * exactly); longer ones use deterministic tree reductions in a fixed
 * order that depends only on the shape. */
#define DRPC_CK_SUM_SERIAL_MAX 4096

/* One input of drpc_ck_binary (drpc_dev_operand, field for field). */
typedef struct drpc_ck_operand {
  const void *data; /* NULL: a number */
  int dtype;        /* float32, float64 or int64 */
  int64_t strides[DRPC_CK_MAX_DIMS];
  bool is_float;
  double f;
  int64_t i;
} drpc_ck_operand;

/* dst[0..n) = the element whose bytes are value[0..size of dt). The caller
 * converts the number (as a C cast does) so that the result matches the
 * host's conversion bit for bit. */
cudaError_t drpc_ck_fill(cudaStream_t st, void *dst, int dt, int64_t n,
                         const void *value);

/* dst (contiguous, ddt) = src (sdt) read through shape/strides, converted
 * element by element. Contiguous same-dtype copies become one
 * cudaMemcpyAsync. */
cudaError_t drpc_ck_strided_copy(cudaStream_t st, void *dst, int ddt,
                                 const void *src, int sdt, int ndim,
                                 const int64_t *shape, const int64_t *strides);

/* dst (contiguous, shape, dt in float32/float64/int64) = a op alpha*b. */
cudaError_t drpc_ck_binary(cudaStream_t st, int op, void *dst, int dt, int ndim,
                           const int64_t *shape, const drpc_ck_operand *a,
                           const drpc_ck_operand *b, double alpha_f,
                           int64_t alpha_i);

/* Zeroes dst[0..dst_numel) (ddt), then adds every element of src into the
 * element at sum(idx[d] * dst_strides[d]). scratch: NULL or
 * DRPC_CK_SUM_SCRATCH_BYTES of device memory (used only when dst_numel is
 * 1 and the reduction is large). */
cudaError_t drpc_ck_sum(cudaStream_t st, void *dst, int ddt, int64_t dst_numel,
                        const void *src, int sdt, int ndim,
                        const int64_t *shape, const int64_t *src_strides,
                        const int64_t *dst_strides, void *scratch);

/* dst (m x n) = a (m x k) @ b (k x n), contiguous, dt float32/float64/int64.
 */
cudaError_t drpc_ck_matmul(cudaStream_t st, void *dst, int dt, const void *a,
                           const void *b, int64_t m, int64_t k, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
