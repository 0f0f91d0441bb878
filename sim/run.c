/* Running a scenario in the simulator: the worker harness on fibers, the
 * event loop, the fault schedule, and the safety and liveness checkers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

/* ---- checkers fed by the core's record output ---------------------------
 */

/* Grows a per-request-id table (ids are dense: counters from 1). */
static bool grow(void **v, size_t *cap, uint64_t id, size_t size) {
  if (id < *cap)
    return true;
  if (id >= SIM_MAX_CALL_IDS)
    return false;
  size_t n = *cap ? *cap : 256;
  while (n <= id)
    n *= 2;
  char *p = realloc(*v, n * size);
  if (!p)
    return false;
  memset(p + *cap * size, 0, (n - *cap) * size);
  *v = p;
  *cap = n;
  return true;
}

/* The execution table's key of a request: the caller above bit 52 (ids
 * stay below, being per-life counters), never 0. */
#define EXEC_ID_BITS 52

static uint64_t exec_key(int16_t caller, uint64_t id) {
  return (uint64_t)(caller + 1) << EXEC_ID_BITS | id;
}

static size_t exec_slot(const sim_exec *t, size_t cap, uint64_t key) {
  size_t i = (size_t)((key * 0x9e3779b97f4a7c15ull) >> 32) & (cap - 1);
  while (t[i].key && t[i].key != key)
    i = (i + 1) & (cap - 1);
  return i;
}

/* Moves n's entries into a fresh table of newcap slots, leaving out those
 * of caller `drop` (-1: none); false (n unchanged) when out of memory. */
static bool exec_rehash(sim_node *n, size_t newcap, int16_t drop) {
  sim_exec *t = calloc(newcap, sizeof *t);
  if (!t)
    return false;
  size_t len = 0;
  for (size_t i = 0; i < n->exec_cap; i++) {
    const sim_exec *e = &n->execs[i];
    if (!e->key || (drop >= 0 && e->key >> EXEC_ID_BITS == (uint64_t)drop + 1))
      continue;
    t[exec_slot(t, newcap, e->key)] = *e;
    len++;
  }
  free(n->execs);
  n->execs = t;
  n->exec_cap = newcap;
  n->exec_len = len;
  return true;
}

/* Counts an execution of request id from caller on conn: (caller, conn,
 * id) names a request, as a caller never sends one twice and each
 * incarnation of it opens its own connections. Past SIM_MAX_CALL_IDS
 * requests served, or out of memory, the check stays off for the rest. */
void sim_count_exec(sim *s, sim_node *n, int16_t caller, uint64_t id,
                    uint64_t conn) {
  if (caller < 0 || caller >= s->nnodes || id >> EXEC_ID_BITS)
    return;
  if ((n->exec_len + 1) * 2 > n->exec_cap &&
      (n->exec_len >= SIM_MAX_CALL_IDS ||
       !exec_rehash(n, n->exec_cap ? n->exec_cap * 2 : 256, -1)))
    return;
  uint64_t key = exec_key(caller, id);
  sim_exec *e = &n->execs[exec_slot(n->execs, n->exec_cap, key)];
  if (!e->key) {
    *e = (sim_exec){key, conn, 1};
    n->exec_len++;
    return;
  }
  if (e->conn != conn) {
    e->conn = conn;
    e->n = 1;
    return;
  }
  if (e->n < 255)
    e->n++;
  sim_violation(s, "safety: request %llu from w%d ran %d times on %s",
                (unsigned long long)id, caller, e->n, n->name);
}

void sim_forget_execs(sim_node *n, int16_t caller) {
  if (n->exec_cap && !exec_rehash(n, n->exec_cap, caller)) {
    /* Out of memory: forget them all rather than keep stale ones. */
    free(n->execs);
    n->execs = NULL;
    n->exec_cap = n->exec_len = 0;
  }
}

