/* Tests for traces/export_chrome.c: a hand-built recording exported and
 * checked as a Chrome trace (pairs, lanes, flows, names, escaping), bad
 * files and bad rows, and the export time of 100,000 events. */
#include <cjson/cJSON.h>
#include <math.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "drpc/error.h"
#include "drpc/trace_export.h"
#include "drpc/wire.h"
#include "test.h"

/* ---- helpers ----------------------------------------------------------- */

static char tmpdir[64];

static void tmp_path(char *buf, size_t n, const char *name) {
  snprintf(buf, n, "%s/%s", tmpdir, name);
  unlink(buf);
}

static bool file_exists(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void exec_sql(sqlite3 *db, const char *sql) {
  char *msg = NULL;
  int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
  if (rc != SQLITE_OK)
    fprintf(stderr, "sql failed: %s: %s\n", sql, msg ? msg : "?");
  CHECK_EQ_INT(rc, SQLITE_OK);
  sqlite3_free(msg);
}

static const char SCHEMA_V1[] =
    "CREATE TABLE runs(id INTEGER PRIMARY KEY, backend TEXT, scenario TEXT, "
    "seed INTEGER, commit_id TEXT, config TEXT, started_at TEXT, host TEXT, "
    "pid INTEGER);"
    "CREATE TABLE nodes(run INTEGER, node INTEGER, name TEXT, "
    "PRIMARY KEY(run, node));"
    "CREATE TABLE strings(id INTEGER PRIMARY KEY, text TEXT UNIQUE);"
    "CREATE TABLE payloads(id INTEGER PRIMARY KEY, hash INTEGER, size "
    "INTEGER, bytes BLOB);"
    "CREATE TABLE events(id INTEGER PRIMARY KEY, run INTEGER, node INTEGER, "
    "seq INTEGER, kind INTEGER, t_ns INTEGER, peer INTEGER NULL, xid "
    "INTEGER, aux INTEGER, size INTEGER, payload INTEGER NULL, name INTEGER "
    "NULL, hash INTEGER NULL);"
    "PRAGMA user_version = 1;";

/* A recording under construction: prepared inserts and per-node seqs. */
typedef struct rec {
  sqlite3 *db;
  sqlite3_stmt *ev, *str, *strid, *pl;
  int64_t run;
  int64_t seq[8];
} rec;

static void rec_open(rec *r, const char *path) {
  memset(r, 0, sizeof *r);
  CHECK_EQ_INT(sqlite3_open(path, &r->db), SQLITE_OK);
  exec_sql(r->db, SCHEMA_V1);
  exec_sql(r->db, "BEGIN");
  sqlite3_prepare_v2(r->db,
                     "INSERT INTO events(run, node, seq, kind, t_ns, peer, "
                     "xid, aux, size, payload, name) VALUES (?1, ?2, ?3, "
                     "?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                     -1, &r->ev, NULL);
  sqlite3_prepare_v2(r->db, "INSERT OR IGNORE INTO strings(text) VALUES (?1)",
                     -1, &r->str, NULL);
  sqlite3_prepare_v2(r->db, "SELECT id FROM strings WHERE text = ?1", -1,
                     &r->strid, NULL);
  sqlite3_prepare_v2(r->db,
                     "INSERT INTO payloads(hash, size, bytes) VALUES (0, "
                     "?1, ?2)",
                     -1, &r->pl, NULL);
  r->run = 1;
}

static void rec_run(rec *r, int64_t id, int nnodes, const char *scenario) {
  char sql[512];
  snprintf(sql, sizeof sql,
           "INSERT INTO runs VALUES (%lld, 'sim', '%s', -1, 'abc123', "
           "'{\"k\":1}', '2025-01-01T00:00:00Z', 'host', 42);",
           (long long)id, scenario);
  exec_sql(r->db, sql);
  for (int i = 0; i < nnodes; i++) {
    snprintf(sql, sizeof sql, "INSERT INTO nodes VALUES (%lld, %d, 'w%d');",
             (long long)id, i, i);
    exec_sql(r->db, sql);
  }
  r->run = id;
  memset(r->seq, 0, sizeof r->seq);
}

static int64_t rec_string(rec *r, const char *s) {
  sqlite3_bind_text(r->str, 1, s, -1, SQLITE_TRANSIENT);
  sqlite3_step(r->str);
  sqlite3_reset(r->str);
  sqlite3_bind_text(r->strid, 1, s, -1, SQLITE_TRANSIENT);
  int64_t id = sqlite3_step(r->strid) == SQLITE_ROW
                   ? sqlite3_column_int64(r->strid, 0)
                   : -1;
  sqlite3_reset(r->strid);
  return id;
}

static int64_t rec_blob(rec *r, const void *b, size_t len) {
  sqlite3_bind_int64(r->pl, 1, (int64_t)len);
  sqlite3_bind_blob(r->pl, 2, b, (int)len, SQLITE_TRANSIENT);
  CHECK_EQ_INT(sqlite3_step(r->pl), SQLITE_DONE);
  sqlite3_reset(r->pl);
  return sqlite3_last_insert_rowid(r->db);
}

/* A frame payload: a real header and a few payload bytes. */
static int64_t rec_frame(rec *r, int type, uint64_t msg_id) {
  uint8_t buf[DRPC_WIRE_HEADER_SIZE + 8] = {0};
  drpc_frame_header h = {
      DRPC_WIRE_MAGIC, DRPC_WIRE_VERSION, (uint8_t)type, 0, msg_id, 8, 0, 0};
  drpc_wire_header_encode(&h, buf);
  return rec_blob(r, buf, sizeof buf);
}

/* peer/payload < 0 and name NULL store SQL NULL. */
static void rec_event(rec *r, int node, int kind, int64_t t_ns, int peer,
                      int64_t xid, int64_t aux, int64_t size, int64_t payload,
                      const char *name) {
  sqlite3_stmt *s = r->ev;
  sqlite3_bind_int64(s, 1, r->run);
  sqlite3_bind_int64(s, 2, node);
  sqlite3_bind_int64(s, 3, r->seq[node & 7]++);
  sqlite3_bind_int64(s, 4, kind);
  sqlite3_bind_int64(s, 5, t_ns);
  if (peer >= 0)
    sqlite3_bind_int64(s, 6, peer);
  else
    sqlite3_bind_null(s, 6);
  sqlite3_bind_int64(s, 7, xid);
  sqlite3_bind_int64(s, 8, aux);
  sqlite3_bind_int64(s, 9, size);
  if (payload >= 0)
    sqlite3_bind_int64(s, 10, payload);
  else
    sqlite3_bind_null(s, 10);
  if (name)
    sqlite3_bind_int64(s, 11, rec_string(r, name));
  else
    sqlite3_bind_null(s, 11);
  CHECK_EQ_INT(sqlite3_step(s), SQLITE_DONE);
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
}

/* A frame from one node to another: the send and, when recv_t > 0, the
 * receive, each with its own copy of the frame. */
static void rec_msg(rec *r, int from, int to, int type, uint64_t id,
                    int64_t send_t, int64_t recv_t) {
  rec_event(r, from, 20, send_t, to, 100 + to, type, 40, rec_frame(r, type, id),
            NULL);
  if (recv_t > 0)
    rec_event(r, to, 1, recv_t, from, 200 + from, type, 40,
              rec_frame(r, type, id), NULL);
}

static void rec_close(rec *r) {
  exec_sql(r->db, "COMMIT");
  sqlite3_finalize(r->ev);
  sqlite3_finalize(r->str);
  sqlite3_finalize(r->strid);
  sqlite3_finalize(r->pl);
  CHECK_EQ_INT(sqlite3_close(r->db), SQLITE_OK);
}

static char *read_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)n + 1);
  if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
    free(buf);
    buf = NULL;
  }
  if (buf)
    buf[n] = 0;
  fclose(f);
  return buf;
}

