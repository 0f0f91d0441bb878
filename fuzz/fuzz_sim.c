/* fuzz_sim: a short scenario in the deterministic simulator (sim/), with
 * the network, the fault schedule and the tie-breaks read from the input.
 * The simulator's checkers are the oracle: a future completed twice or
 * never, a request run twice, an RRef left after a clean shutdown, a worker
 * that does not finish once faults stop, a failed program or shutdown, all
 * end the run with a violation, which fails the input.
 *
 * Input (read from the front, see sim_prog.h): the scenario, workers,
 * iterations, threads, seed, network and fault schedule, then the rest as
 * a table of tie-break keys: events due at the same virtual time run in
 * the order drpc_sim_config.tie gives, so the input decides how the nodes
 * interleave at one instant (a quantised network makes such instants
 * common). A flag runs the configuration twice and checks that both runs
 * hash the same (determinism under the tie hook).
 *
 * Crash faults are left out: a crashed node's fibers and what they own are
 * abandoned on purpose (drpc_sim_result.abandoned), which LeakSanitizer
 * would report for every such input. */
#include "consumer.h"
#include "fuzz.h"
#include "sim_prog.h"

#include "drpc/sim.h"
#include "scenario.h"

#include <string.h>

#define MS 1000000ull

static const char *const SCENARIOS[] = SP_SCENARIOS;
static const uint64_t LATENCIES[] = SP_LATENCIES;
static const uint64_t RTOS[] = SP_RTOS;
static const int FAULT_KINDS[] = SP_FAULT_KINDS;

/* The tie-break table: key(node, t) is a byte of it, picked by the
 * microsecond and the node, so it depends on nothing else. */
typedef struct tie_table {
  const uint8_t *b;
  size_t n;
} tie_table;

static uint32_t tie_key(void *ctx, int16_t node, uint64_t t_ns) {
  const tie_table *tt = ctx;
  if (!tt->n)
    return 0;
  uint64_t at = t_ns / 1000 + (uint64_t)(node + 1) * 7919u;
  return tt->b[at % tt->n];
}

/* A node mask over the first `workers` nodes, never empty. */
static uint64_t read_mask(fz *in, int workers) {
  uint64_t all = (1ull << workers) - 1;
  uint64_t m = fz_u8(in) & all;
  return m ? m : 1;
}

static drpc_sim_config cfg; /* large (per-node arrays): not on the stack */
static drpc_sim_fault faults[SP_MAX_FAULTS];

