/* fuzz_values: value trees through the value codec, with the nesting and
 * size limits as an oracle.
 *
 * The first byte picks the mode. Build modes (0, 1) read limits, then a
 * tree in the valgen grammar (valgen.h); an independent model of the
 * encoding predicts whether the encoder must accept it (EINVAL past the
 * depth limit or for rref fork data out of range, ETOOBIG past the payload
 * limit) and how long the payload is; what encodes must decode to the same
 * tree and re-encode to the same bytes, and the decoder must refuse it one
 * level shallower. Raw modes (2, 3) hand the rest of the input to the
 * payload decoder as the body of a RESPONSE with 0..3 tensors; what decodes
 * must re-encode to the same payload bytes. */
#include "fuzz.h"
#include "valgen.h"

#include "drpc/error.h"
#include "drpc/wire.h"

#include <inttypes.h>
#include <string.h>

#define MAX_NODES 2000

/* ---- the model ------------------------------------------------------------
 */

typedef struct model {
  uint32_t max_depth;
  bool invalid;   /* the encoder must fail with EINVAL */
  uint64_t size;  /* payload bytes */
  uint32_t depth; /* deepest node, the root at 1 */
  const drpc_tensor *seen[MAX_NODES];
  uint32_t nseen;
} model;

static uint64_t varint_len(uint64_t v) {
  uint64_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    n++;
  }
  return n;
}

static uint64_t zz(int64_t i) {
  return i < 0 ? ~((uint64_t)i << 1) : (uint64_t)i << 1;
}

static uint64_t slen(const char *s) {
  return s ? strlen(s) : 0;
}

/* The data-section index the encoder gives t: its first-use position. */
static uint32_t tensor_index(model *m, const drpc_tensor *t) {
  for (uint32_t i = 0; i < m->nseen; i++)
    if (m->seen[i] == t)
      return i;
  m->seen[m->nseen] = t;
  return m->nseen++;
}

static bool local_id_ok(int64_t id) {
  return id >= 0 && id < (int64_t)DRPC_RREF_MAX_LOCAL_ID;
}

static void walk(model *m, const drpc_value *v, uint32_t depth) {
  if (depth > m->depth)
    m->depth = depth;
  if (depth > m->max_depth)
    m->invalid = true;
  uint64_t n = 1;
  switch (v->kind) {
  case DRPC_VAL_NIL:
  case DRPC_VAL_BOOL:
    break;
  case DRPC_VAL_INT:
    n += varint_len(zz(v->u.i));
    break;
  case DRPC_VAL_FLOAT:
    n += 8;
    break;
  case DRPC_VAL_STR:
  case DRPC_VAL_BYTES:
    n += varint_len(v->u.s.len) + v->u.s.len;
    break;
  case DRPC_VAL_LIST:
  case DRPC_VAL_DICT:
    n += varint_len(v->u.c.len);
    for (size_t i = 0; i < v->u.c.len; i++) {
      if (v->kind == DRPC_VAL_DICT)
        n += varint_len(slen(v->u.c.keys[i])) + slen(v->u.c.keys[i]);
      walk(m, v->u.c.items[i], depth + 1);
    }
    break;
  case DRPC_VAL_TENSOR: {
    const drpc_tensor *t = v->u.t;
    n += 4 + varint_len(tensor_index(m, t));
    for (int d = 0; d < t->ndim; d++)
      n += varint_len((uint64_t)t->shape[d]);
    break;
  }
  case DRPC_VAL_WORKER:
    n += varint_len(zz(v->u.w.id)) + varint_len(slen(v->u.w.name)) +
         slen(v->u.w.name);
    break;
  case DRPC_VAL_RREF:
    if (v->u.r.owner < 0 || v->u.r.rref_created_on < 0 ||
        v->u.r.fork_created_on < 0 || v->u.r.parent < 0 ||
        !local_id_ok(v->u.r.rref_local_id) ||
        !local_id_ok(v->u.r.fork_local_id))
      m->invalid = true;
    n += varint_len(zz(v->u.r.owner)) + varint_len(zz(v->u.r.rref_created_on)) +
         varint_len((uint64_t)v->u.r.rref_local_id) +
         varint_len(zz(v->u.r.fork_created_on)) +
         varint_len((uint64_t)v->u.r.fork_local_id) +
         varint_len(zz(v->u.r.parent)) + varint_len(slen(v->u.r.type_name)) +
         slen(v->u.r.type_name);
    break;
  default:
    FUZZ_CHECK(0, "valgen made kind %d", (int)v->kind);
  }
  m->size += n;
}

