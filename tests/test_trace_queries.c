/* traces/QUERIES.md: every ```sql block of the people's query guide runs
 * against simulated recordings (fanout, ps and rref_chain under swarm
 * faults) made here, and the answers of the named queries match the same
 * numbers computed in C from the events drpc_trace_foreach reads: slowest
 * call, messages per link, RRef lifetimes, the 10 ms before the first
 * failure, calls that never ended, events per worker, server time per
 * function. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "drpc/sim.h"
#include "drpc/trace.h"
#include "scenario.h"
#include "sim_child.h"
#include "test.h"

#ifndef DRPC_SOURCE_DIR
#error "DRPC_SOURCE_DIR must name the source tree (tests/CMakeLists.txt)"
#endif

/* The simulator's epoch (sim/internal.h SIM_BASE_NS): node clocks drift
 * from it. The queries use it when the config names no clock_base_ns. */
#define SIM_EPOCH_NS 1000000000000ll
/* The window of the before-first-failure query. */
#define WINDOW_NS 10000000ll
#define MAX_WORKERS 64

static char dir[64];

/* ---- the guide's queries ---------------------------------------------- */

typedef struct query {
  char name[64];
  char *sql;
} query;

static query queries[64];
static size_t nqueries;

static char *read_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = size >= 0 ? malloc((size_t)size + 1) : NULL;
  if (buf && fread(buf, 1, (size_t)size, f) != (size_t)size) {
    free(buf);
    buf = NULL;
  }
  if (buf)
    buf[size] = 0;
  fclose(f);
  return buf;
}

/* Every ```sql ... ``` block, named by its "-- name: NAME" line. */
static void load_queries(void) {
  char *md = read_file(DRPC_SOURCE_DIR "/traces/QUERIES.md");
  CHECK(md != NULL);
  if (!md)
    return;
  const char *open = "\n```sql\n";
  for (char *p = strstr(md, open); p; p = strstr(p, open)) {
    char *body = p + strlen(open);
    char *end = strstr(body, "\n```");
    CHECK(end != NULL);
    if (!end || nqueries == sizeof queries / sizeof *queries)
      break;
    query *q = &queries[nqueries++];
    q->sql = strndup(body, (size_t)(end - body) + 1);
    const char *tag = strstr(q->sql, "-- name: ");
    CHECK(tag != NULL);
    if (tag)
      sscanf(tag + 9, "%63s", q->name);
    for (size_t i = 0; i + 1 < nqueries; i++)
      if (strcmp(queries[i].name, q->name) == 0) {
        fprintf(stderr, "two queries are named %s\n", q->name);
        CHECK(0);
      }
    p = end + 4;
  }
  free(md);
}

static const query *find_query(const char *name) {
  for (size_t i = 0; i < nqueries; i++)
    if (strcmp(queries[i].name, name) == 0)
      return &queries[i];
  fprintf(stderr, "QUERIES.md has no query named %s\n", name);
  CHECK(0);
  return NULL;
}

static void free_queries(void) {
  for (size_t i = 0; i < nqueries; i++)
    free(queries[i].sql);
  nqueries = 0;
}

/* A query's answer: column names and copies of every value. */
typedef struct result {
  int ncols;
  char **names;
  sqlite3_value **vals; /* nrows * ncols */
  size_t nrows;
} result;

static void result_free(result *r) {
  for (int i = 0; i < r->ncols; i++)
    free(r->names[i]);
  free(r->names);
  for (size_t i = 0; i < r->nrows * (size_t)r->ncols; i++)
    sqlite3_value_free(r->vals[i]);
  free(r->vals);
  memset(r, 0, sizeof *r);
}

/* Runs q: it must prepare, be one statement (nothing but comments after
 * it) and step to the end. Returns 0 when it did. */
