/* Profiling RPCs (PyTorch's RemoteProfilerManager, the server process-global
 * profiler, _set_profiler_node_id and enable_gil_profiling).
 *
 * Caller side: a drpc_profiler enabled on a thread profiles every
 * rpc_sync / rpc_async that thread makes through the profiler's agent. The
 * caller records an event named by PyTorch's key
 *   rpc_{sync|async}#{fn}({src} -> {dst})
 * from send to completion; the request carries DRPC_FLAG_PROFILE and a
 * profiling id, the callee records the function's run (named fn) plus
 * whatever the function records with drpc_profiler_record_begin/end, and
 * returns those events with the response; the caller renames each
 * "<key>#remote_op: <name>", keeps the callee's node id, marks it remote
 * and appends it after the local event. Error responses carry no remote
 * events (the local event is still recorded). to_here fetches and
 * drpc_remote calls are never profiled remotely.
 *
 * Wire (only when the flag is set; unflagged frames are unchanged):
 *   CALL     flags DRPC_FLAG_PROFILE, body [kind, name, args, kwargs,
 *            [worker id, local id]]
 *   RESPONSE flags DRPC_FLAG_PROFILE, body [value, [worker id, local id],
 *            [[name, node id, start ns, end ns, thread id]...]]
 *
 * Times are the env clock of the node that recorded them. */
#ifndef DRPC_PROFILER_H
#define DRPC_PROFILER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "drpc/agent.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct drpc_profiler_event {
  char *name; /* owned */
  int16_t node_id;
  uint64_t start_ns, end_ns;
  uint64_t thread_id; /* a process-unique id of the recording thread */
  bool is_remote;
} drpc_profiler_event;

typedef struct drpc_profiler_events {
  size_t n;
  drpc_profiler_event *events;
} drpc_profiler_events;

/* Frees the events' names and array and zeroes e (not e itself). */
void drpc_profiler_events_free(drpc_profiler_events *e);
/* Frees n lists (each as above) and the array itself. */
void drpc_profiler_events_free_all(drpc_profiler_events *lists, size_t n);

typedef struct drpc_profiler drpc_profiler;

/* A caller-side profiler for calls made through agent. NULL: no memory. */
drpc_profiler *drpc_profiler_new(drpc_agent *agent);
/* Makes p the calling thread's current profiler / stops that. */
void drpc_profiler_enable(drpc_profiler *p);
void drpc_profiler_disable(drpc_profiler *p);
/* A copy of the events recorded so far (calls still in flight add theirs
 * when they complete). Free with drpc_profiler_events_free. */
int drpc_profiler_events_get(drpc_profiler *p, drpc_profiler_events *out);
/* Calls still in flight keep what they need alive. */
void drpc_profiler_free(drpc_profiler *p);

/* A user event on the calling thread (nesting allowed): inside a function
 * served for a profiled request it goes back to the caller; otherwise to
 * the thread's enabled profiler, if any. end closes the innermost open
 * event named name (NULL: the innermost one). */
int drpc_profiler_record_begin(const char *name);
int drpc_profiler_record_end(const char *name);

/* The server process-global profiler: enable pushes a range on the agent's
 * stack (nesting allowed); every request the agent serves while ranges are
 * open appends its events (the function's run and what it recorded) to
 * the range open when it arrived and all enclosing ones. disable pops the
 * top range and returns its per-request lists (free with
 * drpc_profiler_events_free_all); DRPC_EINVAL when none is open. */
int drpc_server_profiler_enable(drpc_agent *agent);
int drpc_server_profiler_disable(drpc_agent *agent,
                                 drpc_profiler_events **per_request, size_t *n);

/* The node id stamped on events: drpc_agent_start sets the default to its
 * worker id; this overrides it for every event recorded afterwards. */
void drpc_set_profiler_node_id(int16_t id);
int16_t drpc_profiler_node_id(void);

/* Dispatch-path wait profiling (the GIL wait of the reference): the time
 * a served request waits between arriving on the loop and starting on the
 * executor, averaged in µs as metric agent.gil_average_wait_time_us while
 * enabled. */
void drpc_agent_enable_gil_profiling(drpc_agent *agent, bool on);

#ifdef __cplusplus
}
#endif
#endif
