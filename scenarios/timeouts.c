/* Scenario timeouts: deliberately slow functions called with timeouts
 * shorter and longer than they take; a short one must time out (the callee
 * still runs it and its late answer must be dropped), a long one must
 * succeed, and a wait that gives up early must leave the call running. */
#include <stdio.h>

#include "scenario.h"

static drpc_value *slow_fn(drpc_call *call, const drpc_value *args,
                           const drpc_value *kwargs, drpc_error *err) {
  (void)kwargs;
  const drpc_scn_host *h = drpc_call_user(call);
  const drpc_value *ms = drpc_list_at(args, 0);
  if (!ms || ms->kind != DRPC_VAL_INT || ms->u.i < 0 || ms->u.i > 60000) {
    drpc_error_set(err, DRPC_ETYPE, "scn.slow expects milliseconds");
    return NULL;
  }
  h->compute(h, drpc_call_agent(call), (uint64_t)ms->u.i * 1000000u);
  return drpc_value_int(ms->u.i);
}

static int timeouts_register(drpc_registry *r, const drpc_scn_host *h) {
  return drpc_register_function(r, "scn.slow", slow_fn, (void *)h);
}

/* Calls scn.slow(ms) on dst with timeout_s and returns the outcome. */
static int call_slow(drpc_agent *a, const char *dst, int ms, double timeout_s,
                     drpc_future **f, drpc_error *e) {
  drpc_value *args = drpc_value_list_of(1, drpc_value_int(ms));
  if (!args)
    return drpc_error_set(e, DRPC_ENOMEM, "out of memory");
  int rc = drpc_rpc_async(a, dst, DRPC_FUNCTION, "scn.slow", args, NULL,
                          timeout_s, f, e);
  drpc_value_free(args);
  return rc;
}

static int timeouts_run(drpc_agent *a, int rank, int world,
                        const drpc_scn_host *h, drpc_error *err) {
  (void)err;
  const char *me = drpc_agent_self(a)->name;
  for (int i = 0; i < h->iters; i++) {
    char dst[16];
    drpc_scn_worker_name((rank + 1 + i) % world, dst, sizeof dst);
    drpc_future *f = NULL;
    drpc_error e = DRPC_ERROR_INIT;
    const drpc_value *v = NULL;
    int rc;
    switch (i % 3) {
    case 0: /* 50 ms of work, 10 ms allowed: must time out */
      if (call_slow(a, dst, 50, 0.010, &f, &e) == 0) {
        rc = drpc_future_get(f, -1, &v, &e);
        if (rc == 0)
          drpc_scn_violation(h, a, "%s: call %d to %s beat its 10 ms timeout",
                             me, i, dst);
        else if (rc != DRPC_ETIMEOUT)
          drpc_scn_check_error(h, a, &e, "short-timeout call");
      } else {
        drpc_scn_check_error(h, a, &e, "rpc_async scn.slow");
      }
      break;
    case 1: /* 5 ms of work, 5 s allowed: must succeed */
      if (call_slow(a, dst, 5, 5.0, &f, &e) == 0) {
        if (drpc_future_get(f, -1, &v, &e) == 0) {
          if (!v || v->kind != DRPC_VAL_INT || v->u.i != 5)
            drpc_scn_violation(h, a, "%s: scn.slow(5) returned a wrong value",
                               me);
        } else {
          drpc_scn_check_error(h, a, &e, "long-timeout call");
        }
      } else {
        drpc_scn_check_error(h, a, &e, "rpc_async scn.slow");
      }
      break;
    default: /* no call timeout; a 5 ms wait gives up, the call goes on */
      if (call_slow(a, dst, 30, 0, &f, &e) == 0) {
        rc = drpc_future_wait(f, 0.005);
        if (rc == 0 && !h->faults)
          drpc_scn_violation(h, a, "%s: 30 ms call done within a 5 ms wait",
                             me);
        if (drpc_future_get(f, -1, &v, &e) == 0) {
          if (!v || v->kind != DRPC_VAL_INT || v->u.i != 30)
            drpc_scn_violation(h, a, "%s: scn.slow(30) returned a wrong value",
                               me);
        } else {
          drpc_scn_check_error(h, a, &e, "untimed call");
        }
      } else {
        drpc_scn_check_error(h, a, &e, "rpc_async scn.slow");
      }
      break;
    }
    drpc_error_clear(&e);
    drpc_future_decref(f);
  }
  return 0;
}

const drpc_scenario drpc_scn_timeouts = {
    .name = "timeouts",
    .summary = "slow functions with short and long timeouts",
    .min_workers = 1,
    .max_workers = 64,
    .default_workers = 3,
    .default_iters = 12,
    .rpc_timeout_s = 10.0,
    .shutdown_timeout_s = 30.0,
    .register_fns = timeouts_register,
    .run = timeouts_run,
};
