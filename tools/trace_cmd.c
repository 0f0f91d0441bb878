/* drpc replay FILE [--node NAME] and drpc trace {merge,export,info}. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "drpc/replay.h"
#include "drpc/trace.h"
#include "drpc/trace_export.h"
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

static int replay_node(drpc_trace *t, int16_t node, const char *name,
                       int context, replay_total *total) {
  drpc_trace_replay_result *res = malloc(sizeof *res);
  if (!res)
    return 2;
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_trace_replay_node(t, node, context, res, &err);
  int status = 0;
  if (rc == DRPC_EDIVERGED) {
    printf("DIVERGED on %s (node %d) at event %lld: %s\n", name ? name : "?",
           node, (long long)res->bad_seq, drpc_error_message(&err));
    if (res->ncontext) {
      printf("  the %zu events before it:\n", res->ncontext);
      for (size_t i = 0; i < res->ncontext; i++)
        printf("    #%lld %s\n", (long long)res->context_seq[i],
               res->context[i]);
    }
    status = 1;
  } else if (rc) {
    fprintf(stderr, "drpc replay: %s (node %d): %s\n", name ? name : "?", node,
            drpc_error_message(&err));
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
  drpc_error_clear(&err);
  free(res);
  return status;
}

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
  double t0 = wall_now();
  replay_total total = {0};
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
