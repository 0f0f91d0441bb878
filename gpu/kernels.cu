/* CUDA kernels for the cuda backend (fill, strided copy, elementwise binary
 * ops, sum, matmul) with the C launchers declared in cuda_kernels.h.
 *
 * Results follow core/ops.c bit for bit where the order of operations
 * allows: float32 elementwise arithmetic is done in double and rounded
 * once; every floating operation uses an explicitly rounded intrinsic
 * (__dadd_rn, __fmul_rn, ...) so that nvcc cannot contract a multiply and
 * an add into an FMA, which the host code never does; int64 arithmetic
 * wraps through uint64. Conversions between dtypes are C casts, with two
 * notes: floating to uint8/int32 goes through int64 (what x86 hosts do for
 * values in range of int64), and floating values outside the destination's
 * range (undefined in C) saturate here as the hardware does. */
#include "cuda_kernels.h"

#include <cuda_runtime.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

namespace {

template <typename T>
constexpr bool is_floating_v = std::is_floating_point_v<T>;

constexpr int kThreads = 256;
/* Grids are capped here and kernels loop (grid-stride) over the rest. */
constexpr int64_t kMaxBlocks = 65535;
constexpr int64_t kSumSerialMax = DRPC_CK_SUM_SERIAL_MAX;
/* Blocks of the first pass of a full reduction: one partial each. */
constexpr int kSumParts = DRPC_CK_SUM_SCRATCH_BYTES / 8;
static_assert(kSumParts <= kThreads, "the final pass reads one part/thread");
constexpr int kTile = 16;

int grid_for(int64_t n, int64_t per_block) {
  int64_t b = (n + per_block - 1) / per_block;
  return (int)(b < 1 ? 1 : b > kMaxBlocks ? kMaxBlocks : b);
}

/* ---- dtypes ------------------------------------------------------------- */

template <int DT> struct Dt;
template <> struct Dt<DRPC_CK_FLOAT32> { using T = float; };
template <> struct Dt<DRPC_CK_FLOAT64> { using T = double; };
template <> struct Dt<DRPC_CK_INT64> { using T = long long; };
template <> struct Dt<DRPC_CK_INT32> { using T = int; };
template <> struct Dt<DRPC_CK_UINT8> { using T = unsigned char; };
template <> struct Dt<DRPC_CK_BOOL> { using T = unsigned char; };

__host__ __device__ constexpr bool is_floating(int dt) {
  return dt == DRPC_CK_FLOAT32 || dt == DRPC_CK_FLOAT64;
}

size_t dtype_size(int dt) {
  switch (dt) {
  case DRPC_CK_FLOAT32:
  case DRPC_CK_INT32:
    return 4;
  case DRPC_CK_FLOAT64:
  case DRPC_CK_INT64:
    return 8;
  case DRPC_CK_UINT8:
  case DRPC_CK_BOOL:
    return 1;
  default:
    return 0;
  }
}

/* One element of dtype SDT converted to dtype DDT as a C cast does; bool
 * destinations get 0 or 1. */
template <int DDT, int SDT>
__device__ __forceinline__ typename Dt<DDT>::T convert(typename Dt<SDT>::T v) {
  using D = typename Dt<DDT>::T;
  if constexpr (DDT == DRPC_CK_BOOL) {
    return v != 0 ? 1 : 0;
  } else if constexpr ((DDT == DRPC_CK_UINT8 || DDT == DRPC_CK_INT32) &&
                       is_floating(SDT)) {
    return (D)(long long)v;
  } else {
    return (D)v;
  }
}

/* ---- layouts ------------------------------------------------------------ */

/* A shape with up to two stride arrays (elements), passed to kernels by
 * value. */
struct Layout {
  int ndim;
  int64_t shape[DRPC_CK_MAX_DIMS];
  int64_t strides[2][DRPC_CK_MAX_DIMS];
};

/* Drops dimensions of size 1 and merges neighbours that every stride array
 * walks as one (outer stride == inner stride * inner size). The row-major
 * order of the elements, and so each one's linear index, is unchanged. */
Layout collapse(int ndim, const int64_t *shape, const int64_t *s0,
                const int64_t *s1) {
  Layout L = {};
  const int64_t *in[2] = {s0, s1};
  for (int d = 0; d < ndim; d++) {
    if (shape[d] == 1)
      continue;
    bool merge = L.ndim > 0;
    for (int k = 0; k < 2 && merge; k++) {
      int64_t inner = in[k] ? in[k][d] : 0;
      merge = L.strides[k][L.ndim - 1] == inner * shape[d];
    }
    if (merge) {
      L.shape[L.ndim - 1] *= shape[d];
      for (int k = 0; k < 2; k++)
        L.strides[k][L.ndim - 1] = in[k] ? in[k][d] : 0;
    } else {
      L.shape[L.ndim] = shape[d];
      for (int k = 0; k < 2; k++)
        L.strides[k][L.ndim] = in[k] ? in[k][d] : 0;
      L.ndim++;
    }
  }
  return L;
}

/* Offsets (through both stride arrays) of the element with linear index i
 * in row-major order. */
__device__ __forceinline__ void offsets(const Layout &L, int64_t i, int64_t *o0,
                                        int64_t *o1) {
  int64_t a = 0, b = 0;
  for (int d = L.ndim - 1; d > 0; d--) {
    int64_t q = i / L.shape[d];
    int64_t r = i - q * L.shape[d];
    a += r * L.strides[0][d];
    b += r * L.strides[1][d];
    i = q;
  }
  if (L.ndim > 0) {
    a += i * L.strides[0][0];
    b += i * L.strides[1][0];
  }
  *o0 = a;
  *o1 = b;
}

bool numel_of(int ndim, const int64_t *shape, int64_t *out) {
  int64_t n = 1;
  for (int d = 0; d < ndim; d++) {
    if (shape[d] < 0)
      return false;
    if (shape[d] == 0) {
      n = 0;
      continue;
    }
    if (n > INT64_MAX / shape[d])
      return false;
    n *= shape[d];
  }
  *out = n;
  return true;
}

/* Clears an error left by an earlier call (a non-sticky one such as an out
 * of memory cudaMalloc) so that the check after a launch reports that
 * launch. Sticky errors cannot be cleared and are reported again. */
void clear_error() {
  (void)cudaGetLastError();
}

/* ---- fill --------------------------------------------------------------- */

template <typename T> __global__ void fill_kernel(T *dst, T value, int64_t n) {
  int64_t step = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += step)
    dst[i] = value;
}

