/* simcuda: a simulated CUDA device in host memory whose streams run their
 * work only when something waits for it, so that a missing wait shows up as
 * stale data in tests on machines with no GPU. */
#include "drpc/gpu.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Device and pinned host memory are aligned as drpc's CPU storage is
 * (DRPC_TENSOR_ALIGN); cudaMalloc gives at least this. */
#define SIM_ALIGN 64
/* Fresh and freed device memory is filled with this byte, so that reading
 * memory nothing wrote, or memory already handed back, gives garbage rather
 * than the zeros or old values a real allocator often leaves. */
#define SIM_POISON 0xCD
/* Work one stream may hold. Past it the stream runs its queue before taking
 * more, so memory stays bounded when nothing ever waits; a test that wants
 * laziness queues far less (tests/test_device.c checks the bound). */
#define SIM_QUEUE_MAX 65536
/* Waits a flush follows inside one another. A wait only refers to work
 * queued before it, so a chain visits each stream at most once and stays
 * below the number of streams; the bound catches a broken invariant rather
 * than a deep program. */
#define SIM_FLUSH_DEPTH_MAX 1024
/* IPC handles: 8 bytes of allocation or event id, then 8 bytes of magic
 * telling memory from events. Ids are counters, so handles (which travel
 * in frames) are the same in every run of a simulation, unlike addresses. */
#define SIM_HANDLE_LEN 16
#define SIM_EVENT_MAGIC 0x53494d4556454e54ull /* "SIMEVENT" */
#define SIM_ALLOC_MAGIC 0x53494d414c4c4f43ull /* "SIMALLOC" */

typedef enum op_kind {
  OP_COPY,
  OP_FILL,
  OP_STRIDED,
  OP_BINARY,
  OP_SUM,
  OP_MATMUL,
  OP_WAIT,
  OP_FREE,
} op_kind;

static const char *const OP_NAMES[] = {
    "copy", "fill", "strided_copy", "binary", "sum", "matmul", "wait", "free",
};

/* Device bytes [lo, hi) on device index that an op touches, and the
 * allocation they were in when the op was queued. */
typedef struct range {
  int index;
  uintptr_t lo, hi;
  uint64_t id;
} range;

/* One queued piece of work. Everything the caller passed by pointer
 * (shapes, strides, operands, host sources) is copied in at enqueue time,
 * since callers hand over stack memory and return at once. */
typedef struct op {
  struct op *next;
  uint64_t seq;
  uint64_t cost_ns; /* its duration on a clock (see charge) */
  op_kind kind;
  int nranges;
  range ranges[3];
  union {
    struct {
      void *dst;
      const void *src; /* device source, or NULL: snapshot holds it */
      void *snapshot;  /* a host source, read at enqueue time */
      size_t n;
    } copy;
    struct {
      void *dst;
      drpc_dtype dt;
      int64_t n;
      double value;
    } fill;
    struct {
      void *dst;
      drpc_dtype ddt, sdt;
      const void *src;
      int ndim;
      int64_t shape[DRPC_TENSOR_MAX_DIMS];
      int64_t strides[DRPC_TENSOR_MAX_DIMS];
    } strided;
    struct {
      void *dst;
      drpc_dtype dt;
      drpc_devop op;
      int ndim;
      int64_t shape[DRPC_TENSOR_MAX_DIMS];
      drpc_dev_operand a, b;
      double alpha_f;
      int64_t alpha_i;
    } binary;
    struct {
      void *dst;
      drpc_dtype ddt, sdt;
      int64_t dst_numel;
      const void *src;
      int ndim;
      int64_t shape[DRPC_TENSOR_MAX_DIMS];
      int64_t src_strides[DRPC_TENSOR_MAX_DIMS];
      int64_t dst_strides[DRPC_TENSOR_MAX_DIMS];
      void *acc; /* dst_numel doubles or uint64s, taken at enqueue time */
    } sum;
    struct {
      void *dst;
      drpc_dtype dt;
      const void *a, *b;
      int64_t m, k, n;
    } matmul;
    struct {
      drpc_stream *on;
      uint64_t seq;
    } wait;
    struct {
      char *base;
    } free;
  } u;
} op;

struct drpc_stream {
  int index; /* first: drpc_stream_device reads it */
  void *owner;
  uint64_t queued; /* seq of the last op queued (0: none yet) */
  uint64_t done;   /* seq of the last op run */
  size_t pending;
  op *head, *tail;
  drpc_stream *next; /* stream_new's streams, for shutdown */
  /* With a clock: the virtual time at which the work queued so far is
   * done (see drpc_simcuda_set_clock). */
  uint64_t busy_ns;
};

struct drpc_devevent {
  int index;
  bool ipc;
  int refs; /* ipc_event_open hands out the same event again */
  uint64_t id;
  drpc_stream *stream; /* NULL: never recorded, so complete */
  uint64_t seq;
  uint64_t ready_ns; /* with a clock: when its stream reaches the point */
  drpc_devevent *prev, *next;
};

typedef struct alloc_rec {
  char *base;
  size_t nbytes;
  uint64_t id;
  int index;
  bool freeing; /* its free is queued: no new work may use it */
} alloc_rec;

typedef struct sim {
  pthread_mutex_t mu;
  int ndevices;
  drpc_stream defaults[DRPC_DEVICE_MAX];
  drpc_stream *streams;
  drpc_devevent *events;
  /* Live allocations sorted by base, for lookups by any address inside. */
  alloc_rec *allocs;
  size_t nallocs, cap;
  size_t allocated[DRPC_DEVICE_MAX];
  uint64_t next_id;
  uint64_t ops_run;
  /* The first error met while running queued work, reported (and cleared)
   * by the next sync, as CUDA reports a kernel's fault. */
  int fault;
  char fault_msg[256];
  /* The virtual-time cost model, when a simulator installed one. */
  bool timed;
  drpc_simcuda_clock clk;
  drpc_simcuda_stats stats;
} sim;

static sim *lock(void *ctx) {
  sim *c = ctx;
  pthread_mutex_lock(&c->mu);
  return c;
}

static void unlock(sim *c) {
  pthread_mutex_unlock(&c->mu);
}

static void set_fault(sim *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_fault(sim *c, int code, const char *fmt, ...) {
  if (c->fault)
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->fault_msg, sizeof c->fault_msg, fmt, ap);
  va_end(ap);
  c->fault = code;
}

static int take_fault(sim *c, drpc_error *err) {
  if (!c->fault)
    return 0;
  int rc = drpc_error_set(err, c->fault, "%s", c->fault_msg);
  c->fault = 0;
  return rc;
}

/* ---- allocations ------------------------------------------------------- */

/* The position of the last allocation with base <= p (nallocs when none). */
static size_t alloc_floor(const sim *c, uintptr_t p) {
  size_t lo = 0, hi = c->nallocs;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if ((uintptr_t)c->allocs[mid].base <= p)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo == 0 ? c->nallocs : lo - 1;
}

/* The allocation holding address p (a 0-byte one holds its base). */
static alloc_rec *alloc_find(sim *c, uintptr_t p) {
  size_t i = alloc_floor(c, p);
  if (i == c->nallocs)
    return NULL;
  alloc_rec *a = &c->allocs[i];
  size_t extent = a->nbytes ? a->nbytes : 1;
  return p - (uintptr_t)a->base < extent ? a : NULL;
}

static alloc_rec *alloc_exact(sim *c, const void *base) {
  alloc_rec *a = alloc_find(c, (uintptr_t)base);
  return a && a->base == base ? a : NULL;
}

