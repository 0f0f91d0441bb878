/* drpc viz FILE.db -o view.html: a self-contained HTML viewer of a
 * recording. The page's HTML, CSS and JS live in viz/ and are embedded
 * into this binary at build time (viz/embed.cmake); the recording is read
 * with SQL and written into the page as compact, column-wise JSON. */
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "drpc/error.h"
#include "drpc/trace.h"
#include "drpc/wire.h"
#include "tools.h"

/* Generated from viz/ by viz/embed.cmake. */
extern const unsigned char drpc_viz_viewer_html[];
extern const size_t drpc_viz_viewer_html_len;
extern const unsigned char drpc_viz_viewer_js[];
extern const size_t drpc_viz_viewer_js_len;
extern const unsigned char drpc_viz_viewer_css[];
extern const size_t drpc_viz_viewer_css_len;

static void usage_viz(FILE *f) {
  fprintf(f,
          "usage: drpc viz FILE.db -o VIEW.html [--quiet]\n"
          "       drpc viz FILE.db --svg PICTURE.svg [--from T] [--to T] "
          "[--quiet]\n"
          "\n"
          "-o writes one self-contained HTML page (no network access\n"
          "needed) showing the recording: a space-time diagram of the\n"
          "messages between workers (lost sends, connection resets, faults\n"
          "and crashes marked), the RPC and server-work spans below it, and\n"
          "details of the clicked item. Wheel zooms, drag pans.\n"
          "--svg writes a static picture of the same diagram for reports,\n"
          "of the time window --from .. --to (default: the whole run).\n"
          "Times count from the run's first event, as on the page: a number\n"
          "with a unit ns, us, ms or s, no unit meaning ms (250, 1.5ms,\n"
          "800us, 2s). -o and --svg may be given together. Exit 2 when the\n"
          "recording cannot be read, an argument is bad or a file cannot\n"
          "be written. --quiet: print nothing on success.\n");
}

/* ---- growable arrays ------------------------------------------------------
 */

typedef struct vec {
  int64_t *v;
  size_t n, cap;
} vec;

static int vec_push(vec *a, int64_t x) {
  if (a->n == a->cap) {
    size_t cap = a->cap ? a->cap * 2 : 256;
    int64_t *nv = realloc(a->v, cap * sizeof *nv);
    if (!nv)
      return -1;
    a->v = nv;
    a->cap = cap;
  }
  a->v[a->n++] = x;
  return 0;
}

static void vec_free(vec *a) {
  free(a->v);
  a->v = NULL;
  a->n = a->cap = 0;
}

/* ---- interned strings (FNV-1a, open addressing) --------------------------
 */

typedef struct strtab {
  char **s;
  size_t n, cap;
  int32_t *slots; /* index + 1, 0 = empty */
  size_t nslots;
} strtab;

static uint64_t fnv(const char *s, size_t len) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < len; i++)
    h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
  return h;
}

static int strtab_grow(strtab *t) {
  size_t ns = t->nslots ? t->nslots * 2 : 1024;
  int32_t *sl = calloc(ns, sizeof *sl);
  if (!sl)
    return -1;
  for (size_t i = 0; i < t->n; i++) {
    size_t j = fnv(t->s[i], strlen(t->s[i])) & (ns - 1);
    while (sl[j])
      j = (j + 1) & (ns - 1);
    sl[j] = (int32_t)i + 1;
  }
  free(t->slots);
  t->slots = sl;
  t->nslots = ns;
  return 0;
}

/* Returns the string's index (-1 on allocation failure). */
static int64_t strtab_intern(strtab *t, const char *s, size_t len) {
  if ((t->n + 1) * 2 > t->nslots && strtab_grow(t))
    return -1;
  size_t j = fnv(s, len) & (t->nslots - 1);
  while (t->slots[j]) {
    const char *o = t->s[t->slots[j] - 1];
    if (strlen(o) == len && !memcmp(o, s, len))
      return t->slots[j] - 1;
    j = (j + 1) & (t->nslots - 1);
  }
  if (t->n == t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 256;
    char **ns = realloc(t->s, cap * sizeof *ns);
    if (!ns)
      return -1;
    t->s = ns;
    t->cap = cap;
  }
  char *c = malloc(len + 1);
  if (!c)
    return -1;
  memcpy(c, s, len);
  c[len] = 0;
  t->s[t->n] = c;
  t->slots[j] = (int32_t)t->n + 1;
  return (int64_t)t->n++;
}

static void strtab_free(strtab *t) {
  for (size_t i = 0; i < t->n; i++)
    free(t->s[i]);
  free(t->s);
  free(t->slots);
}

/* ---- open spans: (node, peer, xid) -> index, latest wins ----------------
 */

typedef struct spanmap {
  uint64_t *keys;
  int64_t *vals; /* index + 1, 0 = empty */
  size_t nslots, n;
} spanmap;

static uint64_t span_key(int64_t node, int64_t peer, uint64_t xid) {
  uint64_t h = xid * 0x9E3779B97F4A7C15ull;
  h ^= ((uint64_t)(node & 0xffff) << 16 | (uint64_t)(peer & 0xffff)) *
       0xC2B2AE3D27D4EB4Full;
  return h ^ (h >> 29);
}

/* Keys are hashes of (node, peer, xid); a collision (2^-64 per pair) would
 * only join two spans in the picture. */
static int spanmap_put(spanmap *m, uint64_t key, int64_t idx) {
  if ((m->n + 1) * 2 > m->nslots) {
    size_t ns = m->nslots ? m->nslots * 2 : 1024;
    uint64_t *nk = calloc(ns, sizeof *nk);
    int64_t *nv = calloc(ns, sizeof *nv);
    if (!nk || !nv) {
      free(nk);
      free(nv);
      return -1;
    }
    m->n = 0;
    for (size_t i = 0; i < m->nslots; i++) {
      if (m->vals[i] <= 0) /* empty or tombstone */
        continue;
      m->n++;
      size_t j = m->keys[i] & (ns - 1);
      while (nv[j])
        j = (j + 1) & (ns - 1);
      nk[j] = m->keys[i];
      nv[j] = m->vals[i];
    }
    free(m->keys);
    free(m->vals);
    m->keys = nk;
    m->vals = nv;
    m->nslots = ns;
  }
  size_t j = key & (m->nslots - 1);
  while (m->vals[j] && !(m->vals[j] > 0 && m->keys[j] == key))
    j = (j + 1) & (m->nslots - 1);
  if (!m->vals[j])
    m->n++;
  m->keys[j] = key;
  m->vals[j] = idx + 1;
  return 0;
}

/* Returns the index and forgets the key, or -1. */
static int64_t spanmap_take(spanmap *m, uint64_t key) {
  if (!m->nslots)
    return -1;
  size_t j = key & (m->nslots - 1);
  while (m->vals[j]) {
    if (m->vals[j] > 0 && m->keys[j] == key) {
      int64_t v = m->vals[j] - 1;
      m->vals[j] = -1; /* tombstone: stays occupied, never matches */
      return v;
    }
    j = (j + 1) & (m->nslots - 1);
  }
  return -1;
}

static void spanmap_free(spanmap *m) {
  free(m->keys);
  free(m->vals);
}

/* ---- what the page gets ---------------------------------------------------
 */

enum { MS_T, MS_NODE, MS_PEER, MS_TYPE, MS_ID, MS_SIZE, MS_NCOL };
enum {
  SP_NODE,
  SP_PEER,
  SP_XID,
  SP_T0,
  SP_T1,
  SP_NAME,
  SP_AUX,
  SP_END,
  SP_NCOL
};

typedef struct viz {
  strtab str;
  int64_t t0;
  bool have_t0;
  int64_t tmax;
  vec sends[MS_NCOL], recvs[MS_NCOL];
  vec rpc[SP_NCOL], work[SP_NCOL];
  spanmap rpc_open, work_open;
  vec fault_t, fault_node, fault_name, fault_a, fault_b;
  vec reset_t, reset_node, reset_conn, reset_err, reset_reason;
  vec crash_node, crash_t0, crash_t1;
  vec start_t, start_node;
  vec rref_t, rref_node, rref_key, rref_fork, rref_name;
  vec *crash_open; /* per node slot: index into crash arrays + 1 */
  int64_t kind_count[128];
  int64_t nevents;
  const char **sqlstr; /* strings.id -> text (borrowed from strtab) */
  int64_t *sqlstr_idx; /* strings.id -> strtab index */
  int64_t nsqlstr;
  /* simulator clocks: node-local time -> the simulator's global time */
  int64_t *clock_off;
  int32_t *clock_ppm;
  int64_t nclock;
} viz;

/* sim/internal.h: SIM_BASE_NS, where every simulated clock starts. */
#define VIZ_SIM_BASE_NS 1000000000000ll

/* A simulated node's clock runs at global + offset, drift_ppm fast since
 * SIM_BASE_NS (sim/env.c); the page draws every node on global time so
 * that messages go forwards. Other times (link faults, real runs) are
 * kept. */
static int64_t global_time(const viz *z, int64_t node, int64_t t) {
  if (node < 0 || node >= z->nclock ||
      (!z->clock_off[node] && !z->clock_ppm[node]))
    return t;
  double rel = (double)(t - VIZ_SIM_BASE_NS - z->clock_off[node]);
  return VIZ_SIM_BASE_NS +
         (int64_t)(rel * 1e6 / (1e6 + (double)z->clock_ppm[node]));
}

