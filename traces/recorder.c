/* The SQLite recorder: turns record-sink events into rows of schema v1
 * (traces/SCHEMA.md), inline or on a writer thread behind a bounded queue. */
#include "drpc/trace.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Every int16 node id gets a slot: 65536 small entries, allocated zeroed
 * so untouched pages cost nothing. */
#define NODE_SLOTS 65536
/* Bits in the filter of payload hashes already stored. A set bit only
 * means "maybe": the database is asked and the bytes compared. A clear bit
 * proves the payload is new, which saves a lookup for most payloads. */
#define SEEN_BITS ((size_t)1 << 23)
/* Slots in the direct-mapped cache of interned strings. */
#define STRING_CACHE 1024

static const char SCHEMA_SQL[] =
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT);"
    "CREATE TABLE runs(id INTEGER PRIMARY KEY, backend TEXT NOT NULL,"
    " scenario TEXT, seed INTEGER, commit_id TEXT, config TEXT,"
    " started_at TEXT, host TEXT, pid INTEGER);"
    "CREATE TABLE nodes(run INTEGER NOT NULL, node INTEGER NOT NULL,"
    " name TEXT, PRIMARY KEY(run, node));"
    "CREATE TABLE strings(id INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE);"
    "CREATE TABLE payloads(id INTEGER PRIMARY KEY, hash INTEGER NOT NULL,"
    " size INTEGER NOT NULL, bytes BLOB NOT NULL);"
    "CREATE INDEX payloads_hash ON payloads(hash);"
    "CREATE TABLE kinds(kind INTEGER PRIMARY KEY, name TEXT NOT NULL,"
    " dir TEXT NOT NULL);"
    "CREATE TABLE events(id INTEGER PRIMARY KEY, run INTEGER NOT NULL,"
    " node INTEGER NOT NULL, seq INTEGER NOT NULL, kind INTEGER NOT NULL,"
    " t_ns INTEGER NOT NULL, peer INTEGER, xid INTEGER, aux INTEGER,"
    " size INTEGER NOT NULL, payload INTEGER, name INTEGER, hash INTEGER);"
    "CREATE INDEX events_node_seq ON events(run, node, seq);"
    "CREATE INDEX events_time ON events(t_ns);";

/* A queued event (or node name) with its bytes and name copied behind it. */
enum { ITEM_EVENT, ITEM_RAW, ITEM_NODE };
typedef struct item {
  struct item *next;
  int type;
  drpc_event ev;
  int64_t seq;
  uint64_t hash;
  bool has_hash;
  size_t cost; /* what it counts against the queue bound */
} item;

typedef struct node_state {
  int64_t seq;
  uint64_t hash;
  bool started; /* nodes row ensured, hash initialised */
} node_state;

typedef struct str_slot {
  char *text;
  int64_t id;
} str_slot;

struct drpc_recorder {
  char *path;
  sqlite3 *db;
  int64_t run;
  bool threaded;
  sqlite3_stmt *ins_event, *ins_payload, *find_payload, *ins_string,
      *find_string, *ins_node, *name_node;

  /* Writer state: touched only by the writer thread, or unthreaded by the
   * caller holding mu. */
  bool in_txn;
  unsigned txn_events;
  node_state *nodes;
  uint8_t *seen;
  str_slot strs[STRING_CACHE];

  /* The first write error, under err_mu (the writer sets it while a
   * caller may be reading it in flush). */
  pthread_mutex_t err_mu;
  drpc_error werr;
  atomic_bool failed;

  /* The queue and caller-side counters, under mu. */
  pthread_mutex_t mu;
  pthread_cond_t work;  /* the writer waits for items */
  pthread_cond_t space; /* callers wait for room or a flush */
  item *head, **tail;
  size_t queued, limit;
  bool closing;
  uint64_t flush_req, flush_done;
  pthread_t thread;
  bool thread_started;
  drpc_recorder_stats st; /* events, bytes, stalls, dropped */

