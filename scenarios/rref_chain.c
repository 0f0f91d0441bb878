/* Scenario rref_chain: each round every worker creates an RRef on its
 * right neighbour (drpc_remote) and sends it once round the ring: each hop
 * is an async-execution function that forwards the RRef to the next
 * worker with a nested call and returns that call's future (no thread
 * waits), and the last hop, back on the creator's worker, fetches the value
 * with to_here and answers its checksum. On the way the RRef goes from a
 * user to its owner, from the owner to a user and from user to user. */
#include <stdint.h>

#include "scenario.h"

#define CHAIN_LEN 256

/* The value of round seed: CHAIN_LEN int64s. */
static int64_t elem(int64_t seed, int i) {
  return seed * 131 + (int64_t)i * 7 + 1;
}

static int64_t expected_sum(int64_t seed) {
  int64_t s = 0;
  for (int i = 0; i < CHAIN_LEN; i++)
    s += elem(seed, i);
  return s;
}

/* The checksum of a chain value; -1 when it is not one. */
static int64_t checksum(const drpc_value *v) {
  if (!v || v->kind != DRPC_VAL_TENSOR || v->u.t->dtype != DRPC_INT64 ||
      drpc_tensor_numel(v->u.t) != CHAIN_LEN)
    return -1;
  int64_t s = 0;
  for (int i = 0; i < CHAIN_LEN; i++)
    s += drpc_tensor_get_i64(v->u.t, i);
  return s;
}

/* chain.make(seed): the value the RRef's owner keeps. */
static drpc_value *make_fn(drpc_call *call, const drpc_value *args,
                           const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)kwargs;
  const drpc_value *seed = drpc_list_at(args, 0);
  if (!seed || seed->kind != DRPC_VAL_INT) {
    drpc_error_set(err, DRPC_ETYPE, "chain.make expects a seed");
    return NULL;
  }
  int64_t shape[1] = {CHAIN_LEN};
  drpc_tensor *t = drpc_tensor_new(DRPC_INT64, 1, shape);
  drpc_value *v = t ? drpc_value_tensor(t) : NULL;
  if (v) {
    int64_t *p = drpc_tensor_data(t);
    for (int i = 0; i < CHAIN_LEN; i++)
      p[i] = elem(seed->u.i, i);
  }
  drpc_tensor_decref(t);
  if (!v)
    drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  return v;
}

/* chain.hop(rref, hops_left): forwards to the next worker on the ring,
 * as another hop while hops are left, else as the fetch. */
static drpc_future *hop_fn(drpc_call *call, const drpc_value *args,
                           const drpc_value *kwargs, drpc_error *err) {
  (void)kwargs;
  drpc_agent *a = drpc_call_agent(call);
  const drpc_value *rv = drpc_list_at(args, 0), *left = drpc_list_at(args, 1);
  drpc_rref *r = drpc_value_get_rref(rv);
  if (!r || !left || left->kind != DRPC_VAL_INT || left->u.i < 1) {
    drpc_error_set(err, DRPC_ETYPE, "chain.hop expects an RRef and a count");
    return NULL;
  }
  size_t world = 0;
  drpc_agent_workers(a, &world);
  int16_t next = (int16_t)((drpc_agent_self(a)->id + 1) % (int)world);
  drpc_value *fwd = left->u.i > 1
                        ? drpc_value_list_of(2, drpc_value_rref(r),
                                             drpc_value_int(left->u.i - 1))
                        : drpc_value_list_of(1, drpc_value_rref(r));
  if (!fwd) {
    drpc_error_set(err, DRPC_ENOMEM, "out of memory");
    return NULL;
  }
  drpc_future *f = NULL;
  if (drpc_rpc_async_id(a, next, DRPC_FUNCTION,
                        left->u.i > 1 ? "chain.hop" : "chain.fetch", fwd, NULL,
                        DRPC_UNSET_RPC_TIMEOUT, &f, err))
    f = NULL;
  drpc_value_free(fwd);
  return f;
}

/* chain.fetch(rref): the last hop; the checksum of the value. */
static drpc_value *fetch_fn(drpc_call *call, const drpc_value *args,
                            const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)kwargs;
  drpc_rref *r = drpc_value_get_rref(drpc_list_at(args, 0));
  if (!r) {
    drpc_error_set(err, DRPC_ETYPE, "chain.fetch expects an RRef");
    return NULL;
  }
  drpc_value *v = NULL;
  if (drpc_rref_to_here(r, DRPC_UNSET_RPC_TIMEOUT, &v, err))
    return NULL;
  int64_t s = checksum(v);
  drpc_value_free(v);
  if (s < 0) {
    drpc_error_set(err, DRPC_ETYPE, "chain.fetch: not a chain value");
    return NULL;
  }
  return drpc_value_int(s);
}

