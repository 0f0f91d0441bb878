/* Unit tests for core/profiler.c through the deterministic test env: the
 * remote-profiling key, remote events renamed and stamped with the callee's
 * node id, user events recorded on the callee, unprofiled calls unchanged
 * on the wire, nested server-side ranges and the GIL-wait metric. */
#include "drpc/drpc.h"

#include "test.h"
#include "testenv.h"

#include <stdarg.h>

#define MS 1000000ull

/* core/internal.h: rpc_async with the label rpc_sync gives its key. */
int drpc_agent_call_labelled(drpc_agent *a, int16_t dst, int kind,
                             const char *fn, const drpc_value *args,
                             const drpc_value *kwargs, double timeout_s,
                             const char *label, drpc_future **fut,
                             drpc_error *err);

static tnet N;
static drpc_store *S;
static drpc_registry *R;
static const char *const NAMES[] = {"w0", "w1", "w2"};

static drpc_agent *ag(int i) {
  return N.nodes[i].agent;
}

static void up(int world) {
  tnet_init(&N);
  N.auto_run_jobs = true;
  for (int i = 0; i < world; i++)
    tnet_node(&N);
  S = tnet_store(&N, world, NAMES);
  drpc_options o;
  drpc_options_default(&o);
  o.registry = R;
  for (int i = 0; i < world; i++) {
    drpc_error err = DRPC_ERROR_INIT;
    int rc = drpc_agent_start(&N.nodes[i].agent, S, NAMES[i], i, world, &o,
                              &N.nodes[i].env, &err);
    CHECK_EQ_INT(rc, 0);
    drpc_error_clear(&err);
  }
}

static void down(void) {
  N.on_send = NULL;
  tnet_run(&N, 1000000);
  for (int i = 0; i < N.nnodes; i++)
    if (ag(i))
      drpc_agent_shutdown(ag(i), false, 0, NULL);
  tnet_run(&N, 1000000);
  for (int i = 0; i < N.nnodes; i++) {
    drpc_agent *a = ag(i);
    N.nodes[i].agent = NULL;
    drpc_agent_free(a);
  }
  drpc_store_decref(S);
  tnet_free(&N);
}

/* t::echo returns its first argument; t::work records two nested events
 * and moves the clock so they have a length. */
static drpc_value *fn_echo(drpc_call *call, const drpc_value *args,
                           const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)kwargs;
  (void)err;
  const drpc_value *v = drpc_list_at(args, 0);
  return v ? drpc_value_clone(v) : drpc_value_nil();
}

static drpc_value *fn_work(drpc_call *call, const drpc_value *args,
                           const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)args;
  (void)kwargs;
  (void)err;
  drpc_profiler_record_begin("outer");
  N.now_ns += 2 * MS;
  drpc_profiler_record_begin("inner");
  N.now_ns += 3 * MS;
  drpc_profiler_record_end("inner");
  drpc_profiler_record_end("outer");
  return drpc_value_int(7);
}

/* Frames sent: the flags of every CALL and RESPONSE, in order. */
static int ncalls, nflagged_calls, nresp, nflagged_resp;
static void watch(void *user, int from, int to, const uint8_t *buf,
                  size_t len) {
  (void)user;
  (void)from;
  (void)to;
  if (len < 8)
    return;
  uint16_t flags = (uint16_t)(buf[6] | buf[7] << 8);
  if (buf[5] == DRPC_MSG_CALL) {
    ncalls++;
    nflagged_calls += flags != 0;
  } else if (buf[5] == DRPC_MSG_RESPONSE) {
    nresp++;
    nflagged_resp += flags != 0;
  }
}

static void reset_watch(void) {
  ncalls = nflagged_calls = nresp = nflagged_resp = 0;
  N.on_send = watch;
}

static drpc_future *call(int from, const char *dst, const char *fn,
                         drpc_value *args) {
  drpc_future *f = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_rpc_async(ag(from), dst, DRPC_FUNCTION, fn, args, NULL, -1, &f,
                          &err);
  CHECK_EQ_INT(rc, 0);
  drpc_error_clear(&err);
  drpc_value_free(args);
  return f;
}

static const drpc_profiler_event *find(const drpc_profiler_events *e,
                                       const char *name) {
  for (size_t i = 0; i < e->n; i++)
    if (strcmp(e->events[i].name, name) == 0)
      return &e->events[i];
  return NULL;
}

