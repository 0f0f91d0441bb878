/* Unit tests for traces/: recording (inline and threaded), reading back,
 * backpressure, merging and rejecting bad files. */
#include "drpc/trace.h"

#include "test.h"

#include <dirent.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- helpers ----------------------------------------------------------- */

static char tmpdir[] = "/tmp/drpc_test_trace_XXXXXX";
static uint64_t seed = 20240601;

/* Returns a path in the test directory (one of 8 rotating buffers). */
static const char *tpath(const char *name) {
  static char bufs[8][512];
  static int next;
  char *b = bufs[next++ % 8];
  snprintf(b, sizeof bufs[0], "%s/%s", tmpdir, name);
  return b;
}

static void cleanup_dir(void) {
  DIR *d = opendir(tmpdir);
  if (!d)
    return;
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
      continue;
    char p[600];
    snprintf(p, sizeof p, "%s/%s", tmpdir, de->d_name);
    unlink(p);
  }
  closedir(d);
  rmdir(tmpdir);
}

static uint64_t rng_state;
static uint64_t rnd(void) {
  /* xorshift64*: all randomness derives from the printed seed. */
  uint64_t x = rng_state;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  rng_state = x;
  return x * 0x2545f4914f6cdd1dull;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* An event with owned bytes and name, as the test expects to read it. */
typedef struct xev {
  drpc_event ev;
  unsigned char *bytes;
  char *name;
} xev;

static const drpc_event_kind ALL_KINDS[] = {
    DRPC_EV_IN_FRAME,    DRPC_EV_IN_CONN_OPEN, DRPC_EV_IN_CONN_CLOSED,
    DRPC_EV_IN_TIMER,    DRPC_EV_IN_COMMAND,   DRPC_EV_IN_JOB_DONE,
    DRPC_EV_IN_START,    DRPC_EV_IN_VALUE,     DRPC_EV_OUT_SEND,
    DRPC_EV_OUT_CONNECT, DRPC_EV_OUT_CLOSE,    DRPC_EV_OUT_FUTURE,
    DRPC_EV_OUT_EXECUTE, DRPC_EV_OUT_TIMER,    DRPC_EV_RPC_BEGIN,
    DRPC_EV_RPC_END,     DRPC_EV_RREF,         DRPC_EV_LOG,
    DRPC_EV_FAULT,       DRPC_EV_PROFILE};
#define NKINDS (sizeof ALL_KINDS / sizeof ALL_KINDS[0])

static const char *const NAMES[] = {"echo", "add", "drop", "fork", "timeout"};
/* Payloads many events share: each must be stored once. */
static const char *const SHARED[] = {"shared-a", "shared-b-longer-than-8", "x",
                                     "0123456789abcdef0123"};
#define NSHARED 4

/* Draws n events over nodes [node0, node0 + nnodes). Times rise with
 * ties so the (t_ns, node, seq) order matters; node i gets time offsets
 * shifted by i so two generators interleave. */
static xev *gen_events(size_t n, int node0, int nnodes, uint64_t t0) {
  xev *v = calloc(n, sizeof *v);
  uint64_t t = t0;
  for (size_t i = 0; i < n; i++) {
    drpc_event *e = &v[i].ev;
    e->kind = ALL_KINDS[rnd() % NKINDS];
    e->node = (int16_t)(node0 + (int)(rnd() % (uint64_t)nnodes));
    e->peer = (int16_t)((int)(rnd() % 5) - 1);
    t += rnd() % 3; /* 0: a tie */
    e->time_ns = t;
    e->id = rnd(); /* half have the top bit set */
    e->aux = i;
    uint64_t p = rnd() % 10;
    if (p < 3) {
      const char *s = SHARED[rnd() % NSHARED];
      e->len = strlen(s);
      v[i].bytes = malloc(e->len);
      memcpy(v[i].bytes, s, e->len);
    } else if (p < 7) {
      e->len = 1 + rnd() % 300;
      v[i].bytes = malloc(e->len);
      for (size_t j = 0; j < e->len; j++)
        v[i].bytes[j] = (unsigned char)rnd();
      memcpy(v[i].bytes, &i, e->len < sizeof i ? e->len : sizeof i);
      if (e->len >= sizeof i + sizeof seed)
        memcpy(v[i].bytes + sizeof i, &t0, sizeof t0); /* unique per file */
    }
    e->bytes = v[i].bytes;
    if (rnd() % 2)
      v[i].name = strdup(NAMES[rnd() % 5]);
    e->name = v[i].name;
  }
  return v;
}

static void free_events(xev *v, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(v[i].bytes);
    free(v[i].name);
  }
  free(v);
}

/* Distinct payloads among v (the count the file must hold). */
static size_t distinct_payloads(const xev *a, size_t na, const xev *b,
                                size_t nb) {
  size_t total = na + nb, d = 0;
  for (size_t i = 0; i < total; i++) {
    const drpc_event *e = i < na ? &a[i].ev : &b[i - na].ev;
    if (e->len == 0)
      continue;
    bool seen = false;
    for (size_t j = 0; j < i && !seen; j++) {
      const drpc_event *f = j < na ? &a[j].ev : &b[j - na].ev;
      seen = f->len == e->len && memcmp(f->bytes, e->bytes, e->len) == 0;
    }
    d += !seen;
  }
  return d;
}

static long long count_rows(const char *path, const char *sql) {
  sqlite3 *db;
  long long n = -1;
  if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) == SQLITE_OK &&
        sqlite3_step(s) == SQLITE_ROW)
      n = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
  }
  sqlite3_close(db);
  return n;
}

/* Records v into path; returns the stats taken after a flush. */
static drpc_recorder_stats record_all(const char *path, const xev *v, size_t n,
                                      bool threaded, const char *backend) {
  drpc_recorder_stats st = {0};
  drpc_error err = DRPC_ERROR_INIT;
  drpc_recorder *r;
  drpc_run_info info = {.backend = backend,
                        .scenario = "echo",
                        .seed = 0xfedcba9876543210ull,
                        .has_seed = true,
                        .commit = "abc123",
                        .config_json = "{\"workers\": 3}"};
  int rc = drpc_recorder_open(&r, path, &info, threaded, true, &err);
  CHECK_EQ_INT(rc, 0);
  if (rc) {
    fprintf(stderr, "%s\n", drpc_error_message(&err));
    drpc_error_clear(&err);
    return st;
  }
  for (size_t i = 0; i < n; i++) {
    if (i == n / 2) /* naming after events keeps the automatic row */
      drpc_recorder_node(r, v[0].ev.node, "first");
    drpc_recorder_sink(r, &v[i].ev);
  }
  CHECK_EQ_INT(drpc_recorder_flush(r, &err), 0);
  drpc_recorder_stats_get(r, &st);
  CHECK_EQ_INT(drpc_recorder_close(r, &err), 0);
  drpc_error_clear(&err);
  return st;
}

