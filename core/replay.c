/* Replay of one node's recording against a fresh core (see drpc/replay.h).
 *
 * The replay env is single-threaded and passive: its clock is the recorded
 * time of the input being applied, connections and the executor only
 * remember what the core asked for, and commands the core posts to itself
 * wait in a stash until the recording says where they were applied. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "drpc/agent.h"
#include "drpc/replay.h"
#include "drpc/store.h"
#include "internal.h"

/* Connection ids the replayed core gets for its own connects; mapped to
 * the recorded ids when the recorded OUT_CONNECT is checked. */
#define REPLAY_CONN_BASE (1ull << 62)
/* Bounds on what replay keeps (each entry is something the recording made
 * the core hold). */
#define REPLAY_MAX_ITEMS (1u << 24)

typedef struct produced {
  drpc_event_kind kind;
  int16_t peer;
  uint64_t id, aux;
  size_t len;
  uint64_t hash; /* of bytes and name */
  bool named;
  char name[64]; /* described only when a divergence is reported */
} produced;

/* What p looks like, for a divergence report. */
static const char *produced_what(const produced *p, char *buf, size_t n) {
  drpc_event ev = {.kind = p->kind,
                   .peer = p->peer,
                   .id = p->id,
                   .aux = p->aux,
                   .len = p->len,
                   .name = p->named ? p->name : NULL};
  drpc_event_describe(&ev, buf, n);
  return buf;
}

typedef struct vec {
  void **p;
  size_t len, cap;
} vec;

struct drpc_replay {
  drpc_env env;
  drpc_agent *agent;
  drpc_store *store;
  drpc_registry *registry;
  int16_t node;
  char addr[300];
  char channels[128]; /* the recorded device channels, split in place */
  uint64_t now;
  uint64_t next_conn;
  uint64_t (*next_id)(void *arg);
  void *next_arg;
  bool (*next_value)(void *arg, uint64_t key, const void **p, size_t *n);
  void *value_arg;
  bool closing, failed;
  /* A recorded input the core asked for and could not have (the first
   * since the input began): the feed reports it as the divergence. */
  char missing[256];
  /* produced outputs not yet checked (FIFO) */
  produced *out;
  size_t out_head, out_len, out_cap;
  /* replay conn id <-> recorded conn id */
  uint64_t *cmap_from, *cmap_to;
  size_t cmap_len, cmap_cap;
  vec jobs, stash, futures, rrefs;
  drpc_replay_stats st;
};

static bool vec_push(vec *v, void *x) {
  if (v->len == v->cap) {
    if (v->cap >= REPLAY_MAX_ITEMS)
      return false;
    size_t cap = v->cap ? v->cap * 2 : 16;
    void **p = realloc(v->p, cap * sizeof *p);
    if (!p)
      return false;
    v->p = p;
    v->cap = cap;
  }
  v->p[v->len++] = x;
  return true;
}

static void vec_remove(vec *v, size_t i) {
  memmove(&v->p[i], &v->p[i + 1], (v->len - i - 1) * sizeof *v->p);
  v->len--;
}

/* ---- the replay env ------------------------------------------------------ */

static uint64_t r_now(void *ctx) {
  return ((drpc_replay *)ctx)->now;
}
static void r_timer_arm(void *ctx, uint64_t deadline) {
  (void)ctx;
  (void)deadline;
}
static int r_connect(void *ctx, int16_t peer, const char *addr,
                     uint64_t *conn) {
  drpc_replay *r = ctx;
  (void)peer;
  (void)addr;
  uint64_t id = r->next_id ? r->next_id(r->next_arg) : 0;
  *conn = id ? id : REPLAY_CONN_BASE + ++r->next_conn;
  return 0;
}

void drpc_replay_set_connect_ids(drpc_replay *r, uint64_t (*next)(void *arg),
                                 void *arg) {
  r->next_id = next;
  r->next_arg = arg;
}

void drpc_replay_set_values(drpc_replay *r,
                            bool (*next)(void *arg, uint64_t key,
                                         const void **p, size_t *n),
                            void *arg) {
  r->next_value = next;
  r->value_arg = arg;
}

