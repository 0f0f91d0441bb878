/* The RRef context: globally unique ids, owner and user handles, the owner
 * and user tables, the fork protocol with its retried idempotent control
 * messages, shutdown clean-up and leak detection (reference §2).
 *
 * Threads: handles are used from any thread (reference counts and flags
 * are atomic); the tables below are touched only on the agent's loop (the
 * thread that owns the core), through commands posted by user threads. */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "drpc/ops.h"
#include "drpc/rref.h"
#include "internal.h"
#include "map.h"

/* ---- ids ----------------------------------------------------------------- */

/* (created_on, local_id) as one non-zero map key. */
static uint64_t key_of(drpc_rref_id id) {
  return (((uint64_t)(uint16_t)id.created_on + 1) << 48) |
         ((uint64_t)id.local_id & (DRPC_RREF_MAX_LOCAL_ID - 1));
}

static drpc_rref_id id_of(uint64_t key) {
  drpc_rref_id id = {(int16_t)((key >> 48) - 1),
                     (int64_t)(key & (DRPC_RREF_MAX_LOCAL_ID - 1))};
  return id;
}

size_t drpc_rref_id_format(drpc_rref_id id, char *buf, size_t n) {
  int w = snprintf(buf, n, "GloballyUniqueId(created_on=%d, local_id=%lld)",
                   (int)id.created_on, (long long)id.local_id);
  return w < 0 ? 0 : (size_t)w >= n && n ? n - 1 : (size_t)w;
}

bool drpc_rref_id_equal(drpc_rref_id a, drpc_rref_id b) {
  return a.created_on == b.created_on && a.local_id == b.local_id;
}

/* ---- the context and handles -------------------------------------------- */

typedef struct waiter_node {
  drpc_rref_waiter *w;
  struct waiter_node *next;
} waiter_node;

struct drpc_rref {
  _Atomic int refs;
  drpc_rctx *ctx;
  bool is_owner;
  drpc_worker_info owner;
  drpc_rref_id id, fork;           /* an owner's fork is its id */
  _Atomic(const char *) type_name; /* static kind names only */
  _Atomic bool confirmed, deleted, timed_out;
  drpc_future *created; /* drpc_remote's creation future, or NULL */
  drpc_future *value;   /* owner: completes with the value or its error */
  waiter_node *waiters; /* user, loop: calls waiting for confirmation */
  uint64_t wait_key;    /* owner, loop: its key in ctx->waited (0: none) */
};

typedef struct forkset {
  uint64_t *keys; /* sorted */
  size_t len, cap;
} forkset;

struct drpc_rctx {
  _Atomic int refs;
  _Atomic bool destroyed;
  drpc_agent *agent; /* valid while not destroyed */
  drpc_env env;
  drpc_worker_info self;
  _Atomic int64_t next_local_id;
  /* Loop thread only. */
  drpc_map owners;        /* rref key -> owner handle (strong) */
  drpc_map forks;         /* rref key -> forkset */
  drpc_map pending_users; /* fork key -> user handle (strong) */
  drpc_map confirmed;     /* fork key -> user handle (weak) */
  drpc_map children;      /* child fork key -> parent handle (strong) */
  drpc_map tomb;          /* deleted fork keys */
  /* Owners something waits on (a fetch, a proxy call) before their value
   * is set: wait key -> owner (the reference belongs to the unwait
   * callback on its value). Teardown fails their values so the waiters
   * finish and let go, whether or not the owner is still in the table.
   * Keys are a counter, not RRef ids: an owner deleted with waiters left
   * and made again for the same id (a late fetch) is a second entry. */
  drpc_map waited;
  uint64_t next_wait_key;
  uint64_t *tomb_ring;
  size_t tomb_head, tomb_len;
  /* Published for debug info and shutdown waits (written on the loop). */
  _Atomic int64_t n_owners, n_forks, n_pending_users, n_pending_futures,
      n_children;
  /* The four debug-info counters as the teardown found them (set once,
   * by drpc_rctx_destroy, before it drops the tables and zeroes the live
   * counters), so a check after shutdown sees what was left rather than
   * the zeroes teardown leaves. at_stop_set publishes them. */
  _Atomic int64_t at_stop[4];
  atomic_bool at_stop_set;
};

static void ctx_incref(drpc_rctx *c) {
  atomic_fetch_add(&c->refs, 1);
}

static void ctx_decref(drpc_rctx *c) {
  if (atomic_fetch_sub(&c->refs, 1) != 1)
    return;
  drpc_map_free(&c->owners);
  drpc_map_free(&c->forks);
  drpc_map_free(&c->pending_users);
  drpc_map_free(&c->confirmed);
  drpc_map_free(&c->children);
  drpc_map_free(&c->tomb);
  drpc_map_free(&c->waited);
  free(c->tomb_ring);
  free(c);
}

drpc_rctx *drpc_rctx_new(drpc_agent *a, const drpc_worker_info *self,
                         const drpc_env *env, int64_t first_local_id) {
  drpc_rctx *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  atomic_init(&c->refs, 1);
  atomic_init(&c->next_local_id, first_local_id);
  c->agent = a;
  c->env = *env;
  c->self = *self;
  drpc_map_init(&c->owners);
  drpc_map_init(&c->forks);
  drpc_map_init(&c->pending_users);
  drpc_map_init(&c->confirmed);
  drpc_map_init(&c->children);
  drpc_map_init(&c->tomb);
  drpc_map_init(&c->waited);
  return c;
}

void drpc_rctx_release(drpc_rctx *c) {
  if (c)
    ctx_decref(c);
}

static bool destroyed(const drpc_rctx *c) {
  return atomic_load(&((drpc_rctx *)c)->destroyed);
}

static int gen_id(drpc_rctx *c, drpc_rref_id *out, drpc_error *err) {
  int64_t v = atomic_fetch_add(&c->next_local_id, 1);
  if (v < 0 || (uint64_t)v >= DRPC_RREF_MAX_LOCAL_ID)
    return drpc_error_set(err, DRPC_ETOOBIG, "RRef local ids exhausted");
  out->created_on = c->self.id;
  out->local_id = v;
  return 0;
}

static drpc_rref *rref_alloc(drpc_rctx *c, bool is_owner,
                             const drpc_worker_info *owner, drpc_rref_id id,
                             drpc_rref_id fork) {
  drpc_rref *r = calloc(1, sizeof *r);
  if (!r)
    return NULL;
  atomic_init(&r->refs, 1);
  r->ctx = c;
  r->is_owner = is_owner;
  r->owner = *owner;
  r->id = id;
  r->fork = fork;
  if (is_owner) {
    atomic_init(&r->confirmed, true);
    r->value = drpc_future_new(&c->env);
    if (!r->value) {
      free(r);
      return NULL;
    }
  }
  ctx_incref(c);
  return r;
}

static void rref_free(drpc_rref *r) {
  while (r->waiters) {
    waiter_node *n = r->waiters;
    r->waiters = n->next;
    free(n);
  }
  drpc_future_decref(r->created);
  drpc_future_decref(r->value);
  drpc_rctx *c = r->ctx;
  free(r);
  ctx_decref(c);
}

void drpc_rref_incref(drpc_rref *r) {
  atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
}

static void send_user_delete(drpc_rctx *c, drpc_rref *r);

typedef struct release_cmd {
  drpc_cmd cmd;
  drpc_rref *r;
} release_cmd;

/* Loop: the last reference to a user RRef went away. */
static void release_apply(drpc_cmd *cmd) {
  release_cmd *rc = (release_cmd *)cmd;
  drpc_rref *r = rc->r;
  drpc_rctx *c = r->ctx;
  free(rc);
  if (!destroyed(c)) {
    drpc_agent *a = c->agent;
    drpc_agent_input_begin(a);
    drpc_rbuf b = {0};
    if (drpc_agent_recording(a))
      drpc_rref_write_ids(r, &b);
    drpc_agent_record(a, DRPC_EV_IN_COMMAND, -1, key_of(r->fork),
                      DRPC_CMD_RELEASE, b.p, b.len, NULL);
    drpc_rbuf_free(&b);
  }
  if (!destroyed(c)) {
    uint64_t fk = key_of(r->fork);
    if (drpc_map_get(&c->confirmed, fk) == r)
      drpc_map_remove(&c->confirmed, fk);
    if (!atomic_exchange(&r->deleted, true))
      send_user_delete(c, r);
  }
  rref_free(r);
}

void drpc_rref_decref(drpc_rref *r) {
  if (!r)
    return;
  if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) != 1)
    return;
  drpc_rctx *c = r->ctx;
  /* Owners are freed when no table holds them; a deleted user already told
   * its owner and sits in no table; after the context is destroyed nothing
   * is sent and the tables are gone. */
  if (r->is_owner || destroyed(c) || atomic_load(&r->deleted)) {
    rref_free(r);
    return;
  }
  release_cmd *rc = malloc(sizeof *rc);
  if (!rc) {
    /* The owner keeps the fork (reported as a leak at shutdown). */
    rref_free(r);
    return;
  }
  rc->cmd.apply = release_apply;
  rc->cmd.next = NULL;
  rc->r = r;
  const drpc_env *e = &c->env;
  e->ops->post(e->ctx, &rc->cmd);
}

/* ---- queries ------------------------------------------------------------ */

bool drpc_rref_is_owner(const drpc_rref *r) {
  return r->is_owner;
}
bool drpc_rref_confirmed_by_owner(const drpc_rref *r) {
  return atomic_load(&((drpc_rref *)r)->confirmed);
}
const drpc_worker_info *drpc_rref_owner(const drpc_rref *r) {
  return &r->owner;
}
const char *drpc_rref_owner_name(const drpc_rref *r) {
  return r->owner.name;
}
drpc_rref_id drpc_rref_get_id(const drpc_rref *r) {
  return r->id;
}
drpc_rref_id drpc_rref_get_fork_id(const drpc_rref *r) {
  return r->fork;
}
bool drpc_rref_same(const drpc_rref *a, const drpc_rref *b) {
  return a->owner.id == b->owner.id && drpc_rref_id_equal(a->id, b->id);
}

