/* Integration: RRefs over real TCP between four worker processes (tcp://
 * init). The driver (w0) runs the RRef scenarios of the reference's test
 * suite: string forms, remote / to_here (also to self), nested remotes and
 * nested RRefs, RRefs passed and returned (owner -> user, user -> user,
 * user -> owner), forward chains, confirmation before the function runs,
 * proxies, timeouts, owner equality, a stress run of more than 1,000
 * forks, and use after shutdown. Every worker then shuts down gracefully
 * and checks that its four RRef debug counters are zero. */
#include <math.h>
#include <stdbool.h>
#include <unistd.h>

#include "test.h"

#include "it_util.h"

#define WORLD 4
#define TIMEOUT_S 20

/* ---- functions every worker serves ----------------------------------------
 */

static int64_t int_of(const drpc_value *v) {
  return v && v->kind == DRPC_VAL_INT ? v->u.i : INT64_MIN;
}

static drpc_value *fn_sum(drpc_call *call, const drpc_value *args,
                          const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)kwargs;
  (void)err;
  int64_t s = 0;
  for (size_t i = 0; i < drpc_value_len(args); i++)
    s += int_of(drpc_list_at(args, i));
  return drpc_value_int(s);
}

/* [rref, k]: to_here(rref) + k. */
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
  if (drpc_rref_to_here(r, TIMEOUT_S, &v, err))
    return NULL;
  int64_t x = int_of(v) + int_of(drpc_list_at(args, 1));
  drpc_value_free(v);
  return drpc_value_int(x);
}

/* [rref...]: how many arguments are confirmed user RRefs or owner RRefs. */
static drpc_value *fn_confirmed(drpc_call *call, const drpc_value *args,
                                const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)kwargs;
  (void)err;
  int64_t n = 0;
  for (size_t i = 0; i < drpc_value_len(args); i++) {
    drpc_rref *r = drpc_value_get_rref(drpc_list_at(args, i));
    n += r && drpc_rref_confirmed_by_owner(r);
  }
  return drpc_value_int(n);
}

/* [x]: an owner RRef made here, holding x. */
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

/* [dst]: remote(dst, aten::add(1, 2)).to_here(). */
static drpc_value *fn_nested_remote(drpc_call *call, const drpc_value *args,
                                    const drpc_value *kwargs, drpc_error *err) {
  (void)kwargs;
  drpc_rref *r = NULL;
  drpc_value *a = drpc_value_list_of(2, drpc_value_int(1), drpc_value_int(2));
  int rc = drpc_remote(drpc_call_agent(call), drpc_list_at(args, 0)->u.s.data,
                       DRPC_BUILTIN, "aten::add", a, NULL, TIMEOUT_S, &r, err);
  drpc_value_free(a);
  if (rc)
    return NULL;
  drpc_value *v = NULL;
  drpc_rref_to_here(r, TIMEOUT_S, &v, err);
  drpc_rref_decref(r);
  return v;
}

/* [dst]: [remote(dst, 1+1), remote(dst, 1+2)] (RRefs owned by dst). */
static drpc_value *fn_nested_rref(drpc_call *call, const drpc_value *args,
                                  const drpc_value *kwargs, drpc_error *err) {
  (void)kwargs;
  drpc_value *out = drpc_value_list();
  for (int k = 1; k <= 2; k++) {
    drpc_rref *r = NULL;
    drpc_value *a = drpc_value_list_of(2, drpc_value_int(1), drpc_value_int(k));
    int rc =
        drpc_remote(drpc_call_agent(call), drpc_list_at(args, 0)->u.s.data,
                    DRPC_BUILTIN, "aten::add", a, NULL, TIMEOUT_S, &r, err);
    drpc_value_free(a);
    if (rc) {
      drpc_value_free(out);
      return NULL;
    }
    drpc_list_append(out, drpc_value_rref(r));
    drpc_rref_decref(r);
  }
  return out;
}

/* [rref, dst]: r::rref_plus(rref, 100) on dst. */
static drpc_value *fn_forward(drpc_call *call, const drpc_value *args,
                              const drpc_value *kwargs, drpc_error *err) {
  (void)kwargs;
  drpc_value *a2 = drpc_value_list_of(
      2, drpc_value_clone(drpc_list_at(args, 0)), drpc_value_int(100));
  drpc_value *out = NULL;
  drpc_rpc_sync(drpc_call_agent(call), drpc_list_at(args, 1)->u.s.data,
                DRPC_FUNCTION, "r::rref_plus", a2, NULL, TIMEOUT_S, &out, err);
  drpc_value_free(a2);
  return out;
}

