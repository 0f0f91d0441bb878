/* Unit tests for core/agent.c through the deterministic test env: calls,
 * errors, timeouts on a manual clock, connections breaking and refusing,
 * async-execution functions, metrics, malformed input, shutdown and
 * byte-for-byte determinism. Times are literal: the clock moves only when a
 * test says so. */
#include "drpc/drpc.h"

#include "test.h"
#include "testenv.h"

#include <math.h>
#include <stdarg.h>

#define MS 1000000ull

/* ---- a small cluster in one tnet -------------------------------------- */

static tnet N;
static drpc_store *S;
static drpc_registry *R;
static int WORLD;
static const char *const NAMES[] = {"w0", "w1", "w2", "w3"};

static drpc_agent *ag(int i) {
  return N.nodes[i].agent;
}

/* Starts `started` of `world` workers (the others are named in the store
 * but never run), on nodes 0..world-1, plus `extra` nodes without agents. */
static void up_partial(int world, int started, int extra,
                       const drpc_options *opts) {
  tnet_init(&N);
  WORLD = world;
  for (int i = 0; i < world + extra; i++)
    tnet_node(&N);
  S = tnet_store(&N, world, NAMES);
  drpc_options o;
  if (opts)
    o = *opts;
  else
    drpc_options_default(&o);
  o.registry = R;
  for (int i = 0; i < started; i++) {
    drpc_error err = DRPC_ERROR_INIT;
    int rc = drpc_agent_start(&N.nodes[i].agent, S, NAMES[i], i, world, &o,
                              &N.nodes[i].env, &err);
    if (rc)
      fprintf(stderr, "start %s: %s\n", NAMES[i], drpc_error_message(&err));
    CHECK_EQ_INT(rc, 0);
    drpc_error_clear(&err);
  }
}

static void up(int world) {
  up_partial(world, world, 0, NULL);
}

/* Stops everything ungracefully, drains the env and frees it all. */
static void down(void) {
  N.auto_run_jobs = true;
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

static drpc_value *ints(int n, ...) {
  va_list ap;
  va_start(ap, n);
  drpc_value *l = drpc_value_list();
  for (int i = 0; i < n; i++)
    drpc_list_append(l, drpc_value_int(va_arg(ap, int)));
  va_end(ap);
  return l;
}

static drpc_future *call(int from, const char *dst, drpc_call_kind kind,
                         const char *fn, const drpc_value *args,
                         const drpc_value *kwargs, double timeout_s) {
  drpc_future *f = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_rpc_async(ag(from), dst, kind, fn, args, kwargs, timeout_s, &f,
                          &err);
  if (rc)
    fprintf(stderr, "rpc_async: %s\n", drpc_error_message(&err));
  CHECK_EQ_INT(rc, 0);
  drpc_error_clear(&err);
  return f;
}

static int64_t int_of(const drpc_value *v) {
  return v && v->kind == DRPC_VAL_INT ? v->u.i : INT64_MIN;
}

/* The error code of a future, its message in msg (cleared by the caller). */
static int fut_err(drpc_future *f, drpc_error *msg) {
  drpc_error_clear(msg);
  return drpc_future_error(f, msg);
}

static long metric(drpc_agent *a, const char *key) {
  drpc_value *m = drpc_agent_metrics(a);
  const drpc_value *v = drpc_dict_get(m, key);
  long r = v && v->kind == DRPC_VAL_STR ? atol(v->u.s.data) : -999;
  drpc_value_free(m);
  return r;
}

/* The conns index of the connection node `from` dialed to node `to`. */
static int conn_between(int from, int to) {
  for (int i = 0; i < TNET_MAX_CONNS; i++)
    if (N.conns[i].used && !N.conns[i].closed && N.conns[i].from == from &&
        N.conns[i].to == to)
      return i;
  return -1;
}

/* ---- registered functions --------------------------------------------- */

/* Sums the int args plus kwargs["extra"] (when given). */
static drpc_value *fn_sum(drpc_call *call, const drpc_value *args,
                          const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  int64_t s = 0;
  for (size_t i = 0; i < drpc_value_len(args); i++) {
    const drpc_value *v = drpc_list_at(args, i);
    if (v->kind != DRPC_VAL_INT) {
      drpc_error_set(err, DRPC_ETYPE, "sum: argument %zu is not an int", i);
      return NULL;
    }
    s += v->u.i;
  }
  const drpc_value *extra = drpc_dict_get(kwargs, "extra");
  if (extra)
    s += extra->u.i;
  return drpc_value_int(s);
}

static drpc_value *fn_fail(drpc_call *call, const drpc_value *args,
                           const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)args;
  (void)kwargs;
  drpc_error_set(err, DRPC_EUSER, "boom");
  return NULL;
}

/* Who called, as the callee sees it. */
static drpc_value *fn_caller(drpc_call *call, const drpc_value *args,
                             const drpc_value *kwargs, drpc_error *err) {
  (void)args;
  (void)kwargs;
  (void)err;
  const drpc_worker_info *c = drpc_call_caller(call);
  return drpc_value_worker(c->id, c->name);
}

/* The callee's metrics, taken while this call runs on a worker thread. */
static drpc_value *fn_metrics(drpc_call *call, const drpc_value *args,
                              const drpc_value *kwargs, drpc_error *err) {
  (void)args;
  (void)kwargs;
  (void)err;
  return drpc_agent_metrics(drpc_call_agent(call));
}

/* Makes a nested blocking call from inside a function: w2's t::sum. */
static drpc_value *fn_nested_sync(drpc_call *call, const drpc_value *args,
                                  const drpc_value *kwargs, drpc_error *err) {
  (void)kwargs;
  drpc_value *res = NULL;
  if (drpc_rpc_sync(drpc_call_agent(call), "w2", DRPC_FUNCTION, "t::sum", args,
                    NULL, DRPC_UNSET_RPC_TIMEOUT, &res, err))
    return NULL;
  return res;
}

/* Async functions hand their futures here; the test completes them. */
static drpc_future *held[8];
static int nheld;

static drpc_future *afn_hold(drpc_call *call, const drpc_value *args,
                             const drpc_value *kwargs, drpc_error *err) {
  (void)args;
  (void)kwargs;
  (void)err;
  drpc_future *f = drpc_future_new(drpc_agent_env(drpc_call_agent(call)));
  drpc_future_incref(f); /* the test's reference */
  held[nheld++] = f;
  return f;
}

static int plus_one(drpc_future *f, void *arg, drpc_value **out,
                    drpc_error *err) {
  (void)arg;
  if (drpc_future_error(f, err))
    return err->code;
  *out = drpc_value_int(int_of(drpc_future_value(f)) + 1);
  return 0;
}

/* Calls w2's t::sum without blocking and answers its result plus one. */
static drpc_future *afn_nested(drpc_call *call, const drpc_value *args,
                               const drpc_value *kwargs, drpc_error *err) {
  (void)kwargs;
  drpc_future *inner = NULL;
  if (drpc_rpc_async(drpc_call_agent(call), "w2", DRPC_FUNCTION, "t::sum", args,
                     NULL, DRPC_UNSET_RPC_TIMEOUT, &inner, err))
    return NULL;
  drpc_future *outer = drpc_future_then(inner, plus_one, NULL);
  drpc_future_decref(inner);
  return outer;
}

static drpc_future *afn_null(drpc_call *call, const drpc_value *args,
                             const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)args;
  (void)kwargs;
  drpc_error_set(err, DRPC_EUSER, "no future for you");
  return NULL;
}

static drpc_future *afn_null_silent(drpc_call *call, const drpc_value *args,
                                    const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)args;
  (void)kwargs;
  (void)err;
  return NULL;
}

/* Answers at once with a completed future. */
static drpc_future *afn_ready(drpc_call *call, const drpc_value *args,
                              const drpc_value *kwargs, drpc_error *err) {
  (void)args;
  (void)kwargs;
  (void)err;
  drpc_future *f = drpc_future_new(drpc_agent_env(drpc_call_agent(call)));
  drpc_future_set_value(f, drpc_value_str("ready"));
  return f;
}

static void register_all(void) {
  R = drpc_registry_new();
  drpc_register_function(R, "t::sum", fn_sum, NULL);
  drpc_register_function(R, "t::fail", fn_fail, NULL);
  drpc_register_function(R, "t::caller", fn_caller, NULL);
  drpc_register_function(R, "t::metrics", fn_metrics, NULL);
  drpc_register_function(R, "t::nested_sync", fn_nested_sync, NULL);
  drpc_register_async_function(R, "t::hold", afn_hold, NULL);
  drpc_register_async_function(R, "t::nested", afn_nested, NULL);
  drpc_register_async_function(R, "t::null", afn_null, NULL);
  drpc_register_async_function(R, "t::null_silent", afn_null_silent, NULL);
  drpc_register_async_function(R, "t::ready", afn_ready, NULL);
}

