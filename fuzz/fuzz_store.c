/* fuzz_store: the TCP store's protocol (core/store_proto.c) and the tables
 * behind the stores (core/store.c).
 *
 * The first byte picks the mode:
 *   0  server: the rest is a client's byte stream (u32 length, body)*. Each
 *      frame goes through the request decoder, must re-encode to its own
 *      bytes, and is applied both to a table the way net/store_tcp.c's
 *      server applies it and to an in-memory store (on the test env, so
 *      waits time out on its manual clock); the two must agree. Each
 *      response must then pass the client's response decoder.
 *   1  client: a u8 expected op, then one response body for the response
 *      decoder; what decodes must re-encode to the same bytes.
 *   2  file: the rest is a file store image; what loads must save and load
 *      again to the same image. */
#include "consumer.h"
#include "fuzz.h"
#include "testenv.h"

#include "drpc/store.h"
#include "store_proto.h"

#include <string.h>

/* Frames handled per input: enough for interesting sequences. */
#define MAX_FRAMES 64

static bool bytes_eq(const void *a, size_t alen, const void *b, size_t blen) {
  return alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}

static char *cstr(drpc_store_bytes b) {
  char *s = malloc(b.len + 1);
  FUZZ_CHECK(s != NULL, "out of memory");
  if (b.len)
    memcpy(s, b.p, b.len);
  s[b.len] = '\0';
  return s;
}

/* Encodes a decoded request again. */
static void encode_req(const drpc_store_req *q, drpc_store_buf *b) {
  drpc_store_buf_reset(b);
  drpc_store_proto_begin_req(b, q->op);
  switch (q->op) {
  case DRPC_STORE_OP_SET:
    drpc_store_proto_put_bytes(b, q->key.p, q->key.len);
    drpc_store_proto_put_bytes(b, q->val.p, q->val.len);
    break;
  case DRPC_STORE_OP_GET:
  case DRPC_STORE_OP_ADD:
    drpc_store_proto_put_bytes(b, q->key.p, q->key.len);
    drpc_store_proto_put_i64(b, q->num);
    break;
  case DRPC_STORE_OP_WAIT: {
    drpc_store_proto_put_i64(b, q->num);
    drpc_store_proto_put_u32(b, (uint32_t)q->nkeys);
    size_t pos = 0;
    for (size_t i = 0; i < q->nkeys; i++) {
      drpc_store_bytes k;
      drpc_store_proto_next_key(&q->keys, &pos, &k);
      drpc_store_proto_put_bytes(b, k.p, k.len);
    }
    FUZZ_CHECK(pos == q->keys.len, "WAIT keys span %zu of %zu bytes", pos,
               q->keys.len);
    break;
  }
  case DRPC_STORE_OP_COMPARE_SET:
    drpc_store_proto_put_bytes(b, q->key.p, q->key.len);
    drpc_store_proto_put_bytes(b, q->val.p, q->val.len);
    drpc_store_proto_put_bytes(b, q->val2.p, q->val2.len);
    break;
  case DRPC_STORE_OP_DELETE:
  case DRPC_STORE_OP_LIST:
    drpc_store_proto_put_bytes(b, q->key.p, q->key.len);
    break;
  case DRPC_STORE_OP_NUM_KEYS:
    break;
  case DRPC_STORE_OP_PING:
    drpc_store_proto_put_u32(b, q->version);
    break;
  }
  FUZZ_CHECK(drpc_store_proto_end(b, NULL) == 0, "re-encoding a request");
}

