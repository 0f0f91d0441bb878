/* The profiler: caller-side remote profiling, the server process-global
 * profiler, node ids and dispatch-wait ("GIL") profiling. Semantics and
 * the wire layout: drpc/profiler.h. agent.c calls the drpc_prof_* hooks of
 * internal.h; everything shared across threads here is guarded by the
 * agent's profiling lock (an env sync) or is atomic. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "drpc/future.h"
#include "drpc/profiler.h"
#include "internal.h"

/* ---- event lists --------------------------------------------------------- */

void drpc_profiler_events_free(drpc_profiler_events *e) {
  if (!e)
    return;
  for (size_t i = 0; i < e->n; i++)
    free(e->events[i].name);
  free(e->events);
  e->events = NULL;
  e->n = 0;
}

void drpc_profiler_events_free_all(drpc_profiler_events *lists, size_t n) {
  for (size_t i = 0; lists && i < n; i++)
    drpc_profiler_events_free(&lists[i]);
  free(lists);
}

typedef struct evvec {
  drpc_profiler_event *v;
  size_t n, cap;
} evvec;

/* Appends ev, taking its name (freed on failure). */
static int evvec_push(evvec *e, drpc_profiler_event ev) {
  if (!ev.name)
    return DRPC_ENOMEM;
  if (e->n == e->cap) {
    size_t cap = e->cap ? e->cap * 2 : 8;
    drpc_profiler_event *p = realloc(e->v, cap * sizeof *p);
    if (!p) {
      free(ev.name);
      return DRPC_ENOMEM;
    }
    e->v = p;
    e->cap = cap;
  }
  e->v[e->n++] = ev;
  return 0;
}

static void evvec_free(evvec *e) {
  for (size_t i = 0; i < e->n; i++)
    free(e->v[i].name);
  free(e->v);
  e->v = NULL;
  e->n = e->cap = 0;
}

static int evvec_copy(const evvec *e, drpc_profiler_events *out) {
  out->n = 0;
  out->events = NULL;
  if (!e->n)
    return 0;
  out->events = calloc(e->n, sizeof *out->events);
  if (!out->events)
    return DRPC_ENOMEM;
  for (size_t i = 0; i < e->n; i++) {
    out->events[i] = e->v[i];
    out->events[i].name = strdup(e->v[i].name);
    if (!out->events[i].name) {
      out->n = i;
      drpc_profiler_events_free(out);
      return DRPC_ENOMEM;
    }
  }
  out->n = e->n;
  return 0;
}

/* ---- threads and node ids ------------------------------------------------ */

static _Atomic uint64_t next_tid = 1;
static _Thread_local uint64_t tl_tid;

static uint64_t thread_id(void) {
  if (!tl_tid)
    tl_tid = atomic_fetch_add(&next_tid, 1);
  return tl_tid;
}

static _Atomic int node_override = -1;
static _Atomic int node_default = 0;

void drpc_set_profiler_node_id(int16_t id) {
  atomic_store(&node_override, (int)id);
}

int16_t drpc_profiler_node_id(void) {
  int o = atomic_load(&node_override);
  return (int16_t)(o >= 0 ? o : atomic_load(&node_default));
}

/* ---- per-agent state ---------------------------------------------------- */

typedef struct range range;
struct range {
  range *parent; /* holds a reference */
  _Atomic int refs;
  bool open;
  drpc_profiler_events *lists; /* per request */
  size_t nlists, cap;
};

struct drpc_agent_prof {
  drpc_agent *agent;
  drpc_env env;
  int16_t self_id;
  drpc_sync lock;
  _Atomic uint64_t next_local; /* profiling ids: starts at self_id << 48 */
  drpc_prof_pending *pending;  /* calls waiting for their response */
  range *top;                  /* server ranges */
  _Atomic bool gil_on;
  _Atomic uint64_t gil_sum_ns, gil_count;
};

static int16_t node_of(const drpc_agent_prof *ap) {
  int o = atomic_load(&node_override);
  return (int16_t)(o >= 0 ? o : ap->self_id);
}