static void read_config(fz *in, tie_table *tt, bool *twice) {
  const char *name = SCENARIOS[fz_u8(in) % SP_NSCENARIOS];
  const drpc_scenario *scn = drpc_scenario_find(name);
  FUZZ_CHECK(scn != NULL, "scenario %s missing", name);
  int lo = scn->min_workers, hi = scn->max_workers < SP_MAX_WORKERS
                                      ? scn->max_workers
                                      : SP_MAX_WORKERS;
  int workers = (int)fz_range(in, (uint64_t)lo, (uint64_t)hi);
  int iters = (int)fz_range(in, 1, SP_MAX_ITERS);
  int threads = (int)fz_range(in, 1, 4);
  uint64_t seed = fz_u32(in);
  uint8_t net = fz_u8(in);

  drpc_sim_config_default(&cfg);
  snprintf(cfg.scenario, sizeof cfg.scenario, "%s", name);
  cfg.workers = workers;
  cfg.iters = iters;
  cfg.threads = threads;
  cfg.seed = seed;
  cfg.lat_min_ns = LATENCIES[(net >> 1) % SP_NLATENCIES];
  cfg.rto_ns = RTOS[(net >> 4) % SP_NRTOS];
  if (net & SP_NET_QUANTISED) {
    /* Every frame takes exactly lat_min: many events share an instant. */
    cfg.lat_jitter_ns = 0;
    cfg.tail_p = 0;
    cfg.bandwidth_Bps = 0;
    cfg.job_cpu_ns = 0;
  }
  if (net & SP_NET_CLOCKS) {
    /* Skewed clocks: offsets up to a second either way, small drifts. */
    uint64_t st = seed * 0x9e3779b97f4a7c15ull + 1;
    for (int i = 0; i < workers; i++) {
      st = st * 6364136223846793005ull + 1442695040888963407ull;
      cfg.clock_offset_ns[i] = (int64_t)(st >> 33) % 2000000000 - 1000000000;
      cfg.drift_ppm[i] = (int32_t)((st >> 20) % 201) - 100;
    }
  }
  *twice = net & SP_NET_TWICE;

  size_t nfaults = (size_t)fz_range(in, 0, SP_MAX_FAULTS);
  uint64_t window = (1 + (uint64_t)fz_u8(in)) * MS;
  size_t n = 0;
  for (size_t i = 0; i < nfaults && fz_remaining(in); i++) {
    drpc_sim_fault f = {0};
    f.kind = FAULT_KINDS[fz_u8(in) % SP_NFAULT_KINDS];
    f.at_ns = fz_u16(in) * window / 65536;
    uint64_t dur = 1 + fz_u16(in) * window / 65536;
    f.a = read_mask(in, workers);
    f.b = read_mask(in, workers);
    f.node = (int)(fz_u8(in) % (unsigned)workers);
    f.factor = 2 + fz_u8(in) % 49;
    if (f.kind != DRPC_SIM_RESET)
      f.dur_ns = dur;
    if (f.kind == DRPC_SIM_PARTITION || f.kind == DRPC_SIM_ONEWAY ||
        f.kind == DRPC_SIM_CLOG || f.kind == DRPC_SIM_RESET) {
      f.b &= ~f.a; /* the other side */
      if (!f.b)
        continue; /* one worker, or both sides the same: no link */
    }
    /* Sorted by at_ns, as the simulator expects (insertion: n is small). */
    size_t j = n;
    while (j > 0 && faults[j - 1].at_ns > f.at_ns) {
      faults[j] = faults[j - 1];
      j--;
    }
    faults[j] = f;
    n++;
  }
  cfg.faults = n ? faults : NULL;
  cfg.nfaults = n;
  cfg.fault_end_ns = n ? window : 0;
  for (size_t i = 0; i < n; i++)
    cfg.kind_on[faults[i].kind] = true;

  size_t got;
  tt->b = fz_bytes(in, SP_MAX_TIES, &got);
  tt->n = got;
  cfg.tie = tie_key;
  cfg.tie_ctx = tt;
}

/* DRPC_FUZZ_SIM_VERBOSE=1: one line per run (what the corpus covers). */
static bool verbose(void) {
  static int v = -1;
  if (v < 0) {
    const char *e = getenv("DRPC_FUZZ_SIM_VERBOSE");
    v = e && e[0] == '1';
  }
  return v;
}

static void run_once(drpc_sim_result *r) {
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_sim_run(&cfg, r, &err);
  FUZZ_CHECK(rc == 0, "the simulation did not run: %s",
             drpc_error_message(&err));
  drpc_error_clear(&err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz in;
  fz_init(&in, data, size);
  static tie_table tt;
  bool twice = false;
  read_config(&in, &tt, &twice);
  drpc_sim_result r;
  run_once(&r);
  if (!r.ok || r.abandoned) {
    fprintf(stderr, "fuzz_sim: %s, %d workers, %d iters, seed %llu:\n",
            cfg.scenario, cfg.workers, cfg.iters, (unsigned long long)cfg.seed);
    drpc_sim_config_describe(&cfg, stderr);
  }
  if (verbose())
    fprintf(stderr,
            "fuzz_sim: %s workers=%d iters=%d seed=%llu faults=%zu ties=%zu: "
            "%s, %.6f s virtual, %llu events, %llu calls, %llu tolerated\n",
            cfg.scenario, cfg.workers, cfg.iters, (unsigned long long)cfg.seed,
            cfg.nfaults, tt.n, r.ok ? "ok" : "VIOLATION",
            (double)r.sim_ns / 1e9, (unsigned long long)r.events,
            (unsigned long long)r.calls, (unsigned long long)r.tolerated);
  FUZZ_CHECK(r.ok, "violation at t=%.6fs: %s", (double)r.violation_ns / 1e9,
             r.what);
  FUZZ_CHECK(!r.abandoned, "objects abandoned in a run without crashes");
  if (twice) {
    drpc_sim_result r2;
    run_once(&r2);
    FUZZ_CHECK(r2.ok == r.ok && r2.hash == r.hash && r2.events == r.events,
               "two runs of one configuration differ: hash %016llx vs "
               "%016llx, %llu vs %llu events",
               (unsigned long long)r.hash, (unsigned long long)r2.hash,
               (unsigned long long)r.events, (unsigned long long)r2.events);
    drpc_sim_result_clear(&r2);
  }
  drpc_sim_result_clear(&r);
  return 0;
}
