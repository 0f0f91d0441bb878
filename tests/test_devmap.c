/* Device maps end to end on simulated CUDA devices (simcuda, two devices):
 * tensors land on the mapped device, responses come back through the
 * reverse map, unmapped device tensors fail fast with the reference's
 * messages while the agent keeps serving, start-time validation of every
 * worker's maps, CPU<->GPU maps and maps to self, both transfer channels
 * (same-host sharing by handle, staging through the host) and stream
 * ordering: what a sender queued on its current stream is part of what it
 * sends, even though simcuda runs nothing until something waits. The
 * same suite runs on real CUDA when a GPU with two devices is present. */
#include "drpc/device.h"
#include "drpc/drpc.h"
#include "drpc/gpu.h"
#include "drpc/ops.h"

#include "test.h"
#include "testenv.h"

#include <stdarg.h>
#include <string.h>

static tnet N;
static drpc_store *S;
static drpc_registry *R;
static const char *const NAMES[] = {"w0", "w1", "w2"};
static const drpc_device CPU = {DRPC_DEVICE_CPU, -1};
static const drpc_device G0 = {DRPC_DEVICE_CUDA, 0};
static const drpc_device G1 = {DRPC_DEVICE_CUDA, 1};

static drpc_agent *ag(int i) {
  return N.nodes[i].agent;
}

/* ---- functions the workers serve --------------------------------------- */

static const drpc_tensor *arg_tensor(const drpc_value *args) {
  const drpc_value *v = drpc_list_at(args, 0);
  return v && v->kind == DRPC_VAL_TENSOR ? v->u.t : NULL;
}

/* The device its tensor argument arrived on. */
static drpc_value *fn_devof(drpc_call *call, const drpc_value *args,
                            const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)kwargs;
  const drpc_tensor *t = arg_tensor(args);
  if (!t) {
    drpc_error_set(err, DRPC_EINVAL, "devof takes a tensor");
    return NULL;
  }
  char d[16];
  return drpc_value_str(drpc_device_format(drpc_tensor_device(t), d, sizeof d));
}

/* Its argument back, as it arrived. */
static drpc_value *fn_ident(drpc_call *call, const drpc_value *args,
                            const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)kwargs;
  (void)err;
  return drpc_value_clone(drpc_list_at(args, 0));
}

/* ones(4) on cuda:<args[0]>. */
static drpc_value *fn_ones_on(drpc_call *call, const drpc_value *args,
                              const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)kwargs;
  const drpc_value *i = drpc_list_at(args, 0);
  char dev[16];
  snprintf(dev, sizeof dev, "cuda:%lld", (long long)(i ? i->u.i : 0));
  drpc_value *kw = drpc_value_dict();
  drpc_dict_set(kw, "device", drpc_value_str(dev));
  drpc_value *a =
      drpc_value_list_of(1, drpc_value_list_of(1, drpc_value_int(4)));
  drpc_value *r = drpc_op_run("aten::ones", a, kw, err);
  drpc_value_free(a);
  drpc_value_free(kw);
  return r;
}

/* Stream semantics seen from inside a function: [runs on a pool stream
 * (not the default one), element 0 read through the default stream without
 * waiting, element 0 read through the current stream]. */
static drpc_value *fn_stream_probe(drpc_call *call, const drpc_value *args,
                                   const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)kwargs;
  const drpc_tensor *t = arg_tensor(args);
  if (!t || drpc_tensor_device(t).type != DRPC_DEVICE_CUDA) {
    drpc_error_set(err, DRPC_EINVAL, "stream_probe takes a CUDA tensor");
    return NULL;
  }
  int d = drpc_tensor_device(t).index;
  bool pool = drpc_stream_current(d) != drpc_stream_default(d);
  drpc_tensor *early = drpc_tensor_to(t, (drpc_device){DRPC_DEVICE_CPU, -1},
                                      drpc_stream_default(d), err);
  drpc_tensor *late =
      drpc_tensor_to(t, (drpc_device){DRPC_DEVICE_CPU, -1}, NULL, err);
  drpc_value *r = NULL;
  if (early && late)
    r = drpc_value_list_of(3, drpc_value_int(pool),
                           drpc_value_float(drpc_tensor_get_f64(early, 0)),
                           drpc_value_float(drpc_tensor_get_f64(late, 0)));
  drpc_tensor_decref(early);
  drpc_tensor_decref(late);
  return r;
}

/* The transpose of its [2, 3] tensor argument, as a strided view of the
 * same device memory (PyTorch's test_tensor_view_as_return_value). */
static drpc_value *fn_transpose_view(drpc_call *call, const drpc_value *args,
                                     const drpc_value *kwargs,
                                     drpc_error *err) {
  (void)call;
  (void)kwargs;
  const drpc_tensor *t = arg_tensor(args);
  if (!t || t->ndim != 2) {
    drpc_error_set(err, DRPC_EINVAL, "transpose_view takes a 2-d tensor");
    return NULL;
  }
  int64_t shape[2] = {t->shape[1], t->shape[0]};
  drpc_tensor *v =
      drpc_tensor_from_storage(t->storage, t->dtype, 2, shape, t->offset);
  if (!v) {
    drpc_error_set(err, DRPC_ENOMEM, "out of memory");
    return NULL;
  }
  v->strides[0] = t->strides[1];
  v->strides[1] = t->strides[0];
  drpc_value *r = drpc_value_tensor(v);
  drpc_tensor_decref(v);
  return r;
}

/* The local value of the RRef argument (this worker owns it), plus 1 on
 * its device: a function reading an owner's device value made by an
 * earlier remote() (PyTorch's test_rref_as_arg_synchronization). */
static drpc_value *fn_rref_plus1(drpc_call *call, const drpc_value *args,
                                 const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)kwargs;
  drpc_rref *r = drpc_value_get_rref(drpc_list_at(args, 0));
  const drpc_value *v = NULL;
  if (!r || drpc_rref_local_value(r, &v, err))
    return r ? NULL
             : (drpc_error_set(err, DRPC_EINVAL, "rref_plus1 takes an RRef"),
                NULL);
  drpc_value *a = drpc_value_list_of(2, drpc_value_clone(v), drpc_value_int(1));
  drpc_value *out = drpc_op_run("aten::add", a, NULL, err);
  drpc_value_free(a);
  return out;
}

