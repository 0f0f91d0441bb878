/* The TCP store's wire codec and the file store's table image: pure
 * encode/decode with every length checked (layout in store_proto.h). */
#include "store_proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *drpc_store_proto_op_name(int op) {
  switch (op) {
  case DRPC_STORE_OP_SET:
    return "SET";
  case DRPC_STORE_OP_GET:
    return "GET";
  case DRPC_STORE_OP_ADD:
    return "ADD";
  case DRPC_STORE_OP_WAIT:
    return "WAIT";
  case DRPC_STORE_OP_COMPARE_SET:
    return "COMPARE_SET";
  case DRPC_STORE_OP_DELETE:
    return "DELETE";
  case DRPC_STORE_OP_NUM_KEYS:
    return "NUM_KEYS";
  case DRPC_STORE_OP_LIST:
    return "LIST";
  case DRPC_STORE_OP_PING:
    return "PING";
  default:
    return "unknown";
  }
}

/* ---- encoding ---------------------------------------------------------- */

void drpc_store_buf_init(drpc_store_buf *b) {
  memset(b, 0, sizeof(*b));
  b->limit = DRPC_STORE_PROTO_MAX_FRAME + 4;
}

void drpc_store_buf_free(drpc_store_buf *b) {
  free(b->data);
  drpc_store_buf_init(b);
}

void drpc_store_buf_reset(drpc_store_buf *b) {
  b->len = 0;
  b->frame_start = 0;
  b->failed = 0;
}

/* Makes room for n more bytes; remembers failure instead of returning it so
 * encoders can put field after field and check once at the end. Growth
 * stops at the buffer's limit. */
static bool reserve(drpc_store_buf *b, size_t n) {
  if (b->failed)
    return false;
  const size_t limit = b->limit;
  if (n > limit || b->len > limit - n) {
    b->failed = DRPC_ETOOBIG;
    return false;
  }
  if (b->len + n <= b->cap)
    return true;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + n)
    cap = cap > limit / 2 ? limit : cap * 2;
  uint8_t *p = realloc(b->data, cap);
  if (!p) {
    b->failed = DRPC_ENOMEM;
    return false;
  }
  b->data = p;
  b->cap = cap;
  return true;
}

static void put_le(drpc_store_buf *b, uint64_t v, size_t n) {
  if (!reserve(b, n))
    return;
  for (size_t i = 0; i < n; i++)
    b->data[b->len + i] = (uint8_t)(v >> (8 * i));
  b->len += n;
}

void drpc_store_proto_put_u8(drpc_store_buf *b, uint8_t v) {
  put_le(b, v, 1);
}

void drpc_store_proto_put_u32(drpc_store_buf *b, uint32_t v) {
  put_le(b, v, 4);
}

void drpc_store_proto_put_i32(drpc_store_buf *b, int32_t v) {
  put_le(b, (uint32_t)v, 4);
}

void drpc_store_proto_put_i64(drpc_store_buf *b, int64_t v) {
  put_le(b, (uint64_t)v, 8);
}

void drpc_store_proto_put_bytes(drpc_store_buf *b, const void *p, size_t len) {
  if (len > UINT32_MAX) {
    b->failed = DRPC_ETOOBIG;
    return;
  }
  put_le(b, len, 4);
  if (len && reserve(b, len)) {
    memcpy(b->data + b->len, p, len);
    b->len += len;
  }
}

static void begin(drpc_store_buf *b, drpc_store_op op) {
  b->frame_start = b->len;
  put_le(b, 0, 4); /* filled in by drpc_store_proto_end */
  put_le(b, (uint8_t)op, 1);
}

void drpc_store_proto_begin_req(drpc_store_buf *b, drpc_store_op op) {
  begin(b, op);
}

void drpc_store_proto_begin_resp(drpc_store_buf *b, drpc_store_op op,
                                 int code) {
  begin(b, op);
  drpc_store_proto_put_i32(b, code);
}

void drpc_store_proto_error_resp(drpc_store_buf *b, drpc_store_op op, int code,
                                 const char *msg) {
  if (!msg)
    msg = drpc_strerror(code);
  size_t len = strlen(msg);
  if (len > DRPC_STORE_PROTO_MAX_MESSAGE)
    len = DRPC_STORE_PROTO_MAX_MESSAGE;
  drpc_store_proto_begin_resp(b, op, code);
  drpc_store_proto_put_bytes(b, msg, len);
}