  /* Writer-side counters, read by stats_get. */
  atomic_uint_fast64_t written, stored, deduped, wdropped;
};

/* ---- errors --------------------------------------------------------- */

static int sqlite_code(int rc) {
  switch (rc & 0xff) {
  case SQLITE_NOMEM:
    return DRPC_ENOMEM;
  case SQLITE_TOOBIG:
    return DRPC_ETOOBIG;
  default:
    return DRPC_EIO;
  }
}

/* Keeps the first write error; later events are dropped and counted. */
static void fail(drpc_recorder *r, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail(drpc_recorder *r, int code, const char *fmt, ...) {
  pthread_mutex_lock(&r->err_mu);
  if (!r->werr.code) {
    va_list ap;
    va_start(ap, fmt);
    drpc_error_setv(&r->werr, code, fmt, ap);
    va_end(ap);
    drpc_error_prefix(&r->werr, "recording %s", r->path);
  }
  atomic_store(&r->failed, true);
  pthread_mutex_unlock(&r->err_mu);
}

static void fail_sql(drpc_recorder *r, int rc, const char *what) {
  fail(r, sqlite_code(rc), "%s: %s", what, sqlite3_errmsg(r->db));
}

/* ---- transactions --------------------------------------------------- */

static int exec(drpc_recorder *r, const char *sql, const char *what) {
  int rc = sqlite3_exec(r->db, sql, NULL, NULL, NULL);
  if (rc != SQLITE_OK) {
    fail_sql(r, rc, what);
    return -1;
  }
  return 0;
}

static int begin(drpc_recorder *r) {
  if (r->in_txn)
    return 0;
  if (exec(r, "BEGIN", "begin"))
    return -1;
  r->in_txn = true;
  r->txn_events = 0;
  return 0;
}

/* Commits what is open. After a failure the part already inserted is
 * still committed when SQLite kept the transaction, so a recording keeps
 * everything up to its first error. */
static void commit(drpc_recorder *r) {
  if (!r->in_txn)
    return;
  r->in_txn = false;
  if (sqlite3_get_autocommit(r->db))
    return; /* SQLite already rolled back after an error */
  if (exec(r, "COMMIT", "commit"))
    sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL);
}

/* ---- interning ------------------------------------------------------ */

static uint64_t mix(uint64_t h, uint64_t w) {
  h ^= w;
  h *= 0x9e3779b97f4a7c15ull;
  h ^= h >> 29;
  return h;
}

/* The payloads.hash of bytes: word at a time, like the event fold. */
static uint64_t payload_hash(const void *p, size_t n) {
  const unsigned char *b = p;
  uint64_t h = mix(0x84222325cbf29ce4ull, (uint64_t)n);
  while (n >= 8) {
    uint64_t w;
    memcpy(&w, b, 8);
    h = mix(h, w);
    b += 8;
    n -= 8;
  }
  uint64_t t = 0;
  for (size_t i = 0; i < n; i++)
    t |= (uint64_t)b[i] << (8 * i);
  return mix(h, t);
}

/* Finds or stores a payload; *id is its payloads.id. */
static int payload_intern(drpc_recorder *r, const void *bytes, size_t len,
                          int64_t *id) {
  uint64_t h = payload_hash(bytes, len);
  size_t bit = (size_t)(h & (SEEN_BITS - 1));
  uint8_t mask = (uint8_t)(1u << (bit & 7));
  if (r->seen[bit >> 3] & mask) {
    sqlite3_stmt *q = r->find_payload;
    sqlite3_bind_int64(q, 1, (int64_t)h);
    sqlite3_bind_int64(q, 2, (int64_t)len);
    int rc;
    /* Rows share hash and size: nearly always one, and never more than
     * the payloads stored. */
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
      const void *b = sqlite3_column_blob(q, 1);
      if ((size_t)sqlite3_column_bytes(q, 1) == len && b &&
          memcmp(b, bytes, len) == 0) {
        *id = sqlite3_column_int64(q, 0);
        sqlite3_reset(q);
        atomic_fetch_add(&r->deduped, 1);
        return 0;
      }
    }
    sqlite3_reset(q);
    if (rc != SQLITE_DONE) {
      fail_sql(r, rc, "looking up a payload");
      return -1;
    }
  }
  sqlite3_stmt *s = r->ins_payload;
  sqlite3_bind_int64(s, 1, (int64_t)h);
  sqlite3_bind_int64(s, 2, (int64_t)len);
  sqlite3_bind_blob64(s, 3, bytes, len, SQLITE_STATIC);
  int rc = sqlite3_step(s);
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  if (rc != SQLITE_DONE) {
    fail_sql(r, rc, "storing a payload");
    return -1;
  }
  r->seen[bit >> 3] |= mask;
  *id = sqlite3_last_insert_rowid(r->db);
  atomic_fetch_add(&r->stored, 1);
  return 0;
}

