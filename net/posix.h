/* Internal: POSIX clock, sync and randomness shared by the real backend. */
#ifndef DRPC_NET_POSIX_H
#define DRPC_NET_POSIX_H

#include <stdbool.h>
#include <stdint.h>

#include "drpc/env.h"

uint64_t drpc_posix_now_ns(void);
void drpc_posix_sync_init(drpc_sync *s);
void drpc_posix_sync_destroy(drpc_sync *s);
void drpc_posix_sync_lock(drpc_sync *s);
void drpc_posix_sync_unlock(drpc_sync *s);
bool drpc_posix_sync_wait(drpc_sync *s, uint64_t deadline_ns);
void drpc_posix_sync_broadcast(drpc_sync *s);
uint64_t drpc_posix_random(uint64_t *state);

/* The same primitives with the env's signatures (ctx unused), for the
 * backends' op tables. */
void drpc_posix_env_sync_init(void *ctx, drpc_sync *s);
void drpc_posix_env_sync_destroy(void *ctx, drpc_sync *s);
void drpc_posix_env_sync_lock(void *ctx, drpc_sync *s);
void drpc_posix_env_sync_unlock(void *ctx, drpc_sync *s);
bool drpc_posix_env_sync_wait(void *ctx, drpc_sync *s, uint64_t deadline_ns);
void drpc_posix_env_sync_broadcast(void *ctx, drpc_sync *s);

#endif