/* ---- helpers --------------------------------------------------------------
 */

static uint32_t payload_len_of(const uint8_t *head) {
  return (uint32_t)head[16] | (uint32_t)head[17] << 8 |
         (uint32_t)head[18] << 16 | (uint32_t)head[19] << 24;
}

static void check_format(const drpc_value *v, size_t n) {
  char buf[256];
  memset(buf, 'x', sizeof(buf));
  size_t len = drpc_value_format(v, buf, n);
  FUZZ_CHECK(len < n, "format wrote %zu into %zu", len, n);
  FUZZ_CHECK(buf[len] == '\0' && strlen(buf) == len, "format length");
  FUZZ_CHECK(n == sizeof(buf) || buf[n] == 'x', "format wrote past %zu", n);
}

/* ---- build mode ------------------------------------------------------------
 */

static void build_mode(fz *in) {
  drpc_wire_limits lim;
  drpc_wire_limits_default(&lim);
  uint8_t d = fz_u8(in), p = fz_u8(in);
  if (d >= 128)
    lim.max_depth = d - 127u; /* 1 .. 128 */
  if (p >= 200)
    lim.max_payload = (p - 199u) * 16u; /* 16 .. 896 bytes */
  size_t fmt_n = 1 + fz_u8(in);

  vg g;
  vg_init(&g, in, MAX_NODES, true);
  drpc_value *v = vg_value(&g);
  vg_done(&g);

  static model m;
  memset(&m, 0, sizeof(m));
  m.max_depth = lim.max_depth;
  walk(&m, v, 1);
  int want = m.invalid                  ? DRPC_EINVAL
             : m.size > lim.max_payload ? DRPC_ETOOBIG
                                        : 0;

  drpc_value *c = drpc_value_clone(v);
  FUZZ_CHECK(c != NULL, "clone");
  FUZZ_CHECK(vg_same(v, c), "a clone differs");
  FUZZ_CHECK(vg_has_nan(v) || drpc_value_equal(v, c),
             "drpc_value_equal denies a clone");
  drpc_value_free(c);
  check_format(v, fmt_n);

  drpc_outframe *f = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_wire_encode(DRPC_MSG_RESPONSE, 0, 7, v, &lim, &f, &err);
  FUZZ_CHECK(rc == want,
             "encode returned %d (%s), the model says %d (size %" PRIu64
             ", depth %u of %u)",
             rc, drpc_error_message(&err), want, m.size, m.depth,
             lim.max_depth);
  if (rc) {
    FUZZ_CHECK(f == NULL, "a failed encode returned a frame");
    drpc_error_clear(&err);
    drpc_value_free(v);
    return;
  }
  FUZZ_CHECK(payload_len_of(f->head) == m.size,
             "payload is %u bytes, the model says %" PRIu64,
             payload_len_of(f->head), m.size);
  FUZZ_CHECK(f->ntensors == m.nseen, "%u tensors, the model says %u",
             f->ntensors, m.nseen);
  size_t len;
  uint8_t *flat = drpc_outframe_flatten(f, &len);
  drpc_outframe_free(f);

  drpc_msg msg;
  rc = drpc_wire_decode(flat, len, &lim, &msg, &err);
  FUZZ_CHECK(rc == 0, "an encoded tree does not decode: %s",
             drpc_error_message(&err));
  FUZZ_CHECK(vg_same(v, msg.body), "the decoded tree differs");
  FUZZ_CHECK(vg_has_nan(v) || drpc_value_equal(v, msg.body),
             "drpc_value_equal denies the decoded tree");
  drpc_outframe *f2 = NULL;
  FUZZ_CHECK(
      drpc_wire_encode(DRPC_MSG_RESPONSE, 0, 7, msg.body, &lim, &f2, NULL) == 0,
      "a decoded tree does not encode");
  size_t len2;
  uint8_t *flat2 = drpc_outframe_flatten(f2, &len2);
  FUZZ_CHECK(len2 == len && memcmp(flat, flat2, len) == 0,
             "re-encoding a decoded tree changes its bytes");
  drpc_outframe_free(f2);
  free(flat2);
  drpc_msg_clear(&msg);

  /* One level less and the decoder must refuse it, with ETOOBIG. */
  if (m.depth > 1) {
    drpc_wire_limits shallow = lim;
    shallow.max_depth = m.depth - 1;
    rc = drpc_wire_decode(flat, len, &shallow, &msg, &err);
    FUZZ_CHECK(rc == DRPC_ETOOBIG, "depth %u decoded under limit %u: %d",
               m.depth, shallow.max_depth, rc);
    drpc_error_clear(&err);
  }
  free(flat);
  drpc_value_free(v);
}

