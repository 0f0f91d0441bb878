/* fuzz_agent: one or two agent cores on the deterministic test env
 * (tests/testenv.h), driven by a program read from the input (see
 * agent_prog.h): frames from peers (built with the wire encoder from
 * fuzzed fields, or raw bytes), clock jumps and timer firings, user calls,
 * RRef creation, fetches and drops, executor jobs and lost connections.
 *
 * After every step: no future completed twice (each carries a callback
 * that counts), a future is done exactly when its callback ran, and the
 * agents' counters are sane (never negative; the pending client calls
 * cover the calls this program still waits for). At the end every agent
 * shuts down, every call future must be complete, and everything is freed
 * (LeakSanitizer checks the rest).
 *
 * DRPC_FUZZ_RECORD=FILE.db in the environment records the run into FILE.db
 * (replaced; each input replaces it again, so give one input): every event
 * of both agent cores, as `drpc sim --record` would, so that a failing
 * input can be read with `drpc replay`, `drpc viz` and `drpc trace
 * export`. The run's backend is "fuzz", its scenario "fuzz_agent". */
#include "agent_prog.h"
#include "fuzz.h"
#include "testenv.h"
#include "valgen.h"

#include "drpc/drpc.h"
#include "drpc/trace.h"

#include <string.h>

#define MS 1000000ull
#define INTRUDER 2
#define MAX_FUTS 64
#define MAX_RREFS 16
#define MAX_HELD 16
#define MAX_RAW_CONNECTS 8
#define MAX_VALUE_NODES 64
/* Steps between checks of the agents' counters. */
#define COUNTER_EVERY 16

static const char *const NAMES[] = {"w0", "w1"};
static const char *const FN_NAMES[] = AP_FN_NAMES;
static const char *const DST_NAMES[] = AP_DST_NAMES;
static const double TIMEOUTS[] = AP_TIMEOUTS;
static const char *const KW_NAMES[] = AP_KW_NAMES;

/* A future this program holds, and how often its callback ran. */
typedef struct fut_slot {
  drpc_future *f;
  int agent;    /* whose call it is */
  bool is_call; /* an RPC: shutdown must complete it */
  int callbacks;
} fut_slot;

static tnet N;
static drpc_registry *R;
static drpc_store *S;
static int nagents;
static fut_slot futs[MAX_FUTS];
static int nfuts;
static drpc_rref *rrefs[MAX_RREFS];
static int nrrefs;
static drpc_future *held[MAX_HELD];
static int nheld;
static uint64_t recent_ids[16];
static unsigned nrecent;
static int raw_connects;

/* ---- registered functions --------------------------------------------------
 */

static drpc_value *fn_echo(drpc_call *call, const drpc_value *args,
                           const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)kwargs;
  drpc_value *v = drpc_value_clone(args);
  if (!v)
    drpc_error_set(err, DRPC_ENOMEM, "echo: out of memory");
  return v;
}

static drpc_value *fn_fail(drpc_call *call, const drpc_value *args,
                           const drpc_value *kwargs, drpc_error *err) {
  (void)call;
  (void)args;
  (void)kwargs;
  drpc_error_set(err, DRPC_EUSER, "fail: as asked");
  return NULL;
}

/* Returns an owner RRef to a copy of the args: the response forks it. */
static drpc_value *fn_mkref(drpc_call *call, const drpc_value *args,
                            const drpc_value *kwargs, drpc_error *err) {
  (void)kwargs;
  drpc_rref *r = NULL;
  if (drpc_rref_new_local(drpc_call_agent(call), drpc_value_clone(args), &r,
                          err))
    return NULL;
  drpc_value *v = drpc_value_rref(r);
  drpc_rref_decref(r);
  if (!v)
    drpc_error_set(err, DRPC_ENOMEM, "mkref: out of memory");
  return v;
}

/* Hands its future to the program, which completes it later (AP_COMPLETE)
 * or at the end. */
static drpc_future *afn_hold(drpc_call *call, const drpc_value *args,
                             const drpc_value *kwargs, drpc_error *err) {
  (void)args;
  (void)kwargs;
  if (nheld == MAX_HELD) {
    drpc_error_set(err, DRPC_EINVAL, "hold: too many held");
    return NULL;
  }
  drpc_future *f = drpc_future_new(drpc_agent_env(drpc_call_agent(call)));
  if (!f) {
    drpc_error_set(err, DRPC_ENOMEM, "hold: out of memory");
    return NULL;
  }
  drpc_future_incref(f); /* the program's reference */
  held[nheld++] = f;
  return f;
}