/* Encodes a decoded response again. */
static void encode_resp(const drpc_store_resp *r, drpc_store_buf *b) {
  drpc_store_buf_reset(b);
  drpc_store_proto_begin_resp(b, r->op, r->code);
  if (r->code) {
    drpc_store_proto_put_bytes(b, r->msg.p, r->msg.len);
  } else {
    switch (r->op) {
    case DRPC_STORE_OP_SET:
    case DRPC_STORE_OP_WAIT:
      break;
    case DRPC_STORE_OP_GET:
    case DRPC_STORE_OP_COMPARE_SET:
      drpc_store_proto_put_bytes(b, r->val.p, r->val.len);
      break;
    case DRPC_STORE_OP_ADD:
    case DRPC_STORE_OP_NUM_KEYS:
      drpc_store_proto_put_i64(b, r->num);
      break;
    case DRPC_STORE_OP_DELETE:
      drpc_store_proto_put_u8(b, r->flag);
      break;
    case DRPC_STORE_OP_LIST: {
      drpc_store_proto_put_u32(b, (uint32_t)r->nkeys);
      size_t pos = 0;
      for (size_t i = 0; i < r->nkeys; i++) {
        drpc_store_bytes k;
        drpc_store_proto_next_key(&r->keys, &pos, &k);
        drpc_store_proto_put_bytes(b, k.p, k.len);
      }
      FUZZ_CHECK(pos == r->keys.len, "LIST keys span");
      break;
    }
    case DRPC_STORE_OP_PING:
      drpc_store_proto_put_u32(b, r->version);
      break;
    }
  }
  FUZZ_CHECK(drpc_store_proto_end(b, NULL) == 0, "re-encoding a response");
}

/* ---- server mode -----------------------------------------------------------
 */

typedef struct server {
  drpc_store_table *t;
  drpc_store *mem; /* the in-memory store, fed the same operations */
  drpc_store_buf out;
} server;

/* The memory store's timeout for a request's timeout_ms: never forever (the
 * test env would abort a wait that cannot end) and never long. */
static double mem_timeout_s(int64_t ms) {
  if (ms <= 0 || ms > 5000)
    return 0.001;
  return (double)ms / 1000.0;
}

static void respond_error(server *s, drpc_store_op op, const drpc_error *err) {
  FUZZ_CHECK(err->code < 0, "error response without a code");
  drpc_store_buf_reset(&s->out);
  drpc_store_proto_error_resp(&s->out, op, err->code, drpc_error_message(err));
}

/* GET and WAIT: the server parks until its keys exist; nothing else runs
 * here meanwhile, so a parked request times out as the server would
 * answer it then. */
static void get_or_wait(server *s, const drpc_store_req *q) {
  drpc_store_bytes k = q->key;
  size_t pos = 0, n = q->op == DRPC_STORE_OP_GET ? 1 : q->nkeys;
  const char *named[DRPC_STORE_TIMEOUT_NAMED_KEYS];
  size_t lens[DRPC_STORE_TIMEOUT_NAMED_KEYS], named_n = 0, missing = 0;
  char **keys = calloc(n + 1, sizeof(*keys));
  FUZZ_CHECK(keys != NULL, "out of memory");
  for (size_t i = 0; i < n; i++) {
    if (q->op == DRPC_STORE_OP_WAIT)
      drpc_store_proto_next_key(&q->keys, &pos, &k);
    keys[i] = cstr(k);
    if (drpc_store_table_find(s->t, (const char *)k.p, k.len, NULL, NULL))
      continue;
    if (missing < DRPC_STORE_TIMEOUT_NAMED_KEYS) {
      named[missing] = (const char *)k.p;
      lens[missing] = k.len;
      named_n = missing + 1;
    }
    missing++;
  }
  double timeout_s = mem_timeout_s(q->num);
  drpc_error err = DRPC_ERROR_INIT;
  if (q->op == DRPC_STORE_OP_GET) {
    void *val = NULL;
    size_t vlen = 0;
    int rc = drpc_store_get(s->mem, keys[0], timeout_s, &val, &vlen, &err);
    const uint8_t *tv = NULL;
    size_t tlen = 0;
    bool found =
        drpc_store_table_find(s->t, (const char *)k.p, k.len, &tv, &tlen);
    FUZZ_CHECK(found == (rc == 0), "GET: table %d, memory store %d", found, rc);
    FUZZ_CHECK(rc == 0 || rc == DRPC_ETIMEOUT, "GET: %d", rc);
    if (found)
      FUZZ_CHECK(bytes_eq(val, vlen, tv, tlen), "GET values differ");
    free(val);
  } else {
    int rc =
        drpc_store_wait(s->mem, (const char *const *)keys, n, timeout_s, &err);
    FUZZ_CHECK((missing == 0) == (rc == 0), "WAIT: %zu missing, store %d",
               missing, rc);
  }
  drpc_error_clear(&err);
  for (size_t i = 0; i < n; i++)
    free(keys[i]);
  free(keys);

  drpc_store_buf_reset(&s->out);
  if (missing) {
    drpc_store_timeout_error(&err, (double)q->num / 1000.0, named, lens,
                             named_n, missing);
    respond_error(s, q->op, &err);
    drpc_error_clear(&err);
    return;
  }
  drpc_store_proto_begin_resp(&s->out, q->op, 0);
  if (q->op == DRPC_STORE_OP_GET) {
    const uint8_t *v;
    size_t vlen;
    drpc_store_table_find(s->t, (const char *)q->key.p, q->key.len, &v, &vlen);
    drpc_store_proto_put_bytes(&s->out, v, vlen);
  }
}

