/* CUDA devices in the simulator: simcuda installed for one run, its cost
 * model on the run's virtual clock, and each worker's device maps. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "drpc/gpu.h"
#include "internal.h"

static uint64_t dev_now(void *arg) {
  const sim *s = arg;
  return s->now;
}

/* A host sync parks the calling fiber until the device work is done. The
 * scheduler itself (a core's input handler placing received tensors)
 * cannot park: its sync returns at once, and the time is charged to
 * whoever waits on the device for that work later (the stream's busy
 * time and the events recorded after it carry it). */
static bool dev_sleep(void *arg, uint64_t t_ns) {
  sim *s = arg;
  if (!s->cur || t_ns <= s->now)
    return false;
  sim_fiber_sleep(s, t_ns);
  return true;
}

int sim_devices_setup(sim *s, drpc_error *err) {
  const drpc_sim_config *c = s->cfg;
  if (c->devices < 0 || c->devices > DRPC_SIM_MAX_DEVICES ||
      c->devices > DRPC_DEVICE_MAX)
    return drpc_error_set(err, DRPC_EINVAL,
                          "devices must be in [0, %d], got %d",
                          DRPC_SIM_MAX_DEVICES, c->devices);
  if (c->dev_channel < 0 || c->dev_channel >= DRPC_SIM_CHANNELS)
    return drpc_error_set(err, DRPC_EINVAL, "unknown device channel %d",
                          c->dev_channel);
  if (s->scn->min_devices > c->devices)
    return drpc_error_set(err, DRPC_EINVAL,
                          "scenario '%s' needs at least %d CUDA device%s "
                          "(--devices N), the configuration has %d",
                          s->scn->name, s->scn->min_devices,
                          s->scn->min_devices == 1 ? "" : "s", c->devices);
  if (c->devices == 0)
    return 0;
  void *old = NULL;
  if (drpc_device_backend_get(&old))
    return drpc_error_set(err, DRPC_ESTATE,
                          "a run with devices installs its own simcuda, but "
                          "a CUDA backend (%s) is installed already",
                          drpc_gpu_describe());
  char spec[32];
  snprintf(spec, sizeof spec, "sim:%d", c->devices);
  int rc = drpc_gpu_setup(spec, err);
  if (rc)
    return rc;
  /* One host: every node shares the devices (and same-host IPC works
   * between them); the host name is fixed so that runs do not depend on
   * the process they run in. */
  drpc_device_set_host("drpc-sim/0");
  s->gpu = drpc_gpu_simcuda_ctx();
  drpc_simcuda_clock k;
  drpc_simcuda_clock_default(&k);
  k.now_ns = dev_now;
  k.sleep_until = dev_sleep;
  k.arg = s;
  k.h2d_Bps = c->dev_h2d_Bps;
  k.d2h_Bps = c->dev_d2h_Bps;
  k.d2d_Bps = c->dev_d2d_Bps;
  k.p2p_Bps = c->dev_p2p_Bps;
  k.latency_ns = c->dev_latency_ns;
  k.launch_ns = c->dev_launch_ns;
  k.elem_ns = c->dev_elem_ns;
  if (!s->gpu || (rc = drpc_simcuda_set_clock(s->gpu, &k, err)) != 0) {
    drpc_gpu_teardown();
    s->gpu = NULL;
    return rc ? rc : drpc_error_set(err, DRPC_ESTATE, "simcuda missing");
  }
  s->ndevices = c->devices;
  /* Per-node options: the scenario's device maps, and the channel. */
  if (s->scn->options || c->dev_channel != DRPC_SIM_CHANNEL_ANY) {
    s->node_opts = calloc((size_t)s->nnodes, sizeof *s->node_opts);
    if (!s->node_opts) {
      sim_devices_teardown(s);
      return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
    }
    for (int i = 0; i < s->nnodes; i++) {
      drpc_options *o = &s->node_opts[i];
      *o = s->opts;
      if (s->scn->options &&
          (rc = s->scn->options(o, i, s->nnodes, err)) != 0) {
        sim_devices_teardown(s);
        return rc;
      }
      if (c->dev_channel != DRPC_SIM_CHANNEL_ANY) {
        memset(o->channels, 0, sizeof o->channels);
        o->channels[0] = drpc_sim_channel_name(c->dev_channel);
      }
    }
  }
  return 0;
}

void sim_devices_teardown(sim *s) {
  if (s->gpu) {
    drpc_simcuda_stats st;
    drpc_simcuda_stats_get(s->gpu, &st);
    drpc_sim_result *r = s->res;
    r->dev_ops = st.ops_timed;
    r->dev_busy_ns = st.busy_ns;
    r->dev_copy_bytes = st.copy_bytes;
    r->dev_syncs_slept = st.syncs_slept;
    r->dev_slept_ns = st.slept_ns;
    r->dev_syncs_unslept = st.syncs_unslept;
    /* Pending work runs (and frees) as the backend shuts down. */
    drpc_gpu_teardown();
  }
  s->gpu = NULL;
  s->ndevices = 0;
  free(s->node_opts);
  s->node_opts = NULL;
}
