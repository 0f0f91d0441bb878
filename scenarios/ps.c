/* Scenario ps: a parameter server over RRefs. Worker 0 owns one shard of
 * parameters per trainer (a float32 tensor); every other worker trains:
 * each round it fetches its shard (to_here), computes a fake gradient and
 * applies it on the owner through an RRef proxy. Gradients are small
 * integers, so every sum is exact, and each round also marks its own
 * ledger element: a shard's value tells exactly which updates ran, and
 * how often. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "scenario.h"

/* A shard: PS_DENSE elements every update touches, then one ledger
 * element per round (round k adds 1 to element PS_DENSE + k). */
#define PS_SHARD_LEN 1024
#define PS_DENSE 512
#define PS_MAX_ROUNDS (PS_SHARD_LEN - PS_DENSE)

/* Round k's gradient at dense element j: an integer in [1, 8] that
 * depends only on k % 8 and j % 8 (check_shard relies on that). */
static float grad_at(int k, int j) {
  return (float)((k * 7 + j) % 8 + 1);
}

static drpc_tensor *zero_shard(void) {
  int64_t shape[1] = {PS_SHARD_LEN};
  return drpc_tensor_new(DRPC_FLOAT32, 1, shape);
}

static drpc_tensor *gradient(int k) {
  drpc_tensor *t = zero_shard();
  if (!t)
    return NULL;
  float *g = drpc_tensor_data(t);
  float pat[8];
  for (int j = 0; j < 8; j++)
    pat[j] = grad_at(k, j);
  for (int j = 0; j < PS_DENSE; j += 8)
    for (int m = 0; m < 8; m++)
      g[j + m] = pat[m];
  g[PS_DENSE + k] = 1;
  return t;
}

/* ps.make_shard(rank): a zero shard, the value of a trainer's
 * drpc_remote. */
static drpc_value *make_shard_fn(drpc_call *call, const drpc_value *args,
                                 const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)args;
  (void)kwargs;
  drpc_tensor *t = zero_shard();
  drpc_value *v = t ? drpc_value_tensor(t) : NULL;
  drpc_tensor_decref(t);
  if (!v)
    drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  return v;
}

/* ps.lend_shard(rank): an owner RRef made here, handed to the caller. */
static drpc_value *lend_shard_fn(drpc_call *call, const drpc_value *args,
                                 const drpc_value *kwargs, drpc_error *err) {
  (void)args;
  (void)kwargs;
  drpc_tensor *t = zero_shard();
  drpc_value *v = t ? drpc_value_tensor(t) : NULL;
  drpc_tensor_decref(t);
  if (!v) {
    drpc_error_set(err, DRPC_ENOMEM, "out of memory");
    return NULL;
  }
  drpc_rref *r = NULL;
  if (drpc_rref_new_local(drpc_call_agent(call), v, &r, err))
    return NULL;
  drpc_value *out = drpc_value_rref(r);
  drpc_rref_decref(r);
  if (!out)
    drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  return out;
}

static bool is_shard(const drpc_value *v) {
  return v && v->kind == DRPC_VAL_TENSOR && v->u.t->dtype == DRPC_FLOAT32 &&
         drpc_tensor_numel(v->u.t) == PS_SHARD_LEN &&
         drpc_tensor_is_contiguous(v->u.t);
}

static void add_shard(float *restrict dst, const float *restrict src) {
  for (int j = 0; j < PS_SHARD_LEN; j++)
    dst[j] += src[j];
}

/* ps.apply_update(shard, grad), run on the owner through the proxy: the
 * shard is the owner's own value, updated in place. */
static drpc_value *apply_update_fn(drpc_call *call, const drpc_value *args,
                                   const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)kwargs;
  const drpc_value *p = drpc_list_at(args, 0), *g = drpc_list_at(args, 1);
  if (!is_shard(p) || !is_shard(g)) {
    drpc_error_set(err, DRPC_ETYPE,
                   "ps.apply_update expects two float32 tensors of %d "
                   "elements",
                   PS_SHARD_LEN);
    return NULL;
  }
  float *dst = drpc_tensor_data(p->u.t);
  const float *src = drpc_tensor_data(g->u.t);
  if (dst == src) {
    drpc_error_set(err, DRPC_EINVAL,
                   "ps.apply_update: the gradient is the shard itself");
    return NULL;
  }
  add_shard(dst, src);
  return drpc_value_nil();
}

static int ps_register(drpc_registry *r, const drpc_scn_host *h) {
  int rc = drpc_register_function(r, "ps.make_shard", make_shard_fn, (void *)h);
  if (!rc)
    rc = drpc_register_function(r, "ps.lend_shard", lend_shard_fn, (void *)h);
  if (!rc)
    rc = drpc_register_function(r, "ps.apply_update", apply_update_fn,
                                (void *)h);
  return rc;
}

/* What a trainer knows of round k's update. */
enum { UPD_NOT_SENT = 0, UPD_UNSURE = 1, UPD_DONE = 2 };

/* A trainer's ledger: what it knows of each round's update, how many it
 * is unsure of (sent without an answer), and while it is sure of every
 * one, the very shard those updates make (gradients are small integers,
 * so float sums are exact in any order). */