static void plock(drpc_agent_prof *ap) {
  ap->env.ops->sync_lock(ap->env.ctx, &ap->lock);
}
static void punlock(drpc_agent_prof *ap) {
  ap->env.ops->sync_unlock(ap->env.ctx, &ap->lock);
}

static void range_decref(range *r) {
  while (r && atomic_fetch_sub(&r->refs, 1) == 1) {
    range *parent = r->parent;
    drpc_profiler_events_free_all(r->lists, r->nlists);
    free(r);
    r = parent;
  }
}

drpc_agent_prof *drpc_agent_prof_new(drpc_agent *a, const drpc_env *env,
                                     int16_t self_id) {
  drpc_agent_prof *ap = calloc(1, sizeof *ap);
  if (!ap)
    return NULL;
  ap->agent = a;
  ap->env = *env;
  ap->self_id = self_id;
  atomic_init(&ap->next_local, (uint64_t)(uint16_t)self_id << 48);
  env->ops->sync_init(env->ctx, &ap->lock);
  atomic_store(&node_default, (int)self_id);
  return ap;
}

/* ---- the caller-side profiler ------------------------------------------ */

struct drpc_profiler {
  drpc_agent *agent;
  drpc_env env;
  drpc_sync lock;
  _Atomic int refs; /* the handle + calls in flight */
  evvec events;
};

static _Thread_local drpc_profiler *tl_profiler;

drpc_profiler *drpc_profiler_new(drpc_agent *agent) {
  if (!agent)
    return NULL;
  drpc_profiler *p = calloc(1, sizeof *p);
  if (!p)
    return NULL;
  p->agent = agent;
  p->env = *drpc_agent_env(agent);
  p->env.ops->sync_init(p->env.ctx, &p->lock);
  atomic_init(&p->refs, 1);
  return p;
}

static void profiler_decref(drpc_profiler *p) {
  if (p && atomic_fetch_sub(&p->refs, 1) == 1) {
    evvec_free(&p->events);
    p->env.ops->sync_destroy(p->env.ctx, &p->lock);
    free(p);
  }
}

void drpc_profiler_free(drpc_profiler *p) {
  if (!p)
    return;
  if (tl_profiler == p)
    tl_profiler = NULL;
  profiler_decref(p);
}

void drpc_profiler_enable(drpc_profiler *p) {
  tl_profiler = p;
}

void drpc_profiler_disable(drpc_profiler *p) {
  if (tl_profiler == p || !p)
    tl_profiler = NULL;
}

int drpc_profiler_events_get(drpc_profiler *p, drpc_profiler_events *out) {
  out->n = 0;
  out->events = NULL;
  if (!p)
    return DRPC_EINVAL;
  p->env.ops->sync_lock(p->env.ctx, &p->lock);
  int rc = evvec_copy(&p->events, out);
  p->env.ops->sync_unlock(p->env.ctx, &p->lock);
  return rc;
}

/* ---- user events --------------------------------------------------------- */

/* The request being served on this thread (callee side), if profiled. */
struct drpc_prof_req {
  drpc_agent_prof *ap;
  bool flagged;
  int64_t wid, lid;
  char *fn;
  uint64_t start_ns;
  uint64_t tid;
  range *range; /* the top server range when it arrived (a reference) */
  evvec events; /* guarded by ap->lock */
};

static _Thread_local drpc_prof_req *tl_req;

#define MAX_OPEN 64
static _Thread_local struct {
  char *name;
  uint64_t start;
} tl_open[MAX_OPEN];
static _Thread_local int tl_nopen;

static uint64_t now_ns(void) {
  if (tl_req)
    return drpc_env_now(&tl_req->ap->env);
  if (tl_profiler)
    return drpc_env_now(&tl_profiler->env);
  return 0;
}

int drpc_profiler_record_begin(const char *name) {
  if (!name || tl_nopen >= MAX_OPEN)
    return DRPC_EINVAL;
  char *n = strdup(name);
  if (!n)
    return DRPC_ENOMEM;
  tl_open[tl_nopen].name = n;
  tl_open[tl_nopen].start = now_ns();
  tl_nopen++;
  return 0;
}

