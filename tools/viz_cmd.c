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
  fprintf(f, "usage: drpc viz FILE.db -o VIEW.html\n"
             "\n"
             "Writes one self-contained HTML page (no network access needed)\n"
             "showing the recording: a space-time diagram of the messages\n"
             "between workers (lost sends, connection resets, faults and\n"
             "crashes marked), the RPC and server-work spans below it, and\n"
             "details of the clicked item. Wheel zooms, drag pans. Exit 2\n"
             "when the recording cannot be read or the page not written.\n");
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
      bool dup = code <= 0;
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

int drpc_cmd_viz(int argc, char **argv) {
  static const struct option opts[] = {{"output", required_argument, 0, 'o'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *out = NULL;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
    switch (c) {
    case 'o':
      out = optarg;
      break;
    case 'h':
      usage_viz(stdout);
      return 0;
    default:
      usage_viz(stderr);
      return 2;
    }
  }
  if (optind != argc - 1 || !out) {
    usage_viz(stderr);
    return 2;
  }
  const char *path = argv[optind];
  if (!strcmp(path, out)) {
    fprintf(stderr, "drpc viz: the page would overwrite the recording %s\n",
            path);
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
  if (!status) {
    FILE *f = fopen(out, "w");
    if (!f) {
      perror(out);
      fprintf(stderr, "drpc viz: cannot write %s\n", out);
      status = 2;
    } else {
      int wrc = write_page(f, &z, path, &ri, ids, names, nn, recv_of);
      if (fclose(f) || wrc) {
        fprintf(stderr, "drpc viz: error writing %s\n", out);
        remove(out);
        status = 2;
      }
    }
  }
  if (!status) {
    size_t lost = 0;
    for (size_t i = 0; i < z.sends[0].n; i++)
      lost += recv_of[i] < 0;
    clock_gettime(CLOCK_MONOTONIC, &w1);
    FILE *f = fopen(out, "r");
    long bytes = -1;
    if (f && !fseek(f, 0, SEEK_END))
      bytes = ftell(f);
    if (f)
      fclose(f);
    printf("wrote %s: %lld events, %zu messages (%zu lost), %zu rpcs, %zu "
           "server spans, %zu faults, %zu resets; %ld bytes in %.3f s\n",
           out, (long long)z.nevents, z.sends[0].n, lost, z.rpc[0].n,
           z.work[0].n, z.fault_t.n, z.reset_t.n, bytes,
           (double)(w1.tv_sec - w0.tv_sec) +
               (double)(w1.tv_nsec - w0.tv_nsec) / 1e9);
  }
  free(recv_of);
  viz_free(&z);
  drpc_trace_nodes_free(ids, names, nn);
  drpc_trace_run_info_free(&ri);
  drpc_trace_close(t);
  return status;
}
