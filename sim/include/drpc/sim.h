/* The deterministic simulator: whole clusters of agents in one process on a
 * virtual clock, a modelled network with faults, fibers for user code, and
 * checkers for safety and liveness.
 *
 * A run is named by its configuration (scenario, workers, seed, network
 * model, fault schedule) plus the commit it was built from; the same
 * configuration gives the same run, event for event. */
#ifndef DRPC_SIM_H
#define DRPC_SIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "drpc/env.h"
#include "drpc/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Most nodes one simulated cluster holds. Fault node sets are 64-bit
 * masks: bit i names node i, and in clusters of more than 64 nodes every
 * node n with n % 64 == i (so a partition splits the whole cluster). */
#define DRPC_SIM_MAX_NODES 1024
/* Most faults one schedule holds. */
#define DRPC_SIM_MAX_FAULTS 4096
/* Most simulated CUDA devices (DRPC_DEVICE_MAX of drpc/device.h). */
#define DRPC_SIM_MAX_DEVICES 16

enum {
  DRPC_SIM_CHANNEL_ANY = 0,
  DRPC_SIM_CHANNEL_STAGED = 1,
  DRPC_SIM_CHANNEL_IPC = 2,
  DRPC_SIM_CHANNELS = 3
};
/* "any", "cuda_staged", "cuda_ipc"; NULL for an unknown channel. */
const char *drpc_sim_channel_name(int channel);

typedef enum drpc_sim_fault_kind {
  DRPC_SIM_PARTITION = 0, /* sides a and b cannot reach each other */
  DRPC_SIM_ONEWAY = 1,    /* frames from a to b are lost (asymmetric) */
  DRPC_SIM_CLOG = 2,      /* frames from a to b stall, none lost */
  DRPC_SIM_RESET = 3,     /* established connections between a, b reset */
  DRPC_SIM_CRASH = 4,     /* node killed as by kill -9 */
  DRPC_SIM_SLOW = 5,      /* node's functions take factor times longer */
  DRPC_SIM_RESTART = 6,   /* a crashed node starts again as a fresh process */
  DRPC_SIM_FAULT_KINDS = 7
} drpc_sim_fault_kind;

/* "partition", "oneway", ...; NULL for an unknown kind. */
const char *drpc_sim_fault_kind_name(int kind);

typedef struct drpc_sim_fault {
  uint64_t at_ns;  /* virtual time from the start of the run */
  uint64_t dur_ns; /* partition, oneway, clog, slow: how long it lasts */
  int kind;        /* drpc_sim_fault_kind */
  uint64_t a, b;   /* node masks (bit n % 64): partition, oneway, clog, reset */
  int node;        /* crash, slow, restart */
  double factor;   /* slow */
} drpc_sim_fault;

