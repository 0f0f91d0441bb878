/* The device interface: what core/ knows of accelerators.
 *
 * A tensor lives on "cpu" or on "cuda:N". What "cuda" means is one
 * process-wide backend, installed with drpc_device_use:
 *
 *   cuda     the CUDA runtime (gpu/cuda.c, built when CMake finds the CUDA
 *            toolkit); real device memory, streams and events.
 *   simcuda  a simulated CUDA device in host memory (gpu/simcuda.c): its own
 *            allocations, streams as ordered queues of work that runs only
 *            when something waits for it, events between them. Every
 *            device-map and stream rule runs on it in tests on machines with
 *            no GPU, and a missing wait shows up as stale data.
 *
 * core/ calls the backend only through the drpc_device_* functions below,
 * never through a CUDA header. With no backend installed there are no CUDA
 * devices (drpc_device_count() == 0) and every CPU path works as before.
 *
 * Streams: each device has a default stream and a pool of
 * DRPC_STREAM_POOL_SIZE streams (as PyTorch's getStreamFromPool); streams
 * live until drpc_device_use installs another backend, so storages and
 * events may refer to them without counting references. Each thread has a
 * current stream per device (the default one until set).
 *
 * Memory is stream-ordered: a device storage belongs to the stream it was
 * allocated on; when its last reference goes, the memory is handed back on
 * that stream, so work queued there before is done with it before anything
 * reuses it. Work on other streams must be ordered before that point by the
 * user (an event), as with PyTorch's record_stream. */
#ifndef DRPC_DEVICE_H
#define DRPC_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "drpc/error.h"
#include "drpc/tensor.h"
#include "drpc/value.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The most CUDA devices a backend may report. */
#define DRPC_DEVICE_MAX 16
#define DRPC_STREAM_POOL_SIZE 32
/* Bytes an IPC memory or event handle may take (CUDA's are 64). */
#define DRPC_IPC_HANDLE_MAX 64

/* Backend objects; what they hold is the backend's business, except that a
 * stream object starts with an int holding its device index (read by
 * drpc_stream_device). */
typedef struct drpc_stream drpc_stream;
typedef struct drpc_devevent drpc_devevent;

typedef enum drpc_devop {
  DRPC_DEVOP_ADD = 0, /* a + alpha * b */
  DRPC_DEVOP_SUB = 1, /* a - alpha * b */
  DRPC_DEVOP_MUL = 2,
  DRPC_DEVOP_DIV = 3, /* floating results only */
} drpc_devop;

/* One input of an elementwise kernel: device memory read through strides
 * in elements, one per output dimension (0 along broadcast dimensions), or
 * a number when data is NULL. */
typedef struct drpc_dev_operand {
  const void *data; /* first element; NULL: a number */
  drpc_dtype dtype; /* float32, float64 or int64 */
  int64_t strides[DRPC_TENSOR_MAX_DIMS];
  bool is_float; /* numbers: f is the value, else i */
  double f;
  int64_t i;
} drpc_dev_operand;

/* A backend. Functions that can fail return 0 or a DRPC_E* code and set
 * err (which may be NULL). All kernels and copies are asynchronous on the
 * stream they are given, which belongs to the device their memory is on.
 * Kernel dtypes follow core/ops.c: the compute dtypes are float32, float64
 * and int64; float32 arithmetic is done in double and rounded once; int64
 * wraps; sources are converted to the destination dtype element by
 * element as a C cast does. */