/* Applies one request as net/store_tcp.c's handle() does and checks the
 * memory store agrees. Leaves the response in s->out. */
static void handle(server *s, const drpc_store_req *q) {
  drpc_error err = DRPC_ERROR_INIT, merr = DRPC_ERROR_INIT;
  drpc_store_buf *o = &s->out;
  const char *key = (const char *)q->key.p;
  char *ckey = cstr(q->key);
  int rc = 0, mrc;
  drpc_store_buf_reset(o);
  switch (q->op) {
  case DRPC_STORE_OP_SET:
    rc =
        drpc_store_table_set(s->t, key, q->key.len, q->val.p, q->val.len, &err);
    mrc = drpc_store_set(s->mem, ckey, q->val.p, q->val.len, &merr);
    FUZZ_CHECK(rc == mrc, "SET: table %d, memory store %d", rc, mrc);
    if (rc == 0)
      drpc_store_proto_begin_resp(o, q->op, 0);
    break;
  case DRPC_STORE_OP_GET:
  case DRPC_STORE_OP_WAIT:
    get_or_wait(s, q);
    break;
  case DRPC_STORE_OP_ADD: {
    int64_t sum = 0, msum = 0;
    rc = drpc_store_table_add(s->t, key, q->key.len, q->num, &sum, &err);
    mrc = drpc_store_add(s->mem, ckey, q->num, &msum, &merr);
    FUZZ_CHECK(rc == mrc && sum == msum, "ADD: table %d, memory store %d", rc,
               mrc);
    if (rc == 0) {
      drpc_store_proto_begin_resp(o, q->op, 0);
      drpc_store_proto_put_i64(o, sum);
    }
    break;
  }
  case DRPC_STORE_OP_COMPARE_SET: {
    const uint8_t *a;
    size_t alen;
    bool changed = false;
    void *ma = NULL;
    size_t malen = 0;
    mrc = drpc_store_compare_set(s->mem, ckey, q->val.p, q->val.len, q->val2.p,
                                 q->val2.len, &ma, &malen, &merr);
    rc = drpc_store_table_compare_set(s->t, key, q->key.len, q->val.p,
                                      q->val.len, q->val2.p, q->val2.len, &a,
                                      &alen, &changed, &err);
    FUZZ_CHECK(rc == mrc, "COMPARE_SET: table %d, memory store %d", rc, mrc);
    if (rc == 0) {
      FUZZ_CHECK(bytes_eq(a, alen, ma, malen), "COMPARE_SET results differ");
      if (changed)
        FUZZ_CHECK(bytes_eq(a, alen, q->val2.p, q->val2.len),
                   "COMPARE_SET changed the value to something else");
      drpc_store_proto_begin_resp(o, q->op, 0);
      drpc_store_proto_put_bytes(o, a, alen);
    }
    free(ma);
    break;
  }
  case DRPC_STORE_OP_DELETE: {
    bool existed = drpc_store_table_delete(s->t, key, q->key.len), mdel = false;
    mrc = drpc_store_delete(s->mem, ckey, &mdel, &merr);
    FUZZ_CHECK(mrc == 0 && mdel == existed, "DELETE: %d %d %d", mrc, mdel,
               existed);
    drpc_store_proto_begin_resp(o, q->op, 0);
    drpc_store_proto_put_u8(o, existed);
    break;
  }
  case DRPC_STORE_OP_NUM_KEYS: {
    int64_t mn = -1;
    size_t n = drpc_store_table_count(s->t);
    mrc = drpc_store_num_keys(s->mem, &mn, &merr);
    FUZZ_CHECK(mrc == 0 && mn == (int64_t)n, "NUM_KEYS: %zu, store %lld", n,
               (long long)mn);
    drpc_store_proto_begin_resp(o, q->op, 0);
    drpc_store_proto_put_i64(o, (int64_t)n);
    break;
  }
  case DRPC_STORE_OP_LIST: {
    char **keys = NULL, **mkeys = NULL;
    size_t n = 0, mn = 0;
    rc = drpc_store_table_list(s->t, key, q->key.len, &keys, &n, &err);
    mrc = drpc_store_list(s->mem, ckey, &mkeys, &mn, &merr);
    FUZZ_CHECK(rc == mrc && n == mn, "LIST: table %d (%zu), store %d (%zu)", rc,
               n, mrc, mn);
    for (size_t i = 0; i < n; i++) {
      FUZZ_CHECK(strcmp(keys[i], mkeys[i]) == 0, "LIST key %zu differs", i);
      FUZZ_CHECK(i == 0 || strcmp(keys[i - 1], keys[i]) < 0,
                 "LIST is not sorted");
      FUZZ_CHECK(strncmp(keys[i], key, q->key.len) == 0,
                 "LIST key without the prefix");
    }
    if (rc == 0) {
      drpc_store_proto_begin_resp(o, q->op, 0);
      drpc_store_proto_put_u32(o, (uint32_t)n);
      for (size_t i = 0; i < n; i++)
        drpc_store_proto_put_bytes(o, keys[i], strlen(keys[i]));
    }
    drpc_store_keys_free(keys, n);
    drpc_store_keys_free(mkeys, mn);
    break;
  }
  case DRPC_STORE_OP_PING:
    if (q->version != DRPC_STORE_PROTO_VERSION) {
      rc = drpc_error_set(&err, DRPC_EVERSION,
                          "store client speaks protocol version %u, this "
                          "server %d",
                          q->version, DRPC_STORE_PROTO_VERSION);
      break;
    }
    drpc_store_proto_begin_resp(o, q->op, 0);
    drpc_store_proto_put_u32(o, DRPC_STORE_PROTO_VERSION);
    break;
  }
  if (rc)
    respond_error(s, q->op, &err);
  drpc_error_clear(&err);
  drpc_error_clear(&merr);
  free(ckey);
}

