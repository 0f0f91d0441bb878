/* Unit tests for the cheap recording paths of core/agent.c: a received
 * frame recorded from the backend's raw bytes (drpc_agent_on_message_raw)
 * must be byte for byte what re-encoding the message records (the old
 * path, drpc_agent_on_message), with non-canonical bytes (non-zero
 * padding) and frames with tensor data falling back to the re-encoding;
 * frames with tensor data recorded on send (OUT_SEND, and inside an
 * IN_JOB_DONE payload) must equal the flattened frame that went out. */
#include "drpc/drpc.h"

#include "test.h"
#include "testenv.h"

#define MAXREC 64

/* What the record sink saw: the last events of one agent, copied. */
typedef struct rec_ev {
  drpc_event_kind kind;
  uint64_t aux;
  uint8_t *bytes;
  size_t len;
} rec_ev;

static rec_ev REC[MAXREC];
static int NREC;
static drpc_env_ops OPS;
static const drpc_env_ops *BASE_OPS;

static void rec_clear(void) {
  for (int i = 0; i < NREC; i++)
    free(REC[i].bytes);
  NREC = 0;
}

static void sink(void *ctx, const drpc_event *ev) {
  (void)ctx;
  if (NREC == MAXREC)
    rec_clear();
  rec_ev *e = &REC[NREC++];
  e->kind = ev->kind;
  e->aux = ev->aux;
  e->len = ev->bytes ? ev->len : 0;
  e->bytes = e->len ? malloc(e->len) : NULL;
  if (e->len)
    memcpy(e->bytes, ev->bytes, e->len);
}

static bool keeps_payloads(void *ctx) {
  (void)ctx;
  return true;
}

/* The last recorded event of a kind, or NULL. */
static rec_ev *last(drpc_event_kind kind) {
  for (int i = NREC - 1; i >= 0; i--)
    if (REC[i].kind == kind)
      return &REC[i];
  return NULL;
}

static tnet N;
static drpc_store *S;
static drpc_registry *R;
static const char *const NAMES[] = {"w0", "w1"};

/* Node 0 runs a recording agent (w0 of a world of 2 whose w1 never
 * starts); node 1 dials it raw. */
static drpc_agent *up(uint64_t *conn) {
  tnet_init(&N);
  tnet_node(&N);
  tnet_node(&N);
  S = tnet_store(&N, 2, NAMES);
  BASE_OPS = N.nodes[0].env.ops;
  OPS = *BASE_OPS;
  OPS.record = sink;
  OPS.recording = keeps_payloads;
  N.nodes[0].env.ops = &OPS;
  drpc_options o;
  drpc_options_default(&o);
  o.registry = R;
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_agent_start(&N.nodes[0].agent, S, "w0", 0, 2, &o,
                            &N.nodes[0].env, &err);
  CHECK_EQ_INT(rc, 0);
  drpc_error_clear(&err);
  CHECK(tnet_raw_connect(&N, 1, 0, conn) >= 0);
  tnet_run(&N, 1000);
  return N.nodes[0].agent;
}

static void down(void) {
  N.auto_run_jobs = true;
  tnet_run(&N, 100000);
  drpc_agent_shutdown(N.nodes[0].agent, false, 0, NULL);
  tnet_run(&N, 100000);
  drpc_agent *a = N.nodes[0].agent;
  N.nodes[0].agent = NULL;
  drpc_agent_free(a);
  N.nodes[0].env.ops = BASE_OPS;
  drpc_store_decref(S);
  tnet_free(&N);
  rec_clear();
}

static uint8_t *encode(uint8_t type, uint64_t id, drpc_value *body,
                       size_t *len) {
  drpc_outframe *f = NULL;
  drpc_wire_limits lim;
  drpc_wire_limits_default(&lim);
  CHECK_EQ_INT(drpc_wire_encode(type, 0, id, body, &lim, &f, NULL), 0);
  drpc_value_free(body);
  uint8_t *b = f ? drpc_outframe_flatten(f, len) : NULL;
  drpc_outframe_free(f);
  return b;
}

/* Feeds buf to the agent twice, through the raw entry point and through
 * the re-encoding one, and returns the two IN_FRAME payloads recorded
 * (the caller frees them). */
