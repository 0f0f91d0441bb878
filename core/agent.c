/* The RPC agent core: calls, responses, timeouts, connections, server-side
 * dispatch to the executor, rendezvous, join and shutdown. Everything it does
 * to the outside world goes through its drpc_env. */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "drpc/agent.h"
#include "drpc/ops.h"
#include "drpc/rref.h"
#include "heap.h"
#include "internal.h"
#include "map.h"

/* The connection id used for calls an agent makes to itself. */
#define SELF_CONN DRPC_SELF_CONN
/* Bounds: calls in flight from one agent, frames queued for a connection
 * that is still opening. */
#define MAX_PENDING_CALLS (1u << 20)
#define MAX_CONNECT_QUEUE (1u << 20)

/* Dynamic groups: member-table snapshots kept valid after a change, and
 * departed members remembered for the errors of calls to them. */
#define MAX_OLD_INFOS 16
#define MAX_DEPARTED 64

enum { ST_RUNNING = 1, ST_STOPPING = 2, ST_STOPPED = 3 };
enum { PEER_IDLE = 0, PEER_CONNECTING = 1, PEER_OPEN = 2 };

typedef struct peer {
  drpc_worker_info info;
  uint64_t epoch; /* dynamic groups: the membership epoch it joined at */
  char *addr;
  char *devinfo; /* the second line of its addrs/ value; NULL when none */
  int state;
  uint64_t conn;
  drpc_outframe *q_head, *q_tail;
  size_t q_len;
} peer;

typedef struct departed_info {
  drpc_worker_info info;
  uint64_t epoch; /* 0: the slot is empty */
  char why[96];
} departed_info;

typedef struct conn_entry {
  uint64_t conn;
  int16_t peer; /* -1 until HELLO on incoming connections */
  bool outgoing;
  bool hello;
  bool peer_shutdown; /* the peer announced a clean close */
} conn_entry;

/* A general timer (RRef control-message retries). */
struct drpc_timer {
  drpc_heap_node hn; /* first: the heap hands back this pointer */
  void (*fn)(void *arg, bool fired);
  void *arg;
};

typedef struct pcall {
  drpc_heap_node hn; /* first; deadline (0: none), the call id breaks ties */
  uint64_t id;
  int16_t dst;
  drpc_future *fut;
  uint64_t timeout_ms;
} pcall;

struct drpc_agent {
  drpc_env env;
  drpc_options opts;
  drpc_wire_limits lim;
  drpc_registry *registry;
  drpc_store *store;
  drpc_worker_info self;
  int64_t world_size;
  /* The members (self included), sorted by id, and by name for lookups by
   * name. Static groups fill them at start. Dynamic groups change them on
   * the loop as members join and leave; other threads read them under
   * mlock. infos is the current snapshot drpc_agent_workers hands out;
   * the last MAX_OLD_INFOS snapshots stay valid after a change. */
  peer **peers;
  size_t npeers, peers_cap;
  peer **by_name;
  drpc_worker_info *infos;
  drpc_worker_info *old_infos[MAX_OLD_INFOS];
  size_t old_next;
  drpc_sync mlock;
  /* Dynamic groups: the highest membership epoch applied, the epoch of
   * every member's last applied change (id -> epoch << 1 | present), the
   * last members that left (for the errors of calls to them) and the
   * group-management state (core/membership.c). */
  _Atomic uint64_t epoch;
  drpc_map member_epochs;
  departed_info *departed; /* MAX_DEPARTED, made at the first departure */
  size_t departed_next;
  drpc_members *members;

  _Atomic int state;
  _Atomic uint64_t timeout_ms; /* default per-call timeout */
  _Atomic int64_t client_active, server_active, server_active_async;
  _Atomic uint64_t calls_sent, calls_served, frames_in, frames_out;
  _Atomic uint64_t timeouts, conn_failures;

  /* Owned by the loop (the thread that feeds inputs). */
  uint64_t next_id;
  drpc_map calls;
  drpc_heap calls_heap; /* call timeouts */
  uint64_t armed_deadline;
  drpc_map conns;
  drpc_heap timers; /* general timers; ties by creation order */
  uint64_t timer_seq;

  /* The RRef context (core/rref.c); outlives the agent while handles hold
   * it. rref_leaks: the leak report of the last context destroy. */
  drpc_rctx *rctx;
  char *rref_leaks;

  /* Idle and stop notifications for threads blocked in shutdown. */
  drpc_sync sync;
  bool stop_applied;
  uint64_t barrier_seq;

  /* Recording: rec_full when a recorder keeps payloads; in_now is the
   * clock as the input being applied found it (every loop-side use of the
   * time reads it, so replay sees the same deadlines). */
  bool rec_full;
  uint64_t in_now;
  /* Recording scratch, used by the owner thread only: command payloads
   * (rec_buf) and frames with tensor data (rec_frame) are built here and
   * reused, so recording allocates nothing per event. */
  drpc_rbuf rec_buf, rec_frame;

  /* PROFILER: profiling state (core/profiler.c). */
  drpc_agent_prof *prof;

  /* Devices, device maps and lent device memory (core/agent_dev.c). */
  drpc_devstate *dev;
};

drpc_devstate *drpc_agent_devstate(drpc_agent *a) {
  return a->dev;
}

static peer *peer_by_id(drpc_agent *a, int64_t id);

const char *drpc_agent_peer_devinfo(drpc_agent *a, int16_t id) {
  peer *p = peer_by_id(a, id);
  return p ? p->devinfo : NULL;
}

/* ---- small helpers ---------------------------------------------------- */