/* ---- a small cluster -------------------------------------------------- */

/* Starts world workers, worker i with opts[i] (NULL: defaults). Every
 * worker's device information is published first: agents start one after
 * the other here. Returns 0 or the first start error (err filled). */
static int up_maps_extra(int world, int extra, drpc_options *const *opts,
                         drpc_error *err) {
  tnet_init(&N);
  for (int i = 0; i < world + extra; i++)
    tnet_node(&N);
  S = tnet_store(&N, world, NAMES);
  drpc_options o[3];
  for (int i = 0; i < world; i++) {
    if (opts && opts[i])
      o[i] = *opts[i];
    else
      drpc_options_default(&o[i]);
    o[i].registry = R;
    char addr[32];
    snprintf(addr, sizeof addr, "tnet://%d", i);
    drpc_agent_publish_devices(S, NAMES[i], addr, &o[i], NULL);
  }
  for (int i = 0; i < world; i++) {
    int rc = drpc_agent_start(&N.nodes[i].agent, S, NAMES[i], i, world, &o[i],
                              &N.nodes[i].env, err);
    if (rc)
      return rc;
  }
  N.auto_run_jobs = true;
  return 0;
}

static int up_maps(int world, drpc_options *const *opts, drpc_error *err) {
  return up_maps_extra(world, 0, opts, err);
}

static void down(void) {
  tnet_run(&N, 1000000);
  for (int i = 0; i < N.nnodes; i++)
    if (ag(i))
      drpc_agent_shutdown(ag(i), false, 0, NULL);
  tnet_run(&N, 1000000);
  for (int i = 0; i < N.nnodes; i++) {
    drpc_agent *a = ag(i);
    N.nodes[i].agent = NULL;
    drpc_agent_free(a);
  }
  drpc_store_decref(S);
  tnet_free(&N);
}

static void map(drpc_options *o, const char *peer, int n, ...) {
  drpc_device from[8], to[8];
  va_list ap;
  va_start(ap, n);
  for (int i = 0; i < n; i++) {
    from[i] = va_arg(ap, drpc_device);
    to[i] = va_arg(ap, drpc_device);
  }
  va_end(ap);
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_options_set_device_map(o, peer, from, to, n, &err), 0);
  drpc_error_clear(&err);
}

/* A float32 [4] tensor {v, v+1, v+2, v+3} on dev. */
static drpc_tensor *ramp(drpc_device dev, float v) {
  int64_t four = 4;
  float data[4] = {v, v + 1, v + 2, v + 3};
  drpc_tensor *c = drpc_tensor_from_data(DRPC_FLOAT32, 1, &four, data, true);
  if (dev.type == DRPC_DEVICE_CPU)
    return c;
  drpc_error err = DRPC_ERROR_INIT;
  drpc_tensor *g = drpc_tensor_to(c, dev, NULL, &err);
  CHECK(g != NULL);
  drpc_tensor_decref(c);
  drpc_error_clear(&err);
  return g;
}

/* Element i of t, read back through the host. */
static double at(const drpc_tensor *t, int64_t i) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_tensor *c = drpc_tensor_to(t, CPU, NULL, &err);
  double v = c ? drpc_tensor_get_f64(c, i) : -1e300;
  drpc_tensor_decref(c);
  drpc_error_clear(&err);
  return v;
}

/* Calls fn on dst with one argument; runs the net until the future is
 * done; returns the value (owned) or NULL with *err set. */
static drpc_value *call1(int from, const char *dst, drpc_call_kind kind,
                         const char *fn, drpc_value *arg, drpc_value *arg2,
                         drpc_error *err) {
  drpc_value *args = drpc_value_list_of(arg2 ? 2 : 1, arg, arg2);
  drpc_future *f = NULL;
  int rc = drpc_rpc_async(ag(from), dst, kind, fn, args, NULL, 0, &f, err);
  drpc_value_free(args);
  if (rc)
    return NULL;
  tnet_run(&N, 1000000);
  drpc_value *v = NULL;
  if (!drpc_future_done(f))
    drpc_error_set(err, DRPC_ETIMEOUT, "call never finished");
  else if (drpc_future_error(f, err) == 0)
    v = drpc_future_take_value(f);
  drpc_future_decref(f);
  return v;
}

static long metric(drpc_agent *a, const char *key) {
  drpc_value *m = drpc_agent_debug_info(a);
  const drpc_value *v = drpc_dict_get(m, key);
  long r = v && v->kind == DRPC_VAL_STR ? atol(v->u.s.data) : -999;
  drpc_value_free(m);
  return r;
}

/* Two workers, w0 mapping cuda:0 to w1's cuda:1, both on one channel. */
static void up_channel(const char *channel, drpc_error *err) {
  drpc_options o0, o1;
  drpc_options_default(&o0);
  drpc_options_default(&o1);
  map(&o0, "w1", 1, G0, G1);
  o0.channels[0] = channel;
  o1.channels[0] = channel;
  drpc_options *opts[2] = {&o0, &o1};
  CHECK_EQ_INT(up_maps(2, opts, err), 0);
}

/* remote(w0 -> w1, fn, args) (args taken), run until it settles. */
static drpc_rref *remote_on_w1(drpc_call_kind kind, const char *fn,
                               drpc_value *args, drpc_error *err) {
  drpc_rref *r = NULL;
  CHECK_EQ_INT(drpc_remote(ag(0), "w1", kind, fn, args, NULL, 0, &r, err), 0);
  drpc_value_free(args);
  tnet_run(&N, 1000000);
  return r;
}

/* r's value fetched to w0: a tensor on cuda:0 whose elements 0 and 3 are
 * first and fourth. */