int drpc_profiler_record_end(const char *name) {
  int i = tl_nopen - 1;
  while (i >= 0 && name && strcmp(tl_open[i].name, name) != 0)
    i--;
  if (i < 0)
    return DRPC_ENOTFOUND;
  drpc_profiler_event ev = {tl_open[i].name, 0,           tl_open[i].start,
                            now_ns(),        thread_id(), false};
  memmove(&tl_open[i], &tl_open[i + 1],
          (size_t)(tl_nopen - i - 1) * sizeof tl_open[0]);
  tl_nopen--;
  int rc = 0;
  if (tl_req) {
    drpc_agent_prof *ap = tl_req->ap;
    ev.node_id = node_of(ap);
    plock(ap);
    rc = evvec_push(&tl_req->events, ev);
    punlock(ap);
  } else if (tl_profiler) {
    drpc_profiler *p = tl_profiler;
    ev.node_id = node_of(drpc_agent_prof_of(p->agent));
    p->env.ops->sync_lock(p->env.ctx, &p->lock);
    rc = evvec_push(&p->events, ev);
    p->env.ops->sync_unlock(p->env.ctx, &p->lock);
  } else {
    free(ev.name);
  }
  return rc;
}

/* ---- caller side --------------------------------------------------------- */

struct drpc_prof_pending {
  drpc_prof_pending *next; /* in ap->pending while linked */
  bool linked;
  drpc_agent_prof *ap;
  drpc_profiler *p; /* a reference */
  char *key;
  int64_t wid, lid;
  uint64_t start_ns, tid;
  drpc_value *remote; /* the callee's events, once the response came */
};

static void pending_free(drpc_prof_pending *pp) {
  profiler_decref(pp->p);
  drpc_value_free(pp->remote);
  free(pp->key);
  free(pp);
}

drpc_prof_pending *drpc_prof_call_begin(drpc_agent *a, int16_t dst,
                                        const char *label, const char *fn,
                                        int64_t *wid, int64_t *lid) {
  drpc_profiler *p = tl_profiler;
  if (!p || p->agent != a || !label ||
      (strcmp(label, "rpc_sync") != 0 && strcmp(label, "rpc_async") != 0))
    return NULL;
  drpc_agent_prof *ap = drpc_agent_prof_of(a);
  drpc_worker_info wi = {0};
  if (drpc_agent_resolve_id(a, dst, &wi, NULL))
    return NULL;
  const char *src = drpc_agent_self(a)->name;
  size_t n = strlen(label) + strlen(fn) + strlen(src) + strlen(wi.name) + 16;
  drpc_prof_pending *pp = calloc(1, sizeof *pp);
  char *key = malloc(n);
  if (!pp || !key) {
    free(pp);
    free(key);
    return NULL;
  }
  snprintf(key, n, "%s#%s(%s -> %s)", label, fn, src, wi.name);
  atomic_fetch_add(&p->refs, 1);
  pp->ap = ap;
  pp->p = p;
  pp->key = key;
  pp->wid = ap->self_id;
  pp->lid = (int64_t)atomic_fetch_add(&ap->next_local, 1);
  pp->tid = thread_id();
  pp->start_ns = drpc_env_now(&ap->env);
  *wid = pp->wid;
  *lid = pp->lid;
  return pp;
}

void drpc_prof_call_abort(drpc_prof_pending *pp) {
  if (pp)
    pending_free(pp);
}

static void unlink_pending(drpc_agent_prof *ap, drpc_prof_pending *pp) {
  for (drpc_prof_pending **q = &ap->pending; *q; q = &(*q)->next)
    if (*q == pp) {
      *q = pp->next;
      pp->linked = false;
      return;
    }
}

static int64_t int_at(const drpc_value *l, size_t i, bool *ok) {
  const drpc_value *v = drpc_list_at(l, i);
  if (!v || v->kind != DRPC_VAL_INT) {
    *ok = false;
    return 0;
  }
  return v->u.i;
}