void sim_check_record(sim *s, sim_node *n, const drpc_event *ev) {
  if (n->index < 0 || n->state == NODE_DEAD)
    return;
  switch (ev->kind) {
  case DRPC_EV_RPC_BEGIN:
    s->res->calls++;
    n->calls_begun++;
    if (grow((void **)&n->calls, &n->call_cap, ev->id, sizeof *n->calls))
      n->calls[ev->id] = (sim_call){sim_rel(s, s->now), ev->peer, 1};
    break;
  case DRPC_EV_OUT_FUTURE:
    n->calls_done++;
    if (grow((void **)&n->calls, &n->call_cap, ev->id, sizeof *n->calls)) {
      if (n->calls[ev->id].state == 2)
        sim_violation(s,
                      "safety: the future of request %llu on %s (a call to "
                      "w%d) completed twice",
                      (unsigned long long)ev->id, n->name, ev->peer);
      n->calls[ev->id].state = 2;
    }
    break;
  case DRPC_EV_OUT_EXECUTE:
    /* The executor hook: the core records each request right before it
     * hands it to env.execute, where it is counted (sim_count_exec). */
    s->res->executions++;
    n->last_exec_peer = ev->peer;
    n->last_exec_id = ev->id;
    n->last_exec_valid = true;
    break;
  default:
    break;
  }
  sim_hash(s, EV_RECORD, n->index,
           (uint64_t)ev->kind << 16 | (uint16_t)ev->peer, ev->id, NULL, 0);
}

/* ---- the host the scenarios see ------------------------------------------
 */

static sim_node *node_of_agent(drpc_agent *a) {
  return drpc_agent_env(a)->ctx;
}

static void host_compute(const drpc_scn_host *h, drpc_agent *a, uint64_t ns) {
  sim *s = h->user;
  sim_node *n = node_of_agent(a);
  if (!s->cur) {
    sim_violation(s, "compute called outside a fiber");
    return;
  }
  sim_fiber_sleep(s, s->now + (uint64_t)((double)ns * n->slow));
}

static void host_violation(const drpc_scn_host *h, drpc_agent *a,
                           const char *msg) {
  (void)a;
  sim_violation(h->user, "%s", msg);
}

/* The RRef checker, after a worker's graceful shutdown: the counters as
 * the agent found them when it stopped. A clean run leaves nothing: no
 * owner RRef, no control message waiting, no user waiting for its owner,
 * no fork. Under faults leftovers are expected (a lost USER_DELETE gives
 * up after its retries) and only counted. */
static void check_rrefs(sim *s, sim_node *n, drpc_agent *a) {
  char what[300];
  size_t used = 0;
  bool dirty = false;
  what[0] = 0;
  /* One debug-info dict for the eight counters (it is built whole). */
  drpc_value *d = drpc_agent_debug_info(a);
  for (int k = 0; k < 4; k++) {
    char key[64];
    snprintf(key, sizeof key, "%s_at_shutdown", drpc_scn_rref_counters[k]);
    int64_t left = drpc_scn_dict_count(d, key);
    int64_t now = drpc_scn_dict_count(d, drpc_scn_rref_counters[k]);
    if (left == INT64_MIN) {
      if (!s->host.faults)
        sim_violation(s,
                      "rref: %s reports no RRef counters after its "
                      "graceful shutdown",
                      n->name);
      drpc_value_free(d);
      return;
    }
    s->res->rref_left[k] += left;
    if (left == 0 && now == 0)
      continue;
    dirty = true;
    int w =
        snprintf(what + used, sizeof what - used, "%s%s=%lld", used ? ", " : "",
                 drpc_scn_rref_counters[k], (long long)(left ? left : now));
    if (w > 0 && (size_t)w < sizeof what - used)
      used += (size_t)w;
  }
  drpc_value_free(d);
  if (!dirty)
    return;
  s->res->rref_nodes_left++;
  if (!s->host.faults)
    sim_violation(s,
                  "rref: %s left %s after a graceful shutdown without "
                  "faults",
                  n->name, what);
}

