/* Integration: RPC timeouts across processes. A per-call timeout fails the
 * call long before the remote function finishes, with the reference's
 * text; 0 never expires; unset uses the agent default, which comes from
 * the options (drpc_init, `drpc worker --rpc-timeout`) and changes only
 * for calls sent after drpc_agent_set_rpc_timeout. */
#include <stdbool.h>
#include <unistd.h>

#include "test.h"

#include "it_util.h"

#define WORLD 3
#define TIMEOUT_TEXT "and will now be marked with an error"

static char init[128];

static drpc_value *sleep_args(double s) {
  return drpc_value_list_of(1, drpc_value_float(s));
}

/* Starts sleep(s) on dst with the given timeout; returns the future. */
static drpc_future *start_sleep(drpc_agent *a, const char *dst, double s,
                                double timeout_s) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_future *f = NULL;
  drpc_value *args = sleep_args(s);
  int rc = drpc_rpc_async(a, dst, DRPC_FUNCTION, "sleep", args, NULL, timeout_s,
                          &f, &err);
  drpc_value_free(args);
  CHECK_EQ_INT(rc, 0);
  if (rc)
    fprintf(stderr, "  rpc_async: %s\n", drpc_error_message(&err));
  drpc_error_clear(&err);
  return f;
}

/* Waits for f (bounded) and checks it timed out after about
 * expect_ms, with the reference's message. */
static void expect_timeout(drpc_future *f, double t0, unsigned expect_ms,
                           const char *prefix) {
  drpc_error err = DRPC_ERROR_INIT;
  int rc = f ? drpc_future_get(f, 15, NULL, &err) : DRPC_EINVAL;
  double took = it_now() - t0;
  char want[160];
  snprintf(want, sizeof want,
           "%sRPC ran for more than set timeout (%u ms) " TIMEOUT_TEXT, prefix,
           expect_ms);
  CHECK_EQ_INT(rc, DRPC_ETIMEOUT);
  CHECK_STR_EQ(err.msg, want);
  /* Not before the timeout, and far before the function would end. */
  CHECK(took >= expect_ms / 1000.0 - 0.01);
  CHECK(took < expect_ms / 1000.0 + 1.0);
  if (took >= expect_ms / 1000.0 + 1.0)
    fprintf(stderr, "  timeout of %u ms fired after %.3f s\n", expect_ms, took);
  drpc_error_clear(&err);
  drpc_future_decref(f);
}

static void expect_ok(drpc_future *f, double t0, double at_least_s) {
  drpc_error err = DRPC_ERROR_INIT;
  int rc = f ? drpc_future_get(f, 15, NULL, &err) : DRPC_EINVAL;
  CHECK_EQ_INT(rc, 0);
  if (rc)
    fprintf(stderr, "  expected success: %s\n", drpc_error_message(&err));
  CHECK(it_now() - t0 >= at_least_s - 0.01);
  drpc_error_clear(&err);
  drpc_future_decref(f);
}

