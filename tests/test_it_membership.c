/* Integration: dynamic group membership over loopback TCP. Workers start
 * without a world size against one TCP store: a new rank calls the ones
 * already there and they call it; 20 join/leave cycles run with calls in
 * flight and leave nothing behind; a `drpc worker` killed with SIGKILL is
 * taken out of the group by the others, who keep working; mixing static
 * and dynamic members, a taken name and a taken rank fail with the
 * reference's messages. */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"

#include "drpc/net.h"
#include "it_util.h"

static int port;
static drpc_store_server *server;

typedef struct member {
  drpc_net *net;
  drpc_store *base, *store;
  drpc_agent *a;
} member;

static int join(member *m, const char *name, int rank, drpc_error *err) {
  memset(m, 0, sizeof *m);
  drpc_net_config nc;
  drpc_net_config_default(&nc);
  nc.num_worker_threads = 4;
  nc.log_prefix = name;
  drpc_options o;
  drpc_options_default(&o);
  o.rpc_timeout_s = 20;
  o.member_timeout_s = 1.5;
  int rc;
  if ((rc = drpc_net_new(&m->net, &nc, err)) ||
      (rc = drpc_store_tcp_new(&m->base, "127.0.0.1", port, 10, err)) ||
      /* The prefix drpc_init gives dynamic groups. */
      !(m->store = drpc_store_prefix_new(m->base, "rpc_dynamic")) ||
      (rc = drpc_agent_start(&m->a, m->store, name, rank, -1, &o,
                             drpc_net_env(m->net), err))) {
    if (m->net) {
      drpc_net_stop(m->net);
      drpc_net_free(m->net);
    }
    if (m->store)
      drpc_store_decref(m->store);
    if (m->base)
      drpc_store_decref(m->base);
    memset(m, 0, sizeof *m);
    return rc ? rc : DRPC_ENOMEM;
  }
  drpc_net_attach(m->net, m->a);
  return drpc_agent_announce(m->a, err);
}

static int leave(member *m) {
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_agent_shutdown(m->a, true, 20, &err);
  if (rc)
    fprintf(stderr, "  leave of %s: %s\n", drpc_agent_self(m->a)->name,
            drpc_error_message(&err));
  drpc_error_clear(&err);
  drpc_net_stop(m->net);
  drpc_agent_free(m->a);
  drpc_net_free(m->net);
  drpc_store_decref(m->store);
  drpc_store_decref(m->base);
  memset(m, 0, sizeof *m);
  return rc;
}

static bool lists(drpc_agent *a, const char *name) {
  size_t n = 0;
  drpc_worker_info *ws = drpc_agent_workers_copy(a, &n);
  bool found = false;
  for (size_t i = 0; i < n; i++)
    found |= strcmp(ws[i].name, name) == 0;
  free(ws);
  return found;
}

/* echo through rpc_sync; 0 when the answer came back equal. */
static int echo(drpc_agent *a, const char *to, int64_t v, drpc_error *err) {
  drpc_value *args = drpc_value_list_of(1, drpc_value_int(v));
  drpc_value *out = NULL;
  int rc =
      drpc_rpc_sync(a, to, DRPC_FUNCTION, "echo", args, NULL, 10, &out, err);
  if (rc == 0 && (!out || out->kind != DRPC_VAL_INT || out->u.i != v))
    rc = drpc_error_set(err, DRPC_EPROTO, "echo to %s came back wrong", to);
  drpc_value_free(out);
  drpc_value_free(args);
  return rc;
}

static int64_t metric(drpc_agent *a, const char *key) {
  drpc_value *d = drpc_agent_metrics(a);
  const drpc_value *v = d ? drpc_dict_get(d, key) : NULL;
  int64_t r =
      v && v->kind == DRPC_VAL_STR ? strtoll(v->u.s.data, NULL, 10) : INT64_MIN;
  drpc_value_free(d);
  return r;
}

static void start_store(void) {
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_store_server_start(&server, "127.0.0.1", 0, &err), 0);
  port = drpc_store_server_port(server);
  drpc_error_clear(&err);
}

