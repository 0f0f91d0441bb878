/* The event queue (a binary heap ordered by time, then the key of
 * drpc_sim_config.tie, 0 when unset, then sequence number, so ties resolve
 * the same way in every run), the running event hash and the
 * first-violation record. */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

sim *sim_current;

/* The event heap is 4-ary: half the levels of a binary heap, and a node's
 * children share a cache line or two. */
#define HEAP_ARITY 4

static bool ev_less(const sim_event *x, const sim_event *y) {
  /* Without branches: the comparisons of a heap walk are unpredictable. */
  return (x->time < y->time) | ((x->time == y->time) & (x->ord < y->ord));
}

static bool nowq_push(sim *s, const sim_event *ev) {
  if (s->nowq_len == s->nowq_cap) {
    size_t cap = s->nowq_cap ? s->nowq_cap * 2 : 256;
    sim_event *q =
        s->nheap + cap <= SIM_MAX_EVENTS ? malloc(cap * sizeof *q) : NULL;
    if (!q)
      return false;
    /* Unwrap the ring into the new buffer. */
    for (size_t i = 0; i < s->nowq_len; i++)
      q[i] = s->nowq[(s->nowq_head + i) % s->nowq_cap];
    free(s->nowq);
    s->nowq = q;
    s->nowq_cap = cap;
    s->nowq_head = 0;
  }
  s->nowq[(s->nowq_head + s->nowq_len) % s->nowq_cap] = *ev;
  s->nowq_len++;
  return true;
}

/* The size class of a len-byte frame; SIM_BUF_CLASSES when too large. */
static unsigned buf_class(size_t len) {
  unsigned c = 0;
  while (c < SIM_BUF_CLASSES && ((size_t)1 << (c + SIM_BUF_MIN_SHIFT)) < len)
    c++;
  return c;
}

void *sim_frame_alloc(sim *s, size_t len) {
  unsigned c = buf_class(len);
  if (c == SIM_BUF_CLASSES)
    return malloc(len ? len : 1);
  if (s->nbufs[c])
    return s->bufs[c][--s->nbufs[c]];
  return malloc((size_t)1 << (c + SIM_BUF_MIN_SHIFT));
}

void sim_frame_free(sim *s, void *p, size_t len) {
  if (!p)
    return;
  unsigned c = buf_class(len);
  if (c == SIM_BUF_CLASSES || s->nbufs[c] == SIM_BUF_DEPTH) {
    free(p);
    return;
  }
  s->bufs[c][s->nbufs[c]++] = p;
}

void sim_frame_pool_free(sim *s) {
  for (unsigned c = 0; c < SIM_BUF_CLASSES; c++)
    while (s->nbufs[c])
      free(s->bufs[c][--s->nbufs[c]]);
}

void sim_push(sim *s, uint8_t kind, int16_t node, uint64_t time, uint32_t a,
              uint64_t b, void *p, uint32_t len) {
  if (s->seq >> SIM_SEQ_BITS) {
    sim_violation(s, "more than 2^%d events scheduled in one run",
                  SIM_SEQ_BITS);
    if (kind == EV_FRAME)
      sim_frame_free(s, p, len);
    return;
  }
  if (time <= s->now && !s->cfg->tie) {
    uint8_t inc = node >= 0 ? s->nodes[node].inc : 0;
    sim_event ev = {s->now, s->seq++, p, b, a, len, node, kind, inc};
    if (nowq_push(s, &ev))
      return;
    sim_violation(s, "event queue full (%zu events pending)",
                  s->nheap + s->nowq_len);
    if (kind == EV_FRAME)
      sim_frame_free(s, p, len);
    return;
  }
  if (s->nheap == s->capheap) {
    size_t cap = s->capheap ? s->capheap * 2 : 1024;
    sim_event *h =
        cap <= SIM_MAX_EVENTS ? realloc(s->heap, cap * sizeof *h) : NULL;
    if (!h) {
      /* A bounded queue: the run cannot go on faithfully. */
      sim_violation(s, "event queue full (%zu events pending)", s->nheap);
      if (kind == EV_FRAME)
        sim_frame_free(s, p, len);
      return;
    }
    s->heap = h;
    s->capheap = cap;
  }
  if (time < s->now)
    time = s->now;
  uint64_t tie =
      s->cfg->tie
          ? s->cfg->tie(s->cfg->tie_ctx, node, sim_rel(s, time)) & 0xffffffu
          : 0;
  uint8_t inc = node >= 0 ? s->nodes[node].inc : 0;
  sim_event ev = {
      time, tie << SIM_SEQ_BITS | s->seq++, p, b, a, len, node, kind, inc};
  size_t i = s->nheap++;
  while (i > 0) {
    size_t parent = (i - 1) / HEAP_ARITY;
    if (!ev_less(&ev, &s->heap[parent]))
      break;
    s->heap[i] = s->heap[parent];
    i = parent;
  }
  s->heap[i] = ev;
}