static void host_tolerated(const drpc_scn_host *h, drpc_agent *a,
                           const drpc_error *err) {
  (void)a;
  (void)err;
  sim *s = h->user;
  s->res->tolerated++;
}

/* A dynamic group's worker leaves (graceful shutdown) and, after away_ns,
 * joins again as a fresh agent on the same node: a new incarnation, whose
 * request ids start again from 1 (on new connections: see
 * sim_count_exec). */
static int host_rejoin(const drpc_scn_host *h, drpc_agent **ap,
                       uint64_t away_ns, drpc_error *err) {
  sim *s = h->user;
  drpc_agent *a = *ap;
  sim_node *n = node_of_agent(a);
  *ap = NULL;
  int rc = drpc_agent_shutdown(a, true, s->scn->shutdown_timeout_s, err);
  drpc_agent **r = realloc(n->retired, (n->nretired + 1) * sizeof *r);
  if (!r)
    return rc ? rc : drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  n->retired = r;
  if (rc)
    return rc; /* the stopped agent stays attached */
  /* Away: inputs wait for the next incarnation (connections to the old
   * one mean nothing to it). */
  n->state = NODE_STARTING;
  sim_fiber_sleep(s, s->now + (uint64_t)((double)away_ns * n->slow));
  drpc_agent *b = NULL;
  drpc_options o = sim_next_opts(n, sim_node_opts(s, n));
  if ((rc = drpc_agent_start(&b, s->store, n->name, n->index, -1, &o, &n->env,
                             err))) {
    sim_attach(s, n, a);
    return rc;
  }
  n->retired[n->nretired++] = a;
  sim_attach(s, n, b);
  *ap = b;
  return drpc_agent_announce(b, err);
}

static bool host_alive(const drpc_scn_host *h, int rank) {
  sim *s = h->user;
  return rank < 0 || rank >= s->nnodes || s->nodes[rank].state != NODE_DEAD;
}

static unsigned host_crashes(const drpc_scn_host *h, int rank) {
  sim *s = h->user;
  return rank < 0 || rank >= s->nnodes ? 0 : s->nodes[rank].crashes;
}

/* One worker: start the agent (a rendezvous through the shared store),
 * run the program, shut down gracefully. */
static void node_main(void *arg) {
  sim_node *n = arg;
  sim *s = n->s;
  drpc_agent *a = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  n->state = NODE_STARTING;
  /* A restarted node (a fresh process after a crash) runs the program's
   * restart entry, or the program again from the top. */
  bool again = n->starts++ > 0;
  drpc_options o = sim_next_opts(n, sim_node_opts(s, n));
  int rc =
      drpc_agent_start(&a, s->store, n->name, n->index,
                       s->scn->dynamic ? -1 : s->nnodes, &o, &n->env, &err);
  if (rc) {
    if (!s->host.faults || !drpc_scn_fault_error(&err)) {
      sim_violation(s, "%s: agent start failed: %s", n->name,
                    drpc_error_message(&err));
    } else if (s->res->start_failed++ == 0) {
      /* Tolerated, but the worker does nothing: the run says so. */
      snprintf(s->res->start_error, sizeof s->res->start_error,
               "%s at t=%.6fs: %s", n->name, (double)sim_rel(s, s->now) / 1e9,
               drpc_error_message(&err));
    }
  } else {
    sim_attach(s, n, a);
    if (s->scn->dynamic && drpc_agent_announce(a, &err))
      drpc_scn_check_error(&s->host, a, &err, "announce");
    drpc_error_clear(&err);
    rc = (again && s->scn->restart ? s->scn->restart : s->scn->run)(
        a, n->index, s->nnodes, &s->host, &err);
    if (rc)
      sim_violation(s, "%s: program failed: %s", n->name,
                    drpc_error_message(&err));
    drpc_error_clear(&err);
    /* A dynamic worker may have joined again as a new agent. */
    a = s->scn->dynamic ? n->agent : a;
  }
  if (a) {
    rc = drpc_agent_shutdown(a, true, s->scn->shutdown_timeout_s, &err);
    if (rc && (!s->host.faults || !drpc_scn_fault_error(&err)))
      sim_violation(s, "%s: graceful shutdown failed: %s", n->name,
                    drpc_error_message(&err));
    check_rrefs(s, n, a);
  }
  drpc_error_clear(&err);
  n->main_done = true;
  n->finish_ns = s->now;
}

