/* Simulator basics: every scenario runs clean (no faults) and passes its
 * checks without abandoning anything, runs are deterministic (20 seeds
 * under faults), the determinism check tells runs apart, schedules survive
 * a JSON round trip, bad input gets clear errors and a sampled fanout of
 * 256 workers runs in seconds. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "drpc/sim.h"
#include "sim_child.h"
#include "test.h"

static const char *const scenarios[] = {"echo", "fanout", "timeouts",
                                        "shutdown_storm"};
#define NSCN (sizeof scenarios / sizeof scenarios[0])

static int draw(drpc_sim_config *c, const char *scn, int workers, uint64_t seed,
                bool swarm, bool faults) {
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_sim_config_draw(c, scn, workers, 0, seed, swarm, faults, &err);
  if (rc)
    fprintf(stderr, "draw %s: %s\n", scn, drpc_error_message(&err));
  drpc_error_clear(&err);
  return rc;
}

static int run(drpc_sim_config *c, drpc_sim_result *r) {
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_sim_run(c, r, &err);
  if (rc)
    fprintf(stderr, "run %s: %s\n", c->scenario, drpc_error_message(&err));
  else if (!r->ok)
    fprintf(stderr, "%s seed %llu: %s\n", c->scenario,
            (unsigned long long)c->seed, r->what);
  drpc_error_clear(&err);
  return rc;
}

/* No faults: every check passes, every call ran once, nothing leaks. */
static void test_clean_runs(void) {
  const int workers[] = {1, 2, 5};
  for (size_t i = 0; i < NSCN; i++)
    for (size_t w = 0; w < 3; w++)
      for (uint64_t seed = 1; seed <= 3; seed++) {
        drpc_sim_config c;
        drpc_sim_result r;
        CHECK_EQ_INT(draw(&c, scenarios[i], workers[w], seed, seed == 3, false),
                     0);
        CHECK_EQ_INT(run(&c, &r), 0);
        CHECK(r.ok);
        CHECK(r.calls > 0);
        CHECK(r.deliveries > 0 || workers[w] == 1);
        CHECK_EQ_INT(r.calls, r.executions);
        CHECK(!r.abandoned);
        CHECK_EQ_INT(r.crashed, 0);
        drpc_sim_result_clear(&r);
        drpc_sim_config_clear(&c);
      }
}

/* The same configuration twice gives the same events, hash for hash. */
static void test_determinism(void) {
  int diverged = 0;
  for (uint64_t seed = 1; seed <= 20; seed++) {
    drpc_sim_config c;
    drpc_sim_result r1, r2;
    const char *scn = scenarios[seed % NSCN];
    CHECK_EQ_INT(draw(&c, scn, 4, seed, seed % 2 == 0, true), 0);
    c.trace = true;
    CHECK_EQ_INT(run(&c, &r1), 0);
    CHECK_EQ_INT(run(&c, &r2), 0);
    CHECK(r1.ntrace > 0);
    CHECK_EQ_INT(r1.events, r2.events);
    CHECK(r1.hash == r2.hash);
    size_t d = drpc_sim_trace_diff(&r1, &r2);
    if (d != SIZE_MAX) {
      diverged++;
      char a[256];
      drpc_sim_trace_format(&r1.trace[d], a, sizeof a);
      fprintf(stderr, "%s seed %llu diverges at event %zu: %s\n", scn,
              (unsigned long long)seed, d, a);
    }
    drpc_sim_result_clear(&r1);
    drpc_sim_result_clear(&r2);
    drpc_sim_config_clear(&c);
  }
  CHECK_EQ_INT(diverged, 0);
}

static void determinism_in_child(void) {
  sim_in_child(test_determinism);
}

/* The determinism check can fail: runs of two seeds differ, and the first
 * differing event is found. */
static void test_trace_diff_finds_difference(void) {
  drpc_sim_config c1, c2;
  drpc_sim_result r1, r2;
  CHECK_EQ_INT(draw(&c1, "echo", 3, 11, false, false), 0);
  CHECK_EQ_INT(draw(&c2, "echo", 3, 12, false, false), 0);
  c1.trace = c2.trace = true;
  CHECK_EQ_INT(run(&c1, &r1), 0);
  CHECK_EQ_INT(run(&c2, &r2), 0);
  size_t d = drpc_sim_trace_diff(&r1, &r2);
  CHECK(d != SIZE_MAX);
  CHECK(d < r1.ntrace);
  CHECK(r1.hash != r2.hash);
  /* Identical runs compare equal. */
  CHECK(drpc_sim_trace_diff(&r1, &r1) == SIZE_MAX);
  char line[256];
  drpc_sim_trace_format(&r1.trace[0], line, sizeof line);
  CHECK_CONTAINS(line, "node=");
  drpc_sim_result_clear(&r1);
  drpc_sim_result_clear(&r2);
  drpc_sim_config_clear(&c1);
  drpc_sim_config_clear(&c2);
}

