/* Unit tests for core/wire.c: layout, round trips, streaming, bad input. */
#include "drpc/error.h"
#include "drpc/tensor.h"
#include "drpc/value.h"
#include "drpc/wire.h"

#include "test.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>

/* ---- helpers ----------------------------------------------------------- */

/* A growable byte buffer for writing payloads by hand. */
typedef struct bytes {
  uint8_t data[4096];
  size_t len;
} bytes;

static void b_put(bytes *b, int n, ...) {
  va_list ap;
  va_start(ap, n);
  for (int i = 0; i < n; i++)
    b->data[b->len++] = (uint8_t)va_arg(ap, int);
  va_end(ap);
}

static void b_varint(bytes *b, uint64_t v) {
  while (v >= 0x80) {
    b->data[b->len++] = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  b->data[b->len++] = (uint8_t)v;
}

/* A tensor descriptor: tag, dtype, cpu, index -1, ndim, shape, index. */
static void b_tensor(bytes *b, int dtype, int ndim, const uint64_t *shape,
                     uint64_t index) {
  b_put(b, 5, 9, dtype, 0, 0xff, ndim);
  for (int i = 0; i < ndim; i++)
    b_varint(b, shape[i]);
  b_varint(b, index);
}

/* Builds a whole frame around a hand-written payload; the data section is
 * zero-filled. */
static uint8_t *build_frame(uint8_t type, const bytes *p, uint32_t ntensors,
                            uint64_t data_len, size_t *len) {
  uint64_t off = drpc_wire_data_offset((uint32_t)p->len);
  *len = (size_t)(off + data_len);
  uint8_t *buf = calloc(1, *len);
  drpc_frame_header h = {DRPC_WIRE_MAGIC,  DRPC_WIRE_VERSION, type,    0, 1,
                         (uint32_t)p->len, ntensors,          data_len};
  drpc_wire_header_encode(&h, buf);
  memcpy(buf + DRPC_WIRE_HEADER_SIZE, p->data, p->len);
  return buf;
}

/* A tensor of any dtype filled with a pattern that differs per seed and
 * contains no NaN, so tensors compare equal after a round trip. */
static drpc_tensor *make_tensor(drpc_dtype dt, int ndim, const int64_t *shape,
                                int seed) {
  drpc_tensor *t = drpc_tensor_empty(dt, ndim, shape);
  int64_t n = drpc_tensor_numel(t);
  void *p = drpc_tensor_data(t);
  for (int64_t i = 0; i < n; i++) {
    switch (dt) {
    case DRPC_FLOAT32:
      ((float *)p)[i] = (float)i * 0.5f + (float)seed;
      break;
    case DRPC_FLOAT64:
      ((double *)p)[i] = (double)i * 0.25 - seed;
      break;
    case DRPC_INT64:
      ((int64_t *)p)[i] = i * 1000003 - seed;
      break;
    case DRPC_INT32:
      ((int32_t *)p)[i] = (int32_t)(i * 7 - seed);
      break;
    case DRPC_UINT8:
      ((uint8_t *)p)[i] = (uint8_t)(i + seed);
      break;
    case DRPC_BOOL:
      ((uint8_t *)p)[i] = (uint8_t)((i + seed) % 2);
      break;
    default:
      break;
    }
  }
  return t;
}

/* The streamed path a backend takes: header, then payload, then the data
 * section read straight into the iovecs the decoder hands out. */
static int streamed_decode(const uint8_t *buf, size_t len, drpc_msg *m,
                           drpc_error *err) {
  drpc_frame_header h;
  memset(m, 0, sizeof(*m));
  int rc = drpc_wire_header_decode(buf, len, &h, NULL, err);
  if (rc)
    return rc;
  uint64_t size;
  CHECK_EQ_INT(drpc_wire_frame_size(&h, &size), 0);
  if (size != len)
    return DRPC_ETRUNC;
  rc = drpc_wire_decode_payload(&h, buf + DRPC_WIRE_HEADER_SIZE, NULL, m, err);
  if (rc)
    return rc;
  uint8_t sink[DRPC_TENSOR_ALIGN];
  uint64_t off = drpc_wire_data_offset(h.payload_len);
  size_t n = drpc_wire_data_iov(m, off, NULL, 0, sink);
  struct iovec *iov = calloc(n + 1, sizeof(*iov));
  CHECK_EQ_INT(drpc_wire_data_iov(m, off, iov, n, sink), n);
  uint64_t pos = off;
  for (size_t i = 0; i < n; i++) {
    CHECK(iov[i].iov_len > 0);
    if (iov[i].iov_base == sink)
      CHECK(iov[i].iov_len < DRPC_TENSOR_ALIGN);
    memcpy(iov[i].iov_base, buf + pos, iov[i].iov_len);
    pos += iov[i].iov_len;
  }
  CHECK_EQ_INT(pos, len);
  free(iov);
  return 0;
}

static uint8_t *encode_flat(uint8_t type, uint16_t flags, uint64_t id,
                            const drpc_value *body, size_t *len) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_outframe *f = NULL;
  int rc = drpc_wire_encode(type, flags, id, body, NULL, &f, &err);
  CHECK_EQ_INT(rc, 0);
  if (rc) {
    fprintf(stderr, "  encode: %s\n", drpc_error_message(&err));
    drpc_error_clear(&err);
    return NULL;
  }
  uint8_t *flat = drpc_outframe_flatten(f, len);
  CHECK(flat != NULL);
  CHECK_EQ_INT(*len, f->total_len);
  drpc_outframe_free(f);
  return flat;
}

static bool same_tensor_bytes(const drpc_msg *a, const drpc_msg *b) {
  if (a->ntensors != b->ntensors)
    return false;
  for (uint32_t i = 0; i < a->ntensors; i++) {
    size_t na = drpc_tensor_nbytes(a->tensors[i]);
    if (na != drpc_tensor_nbytes(b->tensors[i]))
      return false;
    if (na && memcmp(drpc_tensor_data(a->tensors[i]),
                     drpc_tensor_data(b->tensors[i]), na) != 0)
      return false;
  }
  return true;
}

/* Encodes, flattens and decodes body; checks that the value survives, that
 * re-encoding gives the same bytes, and that the streamed path agrees.
 * Leaves the decoded message in out when out is not NULL. */
static void roundtrip(uint8_t type, const drpc_value *body, drpc_msg *out) {
  size_t len;
  uint8_t *flat = encode_flat(type, 0xa55a, 0x0102030405060708ull, body, &len);
  if (!flat)
    return;
  drpc_error err = DRPC_ERROR_INIT;
  drpc_msg m;
  int rc = drpc_wire_decode(flat, len, NULL, &m, &err);
  CHECK_EQ_INT(rc, 0);
  if (rc) {
    fprintf(stderr, "  decode: %s\n", drpc_error_message(&err));
    drpc_error_clear(&err);
    free(flat);
    return;
  }
  CHECK_EQ_INT(m.type, type);
  CHECK_EQ_INT(m.flags, 0xa55a);
  CHECK(m.id == 0x0102030405060708ull);
  drpc_value *nil = drpc_value_nil();
  CHECK(drpc_value_equal(body ? body : nil, m.body));
  drpc_value_free(nil);

  size_t len2;
  uint8_t *flat2 = encode_flat(type, m.flags, m.id, m.body, &len2);
  CHECK(flat2 && len2 == len && memcmp(flat, flat2, len) == 0);

  drpc_msg s;
  CHECK_EQ_INT(streamed_decode(flat, len, &s, &err), 0);
  CHECK(drpc_value_equal(m.body, s.body));
  CHECK(same_tensor_bytes(&m, &s));
  drpc_msg_clear(&s);

  free(flat);
  free(flat2);
  if (out)
    *out = m;
  else
    drpc_msg_clear(&m);
}

/* Decodes a frame that must fail with code and a message containing
 * phrase; when the header is sound the streamed path must say the same. */
static void expect_fail(const uint8_t *buf, size_t len, int code,
                        const char *phrase) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_msg m;
  int rc = drpc_wire_decode(buf, len, NULL, &m, &err);
  CHECK_EQ_INT(rc, code);
  CHECK_CONTAINS(err.msg, phrase);
  CHECK(m.body == NULL && m.tensors == NULL && m.ntensors == 0);

  drpc_frame_header h;
  drpc_error err2 = DRPC_ERROR_INIT;
  uint64_t size;
  if (drpc_wire_header_decode(buf, len, &h, NULL, &err2) == 0 &&
      drpc_wire_frame_size(&h, &size) == 0 && size == len) {
    rc = drpc_wire_decode_payload(&h, buf + DRPC_WIRE_HEADER_SIZE, NULL, &m,
                                  &err2);
    CHECK_EQ_INT(rc, code);
    CHECK_STR_EQ(err2.msg, err.msg);
    CHECK(m.body == NULL && m.ntensors == 0);
  }
  drpc_error_clear(&err);
  drpc_error_clear(&err2);
}

/* Wraps a hand-written payload in a frame and expects it to fail. */
static void expect_payload_fail(const bytes *p, uint32_t ntensors,
                                uint64_t data_len, int code,
                                const char *phrase) {
  size_t len;
  uint8_t *buf = build_frame(DRPC_MSG_CALL, p, ntensors, data_len, &len);
  expect_fail(buf, len, code, phrase);
  free(buf);
}