/* Calls aten::add on the other worker and answers with its result. */
static drpc_future *afn_chain(drpc_call *call, const drpc_value *args,
                              const drpc_value *kwargs, drpc_error *err) {
  drpc_agent *a = drpc_call_agent(call);
  const char *other = drpc_agent_self(a)->id == 0 ? "w1" : "w0";
  drpc_future *f = NULL;
  if (drpc_rpc_async(a, other, DRPC_BUILTIN, "aten::add", args, kwargs, 1.0, &f,
                     err))
    return NULL;
  return f;
}

static void registry_once(void) {
  if (R)
    return;
  R = drpc_registry_new();
  FUZZ_CHECK(R != NULL, "registry");
  drpc_register_function(R, "f::echo", fn_echo, NULL);
  drpc_register_function(R, "f::fail", fn_fail, NULL);
  drpc_register_function(R, "f::mkref", fn_mkref, NULL);
  drpc_register_async_function(R, "f::hold", afn_hold, NULL);
  drpc_register_async_function(R, "f::chain", afn_chain, NULL);
}

/* ---- futures and their invariants ------------------------------------------
 */

static void on_done(drpc_future *f, void *arg) {
  fut_slot *s = arg;
  FUZZ_CHECK(s->f == f, "callback for a future this slot does not hold");
  s->callbacks++;
  FUZZ_CHECK(s->callbacks == 1, "future completed %d times", s->callbacks);
  FUZZ_CHECK(drpc_future_done(f), "callback before the future is done");
}

/* Takes over the reference the caller got. */
static void track(drpc_future *f, int agent, bool is_call) {
  if (!f)
    return;
  if (nfuts == MAX_FUTS) {
    drpc_future_decref(f);
    return;
  }
  fut_slot *s = &futs[nfuts++];
  s->f = f;
  s->agent = agent;
  s->is_call = is_call;
  s->callbacks = 0;
  FUZZ_CHECK(drpc_future_add_done_callback(f, on_done, s) == 0, "callback");
}

static long long num(const drpc_value *d, const char *key) {
  const drpc_value *v = drpc_dict_get(d, key);
  FUZZ_CHECK(v && v->kind == DRPC_VAL_STR, "metric %s missing", key);
  return atoll(v->u.s.data);
}

/* Futures every time; the counters (which cost a dict of strings each)
 * when with_counters; after shutdown no client call may count as active. */
static void check_invariants(bool with_counters, bool stopped) {
  for (int i = 0; i < nfuts; i++) {
    fut_slot *s = &futs[i];
    bool done = drpc_future_done(s->f);
    FUZZ_CHECK(done == (s->callbacks == 1),
               "future %d: done %d but %d callbacks", i, done, s->callbacks);
  }
  for (int a = 0; with_counters && a < nagents; a++) {
    drpc_agent *ag = N.nodes[a].agent;
    if (!ag)
      continue;
    /* Two small dicts: drpc_agent_debug_info holds both, but filling one
     * big dict costs a quadratic number of key compares. */
    drpc_value *d = drpc_agent_metrics(ag);
    drpc_value *r = drpc_rref_context_debug_info(ag);
    FUZZ_CHECK(d != NULL && r != NULL, "metrics");
    long long client = num(d, "agent.client_active_calls");
    FUZZ_CHECK(client >= 0, "client_active_calls %lld", client);
    FUZZ_CHECK(num(d, "agent.server_active_calls") >= 0, "server_active");
    FUZZ_CHECK(num(d, "agent.server_active_async_calls") >= 0,
               "server_active_async");
    FUZZ_CHECK(num(d, "agent.server_active_async_calls") <=
                   num(d, "agent.server_active_calls"),
               "more async calls than calls");
    FUZZ_CHECK(num(r, "num_owner_rrefs") >= 0, "num_owner_rrefs");
    FUZZ_CHECK(num(r, "num_pending_futures") >= 0, "num_pending_futures");
    FUZZ_CHECK(num(r, "num_pending_users") >= 0, "num_pending_users");
    FUZZ_CHECK(num(r, "num_forks") >= 0, "num_forks");
    drpc_value_free(r);
    long long waiting = 0;
    for (int i = 0; i < nfuts; i++)
      if (futs[i].is_call && futs[i].agent == a && !futs[i].callbacks)
        waiting++;
    FUZZ_CHECK(client >= waiting,
               "agent %d counts %lld active client calls, the program "
               "waits for %lld",
               a, client, waiting);
    FUZZ_CHECK(!stopped || client == 0,
               "agent %d: %lld client calls active after shutdown", a, client);
    drpc_value_free(d);
  }
}

