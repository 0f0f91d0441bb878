/* The checkers' self-test: with the core's test-only bug switched on (a
 * lost connection does not fail the calls pending on it), the simulator
 * must report futures that never complete; with a second one (calls run
 * twice) it must report the request that ran twice; with them off the
 * very same runs pass. A test that cannot fail is a defect, and so is a
 * checker. */
#include <stdint.h>

#include "drpc/sim.h"
#include "sim_child.h"
#include "test.h"

/* core/agent.c: the switch exists only for this self-test. */
extern int drpc_test_fault_skip_fail_on_reset;
extern int drpc_test_fault_run_twice;

/* A schedule that resets every connection of w0 while echo calls are in
 * flight (echo sends half its calls without a timeout). */
static const char *const reset_schedule =
    "{\"scenario\": \"echo\", \"workers\": 3, \"seed\": \"7\","
    " \"fault_end_ns\": \"20000000\","
    " \"faults\": [{\"kind\": \"reset\", \"at_ns\": \"3000000\","
    " \"a\": \"1\", \"b\": \"6\"}, {\"kind\": \"reset\", \"at_ns\": "
    "\"6000000\", \"a\": \"1\", \"b\": \"6\"}]}";

static void run_schedule(bool bug, drpc_sim_result *r) {
  drpc_sim_config c;
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_sim_config_from_json(&c, reset_schedule, &err), 0);
  drpc_test_fault_skip_fail_on_reset = bug;
  CHECK_EQ_INT(drpc_sim_run(&c, r, &err), 0);
  drpc_test_fault_skip_fail_on_reset = 0;
  drpc_error_clear(&err);
  drpc_sim_config_clear(&c);
}

static void schedule_body(void) {
  drpc_sim_result r;
  run_schedule(false, &r);
  if (!r.ok)
    fprintf(stderr, "without the bug: %s\n", r.what);
  CHECK(r.ok);
  CHECK(r.faults_applied == 2);
  run_schedule(true, &r);
  CHECK(!r.ok);
  CHECK_CONTAINS(r.what, "never completed");
  /* The violation names when it was seen: after the resets. */
  CHECK(r.violation_ns > 6000000);
  fprintf(stderr, "  caught: t=%.6fs %s\n", (double)r.violation_ns / 1e9,
          r.what);
}

/* Seeds drawn with faults: the bug is caught in many of them, and every
 * seed that catches it passes without it. */
static void seeds_body(void) {
  int caught = 0, clean_fail = 0;
  for (uint64_t seed = 1; seed <= 20; seed++) {
    drpc_sim_config c;
    drpc_sim_result r;
    drpc_error err = DRPC_ERROR_INIT;
    CHECK_EQ_INT(
        drpc_sim_config_draw(&c, "echo", 4, 0, seed, false, true, &err), 0);
    drpc_test_fault_skip_fail_on_reset = 1;
    CHECK_EQ_INT(drpc_sim_run(&c, &r, &err), 0);
    drpc_test_fault_skip_fail_on_reset = 0;
    if (!r.ok) {
      CHECK_CONTAINS(r.what, "never completed");
      caught++;
    }
    CHECK_EQ_INT(drpc_sim_run(&c, &r, &err), 0);
    if (!r.ok) {
      clean_fail++;
      fprintf(stderr, "seed %llu fails without the bug: %s\n",
              (unsigned long long)seed, r.what);
    }
    drpc_error_clear(&err);
    drpc_sim_config_clear(&c);
  }
  fprintf(stderr, "  planted bug caught in %d of 20 seeds\n", caught);
  CHECK(caught >= 5);
  CHECK_EQ_INT(clean_fail, 0);
}

/* The second planted bug: calls handed to the executor twice. The
 * at-most-once checker reports the request, its caller and where it ran;
 * without the bug the same run passes. */
static void run_twice_body(void) {
  for (int bug = 0; bug < 2; bug++) {
    drpc_sim_config c;
    drpc_sim_result r;
    drpc_error err = DRPC_ERROR_INIT;
    CHECK_EQ_INT(drpc_sim_config_draw(&c, "echo", 3, 0, 1, false, false, &err),
                 0);
    drpc_test_fault_run_twice = bug;
    CHECK_EQ_INT(drpc_sim_run(&c, &r, &err), 0);
    drpc_test_fault_run_twice = 0;
    CHECK_EQ_INT(r.ok, !bug);
    if (bug) {
      CHECK_CONTAINS(r.what, "safety: request ");
      CHECK_CONTAINS(r.what, " ran 2 times on w");
      fprintf(stderr, "  caught: %s\n", r.what);
    }
    drpc_sim_result_clear(&r);
    drpc_error_clear(&err);
    drpc_sim_config_clear(&c);
  }
}

static void test_planted_run_twice(void) {
  sim_in_child(run_twice_body);
}

static void test_planted_schedule(void) {
  sim_in_child(schedule_body);
}
static void test_planted_seeds(void) {
  sim_in_child(seeds_body);
}

int main(void) {
  RUN(test_planted_schedule);
  RUN(test_planted_seeds);
  RUN(test_planted_run_twice);
  return test_finish();
}
