/* Internal: pieces of the drpc command line shared between its files. */
#ifndef DRPC_TOOLS_H
#define DRPC_TOOLS_H

#include <sys/types.h>

#include "drpc/drpc.h"
#include "drpc/net.h"

/* Registers noop, echo, sleep, raise, whoami, forward, nbytes and
 * async_forward. */
int drpc_tools_register_std(drpc_registry *r);

int drpc_cmd_worker(int argc, char **argv);
int drpc_cmd_store(int argc, char **argv);
int drpc_cmd_bench(int argc, char **argv);
int drpc_cmd_demo(int argc, char **argv);
/* tools/sim.c: the simulator, real runs of scenarios, the simulator bench. */
int drpc_cmd_sim(int argc, char **argv);
int drpc_cmd_run(int argc, char **argv);
int drpc_cmd_bench_sim(int argc, char **argv);
int drpc_cmd_replay(int argc, char **argv);
int drpc_cmd_trace(int argc, char **argv);
/* tools/viz_cmd.c: a recording as a self-contained HTML viewer. */
int drpc_cmd_viz(int argc, char **argv);

/* Parses a non-negative integer option value or exits with a message. */
long long drpc_tools_parse_int(const char *opt, const char *s, long long min,
                               long long max);
double drpc_tools_parse_double(const char *opt, const char *s, double min,
                               double max);
/* Forks a worker process that joins the group as `name` and serves until
 * the group shuts down gracefully; exits 0 on a clean shutdown. Returns the
 * child's pid (or -1). */
pid_t drpc_tools_spawn_passive(const char *name, int rank, int world,
                               const drpc_options *o);
/* Recording for the real backend (tools/trace_cmd.c). begin opens path as
 * this process's recording (a background writer) and routes the next
 * drpc_init to it, naming node rank; end closes it after drpc_shutdown.
 * Both print what went wrong and return non-zero. */
int drpc_tools_record_begin(const char *path, const char *scenario,
                            const char *name, int rank);
int drpc_tools_record_end(void);
/* When set, drpc_tools_spawn_passive's children record to
 * "<prefix>.w<rank>.db". */
extern const char *drpc_tools_record_prefix;
/* Merges "<prefix>.w<r>.db" for r in [0, n) into path and removes them. */
int drpc_tools_record_merge(const char *path, const char *prefix, int n);
/* drpc_tools_record_begin on "<prefix>.w<rank>.db". */
int drpc_tools_record_begin_part(const char *prefix, const char *name,
                                 int rank);
/* Merges the n parts of prefix into prefix itself, replays it and exports
 * "<prefix minus .db>.json", printing each path. */
int drpc_tools_record_finish(const char *prefix, int n);
/* Merges and replays, quietly (no export); non-zero unless identical. */
int drpc_tools_record_replay(const char *prefix, int n);

/* Picks a free loopback TCP port. */
int drpc_tools_free_port(void);

#endif