typedef struct drpc_device_backend {
  const char *name; /* "cuda", "simcuda" */
  /* CUDA devices present (0 when none: then nothing else is called). */
  int (*device_count)(void *ctx);

  /* nbytes of device memory on device index, ordered on stream s: usable
   * by work queued on s after this call. NULL (err set) when out of
   * memory. nbytes may be 0 (a non-NULL pointer comes back). */
  void *(*alloc)(void *ctx, int index, size_t nbytes, drpc_stream *s,
                 drpc_error *err);
  /* Hands p back once the work queued on s so far has finished. */
  void (*free)(void *ctx, int index, void *p, size_t nbytes, drpc_stream *s);
  /* Page-locked host memory for staging copies (plain malloc is fine for a
   * backend that has none); freed with host_free. */
  void *(*host_alloc)(void *ctx, size_t nbytes, drpc_error *err);
  void (*host_free)(void *ctx, void *p);

  drpc_stream *(*stream_default)(void *ctx, int index);
  /* A new stream on device index; streams are freed only by shutdown. */
  drpc_stream *(*stream_new)(void *ctx, int index, drpc_error *err);
  /* Blocks the calling thread until the work queued on s has finished. */
  int (*stream_sync)(void *ctx, drpc_stream *s, drpc_error *err);

  drpc_devevent *(*event_new)(void *ctx, int index, drpc_error *err);
  void (*event_free)(void *ctx, drpc_devevent *e);
  /* Marks the point reached by the work queued on s so far. */
  int (*event_record)(void *ctx, drpc_devevent *e, drpc_stream *s,
                      drpc_error *err);
  /* Work queued on s from now on runs after e's point (no host wait). An
   * event never recorded is complete. */
  int (*stream_wait)(void *ctx, drpc_stream *s, drpc_devevent *e,
                     drpc_error *err);
  /* Blocks the calling thread until e's point has been reached. */
  int (*event_sync)(void *ctx, drpc_devevent *e, drpc_error *err);

  /* Copies n bytes between any two of host memory (device cpu) and device
   * memory, on stream s. */
  int (*copy)(void *ctx, void *dst, drpc_device ddev, const void *src,
              drpc_device sdev, size_t n, drpc_stream *s, drpc_error *err);

  /* Kernels (on the device of s; every pointer is device memory there). */
  /* dst[0..n) = value, converted to dt. */
  int (*fill)(void *ctx, drpc_stream *s, void *dst, drpc_dtype dt, int64_t n,
              double value, drpc_error *err);
  /* dst (contiguous, ddt) = src read through shape/strides (elements),
   * each element converted from sdt. Any supported dtype pair (all six
   * dtypes); bool destinations get 0 or 1. */
  int (*strided_copy)(void *ctx, drpc_stream *s, void *dst, drpc_dtype ddt,
                      const void *src, drpc_dtype sdt, int ndim,
                      const int64_t *shape, const int64_t *strides,
                      drpc_error *err);
  /* dst (contiguous, shape, dt) = a op b; alpha scales b for ADD/SUB
   * (alpha_f for floating dt, alpha_i for int64). */
  int (*binary)(void *ctx, drpc_stream *s, drpc_devop op, void *dst,
                drpc_dtype dt, int ndim, const int64_t *shape,
                const drpc_dev_operand *a, const drpc_dev_operand *b,
                double alpha_f, int64_t alpha_i, drpc_error *err);
  /* dst (ddt) = sum of src (sdt, shape/src_strides) into the element at
   * sum(idx[d] * dst_strides[d]); dst_strides are 0 along reduced
   * dimensions. dst is zeroed by the kernel first (dst_numel elements).
   * Accumulates in double for floating ddt, int64 otherwise. */
  int (*sum)(void *ctx, drpc_stream *s, void *dst, drpc_dtype ddt,
             int64_t dst_numel, const void *src, drpc_dtype sdt, int ndim,
             const int64_t *shape, const int64_t *src_strides,
             const int64_t *dst_strides, drpc_error *err);
  /* dst (m x n) = a (m x k) @ b (k x n), all contiguous of dtype dt. */
  int (*matmul)(void *ctx, drpc_stream *s, void *dst, drpc_dtype dt,
                const void *a, const void *b, int64_t m, int64_t k, int64_t n,
                drpc_error *err);

  /* Same-host interprocess sharing; NULL members: not supported. */
  /* A handle for the allocation holding p, and p's offset in it. */
  int (*ipc_export)(void *ctx, const void *p, uint8_t *handle, size_t *len,
                    size_t *offset, drpc_error *err);
  /* Maps a peer's allocation (cached: the same handle maps once). */
  void *(*ipc_open)(void *ctx, int index, const uint8_t *handle, size_t len,
                    drpc_error *err);
  /* An interprocess event (event_new's, usable for ipc_event_export). */
  drpc_devevent *(*ipc_event_new)(void *ctx, int index, drpc_error *err);
  int (*ipc_event_export)(void *ctx, drpc_devevent *e, uint8_t *handle,
                          size_t *len, drpc_error *err);
  drpc_devevent *(*ipc_event_open)(void *ctx, const uint8_t *handle, size_t len,
                                   drpc_error *err);

  /* Frees every stream, event and cached allocation (drpc_device_use). */
  void (*shutdown)(void *ctx);
  /* True when a process may open its own IPC handles (simcuda, whose
   * handles work only inside one process); CUDA refuses that. */
  bool ipc_in_process;
} drpc_device_backend;

