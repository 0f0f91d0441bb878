/* Scenario fanout: in every round each worker calls every other worker at
 * once and waits for all answers (sums it can check). */
#include <stdlib.h>

#include "scenario.h"

static drpc_value *add_fn(drpc_call *call, const drpc_value *args,
                          const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)kwargs;
  const drpc_value *x = drpc_list_at(args, 0), *y = drpc_list_at(args, 1);
  if (!x || !y || x->kind != DRPC_VAL_INT || y->kind != DRPC_VAL_INT) {
    drpc_error_set(err, DRPC_ETYPE, "scn.add expects two ints");
    return NULL;
  }
  return drpc_value_int(x->u.i + y->u.i);
}

static int fanout_register(drpc_registry *r, const drpc_scn_host *h) {
  return drpc_register_function(r, "scn.add", add_fn, (void *)h);
}

static int fanout_run(drpc_agent *a, int rank, int world,
                      const drpc_scn_host *h, drpc_error *err) {
  drpc_future **fs = calloc((size_t)world, sizeof *fs);
  if (!fs)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  for (int round = 0; round < h->iters; round++) {
    int64_t base = (int64_t)rank * 1000000 + round;
    for (int p = 0; p < world; p++) {
      fs[p] = NULL;
      if (p == rank && world > 1)
        continue;
      char name[16];
      drpc_scn_worker_name(p, name, sizeof name);
      drpc_value *args =
          drpc_value_list_of(2, drpc_value_int(base), drpc_value_int(p));
      drpc_error e = DRPC_ERROR_INIT;
      if (!args || drpc_rpc_async(a, name, DRPC_FUNCTION, "scn.add", args, NULL,
                                  DRPC_UNSET_RPC_TIMEOUT, &fs[p], &e))
        drpc_scn_check_error(h, a, &e, "rpc_async scn.add");
      drpc_error_clear(&e);
      drpc_value_free(args);
    }
    for (int p = 0; p < world; p++) {
      if (!fs[p])
        continue;
      const drpc_value *v = NULL;
      drpc_error e = DRPC_ERROR_INIT;
      if (drpc_future_get(fs[p], -1, &v, &e) == 0) {
        if (!v || v->kind != DRPC_VAL_INT || v->u.i != base + p)
          drpc_scn_violation(h, a, "%s: scn.add round %d on w%d: wrong sum",
                             drpc_agent_self(a)->name, round, p);
      } else {
        drpc_scn_check_error(h, a, &e, "scn.add");
      }
      drpc_error_clear(&e);
      drpc_future_decref(fs[p]);
    }
    if (h->think_ns)
      h->compute(h, a, h->think_ns);
  }
  free(fs);
  return 0;
}

const drpc_scenario drpc_scn_fanout = {
    .name = "fanout",
    .summary = "every worker calls every other worker each round",
    .min_workers = 1,
    .max_workers = 64,
    .default_workers = 4,
    .default_iters = 20,
    .rpc_timeout_s = 10.0,
    .shutdown_timeout_s = 30.0,
    .register_fns = fanout_register,
    .run = fanout_run,
};