size_t drpc_rref_format(const drpc_rref *r, char *buf, size_t n) {
  char id[96], fork[96];
  drpc_rref_id_format(r->id, id, sizeof id);
  int w;
  if (r->is_owner) {
    w = snprintf(buf, n, "OwnerRRef(%s)", id);
  } else {
    drpc_rref_id_format(r->fork, fork, sizeof fork);
    w = snprintf(buf, n, "UserRRef(RRefId = %s, ForkId = %s)", id, fork);
  }
  return w < 0 ? 0 : (size_t)w >= n && n ? n - 1 : (size_t)w;
}

drpc_future *drpc_rref_creation_future(drpc_rref *r) {
  if (r->created)
    drpc_future_incref(r->created);
  return r->created;
}

drpc_value *drpc_value_rref(drpc_rref *r) {
  drpc_value *v = drpc_value_nil();
  if (!v)
    return NULL;
  v->kind = DRPC_VAL_RREF;
  v->u.r.owner = r->owner.id;
  v->u.r.rref_created_on = r->id.created_on;
  v->u.r.rref_local_id = r->id.local_id;
  v->u.r.fork_created_on = r->fork.created_on;
  v->u.r.fork_local_id = r->fork.local_id;
  v->u.r.parent = -1;
  drpc_rref_incref(r);
  v->u.r.handle = r;
  return v;
}

drpc_rref *drpc_value_get_rref(const drpc_value *v) {
  return v && v->kind == DRPC_VAL_RREF ? v->u.r.handle : NULL;
}

/* A static kind name for a type name read from the wire (NULL: unknown). */
static const char *static_kind_name(const char *name) {
  if (!name)
    return NULL;
  for (int k = 0; k < DRPC_VAL_KIND_COUNT; k++)
    if (strcmp(drpc_value_kind_name((drpc_value_kind)k), name) == 0)
      return drpc_value_kind_name((drpc_value_kind)k);
  return NULL;
}

/* The kind name of an owner's value once set (NULL before or on error). */
static const char *owner_type(drpc_rref *o) {
  const drpc_value *v = drpc_future_value(o->value);
  if (!v)
    return drpc_future_done(o->value) && drpc_future_error(o->value, NULL) == 0
               ? drpc_value_kind_name(DRPC_VAL_NIL)
               : NULL;
  return drpc_value_kind_name(v->kind);
}

/* ---- owner-side tables (loop thread) --------------------------------------
 */

static void notify(drpc_rctx *c) {
  if (!destroyed(c))
    drpc_agent_notify(c->agent);
}

static bool tombstoned(drpc_rctx *c, uint64_t fk) {
  return drpc_map_get(&c->tomb, fk) != NULL;
}

static void tombstone(drpc_rctx *c, uint64_t fk) {
  if (tombstoned(c, fk))
    return;
  if (!c->tomb_ring) {
    c->tomb_ring = calloc(DRPC_RREF_MAX_TOMBSTONES, sizeof *c->tomb_ring);
    if (!c->tomb_ring)
      return;
  }
  if (c->tomb_len == DRPC_RREF_MAX_TOMBSTONES) {
    drpc_map_remove(&c->tomb, c->tomb_ring[c->tomb_head]);
    c->tomb_head = (c->tomb_head + 1) % DRPC_RREF_MAX_TOMBSTONES;
    c->tomb_len--;
  }
  if (drpc_map_put(&c->tomb, fk, (void *)1) != 0)
    return;
  c->tomb_ring[(c->tomb_head + c->tomb_len) % DRPC_RREF_MAX_TOMBSTONES] = fk;
  c->tomb_len++;
}

/* Puts an owner handle in the owner table (taking a reference). */
/* An RRef lifecycle event for the recording (loop thread): what happened,
 * the RRef's key and a fork key. */
static void rref_event(drpc_rctx *c, const char *what, drpc_rref_id id,
                       uint64_t fk) {
  if (!destroyed(c))
    drpc_agent_record(c->agent, DRPC_EV_RREF, -1, key_of(id), fk, NULL, 0,
                      what);
}

static void owners_put(drpc_rctx *c, drpc_rref *o) {
  uint64_t k = key_of(o->id);
  if (drpc_map_get(&c->owners, k))
    return;
  if (drpc_map_put(&c->owners, k, o) == 0) {
    drpc_rref_incref(o);
    atomic_fetch_add(&c->n_owners, 1);
    rref_event(c, "owner_created", o->id, k);
  }
}

/* The owner handle of id (borrowed from the table), created without a
 * value when a message about it arrives first. */
static drpc_rref *owner_get_or_create(drpc_rctx *c, drpc_rref_id id) {
  drpc_rref *o = drpc_map_get(&c->owners, key_of(id));
  if (o)
    return o;
  o = rref_alloc(c, true, &c->self, id, id);
  if (!o)
    return NULL;
  owners_put(c, o);
  drpc_rref_decref(o); /* the table holds it now (or nobody, on no memory) */
  return drpc_map_get(&c->owners, key_of(id));
}

/* Registers fork fk of RRef id (set semantics). A deleted fork id stays
 * deleted. */
static void add_fork(drpc_rctx *c, drpc_rref_id id, uint64_t fk) {
  if (tombstoned(c, fk))
    return;
  uint64_t k = key_of(id);
  forkset *s = drpc_map_get(&c->forks, k);
  if (!s) {
    s = calloc(1, sizeof *s);
    if (!s || drpc_map_put(&c->forks, k, s) != 0) {
      free(s);
      return;
    }
  }
  size_t lo = 0, hi = s->len;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (s->keys[mid] < fk)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo < s->len && s->keys[lo] == fk)
    return;
  if (s->len == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 4;
    uint64_t *p = realloc(s->keys, cap * sizeof *p);
    if (!p)
      return;
    s->keys = p;
    s->cap = cap;
  }
  memmove(s->keys + lo + 1, s->keys + lo, (s->len - lo) * sizeof *s->keys);
  s->keys[lo] = fk;
  s->len++;
  atomic_fetch_add(&c->n_forks, 1);
  rref_event(c, "fork_added", id, fk);
}

/* A test-only fault switch, for the simulator's self-test alone
 * (tests/test_sim_rref.c): when non-zero, a deleted fork is not taken off
 * the num_forks counter (the tables stay right, so shutdown still
 * succeeds). The simulator's RRef checker must report the count left at
 * shutdown. Nothing else may set it. */
int drpc_test_fault_miscount_forks = 0;

/* Removes fork fk; the owner leaves the table with its last fork. Returns
 * whether the fork was there. */
static bool del_fork(drpc_rctx *c, drpc_rref_id id, uint64_t fk) {
  uint64_t k = key_of(id);
  tombstone(c, fk);
  forkset *s = drpc_map_get(&c->forks, k);
  size_t i = 0;
  while (s && i < s->len && s->keys[i] != fk)
    i++;
  if (!s || i == s->len)
    return false;
  memmove(s->keys + i, s->keys + i + 1, (s->len - i - 1) * sizeof *s->keys);
  s->len--;
  if (!drpc_test_fault_miscount_forks)
    atomic_fetch_sub(&c->n_forks, 1);
  rref_event(c, "fork_deleted", id, fk);
  if (s->len == 0) {
    drpc_map_remove(&c->forks, k);
    free(s->keys);
    free(s);
    drpc_rref *o = drpc_map_remove(&c->owners, k);
    if (o) {
      atomic_fetch_sub(&c->n_owners, 1);
      rref_event(c, "owner_deleted", id, k);
      drpc_rref_decref(o);
    }
    notify(c);
  }
  return true;
}

/* ---- control messages with retries (loop thread) ---------------------------
 */

typedef struct ctl {
  drpc_rctx *ctx;
  uint8_t type;
  int16_t dst;
  drpc_rref_id id, fork; /* CHILD_ACCEPT uses fork only */
  int16_t parent;        /* FORK_REQUEST: who to send CHILD_ACCEPT to */
  int attempt;
} ctl;

static void ctl_send(ctl *m);

static void ctl_finish(ctl *m) {
  drpc_rctx *c = m->ctx;
  if (atomic_fetch_sub(&c->n_pending_futures, 1) == 1)
    notify(c);
  ctx_decref(c);
  free(m);
}

static void send_child_accept(drpc_rctx *c, int16_t parent, drpc_rref_id fork);
static void finish_fork_request(drpc_rctx *c, ctl *m);

static void ctl_retry(void *arg, bool fired) {
  ctl *m = arg;
  if (fired && !destroyed(m->ctx) && !drpc_agent_stopped(m->ctx->agent))
    ctl_send(m);
  else
    ctl_finish(m);
}

