/* The SQLite recorder: turns record-sink events into rows of schema v1
 * (traces/SCHEMA.md), inline, or threaded: callers copy events into a
 * bounded in-memory queue of large chunks, a writer thread appends the
 * chunks to a spill file, and the spill file is imported into SQLite in
 * one big transaction at flush and close (traces/SCHEMA.md, "How the
 * recorder writes"). */
#include "drpc/trace.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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
/* Bytes in one queue chunk (a larger event gets a chunk of its own). */
#define CHUNK_SIZE ((size_t)1 << 20)
/* Empty chunks kept for reuse. */
#define SPARE_CHUNKS 4
/* How long a partly filled chunk may wait for the writer (ms): events
 * reach the spill file within about twice this. */
#define SPILL_LATENCY_MS 10
/* The import's payload table: it starts with 2^16 slots, doubles at 3/4
 * full, and stops growing at 2^22 slots (128 MiB); beyond that, payloads
 * are looked up in the database by the payloads_hash index. */
#define PTAB_MIN_BITS 16
#define PTAB_MAX_BITS 22
/* Below this many events an import keeps the secondary indexes. */
#define REBUILD_MIN_EVENTS 4096
/* Rows per multi-row INSERT of the import (one statement execution per
 * batch instead of per row). */
#define IMPORT_ROWS 32
#define EV_COLS 13

/* The secondary indexes, dropped and rebuilt around a large import. */
#define INDEX_PAYLOADS_SQL "CREATE INDEX payloads_hash ON payloads(hash);"
#define INDEX_EVENTS_SQL                                                       \
  "CREATE INDEX events_node_seq ON events(run, node, seq);"                    \
  "CREATE INDEX events_time ON events(t_ns);"

static const char SCHEMA_SQL[] =
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT);"
    "CREATE TABLE runs(id INTEGER PRIMARY KEY, backend TEXT NOT NULL,"
    " scenario TEXT, seed INTEGER, commit_id TEXT, config TEXT,"
    " started_at TEXT, host TEXT, pid INTEGER);"
    "CREATE TABLE nodes(run INTEGER NOT NULL, node INTEGER NOT NULL,"
    " name TEXT, PRIMARY KEY(run, node));"
    "CREATE TABLE strings(id INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE);"
    "CREATE TABLE payloads(id INTEGER PRIMARY KEY, hash INTEGER NOT NULL,"
    " size INTEGER NOT NULL, bytes BLOB NOT NULL);" INDEX_PAYLOADS_SQL
    "CREATE TABLE kinds(kind INTEGER PRIMARY KEY, name TEXT NOT NULL,"
    " dir TEXT NOT NULL);"
    "CREATE TABLE events(id INTEGER PRIMARY KEY, run INTEGER NOT NULL,"
    " node INTEGER NOT NULL, seq INTEGER NOT NULL, kind INTEGER NOT NULL,"
    " t_ns INTEGER NOT NULL, peer INTEGER, xid INTEGER, aux INTEGER,"
    " size INTEGER NOT NULL, payload INTEGER, name INTEGER, hash "
    "INTEGER);" INDEX_EVENTS_SQL;

enum { ITEM_EVENT = 1, ITEM_RAW, ITEM_NODE };

/* The spill file: a header, then records in a compact form (no padding,
 * no alignment). A record is a tag byte, then varints (LEB128; zigzag for
 * the signed and the delta fields), then the payload bytes and the name
 * with its NUL:
 *
 *   tag        bits 0-1 type (ITEM_*), TAG_HASH (ITEM_RAW: a hash
 *              follows), TAG_RESET, TAG_NODE_SAME, TAG_KIND_SAME,
 *              TAG_PEER_SAME; bit 7 is 0
 *   [base]     TAG_RESET only: the ordinal of the event before this record
 *   [node]     zigzag, unless TAG_NODE_SAME
 *   events only (ITEM_EVENT, ITEM_RAW):
 *     [kind]   unless TAG_KIND_SAME
 *     [peer]   zigzag, unless TAG_PEER_SAME
 *     t_ns     zigzag of the difference from the previous record's
 *     id       zigzag of the difference from the previous record's
 *     aux, plen
 *   nlen       name bytes with the NUL, 0 = no name
 *   ITEM_RAW:  seq (zigzag), and the 8-byte hash (native order) with
 *              TAG_HASH
 *   payload, name
 *
 * "Previous" is the previous record of the same queue chunk: the first
 * record of every chunk has TAG_RESET, which starts from a zero state
 * (node, kind, peer, t_ns, id all 0), so a chunk decodes by itself and an
 * import (always from the start of the spill file, which is the start of a
 * chunk) never needs what came before. Event records carry no ordinal: the
 * ordinals of a chunk's events are consecutive from base + 1 (they are
 * taken under the same lock as the chunk's space). Native byte order: a
 * spill file is read back on the machine that wrote it. */
static const char SPILL_MAGIC[8] = {'D', 'R', 'P', 'C', 'S', 'P', 'L', '2'};
#define SPILL_HDR 16 /* magic, then 8 reserved bytes */

#define TAG_TYPE 0x03
#define TAG_HASH 0x04
#define TAG_RESET 0x08
#define TAG_NODE_SAME 0x10
#define TAG_KIND_SAME 0x20
#define TAG_PEER_SAME 0x40
#define TAG_RESERVED 0x80
/* Most bytes a record takes before its payload and name: the tag and
 * eleven varints (at most 10 bytes each; node and peer at most 3, kind and
 * nlen at most 5) and the hash. */
#define REC_MAX_HEAD 96

/* What the previous record of a chunk left for the next one to be coded
 * against, on both sides; ord is the last event ordinal (decoder). */
typedef struct spill_state {
  uint64_t ord, t_ns, id;
  uint32_t kind;
  int16_t node, peer;
  bool reset; /* decoder: a TAG_RESET record was seen */
} spill_state;

/* One decoded record; payload and name point into the spill file. */
typedef struct spill_item {
  int type;
  bool has_hash;
  int16_t node, peer;
  uint32_t kind, nlen;
  uint64_t ordinal; /* events.id; 0 for ITEM_NODE */
  uint64_t t_ns, id, aux, plen;
  int64_t seq;
  uint64_t hash;
  const unsigned char *payload;
  const char *name; /* NULL when nlen is 0 */
} spill_item;

/* A queue chunk: records in spill format, appended under the callers'
 * lock; enc is the encoder's state (records are coded against the
 * previous one of the chunk). */
typedef struct chunk {
  struct chunk *next;
  size_t cap, used;
  uint64_t events; /* event records in it */
  spill_state enc;
  _Alignas(8) unsigned char data[];
} chunk;

/* The import's payload table entry: a payload already stored, with where
 * its bytes lie in the spill file of generation gen (0: only in the
 * database). size 0 marks an empty slot (stored payloads are never
 * empty). */
typedef struct ptab_ent {
  uint64_t hash;
  int64_t id;
  uint64_t off;
  uint32_t size;
  uint32_t gen;
} ptab_ent;

/* Rows the import has yet to insert: events (the ?1..?13 of
 * ins_event_id, null marks NULLs) and new payloads (bytes in the mapped
 * spill file). Both go in with a NULL id, which SQLite turns into
 * max(id) + 1 without a lookup; that is the event's ordinal (ordinals
 * have no gaps: nothing is imported after a dropped event) and the
 * payload id the import handed out, which flush_* check. */
typedef struct ev_row {
  int64_t v[EV_COLS];
  uint16_t null;
} ev_row;

