/* Futures: one completion (value or error), waits through the env's sync
 * primitives, done-callbacks and then-chaining. */
#include "drpc/future.h"
#include "drpc/device.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>

/* Callbacks added before completion; a short inline array covers the common
 * case (one internal callback) without allocating. */
#define INLINE_CBS 2

typedef struct cb_entry {
  drpc_future_cb cb;
  void *arg;
} cb_entry;

struct drpc_future {
  _Atomic int refcount;
  drpc_env env;
  drpc_sync sync;
  bool done;
  int waiters;
  drpc_value *value;
  drpc_error err;
  cb_entry inline_cbs[INLINE_CBS];
  cb_entry *cbs; /* overflow array */
  size_t ncbs, cap_cbs;
  /* Where the value's device tensors are ready (NULL: no device work). */
  drpc_devready *ready;
};

drpc_future *drpc_future_new(const drpc_env *env) {
  drpc_future *f = calloc(1, sizeof *f);
  if (!f)
    return NULL;
  atomic_init(&f->refcount, 1);
  f->env = *env;
  f->env.ops->sync_init(f->env.ctx, &f->sync);
  return f;
}

const drpc_env *drpc_future_env(drpc_future *f) {
  return &f->env;
}

void drpc_future_incref(drpc_future *f) {
  atomic_fetch_add_explicit(&f->refcount, 1, memory_order_relaxed);
}

void drpc_future_decref(drpc_future *f) {
  if (!f)
    return;
  if (atomic_fetch_sub_explicit(&f->refcount, 1, memory_order_acq_rel) != 1)
    return;
  f->env.ops->sync_destroy(f->env.ctx, &f->sync);
  drpc_value_free(f->value);
  drpc_error_clear(&f->err);
  drpc_devready_free(f->ready);
  free(f->cbs);
  free(f);
}

static void lock(drpc_future *f) {
  f->env.ops->sync_lock(f->env.ctx, &f->sync);
}
static void unlock(drpc_future *f) {
  f->env.ops->sync_unlock(f->env.ctx, &f->sync);
}

static cb_entry *cb_at(drpc_future *f, size_t i) {
  return i < INLINE_CBS ? &f->inline_cbs[i] : &f->cbs[i - INLINE_CBS];
}

/* Runs one callback. When the value has device work in flight, the
 * callback runs on pool streams that wait for it (its current streams for
 * those devices), as a then-callback of a PyTorch CUDA future does. */
static void run_cb(drpc_future *f, cb_entry e) {
  drpc_stream *saved[DRPC_DEVICE_MAX];
  bool on = f->ready && drpc_devready_enter(f->ready, saved, NULL) == 0;
  if (on)
    drpc_value_record_streams(f->value);
  e.cb(f, e.arg);
  if (on)
    drpc_devready_leave(f->ready, saved, false);
}

/* Marks done under the lock, then runs the callbacks outside it, in the
 * order they were added. The caller's reference keeps f alive meanwhile. */
static void complete(drpc_future *f) {
  size_t n = f->ncbs;
  cb_entry small[INLINE_CBS];
  cb_entry *list = NULL;
  if (n > 0) {
    list = n <= INLINE_CBS ? small : malloc(n * sizeof *list);
    if (list) {
      for (size_t i = 0; i < n; i++)
        list[i] = *cb_at(f, i);
    }
  }
  f->ncbs = 0;
  if (f->waiters)
    f->env.ops->sync_broadcast(f->env.ctx, &f->sync);
  unlock(f);
  if (n > 0 && !list) {
    /* No memory for a snapshot: the entries stay valid because nothing
     * can add to a completed future's list; run them in place. */
    for (size_t i = 0; i < n; i++)
      run_cb(f, *cb_at(f, i));
    return;
  }
  for (size_t i = 0; i < n; i++)
    run_cb(f, list[i]);
  if (list != small)
    free(list);
}

int drpc_future_set_value(drpc_future *f, drpc_value *value) {
  return drpc_future_set_value_ready(f, value, NULL);
}