static void record_sink(drpc_agent_prof *ap, const drpc_profiler_event *ev) {
  const drpc_env *e = &ap->env;
  drpc_event r = {DRPC_EV_PROFILE,           ev->node_id, -1, ev->start_ns, 0,
                  ev->end_ns - ev->start_ns, NULL,        0,  ev->name};
  e->ops->record(e->ctx, &r);
}

static void call_done(drpc_future *f, void *arg) {
  (void)f;
  drpc_prof_pending *pp = arg;
  drpc_agent_prof *ap = pp->ap;
  drpc_profiler *p = pp->p;
  plock(ap);
  if (pp->linked)
    unlink_pending(ap, pp);
  drpc_value *remote = pp->remote;
  pp->remote = NULL;
  punlock(ap);
  evvec add = {0};
  drpc_profiler_event local = {strdup(pp->key), node_of(ap),
                               pp->start_ns,    drpc_env_now(&ap->env),
                               pp->tid,         false};
  evvec_push(&add, local);
  for (size_t i = 0; i < drpc_value_len(remote); i++) {
    const drpc_value *r = drpc_list_at(remote, i);
    bool ok = r && r->kind == DRPC_VAL_LIST && drpc_value_len(r) == 5 &&
              drpc_list_at(r, 0)->kind == DRPC_VAL_STR;
    drpc_profiler_event ev = {0};
    ev.node_id = (int16_t)int_at(r, 1, &ok);
    ev.start_ns = (uint64_t)int_at(r, 2, &ok);
    ev.end_ns = (uint64_t)int_at(r, 3, &ok);
    ev.thread_id = (uint64_t)int_at(r, 4, &ok);
    ev.is_remote = true;
    if (!ok)
      continue;
    const char *name = drpc_list_at(r, 0)->u.s.data;
    size_t n = strlen(pp->key) + strlen(name) + 16;
    ev.name = malloc(n);
    if (ev.name)
      snprintf(ev.name, n, "%s#remote_op: %s", pp->key, name);
    evvec_push(&add, ev);
  }
  drpc_value_free(remote);
  /* The record sink only from the loop (the thread that owns the core). */
  if (ap->env.ops->record && ap->env.ops->is_owner &&
      ap->env.ops->is_owner(ap->env.ctx))
    for (size_t i = 0; i < add.n; i++)
      record_sink(ap, &add.v[i]);
  p->env.ops->sync_lock(p->env.ctx, &p->lock);
  for (size_t i = 0; i < add.n; i++) {
    if (evvec_push(&p->events, add.v[i]))
      break;
    add.v[i].name = NULL;
  }
  p->env.ops->sync_unlock(p->env.ctx, &p->lock);
  evvec_free(&add);
  pending_free(pp);
}

void drpc_prof_call_attach(drpc_prof_pending *pp, drpc_future *fut) {
  if (!pp)
    return;
  drpc_agent_prof *ap = pp->ap;
  plock(ap);
  pp->next = ap->pending;
  ap->pending = pp;
  pp->linked = true;
  punlock(ap);
  if (drpc_future_add_done_callback(fut, call_done, pp)) {
    plock(ap);
    if (pp->linked)
      unlink_pending(ap, pp);
    punlock(ap);
    pending_free(pp);
  }
}

drpc_value *drpc_prof_on_response(drpc_agent *a, drpc_value *body) {
  if (!body || body->kind != DRPC_VAL_LIST || body->u.c.len != 3)
    return NULL;
  drpc_value *id = body->u.c.items[1], *events = body->u.c.items[2];
  bool ok = id->kind == DRPC_VAL_LIST && drpc_value_len(id) == 2 &&
            events->kind == DRPC_VAL_LIST;
  int64_t wid = ok ? int_at(id, 0, &ok) : 0;
  int64_t lid = ok ? int_at(id, 1, &ok) : 0;
  if (!ok)
    return NULL;
  drpc_agent_prof *ap = drpc_agent_prof_of(a);
  plock(ap);
  for (drpc_prof_pending *pp = ap->pending; pp; pp = pp->next)
    if (pp->wid == wid && pp->lid == lid) {
      unlink_pending(ap, pp);
      drpc_value_free(pp->remote);
      pp->remote = events;
      body->u.c.items[2] = NULL;
      break;
    }
  punlock(ap);
  drpc_value *v = body->u.c.items[0];
  body->u.c.items[0] = drpc_value_nil();
  if (!body->u.c.items[2])
    body->u.c.items[2] = drpc_value_nil();
  return v;
}

