/* Builtin operators (aten::add, ...) with PyTorch's broadcasting rules, on
 * the CPU or, through the installed backend, on the tensors' CUDA device. */
#include "drpc/ops.h"

#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "drpc/device.h"

/* No builtin reads or makes a tensor whose elements take more than this
 * many bytes, so a remote caller cannot ask a worker for an allocation it
 * has no hope of sending back, nor for a loop over a huge view (stride 0)
 * of a small storage. */
#define OPS_MAX_TENSOR_NBYTES ((size_t)1 << 32)

/* Most parameters any builtin takes (add: input, other, alpha). */
#define OPS_MAX_PARAMS 3

/* ---- argument binding -------------------------------------------------- */

/* A builtin's Python-style signature: positional parameters that may also be
 * named in kwargs, the first nrequired of which must be given. */
typedef struct op_sig {
  const char *op;
  const char *params[OPS_MAX_PARAMS];
  int nparams;
  int nrequired;
} op_sig;

static const char *kind_name(const drpc_value *v) {
  return v ? drpc_value_kind_name(v->kind) : "nothing";
}

/* Checks that args is a list (or NULL, meaning none) and kwargs a dict (or
 * NULL / nil, meaning none). */
static int check_containers(const char *op, const drpc_value *args,
                            const drpc_value *kwargs, drpc_error *err) {
  if (args != NULL && args->kind != DRPC_VAL_LIST) {
    return drpc_error_set(err, DRPC_ETYPE, "%s: args must be a list, not %s",
                          op, kind_name(args));
  }
  if (kwargs != NULL && kwargs->kind != DRPC_VAL_DICT &&
      kwargs->kind != DRPC_VAL_NIL) {
    return drpc_error_set(err, DRPC_ETYPE, "%s: kwargs must be a dict, not %s",
                          op, kind_name(kwargs));
  }
  return 0;
}

static size_t kwargs_len(const drpc_value *kwargs) {
  return kwargs != NULL && kwargs->kind == DRPC_VAL_DICT
             ? drpc_value_len(kwargs)
             : 0;
}

static int count_error(const op_sig *sig, size_t got, drpc_error *err) {
  if (sig->nrequired == sig->nparams) {
    return drpc_error_set(err, DRPC_EINVAL,
                          "%s: expected %d argument%s, got %zu", sig->op,
                          sig->nparams, sig->nparams == 1 ? "" : "s", got);
  }
  return drpc_error_set(
      err, DRPC_EINVAL, "%s: expected %d %s %d arguments, got %zu", sig->op,
      sig->nrequired, sig->nparams == sig->nrequired + 1 ? "or" : "to",
      sig->nparams, got);
}

/* Fills out[0..nparams) with the borrowed argument for each parameter, NULL
 * when it is absent. A nil value for an optional parameter counts as absent,
 * as None does in PyTorch; for a required one it is a wrong-type argument
 * that the op reports. */
static int bind_args(const op_sig *sig, const drpc_value *args,
                     const drpc_value *kwargs, const drpc_value **out,
                     drpc_error *err) {
  int rc = check_containers(sig->op, args, kwargs, err);
  if (rc != 0) {
    return rc;
  }
  size_t nargs = args ? drpc_value_len(args) : 0;
  size_t nkwargs = kwargs_len(kwargs);
  if (nargs > (size_t)sig->nparams) {
    return count_error(sig, nargs + nkwargs, err);
  }
  for (int p = 0; p < sig->nparams; p++) {
    out[p] = (size_t)p < nargs ? drpc_list_at(args, (size_t)p) : NULL;
  }
  for (size_t k = 0; k < nkwargs; k++) {
    const char *key = kwargs->u.c.keys[k];
    int p = 0;
    while (p < sig->nparams && strcmp(sig->params[p], key) != 0) {
      p++;
    }
    if (p == sig->nparams) {
      return drpc_error_set(err, DRPC_EINVAL,
                            "%s: unexpected keyword argument '%s'", sig->op,
                            key);
    }
    if (out[p] != NULL) {
      return drpc_error_set(err, DRPC_EINVAL,
                            "%s: got multiple values for argument '%s'",
                            sig->op, key);
    }
    out[p] = drpc_list_at(kwargs, k);
  }
  for (int p = sig->nrequired; p < sig->nparams; p++) {
    if (out[p] != NULL && out[p]->kind == DRPC_VAL_NIL) {
      out[p] = NULL;
    }
  }
  for (int p = 0; p < sig->nrequired; p++) {
    if (out[p] == NULL) {
      return count_error(sig, nargs + nkwargs, err);
    }
  }
  return 0;
}

/* ---- operands ---------------------------------------------------------- */

static bool is_supported(drpc_dtype dt) {
  return dt == DRPC_FLOAT32 || dt == DRPC_FLOAT64 || dt == DRPC_INT64;
}

static bool is_float(drpc_dtype dt) {
  return dt == DRPC_FLOAT32 || dt == DRPC_FLOAT64;
}

/* Every element a tensor's shape and strides can reach must lie inside its
 * storage: tensors decoded from the wire are checked here before any loop
 * reads them. The arithmetic is arranged so that it cannot overflow. */
static bool in_bounds(const drpc_tensor *t) {
  int64_t numel = drpc_tensor_numel(t);
  if (numel < 0) {
    return false;
  }
  if (numel == 0) {
    return true;
  }
  size_t elem_size = drpc_dtype_size(t->dtype);
  if (elem_size == 0 || t->storage == NULL || t->storage->data == NULL) {
    return false;
  }
  size_t cap_elems = t->storage->nbytes / elem_size;
  if (t->offset < 0 || (uint64_t)t->offset >= cap_elems) {
    return false;
  }
  int64_t cap = cap_elems > (size_t)INT64_MAX ? INT64_MAX : (int64_t)cap_elems;
  int64_t lo = t->offset, hi = t->offset;
  for (int d = 0; d < t->ndim; d++) {
    int64_t steps = t->shape[d] - 1, stride = t->strides[d];
    if (steps == 0 || stride == 0) {
      continue;
    }
    if (stride == INT64_MIN) {
      return false;
    }
    int64_t mag = stride < 0 ? -stride : stride;
    if (steps > INT64_MAX / mag) {
      return false;
    }
    int64_t span = steps * mag;
    if (stride > 0) {
      if (span >= cap - hi) {
        return false;
      }
      hi += span;
    } else {
      if (span > lo) {
        return false;
      }
      lo -= span;
    }
  }
  return true;
}

/* Checks that a tensor of this dtype and shape stays within the bound that
 * every tensor an op reads or writes obeys. As in tensor.c, dimensions of
 * size 0 count as 1 for the overflow check so strides stay representable. */
static int check_nbytes(const char *op, const char *what, drpc_dtype dt,
                        int ndim, const int64_t *shape, drpc_error *err) {
  uint64_t span = drpc_dtype_size(dt), nbytes = span;
  for (int d = 0; d < ndim; d++) {
    uint64_t n = shape[d] > 0 ? (uint64_t)shape[d] : 1;
    if (span > UINT64_MAX / n) {
      return drpc_error_set(err, DRPC_EINVAL,
                            "%s: %s size overflows (limit %zu bytes)", op, what,
                            OPS_MAX_TENSOR_NBYTES);
    }
    span *= n;
    nbytes = shape[d] == 0 ? 0 : nbytes * n;
  }
  if (nbytes > OPS_MAX_TENSOR_NBYTES) {
    return drpc_error_set(err, DRPC_EINVAL,
                          "%s: %s of %llu bytes exceeds limit %zu", op, what,
                          (unsigned long long)nbytes, OPS_MAX_TENSOR_NBYTES);
  }
  return 0;
}

/* One input of an elementwise op: a tensor, or a Python-style number. */
typedef struct operand {
  const drpc_tensor *t; /* NULL for a number */
  bool is_float;        /* numbers only */
  int64_t i;
  double f;
} operand;

/* Checks that a tensor's device is one builtins run on: the CPU, or a CUDA
 * device of the installed backend. */