/* ---- calls -------------------------------------------------------------- */

static void test_builtin_ints_and_tensors(void) {
  up(3);
  drpc_error err = DRPC_ERROR_INIT;
  drpc_value *res = NULL;
  drpc_value *args = ints(2, 2, 3);
  CHECK_EQ_INT(drpc_rpc_sync(ag(0), "w1", DRPC_BUILTIN, "aten::add", args, NULL,
                             DRPC_UNSET_RPC_TIMEOUT, &res, &err),
               0);
  CHECK_EQ_INT(int_of(res), 5);
  drpc_value_free(res);
  /* alpha as a kwarg: 2 + 10 * 3. */
  drpc_value *kw = drpc_value_dict();
  drpc_dict_set(kw, "alpha", drpc_value_int(10));
  CHECK_EQ_INT(drpc_rpc_sync(ag(2), "w1", DRPC_BUILTIN, "aten::add", args, kw,
                             DRPC_UNSET_RPC_TIMEOUT, &res, &err),
               0);
  CHECK_EQ_INT(int_of(res), 32);
  drpc_value_free(res);
  drpc_value_free(kw);
  drpc_value_free(args);

  const float a[4] = {1, 2, 3, 4}, b[4] = {10, 20, 30, 40};
  int64_t shape[2] = {2, 2};
  drpc_tensor *ta = drpc_tensor_from_data(DRPC_FLOAT32, 2, shape, a, true);
  drpc_tensor *tb = drpc_tensor_from_data(DRPC_FLOAT32, 2, shape, b, true);
  args = drpc_value_list_of(2, drpc_value_tensor(ta), drpc_value_tensor(tb));
  CHECK_EQ_INT(drpc_rpc_sync(ag(0), "w2", DRPC_BUILTIN, "aten::add", args, NULL,
                             DRPC_UNSET_RPC_TIMEOUT, &res, &err),
               0);
  CHECK(res && res->kind == DRPC_VAL_TENSOR);
  if (res && res->kind == DRPC_VAL_TENSOR) {
    drpc_tensor *t = res->u.t;
    CHECK_EQ_INT(t->dtype, DRPC_FLOAT32);
    CHECK_EQ_INT(t->ndim, 2);
    CHECK_EQ_INT(t->shape[0], 2);
    CHECK_EQ_INT(t->shape[1], 2);
    for (int i = 0; i < 4; i++)
      CHECK(drpc_tensor_get_f64(t, i) == a[i] + b[i]);
    /* The result is the callee's tensor, not one of ours. */
    CHECK(t != ta && t->storage != ta->storage && t->storage != tb->storage);
  }
  drpc_value_free(res);
  drpc_value_free(args);
  drpc_tensor_decref(ta);
  drpc_tensor_decref(tb);
  /* Two calls went to w1 and one to w2; each peer served what it got. */
  CHECK_EQ_INT(N.nodes[1].jobs_run, 2);
  CHECK_EQ_INT(N.nodes[2].jobs_run, 1);
  CHECK_EQ_INT(N.nodes[0].jobs_run, 0);
  drpc_error_clear(&err);
  down();
}

static void test_functions_args_kwargs(void) {
  up(3);
  drpc_error err = DRPC_ERROR_INIT;
  drpc_value *res = NULL;
  drpc_value *args = ints(3, 1, 2, 3);
  drpc_value *kw = drpc_value_dict();
  drpc_dict_set(kw, "extra", drpc_value_int(100));
  CHECK_EQ_INT(drpc_rpc_sync(ag(0), "w1", DRPC_FUNCTION, "t::sum", args, kw,
                             DRPC_UNSET_RPC_TIMEOUT, &res, &err),
               0);
  CHECK_EQ_INT(int_of(res), 106);
  drpc_value_free(res);
  /* No args and no kwargs: an empty list and dict reach the function. */
  CHECK_EQ_INT(drpc_rpc_sync(ag(0), "w1", DRPC_FUNCTION, "t::sum", NULL, NULL,
                             DRPC_UNSET_RPC_TIMEOUT, &res, &err),
               0);
  CHECK_EQ_INT(int_of(res), 0);
  drpc_value_free(res);
  /* The callee knows who called. */
  CHECK_EQ_INT(drpc_rpc_sync(ag(2), "w1", DRPC_FUNCTION, "t::caller", NULL,
                             NULL, DRPC_UNSET_RPC_TIMEOUT, &res, &err),
               0);
  CHECK(res && res->kind == DRPC_VAL_WORKER);
  if (res && res->kind == DRPC_VAL_WORKER) {
    CHECK_EQ_INT(res->u.w.id, 2);
    CHECK_STR_EQ(res->u.w.name, "w2");
  }
  drpc_value_free(res);
  /* By id as well as by name. */
  drpc_future *f = NULL;
  CHECK_EQ_INT(drpc_rpc_async_id(ag(0), 2, DRPC_FUNCTION, "t::sum", args, NULL,
                                 DRPC_UNSET_RPC_TIMEOUT, &f, &err),
               0);
  tnet_run(&N, 1000);
  CHECK_EQ_INT(int_of(drpc_future_value(f)), 6);
  drpc_future_decref(f);
  /* A nested blocking call from inside a function (w0 -> w1 -> w2). */
  CHECK_EQ_INT(drpc_rpc_sync(ag(0), "w1", DRPC_FUNCTION, "t::nested_sync", args,
                             NULL, DRPC_UNSET_RPC_TIMEOUT, &res, &err),
               0);
  CHECK_EQ_INT(int_of(res), 6);
  drpc_value_free(res);
  /* Arguments of the wrong shape are refused before anything is sent. */
  int sent = N.nodes[0].frames_sent;
  CHECK_EQ_INT(drpc_rpc_async(ag(0), "w1", DRPC_FUNCTION, "t::sum", kw, NULL,
                              DRPC_UNSET_RPC_TIMEOUT, &f, &err),
               DRPC_ETYPE);
  CHECK(f == NULL);
  CHECK_EQ_INT(drpc_rpc_async(ag(0), "w1", DRPC_FUNCTION, "t::sum", args, args,
                              DRPC_UNSET_RPC_TIMEOUT, &f, &err),
               DRPC_ETYPE);
  CHECK_EQ_INT(drpc_rpc_async(ag(0), "w1", DRPC_FUNCTION, "", args, NULL,
                              DRPC_UNSET_RPC_TIMEOUT, &f, &err),
               DRPC_EINVAL);
  tnet_run(&N, 1000);
  CHECK_EQ_INT(N.nodes[0].frames_sent, sent);
  drpc_value_free(args);
  drpc_value_free(kw);
  drpc_error_clear(&err);
  down();
}

static void test_call_self(void) {
  up(2);
  drpc_error err = DRPC_ERROR_INIT;
  drpc_value *res = NULL;
  drpc_value *args = ints(2, 40, 2);
  CHECK_EQ_INT(drpc_rpc_sync(ag(1), "w1", DRPC_BUILTIN, "aten::add", args, NULL,
                             DRPC_UNSET_RPC_TIMEOUT, &res, &err),
               0);
  CHECK_EQ_INT(int_of(res), 42);
  drpc_value_free(res);
  CHECK_EQ_INT(drpc_rpc_sync(ag(1), "w1", DRPC_FUNCTION, "t::caller", NULL,
                             NULL, DRPC_UNSET_RPC_TIMEOUT, &res, &err),
               0);
  CHECK(res && res->kind == DRPC_VAL_WORKER && res->u.w.id == 1);
  drpc_value_free(res);
  CHECK_EQ_INT(drpc_rpc_sync(ag(1), "w1", DRPC_FUNCTION, "t::fail", NULL, NULL,
                             DRPC_UNSET_RPC_TIMEOUT, &res, &err),
               DRPC_EUSER);
  CHECK_STR_EQ(err.msg, "Error on Node 1: boom");
  /* Calls to self never touch the network. */
  CHECK_EQ_INT(N.nodes[1].connects, 0);
  CHECK_EQ_INT(N.nodes[1].frames_sent, 0);
  CHECK_EQ_INT(N.nodes[1].jobs_run, 3);
  drpc_value_free(args);
  drpc_error_clear(&err);
  down();
}

