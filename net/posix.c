/* POSIX pieces of the real backend that need no sockets: the monotonic
 * clock, lock + condition pairs over drpc_sync, and seeded randomness. */
#include "posix.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct sync_impl {
  pthread_mutex_t mu;
  pthread_cond_t cv;
} sync_impl;

_Static_assert(sizeof(sync_impl) <= sizeof(drpc_sync),
               "drpc_sync too small for a mutex and a condition variable");

uint64_t drpc_posix_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void drpc_posix_sync_init(drpc_sync *s) {
  sync_impl *p = (sync_impl *)s->opaque;
  pthread_condattr_t ca;
  pthread_mutex_init(&p->mu, NULL);
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&p->cv, &ca);
  pthread_condattr_destroy(&ca);
}

void drpc_posix_sync_destroy(drpc_sync *s) {
  sync_impl *p = (sync_impl *)s->opaque;
  pthread_cond_destroy(&p->cv);
  pthread_mutex_destroy(&p->mu);
}

void drpc_posix_sync_lock(drpc_sync *s) {
  pthread_mutex_lock(&((sync_impl *)s->opaque)->mu);
}

void drpc_posix_sync_unlock(drpc_sync *s) {
  pthread_mutex_unlock(&((sync_impl *)s->opaque)->mu);
}

bool drpc_posix_sync_wait(drpc_sync *s, uint64_t deadline_ns) {
  sync_impl *p = (sync_impl *)s->opaque;
  if (deadline_ns == 0) {
    pthread_cond_wait(&p->cv, &p->mu);
    return true;
  }
  struct timespec ts = {(time_t)(deadline_ns / 1000000000ull),
                        (long)(deadline_ns % 1000000000ull)};
  return pthread_cond_timedwait(&p->cv, &p->mu, &ts) != ETIMEDOUT;
}

void drpc_posix_sync_broadcast(drpc_sync *s) {
  pthread_cond_broadcast(&((sync_impl *)s->opaque)->cv);
}

/* splitmix64 over a per-process seed: good enough for ids and jitter. */
uint64_t drpc_posix_random(uint64_t *state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* Env callbacks for code that needs only time and sync (stores, tests). */
static uint64_t env_now(void *ctx) {
  (void)ctx;
  return drpc_posix_now_ns();
}
void drpc_posix_env_sync_init(void *ctx, drpc_sync *s) {
  (void)ctx;
  drpc_posix_sync_init(s);
}
void drpc_posix_env_sync_destroy(void *ctx, drpc_sync *s) {
  (void)ctx;
  drpc_posix_sync_destroy(s);
}
void drpc_posix_env_sync_lock(void *ctx, drpc_sync *s) {
  (void)ctx;
  drpc_posix_sync_lock(s);
}
void drpc_posix_env_sync_unlock(void *ctx, drpc_sync *s) {
  (void)ctx;
  drpc_posix_sync_unlock(s);
}
bool drpc_posix_env_sync_wait(void *ctx, drpc_sync *s, uint64_t deadline_ns) {
  (void)ctx;
  return drpc_posix_sync_wait(s, deadline_ns);
}
void drpc_posix_env_sync_broadcast(void *ctx, drpc_sync *s) {
  (void)ctx;
  drpc_posix_sync_broadcast(s);
}
static bool env_is_owner(void *ctx) {
  (void)ctx;
  return false;
}
static uint64_t env_random(void *ctx) {
  static uint64_t state = 0x2545f4914f6cdd1dull;
  (void)ctx;
  return drpc_posix_random(&state);
}
static void env_log(void *ctx, drpc_log_level level, const char *msg) {
  (void)ctx;
  if (level >= DRPC_LOG_WARN)
    fprintf(stderr, "drpc: %s\n", msg);
}

static const drpc_env_ops basic_ops = {
    .now_ns = env_now,
    .is_owner = env_is_owner,
    .sync_init = drpc_posix_env_sync_init,
    .sync_destroy = drpc_posix_env_sync_destroy,
    .sync_lock = drpc_posix_env_sync_lock,
    .sync_unlock = drpc_posix_env_sync_unlock,
    .sync_wait = drpc_posix_env_sync_wait,
    .sync_broadcast = drpc_posix_env_sync_broadcast,
    .random = env_random,
    .log = env_log,
};

static const drpc_env basic_env = {&basic_ops, NULL};

const drpc_env *drpc_posix_basic_env(void) {
  return &basic_env;
}
