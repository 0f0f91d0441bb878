/* `drpc demo`: a 4-worker cluster over loopback (four processes) running a
 * small workload of every call kind, then a graceful shutdown, with a report
 * of what happened. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tools.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int step_ok, step_failed;

static void report(const char *what, int rc, const drpc_value *v,
                   const drpc_error *err) {
  char buf[256] = "";
  if (rc == 0 && v)
    drpc_value_format(v, buf, sizeof buf);
  else if (rc == 0)
    snprintf(buf, sizeof buf, "nil");
  printf("  %-44s %s%s\n", what, rc ? "error: " : "",
         rc ? drpc_error_message(err) : buf);
}

/* A step that must succeed. */
static void expect_ok(const char *what, int rc, drpc_value *v,
                      drpc_error *err) {
  report(what, rc, v, err);
  if (rc)
    step_failed++;
  else
    step_ok++;
  drpc_value_free(v);
  drpc_error_clear(err);
}

/* A step that must fail with code, showing the error users would see. */
static void expect_err(const char *what, int rc, int code, drpc_value *v,
                       drpc_error *err) {
  report(what, rc, v, err);
  if (rc == code)
    step_ok++;
  else
    step_failed++;
  drpc_value_free(v);
  drpc_error_clear(err);
}

static int driver(drpc_agent *a, int world) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_value *out = NULL;
  int rc;
  printf("workers:");
  size_t n;
  const drpc_worker_info *ws = drpc_agent_workers(a, &n);
  for (size_t i = 0; i < n; i++)
    printf(" %s(id=%d)", ws[i].name, ws[i].id);
  printf("\n\ncalls from w0:\n");

  int64_t shape[2] = {2, 3};
  drpc_tensor *t = drpc_tensor_new(DRPC_FLOAT32, 2, shape);
  float *p = drpc_tensor_data(t);
  for (int i = 0; i < 6; i++)
    p[i] = (float)i;
  drpc_value *args =
      drpc_value_list_of(2, drpc_value_tensor(t), drpc_value_float(10.0));
  rc = drpc_rpc_sync(a, "w1", DRPC_BUILTIN, "aten::add", args, NULL, -1, &out,
                     &err);
  expect_ok("rpc_sync(w1, aten::add, (t, 10.0))", rc, out, &err);
  drpc_value_free(args);

  args = drpc_value_list_of(2, drpc_value_tensor(t), drpc_value_tensor(t));
  rc = drpc_rpc_sync(a, "w2", DRPC_BUILTIN, "aten::mul", args, NULL, -1, &out,
                     &err);
  expect_ok("rpc_sync(w2, aten::mul, (t, t))", rc, out, &err);
  drpc_value_free(args);
  drpc_tensor_decref(t);

  for (int w = 0; w < world; w++) {
    char dst[16], what[64];
    snprintf(dst, sizeof dst, "w%d", w);
    snprintf(what, sizeof what, "rpc_sync(%s, whoami)", dst);
    rc = drpc_rpc_sync(a, dst, DRPC_FUNCTION, "whoami", NULL, NULL, -1, &out,
                       &err);
    expect_ok(what, rc, out, &err);
  }

  args =
      drpc_value_list_of(4, drpc_value_str("w3"), drpc_value_str("aten::sub"),
                         drpc_value_int(100), drpc_value_int(58));
  rc = drpc_rpc_sync(a, "w2", DRPC_FUNCTION, "async_forward", args, NULL, -1,
                     &out, &err);
  expect_ok("w0 -> w2 async_forward -> w3 aten::sub(100, 58)", rc, out, &err);
  drpc_value_free(args);

  args = drpc_value_list_of(1, drpc_value_str("division by zero in user code"));
  rc = drpc_rpc_sync(a, "w1", DRPC_FUNCTION, "raise", args, NULL, -1, &out,
                     &err);
  expect_err("rpc_sync(w1, raise) [remote error]", rc, DRPC_EUSER, out, &err);
  drpc_value_free(args);

  args = drpc_value_list_of(1, drpc_value_float(0.5));
  rc = drpc_rpc_sync(a, "w3", DRPC_FUNCTION, "sleep", args, NULL, 0.1, &out,
                     &err);
  expect_err("rpc_sync(w3, sleep 0.5 s, timeout=0.1 s)", rc, DRPC_ETIMEOUT, out,
             &err);
  drpc_value_free(args);

  rc =
      drpc_rpc_sync(a, "w9", DRPC_FUNCTION, "noop", NULL, NULL, -1, &out, &err);
  expect_err("rpc_sync(w9, noop) [unknown worker]", rc, DRPC_ENOTFOUND, out,
             &err);

  enum { CALLS = 2000 };
  static drpc_future *fs[CALLS];
  double t0 = now_s();
  int issued = 0;
  for (int i = 0; i < CALLS; i++) {
    char dst[16];
    snprintf(dst, sizeof dst, "w%d", 1 + i % (world - 1));
    if (drpc_rpc_async(a, dst, DRPC_FUNCTION, "noop", NULL, NULL, -1, &fs[i],
                       &err))
      break;
    issued++;
  }
  rc = drpc_future_wait_all(fs, (size_t)issued, 30, &err);
  double dt = now_s() - t0;
  for (int i = 0; i < issued; i++)
    drpc_future_decref(fs[i]);
  char what[96];
  snprintf(what, sizeof what, "%d pipelined rpc_async noops to w1..w%d", issued,
           world - 1);
  if (rc == 0 && issued == CALLS) {
    printf("  %-44s %.1f ms (%.0f calls/s)\n", what, dt * 1e3, issued / dt);
    step_ok++;
  } else {
    report(what, rc ? rc : DRPC_EINVAL, NULL, &err);
    step_failed++;
  }
  drpc_error_clear(&err);

  drpc_value *m = drpc_agent_metrics(a);
  char *j = drpc_value_to_json(m, false);
  printf("\nmetrics of w0: %s\n", j ? j : "?");
  free(j);
  drpc_value_free(m);
  return step_failed;
}

