/* Devices in the simulator: simcuda's virtual-time cost model (copies take
 * bytes over bandwidth, events and stream waits carry the time, a host sync
 * sleeps until the work is done), the devices scenario under swarm seeds,
 * determinism of device runs, bandwidth that costs virtual time in a whole
 * run, and record -> replay of device runs on either channel (cuda_ipc
 * too: the recording keeps the bytes each tensor received by handle
 * arrived with). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

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

/* Records the devices scenario's run of seed on channel to path; *out
 * (when not NULL) gets the run's result. */
static int record(uint64_t seed, int channel, const char *path,
                  drpc_sim_result *out) {
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
    if (rc == 0 && out)
      *out = r;
    else if (rc == 0)
      drpc_sim_result_clear(&r);
    int crc = drpc_recorder_close(rec, &err);
    rc = rc ? rc : crc;
  }
  if (rc)
    fprintf(stderr, "record: %s\n", drpc_error_message(&err));
  drpc_error_clear(&err);
  drpc_sim_config_clear(&c);
  return rc;
}

/* Replays every node on fresh simulated devices (as drpc replay does): 0
 * when identical, else the first failing node's error, with the node and
 * the sequence number of the event where it stopped. */
static int replay(const char *path, char *why, size_t len, int *bad_node,
                  int64_t *bad_seq) {
  drpc_trace *t = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  int rc = drpc_gpu_setup("sim:16", &err);
  bool gpu = rc == 0;
  if (rc == 0)
    rc = drpc_trace_open(&t, path, &err);
  int16_t *ids = NULL;
  char **names = NULL;
  size_t n = 0;
  if (rc == 0)
    rc = drpc_trace_nodes(t, &ids, &names, &n, &err);
  drpc_trace_replay_result *res = malloc(sizeof *res);
  for (size_t i = 0; rc == 0 && res && i < n; i++) {
    if (ids[i] < 0)
      continue;
    rc = drpc_trace_replay_node(t, ids[i], 0, res, &err);
    if (rc && bad_node)
      *bad_node = ids[i];
    if (rc && bad_seq)
      *bad_seq = res->bad_seq;
  }
  snprintf(why, len, "%s", rc ? drpc_error_message(&err) : "");
  free(res);
  drpc_trace_nodes_free(ids, names, n);
  drpc_trace_close(t);
  if (gpu)
    drpc_gpu_teardown();
  drpc_error_clear(&err);
  return rc;
}

static int64_t query_int(sqlite3 *db, const char *sql) {
  sqlite3_stmt *st = NULL;
  int64_t v = -1;
  if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW)
    v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

/* Events that hold the bytes of a tensor received by IPC handle. */
#define DEVICE_BYTES "kind = 8 AND aux = 1"

/* Device runs replay identically on simulated devices (the start event
 * carries every member's device information and the channels; replay
 * installs simcuda as drpc replay does), staged through the host and
 * shared by cuda_ipc handle alike. The handles of a cuda_ipc run name
 * memory of the recording process, so the recording keeps the bytes each
 * tensor arrived with and replay fills the tensor from them (before, such
 * a replay stopped at the first RELEASE: its core could not open the
 * handle and answered an ERROR). Recording reads those bytes back on a
 * stream of its own: the recorded run keeps the unrecorded one's virtual
 * times. */
static void replay_body(void) {
  static const int channels[] = {DRPC_SIM_CHANNEL_STAGED, DRPC_SIM_CHANNEL_IPC};
  for (size_t i = 0; i < 2; i++) {
    for (uint64_t seed = 2; seed <= 4; seed++) {
      char path[128], why[1024];
      snprintf(path, sizeof path, "%s/devices%zu.db", dir, i);
      drpc_sim_result r;
      int rec = record(seed, channels[i], path, &r);
      CHECK_EQ_INT(rec, 0);
      if (rec)
        continue;
      int node = -1;
      int64_t seq = -1;
      int rc = replay(path, why, sizeof why, &node, &seq);
      printf("  replay of a %s devices run, seed %llu: %s\n",
             drpc_sim_channel_name(channels[i]), (unsigned long long)seed,
             rc ? why : "identical");
      if (rc)
        fprintf(stderr, "node %d event %lld: %s\n", node, (long long)seq, why);
      CHECK_EQ_INT(rc, 0);
      sqlite3 *db = NULL;
      CHECK(sqlite3_open(path, &db) == SQLITE_OK);
      int64_t kept = query_int(db, "SELECT count(*) FROM events WHERE "
                                   "" DEVICE_BYTES " AND size > 8");
      sqlite3_close(db);
      if (channels[i] == DRPC_SIM_CHANNEL_STAGED) {
        CHECK(kept == 0);
        drpc_sim_result_clear(&r);
        continue;
      }
      /* Tensors did travel by handle, and the same run unrecorded spent
       * the same virtual time the same way. */
      CHECK(kept > 0);
      drpc_sim_config c;
      drpc_error err = DRPC_ERROR_INIT;
      drpc_sim_result u;
      CHECK_EQ_INT(draw(&c, seed, false, false, &err), 0);
      c.dev_channel = channels[i];
      CHECK_EQ_INT(drpc_sim_run(&c, &u, &err), 0);
      CHECK(r.ok && u.ok);
      CHECK(u.sim_ns == r.sim_ns);
      CHECK(u.deliveries == r.deliveries);
      CHECK(u.executions == r.executions);
      drpc_sim_result_clear(&u);
      drpc_sim_config_clear(&c);
      drpc_error_clear(&err);
      drpc_sim_result_clear(&r);
    }
  }
}

