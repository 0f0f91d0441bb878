/* Unit tests for core/rref.c through the deterministic test env: ids and
 * string forms, remote / to_here / local_value, RRefs in arguments and
 * results (owner -> user, user -> user, user -> owner), confirmation before
 * a function runs, deletion, retries with backoff on the manual clock,
 * duplicate control messages, proxies, timeouts, shutdown clean-up, the
 * leak check and debug info. */
#include "drpc/drpc.h"

#include "test.h"
#include "testenv.h"

#include <math.h>
#include <stdarg.h>

#define MS 1000000ull

static tnet N;
static drpc_store *S;
static drpc_registry *R;
static const char *const NAMES[] = {"w0", "w1", "w2", "w3"};

static drpc_agent *ag(int i) {
  return N.nodes[i].agent;
}

static void up_opts(int world, const drpc_options *opts) {
  tnet_init(&N);
  for (int i = 0; i < world; i++)
    tnet_node(&N);
  S = tnet_store(&N, world, NAMES);
  drpc_options o;
  if (opts)
    o = *opts;
  else
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

static void up(int world) {
  up_opts(world, NULL);
}

static void pump(void) {
  tnet_run(&N, 1000000);
}

static void down(void) {
  N.auto_run_jobs = true;
  N.on_send = NULL;
  pump();
  for (int i = 0; i < N.nnodes; i++)
    if (ag(i))
      drpc_agent_shutdown(ag(i), false, 0, NULL);
  pump();
  for (int i = 0; i < N.nnodes; i++) {
    drpc_agent *a = ag(i);
    N.nodes[i].agent = NULL;
    drpc_agent_free(a);
  }
  drpc_store_decref(S);
  tnet_free(&N);
}

static long dbg(int node, const char *key) {
  drpc_value *d = drpc_agent_debug_info(ag(node));
  const drpc_value *v = drpc_dict_get(d, key);
  long r = v && v->kind == DRPC_VAL_STR ? atol(v->u.s.data) : -999;
  drpc_value_free(d);
  return r;
}

/* All four RRef counters of every node are zero. */
static void check_clean(void) {
  static const char *const keys[] = {"num_owner_rrefs", "num_pending_futures",
                                     "num_pending_users", "num_forks"};
  for (int i = 0; i < N.nnodes; i++)
    for (int k = 0; k < 4; k++) {
      long v = dbg(i, keys[k]);
      if (v != 0)
        fprintf(stderr, "  node %d %s = %ld\n", i, keys[k], v);
      CHECK_EQ_INT(v, 0);
    }
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

static int64_t int_of(const drpc_value *v) {
  return v && v->kind == DRPC_VAL_INT ? v->u.i : INT64_MIN;
}

static drpc_rref *remote(int from, const char *dst, drpc_call_kind kind,
                         const char *fn, drpc_value *args, double timeout_s) {
  drpc_rref *r = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  int rc =
      drpc_remote(ag(from), dst, kind, fn, args, NULL, timeout_s, &r, &err);
  if (rc)
    fprintf(stderr, "  remote: %s\n", drpc_error_message(&err));
  CHECK_EQ_INT(rc, 0);
  drpc_error_clear(&err);
  drpc_value_free(args);
  return r;
}

static int64_t to_here_int(drpc_rref *r) {
  drpc_value *v = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_rref_to_here(r, DRPC_UNSET_RPC_TIMEOUT, &v, &err);
  if (rc)
    fprintf(stderr, "  to_here: %s\n", drpc_error_message(&err));
  int64_t x = rc ? INT64_MIN : int_of(v);
  drpc_value_free(v);
  drpc_error_clear(&err);
  return x;
}

static drpc_value *sync_call(int from, const char *dst, const char *fn,
                             drpc_value *args, drpc_error *err) {
  drpc_value *out = NULL;
  drpc_error_clear(err);
  drpc_rpc_sync(ag(from), dst, DRPC_FUNCTION, fn, args, NULL,
                DRPC_UNSET_RPC_TIMEOUT, &out, err);
  drpc_value_free(args);
  return out;
}

static char *fmt(drpc_rref *r) {
  static char buf[4][256];
  static int k;
  char *b = buf[k++ & 3];
  drpc_rref_format(r, b, 256);
  return b;
}

/* ---- registered functions ------------------------------------------------ */

static drpc_value *fn_sum(drpc_call *call, const drpc_value *args,
                          const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)kwargs;
  int64_t s = 0;
  for (size_t i = 0; i < drpc_value_len(args); i++) {
    const drpc_value *v = drpc_list_at(args, i);
    if (v->kind != DRPC_VAL_INT) {
      drpc_error_set(err, DRPC_ETYPE, "sum: argument %zu is not an int", i);
      return NULL;
    }
    s += v->u.i;
  }
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

/* [rref, k]: the RRef's int value plus k, fetched with to_here. */
static drpc_value *fn_rref_plus(drpc_call *call, const drpc_value *args,
                                const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)kwargs;
  drpc_rref *r = drpc_value_get_rref(drpc_list_at(args, 0));
  if (!r) {
    drpc_error_set(err, DRPC_ETYPE, "argument 0 is not an RRef");
    return NULL;
  }
  drpc_value *v = NULL;
  if (drpc_rref_to_here(r, DRPC_UNSET_RPC_TIMEOUT, &v, err))
    return NULL;
  int64_t x = int_of(v) + int_of(drpc_list_at(args, 1));
  drpc_value_free(v);
  return drpc_value_int(x);
}

/* [rref]: [confirmed_by_owner, is_owner] as the function sees them. */
static drpc_value *fn_rref_state(drpc_call *call, const drpc_value *args,
                                 const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)kwargs;
  drpc_rref *r = drpc_value_get_rref(drpc_list_at(args, 0));
  if (!r) {
    drpc_error_set(err, DRPC_ETYPE, "argument 0 is not an RRef");
    return NULL;
  }
  return drpc_value_list_of(2, drpc_value_bool(drpc_rref_confirmed_by_owner(r)),
                            drpc_value_bool(drpc_rref_is_owner(r)));
}

