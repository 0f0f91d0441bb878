/* fuzz_wire: arbitrary bytes through the frame decoder, whole-buffer and
 * streamed (header, payload, then the data section through its iovecs).
 * Both must agree, and a frame that decodes must encode back to its own
 * bytes.
 *
 * Two differences are tolerated because the codec allows them on purpose
 * (tests/test_wire.c says so): padding bytes are never read, so a frame
 * may carry non-zero padding that re-encodes as zeros; and tensor indices
 * may appear in any order, which the encoder renumbers by first use. A
 * frame with non-zero padding must re-encode to its own bytes outside the
 * padding; a renumbered frame lays its data section out in the new order,
 * so its padding and length may change, and the check is that the
 * re-encoding is a fixed point with the same tree. DRPC_FUZZ_STRICT=1 in the
 * environment turns both into failures, to show what a strict decoder would
 * have to reject. */
#include "fuzz.h"
#include "valgen.h"

#include "drpc/wire.h"

#include <stdbool.h>
#include <string.h>
#include <sys/uio.h>

/* Inputs above this are cut short: frames in the corpus are small, and
 * hashing a megabyte per run only slows the search. */
#define MAX_INPUT (1u << 20)

static bool strict_mode(void) {
  static int strict = -1;
  if (strict < 0) {
    const char *s = getenv("DRPC_FUZZ_STRICT");
    strict = s && s[0] == '1';
  }
  return strict;
}

static uint64_t align_up(uint64_t x) {
  return (x + DRPC_TENSOR_ALIGN - 1) & ~(uint64_t)(DRPC_TENSOR_ALIGN - 1);
}

/* The backend's path: header, payload, then the data section read straight
 * into the tensors through drpc_wire_data_iov. */
static int streamed_decode(const uint8_t *buf, size_t len,
                           const drpc_wire_limits *lim, drpc_msg *out) {
  memset(out, 0, sizeof(*out));
  drpc_frame_header h;
  int rc = drpc_wire_header_decode(buf, len, &h, lim, NULL);
  if (rc)
    return rc;
  if ((uint64_t)len < (uint64_t)DRPC_WIRE_HEADER_SIZE + h.payload_len)
    return DRPC_ETRUNC;
  rc =
      drpc_wire_decode_payload(&h, buf + DRPC_WIRE_HEADER_SIZE, lim, out, NULL);
  if (rc)
    return rc;
  uint64_t total = 0;
  FUZZ_CHECK(drpc_wire_frame_size(&h, &total) == 0, "checked header");
  if ((uint64_t)len != total) {
    drpc_msg_clear(out);
    return (uint64_t)len < total ? DRPC_ETRUNC : DRPC_EPROTO;
  }
  uint64_t off = drpc_wire_data_offset(h.payload_len);
  uint8_t pad[DRPC_TENSOR_ALIGN];
  size_t n = drpc_wire_data_iov(out, off, NULL, 0, pad);
  struct iovec *iov = calloc(n ? n : 1, sizeof(*iov));
  FUZZ_CHECK(iov != NULL, "out of memory");
  FUZZ_CHECK(drpc_wire_data_iov(out, off, iov, n, pad) == n, "iov count");
  uint64_t pos = off;
  for (size_t i = 0; i < n; i++) {
    FUZZ_CHECK(pos + iov[i].iov_len <= len, "iov %zu past the frame", i);
    if (iov[i].iov_base == pad)
      FUZZ_CHECK(iov[i].iov_len < DRPC_TENSOR_ALIGN, "padding too long");
    else
      memcpy(iov[i].iov_base, buf + pos, iov[i].iov_len);
    pos += iov[i].iov_len;
  }
  FUZZ_CHECK(pos == len, "data section ends at %llu of %zu",
             (unsigned long long)pos, len);
  free(iov);
  return 0;
}

static uint32_t count_rrefs(const drpc_value *v) {
  if (!v)
    return 0;
  if (v->kind == DRPC_VAL_RREF)
    return 1;
  uint32_t n = 0;
  if (v->kind == DRPC_VAL_LIST || v->kind == DRPC_VAL_DICT)
    for (size_t i = 0; i < v->u.c.len; i++)
      n += count_rrefs(v->u.c.items[i]);
  return n;
}

/* Marks the padding of a decoded frame's layout in mask. */
static void mark_padding(const drpc_msg *m, uint32_t payload_len, size_t len,
                         uint8_t *mask) {
  uint64_t end = (uint64_t)DRPC_WIRE_HEADER_SIZE + payload_len;
  uint64_t pos = drpc_wire_data_offset(payload_len);
  for (uint64_t i = end; i < pos && i < len; i++)
    mask[i] = 1;
  for (uint32_t t = 0; t < m->ntensors; t++) {
    size_t nb = drpc_tensor_nbytes(m->tensors[t]);
    if (nb == 0)
      continue;
    uint64_t start = align_up(pos);
    for (uint64_t i = pos; i < start && i < len; i++)
      mask[i] = 1;
    pos = start + nb;
  }
}

static uint8_t *encode(const drpc_msg *m, const drpc_wire_limits *lim,
                       size_t *len, drpc_outframe **keep) {
  drpc_outframe *f = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_wire_encode_msg(m, lim, &f, &err);
  FUZZ_CHECK(rc == 0, "a decoded frame does not encode: %s",
             drpc_error_message(&err));
  uint8_t *flat = drpc_outframe_flatten(f, len);
  FUZZ_CHECK(flat != NULL, "flatten");
  if (keep)
    *keep = f;
  else
    drpc_outframe_free(f);
  return flat;
}