/* Installs b (NULL: none) as the process's CUDA backend, shutting down the
 * previous one. Call before starting agents or making device tensors, and
 * with none alive (their memory belongs to the old backend). */
void drpc_device_use(const drpc_device_backend *b, void *ctx);
/* The installed backend (NULL when none) and its context. */
const drpc_device_backend *drpc_device_backend_get(void **ctx);
/* CUDA devices the installed backend reports (0 when none). */
int drpc_device_count(void);
/* True for cpu, and for cuda:i with i < drpc_device_count(). */
bool drpc_device_valid(drpc_device d);

/* Names the host and process, "<host>/<process>" ("" by default): workers
 * on the same host may share device memory by IPC handle, those in other
 * processes only unless the backend says ipc_in_process. gpu/ sets it with
 * the backend (simcuda: a host unique to the process). */
void drpc_device_set_host(const char *host);
const char *drpc_device_host(void);

/* ---- streams and events ------------------------------------------------ */

drpc_stream *drpc_stream_default(int index);
/* The next of the device's pool streams, round robin. NULL when index is
 * not a device. */
drpc_stream *drpc_stream_from_pool(int index);
/* The calling thread's current stream on device index. */
drpc_stream *drpc_stream_current(int index);
/* Sets it (NULL: back to the default stream). */
void drpc_stream_set_current(int index, drpc_stream *s);
/* Exchanges the calling thread's current streams (every device) with
 * state[DRPC_DEVICE_MAX] (NULL entries: the default streams). A scheduler
 * that runs several user contexts on one thread (the simulator's fibers)
 * keeps one state per context and swaps it in and out around each run, so
 * that current streams belong to the context as they do to a thread. */
void drpc_stream_swap_currents(drpc_stream **state);
int drpc_stream_sync(drpc_stream *s, drpc_error *err);

/* The device index a stream belongs to. */
int drpc_stream_device(const drpc_stream *s);

drpc_devevent *drpc_devevent_new(int index, drpc_error *err);
void drpc_devevent_free(drpc_devevent *e);
int drpc_devevent_record(drpc_devevent *e, drpc_stream *s, drpc_error *err);
int drpc_stream_wait_event(drpc_stream *s, drpc_devevent *e, drpc_error *err);
int drpc_devevent_sync(drpc_devevent *e, drpc_error *err);
/* Makes `waiter` wait for the work queued on `on` so far (an event in
 * between); no host wait. */
int drpc_stream_wait_stream(drpc_stream *waiter, drpc_stream *on,
                            drpc_error *err);

/* ---- readiness of received device data ---------------------------------- */

/* Where received tensors become ready: per CUDA device, an event recorded
 * after the copies that brought them there (as PyTorch's CUDA futures keep).
 * Nothing waits on the host: consumers make their own streams wait.
 * Threads may share one for reading once it is built. */
typedef struct drpc_devready drpc_devready;
drpc_devready *drpc_devready_new(void);
/* Frees r and its events (a no-op for NULL; events of a backend replaced
 * since are the backend's to free). */
void drpc_devready_free(drpc_devready *r);
/* Marks the work queued on s so far as part of r (one stream per device:
 * a later stream of the same device replaces the point). */
int drpc_devready_add(drpc_devready *r, drpc_stream *s, drpc_error *err);
/* How many devices r covers (0 for NULL). */
int drpc_devready_count(const drpc_devready *r);
/* Makes the calling thread's current streams of r's devices wait for r. */
int drpc_devready_wait_current(const drpc_devready *r, drpc_error *err);
/* Runs code "on" r: for each of r's devices, the calling thread's current
 * stream becomes a pool stream that waits for r; the old current streams go
 * to saved (DRPC_DEVICE_MAX entries). drpc_devready_leave puts them back;
 * with to_default, each device's default stream first waits for the work
 * queued meanwhile (for results that outlive the call, such as an RRef
 * owner's value, read later from any thread). */