static void ctl_done(drpc_future *f, void *arg) {
  ctl *m = arg;
  drpc_rctx *c = m->ctx;
  drpc_error err = DRPC_ERROR_INIT;
  int code = drpc_future_error(f, &err);
  drpc_future_decref(f);
  if (code == 0 || destroyed(c) || drpc_agent_stopped(c->agent)) {
    if (code == 0 && m->type == DRPC_MSG_RREF_FORK_REQUEST && !destroyed(c))
      finish_fork_request(c, m);
    drpc_error_clear(&err);
    ctl_finish(m);
    return;
  }
  if (m->attempt < DRPC_RREF_MAX_RETRIES) {
    double delay_ms = DRPC_RREF_RETRY_FIRST_DELAY_MS;
    for (int i = 0; i < m->attempt; i++)
      delay_ms *= DRPC_RREF_RETRY_BACKOFF;
    m->attempt++;
    drpc_agent_logf(c->agent, DRPC_LOG_INFO,
                    "%s to worker %d failed (%s); retry %d in %.0f ms",
                    drpc_msg_type_name(m->type), m->dst,
                    drpc_error_message(&err), m->attempt, delay_ms);
    drpc_error_clear(&err);
    uint64_t due = drpc_agent_loop_now(c->agent) + (uint64_t)(delay_ms * 1e6);
    if (drpc_agent_timer_add(c->agent, due, ctl_retry, m))
      return;
    ctl_finish(m);
    return;
  }
  drpc_agent_logf(c->agent, DRPC_LOG_ERROR,
                  "%s to worker %d: The RPC has not succeeded after the "
                  "specified number of max retries (%d). Last error: %s",
                  drpc_msg_type_name(m->type), m->dst, DRPC_RREF_MAX_RETRIES,
                  drpc_error_message(&err));
  drpc_error_clear(&err);
  /* A fork the owner never acknowledged still releases its waiters and its
   * parent: the alternative is a callee and a parent stuck forever. */
  if (m->type == DRPC_MSG_RREF_FORK_REQUEST)
    finish_fork_request(c, m);
  ctl_finish(m);
}

static void ctl_send(ctl *m) {
  drpc_rctx *c = m->ctx;
  drpc_future *f = drpc_future_new(&c->env);
  drpc_value *body =
      m->type == DRPC_MSG_RREF_CHILD_ACCEPT
          ? drpc_value_list_of(2, drpc_value_int(m->fork.created_on),
                               drpc_value_int(m->fork.local_id))
          : drpc_value_list_of(4, drpc_value_int(m->id.created_on),
                               drpc_value_int(m->id.local_id),
                               drpc_value_int(m->fork.created_on),
                               drpc_value_int(m->fork.local_id));
  if (!f || !body || drpc_future_add_done_callback(f, ctl_done, m) != 0) {
    drpc_future_decref(f);
    drpc_value_free(body);
    ctl_finish(m);
    return;
  }
  uint64_t timeout_ms = 0;
  drpc_agent_timeout_ms(c->agent, DRPC_UNSET_RPC_TIMEOUT, &timeout_ms, NULL);
  /* The callback owns f's creator reference (it drops it). */
  drpc_agent_request(c->agent, m->dst, m->type, body, timeout_ms, f);
  drpc_value_free(body);
}

static void ctl_start(drpc_rctx *c, uint8_t type, int16_t dst, drpc_rref_id id,
                      drpc_rref_id fork, int16_t parent) {
  ctl *m = calloc(1, sizeof *m);
  if (!m)
    return;
  m->ctx = c;
  ctx_incref(c);
  m->type = type;
  m->dst = dst;
  m->id = id;
  m->fork = fork;
  m->parent = parent;
  atomic_fetch_add(&c->n_pending_futures, 1);
  ctl_send(m);
}

static void send_user_delete(drpc_rctx *c, drpc_rref *r) {
  rref_event(c, "user_deleted", r->id, key_of(r->fork));
  ctl_start(c, DRPC_MSG_RREF_USER_DELETE, r->owner.id, r->id, r->fork, -1);
}

static void send_child_accept(drpc_rctx *c, int16_t parent, drpc_rref_id fork) {
  drpc_rref_id none = {0, 0};
  ctl_start(c, DRPC_MSG_RREF_CHILD_ACCEPT, parent, none, fork, -1);
}

/* ---- user-side tables (loop thread) ----------------------------------------
 */

/* Confirmation: the pending user moves to the weak table, its waiting
 * calls may run, and the table's strong reference goes. */
static void del_pending_user(drpc_rctx *c, uint64_t fk) {
  drpc_rref *r = drpc_map_remove(&c->pending_users, fk);
  if (!r)
    return;
  atomic_store(&r->confirmed, true);
  rref_event(c, "user_confirmed", r->id, fk);
  if (!atomic_load(&r->deleted))
    drpc_map_put(&c->confirmed, fk, r);
  while (r->waiters) {
    waiter_node *n = r->waiters;
    r->waiters = n->next;
    if (--n->w->pending == 0)
      n->w->ready(n->w);
    free(n);
  }
  if (atomic_fetch_sub(&c->n_pending_users, 1) == 1)
    notify(c);
  drpc_rref_decref(r);
}

static void finish_fork_request(drpc_rctx *c, ctl *m) {
  del_pending_user(c, key_of(m->fork));
  send_child_accept(c, m->parent, m->fork);
}

/* counted: drpc_remote already counted it (the count must show at once,
 * while the table waits for the loop). */
static void add_pending_user(drpc_rctx *c, drpc_rref *r, bool counted) {
  uint64_t fk = key_of(r->fork);
  if (!drpc_map_get(&c->pending_users, fk) &&
      drpc_map_put(&c->pending_users, fk, r) == 0) {
    drpc_rref_incref(r);
    if (!counted)
      atomic_fetch_add(&c->n_pending_users, 1);
  } else if (counted && atomic_fetch_sub(&c->n_pending_users, 1) == 1) {
    notify(c);
  }
}

/* ---- forking while encoding (any thread) ------------------------------------
 */

typedef struct fork_entry {
  drpc_rref *r; /* a reference */
  drpc_rref_id fork;
} fork_entry;

struct drpc_fork_list {
  fork_entry *e;
  size_t len, cap;
};

typedef struct enc_ctx {
  drpc_agent *a;
  drpc_rctx *c;
  drpc_fork_list *l;
} enc_ctx;

static int timed_out_error(drpc_error *err) {
  return drpc_error_set(err, DRPC_ETIMEOUT,
                        "RRef creation via rpc.remote() timed out, and it is "
                        "possible that the RRef on the owner node does not "
                        "exist.");
}

static int fork_hook(void *arg, const drpc_value *node, drpc_value *out,
                     drpc_error *err) {
  enc_ctx *ec = arg;
  drpc_rref *r = node->u.r.handle;
  if (!r)
    return drpc_error_set(err, DRPC_EINVAL,
                          "RRef fork data cannot be sent as is; send the "
                          "handle (drpc_value_rref)");
  if (r->ctx != ec->c)
    return drpc_error_set(err, DRPC_EINVAL,
                          "the RRef belongs to another agent");
  if (destroyed(ec->c) || atomic_load(&r->deleted))
    return drpc_error_set(err, DRPC_ESTATE,
                          r->is_owner ? "Cannot fork an OwnerRRef after the "
                                        "RRef context was destroyed."
                                      : "Cannot call fork an UserRRef after "
                                        "deletion.");
  if (atomic_load(&r->timed_out))
    return timed_out_error(err);
  drpc_rref_id fork;
  int rc = gen_id(ec->c, &fork, err);
  if (rc)
    return rc;
  if (!ec->l) {
    ec->l = calloc(1, sizeof *ec->l);
    if (!ec->l)
      return drpc_error_set(err, DRPC_ENOMEM, "out of memory forking an RRef");
  }
  drpc_fork_list *l = ec->l;
  if (l->len == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 4;
    fork_entry *p = realloc(l->e, cap * sizeof *p);
    if (!p)
      return drpc_error_set(err, DRPC_ENOMEM, "out of memory forking an RRef");
    l->e = p;
    l->cap = cap;
  }
  drpc_rref_incref(r);
  l->e[l->len].r = r;
  l->e[l->len].fork = fork;
  l->len++;
  out->u.r.owner = r->owner.id;
  out->u.r.rref_created_on = r->id.created_on;
  out->u.r.rref_local_id = r->id.local_id;
  out->u.r.fork_created_on = fork.created_on;
  out->u.r.fork_local_id = fork.local_id;
  out->u.r.parent = ec->c->self.id;
  const char *tn = r->is_owner ? owner_type(r) : atomic_load(&r->type_name);
  out->u.r.type_name = (char *)tn;
  return 0;
}

/* [count, then per fork: rref created_on, local_id, the new fork's
 * created_on, local_id, is_owner, the forking handle's own fork created_on,
 * local_id, value frame (empty unless an owner enters the tables)]. */
void drpc_fork_list_write(const drpc_fork_list *l, drpc_rbuf *b) {
  drpc_rbuf_u64(b, l ? l->len : 0);
  for (size_t i = 0; l && i < l->len; i++) {
    const drpc_rref *r = l->e[i].r;
    drpc_rbuf_u64(b, (uint64_t)(int64_t)r->id.created_on);
    drpc_rbuf_u64(b, (uint64_t)r->id.local_id);
    drpc_rbuf_u64(b, (uint64_t)(int64_t)l->e[i].fork.created_on);
    drpc_rbuf_u64(b, (uint64_t)l->e[i].fork.local_id);
    drpc_rbuf_u64(b, r->is_owner);
    drpc_rbuf_u64(b, (uint64_t)(int64_t)r->fork.created_on);
    drpc_rbuf_u64(b, (uint64_t)r->fork.local_id);
    /* An owner user code made (drpc_rref_new_local) enters the tables
     * with this fork: its value goes along, as replay cannot make it. */
    drpc_outframe *vf = NULL;
    const drpc_value *v = NULL;
    if (r->is_owner && !drpc_map_get(&r->ctx->owners, key_of(r->id)) &&
        drpc_future_done(r->value) && (v = drpc_future_value(r->value)) &&
        drpc_wire_encode(DRPC_MSG_RESPONSE, 0, 0, v,
                         drpc_agent_wire_limits(r->ctx->agent), &vf, NULL) != 0)
      vf = NULL;
    drpc_rbuf_frame(b, vf);
    drpc_outframe_free(vf);
  }
}

