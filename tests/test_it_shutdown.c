/* Integration: graceful shutdown with uneven workloads (PyTorch's
 * test_graceful_shutdown_with_uneven_workload and more). Four workers
 * issue different numbers of slow async calls (direct, nested through
 * workers already shutting down, async execution) and call shutdown
 * without waiting for them; every call completes successfully, and no
 * worker's shutdown returns before the last call anywhere completed. */
#include <fcntl.h>
#include <stdbool.h>
#include <unistd.h>

#include "test.h"

#include "it_util.h"

#define WORLD 4
#define MAX_CALLS 64

static char init[128];
static char log_path[200]; /* one line per worker: times, shared */

typedef struct workload {
  const char *name;
  int rank;
} workload;

/* Calls of one worker and when each completed. */
typedef struct calls {
  drpc_future *f[MAX_CALLS];
  double done_at[MAX_CALLS];
  int n;
} calls;

static void on_done(drpc_future *f, void *arg) {
  (void)f;
  *(double *)arg = it_now();
}

static void issue(drpc_agent *a, calls *c, const char *dst, const char *fn,
                  drpc_value *args) {
  drpc_error err = DRPC_ERROR_INIT;
  if (c->n == MAX_CALLS) {
    CHECK(!"too many calls");
    drpc_value_free(args);
    return;
  }
  drpc_future *f = NULL;
  int rc = drpc_rpc_async(a, dst, DRPC_FUNCTION, fn, args, NULL, 30, &f, &err);
  CHECK_EQ_INT(rc, 0);
  if (rc == 0) {
    c->f[c->n] = f;
    c->done_at[c->n] = 0;
    drpc_future_add_done_callback(f, on_done, &c->done_at[c->n]);
    c->n++;
  } else {
    fprintf(stderr, "  rpc_async to %s: %s\n", dst, drpc_error_message(&err));
  }
  drpc_value_free(args);
  drpc_error_clear(&err);
}

static drpc_value *sleep_args(double s) {
  return drpc_value_list_of(1, drpc_value_float(s));
}

/* Every call succeeded; returns when the last one completed. */
static double check_all_ok(calls *c, const char *who) {
  double last = 0;
  int ok = 0;
  for (int i = 0; i < c->n; i++) {
    drpc_error err = DRPC_ERROR_INIT;
    /* Done already: graceful shutdown waited for them. */
    bool done = drpc_future_done(c->f[i]);
    int rc = drpc_future_error(c->f[i], &err);
    if (done && rc == 0)
      ok++;
    else
      fprintf(stderr, "  %s: call %d %s: %s\n", who, i,
              done ? "failed" : "not done", drpc_error_message(&err));
    if (c->done_at[i] > last)
      last = c->done_at[i];
    drpc_error_clear(&err);
    drpc_future_decref(c->f[i]);
  }
  CHECK_EQ_INT(ok, c->n);
  return last;
}

static void record(const char *name, int ncalls, double last_done,
                   double shutdown_start, double shutdown_end) {
  char line[256];
  int len = snprintf(line, sizeof line, "%s %d %.6f %.6f %.6f\n", name, ncalls,
                     last_done, shutdown_start, shutdown_end);
  int fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  CHECK(fd >= 0);
  if (fd >= 0) {
    CHECK(write(fd, line, (size_t)len) == len);
    close(fd);
  }
}