static void alloc_remove(sim *c, alloc_rec *a) {
  size_t i = (size_t)(a - c->allocs);
  memmove(a, a + 1, (c->nallocs - i - 1) * sizeof *a);
  c->nallocs--;
}

/* Why range r cannot be touched, or NULL when it can. At enqueue time an
 * allocation whose free is queued is gone already, and r learns which
 * allocation it is in. When the work runs that allocation only has to be
 * still there (the work was queued before its free): not freed, and not
 * freed and replaced by another at the same address. */
static const char *range_problem(sim *c, range *r, bool enqueue) {
  if (r->hi <= r->lo)
    return r->hi == r->lo ? NULL : "an address range that wraps";
  alloc_rec *a = alloc_find(c, r->lo);
  if (!enqueue)
    return a && a->id == r->id ? NULL : "memory freed before the work ran";
  if (!a)
    return "not device memory";
  if (a->index != r->index)
    return "memory of another device";
  if (r->hi - (uintptr_t)a->base > a->nbytes)
    return "past the end of its allocation";
  if (a->freeing)
    return "memory already freed";
  r->id = a->id;
  return NULL;
}

/* ---- streams and the queue --------------------------------------------- */

static int check_stream(sim *c, const drpc_stream *s, drpc_error *err) {
  if (!s || s->owner != c || s->index < 0 || s->index >= c->ndevices)
    return drpc_error_set(err, DRPC_EINVAL, "simcuda: no such stream");
  return 0;
}

static void run(sim *c, drpc_stream *s, op *o);
static void op_free(op *o);

/* Runs s's queue up to and including op upto. A wait first runs the stream
 * it waits for up to the recorded point. */
static int flush(sim *c, drpc_stream *s, uint64_t upto, int depth,
                 drpc_error *err) {
  if (depth > SIM_FLUSH_DEPTH_MAX)
    return drpc_error_set(err, DRPC_ESTATE,
                          "simcuda: stream waits nest deeper than %d",
                          SIM_FLUSH_DEPTH_MAX);
  while (s->done < upto && s->head) {
    op *o = s->head;
    /* The wait stays at the head while its stream runs; that stream's
     * work was queued earlier and never waits for this op. */
    if (o->kind == OP_WAIT) {
      int rc = flush(c, o->u.wait.on, o->u.wait.seq, depth + 1, err);
      if (rc)
        return rc;
    }
    s->head = o->next;
    if (!s->head)
      s->tail = NULL;
    s->pending--;
    run(c, s, o);
    s->done = o->seq;
    op_free(o);
  }
  return 0;
}

/* Appends a heap copy of *proto to s. */
static int push(sim *c, drpc_stream *s, const op *proto, drpc_error *err) {
  op *o = malloc(sizeof *o);
  if (!o)
    return drpc_error_set(err, DRPC_ENOMEM, "simcuda: out of memory");
  *o = *proto;
  if (s->pending >= SIM_QUEUE_MAX)
    flush(c, s, s->queued, 0, NULL);
  o->next = NULL;
  o->seq = ++s->queued;
  if (s->tail)
    s->tail->next = o;
  else
    s->head = o;
  s->tail = o;
  s->pending++;
  return 0;
}

/* ---- virtual time ------------------------------------------------------ */

static uint64_t add_sat(uint64_t a, uint64_t b) {
  return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* ns for x units at rate per second, saturated. */
static uint64_t ns_for(double x, double per_s) {
  double ns = x * 1e9 / per_s;
  return ns >= 1.8e19 ? UINT64_MAX : (uint64_t)ns;
}

static uint64_t copy_cost(const sim *c, size_t n, bool scuda, bool dcuda,
                          bool same_device) {
  if (!c->timed)
    return 0;
  double bps = !scuda        ? c->clk.h2d_Bps
               : !dcuda      ? c->clk.d2h_Bps
               : same_device ? c->clk.d2d_Bps
                             : c->clk.p2p_Bps;
  return add_sat(c->clk.latency_ns, ns_for((double)n, bps));
}

static uint64_t kernel_cost(const sim *c, int64_t elems) {
  if (!c->timed)
    return 0;
  double ns = (double)elems * c->clk.elem_ns;
  return add_sat(c->clk.launch_ns, ns >= 1.8e19 ? UINT64_MAX : (uint64_t)ns);
}

/* Gives the op just queued on s its place in virtual time: it starts when
 * both the host (now) and the stream are ready. */
static void charge(sim *c, drpc_stream *s, uint64_t cost_ns) {
  if (!c->timed)
    return;
  uint64_t now = c->clk.now_ns(c->clk.arg);
  uint64_t start = s->busy_ns > now ? s->busy_ns : now;
  s->busy_ns = add_sat(start, cost_ns);
  c->stats.ops_timed++;
  c->stats.busy_ns = add_sat(c->stats.busy_ns, cost_ns);
}

/* What a host sync must do after unlocking: sleep until wake_ns. */
typedef struct sleep_plan {
  bool (*sleep_until)(void *arg, uint64_t t_ns);
  void *arg;
  uint64_t wake_ns;
} sleep_plan;

/* Plans the wait of a host sync for work done at done_ns (under the
 * lock). */
static sleep_plan plan_sleep(sim *c, uint64_t done_ns) {
  sleep_plan p = {NULL, NULL, 0};
  if (!c->timed || !c->clk.sleep_until)
    return p;
  uint64_t now = c->clk.now_ns(c->clk.arg);
  if (done_ns <= now)
    return p;
  p.sleep_until = c->clk.sleep_until;
  p.arg = c->clk.arg;
  p.wake_ns = done_ns;
  c->stats.slept_ns = add_sat(c->stats.slept_ns, done_ns - now);
  return p;
}

/* Carries out a plan; never called with the lock held, since the fiber
 * that sleeps lets every other fiber of the simulation run meanwhile. */
static void do_sleep(sim *c, const sleep_plan *p) {
  if (!p->sleep_until)
    return;
  bool slept = p->sleep_until(p->arg, p->wake_ns);
  lock(c);
  if (slept)
    c->stats.syncs_slept++;
  else
    c->stats.syncs_unslept++;
  unlock(c);
}

/* Checks the ranges of a new op and queues it; frees what the op owns when
 * it cannot be queued. */
static int enqueue(sim *c, drpc_stream *s, op *o, drpc_error *err) {
  int rc = 0;
  for (int i = 0; i < o->nranges && !rc; i++) {
    range *r = &o->ranges[i];
    const char *why = range_problem(c, r, true);
    if (why)
      rc = drpc_error_set(err, DRPC_EINVAL,
                          "simcuda %s: %zu bytes at %p on cuda:%d: %s",
                          OP_NAMES[o->kind], (size_t)(r->hi - r->lo),
                          (void *)r->lo, r->index, why);
  }
  if (!rc)
    rc = push(c, s, o, err);
  if (!rc)
    charge(c, s, o->cost_ns);
  if (rc) {
    if (o->kind == OP_COPY)
      free(o->u.copy.snapshot);
    if (o->kind == OP_SUM)
      free(o->u.sum.acc);
  }
  return rc;
}

/* ---- element access ---------------------------------------------------- */

/* An element on its way between dtypes: kept as it was read (a double for
 * floating dtypes, an int64 otherwise), so that each conversion is the
 * single C cast from the source type. */
typedef struct num {
  bool is_f;
  double f;
  int64_t i;
} num;

/* float to int as CUDA's conversions do it (C leaves the rest undefined):
 * truncation, saturation at the ends, 0 for NaN. */
static int64_t f_to_i64(double f) {
  if (f != f)
    return 0;
  if (f >= 9223372036854775808.0)
    return INT64_MAX;
  if (f < -9223372036854775808.0)
    return INT64_MIN;
  return (int64_t)f;
}

static num load(const char *p, drpc_dtype dt) {
  num v = {false, 0, 0};
  switch (dt) {
  case DRPC_FLOAT32: {
    float x;
    memcpy(&x, p, sizeof x);
    v.is_f = true;
    v.f = x;
    break;
  }
  case DRPC_FLOAT64:
    memcpy(&v.f, p, sizeof v.f);
    v.is_f = true;
    break;
  case DRPC_INT64:
    memcpy(&v.i, p, sizeof v.i);
    break;
  case DRPC_INT32: {
    int32_t x;
    memcpy(&x, p, sizeof x);
    v.i = x;
    break;
  }
  case DRPC_UINT8:
    v.i = *(const uint8_t *)p;
    break;
  case DRPC_BOOL:
    v.i = *(const uint8_t *)p != 0;
    break;
  default:
    break;
  }
  return v;
}

static void store(char *p, drpc_dtype dt, num v) {
  int64_t i = v.is_f ? f_to_i64(v.f) : v.i;
  switch (dt) {
  case DRPC_FLOAT32: {
    float x = v.is_f ? (float)v.f : (float)v.i;
    memcpy(p, &x, sizeof x);
    break;
  }
  case DRPC_FLOAT64: {
    double x = v.is_f ? v.f : (double)v.i;
    memcpy(p, &x, sizeof x);
    break;
  }
  case DRPC_INT64:
    memcpy(p, &i, sizeof i);
    break;
  case DRPC_INT32: {
    int32_t x = (int32_t)(uint32_t)i;
    memcpy(p, &x, sizeof x);
    break;
  }
  case DRPC_UINT8:
    *(uint8_t *)p = (uint8_t)i;
    break;
  case DRPC_BOOL:
    *(uint8_t *)p = v.is_f ? v.f != 0 : v.i != 0;
    break;
  default:
    break;
  }
}

/* v as an element of dt (float32 rounds here, once). */
static num convert(num v, drpc_dtype dt) {
  char buf[8];
  store(buf, dt, v);
  return load(buf, dt);
}

static int64_t dot(int ndim, const int64_t *idx, const int64_t *strides) {
  int64_t off = 0;
  for (int d = 0; d < ndim; d++)
    off += idx[d] * strides[d];
  return off;
}

/* Steps idx to the next element in row-major order. */
static void next_index(int ndim, const int64_t *shape, int64_t *idx) {
  for (int d = ndim - 1; d >= 0; d--) {
    if (++idx[d] < shape[d])
      return;
    idx[d] = 0;
  }
}

static void copy_dims(int64_t *dst, const int64_t *src, int ndim) {
  if (ndim > 0)
    memcpy(dst, src, (size_t)ndim * sizeof *dst);
}

static int64_t numel_of(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int d = 0; d < ndim; d++)
    n *= shape[d];
  return n;
}

