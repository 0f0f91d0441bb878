/* Integration: the drpc command line. Help for every command exits 0; bad
 * arguments exit non-zero with a clear message on stderr; `drpc store
 * --port 0` prints its port and serves a group whose workers were started
 * with --init-method tcp://127.0.0.1:THATPORT (rank 0 included) and stops
 * on SIGTERM; `drpc worker` exits on SIGTERM both while it waits in
 * rendezvous and while it serves; `drpc demo` passes. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test.h"

#include "it_util.h"

static char out[1 << 16], err[1 << 16];

/* Runs `drpc <args...>` (NULL-terminated) within 20 s. */
static int drpc(const char *a0, ...) {
  const char *argv[16];
  int n = 0;
  argv[n++] = it_drpc_bin();
  va_list ap;
  va_start(ap, a0);
  for (const char *a = a0; a && n < 15; a = va_arg(ap, const char *))
    argv[n++] = a;
  va_end(ap);
  argv[n] = NULL;
  return it_run((char *const *)argv, NULL, 20, out, sizeof out, err,
                sizeof err);
}

static void test_help(void) {
  CHECK_EQ_INT(drpc("--help", NULL), 0);
  CHECK_CONTAINS(out, "usage: drpc <command>");
  CHECK_CONTAINS(out, "worker");
  static const char *const cmds[] = {"worker", "store", "bench", "demo"};
  for (size_t i = 0; i < 4; i++) {
    CHECK_EQ_INT(drpc(cmds[i], "--help", NULL), 0);
    char want[64];
    snprintf(want, sizeof want, "usage: drpc %s", cmds[i]);
    CHECK_CONTAINS(out, want);
    CHECK_STR_EQ(err, "");
  }
}

/* Exits with 1 or 2 and says what was wrong on stderr. */
static void expect_bad(const char *want, int code) {
  CHECK(code == 1 || code == 2);
  CHECK_CONTAINS(err, want);
  if (!(code == 1 || code == 2) || !strstr(err, want))
    fprintf(stderr, "  code %d, stderr: %s\n", code, err);
}

static void test_bad_arguments(void) {
  expect_bad("usage: drpc <command>", drpc(NULL));
  expect_bad("unknown command 'frobnicate'", drpc("frobnicate", NULL));
  expect_bad("unrecognized option '--bogus'", drpc("worker", "--bogus", NULL));
  expect_bad("usage: drpc worker", drpc("worker", "--bogus", NULL));
  expect_bad("--name is required",
             drpc("worker", "--rank", "0", "--world-size", "1", NULL));
  expect_bad("--rank expects an integer in [0, 32767], got 'abc'",
             drpc("worker", "--name", "a", "--rank", "abc", NULL));
  expect_bad("--world-size expects an integer",
             drpc("worker", "--name", "a", "--world-size", "0", NULL));
  expect_bad("--threads expects an integer",
             drpc("worker", "--name", "a", "--threads", "many", NULL));
  expect_bad("--rpc-timeout expects a number",
             drpc("worker", "--name", "a", "--rpc-timeout", "-1", NULL));
  expect_bad("unexpected argument 'extra'",
             drpc("worker", "--name", "a", "extra", NULL));
  expect_bad("cannot load plugin /nonexistent/plugin.so",
             drpc("worker", "--name", "a", "--plugin", "/nonexistent/plugin.so",
                  NULL));
  char path[200], init[256];
  it_tmp_path(path, sizeof path, "store");
  snprintf(init, sizeof init, "file://%s", path);
  expect_bad("Worker name must match",
             drpc("worker", "--name", "bad name!", "--rank", "0",
                  "--world-size", "1", "--init-method", init, NULL));
  expect_bad("rank 3 is out of range for world_size 2",
             drpc("worker", "--name", "a", "--rank", "3", "--world-size", "2",
                  "--init-method", init, NULL));
  expect_bad("unsupported init_method scheme 'udp://'",
             drpc("worker", "--name", "a", "--rank", "0", "--world-size", "1",
                  "--init-method", "udp://x:1", NULL));
  unlink(path);
  expect_bad("--port is required", drpc("store", NULL));
  expect_bad("--port expects an integer in [0, 65535], got '70000'",
             drpc("store", "--port", "70000", NULL));
  expect_bad("unrecognized option '--bogus'", drpc("store", "--bogus", NULL));
  expect_bad("unrecognized option '--bogus'", drpc("bench", "--bogus", NULL));
  expect_bad("unrecognized option '--bogus'", drpc("demo", "--bogus", NULL));
}

