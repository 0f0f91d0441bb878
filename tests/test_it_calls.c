/* Integration: four worker processes over loopback for each init method
 * (tcp://, file://, env://), with workers started both by fork (drpc_init
 * in the child) and by exec of `drpc worker --plugin`; the driver (w0)
 * makes calls of every kind between them, then all four shut down
 * gracefully and exit 0. */
#include <math.h>
#include <stdbool.h>
#include <unistd.h>

#include "test.h"

#include "it_util.h"

#define WORLD 4
/* w3 runs with one worker thread: async execution must not deadlock. */
#define SINGLE_THREADED "w3"

typedef struct scenario {
  const char *label;
  const char *scheme; /* "tcp", "file", "env" */
  it_style styles[WORLD];
  char init[256];
  char file[200];
  char env[WORLD][4][64];
} scenario;

/* ---- helpers for the driver ------------------------------------------- */

static drpc_value *call(drpc_agent *a, const char *dst, drpc_call_kind kind,
                        const char *fn, drpc_value *args, drpc_value *kwargs,
                        int *rc, drpc_error *err) {
  drpc_value *out = NULL;
  drpc_error_clear(err);
  *rc = drpc_rpc_sync(a, dst, kind, fn, args, kwargs, 20, &out, err);
  drpc_value_free(args);
  drpc_value_free(kwargs);
  if (*rc)
    fprintf(stderr, "  %s on %s: %s\n", fn, dst, drpc_error_message(err));
  return out;
}

static bool is_str(const drpc_value *v, const char *s) {
  return v && v->kind == DRPC_VAL_STR && strcmp(v->u.s.data, s) == 0;
}

static double num(const drpc_value *v) {
  if (!v)
    return NAN;
  if (v->kind == DRPC_VAL_INT)
    return (double)v->u.i;
  if (v->kind == DRPC_VAL_FLOAT)
    return v->u.f;
  if (v->kind == DRPC_VAL_TENSOR && drpc_tensor_numel(v->u.t) == 1)
    return drpc_tensor_get_f64(v->u.t, 0);
  return NAN;
}

static drpc_value *strs(int n, const char *const *s) {
  drpc_value *l = drpc_value_list();
  for (int i = 0; i < n; i++)
    drpc_list_append(l, drpc_value_str(s[i]));
  return l;
}

/* ---- the driver's checks ----------------------------------------------- */

static void check_workers(drpc_agent *a) {
  size_t n = 0;
  const drpc_worker_info *ws = drpc_agent_workers(a, &n);
  CHECK_EQ_INT(n, WORLD);
  for (size_t i = 0; i < n && i < WORLD; i++) {
    char name[8];
    snprintf(name, sizeof name, "w%zu", i);
    CHECK_STR_EQ(ws[i].name, name);
    CHECK_EQ_INT(ws[i].id, i);
  }
  CHECK_STR_EQ(drpc_agent_self(a)->name, "w0");
}

