/* The recording reader: validates a file against schema v1 before trusting
 * it and walks its events, reporting bad rows instead of crashing. */
#include "drpc/trace.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Most rows the nodes table may hold: one per int16 id. */
#define MAX_NODES 65536

/* One row of the strings table. */
typedef struct trace_string {
  int64_t id;
  char *text; /* NULL when the row's text is NULL */
} trace_string;

struct drpc_trace {
  sqlite3 *db;
  char *path;
  int64_t run;
  /* The strings table, read whole at the first cursor and sorted by id:
   * events name few distinct strings, and joining strings to every event
   * row cost ~10% of a replay's reading. */
  trace_string *strings;
  size_t nstrings;
  bool strings_read;
  /* A node's cursor statement, reset and kept for the next node's cursor:
   * preparing it cost as much as reading ~40 events. */
  sqlite3_stmt *node_st;
};

struct drpc_trace_cursor {
  drpc_trace *t;
  sqlite3_stmt *st;
  bool node; /* st reads one node: it goes back to t->node_st */
};

/* ---- kinds ---------------------------------------------------------- */

static const struct {
  int kind;
  const char *name, *dir;
} KINDS[] = {
    {DRPC_EV_IN_FRAME, "in_frame", "in"},
    {DRPC_EV_IN_CONN_OPEN, "in_conn_open", "in"},
    {DRPC_EV_IN_CONN_CLOSED, "in_conn_closed", "in"},
    {DRPC_EV_IN_TIMER, "in_timer", "in"},
    {DRPC_EV_IN_COMMAND, "in_command", "in"},
    {DRPC_EV_IN_JOB_DONE, "in_job_done", "in"},
    {DRPC_EV_IN_START, "in_start", "in"},
    {DRPC_EV_IN_VALUE, "in_value", "in"},
    {DRPC_EV_OUT_SEND, "out_send", "out"},
    {DRPC_EV_OUT_CONNECT, "out_connect", "out"},
    {DRPC_EV_OUT_CLOSE, "out_close", "out"},
    {DRPC_EV_OUT_FUTURE, "out_future", "out"},
    {DRPC_EV_OUT_EXECUTE, "out_execute", "out"},
    {DRPC_EV_OUT_TIMER, "out_timer", "out"},
    {DRPC_EV_RPC_BEGIN, "rpc_begin", "span"},
    {DRPC_EV_RPC_END, "rpc_end", "span"},
    {DRPC_EV_RREF, "rref", "span"},
    {DRPC_EV_LOG, "log", "span"},
    {DRPC_EV_FAULT, "fault", "span"},
    {DRPC_EV_PROFILE, "profile", "span"},
};

const char *drpc_trace_kind_name(int kind) {
  for (size_t i = 0; i < sizeof KINDS / sizeof KINDS[0]; i++)
    if (KINDS[i].kind == kind)
      return KINDS[i].name;
  return NULL;
}

const char *drpc_trace_kind_dir(int kind) {
  for (size_t i = 0; i < sizeof KINDS / sizeof KINDS[0]; i++)
    if (KINDS[i].kind == kind)
      return KINDS[i].dir;
  return NULL;
}

/* ---- errors --------------------------------------------------------- */

/* Maps an SQLite failure while reading path to a drpc error. */
static int sql_error(sqlite3 *db, int rc, const char *path, const char *what,
                     drpc_error *err) {
  const char *msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  switch (rc & 0xff) {
  case SQLITE_NOTADB:
    return drpc_error_set(err, DRPC_ETYPE,
                          "not a drpc recording: %s is not an SQLite database",
                          path);
  case SQLITE_CORRUPT:
  case SQLITE_FORMAT:
  case SQLITE_MISMATCH:
    return drpc_error_set(err, DRPC_EPROTO, "corrupt recording: %s: %s: %s",
                          path, what, msg);
  case SQLITE_NOMEM:
    return drpc_error_set(err, DRPC_ENOMEM, "%s: %s: %s", path, what, msg);
  default:
    return drpc_error_set(err, DRPC_EIO, "cannot read recording %s: %s: %s",
                          path, what, msg);
  }
}