static void expect_payload_ok(const bytes *p, uint32_t ntensors,
                              uint64_t data_len) {
  size_t len;
  uint8_t *buf = build_frame(DRPC_MSG_CALL, p, ntensors, data_len, &len);
  drpc_error err = DRPC_ERROR_INIT;
  drpc_msg m;
  int rc = drpc_wire_decode(buf, len, NULL, &m, &err);
  CHECK_EQ_INT(rc, 0);
  if (rc)
    fprintf(stderr, "  decode: %s\n", drpc_error_message(&err));
  drpc_msg_clear(&m);
  drpc_error_clear(&err);
  free(buf);
}

/* ---- the error object the codec reports through ------------------------ */

static void test_error_object(void) {
#define X_CHECK(name, value, desc)                                             \
  CHECK_STR_EQ(drpc_strerror(value), desc);                                    \
  CHECK_STR_EQ(drpc_errname(value), "DRPC_E" #name);
  DRPC_ERRORS(X_CHECK)
#undef X_CHECK
  CHECK_STR_EQ(drpc_strerror(-999), "unknown error");
  CHECK_STR_EQ(drpc_errname(12345), "unknown");

  CHECK_EQ_INT(drpc_error_set(NULL, DRPC_EIO, "ignored %d", 1), DRPC_EIO);

  drpc_error e = DRPC_ERROR_INIT;
  CHECK_STR_EQ(drpc_error_message(&e), "success");
  CHECK_EQ_INT(drpc_error_set(&e, DRPC_EPROTO, "bad %s %d", "thing", 7),
               DRPC_EPROTO);
  CHECK_EQ_INT(e.code, DRPC_EPROTO);
  CHECK_STR_EQ(e.msg, "bad thing 7");
  CHECK_EQ_INT(drpc_error_prefix(&e, "peer %d", 3), DRPC_EPROTO);
  CHECK_STR_EQ(drpc_error_message(&e), "peer 3: bad thing 7");
  /* A message may be built from the one it replaces. */
  drpc_error_set(&e, DRPC_EIO, "again: %s", e.msg);
  CHECK_STR_EQ(e.msg, "again: peer 3: bad thing 7");

  char big[3000];
  memset(big, 'x', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  drpc_error_set(&e, DRPC_EIO, "%s!", big);
  CHECK_EQ_INT(strlen(e.msg), sizeof(big));

  drpc_error c = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_error_copy(&c, &e), 0);
  CHECK(c.msg != e.msg);
  CHECK_STR_EQ(c.msg, e.msg);
  drpc_error mv;
  drpc_error_init(&mv);
  drpc_error_move(&mv, &c);
  CHECK(c.msg == NULL && c.code == 0);
  CHECK_EQ_INT(mv.code, DRPC_EIO);

  drpc_error_clear(&e);
  CHECK(e.msg == NULL && e.code == 0);
  drpc_error_set(&e, DRPC_ETIMEOUT, NULL);
  CHECK_STR_EQ(drpc_error_message(&e), "timed out");
  drpc_error_prefix(&e, "call");
  CHECK_STR_EQ(drpc_error_message(&e), "call: timed out");
  drpc_error_clear(&e);
  drpc_error_clear(&mv);
}

/* ---- layout ------------------------------------------------------------ */

static void test_header_layout(void) {
  drpc_frame_header h = {DRPC_WIRE_MAGIC,
                         DRPC_WIRE_VERSION,
                         DRPC_MSG_CALL,
                         0x1234,
                         0x1122334455667788ull,
                         0xa0b0c0d0u,
                         7,
                         0x0102030405060708ull};
  uint8_t buf[32];
  drpc_wire_header_encode(&h, buf);
  const uint8_t want[32] = {'D',  'R',  'P',  'C',  1,    2,    0x34, 0x12,
                            0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,
                            0xd0, 0xc0, 0xb0, 0xa0, 7,    0,    0,    0,
                            0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01};
  CHECK(memcmp(buf, want, 32) == 0);

  drpc_wire_limits lim = {UINT64_MAX, UINT32_MAX, 64};
  drpc_frame_header back;
  CHECK_EQ_INT(drpc_wire_header_decode(buf, 32, &back, &lim, NULL), 0);
  CHECK_EQ_INT(back.magic, DRPC_WIRE_MAGIC);
  CHECK_EQ_INT(back.type, DRPC_MSG_CALL);
  CHECK_EQ_INT(back.flags, 0x1234);
  CHECK(back.id == 0x1122334455667788ull);
  CHECK_EQ_INT(back.payload_len, 0xa0b0c0d0u);
  CHECK_EQ_INT(back.ntensors, 7);
  CHECK(back.data_len == 0x0102030405060708ull);
}

static void test_sizes_and_limits(void) {
  CHECK_EQ_INT(drpc_wire_data_offset(0), 64);
  CHECK_EQ_INT(drpc_wire_data_offset(32), 64);
  CHECK_EQ_INT(drpc_wire_data_offset(33), 128);
  CHECK(drpc_wire_data_offset(UINT32_MAX) == 32 + 4294967295ull + 33);
  CHECK_EQ_INT(drpc_wire_data_offset(UINT32_MAX) % 64, 0);

  drpc_frame_header h = {DRPC_WIRE_MAGIC, 1, 1, 0, 0, 10, 1, 100};
  uint64_t size = 0;
  CHECK_EQ_INT(drpc_wire_frame_size(&h, &size), 0);
  CHECK_EQ_INT(size, 164);
  h.data_len = UINT64_MAX - 63;
  CHECK_EQ_INT(drpc_wire_frame_size(&h, &size), DRPC_ETOOBIG);

  drpc_wire_limits lim;
  drpc_wire_limits_default(&lim);
  CHECK(lim.max_frame == DRPC_WIRE_DEFAULT_MAX_FRAME);
  CHECK_EQ_INT(lim.max_payload, DRPC_WIRE_DEFAULT_MAX_PAYLOAD);
  CHECK_EQ_INT(lim.max_depth, DRPC_VALUE_MAX_DEPTH);
}

static void test_msg_types(void) {
  const char *names[] = {"UNKNOWN",
                         "HELLO",
                         "CALL",
                         "RESPONSE",
                         "ERROR",
                         "REMOTE_CALL",
                         "REMOTE_RET",
                         "RREF_FETCH",
                         "RREF_USER_DELETE",
                         "RREF_FORK_REQUEST",
                         "RREF_CHILD_ACCEPT",
                         "RREF_ACK",
                         "JOIN",
                         "LEAVE",
                         "SHUTDOWN",
                         "RELEASE"};
  for (int t = 0; t <= DRPC_MSG_TYPE_MAX; t++)
    CHECK_STR_EQ(drpc_msg_type_name(t), names[t]);
  CHECK_STR_EQ(drpc_msg_type_name(DRPC_MSG_TYPE_MAX + 1), "UNKNOWN");
  CHECK_STR_EQ(drpc_msg_type_name(-1), "UNKNOWN");

  int requests = 0, responses = 0;
  for (int t = 0; t <= DRPC_MSG_TYPE_MAX + 1; t++) {
    CHECK(!(drpc_msg_type_is_request(t) && drpc_msg_type_is_response(t)));
    requests += drpc_msg_type_is_request(t);
    responses += drpc_msg_type_is_response(t);
  }
  CHECK_EQ_INT(requests, 8);
  CHECK_EQ_INT(responses, 4);
  CHECK(drpc_msg_type_is_request(DRPC_MSG_CALL));
  CHECK(drpc_msg_type_is_request(DRPC_MSG_RREF_CHILD_ACCEPT));
  CHECK(drpc_msg_type_is_request(DRPC_MSG_LEAVE));
  CHECK(drpc_msg_type_is_response(DRPC_MSG_RREF_ACK));
  CHECK(drpc_msg_type_is_response(DRPC_MSG_ERROR));
  CHECK(!drpc_msg_type_is_request(DRPC_MSG_HELLO));
  CHECK(!drpc_msg_type_is_response(DRPC_MSG_SHUTDOWN));
  CHECK(!drpc_msg_type_is_request(DRPC_MSG_RELEASE));
  CHECK(!drpc_msg_type_is_response(DRPC_MSG_RELEASE));

  /* Every type travels, each with a body of its usual shape. */
  for (int t = 1; t <= DRPC_MSG_TYPE_MAX; t++) {
    drpc_value *body = drpc_value_list_of(4, drpc_value_int(t),
                                          drpc_value_str(drpc_msg_type_name(t)),
                                          drpc_value_list(), drpc_value_dict());
    roundtrip((uint8_t)t, body, NULL);
    drpc_value_free(body);
    roundtrip((uint8_t)t, NULL, NULL);
  }

  drpc_error err = DRPC_ERROR_INIT;
  drpc_outframe dummy;
  drpc_outframe *f = &dummy; /* a failed encode must reset it to NULL */
  CHECK_EQ_INT(drpc_wire_encode(0, 0, 0, NULL, NULL, &f, &err), DRPC_EINVAL);
  CHECK(f == NULL);
  CHECK_CONTAINS(err.msg, "unknown message type 0");
  CHECK_EQ_INT(
      drpc_wire_encode(DRPC_MSG_TYPE_MAX + 1, 0, 0, NULL, NULL, &f, &err),
      DRPC_EINVAL);
  drpc_error_clear(&err);
}

/* The exact bytes of a small payload pin the value encoding down. */
static void test_golden_payload(void) {
  drpc_value *body = drpc_value_list_of(
      7, drpc_value_int(1), drpc_value_int(-1), drpc_value_str("hi"),
      drpc_value_nil(), drpc_value_bool(true), drpc_value_float(2.0),
      drpc_value_worker(-2, "w"));
  drpc_value *d = drpc_value_dict();
  drpc_dict_set(d, "k", drpc_value_bytes("\x01", 1));
  drpc_list_append(body, d);
  drpc_list_append(body, drpc_value_int(300));
  drpc_list_append(body, drpc_value_bool(false));
  size_t len;
  uint8_t *flat = encode_flat(DRPC_MSG_RESPONSE, 0, 9, body, &len);
  const uint8_t want[] = {
      7,  10,                                /* list of 10 */
      3,  2,                                 /* 1 */
      3,  1,                                 /* -1 */
      5,  2,    'h',  'i',                   /* "hi" */
      0,                                     /* nil */
      2,                                     /* true */
      4,  0,    0,    0,   0, 0, 0, 0, 0x40, /* 2.0 */
      10, 3,    1,    'w',                   /* WorkerInfo(-2, w) */
      8,  1,    1,    'k', 6, 1, 1,          /* {"k": b'\x01'} */
      3,  0xd8, 0x04,                        /* 300 */
      1,                                     /* false */
  };
  CHECK(flat != NULL);
  CHECK_EQ_INT(len, 128); /* 32 + 42 bytes, padded to the alignment */
  CHECK_EQ_INT(flat[16], sizeof(want)); /* payload_len */
  CHECK(memcmp(flat + 32, want, sizeof(want)) == 0);
  for (size_t i = 32 + sizeof(want); i < len; i++)
    CHECK_EQ_INT(flat[i], 0); /* padding is zero */
  free(flat);
  drpc_value_free(body);
}

/* ---- round trips ------------------------------------------------------- */

static void test_roundtrip_kinds(void) {
  const int64_t ints[] = {0,         1,         -1,       63,  64,
                          -64,       -65,       127,      128, INT32_MAX,
                          INT32_MIN, INT64_MAX, INT64_MIN};
  for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
    drpc_value *v = drpc_value_int(ints[i]);
    roundtrip(DRPC_MSG_RESPONSE, v, NULL);
    drpc_value_free(v);
  }
  const double floats[] = {0.0,     1.5,    -2.25,    1e300,
                           -1e-300, 5e-324, INFINITY, -INFINITY};
  for (size_t i = 0; i < sizeof(floats) / sizeof(floats[0]); i++) {
    drpc_value *v = drpc_value_float(floats[i]);
    roundtrip(DRPC_MSG_RESPONSE, v, NULL);
    drpc_value_free(v);
  }
  drpc_value *vals[] = {
      drpc_value_nil(),
      drpc_value_bool(true),
      drpc_value_bool(false),
      drpc_value_str(""),
      drpc_value_str("héllo wörld"),
      drpc_value_strn("a\0b\0", 4),
      drpc_value_bytes("", 0),
      drpc_value_bytes("\x00\xff\x80", 3),
      drpc_value_list(),
      drpc_value_dict(),
      drpc_value_worker(0, ""),
      drpc_value_worker(INT16_MAX, "trainer:7"),
      drpc_value_worker(INT16_MIN, "ps-0"),
  };
  for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
    roundtrip(DRPC_MSG_RESPONSE, vals[i], NULL);
    drpc_value_free(vals[i]);
  }

  /* A nested tree with every container shape. */
  drpc_value *inner = drpc_value_dict();
  drpc_dict_set(inner, "", drpc_value_nil());
  drpc_dict_set(inner, "list",
                drpc_value_list_of(2, drpc_value_int(1), drpc_value_list()));
  drpc_value *tree = drpc_value_list_of(
      3, inner, drpc_value_list_of(1, drpc_value_dict()), drpc_value_str("z"));
  roundtrip(DRPC_MSG_CALL, tree, NULL);
  drpc_value_free(tree);

  /* A long string needs a multi-byte length. */
  char *long_str = malloc(100001);
  memset(long_str, 'q', 100000);
  long_str[100000] = '\0';
  drpc_value *ls = drpc_value_str(long_str);
  roundtrip(DRPC_MSG_CALL, ls, NULL);
  drpc_value_free(ls);
  free(long_str);
}

