/* Remote references (RRefs): a handle to a value that lives on one worker
 * (its owner), usable from any worker, with PyTorch's fork protocol
 * (ids, owner and user tables, fork / child-accept / user-delete control
 * messages, shutdown clean-up and leak detection).
 *
 * Ownership. A drpc_rref is an opaque, reference-counted handle. Every
 * function that returns one (drpc_remote, drpc_rref_new_local,
 * drpc_rref_remote, ...) hands the caller one reference; drop it with
 * drpc_rref_decref. Dropping the last reference to a user RRef sends
 * RREF_USER_DELETE to the owner once (through the agent's loop); the owner
 * frees its value when no fork is left. Handles may outlive their agent:
 * after shutdown they fail cleanly and release without sending anything.
 * Using a handle concurrently with drpc_agent_free is undefined, as for
 * every other agent call.
 *
 * RRefs inside values. A DRPC_VAL_RREF node made by drpc_value_rref holds
 * one reference to its handle (u.r.handle); freeing the node drops it,
 * cloning the node takes another. Sending a value through an agent forks
 * each handle it holds (the wire carries fork data: owner, RRef id, a new
 * fork id, parent, type name); an agent receiving fork data turns each node
 * into a handle before the function, the caller or to_here sees it. A
 * callee runs a function only after every user RRef in its arguments is
 * confirmed by the owner.
 *
 * Threads. Everything here may be called from any thread except the
 * agent's loop (blocking calls there fail with DRPC_EDEADLOCK). */
#ifndef DRPC_RREF_H
#define DRPC_RREF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "drpc/agent.h"
#include "drpc/error.h"
#include "drpc/future.h"
#include "drpc/value.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct drpc_rref drpc_rref;

/* A globally unique id: the worker that made it and that worker's counter
 * (one counter per agent for RRef ids and fork ids, from 0). Printed
 * "GloballyUniqueId(created_on=X, local_id=Y)". */
typedef struct drpc_rref_id {
  int16_t created_on;
  int64_t local_id;
} drpc_rref_id;

/* Retry policy of the idempotent control messages (the reference's
 * defaults): attempt k (from 0) waits FIRST_DELAY_MS * BACKOFF^k first. */
#define DRPC_RREF_MAX_RETRIES 5
#define DRPC_RREF_RETRY_FIRST_DELAY_MS 1000
#define DRPC_RREF_RETRY_BACKOFF 1.5
/* Deleted fork ids the owner remembers, so a duplicated FORK_REQUEST or
 * REMOTE_CALL arriving after the delete cannot bring a fork back. */
#define DRPC_RREF_MAX_TOMBSTONES 8192

size_t drpc_rref_id_format(drpc_rref_id id, char *buf, size_t n);
bool drpc_rref_id_equal(drpc_rref_id a, drpc_rref_id b);

/* ---- creating RRefs ---------------------------------------------------- */

/* Runs fn on dst and returns an RRef to its result (flows 1 and 2 of the
 * reference): a user RRef when dst is another worker, an owner RRef when dst
 * is this worker. args / kwargs are borrowed (encoded before return; RRefs
 * inside are forked). timeout_s bounds the creation: on expiry the creation
 * future fails and to_here fails with "RRef creation via rpc.remote() timed
 * out, ...". Immediate errors (as drpc_rpc_async) return non-zero with *out
 * NULL. A function error is stored on the owner and raised by to_here. */
int drpc_remote(drpc_agent *a, const char *dst, drpc_call_kind kind,
                const char *fn, const drpc_value *args,
                const drpc_value *kwargs, double timeout_s, drpc_rref **out,
                drpc_error *err);
int drpc_remote_id(drpc_agent *a, int16_t dst, drpc_call_kind kind,
                   const char *fn, const drpc_value *args,
                   const drpc_value *kwargs, double timeout_s, drpc_rref **out,
                   drpc_error *err);

/* An owner RRef holding value (ownership moves in, also on failure; NULL is
 * nil). It joins the owner table only when first shared. */
int drpc_rref_new_local(drpc_agent *a, drpc_value *value, drpc_rref **out,
                        drpc_error *err);

void drpc_rref_incref(drpc_rref *r);
/* NULL-safe. The last reference to a user RRef sends the delete. */
void drpc_rref_decref(drpc_rref *r);

/* ---- queries ----------------------------------------------------------- */

bool drpc_rref_is_owner(const drpc_rref *r);
/* Owner RRefs: always. User RRefs: once the owner knows this fork (its
 * REMOTE_RET or fork ACK arrived, or the owner itself sent it). */