/* [rref created_on, local_id, fork created_on, local_id]. */
void drpc_rref_write_ids(const drpc_rref *r, drpc_rbuf *b) {
  drpc_rbuf_u64(b, (uint64_t)(int64_t)r->id.created_on);
  drpc_rbuf_u64(b, (uint64_t)r->id.local_id);
  drpc_rbuf_u64(b, (uint64_t)(int64_t)r->fork.created_on);
  drpc_rbuf_u64(b, (uint64_t)r->fork.local_id);
}

void drpc_fork_list_drop(drpc_fork_list *l) {
  if (!l)
    return;
  for (size_t i = 0; i < l->len; i++)
    drpc_rref_decref(l->e[i].r);
  free(l->e);
  free(l);
}

int drpc_rref_encode(drpc_agent *a, uint8_t type, uint64_t id,
                     const drpc_value *body, int16_t dst, drpc_outframe **out,
                     drpc_fork_list **forks, drpc_error *err) {
  enc_ctx ec = {a, drpc_agent_rctx(a), NULL};
  *forks = NULL;
  int rc = drpc_dev_encode(a, type, id, body, dst, fork_hook, &ec, out, err);
  if (rc) {
    drpc_fork_list_drop(ec.l);
    return rc;
  }
  *forks = ec.l;
  return 0;
}

/* Loop: the sender's half of each fork, before the frame leaves. An owner
 * registers the child at once (early fork registration); a user keeps
 * itself alive as the parent until the owner accepts the child. */
void drpc_fork_list_apply(drpc_agent *a, drpc_fork_list *l) {
  if (!l)
    return;
  drpc_rctx *c = drpc_agent_rctx(a);
  for (size_t i = 0; i < l->len && !destroyed(c); i++) {
    drpc_rref *r = l->e[i].r;
    uint64_t fk = key_of(l->e[i].fork);
    if (r->is_owner) {
      owners_put(c, r);
      add_fork(c, r->id, fk);
    } else if (!drpc_map_get(&c->children, fk) &&
               drpc_map_put(&c->children, fk, r) == 0) {
      atomic_fetch_add(&c->n_children, 1);
      l->e[i].r = NULL; /* the table keeps the reference */
    }
  }
  drpc_fork_list_drop(l);
}

/* ---- receiving forks (loop thread)
 * -------------------------------------------- */

static int accept_node(drpc_agent *a, drpc_rctx *c, drpc_value *v, int16_t from,
                       drpc_rref_waiter *w, drpc_error *err) {
  drpc_rref_id id = {v->u.r.rref_created_on, v->u.r.rref_local_id};
  drpc_rref_id fork = {v->u.r.fork_created_on, v->u.r.fork_local_id};
  int16_t owner = v->u.r.owner, parent = v->u.r.parent;
  if (parent != from)
    return drpc_error_set(err, DRPC_EPROTO,
                          "RRef fork data names parent %d but came from "
                          "worker %d",
                          parent, from);
  drpc_worker_info oi;
  int rc = drpc_agent_resolve_id(a, owner, &oi, err);
  if (rc)
    return rc;
  if (owner == c->self.id) {
    drpc_rref *o = owner_get_or_create(c, id);
    if (!o)
      return drpc_error_set(err, DRPC_ENOMEM,
                            "out of memory accepting an RRef");
    drpc_rref_incref(o);
    v->u.r.handle = o;
    if (parent == c->self.id)
      del_fork(c, id, key_of(fork)); /* the owner sent it to itself */
    else
      send_child_accept(c, parent, fork); /* a phantom fork: never kept */
    return 0;
  }
  uint64_t fk = key_of(fork);
  drpc_rref *r = drpc_map_get(&c->pending_users, fk);
  if (r) {
    /* The same fork twice (a duplicated frame): share the handle. */
    drpc_rref_incref(r);
    v->u.r.handle = r;
    if (w) {
      waiter_node *n = malloc(sizeof *n);
      if (n) {
        n->w = w;
        n->next = r->waiters;
        r->waiters = n;
        w->pending++;
      }
    }
    return 0;
  }
  r = rref_alloc(c, false, &oi, id, fork);
  if (!r)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory accepting an RRef");
  atomic_store(&r->type_name, static_kind_name(v->u.r.type_name));
  v->u.r.handle = r; /* the node's reference */
  if (drpc_map_get(&c->confirmed, fk)) {
    /* A duplicate of a fork already confirmed: usable, but only the first
     * handle speaks for the fork. */
    atomic_store(&r->confirmed, true);
    atomic_store(&r->deleted, true);
    return 0;
  }
  rref_event(c, "user_created", id, fk);
  if (parent == owner) {
    /* The owner registered this fork before sending it. */
    atomic_store(&r->confirmed, true);
    rref_event(c, "user_confirmed", id, fk);
    drpc_map_put(&c->confirmed, fk, r);
    return 0;
  }
  add_pending_user(c, r, false);
  if (w) {
    waiter_node *n = malloc(sizeof *n);
    if (n) {
      n->w = w;
      n->next = r->waiters;
      r->waiters = n;
      w->pending++;
    }
  }
  ctl_start(c, DRPC_MSG_RREF_FORK_REQUEST, owner, id, fork, parent);
  return 0;
}

static int accept_walk(drpc_agent *a, drpc_rctx *c, drpc_value *v, int16_t from,
                       drpc_rref_waiter *w, drpc_error *err) {
  if (!v)
    return 0;
  if (v->kind == DRPC_VAL_RREF)
    return v->u.r.handle ? 0 : accept_node(a, c, v, from, w, err);
  if (v->kind != DRPC_VAL_LIST && v->kind != DRPC_VAL_DICT)
    return 0;
  for (size_t i = 0; i < v->u.c.len; i++) {
    int rc = accept_walk(a, c, v->u.c.items[i], from, w, err);
    if (rc)
      return rc;
  }
  return 0;
}

int drpc_rref_accept(drpc_agent *a, drpc_value *body, int16_t from,
                     drpc_rref_waiter *w, drpc_error *err) {
  drpc_rctx *c = drpc_agent_rctx(a);
  if (destroyed(c))
    return drpc_error_set(err, DRPC_ESHUTDOWN,
                          "RRefs cannot be received after the RRef context "
                          "was destroyed");
  return accept_walk(a, c, body, from, w, err);
}

/* ---- requests on the owner and parent (loop thread)
 * ---------------------------- */

static bool ids_of(const drpc_value *b, size_t n, drpc_rref_id *out) {
  if (!b || b->kind != DRPC_VAL_LIST || b->u.c.len != 2 * n)
    return false;
  for (size_t i = 0; i < n; i++) {
    const drpc_value *c = b->u.c.items[2 * i], *l = b->u.c.items[2 * i + 1];
    if (c->kind != DRPC_VAL_INT || l->kind != DRPC_VAL_INT || c->u.i < 0 ||
        c->u.i > INT16_MAX || l->u.i < 0 ||
        (uint64_t)l->u.i >= DRPC_RREF_MAX_LOCAL_ID)
      return false;
    out[i].created_on = (int16_t)c->u.i;
    out[i].local_id = l->u.i;
  }
  return true;
}

typedef struct fetch {
  drpc_agent *a;
  uint64_t conn, id;
  drpc_rref *o; /* a reference */
} fetch;

/* The owner's value as the core reads it to answer a fetch. User code may
 * have changed it in place since it was set, so it is an input: recorded
 * when recording, taken from the recording in replay. *sub: a value to
 * free afterwards. */
static const drpc_value *read_owner_value(drpc_agent *a, drpc_rref *o,
                                          const drpc_value *live,
                                          drpc_value **sub) {
  const drpc_env *e = &o->ctx->env;
  uint64_t key = key_of(o->id);
  *sub = NULL;
  if (e->ops->recorded_value) {
    *sub = e->ops->recorded_value(e->ctx, key);
    return *sub ? *sub : live;
  }
  if (!drpc_agent_recording(a))
    return live;
  drpc_outframe *vf = NULL;
  size_t n = 0;
  uint8_t *flat = NULL;
  if (drpc_wire_encode(DRPC_MSG_RESPONSE, 0, 0, live, drpc_agent_wire_limits(a),
                       &vf, NULL) == 0)
    flat = drpc_outframe_flatten(vf, &n);
  drpc_outframe_free(vf);
  /* A value holding RRef handles cannot be kept this way; replay then
   * reads its own copy. */
  drpc_agent_record(a, DRPC_EV_IN_VALUE, -1, key, DRPC_IN_VALUE_RREF, flat, n,
                    NULL);
  free(flat);
  return live;
}

static void note_waited(drpc_rctx *c, drpc_rref *o);

static void fetch_done(drpc_future *f, void *arg) {
  fetch *q = arg;
  if (!drpc_agent_stopped(q->a) && !destroyed(q->o->ctx)) {
    drpc_error err = DRPC_ERROR_INIT;
    if (drpc_future_error(f, &err) == 0) {
      drpc_value *sub = NULL;
      const drpc_value *v =
          read_owner_value(q->a, q->o, drpc_future_value(f), &sub);
      drpc_agent_reply(q->a, q->conn, DRPC_MSG_RESPONSE, q->id, v);
      drpc_value_free(sub);
    } else
      drpc_agent_reply_error(q->a, q->conn, q->id, err.code,
                             drpc_error_message(&err));
    drpc_error_clear(&err);
  }
  drpc_rref_decref(q->o);
  free(q);
}

