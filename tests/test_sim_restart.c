/* Process restarts in the simulator: a crashed worker comes back as a fresh
 * process (new agent, same name, rank and store), runs its program again,
 * serves calls again, and the run completes with every check passing;
 * restarts survive a JSON round trip, keep runs deterministic, and swarm
 * sweeps that draw them stay clean. A worker that crashes before the
 * rendezvous makes the run say so instead of passing silently. Also: the
 * scheduler's now queue orders events exactly as the heap alone. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "drpc/sim.h"
#include "sim_child.h"
#include "test.h"

/* What the recording hook saw of one node around its restart. */
typedef struct watch {
  int node;
  bool restarted;   /* the restart fault of node was seen */
  int begun_after;  /* calls node began after it */
  int served_after; /* requests node ran after it */
  int served_before;
} watch;

static void on_event(void *ctx, const drpc_event *ev) {
  watch *w = ctx;
  if (ev->kind == DRPC_EV_FAULT && ev->node == w->node && ev->name &&
      strcmp(ev->name, "restart") == 0)
    w->restarted = true;
  if (ev->node != w->node)
    return;
  if (ev->kind == DRPC_EV_OUT_EXECUTE) {
    if (w->restarted)
      w->served_after++;
    else
      w->served_before++;
  }
  if (ev->kind == DRPC_EV_RPC_BEGIN && w->restarted)
    w->begun_after++;
}

