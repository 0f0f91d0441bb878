/* Devices in the simulator: simcuda's virtual-time cost model (copies take
 * bytes over bandwidth, events and stream waits carry the time, a host sync
 * sleeps until the work is done), the devices scenario under swarm seeds,
 * determinism of device runs, bandwidth that costs virtual time in a whole
 * run, and record -> replay of a device run. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "drpc/device.h"
#include "drpc/gpu.h"
#include "drpc/replay.h"
#include "drpc/sim.h"
#include "drpc/trace.h"
#include "sim_child.h"
#include "test.h"

#if defined(__SANITIZE_ADDRESS__)
#define SWARM_SEEDS 30 /* the sanitizers make each run several times slower */
#else
#define SWARM_SEEDS 100
#endif

/* ---- the cost model on a fake clock ------------------------------------ */

static uint64_t g_now;
static bool g_can_sleep = true;
static int g_sleeps;

static uint64_t fake_now(void *arg) {
  (void)arg;
  return g_now;
}

static bool fake_sleep(void *arg, uint64_t t) {
  (void)arg;
  if (!g_can_sleep)
    return false;
  g_sleeps++;
  if (t > g_now)
    g_now = t;
  return true;
}

static drpc_tensor *host_bytes(size_t n) {
  int64_t len = (int64_t)n;
  drpc_tensor *t = drpc_tensor_empty(DRPC_UINT8, 1, &len);
  if (t)
    memset(drpc_tensor_data(t), 0x5a, n);
  return t;
}

static const drpc_device G0 = {DRPC_DEVICE_CUDA, 0};
static const drpc_device G1 = {DRPC_DEVICE_CUDA, 1};