void drpc_rref_on_request(drpc_agent *a, uint64_t conn, int16_t from,
                          drpc_msg *m) {
  drpc_rctx *c = drpc_agent_rctx(a);
  drpc_rref_id ids[2];
  (void)from; /* ids are global: any worker may speak for a fork */
  bool ok = ids_of(m->body,
                   m->type == DRPC_MSG_RREF_FETCH ||
                           m->type == DRPC_MSG_RREF_CHILD_ACCEPT
                       ? 1
                       : 2,
                   ids);
  if (!ok) {
    char why[96];
    snprintf(why, sizeof why, "malformed %s", drpc_msg_type_name(m->type));
    drpc_agent_reply_error(a, conn, m->id, DRPC_EPROTO, why);
    return;
  }
  if (destroyed(c)) {
    drpc_agent_reply_error(a, conn, m->id, DRPC_ESHUTDOWN,
                           "the RRef context of this worker was destroyed");
    return;
  }
  switch (m->type) {
  case DRPC_MSG_RREF_FETCH: {
    drpc_rref *o = owner_get_or_create(c, ids[0]);
    fetch *q = o ? malloc(sizeof *q) : NULL;
    if (!q) {
      drpc_agent_reply_error(a, conn, m->id, DRPC_ENOMEM, "out of memory");
      return;
    }
    q->a = a;
    q->conn = conn;
    q->id = m->id;
    q->o = o;
    drpc_rref_incref(o);
    note_waited(c, o);
    if (drpc_future_add_done_callback(o->value, fetch_done, q) != 0) {
      drpc_rref_decref(o);
      free(q);
      drpc_agent_reply_error(a, conn, m->id, DRPC_ENOMEM, "out of memory");
    }
    return;
  }
  case DRPC_MSG_RREF_USER_DELETE:
    if (key_of(ids[0]) == key_of(ids[1])) {
      /* The owner's own fork (a remote() to itself) is the owner's to
       * drop; a peer deleting it would strand the calls waiting on it. */
      drpc_agent_reply_error(a, conn, m->id, DRPC_EPROTO,
                             "RREF_USER_DELETE names an owner's own fork");
      return;
    }
    if (!del_fork(c, ids[0], key_of(ids[1])))
      drpc_agent_logf(a, DRPC_LOG_DEBUG,
                      "duplicate or unknown delete of fork %lld of worker %d",
                      (long long)ids[1].local_id, ids[1].created_on);
    break;
  case DRPC_MSG_RREF_FORK_REQUEST:
    if (key_of(ids[0]) == key_of(ids[1])) {
      drpc_agent_reply_error(a, conn, m->id, DRPC_EPROTO,
                             "RREF_FORK_REQUEST names an owner's own fork");
      return;
    }
    if (!tombstoned(c, key_of(ids[1])) && owner_get_or_create(c, ids[0]))
      add_fork(c, ids[0], key_of(ids[1]));
    break;
  case DRPC_MSG_RREF_CHILD_ACCEPT: {
    drpc_rref *p = drpc_map_remove(&c->children, key_of(ids[0]));
    if (p) {
      if (atomic_fetch_sub(&c->n_children, 1) == 1)
        notify(c);
      drpc_rref_decref(p);
    }
    break;
  }
  default:
    break;
  }
  drpc_agent_reply(a, conn, DRPC_MSG_RREF_ACK, m->id, NULL);
}

drpc_rref *drpc_rref_remote_owner(drpc_agent *a, drpc_rref_id id,
                                  drpc_rref_id fork) {
  drpc_rctx *c = drpc_agent_rctx(a);
  if (destroyed(c))
    return NULL;
  drpc_rref *o = owner_get_or_create(c, id);
  if (!o)
    return NULL;
  add_fork(c, id, key_of(fork));
  drpc_rref_incref(o);
  return o;
}

void drpc_rref_owner_settle(drpc_rref *o, drpc_value *value,
                            const drpc_error *err) {
  if (err && err->code)
    drpc_future_set_error(o->value, err);
  else
    drpc_future_set_value(o->value, value);
}

static void unwait(drpc_future *f, void *arg) {
  drpc_rref *o = arg;
  (void)f;
  /* Also after teardown began: the map outlives every owner (each holds
   * the context), and teardown may be walking the owners, not this map. */
  if (o->wait_key && drpc_map_get(&o->ctx->waited, o->wait_key) == o)
    drpc_map_remove(&o->ctx->waited, o->wait_key);
  drpc_rref_decref(o);
}

/* Loop: something is about to wait on owner o's value. */
static void note_waited(drpc_rctx *c, drpc_rref *o) {
  if (drpc_future_done(o->value) || o->wait_key)
    return;
  uint64_t k = ++c->next_wait_key;
  drpc_rref_incref(o);
  if (drpc_map_put(&c->waited, k, o) != 0) {
    drpc_rref_decref(o);
    return;
  }
  o->wait_key = k;
  if (drpc_future_add_done_callback(o->value, unwait, o) != 0) {
    drpc_map_remove(&c->waited, k);
    o->wait_key = 0;
    drpc_rref_decref(o);
  }
}

static void value_ready(drpc_future *f, void *arg) {
  drpc_rref_waiter *w = arg;
  (void)f;
  if (--w->pending == 0)
    w->ready(w);
}

void drpc_rref_wait_value(drpc_rref *o, drpc_rref_waiter *w) {
  if (drpc_future_done(o->value))
    return;
  if (!destroyed(o->ctx))
    note_waited(o->ctx, o);
  w->pending++;
  if (drpc_future_add_done_callback(o->value, value_ready, w) != 0)
    w->pending--; /* no memory: run now and let the function see no value */
}

const drpc_value *drpc_rref_peek_value(drpc_rref *o, drpc_error *err) {
  if (!drpc_future_done(o->value)) {
    drpc_error_set(err, DRPC_ESTATE, "the RRef's value is not set yet");
    return NULL;
  }
  if (drpc_future_error(o->value, err) != 0)
    return NULL;
  const drpc_value *v = drpc_future_value(o->value);
  static const drpc_value nil = {.kind = DRPC_VAL_NIL};
  return v ? v : &nil;
}

/* ---- creating RRefs (user threads)
 * ---------------------------------------------- */

int drpc_rref_new_local(drpc_agent *a, drpc_value *value, drpc_rref **out,
                        drpc_error *err) {
  *out = NULL;
  int rc = 0;
  if (!a && (rc = drpc_get_current_agent(&a, err))) {
    drpc_value_free(value);
    return rc;
  }
  drpc_rctx *c = drpc_agent_rctx(a);
  drpc_rref_id id;
  if (destroyed(c)) {
    drpc_value_free(value);
    return drpc_error_set(err, DRPC_ESHUTDOWN,
                          "RPC is no longer running on this node");
  }
  if ((rc = gen_id(c, &id, err))) {
    drpc_value_free(value);
    return rc;
  }
  drpc_rref *r = rref_alloc(c, true, &c->self, id, id);
  if (!r) {
    drpc_value_free(value);
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  }
  drpc_future_set_value(r->value, value);
  *out = r;
  return 0;
}

typedef struct remote_cmd {
  drpc_cmd cmd;
  drpc_agent *a;
  drpc_rref *r; /* kept alive by remote_returned's reference */
  drpc_outframe *frame;
  drpc_fork_list *forks;
  uint64_t timeout_ms;
  drpc_future *call; /* the REMOTE_CALL's own future (a reference) */
  char *fn;          /* for the recording */
} remote_cmd;

/* Loop: the REMOTE_RET (or the call's failure) arrived. Runs before the
 * creation future completes, so a user waiting on it sees the RRef
 * confirmed. */
static void remote_returned(drpc_future *f, void *arg) {
  drpc_rref *r = arg;
  drpc_rctx *c = r->ctx;
  drpc_error err = DRPC_ERROR_INIT;
  int code = drpc_future_error(f, &err);
  if (code == DRPC_ETIMEOUT)
    atomic_store(&r->timed_out, true);
  if (!destroyed(c)) {
    if (r->is_owner) {
      /* Flow 2: drop the self fork that kept the owner in the table. */
      del_fork(c, r->id, key_of(r->id));
      if (code && code != DRPC_ETIMEOUT)
        drpc_future_set_error(r->value, &err);
    } else {
      del_pending_user(c, key_of(r->fork));
    }
  }
  if (code)
    drpc_future_set_error(r->created, &err);
  else
    drpc_future_set_value(r->created, NULL);
  drpc_error_clear(&err);
  drpc_future_decref(f);
  drpc_rref_decref(r);
}

static void remote_apply(drpc_cmd *cmd) {
  remote_cmd *rc = (remote_cmd *)cmd;
  drpc_agent *a = rc->a;
  drpc_rctx *c = rc->r->ctx;
  drpc_rref *r = rc->r;
  drpc_agent_input_begin(a);
  if (drpc_agent_recording(a)) {
    drpc_rbuf b = {0};
    drpc_rref_write_ids(r, &b);
    drpc_rbuf_u64(&b, (uint64_t)(int64_t)r->owner.id);
    drpc_rbuf_u64(&b, r->is_owner);
    drpc_rbuf_u64(&b, rc->timeout_ms);
    drpc_rbuf_frame(&b, rc->frame);
    drpc_fork_list_write(rc->forks, &b);
    drpc_rbuf_blob(&b, rc->fn ? rc->fn : "", rc->fn ? strlen(rc->fn) : 0);
    drpc_agent_record(a, DRPC_EV_IN_COMMAND, r->owner.id, key_of(r->id),
                      DRPC_CMD_REMOTE, b.p, b.failed ? 0 : b.len, NULL);
    drpc_rbuf_free(&b);
  } else {
    drpc_agent_record(a, DRPC_EV_IN_COMMAND, r->owner.id, key_of(r->id),
                      DRPC_CMD_REMOTE, NULL, 0, NULL);
  }
  if (!destroyed(c) && !drpc_agent_stopped(a)) {
    if (r->is_owner) {
      owners_put(c, r);
      add_fork(c, r->id, key_of(r->id));
    } else {
      add_pending_user(c, r, true);
    }
  } else if (!r->is_owner && atomic_fetch_sub(&c->n_pending_users, 1) == 1 &&
             !destroyed(c)) {
    notify(c);
  }
  /* The request path handles a stopped agent by failing the future. */
  drpc_agent_post_request(a, r->owner.id, rc->frame, rc->forks, rc->timeout_ms,
                          rc->call, "rpc_remote", rc->fn);
  drpc_future_decref(rc->call);
  free(rc->fn);
  free(rc);
}

