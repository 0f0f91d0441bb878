/* Internal declarations shared by the core's modules. */
#ifndef DRPC_CORE_INTERNAL_H
#define DRPC_CORE_INTERNAL_H

#include "drpc/agent.h"
#include "drpc/device.h"
#include "drpc/rref.h"
#include "drpc/wire.h"

typedef struct drpc_registry_entry {
  char *name;
  drpc_function fn;
  drpc_async_function afn;
  void *user;
} drpc_registry_entry;

const drpc_registry_entry *drpc_registry_lookup(const drpc_registry *r,
                                                const char *name);

/* ---- between agent.c and rref.c ---------------------------------------- */

/* Call kinds on the wire beyond the public ones: proxies run fn on the
 * owner with the RRef's value (args[0] names the RRef) as first argument. */
#define DRPC_KIND_RREF_FUNCTION 2
#define DRPC_KIND_RREF_BUILTIN 3
/* The proxy function that answers an RRef's value kind name. */
#define DRPC_RREF_TYPE_FN "drpc::rref_type"
/* The connection id of calls an agent makes to itself. */
#define DRPC_SELF_CONN UINT64_MAX

typedef struct drpc_rctx drpc_rctx;
/* Forks made while encoding one frame; applied on the loop right before
 * the frame leaves (see drpc_rref_encode). */
typedef struct drpc_fork_list drpc_fork_list;

/* A call on the callee that waits for RRefs (confirmation of user RRefs in
 * its arguments, the value of a proxy's owner RRef). Loop thread only:
 * ready runs once pending drops to zero. */
typedef struct drpc_rref_waiter drpc_rref_waiter;
struct drpc_rref_waiter {
  int pending;
  void (*ready)(drpc_rref_waiter *w);
};

/* agent.c, any thread. */
drpc_rctx *drpc_agent_rctx(drpc_agent *a);
bool drpc_agent_stopped(drpc_agent *a);
/* Resolves timeout_s (DRPC_UNSET_RPC_TIMEOUT: the default) to ms, 0 = none. */
int drpc_agent_timeout_ms(drpc_agent *a, double timeout_s, uint64_t *ms,
                          drpc_error *err);
/* Checks and encodes a CALL (kind may be an internal kind) and posts it;
 * as drpc_rpc_async_id. */
int drpc_agent_call(drpc_agent *a, int16_t dst, int kind, const char *fn,
                    const drpc_value *args, const drpc_value *kwargs,
                    double timeout_s, drpc_future **fut, drpc_error *err);
/* The checks drpc_agent_call makes before encoding. */
int drpc_agent_check_call(drpc_agent *a, int16_t dst, int kind, const char *fn,
                          const drpc_value *args, const drpc_value *kwargs,
                          double timeout_s, uint64_t *timeout_ms,
                          drpc_error *err);
/* Posts an encoded request (frame and forks are taken) whose response
 * completes fut (a reference is taken). Counts as a client call. */
void drpc_agent_post_request(drpc_agent *a, int16_t dst, drpc_outframe *frame,
                             drpc_fork_list *forks, uint64_t timeout_ms,
                             drpc_future *fut, const char *label,
                             const char *fn);
/* drpc_agent_call naming the call's span (label: a static string such as
 * "rpc_sync"). */
int drpc_agent_call_labelled(drpc_agent *a, int16_t dst, int kind,
                             const char *fn, const drpc_value *args,
                             const drpc_value *kwargs, double timeout_s,
                             const char *label, drpc_future **fut,
                             drpc_error *err);
/* Waits (user thread) until pred(arg) holds or deadline_ns (0: none)
 * passes; pred reads state the loop publishes with drpc_agent_notify. */
int drpc_agent_wait(drpc_agent *a, bool (*pred)(void *arg), void *arg,
                    uint64_t deadline_ns);
/* Runs fn(arg) on the loop and waits for it (user thread). */
int drpc_agent_run_on_loop(drpc_agent *a, int type, void (*fn)(void *arg),
                           void *arg);
