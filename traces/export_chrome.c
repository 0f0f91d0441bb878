/* Chrome-trace export of a recording: reads schema v1 with plain SQL and
 * streams a JSON trace (one process per worker, RPC spans, executor lanes,
 * send -> receive flow arrows, faults and counters). */
#include "drpc/trace_export.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <sqlite3.h>

#include "drpc/error.h"
#include "drpc/wire.h"

/* Event kinds of schema v1 (drpc_event_kind in drpc/env.h). */
enum {
  K_IN_FRAME = 1,
  K_IN_CONN_OPEN = 2,
  K_IN_CONN_CLOSED = 3,
  K_IN_TIMER = 4,
  K_IN_COMMAND = 5,
  K_IN_JOB_DONE = 6,
  K_IN_START = 7,
  K_OUT_SEND = 20,
  K_OUT_CONNECT = 21,
  K_OUT_CLOSE = 22,
  K_OUT_FUTURE = 23,
  K_OUT_EXECUTE = 24,
  K_OUT_TIMER = 25,
  K_RPC_BEGIN = 40,
  K_RPC_END = 41,
  K_RREF = 50,
  K_LOG = 60,
  K_FAULT = 70,
  K_PROFILE = 80,
};

/* Tracks (tids) inside each worker's process. Executor and profile lanes
 * are numbered from their base; LANE_MAX keeps them apart. */
#define TID_AGENT 0
#define TID_EXEC_BASE 1
#define TID_FAULTS 1000000
#define TID_PROFILE_BASE 2000000
#define LANE_MAX 999999
/* The process of events recorded with no node, after every worker id. */
#define PID_SIMULATOR ((int64_t)INT16_MAX + 2)
/* How much of a LOG line goes into the trace. */
#define LOG_TEXT_MAX 256
/* JSON numbers above this lose precision in JavaScript viewers: such
 * integers are written as strings. */
#define JSON_SAFE_INT ((uint64_t)1 << 53)

/* ---- the JSON writer ---------------------------------------------------- */

typedef struct jw {
  FILE *f;
  size_t n;
  bool failed;
  bool no_comma; /* the next key opens an object */
  char buf[1 << 16];
} jw;

static void jw_flush(jw *w) {
  if (w->n && fwrite(w->buf, 1, w->n, w->f) != w->n)
    w->failed = true;
  w->n = 0;
}

static void jw_raw(jw *w, const char *s, size_t len) {
  if (len > sizeof w->buf - w->n) {
    jw_flush(w);
    if (len > sizeof w->buf) {
      if (fwrite(s, 1, len, w->f) != len)
        w->failed = true;
      return;
    }
  }
  memcpy(w->buf + w->n, s, len);
  w->n += len;
}

static void jw_s(jw *w, const char *s) {
  jw_raw(w, s, strlen(s));
}

static void jw_c(jw *w, char c) {
  if (w->n == sizeof w->buf)
    jw_flush(w);
  w->buf[w->n++] = c;
}

static void jw_u64(jw *w, uint64_t v) {
  char tmp[24];
  size_t i = sizeof tmp;
  do {
    tmp[--i] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  jw_raw(w, tmp + i, sizeof tmp - i);
}

static void jw_i64(jw *w, int64_t v) {
  if (v < 0) {
    jw_c(w, '-');
    jw_u64(w, (uint64_t)0 - (uint64_t)v);
  } else {
    jw_u64(w, (uint64_t)v);
  }
}

/* An id-like unsigned value: a number when JavaScript holds it exactly,
 * else a decimal string. */
static void jw_id(jw *w, uint64_t v) {
  if (v <= JSON_SAFE_INT) {
    jw_u64(w, v);
  } else {
    jw_c(w, '"');
    jw_u64(w, v);
    jw_c(w, '"');
  }
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 if
 * invalid (overlong forms, surrogates and values above U+10FFFF are). */
static size_t utf8_len(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  size_t len;
  uint32_t cp;
  if (c < 0x80)
    return 1;
  if (c >= 0xc2 && c <= 0xdf) {
    len = 2;
    cp = c & 0x1f;
  } else if (c >= 0xe0 && c <= 0xef) {
    len = 3;
    cp = c & 0x0f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    len = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (len > n)
    return 0;
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80)
      return 0;
    cp = cp << 6 | (s[i] & 0x3f);
  }
  if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff ||
      (cp >= 0xd800 && cp <= 0xdfff))
    return 0;
  return len;
}

/* The body of a JSON string (no quotes): escapes quotes, backslashes and
 * control characters; invalid UTF-8 becomes U+FFFD so the file stays
 * valid whatever the recording holds. */
static void jw_esc(jw *w, const char *str, size_t n) {
  static const char hex[] = "0123456789abcdef";
  const unsigned char *s = (const unsigned char *)str;
  size_t run = 0; /* bytes at s that need no escape, not yet written */
  for (size_t i = 0; i < n;) {
    unsigned c = s[i];
    size_t len = 1;
    if (c >= 0x20 && c != '"' && c != '\\' &&
        (c < 0x80 || (len = utf8_len(s + i, n - i)) != 0)) {
      i += len;
      run += len;
      continue;
    }
    jw_raw(w, (const char *)s + i - run, run);
    run = 0;
    char e[7] = {'\\', 0};
    size_t elen = 2;
    switch (c) {
    case '"':
      e[1] = '"';
      break;
    case '\\':
      e[1] = '\\';
      break;
    case '\n':
      e[1] = 'n';
      break;
    case '\r':
      e[1] = 'r';
      break;
    case '\t':
      e[1] = 't';
      break;
    default:
      if (c < 0x20) {
        memcpy(e, "\\u00", 4);
        e[4] = hex[c >> 4];
        e[5] = hex[c & 15];
        elen = 6;
      } else {
        memcpy(e, "\\ufffd", 6);
        elen = 6;
      }
    }
    jw_raw(w, e, elen);
    i++;
  }
  jw_raw(w, (const char *)s + n - run, run);
}

static void jw_str(jw *w, const char *s) {
  jw_c(w, '"');
  jw_esc(w, s, strlen(s));
  jw_c(w, '"');
}

/* ,"key": (no comma for an object's first key) */
static void jw_key(jw *w, const char *key) {
  if (w->no_comma)
    w->no_comma = false;
  else
    jw_c(w, ',');
  jw_c(w, '"');
  jw_s(w, key);
  jw_s(w, "\":");
}

/* Nanoseconds as microseconds with three decimals (exact, no double). */
static void jw_us(jw *w, uint64_t ns) {
  char frac[4] = {(char)('0' + ns / 100 % 10), (char)('0' + ns / 10 % 10),
                  (char)('0' + ns % 10), 0};
  jw_u64(w, ns / 1000);
  jw_c(w, '.');
  jw_raw(w, frac, 3);
}

/* ---- a small hash map over integer tuples ------------------------------ */

typedef struct hkey {
  int64_t k[5];
} hkey;

typedef struct hent {
  hkey key;
  int64_t a, b;
  bool used;
} hent;

typedef struct hmap {
  hent *e;
  size_t cap, len;
} hmap;

static hkey mkkey(int64_t a, int64_t b, int64_t c, int64_t d, int64_t e) {
  hkey k = {{a, b, c, d, e}};
  return k;
}

static uint64_t hkey_hash(const hkey *k) {
  uint64_t h = 0x9e3779b97f4a7c15ull;
  for (int i = 0; i < 5; i++) {
    h ^= (uint64_t)k->k[i];
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 31;
  }
  return h;
}

static hent *hmap_slot(hent *e, size_t cap, const hkey *k) {
  size_t i = (size_t)hkey_hash(k) & (cap - 1);
  while (e[i].used && memcmp(&e[i].key, k, sizeof *k) != 0)
    i = (i + 1) & (cap - 1);
  return &e[i];
}

static hent *hmap_get(const hmap *m, const hkey *k) {
  if (!m->cap)
    return NULL;
  hent *s = hmap_slot(m->e, m->cap, k);
  return s->used ? s : NULL;
}

/* The entry for k, created with a = b = -1 when absent (*created says
 * which); NULL when out of memory. */