/* [x]: a new owner RRef on the callee holding x. */
static drpc_value *fn_make_local(drpc_call *call, const drpc_value *args,
                                 const drpc_value *kwargs, drpc_error *err) {
  (void)kwargs;
  drpc_rref *r = NULL;
  if (drpc_rref_new_local(drpc_call_agent(call),
                          drpc_value_clone(drpc_list_at(args, 0)), &r, err))
    return NULL;
  drpc_value *v = drpc_value_rref(r);
  drpc_rref_decref(r);
  return v;
}

/* Returns its arguments (RRefs in them are forked back). */
static drpc_value *fn_echo(drpc_call *call, const drpc_value *args,
                           const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)kwargs;
  (void)err;
  return drpc_value_clone(args);
}

/* [rref, dst]: calls r::rref_plus(rref, 100) on dst (forwards the RRef). */
static drpc_value *fn_forward(drpc_call *call, const drpc_value *args,
                              const drpc_value *kwargs, drpc_error *err) {
  (void)kwargs;
  const drpc_value *dst = drpc_list_at(args, 1);
  drpc_value *a2 = drpc_value_list_of(
      2, drpc_value_clone(drpc_list_at(args, 0)), drpc_value_int(100));
  drpc_value *out = NULL;
  drpc_rpc_sync(drpc_call_agent(call), dst->u.s.data, DRPC_FUNCTION,
                "r::rref_plus", a2, NULL, DRPC_UNSET_RPC_TIMEOUT, &out, err);
  drpc_value_free(a2);
  return out;
}

/* Proxy target: value + args[1]. */
static drpc_value *fn_add_to(drpc_call *call, const drpc_value *args,
                             const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)kwargs;
  (void)err;
  return drpc_value_int(int_of(drpc_list_at(args, 0)) +
                        int_of(drpc_list_at(args, 1)));
}

static drpc_future *held[8];
static int nheld;

static drpc_future *afn_hold(drpc_call *call, const drpc_value *args,
                             const drpc_value *kwargs, drpc_error *err) {
  (void)args;
  (void)kwargs;
  (void)err;
  drpc_future *f = drpc_future_new(drpc_agent_env(drpc_call_agent(call)));
  drpc_future_incref(f);
  held[nheld++] = f;
  return f;
}

static void register_all(void) {
  R = drpc_registry_new();
  drpc_register_function(R, "r::sum", fn_sum, NULL);
  drpc_register_function(R, "r::fail", fn_fail, NULL);
  drpc_register_function(R, "r::rref_plus", fn_rref_plus, NULL);
  drpc_register_function(R, "r::rref_state", fn_rref_state, NULL);
  drpc_register_function(R, "r::make_local", fn_make_local, NULL);
  drpc_register_function(R, "r::echo", fn_echo, NULL);
  drpc_register_function(R, "r::forward", fn_forward, NULL);
  drpc_register_function(R, "r::add_to", fn_add_to, NULL);
  drpc_register_async_function(R, "r::hold", afn_hold, NULL);
}

/* ---- tests ------------------------------------------------------------------
 */

/* A later life of a worker (drpc_options.incarnation) names its RRefs and
 * forks from incarnation << 32 on, so ids an earlier life handed out are
 * never named again; the first life starts at 0 as PyTorch does. */
static void test_ids_of_later_lives(void) {
  drpc_options o;
  drpc_options_default(&o);
  o.incarnation = 3;
  up_opts(2, &o);
  drpc_rref *l = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_rref_new_local(ag(0), drpc_value_int(35), &l, &err), 0);
  CHECK_STR_EQ(fmt(l), "OwnerRRef(GloballyUniqueId(created_on=0, "
                       "local_id=12884901888))");
  drpc_rref *u = remote(0, "w1", DRPC_BUILTIN, "aten::add", ints(2, 1, 2), -1);
  CHECK_STR_EQ(fmt(u), "UserRRef(RRefId = GloballyUniqueId(created_on=0, "
                       "local_id=12884901889), ForkId = GloballyUniqueId("
                       "created_on=0, local_id=12884901890))");
  drpc_value *v = NULL;
  CHECK_EQ_INT(drpc_rref_to_here(u, 5, &v, &err), 0);
  CHECK(v && v->kind == DRPC_VAL_INT && v->u.i == 3);
  drpc_value_free(v);
  drpc_rref_decref(u);
  drpc_rref_decref(l);
  drpc_error_clear(&err);
  down();
}

