/* The CUDA runtime backend: streams, events, a caching device allocator,
 * pinned staging memory, kernels (kernels.cu) and same-host IPC.
 *
 * Every entry point that touches a device makes it the calling thread's
 * current device first (threads start on device 0). CUDA return codes are
 * all checked; a failure becomes a DRPC_EIO error naming the call and the
 * CUDA error ("cudaMemcpyAsync failed: <reason> (cuda:0)"), or DRPC_ENOMEM
 * when memory ran out. One mutex guards the backend's tables (allocator,
 * stream and event registries, IPC mappings); nothing that waits for the
 * GPU depends on it, so holding it across a synchronising CUDA call only
 * delays other threads. */
#include "drpc/gpu.h"

#include <cuda_runtime_api.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_kernels.h"

_Static_assert(DRPC_CK_MAX_DIMS == DRPC_TENSOR_MAX_DIMS, "kernel dims");
_Static_assert(DRPC_CK_FLOAT32 == (int)DRPC_FLOAT32 &&
                   DRPC_CK_FLOAT64 == (int)DRPC_FLOAT64 &&
                   DRPC_CK_INT64 == (int)DRPC_INT64 &&
                   DRPC_CK_INT32 == (int)DRPC_INT32 &&
                   DRPC_CK_UINT8 == (int)DRPC_UINT8 &&
                   DRPC_CK_BOOL == (int)DRPC_BOOL,
               "kernel dtype codes are drpc_dtype's");
_Static_assert(DRPC_CK_ADD == (int)DRPC_DEVOP_ADD &&
                   DRPC_CK_SUB == (int)DRPC_DEVOP_SUB &&
                   DRPC_CK_MUL == (int)DRPC_DEVOP_MUL &&
                   DRPC_CK_DIV == (int)DRPC_DEVOP_DIV,
               "kernel op codes are drpc_devop's");
_Static_assert(sizeof(cudaIpcMemHandle_t) <= DRPC_IPC_HANDLE_MAX,
               "IPC memory handle size");
_Static_assert(sizeof(cudaIpcEventHandle_t) <= DRPC_IPC_HANDLE_MAX,
               "IPC event handle size");

/* Size classes: requests are rounded up to SMALL_ROUND below SMALL_LIMIT,
 * to LARGE_ROUND above, so that freed blocks fit later requests. */
#define SMALL_LIMIT ((size_t)1 << 20)
#define SMALL_ROUND ((size_t)512)
#define LARGE_ROUND ((size_t)2 << 20)
/* Cached (freed, not yet returned to CUDA) bytes kept per device and for
 * pinned host memory; beyond them the oldest cached blocks are released. */
#define DEVICE_CACHE_MAX ((size_t)8 << 30)
#define HOST_CACHE_MAX ((size_t)1 << 30)
/* Streams one backend makes (default and pool streams are 33 a device). */
#define STREAMS_MAX 4096
/* IPC handles remembered: our own exported blocks and peers' mappings. */
#define IPC_MAPPINGS_MAX 65536
#define CLASS_BUCKETS 256
#define IPC_BUCKETS 1024
/* The allocator pool of pinned host memory, after the device pools. */
#define HOST_POOL DRPC_DEVICE_MAX

/* ---- objects ------------------------------------------------------------ */

struct drpc_stream {
  int index; /* first: drpc_stream_device reads it */
  cudaStream_t cs;
  drpc_stream *next; /* every stream, for shutdown */
};

struct drpc_devevent {
  int index;
  cudaEvent_t ev;
  /* References: an interprocess event opened by the process that made it
   * comes back as the same object (CUDA does not open its own handles). */
  int refs;
  bool ipc; /* made by ipc_event_new: exportable */
  bool has_handle;
  cudaIpcEventHandle_t handle;
  drpc_devevent *prev, *next; /* every event, for shutdown */
};

typedef struct slist slist;

/* One cudaMalloc (or cudaHostAlloc) of a size class; never split, so an
 * IPC handle covers it from offset 0. */
typedef struct block {
  void *ptr;
  size_t size;   /* the size class: what cudaMalloc gave */
  size_t nbytes; /* live: what was asked for (kernels stay inside it) */
  int pool;      /* device index, or HOST_POOL */
  bool live;
  /* Live: the stream it was allocated on. Cached: the stream it was freed
   * on, with freed recorded there at that point (NULL: no work pending). */
  drpc_stream *stream;
  cudaEvent_t freed;
  bool has_handle;
  cudaIpcMemHandle_t handle;
  slist *list; /* cached: the free list it is on */
  struct block *prev, *next;
  struct block *lru_prev, *lru_next;
} block;

/* Cached blocks of one size class freed on one stream, oldest first. */
struct slist {
  drpc_stream *stream;
  block *head, *tail;
  slist *next;
};

typedef struct sclass {
  size_t size;
  slist *lists;
  struct sclass *next;
} sclass;

typedef struct pool {
  sclass *classes[CLASS_BUCKETS];
  block *lru_head, *lru_tail; /* every cached block, oldest first */
  size_t allocated;           /* bytes in live blocks */
  size_t cached;              /* bytes in cached blocks */
  cudaEvent_t *events;        /* unused "freed" events */
  size_t nevents, capevents;
} pool;

/* An IPC memory handle this process knows: one of our blocks (own), or a
 * peer's allocation mapped here. */
typedef struct ipc_map {
  uint8_t handle[sizeof(cudaIpcMemHandle_t)];
  void *base;
  block *own;
  int index;
  struct ipc_map *next;
} ipc_map;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(drpc_stream *) g_default[DRPC_DEVICE_MAX];
static atomic_int g_ndev;
static drpc_stream *g_streams;
static int g_nstreams;
static drpc_devevent *g_events;
static pool g_pools[DRPC_DEVICE_MAX + 1];
/* Every block (device and host, live and cached), sorted by address, so
 * that an interior pointer finds its block. */
static block **g_blocks;
static size_t g_nblocks, g_capblocks;
static ipc_map *g_ipc[IPC_BUCKETS];
static size_t g_nipc;
static bool g_peer_tried[DRPC_DEVICE_MAX][DRPC_DEVICE_MAX];

/* ---- errors and devices ------------------------------------------------- */

static int cuda_error(drpc_error *err, cudaError_t rc, const char *what,
                      int index) {
  int code = rc == cudaErrorMemoryAllocation ? DRPC_ENOMEM : DRPC_EIO;
  if (index < 0)
    return drpc_error_set(err, code, "%s failed: %s", what,
                          cudaGetErrorString(rc));
  return drpc_error_set(err, code, "%s failed: %s (cuda:%d)", what,
                        cudaGetErrorString(rc), index);
}

/* Makes index the calling thread's current device. Asking first keeps the
 * common case (already current) free of a context switch, and stays right
 * when user code changes the device behind our back. */
static int use_device(int index, drpc_error *err) {
  int n = atomic_load(&g_ndev);
  if (index < 0 || index >= DRPC_DEVICE_MAX || (n > 0 && index >= n))
    return drpc_error_set(err, DRPC_EINVAL, "no CUDA device %d", index);
  int cur = -1;
  if (cudaGetDevice(&cur) == cudaSuccess && cur == index)
    return 0;
  cudaError_t rc = cudaSetDevice(index);
  if (rc != cudaSuccess)
    return cuda_error(err, rc, "cudaSetDevice", index);
  return 0;
}