/* ---- faults ----------------------------------------------------------------
 */

/* A fault (or its end) as an event of the recording. */
static void record_fault(sim *s, const drpc_sim_fault *f, bool end) {
  const drpc_sim_config *c = s->cfg;
  if (!c->record)
    return;
  char name[48];
  const char *k = drpc_sim_fault_kind_name(f->kind);
  snprintf(name, sizeof name, "%s%s", k ? k : "fault", end ? " end" : "");
  bool on_node = f->kind == DRPC_SIM_CRASH || f->kind == DRPC_SIM_SLOW ||
                 f->kind == DRPC_SIM_RESTART;
  drpc_event ev = {DRPC_EV_FAULT,
                   (int16_t)(on_node ? f->node : -1),
                   -1,
                   on_node && f->node >= 0 && f->node < s->nnodes
                       ? sim_node_now(&s->nodes[f->node])
                       : s->now,
                   f->a,
                   f->b,
                   NULL,
                   0,
                   name};
  c->record(c->record_ctx, &ev);
}

static void apply_fault(sim *s, const drpc_sim_fault *f, bool end) {
  uint64_t all = s->nnodes >= 64 ? ~0ull : (1ull << s->nnodes) - 1;
  uint64_t a = f->a & all, b = f->b & all;
  record_fault(s, f, end);
  if (!end)
    s->res->faults_applied++;
  switch (f->kind) {
  case DRPC_SIM_PARTITION:
  case DRPC_SIM_ONEWAY: {
    bool oneway = f->kind == DRPC_SIM_ONEWAY;
    for (int x = 0; x < s->nnodes; x++)
      for (int y = 0; y < s->nnodes; y++) {
        if (x == y || !sim_in_mask(a, x) || !sim_in_mask(b, y))
          continue;
        sim_link *l[2] = {&SIM_LINK(s, x, y),
                          oneway ? NULL : &SIM_LINK(s, y, x)};
        for (int i = 0; i < 2; i++) {
          if (!l[i])
            continue;
          if (!end) {
            l[i]->block++;
            l[i]->oneway += oneway;
          } else if (l[i]->block) {
            l[i]->block--;
            if (oneway && l[i]->oneway)
              l[i]->oneway--;
          }
        }
      }
    if (!end)
      sim_break_links(s, a, b, oneway);
    break;
  }
  case DRPC_SIM_CLOG:
    if (end)
      break;
    for (int x = 0; x < s->nnodes; x++)
      for (int y = 0; y < s->nnodes; y++)
        if (x != y && sim_in_mask(a, x) && sim_in_mask(b, y) &&
            SIM_LINK(s, x, y).clog_until < s->now + f->dur_ns)
          SIM_LINK(s, x, y).clog_until = s->now + f->dur_ns;
    break;
  case DRPC_SIM_RESET:
    if (!end)
      sim_reset_between(s, a, b);
    break;
  case DRPC_SIM_CRASH:
    if (!end && f->node >= 0 && f->node < s->nnodes)
      sim_crash(s, (int16_t)f->node);
    break;
  case DRPC_SIM_RESTART:
    /* Only a node that is down comes back (else: nothing happens). */
    if (!end && f->node >= 0 && f->node < s->nnodes)
      sim_restart(s, (int16_t)f->node);
    break;
  case DRPC_SIM_SLOW:
    if (f->node >= 0 && f->node < s->nnodes)
      s->nodes[f->node].slow =
          s->cfg->slow[f->node] * (end ? 1.0 : (f->factor > 0 ? f->factor : 1));
    break;
  default:
    break;
  }
}