/* ---- reading values and arguments ------------------------------------------
 */

static drpc_value *read_val(fz *in) {
  vg g;
  vg_init(&g, in, MAX_VALUE_NODES, true);
  g.small_rrefs = true;
  drpc_value *v = vg_value(&g);
  vg_done(&g);
  return v;
}

static drpc_value *read_args(fz *in) {
  drpc_value *l = drpc_value_list();
  size_t n = (size_t)fz_range(in, 0, 4);
  for (size_t i = 0; i < n; i++) {
    uint8_t sel = fz_u8(in);
    drpc_value *v = (sel & 0x80) && nrrefs
                        ? drpc_value_rref(rrefs[(sel & 0x7f) % nrrefs])
                        : read_val(in);
    FUZZ_CHECK(v && drpc_list_append(l, v) == 0, "args");
  }
  return l;
}

static drpc_value *read_kwargs(fz *in) {
  size_t n = (size_t)fz_range(in, 0, 2);
  if (!n)
    return NULL;
  drpc_value *d = drpc_value_dict();
  for (size_t i = 0; i < n; i++) {
    const char *key = KW_NAMES[fz_u8(in) % AP_NKW];
    FUZZ_CHECK(drpc_dict_set(d, key, read_val(in)) == 0, "kwargs");
  }
  return d;
}

static int read_agent(fz *in) {
  return fz_u8(in) % nagents;
}

static double read_timeout(fz *in) {
  return TIMEOUTS[fz_u8(in) % AP_NTIMEOUTS];
}

/* Reads happen in separate statements throughout: the order in which a
 * call's arguments are evaluated is unspecified, and an input must mean the
 * same under every compiler. */
static drpc_value *rref_id(fz *in) {
  int64_t created_on = fz_u8(in) % 3;
  int64_t local_id = fz_u8(in) % 8;
  return drpc_value_list_of(2, drpc_value_int(created_on),
                            drpc_value_int(local_id));
}

/* ---- frames from peers ------------------------------------------------------
 */

typedef struct target {
  int node;
  uint64_t conn;
} target;

/* Every live connection end an agent knows. */
static int list_targets(target *out) {
  int n = 0;
  for (int i = 0; i < TNET_MAX_CONNS; i++) {
    tconn *c = &N.conns[i];
    if (!c->used || c->closed)
      continue;
    if (N.nodes[c->from].agent)
      out[n++] = (target){c->from, c->id_from};
    if (c->open && N.nodes[c->to].agent)
      out[n++] = (target){c->to, c->id_to};
  }
  return n;
}

static bool pick_target(fz *in, target *t) {
  target all[2 * TNET_MAX_CONNS];
  int n = list_targets(all);
  uint8_t sel = fz_u8(in);
  if (!n)
    return false;
  *t = all[sel % n];
  return true;
}

static uint64_t read_id(fz *in) {
  uint8_t sel = fz_u8(in);
  if ((sel & 0x80) && nrecent)
    return recent_ids[(sel & 15) % (nrecent < 16 ? nrecent : 16)];
  return sel & 0x7f;
}