static void write_file(const char *path, const void *data, size_t n);
static int seq_hash_cb(void *arg, const drpc_trace_event *e);
static void copy_file(const char *src, const char *dst, size_t limit);
static long file_size(const char *path);

/* ---- reading back and comparing -------------------------------------- */

typedef struct cmp_state {
  const xev *v;
  size_t n;
  int node;
  size_t next; /* index into v of the next expected event of node */
  int64_t seq;
  uint64_t hash;
  bool bad;
  /* for node < 0 */
  size_t count;
  drpc_trace_event prev;
  bool ordered;
} cmp_state;

static bool same_event(const drpc_event *a, const drpc_event *b) {
  return a->kind == b->kind && a->node == b->node &&
         (a->peer < 0 ? b->peer == -1 : a->peer == b->peer) &&
         a->time_ns == b->time_ns && a->id == b->id && a->aux == b->aux &&
         a->len == b->len &&
         (a->len == 0 || memcmp(a->bytes, b->bytes, a->len) == 0) &&
         ((!a->name && !b->name) ||
          (a->name && b->name && strcmp(a->name, b->name) == 0));
}

static int cmp_node_cb(void *arg, const drpc_trace_event *e) {
  cmp_state *c = arg;
  while (c->next < c->n && c->v[c->next].ev.node != c->node)
    c->next++;
  if (c->next >= c->n) {
    c->bad = true;
    return 1;
  }
  const drpc_event *want = &c->v[c->next++].ev;
  if (!same_event(want, &e->ev) || e->seq != c->seq++) {
    fprintf(stderr, "node %d seq %lld (row %lld) differs\n", c->node,
            (long long)e->seq, (long long)e->row);
    c->bad = true;
    return 1;
  }
  bool out = drpc_event_is_output(want->kind);
  if (out)
    c->hash = drpc_event_fold(c->hash, &e->ev);
  if (e->has_hash != out || (out && e->hash != c->hash)) {
    fprintf(stderr, "node %d seq %lld: hash mismatch\n", c->node,
            (long long)e->seq);
    c->bad = true;
    return 1;
  }
  return 0;
}

static bool before_eq(const drpc_trace_event *a, const drpc_trace_event *b) {
  if (a->ev.time_ns != b->ev.time_ns)
    return a->ev.time_ns < b->ev.time_ns;
  if (a->ev.node != b->ev.node)
    return a->ev.node < b->ev.node;
  return a->seq < b->seq;
}

static int order_cb(void *arg, const drpc_trace_event *e) {
  cmp_state *c = arg;
  if (c->count > 0 && !before_eq(&c->prev, e))
    c->ordered = false;
  c->prev = *e;
  c->count++;
  return 0;
}

/* Reads path back and compares every node's events with v; the file
 * holds file_total events in all. */
static void compare_file(const char *path, const xev *v, size_t n, int node0,
                         int nnodes, size_t file_total) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_trace *t;
  int rc = drpc_trace_open(&t, path, &err);
  CHECK_EQ_INT(rc, 0);
  if (rc) {
    fprintf(stderr, "%s\n", drpc_error_message(&err));
    drpc_error_clear(&err);
    return;
  }
  size_t total = 0;
  for (int node = node0; node < node0 + nnodes; node++) {
    cmp_state c = {.v = v, .n = n, .node = node, .hash = DRPC_EVENT_HASH_INIT};
    CHECK_EQ_INT(drpc_trace_foreach(t, node, cmp_node_cb, &c, &err), 0);
    CHECK(!c.bad);
    /* Every expected event of the node was seen. */
    size_t want = 0;
    for (size_t i = 0; i < n; i++)
      want += v[i].ev.node == node;
    CHECK_EQ_INT(c.seq, want);
    total += (size_t)c.seq;
  }
  CHECK_EQ_INT(total, n);
  cmp_state all = {.ordered = true};
  CHECK_EQ_INT(drpc_trace_foreach(t, -1, order_cb, &all, &err), 0);
  CHECK_EQ_INT(all.count, file_total);
  CHECK(all.ordered);
  drpc_trace_close(t);
  drpc_error_clear(&err);
}

/* ---- tests ------------------------------------------------------------ */

static void roundtrip(bool threaded) {
  const char *path = tpath(threaded ? "rt_threaded.db" : "rt_inline.db");
  size_t n = 3000;
  xev *v = gen_events(n, 0, 3, 1000);
  drpc_recorder_stats st = record_all(path, v, n, threaded, "sim");
  size_t with_payload = 0;
  uint64_t bytes = 0;
  for (size_t i = 0; i < n; i++) {
    with_payload += v[i].ev.len > 0;
    bytes += v[i].ev.len;
  }
  size_t distinct = distinct_payloads(v, n, NULL, 0);
  CHECK_EQ_INT(st.events, n);
  CHECK_EQ_INT(st.written, n);
  CHECK_EQ_INT(st.bytes, bytes);
  CHECK_EQ_INT(st.dropped, 0);
  CHECK_EQ_INT(st.payloads_stored, distinct);
  CHECK_EQ_INT(st.payloads_stored + st.payloads_deduped, with_payload);
  CHECK(st.payloads_deduped > 0);
  CHECK_EQ_INT(count_rows(path, "SELECT count(*) FROM payloads"), distinct);
  CHECK_EQ_INT(count_rows(path, "SELECT count(*) FROM strings"), 5);
  CHECK_EQ_INT(count_rows(path, "SELECT count(*) FROM kinds"), NKINDS);
  CHECK_EQ_INT(count_rows(path, "SELECT count(*) FROM events WHERE hash IS "
                                "NOT NULL AND kind < 20"),
               0);
  CHECK_EQ_INT(count_rows(path, "PRAGMA user_version"), 1);
  char spill[600];
  snprintf(spill, sizeof spill, "%s.spill", path);
  CHECK(access(spill, F_OK) != 0); /* a closed recording stands alone */
  compare_file(path, v, n, 0, 3, n);

  /* The run row and the nodes table. */
  drpc_error err = DRPC_ERROR_INIT;
  drpc_trace *t;
  CHECK_EQ_INT(drpc_trace_open(&t, path, &err), 0);
  if (t) {
    drpc_trace_run_info ri;
    CHECK_EQ_INT(drpc_trace_run(t, &ri, &err), 0);
    CHECK_STR_EQ(ri.backend, "sim");
    CHECK_STR_EQ(ri.scenario, "echo");
    CHECK(ri.has_seed && ri.seed == 0xfedcba9876543210ull);
    CHECK_STR_EQ(ri.commit, "abc123");
    CHECK_STR_EQ(ri.config_json, "{\"workers\": 3}");
    CHECK(ri.started_at && strlen(ri.started_at) == 24 &&
          ri.started_at[10] == 'T' && ri.started_at[23] == 'Z');
    CHECK(ri.host != NULL);
    CHECK(ri.has_pid && ri.pid == getpid());
    drpc_trace_run_info_free(&ri);
    int16_t *ids;
    char **names;
    size_t nn;
    CHECK_EQ_INT(drpc_trace_nodes(t, &ids, &names, &nn, &err), 0);
    CHECK_EQ_INT(nn, 3);
    for (size_t i = 0; i < nn && nn == 3; i++) {
      CHECK_EQ_INT(ids[i], (int)i);
      if (ids[i] == v[0].ev.node)
        CHECK_STR_EQ(names[i], "first");
      else
        CHECK(names[i] == NULL);
    }
    drpc_trace_nodes_free(ids, names, nn);
    drpc_trace_close(t);
  }
  drpc_error_clear(&err);
  free_events(v, n);
}

