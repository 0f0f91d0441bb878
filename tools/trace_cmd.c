/* drpc replay FILE [--node NAME] and drpc trace {merge,export,to-corpus}. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* The fuzz_agent program format, and the writer its corpus uses. */
#include "../fuzz/agent_prog.h"
#include "../fuzz/consumer.h"
#include "drpc/device.h"
#include "drpc/gpu.h"

#include "drpc/replay.h"
#include "drpc/trace.h"
#include "drpc/trace_export.h"
#include "drpc/wire.h"
#include "tools.h"

/* core/agent.c: the simulator self-test's planted bug. */
extern int drpc_test_fault_skip_fail_on_reset;

static double wall_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void usage_replay(FILE *f) {
  fprintf(f,
          "usage: drpc replay FILE.db [--node NAME] [--context N] "
          "[--plant-bug]\n"
          "\n"
          "Feeds each node's recorded inputs to a fresh agent core, in the\n"
          "recorded order and at the recorded times (function results come\n"
          "from the recording), and checks every output against the\n"
          "recording. Exit 0: identical. Exit 1: the first differing event,\n"
          "recorded vs replayed, with the events before it. Exit 2: the\n"
          "recording cannot be read.\n");
}

typedef struct replay_total {
  uint64_t events, inputs, outputs;
  uint64_t first_ns, last_ns;
  bool have_time;
} replay_total;

static bool replay_quiet; /* no per-node lines (drpc bench --json) */

/* Prints how a node replayed (rc and res from drpc_trace_replay_node)
 * and adds it to *total. Returns the exit status: 0 identical, 1
 * diverged, 2 unreadable. */
static int report_node(int16_t node, const char *name, int rc,
                       const drpc_trace_replay_result *res, drpc_error *err,
                       replay_total *total) {
  int status = 0;
  if (rc == DRPC_EDIVERGED) {
    printf("DIVERGED on %s (node %d) at event %lld: %s\n", name ? name : "?",
           node, (long long)res->bad_seq, drpc_error_message(err));
    if (res->ncontext) {
      printf("  the %zu events before it:\n", res->ncontext);
      for (size_t i = 0; i < res->ncontext; i++)
        printf("    #%lld %s\n", (long long)res->context_seq[i],
               res->context[i]);
    }
    status = 1;
  } else if (rc) {
    fprintf(stderr, "drpc replay: %s (node %d): %s\n", name ? name : "?", node,
            drpc_error_message(err));
    status = 2;
  } else if (!replay_quiet) {
    printf("  %-12s %8llu events, %7llu inputs, %7llu outputs checked, "
           "%.6f s recorded\n",
           name ? name : "?", (unsigned long long)res->events,
           (unsigned long long)res->inputs, (unsigned long long)res->outputs,
           res->events ? (double)(res->last_ns - res->first_ns) / 1e9 : 0.0);
  }
  total->events += res->events;
  total->inputs += res->inputs;
  total->outputs += res->outputs;
  if (res->events) {
    if (!total->have_time || res->first_ns < total->first_ns)
      total->first_ns = res->first_ns;
    if (res->last_ns > total->last_ns)
      total->last_ns = res->last_ns;
    total->have_time = true;
  }
  return status;
}

static int replay_node(drpc_trace *t, int16_t node, const char *name,
                       int context, replay_total *total) {
  drpc_trace_replay_result *res = malloc(sizeof *res);
  if (!res)
    return 2;
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_trace_replay_node(t, node, context, res, &err);
  int status = report_node(node, name, rc, res, &err, total);
  drpc_error_clear(&err);
  free(res);
  return status;
}

/* Replays the nodes (ids[0..n), ascending) in one pass over the file,
 * which reads it once instead of once per node. Returns the number of
 * nodes replayed, all identical and reported, or 0 when the pass cannot
 * tell: the caller then replays node by node, which reports where. */