static void worker(void *arg) {
  const workload *w = arg;
  it_register_functions();
  drpc_options o;
  drpc_options_default(&o);
  o.init_method = init;
  o.num_worker_threads = 4;
  drpc_error err = DRPC_ERROR_INIT;
  drpc_agent *a =
      w->rank == 0 ? it_init_driver(w->name, 0, WORLD, &o, &err) : NULL;
  if (w->rank != 0 && drpc_init(&a, w->name, w->rank, WORLD, &o, &err))
    a = NULL;
  CHECK(a != NULL);
  if (!a) {
    fprintf(stderr, "  %s: drpc_init: %s\n", w->name, drpc_error_message(&err));
    drpc_error_clear(&err);
    return;
  }
  static calls c;
  switch (w->rank) {
  case 0:
    /* PyTorch's phases: only w1 has work, then only w2, each while the
     * other workers already wait in shutdown. */
    for (int phase = 1; phase <= 2; phase++) {
      int first = c.n;
      for (int i = 0; i < 12; i++)
        issue(a, &c, phase == 1 ? "w1" : "w2", "sleep", sleep_args(0.05));
      CHECK_EQ_INT(
          drpc_future_wait_all(c.f + first, (size_t)(c.n - first), 20, &err),
          0);
    }
    /* And some left in flight at shutdown. */
    for (int i = 0; i < 6; i++)
      issue(a, &c, "w3", "sleep", sleep_args(0.1 + 0.05 * i));
    break;
  case 1:
    break; /* no work: straight to shutdown */
  case 2:
    /* Late, and nested through two workers that are shutting down. */
    it_sleep(0.3);
    for (int i = 0; i < 10; i++)
      issue(a, &c, "w3", "forward",
            drpc_value_list_of(3, drpc_value_str("w1"), drpc_value_str("sleep"),
                               drpc_value_float(0.1)));
    break;
  case 3:
    /* Many, of every length, to everyone, some through async execution. */
    for (int i = 0; i < 30; i++) {
      char dst[8];
      snprintf(dst, sizeof dst, "w%d", i % 3);
      if (i % 5 == 4)
        issue(a, &c, dst, "async_forward",
              drpc_value_list_of(3, drpc_value_str("w1"),
                                 drpc_value_str("sleep"),
                                 drpc_value_float(0.2)));
      else
        issue(a, &c, dst, "sleep", sleep_args(0.02 * (i % 7)));
    }
    break;
  }
  double t0 = it_now();
  int rc = drpc_shutdown(a, true, 30, &err);
  double t1 = it_now();
  CHECK_EQ_INT(rc, 0);
  if (rc)
    fprintf(stderr, "  %s: shutdown: %s\n", w->name, drpc_error_message(&err));
  double last = check_all_ok(&c, w->name);
  record(w->name, c.n, last, t0, t1);
  drpc_error_clear(&err);
}

static void test_uneven_workload(void) {
  static const workload ws[WORLD] = {
      {"w0", 0}, {"w1", 1}, {"w2", 2}, {"w3", 3}};
  it_tmp_path(log_path, sizeof log_path, "times");
  for (int attempt = 0; attempt < IT_PORT_ATTEMPTS; attempt++) {
    snprintf(init, sizeof init, "tcp://127.0.0.1:%d", it_free_port());
    unlink(log_path);
    it_checked c[WORLD];
    for (int r = WORLD - 1; r >= 0; r--)
      c[r] = it_fork_checked(ws[r].name, worker, (void *)&ws[r], 55);
    pid_t others[WORLD - 1] = {c[1].pid, c[2].pid, c[3].pid};
    if (it_join_watch(&c[0], 50, others, WORLD - 1) == IT_EXIT_RETRY) {
      for (int r = 1; r < WORLD; r++)
        it_discard_checked(&c[r]);
      continue;
    }
    for (int r = 1; r < WORLD; r++)
      it_join_checked(&c[r], 15);
    break;
  }
  /* No shutdown returned (and so nobody tore down) before the last call
   * anywhere had completed. */
  FILE *f = fopen(log_path, "r");
  CHECK(f != NULL);
  double last_done = 0, first_end = 1e300;
  int lines = 0, total = 0;
  char name[16];
  int n;
  double done, start, end;
  while (f &&
         fscanf(f, "%15s %d %lf %lf %lf", name, &n, &done, &start, &end) == 5) {
    lines++;
    total += n;
    if (done > last_done)
      last_done = done;
    if (end < first_end)
      first_end = end;
    fprintf(stderr, "  %s: %2d calls, last done %+.3f s, shutdown %+.3f s\n",
            name, n, n ? done - start : 0, end - start);
  }
  if (f)
    fclose(f);
  unlink(log_path);
  CHECK_EQ_INT(lines, WORLD);
  CHECK_EQ_INT(total, 24 + 6 + 10 + 30);
  CHECK(last_done > 0 && last_done <= first_end);
}

/* ---- ungraceful shutdown (PyTorch's test_local_shutdown_with_rpc) ----- */

static char local_init[128];
#define GO_KEY "test/go"

