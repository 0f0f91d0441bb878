/* Integration: the profiler over real TCP and threads. A forked worker w1
 * serves the test functions; the driver w0 profiles rpc_sync / rpc_async
 * calls to w1 (local key events plus the callee's events, renamed and
 * stamped with node id 1), serves calls to itself under nested server
 * ranges, and reports the GIL-wait metric while enabled. */
#include <stdbool.h>
#include <unistd.h>

#include "test.h"

#include "it_util.h"

#define WORLD 2

static const drpc_profiler_event *find(const drpc_profiler_events *e,
                                       const char *name) {
  for (size_t i = 0; i < e->n; i++)
    if (strcmp(e->events[i].name, name) == 0)
      return &e->events[i];
  return NULL;
}

static void check_remote(drpc_agent *a) {
  drpc_profiler *p = drpc_profiler_new(a);
  CHECK(p != NULL);
  drpc_error err = DRPC_ERROR_INIT;
  drpc_value *out = NULL;
  drpc_profiler_enable(p);
  int rc = drpc_rpc_sync(a, "w1", DRPC_FUNCTION, "t::pid", NULL, NULL, 20, &out,
                         &err);
  CHECK_EQ_INT(rc, 0);
  drpc_value_free(out);
  drpc_future *f = NULL;
  drpc_value *args =
      drpc_value_list_of(2, drpc_value_int(1), drpc_value_int(2));
  rc = drpc_rpc_async(a, "w1", DRPC_BUILTIN, "aten::add", args, NULL, 20, &f,
                      &err);
  drpc_value_free(args);
  CHECK_EQ_INT(rc, 0);
  drpc_profiler_disable(p);
  CHECK_EQ_INT(drpc_future_get(f, 20, NULL, &err), 0);
  drpc_future_decref(f);
  /* Unprofiled: adds nothing. */
  rc = drpc_rpc_sync(a, "w1", DRPC_FUNCTION, "t::pid", NULL, NULL, 20, &out,
                     &err);
  drpc_value_free(out);
  drpc_profiler_events ev = {0};
  CHECK_EQ_INT(drpc_profiler_events_get(p, &ev), 0);
  CHECK_EQ_INT(ev.n, 4);
  const drpc_profiler_event *k = find(&ev, "rpc_sync#t::pid(w0 -> w1)");
  const drpc_profiler_event *r =
      find(&ev, "rpc_sync#t::pid(w0 -> w1)#remote_op: t::pid");
  CHECK(k && !k->is_remote && k->node_id == 0);
  CHECK(r && r->is_remote && r->node_id == 1 && r->end_ns >= r->start_ns);
  CHECK(find(&ev, "rpc_async#aten::add(w0 -> w1)") != NULL);
  CHECK(find(&ev, "rpc_async#aten::add(w0 -> w1)#remote_op: aten::add") !=
        NULL);
  drpc_profiler_events_free(&ev);
  drpc_profiler_free(p);
  drpc_error_clear(&err);
}

static void check_server_and_gil(drpc_agent *a) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_value *out = NULL;
  drpc_agent_enable_gil_profiling(a, true);
  CHECK_EQ_INT(drpc_server_profiler_enable(a), 0);
  CHECK_EQ_INT(drpc_rpc_sync(a, "w0", DRPC_FUNCTION, "t::pid", NULL, NULL, 20,
                             &out, &err),
               0);
  drpc_value_free(out);
  CHECK_EQ_INT(drpc_server_profiler_enable(a), 0);
  CHECK_EQ_INT(drpc_rpc_sync(a, "w0", DRPC_FUNCTION, "t::pid", NULL, NULL, 20,
                             &out, &err),
               0);
  drpc_value_free(out);
  drpc_profiler_events *inner = NULL, *outer = NULL;
  size_t ni = 0, no = 0;
  CHECK_EQ_INT(drpc_server_profiler_disable(a, &inner, &ni), 0);
  CHECK_EQ_INT(drpc_server_profiler_disable(a, &outer, &no), 0);
  CHECK_EQ_INT(ni, 1);
  CHECK_EQ_INT(no, 2);
  if (ni == 1 && inner[0].n == 1)
    CHECK_STR_EQ(inner[0].events[0].name, "t::pid");
  drpc_profiler_events_free_all(inner, ni);
  drpc_profiler_events_free_all(outer, no);
  drpc_value *m = drpc_agent_metrics(a);
  const drpc_value *g = drpc_dict_get(m, "agent.gil_average_wait_time_us");
  CHECK(g && g->kind == DRPC_VAL_STR && g->u.s.len > 0);
  drpc_value_free(m);
  drpc_agent_enable_gil_profiling(a, false);
  m = drpc_agent_metrics(a);
  CHECK(drpc_dict_get(m, "agent.gil_average_wait_time_us") == NULL);
  drpc_value_free(m);
  drpc_error_clear(&err);
}

static char init_method[64];

static void driver(void *arg) {
  (void)arg;
  it_register_functions();
  drpc_options o;
  drpc_options_default(&o);
  o.init_method = init_method;
  drpc_error err = DRPC_ERROR_INIT;
  drpc_agent *a = it_init_driver("w0", 0, WORLD, &o, &err);
  CHECK(a != NULL);
  if (!a) {
    fprintf(stderr, "  drpc_init: %s\n", drpc_error_message(&err));
    drpc_error_clear(&err);
    return;
  }
  check_remote(a);
  check_server_and_gil(a);
  CHECK_EQ_INT(drpc_shutdown(a, true, 20, &err), 0);
  drpc_error_clear(&err);
}

static void test_profiler_tcp(void) {
  for (int attempt = 0; attempt < IT_PORT_ATTEMPTS; attempt++) {
    snprintf(init_method, sizeof init_method, "tcp://127.0.0.1:%d",
             it_free_port());
    it_worker w;
    it_worker_default(&w);
    w.name = "w1";
    w.rank = 1;
    w.world = WORLD;
    w.init_method = init_method;
    w.style = IT_FORK;
    pid_t pid = it_start_worker(&w);
    CHECK(pid > 0);
    it_checked d = it_fork_checked("profiler", driver, NULL, 55);
    int code = it_join_watch(&d, 55, &pid, 1);
    if (code == IT_EXIT_RETRY) {
      it_kill(pid);
      continue;
    }
    int st = 0;
    bool ended = it_wait(pid, 15, &st);
    CHECK(ended && it_exited_ok(st));
    it_kill(pid);
    return;
  }
  CHECK(!"the rendezvous port was taken on every attempt");
}

int main(void) {
  it_setup(60);
  RUN(test_profiler_tcp);
  return test_finish();
}