/* ---- kernels ----------------------------------------------------------- */

static void run_strided(op *o) {
  size_t des = drpc_dtype_size(o->u.strided.ddt);
  size_t ses = drpc_dtype_size(o->u.strided.sdt);
  int nd = o->u.strided.ndim;
  int64_t n = numel_of(nd, o->u.strided.shape);
  int64_t idx[DRPC_TENSOR_MAX_DIMS] = {0};
  char *dst = o->u.strided.dst;
  const char *src = o->u.strided.src;
  for (int64_t j = 0; j < n; j++) {
    int64_t off = dot(nd, idx, o->u.strided.strides);
    store(dst + j * (int64_t)des, o->u.strided.ddt,
          load(src + off * (int64_t)ses, o->u.strided.sdt));
    next_index(nd, o->u.strided.shape, idx);
  }
}

/* Operand o's element at idx in the compute dtype dt. Numbers come already
 * in dt's terms (core converts them as its CPU loop does); an int64 result
 * takes the integer. */
static num operand_at(const drpc_dev_operand *o, int ndim, const int64_t *idx,
                      drpc_dtype dt) {
  num v;
  if (o->data) {
    int64_t off = dot(ndim, idx, o->strides);
    v = load((const char *)o->data + off * (int64_t)drpc_dtype_size(o->dtype),
             o->dtype);
  } else if (dt == DRPC_INT64) {
    v = (num){false, 0, o->i};
  } else {
    v = (num){o->is_float, o->f, o->i};
  }
  return convert(v, dt);
}

static void run_binary(op *o) {
  drpc_dtype dt = o->u.binary.dt;
  size_t es = drpc_dtype_size(dt);
  int nd = o->u.binary.ndim;
  int64_t n = numel_of(nd, o->u.binary.shape);
  int64_t idx[DRPC_TENSOR_MAX_DIMS] = {0};
  char *dst = o->u.binary.dst;
  for (int64_t j = 0; j < n; j++) {
    num a = operand_at(&o->u.binary.a, nd, idx, dt);
    num b = operand_at(&o->u.binary.b, nd, idx, dt);
    num r = {dt != DRPC_INT64, 0, 0};
    if (r.is_f) {
      /* float32 too: double arithmetic, rounded once by store. */
      double al = o->u.binary.alpha_f;
      switch (o->u.binary.op) {
      case DRPC_DEVOP_ADD:
        r.f = a.f + al * b.f;
        break;
      case DRPC_DEVOP_SUB:
        r.f = a.f - al * b.f;
        break;
      case DRPC_DEVOP_MUL:
        r.f = a.f * b.f;
        break;
      case DRPC_DEVOP_DIV:
        r.f = a.f / b.f;
        break;
      }
    } else {
      /* Unsigned arithmetic wraps as PyTorch's int64 does, without UB. */
      uint64_t x = (uint64_t)a.i, y = (uint64_t)b.i;
      uint64_t al = (uint64_t)o->u.binary.alpha_i, w = 0;
      switch (o->u.binary.op) {
      case DRPC_DEVOP_ADD:
        w = x + al * y;
        break;
      case DRPC_DEVOP_SUB:
        w = x - al * y;
        break;
      case DRPC_DEVOP_MUL:
        w = x * y;
        break;
      case DRPC_DEVOP_DIV: /* refused at enqueue */
        break;
      }
      r.i = (int64_t)w;
    }
    store(dst + j * (int64_t)es, dt, r);
    next_index(nd, o->u.binary.shape, idx);
  }
}

static bool is_floating(drpc_dtype dt) {
  return dt == DRPC_FLOAT32 || dt == DRPC_FLOAT64;
}

static void run_sum(op *o) {
  drpc_dtype ddt = o->u.sum.ddt, sdt = o->u.sum.sdt;
  bool fl = is_floating(ddt);
  int64_t dn = o->u.sum.dst_numel;
  double *accf = o->u.sum.acc;
  uint64_t *acci = o->u.sum.acc;
  memset(o->u.sum.acc, 0, (size_t)dn * 8);
  int nd = o->u.sum.ndim;
  int64_t n = numel_of(nd, o->u.sum.shape);
  int64_t idx[DRPC_TENSOR_MAX_DIMS] = {0};
  size_t ses = drpc_dtype_size(sdt);
  const char *src = o->u.sum.src;
  for (int64_t j = 0; j < n; j++) {
    num v = load(src + dot(nd, idx, o->u.sum.src_strides) * (int64_t)ses, sdt);
    int64_t at = dot(nd, idx, o->u.sum.dst_strides);
    if (fl)
      accf[at] += v.is_f ? v.f : (double)v.i;
    else
      acci[at] += (uint64_t)(v.is_f ? f_to_i64(v.f) : v.i);
    next_index(nd, o->u.sum.shape, idx);
  }
  size_t des = drpc_dtype_size(ddt);
  char *dst = o->u.sum.dst;
  for (int64_t j = 0; j < dn; j++) {
    num r = fl ? (num){true, accf[j], 0} : (num){false, 0, (int64_t)acci[j]};
    store(dst + j * (int64_t)des, ddt, r);
  }
}