static const char *jstr(const cJSON *o, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

static double jnum(const cJSON *o, const char *key, double dflt) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

static int64_t to_ns(double us) {
  return (int64_t)llround(us * 1000.0);
}

/* The async id of a b/e event ("id2.local", else "id") as text. */
static void async_id(const cJSON *ev, char *buf, size_t n) {
  const cJSON *id2 = cJSON_GetObjectItemCaseSensitive(ev, "id2");
  const cJSON *id = id2 ? cJSON_GetObjectItemCaseSensitive(id2, "local")
                        : cJSON_GetObjectItemCaseSensitive(ev, "id");
  if (cJSON_IsString(id))
    snprintf(buf, n, "%s", id->valuestring);
  else if (cJSON_IsNumber(id))
    snprintf(buf, n, "%.0f", id->valuedouble);
  else
    snprintf(buf, n, "?");
}

typedef struct slice {
  double pid, tid;
  int64_t start, end;
} slice;

static int slice_cmp(const void *a, const void *b) {
  const slice *p = a, *q = b;
  if (p->pid != q->pid)
    return p->pid < q->pid ? -1 : 1;
  if (p->tid != q->tid)
    return p->tid < q->tid ? -1 : 1;
  return (p->start > q->start) - (p->start < q->start);
}

/* What check_trace found, for scenario-specific checks. */
typedef struct summary {
  int b, e, unfinished, flows, x, overlaps, counters, instants;
} summary;

/* The structural checks every export must pass: an object with a
 * traceEvents array, numeric ts >= 0, each b closed by one e with the same
 * cat, id and name, X slices that never overlap on one (pid, tid), flows
 * as s/f pairs whose ends sit on an X slice of the same track. */
static void check_trace(const cJSON *root, summary *sum) {
  memset(sum, 0, sizeof *sum);
  CHECK(cJSON_IsObject(root));
  const cJSON *evs = cJSON_GetObjectItemCaseSensitive(root, "traceEvents");
  CHECK(cJSON_IsArray(evs));
  CHECK_STR_EQ(jstr(root, "displayTimeUnit"), "ns");
  CHECK(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(root, "otherData")));
  int n = cJSON_GetArraySize(evs);
  slice *xs = calloc((size_t)n + 1, sizeof *xs);
  int nx = 0, bad_ts = 0, bad_ph = 0;
  const cJSON *ev;
  cJSON_ArrayForEach(ev, evs) {
    const char *ph = jstr(ev, "ph");
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(ev, "ts");
    if (!ph || !cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(ev, "pid")))
      bad_ph++;
    if (!cJSON_IsNumber(ts) || ts->valuedouble < 0)
      bad_ts++;
    if (!ph)
      continue;
    if (strcmp(ph, "X") == 0) {
      const cJSON *dur = cJSON_GetObjectItemCaseSensitive(ev, "dur");
      CHECK(cJSON_IsNumber(dur) && dur->valuedouble >= 0);
      xs[nx].pid = jnum(ev, "pid", -1);
      xs[nx].tid = jnum(ev, "tid", -1);
      xs[nx].start = to_ns(jnum(ev, "ts", 0));
      xs[nx].end = xs[nx].start + to_ns(jnum(ev, "dur", 0));
      nx++;
    } else if (strcmp(ph, "b") == 0) {
      sum->b++;
    } else if (strcmp(ph, "e") == 0) {
      sum->e++;
      const cJSON *a = cJSON_GetObjectItemCaseSensitive(ev, "args");
      if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "unfinished")))
        sum->unfinished++;
    } else if (strcmp(ph, "C") == 0) {
      sum->counters++;
    } else if (strcmp(ph, "i") == 0) {
      sum->instants++;
    }
  }
  CHECK_EQ_INT(bad_ts, 0);
  CHECK_EQ_INT(bad_ph, 0);
  sum->x = nx;

  /* Timestamps never go back on one (pid, tid), metadata aside. */
  int backwards = 0;
  const cJSON *e1;
  cJSON_ArrayForEach(e1, evs) {
    const char *ph = jstr(e1, "ph");
    if (!ph || strcmp(ph, "M") == 0)
      continue;
    for (const cJSON *e2 = e1->next; e2; e2 = e2->next) {
      if (jstr(e2, "ph") && strcmp(jstr(e2, "ph"), "M") != 0 &&
          jnum(e2, "pid", -1) == jnum(e1, "pid", -2) &&
          jnum(e2, "tid", -1) == jnum(e1, "tid", -2)) {
        if (to_ns(jnum(e2, "ts", 0)) < to_ns(jnum(e1, "ts", 0)))
          backwards++;
        break;
      }
    }
  }
  CHECK_EQ_INT(backwards, 0);

  /* b/e: each b has exactly one e with the same cat, id and name (and
   * pid, since ids are process-local), not before it. */
  int unpaired = 0;
  cJSON_ArrayForEach(ev, evs) {
    const char *ph = jstr(ev, "ph");
    if (!ph || strcmp(ph, "b") != 0)
      continue;
    char id[128], id2[128];
    async_id(ev, id, sizeof id);
    int matches = 0;
    const cJSON *e2;
    cJSON_ArrayForEach(e2, evs) {
      const char *ph2 = jstr(e2, "ph");
      if (!ph2 || strcmp(ph2, "e") != 0)
        continue;
      async_id(e2, id2, sizeof id2);
      if (strcmp(id, id2) == 0 && jnum(ev, "pid", -1) == jnum(e2, "pid", -2) &&
          jstr(ev, "cat") && jstr(e2, "cat") &&
          strcmp(jstr(ev, "cat"), jstr(e2, "cat")) == 0 && jstr(ev, "name") &&
          jstr(e2, "name") && strcmp(jstr(ev, "name"), jstr(e2, "name")) == 0 &&
          jnum(e2, "ts", -1) >= jnum(ev, "ts", 0))
        matches++;
    }
    if (matches != 1)
      unpaired++;
  }
  CHECK_EQ_INT(unpaired, 0);
  CHECK_EQ_INT(sum->b, sum->e);

  /* X slices never overlap on one track. */
  qsort(xs, (size_t)nx, sizeof *xs, slice_cmp);
  for (int i = 1; i < nx; i++)
    if (xs[i].pid == xs[i - 1].pid && xs[i].tid == xs[i - 1].tid &&
        xs[i].start < xs[i - 1].end)
      sum->overlaps++;
  CHECK_EQ_INT(sum->overlaps, 0);

  /* Flows: one s and one f per id, same cat and name; each end sits on an
   * X slice of its track (the slice it binds to). */
  int bad_flows = 0;
  cJSON_ArrayForEach(ev, evs) {
    const char *ph = jstr(ev, "ph");
    if (!ph || (strcmp(ph, "s") != 0 && strcmp(ph, "f") != 0))
      continue;
    bool start = strcmp(ph, "s") == 0;
    if (!start && !(jstr(ev, "bp") && strcmp(jstr(ev, "bp"), "e") == 0))
      bad_flows++;
    int64_t t = to_ns(jnum(ev, "ts", -1));
    bool bound = false;
    for (int i = 0; i < nx && !bound; i++)
      bound = xs[i].pid == jnum(ev, "pid", -1) &&
              xs[i].tid == jnum(ev, "tid", -1) && xs[i].start <= t &&
              t <= xs[i].end;
    if (!bound)
      bad_flows++;
    if (!start)
      continue;
    sum->flows++;
    int ends = 0;
    const cJSON *e2;
    cJSON_ArrayForEach(e2, evs) {
      const char *ph2 = jstr(e2, "ph");
      if (ph2 && strcmp(ph2, "f") == 0 &&
          jnum(e2, "id", -1) == jnum(ev, "id", -2) && jstr(e2, "name") &&
          jstr(ev, "name") && strcmp(jstr(e2, "name"), jstr(ev, "name")) == 0 &&
          jstr(e2, "cat") && jstr(ev, "cat") &&
          strcmp(jstr(e2, "cat"), jstr(ev, "cat")) == 0)
        ends++;
    }
    if (ends != 1)
      bad_flows++;
  }
  int nf = 0;
  cJSON_ArrayForEach(ev, evs) {
    const char *ph = jstr(ev, "ph");
    nf += ph && strcmp(ph, "f") == 0;
  }
  CHECK_EQ_INT(nf, sum->flows);
  CHECK_EQ_INT(bad_flows, 0);
  free(xs);
}