static void logf_(drpc_agent *a, drpc_log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void logf_(drpc_agent *a, drpc_log_level lvl, const char *fmt, ...) {
  if (!a->env.ops->log)
    return;
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  a->env.ops->log(a->env.ctx, lvl, buf);
}

void drpc_agent_record(drpc_agent *a, drpc_event_kind kind, int16_t peer_id,
                       uint64_t id, uint64_t aux, const void *bytes, size_t len,
                       const char *name) {
  if (!a->env.ops->record)
    return;
  drpc_event ev = {kind, a->self.id, peer_id, a->in_now, id,
                   aux,  bytes,      len,     name};
  a->env.ops->record(a->env.ctx, &ev);
}

static void rec(drpc_agent *a, drpc_event_kind kind, int16_t peer_id,
                uint64_t id, uint64_t aux) {
  drpc_agent_record(a, kind, peer_id, id, aux, NULL, 0, NULL);
}

bool drpc_agent_recording(drpc_agent *a) {
  return a->rec_full;
}

uint64_t drpc_agent_loop_now(drpc_agent *a) {
  return a->in_now;
}

void drpc_agent_input_begin(drpc_agent *a) {
  a->in_now = drpc_env_now(&a->env);
}

/* The recording scratch keeps up to this much memory between events. */
#define REC_KEEP ((size_t)1 << 20)

/* The agent's command payload scratch, emptied (owner thread only). */
static drpc_rbuf *rec_buf(drpc_agent *a) {
  drpc_rbuf_reset(&a->rec_buf, REC_KEEP);
  return &a->rec_buf;
}

/* Records an input command with its arguments (when payloads are kept). */
static void rec_cmd(drpc_agent *a, drpc_event_kind kind, uint64_t type,
                    int16_t peer_id, uint64_t id, drpc_rbuf *b) {
  if (b->failed)
    drpc_agent_logf(a, DRPC_LOG_ERROR,
                    "out of memory recording a command; the recording "
                    "will not replay");
  drpc_agent_record(a, kind, peer_id, id, type, b->p, b->failed ? 0 : b->len,
                    NULL);
  if (b == &a->rec_buf)
    drpc_rbuf_reset(b, REC_KEEP);
  else
    drpc_rbuf_free(b);
}

/* The bytes of f as it goes on the wire: its head itself when that is the
 * whole frame (no tensor data), else a copy in the agent's frame scratch
 * (owner thread only; valid until the next call). NULL when out of
 * memory. */
static const uint8_t *rec_frame_bytes(drpc_agent *a, const drpc_outframe *f,
                                      size_t *n) {
  if (f->head_len == f->total_len) {
    *n = f->head_len;
    return f->head;
  }
  drpc_rbuf *b = &a->rec_frame;
  drpc_rbuf_reset(b, REC_KEEP);
  drpc_rbuf_put_frame(b, f);
  if (b->failed) {
    drpc_rbuf_reset(b, 0);
    *n = 0;
    return NULL;
  }
  *n = b->len;
  return b->p;
}

static peer *peer_by_id(drpc_agent *a, int64_t id) {
  size_t lo = 0, hi = a->npeers;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (a->peers[mid]->info.id < id)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < a->npeers && a->peers[lo]->info.id == id ? a->peers[lo] : NULL;
}

static peer *peer_by_name(drpc_agent *a, const char *name) {
  size_t lo = 0, hi = a->by_name ? a->npeers : 0;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(a->by_name[mid]->info.name, name);
    if (c == 0)
      return a->by_name[mid];
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return NULL;
}

static int cmp_peer_name(const void *x, const void *y) {
  const peer *p = *(peer *const *)x, *q = *(peer *const *)y;
  int c = strcmp(p->info.name, q->info.name);
  return c ? c : (p->info.id > q->info.id) - (p->info.id < q->info.id);
}

/* ---- the member table --------------------------------------------------- */

static void drop_queue(peer *p);

static bool dynamic_group(const drpc_agent *a) {
  return a->world_size <= 0;
}

/* Other threads read the table of a dynamic group under mlock; the loop,
 * its only writer, reads it without. */
static void members_lock(drpc_agent *a) {
  if (dynamic_group(a))
    a->env.ops->sync_lock(a->env.ctx, &a->mlock);
}

static void members_unlock(drpc_agent *a) {
  if (dynamic_group(a))
    a->env.ops->sync_unlock(a->env.ctx, &a->mlock);
}

static void peer_free(peer *p) {
  if (!p)
    return;
  free(p->addr);
  free(p->devinfo);
  drop_queue(p);
  free(p);
}

/* A member from "<address>[\n<device information>]" (see
 * drpc_agent_publish_devices). */
static peer *peer_new(const drpc_worker_info *wi, const char *addr,
                      uint64_t epoch) {
  peer *p = calloc(1, sizeof *p);
  if (!p)
    return NULL;
  p->info = *wi;
  p->epoch = epoch;
  const char *nl = addr ? strchr(addr, '\n') : NULL;
  p->addr = nl ? strndup(addr, (size_t)(nl - addr)) : strdup(addr ? addr : "");
  if (nl && !(p->devinfo = strdup(nl + 1)))
    p->addr = (free(p->addr), NULL);
  if (!p->addr) {
    free(p);
    return NULL;
  }
  return p;
}

static int grow_peers(drpc_agent *a, drpc_error *err) {
  if (a->npeers < a->peers_cap)
    return 0;
  size_t cap = a->peers_cap ? a->peers_cap * 2 : 8;
  peer **np = realloc(a->peers, cap * sizeof *np);
  if (np)
    a->peers = np;
  peer **nb = np ? realloc(a->by_name, cap * sizeof *nb) : NULL;
  if (nb)
    a->by_name = nb;
  if (!np || !nb)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  a->peers_cap = cap;
  return 0;
}

/* Publishes a fresh snapshot for drpc_agent_workers; the previous one
 * joins the last MAX_OLD_INFOS (under mlock). */
static int infos_refresh(drpc_agent *a) {
  drpc_worker_info *n = malloc((a->npeers ? a->npeers : 1) * sizeof *n);
  if (!n)
    return DRPC_ENOMEM;
  for (size_t i = 0; i < a->npeers; i++)
    n[i] = a->peers[i]->info;
  if (a->infos) {
    free(a->old_infos[a->old_next]);
    a->old_infos[a->old_next] = a->infos;
    a->old_next = (a->old_next + 1) % MAX_OLD_INFOS;
  }
  a->infos = n;
  return 0;
}

/* Static start: members in any order; peers_finish sorts them. */
static int peer_append(drpc_agent *a, const drpc_worker_info *wi,
                       const char *addr, uint64_t epoch, drpc_error *err) {
  int rc = grow_peers(a, err);
  if (rc)
    return rc;
  peer *p = peer_new(wi, addr, epoch);
  if (!p)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  a->peers[a->npeers++] = p;
  return 0;
}

static int cmp_peer(const void *x, const void *y) {
  const peer *p = *(peer *const *)x, *q = *(peer *const *)y;
  return (p->info.id > q->info.id) - (p->info.id < q->info.id);
}

static int peers_finish(drpc_agent *a, drpc_error *err) {
  size_t n = a->npeers;
  qsort(a->peers, n, sizeof *a->peers, cmp_peer);
  /* Sorted by name, duplicates sit side by side: one pass finds them (a
   * pairwise check would cost n^2 comparisons per worker). */
  for (size_t r = 0; r < n; r++)
    a->by_name[r] = a->peers[r];
  qsort(a->by_name, n, sizeof *a->by_name, cmp_peer_name);
  for (size_t r = 1; r < n; r++)
    if (strcmp(a->by_name[r - 1]->info.name, a->by_name[r]->info.name) == 0)
      return drpc_error_set(err, DRPC_EEXISTS,
                            "RPC worker name %s is not unique. Workers %d "
                            "and %d share the same name.",
                            a->by_name[r]->info.name,
                            a->by_name[r - 1]->info.id, a->by_name[r]->info.id);
  if (infos_refresh(a))
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  return 0;
}

/* Dynamic groups: adds a member (replacing one with its id). On the loop,
 * or before the agent runs. */
int drpc_agent_peer_put(drpc_agent *a, const drpc_worker_info *wi,
                        const char *addr, uint64_t epoch, drpc_error *err) {
  peer *p = peer_new(wi, addr, epoch);
  if (!p)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  if (peer_by_id(a, wi->id))
    drpc_agent_peer_del(a, wi->id, epoch, "replaced by a new member");
  members_lock(a);
  int rc = grow_peers(a, err);
  if (rc) {
    members_unlock(a);
    peer_free(p);
    return rc;
  }
  size_t i = 0, j = 0;
  while (i < a->npeers && a->peers[i]->info.id < wi->id)
    i++;
  while (j < a->npeers && cmp_peer_name(&a->by_name[j], &p) < 0)
    j++;
  memmove(a->peers + i + 1, a->peers + i, (a->npeers - i) * sizeof *a->peers);
  memmove(a->by_name + j + 1, a->by_name + j,
          (a->npeers - j) * sizeof *a->by_name);
  a->peers[i] = p;
  a->by_name[j] = p;
  a->npeers++;
  rc = infos_refresh(a);
  members_unlock(a);
  if (rc)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  return 0;
}

static void remember_departed(drpc_agent *a, const drpc_worker_info *wi,
                              uint64_t epoch, const char *why) {
  if (!a->departed &&
      !(a->departed = calloc(MAX_DEPARTED, sizeof *a->departed)))
    return; /* errors then just say "could not find" */
  departed_info *d = &a->departed[a->departed_next];
  a->departed_next = (a->departed_next + 1) % MAX_DEPARTED;
  d->info = *wi;
  d->epoch = epoch ? epoch : 1;
  snprintf(d->why, sizeof d->why, "%s", why ? why : "left");
}

/* Under mlock: the last departure of the named worker (or of id when name
 * is NULL). */
static const departed_info *find_departed(drpc_agent *a, const char *name,
                                          int64_t id) {
  const departed_info *best = NULL;
  for (size_t i = 0; a->departed && i < MAX_DEPARTED; i++) {
    const departed_info *d = &a->departed[i];
    if (!d->epoch ||
        (name ? strcmp(d->info.name, name) != 0 : d->info.id != id))
      continue;
    if (!best || d->epoch > best->epoch)
      best = d;
  }
  return best;
}

static void fail_calls_to(drpc_agent *a, int dst, int code, const char *msg);
static int wait_idle(drpc_agent *a, uint64_t deadline, drpc_error *err);

static double ms_to_s(uint64_t ms) {
  return (double)ms / 1000.0;
}

/* Timeouts at or above this many ms (about 292 years, or infinite) never
 * expire, so now + timeout cannot overflow the ns clock. */
#define MAX_TIMEOUT_MS (UINT64_MAX / 2 / 1000000u)

/* A checked, non-negative timeout in ms; 0 means never. A positive timeout
 * under 1 ms still expires (after 1 ms). */
static uint64_t timeout_ms_of(double timeout_s) {
  double ms = timeout_s * 1000.0 + 0.5;
  if (ms >= (double)MAX_TIMEOUT_MS)
    return 0;
  uint64_t r = (uint64_t)ms;
  return r == 0 && timeout_s > 0 ? 1 : r;
}

static void rearm(drpc_agent *a);

drpc_timer *drpc_agent_timer_add(drpc_agent *a, uint64_t deadline_ns,
                                 void (*fn)(void *arg, bool fired), void *arg) {
  drpc_timer *t = calloc(1, sizeof *t);
  if (!t)
    return NULL;
  t->hn.deadline_ns = deadline_ns ? deadline_ns : 1;
  t->hn.tie = ++a->timer_seq;
  t->fn = fn;
  t->arg = arg;
  if (drpc_heap_push(&a->timers, &t->hn)) {
    free(t);
    return NULL;
  }
  rearm(a);
  return t;
}

/* Hands every timer back unfired (the agent stopped). */
static void drop_timers(drpc_agent *a) {
  drpc_heap_node *n;
  while ((n = drpc_heap_top(&a->timers))) {
    drpc_timer *t = (drpc_timer *)n;
    drpc_heap_remove(&a->timers, n);
    t->fn(t->arg, false);
    free(t);
  }
}

static void rearm(drpc_agent *a) {
  drpc_heap_node *c = drpc_heap_top(&a->calls_heap);
  drpc_heap_node *t = drpc_heap_top(&a->timers);
  uint64_t d = c ? c->deadline_ns : 0;
  if (t && (!d || t->deadline_ns < d))
    d = t->deadline_ns;
  if (d != a->armed_deadline && a->env.ops->timer_arm) {
    a->armed_deadline = d;
    rec(a, DRPC_EV_OUT_TIMER, -1, 0, d);
    a->env.ops->timer_arm(a->env.ctx, d);
  }
}

/* ---- completing client calls ------------------------------------------ */

static void notify_idle(drpc_agent *a) {
  a->env.ops->sync_lock(a->env.ctx, &a->sync);
  a->env.ops->sync_broadcast(a->env.ctx, &a->sync);
  a->env.ops->sync_unlock(a->env.ctx, &a->sync);
}

/* Removes the call from every table; the caller completes its future. */
/* The call stops counting as active before its future completes, so code
 * that sees the future done also sees the metrics say so. */
static void call_detach(drpc_agent *a, pcall *c) {
  drpc_map_remove(&a->calls, c->id);
  drpc_heap_remove(&a->calls_heap, &c->hn);
  atomic_fetch_sub(&a->client_active, 1);
}

static void call_finish(drpc_agent *a, pcall *c, int code) {
  rec(a, DRPC_EV_OUT_FUTURE, c->dst, c->id, (uint64_t)(int64_t)code);
  rec(a, DRPC_EV_RPC_END, c->dst, c->id, (uint64_t)(int64_t)code);
  drpc_future_decref(c->fut);
  free(c);
  if (atomic_load(&a->client_active) == 0)
    notify_idle(a);
}

static void call_fail(drpc_agent *a, pcall *c, int code, const char *msg) {
  drpc_error e = {code, (char *)msg};
  call_detach(a, c);
  drpc_future_set_error(c->fut, &e);
  call_finish(a, c, code);
}

/* Fails every pending call to dst (all when dst < 0), lowest id first. */
static void fail_calls_to(drpc_agent *a, int dst, int code, const char *msg) {
  size_t n;
  uint64_t *ids = drpc_map_sorted_keys(&a->calls, &n);
  if (!ids)
    return;
  for (size_t i = 0; i < n; i++) {
    pcall *c = drpc_map_get(&a->calls, ids[i]);
    if (c && (dst < 0 || c->dst == dst))
      call_fail(a, c, code, msg);
  }
  free(ids);
  rearm(a);
}

/* ---- connections ------------------------------------------------------ */

static void close_conn(drpc_agent *a, uint64_t conn, const char *why);

/* A frame's staging copies (device -> host) are waited for on the loop,
 * here or by the backend's writer, never by the thread that made the
 * call. A failed copy (a broken device) fails the connection, so that the
 * calls on it fail too rather than wait for an answer to a frame never
 * sent. */
static bool frame_ready(drpc_agent *a, uint64_t conn, drpc_outframe *f) {
  drpc_error err = DRPC_ERROR_INIT;
  /* A backend that writes frames as their chunks are done (net/) takes
   * them as they are, unless the recorder reads the bytes now. */
  bool now = conn == SELF_CONN || !a->env.ops->sends_staged || a->rec_full;
  if (!f->pending || !now || drpc_outframe_wait(f, &err) == 0)
    return true;
  char why[300];
  snprintf(why, sizeof why, "a device copy for a frame failed: %s",
           drpc_error_message(&err));
  logf_(a, DRPC_LOG_ERROR, "%s", why);
  drpc_error_clear(&err);
  drpc_outframe_free(f);
  if (conn != SELF_CONN)
    close_conn(a, conn, why);
  return false;
}

static void send_frame(drpc_agent *a, uint64_t conn, drpc_outframe *f) {
  if (!frame_ready(a, conn, f))
    return;
  atomic_fetch_add_explicit(&a->frames_out, 1, memory_order_relaxed);
  if (a->env.ops->record) {
    conn_entry *ce = drpc_map_get(&a->conns, conn);
    uint8_t type = f->head_len > 5 ? f->head[5] : 0;
    size_t n = 0;
    const uint8_t *flat = a->rec_full ? rec_frame_bytes(a, f, &n) : NULL;
    drpc_agent_record(a, DRPC_EV_OUT_SEND, ce ? ce->peer : -1, conn, type, flat,
                      flat ? n : (size_t)f->total_len, NULL);
  }
  a->env.ops->send(a->env.ctx, conn, f);
}

static int send_hello(drpc_agent *a, uint64_t conn) {
  drpc_value *body = drpc_value_list_of(3, drpc_value_int(DRPC_WIRE_VERSION),
                                        drpc_value_int(a->self.id),
                                        drpc_value_str(a->self.name));
  drpc_outframe *f = NULL;
  int rc = body
               ? drpc_wire_encode(DRPC_MSG_HELLO, 0, 0, body, &a->lim, &f, NULL)
               : DRPC_ENOMEM;
  drpc_value_free(body);
  if (rc == 0)
    send_frame(a, conn, f);
  return rc;
}

static void drop_queue(peer *p) {
  while (p->q_head) {
    drpc_outframe *f = p->q_head;
    p->q_head = f->next;
    drpc_outframe_free(f);
  }
  p->q_tail = NULL;
  p->q_len = 0;
}

/* Sends f to p, connecting first when needed. Returns non-zero (and frees
 * f) when a connection cannot even be started. */
static int send_to_peer(drpc_agent *a, peer *p, drpc_outframe *f,
                        drpc_error *err) {
  if (p->state == PEER_OPEN) {
    send_frame(a, p->conn, f);
    return 0;
  }
  if (p->q_len >= MAX_CONNECT_QUEUE) {
    drpc_outframe_free(f);
    return drpc_error_set(err, DRPC_ETOOBIG,
                          "too many frames queued for %s while connecting",
                          p->info.name);
  }
  f->next = NULL;
  if (p->q_tail)
    p->q_tail->next = f;
  else
    p->q_head = f;
  p->q_tail = f;
  p->q_len++;
  if (p->state == PEER_CONNECTING)
    return 0;
  uint64_t conn = 0;
  int rc = a->env.ops->connect(a->env.ctx, p->info.id, p->addr, &conn);
  if (rc) {
    drop_queue(p);
    return drpc_error_set(err, DRPC_ECONN,
                          "could not connect to %s (id %d) at %s: %s",
                          p->info.name, p->info.id, p->addr, drpc_strerror(rc));
  }
  if (drpc_map_get(&a->conns, conn)) {
    /* A backend never reuses a live id (a damaged recording may). */
    drop_queue(p);
    return drpc_error_set(err, DRPC_EPROTO,
                          "the backend gave connection id %llu twice",
                          (unsigned long long)conn);
  }
  conn_entry *ce = calloc(1, sizeof *ce);
  if (!ce || drpc_map_put(&a->conns, conn, ce)) {
    free(ce);
    a->env.ops->close(a->env.ctx, conn);
    drop_queue(p);
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  }
  ce->conn = conn;
  ce->peer = p->info.id;
  ce->outgoing = true;
  ce->hello = true;
  p->state = PEER_CONNECTING;
  p->conn = conn;
  drpc_agent_record(a, DRPC_EV_OUT_CONNECT, p->info.id, conn, 0, p->addr,
                    strlen(p->addr), NULL);
  return 0;
}

void drpc_agent_on_conn_open(drpc_agent *a, uint64_t conn) {
  drpc_agent_input_begin(a);
  conn_entry *ce = drpc_map_get(&a->conns, conn);
  rec(a, DRPC_EV_IN_CONN_OPEN, ce ? ce->peer : -1, conn, 1);
  if (!ce || !ce->outgoing)
    return;
  peer *p = peer_by_id(a, ce->peer);
  if (!p || p->conn != conn)
    return;
  p->state = PEER_OPEN;
  send_hello(a, conn);
  while (p->q_head) {
    drpc_outframe *f = p->q_head;
    p->q_head = f->next;
    f->next = NULL;
    send_frame(a, conn, f);
  }
  p->q_tail = NULL;
  p->q_len = 0;
}

void drpc_agent_on_conn_accept(drpc_agent *a, uint64_t conn) {
  drpc_agent_input_begin(a);
  rec(a, DRPC_EV_IN_CONN_OPEN, -1, conn, 0);
  if (drpc_map_get(&a->conns, conn)) {
    /* A backend never reuses a live id (a damaged recording may). */
    logf_(a, DRPC_LOG_ERROR, "connection %llu accepted twice; ignored",
          (unsigned long long)conn);
    return;
  }
  conn_entry *ce = calloc(1, sizeof *ce);
  if (!ce || drpc_map_put(&a->conns, conn, ce)) {
    free(ce);
    a->env.ops->close(a->env.ctx, conn);
    return;
  }
  ce->conn = conn;
  ce->peer = -1;
}

/* A test-only fault switch, for the simulator's self-test alone
 * (tests/test_sim_planted.c): when non-zero, a lost connection does not fail
 * the calls pending on it, so they hang. The simulator's "every future
 * completes" checker must report that. Nothing else may set it. */
int drpc_test_fault_skip_fail_on_reset = 0;
/* The second one (tests/test_sim_planted.c): when non-zero, a CALL without
 * tensors or RRefs is handed to the executor twice, as a core that
 * mistook a retry for a new request would. The simulator's "every request
 * runs at most once" checker must report that. Nothing else may set it. */
int drpc_test_fault_run_twice = 0;

static void conn_closed(drpc_agent *a, uint64_t conn, const drpc_error *reason);

void drpc_agent_on_conn_closed(drpc_agent *a, uint64_t conn,
                               const drpc_error *reason) {
  drpc_agent_input_begin(a);
  const char *why = reason ? drpc_error_message(reason) : NULL;
  conn_entry *ce0 = drpc_map_get(&a->conns, conn);
  drpc_agent_record(a, DRPC_EV_IN_CONN_CLOSED, ce0 ? ce0->peer : -1, conn,
                    (uint64_t)(int64_t)(reason ? reason->code : 0), why,
                    why && a->rec_full ? strlen(why) : 0, NULL);
  conn_closed(a, conn, reason);
}

/* True when a connection to or from worker id is still open. */
static bool peer_connected(drpc_agent *a, int16_t id) {
  size_t n = 0;
  uint64_t *keys = drpc_map_sorted_keys(&a->conns, &n);
  bool found = false;
  for (size_t i = 0; keys && i < n && !found; i++) {
    const conn_entry *ce = drpc_map_get(&a->conns, keys[i]);
    found = ce && ce->peer == id;
  }
  free(keys);
  return found || !keys; /* no memory to look: assume it is */
}

static void conn_closed(drpc_agent *a, uint64_t conn,
                        const drpc_error *reason) {
  conn_entry *ce = drpc_map_remove(&a->conns, conn);
  if (!ce)
    return;
  /* Device memory lent to the peer is taken back once nothing connects
   * the two any more: a frame that went out on another connection may
   * still be read (and released) through it. */
  if (ce->peer >= 0 && !peer_connected(a, ce->peer))
    drpc_dev_peer_gone(a, ce->peer);
  if (ce->outgoing) {
    peer *p = peer_by_id(a, ce->peer);
    if (p && p->conn == conn) {
      bool was_open = p->state == PEER_OPEN;
      p->state = PEER_IDLE;
      p->conn = 0;
      drop_queue(p);
      char msg[512];
      const char *why = reason ? drpc_error_message(reason) : "closed";
      if (was_open)
        snprintf(msg, sizeof msg, "connection to %s (id %d) lost: %s",
                 p->info.name, p->info.id, why);
      else
        snprintf(msg, sizeof msg, "could not connect to %s (id %d) at %s: %s",
                 p->info.name, p->info.id, p->addr, why);
      if (atomic_load(&a->state) == ST_RUNNING) {
        atomic_fetch_add(&a->conn_failures, 1);
        if (!ce->peer_shutdown)
          logf_(a, DRPC_LOG_WARN, "%s", msg);
      }
      if (!drpc_test_fault_skip_fail_on_reset)
        fail_calls_to(a, p->info.id, DRPC_ECONN, msg);
      if (dynamic_group(a) && !ce->peer_shutdown &&
          atomic_load(&a->state) == ST_RUNNING)
        drpc_members_suspect(a, ce->peer, why);
    }
  } else if (reason && reason->code && !ce->peer_shutdown &&
             atomic_load(&a->state) == ST_RUNNING && ce->peer >= 0) {
    logf_(a, DRPC_LOG_DEBUG, "incoming connection from worker %d closed: %s",
          ce->peer, drpc_error_message(reason));
  }
  free(ce);
}

void drpc_agent_peer_del(drpc_agent *a, int16_t id, uint64_t epoch,
                         const char *why) {
  peer *p = id == a->self.id ? NULL : peer_by_id(a, id);
  if (!p)
    return;
  char msg[320];
  snprintf(msg, sizeof msg, "worker %s (id %d) left the group: %s",
           p->info.name, id, why ? why : "left");
  logf_(a, DRPC_LOG_INFO, "%s", msg);
  /* The connection to it goes; those it opened stay until it closes them
   * (its LEAVE is answered on one). */
  if (p->conn) {
    uint64_t conn = p->conn;
    rec(a, DRPC_EV_OUT_CLOSE, id, conn, 0);
    a->env.ops->close(a->env.ctx, conn);
    free(drpc_map_remove(&a->conns, conn));
  }
  p->state = PEER_IDLE;
  p->conn = 0;
  drop_queue(p);
  fail_calls_to(a, id, DRPC_ECONN, msg);
  drpc_dev_peer_gone(a, id);
  drpc_dev_peer_leave(a, id);
  members_lock(a);
  size_t i = 0, j = 0;
  while (i < a->npeers && a->peers[i] != p)
    i++;
  while (j < a->npeers && a->by_name[j] != p)
    j++;
  if (i < a->npeers && j < a->npeers) {
    memmove(a->peers + i, a->peers + i + 1,
            (a->npeers - i - 1) * sizeof *a->peers);
    memmove(a->by_name + j, a->by_name + j + 1,
            (a->npeers - j - 1) * sizeof *a->by_name);
    a->npeers--;
  }
  remember_departed(a, &p->info, epoch, why);
  int rc = infos_refresh(a);
  members_unlock(a);
  if (rc)
    logf_(a, DRPC_LOG_ERROR, "out of memory: drpc_agent_workers still lists %s",
          p->info.name);
  peer_free(p);
}

static void close_conn(drpc_agent *a, uint64_t conn, const char *why) {
  drpc_error e = {DRPC_EPROTO, (char *)why};
  logf_(a, DRPC_LOG_ERROR, "closing connection %llu: %s",
        (unsigned long long)conn, why);
  conn_entry *ce = drpc_map_get(&a->conns, conn);
  rec(a, DRPC_EV_OUT_CLOSE, ce ? ce->peer : -1, conn, 0);
  a->env.ops->close(a->env.ctx, conn);
  conn_closed(a, conn, &e);
}

/* ---- server side: running calls ---------------------------------------- */

struct drpc_call {
  drpc_job job; /* first: the executor hands back this pointer */
  drpc_agent *agent;
  uint64_t conn;
  uint64_t req_id;
  drpc_worker_info caller;
  int kind;
  const char *name;
  const drpc_value *args, *kwargs;
  drpc_msg msg; /* owns the body the fields above point into */
  void *user;
  bool async;
  /* Waits for the RRefs in the arguments before the job runs. */
  drpc_rref_waiter waiter;
  drpc_rref *remote_owner; /* REMOTE_CALL: the owner RRef of the result */
  /* Proxies: the argument list with the owner's value (borrowed) first. */
  drpc_value shallow;
  drpc_value **shallow_items;
  drpc_error fail; /* set: answer with this error instead of running */
  /* PROFILER: the request's profiling (NULL: none); arrival time for the
   * GIL-wait metric (0: off). */
  drpc_prof_req *prof;
  uint64_t arrive_ns;
  /* Where the request's device tensors are ready (NULL: none): the
   * function runs on streams that wait for it. */
  drpc_devready *ready;
};

drpc_agent *drpc_call_agent(drpc_call *call) {
  return call->agent;
}
const drpc_worker_info *drpc_call_caller(drpc_call *call) {
  return &call->caller;
}
void *drpc_call_user(drpc_call *call) {
  return call->user;
}
const char *drpc_call_name(drpc_call *call) {
  return call->name;
}

typedef struct send_cmd {
  drpc_cmd cmd;
  drpc_agent *agent;
  uint64_t conn, req_id;
  int16_t caller;
  bool async;
  drpc_outframe *frame;
  drpc_fork_list *forks; /* RRefs forked into the frame */
} send_cmd;

static void handle_message(drpc_agent *a, uint64_t conn, drpc_msg *m);
static int16_t conn_peer(drpc_agent *a, uint64_t conn);

/* Delivers a frame addressed to this agent itself (calls to self). */
static void deliver_local(drpc_agent *a, drpc_outframe *f) {
  if (!frame_ready(a, SELF_CONN, f))
    return;
  size_t len = 0;
  uint8_t *buf = drpc_outframe_flatten(f, &len);
  drpc_outframe_free(f);
  if (!buf) {
    logf_(a, DRPC_LOG_ERROR, "out of memory delivering a call to self");
    return;
  }
  drpc_msg m = {0};
  drpc_error err = DRPC_ERROR_INIT;
  if (drpc_wire_decode(buf, len, &a->lim, &m, &err) == 0)
    handle_message(a, SELF_CONN, &m);
  else
    logf_(a, DRPC_LOG_ERROR, "self-delivery failed: %s",
          drpc_error_message(&err));
  drpc_msg_clear(&m);
  drpc_error_clear(&err);
  free(buf);
}

static void send_cmd_apply(drpc_cmd *cmd) {
  send_cmd *s = (send_cmd *)cmd;
  drpc_agent *a = s->agent;
  drpc_agent_input_begin(a);
  if (a->env.ops->record) {
    drpc_rbuf *b = rec_buf(a);
    if (a->rec_full) {
      drpc_rbuf_u64(b, s->conn);
      drpc_rbuf_u64(b, s->req_id);
      drpc_rbuf_u64(b, s->async);
      drpc_rbuf_frame(b, s->frame);
      drpc_fork_list_write(s->forks, b);
    }
    rec_cmd(a, DRPC_EV_IN_JOB_DONE, DRPC_JOB_SEND, s->caller, s->req_id, b);
  }
  if (atomic_load(&a->state) == ST_STOPPED) {
    drpc_fork_list_drop(s->forks);
    drpc_outframe_free(s->frame);
    free(s);
    return;
  }
  drpc_fork_list_apply(a, s->forks);
  if (s->conn == SELF_CONN) {
    deliver_local(a, s->frame);
  } else {
    send_frame(a, s->conn, s->frame);
  }
  free(s);
}

/* "Error on Node <id>: <message>" as an ERROR body. */
static drpc_value *error_body(drpc_agent *a, const drpc_error *err) {
  const char *m = drpc_error_message(err);
  size_t n = strlen(m) + 64;
  char *text = malloc(n);
  if (text)
    snprintf(text, n, "Error on Node %d: %s", a->self.id, m);
  drpc_value *body =
      drpc_value_list_of(2, drpc_value_int(err->code ? err->code : DRPC_EUSER),
                         drpc_value_str(text ? text : m));
  free(text);
  return body;
}

/* The result of a REMOTE_CALL, handed to the loop: the owner RRef takes
 * the value (or the error), then REMOTE_RET goes back. */
typedef struct remote_done_cmd {
  drpc_cmd cmd;
  drpc_agent *agent;
  uint64_t conn, req_id;
  int16_t caller;
  bool async;
  drpc_rref *owner;
  drpc_value *result;
  drpc_error err;
} remote_done_cmd;

static void remote_done_apply(drpc_cmd *cmd) {
  remote_done_cmd *r = (remote_done_cmd *)cmd;
  drpc_agent *a = r->agent;
  drpc_agent_input_begin(a);
  if (a->env.ops->record) {
    drpc_rbuf *b = rec_buf(a);
    if (a->rec_full) {
      drpc_rbuf_u64(b, r->conn);
      drpc_rbuf_u64(b, r->req_id);
      drpc_rbuf_u64(b, r->async);
      drpc_rref_write_ids(r->owner, b);
      drpc_rbuf_u64(b, (uint64_t)(int64_t)r->err.code);
      const char *m = r->err.code ? drpc_error_message(&r->err) : "";
      drpc_rbuf_blob(b, m, strlen(m));
      drpc_outframe *vf = NULL;
      if (!r->err.code && r->result &&
          drpc_wire_encode(DRPC_MSG_RESPONSE, 0, 0, r->result, &a->lim, &vf,
                           NULL) != 0)
        b->failed = true;
      drpc_rbuf_frame(b, vf);
      drpc_outframe_free(vf);
    }
    rec_cmd(a, DRPC_EV_IN_JOB_DONE, DRPC_JOB_REMOTE_DONE, r->caller, r->req_id,
            b);
  }
  /* REMOTE_RET first: a fetch waiting for this value is answered by the
   * settle, and its caller should see the RRef confirmed before that. */
  if (atomic_load(&a->state) != ST_STOPPED)
    drpc_agent_reply(a, r->conn, DRPC_MSG_REMOTE_RET, r->req_id, NULL);
  drpc_rref_owner_settle(r->owner, r->result, &r->err);
  drpc_rref_decref(r->owner);
  drpc_error_clear(&r->err);
  free(r);
}

static void call_free(drpc_call *call) {
  drpc_prof_req_free(call->prof); /* PROFILER */
  drpc_devready_free(call->ready);
  drpc_rref_decref(call->remote_owner);
  free(call->shallow_items);
  drpc_error_clear(&call->fail);
  drpc_msg_clear(&call->msg);
  free(call);
}

/* Encodes the result (or error) of a served call and posts it to the loop;
 * takes result. Runs on whichever thread finished the call. */
static void call_respond(drpc_call *call, drpc_value *result,
                         const drpc_error *err) {
  drpc_agent *a = call->agent;
  drpc_outframe *f = NULL;
  drpc_fork_list *forks = NULL;
  drpc_error eerr = DRPC_ERROR_INIT;
  atomic_fetch_sub(&a->server_active, 1);
  if (call->async)
    atomic_fetch_sub(&a->server_active_async, 1);
  /* PROFILER: close the request's events; a flagged request's result goes
   * back as [value, id, events] under DRPC_FLAG_PROFILE. */
  drpc_value *prof_body = NULL;
  if (call->prof) {
    prof_body = drpc_prof_serve_end(
        call->prof, result, (!err || err->code == 0) && !call->remote_owner);
    call->prof = NULL;
  }
  if (call->remote_owner) {
    remote_done_cmd *r = calloc(1, sizeof *r);
    if (!r) {
      drpc_value_free(result);
      call_free(call);
      return;
    }
    r->cmd.apply = remote_done_apply;
    r->agent = a;
    r->conn = call->conn;
    r->req_id = call->req_id;
    r->caller = call->caller.id;
    r->async = call->async;
    r->owner = call->remote_owner;
    call->remote_owner = NULL;
    if (err && err->code) {
      /* Stored as the caller of to_here will see it. */
      drpc_value *eb = error_body(a, err);
      const drpc_value *txt = eb ? drpc_list_at(eb, 1) : NULL;
      drpc_error_set(&r->err, err->code, "%s",
                     txt ? txt->u.s.data : drpc_error_message(err));
      drpc_value_free(eb);
      drpc_value_free(result);
    } else {
      r->result = result;
    }
    call_free(call);
    a->env.ops->post(a->env.ctx, &r->cmd);
    return;
  }
  int rc = 0;
  if (!err || err->code == 0) {
    rc = drpc_rref_encode(a, DRPC_MSG_RESPONSE, call->req_id,
                          prof_body ? prof_body : result, call->caller.id, &f,
                          &forks, &eerr);
    if (rc)
      drpc_error_prefix(&eerr, "could not send the result of %s", call->name);
    else if (prof_body) /* PROFILER: flags are bytes 6-7, little-endian */
      f->head[6] |= (uint8_t)DRPC_FLAG_PROFILE;
    err = &eerr;
  }
  if (prof_body)
    drpc_value_free(prof_body); /* holds result */
  else
    drpc_value_free(result);
  if (!f) {
    drpc_value *body = error_body(a, err);
    if (body)
      drpc_wire_encode(DRPC_MSG_ERROR, 0, call->req_id, body, &a->lim, &f,
                       NULL);
    drpc_value_free(body);
  }
  drpc_error_clear(&eerr);
  if (f) {
    send_cmd *s = malloc(sizeof *s);
    if (s) {
      s->cmd.apply = send_cmd_apply;
      s->cmd.next = NULL;
      s->agent = a;
      s->conn = call->conn;
      s->req_id = call->req_id;
      s->caller = call->caller.id;
      s->async = call->async;
      s->frame = f;
      s->forks = forks;
      a->env.ops->post(a->env.ctx, &s->cmd);
    } else {
      drpc_fork_list_drop(forks);
      drpc_outframe_free(f);
    }
  }
  call_free(call);
}

static void async_done(drpc_future *f, void *arg) {
  drpc_call *call = arg;
  drpc_error err = DRPC_ERROR_INIT;
  if (drpc_future_error(f, &err) == 0)
    call_respond(call, drpc_future_take_value(f), NULL);
  else
    call_respond(call, NULL, &err);
  drpc_error_clear(&err);
  drpc_future_decref(f);
}

static void call_run_body(drpc_job *job);

/* PROFILER: the run between the profiling hooks (the call is freed
 * inside). */
static void call_run(drpc_job *job) {
  drpc_call *call = (drpc_call *)job;
  /* The function (and the encoding of its result) runs on the streams the
   * request's tensors arrived on; an RRef owner's value is read later from
   * any thread, so the default streams wait for its work too. */
  drpc_devready *ready = call->ready;
  call->ready = NULL;
  bool remote = call->remote_owner != NULL;
  drpc_stream *streams[DRPC_DEVICE_MAX];
  drpc_error derr = DRPC_ERROR_INIT;
  if (ready && drpc_devready_enter_own(ready, streams, &derr) != 0) {
    if (!call->fail.code)
      drpc_error_move(&call->fail, &derr);
    drpc_devready_free(ready);
    ready = NULL;
  }
  drpc_error_clear(&derr);
  void *saved = drpc_prof_run_enter(call->agent, call->prof, call->arrive_ns);
  call_run_body(job);
  drpc_prof_run_leave(saved);
  if (ready) {
    drpc_devready_leave(ready, streams, remote);
    drpc_devready_free(ready);
  }
}

static void call_run_body(drpc_job *job) {
  drpc_call *call = (drpc_call *)job;
  drpc_agent *a = call->agent;
  drpc_error err = DRPC_ERROR_INIT;
  drpc_value *result = NULL;
  if (call->fail.code) {
    call_respond(call, NULL, &call->fail);
    return;
  }
  if (call->kind == DRPC_KIND_RREF_FUNCTION ||
      call->kind == DRPC_KIND_RREF_BUILTIN) {
    /* A proxy: the owner's value takes the RRef's place (borrowed). */
    drpc_rref *o = drpc_value_get_rref(drpc_list_at(call->args, 0));
    const drpc_value *v =
        o && drpc_rref_is_owner(o) ? drpc_rref_peek_value(o, &err) : NULL;
    size_t n = drpc_value_len(call->args);
    if (!o || !drpc_rref_is_owner(o)) {
      drpc_error_set(&err, DRPC_EINVAL,
                     "an RRef proxy call must run on the RRef's owner");
    } else if (v && strcmp(call->name, DRPC_RREF_TYPE_FN) == 0) {
      result = drpc_value_str(drpc_value_kind_name(v->kind));
      call_respond(call, result, NULL);
      return;
    } else if (v && !(call->shallow_items = malloc(n * sizeof(drpc_value *)))) {
      drpc_error_set(&err, DRPC_ENOMEM, "out of memory");
    } else if (v) {
      drpc_value **items = call->shallow_items;
      items[0] = (drpc_value *)v;
      for (size_t i = 1; i < n; i++)
        items[i] = call->args->u.c.items[i];
      call->shallow.kind = DRPC_VAL_LIST;
      call->shallow.u.c.items = items;
      call->shallow.u.c.len = call->shallow.u.c.cap = n;
      call->args = &call->shallow;
      call->kind =
          call->kind == DRPC_KIND_RREF_BUILTIN ? DRPC_BUILTIN : DRPC_FUNCTION;
    }
    if (err.code) {
      call_respond(call, NULL, &err);
      drpc_error_clear(&err);
      return;
    }
  }
  if (call->kind == DRPC_BUILTIN) {
    result = drpc_op_run(call->name, call->args, call->kwargs, &err);
  } else {
    const drpc_registry_entry *e =
        drpc_registry_lookup(a->registry, call->name);
    if (!e) {
      drpc_error_set(&err, DRPC_ENOTFOUND,
                     "function '%s' is not registered on worker %s", call->name,
                     a->self.name);
    } else if (e->fn) {
      call->user = e->user;
      result = e->fn(call, call->args, call->kwargs, &err);
    } else {
      call->user = e->user;
      drpc_future *f = e->afn(call, call->args, call->kwargs, &err);
      if (f) {
        call->async = true;
        atomic_fetch_add(&a->server_active_async, 1);
        drpc_error_clear(&err);
        if (drpc_future_add_done_callback(f, async_done, call) == 0)
          return;
        /* No memory to wait for the future: answer now, with an error. */
        drpc_future_decref(f);
        drpc_error_set(&err, DRPC_ENOMEM,
                       "out of memory waiting for async function '%s'",
                       call->name);
      }
      if (err.code == 0)
        drpc_error_set(&err, DRPC_EUSER,
                       "async function '%s' must return a future, but "
                       "returned NULL without an error",
                       call->name);
    }
  }
  if (err.code) {
    drpc_value_free(result);
    result = NULL;
  }
  call_respond(call, result, &err);
  drpc_error_clear(&err);
}

static void reply_error(drpc_agent *a, uint64_t conn, uint64_t id, int code,
                        const char *msg) {
  char text[600];
  snprintf(text, sizeof text, "Error on Node %d: %s", a->self.id, msg);
  drpc_value *body =
      drpc_value_list_of(2, drpc_value_int(code), drpc_value_str(text));
  drpc_outframe *f = NULL;
  if (body &&
      drpc_wire_encode(DRPC_MSG_ERROR, 0, id, body, &a->lim, &f, NULL) == 0) {
    if (conn == SELF_CONN)
      deliver_local(a, f);
    else
      send_frame(a, conn, f);
  }
  drpc_value_free(body);
}

/* The call's RRefs are ready: run it (or refuse, when the agent stopped
 * while it waited). */
static void call_ready(drpc_rref_waiter *w) {
  drpc_call *call = (drpc_call *)((char *)w - offsetof(drpc_call, waiter));
  drpc_agent *a = call->agent;
  if (atomic_load(&a->state) == ST_STOPPED) {
    drpc_error e = {DRPC_ESHUTDOWN,
                    (char *)"RPC is no longer running on this node"};
    call_respond(call, NULL, &e);
    return;
  }
  drpc_agent_record(a, DRPC_EV_OUT_EXECUTE, call->caller.id, call->req_id,
                    (uint64_t)call->kind, NULL, 0, call->name);
  a->env.ops->execute(a->env.ctx, &call->job);
}

/* An [created_on, local_id] pair. */
static bool rref_id_of(const drpc_value *v, drpc_rref_id *out) {
  if (!v || v->kind != DRPC_VAL_LIST || v->u.c.len != 2 ||
      v->u.c.items[0]->kind != DRPC_VAL_INT ||
      v->u.c.items[1]->kind != DRPC_VAL_INT || v->u.c.items[0]->u.i < 0 ||
      v->u.c.items[0]->u.i > INT16_MAX || v->u.c.items[1]->u.i < 0 ||
      (uint64_t)v->u.c.items[1]->u.i >= DRPC_RREF_MAX_LOCAL_ID)
    return false;
  out->created_on = (int16_t)v->u.c.items[0]->u.i;
  out->local_id = v->u.c.items[1]->u.i;
  return true;
}

/* CALL [kind, name, args, kwargs] and REMOTE_CALL [kind, name, args,
 * kwargs, rref id, fork id]. */
void drpc_agent_reply_error(drpc_agent *a, uint64_t conn, uint64_t id, int code,
                            const char *msg) {
  if (strncmp(msg, "Error on Node ", 14) != 0) {
    reply_error(a, conn, id, code, msg);
    return;
  }
  /* Already attributed (an error stored on an owner RRef). */
  drpc_value *body =
      drpc_value_list_of(2, drpc_value_int(code), drpc_value_str(msg));
  drpc_outframe *f = NULL;
  if (body &&
      drpc_wire_encode(DRPC_MSG_ERROR, 0, id, body, &a->lim, &f, NULL) == 0) {
    if (conn == SELF_CONN)
      deliver_local(a, f);
    else
      send_frame(a, conn, f);
  }
  drpc_value_free(body);
}

void drpc_agent_send_oneway(drpc_agent *a, uint64_t conn, uint8_t type,
                            const drpc_value *body) {
  drpc_outframe *f = NULL;
  if (drpc_wire_encode(type, 0, 0, body, &a->lim, &f, NULL) != 0)
    return;
  if (conn == SELF_CONN)
    deliver_local(a, f);
  else
    send_frame(a, conn, f);
}

void drpc_agent_reply(drpc_agent *a, uint64_t conn, uint8_t type, uint64_t id,
                      const drpc_value *body) {
  drpc_outframe *f = NULL;
  drpc_fork_list *forks = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  int16_t dst = conn == SELF_CONN ? a->self.id : conn_peer(a, conn);
  if (drpc_rref_encode(a, type, id, body, dst, &f, &forks, &err) != 0) {
    drpc_agent_reply_error(a, conn, id, err.code, drpc_error_message(&err));
    drpc_error_clear(&err);
    return;
  }
  drpc_fork_list_apply(a, forks);
  if (conn == SELF_CONN)
    deliver_local(a, f);
  else
    send_frame(a, conn, f);
}

static void handle_call(drpc_agent *a, uint64_t conn, conn_entry *ce,
                        drpc_msg *m, drpc_devready **ready) {
  const drpc_value *b = m->body;
  bool remote = m->type == DRPC_MSG_REMOTE_CALL;
  /* PROFILER: a flagged CALL carries the profiling id as a fifth item. */
  bool profiled = !remote && (m->flags & DRPC_FLAG_PROFILE);
  size_t want = remote ? 6 : profiled ? 5 : 4;
  drpc_rref_id rid = {0, 0}, fid = {0, 0};
  if (profiled && b && b->kind == DRPC_VAL_LIST && b->u.c.len == 5 &&
      (b->u.c.items[4]->kind != DRPC_VAL_LIST ||
       drpc_value_len(b->u.c.items[4]) != 2 ||
       drpc_list_at(b->u.c.items[4], 0)->kind != DRPC_VAL_INT ||
       drpc_list_at(b->u.c.items[4], 1)->kind != DRPC_VAL_INT))
    want = 0; /* malformed */
  if (!b || b->kind != DRPC_VAL_LIST || b->u.c.len != want ||
      b->u.c.items[0]->kind != DRPC_VAL_INT ||
      b->u.c.items[1]->kind != DRPC_VAL_STR ||
      b->u.c.items[2]->kind != DRPC_VAL_LIST ||
      b->u.c.items[3]->kind != DRPC_VAL_DICT ||
      (remote && (!rref_id_of(b->u.c.items[4], &rid) ||
                  !rref_id_of(b->u.c.items[5], &fid)))) {
    reply_error(a, conn, m->id, DRPC_EPROTO,
                remote ? "malformed REMOTE_CALL: expected [kind, name, args, "
                         "kwargs, rref id, fork id]"
                       : "malformed CALL: expected [kind, name, args, kwargs]");
    return;
  }
  int64_t kind = b->u.c.items[0]->u.i;
  if (kind != DRPC_BUILTIN && kind != DRPC_FUNCTION &&
      kind != DRPC_KIND_RREF_FUNCTION && kind != DRPC_KIND_RREF_BUILTIN) {
    reply_error(a, conn, m->id, DRPC_EPROTO, "malformed CALL: unknown kind");
    return;
  }
  if (atomic_load(&a->state) == ST_STOPPED) {
    reply_error(a, conn, m->id, DRPC_ESHUTDOWN,
                "RPC is no longer running on this node");
    return;
  }
  int16_t from = conn == SELF_CONN ? a->self.id : ce->peer;
  if (remote && rid.created_on != from) {
    /* Only the creator of an RRef id may ask for it to be created. */
    reply_error(a, conn, m->id, DRPC_EPROTO,
                "REMOTE_CALL names an RRef id its sender did not create");
    return;
  }
  drpc_call *call = calloc(1, sizeof *call);
  if (!call) {
    reply_error(a, conn, m->id, DRPC_ENOMEM, "out of memory");
    return;
  }
  if (remote && !(call->remote_owner = drpc_rref_remote_owner(a, rid, fid))) {
    free(call);
    reply_error(a, conn, m->id, DRPC_ESHUTDOWN,
                "the RRef context of this worker was destroyed");
    return;
  }
  call->job.run = call_run;
  call->agent = a;
  call->conn = conn;
  call->req_id = m->id;
  call->kind = (int)kind;
  call->msg = *m;
  memset(m, 0, sizeof *m); /* the call owns the body now */
  call->ready = *ready;
  *ready = NULL;
  const drpc_value *cb = call->msg.body;
  call->name = cb->u.c.items[1]->u.s.data;
  call->args = cb->u.c.items[2];
  call->kwargs = cb->u.c.items[3];
  /* PROFILER */
  call->prof =
      drpc_prof_serve_begin(a, call->name, profiled,
                            profiled ? cb->u.c.items[4]->u.c.items[0]->u.i : 0,
                            profiled ? cb->u.c.items[4]->u.c.items[1]->u.i : 0);
  call->arrive_ns = drpc_prof_arrival(a, a->in_now);
  peer *p = peer_by_id(a, from);
  if (p)
    call->caller = p->info;
  else
    call->caller.id = from;
  atomic_fetch_add(&a->server_active, 1);
  atomic_fetch_add_explicit(&a->calls_served, 1, memory_order_relaxed);
  /* The function runs once every user RRef in its arguments is confirmed
   * by its owner (and a proxy's owner RRef has its value). */
  call->waiter.pending = 1;
  call->waiter.ready = call_ready;
  drpc_error err = DRPC_ERROR_INIT;
  int rc = 0;
  if (call->msg.nrrefs)
    rc = drpc_rref_accept(a, call->msg.body, from, &call->waiter, &err);
  if (rc == 0 &&
      (kind == DRPC_KIND_RREF_FUNCTION || kind == DRPC_KIND_RREF_BUILTIN)) {
    drpc_rref *o = drpc_value_get_rref(drpc_list_at(call->args, 0));
    if (o && drpc_rref_is_owner(o))
      drpc_rref_wait_value(o, &call->waiter);
  }
  if (rc) {
    /* Waiters already registered still point at the call: let them release
     * it, then answer with the error instead of running the function. */
    logf_(a, DRPC_LOG_WARN, "bad RRef in a call from worker %d: %s", from,
          drpc_error_message(&err));
    drpc_error_move(&call->fail, &err);
  }
  if (--call->waiter.pending == 0)
    call_ready(&call->waiter);
}

static void handle_response(drpc_agent *a, conn_entry *ce, drpc_msg *m,
                            drpc_devready **ready) {
  pcall *c = drpc_map_get(&a->calls, m->id);
  if (c && c->dst != ce->peer) {
    /* Only the worker a call went to may answer it; anything else would
     * let one peer complete calls pending with another. */
    logf_(a, DRPC_LOG_WARN,
          "dropping response to request %llu from worker %d: the call went "
          "to worker %d",
          (unsigned long long)m->id, ce->peer, c->dst);
    return;
  }
  if (!c) {
    /* Late: the call already timed out or its connection failed. */
    logf_(a, DRPC_LOG_DEBUG, "dropping late response to request %llu",
          (unsigned long long)m->id);
    return;
  }
  call_detach(a, c);
  rearm(a);
  int code = 0;
  drpc_error aerr = DRPC_ERROR_INIT;
  if (m->type == DRPC_MSG_RESPONSE && (m->flags & DRPC_FLAG_PROFILE)) {
    /* PROFILER: [value, id, events]; the events go to the profiler. */
    drpc_value *v = drpc_prof_on_response(a, m->body);
    drpc_value_free(m->body);
    m->body = v;
  }
  if (m->type == DRPC_MSG_RESPONSE && m->nrrefs &&
      drpc_rref_accept(a, m->body, ce->peer, NULL, &aerr) != 0) {
    drpc_future_set_error(c->fut, &aerr);
    code = aerr.code;
    drpc_error_clear(&aerr);
  } else if (m->type != DRPC_MSG_ERROR) {
    /* RESPONSE, REMOTE_RET and RREF_ACK carry the value. */
    drpc_value *v = m->body;
    m->body = NULL;
    drpc_future_set_value_ready(c->fut, v, *ready);
    *ready = NULL;
  } else {
    const drpc_value *b = m->body;
    drpc_error e = {DRPC_EREMOTE, NULL};
    if (b && b->kind == DRPC_VAL_LIST && b->u.c.len == 2 &&
        b->u.c.items[0]->kind == DRPC_VAL_INT &&
        b->u.c.items[1]->kind == DRPC_VAL_STR) {
      int64_t rcode = b->u.c.items[0]->u.i;
      e.code = rcode < 0 && rcode > -1000 ? (int)rcode : DRPC_EREMOTE;
      e.msg = b->u.c.items[1]->u.s.data;
    } else {
      e.msg = "malformed error response";
    }
    code = e.code;
    drpc_future_set_error(c->fut, &e);
  }
  call_finish(a, c, code);
}

static void handle_hello(drpc_agent *a, uint64_t conn, conn_entry *ce,
                         drpc_msg *m) {
  const drpc_value *b = m->body;
  if (!b || b->kind != DRPC_VAL_LIST || b->u.c.len != 3 ||
      b->u.c.items[0]->kind != DRPC_VAL_INT ||
      b->u.c.items[1]->kind != DRPC_VAL_INT ||
      b->u.c.items[2]->kind != DRPC_VAL_STR) {
    close_conn(a, conn, "malformed HELLO");
    return;
  }
  int64_t version = b->u.c.items[0]->u.i;
  int64_t id = b->u.c.items[1]->u.i;
  const char *name = b->u.c.items[2]->u.s.data;
  if (version != DRPC_WIRE_VERSION) {
    char why[128];
    snprintf(why, sizeof why,
             "HELLO speaks protocol version %lld (this worker speaks %d)",
             (long long)version, DRPC_WIRE_VERSION);
    close_conn(a, conn, why);
    return;
  }
  peer *p = id == a->self.id ? NULL : peer_by_id(a, id);
  /* A dynamic group hears from a worker before it knows it: a joiner's
   * JOIN follows its HELLO. */
  bool joiner = !p && dynamic_group(a) && id != a->self.id && id >= 0 &&
                id < DRPC_MAX_WORKERS;
  if (!joiner && (!p || strcmp(p->info.name, name) != 0)) {
    char why[300];
    snprintf(why, sizeof why, "HELLO from unknown worker %s (id %lld)", name,
             (long long)id);
    close_conn(a, conn, why);
    return;
  }
  ce->peer = (int16_t)id;
  ce->hello = true;
}

/* Puts the message's tensors on the devices they are meant for. A request
 * that cannot be placed is answered with the error; a response becomes
 * an ERROR so its call fails. False when the message is consumed. */
static bool place_tensors(drpc_agent *a, uint64_t conn, conn_entry *ce,
                          drpc_msg *m, drpc_devready **ready) {
  drpc_error err = DRPC_ERROR_INIT;
  int16_t from = conn == SELF_CONN ? a->self.id : ce->peer;
  if (drpc_dev_place(a, conn, from, m, ready, &err) == 0)
    return true;
  bool keep = false;
  if (drpc_msg_type_is_request(m->type)) {
    reply_error(a, conn, m->id, err.code, drpc_error_message(&err));
  } else if (drpc_msg_type_is_response(m->type)) {
    drpc_value *body = error_body(a, &err);
    if (body) {
      drpc_value_free(m->body);
      m->body = body;
      m->type = DRPC_MSG_ERROR;
      keep = true;
    }
  } else {
    logf_(a, DRPC_LOG_ERROR, "dropping a %s frame: %s",
          drpc_msg_type_name(m->type), drpc_error_message(&err));
  }
  drpc_error_clear(&err);
  return keep;
}

static void handle_message_ready(drpc_agent *a, uint64_t conn, conn_entry *ce,
                                 drpc_msg *m, drpc_devready **ready);

static void handle_message(drpc_agent *a, uint64_t conn, drpc_msg *m) {
  conn_entry self_ce = {SELF_CONN, a->self.id, false, true, false};
  conn_entry *ce = conn == SELF_CONN ? &self_ce : drpc_map_get(&a->conns, conn);
  atomic_fetch_add_explicit(&a->frames_in, 1, memory_order_relaxed);
  if (!ce)
    return;
  if (!ce->hello && m->type != DRPC_MSG_HELLO) {
    char why[128];
    snprintf(why, sizeof why,
             "first frame on a connection must be HELLO, got %s",
             drpc_msg_type_name(m->type));
    close_conn(a, conn, why);
    return;
  }
  /* Calls and responses take device data still in flight (their functions
   * and futures wait on the device); anything else has it waited for. */
  drpc_devready *ready = NULL;
  bool in_flight =
      m->type == DRPC_MSG_CALL || m->type == DRPC_MSG_REMOTE_CALL ||
      m->type == DRPC_MSG_RESPONSE || m->type == DRPC_MSG_REMOTE_RET ||
      m->type == DRPC_MSG_RREF_ACK;
  if ((m->devices || m->nshared) &&
      !place_tensors(a, conn, ce, m, in_flight ? &ready : NULL))
    return;
  handle_message_ready(a, conn, ce, m, &ready);
  drpc_devready_free(ready); /* not taken: the message was dropped */
}

static void handle_message_ready(drpc_agent *a, uint64_t conn, conn_entry *ce,
                                 drpc_msg *m, drpc_devready **ready) {
  switch (m->type) {
  case DRPC_MSG_HELLO:
    if (ce->outgoing || conn == SELF_CONN || ce->peer >= 0) {
      close_conn(a, conn, "unexpected HELLO");
      return;
    }
    handle_hello(a, conn, ce, m);
    return;
  case DRPC_MSG_CALL:
  case DRPC_MSG_REMOTE_CALL:
    if (ce->outgoing) {
      close_conn(a, conn, "CALL on an outgoing connection");
      return;
    }
    if (drpc_test_fault_run_twice && m->type == DRPC_MSG_CALL && !m->ntensors &&
        !m->nshared && !m->nrrefs && !*ready) {
      drpc_msg twice = {.type = m->type, .flags = m->flags, .id = m->id};
      twice.body = drpc_value_clone(m->body);
      drpc_devready *none = NULL;
      if (twice.body)
        handle_call(a, conn, ce, &twice, &none);
      drpc_msg_clear(&twice);
    }
    handle_call(a, conn, ce, m, ready);
    return;
  case DRPC_MSG_RREF_FETCH:
  case DRPC_MSG_RREF_USER_DELETE:
  case DRPC_MSG_RREF_FORK_REQUEST:
  case DRPC_MSG_RREF_CHILD_ACCEPT:
    if (ce->outgoing) {
      close_conn(a, conn, "request on an outgoing connection");
      return;
    }
    drpc_rref_on_request(a, conn, conn == SELF_CONN ? a->self.id : ce->peer, m);
    return;
  case DRPC_MSG_RESPONSE:
  case DRPC_MSG_ERROR:
  case DRPC_MSG_REMOTE_RET:
  case DRPC_MSG_RREF_ACK:
    if (!ce->outgoing && conn != SELF_CONN) {
      close_conn(a, conn, "response on an incoming connection");
      return;
    }
    handle_response(a, ce, m, ready);
    return;
  case DRPC_MSG_JOIN:
  case DRPC_MSG_LEAVE:
    if (ce->outgoing) {
      close_conn(a, conn, "request on an outgoing connection");
      return;
    }
    drpc_members_on_request(a, conn, m);
    return;
  case DRPC_MSG_SHUTDOWN:
    ce->peer_shutdown = true;
    return;
  case DRPC_MSG_RELEASE:
    drpc_dev_on_release(a, conn == SELF_CONN ? a->self.id : ce->peer, m->body);
    return;
  default:
    if (drpc_msg_type_is_request(m->type)) {
      char why[128];
      snprintf(why, sizeof why, "message type %s is not supported",
               drpc_msg_type_name(m->type));
      reply_error(a, conn, m->id, DRPC_EUNSUPPORTED, why);
    } else {
      close_conn(a, conn, "unexpected response type");
    }
    return;
  }
}

static int16_t conn_peer(drpc_agent *a, uint64_t conn) {
  conn_entry *ce = drpc_map_get(&a->conns, conn);
  return ce ? ce->peer : -1;
}

/* Whether raw, a whole frame as received and decoded into m, is byte for
 * byte what re-encoding m gives. The encoding is canonical except where
 * the decoder reads nothing: padding (re-encoded as zeros) and the order
 * of tensor indices (renumbered by first use; fuzz/fuzz_wire.c checks
 * both). So a frame without tensors whose padding is zero is its own
 * re-encoding. */
static bool raw_is_canonical(const drpc_msg *m, const uint8_t *raw,
                             size_t len) {
  if (!raw || m->ntensors || m->nshared || len < DRPC_WIRE_HEADER_SIZE)
    return false;
  uint32_t payload_len = (uint32_t)raw[16] | (uint32_t)raw[17] << 8 |
                         (uint32_t)raw[18] << 16 | (uint32_t)raw[19] << 24;
  if (drpc_wire_data_offset(payload_len) != len)
    return false;
  for (size_t i = DRPC_WIRE_HEADER_SIZE + (size_t)payload_len; i < len; i++)
    if (raw[i])
      return false;
  return true;
}

void drpc_agent_on_message_raw(drpc_agent *a, uint64_t conn, drpc_msg *m,
                               const uint8_t *raw, size_t raw_len) {
  drpc_agent_input_begin(a);
  if (a->env.ops->record) {
    /* The frame as it arrived. When the backend still has its bytes and
     * they are canonical, those; otherwise re-encoded from the decoded
     * message (the encoding is canonical), so backends that read straight
     * into tensor storage need keep no copy. Either way the same bytes. */
    drpc_outframe *f = NULL;
    size_t n = 0;
    const uint8_t *flat = NULL;
    if (a->rec_full && raw_is_canonical(m, raw, raw_len)) {
      flat = raw;
      n = raw_len;
    } else if (a->rec_full && drpc_wire_encode_msg(m, &a->lim, &f, NULL) == 0) {
      flat = rec_frame_bytes(a, f, &n);
    }
    if (a->rec_full && !flat)
      drpc_agent_logf(a, DRPC_LOG_ERROR,
                      "could not record a %s frame; the recording will not "
                      "replay",
                      drpc_msg_type_name(m->type));
    drpc_agent_record(a, DRPC_EV_IN_FRAME, conn_peer(a, conn), conn, m->type,
                      flat, n, NULL);
    drpc_outframe_free(f);
  }
  handle_message(a, conn, m);
  drpc_msg_clear(m);
}

void drpc_agent_on_message(drpc_agent *a, uint64_t conn, drpc_msg *m) {
  drpc_agent_on_message_raw(a, conn, m, NULL, 0);
}

void drpc_agent_on_frame(drpc_agent *a, uint64_t conn, const uint8_t *buf,
                         size_t len) {
  drpc_agent_input_begin(a);
  drpc_agent_record(a, DRPC_EV_IN_FRAME, conn_peer(a, conn), conn,
                    len > 5 ? buf[5] : 0, a->rec_full ? buf : NULL,
                    a->rec_full ? len : 0, NULL);
  drpc_msg m = {0};
  drpc_error err = DRPC_ERROR_INIT;
  if (drpc_wire_decode(buf, len, &a->lim, &m, &err)) {
    close_conn(a, conn, drpc_error_message(&err));
    drpc_error_clear(&err);
    return;
  }
  handle_message(a, conn, &m);
  drpc_msg_clear(&m);
}

void drpc_agent_on_timer(drpc_agent *a) {
  drpc_agent_input_begin(a);
  uint64_t now = a->in_now;
  rec(a, DRPC_EV_IN_TIMER, -1, 0, now);
  a->armed_deadline = 0;
  drpc_heap_node *n;
  while ((n = drpc_heap_top(&a->calls_heap)) && n->deadline_ns <= now) {
    pcall *c = (pcall *)n;
    char msg[160];
    snprintf(msg, sizeof msg,
             "RPC ran for more than set timeout (%llu ms) and will now be "
             "marked with an error",
             (unsigned long long)c->timeout_ms);
    atomic_fetch_add(&a->timeouts, 1);
    call_fail(a, c, DRPC_ETIMEOUT, msg);
  }
  while ((n = drpc_heap_top(&a->timers)) && n->deadline_ns <= now) {
    drpc_timer *t = (drpc_timer *)n;
    drpc_heap_remove(&a->timers, n);
    t->fn(t->arg, true);
    free(t);
  }
  rearm(a);
}

const drpc_wire_limits *drpc_agent_wire_limits(drpc_agent *a) {
  return &a->lim;
}

/* ---- client side: sending calls ---------------------------------------- */

typedef struct call_cmd {
  drpc_cmd cmd;
  drpc_agent *agent;
  int16_t dst;
  drpc_outframe *frame;
  drpc_fork_list *forks; /* RRefs forked into the frame */
  drpc_future *fut;
  uint64_t timeout_ms;
  const char *label; /* static: "rpc_async", "rpc_remote", a message type */
  char *fn;          /* the function, when recording (points into fn_buf) */
  char fn_buf[];
} call_cmd;

static void call_apply(call_cmd *cc);

static void call_cmd_apply(drpc_cmd *cmd) {
  call_cmd *cc = (call_cmd *)cmd;
  drpc_agent *a = cc->agent;
  drpc_agent_input_begin(a);
  if (a->env.ops->record) {
    drpc_rbuf *b = rec_buf(a);
    if (a->rec_full) {
      drpc_rbuf_u64(b, (uint64_t)(int64_t)cc->dst);
      drpc_rbuf_u64(b, cc->timeout_ms);
      drpc_rbuf_frame(b, cc->frame);
      drpc_fork_list_write(cc->forks, b);
      const char *l = cc->label ? cc->label : "";
      drpc_rbuf_blob(b, l, strlen(l));
      const char *fn = cc->fn ? cc->fn : "";
      drpc_rbuf_blob(b, fn, strlen(fn));
    }
    rec_cmd(a, DRPC_EV_IN_COMMAND, DRPC_CMD_CALL, cc->dst, 0, b);
  }
  call_apply(cc);
}

/* "rpc_async#fn" for the span of a call (cut to n - 1 bytes). */
static void span_name(const call_cmd *cc, char *buf, size_t n) {
  const char *parts[3] = {cc->label ? cc->label : "rpc",
                          cc->fn && *cc->fn ? "#" : "",
                          cc->fn && *cc->fn ? cc->fn : ""};
  size_t at = 0;
  for (int i = 0; i < 3; i++) {
    size_t k = strlen(parts[i]);
    if (k > n - 1 - at)
      k = n - 1 - at;
    memcpy(buf + at, parts[i], k);
    at += k;
  }
  buf[at] = 0;
}

static void call_apply(call_cmd *cc) {
  drpc_agent *a = cc->agent;
  pcall *c = calloc(1, sizeof *c);
  drpc_error err = DRPC_ERROR_INIT;
  if (!c || atomic_load(&a->state) == ST_STOPPED) {
    drpc_fork_list_drop(cc->forks);
    drpc_outframe_free(cc->frame);
    drpc_future_fail(cc->fut, c ? DRPC_ESHUTDOWN : DRPC_ENOMEM,
                     c ? "RPC is no longer running on this node"
                       : "out of memory");
    drpc_future_decref(cc->fut);
    free(c);
    free(cc);
    if (atomic_fetch_sub(&a->client_active, 1) == 1)
      notify_idle(a);
    return;
  }
  drpc_fork_list_apply(a, cc->forks);
  cc->forks = NULL;
  c->id = ++a->next_id;
  c->dst = cc->dst;
  c->fut = cc->fut;
  c->timeout_ms = cc->timeout_ms;
  c->hn.idx = SIZE_MAX;
  c->hn.tie = c->id;
  drpc_outframe_set_id(cc->frame, c->id);
  bool tracked = drpc_map_put(&a->calls, c->id, c) == 0;
  if (tracked && cc->timeout_ms) {
    c->hn.deadline_ns = a->in_now + cc->timeout_ms * 1000000ull;
    tracked = drpc_heap_push(&a->calls_heap, &c->hn) == 0;
    rearm(a);
  }
  if (!tracked) {
    /* A call the agent cannot track could never complete or time out. */
    drpc_outframe_free(cc->frame);
    drpc_fork_list_drop(cc->forks);
    free(cc);
    call_fail(a, c, DRPC_ENOMEM, "out of memory registering the call");
    rearm(a);
    return;
  }
  if (a->env.ops->record) {
    char name[160];
    span_name(cc, name, sizeof name);
    drpc_agent_record(a, DRPC_EV_RPC_BEGIN, c->dst, c->id, c->timeout_ms, NULL,
                      0, name);
  }
  if (cc->label == drpc_notice_label)
    drpc_members_notice(a, c->fut, c->dst, cc->frame);
  if (c->dst == a->self.id) {
    deliver_local(a, cc->frame);
  } else {
    peer *p = peer_by_id(a, c->dst);
    if (!p) {
      drpc_outframe_free(cc->frame);
      cc->frame = NULL;
      members_lock(a);
      const departed_info *d = find_departed(a, NULL, c->dst);
      drpc_error_set(&err, DRPC_ECONN,
                     "worker %s (id %d) is no longer a member of the group",
                     d ? d->info.name : "?", c->dst);
      members_unlock(a);
      call_fail(a, c, err.code, drpc_error_message(&err));
      rearm(a);
    } else if (send_to_peer(a, p, cc->frame, &err)) {
      call_fail(a, c, err.code, drpc_error_message(&err));
      rearm(a);
    }
  }
  drpc_error_clear(&err);
  free(cc);
}

/* The error for a destination that is not a member: one that left names
 * its departure. Under mlock. */
static int not_member(drpc_agent *a, const char *name, int64_t id,
                      drpc_error *err) {
  const departed_info *d = dynamic_group(a) ? find_departed(a, name, id) : NULL;
  if (d)
    return drpc_error_set(err, DRPC_ENOTFOUND,
                          "worker %s (id %d) has left the group (membership "
                          "epoch %llu: %s); it can no longer be called",
                          d->info.name, d->info.id,
                          (unsigned long long)d->epoch, d->why);
  if (name)
    return drpc_error_set(err, DRPC_ENOTFOUND,
                          "name:%s,rank:%d could not find destination name %s",
                          a->self.name, a->self.id, name);
  return drpc_error_set(err, DRPC_ENOTFOUND,
                        "name:%s,rank:%d could not find destination id %lld",
                        a->self.name, a->self.id, (long long)id);
}

int drpc_agent_resolve(drpc_agent *a, const char *name, drpc_worker_info *out,
                       drpc_error *err) {
  if (!name)
    return drpc_error_set(err, DRPC_ENOTFOUND,
                          "name:%s,rank:%d could not find destination name "
                          "(null)",
                          a->self.name, a->self.id);
  members_lock(a);
  peer *p = peer_by_name(a, name);
  int rc = p ? 0 : not_member(a, name, -1, err);
  if (p)
    *out = p->info;
  members_unlock(a);
  return rc;
}

int drpc_agent_resolve_id(drpc_agent *a, int64_t id, drpc_worker_info *out,
                          drpc_error *err) {
  members_lock(a);
  peer *p = peer_by_id(a, id);
  int rc = p ? 0 : not_member(a, NULL, id, err);
  if (p)
    *out = p->info;
  members_unlock(a);
  return rc;
}

static int get_agent(drpc_agent **a, drpc_error *err) {
  if (*a)
    return 0;
  return drpc_get_current_agent(a, err);
}

int drpc_agent_timeout_ms(drpc_agent *a, double timeout_s, uint64_t *ms,
                          drpc_error *err) {
  if (timeout_s == DRPC_UNSET_RPC_TIMEOUT)
    *ms = atomic_load(&a->timeout_ms);
  else if (timeout_s < 0 || timeout_s != timeout_s)
    return drpc_error_set(err, DRPC_EINVAL,
                          "RPC Timeout must be non-negative, got %g",
                          timeout_s);
  else
    *ms = timeout_ms_of(timeout_s);
  return 0;
}

int drpc_agent_check_call(drpc_agent *a, int16_t dst, int kind, const char *fn,
                          const drpc_value *args, const drpc_value *kwargs,
                          double timeout_s, uint64_t *timeout_ms,
                          drpc_error *err) {
  /* While a graceful shutdown is agreeing, workers still serve and may
   * call each other (nested calls); only a stopped agent refuses. */
  if (atomic_load(&a->state) == ST_STOPPED)
    return drpc_error_set(err, DRPC_ESHUTDOWN,
                          "Node %d tried to send() a message of type CALL but "
                          "RPC is no longer running on this node.",
                          a->self.id);
  drpc_worker_info wi = {0};
  int rc;
  if ((rc = drpc_agent_resolve_id(a, dst, &wi, err)))
    return rc;
  if (!fn || !*fn)
    return drpc_error_set(err, DRPC_EINVAL, "function name must not be empty");
  if ((kind == DRPC_BUILTIN || kind == DRPC_KIND_RREF_BUILTIN) &&
      !drpc_op_lookup(fn))
    return drpc_error_set(err, DRPC_ENOTFOUND, "unknown builtin operator '%s'",
                          fn);
  if (kind != DRPC_BUILTIN && kind != DRPC_FUNCTION &&
      kind != DRPC_KIND_RREF_FUNCTION && kind != DRPC_KIND_RREF_BUILTIN)
    return drpc_error_set(err, DRPC_EINVAL, "unknown call kind %d", (int)kind);
  if (args && args->kind != DRPC_VAL_LIST)
    return drpc_error_set(err, DRPC_ETYPE, "args must be a list, got %s",
                          drpc_value_kind_name(args->kind));
  if (kwargs && kwargs->kind != DRPC_VAL_DICT)
    return drpc_error_set(err, DRPC_ETYPE, "kwargs must be a dict, got %s",
                          drpc_value_kind_name(kwargs->kind));
  if ((rc = drpc_agent_timeout_ms(a, timeout_s, timeout_ms, err)))
    return rc;
  if (atomic_load(&a->client_active) >= (int64_t)MAX_PENDING_CALLS)
    return drpc_error_set(err, DRPC_ETOOBIG,
                          "too many calls in flight (limit %u)",
                          MAX_PENDING_CALLS);
  return 0;
}

/* A call command for an encoded request (takes frame and forks; the
 * command holds a new reference to fut). NULL when memory runs out, with
 * frame and forks released. The call counts as active from here on. */
static call_cmd *call_cmd_new(drpc_agent *a, int16_t dst, drpc_outframe *frame,
                              drpc_fork_list *forks, uint64_t timeout_ms,
                              drpc_future *fut, const char *label,
                              const char *fn) {
  /* The function's name travels in the same allocation. */
  size_t fnn = fn && a->env.ops->record ? strlen(fn) + 1 : 0;
  call_cmd *cc = malloc(sizeof *cc + fnn);
  if (!cc) {
    drpc_fork_list_drop(forks);
    drpc_outframe_free(frame);
    return NULL;
  }
  drpc_future_incref(fut);
  cc->cmd.apply = call_cmd_apply;
  cc->cmd.next = NULL;
  cc->agent = a;
  cc->dst = dst;
  cc->frame = frame;
  cc->forks = forks;
  cc->fut = fut;
  cc->timeout_ms = timeout_ms;
  cc->label = label;
  cc->fn = fnn ? memcpy(cc->fn_buf, fn, fnn) : NULL;
  atomic_fetch_add(&a->client_active, 1);
  return cc;
}

void drpc_agent_post_request(drpc_agent *a, int16_t dst, drpc_outframe *frame,
                             drpc_fork_list *forks, uint64_t timeout_ms,
                             drpc_future *fut, const char *label,
                             const char *fn) {
  call_cmd *cc = call_cmd_new(a, dst, frame, forks, timeout_ms, fut, label, fn);
  if (!cc) {
    drpc_future_fail(fut, DRPC_ENOMEM, "out of memory");
    return;
  }
  atomic_fetch_add_explicit(&a->calls_sent, 1, memory_order_relaxed);
  a->env.ops->post(a->env.ctx, &cc->cmd);
}

void drpc_agent_request(drpc_agent *a, int16_t dst, uint8_t type,
                        const drpc_value *body, uint64_t timeout_ms,
                        drpc_future *fut) {
  drpc_outframe *frame = NULL;
  drpc_fork_list *forks = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  call_cmd *cc = NULL;
  if (drpc_rref_encode(a, type, 0, body, dst, &frame, &forks, &err) != 0) {
    drpc_fork_list_drop(forks);
    drpc_outframe_free(frame);
  } else {
    cc = call_cmd_new(a, dst, frame, forks, timeout_ms, fut,
                      drpc_msg_type_name(type), NULL);
  }
  if (!cc) {
    if (!err.code)
      drpc_error_set(&err, DRPC_ENOMEM, "out of memory");
    drpc_future_set_error(fut, &err);
    drpc_error_clear(&err);
    return;
  }
  call_apply(cc); /* on the loop already: part of the current input */
}

int drpc_agent_call(drpc_agent *a, int16_t dst, int kind, const char *fn,
                    const drpc_value *args, const drpc_value *kwargs,
                    double timeout_s, drpc_future **fut, drpc_error *err) {
  return drpc_agent_call_labelled(a, dst, kind, fn, args, kwargs, timeout_s,
                                  "rpc_async", fut, err);
}

int drpc_agent_call_labelled(drpc_agent *a, int16_t dst, int kind,
                             const char *fn, const drpc_value *args,
                             const drpc_value *kwargs, double timeout_s,
                             const char *label, drpc_future **fut,
                             drpc_error *err) {
  *fut = NULL;
  uint64_t timeout_ms = 0;
  int rc = drpc_agent_check_call(a, dst, kind, fn, args, kwargs, timeout_s,
                                 &timeout_ms, err);
  if (rc)
    return rc;
  /* Borrow args and kwargs into a body on the stack: nothing is copied
   * before encoding. */
  drpc_value kind_v = {.kind = DRPC_VAL_INT, .u.i = kind};
  drpc_value name_v = {.kind = DRPC_VAL_STR, .u.s = {(char *)fn, strlen(fn)}};
  drpc_value empty_list = {.kind = DRPC_VAL_LIST};
  drpc_value empty_dict = {.kind = DRPC_VAL_DICT};
  /* PROFILER: the thread's profiler asks for remote profiling: a fifth
   * item [worker id, local id] and DRPC_FLAG_PROFILE. */
  int64_t pwid = 0, plid = 0;
  drpc_prof_pending *pp = drpc_prof_call_begin(a, dst, label, fn, &pwid, &plid);
  drpc_value pw_v = {.kind = DRPC_VAL_INT, .u.i = pwid};
  drpc_value pl_v = {.kind = DRPC_VAL_INT, .u.i = plid};
  drpc_value *pid_items[2] = {&pw_v, &pl_v};
  drpc_value pid_v = {.kind = DRPC_VAL_LIST, .u.c = {pid_items, NULL, 2, 2}};
  drpc_value *items[5] = {&kind_v, &name_v,
                          args ? (drpc_value *)args : &empty_list,
                          kwargs ? (drpc_value *)kwargs : &empty_dict, &pid_v};
  size_t nitems = pp ? 5 : 4;
  drpc_value body = {.kind = DRPC_VAL_LIST,
                     .u.c = {items, NULL, nitems, nitems}};
  drpc_outframe *frame = NULL;
  drpc_fork_list *forks = NULL;
  if ((rc = drpc_rref_encode(a, DRPC_MSG_CALL, 0, &body, dst, &frame, &forks,
                             err))) {
    drpc_prof_call_abort(pp);
    return rc;
  }
  if (pp) /* flags are bytes 6-7 of the header, little-endian */
    frame->head[6] |= (uint8_t)DRPC_FLAG_PROFILE;
  drpc_future *f = drpc_future_new(&a->env);
  if (!f) {
    drpc_prof_call_abort(pp);
    drpc_fork_list_drop(forks);
    drpc_outframe_free(frame);
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  }
  drpc_prof_call_attach(pp, f);
  drpc_agent_post_request(a, dst, frame, forks, timeout_ms, f,
                          label ? label : "rpc_async", fn);
  *fut = f;
  return 0;
}

int drpc_rpc_async_id(drpc_agent *a, int16_t dst, drpc_call_kind kind,
                      const char *fn, const drpc_value *args,
                      const drpc_value *kwargs, double timeout_s,
                      drpc_future **fut, drpc_error *err) {
  *fut = NULL;
  int rc = get_agent(&a, err);
  if (rc)
    return rc;
  if (kind != DRPC_BUILTIN && kind != DRPC_FUNCTION)
    return drpc_error_set(err, DRPC_EINVAL, "unknown call kind %d", (int)kind);
  return drpc_agent_call(a, dst, kind, fn, args, kwargs, timeout_s, fut, err);
}

int drpc_rpc_async(drpc_agent *a, const char *dst, drpc_call_kind kind,
                   const char *fn, const drpc_value *args,
                   const drpc_value *kwargs, double timeout_s,
                   drpc_future **fut, drpc_error *err) {
  *fut = NULL;
  int rc = get_agent(&a, err);
  if (rc)
    return rc;
  drpc_worker_info wi = {0};
  if ((rc = drpc_agent_resolve(a, dst, &wi, err)))
    return rc;
  return drpc_rpc_async_id(a, wi.id, kind, fn, args, kwargs, timeout_s, fut,
                           err);
}

int drpc_rpc_sync(drpc_agent *a, const char *dst, drpc_call_kind kind,
                  const char *fn, const drpc_value *args,
                  const drpc_value *kwargs, double timeout_s,
                  drpc_value **result, drpc_error *err) {
  drpc_future *f = NULL;
  *result = NULL;
  int rc = get_agent(&a, err);
  if (rc)
    return rc;
  drpc_worker_info wi = {0};
  if ((rc = drpc_agent_resolve(a, dst, &wi, err)))
    return rc;
  if (kind != DRPC_BUILTIN && kind != DRPC_FUNCTION)
    return drpc_error_set(err, DRPC_EINVAL, "unknown call kind %d", (int)kind);
  rc = drpc_agent_call_labelled(a, wi.id, kind, fn, args, kwargs, timeout_s,
                                "rpc_sync", &f, err);
  if (rc)
    return rc;
  rc = drpc_future_get(f, -1, NULL, err);
  if (rc == 0)
    *result = drpc_future_take_value(f);
  drpc_future_decref(f);
  return rc;
}

/* ---- for the RRef context ---------------------------------------------- */

drpc_rctx *drpc_agent_rctx(drpc_agent *a) {
  return a->rctx;
}

drpc_agent_prof *drpc_agent_prof_of(drpc_agent *a) {
  return a->prof;
}

bool drpc_agent_stopped(drpc_agent *a) {
  return atomic_load(&a->state) == ST_STOPPED;
}

void drpc_agent_notify(drpc_agent *a) {
  notify_idle(a);
}

void drpc_agent_logf(drpc_agent *a, drpc_log_level lvl, const char *fmt, ...) {
  if (!a->env.ops->log)
    return;
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  a->env.ops->log(a->env.ctx, lvl, buf);
}

int drpc_agent_wait(drpc_agent *a, bool (*pred)(void *arg), void *arg,
                    uint64_t deadline_ns) {
  int rc = 0;
  a->env.ops->sync_lock(a->env.ctx, &a->sync);
  while (!pred(arg)) {
    if (!a->env.ops->sync_wait(a->env.ctx, &a->sync, deadline_ns) &&
        deadline_ns && drpc_env_now(&a->env) >= deadline_ns && !pred(arg)) {
      rc = DRPC_ETIMEOUT;
      break;
    }
  }
  a->env.ops->sync_unlock(a->env.ctx, &a->sync);
  return rc;
}

typedef struct loop_cmd {
  drpc_cmd cmd;
  drpc_agent *agent;
  void (*fn)(void *arg);
  void *arg;
  _Atomic bool *done;
  int type; /* DRPC_CMD_* for the recording */
} loop_cmd;

static void loop_cmd_apply(drpc_cmd *cmd) {
  loop_cmd *l = (loop_cmd *)cmd;
  drpc_agent_input_begin(l->agent);
  drpc_rbuf b = {0};
  rec_cmd(l->agent, DRPC_EV_IN_COMMAND, (uint64_t)l->type, -1, 0, &b);
  l->fn(l->arg);
  atomic_store(l->done, true);
  notify_idle(l->agent);
  free(l);
}

static bool flag_set(void *arg) {
  return atomic_load((_Atomic bool *)arg);
}

int drpc_agent_run_on_loop(drpc_agent *a, int type, void (*fn)(void *arg),
                           void *arg) {
  _Atomic bool done = false;
  loop_cmd *l = malloc(sizeof *l);
  if (!l)
    return DRPC_ENOMEM;
  l->cmd.apply = loop_cmd_apply;
  l->cmd.next = NULL;
  l->agent = a;
  l->fn = fn;
  l->arg = arg;
  l->done = &done;
  l->type = type;
  a->env.ops->post(a->env.ctx, &l->cmd);
  return drpc_agent_wait(a, flag_set, &done, 0);
}

/* ---- for dynamic membership (core/membership.c) ------------------------- */

drpc_members *drpc_agent_members(drpc_agent *a) {
  return a->members;
}

void drpc_agent_set_members(drpc_agent *a, drpc_members *m) {
  a->members = m;
}

bool drpc_agent_peer_same(drpc_agent *a, const drpc_worker_info *wi,
                          const char *addr) {
  members_lock(a);
  peer *p = peer_by_id(a, wi->id);
  bool same =
      p && strcmp(p->info.name, wi->name) == 0 && strcmp(p->addr, addr) == 0;
  members_unlock(a);
  return same;
}

bool drpc_agent_peer_addr(drpc_agent *a, int16_t id, char **addr, char **dev) {
  *addr = *dev = NULL;
  members_lock(a);
  peer *p = peer_by_id(a, id);
  if (p) {
    *addr = strdup(p->addr);
    *dev = strdup(p->devinfo ? p->devinfo : "");
  }
  members_unlock(a);
  if (*addr && *dev)
    return true;
  free(*addr);
  free(*dev);
  *addr = *dev = NULL;
  return false;
}

int drpc_agent_wait_idle(drpc_agent *a, uint64_t deadline, drpc_error *err) {
  return wait_idle(a, deadline, err);
}

int drpc_agent_wait_served(drpc_agent *a, uint64_t deadline, drpc_error *err) {
  /* Served calls end on executor threads, which do not signal: poll. */
  for (int i = 0; i < 1000000 && (atomic_load(&a->server_active) > 0 ||
                                  atomic_load(&a->server_active_async) > 0);
       i++) {
    uint64_t now = drpc_env_now(&a->env);
    if (deadline && now >= deadline)
      return drpc_error_set(
          err, DRPC_ETIMEOUT, "timed out waiting for %lld calls %s serves",
          (long long)atomic_load(&a->server_active), a->self.name);
    uint64_t until = now + 2000000; /* 2 ms */
    a->env.ops->sync_lock(a->env.ctx, &a->sync);
    a->env.ops->sync_wait(a->env.ctx, &a->sync,
                          deadline && deadline < until ? deadline : until);
    a->env.ops->sync_unlock(a->env.ctx, &a->sync);
  }
  return 0;
}

/* ---- accessors and metrics --------------------------------------------- */

const drpc_worker_info *drpc_agent_self(drpc_agent *a) {
  return &a->self;
}

const drpc_worker_info *drpc_agent_workers(drpc_agent *a, size_t *n) {
  members_lock(a);
  *n = a->npeers;
  const drpc_worker_info *r = a->infos;
  members_unlock(a);
  return r;
}

drpc_worker_info *drpc_agent_workers_copy(drpc_agent *a, size_t *n) {
  members_lock(a);
  drpc_worker_info *r = malloc((a->npeers ? a->npeers : 1) * sizeof *r);
  *n = r ? a->npeers : 0;
  for (size_t i = 0; r && i < a->npeers; i++)
    r[i] = a->peers[i]->info;
  members_unlock(a);
  return r;
}

uint64_t drpc_agent_membership_epoch(drpc_agent *a) {
  return atomic_load(&a->epoch);
}

int drpc_agent_worker_by_name(drpc_agent *a, const char *name,
                              drpc_worker_info *out, drpc_error *err) {
  return drpc_agent_resolve(a, name, out, err);
}

int drpc_agent_worker_by_id(drpc_agent *a, int64_t id, drpc_worker_info *out,
                            drpc_error *err) {
  return drpc_agent_resolve_id(a, id, out, err);
}

bool drpc_agent_is_static_group(drpc_agent *a) {
  return a->world_size > 0;
}

size_t drpc_agent_num_members(drpc_agent *a) {
  members_lock(a);
  size_t n = a->npeers;
  members_unlock(a);
  return n;
}

/* Dynamic groups: records that a change to member id at epoch applied;
 * false when an equal or newer change to it already did (changes of one
 * member are ordered by epoch, whatever order they arrive in). */
bool drpc_agent_member_epoch_advance(drpc_agent *a, int16_t id,
                                     uint64_t epoch) {
  uint64_t key = (uint64_t)(uint16_t)id + 1; /* map keys are non-zero */
  uintptr_t last = (uintptr_t)drpc_map_get(&a->member_epochs, key);
  if (last && epoch <= (uint64_t)(last >> 1))
    return false;
  /* Bit 0 keeps the stored value non-NULL. */
  drpc_map_remove(&a->member_epochs, key);
  drpc_map_put(&a->member_epochs, key, (void *)(uintptr_t)(epoch << 1 | 1));
  uint64_t cur = atomic_load(&a->epoch);
  while (epoch > cur && !atomic_compare_exchange_weak(&a->epoch, &cur, epoch))
    ;
  return true;
}
uint64_t drpc_agent_member_last_epoch(drpc_agent *a, int16_t id) {
  uintptr_t last =
      (uintptr_t)drpc_map_get(&a->member_epochs, (uint64_t)(uint16_t)id + 1);
  return (uint64_t)(last >> 1);
}

drpc_store *drpc_agent_store(drpc_agent *a) {
  return a->store;
}
const drpc_options *drpc_agent_options(drpc_agent *a) {
  return &a->opts;
}
const drpc_env *drpc_agent_env(drpc_agent *a) {
  return &a->env;
}

double drpc_agent_rpc_timeout(drpc_agent *a) {
  return ms_to_s(atomic_load(&a->timeout_ms));
}

int drpc_agent_set_rpc_timeout(drpc_agent *a, double timeout_s,
                               drpc_error *err) {
  if (timeout_s < 0 || timeout_s != timeout_s)
    return drpc_error_set(err, DRPC_EINVAL,
                          "RPC Timeout must be non-negative, got %g",
                          timeout_s);
  atomic_store(&a->timeout_ms, timeout_ms_of(timeout_s));
  return 0;
}

static int put_num(drpc_value *d, const char *key, long long v) {
  char buf[32];
  snprintf(buf, sizeof buf, "%lld", v);
  return drpc_dict_set(d, key, drpc_value_str(buf));
}

drpc_value *drpc_agent_metrics(drpc_agent *a) {
  int size = a->opts.num_worker_threads, idle = 0;
  if (a->env.ops->pool_stats)
    a->env.ops->pool_stats(a->env.ctx, &size, &idle);
  drpc_value *d = drpc_value_dict();
  if (!d)
    return NULL;
  if (put_num(d, "agent.thread_pool_size", size) ||
      put_num(d, "agent.num_idle_threads", idle) ||
      put_num(d, "agent.client_active_calls", atomic_load(&a->client_active)) ||
      put_num(d, "agent.server_active_calls", atomic_load(&a->server_active)) ||
      put_num(d, "agent.server_active_async_calls",
              atomic_load(&a->server_active_async)) ||
      (dynamic_group(a) && (put_num(d, "agent.membership_epoch",
                                    (long long)atomic_load(&a->epoch)) ||
                            put_num(d, "agent.num_members",
                                    (long long)drpc_agent_num_members(a)))) ||
      drpc_prof_metrics(a, d) /* PROFILER */) {
    drpc_value_free(d);
    return NULL;
  }
  return d;
}

drpc_value *drpc_agent_debug_info(drpc_agent *a) {
  drpc_value *d = drpc_agent_metrics(a);
  if (!d)
    return NULL;
  if (drpc_dev_metrics(a, d) ||
      put_num(d, "agent.calls_sent", (long long)atomic_load(&a->calls_sent)) ||
      put_num(d, "agent.calls_served",
              (long long)atomic_load(&a->calls_served)) ||
      put_num(d, "agent.frames_in", (long long)atomic_load(&a->frames_in)) ||
      put_num(d, "agent.frames_out", (long long)atomic_load(&a->frames_out)) ||
      put_num(d, "agent.timeouts", (long long)atomic_load(&a->timeouts)) ||
      put_num(d, "agent.connection_failures",
              (long long)atomic_load(&a->conn_failures)) ||
      put_num(d, "agent.world_size", (long long)a->world_size) ||
      drpc_rctx_debug_info(a->rctx, d)) {
    drpc_value_free(d);
    return NULL;
  }
  return d;
}

/* ---- start ------------------------------------------------------------- */

static int store_get_str(drpc_store *s, const char *key, double timeout_s,
                         char **out, drpc_error *err) {
  void *v = NULL;
  size_t len = 0;
  int rc = drpc_store_get(s, key, timeout_s, &v, &len, err);
  if (rc)
    return rc;
  *out = v; /* stores NUL-terminate values */
  return 0;
}

int drpc_store_claim_group_mode(drpc_store *s, bool is_static,
                                drpc_error *err) {
  const char *mode = is_static ? "true" : "false";
  void *actual = NULL;
  size_t alen = 0;
  int rc = drpc_store_compare_set(s, "rpcIsStaticGroup", "", 0, mode,
                                  strlen(mode), &actual, &alen, err);
  if (rc == 0 && (alen != strlen(mode) || memcmp(actual, mode, alen) != 0))
    rc = drpc_error_set(
        err, DRPC_EINVAL,
        "RPC group mixes statically and dynamically initialized members "
        "which is not supported. Static group property is initialized as "
        "%.*s and is trying to be set as %s",
        (int)alen, (const char *)actual, mode);
  free(actual);
  return rc;
}

static int rendezvous(drpc_agent *a, int64_t rank, drpc_error *err) {
  char key[DRPC_MAX_NAME_LEN + 64], addr[256];
  int rc;
  if ((rc = drpc_store_claim_group_mode(a->store, a->world_size > 0, err))) {
    if (rc != DRPC_EINVAL)
      drpc_error_prefix(err, "rendezvous failed");
    return rc;
  }
  if ((rc = a->env.ops->listen_addr(a->env.ctx, addr, sizeof addr)))
    return drpc_error_set(err, rc, "backend has no listening address");
  /* A dynamic member publishes its address once its name is its own. */
  if (a->world_size <= 0)
    return drpc_members_join(a, rank, addr, err);
  if ((rc = drpc_agent_publish_devices(a->store, a->self.name, addr, &a->opts,
                                       err)))
    return rc;
  snprintf(key, sizeof key, "names/%lld", (long long)rank);
  if ((rc = drpc_store_set_str(a->store, key, a->self.name, err)))
    return rc;

  size_t n = (size_t)a->world_size;
  double wait_s = a->opts.rpc_timeout_s > 0 ? a->opts.rpc_timeout_s : 0;
  for (size_t r = 0; r < n; r++) {
    char *name = NULL, *paddr = NULL;
    drpc_worker_info wi;
    snprintf(key, sizeof key, "names/%zu", r);
    if ((rc = store_get_str(a->store, key, wait_s, &name, err))) {
      drpc_error_prefix(err, "rendezvous: waiting for worker rank %zu", r);
      return rc;
    }
    rc = drpc_worker_info_init(&wi, name, (int64_t)r, err);
    free(name);
    if (rc)
      return rc;
    snprintf(key, sizeof key, "addrs/%s", wi.name);
    if ((rc = store_get_str(a->store, key, wait_s, &paddr, err))) {
      drpc_error_prefix(err, "rendezvous: address of %s", wi.name);
      return rc;
    }
    rc = peer_append(a, &wi, paddr, 0, err);
    free(paddr);
    if (rc)
      return rc;
  }
  return peers_finish(a, err);
}

static void agent_release(drpc_agent *a) {
  for (size_t i = 0; i < a->npeers; i++)
    peer_free(a->peers[i]);
  drpc_dev_free(a->dev);
  a->dev = NULL;
  free(a->peers);
  free(a->infos);
  for (size_t i = 0; i < MAX_OLD_INFOS; i++)
    free(a->old_infos[i]);
  free(a->by_name);
  free(a->departed);
  drpc_map_free(&a->member_epochs);
  drpc_members_free(a->members);
  a->env.ops->sync_destroy(a->env.ctx, &a->mlock);
  size_t n;
  uint64_t *keys = drpc_map_sorted_keys(&a->conns, &n);
  for (size_t i = 0; keys && i < n; i++)
    free(drpc_map_get(&a->conns, keys[i]));
  free(keys);
  drpc_map_free(&a->conns);
  drpc_map_free(&a->calls);
  drpc_heap_free(&a->calls_heap);
  drpc_heap_free(&a->timers);
  free(a->rref_leaks);
  drpc_rctx_release(a->rctx);
  drpc_rbuf_free(&a->rec_buf);
  drpc_rbuf_free(&a->rec_frame);
  if (a->store)
    drpc_store_decref(a->store);
  drpc_agent_prof_free(a->prof); /* PROFILER */
  a->env.ops->sync_destroy(a->env.ctx, &a->sync);
  free(a);
}

/* The configuration a replay needs to rebuild this core: [name, id, world
 * size, [[id, name, address]...], rpc timeout ms, max frame bytes,
 * ignore_rref_leak, shutdown timeout s, worker threads, join epoch (dynamic
 * groups; 0 otherwise), incarnation, channels ("a,b"; "" for the default)].
 * An address is the member's whole store entry: with its device
 * information after a newline, when it published any. */
drpc_value *drpc_agent_config_value(drpc_agent *a) {
  drpc_value *peers = drpc_value_list();
  for (size_t i = 0; peers && i < a->npeers; i++) {
    const peer *p = a->peers[i];
    char *full = NULL;
    const char *addr = p->addr ? p->addr : "";
    if (p->devinfo) {
      size_t n = strlen(addr) + strlen(p->devinfo) + 2;
      if ((full = malloc(n)))
        snprintf(full, n, "%s\n%s", addr, p->devinfo);
    }
    drpc_value *e =
        p->devinfo && !full
            ? NULL
            : drpc_value_list_of(3, drpc_value_int(p->info.id),
                                 drpc_value_str(p->info.name),
                                 drpc_value_str(full ? full : addr));
    free(full);
    if (!e || drpc_list_append(peers, e)) {
      drpc_value_free(e);
      drpc_value_free(peers);
      return NULL;
    }
  }
  char channels[128] = "";
  for (int i = 0; i < 4 && a->opts.channels[i]; i++)
    snprintf(channels + strlen(channels), sizeof channels - strlen(channels),
             "%s%s", i ? "," : "", a->opts.channels[i]);
  return drpc_value_list_of(
      12, drpc_value_str(a->self.name), drpc_value_int(a->self.id),
      drpc_value_int(a->world_size), peers,
      drpc_value_int((int64_t)atomic_load(&a->timeout_ms)),
      drpc_value_int((int64_t)a->opts.max_frame_bytes),
      drpc_value_bool(a->opts.ignore_rref_leak),
      drpc_value_float(a->opts.shutdown_timeout_s),
      drpc_value_int(a->opts.num_worker_threads),
      drpc_value_int((int64_t)drpc_members_join_epoch(a)),
      drpc_value_int((int64_t)a->opts.incarnation), drpc_value_str(channels));
}

static void record_start(drpc_agent *a) {
  const drpc_env *e = &a->env;
  a->rec_full =
      e->ops->record && e->ops->recording && e->ops->recording(e->ctx);
  if (!e->ops->record)
    return;
  a->in_now = drpc_env_now(e);
  uint8_t *flat = NULL;
  size_t n = 0;
  if (a->rec_full) {
    drpc_value *cfg = drpc_agent_config_value(a);
    drpc_outframe *f = NULL;
    if (cfg &&
        drpc_wire_encode(DRPC_MSG_RESPONSE, 0, 0, cfg, &a->lim, &f, NULL) == 0)
      flat = drpc_outframe_flatten(f, &n);
    drpc_outframe_free(f);
    drpc_value_free(cfg);
  }
  drpc_agent_record(a, DRPC_EV_IN_START, -1, (uint64_t)a->world_size, 0, flat,
                    n, a->self.name);
  free(flat);
}

int drpc_agent_start(drpc_agent **out, drpc_store *store, const char *name,
                     int64_t rank, int64_t world_size, const drpc_options *opts,
                     const drpc_env *env, drpc_error *err) {
  *out = NULL;
  drpc_options defaults;
  if (!opts) {
    drpc_options_default(&defaults);
    opts = &defaults;
  }
  int rc = drpc_options_validate(opts, err);
  if (rc)
    return rc;
  drpc_worker_info self;
  if ((rc = drpc_worker_info_init(&self, name, rank, err)))
    return rc;
  if (rank < 0)
    return drpc_error_set(err, DRPC_EINVAL,
                          "rank must be non-negative, got %lld",
                          (long long)rank);
  if (world_size > 0 && rank >= world_size)
    return drpc_error_set(err, DRPC_EINVAL,
                          "rank %lld is out of range for world size %lld",
                          (long long)rank, (long long)world_size);
  if (world_size > DRPC_MAX_WORKERS)
    return drpc_error_set(err, DRPC_EINVAL, "world size %lld exceeds %d",
                          (long long)world_size, DRPC_MAX_WORKERS);
  drpc_agent *a = calloc(1, sizeof *a);
  if (!a)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  a->env = *env;
  a->opts = *opts;
  a->opts.init_method = NULL; /* borrowed; not kept */
  drpc_wire_limits_default(&a->lim);
  a->lim.max_frame = opts->max_frame_bytes;
  a->registry = opts->registry ? opts->registry : drpc_registry_default();
  a->store = store;
  drpc_store_incref(store);
  a->self = self;
  a->world_size = world_size;
  atomic_init(&a->timeout_ms, timeout_ms_of(opts->rpc_timeout_s));
  drpc_map_init(&a->calls);
  drpc_map_init(&a->conns);
  drpc_map_init(&a->member_epochs);
  env->ops->sync_init(env->ctx, &a->sync);
  env->ops->sync_init(env->ctx, &a->mlock);
  /* PROFILER: also makes the worker id the default profiler node id. */
  if (!(a->prof = drpc_agent_prof_new(a, env, a->self.id)) ||
      !(a->rctx = drpc_rctx_new(a, &a->self, env,
                                (int64_t)a->opts.incarnation << 32))) {
    agent_release(a);
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  }
  if ((rc = rendezvous(a, rank, err))) {
    agent_release(a);
    return rc;
  }
  if ((rc = drpc_dev_start(a, &a->dev, err))) {
    if (dynamic_group(a))
      drpc_members_undo_join(a);
    agent_release(a);
    return rc;
  }
  atomic_store(&a->state, ST_RUNNING);
  record_start(a);
  *out = a;
  return 0;
}

/* ---- join, sync, shutdown ---------------------------------------------- */

/* 0 (no bound) for timeouts that are not positive, or too large (infinite)
 * to add to the clock without overflowing. */
static uint64_t deadline_after(drpc_agent *a, double timeout_s) {
  if (!(timeout_s > 0) || timeout_s * 1e9 >= (double)(UINT64_MAX / 2))
    return 0;
  return drpc_env_now(&a->env) + (uint64_t)(timeout_s * 1e9);
}

static double seconds_left(drpc_agent *a, uint64_t deadline) {
  if (!deadline)
    return 0; /* the stores read 0 as "no bound" */
  uint64_t now = drpc_env_now(&a->env);
  return now >= deadline ? 1e-6 : (double)(deadline - now) / 1e9;
}

static int wait_idle(drpc_agent *a, uint64_t deadline, drpc_error *err) {
  int rc = 0;
  a->env.ops->sync_lock(a->env.ctx, &a->sync);
  while (atomic_load(&a->client_active) > 0) {
    if (!a->env.ops->sync_wait(a->env.ctx, &a->sync, deadline) && deadline &&
        drpc_env_now(&a->env) >= deadline) {
      rc = drpc_error_set(err, DRPC_ETIMEOUT,
                          "timed out waiting for %lld outstanding calls of %s",
                          (long long)atomic_load(&a->client_active),
                          a->self.name);
      break;
    }
  }
  a->env.ops->sync_unlock(a->env.ctx, &a->sync);
  return rc;
}

/* Names the workers that have not reached barrier round k. */
static void describe_missing(drpc_agent *a, uint64_t k, char *buf, size_t n) {
  size_t used = 0;
  buf[0] = 0;
  for (size_t i = 0; i < a->npeers && used + 1 < n; i++) {
    char key[96];
    void *v = NULL;
    size_t len = 0;
    snprintf(key, sizeof key, "shutdown/ARRIVED_%llu_%d", (unsigned long long)k,
             a->peers[i]->info.id);
    if (drpc_store_get(a->store, key, 1e-3, &v, &len, NULL) == 0) {
      free(v);
      continue;
    }
    int w = snprintf(buf + used, n - used, "%s%s (id %d)", used ? ", " : "",
                     a->peers[i]->info.name, a->peers[i]->info.id);
    if (w < 0)
      break;
    used += (size_t)w;
  }
}

/* One round of the store barrier; *sum gets the total of every worker's
 * `active` contribution. */
static int barrier_round(drpc_agent *a, int64_t active, int64_t *sum,
                         uint64_t deadline, const char *what, drpc_error *err) {
  uint64_t k = a->barrier_seq++;
  char kact[64], kcnt[64], krdy[64], karr[96];
  snprintf(kact, sizeof kact, "shutdown/ACTIVE_CALLS_ID_%llu",
           (unsigned long long)k);
  snprintf(kcnt, sizeof kcnt, "shutdown/PROCESS_COUNT_ID_%llu",
           (unsigned long long)k);
  snprintf(krdy, sizeof krdy, "shutdown/READY_ID_%llu", (unsigned long long)k);
  snprintf(karr, sizeof karr, "shutdown/ARRIVED_%llu_%d", (unsigned long long)k,
           a->self.id);
  int64_t count = 0, total = 0;
  int rc;
  if ((rc = drpc_store_set_str(a->store, karr, "1", err)) ||
      (rc = drpc_store_add(a->store, kact, active, &total, err)) ||
      (rc = drpc_store_add(a->store, kcnt, 1, &count, err))) {
    drpc_error_prefix(err, "%s", what);
    return rc;
  }
  if (count == a->world_size &&
      (rc = drpc_store_set_str(a->store, krdy, "", err))) {
    drpc_error_prefix(err, "%s", what);
    return rc;
  }
  const char *keys[1] = {krdy};
  drpc_error werr = DRPC_ERROR_INIT;
  rc = drpc_store_wait(a->store, keys, 1, seconds_left(a, deadline), &werr);
  if (rc) {
    char missing[1024];
    describe_missing(a, k, missing, sizeof missing);
    if (rc == DRPC_ETIMEOUT)
      drpc_error_set(err, rc, "%s timed out; workers that did not answer: %s",
                     what, missing[0] ? missing : "(none identified)");
    else
      drpc_error_set(err, rc, "%s failed: %s", what, drpc_error_message(&werr));
    drpc_error_clear(&werr);
    return rc;
  }
  if ((rc = drpc_store_add(a->store, kact, 0, sum, err))) {
    drpc_error_prefix(err, "%s", what);
    return rc;
  }
  return 0;
}

static int join_rounds(drpc_agent *a, uint64_t deadline, const char *what,
                       drpc_error *err) {
  /* Bounded by the deadline; without one, by a generous round count so a
   * livelocked group still returns. */
  for (int round = 0; round < 1000000; round++) {
    int rc = wait_idle(a, deadline, err);
    if (rc)
      return rc;
    int64_t sum = 0;
    if ((rc = barrier_round(a, atomic_load(&a->client_active), &sum, deadline,
                            what, err)))
      return rc;
    if (sum == 0)
      return 0;
  }
  return drpc_error_set(err, DRPC_ETIMEOUT, "%s did not converge", what);
}

static int check_caller(drpc_agent *a, drpc_error *err) {
  if (a->env.ops->is_owner && a->env.ops->is_owner(a->env.ctx))
    return drpc_error_set(err, DRPC_EDEADLOCK,
                          "join/shutdown cannot run on the agent's event loop");
  return 0;
}

int drpc_agent_join(drpc_agent *a, double timeout_s, drpc_error *err) {
  int rc = check_caller(a, err);
  if (rc)
    return rc;
  if (atomic_load(&a->state) != ST_RUNNING)
    return drpc_error_set(err, DRPC_ESHUTDOWN, "RPC is not running");
  if (dynamic_group(a))
    return wait_idle(a, deadline_after(a, timeout_s), err);
  return join_rounds(a, deadline_after(a, timeout_s), "join", err);
}

int drpc_agent_sync(drpc_agent *a, double timeout_s, drpc_error *err) {
  int rc = check_caller(a, err);
  if (rc)
    return rc;
  if (dynamic_group(a))
    return drpc_error_set(err, DRPC_EUNSUPPORTED,
                          "sync is a barrier over a static group; this "
                          "worker is in a dynamic group");
  int64_t sum = 0;
  return barrier_round(a, 0, &sum, deadline_after(a, timeout_s), "sync", err);
}

typedef struct stop_cmd {
  drpc_cmd cmd;
  drpc_agent *agent;
  bool graceful;
} stop_cmd;

static void stop_apply(drpc_cmd *cmd) {
  stop_cmd *s = (stop_cmd *)cmd;
  drpc_agent *a = s->agent;
  drpc_agent_input_begin(a);
  drpc_rbuf b = {0};
  if (a->rec_full)
    drpc_rbuf_u64(&b, s->graceful);
  rec_cmd(a, DRPC_EV_IN_COMMAND, DRPC_CMD_STOP, -1, 0, &b);
  atomic_store(&a->state, ST_STOPPED);
  /* The RRef context goes first: control messages still in flight then
   * give up instead of retrying. */
  char *leaks = drpc_rctx_destroy(a->rctx);
  if (leaks) {
    logf_(a, DRPC_LOG_WARN, "%s", leaks);
    free(a->rref_leaks);
    a->rref_leaks = leaks;
  }
  fail_calls_to(a, -1, DRPC_ESHUTDOWN,
                s->graceful ? "RPC shut down before the call completed"
                            : "RPC was shut down (not gracefully) before the "
                              "call completed");
  size_t n;
  uint64_t *keys = drpc_map_sorted_keys(&a->conns, &n);
  for (size_t i = 0; keys && i < n; i++) {
    drpc_outframe *f = NULL;
    if (drpc_wire_encode(DRPC_MSG_SHUTDOWN, 0, 0, NULL, &a->lim, &f, NULL) == 0)
      send_frame(a, keys[i], f);
    rec(a, DRPC_EV_OUT_CLOSE, conn_peer(a, keys[i]), keys[i], 0);
    a->env.ops->close(a->env.ctx, keys[i]);
    free(drpc_map_remove(&a->conns, keys[i]));
  }
  free(keys);
  for (size_t i = 0; i < a->npeers; i++) {
    a->peers[i]->state = PEER_IDLE;
    a->peers[i]->conn = 0;
    drop_queue(a->peers[i]);
  }
  drop_timers(a);
  if (a->env.ops->timer_arm && a->armed_deadline) {
    rec(a, DRPC_EV_OUT_TIMER, -1, 0, 0);
    a->env.ops->timer_arm(a->env.ctx, 0);
  }
  a->armed_deadline = 0;
  a->env.ops->sync_lock(a->env.ctx, &a->sync);
  a->stop_applied = true;
  a->env.ops->sync_broadcast(a->env.ctx, &a->sync);
  a->env.ops->sync_unlock(a->env.ctx, &a->sync);
  free(s);
}

static void post_stop(drpc_agent *a, bool graceful) {
  stop_cmd *s = calloc(1, sizeof *s);
  if (!s) {
    atomic_store(&a->state, ST_STOPPED);
    return;
  }
  s->cmd.apply = stop_apply;
  s->agent = a;
  s->graceful = graceful;
  a->env.ops->post(a->env.ctx, &s->cmd);
  a->env.ops->sync_lock(a->env.ctx, &a->sync);
  uint64_t deadline = drpc_env_now(&a->env) + 10ull * 1000000000ull;
  while (!a->stop_applied)
    if (!a->env.ops->sync_wait(a->env.ctx, &a->sync, deadline) &&
        drpc_env_now(&a->env) >= deadline)
      break;
  a->env.ops->sync_unlock(a->env.ctx, &a->sync);
}

int drpc_agent_shutdown(drpc_agent *a, bool graceful, double timeout_s,
                        drpc_error *err) {
  int rc = check_caller(a, err);
  if (rc)
    return rc;
  int expected = ST_RUNNING;
  if (!atomic_compare_exchange_strong(&a->state, &expected, ST_STOPPING))
    return 0; /* already shut down */
  if (timeout_s < 0)
    timeout_s = a->opts.shutdown_timeout_s;
  if (graceful && dynamic_group(a)) {
    /* Leave: this worker's calls end, every member drops it, the calls it
     * serves end; no group-wide agreement (members come and go). */
    rc = drpc_members_leave(a, deadline_after(a, timeout_s), err);
  } else if (graceful) {
    /* Agree that no call is left anywhere, delete the RRefs this worker
     * uses (and wait for the owners it serves to be released), then agree
     * again so every control message has been answered. */
    uint64_t deadline = deadline_after(a, timeout_s);
    rc = join_rounds(a, deadline, "graceful shutdown", err);
    if (rc == 0)
      rc = drpc_rref_shutdown_cleanup(a, deadline, err);
    if (rc == 0)
      rc = join_rounds(a, deadline, "graceful shutdown (RRef clean-up)", err);
  }
  post_stop(a, graceful);
  if (rc == 0 && a->rref_leaks && !a->opts.ignore_rref_leak)
    rc = drpc_error_set(err, DRPC_ESTATE, "%s", a->rref_leaks);
  return rc;
}

void drpc_agent_free(drpc_agent *a) {
  if (!a)
    return;
  if (atomic_load(&a->state) != ST_STOPPED)
    atomic_store(&a->state, ST_STOPPED);
  /* Inputs have stopped: fail what is left without the loop. */
  free(drpc_rctx_destroy(a->rctx));
  fail_calls_to(a, -1, DRPC_ESHUTDOWN, "RPC agent was freed");
  drop_timers(a);
  agent_release(a);
}

/* ---- the process-default agent ----------------------------------------- */

static _Atomic(drpc_agent *) current_agent;

drpc_agent *drpc_current_agent(void) {
  return atomic_load(&current_agent);
}

int drpc_set_current_agent(drpc_agent *a, drpc_error *err) {
  drpc_agent *expected = NULL;
  if (!atomic_compare_exchange_strong(&current_agent, &expected, a))
    return drpc_error_set(err, DRPC_EEXISTS, "RPC is already initialized");
  return 0;
}

void drpc_reset_current_agent(void) {
  atomic_store(&current_agent, NULL);
}

int drpc_get_current_agent(drpc_agent **out, drpc_error *err) {
  *out = atomic_load(&current_agent);
  if (!*out)
    return drpc_error_set(err, DRPC_ENOTINIT,
                          "RPC has not been initialized. Call drpc_init "
                          "first.");
  return 0;
}

void drpc_record_null(void *ctx, const drpc_event *ev) {
  (void)ctx;
  (void)ev;
}

/* ---- replay support (core/replay.c) --------------------------------------
 * Replay rebuilds the commands and job results a recording holds and
 * applies them exactly where the recording did. */

/* A frame from its recorded bytes (one contiguous head, no tensors). */
static drpc_outframe *frame_of_bytes(const uint8_t *p, size_t n) {
  drpc_outframe *f = calloc(1, sizeof *f);
  if (!f || !(f->head = malloc(n ? n : 1))) {
    free(f);
    return NULL;
  }
  memcpy(f->head, p, n);
  f->head_len = n;
  f->total_len = n;
  return f;
}

int drpc_cmd_identify(drpc_cmd *cmd, drpc_event_kind *kind, uint64_t *type,
                      uint64_t *key, uint64_t *conn) {
  *conn = 0;
  *key = 0;
  if (cmd->apply == send_cmd_apply) {
    send_cmd *s = (send_cmd *)cmd;
    *kind = DRPC_EV_IN_JOB_DONE;
    *type = DRPC_JOB_SEND;
    *key = s->req_id;
    *conn = s->conn;
  } else if (cmd->apply == remote_done_apply) {
    remote_done_cmd *r = (remote_done_cmd *)cmd;
    *kind = DRPC_EV_IN_JOB_DONE;
    *type = DRPC_JOB_REMOTE_DONE;
    *key = r->req_id;
    *conn = r->conn;
  } else if (cmd->apply == call_cmd_apply) {
    *kind = DRPC_EV_IN_COMMAND;
    *type = DRPC_CMD_CALL;
    *key = (uint64_t)(int64_t)((call_cmd *)cmd)->dst;
  } else if (cmd->apply == stop_apply) {
    *kind = DRPC_EV_IN_COMMAND;
    *type = DRPC_CMD_STOP;
  } else if (cmd->apply == loop_cmd_apply) {
    *kind = DRPC_EV_IN_COMMAND;
    *type = (uint64_t)((loop_cmd *)cmd)->type;
  } else {
    return drpc_rref_cmd_identify(cmd, kind, type, key);
  }
  return 0;
}

bool drpc_cmd_call_frame_is(drpc_cmd *cmd, const uint8_t *p, size_t n) {
  call_cmd *cc = (call_cmd *)cmd;
  size_t len = 0;
  uint8_t *flat = drpc_outframe_flatten(cc->frame, &len);
  bool same = flat && len == n && memcmp(flat, p, n) == 0;
  free(flat);
  return same;
}

uint64_t drpc_call_job_conn(drpc_job *job) {
  return ((drpc_call *)job)->conn;
}
uint64_t drpc_call_job_req_id(drpc_job *job) {
  return ((drpc_call *)job)->req_id;
}
drpc_value *drpc_call_job_body(drpc_job *job) {
  return ((drpc_call *)job)->msg.body;
}

/* A recorded CALL command: [dst, timeout ms, frame, forks, label, fn]. */
int drpc_agent_replay_call(drpc_agent *a, drpc_rreader *r, drpc_future **fut,
                           drpc_error *err) {
  *fut = NULL;
  int16_t dst = (int16_t)drpc_rr_u64(r);
  uint64_t timeout_ms = drpc_rr_u64(r);
  size_t n = 0;
  const uint8_t *p = drpc_rr_blob(r, &n);
  drpc_fork_list *forks = NULL;
  int rc = drpc_fork_list_read(a, r, &forks, err);
  if (rc)
    return rc;
  size_t ln = 0, fnn = 0;
  const uint8_t *label = drpc_rr_blob(r, &ln);
  const uint8_t *fn = drpc_rr_blob(r, &fnn);
  /* The frame's id is rewritten in place: it must at least be a header. */
  if (r->bad || !p || n < DRPC_WIRE_HEADER_SIZE) {
    drpc_fork_list_drop(forks);
    return drpc_error_set(err, DRPC_EPROTO, "malformed CALL command record");
  }
  drpc_outframe *f = frame_of_bytes(p, n);
  drpc_future *fu = drpc_future_new(&a->env);
  char *fns = strndup((const char *)fn, fnn);
  /* Labels are static strings in a live run; these live as long as the
   * command (span names only). */
  static const char *const labels[] = {"rpc_async", "rpc_sync", "rpc_remote",
                                       "rref_fetch"};
  const char *lab = NULL;
  if (strlen(drpc_notice_label) == ln &&
      memcmp(drpc_notice_label, label, ln) == 0)
    lab = drpc_notice_label;
  for (size_t i = 0; i < sizeof labels / sizeof *labels; i++)
    if (strlen(labels[i]) == ln && memcmp(labels[i], label, ln) == 0)
      lab = labels[i];
  if (!lab && ln)
    for (int t = 0; t < 64 && !lab; t++)
      if (strlen(drpc_msg_type_name(t)) == ln &&
          memcmp(drpc_msg_type_name(t), label, ln) == 0)
        lab = drpc_msg_type_name(t);
  if (!f || !fu || !fns) {
    drpc_outframe_free(f);
    drpc_future_decref(fu);
    free(fns);
    drpc_fork_list_drop(forks);
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  }
  call_cmd *cc = call_cmd_new(a, dst, f, forks, timeout_ms, fu, lab, fns);
  free(fns);
  if (!cc) {
    drpc_future_decref(fu);
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  }
  call_cmd_apply(&cc->cmd);
  *fut = fu;
  return 0;
}

int drpc_agent_replay_stop(drpc_agent *a, drpc_rreader *r, drpc_error *err) {
  bool graceful = drpc_rr_u64(r) != 0;
  if (r->bad)
    return drpc_error_set(err, DRPC_EPROTO, "malformed STOP command record");
  stop_cmd *s = calloc(1, sizeof *s);
  if (!s)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  s->cmd.apply = stop_apply;
  s->agent = a;
  s->graceful = graceful;
  atomic_store(&a->state, ST_STOPPING);
  stop_apply(&s->cmd);
  return 0;
}

/* A recorded job result for the call job (captured at execute). */
int drpc_agent_replay_job_done(drpc_agent *a, drpc_job *job, uint64_t kind,
                               drpc_rreader *r, drpc_error *err) {
  drpc_call *call = (drpc_call *)job;
  uint64_t conn = drpc_rr_u64(r);
  uint64_t req_id = drpc_rr_u64(r);
  bool async = drpc_rr_u64(r) != 0;
  (void)conn;
  (void)req_id;
  if (kind == DRPC_JOB_SEND) {
    size_t n = 0;
    const uint8_t *p = drpc_rr_blob(r, &n);
    drpc_fork_list *forks = NULL;
    int rc = drpc_fork_list_read(a, r, &forks, err);
    if (rc)
      return rc;
    if (r->bad || !p || n < DRPC_WIRE_HEADER_SIZE) {
      drpc_fork_list_drop(forks);
      return drpc_error_set(err, DRPC_EPROTO, "malformed job result record");
    }
    send_cmd *s = calloc(1, sizeof *s);
    drpc_outframe *f = frame_of_bytes(p, n);
    if (!s || !f) {
      free(s);
      drpc_outframe_free(f);
      drpc_fork_list_drop(forks);
      return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
    }
    s->cmd.apply = send_cmd_apply;
    s->agent = a;
    s->conn = call->conn;
    s->req_id = call->req_id;
    s->caller = call->caller.id;
    s->async = async;
    s->frame = f;
    s->forks = forks;
    atomic_fetch_sub(&a->server_active, 1);
    call_free(call);
    send_cmd_apply(&s->cmd);
    return 0;
  }
  if (kind != DRPC_JOB_REMOTE_DONE)
    return drpc_error_set(err, DRPC_EPROTO, "unknown job result kind %llu",
                          (unsigned long long)kind);
  for (int i = 0; i < 4; i++)
    drpc_rr_u64(r); /* the owner's ids: the call holds the owner */
  int code = (int)(int64_t)drpc_rr_u64(r);
  size_t mn = 0, vn = 0;
  const uint8_t *m = drpc_rr_blob(r, &mn);
  const uint8_t *v = drpc_rr_blob(r, &vn);
  if (r->bad || !call->remote_owner)
    return drpc_error_set(err, DRPC_EPROTO,
                          "malformed remote job result record");
  remote_done_cmd *d = calloc(1, sizeof *d);
  if (!d)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  if (code) {
    drpc_error_set(&d->err, code, "%.*s", (int)mn, (const char *)m);
  } else if (vn) {
    drpc_msg msg = {0};
    if (drpc_wire_decode(v, vn, &a->lim, &msg, err)) {
      free(d);
      return drpc_error_prefix(err, "remote job result value");
    }
    d->result = msg.body;
    msg.body = NULL;
    drpc_msg_clear(&msg);
  }
  d->cmd.apply = remote_done_apply;
  d->agent = a;
  d->conn = call->conn;
  d->req_id = call->req_id;
  d->caller = call->caller.id;
  d->async = async;
  d->owner = call->remote_owner;
  call->remote_owner = NULL;
  atomic_fetch_sub(&a->server_active, 1);
  call_free(call);
  remote_done_apply(&d->cmd);
  return 0;
}

void drpc_agent_replay_delete_users(drpc_agent *a) {
  drpc_rref_delete_users_now(a);
}

void drpc_call_job_discard(drpc_job *job) {
  drpc_call *call = (drpc_call *)job;
  atomic_fetch_sub(&call->agent->server_active, 1);
  call_free(call);
}

void drpc_agent_replay_force_stop(drpc_agent *a) {
  if (a->stop_applied)
    return;
  stop_cmd *s = calloc(1, sizeof *s);
  atomic_store(&a->state, ST_STOPPED);
  if (!s)
    return;
  s->cmd.apply = stop_apply;
  s->agent = a;
  stop_apply(&s->cmd);
}