static void test_cost_model(void) {
  drpc_error err = DRPC_ERROR_INIT;
  CHECK_EQ_INT(drpc_gpu_setup("simcuda:2", &err), 0);
  void *ctx = drpc_gpu_simcuda_ctx();
  CHECK(ctx != NULL);
  if (!ctx)
    return;
  drpc_simcuda_clock k;
  drpc_simcuda_clock_default(&k);
  /* Bad clocks are refused. */
  CHECK_EQ_INT(drpc_simcuda_set_clock(ctx, &k, &err), DRPC_EINVAL);
  CHECK_CONTAINS(err.msg, "now_ns");
  drpc_error_clear(&err);
  k.now_ns = fake_now;
  k.sleep_until = fake_sleep;
  k.h2d_Bps = 0;
  CHECK_EQ_INT(drpc_simcuda_set_clock(ctx, &k, &err), DRPC_EINVAL);
  CHECK_CONTAINS(err.msg, "bandwidths must be positive");
  drpc_error_clear(&err);
  k.h2d_Bps = k.d2h_Bps = 1e9; /* 1 GB/s */
  k.d2d_Bps = 1e11;
  k.p2p_Bps = 1e10;
  k.latency_ns = 0;
  k.launch_ns = 1000;
  k.elem_ns = 0.5;
  g_now = 1000000000;
  CHECK_EQ_INT(drpc_simcuda_set_clock(ctx, &k, &err), 0);

  /* 64 MiB host -> device at 1 GB/s: queued at once, 67.1 ms of device
   * time; the sync sleeps until then. */
  size_t mib64 = 64u << 20;
  drpc_tensor *h = host_bytes(mib64);
  CHECK(h != NULL);
  drpc_stream *s0 = drpc_stream_default(0);
  uint64_t t0 = g_now, ops0 = drpc_simcuda_ops_run(ctx);
  drpc_tensor *d = drpc_tensor_to(h, G0, s0, &err);
  CHECK(d != NULL);
  CHECK(g_now == t0); /* queueing costs the host nothing */
  CHECK(drpc_simcuda_ops_run(ctx) == ops0); /* and runs nothing: lazy */
  CHECK_EQ_INT(drpc_stream_sync(s0, &err), 0);
  uint64_t took = g_now - t0;
  printf("  64 MiB at 1 GB/s: %.3f ms of virtual time\n", (double)took / 1e6);
  CHECK(took == (uint64_t)((double)mib64 * 1e9 / 1e9));
  CHECK(drpc_simcuda_ops_run(ctx) > ops0);
  /* Twice the bytes, twice the time; device -> host the same rate. */
  drpc_tensor *h2 = host_bytes(2 * mib64);
  t0 = g_now;
  drpc_tensor *d2 = drpc_tensor_to(h2, G0, s0, &err);
  CHECK(d2 != NULL);
  CHECK_EQ_INT(drpc_stream_sync(s0, &err), 0);
  CHECK(g_now - t0 == 2 * took);
  t0 = g_now;
  drpc_tensor *back = drpc_tensor_to(d, DRPC_CPU, s0, &err);
  CHECK(back != NULL && g_now - t0 == took); /* to the CPU: synced inside */
  CHECK(back && ((uint8_t *)drpc_tensor_data(back))[mib64 - 1] == 0x5a);

  /* Work queued behind busy work waits for it: two copies in a row end
   * after both; a stream that waits for an event starts after its point;
   * an event sync sleeps until the point, not until the stream is idle. */
  drpc_stream *a = drpc_stream_from_pool(0), *b = drpc_stream_from_pool(1);
  drpc_devevent *e = drpc_devevent_new(0, &err);
  CHECK(e != NULL);
  t0 = g_now;
  drpc_tensor *x = drpc_tensor_to(h, G0, a, &err); /* busy to t0 + took */
  CHECK_EQ_INT(drpc_devevent_record(e, a, &err), 0);
  CHECK_EQ_INT(drpc_stream_wait_event(b, e, &err), 0);
  drpc_tensor *z = drpc_tensor_to(x, G1, b, &err); /* p2p after e */
  drpc_tensor *y = drpc_tensor_to(h, G0, a, &err); /* to t0 + 2 took */
  CHECK(x && y && z);
  CHECK_EQ_INT(drpc_devevent_sync(e, &err), 0);
  CHECK(g_now == t0 + took);
  CHECK_EQ_INT(drpc_stream_sync(b, &err), 0);
  uint64_t p2p = (uint64_t)((double)mib64 * 1e9 / 1e10);
  CHECK(g_now == t0 + took + p2p);
  CHECK_EQ_INT(drpc_stream_sync(a, &err), 0);
  CHECK(g_now == t0 + 2 * took);
  /* An idle stream's sync does not sleep. */
  int sleeps = g_sleeps;
  CHECK_EQ_INT(drpc_stream_sync(a, &err), 0);
  CHECK_EQ_INT(g_sleeps, sleeps);

  /* Kernels: a launch plus a cost per element (ones: a fill). */
  drpc_stream_set_current(1, NULL);
  t0 = g_now;
  int64_t n = 1 << 20;
  drpc_tensor *k1 = drpc_tensor_empty_on(G1, DRPC_FLOAT32, 1, &n, NULL, &err);
  drpc_stream *s1 = drpc_stream_default(1);
  void *bctx = NULL;
  const drpc_device_backend *be = drpc_device_backend_get(&bctx);
  CHECK(k1 && be);
  if (k1 && be)
    CHECK_EQ_INT(
        be->fill(bctx, s1, drpc_tensor_data(k1), DRPC_FLOAT32, n, 1.0, &err),
        0);
  CHECK_EQ_INT(drpc_stream_sync(s1, &err), 0);
  CHECK(g_now == t0 + 1000 + (uint64_t)((double)n * 0.5));

  /* A caller that cannot block (the simulator's scheduler) is not put to
   * sleep, and the stats say so. */
  g_can_sleep = false;
  drpc_tensor *w = drpc_tensor_to(h, G0, s0, &err);
  CHECK(w != NULL);
  t0 = g_now;
  CHECK_EQ_INT(drpc_stream_sync(s0, &err), 0);
  CHECK(g_now == t0);
  g_can_sleep = true;
  drpc_simcuda_stats st;
  drpc_simcuda_stats_get(ctx, &st);
  CHECK(st.syncs_unslept == 1);
  CHECK(st.syncs_slept >= 6);
  CHECK(st.copy_bytes >= 7 * (uint64_t)mib64);
  CHECK(st.ops_timed >= 8);

  drpc_tensor *all[] = {h, d, h2, d2, back, x, y, z, k1, w};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++)
    drpc_tensor_decref(all[i]);
  drpc_devevent_free(e);
  /* Removing the clock: syncs no longer sleep. */
  CHECK_EQ_INT(drpc_simcuda_set_clock(ctx, NULL, &err), 0);
  sleeps = g_sleeps;
  CHECK_EQ_INT(drpc_stream_sync(s0, &err), 0);
  CHECK_EQ_INT(g_sleeps, sleeps);
  drpc_error_clear(&err);
  drpc_gpu_teardown();
}

/* ---- the devices scenario in the simulator ----------------------------- */

static int draw(drpc_sim_config *c, uint64_t seed, bool swarm, bool faults,
                drpc_error *err) {
  return drpc_sim_config_draw(c, "devices", 2 + (int)(seed % 3), 0, seed, swarm,
                              faults, err);
}

/* Every seed must run clean: device data freed under queued work, an IPC
 * handle to memory taken back, or a wrong value is a violation like any
 * other (this suite found all three in core's stream handling). */