/* The first event with this ph and name (NULL = any name). */
static const cJSON *find_event(const cJSON *root, const char *ph,
                               const char *name) {
  const cJSON *evs = cJSON_GetObjectItemCaseSensitive(root, "traceEvents");
  const cJSON *ev;
  cJSON_ArrayForEach(ev, evs) {
    if (jstr(ev, "ph") && strcmp(jstr(ev, "ph"), ph) == 0 &&
        (!name || (jstr(ev, "name") && strcmp(jstr(ev, "name"), name) == 0)))
      return ev;
  }
  return NULL;
}

static int count_events(const cJSON *root, const char *ph, const char *cat,
                        double pid) {
  const cJSON *evs = cJSON_GetObjectItemCaseSensitive(root, "traceEvents");
  const cJSON *ev;
  int n = 0;
  cJSON_ArrayForEach(ev, evs) {
    if (jstr(ev, "ph") && strcmp(jstr(ev, "ph"), ph) == 0 &&
        (!cat || (jstr(ev, "cat") && strcmp(jstr(ev, "cat"), cat) == 0)) &&
        (pid < 0 || jnum(ev, "pid", -1) == pid))
      n++;
  }
  return n;
}

/* process_name metadata for pid, NULL when missing. */
static const char *process_name(const cJSON *root, double pid) {
  const cJSON *evs = cJSON_GetObjectItemCaseSensitive(root, "traceEvents");
  const cJSON *ev;
  cJSON_ArrayForEach(ev, evs) {
    if (jstr(ev, "ph") && strcmp(jstr(ev, "ph"), "M") == 0 &&
        jstr(ev, "name") && strcmp(jstr(ev, "name"), "process_name") == 0 &&
        jnum(ev, "pid", -1) == pid)
      return jstr(cJSON_GetObjectItemCaseSensitive(ev, "args"), "name");
  }
  return NULL;
}