static void test_roundtrip_inline(void) {
  roundtrip(false);
}

static void test_roundtrip_threaded(void) {
  roundtrip(true);
}

static void test_exists(void) {
  const char *path = tpath("exists.db");
  drpc_error err = DRPC_ERROR_INIT;
  drpc_recorder *r;
  CHECK_EQ_INT(drpc_recorder_open(&r, path, NULL, false, false, &err), 0);
  CHECK_EQ_INT(drpc_recorder_close(r, &err), 0);
  CHECK_EQ_INT(drpc_recorder_open(&r, path, NULL, false, false, &err),
               DRPC_EEXISTS);
  CHECK(r == NULL);
  CHECK_CONTAINS(drpc_error_message(&err), "already exists");
  CHECK_EQ_INT(drpc_recorder_open(&r, path, NULL, true, true, &err), 0);
  CHECK_EQ_INT(drpc_recorder_close(r, &err), 0);
  CHECK_EQ_INT(drpc_recorder_close(NULL, &err), 0);
  /* An empty recording reads back with its run and no events. */
  drpc_trace *t;
  CHECK_EQ_INT(drpc_trace_open(&t, path, &err), 0);
  cmp_state all = {.ordered = true};
  CHECK_EQ_INT(drpc_trace_foreach(t, -1, order_cb, &all, &err), 0);
  CHECK_EQ_INT(all.count, 0);
  drpc_trace_close(t);
  drpc_error_clear(&err);
}

/* Several threads record into one threaded recorder, each its own node:
 * every event arrives, in each thread's order. */
typedef struct producer {
  drpc_recorder *r;
  int node, n;
} producer;

static void *produce(void *arg) {
  producer *p = arg;
  unsigned char buf[128];
  for (int i = 0; i < p->n; i++) {
    memset(buf, i & 0xff, sizeof buf);
    memcpy(buf, &i, sizeof i);
    drpc_event ev = {.kind = i % 2 ? DRPC_EV_OUT_SEND : DRPC_EV_IN_FRAME,
                     .node = (int16_t)p->node,
                     .peer = -1,
                     .time_ns = (uint64_t)i,
                     .aux = (uint64_t)i,
                     .bytes = buf,
                     .len = 1 + (size_t)i % sizeof buf,
                     .name = "worker"};
    drpc_recorder_record(p->r, &ev);
  }
  return NULL;
}

static int seq_aux_cb(void *arg, const drpc_trace_event *e) {
  int64_t *next = arg;
  if (e->seq != *next || e->ev.aux != (uint64_t)*next)
    return 1;
  ++*next;
  return 0;
}

static void test_threads(void) {
  const char *path = tpath("threads.db");
  drpc_error err = DRPC_ERROR_INIT;
  drpc_recorder *r;
  CHECK_EQ_INT(drpc_recorder_open(&r, path, NULL, true, true, &err), 0);
  drpc_recorder_set_queue_limit(r, 64 << 10); /* some stalls */
  enum { NT = 4, PER = 5000 };
  pthread_t th[NT];
  producer p[NT];
  for (int i = 0; i < NT; i++) {
    p[i] = (producer){r, i + 10, PER};
    pthread_create(&th[i], NULL, produce, &p[i]);
  }
  for (int i = 0; i < NT; i++)
    pthread_join(th[i], NULL);
  drpc_recorder_stats st;
  CHECK_EQ_INT(drpc_recorder_flush(r, &err), 0);
  drpc_recorder_stats_get(r, &st);
  CHECK_EQ_INT(st.events, NT * PER);
  CHECK_EQ_INT(st.written, NT * PER);
  CHECK_EQ_INT(drpc_recorder_close(r, &err), 0);
  drpc_trace *t;
  CHECK_EQ_INT(drpc_trace_open(&t, path, &err), 0);
  for (int i = 0; i < NT && t; i++) {
    int64_t next = 0;
    CHECK_EQ_INT(drpc_trace_foreach(t, 10 + i, seq_aux_cb, &next, &err), 0);
    CHECK_EQ_INT(next, PER);
  }
  drpc_trace_close(t);
  drpc_error_clear(&err);
}

/* A queue bound far below the data still loses nothing: callers wait. */
static void test_backpressure(void) {
  const char *path = tpath("backpressure.db");
  drpc_error err = DRPC_ERROR_INIT;
  drpc_recorder *r;
  CHECK_EQ_INT(drpc_recorder_open(&r, path, NULL, true, true, &err), 0);
  drpc_recorder_set_queue_limit(r, 1);
  enum { N = 20000 };
  unsigned char buf[256];
  for (int i = 0; i < N; i++) {
    memset(buf, 0, sizeof buf);
    memcpy(buf, &i, sizeof i);
    drpc_event ev = {.kind = DRPC_EV_OUT_SEND,
                     .node = 1,
                     .peer = 2,
                     .time_ns = (uint64_t)i,
                     .aux = (uint64_t)i,
                     .bytes = buf,
                     .len = sizeof buf};
    drpc_recorder_record(r, &ev);
  }
  drpc_recorder_stats st;
  drpc_recorder_stats_get(r, &st);
  CHECK_EQ_INT(st.events, N);
  CHECK(st.stalls > 0);
  fprintf(stderr, "  backpressure: %llu of %d calls stalled\n",
          (unsigned long long)st.stalls, N);
  CHECK_EQ_INT(drpc_recorder_close(r, &err), 0);
  drpc_trace *t;
  CHECK_EQ_INT(drpc_trace_open(&t, path, &err), 0);
  int64_t next = 0;
  CHECK_EQ_INT(drpc_trace_foreach(t, 1, seq_aux_cb, &next, &err), 0);
  CHECK_EQ_INT(next, N);
  drpc_trace_close(t);
  CHECK_EQ_INT(count_rows(path, "SELECT count(*) FROM payloads"), N);
  drpc_error_clear(&err);
}

