/* Unit tests for core/future.c with the real posix env and real threads:
 * completion once, outcomes, timed waits, cross-thread wake-ups, callbacks,
 * then-chaining, wait_all and reference counts. */
#include "drpc/future.h"
#include "drpc/net.h"

#include "test.h"

#include <math.h>
#include <pthread.h>
#include <time.h>

static const drpc_env *env(void) {
  return drpc_posix_basic_env();
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void test_set_once(void) {
  drpc_future *f = drpc_future_new(env());
  CHECK(f != NULL);
  CHECK(!drpc_future_done(f));
  CHECK_EQ_INT(drpc_future_set_value(f, drpc_value_int(7)), 0);
  CHECK(drpc_future_done(f));
  /* The second value is refused and freed (ASan sees a leak otherwise). */
  CHECK_EQ_INT(drpc_future_set_value(f, drpc_value_str("second")), DRPC_ESTATE);
  drpc_error e = {DRPC_EUSER, "late"};
  CHECK_EQ_INT(drpc_future_set_error(f, &e), DRPC_ESTATE);
  CHECK_EQ_INT(drpc_future_fail(f, DRPC_EIO, "late %d", 2), DRPC_ESTATE);
  /* The first outcome stands. */
  CHECK_EQ_INT(drpc_future_error(f, NULL), 0);
  const drpc_value *v = drpc_future_value(f);
  CHECK(v && v->kind == DRPC_VAL_INT && v->u.i == 7);
  drpc_future_decref(f);

  /* An error first: a later value is refused too. */
  f = drpc_future_new(env());
  CHECK_EQ_INT(drpc_future_fail(f, DRPC_EIO, "disk %s", "gone"), 0);
  CHECK_EQ_INT(drpc_future_set_value(f, drpc_value_int(1)), DRPC_ESTATE);
  drpc_error got = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_future_error(f, &got), DRPC_EIO);
  CHECK_STR_EQ(got.msg, "disk gone");
  drpc_error_clear(&got);
  drpc_future_decref(f);
}

static void test_value_error_take(void) {
  /* NULL completes with nil. */
  drpc_future *f = drpc_future_new(env());
  CHECK_EQ_INT(drpc_future_set_value(f, NULL), 0);
  CHECK(drpc_future_done(f));
  CHECK_EQ_INT(drpc_future_error(f, NULL), 0);
  CHECK(drpc_future_value(f) == NULL);
  drpc_future_decref(f);

  f = drpc_future_new(env());
  /* Not complete yet: no value, and error reports the state. */
  CHECK(drpc_future_value(f) == NULL);
  CHECK(drpc_future_take_value(f) == NULL);
  drpc_error got = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_future_error(f, &got), DRPC_ESTATE);
  CHECK_STR_EQ(got.msg, "future is not complete");
  drpc_error_clear(&got);

  CHECK_EQ_INT(drpc_future_set_value(f, drpc_value_str("hello")), 0);
  const drpc_value *v = NULL;
  CHECK_EQ_INT(drpc_future_get(f, 0, &v, &got), 0);
  CHECK(v && v->kind == DRPC_VAL_STR);
  CHECK_STR_EQ(v->u.s.data, "hello");
  /* take_value moves it out; the future then holds nil. */
  drpc_value *taken = drpc_future_take_value(f);
  CHECK(taken && taken->kind == DRPC_VAL_STR);
  CHECK_STR_EQ(taken->u.s.data, "hello");
  CHECK(drpc_future_value(f) == NULL);
  CHECK(drpc_future_take_value(f) == NULL);
  CHECK_EQ_INT(drpc_future_error(f, NULL), 0);
  drpc_value_free(taken);
  drpc_future_decref(f);

  /* A failed future has no value to give, and get reports the error. */
  f = drpc_future_new(env());
  drpc_error e = {DRPC_EREMOTE, "Error on Node 1: boom"};
  CHECK_EQ_INT(drpc_future_set_error(f, &e), 0);
  CHECK(drpc_future_value(f) == NULL);
  CHECK(drpc_future_take_value(f) == NULL);
  v = (const drpc_value *)f; /* poison: get must reset it */
  CHECK_EQ_INT(drpc_future_get(f, 1.0, &v, &got), DRPC_EREMOTE);
  CHECK(v == NULL);
  CHECK_STR_EQ(got.msg, "Error on Node 1: boom");
  drpc_error_clear(&got);
  drpc_future_decref(f);

  /* An error without a code still fails the future. */
  f = drpc_future_new(env());
  drpc_error zero = {0, "no code"};
  CHECK_EQ_INT(drpc_future_set_error(f, &zero), 0);
  CHECK_EQ_INT(drpc_future_error(f, &got), DRPC_EINVAL);
  CHECK_STR_EQ(got.msg, "no code");
  drpc_error_clear(&got);
  drpc_future_decref(f);

  /* A future that failed with DRPC_ESTATE keeps its own message: the code
   * alone must not be mistaken for "not complete". */
  f = drpc_future_new(env());
  CHECK_EQ_INT(drpc_future_fail(f, DRPC_ESTATE, "agent in wrong state"), 0);
  CHECK_EQ_INT(drpc_future_error(f, &got), DRPC_ESTATE);
  CHECK_STR_EQ(got.msg, "agent in wrong state");
  drpc_error_clear(&got);
  drpc_future_decref(f);
}