static drpc_value *fn_echo(drpc_call *call, const drpc_value *args,
                           const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)kwargs;
  (void)err;
  return drpc_value_clone(args);
}

static drpc_value *fn_add_to(drpc_call *call, const drpc_value *args,
                             const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)kwargs;
  (void)err;
  return drpc_value_int(int_of(drpc_list_at(args, 0)) +
                        int_of(drpc_list_at(args, 1)));
}

static drpc_value *fn_sleep(drpc_call *call, const drpc_value *args,
                            const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)kwargs;
  (void)err;
  usleep((useconds_t)int_of(drpc_list_at(args, 0)) * 1000);
  return drpc_value_int(1);
}

static void register_rref_functions(void) {
  drpc_registry *r = drpc_registry_default();
  drpc_register_function(r, "r::sum", fn_sum, NULL);
  drpc_register_function(r, "r::rref_plus", fn_rref_plus, NULL);
  drpc_register_function(r, "r::confirmed", fn_confirmed, NULL);
  drpc_register_function(r, "r::make_local", fn_make_local, NULL);
  drpc_register_function(r, "r::nested_remote", fn_nested_remote, NULL);
  drpc_register_function(r, "r::nested_rref", fn_nested_rref, NULL);
  drpc_register_function(r, "r::forward", fn_forward, NULL);
  drpc_register_function(r, "r::echo", fn_echo, NULL);
  drpc_register_function(r, "r::add_to", fn_add_to, NULL);
  drpc_register_function(r, "r::sleep", fn_sleep, NULL);
}

/* ---- driver helpers
 * ---------------------------------------------------------- */

static drpc_rref *remote(drpc_agent *a, const char *dst, drpc_call_kind kind,
                         const char *fn, drpc_value *args, double timeout_s) {
  drpc_rref *r = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_remote(a, dst, kind, fn, args, NULL, timeout_s, &r, &err);
  if (rc)
    fprintf(stderr, "  remote %s on %s: %s\n", fn, dst,
            drpc_error_message(&err));
  CHECK_EQ_INT(rc, 0);
  drpc_error_clear(&err);
  drpc_value_free(args);
  return r;
}

static int64_t to_here_int(drpc_rref *r) {
  drpc_value *v = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  if (!r)
    return INT64_MIN;
  int rc = drpc_rref_to_here(r, TIMEOUT_S, &v, &err);
  if (rc)
    fprintf(stderr, "  to_here: %s\n", drpc_error_message(&err));
  int64_t x = rc ? INT64_MIN : int_of(v);
  drpc_value_free(v);
  drpc_error_clear(&err);
  return x;
}

static drpc_value *call(drpc_agent *a, const char *dst, const char *fn,
                        drpc_value *args) {
  drpc_value *out = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_rpc_sync(a, dst, DRPC_FUNCTION, fn, args, NULL, TIMEOUT_S, &out,
                         &err);
  if (rc)
    fprintf(stderr, "  %s on %s: %s\n", fn, dst, drpc_error_message(&err));
  CHECK_EQ_INT(rc, 0);
  drpc_error_clear(&err);
  drpc_value_free(args);
  return out;
}

static drpc_value *ints2(int x, int y) {
  return drpc_value_list_of(2, drpc_value_int(x), drpc_value_int(y));
}

/* ---- the scenarios
 * ------------------------------------------------------------ */

static void check_strings_and_owner(drpc_agent *a) {
  drpc_rref *l = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_rref_new_local(a, drpc_value_int(35), &l, &err), 0);
  char buf[256];
  drpc_rref_format(l, buf, sizeof buf);
  CHECK_STR_EQ(buf, "OwnerRRef(GloballyUniqueId(created_on=0, local_id=0))");
  drpc_rref *u = remote(a, "w1", DRPC_BUILTIN, "aten::add", ints2(1, 2), -1);
  drpc_rref_format(u, buf, sizeof buf);
  CHECK_STR_EQ(buf, "UserRRef(RRefId = GloballyUniqueId(created_on=0, "
                    "local_id=1), ForkId = GloballyUniqueId(created_on=0, "
                    "local_id=2))");
  CHECK_EQ_INT(to_here_int(u), 3);
  drpc_worker_info w1;
  CHECK_EQ_INT(drpc_agent_worker_by_name(a, "w1", &w1, &err), 0);
  CHECK(drpc_worker_info_equal(drpc_rref_owner(u), &w1));
  CHECK(drpc_worker_info_equal(drpc_rref_owner(l), drpc_agent_self(a)));
  CHECK_STR_EQ(drpc_rref_owner_name(u), "w1");
  const drpc_value *lv = NULL;
  CHECK_EQ_INT(drpc_rref_local_value(u, &lv, &err), DRPC_ESTATE);
  CHECK_CONTAINS(err.msg, "can't call localValue() on user WorkerInfo(id=0, "
                          "name=w0). Call it on owner WorkerInfo(id=1, "
                          "name=w1)");
  drpc_rref_decref(u);
  drpc_rref_decref(l);
  drpc_error_clear(&err);
}

