/* The scenario table and the helpers every scenario shares. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "scenario.h"

/* Remote-reference scenarios, listed so `drpc sim --list` shows them;
 * they get programs when RRefs land in the core. */
static const drpc_scenario scn_ps = {
    .name = "ps",
    .summary = "parameter server over RRefs (needs RRefs; not yet runnable)",
    .min_workers = 2,
    .max_workers = 64,
    .default_workers = 4,
    .needs_rrefs = true,
};
static const drpc_scenario scn_rref_chain = {
    .name = "rref_chain",
    .summary = "RRefs forwarded along a chain of workers (needs RRefs; not "
               "yet runnable)",
    .min_workers = 2,
    .max_workers = 64,
    .default_workers = 4,
    .needs_rrefs = true,
};

static const drpc_scenario *const all[] = {
    &drpc_scn_echo,           &drpc_scn_fanout, &drpc_scn_timeouts,
    &drpc_scn_shutdown_storm, &scn_ps,          &scn_rref_chain,
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
  if (h->faults && drpc_scn_fault_error(err))
    return false;
  drpc_scn_violation(h, a, "%s: %s: %s", drpc_agent_self(a)->name, what,
                     drpc_error_message(err));
  return true;
}

void drpc_scn_worker_name(int r, char *buf, size_t n) {
  snprintf(buf, n, "w%d", r);
}