typedef struct drpc_sim_config {
  char scenario[64];
  int workers;
  int iters;         /* work per worker (0: the scenario's default) */
  int threads;       /* num_worker_threads of every agent */
  uint64_t think_ns; /* CPU time between a worker's rounds (benches) */
  uint64_t seed;
  bool swarm;

  /* Network model. One-way latency of a frame on link a->b is
   * (lat_min + U[0, lat_jitter) + (with probability tail_p) Exp(tail_mean))
   * times the link's factor, capped at lat_max. Link factors are drawn
   * from the seed in [1, 1 + link_spread]. */
  uint64_t lat_min_ns, lat_jitter_ns, tail_mean_ns, lat_max_ns;
  double tail_p;
  double link_spread;
  double bandwidth_Bps;        /* bytes per second per link; 0: unlimited */
  uint64_t connect_timeout_ns; /* a connect into a partition fails after */
  uint64_t rto_ns;             /* a frame lost one way resets after */
  uint64_t job_cpu_ns;         /* CPU cost of starting a function */

  /* Per node: clock offset and drift, CPU slowness (1 = normal). */
  int64_t clock_offset_ns[DRPC_SIM_MAX_NODES];
  int32_t drift_ppm[DRPC_SIM_MAX_NODES];
  double slow[DRPC_SIM_MAX_NODES];

  /* Fault phase: faults happen in [0, fault_end); at fault_end every
   * partition heals and every clog clears. A crashed node stays down
   * unless a restart names it: a restart (JSON {"kind": "restart",
   * "at_ns": T, "node": N}) brings node N, if it is down at T, back as a
   * fresh process (new agent, same name, rank and store) that runs the
   * scenario's program again (drpc_scenario.restart when set); restarts
   * apply after fault_end too (they are recoveries). Live workers must
   * finish within liveness_ns of fault_end or of the last restart,
   * whichever is later; nodes that stay down are excluded. */
  bool kind_on[DRPC_SIM_FAULT_KINDS];
  double kind_count[DRPC_SIM_FAULT_KINDS]; /* expected faults of each kind */
  uint64_t fault_end_ns;
  uint64_t liveness_ns;
  drpc_sim_fault *faults; /* owned; sorted by at_ns */
  size_t nfaults;

  /* CUDA devices: with devices > 0 the run installs simcuda with that
   * many devices, shared by every node (the nodes of a simulated cluster
   * are one host, as in single-host multi-GPU tests), on the run's
   * virtual clock: copies and kernels take virtual time (dev_* below, as
   * drpc_simcuda_clock), and a host-blocking sync parks the calling fiber
   * until the work is done. The process's CUDA backend is none again
   * after the run. 0: no devices. Scenarios that use devices set the
   * workers' device maps (drpc_scenario.options). */
  int devices; /* 0..DRPC_SIM_MAX_DEVICES */
  double dev_h2d_Bps, dev_d2h_Bps, dev_d2d_Bps, dev_p2p_Bps;
  uint64_t dev_latency_ns, dev_launch_ns;
  double dev_elem_ns;
  /* The channels the agents may use for device tensors:
   * DRPC_SIM_CHANNEL_ANY (cuda_ipc where it works, else staged),
   * DRPC_SIM_CHANNEL_STAGED or DRPC_SIM_CHANNEL_IPC. */
  int dev_channel;

  /* Checks and diagnostics. */
  bool trace;   /* keep a per-event trace (for determinism diffs) */
  bool verbose; /* log lines of the agents to stderr */

  /* Recording: every node's events (and the injected faults, as
   * DRPC_EV_FAULT with node = the node hit, or -1 for link faults) go to
   * record(record_ctx, ev), with payloads kept for replay. NULL: off. */
  void (*record)(void *ctx, const drpc_event *ev);
  void *record_ctx;

  /* Tie-breaks (fuzz/fuzz_sim.c): events due at the same virtual time run
   * in ascending tie(tie_ctx, node, time) (its low 24 bits), then in the
   * order they were
   * scheduled. The key depends on the node and the time only, so the
   * events of one node (node -1: faults) keep their order; what changes
   * is how different nodes interleave at one instant. Must be a pure
   * function. NULL: every key is 0 (scheduling order). */
  uint32_t (*tie)(void *ctx, int16_t node, uint64_t time_ns);
  void *tie_ctx;
} drpc_sim_config;

/* Fills c with the settings of an unfaulted, fast LAN. */
void drpc_sim_config_default(drpc_sim_config *c);
/* Draws network, clocks and a fault schedule from seed. swarm: each fault
 * kind is switched off with probability 1/2 and the rest get rates and
 * network settings drawn over wide ranges; faults false: no faults. For a
 * scenario that uses CUDA devices it also sets devices (swarm: 1 to 4
 * devices, copy bandwidths over wide ranges and a channel, drawn from a
 * stream of their own; else 2 devices and drpc_simcuda_clock_default's
 * model). */
int drpc_sim_config_draw(drpc_sim_config *c, const char *scenario, int workers,
                         int iters, uint64_t seed, bool swarm, bool faults,
                         drpc_error *err);