static void check_remote_and_self(drpc_agent *a) {
  drpc_rref *s = remote(a, "w0", DRPC_FUNCTION, "r::sum", ints2(20, 22), -1);
  CHECK(drpc_rref_is_owner(s));
  CHECK_EQ_INT(to_here_int(s), 42);
  /* An owner RRef passed to self and to a user. */
  drpc_value *out =
      call(a, "w0", "r::rref_plus",
           drpc_value_list_of(2, drpc_value_rref(s), drpc_value_int(1)));
  CHECK_EQ_INT(int_of(out), 43);
  drpc_value_free(out);
  out = call(a, "w3", "r::rref_plus",
             drpc_value_list_of(2, drpc_value_rref(s), drpc_value_int(2)));
  CHECK_EQ_INT(int_of(out), 44);
  drpc_value_free(out);
  drpc_rref_decref(s);
  /* Nested remote and nested RRefs. */
  drpc_rref *n = remote(a, "w1", DRPC_FUNCTION, "r::nested_remote",
                        drpc_value_list_of(1, drpc_value_str("w2")), -1);
  CHECK_EQ_INT(to_here_int(n), 3);
  drpc_rref_decref(n);
  drpc_rref *nr = remote(a, "w1", DRPC_FUNCTION, "r::nested_rref",
                         drpc_value_list_of(1, drpc_value_str("w2")), -1);
  drpc_value *lst = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_rref_to_here(nr, TIMEOUT_S, &lst, &err), 0);
  CHECK_EQ_INT(drpc_value_len(lst), 2);
  for (size_t i = 0; i < drpc_value_len(lst); i++) {
    drpc_rref *inner = drpc_value_get_rref(drpc_list_at(lst, i));
    CHECK(inner && !drpc_rref_is_owner(inner));
    CHECK_STR_EQ(inner ? drpc_rref_owner_name(inner) : NULL, "w2");
    CHECK_EQ_INT(to_here_int(inner), 2 + (int64_t)i);
  }
  drpc_value_free(lst);
  drpc_rref_decref(nr);
  drpc_error_clear(&err);
}