static void test_ids_and_strings(void) {
  up(2);
  drpc_rref *l = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_rref_new_local(ag(0), drpc_value_int(35), &l, &err), 0);
  CHECK_STR_EQ(fmt(l), "OwnerRRef(GloballyUniqueId(created_on=0, local_id=0))");
  drpc_rref *u = remote(0, "w1", DRPC_BUILTIN, "aten::add", ints(2, 1, 2), -1);
  CHECK_STR_EQ(fmt(u), "UserRRef(RRefId = GloballyUniqueId(created_on=0, "
                       "local_id=1), ForkId = GloballyUniqueId(created_on=0, "
                       "local_id=2))");
  drpc_rref *s = remote(1, "w1", DRPC_FUNCTION, "r::sum", ints(1, 7), -1);
  CHECK_STR_EQ(fmt(s), "OwnerRRef(GloballyUniqueId(created_on=1, local_id=0))");
  CHECK(drpc_rref_is_owner(l));
  CHECK(!drpc_rref_is_owner(u));
  CHECK(drpc_rref_is_owner(s));
  CHECK_STR_EQ(drpc_rref_owner_name(u), "w1");
  CHECK_EQ_INT(drpc_rref_owner(u)->id, 1);
  CHECK_STR_EQ(drpc_rref_owner_name(l), "w0");
  /* The value node prints the handle. */
  drpc_value *v = drpc_value_rref(u);
  char buf[256];
  drpc_value_format(v, buf, sizeof buf);
  CHECK_STR_EQ(buf, fmt(u));
  CHECK_STR_EQ(drpc_value_kind_name(v->kind), "rref");
  drpc_value *c = drpc_value_clone(v);
  CHECK(drpc_value_equal(v, c));
  CHECK(drpc_value_get_rref(c) == u);
  drpc_value_free(c);
  drpc_value_free(v);
  pump();
  drpc_rref_decref(l);
  drpc_rref_decref(u);
  drpc_rref_decref(s);
  pump();
  check_clean();
  drpc_error_clear(&err);
  down();
}

static void test_remote_to_here(void) {
  up(2);
  drpc_rref *u = remote(0, "w1", DRPC_BUILTIN, "aten::add", ints(2, 40, 2), -1);
  CHECK(!drpc_rref_confirmed_by_owner(u));
  CHECK_EQ_INT(dbg(0, "num_pending_users"), 1);
  drpc_future *cf = drpc_rref_creation_future(u);
  CHECK(cf != NULL);
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_future_get(cf, -1, NULL, &err), 0);
  CHECK(drpc_rref_confirmed_by_owner(u));
  CHECK_EQ_INT(dbg(0, "num_pending_users"), 0);
  CHECK_EQ_INT(dbg(1, "num_owner_rrefs"), 1);
  CHECK_EQ_INT(dbg(1, "num_forks"), 1);
  CHECK_EQ_INT(to_here_int(u), 42);
  CHECK_EQ_INT(to_here_int(u), 42);
  const char *type = NULL;
  CHECK_EQ_INT(drpc_rref_type(u, -1, &type, &err), 0);
  CHECK_STR_EQ(type, "int");
  const drpc_value *lv = NULL;
  CHECK_EQ_INT(drpc_rref_local_value(u, &lv, &err), DRPC_ESTATE);
  CHECK_STR_EQ(err.msg,
               "For UserRRef(rref_id=GloballyUniqueId(created_on=0, "
               "local_id=0), fork_id=GloballyUniqueId(created_on=0, "
               "local_id=1)), can't call localValue() on user "
               "WorkerInfo(id=0, name=w0). Call it on owner WorkerInfo(id=1, "
               "name=w1)");
  drpc_future_decref(cf);
  /* Releasing the last reference deletes the fork on the owner once. */
  int sent = N.nodes[0].frames_sent;
  drpc_rref_decref(u);
  pump();
  CHECK_EQ_INT(N.nodes[0].frames_sent, sent + 1);
  check_clean();
  /* A function error is stored on the owner and raised by to_here. */
  drpc_rref *f = remote(0, "w1", DRPC_FUNCTION, "r::fail", NULL, -1);
  drpc_value *v = NULL;
  CHECK_EQ_INT(drpc_rref_to_here(f, -1, &v, &err), DRPC_EUSER);
  CHECK_STR_EQ(err.msg, "Error on Node 1: boom");
  CHECK(v == NULL);
  drpc_future *fcf = drpc_rref_creation_future(f);
  CHECK_EQ_INT(drpc_future_error(fcf, NULL), 0);
  drpc_future_decref(fcf);
  drpc_rref_decref(f);
  pump();
  check_clean();
  drpc_error_clear(&err);
  down();
}