static int replay_all(drpc_trace *t, const int16_t *ids, char **names, size_t n,
                      replay_total *total) {
  size_t first = 0;
  while (first < n && ids[first] < 0)
    first++; /* cluster-wide events (link faults): nothing to replay */
  size_t m = n - first;
  if (m == 0 || m > DRPC_TRACE_REPLAY_NODES_MAX)
    return 0;
  drpc_trace_replay_result *res = calloc(m, sizeof *res);
  if (!res)
    return 0;
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_trace_replay_nodes(t, ids + first, m, res, &err);
  for (size_t i = 0; rc == 0 && i < m; i++)
    report_node(ids[first + i], names[first + i], 0, &res[i], &err, total);
  drpc_error_clear(&err);
  free(res);
  return rc == 0 ? (int)m : 0;
}

/* Simulated devices a replay installs (device indices up to 15). */
#define DRPC_REPLAY_DEVICES "16"

int drpc_cmd_replay(int argc, char **argv) {
  static const struct option opts[] = {{"node", required_argument, 0, 'n'},
                                       {"context", required_argument, 0, 'c'},
                                       {"plant-bug", no_argument, 0, 'P'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *only = NULL;
  int context = 8;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'n':
      only = optarg;
      break;
    case 'P':
      /* The recorded core ran with the simulator's planted bug; the
       * replayed one must too (without it, replay shows where the correct
       * core first differs). */
      drpc_test_fault_skip_fail_on_reset = 1;
      break;
    case 'c':
      context = (int)drpc_tools_parse_int("--context", optarg, 0,
                                          DRPC_TRACE_REPLAY_CONTEXT);
      break;
    case 'h':
      usage_replay(stdout);
      return 0;
    default:
      usage_replay(stderr);
      return 2;
    }
  }
  if (optind + 1 != argc) {
    usage_replay(stderr);
    return 2;
  }
  const char *path = argv[optind];
  drpc_error err = DRPC_ERROR_INIT;
  drpc_trace *t = NULL;
  if (drpc_trace_open(&t, path, &err)) {
    fprintf(stderr, "drpc replay: %s\n", drpc_error_message(&err));
    drpc_error_clear(&err);
    return 2;
  }
  int16_t *ids = NULL;
  char **names = NULL;
  size_t n = 0;
  if (drpc_trace_nodes(t, &ids, &names, &n, &err)) {
    fprintf(stderr, "drpc replay: %s\n", drpc_error_message(&err));
    drpc_error_clear(&err);
    drpc_trace_close(t);
    return 2;
  }
  /* Device tensors of the recording land on simulated devices: replay
   * needs no GPU, and simcuda runs the same everywhere. */
  bool own_gpu = !drpc_device_backend_get(NULL) &&
                 drpc_gpu_setup("sim:" DRPC_REPLAY_DEVICES, NULL) == 0;
  double t0 = wall_now();
  replay_total total = {0};
  int status = 0, replayed = 0;
  printf("drpc replay %s\n", path);
  /* Every node in one pass when all replay identical; otherwise (and for
   * one node) node by node, which says where one differs. */
  if (!only)
    replayed = replay_all(t, ids, names, n, &total);
  bool one_pass = replayed > 0;
  for (size_t i = 0; i < n && status == 0 && !one_pass; i++) {
    if (ids[i] < 0)
      continue; /* cluster-wide events (link faults): nothing to replay */
    if (only && (!names[i] || strcmp(names[i], only) != 0))
      continue;
    status = replay_node(t, ids[i], names[i], context, &total);
    replayed++;
  }
  if (status == 0 && only && !replayed) {
    fprintf(stderr, "drpc replay: no node named %s in %s\n", only, path);
    status = 2;
  }
  if (status == 0 && replayed == 0) {
    fprintf(stderr, "drpc replay: %s holds no nodes\n", path);
    status = 2;
  }
  if (status == 0)
    printf("identical: %d nodes, %llu events (%llu inputs replayed, %llu "
           "outputs checked), %.6f s recorded, replayed in %.3f s\n",
           replayed, (unsigned long long)total.events,
           (unsigned long long)total.inputs, (unsigned long long)total.outputs,
           total.have_time ? (double)(total.last_ns - total.first_ns) / 1e9
                           : 0.0,
           wall_now() - t0);
  drpc_trace_nodes_free(ids, names, n);
  drpc_trace_close(t);
  if (own_gpu)
    drpc_gpu_teardown();
  return status;
}