static void test_roundtrip_big_containers(void) {
  drpc_value *l = drpc_value_list();
  for (int i = 0; i < 100000; i++)
    drpc_list_append(l, drpc_value_int(i * 37 - 5000));
  roundtrip(DRPC_MSG_CALL, l, NULL);
  drpc_value_free(l);

  drpc_value *d = drpc_value_dict();
  for (int i = 0; i < 2000; i++) {
    char key[16];
    snprintf(key, sizeof(key), "key%d", (i * 7919) % 2000);
    drpc_dict_set(d, key, drpc_value_int(i));
  }
  drpc_msg m;
  roundtrip(DRPC_MSG_CALL, d, &m);
  /* Insertion order survives the trip. */
  CHECK(m.body && m.body->kind == DRPC_VAL_DICT);
  for (size_t i = 0; m.body && i < d->u.c.len; i++)
    CHECK_STR_EQ(m.body->u.c.keys[i], d->u.c.keys[i]);
  drpc_msg_clear(&m);
  drpc_value_free(d);
}

/* Floats travel as bit patterns, so NaN payloads and signed zero survive
 * even though they do not compare equal. */
static void test_float_bits(void) {
  const uint64_t patterns[] = {0x7ff8000000000001ull, 0xfff0000000000abcull,
                               0x8000000000000000ull};
  for (size_t i = 0; i < 3; i++) {
    double f;
    memcpy(&f, &patterns[i], 8);
    drpc_value *v = drpc_value_float(f);
    size_t len;
    uint8_t *flat = encode_flat(DRPC_MSG_RESPONSE, 0, 0, v, &len);
    drpc_msg m;
    CHECK_EQ_INT(drpc_wire_decode(flat, len, NULL, &m, NULL), 0);
    uint64_t bits;
    memcpy(&bits, &m.body->u.f, 8);
    CHECK(bits == patterns[i]);
    drpc_msg_clear(&m);
    free(flat);
    drpc_value_free(v);
  }
}

static void test_tensor_dtypes(void) {
  const int64_t shapes[][3] = {{0}, {0}, {5}, {3, 0, 2}, {2, 3, 4}, {1, 1, 1}};
  const int ndims[] = {0, 1, 1, 3, 3, 3};
  for (int dt = 0; dt < DRPC_DTYPE_COUNT; dt++) {
    for (size_t s = 0; s < sizeof(ndims) / sizeof(ndims[0]); s++) {
      drpc_tensor *t = make_tensor((drpc_dtype)dt, ndims[s], shapes[s], dt);
      CHECK(t != NULL);
      drpc_value *v = drpc_value_list_of(2, drpc_value_tensor(t),
                                         drpc_value_int((int64_t)s));
      drpc_msg m;
      roundtrip(DRPC_MSG_RESPONSE, v, &m);
      CHECK_EQ_INT(m.ntensors, 1);
      if (m.ntensors == 1) {
        const drpc_tensor *r = m.tensors[0];
        CHECK_EQ_INT(r->dtype, dt);
        CHECK_EQ_INT(r->ndim, ndims[s]);
        CHECK(drpc_tensor_is_contiguous(r));
        CHECK(r->storage->device.type == DRPC_DEVICE_CPU);
        CHECK_EQ_INT((uintptr_t)drpc_tensor_data(r) % DRPC_TENSOR_ALIGN, 0);
        CHECK(drpc_tensor_equal(r, t));
        CHECK(drpc_list_at(m.body, 0)->u.t == r);
      }
      drpc_msg_clear(&m);
      drpc_value_free(v);
      drpc_tensor_decref(t);
    }
  }
}

static void test_tensor_shared(void) {
  int64_t shape[1] = {10};
  drpc_tensor *a = make_tensor(DRPC_FLOAT32, 1, shape, 1);
  drpc_tensor *b = make_tensor(DRPC_INT64, 1, shape, 2);
  drpc_value *d = drpc_value_dict();
  drpc_dict_set(d, "again", drpc_value_tensor(a));
  drpc_value *v =
      drpc_value_list_of(3, drpc_value_tensor(a), drpc_value_tensor(b), d);
  drpc_outframe *f;
  CHECK_EQ_INT(drpc_wire_encode(DRPC_MSG_CALL, 0, 1, v, NULL, &f, NULL), 0);
  CHECK_EQ_INT(f->ntensors, 2);
  /* Contiguous tensors are sent from their own storage. */
  CHECK(f->tensors[0] == a);
  CHECK(f->tensors[1] == b);
  drpc_outframe_free(f);

  drpc_msg m;
  roundtrip(DRPC_MSG_CALL, v, &m);
  CHECK_EQ_INT(m.ntensors, 2);
  const drpc_tensor *t0 = drpc_list_at(m.body, 0)->u.t;
  const drpc_tensor *t2 = drpc_dict_get(drpc_list_at(m.body, 2), "again")->u.t;
  CHECK(t0 == t2);
  CHECK(t0 == m.tensors[0]);
  CHECK(drpc_list_at(m.body, 1)->u.t == m.tensors[1]);
  /* One reference held by the message, one per occurrence in the body. */
  CHECK_EQ_INT(m.tensors[0]->refcount, 3);
  CHECK_EQ_INT(m.tensors[1]->refcount, 2);
  drpc_msg_clear(&m);
  drpc_value_free(v);
  drpc_tensor_decref(a);
  drpc_tensor_decref(b);
}

