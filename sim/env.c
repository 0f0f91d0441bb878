/* The simulator's drpc_env: per-node clocks, the modelled network
 * (latency, bandwidth, ordered connections, partitions, clogs, resets),
 * the executor on fibers, posted commands, and node life and death. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ---- clocks ------------------------------------------------------------ */

/* Node time: global time plus the node's offset, running drift_ppm fast
 * (or slow) since the start. */
uint64_t sim_node_now(const sim_node *n) {
  uint64_t g = n->s->now;
  int64_t rel = (int64_t)(g - SIM_BASE_NS);
  return (uint64_t)((int64_t)g + n->clock_offset_ns +
                    rel / 1000000 * n->drift_ppm +
                    rel % 1000000 * n->drift_ppm / 1000000);
}

static uint64_t node_time_at(const sim_node *n, uint64_t g) {
  int64_t rel = (int64_t)(g - SIM_BASE_NS);
  return (uint64_t)((int64_t)g + n->clock_offset_ns +
                    rel / 1000000 * n->drift_ppm +
                    rel % 1000000 * n->drift_ppm / 1000000);
}

uint64_t sim_node_to_global(const sim_node *n, uint64_t t) {
  if (n->clock_offset_ns == 0 && n->drift_ppm == 0)
    return t;
  int64_t rel = (int64_t)t - (int64_t)SIM_BASE_NS - n->clock_offset_ns;
  if (rel <= 0)
    return SIM_BASE_NS;
  /* Invert the drift, then step up to the first global time whose node
   * time has reached t (a few steps at most). */
  double g = (double)rel * 1e6 / (1e6 + (double)n->drift_ppm);
  uint64_t gt = SIM_BASE_NS + (uint64_t)(g > 2 ? g - 2 : 0);
  for (int i = 0; i < 64 && node_time_at(n, gt) < t; i++)
    gt++;
  return gt;
}

/* ---- the network ---------------------------------------------------------
 */

static uint64_t latency(sim *s, int src, int dst) {
  const drpc_sim_config *c = s->cfg;
  double lat = (double)c->lat_min_ns;
  if (c->lat_jitter_ns)
    lat += sim_unit(&s->net_rng) * (double)c->lat_jitter_ns;
  if (c->tail_p > 0 && sim_unit(&s->net_rng) < c->tail_p)
    lat += -(double)c->tail_mean_ns * log(1.0 - sim_unit(&s->net_rng));
  lat *= SIM_LINK(s, src, dst).factor;
  if (c->lat_max_ns && lat > (double)c->lat_max_ns)
    lat = (double)c->lat_max_ns;
  return (uint64_t)lat;
}

/* When bytes sent now on src -> dst arrive: after the link has carried
 * what was queued before them (bandwidth), a latency, and any clog. */
static uint64_t arrival(sim *s, int src, int dst, size_t len) {
  sim_link *l = &SIM_LINK(s, src, dst);
  uint64_t depart = s->now;
  if (s->cfg->bandwidth_Bps > 0) {
    if (l->busy_until > depart)
      depart = l->busy_until;
    depart += (uint64_t)((double)len * 1e9 / s->cfg->bandwidth_Bps);
    l->busy_until = depart;
  }
  uint64_t lat = latency(s, src, dst);
  uint64_t t = depart + lat;
  if (l->clog_until > depart && t < l->clog_until + lat)
    t = l->clog_until + lat;
  return t;
}

static bool blocked(sim *s, int a, int b) {
  return SIM_LINK(s, a, b).block || SIM_LINK(s, b, a).block;
}

static sim_conn *conn_of(sim *s, uint64_t id, int *end) {
  if (id == 0 || id > 2 * (uint64_t)s->nconns)
    return NULL;
  *end = (int)((id - 1) % 2);
  return &s->conns[(id - 1) / 2];
}

static uint64_t end_id(size_t k, int end) {
  return 2 * (uint64_t)k + 1 + (uint64_t)end;
}

static int end_node(const sim_conn *c, int end) {
  return end == 0 ? c->from : c->to;
}

/* Breaks connection k: every end still listening learns of a reset after
 * delay (a crash is seen one latency later, a partition after a
 * retransmission timeout); nothing more is delivered on it. */
