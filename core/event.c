/* The running hash over a node's outputs, shared by the recorder (which
 * stores it) and replay (which recomputes it). Word-at-a-time so hashing a
 * large frame costs little next to sending it. */
#include <string.h>

#include "drpc/env.h"

static uint64_t mix(uint64_t h, uint64_t w) {
  h ^= w;
  h *= 0x9e3779b97f4a7c15ull;
  h ^= h >> 29;
  return h;
}

static uint64_t fold_bytes(uint64_t h, const unsigned char *p, size_t n) {
  h = mix(h, (uint64_t)n);
  while (n >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    h = mix(h, w);
    p += 8;
    n -= 8;
  }
  uint64_t t = 0;
  for (size_t i = 0; i < n; i++)
    t |= (uint64_t)p[i] << (8 * i);
  return mix(h, t);
}

uint64_t drpc_event_fold(uint64_t h, const drpc_event *ev) {
  h = mix(h, (uint64_t)ev->kind);
  h = mix(h, (uint64_t)(uint16_t)ev->peer);
  h = mix(h, ev->id);
  h = mix(h, ev->aux);
  h = fold_bytes(h, ev->bytes, ev->bytes ? ev->len : 0);
  if (ev->name)
    h = fold_bytes(h, (const unsigned char *)ev->name, strlen(ev->name));
  return h;
}

/* ---- payload buffers ------------------------------------------------------
 */

#include <stdlib.h>
#include <sys/uio.h>

#include "drpc/tensor.h"
#include "internal.h"

static bool rbuf_reserve(drpc_rbuf *b, size_t n) {
  if (b->failed)
    return false;
  if (b->cap - b->len >= n)
    return true;
  size_t cap = b->cap ? b->cap : 256;
  while (cap - b->len < n) {
    if (cap > SIZE_MAX / 2) {
      b->failed = true;
      return false;
    }
    cap *= 2;
  }
  uint8_t *p = realloc(b->p, cap);
  if (!p) {
    b->failed = true;
    return false;
  }
  b->p = p;
  b->cap = cap;
  return true;
}

void drpc_rbuf_u64(drpc_rbuf *b, uint64_t v) {
  if ((b->failed || b->cap - b->len < 8) && !rbuf_reserve(b, 8))
    return;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  memcpy(b->p + b->len, &v, 8);
#else
  for (int i = 0; i < 8; i++)
    b->p[b->len + (size_t)i] = (uint8_t)(v >> (8 * i));
#endif
  b->len += 8;
}

void drpc_rbuf_blob(drpc_rbuf *b, const void *p, size_t n) {
  drpc_rbuf_u64(b, n);
  if (!rbuf_reserve(b, n))
    return;
  if (n)
    memcpy(b->p + b->len, p, n);
  b->len += n;
}

void drpc_rbuf_put_frame(drpc_rbuf *b, const drpc_outframe *f) {
  if (f->total_len > SIZE_MAX || !rbuf_reserve(b, (size_t)f->total_len))
    return;
  /* The pieces drpc_outframe_iov names (head, zero padding, tensor data),
   * copied straight in: no flattened copy in between. */
  static const uint8_t zeros[DRPC_TENSOR_ALIGN];
  struct iovec iov[16];
  uint64_t from = 0;
  while (from < f->total_len) {
    size_t cnt = drpc_outframe_iov(f, from, iov, 16, zeros);
    if (cnt > 16)
      cnt = 16;
    for (size_t i = 0; i < cnt; i++) {
      memcpy(b->p + b->len, iov[i].iov_base, iov[i].iov_len);
      b->len += iov[i].iov_len;
      from += iov[i].iov_len;
    }
  }
}

void drpc_rbuf_frame(drpc_rbuf *b, drpc_outframe *f) {
  if (!f) {
    drpc_rbuf_u64(b, 0);
    return;
  }
  /* Device copies still filling the frame (staging) come first. */
  if (drpc_outframe_wait(f, NULL) != 0) {
    b->failed = true;
    return;
  }
  if (f->total_len > SIZE_MAX) {
    b->failed = true;
    return;
  }
  drpc_rbuf_u64(b, f->total_len);
  drpc_rbuf_put_frame(b, f);
}

void drpc_rbuf_reset(drpc_rbuf *b, size_t keep) {
  if (b->cap > keep) {
    free(b->p);
    b->p = NULL;
    b->cap = 0;
  }
  b->len = 0;
  b->failed = false;
}

void drpc_rbuf_free(drpc_rbuf *b) {
  free(b->p);
  memset(b, 0, sizeof *b);
}

uint64_t drpc_rr_u64(drpc_rreader *r) {
  if (r->bad || r->len - r->pos < 8) {
    r->bad = true;
    return 0;
  }
  uint64_t v = 0;
  for (int i = 0; i < 8; i++)
    v |= (uint64_t)r->p[r->pos + i] << (8 * i);
  r->pos += 8;
  return v;
}

const uint8_t *drpc_rr_blob(drpc_rreader *r, size_t *n) {
  uint64_t len = drpc_rr_u64(r);
  if (r->bad || len > r->len - r->pos) {
    r->bad = true;
    *n = 0;
    return NULL;
  }
  const uint8_t *p = r->p + r->pos;
  r->pos += (size_t)len;
  *n = (size_t)len;
  return p;
}
