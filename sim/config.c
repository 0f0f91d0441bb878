/* Simulation configurations: defaults, draws from a seed (plain and swarm),
 * and the JSON schedule format that `drpc sim --schedule` replays. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "drpc/gpu.h"
#include "internal.h"

static const char *const kind_names[DRPC_SIM_FAULT_KINDS] = {
    "partition", "oneway", "clog", "reset", "crash", "slow", "restart"};

static const char *const channel_names[DRPC_SIM_CHANNELS] = {
    "any", "cuda_staged", "cuda_ipc"};

const char *drpc_sim_channel_name(int channel) {
  return channel >= 0 && channel < DRPC_SIM_CHANNELS ? channel_names[channel]
                                                     : NULL;
}

static int channel_of(const char *name) {
  for (int k = 0; name && k < DRPC_SIM_CHANNELS; k++)
    if (strcmp(channel_names[k], name) == 0)
      return k;
  return -1;
}

const char *drpc_sim_fault_kind_name(int kind) {
  return kind >= 0 && kind < DRPC_SIM_FAULT_KINDS ? kind_names[kind] : NULL;
}

static int kind_of(const char *name) {
  for (int k = 0; name && k < DRPC_SIM_FAULT_KINDS; k++)
    if (strcmp(kind_names[k], name) == 0)
      return k;
  return -1;
}

void drpc_sim_config_default(drpc_sim_config *c) {
  memset(c, 0, sizeof *c);
  c->workers = 4;
  c->threads = 4;
  c->lat_min_ns = 50000;     /* 50 us */
  c->lat_jitter_ns = 100000; /* + up to 100 us */
  c->tail_p = 0.01;
  c->tail_mean_ns = 2000000; /* 1 % of frames 2 ms later on average */
  c->lat_max_ns = 200000000; /* no frame takes over 200 ms */
  c->link_spread = 0;
  c->bandwidth_Bps = 1.25e9; /* 10 Gb/s */
  c->connect_timeout_ns = 1000000000;
  c->rto_ns = 200000000;
  c->job_cpu_ns = 2000;
  for (int i = 0; i < DRPC_SIM_MAX_NODES; i++)
    c->slow[i] = 1.0;
  c->fault_end_ns = 0;
  c->liveness_ns = 120ull * 1000000000ull;
  /* No devices; simcuda's own cost model once some are asked for. */
  drpc_simcuda_clock k;
  drpc_simcuda_clock_default(&k);
  c->dev_h2d_Bps = k.h2d_Bps;
  c->dev_d2h_Bps = k.d2h_Bps;
  c->dev_d2d_Bps = k.d2d_Bps;
  c->dev_p2p_Bps = k.p2p_Bps;
  c->dev_latency_ns = k.latency_ns;
  c->dev_launch_ns = k.launch_ns;
  c->dev_elem_ns = k.elem_ns;
}

void drpc_sim_config_clear(drpc_sim_config *c) {
  free(c->faults);
  c->faults = NULL;
  c->nfaults = 0;
}

int drpc_sim_config_copy(drpc_sim_config *dst, const drpc_sim_config *src) {
  *dst = *src;
  dst->faults = NULL;
  if (src->nfaults) {
    dst->faults = malloc(src->nfaults * sizeof *dst->faults);
    if (!dst->faults) {
      dst->nfaults = 0;
      return DRPC_ENOMEM;
    }
    memcpy(dst->faults, src->faults, src->nfaults * sizeof *dst->faults);
  }
  return 0;
}

/* Log-uniform in [lo, hi]: swarm settings span orders of magnitude. */
static double log_uniform(uint64_t *st, double lo, double hi) {
  return lo * pow(hi / lo, sim_unit(st));
}

static double expo(uint64_t *st, double mean) {
  return -mean * log(1.0 - sim_unit(st));
}

static uint64_t random_mask(uint64_t *st, int n, uint64_t *rest) {
  /* A non-empty proper subset when n > 1 (of the 64 node classes). */
  uint64_t all = n >= 64 ? ~0ull : (1ull << n) - 1;
  uint64_t m = 0;
  for (int tries = 0; tries < 16 && (m == 0 || m == all); tries++)
    m = sim_rand(st) & all;
  if (m == 0 || m == all)
    m = 1;
  *rest = all & ~m;
  return m;
}

