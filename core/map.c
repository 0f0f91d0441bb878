/* A hash map from non-zero uint64 keys to pointers (open addressing, linear
 * probing, backward-shift deletion). Iteration order depends only on the
 * keys inserted, never on pointer values, so the core stays deterministic. */
#include "map.h"

#include <stdlib.h>

static uint64_t mix(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdull;
  k ^= k >> 33;
  return k;
}

void drpc_map_init(drpc_map *m) {
  m->slots = NULL;
  m->cap = 0;
  m->len = 0;
}

void drpc_map_free(drpc_map *m) {
  free(m->slots);
  drpc_map_init(m);
}

static int grow(drpc_map *m) {
  size_t cap = m->cap ? m->cap * 2 : 64;
  drpc_map_slot *slots = calloc(cap, sizeof *slots);
  if (!slots)
    return -1;
  for (size_t i = 0; i < m->cap; i++) {
    if (!m->slots[i].key)
      continue;
    size_t j = mix(m->slots[i].key) & (cap - 1);
    while (slots[j].key)
      j = (j + 1) & (cap - 1);
    slots[j] = m->slots[i];
  }
  free(m->slots);
  m->slots = slots;
  m->cap = cap;
  return 0;
}

int drpc_map_put(drpc_map *m, uint64_t key, void *val) {
  if (key == 0)
    return -1; /* 0 marks an empty slot */
  if ((m->len + 1) * 4 > m->cap * 3 && grow(m))
    return -1;
  size_t j = mix(key) & (m->cap - 1);
  while (m->slots[j].key && m->slots[j].key != key)
    j = (j + 1) & (m->cap - 1);
  if (!m->slots[j].key)
    m->len++;
  m->slots[j].key = key;
  m->slots[j].val = val;
  return 0;
}

void *drpc_map_get(const drpc_map *m, uint64_t key) {
  if (!m->cap)
    return NULL;
  size_t j = mix(key) & (m->cap - 1);
  while (m->slots[j].key) {
    if (m->slots[j].key == key)
      return m->slots[j].val;
    j = (j + 1) & (m->cap - 1);
  }
  return NULL;
}

void *drpc_map_remove(drpc_map *m, uint64_t key) {
  if (!m->cap)
    return NULL;
  size_t mask = m->cap - 1, j = mix(key) & mask;
  while (m->slots[j].key && m->slots[j].key != key)
    j = (j + 1) & mask;
  if (!m->slots[j].key)
    return NULL;
  void *val = m->slots[j].val;
  /* Backward-shift: pull later entries of the probe run into the hole. */
  size_t hole = j;
  for (size_t k = (j + 1) & mask; m->slots[k].key; k = (k + 1) & mask) {
    size_t home = mix(m->slots[k].key) & mask;
    bool movable =
        hole <= k ? (home <= hole || home > k) : (home <= hole && home > k);
    if (movable) {
      m->slots[hole] = m->slots[k];
      hole = k;
    }
  }
  m->slots[hole].key = 0;
  m->slots[hole].val = NULL;
  m->len--;
  return val;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

uint64_t *drpc_map_sorted_keys(const drpc_map *m, size_t *n) {
  *n = 0;
  uint64_t *keys = malloc((m->len ? m->len : 1) * sizeof *keys);
  if (!keys)
    return NULL;
  for (size_t i = 0; i < m->cap; i++)
    if (m->slots[i].key)
      keys[(*n)++] = m->slots[i].key;
  qsort(keys, *n, sizeof *keys, cmp_u64);
  return keys;
}