static void conn_reset(sim *s, size_t k, uint64_t delay) {
  sim_conn *c = &s->conns[k];
  if (c->broken)
    return;
  c->broken = true;
  for (int end = 0; end < 2; end++) {
    if (c->closed[end] || c->told[end] || (end == 1 && !c->accepted))
      continue;
    int node = end_node(c, end);
    if (s->nodes[node].state == NODE_DEAD)
      continue;
    sim_push(s, EV_CLOSED, (int16_t)node, s->now + delay, CLOSE_RESET,
             end_id(k, end), NULL, 0);
  }
}

void sim_reset_between(sim *s, uint64_t a, uint64_t b) {
  for (size_t k = 0; k < s->nconns; k++) {
    sim_conn *c = &s->conns[k];
    if (c->broken)
      continue;
    if ((sim_in_mask(a, c->from) && sim_in_mask(b, c->to)) ||
        (sim_in_mask(b, c->from) && sim_in_mask(a, c->to)))
      conn_reset(s, k, latency(s, c->from, c->to));
  }
}

void sim_break_links(sim *s, uint64_t a, uint64_t b, bool oneway) {
  /* Established connections across a symmetric partition reset once TCP
   * gives up on them; one-way partitions reset a connection only when a
   * frame is lost on it (see e_send). */
  if (oneway)
    return;
  for (size_t k = 0; k < s->nconns; k++) {
    sim_conn *c = &s->conns[k];
    if (c->broken)
      continue;
    if ((sim_in_mask(a, c->from) && sim_in_mask(b, c->to)) ||
        (sim_in_mask(b, c->from) && sim_in_mask(a, c->to)))
      conn_reset(s, k, s->cfg->rto_ns);
  }
}

static int e_connect(void *ctx, int16_t peer, const char *addr, uint64_t *out) {
  sim_node *n = ctx;
  sim *s = n->s;
  (void)peer;
  int to = -1;
  if (sscanf(addr, "sim://%d", &to) != 1 || to < 0 || to >= s->nnodes)
    return DRPC_EINVAL;
  if (s->nconns == s->capconns) {
    size_t cap = s->capconns ? s->capconns * 2 : 256;
    sim_conn *v =
        cap <= SIM_MAX_CONNS ? realloc(s->conns, cap * sizeof *v) : NULL;
    if (!v)
      return DRPC_ETOOBIG;
    s->conns = v;
    s->capconns = cap;
  }
  size_t k = s->nconns++;
  sim_conn *c = &s->conns[k];
  memset(c, 0, sizeof *c);
  c->from = n->index;
  c->to = (int16_t)to;
  *out = end_id(k, 0);
  sim_hash(s, EV_OPEN, n->index, *out, (uint64_t)to, NULL, 0);
  if (blocked(s, n->index, to)) {
    c->broken = true;
    sim_push(s, EV_CLOSED, n->index, s->now + s->cfg->connect_timeout_ns,
             CLOSE_TIMEOUT, *out, NULL, 0);
  } else {
    sim_push(s, EV_ACCEPT, (int16_t)to, arrival(s, n->index, to, 64),
             (uint32_t)k, 0, NULL, 0);
  }
  return 0;
}

/* The frame's bytes in one buffer from the pool (the frame stays f's). */
static uint8_t *flatten(sim *s, const drpc_outframe *f, size_t *len) {
  static const uint8_t zero[DRPC_TENSOR_ALIGN];
  struct iovec iov[16];
  size_t n = drpc_outframe_iov(f, 0, iov, 16, zero);
  if (n > 16) {
    /* Many tensors: one more walk, into a buffer of its own size. */
    uint8_t *flat = drpc_outframe_flatten(f, len);
    uint8_t *buf = flat ? sim_frame_alloc(s, *len) : NULL;
    if (buf)
      memcpy(buf, flat, *len);
    free(flat);
    return buf;
  }
  size_t total = 0;
  for (size_t i = 0; i < n; i++)
    total += iov[i].iov_len;
  uint8_t *buf = sim_frame_alloc(s, total);
  if (!buf)
    return NULL;
  size_t at = 0;
  for (size_t i = 0; i < n; i++) {
    memcpy(buf + at, iov[i].iov_base, iov[i].iov_len);
    at += iov[i].iov_len;
  }
  *len = total;
  return buf;
}