static void check_to_here(drpc_rref *r, double first, double fourth) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_value *v = NULL;
  if (r)
    CHECK_EQ_INT(drpc_rref_to_here(r, 30, &v, &err), 0);
  CHECK(v && v->kind == DRPC_VAL_TENSOR);
  if (v && v->kind == DRPC_VAL_TENSOR) {
    CHECK(drpc_device_equal(drpc_tensor_device(v->u.t), G0));
    CHECK(at(v->u.t, 0) == first && at(v->u.t, 3) == fourth);
  }
  drpc_value_free(v);
  drpc_error_clear(&err);
}

/* ---- tests --------------------------------------------------------------- */

/* cuda:0 -> cuda:1 for requests; the result comes back through the
 * reverse map cuda:1 -> cuda:0. channel: NULL (default), "cuda_ipc" or
 * "cuda_staged". */
static void gpu_to_gpu(const char *channel) {
  drpc_options o0;
  drpc_options_default(&o0);
  map(&o0, "w1", 1, G0, G1);
  o0.channels[0] = channel;
  drpc_options o1;
  drpc_options_default(&o1);
  o1.channels[0] = channel;
  drpc_options *opts[2] = {&o0, &o1};
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(up_maps(2, opts, &err), 0);
  /* The argument is computed on a pool stream made current, and queued
   * there only: the send must wait for it. */
  drpc_stream *side = drpc_stream_from_pool(0);
  drpc_stream_set_current(0, side);
  drpc_tensor *t = ramp(G0, 1);
  drpc_value *ta = drpc_value_tensor(t);
  drpc_value *two =
      drpc_value_list_of(2, drpc_value_tensor(t), drpc_value_tensor(t));
  drpc_value *sum = drpc_op_run("aten::add", two, NULL, &err);
  drpc_value_free(two);
  CHECK(sum != NULL); /* {2, 4, 6, 8}, not yet computed */

  drpc_value *dev =
      call1(0, "w1", DRPC_FUNCTION, "devof", drpc_value_clone(sum), NULL, &err);
  CHECK(dev && dev->kind == DRPC_VAL_STR &&
        strcmp(dev->u.s.data, "cuda:1") == 0);
  drpc_value_free(dev);

  /* aten::add runs on w1's cuda:1; its result comes back on cuda:0. */
  drpc_value *r = call1(0, "w1", DRPC_BUILTIN, "aten::add",
                        drpc_value_clone(sum), drpc_value_int(10), &err);
  if (!r)
    fprintf(stderr, "  add: %s\n", drpc_error_message(&err));
  CHECK(r && r->kind == DRPC_VAL_TENSOR);
  if (r && r->kind == DRPC_VAL_TENSOR) {
    CHECK(drpc_device_equal(drpc_tensor_device(r->u.t), G0));
    CHECK(at(r->u.t, 0) == 12 && at(r->u.t, 3) == 18);
  }
  drpc_value_free(r);
  drpc_stream_set_current(0, NULL);

  bool ipc = !channel || strcmp(channel, "cuda_ipc") == 0;
  long shared = metric(ag(0), "cuda.tensors_shared") +
                metric(ag(1), "cuda.tensors_shared");
  long staged = metric(ag(0), "cuda.tensors_staged") +
                metric(ag(1), "cuda.tensors_staged");
  CHECK(ipc ? shared >= 3 && staged == 0 : shared == 0 && staged >= 3);
  /* Everything lent was released. */
  CHECK_EQ_INT(metric(ag(0), "cuda.lent"), 0);
  CHECK_EQ_INT(metric(ag(1), "cuda.lent"), 0);
  drpc_value_free(sum);
  drpc_value_free(ta);
  drpc_tensor_decref(t);
  drpc_error_clear(&err);
  down();
}

static void test_gpu_to_gpu_default(void) {
  gpu_to_gpu(NULL);
}
static void test_gpu_to_gpu_ipc(void) {
  gpu_to_gpu("cuda_ipc");
}
static void test_gpu_to_gpu_staged(void) {
  gpu_to_gpu("cuda_staged");
}

static void test_missing_map_fails_fast(void) {
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(up_maps(2, NULL, &err), 0);
  drpc_tensor *t = ramp(G0, 1);
  /* More failures than the agent has threads: it keeps serving. */
  for (int i = 0; i < DRPC_DEFAULT_NUM_WORKER_THREADS + 5; i++) {
    drpc_value *v = call1(0, "w1", DRPC_FUNCTION, "devof", drpc_value_tensor(t),
                          NULL, &err);
    CHECK(v == NULL);
    drpc_value_free(v);
  }
  CHECK_CONTAINS(err.msg,
                 "TensorPipe RPC backend only supports CPU tensors by "
                 "default, please move your tensors to CPU before sending "
                 "them over RPC, or call `set_device_map` on "
                 "`TensorPipeRpcBackendOptions` to explicitly configure "
                 "device mapping. Request device mapping is not available "
                 "for destination w1, but found tensor on device: cuda:0");
  drpc_tensor *ct = ramp(CPU, 5);
  drpc_value *c =
      call1(0, "w1", DRPC_FUNCTION, "devof", drpc_value_tensor(ct), NULL, &err);
  CHECK(c && strcmp(c->u.s.data, "cpu") == 0);
  drpc_value_free(c);
  drpc_tensor_decref(ct);
  drpc_tensor_decref(t);
  drpc_error_clear(&err);
  down();
}

/* A response on a device the caller has no reverse map for. */
static void test_missing_response_map(void) {
  drpc_options o1;
  drpc_options_default(&o1);
  o1.n_devices = 1;
  o1.devices[0] = G1;
  drpc_options *opts[2] = {NULL, &o1};
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(up_maps(2, opts, &err), 0);
  for (int i = 0; i < 3; i++) {
    drpc_value *v =
        call1(0, "w1", DRPC_FUNCTION, "ones_on", drpc_value_int(1), NULL, &err);
    CHECK(v == NULL);
    drpc_value_free(v);
    CHECK_CONTAINS(err.msg, "Response device mapping is not available for "
                            "destination w0, but found tensor on device: "
                            "cuda:1");
  }
  /* A result on a device that is not one of the callee's devices. */
  drpc_value *v =
      call1(0, "w1", DRPC_FUNCTION, "ones_on", drpc_value_int(0), NULL, &err);
  CHECK(v == NULL);
  CHECK_CONTAINS(err.msg, "RPC detected that a user-function output tensor on "
                          "device cuda:0. This device is not one of the input "
                          "tensor devices: [cuda:1]");
  drpc_value_free(v);
  /* Still serving. */
  v = call1(0, "w1", DRPC_BUILTIN, "aten::add", drpc_value_int(1),
            drpc_value_int(2), &err);
  CHECK(v && v->kind == DRPC_VAL_INT && v->u.i == 3);
  drpc_value_free(v);
  drpc_error_clear(&err);
  down();
}