static int cmp_fault(const void *x, const void *y) {
  const drpc_sim_fault *a = x, *b = y;
  if (a->at_ns != b->at_ns)
    return a->at_ns < b->at_ns ? -1 : 1;
  return a->kind - b->kind;
}

int drpc_sim_config_draw(drpc_sim_config *c, const char *scenario, int workers,
                         int iters, uint64_t seed, bool swarm, bool faults,
                         drpc_error *err) {
  drpc_sim_config_default(c);
  snprintf(c->scenario, sizeof c->scenario, "%s", scenario);
  if (workers < 1 || workers > DRPC_SIM_MAX_NODES)
    return drpc_error_set(err, DRPC_EINVAL,
                          "workers must be in [1, %d], got %d",
                          DRPC_SIM_MAX_NODES, workers);
  c->workers = workers;
  c->iters = iters;
  c->seed = seed;
  c->swarm = swarm;
  uint64_t st = sim_stream(seed, 7);
  c->threads = 2 + (int)(sim_rand(&st) % 7);
  /* Clocks: offsets of up to a minute either way, small drifts. */
  for (int i = 0; i < workers; i++) {
    c->clock_offset_ns[i] =
        (int64_t)(sim_rand(&st) % 120000000000ull) - 60000000000ll;
    c->drift_ppm[i] = (int32_t)(sim_rand(&st) % 201) - 100;
  }
  if (swarm) {
    c->lat_min_ns = (uint64_t)log_uniform(&st, 1e3, 5e6);
    c->lat_jitter_ns = (uint64_t)log_uniform(&st, 1e3, 1e7);
    c->tail_p = sim_unit(&st) < 0.5 ? 0 : log_uniform(&st, 1e-4, 0.2);
    c->tail_mean_ns = (uint64_t)log_uniform(&st, 1e5, 5e7);
    c->link_spread = sim_unit(&st) < 0.5 ? 0 : log_uniform(&st, 0.1, 10);
    c->bandwidth_Bps = sim_unit(&st) < 0.3 ? 0 : log_uniform(&st, 1e6, 1e10);
    c->rto_ns = (uint64_t)log_uniform(&st, 1e7, 1e9);
    c->job_cpu_ns = (uint64_t)log_uniform(&st, 1e2, 1e6);
  }
  /* Devices draw from a stream of their own, so that scenarios without
   * devices keep every draw they had. */
  const drpc_scenario *dscn = drpc_scenario_find(scenario);
  if (dscn && dscn->min_devices > 0) {
    uint64_t dst = sim_stream(seed, 9);
    c->devices = dscn->min_devices > 2 ? dscn->min_devices : 2;
    if (swarm) {
      int lo = dscn->min_devices;
      int span = lo < 4 ? 4 - lo + 1 : 1;
      c->devices = lo + (int)(sim_rand(&dst) % (uint64_t)span);
      /* From a slow PCIe link to NVLink-class bandwidth. */
      c->dev_h2d_Bps = log_uniform(&dst, 1e8, 3e10);
      c->dev_d2h_Bps =
          sim_unit(&dst) < 0.5 ? c->dev_h2d_Bps : log_uniform(&dst, 1e8, 3e10);
      c->dev_d2d_Bps = log_uniform(&dst, 1e10, 3e12);
      c->dev_p2p_Bps = log_uniform(&dst, 1e9, 3e11);
      c->dev_latency_ns = (uint64_t)log_uniform(&dst, 1e2, 1e5);
      c->dev_launch_ns = (uint64_t)log_uniform(&dst, 1e3, 1e5);
      c->dev_elem_ns = log_uniform(&dst, 1e-3, 1);
      c->dev_channel = (int)(sim_rand(&dst) % DRPC_SIM_CHANNELS);
    }
  }
  if (!faults)
    return 0;

  /* The fault phase spans about as long as the work takes without faults
   * (a probe run of the same configuration measures it), so faults land
   * while calls are in flight rather than after everyone finished. */
  drpc_sim_result probe;
  double clean_ns = 1e8;
  if (drpc_sim_run(c, &probe, NULL) == 0 && probe.ok && probe.sim_ns > 0)
    clean_ns = (double)probe.sim_ns;
  drpc_sim_result_clear(&probe);
  double window = clean_ns * (swarm ? log_uniform(&st, 0.2, 2.0) : 0.8);
  if (window < 1e5)
    window = 1e5;
  c->fault_end_ns = (uint64_t)window;
  /* Restarts draw from a stream of their own (below), so that adding
   * them left every other fault of a seed where it was. */
  for (int k = 0; k < DRPC_SIM_RESTART; k++) {
    c->kind_on[k] = swarm ? sim_unit(&st) < 0.5 : true;
    c->kind_count[k] = swarm ? (k == DRPC_SIM_CRASH ? log_uniform(&st, 0.3, 3)
                                                    : log_uniform(&st, 0.5, 20))
                             : (k == DRPC_SIM_CRASH ? 0.7 : 2);
  }
  if (workers < 2) {
    /* One worker only talks to itself: nothing to partition or kill. */
    for (int k = 0; k < DRPC_SIM_FAULT_KINDS; k++)
      if (k != DRPC_SIM_SLOW)
        c->kind_on[k] = false;
  }
  /* Keep at least one worker alive. */
  int crashes_left = workers - 1;
  double mean_dur = window * (swarm ? log_uniform(&st, 0.01, 0.5) : 0.1);
  drpc_sim_fault *v = NULL;
  size_t n = 0, cap = 0;
  for (int k = 0; k < DRPC_SIM_RESTART; k++) {
    if (!c->kind_on[k])
      continue;
    double rate = c->kind_count[k] / window; /* per ns */
    double t = expo(&st, 1.0 / rate);
    for (int i = 0; t < window && n < DRPC_SIM_MAX_FAULTS && i < 100000; i++) {
      drpc_sim_fault f = {0};
      f.at_ns = (uint64_t)t;
      f.kind = k;
      f.node = -1;
      switch (k) {
      case DRPC_SIM_PARTITION:
      case DRPC_SIM_ONEWAY:
      case DRPC_SIM_CLOG:
      case DRPC_SIM_RESET:
        f.a = random_mask(&st, workers, &f.b);
        if (k == DRPC_SIM_CLOG || k == DRPC_SIM_ONEWAY) {
          /* One direction: a single node to a single other node half the
           * time, whole sides otherwise. */
          if (sim_unit(&st) < 0.5) {
            /* Past 64 nodes, node classes (n % 64). */
            int mw = workers < 64 ? workers : 64;
            int x = (int)(sim_rand(&st) % (uint64_t)mw);
            int y = (x + 1 + (int)(sim_rand(&st) % (uint64_t)(mw - 1))) % mw;
            f.a = 1ull << x;
            f.b = 1ull << y;
          }
        }
        if (k != DRPC_SIM_RESET)
          f.dur_ns = (uint64_t)expo(&st, mean_dur) + 1;
        break;
      case DRPC_SIM_CRASH:
        f.node = (int)(sim_rand(&st) % (uint64_t)workers);
        break;
      case DRPC_SIM_SLOW:
        f.node = (int)(sim_rand(&st) % (uint64_t)workers);
        f.factor = log_uniform(&st, 2, 50);
        f.dur_ns = (uint64_t)expo(&st, mean_dur) + 1;
        break;
      }
      bool keep = true;
      if (k == DRPC_SIM_CRASH) {
        for (size_t j = 0; j < n; j++)
          if (v[j].kind == DRPC_SIM_CRASH && v[j].node == f.node)
            keep = false;
        if (crashes_left == 0)
          keep = false;
        else if (keep)
          crashes_left--;
      }
      if (keep) {
        if (n == cap) {
          cap = cap ? cap * 2 : 16;
          drpc_sim_fault *nv = realloc(v, cap * sizeof *nv);
          if (!nv) {
            free(v);
            return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
          }
          v = nv;
        }
        v[n++] = f;
      }
      t += expo(&st, 1.0 / rate);
    }
  }
  /* Restarts: each crash is followed, with probability kind_count (a
   * fraction here), by a restart of that node after a delay drawn from
   * the restart stream; a restart may land after the fault phase. */
  uint64_t rst = sim_stream(seed, 8);
  const drpc_scenario *scn = drpc_scenario_find(scenario);
  c->kind_on[DRPC_SIM_RESTART] = c->kind_on[DRPC_SIM_CRASH] &&
                                 (swarm ? sim_unit(&rst) < 0.5 : true) &&
                                 !(scn && scn->no_restart);
  c->kind_count[DRPC_SIM_RESTART] = swarm ? sim_unit(&rst) : 0.7;
  double mean_down = window * (swarm ? log_uniform(&rst, 0.01, 0.5) : 0.1);
  size_t ncrash = n;
  for (size_t i = 0; i < ncrash && c->kind_on[DRPC_SIM_RESTART]; i++) {
    if (v[i].kind != DRPC_SIM_CRASH ||
        sim_unit(&rst) >= c->kind_count[DRPC_SIM_RESTART] ||
        n >= DRPC_SIM_MAX_FAULTS)
      continue;
    drpc_sim_fault f = {0};
    f.kind = DRPC_SIM_RESTART;
    f.node = v[i].node;
    f.at_ns = v[i].at_ns + (uint64_t)expo(&rst, mean_down) + 1;
    if (n == cap) {
      cap = cap ? cap * 2 : 16;
      drpc_sim_fault *nv = realloc(v, cap * sizeof *nv);
      if (!nv) {
        free(v);
        return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
      }
      v = nv;
    }
    v[n++] = f;
  }
  if (n)
    qsort(v, n, sizeof *v, cmp_fault);
  c->faults = v;
  c->nfaults = n;
  return 0;
}