static int check_device(const char *op, const char *param, drpc_device dev,
                        drpc_error *err) {
  if (dev.type == DRPC_DEVICE_CPU) {
    return 0;
  }
  char name[16];
  drpc_device_format(dev, name, sizeof name);
  if (dev.type != DRPC_DEVICE_CUDA) {
    return drpc_error_set(
        err, DRPC_EUNSUPPORTED,
        "%s: expected a CPU tensor for argument '%s', got one on %s", op, param,
        name);
  }
  /* Without a backend no CUDA tensor can have been made by drpc, but one
   * can be wrapped by hand or decoded from the wire. */
  if (drpc_device_backend_get(NULL) == NULL) {
    return drpc_error_set(err, DRPC_EUNSUPPORTED,
                          "%s: expected a CPU tensor for argument '%s', got "
                          "one on %s: no CUDA backend",
                          op, param, name);
  }
  if (!drpc_device_valid(dev)) {
    return drpc_error_set(err, DRPC_EINVAL,
                          "%s: no such device %s (argument '%s')", op, name,
                          param);
  }
  return 0;
}

/* Checks that a tensor is one builtins can read: on the CPU or a CUDA
 * device, with an in-bounds layout, and (when need_supported) of a
 * supported dtype. The checks read only the tensor's header, never its
 * data, so they are the same for both. */
static int check_tensor(const char *op, const char *param, const drpc_tensor *t,
                        bool need_supported, drpc_error *err) {
  if (t == NULL) {
    return drpc_error_set(err, DRPC_EINVAL,
                          "%s: argument '%s' is a null tensor", op, param);
  }
  int rc = check_device(op, param, drpc_tensor_device(t), err);
  if (rc != 0) {
    return rc;
  }
  if (drpc_dtype_size(t->dtype) == 0) {
    return drpc_error_set(err, DRPC_ETYPE, "%s: invalid dtype %d", op,
                          (int)t->dtype);
  }
  if (need_supported && !is_supported(t->dtype)) {
    return drpc_error_set(err, DRPC_ETYPE, "%s: unsupported dtype %s", op,
                          drpc_dtype_name(t->dtype));
  }
  if (t->ndim < 0 || t->ndim > DRPC_TENSOR_MAX_DIMS || !in_bounds(t)) {
    return drpc_error_set(err, DRPC_EINVAL,
                          "%s: argument '%s' has a shape, strides or offset "
                          "outside its storage",
                          op, param);
  }
  char what[64];
  snprintf(what, sizeof what, "argument '%s'", param);
  return check_nbytes(op, what, t->dtype, t->ndim, t->shape, err);
}

static int get_operand(const char *op, const char *param, const drpc_value *v,
                       operand *o, drpc_error *err) {
  memset(o, 0, sizeof *o);
  switch (v->kind) {
  case DRPC_VAL_TENSOR:
    o->t = v->u.t;
    return check_tensor(op, param, o->t, true, err);
  case DRPC_VAL_BOOL:
    /* Python's bool is an int: True + 1 == 2. */
    o->i = v->u.b;
    o->f = v->u.b;
    return 0;
  case DRPC_VAL_INT:
    o->i = v->u.i;
    o->f = (double)v->u.i;
    return 0;
  case DRPC_VAL_FLOAT:
    o->is_float = true;
    o->f = v->u.f;
    return 0;
  default:
    return drpc_error_set(err, DRPC_ETYPE,
                          "%s: argument '%s' must be a tensor or a number, "
                          "not %s",
                          op, param, kind_name(v));
  }
}

/* ---- type promotion ---------------------------------------------------- */

/* No dtype yet (an empty priority class). */
#define DTYPE_NONE DRPC_DTYPE_COUNT

/* promote_types over float32, float64 and int64. */
static drpc_dtype promote(drpc_dtype a, drpc_dtype b) {
  if (a == DTYPE_NONE) {
    return b;
  }
  if (b == DTYPE_NONE) {
    return a;
  }
  if (a == DRPC_FLOAT64 || b == DRPC_FLOAT64) {
    return DRPC_FLOAT64;
  }
  if (a == DRPC_FLOAT32 || b == DRPC_FLOAT32) {
    return DRPC_FLOAT32;
  }
  return DRPC_INT64;
}

/* PyTorch's combine_categories: a lower-priority class only matters when it
 * brings a higher category (float over int). */
static drpc_dtype combine(drpc_dtype higher, drpc_dtype lower) {
  if (higher != DTYPE_NONE && is_float(higher)) {
    return higher;
  }
  if (lower != DTYPE_NONE && is_float(lower)) {
    return promote(higher, lower);
  }
  return higher != DTYPE_NONE ? higher : lower;
}

/* The result dtype of an elementwise op, as torch.result_type computes it:
 * tensors with dimensions outrank 0-d tensors, which outrank numbers, and a
 * float number counts as the default dtype, float32. So a float32 tensor
 * plus a float64 0-d tensor stays float32, and an int64 tensor plus 2.5
 * becomes float32. */
static drpc_dtype result_dtype(const operand *ops, int n) {
  drpc_dtype dim_dt = DTYPE_NONE, zero_dt = DTYPE_NONE, num_dt = DTYPE_NONE;
  for (int k = 0; k < n; k++) {
    const operand *o = &ops[k];
    if (o->t != NULL && o->t->ndim > 0) {
      dim_dt = promote(dim_dt, o->t->dtype);
    } else if (o->t != NULL) {
      zero_dt = promote(zero_dt, o->t->dtype);
    } else {
      num_dt = promote(num_dt, o->is_float ? DRPC_FLOAT32 : DRPC_INT64);
    }
  }
  return combine(combine(dim_dt, zero_dt), num_dt);
}

/* ---- results ----------------------------------------------------------- */

/* Allocates a contiguous result, refusing shapes past the bound. */
static drpc_tensor *result_tensor(const char *op, drpc_dtype dt, int ndim,
                                  const int64_t *shape, bool zero,
                                  drpc_error *err) {
  if (check_nbytes(op, "result", dt, ndim, shape, err) != 0) {
    return NULL;
  }
  drpc_tensor *t = zero ? drpc_tensor_new(dt, ndim, shape)
                        : drpc_tensor_empty(dt, ndim, shape);
  if (t == NULL) {
    drpc_error_set(err, DRPC_ENOMEM, "%s: out of memory", op);
  }
  return t;
}

/* Wraps a result tensor in a value, handing over our reference. */
static drpc_value *tensor_value(const char *op, drpc_tensor *t,
                                drpc_error *err) {
  drpc_value *v = drpc_value_tensor(t);
  drpc_tensor_decref(t);
  if (v == NULL) {
    drpc_error_set(err, DRPC_ENOMEM, "%s: out of memory", op);
  }
  return v;
}

static drpc_value *number_value(const char *op, drpc_value *v,
                                drpc_error *err) {
  if (v == NULL) {
    drpc_error_set(err, DRPC_ENOMEM, "%s: out of memory", op);
  }
  return v;
}

/* ---- devices ----------------------------------------------------------- */

/* Where an op's kernels run: on the CPU (b is NULL), or on a CUDA device
 * through the installed backend, queued on the calling thread's current
 * stream there. Validation, promotion and shapes are worked out on the host
 * either way; only the loops over elements move. */
typedef struct place {
  drpc_device dev;
  const drpc_device_backend *b;
  void *ctx;
  drpc_stream *s;
} place;

/* The device the tensors ts[0..n) are on (NULL entries are numbers, which
 * go with any device), cpu when there are none. Two tensors on different
 * devices are an error with PyTorch's message, the devices named in the
 * order the operands come. */
static int common_device(const char *op, const drpc_tensor *const *ts, int n,
                         drpc_device *out, drpc_error *err) {
  bool have = false;
  *out = DRPC_CPU;
  for (int k = 0; k < n; k++) {
    if (ts[k] == NULL) {
      continue;
    }
    drpc_device d = drpc_tensor_device(ts[k]);
    if (!have) {
      *out = d;
      have = true;
    } else if (!drpc_device_equal(*out, d)) {
      char first[16], second[16];
      return drpc_error_set(err, DRPC_EINVAL,
                            "%s: Expected all tensors to be on the same "
                            "device, but found at least two devices, %s and "
                            "%s!",
                            op, drpc_device_format(*out, first, sizeof first),
                            drpc_device_format(d, second, sizeof second));
    }
  }
  return 0;
}

