/* Scenario membership: a dynamic group (no world size). Rank 0 stays (in
 * real runs it hosts the store); every other rank leaves and joins again
 * every fourth round. Each round a worker calls one of the members it sees
 * and checks the answer. At the end the workers wait for each other
 * through the store and check that membership converged: each sees
 * exactly the workers that got there (a crashed worker must have been
 * taken out by the others).
 *
 * Tolerated: fault errors, and a member that left between the look-up and
 * the call (an ENOTFOUND naming its departure, or a lost connection). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scenario.h"

#define ARRIVED "scn_membership/arrived/"
#define CHECKED "scn_membership/checked/"
#define DONE "scn_membership/done/"
/* Bounds (virtual time in the simulator): waiting for the others at the
 * end, and for membership to converge once they are there. */
#define ARRIVE_WAIT_NS (30ull * 1000000000ull)
#define CONVERGE_WAIT_NS (30ull * 1000000000ull)
#define POLL_NS (20ull * 1000000ull)

static int membership_register(drpc_registry *r, const drpc_scn_host *h) {
  return drpc_register_function(r, "scn.member_echo", drpc_scn_echo_fn,
                                (void *)h);
}

/* A departure between the look-up and the call is not a failure. */
static bool departed(const drpc_error *e) {
  return e->code == DRPC_ENOTFOUND && e->msg &&
         strstr(e->msg, "has left the group");
}

static void one_call(drpc_agent *a, int rank, int i, const drpc_scn_host *h) {
  size_t n = 0;
  drpc_worker_info *ws = drpc_agent_workers_copy(a, &n);
  if (!ws || n < 2) {
    free(ws);
    return;
  }
  const drpc_worker_info *to = &ws[(size_t)(rank + i) % n];
  if (to->id == drpc_agent_self(a)->id)
    to = &ws[(size_t)(rank + i + 1) % n];
  int64_t tag = (int64_t)rank * 1000000 + i;
  drpc_value *args = drpc_value_list_of(1, drpc_value_int(tag));
  drpc_value *out = NULL;
  drpc_error e = DRPC_ERROR_INIT;
  if (drpc_rpc_sync(a, to->name, DRPC_FUNCTION, "scn.member_echo", args, NULL,
                    5.0, &out, &e) == 0) {
    if (!out || out->kind != DRPC_VAL_INT || out->u.i != tag)
      drpc_scn_violation(h, a, "%s: echo %d from %s came back different",
                         drpc_agent_self(a)->name, i, to->name);
  } else if (departed(&e) || e.code == DRPC_ECONN) {
    /* It left (or is leaving) meanwhile. */
    if (h->tolerated)
      h->tolerated(h, a, &e);
  } else {
    drpc_scn_check_error(h, a, &e, "scn.member_echo");
  }
  drpc_error_clear(&e);
  drpc_value_free(out);
  drpc_value_free(args);
  free(ws);
}

/* The names under ARRIVED, sorted; *n of them. */
static char **arrived(drpc_agent *a, size_t *n) {
  char **keys = NULL;
  if (drpc_store_list(drpc_agent_store(a), ARRIVED, &keys, n, NULL))
    return NULL;
  return keys;
}

static int cmp_str(const void *x, const void *y) {
  return strcmp(*(char *const *)x, *(char *const *)y);
}

/* Drops the arrived workers that crashed since (the others must take
 * them out); returns how many are left. */
/* True when worker name (a key under prefix) is gone for good: crashed
 * (until it restarts) or finished and left. */
static bool gone(drpc_agent *a, const drpc_scn_host *h, const char *name) {
  int rank = name[0] == 'w' ? atoi(name + 1) : -1;
  if (h->alive && !h->alive(h, rank))
    return true;
  char key[160];
  snprintf(key, sizeof key, DONE "%s", name);
  /* A read that never waits: a compare-and-set that changes nothing
   * (a missing key reads as empty). */
  void *v = NULL;
  size_t n = 0;
  bool done = drpc_store_compare_set(drpc_agent_store(a), key, "", 0, "", 0, &v,
                                     &n, NULL) == 0 &&
              n == 1 && ((const char *)v)[0] == '1';
  free(v);
  return done;
}