void drpc_sim_config_describe(const drpc_sim_config *c, FILE *f) {
  fprintf(f,
          "config: scenario=%s workers=%d iters=%d threads=%d seed=%llu%s "
          "commit=%s\n",
          c->scenario, c->workers, c->iters, c->threads,
          (unsigned long long)c->seed, c->swarm ? " swarm" : "",
          drpc_sim_commit());
  fprintf(f,
          "  net: latency %.1f us + U(%.1f us) + p=%.4f Exp(%.1f us) max "
          "%.1f ms, link spread %.2f, bandwidth %s%.3g B/s, rto %.1f ms, "
          "job cpu %.1f us\n",
          (double)c->lat_min_ns / 1e3, (double)c->lat_jitter_ns / 1e3,
          c->tail_p, (double)c->tail_mean_ns / 1e3, (double)c->lat_max_ns / 1e6,
          c->link_spread, c->bandwidth_Bps > 0 ? "" : "unlimited ",
          c->bandwidth_Bps, (double)c->rto_ns / 1e6,
          (double)c->job_cpu_ns / 1e3);
  if (c->devices > 0)
    fprintf(f,
            "  devices: %d simcuda, copies h2d %.3g d2h %.3g d2d %.3g p2p "
            "%.3g B/s + %.1f us, kernels %.1f us + %.3g ns/element, "
            "channel %s\n",
            c->devices, c->dev_h2d_Bps, c->dev_d2h_Bps, c->dev_d2d_Bps,
            c->dev_p2p_Bps, (double)c->dev_latency_ns / 1e3,
            (double)c->dev_launch_ns / 1e3, c->dev_elem_ns,
            drpc_sim_channel_name(c->dev_channel)
                ? drpc_sim_channel_name(c->dev_channel)
                : "?");
  int counts[DRPC_SIM_FAULT_KINDS] = {0};
  for (size_t i = 0; i < c->nfaults; i++)
    if (c->faults[i].kind >= 0 && c->faults[i].kind < DRPC_SIM_FAULT_KINDS)
      counts[c->faults[i].kind]++;
  fprintf(f, "  faults: %zu in %.3f s:", c->nfaults,
          (double)c->fault_end_ns / 1e9);
  for (int k = 0; k < DRPC_SIM_FAULT_KINDS; k++)
    fprintf(f, " %s=%s%d", kind_names[k], c->kind_on[k] ? "" : "off/",
            counts[k]);
  fprintf(f, "\n");
}