typedef struct pl_row {
  int64_t id;
  uint64_t hash;
  const void *bytes;
  size_t len;
} pl_row;

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
      *find_string, *ins_node, *name_node, *ins_event_id, *get_payload,
      *ins_payload_id, *ins_events_n, *ins_payloads_n;

  /* Writer state: touched only by the writer thread, or unthreaded by the
   * caller holding mu. */
  bool in_txn;
  unsigned txn_events;
  node_state *nodes;
  uint8_t *seen;
  str_slot strs[STRING_CACHE];

  /* Spill and import state, the writer's (or close's after the join). */
  int spill_fd;
  char *spill_path;
  uint64_t spill_end;       /* bytes in the spill file */
  uint64_t spill_events;    /* events in it */
  uint32_t spill_gen;       /* bumped whenever the spill file is emptied */
  bool keep_spill;          /* an import failed: leave it for recover */
  const unsigned char *map; /* the spill file while importing */
  uint64_t map_len;
  uint64_t skip_upto;   /* recover: events.id already in the database */
  uint64_t base_events; /* recover: events the database held */
  bool recovering;
  ptab_ent *ptab;
  unsigned ptab_bits, ptab_max_bits;
  size_t ptab_used;
  bool ptab_full;       /* payloads past the table: ask the database */
  bool payload_idx_off; /* payloads_hash dropped in the open import */
  ev_row evs[IMPORT_ROWS];
  pl_row pls[IMPORT_ROWS];
  size_t nevs, npls;
  int64_t next_payload; /* payloads.id of the next payload imported */
  bool verbose;         /* DRPC_RECORDER_STATS: import timings on stderr */
  double import_s;

  /* The first write error, under err_mu (the writer sets it while a
   * caller may be reading it in flush). */
  pthread_mutex_t err_mu;
  drpc_error werr;
  atomic_bool failed;

  /* Callers' side, under the callers' lock (callers_lock: plock when
   * threaded, mu unthreaded, where it also serialises the writes): the
   * chunk being filled and the counters. The writer takes it only to
   * collect a partly filled chunk (every SPILL_LATENCY_MS at most). */
  pthread_mutex_t mu;
  atomic_bool plock; /* threaded: the callers' lock (callers_lock) */
  chunk *cur;
  uint64_t next_ordinal;
  drpc_recorder_stats st; /* events, bytes, stalls, dropped */
  atomic_bool cur_dirty;  /* cur holds records the writer has not seen */

  /* The hand-off, under qmu (taken after the callers' lock when both are):
   * callers take it once per chunk, the writer per batch. */
  pthread_mutex_t qmu;
  pthread_cond_t work;  /* the writer waits for chunks */
  pthread_cond_t space; /* callers wait for room or a flush */
  chunk *head, **tail;  /* full chunks, oldest first */
  chunk *spare;         /* empty chunks for reuse */
  unsigned nspare;
  unsigned waiters; /* callers waiting for space */
  bool writer_idle; /* the writer waits with nothing queued */
  bool closing;
  uint64_t flush_req, flush_done;
  pthread_t thread;
  bool thread_started;
  /* Queue bytes handed to the writer and not yet written (updated under
   * qmu, read by callers without it), and the bounds. */
  atomic_size_t queued, limit;
  atomic_uint_fast64_t spill_limit;

  /* Writer-side counters, read by stats_get. */
  atomic_uint_fast64_t written, stored, deduped, wdropped, spilled, imports;
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
static int commit(drpc_recorder *r) {
  if (!r->in_txn)
    return 0;
  r->in_txn = false;
  if (sqlite3_get_autocommit(r->db))
    return -1; /* SQLite already rolled back after an error */
  if (exec(r, "COMMIT", "commit")) {
    sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL);
    return -1;
  }
  return 0;
}

/* Abandons the open transaction. */
static void rollback(drpc_recorder *r) {
  if (!r->in_txn)
    return;
  r->in_txn = false;
  if (!sqlite3_get_autocommit(r->db))
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

/* Looks a payload up in the database (index payloads_hash): 1 with *id
 * when stored, 0 when not, -1 on error. */
static int payload_find_db(drpc_recorder *r, uint64_t h, const void *bytes,
                           size_t len, int64_t *id) {
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
      return 1;
    }
  }
  sqlite3_reset(q);
  if (rc != SQLITE_DONE) {
    fail_sql(r, rc, "looking up a payload");
    return -1;
  }
  return 0;
}

/* Stores a new payload; *id is its payloads.id. */
static int payload_store(drpc_recorder *r, uint64_t h, const void *bytes,
                         size_t len, int64_t *id) {
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
  size_t bit = (size_t)(h & (SEEN_BITS - 1));
  r->seen[bit >> 3] |= (uint8_t)(1u << (bit & 7));
  *id = sqlite3_last_insert_rowid(r->db);
  atomic_fetch_add(&r->stored, 1);
  return 0;
}

static bool seen_maybe(const drpc_recorder *r, uint64_t h) {
  size_t bit = (size_t)(h & (SEEN_BITS - 1));
  return r->seen[bit >> 3] & (1u << (bit & 7));
}

/* Finds or stores a payload (unthreaded); *id is its payloads.id. */
static int payload_intern(drpc_recorder *r, const void *bytes, size_t len,
                          int64_t *id) {
  uint64_t h = payload_hash(bytes, len);
  if (seen_maybe(r, h)) {
    int found = payload_find_db(r, h, bytes, len, id);
    if (found < 0)
      return -1;
    if (found) {
      atomic_fetch_add(&r->deduped, 1);
      return 0;
    }
  }
  return payload_store(r, h, bytes, len, id);
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

/* Binds and inserts an event row (unthreaded). */
static int insert_event(drpc_recorder *r, const drpc_event *ev, int64_t seq,
                        bool has_hash, uint64_t hash, int64_t payload,
                        int64_t name) {
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
    return -1;
  }
  return 0;
}

/* The seq and stored hash of the node's next event (raw: as given). */
static void next_seq(drpc_recorder *r, const drpc_event *ev, bool raw,
                     int64_t *seq, bool *has_hash, uint64_t *hash) {
  if (raw)
    return;
  node_state *ns = &r->nodes[(uint16_t)ev->node];
  *seq = ns->seq++;
  *has_hash = drpc_event_is_output(ev->kind);
  if (*has_hash) {
    ns->hash = drpc_event_fold(ns->hash, ev);
    *hash = ns->hash;
  }
}

/* Inserts one event (unthreaded). raw: seq and hash come from the
 * caller. */
static void write_event(drpc_recorder *r, const drpc_event *ev, bool raw,
                        int64_t seq, bool has_hash, uint64_t hash) {
  if (atomic_load(&r->failed) || begin(r) || ensure_node(r, ev->node)) {
    atomic_fetch_add(&r->wdropped, 1);
    return;
  }
  next_seq(r, ev, raw, &seq, &has_hash, &hash);
  int64_t payload = 0, name = 0;
  if ((ev->len > 0 && payload_intern(r, ev->bytes, ev->len, &payload)) ||
      (ev->name && string_intern(r, ev->name, &name)) ||
      insert_event(r, ev, seq, has_hash, hash, payload, name)) {
    atomic_fetch_add(&r->wdropped, 1);
    return;
  }
  atomic_fetch_add(&r->written, 1);
  if (++r->txn_events >= DRPC_RECORDER_BATCH)
    commit(r);
}

/* ---- importing the spill file --------------------------------------- */

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void ptab_put(ptab_ent *t, unsigned bits, const ptab_ent *e) {
  size_t mask = ((size_t)1 << bits) - 1;
  size_t i = (size_t)(e->hash >> (64 - bits)) & mask;
  while (t[i].size)
    i = (i + 1) & mask;
  t[i] = *e;
}

/* Remembers a stored payload; when the table cannot grow further,
 * ptab_full sends later lookups to the database. */
