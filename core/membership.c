/* Dynamic group membership: workers started without a world size join a
 * running group and leave it again.
 *
 * Store keys (under the agent's store prefix):
 *   rpcIsStaticGroup          "false" for a dynamic group (agent.c)
 *   RpcGroupManagementToken   "" or the holder's token; one change at a time
 *   names/<rank>              the name holding the rank ("" when free)
 *   names/_ALL_WORKER_INFOS   "name-rank,name-rank," the current members
 *   addrs/<name>              address and device information (agent.c)
 *   membership/epoch          a counter: every change takes the next value
 *   membership/token_seq      a counter that makes tokens unique
 *
 * A change (join, leave, removal of a dead member) takes the token, edits
 * the list, takes an epoch, gives the token back and then tells the
 * members with JOIN [id, name, address, device information, epoch] or
 * LEAVE [id, name, epoch, reason] requests, answered once applied. A
 * member applies a change of worker X only when its epoch is newer than
 * the last change of X it applied, so changes arriving out of order still
 * converge. Dead members: a lost connection, or a heartbeat (a JOIN that
 * re-announces this worker to the next member by id) that fails, starts a
 * check on the executor: one more probe, then removal. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "drpc/agent.h"
#include "internal.h"
#include "map.h"

#define TOKEN_KEY "RpcGroupManagementToken"
#define LIST_KEY "names/_ALL_WORKER_INFOS"
#define EPOCH_KEY "membership/epoch"
#define TOKEN_SEQ_KEY "membership/token_seq"
/* Bounds: token polling, members told at once, suspects checked at once. */
#define TOKEN_MAX_TRIES 100000
#define MAX_SUSPECTS 64

struct drpc_members {
  drpc_agent *agent;
  int64_t rank;
  _Atomic uint64_t join_epoch;
  double member_timeout_s;
  /* Loop only. */
  drpc_timer *hb_timer;
  bool hb_inflight;
  unsigned beats;
  _Atomic bool stopping, sync_running;
  /* Suspects whose check runs now (id -> 1), under lock: the loop adds,
   * the executor removes. */
  drpc_sync lock;
  drpc_map suspects;
  _Atomic int checks_running;
};

static void rejoin_later(drpc_agent *a);
static void sync_later(drpc_agent *a);

/* The suspects map's key of worker id (map keys are non-zero). */
static uint64_t suspect_key(int16_t id) {
  return (uint64_t)(uint16_t)id + 1;
}

/* A test-only fault switch for the simulator's self-test alone
 * (tests/test_sim_membership.c): when non-zero, a LEAVE is answered but
 * not applied and the member list is not compared with the view, so a
 * member that left stays listed. The membership checkers must see it.
 * Nothing else may set it. */
int drpc_test_fault_skip_leave = 0;

void drpc_members_free(drpc_members *m) {
  if (!m)
    return;
  const drpc_env *env = drpc_agent_env(m->agent);
  env->ops->sync_destroy(env->ctx, &m->lock);
  drpc_map_free(&m->suspects);
  free(m);
}

static drpc_members *members_of(drpc_agent *a) {
  return drpc_agent_members(a);
}

static double left_s(drpc_agent *a, uint64_t deadline) {
  if (!deadline)
    return 0;
  uint64_t now = drpc_env_now(drpc_agent_env(a));
  return now >= deadline ? 1e-3 : (double)(deadline - now) / 1e9;
}

static bool past(drpc_agent *a, uint64_t deadline) {
  return deadline && drpc_env_now(drpc_agent_env(a)) >= deadline;
}

static uint64_t after_s(drpc_agent *a, double s) {
  return drpc_env_now(drpc_agent_env(a)) + (uint64_t)(s * 1e9);
}

/* ---- the token ---------------------------------------------------------- */

/* Takes the group-management token. A holder that keeps it longer than
 * steal_s (it died holding it) loses it, with a warning. */
static int token_take(drpc_agent *a, const char *what, uint64_t deadline,
                      double steal_s, char *tok, size_t n, drpc_error *err) {
  drpc_store *st = drpc_agent_store(a);
  int64_t seq = 0;
  int rc = drpc_store_add(st, TOKEN_SEQ_KEY, 1, &seq, err);
  if (rc)
    return rc;
  snprintf(tok, n, "Token_for_%s_%s_%lld", drpc_agent_self(a)->name, what,
           (long long)seq);
  char holder[256] = "";
  uint64_t holder_since = 0;
  double slice = 0.001;
  for (int i = 0; i < TOKEN_MAX_TRIES; i++) {
    if (drpc_agent_stopped(a))
      return drpc_error_set(err, DRPC_ESHUTDOWN, "RPC is no longer running");
    void *actual = NULL;
    size_t alen = 0;
    if ((rc = drpc_store_compare_set(st, TOKEN_KEY, "", 0, tok, strlen(tok),
                                     &actual, &alen, err)))
      return rc;
    bool mine = alen == strlen(tok) && memcmp(actual, tok, alen) == 0;
    if (mine) {
      free(actual);
      return 0;
    }
    uint64_t now = drpc_env_now(drpc_agent_env(a));
    if (alen >= sizeof holder || strncmp(holder, actual, alen) != 0 ||
        holder[alen]) {
      snprintf(holder, sizeof holder, "%.*s", (int)alen, (const char *)actual);
      holder_since = now;
    } else if (steal_s > 0 && now - holder_since > (uint64_t)(steal_s * 1e9)) {
      void *got = NULL;
      size_t glen = 0;
      rc = drpc_store_compare_set(st, TOKEN_KEY, holder, strlen(holder), tok,
                                  strlen(tok), &got, &glen, err);
      bool taken =
          rc == 0 && glen == strlen(tok) && memcmp(got, tok, glen) == 0;
      free(got);
      if (taken) {
        drpc_agent_logf(a, DRPC_LOG_WARN,
                        "group-management token held by %s for more than "
                        "%.1f s; taking it over",
                        holder, steal_s);
        free(actual);
        return 0;
      }
    }
    free(actual);
    if (past(a, deadline))
      return drpc_error_set(err, DRPC_ETIMEOUT,
                            "timed out waiting for the group-management "
                            "token (held by %s) to %s",
                            holder, what);
    /* Polls with backoff; a wait on a key would miss a holder that gives
     * the token back between the compare-and-set and the wait. */
    const char *keys[1] = {"membership/never"};
    double w = slice;
    if (deadline && w > left_s(a, deadline))
      w = left_s(a, deadline);
    drpc_store_wait(st, keys, 1, w, NULL);
    slice = slice * 2 < 0.1 ? slice * 2 : 0.1;
  }
  return drpc_error_set(err, DRPC_ETIMEOUT,
                        "gave up waiting for the group-management token");
}