/* Finds or stores a string; *id is its strings.id. */
static int string_intern(drpc_recorder *r, const char *text, int64_t *id) {
  size_t n = strlen(text);
  str_slot *slot = &r->strs[payload_hash(text, n) % STRING_CACHE];
  if (slot->text && strcmp(slot->text, text) == 0) {
    *id = slot->id;
    return 0;
  }
  sqlite3_stmt *s = r->ins_string;
  sqlite3_bind_text64(s, 1, text, n, SQLITE_STATIC, SQLITE_UTF8);
  int rc = sqlite3_step(s);
  sqlite3_reset(s);
  if (rc != SQLITE_DONE) {
    fail_sql(r, rc, "storing a string");
    return -1;
  }
  if (sqlite3_changes(r->db) == 1) {
    *id = sqlite3_last_insert_rowid(r->db);
  } else {
    sqlite3_stmt *q = r->find_string;
    sqlite3_bind_text64(q, 1, text, n, SQLITE_STATIC, SQLITE_UTF8);
    rc = sqlite3_step(q);
    if (rc == SQLITE_ROW)
      *id = sqlite3_column_int64(q, 0);
    sqlite3_reset(q);
    if (rc != SQLITE_ROW) {
      fail_sql(r, rc == SQLITE_DONE ? SQLITE_ERROR : rc, "looking up a string");
      return -1;
    }
  }
  /* A failed strdup only costs a lookup next time. */
  free(slot->text);
  slot->text = strdup(text);
  slot->id = *id;
  return 0;
}

/* ---- writing rows --------------------------------------------------- */

static void bind_opt(sqlite3_stmt *s, int i, bool has, int64_t v) {
  if (has)
    sqlite3_bind_int64(s, i, v);
  else
    sqlite3_bind_null(s, i);
}

static int ensure_node(drpc_recorder *r, int16_t node) {
  node_state *ns = &r->nodes[(uint16_t)node];
  if (ns->started)
    return 0;
  sqlite3_stmt *s = r->ins_node;
  sqlite3_bind_int64(s, 1, node);
  int rc = sqlite3_step(s);
  sqlite3_reset(s);
  if (rc != SQLITE_DONE) {
    fail_sql(r, rc, "adding a node");
    return -1;
  }
  ns->started = true;
  ns->hash = DRPC_EVENT_HASH_INIT;
  return 0;
}

static void write_node(drpc_recorder *r, int16_t node, const char *name) {
  if (atomic_load(&r->failed) || begin(r))
    return;
  sqlite3_stmt *s = r->name_node;
  sqlite3_bind_int64(s, 1, node);
  if (name)
    sqlite3_bind_text(s, 2, name, -1, SQLITE_STATIC);
  else
    sqlite3_bind_null(s, 2);
  int rc = sqlite3_step(s);
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  if (rc != SQLITE_DONE)
    fail_sql(r, rc, "naming a node");
}