/* Fills p for running on dev: the backend and the current stream. */
static int place_on(const char *op, drpc_device dev, place *p,
                    drpc_error *err) {
  *p = (place){dev, NULL, NULL, NULL};
  if (dev.type == DRPC_DEVICE_CPU) {
    return 0;
  }
  p->b = drpc_device_backend_get(&p->ctx);
  if (p->b == NULL) {
    return drpc_error_set(err, DRPC_EUNSUPPORTED, "%s: no CUDA backend", op);
  }
  p->s = drpc_stream_current(dev.index);
  if (p->s == NULL) {
    char name[16];
    return drpc_error_set(err, DRPC_EINVAL, "%s: no such device %s", op,
                          drpc_device_format(dev, name, sizeof name));
  }
  return 0;
}

/* An uninitialised contiguous result on p's device, ordered on its stream,
 * refusing shapes past the bound as result_tensor does. */
static drpc_tensor *device_result(const char *op, const place *p, drpc_dtype dt,
                                  int ndim, const int64_t *shape,
                                  drpc_error *err) {
  if (check_nbytes(op, "result", dt, ndim, shape, err) != 0) {
    return NULL;
  }
  drpc_tensor *t = drpc_tensor_empty_on(p->dev, dt, ndim, shape, p->s, err);
  if (t == NULL) {
    drpc_error_prefix(err, "%s", op);
  }
  return t;
}

/* Hands back out once its kernels are queued (rc 0), else drops it and
 * names the op in the backend's message. */
static drpc_value *device_value(const char *op, drpc_tensor *out, int rc,
                                drpc_error *err) {
  if (rc != 0) {
    drpc_tensor_decref(out);
    drpc_error_prefix(err, "%s", op);
    return NULL;
  }
  return tensor_value(op, out, err);
}

/* The first element of t in device memory. */
static const void *device_data(const drpc_tensor *t) {
  return (const char *)t->storage->data +
         t->offset * (int64_t)drpc_dtype_size(t->dtype);
}

/* t's elements as one contiguous run of dtype dt in device memory: t's own
 * when it already is one, else a copy queued on p's stream into *tmp. The
 * caller drops *tmp once the work that reads it is queued: its memory goes
 * back on that same stream, after that work. */
static int device_dense(const place *p, const drpc_tensor *t, drpc_dtype dt,
                        drpc_tensor **tmp, const void **data, drpc_error *err) {
  *tmp = NULL;
  if (t->dtype == dt && drpc_tensor_is_contiguous(t)) {
    *data = device_data(t);
    return 0;
  }
  *tmp = drpc_tensor_empty_on(p->dev, dt, t->ndim, t->shape, p->s, err);
  if (*tmp == NULL) {
    return err != NULL && err->code != 0 ? err->code : DRPC_ENOMEM;
  }
  *data = drpc_tensor_data(*tmp);
  return p->b->strided_copy(p->ctx, p->s, drpc_tensor_data(*tmp), dt,
                            device_data(t), t->dtype, t->ndim, t->shape,
                            t->strides, err);
}

/* ---- strided runs ------------------------------------------------------ */

/* Converts n elements of type sdt, stride_elems apart from src, into a
 * contiguous run of type ddt (float32, float64 or int64). The conversions
 * are the ones PyTorch applies when it casts inputs to the compute dtype;
 * float to int never happens because int results need int inputs. */
static void convert_run(const char *src, drpc_dtype sdt, int64_t stride_elems,
                        int64_t n, void *dst, drpc_dtype ddt) {
#define CONVERT(STYPE, DTYPE)                                                  \
  do {                                                                         \
    DTYPE *out_ = dst;                                                         \
    for (int64_t j = 0; j < n; j++) {                                          \
      STYPE v_;                                                                \
      memcpy(&v_, src + j * stride_elems * (int64_t)sizeof(STYPE), sizeof v_); \
      out_[j] = (DTYPE)v_;                                                     \
    }                                                                          \
  } while (0)
#define CONVERT_FROM(STYPE)                                                    \
  do {                                                                         \
    if (ddt == DRPC_FLOAT32) {                                                 \
      CONVERT(STYPE, float);                                                   \
    } else if (ddt == DRPC_FLOAT64) {                                          \
      CONVERT(STYPE, double);                                                  \
    } else {                                                                   \
      CONVERT(STYPE, int64_t);                                                 \
    }                                                                          \
  } while (0)
  switch (sdt) {
  case DRPC_FLOAT32:
    CONVERT_FROM(float);
    break;
  case DRPC_FLOAT64:
    CONVERT_FROM(double);
    break;
  case DRPC_INT64:
    CONVERT_FROM(int64_t);
    break;
  default:
    /* check_tensor admits no other dtype. */
    memset(dst, 0, (size_t)n * drpc_dtype_size(ddt));
    break;
  }
#undef CONVERT_FROM
#undef CONVERT
}

/* Fills a run of type ddt with the number o, converted as PyTorch casts a
 * Python scalar to the compute dtype. */
static void fill_run(const operand *o, int64_t n, void *dst, drpc_dtype ddt) {
  for (int64_t j = 0; j < n; j++) {
    if (ddt == DRPC_FLOAT32) {
      ((float *)dst)[j] = o->is_float ? (float)o->f : (float)o->i;
    } else if (ddt == DRPC_FLOAT64) {
      ((double *)dst)[j] = o->is_float ? o->f : (double)o->i;
    } else {
      ((int64_t *)dst)[j] = o->i;
    }
  }
}

/* ---- elementwise binary ops -------------------------------------------- */

typedef enum binop { BINOP_ADD, BINOP_SUB, BINOP_MUL, BINOP_DIV } binop;

/* Computes the broadcast shape of a and b into shape/ndim, with PyTorch's
 * message on a mismatch. */
static int broadcast_shapes(const char *op, const operand *a, const operand *b,
                            int64_t *shape, int *ndim, drpc_error *err) {
  int na = a->t ? a->t->ndim : 0, nb = b->t ? b->t->ndim : 0;
  int n = na > nb ? na : nb;
  for (int i = n - 1; i >= 0; i--) {
    int off = n - 1 - i;
    int64_t sa = off < na ? a->t->shape[na - 1 - off] : 1;
    int64_t sb = off < nb ? b->t->shape[nb - 1 - off] : 1;
    if (sa != sb && sa != 1 && sb != 1) {
      return drpc_error_set(err, DRPC_EINVAL,
                            "%s: The size of tensor a (%lld) must match the "
                            "size of tensor b (%lld) at non-singleton "
                            "dimension %d",
                            op, (long long)sa, (long long)sb, i);
    }
    shape[i] = sa == 1 ? sb : sa;
  }
  *ndim = n;
  return 0;
}

/* Strides of o viewed with the broadcast shape: 0 along dimensions it is
 * missing or has size 1, so the same element is read again. */
static void broadcast_strides(const operand *o, int ndim, int64_t *strides) {
  int no = o->t ? o->t->ndim : 0;
  for (int i = 0; i < ndim; i++) {
    int src = i - (ndim - no);
    strides[i] = src >= 0 && o->t->shape[src] != 1 ? o->t->strides[src] : 0;
  }
}

/* One row of the result: out = a op alpha*b in the compute dtype. float32
 * works in double and rounds once per element, which gives the correctly
 * rounded float32 result for + - * /. Integers wrap like PyTorch's int64
 * (unsigned arithmetic keeps the wrap defined). The op and dtype are chosen
 * outside the loops so that each loop is a plain one that vectorises. */