/* A body shaped like what the type carries, with fuzzed fields. */
static drpc_value *template_body(fz *in, uint8_t type) {
  switch (type) {
  case DRPC_MSG_HELLO: {
    static const char *const names[] = {"w0", "w1", "w2", "bad name"};
    uint8_t ver = fz_u8(in);
    int64_t id = fz_u8(in) % 4;
    const char *name = names[fz_u8(in) % 4];
    return drpc_value_list_of(3, drpc_value_int(ver ? ver : DRPC_WIRE_VERSION),
                              drpc_value_int(id), drpc_value_str(name));
  }
  case DRPC_MSG_CALL:
  case DRPC_MSG_REMOTE_CALL: {
    uint8_t kind = fz_u8(in) % 5;
    const char *fn = FN_NAMES[fz_u8(in) % AP_NFN];
    drpc_value *args = read_args(in);
    drpc_value *kw = read_kwargs(in);
    drpc_value *b = drpc_value_list_of(4, drpc_value_int(kind == 4 ? 9 : kind),
                                       drpc_value_str(fn), args,
                                       kw ? kw : drpc_value_dict());
    if (type == DRPC_MSG_REMOTE_CALL) {
      drpc_list_append(b, rref_id(in));
      drpc_list_append(b, rref_id(in));
    }
    return b;
  }
  case DRPC_MSG_ERROR: {
    size_t n;
    const uint8_t *p = fz_blob(in, 64, &n);
    int64_t code = -(int64_t)(fz_u8(in) % 25);
    return drpc_value_list_of(2, drpc_value_int(code),
                              drpc_value_strn((const char *)p, n));
  }
  case DRPC_MSG_RREF_FETCH:
  case DRPC_MSG_RREF_CHILD_ACCEPT: {
    drpc_value *id = rref_id(in);
    return id;
  }
  case DRPC_MSG_RREF_USER_DELETE:
  case DRPC_MSG_RREF_FORK_REQUEST: {
    drpc_value *a = rref_id(in), *b = rref_id(in);
    drpc_value *l = drpc_value_list_of(4, drpc_value_int(a->u.c.items[0]->u.i),
                                       drpc_value_int(a->u.c.items[1]->u.i),
                                       drpc_value_int(b->u.c.items[0]->u.i),
                                       drpc_value_int(b->u.c.items[1]->u.i));
    drpc_value_free(a);
    drpc_value_free(b);
    return l;
  }
  default:
    return read_val(in);
  }
}

static void deliver(const target *t, const uint8_t *buf, size_t len) {
  drpc_agent *a = N.nodes[t->node].agent;
  if (a)
    drpc_agent_on_frame(a, t->conn, buf, len);
}

static void op_frame(fz *in) {
  target t;
  bool have = pick_target(in, &t);
  uint8_t type = fz_u8(in) % 16;
  uint16_t flags = fz_u16(in);
  uint64_t id = read_id(in);
  uint8_t mode = fz_u8(in) % 3;
  drpc_value *body = mode == 0   ? template_body(in, type)
                     : mode == 1 ? read_val(in)
                                 : NULL;
  drpc_outframe *f = NULL;
  /* Unknown types cannot be encoded: send a HELLO and patch the type. */
  uint8_t enc_type = type >= 1 && type <= DRPC_MSG_TYPE_MAX ? type : 1;
  if (have &&
      drpc_wire_encode(enc_type, flags, id, body, NULL, &f, NULL) == 0) {
    size_t len;
    uint8_t *buf = drpc_outframe_flatten(f, &len);
    buf[5] = type;
    deliver(&t, buf, len);
    free(buf);
  }
  drpc_outframe_free(f);
  drpc_value_free(body);
}

static void op_raw(fz *in) {
  target t;
  bool have = pick_target(in, &t);
  uint8_t mode = fz_u8(in) & 1;
  uint8_t type = mode ? fz_u8(in) % 16 : 0;
  uint64_t id = mode ? read_id(in) : 0;
  size_t n;
  const uint8_t *p = fz_blob(in, 4096, &n);
  if (!have)
    return;
  if (!mode) {
    uint8_t *copy = malloc(n ? n : 1);
    memcpy(copy, p, n);
    deliver(&t, copy, n);
    free(copy);
    return;
  }
  drpc_frame_header h = {
      DRPC_WIRE_MAGIC, DRPC_WIRE_VERSION, type, 0, id, (uint32_t)n, 0, 0};
  size_t len = (size_t)drpc_wire_data_offset((uint32_t)n);
  uint8_t *buf = calloc(1, len);
  drpc_wire_header_encode(&h, buf);
  memcpy(buf + DRPC_WIRE_HEADER_SIZE, p, n);
  deliver(&t, buf, len);
  free(buf);
}

/* Remembers the ids of requests the agents send, so injected responses
 * can answer them. */