/* Inserts one event. raw: seq and hash come from the caller. */
static void write_event(drpc_recorder *r, const drpc_event *ev, bool raw,
                        int64_t seq, bool has_hash, uint64_t hash) {
  if (atomic_load(&r->failed) || begin(r) || ensure_node(r, ev->node)) {
    atomic_fetch_add(&r->wdropped, 1);
    return;
  }
  node_state *ns = &r->nodes[(uint16_t)ev->node];
  if (!raw) {
    seq = ns->seq++;
    has_hash = drpc_event_is_output(ev->kind);
    if (has_hash) {
      ns->hash = drpc_event_fold(ns->hash, ev);
      hash = ns->hash;
    }
  }
  int64_t payload = 0, name = 0;
  if ((ev->len > 0 && payload_intern(r, ev->bytes, ev->len, &payload)) ||
      (ev->name && string_intern(r, ev->name, &name))) {
    atomic_fetch_add(&r->wdropped, 1);
    return;
  }
  sqlite3_stmt *s = r->ins_event;
  sqlite3_bind_int64(s, 1, r->run);
  sqlite3_bind_int64(s, 2, ev->node);
  sqlite3_bind_int64(s, 3, seq);
  sqlite3_bind_int64(s, 4, (int64_t)ev->kind);
  sqlite3_bind_int64(s, 5, (int64_t)ev->time_ns);
  bind_opt(s, 6, ev->peer >= 0, ev->peer);
  sqlite3_bind_int64(s, 7, (int64_t)ev->id);
  sqlite3_bind_int64(s, 8, (int64_t)ev->aux);
  sqlite3_bind_int64(s, 9, (int64_t)ev->len);
  bind_opt(s, 10, ev->len > 0, payload);
  bind_opt(s, 11, ev->name != NULL, name);
  bind_opt(s, 12, has_hash, (int64_t)hash);
  int rc = sqlite3_step(s);
  sqlite3_reset(s);
  if (rc != SQLITE_DONE) {
    fail_sql(r, rc, "inserting an event");
    atomic_fetch_add(&r->wdropped, 1);
    return;
  }
  atomic_fetch_add(&r->written, 1);
  if (++r->txn_events >= DRPC_RECORDER_BATCH)
    commit(r);
}

static void write_item(drpc_recorder *r, const item *it) {
  if (it->type == ITEM_NODE)
    write_node(r, it->ev.node, it->ev.name);
  else
    write_event(r, &it->ev, it->type == ITEM_RAW, it->seq, it->has_hash,
                it->hash);
}

/* ---- the writer thread ---------------------------------------------- */

/* Takes the whole queue at once and writes it in transactions of up to
 * DRPC_RECORDER_BATCH events; queue space is given back after each
 * commit, so memory stays within the bound. */
static void *writer_main(void *arg) {
  drpc_recorder *r = arg;
  pthread_mutex_lock(&r->mu);
  for (;;) {
    if (!r->head) {
      if (r->flush_done != r->flush_req) {
        r->flush_done = r->flush_req;
        pthread_cond_broadcast(&r->space);
      }
      if (r->closing)
        break;
      pthread_cond_wait(&r->work, &r->mu);
      continue;
    }
    item *batch = r->head;
    r->head = NULL;
    r->tail = &r->head;
    pthread_mutex_unlock(&r->mu);
    size_t done = 0;
    while (batch) {
      item *it = batch;
      batch = it->next;
      write_item(r, it);
      done += it->cost;
      free(it);
      /* !in_txn: write_event just committed a full batch (or failed). */
      if (!batch || !r->in_txn) {
        commit(r);
        pthread_mutex_lock(&r->mu);
        r->queued -= done;
        done = 0;
        pthread_cond_broadcast(&r->space);
        if (batch)
          pthread_mutex_unlock(&r->mu);
      }
    }
    /* mu is held here. */
  }
  pthread_mutex_unlock(&r->mu);
  return NULL;
}

/* ---- recording entry points ----------------------------------------- */