bool sim_pop(sim *s, sim_event *out) {
  /* The heap's events due now were pushed before any in the now queue. */
  if (s->nowq_len && (s->nheap == 0 || s->heap[0].time > s->now)) {
    *out = s->nowq[s->nowq_head];
    s->nowq_head = (s->nowq_head + 1) % s->nowq_cap;
    s->nowq_len--;
    return true;
  }
  if (s->nheap == 0)
    return false;
  *out = s->heap[0];
  sim_event last = s->heap[--s->nheap];
  size_t i = 0, n = s->nheap;
  for (;;) {
    size_t c = HEAP_ARITY * i + 1, end = c + HEAP_ARITY, m = i;
    const sim_event *best = &last;
    if (end > n)
      end = n;
    for (; c < end; c++)
      if (ev_less(&s->heap[c], best)) {
        m = c;
        best = &s->heap[c];
      }
    if (m == i)
      break;
    s->heap[i] = s->heap[m];
    i = m;
  }
  if (n > 0)
    s->heap[i] = last;
  return true;
}

uint64_t sim_rel(const sim *s, uint64_t t) {
  (void)s;
  return t >= SIM_BASE_NS ? t - SIM_BASE_NS : 0;
}

static uint64_t mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  return h * 0x100000001b3ull;
}

/* Frame bytes, mostly tensor data: eight lanes, each adding the product of
 * a word's two 32-bit halves (the word first mixed with a key that differs
 * per lane and per 64-byte stripe, so moved words change the sum) and the
 * word itself; folded at the end. The same sum is taken with AVX2 where the
 * CPU has it (four lanes per instruction) and word by word elsewhere: every
 * machine gets the same hash (test_sim checks the two agree). */
static const uint64_t lane_key[8] = {
    0x243f6a8885a308d3ull, 0x13198a2e03707344ull, 0xa4093822299f31d0ull,
    0x082efa98ec4e6c89ull, 0x452821e638d01377ull, 0xbe5466cf34e90c6cull,
    0xc0ac29b7c97c50ddull, 0x3f84d5b5b5470917ull};
#define STRIPE_STEP 0x9e3779b97f4a7c15ull