static void test_remote_profiling(void) {
  up(2);
  reset_watch();
  drpc_profiler *p = drpc_profiler_new(ag(0));
  CHECK(p != NULL);
  drpc_profiler_enable(p);
  drpc_future *f =
      call(0, "w1", "t::echo", drpc_value_list_of(1, drpc_value_int(5)));
  drpc_future *g = call(0, "w1", "t::work", drpc_value_list());
  drpc_profiler_disable(p);
  tnet_run(&N, 100000);
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_future_error(f, &err), 0);
  const drpc_value *v = drpc_future_value(f);
  CHECK(v && v->kind == DRPC_VAL_INT && v->u.i == 5);
  CHECK_EQ_INT(drpc_future_error(g, &err), 0);
  v = drpc_future_value(g);
  CHECK(v && v->kind == DRPC_VAL_INT && v->u.i == 7);
  CHECK_EQ_INT(nflagged_calls, 2);
  CHECK_EQ_INT(nflagged_resp, 2);

  drpc_profiler_events ev = {0};
  CHECK_EQ_INT(drpc_profiler_events_get(p, &ev), 0);
  /* echo: local + function; work: local + function + outer + inner. */
  CHECK_EQ_INT(ev.n, 6);
  const drpc_profiler_event *k = find(&ev, "rpc_async#t::echo(w0 -> w1)");
  CHECK(k && !k->is_remote && k->node_id == 0);
  const drpc_profiler_event *r =
      find(&ev, "rpc_async#t::echo(w0 -> w1)#remote_op: t::echo");
  CHECK(r && r->is_remote && r->node_id == 1);
  const drpc_profiler_event *w =
      find(&ev, "rpc_async#t::work(w0 -> w1)#remote_op: t::work");
  const drpc_profiler_event *o =
      find(&ev, "rpc_async#t::work(w0 -> w1)#remote_op: outer");
  const drpc_profiler_event *i =
      find(&ev, "rpc_async#t::work(w0 -> w1)#remote_op: inner");
  CHECK(w && o && i);
  if (w && o && i) {
    CHECK(o->is_remote && i->is_remote && o->node_id == 1);
    CHECK_EQ_INT(o->end_ns - o->start_ns, 5 * MS);
    CHECK_EQ_INT(i->end_ns - i->start_ns, 3 * MS);
    CHECK(w->start_ns <= o->start_ns && o->start_ns <= i->start_ns &&
          i->end_ns <= o->end_ns && o->end_ns <= w->end_ns);
  }
  drpc_profiler_events_free(&ev);
  CHECK(ev.n == 0 && ev.events == NULL);
  drpc_future_decref(f);
  drpc_future_decref(g);

  /* Disabled: no flag, no events. */
  reset_watch();
  f = call(0, "w1", "t::echo", drpc_value_list_of(1, drpc_value_int(1)));
  tnet_run(&N, 100000);
  CHECK_EQ_INT(ncalls, 1);
  CHECK_EQ_INT(nflagged_calls, 0);
  CHECK_EQ_INT(nresp, 1);
  CHECK_EQ_INT(nflagged_resp, 0);
  CHECK_EQ_INT(drpc_profiler_events_get(p, &ev), 0);
  CHECK_EQ_INT(ev.n, 6);
  drpc_profiler_events_free(&ev);
  drpc_future_decref(f);
  drpc_profiler_free(p);
  drpc_error_clear(&err);
  down();
}

static void test_sync_key_and_node_id(void) {
  up(2);
  drpc_profiler *p = drpc_profiler_new(ag(0));
  drpc_profiler_enable(p);
  /* A user event recorded on the caller's thread goes to its profiler. */
  drpc_profiler_record_begin("local_block");
  N.now_ns += MS;
  drpc_profiler_record_end(NULL);
  drpc_profiler_disable(p);
  drpc_profiler_events ev = {0};
  CHECK_EQ_INT(drpc_profiler_events_get(p, &ev), 0);
  CHECK_EQ_INT(ev.n, 1);
  if (ev.n == 1) {
    CHECK_STR_EQ(ev.events[0].name, "local_block");
    CHECK_EQ_INT(ev.events[0].node_id, 0);
    CHECK_EQ_INT(ev.events[0].end_ns - ev.events[0].start_ns, MS);
  }
  drpc_profiler_events_free(&ev);
  /* rpc_sync's label (rpc_sync itself would block this single-threaded
   * env), and the node id override stamping every later event. */
  drpc_set_profiler_node_id(9);
  CHECK_EQ_INT(drpc_profiler_node_id(), 9);
  drpc_profiler_enable(p);
  drpc_future *f = NULL;
  drpc_value *args = drpc_value_list_of(1, drpc_value_int(5));
  CHECK_EQ_INT(drpc_agent_call_labelled(ag(0), 1, DRPC_FUNCTION, "t::echo",
                                        args, NULL, -1, "rpc_sync", &f, NULL),
               0);
  drpc_value_free(args);
  drpc_profiler_disable(p);
  tnet_run(&N, 100000);
  CHECK(f && drpc_future_done(f));
  CHECK_EQ_INT(drpc_profiler_events_get(p, &ev), 0);
  CHECK_EQ_INT(ev.n, 3);
  CHECK(find(&ev, "rpc_sync#t::echo(w0 -> w1)") != NULL);
  CHECK(find(&ev, "rpc_sync#t::echo(w0 -> w1)#remote_op: t::echo") != NULL);
  for (size_t i = 1; i < ev.n; i++) /* [0]: local_block, from before */
    CHECK_EQ_INT(ev.events[i].node_id, 9);
  drpc_profiler_events_free(&ev);
  drpc_set_profiler_node_id(-1); /* back to the agents' ids */
  drpc_future_decref(f);
  drpc_profiler_free(p);
  down();
}

