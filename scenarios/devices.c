/* Scenario devices: CUDA tensors through device maps. Worker r computes on
 * cuda:(r % N) (N: the host's CUDA devices) and maps it to every peer p's
 * cuda:(p % N). Each round it calls two peers with device tensors: a
 * builtin (aten::add or aten::mul, which runs where the map puts its
 * arguments) and scn.dev_check, which checks on the callee that the tensor
 * arrived on the mapped device with the values sent and answers with a
 * tensor it computed there. Every result must come back on cuda:(r % N)
 * (the reverse map) with the values expected. Half the calls never time
 * out, so under faults only a lost connection can end them. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "drpc/device.h"
#include "scenario.h"

/* Elements of the tensors: mostly small, every eighth round a large one
 * (1 MiB of float32), so that copies take visible time on a slow link. */
#define DEV_SMALL_MAX 2048
#define DEV_LARGE 262144

static drpc_device dev_of(int rank) {
  int n = drpc_device_count();
  drpc_device d = {DRPC_DEVICE_CUDA, (int8_t)(n > 0 ? rank % n : 0)};
  return d;
}

/* Element k of round i's tensor from rank: small integers, exact in
 * float32, different for every sender and round. */
static float value_at(int64_t rank, int64_t i, int64_t k) {
  return (float)((rank * 131 + i * 17 + k * 7) % 1000);
}

static int64_t numel_for(int rank, int i) {
  return i % 8 == 7 ? DEV_LARGE : 1 + (i * 97 + rank * 13) % DEV_SMALL_MAX;
}

/* Round i's tensor of rank, on dev. NULL with err set on failure. */
static drpc_tensor *make(int rank, int i, drpc_device dev, drpc_error *err) {
  int64_t n = numel_for(rank, i);
  drpc_tensor *c = drpc_tensor_empty(DRPC_FLOAT32, 1, &n);
  if (!c) {
    drpc_error_set(err, DRPC_ENOMEM, "out of memory");
    return NULL;
  }
  float *p = drpc_tensor_data(c);
  for (int64_t k = 0; k < n; k++)
    p[k] = value_at(rank, i, k);
  drpc_tensor *g = drpc_tensor_to(c, dev, NULL, err);
  drpc_tensor_decref(c);
  return g;
}

/* Checks that t is a float32 [n] tensor on dev whose element k is
 * scale * value_at(rank, i, k) + plus; writes what differs into why. */
static bool check(const drpc_tensor *t, drpc_device dev, int rank, int i,
                  float scale, float plus, char *why, size_t len) {
  char want[16], got[16];
  int64_t n = numel_for(rank, i);
  if (!t || t->dtype != DRPC_FLOAT32 || t->ndim != 1 || t->shape[0] != n) {
    snprintf(why, len, "not a float32 [%lld] tensor", (long long)n);
    return false;
  }
  if (!drpc_device_equal(drpc_tensor_device(t), dev)) {
    snprintf(why, len, "on %s, not %s",
             drpc_device_format(drpc_tensor_device(t), got, sizeof got),
             drpc_device_format(dev, want, sizeof want));
    return false;
  }
  /* Read back through the current stream, which the call's completion
   * made wait for the data. */
  drpc_error err = DRPC_ERROR_INIT;
  drpc_tensor *h = drpc_tensor_to(t, DRPC_CPU, NULL, &err);
  if (!h) {
    snprintf(why, len, "copy to the host failed: %s", drpc_error_message(&err));
    drpc_error_clear(&err);
    return false;
  }
  const float *p = drpc_tensor_data(h);
  bool ok = true;
  for (int64_t k = 0; k < n && ok; k++) {
    float expect = scale * value_at(rank, i, k) + plus;
    if (p[k] != expect) {
      snprintf(why, len, "element %lld is %g, expected %g", (long long)k,
               (double)p[k], (double)expect);
      ok = false;
    }
  }
  drpc_tensor_decref(h);
  return ok;
}