static void load_clocks(viz *z, const drpc_trace_run_info *ri) {
  if (!ri->backend || strcmp(ri->backend, "sim") || !ri->config_json)
    return;
  cJSON *cfg = cJSON_Parse(ri->config_json);
  const cJSON *nodes = cJSON_GetObjectItemCaseSensitive(cfg, "nodes");
  int n = cJSON_IsArray(nodes) ? cJSON_GetArraySize(nodes) : 0;
  if (n > 0 && n <= 32768) {
    z->clock_off = calloc((size_t)n, sizeof *z->clock_off);
    z->clock_ppm = calloc((size_t)n, sizeof *z->clock_ppm);
    if (z->clock_off && z->clock_ppm) {
      z->nclock = n;
      for (int i = 0; i < n; i++) {
        const cJSON *nd = cJSON_GetArrayItem(nodes, i);
        const cJSON *off =
            cJSON_GetObjectItemCaseSensitive(nd, "clock_offset_ns");
        const cJSON *ppm = cJSON_GetObjectItemCaseSensitive(nd, "drift_ppm");
        if (cJSON_IsString(off))
          z->clock_off[i] = strtoll(off->valuestring, NULL, 10);
        if (cJSON_IsNumber(ppm))
          z->clock_ppm[i] = (int32_t)ppm->valuedouble;
      }
    }
  }
  cJSON_Delete(cfg);
}

/* The first event's time on the page's clock (its zero). */
static int first_time(viz *z, sqlite3 *db, int64_t run) {
  sqlite3_stmt *s = NULL;
  if (sqlite3_prepare_v2(db,
                         "SELECT node, min(t_ns) FROM events WHERE run = ? "
                         "GROUP BY node",
                         -1, &s, NULL) != SQLITE_OK)
    return -1;
  sqlite3_bind_int64(s, 1, run);
  while (sqlite3_step(s) == SQLITE_ROW) {
    int64_t t =
        global_time(z, sqlite3_column_int64(s, 0), sqlite3_column_int64(s, 1));
    if (!z->have_t0 || t < z->t0)
      z->t0 = t;
    z->have_t0 = true;
  }
  sqlite3_finalize(s);
  return 0;
}

static uint64_t le64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--)
    v = v << 8 | p[i];
  return v;
}

/* The sender named in a HELLO frame's body [version, id, name] (an
 * accepting core records the frame before it knows who sent it); -1 when
 * the body is not that. */
static int64_t hello_sender(const unsigned char *b, int len) {
  int p = DRPC_WIRE_HEADER_SIZE;
  uint64_t v[3] = {0};
  /* list tag, count, then two ints: tag 3 and a zigzag varint each */
  for (int item = 0; item < 3; item++) {
    if (p >= len || b[p++] != (item ? 3 : 7))
      return -1;
    uint64_t x = 0;
    for (int sh = 0; p < len && sh < 64; sh += 7) {
      x |= (uint64_t)(b[p] & 0x7f) << sh;
      if (!(b[p++] & 0x80))
        break;
    }
    v[item] = item ? (x >> 1) ^ (0 - (x & 1)) : x;
  }
  return (int64_t)v[2] >= 0 && (int64_t)v[2] <= 32767 ? (int64_t)v[2] : -1;
}

static int64_t name_idx(viz *z, sqlite3_stmt *s, int col) {
  if (sqlite3_column_type(s, col) == SQLITE_NULL)
    return -1;
  int64_t id = sqlite3_column_int64(s, col);
  if (id < 0 || id >= z->nsqlstr)
    return -1;
  return z->sqlstr_idx[id];
}

static int load_strings(viz *z, sqlite3 *db) {
  sqlite3_stmt *s = NULL;
  if (sqlite3_prepare_v2(db, "SELECT coalesce(max(id), 0) FROM strings", -1, &s,
                         NULL) != SQLITE_OK)
    return -1;
  int64_t max = 0;
  if (sqlite3_step(s) == SQLITE_ROW)
    max = sqlite3_column_int64(s, 0);
  sqlite3_finalize(s);
  if (max < 0 || max > 100000000)
    return -1;
  z->nsqlstr = max + 1;
  z->sqlstr_idx = malloc((size_t)z->nsqlstr * sizeof *z->sqlstr_idx);
  if (!z->sqlstr_idx)
    return -1;
  for (int64_t i = 0; i < z->nsqlstr; i++)
    z->sqlstr_idx[i] = -1;
  if (sqlite3_prepare_v2(db, "SELECT id, text FROM strings", -1, &s, NULL) !=
      SQLITE_OK)
    return -1;
  int rc = 0;
  while (sqlite3_step(s) == SQLITE_ROW) {
    int64_t id = sqlite3_column_int64(s, 0);
    const char *txt = (const char *)sqlite3_column_text(s, 1);
    if (id < 0 || id >= z->nsqlstr || !txt)
      continue;
    int64_t k = strtab_intern(&z->str, txt, strlen(txt));
    if (k < 0) {
      rc = -1;
      break;
    }
    z->sqlstr_idx[id] = k;
  }
  sqlite3_finalize(s);
  return rc;
}

#define PUSH(a, x)                                                             \
  do {                                                                         \
    if (vec_push(&(a), (x)))                                                   \
      return -1;                                                               \
  } while (0)

static int open_span(vec *cols, spanmap *m, int64_t node, int64_t peer,
                     uint64_t xid, int64_t t, int64_t name, int64_t aux) {
  int64_t idx = (int64_t)cols[SP_NODE].n;
  PUSH(cols[SP_NODE], node);
  PUSH(cols[SP_PEER], peer);
  PUSH(cols[SP_XID], (int64_t)xid);
  PUSH(cols[SP_T0], t);
  PUSH(cols[SP_T1], -1);
  PUSH(cols[SP_NAME], name);
  PUSH(cols[SP_AUX], aux);
  PUSH(cols[SP_END], -1);
  return spanmap_put(m, span_key(node, peer, xid), idx);
}

static void close_span(vec *cols, spanmap *m, int64_t node, int64_t peer,
                       uint64_t xid, int64_t t, int64_t end) {
  int64_t idx = spanmap_take(m, span_key(node, peer, xid));
  if (idx < 0)
    return;
  cols[SP_T1].v[idx] = t;
  cols[SP_END].v[idx] = end;
}

static int crash_slot(viz *z, int64_t node) {
  /* crash_open is a vec used as an array indexed by node (0..32767). */
  while ((int64_t)z->crash_open->n <= node)
    PUSH(*z->crash_open, 0);
  return 0;
}

static int read_events(viz *z, sqlite3 *db, int64_t run) {
  static const char *sql =
      "SELECT e.node, e.kind, e.t_ns, coalesce(e.peer, -1), "
      "coalesce(e.xid, 0), coalesce(e.aux, 0), e.size, e.name, "
      "CASE WHEN e.kind IN (1, 20) THEN substr(p.bytes, 1, 64) "
      "WHEN e.kind = 3 THEN substr(p.bytes, 1, 160) END "
      "FROM events e LEFT JOIN payloads p ON p.id = e.payload "
      "WHERE e.run = ? ORDER BY e.node, e.seq";
  sqlite3_stmt *s = NULL;
  if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK)
    return -1;
  sqlite3_bind_int64(s, 1, run);
  int rc = 0, step;
  while ((step = sqlite3_step(s)) == SQLITE_ROW) {
    int64_t node = sqlite3_column_int64(s, 0);
    int kind = sqlite3_column_int(s, 1);
    int64_t t = sqlite3_column_int64(s, 2);
    int64_t peer = sqlite3_column_int64(s, 3);
    uint64_t xid = (uint64_t)sqlite3_column_int64(s, 4);
    int64_t aux = sqlite3_column_int64(s, 5);
    int64_t size = sqlite3_column_int64(s, 6);
    t = global_time(z, node, t) - z->t0;
    if (t > z->tmax)
      z->tmax = t;
    z->nevents++;
    if (kind >= 0 && kind < 128)
      z->kind_count[kind]++;
    if (node < -1 || node > 32767)
      continue;
    switch (kind) {
    case 1:    /* in_frame */
    case 20: { /* out_send */
      const unsigned char *b = sqlite3_column_blob(s, 8);
      int bl = sqlite3_column_bytes(s, 8);
      uint64_t id = b && bl >= 16 ? le64(b + 8) : 0;
      if (kind == 1 && peer < 0 && aux == DRPC_MSG_HELLO && b)
        peer = hello_sender(b, bl);
      vec *c = kind == 20 ? z->sends : z->recvs;
      if (vec_push(&c[MS_T], t) || vec_push(&c[MS_NODE], node) ||
          vec_push(&c[MS_PEER], peer) || vec_push(&c[MS_TYPE], aux) ||
          vec_push(&c[MS_ID], (int64_t)id) || vec_push(&c[MS_SIZE], size))
        rc = -1;
      break;
    }
    case 3: /* in_conn_closed: resets only */
      if (aux != 0) {
        const char *b = sqlite3_column_blob(s, 8);
        int bl = sqlite3_column_bytes(s, 8);
        int64_t reason =
            b && bl > 0 ? strtab_intern(&z->str, b, (size_t)bl) : -1;
        if (vec_push(&z->reset_t, t) || vec_push(&z->reset_node, node) ||
            vec_push(&z->reset_conn, (int64_t)xid) ||
            vec_push(&z->reset_err, aux) || vec_push(&z->reset_reason, reason))
          rc = -1;
      }
      break;
    case 7: /* in_start: ends a crash */
      if (vec_push(&z->start_t, t) || vec_push(&z->start_node, node))
        rc = -1;
      if (node >= 0 && (int64_t)z->crash_open->n > node &&
          z->crash_open->v[node]) {
        z->crash_t1.v[z->crash_open->v[node] - 1] = t;
        z->crash_open->v[node] = 0;
      }
      break;
    case 70: { /* fault */
      int64_t nm = name_idx(z, s, 7);
      if (vec_push(&z->fault_t, t) || vec_push(&z->fault_node, node) ||
          vec_push(&z->fault_name, nm) || vec_push(&z->fault_a, (int64_t)xid) ||
          vec_push(&z->fault_b, aux)) {
        rc = -1;
        break;
      }
      if (nm >= 0 && node >= 0 && !strcmp(z->str.s[nm], "crash")) {
        if (crash_slot(z, node) || vec_push(&z->crash_node, node) ||
            vec_push(&z->crash_t0, t) || vec_push(&z->crash_t1, -1)) {
          rc = -1;
          break;
        }
        z->crash_open->v[node] = (int64_t)z->crash_node.n;
      }
      break;
    }
    case 40: /* rpc_begin */
      if (open_span(z->rpc, &z->rpc_open, node, -1, xid, t, name_idx(z, s, 7),
                    aux)) {
        rc = -1;
        break;
      }
      /* the callee, kept apart from the key */
      z->rpc[SP_PEER].v[z->rpc[SP_PEER].n - 1] = peer;
      break;
    case 41: /* rpc_end */
      close_span(z->rpc, &z->rpc_open, node, -1, xid, t, aux);
      break;
    case 24: /* out_execute */
      if (open_span(z->work, &z->work_open, node, peer, xid, t,
                    name_idx(z, s, 7), aux))
        rc = -1;
      break;
    case 6: /* in_job_done */
      close_span(z->work, &z->work_open, node, peer, xid, t, aux);
      break;
    case 50: /* rref */
      if (vec_push(&z->rref_t, t) || vec_push(&z->rref_node, node) ||
          vec_push(&z->rref_key, (int64_t)xid) ||
          vec_push(&z->rref_fork, aux) ||
          vec_push(&z->rref_name, name_idx(z, s, 7)))
        rc = -1;
      break;
    default:
      break;
    }
    if (rc)
      break;
  }
  if (!rc && step != SQLITE_DONE && step != SQLITE_ROW)
    rc = -1;
  sqlite3_finalize(s);
  return rc;
}