/* cpu -> cuda:1 and cuda:0 -> cpu, and the way back. */
static void test_cpu_gpu_maps(void) {
  drpc_options o0;
  drpc_options_default(&o0);
  map(&o0, "w1", 2, CPU, G1, G0, CPU);
  drpc_options *opts[2] = {&o0, NULL};
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(up_maps(2, opts, &err), 0);
  drpc_tensor *c = ramp(CPU, 3), *g = ramp(G0, 7);
  drpc_value *d =
      call1(0, "w1", DRPC_FUNCTION, "devof", drpc_value_tensor(c), NULL, &err);
  CHECK(d && strcmp(d->u.s.data, "cuda:1") == 0);
  drpc_value_free(d);
  d = call1(0, "w1", DRPC_FUNCTION, "devof", drpc_value_tensor(g), NULL, &err);
  CHECK(d && strcmp(d->u.s.data, "cpu") == 0);
  drpc_value_free(d);
  /* The CPU tensor went to cuda:1 and comes back (cuda:1 -> cpu). */
  drpc_value *r =
      call1(0, "w1", DRPC_FUNCTION, "ident", drpc_value_tensor(c), NULL, &err);
  CHECK(r && r->kind == DRPC_VAL_TENSOR &&
        drpc_device_equal(drpc_tensor_device(r->u.t), CPU) &&
        at(r->u.t, 2) == 5);
  drpc_value_free(r);
  /* The cuda:0 tensor went to the CPU and comes back (cpu -> cuda:0). */
  r = call1(0, "w1", DRPC_FUNCTION, "ident", drpc_value_tensor(g), NULL, &err);
  CHECK(r && r->kind == DRPC_VAL_TENSOR &&
        drpc_device_equal(drpc_tensor_device(r->u.t), G0) &&
        at(r->u.t, 1) == 8);
  drpc_value_free(r);
  drpc_tensor_decref(c);
  drpc_tensor_decref(g);
  drpc_error_clear(&err);
  down();
}

/* A map to self: cuda:0 -> cuda:1 and back. */
static void test_map_to_self(void) {
  drpc_options o0;
  drpc_options_default(&o0);
  map(&o0, "w0", 1, G0, G1);
  drpc_options *opts[1] = {&o0};
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(up_maps(1, opts, &err), 0);
  drpc_tensor *g = ramp(G0, 2);
  drpc_value *d =
      call1(0, "w0", DRPC_FUNCTION, "devof", drpc_value_tensor(g), NULL, &err);
  CHECK(d && strcmp(d->u.s.data, "cuda:1") == 0);
  drpc_value_free(d);
  drpc_value *r =
      call1(0, "w0", DRPC_FUNCTION, "ident", drpc_value_tensor(g), NULL, &err);
  CHECK(r && r->kind == DRPC_VAL_TENSOR &&
        drpc_device_equal(drpc_tensor_device(r->u.t), G0) &&
        at(r->u.t, 3) == 5);
  drpc_value_free(r);
  drpc_tensor_decref(g);
  drpc_error_clear(&err);
  down();
}

/* Start-time validation: every worker checks every worker's maps. */
static void expect_start_error(drpc_options *o0, drpc_options *o1,
                               const char *phrase) {
  drpc_options *opts[2] = {o0, o1};
  drpc_error err = DRPC_ERROR_INIT;
  int rc = up_maps(2, opts, &err);
  CHECK_EQ_INT(rc, DRPC_EINVAL);
  CHECK_CONTAINS(err.msg, phrase);
  drpc_error_clear(&err);
  down();
}

static void test_validation(void) {
  drpc_options o, p;
  drpc_device g2 = {DRPC_DEVICE_CUDA, 2};
  drpc_options_default(&o);
  map(&o, "nobody", 1, G0, G1);
  expect_start_error(&o, NULL,
                     "Node w0 has invalid target node names in its device "
                     "maps");
  drpc_options_default(&o);
  map(&o, "w1", 1, g2, G1);
  expect_start_error(&o, NULL,
                     "Node w0 has source devices with invalid indices in its "
                     "device map for w1");
  drpc_options_default(&o);
  map(&o, "w1", 1, G0, g2);
  expect_start_error(&o, NULL,
                     "Node w0 has target devices with invalid indices in its "
                     "device map for w1");
  /* The second worker fails too: it checks w0's maps as well. */
  drpc_options_default(&o);
  map(&o, "w1", 1, G0, G1);
  o.n_devices = 1;
  o.devices[0] = G1;
  expect_start_error(&o, NULL,
                     "Node w0 has unexpected source devices in its device map "
                     "for w1");
  drpc_options_default(&o);
  map(&o, "w1", 1, G0, G1);
  drpc_options_default(&p);
  p.n_devices = 1;
  p.devices[0] = G0;
  expect_start_error(&o, &p,
                     "Node w0 has unexpected target devices in its device map "
                     "for w1");
  drpc_options_default(&o);
  o.n_devices = 2;
  o.devices[0] = G0;
  o.devices[1] = G0;
  expect_start_error(&o, NULL, "Node w0 has duplicated devices");
  drpc_options_default(&o);
  o.n_devices = 1;
  o.devices[0] = g2;
  expect_start_error(&o, NULL, "Node w0 has devices with invalid indices");
  /* Rejected before any start: not 1-to-1, negative indices. */
  drpc_options_default(&o);
  drpc_error err = DRPC_ERROR_INIT;
  drpc_device f2[2] = {G0, G1}, t2[2] = {G1, G1};
  CHECK_EQ_INT(drpc_options_set_device_map(&o, "w1", f2, t2, 2, &err),
               DRPC_EINVAL);
  CHECK_CONTAINS(err.msg, "only supports 1-to-1 mapping");
  drpc_device neg = {DRPC_DEVICE_CUDA, -1};
  CHECK_EQ_INT(drpc_options_set_device_map(&o, "w1", &neg, &G0, 1, &err),
               DRPC_EINVAL);
  CHECK_CONTAINS(err.msg, "Device index must not be negative");
  drpc_error_clear(&err);
}