static void check_passing(drpc_agent *a) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_rref *l = NULL;
  CHECK_EQ_INT(drpc_rref_new_local(a, drpc_value_int(10), &l, &err), 0);
  drpc_rref *u = remote(a, "w1", DRPC_FUNCTION, "r::sum", ints2(20, 3), -1);
  /* Local (owner -> user), user -> user and user -> owner in one call;
   * every RRef is confirmed by the time the function runs. */
  for (int w = 1; w < WORLD; w++) {
    char dst[8];
    snprintf(dst, sizeof dst, "w%d", w);
    drpc_value *out =
        call(a, dst, "r::confirmed",
             drpc_value_list_of(2, drpc_value_rref(l), drpc_value_rref(u)));
    CHECK_EQ_INT(int_of(out), 2);
    drpc_value_free(out);
    out = call(a, dst, "r::rref_plus",
               drpc_value_list_of(2, drpc_value_rref(u), drpc_value_int(w)));
    CHECK_EQ_INT(int_of(out), 23 + w);
    drpc_value_free(out);
  }
  /* Forward chains: w0 -> w2 -> w3 and w0 -> w3 -> w1 (the owner). */
  drpc_value *out =
      call(a, "w2", "r::forward",
           drpc_value_list_of(2, drpc_value_rref(u), drpc_value_str("w3")));
  CHECK_EQ_INT(int_of(out), 123);
  drpc_value_free(out);
  out = call(a, "w3", "r::forward",
             drpc_value_list_of(2, drpc_value_rref(l), drpc_value_str("w1")));
  CHECK_EQ_INT(int_of(out), 110);
  drpc_value_free(out);
  /* Returned RRefs: a local one made on w2, and ours coming back. */
  out =
      call(a, "w2", "r::make_local", drpc_value_list_of(1, drpc_value_int(77)));
  drpc_rref *back = drpc_value_get_rref(out);
  CHECK(back && !drpc_rref_is_owner(back));
  CHECK_EQ_INT(to_here_int(back), 77);
  drpc_value_free(out);
  out = call(a, "w2", "r::echo", drpc_value_list_of(1, drpc_value_rref(l)));
  CHECK(drpc_value_get_rref(drpc_list_at(out, 0)) == l);
  drpc_value_free(out);
  /* Proxies. */
  drpc_value *pa = drpc_value_list_of(1, drpc_value_int(19));
  CHECK_EQ_INT(drpc_rref_rpc_sync(u, DRPC_FUNCTION, "r::add_to", pa, NULL,
                                  TIMEOUT_S, &out, &err),
               0);
  CHECK_EQ_INT(int_of(out), 42);
  drpc_value_free(out);
  drpc_future *f = NULL;
  CHECK_EQ_INT(drpc_rref_rpc_async(l, DRPC_BUILTIN, "aten::add", pa, NULL,
                                   TIMEOUT_S, &f, &err),
               0);
  CHECK_EQ_INT(drpc_future_get(f, TIMEOUT_S, NULL, &err), 0);
  CHECK_EQ_INT(int_of(drpc_future_value(f)), 29);
  drpc_future_decref(f);
  drpc_rref *pr = NULL;
  CHECK_EQ_INT(drpc_rref_remote(u, DRPC_FUNCTION, "r::add_to", pa, NULL,
                                TIMEOUT_S, &pr, &err),
               0);
  CHECK_EQ_INT(to_here_int(pr), 42);
  const char *type = NULL;
  CHECK_EQ_INT(drpc_rref_type(pr, TIMEOUT_S, &type, &err), 0);
  CHECK_STR_EQ(type, "int");
  drpc_rref_decref(pr);
  drpc_value_free(pa);
  drpc_rref_decref(u);
  drpc_rref_decref(l);
  drpc_error_clear(&err);
}

static void check_timeout(drpc_agent *a) {
  drpc_rref *r = remote(a, "w1", DRPC_FUNCTION, "r::sleep",
                        drpc_value_list_of(1, drpc_value_int(300)), 0.05);
  drpc_future *cf = drpc_rref_creation_future(r);
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_future_get(cf, TIMEOUT_S, NULL, &err), DRPC_ETIMEOUT);
  drpc_value *v = NULL;
  CHECK_EQ_INT(drpc_rref_to_here(r, TIMEOUT_S, &v, &err), DRPC_ETIMEOUT);
  CHECK_STR_EQ(err.msg, "RRef creation via rpc.remote() timed out, and it is "
                        "possible that the RRef on the owner node does not "
                        "exist.");
  drpc_future_decref(cf);
  drpc_rref_decref(r);
  drpc_error_clear(&err);
}

/* 350 calls, each forking three RRefs (owned by w0, w1, w2) to w1..w3,
 * 50 in flight at a time. */
static void check_stress(drpc_agent *a) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_rref *l = NULL;
  CHECK_EQ_INT(drpc_rref_new_local(a, drpc_value_int(0), &l, &err), 0);
  drpc_rref *u1 = remote(a, "w1", DRPC_FUNCTION, "r::sum", ints2(1, 0), -1);
  drpc_rref *u2 = remote(a, "w2", DRPC_FUNCTION, "r::sum", ints2(2, 0), -1);
  int forks = 0, ok = 0;
  drpc_future *fs[50];
  for (int batch = 0; batch < 7; batch++) {
    for (int i = 0; i < 50; i++) {
      char dst[8];
      snprintf(dst, sizeof dst, "w%d", 1 + (batch * 50 + i) % 3);
      drpc_value *args = drpc_value_list_of(
          3, drpc_value_rref(l), drpc_value_rref(u1), drpc_value_rref(u2));
      fs[i] = NULL;
      drpc_rpc_async(a, dst, DRPC_FUNCTION, "r::confirmed", args, NULL,
                     TIMEOUT_S, &fs[i], &err);
      drpc_value_free(args);
      forks += 3;
    }
    for (int i = 0; i < 50; i++) {
      if (fs[i] && drpc_future_get(fs[i], TIMEOUT_S, NULL, &err) == 0 &&
          int_of(drpc_future_value(fs[i])) == 3)
        ok++;
      drpc_future_decref(fs[i]);
    }
  }
  CHECK(forks >= 1000);
  CHECK_EQ_INT(ok, 350);
  CHECK_EQ_INT(to_here_int(u2), 2);
  drpc_rref_decref(u1);
  drpc_rref_decref(u2);
  drpc_rref_decref(l);
  drpc_error_clear(&err);
}