static void check_builtins(drpc_agent *a) {
  drpc_error err = DRPC_ERROR_INIT;
  int rc;
  int64_t s23[2] = {2, 3}, s32[2] = {3, 2};
  drpc_tensor *x = it_tensor_f32(2, s23, NULL); /* 0..5 */
  drpc_tensor *y = it_tensor_f32(2, s32, NULL); /* 0..5 */

  drpc_value *v =
      call(a, "w1", DRPC_BUILTIN, "aten::add",
           drpc_value_list_of(2, drpc_value_tensor(x), drpc_value_float(10)),
           NULL, &rc, &err);
  CHECK_EQ_INT(rc, 0);
  for (int i = 0; i < 6; i++)
    CHECK(it_tensor_at(v, i) == 10.0 + i);
  drpc_value_free(v);

  /* kwargs on a builtin: add(x, x, alpha=3) = 4x. */
  drpc_value *kw = drpc_value_dict();
  drpc_dict_set(kw, "alpha", drpc_value_int(3));
  v = call(a, "w2", DRPC_BUILTIN, "aten::add",
           drpc_value_list_of(2, drpc_value_tensor(x), drpc_value_tensor(x)),
           kw, &rc, &err);
  CHECK_EQ_INT(rc, 0);
  for (int i = 0; i < 6; i++)
    CHECK(it_tensor_at(v, i) == 4.0 * i);
  drpc_value_free(v);

  v = call(a, "w2", DRPC_BUILTIN, "aten::mul",
           drpc_value_list_of(2, drpc_value_tensor(x), drpc_value_tensor(x)),
           NULL, &rc, &err);
  CHECK_EQ_INT(rc, 0);
  for (int i = 0; i < 6; i++)
    CHECK(it_tensor_at(v, i) == (double)i * i);
  drpc_value_free(v);

  /* [[0,1,2],[3,4,5]] @ [[0,1],[2,3],[4,5]] = [[10,13],[28,40]]. */
  v = call(a, "w3", DRPC_BUILTIN, "aten::matmul",
           drpc_value_list_of(2, drpc_value_tensor(x), drpc_value_tensor(y)),
           NULL, &rc, &err);
  CHECK_EQ_INT(rc, 0);
  CHECK(v && v->kind == DRPC_VAL_TENSOR && v->u.t->ndim == 2 &&
        v->u.t->shape[0] == 2 && v->u.t->shape[1] == 2);
  CHECK(it_tensor_at(v, 0) == 10 && it_tensor_at(v, 1) == 13 &&
        it_tensor_at(v, 2) == 28 && it_tensor_at(v, 3) == 40);
  drpc_value_free(v);

  /* A builtin on self, and scalars. */
  v = call(a, "w0", DRPC_BUILTIN, "aten::sub",
           drpc_value_list_of(2, drpc_value_int(100), drpc_value_int(58)), NULL,
           &rc, &err);
  CHECK_EQ_INT(rc, 0);
  CHECK(num(v) == 42);
  drpc_value_free(v);

  /* Bad builtin arguments fail remotely, naming the node. */
  v = call(a, "w3", DRPC_BUILTIN, "aten::matmul",
           drpc_value_list_of(2, drpc_value_tensor(x), drpc_value_tensor(x)),
           NULL, &rc, &err);
  CHECK(rc != 0 && v == NULL);
  CHECK_CONTAINS(err.msg, "Error on Node 3: ");
  CHECK_CONTAINS(err.msg, "matmul");

  drpc_tensor_decref(x);
  drpc_tensor_decref(y);
  drpc_error_clear(&err);
}

static void check_functions(drpc_agent *a) {
  drpc_error err = DRPC_ERROR_INIT;
  int rc;
  int64_t s4[1] = {4};
  float vals[4] = {1, 2, 3, 4};
  drpc_tensor *x = it_tensor_f32(1, s4, vals);

  drpc_value *kw = drpc_value_dict();
  drpc_dict_set(kw, "scale", drpc_value_float(2));
  drpc_dict_set(kw, "shift", drpc_value_float(1));
  drpc_value *v =
      call(a, "w1", DRPC_FUNCTION, "t::affine",
           drpc_value_list_of(1, drpc_value_tensor(x)), kw, &rc, &err);
  CHECK_EQ_INT(rc, 0);
  for (int i = 0; i < 4; i++)
    CHECK(it_tensor_at(v, i) == 2.0 * vals[i] + 1);
  drpc_value_free(v);

  kw = drpc_value_dict();
  drpc_dict_set(kw, "scale", drpc_value_int(4));
  v = call(a, "w2", DRPC_FUNCTION, "t::affine",
           drpc_value_list_of(1, drpc_value_int(3)), kw, &rc, &err);
  CHECK_EQ_INT(rc, 0);
  CHECK(num(v) == 12);
  drpc_value_free(v);

  /* Arguments of every kind arrive intact, and the callee sees who
   * called. */
  drpc_value *args = drpc_value_list_of(
      6, drpc_value_int(-7), drpc_value_str("two"),
      drpc_value_list_of(3, drpc_value_float(3.5), drpc_value_nil(),
                         drpc_value_bool(true)),
      drpc_value_bytes("\0\1\2", 3), drpc_value_tensor(x),
      drpc_value_worker(2, "w2"));
  kw = drpc_value_dict();
  drpc_dict_set(kw, "alpha", drpc_value_int(1));
  drpc_dict_set(kw, "name", drpc_value_str("x"));
  drpc_value *sent_args = drpc_value_clone(args);
  drpc_value *sent_kw = drpc_value_clone(kw);
  for (int w = 0; w < WORLD; w++) {
    char dst[8];
    snprintf(dst, sizeof dst, "w%d", w);
    v = call(a, dst, DRPC_FUNCTION, "t::describe", drpc_value_clone(args),
             drpc_value_clone(kw), &rc, &err);
    CHECK_EQ_INT(rc, 0);
    CHECK(is_str(drpc_dict_get(v, "self"), dst));
    CHECK(is_str(drpc_dict_get(v, "caller"), "w0"));
    CHECK(num(drpc_dict_get(v, "caller_id")) == 0);
    CHECK(drpc_value_equal(drpc_dict_get(v, "args"), sent_args));
    CHECK(drpc_value_equal(drpc_dict_get(v, "kwargs"), sent_kw));
    drpc_value_free(v);
  }
  drpc_value_free(args);
  drpc_value_free(kw);
  drpc_value_free(sent_args);
  drpc_value_free(sent_kw);

  /* A 4 MiB tensor there and back, and as a sink. */
  int64_t big[1] = {1 << 20};
  drpc_tensor *t = it_tensor_f32(1, big, NULL);
  v = call(a, "w2", DRPC_FUNCTION, "echo",
           drpc_value_list_of(1, drpc_value_tensor(t)), NULL, &rc, &err);
  CHECK_EQ_INT(rc, 0);
  CHECK(v && v->kind == DRPC_VAL_TENSOR && drpc_tensor_equal(v->u.t, t));
  drpc_value_free(v);
  v = call(a, "w3", DRPC_FUNCTION, "nbytes",
           drpc_value_list_of(1, drpc_value_tensor(t)), NULL, &rc, &err);
  CHECK_EQ_INT(rc, 0);
  CHECK(num(v) == 4.0 * (1 << 20));
  drpc_value_free(v);
  drpc_tensor_decref(t);
  drpc_tensor_decref(x);
  drpc_error_clear(&err);
}