int drpc_store_proto_end(drpc_store_buf *b, drpc_error *err) {
  if (b->failed == DRPC_ENOMEM)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory encoding a frame");
  size_t body = b->len - b->frame_start - 4;
  if (b->failed || body > DRPC_STORE_PROTO_MAX_FRAME)
    return drpc_error_set(err, DRPC_ETOOBIG,
                          "store frame exceeds limit %zu bytes",
                          (size_t)DRPC_STORE_PROTO_MAX_FRAME);
  for (size_t i = 0; i < 4; i++)
    b->data[b->frame_start + i] = (uint8_t)(body >> (8 * i));
  return 0;
}

/* ---- decoding ---------------------------------------------------------- */

/* A cursor over untrusted input. Every read checks the remaining length and
 * reports the field it was reading and the offset it stood at. */
typedef struct reader {
  const uint8_t *p;
  size_t len, at;
  const char *what; /* "GET request", "store file" */
  drpc_error *err;
} reader;

static int need(reader *r, size_t n, const char *field) {
  if (r->len - r->at >= n)
    return 0;
  return drpc_error_set(r->err, DRPC_ETRUNC,
                        "%s truncated in %s: need %zu bytes at offset %zu, "
                        "have %zu",
                        r->what, field, n, r->at, r->len - r->at);
}

static uint64_t get_le(reader *r, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++)
    v |= (uint64_t)r->p[r->at + i] << (8 * i);
  r->at += n;
  return v;
}

static int read_u8(reader *r, const char *field, uint8_t *v) {
  int rc = need(r, 1, field);
  if (rc == 0)
    *v = (uint8_t)get_le(r, 1);
  return rc;
}

static int read_u32(reader *r, const char *field, uint32_t *v) {
  int rc = need(r, 4, field);
  if (rc == 0)
    *v = (uint32_t)get_le(r, 4);
  return rc;
}

static int read_i64(reader *r, const char *field, int64_t *v) {
  int rc = need(r, 8, field);
  if (rc == 0)
    *v = (int64_t)get_le(r, 8);
  return rc;
}

/* Reads bytes no longer than limit. */
static int read_bytes(reader *r, const char *field, size_t limit,
                      drpc_store_bytes *out) {
  uint32_t len;
  size_t at = r->at;
  int rc = read_u32(r, field, &len);
  if (rc)
    return rc;
  if (len > limit)
    return drpc_error_set(r->err, DRPC_ETOOBIG,
                          "%s %s length %u at offset %zu exceeds limit %zu",
                          r->what, field, len, at, limit);
  if ((rc = need(r, len, field)))
    return rc;
  out->p = r->p + r->at;
  out->len = len;
  r->at += len;
  return 0;
}

/* Reads a key: bytes that drpc_store_check_key accepts. */
static int read_key(reader *r, const char *field, drpc_store_bytes *out) {
  size_t at = r->at;
  int rc = read_bytes(r, field, DRPC_STORE_MAX_KEY, out);
  if (rc)
    return rc;
  if ((rc = drpc_store_check_key(field, (const char *)out->p, out->len,
                                 r->err))) {
    drpc_error_prefix(r->err, "%s at offset %zu", r->what, at);
    return rc;
  }
  return 0;
}

/* Reads a count and that many keys, remembering the range they span. */
static int read_key_list(reader *r, const char *field, size_t limit, size_t *n,
                         drpc_store_bytes *range) {
  uint32_t count;
  size_t at = r->at;
  int rc = read_u32(r, "key count", &count);
  if (rc)
    return rc;
  if (count > limit)
    return drpc_error_set(r->err, DRPC_ETOOBIG,
                          "%s key count %u at offset %zu exceeds limit %zu",
                          r->what, count, at, limit);
  range->p = r->p + r->at;
  for (uint32_t i = 0; i < count; i++) {
    drpc_store_bytes k = {0};
    if ((rc = read_key(r, field, &k)))
      return rc;
  }
  range->len = (size_t)(r->p + r->at - range->p);
  *n = count;
  return 0;
}

static int read_timeout(reader *r, int64_t *v) {
  size_t at = r->at;
  int rc = read_i64(r, "timeout_ms", v);
  if (rc == 0 && *v < 0)
    return drpc_error_set(r->err, DRPC_EPROTO,
                          "%s timeout_ms %lld at offset %zu is negative",
                          r->what, (long long)*v, at);
  return rc;
}

static int finish(reader *r) {
  if (r->at == r->len)
    return 0;
  return drpc_error_set(r->err, DRPC_EPROTO,
                        "%s has %zu trailing bytes at offset %zu", r->what,
                        r->len - r->at, r->at);
}

int drpc_store_proto_frame_len(const uint8_t *p, size_t avail, size_t *body_len,
                               drpc_error *err) {
  *body_len = 0;
  if (avail < 4)
    return 0;
  uint32_t len = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                 (uint32_t)p[3] << 24;
  if (len == 0)
    return drpc_error_set(err, DRPC_EPROTO, "store frame length is 0");
  if (len > DRPC_STORE_PROTO_MAX_FRAME)
    return drpc_error_set(err, DRPC_ETOOBIG,
                          "store frame length %u exceeds limit %zu", len,
                          (size_t)DRPC_STORE_PROTO_MAX_FRAME);
  *body_len = len;
  return 0;
}

