/* Functions every `drpc` worker serves: small building blocks for demos,
 * benchmarks and tests (plugins add their own). */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "tools.h"

static drpc_value *fn_noop(drpc_call *call, const drpc_value *args,
                           const drpc_value *kwargs, drpc_error *err) {
  (void)call, (void)args, (void)kwargs, (void)err;
  return NULL;
}

/* Returns its first argument (tensors are shared, not copied). */
static drpc_value *fn_echo(drpc_call *call, const drpc_value *args,
                           const drpc_value *kwargs, drpc_error *err) {
  (void)call, (void)kwargs, (void)err;
  const drpc_value *v = drpc_list_at(args, 0);
  return v ? drpc_value_clone(v) : NULL;
}

/* Sleeps args[0] seconds on the worker thread, then returns nil. */
static drpc_value *fn_sleep(drpc_call *call, const drpc_value *args,
                            const drpc_value *kwargs, drpc_error *err) {
  (void)call, (void)kwargs;
  const drpc_value *v = drpc_list_at(args, 0);
  double s = !v                          ? 0
             : v->kind == DRPC_VAL_FLOAT ? v->u.f
             : v->kind == DRPC_VAL_INT   ? (double)v->u.i
                                         : -1;
  if (s < 0 || s > 3600) {
    drpc_error_set(err, DRPC_EINVAL, "sleep: expected seconds in [0, 3600]");
    return NULL;
  }
  struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  while (nanosleep(&ts, &ts) != 0)
    ;
  return NULL;
}

/* Fails with args[0] as the message. */
static drpc_value *fn_raise(drpc_call *call, const drpc_value *args,
                            const drpc_value *kwargs, drpc_error *err) {
  (void)call, (void)kwargs;
  const drpc_value *v = drpc_list_at(args, 0);
  drpc_error_set(err, DRPC_EUSER, "%s",
                 v && v->kind == DRPC_VAL_STR ? v->u.s.data : "raised");
  return NULL;
}

/* The serving worker's name. */
static drpc_value *fn_whoami(drpc_call *call, const drpc_value *args,
                             const drpc_value *kwargs, drpc_error *err) {
  (void)args, (void)kwargs, (void)err;
  return drpc_value_str(drpc_agent_self(drpc_call_agent(call))->name);
}

/* Splits forward-style arguments (dst, fn, args...) into their parts; the
 * rest is a new list owned by the caller. */
static int forward_args(const char *who, const drpc_value *args,
                        const char **dst, const char **fn, bool *builtin,
                        drpc_value **rest, drpc_error *err) {
  const drpc_value *d = drpc_list_at(args, 0), *f = drpc_list_at(args, 1);
  if (!d || d->kind != DRPC_VAL_STR || !f || f->kind != DRPC_VAL_STR)
    return drpc_error_set(err, DRPC_EINVAL, "%s: expected (dst, fn, args...)",
                          who);
  *rest = drpc_value_list();
  for (size_t i = 2; *rest && i < drpc_value_len(args); i++)
    drpc_list_append(*rest, drpc_value_clone(drpc_list_at(args, i)));
  *dst = d->u.s.data;
  *fn = f->u.s.data;
  *builtin = strncmp(*fn, "aten::", 6) == 0;
  return *rest ? 0 : drpc_error_set(err, DRPC_ENOMEM, "out of memory");
}

/* Blocking nested call: rpc_sync(args[0], args[1], args[2:]) from inside a
 * function; the result is returned. */
static drpc_value *fn_forward(drpc_call *call, const drpc_value *args,
                              const drpc_value *kwargs, drpc_error *err) {
  (void)kwargs;
  const char *dst, *fn;
  bool builtin;
  drpc_value *rest = NULL, *out = NULL;
  if (forward_args("forward", args, &dst, &fn, &builtin, &rest, err) == 0)
    drpc_rpc_sync(drpc_call_agent(call), dst,
                  builtin ? DRPC_BUILTIN : DRPC_FUNCTION, fn, rest, NULL,
                  DRPC_UNSET_RPC_TIMEOUT, &out, err);
  drpc_value_free(rest);
  return out;
}

/* Async execution: like forward, but returns the nested call's future and
 * frees the worker thread at once (no deadlock with one worker thread). */
static drpc_future *fn_async_forward(drpc_call *call, const drpc_value *args,
                                     const drpc_value *kwargs,
                                     drpc_error *err) {
  (void)kwargs;
  const char *dst, *fn;
  bool builtin;
  drpc_value *rest = NULL;
  drpc_future *f = NULL;
  if (forward_args("async_forward", args, &dst, &fn, &builtin, &rest, err) == 0)
    drpc_rpc_async(drpc_call_agent(call), dst,
                   builtin ? DRPC_BUILTIN : DRPC_FUNCTION, fn, rest, NULL,
                   DRPC_UNSET_RPC_TIMEOUT, &f, err);
  drpc_value_free(rest);
  return f;
}

/* Tensor size in bytes of args[0] (a sink for bandwidth tests). */
static drpc_value *fn_nbytes(drpc_call *call, const drpc_value *args,
                             const drpc_value *kwargs, drpc_error *err) {
  (void)call, (void)kwargs;
  const drpc_value *v = drpc_list_at(args, 0);
  if (!v || v->kind != DRPC_VAL_TENSOR) {
    drpc_error_set(err, DRPC_ETYPE, "nbytes: expected a tensor");
    return NULL;
  }
  return drpc_value_int((int64_t)drpc_tensor_nbytes(v->u.t));
}

int drpc_tools_register_std(drpc_registry *r) {
  struct {
    const char *name;
    drpc_function fn;
  } fns[] = {{"noop", fn_noop},     {"echo", fn_echo},
             {"sleep", fn_sleep},   {"raise", fn_raise},
             {"whoami", fn_whoami}, {"forward", fn_forward},
             {"nbytes", fn_nbytes}};
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    int rc = drpc_register_function(r, fns[i].name, fns[i].fn, NULL);
    if (rc && rc != DRPC_EEXISTS)
      return rc;
  }
  int rc =
      drpc_register_async_function(r, "async_forward", fn_async_forward, NULL);
  return rc == DRPC_EEXISTS ? 0 : rc;
}