static void ptab_add(drpc_recorder *r, uint64_t h, size_t size, int64_t id,
                     uint64_t off, uint32_t gen) {
  if (r->ptab_full)
    return;
  if (size > UINT32_MAX) {
    r->ptab_full = true;
    return;
  }
  if (!r->ptab || (r->ptab_used + 1) * 4 > ((size_t)3 << r->ptab_bits)) {
    unsigned bits = r->ptab ? r->ptab_bits + 1 : PTAB_MIN_BITS;
    ptab_ent *t =
        bits <= r->ptab_max_bits ? calloc((size_t)1 << bits, sizeof *t) : NULL;
    if (!t) {
      r->ptab_full = true;
      return;
    }
    for (size_t i = 0; r->ptab && i < ((size_t)1 << r->ptab_bits); i++)
      if (r->ptab[i].size)
        ptab_put(t, bits, &r->ptab[i]);
    free(r->ptab);
    r->ptab = t;
    r->ptab_bits = bits;
  }
  ptab_ent e = {
      .hash = h, .id = id, .off = off, .size = (uint32_t)size, .gen = gen};
  ptab_put(r->ptab, r->ptab_bits, &e);
  r->ptab_used++;
}

/* Inserts the pending payloads: IMPORT_ROWS at once, or one by one. */
static int flush_payloads(drpc_recorder *r) {
  size_t n = r->npls;
  r->npls = 0;
  for (size_t i = 0; i < n;) {
    bool many = n - i == IMPORT_ROWS;
    sqlite3_stmt *s = many ? r->ins_payloads_n : r->ins_payload_id;
    size_t k = many ? IMPORT_ROWS : 1;
    for (size_t j = 0; j < k; j++) {
      const pl_row *p = &r->pls[i + j];
      int b = (int)(4 * j);
      sqlite3_bind_null(s, b + 1); /* SQLite appends: p->id */
      sqlite3_bind_int64(s, b + 2, (int64_t)p->hash);
      sqlite3_bind_int64(s, b + 3, (int64_t)p->len);
      sqlite3_bind_blob64(s, b + 4, p->bytes, p->len, SQLITE_STATIC);
    }
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) {
      fail_sql(r, rc, "storing a payload");
      return -1;
    }
    i += k;
    if (sqlite3_last_insert_rowid(r->db) != r->pls[i - 1].id) {
      fail(r, DRPC_EIO, "payload ids out of step at %lld",
           (long long)r->pls[i - 1].id);
      return -1;
    }
  }
  return 0;
}

/* Inserts the pending events (after the payloads they name). */
static int flush_events(drpc_recorder *r) {
  if (flush_payloads(r))
    return -1;
  size_t n = r->nevs;
  r->nevs = 0;
  for (size_t i = 0; i < n;) {
    bool many = n - i == IMPORT_ROWS;
    sqlite3_stmt *s = many ? r->ins_events_n : r->ins_event_id;
    size_t k = many ? IMPORT_ROWS : 1;
    for (size_t j = 0; j < k; j++) {
      const ev_row *e = &r->evs[i + j];
      int b = (int)(EV_COLS * j);
      for (int c = 0; c < EV_COLS; c++) {
        if (e->null & (1u << c))
          sqlite3_bind_null(s, b + c + 1);
        else
          sqlite3_bind_int64(s, b + c + 1, e->v[c]);
      }
    }
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    if (rc != SQLITE_DONE) {
      fail_sql(r, rc, "inserting an event");
      return -1;
    }
    i += k;
    if (sqlite3_last_insert_rowid(r->db) != r->evs[i - 1].v[12]) {
      fail(r, DRPC_EIO, "event ids out of step at %lld",
           (long long)r->evs[i - 1].v[12]);
      return -1;
    }
    atomic_fetch_add(&r->written, k);
  }
  return 0;
}

/* Queues an event row for flush_events. */
static int queue_event(drpc_recorder *r, const drpc_event *ev, int64_t seq,
                       bool has_hash, uint64_t hash, int64_t payload,
                       int64_t name, uint64_t id) {
  if (r->nevs == IMPORT_ROWS && flush_events(r))
    return -1;
  ev_row *e = &r->evs[r->nevs++];
  e->v[0] = r->run;
  e->v[1] = ev->node;
  e->v[2] = seq;
  e->v[3] = (int64_t)ev->kind;
  e->v[4] = (int64_t)ev->time_ns;
  e->v[5] = ev->peer;
  e->v[6] = (int64_t)ev->id;
  e->v[7] = (int64_t)ev->aux;
  e->v[8] = (int64_t)ev->len;
  e->v[9] = payload;
  e->v[10] = name;
  e->v[11] = (int64_t)hash;
  e->v[12] = (int64_t)id;
  e->null = (uint16_t)((ev->peer < 0) << 5 | (ev->len == 0) << 9 |
                       (ev->name == NULL) << 10 | (!has_hash) << 11 | 1u << 12);
  return 0;
}

/* Whether the stored payload e holds bytes: compared in the mapped spill
 * file when it came from it, else read back from the database. 1 yes, 0
 * no, -1 error. */
static int ptab_same(drpc_recorder *r, const ptab_ent *e, const void *bytes,
                     size_t len) {
  if (e->gen && e->gen == r->spill_gen && r->map && e->off <= r->map_len &&
      len <= r->map_len - e->off)
    return memcmp(r->map + e->off, bytes, len) == 0;
  sqlite3_stmt *q = r->get_payload;
  sqlite3_bind_int64(q, 1, e->id);
  int rc = sqlite3_step(q), same = 0;
  if (rc == SQLITE_ROW) {
    const void *b = sqlite3_column_blob(q, 0);
    same = (size_t)sqlite3_column_bytes(q, 0) == len && b &&
           memcmp(b, bytes, len) == 0;
  }
  sqlite3_reset(q);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    fail_sql(r, rc, "reading a payload");
    return -1;
  }
  return same;
}

/* Finds or stores a payload lying at off in the mapped spill file: the
 * in-memory table answers, the database only past the table's bound. */
static int import_payload(drpc_recorder *r, const void *bytes, size_t len,
                          uint64_t off, int64_t *id) {
  uint64_t h = payload_hash(bytes, len);
  if (r->ptab) {
    size_t mask = ((size_t)1 << r->ptab_bits) - 1;
    for (size_t i = (size_t)(h >> (64 - r->ptab_bits)) & mask; r->ptab[i].size;
         i = (i + 1) & mask) {
      const ptab_ent *e = &r->ptab[i];
      if (e->hash != h || e->size != len)
        continue;
      int same = ptab_same(r, e, bytes, len);
      if (same < 0)
        return -1;
      if (same) {
        *id = e->id;
        atomic_fetch_add(&r->deduped, 1);
        return 0;
      }
    }
  }
  if (r->ptab_full && seen_maybe(r, h)) {
    if (flush_payloads(r))
      return -1;
    if (r->payload_idx_off) {
      if (exec(r, INDEX_PAYLOADS_SQL, "indexing payloads"))
        return -1;
      r->payload_idx_off = false;
    }
    int found = payload_find_db(r, h, bytes, len, id);
    if (found < 0)
      return -1;
    if (found) {
      atomic_fetch_add(&r->deduped, 1);
      return 0;
    }
  }
  if (r->npls == IMPORT_ROWS && flush_payloads(r))
    return -1;
  *id = r->next_payload++;
  r->pls[r->npls++] =
      (pl_row){.id = *id, .hash = h, .bytes = bytes, .len = len};
  size_t bit = (size_t)(h & (SEEN_BITS - 1));
  r->seen[bit >> 3] |= (uint8_t)(1u << (bit & 7));
  atomic_fetch_add(&r->stored, 1);
  ptab_add(r, h, len, *id, off, r->spill_gen);
  return 0;
}

/* ---- the spill record codec ----------------------------------------- */

static inline uint64_t zigzag(int64_t v) {
  return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
}

static inline int64_t unzigzag(uint64_t u) {
  return (int64_t)(u >> 1) ^ -(int64_t)(u & 1);
}

