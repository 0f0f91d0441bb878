/* The event queue (a binary heap ordered by time, then the key of
 * drpc_sim_config.tie, 0 when unset, then sequence number, so ties resolve
 * the same way in every run), the running event hash and the
 * first-violation record. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

sim *sim_current;

static bool ev_less(const sim_event *x, const sim_event *y) {
  if (x->time != y->time)
    return x->time < y->time;
  return x->tie != y->tie ? x->tie < y->tie : x->seq < y->seq;
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

void sim_push(sim *s, uint8_t kind, int16_t node, uint64_t time, uint32_t a,
              uint64_t b, void *p, uint32_t len) {
  if (time <= s->now && !s->cfg->tie) {
    uint8_t inc = node >= 0 ? s->nodes[node].inc : 0;
    sim_event ev = {s->now, s->seq++, p, b, a, len, node, kind, inc, 0};
    if (nowq_push(s, &ev))
      return;
    sim_violation(s, "event queue full (%zu events pending)",
                  s->nheap + s->nowq_len);
    if (kind == EV_FRAME)
      free(p);
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
        free(p);
      return;
    }
    s->heap = h;
    s->capheap = cap;
  }
  if (time < s->now)
    time = s->now;
  uint32_t tie =
      s->cfg->tie ? s->cfg->tie(s->cfg->tie_ctx, node, sim_rel(s, time)) : 0;
  uint8_t inc = node >= 0 ? s->nodes[node].inc : 0;
  sim_event ev = {time, s->seq++, p, b, a, len, node, kind, inc, tie};
  size_t i = s->nheap++;
  while (i > 0) {
    size_t parent = (i - 1) / 2;
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
    size_t l = 2 * i + 1, r = l + 1, m = i;
    const sim_event *best = &last;
    if (l < n && ev_less(&s->heap[l], best)) {
      m = l;
      best = &s->heap[l];
    }
    if (r < n && ev_less(&s->heap[r], best))
      m = r;
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

void sim_hash(sim *s, uint8_t kind, int16_t node, uint64_t x, uint64_t y,
              const void *bytes, size_t len) {
  drpc_sim_result *r = s->res;
  uint64_t h = mix(r->hash, s->now);
  h = mix(h, kind);
  h = mix(h, (uint64_t)(int64_t)node);
  h = mix(h, x);
  h = mix(h, y);
  if (bytes) {
    /* The bytes themselves (sends are compared as bytes): four independent
     * lanes of eight bytes, so the multiplies overlap, folded at the end. */
    const uint8_t *p = bytes;
    size_t i = 0;
    uint64_t l[4] = {h, h ^ 0x243f6a8885a308d3ull, h ^ 0x13198a2e03707344ull,
                     h ^ 0xa4093822299f31d0ull};
    for (; i + 32 <= len; i += 32)
      for (int k = 0; k < 4; k++) {
        uint64_t w;
        memcpy(&w, p + i + 8 * (size_t)k, 8);
        l[k] = (l[k] ^ w) * 0x9e3779b97f4a7c15ull;
        l[k] ^= l[k] >> 29;
      }
    for (; i + 8 <= len; i += 8) {
      uint64_t w;
      memcpy(&w, p + i, 8);
      l[0] = (l[0] ^ w) * 0x9e3779b97f4a7c15ull;
      l[0] ^= l[0] >> 29;
    }
    uint64_t w = 0;
    memcpy(&w, p + i, len - i);
    h = mix(mix(mix(mix(l[0], l[1]), l[2]), l[3]), w ^ len);
  }
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