static int schedule(drpc_sim_config *c, const char *scn, int workers,
                    const char *faults, uint64_t fault_end_ns) {
  char text[2048];
  snprintf(text, sizeof text,
           "{\"scenario\": \"%s\", \"workers\": %d, \"seed\": \"7\", "
           "\"fault_end_ns\": \"%llu\", \"faults\": [%s]}",
           scn, workers, (unsigned long long)fault_end_ns, faults);
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_sim_config_from_json(c, text, &err);
  if (rc)
    fprintf(stderr, "schedule: %s\n", drpc_error_message(&err));
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

/* echo on a ring of 4 (and fanout): w1 is killed at 3 ms, a fifth of the
 * way through (its neighbours' calls to it fail), and restarted at 5 ms; the
 * new life calls its neighbours again and serves theirs, and the run completes
 * clean. */
static void test_restart_serves_again(void) {
  const char *scns[] = {"echo", "fanout"};
  for (int i = 0; i < 2; i++) {
    drpc_sim_config c;
    drpc_sim_result r;
    CHECK_EQ_INT(schedule(&c, scns[i], 4,
                          "{\"kind\": \"crash\", \"at_ns\": \"3000000\", "
                          "\"node\": 1}, {\"kind\": \"restart\", \"at_ns\": "
                          "\"5000000\", \"node\": 1}",
                          8000000),
                 0);
    watch w = {.node = 1};
    c.record = on_event;
    c.record_ctx = &w;
    CHECK_EQ_INT(run(&c, &r), 0);
    CHECK(r.ok);
    CHECK_EQ_INT(r.crashed, 1);
    CHECK_EQ_INT(r.restarted, 1);
    CHECK_EQ_INT(r.start_failed, 0);
    CHECK(w.restarted);
    CHECK(w.served_before > 0);
    /* The new life works: it calls out and serves its peers' calls. */
    CHECK(w.begun_after > 0);
    CHECK(w.served_after > 0);
    fprintf(stderr,
            "  %s: w1 served %d requests before the crash, %d after "
            "its restart; began %d calls after it\n",
            scns[i], w.served_before, w.served_after, w.begun_after);
    drpc_sim_result_clear(&r);
    drpc_sim_config_clear(&c);
  }
}

/* Runs scn with node crashing at crash_ns and restarting at restart_ns;
 * checks the run, the one restart and that it was seen. */
static void crash_restart(const char *scn, int workers, int node,
                          uint64_t crash_ns, uint64_t restart_ns,
                          uint64_t fault_end_ns, watch *w) {
  char faults[256];
  snprintf(faults, sizeof faults,
           "{\"kind\": \"crash\", \"at_ns\": \"%llu\", \"node\": %d}, "
           "{\"kind\": \"restart\", \"at_ns\": \"%llu\", \"node\": %d}",
           (unsigned long long)crash_ns, node, (unsigned long long)restart_ns,
           node);
  drpc_sim_config c;
  drpc_sim_result r;
  CHECK_EQ_INT(schedule(&c, scn, workers, faults, fault_end_ns), 0);
  w->node = node;
  c.record = on_event;
  c.record_ctx = w;
  CHECK_EQ_INT(run(&c, &r), 0);
  CHECK(r.ok);
  CHECK_EQ_INT(r.restarted, 1);
  CHECK(w->restarted);
  drpc_sim_result_clear(&r);
  drpc_sim_config_clear(&c);
}

/* ps: the server (w0) crashes and restarts: trainers stop using shards of
 * its last life, the run completes; a trainer restarted borrows a new
 * shard and trains again. */
static void test_restart_ps(void) {
  for (int node = 0; node < 2; node++) {
    watch w = {0};
    crash_restart("ps", 4, node, 3000000, 5000000, 8000000, &w);
    if (node == 1)
      CHECK(w.begun_after > 0); /* the trainer trains again */
  }
}

/* rref_chain: a link of the chain crashes and comes back while RRefs it
 * created are still held along the chain; its new life names RRefs and
 * forks from a new range (drpc_options.incarnation), so none is taken for
 * one of its last life, and the run completes. */
static void test_restart_rref_chain(void) {
  for (int node = 1; node < 3; node++) {
    watch w = {0};
    crash_restart("rref_chain", 5, node, 2000000, 2500000, 6000000, &w);
  }
}

static void child_rref_chain(void) {
  sim_in_child(test_restart_rref_chain);
}

/* A restart names a node that is down; one that is up is left alone. */
static void test_restart_of_live_node_is_noop(void) {
  drpc_sim_config c;
  drpc_sim_result r;
  CHECK_EQ_INT(schedule(&c, "echo", 3,
                        "{\"kind\": \"restart\", \"at_ns\": \"1000000\", "
                        "\"node\": 2}",
                        2000000),
               0);
  CHECK_EQ_INT(run(&c, &r), 0);
  CHECK(r.ok);
  CHECK_EQ_INT(r.crashed, 0);
  CHECK_EQ_INT(r.restarted, 0);
  CHECK_EQ_INT(r.calls, r.executions);
  drpc_sim_result_clear(&r);
  drpc_sim_config_clear(&c);
}

/* Killed before the rendezvous (t = 0): without a restart the others'
 * starts time out, and the run says so; with one, the node comes back and
 * the group does its work. */
static void test_crash_before_rendezvous(void) {
  drpc_sim_config c;
  drpc_sim_result r;
  CHECK_EQ_INT(schedule(&c, "echo", 4,
                        "{\"kind\": \"crash\", \"at_ns\": \"0\", \"node\": 0}",
                        1000000),
               0);
  CHECK_EQ_INT(run(&c, &r), 0);
  CHECK(r.ok);
  CHECK_EQ_INT(r.calls, 0);
  CHECK_EQ_INT(r.start_failed, 3);
  CHECK_CONTAINS(r.start_error, "rendezvous");
  drpc_sim_result_clear(&r);
  drpc_sim_config_clear(&c);

  CHECK_EQ_INT(schedule(&c, "echo", 4,
                        "{\"kind\": \"crash\", \"at_ns\": \"0\", \"node\": 0}, "
                        "{\"kind\": \"restart\", \"at_ns\": \"500000000\", "
                        "\"node\": 0}",
                        1000000),
               0);
  CHECK_EQ_INT(run(&c, &r), 0);
  CHECK(r.ok);
  CHECK_EQ_INT(r.restarted, 1);
  CHECK_EQ_INT(r.start_failed, 0);
  CHECK(r.calls >= 4 * 40 * 3 / 2); /* every worker does its rounds */
  drpc_sim_result_clear(&r);
  drpc_sim_config_clear(&c);
}

/* The restart kind round-trips through JSON and replays the same run. */
static void test_json_round_trip(void) {
  drpc_sim_config c, back;
  drpc_sim_result r1, r2;
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(schedule(&c, "echo", 4,
                        "{\"kind\": \"crash\", \"at_ns\": \"4000000\", "
                        "\"node\": 3}, {\"kind\": \"restart\", \"at_ns\": "
                        "\"6000000\", \"node\": 3}",
                        10000000),
               0);
  char *text = drpc_sim_config_to_json(&c);
  CHECK(text != NULL);
  CHECK_CONTAINS(text, "\"restart\"");
  CHECK_EQ_INT(drpc_sim_config_from_json(&back, text, &err), 0);
  CHECK_EQ_INT(back.nfaults, 2);
  CHECK_EQ_INT(back.faults[1].kind, DRPC_SIM_RESTART);
  CHECK_EQ_INT(back.faults[1].node, 3);
  CHECK_EQ_INT(run(&c, &r1), 0);
  CHECK_EQ_INT(run(&back, &r2), 0);
  CHECK(r1.hash == r2.hash);
  CHECK_EQ_INT(r1.restarted, 1);
  free(text);
  /* A restart names a node. */
  CHECK(drpc_sim_config_from_json(&back,
                                  "{\"scenario\": \"echo\", \"workers\": 2, "
                                  "\"faults\": [{\"kind\": \"restart\", "
                                  "\"at_ns\": \"1\"}]}",
                                  &err) != 0);
  CHECK_CONTAINS(drpc_error_message(&err), "node");
  drpc_error_clear(&err);
  drpc_sim_result_clear(&r1);
  drpc_sim_result_clear(&r2);
  drpc_sim_config_clear(&c);
  drpc_sim_config_clear(&back);
}

/* Seeds that draw restarts run the same twice, event for event. */
static void test_determinism(void) {
  const char *scns[] = {"echo", "fanout", "timeouts", "shutdown_storm", "ps"};
  int checked = 0, diverged = 0;
  for (uint64_t seed = 1; seed <= 200 && checked < 12; seed++) {
    const char *scn = scns[seed % 5];
    drpc_sim_config c;
    drpc_sim_result r1, r2;
    drpc_error err = DRPC_ERROR_INIT;
    CHECK_EQ_INT(
        drpc_sim_config_draw(&c, scn, 4, 0, seed, seed % 2, true, &err), 0);
    drpc_error_clear(&err);
    bool has = false;
    for (size_t i = 0; i < c.nfaults; i++)
      has |= c.faults[i].kind == DRPC_SIM_RESTART;
    if (!has) {
      drpc_sim_config_clear(&c);
      continue;
    }
    c.trace = true;
    CHECK_EQ_INT(run(&c, &r1), 0);
    CHECK_EQ_INT(run(&c, &r2), 0);
    if (r1.restarted > 0)
      checked++;
    if (drpc_sim_trace_diff(&r1, &r2) != SIZE_MAX) {
      diverged++;
      fprintf(stderr, "%s seed %llu diverges\n", scn, (unsigned long long)seed);
    }
    drpc_sim_result_clear(&r1);
    drpc_sim_result_clear(&r2);
    drpc_sim_config_clear(&c);
  }
  CHECK(checked >= 12);
  CHECK_EQ_INT(diverged, 0);
}

/* Swarm and plain sweeps with restarts drawn: every check passes, and
 * restarts really happen. */
static void test_sweep(void) {
  const char *scns[] = {"echo",           "fanout", "timeouts",
                        "shutdown_storm", "ps",     "rref_chain"};
  for (int k = 0; k < 6; k++) {
    int failing = 0, restarted = 0;
    for (uint64_t seed = 3000; seed < 3080; seed++) {
      drpc_sim_config c;
      drpc_sim_result r;
      drpc_error err = DRPC_ERROR_INIT;
      int workers = 2 + (int)(seed % 4);
      bool swarm = seed % 4 != 0;
      if (drpc_sim_config_draw(&c, scns[k], workers, 0, seed, swarm, true,
                               &err) ||
          drpc_sim_run(&c, &r, &err)) {
        fprintf(stderr, "%s seed %llu: %s\n", scns[k], (unsigned long long)seed,
                drpc_error_message(&err));
        failing++;
      } else {
        restarted += r.restarted;
        if (!r.ok) {
          failing++;
          fprintf(stderr,
                  "VIOLATION: drpc sim %s --workers %d --seed %llu%s: %s\n",
                  scns[k], workers, (unsigned long long)seed,
                  swarm ? " --swarm" : "", r.what);
        }
        drpc_sim_result_clear(&r);
      }
      drpc_error_clear(&err);
      drpc_sim_config_clear(&c);
    }
    fprintf(stderr, "  %s: 80 seeds, %d restarts\n", scns[k], restarted);
    CHECK_EQ_INT(failing, 0);
    CHECK(restarted > 0);
  }
}

/* The scheduler's queue of events due now (used without a tie hook) runs
 * events in the order the heap alone does (a tie hook that keys every
 * event 0 forces the heap alone): the same runs, hash for hash. */
static uint32_t tie_zero(void *ctx, int16_t node, uint64_t time_ns) {
  (void)ctx;
  (void)node;
  (void)time_ns;
  return 0;
}

static void test_now_queue_same_order(void) {
  const char *scns[] = {"echo", "ps", "shutdown_storm"};
  for (int k = 0; k < 3; k++)
    for (uint64_t seed = 1; seed <= 4; seed++) {
      drpc_sim_config c;
      drpc_sim_result r1, r2;
      drpc_error err = DRPC_ERROR_INIT;
      CHECK_EQ_INT(drpc_sim_config_draw(&c, scns[k], 4, 0, seed, seed % 2,
                                        seed > 2, &err),
                   0);
      drpc_error_clear(&err);
      CHECK_EQ_INT(run(&c, &r1), 0);
      c.tie = tie_zero;
      CHECK_EQ_INT(run(&c, &r2), 0);
      CHECK(r1.events > 0);
      CHECK_EQ_INT(r1.events, r2.events);
      CHECK(r1.hash == r2.hash);
      drpc_sim_result_clear(&r1);
      drpc_sim_result_clear(&r2);
      drpc_sim_config_clear(&c);
    }
}

static void child_now_queue(void) {
  sim_in_child(test_now_queue_same_order);
}

static void child_serves_again(void) {
  sim_in_child(test_restart_serves_again);
}
static void child_ps(void) {
  sim_in_child(test_restart_ps);
}
static void child_rendezvous(void) {
  sim_in_child(test_crash_before_rendezvous);
}
static void child_json(void) {
  sim_in_child(test_json_round_trip);
}
static void child_determinism(void) {
  sim_in_child(test_determinism);
}
static void child_sweep(void) {
  sim_in_child(test_sweep);
}

int main(void) {
  RUN(child_serves_again);
  RUN(child_ps);
  RUN(child_rref_chain);
  RUN(test_restart_of_live_node_is_noop);
  RUN(child_rendezvous);
  RUN(child_json);
  RUN(child_determinism);
  RUN(child_sweep);
  RUN(child_now_queue);
  return test_finish();
}
