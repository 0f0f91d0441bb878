/* gpu/: the device backends behind core's device interface (drpc/device.h)
 * and the choice among them. */
#ifndef DRPC_GPU_H
#define DRPC_GPU_H

#include <stdbool.h>

#include "drpc/device.h"
#include "drpc/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The simulated CUDA device: host memory, streams as ordered queues of work
 * that runs only when something waits for it (a stream or event sync, a
 * copy to the host through drpc_tensor_to), events between them, and
 * same-process "IPC". Thread-safe. ndevices in 1..DRPC_DEVICE_MAX. */
extern const drpc_device_backend drpc_simcuda_backend;
void *drpc_simcuda_new(int ndevices);
/* Bytes currently allocated on device index (tests check for leaks). */
size_t drpc_simcuda_allocated(void *ctx, int index);
/* Kernels and copies run so far (all devices). */
uint64_t drpc_simcuda_ops_run(void *ctx);

/* ---- simcuda on virtual time (the simulator's cost model) ---------------
 *
 * With a clock installed every queued op has a duration: a copy takes
 * latency_ns plus bytes over the bandwidth of its direction, a kernel
 * launch_ns plus elem_ns per element it writes (matmul: per multiply-add).
 * Each stream is busy until the virtual time at which its queued work is
 * done: an op starts at the later of now and that time. An event carries
 * the time its stream reaches it; a stream that waits for an event is busy
 * at least until then. A host-blocking sync (stream or event) computes the
 * time it waits for under simcuda's lock, unlocks, then calls sleep_until,
 * so the simulator parks the calling fiber until then. The data still moves
 * only when something waits (the laziness rule is unchanged): the clock
 * decides when, not whether. Without a clock (the default) nothing is
 * timed and syncs return at once. */
typedef struct drpc_simcuda_clock {
  /* Virtual time now, in ns (required). Called with simcuda's lock held:
   * it must not block or call back into simcuda. */
  uint64_t (*now_ns)(void *arg);
  /* Blocks the caller until virtual time t_ns and returns true; returns
   * false at once when the caller cannot block (the simulator's scheduler
   * itself, running a core's input handler). Called without simcuda's
   * lock. NULL: syncs never wait. */
  bool (*sleep_until)(void *arg, uint64_t t_ns);
  void *arg;
  /* Bytes per second of each kind of copy (> 0; host memory to device,
   * device to host, within one device, between two devices). */
  double h2d_Bps, d2h_Bps, d2d_Bps, p2p_Bps;
  uint64_t latency_ns; /* fixed cost of each copy */
  uint64_t launch_ns;  /* fixed cost of each kernel */
  double elem_ns;      /* kernel cost per element */
} drpc_simcuda_clock;

/* PCIe-class host copies (12 GB/s), 1 TB/s within a device, 50 GB/s
 * between devices, 2 us per copy, 5 us per kernel and 0.01 ns per element;
 * no clock functions (the caller sets now_ns, sleep_until and arg). */
void drpc_simcuda_clock_default(drpc_simcuda_clock *c);
/* Installs clk (copied) on ctx, or removes the clock with NULL. Install it
 * before queueing work: streams start idle. DRPC_EINVAL (err set) when
 * now_ns is missing or a bandwidth is not positive. */
int drpc_simcuda_set_clock(void *ctx, const drpc_simcuda_clock *clk,
                           drpc_error *err);

typedef struct drpc_simcuda_stats {
  uint64_t ops_timed;     /* ops given a duration */
  uint64_t busy_ns;       /* sum of their durations */
  uint64_t copy_bytes;    /* bytes of timed copies */
  uint64_t syncs_slept;   /* host syncs that waited in virtual time */
  uint64_t slept_ns;      /* virtual time they waited for, summed */
  uint64_t syncs_unslept; /* syncs whose sleep_until could not block */
} drpc_simcuda_stats;
/* What the clock has timed so far (zeros without one). */
void drpc_simcuda_stats_get(void *ctx, drpc_simcuda_stats *st);

/* The CUDA runtime backend; NULL when drpc was built without the CUDA
 * toolkit. Its context is NULL. With no device at run time it reports 0
 * devices. */
const drpc_device_backend *drpc_cuda_backend(void);

/* Installs a backend by name:
 *   "none"      no CUDA devices
 *   "sim[:N]"   simcuda with N devices (default 2); "simcuda[:N]" too
 *   "cuda"      the CUDA runtime; fails when not built or no device
 *   "auto"      cuda when built and a device is present, else none
 * NULL means the DRPC_CUDA environment variable, or "auto" when unset.
 * Writes what it installed into err-free messages via drpc_gpu_describe. */
int drpc_gpu_setup(const char *spec, drpc_error *err);
/* "none", "simcuda (2 devices)", "cuda (1 device: NVIDIA H100 ...)". */
const char *drpc_gpu_describe(void);
/* Uninstalls (frees the backend's streams and memory caches). */
void drpc_gpu_teardown(void);
/* The context of the simcuda that drpc_gpu_setup installed (NULL when
 * another backend or none is installed), for drpc_simcuda_set_clock and
 * the other drpc_simcuda_* calls. */
void *drpc_gpu_simcuda_ctx(void);

#ifdef __cplusplus
}
#endif
#endif
