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

/* The CUDA runtime backend; NULL when drpc was built without the CUDA
 * toolkit. Its context is NULL. With no device at run time it reports 0
 * devices. */
const drpc_device_backend *drpc_cuda_backend(void);

/* Installs a backend by name:
 *   "none"      no CUDA devices
 *   "sim[:N]"   simcuda with N devices (default 2)
 *   "cuda"      the CUDA runtime; fails when not built or no device
 *   "auto"      cuda when built and a device is present, else none
 * NULL means the DRPC_CUDA environment variable, or "auto" when unset.
 * Writes what it installed into err-free messages via drpc_gpu_describe. */
int drpc_gpu_setup(const char *spec, drpc_error *err);
/* "none", "simcuda (2 devices)", "cuda (1 device: NVIDIA H100 ...)". */
const char *drpc_gpu_describe(void);
/* Uninstalls (frees the backend's streams and memory caches). */
void drpc_gpu_teardown(void);

#ifdef __cplusplus
}
#endif
#endif
