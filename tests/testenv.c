/* The deterministic test env: see testenv.h. */
#include "testenv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tevent {
  int kind; /* 0 frame, 1 open, 2 closed */
  int conn; /* index into conns */
  int to;   /* receiving node */
  uint8_t *buf;
  size_t len;
  tevent *next;
};

/* An executor job and the node whose agent handed it over. */
struct tjob {
  drpc_job *job;
  int node;
  tjob *next;
};

static tnode *node_of(void *ctx) {
  return ctx;
}

static void push(tnet *n, tevent *e) {
  e->next = NULL;
  if (n->tail)
    n->tail->next = e;
  else
    n->head = e;
  n->tail = e;
}

static uint64_t t_now(void *ctx) {
  return node_of(ctx)->net->now_ns;
}

static void t_timer_arm(void *ctx, uint64_t deadline) {
  node_of(ctx)->timer_deadline = deadline;
}

static int t_connect(void *ctx, int16_t peer, const char *addr, uint64_t *out) {
  tnode *me = node_of(ctx);
  tnet *n = me->net;
  (void)peer;
  int to = -1;
  if (sscanf(addr, "tnet://%d", &to) != 1 || to < 0 || to >= n->nnodes)
    return DRPC_EINVAL;
  for (int i = 0; i < TNET_MAX_CONNS; i++) {
    if (n->conns[i].used)
      continue;
    tconn *c = &n->conns[i];
    memset(c, 0, sizeof *c);
    c->used = true;
    c->from = me->index;
    c->to = to;
    c->id_from = ++n->next_conn_id;
    c->id_to = ++n->next_conn_id;
    c->closed = n->refuse_connect;
    me->connects++;
    tevent *e = calloc(1, sizeof *e);
    e->kind = n->refuse_connect ? 2 : 1;
    e->conn = i;
    e->to = me->index;
    push(n, e);
    *out = c->id_from;
    return 0;
  }
  return DRPC_ETOOBIG;
}

static int find_conn(tnet *n, int node, uint64_t id, int *peer) {
  for (int i = 0; i < TNET_MAX_CONNS; i++) {
    tconn *c = &n->conns[i];
    if (!c->used)
      continue;
    if (c->from == node && c->id_from == id) {
      *peer = c->to;
      return i;
    }
    if (c->to == node && c->id_to == id) {
      *peer = c->from;
      return i;
    }
  }
  return -1;
}

static void t_send(void *ctx, uint64_t conn, drpc_outframe *f) {
  tnode *me = node_of(ctx);
  tnet *n = me->net;
  int peer;
  int i = find_conn(n, me->index, conn, &peer);
  if (i < 0 || n->conns[i].closed) {
    drpc_outframe_free(f);
    return;
  }
  me->frames_sent++;
  tevent *e = calloc(1, sizeof *e);
  e->kind = 0;
  e->conn = i;
  e->to = peer;
  e->buf = drpc_outframe_flatten(f, &e->len);
  drpc_outframe_free(f);
  if (n->on_send)
    n->on_send(n->on_send_user, me->index, peer, e->buf, e->len);
  push(n, e);
}

static void t_close(void *ctx, uint64_t conn) {
  tnode *me = node_of(ctx);
  tnet *n = me->net;
  int peer;
  int i = find_conn(n, me->index, conn, &peer);
  me->closes++;
  if (i < 0 || n->conns[i].closed)
    return;
  n->conns[i].closed = true;
  /* The other side learns of it after frames already in flight. */
  tevent *e = calloc(1, sizeof *e);
  e->kind = 2;
  e->conn = i;
  e->to = peer;
  push(n, e);
}

static void t_execute(void *ctx, drpc_job *job) {
  tnode *me = node_of(ctx);
  tnet *n = me->net;
  tjob *t = calloc(1, sizeof *t);
  if (!t) {
    fprintf(stderr, "testenv: out of memory queueing a job\n");
    abort();
  }
  t->job = job;
  t->node = me->index;
  if (n->jobs_tail)
    n->jobs_tail->next = t;
  else
    n->jobs_head = t;
  n->jobs_tail = t;
}

static void t_post(void *ctx, drpc_cmd *cmd) {
  tnet *n = node_of(ctx)->net;
  cmd->next = NULL;
  if (n->cmds_tail)
    n->cmds_tail->next = cmd;
  else
    n->cmds_head = cmd;
  n->cmds_tail = cmd;
}