int drpc_store_proto_decode_req(const uint8_t *body, size_t len,
                                drpc_store_req *q, drpc_error *err) {
  memset(q, 0, sizeof(*q));
  reader r = {body, len, 0, "store request", err};
  uint8_t op;
  int rc = read_u8(&r, "op", &op);
  if (rc)
    return rc;
  const char *name = drpc_store_proto_op_name(op);
  if (op < DRPC_STORE_OP_SET || op > DRPC_STORE_OP_PING)
    return drpc_error_set(err, DRPC_EPROTO, "unknown store request op %u", op);
  q->op = (drpc_store_op)op;
  char what[32];
  snprintf(what, sizeof(what), "%s request", name);
  r.what = what;
  switch (q->op) {
  case DRPC_STORE_OP_SET:
    if ((rc = read_key(&r, "key", &q->key)) ||
        (rc = read_bytes(&r, "value", DRPC_STORE_MAX_VALUE, &q->val)))
      return rc;
    break;
  case DRPC_STORE_OP_GET:
    if ((rc = read_key(&r, "key", &q->key)) || (rc = read_timeout(&r, &q->num)))
      return rc;
    break;
  case DRPC_STORE_OP_ADD:
    if ((rc = read_key(&r, "key", &q->key)) ||
        (rc = read_i64(&r, "delta", &q->num)))
      return rc;
    break;
  case DRPC_STORE_OP_WAIT:
    if ((rc = read_timeout(&r, &q->num)) ||
        (rc = read_key_list(&r, "key", DRPC_STORE_MAX_WAIT_KEYS, &q->nkeys,
                            &q->keys)))
      return rc;
    break;
  case DRPC_STORE_OP_COMPARE_SET:
    if ((rc = read_key(&r, "key", &q->key)) ||
        (rc =
             read_bytes(&r, "expected value", DRPC_STORE_MAX_VALUE, &q->val)) ||
        (rc = read_bytes(&r, "desired value", DRPC_STORE_MAX_VALUE, &q->val2)))
      return rc;
    break;
  case DRPC_STORE_OP_DELETE:
    if ((rc = read_key(&r, "key", &q->key)))
      return rc;
    break;
  case DRPC_STORE_OP_NUM_KEYS:
    break;
  case DRPC_STORE_OP_LIST: {
    /* A prefix may be empty, so it is bytes, checked for NUL by hand. */
    if ((rc = read_bytes(&r, "prefix", DRPC_STORE_MAX_KEY, &q->key)))
      return rc;
    const uint8_t *nul = memchr(q->key.p, 0, q->key.len);
    if (nul)
      return drpc_error_set(err, DRPC_EPROTO,
                            "%s prefix has a NUL byte at index %zu", what,
                            (size_t)(nul - q->key.p));
    break;
  }
  case DRPC_STORE_OP_PING:
    if ((rc = read_u32(&r, "version", &q->version)))
      return rc;
    break;
  }
  return finish(&r);
}

int drpc_store_proto_decode_resp(const uint8_t *body, size_t len,
                                 drpc_store_op expect, drpc_store_resp *s,
                                 drpc_error *err) {
  memset(s, 0, sizeof(*s));
  char what[40];
  snprintf(what, sizeof(what), "%s response", drpc_store_proto_op_name(expect));
  reader r = {body, len, 0, what, err};
  uint8_t op;
  uint32_t code;
  int rc;
  if ((rc = read_u8(&r, "op", &op)))
    return rc;
  if (op != expect)
    return drpc_error_set(err, DRPC_EPROTO, "%s carries op %u (%s)", what, op,
                          drpc_store_proto_op_name(op));
  s->op = expect;
  if ((rc = read_u32(&r, "code", &code)))
    return rc;
  s->code = (int32_t)code;
  if (s->code > 0 || s->code < -10000)
    return drpc_error_set(err, DRPC_EPROTO,
                          "%s status %d is not a drpc error code", what,
                          s->code);
  if (s->code) {
    if ((rc = read_bytes(&r, "message", DRPC_STORE_PROTO_MAX_MESSAGE, &s->msg)))
      return rc;
    return finish(&r);
  }
  uint8_t flag;
  switch (expect) {
  case DRPC_STORE_OP_SET:
  case DRPC_STORE_OP_WAIT:
    break;
  case DRPC_STORE_OP_GET:
  case DRPC_STORE_OP_COMPARE_SET:
    if ((rc = read_bytes(&r, "value", DRPC_STORE_MAX_VALUE, &s->val)))
      return rc;
    break;
  case DRPC_STORE_OP_ADD:
  case DRPC_STORE_OP_NUM_KEYS:
    if ((rc = read_i64(&r, "number", &s->num)))
      return rc;
    break;
  case DRPC_STORE_OP_DELETE:
    if ((rc = read_u8(&r, "existed flag", &flag)))
      return rc;
    if (flag > 1)
      return drpc_error_set(err, DRPC_EPROTO, "%s existed flag is %u", what,
                            flag);
    s->flag = flag;
    break;
  case DRPC_STORE_OP_LIST:
    if ((rc = read_key_list(&r, "key", DRPC_STORE_MAX_KEYS, &s->nkeys,
                            &s->keys)))
      return rc;
    break;
  case DRPC_STORE_OP_PING:
    if ((rc = read_u32(&r, "version", &s->version)))
      return rc;
    break;
  default:
    return drpc_error_set(err, DRPC_EINVAL, "no response format for op %d",
                          (int)expect);
  }
  return finish(&r);
}

