/* Choosing the process's CUDA backend: none, simcuda or the CUDA runtime. */
#include "drpc/gpu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void *g_sim_ctx;
static char g_desc[160] = "none";

#ifndef DRPC_HAVE_CUDA
const drpc_device_backend *drpc_cuda_backend(void) {
  return NULL;
}
#endif

/* Workers on one host may share device memory by IPC handle: the host is
 * named by the kernel's boot id (unique per machine and boot) and the host
 * name. simcuda's handles work only inside one process, so its "host" is
 * the process. */
static void set_host(bool sim) {
  char host[256] = "", boot[64] = "";
  if (sim) {
    static unsigned seq;
    snprintf(host, sizeof host, "simcuda-%ld-%u/%ld", (long)getpid(), ++seq,
             (long)getpid());
  } else {
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (f) {
      if (!fgets(boot, sizeof boot, f))
        boot[0] = '\0';
      fclose(f);
    }
    boot[strcspn(boot, "\n")] = '\0';
    char name[64] = "";
    gethostname(name, sizeof name - 1);
    snprintf(host, sizeof host, "%s-%s/%ld", name, boot, (long)getpid());
  }
  drpc_device_set_host(host);
}

static void drop_sim(void) {
  /* drpc_device_use has shut the backend down; the context goes too. */
  free(g_sim_ctx);
  g_sim_ctx = NULL;
}

void drpc_gpu_teardown(void) {
  drpc_device_use(NULL, NULL);
  drop_sim();
  drpc_device_set_host("");
  snprintf(g_desc, sizeof g_desc, "none");
}

void *drpc_gpu_simcuda_ctx(void) {
  return g_sim_ctx;
}

const char *drpc_gpu_describe(void) {
  return g_desc;
}

int drpc_gpu_setup(const char *spec, drpc_error *err) {
  if (!spec)
    spec = getenv("DRPC_CUDA");
  if (!spec || !*spec)
    spec = "auto";
  if (strcmp(spec, "none") == 0) {
    drpc_gpu_teardown();
    return 0;
  }
  /* "sim" or "simcuda", then optionally ":N". */
  size_t simlen = strncmp(spec, "simcuda", 7) == 0 ? 7
                  : strncmp(spec, "sim", 3) == 0   ? 3
                                                   : 0;
  if (simlen && (spec[simlen] == '\0' || spec[simlen] == ':')) {
    int n = 2;
    if (spec[simlen] == ':') {
      const char *num = spec + simlen + 1;
      char *end = NULL;
      long v = strtol(num, &end, 10);
      if (end == num || *end || v < 1 || v > DRPC_DEVICE_MAX)
        return drpc_error_set(err, DRPC_EINVAL,
                              "DRPC_CUDA=%s: sim:N takes N in 1..%d", spec,
                              DRPC_DEVICE_MAX);
      n = (int)v;
    }
    void *ctx = drpc_simcuda_new(n);
    if (!ctx)
      return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
    drpc_gpu_teardown();
    g_sim_ctx = ctx;
    drpc_device_use(&drpc_simcuda_backend, ctx);
    set_host(true);
    snprintf(g_desc, sizeof g_desc, "simcuda (%d device%s)", n,
             n == 1 ? "" : "s");
    return 0;
  }
  bool want = strcmp(spec, "cuda") == 0;
  if (!want && strcmp(spec, "auto") != 0)
    return drpc_error_set(err, DRPC_EINVAL,
                          "DRPC_CUDA=%s: expected none, sim[:N], simcuda[:N], "
                          "cuda or auto",
                          spec);
  const drpc_device_backend *b = drpc_cuda_backend();
  int n = b ? b->device_count(NULL) : 0;
  if (n <= 0) {
    drpc_gpu_teardown();
    if (want)
      return drpc_error_set(err, DRPC_EUNSUPPORTED,
                            b ? "no CUDA device is present"
                              : "drpc was built without the CUDA toolkit");
    return 0;
  }
  drpc_gpu_teardown();
  drpc_device_use(b, NULL);
  set_host(false);
  snprintf(g_desc, sizeof g_desc, "cuda (%d device%s)", n, n == 1 ? "" : "s");
  return 0;
}