template <typename T>
cudaError_t launch_fill(cudaStream_t st, void *dst, const void *value,
                        int64_t n) {
  T v;
  memcpy(&v, value, sizeof v);
  clear_error();
  fill_kernel<T><<<grid_for(n, kThreads), kThreads, 0, st>>>((T *)dst, v, n);
  return cudaGetLastError();
}

/* ---- strided copy ------------------------------------------------------- */

template <int DDT, int SDT>
__global__ void copy_kernel(typename Dt<DDT>::T *dst,
                            const typename Dt<SDT>::T *src, Layout L,
                            int64_t n) {
  int64_t step = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += step) {
    int64_t off, unused;
    offsets(L, i, &off, &unused);
    dst[i] = convert<DDT, SDT>(src[off]);
  }
}

template <int DDT, int SDT>
cudaError_t launch_copy(cudaStream_t st, void *dst, const void *src,
                        const Layout &L, int64_t n) {
  clear_error();
  copy_kernel<DDT, SDT><<<grid_for(n, kThreads), kThreads, 0, st>>>(
      (typename Dt<DDT>::T *)dst, (const typename Dt<SDT>::T *)src, L, n);
  return cudaGetLastError();
}

template <int DDT>
cudaError_t copy_from(int sdt, cudaStream_t st, void *dst, const void *src,
                      const Layout &L, int64_t n) {
  switch (sdt) {
  case DRPC_CK_FLOAT32:
    return launch_copy<DDT, DRPC_CK_FLOAT32>(st, dst, src, L, n);
  case DRPC_CK_FLOAT64:
    return launch_copy<DDT, DRPC_CK_FLOAT64>(st, dst, src, L, n);
  case DRPC_CK_INT64:
    return launch_copy<DDT, DRPC_CK_INT64>(st, dst, src, L, n);
  case DRPC_CK_INT32:
    return launch_copy<DDT, DRPC_CK_INT32>(st, dst, src, L, n);
  case DRPC_CK_UINT8:
    return launch_copy<DDT, DRPC_CK_UINT8>(st, dst, src, L, n);
  case DRPC_CK_BOOL:
    return launch_copy<DDT, DRPC_CK_BOOL>(st, dst, src, L, n);
  default:
    return cudaErrorInvalidValue;
  }
}