static void token_give(drpc_agent *a, const char *tok) {
  drpc_error err = DRPC_ERROR_INIT;
  void *actual = NULL;
  size_t alen = 0;
  if (drpc_store_compare_set(drpc_agent_store(a), TOKEN_KEY, tok, strlen(tok),
                             "", 0, &actual, &alen, &err))
    drpc_agent_logf(a, DRPC_LOG_WARN,
                    "could not give back the group-management token: %s",
                    drpc_error_message(&err));
  free(actual);
  drpc_error_clear(&err);
}

/* ---- the member list ---------------------------------------------------- */

typedef struct entry {
  char name[DRPC_MAX_NAME_LEN + 1];
  int64_t rank;
} entry;

/* Parses "name-rank,name-rank," (names may hold '-': the rank follows the
 * last one). */
static int list_parse(const char *s, entry **out, size_t *n, drpc_error *err) {
  *out = NULL;
  *n = 0;
  size_t cap = 0;
  while (s && *s) {
    const char *comma = strchr(s, ',');
    size_t len = comma ? (size_t)(comma - s) : strlen(s);
    const char *dash = NULL;
    for (const char *p = s; p < s + len; p++)
      if (*p == '-')
        dash = p;
    char *end = NULL;
    long long r = dash ? strtoll(dash + 1, &end, 10) : -1;
    if (!dash || dash == s || (size_t)(dash - s) > DRPC_MAX_NAME_LEN ||
        end != s + len || r < 0 || r >= DRPC_MAX_WORKERS) {
      free(*out);
      *out = NULL;
      *n = 0;
      return drpc_error_set(err, DRPC_EPROTO, "malformed member list at '%.*s'",
                            (int)len, s);
    }
    if (*n == cap) {
      cap = cap ? cap * 2 : 16;
      entry *ne = realloc(*out, cap * sizeof *ne);
      if (!ne) {
        free(*out);
        *out = NULL;
        *n = 0;
        return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
      }
      *out = ne;
    }
    snprintf((*out)[*n].name, sizeof(*out)[*n].name, "%.*s", (int)(dash - s),
             s);
    (*out)[*n].rank = r;
    (*n)++;
    s = comma ? comma + 1 : s + len;
  }
  return 0;
}

static int list_read(drpc_agent *a, entry **out, size_t *n, drpc_error *err) {
  /* Read with a compare-and-set that changes nothing: a missing list is an
   * empty group (a get would wait for it). */
  void *actual = NULL;
  size_t alen = 0;
  int rc = drpc_store_compare_set(drpc_agent_store(a), LIST_KEY, "", 0, "", 0,
                                  &actual, &alen, err);
  if (rc)
    return rc;
  rc = list_parse(alen ? (const char *)actual : "", out, n, err);
  free(actual);
  return rc;
}

static int list_write(drpc_agent *a, const entry *e, size_t n,
                      drpc_error *err) {
  size_t cap = n * (DRPC_MAX_NAME_LEN + 24) + 1, used = 0;
  char *s = malloc(cap);
  if (!s)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  s[0] = 0;
  for (size_t i = 0; i < n; i++)
    used += (size_t)snprintf(s + used, cap - used, "%s-%lld,", e[i].name,
                             (long long)e[i].rank);
  int rc = drpc_store_set_str(drpc_agent_store(a), LIST_KEY, s, err);
  free(s);
  return rc;
}

/* Frees rank for the next worker, if name still holds it. */
static void rank_release(drpc_agent *a, int64_t rank, const char *name) {
  char key[64];
  snprintf(key, sizeof key, "names/%lld", (long long)rank);
  void *actual = NULL;
  size_t alen = 0;
  drpc_store_compare_set(drpc_agent_store(a), key, name, strlen(name), "", 0,
                         &actual, &alen, NULL);
  free(actual);
}

static int next_epoch(drpc_agent *a, uint64_t *epoch, drpc_error *err) {
  int64_t e = 0;
  int rc = drpc_store_add(drpc_agent_store(a), EPOCH_KEY, 1, &e, err);
  *epoch = (uint64_t)e;
  return rc;
}

/* ---- join ---------------------------------------------------------------- */

static double store_wait_s(drpc_agent *a) {
  double t = drpc_agent_options(a)->rpc_timeout_s;
  return t > 0 ? t : 60;
}

int drpc_members_join(drpc_agent *a, int64_t rank, const char *my_addr,
                      drpc_error *err) {
  const drpc_options *o = drpc_agent_options(a);
  const drpc_worker_info *self = drpc_agent_self(a);
  drpc_members *m = calloc(1, sizeof *m);
  if (!m)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  m->agent = a;
  m->rank = rank;
  m->member_timeout_s = o->member_timeout_s;
  drpc_map_init(&m->suspects);
  drpc_agent_env(a)->ops->sync_init(drpc_agent_env(a)->ctx, &m->lock);
  drpc_agent_set_members(a, m);
  drpc_store *st = drpc_agent_store(a);
  double wait_s = store_wait_s(a);
  uint64_t deadline = after_s(a, wait_s);
  char tok[DRPC_MAX_NAME_LEN + 64], key[DRPC_MAX_NAME_LEN + 16];
  int rc = token_take(a, "join", deadline, m->member_timeout_s * 3, tok,
                      sizeof tok, err);
  if (rc) {
    drpc_error_prefix(err, "joining the group");
    return rc;
  }
  entry *e = NULL;
  size_t n = 0;
  bool claimed = false;
  /* The rank: claimed like a lock, so two workers cannot share it. */
  snprintf(key, sizeof key, "names/%lld", (long long)rank);
  void *actual = NULL;
  size_t alen = 0;
  if ((rc = drpc_store_compare_set(st, key, "", 0, self->name,
                                   strlen(self->name), &actual, &alen, err)))
    goto out;
  if (alen != strlen(self->name) || memcmp(actual, self->name, alen) != 0) {
    rc = drpc_error_set(err, DRPC_EEXISTS,
                        "RPC worker id %lld is not unique. Workers %.*s and "
                        "%s share the same id.",
                        (long long)rank, (int)alen, (const char *)actual,
                        self->name);
    goto out;
  }
  claimed = true;
  if ((rc = list_read(a, &e, &n, err)))
    goto out;
  for (size_t i = 0; i < n; i++) {
    if (strcmp(e[i].name, self->name) == 0 && e[i].rank == rank) {
      /* Listed with its own name and rank (the rank claim let it in): its
       * last life, which crashed and was not taken out yet. The new
       * process takes its place. */
      memmove(e + i, e + i + 1, (n - i - 1) * sizeof *e);
      n--;
      i--;
      continue;
    }
    if (strcmp(e[i].name, self->name) == 0) {
      rc = drpc_error_set(err, DRPC_EEXISTS,
                          "RPC worker name %s is not unique. Workers %lld "
                          "and %lld share the same name.",
                          self->name, (long long)e[i].rank, (long long)rank);
      goto out;
    }
  }
  if ((rc = drpc_agent_publish_devices(st, self->name, my_addr, o, err)))
    goto out;
  for (size_t i = 0; i < n; i++) {
    char *addr = NULL;
    size_t len = 0;
    drpc_worker_info wi;
    snprintf(key, sizeof key, "addrs/%s", e[i].name);
    if ((rc = drpc_store_get(st, key, wait_s, (void **)&addr, &len, err)) ||
        (rc = drpc_worker_info_init(&wi, e[i].name, e[i].rank, err))) {
      free(addr);
      drpc_error_prefix(err, "joining the group: member %s", e[i].name);
      goto out;
    }
    rc = drpc_agent_peer_put(a, &wi, addr, 0, err);
    free(addr);
    if (rc)
      goto out;
  }
  {
    char *addr = NULL;
    size_t len = 0;
    snprintf(key, sizeof key, "addrs/%s", self->name);
    if ((rc = drpc_store_get(st, key, wait_s, (void **)&addr, &len, err)))
      goto out;
    uint64_t je = 0;
    if ((rc = next_epoch(a, &je, err)) == 0)
      rc = drpc_agent_peer_put(a, self, addr, je, err);
    atomic_store(&m->join_epoch, je);
    free(addr);
    if (rc)
      goto out;
  }
  entry *ne = realloc(e, (n + 1) * sizeof *ne);
  if (!ne) {
    rc = drpc_error_set(err, DRPC_ENOMEM, "out of memory");
    goto out;
  }
  e = ne;
  snprintf(e[n].name, sizeof e[n].name, "%s", self->name);
  e[n].rank = rank;
  if ((rc = list_write(a, e, n + 1, err)))
    goto out;
  drpc_agent_member_epoch_advance(a, self->id, m->join_epoch);
out:
  if (rc && claimed)
    rank_release(a, rank, self->name);
  free(e);
  free(actual);
  token_give(a, tok);
  return rc;
}