static void test_non_contiguous(void) {
  /* A 3x4 matrix and its transpose as a strided view of the same storage. */
  int64_t shape[2] = {3, 4};
  drpc_tensor *t = make_tensor(DRPC_INT32, 2, shape, 0);
  int64_t tshape[2] = {4, 3};
  drpc_tensor *view =
      drpc_tensor_from_storage(t->storage, DRPC_INT32, 2, tshape, 0);
  view->strides[0] = 1;
  view->strides[1] = 4;
  CHECK(!drpc_tensor_is_contiguous(view));

  drpc_value *v = drpc_value_tensor(view);
  drpc_outframe *f;
  CHECK_EQ_INT(drpc_wire_encode(DRPC_MSG_CALL, 0, 1, v, NULL, &f, NULL), 0);
  CHECK(f->tensors[0] != view); /* a contiguous copy went out */
  drpc_outframe_free(f);

  drpc_msg m;
  roundtrip(DRPC_MSG_CALL, v, &m);
  CHECK_EQ_INT(m.ntensors, 1);
  const int32_t *got = drpc_tensor_data(m.tensors[0]);
  const int32_t *src = drpc_tensor_data(t);
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 3; j++)
      CHECK_EQ_INT(got[i * 3 + j], src[j * 4 + i]);
  CHECK(drpc_tensor_equal(m.tensors[0], view));
  drpc_msg_clear(&m);
  drpc_value_free(v);
  drpc_tensor_decref(view);
  drpc_tensor_decref(t);
}

/* A body with tensors of awkward sizes, used by several tests below. */
static drpc_value *awkward_body(drpc_tensor **ts, size_t *nts) {
  const int64_t sizes[] = {1, 3, 100, 0, 64, 65, 7};
  const drpc_dtype dts[] = {DRPC_UINT8, DRPC_UINT8, DRPC_FLOAT32, DRPC_INT64,
                            DRPC_UINT8, DRPC_BOOL,  DRPC_FLOAT64};
  drpc_value *body = drpc_value_list();
  drpc_list_append(body, drpc_value_str("odd-length payload"));
  *nts = sizeof(sizes) / sizeof(sizes[0]);
  for (size_t i = 0; i < *nts; i++) {
    ts[i] = make_tensor(dts[i], 1, &sizes[i], (int)i);
    drpc_list_append(body, drpc_value_tensor(ts[i]));
  }
  return body;
}

static void test_data_alignment(void) {
  drpc_tensor *ts[8];
  size_t nts;
  drpc_value *body = awkward_body(ts, &nts);
  drpc_outframe *f;
  CHECK_EQ_INT(drpc_wire_encode(DRPC_MSG_CALL, 0, 1, body, NULL, &f, NULL), 0);
  size_t len;
  uint8_t *flat = drpc_outframe_flatten(f, &len);
  drpc_frame_header h;
  CHECK_EQ_INT(drpc_wire_header_decode(flat, len, &h, NULL, NULL), 0);
  uint64_t off = drpc_wire_data_offset(h.payload_len);
  CHECK_EQ_INT(f->head_len, off);
  CHECK_EQ_INT(h.ntensors, nts);
  CHECK_EQ_INT(off + h.data_len, len);

  /* Find each tensor's offset from the pieces of the frame. */
  static const uint8_t zeros[DRPC_TENSOR_ALIGN];
  struct iovec iov[32];
  size_t n = drpc_outframe_iov(f, 0, iov, 32, zeros);
  CHECK(n <= 32);
  uint64_t pos = 0;
  size_t found = 0;
  for (size_t i = 0; i < n; i++) {
    for (uint32_t k = 0; k < f->ntensors; k++) {
      if (drpc_tensor_nbytes(f->tensors[k]) &&
          iov[i].iov_base == drpc_tensor_data(f->tensors[k])) {
        CHECK_EQ_INT(pos % DRPC_TENSOR_ALIGN, 0);
        CHECK(memcmp(flat + pos, iov[i].iov_base, iov[i].iov_len) == 0);
        found++;
      }
    }
    if (iov[i].iov_base == zeros) {
      for (size_t b = 0; b < iov[i].iov_len; b++)
        CHECK_EQ_INT(flat[pos + b], 0);
    }
    pos += iov[i].iov_len;
  }
  CHECK_EQ_INT(found, nts - 1); /* the empty tensor has no piece */
  CHECK_EQ_INT(pos, len);
  /* The last piece is the last tensor's bytes: no trailing padding. */
  CHECK(iov[n - 1].iov_base == drpc_tensor_data(f->tensors[nts - 1]));

  /* The streamed decoder lands every tensor where the encoder put it. */
  drpc_msg m;
  CHECK_EQ_INT(drpc_wire_decode_payload(&h, flat + 32, NULL, &m, NULL), 0);
  uint8_t sink[DRPC_TENSOR_ALIGN];
  struct iovec in[32];
  size_t nin = drpc_wire_data_iov(&m, off, in, 32, sink);
  pos = off;
  for (size_t i = 0; i < nin; i++) {
    if (in[i].iov_base != sink)
      CHECK_EQ_INT(pos % DRPC_TENSOR_ALIGN, 0);
    pos += in[i].iov_len;
  }
  CHECK_EQ_INT(pos, len);
  /* Too few slots: the count needed comes back and nothing overflows. */
  struct iovec one[1];
  CHECK_EQ_INT(drpc_wire_data_iov(&m, off, one, 1, sink), nin);
  drpc_msg_clear(&m);

  free(flat);
  drpc_outframe_free(f);
  drpc_value_free(body);
  for (size_t i = 0; i < nts; i++)
    drpc_tensor_decref(ts[i]);
}

static void test_partial_iov(void) {
  drpc_tensor *ts[8];
  size_t nts;
  drpc_value *body = awkward_body(ts, &nts);
  drpc_outframe *f;
  CHECK_EQ_INT(drpc_wire_encode(DRPC_MSG_CALL, 0, 1, body, NULL, &f, NULL), 0);
  size_t len;
  uint8_t *flat = drpc_outframe_flatten(f, &len);
  static const uint8_t zeros[DRPC_TENSOR_ALIGN];
  uint8_t *got = malloc(len);
  size_t full = drpc_outframe_iov(f, 0, NULL, 0, zeros);
  /* Resuming a partial write from every offset yields exactly the rest. */
  for (uint64_t from = 0; from <= len; from++) {
    struct iovec iov[32];
    size_t n = drpc_outframe_iov(f, from, iov, 32, zeros);
    CHECK(n <= full);
    size_t pos = 0;
    for (size_t i = 0; i < n && i < 32; i++) {
      CHECK(iov[i].iov_len > 0);
      memcpy(got + pos, iov[i].iov_base, iov[i].iov_len);
      pos += iov[i].iov_len;
    }
    CHECK_EQ_INT(pos, len - from);
    CHECK(memcmp(got, flat + from, pos) == 0);
    struct iovec one[1];
    CHECK_EQ_INT(drpc_outframe_iov(f, from, one, 1, zeros), n);
  }
  CHECK_EQ_INT(drpc_outframe_iov(f, len, NULL, 0, zeros), 0);
  free(got);
  free(flat);
  drpc_outframe_free(f);
  drpc_value_free(body);
  for (size_t i = 0; i < nts; i++)
    drpc_tensor_decref(ts[i]);
}

static void test_set_id(void) {
  drpc_value *v = drpc_value_str("x");
  drpc_outframe *f;
  CHECK_EQ_INT(drpc_wire_encode(DRPC_MSG_CALL, 3, 1, v, NULL, &f, NULL), 0);
  drpc_outframe_set_id(f, 0xdeadbeefcafef00dull);
  size_t len;
  uint8_t *flat = drpc_outframe_flatten(f, &len);
  drpc_msg m;
  CHECK_EQ_INT(drpc_wire_decode(flat, len, NULL, &m, NULL), 0);
  CHECK(m.id == 0xdeadbeefcafef00dull);
  CHECK_EQ_INT(m.flags, 3);
  CHECK(drpc_value_equal(m.body, v));
  drpc_msg_clear(&m);
  free(flat);
  drpc_outframe_free(f);
  drpc_value_free(v);
}

/* ---- encoder limits ---------------------------------------------------- */

static drpc_value *nested_lists(int n, bool with_leaf) {
  drpc_value *v =
      with_leaf ? drpc_value_list_of(1, drpc_value_nil()) : drpc_value_list();
  for (int i = 1; i < n; i++)
    v = drpc_value_list_of(1, v);
  return v;
}

