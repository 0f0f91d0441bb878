/* Replays the nodes of a recording against fresh cores (drpc/replay.h):
 * one node at a time, or all in one pass over the file. */
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "drpc/replay.h"
#include "drpc/trace.h"

typedef struct value_rec {
  uint64_t key;
  void *p;
  size_t n;
} value_rec;

/* An event kept for the context of a divergence: described only when one
 * is reported (formatting every event cost a sixth of replay's time). */
typedef struct kept_event {
  drpc_event ev; /* bytes and name not kept */
  bool named;
  char name[64];
} kept_event;

typedef struct node_replay {
  drpc_replay *r;
  drpc_trace_replay_result *res;
  int context;
  size_t ring_head;
  kept_event ring[DRPC_TRACE_REPLAY_CONTEXT];
  drpc_error err;
  /* Looked up ahead of the inputs: the node's connection ids and the
   * shared values its core read, in recorded order. They are read from
   * `ahead` only as far as the core asks for them: reading them all
   * before the replay walked every event of the node twice (~12% of the
   * replay), while a run makes its connections in its first events. The
   * statement is prepared at the first need. */
  drpc_trace *t;
  int16_t node;
  sqlite3_stmt *ahead;
  bool ahead_done;
  int ahead_rc; /* reading ahead failed: the code, the message in ahead_err */
  drpc_error ahead_err;
  uint64_t *connects;
  size_t nconnects, next_connect;
  value_rec *values;
  size_t nvalues, next_value;
  int64_t last_seq; /* drpc_trace_replay_nodes: the node's latest event */
} node_replay;

static void read_ahead(node_replay *c);

static uint64_t next_connect(void *arg) {
  node_replay *c = arg;
  while (c->next_connect == c->nconnects && !c->ahead_done)
    read_ahead(c);
  return c->next_connect < c->nconnects ? c->connects[c->next_connect++] : 0;
}

static bool next_value(void *arg, uint64_t key, const void **p, size_t *n) {
  node_replay *c = arg;
  while (c->next_value == c->nvalues && !c->ahead_done)
    read_ahead(c);
  if (c->next_value >= c->nvalues || c->values[c->next_value].key != key)
    return false;
  value_rec *v = &c->values[c->next_value++];
  *p = v->p;
  *n = v->n;
  return true;
}

static bool grow(void **p, size_t len, size_t size) {
  if (len % 64)
    return true;
  void *q = realloc(*p, (len + 64) * size);
  if (!q)
    return false;
  *p = q;
  return true;
}

static int collect_one(node_replay *c, const drpc_event *ev) {
  if (ev->kind == DRPC_EV_OUT_CONNECT) {
    if (!grow((void **)&c->connects, c->nconnects, sizeof *c->connects))
      return DRPC_ENOMEM;
    c->connects[c->nconnects++] = ev->id;
  } else if (ev->kind == DRPC_EV_IN_VALUE) {
    if (!grow((void **)&c->values, c->nvalues, sizeof *c->values))
      return DRPC_ENOMEM;
    value_rec *v = &c->values[c->nvalues];
    v->key = ev->id;
    v->n = ev->bytes ? ev->len : 0;
    v->p = v->n ? malloc(v->n) : NULL;
    if (v->n && !v->p)
      return DRPC_ENOMEM;
    if (v->n)
      memcpy(v->p, ev->bytes, v->n);
    c->nvalues++;
  }
  return 0;
}

/* Prepares `ahead`: the node's connects and shared values, looked up by
 * kind (an indexed query rather than a second pass over every event). */
static int ahead_open(drpc_trace *t, int16_t node, node_replay *c,
                      drpc_error *err) {
  int rc = sqlite3_prepare_v2(
      drpc_trace_db(t),
      "SELECT e.kind, e.xid, p.bytes FROM events e LEFT JOIN payloads p "
      "ON p.id = e.payload WHERE e.run = ?1 AND e.node = ?2 AND e.kind IN "
      "(?3, ?4) ORDER BY e.seq",
      -1, &c->ahead, NULL);
  if (rc != SQLITE_OK)
    return drpc_error_set(err, DRPC_EPROTO, "corrupt recording: %s",
                          sqlite3_errstr(rc));
  sqlite3_bind_int64(c->ahead, 1, drpc_trace_run_id(t));
  sqlite3_bind_int(c->ahead, 2, node);
  sqlite3_bind_int(c->ahead, 3, DRPC_EV_OUT_CONNECT);
  sqlite3_bind_int(c->ahead, 4, DRPC_EV_IN_VALUE);
  return 0;
}