/* The agent's devices: configured, or the union of what maps name. */
static void test_devices_and_metrics(void) {
  drpc_options o0;
  drpc_options_default(&o0);
  map(&o0, "w1", 1, G0, G1);
  drpc_options *opts[2] = {&o0, NULL};
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(up_maps(2, opts, &err), 0);
  drpc_device from[4], to[4];
  int n = 0;
  CHECK(drpc_agent_device_map(ag(0), "w1", from, to, 4, &n, &err) == 0);
  CHECK_EQ_INT(n, 1);
  CHECK(drpc_device_equal(from[0], G0) && drpc_device_equal(to[0], G1));
  drpc_device devs[4];
  CHECK_EQ_INT(drpc_agent_devices(ag(0), devs, 4), 1);
  CHECK(drpc_device_equal(devs[0], G0));
  CHECK_EQ_INT(drpc_agent_devices(ag(1), devs, 4), 1);
  CHECK(drpc_device_equal(devs[0], G1));
  drpc_error_clear(&err);
  down();
}

/* Frames from a peer that ignores the rules: a tensor meant for a device
 * the receiver does not have, a shared tensor with a malformed handle.
 * Each is answered with a clear error; the agent keeps serving. */
typedef struct capture {
  uint8_t *last;
  size_t len;
  int n;
} capture;
static capture CAP;

static void on_send(void *user, int from, int to, const uint8_t *buf,
                    size_t len) {
  (void)user;
  (void)from;
  if (to != 2)
    return;
  free(CAP.last);
  CAP.last = malloc(len);
  memcpy(CAP.last, buf, len);
  CAP.len = len;
  CAP.n++;
}

typedef struct bad_plan {
  drpc_device target;
  bool share;
} bad_plan;

static int bad_plan_fn(void *ctx, drpc_tensor *t, drpc_wire_tensor_plan *pl,
                       drpc_error *err) {
  (void)err;
  bad_plan *b = ctx;
  pl->target = b->target;
  if (b->share) {
    pl->handle_len = 5;
    memcpy(pl->handle, "junk!", 5);
  } else {
    drpc_tensor_incref(t);
    pl->send = t;
  }
  return 0;
}

static void inject(uint64_t conn, uint8_t type, uint64_t id, drpc_value *body,
                   bad_plan *bp) {
  drpc_outframe *f = NULL;
  drpc_wire_hooks h = {NULL, NULL, bp ? bad_plan_fn : NULL, bp};
  CHECK_EQ_INT(drpc_wire_encode_hooks(type, 0, id, body, NULL, &h, &f, NULL),
               0);
  drpc_value_free(body);
  size_t len = 0;
  uint8_t *buf = f ? drpc_outframe_flatten(f, &len) : NULL;
  drpc_outframe_free(f);
  if (buf)
    drpc_agent_on_frame(ag(1), conn, buf, len);
  free(buf);
}

static const char *reply_text(uint64_t want_id, int *type) {
  static char text[512];
  drpc_msg m = {0};
  text[0] = '\0';
  *type = -1;
  if (CAP.last && drpc_wire_decode(CAP.last, CAP.len, NULL, &m, NULL) == 0 &&
      m.id == want_id) {
    *type = m.type;
    const drpc_value *t = drpc_list_at(m.body, 1);
    if (m.type == DRPC_MSG_ERROR && t && t->kind == DRPC_VAL_STR)
      snprintf(text, sizeof text, "%s", t->u.s.data);
  }
  drpc_msg_clear(&m);
  return text;
}

static drpc_value *call_body(const char *fn, drpc_value *arg) {
  return drpc_value_list_of(4, drpc_value_int(DRPC_FUNCTION),
                            drpc_value_str(fn), drpc_value_list_of(1, arg),
                            drpc_value_dict());
}

static void test_bad_target_device(void) {
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(up_maps_extra(2, 1, NULL, &err), 0);
  N.on_send = on_send;
  uint64_t id = 0;
  CHECK(tnet_raw_connect(&N, 2, 1, &id) >= 0);
  inject(id, DRPC_MSG_HELLO, 0,
         drpc_value_list_of(3, drpc_value_int(DRPC_WIRE_VERSION),
                            drpc_value_int(0), drpc_value_str("w0")),
         NULL);
  drpc_tensor *t = ramp(CPU, 1);
  bad_plan far = {{DRPC_DEVICE_CUDA, 7}, false};
  inject(id, DRPC_MSG_CALL, 11, call_body("devof", drpc_value_tensor(t)), &far);
  tnet_run(&N, 100000);
  int type = 0;
  const char *txt = reply_text(11, &type);
  CHECK_EQ_INT(type, DRPC_MSG_ERROR);
  CHECK_CONTAINS(txt, "a tensor is meant for cuda:7, which this worker does "
                      "not have (2 CUDA devices)");
  bad_plan junk = {G1, true};
  inject(id, DRPC_MSG_CALL, 12, call_body("devof", drpc_value_tensor(t)),
         &junk);
  tnet_run(&N, 100000);
  txt = reply_text(12, &type);
  CHECK_EQ_INT(type, DRPC_MSG_ERROR);
  CHECK_CONTAINS(txt, "malformed shared tensor handle");
  /* The connection stays up and serves a good call. */
  bad_plan good = {G1, false};
  inject(id, DRPC_MSG_CALL, 13, call_body("devof", drpc_value_tensor(t)),
         &good);
  tnet_run(&N, 100000);
  (void)reply_text(13, &type);
  CHECK_EQ_INT(type, DRPC_MSG_RESPONSE);
  drpc_msg m = {0};
  CHECK(drpc_wire_decode(CAP.last, CAP.len, NULL, &m, NULL) == 0 && m.body &&
        m.body->kind == DRPC_VAL_STR &&
        strcmp(m.body->u.s.data, "cuda:1") == 0);
  drpc_msg_clear(&m);
  drpc_tensor_decref(t);
  free(CAP.last);
  CAP = (capture){0};
  N.on_send = NULL;
  drpc_error_clear(&err);
  down();
}

