/* Dynamic membership in the simulator: the membership scenario (workers
 * leave and join again while calling each other, under swarm faults with
 * crashes) passes every safety, liveness and convergence check over many
 * seeds and group sizes; runs are deterministic; and a planted bug (a
 * LEAVE answered but not applied) is caught. */
#include <stdint.h>
#include <string.h>

#include "drpc/sim.h"
#include "sim_child.h"
#include "test.h"

extern int drpc_test_fault_skip_leave;

/* Runs seeds [first, first + n); returns the failing count, prints each. */
static int sweep(uint64_t first, int n, int workers, bool swarm,
                 uint64_t *faults, uint64_t *crashed, int *ran) {
  int failing = 0;
  for (uint64_t seed = first; seed < first + (uint64_t)n; seed++) {
    drpc_sim_config c;
    drpc_sim_result r;
    drpc_error err = DRPC_ERROR_INIT;
    int w = workers ? workers : 2 + (int)(seed % 5);
    if (drpc_sim_config_draw(&c, "membership", w, 0, seed, swarm, true, &err) ||
        drpc_sim_run(&c, &r, &err)) {
      fprintf(stderr, "seed %llu: %s\n", (unsigned long long)seed,
              drpc_error_message(&err));
      failing++;
    } else {
      *faults += r.faults_applied;
      *crashed += (uint64_t)r.crashed;
      (*ran)++;
      if (!r.ok) {
        failing++;
        fprintf(stderr,
                "VIOLATION seed=%llu t=%.6fs: %s\n  reproduce: drpc sim "
                "membership --workers %d --seed %llu%s\n",
                (unsigned long long)seed, (double)r.violation_ns / 1e9, r.what,
                w, (unsigned long long)seed, swarm ? " --swarm" : "");
      }
      drpc_sim_result_clear(&r);
    }
    drpc_error_clear(&err);
    drpc_sim_config_clear(&c);
  }
  return failing;
}

static void swarm_body(void) {
  uint64_t faults = 0, crashed = 0;
  int ran = 0;
  CHECK_EQ_INT(sweep(1, 200, 0, true, &faults, &crashed, &ran), 0);
  CHECK_EQ_INT(sweep(5000, 30, 8, true, &faults, &crashed, &ran), 0);
  CHECK_EQ_INT(sweep(9000, 25, 0, false, &faults, &crashed, &ran), 0);
  fprintf(stderr, "  membership: %d runs, %llu faults, %llu crashes\n", ran,
          (unsigned long long)faults, (unsigned long long)crashed);
  /* The sweeps must inject faults and crash workers, or they prove
   * nothing about removal. */
  CHECK(faults > 0);
  CHECK(crashed > 0);
}

static void determinism_body(void) {
  for (uint64_t seed = 1; seed <= 20; seed++) {
    drpc_sim_config c;
    drpc_sim_result r1, r2;
    drpc_error err = DRPC_ERROR_INIT;
    CHECK_EQ_INT(drpc_sim_config_draw(&c, "membership", 4, 0, seed,
                                      seed % 2 == 0, true, &err),
                 0);
    c.trace = true;
    CHECK_EQ_INT(drpc_sim_run(&c, &r1, &err), 0);
    CHECK_EQ_INT(drpc_sim_run(&c, &r2, &err), 0);
    CHECK(r1.ntrace > 0);
    CHECK(r1.hash == r2.hash);
    CHECK(drpc_sim_trace_diff(&r1, &r2) == SIZE_MAX);
    drpc_sim_result_clear(&r1);
    drpc_sim_result_clear(&r2);
    drpc_sim_config_clear(&c);
    drpc_error_clear(&err);
  }
}

/* Without faults the planted bug leaves members listed after they left:
 * every seed must fail, naming membership. */
static void planted_body(void) {
  drpc_test_fault_skip_leave = 1;
  int caught = 0;
  for (uint64_t seed = 1; seed <= 5; seed++) {
    drpc_sim_config c;
    drpc_sim_result r;
    drpc_error err = DRPC_ERROR_INIT;
    CHECK_EQ_INT(
        drpc_sim_config_draw(&c, "membership", 4, 0, seed, false, false, &err),
        0);
    CHECK_EQ_INT(drpc_sim_run(&c, &r, &err), 0);
    if (!r.ok && (strstr(r.what, "converge") || strstr(r.what, "still lists")))
      caught++;
    else
      fprintf(stderr, "seed %llu: planted bug not caught (%s)\n",
              (unsigned long long)seed, r.ok ? "ok" : r.what);
    drpc_sim_result_clear(&r);
    drpc_sim_config_clear(&c);
    drpc_error_clear(&err);
  }
  drpc_test_fault_skip_leave = 0;
  CHECK_EQ_INT(caught, 5);
}

static void test_swarm(void) {
  sim_in_child(swarm_body);
}
static void test_determinism(void) {
  sim_in_child(determinism_body);
}
static void test_planted_leave_bug(void) {
  sim_in_child(planted_body);
}

int main(void) {
  RUN(test_swarm);
  RUN(test_determinism);
  RUN(test_planted_leave_bug);
  return test_finish();
}