static void enqueue(drpc_recorder *r, int type, const drpc_event *ev,
                    int64_t seq, const uint64_t *hash) {
  size_t len = ev->bytes ? ev->len : 0;
  size_t nlen = ev->name ? strlen(ev->name) + 1 : 0;
  size_t cost = sizeof(item) + nlen;
  item *it = NULL;
  if (len <= SIZE_MAX - cost) {
    cost += len;
    it = malloc(cost);
  }
  if (!it) {
    fail(r, DRPC_ENOMEM, "out of memory copying an event of %zu bytes", len);
    pthread_mutex_lock(&r->mu);
    if (type != ITEM_NODE) {
      r->st.events++;
      r->st.dropped++;
    }
    pthread_mutex_unlock(&r->mu);
    return;
  }
  it->next = NULL;
  it->type = type;
  it->ev = *ev;
  it->ev.len = len;
  it->seq = seq;
  it->has_hash = hash != NULL;
  it->hash = hash ? *hash : 0;
  it->cost = cost;
  unsigned char *tailp = (unsigned char *)(it + 1);
  it->ev.bytes = len ? tailp : NULL;
  if (len)
    memcpy(tailp, ev->bytes, len);
  it->ev.name = nlen ? (const char *)tailp + len : NULL;
  if (nlen)
    memcpy(tailp + len, ev->name, nlen);

  pthread_mutex_lock(&r->mu);
  bool stalled = false;
  /* An item larger than the bound still goes into an empty queue. */
  while (r->queued > 0 && r->queued + cost > r->limit) {
    if (!stalled) {
      stalled = true;
      r->st.stalls++;
    }
    pthread_cond_wait(&r->space, &r->mu);
  }
  bool was_empty = r->head == NULL;
  *r->tail = it;
  r->tail = &it->next;
  r->queued += cost;
  if (type != ITEM_NODE) {
    r->st.events++;
    r->st.bytes += len;
  }
  if (was_empty)
    pthread_cond_signal(&r->work);
  pthread_mutex_unlock(&r->mu);
}

static void record(drpc_recorder *r, int type, const drpc_event *ev,
                   int64_t seq, const uint64_t *hash) {
  if (!r || !ev)
    return;
  if (r->threaded) {
    enqueue(r, type, ev, seq, hash);
    return;
  }
  drpc_event e = *ev;
  if (!e.bytes)
    e.len = 0;
  pthread_mutex_lock(&r->mu);
  if (type == ITEM_NODE) {
    write_node(r, e.node, e.name);
  } else {
    r->st.events++;
    r->st.bytes += e.len;
    write_event(r, &e, type == ITEM_RAW, seq, hash != NULL, hash ? *hash : 0);
  }
  pthread_mutex_unlock(&r->mu);
}

void drpc_recorder_record(drpc_recorder *r, const drpc_event *ev) {
  record(r, ITEM_EVENT, ev, 0, NULL);
}

void drpc_recorder_sink(void *recorder, const drpc_event *ev) {
  record(recorder, ITEM_EVENT, ev, 0, NULL);
}

void drpc_recorder_record_raw(drpc_recorder *r, const drpc_event *ev,
                              int64_t seq, const uint64_t *hash) {
  record(r, ITEM_RAW, ev, seq, hash);
}

void drpc_recorder_node(drpc_recorder *r, int16_t node, const char *name) {
  drpc_event ev = {.node = node, .peer = -1, .name = name};
  record(r, ITEM_NODE, &ev, 0, NULL);
}

void drpc_recorder_set_queue_limit(drpc_recorder *r, size_t bytes) {
  if (!r)
    return;
  pthread_mutex_lock(&r->mu);
  r->limit = bytes;
  /* A larger bound may let blocked callers in. */
  pthread_cond_broadcast(&r->space);
  pthread_mutex_unlock(&r->mu);
}

static int take_error(drpc_recorder *r, drpc_error *err) {
  pthread_mutex_lock(&r->err_mu);
  int code = r->werr.code;
  if (code && err)
    drpc_error_copy(err, &r->werr);
  pthread_mutex_unlock(&r->err_mu);
  return code;
}