static void test_wait_timeout(void) {
  drpc_future *f = drpc_future_new(env());
  CHECK_EQ_INT(drpc_future_wait(f, 0), DRPC_ETIMEOUT);
  CHECK_EQ_INT(drpc_future_wait(f, 0.02), DRPC_ETIMEOUT);
  CHECK(!drpc_future_done(f));
  drpc_error got = DRPC_ERROR_INIT;
  const drpc_value *v = NULL;
  CHECK_EQ_INT(drpc_future_get(f, 0.01, &v, &got), DRPC_ETIMEOUT);
  CHECK_CONTAINS(got.msg, "did not complete");
  drpc_error_clear(&got);
  CHECK_EQ_INT(drpc_future_set_value(f, drpc_value_int(1)), 0);
  /* Done: waits return at once whatever the timeout. */
  CHECK_EQ_INT(drpc_future_wait(f, 0), 0);
  CHECK_EQ_INT(drpc_future_wait(f, -1), 0);
  drpc_future_decref(f);
}

/* Waiting on the thread that owns the core can never finish: refused. */
static bool owner_yes(void *ctx) {
  (void)ctx;
  return true;
}

typedef struct waiter {
  drpc_future *f;
  double timeout_s;
  int rc;
  int64_t seen;
} waiter;

static void *wait_thread(void *arg) {
  waiter *w = arg;
  w->rc = drpc_future_wait(w->f, w->timeout_s);
  const drpc_value *v = drpc_future_value(w->f);
  w->seen = v && v->kind == DRPC_VAL_INT ? v->u.i : -1;
  return NULL;
}

typedef struct completer {
  drpc_future *f;
  int delay_ms;
} completer;

static void *complete_thread(void *arg) {
  completer *c = arg;
  sleep_ms(c->delay_ms);
  drpc_future_set_value(c->f, drpc_value_int(42));
  return NULL;
}

/* Infinite and huge timeouts mean "no bound", not a deadline that wraps
 * around into the past. */
static void test_wait_huge_timeout(void) {
  const double bounds[] = {INFINITY, 1e300, 1e12};
  for (int i = 0; i < 3; i++) {
    drpc_future *f = drpc_future_new(env());
    completer c = {f, 20};
    pthread_t tc;
    pthread_create(&tc, NULL, complete_thread, &c);
    CHECK_EQ_INT(drpc_future_wait(f, bounds[i]), 0);
    CHECK(drpc_future_done(f));
    pthread_join(tc, NULL);
    drpc_future_decref(f);
  }
  drpc_future *fs[1] = {drpc_future_new(env())};
  completer c = {fs[0], 20};
  pthread_t tc;
  pthread_create(&tc, NULL, complete_thread, &c);
  CHECK_EQ_INT(drpc_future_wait_all(fs, 1, INFINITY, NULL), 0);
  pthread_join(tc, NULL);
  drpc_future_decref(fs[0]);
}

static void test_wait_on_owner_deadlocks(void) {
  drpc_env_ops ops = *env()->ops;
  ops.is_owner = owner_yes;
  drpc_env owner = {&ops, NULL};
  drpc_future *f = drpc_future_new(&owner);
  CHECK_EQ_INT(drpc_future_wait(f, -1), DRPC_EDEADLOCK);
  drpc_error got = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_future_get(f, 5, NULL, &got), DRPC_EDEADLOCK);
  CHECK_CONTAINS(got.msg, "deadlock");
  drpc_error_clear(&got);
  CHECK(drpc_future_env(f)->ops == &ops);
  /* A completed future is fine to wait on anywhere. */
  drpc_future_set_value(f, NULL);
  CHECK_EQ_INT(drpc_future_wait(f, -1), 0);
  drpc_future_decref(f);
}