static void test_encode_limits(void) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_outframe *f = NULL;

  /* 64 levels of lists are allowed; a leaf inside the 64th is one too
   * deep, for the encoder and the decoder alike. */
  drpc_value *ok = nested_lists(64, false);
  roundtrip(DRPC_MSG_CALL, ok, NULL);
  drpc_value_free(ok);
  drpc_value *deep = nested_lists(64, true);
  CHECK_EQ_INT(drpc_wire_encode(DRPC_MSG_CALL, 0, 1, deep, NULL, &f, &err),
               DRPC_EINVAL);
  CHECK(f == NULL);
  CHECK_CONTAINS(err.msg, "value nesting deeper than 64");
  drpc_wire_limits lim;
  drpc_wire_limits_default(&lim);
  lim.max_depth = 65;
  CHECK_EQ_INT(drpc_wire_encode(DRPC_MSG_CALL, 0, 1, deep, &lim, &f, &err), 0);
  size_t len;
  uint8_t *flat = drpc_outframe_flatten(f, &len);
  expect_fail(flat, len, DRPC_ETOOBIG, "value nesting deeper than 64");
  drpc_msg m;
  CHECK_EQ_INT(drpc_wire_decode(flat, len, &lim, &m, NULL), 0);
  drpc_msg_clear(&m);
  free(flat);
  drpc_outframe_free(f);
  drpc_value_free(deep);

  /* Payload and frame bounds. */
  char *blob = calloc(1, 1000);
  drpc_value *s = drpc_value_bytes(blob, 1000);
  drpc_wire_limits_default(&lim);
  lim.max_payload = 999;
  CHECK_EQ_INT(drpc_wire_encode(DRPC_MSG_CALL, 0, 1, s, &lim, &f, &err),
               DRPC_ETOOBIG);
  CHECK_CONTAINS(err.msg, "payload length 1003 exceeds limit 999");
  lim.max_payload = 1003;
  CHECK_EQ_INT(drpc_wire_encode(DRPC_MSG_CALL, 0, 1, s, &lim, &f, &err), 0);
  drpc_outframe_free(f);
  drpc_value_free(s);
  free(blob);

  int64_t shape[1] = {1000};
  drpc_tensor *t = make_tensor(DRPC_FLOAT32, 1, shape, 0);
  drpc_value *tv = drpc_value_tensor(t);
  drpc_wire_limits_default(&lim);
  lim.max_frame = 4000;
  CHECK_EQ_INT(drpc_wire_encode(DRPC_MSG_CALL, 0, 1, tv, &lim, &f, &err),
               DRPC_ETOOBIG);
  CHECK_CONTAINS(err.msg, "frame length 4064 exceeds limit 4000");
  lim.max_frame = 4064;
  CHECK_EQ_INT(drpc_wire_encode(DRPC_MSG_CALL, 0, 1, tv, &lim, &f, &err), 0);
  CHECK_EQ_INT(f->total_len, 4064);
  drpc_outframe_free(f);
  drpc_value_free(tv);
  drpc_tensor_decref(t);

  /* RRef fork data travels as is without a hook; out-of-range ids and
   * handles (which need an agent to fork them) do not. */
  drpc_value *r = drpc_value_nil();
  r->kind = DRPC_VAL_RREF;
  r->u.r.owner = 1;
  r->u.r.rref_created_on = 2;
  r->u.r.rref_local_id = 3;
  r->u.r.fork_created_on = 2;
  r->u.r.fork_local_id = 4;
  r->u.r.parent = 2;
  r->u.r.type_name = strdup("tensor");
  drpc_value *rl = drpc_value_list_of(1, r);
  CHECK_EQ_INT(drpc_wire_encode(DRPC_MSG_CALL, 0, 1, rl, NULL, &f, &err), 0);
  {
    size_t flen = 0;
    uint8_t *rflat = drpc_outframe_flatten(f, &flen);
    drpc_msg rm = {0};
    CHECK_EQ_INT(drpc_wire_decode(rflat, flen, NULL, &rm, &err), 0);
    CHECK_EQ_INT(rm.nrrefs, 1);
    CHECK(drpc_value_equal(rm.body, rl));
    const drpc_value *back = drpc_list_at(rm.body, 0);
    CHECK(back && back->u.r.handle == NULL);
    CHECK_STR_EQ(back ? back->u.r.type_name : NULL, "tensor");
    drpc_msg_clear(&rm);
    free(rflat);
  }
  drpc_outframe_free(f);
  r->u.r.rref_local_id = (int64_t)DRPC_RREF_MAX_LOCAL_ID;
  CHECK_EQ_INT(drpc_wire_encode(DRPC_MSG_CALL, 0, 1, rl, NULL, &f, &err),
               DRPC_EINVAL);
  CHECK_CONTAINS(err.msg, "rref fork data out of range");
  r->u.r.rref_local_id = 3;
  r->u.r.parent = -1;
  CHECK_EQ_INT(drpc_wire_encode(DRPC_MSG_CALL, 0, 1, rl, NULL, &f, &err),
               DRPC_EINVAL);
  r->u.r.parent = 2;
  r->u.r.handle = (struct drpc_rref *)1; /* never dereferenced */
  CHECK_EQ_INT(drpc_wire_encode(DRPC_MSG_CALL, 0, 1, rl, NULL, &f, &err),
               DRPC_EUNSUPPORTED);
  CHECK_CONTAINS(err.msg, "an RRef handle can only be sent through an agent");
  r->u.r.handle = NULL;
  drpc_value_free(rl);

  static float gpu_mem[4];
  drpc_device cuda = {DRPC_DEVICE_CUDA, 0};
  drpc_storage *gs =
      drpc_storage_wrap(gpu_mem, sizeof(gpu_mem), cuda, NULL, NULL);
  int64_t four = 4;
  drpc_tensor *gt = drpc_tensor_from_storage(gs, DRPC_FLOAT32, 1, &four, 0);
  drpc_storage_decref(gs);
  drpc_value *gv = drpc_value_tensor(gt);
  CHECK_EQ_INT(drpc_wire_encode(DRPC_MSG_CALL, 0, 1, gv, NULL, &f, &err),
               DRPC_EUNSUPPORTED);
  CHECK_CONTAINS(err.msg, "cuda:0");
  CHECK_CONTAINS(err.msg, "can only be sent through an agent");
  drpc_value_free(gv);
  drpc_tensor_decref(gt);

  drpc_value *nt = drpc_value_tensor(NULL);
  CHECK_EQ_INT(drpc_wire_encode(DRPC_MSG_CALL, 0, 1, nt, NULL, &f, &err),
               DRPC_EINVAL);
  drpc_value_free(nt);

  /* More distinct tensors than a frame may carry. */
  drpc_value *many = drpc_value_list();
  for (int i = 0; i <= DRPC_WIRE_MAX_TENSORS; i++) {
    drpc_tensor *x = drpc_tensor_new(DRPC_UINT8, 0, NULL);
    drpc_list_append(many, drpc_value_tensor(x));
    drpc_tensor_decref(x);
  }
  CHECK_EQ_INT(drpc_wire_encode(DRPC_MSG_CALL, 0, 1, many, NULL, &f, &err),
               DRPC_ETOOBIG);
  CHECK_CONTAINS(err.msg, "more than 4096");
  /* Exactly the bound is fine. */
  drpc_value_free(many->u.c.items[--many->u.c.len]);
  roundtrip(DRPC_MSG_CALL, many, NULL);
  drpc_value_free(many);
  drpc_error_clear(&err);
}

/* ---- malformed input --------------------------------------------------- */

static void test_bad_headers(void) {
  bytes p = {{0}, 0};
  b_put(&p, 1, 0);
  size_t len;
  uint8_t *good = build_frame(DRPC_MSG_CALL, &p, 0, 0, &len);
  uint8_t buf[256];

  memcpy(buf, good, len);
  buf[0] = 0x78, buf[1] = 0x56, buf[2] = 0x34, buf[3] = 0x12;
  expect_fail(buf, len, DRPC_EPROTO, "bad magic 0x12345678");

  memcpy(buf, good, len);
  buf[4] = 9;
  expect_fail(buf, len, DRPC_EVERSION,
              "unsupported protocol version 9 (this build speaks 1)");

  memcpy(buf, good, len);
  buf[5] = 200;
  expect_fail(buf, len, DRPC_EPROTO, "unknown message type 200");
  buf[5] = 0;
  expect_fail(buf, len, DRPC_EPROTO, "unknown message type 0");

  expect_fail(good, 10, DRPC_ETRUNC, "truncated header: 10 of 32 bytes");
  expect_fail(good, 0, DRPC_ETRUNC, "truncated header: 0 of 32 bytes");
  expect_fail(good, len - 1, DRPC_ETRUNC, "frame truncated: 63 of 64 bytes");
  memcpy(buf, good, len);
  buf[len] = 0;
  expect_fail(buf, len + 1, DRPC_EPROTO, "1 trailing bytes after a frame");

  /* Lengths above the limits are refused from the header alone. */
  drpc_frame_header h = {DRPC_WIRE_MAGIC,   1, DRPC_MSG_CALL, 0, 0, 0, 1,
                         4294967295ull - 64};
  drpc_wire_header_encode(&h, buf);
  expect_fail(buf, 32, DRPC_ETOOBIG,
              "frame length 4294967295 exceeds limit 1073741824");
  h.data_len = UINT64_MAX;
  drpc_wire_header_encode(&h, buf);
  expect_fail(buf, 32, DRPC_ETOOBIG, "frame length overflows");
  h.data_len = 0;
  h.ntensors = 0;
  h.payload_len = DRPC_WIRE_DEFAULT_MAX_PAYLOAD + 1;
  drpc_wire_header_encode(&h, buf);
  expect_fail(buf, 32, DRPC_ETOOBIG,
              "payload length 67108865 exceeds limit 67108864");
  h.payload_len = 1;
  h.ntensors = 5000;
  h.data_len = 64;
  drpc_wire_header_encode(&h, buf);
  expect_fail(buf, 32, DRPC_ETOOBIG, "tensor count 5000 exceeds limit 4096");
  h.ntensors = 0;
  drpc_wire_header_encode(&h, buf);
  expect_fail(buf, 32, DRPC_EPROTO,
              "data length 64 in a frame with no tensors");

  /* Limits passed by the caller are the ones enforced. */
  drpc_wire_limits lim = {100, 1000, 64};
  h.ntensors = 1;
  h.data_len = 100;
  drpc_wire_header_encode(&h, buf);
  drpc_error err = DRPC_ERROR_INIT;
  drpc_frame_header out;
  CHECK_EQ_INT(drpc_wire_header_decode(buf, 32, &out, &lim, &err),
               DRPC_ETOOBIG);
  CHECK_CONTAINS(err.msg, "frame length 164 exceeds limit 100");
  drpc_error_clear(&err);
  free(good);
}