/* ---- drpc trace -----------------------------------------------------------
 */

static void usage_trace(FILE *f);

/* ---- drpc trace to-corpus ------------------------------------------------
 */

/* Default bound on the files written per target. */
#define TO_CORPUS_MAX 500
/* Largest input written (as gen_corpus), and largest frame an AP_RAW
 * carries (agent_prog.h). */
#define CORPUS_MAX_FILE (64u << 10)
#define AP_RAW_MAX 4096
/* Connections a node may have programs open for at once. */
#define MAX_OPEN_PROGS 64

/* SHA-256 (FIPS 180-4), for the file names the corpora use. */
typedef struct sha256 {
  uint32_t h[8];
  uint8_t buf[64];
  size_t nbuf;
  uint64_t len;
} sha256;

static const uint32_t SHA_K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1,
    0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
    0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
    0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
    0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static uint32_t ror(uint32_t x, int n) {
  return (x >> n) | (x << (32 - n));
}

static void sha_block(sha256 *c, const uint8_t *p) {
  uint32_t w[64];
  for (int i = 0; i < 16; i++)
    w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
           (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
  for (int i = 16; i < 64; i++) {
    uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
    uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t v[8];
  memcpy(v, c->h, sizeof v);
  for (int i = 0; i < 64; i++) {
    uint32_t e = v[4], a = v[0];
    uint32_t t1 = v[7] + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) +
                  ((e & v[5]) ^ (~e & v[6])) + SHA_K[i] + w[i];
    uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) +
                  ((a & v[1]) ^ (a & v[2]) ^ (v[1] & v[2]));
    memmove(v + 1, v, 7 * sizeof v[0]);
    v[4] += t1;
    v[0] = t1 + t2;
  }
  for (int i = 0; i < 8; i++)
    c->h[i] += v[i];
}

static void sha_update(sha256 *c, const uint8_t *p, size_t n) {
  c->len += n;
  while (n) {
    size_t take = 64 - c->nbuf < n ? 64 - c->nbuf : n;
    memcpy(c->buf + c->nbuf, p, take);
    c->nbuf += take;
    p += take;
    n -= take;
    if (c->nbuf == 64) {
      sha_block(c, c->buf);
      c->nbuf = 0;
    }
  }
}

/* The digest of p[0..n) as 64 lowercase hex digits. */
static void sha256_hex(const uint8_t *p, size_t n, char hex[65]) {
  sha256 c = {{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f,
               0x9b05688c, 0x1f83d9ab, 0x5be0cd19},
              {0},
              0,
              0};
  sha_update(&c, p, n);
  uint64_t bits = c.len * 8;
  uint8_t pad[72] = {0x80};
  size_t padlen = (c.nbuf < 56 ? 56 : 120) - c.nbuf;
  for (int i = 0; i < 8; i++)
    pad[padlen + (size_t)i] = (uint8_t)(bits >> (56 - 8 * i));
  sha_update(&c, pad, padlen + 8);
  for (int i = 0; i < 8; i++)
    snprintf(hex + 8 * i, 9, "%08x", (unsigned)c.h[i]);
}

typedef struct corpus_out {
  const char *dir;
  size_t max;
  size_t written[2], skipped_dups[2]; /* per target: wire, agent */
  bool failed;
} corpus_out;

static const char *const CORPUS_TARGETS[2] = {"fuzz_wire", "fuzz_agent"};

/* Makes DIR and DIR/<target>; false (with a message) when it cannot. */
static bool corpus_mkdirs(const char *dir) {
  char path[4096];
  if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
    fprintf(stderr, "drpc trace to-corpus: %s: %s\n", dir, strerror(errno));
    return false;
  }
  for (int t = 0; t < 2; t++) {
    snprintf(path, sizeof path, "%s/%s", dir, CORPUS_TARGETS[t]);
    if (mkdir(path, 0777) != 0 && errno != EEXIST) {
      fprintf(stderr, "drpc trace to-corpus: %s: %s\n", path, strerror(errno));
      return false;
    }
  }
  return true;
}