static int corrupt(drpc_error *err, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int corrupt(drpc_error *err, const char *path, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  drpc_error_setv(err, DRPC_EPROTO, fmt, ap);
  va_end(ap);
  drpc_error_prefix(err, "corrupt recording: %s", path);
  return DRPC_EPROTO;
}

/* ---- opening -------------------------------------------------------- */

static uint32_t be32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
         p[3];
}

/* Checks the 100-byte SQLite header against the file before SQLite sees
 * it: a truncated copy would otherwise read as zeroed pages. */
static int check_header(const char *path, drpc_error *err) {
  static const char magic[16] = "SQLite format 3";
  struct stat st;
  if (stat(path, &st) != 0) {
    if (errno == ENOENT)
      return drpc_error_set(err, DRPC_ENOTFOUND, "recording %s does not exist",
                            path);
    return drpc_error_set(err, DRPC_EIO, "cannot open recording %s: %s", path,
                          strerror(errno));
  }
  if (!S_ISREG(st.st_mode))
    return drpc_error_set(err, DRPC_ETYPE,
                          "not a drpc recording: %s is not a regular file",
                          path);
  if (st.st_size == 0)
    return drpc_error_set(err, DRPC_ETYPE,
                          "not a drpc recording: %s is an empty file", path);
  unsigned char h[100];
  FILE *f = fopen(path, "rb");
  if (!f)
    return drpc_error_set(err, DRPC_EIO, "cannot open recording %s: %s", path,
                          strerror(errno));
  size_t n = fread(h, 1, sizeof h, f);
  fclose(f);
  size_t cmp = n < sizeof magic ? n : sizeof magic;
  if (memcmp(h, magic, cmp) != 0)
    return drpc_error_set(err, DRPC_ETYPE,
                          "not a drpc recording: %s is not an SQLite database",
                          path);
  if (n < sizeof h)
    return drpc_error_set(err, DRPC_ETRUNC,
                          "corrupt recording: %s is truncated (%zu bytes, "
                          "shorter than the SQLite header)",
                          path, n);
  uint32_t page = (uint32_t)h[16] << 8 | h[17];
  if (page == 1)
    page = 65536;
  if (page < 512 || (page & (page - 1)) != 0)
    return corrupt(err, path,
                   "page size %u is not a power of two in 512..65536", page);
  /* The page count is valid only when the change counter matches the
   * version-valid-for number (older writers leave it stale). A WAL left
   * by a recorder that crashed mid-checkpoint still holds the pages the
   * file lacks, so then SQLite, not the size, decides. */
  uint32_t pages = be32(h + 28);
  char wal[4096];
  struct stat ws;
  bool has_wal = snprintf(wal, sizeof wal, "%s-wal", path) < (int)sizeof wal &&
                 stat(wal, &ws) == 0 && ws.st_size > 0;
  if (pages && !has_wal && be32(h + 24) == be32(h + 92) &&
      (uint64_t)pages * page > (uint64_t)st.st_size)
    return drpc_error_set(err, DRPC_ETRUNC,
                          "corrupt recording: %s is truncated (%lld bytes, its "
                          "header says %llu)",
                          path, (long long)st.st_size,
                          (unsigned long long)pages * page);
  return 0;
}

/* Runs a one-value query; *found says whether a row came back. */
static int query_text(drpc_trace *t, const char *sql, const char *what,
                      char *buf, size_t n, bool *found, drpc_error *err) {
  sqlite3_stmt *s;
  int rc = sqlite3_prepare_v2(t->db, sql, -1, &s, NULL);
  if (rc != SQLITE_OK)
    return sql_error(t->db, rc, t->path, what, err);
  rc = sqlite3_step(s);
  *found = rc == SQLITE_ROW;
  if (*found) {
    const unsigned char *v = sqlite3_column_text(s, 0);
    snprintf(buf, n, "%s", v ? (const char *)v : "");
  }
  if (rc != SQLITE_ROW && rc != SQLITE_DONE)
    rc = sql_error(t->db, rc, t->path, what, err);
  else
    rc = 0;
  sqlite3_finalize(s);
  return rc;
}