/* Each element is a sum over p in order, in the dtype itself (float32 adds
 * in float), as core's CPU matmul does, so results match bit for bit. */
static void run_matmul(op *o) {
  int64_t m = o->u.matmul.m, k = o->u.matmul.k, n = o->u.matmul.n;
  for (int64_t i = 0; i < m; i++) {
    for (int64_t j = 0; j < n; j++) {
      if (o->u.matmul.dt == DRPC_FLOAT32) {
        const float *a = o->u.matmul.a, *b = o->u.matmul.b;
        float acc = 0;
        for (int64_t p = 0; p < k; p++)
          acc = acc + a[i * k + p] * b[p * n + j];
        ((float *)o->u.matmul.dst)[i * n + j] = acc;
      } else if (o->u.matmul.dt == DRPC_FLOAT64) {
        const double *a = o->u.matmul.a, *b = o->u.matmul.b;
        double acc = 0;
        for (int64_t p = 0; p < k; p++)
          acc = acc + a[i * k + p] * b[p * n + j];
        ((double *)o->u.matmul.dst)[i * n + j] = acc;
      } else {
        const int64_t *a = o->u.matmul.a, *b = o->u.matmul.b;
        uint64_t acc = 0;
        for (int64_t p = 0; p < k; p++)
          acc += (uint64_t)a[i * k + p] * (uint64_t)b[p * n + j];
        ((int64_t *)o->u.matmul.dst)[i * n + j] = (int64_t)acc;
      }
    }
  }
}

static void run_free(sim *c, op *o) {
  alloc_rec *a = alloc_exact(c, o->u.free.base);
  if (!a)
    return; /* queued only for a live allocation, and only once */
  memset(a->base, SIM_POISON, a->nbytes);
  free(a->base);
  c->allocated[a->index] -= a->nbytes;
  alloc_remove(c, a);
}

static void run(sim *c, drpc_stream *s, op *o) {
  for (int i = 0; i < o->nranges; i++) {
    const char *why = range_problem(c, &o->ranges[i], false);
    if (why) {
      set_fault(c, DRPC_ESTATE,
                "simcuda %s on a stream of cuda:%d: %p on cuda:%d: %s",
                OP_NAMES[o->kind], s->index, (void *)o->ranges[i].lo,
                o->ranges[i].index, why);
      return;
    }
  }
  switch (o->kind) {
  case OP_COPY:
    memmove(o->u.copy.dst,
            o->u.copy.snapshot ? o->u.copy.snapshot : o->u.copy.src,
            o->u.copy.n);
    break;
  case OP_FILL: {
    size_t es = drpc_dtype_size(o->u.fill.dt);
    for (int64_t j = 0; j < o->u.fill.n; j++)
      store((char *)o->u.fill.dst + j * (int64_t)es, o->u.fill.dt,
            (num){true, o->u.fill.value, 0});
    break;
  }
  case OP_STRIDED:
    run_strided(o);
    break;
  case OP_BINARY:
    run_binary(o);
    break;
  case OP_SUM:
    run_sum(o);
    break;
  case OP_MATMUL:
    run_matmul(o);
    break;
  case OP_WAIT: /* flush ran the other stream first */
    return;
  case OP_FREE:
    run_free(c, o);
    return;
  }
  c->ops_run++;
}

static void op_free(op *o) {
  if (o->kind == OP_COPY)
    free(o->u.copy.snapshot);
  if (o->kind == OP_SUM)
    free(o->u.sum.acc);
  free(o);
}

/* ---- argument checks --------------------------------------------------- */

/* The element count of shape; false on a negative size or overflow. */
static bool count(int ndim, const int64_t *shape, int64_t *numel) {
  int64_t n = 1;
  for (int d = 0; d < ndim; d++) {
    if (shape[d] < 0 || __builtin_mul_overflow(n, shape[d], &n))
      return false;
  }
  *numel = n;
  return true;
}

/* The lowest and highest element offsets reached through strides over a
 * shape with no zero size; false on overflow. */
static bool span(int ndim, const int64_t *shape, const int64_t *strides,
                 int64_t *lo, int64_t *hi) {
  *lo = 0;
  *hi = 0;
  for (int d = 0; d < ndim; d++) {
    int64_t reach;
    if (__builtin_mul_overflow(shape[d] - 1, strides[d], &reach) ||
        __builtin_add_overflow(reach < 0 ? *lo : *hi, reach,
                               reach < 0 ? lo : hi))
      return false;
  }
  return true;
}

/* The bytes of elements lo..hi (inclusive) of size es from p. */
static bool make_range(range *r, int index, const void *p, int64_t lo,
                       int64_t hi, size_t es) {
  int64_t blo, bhi;
  if (__builtin_mul_overflow(lo, (int64_t)es, &blo) ||
      __builtin_add_overflow(hi, 1, &bhi) ||
      __builtin_mul_overflow(bhi, (int64_t)es, &bhi))
    return false;
  r->index = index;
  r->lo = (uintptr_t)p + (uintptr_t)blo;
  r->hi = (uintptr_t)p + (uintptr_t)bhi;
  return true;
}

/* The next range of o: n contiguous elements of size es from p. */
static int add_contig(op *o, int index, const void *p, int64_t n, size_t es,
                      drpc_error *err) {
  if (n == 0)
    return 0;
  if (!p || !make_range(&o->ranges[o->nranges], index, p, 0, n - 1, es))
    return drpc_error_set(err, DRPC_EINVAL, "simcuda %s: bad pointer or size",
                          OP_NAMES[o->kind]);
  o->nranges++;
  return 0;
}

/* The next range of o: elements read through strides over shape (numel >
 * 0). */
static int add_strided(op *o, int index, const void *p, int ndim,
                       const int64_t *shape, const int64_t *strides, size_t es,
                       drpc_error *err) {
  int64_t lo, hi;
  if (!p || !span(ndim, shape, strides, &lo, &hi) ||
      !make_range(&o->ranges[o->nranges], index, p, lo, hi, es))
    return drpc_error_set(err, DRPC_EINVAL,
                          "simcuda %s: bad pointer or strides",
                          OP_NAMES[o->kind]);
  o->nranges++;
  return 0;
}

static bool is_compute(drpc_dtype dt) {
  return dt == DRPC_FLOAT32 || dt == DRPC_FLOAT64 || dt == DRPC_INT64;
}

static int check_shape(const char *what, int ndim, const int64_t *shape,
                       int64_t *numel, drpc_error *err) {
  if (ndim < 0 || ndim > DRPC_TENSOR_MAX_DIMS || (ndim > 0 && !shape) ||
      !count(ndim, shape, numel))
    return drpc_error_set(err, DRPC_EINVAL, "simcuda %s: bad shape", what);
  return 0;
}

/* ---- the backend ------------------------------------------------------- */

static int sim_device_count(void *ctx) {
  return ((sim *)ctx)->ndevices;
}