/* w1: a call in each direction is in flight when it shuts down without
 * agreeing with anyone. Its own call fails at once; it returns once its
 * running function is done; the driver's call to it fails naming it. */
static void local_worker(void *arg) {
  (void)arg;
  it_register_functions();
  drpc_options o;
  drpc_options_default(&o);
  o.init_method = local_init;
  o.num_worker_threads = 2;
  drpc_error err = DRPC_ERROR_INIT;
  drpc_agent *a = NULL;
  CHECK_EQ_INT(drpc_init(&a, "w1", 1, 2, &o, &err), 0);
  if (!a) {
    drpc_error_clear(&err);
    return;
  }
  const char *keys[1] = {GO_KEY};
  CHECK_EQ_INT(drpc_store_wait(drpc_agent_store(a), keys, 1, 20, &err), 0);
  drpc_future *f = NULL;
  drpc_value *args = sleep_args(2);
  CHECK_EQ_INT(
      drpc_rpc_async(a, "w0", DRPC_FUNCTION, "sleep", args, NULL, 30, &f, &err),
      0);
  drpc_value_free(args);
  it_sleep(0.2);
  double t0 = it_now();
  CHECK_EQ_INT(drpc_shutdown(a, false, 0, &err), 0);
  double took = it_now() - t0;
  /* It waited for the function it was running (sleep 1, started about
   * 0.2 s before), not for the peer. */
  CHECK(took < 1.0 + 1.5);
  CHECK(drpc_current_agent() == NULL);
  CHECK(f && drpc_future_done(f));
  CHECK_EQ_INT(drpc_future_error(f, &err), DRPC_ESHUTDOWN);
  CHECK_CONTAINS(err.msg, "not gracefully");
  drpc_future_decref(f);
  drpc_error_clear(&err);
}

static void local_driver(void *arg) {
  (void)arg;
  it_register_functions();
  drpc_options o;
  drpc_options_default(&o);
  o.init_method = local_init;
  o.num_worker_threads = 2;
  drpc_error err = DRPC_ERROR_INIT;
  drpc_agent *a = it_init_driver("w0", 0, 2, &o, &err);
  CHECK(a != NULL);
  if (!a) {
    drpc_error_clear(&err);
    return;
  }
  drpc_future *f = NULL;
  drpc_value *args = sleep_args(1);
  CHECK_EQ_INT(
      drpc_rpc_async(a, "w1", DRPC_FUNCTION, "sleep", args, NULL, 30, &f, &err),
      0);
  drpc_value_free(args);
  CHECK_EQ_INT(drpc_store_set_str(drpc_agent_store(a), GO_KEY, "1", &err), 0);
  double t0 = it_now();
  int rc = f ? drpc_future_get(f, 10, NULL, &err) : DRPC_EINVAL;
  /* The peer went away while serving it: an error naming w1, not a
   * response and not the 30 s timeout. */
  CHECK(rc != 0 && rc != DRPC_ETIMEOUT);
  CHECK_CONTAINS(err.msg, "w1");
  CHECK(it_now() - t0 < 5);
  fprintf(stderr, "  call to w1: %s\n", drpc_error_message(&err));
  drpc_future_decref(f);
  /* Its own shutdown is local too. */
  t0 = it_now();
  CHECK_EQ_INT(drpc_shutdown(a, false, 0, &err), 0);
  CHECK(it_now() - t0 < 5);
  drpc_error_clear(&err);
}

static void test_local_shutdown_with_calls(void) {
  for (int attempt = 0; attempt < IT_PORT_ATTEMPTS; attempt++) {
    snprintf(local_init, sizeof local_init, "tcp://127.0.0.1:%d",
             it_free_port());
    it_checked w = it_fork_checked("local w1", local_worker, NULL, 40);
    it_checked d = it_fork_checked("local driver", local_driver, NULL, 40);
    if (it_join_watch(&d, 30, &w.pid, 1) == IT_EXIT_RETRY) {
      it_discard_checked(&w);
      continue;
    }
    it_join_checked(&w, 10);
    return;
  }
  CHECK(!"the rendezvous port was taken on every attempt");
}

int main(void) {
  it_setup(110);
  RUN(test_uneven_workload);
  RUN(test_local_shutdown_with_calls);
  return test_finish();
}
