/* Scenario echo: every worker calls both neighbours on a ring with payloads
 * of many sizes and checks that each answer is what it sent. Half the calls
 * never time out, so under faults only a lost connection can end them. */
#include <stdint.h>
#include <stdio.h>

#include "scenario.h"

static int echo_register(drpc_registry *r, const drpc_scn_host *h) {
  return drpc_register_function(r, "scn.echo", drpc_scn_echo_fn, (void *)h);
}

/* A payload whose size and bytes depend on who sent it and when, so a
 * response delivered to the wrong call cannot pass the comparison. */
static drpc_value *payload(int rank, int i) {
  uint8_t buf[1500];
  size_t n = (size_t)((i * 97 + rank * 13) % (int)sizeof buf);
  for (size_t k = 0; k < n; k++)
    buf[k] = (uint8_t)(rank * 31 + i * 7 + (int)k);
  return drpc_value_list_of(3, drpc_value_int(rank), drpc_value_int(i),
                            drpc_value_bytes(buf, n));
}

static int echo_run(drpc_agent *a, int rank, int world, const drpc_scn_host *h,
                    drpc_error *err) {
  char peers[2][16];
  drpc_scn_worker_name((rank + 1) % world, peers[0], sizeof peers[0]);
  drpc_scn_worker_name((rank + world - 1) % world, peers[1], sizeof peers[1]);
  for (int i = 0; i < h->iters; i++) {
    drpc_value *args = drpc_value_list_of(1, payload(rank, i));
    if (!args)
      return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
    const drpc_value *sent = drpc_list_at(args, 0);
    /* Odd iterations never time out: only the connection can end them. */
    double timeout_s = i % 2 ? 0 : 10.0;
    drpc_error e = DRPC_ERROR_INIT;
    if (i % 4 == 3) {
      drpc_value *out = NULL;
      if (drpc_rpc_sync(a, peers[0], DRPC_FUNCTION, "scn.echo", args, NULL,
                        timeout_s, &out, &e) == 0) {
        if (!drpc_value_equal(out, sent))
          drpc_scn_violation(h, a, "%s: rpc_sync echo %d came back different",
                             drpc_agent_self(a)->name, i);
      } else {
        drpc_scn_check_error(h, a, &e, "rpc_sync scn.echo");
      }
      drpc_value_free(out);
      drpc_error_clear(&e);
      drpc_value_free(args);
      continue;
    }
    drpc_future *f[2] = {NULL, NULL};
    for (int k = 0; k < 2; k++) {
      if (drpc_rpc_async(a, peers[k], DRPC_FUNCTION, "scn.echo", args, NULL,
                         timeout_s, &f[k], &e))
        drpc_scn_check_error(h, a, &e, "rpc_async scn.echo");
      drpc_error_clear(&e);
    }
    for (int k = 0; k < 2; k++) {
      if (!f[k])
        continue;
      const drpc_value *v = NULL;
      if (drpc_future_get(f[k], -1, &v, &e) == 0) {
        if (!drpc_value_equal(v, sent))
          drpc_scn_violation(h, a, "%s: echo %d from %s came back different",
                             drpc_agent_self(a)->name, i, peers[k]);
      } else {
        drpc_scn_check_error(h, a, &e, "scn.echo");
      }
      drpc_error_clear(&e);
      drpc_future_decref(f[k]);
    }
    drpc_value_free(args);
  }
  return 0;
}

const drpc_scenario drpc_scn_echo = {
    .name = "echo",
    .summary = "ring echo with checked payloads; half the calls never time out",
    .min_workers = 1,
    .max_workers = 64,
    .default_workers = 4,
    .default_iters = 40,
    .rpc_timeout_s = 10.0,
    .shutdown_timeout_s = 30.0,
    .register_fns = echo_register,
    .run = echo_run,
};
