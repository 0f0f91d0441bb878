/* Agent options and worker infos: defaults, validation and device maps, with
 * the reference's error texts. */
#include <stdio.h>
#include <string.h>

#include "drpc/agent.h"

static const char *const known_transports[] = {"tcp", "shm", "sim", NULL};
static const char *const known_channels[] = {"basic", "cuda_ipc", "cuda_staged",
                                             NULL};

void drpc_options_default(drpc_options *o) {
  memset(o, 0, sizeof *o);
  o->rpc_timeout_s = DRPC_DEFAULT_RPC_TIMEOUT_SEC;
  o->init_method = DRPC_DEFAULT_INIT_METHOD;
  o->num_worker_threads = DRPC_DEFAULT_NUM_WORKER_THREADS;
  o->max_frame_bytes = DRPC_WIRE_DEFAULT_MAX_FRAME;
  o->shutdown_timeout_s = DRPC_DEFAULT_SHUTDOWN_TIMEOUT_SEC;
  o->ignore_rref_leak = true;
  o->member_timeout_s = 10.0;
}

static bool in_list(const char *const *list, const char *s) {
  for (; *list; list++)
    if (strcmp(*list, s) == 0)
      return true;
  return false;
}

int drpc_options_validate(const drpc_options *o, drpc_error *err) {
  if (!o)
    return drpc_error_set(err, DRPC_EINVAL, "options must not be NULL");
  /* Written as !(x >= 0) so NaN is refused too. */
  if (!(o->rpc_timeout_s >= 0))
    return drpc_error_set(err, DRPC_EINVAL,
                          "RPC Timeout must be non-negative, got %g",
                          o->rpc_timeout_s);
  if (!(o->shutdown_timeout_s >= 0))
    return drpc_error_set(err, DRPC_EINVAL,
                          "shutdown timeout must be non-negative, got %g",
                          o->shutdown_timeout_s);
  if (!(o->member_timeout_s >= 0) || o->member_timeout_s > 1e6)
    return drpc_error_set(err, DRPC_EINVAL,
                          "member timeout must be in [0, 1e6] s, got %g",
                          o->member_timeout_s);
  if (o->incarnation >= 65536)
    return drpc_error_set(err, DRPC_EINVAL,
                          "incarnation must be below 65536, got %u",
                          o->incarnation);
  if (o->num_worker_threads <= 0)
    return drpc_error_set(err, DRPC_EINVAL,
                          "num_worker_threads must be positive, got %d",
                          o->num_worker_threads);
  if (o->max_frame_bytes < 4096)
    return drpc_error_set(err, DRPC_EINVAL,
                          "max_frame_bytes must be at least 4096, got %llu",
                          (unsigned long long)o->max_frame_bytes);
  for (size_t i = 0; i < 4 && o->transports[i]; i++)
    if (!in_list(known_transports, o->transports[i]))
      return drpc_error_set(err, DRPC_EINVAL, "Unknown transport: %s",
                            o->transports[i]);
  for (size_t i = 0; i < 4 && o->channels[i]; i++)
    if (!in_list(known_channels, o->channels[i]))
      return drpc_error_set(err, DRPC_EINVAL, "Unknown channel: %s",
                            o->channels[i]);
  if (o->n_device_maps < 0 || o->n_device_maps > DRPC_MAX_DEVICE_MAPS)
    return drpc_error_set(err, DRPC_EINVAL, "too many device maps (%d)",
                          o->n_device_maps);
  if (o->n_devices < 0 || o->n_devices > DRPC_MAX_DEVICES)
    return drpc_error_set(err, DRPC_EINVAL, "too many devices (%d)",
                          o->n_devices);
  return 0;
}

static drpc_device_map_entry *find_map(drpc_options *o, const char *peer) {
  for (int i = 0; i < o->n_device_maps; i++)
    if (strcmp(o->device_maps[i].peer, peer) == 0)
      return &o->device_maps[i];
  return NULL;
}