/* Faults off: partitions heal, clogs clear, slow nodes recover. Crashed
 * nodes stay down unless a restart names them (restarts still apply after
 * the phase); nodes that stay down are excluded from the liveness check. */
static void end_fault_phase(sim *s) {
  s->phase_over = true;
  for (int x = 0; x < s->nnodes; x++) {
    s->nodes[x].slow = s->cfg->slow[x];
    for (int y = 0; y < s->nnodes; y++) {
      SIM_LINK(s, x, y).block = 0;
      SIM_LINK(s, x, y).oneway = 0;
      if (SIM_LINK(s, x, y).clog_until > s->now)
        SIM_LINK(s, x, y).clog_until = s->now;
    }
  }
}

/* ---- the loop ----------------------------------------------------------- */

static void dispatch(sim *s, sim_event *ev) {
  if (sim_event_stale(s, ev)) {
    /* An event of a crashed life of the node: that process is gone. */
    sim_event_drop(s, ev);
    return;
  }
  switch (ev->kind) {
  case EV_WAKE:
    sim_fiber_wake_event(s, ev->a, ev->b);
    return;
  case EV_FAULT:
    if (s->phase_over && ev->b == 0 &&
        s->cfg->faults[ev->a].kind != DRPC_SIM_RESTART)
      return;
    sim_hash(s, EV_FAULT, -1, ev->a, ev->b, NULL, 0);
    apply_fault(s, &s->cfg->faults[ev->a], ev->b != 0);
    return;
  case EV_PHASE_END:
    sim_hash(s, EV_PHASE_END, -1, 0, 0, NULL, 0);
    end_fault_phase(s);
    return;
  case EV_START: {
    sim_node *n = &s->nodes[ev->node];
    if (n->state != NODE_IDLE)
      return;
    sim_fiber *f = NULL;
    if (sim_fiber_spawn(s, n->index, node_main, n, &f))
      return;
    f->is_main = true;
    sim_hash(s, EV_START, n->index, 0, 0, NULL, 0);
    sim_fiber_resume(s, f);
    return;
  }
  default:
    sim_deliver(s, ev);
    return;
  }
}

/* Names what keeps the unfinished workers from finishing: their pending
 * calls first (the usual culprit), then the workers themselves. */
static void describe_stuck(sim *s, char *buf, size_t len) {
  size_t used = 0;
  int shown = 0;
  buf[0] = 0;
  for (int i = 0; i < s->nnodes && used + 1 < len; i++) {
    sim_node *n = &s->nodes[i];
    if (n->state == NODE_DEAD || n->state == NODE_FINISHED)
      continue;
    for (size_t id = 1; id < n->call_cap && shown < 4 && used + 1 < len; id++) {
      if (n->calls[id].state != 1)
        continue;
      int w = snprintf(buf + used, len - used,
                       "%sthe future of request %zu on %s (a call to w%d "
                       "begun at t=%.6fs) never completed",
                       shown ? "; " : "", id, n->name, n->calls[id].dst,
                       (double)n->calls[id].begin_ns / 1e9);
      if (w > 0)
        used += (size_t)w;
      shown++;
    }
  }
  for (int i = 0; i < s->nnodes && used + 1 < len; i++) {
    sim_node *n = &s->nodes[i];
    if (n->state == NODE_DEAD || n->state == NODE_FINISHED)
      continue;
    int w =
        snprintf(buf + used, len - used, "%s%s %s", used ? "; " : "", n->name,
                 n->main_done ? "finished its program but still runs "
                                "functions"
                              : "did not finish its program");
    if (w > 0)
      used += (size_t)w;
  }
}