/* ---- binary ------------------------------------------------------------- */

struct Operand {
  const void *data;
  int dtype;
  bool is_float;
  double f;
  long long i;
};

struct BinArgs {
  Layout L; /* strides[0]: a's, strides[1]: b's */
  Operand a, b;
  double alpha_f;
  long long alpha_i;
};

/* An operand's element (or number) in the compute type T, converted as
 * core/ops.c's convert_run and fill_run do. */
template <typename T>
__device__ __forceinline__ T load_operand(const Operand &o, int64_t off) {
  if (o.data == nullptr) {
    if constexpr (sizeof(T) == 4)
      return o.is_float ? (float)o.f : (float)o.i;
    else if constexpr (is_floating_v<T>)
      return o.is_float ? o.f : (double)o.i;
    else
      return o.i;
  }
  switch (o.dtype) {
  case DRPC_CK_FLOAT32:
    return (T)((const float *)o.data)[off];
  case DRPC_CK_FLOAT64:
    return (T)((const double *)o.data)[off];
  default:
    return (T)((const long long *)o.data)[off];
  }
}

template <int OP>
__device__ __forceinline__ double apply_f(double x, double y, double alpha) {
  if constexpr (OP == DRPC_CK_ADD)
    return __dadd_rn(x, __dmul_rn(alpha, y));
  else if constexpr (OP == DRPC_CK_SUB)
    return __dsub_rn(x, __dmul_rn(alpha, y));
  else if constexpr (OP == DRPC_CK_MUL)
    return __dmul_rn(x, y);
  else
    return __ddiv_rn(x, y);
}

template <int OP>
__device__ __forceinline__ long long apply_i(long long a, long long b,
                                             long long alpha) {
  unsigned long long x = (unsigned long long)a, y = (unsigned long long)b;
  unsigned long long al = (unsigned long long)alpha;
  if constexpr (OP == DRPC_CK_ADD)
    return (long long)(x + al * y);
  else if constexpr (OP == DRPC_CK_SUB)
    return (long long)(x - al * y);
  else
    return (long long)(x * y);
}

template <typename T, int OP>
__global__ void binary_kernel(T *dst, BinArgs A, int64_t n) {
  int64_t step = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += step) {
    int64_t oa, ob;
    offsets(A.L, i, &oa, &ob);
    T x = load_operand<T>(A.a, oa), y = load_operand<T>(A.b, ob);
    if constexpr (sizeof(T) == 4)
      dst[i] = __double2float_rn(apply_f<OP>(x, y, A.alpha_f));
    else if constexpr (is_floating_v<T>)
      dst[i] = apply_f<OP>(x, y, A.alpha_f);
    else
      dst[i] = apply_i<OP>(x, y, A.alpha_i);
  }
}

template <typename T, int OP>
cudaError_t launch_binary(cudaStream_t st, void *dst, const BinArgs &A,
                          int64_t n) {
  clear_error();
  binary_kernel<T, OP>
      <<<grid_for(n, kThreads), kThreads, 0, st>>>((T *)dst, A, n);
  return cudaGetLastError();
}

template <typename T>
cudaError_t binary_op(int op, cudaStream_t st, void *dst, const BinArgs &A,
                      int64_t n) {
  switch (op) {
  case DRPC_CK_ADD:
    return launch_binary<T, DRPC_CK_ADD>(st, dst, A, n);
  case DRPC_CK_SUB:
    return launch_binary<T, DRPC_CK_SUB>(st, dst, A, n);
  case DRPC_CK_MUL:
    return launch_binary<T, DRPC_CK_MUL>(st, dst, A, n);
  case DRPC_CK_DIV:
    if constexpr (is_floating_v<T>)
      return launch_binary<T, DRPC_CK_DIV>(st, dst, A, n);
    else
      return cudaErrorInvalidValue; /* division has a floating result */
  default:
    return cudaErrorInvalidValue;
  }
}

/* ---- sum ---------------------------------------------------------------- */

/* Kept dimensions index the outputs, reduced ones (dst stride 0) the
 * elements added into each. */
struct SumArgs {
  const void *src;
  int sdt;
  void *dst;
  int ddt;
  Layout kept;    /* strides[0]: src, strides[1]: dst */
  Layout reduced; /* strides[0]: src */
  int64_t K;      /* outputs written */
  int64_t R;      /* elements per output */
};