/* Every table v1 reads, with the columns it reads. */
static const struct {
  const char *table, *columns;
} TABLES[] = {
    {"runs", "id, backend, scenario, seed, commit_id, config, started_at, "
             "host, pid"},
    {"nodes", "run, node, name"},
    {"strings", "id, text"},
    {"payloads", "id, hash, size, bytes"},
    {"kinds", "kind, name, dir"},
    {"events", "id, run, node, seq, kind, t_ns, peer, xid, aux, size, "
               "payload, name, hash"},
};
#define NTABLES (sizeof TABLES / sizeof TABLES[0])
#define META_BIT (1u << NTABLES)

/* Sets bit i of *have for each TABLES[i] the file holds, and META_BIT for
 * meta, from one statement (a statement per table cost a parse each). */
static int read_tables(drpc_trace *t, unsigned *have, drpc_error *err) {
  *have = 0;
  sqlite3_stmt *s;
  int rc = sqlite3_prepare_v2(
      t->db, "SELECT name FROM sqlite_master WHERE type='table'", -1, &s, NULL);
  if (rc != SQLITE_OK)
    return sql_error(t->db, rc, t->path, "reading the schema", err);
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    const char *name = (const char *)sqlite3_column_text(s, 0);
    if (name && strcmp(name, "meta") == 0)
      *have |= META_BIT;
    for (size_t i = 0; name && i < NTABLES; i++)
      if (strcmp(name, TABLES[i].table) == 0)
        *have |= 1u << i;
  }
  rc = rc == SQLITE_DONE
           ? 0
           : sql_error(t->db, rc, t->path, "reading the schema", err);
  sqlite3_finalize(s);
  return rc;
}

/* Prepares, and never runs, sql: preparing resolves every name in it. */
static bool resolves(drpc_trace *t, const char *sql) {
  sqlite3_stmt *s;
  int rc = sqlite3_prepare_v2(t->db, sql, -1, &s, NULL);
  sqlite3_finalize(s);
  return rc == SQLITE_OK;
}

/* Checks that every table exists with its columns. One statement names
 * them all, each table in an EXISTS of its own (half the cost of preparing
 * them as joined subqueries); only when it does not resolve are the tables
 * tried one by one, in order, to say which. */
static int check_tables(drpc_trace *t, unsigned have, drpc_error *err) {
  char sql[1024];
  size_t used = 0;
  for (size_t i = 0; i < NTABLES; i++) {
    used += (size_t)snprintf(
        sql + used, sizeof sql - used, "%sEXISTS (SELECT %s FROM %s)",
        i ? " AND " : "SELECT 1 WHERE ", TABLES[i].columns, TABLES[i].table);
    assert(used < sizeof sql); /* TABLES is fixed: ~450 bytes */
  }
  if ((have & (META_BIT - 1)) == META_BIT - 1 && resolves(t, sql))
    return 0;
  for (size_t i = 0; i < NTABLES; i++) {
    if (!(have & 1u << i))
      return corrupt(err, t->path, "no table %s", TABLES[i].table);
    snprintf(sql, sizeof sql, "SELECT %s FROM %s LIMIT 0", TABLES[i].columns,
             TABLES[i].table);
    if (!resolves(t, sql))
      return corrupt(err, t->path, "table %s: %s", TABLES[i].table,
                     sqlite3_errmsg(t->db));
  }
  return corrupt(err, t->path, "the tables do not resolve: %s",
                 sqlite3_errmsg(t->db));
}