static void *sim_alloc(void *ctx, int index, size_t nbytes, drpc_stream *s,
                       drpc_error *err) {
  sim *c = lock(ctx);
  void *p = NULL;
  if (check_stream(c, s, err))
    goto out;
  if (s->index != index) {
    drpc_error_set(err, DRPC_EINVAL,
                   "simcuda alloc: cuda:%d memory ordered on a stream of "
                   "cuda:%d",
                   index, s->index);
    goto out;
  }
  size_t want = nbytes ? nbytes : 1;
  if (want > SIZE_MAX - SIM_ALIGN) {
    drpc_error_set(err, DRPC_ENOMEM, "simcuda: out of memory (%zu bytes)",
                   nbytes);
    goto out;
  }
  if (c->nallocs == c->cap) {
    size_t cap = c->cap ? c->cap * 2 : 64;
    alloc_rec *t = realloc(c->allocs, cap * sizeof *t);
    if (!t) {
      drpc_error_set(err, DRPC_ENOMEM, "simcuda: out of memory");
      goto out;
    }
    c->allocs = t;
    c->cap = cap;
  }
  size_t size = (want + SIM_ALIGN - 1) / SIM_ALIGN * SIM_ALIGN;
  char *base = aligned_alloc(SIM_ALIGN, size);
  if (!base) {
    drpc_error_set(err, DRPC_ENOMEM, "simcuda: out of memory (%zu bytes)",
                   nbytes);
    goto out;
  }
  memset(base, SIM_POISON, size);
  size_t at = alloc_floor(c, (uintptr_t)base);
  at = at == c->nallocs ? 0 : at + 1;
  memmove(&c->allocs[at + 1], &c->allocs[at],
          (c->nallocs - at) * sizeof *c->allocs);
  c->allocs[at] = (alloc_rec){base, nbytes, ++c->next_id, index, false};
  c->nallocs++;
  c->allocated[index] += nbytes;
  p = base;
out:
  unlock(c);
  return p;
}

static void sim_free(void *ctx, int index, void *p, size_t nbytes,
                     drpc_stream *s) {
  if (!p)
    return;
  sim *c = lock(ctx);
  alloc_rec *a = alloc_exact(c, p);
  /* free returns nothing: a mistake surfaces at the next sync. */
  if (!a || a->freeing) {
    set_fault(c, DRPC_EINVAL,
              "simcuda free: %p is not a live allocation (freed twice?)", p);
    goto out;
  }
  if (a->index != index || a->nbytes != nbytes)
    set_fault(c, DRPC_EINVAL,
              "simcuda free: %p is %zu bytes on cuda:%d, freed as %zu bytes "
              "on cuda:%d",
              p, a->nbytes, a->index, nbytes, index);
  if (check_stream(c, s, NULL) || s->index != a->index)
    s = &c->defaults[a->index];
  a->freeing = true;
  op o = {.kind = OP_FREE, .u.free.base = a->base};
  if (push(c, s, &o, NULL)) {
    /* With no memory to queue it, the only safe order is now. */
    flush(c, s, s->queued, 0, NULL);
    o.nranges = 0;
    run_free(c, &o);
  }
out:
  unlock(c);
}

static void *sim_host_alloc(void *ctx, size_t nbytes, drpc_error *err) {
  (void)ctx;
  size_t want = nbytes ? nbytes : 1;
  void *p = NULL;
  if (want <= SIZE_MAX - SIM_ALIGN)
    p = aligned_alloc(SIM_ALIGN,
                      (want + SIM_ALIGN - 1) / SIM_ALIGN * SIM_ALIGN);
  if (!p)
    drpc_error_set(err, DRPC_ENOMEM, "simcuda: out of host memory (%zu bytes)",
                   nbytes);
  return p;
}

static void sim_host_free(void *ctx, void *p) {
  (void)ctx;
  free(p);
}

static drpc_stream *sim_stream_default(void *ctx, int index) {
  sim *c = ctx;
  return index >= 0 && index < c->ndevices ? &c->defaults[index] : NULL;
}

static drpc_stream *sim_stream_new(void *ctx, int index, drpc_error *err) {
  sim *c = ctx;
  if (index < 0 || index >= c->ndevices) {
    drpc_error_set(err, DRPC_EINVAL, "simcuda: no device cuda:%d", index);
    return NULL;
  }
  drpc_stream *s = calloc(1, sizeof *s);
  if (!s) {
    drpc_error_set(err, DRPC_ENOMEM, "simcuda: out of memory");
    return NULL;
  }
  s->index = index;
  s->owner = c;
  lock(c);
  s->next = c->streams;
  c->streams = s;
  unlock(c);
  return s;
}

static int sim_stream_sync(void *ctx, drpc_stream *s, drpc_error *err) {
  sim *c = lock(ctx);
  sleep_plan p = {NULL, NULL, 0};
  int rc = check_stream(c, s, err);
  if (!rc)
    rc = flush(c, s, s->queued, 0, err);
  if (!rc)
    rc = take_fault(c, err);
  if (!rc)
    p = plan_sleep(c, s->busy_ns);
  unlock(c);
  do_sleep(c, &p);
  return rc;
}

static drpc_devevent *event_make(void *ctx, int index, bool ipc,
                                 drpc_error *err) {
  sim *c = ctx;
  if (index < 0 || index >= c->ndevices) {
    drpc_error_set(err, DRPC_EINVAL, "simcuda: no device cuda:%d", index);
    return NULL;
  }
  drpc_devevent *e = calloc(1, sizeof *e);
  if (!e) {
    drpc_error_set(err, DRPC_ENOMEM, "simcuda: out of memory");
    return NULL;
  }
  e->index = index;
  e->ipc = ipc;
  e->refs = 1;
  lock(c);
  e->id = ++c->next_id;
  e->next = c->events;
  if (c->events)
    c->events->prev = e;
  c->events = e;
  unlock(c);
  return e;
}

static drpc_devevent *sim_event_new(void *ctx, int index, drpc_error *err) {
  return event_make(ctx, index, false, err);
}

static drpc_devevent *sim_ipc_event_new(void *ctx, int index, drpc_error *err) {
  return event_make(ctx, index, true, err);
}

static void event_unlink(sim *c, drpc_devevent *e) {
  if (e->prev)
    e->prev->next = e->next;
  else
    c->events = e->next;
  if (e->next)
    e->next->prev = e->prev;
  free(e);
}

static void sim_event_free(void *ctx, drpc_devevent *e) {
  if (!e)
    return;
  sim *c = lock(ctx);
  if (--e->refs == 0)
    event_unlink(c, e);
  unlock(c);
}

static int sim_event_record(void *ctx, drpc_devevent *e, drpc_stream *s,
                            drpc_error *err) {
  sim *c = lock(ctx);
  int rc = check_stream(c, s, err);
  if (!rc && !e)
    rc = drpc_error_set(err, DRPC_EINVAL, "simcuda: no such event");
  if (!rc && e->index != s->index)
    rc = drpc_error_set(err, DRPC_EINVAL,
                        "simcuda: event of cuda:%d recorded on a stream of "
                        "cuda:%d",
                        e->index, s->index);
  if (!rc) {
    e->stream = s;
    e->seq = s->queued;
    e->ready_ns = s->busy_ns;
  }
  unlock(c);
  return rc;
}