static void test_remote_self_and_local(void) {
  up(1);
  drpc_rref *s = remote(0, "w0", DRPC_FUNCTION, "r::sum", ints(2, 3, 4), -1);
  CHECK(drpc_rref_is_owner(s));
  CHECK(drpc_rref_confirmed_by_owner(s));
  drpc_error err = DRPC_ERROR_INIT;
  const drpc_value *lv = NULL;
  CHECK_EQ_INT(drpc_rref_local_value(s, &lv, &err), 0);
  CHECK_EQ_INT(int_of(lv), 7);
  CHECK_EQ_INT(to_here_int(s), 7);
  pump();
  /* The self fork is gone once created: nothing is forked. */
  CHECK_EQ_INT(dbg(0, "num_forks"), 0);
  CHECK_EQ_INT(dbg(0, "num_owner_rrefs"), 0);
  drpc_rref *l = NULL;
  CHECK_EQ_INT(drpc_rref_new_local(ag(0), drpc_value_int(35), &l, &err), 0);
  CHECK_EQ_INT(drpc_rref_local_value(l, &lv, &err), 0);
  CHECK_EQ_INT(int_of(lv), 35);
  CHECK(drpc_rref_creation_future(l) == NULL);
  /* An unshared local RRef is in no table. */
  CHECK_EQ_INT(dbg(0, "num_owner_rrefs"), 0);
  /* Owner RRefs passed to self: the owner's own fork comes and goes. */
  drpc_value *out = sync_call(
      0, "w0", "r::rref_plus",
      drpc_value_list_of(2, drpc_value_rref(l), drpc_value_int(1)), &err);
  CHECK_EQ_INT(int_of(out), 36);
  drpc_value_free(out);
  pump();
  CHECK_EQ_INT(dbg(0, "num_forks"), 0);
  CHECK_EQ_INT(dbg(0, "num_owner_rrefs"), 0);
  /* Proxies on an owner RRef run on self. */
  out = NULL;
  drpc_value *pa = ints(1, 5);
  CHECK_EQ_INT(drpc_rref_rpc_sync(l, DRPC_FUNCTION, "r::add_to", pa, NULL, -1,
                                  &out, &err),
               0);
  CHECK_EQ_INT(int_of(out), 40);
  drpc_value_free(out);
  CHECK_EQ_INT(drpc_rref_rpc_sync(l, DRPC_BUILTIN, "aten::add", pa, NULL, -1,
                                  &out, &err),
               0);
  CHECK_EQ_INT(int_of(out), 40);
  drpc_value_free(out);
  drpc_value_free(pa);
  drpc_rref_decref(l);
  drpc_rref_decref(s);
  pump();
  check_clean();
  /* Graceful shutdown of a lone worker with no leak. */
  CHECK_EQ_INT(drpc_agent_shutdown(ag(0), true, 10, &err), 0);
  check_clean();
  drpc_error_clear(&err);
  down();
}

/* Owner -> user (early registration), user -> user (fork request, child
 * accept), user -> owner (phantom fork), and RRefs in results. */