/* Element off of src in the accumulator type: double for floating
 * destinations, int64 wrapping through uint64 otherwise. */
template <typename Acc>
__device__ __forceinline__ Acc load_acc(const SumArgs &A, int64_t off) {
  if constexpr (is_floating_v<Acc>) {
    switch (A.sdt) {
    case DRPC_CK_FLOAT32:
      return (double)((const float *)A.src)[off];
    case DRPC_CK_FLOAT64:
      return ((const double *)A.src)[off];
    case DRPC_CK_INT64:
      return (double)((const long long *)A.src)[off];
    case DRPC_CK_INT32:
      return (double)((const int *)A.src)[off];
    default: /* uint8, bool */
      return (double)((const unsigned char *)A.src)[off];
    }
  } else {
    switch (A.sdt) {
    case DRPC_CK_FLOAT32:
      return (unsigned long long)(long long)((const float *)A.src)[off];
    case DRPC_CK_FLOAT64:
      return (unsigned long long)(long long)((const double *)A.src)[off];
    case DRPC_CK_INT64:
      return (unsigned long long)((const long long *)A.src)[off];
    case DRPC_CK_INT32:
      return (unsigned long long)(long long)((const int *)A.src)[off];
    default: /* uint8, bool */
      return (unsigned long long)((const unsigned char *)A.src)[off];
    }
  }
}

template <typename Acc> __device__ __forceinline__ Acc add_acc(Acc x, Acc y) {
  if constexpr (is_floating_v<Acc>)
    return __dadd_rn(x, y);
  else
    return x + y;
}

template <typename Acc>
__device__ __forceinline__ void store_acc(const SumArgs &A, int64_t off,
                                          Acc v) {
  if constexpr (is_floating_v<Acc>) {
    if (A.ddt == DRPC_CK_FLOAT32)
      ((float *)A.dst)[off] = __double2float_rn(v);
    else
      ((double *)A.dst)[off] = v;
  } else {
    switch (A.ddt) {
    case DRPC_CK_INT64:
      ((long long *)A.dst)[off] = (long long)v;
      break;
    case DRPC_CK_INT32:
      ((int *)A.dst)[off] = (int)(long long)v;
      break;
    case DRPC_CK_UINT8:
      ((unsigned char *)A.dst)[off] = (unsigned char)v;
      break;
    default: /* bool */
      ((unsigned char *)A.dst)[off] = v != 0 ? 1 : 0;
      break;
    }
  }
}

/* Adds up shared[0..kThreads) in a fixed tree order; every thread of the
 * block must call it. Returns the total in thread 0. */
template <typename Acc> __device__ Acc block_total(Acc *shared, Acc mine) {
  shared[threadIdx.x] = mine;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if ((int)threadIdx.x < w)
      shared[threadIdx.x] =
          add_acc(shared[threadIdx.x], shared[threadIdx.x + w]);
    __syncthreads();
  }
  Acc total = shared[0];
  __syncthreads(); /* shared may be reused at once */
  return total;
}

/* One thread per output, adding its elements in row-major order. */
template <typename Acc> __global__ void sum_serial_kernel(SumArgs A) {
  int64_t step = (int64_t)gridDim.x * blockDim.x;
  for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < A.K;
       k += step) {
    int64_t base, doff;
    offsets(A.kept, k, &base, &doff);
    const Layout &R = A.reduced;
    int64_t idx[DRPC_CK_MAX_DIMS] = {0};
    int64_t off = base;
    Acc acc = 0;
    for (int64_t r = 0; r < A.R; r++) {
      acc = add_acc(acc, load_acc<Acc>(A, off));
      for (int d = R.ndim - 1; d >= 0; d--) {
        off += R.strides[0][d];
        if (++idx[d] < R.shape[d])
          break;
        off -= R.strides[0][d] * R.shape[d];
        idx[d] = 0;
      }
    }
    store_acc(A, doff, acc);
  }
}

/* One block per output: each thread adds a strided share of the elements,
 * then the block adds the shares in a fixed tree order. */
template <typename Acc> __global__ void sum_block_kernel(SumArgs A) {
  __shared__ Acc shared[kThreads];
  for (int64_t k = blockIdx.x; k < A.K; k += gridDim.x) {
    int64_t base, doff;
    offsets(A.kept, k, &base, &doff);
    Acc acc = 0;
    for (int64_t r = threadIdx.x; r < A.R; r += kThreads) {
      int64_t off, unused;
      offsets(A.reduced, r, &off, &unused);
      acc = add_acc(acc, load_acc<Acc>(A, base + off));
    }
    Acc total = block_total(shared, acc);
    if (threadIdx.x == 0)
      store_acc(A, doff, total);
  }
}