/* ---- matching sends to receives --------------------------------------------
 */

static const vec *sort_cols; /* qsort has no context argument */

static int cmp_msg(const void *pa, const void *pb) {
  size_t a = *(const size_t *)pa, b = *(const size_t *)pb;
  static const int order[] = {MS_NODE, MS_PEER, MS_TYPE, MS_ID, MS_T};
  for (int i = 0; i < 5; i++) {
    int64_t x = sort_cols[order[i]].v[a], y = sort_cols[order[i]].v[b];
    if (x != y)
      return x < y ? -1 : 1;
  }
  return a < b ? -1 : a > b;
}

/* Key of a send (from=node, to=peer) or a receive (to=node, from=peer). */
static int key_cmp(const vec *sc, size_t si, const vec *rc, size_t ri) {
  int64_t a[4] = {sc[MS_NODE].v[si], sc[MS_PEER].v[si], sc[MS_TYPE].v[si],
                  sc[MS_ID].v[si]};
  int64_t b[4] = {rc[MS_PEER].v[ri], rc[MS_NODE].v[ri], rc[MS_TYPE].v[ri],
                  rc[MS_ID].v[ri]};
  for (int i = 0; i < 4; i++)
    if (a[i] != b[i])
      return a[i] < b[i] ? -1 : 1;
  return 0;
}

/* recv_of[send] = the receive's time, or -1 (lost). Each receive takes the
 * latest unmatched send of its key sent no later than it arrived (a send
 * lost to a reset and then repeated matches the repeat), or failing that
 * the earliest unmatched one (clocks of merged real runs may differ). */
static int match_messages(viz *z, int64_t **recv_of) {
  size_t ns = z->sends[0].n, nr = z->recvs[0].n;
  size_t *so = malloc((ns + 1) * sizeof *so);
  size_t *ro = malloc((nr + 1) * sizeof *ro);
  *recv_of = malloc((ns + 1) * sizeof **recv_of);
  if (!so || !ro || !*recv_of) {
    free(so);
    free(ro);
    return -1;
  }
  for (size_t i = 0; i < ns; i++) {
    so[i] = i;
    (*recv_of)[i] = -1;
  }
  for (size_t i = 0; i < nr; i++)
    ro[i] = i;
  sort_cols = z->sends;
  qsort(so, ns, sizeof *so, cmp_msg);
  /* receives sort by (to, from, type, id, t): swap roles for the key */
  vec swapped[MS_NCOL];
  memcpy(swapped, z->recvs, sizeof swapped);
  swapped[MS_NODE] = z->recvs[MS_PEER];
  swapped[MS_PEER] = z->recvs[MS_NODE];
  sort_cols = swapped;
  qsort(ro, nr, sizeof *ro, cmp_msg);
  size_t i = 0, j = 0;
  while (i < ns && j < nr) {
    int c = key_cmp(z->sends, so[i], z->recvs, ro[j]);
    if (c < 0) {
      i++;
      continue;
    }
    if (c > 0) {
      j++;
      continue;
    }
    size_t ie = i, je = j;
    while (ie < ns && !key_cmp(z->sends, so[ie], z->recvs, ro[j]))
      ie++;
    while (je < nr && !key_cmp(z->sends, so[i], z->recvs, ro[je]))
      je++;
    for (size_t r = j; r < je; r++) {
      int64_t tr = z->recvs[MS_T].v[ro[r]];
      size_t pick = SIZE_MAX;
      for (size_t k = ie; k > i; k--) {
        size_t sidx = so[k - 1];
        if ((*recv_of)[sidx] < 0 && z->sends[MS_T].v[sidx] <= tr) {
          pick = sidx;
          break;
        }
      }
      for (size_t k = i; pick == SIZE_MAX && k < ie; k++)
        if ((*recv_of)[so[k]] < 0)
          pick = so[k];
      if (pick != SIZE_MAX)
        (*recv_of)[pick] = tr;
    }
    i = ie;
    j = je;
  }
  free(so);
  free(ro);
  return 0;
}

/* ---- time order ------------------------------------------------------------
 */

static const int64_t *sort_time; /* qsort has no context argument */

static int cmp_time(const void *pa, const void *pb) {
  size_t a = *(const size_t *)pa, b = *(const size_t *)pb;
  if (sort_time[a] != sort_time[b])
    return sort_time[a] < sort_time[b] ? -1 : 1;
  return a < b ? -1 : a > b;
}

/* Sorts the columns (and extra, when not NULL) by column tcol, stably:
 * global times of different nodes interleave differently from the
 * recorded order. */
static int sort_by_time(vec *const *cols, size_t ncol, size_t tcol,
                        int64_t *extra) {
  size_t n = cols[tcol]->n;
  size_t *perm = malloc((n + 1) * sizeof *perm);
  int64_t *tmp = malloc((n + 1) * sizeof *tmp);
  if (!perm || !tmp) {
    free(perm);
    free(tmp);
    return -1;
  }
  for (size_t i = 0; i < n; i++)
    perm[i] = i;
  sort_time = cols[tcol]->v;
  qsort(perm, n, sizeof *perm, cmp_time);
  for (size_t c = 0; c <= ncol; c++) {
    int64_t *v = c < ncol ? cols[c]->v : extra;
    if (!v)
      continue;
    for (size_t i = 0; i < n; i++)
      tmp[i] = v[perm[i]];
    memcpy(v, tmp, n * sizeof *v);
  }
  free(perm);
  free(tmp);
  return 0;
}

static int sort_all(viz *z, int64_t *recv_of) {
  vec *ms[MS_NCOL], *rp[SP_NCOL], *wk[SP_NCOL];
  for (int i = 0; i < MS_NCOL; i++)
    ms[i] = &z->sends[i];
  for (int i = 0; i < SP_NCOL; i++) {
    rp[i] = &z->rpc[i];
    wk[i] = &z->work[i];
  }
  vec *fc[] = {&z->fault_t, &z->fault_node, &z->fault_name, &z->fault_a,
               &z->fault_b};
  vec *rc[] = {&z->reset_t, &z->reset_node, &z->reset_conn, &z->reset_err,
               &z->reset_reason};
  vec *cc[] = {&z->crash_t0, &z->crash_node, &z->crash_t1};
  vec *sc[] = {&z->start_t, &z->start_node};
  vec *qc[] = {&z->rref_t, &z->rref_node, &z->rref_key, &z->rref_fork,
               &z->rref_name};
  return sort_by_time(ms, MS_NCOL, MS_T, recv_of) ||
         sort_by_time(rp, SP_NCOL, SP_T0, NULL) ||
         sort_by_time(wk, SP_NCOL, SP_T0, NULL) ||
         sort_by_time(fc, 5, 0, NULL) || sort_by_time(rc, 5, 0, NULL) ||
         sort_by_time(cc, 3, 0, NULL) || sort_by_time(sc, 2, 0, NULL) ||
         sort_by_time(qc, 5, 0, NULL);
}

/* ---- JSON output ----------------------------------------------------------
 */

static void json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    unsigned char c = *p;
    if (c == '"' || c == '\\')
      fprintf(f, "\\%c", c);
    else if (c < 0x20 || c == '<' || c == '>' || c == '&' || c == 0x7f)
      fprintf(f, "\\u%04x", c); /* safe inside <script> */
    else
      fputc(c, f);
  }
  fputc('"', f);
}

/* Writes one column of integers. */
static void json_col(FILE *f, const char *name, const int64_t *v, size_t n,
                     bool first) {
  fprintf(f, "%s\"%s\":[", first ? "" : ",", name);
  for (size_t i = 0; i < n; i++)
    fprintf(f, i ? ",%lld" : "%lld", (long long)v[i]);
  fputc(']', f);
}

/* A sorted time column as differences from the previous value. */
static void json_col_delta(FILE *f, const char *name, const int64_t *v,
                           size_t n) {
  fprintf(f, ",\"%s\":[", name);
  for (size_t i = 0; i < n; i++)
    fprintf(f, i ? ",%lld" : "%lld", (long long)(v[i] - (i ? v[i - 1] : 0)));
  fputc(']', f);
}