static void swarm_body(void) {
  int failing = 0;
  uint64_t faults = 0, slept = 0, devs = 0;
  for (uint64_t seed = 1; seed <= SWARM_SEEDS; seed++) {
    drpc_sim_config c;
    drpc_sim_result r;
    drpc_error err = DRPC_ERROR_INIT;
    if (draw(&c, seed, true, true, &err) || drpc_sim_run(&c, &r, &err)) {
      fprintf(stderr, "devices seed %llu: %s\n", (unsigned long long)seed,
              drpc_error_message(&err));
      failing++;
    } else {
      faults += r.faults_applied;
      slept += r.dev_syncs_slept;
      devs += (uint64_t)c.devices;
      CHECK(c.devices >= 1 && c.devices <= 4);
      if (!r.ok) {
        failing++;
        fprintf(stderr,
                "VIOLATION seed=%llu t=%.6fs: %s\n  reproduce: drpc sim "
                "devices --workers %d --seed %llu --swarm\n",
                (unsigned long long)seed, (double)r.violation_ns / 1e9, r.what,
                c.workers, (unsigned long long)seed);
      }
      drpc_sim_result_clear(&r);
    }
    drpc_error_clear(&err);
    drpc_sim_config_clear(&c);
  }
  fprintf(stderr,
          "  devices swarm: %d seeds, %d failing, %llu faults applied, %llu "
          "syncs slept, %.2f devices per run\n",
          SWARM_SEEDS, failing, (unsigned long long)faults,
          (unsigned long long)slept, (double)devs / SWARM_SEEDS);
  CHECK_EQ_INT(failing, 0);
  CHECK(faults > 0);
  /* Device work happened and parked fibers. */
  CHECK(slept > 0);
}

static void test_swarm(void) {
  sim_in_child(swarm_body);
}

static void determinism_body(void) {
  static const uint64_t seeds[] = {1, 2, 5, 11, 42};
  for (size_t i = 0; i < sizeof seeds / sizeof *seeds; i++) {
    drpc_sim_config c;
    drpc_error err = DRPC_ERROR_INIT;
    CHECK_EQ_INT(draw(&c, seeds[i], true, true, &err), 0);
    c.trace = true;
    drpc_sim_result r1, r2;
    CHECK_EQ_INT(drpc_sim_run(&c, &r1, &err), 0);
    CHECK_EQ_INT(drpc_sim_run(&c, &r2, &err), 0);
    size_t at = drpc_sim_trace_diff(&r1, &r2);
    if (at != SIZE_MAX) {
      char a[256] = "-", b[256] = "-";
      if (at < r1.ntrace)
        drpc_sim_trace_format(&r1.trace[at], a, sizeof a);
      if (at < r2.ntrace)
        drpc_sim_trace_format(&r2.trace[at], b, sizeof b);
      fprintf(stderr, "seed %llu differs at event %zu:\n  %s\n  %s\n",
              (unsigned long long)seeds[i], at, a, b);
    }
    CHECK(at == SIZE_MAX);
    CHECK(r1.hash == r2.hash);
    CHECK(r1.sim_ns == r2.sim_ns);
    CHECK(r1.dev_busy_ns == r2.dev_busy_ns && r1.dev_ops > 0);
    drpc_sim_result_clear(&r1);
    drpc_sim_result_clear(&r2);
    drpc_sim_config_clear(&c);
    drpc_error_clear(&err);
  }
}

static void test_determinism(void) {
  sim_in_child(determinism_body);
}

/* A whole run on a slow and on a fast host link: the same calls, but the
 * slow one spends more virtual time in copies, and its workers wait for
 * them (each round of one worker carries at least one large tensor
 * there and back). */
static void bandwidth_body(void) {
  drpc_sim_result r[2];
  double bps[2] = {1e8, 1e11};
  for (int i = 0; i < 2; i++) {
    drpc_sim_config c;
    drpc_error err = DRPC_ERROR_INIT;
    CHECK_EQ_INT(draw(&c, 3, false, false, &err), 0);
    c.workers = 2;
    c.devices = 2;
    c.dev_channel = DRPC_SIM_CHANNEL_STAGED;
    c.dev_h2d_Bps = c.dev_d2h_Bps = bps[i];
    CHECK_EQ_INT(drpc_sim_run(&c, &r[i], &err), 0);
    if (!r[i].ok)
      fprintf(stderr, "bandwidth run %d: %s\n", i, r[i].what);
    drpc_sim_config_clear(&c);
    drpc_error_clear(&err);
  }
  printf("  staged run at 0.1 GB/s: %.3f ms, %llu bytes copied, waited "
         "%.3f ms; at 100 GB/s: %.3f ms, waited %.3f ms\n",
         (double)r[0].sim_ns / 1e6, (unsigned long long)r[0].dev_copy_bytes,
         (double)r[0].dev_slept_ns / 1e6, (double)r[1].sim_ns / 1e6,
         (double)r[1].dev_slept_ns / 1e6);
  CHECK(r[0].dev_copy_bytes > (4u << 20));
  /* At 0.1 GB/s the bytes alone take copy_bytes / 1e8 s of device time. */
  CHECK((double)r[0].dev_busy_ns >= (double)r[0].dev_copy_bytes * 10.0 * 0.9);
  CHECK(r[0].dev_slept_ns > 100 * r[1].dev_slept_ns / 2);
  CHECK(r[0].sim_ns > r[1].sim_ns + 20000000); /* 20 ms and more */
}