static void test_unknown_destination_and_builtin(void) {
  up(2);
  drpc_error err = DRPC_ERROR_INIT;
  drpc_future *f = (drpc_future *)&err; /* poison: must come back NULL */
  CHECK_EQ_INT(drpc_rpc_async(ag(0), "w9", DRPC_BUILTIN, "aten::add", NULL,
                              NULL, DRPC_UNSET_RPC_TIMEOUT, &f, &err),
               DRPC_ENOTFOUND);
  CHECK_STR_EQ(err.msg, "name:w0,rank:0 could not find destination name w9");
  CHECK(f == NULL);
  CHECK_EQ_INT(drpc_rpc_async_id(ag(1), 9, DRPC_BUILTIN, "aten::add", NULL,
                                 NULL, DRPC_UNSET_RPC_TIMEOUT, &f, &err),
               DRPC_ENOTFOUND);
  CHECK_STR_EQ(err.msg, "name:w1,rank:1 could not find destination id 9");
  drpc_value *res = (drpc_value *)&err;
  CHECK_EQ_INT(drpc_rpc_sync(ag(0), "w9", DRPC_BUILTIN, "aten::add", NULL, NULL,
                             DRPC_UNSET_RPC_TIMEOUT, &res, &err),
               DRPC_ENOTFOUND);
  CHECK(res == NULL);
  drpc_worker_info wi;
  CHECK_EQ_INT(drpc_agent_worker_by_name(ag(0), "w1", &wi, &err), 0);
  CHECK_EQ_INT(wi.id, 1);
  CHECK_EQ_INT(drpc_agent_worker_by_id(ag(0), 0, &wi, &err), 0);
  CHECK_STR_EQ(wi.name, "w0");
  CHECK_EQ_INT(drpc_agent_worker_by_id(ag(0), -1, &wi, &err), DRPC_ENOTFOUND);
  size_t n = 0;
  const drpc_worker_info *all = drpc_agent_workers(ag(1), &n);
  CHECK_EQ_INT(n, 2);
  CHECK(all[0].id == 0 && all[1].id == 1);

  CHECK_EQ_INT(drpc_rpc_async(ag(0), "w1", DRPC_BUILTIN, "aten::nope", NULL,
                              NULL, DRPC_UNSET_RPC_TIMEOUT, &f, &err),
               DRPC_ENOTFOUND);
  CHECK_STR_EQ(err.msg, "unknown builtin operator 'aten::nope'");
  CHECK(f == NULL);
  tnet_run(&N, 1000);
  /* Refused before sending: nothing left the node, nothing is pending. */
  CHECK_EQ_INT(N.nodes[0].frames_sent, 0);
  CHECK_EQ_INT(N.nodes[0].connects, 0);
  CHECK_EQ_INT(metric(ag(0), "agent.client_active_calls"), 0);
  drpc_error_clear(&err);
  down();
}

static void test_remote_errors(void) {
  up(2);
  drpc_error err = DRPC_ERROR_INIT;
  drpc_value *res = NULL;
  CHECK_EQ_INT(drpc_rpc_sync(ag(0), "w1", DRPC_FUNCTION, "t::nope", NULL, NULL,
                             DRPC_UNSET_RPC_TIMEOUT, &res, &err),
               DRPC_ENOTFOUND);
  CHECK(err.msg && strncmp(err.msg, "Error on Node 1:", 16) == 0);
  CHECK_CONTAINS(err.msg, "t::nope");
  CHECK(res == NULL);
  CHECK_EQ_INT(drpc_rpc_sync(ag(0), "w1", DRPC_FUNCTION, "t::fail", NULL, NULL,
                             DRPC_UNSET_RPC_TIMEOUT, &res, &err),
               DRPC_EUSER);
  CHECK_STR_EQ(err.msg, "Error on Node 1: boom");
  /* A function's own error code travels. */
  drpc_value *bad = drpc_value_list_of(1, drpc_value_str("x"));
  CHECK_EQ_INT(drpc_rpc_sync(ag(0), "w1", DRPC_FUNCTION, "t::sum", bad, NULL,
                             DRPC_UNSET_RPC_TIMEOUT, &res, &err),
               DRPC_ETYPE);
  CHECK_STR_EQ(err.msg, "Error on Node 1: sum: argument 0 is not an int");
  /* A builtin that rejects its arguments fails the same way. */
  drpc_value *sargs =
      drpc_value_list_of(2, drpc_value_str("a"), drpc_value_int(1));
  CHECK(drpc_rpc_sync(ag(0), "w1", DRPC_BUILTIN, "aten::add", sargs, NULL,
                      DRPC_UNSET_RPC_TIMEOUT, &res, &err) != 0);
  CHECK(err.msg && strncmp(err.msg, "Error on Node 1: ", 17) == 0);
  CHECK_CONTAINS(err.msg, "aten::add");
  drpc_value_free(sargs);
  drpc_value_free(bad);
  /* The connection survives remote errors. */
  CHECK_EQ_INT(N.nodes[0].connects, 1);
  CHECK_EQ_INT(N.nodes[1].closes, 0);
  drpc_error_clear(&err);
  down();
}

/* ---- timeouts ------------------------------------------------------------ */

static void test_timeout_expires_at_deadline(void) {
  up(2);
  N.auto_run_jobs = false;
  drpc_value *args = ints(2, 1, 1);
  uint64_t t0 = N.now_ns;
  drpc_future *f = call(0, "w1", DRPC_BUILTIN, "aten::add", args, NULL, 0.05);
  tnet_run(&N, 1000); /* the call reaches w1; its job waits */
  CHECK_EQ_INT(N.nodes[1].jobs_run, 0);
  CHECK(N.nodes[0].timer_deadline == t0 + 50 * MS);
  tnet_advance_to(&N, t0 + 49 * MS);
  tnet_run(&N, 1000);
  CHECK(!drpc_future_done(f));
  tnet_advance_to(&N, t0 + 50 * MS);
  CHECK(drpc_future_done(f));
  drpc_error e = DRPC_ERROR_INIT;
  CHECK_EQ_INT(fut_err(f, &e), DRPC_ETIMEOUT);
  CHECK_STR_EQ(e.msg, "RPC ran for more than set timeout (50 ms) and will now "
                      "be marked with an error");
  CHECK_EQ_INT(metric(ag(0), "agent.client_active_calls"), 0);
  CHECK(N.nodes[0].timer_deadline == 0); /* nothing left to time */

  /* The callee runs the call late; its response is dropped harmlessly. */
  int errors = N.nodes[0].logs_error;
  int sent = N.nodes[1].frames_sent;
  CHECK(tnet_run_job(&N));
  tnet_run(&N, 1000);
  CHECK_EQ_INT(N.nodes[1].frames_sent, sent + 1); /* the response went out */
  CHECK_CONTAINS(N.nodes[0].last_log, "dropping late response to request 1");
  CHECK_EQ_INT(N.nodes[0].logs_error, errors);
  CHECK_EQ_INT(fut_err(f, &e), DRPC_ETIMEOUT); /* still the timeout */
  CHECK_EQ_INT(N.nodes[0].closes, 0);
  drpc_future_decref(f);

  /* The link still works. */
  N.auto_run_jobs = true;
  f = call(0, "w1", DRPC_BUILTIN, "aten::add", args, NULL, 0.05);
  tnet_run(&N, 1000);
  CHECK_EQ_INT(int_of(drpc_future_value(f)), 2);
  CHECK_EQ_INT(N.nodes[0].connects, 1);
  drpc_future_decref(f);
  drpc_value_free(args);
  drpc_error_clear(&e);
  down();
}

