/* The RPC agent: options, worker infos, the function registry, calls,
 * timeouts, metrics, join and shutdown. Backend-neutral: the agent talks to
 * the world only through its drpc_env. */
#ifndef DRPC_AGENT_H
#define DRPC_AGENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "drpc/env.h"
#include "drpc/error.h"
#include "drpc/future.h"
#include "drpc/store.h"
#include "drpc/value.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DRPC_DEFAULT_INIT_METHOD "env://"
#define DRPC_DEFAULT_NUM_WORKER_THREADS 16
#define DRPC_UNSET_RPC_TIMEOUT (-1.0)
#define DRPC_DEFAULT_RPC_TIMEOUT_SEC 60.0
#define DRPC_DEFAULT_SHUTDOWN_TIMEOUT_SEC 60.0
#define DRPC_MAX_NAME_LEN 127 /* names are shorter than 128 chars */
#define DRPC_MAX_DEVICE_MAPS 64
#define DRPC_MAX_DEVICES 64
#define DRPC_MAX_WORKERS 32768

/* ---- worker info ------------------------------------------------------ */

typedef struct drpc_worker_info {
  char name[DRPC_MAX_NAME_LEN + 1];
  int16_t id;
} drpc_worker_info;

/* Checks the name rules (non-empty, < 128 chars, ^[A-Za-z0-9-_:]*$) and
 * that id fits int16, with the reference's error texts. */
int drpc_worker_info_init(drpc_worker_info *wi, const char *name, int64_t id,
                          drpc_error *err);
bool drpc_worker_info_equal(const drpc_worker_info *a,
                            const drpc_worker_info *b);
/* "WorkerInfo(id=0, name=worker0)". */
size_t drpc_worker_info_format(const drpc_worker_info *wi, char *buf, size_t n);
int drpc_validate_worker_name(const char *name, drpc_error *err);

/* ---- options ---------------------------------------------------------- */

typedef struct drpc_device_map_entry {
  char peer[DRPC_MAX_NAME_LEN + 1];
  int n;
  drpc_device from[DRPC_MAX_DEVICES];
  drpc_device to[DRPC_MAX_DEVICES];
} drpc_device_map_entry;

typedef struct drpc_options {
  double rpc_timeout_s;      /* default per-call timeout; 0 = never */
  const char *init_method;   /* borrowed; "env://", "tcp://h:p", "file://" */
  int num_worker_threads;    /* > 0 */
  uint64_t max_frame_bytes;  /* frames above this are refused */
  double shutdown_timeout_s; /* graceful shutdown bound; 0 = forever */
  int n_device_maps;
  drpc_device_map_entry device_maps[DRPC_MAX_DEVICE_MAPS];
  int n_devices;
  drpc_device devices[DRPC_MAX_DEVICES];
  const char *transports[4];      /* NULL-terminated; "tcp" */
  const char *channels[4];        /* NULL-terminated; "basic" */
  struct drpc_registry *registry; /* NULL: the process-global registry */
  /* Graceful shutdown ends with the RRef leak check; when false, RRefs
   * still forked then make shutdown fail with "Leaking RRef <id> with fork
   * Id <id>" lines (as PyTorch's _ignore_rref_leak, default true). */
  bool ignore_rref_leak;
  /* Dynamic groups: a member that does not answer a heartbeat or a probe
   * within this many seconds is removed from the group (every worker
   * watches the next one by id; heartbeats go every third of it). 0 turns
   * heartbeats off: only lost connections are noticed. Default 10. */
  double member_timeout_s;
  /* Which life of this worker this is (0: the first). A worker restarted
   * under the same name and id after a crash passes a higher one: its
   * RRef and fork ids then start at incarnation << 32, so that ids of an
   * earlier life that peers may still hold are never named again. Below
   * 65536. */
  uint32_t incarnation;
} drpc_options;

void drpc_options_default(drpc_options *o);
/* Checks every field, with the reference's messages. */
int drpc_options_validate(const drpc_options *o, drpc_error *err);
/* Adds map[i] from -> to for messages sent to peer. Rejects negative
 * indices and maps that are not 1-to-1, as the reference does. */
int drpc_options_set_device_map(drpc_options *o, const char *peer,
                                const drpc_device *from, const drpc_device *to,
                                int n, drpc_error *err);

/* Writes what a worker publishes at start under addrs/<name>: its
 * address, then on a second line its device information (CUDA device
 * count, host, devices, device maps), which every worker reads at start.
 * drpc_agent_start writes it; harnesses that start agents one after the
 * other on one thread write it for every worker with device maps first. */
int drpc_agent_publish_devices(drpc_store *st, const char *name,
                               const char *addr, const drpc_options *o,
                               drpc_error *err);

/* Claims the group's mode in the store (key rpcIsStaticGroup): DRPC_EINVAL
 * with the reference's "RPC group mixes statically and dynamically
 * initialized members..." when the other mode holds it. Agents do it at
 * start; drpc_init also in the shared store above its per-group prefix. */
int drpc_store_claim_group_mode(drpc_store *s, bool is_static, drpc_error *err);