bool drpc_rref_confirmed_by_owner(const drpc_rref *r);
/* Borrowed; valid while r lives. */
const drpc_worker_info *drpc_rref_owner(const drpc_rref *r);
const char *drpc_rref_owner_name(const drpc_rref *r);
drpc_rref_id drpc_rref_get_id(const drpc_rref *r);
/* Owner RRefs answer their RRef id. */
drpc_rref_id drpc_rref_get_fork_id(const drpc_rref *r);
/* True when both name the same RRef (same owner and RRef id). */
bool drpc_rref_same(const drpc_rref *a, const drpc_rref *b);
/* "OwnerRRef(GloballyUniqueId(created_on=0, local_id=0))" or
 * "UserRRef(RRefId = GloballyUniqueId(...), ForkId = GloballyUniqueId(...))".
 * Returns the length written (excluding the NUL), truncating to n. */
size_t drpc_rref_format(const drpc_rref *r, char *buf, size_t n);

/* The value, copied for the caller (tensors shared): the owner's own value,
 * or fetched from the owner (RREF_FETCH) within timeout_s
 * (DRPC_UNSET_RPC_TIMEOUT: the agent's default; 0: no bound). Errors: the
 * error stored on the owner, "RRef creation via rpc.remote() timed out,
 * ..." (DRPC_ETIMEOUT), "User RRef with RRefId=... and ForkId=... has been
 * deleted. Cannot call to_here() on it after deletion." (DRPC_ESTATE),
 * DRPC_ESHUTDOWN, the fetch's RPC errors. */
int drpc_rref_to_here(drpc_rref *r, double timeout_s, drpc_value **out,
                      drpc_error *err);
/* Owner only: the value, borrowed while r lives (waits until a remote()
 * creating it has set it). A user RRef fails with "For UserRRef(rref_id=...,
 * fork_id=...), can't call localValue() on user WorkerInfo(...). Call it on
 * owner WorkerInfo(...)" (DRPC_ESTATE); a stored function error is
 * returned as is. */
int drpc_rref_local_value(drpc_rref *r, const drpc_value **out,
                          drpc_error *err);
/* The creation future of a drpc_remote RRef (a new reference; it completes
 * with nil once the owner confirms, or with the creation error); NULL for
 * RRefs not made by drpc_remote. */
drpc_future *drpc_rref_creation_future(drpc_rref *r);
/* The value's kind name ("tensor", "int", ...; see drpc_value_kind_name),
 * asking the owner when needed (blocking up to timeout_s) and cached.
 * *out is borrowed while r lives. */
int drpc_rref_type(drpc_rref *r, double timeout_s, const char **out,
                   drpc_error *err);

/* ---- RRefs in values ---------------------------------------------------- */

/* A DRPC_VAL_RREF node holding a new reference to r; NULL on no memory. */
drpc_value *drpc_value_rref(drpc_rref *r);
/* The handle of an rref node (borrowed), NULL for other values or bare fork
 * data. */
drpc_rref *drpc_value_get_rref(const drpc_value *v);

/* ---- proxies: fn runs on the owner with the value as first argument ----- */

/* kind DRPC_FUNCTION: fn is registered on the owner; DRPC_BUILTIN: an
 * operator (e.g. "aten::add"). args (a list or NULL) follow the value. */
int drpc_rref_rpc_async(drpc_rref *r, drpc_call_kind kind, const char *fn,
                        const drpc_value *args, const drpc_value *kwargs,
                        double timeout_s, drpc_future **fut, drpc_error *err);
int drpc_rref_rpc_sync(drpc_rref *r, drpc_call_kind kind, const char *fn,
                       const drpc_value *args, const drpc_value *kwargs,
                       double timeout_s, drpc_value **result, drpc_error *err);
int drpc_rref_remote(drpc_rref *r, drpc_call_kind kind, const char *fn,
                     const drpc_value *args, const drpc_value *kwargs,
                     double timeout_s, drpc_rref **out, drpc_error *err);

/* ---- the RRef context of an agent -------------------------------------- */

/* Waits (bounded by timeout_s; 0: no bound) until no user RRef is waiting
 * for its owner and no child for its owner's ACK, deletes every live user
 * RRef and drops owner RRefs nobody forked, then waits until the owner
 * table is empty. Graceful shutdown runs this. DRPC_ETIMEOUT says which
 * wait ran out. */
int drpc_rref_context_delete_all(drpc_agent *a, double timeout_s,
                                 drpc_error *err);
/* The reference's counters as a dict of strings: num_owner_rrefs,
 * num_pending_futures, num_pending_users, num_forks. Once the agent has
 * shut down (teardown zeroes the live counters) the dict also holds the
 * four as teardown found them, under the same names with the suffix
 * "_at_shutdown": all zero after a clean graceful shutdown, non-zero when
 * RRefs or control messages were left behind. Any thread; the caller
 * frees the dict. */
drpc_value *drpc_rref_context_debug_info(drpc_agent *a);

#ifdef __cplusplus
}
#endif
#endif