/* A full reduction (one output), first pass: kSumParts blocks, each
 * writing the total of its grid-strided share. */
template <typename Acc>
__global__ void sum_parts_kernel(SumArgs A, Acc *parts) {
  __shared__ Acc shared[kThreads];
  int64_t step = (int64_t)gridDim.x * kThreads;
  Acc acc = 0;
  for (int64_t r = (int64_t)blockIdx.x * kThreads + threadIdx.x; r < A.R;
       r += step) {
    int64_t off, unused;
    offsets(A.reduced, r, &off, &unused);
    acc = add_acc(acc, load_acc<Acc>(A, off));
  }
  Acc total = block_total(shared, acc);
  if (threadIdx.x == 0)
    parts[blockIdx.x] = total;
}

/* Second pass: one block adds the parts. */
template <typename Acc>
__global__ void sum_final_kernel(SumArgs A, const Acc *parts) {
  __shared__ Acc shared[kThreads];
  Acc mine = (int)threadIdx.x < kSumParts ? parts[threadIdx.x] : Acc(0);
  Acc total = block_total(shared, mine);
  if (threadIdx.x == 0)
    store_acc(A, 0, total);
}

template <typename Acc>
cudaError_t launch_sum(cudaStream_t st, const SumArgs &A, void *scratch) {
  clear_error();
  if (A.R <= kSumSerialMax) {
    sum_serial_kernel<Acc><<<grid_for(A.K, kThreads), kThreads, 0, st>>>(A);
  } else if (A.K == 1 && scratch != nullptr) {
    sum_parts_kernel<Acc><<<kSumParts, kThreads, 0, st>>>(A, (Acc *)scratch);
    cudaError_t rc = cudaGetLastError();
    if (rc != cudaSuccess)
      return rc;
    sum_final_kernel<Acc><<<1, kThreads, 0, st>>>(A, (const Acc *)scratch);
  } else {
    sum_block_kernel<Acc><<<grid_for(A.K, 1), kThreads, 0, st>>>(A);
  }
  return cudaGetLastError();
}

/* ---- matmul ------------------------------------------------------------- */

/* Multiply-add in the dtype's own arithmetic, rounded at each step as the
 * host's i-k-j loop in core/ops.c rounds: float32 accumulates in float. */
template <typename T> __device__ __forceinline__ T madd(T acc, T x, T y) {
  if constexpr (sizeof(T) == 4 && is_floating_v<T>)
    return __fadd_rn(acc, __fmul_rn(x, y));
  else if constexpr (is_floating_v<T>)
    return __dadd_rn(acc, __dmul_rn(x, y));
  else
    return (T)((unsigned long long)acc +
               (unsigned long long)x * (unsigned long long)y);
}

/* Square tiles of a and b staged in shared memory; each thread owns one
 * element of c and adds its products in order p = 0, 1, ..., k-1, the
 * order of the host loop, so results match it exactly. */
template <typename T>
__global__ void matmul_kernel(T *c, const T *a, const T *b, int64_t m,
                              int64_t k, int64_t n) {
  __shared__ T as[kTile][kTile];
  __shared__ T bs[kTile][kTile];
  int tx = threadIdx.x, ty = threadIdx.y;
  for (int64_t bi = blockIdx.y; bi * kTile < m; bi += gridDim.y) {
    for (int64_t bj = blockIdx.x; bj * kTile < n; bj += gridDim.x) {
      int64_t row = bi * kTile + ty, col = bj * kTile + tx;
      T acc = 0;
      for (int64_t p0 = 0; p0 < k; p0 += kTile) {
        as[ty][tx] = row < m && p0 + tx < k ? a[row * k + p0 + tx] : T(0);
        bs[ty][tx] = p0 + ty < k && col < n ? b[(p0 + ty) * n + col] : T(0);
        __syncthreads();
        int lim = k - p0 < kTile ? (int)(k - p0) : kTile;
        for (int q = 0; q < lim; q++)
          acc = madd(acc, as[ty][q], bs[q][tx]);
        __syncthreads();
      }
      if (row < m && col < n)
        c[row * n + col] = acc;
    }
  }
}