static inline unsigned char *put_var(unsigned char *p, uint64_t v) {
  while (v >= 0x80) {
    *p++ = (unsigned char)(v | 0x80);
    v >>= 7;
  }
  *p++ = (unsigned char)v;
  return p;
}

static bool get_var(const unsigned char **p, const unsigned char *end,
                    uint64_t *v) {
  uint64_t x = 0;
  for (unsigned shift = 0; shift < 70 && *p < end; shift += 7) {
    unsigned char b = *(*p)++;
    x |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) {
      *v = x;
      return true;
    }
  }
  return false;
}

/* Encodes a record at p (REC_MAX_HEAD + payload + name bytes free) against
 * the chunk's state s; reset starts the chunk (base: the last ordinal
 * handed out). Returns the end of the record. */
static unsigned char *rec_encode(unsigned char *p, spill_state *s, bool reset,
                                 uint64_t base, int type, const drpc_event *ev,
                                 size_t len, size_t nlen, int64_t seq,
                                 const uint64_t *hash) {
  unsigned char *tag = p++;
  unsigned t = (unsigned)type | (hash ? TAG_HASH : 0);
  if (reset) {
    *s = (spill_state){0};
    t |= TAG_RESET;
    p = put_var(p, base);
  }
  if (ev->node == s->node)
    t |= TAG_NODE_SAME;
  else
    p = put_var(p, zigzag(s->node = ev->node));
  if (type != ITEM_NODE) {
    if ((uint32_t)ev->kind == s->kind)
      t |= TAG_KIND_SAME;
    else
      p = put_var(p, s->kind = (uint32_t)ev->kind);
    if (ev->peer == s->peer)
      t |= TAG_PEER_SAME;
    else
      p = put_var(p, zigzag(s->peer = ev->peer));
    p = put_var(p, zigzag((int64_t)(ev->time_ns - s->t_ns)));
    p = put_var(p, zigzag((int64_t)(ev->id - s->id)));
    s->t_ns = ev->time_ns;
    s->id = ev->id;
    p = put_var(p, ev->aux);
    p = put_var(p, len);
  }
  p = put_var(p, nlen);
  if (type == ITEM_RAW) {
    p = put_var(p, zigzag(seq));
    if (hash) {
      memcpy(p, hash, sizeof *hash);
      p += sizeof *hash;
    }
  }
  *tag = (unsigned char)t;
  if (len)
    memcpy(p, ev->bytes, len);
  p += len;
  if (nlen)
    memcpy(p, ev->name, nlen);
  return p + nlen;
}

/* Decodes the record at p (avail bytes left in the file) against s.
 * Returns its length, or 0 when it is not a whole, well-formed record (a
 * record cut short at the end of the file, or junk); s is then left as
 * it was. */
static size_t rec_decode(const unsigned char *p, uint64_t avail, spill_state *s,
                         spill_item *it) {
  const unsigned char *q = p, *end = p + avail;
  if (avail == 0)
    return 0;
  unsigned t = *q++;
  spill_state n = *s;
  *it = (spill_item){.type = (int)(t & TAG_TYPE), .has_hash = t & TAG_HASH};
  if (it->type < ITEM_EVENT || it->type > ITEM_NODE || (t & TAG_RESERVED) ||
      (it->has_hash && it->type != ITEM_RAW))
    return 0;
  uint64_t v;
  if (t & TAG_RESET) {
    if (!get_var(&q, end, &v))
      return 0;
    n = (spill_state){.ord = v, .reset = true};
  } else if (!n.reset) {
    return 0; /* a file starts with a chunk */
  }
  if (!(t & TAG_NODE_SAME)) {
    if (!get_var(&q, end, &v) || unzigzag(v) < INT16_MIN ||
        unzigzag(v) > INT16_MAX)
      return 0;
    n.node = (int16_t)unzigzag(v);
  }
  it->node = n.node;
  if (it->type != ITEM_NODE) {
    if (!(t & TAG_KIND_SAME)) {
      if (!get_var(&q, end, &v) || v > UINT32_MAX)
        return 0;
      n.kind = (uint32_t)v;
    }
    if (!(t & TAG_PEER_SAME)) {
      if (!get_var(&q, end, &v) || unzigzag(v) < INT16_MIN ||
          unzigzag(v) > INT16_MAX)
        return 0;
      n.peer = (int16_t)unzigzag(v);
    }
    uint64_t dt, did;
    if (!get_var(&q, end, &dt) || !get_var(&q, end, &did) ||
        !get_var(&q, end, &it->aux) || !get_var(&q, end, &it->plen))
      return 0;
    n.t_ns += (uint64_t)unzigzag(dt);
    n.id += (uint64_t)unzigzag(did);
    it->kind = n.kind;
    it->peer = n.peer;
    it->t_ns = n.t_ns;
    it->id = n.id;
    it->ordinal = ++n.ord;
  }
  if (!get_var(&q, end, &v) || v > UINT32_MAX)
    return 0;
  it->nlen = (uint32_t)v;
  if (it->type == ITEM_RAW) {
    if (!get_var(&q, end, &v))
      return 0;
    it->seq = unzigzag(v);
    if (it->has_hash) {
      if ((size_t)(end - q) < sizeof it->hash)
        return 0;
      memcpy(&it->hash, q, sizeof it->hash);
      q += sizeof it->hash;
    }
  }
  uint64_t left = (uint64_t)(end - q);
  if (it->plen > left || it->nlen > left - it->plen)
    return 0;
  it->payload = q;
  q += it->plen;
  if (it->nlen) {
    if (q[it->nlen - 1] != 0)
      return 0;
    it->name = (const char *)q;
    q += it->nlen;
  }
  *s = n;
  return (size_t)(q - p);
}

/* Imports one decoded record of the mapped spill file. */
static void import_record(drpc_recorder *r, const spill_item *it) {
  if (it->type == ITEM_NODE) {
    write_node(r, it->node, it->name);
    return;
  }
  if (it->ordinal <= r->skip_upto)
    return; /* recover: the database has it */
  drpc_event ev = {.kind = (drpc_event_kind)it->kind,
                   .node = it->node,
                   .peer = it->peer,
                   .time_ns = it->t_ns,
                   .id = it->id,
                   .aux = it->aux,
                   .bytes = it->plen ? it->payload : NULL,
                   .len = (size_t)it->plen,
                   .name = it->name};
  if (atomic_load(&r->failed) || ensure_node(r, ev.node)) {
    atomic_fetch_add(&r->wdropped, 1);
    return;
  }
  int64_t seq = it->seq, payload = 0, nid = 0;
  bool has_hash = it->has_hash;
  uint64_t hash = it->hash;
  next_seq(r, &ev, it->type == ITEM_RAW, &seq, &has_hash, &hash);
  if ((ev.len > 0 &&
       import_payload(r, it->payload, ev.len, (uint64_t)(it->payload - r->map),
                      &payload)) ||
      (ev.name && string_intern(r, ev.name, &nid)) ||
      queue_event(r, &ev, seq, has_hash, hash, payload, nid, it->ordinal))
    return; /* failed: the import counts what it did not insert */
}

/* Empties the spill file after its events reached the database. */
static void spill_reset(drpc_recorder *r) {
  if (ftruncate(r->spill_fd, SPILL_HDR) != 0) {
    fail(r, DRPC_EIO, "emptying %s: %s", r->spill_path, strerror(errno));
    r->keep_spill = true;
    return;
  }
  r->spill_end = SPILL_HDR;
  r->spill_events = 0;
  r->spill_gen++;
}

