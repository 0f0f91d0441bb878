/* The RRef scenarios in the simulator: ps and rref_chain run clean without
 * faults with every RRef counter zero after shutdown on every worker, pass
 * every safety and liveness check over swarm and plain-fault seeds, and
 * ps runs are deterministic. The RRef checker's self-test plants a
 * counting bug in the core and must see it. */
#include <stdint.h>

#include "drpc/sim.h"
#include "sim_child.h"
#include "test.h"

/* core/rref.c: the switch exists only for the checker's self-test. */
extern int drpc_test_fault_miscount_forks;

#define SWARM_SEEDS 200
#define PLAIN_SEEDS 15

static int draw_run(const char *scn, int workers, uint64_t seed, bool swarm,
                    bool faults, bool trace, drpc_sim_result *r) {
  drpc_sim_config c;
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_sim_config_draw(&c, scn, workers, 0, seed, swarm, faults, &err);
  if (rc == 0) {
    c.trace = trace;
    rc = drpc_sim_run(&c, r, &err);
    drpc_sim_config_clear(&c);
  }
  if (rc)
    fprintf(stderr, "%s seed %llu: %s\n", scn, (unsigned long long)seed,
            drpc_error_message(&err));
  drpc_error_clear(&err);
  return rc;
}

/* No faults: every check passes and every worker's four RRef counters
 * were zero when its graceful shutdown stopped the agent. */
static void clean_body(void) {
  static const char *const scns[] = {"ps", "rref_chain"};
  static const int workers[] = {2, 3, 5, 8, 16};
  for (size_t i = 0; i < 2; i++)
    for (size_t w = 0; w < sizeof workers / sizeof workers[0]; w++)
      for (uint64_t seed = 1; seed <= 3; seed++) {
        drpc_sim_result r;
        CHECK_EQ_INT(
            draw_run(scns[i], workers[w], seed, seed == 3, false, false, &r),
            0);
        if (!r.ok)
          fprintf(stderr, "%s workers %d seed %llu: %s\n", scns[i], workers[w],
                  (unsigned long long)seed, r.what);
        CHECK(r.ok);
        CHECK(r.executions > 0);
        CHECK(r.deliveries > 0);
        CHECK(!r.abandoned);
        CHECK_EQ_INT(r.tolerated, 0);
        CHECK_EQ_INT(r.rref_nodes_left, 0);
        for (int k = 0; k < 4; k++)
          CHECK_EQ_INT(r.rref_left[k], 0);
        drpc_sim_result_clear(&r);
      }
}

static void sweep(const char *scn, uint64_t first, int n, bool swarm,
                  int max_workers) {
  int failing = 0, dirty = 0;
  uint64_t faults = 0, crashed = 0, tolerated = 0;
  for (uint64_t seed = first; seed < first + (uint64_t)n; seed++) {
    drpc_sim_result r;
    int workers = 2 + (int)(seed % (uint64_t)(max_workers - 1));
    if (draw_run(scn, workers, seed, swarm, true, false, &r)) {
      failing++;
      continue;
    }
    faults += r.faults_applied;
    crashed += (uint64_t)r.crashed;
    tolerated += r.tolerated;
    dirty += r.rref_nodes_left > 0;
    if (!r.ok) {
      failing++;
      fprintf(stderr,
              "VIOLATION seed=%llu t=%.6fs: %s\n  reproduce: drpc sim %s "
              "--workers %d --seed %llu%s\n",
              (unsigned long long)seed, (double)r.violation_ns / 1e9, r.what,
              scn, workers, (unsigned long long)seed, swarm ? " --swarm" : "");
    }
    drpc_sim_result_clear(&r);
  }
  fprintf(stderr,
          "  %s %s: %d seeds, %llu faults applied, %llu crashes, %llu failed "
          "calls tolerated, RRefs left behind in %d runs\n",
          scn, swarm ? "swarm" : "plain", n, (unsigned long long)faults,
          (unsigned long long)crashed, (unsigned long long)tolerated, dirty);
  CHECK_EQ_INT(failing, 0);
  /* The sweep must inject faults and see calls fail, or it proves
   * nothing about tolerating them. */
  CHECK(faults > 0);
  CHECK(tolerated > 0);
}

static void ps_body(void) {
  sweep("ps", 1000, SWARM_SEEDS, true, 16);
  sweep("ps", 2000, PLAIN_SEEDS, false, 8);
}
static void chain_body(void) {
  sweep("rref_chain", 1000, SWARM_SEEDS, true, 8);
  sweep("rref_chain", 2000, PLAIN_SEEDS, false, 8);
}

/* ps under faults twice per seed: the same events, hash for hash. */
static void determinism_body(void) {
  for (uint64_t seed = 1; seed <= 4; seed++) {
    drpc_sim_result r1, r2;
    CHECK_EQ_INT(draw_run("ps", 6, seed, seed % 2 == 0, true, true, &r1), 0);
    CHECK_EQ_INT(draw_run("ps", 6, seed, seed % 2 == 0, true, true, &r2), 0);
    CHECK(r1.ntrace > 0);
    CHECK_EQ_INT(r1.events, r2.events);
    CHECK(r1.hash == r2.hash);
    CHECK_EQ_INT(r1.tolerated, r2.tolerated);
    size_t d = drpc_sim_trace_diff(&r1, &r2);
    if (d != SIZE_MAX) {
      char a[256];
      drpc_sim_trace_format(&r1.trace[d], a, sizeof a);
      fprintf(stderr, "ps seed %llu diverges at event %zu: %s\n",
              (unsigned long long)seed, d, a);
    }
    CHECK(d == SIZE_MAX);
    drpc_sim_result_clear(&r1);
    drpc_sim_result_clear(&r2);
  }
}

/* The RRef checker can fail: with forks miscounted the owner's num_forks
 * is left non-zero at shutdown, and the run says so; without the bug the
 * same run passes. */
static void checker_body(void) {
  drpc_sim_result r;
  drpc_test_fault_miscount_forks = 1;
  CHECK_EQ_INT(draw_run("ps", 3, 1, false, false, false, &r), 0);
  drpc_test_fault_miscount_forks = 0;
  CHECK(!r.ok);
  CHECK_CONTAINS(r.what, "num_forks");
  CHECK(r.rref_nodes_left >= 1);
  CHECK(r.rref_left[3] >= 2); /* both trainers' shards on w0 */
  fprintf(stderr, "  caught: %s\n", r.what);
  drpc_sim_result_clear(&r);
  CHECK_EQ_INT(draw_run("ps", 3, 1, false, false, false, &r), 0);
  CHECK(r.ok);
  CHECK_EQ_INT(r.rref_nodes_left, 0);
  drpc_sim_result_clear(&r);
}

static void test_clean(void) {
  sim_in_child(clean_body);
}
/* The planted run stops at its violation and abandons its agents. */
static void test_checker_catches_count(void) {
  sim_in_child(checker_body);
}
static void test_ps_sweep(void) {
  sim_in_child(ps_body);
}
static void test_chain_sweep(void) {
  sim_in_child(chain_body);
}
static void test_ps_determinism(void) {
  sim_in_child(determinism_body);
}

int main(void) {
  RUN(test_clean);
  RUN(test_checker_catches_count);
  RUN(test_ps_sweep);
  RUN(test_chain_sweep);
  RUN(test_ps_determinism);
  return test_finish();
}