static int run_query(sqlite3 *db, const query *q, result *res) {
  memset(res, 0, sizeof *res);
  sqlite3_stmt *st = NULL;
  const char *tail = NULL;
  int rc = sqlite3_prepare_v2(db, q->sql, -1, &st, &tail);
  if (rc != SQLITE_OK || !st) {
    fprintf(stderr, "query %s does not prepare: %s\n", q->name,
            sqlite3_errmsg(db));
    CHECK(0);
    sqlite3_finalize(st);
    return -1;
  }
  sqlite3_stmt *more = NULL;
  CHECK(sqlite3_prepare_v2(db, tail, -1, &more, NULL) == SQLITE_OK);
  if (more)
    fprintf(stderr, "query %s holds more than one statement\n", q->name);
  CHECK(more == NULL);
  sqlite3_finalize(more);
  CHECK(sqlite3_stmt_readonly(st));
  res->ncols = sqlite3_column_count(st);
  res->names = calloc((size_t)res->ncols + 1, sizeof *res->names);
  for (int i = 0; i < res->ncols; i++)
    res->names[i] = strdup(sqlite3_column_name(st, i));
  size_t cap = 0;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (res->nrows == cap) {
      cap = cap ? cap * 2 : 64;
      res->vals = realloc(res->vals, cap * (size_t)res->ncols * sizeof(void *));
    }
    for (int i = 0; i < res->ncols; i++)
      res->vals[res->nrows * (size_t)res->ncols + (size_t)i] =
          sqlite3_value_dup(sqlite3_column_value(st, i));
    res->nrows++;
  }
  if (rc != SQLITE_DONE)
    fprintf(stderr, "query %s fails: %s\n", q->name, sqlite3_errmsg(db));
  CHECK_EQ_INT(rc, SQLITE_DONE);
  sqlite3_finalize(st);
  return rc == SQLITE_DONE ? 0 : -1;
}

static sqlite3_value *val(const result *r, size_t row, const char *col) {
  for (int i = 0; i < r->ncols; i++)
    if (strcmp(r->names[i], col) == 0)
      return r->vals[row * (size_t)r->ncols + (size_t)i];
  fprintf(stderr, "no column %s\n", col);
  CHECK(0);
  return NULL;
}

static int64_t vint(const result *r, size_t row, const char *col) {
  sqlite3_value *v = val(r, row, col);
  return v ? sqlite3_value_int64(v) : 0;
}

static bool vnull(const result *r, size_t row, const char *col) {
  sqlite3_value *v = val(r, row, col);
  return !v || sqlite3_value_type(v) == SQLITE_NULL;
}

static const char *vtext(const result *r, size_t row, const char *col) {
  sqlite3_value *v = val(r, row, col);
  const char *s = v ? (const char *)sqlite3_value_text(v) : NULL;
  return s ? s : "";
}

static int64_t sum_col(const result *r, const char *col) {
  int64_t s = 0;
  for (size_t i = 0; i < r->nrows; i++)
    s += vint(r, i, col);
  return s;
}

/* "w3" -> 3, "node -1" -> -1 (the queries' node labels). */
static int node_of(const char *label) {
  if (label[0] == 'w')
    return atoi(label + 1);
  if (strncmp(label, "node ", 5) == 0)
    return atoi(label + 5);
  return -1000;
}

/* ---- recordings and the C side ----------------------------------------- */

typedef struct rev {
  int kind, node, peer;
  int64_t t, seq, row, size;
  uint64_t xid, aux;
  char name[96];
  uint8_t ids[32]; /* in_command remote/release: the first 32 bytes */
  bool has_ids;
  int64_t g; /* global time (clock model) */
} rev;

typedef struct recording {
  char scn[32];
  uint64_t seed;
  char path[128];
  int workers;
  int64_t off[MAX_WORKERS];
  int32_t drift[MAX_WORKERS];
  uint64_t calls, faults;
  rev *ev;
  size_t n, cap;
} recording;

/* Records one swarm run of scn with faults, from the first seed >= seed
 * whose schedule holds a fault. */