static void test_bad_payloads(void) {
  bytes p;
  const uint64_t one[1] = {1};

#define RESET() (p.len = 0)
  /* Truncated scalars and lengths. */
  RESET();
  expect_payload_fail(&p, 0, 0, DRPC_ETRUNC,
                      "payload truncated: value tag at offset 0");
  RESET();
  b_put(&p, 6, 5, 0xe8, 0x07, 'a', 'b', 'c');
  b_put(&p, 1, 'd');
  expect_payload_fail(&p, 0, 0, DRPC_ETRUNC,
                      "payload truncated: string length 1000 at offset 0 "
                      "exceeds remaining 4 bytes");
  RESET();
  b_put(&p, 4, 6, 5, 'a', 'b');
  expect_payload_fail(&p, 0, 0, DRPC_ETRUNC, "bytes length 5");
  RESET();
  b_put(&p, 4, 4, 1, 2, 3);
  expect_payload_fail(&p, 0, 0, DRPC_ETRUNC, "float at offset 0");
  RESET();
  b_put(&p, 2, 3, 0x80);
  expect_payload_fail(&p, 0, 0, DRPC_ETRUNC, "payload truncated: int");

  /* Varints. */
  RESET();
  b_put(&p, 1, 3);
  for (int i = 0; i < 9; i++)
    b_put(&p, 1, 0xff);
  b_put(&p, 1, 0x02);
  expect_payload_fail(&p, 0, 0, DRPC_EPROTO,
                      "varint at offset 1 overflows 64 bits");
  p.data[10] = 0xff;
  b_put(&p, 1, 0x01);
  expect_payload_fail(&p, 0, 0, DRPC_EPROTO, "longer than 10 bytes");
  RESET();
  b_put(&p, 1, 3);
  for (int i = 0; i < 9; i++)
    b_put(&p, 1, 0xff);
  b_put(&p, 1, 0x01); /* the largest varint: zigzag of INT64_MIN */
  expect_payload_ok(&p, 0, 0);
  RESET();
  b_put(&p, 3, 3, 0x80, 0x00);
  expect_payload_fail(&p, 0, 0, DRPC_EPROTO, "not minimally encoded");

  /* Nesting and counts. */
  RESET();
  for (int i = 0; i < 100; i++)
    b_put(&p, 2, 7, 1);
  b_put(&p, 1, 0);
  expect_payload_fail(&p, 0, 0, DRPC_ETOOBIG, "value nesting deeper than 64");
  RESET();
  for (int i = 0; i < 1000; i++)
    b_put(&p, 2, 8, 1), b_put(&p, 2, 1, 'k');
  b_put(&p, 1, 0);
  expect_payload_fail(&p, 0, 0, DRPC_ETOOBIG, "value nesting deeper than 64");
  RESET();
  b_put(&p, 1, 7);
  b_varint(&p, 1000000);
  b_put(&p, 2, 0, 0);
  expect_payload_fail(&p, 0, 0, DRPC_ETRUNC,
                      "list count 1000000 at offset 0 exceeds remaining 2 "
                      "bytes");
  RESET();
  b_put(&p, 1, 8);
  b_varint(&p, UINT64_MAX);
  expect_payload_fail(&p, 0, 0, DRPC_ETRUNC,
                      "dict count 18446744073709551615 at offset 0 exceeds "
                      "remaining 0 bytes");
  RESET();
  b_put(&p, 4, 8, 1, 9, 'a');
  expect_payload_fail(&p, 0, 0, DRPC_ETRUNC, "dict key length 9");

  /* Dict keys. */
  RESET();
  b_put(&p, 8, 8, 2, 1, 'a', 0, 1, 'a', 2);
  expect_payload_fail(&p, 0, 0, DRPC_EPROTO, "duplicate dict key \"a\"");
  RESET();
  b_put(&p, 2, 8, 40);
  for (int i = 0; i < 40; i++)
    b_put(&p, 4, 2, 'k', 'A' + (i == 39 ? 5 : i), 0);
  expect_payload_fail(&p, 0, 0, DRPC_EPROTO, "duplicate dict key \"kF\"");
  RESET();
  b_put(&p, 6, 8, 1, 2, 'a', 0, 0);
  expect_payload_fail(&p, 0, 0, DRPC_EPROTO, "contains a NUL byte");

  /* Workers. */
  RESET();
  b_put(&p, 1, 10);
  b_varint(&p, 80000); /* zigzag of 40000 */
  b_put(&p, 1, 0);
  expect_payload_fail(&p, 0, 0, DRPC_EPROTO, "worker id 40000");
  RESET();
  b_put(&p, 5, 10, 2, 2, 'w', 0);
  expect_payload_fail(&p, 0, 0, DRPC_EPROTO, "worker name");
  RESET();
  b_put(&p, 4, 10, 2, 9, 'w');
  expect_payload_fail(&p, 0, 0, DRPC_ETRUNC, "worker name length 9");

  /* RRef fork data: owner, rref id, fork id, parent, type name. */
  RESET();
  b_put(&p, 1, 11);
  expect_payload_fail(&p, 0, 0, DRPC_ETRUNC, "payload truncated: owner");
  RESET();
  b_put(&p, 9, 11, 2, 4, 6, 4, 8, 4, 1, 'x');
  expect_payload_ok(&p, 0, 0);
  RESET();
  b_put(&p, 8, 11, 1, 4, 6, 4, 8, 4, 0); /* owner -1 */
  expect_payload_fail(&p, 0, 0, DRPC_EPROTO, "rref owner -1");
  RESET();
  b_put(&p, 8, 11, 2, 4, 6, 4, 8, 3, 0); /* parent -2 */
  expect_payload_fail(&p, 0, 0, DRPC_EPROTO, "rref parent -2");
  RESET();
  b_put(&p, 3, 11, 2, 4);
  for (int i = 0; i < 6; i++)
    b_put(&p, 1, 0x80);
  b_put(&p, 1, 0x40); /* local id 2^48 */
  b_put(&p, 4, 4, 8, 4, 0);
  expect_payload_fail(&p, 0, 0, DRPC_EPROTO, "rref local_id 281474976710656");
  RESET();
  b_put(&p, 10, 11, 2, 4, 6, 4, 8, 4, 2, 'x', 0);
  expect_payload_fail(&p, 0, 0, DRPC_EPROTO, "rref type name");
  RESET();
  b_put(&p, 8, 11, 2, 4, 6, 4, 8, 4, 9);
  expect_payload_fail(&p, 0, 0, DRPC_ETRUNC, "rref type name length 9");
  /* Tags. */
  RESET();
  b_put(&p, 1, 13);
  expect_payload_fail(&p, 0, 0, DRPC_EPROTO, "unknown value tag 13");
  RESET();
  b_put(&p, 2, 0, 0);
  expect_payload_fail(&p, 0, 0, DRPC_EPROTO,
                      "trailing 1 bytes after the body value");

  /* Tensor descriptors. */
  RESET();
  b_put(&p, 2, 9, 0);
  expect_payload_fail(&p, 1, 4, DRPC_ETRUNC, "tensor descriptor at offset 0");
  RESET();
  b_put(&p, 6, 9, 7, 0, 0xff, 0, 0);
  expect_payload_fail(&p, 1, 4, DRPC_EPROTO, "invalid dtype 7");
  RESET();
  b_put(&p, 5, 9, 0, 0, 0xff, 9);
  for (int i = 0; i < 10; i++)
    b_put(&p, 1, 1);
  expect_payload_fail(&p, 1, 4, DRPC_EPROTO, "tensor ndim 9 exceeds 8");
  RESET();
  b_put(&p, 6, 9, 0, 5, 0xff, 0, 0);
  expect_payload_fail(&p, 1, 4, DRPC_EPROTO, "unknown device type 5");
  RESET();
  b_put(&p, 6, 9, 0, 0, 3, 0, 0);
  expect_payload_fail(&p, 1, 4, DRPC_EPROTO, "cpu device index 3");
  RESET();
  b_put(&p, 6, 9, 0, 1, 0x80, 0, 0);
  expect_payload_fail(&p, 1, 4, DRPC_EPROTO, "cuda device index -128");
  RESET();
  b_put(&p, 6, 9, 0, 1, 0, 0, 0);
  expect_payload_ok(&p, 1, 4); /* the receiver's agent places it */
  /* Shared tensors: CUDA only, handle 1..DRPC_WIRE_MAX_HANDLE bytes. */
  RESET();
  b_put(&p, 7, 12, 0, 1, 0, 0, 1, 'h');
  expect_payload_ok(&p, 0, 0);
  RESET();
  b_put(&p, 7, 12, 0, 0, 0xff, 0, 1, 'h');
  expect_payload_fail(&p, 0, 0, DRPC_EPROTO, "is not on a CUDA device");
  RESET();
  b_put(&p, 6, 12, 0, 1, 0, 0, 0);
  expect_payload_fail(&p, 0, 0, DRPC_EPROTO, "handle of 0 bytes");
  RESET();
  b_put(&p, 5, 12, 0, 1, 0, 0);
  b_varint(&p, DRPC_WIRE_MAX_HANDLE + 1);
  for (int i = 0; i <= DRPC_WIRE_MAX_HANDLE; i++)
    b_put(&p, 1, 7);
  expect_payload_fail(&p, 0, 0, DRPC_EPROTO, "handle of 257 bytes");
  RESET();
  b_put(&p, 7, 12, 0, 1, 0, 0, 4, 'h');
  expect_payload_fail(&p, 0, 0, DRPC_ETRUNC, "handle length");
  RESET();
  uint64_t neg[1] = {1ull << 63};
  b_tensor(&p, 0, 1, neg, 0);
  expect_payload_fail(&p, 1, 4, DRPC_EPROTO, "is negative");
  RESET();
  uint64_t huge[2] = {1ull << 62, 1ull << 62};
  b_tensor(&p, 0, 2, huge, 0);
  expect_payload_fail(&p, 1, 4, DRPC_EPROTO, "tensor shape product overflows");
  RESET();
  uint64_t wide[1] = {1ull << 62};
  b_tensor(&p, DRPC_FLOAT64, 1, wide, 0);
  expect_payload_fail(&p, 1, 4, DRPC_EPROTO, "tensor size overflows");
  RESET();
  uint64_t empty_huge[3] = {0, 1ull << 62, 1ull << 62};
  b_tensor(&p, 0, 3, empty_huge, 0);
  expect_payload_fail(&p, 1, 0, DRPC_EPROTO, "overflows");

  /* Tensor indices and the data section. */
  RESET();
  b_put(&p, 2, 7, 2);
  b_tensor(&p, 0, 1, one, 0);
  b_tensor(&p, 0, 1, one, 3);
  expect_payload_fail(&p, 2, 68, DRPC_EPROTO,
                      "tensor index 3 out of range (frame has 2 tensors)");
  RESET();
  b_tensor(&p, 0, 0, NULL, 0);
  expect_payload_fail(&p, 0, 0, DRPC_EPROTO,
                      "tensor index 0 out of range (frame has 0 tensors)");
  RESET();
  b_tensor(&p, 0, 0, NULL, 0);
  expect_payload_fail(&p, 3, 4, DRPC_EPROTO,
                      "tensor 1 declared but never referenced");
  RESET();
  const uint64_t k1024[1] = {1024};
  b_tensor(&p, 0, 1, k1024, 0);
  expect_payload_fail(&p, 1, 100, DRPC_EPROTO,
                      "data length 100 does not match tensors' 4096 bytes");
  expect_payload_fail(&p, 1, 4160, DRPC_EPROTO,
                      "data length 4160 does not match tensors' 4096 bytes");
  expect_payload_ok(&p, 1, 4096);
  RESET();
  const uint64_t two[1] = {2};
  b_put(&p, 2, 7, 2);
  b_tensor(&p, 0, 1, one, 0);
  b_tensor(&p, 0, 1, two, 0);
  expect_payload_fail(&p, 1, 4, DRPC_EPROTO,
                      "tensor 0 at offset 9 does not match its first "
                      "reference");
  /* Two tensors of 4 bytes: the second starts at the next boundary. */
  RESET();
  b_put(&p, 2, 7, 2);
  b_tensor(&p, 0, 1, one, 0);
  b_tensor(&p, 0, 1, one, 1);
  expect_payload_fail(&p, 2, 8, DRPC_EPROTO,
                      "data length 8 does not match tensors' 68 bytes");
  expect_payload_ok(&p, 2, 68);
  /* Indices may appear in any order as long as all are used. */
  RESET();
  b_put(&p, 2, 7, 2);
  b_tensor(&p, 0, 1, one, 1);
  b_tensor(&p, 0, 1, two, 0);
  expect_payload_ok(&p, 2, 68);
  /* Empty tensors take no room: all-empty frames have no data at all. */
  RESET();
  const uint64_t zero[1] = {0};
  b_tensor(&p, 0, 1, zero, 0);
  expect_payload_ok(&p, 1, 0);
  expect_payload_fail(&p, 1, 64, DRPC_EPROTO,
                      "data length 64 does not match tensors' 0 bytes");
#undef RESET
}

