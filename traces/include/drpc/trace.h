/* Recordings: the SQLite recorder behind the record sink, the reader that
 * validates and iterates a recording, and the merge of per-worker files.
 * The file format (schema v1) is documented in traces/SCHEMA.md. */
#ifndef DRPC_TRACE_H
#define DRPC_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include "drpc/env.h"
#include "drpc/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The schema version this build writes and reads (PRAGMA user_version). */
#define DRPC_TRACE_SCHEMA 1
/* meta.format of every recording. */
#define DRPC_TRACE_FORMAT "drpc-trace"
/* Default bound on the threaded recorder's queue, in bytes of records
 * (payload, name and a compact header of a few bytes per event; a caller
 * needs room for the longest header, 96 bytes, to go in). */
#define DRPC_RECORDER_QUEUE_DEFAULT ((size_t)64 << 20)
/* Events written per transaction before a commit (unthreaded). */
#define DRPC_RECORDER_BATCH 4096
/* Default bound on the threaded recorder's spill file (events appended but
 * not yet imported into SQLite), in bytes; see
 * drpc_recorder_set_spill_limit. */
#define DRPC_RECORDER_SPILL_DEFAULT ((uint64_t)8 << 30)
/* Most input files drpc_trace_merge takes (one open database each). */
#define DRPC_TRACE_MERGE_MAX_INPUTS 1024

/* What a run was. Strings are borrowed by drpc_recorder_open (copied into
 * the file before it returns); NULL stores SQL NULL. The last three fields
 * default from the environment: started_at NULL = now, host NULL = this
 * host, has_pid false = this process. */
typedef struct drpc_run_info {
  const char *backend; /* "sim" or "real"; NULL = "real" */
  const char *scenario;
  uint64_t seed;
  bool has_seed;
  const char *commit;
  const char *config_json; /* stored as given, not parsed */
  const char *started_at;  /* ISO-8601 UTC */
  const char *host;
  int64_t pid;
  bool has_pid;
} drpc_run_info;

/* ---- recording ---------------------------------------------------------- */

typedef struct drpc_recorder drpc_recorder;

/* Creates a recording at path and writes the run row.
 *
 * threaded=true: drpc_recorder_record copies each event into a bounded
 * queue (DRPC_RECORDER_QUEUE_DEFAULT, see drpc_recorder_set_queue_limit)
 * and a background writer thread appends them, in a compact binary form,
 * to the spill file "<path>.spill" with large sequential writes. SQLite
 * does not set the pace while recording: the spill file is imported into
 * the database by drpc_recorder_flush and drpc_recorder_close (and by the
 * writer when the spill reaches its bound, see
 * drpc_recorder_set_spill_limit). When the queue is full the caller
 * blocks until the writer catches up (backpressure: nothing is dropped)
 * and stats.stalls counts it. After a crash, events appended since the
 * last flush are in the spill file: drpc_recorder_recover imports them.
 * threaded=false: events are written on the calling thread, committed
 * every DRPC_RECORDER_BATCH events and at flush/close.
 *
 * Fails with DRPC_EEXISTS when path exists and truncate is false (with
 * truncate the file and its -wal/-shm/-journal/.spill companions are
 * removed), DRPC_EIO when SQLite cannot create or write it (or the spill
 * file), DRPC_ENOMEM, DRPC_EINVAL. *out is NULL on failure. */
int drpc_recorder_open(drpc_recorder **out, const char *path,
                       const drpc_run_info *info, bool threaded, bool truncate,
                       drpc_error *err);

/* Sets the queue bound in bytes; meant for before the first event. An
 * event larger than the bound is still accepted when the queue is empty,
 * so a bound of 0 means "one event at a time". No effect unthreaded. */
void drpc_recorder_set_queue_limit(drpc_recorder *r, size_t bytes);

/* Sets the bound on the spill file's backlog (bytes appended and not yet
 * imported), default DRPC_RECORDER_SPILL_DEFAULT. When a write would pass
 * it, the writer imports the backlog into SQLite first, so callers then
 * wait for SQLite (backpressure, never loss). 0 means "import every
 * batch". No effect unthreaded. */
void drpc_recorder_set_spill_limit(drpc_recorder *r, uint64_t bytes);

/* Names a node (the nodes table; name copied, NULL = no name). A node
 * seen in an event gets a row without a name automatically. */
void drpc_recorder_node(drpc_recorder *r, int16_t node, const char *name);

/* Records ev (its bytes and name are copied before returning). Thread
 * safe: events get their per-node seq in the order calls take the
 * recorder's lock. Write errors are kept for drpc_recorder_close; events
 * after one are counted in stats.dropped. */
void drpc_recorder_record(drpc_recorder *r, const drpc_event *ev);

/* drpc_recorder_record with the record-sink signature (drpc_env_ops). */
void drpc_recorder_sink(void *recorder, const drpc_event *ev);