static drpc_value *r_recorded_value(void *ctx, uint64_t key) {
  drpc_replay *r = ctx;
  const void *p = NULL;
  size_t n = 0;
  if (!r->next_value || !r->next_value(r->value_arg, key, &p, &n) || !n)
    return NULL;
  drpc_wire_limits lim;
  drpc_wire_limits_default(&lim);
  lim.max_frame = UINT64_MAX;
  drpc_msg m = {0};
  if (drpc_wire_decode(p, n, &lim, &m, NULL) != 0)
    return NULL;
  drpc_value *v = m.body;
  m.body = NULL;
  drpc_msg_clear(&m);
  return v;
}

/* A little-endian u64 (the check's byte order). */
static uint64_t le64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++)
    v |= (uint64_t)p[i] << (8 * i);
  return v;
}

/* The bytes of a tensor the core received by IPC handle: the next
 * recorded value must be the one for this sender and lend id, hold the
 * tensor's n bytes after their check, and pass the check. */
static const void *r_recorded_bytes(void *ctx, int16_t peer, uint64_t key,
                                    size_t n) {
  drpc_replay *r = ctx;
  const void *vp = NULL;
  size_t len = 0;
  char why[96] = "";
  if (!r->next_value || !r->next_value(r->value_arg, key, &vp, &len))
    snprintf(why, sizeof why, "the recording holds no bytes for it here");
  else if (!vp || len < 8 || len - 8 != n)
    snprintf(why, sizeof why, "the recording holds %zu bytes for it",
             vp && len >= 8 ? len - 8 : 0);
  else if (le64(vp) !=
           drpc_in_value_device_check(peer, key, (const uint8_t *)vp + 8, n))
    snprintf(why, sizeof why,
             "its recorded bytes fail their check (altered, or another "
             "tensor's)");
  if (!why[0])
    return (const uint8_t *)vp + 8;
  if (!r->missing[0])
    snprintf(r->missing, sizeof r->missing,
             "the replayed core received a tensor of %zu bytes that worker %d "
             "shared by handle (lend %llu); %s",
             n, peer, (unsigned long long)key, why);
  return NULL;
}

static void r_send(void *ctx, uint64_t conn, drpc_outframe *f) {
  (void)ctx;
  (void)conn;
  drpc_outframe_free(f);
}
static void r_close(void *ctx, uint64_t conn) {
  (void)ctx;
  (void)conn;
}
static void r_execute(void *ctx, drpc_job *job) {
  drpc_replay *r = ctx;
  if (drpc_members_job_discard(job))
    return; /* membership's jobs: their effects are recorded commands */
  if (!vec_push(&r->jobs, job)) {
    r->failed = true;
    drpc_call_job_discard(job);
  }
}
static void r_post(void *ctx, drpc_cmd *cmd) {
  drpc_replay *r = ctx;
  if (!vec_push(&r->stash, cmd)) {
    r->failed = true;
    cmd->apply(cmd); /* nowhere to keep it: apply rather than leak */
  }
}
static bool r_is_owner(void *ctx) {
  (void)ctx;
  return true;
}
static void r_sync_nop(void *ctx, drpc_sync *s) {
  (void)ctx;
  (void)s;
}
static bool r_sync_wait(void *ctx, drpc_sync *s, uint64_t deadline) {
  (void)ctx;
  (void)s;
  (void)deadline;
  return false;
}
static uint64_t r_random(void *ctx) {
  (void)ctx;
  return 0;
}
static bool r_recording(void *ctx) {
  (void)ctx;
  return true;
}
static int r_listen_addr(void *ctx, char *buf, size_t n) {
  drpc_replay *r = ctx;
  snprintf(buf, n, "%s", r->addr);
  return 0;
}

static uint64_t hash_of(const drpc_event *ev) {
  drpc_event e = *ev;
  e.kind = 0;
  e.peer = 0;
  e.id = 0;
  e.aux = 0;
  return drpc_event_fold(DRPC_EVENT_HASH_INIT, &e);
}