static int record(recording *rc_, const char *scn, uint64_t seed) {
  drpc_error err = DRPC_ERROR_INIT;
  const drpc_scenario *sc = drpc_scenario_find(scn);
  drpc_sim_config c;
  int rc = -1;
  for (int tries = 0; tries < 32; tries++, seed++) {
    rc = drpc_sim_config_draw(&c, scn, sc ? sc->default_workers : 4, 0, seed,
                              true, true, &err);
    if (rc || c.nfaults > 0)
      break;
    drpc_sim_config_clear(&c);
  }
  snprintf(rc_->scn, sizeof rc_->scn, "%s", scn);
  rc_->seed = seed;
  snprintf(rc_->path, sizeof rc_->path, "%s/%s.db", dir, scn);
  drpc_recorder *rec = NULL;
  char *json = NULL;
  if (rc == 0) {
    rc_->workers = c.workers;
    CHECK(c.workers <= MAX_WORKERS);
    for (int i = 0; i < c.workers && i < MAX_WORKERS; i++) {
      rc_->off[i] = c.clock_offset_ns[i];
      rc_->drift[i] = c.drift_ppm[i];
    }
    json = drpc_sim_config_to_json(&c);
    drpc_run_info ri = {0};
    ri.backend = "sim";
    ri.scenario = scn;
    ri.seed = seed;
    ri.has_seed = true;
    ri.config_json = json;
    rc = drpc_recorder_open(&rec, rc_->path, &ri, false, true, &err);
  }
  if (rc == 0) {
    for (int i = 0; i < c.workers; i++) {
      char name[16];
      snprintf(name, sizeof name, "w%d", i);
      drpc_recorder_node(rec, (int16_t)i, name);
    }
    c.record = drpc_recorder_sink;
    c.record_ctx = rec;
    drpc_sim_result r;
    rc = drpc_sim_run(&c, &r, &err);
    if (rc == 0) {
      if (!r.ok)
        fprintf(stderr, "%s seed %llu: %s\n", scn, (unsigned long long)seed,
                r.what);
      rc_->calls = r.calls;
      rc_->faults = r.faults_applied;
      drpc_sim_result_clear(&r);
    }
    int crc = drpc_recorder_close(rec, &err);
    rc = rc ? rc : crc;
  }
  if (rc)
    fprintf(stderr, "record %s seed %llu: %s\n", scn, (unsigned long long)seed,
            drpc_error_message(&err));
  free(json);
  drpc_error_clear(&err);
  drpc_sim_config_clear(&c);
  return rc;
}

static int collect(void *arg, const drpc_trace_event *e) {
  recording *r = arg;
  if (r->n == r->cap) {
    r->cap = r->cap ? r->cap * 2 : 1024;
    r->ev = realloc(r->ev, r->cap * sizeof *r->ev);
  }
  rev *v = &r->ev[r->n++];
  memset(v, 0, sizeof *v);
  v->kind = (int)e->ev.kind;
  v->node = e->ev.node;
  v->peer = e->ev.peer;
  v->t = (int64_t)e->ev.time_ns;
  v->seq = e->seq;
  v->row = e->row;
  v->size = (int64_t)e->ev.len;
  v->xid = e->ev.id;
  v->aux = e->ev.aux;
  if (e->ev.name) {
    CHECK(strlen(e->ev.name) < sizeof v->name);
    snprintf(v->name, sizeof v->name, "%s", e->ev.name);
  }
  if (v->kind == DRPC_EV_IN_COMMAND && (v->aux == 3 || v->aux == 4) &&
      e->ev.len >= 32) {
    memcpy(v->ids, e->ev.bytes, 32);
    v->has_ids = true;
  }
  /* The simulator's clock model, as query 4 applies it (and as SQLite
   * rounds: half away from zero). */
  v->g = v->t;
  if (v->node >= 0 && v->node < r->workers) {
    double x = (double)(v->t - SIM_EPOCH_NS - r->off[v->node]) * 1000000.0 /
               (double)(1000000 + r->drift[v->node]);
    v->g = SIM_EPOCH_NS + (int64_t)(x + (x < 0 ? -0.5 : 0.5));
  }
  return 0;
}

static int load_events(recording *r) {
  drpc_trace *t = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_trace_open(&t, r->path, &err);
  if (rc == 0)
    rc = drpc_trace_foreach(t, -1, collect, r, &err);
  if (rc)
    fprintf(stderr, "%s: %s\n", r->path, drpc_error_message(&err));
  drpc_trace_close(t);
  drpc_error_clear(&err);
  return rc;
}

static size_t count_kind(const recording *r, int kind) {
  size_t n = 0;
  for (size_t i = 0; i < r->n; i++)
    n += r->ev[i].kind == kind;
  return n;
}