/* Writes one input as DIR/<target>/<sha256> unless that file exists. */
static void corpus_write(corpus_out *o, int target, const uint8_t *p,
                         size_t n) {
  if (o->failed || n == 0 || n > CORPUS_MAX_FILE ||
      o->written[target] >= o->max)
    return;
  char hex[65], path[4096];
  sha256_hex(p, n, hex);
  int len = snprintf(path, sizeof path, "%s/%s/%s", o->dir,
                     CORPUS_TARGETS[target], hex);
  if (len < 0 || (size_t)len >= sizeof path) {
    fprintf(stderr, "drpc trace to-corpus: %s: path too long\n", o->dir);
    o->failed = true;
    return;
  }
  struct stat st;
  if (stat(path, &st) == 0) {
    o->skipped_dups[target]++;
    return;
  }
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
    fprintf(stderr, "drpc trace to-corpus: %s: %s\n", path, strerror(errno));
    if (f)
      fclose(f);
    o->failed = true;
    return;
  }
  o->written[target]++;
}

/* A fuzz_agent program being written for one connection of one node: the
 * frames the node received on it, each delivered raw on an intruder
 * connection to w0, with network steps between. */
typedef struct agent_prog {
  bool used;
  uint64_t conn;
  fzo o;
  int steps;
  uint8_t *first; /* the connection's first frame (its HELLO), re-sent at
                     the start of a continuation program */
  size_t nfirst;
  int emitted; /* programs written for this connection so far */
} agent_prog;

/* Starts a program whose first frame is `first`: a connection the node
 * accepted begins with the dialer's HELLO, which the program replays; on
 * one the node dialed the peer never sends one, so the intruder's
 * connection introduces itself as w1 first. */
static void prog_start(agent_prog *g, const uint8_t *first) {
  fzo_u8(&g->o, AP_CFG_AUTO_JOBS); /* one agent (w0); jobs run */
  fzo_u8(&g->o, AP_CONNECT);
  fzo_u8(&g->o, 0); /* to w0 */
  fzo_u8(&g->o, first[5] == DRPC_MSG_HELLO ? 0 : 2);
  g->steps = 1;
}

static void prog_frame(agent_prog *g, const uint8_t *p, size_t n) {
  fzo_u8(&g->o, AP_RAW);
  fzo_u8(&g->o, 0); /* the first live connection: the intruder's */
  fzo_u8(&g->o, 0); /* mode 0: the blob is the whole frame */
  fzo_blob(&g->o, AP_RAW_MAX, p, n);
  fzo_u8(&g->o, AP_RUN);
  fzo_range(&g->o, 1, 64, 16);
  g->steps += 2;
}

static void prog_emit(corpus_out *o, agent_prog *g) {
  fzo_u8(&g->o, AP_SETTLE);
  corpus_write(o, 1, g->o.p, g->o.len);
  fzo_free(&g->o);
  g->steps = 0;
  g->emitted++;
}

static void prog_drop(agent_prog *g) {
  fzo_free(&g->o);
  free(g->first);
  memset(g, 0, sizeof *g);
}

typedef struct to_corpus {
  corpus_out *out;
  int16_t node;
  agent_prog progs[MAX_OPEN_PROGS];
} to_corpus;

static agent_prog *prog_for(to_corpus *tc, uint64_t conn, bool make) {
  agent_prog *free_slot = NULL;
  for (int i = 0; i < MAX_OPEN_PROGS; i++) {
    agent_prog *g = &tc->progs[i];
    if (g->used && g->conn == conn)
      return g;
    if (!g->used && !free_slot)
      free_slot = g;
  }
  if (!make || !free_slot)
    return NULL;
  free_slot->used = true;
  free_slot->conn = conn;
  return free_slot;
}

