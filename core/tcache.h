/* Per-thread caches of freed blocks (tensor.c: small storages; value.c:
 * value nodes). They are off under AddressSanitizer, which must see every
 * block freed to find uses after free. */
#ifndef DRPC_TCACHE_H
#define DRPC_TCACHE_H

#if defined(__SANITIZE_ADDRESS__)
#define DRPC_TCACHE_ON 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DRPC_TCACHE_ON 0
#endif
#endif
#ifndef DRPC_TCACHE_ON
#define DRPC_TCACHE_ON 1
#endif

#include <stddef.h>

enum { DRPC_TCACHE_STORAGE = 0, DRPC_TCACHE_VALUES = 1, DRPC_TCACHE_KINDS };

/* The calling thread's cache `which`: made zeroed (size bytes) at the first
 * call, handed to destroy (which frees it and what it holds) when the
 * thread exits. NULL when caches are off or memory is short. Callers keep
 * the pointer in a _Thread_local of their own for the fast path. */
void *drpc_tcache_make(int which, size_t size, void (*destroy)(void *));

#endif