static void test_waiters_released_by_completer(void) {
  drpc_future *f = drpc_future_new(env());
  enum { NW = 4 };
  waiter w[NW];
  pthread_t tw[NW], tc;
  for (int i = 0; i < NW; i++) {
    /* Forever and with a long bound: both must wake on completion. */
    w[i] = (waiter){f, i % 2 ? 30.0 : -1, 99, 0};
    pthread_create(&tw[i], NULL, wait_thread, &w[i]);
  }
  completer c = {f, 30};
  pthread_create(&tc, NULL, complete_thread, &c);
  for (int i = 0; i < NW; i++)
    pthread_join(tw[i], NULL);
  pthread_join(tc, NULL);
  for (int i = 0; i < NW; i++) {
    CHECK_EQ_INT(w[i].rc, 0);
    CHECK_EQ_INT(w[i].seen, 42);
  }
  drpc_future_decref(f);
}

/* Callbacks record the order they ran in. */
typedef struct trace {
  int order[64];
  int n;
  drpc_future *seen_f;
} trace;

typedef struct cb_arg {
  trace *t;
  int tag;
} cb_arg;

static void record_cb(drpc_future *f, void *arg) {
  cb_arg *a = arg;
  a->t->seen_f = f;
  /* The future is complete when a callback runs. */
  if (drpc_future_done(f) && a->t->n < 64)
    a->t->order[a->t->n++] = a->tag;
}

static void test_done_callbacks_in_order(void) {
  drpc_future *f = drpc_future_new(env());
  trace t = {0};
  enum { N = 11 }; /* more than the inline slots: the overflow grows */
  cb_arg args[N + 1];
  for (int i = 0; i < N; i++) {
    args[i] = (cb_arg){&t, i};
    CHECK_EQ_INT(drpc_future_add_done_callback(f, record_cb, &args[i]), 0);
  }
  CHECK_EQ_INT(t.n, 0); /* nothing runs before completion */
  drpc_future_set_value(f, drpc_value_int(1));
  CHECK_EQ_INT(t.n, N);
  for (int i = 0; i < N && i < t.n; i++)
    CHECK_EQ_INT(t.order[i], i);
  CHECK(t.seen_f == f);
  /* Added after completion: runs at once, on this thread. */
  args[N] = (cb_arg){&t, 100};
  CHECK_EQ_INT(drpc_future_add_done_callback(f, record_cb, &args[N]), 0);
  CHECK_EQ_INT(t.n, N + 1);
  CHECK_EQ_INT(t.order[N], 100);
  /* A second completion attempt runs nothing again. */
  drpc_future_set_value(f, NULL);
  CHECK_EQ_INT(t.n, N + 1);
  drpc_future_decref(f);

  /* Errors run the callbacks too. */
  f = drpc_future_new(env());
  trace t2 = {0};
  cb_arg a2 = {&t2, 5};
  drpc_future_add_done_callback(f, record_cb, &a2);
  drpc_future_fail(f, DRPC_ECONN, "lost");
  CHECK_EQ_INT(t2.n, 1);
  drpc_future_decref(f);
}

/* A callback may drop the last reference held by someone else: the
 * completer keeps the future alive until the callbacks are done. */
static void drop_ref_cb(drpc_future *f, void *arg) {
  (void)arg;
  drpc_future_decref(f);
}

static void test_callback_drops_reference(void) {
  drpc_future *f = drpc_future_new(env());
  drpc_future_incref(f); /* the callback's reference */
  drpc_future_add_done_callback(f, drop_ref_cb, NULL);
  trace t = {0};
  cb_arg a = {&t, 1};
  drpc_future_add_done_callback(f, record_cb, &a);
  drpc_future_decref(f); /* the creator lets go first */
  drpc_future_set_value(f, drpc_value_int(3));
  CHECK_EQ_INT(t.n, 1); /* the later callback still ran, on a live future */
  /* ASan reports a leak if the future outlived its last reference, and a
   * use-after-free if it died early. */
}

static int double_it(drpc_future *f, void *arg, drpc_value **out,
                     drpc_error *err) {
  int *calls = arg;
  (*calls)++;
  drpc_error e = DRPC_ERROR_INIT;
  if (drpc_future_error(f, &e)) {
    int code = e.code;
    drpc_error_set(err, code, "double_it saw: %s", e.msg);
    drpc_error_clear(&e);
    return code;
  }
  const drpc_value *v = drpc_future_value(f);
  if (!v || v->kind != DRPC_VAL_INT)
    return drpc_error_set(err, DRPC_ETYPE, "not an int");
  *out = drpc_value_int(v->u.i * 2);
  return 0;
}