/* Imports the spill file into the database in one transaction. A large
 * import (at least as many events as the database holds) drops the
 * secondary indexes and builds them again at the end, which is faster
 * than keeping them up to date row by row; the payload dedupe runs
 * against an in-memory table of what is stored. On failure what the
 * transaction held is rolled back when the indexes were dropped (else
 * committed, as unthreaded), and the spill file is kept for
 * drpc_recorder_recover. */
static void import_spill(drpc_recorder *r) {
  if (r->spill_end <= SPILL_HDR)
    return;
  if (atomic_load(&r->failed) || r->keep_spill) {
    atomic_fetch_add(&r->wdropped, r->spill_events);
    r->spill_events = 0;
    r->keep_spill = true;
    return;
  }
  double t0 = mono_s();
  uint64_t events = r->spill_events;
  void *m =
      mmap(NULL, (size_t)r->spill_end, PROT_READ, MAP_SHARED, r->spill_fd, 0);
  if (m == MAP_FAILED) {
    fail(r, DRPC_EIO, "mapping %s: %s", r->spill_path, strerror(errno));
    atomic_fetch_add(&r->wdropped, events);
    r->keep_spill = true;
    return;
  }
  madvise(m, (size_t)r->spill_end, MADV_SEQUENTIAL);
  r->map = m;
  r->map_len = r->spill_end;
  uint64_t written0 = atomic_load(&r->written);
  uint64_t dropped0 = atomic_load(&r->wdropped);
  bool rebuild =
      events >= REBUILD_MIN_EVENTS && events >= r->base_events + written0;
  commit(r);
  bool ok = begin(r) == 0;
  if (ok && rebuild) {
    ok = exec(r,
              "DROP INDEX payloads_hash; DROP INDEX events_node_seq;"
              " DROP INDEX events_time;",
              "dropping indexes") == 0;
    r->payload_idx_off = ok;
  }
  uint64_t off = SPILL_HDR;
  spill_state ds = {0};
  while (ok && off < r->map_len) {
    spill_item it;
    size_t n = rec_decode(r->map + off, r->map_len - off, &ds, &it);
    if (!n)
      break;
    import_record(r, &it);
    off += n;
    ok = !atomic_load(&r->failed);
  }
  if (ok && flush_events(r))
    ok = false;
  r->nevs = r->npls = 0;
  if (ok && off != r->map_len) {
    fail(r, DRPC_EIO, "%s is corrupt at offset %llu", r->spill_path,
         (unsigned long long)off);
    ok = false;
  }
  if (ok && rebuild) {
    ok = (!r->payload_idx_off ||
          exec(r, INDEX_PAYLOADS_SQL, "indexing payloads") == 0) &&
         exec(r, INDEX_EVENTS_SQL, "indexing events") == 0;
  }
  r->payload_idx_off = false;
  uint64_t inserted = atomic_load(&r->written) - written0;
  /* Events the loop never reached (or left queued) are lost too. */
  uint64_t reached = inserted + (atomic_load(&r->wdropped) - dropped0);
  if (!ok && events > reached)
    atomic_fetch_add(&r->wdropped, events - reached);
  bool undone = false;
  if (!ok && rebuild) {
    rollback(r); /* never leave a file without its indexes */
    undone = true;
  } else if (commit(r) && ok) {
    ok = false; /* the commit failed: SQLite rolled it all back */
    undone = true;
  }
  if (undone) {
    atomic_fetch_sub(&r->written, inserted);
    atomic_fetch_add(&r->wdropped, inserted);
  }
  munmap(m, (size_t)r->map_len);
  r->map = NULL;
  r->map_len = 0;
  atomic_fetch_add(&r->imports, 1);
  r->import_s += mono_s() - t0;
  if (ok)
    spill_reset(r);
  else
    r->keep_spill = true;
}

/* ---- the writer thread ---------------------------------------------- */

static int spill_write(drpc_recorder *r, const void *p, size_t n) {
  const unsigned char *b = p;
  while (n > 0) {
    ssize_t k = pwrite(r->spill_fd, b, n, (off_t)r->spill_end);
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0) {
      fail(r, DRPC_EIO, "writing %s: %s", r->spill_path,
           k < 0 ? strerror(errno) : "no progress");
      return -1;
    }
    b += k;
    n -= (size_t)k;
    r->spill_end += (uint64_t)k;
  }
  return 0;
}

/* Appends chunks to the spill file, importing it first when they would
 * take it past its bound. Returns the queue bytes they held. */
static size_t spill_chunks(drpc_recorder *r, chunk *list, uint64_t limit) {
  size_t bytes = 0;
  uint64_t events = 0;
  for (chunk *c = list; c; c = c->next) {
    bytes += c->used;
    events += c->events;
  }
  if (r->spill_end > SPILL_HDR && r->spill_end - SPILL_HDR + bytes > limit)
    import_spill(r);
  for (chunk *c = list; c; c = c->next) {
    if (atomic_load(&r->failed) || r->keep_spill) {
      /* Nothing more reaches the file after an error. */
      atomic_fetch_add(&r->wdropped, events);
      break;
    }
    if (spill_write(r, c->data, c->used)) {
      atomic_fetch_add(&r->wdropped, events);
      r->keep_spill = true;
      break;
    }
    events -= c->events;
    r->spill_events += c->events;
    atomic_fetch_add(&r->spilled, c->used);
  }
  return bytes;
}

/* The callers' lock. Threaded it is a test-and-set lock whose release is
 * a plain store: a mutex unlock is a full barrier, which would make every
 * caller wait for its stores into the chunk (cold memory) to complete;
 * this way they retire while the caller goes on. It is held for a copy,
 * never across a wait; contention (several recording threads, the writer
 * collecting a chunk) spins briefly, then yields. Unthreaded it is mu,
 * held across SQLite writes. */
static void callers_lock(drpc_recorder *r) {
  if (!r->threaded) {
    pthread_mutex_lock(&r->mu);
    return;
  }
  for (unsigned spins = 0;; spins++) {
    if (!atomic_load_explicit(&r->plock, memory_order_relaxed) &&
        !atomic_exchange_explicit(&r->plock, true, memory_order_acquire))
      return;
    if (spins >= 64)
      sched_yield();
  }
}

static void callers_unlock(drpc_recorder *r) {
  if (r->threaded)
    atomic_store_explicit(&r->plock, false, memory_order_release);
  else
    pthread_mutex_unlock(&r->mu);
}

static void chunk_release(drpc_recorder *r, chunk *c) {
  if (c->cap == CHUNK_SIZE && r->nspare < SPARE_CHUNKS) {
    c->next = r->spare;
    r->spare = c;
    r->nspare++;
  } else {
    free(c);
  }
}

/* Appends c to the full chunks; qmu held. */
static void hand_off(drpc_recorder *r, chunk *c) {
  c->next = NULL;
  *r->tail = c;
  r->tail = &c->next;
  atomic_fetch_add(&r->queued, c->used);
}

/* Appends the full chunks to the spill file; collects the partly filled
 * one after SPILL_LATENCY_MS, or at once when a caller waits for space,
 * a flush or the close. With nothing queued it serves flushes (an import
 * of the spill file) and otherwise sleeps until a chunk starts. */