static void feed_both(drpc_agent *a, uint64_t conn, const uint8_t *buf,
                      size_t len, bool give_raw, uint8_t **raw_rec,
                      size_t *raw_n, uint8_t **enc_rec, size_t *enc_n) {
  drpc_wire_limits lim;
  drpc_wire_limits_default(&lim);
  for (int pass = 0; pass < 2; pass++) {
    drpc_msg m = {0};
    CHECK_EQ_INT(drpc_wire_decode(buf, len, &lim, &m, NULL), 0);
    rec_clear();
    if (pass == 0)
      drpc_agent_on_message_raw(a, conn, &m, give_raw ? buf : NULL, len);
    else
      drpc_agent_on_message(a, conn, &m);
    rec_ev *e = last(DRPC_EV_IN_FRAME);
    CHECK(e != NULL);
    uint8_t **out = pass == 0 ? raw_rec : enc_rec;
    size_t *n = pass == 0 ? raw_n : enc_n;
    *out = NULL;
    *n = 0;
    if (e) {
      *out = e->bytes;
      *n = e->len;
      e->bytes = NULL;
    }
    tnet_run(&N, 1000);
  }
}

static drpc_value *call_body(const char *fn, drpc_value *args) {
  return drpc_value_list_of(4, drpc_value_int(DRPC_FUNCTION),
                            drpc_value_str(fn), args, drpc_value_dict());
}

/* Canonical frames without tensors: the raw bytes are recorded, and they
 * equal the re-encoding. */
static void test_raw_equals_reencoded(void) {
  uint64_t conn = 0;
  drpc_agent *a = up(&conn);
  struct {
    uint8_t type;
    uint64_t id;
    drpc_value *body;
  } frames[] = {
      {DRPC_MSG_HELLO, 0,
       drpc_value_list_of(3, drpc_value_int(DRPC_WIRE_VERSION),
                          drpc_value_int(1), drpc_value_str("w1"))},
      {DRPC_MSG_CALL, 7,
       call_body("no_such_fn", drpc_value_list_of(
                                   4, drpc_value_int(-5), drpc_value_float(2.5),
                                   drpc_value_str("a string"),
                                   drpc_value_bytes("\0\1\2", 3)))},
      {DRPC_MSG_CALL, 8, call_body("f", drpc_value_list())},
      {DRPC_MSG_RESPONSE, 99, drpc_value_int(1)},
  };
  for (size_t i = 0; i < sizeof frames / sizeof frames[0]; i++) {
    size_t len = 0;
    uint8_t *buf = encode(frames[i].type, frames[i].id, frames[i].body, &len);
    CHECK(buf != NULL);
    if (!buf)
      continue;
    uint8_t *r = NULL, *e = NULL;
    size_t rn = 0, en = 0;
    feed_both(a, conn, buf, len, true, &r, &rn, &e, &en);
    CHECK_EQ_INT(rn, len);
    CHECK_EQ_INT(en, len);
    CHECK(r && e && rn == en && memcmp(r, e, rn) == 0);
    CHECK(r && rn == len && memcmp(r, buf, len) == 0);
    free(r);
    free(e);
    free(buf);
  }
  down();
}

/* Non-zero padding is not read by the decoder; the re-encoding has zeros
 * there, and so must the raw path's record (it falls back). */
static void test_nonzero_padding_falls_back(void) {
  uint64_t conn = 0;
  drpc_agent *a = up(&conn);
  size_t len = 0;
  uint8_t *buf = encode(DRPC_MSG_RESPONSE, 5, drpc_value_int(3), &len);
  CHECK(buf && len == 64);
  uint32_t payload_len = (uint32_t)buf[16] | (uint32_t)buf[17] << 8 |
                         (uint32_t)buf[18] << 16 | (uint32_t)buf[19] << 24;
  CHECK(32 + payload_len < len);
  uint8_t *dirty = malloc(len);
  memcpy(dirty, buf, len);
  dirty[len - 1] = 0xab; /* padding */
  uint8_t *r = NULL, *e = NULL;
  size_t rn = 0, en = 0;
  feed_both(a, conn, dirty, len, true, &r, &rn, &e, &en);
  CHECK(r && rn == len && memcmp(r, buf, len) == 0);
  CHECK(e && en == len && memcmp(e, buf, len) == 0);
  free(r);
  free(e);
  free(dirty);
  free(buf);
  down();
}

/* A frame with tensor data, given without raw bytes (the backend read the
 * data straight into storage) or with them: recorded as the canonical
 * encoding either way. */