/* ---- functions -------------------------------------------------------- */

typedef struct drpc_agent drpc_agent;
typedef struct drpc_call drpc_call;
typedef struct drpc_registry drpc_registry;

/* A plain function: returns the result (owned by drpc; NULL is nil) or sets
 * err and returns NULL. args is a list and kwargs a dict, both borrowed. */
typedef drpc_value *(*drpc_function)(drpc_call *call, const drpc_value *args,
                                     const drpc_value *kwargs, drpc_error *err);
/* An async-execution function: returns a future (drpc takes the reference)
 * whose completion sends the response; the worker thread is freed at once.
 * NULL with err set is an immediate failure. */
typedef drpc_future *(*drpc_async_function)(drpc_call *call,
                                            const drpc_value *args,
                                            const drpc_value *kwargs,
                                            drpc_error *err);

drpc_registry *drpc_registry_new(void);
void drpc_registry_free(drpc_registry *r);
/* The process-global registry that agents use unless options name one. */
drpc_registry *drpc_registry_default(void);
/* Registers fn under name (copied; "ns::fn" qualified names are fine).
 * Register before starting agents that use the registry. DRPC_EEXISTS when
 * the name is taken. user is handed back through drpc_call_user. */
int drpc_register_function(drpc_registry *r, const char *name, drpc_function fn,
                           void *user);
int drpc_register_async_function(drpc_registry *r, const char *name,
                                 drpc_async_function fn, void *user);

/* What a function may ask about the call it serves. */
drpc_agent *drpc_call_agent(drpc_call *call);
const drpc_worker_info *drpc_call_caller(drpc_call *call);
void *drpc_call_user(drpc_call *call);
const char *drpc_call_name(drpc_call *call);

/* ---- the agent -------------------------------------------------------- */

typedef enum drpc_call_kind {
  DRPC_BUILTIN = 0,  /* "aten::add" and friends, run by the callee's ops */
  DRPC_FUNCTION = 1, /* a function registered by name on the callee */
} drpc_call_kind;

/* Starts an agent: validates options and names, publishes this worker's
 * name and address in the store (names/<rank>, addrs/<name>), waits for
 * the whole static group (world_size > 0) and checks names are unique.
 * world_size <= 0 starts a dynamic group member: it takes the
 * group-management token, claims its rank ("RPC worker id R is not
 * unique..."), checks its name against the members and reads their
 * addresses; then drpc_agent_announce tells them. Its graceful shutdown
 * leaves the group (see core/membership.c).
 * store is borrowed for the agent's life (a reference is taken); env must
 * outlive the agent. On failure *out is NULL and err says why. */
int drpc_agent_start(drpc_agent **out, drpc_store *store, const char *name,
                     int64_t rank, int64_t world_size, const drpc_options *opts,
                     const drpc_env *env, drpc_error *err);

/* Shuts down. graceful: wait for this worker's outstanding calls, then agree
 * with every worker through the store that all calls everywhere are done,
 * then tear down; never waits past timeout_s (0 = no bound, < 0 = the
 * options' shutdown timeout); on timeout err names the workers that did
 * not answer. Not graceful: tear down now, failing pending calls. Either
 * way the agent stops serving; free it with drpc_agent_free. */
int drpc_agent_shutdown(drpc_agent *a, bool graceful, double timeout_s,
                        drpc_error *err);
/* join(shutdown=false): waits until no worker has calls in flight. */
int drpc_agent_join(drpc_agent *a, double timeout_s, drpc_error *err);
/* A barrier across all workers through the store. */
int drpc_agent_sync(drpc_agent *a, double timeout_s, drpc_error *err);
/* Frees a shut-down agent (shuts it down ungracefully first if needed).
 * The backend must have stopped delivering inputs. */
void drpc_agent_free(drpc_agent *a);

/* Destination forms: a name, an id, or a worker info. */
int drpc_agent_resolve(drpc_agent *a, const char *name, drpc_worker_info *out,
                       drpc_error *err);
int drpc_agent_resolve_id(drpc_agent *a, int64_t id, drpc_worker_info *out,
                          drpc_error *err);

/* Sends a call to dst and returns its future (one reference for the
 * caller). args (a list, or NULL) and kwargs (a dict, or NULL) are borrowed
 * and encoded before return. timeout_s: DRPC_UNSET_RPC_TIMEOUT uses the
 * agent's default, 0 never expires, other negatives are DRPC_EINVAL.
 * Immediate errors (unknown destination, unknown builtin, shut down, bad
 * arguments) return non-zero with *fut NULL; everything later completes the
 * future. */
int drpc_rpc_async(drpc_agent *a, const char *dst, drpc_call_kind kind,
                   const char *fn, const drpc_value *args,
                   const drpc_value *kwargs, double timeout_s,
                   drpc_future **fut, drpc_error *err);
int drpc_rpc_async_id(drpc_agent *a, int16_t dst, drpc_call_kind kind,
                      const char *fn, const drpc_value *args,
                      const drpc_value *kwargs, double timeout_s,
                      drpc_future **fut, drpc_error *err);