static void on_send(void *user, int from, int to, const uint8_t *buf,
                    size_t len) {
  (void)user;
  (void)from;
  (void)to;
  if (len < DRPC_WIRE_HEADER_SIZE || !drpc_msg_type_is_request(buf[5]))
    return;
  uint64_t id = 0;
  for (int i = 0; i < 8; i++)
    id |= (uint64_t)buf[8 + i] << (8 * i);
  recent_ids[nrecent++ % 16] = id;
}

/* ---- user operations --------------------------------------------------------
 */

static void op_rpc(fz *in, bool remote) {
  int a = read_agent(in);
  const char *dst = DST_NAMES[fz_u8(in) % AP_NDST];
  uint8_t kind = fz_u8(in) % 3;
  const char *fn = FN_NAMES[fz_u8(in) % AP_NFN];
  drpc_value *args = read_args(in), *kwargs = read_kwargs(in);
  double timeout = read_timeout(in);
  drpc_agent *ag = N.nodes[a].agent;
  drpc_error err = DRPC_ERROR_INIT;
  drpc_call_kind k = kind == 2 ? (drpc_call_kind)7 : (drpc_call_kind)kind;
  if (!remote) {
    drpc_future *f = NULL;
    int rc = drpc_rpc_async(ag, dst, k, fn, args, kwargs, timeout, &f, &err);
    FUZZ_CHECK(rc <= 0 && (rc == 0) == (f != NULL), "rpc_async %d", rc);
    track(f, a, true);
  } else if (nrrefs < MAX_RREFS) {
    drpc_rref *r = NULL;
    int rc = drpc_remote(ag, dst, k, fn, args, kwargs, timeout, &r, &err);
    FUZZ_CHECK(rc <= 0 && (rc == 0) == (r != NULL), "remote %d", rc);
    if (r) {
      rrefs[nrrefs++] = r;
      track(drpc_rref_creation_future(r), a, false);
    }
  }
  drpc_error_clear(&err);
  drpc_value_free(args);
  drpc_value_free(kwargs);
}

static int read_rref_index(fz *in) {
  uint8_t sel = fz_u8(in);
  return nrrefs ? sel % nrrefs : -1;
}

static void op_to_here(fz *in) {
  int i = read_rref_index(in);
  uint8_t t = fz_u8(in);
  if (i < 0)
    return;
  /* A blocking call: the test env runs the network (and here the jobs)
   * while it waits, and moves the clock to the next timer when idle. */
  double timeout_s = 0.01 * (1 + t % 200);
  bool auto_jobs = N.auto_run_jobs;
  N.auto_run_jobs = true;
  drpc_value *v = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_rref_to_here(rrefs[i], timeout_s, &v, &err);
  FUZZ_CHECK(rc <= 0 && (rc == 0 || v == NULL), "to_here %d", rc);
  N.auto_run_jobs = auto_jobs;
  drpc_value_free(v);
  drpc_error_clear(&err);
}

static void op_proxy(fz *in) {
  int i = read_rref_index(in);
  uint8_t kind = fz_u8(in) % 2;
  const char *fn = FN_NAMES[fz_u8(in) % AP_NFN];
  drpc_value *args = read_args(in);
  double timeout = read_timeout(in);
  if (i >= 0) {
    drpc_future *f = NULL;
    drpc_error err = DRPC_ERROR_INIT;
    int rc = drpc_rref_rpc_async(rrefs[i], (drpc_call_kind)kind, fn, args, NULL,
                                 timeout, &f, &err);
    FUZZ_CHECK(rc <= 0 && (rc == 0) == (f != NULL), "rref_rpc_async %d", rc);
    /* Whose call it is: the agent of the handle, which the API hides;
     * -1 keeps it out of the per-agent count. */
    track(f, -1, true);
    drpc_error_clear(&err);
  }
  drpc_value_free(args);
}

static void drop_rref(int i) {
  drpc_rref_decref(rrefs[i]);
  rrefs[i] = rrefs[--nrrefs];
}

static void op_local(fz *in) {
  int a = read_agent(in);
  drpc_value *v = read_val(in);
  if (nrrefs == MAX_RREFS) {
    drpc_value_free(v);
    return;
  }
  drpc_rref *r = NULL;
  if (drpc_rref_new_local(N.nodes[a].agent, v, &r, NULL) == 0)
    rrefs[nrrefs++] = r;
}