static void test_join_and_call(void) {
  start_store();
  drpc_error err = DRPC_ERROR_INIT;
  member w0, w1, w2;
  CHECK_EQ_INT(join(&w0, "w0", 0, &err), 0);
  CHECK(!drpc_agent_is_static_group(w0.a));
  CHECK_EQ_INT((int)drpc_agent_num_members(w0.a), 1);
  CHECK_EQ_INT(join(&w1, "w1", 1, &err), 0);
  /* w1's announce returned: w0 knows it already. */
  CHECK(lists(w0.a, "w1"));
  CHECK(lists(w1.a, "w0"));
  /* A new rank calls an existing one; the existing one calls it. */
  CHECK_EQ_INT(join(&w2, "w2", 2, &err), 0);
  CHECK_EQ_INT(echo(w2.a, "w0", 7, &err), 0);
  CHECK_EQ_INT(echo(w2.a, "w1", 8, &err), 0);
  CHECK_EQ_INT(echo(w0.a, "w2", 9, &err), 0);
  CHECK_EQ_INT(echo(w1.a, "w2", 10, &err), 0);
  CHECK_EQ_INT((int)drpc_agent_num_members(w0.a), 3);
  /* Three joins took epochs 1..3; every member saw the last. */
  CHECK_EQ_INT((int)metric(w0.a, "agent.membership_epoch"), 3);
  CHECK_EQ_INT((int)metric(w2.a, "agent.membership_epoch"), 3);
  CHECK_EQ_INT((int)metric(w1.a, "agent.num_members"), 3);
  size_t n = 0;
  const drpc_worker_info *ws = drpc_agent_workers(w1.a, &n);
  CHECK_EQ_INT((int)n, 3);
  CHECK(n == 3 && ws[0].id == 0 && ws[1].id == 1 && ws[2].id == 2);

  /* A taken name, a taken rank: refused, and the group is unchanged. */
  member dup;
  CHECK(join(&dup, "w1", 5, &err) != 0);
  CHECK_CONTAINS(drpc_error_message(&err), "RPC worker name w1 is not unique");
  drpc_error_clear(&err);
  CHECK(join(&dup, "w5", 2, &err) != 0);
  CHECK_CONTAINS(drpc_error_message(&err), "RPC worker id 2 is not unique");
  drpc_error_clear(&err);
  CHECK_EQ_INT((int)drpc_agent_num_members(w0.a), 3);

  /* A static member cannot join a dynamic group. */
  drpc_net *net = NULL;
  drpc_store *base = NULL, *st = NULL;
  drpc_agent *sa = NULL;
  drpc_net_config nc;
  drpc_net_config_default(&nc);
  CHECK_EQ_INT(drpc_net_new(&net, &nc, &err), 0);
  CHECK_EQ_INT(drpc_store_tcp_new(&base, "127.0.0.1", port, 5, &err), 0);
  st = drpc_store_prefix_new(base, "rpc_dynamic");
  CHECK(drpc_agent_start(&sa, st, "s0", 0, 2, NULL, drpc_net_env(net), &err) !=
        0);
  CHECK_CONTAINS(drpc_error_message(&err),
                 "RPC group mixes statically and dynamically initialized "
                 "members which is not supported. Static group property is "
                 "initialized as false and is trying to be set as true");
  drpc_error_clear(&err);
  drpc_net_stop(net);
  drpc_net_free(net);
  drpc_store_decref(st);
  drpc_store_decref(base);

  /* w2 leaves: the others drop it at once; calls to it fail naming it. */
  CHECK_EQ_INT(leave(&w2), 0);
  CHECK(!lists(w0.a, "w2"));
  CHECK(!lists(w1.a, "w2"));
  CHECK(echo(w0.a, "w2", 1, &err) != 0);
  CHECK_EQ_INT(err.code, DRPC_ENOTFOUND);
  CHECK_CONTAINS(drpc_error_message(&err), "w2");
  CHECK_CONTAINS(drpc_error_message(&err), "has left the group");
  drpc_error_clear(&err);
  CHECK_EQ_INT((int)metric(w0.a, "agent.membership_epoch"), 4);
  /* Its rank is free again. */
  CHECK_EQ_INT(join(&w2, "w2b", 2, &err), 0);
  CHECK_EQ_INT(echo(w0.a, "w2b", 3, &err), 0);
  /* Any worker may leave, rank 0 first (the store runs on its own here):
   * the rest keep calling each other, and a newcomer still joins. */
  CHECK_EQ_INT(leave(&w0), 0);
  CHECK(!lists(w1.a, "w0") && !lists(w2.a, "w0"));
  CHECK_EQ_INT(echo(w1.a, "w2b", 4, &err), 0);
  member w3;
  CHECK_EQ_INT(join(&w3, "w3", 3, &err), 0);
  CHECK_EQ_INT(echo(w3.a, "w1", 5, &err), 0);
  CHECK_EQ_INT(echo(w2.a, "w3", 6, &err), 0);
  CHECK_EQ_INT((int)drpc_agent_num_members(w1.a), 3);
  CHECK_EQ_INT(leave(&w2), 0);
  CHECK_EQ_INT(leave(&w3), 0);
  CHECK_EQ_INT(leave(&w1), 0);
  drpc_error_clear(&err);
  drpc_store_server_stop(server);
}