int drpc_options_set_device_map(drpc_options *o, const char *peer,
                                const drpc_device *from, const drpc_device *to,
                                int n, drpc_error *err) {
  char a[32], b[32], c[32];
  int rc = drpc_validate_worker_name(peer, err);
  if (rc)
    return rc;
  if (n < 0 || n > DRPC_MAX_DEVICES)
    return drpc_error_set(err, DRPC_EINVAL, "device map has %d entries", n);
  for (int i = 0; i < n; i++)
    if ((from[i].type == DRPC_DEVICE_CUDA && from[i].index < 0) ||
        (to[i].type == DRPC_DEVICE_CUDA && to[i].index < 0))
      return drpc_error_set(err, DRPC_EINVAL,
                            "Device index must not be negative");
  drpc_device_map_entry merged;
  drpc_device_map_entry *cur = find_map(o, peer);
  if (cur) {
    merged = *cur;
  } else {
    memset(&merged, 0, sizeof merged);
    snprintf(merged.peer, sizeof merged.peer, "%s", peer);
  }
  for (int i = 0; i < n; i++) {
    int k;
    for (k = 0; k < merged.n; k++)
      if (drpc_device_equal(merged.from[k], from[i]))
        break;
    if (k < merged.n) {
      if (!drpc_device_equal(merged.to[k], to[i]))
        return drpc_error_set(
            err, DRPC_EINVAL,
            "`set_device_map` only supports 1-to-1 mapping, trying to map %s "
            "to %s and %s",
            drpc_device_format(from[i], a, sizeof a),
            drpc_device_format(merged.to[k], b, sizeof b),
            drpc_device_format(to[i], c, sizeof c));
      continue;
    }
    if (merged.n >= DRPC_MAX_DEVICES)
      return drpc_error_set(err, DRPC_ETOOBIG, "device map for %s is full",
                            peer);
    merged.from[merged.n] = from[i];
    merged.to[merged.n] = to[i];
    merged.n++;
  }
  for (int i = 0; i < merged.n; i++)
    for (int j = i + 1; j < merged.n; j++)
      if (drpc_device_equal(merged.to[i], merged.to[j]))
        return drpc_error_set(
            err, DRPC_EINVAL,
            "`device_map` only supports 1-to-1 mapping, but %s and %s are "
            "both mapped to %s",
            drpc_device_format(merged.from[i], a, sizeof a),
            drpc_device_format(merged.from[j], b, sizeof b),
            drpc_device_format(merged.to[i], c, sizeof c));
  if (!cur) {
    if (o->n_device_maps >= DRPC_MAX_DEVICE_MAPS)
      return drpc_error_set(err, DRPC_ETOOBIG, "too many device maps");
    cur = &o->device_maps[o->n_device_maps++];
  }
  *cur = merged;
  return 0;
}

int drpc_validate_worker_name(const char *name, drpc_error *err) {
  size_t len = name ? strlen(name) : 0;
  bool ok = len > 0 && len <= DRPC_MAX_NAME_LEN;
  for (size_t i = 0; ok && i < len; i++) {
    char ch = name[i];
    ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
         (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch == ':';
  }
  if (!ok)
    return drpc_error_set(err, DRPC_EINVAL,
                          "Worker name must match ^[A-Za-z0-9-_:]*$, and must "
                          "be non-empty and shorter than 128 chars, but got %s",
                          name ? name : "(null)");
  return 0;
}

int drpc_worker_info_init(drpc_worker_info *wi, const char *name, int64_t id,
                          drpc_error *err) {
  int rc = drpc_validate_worker_name(name, err);
  if (rc)
    return rc;
  if (id < INT16_MIN || id > INT16_MAX)
    return drpc_error_set(err, DRPC_EINVAL,
                          "RPC worker id %lld out of bound of int16_t.",
                          (long long)id);
  memset(wi, 0, sizeof *wi);
  snprintf(wi->name, sizeof wi->name, "%s", name);
  wi->id = (int16_t)id;
  return 0;
}

bool drpc_worker_info_equal(const drpc_worker_info *a,
                            const drpc_worker_info *b) {
  return a->id == b->id && strcmp(a->name, b->name) == 0;
}

size_t drpc_worker_info_format(const drpc_worker_info *wi, char *buf,
                               size_t n) {
  int k = snprintf(buf, n, "WorkerInfo(id=%d, name=%s)", wi->id, wi->name);
  return k < 0 ? 0 : (size_t)k;
}