/* ---- bytes staged from a device, chunk by chunk ---------------------------
 */

/* Byte ranges of something (an outgoing frame) that device copies are still
 * filling, each with the event that says it is done. A writer waits for
 * the chunk it is about to write while the device copies the next ones. */
typedef struct drpc_devchunks drpc_devchunks;
drpc_devchunks *drpc_devchunks_new(void);
/* Adds bytes [start, end), ready once ev (recorded; owned by c from now on,
 * also on failure) completes. Ranges are added in ascending order. */
int drpc_devchunks_add(drpc_devchunks *c, uint64_t start, uint64_t end,
                       drpc_devevent *ev, drpc_error *err);
int drpc_devchunks_count(const drpc_devchunks *c);
/* Waits on the host for the chunk holding byte pos (and every chunk before
 * it) and returns the first byte at or after pos that may still be
 * unwritten by the device (UINT64_MAX: none). On a failed wait returns pos
 * and sets *rc (and err). */
uint64_t drpc_devchunks_wait(drpc_devchunks *c, uint64_t pos, int *rc,
                             drpc_error *err);
/* Waits for every chunk, then frees c (NULL: no-op). */
void drpc_devchunks_free(drpc_devchunks *c);
/* Pinned host memory for a tensor (plain memory when the backend has
 * none), uninitialised. */
drpc_tensor *drpc_tensor_empty_pinned(drpc_dtype dt, int ndim,
                                      const int64_t *shape, drpc_error *err);

/* Waits on the host until r's work is done. */
int drpc_devready_sync(const drpc_devready *r, drpc_error *err);
int drpc_devready_enter(const drpc_devready *r, drpc_stream **saved,
                        drpc_error *err);
/* The same, but the current streams become r's own streams (those the
 * data arrived on, where its memory belongs), as a request's function runs
 * in PyTorch: what it queues, and the freeing of its arguments, follow the
 * copies on the same streams. */
int drpc_devready_enter_own(const drpc_devready *r, drpc_stream **saved,
                            drpc_error *err);
void drpc_devready_leave(const drpc_devready *r, drpc_stream *const *saved,
                         bool to_default);

/* ---- storages and tensors on devices ---------------------------------- */

/* nbytes on dev (cpu: aligned host memory), ordered on s (NULL: the
 * calling thread's current stream of that device). The storage remembers
 * s and frees on it. */
drpc_storage *drpc_device_storage_new(drpc_device dev, size_t nbytes,
                                      drpc_stream *s, drpc_error *err);
/* Marks st (device memory) as used by work queued on s, as PyTorch's
 * record_stream does: when st is freed, its own stream first waits for
 * what s had queued by then, so the memory is not reused under that work.
 * A no-op for CPU storages and for st's own stream. */
void drpc_storage_record_stream(drpc_storage *st, drpc_stream *s);
/* The same for every CUDA tensor in value v, each with the calling
 * thread's current stream of its device. */
void drpc_value_record_streams(const struct drpc_value *v);
/* The stream a device storage was allocated on (NULL for cpu storages). */
drpc_stream *drpc_storage_stream(const drpc_storage *st);
/* The device a tensor's data is on (cpu for a tensor with no storage). */
drpc_device drpc_tensor_device(const drpc_tensor *t);
/* Uninitialised contiguous tensor on dev, ordered on s (NULL: current). */
drpc_tensor *drpc_tensor_empty_on(drpc_device dev, drpc_dtype dt, int ndim,
                                  const int64_t *shape, drpc_stream *s,
                                  drpc_error *err);
/* A contiguous copy of t on dev, queued on s (NULL: the current stream of
 * the device side: dev's when it is a CUDA device, else t's). Copies to the
 * CPU wait for the copy to finish before returning (the host may read the
 * result at once); all others return with the copy queued. */
drpc_tensor *drpc_tensor_to(const drpc_tensor *t, drpc_device dev,
                            drpc_stream *s, drpc_error *err);

#ifdef __cplusplus
}
#endif
#endif