/* scn.dev_check(x, sender, round): x must be round's tensor of sender, on
 * this worker's device; answers [3 * x (computed here), numel]. */
static drpc_value *dev_check_fn(drpc_call *call, const drpc_value *args,
                                const drpc_value *kwargs, drpc_error *err) {
  (void)kwargs;
  const drpc_scn_host *h = drpc_call_user(call);
  drpc_agent *a = drpc_call_agent(call);
  const drpc_value *x = drpc_list_at(args, 0);
  const drpc_value *sender = drpc_list_at(args, 1);
  const drpc_value *round = drpc_list_at(args, 2);
  if (!x || x->kind != DRPC_VAL_TENSOR || !sender ||
      sender->kind != DRPC_VAL_INT || !round || round->kind != DRPC_VAL_INT) {
    drpc_error_set(err, DRPC_ETYPE,
                   "scn.dev_check: expected (tensor, int, "
                   "int)");
    return NULL;
  }
  int self = drpc_agent_self(a)->id;
  char why[160];
  if (!check(x->u.t, dev_of(self), (int)sender->u.i, (int)round->u.i, 1, 0, why,
             sizeof why)) {
    drpc_scn_violation(h, a, "%s: the tensor of w%lld round %lld arrived %s",
                       drpc_agent_self(a)->name, (long long)sender->u.i,
                       (long long)round->u.i, why);
    drpc_error_set(err, DRPC_EINVAL, "scn.dev_check: the tensor arrived %s",
                   why);
    return NULL;
  }
  drpc_value *margs =
      drpc_value_list_of(2, drpc_value_clone(x), drpc_value_int(3));
  drpc_value *y = margs ? drpc_op_run("aten::mul", margs, NULL, err) : NULL;
  drpc_value_free(margs);
  if (!y)
    return NULL;
  return drpc_value_list_of(2, y, drpc_value_int(drpc_tensor_numel(x->u.t)));
}

static int devices_register(drpc_registry *r, const drpc_scn_host *h) {
  return drpc_register_function(r, "scn.dev_check", dev_check_fn, (void *)h);
}

/* Worker rank's device maps: its device to each peer's. */
static int devices_options(drpc_options *o, int rank, int world,
                           drpc_error *err) {
  if (drpc_device_count() < 1)
    return drpc_error_set(err, DRPC_EUNSUPPORTED,
                          "the devices scenario needs CUDA devices: set "
                          "DRPC_CUDA=sim:2 (simcuda) or run it in drpc sim");
  for (int p = 0; p < world; p++) {
    if (p == rank)
      continue;
    char peer[16];
    drpc_scn_worker_name(p, peer, sizeof peer);
    drpc_device from = dev_of(rank), to = dev_of(p);
    int rc = drpc_options_set_device_map(o, peer, &from, &to, 1, err);
    if (rc)
      return rc;
  }
  return 0;
}

/* One checked call: what to send, what must come back. */
typedef struct dev_call {
  drpc_future *f;
  char peer[16];
  const char *what;
  bool listed; /* the answer is [tensor, numel] (scn.dev_check) */
  float scale, plus;
} dev_call;

