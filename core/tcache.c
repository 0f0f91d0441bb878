/* Per-thread caches: one thread-specific key for all of them, whose
 * destructor frees each cache a thread made. */
#include "tcache.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

typedef struct tcaches {
  void *cache[DRPC_TCACHE_KINDS];
  void (*destroy[DRPC_TCACHE_KINDS])(void *);
} tcaches;

static pthread_key_t key;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static bool key_ok;

static void tcaches_destroy(void *arg) {
  tcaches *t = arg;
  for (int i = 0; i < DRPC_TCACHE_KINDS; i++)
    if (t->cache[i])
      t->destroy[i](t->cache[i]);
  free(t);
}

static void key_init(void) {
  key_ok = pthread_key_create(&key, tcaches_destroy) == 0;
}

void *drpc_tcache_make(int which, size_t size, void (*destroy)(void *)) {
  if (!DRPC_TCACHE_ON || which < 0 || which >= DRPC_TCACHE_KINDS)
    return NULL;
  (void)pthread_once(&key_once, key_init);
  if (!key_ok)
    return NULL;
  tcaches *t = pthread_getspecific(key);
  if (!t) {
    if (!(t = calloc(1, sizeof *t)))
      return NULL;
    if (pthread_setspecific(key, t) != 0) {
      free(t);
      return NULL;
    }
  }
  if (!t->cache[which] && (t->cache[which] = calloc(1, size)) != NULL)
    t->destroy[which] = destroy;
  return t->cache[which];
}