static int corpus_event(void *arg, const drpc_trace_event *e) {
  to_corpus *tc = arg;
  const drpc_event *ev = &e->ev;
  bool frame = ev->kind == DRPC_EV_IN_FRAME || ev->kind == DRPC_EV_OUT_SEND;
  if (frame && ev->len >= DRPC_WIRE_HEADER_SIZE && tc->node < 0)
    corpus_write(tc->out, 0, ev->bytes, ev->len);
  if (tc->node < 0)
    return tc->out->failed ? -1 : 0;
  if (ev->kind == DRPC_EV_IN_FRAME && ev->len >= DRPC_WIRE_HEADER_SIZE &&
      ev->len <= AP_RAW_MAX) {
    agent_prog *g = prog_for(tc, ev->id, true);
    if (!g)
      return 0;
    if (!g->first) {
      g->first = malloc(ev->len);
      if (g->first) {
        memcpy(g->first, ev->bytes, ev->len);
        g->nfirst = ev->len;
      }
    }
    if (g->steps == 0) {
      prog_start(g, g->first ? g->first : ev->bytes);
      if (g->emitted && g->first)
        prog_frame(g, g->first, g->nfirst); /* a continuation: HELLO again */
    }
    prog_frame(g, ev->bytes, ev->len);
    if (g->steps >= AP_MAX_STEPS - 8 || g->o.len >= CORPUS_MAX_FILE - 8192)
      prog_emit(tc->out, g);
  } else if (ev->kind == DRPC_EV_IN_TIMER) {
    for (int i = 0; i < MAX_OPEN_PROGS; i++) {
      agent_prog *g = &tc->progs[i];
      if (g->used && g->steps && g->steps < AP_MAX_STEPS - 8) {
        fzo_u8(&g->o, AP_TIMER);
        g->steps++;
      }
    }
  } else if (ev->kind == DRPC_EV_IN_CONN_CLOSED) {
    agent_prog *g = prog_for(tc, ev->id, false);
    if (g) {
      if (g->steps) {
        fzo_u8(&g->o, AP_BREAK);
        fzo_u8(&g->o, 1); /* intruder - w0 */
        prog_emit(tc->out, g);
      }
      prog_drop(g);
    }
  }
  return tc->out->failed ? -1 : 0;
}

static void progs_flush(to_corpus *tc) {
  for (int i = 0; i < MAX_OPEN_PROGS; i++) {
    agent_prog *g = &tc->progs[i];
    if (g->used && g->steps)
      prog_emit(tc->out, g);
    if (g->used)
      prog_drop(g);
  }
}

static int cmd_to_corpus(int argc, char **argv) {
  const char *in = NULL, *dir = NULL;
  long long max = TO_CORPUS_MAX;
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "--max") == 0 && i + 1 < argc)
      max = drpc_tools_parse_int("--max", argv[++i], 1, 1000000);
    else if (!in)
      in = argv[i];
    else if (!dir)
      dir = argv[i];
    else {
      usage_trace(stderr);
      return 2;
    }
  }
  if (!in || !dir) {
    usage_trace(stderr);
    return 2;
  }
  drpc_error err = DRPC_ERROR_INIT;
  drpc_trace *t = NULL;
  int16_t *ids = NULL;
  char **names = NULL;
  size_t n = 0;
  if (drpc_trace_open(&t, in, &err) ||
      drpc_trace_nodes(t, &ids, &names, &n, &err)) {
    fprintf(stderr, "drpc trace to-corpus: %s\n", drpc_error_message(&err));
    drpc_error_clear(&err);
    drpc_trace_close(t);
    return 2;
  }
  if (!corpus_mkdirs(dir)) {
    drpc_trace_nodes_free(ids, names, n);
    drpc_trace_close(t);
    return 2;
  }
  corpus_out out = {dir, (size_t)max, {0, 0}, {0, 0}, false};
  to_corpus *tc = calloc(1, sizeof *tc);
  int rc = tc ? 0 : DRPC_ENOMEM;
  if (tc) {
    tc->out = &out;
    tc->node = -1; /* first every frame, for fuzz_wire */
    rc = drpc_trace_foreach(t, -1, corpus_event, tc, &err);
  }
  for (size_t i = 0; rc == 0 && i < n; i++) {
    if (ids[i] < 0)
      continue;
    tc->node = ids[i];
    rc = drpc_trace_foreach(t, ids[i], corpus_event, tc, &err);
    progs_flush(tc);
  }
  if (tc)
    progs_flush(tc);
  free(tc);
  drpc_trace_nodes_free(ids, names, n);
  drpc_trace_close(t);
  if (rc || out.failed) {
    if (rc && !out.failed)
      fprintf(stderr, "drpc trace to-corpus: %s\n",
              err.code ? drpc_error_message(&err) : "out of memory");
    drpc_error_clear(&err);
    return 2;
  }
  printf("%s: %zu fuzz_wire and %zu fuzz_agent inputs written to %s (%zu "
         "and %zu duplicates skipped)\n",
         in, out.written[0], out.written[1], dir, out.skipped_dups[0],
         out.skipped_dups[1]);
  return 0;
}