/* Exports db to out and parses the result (NULL on failure). */
static cJSON *export_parse(const char *db, const char *out, char **text) {
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_trace_export_chrome(db, out, &err);
  if (rc)
    fprintf(stderr, "export failed: %s\n", drpc_error_message(&err));
  CHECK_EQ_INT(rc, 0);
  drpc_error_clear(&err);
  char *buf = read_file(out);
  CHECK(buf != NULL);
  cJSON *root = buf ? cJSON_Parse(buf) : NULL;
  CHECK(root != NULL);
  if (text)
    *text = buf;
  else
    free(buf);
  return root;
}

/* ---- the scenario ------------------------------------------------------- */

/* Three workers w0, w1, w2 (times in ns; the first event is at 1000):
 * w0 -> w1 rpc_sync#echo (request 1) and w2 -> w1 rpc_async#aten::add
 * (also request 1: request ids are per caller) with overlapping jobs on
 * w1, a partition and a crash, an unfinished call w0 -> w2, a call that
 * times out, and bad rows. */
static void build_scenario(const char *path) {
  rec r;
  rec_open(&r, path);
  rec_run(&r, 1, 3, "echo");
  for (int i = 0; i < 3; i++) {
    char name[16];
    snprintf(name, sizeof name, "w%d", i);
    rec_event(&r, i, 7, 1000, -1, 0, 0, 0, -1, name);
  }
  /* w0 -> w1 echo: the send in the same ns as the begin. */
  rec_event(&r, 0, 40, 2000, 1, 1, 5000, 0, -1, "rpc_sync#echo");
  rec_msg(&r, 0, 1, DRPC_MSG_CALL, 1, 2000, 3000);
  rec_event(&r, 1, 24, 3000, 0, 1, 0, 0, -1, "echo");
  /* w2 -> w1 add, request 1 too. */
  rec_event(&r, 2, 40, 2500, 1, 1, 0, 0, -1, "rpc_async#aten::add");
  rec_msg(&r, 2, 1, DRPC_MSG_CALL, 1, 2500, 3200);
  rec_event(&r, 1, 24, 3200, 2, 1, 0, 0, -1, "aten::add");
  /* echo finishes first, add later: the jobs overlap on w1. */
  rec_event(&r, 1, 6, 4000, 0, 1, 0, 0, -1, NULL);
  rec_msg(&r, 1, 0, DRPC_MSG_RESPONSE, 1, 4000, 4500);
  rec_event(&r, 0, 41, 4500, 1, 1, 0, 0, -1, NULL);
  rec_event(&r, 1, 6, 5000, 2, 1, 1, 0, -1, NULL);
  rec_msg(&r, 1, 2, DRPC_MSG_ERROR, 1, 5000, 6000);
  rec_event(&r, 2, 41, 6000, 1, 1, -19, 0, -1, NULL);
  /* A third job on w1 after both: reuses a lane. Its done event names no
   * caller and still matches. */
  rec_event(&r, 1, 24, 6500, 0, 9, 0, 0, -1, "echo");
  rec_event(&r, 1, 6, 6600, -1, 9, 0, 0, -1, NULL);
  /* Faults. */
  rec_event(&r, 0, 70, 7000, 2, 0, 0, 0, -1, "partition");
  rec_event(&r, 1, 70, 7100, -1, 0, 0, 0, -1, "crash");
  /* The simulator's link fault: node -1, node masks in xid and aux. */
  rec_event(&r, -1, 70, 7200, -1, 0x2, 0x5, 0, -1, "clog");
  /* w0 -> w2 never answered (and the frame is lost). */
  rec_event(&r, 0, 40, 8000, 2, 2, 1000, 0, -1, "rpc_sync#echo");
  rec_msg(&r, 0, 2, DRPC_MSG_CALL, 2, 8000, 0);
  /* w2 -> w0 times out. */
  rec_event(&r, 2, 40, 8500, 0, 2, 100, 0, -1, "rpc_sync#slow");
  rec_msg(&r, 2, 0, DRPC_MSG_CALL, 2, 8500, 8600);
  rec_event(&r, 2, 41, 9000, 0, 2, DRPC_ETIMEOUT, 0, -1, NULL);
  /* Profile slices that overlap. */
  rec_event(&r, 0, 80, 2100, -1, 0, 1000, 0, -1, "serialize");
  rec_event(&r, 0, 80, 2200, -1, 0, 100, 0, -1, "hash");
  /* A log line with characters that need escaping and invalid UTF-8. */
  static const char line[] = "quote \" backslash \\ tab \t nl \n bad \xff\xfe "
                             "ok \xc3\xa9";
  rec_event(&r, 0, 60, 9100, -1, 0, 2, 0, rec_blob(&r, line, sizeof line - 1),
            NULL);
  /* Bad rows: a missing payload row, a short payload, no time, no name
   * string, an unknown kind, a name with quotes. */
  rec_event(&r, 0, 20, 9150, 1, 3, DRPC_MSG_CALL, 40, -1, NULL);
  rec_event(&r, 1, 1, 9200, 0, 3, DRPC_MSG_CALL, 40, 99999, NULL);
  rec_event(&r, 1, 1, 9300, 0, 3, DRPC_MSG_CALL, 40, rec_blob(&r, "DRPC", 4),
            NULL);
  rec_event(&r, 1, 20, 9300, 0, 3, DRPC_MSG_CALL, 40, rec_blob(&r, "", 0),
            NULL);
  exec_sql(r.db, "INSERT INTO events(run, node, seq, kind, t_ns) "
                 "VALUES (1, 1, 99, 4, NULL)");
  exec_sql(r.db, "INSERT INTO events(run, node, seq, kind, t_ns, name) "
                 "VALUES (1, 2, 99, 40, 9400, 424242)");
  exec_sql(r.db, "INSERT INTO events(run, node, seq, kind, t_ns) "
                 "VALUES (1, NULL, 99, 99, 9450)");
  rec_event(&r, 2, 50, 9500, -1, 77, 3, 0, -1, "weird \"name\" \\ here");
  rec_close(&r);
}