static void test_forks_in_values(void) {
  up(3);
  drpc_error err = DRPC_ERROR_INIT;
  drpc_rref *l = NULL;
  CHECK_EQ_INT(drpc_rref_new_local(ag(0), drpc_value_int(10), &l, &err), 0);
  /* Owner -> user: w1 sees a confirmed user RRef and fetches from w0. */
  drpc_value *out = sync_call(1 - 1, "w1", "r::rref_state",
                              drpc_value_list_of(1, drpc_value_rref(l)), &err);
  CHECK(out && drpc_list_at(out, 0)->u.b && !drpc_list_at(out, 1)->u.b);
  drpc_value_free(out);
  out = sync_call(0, "w1", "r::rref_plus",
                  drpc_value_list_of(2, drpc_value_rref(l), drpc_value_int(5)),
                  &err);
  CHECK_EQ_INT(int_of(out), 15);
  drpc_value_free(out);
  pump();
  CHECK_EQ_INT(dbg(0, "num_forks"), 0);
  CHECK_EQ_INT(dbg(0, "num_owner_rrefs"), 0);

  /* User -> user: w0 holds a user RRef owned by w1 and passes it to w2;
   * w2's function runs only once w1 confirmed the fork. */
  drpc_rref *u = remote(0, "w1", DRPC_FUNCTION, "r::sum", ints(2, 20, 3), -1);
  out = sync_call(0, "w2", "r::rref_state",
                  drpc_value_list_of(1, drpc_value_rref(u)), &err);
  CHECK(out && drpc_list_at(out, 0)->u.b && !drpc_list_at(out, 1)->u.b);
  drpc_value_free(out);
  out = sync_call(0, "w2", "r::rref_plus",
                  drpc_value_list_of(2, drpc_value_rref(u), drpc_value_int(1)),
                  &err);
  CHECK_EQ_INT(int_of(out), 24);
  drpc_value_free(out);
  /* User -> owner: w1 receives its own RRef as an owner RRef. */
  out = sync_call(0, "w1", "r::rref_state",
                  drpc_value_list_of(1, drpc_value_rref(u)), &err);
  CHECK(out && drpc_list_at(out, 0)->u.b && drpc_list_at(out, 1)->u.b);
  drpc_value_free(out);
  /* A forward chain: w0 -> w2 -> w1 (the owner) and w0 -> w1 -> w2. */
  out = sync_call(
      0, "w2", "r::forward",
      drpc_value_list_of(2, drpc_value_rref(u), drpc_value_str("w1")), &err);
  CHECK_EQ_INT(int_of(out), 123);
  drpc_value_free(out);
  out = sync_call(
      0, "w1", "r::forward",
      drpc_value_list_of(2, drpc_value_rref(u), drpc_value_str("w2")), &err);
  CHECK_EQ_INT(int_of(out), 123);
  drpc_value_free(out);
  pump();
  /* Only w0's own fork is left on the owner. */
  CHECK_EQ_INT(dbg(1, "num_forks"), 1);
  CHECK_EQ_INT(dbg(0, "num_pending_futures"), 0);

  /* Returning RRefs: a local RRef made on w2 comes back as a user RRef;
   * an RRef echoed back to its owner is an owner RRef again. */
  out = sync_call(0, "w2", "r::make_local", ints(1, 77), &err);
  drpc_rref *back = drpc_value_get_rref(out);
  CHECK(back && !drpc_rref_is_owner(back));
  CHECK(back && drpc_rref_confirmed_by_owner(back));
  CHECK_EQ_INT(back ? drpc_rref_owner(back)->id : -1, 2);
  CHECK_EQ_INT(back ? to_here_int(back) : 0, 77);
  drpc_value_free(out);
  out = sync_call(0, "w2", "r::echo", drpc_value_list_of(1, drpc_value_rref(l)),
                  &err);
  drpc_rref *mine = drpc_value_get_rref(drpc_list_at(out, 0));
  CHECK(mine == l);
  drpc_value_free(out);

  /* Nested RRefs: an RRef to a list holding an RRef. */
  drpc_rref *outer = remote(0, "w2", DRPC_FUNCTION, "r::make_local",
                            drpc_value_list_of(1, drpc_value_int(5)), -1);
  drpc_value *ov = NULL;
  CHECK_EQ_INT(drpc_rref_to_here(outer, -1, &ov, &err), 0);
  drpc_rref *inner = drpc_value_get_rref(ov);
  CHECK(inner && !drpc_rref_is_owner(inner));
  CHECK_EQ_INT(inner ? to_here_int(inner) : 0, 5);
  drpc_value_free(ov);
  drpc_rref_decref(outer);

  drpc_rref_decref(u);
  drpc_rref_decref(l);
  pump();
  check_clean();
  drpc_error_clear(&err);
  down();
}

/* A fork request held back: the callee's function waits for it. */
static void test_confirmed_before_run(void) {
  up(3);
  drpc_error err = DRPC_ERROR_INIT;
  drpc_rref *u = remote(0, "w1", DRPC_FUNCTION, "r::sum", ints(1, 9), -1);
  CHECK_EQ_INT(to_here_int(u), 9);
  N.auto_run_jobs = false;
  drpc_future *f = NULL;
  drpc_value *args = drpc_value_list_of(1, drpc_value_rref(u));
  CHECK_EQ_INT(drpc_rpc_async(ag(0), "w2", DRPC_FUNCTION, "r::rref_state", args,
                              NULL, -1, &f, &err),
               0);
  drpc_value_free(args);
  /* Deliver until w2 holds the call while its FORK_REQUEST travels: no
   * job is queued for it meanwhile. */
  for (int i = 0; i < 100 && dbg(2, "num_pending_users") == 0; i++)
    tnet_run(&N, 1);
  CHECK_EQ_INT(dbg(2, "num_pending_users"), 1);
  CHECK_EQ_INT(dbg(2, "num_pending_futures"), 1);
  CHECK(N.jobs_head == NULL);
  N.auto_run_jobs = true;
  pump();
  CHECK_EQ_INT(drpc_future_get(f, -1, NULL, &err), 0);
  const drpc_value *v = drpc_future_value(f);
  CHECK(v && drpc_list_at(v, 0)->u.b);
  drpc_future_decref(f);
  drpc_rref_decref(u);
  pump();
  check_clean();
  drpc_error_clear(&err);
  down();
}

/* Counts frames of one type sent from one node to another. */
typedef struct counter {
  int from, to, type, n;
  int drop; /* drop this many of them */
} counter;

static void count_sends(void *user, int from, int to, const uint8_t *buf,
                        size_t len) {
  counter *c = user;
  (void)len;
  if (from == c->from && to == c->to && buf[5] == c->type)
    c->n++;
}

/* Control messages are retried with backoff (1 s, 1.5 s, ...) and are
 * idempotent on the owner. */