/* Takes self (or another member) out of the list and frees its rank; the
 * epoch of the change in *epoch (0 when it was not listed). */
static int list_remove(drpc_agent *a, const char *name, uint64_t deadline,
                       uint64_t *epoch, entry **left, size_t *nleft,
                       drpc_error *err) {
  drpc_members *m = members_of(a);
  char tok[DRPC_MAX_NAME_LEN + 64];
  *epoch = 0;
  if (left) {
    *left = NULL;
    *nleft = 0;
  }
  int rc = token_take(a, "leave", deadline, m->member_timeout_s * 3, tok,
                      sizeof tok, err);
  if (rc)
    return rc;
  entry *e = NULL;
  size_t n = 0;
  if ((rc = list_read(a, &e, &n, err)) == 0) {
    for (size_t i = 0; i < n; i++) {
      if (strcmp(e[i].name, name) != 0)
        continue;
      int64_t rank = e[i].rank;
      memmove(e + i, e + i + 1, (n - i - 1) * sizeof *e);
      if ((rc = list_write(a, e, n - 1, err)) == 0 &&
          (rc = next_epoch(a, epoch, err)) == 0)
        rank_release(a, rank, name);
      n--;
      break;
    }
  }
  if (left && rc == 0) {
    *left = e; /* the members still listed */
    *nleft = n;
    e = NULL;
  }
  free(e);
  token_give(a, tok);
  return rc;
}

void drpc_members_undo_join(drpc_agent *a) {
  drpc_members *m = members_of(a);
  uint64_t epoch = 0;
  if (m)
    list_remove(a, drpc_agent_self(a)->name, after_s(a, store_wait_s(a)),
                &epoch, NULL, NULL, NULL);
}

/* ---- telling the members --------------------------------------------------
 */

static drpc_future *tell_labelled(drpc_agent *a, int16_t dst, uint8_t type,
                                  drpc_value *body, double timeout_s,
                                  const char *label) {
  drpc_outframe *f = NULL;
  drpc_future *fut = drpc_future_new(drpc_agent_env(a));
  int rc = fut && body ? drpc_wire_encode(type, 0, 0, body,
                                          drpc_agent_wire_limits(a), &f, NULL)
                       : DRPC_ENOMEM;
  drpc_value_free(body);
  if (rc) {
    if (fut)
      drpc_future_fail(fut, rc, "could not encode a %s request",
                       drpc_msg_type_name(type));
    return fut;
  }
  uint64_t ms = timeout_s > 0 ? (uint64_t)(timeout_s * 1000) + 1 : 0;
  drpc_agent_post_request(a, dst, f, NULL, ms, fut, label, NULL);
  return fut;
}

static drpc_future *tell(drpc_agent *a, int16_t dst, uint8_t type,
                         drpc_value *body, double timeout_s) {
  return tell_labelled(a, dst, type, body, timeout_s, drpc_msg_type_name(type));
}

/* Reliable telling: a JOIN or LEAVE that a lost connection or a timeout
 * kept from a member goes again (from the loop, backing off) while the
 * member is still listed, so a healed partition still converges. */
#define RETRY_MAX 24
#define RETRY_BASE_NS 20000000ull /* 20 ms, doubling */
#define RETRY_CAP_NS 2000000000ull

typedef struct retry {
  drpc_members *m;
  int16_t dst;
  uint8_t type;
  drpc_value *body;
  int attempt;
} retry;

static void retry_free(retry *r) {
  drpc_value_free(r->body);
  free(r);
}

static void retry_done(drpc_future *f, void *arg);

static void retry_fire(void *arg, bool fired) {
  retry *r = arg;
  drpc_agent *a = r->m->agent;
  drpc_future *f = fired && !drpc_agent_stopped(a)
                       ? drpc_future_new(drpc_agent_env(a))
                       : NULL;
  if (!f || drpc_future_add_done_callback(f, retry_done, r)) {
    if (f)
      drpc_future_decref(f);
    retry_free(r);
    return;
  }
  uint64_t ms =
      (uint64_t)(r->m->member_timeout_s > 0 ? r->m->member_timeout_s * 1000
                                            : 10000) +
      1;
  drpc_agent_request(a, r->dst, r->type, r->body, ms, f);
  drpc_future_decref(f);
}