int drpc_rref_remote_kind(drpc_agent *a, int16_t dst, int kind, const char *fn,
                          const drpc_value *args, const drpc_value *kwargs,
                          double timeout_s, drpc_rref **out, drpc_error *err) {
  *out = NULL;
  uint64_t timeout_ms = 0;
  int rc = drpc_agent_check_call(a, dst, kind, fn, args, kwargs, timeout_s,
                                 &timeout_ms, err);
  if (rc)
    return rc;
  drpc_rctx *c = drpc_agent_rctx(a);
  if (destroyed(c))
    return drpc_error_set(err, DRPC_ESHUTDOWN,
                          "RPC is no longer running on this node");
  drpc_worker_info owner;
  if ((rc = drpc_agent_resolve_id(a, dst, &owner, err)))
    return rc;
  bool self = dst == c->self.id;
  drpc_rref_id id, fork;
  if ((rc = gen_id(c, &id, err)))
    return rc;
  fork = id;
  if (!self && (rc = gen_id(c, &fork, err)))
    return rc;

  drpc_value kind_v = {.kind = DRPC_VAL_INT, .u.i = kind};
  drpc_value name_v = {.kind = DRPC_VAL_STR, .u.s = {(char *)fn, strlen(fn)}};
  drpc_value empty_list = {.kind = DRPC_VAL_LIST};
  drpc_value empty_dict = {.kind = DRPC_VAL_DICT};
  drpc_value idv[4] = {{.kind = DRPC_VAL_INT, .u.i = id.created_on},
                       {.kind = DRPC_VAL_INT, .u.i = id.local_id},
                       {.kind = DRPC_VAL_INT, .u.i = fork.created_on},
                       {.kind = DRPC_VAL_INT, .u.i = fork.local_id}};
  drpc_value *rid_items[2] = {&idv[0], &idv[1]};
  drpc_value *fid_items[2] = {&idv[2], &idv[3]};
  drpc_value rid = {.kind = DRPC_VAL_LIST, .u.c = {rid_items, NULL, 2, 2}};
  drpc_value fid = {.kind = DRPC_VAL_LIST, .u.c = {fid_items, NULL, 2, 2}};
  drpc_value *items[6] = {&kind_v,
                          &name_v,
                          args ? (drpc_value *)args : &empty_list,
                          kwargs ? (drpc_value *)kwargs : &empty_dict,
                          &rid,
                          &fid};
  drpc_value body = {.kind = DRPC_VAL_LIST, .u.c = {items, NULL, 6, 6}};
  drpc_outframe *frame = NULL;
  drpc_fork_list *forks = NULL;
  if ((rc = drpc_rref_encode(a, DRPC_MSG_REMOTE_CALL, 0, &body, dst, &frame,
                             &forks, err)))
    return rc;
  drpc_rref *r = rref_alloc(c, self, &owner, id, fork);
  remote_cmd *cmd = calloc(1, sizeof *cmd);
  drpc_future *call = drpc_future_new(&c->env);
  if (r)
    r->created = drpc_future_new(&c->env);
  if (!r || !cmd || !call || !r->created ||
      drpc_future_add_done_callback(call, remote_returned, r) != 0) {
    if (r)
      atomic_store(&r->deleted, true); /* never announced to anyone */
    drpc_rref_decref(r);
    free(cmd);
    drpc_future_decref(call);
    drpc_outframe_free(frame);
    drpc_fork_list_drop(forks);
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  }
  /* r: the caller's reference and the callback's (dropped in
   * remote_returned, which runs after remote_apply has posted the call).
   * call: its creator reference belongs to the callback, the command's
   * keeps it alive until posted. */
  drpc_rref_incref(r);
  cmd->cmd.apply = remote_apply;
  cmd->a = a;
  cmd->r = r;
  cmd->frame = frame;
  cmd->forks = forks;
  cmd->timeout_ms = timeout_ms;
  cmd->call = call;
  cmd->fn = strdup(fn);
  drpc_future_incref(call);
  if (!self)
    atomic_fetch_add(&c->n_pending_users, 1);
  const drpc_env *e = &c->env;
  e->ops->post(e->ctx, &cmd->cmd);
  *out = r;
  return 0;
}

int drpc_remote_id(drpc_agent *a, int16_t dst, drpc_call_kind kind,
                   const char *fn, const drpc_value *args,
                   const drpc_value *kwargs, double timeout_s, drpc_rref **out,
                   drpc_error *err) {
  *out = NULL;
  int rc = 0;
  if (!a && (rc = drpc_get_current_agent(&a, err)))
    return rc;
  if (kind != DRPC_BUILTIN && kind != DRPC_FUNCTION)
    return drpc_error_set(err, DRPC_EINVAL, "unknown call kind %d", (int)kind);
  return drpc_rref_remote_kind(a, dst, kind, fn, args, kwargs, timeout_s, out,
                               err);
}

int drpc_remote(drpc_agent *a, const char *dst, drpc_call_kind kind,
                const char *fn, const drpc_value *args,
                const drpc_value *kwargs, double timeout_s, drpc_rref **out,
                drpc_error *err) {
  *out = NULL;
  int rc = 0;
  if (!a && (rc = drpc_get_current_agent(&a, err)))
    return rc;
  drpc_worker_info wi = {0};
  if ((rc = drpc_agent_resolve(a, dst, &wi, err)))
    return rc;
  return drpc_remote_id(a, wi.id, kind, fn, args, kwargs, timeout_s, out, err);
}

/* ---- using RRefs (user threads)
 * ------------------------------------------------- */

static int deleted_error(const drpc_rref *r, drpc_error *err) {
  char id[96], fork[96];
  drpc_rref_id_format(r->id, id, sizeof id);
  drpc_rref_id_format(r->fork, fork, sizeof fork);
  return drpc_error_set(err, DRPC_ESTATE,
                        "User RRef with RRefId=%s and ForkId=%s has been "
                        "deleted. Cannot call to_here() on it after deletion.",
                        id, fork);
}

int drpc_rref_to_here(drpc_rref *r, double timeout_s, drpc_value **out,
                      drpc_error *err) {
  *out = NULL;
  drpc_rctx *c = r->ctx;
  if (atomic_load(&r->timed_out))
    return timed_out_error(err);
  if (r->is_owner) {
    const drpc_value *v = NULL;
    /* UNSET and 0 wait for the value without bound. */
    int rc = drpc_future_get(r->value, timeout_s > 0 ? timeout_s : -1, &v, err);
    if (rc)
      return rc;
    if (v && !(*out = drpc_value_clone(v)))
      return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
    return 0;
  }
  if (atomic_load(&r->deleted))
    return deleted_error(r, err);
  if (destroyed(c))
    return drpc_error_set(err, DRPC_ESHUTDOWN,
                          "RPC is no longer running on this node");
  drpc_agent *a = c->agent;
  uint64_t timeout_ms = 0;
  int rc = drpc_agent_timeout_ms(a, timeout_s, &timeout_ms, err);
  if (rc)
    return rc;
  drpc_value *body = drpc_value_list_of(2, drpc_value_int(r->id.created_on),
                                        drpc_value_int(r->id.local_id));
  drpc_outframe *frame = NULL;
  if (!body)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  rc = drpc_wire_encode(DRPC_MSG_RREF_FETCH, 0, 0, body,
                        drpc_agent_wire_limits(a), &frame, err);
  drpc_value_free(body);
  if (rc)
    return rc;
  drpc_future *f = drpc_future_new(&c->env);
  if (!f) {
    drpc_outframe_free(frame);
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  }
  drpc_agent_post_request(a, r->owner.id, frame, NULL, timeout_ms, f,
                          "rref_fetch", NULL);
  rc = drpc_future_get(f, -1, NULL, err);
  if (rc == 0)
    *out = drpc_future_take_value(f);
  drpc_future_decref(f);
  return rc;
}

int drpc_rref_local_value(drpc_rref *r, const drpc_value **out,
                          drpc_error *err) {
  *out = NULL;
  if (!r->is_owner) {
    drpc_rctx *c = r->ctx;
    char id[96], fork[96], me[200], owner[200];
    drpc_rref_id_format(r->id, id, sizeof id);
    drpc_rref_id_format(r->fork, fork, sizeof fork);
    drpc_worker_info_format(&c->self, me, sizeof me);
    drpc_worker_info_format(&r->owner, owner, sizeof owner);
    return drpc_error_set(err, DRPC_ESTATE,
                          "For UserRRef(rref_id=%s, fork_id=%s), can't call "
                          "localValue() on user %s. Call it on owner %s",
                          id, fork, me, owner);
  }
  const drpc_value *v = NULL;
  int rc = drpc_future_get(r->value, -1, &v, err);
  if (rc)
    return rc;
  static const drpc_value nil = {.kind = DRPC_VAL_NIL};
  *out = v ? v : &nil;
  return 0;
}