/* ---- drpc store + workers ---------------------------------------------- */

static char store_init[128];

/* Starts `drpc store --port 0` and reads the port it printed. */
static pid_t start_store(int *port, char *out_path, size_t n) {
  it_tmp_path(out_path, n, "store.out");
  const char *argv[] = {it_drpc_bin(), "store", "--port", "0", NULL};
  pid_t pid = it_spawn((char *const *)argv, NULL, out_path, NULL, 50);
  *port = 0;
  double deadline = it_now() + 10;
  while (pid > 0 && *port == 0 && it_now() < deadline) {
    it_read_file(out_path, out, sizeof out);
    if (sscanf(out, "drpc store listening on 127.0.0.1:%d", port) != 1)
      *port = 0;
    if (*port == 0)
      it_sleep(0.01);
  }
  return pid;
}

static void store_driver(void *arg) {
  (void)arg;
  it_register_functions();
  drpc_options o;
  drpc_options_default(&o);
  o.init_method = store_init;
  o.num_worker_threads = 2;
  drpc_error e = DRPC_ERROR_INIT;
  drpc_agent *a = NULL;
  CHECK_EQ_INT(drpc_init(&a, "driver", 2, 3, &o, &e), 0);
  if (!a) {
    fprintf(stderr, "  drpc_init: %s\n", drpc_error_message(&e));
    drpc_error_clear(&e);
    return;
  }
  for (int w = 0; w < 2; w++) {
    char dst[8];
    snprintf(dst, sizeof dst, "c%d", w);
    drpc_value *v = NULL;
    drpc_value *kw = drpc_value_dict();
    drpc_dict_set(kw, "k", drpc_value_int(w));
    CHECK_EQ_INT(drpc_rpc_sync(a, dst, DRPC_FUNCTION, "t::describe", NULL, kw,
                               10, &v, &e),
                 0);
    const drpc_value *self = drpc_dict_get(v, "self");
    CHECK(self && self->kind == DRPC_VAL_STR && !strcmp(self->u.s.data, dst));
    drpc_value_free(v);
    drpc_value_free(kw);
  }
  CHECK_EQ_INT(drpc_shutdown(a, true, 20, &e), 0);
  drpc_error_clear(&e);
}

static void test_store_serves_workers(void) {
  char store_out[200];
  int port = 0;
  pid_t store = start_store(&port, store_out, sizeof store_out);
  CHECK(store > 0 && port > 0);
  if (port <= 0) {
    it_kill(store);
    unlink(store_out);
    return;
  }
  snprintf(store_init, sizeof store_init, "tcp://127.0.0.1:%d", port);
  /* Every rank, rank 0 too, finds the store already there. */
  pid_t ws[2];
  char logs[2][200];
  for (int r = 0; r < 2; r++) {
    it_worker w;
    it_worker_default(&w);
    char name[8];
    snprintf(name, sizeof name, "c%d", r);
    w.name = name;
    w.rank = r;
    w.world = 3;
    w.init_method = store_init;
    w.threads = 2;
    w.style = IT_EXEC;
    it_tmp_path(logs[r], sizeof logs[r], "worker.err");
    w.err_path = logs[r];
    ws[r] = it_start_worker(&w);
  }
  it_checked d = it_fork_checked("store driver", store_driver, NULL, 50);
  it_join_watch(&d, 40, ws, 2);
  for (int r = 0; r < 2; r++) {
    int st = 0;
    bool ended = it_wait(ws[r], 15, &st);
    CHECK(ended && it_exited_ok(st));
    it_read_file(logs[r], err, sizeof err);
    CHECK_CONTAINS(err, "shut down cleanly");
    if (!ended || !it_exited_ok(st))
      fprintf(stderr, "  c%d: %s\n", r, err);
    unlink(logs[r]);
    it_kill(ws[r]);
  }
  /* SIGTERM stops the store. */
  CHECK(kill(store, SIGTERM) == 0);
  int st = 0;
  CHECK(it_wait(store, 5, &st));
  CHECK(it_exited_ok(st));
  it_kill(store);
  unlink(store_out);
}

