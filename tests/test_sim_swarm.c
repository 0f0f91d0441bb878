/* Swarm sweeps: every scenario under 200 swarm seeds (some fault kinds off,
 * the rest at very different rates) and 25 plain-fault seeds must pass
 * every safety and liveness check. A failure prints the command that
 * reproduces it. */
#include <stdint.h>

#include "drpc/sim.h"
#include "sim_child.h"
#include "test.h"

#define SWARM_SEEDS 200
#define PLAIN_SEEDS 25

static void sweep(const char *scn, uint64_t first, int n, bool swarm) {
  int failing = 0;
  uint64_t faults = 0, crashed = 0;
  for (uint64_t seed = first; seed < first + (uint64_t)n; seed++) {
    drpc_sim_config c;
    drpc_sim_result r;
    drpc_error err = DRPC_ERROR_INIT;
    int workers = 2 + (int)(seed % 4);
    if (drpc_sim_config_draw(&c, scn, workers, 0, seed, swarm, true, &err) ||
        drpc_sim_run(&c, &r, &err)) {
      fprintf(stderr, "%s seed %llu: %s\n", scn, (unsigned long long)seed,
              drpc_error_message(&err));
      failing++;
    } else {
      faults += r.faults_applied;
      crashed += (uint64_t)r.crashed;
      if (!r.ok) {
        failing++;
        fprintf(stderr,
                "VIOLATION seed=%llu t=%.6fs: %s\n  reproduce: drpc sim %s "
                "--workers %d --seed %llu%s\n",
                (unsigned long long)seed, (double)r.violation_ns / 1e9, r.what,
                scn, workers, (unsigned long long)seed,
                swarm ? " --swarm" : "");
      }
      drpc_sim_result_clear(&r);
    }
    drpc_error_clear(&err);
    drpc_sim_config_clear(&c);
  }
  fprintf(stderr, "  %s %s: %d seeds, %llu faults applied, %llu crashes\n", scn,
          swarm ? "swarm" : "plain", n, (unsigned long long)faults,
          (unsigned long long)crashed);
  CHECK_EQ_INT(failing, 0);
  /* The sweep must actually inject faults, or it proves nothing. */
  CHECK(faults > 0);
}

static void echo_body(void) {
  sweep("echo", 1000, SWARM_SEEDS, true);
  sweep("echo", 2000, PLAIN_SEEDS, false);
}
static void fanout_body(void) {
  sweep("fanout", 1000, SWARM_SEEDS, true);
  sweep("fanout", 2000, PLAIN_SEEDS, false);
}
static void timeouts_body(void) {
  sweep("timeouts", 1000, SWARM_SEEDS, true);
  sweep("timeouts", 2000, PLAIN_SEEDS, false);
}
static void shutdown_storm_body(void) {
  sweep("shutdown_storm", 1000, SWARM_SEEDS, true);
  sweep("shutdown_storm", 2000, PLAIN_SEEDS, false);
}

static void test_echo(void) {
  sim_in_child(echo_body);
}
static void test_fanout(void) {
  sim_in_child(fanout_body);
}
static void test_timeouts(void) {
  sim_in_child(timeouts_body);
}
static void test_shutdown_storm(void) {
  sim_in_child(shutdown_storm_body);
}

int main(void) {
  RUN(test_echo);
  RUN(test_fanout);
  RUN(test_timeouts);
  RUN(test_shutdown_storm);
  return test_finish();
}