/* end - start per item, null where end is -1 (never happened). */
static void json_col_dur(FILE *f, const char *name, const int64_t *start,
                         const int64_t *end, size_t n) {
  fprintf(f, ",\"%s\":[", name);
  for (size_t i = 0; i < n; i++) {
    if (i)
      fputc(',', f);
    if (end[i] < 0)
      fputs("null", f);
    else
      fprintf(f, "%lld", (long long)(end[i] - start[i]));
  }
  fputc(']', f);
}

static void json_vecs(FILE *f, const char *obj, const char *const *names,
                      vec *const *cols, size_t ncol) {
  fprintf(f, ",\"%s\":{", obj);
  for (size_t i = 0; i < ncol; i++)
    json_col(f, names[i], cols[i]->v, cols[i]->n, i == 0);
  fputc('}', f);
}

static int write_data(FILE *f, viz *z, const char *path,
                      const drpc_trace_run_info *ri, const int16_t *ids,
                      char **names, size_t nn, const int64_t *recv_of) {
  fputs("{\"format\":\"drpc-viz\",\"version\":1,\"file\":", f);
  json_str(f, path);
  fputs(",\"run\":{\"backend\":", f);
  json_str(f, ri->backend ? ri->backend : "");
  fputs(",\"scenario\":", f);
  json_str(f, ri->scenario ? ri->scenario : "");
  if (ri->has_seed)
    fprintf(f, ",\"seed\":\"%llu\"", (unsigned long long)ri->seed);
  else
    fputs(",\"seed\":\"\"", f);
  fputs(",\"commit\":", f);
  json_str(f, ri->commit ? ri->commit : "");
  fputs(",\"started_at\":", f);
  json_str(f, ri->started_at ? ri->started_at : "");
  fprintf(f, "},\"t0\":\"%lld\",\"tmax\":%lld,\"events\":%lld",
          (long long)z->t0, (long long)z->tmax, (long long)z->nevents);
  fputs(",\"kinds\":{", f);
  bool first = true;
  for (int k = 0; k < 128; k++) {
    if (!z->kind_count[k])
      continue;
    const char *kn = drpc_trace_kind_name(k);
    fprintf(f, "%s\"%s\":%lld", first ? "" : ",", kn ? kn : "unknown",
            (long long)z->kind_count[k]);
    first = false;
  }
  fputs("},\"nodes\":{\"id\":[", f);
  size_t lanes = 0;
  for (size_t i = 0; i < nn; i++) {
    if (ids[i] < 0)
      continue;
    fprintf(f, lanes++ ? ",%d" : "%d", ids[i]);
  }
  fputs("],\"name\":[", f);
  lanes = 0;
  for (size_t i = 0; i < nn; i++) {
    if (ids[i] < 0)
      continue;
    if (lanes++)
      fputc(',', f);
    char buf[32];
    if (!names[i])
      snprintf(buf, sizeof buf, "node %d", ids[i]);
    json_str(f, names[i] ? names[i] : buf);
  }
  fputs("]},\"msgTypes\":[", f);
  for (int tnum = 0; tnum <= DRPC_MSG_TYPE_MAX; tnum++) {
    if (tnum)
      fputc(',', f);
    const char *tn = tnum ? drpc_msg_type_name(tnum) : NULL;
    json_str(f, tn ? tn : "?");
  }
  fputs("],\"errors\":{", f);
  /* error names for the codes that occur */
  int64_t seen[64];
  int nseen = 0;
  vec *errsrc[] = {&z->rpc[SP_END], &z->reset_err};
  first = true;
  for (int s = 0; s < 2; s++) {
    for (size_t i = 0; i < errsrc[s]->n; i++) {
      int64_t code = errsrc[s]->v[i];
      /* error codes are negative; an open call has none */
      bool dup = code == 0 || (s == 0 && z->rpc[SP_T1].v[i] < 0);
      for (int k = 0; !dup && k < nseen; k++)
        dup = seen[k] == code;
      if (dup || nseen == 64)
        continue;
      seen[nseen++] = code;
      fprintf(f, "%s\"%lld\":", first ? "" : ",", (long long)code);
      json_str(f, drpc_errname((int)code));
      first = false;
    }
  }
  fputs("},\"strings\":[", f);
  for (size_t i = 0; i < z->str.n; i++) {
    if (i)
      fputc(',', f);
    json_str(f, z->str.s[i]);
  }
  fputc(']', f);

  /* messages in send order (the query's time order) */
  size_t ns = z->sends[0].n;
  /* messages in send order; times as deltas and latencies (null: lost) */
  fprintf(f, ",\"msgs\":{");
  json_col(f, "from", z->sends[MS_NODE].v, ns, true);
  json_col_delta(f, "dts", z->sends[MS_T].v, ns);
  json_col_dur(f, "lat", z->sends[MS_T].v, recv_of, ns);
  json_col(f, "to", z->sends[MS_PEER].v, ns, false);
  json_col(f, "type", z->sends[MS_TYPE].v, ns, false);
  json_col(f, "id", z->sends[MS_ID].v, ns, false);
  json_col(f, "size", z->sends[MS_SIZE].v, ns, false);
  fputc('}', f);

  /* spans in start order; starts as deltas, durations (null: open) */
  static const char *const spn[] = {"node", "peer", "xid",
                                    "name", "aux",  "end"};
  static const int spc[] = {SP_NODE, SP_PEER, SP_XID, SP_NAME, SP_AUX, SP_END};
  for (int k = 0; k < 2; k++) {
    vec *sp = k ? z->work : z->rpc;
    fprintf(f, ",\"%s\":{", k ? "work" : "rpcs");
    for (int c = 0; c < 6; c++)
      json_col(f, spn[c], sp[spc[c]].v, sp[0].n, c == 0);
    json_col_delta(f, "dt0", sp[SP_T0].v, sp[0].n);
    json_col_dur(f, "dur", sp[SP_T0].v, sp[SP_T1].v, sp[0].n);
    fputc('}', f);
  }
  static const char *const fn[] = {"t", "node", "name", "a", "b"};
  vec *fc[] = {&z->fault_t, &z->fault_node, &z->fault_name, &z->fault_a,
               &z->fault_b};
  json_vecs(f, "faults", fn, fc, 5);
  static const char *const rn[] = {"t", "node", "conn", "err", "reason"};
  vec *rsc[] = {&z->reset_t, &z->reset_node, &z->reset_conn, &z->reset_err,
                &z->reset_reason};
  json_vecs(f, "resets", rn, rsc, 5);
  static const char *const cn[] = {"node", "t0", "t1"};
  vec *cc[] = {&z->crash_node, &z->crash_t0, &z->crash_t1};
  json_vecs(f, "crashes", cn, cc, 3);
  static const char *const stn[] = {"t", "node"};
  vec *stc[] = {&z->start_t, &z->start_node};
  json_vecs(f, "starts", stn, stc, 2);
  /* RRef keys and fork keys: ((created_on + 1) << 48) | local_id, split
   * so that JavaScript numbers hold them exactly */
  size_t nr = z->rref_t.n;
  fputs(",\"rrefs\":{", f);
  json_col(f, "t", z->rref_t.v, nr, true);
  json_col(f, "node", z->rref_node.v, nr, false);
  json_col(f, "name", z->rref_name.v, nr, false);
  const char *kcol[] = {"kc", "kl", "fc", "fl"};
  for (int c = 0; c < 4; c++) {
    fprintf(f, ",\"%s\":[", kcol[c]);
    for (size_t i = 0; i < nr; i++) {
      uint64_t k = (uint64_t)(c < 2 ? z->rref_key.v[i] : z->rref_fork.v[i]);
      long long v = c % 2 == 0 ? (long long)(k >> 48) - 1
                               : (long long)(k & ((1ull << 48) - 1));
      fprintf(f, i ? ",%lld" : "%lld", v);
    }
    fputc(']', f);
  }
  fputs("}}", f);
  return ferror(f) ? -1 : 0;
}

/* Writes template text up to marker; returns the text after it. */
static const char *emit_until(FILE *f, const char *tpl, const char *end,
                              const char *marker) {
  const char *m = strstr(tpl, marker);
  if (!m || m > end)
    m = end;
  fwrite(tpl, 1, (size_t)(m - tpl), f);
  return m == end ? end : m + strlen(marker);
}

static int write_page(FILE *f, viz *z, const char *path,
                      const drpc_trace_run_info *ri, const int16_t *ids,
                      char **names, size_t nn, const int64_t *recv_of) {
  char *tpl = malloc(drpc_viz_viewer_html_len + 1);
  if (!tpl)
    return -1;
  memcpy(tpl, drpc_viz_viewer_html, drpc_viz_viewer_html_len);
  tpl[drpc_viz_viewer_html_len] = 0;
  const char *end = tpl + drpc_viz_viewer_html_len;
  const char *p = emit_until(f, tpl, end, "/*@CSS@*/");
  fwrite(drpc_viz_viewer_css, 1, drpc_viz_viewer_css_len, f);
  p = emit_until(f, p, end, "/*@DATA@*/");
  int rc = write_data(f, z, path, ri, ids, names, nn, recv_of);
  p = emit_until(f, p, end, "/*@JS@*/");
  fwrite(drpc_viz_viewer_js, 1, drpc_viz_viewer_js_len, f);
  emit_until(f, p, end, "\x01never\x01");
  free(tpl);
  return rc || ferror(f) ? -1 : 0;
}

static void viz_free(viz *z) {
  strtab_free(&z->str);
  for (int i = 0; i < MS_NCOL; i++) {
    vec_free(&z->sends[i]);
    vec_free(&z->recvs[i]);
  }
  for (int i = 0; i < SP_NCOL; i++) {
    vec_free(&z->rpc[i]);
    vec_free(&z->work[i]);
  }
  spanmap_free(&z->rpc_open);
  spanmap_free(&z->work_open);
  vec *all[] = {&z->fault_t,   &z->fault_node,   &z->fault_name, &z->fault_a,
                &z->fault_b,   &z->reset_t,      &z->reset_node, &z->reset_conn,
                &z->reset_err, &z->reset_reason, &z->crash_node, &z->crash_t0,
                &z->crash_t1,  &z->start_t,      &z->start_node, &z->rref_t,
                &z->rref_node, &z->rref_key,     &z->rref_fork,  &z->rref_name,
                z->crash_open};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    vec_free(all[i]);
  free(z->sqlstr_idx);
  free(z->clock_off);
  free(z->clock_ppm);
}