int drpc_recorder_flush(drpc_recorder *r, drpc_error *err) {
  if (!r)
    return drpc_error_set(err, DRPC_EINVAL, "recorder is NULL");
  pthread_mutex_lock(&r->mu);
  if (r->threaded) {
    uint64_t want = ++r->flush_req;
    pthread_cond_signal(&r->work);
    while (r->flush_done < want)
      pthread_cond_wait(&r->space, &r->mu);
  } else {
    commit(r);
  }
  pthread_mutex_unlock(&r->mu);
  return take_error(r, err);
}

void drpc_recorder_stats_get(drpc_recorder *r, drpc_recorder_stats *st) {
  if (!r || !st)
    return;
  pthread_mutex_lock(&r->mu);
  *st = r->st;
  pthread_mutex_unlock(&r->mu);
  st->written = atomic_load(&r->written);
  st->payloads_stored = atomic_load(&r->stored);
  st->payloads_deduped = atomic_load(&r->deduped);
  st->dropped += atomic_load(&r->wdropped);
}

/* ---- open and close ------------------------------------------------- */

static void now_iso8601(char *buf, size_t n) {
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  size_t k = strftime(buf, n, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(buf + k, n - k, ".%03ldZ", ts.tv_nsec / 1000000);
}

static int bind_text_or_null(sqlite3_stmt *s, int i, const char *v) {
  return v ? sqlite3_bind_text(s, i, v, -1, SQLITE_TRANSIENT)
           : sqlite3_bind_null(s, i);
}

/* Writes meta, kinds and the run row. */
static int write_header(drpc_recorder *r, const drpc_run_info *info) {
  if (exec(r, SCHEMA_SQL, "creating the schema"))
    return -1;
  char sql[256];
  snprintf(sql, sizeof sql,
           "INSERT INTO meta VALUES('format','%s'),('schema','%d');",
           DRPC_TRACE_FORMAT, DRPC_TRACE_SCHEMA);
  if (exec(r, sql, "writing meta"))
    return -1;
  sqlite3_stmt *s = NULL;
  int rc = sqlite3_prepare_v2(r->db, "INSERT INTO kinds VALUES(?1,?2,?3)", -1,
                              &s, NULL);
  for (int k = 0; rc == SQLITE_OK && k < 256; k++) {
    if (!drpc_trace_kind_name(k))
      continue;
    sqlite3_bind_int(s, 1, k);
    sqlite3_bind_text(s, 2, drpc_trace_kind_name(k), -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, drpc_trace_kind_dir(k), -1, SQLITE_STATIC);
    rc = sqlite3_step(s) == SQLITE_DONE ? SQLITE_OK : sqlite3_errcode(r->db);
    sqlite3_reset(s);
  }
  sqlite3_finalize(s);
  if (rc != SQLITE_OK) {
    fail_sql(r, rc, "writing kinds");
    return -1;
  }

  char started[64], host[256];
  const char *started_at = info->started_at;
  if (!started_at) {
    now_iso8601(started, sizeof started);
    started_at = started;
  }
  const char *hostp = info->host;
  if (!hostp && gethostname(host, sizeof host) == 0) {
    host[sizeof host - 1] = 0;
    hostp = host;
  }
  rc = sqlite3_prepare_v2(r->db,
                          "INSERT INTO runs(backend, scenario, seed, "
                          "commit_id, config, started_at, host, pid) "
                          "VALUES(?1,?2,?3,?4,?5,?6,?7,?8)",
                          -1, &s, NULL);
  if (rc == SQLITE_OK) {
    bind_text_or_null(s, 1, info->backend ? info->backend : "real");
    bind_text_or_null(s, 2, info->scenario);
    bind_opt(s, 3, info->has_seed, (int64_t)info->seed);
    bind_text_or_null(s, 4, info->commit);
    bind_text_or_null(s, 5, info->config_json);
    bind_text_or_null(s, 6, started_at);
    bind_text_or_null(s, 7, hostp);
    sqlite3_bind_int64(s, 8, info->has_pid ? info->pid : (int64_t)getpid());
    rc = sqlite3_step(s) == SQLITE_DONE ? SQLITE_OK : sqlite3_errcode(r->db);
  }
  sqlite3_finalize(s);
  if (rc != SQLITE_OK) {
    fail_sql(r, rc, "writing the run");
    return -1;
  }
  r->run = sqlite3_last_insert_rowid(r->db);
  return 0;
}

static int prepare(drpc_recorder *r, sqlite3_stmt **s, const char *sql) {
  int rc =
      sqlite3_prepare_v3(r->db, sql, -1, SQLITE_PREPARE_PERSISTENT, s, NULL);
  if (rc != SQLITE_OK) {
    fail_sql(r, rc, "preparing statements");
    return -1;
  }
  return 0;
}

static int prepare_all(drpc_recorder *r) {
  char sql[256];
  if (prepare(r, &r->ins_event,
              "INSERT INTO events(run, node, seq, kind, t_ns, peer, xid, aux,"
              " size, payload, name, hash) "
              "VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)") ||
      prepare(r, &r->ins_payload,
              "INSERT INTO payloads(hash, size, bytes) VALUES(?1,?2,?3)") ||
      prepare(r, &r->find_payload,
              "SELECT id, bytes FROM payloads WHERE hash=?1 AND size=?2") ||
      prepare(r, &r->ins_string,
              "INSERT INTO strings(text) VALUES(?1) ON CONFLICT(text) DO "
              "NOTHING") ||
      prepare(r, &r->find_string, "SELECT id FROM strings WHERE text=?1"))
    return -1;
  snprintf(sql, sizeof sql,
           "INSERT INTO nodes(run, node) VALUES(%lld, ?1) ON CONFLICT DO "
           "NOTHING",
           (long long)r->run);
  if (prepare(r, &r->ins_node, sql))
    return -1;
  snprintf(sql, sizeof sql,
           "INSERT INTO nodes(run, node, name) VALUES(%lld, ?1, ?2) ON "
           "CONFLICT(run, node) DO UPDATE SET name=excluded.name",
           (long long)r->run);
  return prepare(r, &r->name_node, sql);
}

static void finalize_all(drpc_recorder *r) {
  sqlite3_stmt **all[] = {&r->ins_event,  &r->ins_payload, &r->find_payload,
                          &r->ins_string, &r->find_string, &r->ins_node,
                          &r->name_node};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
    sqlite3_finalize(*all[i]);
    *all[i] = NULL;
  }
}

