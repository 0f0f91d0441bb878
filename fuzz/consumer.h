/* Turns fuzzer bytes into integers, bools and byte runs (a C stand-in for
 * libFuzzer's FuzzedDataProvider), plus the matching producer the corpus
 * generator uses to write inputs that decode to chosen values.
 *
 * Two directions. The fz_* readers take from the front, in order, so an
 * input is a readable program (op byte, its arguments, the next op) and the
 * generator can write one with the fzo_* writers. The fz_tail_* readers take
 * from the end, as FuzzedDataProvider does with integers, for targets whose
 * front is a raw message that seeds should still hold intact. Both stop at
 * the other's position. When the input runs out every reader returns zero
 * (or the low bound): loops must check fz_remaining. */
#ifndef DRPC_FUZZ_CONSUMER_H
#define DRPC_FUZZ_CONSUMER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct fz {
  const uint8_t *p; /* unread bytes are p[0 .. len) */
  size_t len;
} fz;

static inline void fz_init(fz *f, const uint8_t *data, size_t size) {
  f->p = data;
  f->len = size;
}

static inline size_t fz_remaining(const fz *f) {
  return f->len;
}

/* Up to nbytes (<= 8) little-endian bytes from the front; missing bytes are
 * zero. */
static inline uint64_t fz_uint(fz *f, int nbytes) {
  uint64_t v = 0;
  for (int i = 0; i < nbytes && f->len; i++) {
    v |= (uint64_t)f->p[0] << (8 * i);
    f->p++;
    f->len--;
  }
  return v;
}

static inline uint8_t fz_u8(fz *f) {
  return (uint8_t)fz_uint(f, 1);
}
static inline uint16_t fz_u16(fz *f) {
  return (uint16_t)fz_uint(f, 2);
}
static inline uint32_t fz_u32(fz *f) {
  return (uint32_t)fz_uint(f, 4);
}
static inline uint64_t fz_u64(fz *f) {
  return fz_uint(f, 8);
}
static inline bool fz_bool(fz *f) {
  return fz_u8(f) & 1;
}

/* Bytes needed to carry any offset in [0, span]. */
static inline int fz_span_bytes(uint64_t span) {
  int n = 0;
  while (span) {
    n++;
    span >>= 8;
  }
  return n;
}

/* A value in [lo, hi], read from as few bytes as the span needs. */
static inline uint64_t fz_range(fz *f, uint64_t lo, uint64_t hi) {
  if (hi <= lo)
    return lo;
  uint64_t span = hi - lo;
  uint64_t v = fz_uint(f, fz_span_bytes(span));
  if (span != UINT64_MAX)
    v %= span + 1;
  return lo + v;
}

/* A run of up to n bytes from the front (borrowed); *got says how many. */
static inline const uint8_t *fz_bytes(fz *f, size_t n, size_t *got) {
  if (n > f->len)
    n = f->len;
  const uint8_t *p = f->p;
  f->p += n;
  f->len -= n;
  *got = n;
  return p;
}

/* A length-prefixed run: a length in [0, max] then that many bytes. */
static inline const uint8_t *fz_blob(fz *f, size_t max, size_t *got) {
  size_t n = (size_t)fz_range(f, 0, max);
  return fz_bytes(f, n, got);
}

/* Everything left (borrowed). */
static inline const uint8_t *fz_rest(fz *f, size_t *got) {
  return fz_bytes(f, f->len, got);
}

/* Up to nbytes (<= 8) bytes from the end, the last byte lowest. */
static inline uint64_t fz_tail_uint(fz *f, int nbytes) {
  uint64_t v = 0;
  for (int i = 0; i < nbytes && f->len; i++) {
    v |= (uint64_t)f->p[f->len - 1] << (8 * i);
    f->len--;
  }
  return v;
}

static inline uint64_t fz_tail_range(fz *f, uint64_t lo, uint64_t hi) {
  if (hi <= lo)
    return lo;
  uint64_t span = hi - lo;
  uint64_t v = fz_tail_uint(f, fz_span_bytes(span));
  if (span != UINT64_MAX)
    v %= span + 1;
  return lo + v;
}

static inline bool fz_tail_bool(fz *f) {
  return fz_tail_uint(f, 1) & 1;
}

/* ---- the producer: writes what the front readers read back ------------- */

typedef struct fzo {
  uint8_t *p;
  size_t len, cap;
} fzo;

static inline void fzo_bytes(fzo *o, const void *src, size_t n) {
  if (o->len + n > o->cap) {
    size_t cap = o->cap ? o->cap : 256;
    while (cap < o->len + n)
      cap *= 2;
    uint8_t *p = realloc(o->p, cap);
    if (!p)
      abort();
    o->p = p;
    o->cap = cap;
  }
  if (n)
    memcpy(o->p + o->len, src, n);
  o->len += n;
}

static inline void fzo_uint(fzo *o, uint64_t v, int nbytes) {
  uint8_t b[8];
  for (int i = 0; i < nbytes; i++)
    b[i] = (uint8_t)(v >> (8 * i));
  fzo_bytes(o, b, (size_t)nbytes);
}

static inline void fzo_u8(fzo *o, uint8_t v) {
  fzo_uint(o, v, 1);
}
static inline void fzo_u16(fzo *o, uint16_t v) {
  fzo_uint(o, v, 2);
}
static inline void fzo_u32(fzo *o, uint32_t v) {
  fzo_uint(o, v, 4);
}
static inline void fzo_u64(fzo *o, uint64_t v) {
  fzo_uint(o, v, 8);
}
static inline void fzo_bool(fzo *o, bool b) {
  fzo_u8(o, b ? 1 : 0);
}

/* Writes v (lo <= v <= hi) so that fz_range(lo, hi) reads it back. */
static inline void fzo_range(fzo *o, uint64_t lo, uint64_t hi, uint64_t v) {
  if (hi <= lo)
    return;
  fzo_uint(o, v - lo, fz_span_bytes(hi - lo));
}

static inline void fzo_blob(fzo *o, size_t max, const void *src, size_t n) {
  fzo_range(o, 0, max, n);
  fzo_bytes(o, src, n);
}

static inline void fzo_free(fzo *o) {
  free(o->p);
  memset(o, 0, sizeof(*o));
}

#endif
