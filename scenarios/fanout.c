/* Scenario fanout: in every round each worker calls every other worker at
 * once and waits for all answers (sums it can check). Above
 * FANOUT_DENSE_MAX workers it samples: each worker calls FANOUT_SAMPLE
 * peers per round, so a round costs O(N) calls, not O(N^2). */
#include <stdint.h>
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

#define FANOUT_DENSE_MAX 64
#define FANOUT_SAMPLE 8

/* The i-th peer rank calls in a sampled round: a fixed hash of (rank,
 * round, i), never rank itself. */
static int sample_peer(int rank, int world, int round, int i) {
  uint64_t z = ((uint64_t)(uint32_t)rank << 32 | (uint32_t)round) *
                   0x9e3779b97f4a7c15ull +
               (uint64_t)i;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return (rank + 1 + (int)(z % (uint64_t)(world - 1))) % world;
}

static int fanout_run(drpc_agent *a, int rank, int world,
                      const drpc_scn_host *h, drpc_error *err) {
  bool sampled = world > FANOUT_DENSE_MAX;
  int ncalls = sampled ? FANOUT_SAMPLE : world;
  drpc_future **fs = calloc((size_t)ncalls, sizeof *fs);
  int *peer = calloc((size_t)ncalls, sizeof *peer);
  if (!fs || !peer) {
    free(fs);
    free(peer);
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  }
  for (int round = 0; round < h->iters; round++) {
    int64_t base = (int64_t)rank * 1000000 + round;
    for (int i = 0; i < ncalls; i++) {
      int p = sampled ? sample_peer(rank, world, round, i) : i;
      peer[i] = p;
      fs[i] = NULL;
      if (p == rank && world > 1)
        continue;
      char name[16];
      drpc_scn_worker_name(p, name, sizeof name);
      drpc_value *args =
          drpc_value_list_of(2, drpc_value_int(base), drpc_value_int(p));
      drpc_error e = DRPC_ERROR_INIT;
      if (!args || drpc_rpc_async(a, name, DRPC_FUNCTION, "scn.add", args, NULL,
                                  DRPC_UNSET_RPC_TIMEOUT, &fs[i], &e))
        drpc_scn_check_error(h, a, &e, "rpc_async scn.add");
      drpc_error_clear(&e);
      drpc_value_free(args);
    }
    for (int i = 0; i < ncalls; i++) {
      if (!fs[i])
        continue;
      int p = peer[i];
      const drpc_value *v = NULL;
      drpc_error e = DRPC_ERROR_INIT;
      if (drpc_future_get(fs[i], -1, &v, &e) == 0) {
        if (!v || v->kind != DRPC_VAL_INT || v->u.i != base + p)
          drpc_scn_violation(h, a, "%s: scn.add round %d on w%d: wrong sum",
                             drpc_agent_self(a)->name, round, p);
      } else {
        drpc_scn_check_error(h, a, &e, "scn.add");
      }
      drpc_error_clear(&e);
      drpc_future_decref(fs[i]);
    }
    if (h->think_ns)
      h->compute(h, a, h->think_ns);
  }
  free(fs);
  free(peer);
  return 0;
}

const drpc_scenario drpc_scn_fanout = {
    .name = "fanout",
    .summary = "every worker calls every other worker each round (8 sampled "
               "peers above 64 workers)",
    .min_workers = 1,
    .max_workers = 1024,
    .default_workers = 4,
    .default_iters = 20,
    .rpc_timeout_s = 10.0,
    .shutdown_timeout_s = 30.0,
    .register_fns = fanout_register,
    .run = fanout_run,
};