static hent *hmap_put(hmap *m, const hkey *k, bool *created) {
  if ((m->len + 1) * 2 > m->cap) {
    size_t ncap = m->cap ? m->cap * 2 : 64;
    hent *ne = calloc(ncap, sizeof *ne);
    if (!ne)
      return NULL;
    for (size_t i = 0; i < m->cap; i++)
      if (m->e[i].used)
        *hmap_slot(ne, ncap, &m->e[i].key) = m->e[i];
    free(m->e);
    m->e = ne;
    m->cap = ncap;
  }
  hent *s = hmap_slot(m->e, m->cap, k);
  *created = !s->used;
  if (!s->used) {
    s->used = true;
    s->key = *k;
    s->a = s->b = -1;
    m->len++;
  }
  return s;
}

static void hmap_free(hmap *m) {
  free(m->e);
  m->e = NULL;
  m->cap = m->len = 0;
}

/* ---- the exporter's model ---------------------------------------------- */

/* One event row. Strings live in the arena (offsets, as it grows). */
typedef struct xev {
  int64_t t_ns, xid, aux, size, name_id, group;
  uint64_t msg_id; /* from the frame header (has_hdr) */
  int32_t node, peer, kind, proc;
  int32_t mate; /* the matching event: begin/end, execute/done, send/recv */
  int32_t next; /* chains openers with one key while matching */
  int32_t ord;  /* position in the recording's (t_ns, node, seq) order */
  uint32_t text_off, text_len; /* LOG line in the arena */
  uint8_t msg_type;
  bool has_hdr, dup, has_text;
  uint8_t slice_dur_ns; /* the frame slice on the agent track: 0 or 1 */
} xev;

/* Greedy lanes: a min-heap of (free at, lane) so overlapping slices go to
 * separate tracks and none overlap on one. */
typedef struct lane_ent {
  int64_t free_at;
  int32_t lane;
} lane_ent;

typedef struct lanes {
  lane_ent *h;
  size_t n, cap;
} lanes;

typedef struct proc {
  int64_t group;
  int32_t node;
  int64_t pid;
  int64_t pending, inflight; /* counters */
  lanes exec, prof;
  bool faults_named;
} proc;

typedef struct ex {
  sqlite3 *db;
  drpc_trace_export_opts opts;
  drpc_error *err;
  drpc_trace_export_stats st;
  jw *w;
  bool first; /* no trace event written yet */
  xev *ev;
  size_t n, cap;
  char *arena;
  size_t arena_len, arena_cap;
  int64_t *str_id; /* strings table, sorted by id */
  uint32_t *str_off;
  size_t nstr, str_cap;
  bool has_payloads, has_strings, has_nodes, has_runs;
  bool grouped;
  bool clock_model; /* times were mapped to the simulator's global clock */
  int64_t t0, tlast;
  proc *procs;
  size_t nprocs;
  hmap procmap; /* (group, node) -> proc */
  hmap names;   /* (group, node) -> name in the arena */
} ex;

static int nomem(ex *x) {
  return drpc_error_set(x->err, DRPC_ENOMEM, "out of memory exporting trace");
}

static int sqlerr(ex *x, const char *what) {
  /* SQLITE_ERROR is a query the file's tables cannot answer (a missing
   * column); the rest are I/O, corruption or memory. */
  int rc = sqlite3_errcode(x->db);
  int code = rc == SQLITE_NOTADB || rc == SQLITE_ERROR ? DRPC_EPROTO
             : rc == SQLITE_NOMEM                      ? DRPC_ENOMEM
                                                       : DRPC_EIO;
  return drpc_error_set(x->err, code, "%s: %s", what, sqlite3_errmsg(x->db));
}

/* Copies s into the arena with a terminating NUL; returns its offset or
 * UINT32_MAX when out of memory or past 4 GiB. */
static uint32_t arena_add(ex *x, const char *s, size_t len) {
  if (x->arena_len + len + 1 > UINT32_MAX - 1)
    return UINT32_MAX;
  if (x->arena_len + len + 1 > x->arena_cap) {
    size_t ncap = x->arena_cap ? x->arena_cap : 4096;
    while (ncap < x->arena_len + len + 1)
      ncap *= 2;
    char *na = realloc(x->arena, ncap);
    if (!na)
      return UINT32_MAX;
    x->arena = na;
    x->arena_cap = ncap;
  }
  uint32_t off = (uint32_t)x->arena_len;
  if (len)
    memcpy(x->arena + off, s, len);
  x->arena[off + len] = 0;
  x->arena_len += len + 1;
  return off;
}

/* strings.text for an id, NULL when the row is missing. */
static const char *str_text(const ex *x, int64_t id) {
  size_t lo = 0, hi = x->nstr;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (x->str_id[mid] < id)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < x->nstr && x->str_id[lo] == id ? x->arena + x->str_off[lo] : NULL;
}

static const char *ev_name(const ex *x, const xev *e) {
  return e->name_id >= 0 ? str_text(x, e->name_id) : NULL;
}

/* A worker's name: the nodes table, then its IN_START event, then
 * "worker<id>". buf holds the fallback. */
static const char *node_name(const ex *x, int64_t group, int32_t node,
                             char buf[32]) {
  if (node < 0)
    return "simulator";
  hkey k = mkkey(group, node, 0, 0, 0);
  const hent *h = hmap_get(&x->names, &k);
  if (h)
    return x->arena + h->a;
  snprintf(buf, 32, "worker%" PRId32, node);
  return buf;
}

/* ---- reading the database ---------------------------------------------- */

static int table_exists(ex *x, const char *name, bool *out) {
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(x->db,
                         "SELECT 1 FROM sqlite_master WHERE type = 'table' "
                         "AND name = ?1",
                         -1, &st, NULL) != SQLITE_OK)
    return sqlerr(x, "reading the schema");
  sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st);
  sqlite3_finalize(st);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE)
    return sqlerr(x, "reading the schema");
  *out = rc == SQLITE_ROW;
  return 0;
}

static int check_schema(ex *x) {
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(x->db, "PRAGMA user_version", -1, &st, NULL) !=
      SQLITE_OK) {
    if (sqlite3_errcode(x->db) == SQLITE_NOTADB)
      return drpc_error_set(x->err, DRPC_EPROTO,
                            "not a drpc recording: not an SQLite database");
    return sqlerr(x, "reading user_version");
  }
  int rc = sqlite3_step(st);
  int64_t version = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
  sqlite3_finalize(st);
  if (rc != SQLITE_ROW) {
    if (sqlite3_errcode(x->db) == SQLITE_NOTADB)
      return drpc_error_set(x->err, DRPC_EPROTO,
                            "not a drpc recording: not an SQLite database");
    return sqlerr(x, "reading user_version");
  }
  bool has_events;
  int r = table_exists(x, "events", &has_events);
  if (r)
    return r;
  if (version == 0 && !has_events)
    return drpc_error_set(x->err, DRPC_EPROTO,
                          "not a drpc recording: no events table and no "
                          "schema version");
  if (version != DRPC_TRACE_EXPORT_SCHEMA)
    return drpc_error_set(x->err, DRPC_EVERSION,
                          "recording schema version %" PRId64
                          " is not supported (this exporter reads %d)",
                          version, DRPC_TRACE_EXPORT_SCHEMA);
  if (!has_events)
    return drpc_error_set(x->err, DRPC_EPROTO,
                          "not a drpc recording: no events table");
  if ((r = table_exists(x, "payloads", &x->has_payloads)) ||
      (r = table_exists(x, "strings", &x->has_strings)) ||
      (r = table_exists(x, "nodes", &x->has_nodes)) ||
      (r = table_exists(x, "runs", &x->has_runs)))
    return r;
  return 0;
}

static int load_strings(ex *x) {
  if (!x->has_strings)
    return 0;
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(x->db,
                         "SELECT id, text FROM strings WHERE id IS NOT NULL "
                         "AND text IS NOT NULL ORDER BY id",
                         -1, &st, NULL) != SQLITE_OK)
    return sqlerr(x, "reading strings");
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (x->nstr == x->str_cap) {
      size_t ncap = x->str_cap ? x->str_cap * 2 : 256;
      int64_t *ni = realloc(x->str_id, ncap * sizeof *ni);
      if (ni)
        x->str_id = ni;
      uint32_t *no = ni ? realloc(x->str_off, ncap * sizeof *no) : NULL;
      if (!no) {
        sqlite3_finalize(st);
        return nomem(x);
      }
      x->str_off = no;
      x->str_cap = ncap;
    }
    const char *t = (const char *)sqlite3_column_text(st, 1);
    size_t len = (size_t)sqlite3_column_bytes(st, 1);
    uint32_t off = arena_add(x, t ? t : "", t ? strnlen(t, len) : 0);
    if (off == UINT32_MAX) {
      sqlite3_finalize(st);
      return nomem(x);
    }
    x->str_id[x->nstr] = sqlite3_column_int64(st, 0);
    x->str_off[x->nstr++] = off;
  }
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE)
    return sqlerr(x, "reading strings");
  return 0;
}