static void r_record(void *ctx, const drpc_event *ev) {
  drpc_replay *r = ctx;
  if (r->closing || !drpc_event_is_output(ev->kind))
    return;
  if (r->out_head + r->out_len == r->out_cap) {
    if (r->out_head) {
      memmove(r->out, r->out + r->out_head, r->out_len * sizeof *r->out);
      r->out_head = 0;
    } else {
      size_t cap = r->out_cap ? r->out_cap * 2 : 64;
      produced *p =
          cap <= REPLAY_MAX_ITEMS ? realloc(r->out, cap * sizeof *p) : NULL;
      if (!p) {
        r->failed = true;
        return;
      }
      r->out = p;
      r->out_cap = cap;
    }
  }
  produced *p = &r->out[r->out_head + r->out_len++];
  p->kind = ev->kind;
  p->peer = ev->peer;
  p->id = ev->id;
  p->aux = ev->aux;
  p->len = ev->len;
  p->hash = hash_of(ev);
  p->named = ev->name != NULL;
  if (p->named) {
    size_t n = strnlen(ev->name, sizeof p->name - 1);
    memcpy(p->name, ev->name, n);
    p->name[n] = '\0';
  }
}

static drpc_value *r_recorded_value(void *ctx, uint64_t key);

static const drpc_env_ops replay_ops = {
    .now_ns = r_now,
    .timer_arm = r_timer_arm,
    .connect = r_connect,
    .send = r_send,
    .close = r_close,
    .execute = r_execute,
    .post = r_post,
    .is_owner = r_is_owner,
    .sync_init = r_sync_nop,
    .sync_destroy = r_sync_nop,
    .sync_lock = r_sync_nop,
    .sync_unlock = r_sync_nop,
    .sync_wait = r_sync_wait,
    .sync_broadcast = r_sync_nop,
    .random = r_random,
    .record = r_record,
    .recording = r_recording,
    .recorded_value = r_recorded_value,
    .recorded_bytes = r_recorded_bytes,
    .log = NULL,
    .pool_stats = NULL,
    .listen_addr = r_listen_addr,
};

/* ---- descriptions ------------------------------------------------------- */

const char *drpc_event_kind_name(drpc_event_kind k) {
  switch (k) {
  case DRPC_EV_IN_FRAME:
    return "in_frame";
  case DRPC_EV_IN_CONN_OPEN:
    return "in_conn_open";
  case DRPC_EV_IN_CONN_CLOSED:
    return "in_conn_closed";
  case DRPC_EV_IN_TIMER:
    return "in_timer";
  case DRPC_EV_IN_COMMAND:
    return "in_command";
  case DRPC_EV_IN_JOB_DONE:
    return "in_job_done";
  case DRPC_EV_IN_START:
    return "in_start";
  case DRPC_EV_IN_VALUE:
    return "in_value";
  case DRPC_EV_OUT_SEND:
    return "out_send";
  case DRPC_EV_OUT_CONNECT:
    return "out_connect";
  case DRPC_EV_OUT_CLOSE:
    return "out_close";
  case DRPC_EV_OUT_FUTURE:
    return "out_future";
  case DRPC_EV_OUT_EXECUTE:
    return "out_execute";
  case DRPC_EV_OUT_TIMER:
    return "out_timer";
  case DRPC_EV_RPC_BEGIN:
    return "rpc_begin";
  case DRPC_EV_RPC_END:
    return "rpc_end";
  case DRPC_EV_RREF:
    return "rref";
  case DRPC_EV_LOG:
    return "log";
  case DRPC_EV_FAULT:
    return "fault";
  case DRPC_EV_PROFILE:
    return "profile";
  }
  return "unknown";
}

size_t drpc_event_describe(const drpc_event *ev, char *buf, size_t n) {
  char extra[80] = "";
  if ((ev->kind == DRPC_EV_OUT_SEND || ev->kind == DRPC_EV_IN_FRAME) &&
      ev->aux < 256)
    snprintf(extra, sizeof extra, " (%s)", drpc_msg_type_name((int)ev->aux));
  else if (ev->name)
    snprintf(extra, sizeof extra, " %.60s", ev->name);
  int w =
      snprintf(buf, n, "%s peer=%d id=%llu aux=%lld%s, %zu bytes",
               drpc_event_kind_name(ev->kind), ev->peer,
               (unsigned long long)ev->id, (long long)ev->aux, extra, ev->len);
  return w < 0 ? 0 : (size_t)w;
}