static void test_scenario(void) {
  char db[128], out[128];
  tmp_path(db, sizeof db, "scenario.db");
  tmp_path(out, sizeof out, "scenario.json");
  build_scenario(db);
  char *text = NULL;
  cJSON *root = export_parse(db, out, &text);
  if (!root) {
    free(text);
    return;
  }
  char tmp[160];
  snprintf(tmp, sizeof tmp, "%s.tmp", out);
  CHECK(!file_exists(tmp));
  summary sum;
  check_trace(root, &sum);

  /* One named process per worker (pid = node + 1), plus one for the row
   * with no node. */
  CHECK_STR_EQ(process_name(root, 1), "w0");
  CHECK_STR_EQ(process_name(root, 2), "w1");
  CHECK_STR_EQ(process_name(root, 3), "w2");
  CHECK_STR_EQ(process_name(root, 32769), "simulator");

  /* Spans: five begins (one with a missing name string), one unfinished. */
  CHECK_EQ_INT(sum.b, 5);
  CHECK_EQ_INT(sum.unfinished, 2); /* the lost call and the nameless one */
  const cJSON *echo = find_event(root, "b", "rpc_sync#echo(w0 -> w1)");
  CHECK(echo != NULL);
  CHECK(find_event(root, "b", "rpc_async#aten::add(w2 -> w1)") != NULL);
  CHECK(find_event(root, "b", "rpc(w2 -> ?)") != NULL);
  /* Timestamps: relative to the first event, µs with ns precision. */
  CHECK(strstr(text, "\"ts\":1.000") != NULL);
  CHECK(strstr(text, "\"ts\":1.500") != NULL);
  if (echo) {
    CHECK_EQ_INT(to_ns(jnum(echo, "ts", -1)), 1000);
    CHECK_EQ_INT(jnum(echo, "pid", -1), 1);
  }
  const cJSON *slow_end = find_event(root, "e", "rpc_sync#slow(w2 -> w0)");
  CHECK(slow_end != NULL);
  if (slow_end) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(slow_end, "args");
    CHECK_EQ_INT(jnum(a, "error", 0), DRPC_ETIMEOUT);
    CHECK_STR_EQ(jstr(a, "error_name"), "DRPC_ETIMEOUT");
  }
  const cJSON *lost_end = find_event(root, "e", "rpc_sync#echo(w0 -> w2)");
  CHECK(lost_end != NULL);
  if (lost_end) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(lost_end, "args");
    CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "unfinished")));
    CHECK_EQ_INT(to_ns(jnum(lost_end, "ts", -1)), 9500 - 1000);
  }

  /* Flows: the five frames that arrived (the lost one and the bad rows
   * have none). */
  CHECK_EQ_INT(sum.flows, 5);

  /* Jobs: three on w1, the first two on separate lanes, the third reuses
   * one; they last from execute to done. */
  CHECK_EQ_INT(count_events(root, "X", "job", 2), 3);
  const cJSON *add = find_event(root, "X", "aten::add");
  const cJSON *echo_job = find_event(root, "X", "echo");
  CHECK(add && echo_job);
  if (add && echo_job) {
    CHECK(jnum(add, "tid", 0) != jnum(echo_job, "tid", 0));
    CHECK_EQ_INT(to_ns(jnum(add, "dur", 0)), 1800);
    CHECK_EQ_INT(to_ns(jnum(echo_job, "dur", 0)), 1000);
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(add, "args");
    CHECK_STR_EQ(jstr(a, "result"), "remote result");
  }
  CHECK(find_event(root, "i", "job done (no start)") == NULL);
  CHECK_EQ_INT(count_events(root, "X", "job", -1), 3);
  /* Profile slices overlap in time, so they take two lanes. */
  CHECK_EQ_INT(count_events(root, "X", "profile", 1), 2);

  /* Faults: a global partition and a process-scoped crash. */
  const cJSON *part = find_event(root, "i", "partition(w0 | w2)");
  CHECK(part != NULL);
  if (part)
    CHECK_STR_EQ(jstr(part, "s"), "g");
  const cJSON *clog = find_event(root, "i", "clog(w1 | w0,w2)");
  CHECK(clog != NULL);
  if (clog) {
    CHECK_STR_EQ(jstr(clog, "s"), "g");
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(clog, "args"), "b");
    CHECK_EQ_INT(cJSON_GetArraySize(b), 2);
    CHECK_STR_EQ(cJSON_GetArrayItem(b, 1)->valuestring, "w2");
  }
  const cJSON *crash = find_event(root, "i", "crash(w1)");
  CHECK(crash != NULL);
  if (crash) {
    CHECK_STR_EQ(jstr(crash, "s"), "p");
    CHECK(jnum(crash, "tid", 0) == jnum(part, "tid", 1));
  }

  /* Counters: pending calls per caller go back to 0 once answered. */
  CHECK(sum.counters > 0);
  CHECK(find_event(root, "C", "pending calls") != NULL);
  CHECK(find_event(root, "C", "bytes in flight") != NULL);

  /* Escaping survives the round trip; invalid UTF-8 became U+FFFD. */
  const cJSON *log = find_event(root, "i", "log");
  CHECK(log != NULL);
  if (log) {
    const char *t = jstr(cJSON_GetObjectItemCaseSensitive(log, "args"), "text");
    CHECK_CONTAINS(t, "quote \" backslash \\ tab \t nl \n bad ");
    CHECK_CONTAINS(t, "\xef\xbf\xbd");
    CHECK_CONTAINS(t, "ok \xc3\xa9");
  }
  CHECK(find_event(root, "i", "rref weird \"name\" \\ here") != NULL);
  CHECK(find_event(root, "i", "event kind 99") != NULL);

  /* Run info travels in otherData. */
  const cJSON *od = cJSON_GetObjectItemCaseSensitive(root, "otherData");
  const cJSON *runs = cJSON_GetObjectItemCaseSensitive(od, "runs");
  CHECK_EQ_INT(cJSON_GetArraySize(runs), 1);
  CHECK_STR_EQ(jstr(cJSON_GetArrayItem(runs, 0), "scenario"), "echo");
  /* The seed is a u64 (stored as int64 -1): a string, not -1. */
  CHECK_STR_EQ(jstr(cJSON_GetArrayItem(runs, 0), "seed"),
               "18446744073709551615");
  CHECK_EQ_INT(jnum(od, "skipped_rows", -1), 1);
  cJSON_Delete(root);
  free(text);
}