/* A dynamic group (no world size): w1 joins after w0; each learns the
 * other's maps from the join, so the existing worker calls the new one
 * with tensors landing on the mapped device, and back; responses take the
 * reverse maps. When w1 leaves, w0 drops its maps toward it. */
/* Tensors made for one test's calls (drpc_value_tensor takes its own
 * reference), dropped at the end of the test. */
static drpc_tensor *kept[8];
static int nkept;
static drpc_tensor *keep(drpc_tensor *t) {
  if (nkept < 8)
    kept[nkept++] = t;
  return t;
}
static void drop_kept(void) {
  while (nkept)
    drpc_tensor_decref(kept[--nkept]);
}

static void test_dynamic_group_maps(void) {
  drpc_error err = DRPC_ERROR_INIT;
  tnet_init(&N);
  tnet_node(&N);
  tnet_node(&N);
  S = drpc_store_memory_new(&N.nodes[0].env);
  drpc_options o[2];
  for (int i = 0; i < 2; i++) {
    drpc_options_default(&o[i]);
    o[i].registry = R;
    o[i].member_timeout_s = 0;
  }
  map(&o[0], "w1", 1, G0, G1);
  map(&o[1], "w0", 1, G1, G0);
  N.auto_run_jobs = true;
  CHECK_EQ_INT(drpc_agent_start(&N.nodes[0].agent, S, "w0", 0, -1, &o[0],
                                &N.nodes[0].env, &err),
               0);
  CHECK_EQ_INT(drpc_agent_announce(ag(0), &err), 0);
  CHECK_EQ_INT(drpc_agent_start(&N.nodes[1].agent, S, "w1", 1, -1, &o[1],
                                &N.nodes[1].env, &err),
               0);
  CHECK_EQ_INT(drpc_agent_announce(ag(1), &err), 0);
  tnet_run(&N, 1000000);
  drpc_device devs[4];
  /* w0's devices: its map toward w1 (cuda:0) and w1's toward it. */
  CHECK_EQ_INT(drpc_agent_devices(ag(0), devs, 4), 1);
  CHECK_EQ_INT(drpc_agent_devices(ag(1), devs, 4), 1);
  CHECK(devs[0].index == 1);

  /* The existing rank calls the new one, and the new one calls it. */
  drpc_value *v = call1(0, "w1", DRPC_FUNCTION, "devof",
                        drpc_value_tensor(keep(ramp(G0, 1))), NULL, &err);
  CHECK(v && v->kind == DRPC_VAL_STR && strcmp(v->u.s.data, "cuda:1") == 0);
  drpc_value_free(v);
  v = call1(1, "w0", DRPC_FUNCTION, "devof",
            drpc_value_tensor(keep(ramp(G1, 1))), NULL, &err);
  CHECK(v && v->kind == DRPC_VAL_STR && strcmp(v->u.s.data, "cuda:0") == 0);
  drpc_value_free(v);
  /* The answer comes back through w1's reverse map: cuda:1 -> cuda:0. */
  v = call1(0, "w1", DRPC_FUNCTION, "ident",
            drpc_value_tensor(keep(ramp(G0, 5))), NULL, &err);
  CHECK(v && v->kind == DRPC_VAL_TENSOR);
  if (v && v->kind == DRPC_VAL_TENSOR) {
    CHECK(drpc_device_equal(drpc_tensor_device(v->u.t), G0));
    CHECK(at(v->u.t, 3) == 8.0);
  }
  drpc_value_free(v);

  /* w1 leaves; w0 forgets it and its maps toward it. */
  CHECK_EQ_INT(drpc_agent_shutdown(ag(1), true, 30, &err), 0);
  tnet_run(&N, 1000000);
  CHECK_EQ_INT((int)drpc_agent_num_members(ag(0)), 1);
  /* Its devices are those of its maps toward members: none now. */
  CHECK_EQ_INT(drpc_agent_devices(ag(0), devs, 4), 0);
  v = call1(0, "w1", DRPC_FUNCTION, "devof",
            drpc_value_tensor(keep(ramp(G0, 1))), NULL, &err);
  CHECK(v == NULL);
  CHECK_CONTAINS(drpc_error_message(&err), "has left the group");
  drpc_error_clear(&err);
  drop_kept();
  down();
}

/* remote() and to_here() with device maps: the owner's value is made on
 * its device; to_here answers through the owner's reverse map, so the
 * value lands on the caller's mapped device (test_device_maps_remote). */
static void test_remote_to_here(void) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_options o0, o1;
  drpc_options_default(&o0);
  drpc_options_default(&o1);
  map(&o0, "w1", 1, G0, G1);
  map(&o1, "w0", 1, G1, G0);
  drpc_options *opts[2] = {&o0, &o1};
  CHECK_EQ_INT(up_maps(2, opts, &err), 0);
  drpc_rref *r = remote_on_w1(DRPC_FUNCTION, "ones_on",
                              drpc_value_list_of(1, drpc_value_int(1)), &err);
  check_to_here(r, 1.0, 1.0);
  drpc_rref_decref(r);
  drpc_error_clear(&err);
  down();
}

/* PyTorch's CUDA stream rules on the receiving side, with nothing waiting
 * on the host. channel "cuda_staged": the data is copied in on a pool
 * stream and nobody waits for it on the host, so a read that skips the
 * rules sees the device's fresh-memory fill instead of the values (simcuda
 * runs work only when something waits; on real CUDA the early read is a
 * race, so it is checked on simcuda only). "cuda_ipc": the same rules hold
 * (its copy is waited for before the sender's memory is released). */
