/* The intrusive deadline heap of heap.h. */
#include "heap.h"

#include <stdbool.h>
#include <stdlib.h>

#include "drpc/error.h"

static bool less(const drpc_heap_node *x, const drpc_heap_node *y) {
  return x->deadline_ns != y->deadline_ns ? x->deadline_ns < y->deadline_ns
                                          : x->tie < y->tie;
}

static void swap(drpc_heap *h, size_t i, size_t j) {
  drpc_heap_node *t = h->items[i];
  h->items[i] = h->items[j];
  h->items[j] = t;
  h->items[i]->idx = i;
  h->items[j]->idx = j;
}

static void up(drpc_heap *h, size_t i) {
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!less(h->items[i], h->items[p]))
      break;
    swap(h, i, p);
    i = p;
  }
}

static void down(drpc_heap *h, size_t i) {
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < h->len && less(h->items[l], h->items[m]))
      m = l;
    if (r < h->len && less(h->items[r], h->items[m]))
      m = r;
    if (m == i)
      return;
    swap(h, i, m);
    i = m;
  }
}

int drpc_heap_push(drpc_heap *h, drpc_heap_node *n) {
  if (h->len == h->cap) {
    size_t cap = h->cap ? h->cap * 2 : 64;
    drpc_heap_node **p = realloc(h->items, cap * sizeof *p);
    if (!p)
      return DRPC_ENOMEM;
    h->items = p;
    h->cap = cap;
  }
  n->idx = h->len;
  h->items[h->len++] = n;
  up(h, n->idx);
  return 0;
}

void drpc_heap_remove(drpc_heap *h, drpc_heap_node *n) {
  size_t i = n->idx;
  if (i == SIZE_MAX || i >= h->len || h->items[i] != n)
    return;
  h->len--;
  if (i != h->len) {
    h->items[i] = h->items[h->len];
    h->items[i]->idx = i;
    down(h, i);
    up(h, i);
  }
  n->idx = SIZE_MAX;
}

void drpc_heap_free(drpc_heap *h) {
  free(h->items);
  h->items = NULL;
  h->len = h->cap = 0;
}