static void compute_row(binop kind, drpc_dtype dt, const void *ra,
                        const void *rb, void *out, int64_t n, double alpha_f,
                        int64_t alpha_i) {
#define ROW(TYPE, VTYPE, EXPR)                                                 \
  do {                                                                         \
    const TYPE *a_ = ra, *b_ = rb;                                             \
    TYPE *o_ = out;                                                            \
    for (int64_t j = 0; j < n; j++) {                                          \
      VTYPE x = (VTYPE)a_[j], y = (VTYPE)b_[j];                                \
      o_[j] = (TYPE)(EXPR);                                                    \
    }                                                                          \
  } while (0)
#define ROWS(TYPE, VTYPE, ALPHA)                                               \
  do {                                                                         \
    switch (kind) {                                                            \
    case BINOP_ADD:                                                            \
      ROW(TYPE, VTYPE, x + (ALPHA)*y);                                         \
      break;                                                                   \
    case BINOP_SUB:                                                            \
      ROW(TYPE, VTYPE, x - (ALPHA)*y);                                         \
      break;                                                                   \
    case BINOP_MUL:                                                            \
      ROW(TYPE, VTYPE, x *y);                                                  \
      break;                                                                   \
    case BINOP_DIV:                                                            \
      ROW(TYPE, VTYPE, x / y);                                                 \
      break;                                                                   \
    }                                                                          \
  } while (0)
  if (dt == DRPC_FLOAT32) {
    ROWS(float, double, alpha_f);
  } else if (dt == DRPC_FLOAT64) {
    ROWS(double, double, alpha_f);
  } else {
    /* Division never reaches here: it always has a floating result. */
    uint64_t al = (uint64_t)alpha_i;
    ROWS(int64_t, uint64_t, al);
  }
#undef ROWS
#undef ROW
}

/* Runs the op over the broadcast result row by row: each input's row is
 * converted into a contiguous buffer of the compute dtype, then combined. */
static void binary_kernel(binop kind, const operand *a, const operand *b,
                          drpc_tensor *out, double alpha_f, int64_t alpha_i,
                          void *buf_a, void *buf_b) {
  drpc_dtype dt = out->dtype;
  int nd = out->ndim;
  int64_t inner = nd > 0 ? out->shape[nd - 1] : 1;
  int64_t numel = drpc_tensor_numel(out);
  int64_t sa[DRPC_TENSOR_MAX_DIMS], sb[DRPC_TENSOR_MAX_DIMS];
  broadcast_strides(a, nd, sa);
  broadcast_strides(b, nd, sb);
  int64_t off_a = a->t ? a->t->offset : 0, off_b = b->t ? b->t->offset : 0;
  int64_t idx[DRPC_TENSOR_MAX_DIMS] = {0};
  size_t out_elem_size = drpc_dtype_size(dt);
  char *o = drpc_tensor_data(out);
  /* A number is the same in every row, so its buffer is filled once. */
  if (a->t == NULL) {
    fill_run(a, inner, buf_a, dt);
  }
  if (b->t == NULL) {
    fill_run(b, inner, buf_b, dt);
  }
  for (int64_t done = 0; done < numel; done += inner) {
    if (a->t != NULL) {
      const char *pa = (const char *)a->t->storage->data +
                       off_a * (int64_t)drpc_dtype_size(a->t->dtype);
      convert_run(pa, a->t->dtype, nd > 0 ? sa[nd - 1] : 0, inner, buf_a, dt);
    }
    if (b->t != NULL) {
      const char *pb = (const char *)b->t->storage->data +
                       off_b * (int64_t)drpc_dtype_size(b->t->dtype);
      convert_run(pb, b->t->dtype, nd > 0 ? sb[nd - 1] : 0, inner, buf_b, dt);
    }
    compute_row(kind, dt, buf_a, buf_b, o, inner, alpha_f, alpha_i);
    o += (size_t)inner * out_elem_size;
    for (int d = nd - 2; d >= 0; d--) {
      off_a += sa[d];
      off_b += sb[d];
      if (++idx[d] < out->shape[d]) {
        break;
      }
      off_a -= sa[d] * out->shape[d];
      off_b -= sb[d] * out->shape[d];
      idx[d] = 0;
    }
  }
}

/* One input of the backend's elementwise kernel. Tensors are read in place
 * through their broadcast strides; check_tensor admits only the compute
 * dtypes, which the kernel reads directly. A number is converted to the
 * compute dtype here exactly as fill_run does, so the device sees the
 * value the CPU loop would. */
static void device_operand(const operand *o, drpc_dtype dt, int ndim,
                           drpc_dev_operand *d) {
  memset(d, 0, sizeof *d);
  if (o->t != NULL) {
    assert(is_supported(o->t->dtype));
    d->data = device_data(o->t);
    d->dtype = o->t->dtype;
    broadcast_strides(o, ndim, d->strides);
    return;
  }
  d->dtype = dt;
  if (dt == DRPC_INT64) {
    d->i = o->i;
    return;
  }
  d->is_float = true;
  if (dt == DRPC_FLOAT32) {
    d->f = o->is_float ? (float)o->f : (float)o->i;
  } else {
    d->f = o->is_float ? o->f : (double)o->i;
  }
}

/* The backend's name for each op; the values happen to agree, but the
 * table keeps the two enums free to differ. */
static const drpc_devop DEVOPS[] = {
    [BINOP_ADD] = DRPC_DEVOP_ADD,
    [BINOP_SUB] = DRPC_DEVOP_SUB,
    [BINOP_MUL] = DRPC_DEVOP_MUL,
    [BINOP_DIV] = DRPC_DEVOP_DIV,
};

/* The elementwise op as one kernel on p's device. */
static drpc_value *binary_device(const char *op, const place *p, binop kind,
                                 const operand *a, const operand *b,
                                 drpc_dtype dt, int ndim, const int64_t *shape,
                                 double alpha_f, int64_t alpha_i,
                                 drpc_error *err) {
  drpc_tensor *out = device_result(op, p, dt, ndim, shape, err);
  if (out == NULL) {
    return NULL;
  }
  int rc = 0;
  if (drpc_tensor_numel(out) > 0) {
    drpc_dev_operand da, db;
    device_operand(a, dt, ndim, &da);
    device_operand(b, dt, ndim, &db);
    rc = p->b->binary(p->ctx, p->s, DEVOPS[kind], drpc_tensor_data(out), dt,
                      ndim, shape, &da, &db, alpha_f, alpha_i, err);
  }
  return device_value(op, out, rc, err);
}

/* Number op number, with Python's rules: int results for ints (wrapping
 * like int64), float as soon as a float is involved or for division. */
static drpc_value *binary_numbers(const char *op, binop kind, const operand *a,
                                  const operand *b, bool alpha_is_float,
                                  double alpha_f, int64_t alpha_i,
                                  drpc_error *err) {
  bool floating =
      a->is_float || b->is_float || alpha_is_float || kind == BINOP_DIV;
  if (!floating) {
    uint64_t x = (uint64_t)a->i, y = (uint64_t)b->i, al = (uint64_t)alpha_i;
    uint64_t r = kind == BINOP_ADD   ? x + al * y
                 : kind == BINOP_SUB ? x - al * y
                                     : x * y;
    return number_value(op, drpc_value_int((int64_t)r), err);
  }
  double x = a->f, y = b->f, r;
  switch (kind) {
  case BINOP_ADD:
    r = x + alpha_f * y;
    break;
  case BINOP_SUB:
    r = x - alpha_f * y;
    break;
  case BINOP_MUL:
    r = x * y;
    break;
  default:
    r = x / y;
    break;
  }
  return number_value(op, drpc_value_float(r), err);
}