/* Reads the header fields flows need; short or foreign payloads give
 * none (the frame is still drawn, without an arrow). */
static void frame_header(xev *e, const unsigned char *b, size_t len) {
  if (!b || len < DRPC_WIRE_HEADER_SIZE)
    return;
  uint32_t magic = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                   (uint32_t)b[3] << 24;
  if (magic != DRPC_WIRE_MAGIC)
    return;
  uint64_t id = 0;
  for (int i = 7; i >= 0; i--)
    id = id << 8 | b[8 + i];
  e->msg_type = b[5];
  e->msg_id = id;
  e->has_hdr = true;
}

static int load_events(ex *x) {
  char sql[768];
  const char *pl = x->has_payloads
                       ? "CASE WHEN e.kind IN (1, 20) THEN substr(p.bytes, 1, "
                         "32) WHEN e.kind = 60 THEN substr(p.bytes, 1, 256) "
                         "END, p.size"
                       : "NULL, NULL";
  snprintf(sql, sizeof sql,
           "SELECT e.run, e.node, e.kind, e.t_ns, e.peer, e.xid, e.aux, "
           "e.size, e.name, %s FROM events e %s %s "
           "ORDER BY e.t_ns, e.node, e.seq, e.id",
           pl,
           x->has_payloads ? "LEFT JOIN payloads p ON p.id = e.payload" : "",
           x->opts.run ? "WHERE e.run = ?1" : "");
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(x->db, sql, -1, &st, NULL) != SQLITE_OK)
    return sqlerr(x, "reading events");
  if (x->opts.run)
    sqlite3_bind_int64(st, 1, x->opts.run);
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    /* A row the exporter cannot place on a timeline is left out. */
    if (sqlite3_column_type(st, 2) == SQLITE_NULL ||
        sqlite3_column_type(st, 3) == SQLITE_NULL) {
      x->st.skipped++;
      continue;
    }
    int64_t node = sqlite3_column_type(st, 1) == SQLITE_NULL
                       ? -1
                       : sqlite3_column_int64(st, 1);
    int64_t kind = sqlite3_column_int64(st, 2);
    if (node < -1 || node > INT16_MAX || kind < 0 || kind > INT32_MAX) {
      x->st.skipped++;
      continue;
    }
    if ((int64_t)x->n >= DRPC_TRACE_EXPORT_MAX_EVENTS) {
      sqlite3_finalize(st);
      return drpc_error_set(x->err, DRPC_ETOOBIG,
                            "recording has more than %" PRId64
                            " events, the export limit",
                            DRPC_TRACE_EXPORT_MAX_EVENTS);
    }
    if (x->n == x->cap) {
      size_t ncap = x->cap ? x->cap * 2 : 1024;
      xev *ne = realloc(x->ev, ncap * sizeof *ne);
      if (!ne) {
        sqlite3_finalize(st);
        return nomem(x);
      }
      x->ev = ne;
      x->cap = ncap;
    }
    xev *e = &x->ev[x->n];
    memset(e, 0, sizeof *e);
    e->group = sqlite3_column_int64(st, 0); /* the run, for now */
    e->node = (int32_t)node;
    e->kind = (int32_t)kind;
    e->t_ns = sqlite3_column_int64(st, 3);
    int64_t peer = sqlite3_column_type(st, 4) == SQLITE_NULL
                       ? -1
                       : sqlite3_column_int64(st, 4);
    e->peer = peer < 0 || peer > INT16_MAX ? -1 : (int32_t)peer;
    e->xid = sqlite3_column_int64(st, 5);
    e->aux = sqlite3_column_int64(st, 6);
    if (sqlite3_column_type(st, 7) != SQLITE_NULL)
      e->size = sqlite3_column_int64(st, 7);
    else if (sqlite3_column_type(st, 10) != SQLITE_NULL)
      e->size = sqlite3_column_int64(st, 10);
    if (e->size < 0)
      e->size = 0;
    e->name_id = sqlite3_column_type(st, 8) == SQLITE_NULL
                     ? -1
                     : sqlite3_column_int64(st, 8);
    if (e->name_id < 0)
      e->name_id = -1;
    e->mate = e->next = -1;
    e->ord = (int32_t)x->n;
    e->slice_dur_ns = 1;
    const unsigned char *b = sqlite3_column_blob(st, 9);
    size_t blen = (size_t)sqlite3_column_bytes(st, 9);
    if (kind == K_IN_FRAME || kind == K_OUT_SEND) {
      frame_header(e, b, blen);
    } else if (kind == K_LOG && b) {
      if (blen > LOG_TEXT_MAX)
        blen = LOG_TEXT_MAX;
      uint32_t off = arena_add(x, (const char *)b, blen);
      if (off == UINT32_MAX) {
        sqlite3_finalize(st);
        return nomem(x);
      }
      e->text_off = off;
      e->text_len = (uint32_t)blen;
      e->has_text = true;
    }
    x->n++;
  }
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE)
    return sqlerr(x, "reading events");
  return 0;
}

/* ---- clocks -------------------------------------------------------------- */

/* Bounds on a clock model the exporter applies (a year, 10%). */
#define CLOCK_OFFSET_MAX_NS ((int64_t)365 * 24 * 3600 * 1000000000)
#define CLOCK_DRIFT_MAX_PPM 100000

static bool json_i64(const cJSON *v, int64_t *out) {
  if (cJSON_IsString(v) && v->valuestring) {
    char *end;
    errno = 0;
    long long n = strtoll(v->valuestring, &end, 10);
    if (errno || end == v->valuestring || *end)
      return false;
    *out = n;
    return true;
  }
  if (cJSON_IsNumber(v) && fabs(v->valuedouble) < 9e15) {
    *out = (int64_t)v->valuedouble;
    return true;
  }
  return false;
}

/* The simulator gives each node its own clock: global time plus
 * nodes[i].clock_offset_ns, running drift_ppm fast since the clock's
 * epoch (the run's config). Node times then disagree by seconds, which
 * would put a receive before its send. Reads that model into clk: (run,
 * node) -> a offset, b drift; and a config's clock_base_ns (the epoch)
 * into base: (run) -> a epoch, b 1. */
static int load_clock_model(ex *x, hmap *clk, hmap *base) {
  sqlite3_stmt *st;
  const char *sql = x->opts.run ? "SELECT id, config FROM runs WHERE id = ?1"
                                : "SELECT id, config FROM runs";
  /* The config is optional: no runs table or config column, no model. */
  if (!x->has_runs || sqlite3_prepare_v2(x->db, sql, -1, &st, NULL))
    return 0;
  if (x->opts.run)
    sqlite3_bind_int64(st, 1, x->opts.run);
  int r = 0;
  while (!r && sqlite3_step(st) == SQLITE_ROW) {
    const char *text = (const char *)sqlite3_column_text(st, 1);
    cJSON *cfg = text ? cJSON_Parse(text) : NULL;
    const cJSON *nodes = cJSON_GetObjectItemCaseSensitive(cfg, "nodes");
    int i = 0;
    const cJSON *nd;
    if (!cJSON_IsArray(nodes))
      nodes = NULL;
    int64_t epoch;
    if (nodes &&
        json_i64(cJSON_GetObjectItemCaseSensitive(cfg, "clock_base_ns"),
                 &epoch)) {
      hkey k = mkkey(sqlite3_column_int64(st, 0), 0, 0, 0, 0);
      bool created;
      hent *h = hmap_put(base, &k, &created);
      if (!h) {
        r = nomem(x);
        cJSON_Delete(cfg);
        break;
      }
      h->a = epoch;
      h->b = 1;
    }
    cJSON_ArrayForEach(nd, nodes) {
      int64_t off = 0, drift = 0;
      bool has_off = json_i64(
          cJSON_GetObjectItemCaseSensitive(nd, "clock_offset_ns"), &off);
      bool has_drift =
          json_i64(cJSON_GetObjectItemCaseSensitive(nd, "drift_ppm"), &drift);
      if ((has_off || has_drift) && (off || drift) &&
          off > -CLOCK_OFFSET_MAX_NS && off < CLOCK_OFFSET_MAX_NS &&
          drift > -CLOCK_DRIFT_MAX_PPM && drift < CLOCK_DRIFT_MAX_PPM) {
        hkey k = mkkey(sqlite3_column_int64(st, 0), i, 0, 0, 0);
        bool created;
        hent *h = hmap_put(clk, &k, &created);
        if (!h) {
          r = nomem(x);
          break;
        }
        h->a = off;
        h->b = drift;
      }
      if (++i > INT16_MAX)
        break;
    }
    cJSON_Delete(cfg);
  }
  sqlite3_finalize(st);
  return r;
}