static bool t_is_owner(void *ctx) {
  (void)ctx;
  return false;
}

static void t_sync_init(void *ctx, drpc_sync *s) {
  (void)ctx;
  memset(s, 0, sizeof *s);
}
static void t_sync_nop(void *ctx, drpc_sync *s) {
  (void)ctx;
  (void)s;
}

/* The earliest armed timer of any node, 0 when none. */
static uint64_t next_timer(tnet *n) {
  uint64_t t = 0;
  for (int i = 0; i < n->nnodes; i++) {
    uint64_t d = n->nodes[i].agent ? n->nodes[i].timer_deadline : 0;
    if (d && (!t || d < t))
      t = d;
  }
  return t;
}

/* Nothing else can happen while a single-threaded test waits: run what is
 * pending; otherwise jump the clock to the next timer when it comes before
 * the deadline (as a discrete-event simulator would), else to the deadline. */
static bool t_sync_wait(void *ctx, drpc_sync *s, uint64_t deadline) {
  tnet *n = node_of(ctx)->net;
  (void)s;
  if (tnet_run(n, 1) > 0)
    return true;
  uint64_t t = next_timer(n);
  if (t && (deadline == 0 || t < deadline)) {
    tnet_advance_to(n, t);
    return true;
  }
  if (deadline == 0) {
    fprintf(stderr, "testenv: a wait without deadline would block forever\n");
    abort();
  }
  tnet_advance_to(n, deadline);
  return false;
}

static uint64_t t_random(void *ctx) {
  tnet *n = node_of(ctx)->net;
  n->rng = n->rng * 6364136223846793005ull + 1442695040888963407ull;
  return n->rng >> 11;
}

static void t_log(void *ctx, drpc_log_level lvl, const char *msg) {
  tnode *me = node_of(ctx);
  if (lvl >= DRPC_LOG_ERROR)
    me->logs_error++;
  snprintf(me->last_log, sizeof me->last_log, "%s", msg);
}

/* The pool is pumped by the test: a node's threads are busy while its jobs
 * run (nested runs happen when a job waits on a future). */
static void t_pool_stats(void *ctx, int *size, int *idle) {
  tnode *me = node_of(ctx);
  *size = TNET_POOL_SIZE;
  *idle =
      me->jobs_running < TNET_POOL_SIZE ? TNET_POOL_SIZE - me->jobs_running : 0;
}

static int t_listen_addr(void *ctx, char *buf, size_t len) {
  snprintf(buf, len, "%s", node_of(ctx)->addr);
  return 0;
}

static const drpc_env_ops tops = {
    .now_ns = t_now,
    .timer_arm = t_timer_arm,
    .connect = t_connect,
    .send = t_send,
    .close = t_close,
    .execute = t_execute,
    .post = t_post,
    .is_owner = t_is_owner,
    .sync_init = t_sync_init,
    .sync_destroy = t_sync_nop,
    .sync_lock = t_sync_nop,
    .sync_unlock = t_sync_nop,
    .sync_wait = t_sync_wait,
    .sync_broadcast = t_sync_nop,
    .random = t_random,
    .record = NULL,
    .log = t_log,
    .pool_stats = t_pool_stats,
    .listen_addr = t_listen_addr,
};

void tnet_init(tnet *n) {
  memset(n, 0, sizeof *n);
  n->now_ns = 1000;
  n->rng = 42;
  n->auto_run_jobs = true;
}

tnode *tnet_node(tnet *n) {
  tnode *nd = &n->nodes[n->nnodes];
  memset(nd, 0, sizeof *nd);
  nd->net = n;
  nd->index = n->nnodes++;
  nd->env.ops = &tops;
  nd->env.ctx = nd;
  snprintf(nd->addr, sizeof nd->addr, "tnet://%d", nd->index);
  return nd;
}

bool tnet_run_job(tnet *n) {
  tjob *t = n->jobs_head;
  if (!t)
    return false;
  n->jobs_head = t->next;
  if (!n->jobs_head)
    n->jobs_tail = NULL;
  tnode *nd = &n->nodes[t->node];
  drpc_job *j = t->job;
  free(t);
  nd->jobs_run++;
  nd->jobs_running++;
  j->run(j);
  nd->jobs_running--;
  return true;
}

static bool run_cmd(tnet *n) {
  drpc_cmd *c = n->cmds_head;
  if (!c)
    return false;
  n->cmds_head = c->next;
  if (!n->cmds_head)
    n->cmds_tail = NULL;
  c->apply(c);
  return true;
}