/* ---- robustness -------------------------------------------------------- */

static size_t payload_len_of(const uint8_t *frame) {
  return (size_t)frame[16] | (size_t)frame[17] << 8 | (size_t)frame[18] << 16 |
         (size_t)frame[19] << 24;
}

static uint8_t *fuzz_base(size_t *len) {
  int64_t s1[2] = {2, 3}, s2[1] = {5}, s3[1] = {0};
  drpc_tensor *a = make_tensor(DRPC_FLOAT32, 2, s1, 1);
  drpc_tensor *b = make_tensor(DRPC_INT64, 1, s2, 2);
  drpc_tensor *c = make_tensor(DRPC_UINT8, 1, s3, 3);
  drpc_value *d = drpc_value_dict();
  drpc_dict_set(d, "alpha", drpc_value_int(-300));
  drpc_dict_set(
      d, "beta",
      drpc_value_list_of(2, drpc_value_tensor(a), drpc_value_bool(true)));
  drpc_dict_set(d, "g", drpc_value_bytes("\x00\x01", 2));
  drpc_value *body = drpc_value_list_of(
      7, drpc_value_tensor(a), drpc_value_str("fn"), d, drpc_value_tensor(b),
      drpc_value_float(0.5), drpc_value_worker(3, "w3"), drpc_value_tensor(c));
  uint8_t *flat = encode_flat(DRPC_MSG_REMOTE_CALL, 1, 42, body, len);
  drpc_value_free(body);
  drpc_tensor_decref(a);
  drpc_tensor_decref(b);
  drpc_tensor_decref(c);
  return flat;
}

/* Decodes a possibly damaged frame. Whatever it holds, decoding must not
 * crash; when it succeeds, both paths agree and encoding the result gives
 * back the same bytes apart from padding, which is never read. */
static void check_mutant(const uint8_t *buf, size_t len, bool exact) {
  drpc_msg m, s;
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_wire_decode(buf, len, NULL, &m, &err);
  CHECK(rc <= 0);
  if (rc != 0) {
    CHECK(err.msg != NULL);
    CHECK(m.body == NULL && m.ntensors == 0);
  }
  int rc2 = streamed_decode(buf, len, &s, NULL);
  if (rc == 0 || rc2 == 0) {
    CHECK_EQ_INT(rc2, rc);
  }
  if (rc == 0 && rc2 == 0) {
    drpc_outframe *f;
    int erc = drpc_wire_encode(m.type, m.flags, m.id, m.body, NULL, &f, NULL);
    CHECK_EQ_INT(erc, 0);
    if (erc == 0 && exact) {
      size_t len2;
      uint8_t *flat2 = drpc_outframe_flatten(f, &len2);
      CHECK_EQ_INT(len2, len);
      if (len2 == len) {
        /* Blank the padding of the damaged frame, then compare. */
        uint8_t *canon = malloc(len);
        memcpy(canon, buf, len);
        size_t plen_end = DRPC_WIRE_HEADER_SIZE + payload_len_of(flat2);
        memset(canon + plen_end, 0, f->head_len - plen_end);
        static const uint8_t zeros[DRPC_TENSOR_ALIGN];
        struct iovec iov[16];
        size_t n = drpc_outframe_iov(f, 0, iov, 16, zeros);
        uint64_t pos = 0;
        for (size_t i = 0; i < n && i < 16; i++) {
          if (iov[i].iov_base == zeros)
            memset(canon + pos, 0, iov[i].iov_len);
          pos += iov[i].iov_len;
        }
        CHECK(memcmp(canon, flat2, len) == 0);
        free(canon);
      }
      free(flat2);
    }
    if (erc == 0)
      drpc_outframe_free(f);
  }
  drpc_msg_clear(&m);
  drpc_msg_clear(&s);
  drpc_error_clear(&err);
}

static void test_flip_every_byte(void) {
  size_t len;
  uint8_t *base = fuzz_base(&len);
  uint8_t *buf = malloc(len);
  const int masks[] = {0x01, 0x02, 0x10, 0x40, 0x80, 0xff};
  int before = test_failed_;
  for (size_t i = 0; i < len; i++) {
    for (size_t k = 0; k < sizeof(masks) / sizeof(masks[0]); k++) {
      memcpy(buf, base, len);
      buf[i] ^= (uint8_t)masks[k];
      check_mutant(buf, len, true);
      if (test_failed_ != before) {
        fprintf(stderr, "  first failure at byte %zu mask 0x%02x\n", i,
                masks[k]);
        goto out;
      }
    }
    memcpy(buf, base, len);
    buf[i] = 0;
    check_mutant(buf, len, true);
  }
out:
  free(buf);
  free(base);
}