/* Reads the node's next connect or value into its list. At the end, or
 * on an error (kept in ahead_rc and ahead_err for step to report), sets
 * ahead_done. */
static void read_ahead(node_replay *c) {
  if (!c->ahead &&
      (c->ahead_rc = ahead_open(c->t, c->node, c, &c->ahead_err))) {
    c->ahead_done = true;
    return;
  }
  int rc = sqlite3_step(c->ahead);
  if (rc == SQLITE_ROW) {
    drpc_event ev = {0};
    ev.kind = (drpc_event_kind)sqlite3_column_int(c->ahead, 0);
    ev.id = (uint64_t)sqlite3_column_int64(c->ahead, 1);
    ev.bytes = sqlite3_column_blob(c->ahead, 2);
    ev.len = (size_t)sqlite3_column_bytes(c->ahead, 2);
    if ((rc = collect_one(c, &ev)) == 0)
      return;
    c->ahead_rc = drpc_error_set(&c->ahead_err, rc,
                                 "out of memory reading the recording");
  } else if (rc != SQLITE_DONE) {
    c->ahead_rc = drpc_error_set(&c->ahead_err, DRPC_EPROTO,
                                 "corrupt recording: %s", sqlite3_errstr(rc));
  }
  c->ahead_done = true;
}

/* Makes a failure to read ahead the replay's error: what the core did
 * without the connect or value is moot. */
static int ahead_failed(node_replay *c, drpc_error *err) {
  drpc_error_clear(err);
  drpc_error_move(err, &c->ahead_err);
  return c->ahead_rc;
}

static void remember(node_replay *c, const drpc_trace_event *e) {
  drpc_trace_replay_result *res = c->res;
  if (c->context <= 0)
    return;
  size_t cap = (size_t)c->context;
  size_t at = (c->ring_head + res->ncontext) % cap;
  if (res->ncontext == cap)
    c->ring_head = (c->ring_head + 1) % cap;
  else
    res->ncontext++;
  kept_event *k = &c->ring[at];
  k->ev = e->ev;
  k->ev.bytes = NULL;
  k->ev.name = NULL;
  k->named = e->ev.name != NULL;
  if (k->named) {
    size_t n = strnlen(e->ev.name, sizeof k->name - 1);
    memcpy(k->name, e->ev.name, n);
    k->name[n] = '\0';
  }
  res->context_seq[at] = e->seq;
}

static int step(void *arg, const drpc_trace_event *e) {
  node_replay *c = arg;
  drpc_trace_replay_result *res = c->res;
  const drpc_event *ev = &e->ev;
  if (res->events++ == 0 || ev->time_ns < res->first_ns)
    res->first_ns = ev->time_ns;
  if (ev->time_ns > res->last_ns)
    res->last_ns = ev->time_ns;
  int rc = 0;
  if (ev->kind == DRPC_EV_IN_START) {
    /* A (re)started core: a crashed incarnation ends where its events end;
     * what it had pending died with it. */
    drpc_replay_free(c->r);
    c->r = NULL;
    rc = drpc_replay_new(&c->r, ev, &c->err);
    if (rc == 0) {
      drpc_replay_set_connect_ids(c->r, next_connect, c);
      drpc_replay_set_values(c->r, next_value, c);
    }
    res->incarnations++;
  } else if (!c->r) {
    if (drpc_event_is_input(ev->kind) || drpc_event_is_output(ev->kind))
      rc =
          drpc_error_set(&c->err, DRPC_EPROTO,
                         "node %d has events before its start event", ev->node);
  } else {
    res->inputs += drpc_event_is_input(ev->kind);
    res->outputs += drpc_event_is_output(ev->kind);
    rc = drpc_replay_feed(c->r, ev, &c->err);
  }
  if (c->ahead_err.code)
    rc = ahead_failed(c, &c->err);
  if (rc) {
    res->bad_seq = e->seq;
    return rc;
  }
  remember(c, e);
  return 0;
}

