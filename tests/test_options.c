/* Unit tests for core/options.c (defaults, validation, device maps, worker
 * names and infos), core/registry.c, the process-default agent helpers in
 * core/agent.c, and the internal hash map of core/map.c. */
#include "drpc/drpc.h"

#include "../core/internal.h"
#include "../core/map.h"
#include "test.h"
#include "testenv.h"

#include <math.h>

static drpc_device cuda(int i) {
  return (drpc_device){DRPC_DEVICE_CUDA, (int8_t)i};
}

/* ---- options ---------------------------------------------------------- */

static void test_defaults(void) {
  drpc_options o;
  memset(&o, 0x5a, sizeof o); /* every field must be written */
  drpc_options_default(&o);
  CHECK(o.rpc_timeout_s == 60.0);
  CHECK_EQ_INT(o.num_worker_threads, 16);
  CHECK_STR_EQ(o.init_method, "env://");
  CHECK_EQ_INT(o.n_device_maps, 0);
  CHECK_EQ_INT(o.n_devices, 0);
  CHECK(o.transports[0] == NULL);
  CHECK(o.channels[0] == NULL);
  CHECK(o.registry == NULL);
  CHECK(o.max_frame_bytes == DRPC_WIRE_DEFAULT_MAX_FRAME);
  CHECK(o.shutdown_timeout_s == DRPC_DEFAULT_SHUTDOWN_TIMEOUT_SEC);
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_options_validate(&o, &err), 0);
  CHECK_EQ_INT(err.code, 0);
  CHECK_EQ_INT(DRPC_DEFAULT_NUM_WORKER_THREADS, 16);
  CHECK(DRPC_DEFAULT_RPC_TIMEOUT_SEC == 60.0);
  CHECK(DRPC_UNSET_RPC_TIMEOUT == -1.0);
}

static void test_validate(void) {
  drpc_options o;
  drpc_error err = DRPC_ERROR_INIT;

  drpc_options_default(&o);
  o.num_worker_threads = 0;
  CHECK_EQ_INT(drpc_options_validate(&o, &err), DRPC_EINVAL);
  CHECK_STR_EQ(err.msg, "num_worker_threads must be positive, got 0");
  o.num_worker_threads = -3;
  CHECK_EQ_INT(drpc_options_validate(&o, &err), DRPC_EINVAL);
  CHECK_STR_EQ(err.msg, "num_worker_threads must be positive, got -3");
  o.num_worker_threads = 1;
  CHECK_EQ_INT(drpc_options_validate(&o, NULL), 0);
  o.incarnation = 65535;
  CHECK_EQ_INT(drpc_options_validate(&o, NULL), 0);
  o.incarnation = 65536;
  CHECK_EQ_INT(drpc_options_validate(&o, &err), DRPC_EINVAL);
  CHECK_STR_EQ(err.msg, "incarnation must be below 65536, got 65536");

  drpc_options_default(&o);
  o.rpc_timeout_s = -1;
  CHECK_EQ_INT(drpc_options_validate(&o, &err), DRPC_EINVAL);
  CHECK_CONTAINS(err.msg, "RPC Timeout must be non-negative");
  /* NaN is not a timeout either (it would turn into garbage later). */
  o.rpc_timeout_s = NAN;
  CHECK_EQ_INT(drpc_options_validate(&o, &err), DRPC_EINVAL);
  CHECK_CONTAINS(err.msg, "RPC Timeout must be non-negative");
  o.rpc_timeout_s = 0; /* 0: calls never expire */
  CHECK_EQ_INT(drpc_options_validate(&o, NULL), 0);

  drpc_options_default(&o);
  o.transports[0] = "tcp";
  o.transports[1] = "foo";
  CHECK_EQ_INT(drpc_options_validate(&o, &err), DRPC_EINVAL);
  CHECK_STR_EQ(err.msg, "Unknown transport: foo");
  o.transports[1] = "shm";
  CHECK_EQ_INT(drpc_options_validate(&o, NULL), 0);

  drpc_options_default(&o);
  o.channels[0] = "bar";
  CHECK_EQ_INT(drpc_options_validate(&o, &err), DRPC_EINVAL);
  CHECK_STR_EQ(err.msg, "Unknown channel: bar");
  o.channels[0] = "basic";
  CHECK_EQ_INT(drpc_options_validate(&o, NULL), 0);

  drpc_options_default(&o);
  o.max_frame_bytes = 100;
  CHECK_EQ_INT(drpc_options_validate(&o, &err), DRPC_EINVAL);
  CHECK_CONTAINS(err.msg, "max_frame_bytes");

  drpc_options_default(&o);
  o.shutdown_timeout_s = -0.5;
  CHECK_EQ_INT(drpc_options_validate(&o, &err), DRPC_EINVAL);

  CHECK_EQ_INT(drpc_options_validate(NULL, &err), DRPC_EINVAL);
  drpc_error_clear(&err);
}