static void check_self_and_ids(drpc_agent *a) {
  drpc_error err = DRPC_ERROR_INIT;
  int rc;
  drpc_value *v = call(a, "w0", DRPC_FUNCTION, "whoami", NULL, NULL, &rc, &err);
  CHECK_EQ_INT(rc, 0);
  CHECK(is_str(v, "w0"));
  drpc_value_free(v);
  for (int id = 0; id < WORLD; id++) {
    drpc_future *f = NULL;
    rc = drpc_rpc_async_id(a, (int16_t)id, DRPC_FUNCTION, "whoami", NULL, NULL,
                           DRPC_UNSET_RPC_TIMEOUT, &f, &err);
    CHECK_EQ_INT(rc, 0);
    const drpc_value *r = NULL;
    CHECK_EQ_INT(drpc_future_get(f, 20, &r, &err), 0);
    char name[8];
    snprintf(name, sizeof name, "w%d", id);
    CHECK(is_str(r, name));
    drpc_future_decref(f);
  }
  drpc_error_clear(&err);
}

static void check_fanout(drpc_agent *a) {
  enum { PER_PEER = 40, N = PER_PEER * WORLD };
  drpc_future *fs[N];
  drpc_error err = DRPC_ERROR_INIT;
  size_t issued = 0;
  for (int i = 0; i < N; i++) {
    char dst[8];
    snprintf(dst, sizeof dst, "w%d", i % WORLD);
    drpc_value *args = drpc_value_list_of(1, drpc_value_int(i * 7));
    int rc = drpc_rpc_async(a, dst, DRPC_FUNCTION, "echo", args, NULL, 20,
                            &fs[issued], &err);
    drpc_value_free(args);
    CHECK_EQ_INT(rc, 0);
    if (rc == 0)
      issued++;
  }
  CHECK_EQ_INT(drpc_future_wait_all(fs, issued, 30, &err), 0);
  int right = 0;
  for (size_t i = 0; i < issued; i++) {
    const drpc_value *r = drpc_future_value(fs[i]);
    right += r && r->kind == DRPC_VAL_INT && r->u.i == (int64_t)i * 7;
    drpc_future_decref(fs[i]);
  }
  CHECK_EQ_INT(right, N);
  drpc_error_clear(&err);
}