template <typename T>
cudaError_t launch_matmul(cudaStream_t st, void *c, const void *a,
                          const void *b, int64_t m, int64_t k, int64_t n) {
  dim3 block(kTile, kTile);
  dim3 grid(grid_for(n, kTile), grid_for(m, kTile));
  clear_error();
  matmul_kernel<T>
      <<<grid, block, 0, st>>>((T *)c, (const T *)a, (const T *)b, m, k, n);
  return cudaGetLastError();
}

} // namespace

/* ---- launchers ---------------------------------------------------------- */

extern "C" cudaError_t drpc_ck_fill(cudaStream_t st, void *dst, int dt,
                                    int64_t n, const void *value) {
  size_t size = dtype_size(dt);
  if (size == 0 || n < 0 || !value || (n > 0 && !dst))
    return cudaErrorInvalidValue;
  if (n == 0)
    return cudaSuccess;
  const unsigned char *v = (const unsigned char *)value;
  bool same_bytes = true;
  for (size_t j = 1; j < size; j++)
    same_bytes = same_bytes && v[j] == v[0];
  if (same_bytes) /* 0, 1-byte dtypes, and patterns such as -1 */
    return cudaMemsetAsync(dst, v[0], (size_t)n * size, st);
  if (size == 4)
    return launch_fill<unsigned int>(st, dst, value, n);
  return launch_fill<unsigned long long>(st, dst, value, n);
}

extern "C" cudaError_t drpc_ck_strided_copy(cudaStream_t st, void *dst, int ddt,
                                            const void *src, int sdt, int ndim,
                                            const int64_t *shape,
                                            const int64_t *strides) {
  int64_t n;
  if (dtype_size(ddt) == 0 || dtype_size(sdt) == 0 || ndim < 0 ||
      ndim > DRPC_CK_MAX_DIMS || (ndim > 0 && (!shape || !strides)) ||
      !numel_of(ndim, shape, &n))
    return cudaErrorInvalidValue;
  if (n == 0)
    return cudaSuccess;
  if (!dst || !src)
    return cudaErrorInvalidValue;
  Layout L = collapse(ndim, shape, strides, nullptr);
  bool dense = L.ndim == 0 || (L.ndim == 1 && L.strides[0][0] == 1);
  if (dense && ddt == sdt)
    return cudaMemcpyAsync(dst, src, (size_t)n * dtype_size(ddt),
                           cudaMemcpyDefault, st);
  switch (ddt) {
  case DRPC_CK_FLOAT32:
    return copy_from<DRPC_CK_FLOAT32>(sdt, st, dst, src, L, n);
  case DRPC_CK_FLOAT64:
    return copy_from<DRPC_CK_FLOAT64>(sdt, st, dst, src, L, n);
  case DRPC_CK_INT64:
    return copy_from<DRPC_CK_INT64>(sdt, st, dst, src, L, n);
  case DRPC_CK_INT32:
    return copy_from<DRPC_CK_INT32>(sdt, st, dst, src, L, n);
  case DRPC_CK_UINT8:
    return copy_from<DRPC_CK_UINT8>(sdt, st, dst, src, L, n);
  default:
    return copy_from<DRPC_CK_BOOL>(sdt, st, dst, src, L, n);
  }
}

static bool operand_ok(const drpc_ck_operand *o) {
  return o && (!o->data || o->dtype == DRPC_CK_FLOAT32 ||
               o->dtype == DRPC_CK_FLOAT64 || o->dtype == DRPC_CK_INT64);
}