static void usage_trace(FILE *f) {
  fprintf(f,
          "usage: drpc trace export FILE.db -o trace.json\n"
          "       drpc trace merge OUT.db IN.db...\n"
          "       drpc trace to-corpus FILE.db DIR [--max N]\n"
          "\n"
          "export: Chrome trace JSON (Perfetto, chrome://tracing).\n"
          "merge: one recording from per-worker recordings.\n"
          "to-corpus: fuzz inputs from a recording: every frame received or\n"
          "sent as a fuzz_wire input (DIR/fuzz_wire/), and per node and\n"
          "connection the frames it received as a fuzz_agent program\n"
          "(DIR/fuzz_agent/), each file named by the SHA-256 of its bytes\n"
          "(at most N new files per target, default %d). The reverse:\n"
          "DRPC_FUZZ_RECORD=OUT.db fuzz_agent INPUT records that input's run\n"
          "(see fuzz/README.md).\n",
          TO_CORPUS_MAX);
}

int drpc_cmd_trace(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "--help") == 0 ||
      strcmp(argv[1], "-h") == 0) {
    usage_trace(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  drpc_error err = DRPC_ERROR_INIT;
  if (strcmp(argv[1], "export") == 0) {
    const char *in = NULL, *out = NULL;
    for (int i = 2; i < argc; i++) {
      if ((strcmp(argv[i], "-o") == 0 || strcmp(argv[i], "--output") == 0) &&
          i + 1 < argc)
        out = argv[++i];
      else if (!in)
        in = argv[i];
      else {
        usage_trace(stderr);
        return 2;
      }
    }
    if (!in || !out) {
      usage_trace(stderr);
      return 2;
    }
    if (drpc_trace_export_chrome(in, out, &err)) {
      fprintf(stderr, "drpc trace export: %s\n", drpc_error_message(&err));
      drpc_error_clear(&err);
      return 2;
    }
    printf("wrote %s\n", out);
    return 0;
  }
  if (strcmp(argv[1], "to-corpus") == 0)
    return cmd_to_corpus(argc, argv);
  if (strcmp(argv[1], "merge") == 0) {
    if (argc < 4) {
      usage_trace(stderr);
      return 2;
    }
    if (drpc_trace_merge(argv[2], (const char *const *)argv + 3,
                         (size_t)(argc - 3), true, &err)) {
      fprintf(stderr, "drpc trace merge: %s\n", drpc_error_message(&err));
      drpc_error_clear(&err);
      return 2;
    }
    printf("merged %d recordings into %s\n", argc - 3, argv[2]);
    return 0;
  }
  usage_trace(stderr);
  return 2;
}

/* ---- recording the real backend ---------------------------------------- */

static drpc_recorder *proc_rec;
static char proc_rec_path[4096];
const char *drpc_tools_record_prefix;

int drpc_tools_record_begin(const char *path, const char *scenario,
                            const char *name, int rank) {
  drpc_run_info ri = {0};
  ri.backend = "real";
  ri.scenario = scenario;
  drpc_error err = DRPC_ERROR_INIT;
  if (drpc_recorder_open(&proc_rec, path, &ri, true, true, &err)) {
    fprintf(stderr, "drpc: cannot record to %s: %s\n", path,
            drpc_error_message(&err));
    drpc_error_clear(&err);
    return 1;
  }
  snprintf(proc_rec_path, sizeof proc_rec_path, "%s", path);
  if (rank >= 0)
    drpc_recorder_node(proc_rec, (int16_t)rank, name);
  drpc_init_set_record_sink(drpc_recorder_sink, proc_rec);
  return 0;
}

int drpc_tools_record_end(void) {
  if (!proc_rec)
    return 0;
  drpc_init_set_record_sink(NULL, NULL);
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_recorder_close(proc_rec, &err);
  proc_rec = NULL;
  if (rc) {
    fprintf(stderr, "drpc: recording %s: %s\n", proc_rec_path,
            drpc_error_message(&err));
    drpc_error_clear(&err);
    return 1;
  }
  return 0;
}

int drpc_tools_record_merge(const char *path, const char *prefix, int n) {
  char **parts = calloc((size_t)n, sizeof *parts);
  int rc = parts ? 0 : 1;
  for (int r = 0; rc == 0 && r < n; r++) {
    size_t len = strlen(prefix) + 32;
    if (!(parts[r] = malloc(len)))
      rc = 1;
    else
      snprintf(parts[r], len, "%s.w%d.db", prefix, r);
  }
  drpc_error err = DRPC_ERROR_INIT;
  if (rc == 0 && drpc_trace_merge(path, (const char *const *)parts, (size_t)n,
                                  true, &err)) {
    fprintf(stderr, "drpc: merging the workers' recordings: %s\n",
            drpc_error_message(&err));
    drpc_error_clear(&err);
    rc = 1;
  }
  for (int r = 0; parts && r < n; r++) {
    if (rc == 0 && parts[r])
      unlink(parts[r]);
    free(parts[r]);
  }
  free(parts);
  return rc;
}

int drpc_tools_record_begin_part(const char *prefix, const char *name,
                                 int rank) {
  char path[4096];
  snprintf(path, sizeof path, "%s.w%d.db", prefix, rank);
  return drpc_tools_record_begin(path, NULL, name, rank);
}

static int finish(const char *prefix, int n, bool export_json);

int drpc_tools_record_finish(const char *prefix, int n) {
  return finish(prefix, n, true);
}

int drpc_tools_record_replay(const char *prefix, int n) {
  return finish(prefix, n, false);
}

static int finish(const char *prefix, int n, bool export_json) {
  if (drpc_tools_record_merge(prefix, prefix, n))
    return 1;
  replay_quiet = !export_json;
  drpc_error err = DRPC_ERROR_INIT;
  drpc_trace *t = NULL;
  int16_t *ids = NULL;
  char **names = NULL;
  size_t nn = 0;
  int rc = drpc_trace_open(&t, prefix, &err);
  if (rc == 0)
    rc = drpc_trace_nodes(t, &ids, &names, &nn, &err);
  replay_total total = {0};
  int status = rc ? 2 : 0;
  double t0 = wall_now();
  for (size_t i = 0; status == 0 && i < nn; i++)
    if (ids[i] >= 0)
      status = replay_node(t, ids[i], names[i], 8, &total);
  drpc_trace_nodes_free(ids, names, nn);
  drpc_trace_close(t);
  if (rc)
    fprintf(stderr, "drpc: %s: %s\n", prefix, drpc_error_message(&err));
  drpc_error_clear(&err);
  if (status)
    return 1;
  if (!export_json)
    return 0;
  printf("recording: %s (%llu events; replay: identical, %.3f s)\n", prefix,
         (unsigned long long)total.events, wall_now() - t0);
  char json[4096];
  size_t len = strlen(prefix);
  if (len > 3 && strcmp(prefix + len - 3, ".db") == 0)
    len -= 3;
  snprintf(json, sizeof json, "%.*s.json", (int)len, prefix);
  if (drpc_trace_export_chrome(prefix, json, &err)) {
    fprintf(stderr, "drpc: exporting %s: %s\n", prefix,
            drpc_error_message(&err));
    drpc_error_clear(&err);
    return 1;
  }
  printf("chrome trace: %s (open in https://ui.perfetto.dev or "
         "chrome://tracing)\n",
         json);
  return 0;
}