static bool starts_with(const char *s, const char *prefix) {
  return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* The rpc_end of a call (same node and request id), or NULL. */
static const rev *end_of(const recording *r, const rev *b) {
  for (size_t i = 0; i < r->n; i++)
    if (r->ev[i].kind == DRPC_EV_RPC_END && r->ev[i].node == b->node &&
        r->ev[i].xid == b->xid)
      return &r->ev[i];
  return NULL;
}

/* ---- checks, one per query --------------------------------------------- */

static void check_slowest(const recording *r, const result *res) {
  size_t pairs = 0;
  int64_t max = -1;
  const rev *slow = NULL;
  for (size_t i = 0; i < r->n; i++) {
    const rev *b = &r->ev[i];
    if (b->kind != DRPC_EV_RPC_BEGIN)
      continue;
    for (size_t j = 0; j < r->n; j++) {
      const rev *e = &r->ev[j];
      if (e->kind != DRPC_EV_RPC_END || e->node != b->node || e->xid != b->xid)
        continue;
      pairs++;
      if (e->t - b->t > max) {
        max = e->t - b->t;
        slow = b;
      }
    }
  }
  CHECK(pairs > 0);
  CHECK_EQ_INT(res->nrows, pairs < 20 ? pairs : 20);
  if (res->nrows == 0 || !slow)
    return;
  CHECK_EQ_INT(vint(res, 0, "dur_ns"), max);
  CHECK(fabs(sqlite3_value_double(val(res, 0, "dur_ms")) - (double)max / 1e6) <
        0.001);
  for (size_t i = 1; i < res->nrows; i++)
    CHECK(vint(res, i, "dur_ns") <= vint(res, i - 1, "dur_ns"));
  /* Which call it was, unless another took exactly as long. */
  if (res->nrows == 1 || vint(res, 1, "dur_ns") < max) {
    CHECK_EQ_INT(node_of(vtext(res, 0, "caller")), slow->node);
    CHECK_EQ_INT(node_of(vtext(res, 0, "callee")), slow->peer);
    CHECK_EQ_INT(vint(res, 0, "request"), slow->xid);
    CHECK_STR_EQ(vtext(res, 0, "call"), slow->name);
  }
}

static void check_links(const recording *r, const result *res) {
  size_t sends = 0, groups = 0, received = 0;
  int64_t bytes = 0;
  for (size_t i = 0; i < r->n; i++) {
    const rev *e = &r->ev[i];
    if (e->kind != DRPC_EV_OUT_SEND)
      continue;
    sends++;
    bytes += e->size;
    bool first = true;
    for (size_t j = 0; j < i && first; j++)
      first = !(r->ev[j].kind == DRPC_EV_OUT_SEND && r->ev[j].node == e->node &&
                r->ev[j].peer == e->peer && r->ev[j].aux == e->aux);
    groups += first;
  }
  for (size_t i = 0; i < r->n; i++) {
    const rev *f = &r->ev[i];
    if (f->kind != DRPC_EV_IN_FRAME || f->peer < 0)
      continue;
    bool sent = false;
    for (size_t j = 0; j < r->n && !sent; j++)
      sent = r->ev[j].kind == DRPC_EV_OUT_SEND && r->ev[j].node == f->peer &&
             r->ev[j].peer == f->node && r->ev[j].aux == f->aux;
    received += sent;
  }
  CHECK(sends > 0);
  CHECK_EQ_INT(res->nrows, groups);
  CHECK_EQ_INT(sum_col(res, "sent"), sends);
  CHECK_EQ_INT(sum_col(res, "bytes"), bytes);
  CHECK_EQ_INT(sum_col(res, "received"), received);
  /* A row of CALL frames from w0 with the right count, by name. */
  for (size_t i = 0; i < res->nrows; i++) {
    if (strcmp(vtext(res, i, "message"), "CALL") != 0)
      continue;
    int src = node_of(vtext(res, i, "from")),
        dst = node_of(vtext(res, i, "to"));
    int64_t n = 0;
    for (size_t j = 0; j < r->n; j++)
      n += r->ev[j].kind == DRPC_EV_OUT_SEND && r->ev[j].node == src &&
           r->ev[j].peer == dst && r->ev[j].aux == 2;
    CHECK_EQ_INT(vint(res, i, "sent"), n);
  }
}

static void check_rref_lifetimes(const recording *r, const result *res) {
  size_t owners = 0, deleted = 0, forks = 0, users_deleted = 0;
  int64_t lived = 0;
  for (size_t i = 0; i < r->n; i++) {
    const rev *o = &r->ev[i];
    if (o->kind != DRPC_EV_RREF || strcmp(o->name, "owner_created") != 0)
      continue;
    owners++;
    int64_t del = -1;
    for (size_t j = 0; j < r->n; j++) {
      const rev *e = &r->ev[j];
      if (e->kind != DRPC_EV_RREF || e->xid != o->xid)
        continue;
      if (e->node == o->node && strcmp(e->name, "owner_deleted") == 0 &&
          e->t >= o->t && (del < 0 || e->t < del))
        del = e->t;
      forks += e->node == o->node && strcmp(e->name, "fork_added") == 0;
      users_deleted += strcmp(e->name, "user_deleted") == 0;
    }
    if (del >= 0) {
      deleted++;
      lived += del - o->t;
    }
  }
  CHECK_EQ_INT(res->nrows, owners);
  size_t nonnull = 0;
  for (size_t i = 0; i < res->nrows; i++)
    nonnull += !vnull(res, i, "lived_ns");
  CHECK_EQ_INT(nonnull, deleted);
  CHECK_EQ_INT(sum_col(res, "lived_ns"), lived);
  CHECK_EQ_INT(sum_col(res, "forks"), forks);
  CHECK_EQ_INT(sum_col(res, "users_deleted"), users_deleted);
  /* Never-deleted owners come first. */
  for (size_t i = 1; i < res->nrows; i++)
    CHECK(!(vnull(res, i, "lived_ns") && !vnull(res, i - 1, "lived_ns")));
  printf("  %s: %zu RRef owners, %zu deleted\n", r->scn, owners, deleted);
}

static void check_remote_handles(const recording *r, const result *res) {
  size_t remotes = 0, released = 0;
  int64_t held = 0;
  for (size_t i = 0; i < r->n; i++) {
    const rev *c = &r->ev[i];
    if (c->kind != DRPC_EV_IN_COMMAND || c->aux != 4 || !c->has_ids)
      continue;
    remotes++;
    int64_t rel = -1;
    for (size_t j = 0; j < r->n; j++) {
      const rev *e = &r->ev[j];
      if (e->kind == DRPC_EV_IN_COMMAND && e->aux == 3 && e->has_ids &&
          e->node == c->node && e->seq > c->seq &&
          memcmp(e->ids, c->ids, 32) == 0 && (rel < 0 || e->t < rel))
        rel = e->t;
    }
    if (rel >= 0) {
      released++;
      held += rel - c->t;
    }
  }
  CHECK_EQ_INT(res->nrows, remotes);
  size_t nonnull = 0;
  for (size_t i = 0; i < res->nrows; i++)
    nonnull += !vnull(res, i, "held_ns");
  CHECK_EQ_INT(nonnull, released);
  CHECK_EQ_INT(sum_col(res, "held_ns"), held);
  printf("  %s: %zu remote() handles, %zu released\n", r->scn, remotes,
         released);
}

static void check_remote_latency(const recording *r, const result *res) {
  size_t calls = 0, ended = 0, failed = 0;
  for (size_t i = 0; i < r->n; i++) {
    const rev *b = &r->ev[i];
    if (b->kind != DRPC_EV_RPC_BEGIN ||
        !(starts_with(b->name, "rpc_remote#") ||
          starts_with(b->name, "RREF_") || strcmp(b->name, "rref_fetch") == 0))
      continue;
    calls++;
    const rev *e = end_of(r, b);
    ended += e != NULL;
    failed += e && e->aux != 0;
  }
  CHECK_EQ_INT(sum_col(res, "calls"), calls);
  CHECK_EQ_INT(sum_col(res, "ended"), ended);
  CHECK_EQ_INT(sum_col(res, "failed"), failed);
}

static bool is_failure(const rev *e) {
  if (e->kind == DRPC_EV_RPC_END)
    return e->aux != 0;
  if (e->kind == DRPC_EV_FAULT) {
    size_t n = strlen(e->name);
    return n > 0 && !(n >= 4 && strcmp(e->name + n - 4, " end") == 0);
  }
  return false;
}

static void check_before_failure(const recording *r, const result *res) {
  /* The first failed call, else the first fault, by (global time, row). */
  const rev *f = NULL;
  for (size_t i = 0; i < r->n; i++) {
    const rev *e = &r->ev[i];
    if (!is_failure(e))
      continue;
    bool call = e->kind == DRPC_EV_RPC_END;
    bool fcall = f && f->kind == DRPC_EV_RPC_END;
    if (!f || (call && !fcall) ||
        (call == fcall && (e->g < f->g || (e->g == f->g && e->row < f->row))))
      f = e;
  }
  CHECK(f != NULL); /* every run here has faults */
  if (!f)
    return;
  size_t in = 0;
  for (size_t i = 0; i < r->n; i++)
    in += r->ev[i].g >= f->g - WINDOW_NS && r->ev[i].g <= f->g;
  CHECK_EQ_INT(res->nrows, in);
  size_t marked = 0;
  for (size_t i = 0; i < res->nrows; i++) {
    if (strcmp(vtext(res, i, "note"), "") == 0)
      continue;
    marked++;
    CHECK_STR_EQ(vtext(res, i, "kind"), drpc_trace_kind_name(f->kind));
    CHECK_EQ_INT(node_of(vtext(res, i, "node")), f->node);
    CHECK_EQ_INT(vint(res, i, "xid"), f->xid);
    CHECK_EQ_INT(vint(res, i, "aux"), f->aux);
    CHECK(sqlite3_value_double(val(res, i, "ms")) == 0.0);
  }
  CHECK_EQ_INT(marked, 1);
  for (size_t i = 0; i < res->nrows; i++) {
    double ms = sqlite3_value_double(val(res, i, "ms"));
    CHECK(ms >= -10.0 && ms <= 0.0);
  }
  printf("  %s: first failure on node %d: %s %s (aux %lld), %zu events in "
         "the 10 ms before\n",
         r->scn, f->node, drpc_trace_kind_name(f->kind), f->name,
         (long long)f->aux, in);
}

static void check_never_ended(const recording *r, const result *res) {
  size_t open = 0;
  for (size_t i = 0; i < r->n; i++)
    open += r->ev[i].kind == DRPC_EV_RPC_BEGIN && !end_of(r, &r->ev[i]);
  CHECK_EQ_INT(res->nrows, open);
  CHECK_EQ_INT(count_kind(r, DRPC_EV_RPC_BEGIN) - res->nrows,
               count_kind(r, DRPC_EV_RPC_END));
  for (size_t i = 0; i < res->nrows; i++) {
    int node = node_of(vtext(res, i, "caller"));
    int64_t xid = vint(res, i, "request");
    bool found = false;
    for (size_t j = 0; j < r->n && !found; j++)
      found = r->ev[j].kind == DRPC_EV_RPC_BEGIN && r->ev[j].node == node &&
              (int64_t)r->ev[j].xid == xid && !end_of(r, &r->ev[j]);
    CHECK(found);
  }
  printf("  %s: %zu calls never ended\n", r->scn, open);
}

static void check_per_worker(const recording *r, const result *res) {
  CHECK_EQ_INT(sum_col(res, "events"), r->n);
  int64_t begins = 0;
  size_t groups = 0;
  for (size_t i = 0; i < r->n; i++) {
    bool first = true;
    for (size_t j = 0; j < i && first; j++)
      first =
          !(r->ev[j].node == r->ev[i].node && r->ev[j].kind == r->ev[i].kind);
    groups += first;
  }
  CHECK_EQ_INT(res->nrows, groups);
  for (size_t i = 0; i < res->nrows; i++) {
    int node = node_of(vtext(res, i, "node"));
    const char *kind = vtext(res, i, "kind");
    int64_t n = 0, bytes = 0;
    for (size_t j = 0; j < r->n; j++)
      if (r->ev[j].node == node &&
          strcmp(drpc_trace_kind_name(r->ev[j].kind), kind) == 0) {
        n++;
        bytes += r->ev[j].size;
      }
    CHECK_EQ_INT(vint(res, i, "events"), n);
    CHECK_EQ_INT(vint(res, i, "payload_bytes"), bytes);
    if (strcmp(kind, "rpc_begin") == 0)
      begins += n;
  }
  /* Every call the simulator counted began a span. */
  CHECK_EQ_INT(begins, r->calls);
  CHECK_EQ_INT(count_kind(r, DRPC_EV_RPC_BEGIN), r->calls);
}

static void check_server_time(const recording *r, const result *res) {
  size_t started = 0, finished = 0;
  int64_t total = 0;
  for (size_t i = 0; i < r->n; i++) {
    const rev *x = &r->ev[i];
    if (x->kind != DRPC_EV_OUT_EXECUTE)
      continue;
    started++;
    for (size_t j = 0; j < r->n; j++) {
      const rev *d = &r->ev[j];
      if (d->kind == DRPC_EV_IN_JOB_DONE && d->node == x->node &&
          d->peer == x->peer && d->xid == x->xid) {
        finished++;
        total += d->t - x->t;
      }
    }
  }
  CHECK(started > 0);
  CHECK_EQ_INT(sum_col(res, "started"), started);
  CHECK_EQ_INT(sum_col(res, "finished"), finished);
  CHECK_EQ_INT(sum_col(res, "total_ns"), total);
  for (size_t i = 1; i < res->nrows; i++)
    CHECK(vint(res, i, "total_ns") <= vint(res, i - 1, "total_ns"));
}

typedef struct checker {
  const char *name;
  void (*check)(const recording *r, const result *res);
} checker;

static const checker checkers[] = {
    {"slowest-rpcs", check_slowest},
    {"messages-per-link", check_links},
    {"rref-lifetimes", check_rref_lifetimes},
    {"remote-handles", check_remote_handles},
    {"remote-latency", check_remote_latency},
    {"before-first-failure", check_before_failure},
    {"calls-never-ended", check_never_ended},
    {"events-per-worker", check_per_worker},
    {"server-time-per-function", check_server_time},
};

/* ---- tests -------------------------------------------------------------- */

static void test_guide(void) {
  load_queries();
  CHECK(nqueries >= sizeof checkers / sizeof *checkers);
  for (size_t i = 0; i < sizeof checkers / sizeof *checkers; i++)
    find_query(checkers[i].name);
  for (size_t i = 0; i < nqueries; i++)
    CHECK(queries[i].name[0] != 0);
}

/* Every query on one recording; the named ones checked against C. */
static void run_all(const char *scn, uint64_t seed) {
  recording r = {0};
  CHECK(record(&r, scn, seed) == 0);
  CHECK(r.faults > 0);
  CHECK(load_events(&r) == 0);
  CHECK(r.n > 0);
  drpc_trace *t = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  CHECK(drpc_trace_open(&t, r.path, &err) == 0);
  sqlite3 *db = t ? drpc_trace_db(t) : NULL;
  printf("  %s seed %llu: %zu events, %llu calls, %llu faults\n", scn,
         (unsigned long long)r.seed, r.n, (unsigned long long)r.calls,
         (unsigned long long)r.faults);
  for (size_t i = 0; db && i < nqueries; i++) {
    result res;
    if (run_query(db, &queries[i], &res) != 0) {
      result_free(&res);
      continue;
    }
    bool checked = false;
    for (size_t k = 0; k < sizeof checkers / sizeof *checkers; k++)
      if (strcmp(checkers[k].name, queries[i].name) == 0) {
        int before = test_failed_;
        checkers[k].check(&r, &res);
        checked = true;
        if (test_failed_ != before)
          fprintf(stderr, "  (query %s on %s)\n", queries[i].name, r.path);
      }
    if (!checked)
      printf("  %s: query %s ran (%zu rows), not checked\n", scn,
             queries[i].name, res.nrows);
    result_free(&res);
  }
  drpc_trace_close(t);
  drpc_error_clear(&err);
  /* ps and rref_chain make RRefs with remote(). */
  if (strcmp(scn, "fanout") != 0) {
    size_t remotes = 0;
    for (size_t i = 0; i < r.n; i++)
      remotes += r.ev[i].kind == DRPC_EV_IN_COMMAND && r.ev[i].aux == 4;
    CHECK(remotes > 0);
  }
  free(r.ev);
}

static void test_fanout(void) {
  run_all("fanout", 3);
}
static void test_ps(void) {
  run_all("ps", 2);
}
/* Seed 2 crashes callers with calls open; seed 3 deletes most owners. */
static void test_rref_chain(void) {
  run_all("rref_chain", 2);
  run_all("rref_chain", 3);
}

static void body(void) {
  RUN(test_guide);
  RUN(test_fanout);
  RUN(test_ps);
  RUN(test_rref_chain);
  free_queries();
}

int main(void) {
  snprintf(dir, sizeof dir, "/tmp/drpc_test_queries_XXXXXX");
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  sim_in_child(body);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", dir);
  return test_finish();
}