static int cu_device_count(void *ctx) {
  (void)ctx;
  int n = 0;
  /* No driver or no device is an error here, and means none. */
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    n = 0;
  }
  if (n < 0)
    n = 0;
  if (n > DRPC_DEVICE_MAX)
    n = DRPC_DEVICE_MAX;
  atomic_store(&g_ndev, n);
  return n;
}

/* ---- streams ------------------------------------------------------------ */

/* A new non-blocking stream: it never synchronises with the legacy NULL
 * stream, which would serialise it with everything else. g_mu held. */
static drpc_stream *stream_make(int index, drpc_error *err) {
  if (g_nstreams >= STREAMS_MAX) {
    drpc_error_set(err, DRPC_ETOOBIG, "too many CUDA streams (limit %d)",
                   STREAMS_MAX);
    return NULL;
  }
  if (use_device(index, err))
    return NULL;
  drpc_stream *s = calloc(1, sizeof *s);
  if (!s) {
    drpc_error_set(err, DRPC_ENOMEM, "out of memory");
    return NULL;
  }
  cudaError_t rc = cudaStreamCreateWithFlags(&s->cs, cudaStreamNonBlocking);
  if (rc != cudaSuccess) {
    free(s);
    cuda_error(err, rc, "cudaStreamCreateWithFlags", index);
    return NULL;
  }
  s->index = index;
  s->next = g_streams;
  g_streams = s;
  g_nstreams++;
  return s;
}

/* The device's default stream is a real stream made on first use; NULL
 * only when CUDA cannot make one (callers then report "no stream"). */
static drpc_stream *cu_stream_default(void *ctx, int index) {
  (void)ctx;
  if (index < 0 || index >= DRPC_DEVICE_MAX)
    return NULL;
  drpc_stream *s = atomic_load(&g_default[index]);
  if (s)
    return s;
  pthread_mutex_lock(&g_mu);
  s = atomic_load(&g_default[index]);
  if (!s) {
    s = stream_make(index, NULL);
    if (s)
      atomic_store(&g_default[index], s);
  }
  pthread_mutex_unlock(&g_mu);
  return s;
}

static drpc_stream *cu_stream_new(void *ctx, int index, drpc_error *err) {
  (void)ctx;
  pthread_mutex_lock(&g_mu);
  drpc_stream *s = stream_make(index, err);
  pthread_mutex_unlock(&g_mu);
  return s;
}

static int need_stream(const drpc_stream *s, drpc_error *err) {
  return s ? 0 : drpc_error_set(err, DRPC_EINVAL, "no CUDA stream");
}

static int cu_stream_sync(void *ctx, drpc_stream *s, drpc_error *err) {
  (void)ctx;
  int rc = need_stream(s, err);
  if (rc || (rc = use_device(s->index, err)))
    return rc;
  cudaError_t c = cudaStreamSynchronize(s->cs);
  return c == cudaSuccess
             ? 0
             : cuda_error(err, c, "cudaStreamSynchronize", s->index);
}

/* ---- events ------------------------------------------------------------- */

static void event_link(drpc_devevent *e) {
  e->prev = NULL;
  e->next = g_events;
  if (g_events)
    g_events->prev = e;
  g_events = e;
}

static void event_unlink(drpc_devevent *e) {
  if (e->prev)
    e->prev->next = e->next;
  else
    g_events = e->next;
  if (e->next)
    e->next->prev = e->prev;
  e->prev = e->next = NULL;
}

static drpc_devevent *event_make(int index, unsigned flags, drpc_error *err) {
  if (use_device(index, err))
    return NULL;
  drpc_devevent *e = calloc(1, sizeof *e);
  if (!e) {
    drpc_error_set(err, DRPC_ENOMEM, "out of memory");
    return NULL;
  }
  cudaError_t rc = cudaEventCreateWithFlags(&e->ev, flags);
  if (rc != cudaSuccess) {
    free(e);
    cuda_error(err, rc, "cudaEventCreateWithFlags", index);
    return NULL;
  }
  e->index = index;
  e->refs = 1;
  e->ipc = (flags & cudaEventInterprocess) != 0;
  pthread_mutex_lock(&g_mu);
  event_link(e);
  pthread_mutex_unlock(&g_mu);
  return e;
}

static drpc_devevent *cu_event_new(void *ctx, int index, drpc_error *err) {
  (void)ctx;
  return event_make(index, cudaEventDisableTiming, err);
}

static void cu_event_free(void *ctx, drpc_devevent *e) {
  (void)ctx;
  if (!e)
    return;
  pthread_mutex_lock(&g_mu);
  bool last = --e->refs == 0;
  if (last)
    event_unlink(e);
  pthread_mutex_unlock(&g_mu);
  if (!last)
    return;
  (void)use_device(e->index, NULL);
  (void)cudaEventDestroy(e->ev);
  free(e);
}

static int cu_event_record(void *ctx, drpc_devevent *e, drpc_stream *s,
                           drpc_error *err) {
  (void)ctx;
  if (!e || !s)
    return drpc_error_set(err, DRPC_EINVAL, "no CUDA event or stream");
  if (e->index != s->index)
    return drpc_error_set(err, DRPC_EINVAL,
                          "an event of cuda:%d cannot be recorded on a "
                          "stream of cuda:%d",
                          e->index, s->index);
  int rc = use_device(s->index, err);
  if (rc)
    return rc;
  cudaError_t c = cudaEventRecord(e->ev, s->cs);
  return c == cudaSuccess ? 0 : cuda_error(err, c, "cudaEventRecord", s->index);
}

/* Waits on any device's event are fine: CUDA orders across devices. */
static int cu_stream_wait(void *ctx, drpc_stream *s, drpc_devevent *e,
                          drpc_error *err) {
  (void)ctx;
  if (!e || !s)
    return drpc_error_set(err, DRPC_EINVAL, "no CUDA event or stream");
  int rc = use_device(s->index, err);
  if (rc)
    return rc;
  cudaError_t c = cudaStreamWaitEvent(s->cs, e->ev, 0);
  return c == cudaSuccess ? 0
                          : cuda_error(err, c, "cudaStreamWaitEvent", s->index);
}

static int cu_event_sync(void *ctx, drpc_devevent *e, drpc_error *err) {
  (void)ctx;
  if (!e)
    return drpc_error_set(err, DRPC_EINVAL, "no CUDA event");
  int rc = use_device(e->index, err);
  if (rc)
    return rc;
  cudaError_t c = cudaEventSynchronize(e->ev);
  return c == cudaSuccess
             ? 0
             : cuda_error(err, c, "cudaEventSynchronize", e->index);
}

/* ---- the block table ---------------------------------------------------- */