/* ---- setup -------------------------------------------------------------- */

static const drpc_value *item(const drpc_value *l, size_t i,
                              drpc_value_kind k) {
  const drpc_value *v = drpc_list_at(l, i);
  return v && v->kind == k ? v : NULL;
}

int drpc_replay_new(drpc_replay **out, const drpc_event *start,
                    drpc_error *err) {
  *out = NULL;
  if (!start || start->kind != DRPC_EV_IN_START || !start->bytes)
    return drpc_error_set(err, DRPC_EINVAL,
                          "a replay starts from the node's start event "
                          "(with its configuration)");
  drpc_wire_limits lim;
  drpc_wire_limits_default(&lim);
  drpc_msg m = {0};
  int rc = drpc_wire_decode(start->bytes, start->len, &lim, &m, err);
  if (rc)
    return drpc_error_prefix(err, "start event configuration");
  const drpc_value *cfg = m.body;
  const drpc_value *name = item(cfg, 0, DRPC_VAL_STR),
                   *id = item(cfg, 1, DRPC_VAL_INT),
                   *ws = item(cfg, 2, DRPC_VAL_INT),
                   *peers = item(cfg, 3, DRPC_VAL_LIST),
                   *tmo = item(cfg, 4, DRPC_VAL_INT),
                   *maxf = item(cfg, 5, DRPC_VAL_INT),
                   *leak = item(cfg, 6, DRPC_VAL_BOOL),
                   *sdt = item(cfg, 7, DRPC_VAL_FLOAT),
                   *thr = item(cfg, 8, DRPC_VAL_INT),
                   *jep = item(cfg, 9, DRPC_VAL_INT),      /* dynamic groups */
                       *inc = item(cfg, 10, DRPC_VAL_INT), /* later lives */
                           *chan = item(cfg, 11,
                                        DRPC_VAL_STR); /* device channels */
  if (!name || !id || !ws || !peers || !tmo || !maxf || !leak || !sdt || !thr) {
    drpc_msg_clear(&m);
    return drpc_error_set(err, DRPC_EPROTO,
                          "start event configuration is malformed");
  }
  drpc_replay *r = calloc(1, sizeof *r);
  if (!r) {
    drpc_msg_clear(&m);
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  }
  r->env.ops = &replay_ops;
  r->env.ctx = r;
  r->node = (int16_t)id->u.i;
  r->now = start->time_ns;
  r->st.first_ns = start->time_ns;
  r->store = drpc_store_memory_new(&r->env);
  r->registry = drpc_registry_new();
  rc = !r->store || !r->registry
           ? drpc_error_set(err, DRPC_ENOMEM, "out of memory")
           : 0;
  /* A static group's core waits for every rank in the store: each must
   * be named, once (a replay's clock never moves, so it would wait for
   * good). */
  size_t np = drpc_value_len(peers);
  bool *seen = NULL;
  if (rc == 0 && ws->u.i > 0) {
    if (ws->u.i > DRPC_MAX_WORKERS || (size_t)ws->u.i != np)
      rc = drpc_error_set(err, DRPC_EPROTO,
                          "start event configuration: world size %lld but "
                          "%zu workers",
                          (long long)ws->u.i, np);
    else if (!(seen = calloc(np, sizeof *seen)))
      rc = drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  }
  for (size_t i = 0; rc == 0 && i < np; i++) {
    const drpc_value *p = drpc_list_at(peers, i);
    const drpc_value *pid = item(p, 0, DRPC_VAL_INT),
                     *pname = item(p, 1, DRPC_VAL_STR),
                     *paddr = item(p, 2, DRPC_VAL_STR);
    drpc_worker_info wi;
    if (!pid || !pname || !paddr ||
        drpc_worker_info_init(&wi, pname->u.s.data, pid->u.i, NULL) ||
        (seen && (pid->u.i < 0 || pid->u.i >= ws->u.i || seen[pid->u.i]))) {
      rc = drpc_error_set(err, DRPC_EPROTO,
                          "start event configuration: malformed worker");
      break;
    }
    if (seen)
      seen[pid->u.i] = true;
    char key[200];
    snprintf(key, sizeof key, "names/%lld", (long long)pid->u.i);
    rc = drpc_store_set_str(r->store, key, pname->u.s.data, err);
    snprintf(key, sizeof key, "addrs/%s", pname->u.s.data);
    if (rc == 0)
      rc = drpc_store_set_str(r->store, key, paddr->u.s.data, err);
    /* The listen address is the entry's first line (device information
     * may follow). */
    if (pid->u.i == id->u.i)
      snprintf(r->addr, sizeof r->addr, "%.*s",
               (int)strcspn(paddr->u.s.data, "\n"), paddr->u.s.data);
  }
  free(seen);
  if (rc == 0 && ws->u.i <= 0) {
    /* A dynamic group's worker joins through the store: the members it
     * found, and the epoch it joined at. */
    char *list = calloc(drpc_value_len(peers) + 1, DRPC_MAX_NAME_LEN + 24);
    size_t used = 0;
    for (size_t i = 0; list && i < drpc_value_len(peers); i++) {
      const drpc_value *p = drpc_list_at(peers, i);
      const drpc_value *pid = item(p, 0, DRPC_VAL_INT),
                       *pname = item(p, 1, DRPC_VAL_STR);
      /* Names were checked above (at most DRPC_MAX_NAME_LEN). */
      if (pid->u.i != id->u.i)
        used +=
            (size_t)snprintf(list + used, DRPC_MAX_NAME_LEN + 24, "%s-%lld,",
                             pname->u.s.data, (long long)pid->u.i);
    }
    int64_t e = 0;
    rc = !list ? drpc_error_set(err, DRPC_ENOMEM, "out of memory")
               : drpc_store_set_str(r->store, "names/_ALL_WORKER_INFOS", list,
                                    err);
    free(list);
    char key[64];
    snprintf(key, sizeof key, "names/%lld", (long long)id->u.i);
    if (rc == 0)
      rc = drpc_store_set_str(r->store, key, "", err);
    if (rc == 0 && jep && jep->u.i > 1)
      rc = drpc_store_add(r->store, "membership/epoch", jep->u.i - 1, &e, err);
  }
  if (rc == 0) {
    drpc_options o;
    drpc_options_default(&o);
    o.rpc_timeout_s = (double)tmo->u.i / 1000.0;
    o.max_frame_bytes = (uint64_t)maxf->u.i;
    o.ignore_rref_leak = leak->u.b;
    o.shutdown_timeout_s = sdt->u.f;
    o.num_worker_threads = (int)thr->u.i;
    o.incarnation =
        inc && inc->u.i > 0 && inc->u.i < 65536 ? (uint32_t)inc->u.i : 0;
    /* Channels by name: the options keep pointers, the replay the names. */
    snprintf(r->channels, sizeof r->channels, "%s", chan ? chan->u.s.data : "");
    char *save = NULL;
    int nch = 0;
    for (char *c = strtok_r(r->channels, ",", &save); c && nch < 3;
         c = strtok_r(NULL, ",", &save))
      o.channels[nch++] = c;
    o.channels[nch] = NULL;
    o.registry = r->registry;
    rc = drpc_agent_start(&r->agent, r->store, name->u.s.data, id->u.i, ws->u.i,
                          &o, &r->env, err);
    if (rc)
      drpc_error_prefix(err, "replay could not start the core");
  }
  drpc_msg_clear(&m);
  if (rc) {
    drpc_replay_free(r);
    return rc;
  }
  *out = r;
  return 0;
}