/* The outframe's iovecs from byte `from` gather exactly flat[from..]. */
static void check_iov(const drpc_outframe *f, const uint8_t *flat, size_t len,
                      uint64_t from) {
  static const uint8_t zeros[DRPC_TENSOR_ALIGN];
  size_t n = drpc_outframe_iov(f, from, NULL, 0, zeros);
  struct iovec *iov = calloc(n ? n : 1, sizeof(*iov));
  FUZZ_CHECK(iov != NULL, "out of memory");
  FUZZ_CHECK(drpc_outframe_iov(f, from, iov, n, zeros) == n, "iov count");
  uint64_t pos = from;
  for (size_t i = 0; i < n; i++) {
    FUZZ_CHECK(pos + iov[i].iov_len <= len, "iov past the frame");
    FUZZ_CHECK(memcmp(iov[i].iov_base, flat + pos, iov[i].iov_len) == 0,
               "iov %zu differs from the flattened frame", i);
    pos += iov[i].iov_len;
  }
  FUZZ_CHECK(pos == (from < len ? len : from), "iov ends at %llu of %zu",
             (unsigned long long)pos, len);
  free(iov);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > MAX_INPUT)
    size = MAX_INPUT;
  drpc_wire_limits lim;
  drpc_wire_limits_default(&lim);
  /* Small enough that a header alone cannot make the streamed path reserve
   * much memory; the rules checked do not depend on the bound. */
  lim.max_frame = 4u << 20;

  drpc_msg m, s;
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_wire_decode(data, size, &lim, &m, &err);
  FUZZ_CHECK(rc <= 0, "positive return %d", rc);
  int rc2 = streamed_decode(data, size, &lim, &s);
  FUZZ_CHECK((rc == 0) == (rc2 == 0),
             "whole-buffer decode %d (%s) and streamed decode %d disagree", rc,
             drpc_error_message(&err), rc2);
  if (rc) {
    FUZZ_CHECK(err.msg != NULL, "error %d without a message", rc);
    FUZZ_CHECK(m.body == NULL && m.ntensors == 0 && m.tensors == NULL,
               "a failed decode left a message behind");
    drpc_error_clear(&err);
    return 0;
  }

  FUZZ_CHECK(m.type == data[5] && m.id == s.id && m.flags == s.flags,
             "header fields");
  FUZZ_CHECK(m.nrrefs == count_rrefs(m.body), "nrrefs %u", m.nrrefs);
  FUZZ_CHECK(vg_same(m.body, s.body), "the two decodes give different trees");
  FUZZ_CHECK(m.ntensors == s.ntensors, "tensor counts differ");

  size_t len2;
  drpc_outframe *f;
  uint8_t *flat = encode(&m, &lim, &len2, &f);
  uint32_t payload_len = (uint32_t)data[16] | (uint32_t)data[17] << 8 |
                         (uint32_t)data[18] << 16 | (uint32_t)data[19] << 24;
  bool ordered = vg_tensors_in_order(m.body, m.tensors, m.ntensors);
  FUZZ_CHECK(ordered || !strict_mode(),
             "tensor indices are not numbered by first use (strict mode)");
  if (ordered) {
    FUZZ_CHECK(len2 == size, "re-encoded %zu bytes from a frame of %zu", len2,
               size);
    uint8_t *mask = calloc(size, 1);
    FUZZ_CHECK(mask != NULL, "out of memory");
    mark_padding(&m, payload_len, size, mask);
    for (size_t i = 0; i < size; i++) {
      if (mask[i]) {
        FUZZ_CHECK(flat[i] == 0, "encoder wrote padding byte %zu as %u", i,
                   flat[i]);
        FUZZ_CHECK(data[i] == 0 || !strict_mode(),
                   "non-zero padding byte at %zu accepted (strict mode)", i);
      } else {
        FUZZ_CHECK(flat[i] == data[i],
                   "re-encoding differs at byte %zu: %u, input %u", i, flat[i],
                   data[i]);
      }
    }
    free(mask);
  } else {
    /* Renumbered: the tensors move into first-use order, so the padding
     * before each one (and a varint index's width) changes and the length
     * may too; the re-encoding must be canonical itself. */
    drpc_msg m2;
    FUZZ_CHECK(drpc_wire_decode(flat, len2, &lim, &m2, NULL) == 0,
               "a re-encoded frame does not decode");
    FUZZ_CHECK(vg_same(m.body, m2.body), "renumbered tree differs");
    FUZZ_CHECK(vg_tensors_in_order(m2.body, m2.tensors, m2.ntensors),
               "the encoder's numbering is not by first use");
    size_t len3;
    uint8_t *flat3 = encode(&m2, &lim, &len3, NULL);
    FUZZ_CHECK(len3 == len2 && memcmp(flat3, flat, len2) == 0,
               "re-encoding is not a fixed point");
    free(flat3);
    drpc_msg_clear(&m2);
  }
  check_iov(f, flat, len2,
            size > 40 ? (uint64_t)data[size - 1] * len2 / 255 : 0);
  drpc_outframe_free(f);
  free(flat);
  drpc_msg_clear(&m);
  drpc_msg_clear(&s);
  return 0;
}