static void driver(void *arg) {
  (void)arg;
  it_register_functions();
  drpc_options o;
  drpc_options_default(&o);
  o.init_method = init;
  o.num_worker_threads = 4;
  o.rpc_timeout_s = 3; /* the default every unset call gets */
  drpc_error err = DRPC_ERROR_INIT;
  drpc_agent *a = it_init_driver("w0", 0, WORLD, &o, &err);
  CHECK(a != NULL);
  if (!a) {
    fprintf(stderr, "  drpc_init: %s\n", drpc_error_message(&err));
    drpc_error_clear(&err);
    return;
  }
  CHECK(drpc_agent_rpc_timeout(a) == 3.0);

  /* Long ones in the background: the default from the options (3 s), and
   * w2's own default from `drpc worker --rpc-timeout 2` on its nested
   * call. */
  double t_long = it_now();
  drpc_future *f_opts = start_sleep(a, "w1", 5, DRPC_UNSET_RPC_TIMEOUT);
  drpc_future *f_cli = NULL;
  drpc_value *fwd = drpc_value_list_of(
      3, drpc_value_str("w1"), drpc_value_str("sleep"), drpc_value_float(4));
  CHECK_EQ_INT(drpc_rpc_async(a, "w2", DRPC_FUNCTION, "forward", fwd, NULL, 10,
                              &f_cli, &err),
               0);
  drpc_value_free(fwd);

  /* Per-call timeouts beat the default, to a forked and an exec'd
   * worker. */
  double t0 = it_now();
  expect_timeout(start_sleep(a, "w1", 3, 0.2), t0, 200, "");
  t0 = it_now();
  expect_timeout(start_sleep(a, "w2", 3, 0.5), t0, 500, "");

  /* The default changes for later calls only; 0 never expires. */
  CHECK_EQ_INT(drpc_agent_set_rpc_timeout(a, 0.1, &err), 0);
  CHECK(drpc_agent_rpc_timeout(a) == 0.1);
  t0 = it_now();
  drpc_future *never = start_sleep(a, "w1", 0.6, 0);
  drpc_future *dflt = start_sleep(a, "w2", 0.6, DRPC_UNSET_RPC_TIMEOUT);
  expect_timeout(dflt, t0, 100, "");
  expect_ok(never, t0, 0.6);
  CHECK_EQ_INT(drpc_agent_set_rpc_timeout(a, 2, &err), 0);
  t0 = it_now();
  drpc_future *before = start_sleep(a, "w2", 0.5, DRPC_UNSET_RPC_TIMEOUT);
  CHECK_EQ_INT(drpc_agent_set_rpc_timeout(a, 0.05, &err), 0);
  drpc_future *after = start_sleep(a, "w2", 0.5, DRPC_UNSET_RPC_TIMEOUT);
  expect_timeout(after, t0, 50, "");
  expect_ok(before, t0, 0.5);
  CHECK_EQ_INT(drpc_agent_set_rpc_timeout(a, -1, &err), DRPC_EINVAL);
  CHECK_CONTAINS(err.msg, "RPC Timeout must be non-negative");
  drpc_error_clear(&err);
  CHECK_EQ_INT(drpc_agent_set_rpc_timeout(a, 20, &err), 0);

  /* The background calls. */
  expect_timeout(f_cli, t_long, 2000, "Error on Node 2: ");
  expect_timeout(f_opts, t_long, 3000, "");

  /* Late responses to timed-out calls are dropped; the workers still
   * serve. */
  for (int w = 1; w < WORLD; w++) {
    char dst[8];
    snprintf(dst, sizeof dst, "w%d", w);
    drpc_value *v = NULL;
    CHECK_EQ_INT(drpc_rpc_sync(a, dst, DRPC_FUNCTION, "whoami", NULL, NULL,
                               DRPC_UNSET_RPC_TIMEOUT, &v, &err),
                 0);
    CHECK(v && v->kind == DRPC_VAL_STR && strcmp(v->u.s.data, dst) == 0);
    drpc_value_free(v);
  }
  drpc_value *m = drpc_agent_debug_info(a);
  const drpc_value *to = drpc_dict_get(m, "agent.timeouts");
  CHECK(to && to->kind == DRPC_VAL_STR && strcmp(to->u.s.data, "5") == 0);
  drpc_value_free(m);

  CHECK_EQ_INT(drpc_shutdown(a, true, 20, &err), 0);
  if (err.code)
    fprintf(stderr, "  shutdown: %s\n", drpc_error_message(&err));
  drpc_error_clear(&err);
}

static void test_timeouts(void) {
  for (int attempt = 0; attempt < IT_PORT_ATTEMPTS; attempt++) {
    snprintf(init, sizeof init, "tcp://127.0.0.1:%d", it_free_port());
    it_worker w1, w2;
    it_worker_default(&w1);
    w1.name = "w1";
    w1.rank = 1;
    w1.world = WORLD;
    w1.init_method = init;
    w1.threads = 8;
    w2 = w1;
    w2.name = "w2";
    w2.rank = 2;
    w2.threads = 4;
    w2.style = IT_EXEC;
    w2.rpc_timeout_s = 2;
    pid_t pids[2] = {it_start_worker(&w1), it_start_worker(&w2)};
    double t0 = it_now();
    it_checked d = it_fork_checked("timeouts", driver, NULL, 55);
    int code = it_join_watch(&d, 55, pids, 2);
    if (code == IT_EXIT_RETRY) {
      it_kill(pids[0]);
      it_kill(pids[1]);
      continue;
    }
    for (int i = 0; i < 2; i++) {
      int st = 0;
      bool ended = it_wait(pids[i], 15, &st);
      CHECK(ended && it_exited_ok(st));
      it_kill(pids[i]);
    }
    fprintf(stderr, "  timeouts done in %.2f s\n", it_now() - t0);
    return;
  }
  CHECK(!"the rendezvous port was taken on every attempt");
}

int main(void) {
  it_setup(110);
  RUN(test_timeouts);
  return test_finish();
}