/* A caller thread keeps calls in flight to w1 while w3 comes and goes. */
typedef struct pump {
  drpc_agent *a;
  _Atomic bool stop;
  _Atomic int ok, failed;
} pump;

static void *pump_run(void *arg) {
  pump *p = arg;
  int64_t i = 0;
  while (!atomic_load(&p->stop)) {
    drpc_future *f[4] = {0};
    drpc_error err = DRPC_ERROR_INIT;
    for (int k = 0; k < 4; k++) {
      drpc_value *args = drpc_value_list_of(1, drpc_value_int(i++));
      if (drpc_rpc_async(p->a, "w1", DRPC_FUNCTION, "echo", args, NULL, 10,
                         &f[k], &err))
        atomic_fetch_add(&p->failed, 1);
      drpc_error_clear(&err);
      drpc_value_free(args);
    }
    for (int k = 0; k < 4; k++) {
      if (!f[k])
        continue;
      if (drpc_future_wait(f[k], 20) == 0 && drpc_future_error(f[k], &err) == 0)
        atomic_fetch_add(&p->ok, 1);
      else
        atomic_fetch_add(&p->failed, 1);
      drpc_error_clear(&err);
      drpc_future_decref(f[k]);
    }
  }
  return NULL;
}

static void test_cycles(void) {
  start_store();
  drpc_error err = DRPC_ERROR_INIT;
  member w0, w1, w3;
  CHECK_EQ_INT(join(&w0, "w0", 0, &err), 0);
  CHECK_EQ_INT(join(&w1, "w1", 1, &err), 0);
  pump p = {.a = w0.a};
  pthread_t th;
  CHECK_EQ_INT(pthread_create(&th, NULL, pump_run, &p), 0);
  int bad = 0;
  for (int c = 0; c < 20; c++) {
    if (join(&w3, "w3", 3, &err)) {
      fprintf(stderr, "  cycle %d: join: %s\n", c, drpc_error_message(&err));
      bad++;
      drpc_error_clear(&err);
      continue;
    }
    /* Calls both ways while the pump runs, some left in flight at leave. */
    drpc_future *f = NULL;
    drpc_value *args = drpc_value_list_of(1, drpc_value_float(0.05));
    if (drpc_rpc_async(w3.a, "w0", DRPC_FUNCTION, "sleep", args, NULL, 10, &f,
                       &err))
      bad++;
    drpc_value_free(args);
    if (echo(w0.a, "w3", c, &err) || echo(w3.a, "w1", c, &err) ||
        echo(w1.a, "w3", c, &err)) {
      fprintf(stderr, "  cycle %d: %s\n", c, drpc_error_message(&err));
      bad++;
    }
    drpc_error_clear(&err);
    /* Leave waits for w3's own call (the sleep) first. */
    if (leave(&w3))
      bad++;
    if (f) {
      CHECK(drpc_future_done(f));
      CHECK_EQ_INT(drpc_future_error(f, NULL), 0);
      drpc_future_decref(f);
    }
    if (lists(w0.a, "w3") || lists(w1.a, "w3"))
      bad++;
  }
  atomic_store(&p.stop, true);
  pthread_join(th, NULL);
  CHECK_EQ_INT(bad, 0);
  CHECK(atomic_load(&p.ok) > 0);
  CHECK_EQ_INT(atomic_load(&p.failed), 0);
  /* 2 joins + 20 joins and 20 leaves. */
  CHECK_EQ_INT((int)metric(w0.a, "agent.membership_epoch"), 42);
  CHECK_EQ_INT((int)metric(w0.a, "agent.client_active_calls"), 0);
  CHECK_EQ_INT((int)drpc_agent_num_members(w1.a), 2);
  CHECK_EQ_INT(leave(&w1), 0);
  CHECK_EQ_INT(leave(&w0), 0);
  drpc_error_clear(&err);
  drpc_store_server_stop(server);
}

