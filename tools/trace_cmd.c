/* drpc replay FILE [--node NAME] and drpc trace {merge,export,info}. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "drpc/replay.h"
#include "drpc/trace.h"
#include "drpc/trace_export.h"
#include "tools.h"

static double wall_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void usage_replay(FILE *f) {
  fprintf(f,
          "usage: drpc replay FILE.db [--node NAME] [--context N]\n"
          "\n"
          "Feeds each node's recorded inputs to a fresh agent core, in the\n"
          "recorded order and at the recorded times (function results come\n"
          "from the recording), and checks every output against the\n"
          "recording. Exit 0: identical. Exit 1: the first differing event,\n"
          "recorded vs replayed, with the events before it. Exit 2: the\n"
          "recording cannot be read.\n");
}

#define MAX_CONTEXT 64

typedef struct replay_ctx {
  drpc_replay *r;
  const char *node_name;
  int16_t node;
  uint64_t events, inputs, outputs, incarnations;
  uint64_t first_ns, last_ns;
  bool have_time;
  int context;
  char ring[MAX_CONTEXT][220];
  int64_t ring_seq[MAX_CONTEXT];
  size_t ring_len, ring_head;
  drpc_error err;
  int64_t bad_seq;
  uint64_t *connects; /* the node's recorded OUT_CONNECT ids, in order */
  size_t nconnects, next_connect;
} replay_ctx;

static uint64_t next_connect(void *arg) {
  replay_ctx *c = arg;
  return c->next_connect < c->nconnects ? c->connects[c->next_connect++] : 0;
}

static int collect_connect(void *arg, const drpc_trace_event *e) {
  replay_ctx *c = arg;
  if (e->ev.kind != DRPC_EV_OUT_CONNECT)
    return 0;
  if (c->nconnects % 256 == 0) {
    uint64_t *p = realloc(c->connects, (c->nconnects + 256) * sizeof *p);
    if (!p)
      return DRPC_ENOMEM;
    c->connects = p;
  }
  c->connects[c->nconnects++] = e->ev.id;
  return 0;
}

static void ring_push(replay_ctx *c, const drpc_trace_event *e) {
  if (c->context <= 0)
    return;
  size_t cap = (size_t)c->context;
  size_t at = (c->ring_head + c->ring_len) % cap;
  if (c->ring_len == cap)
    c->ring_head = (c->ring_head + 1) % cap;
  else
    c->ring_len++;
  drpc_event_describe(&e->ev, c->ring[at], sizeof c->ring[at]);
  c->ring_seq[at] = e->seq;
}

static int replay_event(void *arg, const drpc_trace_event *e) {
  replay_ctx *c = arg;
  const drpc_event *ev = &e->ev;
  c->events++;
  if (!c->have_time) {
    c->first_ns = ev->time_ns;
    c->have_time = true;
  }
  if (ev->time_ns > c->last_ns)
    c->last_ns = ev->time_ns;
  int rc = 0;
  if (ev->kind == DRPC_EV_IN_START) {
    /* A (re)started core: a crashed incarnation ends where its events
     * end; what it still had pending died with it. */
    drpc_replay_free(c->r);
    c->r = NULL;
    rc = drpc_replay_new(&c->r, ev, &c->err);
    if (rc == 0)
      drpc_replay_set_connect_ids(c->r, next_connect, c);
    c->incarnations++;
  } else if (!c->r) {
    if (drpc_event_is_input(ev->kind) || drpc_event_is_output(ev->kind))
      rc =
          drpc_error_set(&c->err, DRPC_EPROTO,
                         "node %d has events before its start event", ev->node);
  } else {
    if (drpc_event_is_input(ev->kind))
      c->inputs++;
    if (drpc_event_is_output(ev->kind))
      c->outputs++;
    rc = drpc_replay_feed(c->r, ev, &c->err);
  }
  if (rc) {
    c->bad_seq = e->seq;
    return rc;
  }
  ring_push(c, e);
  return 0;
}

static int replay_node(drpc_trace *t, int16_t node, const char *name,
                       int context, replay_ctx *total) {
  replay_ctx *c = calloc(1, sizeof *c);
  if (!c)
    return 2;
  c->node = node;
  c->node_name = name;
  c->context = context;
  c->bad_seq = -1;
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_trace_foreach(t, node, collect_connect, c, &err);
  if (rc == 0)
    rc = drpc_trace_foreach(t, node, replay_event, c, &err);
  if (rc == 0 && c->r)
    rc = drpc_replay_finish(c->r, &c->err);
  int status = 0;
  if (rc == DRPC_EDIVERGED) {
    printf("DIVERGED on %s (node %d) at event %lld: %s\n", name ? name : "?",
           node, (long long)c->bad_seq, drpc_error_message(&c->err));
    if (c->ring_len) {
      printf("  the %zu events before it:\n", c->ring_len);
      for (size_t i = 0; i < c->ring_len; i++) {
        size_t at = (c->ring_head + i) % (size_t)c->context;
        printf("    #%lld %s\n", (long long)c->ring_seq[at], c->ring[at]);
      }
    }
    status = 1;
  } else if (rc) {
    const drpc_error *e = err.code ? &err : &c->err;
    fprintf(stderr, "drpc replay: %s (node %d): %s\n", name ? name : "?", node,
            drpc_error_message(e));
    status = 2;
  } else {
    printf("  %-12s %8llu events, %7llu inputs, %7llu outputs checked, "
           "%.6f s recorded\n",
           name ? name : "?", (unsigned long long)c->events,
           (unsigned long long)c->inputs, (unsigned long long)c->outputs,
           c->have_time ? (double)(c->last_ns - c->first_ns) / 1e9 : 0.0);
  }
  total->events += c->events;
  total->inputs += c->inputs;
  total->outputs += c->outputs;
  if (c->have_time) {
    if (!total->have_time || c->first_ns < total->first_ns)
      total->first_ns = c->first_ns;
    if (c->last_ns > total->last_ns)
      total->last_ns = c->last_ns;
    total->have_time = true;
  }
  drpc_replay_free(c->r);
  drpc_error_clear(&c->err);
  drpc_error_clear(&err);
  free(c->connects);
  free(c);
  return status;
}

int drpc_cmd_replay(int argc, char **argv) {
  static const struct option opts[] = {{"node", required_argument, 0, 'n'},
                                       {"context", required_argument, 0, 'c'},
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
    case 'c':
      context = (int)drpc_tools_parse_int("--context", optarg, 0, MAX_CONTEXT);
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
  double t0 = wall_now();
  replay_ctx total = {0};
  int status = 0, replayed = 0;
  printf("drpc replay %s\n", path);
  for (size_t i = 0; i < n && status == 0; i++) {
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
  return status;
}

/* ---- drpc trace -----------------------------------------------------------
 */

static void usage_trace(FILE *f) {
  fprintf(f, "usage: drpc trace export FILE.db -o trace.json\n"
             "       drpc trace merge OUT.db IN.db...\n"
             "\n"
             "export: Chrome trace JSON (Perfetto, chrome://tracing).\n"
             "merge: one recording from per-worker recordings.\n");
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