static void test_timeout_zero_and_defaults(void) {
  drpc_options o;
  drpc_options_default(&o);
  o.rpc_timeout_s = 1.0;
  up_partial(2, 2, 0, &o);
  N.auto_run_jobs = false;
  uint64_t t0 = N.now_ns;
  CHECK(drpc_agent_rpc_timeout(ag(0)) == 1.0);

  drpc_future *never = call(0, "w1", DRPC_FUNCTION, "t::sum", NULL, NULL, 0);
  drpc_future *dflt1 = call(0, "w1", DRPC_FUNCTION, "t::sum", NULL, NULL,
                            DRPC_UNSET_RPC_TIMEOUT);
  tnet_run(&N, 1000);
  /* Only later calls see a new default. */
  drpc_error e = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_agent_set_rpc_timeout(ag(0), 0.1, &e), 0);
  CHECK(drpc_agent_rpc_timeout(ag(0)) == 0.1);
  drpc_future *dflt2 = call(0, "w1", DRPC_FUNCTION, "t::sum", NULL, NULL,
                            DRPC_UNSET_RPC_TIMEOUT);
  tnet_run(&N, 1000);
  CHECK(N.nodes[0].timer_deadline == t0 + 100 * MS);

  tnet_advance_to(&N, t0 + 100 * MS);
  CHECK(drpc_future_done(dflt2));
  CHECK(!drpc_future_done(dflt1));
  CHECK_EQ_INT(fut_err(dflt2, &e), DRPC_ETIMEOUT);
  CHECK_CONTAINS(e.msg, "(100 ms)");
  CHECK(N.nodes[0].timer_deadline == t0 + 1000 * MS);
  tnet_advance_to(&N, t0 + 999 * MS);
  CHECK(!drpc_future_done(dflt1));
  tnet_advance_to(&N, t0 + 1000 * MS);
  CHECK_EQ_INT(fut_err(dflt1, &e), DRPC_ETIMEOUT);
  CHECK_CONTAINS(e.msg, "(1000 ms)");

  /* Timeout 0 never expires, however far the clock goes. */
  CHECK(N.nodes[0].timer_deadline == 0);
  tnet_advance_to(&N, t0 + 3600ull * 1000 * MS);
  CHECK(!drpc_future_done(never));
  CHECK_EQ_INT(metric(ag(0), "agent.client_active_calls"), 1);
  while (tnet_run_job(&N))
    tnet_run(&N, 1000);
  CHECK_EQ_INT(fut_err(never, &e), 0);
  CHECK_EQ_INT(int_of(drpc_future_value(never)), 0);

  /* A default of 0 makes unset calls never expire too. */
  CHECK_EQ_INT(drpc_agent_set_rpc_timeout(ag(0), 0, &e), 0);
  drpc_future *f = call(0, "w1", DRPC_FUNCTION, "t::sum", NULL, NULL,
                        DRPC_UNSET_RPC_TIMEOUT);
  tnet_run(&N, 1000);
  CHECK(N.nodes[0].timer_deadline == 0);
  drpc_future_decref(f);

  drpc_future_decref(never);
  drpc_future_decref(dflt1);
  drpc_future_decref(dflt2);
  drpc_error_clear(&e);
  down();
}

static void test_timeout_invalid(void) {
  up(2);
  drpc_error e = DRPC_ERROR_INIT;
  drpc_future *f = (drpc_future *)&e;
  CHECK_EQ_INT(drpc_rpc_async(ag(0), "w1", DRPC_BUILTIN, "aten::add", NULL,
                              NULL, -2, &f, &e),
               DRPC_EINVAL);
  CHECK_CONTAINS(e.msg, "RPC Timeout must be non-negative");
  CHECK(f == NULL);
  CHECK_EQ_INT(drpc_rpc_async(ag(0), "w1", DRPC_BUILTIN, "aten::add", NULL,
                              NULL, NAN, &f, &e),
               DRPC_EINVAL);
  CHECK_EQ_INT(drpc_agent_set_rpc_timeout(ag(0), -1, &e), DRPC_EINVAL);
  CHECK_CONTAINS(e.msg, "RPC Timeout must be non-negative");
  CHECK(drpc_agent_rpc_timeout(ag(0)) == 60.0); /* unchanged */
  CHECK_EQ_INT(metric(ag(0), "agent.client_active_calls"), 0);
  drpc_error_clear(&e);
  down();
}

/* Infinite and huge timeouts never expire; they must not wrap around into
 * a deadline in the past. */
static void test_timeout_huge(void) {
  up(2);
  N.auto_run_jobs = false;
  uint64_t t0 = N.now_ns;
  drpc_future *inf =
      call(0, "w1", DRPC_FUNCTION, "t::sum", NULL, NULL, INFINITY);
  drpc_future *big = call(0, "w1", DRPC_FUNCTION, "t::sum", NULL, NULL, 1e300);
  drpc_future *yrs = call(0, "w1", DRPC_FUNCTION, "t::sum", NULL, NULL, 1e11);
  tnet_run(&N, 1000);
  tnet_advance_to(&N, t0 + 3600ull * 1000 * MS);
  CHECK(!drpc_future_done(inf));
  CHECK(!drpc_future_done(big));
  CHECK(!drpc_future_done(yrs));
  while (tnet_run_job(&N))
    tnet_run(&N, 1000);
  CHECK_EQ_INT(drpc_future_error(inf, NULL), 0);
  CHECK_EQ_INT(drpc_future_error(big, NULL), 0);
  CHECK_EQ_INT(drpc_future_error(yrs, NULL), 0);
  drpc_error e = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_agent_set_rpc_timeout(ag(0), INFINITY, &e), 0);
  drpc_future *f = call(0, "w1", DRPC_FUNCTION, "t::sum", NULL, NULL,
                        DRPC_UNSET_RPC_TIMEOUT);
  tnet_run(&N, 1000);
  tnet_advance_to(&N, t0 + 7200ull * 1000 * MS);
  CHECK(!drpc_future_done(f));
  drpc_future_decref(f);
  drpc_future_decref(inf);
  drpc_future_decref(big);
  drpc_future_decref(yrs);
  drpc_error_clear(&e);
  down();
}

/* rpc_sync in the single-threaded env: the wait jumps the clock to the
 * agent's timer, so a call the callee never runs times out exactly. */
static void test_sync_wait_times_out(void) {
  up(2);
  N.auto_run_jobs = false;
  uint64_t t0 = N.now_ns;
  drpc_value *res = NULL;
  drpc_error e = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_rpc_sync(ag(0), "w1", DRPC_BUILTIN, "aten::add", NULL, NULL,
                             0.25, &res, &e),
               DRPC_ETIMEOUT);
  CHECK_CONTAINS(e.msg, "(250 ms)");
  CHECK(N.now_ns == t0 + 250 * MS);
  drpc_error_clear(&e);
  down();
}

/* ---- connections --------------------------------------------------------- */

static void test_broken_connection(void) {
  up(3);
  N.auto_run_jobs = false;
  drpc_value *args = ints(1, 7);
  drpc_future *to1a = call(0, "w1", DRPC_FUNCTION, "t::sum", args, NULL, 0);
  drpc_future *to1b = call(0, "w1", DRPC_FUNCTION, "t::sum", args, NULL, 0);
  drpc_future *to2 = call(0, "w2", DRPC_FUNCTION, "t::sum", args, NULL, 0);
  tnet_run(&N, 1000);
  CHECK_EQ_INT(metric(ag(0), "agent.client_active_calls"), 3);
  CHECK_EQ_INT(metric(ag(1), "agent.server_active_calls"), 2);

  tnet_break(&N, 0, 1);
  drpc_error e = DRPC_ERROR_INIT;
  CHECK(drpc_future_done(to1a) && drpc_future_done(to1b));
  CHECK_EQ_INT(fut_err(to1a, &e), DRPC_ECONN);
  CHECK_CONTAINS(e.msg, "w1");
  CHECK_STR_EQ(e.msg, "connection to w1 (id 1) lost: connection reset by test");
  CHECK_EQ_INT(fut_err(to1b, &e), DRPC_ECONN);
  CHECK(!drpc_future_done(to2)); /* other peers are unaffected */
  CHECK_EQ_INT(metric(ag(0), "agent.client_active_calls"), 1);

  /* w1 still runs the calls; their answers go nowhere. */
  while (tnet_run_job(&N))
    tnet_run(&N, 1000);
  CHECK_EQ_INT(int_of(drpc_future_value(to2)), 7);
  CHECK_EQ_INT(fut_err(to1a, &e), DRPC_ECONN);

  /* A later call dials again and succeeds. */
  N.auto_run_jobs = true;
  drpc_future *again = call(0, "w1", DRPC_FUNCTION, "t::sum", args, NULL, 0);
  tnet_run(&N, 1000);
  CHECK_EQ_INT(N.nodes[0].connects, 3); /* w1, w2, w1 again */
  CHECK_EQ_INT(fut_err(again, &e), 0);
  CHECK_EQ_INT(int_of(drpc_future_value(again)), 7);
  CHECK_EQ_INT(metric(ag(0), "agent.client_active_calls"), 0);

  /* A break before the connection opens fails the queued call too. */
  drpc_future *early = call(2, "w1", DRPC_FUNCTION, "t::sum", args, NULL, 0);
  tnet_run(&N, 1); /* the call command: w2 dials w1 */
  CHECK(!drpc_future_done(early));
  tnet_break(&N, 2, 1);
  CHECK_EQ_INT(fut_err(early, &e), DRPC_ECONN);
  CHECK_CONTAINS(e.msg, "w1");
  tnet_run(&N, 1000);
  CHECK_EQ_INT(N.nodes[1].jobs_run, 3); /* the queued call never arrived */

  drpc_future_decref(to1a);
  drpc_future_decref(to1b);
  drpc_future_decref(to2);
  drpc_future_decref(again);
  drpc_future_decref(early);
  drpc_value_free(args);
  drpc_error_clear(&e);
  down();
}