static void check_nested(drpc_agent *a) {
  drpc_error err = DRPC_ERROR_INIT;
  int rc;
  /* w1 blocks in rpc_sync(w2, aten::add) inside a function. */
  drpc_value *v = call(
      a, "w1", DRPC_FUNCTION, "forward",
      drpc_value_list_of(4, drpc_value_str("w2"), drpc_value_str("aten::add"),
                         drpc_value_int(40), drpc_value_int(2)),
      NULL, &rc, &err);
  CHECK_EQ_INT(rc, 0);
  CHECK(num(v) == 42);
  drpc_value_free(v);
  /* Two levels: w1 -> w2 -> w3. */
  const char *chain[] = {"w2", "forward", "w3", "whoami"};
  v = call(a, "w1", DRPC_FUNCTION, "forward", strs(4, chain), NULL, &rc, &err);
  CHECK_EQ_INT(rc, 0);
  CHECK(is_str(v, "w3"));
  drpc_value_free(v);
  /* A nested call back to the original caller. */
  const char *back[] = {"w0", "whoami"};
  v = call(a, "w2", DRPC_FUNCTION, "forward", strs(2, back), NULL, &rc, &err);
  CHECK_EQ_INT(rc, 0);
  CHECK(is_str(v, "w0"));
  drpc_value_free(v);
  drpc_error_clear(&err);
}

static void check_async_single_thread(drpc_agent *a) {
  drpc_error err = DRPC_ERROR_INIT;
  int rc;
  /* w3 has one worker thread. A nested call to itself needs that thread
   * again: async execution frees it. */
  const char *self_call[] = {SINGLE_THREADED, "whoami"};
  double t0 = it_now();
  drpc_value *v = call(a, SINGLE_THREADED, DRPC_FUNCTION, "async_forward",
                       strs(2, self_call), NULL, &rc, &err);
  CHECK_EQ_INT(rc, 0);
  CHECK(is_str(v, SINGLE_THREADED));
  drpc_value_free(v);
  /* w3 -> w1 (blocking forward) -> back into w3. */
  const char *round_trip[] = {"w1", "forward", SINGLE_THREADED, "whoami"};
  v = call(a, SINGLE_THREADED, DRPC_FUNCTION, "async_forward",
           strs(4, round_trip), NULL, &rc, &err);
  CHECK_EQ_INT(rc, 0);
  CHECK(is_str(v, SINGLE_THREADED));
  drpc_value_free(v);
  /* Several at once, each sleeping on w3's one thread in turn. */
  enum { K = 6 };
  drpc_future *fs[K];
  size_t issued = 0;
  for (int i = 0; i < K; i++) {
    drpc_value *args =
        drpc_value_list_of(3, drpc_value_str(SINGLE_THREADED),
                           drpc_value_str("sleep"), drpc_value_float(0.05));
    if (drpc_rpc_async(a, SINGLE_THREADED, DRPC_FUNCTION, "async_forward", args,
                       NULL, 20, &fs[issued], &err) == 0)
      issued++;
    drpc_value_free(args);
  }
  CHECK_EQ_INT(issued, K);
  CHECK_EQ_INT(drpc_future_wait_all(fs, issued, 20, &err), 0);
  for (size_t i = 0; i < issued; i++)
    drpc_future_decref(fs[i]);
  CHECK(it_now() - t0 < 10);
  drpc_error_clear(&err);
}