static int ev_time_cmp(const void *a, const void *b) {
  const xev *p = a, *q = b;
  if (p->t_ns != q->t_ns)
    return p->t_ns < q->t_ns ? -1 : 1;
  return (p->ord > q->ord) - (p->ord < q->ord);
}

/* Maps node times back to the global clock where the run's config has a
 * clock model, then restores time order. With u = t - offset, the node
 * ran (1 + drift/1e6) times as fast since the epoch: the config's
 * clock_base_ns, else the run's earliest u. The estimate is off by the
 * first event's delay times the drift (1 ms at 100 ppm: 100 ns), the same
 * shift for all of a node's events, far below network latencies. */
static int correct_clocks(ex *x) {
  if (x->opts.raw_clocks)
    return 0;
  hmap clk = {0}, base = {0};
  int r = load_clock_model(x, &clk, &base);
  if (r || clk.len == 0)
    goto done;
  for (size_t i = 0; i < x->n; i++) {
    xev *e = &x->ev[i];
    hkey k = mkkey(e->group, e->node, 0, 0, 0);
    const hent *c = hmap_get(&clk, &k);
    int64_t u = e->t_ns;
    if (c && u > INT64_MIN + CLOCK_OFFSET_MAX_NS &&
        u < INT64_MAX - CLOCK_OFFSET_MAX_NS)
      u -= c->a;
    hkey rk = mkkey(e->group, 0, 0, 0, 0);
    bool created;
    hent *h = hmap_put(&base, &rk, &created);
    if (!h) {
      r = nomem(x);
      goto done;
    }
    if (created || (h->b != 1 && u < h->a)) {
      h->a = u;
      h->b = 0;
    }
  }
  for (size_t i = 0; i < x->n; i++) {
    xev *e = &x->ev[i];
    hkey k = mkkey(e->group, e->node, 0, 0, 0);
    const hent *c = hmap_get(&clk, &k);
    if (!c || e->t_ns <= INT64_MIN + CLOCK_OFFSET_MAX_NS ||
        e->t_ns >= INT64_MAX - CLOCK_OFFSET_MAX_NS)
      continue;
    hkey rk = mkkey(e->group, 0, 0, 0, 0);
    int64_t b0 = hmap_get(&base, &rk)->a;
    double rel = (double)(e->t_ns - c->a - b0);
    e->t_ns = b0 + (int64_t)llround(rel * 1e6 / (1e6 + (double)c->b));
  }
  x->clock_model = true;
  if (x->n > 1)
    qsort(x->ev, x->n, sizeof *x->ev, ev_time_cmp);
done:
  hmap_free(&clk);
  hmap_free(&base);
  return r;
}

/* Decides whether runs stay apart (a node id seen in two runs), then
 * turns each event's run into its group. */
static int assign_groups(ex *x) {
  hmap seen = {0};
  x->grouped = false;
  for (size_t i = 0; i < x->n && !x->grouped; i++) {
    hkey k = mkkey(x->ev[i].node, 0, 0, 0, 0);
    bool created;
    hent *h = hmap_put(&seen, &k, &created);
    if (!h) {
      hmap_free(&seen);
      return nomem(x);
    }
    if (created)
      h->a = x->ev[i].group;
    else if (h->a != x->ev[i].group)
      x->grouped = true;
  }
  hmap_free(&seen);
  if (!x->grouped)
    for (size_t i = 0; i < x->n; i++)
      x->ev[i].group = 0;
  return 0;
}

static int add_name(ex *x, int64_t group, int64_t node, const char *name,
                    size_t len) {
  hkey k = mkkey(group, node, 0, 0, 0);
  bool created;
  hent *h = hmap_put(&x->names, &k, &created);
  if (!h)
    return nomem(x);
  if (created) {
    uint32_t off = arena_add(x, name, strnlen(name, len));
    if (off == UINT32_MAX)
      return nomem(x);
    h->a = off;
  }
  return 0;
}

static int load_names(ex *x) {
  if (x->has_nodes) {
    sqlite3_stmt *st;
    const char *sql = x->opts.run ? "SELECT run, node, name FROM nodes WHERE "
                                    "name IS NOT NULL AND run = ?1 "
                                    "ORDER BY run, node"
                                  : "SELECT run, node, name FROM nodes WHERE "
                                    "name IS NOT NULL ORDER BY run, node";
    if (sqlite3_prepare_v2(x->db, sql, -1, &st, NULL) != SQLITE_OK)
      return sqlerr(x, "reading nodes");
    if (x->opts.run)
      sqlite3_bind_int64(st, 1, x->opts.run);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
      const char *name = (const char *)sqlite3_column_text(st, 2);
      if (!name)
        continue;
      int r = add_name(x, x->grouped ? sqlite3_column_int64(st, 0) : 0,
                       sqlite3_column_int64(st, 1), name,
                       (size_t)sqlite3_column_bytes(st, 2));
      if (r) {
        sqlite3_finalize(st);
        return r;
      }
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
      return sqlerr(x, "reading nodes");
  }
  for (size_t i = 0; i < x->n; i++) {
    const xev *e = &x->ev[i];
    const char *name = e->kind == K_IN_START ? ev_name(x, e) : NULL;
    int r =
        name && *name ? add_name(x, e->group, e->node, name, strlen(name)) : 0;
    if (r)
      return r;
  }
  return 0;
}

static int proc_cmp(const void *a, const void *b) {
  const proc *p = a, *q = b;
  if (p->group != q->group)
    return p->group < q->group ? -1 : 1;
  return (p->node > q->node) - (p->node < q->node);
}

/* One process per (group, node), pids in node order: node + 1 when runs
 * are not kept apart. Rows with no node (the simulator's own) get
 * PID_SIMULATOR: viewers treat pid 0 as the kernel's idle process. */
static int build_procs(ex *x) {
  for (size_t i = 0; i < x->n; i++) {
    hkey k = mkkey(x->ev[i].group, x->ev[i].node, 0, 0, 0);
    bool created;
    hent *h = hmap_put(&x->procmap, &k, &created);
    if (!h)
      return nomem(x);
    if (created) {
      proc *np = realloc(x->procs, (x->nprocs + 1) * sizeof *np);
      if (!np)
        return nomem(x);
      x->procs = np;
      memset(&np[x->nprocs], 0, sizeof *np);
      np[x->nprocs].group = x->ev[i].group;
      np[x->nprocs].node = x->ev[i].node;
      x->nprocs++;
    }
  }
  if (x->nprocs)
    qsort(x->procs, x->nprocs, sizeof *x->procs, proc_cmp);
  for (size_t i = 0; i < x->nprocs; i++) {
    proc *p = &x->procs[i];
    p->pid = x->grouped     ? (int64_t)i + 1
             : p->node >= 0 ? (int64_t)p->node + 1
                            : PID_SIMULATOR;
    hkey k = mkkey(p->group, p->node, 0, 0, 0);
    hmap_get(&x->procmap, &k)->a = (int64_t)i;
  }
  for (size_t i = 0; i < x->n; i++) {
    hkey k = mkkey(x->ev[i].group, x->ev[i].node, 0, 0, 0);
    x->ev[i].proc = (int32_t)hmap_get(&x->procmap, &k)->a;
  }
  return 0;
}

/* ---- matching ----------------------------------------------------------- */

/* A matching key for an event; false when it cannot take part. */
typedef bool (*key_fn)(const xev *e, hkey *k);