/* ---- callee side --------------------------------------------------------- */

drpc_prof_req *drpc_prof_serve_begin(drpc_agent *a, const char *fn,
                                     bool flagged, int64_t wid, int64_t lid) {
  drpc_agent_prof *ap = drpc_agent_prof_of(a);
  plock(ap);
  range *top = ap->top;
  if (top)
    atomic_fetch_add(&top->refs, 1);
  punlock(ap);
  if (!flagged && !top)
    return NULL;
  drpc_prof_req *r = calloc(1, sizeof *r);
  if (r)
    r->fn = strdup(fn ? fn : "");
  if (!r || !r->fn) {
    free(r);
    range_decref(top);
    return NULL;
  }
  r->ap = ap;
  r->flagged = flagged;
  r->wid = wid;
  r->lid = lid;
  r->range = top;
  return r;
}

uint64_t drpc_prof_arrival(drpc_agent *a, uint64_t now) {
  drpc_agent_prof *ap = drpc_agent_prof_of(a);
  return atomic_load(&ap->gil_on) ? (now ? now : 1) : 0;
}

typedef struct saved_tls {
  drpc_prof_req *req;
} saved_tls;

void *drpc_prof_run_enter(drpc_agent *a, drpc_prof_req *r, uint64_t arrive_ns) {
  drpc_agent_prof *ap = drpc_agent_prof_of(a);
  if (arrive_ns && atomic_load(&ap->gil_on)) {
    uint64_t now = drpc_env_now(&ap->env);
    atomic_fetch_add(&ap->gil_sum_ns, now > arrive_ns ? now - arrive_ns : 0);
    atomic_fetch_add(&ap->gil_count, 1);
  }
  drpc_prof_req *prev = tl_req;
  if (r) {
    r->start_ns = drpc_env_now(&ap->env);
    r->tid = thread_id();
    tl_req = r;
  }
  return (void *)prev;
}

void drpc_prof_run_leave(void *saved) {
  tl_req = (drpc_prof_req *)saved;
}

void drpc_prof_req_free(drpc_prof_req *r) {
  if (!r)
    return;
  if (tl_req == r)
    tl_req = NULL;
  range_decref(r->range);
  evvec_free(&r->events);
  free(r->fn);
  free(r);
}

static drpc_value *events_value(const evvec *e) {
  drpc_value *l = drpc_value_list();
  for (size_t i = 0; l && i < e->n; i++) {
    const drpc_profiler_event *ev = &e->v[i];
    drpc_value *item = drpc_value_list_of(
        5, drpc_value_str(ev->name), drpc_value_int(ev->node_id),
        drpc_value_int((int64_t)ev->start_ns),
        drpc_value_int((int64_t)ev->end_ns),
        drpc_value_int((int64_t)ev->thread_id));
    if (!item || drpc_list_append(l, item)) {
      drpc_value_free(l);
      return NULL;
    }
  }
  return l;
}

static void range_add(range *r, const evvec *e) {
  if (r->nlists == r->cap) {
    size_t cap = r->cap ? r->cap * 2 : 8;
    drpc_profiler_events *p = realloc(r->lists, cap * sizeof *p);
    if (!p)
      return;
    r->lists = p;
    r->cap = cap;
  }
  if (evvec_copy(e, &r->lists[r->nlists]) == 0)
    r->nlists++;
}