/* ---- feeding ------------------------------------------------------------ */

static uint64_t conn_in(drpc_replay *r, uint64_t recorded) {
  for (size_t i = 0; i < r->cmap_len; i++)
    if (r->cmap_to[i] == recorded)
      return r->cmap_from[i];
  return recorded;
}

static uint64_t conn_out(drpc_replay *r, uint64_t replayed) {
  for (size_t i = 0; i < r->cmap_len; i++)
    if (r->cmap_from[i] == replayed)
      return r->cmap_to[i];
  return replayed;
}

static bool cmap_add(drpc_replay *r, uint64_t from, uint64_t to) {
  if (r->cmap_len == r->cmap_cap) {
    size_t cap = r->cmap_cap ? r->cmap_cap * 2 : 16;
    if (cap > REPLAY_MAX_ITEMS)
      return false;
    uint64_t *a = realloc(r->cmap_from, cap * sizeof *a);
    if (!a)
      return false;
    r->cmap_from = a;
    uint64_t *b = realloc(r->cmap_to, cap * sizeof *b);
    if (!b)
      return false;
    r->cmap_to = b;
    r->cmap_cap = cap;
  }
  r->cmap_from[r->cmap_len] = from;
  r->cmap_to[r->cmap_len] = to;
  r->cmap_len++;
  return true;
}