/* Writes the recording's viewer page next to it ("<record minus .db>.html")
 * and prints its path. */
static int viewer_page(const char *record) {
  char html[4096];
  size_t len = strlen(record);
  if (len > 3 && strcmp(record + len - 3, ".db") == 0)
    len -= 3;
  snprintf(html, sizeof html, "%.*s.html", (int)len, record);
  char *argv[] = {"viz", (char *)record, "-o", html, "--quiet", NULL};
  if (drpc_cmd_viz(5, argv))
    return 1;
  printf("viewer page: %s (open in any browser; drpc viz)\n", html);
  return 0;
}

static void usage(FILE *f) {
  fprintf(f, "usage: drpc demo [--workers N] [--record FILE.db | "
             "--no-record]\n"
             "\n"
             "Starts N (default 4, at least 4) worker processes over "
             "loopback; w0 runs\nbuiltin ops, functions, a nested async call, "
             "a remote error, a timeout\nand 2000 pipelined calls, then all "
             "shut down gracefully.\nEvery worker records its core's events; "
             "the recordings are merged into\nFILE.db (default "
             "drpc-demo.db), replayed, exported as a Chrome trace\n(FILE.json) "
             "and drawn as a viewer page (FILE.html, drpc viz).\n");
}

int drpc_cmd_demo(int argc, char **argv) {
  static const struct option opts[] = {{"workers", required_argument, 0, 'w'},
                                       {"record", required_argument, 0, 'r'},
                                       {"no-record", no_argument, 0, 'n'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  int world = 4, c;
  const char *record = "drpc-demo.db";
  optind = 1;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'w':
      world = (int)drpc_tools_parse_int("--workers", optarg, 4, 64);
      break;
    case 'r':
      record = optarg;
      break;
    case 'n':
      record = NULL;
      break;
    case 'h':
      usage(stdout);
      return 0;
    default:
      usage(stderr);
      return 2;
    }
  }
  drpc_tools_register_std(drpc_registry_default());
  char init[64];
  snprintf(init, sizeof init, "tcp://127.0.0.1:%d", drpc_tools_free_port());
  drpc_options o;
  drpc_options_default(&o);
  o.init_method = init;
  o.num_worker_threads = 4;
  o.shutdown_timeout_s = 30;
  printf("drpc demo: %d workers over loopback, rendezvous at %s\n", world,
         init);
  fflush(stdout);
  drpc_tools_record_prefix = record;
  pid_t kids[64];
  for (int r = 1; r < world; r++) {
    char name[16];
    snprintf(name, sizeof name, "w%d", r);
    kids[r] = drpc_tools_spawn_passive(name, r, world, &o);
  }
  /* After the forks: a child must not inherit the recorder's thread. */
  if (record && drpc_tools_record_begin_part(record, "w0", 0)) {
    for (int r = 1; r < world; r++)
      kill(kids[r], SIGKILL);
    return 1;
  }
  double t0 = now_s();
  drpc_agent *a = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  int failed = 0;
  if (drpc_init(&a, "w0", 0, world, &o, &err)) {
    fprintf(stderr, "drpc demo: %s\n", drpc_error_message(&err));
    for (int r = 1; r < world; r++)
      kill(kids[r], SIGKILL);
    failed = 1;
  } else {
    failed = driver(a, world) != 0;
    double ts = now_s();
    int rc = drpc_shutdown(a, true, -1, &err);
    printf("\nw0 graceful shutdown: %s (%.1f ms)\n",
           rc ? drpc_error_message(&err) : "ok", (now_s() - ts) * 1e3);
    if (rc)
      failed = 1;
  }
  int clean = 0;
  for (int r = 1; r < world; r++) {
    int status = 0;
    waitpid(kids[r], &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
      clean++;
  }
  printf("workers w1..w%d exited cleanly: %d of %d\n", world - 1, clean,
         world - 1);
  if (record &&
      (drpc_tools_record_end() || clean != world - 1 ||
       drpc_tools_record_finish(record, world) || viewer_page(record)))
    failed = 1;
  printf("demo %s: %d steps ok, %d failed, %.2f s\n",
         failed || clean != world - 1 ? "FAILED" : "passed", step_ok,
         step_failed, now_s() - t0);
  drpc_error_clear(&err);
  return failed || clean != world - 1;
}