void drpc_agent_logf(drpc_agent *a, drpc_log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* agent.c, loop thread. */
void drpc_agent_notify(drpc_agent *a);
/* Encodes body as a request of type to dst, registers it and sends it;
 * the response completes fut (a reference is taken; failures complete it
 * too, also at once). Counts as a client call. */
void drpc_agent_request(drpc_agent *a, int16_t dst, uint8_t type,
                        const drpc_value *body, uint64_t timeout_ms,
                        drpc_future *fut);
/* Answers request id on conn (RRefs in body are forked to the peer). */
void drpc_agent_reply(drpc_agent *a, uint64_t conn, uint8_t type, uint64_t id,
                      const drpc_value *body);
void drpc_agent_reply_error(drpc_agent *a, uint64_t conn, uint64_t id, int code,
                            const char *msg);
/* General timers beside the call timeouts: fn(arg, true) when deadline_ns
 * passes, fn(arg, false) when the agent stops first (release arg). */
typedef struct drpc_timer drpc_timer;
drpc_timer *drpc_agent_timer_add(drpc_agent *a, uint64_t deadline_ns,
                                 void (*fn)(void *arg, bool fired), void *arg);

/* rref.c. Local ids start at first_local_id (a worker's later lives
 * start higher; see drpc_options.incarnation). */
drpc_rctx *drpc_rctx_new(drpc_agent *a, const drpc_worker_info *self,
                         const drpc_env *env, int64_t first_local_id);
/* The agent's reference; the context lives on while handles use it. */
void drpc_rctx_release(drpc_rctx *c);
/* Loop thread: marks the context destroyed (handles stop sending), clears
 * the tables and returns the leak report (malloc'd; NULL when none). */
char *drpc_rctx_destroy(drpc_rctx *c);
int drpc_rctx_debug_info(drpc_rctx *c, drpc_value *dict);

/* Any thread: encodes a frame whose body may hold RRef handles, forking
 * each; *forks (may stay NULL) must reach drpc_fork_list_apply on the loop
 * before the frame is sent, or drpc_fork_list_drop. */
int drpc_rref_encode(drpc_agent *a, uint8_t type, uint64_t id,
                     const drpc_value *body, int16_t dst, drpc_outframe **out,
                     drpc_fork_list **forks, drpc_error *err);
void drpc_fork_list_apply(drpc_agent *a, drpc_fork_list *l);
void drpc_fork_list_drop(drpc_fork_list *l);
/* Loop thread: turns the fork data in body (from worker `from`) into
 * handles, running the receiver's side of the fork protocol. User RRefs
 * still waiting for their owner add to w->pending (w may be NULL). */
int drpc_rref_accept(drpc_agent *a, drpc_value *body, int16_t from,
                     drpc_rref_waiter *w, drpc_error *err);
/* Loop thread: a request of an RRef message type. */
void drpc_rref_on_request(drpc_agent *a, uint64_t conn, int16_t from,
                          drpc_msg *m);
/* Loop thread, REMOTE_CALL on the owner: the owner RRef (a new reference)
 * with fork registered. */
drpc_rref *drpc_rref_remote_owner(drpc_agent *a, drpc_rref_id id,
                                  drpc_rref_id fork);
/* Loop thread: sets the owner's value (taken) or error. */
void drpc_rref_owner_settle(drpc_rref *owner, drpc_value *value,
                            const drpc_error *err);
/* Loop thread: adds to w->pending until the owner's value is set. */
void drpc_rref_wait_value(drpc_rref *owner, drpc_rref_waiter *w);
/* The owner's value (borrowed) once set; NULL with err for a stored error. */
const drpc_value *drpc_rref_peek_value(drpc_rref *owner, drpc_error *err);
/* Any thread: drpc_remote_id with an internal call kind (proxies). */
int drpc_rref_remote_kind(drpc_agent *a, int16_t dst, int kind, const char *fn,
                          const drpc_value *args, const drpc_value *kwargs,
                          double timeout_s, drpc_rref **out, drpc_error *err);
/* User thread, graceful shutdown: drpc_rref_context_delete_all with a
 * deadline. */
int drpc_rref_shutdown_cleanup(drpc_agent *a, uint64_t deadline_ns,
                               drpc_error *err);

/* ---- recording (agent.c, event.c) --------------------------------------- */

/* Command types in DRPC_EV_IN_COMMAND events (aux) and job results in
 * DRPC_EV_IN_JOB_DONE (aux). Their argument layouts: traces/SCHEMA.md. */
enum {
  DRPC_CMD_CALL = 1,
  DRPC_CMD_STOP = 2,
  DRPC_CMD_RELEASE = 3,
  DRPC_CMD_REMOTE = 4,
  DRPC_CMD_DELETE_USERS = 5,
  DRPC_CMD_HEARTBEAT = 6, /* dynamic groups: heartbeats start */
  DRPC_CMD_VIEW = 7,      /* dynamic groups: the member list's view */
  DRPC_CMD_LEAVING = 8,   /* dynamic groups: this worker leaves */
};
enum { DRPC_JOB_SEND = 0, DRPC_JOB_REMOTE_DONE = 1 };

/* A growable byte buffer for event payloads (little-endian fields). */
typedef struct drpc_rbuf {
  uint8_t *p;
  size_t len, cap;
  bool failed;
} drpc_rbuf;
void drpc_rbuf_u64(drpc_rbuf *b, uint64_t v);
void drpc_rbuf_blob(drpc_rbuf *b, const void *p, size_t n);
/* A blob with the frame's bytes as they would go on the wire. */
/* Waits for the frame's pending device copies first. */
void drpc_rbuf_frame(drpc_rbuf *b, drpc_outframe *f);
/* The frame's bytes as they would go on the wire, with no length prefix
 * (copied piece by piece, never flattened first). */
void drpc_rbuf_put_frame(drpc_rbuf *b, const drpc_outframe *f);
/* Empties b for reuse, keeping its memory when it holds at most keep
 * bytes (freeing it otherwise). */
void drpc_rbuf_reset(drpc_rbuf *b, size_t keep);
void drpc_rbuf_free(drpc_rbuf *b);

typedef struct drpc_rreader {
  const uint8_t *p;
  size_t len, pos;
  bool bad; /* read past the end: every later read gives 0 / NULL */
} drpc_rreader;
uint64_t drpc_rr_u64(drpc_rreader *r);
const uint8_t *drpc_rr_blob(drpc_rreader *r, size_t *n);

/* True when a recorder keeps payloads (frames, commands). */
bool drpc_agent_recording(drpc_agent *a);
/* Records an event at the time of the input being applied. */
void drpc_agent_record(drpc_agent *a, drpc_event_kind kind, int16_t peer,
                       uint64_t id, uint64_t aux, const void *bytes, size_t len,
                       const char *name);
/* The time of the input being applied (loop thread). */
uint64_t drpc_agent_loop_now(drpc_agent *a);
/* Starts an input that is not one of the drpc_agent_on_* functions (a
 * command applied on the loop): reads the clock once. */
void drpc_agent_input_begin(drpc_agent *a);

/* rref.c: fork lists in command payloads. */
void drpc_fork_list_write(const drpc_fork_list *l, drpc_rbuf *b);
void drpc_rref_write_ids(const drpc_rref *r, drpc_rbuf *b);

/* ---- replay support (agent.c, rref.c; used by core/replay.c) ------------ */
/* What a command posted on the loop would record itself as. */
int drpc_cmd_identify(drpc_cmd *cmd, drpc_event_kind *kind, uint64_t *type,
                      uint64_t *key, uint64_t *conn);
int drpc_rref_cmd_identify(drpc_cmd *cmd, drpc_event_kind *kind, uint64_t *type,
                           uint64_t *key);
bool drpc_cmd_call_frame_is(drpc_cmd *cmd, const uint8_t *p, size_t n);
uint64_t drpc_call_job_conn(drpc_job *job);
uint64_t drpc_call_job_req_id(drpc_job *job);
drpc_value *drpc_call_job_body(drpc_job *job);
int drpc_agent_replay_call(drpc_agent *a, drpc_rreader *r, drpc_future **fut,
                           drpc_error *err);
int drpc_agent_replay_stop(drpc_agent *a, drpc_rreader *r, drpc_error *err);
int drpc_agent_replay_job_done(drpc_agent *a, drpc_job *job, uint64_t kind,
                               drpc_rreader *r, drpc_error *err);
void drpc_agent_replay_delete_users(drpc_agent *a);
drpc_value *drpc_agent_config_value(drpc_agent *a);
int drpc_fork_list_read(drpc_agent *a, drpc_rreader *rd, drpc_fork_list **out,
                        drpc_error *err);
void drpc_rref_delete_users_now(drpc_agent *a);
int drpc_rref_replay_remote(drpc_agent *a, drpc_rreader *rd, drpc_rref **out,
                            drpc_error *err);
uint64_t drpc_rref_fork_key(const drpc_rref *r);
void drpc_call_job_discard(drpc_job *job);
void drpc_agent_replay_force_stop(drpc_agent *a);

/* ---- profiler hooks (profiler.c; called from agent.c) ------------------- */
/* Header flag of a profiled CALL and of its RESPONSE (see drpc/profiler.h
 * for the body layouts). */
#define DRPC_FLAG_PROFILE 0x0001u

typedef struct drpc_agent_prof drpc_agent_prof;
typedef struct drpc_prof_pending drpc_prof_pending;
typedef struct drpc_prof_req drpc_prof_req;

drpc_agent_prof *drpc_agent_prof_new(drpc_agent *a, const drpc_env *env,
                                     int16_t self_id);
void drpc_agent_prof_free(drpc_agent_prof *p);
/* agent.c: the agent's profiling state. */
drpc_agent_prof *drpc_agent_prof_of(drpc_agent *a);

/* Caller, user thread: non-NULL when the thread's enabled profiler is for
 * a and label is rpc_sync/rpc_async; wid and lid get the profiling id. */
drpc_prof_pending *drpc_prof_call_begin(drpc_agent *a, int16_t dst,
                                        const char *label, const char *fn,
                                        int64_t *wid, int64_t *lid);
/* The call was posted: completes when fut does (takes no reference). */
void drpc_prof_call_attach(drpc_prof_pending *pp, drpc_future *fut);
/* The call was never posted. */
void drpc_prof_call_abort(drpc_prof_pending *pp);
/* Caller, loop: a flagged RESPONSE; takes body [value, id, events] apart
 * (the events go to the pending call) and returns the value (taken out
 * of body), or NULL when body is malformed. */
drpc_value *drpc_prof_on_response(drpc_agent *a, drpc_value *body);

/* Callee, loop: a request arrives (flagged: the caller asked, with id).
 * NULL when nothing is to be profiled. */
drpc_prof_req *drpc_prof_serve_begin(drpc_agent *a, const char *fn,
                                     bool flagged, int64_t wid, int64_t lid);
/* Callee, loop: the arrival time for the GIL-wait metric (0: off). */
uint64_t drpc_prof_arrival(drpc_agent *a, uint64_t now_ns);
/* Executor: around running the function; returns what leave restores. */
void *drpc_prof_run_enter(drpc_agent *a, drpc_prof_req *r, uint64_t arrive_ns);
void drpc_prof_run_leave(void *saved);
/* Any thread, the call completes: closes the function's event, hands the
 * events to the server ranges and, for a flagged request that succeeded,
 * returns [value, id, events] wrapping *result (else NULL, result
 * untouched). Frees r. */
drpc_value *drpc_prof_serve_end(drpc_prof_req *r, drpc_value *result, bool ok);
void drpc_prof_req_free(drpc_prof_req *r);
/* Appends agent.gil_average_wait_time_us to the metrics while enabled. */
int drpc_prof_metrics(drpc_agent *a, drpc_value *dict);

/* agent_dev.c: devices, device maps and moving tensors between devices. */
typedef struct drpc_devstate drpc_devstate;
drpc_devstate *drpc_agent_devstate(drpc_agent *a);
/* A peer's published device information (NULL: it published none). */
const char *drpc_agent_peer_devinfo(drpc_agent *a, int16_t id);
/* After the rendezvous: exchanges device information, validates every
 * worker's maps, builds reverse maps and the agent's devices. */
int drpc_dev_start(drpc_agent *a, drpc_devstate **out, drpc_error *err);
void drpc_dev_free(drpc_devstate *d);
/* Encodes a message to worker dst with its tensors planned by the device
 * maps (requests: this worker's map; responses: the reverse map). */
int drpc_dev_encode(drpc_agent *a, uint8_t type, uint64_t id,
                    const drpc_value *body, int16_t dst,
                    drpc_wire_rref_fn rref_fn, void *rref_ctx,
                    drpc_outframe **out, drpc_error *err);
/* Loop: puts a received message's tensors on the devices it names (and
 * sends RELEASE for shared ones on conn). Copies still in flight are
 * described by *ready (set only when there are some; the caller owns it);
 * with ready NULL they are waited for. */
int drpc_dev_place(drpc_agent *a, uint64_t conn, int16_t from, drpc_msg *m,
                   drpc_devready **ready, drpc_error *err);
void drpc_dev_on_release(drpc_agent *a, int16_t from, const drpc_value *body);
void drpc_dev_peer_gone(drpc_agent *a, int16_t peer);
int drpc_dev_metrics(drpc_agent *a, drpc_value *dict);
int drpc_dev_devices(const drpc_devstate *d, drpc_device *out, int max);
/* Loop: a one-way frame (no response expected) on conn. */
void drpc_agent_send_oneway(drpc_agent *a, uint64_t conn, uint8_t type,
                            const drpc_value *body);

/* ---- dynamic group membership (core/membership.c) ---------------------- */

typedef struct drpc_members drpc_members;
drpc_members *drpc_agent_members(drpc_agent *a);
void drpc_agent_set_members(drpc_agent *a, drpc_members *m);
/* Joins the group (the token, the rank, the member list, the members'
 * addresses); agent.c's rendezvous for world_size <= 0. */
int drpc_members_join(drpc_agent *a, int64_t rank, const char *addr,
                      drpc_error *err);
/* Takes a worker whose start failed after joining out of the list. */
void drpc_members_undo_join(drpc_agent *a);
/* Graceful leave: own calls end, the list drops self, every member is
 * told, the calls served end. */
int drpc_members_leave(drpc_agent *a, uint64_t deadline, drpc_error *err);
void drpc_members_free(drpc_members *m);
/* The epoch this worker (last) joined at; 0 for static groups. */
uint64_t drpc_members_join_epoch(drpc_agent *a);
/* Replay: the loop commands of membership (DRPC_CMD_HEARTBEAT, _VIEW,
 * _LEAVING) applied from their records; membership's executor jobs are
 * recognised and dropped (their effects are recorded as commands). */
int drpc_members_replay_command(drpc_agent *a, uint64_t type, drpc_rreader *rd,
                                drpc_error *err);
bool drpc_members_job_discard(drpc_job *job);
/* Notices (JOIN and LEAVE telling members of a change) carry this label;
 * call_apply gives each to drpc_members_notice, which retries it while
 * the member is listed. */
extern const char drpc_notice_label[];
void drpc_members_notice(drpc_agent *a, drpc_future *f, int16_t dst,
                         const drpc_outframe *frame);
/* The loop's handler of JOIN and LEAVE requests. */
void drpc_members_on_request(drpc_agent *a, uint64_t conn, drpc_msg *m);
/* The loop lost its connection to member id: check it, remove it if dead. */
void drpc_members_suspect(drpc_agent *a, int16_t id, const char *why);
/* The member table (agent.c). put adds or replaces a member (addr may
 * carry "\n<device information>"); del removes one, failing the calls to
 * it; both on the loop or before the agent runs. */
int drpc_agent_peer_put(drpc_agent *a, const drpc_worker_info *wi,
                        const char *addr, uint64_t epoch, drpc_error *err);
void drpc_agent_peer_del(drpc_agent *a, int16_t id, uint64_t epoch,
                         const char *why);
/* True when member wi is listed with this name and address. */
bool drpc_agent_peer_same(drpc_agent *a, const drpc_worker_info *wi,
                          const char *addr);
/* Member id's address and device information ("" when none), malloc'd;
 * false (both NULL) when it is not a member or memory runs out. */
bool drpc_agent_peer_addr(drpc_agent *a, int16_t id, char **addr, char **dev);
bool drpc_agent_member_epoch_advance(drpc_agent *a, int16_t id, uint64_t epoch);
/* The epoch of the last change of member id applied (0: none). */
uint64_t drpc_agent_member_last_epoch(drpc_agent *a, int16_t id);
/* Waits (bounded) until this worker has no calls in flight / serves none. */
int drpc_agent_wait_idle(drpc_agent *a, uint64_t deadline, drpc_error *err);
int drpc_agent_wait_served(drpc_agent *a, uint64_t deadline, drpc_error *err);
/* Device maps toward a member that joined / left (core/agent_dev.c). */
int drpc_dev_peer_join(drpc_agent *a, int16_t id, const char *name,
                       const char *devinfo, drpc_error *err);
void drpc_dev_peer_leave(drpc_agent *a, int16_t id);

#endif