static void *writer_main(void *arg) {
  drpc_recorder *r = arg;
  bool timed_out = false;
  pthread_mutex_lock(&r->qmu);
  for (;;) {
    if (r->head) {
      chunk *list = r->head;
      r->head = NULL;
      r->tail = &r->head;
      uint64_t limit = atomic_load(&r->spill_limit);
      pthread_mutex_unlock(&r->qmu);
      size_t bytes = spill_chunks(r, list, limit);
      pthread_mutex_lock(&r->qmu);
      atomic_fetch_sub(&r->queued, bytes);
      while (list) {
        chunk *c = list;
        list = c->next;
        chunk_release(r, c);
      }
      if (r->waiters)
        pthread_cond_broadcast(&r->space);
      continue;
    }
    bool urgent = r->waiters || r->closing || r->flush_done != r->flush_req;
    if (atomic_load(&r->cur_dirty)) {
      if (!urgent && !timed_out) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += SPILL_LATENCY_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
          ts.tv_sec++;
          ts.tv_nsec -= 1000000000L;
        }
        timed_out = pthread_cond_timedwait(&r->work, &r->qmu, &ts) == ETIMEDOUT;
        continue;
      }
      /* Collect the partly filled chunk (lock order: the callers' lock, then
       * qmu). */
      timed_out = false;
      pthread_mutex_unlock(&r->qmu);
      callers_lock(r);
      pthread_mutex_lock(&r->qmu);
      chunk *c = r->cur;
      if (c && c->used > 0) {
        r->cur = NULL;
        hand_off(r, c);
      }
      atomic_store(&r->cur_dirty, false);
      callers_unlock(r);
      continue;
    }
    if (r->flush_done != r->flush_req) {
      uint64_t want = r->flush_req;
      pthread_mutex_unlock(&r->qmu);
      import_spill(r);
      pthread_mutex_lock(&r->qmu);
      r->flush_done = want;
      pthread_cond_broadcast(&r->space);
      continue;
    }
    if (r->closing)
      break;
    r->writer_idle = true;
    pthread_cond_wait(&r->work, &r->qmu);
    r->writer_idle = false;
  }
  pthread_mutex_unlock(&r->qmu);
  return NULL;
}

/* ---- recording entry points ----------------------------------------- */

/* Copies an event (or node name) into the chunk being filled, in spill
 * format, under the callers' lock. qmu is taken only to hand a full chunk over
 * and start the next one, and to wait while the queue is over its bound. */
static void enqueue(drpc_recorder *r, int type, const drpc_event *ev,
                    int64_t seq, const uint64_t *hash) {
  size_t len = ev->bytes ? ev->len : 0;
  size_t nlen = ev->name ? strlen(ev->name) + 1 : 0;
  bool fits = nlen <= UINT32_MAX &&
              len <= SIZE_MAX - sizeof(chunk) - REC_MAX_HEAD - nlen;
  /* Room is reserved for the longest encoding; the record takes what its
   * encoding needs. */
  size_t cost = fits ? REC_MAX_HEAD + len + nlen : 0;
  callers_lock(r);
  if (type != ITEM_NODE)
    r->st.events++;
  bool stalled = false;
  chunk *c = NULL;
  for (;;) {
    if (!fits || atomic_load(&r->failed)) {
      c = NULL;
      break;
    }
    c = r->cur;
    size_t used = c ? c->used : 0;
    size_t q = atomic_load(&r->queued), lim = atomic_load(&r->limit);
    /* An event larger than the bound still goes into an empty queue. */
    bool room = q + used == 0 || (q + used <= lim && cost <= lim - q - used);
    if (room && c && c->cap - used >= cost)
      break;
    pthread_mutex_lock(&r->qmu);
    if (c && used > 0) {
      hand_off(r, c);
      pthread_cond_signal(&r->work);
    } else if (c) {
      chunk_release(r, c);
    }
    r->cur = c = NULL;
    atomic_store(&r->cur_dirty, false);
    q = atomic_load(&r->queued);
    if (q > 0 && (q > lim || cost > lim - q)) {
      if (!stalled) {
        stalled = true;
        r->st.stalls++;
      }
      r->waiters++;
      pthread_cond_signal(&r->work);
      callers_unlock(r);
      pthread_cond_wait(&r->space, &r->qmu);
      r->waiters--;
      pthread_mutex_unlock(&r->qmu);
      callers_lock(r);
      continue;
    }
    if (cost <= CHUNK_SIZE && r->spare) {
      c = r->spare;
      r->spare = c->next;
      r->nspare--;
    } else {
      size_t cap = cost > CHUNK_SIZE ? cost : CHUNK_SIZE;
      if ((c = malloc(sizeof *c + cap)) != NULL)
        c->cap = cap;
    }
    if (c) {
      /* The chunk starts now: the writer collects it within
       * SPILL_LATENCY_MS (it cannot before this record is in, as that
       * takes the callers' lock), and wakes for it when idle. */
      c->used = 0;
      c->events = 0;
      c->next = NULL;
      r->cur = c;
      atomic_store(&r->cur_dirty, true);
      if (r->writer_idle)
        pthread_cond_signal(&r->work);
    }
    pthread_mutex_unlock(&r->qmu);
    break;
  }
  if (!c) {
    if (type != ITEM_NODE)
      r->st.dropped++;
    callers_unlock(r);
    if (fits && !atomic_load(&r->failed))
      fail(r, DRPC_ENOMEM, "out of memory copying an event of %zu bytes", len);
    else if (!fits)
      fail(r, DRPC_ENOMEM, "an event of %zu bytes is too large to record", len);
    return;
  }
  unsigned char *p = c->data + c->used;
  bool reset = c->used == 0;
  uint64_t base = r->next_ordinal;
  if (type != ITEM_NODE)
    r->next_ordinal++;
  unsigned char *e =
      rec_encode(p, &c->enc, reset, base, type, ev, len, nlen, seq, hash);
  c->used += (size_t)(e - p);
  if (type != ITEM_NODE) {
    c->events++;
    r->st.bytes += len;
  }
  callers_unlock(r);
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
  atomic_store(&r->limit, bytes);
  /* A larger bound may let blocked callers in. */
  pthread_mutex_lock(&r->qmu);
  pthread_cond_broadcast(&r->space);
  pthread_mutex_unlock(&r->qmu);
}

void drpc_recorder_set_spill_limit(drpc_recorder *r, uint64_t bytes) {
  if (r)
    atomic_store(&r->spill_limit, bytes);
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
  if (r->threaded) {
    pthread_mutex_lock(&r->qmu);
    uint64_t want = ++r->flush_req;
    pthread_cond_signal(&r->work);
    while (r->flush_done < want)
      pthread_cond_wait(&r->space, &r->qmu);
    pthread_mutex_unlock(&r->qmu);
  } else {
    pthread_mutex_lock(&r->mu);
    commit(r);
    pthread_mutex_unlock(&r->mu);
  }
  return take_error(r, err);
}