void drpc_store_proto_next_key(const drpc_store_bytes *keys, size_t *pos,
                               drpc_store_bytes *key) {
  const uint8_t *p = keys->p + *pos;
  /* The decoder checked the range, so only the invariant is asserted. */
  size_t len = (size_t)p[0] | (size_t)p[1] << 8 | (size_t)p[2] << 16 |
               (size_t)p[3] << 24;
  key->p = p + 4;
  key->len = len;
  *pos += 4 + len;
}

/* ---- the file store's table image -------------------------------------- */

int drpc_store_proto_encode_table(const drpc_store_table *t, drpc_store_buf *b,
                                  drpc_error *err) {
  drpc_store_buf_reset(b);
  b->limit = DRPC_STORE_FILE_MAX_BYTES;
  size_t n = drpc_store_table_count(t);
  if (reserve(b, DRPC_STORE_FILE_MAGIC_LEN)) {
    memcpy(b->data, DRPC_STORE_FILE_MAGIC, DRPC_STORE_FILE_MAGIC_LEN);
    b->len = DRPC_STORE_FILE_MAGIC_LEN;
  }
  put_le(b, n, 4);
  for (size_t i = 0; i < n; i++) {
    const char *key;
    const uint8_t *val;
    size_t klen, vlen;
    drpc_store_table_entry(t, i, &key, &klen, &val, &vlen);
    drpc_store_proto_put_bytes(b, key, klen);
    drpc_store_proto_put_bytes(b, val, vlen);
  }
  if (b->failed == DRPC_ENOMEM)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory encoding store");
  if (b->failed)
    return drpc_error_set(err, DRPC_ETOOBIG,
                          "store of %zu keys does not fit one image of %llu "
                          "bytes",
                          n, (unsigned long long)DRPC_STORE_FILE_MAX_BYTES);
  return 0;
}

int drpc_store_proto_decode_table(const uint8_t *p, size_t len,
                                  drpc_store_table *t, drpc_error *err) {
  if (len == 0)
    return 0;
  if (len > DRPC_STORE_FILE_MAX_BYTES)
    return drpc_error_set(err, DRPC_ETOOBIG,
                          "store file of %zu bytes exceeds limit %llu", len,
                          (unsigned long long)DRPC_STORE_FILE_MAX_BYTES);
  reader r = {p, len, 0, "store file", err};
  uint32_t n;
  int rc;
  if ((rc = need(&r, DRPC_STORE_FILE_MAGIC_LEN, "magic")))
    return rc;
  if (memcmp(p, DRPC_STORE_FILE_MAGIC, DRPC_STORE_FILE_MAGIC_LEN) != 0)
    return drpc_error_set(err, DRPC_EPROTO,
                          "store file does not start with magic %s",
                          DRPC_STORE_FILE_MAGIC);
  r.at = DRPC_STORE_FILE_MAGIC_LEN;
  if ((rc = read_u32(&r, "record count", &n)))
    return rc;
  if (n > DRPC_STORE_MAX_KEYS)
    return drpc_error_set(err, DRPC_ETOOBIG,
                          "store file record count %u exceeds limit %u", n,
                          DRPC_STORE_MAX_KEYS);
  for (uint32_t i = 0; i < n; i++) {
    drpc_store_bytes k, v;
    if ((rc = read_key(&r, "key", &k)) ||
        (rc = read_bytes(&r, "value", DRPC_STORE_MAX_VALUE, &v))) {
      drpc_error_prefix(err, "record %u", i);
      return rc;
    }
    if ((rc = drpc_store_table_set(t, (const char *)k.p, k.len, v.p, v.len,
                                   err)))
      return rc;
  }
  return finish(&r);
}