/* Describes the kept events and puts the context in order, oldest first. */
static void unroll(node_replay *c) {
  drpc_trace_replay_result *res = c->res;
  size_t n = res->ncontext, h = c->ring_head;
  for (size_t i = 0; i < n; i++) {
    kept_event *k = &c->ring[i];
    k->ev.name = k->named ? k->name : NULL;
    drpc_event_describe(&k->ev, res->context[i], sizeof res->context[i]);
  }
  if (!h)
    return;
  drpc_trace_replay_result *tmp = malloc(sizeof *tmp);
  if (!tmp)
    return; /* the context stays rotated */
  for (size_t i = 0; i < n; i++) {
    tmp->context_seq[i] = res->context_seq[(h + i) % n];
    memcpy(tmp->context[i], res->context[(h + i) % n], sizeof tmp->context[i]);
  }
  memcpy(res->context_seq, tmp->context_seq, n * sizeof *tmp->context_seq);
  memcpy(res->context, tmp->context, n * sizeof tmp->context[0]);
  free(tmp);
}

/* Frees what a node's replay holds. */
static void clear(node_replay *c) {
  drpc_replay_free(c->r);
  sqlite3_finalize(c->ahead);
  drpc_error_clear(&c->ahead_err);
  drpc_error_clear(&c->err);
  free(c->connects);
  for (size_t i = 0; i < c->nvalues; i++)
    free(c->values[i].p);
  free(c->values);
}

int drpc_trace_replay_node(drpc_trace *t, int16_t node, int context,
                           drpc_trace_replay_result *res, drpc_error *err) {
  memset(res, 0, sizeof *res);
  res->bad_seq = -1;
  node_replay c = {0};
  c.res = res;
  c.context = context < 0                           ? 0
              : context > DRPC_TRACE_REPLAY_CONTEXT ? DRPC_TRACE_REPLAY_CONTEXT
                                                    : context;
  c.t = t;
  c.node = node;
  int rc = drpc_trace_foreach(t, node, step, &c, err);
  if (rc && c.err.code) {
    drpc_error_clear(err);
    drpc_error_move(err, &c.err);
  }
  if (rc == 0 && c.r)
    rc = drpc_replay_finish(c.r, err);
  if (c.ahead_err.code)
    rc = ahead_failed(&c, err);
  unroll(&c);
  clear(&c);
  return rc;
}

/* The node of nodes[0..n) (ascending) with this id, or NULL. */
static node_replay *find_node(node_replay *c, const int16_t *nodes, size_t n,
                              int16_t id) {
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (nodes[mid] < id)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < n && nodes[lo] == id ? &c[lo] : NULL;
}

int drpc_trace_replay_nodes(drpc_trace *t, const int16_t *nodes, size_t n,
                            drpc_trace_replay_result *res, drpc_error *err) {
  if (!t || (n && (!nodes || !res)))
    return drpc_error_set(err, DRPC_EINVAL, "an argument is NULL");
  if (n > DRPC_TRACE_REPLAY_NODES_MAX)
    return drpc_error_set(err, DRPC_EINVAL,
                          "%zu nodes (one pass replays at most %d)", n,
                          DRPC_TRACE_REPLAY_NODES_MAX);
  for (size_t i = 1; i < n; i++)
    if (nodes[i] <= nodes[i - 1])
      return drpc_error_set(err, DRPC_EINVAL, "node ids are not ascending");
  node_replay *c = calloc(n ? n : 1, sizeof *c);
  if (!c)
    return 1;
  for (size_t i = 0; i < n; i++) {
    memset(&res[i], 0, sizeof res[i]);
    res[i].bad_seq = -1;
    c[i].res = &res[i];
    c[i].t = t;
    c[i].node = nodes[i];
    c[i].last_seq = -1;
  }
  /* Whatever stops the pass is reported by the node-by-node replay, so
   * its errors are dropped here. */
  drpc_error scratch = DRPC_ERROR_INIT;
  drpc_trace_cursor *cur = NULL;
  int undecided = drpc_trace_cursor_open_recorded(t, &cur, &scratch) != 0;
  drpc_trace_event e;
  int rc;
  while (!undecided && (rc = drpc_trace_cursor_next(cur, &e, &scratch)) != 0) {
    node_replay *k = rc == 1 ? find_node(c, nodes, n, e.ev.node) : NULL;
    /* Each node's events in seq order, as drpc_trace_replay_node feeds
     * them (ties in id order, as there), or the pass gives up. */
    undecided = rc < 0 || (k && (e.seq < k->last_seq || step(k, &e) != 0));
    if (k)
      k->last_seq = e.seq;
  }
  drpc_trace_cursor_close(cur);
  for (size_t i = 0; i < n; i++) {
    if (!undecided && c[i].r && drpc_replay_finish(c[i].r, &scratch) != 0)
      undecided = 1;
    undecided |= c[i].ahead_err.code != 0;
    clear(&c[i]);
  }
  drpc_error_clear(&scratch);
  free(c);
  return undecided;
}