static int recover(drpc_future *f, void *arg, drpc_value **out,
                   drpc_error *err) {
  (void)arg;
  (void)err;
  drpc_error e = DRPC_ERROR_INIT;
  int rc = drpc_future_error(f, &e);
  *out = drpc_value_str(rc ? e.msg : "fine");
  drpc_error_clear(&e);
  return 0;
}

/* Fails with a code but no message, and leaks nothing it produced. */
static int fail_bare(drpc_future *f, void *arg, drpc_value **out,
                     drpc_error *err) {
  (void)f;
  (void)arg;
  (void)err;
  *out = drpc_value_int(5); /* discarded because the call failed */
  return DRPC_EIO;
}

static void test_then_chaining(void) {
  int calls = 0;
  drpc_future *f = drpc_future_new(env());
  drpc_future *c1 = drpc_future_then(f, double_it, &calls);
  drpc_future *c2 = drpc_future_then(c1, double_it, &calls);
  CHECK(c1 && c2);
  CHECK(!drpc_future_done(c1) && !drpc_future_done(c2));
  CHECK_EQ_INT(calls, 0);
  drpc_future_set_value(f, drpc_value_int(5));
  CHECK_EQ_INT(calls, 2);
  const drpc_value *v = drpc_future_value(c1);
  CHECK(v && v->kind == DRPC_VAL_INT && v->u.i == 10);
  v = drpc_future_value(c2);
  CHECK(v && v->kind == DRPC_VAL_INT && v->u.i == 20);
  /* then on a completed future runs at once. */
  drpc_future *c3 = drpc_future_then(c2, double_it, &calls);
  CHECK(drpc_future_done(c3));
  v = drpc_future_value(c3);
  CHECK(v && v->kind == DRPC_VAL_INT && v->u.i == 40);
  drpc_future_decref(c3);
  drpc_future_decref(c2);
  drpc_future_decref(c1);
  drpc_future_decref(f);

  /* Error path: the error flows through fn into the child. */
  calls = 0;
  f = drpc_future_new(env());
  c1 = drpc_future_then(f, double_it, &calls);
  c2 = drpc_future_then(c1, recover, NULL);
  drpc_future_fail(f, DRPC_ETIMEOUT, "too slow");
  CHECK_EQ_INT(calls, 1); /* fn runs on failure as well */
  drpc_error got = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_future_error(c1, &got), DRPC_ETIMEOUT);
  CHECK_STR_EQ(got.msg, "double_it saw: too slow");
  drpc_error_clear(&got);
  /* Recovery: the grandchild succeeds with the message as value. */
  CHECK_EQ_INT(drpc_future_error(c2, NULL), 0);
  v = drpc_future_value(c2);
  CHECK(v && v->kind == DRPC_VAL_STR);
  CHECK_STR_EQ(v ? v->u.s.data : NULL, "double_it saw: too slow");
  drpc_future_decref(c2);
  drpc_future_decref(c1);
  drpc_future_decref(f);

  /* A code with no message still fails the child; out is not leaked. */
  f = drpc_future_new(env());
  c1 = drpc_future_then(f, fail_bare, NULL);
  drpc_future_set_value(f, NULL);
  CHECK_EQ_INT(drpc_future_error(c1, &got), DRPC_EIO);
  drpc_error_clear(&got);
  drpc_future_decref(c1);
  drpc_future_decref(f);

  /* The child outlives its parent and the other way round. */
  f = drpc_future_new(env());
  c1 = drpc_future_then(f, recover, NULL);
  drpc_future_decref(c1); /* nobody watches the child */
  drpc_future_set_value(f, NULL);
  drpc_future_decref(f);
}

/* Cross-thread chaining: the callback runs on the completer's thread and
 * a waiter on the child is released. */
static void test_then_across_threads(void) {
  int calls = 0;
  drpc_future *f = drpc_future_new(env());
  drpc_future *child = drpc_future_then(f, double_it, &calls);
  waiter w = {child, -1, 99, 0};
  pthread_t tw, tc;
  pthread_create(&tw, NULL, wait_thread, &w);
  completer c = {f, 20};
  pthread_create(&tc, NULL, complete_thread, &c);
  pthread_join(tw, NULL);
  pthread_join(tc, NULL);
  CHECK_EQ_INT(w.rc, 0);
  CHECK_EQ_INT(w.seen, 84);
  CHECK_EQ_INT(calls, 1);
  drpc_future_decref(child);
  drpc_future_decref(f);
}