static int diverged(drpc_replay *r, drpc_error *err, const char *fmt,
                    const char *a, const char *b) {
  r->failed = true;
  return drpc_error_set(err, DRPC_EDIVERGED, fmt, a, b);
}

static int check_output(drpc_replay *r, const drpc_event *ev, drpc_error *err) {
  char rec[200], got[200];
  if (r->out_len == 0) {
    drpc_event_describe(ev, rec, sizeof rec);
    return diverged(r, err, "recorded %s; replay produced %s", rec, "nothing");
  }
  produced *p = &r->out[r->out_head];
  uint64_t pid = p->id;
  bool ok = p->kind == ev->kind && p->peer == ev->peer && p->aux == ev->aux &&
            p->len == ev->len && p->hash == hash_of(ev);
  if (ok && p->kind == DRPC_EV_OUT_CONNECT && pid != ev->id &&
      !cmap_add(r, pid, ev->id))
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  if (p->kind == DRPC_EV_OUT_SEND || p->kind == DRPC_EV_OUT_CLOSE)
    pid = conn_out(r, pid);
  if (ok && p->kind != DRPC_EV_OUT_CONNECT && pid != ev->id)
    ok = false;
  if (!ok) {
    drpc_event_describe(ev, rec, sizeof rec);
    return diverged(r, err, "recorded %s; replay produced %s", rec,
                    produced_what(p, got, sizeof got));
  }
  r->out_head++;
  r->out_len--;
  if (r->out_len == 0)
    r->out_head = 0;
  return 0;
}

/* A command the core posted itself that matches the recorded one. */
static drpc_cmd *stash_take(drpc_replay *r, const drpc_event *ev) {
  for (size_t i = 0; i < r->stash.len; i++) {
    drpc_cmd *c = r->stash.p[i];
    drpc_event_kind kind;
    uint64_t type, key, conn;
    if (drpc_cmd_identify(c, &kind, &type, &key, &conn) != 0 ||
        kind != ev->kind || type != ev->aux)
      continue;
    bool match;
    if (kind == DRPC_EV_IN_JOB_DONE) {
      drpc_rreader rd = {ev->bytes, ev->len, 0, false};
      match = key == ev->id && conn == conn_in(r, drpc_rr_u64(&rd));
    } else if (type == DRPC_CMD_CALL) {
      drpc_rreader rd = {ev->bytes, ev->len, 0, false};
      drpc_rr_u64(&rd);
      drpc_rr_u64(&rd);
      size_t n = 0;
      const uint8_t *p = drpc_rr_blob(&rd, &n);
      match = (int16_t)key == ev->peer && p && drpc_cmd_call_frame_is(c, p, n);
    } else if (type == DRPC_CMD_RELEASE || type == DRPC_CMD_REMOTE) {
      match = key == ev->id;
    } else {
      match = true;
    }
    if (match) {
      vec_remove(&r->stash, i);
      return c;
    }
  }
  return NULL;
}

/* Drops the handles of fork `key` held in value v (a future's value the
 * replayed user code holds). */
static void drop_in_value(drpc_value *v, uint64_t key, int depth) {
  if (!v || depth > 256)
    return;
  if (v->kind == DRPC_VAL_RREF) {
    if (v->u.r.handle && drpc_rref_fork_key(v->u.r.handle) == key) {
      drpc_rref_decref(v->u.r.handle);
      v->u.r.handle = NULL;
    }
  } else if (v->kind == DRPC_VAL_LIST || v->kind == DRPC_VAL_DICT) {
    for (size_t i = 0; i < v->u.c.len; i++)
      drop_in_value(v->u.c.items[i], key, depth + 1);
  }
}