/* A process that dies without closing leaves a readable recording of
 * everything flushed before (the WAL keeps committed batches). */
static void test_crash(void) {
  const char *path = tpath("crash.db");
  enum { N = 5000 };
  pid_t pid = fork();
  if (pid == 0) {
    drpc_recorder *r;
    if (drpc_recorder_open(&r, path, NULL, true, true, NULL))
      _exit(2);
    unsigned char buf[100] = {0};
    for (int i = 0; i < N + 10; i++) {
      if (i == N && drpc_recorder_flush(r, NULL))
        _exit(3);
      memcpy(buf, &i, sizeof i);
      drpc_event ev = {.kind = DRPC_EV_OUT_SEND,
                       .node = 3,
                       .peer = -1,
                       .time_ns = (uint64_t)i,
                       .aux = (uint64_t)i,
                       .bytes = buf,
                       .len = sizeof buf};
      drpc_recorder_record(r, &ev);
    }
    _exit(0); /* no close: the writer thread dies mid-flight */
  }
  int status = -1;
  waitpid(pid, &status, 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  drpc_error err = DRPC_ERROR_INIT;
  drpc_trace *t;
  CHECK_EQ_INT(drpc_trace_open(&t, path, &err), 0);
  int64_t next = 0;
  if (t)
    CHECK_EQ_INT(drpc_trace_foreach(t, 3, seq_aux_cb, &next, &err), 0);
  CHECK(next >= N && next <= N + 10);
  drpc_trace_close(t);
  drpc_error_clear(&err);
}

/* A spill bound far below the data: the writer imports the spill file
 * many times while recording, and the file is the same as with one
 * import (events, seq, hashes, payloads stored once across imports). */
static void test_spill_limit(void) {
  const char *path = tpath("spill_limit.db");
  size_t n = 6000;
  xev *v = gen_events(n, 0, 3, 3000);
  drpc_error err = DRPC_ERROR_INIT;
  drpc_recorder *r;
  CHECK_EQ_INT(drpc_recorder_open(&r, path, NULL, true, true, &err), 0);
  if (!r) {
    free_events(v, n);
    return;
  }
  drpc_recorder_set_spill_limit(r, 16 << 10);
  drpc_recorder_set_queue_limit(r, 4 << 10);
  size_t with_payload = 0;
  for (size_t i = 0; i < n; i++) {
    drpc_recorder_sink(r, &v[i].ev);
    with_payload += v[i].ev.len > 0;
  }
  CHECK_EQ_INT(drpc_recorder_flush(r, &err), 0);
  drpc_recorder_stats st;
  drpc_recorder_stats_get(r, &st);
  size_t distinct = distinct_payloads(v, n, NULL, 0);
  CHECK(st.imports > 2);
  CHECK(st.spilled > (16 << 10));
  CHECK_EQ_INT(st.written, n);
  CHECK_EQ_INT(st.dropped, 0);
  CHECK_EQ_INT(st.payloads_stored, distinct);
  CHECK_EQ_INT(st.payloads_stored + st.payloads_deduped, with_payload);
  CHECK_EQ_INT(drpc_recorder_close(r, &err), 0);
  char spill[600];
  snprintf(spill, sizeof spill, "%s.spill", path);
  CHECK(access(spill, F_OK) != 0);
  CHECK_EQ_INT(count_rows(path, "SELECT count(*) FROM payloads"), distinct);
  compare_file(path, v, n, 0, 3, n);
  drpc_error_clear(&err);
  free_events(v, n);
}

/* More distinct payloads than the import's in-memory table may hold (the
 * table is shrunk for the test): the rest are deduplicated through the
 * database, whose payloads_hash index is rebuilt mid-import. */
static void test_payload_table_full(void) {
  const char *path = tpath("ptab.db");
  enum { U = 55000 }; /* > 3/4 of 2^16 slots */
  setenv("DRPC_RECORDER_PTAB_BITS", "16", 1);
  drpc_error err = DRPC_ERROR_INIT;
  drpc_recorder *r;
  int rc = drpc_recorder_open(&r, path, NULL, true, true, &err);
  unsetenv("DRPC_RECORDER_PTAB_BITS");
  CHECK_EQ_INT(rc, 0);
  if (rc)
    return;
  for (int pass = 0; pass < 2; pass++)
    for (uint64_t i = 0; i < U; i++) {
      uint64_t b[2] = {i, i * 0x9e3779b97f4a7c15ull};
      drpc_event ev = {.kind = DRPC_EV_OUT_SEND,
                       .node = 2,
                       .peer = 1,
                       .time_ns = (uint64_t)pass * U + i,
                       .aux = (uint64_t)pass * U + i,
                       .bytes = b,
                       .len = sizeof b};
      drpc_recorder_record(r, &ev);
    }
  CHECK_EQ_INT(drpc_recorder_flush(r, &err), 0);
  drpc_recorder_stats st;
  drpc_recorder_stats_get(r, &st);
  CHECK_EQ_INT(st.written, 2 * U);
  CHECK_EQ_INT(st.payloads_stored, U);
  CHECK_EQ_INT(st.payloads_deduped, U);
  CHECK_EQ_INT(drpc_recorder_close(r, &err), 0);
  CHECK_EQ_INT(count_rows(path, "SELECT count(*) FROM payloads"), U);
  CHECK_EQ_INT(count_rows(path, "SELECT count(*) FROM sqlite_master WHERE "
                                "type='index' AND sql IS NOT NULL"),
               3);
  drpc_trace *t;
  CHECK_EQ_INT(drpc_trace_open(&t, path, &err), 0);
  int64_t next = 0;
  if (t)
    CHECK_EQ_INT(drpc_trace_foreach(t, 2, seq_aux_cb, &next, &err), 0);
  CHECK_EQ_INT(next, 2 * U);
  drpc_trace_close(t);
  drpc_error_clear(&err);
}

/* A process that dies without flushing leaves the events it recorded
 * since the last flush in the spill file; drpc_recorder_recover imports
 * them (ignoring a record cut short at the end), and the file is then as
 * if the process had closed it. */
static void test_recover(void) {
  const char *path = tpath("recover.db");
  char spill[600];
  snprintf(spill, sizeof spill, "%s.spill", path);
  enum { N = 3000 };
  size_t distinct = 1; /* "same" */
  for (int i = 0; i < N; i++)
    distinct += i % 5 != 0;
  pid_t pid = fork();
  if (pid == 0) {
    drpc_recorder *r;
    if (drpc_recorder_open(&r, path, NULL, true, true, NULL))
      _exit(2);
    drpc_recorder_node(r, 4, "four");
    unsigned char buf[100] = {0};
    for (int i = 0; i <= N; i++) {
      if (i == N / 2 && drpc_recorder_flush(r, NULL))
        _exit(3);
      /* With a bound of one byte, recording the last (extra) event waits
       * until everything before it is in the spill file. */
      if (i == N)
        drpc_recorder_set_queue_limit(r, 1);
      memcpy(buf, &i, sizeof i);
      drpc_event ev = {.kind = i % 3 ? DRPC_EV_OUT_SEND : DRPC_EV_IN_FRAME,
                       .node = 4,
                       .peer = -1,
                       .time_ns = (uint64_t)i,
                       .aux = (uint64_t)i,
                       .bytes = i % 5 ? buf : (const void *)"same",
                       .len = i % 5 ? 8 + (size_t)i % 90 : 4,
                       .name = i % 7 ? NULL : "seven"};
      drpc_recorder_record(r, &ev);
    }
    _exit(0); /* no close */
  }
  int status = -1;
  waitpid(pid, &status, 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  drpc_error err = DRPC_ERROR_INIT;
  drpc_trace *t;
  int64_t next = 0;
  CHECK_EQ_INT(drpc_trace_open(&t, path, &err), 0);
  if (t)
    CHECK_EQ_INT(drpc_trace_foreach(t, 4, seq_aux_cb, &next, &err), 0);
  CHECK_EQ_INT(next, N / 2);
  drpc_trace_close(t);
  CHECK(access(spill, F_OK) == 0);

  /* The process died in the middle of appending a record. */
  FILE *f = fopen(spill, "ab");
  if (f) {
    unsigned char junk[40];
    memset(junk, 0x55, sizeof junk);
    fwrite(junk, 1, sizeof junk, f);
    fclose(f);
  }
  CHECK_EQ_INT(drpc_recorder_recover(path, &err), 0);
  CHECK(access(spill, F_OK) != 0);
  CHECK_EQ_INT(drpc_trace_open(&t, path, &err), 0);
  next = 0;
  cmp_state c = {.hash = DRPC_EVENT_HASH_INIT};
  if (t) {
    CHECK_EQ_INT(drpc_trace_foreach(t, 4, seq_aux_cb, &next, &err), 0);
    CHECK_EQ_INT(drpc_trace_foreach(t, 4, seq_hash_cb, &c, &err), 0);
    int16_t *ids;
    char **names;
    size_t nn;
    CHECK_EQ_INT(drpc_trace_nodes(t, &ids, &names, &nn, &err), 0);
    CHECK_EQ_INT(nn, 1);
    if (nn == 1)
      CHECK_STR_EQ(names[0], "four");
    drpc_trace_nodes_free(ids, names, nn);
  }
  drpc_trace_close(t);
  CHECK(next == N || next == N + 1); /* the extra event may have made it */
  CHECK(!c.bad);
  /* (The extra event, N % 5 == 0, carries "same".) */
  CHECK_EQ_INT(count_rows(path, "SELECT count(*) FROM payloads"), distinct);
  CHECK_EQ_INT(count_rows(path, "SELECT count(*) FROM strings"), 1);
  /* Nothing left to do; a spill without its recording is refused. */
  CHECK_EQ_INT(drpc_recorder_recover(path, &err), 0);
  const char *orphan = tpath("orphan.db");
  char ospill[600];
  snprintf(ospill, sizeof ospill, "%s.spill", orphan);
  write_file(ospill, "DRPCSPL2\0\0\0\0\0\0\0\0", 16);
  CHECK_EQ_INT(drpc_recorder_recover(orphan, &err), DRPC_ENOTFOUND);
  CHECK_CONTAINS(drpc_error_message(&err), "has no recording");
  drpc_error_clear(&err);
}

/* The spill file's compact records code fields against the previous
 * record of the chunk (deltas, repeats elided): extreme and backward
 * values, node and peer up to the int16 limit, payloads larger than a
 * chunk, and runs of repeats all come back as recorded. */
static void test_spill_codec(void) {
  const char *path = tpath("codec.db");
  /* (Nodes are worker ids, >= 0: foreach reads a negative one as "all".) */
  static const int16_t nodes[] = {0, 1, 63, 64, 300, INT16_MAX};
  /* (A peer below -1 reads back as -1, so the running hash would differ.) */
  static const int16_t peers[] = {-1, 0, 1, 63, 64, 128, INT16_MAX};
  static const uint64_t big[] = {
      0, 1, 127, 128, UINT64_MAX, UINT64_MAX - 1, 1ull << 63, (1ull << 63) - 1};
  enum { N = 4000 };
  xev *v = calloc(N, sizeof *v);
  CHECK(v != NULL);
  if (!v)
    return;
  for (size_t i = 0; i < N; i++) {
    drpc_event *e = &v[i].ev;
    bool rep = i > 0 && rnd() % 3 == 0; /* a run of repeats */
    if (rep) {
      *e = v[i - 1].ev;
      e->bytes = NULL;
      e->len = 0;
    } else {
      e->kind = ALL_KINDS[rnd() % NKINDS];
      e->node = nodes[rnd() % 6];
      e->peer = peers[rnd() % 7];
      e->time_ns = rnd() % 4 ? big[rnd() % 8] + rnd() % 1000 : rnd();
      e->id = rnd() % 2 ? big[rnd() % 8] : rnd();
    }
    e->aux = rnd() % 2 ? big[rnd() % 8] : rnd();
    e->len = rnd() % 2 ? 1 + rnd() % 200 : 0;
    if (i == 7)
      e->len = 3 << 20; /* larger than a queue chunk, early */
    else if (i == 1000 || i == 2501)
      e->len = ((size_t)1 << 20) + 1 + rnd() % 4096;
    if (e->len) {
      v[i].bytes = malloc(e->len);
      for (size_t j = 0; j < e->len; j++)
        v[i].bytes[j] = (unsigned char)(j * 131 + i);
    }
    e->bytes = v[i].bytes;
    e->name = NULL;
    if (rnd() % 3 == 0) {
      v[i].name = strdup(NAMES[rnd() % 5]);
      e->name = v[i].name;
    }
  }
  drpc_error err = DRPC_ERROR_INIT;
  drpc_recorder *r;
  CHECK_EQ_INT(drpc_recorder_open(&r, path, NULL, true, true, &err), 0);
  if (r) {
    drpc_recorder_node(r, 0, "min");
    for (size_t i = 0; i < N; i++) {
      drpc_recorder_record(r, &v[i].ev);
      if (i == N / 2)
        CHECK_EQ_INT(drpc_recorder_flush(r, &err), 0);
    }
    drpc_recorder_node(r, INT16_MAX, "max");
    CHECK_EQ_INT(drpc_recorder_close(r, &err), 0);
  }
  drpc_trace *t;
  CHECK_EQ_INT(drpc_trace_open(&t, path, &err), 0);
  size_t total = 0;
  for (size_t k = 0; t && k < 6; k++) {
    cmp_state c = {
        .v = v, .n = N, .node = nodes[k], .hash = DRPC_EVENT_HASH_INIT};
    CHECK_EQ_INT(drpc_trace_foreach(t, nodes[k], cmp_node_cb, &c, &err), 0);
    CHECK(!c.bad);
    size_t want = 0;
    for (size_t i = 0; i < N; i++)
      want += v[i].ev.node == nodes[k];
    CHECK_EQ_INT(c.seq, want);
    total += (size_t)c.seq;
  }
  CHECK_EQ_INT(total, N);
  if (t) {
    int16_t *ids;
    char **names;
    size_t nn;
    CHECK_EQ_INT(drpc_trace_nodes(t, &ids, &names, &nn, &err), 0);
    CHECK_EQ_INT(nn, 6);
    if (nn == 6) {
      CHECK_STR_EQ(names[0], "min");
      CHECK_STR_EQ(names[5], "max");
    }
    drpc_trace_nodes_free(ids, names, nn);
  }
  drpc_trace_close(t);
  CHECK_EQ_INT(count_rows(path, "SELECT count(*) FROM events"), N);
  free_events(v, N);
  drpc_error_clear(&err);
}

/* A spill file cut anywhere (the process died in the middle of a write):
 * recover imports the whole records before the cut, in order, and nothing
 * of the record cut short. */
static void test_recover_cut(void) {
  const char *path = tpath("cut.db");
  char spill[600];
  snprintf(spill, sizeof spill, "%s.spill", path);
  enum { N = 5000 };
  pid_t pid = fork();
  if (pid == 0) {
    drpc_recorder *r;
    if (drpc_recorder_open(&r, path, NULL, true, true, NULL))
      _exit(2);
    drpc_recorder_node(r, 9, "nine");
    unsigned char buf[300];
    for (int i = 0; i <= N; i++) {
      /* The last (extra) event waits until the others are in the spill. */
      if (i == N)
        drpc_recorder_set_queue_limit(r, 1);
      for (size_t j = 0; j < sizeof buf; j++)
        buf[j] = (unsigned char)(i + (int)j);
      drpc_event ev = {.kind = i % 4 ? DRPC_EV_OUT_SEND : DRPC_EV_RPC_END,
                       .node = 9,
                       .peer = (int16_t)(i % 3 - 1),
                       .time_ns = (uint64_t)(i % 11 ? i * 1000 : 7),
                       .id = (uint64_t)(i / 3),
                       .aux = (uint64_t)i,
                       .bytes = i % 4 ? buf : NULL,
                       .len = i % 4 ? (size_t)(i % 250) : 0,
                       .name = i % 6 ? NULL : "six"};
      drpc_recorder_record(r, &ev);
    }
    _exit(0); /* no close, no flush */
  }
  int status = -1;
  waitpid(pid, &status, 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  long size = file_size(spill);
  CHECK(size > 16);
  if (size <= 16)
    return;
  /* The whole file gives every event it holds; each cut gives a prefix,
   * one event less when the last byte is gone. */
  long cuts[] = {size, size - 1, size - 2, size / 2, size / 3 + 1, 17, 16};
  int64_t whole = -1;
  for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
    char db[600], sp[620];
    snprintf(db, sizeof db, "%s.cut%zu.db", path, k);
    snprintf(sp, sizeof sp, "%s.spill", db);
    copy_file(path, db, (size_t)-1);
    char wal[600], dwal[620];
    snprintf(wal, sizeof wal, "%s-wal", path);
    snprintf(dwal, sizeof dwal, "%s-wal", db);
    if (access(wal, F_OK) == 0)
      copy_file(wal, dwal, (size_t)-1);
    copy_file(spill, sp, (size_t)cuts[k]);
    drpc_error err = DRPC_ERROR_INIT;
    CHECK_EQ_INT(drpc_recorder_recover(db, &err), 0);
    CHECK(access(sp, F_OK) != 0);
    drpc_trace *t;
    int64_t next = 0;
    cmp_state c = {.hash = DRPC_EVENT_HASH_INIT};
    CHECK_EQ_INT(drpc_trace_open(&t, db, &err), 0);
    if (t) {
      CHECK_EQ_INT(drpc_trace_foreach(t, 9, seq_aux_cb, &next, &err), 0);
      CHECK_EQ_INT(drpc_trace_foreach(t, 9, seq_hash_cb, &c, &err), 0);
    }
    drpc_trace_close(t);
    CHECK(!c.bad);
    CHECK_EQ_INT(count_rows(db, "SELECT count(*) FROM events"), next);
    if (k == 0) {
      whole = next;
      CHECK(next == N || next == N + 1);
    } else if (k == 1) {
      CHECK_EQ_INT(next, whole - 1);
    } else {
      CHECK(next < whole);
    }
    if (cuts[k] <= 17)
      CHECK_EQ_INT(next, 0);
    drpc_error_clear(&err);
  }
}

/* Prints how fast the threaded recorder takes events (not a check). */
static void test_throughput(void) {
  const char *path = tpath("speed.db");
  drpc_error err = DRPC_ERROR_INIT;
  enum { N = 200000 };
  unsigned char buf[64] = {0};
  for (int mode = 1; mode >= 0; mode--) {
    drpc_recorder *r;
    CHECK_EQ_INT(drpc_recorder_open(&r, path, NULL, mode, true, &err), 0);
    if (!r)
      break;
    double t0 = now_s();
    for (int i = 0; i < N; i++) {
      memcpy(buf, &i, sizeof i);
      drpc_event ev = {.kind = i % 3 ? DRPC_EV_OUT_SEND : DRPC_EV_IN_FRAME,
                       .node = (int16_t)(i % 4),
                       .peer = (int16_t)((i + 1) % 4),
                       .time_ns = (uint64_t)i * 100,
                       .id = (uint64_t)i,
                       .bytes = buf,
                       .len = sizeof buf,
                       .name = i % 5 ? NULL : "echo"};
      drpc_recorder_record(r, &ev);
    }
    double t1 = now_s();
    CHECK_EQ_INT(drpc_recorder_close(r, &err), 0);
    double t2 = now_s();
    fprintf(stderr,
            "  %s: %d events of %zu bytes: %.0f events/s accepted, %.0f "
            "events/s to closed file\n",
            mode ? "threaded" : "inline", N, sizeof buf, N / (t1 - t0),
            N / (t2 - t0));
  }
  CHECK_EQ_INT(count_rows(path, "SELECT count(*) FROM events"), N);
  drpc_error_clear(&err);
}

/* ---- merge ----------------------------------------------------------- */

static int seq_hash_cb(void *arg, const drpc_trace_event *e) {
  cmp_state *c = arg;
  if (e->seq != c->seq++)
    c->bad = true;
  if (drpc_event_is_output(e->ev.kind)) {
    c->hash = drpc_event_fold(c->hash, &e->ev);
    if (!e->has_hash || e->hash != c->hash)
      c->bad = true;
  }
  return 0;
}

static void test_merge(void) {
  const char *a = tpath("worker0.db"), *b = tpath("worker1.db");
  const char *out = tpath("merged.db");
  size_t na = 1500, nb = 1200;
  xev *va = gen_events(na, 0, 1, 5000);
  xev *vb = gen_events(nb, 1, 1, 5001);
  record_all(a, va, na, true, "real");
  record_all(b, vb, nb, false, "real");
  drpc_error err = DRPC_ERROR_INIT;
  const char *inputs[] = {a, b};
  int rc = drpc_trace_merge(out, inputs, 2, false, &err);
  CHECK_EQ_INT(rc, 0);
  if (rc)
    fprintf(stderr, "%s\n", drpc_error_message(&err));
  /* Each node's events, seq and hashes as recorded; all in time order. */
  compare_file(out, va, na, 0, 1, na + nb);
  compare_file(out, vb, nb, 1, 1, na + nb);
  CHECK_EQ_INT(count_rows(out, "SELECT count(*) FROM events"), na + nb);
  CHECK_EQ_INT(count_rows(out, "SELECT count(*) FROM runs"), 1);
  CHECK_EQ_INT(count_rows(out, "SELECT count(*) FROM payloads"),
               distinct_payloads(va, na, vb, nb));
  CHECK_EQ_INT(count_rows(out, "SELECT count(*) FROM strings"), 5);
  drpc_trace *t;
  CHECK_EQ_INT(drpc_trace_open(&t, out, &err), 0);
  if (t) {
    cmp_state all = {.ordered = true};
    CHECK_EQ_INT(drpc_trace_foreach(t, -1, order_cb, &all, &err), 0);
    CHECK_EQ_INT(all.count, na + nb);
    CHECK(all.ordered);
    for (int node = 0; node < 2; node++) {
      cmp_state c = {.hash = DRPC_EVENT_HASH_INIT};
      CHECK_EQ_INT(drpc_trace_foreach(t, node, seq_hash_cb, &c, &err), 0);
      CHECK(!c.bad);
    }
    drpc_trace_run_info ri;
    CHECK_EQ_INT(drpc_trace_run(t, &ri, &err), 0);
    CHECK_STR_EQ(ri.backend, "real");
    CHECK_STR_EQ(ri.scenario, "echo");
    CHECK_CONTAINS(ri.config_json, "merged_from");
    CHECK_CONTAINS(ri.config_json, "worker0.db");
    CHECK_CONTAINS(ri.config_json, "worker1.db");
    CHECK_CONTAINS(ri.config_json, "\"workers\":3");
    drpc_trace_run_info_free(&ri);
    int16_t *ids;
    char **names;
    size_t nn;
    CHECK_EQ_INT(drpc_trace_nodes(t, &ids, &names, &nn, &err), 0);
    CHECK_EQ_INT(nn, 2);
    if (nn == 2) {
      CHECK(ids[0] == 0 && ids[1] == 1);
      CHECK_STR_EQ(names[0], "first");
      CHECK_STR_EQ(names[1], "first");
    }
    drpc_trace_nodes_free(ids, names, nn);
    drpc_trace_close(t);
  }

  /* Rejections leave no output behind. */
  const char *out2 = tpath("merged2.db");
  const char *twice[] = {a, a};
  CHECK_EQ_INT(drpc_trace_merge(out2, twice, 2, false, &err), DRPC_EINVAL);
  CHECK_CONTAINS(drpc_error_message(&err), "node 0 is in both");
  CHECK(access(out2, F_OK) != 0);
  const char *missing[] = {a, tpath("nope.db")};
  CHECK_EQ_INT(drpc_trace_merge(out2, missing, 2, false, &err), DRPC_ENOTFOUND);
  CHECK_CONTAINS(drpc_error_message(&err), "nope.db");
  CHECK(access(out2, F_OK) != 0);
  CHECK_EQ_INT(drpc_trace_merge(out, inputs, 2, false, &err), DRPC_EEXISTS);
  const char *self[] = {a, out};
  CHECK_EQ_INT(drpc_trace_merge(out, self, 2, true, &err), DRPC_EINVAL);
  CHECK_CONTAINS(drpc_error_message(&err), "is also input");
  CHECK_EQ_INT(drpc_trace_merge(out2, inputs, 0, false, &err), DRPC_EINVAL);
  CHECK_EQ_INT(drpc_trace_merge(out, inputs, 2, true, &err), 0);
  drpc_error_clear(&err);
  free_events(va, na);
  free_events(vb, nb);
}

/* ---- rejecting bad files ---------------------------------------------- */

static void write_file(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  if (f) {
    fwrite(data, 1, n, f);
    fclose(f);
  }
}

/* Copies at most limit bytes of src to dst. */
static void copy_file(const char *src, const char *dst, size_t limit) {
  FILE *in = fopen(src, "rb");
  FILE *o = fopen(dst, "wb");
  char buf[8192];
  size_t n, done = 0;
  while (in && o && done < limit && (n = fread(buf, 1, sizeof buf, in)) > 0) {
    if (n > limit - done)
      n = limit - done;
    fwrite(buf, 1, n, o);
    done += n;
  }
  if (in)
    fclose(in);
  if (o)
    fclose(o);
}

static long file_size(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return -1;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fclose(f);
  return n;
}

/* A copy of src with sql applied. */
static void mutate(const char *src, const char *dst, const char *sql) {
  copy_file(src, dst, SIZE_MAX);
  sqlite3 *db;
  sqlite3_open(dst, &db);
  char *msg = NULL;
  if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
    fprintf(stderr, "mutate %s: %s\n", sql, msg);
    test_failed_++;
  }
  sqlite3_free(msg);
  sqlite3_close(db);
}

static int open_fails(const char *path, int code, const char *needle) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_trace *t = (drpc_trace *)1;
  int rc = drpc_trace_open(&t, path, &err);
  CHECK_EQ_INT(rc, code);
  CHECK(t == NULL);
  CHECK_CONTAINS(drpc_error_message(&err), needle);
  if (rc != code)
    fprintf(stderr, "  %s: %s\n", path, drpc_error_message(&err));
  drpc_trace_close(t);
  drpc_error_clear(&err);
  return rc;
}