/* On the loop (where calls complete). */
static void retry_done(drpc_future *f, void *arg) {
  retry *r = arg;
  drpc_agent *a = r->m->agent;
  drpc_error err = DRPC_ERROR_INIT;
  int code = drpc_future_error(f, &err);
  drpc_error_clear(&err);
  drpc_worker_info wi;
  bool again = (code == DRPC_ECONN || code == DRPC_ETIMEOUT) &&
               r->attempt < RETRY_MAX && !drpc_agent_stopped(a) &&
               !atomic_load(&r->m->stopping) &&
               drpc_agent_resolve_id(a, r->dst, &wi, NULL) == 0;
  if (!again) {
    retry_free(r);
    return;
  }
  uint64_t delay = RETRY_BASE_NS << (r->attempt < 16 ? r->attempt : 16);
  if (delay > RETRY_CAP_NS)
    delay = RETRY_CAP_NS;
  r->attempt++;
  if (!drpc_agent_timer_add(a, drpc_agent_loop_now(a) + delay, retry_fire, r))
    retry_free(r);
}

/* The label of notices: call_apply hands each to drpc_members_notice on
 * the loop (in a replay too, as the label is part of the call's record). */
const char drpc_notice_label[] = "membership_notice";

void drpc_members_notice(drpc_agent *a, drpc_future *f, int16_t dst,
                         const drpc_outframe *frame) {
  drpc_members *m = members_of(a);
  size_t n = 0;
  uint8_t *flat = m ? drpc_outframe_flatten(frame, &n) : NULL;
  drpc_msg msg = {0};
  retry *r = flat ? calloc(1, sizeof *r) : NULL;
  if (r &&
      drpc_wire_decode(flat, n, drpc_agent_wire_limits(a), &msg, NULL) == 0) {
    r->m = m;
    r->dst = dst;
    r->type = msg.type;
    r->body = msg.body;
    msg.body = NULL;
    if (drpc_future_add_done_callback(f, retry_done, r))
      retry_free(r);
    r = NULL;
  }
  free(r);
  drpc_msg_clear(&msg);
  free(flat);
}

/* tell, retried as above. */
static drpc_future *tell_reliably(drpc_agent *a, int16_t dst, uint8_t type,
                                  drpc_value *body, double timeout_s) {
  return tell_labelled(a, dst, type, body, timeout_s, drpc_notice_label);
}

static drpc_value *join_body(drpc_agent *a, int16_t id, uint64_t epoch) {
  char *addr = NULL, *dev = NULL;
  drpc_worker_info wi;
  drpc_value *v = NULL;
  /* Device information has no fixed bound (maps toward many peers). */
  if (drpc_agent_peer_addr(a, id, &addr, &dev) &&
      drpc_agent_resolve_id(a, id, &wi, NULL) == 0)
    v = drpc_value_list_of(5, drpc_value_int(id), drpc_value_str(wi.name),
                           drpc_value_str(addr), drpc_value_str(dev),
                           drpc_value_int((int64_t)epoch));
  free(addr);
  free(dev);
  return v;
}

/* Sends type to every member but self (and but skip, when >= 0) and waits
 * for the answers; failures are logged, and a member that cannot be
 * reached becomes a suspect. */
/* Sends type to every member this worker knows and every worker in the
 * list (e, n: members it may have missed), but self and skip, and waits
 * for the answers; failures are logged (and retried, see tell_reliably). */
static void tell_all(drpc_agent *a, uint8_t type, drpc_value *(*body)(void *),
                     void *arg, int16_t skip, uint64_t deadline, const entry *e,
                     size_t ne) {
  size_t n = 0;
  drpc_worker_info *ws = drpc_agent_workers_copy(a, &n);
  drpc_worker_info *all = ws ? realloc(ws, (n + ne + 1) * sizeof *all) : NULL;
  if (all)
    ws = all;
  for (size_t i = 0; all && i < ne; i++) {
    bool known = false;
    for (size_t k = 0; k < n && !known; k++)
      known = ws[k].id == e[i].rank;
    if (!known &&
        drpc_worker_info_init(&ws[n], e[i].name, e[i].rank, NULL) == 0)
      n++;
  }
  drpc_future **fs = calloc(n ? n : 1, sizeof *fs);
  if (!ws || !all || !fs) {
    drpc_agent_logf(a, DRPC_LOG_ERROR, "out of memory telling the members");
    free(ws);
    free(fs);
    return;
  }
  const drpc_worker_info *self = drpc_agent_self(a);
  for (size_t i = 0; i < n; i++)
    if (ws[i].id != self->id && ws[i].id != skip)
      fs[i] = tell_reliably(a, ws[i].id, type, body(arg), left_s(a, deadline));
  for (size_t i = 0; i < n; i++) {
    if (!fs[i])
      continue;
    drpc_error err = DRPC_ERROR_INIT;
    if (drpc_future_wait(fs[i], left_s(a, deadline) + 1) ||
        drpc_future_error(fs[i], &err)) {
      drpc_agent_logf(a, DRPC_LOG_WARN, "could not tell %s (id %d) of a %s: %s",
                      ws[i].name, ws[i].id, drpc_msg_type_name(type),
                      err.code ? drpc_error_message(&err) : "timed out");
    }
    drpc_error_clear(&err);
    drpc_future_decref(fs[i]);
  }
  free(fs);
  free(ws);
}

typedef struct self_join {
  drpc_agent *a;
  uint64_t epoch;
} self_join;

static drpc_value *self_join_body(void *arg) {
  self_join *s = arg;
  return join_body(s->a, drpc_agent_self(s->a)->id, s->epoch);
}

static void heartbeat_start(void *arg);

int drpc_agent_announce(drpc_agent *a, drpc_error *err) {
  drpc_members *m = members_of(a);
  if (!m || drpc_agent_is_static_group(a))
    return 0;
  if (drpc_agent_stopped(a))
    return drpc_error_set(err, DRPC_ESHUTDOWN, "RPC is not running");
  self_join s = {a, m->join_epoch};
  tell_all(a, DRPC_MSG_JOIN, self_join_body, &s, -1,
           after_s(a, store_wait_s(a)), NULL, 0);
  if (m->member_timeout_s > 0)
    drpc_agent_run_on_loop(a, DRPC_CMD_HEARTBEAT, heartbeat_start, m);
  return 0;
}

typedef struct leave_args {
  int16_t id;
  const char *name;
  uint64_t epoch;
  const char *why;
} leave_args;

static drpc_value *leave_body(void *arg) {
  leave_args *l = arg;
  return drpc_value_list_of(4, drpc_value_int(l->id), drpc_value_str(l->name),
                            drpc_value_int((int64_t)l->epoch),
                            drpc_value_str(l->why));
}

/* On the loop (a recorded command): no more retries, heartbeats or
 * checks. */
static void set_stopping(void *arg) {
  drpc_members *m = arg;
  atomic_store(&m->stopping, true);
}

