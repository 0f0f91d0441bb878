/* Integration: drpc_agent_sync is a barrier across the group, and
 * drpc_agent_join (join without shutdown) returns on every worker only once
 * no worker anywhere has calls in flight. Three forked workers over
 * loopback TCP. */
#include <stdint.h>
#include <stdio.h>

#include "test.h"

#include "it_util.h"

#define WORLD 3
#define LATE_S 0.3 /* how late w2 reaches the barrier */
#define SLOW_S 0.4 /* w0's call on w1 that join must wait for */

static char init[128];

/* Exit code bits say what went wrong in the child. */
enum {
  BAD_INIT = 1,
  BAD_SYNC = 2,
  BAD_SYNC_EARLY = 4,
  BAD_JOIN = 8,
  BAD_JOIN_EARLY = 16,
  BAD_CALL = 32,
  BAD_SHUTDOWN = 64,
};

static int worker(void *arg) {
  int rank = (int)(intptr_t)arg;
  char name[8];
  snprintf(name, sizeof name, "w%d", rank);
  it_register_functions();
  drpc_options o;
  drpc_options_default(&o);
  o.init_method = init;
  o.shutdown_timeout_s = 20;
  drpc_error err = DRPC_ERROR_INIT;
  drpc_agent *a = it_init_driver(name, rank, WORLD, &o, &err);
  if (!a) {
    fprintf(stderr, "%s: %s\n", name, drpc_error_message(&err));
    return BAD_INIT;
  }
  int bad = 0;

  /* sync: nobody leaves the barrier before the late worker arrives. */
  double t0 = it_now();
  if (rank == 2)
    it_sleep(LATE_S);
  if (drpc_agent_sync(a, 10, &err)) {
    fprintf(stderr, "%s: sync: %s\n", name, drpc_error_message(&err));
    bad |= BAD_SYNC;
  }
  if (it_now() - t0 < LATE_S - 0.05)
    bad |= BAD_SYNC_EARLY;

  /* join: w0 has a slow call in flight on w1; every worker's join waits
   * for it, the idle ones included. */
  drpc_future *f = NULL;
  double t1 = it_now();
  if (rank == 0) {
    drpc_value *args = drpc_value_list_of(1, drpc_value_float(SLOW_S));
    if (drpc_rpc_async(a, "w1", DRPC_FUNCTION, "sleep", args, NULL, 30, &f,
                       &err))
      bad |= BAD_CALL;
    drpc_value_free(args);
  }
  if (drpc_agent_join(a, 10, &err)) {
    fprintf(stderr, "%s: join: %s\n", name, drpc_error_message(&err));
    bad |= BAD_JOIN;
  }
  if (it_now() - t1 < SLOW_S - 0.1)
    bad |= BAD_JOIN_EARLY;
  if (f) {
    if (!drpc_future_done(f) || drpc_future_error(f, NULL) != 0)
      bad |= BAD_CALL;
    drpc_future_decref(f);
  }
  drpc_error_clear(&err);
  if (drpc_shutdown(a, true, -1, &err)) {
    fprintf(stderr, "%s: shutdown: %s\n", name, drpc_error_message(&err));
    bad |= BAD_SHUTDOWN;
  }
  drpc_error_clear(&err);
  return bad;
}

static void test_sync_and_join(void) {
  snprintf(init, sizeof init, "tcp://127.0.0.1:%d", it_free_port());
  pid_t pids[WORLD];
  for (int r = 0; r < WORLD; r++)
    pids[r] = it_fork(worker, (void *)(intptr_t)r, 60);
  for (int r = 0; r < WORLD; r++) {
    int st = 0;
    bool ended = it_wait(pids[r], 45, &st);
    CHECK(ended);
    if (ended && !it_exited_ok(st))
      fprintf(stderr, "  w%d exited with %d\n", r, it_exit_code(st));
    CHECK_EQ_INT(ended ? it_exit_code(st) : -1, 0);
  }
}

int main(void) {
  it_setup(90);
  RUN(test_sync_and_join);
  return test_finish();
}