/* Rank 0 uses a standalone store, never a port some other program holds:
 * it fails fast with the bind error. */
static void test_rank0_refuses_a_foreign_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t sl = sizeof sa;
  CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        listen(fd, 16) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &sl) == 0);
  char init[64];
  snprintf(init, sizeof init, "tcp://127.0.0.1:%d", ntohs(sa.sin_port));
  double t0 = it_now();
  int code = drpc("worker", "--name", "w0", "--rank", "0", "--world-size", "2",
                  "--init-method", init, NULL);
  CHECK_EQ_INT(code, 1);
  CHECK_CONTAINS(err, "rank 0 could not start the store server");
  CHECK_CONTAINS(err, "address already in use");
  CHECK(it_now() - t0 < 8);
  close(fd);
}

/* ---- drpc worker and SIGTERM ------------------------------------------- */

static void test_worker_sigterm_in_rendezvous(void) {
  char store_out[200], log[200];
  int port = 0;
  pid_t store = start_store(&port, store_out, sizeof store_out);
  CHECK(port > 0);
  char init[64], rank[8] = "1";
  snprintf(init, sizeof init, "tcp://127.0.0.1:%d", port);
  it_tmp_path(log, sizeof log, "worker.err");
  /* Rank 0 never comes: the worker waits in rendezvous. */
  const char *argv[] = {
      it_drpc_bin(), "worker",         "--name", "lonely",        "--rank",
      rank,          "--world-size",   "2",      "--init-method", init,
      "--plugin",    it_plugin_path(), NULL};
  pid_t w = it_spawn((char *const *)argv, NULL, NULL, log, 50);
  it_sleep(0.5);
  int st = 0;
  CHECK(!it_wait(w, 0, &st)); /* still waiting */
  double t0 = it_now();
  CHECK(kill(w, SIGTERM) == 0);
  bool ended = it_wait(w, 5, &st);
  CHECK(ended);
  CHECK(it_now() - t0 < 3);
  CHECK(ended && WIFEXITED(st)); /* it exited; no signal killed it */
  it_read_file(log, err, sizeof err);
  CHECK_CONTAINS(err, "during start-up; exiting");
  it_kill(w);
  kill(store, SIGTERM);
  CHECK(it_wait(store, 5, &st) && it_exited_ok(st));
  it_kill(store);
  unlink(store_out);
  unlink(log);
}

static char term_init[128];

/* Calls the worker, sends it SIGTERM, calls it again (it still serves
 * while the group shuts down), then shuts the group down. */
static void term_driver(void *arg) {
  (void)arg;
  it_register_functions();
  drpc_options o;
  drpc_options_default(&o);
  o.init_method = term_init;
  o.num_worker_threads = 2;
  drpc_error e = DRPC_ERROR_INIT;
  drpc_agent *a = it_init_driver("w0", 0, 2, &o, &e);
  CHECK(a != NULL);
  if (!a) {
    drpc_error_clear(&e);
    return;
  }
  drpc_value *v = NULL;
  CHECK_EQ_INT(
      drpc_rpc_sync(a, "w1", DRPC_FUNCTION, "t::pid", NULL, NULL, 10, &v, &e),
      0);
  pid_t pid = v && v->kind == DRPC_VAL_INT ? (pid_t)v->u.i : 0;
  drpc_value_free(v);
  CHECK(pid > 0 && kill(pid, SIGTERM) == 0);
  it_sleep(0.2);
  CHECK_EQ_INT(
      drpc_rpc_sync(a, "w1", DRPC_FUNCTION, "whoami", NULL, NULL, 10, &v, &e),
      0);
  drpc_value_free(v);
  CHECK_EQ_INT(drpc_shutdown(a, true, 10, &e), 0);
  drpc_error_clear(&e);
}