/* In a child: a run that stops at a violation abandons its fibers. */
static void test_replay(void) {
  sim_in_child(replay_body);
}

/* Rewrites the payload of event row `row` to bytes[0..n). */
static void set_payload(sqlite3 *db, int64_t row, const void *bytes, size_t n) {
  sqlite3_stmt *st = NULL;
  CHECK(sqlite3_prepare_v2(db,
                           "UPDATE payloads SET bytes = ?1, size = ?2 WHERE "
                           "id = (SELECT payload FROM events WHERE id = ?3)",
                           -1, &st, NULL) == SQLITE_OK);
  sqlite3_bind_blob(st, 1, bytes, (int)n, SQLITE_TRANSIENT);
  sqlite3_bind_int64(st, 2, (int64_t)n);
  sqlite3_bind_int64(st, 3, row);
  CHECK(sqlite3_step(st) == SQLITE_DONE);
  sqlite3_finalize(st);
  char sql[128];
  snprintf(sql, sizeof sql, "UPDATE events SET size = %zu WHERE id = %lld", n,
           (long long)row);
  CHECK(sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK);
}

/* An altered record of received device bytes: replay reports a divergence
 * at the input whose tensor it could not fill (the frame or command right
 * before the record), says why, and does not crash: a flipped byte (the
 * check catches it: no output depends on the bytes, since functions do
 * not run in replay), a record cut short, and a record removed. */
static void altered_body(void) {
  static const char *const want[] = {"fail their check", "holds 100 bytes",
                                     "holds no bytes"};
  for (int how = 0; how < 3; how++) {
    char path[128], why[1024] = "";
    snprintf(path, sizeof path, "%s/altered%d.db", dir, how);
    CHECK_EQ_INT(record(3, DRPC_SIM_CHANNEL_IPC, path, NULL), 0);
    sqlite3 *db = NULL;
    CHECK(sqlite3_open(path, &db) == SQLITE_OK);
    /* The fifth tensor bytes node 1 kept, and the input before it. */
    const char *pick = "FROM events WHERE node = 1 AND " DEVICE_BYTES
                       " AND size > 200 ORDER BY seq LIMIT 1 OFFSET 4";
    char q[256];
    snprintf(q, sizeof q, "SELECT id %s", pick);
    int64_t row = query_int(db, q);
    snprintf(q, sizeof q, "SELECT seq %s", pick);
    int64_t seq = query_int(db, q);
    snprintf(q, sizeof q,
             "SELECT max(seq) FROM events WHERE node = 1 AND seq < %lld AND "
             "kind IN (1, 5, 6)",
             (long long)seq);
    int64_t input_seq = query_int(db, q);
    CHECK(row > 0 && input_seq >= 0);
    if (row <= 0) {
      sqlite3_close(db);
      continue;
    }
    snprintf(q, sizeof q,
             "SELECT p.bytes FROM events e JOIN payloads p ON p.id = "
             "e.payload WHERE e.id = %lld",
             (long long)row);
    sqlite3_stmt *st = NULL;
    CHECK(sqlite3_prepare_v2(db, q, -1, &st, NULL) == SQLITE_OK);
    CHECK(sqlite3_step(st) == SQLITE_ROW);
    size_t n = (size_t)sqlite3_column_bytes(st, 0);
    uint8_t *b = n > 200 ? malloc(n) : NULL;
    CHECK(b != NULL);
    if (b)
      memcpy(b, sqlite3_column_blob(st, 0), n);
    sqlite3_finalize(st);
    if (!b) {
      sqlite3_close(db);
      continue;
    }
    if (how == 0) {
      b[n - 1] ^= 0x40; /* a bit of the tensor's last byte */
      set_payload(db, row, b, n);
    } else if (how == 1) {
      set_payload(db, row, b, 108); /* the check and 100 bytes */
    } else {
      snprintf(q, sizeof q, "DELETE FROM events WHERE id = %lld",
               (long long)row);
      CHECK(sqlite3_exec(db, q, NULL, NULL, NULL) == SQLITE_OK);
    }
    free(b);
    sqlite3_close(db);
    int node = -1;
    int64_t bad = -1;
    int rc = replay(path, why, sizeof why, &node, &bad);
    printf("  altered device bytes (%d): node %d event %lld: %s\n", how, node,
           (long long)bad, why);
    CHECK_EQ_INT(rc, DRPC_EDIVERGED);
    CHECK_EQ_INT(node, 1);
    CHECK(bad == input_seq);
    CHECK_CONTAINS(why, "shared by handle");
    CHECK_CONTAINS(why, want[how]);
  }
}

static void test_replay_altered(void) {
  sim_in_child(altered_body);
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
  RUN(test_replay_altered);
  char cmd[160];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", dir);
  return test_finish();
}