/* The response in s->out as the client reads it. */
static void check_response(server *s, drpc_store_op op) {
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_store_proto_end(&s->out, &err);
  if (rc) {
    /* Too big for one frame: the server answers with the error. */
    drpc_store_buf_reset(&s->out);
    drpc_store_proto_error_resp(&s->out, op, err.code,
                                drpc_error_message(&err));
    FUZZ_CHECK(drpc_store_proto_end(&s->out, NULL) == 0, "error response");
  }
  drpc_error_clear(&err);
  size_t body = 0;
  rc = drpc_store_proto_frame_len(s->out.data, s->out.len, &body, &err);
  FUZZ_CHECK(rc == 0 && body + 4 == s->out.len, "response frame length");
  drpc_store_resp r;
  rc = drpc_store_proto_decode_resp(s->out.data + 4, body, op, &r, &err);
  FUZZ_CHECK(rc == 0, "the client rejects the server's %s response: %s",
             drpc_store_proto_op_name(op), drpc_error_message(&err));
  drpc_store_buf again;
  drpc_store_buf_init(&again);
  encode_resp(&r, &again);
  FUZZ_CHECK(bytes_eq(again.data, again.len, s->out.data, s->out.len),
             "a response re-encodes to other bytes");
  drpc_store_buf_free(&again);
}

static tnet N;

