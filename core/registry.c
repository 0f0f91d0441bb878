/* The function registry: names to user functions, sorted for binary search.
 * Registration happens before agents start; lookups are then read-only, so
 * worker threads share the table without locking. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Upper bound on registered functions, so a runaway plugin cannot grow the
 * table without limit. */
#define MAX_FUNCTIONS 65536

struct drpc_registry {
  drpc_registry_entry *items;
  size_t len, cap;
};

drpc_registry *drpc_registry_new(void) {
  return calloc(1, sizeof(drpc_registry));
}

void drpc_registry_free(drpc_registry *r) {
  if (!r)
    return;
  for (size_t i = 0; i < r->len; i++)
    free(r->items[i].name);
  free(r->items);
  free(r);
}

drpc_registry *drpc_registry_default(void) {
  static drpc_registry global;
  return &global;
}

static size_t lower_bound(const drpc_registry *r, const char *name) {
  size_t lo = 0, hi = r->len;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (strcmp(r->items[mid].name, name) < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

static int add(drpc_registry *r, const char *name, drpc_function fn,
               drpc_async_function afn, void *user) {
  if (!r || !name || !*name || (!fn && !afn))
    return DRPC_EINVAL;
  size_t at = lower_bound(r, name);
  if (at < r->len && strcmp(r->items[at].name, name) == 0)
    return DRPC_EEXISTS;
  if (r->len >= MAX_FUNCTIONS)
    return DRPC_ETOOBIG;
  if (r->len == r->cap) {
    size_t cap = r->cap ? r->cap * 2 : 16;
    drpc_registry_entry *p = realloc(r->items, cap * sizeof *p);
    if (!p)
      return DRPC_ENOMEM;
    r->items = p;
    r->cap = cap;
  }
  char *copy = strdup(name);
  if (!copy)
    return DRPC_ENOMEM;
  memmove(&r->items[at + 1], &r->items[at], (r->len - at) * sizeof *r->items);
  r->items[at] = (drpc_registry_entry){copy, fn, afn, user};
  r->len++;
  return 0;
}

int drpc_register_function(drpc_registry *r, const char *name, drpc_function fn,
                           void *user) {
  return add(r, name, fn, NULL, user);
}

int drpc_register_async_function(drpc_registry *r, const char *name,
                                 drpc_async_function fn, void *user) {
  return add(r, name, NULL, fn, user);
}

const drpc_registry_entry *drpc_registry_lookup(const drpc_registry *r,
                                                const char *name) {
  size_t at = lower_bound(r, name);
  if (at < r->len && strcmp(r->items[at].name, name) == 0)
    return &r->items[at];
  return NULL;
}
