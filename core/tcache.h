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

#endif