static int count_cb(void *arg, const drpc_trace_event *e) {
  (void)e;
  ++*(size_t *)arg;
  return 0;
}

/* Opens (which must work) and walks all events, which must fail. */
static void walk_fails(const char *path, const char *needle) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_trace *t;
  CHECK_EQ_INT(drpc_trace_open(&t, path, &err), 0);
  size_t n = 0;
  int rc = t ? drpc_trace_foreach(t, -1, count_cb, &n, &err) : -1;
  CHECK_EQ_INT(rc, DRPC_EPROTO);
  CHECK_CONTAINS(drpc_error_message(&err), needle);
  drpc_trace_close(t);
  drpc_error_clear(&err);
}

static void test_reject(void) {
  const char *good = tpath("good.db");
  size_t n = 4000;
  xev *v = gen_events(n, 0, 2, 77);
  record_all(good, v, n, true, "sim");
  free_events(v, n);

  open_fails(tpath("missing.db"), DRPC_ENOTFOUND, "does not exist");
  const char *text = tpath("text.db");
  write_file(text, "hello, this is not a database\n", 30);
  open_fails(text, DRPC_ETYPE, "not a drpc recording");
  const char *empty = tpath("empty.db");
  write_file(empty, "", 0);
  open_fails(empty, DRPC_ETYPE, "not a drpc recording");
  open_fails(tmpdir, DRPC_ETYPE, "not a regular file");

  /* A valid SQLite database without drpc tables. */
  const char *other = tpath("other.db");
  sqlite3 *db;
  sqlite3_open(other, &db);
  sqlite3_exec(db, "CREATE TABLE x(a)", NULL, NULL, NULL);
  sqlite3_close(db);
  open_fails(other, DRPC_ETYPE, "not a drpc recording");

  /* Truncated copies: mid-file and mid-header. */
  const char *trunc = tpath("trunc.db");
  long size = file_size(good);
  CHECK(size > 64 * 1024);
  copy_file(good, trunc, (size_t)size / 2);
  open_fails(trunc, DRPC_ETRUNC, "truncated");
  copy_file(good, trunc, 50);
  open_fails(trunc, DRPC_ETRUNC, "truncated");

  const char *bad = tpath("bad.db");
  mutate(good, bad, "PRAGMA user_version=2");
  open_fails(bad, DRPC_EVERSION,
             "recording schema version 2 is not supported (this build reads "
             "1)");
  mutate(good, bad, "UPDATE meta SET value='other' WHERE key='format'");
  open_fails(bad, DRPC_ETYPE, "meta format 'other'");
  mutate(good, bad, "DROP TABLE kinds");
  open_fails(bad, DRPC_EPROTO, "no table kinds");
  mutate(good, bad, "ALTER TABLE events DROP COLUMN hash");
  open_fails(bad, DRPC_EPROTO, "no such column");
  mutate(good, bad, "DELETE FROM runs");
  open_fails(bad, DRPC_EPROTO, "no run");

  /* Bad rows surface while walking, as errors. */
  mutate(good, bad,
         "UPDATE events SET payload=99999999 WHERE id=(SELECT min(id) FROM "
         "events WHERE payload IS NOT NULL)");
  walk_fails(bad, "payload 99999999, which does not exist");
  mutate(good, bad, "UPDATE events SET size=-5 WHERE id=10");
  walk_fails(bad, "negative size -5");
  mutate(good, bad, "UPDATE events SET kind=99 WHERE id=7");
  walk_fails(bad, "unknown kind 99");
  mutate(good, bad,
         "UPDATE events SET name=4242 WHERE id=(SELECT min(id) FROM events "
         "WHERE name IS NOT NULL)");
  walk_fails(bad, "string 4242, which does not exist");
  mutate(good, bad,
         "UPDATE payloads SET bytes=x'00' WHERE id=(SELECT min(id) FROM "
         "payloads WHERE size > 1)");
  walk_fails(bad, "holds 1 bytes");
  mutate(good, bad, "UPDATE events SET node='x' WHERE id=3");
  walk_fails(bad, "column node is not an integer");
  mutate(good, bad, "UPDATE events SET node=70000 WHERE id=3");
  walk_fails(bad, "not a 16-bit id");

  /* Garbage written over pages past the header: whatever SQLite makes of
   * it, reading returns (0 or an error with a message), never crashes. */
  int errors = 0;
  for (int i = 0; i < 30; i++) {
    copy_file(good, bad, SIZE_MAX);
    FILE *f = fopen(bad, "r+b");
    for (int k = 0; f && k < 8; k++) {
      long off = 100 + (long)(rnd() % (uint64_t)(size - 100 - 256));
      unsigned char junk[256];
      for (size_t j = 0; j < sizeof junk; j++)
        junk[j] = (unsigned char)rnd();
      fseek(f, off, SEEK_SET);
      fwrite(junk, 1, 1 + rnd() % sizeof junk, f);
    }
    if (f)
      fclose(f);
    drpc_error err = DRPC_ERROR_INIT;
    drpc_trace *t;
    int rc = drpc_trace_open(&t, bad, &err);
    size_t cnt = 0;
    if (!rc) {
      rc = drpc_trace_foreach(t, -1, count_cb, &cnt, &err);
      int16_t *ids;
      char **names;
      size_t nn;
      if (!drpc_trace_nodes(t, &ids, &names, &nn, &err))
        drpc_trace_nodes_free(ids, names, nn);
      drpc_trace_close(t);
    }
    if (rc) {
      errors++;
      CHECK(rc < 0 && err.msg && strlen(err.msg) > 0);
    }
    drpc_error_clear(&err);
  }
  fprintf(stderr, "  garbage: %d of 30 damaged copies reported errors\n",
          errors);
}

int main(void) {
  const char *s = getenv("DRPC_TEST_SEED");
  if (s)
    seed = strtoull(s, NULL, 0);
  rng_state = seed ? seed : 1;
  fprintf(stderr, "seed %llu (DRPC_TEST_SEED=%llu to reproduce)\n",
          (unsigned long long)seed, (unsigned long long)seed);
  if (!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    return 1;
  }
  RUN(test_roundtrip_inline);
  RUN(test_roundtrip_threaded);
  RUN(test_exists);
  RUN(test_threads);
  RUN(test_backpressure);
  RUN(test_crash);
  RUN(test_spill_limit);
  RUN(test_payload_table_full);
  RUN(test_recover);
  RUN(test_recover_cut);
  RUN(test_spill_codec);
  RUN(test_merge);
  RUN(test_reject);
  RUN(test_throughput);
  cleanup_dir();
  return test_finish();
}