/* ---- bad input ---------------------------------------------------------- */

static void expect_failure(const char *db, int code, const char *needle) {
  char out[128];
  tmp_path(out, sizeof out, "bad.json");
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_trace_export_chrome(db, out, &err), code);
  CHECK_EQ_INT(err.code, code);
  CHECK_CONTAINS(drpc_error_message(&err), needle);
  CHECK_CONTAINS(drpc_error_message(&err), db);
  CHECK(!file_exists(out));
  char tmp[160];
  snprintf(tmp, sizeof tmp, "%s.tmp", out);
  CHECK(!file_exists(tmp));
  drpc_error_clear(&err);
}

static void test_bad_files(void) {
  char path[128];
  tmp_path(path, sizeof path, "missing.db");
  expect_failure(path, DRPC_ENOTFOUND, "No such file");

  tmp_path(path, sizeof path, "text.db");
  FILE *f = fopen(path, "w");
  for (int i = 0; i < 64; i++)
    fputs("this is not a database at all\n", f);
  fclose(f);
  expect_failure(path, DRPC_EPROTO, "not an SQLite database");

  tmp_path(path, sizeof path, "empty.db");
  fclose(fopen(path, "w"));
  expect_failure(path, DRPC_EPROTO, "no events table");

  sqlite3 *db;
  tmp_path(path, sizeof path, "v2.db");
  sqlite3_open(path, &db);
  exec_sql(db, SCHEMA_V1);
  exec_sql(db, "PRAGMA user_version = 2");
  sqlite3_close(db);
  expect_failure(path, DRPC_EVERSION, "schema version 2");

  tmp_path(path, sizeof path, "noevents.db");
  sqlite3_open(path, &db);
  exec_sql(db, "CREATE TABLE runs(id INTEGER PRIMARY KEY);"
               "PRAGMA user_version = 1");
  sqlite3_close(db);
  expect_failure(path, DRPC_EPROTO, "no events table");

  tmp_path(path, sizeof path, "nocolumn.db");
  sqlite3_open(path, &db);
  exec_sql(db, "CREATE TABLE events(id INTEGER PRIMARY KEY, run, node, "
               "seq, kind, t_ns);"
               "PRAGMA user_version = 1");
  sqlite3_close(db);
  expect_failure(path, DRPC_EPROTO, "no such column");

  /* A directory, an unwritable output. */
  expect_failure(tmpdir, DRPC_EPROTO, "is a directory");
  drpc_error err = DRPC_ERROR_INIT;
  tmp_path(path, sizeof path, "ok.db");
  sqlite3_open(path, &db);
  exec_sql(db, SCHEMA_V1);
  sqlite3_close(db);
  CHECK_EQ_INT(
      drpc_trace_export_chrome(path, "/nonexistent/dir/out.json", &err),
      DRPC_EIO);
  CHECK_CONTAINS(drpc_error_message(&err), "/nonexistent/dir/out.json");
  drpc_error_clear(&err);
  CHECK_EQ_INT(drpc_trace_export_chrome(NULL, "x", &err), DRPC_EINVAL);
  drpc_error_clear(&err);
  CHECK_EQ_INT(drpc_trace_export_chrome(path, path, &err), DRPC_EINVAL);
  CHECK_CONTAINS(drpc_error_message(&err), "replace the recording");
  drpc_error_clear(&err);
  /* err NULL is allowed. */
  CHECK_EQ_INT(drpc_trace_export_chrome("/nonexistent.db", "x", NULL),
               DRPC_ENOTFOUND);
}

/* A recording with no events (and no optional tables) is a valid, empty
 * trace. */
static void test_empty(void) {
  char path[128], out[128];
  tmp_path(path, sizeof path, "bare.db");
  tmp_path(out, sizeof out, "bare.json");
  sqlite3 *db;
  sqlite3_open(path, &db);
  exec_sql(db, "CREATE TABLE events(id INTEGER PRIMARY KEY, run INTEGER, "
               "node INTEGER, seq INTEGER, kind INTEGER, t_ns INTEGER, peer "
               "INTEGER, xid INTEGER, aux INTEGER, size INTEGER, payload "
               "INTEGER, name INTEGER, hash INTEGER);"
               "PRAGMA user_version = 1");
  sqlite3_close(db);
  cJSON *root = export_parse(path, out, NULL);
  summary sum;
  if (root) {
    check_trace(root, &sum);
    CHECK_EQ_INT(cJSON_GetArraySize(
                     cJSON_GetObjectItemCaseSensitive(root, "traceEvents")),
                 0);
  }
  cJSON_Delete(root);

  /* Events but no payloads/strings/nodes tables: frames have no arrows,
   * names fall back to worker<id>. */
  sqlite3_open(path, &db);
  exec_sql(db, "INSERT INTO events(run, node, seq, kind, t_ns, peer, xid, "
               "aux, size, payload, name) VALUES (1, 4, 0, 40, 5, 5, 1, 0, "
               "0, NULL, 7), (1, 4, 1, 20, 6, 5, 1, 2, 10, 3, NULL)");
  sqlite3_close(db);
  root = export_parse(path, out, NULL);
  if (root) {
    check_trace(root, &sum);
    CHECK_STR_EQ(process_name(root, 5), "worker4");
    CHECK(find_event(root, "b", "rpc(worker4 -> worker5)") != NULL);
    CHECK(find_event(root, "X", "send CALL") != NULL);
    CHECK_EQ_INT(sum.flows, 0);
  }
  cJSON_Delete(root);
}