/* A tensor value that takes over the caller's reference. */
static drpc_value *vt(drpc_tensor *t) {
  drpc_value *v = drpc_value_tensor(t);
  drpc_tensor_decref(t);
  return v;
}

typedef struct then_probe {
  int calls;
  bool on_pool;
  double first;
} then_probe;

static int then_read(drpc_future *f, void *arg, drpc_value **out,
                     drpc_error *err) {
  then_probe *p = arg;
  p->calls++;
  const drpc_value *v = drpc_future_value(f);
  if (!v || v->kind != DRPC_VAL_TENSOR)
    return drpc_error_set(err, DRPC_EINVAL, "no tensor");
  int d = drpc_tensor_device(v->u.t).index;
  p->on_pool = drpc_stream_current(d) != drpc_stream_default(d);
  drpc_tensor *c = drpc_tensor_to(v->u.t, CPU, NULL, err);
  p->first = c ? drpc_tensor_get_f64(c, 0) : -1;
  drpc_tensor_decref(c);
  *out = NULL;
  return c ? 0 : DRPC_EINVAL;
}

static void stream_rules(const char *channel, bool sim) {
  bool staged = strcmp(channel, "cuda_staged") == 0;
  drpc_error err = DRPC_ERROR_INIT;
  up_channel(channel, &err);

  /* The callee: the function runs on a pool stream that waits for the
   * data; the same bytes read through the default stream, which nothing
   * ordered after the copy, are not there yet. */
  drpc_value *r = call1(0, "w1", DRPC_FUNCTION, "stream_probe", vt(ramp(G0, 5)),
                        NULL, &err);
  CHECK(r && r->kind == DRPC_VAL_LIST && drpc_value_len(r) == 3);
  if (r && r->kind == DRPC_VAL_LIST && drpc_value_len(r) == 3) {
    CHECK_EQ_INT(drpc_list_at(r, 0)->u.i, 1);
    CHECK(drpc_list_at(r, 2)->u.f == 5.0);
    if (sim && staged)
      CHECK(drpc_list_at(r, 1)->u.f != 5.0);
  }
  drpc_value_free(r);

  /* The sender: rpc_async queues the argument's staging copy after the
   * work on the caller's current stream and returns without waiting for
   * either on the host (the loop waits before it writes the frame). */
  drpc_stream *side = drpc_stream_from_pool(0);
  drpc_stream_set_current(0, side);
  drpc_tensor *t0 = ramp(G0, 1);
  drpc_value *pair =
      drpc_value_list_of(2, drpc_value_tensor(t0), drpc_value_tensor(t0));
  drpc_value *sum = drpc_op_run("aten::add", pair, NULL, &err);
  drpc_value_free(pair);
  drpc_tensor_decref(t0);
  CHECK(sum && sum->kind == DRPC_VAL_TENSOR);
  drpc_value *sargs = drpc_value_list_of(1, sum);
  drpc_future *sf = NULL;
  CHECK_EQ_INT(drpc_rpc_async(ag(0), "w1", DRPC_FUNCTION, "ident", sargs, NULL,
                              0, &sf, &err),
               0);
  drpc_stream_set_current(0, NULL);
  if (sim && staged && sum && sum->kind == DRPC_VAL_TENSOR) {
    drpc_tensor *early =
        drpc_tensor_to(sum->u.t, CPU, drpc_stream_from_pool(0), &err);
    CHECK(early && drpc_tensor_get_f64(early, 0) != 2.0);
    drpc_tensor_decref(early);
  }
  drpc_value_free(sargs);
  tnet_run(&N, 1000000);
  CHECK(sf && drpc_future_done(sf));
  const drpc_value *sv = NULL;
  CHECK_EQ_INT(drpc_future_get(sf, 1, &sv, &err), 0);
  CHECK(sv && sv->kind == DRPC_VAL_TENSOR);
  if (sv && sv->kind == DRPC_VAL_TENSOR)
    CHECK(at(sv->u.t, 0) == 2.0 && at(sv->u.t, 3) == 8.0);
  drpc_future_decref(sf);

  /* The caller: the response's copy is in flight when the future
   * completes; a stream that did not wait does not see it, the caller's
   * current stream does once drpc_future_wait returns. */
  drpc_stream *mine = drpc_stream_from_pool(0);
  drpc_stream *other = drpc_stream_from_pool(0);
  drpc_value *args = drpc_value_list_of(1, vt(ramp(G0, 7)));
  drpc_future *f = NULL;
  CHECK_EQ_INT(drpc_rpc_async(ag(0), "w1", DRPC_FUNCTION, "ident", args, NULL,
                              0, &f, &err),
               0);
  drpc_value_free(args);
  tnet_run(&N, 1000000);
  CHECK(f && drpc_future_done(f));
  then_probe tp = {0};
  if (f && drpc_future_done(f) && drpc_future_error(f, &err) == 0) {
    const drpc_value *v = drpc_future_value(f);
    CHECK(v && v->kind == DRPC_VAL_TENSOR);
    if (v && v->kind == DRPC_VAL_TENSOR) {
      CHECK(drpc_device_equal(drpc_tensor_device(v->u.t), G0));
      drpc_tensor *early = drpc_tensor_to(v->u.t, CPU, other, &err);
      if (sim && staged)
        CHECK(early && drpc_tensor_get_f64(early, 0) != 7.0);
      drpc_tensor_decref(early);
      drpc_stream_set_current(0, mine);
      CHECK_EQ_INT(drpc_future_wait(f, 1), 0);
      CHECK(at(v->u.t, 0) == 7.0 && at(v->u.t, 3) == 10.0);
      drpc_stream_set_current(0, NULL);
    }
    /* A then-callback runs on pool streams that wait for the value. */
    drpc_future *child = drpc_future_then(f, then_read, &tp);
    CHECK(child && drpc_future_done(child));
    CHECK_EQ_INT(drpc_future_error(child, &err), 0);
    drpc_future_decref(child);
  }
  CHECK_EQ_INT(tp.calls, 1);
  CHECK(tp.on_pool);
  CHECK(tp.first == 7.0);
  drpc_future_decref(f);

  /* remote(): the owner's value is made on the function's streams and
   * later read by the fetch on another; to_here brings it back. */
  drpc_rref *rr = remote_on_w1(
      DRPC_BUILTIN, "aten::add",
      drpc_value_list_of(2, vt(ramp(G0, 3)), vt(ramp(G0, 3))), &err);
  check_to_here(rr, 6.0, 12.0);
  drpc_rref_decref(rr);
  drpc_error_clear(&err);
  down();
}