/* chain.sum(value): run on the owner through the RRef proxy. */
static drpc_value *sum_fn(drpc_call *call, const drpc_value *args,
                          const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)kwargs;
  int64_t s = checksum(drpc_list_at(args, 0));
  if (s < 0) {
    drpc_error_set(err, DRPC_ETYPE, "chain.sum: not a chain value");
    return NULL;
  }
  return drpc_value_int(s);
}

static int chain_register(drpc_registry *r, const drpc_scn_host *h) {
  int rc = drpc_register_function(r, "chain.make", make_fn, (void *)h);
  if (!rc)
    rc = drpc_register_async_function(r, "chain.hop", hop_fn, (void *)h);
  if (!rc)
    rc = drpc_register_function(r, "chain.fetch", fetch_fn, (void *)h);
  if (!rc)
    rc = drpc_register_function(r, "chain.sum", sum_fn, (void *)h);
  return rc;
}

/* Checks one int result against want; errors go to check_error. */
static void check_sum(const drpc_scn_host *h, drpc_agent *a, int rc,
                      const drpc_value *v, drpc_error *e, int64_t want,
                      const char *what, int round) {
  if (rc) {
    drpc_scn_check_error(h, a, e, what);
    return;
  }
  if (!v || v->kind != DRPC_VAL_INT || v->u.i != want)
    drpc_scn_violation(h, a, "%s: round %d: %s answered %lld, not %lld",
                       drpc_agent_self(a)->name, round, what,
                       v && v->kind == DRPC_VAL_INT ? (long long)v->u.i : -1LL,
                       (long long)want);
}

static void chain_round(drpc_agent *a, int rank, int world, int round,
                        const drpc_scn_host *h) {
  char owner[16];
  drpc_scn_worker_name((rank + 1) % world, owner, sizeof owner);
  int64_t seed = (int64_t)rank * 100000 + round;
  int64_t want = expected_sum(seed);
  drpc_error e = DRPC_ERROR_INIT;
  drpc_rref *r = NULL;
  drpc_value *args = drpc_value_list_of(1, drpc_value_int(seed));
  if (!args || drpc_remote(a, owner, DRPC_FUNCTION, "chain.make", args, NULL,
                           DRPC_UNSET_RPC_TIMEOUT, &r, &e)) {
    drpc_value_free(args);
    drpc_scn_check_error(h, a, &e, "remote chain.make");
    drpc_error_clear(&e);
    return;
  }
  drpc_value_free(args);
  /* Round the ring: world - 1 hops, then the fetch back here. */
  args = drpc_value_list_of(2, drpc_value_rref(r), drpc_value_int(world - 1));
  drpc_future *f = NULL;
  if (!args || drpc_rpc_async(a, owner, DRPC_FUNCTION, "chain.hop", args, NULL,
                              DRPC_UNSET_RPC_TIMEOUT, &f, &e)) {
    drpc_scn_check_error(h, a, &e, "rpc_async chain.hop");
  } else {
    const drpc_value *v = NULL;
    int rc = drpc_future_get(f, -1, &v, &e);
    check_sum(h, a, rc, v, &e, want, "the chain", round);
  }
  drpc_error_clear(&e);
  drpc_future_decref(f);
  drpc_value_free(args);
  /* The owner's own view, through the proxy. */
  drpc_value *v = NULL;
  int rc = drpc_rref_rpc_sync(r, DRPC_FUNCTION, "chain.sum", NULL, NULL,
                              DRPC_UNSET_RPC_TIMEOUT, &v, &e);
  check_sum(h, a, rc, v, &e, want, "proxy chain.sum", round);
  drpc_value_free(v);
  drpc_error_clear(&e);
  drpc_rref_decref(r);
}

static int chain_run(drpc_agent *a, int rank, int world, const drpc_scn_host *h,
                     drpc_error *err) {
  (void)err;
  for (int i = 0; i < h->iters; i++) {
    chain_round(a, rank, world, i, h);
    if (h->think_ns)
      h->compute(h, a, h->think_ns);
  }
  drpc_scn_rref_shutdown(a, h, drpc_scn_rref_chain.shutdown_timeout_s);
  return 0;
}

const drpc_scenario drpc_scn_rref_chain = {
    .name = "rref_chain",
    .summary = "RRefs forwarded round a ring by async hops, fetched at the "
               "end",
    .min_workers = 2,
    .max_workers = 64,
    .default_workers = 4,
    .default_iters = 10,
    .rpc_timeout_s = 20.0,
    .shutdown_timeout_s = 30.0,
    .register_fns = chain_register,
    .run = chain_run,
    /* A restarted worker numbers its RRefs and forks from 1 again, and
     * those ids (creator rank, local id) carry no life: owners still hold
     * the last life's, so new forks collide with deleted ones ("fork ... after
     * deletion") and new RRefs with live ones (a wrong sum). A core
     * matter, not the scenario's. */
};