static void test_device_maps(void) {
  drpc_options o;
  drpc_options_default(&o);
  drpc_error err = DRPC_ERROR_INIT;
  drpc_device from[3], to[3];

  /* A negative index on either side. */
  from[0] = cuda(-1);
  to[0] = cuda(0);
  CHECK_EQ_INT(drpc_options_set_device_map(&o, "w1", from, to, 1, &err),
               DRPC_EINVAL);
  CHECK_STR_EQ(err.msg, "Device index must not be negative");
  from[0] = cuda(0);
  to[0] = cuda(-2);
  CHECK_EQ_INT(drpc_options_set_device_map(&o, "w1", from, to, 1, &err),
               DRPC_EINVAL);
  CHECK_STR_EQ(err.msg, "Device index must not be negative");
  CHECK_EQ_INT(o.n_device_maps, 0);

  /* A good map, then the same pair again (idempotent). */
  from[0] = cuda(0);
  to[0] = cuda(1);
  from[1] = DRPC_CPU;
  to[1] = DRPC_CPU;
  CHECK_EQ_INT(drpc_options_set_device_map(&o, "w1", from, to, 2, &err), 0);
  CHECK_EQ_INT(drpc_options_set_device_map(&o, "w1", from, to, 1, &err), 0);
  CHECK_EQ_INT(o.n_device_maps, 1);
  CHECK_STR_EQ(o.device_maps[0].peer, "w1");
  CHECK_EQ_INT(o.device_maps[0].n, 2);
  CHECK(drpc_device_equal(o.device_maps[0].from[0], cuda(0)));
  CHECK(drpc_device_equal(o.device_maps[0].to[0], cuda(1)));

  /* Remapping a key to another target. */
  from[0] = cuda(0);
  to[0] = cuda(2);
  CHECK_EQ_INT(drpc_options_set_device_map(&o, "w1", from, to, 1, &err),
               DRPC_EINVAL);
  CHECK_STR_EQ(err.msg, "`set_device_map` only supports 1-to-1 mapping, "
                        "trying to map cuda:0 to cuda:1 and cuda:2");
  /* The same key twice within one call. */
  from[0] = cuda(3);
  to[0] = cuda(3);
  from[1] = cuda(3);
  to[1] = cuda(4);
  CHECK_EQ_INT(drpc_options_set_device_map(&o, "w2", from, to, 2, &err),
               DRPC_EINVAL);
  CHECK_CONTAINS(err.msg, "`set_device_map` only supports 1-to-1 mapping");

  /* Two sources to one target, across calls: the failed call changes
   * nothing. */
  from[0] = cuda(5);
  to[0] = cuda(1);
  CHECK_EQ_INT(drpc_options_set_device_map(&o, "w1", from, to, 1, &err),
               DRPC_EINVAL);
  CHECK_STR_EQ(err.msg, "`device_map` only supports 1-to-1 mapping, but "
                        "cuda:0 and cuda:5 are both mapped to cuda:1");
  CHECK_EQ_INT(o.device_maps[0].n, 2);
  CHECK_EQ_INT(o.n_device_maps, 1); /* w2's failed map was not added */

  /* Within one call, and a map for another peer is separate. */
  from[0] = cuda(0);
  to[0] = cuda(1);
  from[1] = cuda(1);
  to[1] = cuda(1);
  CHECK_EQ_INT(drpc_options_set_device_map(&o, "w2", from, to, 2, &err),
               DRPC_EINVAL);
  CHECK_CONTAINS(err.msg, "`device_map` only supports 1-to-1 mapping");
  from[0] = cuda(1);
  to[0] = cuda(0);
  CHECK_EQ_INT(drpc_options_set_device_map(&o, "w2", from, to, 1, &err), 0);
  CHECK_EQ_INT(o.n_device_maps, 2);
  CHECK_STR_EQ(o.device_maps[1].peer, "w2");

  /* The peer must be a valid worker name. */
  CHECK_EQ_INT(drpc_options_set_device_map(&o, "bad name", from, to, 1, &err),
               DRPC_EINVAL);
  CHECK_CONTAINS(err.msg, "Worker name must match");
  drpc_error_clear(&err);
}

