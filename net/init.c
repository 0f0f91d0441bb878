/* drpc_init / drpc_shutdown: the one-call set-up of a worker on the real
 * backend (store from the init method, backend, agent, default agent). */
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "drpc/net.h"

/* What drpc_init built for one agent, found again by drpc_shutdown. */
typedef struct bundle {
  drpc_agent *agent;
  drpc_net *net;
  drpc_store *store; /* prefixed view the agent uses */
  drpc_store *base;
  drpc_store_server *server;
  int64_t rank, world_size;
  struct bundle *next;
} bundle;

static pthread_mutex_t bundles_mu = PTHREAD_MUTEX_INITIALIZER;
static void (*record_fn)(void *ctx, const drpc_event *ev);
static void *record_ctx;

void drpc_init_set_record_sink(void (*record)(void *ctx, const drpc_event *ev),
                               void *ctx) {
  pthread_mutex_lock(&bundles_mu);
  record_fn = record;
  record_ctx = ctx;
  pthread_mutex_unlock(&bundles_mu);
}
static bundle *bundles;
static int init_count; /* per-process, so re-initialising uses fresh keys */

static void release(bundle *b) {
  /* The loop and pool threads run from drpc_net_new on, agent or not: stop
   * them before anything they might touch is freed. */
  drpc_net_stop(b->net);
  drpc_agent_free(b->agent);
  drpc_net_free(b->net);
  if (b->store)
    drpc_store_decref(b->store);
  if (b->base)
    drpc_store_decref(b->base);
  if (b->server)
    drpc_store_server_stop(b->server);
  free(b);
}

int drpc_init(drpc_agent **out, const char *name, int64_t rank,
              int64_t world_size, const drpc_options *opts, drpc_error *err) {
  *out = NULL;
  drpc_options defaults;
  if (!opts) {
    drpc_options_default(&defaults);
    opts = &defaults;
  }
  if (drpc_current_agent())
    return drpc_error_set(err, DRPC_EEXISTS, "RPC is already initialized");
  int rc = drpc_options_validate(opts, err);
  if (rc)
    return rc;
  if ((rc = drpc_validate_worker_name(name, err)))
    return rc;
  bundle *b = calloc(1, sizeof *b);
  if (!b)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  b->rank = rank;
  b->world_size = world_size;
  double store_timeout = opts->rpc_timeout_s > 0 ? opts->rpc_timeout_s : 0;
  rc = drpc_store_from_init_method(
      opts->init_method ? opts->init_method : DRPC_DEFAULT_INIT_METHOD,
      &b->rank, &b->world_size, store_timeout, &b->base, &b->server, err);
  if (rc)
    goto fail;
  pthread_mutex_lock(&bundles_mu);
  int n = init_count++;
  void (*rfn)(void *, const drpc_event *) = record_fn;
  void *rctx = record_ctx;
  pthread_mutex_unlock(&bundles_mu);
  /* Static groups: fresh keys per drpc_init of the process. A dynamic
   * group keeps one prefix, so a worker that leaves can join again. */
  char prefix[32];
  if (b->world_size > 0)
    snprintf(prefix, sizeof prefix, "rpc_prefix_%d", n);
  else
    snprintf(prefix, sizeof prefix, "rpc_dynamic");
  b->store = drpc_store_prefix_new(b->base, prefix);
  if (!b->store) {
    rc = drpc_error_set(err, DRPC_ENOMEM, "out of memory");
    goto fail;
  }
  /* Static and dynamic groups live under different prefixes: the mode is
   * also claimed in the shared store, so mixing them fails here. */
  if ((rc = drpc_store_claim_group_mode(b->base, b->world_size > 0, err)))
    goto fail;
  drpc_net_config nc;
  drpc_net_config_default(&nc);
  nc.num_worker_threads = opts->num_worker_threads;
  nc.log_prefix = name;
  nc.record = rfn;
  nc.record_ctx = rctx;
  const char *host = getenv("DRPC_LISTEN_HOST");
  if (host && *host)
    nc.listen_host = host;
  if ((rc = drpc_net_new(&b->net, &nc, err)))
    goto fail;
  if ((rc = drpc_agent_start(&b->agent, b->store, name, b->rank, b->world_size,
                             opts, drpc_net_env(b->net), err)))
    goto fail;
  drpc_net_attach(b->net, b->agent);
  if ((rc = drpc_set_current_agent(b->agent, err))) {
    drpc_agent_shutdown(b->agent, false, 0, NULL);
    goto fail;
  }
  /* A dynamic group: the members learn of this worker now that its loop
   * serves. */
  if ((rc = drpc_agent_announce(b->agent, err))) {
    drpc_agent_shutdown(b->agent, false, 0, NULL);
    drpc_reset_current_agent();
    goto fail;
  }
  pthread_mutex_lock(&bundles_mu);
  b->next = bundles;
  bundles = b;
  pthread_mutex_unlock(&bundles_mu);
  *out = b->agent;
  return 0;
fail:
  release(b);
  return rc;
}