/* Proxies: the RRef travels as args[0]; the owner swaps in its value. */
static int proxy_async(drpc_rref *r, drpc_call_kind kind, const char *fn,
                       const drpc_value *args, const drpc_value *kwargs,
                       double timeout_s, drpc_future **fut, drpc_rref **rout,
                       drpc_error *err) {
  drpc_rctx *c = r->ctx;
  if (destroyed(c))
    return drpc_error_set(err, DRPC_ESHUTDOWN,
                          "RPC is no longer running on this node");
  if (kind != DRPC_BUILTIN && kind != DRPC_FUNCTION)
    return drpc_error_set(err, DRPC_EINVAL, "unknown call kind %d", (int)kind);
  if (args && args->kind != DRPC_VAL_LIST)
    return drpc_error_set(err, DRPC_ETYPE, "args must be a list, got %s",
                          drpc_value_kind_name(args->kind));
  size_t n = args ? args->u.c.len : 0;
  drpc_value **items = malloc((n + 1) * sizeof *items);
  if (!items)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  drpc_value self = {.kind = DRPC_VAL_RREF};
  self.u.r.handle = r;
  items[0] = &self;
  for (size_t i = 0; i < n; i++)
    items[i + 1] = args->u.c.items[i];
  drpc_value list = {.kind = DRPC_VAL_LIST, .u.c = {items, NULL, n + 1, n + 1}};
  int k =
      kind == DRPC_BUILTIN ? DRPC_KIND_RREF_BUILTIN : DRPC_KIND_RREF_FUNCTION;
  int rc = fut ? drpc_agent_call(c->agent, r->owner.id, k, fn, &list, kwargs,
                                 timeout_s, fut, err)
               : drpc_rref_remote_kind(c->agent, r->owner.id, k, fn, &list,
                                       kwargs, timeout_s, rout, err);
  free(items);
  return rc;
}

int drpc_rref_rpc_async(drpc_rref *r, drpc_call_kind kind, const char *fn,
                        const drpc_value *args, const drpc_value *kwargs,
                        double timeout_s, drpc_future **fut, drpc_error *err) {
  *fut = NULL;
  return proxy_async(r, kind, fn, args, kwargs, timeout_s, fut, NULL, err);
}

int drpc_rref_rpc_sync(drpc_rref *r, drpc_call_kind kind, const char *fn,
                       const drpc_value *args, const drpc_value *kwargs,
                       double timeout_s, drpc_value **result, drpc_error *err) {
  *result = NULL;
  drpc_future *f = NULL;
  int rc = drpc_rref_rpc_async(r, kind, fn, args, kwargs, timeout_s, &f, err);
  if (rc)
    return rc;
  rc = drpc_future_get(f, -1, NULL, err);
  if (rc == 0)
    *result = drpc_future_take_value(f);
  drpc_future_decref(f);
  return rc;
}

int drpc_rref_remote(drpc_rref *r, drpc_call_kind kind, const char *fn,
                     const drpc_value *args, const drpc_value *kwargs,
                     double timeout_s, drpc_rref **out, drpc_error *err) {
  *out = NULL;
  return proxy_async(r, kind, fn, args, kwargs, timeout_s, NULL, out, err);
}

int drpc_rref_type(drpc_rref *r, double timeout_s, const char **out,
                   drpc_error *err) {
  *out = atomic_load(&r->type_name);
  if (*out)
    return 0;
  if (r->is_owner) {
    const drpc_value *v = NULL;
    int rc = drpc_rref_local_value(r, &v, err);
    if (rc)
      return rc;
    *out = drpc_value_kind_name(v->kind);
    return 0;
  }
  drpc_value *res = NULL;
  int rc = drpc_rref_rpc_sync(r, DRPC_FUNCTION, DRPC_RREF_TYPE_FN, NULL, NULL,
                              timeout_s, &res, err);
  if (rc)
    return rc;
  const char *t =
      res && res->kind == DRPC_VAL_STR ? static_kind_name(res->u.s.data) : NULL;
  drpc_value_free(res);
  if (!t)
    return drpc_error_set(err, DRPC_EPROTO, "the owner sent no type name");
  atomic_store(&r->type_name, t);
  *out = t;
  return 0;
}

/* ---- shutdown
 * ------------------------------------------------------------------ */

static bool no_pending(void *arg) {
  drpc_rctx *c = arg;
  return atomic_load(&c->n_pending_users) == 0 &&
         atomic_load(&c->n_children) == 0;
}

static bool owners_gone(void *arg) {
  drpc_rctx *c = arg;
  return atomic_load(&c->n_owners) == 0 &&
         atomic_load(&c->n_pending_futures) == 0;
}

/* Loop: deletes every live user RRef and drops unforked owners. */
static void delete_users_apply(void *arg) {
  drpc_rctx *c = arg;
  if (destroyed(c))
    return;
  size_t n = 0;
  uint64_t *keys = drpc_map_sorted_keys(&c->confirmed, &n);
  for (size_t i = 0; keys && i < n; i++) {
    drpc_rref *r = drpc_map_remove(&c->confirmed, keys[i]);
    if (r && !atomic_exchange(&r->deleted, true))
      send_user_delete(c, r);
  }
  free(keys);
  keys = drpc_map_sorted_keys(&c->owners, &n);
  for (size_t i = 0; keys && i < n; i++) {
    if (drpc_map_get(&c->forks, keys[i]))
      continue;
    drpc_rref *o = drpc_map_remove(&c->owners, keys[i]);
    atomic_fetch_sub(&c->n_owners, 1);
    drpc_rref_decref(o);
  }
  free(keys);
}

int drpc_rref_shutdown_cleanup(drpc_agent *a, uint64_t deadline,
                               drpc_error *err) {
  drpc_rctx *c = drpc_agent_rctx(a);
  if (destroyed(c))
    return 0;
  int rc = drpc_agent_wait(a, no_pending, c, deadline);
  if (rc)
    drpc_agent_logf(a, DRPC_LOG_WARN,
                    "Timed out waiting for pending UserRRefs to be confirmed "
                    "by owner and parent.");
  if ((rc = drpc_agent_run_on_loop(a, DRPC_CMD_DELETE_USERS, delete_users_apply,
                                   c)))
    return drpc_error_set(err, rc, "could not delete the user RRefs");
  rc = drpc_agent_wait(a, owners_gone, c, deadline);
  if (rc) {
    drpc_agent_logf(a, DRPC_LOG_WARN,
                    "Timed out waiting for pending OwnerRRefs to be deleted.");
    return drpc_error_set(err, DRPC_ETIMEOUT,
                          "Timed out waiting for pending OwnerRRefs to be "
                          "deleted (%lld owner RRefs, %lld control messages "
                          "left).",
                          (long long)atomic_load(&c->n_owners),
                          (long long)atomic_load(&c->n_pending_futures));
  }
  return 0;
}

int drpc_rref_context_delete_all(drpc_agent *a, double timeout_s,
                                 drpc_error *err) {
  int rc = 0;
  if (!a && (rc = drpc_get_current_agent(&a, err)))
    return rc;
  uint64_t deadline = 0;
  if (timeout_s > 0 && timeout_s * 1e9 < 1e18)
    deadline = drpc_env_now(drpc_agent_env(a)) + (uint64_t)(timeout_s * 1e9);
  return drpc_rref_shutdown_cleanup(a, deadline, err);
}

/* Appends to a growing string; returns false on no memory. */
static bool append(char **s, size_t *len, size_t *cap, const char *fmt, ...) {
  va_list ap;
  for (;;) {
    va_start(ap, fmt);
    int w = vsnprintf(*s ? *s + *len : NULL, *s ? *cap - *len : 0, fmt, ap);
    va_end(ap);
    if (w < 0)
      return false;
    if (*s && *len + (size_t)w < *cap) {
      *len += (size_t)w;
      return true;
    }
    size_t cap2 = (*cap + (size_t)w + 1) * 2;
    char *p = realloc(*s, cap2);
    if (!p)
      return false;
    *s = p;
    *cap = cap2;
  }
}

char *drpc_rctx_destroy(drpc_rctx *c) {
  if (atomic_exchange(&c->destroyed, true))
    return NULL;
  atomic_store(&c->at_stop[0], atomic_load(&c->n_owners));
  atomic_store(&c->at_stop[1], atomic_load(&c->n_pending_futures));
  atomic_store(&c->at_stop[2], atomic_load(&c->n_pending_users));
  atomic_store(&c->at_stop[3], atomic_load(&c->n_forks));
  atomic_store(&c->at_stop_set, true);
  char *leaks = NULL;
  size_t len = 0, cap = 0;
  size_t n = 0;
  uint64_t *keys = drpc_map_sorted_keys(&c->forks, &n);
  if (keys && n)
    append(&leaks, &len, &cap,
           "Detected RRef Leaks during shutdown: users still held these "
           "RRefs when their owner stopped (release every RRef before "
           "shutdown, or set ignore_rref_leak when the process is exiting "
           "anyway):\n");
  for (size_t i = 0; keys && i < n; i++) {
    forkset *s = drpc_map_remove(&c->forks, keys[i]);
    char id[96], fork[96];
    drpc_rref_id_format(id_of(keys[i]), id, sizeof id);
    for (size_t k = 0; k < s->len; k++) {
      drpc_rref_id_format(id_of(s->keys[k]), fork, sizeof fork);
      append(&leaks, &len, &cap, "Leaking RRef %s with fork Id %s\n", id, fork);
    }
    free(s->keys);
    free(s);
  }
  free(keys);
  /* Strong references go; weak ones are only forgotten (their handles are
   * freed by whoever drops them last, without touching the tables). */
  keys = drpc_map_sorted_keys(&c->owners, &n);
  for (size_t i = 0; keys && i < n; i++) {
    drpc_rref *o = drpc_map_remove(&c->owners, keys[i]);
    /* Fetches and calls still waiting for a value that will never come
     * hold the owner through its value future: fail it, so they finish
     * and let go. */
    if (!drpc_future_done(o->value))
      drpc_future_fail(o->value, DRPC_ESHUTDOWN,
                       "the RRef's owner shut down before its value was set");
    drpc_rref_decref(o);
  }
  free(keys);
  /* Owners waited on but gone from the table: the same. */
  keys = drpc_map_sorted_keys(&c->waited, &n);
  for (size_t i = 0; keys && i < n; i++) {
    drpc_rref *o = drpc_map_remove(&c->waited, keys[i]);
    if (o && !drpc_future_done(o->value))
      drpc_future_fail(o->value, DRPC_ESHUTDOWN,
                       "the RRef's owner shut down before its value was set");
  }
  free(keys);
  keys = drpc_map_sorted_keys(&c->pending_users, &n);
  for (size_t i = 0; keys && i < n; i++) {
    drpc_rref *r = drpc_map_remove(&c->pending_users, keys[i]);
    while (r->waiters) {
      waiter_node *wn = r->waiters;
      r->waiters = wn->next;
      if (--wn->w->pending == 0)
        wn->w->ready(wn->w);
      free(wn);
    }
    drpc_rref_decref(r);
  }
  free(keys);
  keys = drpc_map_sorted_keys(&c->children, &n);
  for (size_t i = 0; keys && i < n; i++)
    drpc_rref_decref(drpc_map_remove(&c->children, keys[i]));
  free(keys);
  drpc_map_free(&c->confirmed);
  drpc_map_init(&c->confirmed);
  atomic_store(&c->n_owners, 0);
  atomic_store(&c->n_forks, 0);
  atomic_store(&c->n_pending_users, 0);
  atomic_store(&c->n_children, 0);
  return leaks;
}