static void test_retries_and_duplicates(void) {
  up(2);
  drpc_error err = DRPC_ERROR_INIT;
  drpc_rref *u = remote(0, "w1", DRPC_FUNCTION, "r::sum", ints(1, 1), -1);
  CHECK_EQ_INT(to_here_int(u), 1);
  counter c = {0, 1, DRPC_MSG_RREF_USER_DELETE, 0, 0};
  N.on_send = count_sends;
  N.on_send_user = &c;
  /* The connection breaks and new ones are refused: the delete fails. */
  tnet_break(&N, 0, 1);
  N.refuse_connect = true;
  uint64_t t0 = N.now_ns;
  drpc_rref_decref(u);
  pump();
  CHECK_EQ_INT(dbg(0, "num_pending_futures"), 1);
  CHECK_EQ_INT(dbg(1, "num_forks"), 1);
  CHECK_EQ_INT(N.nodes[0].timer_deadline, t0 + 1000 * MS);
  tnet_advance_to(&N, t0 + 1000 * MS);
  pump();
  CHECK_EQ_INT(N.nodes[0].timer_deadline, t0 + 2500 * MS);
  N.refuse_connect = false;
  tnet_advance_to(&N, t0 + 2500 * MS);
  pump();
  CHECK_EQ_INT(c.n, 1); /* only the attempt that had a connection */
  CHECK_EQ_INT(dbg(1, "num_forks"), 0);
  check_clean();
  N.on_send = NULL;

  /* Duplicates on the owner are harmless; a FORK_REQUEST for a deleted
   * fork does not bring it back. */
  drpc_rref *u2 = remote(0, "w1", DRPC_FUNCTION, "r::sum", ints(1, 2), -1);
  CHECK_EQ_INT(to_here_int(u2), 2);
  drpc_rref_id id = drpc_rref_get_id(u2), fork = drpc_rref_get_fork_id(u2);
  drpc_rref_decref(u2);
  pump();
  check_clean();
  uint64_t conn = 0;
  CHECK(tnet_raw_connect(&N, 0, 1, &conn) >= 0);
  drpc_value *hb = drpc_value_list_of(3, drpc_value_int(DRPC_WIRE_VERSION),
                                      drpc_value_int(0), drpc_value_str("w0"));
  drpc_outframe *fr = NULL;
  drpc_wire_encode(DRPC_MSG_HELLO, 0, 0, hb, NULL, &fr, NULL);
  size_t len;
  uint8_t *flat = drpc_outframe_flatten(fr, &len);
  drpc_agent_on_frame(ag(1), conn, flat, len);
  free(flat);
  drpc_outframe_free(fr);
  drpc_value_free(hb);
  int types[3] = {DRPC_MSG_RREF_USER_DELETE, DRPC_MSG_RREF_FORK_REQUEST,
                  DRPC_MSG_RREF_USER_DELETE};
  for (int i = 0; i < 3; i++) {
    drpc_value *b = drpc_value_list_of(
        4, drpc_value_int(id.created_on), drpc_value_int(id.local_id),
        drpc_value_int(fork.created_on), drpc_value_int(fork.local_id));
    drpc_wire_encode((uint8_t)types[i], 0, 50 + i, b, NULL, &fr, NULL);
    flat = drpc_outframe_flatten(fr, &len);
    drpc_agent_on_frame(ag(1), conn, flat, len);
    free(flat);
    drpc_outframe_free(fr);
    drpc_value_free(b);
    pump();
  }
  CHECK_EQ_INT(dbg(1, "num_forks"), 0);
  check_clean();
  drpc_error_clear(&err);
  down();
}

static void test_proxies(void) {
  up(3);
  drpc_error err = DRPC_ERROR_INIT;
  drpc_rref *u = remote(0, "w1", DRPC_FUNCTION, "r::sum", ints(1, 30), -1);
  drpc_value *pa = ints(1, 12);
  drpc_value *out = NULL;
  CHECK_EQ_INT(drpc_rref_rpc_sync(u, DRPC_FUNCTION, "r::add_to", pa, NULL, -1,
                                  &out, &err),
               0);
  CHECK_EQ_INT(int_of(out), 42);
  drpc_value_free(out);
  drpc_future *f = NULL;
  CHECK_EQ_INT(
      drpc_rref_rpc_async(u, DRPC_BUILTIN, "aten::mul", pa, NULL, -1, &f, &err),
      0);
  CHECK_EQ_INT(drpc_future_get(f, -1, NULL, &err), 0);
  CHECK_EQ_INT(int_of(drpc_future_value(f)), 360);
  drpc_future_decref(f);
  drpc_rref *r2 = NULL;
  CHECK_EQ_INT(
      drpc_rref_remote(u, DRPC_FUNCTION, "r::add_to", pa, NULL, -1, &r2, &err),
      0);
  CHECK_EQ_INT(to_here_int(r2), 42);
  CHECK_EQ_INT(drpc_rref_owner(r2)->id, 1);
  /* A missing function is the owner's error. */
  CHECK_EQ_INT(
      drpc_rref_rpc_sync(u, DRPC_FUNCTION, "r::nope", pa, NULL, -1, &out, &err),
      DRPC_ENOTFOUND);
  CHECK_CONTAINS(err.msg, "function 'r::nope' is not registered on worker w1");
  /* A proxy on an RRef whose value is still being made waits for it. */
  nheld = 0;
  drpc_rref *slow = remote(0, "w1", DRPC_FUNCTION, "r::hold", NULL, -1);
  CHECK_EQ_INT(drpc_rref_rpc_async(slow, DRPC_FUNCTION, "r::add_to", pa, NULL,
                                   -1, &f, &err),
               0);
  pump();
  CHECK(!drpc_future_done(f));
  CHECK_EQ_INT(nheld, 1);
  drpc_future_set_value(held[0], drpc_value_int(1));
  drpc_future_decref(held[0]);
  pump();
  CHECK_EQ_INT(drpc_future_get(f, -1, NULL, &err), 0);
  CHECK_EQ_INT(int_of(drpc_future_value(f)), 13);
  drpc_future_decref(f);
  drpc_rref_decref(slow);
  drpc_value_free(pa);
  drpc_rref_decref(r2);
  drpc_rref_decref(u);
  pump();
  check_clean();
  drpc_error_clear(&err);
  down();
}

