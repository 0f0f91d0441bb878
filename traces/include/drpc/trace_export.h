/* Exports a drpc recording (SQLite, schema v1) as a Chrome trace (JSON
 * object format) that opens in Perfetto and chrome://tracing.
 *
 * The trace: {"displayTimeUnit":"ns","traceEvents":[...],"otherData":
 * {runs, event counts, clock mapping}}. ts is microseconds since the
 * first event, printed with three decimals (nanoseconds, exact). One
 * process per worker (pid = node + 1, named from the nodes table, else
 * its IN_START name, else "worker<id>"), with tracks:
 *   tid 0 "agent"       frames as 1 ns "X" slices ("send CALL", "recv
 *                       RESPONSE"), other core events as instants;
 *   tid 1.. "executor k" server jobs as "X" slices from OUT_EXECUTE to its
 *                       IN_JOB_DONE, overlapping jobs on separate lanes;
 *   tid 1000000 "faults" FAULT instants ("g" for partitions, else "p");
 *   tid 2000000.. "profile k" PROFILE slices.
 * RPCs are async "b"/"e" spans (cat "rpc", id2.local "<caller>:<request
 * id>", name "rpc_sync#echo(w0 -> w1)"); calls never ended close at the
 * last timestamp with args.unfinished. Each send matched to its receive
 * (sender, receiver, message type, message id) gets a flow "s"/"f" pair
 * bound to the two frame slices. Counters per worker: "pending calls" and
 * "bytes in flight" (sent, not yet received). */
#ifndef DRPC_TRACE_EXPORT_H
#define DRPC_TRACE_EXPORT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "drpc/error.h"

#ifdef __cplusplus
extern "C" {
#endif

struct sqlite3;

/* The schema version the exporter reads (PRAGMA user_version). */
#define DRPC_TRACE_EXPORT_SCHEMA 1
/* Most events one export reads (indices are 32-bit). */
#define DRPC_TRACE_EXPORT_MAX_EVENTS ((int64_t)1 << 30)

typedef struct drpc_trace_export_opts {
  /* Export only the run with this runs.id; 0 = every run in the file.
   * Runs whose node ids collide (two simulated runs in one file) are kept
   * apart: each (run, node) gets its own process and nothing is matched
   * across runs. Otherwise (one run, or per-worker files merged) a node is
   * one process whatever run recorded it. */
  int64_t run;
  /* Keep each node's times as recorded. By default, when a run's config
   * describes per-node clocks (the simulator's nodes[].clock_offset_ns and
   * drift_ppm), times are mapped back to the simulator's global clock so
   * that every receive follows its send. */
  bool raw_clocks;
} drpc_trace_export_opts;

void drpc_trace_export_opts_default(drpc_trace_export_opts *o);

/* What an export read and wrote (for tools and tests). */
typedef struct drpc_trace_export_stats {
  uint64_t events;       /* event rows exported */
  uint64_t skipped;      /* rows left out (NULL t_ns/kind, bad node) */
  uint64_t trace_events; /* Chrome trace events written */
  uint64_t spans;        /* RPC spans (b/e pairs), unfinished included */
  uint64_t unfinished;   /* spans and jobs closed at the end of the trace */
  uint64_t flows;        /* send -> receive arrows (s/f pairs) */
  uint64_t jobs;         /* executor slices */
} drpc_trace_export_stats;

/* Reads the recording at db_path (opened read-only) and writes the trace
 * to out_path, through out_path.tmp renamed at the end so that a reader
 * never sees half a file; out_path "-" writes to stdout. Uses the default
 * options.
 *
 * Errors: DRPC_ENOTFOUND (no such file), DRPC_EPROTO (not an SQLite
 * database, no events table, a query the file's tables cannot answer),
 * DRPC_EVERSION (user_version is not DRPC_TRACE_EXPORT_SCHEMA), DRPC_EIO
 * (reading the database or writing the output failed), DRPC_ETOOBIG (more
 * than DRPC_TRACE_EXPORT_MAX_EVENTS events), DRPC_ENOMEM, DRPC_EINVAL
 * (NULL path, or out_path the same as db_path). err (may be NULL) gets a
 * message naming the file. On failure out_path is left as it was. */
int drpc_trace_export_chrome(const char *db_path, const char *out_path,
                             drpc_error *err);

/* The same over an open connection (borrowed: left open) writing to out
 * (borrowed: flushed, not closed). The schema checks run here too. opts
 * NULL = defaults; stats may be NULL. On failure out may hold part of a
 * trace. */
int drpc_trace_export_chrome_db(struct sqlite3 *db, FILE *out,
                                const drpc_trace_export_opts *opts,
                                drpc_trace_export_stats *stats,
                                drpc_error *err);

#ifdef __cplusplus
}
#endif
#endif