/* ---- the static SVG picture (--svg) ---------------------------------------
 */

/* The viewer's palette (viz/viewer.js PAL): message types and span names
 * get the same colours in the page and the picture. */
static const char *const viz_pal[] = {
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b",
    "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#3949ab",
    "#00897b", "#6d4c41", "#c0ca33", "#5e35b1", "#f4511e"};
#define VIZ_NPAL ((int64_t)(sizeof viz_pal / sizeof viz_pal[0]))

static const char *pal(int64_t i) {
  return viz_pal[((i % VIZ_NPAL) + VIZ_NPAL) % VIZ_NPAL];
}

/* Parses a --from/--to time: a non-negative decimal number with an
 * optional unit ns, us, ms or s (no unit: ms), counted from the run's
 * first event. Returns 0, or -1 with a message. */
static int parse_window_time(const char *opt, const char *s, int64_t *ns) {
  const char *p = s;
  while (*p >= '0' && *p <= '9')
    p++;
  if (*p == '.')
    for (p++; *p >= '0' && *p <= '9'; p++)
      ;
  /* only digits and one point: strtod then sees no sign, hex or inf */
  if (p == s || (p == s + 1 && *s == '.')) {
    fprintf(stderr,
            "drpc viz: %s '%s': expected a time such as 250, 1.5ms, 800us, "
            "2s (no unit: ms)\n",
            opt, s);
    return -1;
  }
  double v = strtod(s, NULL);
  double scale;
  if (!*p || !strcmp(p, "ms"))
    scale = 1e6;
  else if (!strcmp(p, "ns"))
    scale = 1;
  else if (!strcmp(p, "us"))
    scale = 1e3;
  else if (!strcmp(p, "s"))
    scale = 1e9;
  else {
    fprintf(stderr, "drpc viz: %s '%s': unknown unit '%s' (ns, us, ms, s)\n",
            opt, s, p);
    return -1;
  }
  v *= scale;
  if (!(v < 9e18)) {
    fprintf(stderr, "drpc viz: %s '%s': too large\n", opt, s);
    return -1;
  }
  *ns = (int64_t)(v + 0.5);
  return 0;
}

/* A time for people: 1.25 ms, 3.000 s. */
static void fmt_time(char *buf, size_t n, double ns) {
  double a = ns < 0 ? -ns : ns;
  if (a >= 1e9)
    snprintf(buf, n, "%.*f s", a >= 1e10 ? 2 : 3, ns / 1e9);
  else if (a >= 1e6)
    snprintf(buf, n, "%.*f ms", a >= 1e7 ? 2 : 3, ns / 1e6);
  else if (a >= 1e3)
    snprintf(buf, n, "%.*f us", a >= 1e4 ? 1 : 2, ns / 1e3);
  else
    snprintf(buf, n, "%.0f ns", ns);
}

/* XML text or attribute value. */
static void xml_str(FILE *f, const char *s) {
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    switch (*p) {
    case '&':
      fputs("&amp;", f);
      break;
    case '<':
      fputs("&lt;", f);
      break;
    case '>':
      fputs("&gt;", f);
      break;
    case '"':
      fputs("&quot;", f);
      break;
    default:
      /* control characters are not allowed in XML 1.0 */
      fputc(*p < 0x20 && *p != '\t' && *p != '\n' ? '?' : *p, f);
    }
  }
}

enum { SVG_W = 1200, SVG_GUT = 110, SVG_RIGHT = 12, SVG_K = 4 };
/* Above this many messages in the window, a message drawn on the same
 * pixels as the previous one between the same two lanes is left out. */
#define SVG_DEDUP_ABOVE 5000

typedef struct svgctx {
  FILE *f;
  const viz *z;
  int64_t from, to; /* window, ns from the first event */
  double pw;        /* plot width, px */
  double lane_top, lane_h, row_h;
  int nlanes;
  int32_t *lane_of; /* node id + 1 -> lane, -1 */
} svgctx;

static double sx(const svgctx *c, double t) {
  return SVG_GUT + (t - (double)c->from) / (double)(c->to - c->from) * c->pw;
}

static int lane_of(const svgctx *c, int64_t node) {
  return node >= 0 && node <= 32767 ? c->lane_of[node + 1] : -1;
}

static double lane_y(const svgctx *c, int lane) {
  return c->lane_top + (lane + 0.5) * c->lane_h;
}

/* Clips the segment (x0,y0)-(x1,y1) to SVG_GUT <= x <= SVG_GUT + pw;
 * returns false when nothing is left; *cut1 says the end was cut. */
static bool clip_seg(const svgctx *c, double *x0, double *y0, double *x1,
                     double *y1, bool *cut1) {
  double lo = SVG_GUT, hi = SVG_GUT + c->pw;
  double dx = *x1 - *x0, dy = *y1 - *y0, u0 = 0, u1 = 1;
  *cut1 = false;
  if (dx == 0) {
    if (*x0 < lo || *x0 > hi)
      return false;
  } else {
    double ua = (lo - *x0) / dx, ub = (hi - *x0) / dx;
    if (ua > ub) {
      double t = ua;
      ua = ub;
      ub = t;
    }
    u0 = ua > 0 ? ua : 0;
    u1 = ub < 1 ? ub : 1;
    if (u0 > u1)
      return false;
  }
  double ax = *x0, ay = *y0;
  *x0 = ax + u0 * dx;
  *y0 = ay + u0 * dy;
  *x1 = ax + u1 * dx;
  *y1 = ay + u1 * dy;
  *cut1 = u1 < 1;
  return true;
}

/* Greedy packing of spans into at most SVG_K rows per lane, as the viewer
 * does; rows[lane] = rows used. */
static int pack_spans(const svgctx *c, const vec *sp, int8_t **row_out,
                      int *rows) {
  size_t n = sp[SP_NODE].n;
  int8_t *row = calloc(n + 1, 1);
  int64_t *ends = malloc(((size_t)c->nlanes * SVG_K + 1) * sizeof *ends);
  if (!row || !ends) {
    free(row);
    free(ends);
    return -1;
  }
  for (int l = 0; l < c->nlanes; l++)
    rows[l] = 0;
  for (size_t i = 0; i < n; i++) {
    int l = lane_of(c, sp[SP_NODE].v[i]);
    if (l < 0)
      continue;
    int64_t t0 = sp[SP_T0].v[i];
    int64_t e = sp[SP_T1].v[i] >= 0 ? sp[SP_T1].v[i] : c->z->tmax;
    int64_t *r = ends + (size_t)l * SVG_K;
    int k = -1;
    for (int j = 0; j < rows[l] && k < 0; j++)
      if (r[j] <= t0)
        k = j;
    if (k < 0 && rows[l] < SVG_K) {
      k = rows[l]++;
      r[k] = 0;
    }
    if (k < 0) {
      k = 0;
      for (int j = 1; j < SVG_K; j++)
        if (r[j] < r[k])
          k = j;
    }
    if (e > r[k])
      r[k] = e;
    row[i] = (int8_t)k;
  }
  free(ends);
  *row_out = row;
  return 0;
}

static void svg_axis(const svgctx *c, double y) {
  FILE *f = c->f;
  double span = (double)(c->to - c->from);
  double raw = span / (c->pw / 110.0);
  double p = 1;
  while (p * 10 <= raw)
    p *= 10;
  while (p > raw && p > 1)
    p /= 10;
  double step = p;
  static const double mult[] = {1, 2, 5, 10};
  for (int i = 0; i < 4; i++)
    if (mult[i] * p >= raw) {
      step = mult[i] * p;
      break;
    }
  fprintf(f, "<g class=\"axis\" font-size=\"10\" fill=\"#37474f\">\n");
  fprintf(f,
          "<line x1=\"%d\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
          "stroke=\"#90a4ae\"/>\n",
          SVG_GUT, y, SVG_GUT + c->pw, y);
  double t = (double)(int64_t)((double)c->from / step) * step;
  if (t < (double)c->from)
    t += step;
  for (int guard = 0; t <= (double)c->to && guard < 100; t += step, guard++) {
    char buf[32];
    fmt_time(buf, sizeof buf, t);
    double x = sx(c, t);
    fprintf(f,
            "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
            "stroke=\"#90a4ae\"/><text x=\"%.1f\" y=\"%.1f\">%s</text>\n",
            x, y - 6, x, y, x + 2, y - 8, buf);
  }
  fputs("</g>\n", f);
}

/* Messages: an arrow per received send (from the send on the sender's
 * lane to the receive on the receiver's), coloured by type; a lost send
 * is a grey stub ending in a red x. Returns the numbers drawn. */