static void test_server_ranges(void) {
  up(3);
  reset_watch();
  CHECK_EQ_INT(drpc_server_profiler_disable(ag(1), NULL, NULL), DRPC_EINVAL);
  CHECK_EQ_INT(drpc_server_profiler_enable(ag(1)), 0); /* outer */
  drpc_future *f1 = call(0, "w1", "t::echo", drpc_value_list());
  tnet_run(&N, 100000);
  CHECK_EQ_INT(drpc_server_profiler_enable(ag(1)), 0); /* inner */
  drpc_future *f2 = call(2, "w1", "t::work", drpc_value_list());
  tnet_run(&N, 100000);
  drpc_profiler_events *inner = NULL, *outer = NULL;
  size_t ni = 0, no = 0;
  CHECK_EQ_INT(drpc_server_profiler_disable(ag(1), &inner, &ni), 0);
  drpc_future *f3 = call(0, "w1", "t::echo", drpc_value_list());
  tnet_run(&N, 100000);
  CHECK_EQ_INT(drpc_server_profiler_disable(ag(1), &outer, &no), 0);
  /* Unflagged on the wire: the server ranges are local. */
  CHECK_EQ_INT(nflagged_calls, 0);
  CHECK_EQ_INT(nflagged_resp, 0);
  CHECK_EQ_INT(ni, 1);
  if (ni == 1) {
    CHECK_EQ_INT(inner[0].n, 3); /* t::work, outer, inner */
    CHECK(find(&inner[0], "t::work") && find(&inner[0], "inner"));
    CHECK_EQ_INT(inner[0].events[0].node_id, 1);
  }
  CHECK_EQ_INT(no, 3);
  if (no == 3) {
    CHECK_EQ_INT(outer[0].n, 1);
    CHECK_STR_EQ(outer[0].events[0].name, "t::echo");
    CHECK_EQ_INT(outer[1].n, 3);
    CHECK_EQ_INT(outer[2].n, 1);
  }
  drpc_profiler_events_free_all(inner, ni);
  drpc_profiler_events_free_all(outer, no);
  /* Nothing open any more. */
  CHECK_EQ_INT(drpc_server_profiler_disable(ag(1), &outer, &no), DRPC_EINVAL);
  CHECK(outer == NULL && no == 0);
  drpc_future_decref(f1);
  drpc_future_decref(f2);
  drpc_future_decref(f3);
  down();
}

static const char *metric_str(drpc_agent *a, const char *key, char *buf,
                              size_t n) {
  drpc_value *m = drpc_agent_metrics(a);
  const drpc_value *v = drpc_dict_get(m, key);
  const char *r = NULL;
  if (v && v->kind == DRPC_VAL_STR) {
    snprintf(buf, n, "%s", v->u.s.data);
    r = buf;
  }
  drpc_value_free(m);
  return r;
}

static bool numeric(const char *s) {
  if (!s || !*s)
    return false;
  for (; *s; s++)
    if (*s < '0' || *s > '9')
      return false;
  return true;
}

static void test_gil_metric(void) {
  up(2);
  char buf[64];
  const char *key = "agent.gil_average_wait_time_us";
  CHECK(metric_str(ag(1), key, buf, sizeof buf) == NULL);
  drpc_agent_enable_gil_profiling(ag(1), true);
  const char *s = metric_str(ag(1), key, buf, sizeof buf);
  CHECK(numeric(s));
  /* A request that waits 4 ms between arrival and its run. */
  N.auto_run_jobs = false;
  drpc_future *f = call(0, "w1", "t::echo", drpc_value_list());
  tnet_run(&N, 100000);
  N.now_ns += 4 * MS;
  while (tnet_run_job(&N))
    tnet_run(&N, 100000);
  N.auto_run_jobs = true;
  tnet_run(&N, 100000);
  CHECK(drpc_future_done(f));
  s = metric_str(ag(1), key, buf, sizeof buf);
  CHECK(numeric(s));
  if (s)
    CHECK_EQ_INT(atoll(s), 4000);
  drpc_agent_enable_gil_profiling(ag(1), false);
  CHECK(metric_str(ag(1), key, buf, sizeof buf) == NULL);
  drpc_future_decref(f);
  down();
}

int main(void) {
  R = drpc_registry_new();
  drpc_register_function(R, "t::echo", fn_echo, NULL);
  drpc_register_function(R, "t::work", fn_work, NULL);
  RUN(test_remote_profiling);
  RUN(test_sync_key_and_node_id);
  RUN(test_server_ranges);
  RUN(test_gil_metric);
  drpc_registry_free(R);
  return test_finish();
}