/* The recording released user RRef fork `key`: drop what replay holds of
 * it, as the user code did. */
static void release_holds(drpc_replay *r, uint64_t key) {
  /* A function that ran may have let go of an RRef argument before its
   * result reached the loop: the call's own hold goes too. */
  for (size_t i = 0; i < r->jobs.len; i++)
    drop_in_value(drpc_call_job_body(r->jobs.p[i]), key, 0);
  for (size_t i = 0; i < r->futures.len; i++) {
    drpc_future *f = r->futures.p[i];
    if (drpc_future_done(f))
      drop_in_value((drpc_value *)drpc_future_value(f), key, 0);
  }
  for (size_t i = 0; i < r->rrefs.len;) {
    drpc_rref *h = r->rrefs.p[i];
    if (drpc_rref_fork_key(h) == key) {
      vec_remove(&r->rrefs, i);
      drpc_rref_decref(h);
    } else {
      i++;
    }
  }
}

static int apply_command(drpc_replay *r, const drpc_event *ev,
                         drpc_error *err) {
  drpc_cmd *c = stash_take(r, ev);
  if (!c && ev->kind == DRPC_EV_IN_COMMAND && ev->aux == DRPC_CMD_RELEASE) {
    release_holds(r, ev->id);
    c = stash_take(r, ev);
    if (!c) {
      /* Released by user code holding the handle in a value replay does
       * not see; the core's side of the release is what matters. */
      char fork[48];
      snprintf(fork, sizeof fork, "key %llu", (unsigned long long)ev->id);
      return diverged(r, err, "recorded the release of RRef fork %s; %s", fork,
                      "replay still holds a handle to it");
    }
  }
  if (c) {
    c->apply(c);
    return 0;
  }
  drpc_rreader rd = {ev->bytes, ev->len, 0, false};
  drpc_agent *a = r->agent;
  if (ev->kind == DRPC_EV_IN_JOB_DONE) {
    uint64_t conn = conn_in(r, drpc_rr_u64(&rd));
    for (size_t i = 0; i < r->jobs.len; i++) {
      drpc_job *j = r->jobs.p[i];
      if (drpc_call_job_conn(j) == conn && drpc_call_job_req_id(j) == ev->id) {
        vec_remove(&r->jobs, i);
        rd.pos = 0;
        drpc_agent_input_begin(a);
        int rc = drpc_agent_replay_job_done(a, j, ev->aux, &rd, err);
        if (rc)
          drpc_call_job_discard(j); /* a bad record: the job goes */
        return rc;
      }
    }
    char what[200];
    drpc_event_describe(ev, what, sizeof what);
    return diverged(r, err, "recorded %s; %s", what,
                    "the replayed core never started that job");
  }
  switch (ev->aux) {
  case DRPC_CMD_CALL: {
    drpc_future *f = NULL;
    int rc = drpc_agent_replay_call(a, &rd, &f, err);
    if (rc == 0 && !vec_push(&r->futures, f)) {
      drpc_future_decref(f);
      return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
    }
    return rc;
  }
  case DRPC_CMD_STOP:
    return drpc_agent_replay_stop(a, &rd, err);
  case DRPC_CMD_REMOTE: {
    drpc_rref *h = NULL;
    int rc = drpc_rref_replay_remote(a, &rd, &h, err);
    if (rc == 0 && !vec_push(&r->rrefs, h)) {
      drpc_rref_decref(h);
      return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
    }
    return rc;
  }
  case DRPC_CMD_DELETE_USERS:
    drpc_agent_input_begin(a);
    drpc_agent_replay_delete_users(a);
    return 0;
  case DRPC_CMD_HEARTBEAT:
  case DRPC_CMD_VIEW:
  case DRPC_CMD_LEAVING:
    return drpc_members_replay_command(a, ev->aux, &rd, err);
  default:
    return drpc_error_set(err, DRPC_EPROTO, "unknown command type %llu",
                          (unsigned long long)ev->aux);
  }
}