static void test_tensor_frame_reencoded(void) {
  uint64_t conn = 0;
  drpc_agent *a = up(&conn);
  int64_t shape[1] = {37};
  float data[37];
  for (int i = 0; i < 37; i++)
    data[i] = (float)i * 0.5f;
  drpc_tensor *t = drpc_tensor_from_data(DRPC_FLOAT32, 1, shape, data, true);
  size_t len = 0;
  uint8_t *buf = encode(
      DRPC_MSG_RESPONSE, 11,
      drpc_value_list_of(2, drpc_value_tensor(t), drpc_value_int(4)), &len);
  drpc_tensor_decref(t);
  CHECK(buf && len == 64 + 37 * 4);
  for (int give_raw = 0; give_raw < 2; give_raw++) {
    uint8_t *r = NULL, *e = NULL;
    size_t rn = 0, en = 0;
    feed_both(a, conn, buf, len, give_raw, &r, &rn, &e, &en);
    CHECK(r && rn == len && memcmp(r, buf, len) == 0);
    CHECK(e && en == len && memcmp(e, buf, len) == 0);
    free(r);
    free(e);
  }
  free(buf);
  down();
}

/* What the agent recorded as sent equals the bytes that went out, for a
 * reply with tensor data (OUT_SEND copies the frame piece by piece) and
 * inside the job's recorded result (IN_JOB_DONE). */
static const uint8_t *SENT;
static size_t SENT_LEN;
static void on_send(void *user, int from, int to, const uint8_t *buf,
                    size_t len) {
  (void)user;
  (void)to;
  if (from != 0)
    return;
  free((void *)SENT);
  uint8_t *c = malloc(len);
  memcpy(c, buf, len);
  SENT = c;
  SENT_LEN = len;
}

static void test_sent_tensor_frame(void) {
  uint64_t conn = 0;
  drpc_agent *a = up(&conn);
  N.on_send = on_send;
  N.auto_run_jobs = true;
  size_t hl = 0;
  uint8_t *h =
      encode(DRPC_MSG_HELLO, 0,
             drpc_value_list_of(3, drpc_value_int(DRPC_WIRE_VERSION),
                                drpc_value_int(1), drpc_value_str("w1")),
             &hl);
  drpc_agent_on_frame(a, conn, h, hl);
  free(h);
  tnet_run(&N, 1000);
  /* aten::add of two tensors answers with a tensor. */
  int64_t shape[1] = {100};
  float x[100];
  for (int i = 0; i < 100; i++)
    x[i] = (float)i;
  drpc_tensor *ta = drpc_tensor_from_data(DRPC_FLOAT32, 1, shape, x, true);
  drpc_tensor *tb = drpc_tensor_from_data(DRPC_FLOAT32, 1, shape, x, true);
  size_t cl = 0;
  uint8_t *c = encode(
      DRPC_MSG_CALL, 3,
      drpc_value_list_of(
          4, drpc_value_int(DRPC_BUILTIN), drpc_value_str("aten::add"),
          drpc_value_list_of(2, drpc_value_tensor(ta), drpc_value_tensor(tb)),
          drpc_value_dict()),
      &cl);
  drpc_tensor_decref(ta);
  drpc_tensor_decref(tb);
  rec_clear();
  drpc_agent_on_frame(a, conn, c, cl);
  free(c);
  tnet_run(&N, 1000);
  rec_ev *s = last(DRPC_EV_OUT_SEND);
  CHECK(s != NULL);
  CHECK(SENT != NULL && SENT_LEN >= 64 + 400);
  CHECK(s && SENT && s->len == SENT_LEN &&
        memcmp(s->bytes, SENT, SENT_LEN) == 0);
  if (SENT && SENT_LEN > 5)
    CHECK_EQ_INT(SENT[5], DRPC_MSG_RESPONSE);
  /* The job's result record: [conn, req id, async, frame blob, forks]; the
   * blob is the response before it went out, the same bytes. */
  rec_ev *j = last(DRPC_EV_IN_JOB_DONE);
  CHECK(j != NULL);
  if (j && SENT && j->len >= 32 + SENT_LEN) {
    uint64_t bl = 0;
    for (int i = 0; i < 8; i++)
      bl |= (uint64_t)j->bytes[24 + i] << (8 * i);
    CHECK_EQ_INT(bl, SENT_LEN);
    CHECK(memcmp(j->bytes + 32, SENT, SENT_LEN) == 0);
  } else {
    CHECK(false);
  }
  free((void *)SENT);
  SENT = NULL;
  N.on_send = NULL;
  down();
}

int main(void) {
  R = drpc_registry_new();
  RUN(test_raw_equals_reencoded);
  RUN(test_nonzero_padding_falls_back);
  RUN(test_tensor_frame_reencoded);
  RUN(test_sent_tensor_frame);
  drpc_registry_free(R);
  return test_finish();
}