static int sim_stream_wait(void *ctx, drpc_stream *s, drpc_devevent *e,
                           drpc_error *err) {
  sim *c = lock(ctx);
  int rc = check_stream(c, s, err);
  if (!rc && !e)
    rc = drpc_error_set(err, DRPC_EINVAL, "simcuda: no such event");
  /* The point is captured now: recording e again later does not move it. */
  if (!rc && e->stream && e->stream != s && e->stream->done < e->seq) {
    op o = {.kind = OP_WAIT, .u.wait = {e->stream, e->seq}};
    rc = push(c, s, &o, err);
  }
  /* In virtual time the wait holds s until e's point even when the data
   * already ran (someone else waited for it): time and data are apart. */
  if (!rc && e->stream && e->stream != s && e->ready_ns > s->busy_ns)
    s->busy_ns = e->ready_ns;
  unlock(c);
  return rc;
}

static int sim_event_sync(void *ctx, drpc_devevent *e, drpc_error *err) {
  sim *c = lock(ctx);
  sleep_plan p = {NULL, NULL, 0};
  int rc = 0;
  if (!e)
    rc = drpc_error_set(err, DRPC_EINVAL, "simcuda: no such event");
  else if (e->stream)
    rc = flush(c, e->stream, e->seq, 0, err);
  if (!rc)
    rc = take_fault(c, err);
  if (!rc && e->stream)
    p = plan_sleep(c, e->ready_ns);
  unlock(c);
  do_sleep(c, &p);
  return rc;
}

static int sim_copy(void *ctx, void *dst, drpc_device ddev, const void *src,
                    drpc_device sdev, size_t n, drpc_stream *s,
                    drpc_error *err) {
  sim *c = lock(ctx);
  op o = {.kind = OP_COPY, .u.copy = {dst, src, NULL, n}};
  bool dcuda = ddev.type == DRPC_DEVICE_CUDA;
  bool scuda = sdev.type == DRPC_DEVICE_CUDA;
  int rc = check_stream(c, s, err);
  if (rc)
    goto out;
  if ((!dcuda && ddev.type != DRPC_DEVICE_CPU) ||
      (!scuda && sdev.type != DRPC_DEVICE_CPU)) {
    rc = drpc_error_set(err, DRPC_EINVAL, "simcuda copy: bad device type");
    goto out;
  }
  if (!(dcuda && ddev.index == s->index) &&
      !(scuda && sdev.index == s->index)) {
    rc = drpc_error_set(err, DRPC_EINVAL,
                        "simcuda copy: the stream (cuda:%d) is on neither "
                        "device of the copy",
                        s->index);
    goto out;
  }
  if (n == 0)
    goto out;
  if (!dst || !src) {
    rc = drpc_error_set(err, DRPC_EINVAL, "simcuda copy: NULL pointer");
    goto out;
  }
  if ((dcuda && (rc = add_contig(&o, ddev.index, dst, (int64_t)n, 1, err))) ||
      (scuda && (rc = add_contig(&o, sdev.index, src, (int64_t)n, 1, err))))
    goto out;
  if (!scuda) {
    /* As cudaMemcpyAsync from pageable memory: the host source may be
     * reused once the call returns (core frees staging tensors at once). */
    o.u.copy.snapshot = malloc(n);
    if (!o.u.copy.snapshot) {
      rc = drpc_error_set(err, DRPC_ENOMEM, "simcuda: out of memory");
      goto out;
    }
    memcpy(o.u.copy.snapshot, src, n);
  }
  o.cost_ns = copy_cost(c, n, scuda, dcuda,
                        !scuda || !dcuda || sdev.index == ddev.index);
  rc = enqueue(c, s, &o, err);
  if (!rc && c->timed)
    c->stats.copy_bytes += n;
out:
  unlock(c);
  return rc;
}

static int sim_fill(void *ctx, drpc_stream *s, void *dst, drpc_dtype dt,
                    int64_t n, double value, drpc_error *err) {
  sim *c = lock(ctx);
  op o = {.kind = OP_FILL, .u.fill = {dst, dt, n, value}};
  int rc = check_stream(c, s, err);
  if (!rc && (drpc_dtype_size(dt) == 0 || n < 0))
    rc = drpc_error_set(err, DRPC_EINVAL, "simcuda fill: bad dtype or count");
  o.cost_ns = kernel_cost(c, n);
  if (!rc && n > 0 &&
      !(rc = add_contig(&o, s->index, dst, n, drpc_dtype_size(dt), err)))
    rc = enqueue(c, s, &o, err);
  unlock(c);
  return rc;
}

static int sim_strided_copy(void *ctx, drpc_stream *s, void *dst,
                            drpc_dtype ddt, const void *src, drpc_dtype sdt,
                            int ndim, const int64_t *shape,
                            const int64_t *strides, drpc_error *err) {
  sim *c = lock(ctx);
  op o = {.kind = OP_STRIDED};
  int64_t n = 0;
  int rc = check_stream(c, s, err);
  if (!rc && (drpc_dtype_size(ddt) == 0 || drpc_dtype_size(sdt) == 0))
    rc = drpc_error_set(err, DRPC_EINVAL, "simcuda strided_copy: bad dtype");
  if (!rc)
    rc = check_shape("strided_copy", ndim, shape, &n, err);
  if (!rc && ndim > 0 && !strides)
    rc = drpc_error_set(err, DRPC_EINVAL, "simcuda strided_copy: no strides");
  if (rc || n == 0)
    goto out;
  o.u.strided.dst = dst;
  o.u.strided.ddt = ddt;
  o.u.strided.src = src;
  o.u.strided.sdt = sdt;
  o.u.strided.ndim = ndim;
  copy_dims(o.u.strided.shape, shape, ndim);
  copy_dims(o.u.strided.strides, strides, ndim);
  o.cost_ns = kernel_cost(c, n);
  if (!(rc = add_contig(&o, s->index, dst, n, drpc_dtype_size(ddt), err)) &&
      !(rc = add_strided(&o, s->index, src, ndim, shape, strides,
                         drpc_dtype_size(sdt), err)))
    rc = enqueue(c, s, &o, err);
out:
  unlock(c);
  return rc;
}

static int add_operand(op *o, int index, const drpc_dev_operand *x, int ndim,
                       const int64_t *shape, drpc_error *err) {
  if (!x)
    return drpc_error_set(err, DRPC_EINVAL, "simcuda binary: no operand");
  if (!x->data)
    return 0;
  if (!is_compute(x->dtype))
    return drpc_error_set(err, DRPC_EINVAL,
                          "simcuda binary: operand dtype %s is not a compute "
                          "dtype",
                          drpc_dtype_name(x->dtype));
  return add_strided(o, index, x->data, ndim, shape, x->strides,
                     drpc_dtype_size(x->dtype), err);
}

static int sim_binary(void *ctx, drpc_stream *s, drpc_devop bop, void *dst,
                      drpc_dtype dt, int ndim, const int64_t *shape,
                      const drpc_dev_operand *a, const drpc_dev_operand *b,
                      double alpha_f, int64_t alpha_i, drpc_error *err) {
  sim *c = lock(ctx);
  op o = {.kind = OP_BINARY};
  int64_t n = 0;
  int rc = check_stream(c, s, err);
  if (!rc && (bop < DRPC_DEVOP_ADD || bop > DRPC_DEVOP_DIV))
    rc =
        drpc_error_set(err, DRPC_EINVAL, "simcuda binary: bad op %d", (int)bop);
  if (!rc && !is_compute(dt))
    rc = drpc_error_set(err, DRPC_EINVAL,
                        "simcuda binary: %s is not a compute dtype",
                        drpc_dtype_name(dt));
  if (!rc && bop == DRPC_DEVOP_DIV && dt == DRPC_INT64)
    rc = drpc_error_set(err, DRPC_EINVAL,
                        "simcuda binary: division needs a floating result");
  if (!rc)
    rc = check_shape("binary", ndim, shape, &n, err);
  if (rc || n == 0)
    goto out;
  o.u.binary.dst = dst;
  o.u.binary.dt = dt;
  o.u.binary.op = bop;
  o.u.binary.ndim = ndim;
  copy_dims(o.u.binary.shape, shape, ndim);
  o.u.binary.alpha_f = alpha_f;
  o.u.binary.alpha_i = alpha_i;
  if (!(rc = add_contig(&o, s->index, dst, n, drpc_dtype_size(dt), err)) &&
      !(rc = add_operand(&o, s->index, a, ndim, shape, err)) &&
      !(rc = add_operand(&o, s->index, b, ndim, shape, err))) {
    o.u.binary.a = *a;
    o.u.binary.b = *b;
    o.cost_ns = kernel_cost(c, n);
    rc = enqueue(c, s, &o, err);
  }
out:
  unlock(c);
  return rc;
}