static void test_timeout(void) {
  up(2);
  nheld = 0;
  drpc_error err = DRPC_ERROR_INIT;
  uint64_t t0 = N.now_ns;
  drpc_rref *u = remote(0, "w1", DRPC_FUNCTION, "r::hold", NULL, 0.01);
  drpc_future *cf = drpc_rref_creation_future(u);
  CHECK_EQ_INT(drpc_future_get(cf, -1, NULL, &err), DRPC_ETIMEOUT);
  CHECK_CONTAINS(err.msg, "RPC ran for more than set timeout (10 ms)");
  CHECK_EQ_INT(N.now_ns, t0 + 10 * MS);
  drpc_value *v = NULL;
  CHECK_EQ_INT(drpc_rref_to_here(u, -1, &v, &err), DRPC_ETIMEOUT);
  CHECK_STR_EQ(err.msg, "RRef creation via rpc.remote() timed out, and it is "
                        "possible that the RRef on the owner node does not "
                        "exist.");
  /* Forking it fails the same way. */
  drpc_value *args = drpc_value_list_of(1, drpc_value_rref(u));
  drpc_future *f = NULL;
  CHECK_EQ_INT(drpc_rpc_async(ag(0), "w1", DRPC_FUNCTION, "r::rref_state", args,
                              NULL, -1, &f, &err),
               DRPC_ETIMEOUT);
  drpc_value_free(args);
  drpc_future_decref(cf);
  /* The owner settles later; the user's delete still cleans it up. */
  CHECK_EQ_INT(nheld, 1);
  drpc_future_set_value(held[0], drpc_value_int(3));
  drpc_future_decref(held[0]);
  drpc_rref_decref(u);
  pump();
  check_clean();
  /* to_here has its own timeout. */
  nheld = 0;
  drpc_rref *s = remote(0, "w1", DRPC_FUNCTION, "r::hold", NULL, 0);
  CHECK_EQ_INT(drpc_rref_to_here(s, 0.5, &v, &err), DRPC_ETIMEOUT);
  drpc_future_set_value(held[0], drpc_value_int(4));
  drpc_future_decref(held[0]);
  CHECK_EQ_INT(to_here_int(s), 4);
  drpc_rref_decref(s);
  pump();
  check_clean();
  drpc_error_clear(&err);
  down();
}

/* Debug info counts as the reference's test does, then the clean-up and
 * the leak check. */