int drpc_members_leave(drpc_agent *a, uint64_t deadline, drpc_error *err) {
  drpc_members *m = members_of(a);
  const drpc_worker_info *self = drpc_agent_self(a);
  int rc = drpc_agent_wait_idle(a, deadline, err);
  if (rc)
    return rc;
  uint64_t epoch = 0;
  entry *left = NULL;
  size_t nleft = 0;
  if ((rc = list_remove(a, self->name, deadline, &epoch, &left, &nleft, err))) {
    drpc_error_prefix(err, "leaving the group");
    return rc;
  }
  if (m)
    drpc_agent_run_on_loop(a, DRPC_CMD_LEAVING, set_stopping, m);
  if (epoch) {
    leave_args l = {self->id, self->name, epoch, "left"};
    tell_all(a, DRPC_MSG_LEAVE, leave_body, &l, -1, deadline, left, nleft);
  }
  free(left);
  return drpc_agent_wait_served(a, deadline, err);
}

/* ---- dead members ----------------------------------------------------------
 */

typedef struct check_job {
  drpc_job job;
  drpc_agent *agent;
  drpc_worker_info who;
  char why[200];
} check_job;

static void suspects_lock(drpc_members *m, bool take) {
  const drpc_env *env = drpc_agent_env(m->agent);
  if (take)
    env->ops->sync_lock(env->ctx, &m->lock);
  else
    env->ops->sync_unlock(env->ctx, &m->lock);
}

/* On the executor: probes the suspect once more and, when it does not
 * answer, removes it from the group and tells every member (self too). */
static void check_run(drpc_job *job) {
  check_job *c = (check_job *)job;
  drpc_agent *a = c->agent;
  drpc_members *m = members_of(a);
  double t = m->member_timeout_s > 0 ? m->member_timeout_s : 10;
  self_join s = {a, m->join_epoch};
  drpc_future *f = drpc_agent_stopped(a) ? NULL
                                         : tell(a, c->who.id, DRPC_MSG_JOIN,
                                                self_join_body(&s), t);
  drpc_error err = DRPC_ERROR_INIT;
  bool alive = true;
  if (f) {
    if (drpc_future_wait(f, t + 1) || drpc_future_error(f, &err))
      alive = err.code == DRPC_ENOTFOUND ? true : false;
    /* ENOTFOUND: it already left this worker's table. */
    drpc_future_decref(f);
  }
  if (!alive && !drpc_agent_stopped(a) && !m->stopping) {
    uint64_t epoch = 0;
    drpc_error e2 = DRPC_ERROR_INIT;
    entry *left = NULL;
    size_t nleft = 0;
    if (list_remove(a, c->who.name, after_s(a, t * 3), &epoch, &left, &nleft,
                    &e2) == 0 &&
        epoch) {
      char why[DRPC_MAX_NAME_LEN + sizeof c->why + 48];
      snprintf(why, sizeof why, "removed as unreachable by %s (%s)",
               drpc_agent_self(a)->name, c->why);
      drpc_agent_logf(a, DRPC_LOG_WARN, "worker %s (id %d) %s", c->who.name,
                      c->who.id, why);
      leave_args l = {c->who.id, c->who.name, epoch, why};
      /* Self first (through the loop), then everyone else. */
      drpc_future *sf =
          tell(a, drpc_agent_self(a)->id, DRPC_MSG_LEAVE, leave_body(&l), t);
      if (sf) {
        drpc_future_wait(sf, t + 1);
        drpc_future_decref(sf);
      }
      tell_all(a, DRPC_MSG_LEAVE, leave_body, &l, c->who.id, after_s(a, t),
               left, nleft);
    } else if (e2.code) {
      drpc_agent_logf(a, DRPC_LOG_WARN, "could not remove %s: %s", c->who.name,
                      drpc_error_message(&e2));
    }
    free(left);
    drpc_error_clear(&e2);
  }
  drpc_error_clear(&err);
  suspects_lock(m, true);
  drpc_map_remove(&m->suspects, suspect_key(c->who.id));
  suspects_lock(m, false);
  atomic_fetch_sub(&m->checks_running, 1);
  free(c);
}

void drpc_members_suspect(drpc_agent *a, int16_t id, const char *why) {
  drpc_members *m = members_of(a);
  drpc_worker_info wi;
  if (!m || m->stopping || id == drpc_agent_self(a)->id ||
      drpc_agent_resolve_id(a, id, &wi, NULL))
    return;
  uint64_t key = suspect_key(id);
  check_job *c = calloc(1, sizeof *c);
  suspects_lock(m, true);
  bool start = c && !drpc_map_get(&m->suspects, key) &&
               m->suspects.len < MAX_SUSPECTS &&
               drpc_map_put(&m->suspects, key, (void *)1) == 0;
  suspects_lock(m, false);
  if (!start) {
    free(c);
    return;
  }
  c->job.run = check_run;
  c->agent = a;
  c->who = wi;
  snprintf(c->why, sizeof c->why, "%s", why ? why : "connection lost");
  atomic_fetch_add(&m->checks_running, 1);
  drpc_agent_env(a)->ops->execute(drpc_agent_env(a)->ctx, &c->job);
}

/* Heartbeats: every member_timeout/3 this worker re-announces itself to
 * the next member by id (ring order), so every member is watched by one
 * other and a silent death is noticed within the timeout. */
static void heartbeat_due(void *arg, bool fired);

static void heartbeat_arm(drpc_members *m) {
  drpc_agent *a = m->agent;
  uint64_t period = (uint64_t)(m->member_timeout_s / 3 * 1e9);
  m->hb_timer = drpc_agent_timer_add(a, drpc_agent_loop_now(a) + period,
                                     heartbeat_due, m);
}

static void heartbeat_start(void *arg) {
  drpc_members *m = arg;
  if (!m->hb_timer && !drpc_agent_stopped(m->agent))
    heartbeat_arm(m);
}

typedef struct hb_ctx {
  drpc_members *m;
  drpc_worker_info who;
} hb_ctx;

static void heartbeat_answer(drpc_future *f, void *arg) {
  hb_ctx *h = arg;
  drpc_error err = DRPC_ERROR_INIT;
  h->m->hb_inflight = false;
  if (drpc_future_error(f, &err) && err.code == DRPC_ESTATE &&
      !drpc_agent_stopped(h->m->agent))
    rejoin_later(h->m->agent); /* the others took this worker out */
  else if (err.code && err.code != DRPC_ENOTFOUND &&
           !drpc_agent_stopped(h->m->agent))
    drpc_members_suspect(h->m->agent, h->who.id, drpc_error_message(&err));
  drpc_error_clear(&err);
  free(h);
}

