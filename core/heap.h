/* Internal: an intrusive min-heap on (deadline, tie-break), used for call
 * timeouts and general timers. Entries embed a drpc_heap_node; equal
 * deadlines resolve by the tie-break key, never by address, so the order
 * is deterministic. */
#ifndef DRPC_CORE_HEAP_H
#define DRPC_CORE_HEAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct drpc_heap_node {
  uint64_t deadline_ns;
  uint64_t tie;
  size_t idx; /* position in the heap, SIZE_MAX when not in it */
} drpc_heap_node;

typedef struct drpc_heap {
  drpc_heap_node **items;
  size_t len, cap;
} drpc_heap;

/* Adds n (n->idx is set). DRPC_ENOMEM when the array cannot grow. */
int drpc_heap_push(drpc_heap *h, drpc_heap_node *n);
/* Removes n if it is in the heap. */
void drpc_heap_remove(drpc_heap *h, drpc_heap_node *n);
/* The earliest entry, NULL when empty. */
static inline drpc_heap_node *drpc_heap_top(const drpc_heap *h) {
  return h->len ? h->items[0] : NULL;
}
void drpc_heap_free(drpc_heap *h);

#endif
