/* Internal declarations shared by the core's modules. */
#ifndef DRPC_CORE_INTERNAL_H
#define DRPC_CORE_INTERNAL_H

#include "drpc/agent.h"

typedef struct drpc_registry_entry {
  char *name;
  drpc_function fn;
  drpc_async_function afn;
  void *user;
} drpc_registry_entry;

const drpc_registry_entry *drpc_registry_lookup(const drpc_registry *r,
                                                const char *name);

#endif