static void op_connect(fz *in) {
  int a = read_agent(in);
  uint8_t hello = fz_u8(in);
  uint64_t id;
  if (raw_connects >= MAX_RAW_CONNECTS ||
      tnet_raw_connect(&N, INTRUDER, a, &id) < 0)
    return;
  raw_connects++;
  if (!hello)
    return;
  int claim = (hello - 1) % 3;
  static const char *const claims[] = {"w0", "w1", "w2"};
  drpc_value *b =
      drpc_value_list_of(3, drpc_value_int(DRPC_WIRE_VERSION),
                         drpc_value_int(claim), drpc_value_str(claims[claim]));
  drpc_outframe *f = NULL;
  if (drpc_wire_encode(DRPC_MSG_HELLO, 0, 0, b, NULL, &f, NULL) == 0) {
    size_t len;
    uint8_t *buf = drpc_outframe_flatten(f, &len);
    target t = {a, id};
    deliver(&t, buf, len);
    free(buf);
  }
  drpc_outframe_free(f);
  drpc_value_free(b);
}

static void op_complete(fz *in) {
  uint8_t sel = fz_u8(in), how = fz_u8(in);
  if (!nheld)
    return;
  int i = sel % nheld;
  drpc_future *f = held[i];
  held[i] = held[--nheld];
  if (how & 1) {
    drpc_future_fail(f, DRPC_EUSER, "held future failed by the program");
  } else {
    drpc_value *v = read_val(in);
    drpc_future_set_value(f, v);
  }
  drpc_future_decref(f);
}

static uint64_t next_timer(void) {
  uint64_t t = 0;
  for (int i = 0; i < nagents; i++) {
    uint64_t d = N.nodes[i].agent ? N.nodes[i].timer_deadline : 0;
    if (d && (!t || d < t))
      t = d;
  }
  return t;
}

static void step(fz *in) {
  switch (fz_u8(in) % AP_OPS) {
  case AP_FRAME:
    op_frame(in);
    break;
  case AP_RAW:
    op_raw(in);
    break;
  case AP_TICK: {
    uint8_t sel = fz_u8(in);
    uint64_t d = sel < 200 ? sel * 10 * MS : (sel - 199) * 30000 * MS;
    tnet_advance_to(&N, N.now_ns + d);
    break;
  }
  case AP_TIMER: {
    uint64_t t = next_timer();
    if (t)
      tnet_advance_to(&N, t);
    break;
  }
  case AP_RUN:
    tnet_run(&N, (int)fz_range(in, 1, 64));
    break;
  case AP_JOB:
    tnet_run_job(&N);
    break;
  case AP_SETTLE: {
    bool auto_jobs = N.auto_run_jobs;
    N.auto_run_jobs = true;
    tnet_run(&N, 10000);
    N.auto_run_jobs = auto_jobs;
    break;
  }
  case AP_RPC:
    op_rpc(in, false);
    break;
  case AP_REMOTE:
    op_rpc(in, true);
    break;
  case AP_TO_HERE:
    op_to_here(in);
    break;
  case AP_PROXY:
    op_proxy(in);
    break;
  case AP_DROP: {
    int i = read_rref_index(in);
    if (i >= 0)
      drop_rref(i);
    break;
  }
  case AP_LOCAL:
    op_local(in);
    break;
  case AP_BREAK: {
    uint8_t pair = fz_u8(in) % 3;
    if (pair == 0)
      tnet_break(&N, 0, 1);
    else
      tnet_break(&N, INTRUDER, pair - 1);
    break;
  }
  case AP_CONNECT:
    op_connect(in);
    break;
  case AP_COMPLETE:
    op_complete(in);
    break;
  case AP_TIMEOUT: {
    int a = read_agent(in);
    drpc_agent_set_rpc_timeout(N.nodes[a].agent, 0.1 * fz_u8(in), NULL);
    break;
  }
  case AP_METRICS: {
    int a = read_agent(in);
    drpc_value_free(drpc_agent_metrics(N.nodes[a].agent));
    drpc_value_free(drpc_rref_context_debug_info(N.nodes[a].agent));
    break;
  }
  }
}

/* ---- recording (DRPC_FUZZ_RECORD) -------------------------------------------
 */

static drpc_recorder *rec;
static drpc_env_ops rec_ops; /* the test env's, with a record sink */

static void rec_sink(void *ctx, const drpc_event *ev) {
  (void)ctx;
  drpc_recorder_record(rec, ev);
}