static drpc_value *binary(const op_sig *sig, binop kind, const drpc_value *args,
                          const drpc_value *kwargs, drpc_error *err) {
  const char *op = sig->op;
  const drpc_value *bound[OPS_MAX_PARAMS] = {NULL};
  if (bind_args(sig, args, kwargs, bound, err) != 0) {
    return NULL;
  }
  operand ops[2];
  if (get_operand(op, sig->params[0], bound[0], &ops[0], err) != 0 ||
      get_operand(op, sig->params[1], bound[1], &ops[1], err) != 0) {
    return NULL;
  }
  bool alpha_is_float = false;
  double alpha_f = 1.0;
  int64_t alpha_i = 1;
  if (sig->nparams > 2 && bound[2] != NULL) {
    if (bound[2]->kind == DRPC_VAL_TENSOR) {
      drpc_error_set(err, DRPC_ETYPE,
                     "%s: argument 'alpha' must be a number, not tensor", op);
      return NULL;
    }
    operand alpha;
    if (get_operand(op, "alpha", bound[2], &alpha, err) != 0) {
      return NULL;
    }
    alpha_is_float = alpha.is_float;
    alpha_f = alpha.f;
    alpha_i = alpha.i;
  }
  if (ops[0].t == NULL && ops[1].t == NULL) {
    return binary_numbers(op, kind, &ops[0], &ops[1], alpha_is_float, alpha_f,
                          alpha_i, err);
  }
  const drpc_tensor *ts[2] = {ops[0].t, ops[1].t};
  drpc_device dev;
  place where;
  if (common_device(op, ts, 2, &dev, err) != 0 ||
      place_on(op, dev, &where, err) != 0) {
    return NULL;
  }
  drpc_dtype dt = result_dtype(ops, 2);
  if (kind == BINOP_DIV && dt == DRPC_INT64) {
    /* True division of integers yields the default dtype, float32. */
    dt = DRPC_FLOAT32;
  }
  if (dt == DRPC_INT64 && alpha_is_float) {
    drpc_error_set(err, DRPC_ETYPE,
                   "%s: For integral input tensors, argument alpha must not "
                   "be a floating point number.",
                   op);
    return NULL;
  }
  if (dt == DRPC_FLOAT32) {
    /* PyTorch casts alpha to the compute dtype too. */
    alpha_f = (float)alpha_f;
  }
  int64_t shape[DRPC_TENSOR_MAX_DIMS];
  int ndim = 0;
  if (broadcast_shapes(op, &ops[0], &ops[1], shape, &ndim, err) != 0) {
    return NULL;
  }
  if (where.b != NULL) {
    return binary_device(op, &where, kind, &ops[0], &ops[1], dt, ndim, shape,
                         alpha_f, alpha_i, err);
  }
  drpc_tensor *out = result_tensor(op, dt, ndim, shape, false, err);
  if (out == NULL) {
    return NULL;
  }
  int64_t inner = ndim > 0 ? shape[ndim - 1] : 1;
  if (drpc_tensor_numel(out) > 0) {
    /* Rows are at most the result size, which the bound keeps well inside
     * size_t. */
    void *buf_a = malloc((size_t)inner * 8);
    void *buf_b = malloc((size_t)inner * 8);
    if (buf_a == NULL || buf_b == NULL) {
      free(buf_a);
      free(buf_b);
      drpc_tensor_decref(out);
      drpc_error_set(err, DRPC_ENOMEM, "%s: out of memory", op);
      return NULL;
    }
    binary_kernel(kind, &ops[0], &ops[1], out, alpha_f, alpha_i, buf_a, buf_b);
    free(buf_a);
    free(buf_b);
  }
  return tensor_value(op, out, err);
}

static const op_sig SIG_ADD = {"aten::add", {"input", "other", "alpha"}, 3, 2};
static const op_sig SIG_SUB = {"aten::sub", {"input", "other", "alpha"}, 3, 2};
static const op_sig SIG_MUL = {"aten::mul", {"input", "other"}, 2, 2};
static const op_sig SIG_DIV = {"aten::div", {"input", "other"}, 2, 2};

static drpc_value *op_add(const drpc_value *args, const drpc_value *kwargs,
                          drpc_error *err) {
  return binary(&SIG_ADD, BINOP_ADD, args, kwargs, err);
}

static drpc_value *op_sub(const drpc_value *args, const drpc_value *kwargs,
                          drpc_error *err) {
  return binary(&SIG_SUB, BINOP_SUB, args, kwargs, err);
}

static drpc_value *op_mul(const drpc_value *args, const drpc_value *kwargs,
                          drpc_error *err) {
  return binary(&SIG_MUL, BINOP_MUL, args, kwargs, err);
}

static drpc_value *op_div(const drpc_value *args, const drpc_value *kwargs,
                          drpc_error *err) {
  return binary(&SIG_DIV, BINOP_DIV, args, kwargs, err);
}

/* ---- aten::sum --------------------------------------------------------- */

static const op_sig SIG_SUM = {"aten::sum", {"input", "dim", "keepdim"}, 3, 1};

/* Wraps a possibly negative dim into [0, ndim); a 0-d tensor accepts 0 and
 * -1 as PyTorch does. */
static int wrap_dim(const char *op, int64_t dim, int ndim, int *out,
                    drpc_error *err) {
  int64_t n = ndim > 0 ? ndim : 1;
  if (dim < -n || dim >= n) {
    return drpc_error_set(err, DRPC_EINVAL,
                          "%s: Dimension out of range (expected to be in "
                          "range of [%lld, %lld], but got %lld)",
                          op, (long long)-n, (long long)(n - 1),
                          (long long)dim);
  }
  *out = (int)(dim < 0 ? dim + n : dim);
  return 0;
}

/* Marks the dimensions to reduce: dim is absent (all), an int, or a list of
 * ints (an empty list also means all, as in PyTorch). */
static int reduced_dims(const char *op, const drpc_value *dim, int ndim,
                        bool *reduce, drpc_error *err) {
  for (int d = 0; d < DRPC_TENSOR_MAX_DIMS; d++) {
    reduce[d] = dim == NULL;
  }
  if (dim == NULL) {
    return 0;
  }
  if (dim->kind == DRPC_VAL_INT) {
    int d = 0;
    int rc = wrap_dim(op, dim->u.i, ndim, &d, err);
    if (rc == 0 && ndim > 0) {
      reduce[d] = true;
    }
    return rc;
  }
  if (dim->kind != DRPC_VAL_LIST) {
    return drpc_error_set(err, DRPC_ETYPE,
                          "%s: argument 'dim' must be an int or a list of "
                          "ints, not %s",
                          op, kind_name(dim));
  }
  size_t n = drpc_value_len(dim);
  if (n == 0) {
    for (int d = 0; d < DRPC_TENSOR_MAX_DIMS; d++) {
      reduce[d] = true;
    }
    return 0;
  }
  for (size_t k = 0; k < n; k++) {
    const drpc_value *item = drpc_list_at(dim, k);
    if (item->kind != DRPC_VAL_INT) {
      return drpc_error_set(err, DRPC_ETYPE,
                            "%s: argument 'dim' must be a list of ints, but "
                            "found element of type %s at pos %zu",
                            op, kind_name(item), k);
    }
    int d = 0;
    int rc = wrap_dim(op, item->u.i, ndim, &d, err);
    if (rc != 0) {
      return rc;
    }
    if (ndim == 0) {
      continue;
    }
    if (reduce[d]) {
      return drpc_error_set(err, DRPC_EINVAL,
                            "%s: dim %d appears multiple times in the list "
                            "of dims",
                            op, d);
    }
    reduce[d] = true;
  }
  return 0;
}

/* Adds every element of t into acc (doubles for floats, wrapping uint64 for
 * int64), where each element lands at the output offset given by ostrides
 * (0 along reduced dimensions). */
static void sum_kernel(const drpc_tensor *t, const int64_t *ostrides,
                       void *acc) {
  int nd = t->ndim;
  int64_t numel = drpc_tensor_numel(t);
  int64_t inner = nd > 0 ? t->shape[nd - 1] : 1;
  int64_t in_stride = nd > 0 ? t->strides[nd - 1] : 0;
  int64_t out_stride = nd > 0 ? ostrides[nd - 1] : 0;
  int64_t idx[DRPC_TENSOR_MAX_DIMS] = {0};
  int64_t off = t->offset, ooff = 0;
  const char *base = t->storage->data;
  for (int64_t done = 0; done < numel; done += inner) {
    for (int64_t j = 0; j < inner; j++) {
      int64_t e = off + j * in_stride, o = ooff + j * out_stride;
      if (t->dtype == DRPC_FLOAT32) {
        float v;
        memcpy(&v, base + e * 4, sizeof v);
        ((double *)acc)[o] += v;
      } else if (t->dtype == DRPC_FLOAT64) {
        double v;
        memcpy(&v, base + e * 8, sizeof v);
        ((double *)acc)[o] += v;
      } else {
        int64_t v;
        memcpy(&v, base + e * 8, sizeof v);
        ((uint64_t *)acc)[o] += (uint64_t)v;
      }
    }
    for (int d = nd - 2; d >= 0; d--) {
      off += t->strides[d];
      ooff += ostrides[d];
      if (++idx[d] < t->shape[d]) {
        break;
      }
      off -= t->strides[d] * t->shape[d];
      ooff -= ostrides[d] * t->shape[d];
      idx[d] = 0;
    }
  }
}