static void server_mode(fz *in) {
  tnet_init(&N);
  tnode *node = tnet_node(&N);
  server s;
  s.t = drpc_store_table_new();
  s.mem = drpc_store_memory_new(&node->env);
  FUZZ_CHECK(s.t && s.mem, "out of memory");
  drpc_store_buf_init(&s.out);
  drpc_store_buf again;
  drpc_store_buf_init(&again);

  size_t avail;
  const uint8_t *p = fz_rest(in, &avail);
  for (int i = 0; i < MAX_FRAMES; i++) {
    drpc_error err = DRPC_ERROR_INIT;
    size_t body = 0;
    int rc = drpc_store_proto_frame_len(p, avail, &body, &err);
    drpc_error_clear(&err);
    if (rc || body == 0 || avail < 4 + body)
      break; /* the server would close the connection or wait */
    drpc_store_req q;
    rc = drpc_store_proto_decode_req(p + 4, body, &q, &err);
    if (rc) {
      FUZZ_CHECK(rc < 0 && err.msg != NULL, "a rejected request needs a "
                                            "message");
      drpc_error_clear(&err);
      break;
    }
    encode_req(&q, &again);
    FUZZ_CHECK(bytes_eq(again.data, again.len, p, 4 + body),
               "a request re-encodes to other bytes");
    handle(&s, &q);
    check_response(&s, q.op);
    FUZZ_CHECK(drpc_store_table_count(s.t) <= DRPC_STORE_MAX_KEYS, "count");
    p += 4 + body;
    avail -= 4 + body;
  }
  drpc_store_buf_free(&again);
  drpc_store_buf_free(&s.out);
  drpc_store_decref(s.mem);
  drpc_store_table_free(s.t);
  tnet_free(&N);
}

/* ---- client and file modes -------------------------------------------------
 */

static void client_mode(fz *in) {
  drpc_store_op expect = (drpc_store_op)fz_u8(in);
  size_t n;
  const uint8_t *p = fz_rest(in, &n);
  drpc_store_resp r;
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_store_proto_decode_resp(p, n, expect, &r, &err);
  if (rc) {
    FUZZ_CHECK(rc < 0 && err.msg != NULL, "a rejected response needs a "
                                          "message");
    drpc_error_clear(&err);
    return;
  }
  FUZZ_CHECK(r.code <= 0, "positive status");
  drpc_store_buf b;
  drpc_store_buf_init(&b);
  encode_resp(&r, &b);
  FUZZ_CHECK(bytes_eq(b.data + 4, b.len - 4, p, n),
             "a response re-encodes to other bytes");
  drpc_store_buf_free(&b);
}

static void file_mode(fz *in) {
  size_t n;
  const uint8_t *p = fz_rest(in, &n);
  drpc_store_table *t = drpc_store_table_new();
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_store_proto_decode_table(p, n, t, &err);
  if (rc) {
    FUZZ_CHECK(rc < 0 && err.msg != NULL, "a rejected image needs a message");
    drpc_error_clear(&err);
    drpc_store_table_free(t);
    return;
  }
  drpc_store_buf b1, b2;
  drpc_store_buf_init(&b1);
  drpc_store_buf_init(&b2);
  FUZZ_CHECK(drpc_store_proto_encode_table(t, &b1, NULL) == 0, "save");
  drpc_store_table *u = drpc_store_table_new();
  FUZZ_CHECK(drpc_store_proto_decode_table(b1.data, b1.len, u, NULL) == 0,
             "a saved image does not load");
  FUZZ_CHECK(drpc_store_table_count(u) == drpc_store_table_count(t), "count");
  FUZZ_CHECK(drpc_store_proto_encode_table(u, &b2, NULL) == 0, "save again");
  FUZZ_CHECK(bytes_eq(b1.data, b1.len, b2.data, b2.len),
             "saving a loaded image changes it");
  drpc_store_buf_free(&b1);
  drpc_store_buf_free(&b2);
  drpc_store_table_free(u);
  drpc_store_table_free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz in;
  fz_init(&in, data, size);
  switch (fz_u8(&in) % 3) {
  case 0:
    server_mode(&in);
    break;
  case 1:
    client_mode(&in);
    break;
  default:
    file_mode(&in);
    break;
  }
  return 0;
}