static int svg_messages(const svgctx *c, const int64_t *recv_of,
                        size_t *n_arrows, size_t *n_lost, size_t *n_skipped) {
  FILE *f = c->f;
  const viz *z = c->z;
  size_t ns = z->sends[0].n, inwin = 0;
  const int64_t *ts = z->sends[MS_T].v;
  for (size_t i = 0; i < ns && ts[i] <= c->to; i++) {
    int64_t end = recv_of[i] >= 0 && recv_of[i] > ts[i] ? recv_of[i] : ts[i];
    if (end >= c->from && lane_of(c, z->sends[MS_NODE].v[i]) >= 0 &&
        lane_of(c, z->sends[MS_PEER].v[i]) >= 0)
      inwin++;
  }
  bool dedup = inwin > SVG_DEDUP_ABOVE;
  size_t npair = (size_t)c->nlanes * (size_t)c->nlanes;
  int32_t *last = dedup ? malloc((npair * 2 + 1) * sizeof *last) : NULL;
  if (dedup && !last)
    return -1;
  for (size_t k = 0; dedup && k < npair * 2; k++)
    last[k] = INT32_MIN;
  *n_arrows = *n_lost = *n_skipped = 0;
  fputs("<g class=\"msgs\" stroke-width=\"1.2\" fill=\"none\">\n", f);
  for (size_t i = 0; i < ns && ts[i] <= c->to; i++) {
    int64_t tr = recv_of[i];
    int64_t end = tr >= 0 && tr > ts[i] ? tr : ts[i];
    int lf = lane_of(c, z->sends[MS_NODE].v[i]);
    int lt = lane_of(c, z->sends[MS_PEER].v[i]);
    if (end < c->from || lf < 0 || lt < 0)
      continue;
    int64_t type = z->sends[MS_TYPE].v[i];
    const char *tn = type > 0 && type <= DRPC_MSG_TYPE_MAX
                         ? drpc_msg_type_name((int)type)
                         : NULL;
    double x0 = sx(c, (double)ts[i]), y0 = lane_y(c, lf);
    if (dedup) {
      size_t pair = ((size_t)lf * (size_t)c->nlanes + (size_t)lt) * 2;
      int32_t xa = (int32_t)x0;
      int32_t xb = tr >= 0 ? (int32_t)sx(c, (double)tr) : INT32_MIN + 1;
      if (last[pair] == xa && last[pair + 1] == xb) {
        (*n_skipped)++;
        continue;
      }
      last[pair] = xa;
      last[pair + 1] = xb;
    }
    char attrs[256];
    snprintf(attrs, sizeof attrs,
             "data-type=\"%s\" data-from=\"%lld\" data-to=\"%lld\" "
             "data-id=\"%llu\" data-t0=\"%lld\"",
             tn ? tn : "?", (long long)z->sends[MS_NODE].v[i],
             (long long)z->sends[MS_PEER].v[i],
             (unsigned long long)z->sends[MS_ID].v[i], (long long)ts[i]);
    if (tr < 0) {
      /* lost: a short stub towards the receiver, then a red x */
      double dir = lt > lf ? 1 : lt < lf ? -1 : 0;
      double stub = c->lane_h * 0.4 < 14 ? c->lane_h * 0.4 : 14;
      double x1 = x0 + 12, y1 = y0 + dir * stub;
      fprintf(f,
              "<path class=\"msg lost\" %s d=\"M%.1f %.1fL%.1f %.1f"
              "M%.1f %.1fL%.1f %.1fM%.1f %.1fL%.1f %.1f\" "
              "stroke=\"#9e9e9e\"/>\n",
              attrs, x0, y0, x1, y1, x1 - 3, y1 - 3, x1 + 3, y1 + 3, x1 - 3,
              y1 + 3, x1 + 3, y1 - 3);
      /* the x in red over the grey stub */
      fprintf(f,
              "<path d=\"M%.1f %.1fL%.1f %.1fM%.1f %.1fL%.1f %.1f\" "
              "stroke=\"#e53935\" stroke-width=\"1.6\"/>\n",
              x1 - 3, y1 - 3, x1 + 3, y1 + 3, x1 - 3, y1 + 3, x1 + 3, y1 - 3);
      (*n_lost)++;
      continue;
    }
    double x1 = sx(c, (double)tr), y1 = lane_y(c, lt);
    bool cut;
    if (!clip_seg(c, &x0, &y0, &x1, &y1, &cut))
      continue;
    char marker[48] = "";
    if (!cut && type >= 0 && type <= DRPC_MSG_TYPE_MAX)
      snprintf(marker, sizeof marker, " marker-end=\"url(#a%lld)\"",
               (long long)type);
    fprintf(f,
            "<line class=\"msg\" %s data-t1=\"%lld\" x1=\"%.1f\" y1=\"%.1f\" "
            "x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"%s/>\n",
            attrs, (long long)tr, x0, y0, x1, y1, pal(type), marker);
    (*n_arrows)++;
  }
  fputs("</g>\n", f);
  free(last);
  return 0;
}

/* RPC and server-work spans under the lanes; returns the number drawn. */
static size_t svg_spans(const svgctx *c, const vec *sp, const int8_t *row,
                        const double *group_y, bool rpc, size_t *skipped) {
  FILE *f = c->f;
  const viz *z = c->z;
  size_t n = sp[SP_NODE].n, drawn = 0, inwin = 0;
  for (size_t i = 0; i < n && sp[SP_T0].v[i] <= c->to; i++) {
    int64_t t1 = sp[SP_T1].v[i];
    inwin += (t1 >= 0 ? t1 : z->tmax) >= c->from;
  }
  /* Above SVG_DEDUP_ABOVE spans, one that ends within the pixel where the
   * last one drawn in its row ended is left out (never a failed call). */
  size_t nslot = (size_t)c->nlanes * SVG_K;
  double *last_x =
      inwin > SVG_DEDUP_ABOVE ? malloc((nslot + 1) * sizeof *last_x) : NULL;
  for (size_t k = 0; last_x && k < nslot; k++)
    last_x[k] = -1e9;
  for (size_t i = 0; i < n && sp[SP_T0].v[i] <= c->to; i++) {
    int l = lane_of(c, sp[SP_NODE].v[i]);
    int64_t t0 = sp[SP_T0].v[i], t1 = sp[SP_T1].v[i];
    int64_t e = t1 >= 0 ? t1 : z->tmax;
    if (l < 0 || e < c->from)
      continue;
    double xa = sx(c, (double)t0), xb = sx(c, (double)e);
    if (xa < SVG_GUT)
      xa = SVG_GUT;
    if (xb > SVG_GUT + c->pw)
      xb = SVG_GUT + c->pw;
    double w = xb - xa < 1 ? 1 : xb - xa;
    int64_t name = sp[SP_NAME].v[i], end = sp[SP_END].v[i];
    if (last_x && !(rpc && t1 >= 0 && end != 0)) {
      double *lx = &last_x[(size_t)l * SVG_K + (size_t)row[i]];
      if (xb < *lx + 1) {
        (*skipped)++;
        continue;
      }
      *lx = xb > xa + 1 ? xb : xa + 1;
    }
    const char *col = rpc && t1 >= 0 && end != 0 ? "#e53935"
                      : t1 < 0                   ? "#bdbdbd"
                                                 : pal(name * 7 + 3);
    double y = group_y[l] + row[i] * c->row_h;
    fprintf(f,
            "<rect class=\"%s\" data-node=\"%lld\" data-xid=\"%llu\" "
            "x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" "
            "fill=\"%s\"><title>",
            rpc ? "rpc" : "work", (long long)sp[SP_NODE].v[i],
            (unsigned long long)sp[SP_XID].v[i], xa, y + 0.5, w, c->row_h - 1,
            col);
    xml_str(f, name >= 0 && (size_t)name < z->str.n ? z->str.s[name] : "?");
    char d[32];
    if (t1 >= 0) {
      fmt_time(d, sizeof d, (double)(t1 - t0));
      fprintf(f, " %s", d);
      if (rpc && end)
        fprintf(f, " %s", drpc_errname((int)end));
    } else {
      fputs(" (never ended)", f);
    }
    fputs("</title></rect>\n", f);
    drawn++;
  }
  free(last_x);
  return drawn;
}