/* ---- raw mode ---------------------------------------------------------------
 */

static int decode_raw(const uint8_t *p, size_t n, uint32_t ntensors,
                      uint64_t data_len, drpc_msg *out, drpc_error *err) {
  drpc_frame_header h;
  memset(&h, 0, sizeof(h));
  h.magic = DRPC_WIRE_MAGIC;
  h.version = DRPC_WIRE_VERSION;
  h.type = DRPC_MSG_RESPONSE;
  h.payload_len = (uint32_t)n;
  h.ntensors = ntensors;
  h.data_len = data_len;
  drpc_wire_limits lim;
  drpc_wire_limits_default(&lim);
  return drpc_wire_decode_payload(&h, p, &lim, out, err);
}

static void raw_mode(fz *in, uint32_t ntensors) {
  size_t n;
  const uint8_t *p = fz_rest(in, &n);
  if (n > (1u << 16))
    n = 1u << 16;
  drpc_msg m;
  drpc_error err = DRPC_ERROR_INIT;
  int rc = decode_raw(p, n, ntensors, 0, &m, &err);
  /* The data length is not part of the payload: take the one the decoder
   * computed and try again. */
  const char *tag = "does not match tensors' ";
  const char *at = rc && err.msg ? strstr(err.msg, tag) : NULL;
  if (at) {
    uint64_t want = strtoull(at + strlen(tag), NULL, 10);
    drpc_error_clear(&err);
    rc = decode_raw(p, n, ntensors, want, &m, &err);
  }
  FUZZ_CHECK(rc <= 0, "positive return");
  if (rc) {
    FUZZ_CHECK(err.msg != NULL && m.body == NULL, "failure state");
    drpc_error_clear(&err);
    return;
  }
  /* As it arrived: tensors meant for devices (and shared ones) carry
   * their targets outside the body, so the message, not the body alone,
   * re-encodes to the same bytes. */
  drpc_outframe *f = NULL;
  rc = drpc_wire_encode_msg(&m, NULL, &f, &err);
  FUZZ_CHECK(rc == 0, "a decoded body does not encode: %s",
             drpc_error_message(&err));
  if (vg_tensors_in_order(m.body, m.tensors, m.ntensors)) {
    FUZZ_CHECK(payload_len_of(f->head) == n &&
                   memcmp(f->head + DRPC_WIRE_HEADER_SIZE, p, n) == 0,
               "a decoded body re-encodes to other bytes");
  }
  drpc_outframe_free(f);
  drpc_msg_clear(&m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz in;
  fz_init(&in, data, size);
  uint8_t mode = fz_u8(&in);
  if ((mode & 3) < 2)
    build_mode(&in);
  else
    raw_mode(&in, (mode >> 2) & 3);
  return 0;
}