static bool run_event(tnet *n) {
  tevent *e = n->head;
  if (!e)
    return false;
  n->head = e->next;
  if (!n->head)
    n->tail = NULL;
  tconn *c = &n->conns[e->conn];
  tnode *to = &n->nodes[e->to];
  bool dialer = c->from == e->to;
  uint64_t id = dialer ? c->id_from : c->id_to;
  tnode *callee = &n->nodes[c->to];
  if (e->kind == 1 && !c->closed && !callee->agent) {
    /* Nobody listens there: the dial is refused. */
    c->closed = true;
    if (to->agent) {
      drpc_error err = {DRPC_ECONN, "connection refused"};
      drpc_agent_on_conn_closed(to->agent, id, &err);
    }
  } else if (to->agent) {
    if (e->kind == 1) {
      /* A connection broken or closed before it opened stays closed. */
      if (!c->closed) {
        c->open = true;
        drpc_agent_on_conn_accept(callee->agent, c->id_to);
        drpc_agent_on_conn_open(to->agent, id);
      }
    } else if (e->kind == 2) {
      drpc_error err = {DRPC_ECONN, "connection reset"};
      if (!c->open && dialer)
        err.msg = "connection refused";
      drpc_agent_on_conn_closed(to->agent, id, &err);
    } else if (!c->closed) {
      drpc_agent_on_frame(to->agent, id, e->buf, e->len);
    }
  }
  free(e->buf);
  free(e);
  return true;
}

int tnet_run(tnet *n, int max_steps) {
  int steps = 0;
  while (steps < max_steps) {
    if (run_cmd(n) || run_event(n) || (n->auto_run_jobs && tnet_run_job(n)))
      steps++;
    else
      break;
  }
  return steps;
}

void tnet_advance_to(tnet *n, uint64_t t) {
  if (t > n->now_ns)
    n->now_ns = t;
  for (int i = 0; i < n->nnodes; i++) {
    tnode *nd = &n->nodes[i];
    if (nd->agent && nd->timer_deadline && nd->timer_deadline <= n->now_ns) {
      nd->timer_deadline = 0;
      drpc_agent_on_timer(nd->agent);
    }
  }
}

void tnet_break(tnet *n, int a, int b) {
  for (int i = 0; i < TNET_MAX_CONNS; i++) {
    tconn *c = &n->conns[i];
    if (!c->used || c->closed)
      continue;
    if (!((c->from == a && c->to == b) || (c->from == b && c->to == a)))
      continue;
    c->closed = true;
    drpc_error err = {DRPC_ECONN, "connection reset by test"};
    if (n->nodes[c->from].agent)
      drpc_agent_on_conn_closed(n->nodes[c->from].agent, c->id_from, &err);
    if (c->open && n->nodes[c->to].agent)
      drpc_agent_on_conn_closed(n->nodes[c->to].agent, c->id_to, &err);
  }
}

int tnet_raw_connect(tnet *n, int from, int to, uint64_t *id_at_to) {
  for (int i = 0; i < TNET_MAX_CONNS; i++) {
    tconn *c = &n->conns[i];
    if (c->used)
      continue;
    memset(c, 0, sizeof *c);
    c->used = true;
    c->open = true;
    c->from = from;
    c->to = to;
    c->id_from = ++n->next_conn_id;
    c->id_to = ++n->next_conn_id;
    if (n->nodes[to].agent)
      drpc_agent_on_conn_accept(n->nodes[to].agent, c->id_to);
    *id_at_to = c->id_to;
    return i;
  }
  return -1;
}

void tnet_free(tnet *n) {
  while (n->head) {
    tevent *e = n->head;
    n->head = e->next;
    free(e->buf);
    free(e);
  }
  n->tail = NULL;
  while (tnet_run_job(n) || run_cmd(n))
    ;
}

drpc_store *tnet_store(tnet *n, int world, const char *const *names) {
  drpc_store *s = drpc_store_memory_new(&n->nodes[0].env);
  char key[160], addr[32];
  for (int r = 0; r < world; r++) {
    snprintf(key, sizeof key, "names/%d", r);
    drpc_store_set_str(s, key, names[r], NULL);
    snprintf(key, sizeof key, "addrs/%s", names[r]);
    snprintf(addr, sizeof addr, "tnet://%d", r);
    drpc_store_set_str(s, key, addr, NULL);
  }
  return s;
}