/* Two simulated runs in one file with the same nodes stay apart; a run
 * can be picked. */
static void test_runs(void) {
  char path[128], out[128];
  tmp_path(path, sizeof path, "tworuns.db");
  tmp_path(out, sizeof out, "tworuns.json");
  rec r;
  rec_open(&r, path);
  for (int run = 1; run <= 2; run++) {
    rec_run(&r, run, 2, run == 1 ? "first" : "second");
    rec_event(&r, 0, 40, 100, 1, 1, 0, 0, -1, "rpc_sync#echo");
    rec_msg(&r, 0, 1, DRPC_MSG_CALL, 1, 100, 200);
    rec_msg(&r, 1, 0, DRPC_MSG_RESPONSE, 1, 300, 400);
    rec_event(&r, 0, 41, 400, 1, 1, 0, 0, -1, NULL);
  }
  rec_close(&r);
  cJSON *root = export_parse(path, out, NULL);
  summary sum;
  if (root) {
    check_trace(root, &sum);
    CHECK_STR_EQ(process_name(root, 1), "w0 (run 1)");
    CHECK_STR_EQ(process_name(root, 2), "w1 (run 1)");
    CHECK_STR_EQ(process_name(root, 3), "w0 (run 2)");
    CHECK_EQ_INT(sum.b, 2);
    CHECK_EQ_INT(sum.unfinished, 0);
    CHECK_EQ_INT(sum.flows, 4);
  }
  cJSON_Delete(root);

  /* Only run 2, through the open-connection variant. */
  sqlite3 *db;
  sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL);
  FILE *f = fopen(out, "w");
  drpc_trace_export_opts o;
  drpc_trace_export_opts_default(&o);
  o.run = 2;
  drpc_trace_export_stats st;
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_trace_export_chrome_db(db, f, &o, &st, &err), 0);
  fclose(f);
  CHECK_EQ_INT(st.events, 6);
  CHECK_EQ_INT(st.spans, 1);
  CHECK_EQ_INT(st.flows, 2);
  char *buf = read_file(out);
  root = buf ? cJSON_Parse(buf) : NULL;
  CHECK(root != NULL);
  if (root) {
    check_trace(root, &sum);
    CHECK_STR_EQ(process_name(root, 1), "w0");
    const cJSON *runs = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(root, "otherData"), "runs");
    CHECK_EQ_INT(cJSON_GetArraySize(runs), 1);
    CHECK_STR_EQ(jstr(cJSON_GetArrayItem(runs, 0), "scenario"), "second");
  }
  cJSON_Delete(root);
  free(buf);
  /* A run that is not there. */
  o.run = 7;
  f = fopen(out, "w");
  CHECK_EQ_INT(drpc_trace_export_chrome_db(db, f, &o, NULL, &err),
               DRPC_ENOTFOUND);
  CHECK_CONTAINS(drpc_error_message(&err), "run 7");
  fclose(f);
  drpc_error_clear(&err);
  sqlite3_close(db);
}

/* A simulated run whose nodes' clocks are offset by seconds and drift
 * (nodes[] in the run's config): times map back to the global clock, so
 * receives follow sends and the nodes line up; raw_clocks keeps them. */
#define SIM_BASE ((int64_t)1000000000000)
static const int64_t clock_off[2] = {-45351024052, 24430869825};
static const int64_t clock_drift[2] = {-54, 100};

/* Node time for global time g, as the simulator computes it. */
static int64_t node_time(int node, int64_t g) {
  int64_t rel = g - SIM_BASE;
  return g + clock_off[node] + rel / 1000000 * clock_drift[node] +
         rel % 1000000 * clock_drift[node] / 1000000;
}

/* with_base: the config names the clocks' epoch (exact); without, the
 * exporter estimates it (off by the first event's delay times the drift:
 * 1 ms at 54 and 100 ppm here). */