typedef struct ledger {
  uint8_t upd[PS_MAX_ROUNDS];
  int unsure;
  float expect[PS_SHARD_LEN];
} ledger;

static void ledger_done(ledger *l, int k) {
  l->upd[k] = UPD_DONE;
  for (int j = 0; j < PS_DENSE; j++)
    l->expect[j] += grad_at(k, j);
  l->expect[PS_DENSE + k] = 1;
}

/* Checks a fetched shard against what the trainer knows: each ledger
 * element is 0 or 1 (an update never runs twice), confirmed updates are
 * there, updates not sent yet are not, and the dense part is exactly the
 * sum of the gradients the ledger names. Reports the first difference.
 * upd holds what the trainer knows of all PS_MAX_ROUNDS rounds (those not
 * reached are UPD_NOT_SENT). */
static void check_shard(const drpc_scn_host *h, drpc_agent *a, const char *when,
                        const drpc_value *v, const ledger *lg) {
  const char *me = drpc_agent_self(a)->name;
  if (!is_shard(v)) {
    drpc_scn_violation(h, a, "%s: %s: the shard is not a float32 tensor of %d",
                       me, when, PS_SHARD_LEN);
    return;
  }
  const float *p = drpc_tensor_data(v->u.t);
  /* The usual case: sure of every update, and the shard is exactly what
   * they make. Otherwise the checks below find what differs, or accept
   * what the updates the trainer is unsure of may have made. */
  if (!lg->unsure && memcmp(p, lg->expect, sizeof lg->expect) == 0)
    return;
  const uint8_t *upd = lg->upd;
  /* grad_at(k, j) depends on k only through k % 8: count the updates
   * that ran per class. */
  int ran[8] = {0};
  /* First a pass without branches, eight rounds at a time (the usual case:
   * every element 0 or 1 and as the trainer knows it); only an anomaly
   * takes the loop below, which names it. */
  int odd = 0;
  for (int k = 0; k < PS_MAX_ROUNDS; k += 8)
    for (int m = 0; m < 8; m++) {
      float l = p[PS_DENSE + k + m];
      int u = upd[k + m];
      int one = l == 1, zero = l == 0;
      odd |= (1 - (one | zero)) | (one & (u == UPD_NOT_SENT)) |
             (zero & (u == UPD_DONE));
      ran[m] += one;
    }
  for (int k = 0; odd && k < PS_MAX_ROUNDS; k++) {
    float l = p[PS_DENSE + k];
    uint8_t u = upd[k];
    if (l != 0 && l != 1) {
      drpc_scn_violation(h, a, "%s: %s: update %d ran %g times", me, when, k,
                         (double)l);
      return;
    }
    if (l == 1 && u == UPD_NOT_SENT) {
      drpc_scn_violation(h, a, "%s: %s: update %d ran before it was sent", me,
                         when, k);
      return;
    }
    if (l == 0 && u == UPD_DONE) {
      drpc_scn_violation(h, a, "%s: %s: confirmed update %d is missing", me,
                         when, k);
      return;
    }
  }
  /* ... and grad_at(k, j) depends on j only through j % 8. */
  float want8[8];
  for (int j = 0; j < 8; j++) {
    want8[j] = 0;
    for (int k = 0; k < 8; k++)
      want8[j] += (float)ran[k] * grad_at(k, j);
  }
  /* Blocks of eight compared at once (the usual case: all equal); a
   * mismatch is then found element by element. */
  int bad = 0;
  for (int j = 0; j < PS_DENSE; j += 8)
    for (int m = 0; m < 8; m++)
      bad |= p[j + m] != want8[m];
  for (int j = 0; bad && j < PS_DENSE; j++) {
    float want = want8[j % 8];
    if (p[j] != want) {
      drpc_scn_violation(h, a,
                         "%s: %s: parameter %d is %g, the updates sum to %g",
                         me, when, j, (double)p[j], (double)want);
      return;
    }
  }
}

/* The trainer's shard: odd ranks create it with drpc_remote on the
 * server, even ranks borrow one the server made locally. */
static drpc_rref *get_shard(drpc_agent *a, int rank, bool borrow,
                            const drpc_scn_host *h) {
  drpc_value *args = drpc_value_list_of(1, drpc_value_int(rank));
  drpc_error e = DRPC_ERROR_INIT;
  drpc_rref *r = NULL;
  if (!args) {
    drpc_error_set(&e, DRPC_ENOMEM, "out of memory");
  } else if (rank % 2 && !borrow) {
    if (drpc_remote(a, "w0", DRPC_FUNCTION, "ps.make_shard", args, NULL,
                    DRPC_UNSET_RPC_TIMEOUT, &r, &e))
      r = NULL;
  } else {
    drpc_value *out = NULL;
    if (drpc_rpc_sync(a, "w0", DRPC_FUNCTION, "ps.lend_shard", args, NULL,
                      DRPC_UNSET_RPC_TIMEOUT, &out, &e) == 0) {
      r = drpc_value_get_rref(out);
      if (r)
        drpc_rref_incref(r);
      else
        drpc_error_set(&e, DRPC_ETYPE, "ps.lend_shard returned no RRef");
    }
    drpc_value_free(out);
  }
  if (!r)
    drpc_scn_check_error(h, a, &e, "getting a shard");
  drpc_error_clear(&e);
  drpc_value_free(args);
  return r;
}