/* ---- JSON --------------------------------------------------------------- */

static cJSON *num(double v) {
  return cJSON_CreateNumber(v);
}

/* 64-bit values travel as decimal strings: JSON numbers are doubles. */
static cJSON *u64(uint64_t v) {
  char buf[32];
  snprintf(buf, sizeof buf, "%llu", (unsigned long long)v);
  return cJSON_CreateString(buf);
}

char *drpc_sim_config_to_json(const drpc_sim_config *c) {
  cJSON *o = cJSON_CreateObject();
  if (!o)
    return NULL;
  cJSON_AddStringToObject(o, "scenario", c->scenario);
  cJSON_AddItemToObject(o, "workers", num(c->workers));
  cJSON_AddItemToObject(o, "iters", num(c->iters));
  cJSON_AddItemToObject(o, "threads", num(c->threads));
  if (c->think_ns)
    cJSON_AddItemToObject(o, "think_ns", u64(c->think_ns));
  cJSON_AddItemToObject(o, "seed", u64(c->seed));
  cJSON_AddBoolToObject(o, "swarm", c->swarm);
  cJSON_AddStringToObject(o, "commit", drpc_sim_commit());
  cJSON *net = cJSON_AddObjectToObject(o, "net");
  cJSON_AddItemToObject(net, "lat_min_ns", u64(c->lat_min_ns));
  cJSON_AddItemToObject(net, "lat_jitter_ns", u64(c->lat_jitter_ns));
  cJSON_AddItemToObject(net, "tail_p", num(c->tail_p));
  cJSON_AddItemToObject(net, "tail_mean_ns", u64(c->tail_mean_ns));
  cJSON_AddItemToObject(net, "lat_max_ns", u64(c->lat_max_ns));
  cJSON_AddItemToObject(net, "link_spread", num(c->link_spread));
  cJSON_AddItemToObject(net, "bandwidth_Bps", num(c->bandwidth_Bps));
  cJSON_AddItemToObject(net, "connect_timeout_ns", u64(c->connect_timeout_ns));
  cJSON_AddItemToObject(net, "rto_ns", u64(c->rto_ns));
  cJSON_AddItemToObject(net, "job_cpu_ns", u64(c->job_cpu_ns));
  if (c->devices > 0) {
    cJSON *dv = cJSON_AddObjectToObject(o, "devices");
    cJSON_AddItemToObject(dv, "count", num(c->devices));
    cJSON_AddItemToObject(dv, "h2d_Bps", num(c->dev_h2d_Bps));
    cJSON_AddItemToObject(dv, "d2h_Bps", num(c->dev_d2h_Bps));
    cJSON_AddItemToObject(dv, "d2d_Bps", num(c->dev_d2d_Bps));
    cJSON_AddItemToObject(dv, "p2p_Bps", num(c->dev_p2p_Bps));
    cJSON_AddItemToObject(dv, "latency_ns", u64(c->dev_latency_ns));
    cJSON_AddItemToObject(dv, "launch_ns", u64(c->dev_launch_ns));
    cJSON_AddItemToObject(dv, "elem_ns", num(c->dev_elem_ns));
    const char *ch = drpc_sim_channel_name(c->dev_channel);
    cJSON_AddStringToObject(dv, "channel", ch ? ch : "?");
  }
  cJSON *nodes = cJSON_AddArrayToObject(o, "nodes");
  for (int i = 0; i < c->workers; i++) {
    cJSON *nd = cJSON_CreateObject();
    char buf[32];
    snprintf(buf, sizeof buf, "%lld", (long long)c->clock_offset_ns[i]);
    cJSON_AddStringToObject(nd, "clock_offset_ns", buf);
    cJSON_AddItemToObject(nd, "drift_ppm", num(c->drift_ppm[i]));
    cJSON_AddItemToObject(nd, "slow", num(c->slow[i]));
    cJSON_AddItemToArray(nodes, nd);
  }
  cJSON_AddItemToObject(o, "fault_end_ns", u64(c->fault_end_ns));
  cJSON_AddItemToObject(o, "liveness_ns", u64(c->liveness_ns));
  cJSON *fs = cJSON_AddArrayToObject(o, "faults");
  for (size_t i = 0; i < c->nfaults; i++) {
    const drpc_sim_fault *f = &c->faults[i];
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "kind", drpc_sim_fault_kind_name(f->kind));
    cJSON_AddItemToObject(j, "at_ns", u64(f->at_ns));
    if (f->dur_ns)
      cJSON_AddItemToObject(j, "dur_ns", u64(f->dur_ns));
    if (f->kind == DRPC_SIM_CRASH || f->kind == DRPC_SIM_SLOW ||
        f->kind == DRPC_SIM_RESTART) {
      cJSON_AddItemToObject(j, "node", num(f->node));
      if (f->kind == DRPC_SIM_SLOW)
        cJSON_AddItemToObject(j, "factor", num(f->factor));
    } else {
      cJSON_AddItemToObject(j, "a", u64(f->a));
      cJSON_AddItemToObject(j, "b", u64(f->b));
    }
    cJSON_AddItemToArray(fs, j);
  }
  char *text = cJSON_Print(o);
  cJSON_Delete(o);
  return text;
}