static void e_send(void *ctx, uint64_t id, drpc_outframe *f) {
  sim_node *n = ctx;
  sim *s = n->s;
  int end;
  sim_conn *c = conn_of(s, id, &end);
  if (!c || c->broken || c->closed[0] || c->closed[1] || c->told[end] ||
      end_node(c, end) != n->index) {
    drpc_outframe_free(f);
    return;
  }
  size_t len = 0;
  uint8_t *buf = flatten(s, f, &len);
  drpc_outframe_free(f);
  if (!buf) {
    sim_violation(s, "out of memory flattening a frame");
    return;
  }
  int src = end_node(c, end), dst = end_node(c, 1 - end);
  size_t k = (size_t)(c - s->conns);
  sim_hash(s, EV_SEND, n->index, id, len, buf, len);
  s->res->bytes += len;
  if (SIM_LINK(s, src, dst).block) {
    /* Lost: TCP retransmits into the void until it gives up. */
    sim_frame_free(s, buf, len);
    if (!c->reset_pending) {
      c->reset_pending = true;
      sim_push(s, EV_RESET, n->index, s->now + s->cfg->rto_ns, (uint32_t)k, 0,
               NULL, 0);
    }
    return;
  }
  uint64_t t = arrival(s, src, dst, len);
  /* A connection delivers in order. */
  if (t < c->last_arrival[end])
    t = c->last_arrival[end];
  c->last_arrival[end] = t;
  sim_push(s, EV_FRAME, (int16_t)dst, t, (uint32_t)k, end_id(k, 1 - end), buf,
           (uint32_t)len);
}

static void e_close(void *ctx, uint64_t id) {
  sim_node *n = ctx;
  sim *s = n->s;
  int end;
  sim_conn *c = conn_of(s, id, &end);
  if (!c || c->closed[end] || end_node(c, end) != n->index)
    return;
  c->closed[end] = true;
  int other = 1 - end;
  if (c->broken || c->closed[other] || c->told[other] ||
      (other == 1 && !c->accepted))
    return;
  /* The peer reads EOF after the frames already on their way. */
  size_t k = (size_t)(c - s->conns);
  int src = end_node(c, end), dst = end_node(c, other);
  uint64_t t = s->now + latency(s, src, dst);
  if (t < c->last_arrival[end])
    t = c->last_arrival[end];
  c->last_arrival[end] = t;
  sim_push(s, EV_CLOSED, (int16_t)dst, t, CLOSE_EOF, end_id(k, other), NULL, 0);
}

/* ---- timers, executor, commands ----------------------------------------- */

static uint64_t e_now(void *ctx) {
  sim_node *n = ctx;
  return n->index < 0 ? n->s->now : sim_node_now(n);
}

static void e_timer_arm(void *ctx, uint64_t deadline) {
  sim_node *n = ctx;
  sim *s = n->s;
  n->timer_at = deadline ? sim_node_to_global(n, deadline) : 0;
  if (n->timer_at && n->timer_at < s->now)
    n->timer_at = s->now;
  if (n->timer_at && n->state != NODE_DEAD &&
      (!n->timer_event_at || n->timer_at < n->timer_event_at)) {
    n->timer_event_at = n->timer_at;
    sim_push(s, EV_TIMER, n->index, n->timer_at, 0, 0, NULL, 0);
  }
}

static uint64_t job_cost(sim *s, sim_node *n) {
  return (uint64_t)((double)s->cfg->job_cpu_ns * n->slow);
}

/* core/internal.h: the connection a call job's request came on. */
uint64_t drpc_call_job_conn(drpc_job *job);