static void test_wait_all(void) {
  drpc_error got = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_future_wait_all(NULL, 0, 0, &got), 0);

  drpc_future *fs[3];
  for (int i = 0; i < 3; i++)
    fs[i] = drpc_future_new(env());
  /* The last one fails first in time; the first failure in list order is
   * what wait_all reports. */
  drpc_future_fail(fs[2], DRPC_EIO, "third");
  drpc_future_set_value(fs[0], drpc_value_int(0));
  drpc_future_fail(fs[1], DRPC_ECONN, "second");
  CHECK_EQ_INT(drpc_future_wait_all(fs, 3, 1.0, &got), DRPC_ECONN);
  CHECK_STR_EQ(got.msg, "second");
  drpc_error_clear(&got);
  for (int i = 0; i < 3; i++)
    drpc_future_decref(fs[i]);

  /* All succeed, one of them completed later by another thread. */
  for (int i = 0; i < 3; i++)
    fs[i] = drpc_future_new(env());
  drpc_future_set_value(fs[0], drpc_value_int(1));
  drpc_future_set_value(fs[2], drpc_value_int(3));
  completer c = {fs[1], 20};
  pthread_t tc;
  pthread_create(&tc, NULL, complete_thread, &c);
  CHECK_EQ_INT(drpc_future_wait_all(fs, 3, -1, &got), 0);
  pthread_join(tc, NULL);
  const drpc_value *v = drpc_future_value(fs[1]);
  CHECK(v && v->u.i == 42);
  for (int i = 0; i < 3; i++)
    drpc_future_decref(fs[i]);

  /* One never completes: a timeout that says how far it got. */
  for (int i = 0; i < 3; i++)
    fs[i] = drpc_future_new(env());
  drpc_future_set_value(fs[0], NULL);
  drpc_future_fail(fs[2], DRPC_EIO, "ignored: the wait timed out first");
  CHECK_EQ_INT(drpc_future_wait_all(fs, 3, 0.03, &got), DRPC_ETIMEOUT);
  CHECK_CONTAINS(got.msg, "1 of 3");
  drpc_error_clear(&got);
  CHECK(!drpc_future_done(fs[1]));
  for (int i = 0; i < 3; i++)
    drpc_future_decref(fs[i]);
}

/* Takes and drops references; the future must survive throughout. */
static void *ref_churn(void *arg) {
  drpc_future *f = arg;
  for (int i = 0; i < 10000; i++) {
    drpc_future_incref(f);
    drpc_future_incref(f);
    drpc_future_decref(f);
    drpc_future_decref(f);
  }
  return NULL;
}

static void test_refcounts(void) {
  drpc_future *f = drpc_future_new(env());
  for (int i = 0; i < 100; i++)
    drpc_future_incref(f);
  drpc_future_set_value(
      f, drpc_value_list_of(2, drpc_value_int(1), drpc_value_str("two")));
  for (int i = 0; i < 100; i++)
    drpc_future_decref(f);
  /* Still alive with its value after dropping the extra references. */
  const drpc_value *v = drpc_future_value(f);
  CHECK(v && v->kind == DRPC_VAL_LIST && drpc_value_len(v) == 2);
  drpc_future_decref(f); /* the last one frees the value (ASan: no leak) */
  drpc_future_decref(NULL);

  /* Concurrent references from several threads balance out. */
  f = drpc_future_new(env());
  enum { NT = 4 };
  pthread_t t[NT];
  for (int i = 0; i < NT; i++)
    pthread_create(&t[i], NULL, ref_churn, f);
  for (int i = 0; i < NT; i++)
    pthread_join(t[i], NULL);
  CHECK(!drpc_future_done(f));
  drpc_future_decref(f); /* the creator's: frees it (ASan: no leak) */
}

int main(void) {
  RUN(test_set_once);
  RUN(test_value_error_take);
  RUN(test_wait_timeout);
  RUN(test_wait_huge_timeout);
  RUN(test_wait_on_owner_deadlocks);
  RUN(test_waiters_released_by_completer);
  RUN(test_done_callbacks_in_order);
  RUN(test_callback_drops_reference);
  RUN(test_then_chaining);
  RUN(test_then_across_threads);
  RUN(test_wait_all);
  RUN(test_refcounts);
  return test_finish();
}