static void test_debug_info_and_leaks(void) {
  drpc_options o;
  drpc_options_default(&o);
  o.ignore_rref_leak = false;
  up_opts(2, &o);
  drpc_error err = DRPC_ERROR_INIT;
  drpc_rref *l = NULL;
  CHECK_EQ_INT(drpc_rref_new_local(ag(0), drpc_value_int(1), &l, &err), 0);
  CHECK_EQ_INT(dbg(0, "num_owner_rrefs"), 0);
  /* Sharing puts it in the owner table. */
  N.auto_run_jobs = false;
  drpc_future *f = NULL;
  drpc_value *args = drpc_value_list_of(1, drpc_value_rref(l));
  drpc_rpc_async(ag(0), "w1", DRPC_FUNCTION, "r::rref_state", args, NULL, -1,
                 &f, &err);
  drpc_value_free(args);
  tnet_run(&N, 1);
  CHECK_EQ_INT(dbg(0, "num_owner_rrefs"), 1);
  CHECK_EQ_INT(dbg(0, "num_forks"), 1);
  N.auto_run_jobs = true;
  pump();
  drpc_future_decref(f);
  pump();
  CHECK_EQ_INT(dbg(0, "num_owner_rrefs"), 0);
  /* Two remotes: two pending users until their owner answers. */
  drpc_rref *a = remote(0, "w1", DRPC_FUNCTION, "r::sum", ints(1, 1), -1);
  drpc_rref *b = remote(0, "w1", DRPC_FUNCTION, "r::sum", ints(1, 2), -1);
  CHECK_EQ_INT(dbg(0, "num_pending_users"), 2);
  pump();
  CHECK_EQ_INT(dbg(0, "num_pending_users"), 0);
  CHECK_EQ_INT(dbg(1, "num_owner_rrefs"), 2);
  CHECK_EQ_INT(dbg(1, "num_forks"), 2);
  drpc_rref_decref(b);
  pump();
  /* w1 shuts down while w0 still holds `a`: the leak is reported. */
  drpc_error serr = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_agent_shutdown(ag(1), false, 0, &serr), DRPC_ESTATE);
  char want[200];
  snprintf(want, sizeof want,
           "Leaking RRef GloballyUniqueId(created_on=0, local_id=2) with fork "
           "Id GloballyUniqueId(created_on=0, local_id=3)");
  CHECK_CONTAINS(serr.msg, want);
  CHECK_EQ_INT(dbg(1, "num_owner_rrefs"), 0);
  CHECK_EQ_INT(dbg(1, "num_forks"), 0);
  drpc_error_clear(&serr);
  /* w0 deletes everything it uses; with its peer gone the delete gives up
   * after its retries. */
  CHECK_EQ_INT(drpc_rref_context_delete_all(ag(0), 0, &serr), 0);
  check_clean();
  drpc_value *v = NULL;
  CHECK_EQ_INT(drpc_rref_to_here(a, -1, &v, &err), DRPC_ESTATE);
  CHECK_CONTAINS(err.msg, "has been deleted. Cannot call to_here() on it "
                          "after deletion.");
  args = drpc_value_list_of(1, drpc_value_rref(a));
  CHECK_EQ_INT(drpc_rpc_async(ag(0), "w0", DRPC_FUNCTION, "r::rref_state", args,
                              NULL, -1, &f, &err),
               DRPC_ESTATE);
  CHECK_STR_EQ(err.msg, "Cannot call fork an UserRRef after deletion.");
  drpc_value_free(args);
  /* Its peer is gone, so w0 stops without the agreement; nothing leaks. */
  CHECK_EQ_INT(drpc_agent_shutdown(ag(0), false, 0, &serr), 0);
  check_clean();
  /* Handles outlive the agent and fail cleanly. */
  down();
  CHECK_EQ_INT(drpc_rref_to_here(a, -1, &v, &err), DRPC_ESTATE);
  const drpc_value *lv = NULL;
  CHECK_EQ_INT(drpc_rref_local_value(l, &lv, &err), 0);
  CHECK_EQ_INT(int_of(lv), 1);
  drpc_rref_decref(a);
  drpc_rref_decref(l);
  drpc_error_clear(&serr);
  drpc_error_clear(&err);
}

/* Many forks across four workers, then everything is released. */
static void test_stress_forks(void) {
  up(4);
  drpc_error err = DRPC_ERROR_INIT;
  drpc_rref *rs[4];
  for (int i = 0; i < 4; i++) {
    char dst[4];
    snprintf(dst, sizeof dst, "w%d", (i + 1) % 4);
    rs[i] = remote(i, dst, DRPC_FUNCTION, "r::sum", ints(1, i), -1);
  }
  int forks = 0;
  for (int k = 0; k < 300; k++) {
    int from = k % 4;
    char dst[4];
    snprintf(dst, sizeof dst, "w%d", (k / 4 + from + 2) % 4);
    drpc_value *args =
        drpc_value_list_of(2, drpc_value_rref(rs[from]),
                           drpc_value_list_of(1, drpc_value_rref(rs[from])));
    drpc_value *out = NULL;
    drpc_rpc_sync(ag(from), dst, DRPC_FUNCTION, "r::echo", args, NULL, -1, &out,
                  &err);
    drpc_rref *b0 = drpc_value_get_rref(drpc_list_at(out, 0));
    CHECK(b0 && drpc_rref_same(b0, rs[from]));
    forks += 4;
    drpc_value_free(out);
    drpc_value_free(args);
  }
  CHECK(forks >= 1000);
  for (int i = 0; i < 4; i++)
    CHECK_EQ_INT(to_here_int(rs[i]), i);
  for (int i = 0; i < 4; i++)
    drpc_rref_decref(rs[i]);
  pump();
  check_clean();
  drpc_error_clear(&err);
  down();
}

int main(void) {
  register_all();
  RUN(test_ids_and_strings);
  RUN(test_ids_of_later_lives);
  RUN(test_remote_to_here);
  RUN(test_remote_self_and_local);
  RUN(test_forks_in_values);
  RUN(test_confirmed_before_run);
  RUN(test_retries_and_duplicates);
  RUN(test_proxies);
  RUN(test_timeout);
  RUN(test_debug_info_and_leaks);
  RUN(test_stress_forks);
  drpc_registry_free(R);
  return test_finish();
}