/* Keeps the arrived workers that are not gone; returns how many. */
static size_t drop_gone(drpc_agent *a, const drpc_scn_host *h, char **keys,
                        size_t nk) {
  size_t plen = strlen(ARRIVED), k = 0;
  for (size_t i = 0; i < nk; i++) {
    if (gone(a, h, keys[i] + plen))
      free(keys[i]);
    else
      keys[k++] = keys[i];
  }
  return k;
}

/* The arrived workers that are not gone, sorted (*keys replaced). */
static void live_arrivals(drpc_agent *a, const drpc_scn_host *h, char ***keys,
                          size_t *nk) {
  drpc_store_keys_free(*keys, *nk);
  *keys = arrived(a, nk);
  if (!*keys) {
    *nk = 0;
    return;
  }
  *nk = drop_gone(a, h, *keys, *nk);
  qsort(*keys, *nk, sizeof **keys, cmp_str);
}

/* True when a's members are exactly the arrived workers. */
static bool converged(drpc_agent *a, char **keys, size_t nk, char *why,
                      size_t wn) {
  size_t n = 0;
  drpc_worker_info *ws = drpc_agent_workers_copy(a, &n);
  char **names = calloc(n ? n : 1, sizeof *names);
  bool same = ws && names && n == nk;
  for (size_t i = 0; ws && names && i < n; i++)
    names[i] = ws[i].name;
  if (names)
    qsort(names, n, sizeof *names, cmp_str);
  size_t plen = strlen(ARRIVED);
  for (size_t i = 0; same && i < n; i++)
    same = strcmp(names[i], keys[i] + plen) == 0;
  if (!same) {
    size_t used = (size_t)snprintf(why, wn, "sees [");
    for (size_t i = 0; names && i < n && used < wn; i++)
      used += (size_t)snprintf(why + used, wn - used, "%s%s", i ? " " : "",
                               names[i]);
    if (used < wn)
      used += (size_t)snprintf(why + used, wn - used, "], arrived [");
    for (size_t i = 0; i < nk && used < wn; i++)
      used += (size_t)snprintf(why + used, wn - used, "%s%s", i ? " " : "",
                               keys[i] + plen);
    if (used < wn)
      snprintf(why + used, wn - used, "]");
  }
  free(names);
  free(ws);
  return same;
}