static void test_connection_refused(void) {
  up_partial(3, 2, 0, NULL); /* w2 is named in the store but never runs */
  drpc_error e = DRPC_ERROR_INIT;
  drpc_value *res = NULL;
  N.refuse_connect = true;
  CHECK_EQ_INT(drpc_rpc_sync(ag(0), "w1", DRPC_BUILTIN, "aten::add", NULL, NULL,
                             DRPC_UNSET_RPC_TIMEOUT, &res, &e),
               DRPC_ECONN);
  CHECK_STR_EQ(
      e.msg, "could not connect to w1 (id 1) at tnet://1: connection refused");
  CHECK_EQ_INT(metric(ag(0), "agent.client_active_calls"), 0);
  N.refuse_connect = false;
  drpc_value *args = ints(2, 1, 2);
  CHECK_EQ_INT(drpc_rpc_sync(ag(0), "w1", DRPC_BUILTIN, "aten::add", args, NULL,
                             DRPC_UNSET_RPC_TIMEOUT, &res, &e),
               0);
  CHECK_EQ_INT(int_of(res), 3);
  drpc_value_free(res);
  /* Nobody listens at w2's address. */
  CHECK_EQ_INT(drpc_rpc_sync(ag(0), "w2", DRPC_BUILTIN, "aten::add", args, NULL,
                             DRPC_UNSET_RPC_TIMEOUT, &res, &e),
               DRPC_ECONN);
  CHECK_CONTAINS(e.msg, "could not connect to w2 (id 2)");
  drpc_value_free(args);
  drpc_error_clear(&e);
  down();
}

/* ---- async execution ----------------------------------------------------- */

static void test_async_frees_worker(void) {
  up(2);
  N.auto_run_jobs = false;
  nheld = 0;
  drpc_future *f = call(0, "w1", DRPC_FUNCTION, "t::hold", NULL, NULL, 0);
  tnet_run(&N, 1000);
  CHECK_EQ_INT(metric(ag(1), "agent.server_active_calls"), 1);
  CHECK_EQ_INT(metric(ag(1), "agent.server_active_async_calls"), 0);
  int sent = N.nodes[1].frames_sent;

  /* The job returns at once: the thread is free, the call still open. */
  CHECK(tnet_run_job(&N));
  CHECK_EQ_INT(N.nodes[1].jobs_run, 1);
  CHECK_EQ_INT(N.nodes[1].jobs_running, 0);
  CHECK_EQ_INT(nheld, 1);
  tnet_run(&N, 1000);
  CHECK(!drpc_future_done(f));
  CHECK_EQ_INT(N.nodes[1].frames_sent, sent); /* no response yet */
  CHECK_EQ_INT(metric(ag(1), "agent.server_active_calls"), 1);
  CHECK_EQ_INT(metric(ag(1), "agent.server_active_async_calls"), 1);
  CHECK_EQ_INT(metric(ag(1), "agent.num_idle_threads"), TNET_POOL_SIZE);

  /* Completing the held future sends the response. */
  drpc_future_set_value(held[0], drpc_value_int(99));
  tnet_run(&N, 1000);
  CHECK_EQ_INT(N.nodes[1].frames_sent, sent + 1);
  CHECK_EQ_INT(int_of(drpc_future_value(f)), 99);
  CHECK_EQ_INT(metric(ag(1), "agent.server_active_calls"), 0);
  CHECK_EQ_INT(metric(ag(1), "agent.server_active_async_calls"), 0);
  drpc_future_decref(held[0]);
  drpc_future_decref(f);

  /* An error completing the future becomes the caller's error. */
  nheld = 0;
  f = call(0, "w1", DRPC_FUNCTION, "t::hold", NULL, NULL, 0);
  tnet_run(&N, 1000);
  tnet_run_job(&N);
  drpc_future_fail(held[0], DRPC_EIO, "disk on fire");
  tnet_run(&N, 1000);
  drpc_error e = DRPC_ERROR_INIT;
  CHECK_EQ_INT(fut_err(f, &e), DRPC_EIO);
  CHECK_STR_EQ(e.msg, "Error on Node 1: disk on fire");
  drpc_future_decref(held[0]);
  drpc_future_decref(f);

  /* A future that is complete on return answers at once. */
  N.auto_run_jobs = true;
  f = call(0, "w1", DRPC_FUNCTION, "t::ready", NULL, NULL, 0);
  tnet_run(&N, 1000);
  CHECK_EQ_INT(fut_err(f, &e), 0);
  const drpc_value *v = drpc_future_value(f);
  CHECK(v && v->kind == DRPC_VAL_STR);
  CHECK_STR_EQ(v ? v->u.s.data : NULL, "ready");
  CHECK_EQ_INT(metric(ag(1), "agent.server_active_async_calls"), 0);
  drpc_future_decref(f);
  drpc_error_clear(&e);
  down();
}

static void test_async_nested(void) {
  up(3);
  N.auto_run_jobs = false;
  drpc_value *args = ints(2, 20, 1);
  drpc_future *f = call(0, "w1", DRPC_FUNCTION, "t::nested", args, NULL, 0);
  tnet_run(&N, 1000);
  /* w1's job starts the nested call and returns before it is answered. */
  CHECK(tnet_run_job(&N));
  CHECK_EQ_INT(N.nodes[1].jobs_running, 0);
  CHECK_EQ_INT(N.nodes[2].jobs_run, 0);
  CHECK_EQ_INT(metric(ag(1), "agent.server_active_async_calls"), 1);
  CHECK_EQ_INT(metric(ag(1), "agent.client_active_calls"), 1);
  CHECK_EQ_INT(metric(ag(2), "agent.server_active_calls"), 0); /* posted */
  tnet_run(&N, 1000); /* the nested call reaches w2 */
  CHECK_EQ_INT(metric(ag(2), "agent.server_active_calls"), 1);
  CHECK(!drpc_future_done(f));
  CHECK(tnet_run_job(&N)); /* w2 answers */
  CHECK_EQ_INT(N.nodes[2].jobs_run, 1);
  tnet_run(&N, 1000);
  CHECK_EQ_INT(drpc_future_error(f, NULL), 0);
  CHECK_EQ_INT(int_of(drpc_future_value(f)), 22);
  CHECK_EQ_INT(metric(ag(1), "agent.server_active_async_calls"), 0);
  CHECK_EQ_INT(metric(ag(1), "agent.client_active_calls"), 0);
  CHECK(!tnet_run_job(&N));
  drpc_future_decref(f);

  /* The nested call fails: the error travels back through both hops. */
  N.auto_run_jobs = true;
  drpc_value *bad = drpc_value_list_of(1, drpc_value_str("x"));
  f = call(0, "w1", DRPC_FUNCTION, "t::nested", bad, NULL, 0);
  tnet_run(&N, 1000);
  drpc_error e = DRPC_ERROR_INIT;
  CHECK_EQ_INT(fut_err(f, &e), DRPC_ETYPE);
  CHECK_STR_EQ(
      e.msg, "Error on Node 1: Error on Node 2: sum: argument 0 is not an int");
  drpc_future_decref(f);
  drpc_value_free(bad);
  drpc_value_free(args);
  drpc_error_clear(&e);
  down();
}

static void test_async_null(void) {
  up(2);
  drpc_value *res = NULL;
  drpc_error e = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_rpc_sync(ag(0), "w1", DRPC_FUNCTION, "t::null", NULL, NULL,
                             0, &res, &e),
               DRPC_EUSER);
  CHECK_STR_EQ(e.msg, "Error on Node 1: no future for you");
  CHECK_EQ_INT(drpc_rpc_sync(ag(0), "w1", DRPC_FUNCTION, "t::null_silent", NULL,
                             NULL, 0, &res, &e),
               DRPC_EUSER);
  CHECK_CONTAINS(e.msg, "Error on Node 1: async function 't::null_silent' "
                        "must return a future");
  CHECK_EQ_INT(metric(ag(1), "agent.server_active_calls"), 0);
  CHECK_EQ_INT(metric(ag(1), "agent.server_active_async_calls"), 0);
  drpc_error_clear(&e);
  down();
}

/* ---- metrics ------------------------------------------------------------- */