/* ---- worker names and infos ------------------------------------------- */

static void check_bad_name(const char *name) {
  drpc_error err = DRPC_ERROR_INIT;
  char want[400];
  snprintf(want, sizeof want,
           "Worker name must match ^[A-Za-z0-9-_:]*$, and must be non-empty "
           "and shorter than 128 chars, but got %s",
           name);
  CHECK_EQ_INT(drpc_validate_worker_name(name, &err), DRPC_EINVAL);
  CHECK_STR_EQ(err.msg, want);
  drpc_worker_info wi;
  CHECK_EQ_INT(drpc_worker_info_init(&wi, name, 0, &err), DRPC_EINVAL);
  CHECK_STR_EQ(err.msg, want);
  drpc_error_clear(&err);
}

static void test_worker_names(void) {
  char n127[128], n128[129];
  memset(n127, 'a', 127);
  n127[127] = 0;
  memset(n128, 'b', 128);
  n128[128] = 0;
  CHECK_EQ_INT(drpc_validate_worker_name("worker0", NULL), 0);
  CHECK_EQ_INT(drpc_validate_worker_name("A-z_0:9", NULL), 0);
  CHECK_EQ_INT(drpc_validate_worker_name(n127, NULL), 0);
  check_bad_name("");
  check_bad_name(n128);
  check_bad_name("a b");
  check_bad_name("w/1");
  check_bad_name("w.1");
  check_bad_name("tab\tbed");
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_validate_worker_name(NULL, &err), DRPC_EINVAL);
  CHECK_CONTAINS(err.msg, "but got (null)");
  drpc_error_clear(&err);
}

static void test_worker_info(void) {
  drpc_worker_info a, b;
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_worker_info_init(&a, "worker0", 0, &err), 0);
  char buf[128];
  size_t n = drpc_worker_info_format(&a, buf, sizeof buf);
  CHECK_STR_EQ(buf, "WorkerInfo(id=0, name=worker0)");
  CHECK_EQ_INT(n, strlen("WorkerInfo(id=0, name=worker0)"));
  /* A short buffer truncates but reports the full length, like snprintf. */
  char small[8];
  CHECK_EQ_INT(drpc_worker_info_format(&a, small, sizeof small), n);
  CHECK_STR_EQ(small, "WorkerI");

  CHECK_EQ_INT(drpc_worker_info_init(&b, "worker0", 0, &err), 0);
  CHECK(drpc_worker_info_equal(&a, &b));
  CHECK_EQ_INT(drpc_worker_info_init(&b, "worker0", 1, &err), 0);
  CHECK(!drpc_worker_info_equal(&a, &b));
  CHECK_EQ_INT(drpc_worker_info_init(&b, "worker1", 0, &err), 0);
  CHECK(!drpc_worker_info_equal(&a, &b));

  /* Ids must fit int16. */
  CHECK_EQ_INT(drpc_worker_info_init(&b, "w", 40000, &err), DRPC_EINVAL);
  CHECK_STR_EQ(err.msg, "RPC worker id 40000 out of bound of int16_t.");
  CHECK_EQ_INT(drpc_worker_info_init(&b, "w", 32768, &err), DRPC_EINVAL);
  CHECK_STR_EQ(err.msg, "RPC worker id 32768 out of bound of int16_t.");
  CHECK_EQ_INT(drpc_worker_info_init(&b, "w", -32769, &err), DRPC_EINVAL);
  CHECK_STR_EQ(err.msg, "RPC worker id -32769 out of bound of int16_t.");
  CHECK_EQ_INT(drpc_worker_info_init(&b, "w", 32767, &err), 0);
  CHECK_EQ_INT(b.id, 32767);
  drpc_worker_info_format(&b, buf, sizeof buf);
  CHECK_STR_EQ(buf, "WorkerInfo(id=32767, name=w)");
  drpc_error_clear(&err);
}

