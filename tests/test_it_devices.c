/* Integration: CUDA tensors between two processes over loopback TCP, on
 * simulated devices (simcuda, one per process; its memory handles do not
 * cross processes, so tensors are staged through pinned host memory).
 * Large tensors are staged in chunks and each chunk is written to the
 * socket once its copy is done; simcuda runs a copy only when something
 * waits for it, so a byte written before its chunk was waited for would
 * arrive as the device's fresh-memory fill. Both ways are checked byte for
 * byte, with odd sizes (chunk ends fall inside tensors and off the
 * alignment) and a CPU tensor between two device ones. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"

#include "drpc/device.h"
#include "drpc/gpu.h"
#include "it_util.h"

static char init[128];

enum {
  BAD_INIT = 1,
  BAD_CALL = 2,
  BAD_VALUE = 4,
  BAD_CHUNKS = 8,
  BAD_SHUTDOWN = 16,
};

/* numel floats with value i * 0.25 + base (exact in float32 for these
 * sizes), on dev. */
static drpc_tensor *pattern(int64_t numel, float base, drpc_device dev,
                            drpc_error *err) {
  drpc_tensor *c = drpc_tensor_new(DRPC_FLOAT32, 1, &numel);
  if (!c)
    return NULL;
  float *p = drpc_tensor_data(c);
  for (int64_t i = 0; i < numel; i++)
    p[i] = (float)(i % 4096) * 0.25f + base;
  if (dev.type == DRPC_DEVICE_CPU)
    return c;
  drpc_tensor *g = drpc_tensor_to(c, dev, NULL, err);
  drpc_tensor_decref(c);
  return g;
}

/* True when v is a float32 tensor on dev holding pattern(numel, base). */
static bool same(const drpc_value *v, int64_t numel, float base,
                 drpc_device dev) {
  if (!v || v->kind != DRPC_VAL_TENSOR ||
      !drpc_device_equal(drpc_tensor_device(v->u.t), dev) ||
      drpc_tensor_numel(v->u.t) != numel)
    return false;
  drpc_error err = DRPC_ERROR_INIT;
  drpc_tensor *c = drpc_tensor_to(v->u.t, DRPC_CPU, NULL, &err);
  drpc_error_clear(&err);
  if (!c)
    return false;
  const float *p = drpc_tensor_data(c);
  int64_t bad = -1;
  for (int64_t i = 0; i < numel && bad < 0; i++)
    if (p[i] != (float)(i % 4096) * 0.25f + base)
      bad = i;
  if (bad >= 0)
    fprintf(stderr, "  element %lld of %lld is %g\n", (long long)bad,
            (long long)numel, (double)p[bad]);
  drpc_tensor_decref(c);
  return bad < 0;
}

static long metric(drpc_agent *a, const char *key) {
  drpc_value *m = drpc_agent_debug_info(a);
  const drpc_value *v = drpc_dict_get(m, key);
  long r = v && v->kind == DRPC_VAL_STR ? atol(v->u.s.data) : -1;
  drpc_value_free(m);
  return r;
}

static int worker(void *arg) {
  int rank = (int)(intptr_t)arg;
  char name[16], peer[16];
  snprintf(name, sizeof name, "w%d", rank);
  snprintf(peer, sizeof peer, "w%d", 1 - rank);
  drpc_error err = DRPC_ERROR_INIT;
  if (drpc_gpu_setup("sim:1", &err)) {
    fprintf(stderr, "%s: %s\n", name, drpc_error_message(&err));
    return BAD_INIT;
  }
  it_register_functions();
  drpc_options o;
  drpc_options_default(&o);
  o.init_method = init;
  o.shutdown_timeout_s = 30;
  drpc_device g0 = {DRPC_DEVICE_CUDA, 0};
  if (drpc_options_set_device_map(&o, peer, &g0, &g0, 1, &err)) {
    fprintf(stderr, "%s: %s\n", name, drpc_error_message(&err));
    return BAD_INIT;
  }
  drpc_agent *a = it_init_driver(name, rank, 2, &o, &err);
  if (!a) {
    fprintf(stderr, "%s: %s\n", name, drpc_error_message(&err));
    return BAD_INIT;
  }
  int bad = 0;
  if (rank == 0) {
    /* 20 MiB + 4 bytes and 9 MiB + 12 bytes on the device, 3 floats on the
     * host between them: five and three chunks of 4 MiB. */
    const int64_t big = (20 << 18) + 1, mid = (9 << 18) + 3, small = 3;
    drpc_tensor *t1 = pattern(big, 1, g0, &err);
    drpc_tensor *t2 = pattern(small, 2, DRPC_CPU, &err);
    drpc_tensor *t3 = pattern(mid, 3, g0, &err);
    drpc_value *args =
        t1 && t2 && t3
            ? drpc_value_list_of(1, drpc_value_list_of(3, drpc_value_tensor(t1),
                                                       drpc_value_tensor(t2),
                                                       drpc_value_tensor(t3)))
            : NULL;
    drpc_tensor_decref(t1);
    drpc_tensor_decref(t2);
    drpc_tensor_decref(t3);
    drpc_value *out = NULL;
    for (int round = 0; round < 3 && !bad; round++) {
      if (!args || drpc_rpc_sync(a, "w1", DRPC_FUNCTION, "echo", args, NULL, 60,
                                 &out, &err)) {
        fprintf(stderr, "w0: echo: %s\n", drpc_error_message(&err));
        bad |= BAD_CALL;
        break;
      }
      if (!out || out->kind != DRPC_VAL_LIST || drpc_value_len(out) != 3 ||
          !same(drpc_list_at(out, 0), big, 1, g0) ||
          !same(drpc_list_at(out, 1), small, 2, DRPC_CPU) ||
          !same(drpc_list_at(out, 2), mid, 3, g0))
        bad |= BAD_VALUE;
      drpc_value_free(out);
      out = NULL;
    }
    drpc_value_free(args);
    /* 3 rounds of 5 + 3 chunks each way. */
    long sent = metric(a, "cuda.staging_chunks");
    if (sent < 24) {
      fprintf(stderr, "w0: %ld staging chunks\n", sent);
      bad |= BAD_CHUNKS;
    }
  }
  drpc_error_clear(&err);
  if (drpc_shutdown(a, true, -1, &err)) {
    fprintf(stderr, "%s: shutdown: %s\n", name, drpc_error_message(&err));
    bad |= BAD_SHUTDOWN;
  }
  drpc_error_clear(&err);
  drpc_gpu_teardown();
  return bad;
}

static void test_staged_chunks_over_tcp(void) {
  snprintf(init, sizeof init, "tcp://127.0.0.1:%d", it_free_port());
  pid_t pids[2];
  for (int r = 0; r < 2; r++)
    pids[r] = it_fork(worker, (void *)(intptr_t)r, 120);
  for (int r = 0; r < 2; r++) {
    int st = 0;
    bool ended = it_wait(pids[r], 100, &st);
    CHECK(ended);
    if (ended && !it_exited_ok(st))
      fprintf(stderr, "  w%d exited with %d\n", r, it_exit_code(st));
    CHECK_EQ_INT(ended ? it_exit_code(st) : -1, 0);
  }
}

int main(void) {
  it_setup(150);
  RUN(test_staged_chunks_over_tcp);
  return test_finish();
}