static int validate(drpc_trace *t, drpc_error *err) {
  char buf[128];
  bool found;
  int rc = query_text(t, "PRAGMA user_version", "reading the header", buf,
                      sizeof buf, &found, err);
  if (rc)
    return rc;
  long version = found ? strtol(buf, NULL, 10) : 0;
  unsigned have;
  if ((rc = read_tables(t, &have, err)))
    return rc;
  if (!(have & META_BIT))
    return drpc_error_set(err, DRPC_ETYPE,
                          "not a drpc recording: %s is an SQLite database "
                          "without a meta table",
                          t->path);
  if ((rc = query_text(t, "SELECT value FROM meta WHERE key='format'",
                       "reading meta", buf, sizeof buf, &found, err)))
    return rc;
  if (!found || strcmp(buf, DRPC_TRACE_FORMAT) != 0)
    return drpc_error_set(err, DRPC_ETYPE,
                          "not a drpc recording: %s has meta format '%s' "
                          "(expected '%s')",
                          t->path, found ? buf : "(none)", DRPC_TRACE_FORMAT);
  if (version != DRPC_TRACE_SCHEMA)
    return drpc_error_set(err, DRPC_EVERSION,
                          "recording schema version %ld is not supported (this "
                          "build reads %d): %s",
                          version, DRPC_TRACE_SCHEMA, t->path);
  if ((rc = query_text(t, "SELECT value FROM meta WHERE key='schema'",
                       "reading meta", buf, sizeof buf, &found, err)))
    return rc;
  if (!found || strtol(buf, NULL, 10) != DRPC_TRACE_SCHEMA)
    return corrupt(err, t->path,
                   "meta schema '%s' disagrees with user_version %d",
                   found ? buf : "(none)", DRPC_TRACE_SCHEMA);
  if ((rc = check_tables(t, have, err)))
    return rc;
  if ((rc = query_text(t, "SELECT min(id) FROM runs", "reading runs", buf,
                       sizeof buf, &found, err)))
    return rc;
  if (!found || !buf[0])
    return corrupt(err, t->path, "no run");
  t->run = strtoll(buf, NULL, 10);
  return 0;
}

int drpc_trace_open(drpc_trace **out, const char *path, drpc_error *err) {
  if (!out)
    return drpc_error_set(err, DRPC_EINVAL, "out is NULL");
  *out = NULL;
  if (!path)
    return drpc_error_set(err, DRPC_EINVAL, "recording path is NULL");
  int rc = check_header(path, err);
  if (rc)
    return rc;
  drpc_trace *t = calloc(1, sizeof *t);
  if (!t || !(t->path = strdup(path))) {
    free(t);
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory opening %s", path);
  }
  /* One thread uses a trace at a time (trace.h): no SQLite mutexes. */
  rc = sqlite3_open_v2(path, &t->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX,
                       NULL);
  if (rc != SQLITE_OK) {
    rc = sql_error(t->db, rc, path, "opening", err);
    goto fail;
  }
  sqlite3_extended_result_codes(t->db, 1);
  /* A recording is data, not code: refuse schema tricks (triggers or
   * views calling functions) a hostile file might carry. */
  sqlite3_db_config(t->db, SQLITE_DBCONFIG_DEFENSIVE, 1, NULL);
  sqlite3_db_config(t->db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, NULL);
  if ((rc = validate(t, err)))
    goto fail;
  /* Pages mapped rather than read: replay walks whole recordings, and
   * even for a 1 MB one SQLite's page cache took ~200 more page faults
   * (and more time) than the mapping. */
  (void)sqlite3_exec(t->db, "PRAGMA mmap_size=1073741824", NULL, NULL, NULL);
  *out = t;
  return 0;
fail:
  drpc_trace_close(t);
  return rc;
}

void drpc_trace_close(drpc_trace *t) {
  if (!t)
    return;
  for (size_t i = 0; i < t->nstrings; i++)
    free(t->strings[i].text);
  free(t->strings);
  sqlite3_finalize(t->node_st);
  sqlite3_close(t->db);
  free(t->path);
  free(t);
}

sqlite3 *drpc_trace_db(drpc_trace *t) {
  return t ? t->db : NULL;
}

int64_t drpc_trace_run_id(drpc_trace *t) {
  return t ? t->run : 0;
}

/* ---- runs and nodes ------------------------------------------------- */

static int dup_col(sqlite3_stmt *s, int i, char **out) {
  *out = NULL;
  if (sqlite3_column_type(s, i) == SQLITE_NULL)
    return 0;
  const unsigned char *v = sqlite3_column_text(s, i);
  if (!v)
    return -1;
  *out = strdup((const char *)v);
  return *out ? 0 : -1;
}