static void finish(dev_call *c, drpc_agent *a, int rank, int i,
                   const drpc_scn_host *h) {
  if (!c->f)
    return;
  drpc_error e = DRPC_ERROR_INIT;
  const drpc_value *v = NULL;
  if (drpc_future_get(c->f, -1, &v, &e) == 0) {
    const drpc_value *t = c->listed ? drpc_list_at(v, 0) : v;
    char why[160];
    if (c->listed &&
        (!drpc_list_at(v, 1) || drpc_list_at(v, 1)->kind != DRPC_VAL_INT ||
         drpc_list_at(v, 1)->u.i != numel_for(rank, i)))
      drpc_scn_violation(h, a, "%s: %s round %d on %s: wrong element count",
                         drpc_agent_self(a)->name, c->what, i, c->peer);
    else if (!t || t->kind != DRPC_VAL_TENSOR)
      drpc_scn_violation(h, a, "%s: %s round %d on %s: no tensor came back",
                         drpc_agent_self(a)->name, c->what, i, c->peer);
    else if (!check(t->u.t, dev_of(rank), rank, i, c->scale, c->plus, why,
                    sizeof why))
      drpc_scn_violation(h, a, "%s: %s round %d on %s: the result is %s",
                         drpc_agent_self(a)->name, c->what, i, c->peer, why);
  } else {
    drpc_scn_check_error(h, a, &e, c->what);
  }
  drpc_error_clear(&e);
  drpc_future_decref(c->f);
  c->f = NULL;
}

static int devices_run(drpc_agent *a, int rank, int world,
                       const drpc_scn_host *h, drpc_error *err) {
  if (world < 2)
    return 0;
  drpc_device mine = dev_of(rank);
  for (int i = 0; i < h->iters; i++) {
    drpc_tensor *x = make(rank, i, mine, err);
    if (!x)
      return err->code ? err->code : DRPC_ENOMEM;
    /* Odd rounds never time out: only the connection can end them. */
    double timeout_s = i % 2 ? 0 : 10.0;
    dev_call calls[2];
    memset(calls, 0, sizeof calls);
    drpc_scn_worker_name((rank + 1 + i % (world - 1)) % world, calls[0].peer,
                         sizeof calls[0].peer);
    drpc_scn_worker_name((rank + 1 + (i + 1) % (world - 1)) % world,
                         calls[1].peer, sizeof calls[1].peer);
    drpc_value *bargs;
    const char *op;
    if (i % 2 == 0) {
      op = "aten::add"; /* x + x */
      bargs = drpc_value_list_of(2, drpc_value_tensor(x), drpc_value_tensor(x));
      calls[0].scale = 2;
    } else {
      op = "aten::mul"; /* x * 5 */
      bargs = drpc_value_list_of(2, drpc_value_tensor(x), drpc_value_int(5));
      calls[0].scale = 5;
    }
    calls[0].what = op;
    drpc_value *cargs = drpc_value_list_of(
        3, drpc_value_tensor(x), drpc_value_int(rank), drpc_value_int(i));
    calls[1].what = "scn.dev_check";
    calls[1].listed = true;
    calls[1].scale = 3;
    drpc_error e = DRPC_ERROR_INIT;
    if (bargs && drpc_rpc_async(a, calls[0].peer, DRPC_BUILTIN, op, bargs, NULL,
                                timeout_s, &calls[0].f, &e))
      drpc_scn_check_error(h, a, &e, op);
    drpc_error_clear(&e);
    if (cargs &&
        drpc_rpc_async(a, calls[1].peer, DRPC_FUNCTION, "scn.dev_check", cargs,
                       NULL, timeout_s, &calls[1].f, &e))
      drpc_scn_check_error(h, a, &e, "scn.dev_check");
    drpc_error_clear(&e);
    drpc_value_free(bargs);
    drpc_value_free(cargs);
    drpc_tensor_decref(x); /* the values took references of their own */
    for (int k = 0; k < 2; k++)
      finish(&calls[k], a, rank, i, h);
    if (!bargs || !cargs)
      return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  }
  return 0;
}

const drpc_scenario drpc_scn_devices = {
    .name = "devices",
    .summary = "CUDA tensors through device maps: builtins and checked "
               "functions on the mapped devices",
    .min_workers = 2,
    .max_workers = 64,
    .default_workers = 4,
    .default_iters = 24,
    .rpc_timeout_s = 10.0,
    .shutdown_timeout_s = 30.0,
    .register_fns = devices_register,
    .run = devices_run,
    .min_devices = 1,
    .options = devices_options,
};