static int membership_run(drpc_agent *a, int rank, int world,
                          const drpc_scn_host *h, drpc_error *err) {
  if (!h->rejoin)
    return drpc_error_set(err, DRPC_EUNSUPPORTED,
                          "this host cannot make workers leave and join");
  /* A restarted worker (a new life) has not arrived yet. */
  const char *const prefixes[3] = {ARRIVED, CHECKED, DONE};
  for (int k = 0; k < 3; k++) {
    char key[160];
    snprintf(key, sizeof key, "%s%s", prefixes[k], drpc_agent_self(a)->name);
    drpc_store_delete(drpc_agent_store(a), key, NULL, NULL);
  }
  for (int i = 0; i < h->iters; i++) {
    one_call(a, rank, i, h);
    if (rank != 0 && i % 4 == 3) {
      drpc_error e = DRPC_ERROR_INIT;
      uint64_t away = (uint64_t)(1 + rank % 5) * 2000000u; /* 2-10 ms */
      if (h->rejoin(h, &a, away, &e)) {
        if (!a) {
          /* It could not join again (a fault explains it, or not). */
          drpc_scn_check_error(h, NULL, &e, "rejoin");
          drpc_error_clear(&e);
          return 0;
        }
        drpc_scn_check_error(h, a, &e, "rejoin");
      }
      drpc_error_clear(&e);
    }
    if (h->think_ns)
      h->compute(h, a, h->think_ns);
  }

  /* Convergence: everyone who got here, and nobody else, is a member. */
  char key[160];
  snprintf(key, sizeof key, ARRIVED "%s", drpc_agent_self(a)->name);
  drpc_store *st = drpc_agent_store(a);
  if (drpc_store_set_str(st, key, "1", NULL))
    return 0; /* the store went away: nothing to check against */
  /* Each poll reads the arrivals again: a worker that crashes drops out,
   * one that restarts comes back when it arrives. */
  size_t nk = 0;
  char **keys = NULL;
  for (uint64_t waited = 0; waited < ARRIVE_WAIT_NS; waited += POLL_NS) {
    live_arrivals(a, h, &keys, &nk);
    int live = 0;
    for (int r = 0; r < world; r++) {
      char name[16];
      drpc_scn_worker_name(r, name, sizeof name);
      live += !gone(a, h, name);
    }
    if (keys && nk >= (size_t)live)
      break;
    h->compute(h, a, POLL_NS);
  }
  if (!keys)
    return 0;
  char why[1024] = "";
  bool ok = false;
  for (uint64_t waited = 0; waited < CONVERGE_WAIT_NS && !ok;
       waited += POLL_NS) {
    live_arrivals(a, h, &keys, &nk);
    ok = keys && converged(a, keys, nk, why, sizeof why);
    if (!ok)
      h->compute(h, a, POLL_NS);
  }
  if (!ok)
    drpc_scn_violation(h, a, "%s: membership did not converge: %s",
                       drpc_agent_self(a)->name, why);
  /* Nobody leaves before every live worker has looked (a worker that
   * looked and then crashed does not count). */
  snprintf(key, sizeof key, CHECKED "%s", drpc_agent_self(a)->name);
  drpc_store_set_str(st, key, "1", NULL);
  for (uint64_t waited = 0; waited < ARRIVE_WAIT_NS; waited += POLL_NS) {
    live_arrivals(a, h, &keys, &nk);
    size_t nc = 0;
    char **ck = NULL;
    if (!keys || drpc_store_list(st, CHECKED, &ck, &nc, NULL))
      break;
    size_t done = 0, plen = strlen(ARRIVED), clen = strlen(CHECKED);
    for (size_t i = 0; i < nk; i++)
      for (size_t k = 0; k < nc; k++)
        done += strcmp(keys[i] + plen, ck[k] + clen) == 0;
    drpc_store_keys_free(ck, nc);
    if (done >= nk)
      break;
    h->compute(h, a, POLL_NS);
  }
  drpc_store_keys_free(keys, nk);
  /* Gone for good now: nobody expects this worker in a view any more
   * (rank 0 stays, in the views of late workers too, until the end). */
  snprintf(key, sizeof key, DONE "%s", drpc_agent_self(a)->name);
  if (rank != 0)
    drpc_store_set_str(st, key, "1", NULL);
  /* Rank 0 stays last: the others leave now, and it must see them go. */
  if (rank == 0) {
    uint64_t waited = 0;
    while (drpc_agent_num_members(a) > 1 && waited < CONVERGE_WAIT_NS) {
      h->compute(h, a, POLL_NS);
      waited += POLL_NS;
    }
    if (drpc_agent_num_members(a) > 1)
      drpc_scn_violation(
          h, a, "%s: still lists %zu members after the others left",
          drpc_agent_self(a)->name, drpc_agent_num_members(a) - 1);
  }
  return 0;
}

const drpc_scenario drpc_scn_membership = {
    .name = "membership",
    .summary = "a dynamic group: workers leave and join again while calling "
               "each other; membership converges",
    .min_workers = 2,
    .max_workers = 64,
    .default_workers = 4,
    .default_iters = 16,
    .rpc_timeout_s = 10,
    .shutdown_timeout_s = 30,
    .register_fns = membership_register,
    .run = membership_run,
    .dynamic = true,
};