void drpc_trace_run_info_free(drpc_trace_run_info *ri) {
  if (!ri)
    return;
  free(ri->backend);
  free(ri->scenario);
  free(ri->commit);
  free(ri->config_json);
  free(ri->started_at);
  free(ri->host);
  memset(ri, 0, sizeof *ri);
}

int drpc_trace_run(drpc_trace *t, drpc_trace_run_info *out, drpc_error *err) {
  if (!t || !out)
    return drpc_error_set(err, DRPC_EINVAL, "trace or out is NULL");
  memset(out, 0, sizeof *out);
  sqlite3_stmt *s;
  int rc = sqlite3_prepare_v2(t->db,
                              "SELECT backend, scenario, seed, commit_id, "
                              "config, started_at, host, pid FROM runs "
                              "WHERE id=?1",
                              -1, &s, NULL);
  if (rc != SQLITE_OK)
    return sql_error(t->db, rc, t->path, "reading the run", err);
  sqlite3_bind_int64(s, 1, t->run);
  rc = sqlite3_step(s);
  if (rc != SQLITE_ROW) {
    rc = rc == SQLITE_DONE
             ? corrupt(err, t->path, "run %lld vanished", (long long)t->run)
             : sql_error(t->db, rc, t->path, "reading the run", err);
    sqlite3_finalize(s);
    return rc;
  }
  out->id = t->run;
  out->has_seed = sqlite3_column_type(s, 2) == SQLITE_INTEGER;
  out->seed = (uint64_t)sqlite3_column_int64(s, 2);
  out->has_pid = sqlite3_column_type(s, 7) == SQLITE_INTEGER;
  out->pid = sqlite3_column_int64(s, 7);
  if (dup_col(s, 0, &out->backend) || dup_col(s, 1, &out->scenario) ||
      dup_col(s, 3, &out->commit) || dup_col(s, 4, &out->config_json) ||
      dup_col(s, 5, &out->started_at) || dup_col(s, 6, &out->host)) {
    sqlite3_finalize(s);
    drpc_trace_run_info_free(out);
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory reading the run");
  }
  sqlite3_finalize(s);
  return 0;
}

void drpc_trace_nodes_free(int16_t *ids, char **names, size_t n) {
  for (size_t i = 0; names && i < n; i++)
    free(names[i]);
  free(names);
  free(ids);
}

int drpc_trace_nodes(drpc_trace *t, int16_t **ids, char ***names, size_t *n,
                     drpc_error *err) {
  if (!t || !ids || !names || !n)
    return drpc_error_set(err, DRPC_EINVAL, "an argument is NULL");
  *ids = NULL;
  *names = NULL;
  *n = 0;
  sqlite3_stmt *s;
  int rc = sqlite3_prepare_v2(
      t->db, "SELECT node, name FROM nodes WHERE run=?1 ORDER BY node", -1, &s,
      NULL);
  if (rc != SQLITE_OK)
    return sql_error(t->db, rc, t->path, "reading nodes", err);
  sqlite3_bind_int64(s, 1, t->run);
  size_t cap = 0, cnt = 0;
  int16_t *iv = NULL;
  char **nv = NULL;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    int64_t node = sqlite3_column_int64(s, 0);
    if (sqlite3_column_type(s, 0) != SQLITE_INTEGER || node < INT16_MIN ||
        node > INT16_MAX) {
      rc = corrupt(err, t->path, "node id %s is not a 16-bit integer",
                   (const char *)sqlite3_column_text(s, 0));
      goto fail;
    }
    if (cnt == MAX_NODES) {
      rc = corrupt(err, t->path, "more than %d nodes", MAX_NODES);
      goto fail;
    }
    if (cnt == cap) {
      size_t nc = cap ? cap * 2 : 16;
      int16_t *ni = realloc(iv, nc * sizeof *ni);
      if (ni)
        iv = ni;
      char **nn = ni ? realloc(nv, nc * sizeof *nn) : NULL;
      if (!nn) {
        rc = drpc_error_set(err, DRPC_ENOMEM, "out of memory reading nodes");
        goto fail;
      }
      nv = nn;
      cap = nc;
    }
    iv[cnt] = (int16_t)node;
    if (dup_col(s, 1, &nv[cnt])) {
      rc = drpc_error_set(err, DRPC_ENOMEM, "out of memory reading nodes");
      goto fail;
    }
    cnt++;
  }
  if (rc != SQLITE_DONE) {
    rc = sql_error(t->db, rc, t->path, "reading nodes", err);
    goto fail;
  }
  sqlite3_finalize(s);
  *ids = iv;
  *names = nv;
  *n = cnt;
  return 0;
