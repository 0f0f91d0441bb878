/* Scenarios: distributed programs written once against the public API that
 * run as real processes over loopback (`drpc run`) or inside the simulator
 * (`drpc sim`). A scenario never sees which: the host hands it the few
 * things that differ (spending CPU time, reporting a broken expectation). */
#ifndef DRPC_SCENARIO_H
#define DRPC_SCENARIO_H

#include <stdbool.h>
#include <stdint.h>

#include "drpc/drpc.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct drpc_scn_host drpc_scn_host;
struct drpc_scn_host {
  /* Spends ns of CPU on the worker that runs agent a, from a worker
   * program or a function: a real process sleeps; the simulator moves the
   * node's virtual time on, scaled by the node's slowness. */
  void (*compute)(const drpc_scn_host *h, drpc_agent *a, uint64_t ns);
  /* Reports a broken expectation (a wrong value, an error no fault can
   * explain); the run fails with msg. */
  void (*violation)(const drpc_scn_host *h, drpc_agent *a, const char *msg);
  /* Faults may be injected: lost connections and timeouts are then
   * expected outcomes of a call, not failures. */
  bool faults;
  int iters; /* work per worker, in the scenario's own unit */
  /* CPU time a worker spends between rounds (a training step, say); 0
   * unless a bench asks for it. */
  uint64_t think_ns;
  void *user; /* the host's state */
  /* Told of each call failure a fault explains (so a run can say how
   * many it tolerated); may be NULL. */
  void (*tolerated)(const drpc_scn_host *h, drpc_agent *a,
                    const drpc_error *err);
  /* Dynamic-group scenarios: leaves the group (graceful shutdown of *a),
   * stays away for away_ns, then joins again as a fresh agent with the
   * same name and rank, which replaces *a (the host shuts that one down at
   * the end). Non-zero with err set on failure; *a is then NULL when no
   * agent runs any more. NULL in hosts without dynamic groups. */
  int (*rejoin)(const drpc_scn_host *h, drpc_agent **a, uint64_t away_ns,
                drpc_error *err);
  /* False once worker rank has crashed (a fault); NULL: nothing crashes. */
  bool (*alive)(const drpc_scn_host *h, int rank);
  /* How many times worker rank has crashed so far, as a cluster
   * supervisor knows it (a restarted worker is a new process that lost
   * the state of its last life); NULL: nothing crashes. */
  unsigned (*crashes)(const drpc_scn_host *h, int rank);
};

typedef struct drpc_scenario {
  const char *name;
  const char *summary;
  int min_workers, max_workers, default_workers;
  int default_iters;
  /* Needs remote references (not runnable until RRefs land). */
  bool needs_rrefs;
  double rpc_timeout_s;      /* the agents' default call timeout */
  double shutdown_timeout_s; /* bound on the graceful shutdown */
  /* Registers the functions every worker serves (h is their user data). */
  int (*register_fns)(drpc_registry *r, const drpc_scn_host *h);
  /* One worker's program. The host starts the agent before and shuts it
   * down gracefully after (a program may shut down itself; the second
   * shutdown is then a no-op). Returns 0, or non-zero with err set when
   * the program could not do its work for a reason faults do not explain
   * (violations go through h->violation as well). */
  int (*run)(drpc_agent *a, int rank, int world, const drpc_scn_host *h,
             drpc_error *err);
  /* A dynamic group: agents start without a world size (and are
   * announced), and the host offers rejoin. */
  bool dynamic;
  /* The program of a worker restarted after a crash (a fresh process with
   * the same name and rank, whose memory of the last life is gone); NULL:
   * run again from the top. */
  int (*restart)(drpc_agent *a, int rank, int world, const drpc_scn_host *h,
                 drpc_error *err);
  /* Why restarts are not drawn for this scenario (NULL: they are); an
   * explicit schedule still applies them. */
  const char *no_restart;
  /* CUDA devices the scenario needs (0: none); the simulator gives it at
   * least this many, `drpc run` refuses to start with fewer (DRPC_CUDA). */
  int min_devices;
  /* Fills in worker rank's options before its agent starts (device maps),
   * once the process's CUDA backend is installed (drpc_device_count()
   * devices). Non-zero with err set when it cannot. NULL: defaults. */
  int (*options)(drpc_options *o, int rank, int world, drpc_error *err);
} drpc_scenario;

/* Every known scenario, runnable or not, in a fixed order. */
const drpc_scenario *const *drpc_scenario_list(size_t *n);
/* NULL when name is unknown. */
const drpc_scenario *drpc_scenario_find(const char *name);
/* ---- helpers shared by the scenarios ---------------------------------- */

/* True when err is what a fault can cause: a lost or refused connection,
 * a timeout, a peer that shut down. */
bool drpc_scn_fault_error(const drpc_error *err);
/* Reports "rank R: what: message" through h->violation unless the error
 * is a fault outcome and faults are on (then h->tolerated hears of it);
 * returns true when it reported. */
bool drpc_scn_check_error(const drpc_scn_host *h, drpc_agent *a,
                          const drpc_error *err, const char *what);
/* Reports a formatted violation. */
void drpc_scn_violation(const drpc_scn_host *h, drpc_agent *a, const char *fmt,
                        ...) __attribute__((format(printf, 3, 4)));
/* A function that answers with its first argument (nil without one). */
drpc_value *drpc_scn_echo_fn(drpc_call *call, const drpc_value *args,
                             const drpc_value *kwargs, drpc_error *err);
/* The name of worker rank r ("w<r>"). */
void drpc_scn_worker_name(int r, char *buf, size_t n);
/* The four RRef debug-info counters (num_owner_rrefs, ...). */
extern const char *const drpc_scn_rref_counters[4];
/* The debug-info entry key of a (a count kept as a string), INT64_MIN
 * when absent. */
int64_t drpc_scn_debug_count(drpc_agent *a, const char *key);
/* The same from a debug-info dict already fetched. */
int64_t drpc_scn_dict_count(const drpc_value *d, const char *key);
/* Shuts a down gracefully within timeout_s (errors go through
 * drpc_scn_check_error); without faults, reports any RRef counter that is
 * not zero afterwards, or was not when the agent stopped. */
void drpc_scn_rref_shutdown(drpc_agent *a, const drpc_scn_host *h,
                            double timeout_s);

extern const drpc_scenario drpc_scn_echo;
extern const drpc_scenario drpc_scn_fanout;
extern const drpc_scenario drpc_scn_timeouts;
extern const drpc_scenario drpc_scn_shutdown_storm;
extern const drpc_scenario drpc_scn_ps;
extern const drpc_scenario drpc_scn_rref_chain;
extern const drpc_scenario drpc_scn_membership;
extern const drpc_scenario drpc_scn_devices;

#ifdef __cplusplus
}
#endif
#endif
