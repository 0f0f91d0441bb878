/* Functions the integration tests call on their workers: loaded by
 * `drpc worker --plugin` and linked into the test programs themselves, so
 * forked and exec'd workers serve the same set. */
#include <string.h>
#include <unistd.h>

#include "drpc/agent.h"

int drpc_plugin_register(drpc_registry *r);

static double num_or(const drpc_value *v, double dflt) {
  if (!v)
    return dflt;
  if (v->kind == DRPC_VAL_FLOAT)
    return v->u.f;
  if (v->kind == DRPC_VAL_INT)
    return (double)v->u.i;
  return dflt;
}

/* t::affine(x, scale=1, shift=0) = x * scale + shift, for a number or a
 * float32 / float64 tensor; kwargs are how the tests pass scale and shift. */
static drpc_value *fn_affine(drpc_call *call, const drpc_value *args,
                             const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  const drpc_value *x = drpc_list_at(args, 0);
  double scale = num_or(drpc_dict_get(kwargs, "scale"), 1.0);
  double shift = num_or(drpc_dict_get(kwargs, "shift"), 0.0);
  if (x && (x->kind == DRPC_VAL_FLOAT || x->kind == DRPC_VAL_INT))
    return drpc_value_float(num_or(x, 0) * scale + shift);
  if (!x || x->kind != DRPC_VAL_TENSOR ||
      (x->u.t->dtype != DRPC_FLOAT32 && x->u.t->dtype != DRPC_FLOAT64)) {
    drpc_error_set(err, DRPC_ETYPE,
                   "t::affine: expected a number or a float tensor");
    return NULL;
  }
  drpc_tensor *t = drpc_tensor_clone(x->u.t);
  if (!t) {
    drpc_error_set(err, DRPC_ENOMEM, "t::affine: out of memory");
    return NULL;
  }
  int64_t n = drpc_tensor_numel(t);
  for (int64_t i = 0; i < n; i++) {
    if (t->dtype == DRPC_FLOAT32) {
      float *p = drpc_tensor_data(t);
      p[i] = (float)(p[i] * scale + shift);
    } else {
      double *p = drpc_tensor_data(t);
      p[i] = p[i] * scale + shift;
    }
  }
  drpc_value *v = drpc_value_tensor(t);
  drpc_tensor_decref(t);
  return v;
}

/* t::describe(*args, **kwargs) = {self, caller, caller_id, args, kwargs}:
 * shows what arrived and from whom. */
static drpc_value *fn_describe(drpc_call *call, const drpc_value *args,
                               const drpc_value *kwargs, drpc_error *err) {
  const drpc_worker_info *caller = drpc_call_caller(call);
  drpc_value *d = drpc_value_dict();
  if (!d ||
      drpc_dict_set(
          d, "self",
          drpc_value_str(drpc_agent_self(drpc_call_agent(call))->name)) ||
      drpc_dict_set(d, "caller", drpc_value_str(caller->name)) ||
      drpc_dict_set(d, "caller_id", drpc_value_int(caller->id)) ||
      drpc_dict_set(d, "args", drpc_value_clone(args)) ||
      drpc_dict_set(d, "kwargs", drpc_value_clone(kwargs))) {
    drpc_value_free(d);
    drpc_error_set(err, DRPC_ENOMEM, "t::describe: out of memory");
    return NULL;
  }
  return d;
}

/* t::pid() = the serving process id (tests kill workers by it). */
static drpc_value *fn_pid(drpc_call *call, const drpc_value *args,
                          const drpc_value *kwargs, drpc_error *err) {
  (void)call, (void)args, (void)kwargs, (void)err;
  return drpc_value_int((int64_t)getpid());
}

int drpc_plugin_register(drpc_registry *r) {
  static const struct {
    const char *name;
    drpc_function fn;
  } fns[] = {{"t::affine", fn_affine},
             {"t::describe", fn_describe},
             {"t::pid", fn_pid}};
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    int rc = drpc_register_function(r, fns[i].name, fns[i].fn, NULL);
    if (rc && rc != DRPC_EEXISTS)
      return rc;
  }
  return 0;
}