void drpc_recorder_stats_get(drpc_recorder *r, drpc_recorder_stats *st) {
  if (!r || !st)
    return;
  callers_lock(r);
  *st = r->st;
  callers_unlock(r);
  st->written = atomic_load(&r->written);
  st->payloads_stored = atomic_load(&r->stored);
  st->payloads_deduped = atomic_load(&r->deduped);
  st->dropped += atomic_load(&r->wdropped);
  st->spilled = atomic_load(&r->spilled);
  st->imports = atomic_load(&r->imports);
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

/* head followed by IMPORT_ROWS groups of cols placeholders. */
static int prepare_rows(drpc_recorder *r, sqlite3_stmt **s, const char *head,
                        int cols) {
  char sql[8192];
  size_t n = (size_t)snprintf(sql, sizeof sql, "%s", head);
  for (int i = 0; i < IMPORT_ROWS; i++)
    for (int c = 0; c < cols; c++)
      n += (size_t)snprintf(sql + n, sizeof sql - n, "%s?",
                            c   ? ","
                            : i ? "),("
                                : "(");
  snprintf(sql + n, sizeof sql - n, ")");
  return prepare(r, s, sql);
}

static int prepare_all(drpc_recorder *r) {
  char sql[256];
  if (prepare(r, &r->ins_event,
              "INSERT INTO events(run, node, seq, kind, t_ns, peer, xid, aux,"
              " size, payload, name, hash) "
              "VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)") ||
      prepare(r, &r->ins_event_id,
              "INSERT INTO events(run, node, seq, kind, t_ns, peer, xid, aux,"
              " size, payload, name, hash, id) "
              "VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13)") ||
      prepare(r, &r->ins_payload,
              "INSERT INTO payloads(hash, size, bytes) VALUES(?1,?2,?3)") ||
      prepare(r, &r->find_payload,
              "SELECT id, bytes FROM payloads WHERE hash=?1 AND size=?2") ||
      prepare(r, &r->get_payload, "SELECT bytes FROM payloads WHERE id=?1") ||
      prepare(r, &r->ins_payload_id,
              "INSERT INTO payloads(id, hash, size, bytes) "
              "VALUES(?1,?2,?3,?4)") ||
      prepare_rows(r, &r->ins_events_n,
                   "INSERT INTO events(run, node, seq, kind, t_ns, peer, xid,"
                   " aux, size, payload, name, hash, id) VALUES",
                   EV_COLS) ||
      prepare_rows(r, &r->ins_payloads_n,
                   "INSERT INTO payloads(id, hash, size, bytes) VALUES", 4) ||
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
  sqlite3_stmt **all[] = {
      &r->ins_event,      &r->ins_payload,  &r->find_payload,
      &r->ins_string,     &r->find_string,  &r->ins_node,
      &r->name_node,      &r->ins_event_id, &r->get_payload,
      &r->ins_payload_id, &r->ins_events_n, &r->ins_payloads_n};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
    sqlite3_finalize(*all[i]);
    *all[i] = NULL;
  }
}

static void free_chunks(chunk *c) {
  while (c) {
    chunk *next = c->next;
    free(c);
    c = next;
  }
}

static void free_recorder(drpc_recorder *r) {
  for (size_t i = 0; i < STRING_CACHE; i++)
    free(r->strs[i].text);
  free(r->nodes);
  free(r->seen);
  free(r->ptab);
  free_chunks(r->head);
  free_chunks(r->cur);
  free_chunks(r->spare);
  if (r->spill_fd >= 0)
    close(r->spill_fd);
  drpc_error_clear(&r->werr);
  pthread_cond_destroy(&r->space);
  pthread_cond_destroy(&r->work);
  pthread_mutex_destroy(&r->qmu);
  pthread_mutex_destroy(&r->mu);
  pthread_mutex_destroy(&r->err_mu);
  free(r->spill_path);
  free(r->path);
  free(r);
}

/* A recorder with its locks and tables, no database yet; NULL when out
 * of memory. */
static drpc_recorder *new_recorder(const char *path) {
  drpc_recorder *r = calloc(1, sizeof *r);
  if (!r)
    return NULL;
  r->spill_fd = -1;
  pthread_mutex_init(&r->err_mu, NULL);
  pthread_mutex_init(&r->mu, NULL);
  pthread_mutex_init(&r->qmu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&r->work, &ca);
  pthread_condattr_destroy(&ca);
  pthread_cond_init(&r->space, NULL);
  r->tail = &r->head;
  atomic_init(&r->limit, DRPC_RECORDER_QUEUE_DEFAULT);
  atomic_init(&r->spill_limit, DRPC_RECORDER_SPILL_DEFAULT);
  r->spill_gen = 1;
  r->next_payload = 1;
  const char *v = getenv("DRPC_RECORDER_STATS");
  r->verbose = v && *v && strcmp(v, "0") != 0;
  /* Tests shrink the payload table to reach the database fallback. */
  v = getenv("DRPC_RECORDER_PTAB_BITS");
  r->ptab_max_bits = PTAB_MAX_BITS;
  if (v && atoi(v) >= PTAB_MIN_BITS && atoi(v) < PTAB_MAX_BITS)
    r->ptab_max_bits = (unsigned)atoi(v);
  r->path = strdup(path);
  size_t n = strlen(path) + sizeof ".spill";
  r->spill_path = malloc(n);
  if (r->spill_path)
    snprintf(r->spill_path, n, "%s.spill", path);
  r->nodes = calloc(NODE_SLOTS, sizeof *r->nodes);
  r->seen = calloc(SEEN_BITS / 8, 1);
  if (!r->path || !r->spill_path || !r->nodes || !r->seen) {
    free_recorder(r);
    return NULL;
  }
  return r;
}

/* Opens the database read-write with the recorder's settings. */
static int open_db(drpc_recorder *r) {
  int rc = sqlite3_open_v2(r->path, &r->db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
  if (rc != SQLITE_OK) {
    fail_sql(r, rc, "opening");
    return -1;
  }
  sqlite3_extended_result_codes(r->db, 1);
  /* Exclusive locking before WAL keeps the WAL index in heap memory (no
   * -shm file); see SCHEMA.md for why WAL with synchronous=OFF. */
  return exec(r,
              "PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL;"
              " PRAGMA synchronous=OFF; PRAGMA cache_size=-16384;",
              "setting pragmas");
}

/* Removes path and the files kept beside it. */
static int remove_recording(const char *path, drpc_error *err) {
  static const char *const suffix[] = {"", "-wal", "-shm", "-journal",
                                       ".spill"};
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

/* Creates the spill file with its header. */
static int open_spill(drpc_recorder *r) {
  r->spill_fd =
      open(r->spill_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (r->spill_fd < 0) {
    fail(r, DRPC_EIO, "cannot create %s: %s", r->spill_path, strerror(errno));
    return -1;
  }
  unsigned char hdr[SPILL_HDR] = {0};
  memcpy(hdr, SPILL_MAGIC, sizeof SPILL_MAGIC);
  r->spill_end = 0;
  if (spill_write(r, hdr, sizeof hdr)) {
    unlink(r->spill_path);
    return -1;
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

  drpc_recorder *r = new_recorder(path);
  if (!r) {
    unlink(path);
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory opening recording");
  }
  r->threaded = threaded;
  if (open_db(r))
    goto fail_db;
  char sql[64];
  snprintf(sql, sizeof sql, "PRAGMA user_version=%d", DRPC_TRACE_SCHEMA);
  if (exec(r, "BEGIN", "begin") || exec(r, sql, "setting user_version") ||
      write_header(r, info) || exec(r, "COMMIT", "commit"))
    goto fail_db;
  if (prepare_all(r))
    goto fail_db;
  if (threaded) {
    if (open_spill(r))
      goto fail_db;
    if ((rc = pthread_create(&r->thread, NULL, writer_main, r)) != 0) {
      fail(r, DRPC_EIO, "cannot start the writer thread: %s", strerror(rc));
      unlink(r->spill_path);
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
}

/* Commits, checkpoints into a self-contained file and closes the
 * database; then removes the spill file unless it is still needed. */
static void finish_db(drpc_recorder *r) {
  commit(r);
  finalize_all(r);
  /* Back to a rollback journal: the checkpoint folds the WAL into the
   * file, which then stands alone (readers need no -wal or -shm). */
  if (!atomic_load(&r->failed))
    exec(r, "PRAGMA journal_mode=DELETE", "checkpointing");
  int rc = sqlite3_close(r->db);
  r->db = NULL;
  if (rc != SQLITE_OK)
    fail(r, DRPC_EIO, "closing: %s", sqlite3_errstr(rc));
  if (r->spill_fd >= 0) {
    close(r->spill_fd);
    r->spill_fd = -1;
    if (!r->keep_spill)
      unlink(r->spill_path);
  }
}

int drpc_recorder_close(drpc_recorder *r, drpc_error *err) {
  if (!r)
    return 0;
  if (r->thread_started) {
    pthread_mutex_lock(&r->qmu);
    r->closing = true;
    pthread_cond_signal(&r->work);
    pthread_mutex_unlock(&r->qmu);
    pthread_join(r->thread, NULL);
  }
  assert(r->head == NULL && (!r->cur || r->cur->used == 0));
  double t0 = mono_s(), import0 = r->import_s;
  if (r->threaded)
    import_spill(r);
  finish_db(r);
  if (r->verbose && r->threaded)
    fprintf(stderr,
            "drpc recorder: %s: %llu events, %llu spill bytes, %llu "
            "imports, last import %.3f s (all imports %.3f s), close %.3f "
            "s\n",
            r->path, (unsigned long long)atomic_load(&r->written),
            (unsigned long long)atomic_load(&r->spilled),
            (unsigned long long)atomic_load(&r->imports), r->import_s - import0,
            r->import_s, mono_s() - t0);
  int rc = take_error(r, err);
  free_recorder(r);
  return rc;
}

/* ---- recovering a spill file ---------------------------------------- */

/* One integer from sql with ?1 bound to a; *v untouched when no row. */
static int query_int(drpc_recorder *r, const char *sql, int64_t a, int64_t *v) {
  sqlite3_stmt *s;
  int rc = sqlite3_prepare_v2(r->db, sql, -1, &s, NULL);
  if (rc == SQLITE_OK) {
    sqlite3_bind_int64(s, 1, a);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL)
      *v = sqlite3_column_int64(s, 0);
    rc = rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
  }
  sqlite3_finalize(s);
  if (rc != SQLITE_OK) {
    fail_sql(r, rc, "reading the recording");
    return -1;
  }
  return 0;
}

/* Loads what the import needs from the database: the run, each node's
 * next seq and running hash, the last event id and the stored payloads. */
static int load_state(drpc_recorder *r) {
  int64_t v = -1;
  sqlite3_stmt *s = NULL;
  int rc = sqlite3_prepare_v2(
      r->db, "SELECT value FROM meta WHERE key='format'", -1, &s, NULL);
  bool ours = false;
  if (rc == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW) {
    const unsigned char *f = sqlite3_column_text(s, 0);
    ours = f && strcmp((const char *)f, DRPC_TRACE_FORMAT) == 0;
  }
  sqlite3_finalize(s);
  if (!ours) {
    fail(r, DRPC_ETYPE, "not a drpc recording");
    return -1;
  }
  if (query_int(r, "SELECT min(id) FROM runs WHERE ?1 = ?1", 0, &v))
    return -1;
  if (v < 0) {
    fail(r, DRPC_ETYPE, "not a drpc recording: no run");
    return -1;
  }
  r->run = v;
  int64_t last = 0;
  if (query_int(r, "SELECT max(id) FROM events WHERE ?1 = ?1", 0, &last))
    return -1;
  r->skip_upto = (uint64_t)last;
  r->base_events = (uint64_t)last;
  int64_t maxp = 0;
  if (query_int(r, "SELECT max(id) FROM payloads WHERE ?1 = ?1", 0, &maxp))
    return -1;
  r->next_payload = maxp + 1;
  rc = sqlite3_prepare_v2(r->db,
                          "SELECT node, max(seq) FROM events WHERE run=?1 "
                          "GROUP BY node",
                          -1, &s, NULL);
  if (rc == SQLITE_OK) {
    sqlite3_bind_int64(s, 1, r->run);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      node_state *ns = &r->nodes[(uint16_t)sqlite3_column_int(s, 0)];
      ns->started = true;
      ns->seq = sqlite3_column_int64(s, 1) + 1;
      ns->hash = DRPC_EVENT_HASH_INIT;
    }
    rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
  }
  sqlite3_finalize(s);
  if (rc != SQLITE_OK) {
    fail_sql(r, rc, "reading nodes");
    return -1;
  }
  char sql[160];
  snprintf(sql, sizeof sql,
           "SELECT hash FROM events WHERE run=%lld AND node=?1 AND hash IS "
           "NOT NULL ORDER BY seq DESC LIMIT 1",
           (long long)r->run);
  for (size_t i = 0; i < NODE_SLOTS; i++) {
    node_state *ns = &r->nodes[i];
    if (ns->started &&
        query_int(r, sql, (int16_t)(uint16_t)i, (int64_t *)&ns->hash))
      return -1;
  }
  rc = sqlite3_prepare_v2(r->db, "SELECT id, hash, size FROM payloads", -1, &s,
                          NULL);
  while (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
    uint64_t h = (uint64_t)sqlite3_column_int64(s, 1);
    size_t bit = (size_t)(h & (SEEN_BITS - 1));
    r->seen[bit >> 3] |= (uint8_t)(1u << (bit & 7));
    ptab_add(r, h, (size_t)sqlite3_column_int64(s, 2),
             sqlite3_column_int64(s, 0), 0, 0);
    rc = SQLITE_OK;
  }
  sqlite3_finalize(s);
  if (rc != SQLITE_DONE) {
    fail_sql(r, rc, "reading payloads");
    return -1;
  }
  return 0;
}

/* Counts the whole records of the spill file's events past skip_upto and
 * sets spill_end after the last whole record. */
static int scan_spill(drpc_recorder *r, uint64_t size) {
  unsigned char hdr[SPILL_HDR];
  if (size < SPILL_HDR ||
      pread(r->spill_fd, hdr, sizeof hdr, 0) != (ssize_t)sizeof hdr ||
      memcmp(hdr, SPILL_MAGIC, sizeof SPILL_MAGIC) != 0) {
    fail(r, DRPC_ETYPE, "%s is not a drpc spill file", r->spill_path);
    return -1;
  }
  r->spill_end = SPILL_HDR;
  if (size == SPILL_HDR)
    return 0;
  void *m = mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED, r->spill_fd, 0);
  if (m == MAP_FAILED) {
    fail(r, DRPC_EIO, "mapping %s: %s", r->spill_path, strerror(errno));
    return -1;
  }
  const unsigned char *p = m;
  uint64_t off = SPILL_HDR;
  spill_state ds = {0};
  spill_item it;
  size_t n;
  while ((n = rec_decode(p + off, size - off, &ds, &it)) > 0) {
    if (it.type != ITEM_NODE && it.ordinal > r->skip_upto)
      r->spill_events++;
    off += n;
  }
  r->spill_end = off;
  munmap(m, (size_t)size);
  return 0;
}

int drpc_recorder_recover(const char *path, drpc_error *err) {
  if (!path || !*path)
    return drpc_error_set(err, DRPC_EINVAL, "recording path is empty");
  drpc_recorder *r = new_recorder(path);
  if (!r)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory recovering %s",
                          path);
  r->spill_fd = open(r->spill_path, O_RDWR | O_CLOEXEC);
  if (r->spill_fd < 0) {
    int e = errno;
    int rc = e == ENOENT ? 0
                         : drpc_error_set(err, DRPC_EIO, "cannot open %s: %s",
                                          r->spill_path, strerror(e));
    free_recorder(r);
    return rc;
  }
  struct stat st;
  if (stat(path, &st) != 0) {
    int rc = errno == ENOENT
                 ? drpc_error_set(err, DRPC_ENOTFOUND, "%s has no recording %s",
                                  r->spill_path, path)
                 : drpc_error_set(err, DRPC_EIO, "cannot read %s: %s", path,
                                  strerror(errno));
    free_recorder(r);
    return rc;
  }
  r->threaded = true;
  r->recovering = true;
  double t0 = mono_s();
  if (fstat(r->spill_fd, &st) != 0)
    fail(r, DRPC_EIO, "cannot read %s: %s", r->spill_path, strerror(errno));
  else if (!open_db(r) && !prepare_all(r) && !load_state(r) &&
           !scan_spill(r, (uint64_t)st.st_size))
    import_spill(r);
  else
    r->keep_spill = true;
  uint64_t n = atomic_load(&r->written);
  if (r->db)
    finish_db(r);
  if (r->verbose)
    fprintf(stderr, "drpc recorder: recovered %llu events into %s in %.3f s\n",
            (unsigned long long)n, path, mono_s() - t0);
  int rc = take_error(r, err);
  free_recorder(r);
  return rc;
}