static void free_recorder(drpc_recorder *r) {
  for (size_t i = 0; i < STRING_CACHE; i++)
    free(r->strs[i].text);
  free(r->nodes);
  free(r->seen);
  drpc_error_clear(&r->werr);
  pthread_cond_destroy(&r->space);
  pthread_cond_destroy(&r->work);
  pthread_mutex_destroy(&r->mu);
  pthread_mutex_destroy(&r->err_mu);
  free(r->path);
  free(r);
}

/* Removes path and the files SQLite keeps beside it. */
static int remove_recording(const char *path, drpc_error *err) {
  static const char *const suffix[] = {"", "-wal", "-shm", "-journal"};
  char buf[PATH_MAX];
  for (size_t i = 0; i < sizeof suffix / sizeof suffix[0]; i++) {
    if (snprintf(buf, sizeof buf, "%s%s", path, suffix[i]) >= (int)sizeof buf)
      return drpc_error_set(err, DRPC_EINVAL, "recording path too long");
    if (unlink(buf) != 0 && errno != ENOENT)
      return drpc_error_set(err, DRPC_EIO, "cannot remove %s: %s", buf,
                            strerror(errno));
  }
  return 0;
}

int drpc_recorder_open(drpc_recorder **out, const char *path,
                       const drpc_run_info *info, bool threaded, bool truncate,
                       drpc_error *err) {
  if (!out)
    return drpc_error_set(err, DRPC_EINVAL, "out is NULL");
  *out = NULL;
  if (!path || !*path)
    return drpc_error_set(err, DRPC_EINVAL, "recording path is empty");
  drpc_run_info none = {0};
  if (!info)
    info = &none;
  int rc;
  if (truncate && (rc = remove_recording(path, err)))
    return rc;
  /* O_EXCL makes "already exists" exact even with a racing creator. */
  int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    if (errno == EEXIST)
      return drpc_error_set(err, DRPC_EEXISTS,
                            "recording %s already exists (pass truncate to "
                            "replace it)",
                            path);
    return drpc_error_set(err, DRPC_EIO, "cannot create recording %s: %s", path,
                          strerror(errno));
  }
  close(fd);

  drpc_recorder *r = calloc(1, sizeof *r);
  if (!r)
    goto fail_alloc;
  pthread_mutex_init(&r->err_mu, NULL);
  pthread_mutex_init(&r->mu, NULL);
  pthread_cond_init(&r->work, NULL);
  pthread_cond_init(&r->space, NULL);
  r->tail = &r->head;
  r->limit = DRPC_RECORDER_QUEUE_DEFAULT;
  r->threaded = threaded;
  r->path = strdup(path);
  r->nodes = calloc(NODE_SLOTS, sizeof *r->nodes);
  r->seen = calloc(SEEN_BITS / 8, 1);
  if (!r->path || !r->nodes || !r->seen)
    goto fail_recorder;

  rc = sqlite3_open_v2(path, &r->db,
                       SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
  if (rc != SQLITE_OK) {
    fail_sql(r, rc, "opening");
    goto fail_db;
  }
  sqlite3_extended_result_codes(r->db, 1);
  /* Exclusive locking before WAL keeps the WAL index in heap memory (no
   * -shm file); see SCHEMA.md for why WAL with synchronous=OFF. */
  if (exec(r,
           "PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL;"
           " PRAGMA synchronous=OFF; PRAGMA cache_size=-16384;",
           "setting pragmas"))
    goto fail_db;
  char sql[64];
  snprintf(sql, sizeof sql, "PRAGMA user_version=%d", DRPC_TRACE_SCHEMA);
  if (exec(r, "BEGIN", "begin") || exec(r, sql, "setting user_version") ||
      write_header(r, info) || exec(r, "COMMIT", "commit"))
    goto fail_db;
  if (prepare_all(r))
    goto fail_db;
  if (threaded) {
    if ((rc = pthread_create(&r->thread, NULL, writer_main, r)) != 0) {
      fail(r, DRPC_EIO, "cannot start the writer thread: %s", strerror(rc));
      goto fail_db;
    }
    r->thread_started = true;
  }
  *out = r;
  return 0;

fail_db:
  finalize_all(r);
  sqlite3_close(r->db);
  rc = take_error(r, err);
  free_recorder(r);
  unlink(path);
  return rc ? rc : drpc_error_set(err, DRPC_EIO, "cannot open %s", path);
fail_recorder:
  free_recorder(r);
fail_alloc:
  unlink(path);
  return drpc_error_set(err, DRPC_ENOMEM, "out of memory opening recording");
}

int drpc_recorder_close(drpc_recorder *r, drpc_error *err) {
  if (!r)
    return 0;
  if (r->thread_started) {
    pthread_mutex_lock(&r->mu);
    r->closing = true;
    pthread_cond_signal(&r->work);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL);
  }
  assert(r->head == NULL);
  commit(r);
  finalize_all(r);
  /* Back to a rollback journal: the checkpoint folds the WAL into the
   * file, which then stands alone (readers need no -wal or -shm). */
  if (!atomic_load(&r->failed))
    exec(r, "PRAGMA journal_mode=DELETE", "checkpointing");
  int rc = sqlite3_close(r->db);
  if (rc != SQLITE_OK)
    fail(r, DRPC_EIO, "closing: %s", sqlite3_errstr(rc));
  rc = take_error(r, err);
  free_recorder(r);
  return rc;
}