static void stripes_portable(uint64_t acc[8], uint64_t h, const uint8_t *p,
                             size_t nstripes) {
  uint64_t stripe = h;
  for (size_t i = 0; i < nstripes; i++, p += 64) {
    stripe += STRIPE_STEP;
    for (int k = 0; k < 8; k++) {
      uint64_t w;
      memcpy(&w, p + 8 * k, 8);
      uint64_t d = w ^ lane_key[k] ^ stripe;
      acc[k] += (uint64_t)(uint32_t)d * (d >> 32) + w;
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_STRIPES_AVX2 1
__attribute__((target("avx2"))) static void
stripes_avx2(uint64_t acc[8], uint64_t h, const uint8_t *p, size_t nstripes) {
  __m256i a0 = _mm256_loadu_si256((const __m256i *)(const void *)acc);
  __m256i a1 = _mm256_loadu_si256((const __m256i *)(const void *)(acc + 4));
  const __m256i k0 =
      _mm256_loadu_si256((const __m256i *)(const void *)lane_key);
  const __m256i k1 =
      _mm256_loadu_si256((const __m256i *)(const void *)(lane_key + 4));
  uint64_t stripe = h;
  for (size_t i = 0; i < nstripes; i++, p += 64) {
    stripe += STRIPE_STEP;
    const __m256i sv = _mm256_set1_epi64x((long long)stripe);
    const __m256i w0 = _mm256_loadu_si256((const __m256i *)(const void *)p);
    const __m256i w1 =
        _mm256_loadu_si256((const __m256i *)(const void *)(p + 32));
    const __m256i d0 = _mm256_xor_si256(_mm256_xor_si256(w0, k0), sv);
    const __m256i d1 = _mm256_xor_si256(_mm256_xor_si256(w1, k1), sv);
    /* mul_epu32 multiplies the low halves of each 64-bit lane: of d and of
     * d >> 32, the high half. */
    a0 = _mm256_add_epi64(
        a0,
        _mm256_add_epi64(_mm256_mul_epu32(d0, _mm256_srli_epi64(d0, 32)), w0));
    a1 = _mm256_add_epi64(
        a1,
        _mm256_add_epi64(_mm256_mul_epu32(d1, _mm256_srli_epi64(d1, 32)), w1));
  }
  _mm256_storeu_si256((__m256i *)(void *)acc, a0);
  _mm256_storeu_si256((__m256i *)(void *)(acc + 4), a1);
}
#endif

uint64_t drpc_sim_hash_bytes(uint64_t h, const void *bytes, size_t len,
                             int impl) {
  const uint8_t *p = bytes;
  uint64_t acc[8];
  for (int k = 0; k < 8; k++)
    acc[k] = h ^ lane_key[k];
  size_t nstripes = len / 64;
#ifdef HAVE_STRIPES_AVX2
  static _Atomic int avx2_known = -1; /* simulations may run on threads */
  int avx2 = atomic_load_explicit(&avx2_known, memory_order_relaxed);
  if (avx2 < 0) {
    avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
    atomic_store_explicit(&avx2_known, avx2, memory_order_relaxed);
  }
  if (impl == 2 && !avx2)
    return 0;
  if (impl != 1 && avx2)
    stripes_avx2(acc, h, p, nstripes);
  else
    stripes_portable(acc, h, p, nstripes);
#else
  if (impl == 2)
    return 0;
  stripes_portable(acc, h, p, nstripes);
#endif
  size_t i = nstripes * 64;
  uint64_t r = mix(h, len);
  for (int k = 0; k < 8; k++)
    r = mix(r, acc[k]);
  for (; i + 8 <= len; i += 8) {
    uint64_t w;
    memcpy(&w, p + i, 8);
    r = mix(r, w);
  }
  uint64_t w = 0;
  memcpy(&w, p + i, len - i);
  return mix(r, w);
}

void sim_hash(sim *s, uint8_t kind, int16_t node, uint64_t x, uint64_t y,
              const void *bytes, size_t len) {
  drpc_sim_result *r = s->res;
  /* The event's fields through independent multiplies (they overlap), one
   * dependent step on the running hash. */
  uint64_t f =
      (s->now * 0x9e3779b97f4a7c15ull) ^ (x * 0xc2b2ae3d27d4eb4full) ^
      (y * 0x165667b19e3779f9ull) ^
      (((uint64_t)kind << 16 | (uint16_t)node) * 0xd6e8feb86659fd93ull);
  uint64_t h = mix(r->hash, f ^ (f >> 31));
  if (bytes)
    h = drpc_sim_hash_bytes(h, bytes, len, 0);
  r->hash = h;
  r->events++;
  if (!s->cfg->trace)
    return;
  if (r->ntrace == s->trace_cap) {
    size_t cap = s->trace_cap ? s->trace_cap * 2 : 4096;
    drpc_sim_trace_entry *t =
        cap <= SIM_MAX_TRACE ? realloc(r->trace, cap * sizeof *t) : NULL;
    if (!t)
      return; /* the hash still covers every event */
    r->trace = t;
    s->trace_cap = cap;
  }
  r->trace[r->ntrace++] =
      (drpc_sim_trace_entry){sim_rel(s, s->now), h, x, y, node, kind};
}

void sim_violation(sim *s, const char *fmt, ...) {
  drpc_sim_result *r = s->res;
  if (!r->ok)
    return; /* the first one names the run */
  r->ok = false;
  r->violation_ns = sim_rel(s, s->now);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->what, sizeof r->what, fmt, ap);
  va_end(ap);
  s->stop = true;
}

const char *drpc_sim_event_name(int kind) {
  static const char *const names[] = {
      [EV_FRAME] = "frame",    [EV_ACCEPT] = "accept",
      [EV_OPEN] = "open",      [EV_CLOSED] = "closed",
      [EV_TIMER] = "timer",    [EV_WAKE] = "wake",
      [EV_CMD] = "command",    [EV_JOB] = "job",
      [EV_FAULT] = "fault",    [EV_PHASE_END] = "phase-end",
      [EV_NODE_FREE] = "free", [EV_START] = "start",
      [EV_RESET] = "reset",    [EV_SEND] = "send",
      [EV_RECORD] = "record",
  };
  if (kind <= 0 || kind >= (int)(sizeof names / sizeof names[0]) ||
      !names[kind])
    return "?";
  return names[kind];
}

size_t drpc_sim_trace_diff(const drpc_sim_result *a, const drpc_sim_result *b) {
  size_t n = a->ntrace < b->ntrace ? a->ntrace : b->ntrace;
  for (size_t i = 0; i < n; i++)
    if (a->trace[i].hash != b->trace[i].hash)
      return i;
  if (a->ntrace != b->ntrace || a->hash != b->hash)
    return n;
  return SIZE_MAX;
}

void drpc_sim_trace_format(const drpc_sim_trace_entry *e, char *buf, size_t n) {
  snprintf(buf, n, "t=%.9fs node=%d %s x=%llu y=%llu hash=%016llx",
           (double)e->time_ns / 1e9, e->node, drpc_sim_event_name(e->kind),
           (unsigned long long)e->x, (unsigned long long)e->y,
           (unsigned long long)e->hash);
}

/* Written by the build (cmake/commit.cmake) at every build. */
#include "drpc_commit.h"

const char *drpc_sim_commit(void) {
  return DRPC_GIT_COMMIT;
}