/* The server's crashes so far (a supervisor's view): a shard lives in
 * one life of the server; a restarted server knows none of them. */
static unsigned server_crashes(const drpc_scn_host *h) {
  return h->crashes ? h->crashes(h, 0) : 0;
}

static void train_rounds(drpc_agent *a, drpc_rref *r, unsigned life,
                         const drpc_scn_host *h, ledger *lg) {
  int rounds = h->iters < PS_MAX_ROUNDS ? h->iters : PS_MAX_ROUNDS;
  drpc_error e = DRPC_ERROR_INIT;
  for (int k = 0; k < rounds; k++) {
    /* The server crashed since the shard was made: the shard is gone, and
     * its RRef id may name another trainer's shard in the server's next
     * life (RRef ids carry no life). Training ends. */
    if (server_crashes(h) != life)
      return;
    drpc_value *v = NULL;
    int rc = drpc_rref_to_here(r, DRPC_UNSET_RPC_TIMEOUT, &v, &e);
    if (server_crashes(h) != life)
      ; /* the answer may come from the next life: not checked */
    else if (rc == 0)
      check_shard(h, a, "fetch", v, lg);
    else
      drpc_scn_check_error(h, a, &e, "to_here");
    drpc_value_free(v);
    drpc_error_clear(&e);
    /* The forward and backward pass. */
    if (h->think_ns)
      h->compute(h, a, h->think_ns);
    drpc_tensor *g = gradient(k);
    drpc_value *args = g ? drpc_value_list_of(1, drpc_value_tensor(g)) : NULL;
    drpc_tensor_decref(g);
    drpc_value *res = NULL;
    if (!args) {
      drpc_scn_violation(h, a, "%s: out of memory", drpc_agent_self(a)->name);
      return;
    }
    if (server_crashes(h) != life) {
      drpc_value_free(args);
      return;
    }
    lg->upd[k] = UPD_UNSURE;
    if (drpc_rref_rpc_sync(r, DRPC_FUNCTION, "ps.apply_update", args, NULL,
                           DRPC_UNSET_RPC_TIMEOUT, &res, &e) == 0) {
      ledger_done(lg, k);
    } else {
      lg->unsure++;
      drpc_scn_check_error(h, a, &e, "apply_update");
    }
    drpc_error_clear(&e);
    drpc_value_free(res);
    drpc_value_free(args);
  }
  /* The final parameters are the sum of every update that ran. */
  if (server_crashes(h) != life)
    return;
  drpc_value *v = NULL;
  int rc = drpc_rref_to_here(r, DRPC_UNSET_RPC_TIMEOUT, &v, &e);
  if (server_crashes(h) != life)
    ; /* the answer may come from the next life: not checked */
  else if (rc == 0)
    check_shard(h, a, "final", v, lg);
  else
    drpc_scn_check_error(h, a, &e, "final to_here");
  drpc_value_free(v);
  drpc_error_clear(&e);
}

static void train(drpc_agent *a, drpc_rref *r, unsigned life,
                  const drpc_scn_host *h) {
  ledger *lg = calloc(1, sizeof *lg);
  if (!lg) {
    drpc_scn_violation(h, a, "%s: out of memory", drpc_agent_self(a)->name);
    return;
  }
  train_rounds(a, r, life, h, lg);
  free(lg);
}

static void serve_or_train(drpc_agent *a, int rank, bool restarted,
                           const drpc_scn_host *h) {
  if (rank > 0) {
    unsigned life = server_crashes(h);
    drpc_rref *r = get_shard(a, rank, restarted, h);
    if (r)
      train(a, r, life, h);
    drpc_rref_decref(r);
  }
  drpc_scn_rref_shutdown(a, h, drpc_scn_ps.shutdown_timeout_s);
}

static int ps_run(drpc_agent *a, int rank, int world, const drpc_scn_host *h,
                  drpc_error *err) {
  (void)world;
  (void)err;
  serve_or_train(a, rank, false, h);
  return 0;
}

/* A restarted worker: the server serves again (its shards are gone); a
 * trainer starts over with a shard it borrows (made on the server), as a
 * shard it would make with drpc_remote gets an RRef id of its own, which
 * the server may still hold from the trainer's last life. */
static int ps_restart(drpc_agent *a, int rank, int world,
                      const drpc_scn_host *h, drpc_error *err) {
  (void)world;
  (void)err;
  serve_or_train(a, rank, true, h);
  return 0;
}

const drpc_scenario drpc_scn_ps = {
    .name = "ps",
    .summary = "parameter server: trainers fetch and update shards through "
               "RRefs",
    .min_workers = 2,
    .max_workers = 64,
    .default_workers = 4,
    .default_iters = 20,
    .rpc_timeout_s = 10.0,
    .shutdown_timeout_s = 30.0,
    .register_fns = ps_register,
    .run = ps_run,
    .restart = ps_restart,
};
