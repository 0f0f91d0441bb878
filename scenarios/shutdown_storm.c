/* Scenario shutdown_storm: every worker starts a burst of calls (some of
 * them relayed through a third worker, so callees call out while the group
 * is agreeing to stop) and shuts down gracefully at once, with all of them
 * still in flight. Graceful shutdown must wait for every one of them. */
#include <stdlib.h>

#include "scenario.h"

#define STORM_CALLS 8

static drpc_value *work_fn(drpc_call *call, const drpc_value *args,
                           const drpc_value *kwargs, drpc_error *err) {
  (void)kwargs;
  const drpc_scn_host *h = drpc_call_user(call);
  const drpc_value *x = drpc_list_at(args, 0);
  if (!x || x->kind != DRPC_VAL_INT) {
    drpc_error_set(err, DRPC_ETYPE, "scn.work expects an int");
    return NULL;
  }
  h->compute(h, drpc_call_agent(call), (uint64_t)(x->u.i % 7 + 1) * 1000000u);
  return drpc_value_int(x->u.i * 2);
}

/* Calls scn.work on the worker named by args[1]; its answer is the relay's.
 * An async-execution function: waiting for the inner call in a pool thread
 * (rpc_sync) could tie up every thread of a small pool in a cycle of
 * relays, which is a deadlock in PyTorch as much as here. */
static drpc_future *relay_fn(drpc_call *call, const drpc_value *args,
                             const drpc_value *kwargs, drpc_error *err) {
  (void)kwargs;
  const drpc_value *x = drpc_list_at(args, 0), *to = drpc_list_at(args, 1);
  if (!x || !to || x->kind != DRPC_VAL_INT || to->kind != DRPC_VAL_STR) {
    drpc_error_set(err, DRPC_ETYPE, "scn.relay expects [int, name]");
    return NULL;
  }
  drpc_value *inner = drpc_value_list_of(1, drpc_value_int(x->u.i));
  drpc_future *f = NULL;
  if (inner)
    drpc_rpc_async(drpc_call_agent(call), to->u.s.data, DRPC_FUNCTION,
                   "scn.work", inner, NULL, DRPC_UNSET_RPC_TIMEOUT, &f, err);
  else
    drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  drpc_value_free(inner);
  return f;
}

static int storm_register(drpc_registry *r, const drpc_scn_host *h) {
  int rc = drpc_register_function(r, "scn.work", work_fn, (void *)h);
  return rc ? rc
            : drpc_register_async_function(r, "scn.relay", relay_fn, (void *)h);
}

static int storm_run(drpc_agent *a, int rank, int world, const drpc_scn_host *h,
                     drpc_error *err) {
  const char *me = drpc_agent_self(a)->name;
  int n = STORM_CALLS * (h->iters > 0 ? h->iters : 1);
  drpc_future **fs = calloc((size_t)n, sizeof *fs);
  int64_t *want = calloc((size_t)n, sizeof *want);
  if (!fs || !want) {
    free(fs);
    free(want);
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  }
  for (int i = 0; i < n; i++) {
    char dst[16], via[16];
    drpc_scn_worker_name((rank + 1 + i) % world, dst, sizeof dst);
    drpc_scn_worker_name((rank + 2 + i) % world, via, sizeof via);
    int64_t x = (int64_t)rank * 1000 + i;
    want[i] = x * 2;
    drpc_value *args = i % 3 == 2 ? drpc_value_list_of(2, drpc_value_int(x),
                                                       drpc_value_str(dst))
                                  : drpc_value_list_of(1, drpc_value_int(x));
    drpc_error e = DRPC_ERROR_INIT;
    if (!args || drpc_rpc_async(a, i % 3 == 2 ? via : dst, DRPC_FUNCTION,
                                i % 3 == 2 ? "scn.relay" : "scn.work", args,
                                NULL, DRPC_UNSET_RPC_TIMEOUT, &fs[i], &e))
      drpc_scn_check_error(h, a, &e, "rpc_async");
    drpc_error_clear(&e);
    drpc_value_free(args);
  }
  /* All of them are in flight: stop now. */
  drpc_error e = DRPC_ERROR_INIT;
  if (drpc_agent_shutdown(a, true, -1, &e))
    drpc_scn_check_error(h, a, &e, "graceful shutdown");
  drpc_error_clear(&e);
  for (int i = 0; i < n; i++) {
    if (!fs[i])
      continue;
    if (!drpc_future_done(fs[i])) {
      drpc_scn_violation(
          h, a, "%s: call %d still pending after graceful shutdown", me, i);
    } else {
      const drpc_value *v = NULL;
      if (drpc_future_get(fs[i], 0, &v, &e) == 0) {
        if (!v || v->kind != DRPC_VAL_INT || v->u.i != want[i])
          drpc_scn_violation(h, a, "%s: call %d returned a wrong value", me, i);
      } else {
        drpc_scn_check_error(h, a, &e, "call in flight at shutdown");
      }
      drpc_error_clear(&e);
    }
    drpc_future_decref(fs[i]);
  }
  free(fs);
  free(want);
  return 0;
}

const drpc_scenario drpc_scn_shutdown_storm = {
    .name = "shutdown_storm",
    .summary = "graceful shutdown of every worker with calls in flight",
    .min_workers = 1,
    .max_workers = 64,
    .default_workers = 4,
    .default_iters = 2,
    .rpc_timeout_s = 10.0,
    .shutdown_timeout_s = 30.0,
    .register_fns = storm_register,
    .run = storm_run,
};