/* A schedule written as JSON replays the same run. */
static void test_json_round_trip(void) {
  drpc_sim_config c, back;
  drpc_sim_result r1, r2;
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(draw(&c, "fanout", 4, 5, true, true), 0);
  char *text = drpc_sim_config_to_json(&c);
  CHECK(text != NULL);
  CHECK_EQ_INT(drpc_sim_config_from_json(&back, text, &err), 0);
  CHECK_STR_EQ(back.scenario, "fanout");
  CHECK_EQ_INT(back.workers, 4);
  CHECK_EQ_INT(back.nfaults, c.nfaults);
  CHECK(back.seed == c.seed);
  CHECK(back.fault_end_ns == c.fault_end_ns);
  for (size_t i = 0; i < c.nfaults && i < back.nfaults; i++) {
    CHECK_EQ_INT(back.faults[i].kind, c.faults[i].kind);
    CHECK(back.faults[i].at_ns == c.faults[i].at_ns);
    CHECK(back.faults[i].a == c.faults[i].a);
  }
  CHECK_EQ_INT(run(&c, &r1), 0);
  CHECK_EQ_INT(run(&back, &r2), 0);
  CHECK(r1.hash == r2.hash);
  free(text);
  drpc_sim_result_clear(&r1);
  drpc_sim_result_clear(&r2);
  drpc_sim_config_clear(&c);
  drpc_sim_config_clear(&back);
  drpc_error_clear(&err);
}

static void test_bad_input(void) {
  drpc_sim_config c;
  drpc_sim_result r;
  drpc_error err = DRPC_ERROR_INIT;
  CHECK(drpc_sim_config_from_json(&c, "[1, 2]", &err) != 0);
  CHECK_CONTAINS(drpc_error_message(&err), "not a JSON object");
  drpc_error_clear(&err);
  CHECK(drpc_sim_config_from_json(
            &c, "{\"scenario\": \"echo\", \"workers\": 4097}", &err) != 0);
  CHECK_CONTAINS(drpc_error_message(&err), "workers");
  drpc_error_clear(&err);
  CHECK(drpc_sim_config_from_json(&c,
                                  "{\"scenario\": \"echo\", \"faults\": "
                                  "[{\"kind\": \"meteor\"}]}",
                                  &err) != 0);
  CHECK_CONTAINS(drpc_error_message(&err), "faults");
  drpc_error_clear(&err);
  CHECK(drpc_sim_config_draw(&c, "echo", DRPC_SIM_MAX_NODES + 1, 0, 1, false,
                             false, &err) != 0);
  drpc_error_clear(&err);
  CHECK_EQ_INT(draw(&c, "nosuch", 2, 1, false, false), 0);
  CHECK_EQ_INT(drpc_sim_run(&c, &r, &err), DRPC_ENOTFOUND);
  CHECK_CONTAINS(drpc_error_message(&err), "unknown scenario");
  drpc_error_clear(&err);
  drpc_sim_config_clear(&c);
  /* ps runs with 2 to 64 workers. */
  CHECK_EQ_INT(draw(&c, "ps", 2, 1, false, false), 0);
  c.workers = 1;
  CHECK_EQ_INT(drpc_sim_run(&c, &r, &err), DRPC_EINVAL);
  CHECK_CONTAINS(drpc_error_message(&err), "2 to 64 workers");
  drpc_error_clear(&err);
  drpc_sim_config_clear(&c);
}

/* Above 64 workers fanout samples 8 peers per worker and round: 256
 * workers finish within seconds, every call runs once, twice the same. */
static void test_sampled_fanout(void) {
  const int workers = 256, iters = 5, sample = 8;
  uint64_t hash[2] = {0, 0};
  for (int k = 0; k < 2; k++) {
    drpc_sim_config c;
    drpc_sim_result r;
    drpc_error err = DRPC_ERROR_INIT;
    CHECK_EQ_INT(drpc_sim_config_draw(&c, "fanout", workers, iters, 1, false,
                                      false, &err),
                 0);
    drpc_error_clear(&err);
    CHECK_EQ_INT(run(&c, &r), 0);
    CHECK(r.ok);
    CHECK_EQ_INT(r.calls, (uint64_t)workers * iters * sample);
    CHECK_EQ_INT(r.calls, r.executions);
    CHECK(!r.abandoned);
    CHECK(r.wall_s < 20.0);
    hash[k] = r.hash;
    drpc_sim_result_clear(&r);
    drpc_sim_config_clear(&c);
  }
  CHECK_EQ_INT(hash[0], hash[1]);
}