static bool rec_on(void *ctx) {
  (void)ctx;
  return true;
}

/* Before the agents start: their envs get the recorder as record sink. */
static void record_begin(void) {
  const char *path = getenv("DRPC_FUZZ_RECORD");
  if (!path || !path[0])
    return;
  drpc_run_info ri = {0};
  ri.backend = "fuzz";
  ri.scenario = "fuzz_agent";
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_recorder_open(&rec, path, &ri, false, true, &err);
  FUZZ_CHECK(rc == 0, "recording to %s: %s", path, drpc_error_message(&err));
  rec_ops = *N.nodes[0].env.ops;
  rec_ops.record = rec_sink;
  rec_ops.recording = rec_on;
  for (int i = 0; i < nagents; i++) {
    N.nodes[i].env.ops = &rec_ops;
    drpc_recorder_node(rec, (int16_t)i, NAMES[i]);
  }
}

static void record_end(void) {
  if (!rec)
    return;
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_recorder_close(rec, &err);
  rec = NULL;
  FUZZ_CHECK(rc == 0, "closing the recording: %s", drpc_error_message(&err));
  fprintf(stderr, "fuzz_agent: recorded the run to %s\n",
          getenv("DRPC_FUZZ_RECORD"));
}

/* ---- setup and teardown
 * ------------------------------------------------------ */

static void start(uint8_t cfg) {
  tnet_init(&N);
  nagents = cfg & AP_CFG_TWO_AGENTS ? 2 : 1;
  for (int i = 0; i < 3; i++)
    tnet_node(&N);
  N.auto_run_jobs = cfg & AP_CFG_AUTO_JOBS;
  N.on_send = on_send;
  S = tnet_store(&N, 2, NAMES);
  drpc_options o;
  drpc_options_default(&o);
  o.registry = R;
  o.rpc_timeout_s = (double)(1u << ((cfg >> AP_CFG_TIMEOUT_SHIFT) & 3));
  o.max_frame_bytes = 1u << 20;
  o.shutdown_timeout_s = 2.0;
  record_begin();
  for (int i = 0; i < nagents; i++) {
    drpc_error err = DRPC_ERROR_INIT;
    int rc = drpc_agent_start(&N.nodes[i].agent, S, NAMES[i], i, 2, &o,
                              &N.nodes[i].env, &err);
    FUZZ_CHECK(rc == 0, "agent start: %s", drpc_error_message(&err));
  }
  nfuts = nrrefs = nheld = raw_connects = 0;
  nrecent = 0;
}

static void finish(uint8_t cfg) {
  if (cfg & AP_CFG_DROP_FIRST)
    while (nrrefs)
      drop_rref(nrrefs - 1);
  N.auto_run_jobs = true;
  tnet_run(&N, 100000);
  bool graceful = nagents == 1 && (cfg & AP_CFG_GRACEFUL);
  for (int i = 0; i < nagents; i++)
    drpc_agent_shutdown(N.nodes[i].agent, graceful, 1.0, NULL);
  tnet_run(&N, 100000);
  check_invariants(true, true);
  for (int i = 0; i < nfuts; i++)
    FUZZ_CHECK(!futs[i].is_call || futs[i].callbacks == 1,
               "call future %d still pending after shutdown", i);
  while (nrrefs)
    drop_rref(nrrefs - 1);
  while (nheld) {
    drpc_future *f = held[--nheld];
    drpc_future_fail(f, DRPC_ESHUTDOWN, "the program ended");
    drpc_future_decref(f);
  }
  tnet_run(&N, 100000);
  for (int i = 0; i < nfuts; i++)
    drpc_future_decref(futs[i].f);
  nfuts = 0;
  for (int i = 0; i < nagents; i++) {
    drpc_agent *a = N.nodes[i].agent;
    N.nodes[i].agent = NULL;
    drpc_agent_free(a);
  }
  drpc_store_decref(S);
  S = NULL;
  tnet_free(&N);
  record_end();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  registry_once();
  fz in;
  fz_init(&in, data, size);
  uint8_t cfg = fz_u8(&in);
  start(cfg);
  for (int i = 0; i < AP_MAX_STEPS && fz_remaining(&in); i++) {
    step(&in);
    check_invariants(i % COUNTER_EVERY == COUNTER_EVERY - 1, false);
  }
  finish(cfg);
  return 0;
}