static int sim_sum(void *ctx, drpc_stream *s, void *dst, drpc_dtype ddt,
                   int64_t dst_numel, const void *src, drpc_dtype sdt, int ndim,
                   const int64_t *shape, const int64_t *src_strides,
                   const int64_t *dst_strides, drpc_error *err) {
  sim *c = lock(ctx);
  op o = {.kind = OP_SUM};
  int64_t n = 0, lo = 0, hi = 0;
  int rc = check_stream(c, s, err);
  if (!rc && (drpc_dtype_size(ddt) == 0 || drpc_dtype_size(sdt) == 0 ||
              dst_numel < 0 || dst_numel > INT64_MAX / 8))
    rc = drpc_error_set(err, DRPC_EINVAL, "simcuda sum: bad dtype or count");
  if (!rc)
    rc = check_shape("sum", ndim, shape, &n, err);
  if (!rc && ndim > 0 && (!src_strides || !dst_strides))
    rc = drpc_error_set(err, DRPC_EINVAL, "simcuda sum: no strides");
  /* Every element must land inside dst. */
  if (!rc && n > 0 &&
      (!span(ndim, shape, dst_strides, &lo, &hi) || lo < 0 || hi >= dst_numel))
    rc = drpc_error_set(err, DRPC_EINVAL,
                        "simcuda sum: dst_strides reach outside the %lld "
                        "elements of dst",
                        (long long)dst_numel);
  if (rc || dst_numel == 0)
    goto out;
  o.u.sum.dst = dst;
  o.u.sum.ddt = ddt;
  o.u.sum.dst_numel = dst_numel;
  o.u.sum.src = src;
  o.u.sum.sdt = sdt;
  o.u.sum.ndim = ndim;
  copy_dims(o.u.sum.shape, shape, ndim);
  copy_dims(o.u.sum.src_strides, src_strides, ndim);
  copy_dims(o.u.sum.dst_strides, dst_strides, ndim);
  if ((rc = add_contig(&o, s->index, dst, dst_numel, drpc_dtype_size(ddt),
                       err)) ||
      (n > 0 && (rc = add_strided(&o, s->index, src, ndim, shape, src_strides,
                                  drpc_dtype_size(sdt), err))))
    goto out;
  o.u.sum.acc = malloc((size_t)dst_numel * 8);
  if (!o.u.sum.acc) {
    rc = drpc_error_set(err, DRPC_ENOMEM, "simcuda: out of memory");
    goto out;
  }
  o.cost_ns = kernel_cost(c, n > dst_numel ? n : dst_numel);
  rc = enqueue(c, s, &o, err);
out:
  unlock(c);
  return rc;
}

static int sim_matmul(void *ctx, drpc_stream *s, void *dst, drpc_dtype dt,
                      const void *a, const void *b, int64_t m, int64_t k,
                      int64_t n, drpc_error *err) {
  sim *c = lock(ctx);
  op o = {.kind = OP_MATMUL, .u.matmul = {dst, dt, a, b, m, k, n}};
  int64_t mk = 0, kn = 0, mn = 0;
  size_t es = drpc_dtype_size(dt);
  int rc = check_stream(c, s, err);
  if (!rc && !is_compute(dt))
    rc = drpc_error_set(err, DRPC_EINVAL,
                        "simcuda matmul: %s is not a compute dtype",
                        drpc_dtype_name(dt));
  if (!rc &&
      (m < 0 || k < 0 || n < 0 || __builtin_mul_overflow(m, k, &mk) ||
       __builtin_mul_overflow(k, n, &kn) || __builtin_mul_overflow(m, n, &mn)))
    rc = drpc_error_set(err, DRPC_EINVAL, "simcuda matmul: bad sizes");
  if (rc || mn == 0)
    goto out;
  if (!(rc = add_contig(&o, s->index, dst, mn, es, err)) &&
      !(rc = add_contig(&o, s->index, a, mk, es, err)) &&
      !(rc = add_contig(&o, s->index, b, kn, es, err))) {
    /* m * n * k multiply-adds; their product may overflow int64. */
    double madds = (double)mn * (double)k;
    o.cost_ns = kernel_cost(c, madds > 9e18 ? INT64_MAX : (int64_t)madds);
    rc = enqueue(c, s, &o, err);
  }
out:
  unlock(c);
  return rc;
}

/* ---- same-process IPC -------------------------------------------------- */

static int sim_ipc_export(void *ctx, const void *p, uint8_t *handle,
                          size_t *len, size_t *offset, drpc_error *err) {
  sim *c = lock(ctx);
  int rc = 0;
  alloc_rec *a = alloc_find(c, (uintptr_t)p);
  if (!handle || !len || !offset)
    rc = drpc_error_set(err, DRPC_EINVAL, "simcuda ipc_export: no output");
  else if (!a || a->freeing)
    rc = drpc_error_set(err, DRPC_EINVAL,
                        "simcuda ipc_export: %p is not in live device memory",
                        p);
  if (!rc) {
    uint64_t magic = SIM_ALLOC_MAGIC;
    memcpy(handle, &a->id, 8);
    memcpy(handle + 8, &magic, 8);
    *len = SIM_HANDLE_LEN;
    *offset = (size_t)((uintptr_t)p - (uintptr_t)a->base);
  }
  unlock(c);
  return rc;
}

static void *sim_ipc_open(void *ctx, int index, const uint8_t *handle,
                          size_t len, drpc_error *err) {
  sim *c = lock(ctx);
  void *p = NULL;
  uint64_t id = 0, magic = 0;
  if (!handle || len != SIM_HANDLE_LEN) {
    drpc_error_set(err, DRPC_EINVAL,
                   "simcuda ipc_open: a handle is %d bytes, not %zu",
                   SIM_HANDLE_LEN, len);
    goto out;
  }
  memcpy(&id, handle, 8);
  memcpy(&magic, handle + 8, 8);
  /* By id: live allocations are few, and opening is once per tensor. */
  alloc_rec *a = NULL;
  for (size_t i = 0; magic == SIM_ALLOC_MAGIC && i < c->nallocs; i++)
    if (c->allocs[i].id == id)
      a = &c->allocs[i];
  if (!a || a->freeing) {
    drpc_error_set(err, DRPC_EINVAL,
                   "simcuda ipc_open: allocation %llu is unknown or freed",
                   (unsigned long long)id);
  } else if (a->index != index) {
    drpc_error_set(err, DRPC_EINVAL,
                   "simcuda ipc_open: the allocation is on cuda:%d, not "
                   "cuda:%d",
                   a->index, index);
  } else {
    p = a->base;
  }
out:
  unlock(c);
  return p;
}