static void test_bandwidth(void) {
  sim_in_child(bandwidth_body);
}

/* ---- record -> replay -------------------------------------------------- */

static char dir[64];

static int record(uint64_t seed, int channel, const char *path) {
  drpc_sim_config c;
  drpc_error err = DRPC_ERROR_INIT;
  int rc = draw(&c, seed, false, false, &err);
  c.dev_channel = channel;
  drpc_recorder *rec = NULL;
  drpc_run_info ri = {0};
  ri.backend = "sim";
  ri.scenario = "devices";
  ri.seed = seed;
  ri.has_seed = true;
  if (rc == 0)
    rc = drpc_recorder_open(&rec, path, &ri, false, true, &err);
  if (rc == 0) {
    c.record = drpc_recorder_sink;
    c.record_ctx = rec;
    drpc_sim_result r;
    rc = drpc_sim_run(&c, &r, &err);
    int crc = drpc_recorder_close(rec, &err);
    rc = rc ? rc : crc;
  }
  if (rc)
    fprintf(stderr, "record: %s\n", drpc_error_message(&err));
  drpc_error_clear(&err);
  drpc_sim_config_clear(&c);
  return rc;
}

/* Replays every node: 0 when identical, else the first node's error. */
static int replay(const char *path, char *why, size_t len) {
  drpc_trace *t = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_trace_open(&t, path, &err);
  int16_t *ids = NULL;
  char **names = NULL;
  size_t n = 0;
  if (rc == 0)
    rc = drpc_trace_nodes(t, &ids, &names, &n, &err);
  drpc_trace_replay_result *res = malloc(sizeof *res);
  for (size_t i = 0; rc == 0 && res && i < n; i++)
    if (ids[i] >= 0)
      rc = drpc_trace_replay_node(t, ids[i], 0, res, &err);
  snprintf(why, len, "%s", rc ? drpc_error_message(&err) : "");
  free(res);
  drpc_trace_nodes_free(ids, names, n);
  drpc_trace_close(t);
  drpc_error_clear(&err);
  return rc;
}

/* A device run staged through the host replays identically on simulated
 * devices (the start event carries every member's device information and
 * the channels; drpc replay installs simcuda as this does). A cuda_ipc run
 * does not: its frames name memory of the recording process. Its replay
 * must stop cleanly with DRPC_EDIVERGED (not crash, not call the recording
 * corrupt). */
static void replay_body(void) {
  static const int channels[] = {DRPC_SIM_CHANNEL_STAGED, DRPC_SIM_CHANNEL_IPC};
  for (size_t i = 0; i < 2; i++) {
    char path[128], why[1024];
    snprintf(path, sizeof path, "%s/devices%zu.db", dir, i);
    CHECK_EQ_INT(record(2, channels[i], path), 0);
    drpc_error err = DRPC_ERROR_INIT;
    CHECK_EQ_INT(drpc_gpu_setup("sim:16", &err), 0);
    int rc = replay(path, why, sizeof why);
    drpc_gpu_teardown();
    drpc_error_clear(&err);
    printf("  replay of a %s devices run: %s\n",
           drpc_sim_channel_name(channels[i]), rc ? why : "identical");
    if (channels[i] == DRPC_SIM_CHANNEL_STAGED)
      CHECK_EQ_INT(rc, 0);
    else
      CHECK(rc == 0 || rc == DRPC_EDIVERGED);
  }
}

/* In a child: a run that stops at a violation abandons its fibers. */
static void test_replay(void) {
  sim_in_child(replay_body);
}

int main(void) {
  snprintf(dir, sizeof dir, "/tmp/drpc_test_simdev_XXXXXX");
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  RUN(test_cost_model);
  RUN(test_swarm);
  RUN(test_determinism);
  RUN(test_bandwidth);
  RUN(test_replay);
  char cmd[160];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", dir);
  return test_finish();
}