static void test_worker_sigterm_while_serving(void) {
  char log[200];
  it_tmp_path(log, sizeof log, "worker.err");
  for (int attempt = 0; attempt < IT_PORT_ATTEMPTS; attempt++) {
    snprintf(term_init, sizeof term_init, "tcp://127.0.0.1:%d", it_free_port());
    it_worker w;
    it_worker_default(&w);
    w.name = "w1";
    w.rank = 1;
    w.world = 2;
    w.init_method = term_init;
    w.threads = 2;
    w.style = IT_EXEC;
    w.err_path = log;
    pid_t pid = it_start_worker(&w);
    it_checked d = it_fork_checked("sigterm driver", term_driver, NULL, 40);
    if (it_join_watch(&d, 40, &pid, 1) == IT_EXIT_RETRY) {
      it_kill(pid);
      continue;
    }
    int st = 0;
    CHECK(it_wait(pid, 15, &st));
    CHECK(it_exited_ok(st));
    it_read_file(log, err, sizeof err);
    CHECK_CONTAINS(err, "signal 15, shutting down");
    CHECK_CONTAINS(err, "drpc worker w1: shut down cleanly");
    it_kill(pid);
    unlink(log);
    return;
  }
  CHECK(!"the rendezvous port was taken on every attempt");
}

static void test_demo(void) {
  double t0 = it_now();
  int code = drpc("demo", NULL);
  /* The demo picks its own port: try again if someone took it. */
  for (int i = 0; i < 2 && code != 0 && strstr(err, "already in use"); i++)
    code = drpc("demo", NULL);
  CHECK_EQ_INT(code, 0);
  CHECK_CONTAINS(out, "demo passed");
  CHECK_CONTAINS(out, "workers w1..w3 exited cleanly: 3 of 3");
  if (code)
    fprintf(stderr, "  demo:\n%s\n%s\n", out, err);
  fprintf(stderr, "  demo took %.2f s\n", it_now() - t0);
}

/* The planted bug (lost connections do not fail their calls) is caught by
 * a sweep, and --shrink reduces the first failing seed's schedule to a
 * smaller one that fails the same way with the bug and passes without it. */
static void test_sim_shrink_planted(void) {
  char path[64];
  snprintf(path, sizeof path, "/tmp/drpc-shrink-%d.json", (int)getpid());
  int code = drpc("sim", "echo", "--workers", "4", "--seeds", "1..20",
                  "--plant-bug", "--shrink", "--shrink-out", path, NULL);
  CHECK(code != 0);
  CHECK_CONTAINS(out, "never completed");
  const char *line = strstr(out, "shrink: ");
  size_t from = 0, to = 0;
  CHECK(line && sscanf(line, "shrink: %zu faults -> %zu", &from, &to) == 2);
  CHECK(to >= 1 && to < from);
  fprintf(stderr, "  shrunk %zu faults to %zu\n", from, to);
  code = drpc("sim", "echo", "--schedule", path, "--plant-bug", NULL);
  CHECK(code != 0);
  CHECK_CONTAINS(out, "never completed");
  code = drpc("sim", "echo", "--schedule", path, NULL);
  CHECK_EQ_INT(code, 0);
  CHECK_CONTAINS(out, "run: ok");
  unlink(path);
}

/* drpc bench sim runs (a few rounds here) and reports its figures as JSON,
 * each run made --repeat times and checked to hash the same. */
static void test_bench_sim_json(void) {
  int code = drpc("bench", "sim", "--iters", "5", "--think-ms", "1", "--repeat",
                  "3", "--json", NULL);
  CHECK_EQ_INT(code, 0);
  CHECK_CONTAINS(out, "\"deliveries_per_s\": ");
  CHECK_CONTAINS(out, "\"repeat\": 3");
  CHECK_CONTAINS(out, "\"sim_to_wall\": ");
  CHECK(drpc("bench", "sim", "--repeat", "0", NULL) != 0);
}

int main(void) {
  it_setup(110);
  RUN(test_help);
  RUN(test_bad_arguments);
  RUN(test_store_serves_workers);
  RUN(test_rank0_refuses_a_foreign_port);
  RUN(test_worker_sigterm_in_rendezvous);
  RUN(test_worker_sigterm_while_serving);
  RUN(test_demo);
  RUN(test_sim_shrink_planted);
  RUN(test_bench_sim_json);
  return test_finish();
}