fail:
  sqlite3_finalize(s);
  drpc_trace_nodes_free(iv, nv, cnt);
  return rc;
}

/* ---- events --------------------------------------------------------- */

#define EVENT_COLUMNS                                                          \
  "SELECT e.id, e.node, e.seq, e.kind, e.t_ns, e.peer, e.xid, e.aux, "         \
  "e.size, e.payload, e.name, e.hash, p.id, p.size, p.bytes "
#define EVENT_JOIN "LEFT JOIN payloads p ON p.id = e.payload "
#define EVENT_NCOLUMNS 15

/* Reads the strings table into t->strings, sorted by id. A row whose id
 * is not an integer can match no event's name (those are integers) and
 * is left out; of rows with the same id the first is kept. */
static int read_strings(drpc_trace *t, drpc_error *err) {
  sqlite3_stmt *s;
  int rc = sqlite3_prepare_v2(t->db, "SELECT id, text FROM strings ORDER BY id",
                              -1, &s, NULL);
  if (rc != SQLITE_OK)
    return sql_error(t->db, rc, t->path, "reading strings", err);
  size_t cap = 0;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    if (sqlite3_column_type(s, 0) != SQLITE_INTEGER)
      continue;
    int64_t id = sqlite3_column_int64(s, 0);
    if (t->nstrings && t->strings[t->nstrings - 1].id == id)
      continue;
    if (t->nstrings == cap) {
      size_t nc = cap ? cap * 2 : 64;
      trace_string *ns = realloc(t->strings, nc * sizeof *ns);
      if (!ns)
        goto nomem;
      t->strings = ns;
      cap = nc;
    }
    const unsigned char *text = sqlite3_column_text(s, 1);
    trace_string *ts = &t->strings[t->nstrings];
    ts->id = id;
    ts->text = text ? strdup((const char *)text) : NULL;
    if (text && !ts->text)
      goto nomem;
    t->nstrings++;
  }
  rc = rc == SQLITE_DONE
           ? 0
           : sql_error(t->db, rc, t->path, "reading strings", err);
  sqlite3_finalize(s);
  t->strings_read = rc == 0;
  return rc;
nomem:
  sqlite3_finalize(s);
  return drpc_error_set(err, DRPC_ENOMEM, "out of memory reading strings");
}

/* The string row with this id, or NULL. */
static const trace_string *find_string(const drpc_trace *t, int64_t id) {
  /* The recorder numbers strings 1, 2, ...: row id - 1, normally. */
  if (id >= 1 && (uint64_t)id <= t->nstrings && t->strings[id - 1].id == id)
    return &t->strings[id - 1];
  size_t lo = 0, hi = t->nstrings;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (t->strings[mid].id < id)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < t->nstrings && t->strings[lo].id == id ? &t->strings[lo] : NULL;
}

/* Opens a cursor on sql (the run bound as ?1; node >= 0 bound as ?2 and
 * the statement kept in t->node_st between such cursors). */
