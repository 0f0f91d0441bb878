/* The scenario table and the helpers every scenario shares. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scenario.h"

static const drpc_scenario *const all[] = {
    &drpc_scn_echo,           &drpc_scn_fanout,  &drpc_scn_timeouts,
    &drpc_scn_shutdown_storm, &drpc_scn_ps,      &drpc_scn_rref_chain,
    &drpc_scn_membership,     &drpc_scn_devices,
};

const drpc_scenario *const *drpc_scenario_list(size_t *n) {
  *n = sizeof all / sizeof all[0];
  return all;
}

const drpc_scenario *drpc_scenario_find(const char *name) {
  for (size_t i = 0; name && i < sizeof all / sizeof all[0]; i++)
    if (strcmp(all[i]->name, name) == 0)
      return all[i];
  return NULL;
}

bool drpc_scn_fault_error(const drpc_error *err) {
  switch (err->code) {
  case DRPC_ECONN:
  case DRPC_ETIMEOUT:
  case DRPC_ESHUTDOWN:
    return true;
  default:
    return false;
  }
}

void drpc_scn_violation(const drpc_scn_host *h, drpc_agent *a, const char *fmt,
                        ...) {
  char msg[900];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  h->violation(h, a, msg);
}

bool drpc_scn_check_error(const drpc_scn_host *h, drpc_agent *a,
                          const drpc_error *err, const char *what) {
  if (h->faults && drpc_scn_fault_error(err)) {
    if (h->tolerated)
      h->tolerated(h, a, err);
    return false;
  }
  drpc_scn_violation(h, a, "%s: %s: %s", drpc_agent_self(a)->name, what,
                     drpc_error_message(err));
  return true;
}

void drpc_scn_worker_name(int r, char *buf, size_t n) {
  snprintf(buf, n, "w%d", r);
}

const char *const drpc_scn_rref_counters[4] = {
    "num_owner_rrefs", "num_pending_futures", "num_pending_users", "num_forks"};

drpc_value *drpc_scn_echo_fn(drpc_call *call, const drpc_value *args,
                             const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)kwargs;
  (void)err;
  const drpc_value *v = drpc_list_at(args, 0);
  return v ? drpc_value_clone(v) : drpc_value_nil();
}

int64_t drpc_scn_dict_count(const drpc_value *d, const char *key) {
  const drpc_value *v = d ? drpc_dict_get(d, key) : NULL;
  return v && v->kind == DRPC_VAL_STR ? strtoll(v->u.s.data, NULL, 10)
                                      : INT64_MIN;
}

int64_t drpc_scn_debug_count(drpc_agent *a, const char *key) {
  drpc_value *d = drpc_agent_debug_info(a);
  int64_t n = drpc_scn_dict_count(d, key);
  drpc_value_free(d);
  return n;
}

void drpc_scn_rref_shutdown(drpc_agent *a, const drpc_scn_host *h,
                            double timeout_s) {
  drpc_error e = DRPC_ERROR_INIT;
  if (drpc_agent_shutdown(a, true, timeout_s, &e))
    drpc_scn_check_error(h, a, &e, "graceful shutdown");
  drpc_error_clear(&e);
  if (h->faults)
    return;
  drpc_value *d = drpc_agent_debug_info(a); /* once: it is a big dict */
  for (int k = 0; k < 4; k++) {
    char key[64];
    snprintf(key, sizeof key, "%s_at_shutdown", drpc_scn_rref_counters[k]);
    int64_t now = drpc_scn_dict_count(d, drpc_scn_rref_counters[k]);
    int64_t left = drpc_scn_dict_count(d, key);
    if (now != 0 || left != 0)
      drpc_scn_violation(h, a,
                         "%s: after graceful shutdown %s is %lld (%lld when "
                         "the agent stopped)",
                         drpc_agent_self(a)->name, drpc_scn_rref_counters[k],
                         (long long)now, (long long)left);
  }
  drpc_value_free(d);
}