static void e_execute(void *ctx, drpc_job *job) {
  sim_node *n = ctx;
  sim *s = n->s;
  if (n->last_exec_valid) {
    /* The request the core recorded just before handing it over. */
    n->last_exec_valid = false;
    sim_count_exec(s, n, n->last_exec_peer, n->last_exec_id,
                   drpc_call_job_conn(job));
  }
  if (n->state == NODE_DEAD) {
    s->res->abandoned = true; /* a killed process's work dies with it */
    return;
  }
  if (n->jobs_running < n->threads) {
    n->jobs_running++;
    sim_push(s, EV_JOB, n->index, s->now + job_cost(s, n), 0, 0, job, 0);
    return;
  }
  if (n->jq_len >= SIM_MAX_JOBQ) {
    sim_violation(s, "%s: executor queue full (%zu jobs)", n->name, n->jq_len);
    s->res->abandoned = true;
    return;
  }
  job->next = NULL;
  if (n->jq_tail)
    n->jq_tail->next = job;
  else
    n->jq_head = job;
  n->jq_tail = job;
  n->jq_len++;
}

static void job_fiber(void *arg) {
  drpc_job *job = arg;
  job->run(job);
}

void sim_node_job_done(sim *s, sim_node *n) {
  n->jobs_running--;
  if (n->state == NODE_DEAD)
    return;
  if (n->jq_head) {
    drpc_job *job = n->jq_head;
    n->jq_head = job->next;
    if (!n->jq_head)
      n->jq_tail = NULL;
    n->jq_len--;
    n->jobs_running++;
    sim_push(s, EV_JOB, n->index, s->now + job_cost(s, n), 0, 0, job, 0);
  }
  sim_node_maybe_free(s, n);
}

static void e_post(void *ctx, drpc_cmd *cmd) {
  sim_node *n = ctx;
  sim *s = n->s;
  if (n->state == NODE_DEAD) {
    s->res->abandoned = true;
    return;
  }
  /* Applied by an event at now: in posting order, never re-entrantly. */
  sim_push(s, EV_CMD, n->index, s->now, 0, 0, cmd, 0);
}

static bool e_is_owner(void *ctx) {
  sim_node *n = ctx;
  return n->s->cur == NULL;
}

static uint64_t e_random(void *ctx) {
  sim_node *n = ctx;
  return sim_rand(&n->rng);
}

static void e_record(void *ctx, const drpc_event *ev) {
  sim_node *n = ctx;
  sim_check_record(n->s, n, ev);
  const drpc_sim_config *c = n->s->cfg;
  if (c->record && n->index >= 0 && n->state != NODE_DEAD)
    c->record(c->record_ctx, ev);
}

static bool e_recording(void *ctx) {
  sim_node *n = ctx;
  return n->s->cfg->record != NULL;
}

static void e_log(void *ctx, drpc_log_level lvl, const char *msg) {
  sim_node *n = ctx;
  if (n->s->cfg->verbose)
    fprintf(stderr, "[t=%.6fs %s %s] %s\n",
            (double)sim_rel(n->s, n->s->now) / 1e9,
            n->index < 0 ? "store" : n->name,
            lvl >= DRPC_LOG_ERROR  ? "error"
            : lvl >= DRPC_LOG_WARN ? "warn"
                                   : "info",
            msg);
}

static void e_pool_stats(void *ctx, int *size, int *idle) {
  sim_node *n = ctx;
  *size = n->threads;
  *idle = n->threads > n->jobs_running ? n->threads - n->jobs_running : 0;
}

static int e_listen_addr(void *ctx, char *buf, size_t len) {
  sim_node *n = ctx;
  snprintf(buf, len, "%s", n->addr);
  return 0;
}

/* Every op but log: without --verbose nothing is logged, and the core then
 * does not even format its log lines. */
#define SIM_ENV_OPS_COMMON                                                     \
  .now_ns = e_now, .timer_arm = e_timer_arm, .connect = e_connect,             \
  .send = e_send, .close = e_close, .execute = e_execute, .post = e_post,      \
  .is_owner = e_is_owner, .sync_init = sim_sync_init,                          \
  .sync_destroy = sim_sync_destroy, .sync_lock = sim_sync_nop,                 \
  .sync_unlock = sim_sync_nop, .sync_wait = sim_sync_wait,                     \
  .sync_broadcast = sim_sync_broadcast, .random = e_random,                    \
  .record = e_record, .recording = e_recording, .pool_stats = e_pool_stats,    \
  .listen_addr = e_listen_addr