/* For tools that rewrite recordings (drpc_trace_merge): records ev with
 * the given seq and stored hash (hash NULL = none) instead of deriving
 * them. Do not mix with drpc_recorder_record for the same node. */
void drpc_recorder_record_raw(drpc_recorder *r, const drpc_event *ev,
                              int64_t seq, const uint64_t *hash);

/* Waits until every event recorded so far is committed to the file
 * (threaded: imports the spill file). Returns the first write error (0
 * when none). */
int drpc_recorder_flush(drpc_recorder *r, drpc_error *err);

typedef struct drpc_recorder_stats {
  uint64_t events;           /* events accepted by record */
  uint64_t bytes;            /* their payload bytes */
  uint64_t written;          /* events inserted so far */
  uint64_t payloads_stored;  /* distinct payloads inserted */
  uint64_t payloads_deduped; /* payloads found already stored */
  uint64_t stalls;           /* record calls that waited for queue space */
  uint64_t dropped;          /* events lost to a write error (reported) */
  uint64_t spilled;          /* bytes appended to the spill file (threaded) */
  uint64_t imports;          /* spill imports into SQLite so far */
} drpc_recorder_stats;

void drpc_recorder_stats_get(drpc_recorder *r, drpc_recorder_stats *st);

/* Flushes, commits, converts the file back to a single self-contained
 * file (journal_mode=DELETE), removes the spill file, closes and frees r.
 * Returns the first write error (with err's message) or 0; when the
 * import failed the spill file is kept for drpc_recorder_recover. r may
 * be NULL. */
int drpc_recorder_close(drpc_recorder *r, drpc_error *err);

/* Imports what a threaded recorder that did not reach close (a crash, a
 * kill, a failed import) left in "<path>.spill" into the recording at
 * path, skipping events the database already holds, then removes the
 * spill file. A record cut short at the end of the spill (the process
 * died mid-write) is ignored. Returns 0 when there is nothing to import.
 * Errors: DRPC_ENOTFOUND (a spill without its recording), DRPC_ETYPE (not
 * a recording, or not a spill file), DRPC_EIO (SQLite or file errors,
 * including a recorder still holding the file). */
int drpc_recorder_recover(const char *path, drpc_error *err);

/* ---- reading ------------------------------------------------------------ */

typedef struct drpc_trace drpc_trace;

/* Opens a recording read-only and validates it: an SQLite file whose
 * header matches its size, meta.format = DRPC_TRACE_FORMAT, user_version =
 * DRPC_TRACE_SCHEMA, every table with its columns, at least one run.
 * Errors: DRPC_ENOTFOUND (no such file), DRPC_ETYPE ("not a drpc
 * recording: ..."), DRPC_EVERSION ("recording schema version N is not
 * supported (this build reads 1)"), DRPC_EPROTO ("corrupt recording:
 * ..."), DRPC_ETRUNC ("corrupt recording: ... is truncated ..."), DRPC_EIO
 * (the file cannot be read).
 * Reading covers the file's first run (lowest id); the recorder writes
 * exactly one. *out is NULL on failure. A trace and its cursors are used
 * by one thread at a time. */
int drpc_trace_open(drpc_trace **out, const char *path, drpc_error *err);
void drpc_trace_close(drpc_trace *t);

/* The read-only connection, for exporters that run their own SQL. */
sqlite3 *drpc_trace_db(drpc_trace *t);
/* runs.id of the run being read. */
int64_t drpc_trace_run_id(drpc_trace *t);

/* The run row with owned strings (NULL where the column is NULL); free
 * with drpc_trace_run_info_free. */
typedef struct drpc_trace_run_info {
  int64_t id;
  char *backend, *scenario, *commit, *config_json, *started_at, *host;
  uint64_t seed;
  bool has_seed;
  int64_t pid;
  bool has_pid;
} drpc_trace_run_info;

int drpc_trace_run(drpc_trace *t, drpc_trace_run_info *out, drpc_error *err);
void drpc_trace_run_info_free(drpc_trace_run_info *ri);

/* The run's nodes in ascending order: *ids and *names are malloc'd arrays
 * of *n entries, names[i] malloc'd or NULL. Free each name, then both
 * arrays (drpc_trace_nodes_free does it). */
int drpc_trace_nodes(drpc_trace *t, int16_t **ids, char ***names, size_t *n,
                     drpc_error *err);
void drpc_trace_nodes_free(int16_t *ids, char **names, size_t n);

/* One stored event. ev.bytes and ev.name point into SQLite memory valid
 * until the next step (the callback's return). ev.peer is -1 for NULL. */
typedef struct drpc_trace_event {
  drpc_event ev;
  int64_t seq;
  uint64_t hash; /* running output hash after this event */
  bool has_hash; /* outputs only */
  int64_t row;   /* events.id */
} drpc_trace_event;