static double wall_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int drpc_sim_run(const drpc_sim_config *c, drpc_sim_result *r,
                 drpc_error *err) {
  memset(r, 0, sizeof *r);
  const drpc_scenario *scn = drpc_scenario_find(c->scenario);
  if (!scn)
    return drpc_error_set(err, DRPC_ENOTFOUND, "unknown scenario '%s'",
                          c->scenario);
  if (scn->needs_rrefs || !scn->run)
    return drpc_error_set(err, DRPC_EUNSUPPORTED,
                          "scenario '%s' needs remote references, which the "
                          "core does not have yet",
                          scn->name);
  if (c->workers < scn->min_workers || c->workers > scn->max_workers ||
      c->workers > DRPC_SIM_MAX_NODES)
    return drpc_error_set(
        err, DRPC_EINVAL, "scenario '%s' runs with %d to %d workers, not %d",
        scn->name, scn->min_workers, scn->max_workers, c->workers);
  if (sim_current)
    return drpc_error_set(err, DRPC_ESTATE,
                          "a simulation is already running on this thread");
  for (size_t i = 0; i < c->nfaults; i++)
    if (c->faults[i].kind < 0 || c->faults[i].kind >= DRPC_SIM_FAULT_KINDS)
      return drpc_error_set(err, DRPC_EINVAL, "fault %zu has no known kind", i);
  sim *s = calloc(1, sizeof *s);
  size_t nn = (size_t)c->workers;
  if (s) {
    s->nodes = calloc(nn, sizeof *s->nodes);
    s->links = calloc(nn * nn, sizeof *s->links);
  }
  if (!s || !s->nodes || !s->links) {
    if (s) {
      free(s->nodes);
      free(s->links);
    }
    free(s);
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  }
  double wall0 = wall_now();
  r->ok = true;
  s->cfg = c;
  s->scn = scn;
  s->res = r;
  s->now = SIM_BASE_NS;
  s->free_fiber = UINT32_MAX;
  s->nnodes = c->workers;
  s->nodes_left = c->workers;
  s->net_rng = sim_stream(c->seed, 1);
  uint64_t lst = sim_stream(c->seed, 2);
  for (int x = 0; x < s->nnodes; x++)
    for (int y = 0; y < s->nnodes; y++)
      SIM_LINK(s, x, y).factor = 1.0 + c->link_spread * sim_unit(&lst);

  s->reg = drpc_registry_new();
  s->host.compute = host_compute;
  s->host.violation = host_violation;
  s->host.tolerated = host_tolerated;
  s->host.rejoin = scn->dynamic ? host_rejoin : NULL;
  s->host.alive = host_alive;
  s->host.crashes = host_crashes;
  s->host.faults = c->nfaults > 0;
  s->host.iters = c->iters > 0 ? c->iters : scn->default_iters;
  s->host.think_ns = c->think_ns;
  s->host.user = s;
  drpc_options_default(&s->opts);
  s->opts.rpc_timeout_s = scn->rpc_timeout_s;
  s->opts.shutdown_timeout_s = scn->shutdown_timeout_s;
  s->opts.num_worker_threads = c->threads > 0 ? c->threads : 4;
  s->opts.registry = s->reg;
  /* Without faults a leaked RRef fails the graceful shutdown itself. */
  s->opts.ignore_rref_leak = s->host.faults;
  sim_node_init(s, &s->store_node, -1);
  s->store = drpc_store_memory_new(&s->store_node.env);
  int setup_rc = 0;
  if (!s->reg || !s->store || scn->register_fns(s->reg, &s->host))
    setup_rc = drpc_error_set(err, DRPC_ENOMEM, "could not set the run up");
  else
    setup_rc = sim_devices_setup(s, err);
  if (setup_rc) {
    drpc_store_decref(s->store);
    drpc_registry_free(s->reg);
    free(s->nodes);
    free(s->links);
    free(s);
    return setup_rc;
  }
  sim_current = s;

  uint64_t start_st = sim_stream(c->seed, 3);
  for (int i = 0; i < s->nnodes; i++) {
    sim_node *n = &s->nodes[i];
    sim_node_init(s, n, (int16_t)i);
    n->rng = sim_stream(c->seed, 100 + (uint64_t)i);
    n->clock_offset_ns = c->clock_offset_ns[i];
    n->drift_ppm = c->drift_ppm[i];
    n->slow = c->slow[i] > 0 ? c->slow[i] : 1.0;
    n->threads = s->opts.num_worker_threads;
    /* Workers start up to 1 ms apart, as processes launched together do. */
    sim_push(s, EV_START, n->index, SIM_BASE_NS + sim_rand(&start_st) % 1000000,
             0, 0, NULL, 0);
  }
  for (size_t i = 0; i < c->nfaults; i++) {
    const drpc_sim_fault *f = &c->faults[i];
    sim_push(s, EV_FAULT, -1, SIM_BASE_NS + f->at_ns, (uint32_t)i, 0, NULL, 0);
    if (f->dur_ns)
      sim_push(s, EV_FAULT, -1, SIM_BASE_NS + f->at_ns + f->dur_ns, (uint32_t)i,
               1, NULL, 0);
  }
  s->fault_end = SIM_BASE_NS + c->fault_end_ns;
  /* Restarts are recoveries, not faults: a late one moves the liveness
   * bound on with it. */
  uint64_t settle = s->fault_end;
  for (size_t i = 0; i < c->nfaults; i++)
    if (c->faults[i].kind == DRPC_SIM_RESTART &&
        SIM_BASE_NS + c->faults[i].at_ns > settle)
      settle = SIM_BASE_NS + c->faults[i].at_ns;
  s->deadline = settle + c->liveness_ns;
  if (c->nfaults)
    sim_push(s, EV_PHASE_END, -1, s->fault_end, 0, 0, NULL, 0);

  /* The loop: bounded by the liveness deadline in virtual time and by the
   * event queue's bound. */
  sim_event ev;
  while (!s->stop && s->nodes_left > 0) {
    if (!sim_pop(s, &ev)) {
      char stuck[700];
      describe_stuck(s, stuck, sizeof stuck);
      sim_violation(s, "deadlock: no event left to run; %s", stuck);
      break;
    }
    if (ev.time > s->deadline) {
      s->now = s->deadline;
      char stuck[700];
      describe_stuck(s, stuck, sizeof stuck);
      sim_violation(s,
                    "liveness: not finished %.1f s after the fault phase "
                    "ended; %s",
                    (double)c->liveness_ns / 1e9, stuck);
      sim_event_drop(s, &ev);
      break;
    }
    s->now = ev.time;
    dispatch(s, &ev);
  }
  r->sim_ns = sim_rel(s, s->now);

  /* Tear down. Nodes still running hold fibers that will never resume:
   * their agents and what those fibers own are abandoned. */
  while (sim_pop(s, &ev))
    sim_event_drop(s, &ev);
  for (int i = 0; i < s->nnodes; i++) {
    sim_node *n = &s->nodes[i];
    if (n->state == NODE_RUNNING || n->state == NODE_STARTING)
      r->abandoned = true;
    for (size_t k = 0; k < n->ndeferred; k++)
      sim_event_drop(s, &n->deferred[k]);
    free(n->deferred);
    free(n->calls);
    free(n->execs);
  }
  sim_fiber_free_all(s);
  drpc_store_decref(s->store);
  /* After every agent that will ever be freed is: their device memory
   * goes back to simcuda first. */
  sim_devices_teardown(s);
  /* Abandoned agents keep a pointer to it but never run again. */
  drpc_registry_free(s->reg);
  free(s->heap);
  free(s->nowq);
  sim_frame_pool_free(s);
  free(s->conns);
  free(s->nodes);
  free(s->links);
  sim_current = NULL;
  free(s);
  r->wall_s = wall_now() - wall0;
  return 0;
}

void drpc_sim_result_clear(drpc_sim_result *r) {
  free(r->trace);
  r->trace = NULL;
  r->ntrace = 0;
}