static bool key_send(const xev *e, hkey *k) {
  *k = mkkey(e->group, e->node, e->peer, e->msg_type, (int64_t)e->msg_id);
  return e->has_hdr && e->peer >= 0;
}
static bool key_recv(const xev *e, hkey *k) {
  *k = mkkey(e->group, e->peer, e->node, e->msg_type, (int64_t)e->msg_id);
  return e->has_hdr && e->peer >= 0;
}
/* Request ids are unique per caller: a span is (caller, request id). */
static bool key_span(const xev *e, hkey *k) {
  *k = mkkey(e->group, e->node, e->xid, 0, 0);
  return true;
}
/* A job is (callee, caller, request id). */
static bool key_job(const xev *e, hkey *k) {
  *k = mkkey(e->group, e->node, e->peer, e->xid, 0);
  return true;
}
/* A second chance for a done event that names no caller: (callee,
 * request id) against the executions still unmatched. */
static bool key_job_any(const xev *e, hkey *k) {
  *k = mkkey(e->group, e->node, e->xid, 0, 0);
  return true;
}
static bool key_done_nopeer(const xev *e, hkey *k) {
  *k = mkkey(e->group, e->node, e->xid, 0, 0);
  return e->peer < 0;
}

/* Pairs each closer with the oldest unmatched opener of the same key that
 * is not later than it (first in, first out: a retried message pairs with
 * the first copy still outstanding). Events matched by an earlier pass are
 * left alone. Openers sharing a key get dup set. */
static int match_pairs(ex *x, int open_kind, key_fn okey, int close_kind,
                       key_fn ckey) {
  hmap m = {0};
  hkey k;
  for (size_t i = 0; i < x->n; i++) {
    xev *e = &x->ev[i];
    if (e->kind != open_kind || e->mate >= 0 || !okey(e, &k))
      continue;
    bool created;
    hent *h = hmap_put(&m, &k, &created);
    if (!h) {
      hmap_free(&m);
      return nomem(x);
    }
    e->next = -1;
    if (created) {
      h->a = (int64_t)i;
    } else {
      x->ev[h->a].dup = true;
      x->ev[h->b].next = (int32_t)i;
      e->dup = true;
    }
    h->b = (int64_t)i;
  }
  for (size_t i = 0; i < x->n; i++) {
    xev *e = &x->ev[i];
    if (e->kind != close_kind || e->mate >= 0 || !ckey(e, &k))
      continue;
    hent *h = hmap_get(&m, &k);
    if (!h || h->a < 0 || x->ev[h->a].t_ns > e->t_ns)
      continue;
    e->mate = (int32_t)h->a;
    x->ev[h->a].mate = (int32_t)i;
    h->a = x->ev[h->a].next;
  }
  hmap_free(&m);
  return 0;
}

/* Frame slices on the agent track last 1 ns, or 0 when the node's next
 * frame falls in the same nanosecond, so that they never overlap. */
static int size_frame_slices(ex *x) {
  int64_t *next = malloc((x->nprocs ? x->nprocs : 1) * sizeof *next);
  if (!next)
    return nomem(x);
  for (size_t i = 0; i < x->nprocs; i++)
    next[i] = INT64_MAX;
  for (size_t i = x->n; i-- > 0;) {
    xev *e = &x->ev[i];
    if (e->kind != K_IN_FRAME && e->kind != K_OUT_SEND)
      continue;
    e->slice_dur_ns = next[e->proc] == e->t_ns ? 0 : 1;
    next[e->proc] = e->t_ns;
  }
  free(next);
  return 0;
}

/* ---- lanes -------------------------------------------------------------- */

static bool lane_less(const lane_ent *a, const lane_ent *b) {
  return a->free_at < b->free_at ||
         (a->free_at == b->free_at && a->lane < b->lane);
}

static void lane_down(lanes *l, size_t i) {
  for (;;) {
    size_t c = 2 * i + 1, m = i;
    if (c < l->n && lane_less(&l->h[c], &l->h[m]))
      m = c;
    if (c + 1 < l->n && lane_less(&l->h[c + 1], &l->h[m]))
      m = c + 1;
    if (m == i)
      return;
    lane_ent t = l->h[i];
    l->h[i] = l->h[m];
    l->h[m] = t;
    i = m;
  }
}

/* A lane free at start, busy until end after this: the earliest-free
 * lane, or a new one (*fresh) when all are busy. Returns -1 when out of
 * memory. Past LANE_MAX lanes the earliest-free one is shared. */
static int32_t lane_take(lanes *l, int64_t start, int64_t end, bool *fresh) {
  *fresh = false;
  if (l->n && (l->h[0].free_at <= start || l->n >= LANE_MAX)) {
    int32_t lane = l->h[0].lane;
    if (l->h[0].free_at < end)
      l->h[0].free_at = end;
    lane_down(l, 0);
    return lane;
  }
  if (l->n == l->cap) {
    size_t ncap = l->cap ? l->cap * 2 : 8;
    lane_ent *nh = realloc(l->h, ncap * sizeof *nh);
    if (!nh)
      return -1;
    l->h = nh;
    l->cap = ncap;
  }
  size_t i = l->n++;
  l->h[i].free_at = end;
  l->h[i].lane = (int32_t)i;
  while (i && lane_less(&l->h[i], &l->h[(i - 1) / 2])) {
    lane_ent t = l->h[i];
    l->h[i] = l->h[(i - 1) / 2];
    l->h[(i - 1) / 2] = t;
    i = (i - 1) / 2;
  }
  *fresh = true;
  return (int32_t)(l->n - 1);
}

/* ---- writing trace events ----------------------------------------------- */

static uint64_t rel_ns(const ex *x, int64_t t) {
  return (uint64_t)t - (uint64_t)x->t0;
}

/* {"ph":"X","pid":P,"tid":T,"ts":... ; the caller adds fields (each with
 * a leading comma) and ev_end closes it. */
static void ev_begin(ex *x, const char *ph, int64_t pid, int64_t tid,
                     int64_t t_ns) {
  jw *w = x->w;
  jw_s(w, x->first ? "\n{\"ph\":\"" : ",\n{\"ph\":\"");
  x->first = false;
  jw_s(w, ph);
  jw_s(w, "\",\"pid\":");
  jw_i64(w, pid);
  jw_s(w, ",\"tid\":");
  jw_i64(w, tid);
  jw_s(w, ",\"ts\":");
  jw_us(w, rel_ns(x, t_ns));
  x->st.trace_events++;
}

static void ev_end(ex *x) {
  jw_c(x->w, '}');
}

static void kv_str(ex *x, const char *key, const char *v) {
  jw_key(x->w, key);
  if (v)
    jw_str(x->w, v);
  else
    jw_s(x->w, "null");
}

static void kv_i64(ex *x, const char *key, int64_t v) {
  jw_key(x->w, key);
  jw_i64(x->w, v);
}

static void kv_id(ex *x, const char *key, uint64_t v) {
  jw_key(x->w, key);
  jw_id(x->w, v);
}

static void kv_dur(ex *x, int64_t ns) {
  jw_key(x->w, "dur");
  jw_us(x->w, ns > 0 ? (uint64_t)ns : 0);
}

static void args_begin(ex *x) {
  jw_s(x->w, ",\"args\":{");
  x->w->no_comma = true;
}

static void args_end(ex *x) {
  x->w->no_comma = false;
  jw_c(x->w, '}');
}

static void kv_true(ex *x, const char *key) {
  jw_key(x->w, key);
  jw_s(x->w, "true");
}

static void meta(ex *x, int64_t pid, int64_t tid, const char *what,
                 const char *name, int64_t sort) {
  ev_begin(x, "M", pid, tid, x->t0);
  kv_str(x, "name", what);
  jw_s(x->w, ",\"args\":{\"name\":");
  jw_str(x->w, name);
  jw_c(x->w, '}');
  ev_end(x);
  ev_begin(x, "M", pid, tid, x->t0);
  kv_str(x, "name",
         strcmp(what, "process_name") == 0 ? "process_sort_index"
                                           : "thread_sort_index");
  jw_s(x->w, ",\"args\":{\"sort_index\":");
  jw_i64(x->w, sort);
  jw_s(x->w, "}}");
}

static void lane_meta(ex *x, const proc *p, int64_t tid, const char *what,
                      int32_t lane) {
  char name[48];
  snprintf(name, sizeof name, "%s %" PRId32, what, lane);
  meta(x, p->pid, tid, "thread_name", name, tid);
}