extern "C" cudaError_t drpc_ck_binary(cudaStream_t st, int op, void *dst,
                                      int dt, int ndim, const int64_t *shape,
                                      const drpc_ck_operand *a,
                                      const drpc_ck_operand *b, double alpha_f,
                                      int64_t alpha_i) {
  int64_t n;
  if ((dt != DRPC_CK_FLOAT32 && dt != DRPC_CK_FLOAT64 && dt != DRPC_CK_INT64) ||
      op < DRPC_CK_ADD || op > DRPC_CK_DIV ||
      (op == DRPC_CK_DIV && dt == DRPC_CK_INT64) || ndim < 0 ||
      ndim > DRPC_CK_MAX_DIMS || (ndim > 0 && !shape) || !operand_ok(a) ||
      !operand_ok(b) || !numel_of(ndim, shape, &n))
    return cudaErrorInvalidValue;
  if (n == 0)
    return cudaSuccess;
  if (!dst)
    return cudaErrorInvalidValue;
  BinArgs A = {};
  /* A number has no strides: zeros merge with anything. */
  A.L = collapse(ndim, shape, a->data ? a->strides : nullptr,
                 b->data ? b->strides : nullptr);
  A.a = Operand{a->data, a->dtype, a->is_float, a->f, (long long)a->i};
  A.b = Operand{b->data, b->dtype, b->is_float, b->f, (long long)b->i};
  A.alpha_f = alpha_f;
  A.alpha_i = (long long)alpha_i;
  switch (dt) {
  case DRPC_CK_FLOAT32:
    return binary_op<float>(op, st, dst, A, n);
  case DRPC_CK_FLOAT64:
    return binary_op<double>(op, st, dst, A, n);
  default:
    return binary_op<long long>(op, st, dst, A, n);
  }
}

extern "C" cudaError_t drpc_ck_sum(cudaStream_t st, void *dst, int ddt,
                                   int64_t dst_numel, const void *src, int sdt,
                                   int ndim, const int64_t *shape,
                                   const int64_t *src_strides,
                                   const int64_t *dst_strides, void *scratch) {
  int64_t n;
  if (dtype_size(ddt) == 0 || dtype_size(sdt) == 0 || dst_numel < 0 ||
      ndim < 0 || ndim > DRPC_CK_MAX_DIMS ||
      (ndim > 0 && (!shape || !src_strides || !dst_strides)) ||
      !numel_of(ndim, shape, &n) || (dst_numel > 0 && !dst))
    return cudaErrorInvalidValue;
  if (dst_numel > 0) {
    cudaError_t rc =
        cudaMemsetAsync(dst, 0, (size_t)dst_numel * dtype_size(ddt), st);
    if (rc != cudaSuccess)
      return rc;
  }
  if (n == 0)
    return cudaSuccess;
  if (!src)
    return cudaErrorInvalidValue;
  /* Every output element written must lie inside dst. */
  int64_t last = 0;
  for (int d = 0; d < ndim; d++) {
    if (dst_strides[d] < 0 ||
        (dst_strides[d] > 0 &&
         shape[d] - 1 > (INT64_MAX - last) / dst_strides[d]))
      return cudaErrorInvalidValue;
    last += (shape[d] - 1) * dst_strides[d];
  }
  if (last >= dst_numel)
    return cudaErrorInvalidValue;
  /* Collapsing with both stride arrays never merges a kept dimension with
   * a reduced one (a dst stride is 0 exactly on reduced ones). */
  Layout L = collapse(ndim, shape, src_strides, dst_strides);
  SumArgs A = {};
  A.src = src;
  A.sdt = sdt;
  A.dst = dst;
  A.ddt = ddt;
  A.K = 1;
  A.R = 1;
  for (int d = 0; d < L.ndim; d++) {
    Layout &part = L.strides[1][d] == 0 ? A.reduced : A.kept;
    part.shape[part.ndim] = L.shape[d];
    part.strides[0][part.ndim] = L.strides[0][d];
    part.strides[1][part.ndim] = L.strides[1][d];
    part.ndim++;
    if (L.strides[1][d] == 0)
      A.R *= L.shape[d];
    else
      A.K *= L.shape[d];
  }
  if (is_floating(ddt))
    return launch_sum<double>(st, A, scratch);
  return launch_sum<unsigned long long>(st, A, scratch);
}

extern "C" cudaError_t drpc_ck_matmul(cudaStream_t st, void *dst, int dt,
                                      const void *a, const void *b, int64_t m,
                                      int64_t k, int64_t n) {
  if (m < 0 || k < 0 || n < 0)
    return cudaErrorInvalidValue;
  if (m == 0 || n == 0)
    return cudaSuccess;
  if (!dst || (k > 0 && (!a || !b)))
    return cudaErrorInvalidValue;
  switch (dt) {
  case DRPC_CK_FLOAT32:
    return launch_matmul<float>(st, dst, a, b, m, k, n);
  case DRPC_CK_FLOAT64:
    return launch_matmul<double>(st, dst, a, b, m, k, n);
  case DRPC_CK_INT64:
    return launch_matmul<long long>(st, dst, a, b, m, k, n);
  default:
    return cudaErrorInvalidValue;
  }
}