static void test_truncate_everywhere(void) {
  size_t len;
  uint8_t *base = fuzz_base(&len);
  /* Cutting the buffer anywhere leaves a frame that cannot decode. */
  for (size_t cut = 0; cut < len; cut++) {
    uint8_t *buf = malloc(cut ? cut : 1);
    memcpy(buf, base, cut);
    drpc_msg m;
    int rc = drpc_wire_decode(buf, cut, NULL, &m, NULL);
    CHECK(rc < 0);
    free(buf);
  }
  /* A consistent header over a shortened payload: every prefix of the body
   * is either refused or decodes cleanly. */
  drpc_frame_header h;
  CHECK_EQ_INT(drpc_wire_header_decode(base, len, &h, NULL, NULL), 0);
  uint64_t off = drpc_wire_data_offset(h.payload_len);
  for (uint32_t plen = 0; plen < h.payload_len; plen++) {
    drpc_frame_header t = h;
    t.payload_len = plen;
    uint64_t toff = drpc_wire_data_offset(plen);
    size_t tlen = (size_t)(toff + h.data_len);
    uint8_t *buf = calloc(1, tlen);
    drpc_wire_header_encode(&t, buf);
    memcpy(buf + 32, base + 32, plen);
    memcpy(buf + toff, base + off, (size_t)h.data_len);
    check_mutant(buf, tlen, false);
    free(buf);
  }
  free(base);
}

/* A small generator so a failing run can be repeated from its seed. */
static uint64_t rng_next(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

static void test_random_mutations(void) {
  uint64_t seed = 0x5eed5eedull;
  const char *env = getenv("DRPC_TEST_SEED");
  if (env)
    seed = strtoull(env, NULL, 0);
  fprintf(stderr, "  seed %llu (DRPC_TEST_SEED=%llu to repeat)\n",
          (unsigned long long)seed, (unsigned long long)seed);
  uint64_t s = seed ? seed : 1;
  size_t len;
  uint8_t *base = fuzz_base(&len);
  uint8_t *buf = malloc(len);
  for (int iter = 0; iter < 20000; iter++) {
    memcpy(buf, base, len);
    int nmut = 1 + (int)(rng_next(&s) % 4);
    for (int k = 0; k < nmut; k++) {
      /* Most damage goes to the header and payload, where parsing is. */
      size_t limit = rng_next(&s) % 4 ? 32 + payload_len_of(base) : len;
      buf[rng_next(&s) % limit] = (uint8_t)rng_next(&s);
    }
    check_mutant(buf, len, false);
  }
  free(buf);
  free(base);
}

/* ---- devices: target devices, shared tensors, hooks --------------------- */

typedef struct plan_ctx {
  int calls;
  drpc_device target;
  bool share;    /* share by handle instead of sending bytes */
  bool bad;      /* return data of the wrong size */
  int fail_code; /* fail the encode */
} plan_ctx;

static int test_plan(void *ctx, drpc_tensor *t, drpc_wire_tensor_plan *pl,
                     drpc_error *err) {
  plan_ctx *c = ctx;
  c->calls++;
  if (c->fail_code)
    return drpc_error_set(err, c->fail_code, "hook refused");
  pl->target = c->target;
  if (c->share) {
    pl->handle_len = 3;
    memcpy(pl->handle, "abc", 3);
    return 0;
  }
  if (c->bad) {
    int64_t one = 1;
    pl->send = drpc_tensor_new(t->dtype, 1, &one);
    return 0;
  }
  drpc_tensor_incref(t);
  pl->send = t;
  return 0;
}

static void test_device_descriptors(void) {
  drpc_error err = DRPC_ERROR_INIT;
  int64_t shape[2] = {2, 3};
  drpc_tensor *a = make_tensor(DRPC_FLOAT32, 2, shape, 1);
  drpc_tensor *b = make_tensor(DRPC_INT64, 1, shape, 2);
  /* a twice, b once: the hook sees each distinct tensor once. */
  drpc_value *body = drpc_value_list_of(
      3, drpc_value_tensor(a), drpc_value_tensor(b), drpc_value_tensor(a));
  plan_ctx pc = {0, {DRPC_DEVICE_CUDA, 1}, false, false, 0};
  drpc_wire_hooks hooks = {NULL, NULL, test_plan, &pc};
  drpc_outframe *f = NULL;
  CHECK_EQ_INT(
      drpc_wire_encode_hooks(DRPC_MSG_CALL, 0, 7, body, NULL, &hooks, &f, &err),
      0);
  CHECK_EQ_INT(pc.calls, 2);
  size_t len = 0;
  uint8_t *flat = drpc_outframe_flatten(f, &len);
  drpc_msg m;
  CHECK_EQ_INT(drpc_wire_decode(flat, len, NULL, &m, &err), 0);
  CHECK_EQ_INT(m.ntensors, 2);
  CHECK(m.devices != NULL);
  if (m.devices) {
    CHECK(drpc_device_equal(m.devices[0], pc.target));
    CHECK(drpc_device_equal(m.devices[1], pc.target));
  }
  /* Decoded tensors hold the bytes on the CPU until an agent places them. */
  CHECK(m.tensors[0]->storage->device.type == DRPC_DEVICE_CPU);
  CHECK(drpc_tensor_equal(m.tensors[0], a));
  CHECK(drpc_list_at(m.body, 0)->u.t == drpc_list_at(m.body, 2)->u.t);
  /* Re-encoding the decoded message gives the frame's bytes back. */
  drpc_outframe *g = NULL;
  CHECK_EQ_INT(drpc_wire_encode_msg(&m, NULL, &g, &err), 0);
  size_t glen = 0;
  uint8_t *gflat = g ? drpc_outframe_flatten(g, &glen) : NULL;
  CHECK(gflat && glen == len && memcmp(gflat, flat, len) == 0);
  free(gflat);
  drpc_outframe_free(g);
  drpc_msg_clear(&m);
  free(flat);
  drpc_outframe_free(f);

  /* Shared by handle: no data section; the body holds a placeholder. */
  pc = (plan_ctx){0, {DRPC_DEVICE_CUDA, 0}, true, false, 0};
  CHECK_EQ_INT(
      drpc_wire_encode_hooks(DRPC_MSG_CALL, 0, 7, body, NULL, &hooks, &f, &err),
      0);
  CHECK_EQ_INT(f->ntensors, 0);
  flat = drpc_outframe_flatten(f, &len);
  CHECK_EQ_INT(drpc_wire_decode(flat, len, NULL, &m, &err), 0);
  CHECK_EQ_INT(m.ntensors, 0);
  /* a and b had the same handle but different dtypes and shapes. */
  CHECK_EQ_INT(m.nshared, 2);
  if (m.nshared == 2) {
    CHECK_EQ_INT(m.shared[0].ndim, 2);
    CHECK_EQ_INT(m.shared[0].shape[1], 3);
    CHECK_EQ_INT(m.shared[0].handle_len, 3);
    CHECK(memcmp(m.shared[0].handle, "abc", 3) == 0);
    CHECK_EQ_INT(m.shared[1].dtype, DRPC_INT64);
    CHECK(drpc_list_at(m.body, 0)->u.t == m.shared[0].tensor);
    CHECK(drpc_list_at(m.body, 2)->u.t == m.shared[0].tensor);
    CHECK_EQ_INT((int)drpc_tensor_nbytes(m.shared[0].tensor), 0);
  }
  CHECK_EQ_INT(drpc_wire_encode_msg(&m, NULL, &g, &err), 0);
  gflat = g ? drpc_outframe_flatten(g, &glen) : NULL;
  CHECK(gflat && glen == len && memcmp(gflat, flat, len) == 0);
  free(gflat);
  drpc_outframe_free(g);
  drpc_msg_clear(&m);
  free(flat);
  drpc_outframe_free(f);

  /* Hooks that fail or answer nonsense fail the encode cleanly. */
  pc = (plan_ctx){0, {DRPC_DEVICE_CUDA, 0}, false, false, DRPC_EINVAL};
  CHECK_EQ_INT(
      drpc_wire_encode_hooks(DRPC_MSG_CALL, 0, 7, body, NULL, &hooks, &f, &err),
      DRPC_EINVAL);
  CHECK_CONTAINS(err.msg, "hook refused");
  pc = (plan_ctx){0, {DRPC_DEVICE_CUDA, 0}, false, true, 0};
  CHECK_EQ_INT(
      drpc_wire_encode_hooks(DRPC_MSG_CALL, 0, 7, body, NULL, &hooks, &f, &err),
      DRPC_EINVAL);
  CHECK_CONTAINS(err.msg, "not a CPU copy");
  pc = (plan_ctx){0, {DRPC_DEVICE_CPU, 3}, false, false, 0};
  CHECK_EQ_INT(
      drpc_wire_encode_hooks(DRPC_MSG_CALL, 0, 7, body, NULL, &hooks, &f, &err),
      DRPC_EINVAL);
  CHECK_CONTAINS(err.msg, "invalid target device");
  CHECK(f == NULL);
  drpc_value_free(body);
  drpc_tensor_decref(a);
  drpc_tensor_decref(b);
  drpc_error_clear(&err);
}

int main(void) {
  RUN(test_error_object);
  RUN(test_header_layout);
  RUN(test_sizes_and_limits);
  RUN(test_msg_types);
  RUN(test_golden_payload);
  RUN(test_roundtrip_kinds);
  RUN(test_roundtrip_big_containers);
  RUN(test_float_bits);
  RUN(test_tensor_dtypes);
  RUN(test_tensor_shared);
  RUN(test_non_contiguous);
  RUN(test_data_alignment);
  RUN(test_partial_iov);
  RUN(test_set_id);
  RUN(test_encode_limits);
  RUN(test_bad_headers);
  RUN(test_bad_payloads);
  RUN(test_device_descriptors);
  RUN(test_flip_every_byte);
  RUN(test_truncate_everywhere);
  RUN(test_random_mutations);
  return test_finish();
}