/* ---- registry --------------------------------------------------------- */

static drpc_value *fn_echo(drpc_call *call, const drpc_value *args,
                           const drpc_value *kwargs, drpc_error *err) {
  (void)kwargs;
  (void)err;
  /* Answers with its own name, its user pointer's string and the args. */
  return drpc_value_list_of(3, drpc_value_str(drpc_call_name(call)),
                            drpc_value_str(drpc_call_user(call)),
                            drpc_value_clone(args));
}

static drpc_future *afn_never(drpc_call *call, const drpc_value *args,
                              const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)args;
  (void)kwargs;
  drpc_error_set(err, DRPC_EUSER, "never");
  return NULL;
}

static void test_registry(void) {
  drpc_registry *r = drpc_registry_new();
  CHECK(r != NULL);
  CHECK_EQ_INT(drpc_register_function(r, "ns::f", fn_echo, "f"), 0);
  CHECK_EQ_INT(drpc_register_function(r, "ns::f", fn_echo, "again"),
               DRPC_EEXISTS);
  /* Sync and async functions share one namespace. */
  CHECK_EQ_INT(drpc_register_async_function(r, "ns::f", afn_never, NULL),
               DRPC_EEXISTS);
  CHECK_EQ_INT(drpc_register_async_function(r, "ns::a", afn_never, NULL), 0);
  CHECK_EQ_INT(drpc_register_function(r, "ns::a", fn_echo, NULL), DRPC_EEXISTS);
  CHECK_EQ_INT(drpc_register_function(r, "", fn_echo, NULL), DRPC_EINVAL);
  CHECK_EQ_INT(drpc_register_function(r, NULL, fn_echo, NULL), DRPC_EINVAL);
  CHECK_EQ_INT(drpc_register_function(r, "nofn", NULL, NULL), DRPC_EINVAL);
  CHECK_EQ_INT(drpc_register_function(NULL, "x", fn_echo, NULL), DRPC_EINVAL);

  const drpc_registry_entry *e = drpc_registry_lookup(r, "ns::f");
  CHECK(e && e->fn == fn_echo && !e->afn);
  CHECK_STR_EQ(e ? (const char *)e->user : NULL, "f"); /* not "again" */
  e = drpc_registry_lookup(r, "ns::a");
  CHECK(e && e->afn == afn_never && !e->fn);
  CHECK(drpc_registry_lookup(r, "ns::") == NULL);
  CHECK(drpc_registry_lookup(r, "ns::ff") == NULL);
  drpc_registry_free(r);
  drpc_registry_free(NULL);

  /* Many names in scrambled order: every one is found, with its own
   * entry (the table stays sorted as it grows). */
  r = drpc_registry_new();
  enum { N = 700 };
  static char names[N][16];
  for (int i = 0; i < N; i++) {
    int k = (i * 337) % N; /* 337 and 700 are coprime: a permutation */
    snprintf(names[k], sizeof names[k], "fn%d", k);
    CHECK_EQ_INT(drpc_register_function(r, names[k], fn_echo, names[k]), 0);
  }
  int found = 0;
  for (int k = 0; k < N; k++) {
    e = drpc_registry_lookup(r, names[k]);
    if (e && e->user == names[k] && strcmp(e->name, names[k]) == 0)
      found++;
  }
  CHECK_EQ_INT(found, N);
  CHECK(drpc_registry_lookup(r, "fn700") == NULL);
  CHECK(drpc_registry_lookup(r, "a") == NULL);
  CHECK(drpc_registry_lookup(r, "zzz") == NULL);
  drpc_registry_free(r);
}