static void write_process_meta(ex *x) {
  for (size_t i = 0; i < x->nprocs; i++) {
    const proc *p = &x->procs[i];
    char buf[32], full[96];
    const char *name = node_name(x, p->group, p->node, buf);
    if (x->grouped) {
      snprintf(full, sizeof full, "%.60s (run %" PRId64 ")", name, p->group);
      name = full;
    }
    meta(x, p->pid, TID_AGENT, "process_name", name, p->pid);
    meta(x, p->pid, TID_AGENT, "thread_name", "agent", TID_AGENT);
  }
}

static void counter(ex *x, const proc *p, int64_t t, const char *name,
                    const char *series, int64_t v) {
  ev_begin(x, "C", p->pid, TID_AGENT, t);
  kv_str(x, "name", name);
  jw_s(x->w, ",\"args\":{\"");
  jw_s(x->w, series);
  jw_s(x->w, "\":");
  jw_i64(x->w, v);
  jw_s(x->w, "}}");
}

static const char *msg_type_name(const xev *e) {
  int type = e->has_hdr ? e->msg_type : (int)e->aux;
  if (!e->has_hdr && (e->aux < 0 || e->aux > 255))
    return "frame";
  return drpc_msg_type_name(type);
}

/* "<name>(<caller> -> <callee>)" for the begin event b. */
static void span_name(ex *x, const xev *b) {
  char b1[32], b2[32];
  const char *fn = ev_name(x, b);
  jw_key(x->w, "name");
  jw_c(x->w, '"');
  fn = fn ? fn : "rpc";
  jw_esc(x->w, fn, strlen(fn));
  jw_c(x->w, '(');
  const char *caller = node_name(x, b->group, b->node, b1);
  jw_esc(x->w, caller, strlen(caller));
  jw_s(x->w, " -> ");
  const char *callee = b->peer >= 0 ? node_name(x, b->group, b->peer, b2) : "?";
  jw_esc(x->w, callee, strlen(callee));
  jw_s(x->w, ")\"");
}

/* The async id: "<caller>:<request id>", made unique with the event's
 * index when the recording reuses a request id. */
static void span_id(ex *x, const xev *b) {
  jw_s(x->w, ",\"cat\":\"rpc\",\"id2\":{\"local\":\"");
  jw_i64(x->w, b->node);
  jw_c(x->w, ':');
  jw_u64(x->w, (uint64_t)b->xid);
  if (b->dup) {
    jw_c(x->w, '#');
    jw_u64(x->w, (uint64_t)(b - x->ev));
  }
  jw_s(x->w, "\"}");
}

static void error_args(ex *x, int64_t code) {
  kv_i64(x, "error", code);
  if (code) {
    int c = code >= INT32_MIN && code <= INT32_MAX ? (int)code : 1;
    kv_str(x, "error_name", drpc_errname(c));
    kv_str(x, "error_text", drpc_strerror(c));
  }
}

static void peer_arg(ex *x, const char *key, const xev *e) {
  char buf[32];
  kv_str(x, key, e->peer >= 0 ? node_name(x, e->group, e->peer, buf) : NULL);
}

static void write_frame(ex *x, const xev *e, const proc *p) {
  bool send = e->kind == K_OUT_SEND;
  const char *type = msg_type_name(e);
  ev_begin(x, "X", p->pid, TID_AGENT, e->t_ns);
  jw_key(x->w, "name");
  jw_c(x->w, '"');
  jw_s(x->w, send ? "send " : "recv ");
  jw_esc(x->w, type, strlen(type));
  jw_c(x->w, '"');
  kv_str(x, "cat", "frame");
  kv_dur(x, e->slice_dur_ns);
  args_begin(x);
  peer_arg(x, send ? "to" : "from", e);
  kv_id(x, "conn", (uint64_t)e->xid);
  if (e->has_hdr)
    kv_id(x, "msg_id", e->msg_id);
  kv_i64(x, "bytes", e->size);
  args_end(x);
  ev_end(x);
  if (e->mate >= 0) {
    /* The flow id is the send's index: one arrow per matched send. */
    size_t sidx = send ? (size_t)(e - x->ev) : (size_t)e->mate;
    ev_begin(x, send ? "s" : "f", p->pid, TID_AGENT, e->t_ns);
    kv_str(x, "cat", "flow");
    kv_str(x, "name", type);
    kv_i64(x, "id", (int64_t)sidx + 1);
    if (!send)
      kv_str(x, "bp", "e");
    ev_end(x);
    if (send)
      x->st.flows++;
  }
  if (send) {
    proc *sp = &x->procs[e->proc];
    sp->inflight += e->size;
    counter(x, sp, e->t_ns, "bytes in flight", "bytes", sp->inflight);
  } else if (e->mate >= 0) {
    const xev *s = &x->ev[e->mate];
    proc *sp = &x->procs[s->proc];
    sp->inflight -= s->size;
    counter(x, sp, e->t_ns, "bytes in flight", "bytes", sp->inflight);
  }
}

static void write_span_begin(ex *x, const xev *e, proc *p) {
  ev_begin(x, "b", p->pid, TID_AGENT, e->t_ns);
  span_id(x, e);
  span_name(x, e);
  args_begin(x);
  kv_id(x, "request_id", (uint64_t)e->xid);
  peer_arg(x, "callee", e);
  kv_i64(x, "timeout_ms", e->aux);
  args_end(x);
  ev_end(x);
  x->st.spans++;
  p->pending++;
  counter(x, p, e->t_ns, "pending calls", "calls", p->pending);
}

/* Closes the span opened by b: at end (matched) or at the end of the
 * trace (end NULL, unfinished). */
static void write_span_end(ex *x, const xev *b, const xev *end) {
  proc *p = &x->procs[b->proc];
  ev_begin(x, "e", p->pid, TID_AGENT, end ? end->t_ns : x->tlast);
  span_id(x, b);
  span_name(x, b);
  args_begin(x);
  kv_id(x, "request_id", (uint64_t)b->xid);
  if (end) {
    error_args(x, end->aux);
  } else {
    kv_true(x, "unfinished");
    x->st.unfinished++;
  }
  args_end(x);
  ev_end(x);
  if (end) {
    p->pending--;
    counter(x, p, end->t_ns, "pending calls", "calls", p->pending);
  }
}

static int write_job(ex *x, const xev *e, proc *p) {
  const xev *done = e->mate >= 0 ? &x->ev[e->mate] : NULL;
  int64_t end = done ? done->t_ns : x->tlast;
  bool fresh;
  int32_t lane = lane_take(&p->exec, e->t_ns, end, &fresh);
  if (lane < 0)
    return nomem(x);
  int64_t tid = TID_EXEC_BASE + lane;
  if (fresh)
    lane_meta(x, p, tid, "executor", lane);
  const char *fn = ev_name(x, e);
  ev_begin(x, "X", p->pid, tid, e->t_ns);
  kv_str(x, "name", fn ? fn : "job");
  kv_str(x, "cat", "job");
  kv_dur(x, end - e->t_ns);
  args_begin(x);
  kv_id(x, "request_id", (uint64_t)e->xid);
  peer_arg(x, "caller", e);
  if (done) {
    /* IN_JOB_DONE's aux: 0 a response, 1 a remote (RRef) result. */
    kv_str(x, "result",
           done->aux == 0   ? "response"
           : done->aux == 1 ? "remote result"
                            : "other");
  } else {
    kv_true(x, "unfinished");
    x->st.unfinished++;
  }
  args_end(x);
  ev_end(x);
  x->st.jobs++;
  return 0;
}

static int write_profile(ex *x, const xev *e, proc *p) {
  int64_t dur = e->aux > 0 && e->aux <= INT64_MAX - e->t_ns ? e->aux : 0;
  bool fresh;
  int32_t lane = lane_take(&p->prof, e->t_ns, e->t_ns + dur, &fresh);
  if (lane < 0)
    return nomem(x);
  int64_t tid = TID_PROFILE_BASE + lane;
  if (fresh)
    lane_meta(x, p, tid, "profile", lane);
  const char *name = ev_name(x, e);
  ev_begin(x, "X", p->pid, tid, e->t_ns);
  kv_str(x, "name", name ? name : "profile");
  kv_str(x, "cat", "profile");
  kv_dur(x, dur);
  ev_end(x);
  return 0;
}

/* True when the run names node `node` (the nodes past 64 of a large
 * simulated cluster). */
static bool node_known(const ex *x, int64_t group, int32_t node) {
  hkey k = mkkey(group, node, 0, 0, 0);
  return hmap_get(&x->names, &k) != NULL;
}