static int write_svg(FILE *f, viz *z, const char *path,
                     const drpc_trace_run_info *ri, const int16_t *ids,
                     char **names, size_t nn, const int64_t *recv_of,
                     int64_t from, int64_t to, char *summary, size_t sumlen) {
  svgctx c = {.f = f, .z = z, .from = from, .to = to};
  c.lane_of = malloc(32769 * sizeof *c.lane_of);
  int16_t *lane_ids = malloc((nn + 1) * sizeof *lane_ids);
  const char **lane_names = malloc((nn + 1) * sizeof *lane_names);
  int *rrows = malloc((nn + 1) * sizeof *rrows);
  int *wrows = malloc((nn + 1) * sizeof *wrows);
  double *ry = malloc((nn + 1) * sizeof *ry);
  double *wy = malloc((nn + 1) * sizeof *wy);
  int8_t *rrow = NULL, *wrow = NULL;
  int rc = -1;
  if (!c.lane_of || !lane_ids || !lane_names || !rrows || !wrows || !ry || !wy)
    goto out;
  for (int i = 0; i < 32769; i++)
    c.lane_of[i] = -1;
  for (size_t i = 0; i < nn; i++) {
    if (ids[i] < 0)
      continue;
    c.lane_of[ids[i] + 1] = c.nlanes;
    lane_ids[c.nlanes] = ids[i];
    lane_names[c.nlanes] = names[i];
    c.nlanes++;
  }
  c.pw = SVG_W - SVG_GUT - SVG_RIGHT;
  c.lane_h = c.nlanes > 16 ? 20 : 36;
  c.row_h = c.nlanes > 16 ? 4 : 9;
  c.lane_top = 52;
  if (pack_spans(&c, z->rpc, &rrow, rrows) ||
      pack_spans(&c, z->work, &wrow, wrows))
    goto out;
  double y = c.lane_top + c.nlanes * c.lane_h + 22;
  double spans_top = y;
  for (int l = 0; l < c.nlanes; l++) {
    ry[l] = y;
    y += (rrows[l] ? rrows[l] : 1) * c.row_h;
    wy[l] = y;
    y += (wrows[l] ? wrows[l] : 1) * c.row_h + 3;
  }
  double legend_y = y + 14;
  double height = legend_y + 30;
  char a[32], b[32];
  fmt_time(a, sizeof a, (double)from);
  fmt_time(b, sizeof b, (double)to);

  fprintf(f,
          "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
          "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" "
          "height=\"%.0f\" viewBox=\"0 0 %d %.0f\" "
          "font-family=\"sans-serif\" font-size=\"12\" "
          "data-from=\"%lld\" data-to=\"%lld\" data-lanes=\"%d\">\n",
          SVG_W, height, SVG_W, height, (long long)from, (long long)to,
          c.nlanes);
  fputs("<title>drpc viz: ", f);
  xml_str(f, ri->scenario ? ri->scenario : path);
  if (ri->has_seed)
    fprintf(f, " seed %llu", (unsigned long long)ri->seed);
  fprintf(f, ", %s .. %s</title>\n<desc>", a, b);
  xml_str(f, path);
  fprintf(f,
          ": backend %s, times from the run's first event; messages from "
          "the sender's out_send to the receiver's in_frame</desc>\n",
          ri->backend ? ri->backend : "?");
  fputs("<defs>\n", f);
  for (int t = 0; t <= DRPC_MSG_TYPE_MAX; t++)
    fprintf(f,
            "<marker id=\"a%d\" viewBox=\"0 0 8 8\" refX=\"8\" refY=\"4\" "
            "markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\" "
            "markerUnits=\"userSpaceOnUse\"><path d=\"M0 0L8 4L0 8z\" "
            "fill=\"%s\"/></marker>\n",
            t, pal(t));
  fprintf(f,
          "<clipPath id=\"plot\"><rect x=\"%d\" y=\"0\" width=\"%.1f\" "
          "height=\"%.0f\"/></clipPath>\n</defs>\n",
          SVG_GUT, c.pw + 1, height);
  fprintf(f, "<rect width=\"%d\" height=\"%.0f\" fill=\"#ffffff\"/>\n", SVG_W,
          height);
  fputs("<text x=\"8\" y=\"16\" font-weight=\"bold\">drpc viz: ", f);
  xml_str(f, ri->scenario && *ri->scenario ? ri->scenario : path);
  if (ri->has_seed)
    fprintf(f, " seed %llu", (unsigned long long)ri->seed);
  fprintf(f,
          "</text><text x=\"%d\" y=\"16\" text-anchor=\"end\" "
          "fill=\"#555\">",
          SVG_W - SVG_RIGHT);
  char whole[32];
  fmt_time(whole, sizeof whole, (double)z->tmax);
  fprintf(f, "%s .. %s of %s</text>\n", a, b, whole);
  svg_axis(&c, c.lane_top - 6);

  /* lanes */
  fputs("<g class=\"lanes\">\n", f);
  for (int l = 0; l < c.nlanes; l++) {
    double top = c.lane_top + l * c.lane_h;
    fprintf(f,
            "<g class=\"lane\" data-node=\"%d\"><rect x=\"%d\" y=\"%.1f\" "
            "width=\"%.1f\" height=\"%.1f\" fill=\"%s\"/><line x1=\"%d\" "
            "y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#b0bec5\"/>"
            "<text x=\"8\" y=\"%.1f\" dominant-baseline=\"middle\">",
            lane_ids[l], SVG_GUT, top, c.pw, c.lane_h,
            l % 2 ? "#f4f6f8" : "#fbfcfd", SVG_GUT, top + c.lane_h / 2,
            SVG_GUT + c.pw, top + c.lane_h / 2, top + c.lane_h / 2);
    if (lane_names[l])
      xml_str(f, lane_names[l]);
    else
      fprintf(f, "node %d", lane_ids[l]);
    fputs("</text></g>\n", f);
  }
  fputs("</g>\n<g clip-path=\"url(#plot)\">\n", f);

  /* crashed intervals */
  size_t n_crash = 0;
  for (size_t i = 0; i < z->crash_node.n; i++) {
    int l = lane_of(&c, z->crash_node.v[i]);
    int64_t t0 = z->crash_t0.v[i];
    int64_t t1 = z->crash_t1.v[i] >= 0 ? z->crash_t1.v[i] : z->tmax;
    if (l < 0 || t1 < from || t0 > to)
      continue;
    double xa = sx(&c, (double)(t0 > from ? t0 : from));
    double xb = sx(&c, (double)(t1 < to ? t1 : to));
    fprintf(f,
            "<rect class=\"crash\" data-node=\"%lld\" x=\"%.1f\" y=\"%.1f\" "
            "width=\"%.1f\" height=\"%.1f\" fill=\"#e53935\" "
            "fill-opacity=\"0.15\"><title>crashed</title></rect>\n",
            (long long)z->crash_node.v[i], xa, c.lane_top + l * c.lane_h + 1,
            xb - xa < 1 ? 1 : xb - xa, c.lane_h - 2);
    n_crash++;
  }
  /* starts */
  for (size_t i = 0; i < z->start_t.n; i++) {
    int l = lane_of(&c, z->start_node.v[i]);
    int64_t t = z->start_t.v[i];
    if (l < 0 || t < from || t > to)
      continue;
    double x = sx(&c, (double)t), yl = lane_y(&c, l);
    fprintf(f,
            "<line class=\"start\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" "
            "y2=\"%.1f\" stroke=\"#263238\" stroke-width=\"2\"/>\n",
            x, yl - c.lane_h * 0.35, x, yl + c.lane_h * 0.35);
  }
  /* faults: a triangle at the top; a link fault (node -1) as a dashed
   * line across all lanes, "... end" paler */
  size_t n_fault = 0;
  for (size_t i = 0; i < z->fault_t.n; i++) {
    int64_t t = z->fault_t.v[i], nm = z->fault_name.v[i];
    if (t < from || t > to)
      continue;
    const char *name = nm >= 0 && (size_t)nm < z->str.n ? z->str.s[nm] : "?";
    size_t len = strlen(name);
    bool is_end = len >= 4 && !strcmp(name + len - 4, " end");
    int l = lane_of(&c, z->fault_node.v[i]);
    double x = sx(&c, (double)t);
    double ya = l < 0 ? c.lane_top : c.lane_top + l * c.lane_h + 1;
    double yb = l < 0 ? c.lane_top + c.nlanes * c.lane_h
                      : c.lane_top + (l + 1) * c.lane_h - 1;
    fprintf(f,
            "<g class=\"fault\" data-node=\"%lld\" data-t=\"%lld\"><title>"
            "fault: ",
            (long long)z->fault_node.v[i], (long long)t);
    xml_str(f, name);
    fprintf(f,
            "</title><line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
            "stroke=\"#fb8c00\" stroke-opacity=\"%s\"%s/><path "
            "d=\"M%.1f %.1fL%.1f %.1fL%.1f %.1fz\" fill=\"#e65100\"/></g>\n",
            x, ya, x, yb, is_end ? "0.45" : "0.95",
            l < 0 ? " stroke-dasharray=\"4 3\"" : "", x - 4, c.lane_top, x + 4,
            c.lane_top, x, c.lane_top + 6);
    n_fault++;
  }
  /* resets */
  size_t n_reset = 0;
  for (size_t i = 0; i < z->reset_t.n; i++) {
    int l = lane_of(&c, z->reset_node.v[i]);
    int64_t t = z->reset_t.v[i];
    if (l < 0 || t < from || t > to)
      continue;
    double x = sx(&c, (double)t), yl = lane_y(&c, l);
    fprintf(f,
            "<rect class=\"reset\" data-node=\"%lld\" data-t=\"%lld\" "
            "x=\"%.1f\" y=\"%.1f\" width=\"2.5\" height=\"%.1f\" "
            "fill=\"#8e24aa\"><title>reset: %s</title></rect>\n",
            (long long)z->reset_node.v[i], (long long)t, x - 1.2,
            yl - c.lane_h * 0.3, c.lane_h * 0.6,
            drpc_errname((int)z->reset_err.v[i]));
    n_reset++;
  }
  /* RRef events */
  for (size_t i = 0; i < z->rref_t.n; i++) {
    int l = lane_of(&c, z->rref_node.v[i]);
    int64_t t = z->rref_t.v[i], nm = z->rref_name.v[i];
    if (l < 0 || t < from || t > to)
      continue;
    fprintf(f,
            "<circle class=\"rref\" cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\" "
            "fill=\"#43a047\"><title>rref ",
            sx(&c, (double)t), lane_y(&c, l) - c.lane_h * 0.25);
    xml_str(f, nm >= 0 && (size_t)nm < z->str.n ? z->str.s[nm] : "?");
    fputs("</title></circle>\n", f);
  }
  size_t n_arrows, n_lost, n_skipped;
  if (svg_messages(&c, recv_of, &n_arrows, &n_lost, &n_skipped))
    goto out;

  /* spans */
  fprintf(f, "</g>\n<g class=\"spanlabels\" font-size=\"10\" fill=\"#555\">\n");
  for (int l = 0; l < c.nlanes; l++) {
    const char *nm = lane_names[l] ? lane_names[l] : "node";
    if (c.row_h < 6)
      break;
    fprintf(f, "<text x=\"8\" y=\"%.1f\" dominant-baseline=\"middle\">",
            ry[l] + (rrows[l] ? rrows[l] : 1) * c.row_h / 2);
    xml_str(f, nm);
    fprintf(f,
            " calls</text><text x=\"8\" y=\"%.1f\" "
            "dominant-baseline=\"middle\">",
            wy[l] + (wrows[l] ? wrows[l] : 1) * c.row_h / 2);
    xml_str(f, nm);
    fputs(" serves</text>\n", f);
  }
  fprintf(f,
          "</g>\n<text x=\"8\" y=\"%.1f\" font-size=\"10\" fill=\"#555\">"
          "RPC spans</text>\n<g class=\"spans\" clip-path=\"url(#plot)\">\n",
          spans_top - 6);
  size_t n_span_skipped = 0;
  size_t n_rpc = svg_spans(&c, z->rpc, rrow, ry, true, &n_span_skipped);
  size_t n_work = svg_spans(&c, z->work, wrow, wy, false, &n_span_skipped);
  fputs("</g>\n", f);

  /* legend: the message types present in the whole run */
  bool seen[DRPC_MSG_TYPE_MAX + 1] = {0};
  for (size_t i = 0; i < z->sends[0].n; i++)
    if (z->sends[MS_TYPE].v[i] >= 0 &&
        z->sends[MS_TYPE].v[i] <= DRPC_MSG_TYPE_MAX)
      seen[z->sends[MS_TYPE].v[i]] = true;
  fprintf(f, "<g class=\"legend\" font-size=\"11\">\n");
  double lx = 8;
  for (int t = 1; t <= DRPC_MSG_TYPE_MAX; t++) {
    const char *tn = drpc_msg_type_name(t);
    if (!seen[t] || !tn)
      continue;
    fprintf(f,
            "<rect x=\"%.0f\" y=\"%.1f\" width=\"10\" height=\"10\" "
            "fill=\"%s\"/><text x=\"%.0f\" y=\"%.1f\">%s</text>\n",
            lx, legend_y - 9, pal(t), lx + 13, legend_y, tn);
    lx += 22 + 7.5 * (double)strlen(tn);
  }
  static const char *const marks[][2] = {{"#e53935", "lost (x) / failed RPC"},
                                         {"#8e24aa", "reset"},
                                         {"#fb8c00", "fault"},
                                         {"#f9c9c8", "crashed"},
                                         {"#43a047", "RRef event"},
                                         {"#bdbdbd", "never ended"}};
  for (size_t k = 0; k < sizeof marks / sizeof marks[0]; k++) {
    if (lx > SVG_W - 150) {
      lx = 8;
      legend_y += 16;
    }
    fprintf(f,
            "<rect x=\"%.0f\" y=\"%.1f\" width=\"10\" height=\"10\" "
            "fill=\"%s\"/><text x=\"%.0f\" y=\"%.1f\">%s</text>\n",
            lx, legend_y - 9, marks[k][0], lx + 13, legend_y, marks[k][1]);
    lx += 22 + 6.2 * (double)strlen(marks[k][1]);
  }
  fputs("</g>\n", f);
  if (n_skipped || n_span_skipped)
    fprintf(f,
            "<!-- left out, drawn on the pixels of the previous one: %zu "
            "messages (same two lanes), %zu spans (same row) -->\n",
            n_skipped, n_span_skipped);
  fputs("</svg>\n", f);
  snprintf(summary, sumlen,
           "%d lanes, %zu arrows, %zu lost, %zu rpcs, %zu server spans, %zu "
           "faults, %zu resets, %zu crashed intervals%s",
           c.nlanes, n_arrows, n_lost, n_rpc, n_work, n_fault, n_reset, n_crash,
           n_skipped || n_span_skipped ? " (items on the same pixels merged)"
                                       : "");
  rc = ferror(f) ? -1 : 0;
out:
  free(c.lane_of);
  free(lane_ids);
  free(lane_names);
  free(rrows);
  free(wrows);
  free(ry);
  free(wy);
  free(rrow);
  free(wrow);
  return rc;
}