static void check_errors(drpc_agent *a) {
  drpc_error err = DRPC_ERROR_INIT;
  int rc;
  drpc_value *v =
      call(a, "w2", DRPC_FUNCTION, "raise",
           drpc_value_list_of(1, drpc_value_str("boom")), NULL, &rc, &err);
  CHECK_EQ_INT(rc, DRPC_EUSER);
  CHECK_STR_EQ(err.msg, "Error on Node 2: boom");
  drpc_value_free(v);

  v = call(a, "w1", DRPC_FUNCTION, "nope", NULL, NULL, &rc, &err);
  CHECK_EQ_INT(rc, DRPC_ENOTFOUND);
  CHECK_STR_EQ(err.msg,
               "Error on Node 1: function 'nope' is not registered on worker "
               "w1");

  /* Errors travel back through nested and async calls. */
  const char *nested[] = {"w2", "raise", "deep"};
  v = call(a, "w1", DRPC_FUNCTION, "forward", strs(3, nested), NULL, &rc, &err);
  CHECK(rc != 0 && v == NULL);
  CHECK_CONTAINS(err.msg, "Error on Node 1: ");
  CHECK_CONTAINS(err.msg, "Error on Node 2: deep");
  const char *async_nested[] = {"w2", "raise", "deeper"};
  v = call(a, SINGLE_THREADED, DRPC_FUNCTION, "async_forward",
           strs(3, async_nested), NULL, &rc, &err);
  CHECK(rc != 0 && v == NULL);
  CHECK_CONTAINS(err.msg, "Error on Node 2: deeper");

  /* A failed future keeps its error on every wait. */
  drpc_future *f = NULL;
  drpc_value *args = drpc_value_list_of(1, drpc_value_str("again"));
  CHECK_EQ_INT(
      drpc_rpc_async(a, "w3", DRPC_FUNCTION, "raise", args, NULL, 20, &f, &err),
      0);
  drpc_value_free(args);
  for (int i = 0; f && i < 2; i++) {
    CHECK_EQ_INT(drpc_future_get(f, 20, NULL, &err), DRPC_EUSER);
    CHECK_STR_EQ(err.msg, "Error on Node 3: again");
  }
  drpc_future_decref(f);

  /* Local errors: nothing is sent. */
  v = call(a, "w9", DRPC_FUNCTION, "whoami", NULL, NULL, &rc, &err);
  CHECK_EQ_INT(rc, DRPC_ENOTFOUND);
  CHECK_STR_EQ(err.msg, "name:w0,rank:0 could not find destination name w9");
  f = NULL;
  rc = drpc_rpc_async_id(a, 9, DRPC_FUNCTION, "whoami", NULL, NULL, -1, &f,
                         &err);
  CHECK_EQ_INT(rc, DRPC_ENOTFOUND);
  CHECK(f == NULL);
  CHECK_STR_EQ(err.msg, "name:w0,rank:0 could not find destination id 9");
  v = call(a, "w1", DRPC_BUILTIN, "aten::nope", NULL, NULL, &rc, &err);
  CHECK_EQ_INT(rc, DRPC_ENOTFOUND);
  v = call(a, "w1", DRPC_FUNCTION, "whoami", NULL, NULL, &rc, &err);
  CHECK_EQ_INT(rc, 0);
  drpc_value_free(v);
  rc =
      drpc_rpc_sync(a, "w1", DRPC_FUNCTION, "whoami", NULL, NULL, -5, &v, &err);
  CHECK_EQ_INT(rc, DRPC_EINVAL);
  CHECK_CONTAINS(err.msg, "RPC Timeout must be non-negative");
  drpc_error_clear(&err);
}

static void check_metrics(drpc_agent *a) {
  drpc_value *m = drpc_agent_metrics(a);
  CHECK(is_str(drpc_dict_get(m, "agent.thread_pool_size"), "4"));
  /* The count drops just after the last future completes (on the loop
   * thread), so give it a moment. */
  for (int i = 0;
       i < 100 && !is_str(drpc_dict_get(m, "agent.client_active_calls"), "0");
       i++) {
    drpc_value_free(m);
    it_sleep(0.01);
    m = drpc_agent_metrics(a);
  }
  CHECK(is_str(drpc_dict_get(m, "agent.client_active_calls"), "0"));
  drpc_value_free(m);
}

/* ---- processes ---------------------------------------------------------- */

static void set_env(const scenario *s, int rank) {
  for (int i = 0; i < 4 && s->env[rank][i][0]; i++)
    putenv((char *)s->env[rank][i]);
}

static void driver(void *arg) {
  const scenario *s = arg;
  set_env(s, 0);
  it_register_functions();
  drpc_options o;
  drpc_options_default(&o);
  o.init_method = s->init;
  o.num_worker_threads = 4;
  drpc_error err = DRPC_ERROR_INIT;
  bool env = strcmp(s->scheme, "env") == 0;
  double t0 = it_now();
  drpc_agent *a = it_init_driver("w0", env ? -1 : 0, env ? 0 : WORLD, &o, &err);
  CHECK(a != NULL);
  if (!a) {
    fprintf(stderr, "  drpc_init: %s\n", drpc_error_message(&err));
    drpc_error_clear(&err);
    return;
  }
  fprintf(stderr, "  [%s] group up in %.2f s\n", s->label, it_now() - t0);
  check_workers(a);
  check_builtins(a);
  check_functions(a);
  check_self_and_ids(a);
  check_fanout(a);
  check_nested(a);
  check_async_single_thread(a);
  check_errors(a);
  check_metrics(a);
  t0 = it_now();
  CHECK_EQ_INT(drpc_shutdown(a, true, 20, &err), 0);
  if (err.code)
    fprintf(stderr, "  shutdown: %s\n", drpc_error_message(&err));
  CHECK(drpc_current_agent() == NULL);
  fprintf(stderr, "  [%s] graceful shutdown in %.2f s\n", s->label,
          it_now() - t0);
  drpc_error_clear(&err);
}