/* A strided view of device memory as a function's result comes back
 * dense, on the caller's device, element for element (both channels). */
static void view_return(const char *channel) {
  drpc_error err = DRPC_ERROR_INIT;
  up_channel(channel, &err);
  int64_t shape[2] = {2, 3};
  float vals[6] = {1, 2, 3, 4, 5, 6};
  drpc_tensor *h = drpc_tensor_from_data(DRPC_FLOAT32, 2, shape, vals, true);
  drpc_tensor *g = drpc_tensor_to(h, G0, NULL, &err);
  drpc_tensor_decref(h);
  CHECK(g != NULL);
  drpc_value *r =
      g ? call1(0, "w1", DRPC_FUNCTION, "transpose_view", vt(g), NULL, &err)
        : NULL;
  if (!r)
    fprintf(stderr, "  transpose_view: %s\n", drpc_error_message(&err));
  CHECK(r && r->kind == DRPC_VAL_TENSOR);
  if (r && r->kind == DRPC_VAL_TENSOR) {
    const drpc_tensor *t = r->u.t;
    CHECK(drpc_device_equal(drpc_tensor_device(t), G0));
    CHECK(t->ndim == 2 && t->shape[0] == 3 && t->shape[1] == 2);
    /* The transpose: [[1, 4], [2, 5], [3, 6]]. */
    static const double want[6] = {1, 4, 2, 5, 3, 6};
    for (int i = 0; i < 6; i++)
      CHECK(at(t, i) == want[i]);
  }
  drpc_value_free(r);
  drpc_error_clear(&err);
  down();
}

static void test_view_return_staged(void) {
  view_return("cuda_staged");
}
static void test_view_return_ipc(void) {
  view_return("cuda_ipc");
}

/* remote() makes a device value on w1 (on the streams its arguments came
 * on); a later call on w1 takes the RRef as argument and computes on the
 * value from another stream; then to_here fetches it: every read is
 * ordered after the work that made the value (simcuda runs nothing early,
 * so an unordered read sees the fresh-memory fill). */
static void rref_sync(const char *channel) {
  drpc_error err = DRPC_ERROR_INIT;
  up_channel(channel, &err);
  drpc_rref *rr = remote_on_w1(
      DRPC_BUILTIN, "aten::add",
      drpc_value_list_of(2, vt(ramp(G0, 10)), vt(ramp(G0, 20))), &err);
  /* {30, 32, 34, 36} on w1's cuda:1; plus one, back on cuda:0. */
  drpc_value *r = rr ? call1(0, "w1", DRPC_FUNCTION, "rref_plus1",
                             drpc_value_rref(rr), NULL, &err)
                     : NULL;
  if (!r)
    fprintf(stderr, "  rref_plus1: %s\n", drpc_error_message(&err));
  CHECK(r && r->kind == DRPC_VAL_TENSOR);
  if (r && r->kind == DRPC_VAL_TENSOR) {
    CHECK(drpc_device_equal(drpc_tensor_device(r->u.t), G0));
    CHECK(at(r->u.t, 0) == 31.0 && at(r->u.t, 3) == 37.0);
  }
  drpc_value_free(r);
  check_to_here(rr, 30.0, 36.0);
  drpc_rref_decref(rr);
  drpc_error_clear(&err);
  down();
}

static void test_rref_sync_staged(void) {
  rref_sync("cuda_staged");
}
static void test_rref_sync_ipc(void) {
  rref_sync("cuda_ipc");
}

static bool g_sim;
static void test_stream_rules_staged(void) {
  stream_rules("cuda_staged", g_sim);
}
static void test_stream_rules_ipc(void) {
  stream_rules("cuda_ipc", g_sim);
}

static void suite(const char *backend) {
  printf("  backend %s\n", drpc_gpu_describe());
  (void)backend;
  RUN(test_gpu_to_gpu_default);
  RUN(test_gpu_to_gpu_ipc);
  RUN(test_gpu_to_gpu_staged);
  RUN(test_missing_map_fails_fast);
  RUN(test_missing_response_map);
  RUN(test_cpu_gpu_maps);
  RUN(test_map_to_self);
  RUN(test_validation);
  RUN(test_devices_and_metrics);
  RUN(test_bad_target_device);
  RUN(test_dynamic_group_maps);
  RUN(test_remote_to_here);
  RUN(test_stream_rules_staged);
  RUN(test_stream_rules_ipc);
  RUN(test_view_return_staged);
  RUN(test_view_return_ipc);
  RUN(test_rref_sync_staged);
  RUN(test_rref_sync_ipc);
}

int main(void) {
  R = drpc_registry_new();
  drpc_register_function(R, "devof", fn_devof, NULL);
  drpc_register_function(R, "ident", fn_ident, NULL);
  drpc_register_function(R, "ones_on", fn_ones_on, NULL);
  drpc_register_function(R, "stream_probe", fn_stream_probe, NULL);
  drpc_register_function(R, "transpose_view", fn_transpose_view, NULL);
  drpc_register_function(R, "rref_plus1", fn_rref_plus1, NULL);
  drpc_error err = DRPC_ERROR_INIT;
  if (drpc_gpu_setup("sim:2", &err) == 0) {
    g_sim = true;
    suite("sim");
    g_sim = false;
    drpc_gpu_teardown();
  }
  if (drpc_gpu_setup("cuda", &err) == 0 && drpc_device_count() >= 2) {
    suite("cuda");
  } else {
    printf("SKIP cuda: %s\n",
           err.code ? drpc_error_message(&err) : "fewer than two devices");
  }
  drpc_gpu_teardown();
  drpc_error_clear(&err);
  drpc_registry_free(R);
  return test_finish();
}