/* Writes what to out with write; reports and removes it on failure. */
static int write_file(const char *out, viz *z, const char *path,
                      const drpc_trace_run_info *ri, const int16_t *ids,
                      char **names, size_t nn, const int64_t *recv_of,
                      const int64_t *window, char *summary, size_t sumlen) {
  FILE *f = fopen(out, "w");
  if (!f) {
    perror(out);
    fprintf(stderr, "drpc viz: cannot write %s\n", out);
    return 2;
  }
  int wrc = window ? write_svg(f, z, path, ri, ids, names, nn, recv_of,
                               window[0], window[1], summary, sumlen)
                   : write_page(f, z, path, ri, ids, names, nn, recv_of);
  if (fclose(f) || wrc) {
    fprintf(stderr, "drpc viz: error writing %s\n", out);
    remove(out);
    return 2;
  }
  return 0;
}

static long file_size(const char *path) {
  FILE *f = fopen(path, "r");
  long bytes = -1;
  if (f && !fseek(f, 0, SEEK_END))
    bytes = ftell(f);
  if (f)
    fclose(f);
  return bytes;
}

int drpc_cmd_viz(int argc, char **argv) {
  enum { OPT_SVG = 256, OPT_FROM, OPT_TO, OPT_QUIET };
  static const struct option opts[] = {{"output", required_argument, 0, 'o'},
                                       {"svg", required_argument, 0, OPT_SVG},
                                       {"from", required_argument, 0, OPT_FROM},
                                       {"to", required_argument, 0, OPT_TO},
                                       {"quiet", no_argument, 0, OPT_QUIET},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *out = NULL, *svg = NULL;
  int64_t from = 0, to = -1;
  bool have_from = false, quiet = false;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
    switch (c) {
    case 'o':
      out = optarg;
      break;
    case OPT_SVG:
      svg = optarg;
      break;
    case OPT_FROM:
      if (parse_window_time("--from", optarg, &from))
        return 2;
      have_from = true;
      break;
    case OPT_TO:
      if (parse_window_time("--to", optarg, &to))
        return 2;
      break;
    case OPT_QUIET:
      quiet = true;
      break;
    case 'h':
      usage_viz(stdout);
      return 0;
    default:
      usage_viz(stderr);
      return 2;
    }
  }
  if (optind != argc - 1 || (!out && !svg)) {
    usage_viz(stderr);
    return 2;
  }
  if (!svg && (have_from || to >= 0)) {
    fprintf(stderr, "drpc viz: --from and --to choose the window of --svg\n");
    return 2;
  }
  if (to >= 0 && to <= from) {
    fprintf(stderr, "drpc viz: --to must be later than --from\n");
    return 2;
  }
  const char *path = argv[optind];
  if ((out && !strcmp(path, out)) || (svg && !strcmp(path, svg))) {
    fprintf(stderr, "drpc viz: the output would overwrite the recording %s\n",
            path);
    return 2;
  }
  if (out && svg && !strcmp(out, svg)) {
    fprintf(stderr, "drpc viz: -o and --svg name the same file %s\n", out);
    return 2;
  }
  struct timespec w0, w1;
  clock_gettime(CLOCK_MONOTONIC, &w0);
  drpc_error err = DRPC_ERROR_INIT;
  drpc_trace *t = NULL;
  if (drpc_trace_open(&t, path, &err)) {
    fprintf(stderr, "drpc viz: %s: %s\n", path, drpc_error_message(&err));
    drpc_error_clear(&err);
    return 2;
  }
  drpc_trace_run_info ri;
  int16_t *ids = NULL;
  char **names = NULL;
  size_t nn = 0;
  if (drpc_trace_run(t, &ri, &err)) {
    fprintf(stderr, "drpc viz: %s: %s\n", path, drpc_error_message(&err));
    drpc_error_clear(&err);
    drpc_trace_close(t);
    return 2;
  }
  if (drpc_trace_nodes(t, &ids, &names, &nn, &err)) {
    fprintf(stderr, "drpc viz: %s: %s\n", path, drpc_error_message(&err));
    drpc_error_clear(&err);
    drpc_trace_run_info_free(&ri);
    drpc_trace_close(t);
    return 2;
  }
  viz z;
  memset(&z, 0, sizeof z);
  vec crash_open = {0};
  z.crash_open = &crash_open;
  sqlite3 *db = drpc_trace_db(t);
  int64_t *recv_of = NULL;
  int status = 0;
  load_clocks(&z, &ri);
  if (load_strings(&z, db) || first_time(&z, db, drpc_trace_run_id(t)) ||
      read_events(&z, db, drpc_trace_run_id(t))) {
    fprintf(stderr, "drpc viz: %s: cannot read the events: %s\n", path,
            sqlite3_errmsg(db));
    status = 2;
  } else if (match_messages(&z, &recv_of) || sort_all(&z, recv_of)) {
    fprintf(stderr, "drpc viz: out of memory\n");
    status = 2;
  }
  int64_t window[2] = {from, to >= 0 ? to : (z.tmax > from ? z.tmax : -1)};
  if (!status && svg && from > z.tmax) {
    char buf[32];
    fmt_time(buf, sizeof buf, (double)z.tmax);
    fprintf(stderr,
            "drpc viz: --from is after the end of the run (its last event is "
            "at %s)\n",
            buf);
    status = 2;
  }
  if (!status && svg && window[1] <= from)
    window[1] = from + 1; /* a run of one instant */
  if (!status && out)
    status =
        write_file(out, &z, path, &ri, ids, names, nn, recv_of, NULL, NULL, 0);
  if (!status && out && !quiet) {
    size_t lost = 0;
    for (size_t i = 0; i < z.sends[0].n; i++)
      lost += recv_of[i] < 0;
    clock_gettime(CLOCK_MONOTONIC, &w1);
    printf("wrote %s: %lld events, %zu messages (%zu lost), %zu rpcs, %zu "
           "server spans, %zu faults, %zu resets; %ld bytes in %.3f s\n",
           out, (long long)z.nevents, z.sends[0].n, lost, z.rpc[0].n,
           z.work[0].n, z.fault_t.n, z.reset_t.n, file_size(out),
           (double)(w1.tv_sec - w0.tv_sec) +
               (double)(w1.tv_nsec - w0.tv_nsec) / 1e9);
  }
  if (!status && svg) {
    char summary[256] = "";
    status = write_file(svg, &z, path, &ri, ids, names, nn, recv_of, window,
                        summary, sizeof summary);
    if (!status && !quiet) {
      char a[32], b[32];
      fmt_time(a, sizeof a, (double)window[0]);
      fmt_time(b, sizeof b, (double)window[1]);
      printf("wrote %s: %s .. %s, %s; %ld bytes\n", svg, a, b, summary,
             file_size(svg));
    }
  }
  free(recv_of);
  viz_free(&z);
  drpc_trace_nodes_free(ids, names, nn);
  drpc_trace_run_info_free(&ri);
  drpc_trace_close(t);
  return status;
}