static bool get_u64(const cJSON *o, const char *key, uint64_t *out) {
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!j)
    return true; /* optional: keep the default */
  if (cJSON_IsString(j)) {
    char *end;
    unsigned long long v = strtoull(j->valuestring, &end, 10);
    if (*end || end == j->valuestring)
      return false;
    *out = v;
    return true;
  }
  if (cJSON_IsNumber(j) && j->valuedouble >= 0) {
    *out = (uint64_t)j->valuedouble;
    return true;
  }
  return false;
}

static bool get_num(const cJSON *o, const char *key, double *out) {
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!j)
    return true;
  if (!cJSON_IsNumber(j))
    return false;
  *out = j->valuedouble;
  return true;
}

int drpc_sim_config_from_json(drpc_sim_config *c, const char *text,
                              drpc_error *err) {
  drpc_sim_config_default(c);
  cJSON *o = cJSON_Parse(text);
  if (!o || !cJSON_IsObject(o)) {
    cJSON_Delete(o);
    return drpc_error_set(err, DRPC_EPROTO, "schedule is not a JSON object");
  }
  int rc = 0;
  const char *bad = NULL;
  const cJSON *sc = cJSON_GetObjectItemCaseSensitive(o, "scenario");
  if (!cJSON_IsString(sc)) {
    bad = "scenario";
    goto out;
  }
  snprintf(c->scenario, sizeof c->scenario, "%s", sc->valuestring);
  double d;

  d = c->workers;
  if (!get_num(o, "workers", &d) || d < 1 || d > DRPC_SIM_MAX_NODES) {
    bad = "workers";
    goto out;
  }
  c->workers = (int)d;
  d = 0;
  if (!get_num(o, "iters", &d) || d < 0 || d > 1e9) {
    bad = "iters";
    goto out;
  }
  c->iters = (int)d;
  d = c->threads;
  if (!get_num(o, "threads", &d) || d < 1 || d > 4096) {
    bad = "threads";
    goto out;
  }
  c->threads = (int)d;
  if (!get_u64(o, "seed", &c->seed) || !get_u64(o, "think_ns", &c->think_ns)) {
    bad = "seed";
    goto out;
  }
  const cJSON *sw = cJSON_GetObjectItemCaseSensitive(o, "swarm");
  c->swarm = cJSON_IsTrue(sw);
  const cJSON *net = cJSON_GetObjectItemCaseSensitive(o, "net");
  if (net) {
    if (!get_u64(net, "lat_min_ns", &c->lat_min_ns) ||
        !get_u64(net, "lat_jitter_ns", &c->lat_jitter_ns) ||
        !get_num(net, "tail_p", &c->tail_p) ||
        !get_u64(net, "tail_mean_ns", &c->tail_mean_ns) ||
        !get_u64(net, "lat_max_ns", &c->lat_max_ns) ||
        !get_num(net, "link_spread", &c->link_spread) ||
        !get_num(net, "bandwidth_Bps", &c->bandwidth_Bps) ||
        !get_u64(net, "connect_timeout_ns", &c->connect_timeout_ns) ||
        !get_u64(net, "rto_ns", &c->rto_ns) ||
        !get_u64(net, "job_cpu_ns", &c->job_cpu_ns)) {
      bad = "net";
      goto out;
    }
  }
  const cJSON *dv = cJSON_GetObjectItemCaseSensitive(o, "devices");
  if (dv) {
    d = 0;
    const cJSON *ch = cJSON_GetObjectItemCaseSensitive(dv, "channel");
    if (!cJSON_IsObject(dv) || !get_num(dv, "count", &d) || d < 0 ||
        d > DRPC_SIM_MAX_DEVICES || !get_num(dv, "h2d_Bps", &c->dev_h2d_Bps) ||
        !get_num(dv, "d2h_Bps", &c->dev_d2h_Bps) ||
        !get_num(dv, "d2d_Bps", &c->dev_d2d_Bps) ||
        !get_num(dv, "p2p_Bps", &c->dev_p2p_Bps) ||
        !get_u64(dv, "latency_ns", &c->dev_latency_ns) ||
        !get_u64(dv, "launch_ns", &c->dev_launch_ns) ||
        !get_num(dv, "elem_ns", &c->dev_elem_ns) ||
        !(c->dev_h2d_Bps > 0 && c->dev_d2h_Bps > 0 && c->dev_d2d_Bps > 0 &&
          c->dev_p2p_Bps > 0 && c->dev_elem_ns >= 0 && c->dev_elem_ns < 1e9) ||
        (ch && (!cJSON_IsString(ch) || channel_of(ch->valuestring) < 0))) {
      bad = "devices";
      goto out;
    }
    c->devices = (int)d;
    c->dev_channel = ch ? channel_of(ch->valuestring) : DRPC_SIM_CHANNEL_ANY;
  }
  const cJSON *nodes = cJSON_GetObjectItemCaseSensitive(o, "nodes");
  const cJSON *nd;
  int i = 0;
  cJSON_ArrayForEach(nd, nodes) {
    if (i >= DRPC_SIM_MAX_NODES)
      break;
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(nd, "clock_offset_ns");
    if (cJSON_IsString(off))
      c->clock_offset_ns[i] = strtoll(off->valuestring, NULL, 10);
    d = 0;
    if (!get_num(nd, "drift_ppm", &d) || d < -100000 || d > 100000) {
      bad = "nodes[].drift_ppm";
      goto out;
    }
    c->drift_ppm[i] = (int32_t)d;
    d = 1;
    if (!get_num(nd, "slow", &d) || !(d >= 0.01 && d <= 1000)) {
      bad = "nodes[].slow";
      goto out;
    }
    c->slow[i] = d;
    i++;
  }
  if (!get_u64(o, "fault_end_ns", &c->fault_end_ns) ||
      !get_u64(o, "liveness_ns", &c->liveness_ns)) {
    bad = "fault_end_ns/liveness_ns";
    goto out;
  }
  const cJSON *fs = cJSON_GetObjectItemCaseSensitive(o, "faults");
  int nf = cJSON_GetArraySize(fs);
  if (nf > DRPC_SIM_MAX_FAULTS) {
    bad = "faults (too many)";
    goto out;
  }
  if (nf > 0) {
    c->faults = calloc((size_t)nf, sizeof *c->faults);
    if (!c->faults) {
      rc = drpc_error_set(err, DRPC_ENOMEM, "out of memory");
      goto out;
    }
  }
  const cJSON *fj;
  cJSON_ArrayForEach(fj, fs) {
    drpc_sim_fault *f = &c->faults[c->nfaults];
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(fj, "kind");
    f->kind = cJSON_IsString(k) ? kind_of(k->valuestring) : -1;
    f->node = -1;
    d = -1;

    if (f->kind < 0 || !get_u64(fj, "at_ns", &f->at_ns) ||
        !get_u64(fj, "dur_ns", &f->dur_ns) || !get_u64(fj, "a", &f->a) ||
        !get_u64(fj, "b", &f->b) || !get_num(fj, "node", &d) ||
        !get_num(fj, "factor", &f->factor)) {
      bad = "faults[]";
      goto out;
    }
    f->node = (int)d;
    if ((f->kind == DRPC_SIM_CRASH || f->kind == DRPC_SIM_SLOW ||
         f->kind == DRPC_SIM_RESTART) &&
        (f->node < 0 || f->node >= c->workers)) {
      bad = "faults[].node";
      goto out;
    }
    c->kind_on[f->kind] = true;
    c->nfaults++;
  }
  if (c->nfaults)
    qsort(c->faults, c->nfaults, sizeof *c->faults, cmp_fault);
out:
  cJSON_Delete(o);
  if (bad)
    rc = drpc_error_set(err, DRPC_EINVAL, "schedule: bad or missing '%s'", bad);
  if (rc)
    drpc_sim_config_clear(c);
  return rc;
}