static int cursor_open(drpc_trace *t, const char *sql, int node,
                       drpc_trace_cursor **out, drpc_error *err) {
  if (!out)
    return drpc_error_set(err, DRPC_EINVAL, "out is NULL");
  *out = NULL;
  if (!t)
    return drpc_error_set(err, DRPC_EINVAL, "trace is NULL");
  if (node > INT16_MAX)
    return drpc_error_set(err, DRPC_EINVAL, "node %d is not a 16-bit id", node);
  if (!t->strings_read) {
    int rc = read_strings(t, err);
    if (rc)
      return rc;
  }
  drpc_trace_cursor *c = calloc(1, sizeof *c);
  if (!c)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  c->t = t;
  c->node = node >= 0;
  int rc = SQLITE_OK;
  if (c->node && t->node_st) {
    c->st = t->node_st;
    t->node_st = NULL;
  } else {
    rc = sqlite3_prepare_v2(t->db, sql, -1, &c->st, NULL);
  }
  if (rc != SQLITE_OK) {
    rc = sql_error(t->db, rc, t->path, "reading events", err);
    free(c);
    return rc;
  }
  sqlite3_bind_int64(c->st, 1, t->run);
  if (node >= 0)
    sqlite3_bind_int(c->st, 2, node);
  *out = c;
  return 0;
}

int drpc_trace_cursor_open(drpc_trace *t, int node, drpc_trace_cursor **out,
                           drpc_error *err) {
  return cursor_open(
      t,
      node < 0 ? EVENT_COLUMNS "FROM events e " EVENT_JOIN
                               "WHERE e.run=?1 ORDER BY e.t_ns, e.node, e.seq"
               : EVENT_COLUMNS "FROM events e " EVENT_JOIN
                               "WHERE e.run=?1 AND e.node=?2 ORDER BY e.seq",
      node, out, err);
}

int drpc_trace_cursor_open_recorded(drpc_trace *t, drpc_trace_cursor **out,
                                    drpc_error *err) {
  /* The table in rowid order: SQLite would otherwise take the run from
   * events_node_seq and sort every row by id. */
  return cursor_open(t,
                     EVENT_COLUMNS "FROM events e NOT INDEXED " EVENT_JOIN
                                   "WHERE e.run=?1 ORDER BY e.id",
                     -1, out, err);
}

void drpc_trace_cursor_close(drpc_trace_cursor *c) {
  if (!c)
    return;
  if (c->node && !c->t->node_st) {
    sqlite3_reset(c->st);
    c->t->node_st = c->st;
  } else {
    sqlite3_finalize(c->st);
  }
  free(c);
}

/* Checks one row against the schema and fills *e from it. The columns
 * are taken as values once each (one API call per column instead of a
 * type and a value call: ~15% of the reading). */