int drpc_replay_feed(drpc_replay *r, const drpc_event *ev, drpc_error *err) {
  if (r->failed)
    return drpc_error_set(err, DRPC_ESTATE, "the replay already diverged");
  drpc_agent *a = r->agent;
  r->st.last_ns = ev->time_ns;
  if (drpc_event_is_output(ev->kind)) {
    r->st.outputs++;
    return check_output(r, ev, err);
  }
  if (!drpc_event_is_input(ev->kind) || ev->kind == DRPC_EV_IN_START ||
      ev->kind == DRPC_EV_IN_VALUE) {
    /* Values were handed over when the core read them. */
    r->st.skipped++;
    return 0;
  }
  r->st.inputs++;
  r->now = ev->time_ns;
  int rc = 0;
  switch (ev->kind) {
  case DRPC_EV_IN_FRAME:
    drpc_agent_on_frame(a, conn_in(r, ev->id), ev->bytes, ev->len);
    break;
  case DRPC_EV_IN_CONN_OPEN:
    if (ev->aux)
      drpc_agent_on_conn_open(a, conn_in(r, ev->id));
    else
      drpc_agent_on_conn_accept(a, ev->id);
    break;
  case DRPC_EV_IN_CONN_CLOSED: {
    char *msg = ev->len ? strndup(ev->bytes, ev->len) : NULL;
    drpc_error e = {(int)(int64_t)ev->aux, msg};
    drpc_agent_on_conn_closed(a, conn_in(r, ev->id),
                              ev->aux || msg ? &e : NULL);
    free(msg);
    break;
  }
  case DRPC_EV_IN_TIMER:
    drpc_agent_on_timer(a);
    break;
  case DRPC_EV_IN_COMMAND:
  case DRPC_EV_IN_JOB_DONE:
    rc = apply_command(r, ev, err);
    break;
  default:
    break;
  }
  if (rc == 0 && r->missing[0]) {
    r->failed = true;
    rc = drpc_error_set(err, DRPC_EDIVERGED, "%s", r->missing);
  }
  if (rc == 0 && r->failed)
    rc = drpc_error_set(err, DRPC_ENOMEM, "replay ran out of memory");
  if (rc)
    r->failed = true;
  return rc;
}

int drpc_replay_finish(drpc_replay *r, drpc_error *err) {
  int rc = 0;
  char got[200];
  if (!r->failed && r->out_len)
    rc = diverged(r, err, "the recording ends here; replay produced more: %s%s",
                  produced_what(&r->out[r->out_head], got, sizeof got),
                  r->out_len > 1 ? " (and more)" : "");
  return rc;
}

void drpc_replay_stats_get(const drpc_replay *r, drpc_replay_stats *st) {
  *st = r->st;
}

void drpc_replay_free(drpc_replay *r) {
  if (!r)
    return;
  r->closing = true;
  if (r->agent) {
    drpc_agent_replay_force_stop(r->agent);
    /* Whatever the core still had posted or running goes now. */
    for (int round = 0; round < 16 && (r->stash.len || r->jobs.len); round++) {
      while (r->jobs.len) {
        drpc_job *j = r->jobs.p[--r->jobs.len];
        drpc_call_job_discard(j);
      }
      while (r->stash.len) {
        drpc_cmd *c = r->stash.p[0];
        vec_remove(&r->stash, 0);
        c->apply(c);
      }
    }
  }
  for (size_t i = 0; i < r->rrefs.len; i++)
    drpc_rref_decref(r->rrefs.p[i]);
  for (size_t i = 0; i < r->futures.len; i++)
    drpc_future_decref(r->futures.p[i]);
  while (r->stash.len) {
    drpc_cmd *c = r->stash.p[0];
    vec_remove(&r->stash, 0);
    c->apply(c);
  }
  if (r->agent)
    drpc_agent_free(r->agent);
  if (r->store)
    drpc_store_decref(r->store);
  if (r->registry)
    drpc_registry_free(r->registry);
  free(r->out);
  free(r->cmap_from);
  free(r->cmap_to);
  free(r->jobs.p);
  free(r->stash.p);
  free(r->futures.p);
  free(r->rrefs.p);
  free(r);
}