static void heartbeat_due(void *arg, bool fired) {
  drpc_members *m = arg;
  drpc_agent *a = m->agent;
  m->hb_timer = NULL;
  if (!fired || drpc_agent_stopped(a) || m->stopping)
    return;
  heartbeat_arm(m);
  if (++m->beats % 3 == 0)
    sync_later(a);
  if (m->hb_inflight)
    return;
  /* The next member by id after self, wrapping around. */
  size_t n = 0;
  drpc_worker_info *ws = drpc_agent_workers_copy(a, &n);
  int16_t me = drpc_agent_self(a)->id;
  const drpc_worker_info *next = NULL;
  for (size_t i = 0; ws && i < n && !next; i++)
    if (ws[i].id > me)
      next = &ws[i];
  if (!next && ws && n && ws[0].id != me)
    next = &ws[0];
  hb_ctx *h = next ? malloc(sizeof *h) : NULL;
  drpc_value *body = h ? join_body(a, me, m->join_epoch) : NULL;
  drpc_future *f = body ? drpc_future_new(drpc_agent_env(a)) : NULL;
  if (!f) {
    drpc_value_free(body);
    free(h);
    free(ws);
    return;
  }
  h->m = m;
  h->who = *next;
  free(ws);
  m->hb_inflight = true;
  uint64_t ms = (uint64_t)(m->member_timeout_s * 1000) + 1;
  drpc_agent_request(a, h->who.id, DRPC_MSG_JOIN, body, ms, f);
  drpc_value_free(body);
  drpc_future_add_done_callback(f, heartbeat_answer, h);
  drpc_future_decref(f);
}

/* ---- joining again ------------------------------------------------------ */

typedef struct rejoin_job {
  drpc_job job;
  drpc_agent *agent;
} rejoin_job;

/* On the executor: puts self back in the list (and its rank back in its
 * hands) with a new epoch, then tells every member. */
/* The view of the member list read while joining again: applied on the
 * loop (a posted command; a stopped agent only frees it). */
typedef struct view_entry {
  drpc_worker_info wi;
  char *addr; /* "<address>[\n<device information>]" */
} view_entry;

typedef struct view_cmd {
  drpc_cmd cmd;
  drpc_agent *agent;
  view_entry *v;
  size_t n;
  uint64_t epoch;
  bool rejoined; /* the worker joined again at epoch */
} view_cmd;

static void view_free(view_cmd *c) {
  for (size_t i = 0; i < c->n; i++)
    free(c->v[i].addr);
  free(c->v);
  free(c);
}

/* The command's record (traces/EVENTS.md, command 7). */
static void view_record(drpc_agent *a, const view_cmd *c) {
  drpc_rbuf b = {0};
  if (drpc_agent_recording(a)) {
    drpc_rbuf_u64(&b, c->epoch);
    drpc_rbuf_u64(&b, c->rejoined);
    drpc_rbuf_u64(&b, c->n);
    for (size_t i = 0; i < c->n; i++) {
      const view_entry *e = &c->v[i];
      drpc_rbuf_u64(&b, (uint64_t)(uint16_t)e->wi.id);
      drpc_rbuf_blob(&b, e->wi.name, strlen(e->wi.name));
      drpc_rbuf_blob(&b, e->addr ? e->addr : "", e->addr ? strlen(e->addr) : 0);
    }
  }
  drpc_agent_record(a, DRPC_EV_IN_COMMAND, -1, 0, DRPC_CMD_VIEW,
                    b.failed ? NULL : b.p, b.failed ? 0 : b.len, NULL);
  drpc_rbuf_free(&b);
}

static void view_apply(drpc_cmd *cmd) {
  view_cmd *c = (view_cmd *)cmd;
  drpc_agent *a = c->agent;
  int16_t me = drpc_agent_self(a)->id;
  if (!drpc_agent_stopped(a)) {
    drpc_agent_input_begin(a);
    view_record(a, c);
    if (c->rejoined)
      atomic_store(&members_of(a)->join_epoch, c->epoch);
    for (size_t i = 0; i < c->n; i++) {
      view_entry *e = &c->v[i];
      if (!e->addr)
        continue; /* known already */
      char *nl = strchr(e->addr, '\n');
      if (nl)
        *nl = 0;
      bool same = e->wi.id == me || drpc_agent_peer_same(a, &e->wi, e->addr);
      if (nl)
        *nl = '\n';
      /* Only news: a change of it this worker applied since the list was
       * read wins. */
      if (same || !drpc_agent_member_epoch_advance(a, e->wi.id, c->epoch))
        continue;
      drpc_error err = DRPC_ERROR_INIT;
      if (drpc_agent_peer_put(a, &e->wi, e->addr, c->epoch, &err) == 0)
        drpc_dev_peer_join(a, e->wi.id, e->wi.name, nl ? nl + 1 : NULL, &err);
      drpc_error_clear(&err);
    }
    size_t n = 0;
    drpc_worker_info *ws = drpc_agent_workers_copy(a, &n);
    for (size_t i = 0; ws && i < n; i++) {
      bool listed = ws[i].id == me;
      for (size_t k = 0; k < c->n && !listed; k++)
        listed = c->v[k].wi.id == ws[i].id;
      if (!listed && drpc_agent_member_epoch_advance(a, ws[i].id, c->epoch))
        drpc_agent_peer_del(a, ws[i].id, c->epoch, "not in the member list");
    }
    free(ws);
  }
  view_free(c);
}

/* The listed members, with the addresses of those this worker does not
 * know (NULL for the others). */
static view_cmd *view_read(drpc_agent *a, const entry *e, size_t n) {
  view_cmd *c = calloc(1, sizeof *c);
  if (c)
    c->v = calloc(n ? n : 1, sizeof *c->v);
  if (!c || !c->v) {
    free(c);
    return NULL;
  }
  c->cmd.apply = view_apply;
  c->agent = a;
  for (size_t i = 0; i < n; i++) {
    char key[DRPC_MAX_NAME_LEN + 16];
    size_t len = 0;
    view_entry *v = &c->v[c->n];
    snprintf(key, sizeof key, "addrs/%s", e[i].name);
    if (drpc_worker_info_init(&v->wi, e[i].name, e[i].rank, NULL))
      continue;
    drpc_worker_info cur;
    bool known = drpc_agent_resolve_id(a, v->wi.id, &cur, NULL) == 0 &&
                 strcmp(cur.name, v->wi.name) == 0;
    if (!known && drpc_store_get(drpc_agent_store(a), key, 1.0,
                                 (void **)&v->addr, &len, NULL))
      continue;
    c->n++;
  }
  return c;
}