/* The workers in a fault's node mask (bit n % 64 = node n): "w0,w2" for a
 * name (at most 8, then "+N") or, with array, a JSON array of all. */
static void write_mask(ex *x, int64_t group, uint64_t mask, bool array) {
  char buf[32];
  int shown = 0, more = 0;
  if (array)
    jw_c(x->w, '[');
  for (int32_t i = 0; i < 64 || (i < 1 << 20 && node_known(x, group, i)); i++) {
    if (!(mask >> (i % 64) & 1))
      continue;
    if (!array && shown == 8) {
      more++;
      continue;
    }
    const char *name = node_name(x, group, i, buf);
    if (shown++)
      jw_c(x->w, ',');
    if (array)
      jw_c(x->w, '"');
    jw_esc(x->w, name, strlen(name));
    if (array)
      jw_c(x->w, '"');
  }
  if (more) {
    jw_s(x->w, ",+");
    jw_i64(x->w, more);
  }
  if (array)
    jw_c(x->w, ']');
}

/* Faults on the faults track: a node's own ("crash(w1)", process scope),
 * or a link fault the simulator records with node -1 and the node masks
 * of the two sides in xid and aux ("partition(w1 | w0,w2)", global, as
 * are partitions and heals named by a worker). */
static void write_fault(ex *x, const xev *e, proc *p) {
  const char *kind = ev_name(x, e);
  kind = kind ? kind : "fault";
  bool link = e->node < 0 && (e->xid || e->aux);
  bool global = e->node < 0 || strncmp(kind, "partition", 9) == 0 ||
                strncmp(kind, "heal", 4) == 0;
  if (!p->faults_named) {
    p->faults_named = true;
    meta(x, p->pid, TID_FAULTS, "thread_name", "faults", TID_FAULTS);
  }
  char b1[32], b2[32];
  const char *self = e->node >= 0 ? node_name(x, e->group, e->node, b1) : NULL;
  const char *other = e->peer >= 0 ? node_name(x, e->group, e->peer, b2) : NULL;
  ev_begin(x, "i", p->pid, TID_FAULTS, e->t_ns);
  kv_str(x, "s", global ? "g" : "p");
  kv_str(x, "cat", "fault");
  jw_key(x->w, "name");
  jw_c(x->w, '"');
  jw_esc(x->w, kind, strlen(kind));
  if (link) {
    jw_c(x->w, '(');
    write_mask(x, e->group, (uint64_t)e->xid, false);
    jw_s(x->w, " | ");
    write_mask(x, e->group, (uint64_t)e->aux, false);
    jw_c(x->w, ')');
  } else if (self || other) {
    jw_c(x->w, '(');
    if (self)
      jw_esc(x->w, self, strlen(self));
    if (self && other)
      jw_s(x->w, " | ");
    if (other)
      jw_esc(x->w, other, strlen(other));
    jw_c(x->w, ')');
  }
  jw_c(x->w, '"');
  args_begin(x);
  if (link) {
    jw_key(x->w, "a");
    write_mask(x, e->group, (uint64_t)e->xid, true);
    jw_key(x->w, "b");
    write_mask(x, e->group, (uint64_t)e->aux, true);
  } else {
    kv_str(x, "node", self);
    kv_str(x, "peer", other);
    kv_i64(x, "param", e->aux);
  }
  args_end(x);
  ev_end(x);
}

/* Everything else: an instant on the agent track. */
static void write_instant(ex *x, const xev *e, const proc *p) {
  const char *name, *cat = "agent";
  char buf[40];
  switch (e->kind) {
  case K_IN_CONN_OPEN:
    name = "conn open", cat = "conn";
    break;
  case K_IN_CONN_CLOSED:
    name = e->aux ? "conn reset" : "conn closed", cat = "conn";
    break;
  case K_IN_TIMER:
    name = "timer", cat = "timer";
    break;
  case K_IN_COMMAND:
    name = "command";
    break;
  case K_IN_JOB_DONE:
    name = "job done (no start)", cat = "job";
    break;
  case K_IN_START:
    name = "start";
    break;
  case K_OUT_CONNECT:
    name = "connect", cat = "conn";
    break;
  case K_OUT_CLOSE:
    name = "close", cat = "conn";
    break;
  case K_OUT_FUTURE:
    name = e->aux ? "future failed" : "future done";
    break;
  case K_OUT_EXECUTE:
    name = "execute";
    break;
  case K_OUT_TIMER:
    name = e->aux ? "arm timer" : "cancel timer", cat = "timer";
    break;
  case K_RPC_END:
    name = "rpc end (no begin)", cat = "rpc";
    break;
  case K_RREF:
    name = "rref", cat = "rref";
    break;
  case K_LOG:
    name = "log", cat = "log";
    break;
  default:
    snprintf(buf, sizeof buf, "event kind %" PRId32, e->kind);
    name = buf;
  }
  const char *label = ev_name(x, e);
  ev_begin(x, "i", p->pid, TID_AGENT, e->t_ns);
  kv_str(x, "s", "t");
  kv_str(x, "cat", cat);
  jw_key(x->w, "name");
  jw_c(x->w, '"');
  jw_esc(x->w, name, strlen(name));
  if (label && e->kind != K_IN_START) {
    jw_c(x->w, ' ');
    jw_esc(x->w, label, strlen(label));
  }
  jw_c(x->w, '"');
  args_begin(x);
  if (e->peer >= 0)
    peer_arg(x, "peer", e);
  switch (e->kind) {
  case K_IN_CONN_CLOSED:
  case K_OUT_FUTURE:
  case K_RPC_END:
    kv_id(x, e->kind == K_IN_CONN_CLOSED ? "conn" : "request_id",
          (uint64_t)e->xid);
    error_args(x, e->aux);
    break;
  case K_RREF:
    kv_id(x, "rref", (uint64_t)e->xid);
    kv_id(x, "fork", (uint64_t)e->aux);
    break;
  case K_LOG:
    kv_i64(x, "level", e->aux);
    if (e->has_text) {
      jw_key(x->w, "text");
      jw_c(x->w, '"');
      jw_esc(x->w, x->arena + e->text_off, e->text_len);
      jw_c(x->w, '"');
    }
    break;
  case K_IN_START:
    kv_str(x, "worker", label);
    break;
  default:
    kv_id(x, "id", (uint64_t)e->xid);
    kv_i64(x, "aux", e->aux);
  }
  args_end(x);
  ev_end(x);
}

static int write_events(ex *x) {
  for (size_t i = 0; i < x->n; i++) {
    xev *e = &x->ev[i];
    proc *p = &x->procs[e->proc];
    int r = 0;
    switch (e->kind) {
    case K_IN_FRAME:
    case K_OUT_SEND:
      write_frame(x, e, p);
      break;
    case K_RPC_BEGIN:
      write_span_begin(x, e, p);
      break;
    case K_RPC_END:
      if (e->mate >= 0)
        write_span_end(x, &x->ev[e->mate], e);
      else
        write_instant(x, e, p);
      break;
    case K_OUT_EXECUTE:
      r = write_job(x, e, p);
      break;
    case K_IN_JOB_DONE:
      if (e->mate < 0)
        write_instant(x, e, p);
      break;
    case K_FAULT:
      write_fault(x, e, p);
      break;
    case K_PROFILE:
      r = write_profile(x, e, p);
      break;
    default:
      write_instant(x, e, p);
    }
    if (r)
      return r;
  }
  /* Every b gets its e: calls still outstanding when the recording ends
   * close at its last timestamp. */
  for (size_t i = 0; i < x->n; i++)
    if (x->ev[i].kind == K_RPC_BEGIN && x->ev[i].mate < 0)
      write_span_end(x, &x->ev[i], NULL);
  return 0;
}

/* A runs row as JSON: integers that JavaScript cannot hold exactly become
 * strings; the seed is unsigned (stored as its two's-complement int64). */