drpc_value *drpc_prof_serve_end(drpc_prof_req *r, drpc_value *result, bool ok) {
  if (!r)
    return NULL;
  drpc_agent_prof *ap = r->ap;
  if (tl_req == r)
    tl_req = NULL;
  uint64_t end = drpc_env_now(&ap->env);
  plock(ap);
  /* The function's own event comes first, then what it recorded. */
  evvec all = {0};
  drpc_profiler_event fev = {strdup(r->fn),
                             node_of(ap),
                             r->start_ns ? r->start_ns : end,
                             end,
                             r->tid ? r->tid : thread_id(),
                             false};
  evvec_push(&all, fev);
  for (size_t i = 0; i < r->events.n; i++) {
    drpc_profiler_event ev = r->events.v[i];
    ev.name = strdup(ev.name);
    evvec_push(&all, ev);
  }
  for (range *g = r->range; g; g = g->parent)
    if (g->open)
      range_add(g, &all);
  punlock(ap);
  drpc_value *wrapped = NULL;
  if (r->flagged && ok) {
    /* [nil, id, events], then the nil swapped for result: result stays
     * the caller's when anything fails. */
    wrapped = drpc_value_list_of(
        3, drpc_value_nil(),
        drpc_value_list_of(2, drpc_value_int(r->wid), drpc_value_int(r->lid)),
        events_value(&all));
    if (wrapped && result) {
      drpc_value_free(wrapped->u.c.items[0]);
      wrapped->u.c.items[0] = result;
    }
  }
  evvec_free(&all);
  drpc_prof_req_free(r);
  return wrapped;
}

/* ---- server process-global profiler ------------------------------------ */

int drpc_server_profiler_enable(drpc_agent *agent) {
  if (!agent)
    return DRPC_EINVAL;
  drpc_agent_prof *ap = drpc_agent_prof_of(agent);
  range *r = calloc(1, sizeof *r);
  if (!r)
    return DRPC_ENOMEM;
  atomic_init(&r->refs, 1);
  r->open = true;
  plock(ap);
  r->parent = ap->top; /* the stack's reference moves to r */
  ap->top = r;
  punlock(ap);
  return 0;
}

int drpc_server_profiler_disable(drpc_agent *agent,
                                 drpc_profiler_events **per_request,
                                 size_t *n) {
  if (per_request)
    *per_request = NULL;
  if (n)
    *n = 0;
  if (!agent)
    return DRPC_EINVAL;
  drpc_agent_prof *ap = drpc_agent_prof_of(agent);
  plock(ap);
  range *r = ap->top;
  if (!r) {
    punlock(ap);
    return DRPC_EINVAL;
  }
  ap->top = r->parent;
  if (r->parent)
    atomic_fetch_add(&r->parent->refs, 1); /* the stack keeps it */
  r->open = false;
  drpc_profiler_events *lists = r->lists;
  size_t nl = r->nlists;
  r->lists = NULL;
  r->nlists = r->cap = 0;
  punlock(ap);
  range_decref(r);
  if (per_request && n) {
    *per_request = lists;
    *n = nl;
  } else {
    drpc_profiler_events_free_all(lists, nl);
  }
  return 0;
}

/* ---- GIL-wait metric ----------------------------------------------------- */

void drpc_agent_enable_gil_profiling(drpc_agent *agent, bool on) {
  if (agent)
    atomic_store(&drpc_agent_prof_of(agent)->gil_on, on);
}

int drpc_prof_metrics(drpc_agent *a, drpc_value *dict) {
  drpc_agent_prof *ap = drpc_agent_prof_of(a);
  if (!atomic_load(&ap->gil_on))
    return 0;
  uint64_t count = atomic_load(&ap->gil_count);
  uint64_t sum = atomic_load(&ap->gil_sum_ns);
  char buf[32];
  snprintf(buf, sizeof buf, "%llu",
           (unsigned long long)(count ? sum / count / 1000u : 0));
  return drpc_dict_set(dict, "agent.gil_average_wait_time_us",
                       drpc_value_str(buf));
}

void drpc_agent_prof_free(drpc_agent_prof *ap) {
  if (!ap)
    return;
  while (ap->pending) {
    /* Left linked only if their futures never complete: unlink; the
     * future callback still owns them. */
    drpc_prof_pending *pp = ap->pending;
    ap->pending = pp->next;
    pp->linked = false;
  }
  range *r = ap->top;
  ap->top = NULL;
  range_decref(r);
  ap->env.ops->sync_destroy(ap->env.ctx, &ap->lock);
  free(ap);
}