static void rejoin_do(drpc_agent *a) {
  drpc_members *m = members_of(a);
  const drpc_worker_info *self = drpc_agent_self(a);
  double t = store_wait_s(a);
  char tok[DRPC_MAX_NAME_LEN + 64], key[64];
  drpc_error err = DRPC_ERROR_INIT;
  entry *e = NULL;
  size_t n = 0;
  uint64_t epoch = 0;
  bool told = false;
  if (!drpc_agent_stopped(a) && !atomic_load(&m->stopping) &&
      token_take(a, "join", after_s(a, t), m->member_timeout_s * 3, tok,
                 sizeof tok, &err) == 0) {
    bool listed = false;
    int rc = list_read(a, &e, &n, &err);
    for (size_t i = 0; rc == 0 && i < n; i++)
      listed |= strcmp(e[i].name, self->name) == 0;
    snprintf(key, sizeof key, "names/%lld", (long long)m->rank);
    void *actual = NULL;
    size_t alen = 0;
    if (rc == 0 && !listed &&
        (rc = drpc_store_compare_set(drpc_agent_store(a), key, "", 0,
                                     self->name, strlen(self->name), &actual,
                                     &alen, &err)) == 0 &&
        (alen != strlen(self->name) || memcmp(actual, self->name, alen) != 0))
      rc = drpc_error_set(&err, DRPC_EEXISTS, "rank %lld is taken by %.*s",
                          (long long)m->rank, (int)alen, (const char *)actual);
    free(actual);
    entry *ne = rc == 0 && !listed ? realloc(e, (n + 1) * sizeof *ne) : NULL;
    if (ne) {
      e = ne;
      snprintf(e[n].name, sizeof e[n].name, "%s", self->name);
      e[n].rank = m->rank;
      if ((rc = list_write(a, e, n + 1, &err)) == 0 &&
          (rc = next_epoch(a, &epoch, &err)) == 0)
        told = true;
    }
    /* While out, members may have come and gone unseen: take the list's
     * view of them. */
    view_cmd *view = told ? view_read(a, e, n) : NULL;
    token_give(a, tok);
    if (view) {
      /* The new join epoch takes effect on the loop, with the view. */
      view->epoch = epoch;
      view->rejoined = true;
      drpc_agent_env(a)->ops->post(drpc_agent_env(a)->ctx, &view->cmd);
    } else if (told) {
      atomic_store(&m->join_epoch, epoch);
    }
  }
  if (told) {
    self_join s = {a, epoch};
    tell_all(a, DRPC_MSG_JOIN, self_join_body, &s, -1, after_s(a, t), e, n);
  } else if (err.code) {
    drpc_agent_logf(a, DRPC_LOG_ERROR, "could not join the group again: %s",
                    drpc_error_message(&err));
  }
  drpc_error_clear(&err);
  free(e);
}

static void rejoin_run(drpc_job *job) {
  rejoin_job *r = (rejoin_job *)job;
  drpc_members *m = members_of(r->agent);
  rejoin_do(r->agent);
  atomic_fetch_sub(&m->checks_running, 1);
  free(r);
}

/* Anti-entropy, every member timeout: the view is made to agree with the
 * member list (changes whose telling was lost), and a worker that is no
 * longer listed joins again. The epoch is read before the list, so a
 * change told meanwhile (a newer epoch) wins over what the list says. */
static void sync_run(drpc_job *job) {
  rejoin_job *r = (rejoin_job *)job;
  drpc_agent *a = r->agent;
  drpc_members *m = members_of(a);
  int64_t e0 = 0;
  entry *e = NULL;
  size_t n = 0;
  if (!drpc_agent_stopped(a) && !atomic_load(&m->stopping) &&
      !drpc_test_fault_skip_leave &&
      drpc_store_add(drpc_agent_store(a), EPOCH_KEY, 0, &e0, NULL) == 0 &&
      list_read(a, &e, &n, NULL) == 0) {
    bool listed = false;
    for (size_t i = 0; i < n; i++)
      listed |= strcmp(e[i].name, drpc_agent_self(a)->name) == 0;
    view_cmd *v = listed ? view_read(a, e, n) : NULL;
    if (!listed) {
      drpc_agent_logf(a, DRPC_LOG_WARN,
                      "this worker is not in the member list; joining again");
      rejoin_do(a);
    } else if (v) {
      v->epoch = (uint64_t)e0;
      drpc_agent_env(a)->ops->post(drpc_agent_env(a)->ctx, &v->cmd);
    }
  }
  free(e);
  atomic_store(&m->sync_running, false);
  atomic_fetch_sub(&m->checks_running, 1);
  free(r);
}

static void sync_later(drpc_agent *a) {
  drpc_members *m = members_of(a);
  bool idle = false;
  rejoin_job *r = NULL;
  if (m && !atomic_load(&m->stopping) &&
      atomic_compare_exchange_strong(&m->sync_running, &idle, true) &&
      !(r = calloc(1, sizeof *r)))
    atomic_store(&m->sync_running, false);
  if (!r)
    return;
  r->job.run = sync_run;
  r->agent = a;
  atomic_fetch_add(&m->checks_running, 1);
  drpc_agent_env(a)->ops->execute(drpc_agent_env(a)->ctx, &r->job);
}

static void rejoin_later(drpc_agent *a) {
  drpc_members *m = members_of(a);
  rejoin_job *r = m && !atomic_load(&m->stopping) ? calloc(1, sizeof *r) : NULL;
  if (!r)
    return;
  r->job.run = rejoin_run;
  r->agent = a;
  atomic_fetch_add(&m->checks_running, 1);
  drpc_agent_env(a)->ops->execute(drpc_agent_env(a)->ctx, &r->job);
}

/* ---- applying changes (the loop) ------------------------------------------
 */

static bool body_ok(const drpc_value *b, bool join) {
  static const drpc_value_kind jk[5] = {
      DRPC_VAL_INT, DRPC_VAL_STR, DRPC_VAL_STR, DRPC_VAL_STR, DRPC_VAL_INT};
  static const drpc_value_kind lk[4] = {DRPC_VAL_INT, DRPC_VAL_STR,
                                        DRPC_VAL_INT, DRPC_VAL_STR};
  const drpc_value_kind *k = join ? jk : lk;
  size_t n = join ? 5 : 4;
  if (!b || b->kind != DRPC_VAL_LIST || b->u.c.len != n)
    return false;
  for (size_t i = 0; i < n; i++)
    if (b->u.c.items[i]->kind != k[i])
      return false;
  int64_t id = b->u.c.items[0]->u.i;
  int64_t epoch = b->u.c.items[join ? 4 : 2]->u.i;
  return id >= 0 && id < DRPC_MAX_WORKERS && epoch >= 0;
}