const drpc_env_ops sim_env_ops = {SIM_ENV_OPS_COMMON, .log = e_log};
static const drpc_env_ops sim_env_ops_quiet = {SIM_ENV_OPS_COMMON};

void sim_node_init(sim *s, sim_node *n, int16_t index) {
  memset(n, 0, sizeof *n);
  n->s = s;
  n->index = index;
  n->env.ops = s->cfg->verbose ? &sim_env_ops : &sim_env_ops_quiet;
  n->env.ctx = n;
  n->slow = 1.0;
  n->threads = 1;
  if (index >= 0) {
    snprintf(n->name, sizeof n->name, "w%d", index);
    snprintf(n->addr, sizeof n->addr, "sim://%d", index);
  } else {
    snprintf(n->name, sizeof n->name, "store");
  }
}

/* ---- node life ------------------------------------------------------------
 */

void sim_attach(sim *s, sim_node *n, drpc_agent *a) {
  n->agent = a;
  n->state = NODE_RUNNING;
  if (n->ndeferred)
    sim_push(s, EV_REPLAY, n->index, s->now, 0, 0, NULL, 0);
}

void sim_node_free_retired(sim_node *n) {
  for (size_t i = 0; i < n->nretired; i++)
    drpc_agent_free(n->retired[i]);
  free(n->retired);
  n->retired = NULL;
  n->nretired = 0;
}

void sim_node_maybe_free(sim *s, sim_node *n) {
  if (!n->main_done || n->jobs_running || n->jq_len || n->free_queued ||
      n->state == NODE_DEAD || n->state == NODE_FINISHED)
    return;
  n->free_queued = true;
  /* An event, so commands the last job posted apply first. */
  sim_push(s, EV_NODE_FREE, n->index, s->now, 0, 0, NULL, 0);
}

static void reset_node_conns(sim *s, int node) {
  for (size_t k = 0; k < s->nconns; k++) {
    sim_conn *c = &s->conns[k];
    if (c->broken || (c->from != node && c->to != node))
      continue;
    int peer = c->from == node ? c->to : c->from;
    conn_reset(s, k, latency(s, node, peer));
  }
}

void sim_node_free_agent(sim *s, sim_node *n) {
  n->free_queued = false;
  if (n->state == NODE_DEAD || n->state == NODE_FINISHED)
    return;
  if (n->jobs_running || n->jq_len)
    return; /* freed when the last job ends */
  if (n->agent)
    drpc_agent_free(n->agent);
  n->agent = NULL;
  sim_node_free_retired(n);
  n->state = NODE_FINISHED;
  n->timer_at = 0;
  s->nodes_left--;
  /* The process exits: what is still open resets. */
  reset_node_conns(s, n->index);
}

void sim_crash(sim *s, int16_t node) {
  sim_node *n = &s->nodes[node];
  if (n->state == NODE_DEAD || n->state == NODE_FINISHED)
    return;
  n->state = NODE_DEAD;
  n->crashes++;
  s->nodes_left--;
  s->res->crashed++;
  n->timer_at = 0;
  for (size_t i = 0; i < n->ndeferred; i++)
    sim_event_drop(s, &n->deferred[i]);
  n->ndeferred = 0;
  /* First freeze its fibers (nothing may run on it again), then fail and
   * free its agent's calls without running its shutdown. */
  sim_fiber_kill_node(s, node);
  if (n->jq_len)
    s->res->abandoned = true;
  n->jq_head = n->jq_tail = NULL;
  n->jq_len = 0;
  if (n->agent)
    drpc_agent_free(n->agent);
  else if (!n->main_done)
    s->res->abandoned = true; /* an agent half-way through its start */
  n->agent = NULL;
  sim_node_free_retired(n);
  reset_node_conns(s, node);
  /* Its sockets died with it: nothing more is told to its ends (a later
   * life opens its own connections), and its own pending events are
   * stale from now on. */
  for (size_t k = 0; k < s->nconns; k++) {
    sim_conn *c = &s->conns[k];
    if (c->from == node)
      c->told[0] = true;
    if (c->to == node)
      c->told[1] = true;
  }
  n->inc++;
}