static void test_metrics(void) {
  up(3);
  drpc_value *m = drpc_agent_metrics(ag(0));
  const char *keys[] = {"agent.thread_pool_size", "agent.num_idle_threads",
                        "agent.client_active_calls",
                        "agent.server_active_calls",
                        "agent.server_active_async_calls"};
  CHECK(m && m->kind == DRPC_VAL_DICT);
  CHECK_EQ_INT(drpc_value_len(m), 5);
  for (int i = 0; i < 5 && m && (size_t)i < drpc_value_len(m); i++) {
    CHECK_STR_EQ(m->u.c.keys[i], keys[i]);
    CHECK(m->u.c.items[i]->kind == DRPC_VAL_STR);
  }
  drpc_value_free(m);
  CHECK_EQ_INT(metric(ag(0), "agent.thread_pool_size"), TNET_POOL_SIZE);
  CHECK_EQ_INT(metric(ag(0), "agent.num_idle_threads"), TNET_POOL_SIZE);

  N.auto_run_jobs = false;
  nheld = 0;
  drpc_future *f[5];
  f[0] = call(0, "w1", DRPC_FUNCTION, "t::sum", NULL, NULL, 0);
  f[1] = call(0, "w1", DRPC_FUNCTION, "t::hold", NULL, NULL, 0);
  f[2] = call(0, "w2", DRPC_FUNCTION, "t::sum", NULL, NULL, 0);
  f[3] = call(2, "w1", DRPC_FUNCTION, "t::metrics", NULL, NULL, 0);
  /* Counted as soon as rpc_async returns, before the loop runs. */
  CHECK_EQ_INT(metric(ag(0), "agent.client_active_calls"), 3);
  CHECK_EQ_INT(metric(ag(2), "agent.client_active_calls"), 1);
  tnet_run(&N, 1000);
  CHECK_EQ_INT(metric(ag(1), "agent.server_active_calls"), 3);
  CHECK_EQ_INT(metric(ag(2), "agent.server_active_calls"), 1);
  CHECK_EQ_INT(metric(ag(1), "agent.client_active_calls"), 0);

  CHECK(tnet_run_job(&N)); /* w1: t::sum */
  CHECK(tnet_run_job(&N)); /* w1: t::hold returns its future */
  CHECK(tnet_run_job(&N)); /* w2: t::sum */
  CHECK(tnet_run_job(&N)); /* w1: t::metrics, measured from inside */
  tnet_run(&N, 1000);
  CHECK_EQ_INT(drpc_future_error(f[3], NULL), 0);
  const drpc_value *inside = drpc_future_value(f[3]);
  const drpc_value *v = drpc_dict_get(inside, "agent.server_active_calls");
  CHECK_STR_EQ(v ? v->u.s.data : NULL, "2"); /* itself and the held one */
  v = drpc_dict_get(inside, "agent.server_active_async_calls");
  CHECK_STR_EQ(v ? v->u.s.data : NULL, "1");
  v = drpc_dict_get(inside, "agent.num_idle_threads");
  CHECK_EQ_INT(v ? atol(v->u.s.data) : -1, TNET_POOL_SIZE - 1);
  v = drpc_dict_get(inside, "agent.thread_pool_size");
  CHECK_EQ_INT(v ? atol(v->u.s.data) : -1, TNET_POOL_SIZE);

  CHECK_EQ_INT(metric(ag(0), "agent.client_active_calls"), 1); /* the hold */
  CHECK_EQ_INT(metric(ag(1), "agent.server_active_calls"), 1);
  CHECK_EQ_INT(metric(ag(1), "agent.server_active_async_calls"), 1);
  drpc_future_set_value(held[0], NULL);
  drpc_future_decref(held[0]);
  tnet_run(&N, 1000);
  for (int i = 0; i < 3; i++) {
    CHECK_EQ_INT(metric(ag(i), "agent.client_active_calls"), 0);
    CHECK_EQ_INT(metric(ag(i), "agent.server_active_calls"), 0);
    CHECK_EQ_INT(metric(ag(i), "agent.server_active_async_calls"), 0);
  }
  for (int i = 0; i < 4; i++) {
    CHECK(drpc_future_done(f[i]));
    drpc_future_decref(f[i]);
  }
  /* debug info adds counters without changing the metric keys. */
  drpc_value *d = drpc_agent_debug_info(ag(0));
  v = drpc_dict_get(d, "agent.calls_sent");
  CHECK_STR_EQ(v ? v->u.s.data : NULL, "3");
  CHECK(drpc_dict_get(d, "agent.client_active_calls") != NULL);
  drpc_value_free(d);
  down();
}

/* ---- malformed input ----------------------------------------------------- */

/* Frames w1 sends to the intruder node, captured by the send hook. */
typedef struct capture {
  int to;
  int n;
  uint8_t *last;
  size_t last_len;
} capture;

static void capture_send(void *user, int from, int to, const uint8_t *buf,
                         size_t len) {
  capture *c = user;
  (void)from;
  if (to != c->to)
    return;
  c->n++;
  free(c->last);
  c->last = malloc(len);
  memcpy(c->last, buf, len);
  c->last_len = len;
}

static uint8_t *make_frame(uint8_t type, uint64_t id, drpc_value *body,
                           size_t *len) {
  drpc_outframe *f = NULL;
  drpc_wire_limits lim;
  drpc_wire_limits_default(&lim);
  int rc = drpc_wire_encode(type, 0, id, body, &lim, &f, NULL);
  CHECK_EQ_INT(rc, 0);
  drpc_value_free(body);
  uint8_t *b = drpc_outframe_flatten(f, len);
  drpc_outframe_free(f);
  return b;
}

static void inject(int node, uint64_t conn, uint8_t *buf, size_t len) {
  drpc_agent_on_frame(ag(node), conn, buf, len);
  free(buf);
}

static uint8_t *hello(const char *name, int id, size_t *len) {
  return make_frame(DRPC_MSG_HELLO, 0,
                    drpc_value_list_of(3, drpc_value_int(DRPC_WIRE_VERSION),
                                       drpc_value_int(id),
                                       drpc_value_str(name)),
                    len);
}

static drpc_value *call_body(int kind, const char *fn, drpc_value *args) {
  return drpc_value_list_of(4, drpc_value_int(kind), drpc_value_str(fn), args,
                            drpc_value_dict());
}

/* Checks w1 still serves w0 after the intruder's connection misbehaved. */
static void check_w1_serves(void) {
  drpc_value *args = ints(2, 4, 5);
  drpc_value *res = NULL;
  drpc_error e = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_rpc_sync(ag(0), "w1", DRPC_BUILTIN, "aten::add", args, NULL,
                             DRPC_UNSET_RPC_TIMEOUT, &res, &e),
               0);
  CHECK_EQ_INT(int_of(res), 9);
  drpc_value_free(res);
  drpc_value_free(args);
  drpc_error_clear(&e);
}

/* Sends one bad frame (after HELLO when with_hello) on a fresh intruder
 * connection and checks that w1 closed exactly that connection. */
static void expect_close(uint8_t *bad, size_t len, bool with_hello,
                         const char *why) {
  uint64_t id = 0;
  int ci = tnet_raw_connect(&N, 2, 1, &id);
  CHECK(ci >= 0);
  if (with_hello) {
    size_t hl;
    uint8_t *h = hello("w0", 0, &hl);
    inject(1, id, h, hl);
  }
  int closes = N.nodes[1].closes, errors = N.nodes[1].logs_error;
  inject(1, id, bad, len);
  CHECK_EQ_INT(N.nodes[1].closes, closes + 1);
  CHECK(ci >= 0 && N.conns[ci].closed);
  CHECK_EQ_INT(N.nodes[1].logs_error, errors + 1);
  CHECK_CONTAINS(N.nodes[1].last_log, why);
  /* Frames after the close are ignored: the agent forgot the connection. */
  size_t l2;
  uint8_t *more =
      make_frame(DRPC_MSG_CALL, 9,
                 call_body(DRPC_BUILTIN, "aten::add", ints(2, 1, 1)), &l2);
  inject(1, id, more, l2);
  CHECK_EQ_INT(N.nodes[1].closes, closes + 1);
  tnet_run(&N, 1000);
  check_w1_serves();
}