static int put_count(drpc_value *d, const char *key, long long v) {
  char buf[32];
  snprintf(buf, sizeof buf, "%lld", v);
  return drpc_dict_set(d, key, drpc_value_str(buf));
}

int drpc_rctx_debug_info(drpc_rctx *c, drpc_value *d) {
  if (put_count(d, "num_owner_rrefs", atomic_load(&c->n_owners)) ||
      put_count(d, "num_pending_futures", atomic_load(&c->n_pending_futures)) ||
      put_count(d, "num_pending_users", atomic_load(&c->n_pending_users)) ||
      put_count(d, "num_forks", atomic_load(&c->n_forks)))
    return DRPC_ENOMEM;
  if (!atomic_load(&c->at_stop_set))
    return 0;
  static const char *const keys[4] = {
      "num_owner_rrefs_at_shutdown", "num_pending_futures_at_shutdown",
      "num_pending_users_at_shutdown", "num_forks_at_shutdown"};
  for (int i = 0; i < 4; i++)
    if (put_count(d, keys[i], atomic_load(&c->at_stop[i])))
      return DRPC_ENOMEM;
  return 0;
}

drpc_value *drpc_rref_context_debug_info(drpc_agent *a) {
  if (!a && drpc_get_current_agent(&a, NULL))
    return NULL;
  drpc_value *d = drpc_value_dict();
  if (d && drpc_rctx_debug_info(drpc_agent_rctx(a), d)) {
    drpc_value_free(d);
    return NULL;
  }
  return d;
}

/* ---- replay support (core/replay.c) ---------------------------------------
 */

int drpc_rref_cmd_identify(drpc_cmd *cmd, drpc_event_kind *kind, uint64_t *type,
                           uint64_t *key) {
  *kind = DRPC_EV_IN_COMMAND;
  if (cmd->apply == release_apply) {
    *type = DRPC_CMD_RELEASE;
    *key = key_of(((release_cmd *)cmd)->r->fork);
    return 0;
  }
  if (cmd->apply == remote_apply) {
    *type = DRPC_CMD_REMOTE;
    *key = key_of(((remote_cmd *)cmd)->r->id);
    return 0;
  }
  return DRPC_EINVAL;
}

static drpc_rref_id read_id(drpc_rreader *r) {
  drpc_rref_id id;
  id.created_on = (int16_t)drpc_rr_u64(r);
  id.local_id = (int64_t)(drpc_rr_u64(r) & (DRPC_RREF_MAX_LOCAL_ID - 1));
  return id;
}

/* The live handle a recorded fork names: an owner from the owners table, a
 * user from the confirmed or pending tables. */
static drpc_rref *find_handle(drpc_rctx *c, drpc_rref_id id, bool is_owner,
                              drpc_rref_id own_fork) {
  if (is_owner)
    return drpc_map_get(&c->owners, key_of(id));
  drpc_rref *r = drpc_map_get(&c->confirmed, key_of(own_fork));
  if (!r)
    r = drpc_map_get(&c->pending_users, key_of(own_fork));
  return r;
}

int drpc_fork_list_read(drpc_agent *a, drpc_rreader *rd, drpc_fork_list **out,
                        drpc_error *err) {
  *out = NULL;
  drpc_rctx *c = drpc_agent_rctx(a);
  uint64_t n = drpc_rr_u64(rd);
  if (rd->bad || n > DRPC_WIRE_MAX_TENSORS * 16ull)
    return drpc_error_set(err, DRPC_EPROTO, "malformed fork list record");
  if (n == 0)
    return 0;
  drpc_fork_list *l = calloc(1, sizeof *l);
  if (!l || !(l->e = calloc((size_t)n, sizeof *l->e))) {
    free(l);
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  }
  l->cap = (size_t)n;
  for (uint64_t i = 0; i < n; i++) {
    drpc_rref_id id = read_id(rd), fork = read_id(rd);
    bool is_owner = drpc_rr_u64(rd) != 0;
    drpc_rref_id own = read_id(rd);
    size_t vn = 0;
    const uint8_t *vp = drpc_rr_blob(rd, &vn);
    drpc_rref *r =
        rd->bad || destroyed(c) ? NULL : find_handle(c, id, is_owner, own);
    if (r) {
      drpc_rref_incref(r);
    } else if (!rd->bad && !destroyed(c) && is_owner && vn &&
               id.created_on == c->self.id) {
      /* An owner user code made: rebuilt with its recorded value. */
      drpc_msg m = {0};
      if (drpc_wire_decode(vp, vn, drpc_agent_wire_limits(a), &m, NULL) == 0 &&
          (r = rref_alloc(c, true, &c->self, id, id)) != NULL) {
        drpc_future_set_value(r->value, m.body);
        m.body = NULL;
      }
      drpc_msg_clear(&m);
    }
    if (!r) {
      drpc_fork_list_drop(l);
      return drpc_error_set(err, DRPC_ESTATE,
                            "cannot replay a fork of RRef (%d, %lld): the "
                            "handle is not known to the replayed core",
                            id.created_on, (long long)id.local_id);
    }
    l->e[l->len].r = r;
    l->e[l->len].fork = fork;
    l->len++;
  }
  *out = l;
  return 0;
}

void drpc_rref_delete_users_now(drpc_agent *a) {
  delete_users_apply(drpc_agent_rctx(a));
}

/* A recorded REMOTE command: [rref id, fork id, owner, self-owned, timeout
 * ms, frame, forks, fn]. The new handle (a reference) goes to *out. */
int drpc_rref_replay_remote(drpc_agent *a, drpc_rreader *rd, drpc_rref **out,
                            drpc_error *err) {
  *out = NULL;
  drpc_rctx *c = drpc_agent_rctx(a);
  drpc_rref_id id = read_id(rd), fork = read_id(rd);
  int16_t owner_id = (int16_t)drpc_rr_u64(rd);
  bool self = drpc_rr_u64(rd) != 0;
  uint64_t timeout_ms = drpc_rr_u64(rd);
  size_t n = 0;
  const uint8_t *p = drpc_rr_blob(rd, &n);
  drpc_fork_list *forks = NULL;
  int rc = drpc_fork_list_read(a, rd, &forks, err);
  if (rc)
    return rc;
  size_t fnn = 0;
  const uint8_t *fn = drpc_rr_blob(rd, &fnn);
  drpc_worker_info owner;
  if (rd->bad || !p || destroyed(c) ||
      drpc_agent_resolve_id(a, owner_id, &owner, NULL) != 0) {
    drpc_fork_list_drop(forks);
    return drpc_error_set(err, DRPC_EPROTO, "malformed REMOTE command record");
  }
  drpc_outframe *frame = calloc(1, sizeof *frame);
  if (frame && (frame->head = malloc(n ? n : 1))) {
    memcpy(frame->head, p, n);
    frame->head_len = n;
    frame->total_len = n;
  } else {
    free(frame);
    frame = NULL;
  }
  drpc_rref *r = rref_alloc(c, self, &owner, id, fork);
  remote_cmd *cmd = calloc(1, sizeof *cmd);
  drpc_future *call = drpc_future_new(&c->env);
  if (r)
    r->created = drpc_future_new(&c->env);
  if (!frame || !r || !cmd || !call || !r->created ||
      drpc_future_add_done_callback(call, remote_returned, r) != 0) {
    if (r)
      atomic_store(&r->deleted, true);
    drpc_rref_decref(r);
    free(cmd);
    drpc_future_decref(call);
    drpc_outframe_free(frame);
    drpc_fork_list_drop(forks);
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  }
  drpc_rref_incref(r);
  cmd->cmd.apply = remote_apply;
  cmd->a = a;
  cmd->r = r;
  cmd->frame = frame;
  cmd->forks = forks;
  cmd->timeout_ms = timeout_ms;
  cmd->call = call;
  cmd->fn = strndup((const char *)fn, fnn);
  drpc_future_incref(call);
  if (!self)
    atomic_fetch_add(&c->n_pending_users, 1);
  remote_apply(&cmd->cmd);
  *out = r;
  return 0;
}

uint64_t drpc_rref_fork_key(const drpc_rref *r) {
  return key_of(r->fork);
}