/* The sum as one kernel on p's device. The kernel zeroes the result and
 * adds each element at the offset ostrides give, as sum_kernel does; an
 * empty input has nothing to add, so its result is only zeroed. */
static drpc_value *sum_device(const char *op, const place *p,
                              const drpc_tensor *t, const int64_t *ostrides,
                              int ondim, const int64_t *oshape,
                              drpc_error *err) {
  drpc_tensor *out = device_result(op, p, t->dtype, ondim, oshape, err);
  if (out == NULL) {
    return NULL;
  }
  int64_t out_numel = drpc_tensor_numel(out);
  int rc = 0;
  if (drpc_tensor_numel(t) > 0) {
    rc = p->b->sum(p->ctx, p->s, drpc_tensor_data(out), t->dtype, out_numel,
                   device_data(t), t->dtype, t->ndim, t->shape, t->strides,
                   ostrides, err);
  } else if (out_numel > 0) {
    rc = p->b->fill(p->ctx, p->s, drpc_tensor_data(out), t->dtype, out_numel,
                    0.0, err);
  }
  return device_value(op, out, rc, err);
}

static drpc_value *op_sum(const drpc_value *args, const drpc_value *kwargs,
                          drpc_error *err) {
  const char *op = SIG_SUM.op;
  const drpc_value *bound[OPS_MAX_PARAMS] = {NULL};
  if (bind_args(&SIG_SUM, args, kwargs, bound, err) != 0) {
    return NULL;
  }
  if (bound[0]->kind != DRPC_VAL_TENSOR) {
    drpc_error_set(err, DRPC_ETYPE,
                   "%s: argument 'input' must be a tensor, not %s", op,
                   kind_name(bound[0]));
    return NULL;
  }
  const drpc_tensor *t = bound[0]->u.t;
  place where;
  if (check_tensor(op, "input", t, true, err) != 0 ||
      place_on(op, drpc_tensor_device(t), &where, err) != 0) {
    return NULL;
  }
  bool keepdim = false;
  if (bound[2] != NULL) {
    if (bound[2]->kind != DRPC_VAL_BOOL) {
      drpc_error_set(err, DRPC_ETYPE,
                     "%s: argument 'keepdim' must be bool, not %s", op,
                     kind_name(bound[2]));
      return NULL;
    }
    keepdim = bound[2]->u.b;
  }
  bool reduce[DRPC_TENSOR_MAX_DIMS];
  if (reduced_dims(op, bound[1], t->ndim, reduce, err) != 0) {
    return NULL;
  }
  /* Output shape with kept dimensions as 1, its contiguous strides, then
   * the shape actually returned (kept dimensions dropped unless keepdim). */
  int64_t kshape[DRPC_TENSOR_MAX_DIMS], ostrides[DRPC_TENSOR_MAX_DIMS];
  int64_t oshape[DRPC_TENSOR_MAX_DIMS];
  int ondim = 0;
  for (int d = 0; d < t->ndim; d++) {
    kshape[d] = reduce[d] ? 1 : t->shape[d];
    if (!reduce[d] || keepdim) {
      oshape[ondim++] = kshape[d];
    }
  }
  int64_t stride = 1;
  for (int d = t->ndim - 1; d >= 0; d--) {
    ostrides[d] = reduce[d] ? 0 : stride;
    stride *= kshape[d];
  }
  if (where.b != NULL) {
    return sum_device(op, &where, t, ostrides, ondim, oshape, err);
  }
  drpc_tensor *out = result_tensor(op, t->dtype, ondim, oshape, false, err);
  if (out == NULL) {
    return NULL;
  }
  int64_t out_numel = drpc_tensor_numel(out);
  void *acc = calloc(out_numel > 0 ? (size_t)out_numel : 1, 8);
  if (acc == NULL) {
    drpc_tensor_decref(out);
    drpc_error_set(err, DRPC_ENOMEM, "%s: out of memory", op);
    return NULL;
  }
  if (drpc_tensor_numel(t) > 0) {
    sum_kernel(t, ostrides, acc);
  }
  void *o = drpc_tensor_data(out);
  for (int64_t j = 0; j < out_numel; j++) {
    if (t->dtype == DRPC_FLOAT32) {
      ((float *)o)[j] = (float)((double *)acc)[j];
    } else if (t->dtype == DRPC_FLOAT64) {
      ((double *)o)[j] = ((double *)acc)[j];
    } else {
      ((int64_t *)o)[j] = (int64_t)((uint64_t *)acc)[j];
    }
  }
  free(acc);
  return tensor_value(op, out, err);
}

/* ---- aten::ones / aten::zeros ------------------------------------------ */

/* Parses a dtype name as PyTorch spells it ("float32", "torch.float64",
 * "long", ...). Returns false for names that are no dtype at all. */
static bool parse_dtype(const char *s, drpc_dtype *out) {
  static const struct {
    const char *name;
    drpc_dtype dt;
  } names[] = {
      {"float32", DRPC_FLOAT32}, {"float", DRPC_FLOAT32},
      {"float64", DRPC_FLOAT64}, {"double", DRPC_FLOAT64},
      {"int64", DRPC_INT64},     {"long", DRPC_INT64},
      {"int32", DRPC_INT32},     {"int", DRPC_INT32},
      {"uint8", DRPC_UINT8},     {"bool", DRPC_BOOL},
  };
  if (strncmp(s, "torch.", 6) == 0) {
    s += 6;
  }
  for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
    if (strcmp(s, names[k].name) == 0) {
      *out = names[k].dt;
      return true;
    }
  }
  return false;
}

/* Reads a size given as ints, as one list of ints, or as kwarg size. */
static int parse_size(const char *op, const drpc_value *args,
                      const drpc_value *size_kw, int64_t *shape, int *ndim,
                      drpc_error *err) {
  size_t nargs = args ? drpc_value_len(args) : 0;
  if (nargs > 0 && size_kw != NULL) {
    return drpc_error_set(err, DRPC_EINVAL,
                          "%s: got multiple values for argument 'size'", op);
  }
  const drpc_value *list = NULL;
  size_t n;
  if (nargs == 0 && size_kw == NULL) {
    return drpc_error_set(err, DRPC_EINVAL, "%s: missing argument 'size'", op);
  }
  const drpc_value *first = nargs > 0 ? drpc_list_at(args, 0) : size_kw;
  if (first->kind == DRPC_VAL_LIST) {
    if (nargs > 1) {
      return drpc_error_set(err, DRPC_EINVAL,
                            "%s: expected a size as one list or as ints, "
                            "got %zu arguments",
                            op, nargs);
    }
    list = first;
    n = drpc_value_len(list);
  } else if (nargs > 0) {
    list = args;
    n = nargs;
  } else {
    /* size=N names a 1-d size. */
    list = NULL;
    n = 1;
  }
  if (n > DRPC_TENSOR_MAX_DIMS) {
    return drpc_error_set(err, DRPC_EINVAL,
                          "%s: a size of %zu dimensions exceeds limit %d", op,
                          n, DRPC_TENSOR_MAX_DIMS);
  }
  bool negative = false;
  for (size_t k = 0; k < n; k++) {
    const drpc_value *item = list ? drpc_list_at(list, k) : first;
    if (item->kind != DRPC_VAL_INT) {
      return drpc_error_set(err, DRPC_ETYPE,
                            "%s: argument 'size' must be a list of ints, but "
                            "found element of type %s at pos %zu",
                            op, kind_name(item), k);
    }
    shape[k] = item->u.i;
    negative = negative || item->u.i < 0;
  }
  *ndim = (int)n;
  if (negative) {
    char text[DRPC_TENSOR_MAX_DIMS * 22 + 4];
    size_t len = 0;
    text[len++] = '[';
    for (int d = 0; d < *ndim; d++) {
      len += (size_t)snprintf(text + len, sizeof text - len, "%s%lld",
                              d ? ", " : "", (long long)shape[d]);
    }
    snprintf(text + len, sizeof text - len, "]");
    int64_t bad = 0;
    for (int d = 0; d < *ndim && bad == 0; d++) {
      bad = shape[d] < 0 ? shape[d] : 0;
    }
    return drpc_error_set(err, DRPC_EINVAL,
                          "%s: Trying to create tensor with negative "
                          "dimension %lld: %s",
                          op, (long long)bad, text);
  }
  return 0;
}