/* One agent (world 1) in the test env, serving from registry r. */
static drpc_agent *start_single(tnet *n, drpc_store **store, drpc_registry *r) {
  tnet_init(n);
  tnode *nd = tnet_node(n);
  const char *names[] = {"solo"};
  *store = tnet_store(n, 1, names);
  drpc_options o;
  drpc_options_default(&o);
  o.registry = r;
  drpc_error err = DRPC_ERROR_INIT;
  int rc =
      drpc_agent_start(&nd->agent, *store, "solo", 0, 1, &o, &nd->env, &err);
  CHECK_EQ_INT(rc, 0);
  drpc_error_clear(&err);
  return nd->agent;
}

static void stop_single(tnet *n, drpc_store *store) {
  drpc_agent *a = n->nodes[0].agent;
  drpc_agent_shutdown(a, false, 0, NULL);
  tnet_run(n, 1000);
  n->nodes[0].agent = NULL;
  drpc_agent_free(a);
  drpc_store_decref(store);
  tnet_free(n);
}

static void test_registry_through_call(void) {
  drpc_registry *r = drpc_registry_new();
  drpc_register_function(r, "b::echo", fn_echo, "user-b");
  drpc_register_function(r, "a::echo", fn_echo, "user-a");
  drpc_register_function(r, "c::echo", fn_echo, "user-c");
  tnet n;
  drpc_store *store;
  drpc_agent *a = start_single(&n, &store, r);
  const char *fns[] = {"a::echo", "b::echo", "c::echo"};
  const char *users[] = {"user-a", "user-b", "user-c"};
  for (int i = 0; i < 3; i++) {
    drpc_value *args = drpc_value_list_of(1, drpc_value_int(i));
    drpc_value *res = NULL;
    drpc_error err = DRPC_ERROR_INIT;
    CHECK_EQ_INT(drpc_rpc_sync(a, "solo", DRPC_FUNCTION, fns[i], args, NULL,
                               DRPC_UNSET_RPC_TIMEOUT, &res, &err),
                 0);
    CHECK(res && drpc_value_len(res) == 3);
    if (res && drpc_value_len(res) == 3) {
      CHECK_STR_EQ(drpc_list_at(res, 0)->u.s.data, fns[i]);
      CHECK_STR_EQ(drpc_list_at(res, 1)->u.s.data, users[i]);
      CHECK(drpc_value_equal(drpc_list_at(res, 2), args));
    }
    drpc_value_free(res);
    drpc_value_free(args);
    drpc_error_clear(&err);
  }
  /* A name the agent's registry lacks fails on the callee. */
  drpc_value *res = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_rpc_sync(a, "solo", DRPC_FUNCTION, "d::echo", NULL, NULL,
                             DRPC_UNSET_RPC_TIMEOUT, &res, &err),
               DRPC_ENOTFOUND);
  CHECK_CONTAINS(err.msg, "Error on Node 0: function 'd::echo' is not "
                          "registered on worker solo");
  drpc_error_clear(&err);
  stop_single(&n, store);
  drpc_registry_free(r);
}

/* ---- the process-default agent ---------------------------------------- */