/* Position of the first block whose address is above a. g_mu held. */
static size_t table_upper(uintptr_t a) {
  size_t lo = 0, hi = g_nblocks;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if ((uintptr_t)g_blocks[mid]->ptr <= a)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* The block holding p (any byte of it), or NULL. g_mu held. */
static block *table_find(const void *p) {
  uintptr_t a = (uintptr_t)p;
  size_t i = table_upper(a);
  if (i == 0)
    return NULL;
  block *b = g_blocks[i - 1];
  return a - (uintptr_t)b->ptr < b->size ? b : NULL;
}

static bool table_insert(block *b) {
  if (g_nblocks == g_capblocks) {
    size_t cap = g_capblocks ? g_capblocks * 2 : 256;
    block **t = realloc(g_blocks, cap * sizeof *t);
    if (!t)
      return false;
    g_blocks = t;
    g_capblocks = cap;
  }
  size_t i = table_upper((uintptr_t)b->ptr);
  memmove(&g_blocks[i + 1], &g_blocks[i], (g_nblocks - i) * sizeof *g_blocks);
  g_blocks[i] = b;
  g_nblocks++;
  return true;
}

static void table_remove(block *b) {
  size_t i = table_upper((uintptr_t)b->ptr);
  if (i == 0 || g_blocks[i - 1] != b)
    return;
  i--;
  memmove(&g_blocks[i], &g_blocks[i + 1],
          (g_nblocks - i - 1) * sizeof *g_blocks);
  g_nblocks--;
}

/* ---- IPC handle table --------------------------------------------------- */

static size_t ipc_hash(const uint8_t *h) {
  uint64_t x = 1469598103934665603ull; /* FNV-1a */
  for (size_t i = 0; i < sizeof(cudaIpcMemHandle_t); i++)
    x = (x ^ h[i]) * 1099511628211ull;
  return (size_t)(x % IPC_BUCKETS);
}

static ipc_map *ipc_find(const uint8_t *h) {
  for (ipc_map *m = g_ipc[ipc_hash(h)]; m; m = m->next)
    if (memcmp(m->handle, h, sizeof m->handle) == 0)
      return m;
  return NULL;
}

static int ipc_add(const uint8_t *h, void *base, block *own, int index,
                   drpc_error *err) {
  if (g_nipc >= IPC_MAPPINGS_MAX)
    return drpc_error_set(err, DRPC_ETOOBIG,
                          "too many CUDA IPC memory handles (limit %d)",
                          IPC_MAPPINGS_MAX);
  ipc_map *m = calloc(1, sizeof *m);
  if (!m)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  memcpy(m->handle, h, sizeof m->handle);
  m->base = base;
  m->own = own;
  m->index = index;
  size_t k = ipc_hash(h);
  m->next = g_ipc[k];
  g_ipc[k] = m;
  g_nipc++;
  return 0;
}

/* Forgets the handle of one of our blocks as it goes back to CUDA. */
static void ipc_forget(block *b) {
  const uint8_t *h = (const uint8_t *)&b->handle;
  for (ipc_map **pm = &g_ipc[ipc_hash(h)]; *pm; pm = &(*pm)->next) {
    if ((*pm)->own == b) {
      ipc_map *m = *pm;
      *pm = m->next;
      free(m);
      g_nipc--;
      return;
    }
  }
}

/* ---- the caching allocator ---------------------------------------------- */

/* The size class of an n-byte request; 0 when it cannot be rounded. */
static size_t round_size(size_t n) {
  if (n < SMALL_LIMIT)
    return n == 0 ? SMALL_ROUND
                  : (n + SMALL_ROUND - 1) / SMALL_ROUND * SMALL_ROUND;
  if (n > SIZE_MAX - LARGE_ROUND)
    return 0;
  return (n + LARGE_ROUND - 1) / LARGE_ROUND * LARGE_ROUND;
}

static size_t class_bucket(size_t size) {
  return (size_t)(((uint64_t)size * 0x9E3779B97F4A7C15ull) >> 56) %
         CLASS_BUCKETS;
}

static sclass *class_get(pool *p, size_t size, bool create) {
  size_t k = class_bucket(size);
  for (sclass *c = p->classes[k]; c; c = c->next)
    if (c->size == size)
      return c;
  if (!create)
    return NULL;
  sclass *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  c->size = size;
  c->next = p->classes[k];
  p->classes[k] = c;
  return c;
}

static slist *slist_get(sclass *c, drpc_stream *s, bool create) {
  for (slist *l = c->lists; l; l = l->next)
    if (l->stream == s)
      return l;
  if (!create)
    return NULL;
  slist *l = calloc(1, sizeof *l);
  if (!l)
    return NULL;
  l->stream = s;
  l->next = c->lists;
  c->lists = l;
  return l;
}

/* An event for marking a free, from the pool's spares or new. The pool's
 * device is current. NULL when CUDA cannot make one. */
static cudaEvent_t pool_event_get(pool *p) {
  if (p->nevents > 0)
    return p->events[--p->nevents];
  cudaEvent_t ev = NULL;
  if (cudaEventCreateWithFlags(&ev, cudaEventDisableTiming) != cudaSuccess)
    return NULL;
  return ev;
}

static void pool_event_put(pool *p, cudaEvent_t ev) {
  if (p->nevents == p->capevents) {
    size_t cap = p->capevents ? p->capevents * 2 : 64;
    cudaEvent_t *t = realloc(p->events, cap * sizeof *t);
    if (!t) {
      (void)cudaEventDestroy(ev);
      return;
    }
    p->events = t;
    p->capevents = cap;
  }
  p->events[p->nevents++] = ev;
}

/* Puts a freed block at the tail of its free list and of the pool's LRU
 * list. False when the lists cannot be allocated. */
static bool cache_push(pool *p, block *b) {
  sclass *c = class_get(p, b->size, true);
  slist *l = c ? slist_get(c, b->stream, true) : NULL;
  if (!l)
    return false;
  b->list = l;
  b->next = NULL;
  b->prev = l->tail;
  if (l->tail)
    l->tail->next = b;
  else
    l->head = b;
  l->tail = b;
  b->lru_next = NULL;
  b->lru_prev = p->lru_tail;
  if (p->lru_tail)
    p->lru_tail->lru_next = b;
  else
    p->lru_head = b;
  p->lru_tail = b;
  p->cached += b->size;
  return true;
}

static void cache_unlink(pool *p, block *b) {
  slist *l = b->list;
  if (b->prev)
    b->prev->next = b->next;
  else
    l->head = b->next;
  if (b->next)
    b->next->prev = b->prev;
  else
    l->tail = b->prev;
  if (b->lru_prev)
    b->lru_prev->lru_next = b->lru_next;
  else
    p->lru_head = b->lru_next;
  if (b->lru_next)
    b->lru_next->lru_prev = b->lru_prev;
  else
    p->lru_tail = b->lru_prev;
  b->list = NULL;
  b->prev = b->next = b->lru_prev = b->lru_next = NULL;
  p->cached -= b->size;
}

/* Returns a block's memory to CUDA and forgets the block. The work that
 * last used it is waited for first.
 *
 * A block whose IPC handle a peer has opened leaves that peer's mapping
 * stale: the peer caches mappings by handle, and the next allocation here
 * gets a new handle, so the peer never reads reused memory through the old
 * mapping, but it may keep the old mapping until its own shutdown. Blocks
 * are only released past the cache bound, on out of memory, and at
 * shutdown; a peer still reading a released block would read freed
 * memory, which is why cached blocks keep their memory (and handle) for
 * as long as the cache allows. g_mu held. */
static void release_block(block *b) {
  pool *p = &g_pools[b->pool];
  if (b->list)
    cache_unlink(p, b);
  if (b->freed) {
    (void)cudaEventSynchronize(b->freed);
    pool_event_put(p, b->freed);
    b->freed = NULL;
  }
  if (b->has_handle)
    ipc_forget(b);
  if (b->pool == HOST_POOL) {
    (void)cudaFreeHost(b->ptr);
  } else if (use_device(b->pool, NULL) == 0) {
    (void)cudaFree(b->ptr);
  }
  table_remove(b);
  if (b->live)
    p->allocated -= b->size;
  free(b);
}

/* Releases cached blocks, oldest first, until at most limit bytes stay. */
static void cache_trim(pool *p, size_t limit) {
  while (p->cached > limit && p->lru_head)
    release_block(p->lru_head);
}

static bool block_ready(const block *b) {
  return !b->freed || cudaEventQuery(b->freed) == cudaSuccess;
}

/* A cached block of this size usable on stream s: one freed on s (work on
 * s is ordered after the free), else the oldest one of another stream
 * whose free has been reached. Events on one stream complete in order, so
 * only the oldest block of each list is worth asking about. */
static block *cache_take(pool *p, size_t size, drpc_stream *s) {
  sclass *c = class_get(p, size, false);
  if (!c)
    return NULL;
  slist *mine = slist_get(c, s, false);
  block *b = mine ? mine->tail : NULL;
  for (slist *l = c->lists; !b && l; l = l->next)
    if (l != mine && l->head && block_ready(l->head))
      b = l->head;
  if (!b)
    return NULL;
  cache_unlink(p, b);
  if (b->freed) {
    pool_event_put(p, b->freed);
    b->freed = NULL;
  }
  return b;
}

static block *block_track(void *ptr, size_t size, int pool_index) {
  block *b = calloc(1, sizeof *b);
  if (!b)
    return NULL;
  b->ptr = ptr;
  b->size = size;
  b->pool = pool_index;
  if (!table_insert(b)) {
    free(b);
    return NULL;
  }
  return b;
}

/* A new device block; on out of memory the device is synchronised, every
 * cached block of it released, and the allocation tried once more. */
static block *device_block_new(int index, size_t size, size_t nbytes,
                               drpc_error *err) {
  pool *p = &g_pools[index];
  void *ptr = NULL;
  cudaError_t rc = cudaMalloc(&ptr, size);
  if (rc == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    (void)cudaDeviceSynchronize();
    cache_trim(p, 0);
    rc = cudaMalloc(&ptr, size);
  }
  if (rc == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    drpc_error_set(err, DRPC_ENOMEM,
                   "CUDA out of memory on cuda:%d (%zu bytes)", index, nbytes);
    return NULL;
  }
  if (rc != cudaSuccess) {
    cuda_error(err, rc, "cudaMalloc", index);
    return NULL;
  }
  block *b = block_track(ptr, size, index);
  if (!b) {
    (void)cudaFree(ptr);
    drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  }
  return b;
}

static void *cu_alloc(void *ctx, int index, size_t nbytes, drpc_stream *s,
                      drpc_error *err) {
  (void)ctx;
  if (need_stream(s, err))
    return NULL;
  if (s->index != index) {
    drpc_error_set(err, DRPC_EINVAL,
                   "memory of cuda:%d cannot be ordered on a stream of "
                   "cuda:%d",
                   index, s->index);
    return NULL;
  }
  size_t size = round_size(nbytes);
  if (size == 0) {
    drpc_error_set(err, DRPC_ENOMEM,
                   "CUDA out of memory on cuda:%d (%zu bytes)", index, nbytes);
    return NULL;
  }
  pthread_mutex_lock(&g_mu);
  block *b = NULL;
  if (use_device(index, err) == 0) {
    pool *p = &g_pools[index];
    b = cache_take(p, size, s);
    if (!b)
      b = device_block_new(index, size, nbytes, err);
    if (b) {
      b->live = true;
      b->stream = s;
      b->nbytes = nbytes;
      p->allocated += size;
    }
  }
  pthread_mutex_unlock(&g_mu);
  return b ? b->ptr : NULL;
}

/* Caches the block behind an event recorded on s now: a later allocation
 * on s may use it at once, one on another stream once the event is
 * reached. When the event cannot be recorded the stream is waited for; when
 * even that fails the block goes back to CUDA. */
static void cu_free(void *ctx, int index, void *ptr, size_t nbytes,
                    drpc_stream *s) {
  (void)ctx;
  (void)nbytes;
  if (!ptr || index < 0 || index >= DRPC_DEVICE_MAX)
    return;
  pthread_mutex_lock(&g_mu);
  block *b = table_find(ptr);
  if (!b || b->ptr != ptr || !b->live || b->pool != index) {
    /* Not one of ours: nothing to hand back. */
    pthread_mutex_unlock(&g_mu);
    return;
  }
  pool *p = &g_pools[index];
  b->live = false;
  p->allocated -= b->size;
  bool ordered = false;
  if (s && s->index == index && use_device(index, NULL) == 0) {
    cudaEvent_t ev = pool_event_get(p);
    if (ev && cudaEventRecord(ev, s->cs) == cudaSuccess) {
      b->freed = ev;
      ordered = true;
    } else {
      if (ev)
        pool_event_put(p, ev);
      ordered = cudaStreamSynchronize(s->cs) == cudaSuccess;
    }
  } else if (use_device(index, NULL) == 0) {
    ordered = cudaDeviceSynchronize() == cudaSuccess;
  }
  b->stream = s;
  if (!ordered || !cache_push(p, b))
    release_block(b);
  else
    cache_trim(p, DEVICE_CACHE_MAX);
  pthread_mutex_unlock(&g_mu);
}

/* Pinned host memory: portable (every device's context sees it as pinned)
 * and cached by size class. The caller must not free a buffer that a
 * queued copy still reads or writes: it may be handed out again at once. */
static void *cu_host_alloc(void *ctx, size_t nbytes, drpc_error *err) {
  (void)ctx;
  size_t size = round_size(nbytes);
  if (size == 0) {
    drpc_error_set(err, DRPC_ENOMEM, "out of pinned host memory (%zu bytes)",
                   nbytes);
    return NULL;
  }
  pthread_mutex_lock(&g_mu);
  pool *p = &g_pools[HOST_POOL];
  block *b = cache_take(p, size, NULL);
  if (!b) {
    void *ptr = NULL;
    cudaError_t rc = cudaHostAlloc(&ptr, size, cudaHostAllocPortable);
    if (rc == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      cache_trim(p, 0);
      rc = cudaHostAlloc(&ptr, size, cudaHostAllocPortable);
    }
    if (rc == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      drpc_error_set(err, DRPC_ENOMEM, "out of pinned host memory (%zu bytes)",
                     nbytes);
    } else if (rc != cudaSuccess) {
      cuda_error(err, rc, "cudaHostAlloc", -1);
    } else {
      b = block_track(ptr, size, HOST_POOL);
      if (!b) {
        (void)cudaFreeHost(ptr);
        drpc_error_set(err, DRPC_ENOMEM, "out of memory");
      }
    }
  }
  if (b) {
    b->live = true;
    p->allocated += size;
  }
  pthread_mutex_unlock(&g_mu);
  return b ? b->ptr : NULL;
}

static void cu_host_free(void *ctx, void *ptr) {
  (void)ctx;
  if (!ptr)
    return;
  pthread_mutex_lock(&g_mu);
  block *b = table_find(ptr);
  if (b && b->ptr == ptr && b->live && b->pool == HOST_POOL) {
    pool *p = &g_pools[HOST_POOL];
    b->live = false;
    p->allocated -= b->size;
    b->stream = NULL;
    if (!cache_push(p, b))
      release_block(b);
    else
      cache_trim(p, HOST_CACHE_MAX);
  }
  pthread_mutex_unlock(&g_mu);
}

/* ---- argument checks ---------------------------------------------------- */

/* A kernel or copy that strays outside its memory faults on the GPU, and
 * the fault is sticky: every later CUDA call of the process fails. So the
 * memory each one touches is checked first, as simcuda checks it: device
 * memory of ours must be live, on the right device, and the bytes touched
 * inside what was allocated. Memory that is not ours (a peer's, mapped by
 * ipc_open) must at least be device memory. */

/* The bytes [*lo, *hi) from the first element that shape/strides reach;
 * false when the arithmetic overflows. Empty shapes give [0, 0). */
static bool span_of(int ndim, const int64_t *shape, const int64_t *strides,
                    size_t esize, int64_t *lo, int64_t *hi) {
  int64_t a = 0, b = 0;
  for (int d = 0; d < ndim; d++) {
    if (shape[d] == 0) {
      *lo = *hi = 0;
      return true;
    }
  }
  for (int d = 0; d < ndim; d++) {
    int64_t ext;
    if (__builtin_mul_overflow(shape[d] - 1, strides[d], &ext))
      return false;
    if (ext < 0 ? __builtin_add_overflow(a, ext, &a)
                : __builtin_add_overflow(b, ext, &b))
      return false;
  }
  int64_t es = (int64_t)esize;
  return !__builtin_mul_overflow(a, es, lo) &&
         !__builtin_add_overflow(b, 1, &b) &&
         !__builtin_mul_overflow(b, es, hi);
}

/* Checks that work may touch bytes [p + lo, p + hi) of device index's
 * memory. Kernels (kernel: true) also refuse memory that is not ours unless
 * CUDA says it is device memory; copies leave such memory to
 * cudaMemcpyDefault. */
static int check_mem(const char *what, int index, bool kernel, const void *p,
                     int64_t lo, int64_t hi, drpc_error *err) {
  if (lo == hi)
    return 0;
  if (!p)
    return drpc_error_set(err, DRPC_EINVAL, "%s: NULL pointer", what);
  pthread_mutex_lock(&g_mu);
  const block *b = table_find(p);
  int rc = 0;
  bool known = b != NULL;
  if (b) {
    int64_t off = (int64_t)((const char *)p - (const char *)b->ptr);
    if (b->pool == HOST_POOL)
      rc = drpc_error_set(err, DRPC_EINVAL,
                          "%s: %p is pinned host memory, not device memory",
                          what, p);
    else if (!b->live)
      rc = drpc_error_set(err, DRPC_EINVAL,
                          "%s: %p is in freed memory (not a live allocation)",
                          what, p);
    else if (b->pool != index)
      rc = drpc_error_set(err, DRPC_EINVAL,
                          "%s: %p is memory of another device (cuda:%d), "
                          "not cuda:%d",
                          what, p, b->pool, index);
    else if (off + lo < 0 || off + hi > (int64_t)b->nbytes)
      rc = drpc_error_set(err, DRPC_EINVAL,
                          "%s: bytes [%lld, %lld) from %p run past the end "
                          "of its %zu-byte allocation",
                          what, (long long)lo, (long long)hi, p, b->nbytes);
  }
  pthread_mutex_unlock(&g_mu);
  if (known || rc || !kernel)
    return rc;
  struct cudaPointerAttributes attr;
  memset(&attr, 0, sizeof attr);
  cudaError_t c = cudaPointerGetAttributes(&attr, p);
  if (c != cudaSuccess) {
    (void)cudaGetLastError();
    return drpc_error_set(err, DRPC_EINVAL, "%s: %p is not device memory (%s)",
                          what, p, cudaGetErrorString(c));
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
    return drpc_error_set(err, DRPC_EINVAL, "%s: %p is not device memory", what,
                          p);
  return 0;
}

/* The same for n contiguous elements of esize bytes. */
static int check_dense(const char *what, int index, const void *p, int64_t n,
                       size_t esize, drpc_error *err) {
  int64_t hi;
  if (__builtin_mul_overflow(n, (int64_t)esize, &hi))
    return drpc_error_set(err, DRPC_EINVAL, "%s: size overflows", what);
  return check_mem(what, index, true, p, 0, hi, err);
}

static int check_strided(const char *what, int index, const void *p, int ndim,
                         const int64_t *shape, const int64_t *strides,
                         size_t esize, drpc_error *err) {
  int64_t lo, hi;
  if (!span_of(ndim, shape, strides, esize, &lo, &hi))
    return drpc_error_set(err, DRPC_EINVAL, "%s: strides overflow", what);
  return check_mem(what, index, true, p, lo, hi, err);
}

/* ---- copies ------------------------------------------------------------- */

/* Lets device from reach device to directly (best effort: without it CUDA
 * stages peer copies through the host). from is current. */
static void peer_enable(int from, int to) {
  if (from < 0 || to < 0 || from >= DRPC_DEVICE_MAX || to >= DRPC_DEVICE_MAX ||
      from == to)
    return;
  pthread_mutex_lock(&g_mu);
  if (!g_peer_tried[from][to]) {
    g_peer_tried[from][to] = true;
    int can = 0;
    if (cudaDeviceCanAccessPeer(&can, from, to) == cudaSuccess && can)
      (void)cudaDeviceEnablePeerAccess(to, 0);
    (void)cudaGetLastError(); /* "already enabled" is not a failure */
  }
  pthread_mutex_unlock(&g_mu);
}

static int cu_copy(void *ctx, void *dst, drpc_device ddev, const void *src,
                   drpc_device sdev, size_t n, drpc_stream *s,
                   drpc_error *err) {
  (void)ctx;
  if (n == 0)
    return 0;
  int rc = need_stream(s, err);
  if (rc)
    return rc;
  if (!dst || !src)
    return drpc_error_set(err, DRPC_EINVAL, "copy of %zu bytes to or from NULL",
                          n);
  bool dcuda = ddev.type == DRPC_DEVICE_CUDA;
  bool scuda = sdev.type == DRPC_DEVICE_CUDA;
  if ((!dcuda || ddev.index != s->index) && (!scuda || sdev.index != s->index))
    return drpc_error_set(err, DRPC_EINVAL,
                          "copy: a stream of cuda:%d copies between memory "
                          "of neither device",
                          s->index);
  if (n > INT64_MAX)
    return drpc_error_set(err, DRPC_EINVAL, "copy: %zu bytes", n);
  if ((dcuda &&
       (rc = check_mem("copy", ddev.index, false, dst, 0, (int64_t)n, err))) ||
      (scuda &&
       (rc = check_mem("copy", sdev.index, false, src, 0, (int64_t)n, err))))
    return rc;
  if ((rc = use_device(s->index, err)))
    return rc;
  if (ddev.type == DRPC_DEVICE_CUDA && sdev.type == DRPC_DEVICE_CUDA &&
      ddev.index != sdev.index)
    peer_enable(s->index, ddev.index == s->index ? sdev.index : ddev.index);
  /* Unified addressing tells host from device memory (and which device). */
  cudaError_t c = cudaMemcpyAsync(dst, src, n, cudaMemcpyDefault, s->cs);
  return c == cudaSuccess ? 0 : cuda_error(err, c, "cudaMemcpyAsync", s->index);
}

/* ---- kernels ------------------------------------------------------------ */

static bool dtype_ok(drpc_dtype dt) {
  return (int)dt >= 0 && (int)dt < (int)DRPC_DTYPE_COUNT &&
         drpc_dtype_size(dt) != 0;
}

static bool compute_dtype(drpc_dtype dt) {
  return dt == DRPC_FLOAT32 || dt == DRPC_FLOAT64 || dt == DRPC_INT64;
}

/* Checks ndim and shape; numel gets the element count. */
static int check_shape(const char *what, int ndim, const int64_t *shape,
                       int64_t *numel, drpc_error *err) {
  if (ndim < 0 || ndim > DRPC_TENSOR_MAX_DIMS || (ndim > 0 && !shape))
    return drpc_error_set(err, DRPC_EINVAL, "%s: bad number of dimensions %d",
                          what, ndim);
  int64_t n = 1;
  for (int d = 0; d < ndim; d++) {
    if (shape[d] < 0)
      return drpc_error_set(err, DRPC_EINVAL, "%s: negative dimension %lld",
                            what, (long long)shape[d]);
    if (shape[d] == 0)
      n = 0;
    else if (n > INT64_MAX / shape[d])
      return drpc_error_set(err, DRPC_EINVAL, "%s: shape overflows", what);
    else
      n *= shape[d];
  }
  *numel = n;
  return 0;
}

static int kernel_begin(drpc_stream *s, drpc_error *err) {
  int rc = need_stream(s, err);
  return rc ? rc : use_device(s->index, err);
}

static int kernel_end(cudaError_t rc, const char *what, const drpc_stream *s,
                      drpc_error *err) {
  return rc == cudaSuccess ? 0 : cuda_error(err, rc, what, s->index);
}

static int cu_fill(void *ctx, drpc_stream *s, void *dst, drpc_dtype dt,
                   int64_t n, double value, drpc_error *err) {
  (void)ctx;
  if (!dtype_ok(dt) || n < 0 || (n > 0 && !dst))
    return drpc_error_set(err, DRPC_EINVAL, "fill: bad dtype, count or NULL");
  if (n == 0)
    return 0;
  int rc = kernel_begin(s, err);
  if (rc ||
      (rc = check_dense("fill", s->index, dst, n, drpc_dtype_size(dt), err)))
    return rc;
  /* Converted here, as the host converts, so that fill agrees with the
   * CPU and simcuda bit for bit; the kernel only copies bytes. */
  union {
    float f32;
    double f64;
    int64_t i64;
    int32_t i32;
    uint8_t u8;
  } v;
  memset(&v, 0, sizeof v);
  switch (dt) {
  case DRPC_FLOAT32:
    v.f32 = (float)value;
    break;
  case DRPC_FLOAT64:
    v.f64 = value;
    break;
  case DRPC_INT64:
    v.i64 = (int64_t)value;
    break;
  case DRPC_INT32:
    v.i32 = (int32_t)(int64_t)value;
    break;
  case DRPC_UINT8:
    v.u8 = (uint8_t)(int64_t)value;
    break;
  default:
    v.u8 = value != 0;
    break;
  }
  return kernel_end(drpc_ck_fill(s->cs, dst, (int)dt, n, &v), "fill kernel", s,
                    err);
}

static int cu_strided_copy(void *ctx, drpc_stream *s, void *dst, drpc_dtype ddt,
                           const void *src, drpc_dtype sdt, int ndim,
                           const int64_t *shape, const int64_t *strides,
                           drpc_error *err) {
  (void)ctx;
  int64_t n = 0;
  int rc = check_shape("strided_copy", ndim, shape, &n, err);
  if (rc)
    return rc;
  if (!dtype_ok(ddt) || !dtype_ok(sdt) || (ndim > 0 && !strides) ||
      (n > 0 && (!dst || !src)))
    return drpc_error_set(err, DRPC_EINVAL,
                          "strided_copy: bad dtype, strides or NULL");
  if (n == 0)
    return 0;
  if ((rc = kernel_begin(s, err)) ||
      (rc = check_dense("strided_copy", s->index, dst, n, drpc_dtype_size(ddt),
                        err)) ||
      (rc = check_strided("strided_copy", s->index, src, ndim, shape, strides,
                          drpc_dtype_size(sdt), err)))
    return rc;
  return kernel_end(drpc_ck_strided_copy(s->cs, dst, (int)ddt, src, (int)sdt,
                                         ndim, shape, strides),
                    "strided_copy kernel", s, err);
}

static int operand_in(const drpc_dev_operand *o, drpc_ck_operand *out,
                      drpc_error *err) {
  if (!o)
    return drpc_error_set(err, DRPC_EINVAL, "binary: NULL operand");
  if (o->data && !compute_dtype(o->dtype))
    return drpc_error_set(err, DRPC_EINVAL,
                          "binary: operand of dtype %s (expected float32, "
                          "float64 or int64)",
                          drpc_dtype_name(o->dtype));
  memset(out, 0, sizeof *out);
  out->data = o->data;
  out->dtype = (int)o->dtype;
  memcpy(out->strides, o->strides, sizeof out->strides);
  out->is_float = o->is_float;
  out->f = o->f;
  out->i = o->i;
  return 0;
}

static int cu_binary(void *ctx, drpc_stream *s, drpc_devop op, void *dst,
                     drpc_dtype dt, int ndim, const int64_t *shape,
                     const drpc_dev_operand *a, const drpc_dev_operand *b,
                     double alpha_f, int64_t alpha_i, drpc_error *err) {
  (void)ctx;
  int64_t n = 0;
  int rc = check_shape("binary", ndim, shape, &n, err);
  if (rc)
    return rc;
  if (!compute_dtype(dt))
    return drpc_error_set(err, DRPC_EINVAL, "binary: result dtype %s",
                          drpc_dtype_name(dt));
  if ((int)op < (int)DRPC_DEVOP_ADD || (int)op > (int)DRPC_DEVOP_DIV)
    return drpc_error_set(err, DRPC_EINVAL, "binary: unknown op %d", (int)op);
  if (op == DRPC_DEVOP_DIV && dt == DRPC_INT64)
    return drpc_error_set(err, DRPC_EINVAL,
                          "binary: division needs a floating result dtype");
  drpc_ck_operand ka, kb;
  if ((rc = operand_in(a, &ka, err)) || (rc = operand_in(b, &kb, err)))
    return rc;
  if (n == 0)
    return 0;
  if (!dst)
    return drpc_error_set(err, DRPC_EINVAL, "binary: NULL destination");
  if ((rc = kernel_begin(s, err)) ||
      (rc =
           check_dense("binary", s->index, dst, n, drpc_dtype_size(dt), err)) ||
      (a->data &&
       (rc = check_strided("binary", s->index, a->data, ndim, shape, a->strides,
                           drpc_dtype_size(a->dtype), err))) ||
      (b->data &&
       (rc = check_strided("binary", s->index, b->data, ndim, shape, b->strides,
                           drpc_dtype_size(b->dtype), err))))
    return rc;
  return kernel_end(drpc_ck_binary(s->cs, (int)op, dst, (int)dt, ndim, shape,
                                   &ka, &kb, alpha_f, alpha_i),
                    "binary kernel", s, err);
}

static int cu_sum(void *ctx, drpc_stream *s, void *dst, drpc_dtype ddt,
                  int64_t dst_numel, const void *src, drpc_dtype sdt, int ndim,
                  const int64_t *shape, const int64_t *src_strides,
                  const int64_t *dst_strides, drpc_error *err) {
  (void)ctx;
  int64_t n = 0;
  int rc = check_shape("sum", ndim, shape, &n, err);
  if (rc)
    return rc;
  if (!dtype_ok(ddt) || !dtype_ok(sdt) || dst_numel < 0 ||
      (ndim > 0 && (!src_strides || !dst_strides)) || (dst_numel > 0 && !dst) ||
      (n > 0 && !src))
    return drpc_error_set(err, DRPC_EINVAL,
                          "sum: bad dtype, count, strides or NULL");
  if (n > 0 && dst_numel == 0)
    return drpc_error_set(err, DRPC_EINVAL,
                          "sum: %lld elements into an empty result",
                          (long long)n);
  if (dst_numel == 0)
    return 0;
  if ((rc = kernel_begin(s, err)) ||
      (rc = check_dense("sum", s->index, dst, dst_numel, drpc_dtype_size(ddt),
                        err)) ||
      (rc = check_strided("sum", s->index, src, ndim, shape, src_strides,
                          drpc_dtype_size(sdt), err)))
    return rc;
  /* A large full reduction adds partial sums in a second pass; their
   * scratch memory is ordered on s like any allocation, so handing it back
   * right after the launch is safe. Without it the kernel still runs (one
   * block does the whole reduction). */
  void *scratch = NULL;
  if (dst_numel == 1 && n > DRPC_CK_SUM_SERIAL_MAX)
    scratch = cu_alloc(NULL, s->index, DRPC_CK_SUM_SCRATCH_BYTES, s, NULL);
  cudaError_t c = drpc_ck_sum(s->cs, dst, (int)ddt, dst_numel, src, (int)sdt,
                              ndim, shape, src_strides, dst_strides, scratch);
  if (scratch)
    cu_free(NULL, s->index, scratch, DRPC_CK_SUM_SCRATCH_BYTES, s);
  if (c == cudaErrorInvalidValue)
    return drpc_error_set(err, DRPC_EINVAL,
                          "sum: an output index lies outside the %lld-element "
                          "result, or an argument is invalid (cuda:%d)",
                          (long long)dst_numel, s->index);
  return kernel_end(c, "sum kernel", s, err);
}

static int cu_matmul(void *ctx, drpc_stream *s, void *dst, drpc_dtype dt,
                     const void *a, const void *b, int64_t m, int64_t k,
                     int64_t n, drpc_error *err) {
  (void)ctx;
  if (!compute_dtype(dt))
    return drpc_error_set(err, DRPC_EINVAL, "matmul: dtype %s",
                          drpc_dtype_name(dt));
  if (m < 0 || k < 0 || n < 0)
    return drpc_error_set(err, DRPC_EINVAL, "matmul: negative size");
  if (m == 0 || n == 0)
    return 0;
  if (!dst || (k > 0 && (!a || !b)))
    return drpc_error_set(err, DRPC_EINVAL, "matmul: NULL operand");
  int64_t mk, kn, mn;
  if (__builtin_mul_overflow(m, k, &mk) || __builtin_mul_overflow(k, n, &kn) ||
      __builtin_mul_overflow(m, n, &mn))
    return drpc_error_set(err, DRPC_EINVAL, "matmul: size overflows");
  size_t es = drpc_dtype_size(dt);
  int rc = kernel_begin(s, err);
  if (rc || (rc = check_dense("matmul", s->index, dst, mn, es, err)) ||
      (rc = check_dense("matmul", s->index, a, mk, es, err)) ||
      (rc = check_dense("matmul", s->index, b, kn, es, err)))
    return rc;
  return kernel_end(drpc_ck_matmul(s->cs, dst, (int)dt, a, b, m, k, n),
                    "matmul kernel", s, err);
}

/* ---- IPC ---------------------------------------------------------------- */

static int cu_ipc_export(void *ctx, const void *p, uint8_t *handle, size_t *len,
                         size_t *offset, drpc_error *err) {
  (void)ctx;
  if (!p || !handle || !len || !offset)
    return drpc_error_set(err, DRPC_EINVAL, "ipc_export: NULL argument");
  pthread_mutex_lock(&g_mu);
  int rc = 0;
  block *b = table_find(p);
  if (!b || b->pool == HOST_POOL || !b->live) {
    rc = drpc_error_set(err, DRPC_EINVAL,
                        "ipc_export: %p is not live CUDA memory allocated "
                        "by drpc",
                        p);
  } else if (!b->has_handle) {
    /* One handle per block for its whole life: a peer's cached mapping of
     * it stays valid while the block is freed and reused here. */
    rc = use_device(b->pool, err);
    cudaError_t c = cudaSuccess;
    if (!rc)
      c = cudaIpcGetMemHandle(&b->handle, b->ptr);
    if (!rc && c != cudaSuccess)
      rc = cuda_error(err, c, "cudaIpcGetMemHandle", b->pool);
    if (!rc)
      rc = ipc_add((const uint8_t *)&b->handle, b->ptr, b, b->pool, err);
    if (!rc)
      b->has_handle = true;
  }
  if (!rc) {
    memcpy(handle, &b->handle, sizeof b->handle);
    *len = sizeof b->handle;
    *offset = (size_t)((const char *)p - (const char *)b->ptr);
  }
  pthread_mutex_unlock(&g_mu);
  return rc;
}

/* Maps a peer's block once per handle; the mapping lives until shutdown.
 * A handle of one of our own blocks (CUDA cannot open those in the process
 * that made them) gives the block itself. */
static void *cu_ipc_open(void *ctx, int index, const uint8_t *handle,
                         size_t len, drpc_error *err) {
  (void)ctx;
  if (!handle || len != sizeof(cudaIpcMemHandle_t)) {
    drpc_error_set(err, DRPC_EINVAL,
                   "ipc_open: a CUDA memory handle has %zu bytes, not %zu",
                   sizeof(cudaIpcMemHandle_t), len);
    return NULL;
  }
  pthread_mutex_lock(&g_mu);
  void *p = NULL;
  ipc_map *m = ipc_find(handle);
  if (m) {
    p = m->base;
  } else if (use_device(index, err) == 0) {
    cudaIpcMemHandle_t h;
    memcpy(&h, handle, sizeof h);
    cudaError_t c = cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess);
    if (c != cudaSuccess) {
      p = NULL;
      cuda_error(err, c, "cudaIpcOpenMemHandle", index);
    } else if (ipc_add(handle, p, NULL, index, err)) {
      (void)cudaIpcCloseMemHandle(p);
      p = NULL;
    }
  }
  pthread_mutex_unlock(&g_mu);
  return p;
}

static drpc_devevent *cu_ipc_event_new(void *ctx, int index, drpc_error *err) {
  (void)ctx;
  return event_make(index, cudaEventDisableTiming | cudaEventInterprocess, err);
}

static int cu_ipc_event_export(void *ctx, drpc_devevent *e, uint8_t *handle,
                               size_t *len, drpc_error *err) {
  (void)ctx;
  if (!e || !handle || !len)
    return drpc_error_set(err, DRPC_EINVAL, "ipc_event_export: NULL argument");
  if (!e->ipc)
    return drpc_error_set(err, DRPC_EINVAL,
                          "ipc_event_export: the event was not made by "
                          "ipc_event_new");
  pthread_mutex_lock(&g_mu);
  int rc = 0;
  if (!e->has_handle) {
    rc = use_device(e->index, err);
    cudaError_t c = cudaSuccess;
    if (!rc)
      c = cudaIpcGetEventHandle(&e->handle, e->ev);
    if (!rc && c != cudaSuccess)
      rc = cuda_error(err, c, "cudaIpcGetEventHandle", e->index);
    if (!rc)
      e->has_handle = true;
  }
  if (!rc) {
    memcpy(handle, &e->handle, sizeof e->handle);
    *len = sizeof e->handle;
  }
  pthread_mutex_unlock(&g_mu);
  return rc;
}

/* A peer's event, usable on the calling thread's current device (CUDA
 * waits across devices). Our own event's handle gives that event, with one
 * more reference. */
static drpc_devevent *cu_ipc_event_open(void *ctx, const uint8_t *handle,
                                        size_t len, drpc_error *err) {
  (void)ctx;
  if (!handle || len != sizeof(cudaIpcEventHandle_t)) {
    drpc_error_set(err, DRPC_EINVAL,
                   "ipc_event_open: a CUDA event handle has %zu bytes, not "
                   "%zu",
                   sizeof(cudaIpcEventHandle_t), len);
    return NULL;
  }
  pthread_mutex_lock(&g_mu);
  for (drpc_devevent *e = g_events; e; e = e->next) {
    if (e->has_handle && memcmp(&e->handle, handle, sizeof e->handle) == 0) {
      e->refs++;
      pthread_mutex_unlock(&g_mu);
      return e;
    }
  }
  pthread_mutex_unlock(&g_mu);
  int index = 0;
  if (cudaGetDevice(&index) != cudaSuccess || index < 0 ||
      index >= DRPC_DEVICE_MAX)
    index = 0;
  if (use_device(index, err))
    return NULL;
  drpc_devevent *e = calloc(1, sizeof *e);
  if (!e) {
    drpc_error_set(err, DRPC_ENOMEM, "out of memory");
    return NULL;
  }
  cudaIpcEventHandle_t h;
  memcpy(&h, handle, sizeof h);
  cudaError_t c = cudaIpcOpenEventHandle(&e->ev, h);
  if (c != cudaSuccess) {
    free(e);
    cuda_error(err, c, "cudaIpcOpenEventHandle", index);
    return NULL;
  }
  e->index = index;
  e->refs = 1;
  pthread_mutex_lock(&g_mu);
  event_link(e);
  pthread_mutex_unlock(&g_mu);
  return e;
}

/* ---- shutdown ----------------------------------------------------------- */

static void pool_clear(pool *p) {
  for (size_t i = 0; i < p->nevents; i++)
    (void)cudaEventDestroy(p->events[i]);
  free(p->events);
  for (int k = 0; k < CLASS_BUCKETS; k++) {
    sclass *c = p->classes[k];
    while (c) {
      sclass *cn = c->next;
      slist *l = c->lists;
      while (l) {
        slist *ln = l->next;
        free(l);
        l = ln;
      }
      free(c);
      c = cn;
    }
  }
  memset(p, 0, sizeof *p);
}

/* Waits for every device, then frees every block (cached or still live:
 * their storages went with the backend), IPC mapping, event and stream, so
 * that the backend can be installed again from scratch. Errors are ignored:
 * there is no one left to report them to. */
static void cu_shutdown(void *ctx) {
  (void)ctx;
  pthread_mutex_lock(&g_mu);
  int ndev = atomic_load(&g_ndev);
  for (int d = 0; d < ndev; d++)
    if (use_device(d, NULL) == 0)
      (void)cudaDeviceSynchronize();
  while (g_nblocks > 0)
    release_block(g_blocks[g_nblocks - 1]);
  free(g_blocks);
  g_blocks = NULL;
  g_capblocks = 0;
  for (int k = 0; k < IPC_BUCKETS; k++) {
    ipc_map *m = g_ipc[k];
    while (m) {
      ipc_map *next = m->next;
      if (!m->own && use_device(m->index, NULL) == 0)
        (void)cudaIpcCloseMemHandle(m->base);
      free(m);
      m = next;
    }
    g_ipc[k] = NULL;
  }
  g_nipc = 0;
  for (int i = 0; i <= HOST_POOL; i++) {
    if (i < HOST_POOL && g_pools[i].nevents > 0)
      (void)use_device(i, NULL);
    pool_clear(&g_pools[i]);
  }
  while (g_events) {
    drpc_devevent *e = g_events;
    event_unlink(e);
    (void)use_device(e->index, NULL);
    (void)cudaEventDestroy(e->ev);
    free(e);
  }
  for (int d = 0; d < DRPC_DEVICE_MAX; d++)
    atomic_store(&g_default[d], NULL);
  while (g_streams) {
    drpc_stream *s = g_streams;
    g_streams = s->next;
    (void)use_device(s->index, NULL);
    (void)cudaStreamDestroy(s->cs);
    free(s);
  }
  g_nstreams = 0;
  memset(g_peer_tried, 0, sizeof g_peer_tried);
  (void)cudaGetLastError();
  pthread_mutex_unlock(&g_mu);
}

/* ---- the backend -------------------------------------------------------- */

static const drpc_device_backend g_cuda_backend = {
    .name = "cuda",
    .device_count = cu_device_count,
    .alloc = cu_alloc,
    .free = cu_free,
    .host_alloc = cu_host_alloc,
    .host_free = cu_host_free,
    .stream_default = cu_stream_default,
    .stream_new = cu_stream_new,
    .stream_sync = cu_stream_sync,
    .event_new = cu_event_new,
    .event_free = cu_event_free,
    .event_record = cu_event_record,
    .stream_wait = cu_stream_wait,
    .event_sync = cu_event_sync,
    .copy = cu_copy,
    .fill = cu_fill,
    .strided_copy = cu_strided_copy,
    .binary = cu_binary,
    .sum = cu_sum,
    .matmul = cu_matmul,
    .ipc_export = cu_ipc_export,
    .ipc_open = cu_ipc_open,
    .ipc_event_new = cu_ipc_event_new,
    .ipc_event_export = cu_ipc_event_export,
    .ipc_event_open = cu_ipc_event_open,
    .shutdown = cu_shutdown,
};

const drpc_device_backend *drpc_cuda_backend(void) {
  return &g_cuda_backend;
}