/* rpc_async + wait. On success *result is owned by the caller. */
int drpc_rpc_sync(drpc_agent *a, const char *dst, drpc_call_kind kind,
                  const char *fn, const drpc_value *args,
                  const drpc_value *kwargs, double timeout_s,
                  drpc_value **result, drpc_error *err);

const drpc_worker_info *drpc_agent_self(drpc_agent *a);
/* Borrowed array of every worker, sorted by id. */
const drpc_worker_info *drpc_agent_workers(drpc_agent *a, size_t *n);
int drpc_agent_worker_by_name(drpc_agent *a, const char *name,
                              drpc_worker_info *out, drpc_error *err);
int drpc_agent_worker_by_id(drpc_agent *a, int64_t id, drpc_worker_info *out,
                            drpc_error *err);
bool drpc_agent_is_static_group(drpc_agent *a);
/* A copy of the current members, sorted by id (malloc'd; NULL and *n 0
 * when out of memory). In a dynamic group the array drpc_agent_workers
 * lends stays valid for the next 16 membership changes only; this one is
 * the caller's. */
drpc_worker_info *drpc_agent_workers_copy(drpc_agent *a, size_t *n);
size_t drpc_agent_num_members(drpc_agent *a);
/* Dynamic groups: the highest membership epoch this worker applied (every
 * join, leave or removal takes the next one); 0 for static groups. */
uint64_t drpc_agent_membership_epoch(drpc_agent *a);
/* Dynamic groups (world_size <= 0 at start): tells every member that this
 * worker joined and waits for their answers, then starts the heartbeats.
 * Call once the backend delivers the agent's inputs (drpc_init does);
 * until then the others do not know it. A no-op for static groups. */
int drpc_agent_announce(drpc_agent *a, drpc_error *err);
/* The device map toward peer as the agent uses it (at most max pairs);
 * *n gets the count (0 when none). */
int drpc_agent_device_map(drpc_agent *a, const char *peer, drpc_device *from,
                          drpc_device *to, int max, int *n, drpc_error *err);
/* The agent's devices, sorted (as configured, else every CUDA device its
 * maps and its peers' maps toward it name); returns the count, which may
 * exceed max. */
int drpc_agent_devices(drpc_agent *a, drpc_device *out, int max);
drpc_store *drpc_agent_store(drpc_agent *a);
const drpc_options *drpc_agent_options(drpc_agent *a);
const drpc_env *drpc_agent_env(drpc_agent *a);

double drpc_agent_rpc_timeout(drpc_agent *a);
/* Changes the default timeout for calls sent from now on. */
int drpc_agent_set_rpc_timeout(drpc_agent *a, double timeout_s,
                               drpc_error *err);

/* Metrics with the reference's keys (agent.thread_pool_size, ...), as a
 * dict of strings; the caller frees it. */
drpc_value *drpc_agent_metrics(drpc_agent *a);
/* Metrics plus internal counters (frames, bytes, connections). */
drpc_value *drpc_agent_debug_info(drpc_agent *a);

/* ---- inputs from the backend (owner thread only) --------------------- */

/* An outgoing connection opened. */
void drpc_agent_on_conn_open(drpc_agent *a, uint64_t conn);
/* An incoming connection was accepted. */
void drpc_agent_on_conn_accept(drpc_agent *a, uint64_t conn);
/* A connection closed or failed (reason copied). */
void drpc_agent_on_conn_closed(drpc_agent *a, uint64_t conn,
                               const drpc_error *reason);
/* A decoded message arrived (ownership of m's contents moves to the core). */
void drpc_agent_on_message(drpc_agent *a, uint64_t conn, drpc_msg *m);
/* The same, with the frame's bytes as received (raw, raw_len) when the
 * backend still holds them whole (NULL otherwise): a recording agent then
 * records them instead of re-encoding m, where that gives the same bytes. */
void drpc_agent_on_message_raw(drpc_agent *a, uint64_t conn, drpc_msg *m,
                               const uint8_t *raw, size_t raw_len);
/* A whole frame arrived as bytes; a malformed one closes conn and logs. */
void drpc_agent_on_frame(drpc_agent *a, uint64_t conn, const uint8_t *buf,
                         size_t len);
/* The armed timer fired (the core reads the clock itself). */
void drpc_agent_on_timer(drpc_agent *a);
/* Wire limits the backend must apply to incoming frames. */
const drpc_wire_limits *drpc_agent_wire_limits(drpc_agent *a);

/* ---- the process-default agent --------------------------------------- */

/* Set by the init helpers; NULL when none. */
drpc_agent *drpc_current_agent(void);
/* Fails with "RPC is already initialized" when one is set. */
int drpc_set_current_agent(drpc_agent *a, drpc_error *err);
void drpc_reset_current_agent(void);
/* The current agent, or DRPC_ENOTINIT with the reference's text. */
int drpc_get_current_agent(drpc_agent **out, drpc_error *err);

#ifdef __cplusplus
}
#endif
#endif