static void test_current_agent(void) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_agent *got = (drpc_agent *)&err; /* poison */
  CHECK(drpc_current_agent() == NULL);
  CHECK_EQ_INT(drpc_get_current_agent(&got, &err), DRPC_ENOTINIT);
  CHECK(got == NULL);
  CHECK_CONTAINS(err.msg, "RPC has not been initialized");
  /* API calls without an agent go to the default one, so they fail the
   * same way. */
  drpc_future *f = (drpc_future *)&err;
  CHECK_EQ_INT(drpc_rpc_async(NULL, "solo", DRPC_BUILTIN, "aten::add", NULL,
                              NULL, DRPC_UNSET_RPC_TIMEOUT, &f, &err),
               DRPC_ENOTINIT);
  CHECK(f == NULL);
  CHECK_CONTAINS(err.msg, "RPC has not been initialized");

  tnet n;
  drpc_store *store;
  drpc_agent *a = start_single(&n, &store, NULL);
  CHECK_EQ_INT(drpc_set_current_agent(a, &err), 0);
  CHECK(drpc_current_agent() == a);
  CHECK_EQ_INT(drpc_get_current_agent(&got, &err), 0);
  CHECK(got == a);
  CHECK_EQ_INT(drpc_set_current_agent(a, &err), DRPC_EEXISTS);
  CHECK_STR_EQ(err.msg, "RPC is already initialized");
  CHECK(drpc_current_agent() == a); /* the first one stays */

  /* A NULL agent now means the default one. */
  drpc_value *args =
      drpc_value_list_of(2, drpc_value_int(2), drpc_value_int(3));
  drpc_value *res = NULL;
  CHECK_EQ_INT(drpc_rpc_sync(NULL, "solo", DRPC_BUILTIN, "aten::add", args,
                             NULL, DRPC_UNSET_RPC_TIMEOUT, &res, &err),
               0);
  CHECK(res && res->kind == DRPC_VAL_INT && res->u.i == 5);
  drpc_value_free(res);
  drpc_value_free(args);

  drpc_reset_current_agent();
  CHECK(drpc_current_agent() == NULL);
  CHECK_EQ_INT(drpc_get_current_agent(&got, &err), DRPC_ENOTINIT);
  /* After a reset a new one may be set ("re-init works"). */
  CHECK_EQ_INT(drpc_set_current_agent(a, &err), 0);
  drpc_reset_current_agent();
  stop_single(&n, store);
  drpc_error_clear(&err);
}

/* Start-time checks on the name and rank use the same texts. */
static void test_start_validates(void) {
  tnet n;
  tnet_init(&n);
  tnode *nd = tnet_node(&n);
  const char *names[] = {"w0"};
  drpc_store *store = tnet_store(&n, 1, names);
  drpc_error err = DRPC_ERROR_INIT;
  drpc_agent *a = (drpc_agent *)&err;
  CHECK_EQ_INT(drpc_agent_start(&a, store, "a b", 0, 1, NULL, &nd->env, &err),
               DRPC_EINVAL);
  CHECK(a == NULL);
  CHECK_CONTAINS(err.msg, "Worker name must match");
  CHECK_EQ_INT(
      drpc_agent_start(&a, store, "w0", 40000, 50000, NULL, &nd->env, &err),
      DRPC_EINVAL);
  CHECK_STR_EQ(err.msg, "RPC worker id 40000 out of bound of int16_t.");
  drpc_options o;
  drpc_options_default(&o);
  o.num_worker_threads = 0;
  CHECK_EQ_INT(drpc_agent_start(&a, store, "w0", 0, 1, &o, &nd->env, &err),
               DRPC_EINVAL);
  CHECK_STR_EQ(err.msg, "num_worker_threads must be positive, got 0");
  CHECK(a == NULL);
  drpc_error_clear(&err);
  drpc_store_decref(store);
  tnet_free(&n);
}

/* ---- core/map.c ------------------------------------------------------- */

/* The map's hash, to pick keys whose home slots collide on purpose. If the
 * map changes its hash these keys stop colliding, and the tests still
 * check correctness, only less sharply. */
static uint64_t mix(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdull;
  k ^= k >> 33;
  return k;
}