static void clock_model(bool with_base) {
  char path[128], out[128];
  tmp_path(path, sizeof path, "clocks.db");
  tmp_path(out, sizeof out, "clocks.json");
  int64_t tol = with_base ? 1 : 200;
  rec r;
  rec_open(&r, path);
  char sql[512];
  snprintf(sql, sizeof sql,
           "INSERT INTO runs(id, backend, config) VALUES (1, 'sim', '{%s"
           "\"nodes\":[{\"clock_offset_ns\":\"-45351024052\",\"drift_ppm\":"
           "-54},{\"clock_offset_ns\":\"24430869825\",\"drift_ppm\":100}]}');"
           "INSERT INTO nodes VALUES (1, 0, 'w0'), (1, 1, 'w1')",
           with_base ? "\"clock_base_ns\":\"1000000000000\"," : "");
  exec_sql(r.db, sql);
  /* Global times: start at +1 ms; the call goes out 2 s later and each
   * hop takes 80 us; a fault by the simulator (global clock) between. */
  int64_t g0 = SIM_BASE + 1000000, g1 = g0 + 2000000000;
  rec_event(&r, 0, 7, node_time(0, g0), -1, 0, 0, 0, -1, "w0");
  rec_event(&r, 1, 7, node_time(1, g0 + 500), -1, 0, 0, 0, -1, "w1");
  rec_event(&r, 0, 40, node_time(0, g1), 1, 1, 0, 0, -1, "rpc_sync#echo");
  rec_msg(&r, 0, 1, DRPC_MSG_CALL, 1, node_time(0, g1),
          node_time(1, g1 + 80000));
  rec_event(&r, -1, 70, 1002000040000, -1, 0, 0, 0, -1, "partition");
  rec_msg(&r, 1, 0, DRPC_MSG_RESPONSE, 1, node_time(1, g1 + 90000),
          node_time(0, g1 + 170000));
  rec_event(&r, 0, 41, node_time(0, g1 + 170000), 1, 1, 0, 0, -1, NULL);
  rec_close(&r);

  char *text = NULL;
  cJSON *root = export_parse(path, out, &text);
  summary sum;
  if (root) {
    check_trace(root, &sum);
    CHECK_EQ_INT(sum.flows, 2);
    const cJSON *od = cJSON_GetObjectItemCaseSensitive(root, "otherData");
    CHECK_CONTAINS(jstr(od, "clocks"), "global");
    CHECK(llabs((int64_t)jnum(od, "t0_ns", 0) - g0) <= tol);
    int64_t t0 = (int64_t)jnum(od, "t0_ns", 0);
    const cJSON *b = find_event(root, "b", "rpc_sync#echo(w0 -> w1)");
    const cJSON *e = find_event(root, "e", "rpc_sync#echo(w0 -> w1)");
    const cJSON *recv = find_event(root, "X", "recv CALL");
    const cJSON *fault = find_event(root, "i", "partition");
    CHECK(b && e && recv && fault);
    if (b && e && recv && fault) {
      CHECK(llabs(to_ns(jnum(b, "ts", 0)) + t0 - g1) <= tol);
      CHECK(llabs(to_ns(jnum(recv, "ts", 0)) + t0 - (g1 + 80000)) <= tol);
      CHECK(llabs(to_ns(jnum(e, "ts", 0)) + t0 - (g1 + 170000)) <= tol);
      /* The simulator's own events are on the global clock already. */
      CHECK_EQ_INT(to_ns(jnum(fault, "ts", 0)) + t0, 1002000040000);
    }
  }
  cJSON_Delete(root);
  free(text);

  /* raw_clocks: as recorded, w1 is 70 s after w0. */
  sqlite3 *db;
  sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL);
  FILE *f = fopen(out, "w");
  drpc_trace_export_opts o;
  drpc_trace_export_opts_default(&o);
  o.raw_clocks = true;
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_trace_export_chrome_db(db, f, &o, NULL, &err), 0);
  fclose(f);
  sqlite3_close(db);
  char *buf = read_file(out);
  root = buf ? cJSON_Parse(buf) : NULL;
  CHECK(root != NULL);
  if (root) {
    check_trace(root, &sum);
    const cJSON *od = cJSON_GetObjectItemCaseSensitive(root, "otherData");
    CHECK_STR_EQ(jstr(od, "clocks"), "as recorded");
    const cJSON *recv = find_event(root, "X", "recv CALL");
    CHECK(recv && jnum(recv, "ts", 0) > 60e6);
  }
  cJSON_Delete(root);
  free(buf);
}

static void test_clock_model(void) {
  clock_model(true);
  clock_model(false);
}

/* ---- size ---------------------------------------------------------------- */

/* 100,000 events from 8 workers calling each other (begin, send, receive,
 * execute, done, response send/receive, end, ~12 events a call), exported
 * and checked. Prints the time. */
static void test_large(void) {
  char path[128], out[128];
  tmp_path(path, sizeof path, "large.db");
  tmp_path(out, sizeof out, "large.json");
  rec r;
  rec_open(&r, path);
  rec_run(&r, 1, 8, "large");
  uint64_t rng = 0x9e3779b97f4a7c15ull;
  int64_t t = 1000;
  int nevents = 0;
  uint64_t req[8] = {0};
  while (nevents < 100000) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    int a = (int)(rng >> 33) % 8, b = (int)((rng >> 40) % 7);
    b = b >= a ? b + 1 : b;
    uint64_t id = ++req[a];
    int64_t lat = 1000 + (int64_t)(rng >> 50);
    rec_event(&r, a, 40, t, b, (int64_t)id, 1000, 0, -1, "rpc_sync#echo");
    rec_msg(&r, a, b, DRPC_MSG_CALL, id, t, t + lat);
    rec_event(&r, b, 24, t + lat, a, (int64_t)id, 0, 0, -1, "echo");
    rec_event(&r, b, 6, t + 3 * lat, a, (int64_t)id, 0, 0, -1, NULL);
    rec_msg(&r, b, a, DRPC_MSG_RESPONSE, id, t + 3 * lat, t + 4 * lat);
    rec_event(&r, a, 41, t + 4 * lat, b, (int64_t)id, 0, 0, -1, NULL);
    nevents += 8;
    t += 500;
  }
  rec_close(&r);
  double t0 = now_s();
  cJSON *root = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_trace_export_chrome(path, out, &err), 0);
  double dt = now_s() - t0;
  struct stat sb;
  stat(out, &sb);
  printf("exported %d events in %.3f s (%.1f MB)\n", nevents, dt,
         (double)sb.st_size / 1e6);
  char *buf = read_file(out);
  root = buf ? cJSON_Parse(buf) : NULL;
  CHECK(root != NULL);
  if (root) {
    /* The full pairwise check is quadratic; count pairs instead. */
    CHECK_EQ_INT(count_events(root, "b", NULL, -1), nevents / 8);
    CHECK_EQ_INT(count_events(root, "e", NULL, -1), nevents / 8);
    CHECK_EQ_INT(count_events(root, "s", NULL, -1), nevents / 4);
    CHECK_EQ_INT(count_events(root, "f", NULL, -1), nevents / 4);
    CHECK_EQ_INT(count_events(root, "X", "job", -1), nevents / 8);
  }
  cJSON_Delete(root);
  free(buf);
}

int main(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/drpc_export_XXXXXX");
  if (!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    return 1;
  }
  RUN(test_scenario);
  RUN(test_bad_files);
  RUN(test_empty);
  RUN(test_runs);
  RUN(test_clock_model);
  RUN(test_large);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", tmpdir);
  return test_finish();
}