static drpc_value *filled(const char *op, bool one, const drpc_value *args,
                          const drpc_value *kwargs, drpc_error *err) {
  if (check_containers(op, args, kwargs, err) != 0) {
    return NULL;
  }
  const drpc_value *size_kw = NULL, *dtype_kw = NULL, *device_kw = NULL;
  for (size_t k = 0; k < kwargs_len(kwargs); k++) {
    const char *key = kwargs->u.c.keys[k];
    const drpc_value *v = drpc_list_at(kwargs, k);
    if (strcmp(key, "size") == 0) {
      size_kw = v;
    } else if (strcmp(key, "dtype") == 0) {
      dtype_kw = v;
    } else if (strcmp(key, "device") == 0) {
      device_kw = v;
    } else {
      drpc_error_set(err, DRPC_EINVAL, "%s: unexpected keyword argument '%s'",
                     op, key);
      return NULL;
    }
  }
  drpc_dtype dt = DRPC_FLOAT32;
  place where = {DRPC_CPU, NULL, NULL, NULL};
  if (dtype_kw != NULL && dtype_kw->kind != DRPC_VAL_NIL) {
    if (dtype_kw->kind != DRPC_VAL_STR) {
      drpc_error_set(err, DRPC_ETYPE,
                     "%s: argument 'dtype' must be a string such as "
                     "\"float32\", not %s",
                     op, kind_name(dtype_kw));
      return NULL;
    }
    if (!parse_dtype(dtype_kw->u.s.data, &dt)) {
      drpc_error_set(err, DRPC_EINVAL, "%s: unknown dtype '%s'", op,
                     dtype_kw->u.s.data);
      return NULL;
    }
    if (!is_supported(dt)) {
      drpc_error_set(err, DRPC_ETYPE, "%s: unsupported dtype %s", op,
                     drpc_dtype_name(dt));
      return NULL;
    }
  }
  if (device_kw != NULL && device_kw->kind != DRPC_VAL_NIL) {
    drpc_device dev;
    if (device_kw->kind != DRPC_VAL_STR ||
        drpc_device_parse(device_kw->u.s.data, &dev) != 0) {
      drpc_error_set(err, DRPC_EINVAL, "%s: invalid device", op);
      return NULL;
    }
    if (dev.type != DRPC_DEVICE_CPU && drpc_device_backend_get(NULL) == NULL) {
      char name[16];
      drpc_error_set(err, DRPC_EUNSUPPORTED,
                     "%s: builtin ops run on the CPU, not %s: no CUDA backend",
                     op, drpc_device_format(dev, name, sizeof name));
      return NULL;
    }
    if (place_on(op, dev, &where, err) != 0) {
      return NULL;
    }
  }
  if (size_kw != NULL && size_kw->kind == DRPC_VAL_NIL) {
    size_kw = NULL;
  }
  int64_t shape[DRPC_TENSOR_MAX_DIMS];
  int ndim = 0;
  if (parse_size(op, args, size_kw, shape, &ndim, err) != 0) {
    return NULL;
  }
  if (where.b != NULL) {
    drpc_tensor *out = device_result(op, &where, dt, ndim, shape, err);
    if (out == NULL) {
      return NULL;
    }
    int64_t numel = drpc_tensor_numel(out);
    int rc = numel == 0
                 ? 0
                 : where.b->fill(where.ctx, where.s, drpc_tensor_data(out), dt,
                                 numel, one ? 1.0 : 0.0, err);
    return device_value(op, out, rc, err);
  }
  drpc_tensor *t = result_tensor(op, dt, ndim, shape, !one, err);
  if (t == NULL) {
    return NULL;
  }
  if (one) {
    int64_t numel = drpc_tensor_numel(t);
    void *data = drpc_tensor_data(t);
    for (int64_t j = 0; j < numel; j++) {
      if (dt == DRPC_FLOAT32) {
        ((float *)data)[j] = 1.0f;
      } else if (dt == DRPC_FLOAT64) {
        ((double *)data)[j] = 1.0;
      } else {
        ((int64_t *)data)[j] = 1;
      }
    }
  }
  return tensor_value(op, t, err);
}

static drpc_value *op_ones(const drpc_value *args, const drpc_value *kwargs,
                           drpc_error *err) {
  return filled("aten::ones", true, args, kwargs, err);
}

static drpc_value *op_zeros(const drpc_value *args, const drpc_value *kwargs,
                            drpc_error *err) {
  return filled("aten::zeros", false, args, kwargs, err);
}

/* ---- aten::clone ------------------------------------------------------- */

static const op_sig SIG_CLONE = {"aten::clone", {"input"}, 1, 1};

static drpc_value *op_clone(const drpc_value *args, const drpc_value *kwargs,
                            drpc_error *err) {
  const char *op = SIG_CLONE.op;
  const drpc_value *bound[OPS_MAX_PARAMS] = {NULL};
  if (bind_args(&SIG_CLONE, args, kwargs, bound, err) != 0) {
    return NULL;
  }
  if (bound[0]->kind != DRPC_VAL_TENSOR) {
    drpc_error_set(err, DRPC_ETYPE,
                   "%s: argument 'input' must be a tensor, not %s", op,
                   kind_name(bound[0]));
    return NULL;
  }
  /* Copying bytes needs no arithmetic, so clone takes every dtype. */
  const drpc_tensor *t = bound[0]->u.t;
  place where;
  if (check_tensor(op, "input", t, false, err) != 0 ||
      place_on(op, drpc_tensor_device(t), &where, err) != 0) {
    return NULL;
  }
  if (where.b != NULL) {
    /* A contiguous copy on the same device, as drpc_tensor_clone makes on
     * the CPU. */
    drpc_tensor *out =
        device_result(op, &where, t->dtype, t->ndim, t->shape, err);
    if (out == NULL) {
      return NULL;
    }
    int rc =
        drpc_tensor_numel(t) == 0
            ? 0
            : where.b->strided_copy(where.ctx, where.s, drpc_tensor_data(out),
                                    t->dtype, device_data(t), t->dtype, t->ndim,
                                    t->shape, t->strides, err);
    return device_value(op, out, rc, err);
  }
  drpc_tensor *c = drpc_tensor_clone(t);
  if (c == NULL) {
    drpc_error_set(err, DRPC_ENOMEM, "%s: out of memory", op);
    return NULL;
  }
  return tensor_value(op, c, err);
}

/* ---- aten::matmul ------------------------------------------------------ */

static const op_sig SIG_MATMUL = {"aten::matmul", {"input", "other"}, 2, 2};

/* Copies a 2-D tensor into a contiguous buffer of the compute dtype. */
static void *to_compute(const drpc_tensor *t, drpc_dtype dt) {
  int64_t rows = t->shape[0], cols = t->shape[1];
  size_t n = (size_t)(rows * cols);
  char *buf = malloc(n > 0 ? n * drpc_dtype_size(dt) : 1);
  if (buf == NULL) {
    return NULL;
  }
  size_t elem_size = drpc_dtype_size(t->dtype);
  /* An empty tensor may have no storage data to offset from. */
  for (int64_t r = 0; cols > 0 && r < rows; r++) {
    const char *src = (const char *)t->storage->data +
                      (t->offset + r * t->strides[0]) * (int64_t)elem_size;
    convert_run(src, t->dtype, t->strides[1], cols,
                buf + (size_t)(r * cols) * drpc_dtype_size(dt), dt);
  }
  return buf;
}