static void prepare(scenario *s) {
  memset(s->env, 0, sizeof s->env);
  if (strcmp(s->scheme, "tcp") == 0) {
    snprintf(s->init, sizeof s->init, "tcp://127.0.0.1:%d", it_free_port());
  } else if (strcmp(s->scheme, "file") == 0) {
    it_tmp_path(s->file, sizeof s->file, "store");
    snprintf(s->init, sizeof s->init, "file://%s", s->file);
  } else {
    snprintf(s->init, sizeof s->init, "env://");
    int port = it_free_port();
    for (int r = 0; r < WORLD; r++) {
      snprintf(s->env[r][0], 64, "MASTER_ADDR=127.0.0.1");
      snprintf(s->env[r][1], 64, "MASTER_PORT=%d", port);
      snprintf(s->env[r][2], 64, "RANK=%d", r);
      snprintf(s->env[r][3], 64, "WORLD_SIZE=%d", WORLD);
    }
  }
}

static void run_scenario(scenario *s) {
  for (int attempt = 0; attempt < IT_PORT_ATTEMPTS; attempt++) {
    prepare(s);
    bool env = strcmp(s->scheme, "env") == 0;
    pid_t pids[WORLD];
    it_worker w[WORLD];
    char names[WORLD][8];
    for (int r = 1; r < WORLD; r++) {
      it_worker_default(&w[r]);
      snprintf(names[r], sizeof names[r], "w%d", r);
      w[r].name = names[r];
      w[r].style = s->styles[r];
      w[r].init_method = s->init;
      if (!env) {
        w[r].rank = r;
        w[r].world = WORLD;
      }
      for (int i = 0; i < 4; i++)
        w[r].env[i] = s->env[r][i][0] ? s->env[r][i] : NULL;
      w[r].threads = strcmp(names[r], SINGLE_THREADED) == 0 ? 1 : 4;
      pids[r] = it_start_worker(&w[r]);
      CHECK(pids[r] > 0);
    }
    double t0 = it_now();
    it_checked d = it_fork_checked(s->label, driver, s, 55);
    int code = it_join_watch(&d, 55, pids + 1, WORLD - 1);
    if (code == IT_EXIT_RETRY) {
      for (int r = 1; r < WORLD; r++)
        it_kill(pids[r]);
      continue;
    }
    /* Every worker leaves by itself once the group agreed to stop. */
    for (int r = 1; r < WORLD; r++) {
      int st = 0;
      bool ended = it_wait(pids[r], 15, &st);
      CHECK(ended);
      CHECK(ended && it_exited_ok(st));
      if (!ended || !it_exited_ok(st))
        fprintf(stderr, "  [%s] w%d: %s, code %d\n", s->label, r,
                ended ? "ended" : "still running", it_exit_code(st));
      it_kill(pids[r]);
    }
    fprintf(stderr, "  [%s] done in %.2f s\n", s->label, it_now() - t0);
    if (s->file[0])
      unlink(s->file);
    return;
  }
  CHECK(!"the rendezvous port was taken on every attempt");
}

static void test_tcp_forked(void) {
  scenario s = {.label = "tcp", .scheme = "tcp"};
  for (int r = 0; r < WORLD; r++)
    s.styles[r] = IT_FORK;
  run_scenario(&s);
}

static void test_file_exec(void) {
  scenario s = {.label = "file", .scheme = "file"};
  for (int r = 0; r < WORLD; r++)
    s.styles[r] = IT_EXEC;
  run_scenario(&s);
}

static void test_env_mixed(void) {
  scenario s = {.label = "env", .scheme = "env"};
  s.styles[1] = IT_FORK;
  s.styles[2] = IT_EXEC;
  s.styles[3] = IT_EXEC;
  run_scenario(&s);
}

int main(void) {
  it_setup(110);
  RUN(test_tcp_forked);
  RUN(test_file_exec);
  RUN(test_env_mixed);
  return test_finish();
}