/* Frees the schedule. */
void drpc_sim_config_clear(drpc_sim_config *c);
/* Deep copy (dst is overwritten). */
int drpc_sim_config_copy(drpc_sim_config *dst, const drpc_sim_config *src);
/* The configuration as a JSON schedule (malloc'd) and back. */
char *drpc_sim_config_to_json(const drpc_sim_config *c);
int drpc_sim_config_from_json(drpc_sim_config *c, const char *text,
                              drpc_error *err);
/* One or two lines naming everything drawn (for logs). */
void drpc_sim_config_describe(const drpc_sim_config *c, FILE *f);

/* One traced event: the running hash after it and what it was. */
typedef struct drpc_sim_trace_entry {
  uint64_t time_ns; /* virtual, from the start */
  uint64_t hash;    /* running hash after this event */
  uint64_t x, y;    /* kind-specific: connection, request id, length */
  int16_t node;
  uint8_t kind;
} drpc_sim_trace_entry;

typedef struct drpc_sim_result {
  bool ok;
  char what[1024];       /* the first violation */
  uint64_t violation_ns; /* virtual time of it */
  uint64_t sim_ns;       /* virtual time the run lasted */
  double wall_s;
  uint64_t events, deliveries, bytes, calls, executions, faults_applied;
  /* Call failures the scenario put down to faults (and tolerated). */
  uint64_t tolerated;
  uint64_t hash; /* running hash of every event */
  int crashed;
  int restarted; /* crashed nodes that started again */
  /* Worker starts (rendezvous) that failed under faults and were
   * tolerated, and the first such error: such a worker did no work. */
  int start_failed;
  char start_error[256];
  /* The RRef checker: the four RRef counters (num_owner_rrefs,
   * num_pending_futures, num_pending_users, num_forks) as each worker's
   * graceful shutdown left them, summed over the workers that shut down,
   * and how many workers left any. Without faults every one must be zero
   * (a violation otherwise); with faults they are reported only. */
  int64_t rref_left[4];
  int rref_nodes_left;
  /* Heap objects held by killed or stuck fibers were left behind, as the
   * OS would reclaim a killed process (leak checkers will see them). */
  bool abandoned;
  /* Devices (config.devices > 0): device ops given a duration, their
   * summed virtual time, bytes copied, host syncs that parked a fiber and
   * the virtual time they waited, and syncs made outside any fiber (a
   * core's input handler), which cannot park and return at once. */
  uint64_t dev_ops, dev_busy_ns, dev_copy_bytes, dev_syncs_slept, dev_slept_ns,
      dev_syncs_unslept;
  drpc_sim_trace_entry *trace;
  size_t ntrace;
} drpc_sim_result;

/* Runs one simulation. Returns 0 when it ran (r->ok says whether every
 * check passed); non-zero with err set when it could not run (unknown
 * scenario, bad configuration). */
int drpc_sim_run(const drpc_sim_config *c, drpc_sim_result *r, drpc_error *err);
void drpc_sim_result_clear(drpc_sim_result *r);
/* Names a trace entry's kind ("frame", "timer", ...). */
const char *drpc_sim_event_name(int kind);
/* The index of the first event at which two traced runs differ, or
 * SIZE_MAX when they are the same event for event. */
size_t drpc_sim_trace_diff(const drpc_sim_result *a, const drpc_sim_result *b);
/* Formats a trace entry on one line. */
void drpc_sim_trace_format(const drpc_sim_trace_entry *e, char *buf, size_t n);

/* The hash the determinism check takes of frame bytes, seeded with h.
 * impl 0 picks the fastest the CPU runs; 1 the portable code; 2 the AVX2
 * code (0 where the CPU or build has none). All give the same value. */
uint64_t drpc_sim_hash_bytes(uint64_t h, const void *bytes, size_t len,
                             int impl);

/* The commit the simulator was built from ("unknown" outside git). */
const char *drpc_sim_commit(void);

#ifdef __cplusplus
}
#endif
#endif