/* The store server lives in rank 0's process: it must outlast every other
 * worker's last store access. Each worker counts itself in before its
 * graceful shutdown and out after it, whatever the outcome (a survivor
 * whose shutdown timed out still reads the store to name the workers
 * that did not answer); rank 0 waits, bounded, until everyone else who
 * came in has gone out. */
#define ENTERED_KEY "shutdown/ENTERED"
#define EXITED_KEY "shutdown/EXITED"
#define ALL_EXITED_KEY "shutdown/ALL_EXITED"
/* How long rank 0 waits for the others after its own graceful shutdown
 * failed (they are normally failing at the same moment). */
#define EXIT_GRACE_AFTER_ERROR_S 2.0

static void note_entered(bundle *b) {
  if (b->world_size > 1)
    drpc_store_add(b->store, ENTERED_KEY, 1, NULL, NULL);
}

/* True when every worker that entered, rank 0 aside, has exited. */
static bool others_exited(bundle *b, int64_t exited) {
  int64_t entered = 0;
  return drpc_store_add(b->store, ENTERED_KEY, 0, &entered, NULL) == 0 &&
         exited >= entered - 1;
}

static void wait_for_exits(bundle *b, double timeout_s) {
  int64_t exited = 0;
  if (b->world_size <= 1)
    return;
  if (!b->server) {
    if (drpc_store_add(b->store, EXITED_KEY, 1, &exited, NULL) == 0 &&
        others_exited(b, exited))
      drpc_store_set_str(b->store, ALL_EXITED_KEY, "1", NULL);
    return;
  }
  if (drpc_store_add(b->store, EXITED_KEY, 0, &exited, NULL) == 0 &&
      others_exited(b, exited))
    return;
  const char *keys[1] = {ALL_EXITED_KEY};
  drpc_store_wait(b->store, keys, 1, timeout_s, NULL);
}

int drpc_shutdown(drpc_agent *a, bool graceful, double timeout_s,
                  drpc_error *err) {
  if (!a)
    a = drpc_current_agent();
  if (!a)
    return drpc_error_set(err, DRPC_ENOTINIT,
                          "RPC has not been initialized. Call drpc_init "
                          "first.");
  pthread_mutex_lock(&bundles_mu);
  bundle **pp = &bundles;
  while (*pp && (*pp)->agent != a)
    pp = &(*pp)->next;
  bundle *b = *pp;
  if (b)
    *pp = b->next;
  pthread_mutex_unlock(&bundles_mu);
  if (!b)
    return drpc_error_set(err, DRPC_EINVAL,
                          "agent was not created by drpc_init");
  if (timeout_s < 0)
    timeout_s = drpc_agent_options(a)->shutdown_timeout_s;
  if (graceful)
    note_entered(b);
  /* The store's host of a dynamic group waits, bounded, for the others
   * to leave: they need the store to do so. */
  if (graceful && b->server && b->world_size <= 0) {
    double bound = timeout_s > 0 && timeout_s < 30 ? timeout_s : 30;
    struct timespec tick = {0, 10 * 1000 * 1000};
    for (int i = 0; i < (int)(bound * 100) && drpc_agent_num_members(a) > 1;
         i++)
      nanosleep(&tick, NULL);
  }
  if (b->server && b->world_size <= 0 && drpc_agent_num_members(a) > 1)
    fprintf(stderr,
            "drpc %s: warning: this worker hosts the group's store, which "
            "goes away with it; the %zu other members can no longer join or "
            "leave (run a standalone store with `drpc store` to let any "
            "worker leave)\n",
            drpc_agent_self(a)->name, drpc_agent_num_members(a) - 1);
  int rc = drpc_agent_shutdown(a, graceful, timeout_s, err);
  if (graceful) {
    double bound = timeout_s > 0 && timeout_s < 10 ? timeout_s : 10;
    if (rc && bound > EXIT_GRACE_AFTER_ERROR_S)
      bound = EXIT_GRACE_AFTER_ERROR_S;
    wait_for_exits(b, bound);
  }
  if (drpc_current_agent() == a)
    drpc_reset_current_agent();
  release(b);
  return rc;
}