static int decode_row(drpc_trace *t, sqlite3_stmt *s, drpc_trace_event *e,
                      drpc_error *err) {
  sqlite3_value *v[EVENT_NCOLUMNS];
  for (int i = 0; i < EVENT_NCOLUMNS; i++)
    v[i] = sqlite3_column_value(s, i);
  long long row = sqlite3_value_int64(v[0]);
  static const char *const names[] = {"id",   "node",    "seq",  "kind",
                                      "t_ns", "peer",    "xid",  "aux",
                                      "size", "payload", "name", "hash"};
  for (int i = 0; i < 12; i++) {
    int ty = sqlite3_value_type(v[i]);
    /* id, node, seq, kind, t_ns and size are NOT NULL. */
    bool ok =
        ty == SQLITE_INTEGER || (ty == SQLITE_NULL && !(i <= 4 || i == 8));
    if (!ok)
      return corrupt(err, t->path, "event %lld: column %s is not an integer",
                     row, names[i]);
  }
  int64_t node = sqlite3_value_int64(v[1]);
  int64_t seq = sqlite3_value_int64(v[2]);
  int64_t kind = sqlite3_value_int64(v[3]);
  int64_t size = sqlite3_value_int64(v[8]);
  if (node < INT16_MIN || node > INT16_MAX)
    return corrupt(err, t->path, "event %lld: node %lld is not a 16-bit id",
                   row, (long long)node);
  if (seq < 0)
    return corrupt(err, t->path, "event %lld: negative seq %lld", row,
                   (long long)seq);
  if (!drpc_trace_kind_name((int)kind) || kind != (int)kind)
    return corrupt(err, t->path, "event %lld: unknown kind %lld", row,
                   (long long)kind);
  int16_t peer = -1;
  if (sqlite3_value_type(v[5]) != SQLITE_NULL) {
    int64_t p = sqlite3_value_int64(v[5]);
    if (p < INT16_MIN || p > INT16_MAX)
      return corrupt(err, t->path, "event %lld: peer %lld is not a 16-bit id",
                     row, (long long)p);
    peer = (int16_t)p;
  }
  if (size < 0)
    return corrupt(err, t->path, "event %lld: negative size %lld", row,
                   (long long)size);
  const void *bytes = NULL;
  bool has_payload = sqlite3_value_type(v[9]) != SQLITE_NULL;
  if (size == 0 && has_payload)
    return corrupt(err, t->path, "event %lld: size 0 but payload %lld", row,
                   (long long)sqlite3_value_int64(v[9]));
  if (size > 0) {
    long long pid = sqlite3_value_int64(v[9]);
    if (!has_payload)
      return corrupt(err, t->path, "event %lld: size %lld but no payload", row,
                     (long long)size);
    if (sqlite3_value_type(v[12]) == SQLITE_NULL)
      return corrupt(err, t->path,
                     "event %lld refers to payload %lld, which does not exist",
                     row, pid);
    bytes = sqlite3_value_blob(v[14]);
    int got = sqlite3_value_bytes(v[14]);
    if (!bytes || got != size || sqlite3_value_int64(v[13]) != size)
      return corrupt(err, t->path,
                     "event %lld: size %lld but payload %lld holds %d bytes "
                     "(size column %lld)",
                     row, (long long)size, pid, got,
                     (long long)sqlite3_value_int64(v[13]));
  }
  const char *name = NULL;
  if (sqlite3_value_type(v[10]) != SQLITE_NULL) {
    long long sid = sqlite3_value_int64(v[10]);
    const trace_string *ts = find_string(t, sid);
    if (!ts)
      return corrupt(err, t->path,
                     "event %lld refers to string %lld, which does not exist",
                     row, sid);
    name = ts->text;
    if (!name)
      return corrupt(err, t->path, "event %lld: string %lld has no text", row,
                     sid);
  }
  memset(e, 0, sizeof *e);
  e->row = row;
  e->seq = seq;
  e->ev.kind = (drpc_event_kind)kind;
  e->ev.node = (int16_t)node;
  e->ev.peer = peer;
  e->ev.time_ns = (uint64_t)sqlite3_value_int64(v[4]);
  e->ev.id = (uint64_t)sqlite3_value_int64(v[6]);
  e->ev.aux = (uint64_t)sqlite3_value_int64(v[7]);
  e->ev.bytes = bytes;
  e->ev.len = (size_t)size;
  e->ev.name = name;
  e->has_hash = sqlite3_value_type(v[11]) != SQLITE_NULL;
  e->hash = (uint64_t)sqlite3_value_int64(v[11]);
  return 0;
}

int drpc_trace_cursor_next(drpc_trace_cursor *c, drpc_trace_event *e,
                           drpc_error *err) {
  if (!c || !e)
    return drpc_error_set(err, DRPC_EINVAL, "cursor or event is NULL");
  int rc = sqlite3_step(c->st);
  if (rc == SQLITE_DONE)
    return 0;
  if (rc != SQLITE_ROW)
    return sql_error(c->t->db, rc, c->t->path, "reading events", err);
  rc = decode_row(c->t, c->st, e, err);
  return rc ? rc : 1;
}

int drpc_trace_foreach(drpc_trace *t, int node,
                       int (*cb)(void *arg, const drpc_trace_event *e),
                       void *arg, drpc_error *err) {
  if (!cb)
    return drpc_error_set(err, DRPC_EINVAL, "callback is NULL");
  drpc_trace_cursor *c;
  int rc = drpc_trace_cursor_open(t, node, &c, err);
  if (rc)
    return rc;
  drpc_trace_event e;
  while ((rc = drpc_trace_cursor_next(c, &e, err)) == 1) {
    if ((rc = cb(arg, &e)) != 0)
      break;
  }
  drpc_trace_cursor_close(c);
  return rc;
}