int drpc_future_set_value_ready(drpc_future *f, drpc_value *value,
                                drpc_devready *ready) {
  lock(f);
  if (f->done) {
    unlock(f);
    drpc_value_free(value);
    drpc_devready_free(ready);
    return DRPC_ESTATE;
  }
  f->ready = ready;
  f->value = value;
  f->done = true;
  drpc_future_incref(f);
  complete(f);
  drpc_future_decref(f);
  return 0;
}

int drpc_future_set_error(drpc_future *f, const drpc_error *err) {
  lock(f);
  if (f->done) {
    unlock(f);
    return DRPC_ESTATE;
  }
  drpc_error_copy(&f->err, err);
  if (f->err.code == 0)
    f->err.code = DRPC_EINVAL;
  f->done = true;
  drpc_future_incref(f);
  complete(f);
  drpc_future_decref(f);
  return 0;
}

int drpc_future_fail(drpc_future *f, int code, const char *fmt, ...) {
  drpc_error e = DRPC_ERROR_INIT;
  va_list ap;
  va_start(ap, fmt);
  drpc_error_setv(&e, code, fmt, ap);
  va_end(ap);
  int rc = drpc_future_set_error(f, &e);
  drpc_error_clear(&e);
  return rc;
}

bool drpc_future_done(drpc_future *f) {
  lock(f);
  bool d = f->done;
  unlock(f);
  return d;
}

/* The env-clock deadline timeout_s from now, 0 (none) when timeout_s is
 * negative or too large to represent: an infinite or huge timeout waits
 * forever instead of wrapping around into the past. */
static uint64_t deadline_after(const drpc_env *env, double timeout_s) {
  if (!(timeout_s >= 0))
    return 0;
  uint64_t now = drpc_env_now(env);
  double ns = timeout_s * 1e9;
  if (ns >= (double)(UINT64_MAX - now - 1))
    return 0;
  return now + (uint64_t)ns;
}

/* A done future's device work: the caller's current streams wait for it
 * (no host wait). ready is set before done and never changes after. */
static void wait_ready(drpc_future *f, const drpc_value *v) {
  if (f->ready && drpc_devready_wait_current(f->ready, NULL) == 0)
    drpc_value_record_streams(v); /* freed after that work only */
}

int drpc_future_wait(drpc_future *f, double timeout_s) {
  lock(f);
  if (f->done) {
    unlock(f);
    wait_ready(f, f->value);
    return 0;
  }
  if (f->env.ops->is_owner && f->env.ops->is_owner(f->env.ctx)) {
    unlock(f);
    return DRPC_EDEADLOCK;
  }
  uint64_t deadline = deadline_after(&f->env, timeout_s);
  if (deadline)
    deadline++;
  f->waiters++;
  while (!f->done) {
    if (!f->env.ops->sync_wait(f->env.ctx, &f->sync, deadline) && !f->done &&
        deadline && drpc_env_now(&f->env) >= deadline)
      break;
  }
  f->waiters--;
  bool d = f->done;
  unlock(f);
  if (d)
    wait_ready(f, f->value);
  return d ? 0 : DRPC_ETIMEOUT;
}

const drpc_value *drpc_future_value(drpc_future *f) {
  lock(f);
  const drpc_value *v = f->done && f->err.code == 0 ? f->value : NULL;
  unlock(f);
  if (v)
    wait_ready(f, f->value);
  return v;
}

drpc_value *drpc_future_take_value(drpc_future *f) {
  lock(f);
  drpc_value *v = NULL;
  if (f->done && f->err.code == 0) {
    v = f->value;
    f->value = NULL;
  }
  unlock(f);
  if (v)
    wait_ready(f, v);
  return v;
}

int drpc_future_error(drpc_future *f, drpc_error *err) {
  lock(f);
  bool done = f->done;
  int code = done ? f->err.code : DRPC_ESTATE;
  if (err && done && code)
    drpc_error_copy(err, &f->err);
  unlock(f);
  /* Test done, not the code: a future may have failed with DRPC_ESTATE. */
  if (err && !done)
    drpc_error_set(err, code, "future is not complete");
  return code;
}