static void test_sigkill(void) {
  start_store();
  drpc_error err = DRPC_ERROR_INIT;
  member w0, w1, w2;
  CHECK_EQ_INT(join(&w0, "w0", 0, &err), 0);
  CHECK_EQ_INT(join(&w1, "w1", 1, &err), 0);
  CHECK_EQ_INT(join(&w2, "w2", 2, &err), 0);
  /* A `drpc worker` without --world-size joins the dynamic group. */
  char init[64], errp[256];
  snprintf(init, sizeof init, "tcp://127.0.0.1:%d", port);
  it_tmp_path(errp, sizeof errp, "member-w9.err");
  char *argv[] = {
      (char *)it_drpc_bin(), "worker", "--name", "w9", "--rank", "9",
      "--init-method",       init,     NULL};
  pid_t pid = it_spawn(argv, NULL, NULL, errp, 60);
  CHECK(pid > 0);
  double t0 = it_now();
  while (!(lists(w0.a, "w9") && lists(w1.a, "w9") && lists(w2.a, "w9")) &&
         it_now() - t0 < 20)
    it_sleep(0.02);
  CHECK(lists(w0.a, "w9"));
  CHECK_EQ_INT(echo(w1.a, "w9", 99, &err), 0);
  drpc_error_clear(&err);

  kill(pid, SIGKILL);
  int st = 0;
  CHECK(it_wait(pid, 10, &st));
  double t1 = it_now();
  while ((lists(w0.a, "w9") || lists(w1.a, "w9") || lists(w2.a, "w9")) &&
         it_now() - t1 < 15)
    it_sleep(0.02);
  double took = it_now() - t1;
  CHECK(!lists(w0.a, "w9"));
  CHECK(!lists(w1.a, "w9"));
  CHECK(!lists(w2.a, "w9"));
  fprintf(stderr, "  w9 removed %.2f s after SIGKILL\n", took);
  /* The rest keep working, and calls to w9 fail naming it. */
  CHECK_EQ_INT(echo(w0.a, "w1", 1, &err), 0);
  CHECK_EQ_INT(echo(w2.a, "w0", 2, &err), 0);
  CHECK(echo(w1.a, "w9", 3, &err) != 0);
  CHECK_CONTAINS(drpc_error_message(&err), "w9");
  drpc_error_clear(&err);
  CHECK_EQ_INT((int)drpc_agent_num_members(w0.a), 3);

  /* A member that stops answering without losing a connection (SIGSTOP)
   * is found by the heartbeats: removed within a few member timeouts. */
  char *argv8[] = {
      (char *)it_drpc_bin(), "worker", "--name", "w8", "--rank", "8",
      "--init-method",       init,     NULL};
  pid = it_spawn(argv8, NULL, NULL, errp, 60);
  t0 = it_now();
  while (!(lists(w0.a, "w8") && lists(w1.a, "w8") && lists(w2.a, "w8")) &&
         it_now() - t0 < 20)
    it_sleep(0.02);
  CHECK(lists(w2.a, "w8"));
  CHECK_EQ_INT(echo(w0.a, "w8", 8, &err), 0);
  kill(pid, SIGSTOP);
  t1 = it_now();
  while ((lists(w0.a, "w8") || lists(w1.a, "w8") || lists(w2.a, "w8")) &&
         it_now() - t1 < 20)
    it_sleep(0.02);
  took = it_now() - t1;
  CHECK(!lists(w0.a, "w8") && !lists(w1.a, "w8") && !lists(w2.a, "w8"));
  fprintf(stderr, "  w8 (stopped) removed %.2f s after SIGSTOP\n", took);
  /* member_timeout_s 1.5: a heartbeat within 0.5 s, its timeout 1.5 s, a
   * probe of 1.5 s, then the removal. */
  CHECK(took < 8);
  kill(pid, SIGKILL);
  kill(pid, SIGCONT);
  CHECK(it_wait(pid, 10, &st));
  CHECK_EQ_INT(echo(w1.a, "w2", 4, &err), 0);
  drpc_error_clear(&err);

  /* A static worker (drpc worker --world-size) against the dynamic
   * group's store: the reference's mixing error, at once. */
  char *argvs[] = {
      (char *)it_drpc_bin(), "worker", "--name",        "s1", "--rank", "1",
      "--world-size",        "2",      "--init-method", init, NULL};
  char serr[2048] = "";
  CHECK_EQ_INT(it_run(argvs, NULL, 30, NULL, 0, serr, sizeof serr), 1);
  CHECK_CONTAINS(serr, "RPC group mixes statically and dynamically "
                       "initialized members which is not supported");
  CHECK_EQ_INT(leave(&w2), 0);
  CHECK_EQ_INT(leave(&w1), 0);
  CHECK_EQ_INT(leave(&w0), 0);
  drpc_store_server_stop(server);
}

/* Rank stays required for a dynamic worker. */
static void test_rank_required(void) {
  drpc_error err = DRPC_ERROR_INIT;
  int64_t rank = -1, world = -1;
  drpc_store *st = NULL;
  drpc_store_server *srv = NULL;
  CHECK(drpc_store_from_init_method("tcp://127.0.0.1:1", &rank, &world, 1, &st,
                                    &srv, &err) != 0);
  CHECK_CONTAINS(drpc_error_message(&err), "rank parameter missing");
  drpc_error_clear(&err);
}

int main(void) {
  it_setup(240);
  it_register_functions();
  RUN(test_rank_required);
  RUN(test_join_and_call);
  RUN(test_cycles);
  RUN(test_sigkill);
  return test_finish();
}