static void write_column(ex *x, sqlite3_stmt *st, int col, bool is_unsigned) {
  switch (sqlite3_column_type(st, col)) {
  case SQLITE_NULL:
    jw_s(x->w, "null");
    break;
  case SQLITE_INTEGER: {
    int64_t v = sqlite3_column_int64(st, col);
    if (is_unsigned) {
      jw_id(x->w, (uint64_t)v);
    } else if (v >= -(int64_t)JSON_SAFE_INT && v <= (int64_t)JSON_SAFE_INT) {
      jw_i64(x->w, v);
    } else {
      jw_c(x->w, '"');
      jw_u64(x->w, (uint64_t)v);
      jw_c(x->w, '"');
    }
    break;
  }
  default: {
    const char *t = (const char *)sqlite3_column_text(st, col);
    jw_c(x->w, '"');
    jw_esc(x->w, t ? t : "", t ? (size_t)sqlite3_column_bytes(st, col) : 0);
    jw_c(x->w, '"');
  }
  }
}

static void write_other_data(ex *x) {
  jw *w = x->w;
  jw_s(w, "\n],\n\"otherData\":{\"exporter\":\"drpc\",\"schema_version\":");
  jw_i64(w, DRPC_TRACE_EXPORT_SCHEMA);
  kv_i64(x, "t0_ns", x->t0);
  kv_i64(x, "events", (int64_t)x->st.events);
  kv_i64(x, "skipped_rows", (int64_t)x->st.skipped);
  kv_str(x, "clocks",
         x->clock_model ? "simulator global clock (nodes[] model)"
                        : "as recorded");
  jw_s(w, ",\"runs\":[");
  sqlite3_stmt *st = NULL;
  static const char *const cols[] = {"id",         "backend", "scenario",
                                     "seed",       "commit",  "config",
                                     "started_at", "host",    "pid"};
  const char *sql = x->opts.run
                        ? "SELECT id, backend, scenario, seed, commit_id, "
                          "config, started_at, host, pid FROM runs WHERE id "
                          "= ?1"
                        : "SELECT id, backend, scenario, seed, commit_id, "
                          "config, started_at, host, pid FROM runs ORDER BY "
                          "id";
  /* Run details are decoration: a runs table that does not answer leaves
   * the list empty rather than failing the export. */
  if (x->has_runs &&
      sqlite3_prepare_v2(x->db, sql, -1, &st, NULL) == SQLITE_OK) {
    if (x->opts.run)
      sqlite3_bind_int64(st, 1, x->opts.run);
    bool first = true;
    while (sqlite3_step(st) == SQLITE_ROW) {
      jw_s(w, first ? "{" : ",{");
      first = false;
      for (int c = 0; c < 9; c++) {
        if (c)
          jw_c(w, ',');
        jw_str(w, cols[c]);
        jw_c(w, ':');
        write_column(x, st, c, c == 3);
      }
      jw_c(w, '}');
    }
  }
  sqlite3_finalize(st);
  jw_s(w, "]}}\n");
}

static void ex_free(ex *x) {
  free(x->ev);
  free(x->arena);
  free(x->str_id);
  free(x->str_off);
  for (size_t i = 0; i < x->nprocs; i++) {
    free(x->procs[i].exec.h);
    free(x->procs[i].prof.h);
  }
  free(x->procs);
  hmap_free(&x->procmap);
  hmap_free(&x->names);
}

void drpc_trace_export_opts_default(drpc_trace_export_opts *o) {
  memset(o, 0, sizeof *o);
}

int drpc_trace_export_chrome_db(struct sqlite3 *db, FILE *out,
                                const drpc_trace_export_opts *opts,
                                drpc_trace_export_stats *stats,
                                drpc_error *err) {
  if (!db || !out)
    return drpc_error_set(err, DRPC_EINVAL, "export: NULL database or output");
  jw *w = malloc(sizeof *w);
  if (!w)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory exporting trace");
  w->f = out;
  w->n = 0;
  w->failed = false;
  w->no_comma = false;
  ex x = {0};
  x.db = db;
  x.err = err;
  x.w = w;
  x.first = true;
  if (opts)
    x.opts = *opts;
  else
    drpc_trace_export_opts_default(&x.opts);
  int r;
  if ((r = check_schema(&x)) || (r = load_strings(&x)) ||
      (r = load_events(&x)) || (r = correct_clocks(&x)) ||
      (r = assign_groups(&x)) || (r = load_names(&x)) ||
      (r = build_procs(&x)) ||
      (r = match_pairs(&x, K_OUT_SEND, key_send, K_IN_FRAME, key_recv)) ||
      (r = match_pairs(&x, K_RPC_BEGIN, key_span, K_RPC_END, key_span)) ||
      (r = match_pairs(&x, K_OUT_EXECUTE, key_job, K_IN_JOB_DONE, key_job)) ||
      (r = match_pairs(&x, K_OUT_EXECUTE, key_job_any, K_IN_JOB_DONE,
                       key_done_nopeer)) ||
      (r = size_frame_slices(&x)))
    goto done;
  if (x.opts.run && x.n == 0) {
    /* An empty run is fine; a run that is not there is a mistake. */
    sqlite3_stmt *st;
    bool found = false;
    if (x.has_runs && sqlite3_prepare_v2(db, "SELECT 1 FROM runs WHERE id = ?1",
                                         -1, &st, NULL) == SQLITE_OK) {
      sqlite3_bind_int64(st, 1, x.opts.run);
      found = sqlite3_step(st) == SQLITE_ROW;
      sqlite3_finalize(st);
    }
    if (!found) {
      r = drpc_error_set(err, DRPC_ENOTFOUND,
                         "run %" PRId64 " is not in the recording", x.opts.run);
      goto done;
    }
  }
  x.st.events = x.n;
  x.t0 = x.n ? x.ev[0].t_ns : 0;
  x.tlast = x.n ? x.ev[x.n - 1].t_ns : 0;
  jw_s(w, "{\"displayTimeUnit\":\"ns\",\"traceEvents\":[");
  write_process_meta(&x);
  if ((r = write_events(&x)))
    goto done;
  write_other_data(&x);
  jw_flush(w);
  if (w->failed || fflush(out) != 0 || ferror(out))
    r = drpc_error_set(err, DRPC_EIO, "writing the trace: %s",
                       strerror(errno ? errno : EIO));
done:
  if (stats)
    *stats = x.st;
  ex_free(&x);
  free(w);
  return r;
}

int drpc_trace_export_chrome(const char *db_path, const char *out_path,
                             drpc_error *err) {
  if (!db_path || !out_path)
    return drpc_error_set(err, DRPC_EINVAL, "export: NULL path");
  if (strcmp(db_path, out_path) == 0)
    return drpc_error_set(err, DRPC_EINVAL,
                          "%s: the trace would replace the recording", db_path);
  struct stat sb;
  if (stat(db_path, &sb) != 0)
    return drpc_error_set(err, errno == ENOENT ? DRPC_ENOTFOUND : DRPC_EIO,
                          "%s: %s", db_path, strerror(errno));
  if (S_ISDIR(sb.st_mode))
    return drpc_error_set(err, DRPC_EPROTO, "%s: is a directory", db_path);
  sqlite3 *db = NULL;
  if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX,
                      NULL) != SQLITE_OK) {
    int r = drpc_error_set(err, DRPC_EIO, "%s: cannot open: %s", db_path,
                           db ? sqlite3_errmsg(db) : "out of memory");
    sqlite3_close(db);
    return r;
  }
  sqlite3_busy_timeout(db, 5000);
  bool to_stdout = strcmp(out_path, "-") == 0;
  char *tmp = NULL;
  FILE *out = stdout;
  int r = 0;
  if (!to_stdout) {
    size_t len = strlen(out_path);
    tmp = malloc(len + 5);
    if (!tmp) {
      sqlite3_close(db);
      return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
    }
    memcpy(tmp, out_path, len);
    memcpy(tmp + len, ".tmp", 5);
    out = fopen(tmp, "w");
    if (!out) {
      r = drpc_error_set(err, DRPC_EIO, "%s: %s", tmp, strerror(errno));
      free(tmp);
      sqlite3_close(db);
      return r;
    }
  }
  r = drpc_trace_export_chrome_db(db, out, NULL, NULL, err);
  sqlite3_close(db);
  if (!to_stdout) {
    if (fclose(out) != 0 && !r)
      r = drpc_error_set(err, DRPC_EIO, "%s: %s", tmp, strerror(errno));
    if (!r && rename(tmp, out_path) != 0)
      r = drpc_error_set(err, DRPC_EIO, "%s: %s", out_path, strerror(errno));
    if (r)
      unlink(tmp);
    free(tmp);
  }
  if (r)
    drpc_error_prefix(err, "%s", db_path);
  return r;
}