bool sim_restart(sim *s, int16_t node) {
  sim_node *n = &s->nodes[node];
  if (n->state != NODE_DEAD)
    return false;
  /* A fresh process: nothing of the last life's executor, timers or
   * calls; the same name, address, clock and store. */
  n->state = NODE_IDLE;
  n->main_done = false;
  n->free_queued = false;
  n->jobs_running = 0;
  n->timer_at = n->timer_event_at = 0;
  n->last_exec_valid = false;
  if (n->calls)
    memset(n->calls, 0, n->call_cap * sizeof *n->calls);
  /* Its calls to itself come on no connection (conn 0) and are numbered
   * from 1 again: a request is (caller life, id), and the last life's
   * own requests are forgotten with it. Requests of other callers came on
   * connections of the last life and stay told apart by those. */
  sim_forget_execs(n, (int16_t)node);
  s->nodes_left++;
  s->res->restarted++;
  sim_push(s, EV_START, node, s->now, 0, 0, NULL, 0);
  return true;
}

/* ---- delivering events -------------------------------------------------
 */

void sim_event_drop(sim *s, sim_event *ev) {
  if (ev->kind == EV_FRAME)
    sim_frame_free(s, ev->p, ev->len);
  else if (ev->kind == EV_CMD || ev->kind == EV_JOB)
    s->res->abandoned = true;
}

static bool defer(sim *s, sim_node *n, sim_event *ev) {
  if (n->ndeferred == n->capdeferred) {
    size_t cap = n->capdeferred ? n->capdeferred * 2 : 16;
    sim_event *v =
        cap <= SIM_MAX_DEFERRED ? realloc(n->deferred, cap * sizeof *v) : NULL;
    if (!v) {
      sim_violation(s, "%s: too many inputs before its agent started", n->name);
      return false;
    }
    n->deferred = v;
    n->capdeferred = cap;
  }
  n->deferred[n->ndeferred++] = *ev;
  return true;
}

static const char *close_reason(uint32_t why) {
  switch (why) {
  case CLOSE_EOF:
    return "connection closed by peer (EOF)";
  case CLOSE_REFUSED:
    return "connection refused";
  case CLOSE_TIMEOUT:
    return "connection timed out";
  default:
    return "connection reset by peer";
  }
}

/* Inputs for a node's core: frames, accepts, opens, closes. */
static void deliver_input(sim *s, sim_node *n, sim_event *ev, bool replay) {
  if (!replay && (n->state == NODE_STARTING || n->ndeferred)) {
    if (!defer(s, n, ev))
      sim_event_drop(s, ev);
    return;
  }
  sim_conn *c = &s->conns[ev->a];
  size_t k = ev->a;
  switch (ev->kind) {
  case EV_FRAME: {
    int end = (int)((ev->b - 1) % 2);
    if (n->state == NODE_RUNNING && !c->broken && !c->closed[end] &&
        !c->told[end]) {
      s->res->deliveries++;
      sim_hash(s, EV_FRAME, n->index, ev->b, ev->len, NULL, 0);
      drpc_agent_on_frame(n->agent, ev->b, ev->p, ev->len);
    }
    sim_frame_free(s, ev->p, ev->len);
    return;
  }
  case EV_ACCEPT:
    if (c->broken || c->closed[0])
      return;
    if (n->state != NODE_RUNNING) {
      /* Nobody listens there any more: the dialer is refused. */
      c->broken = true;
      sim_push(s, EV_CLOSED, c->from, s->now + latency(s, c->to, c->from),
               CLOSE_REFUSED, end_id(k, 0), NULL, 0);
      return;
    }
    if (blocked(s, c->from, c->to)) {
      c->broken = true;
      sim_push(s, EV_CLOSED, c->from, s->now + s->cfg->connect_timeout_ns,
               CLOSE_TIMEOUT, end_id(k, 0), NULL, 0);
      return;
    }
    c->accepted = true;
    sim_hash(s, EV_ACCEPT, n->index, end_id(k, 1), 0, NULL, 0);
    drpc_agent_on_conn_accept(n->agent, end_id(k, 1));
    {
      uint64_t t = arrival(s, c->to, c->from, 64);
      c->last_arrival[1] = t;
      sim_push(s, EV_OPEN, c->from, t, (uint32_t)k, 0, NULL, 0);
    }
    return;
  case EV_OPEN:
    if (c->broken || c->closed[0] || n->state != NODE_RUNNING)
      return;
    c->open = true;
    sim_hash(s, EV_OPEN, n->index, end_id(k, 0), 1, NULL, 0);
    drpc_agent_on_conn_open(n->agent, end_id(k, 0));
    return;
  case EV_CLOSED: {
    int end;
    c = conn_of(s, ev->b, &end);
    if (!c || c->closed[end] || c->told[end])
      return;
    c->told[end] = true;
    if (n->state != NODE_RUNNING)
      return;
    drpc_error err = {DRPC_ECONN, (char *)close_reason(ev->a)};
    sim_hash(s, EV_CLOSED, n->index, ev->b, ev->a, NULL, 0);
    drpc_agent_on_conn_closed(n->agent, ev->b, &err);
    return;
  }
  default:
    return;
  }
}