/* C = A B with A m x k and B k x n, all contiguous. The i-k-j order walks B
 * and C along rows, so the inner loop is unit-stride and vectorises. */
#define MATMUL_IKJ(NAME, TYPE, MUL, ADD)                                       \
  static void NAME(const TYPE *a, const TYPE *b, TYPE *c, int64_t m,           \
                   int64_t k, int64_t n) {                                     \
    memset(c, 0, (size_t)(m * n) * sizeof(TYPE));                              \
    for (int64_t i = 0; i < m; i++) {                                          \
      TYPE *crow = c + i * n;                                                  \
      for (int64_t p = 0; p < k; p++) {                                        \
        TYPE aip = a[i * k + p];                                               \
        const TYPE *brow = b + p * n;                                          \
        for (int64_t j = 0; j < n; j++) {                                      \
          crow[j] = ADD(crow[j], MUL(aip, brow[j]));                           \
        }                                                                      \
      }                                                                        \
    }                                                                          \
  }

#define FLOAT_MUL(x, y) ((x) * (y))
#define FLOAT_ADD(x, y) ((x) + (y))
/* int64 products and sums wrap, as in PyTorch. */
#define WRAP_MUL(x, y) ((int64_t)((uint64_t)(x) * (uint64_t)(y)))
#define WRAP_ADD(x, y) ((int64_t)((uint64_t)(x) + (uint64_t)(y)))

MATMUL_IKJ(matmul_f32, float, FLOAT_MUL, FLOAT_ADD)
MATMUL_IKJ(matmul_f64, double, FLOAT_MUL, FLOAT_ADD)
MATMUL_IKJ(matmul_i64, int64_t, WRAP_MUL, WRAP_ADD)

/* The product as one kernel on p's device, over contiguous copies of the
 * operands in the compute dtype (the operands themselves when they already
 * are). With k == 0 every sum is empty and the result is zeros. */
static drpc_value *matmul_device(const char *op, const place *p,
                                 const drpc_tensor *a, const drpc_tensor *b,
                                 drpc_dtype dt, drpc_error *err) {
  int64_t m = a->shape[0], k = a->shape[1], n = b->shape[1];
  int64_t oshape[2] = {m, n};
  drpc_tensor *out = device_result(op, p, dt, 2, oshape, err);
  if (out == NULL) {
    return NULL;
  }
  int rc = 0;
  if (m > 0 && n > 0 && k == 0) {
    rc = p->b->fill(p->ctx, p->s, drpc_tensor_data(out), dt, m * n, 0.0, err);
  } else if (m > 0 && n > 0) {
    drpc_tensor *ta = NULL, *tb = NULL;
    const void *da = NULL, *db = NULL;
    rc = device_dense(p, a, dt, &ta, &da, err);
    if (rc == 0) {
      rc = device_dense(p, b, dt, &tb, &db, err);
    }
    if (rc == 0) {
      rc = p->b->matmul(p->ctx, p->s, drpc_tensor_data(out), dt, da, db, m, k,
                        n, err);
    }
    drpc_tensor_decref(ta);
    drpc_tensor_decref(tb);
  }
  return device_value(op, out, rc, err);
}

static drpc_value *op_matmul(const drpc_value *args, const drpc_value *kwargs,
                             drpc_error *err) {
  const char *op = SIG_MATMUL.op;
  const drpc_value *bound[OPS_MAX_PARAMS] = {NULL};
  if (bind_args(&SIG_MATMUL, args, kwargs, bound, err) != 0) {
    return NULL;
  }
  for (int p = 0; p < 2; p++) {
    if (bound[p]->kind != DRPC_VAL_TENSOR) {
      drpc_error_set(err, DRPC_ETYPE,
                     "%s: argument '%s' must be a tensor, not %s", op,
                     SIG_MATMUL.params[p], kind_name(bound[p]));
      return NULL;
    }
    if (check_tensor(op, SIG_MATMUL.params[p], bound[p]->u.t, true, err) != 0) {
      return NULL;
    }
  }
  const drpc_tensor *a = bound[0]->u.t, *b = bound[1]->u.t;
  const drpc_tensor *ts[2] = {a, b};
  drpc_device dev;
  place where;
  if (common_device(op, ts, 2, &dev, err) != 0 ||
      place_on(op, dev, &where, err) != 0) {
    return NULL;
  }
  if (a->ndim != 2 || b->ndim != 2) {
    drpc_error_set(err, DRPC_EINVAL,
                   "%s: only 2-D tensors are supported, got %d-D and %d-D", op,
                   a->ndim, b->ndim);
    return NULL;
  }
  if (a->shape[1] != b->shape[0]) {
    drpc_error_set(err, DRPC_EINVAL,
                   "%s: mat1 and mat2 shapes cannot be multiplied "
                   "(%lldx%lld and %lldx%lld)",
                   op, (long long)a->shape[0], (long long)a->shape[1],
                   (long long)b->shape[0], (long long)b->shape[1]);
    return NULL;
  }
  drpc_dtype dt = promote(a->dtype, b->dtype);
  int64_t m = a->shape[0], k = a->shape[1], n = b->shape[1];
  int64_t oshape[2] = {m, n};
  if (where.b != NULL) {
    return matmul_device(op, &where, a, b, dt, err);
  }
  drpc_tensor *out = result_tensor(op, dt, 2, oshape, false, err);
  if (out == NULL) {
    return NULL;
  }
  void *ca = to_compute(a, dt);
  void *cb = to_compute(b, dt);
  if (ca == NULL || cb == NULL) {
    free(ca);
    free(cb);
    drpc_tensor_decref(out);
    drpc_error_set(err, DRPC_ENOMEM, "%s: out of memory", op);
    return NULL;
  }
  void *c = drpc_tensor_data(out);
  if (dt == DRPC_FLOAT32) {
    matmul_f32(ca, cb, c, m, k, n);
  } else if (dt == DRPC_FLOAT64) {
    matmul_f64(ca, cb, c, m, k, n);
  } else {
    matmul_i64(ca, cb, c, m, k, n);
  }
  free(ca);
  free(cb);
  return tensor_value(op, out, err);
}

/* ---- registry ---------------------------------------------------------- */

static const struct {
  const char *name;
  drpc_op_fn fn;
} OPS[] = {
    {"aten::add", op_add},       {"aten::sub", op_sub},
    {"aten::mul", op_mul},       {"aten::div", op_div},
    {"aten::sum", op_sum},       {"aten::ones", op_ones},
    {"aten::zeros", op_zeros},   {"aten::clone", op_clone},
    {"aten::matmul", op_matmul},
};

#define OPS_COUNT (sizeof OPS / sizeof OPS[0])

static const char *const OP_NAMES[OPS_COUNT + 1] = {
    "aten::add",  "aten::sub",   "aten::mul",   "aten::div",    "aten::sum",
    "aten::ones", "aten::zeros", "aten::clone", "aten::matmul", NULL,
};

drpc_op_fn drpc_op_lookup(const char *name) {
  if (name == NULL) {
    return NULL;
  }
  for (size_t k = 0; k < OPS_COUNT; k++) {
    if (strcmp(OPS[k].name, name) == 0) {
      return OPS[k].fn;
    }
  }
  return NULL;
}

drpc_value *drpc_op_run(const char *name, const drpc_value *args,
                        const drpc_value *kwargs, drpc_error *err) {
  drpc_op_fn fn = drpc_op_lookup(name);
  if (fn == NULL) {
    drpc_error_set(err, DRPC_ENOTFOUND, "unknown builtin operator '%s'",
                   name ? name : "(null)");
    return NULL;
  }
  return fn(args, kwargs, err);
}

const char *const *drpc_op_names(void) {
  return OP_NAMES;
}