/* The byte hash of the determinism check is the same on every CPU: the
 * AVX2 code (where this machine has it) agrees with the portable code on
 * every length and alignment, and a changed or moved byte changes it. */
static void test_hash_bytes_portable(void) {
  static uint8_t buf[4096 + 64];
  uint64_t x = 0x12345;
  for (size_t i = 0; i < sizeof buf; i++) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    buf[i] = (uint8_t)(x >> 56);
  }
  bool avx2 = drpc_sim_hash_bytes(1, buf, 64, 2) != 0;
  for (size_t off = 0; off < 8; off++)
    for (size_t len = 0; len <= 4096; len += len < 200 ? 1 : 61) {
      uint64_t p = drpc_sim_hash_bytes(off, buf + off, len, 1);
      CHECK(drpc_sim_hash_bytes(off, buf + off, len, 0) == p);
      if (avx2)
        CHECK(drpc_sim_hash_bytes(off, buf + off, len, 2) == p);
    }
  uint64_t h0 = drpc_sim_hash_bytes(7, buf, 4096, 0);
  buf[1000] ^= 1;
  CHECK(drpc_sim_hash_bytes(7, buf, 4096, 0) != h0);
  buf[1000] ^= 1;
  /* Two 64-byte stripes swapped (each lane's sum alone would not see it). */
  uint8_t t[64];
  memcpy(t, buf, 64);
  memcpy(buf, buf + 64, 64);
  memcpy(buf + 64, t, 64);
  CHECK(drpc_sim_hash_bytes(7, buf, 4096, 0) != h0);
  fprintf(stderr, "  avx2 code %s\n",
          avx2 ? "checked against the portable code" : "not available here");
}

/* In clusters of more than 64 nodes a fault mask's bit i names every node
 * n with n % 64 == i: a partition cutting class 1 off from the rest
 * reaches node 65 as well as node 1 (its connections close), and without
 * the fault node 65's do not. */
static bool node_saw_close(const drpc_sim_result *r, int node) {
  for (size_t i = 0; i < r->ntrace; i++) {
    const char *k = drpc_sim_event_name(r->trace[i].kind);
    if (r->trace[i].node == node && k &&
        (strcmp(k, "closed") == 0 || strcmp(k, "reset") == 0))
      return true;
  }
  return false;
}

static void test_masks_past_64_nodes(void) {
  for (int faulted = 0; faulted < 2; faulted++) {
    drpc_sim_config c;
    drpc_sim_result r;
    drpc_error err = DRPC_ERROR_INIT;
    CHECK_EQ_INT(
        drpc_sim_config_draw(&c, "fanout", 100, 4, 1, false, false, &err), 0);
    drpc_error_clear(&err);
    c.trace = true;
    drpc_sim_fault f = {0};
    f.at_ns = 2000000; /* after the connections are up */
    f.dur_ns = 50000000;
    f.kind = DRPC_SIM_PARTITION;
    f.a = 1ull << 1;
    f.b = ~f.a;
    f.node = -1;
    if (faulted) {
      c.faults = malloc(sizeof f);
      CHECK(c.faults != NULL);
      c.faults[0] = f;
      c.nfaults = 1;
      c.fault_end_ns = f.at_ns + f.dur_ns;
    }
    CHECK_EQ_INT(run(&c, &r), 0);
    CHECK(r.ok);
    CHECK_EQ_INT(node_saw_close(&r, 1), faulted);
    CHECK_EQ_INT(node_saw_close(&r, 65), faulted);
    CHECK(!node_saw_close(&r, 66));
    drpc_sim_result_clear(&r);
    drpc_sim_config_clear(&c);
  }
}

int main(void) {
  RUN(test_hash_bytes_portable);
  RUN(test_clean_runs);
  /* Under faults nodes crash and abandon objects: in a child. */
  RUN(determinism_in_child);
  RUN(test_trace_diff_finds_difference);
  RUN(test_json_round_trip);
  RUN(test_bad_input);
  RUN(test_sampled_fanout);
  RUN(test_masks_past_64_nodes);
  return test_finish();
}