static void test_malformed_frames(void) {
  up_partial(2, 2, 1, NULL); /* node 2: an intruder without an agent */
  check_w1_serves();         /* w0 -> w1 is up */
  capture cap = {2, 0, NULL, 0};
  N.on_send = capture_send;
  N.on_send_user = &cap;
  int w0_closes = N.nodes[0].closes;

  uint8_t *junk = malloc(40);
  memset(junk, 0xab, 40);
  expect_close(junk, 40, false, "magic");

  size_t len;
  uint8_t *f = hello("w0", 0, &len);
  f[4] = 99; /* version */
  expect_close(f, len, false, "version");

  f = make_frame(DRPC_MSG_CALL, 1,
                 call_body(DRPC_BUILTIN, "aten::add", ints(2, 1, 1)), &len);
  expect_close(f, len, false,
               "first frame on a connection must be HELLO, got CALL");

  f = hello("w0", 0, &len);
  f[5] = 99; /* message type */
  expect_close(f, len, false, "type");

  /* A response type on an incoming connection. */
  f = make_frame(DRPC_MSG_REMOTE_RET, 1, NULL, &len);
  expect_close(f, len, true, "response on an incoming connection");
  f = make_frame(DRPC_MSG_RESPONSE, 1, drpc_value_int(1), &len);
  expect_close(f, len, true, "response on an incoming connection");

  /* HELLOs that do not fit. */
  f = hello("w7", 7, &len);
  expect_close(f, len, false, "HELLO from unknown worker w7 (id 7)");
  f = hello("w1x", 1, &len);
  expect_close(f, len, false, "HELLO from unknown worker");
  f = make_frame(DRPC_MSG_HELLO, 0, drpc_value_str("hi"), &len);
  expect_close(f, len, false, "malformed HELLO");
  f = hello("w0", 0, &len);
  expect_close(f, len, true, "unexpected HELLO");

  /* A truncated frame: the header promises more than arrives. */
  f = make_frame(DRPC_MSG_CALL, 1,
                 call_body(DRPC_BUILTIN, "aten::add", ints(2, 1, 1)), &len);
  expect_close(f, len - 3, true, "truncated");

  /* Requests the agent can parse but not serve are answered with an
   * error for that request; the connection stays up. */
  uint64_t id = 0;
  int ci = tnet_raw_connect(&N, 2, 1, &id);
  f = hello("w0", 0, &len);
  inject(1, id, f, len);
  int closes = N.nodes[1].closes;
  struct {
    uint8_t type;
    drpc_value *body;
    const char *want;
  } bad[] = {
      {DRPC_MSG_CALL, drpc_value_int(5),
       "Error on Node 1: malformed CALL: expected [kind, name, args, kwargs]"},
      {DRPC_MSG_CALL,
       drpc_value_list_of(3, drpc_value_int(0), drpc_value_str("aten::add"),
                          drpc_value_list()),
       "Error on Node 1: malformed CALL: expected [kind, name, args, kwargs]"},
      {DRPC_MSG_CALL,
       drpc_value_list_of(4, drpc_value_int(0), drpc_value_str("aten::add"),
                          drpc_value_dict(), drpc_value_dict()),
       "Error on Node 1: malformed CALL: expected [kind, name, args, kwargs]"},
      {DRPC_MSG_CALL, call_body(7, "aten::add", drpc_value_list()),
       "Error on Node 1: malformed CALL: unknown kind"},
      {DRPC_MSG_RREF_FETCH, drpc_value_list(),
       "Error on Node 1: malformed RREF_FETCH"},
      {DRPC_MSG_REMOTE_CALL, call_body(0, "aten::add", drpc_value_list()),
       "Error on Node 1: malformed REMOTE_CALL: expected [kind, name, args, "
       "kwargs, rref id, fork id]"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int before = cap.n;
    f = make_frame(bad[i].type, 100 + i, bad[i].body, &len);
    inject(1, id, f, len);
    CHECK_EQ_INT(cap.n, before + 1);
    drpc_msg m = {0};
    CHECK_EQ_INT(drpc_wire_decode(cap.last, cap.last_len, NULL, &m, NULL), 0);
    CHECK_EQ_INT(m.type, DRPC_MSG_ERROR);
    CHECK_EQ_INT(m.id, 100 + i);
    const drpc_value *text = drpc_list_at(m.body, 1);
    CHECK_STR_EQ(text ? text->u.s.data : NULL, bad[i].want);
    drpc_msg_clear(&m);
  }
  CHECK_EQ_INT(N.nodes[1].closes, closes);
  CHECK(!N.conns[ci].closed);
  /* And a good call on the same connection is served. */
  f = make_frame(DRPC_MSG_CALL, 200,
                 call_body(DRPC_BUILTIN, "aten::add", ints(2, 30, 12)), &len);
  inject(1, id, f, len);
  tnet_run(&N, 1000);
  drpc_msg m = {0};
  CHECK_EQ_INT(drpc_wire_decode(cap.last, cap.last_len, NULL, &m, NULL), 0);
  CHECK_EQ_INT(m.type, DRPC_MSG_RESPONSE);
  CHECK_EQ_INT(m.id, 200);
  CHECK_EQ_INT(int_of(m.body), 42);
  drpc_msg_clear(&m);

  /* Nothing of this touched w0's own link to w1. */
  CHECK_EQ_INT(N.nodes[0].closes, w0_closes);
  CHECK_EQ_INT(N.nodes[0].connects, 1);
  check_w1_serves();
  free(cap.last);
  down();
}

/* A response must come from the worker the call went to: a peer cannot
 * complete (or fail) calls that are pending with someone else. */
static void test_response_from_wrong_peer(void) {
  up(3);
  N.auto_run_jobs = false;
  drpc_future *to1 = call(0, "w1", DRPC_FUNCTION, "t::sum", NULL, NULL, 0);
  drpc_future *to2 = call(0, "w2", DRPC_FUNCTION, "t::sum", NULL, NULL, 0);
  tnet_run(&N, 1000);
  int ci = conn_between(0, 2);
  CHECK(ci >= 0);
  /* The call to w1 got request id 1; w2's connection claims to answer it. */
  size_t len;
  uint8_t *f = make_frame(DRPC_MSG_RESPONSE, 1, drpc_value_str("forged"), &len);
  inject(0, N.conns[ci].id_from, f, len);
  f = make_frame(
      DRPC_MSG_ERROR, 1,
      drpc_value_list_of(2, drpc_value_int(DRPC_EIO), drpc_value_str("forged")),
      &len);
  inject(0, N.conns[ci].id_from, f, len);
  CHECK(!drpc_future_done(to1));
  CHECK(!drpc_future_done(to2));
  while (tnet_run_job(&N))
    tnet_run(&N, 1000);
  CHECK_EQ_INT(drpc_future_error(to1, NULL), 0);
  CHECK_EQ_INT(int_of(drpc_future_value(to1)), 0);
  CHECK_EQ_INT(drpc_future_error(to2, NULL), 0);
  drpc_future_decref(to1);
  drpc_future_decref(to2);
  down();
}

/* ---- shutdown ------------------------------------------------------------ */

static void test_ungraceful_shutdown(void) {
  up(2);
  N.auto_run_jobs = false;
  nheld = 0;
  drpc_future *to1 = call(0, "w1", DRPC_FUNCTION, "t::sum", NULL, NULL, 0);
  drpc_future *self = call(0, "w0", DRPC_FUNCTION, "t::sum", NULL, NULL, 0);
  drpc_future *timed = call(0, "w1", DRPC_FUNCTION, "t::sum", NULL, NULL, 5);
  drpc_future *from1 = call(1, "w0", DRPC_FUNCTION, "t::hold", NULL, NULL, 0);
  tnet_run(&N, 1000);
  CHECK(N.nodes[0].timer_deadline != 0);
  int w1_warnings = N.nodes[1].logs_error;

  drpc_error e = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_agent_shutdown(ag(0), false, 0, &e), 0);
  drpc_future *all[3] = {to1, self, timed};
  for (int i = 0; i < 3; i++) {
    CHECK_EQ_INT(fut_err(all[i], &e), DRPC_ESHUTDOWN);
    CHECK_STR_EQ(e.msg, "RPC was shut down (not gracefully) before the call "
                        "completed");
  }
  CHECK_EQ_INT(metric(ag(0), "agent.client_active_calls"), 0);
  CHECK(N.nodes[0].timer_deadline == 0); /* the timer is cancelled */
  CHECK(N.nodes[0].closes >= 2);         /* its connections are closed */

  /* New calls are refused at once. */
  drpc_future *f = (drpc_future *)&e;
  CHECK_EQ_INT(drpc_rpc_async(ag(0), "w1", DRPC_BUILTIN, "aten::add", NULL,
                              NULL, DRPC_UNSET_RPC_TIMEOUT, &f, &e),
               DRPC_ESHUTDOWN);
  CHECK(f == NULL);
  CHECK_STR_EQ(e.msg, "Node 0 tried to send() a message of type CALL but RPC "
                      "is no longer running on this node.");
  /* A second shutdown is a no-op. */
  CHECK_EQ_INT(drpc_agent_shutdown(ag(0), false, 0, &e), 0);

  /* w1's call to w0 loses its connection: w0 said it was shutting down. */
  tnet_run(&N, 1000);
  CHECK_EQ_INT(fut_err(from1, &e), DRPC_ECONN);
  CHECK_CONTAINS(e.msg, "w0");
  CHECK_EQ_INT(N.nodes[1].logs_error, w1_warnings);

  /* The jobs still queued run late; their answers are dropped harmlessly. */
  while (tnet_run_job(&N))
    tnet_run(&N, 1000);
  CHECK_EQ_INT(nheld, 1);
  drpc_future_set_value(held[0], drpc_value_int(1));
  drpc_future_decref(held[0]);
  tnet_run(&N, 1000);
  CHECK_EQ_INT(fut_err(to1, &e), DRPC_ESHUTDOWN);
  CHECK_EQ_INT(fut_err(from1, &e), DRPC_ECONN);

  /* w1 keeps working; calls to the stopped w0 fail cleanly. */
  N.auto_run_jobs = true;
  drpc_value *res = NULL;
  CHECK_EQ_INT(drpc_rpc_sync(ag(1), "w1", DRPC_BUILTIN, "aten::add", NULL, NULL,
                             DRPC_UNSET_RPC_TIMEOUT, &res, &e),
               DRPC_EINVAL); /* aten::add without arguments, on itself */
  CHECK_CONTAINS(e.msg, "Error on Node 1:");
  CHECK(drpc_rpc_sync(ag(1), "w0", DRPC_FUNCTION, "t::sum", NULL, NULL,
                      DRPC_UNSET_RPC_TIMEOUT, &res, &e) != 0);
  CHECK(res == NULL);

  drpc_future_decref(to1);
  drpc_future_decref(self);
  drpc_future_decref(timed);
  drpc_future_decref(from1);
  drpc_error_clear(&e);
  down();
}