void sim_deliver(sim *s, sim_event *ev) {
  sim_node *n = &s->nodes[ev->node];
  switch (ev->kind) {
  case EV_FRAME:
  case EV_ACCEPT:
  case EV_OPEN:
  case EV_CLOSED:
    if (n->state == NODE_DEAD || n->state == NODE_FINISHED) {
      if (ev->kind == EV_ACCEPT)
        deliver_input(s, n, ev, true); /* refuses the dialer */
      else
        sim_event_drop(s, ev);
      if (ev->kind == EV_CLOSED) {
        int end;
        sim_conn *c = conn_of(s, ev->b, &end);
        if (c)
          c->told[end] = true;
      }
      return;
    }
    deliver_input(s, n, ev, false);
    return;
  case EV_REPLAY:
    for (size_t i = 0; i < n->ndeferred && n->state == NODE_RUNNING; i++)
      deliver_input(s, n, &n->deferred[i], true);
    n->ndeferred = 0;
    return;
  case EV_TIMER:
    if (ev->time != n->timer_event_at)
      return; /* superseded by an earlier one */
    n->timer_event_at = 0;
    if (n->state != NODE_RUNNING || !n->timer_at)
      return;
    if (n->timer_at > s->now) {
      /* Re-armed later since: wait for the new deadline. */
      n->timer_event_at = n->timer_at;
      sim_push(s, EV_TIMER, n->index, n->timer_at, 0, 0, NULL, 0);
      return;
    }
    n->timer_at = 0;
    sim_hash(s, EV_TIMER, n->index, 0, 0, NULL, 0);
    drpc_agent_on_timer(n->agent);
    return;
  case EV_CMD: {
    drpc_cmd *cmd = ev->p;
    if (n->state == NODE_DEAD) {
      s->res->abandoned = true;
      return;
    }
    if (n->state == NODE_FINISHED) {
      sim_violation(s, "%s: a command was posted after its agent was freed",
                    n->name);
      s->res->abandoned = true;
      return;
    }
    sim_hash(s, EV_CMD, n->index, 0, 0, NULL, 0);
    cmd->apply(cmd);
    return;
  }
  case EV_JOB: {
    if (n->state == NODE_DEAD) {
      s->res->abandoned = true;
      return;
    }
    sim_fiber *f = NULL;
    if (sim_fiber_spawn(s, n->index, job_fiber, ev->p, &f)) {
      s->res->abandoned = true;
      return;
    }
    f->is_job = true;
    sim_hash(s, EV_JOB, n->index, f->slot, 0, NULL, 0);
    sim_fiber_resume(s, f);
    return;
  }
  case EV_NODE_FREE:
    sim_node_free_agent(s, n);
    return;
  case EV_RESET:
    sim_hash(s, EV_RESET, n->index, ev->a, 0, NULL, 0);
    conn_reset(s, ev->a, 0);
    return;
  default:
    return;
  }
}
