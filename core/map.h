/* Internal: a uint64 -> pointer hash map with deterministic sorted walks. */
#ifndef DRPC_CORE_MAP_H
#define DRPC_CORE_MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct drpc_map_slot {
  uint64_t key; /* 0 = empty */
  void *val;
} drpc_map_slot;

typedef struct drpc_map {
  drpc_map_slot *slots;
  size_t cap, len;
} drpc_map;

void drpc_map_init(drpc_map *m);
void drpc_map_free(drpc_map *m);
/* key must be non-zero (-1 for 0, which marks empty slots). Returns -1
 * on no memory. */
int drpc_map_put(drpc_map *m, uint64_t key, void *val);
void *drpc_map_get(const drpc_map *m, uint64_t key);
void *drpc_map_remove(drpc_map *m, uint64_t key);
/* Keys in ascending order (malloc'd), for deterministic iteration. */
uint64_t *drpc_map_sorted_keys(const drpc_map *m, size_t *n);

#endif