static long dbg(drpc_agent *a, const char *key) {
  drpc_value *d = drpc_agent_debug_info(a);
  const drpc_value *v = drpc_dict_get(d, key);
  long r = v && v->kind == DRPC_VAL_STR ? atol(v->u.s.data) : -999;
  drpc_value_free(d);
  return r;
}

/* The counters as the RRef context's teardown found them: the live ones
 * are reset by the teardown itself, so only these can show a leak. */
static void check_counters_zero(drpc_agent *a, const char *who) {
  static const char *const keys[] = {
      "num_owner_rrefs_at_shutdown", "num_pending_futures_at_shutdown",
      "num_pending_users_at_shutdown", "num_forks_at_shutdown"};
  for (int k = 0; k < 4; k++) {
    long v = dbg(a, keys[k]);
    if (v != 0)
      fprintf(stderr, "  %s: %s = %ld after shutdown\n", who, keys[k], v);
    CHECK_EQ_INT(v, 0);
  }
}

/* ---- workers
 * ------------------------------------------------------------------ */

typedef struct wargs {
  int rank;
  char init[64];
} wargs;

static void worker(void *arg) {
  wargs *w = arg;
  char name[8];
  snprintf(name, sizeof name, "w%d", w->rank);
  drpc_options o;
  drpc_options_default(&o);
  o.init_method = w->init;
  o.rpc_timeout_s = TIMEOUT_S;
  o.ignore_rref_leak = false;
  drpc_error err = DRPC_ERROR_INIT;
  drpc_agent *a = it_init_driver(name, w->rank, WORLD, &o, &err);
  CHECK(a != NULL);
  if (!a) {
    fprintf(stderr, "%s: init: %s\n", name, drpc_error_message(&err));
    drpc_error_clear(&err);
    return;
  }
  drpc_rref *kept = NULL;
  if (w->rank == 0) {
    check_strings_and_owner(a);
    check_remote_and_self(a);
    check_passing(a);
    check_timeout(a);
    check_stress(a);
    /* Held through shutdown: the clean-up deletes it. */
    kept = remote(a, "w2", DRPC_FUNCTION, "r::sum", ints2(5, 5), -1);
    CHECK_EQ_INT(to_here_int(kept), 10);
  }
  int rc = drpc_agent_shutdown(a, true, 30, &err);
  if (rc)
    fprintf(stderr, "%s: shutdown: %s\n", name, drpc_error_message(&err));
  CHECK_EQ_INT(rc, 0);
  check_counters_zero(a, name);
  if (kept) {
    /* Use after shutdown fails cleanly. */
    drpc_value *v = NULL;
    CHECK_EQ_INT(drpc_rref_to_here(kept, 1, &v, &err), DRPC_ESTATE);
    CHECK_CONTAINS(err.msg, "Cannot call to_here() on it after deletion.");
    drpc_value *args = drpc_value_list_of(1, drpc_value_rref(kept));
    drpc_future *f = NULL;
    CHECK(drpc_rpc_async(a, "w1", DRPC_FUNCTION, "r::confirmed", args, NULL, 1,
                         &f, &err) != 0);
    drpc_value_free(args);
  }
  CHECK_EQ_INT(drpc_shutdown(a, true, 30, &err), 0);
  drpc_rref_decref(kept);
  drpc_error_clear(&err);
}

int main(void) {
  it_setup(170);
  register_rref_functions();
  for (int attempt = 0; attempt < IT_PORT_ATTEMPTS; attempt++) {
    wargs w[WORLD];
    it_checked c[WORLD];
    int port = it_free_port();
    for (int i = 0; i < WORLD; i++) {
      w[i].rank = i;
      snprintf(w[i].init, sizeof w[i].init, "tcp://127.0.0.1:%d", port);
      char what[16];
      snprintf(what, sizeof what, "w%d", i);
      c[i] =
          it_fork_checked(i == 0 ? "driver w0" : "worker", worker, &w[i], 150);
    }
    bool retry = false;
    for (int i = 0; i < WORLD; i++) {
      pid_t watch[WORLD];
      for (int k = 0; k < WORLD; k++)
        watch[k] = k == i ? -1 : c[k].pid;
      if (it_join_watch(&c[i], 150, watch, WORLD) == IT_EXIT_RETRY)
        retry = true;
    }
    if (!retry)
      break;
    for (int i = 0; i < WORLD; i++)
      it_discard_checked(&c[i]);
  }
  return test_finish();
}