/* A graceful shutdown of a single worker waits for its outstanding calls
 * (here one that only the clock ends), where an ungraceful one would fail
 * them; an infinite bound means no bound. */
static void test_graceful_shutdown_single(void) {
  up(1);
  nheld = 0;
  uint64_t t0 = N.now_ns;
  drpc_value *args = ints(2, 1, 2);
  drpc_future *ok = call(0, "w0", DRPC_BUILTIN, "aten::add", args, NULL, 0);
  drpc_future *slow = call(0, "w0", DRPC_FUNCTION, "t::hold", NULL, NULL, 10);
  drpc_error e = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_agent_shutdown(ag(0), true, INFINITY, &e), 0);
  if (e.code)
    fprintf(stderr, "shutdown: %s\n", drpc_error_message(&e));
  CHECK_EQ_INT(fut_err(ok, &e), 0);
  CHECK_EQ_INT(int_of(drpc_future_value(ok)), 3);
  CHECK_EQ_INT(fut_err(slow, &e), DRPC_ETIMEOUT);
  CHECK(N.now_ns == t0 + 10000 * MS);
  CHECK_EQ_INT(nheld, 1);
  if (nheld) {
    drpc_future_set_value(held[0], NULL);
    drpc_future_decref(held[0]);
  }
  drpc_future_decref(ok);
  drpc_future_decref(slow);
  drpc_value_free(args);
  drpc_error_clear(&e);
  down();
}

/* ---- determinism --------------------------------------------------------- */

typedef struct transcript {
  uint8_t *buf;
  size_t len, cap;
} transcript;

static void tr_put(transcript *t, const void *p, size_t n) {
  if (t->len + n > t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 4096;
    while (cap < t->len + n)
      cap *= 2;
    t->buf = realloc(t->buf, cap);
    t->cap = cap;
  }
  memcpy(t->buf + t->len, p, n);
  t->len += n;
}

static void tr_send(void *user, int from, int to, const uint8_t *buf,
                    size_t len) {
  char head[64];
  int k = snprintf(head, sizeof head, "F %d>%d %zu:", from, to, len);
  tr_put(user, head, (size_t)k);
  tr_put(user, buf, len);
}

typedef struct done_tag {
  transcript *t;
  int tag;
} done_tag;

static int tr_completions;

static void tr_done(drpc_future *f, void *arg) {
  done_tag *d = arg;
  tr_completions++;
  char line[600], val[256] = "";
  drpc_error e = DRPC_ERROR_INIT;
  int code = drpc_future_error(f, &e);
  if (!code)
    drpc_value_format(drpc_future_value(f), val, sizeof val);
  int k = snprintf(line, sizeof line, "D %d %d %s%s;", d->tag, code,
                   code ? drpc_error_message(&e) : "", val);
  tr_put(d->t, line, (size_t)k);
  drpc_error_clear(&e);
}

/* A scripted run: concurrent calls of every kind, a timeout, a broken link
 * with a reconnect, nested async calls. `salt` changes one argument, to
 * show the transcript is sensitive to what happens. */
static void scenario(transcript *t, int salt) {
  up(3);
  N.on_send = tr_send;
  N.on_send_user = t;
  N.auto_run_jobs = false;
  nheld = 0;
  done_tag tags[16];
  drpc_future *fs[16];
  int nf = 0;
  drpc_value *args = ints(2, 3, salt);
#define GO(from, dst, kind, fn, a, timeout)                                    \
  do {                                                                         \
    fs[nf] = call(from, dst, kind, fn, a, NULL, timeout);                      \
    tags[nf] = (done_tag){t, nf};                                              \
    drpc_future_add_done_callback(fs[nf], tr_done, &tags[nf]);                 \
    nf++;                                                                      \
  } while (0)
  GO(0, "w1", DRPC_BUILTIN, "aten::add", args, 0);
  GO(0, "w2", DRPC_FUNCTION, "t::sum", args, 0.02);
  GO(1, "w2", DRPC_FUNCTION, "t::nested", args, 0);
  GO(2, "w0", DRPC_FUNCTION, "t::fail", NULL, 0);
  GO(1, "w1", DRPC_FUNCTION, "t::caller", NULL, 0);
  GO(0, "w1", DRPC_FUNCTION, "t::hold", NULL, 0);
  tnet_run(&N, 1000);
  tnet_run_job(&N);
  tnet_run_job(&N);
  tnet_run(&N, 1000);
  tnet_advance_to(&N, N.now_ns + 20 * MS); /* w0 -> w2 times out */
  tnet_break(&N, 0, 1);                    /* fails the held call */
  while (tnet_run_job(&N))
    tnet_run(&N, 1000);
  GO(0, "w1", DRPC_BUILTIN, "aten::mul", args, 0); /* reconnects */
  GO(2, "w1", DRPC_FUNCTION, "t::nested", args, 1.0);
  N.auto_run_jobs = true;
  tnet_run(&N, 100000);
  if (nheld) {
    drpc_future_set_value(held[0], NULL);
    drpc_future_decref(held[0]);
  }
#undef GO
  tnet_run(&N, 100000);
  for (int i = 0; i < nf; i++) {
    CHECK(drpc_future_done(fs[i]));
    drpc_future_decref(fs[i]);
  }
  drpc_value_free(args);
  down();
}

static void test_determinism(void) {
  transcript a = {0}, b = {0}, c = {0};
  tr_completions = 0;
  scenario(&a, 4);
  scenario(&b, 4);
  scenario(&c, 5);
  CHECK(a.len > 1000);
  CHECK_EQ_INT(a.len, b.len);
  CHECK(a.len == b.len && memcmp(a.buf, b.buf, a.len) == 0);
  CHECK(a.len != c.len || memcmp(a.buf, c.buf, a.len) != 0);
  /* Every call of every run completed exactly once. */
  CHECK_EQ_INT(tr_completions, 3 * 8);
  free(a.buf);
  free(b.buf);
  free(c.buf);
}

int main(void) {
  register_all();
  RUN(test_builtin_ints_and_tensors);
  RUN(test_functions_args_kwargs);
  RUN(test_call_self);
  RUN(test_unknown_destination_and_builtin);
  RUN(test_remote_errors);
  RUN(test_timeout_expires_at_deadline);
  RUN(test_timeout_zero_and_defaults);
  RUN(test_timeout_invalid);
  RUN(test_timeout_huge);
  RUN(test_sync_wait_times_out);
  RUN(test_broken_connection);
  RUN(test_connection_refused);
  RUN(test_async_frees_worker);
  RUN(test_async_nested);
  RUN(test_async_null);
  RUN(test_metrics);
  RUN(test_malformed_frames);
  RUN(test_response_from_wrong_peer);
  RUN(test_ungraceful_shutdown);
  RUN(test_graceful_shutdown_single);
  RUN(test_determinism);
  drpc_registry_free(R);
  return test_finish();
}