int drpc_future_get(drpc_future *f, double timeout_s, const drpc_value **value,
                    drpc_error *err) {
  int rc = drpc_future_wait(f, timeout_s);
  if (rc == DRPC_ETIMEOUT)
    return drpc_error_set(err, rc, "future did not complete within %.3f s",
                          timeout_s);
  if (rc == DRPC_EDEADLOCK)
    return drpc_error_set(err, rc,
                          "waiting on a future from the agent's event loop "
                          "thread would deadlock; use a callback instead");
  rc = drpc_future_error(f, err);
  if (value)
    *value = rc ? NULL : drpc_future_value(f);
  return rc;
}

int drpc_future_add_done_callback(drpc_future *f, drpc_future_cb cb,
                                  void *arg) {
  lock(f);
  if (f->done) {
    unlock(f);
    run_cb(f, (cb_entry){cb, arg});
    return 0;
  }
  if (f->ncbs >= INLINE_CBS) {
    size_t over = f->ncbs - INLINE_CBS;
    if (over == f->cap_cbs) {
      size_t cap = f->cap_cbs ? f->cap_cbs * 2 : 4;
      cb_entry *p = realloc(f->cbs, cap * sizeof *p);
      if (!p) {
        unlock(f);
        return DRPC_ENOMEM;
      }
      f->cbs = p;
      f->cap_cbs = cap;
    }
  }
  *cb_at(f, f->ncbs) = (cb_entry){cb, arg};
  f->ncbs++;
  unlock(f);
  return 0;
}

typedef struct then_ctx {
  drpc_then_fn fn;
  void *arg;
  drpc_future *child;
} then_ctx;

static void then_cb(drpc_future *f, void *arg) {
  then_ctx *c = arg;
  drpc_value *out = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  int rc = c->fn(f, c->arg, &out, &err);
  if (rc) {
    if (err.code == 0)
      err.code = rc;
    drpc_future_set_error(c->child, &err);
    drpc_value_free(out);
  } else {
    drpc_future_set_value(c->child, out);
  }
  drpc_error_clear(&err);
  drpc_future_decref(c->child);
  free(c);
}

drpc_future *drpc_future_then(drpc_future *f, drpc_then_fn fn, void *arg) {
  drpc_future *child = drpc_future_new(&f->env);
  then_ctx *c = malloc(sizeof *c);
  if (!child || !c) {
    free(c);
    drpc_future_decref(child);
    return NULL;
  }
  c->fn = fn;
  c->arg = arg;
  c->child = child;
  drpc_future_incref(child); /* held by the callback */
  if (drpc_future_add_done_callback(f, then_cb, c)) {
    drpc_future_decref(child);
    drpc_future_decref(child);
    free(c);
    return NULL;
  }
  return child;
}

int drpc_future_wait_all(drpc_future **fs, size_t n, double timeout_s,
                         drpc_error *err) {
  if (n == 0)
    return 0;
  const drpc_env *env = &fs[0]->env;
  uint64_t deadline = deadline_after(env, timeout_s);
  for (size_t i = 0; i < n; i++) {
    double left = -1;
    if (deadline) {
      uint64_t now = drpc_env_now(env);
      left = now >= deadline ? 0 : (double)(deadline - now) / 1e9;
    }
    int rc = drpc_future_wait(fs[i], left);
    if (rc == DRPC_ETIMEOUT)
      return drpc_error_set(err, rc,
                            "wait_all timed out after %.3f s with %zu of %zu "
                            "futures complete",
                            timeout_s, i, n);
    if (rc)
      return drpc_error_set(err, rc, "wait_all: %s", drpc_strerror(rc));
  }
  for (size_t i = 0; i < n; i++) {
    int rc = drpc_future_error(fs[i], err);
    if (rc)
      return rc;
  }
  return 0;
}