void drpc_members_on_request(drpc_agent *a, uint64_t conn, drpc_msg *msg) {
  bool join = msg->type == DRPC_MSG_JOIN;
  const drpc_value *b = msg->body;
  if (drpc_agent_is_static_group(a)) {
    drpc_agent_reply_error(a, conn, msg->id, DRPC_EUNSUPPORTED,
                           "this worker is in a static group; members do not "
                           "join or leave it");
    return;
  }
  if (!body_ok(b, join)) {
    drpc_agent_reply_error(a, conn, msg->id, DRPC_EPROTO,
                           join ? "malformed JOIN" : "malformed LEAVE");
    return;
  }
  int16_t id = (int16_t)b->u.c.items[0]->u.i;
  const char *name = b->u.c.items[1]->u.s.data;
  drpc_worker_info wi;
  drpc_error err = DRPC_ERROR_INIT;
  if (drpc_worker_info_init(&wi, name, id, &err)) {
    drpc_agent_reply_error(a, conn, msg->id, err.code,
                           drpc_error_message(&err));
    drpc_error_clear(&err);
    return;
  }
  const drpc_worker_info *self = drpc_agent_self(a);
  if (join) {
    uint64_t epoch = (uint64_t)b->u.c.items[4]->u.i;
    const char *addr = b->u.c.items[2]->u.s.data;
    const char *dev = b->u.c.items[3]->u.s.data;
    drpc_worker_info cur;
    uint64_t last = id != self->id ? drpc_agent_member_last_epoch(a, id) : 0;
    /* The list this worker joined with held every member that joined
     * before it: an unknown one that joined earlier is gone since. */
    uint64_t mine = atomic_load(&members_of(a)->join_epoch);
    if (last < mine && id != self->id)
      last = mine;
    if (last > epoch && drpc_agent_resolve_id(a, id, &cur, NULL)) {
      /* It was taken out after that join, yet it speaks: tell it, so that
       * it joins again (see heartbeat_answer). */
      char why[DRPC_MAX_NAME_LEN + 96];
      snprintf(why, sizeof why,
               "worker %s (id %d) was taken out of the group at epoch %llu",
               name, id, (unsigned long long)last);
      drpc_agent_reply_error(a, conn, msg->id, DRPC_ESTATE, why);
      return;
    }
    if (id != self->id && drpc_agent_member_epoch_advance(a, id, epoch) &&
        !drpc_agent_peer_same(a, &wi, addr)) {
      size_t alen = strlen(addr), dlen = strlen(dev);
      char *full = malloc(alen + dlen + 2);
      if (full) {
        memcpy(full, addr, alen);
        full[alen] = '\n';
        memcpy(full + alen + 1, dev, dlen + 1);
      }
      int rc =
          full ? drpc_agent_peer_put(a, &wi, dlen ? full : addr, epoch, &err)
               : drpc_error_set(&err, DRPC_ENOMEM, "out of memory");
      free(full);
      if (rc == 0)
        rc = drpc_dev_peer_join(a, id, name, dlen ? dev : NULL, &err);
      if (rc) {
        drpc_agent_reply_error(a, conn, msg->id, err.code,
                               drpc_error_message(&err));
        drpc_error_clear(&err);
        return;
      }
      drpc_agent_logf(a, DRPC_LOG_INFO,
                      "worker %s (id %d) joined the group (epoch %llu)", name,
                      id, (unsigned long long)epoch);
    }
  } else {
    uint64_t epoch = (uint64_t)b->u.c.items[2]->u.i;
    const char *why = b->u.c.items[3]->u.s.data;
    if (id == self->id) {
      /* Taken for dead while alive (a partition, a stall): join again,
       * so membership converges once the network heals. */
      drpc_agent_logf(a, DRPC_LOG_WARN,
                      "this worker was taken out of the group (%s); joining "
                      "again",
                      why);
      rejoin_later(a);
    } else if (!drpc_test_fault_skip_leave &&
               drpc_agent_member_epoch_advance(a, id, epoch)) {
      drpc_agent_peer_del(a, id, epoch, why);
    }
  }
  drpc_agent_reply(a, conn, DRPC_MSG_RESPONSE, msg->id, NULL);
}

/* ---- replay ----------------------------------------------------------------
 */

uint64_t drpc_members_join_epoch(drpc_agent *a) {
  drpc_members *m = members_of(a);
  return m ? atomic_load(&m->join_epoch) : 0;
}

int drpc_members_replay_command(drpc_agent *a, uint64_t type, drpc_rreader *rd,
                                drpc_error *err) {
  drpc_members *m = members_of(a);
  if (!m)
    return drpc_error_set(err, DRPC_EPROTO,
                          "a membership command for a static group's worker");
  drpc_agent_input_begin(a);
  if (type == DRPC_CMD_HEARTBEAT) {
    drpc_agent_record(a, DRPC_EV_IN_COMMAND, -1, 0, type, NULL, 0, NULL);
    heartbeat_start(m);
    return 0;
  }
  if (type == DRPC_CMD_LEAVING) {
    drpc_agent_record(a, DRPC_EV_IN_COMMAND, -1, 0, type, NULL, 0, NULL);
    set_stopping(m);
    return 0;
  }
  /* DRPC_CMD_VIEW */
  view_cmd *c = calloc(1, sizeof *c);
  if (!c)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  c->cmd.apply = view_apply;
  c->agent = a;
  c->epoch = drpc_rr_u64(rd);
  c->rejoined = drpc_rr_u64(rd) != 0;
  uint64_t n = drpc_rr_u64(rd);
  c->v = n <= DRPC_MAX_WORKERS ? calloc(n ? n : 1, sizeof *c->v) : NULL;
  for (uint64_t i = 0; c->v && i < n && !rd->bad; i++) {
    view_entry *e = &c->v[c->n];
    uint64_t id = drpc_rr_u64(rd);
    size_t nl = 0, al = 0;
    const uint8_t *name = drpc_rr_blob(rd, &nl);
    const uint8_t *addr = drpc_rr_blob(rd, &al);
    char nbuf[DRPC_MAX_NAME_LEN + 1];
    if (rd->bad || !name || nl > DRPC_MAX_NAME_LEN)
      break;
    memcpy(nbuf, name, nl);
    nbuf[nl] = 0;
    if (drpc_worker_info_init(&e->wi, nbuf, (int64_t)id, NULL))
      break;
    if (al && !(e->addr = strndup((const char *)addr, al)))
      break;
    c->n++;
  }
  if (!c->v || rd->bad || c->n != n) {
    view_free(c);
    return drpc_error_set(err, DRPC_EPROTO, "malformed view command");
  }
  view_apply(&c->cmd);
  return 0;
}

/* Membership's executor jobs touch the store and post what they decide
 * as recorded commands: a replay drops them. */
bool drpc_members_job_discard(drpc_job *job) {
  if (job->run == check_run || job->run == rejoin_run || job->run == sync_run) {
    drpc_agent *a = job->run == check_run ? ((check_job *)job)->agent
                                          : ((rejoin_job *)job)->agent;
    drpc_members *m = members_of(a);
    if (job->run == check_run) {
      suspects_lock(m, true);
      drpc_map_remove(&m->suspects, suspect_key(((check_job *)job)->who.id));
      suspects_lock(m, false);
    }
    if (job->run == sync_run)
      atomic_store(&m->sync_running, false);
    atomic_fetch_sub(&m->checks_running, 1);
    free(job);
    return true;
  }
  return false;
}