static void test_map_basic(void) {
  drpc_map m;
  drpc_map_init(&m);
  CHECK(drpc_map_get(&m, 1) == NULL);
  CHECK(drpc_map_remove(&m, 1) == NULL);
  size_t n = 99;
  uint64_t *keys = drpc_map_sorted_keys(&m, &n);
  CHECK(keys != NULL);
  CHECK_EQ_INT(n, 0);
  free(keys);

  int vals[3];
  CHECK_EQ_INT(drpc_map_put(&m, 7, &vals[0]), 0);
  CHECK_EQ_INT(drpc_map_put(&m, 3, &vals[1]), 0);
  CHECK_EQ_INT(m.len, 2);
  CHECK(drpc_map_get(&m, 7) == &vals[0]);
  CHECK(drpc_map_get(&m, 3) == &vals[1]);
  CHECK(drpc_map_get(&m, 4) == NULL);
  /* Putting an existing key replaces its value. */
  CHECK_EQ_INT(drpc_map_put(&m, 7, &vals[2]), 0);
  CHECK_EQ_INT(m.len, 2);
  CHECK(drpc_map_get(&m, 7) == &vals[2]);
  CHECK(drpc_map_remove(&m, 7) == &vals[2]);
  CHECK(drpc_map_remove(&m, 7) == NULL);
  CHECK(drpc_map_get(&m, 7) == NULL);
  CHECK_EQ_INT(m.len, 1);
  drpc_map_free(&m);
  CHECK(m.slots == NULL && m.len == 0 && m.cap == 0);
  drpc_map_free(&m); /* twice is fine */
}

/* Every key in [1, n] present iff present[k]; values are &present[k]. */
static int map_check(const drpc_map *m, const bool *present, int n) {
  int bad = 0;
  size_t len = 0;
  for (int k = 1; k <= n; k++) {
    void *v = drpc_map_get(m, (uint64_t)k);
    if (present[k] ? v != &present[k] : v != NULL)
      bad++;
    len += present[k];
  }
  if (m->len != len)
    bad++;
  return bad;
}

static void test_map_many(void) {
  enum { N = 5000 };
  static bool present[N + 1];
  memset(present, 0, sizeof present);
  drpc_map m;
  drpc_map_init(&m);
  for (int k = 1; k <= N; k++) {
    CHECK_EQ_INT(drpc_map_put(&m, (uint64_t)k, &present[k]), 0);
    present[k] = true;
  }
  CHECK_EQ_INT(m.len, N);
  CHECK(m.len * 4 <= m.cap * 3); /* the load factor bound holds */
  CHECK_EQ_INT(map_check(&m, present, N), 0);

  /* Remove every third key, then every other remaining one from the top
   * down, checking the whole table after each pattern. */
  for (int k = 3; k <= N; k += 3) {
    CHECK(drpc_map_remove(&m, (uint64_t)k) == &present[k]);
    present[k] = false;
  }
  CHECK_EQ_INT(map_check(&m, present, N), 0);
  int flip = 0;
  for (int k = N; k >= 1; k--) {
    if (!present[k] || (flip++ & 1))
      continue;
    CHECK(drpc_map_remove(&m, (uint64_t)k) == &present[k]);
    present[k] = false;
  }
  CHECK_EQ_INT(map_check(&m, present, N), 0);

  /* A pseudo-random churn of puts and removes against the shadow. */
  uint64_t s = 12345;
  int bad = 0;
  for (int step = 0; step < 40000; step++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    int k = (int)((s >> 33) % N) + 1;
    if ((s >> 20) & 1) {
      void *v = drpc_map_remove(&m, (uint64_t)k);
      if (v != (present[k] ? &present[k] : NULL))
        bad++;
      present[k] = false;
    } else {
      if (drpc_map_put(&m, (uint64_t)k, &present[k]))
        bad++;
      present[k] = true;
    }
    if (step % 4000 == 0)
      bad += map_check(&m, present, N);
  }
  CHECK_EQ_INT(bad, 0);
  CHECK_EQ_INT(map_check(&m, present, N), 0);

  /* Sorted keys: ascending, exactly the present ones. */
  size_t n = 0;
  uint64_t *keys = drpc_map_sorted_keys(&m, &n);
  CHECK_EQ_INT(n, m.len);
  size_t j = 0;
  int order_bad = 0;
  for (int k = 1; k <= N; k++) {
    if (!present[k])
      continue;
    if (j >= n || keys[j] != (uint64_t)k)
      order_bad++;
    j++;
  }
  CHECK_EQ_INT(order_bad, 0);
  free(keys);

  /* Large keys sort as unsigned. */
  drpc_map_put(&m, UINT64_MAX, &present[0]);
  drpc_map_put(&m, 1ull << 63, &present[0]);
  keys = drpc_map_sorted_keys(&m, &n);
  CHECK(n >= 2 && keys[n - 1] == UINT64_MAX && keys[n - 2] == 1ull << 63);
  free(keys);
  drpc_map_free(&m);
}