static int sim_ipc_event_export(void *ctx, drpc_devevent *e, uint8_t *handle,
                                size_t *len, drpc_error *err) {
  sim *c = lock(ctx);
  int rc = 0;
  uint64_t magic = SIM_EVENT_MAGIC;
  if (!e || !handle || !len)
    rc = drpc_error_set(err, DRPC_EINVAL, "simcuda: no such event or output");
  else if (!e->ipc)
    rc = drpc_error_set(err, DRPC_EINVAL,
                        "simcuda ipc_event_export: the event was not made by "
                        "ipc_event_new");
  if (!rc) {
    memcpy(handle, &e->id, 8);
    memcpy(handle + 8, &magic, 8);
    *len = SIM_HANDLE_LEN;
  }
  unlock(c);
  return rc;
}

static drpc_devevent *sim_ipc_event_open(void *ctx, const uint8_t *handle,
                                         size_t len, drpc_error *err) {
  sim *c = lock(ctx);
  drpc_devevent *found = NULL;
  uint64_t id = 0, magic = 0;
  if (handle && len == SIM_HANDLE_LEN) {
    memcpy(&id, handle, 8);
    memcpy(&magic, handle + 8, 8);
  }
  for (drpc_devevent *e = c->events; e && magic == SIM_EVENT_MAGIC;
       e = e->next) {
    if (e->ipc && e->id == id) {
      found = e;
      found->refs++;
      break;
    }
  }
  if (!found)
    drpc_error_set(err, DRPC_EINVAL,
                   "simcuda ipc_event_open: no live IPC event has this "
                   "handle");
  unlock(c);
  return found;
}

/* ---- life cycle -------------------------------------------------------- */

/* Runs the rest of s's queue, then drops whatever could not run. */
static void drain(sim *c, drpc_stream *s) {
  flush(c, s, s->queued, 0, NULL);
  while (s->head) {
    op *o = s->head;
    s->head = o->next;
    op_free(o);
  }
  s->tail = NULL;
  s->pending = 0;
}

static void sim_shutdown(void *ctx) {
  sim *c = lock(ctx);
  /* Pending work runs first (frees included): a flush follows waits, so
   * the order of the streams does not matter. */
  for (int i = 0; i < c->ndevices; i++)
    drain(c, &c->defaults[i]);
  for (drpc_stream *s = c->streams; s; s = s->next)
    drain(c, s);
  for (drpc_stream *s = c->streams; s;) {
    drpc_stream *next = s->next;
    free(s);
    s = next;
  }
  while (c->events) {
    drpc_devevent *e = c->events;
    c->events = e->next;
    free(e);
  }
  for (size_t i = 0; i < c->nallocs; i++)
    free(c->allocs[i].base);
  free(c->allocs);
  unlock(c);
  pthread_mutex_destroy(&c->mu);
  /* The caller frees the context block itself. */
}

void *drpc_simcuda_new(int ndevices) {
  if (ndevices < 1 || ndevices > DRPC_DEVICE_MAX)
    return NULL;
  sim *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  if (pthread_mutex_init(&c->mu, NULL) != 0) {
    free(c);
    return NULL;
  }
  c->ndevices = ndevices;
  for (int i = 0; i < ndevices; i++) {
    c->defaults[i].index = i;
    c->defaults[i].owner = c;
  }
  return c;
}

size_t drpc_simcuda_allocated(void *ctx, int index) {
  if (!ctx || index < 0 || index >= DRPC_DEVICE_MAX)
    return 0;
  sim *c = lock(ctx);
  size_t n = c->allocated[index];
  unlock(c);
  return n;
}

uint64_t drpc_simcuda_ops_run(void *ctx) {
  if (!ctx)
    return 0;
  sim *c = lock(ctx);
  uint64_t n = c->ops_run;
  unlock(c);
  return n;
}

void drpc_simcuda_clock_default(drpc_simcuda_clock *c) {
  memset(c, 0, sizeof *c);
  c->h2d_Bps = 12e9;
  c->d2h_Bps = 12e9;
  c->d2d_Bps = 1e12;
  c->p2p_Bps = 50e9;
  c->latency_ns = 2000;
  c->launch_ns = 5000;
  c->elem_ns = 0.01;
}

static bool rate_ok(double bps) {
  return bps > 0 && bps < 1e300; /* NaN fails both */
}

int drpc_simcuda_set_clock(void *ctx, const drpc_simcuda_clock *clk,
                           drpc_error *err) {
  if (!ctx)
    return drpc_error_set(err, DRPC_EINVAL, "simcuda: no context");
  if (clk && !clk->now_ns)
    return drpc_error_set(err, DRPC_EINVAL, "simcuda clock: now_ns is NULL");
  if (clk && (!rate_ok(clk->h2d_Bps) || !rate_ok(clk->d2h_Bps) ||
              !rate_ok(clk->d2d_Bps) || !rate_ok(clk->p2p_Bps)))
    return drpc_error_set(err, DRPC_EINVAL,
                          "simcuda clock: bandwidths must be positive (h2d "
                          "%g, d2h %g, d2d %g, p2p %g B/s)",
                          clk->h2d_Bps, clk->d2h_Bps, clk->d2d_Bps,
                          clk->p2p_Bps);
  if (clk && !(clk->elem_ns >= 0 && clk->elem_ns < 1e9))
    return drpc_error_set(err, DRPC_EINVAL,
                          "simcuda clock: elem_ns %g is not in [0, 1e9)",
                          clk->elem_ns);
  sim *c = lock(ctx);
  c->timed = clk != NULL;
  if (clk)
    c->clk = *clk;
  else
    memset(&c->clk, 0, sizeof c->clk);
  memset(&c->stats, 0, sizeof c->stats);
  /* Streams start idle on the new clock. */
  for (int i = 0; i < c->ndevices; i++)
    c->defaults[i].busy_ns = 0;
  for (drpc_stream *s = c->streams; s; s = s->next)
    s->busy_ns = 0;
  for (drpc_devevent *e = c->events; e; e = e->next)
    e->ready_ns = 0;
  unlock(c);
  return 0;
}

void drpc_simcuda_stats_get(void *ctx, drpc_simcuda_stats *st) {
  memset(st, 0, sizeof *st);
  if (!ctx)
    return;
  sim *c = lock(ctx);
  *st = c->stats;
  unlock(c);
}

const drpc_device_backend drpc_simcuda_backend = {
    .name = "simcuda",
    .device_count = sim_device_count,
    .alloc = sim_alloc,
    .free = sim_free,
    .host_alloc = sim_host_alloc,
    .host_free = sim_host_free,
    .stream_default = sim_stream_default,
    .stream_new = sim_stream_new,
    .stream_sync = sim_stream_sync,
    .event_new = sim_event_new,
    .event_free = sim_event_free,
    .event_record = sim_event_record,
    .stream_wait = sim_stream_wait,
    .event_sync = sim_event_sync,
    .copy = sim_copy,
    .fill = sim_fill,
    .strided_copy = sim_strided_copy,
    .binary = sim_binary,
    .sum = sim_sum,
    .matmul = sim_matmul,
    .ipc_export = sim_ipc_export,
    .ipc_open = sim_ipc_open,
    .ipc_event_new = sim_ipc_event_new,
    .ipc_event_export = sim_ipc_event_export,
    .ipc_event_open = sim_ipc_event_open,
    .shutdown = sim_shutdown,
    /* Handles name allocations of this process only. */
    .ipc_in_process = true,
};