/* Calls cb for each event of node (node < 0: all nodes ordered by t_ns,
 * node, seq; else by seq). cb returns non-zero to stop (returned as is).
 * A row that breaks the schema (unknown kind, missing payload or string,
 * negative size, size different from the payload's) stops the walk with
 * DRPC_EPROTO "corrupt recording: ...". */
int drpc_trace_foreach(drpc_trace *t, int node,
                       int (*cb)(void *arg, const drpc_trace_event *e),
                       void *arg, drpc_error *err);

/* The same as a pull iterator. next returns 1 with *e filled (valid until
 * the next call), 0 at the end, or a negative error. */
typedef struct drpc_trace_cursor drpc_trace_cursor;
int drpc_trace_cursor_open(drpc_trace *t, int node, drpc_trace_cursor **out,
                           drpc_error *err);
int drpc_trace_cursor_next(drpc_trace_cursor *c, drpc_trace_event *e,
                           drpc_error *err);
void drpc_trace_cursor_close(drpc_trace_cursor *c);
/* A cursor over every node's events in recording order (events.id; in a
 * merged file, the merged order): one pass over the table, no sort. */
int drpc_trace_cursor_open_recorded(drpc_trace *t, drpc_trace_cursor **out,
                                    drpc_error *err);

/* The schema's name for an event kind ("in_frame", "out_send", ...) and
 * its direction ("in", "out", "span"); NULL for kinds v1 does not know. */
const char *drpc_trace_kind_name(int kind);
const char *drpc_trace_kind_dir(int kind);

/* ---- merging ------------------------------------------------------------ */

/* Merges n per-worker recordings (one run each, disjoint nodes) into a new
 * recording at out_path: one run with backend "real", the other run fields
 * from inputs[0], config JSON {"merged_from": [{"path", "run", "backend",
 * "config"}...]}; the union of nodes; every event in (t_ns, node, seq)
 * order keeping its seq and stored hash; payloads and strings deduplicated
 * anew. Errors: those of drpc_trace_open for an input (prefixed with its
 * path), DRPC_EINVAL (n == 0 or above DRPC_TRACE_MERGE_MAX_INPUTS, a node
 * in two inputs, an input with several runs), those of drpc_recorder_open.
 * The output is removed on failure. */
int drpc_trace_merge(const char *out_path, const char *const *inputs, size_t n,
                     bool truncate, drpc_error *err);

/* ---- replay ------------------------------------------------------------- */

#define DRPC_TRACE_REPLAY_CONTEXT 64

typedef struct drpc_trace_replay_result {
  uint64_t events, inputs, outputs, incarnations;
  uint64_t first_ns, last_ns; /* recorded times */
  /* On DRPC_EDIVERGED: the differing event's seq, and descriptions of up
   * to `context` events before it (oldest first). */
  int64_t bad_seq;
  size_t ncontext;
  int64_t context_seq[DRPC_TRACE_REPLAY_CONTEXT];
  char context[DRPC_TRACE_REPLAY_CONTEXT][200];
} drpc_trace_replay_result;

/* Replays one node of t (drpc/replay.h): a fresh core per start event, fed
 * the node's inputs, every output checked. 0: identical; DRPC_EDIVERGED
 * with err saying what differs (recorded vs replayed) and res naming the
 * event; other codes when the recording cannot be read. */
int drpc_trace_replay_node(drpc_trace *t, int16_t node, int context,
                           drpc_trace_replay_result *res, drpc_error *err);

/* Most nodes drpc_trace_replay_nodes replays in one pass: each holds its
 * core, its replay state (~9 KB) and a read-ahead statement throughout. */
#define DRPC_TRACE_REPLAY_NODES_MAX 64

/* Replays n nodes of t (ascending ids, as drpc_trace_nodes lists them) in
 * one pass over the events in recording order, each node as
 * drpc_trace_replay_node would: every node's core sees the same events in
 * the same order, since the pass gives up as soon as a node's events are
 * not in seq order. One pass reads the file once; a pass per node walked
 * an index and looked up each row. Returns 0 when every node replayed
 * identical, res[i] holding node i's counts (no context); 1 when the pass
 * cannot tell (a node diverged or failed, a row is corrupt, events are out
 * of seq order, memory ran out): then replay the nodes one by one with
 * drpc_trace_replay_node, which reports where and why. DRPC_EINVAL (with
 * err) for NULL arguments, more than DRPC_TRACE_REPLAY_NODES_MAX nodes or
 * ids not ascending. */
int drpc_trace_replay_nodes(drpc_trace *t, const int16_t *nodes, size_t n,
                            drpc_trace_replay_result *res, drpc_error *err);

#ifdef __cplusplus
}
#endif
#endif