/* Finds count keys whose home slot in a table of cap slots is `home`. */
static int keys_with_home(uint64_t *out, int count, size_t cap, size_t home,
                          uint64_t start) {
  int got = 0;
  for (uint64_t k = start; got < count && k < start + 10000000; k++)
    if ((mix(k) & (cap - 1)) == home)
      out[got++] = k;
  return got;
}

/* Probe runs that wrap from the last slot to the first, with holes opened
 * at their start, middle and end: backward shifting must pull exactly the
 * entries whose home allows it, across the wrap. */
static void test_map_backward_shift(void) {
  const size_t cap = 64; /* the first table size; keep under 48 entries */
  uint64_t last[4], first[3], mid[3];
  CHECK_EQ_INT(keys_with_home(last, 4, cap, cap - 1, 1), 4);
  CHECK_EQ_INT(keys_with_home(first, 3, cap, 0, 1), 3);
  CHECK_EQ_INT(keys_with_home(mid, 3, cap, 30, 1), 3);
  uint64_t all[10];
  memcpy(all, last, sizeof last);
  memcpy(all + 4, first, sizeof first);
  memcpy(all + 7, mid, sizeof mid);

  /* For each key: insert all ten, remove that one, check the other nine,
   * then remove the rest one by one in a rotating order. */
  for (int victim = 0; victim < 10; victim++) {
    drpc_map m;
    drpc_map_init(&m);
    for (int i = 0; i < 10; i++)
      drpc_map_put(&m, all[i], &all[i]);
    CHECK_EQ_INT(m.cap, cap);
    CHECK(drpc_map_remove(&m, all[victim]) == &all[victim]);
    int bad = 0;
    for (int i = 0; i < 10; i++) {
      void *want = i == victim ? NULL : &all[i];
      if (drpc_map_get(&m, all[i]) != want)
        bad++;
    }
    CHECK_EQ_INT(bad, 0);
    for (int r = 1; r < 10; r++) {
      int i = (victim + r * 3) % 10;
      if (i == victim)
        continue;
      if (drpc_map_remove(&m, all[i]) != &all[i])
        bad++;
      for (int q = 0; q < 10; q++) {
        if (q == i || q == victim)
          continue;
        /* Keys removed earlier in this rotation are gone; the rest stay. */
        bool removed = false;
        for (int rr = 1; rr < r; rr++)
          if ((victim + rr * 3) % 10 == q)
            removed = true;
        if (drpc_map_get(&m, all[q]) != (removed ? NULL : &all[q]))
          bad++;
      }
    }
    CHECK_EQ_INT(bad, 0);
    drpc_map_free(&m);
  }
}

int main(void) {
  RUN(test_defaults);
  RUN(test_validate);
  RUN(test_device_maps);
  RUN(test_worker_names);
  RUN(test_worker_info);
  RUN(test_registry);
  RUN(test_registry_through_call);
  RUN(test_current_agent);
  RUN(test_start_validates);
  RUN(test_map_basic);
  RUN(test_map_many);
  RUN(test_map_backward_shift);
  return test_finish();
}
