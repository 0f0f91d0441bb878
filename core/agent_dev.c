/* The agent's device code: device information exchanged at start, device
 * map validation (with the reference's messages), reverse maps, the
 * tensor hook that decides how each tensor of an outgoing message travels
 * (CPU bytes, bytes staged from a device, or a same-host handle), and the
 * placing of received tensors on their devices.
 *
 * Channels (options.channels): "cuda_ipc" shares device memory with a
 * peer on the same host through the backend's IPC handles (no copy
 * through the host; the receiver copies device to device and tells the
 * sender with a RELEASE frame when the sender's memory is free again);
 * "cuda_staged" stages through host memory. Both are allowed by default
 * and cuda_ipc is preferred where it works; naming only one forces it.
 * A recording core keeps the bytes each tensor received by handle arrived
 * with, and a replayed one fills the tensor with them instead of opening
 * the handle. */
#include "drpc/agent.h"
#include "drpc/device.h"
#include "internal.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Lends outstanding per agent (device memory a peer may still read); past
 * it, tensors are staged through the host instead. */
#define DEV_MAX_LENDS 1024
/* Interprocess events a receiver keeps open. */
#define DEV_EVENT_CACHE 256
#define IPC_MAGIC 0x50495244u /* "DRIP" */

typedef struct dev_map {
  int n;
  drpc_device from[DRPC_MAX_DEVICES];
  drpc_device to[DRPC_MAX_DEVICES];
} dev_map;

typedef struct lend {
  uint64_t id;
  int16_t peer;
  drpc_tensor *tensor;  /* kept alive until the peer releases it */
  drpc_devevent *event; /* recorded when the data was ready */
  int event_slot;       /* index into ev_pool */
} lend;

typedef struct ipc_event {
  drpc_devevent *ev;
  int device;
  bool busy;
  uint32_t hlen;
  uint8_t handle[DRPC_IPC_HANDLE_MAX];
} ipc_event;

typedef struct opened_event {
  uint32_t hlen;
  uint8_t handle[DRPC_IPC_HANDLE_MAX];
  drpc_devevent *ev;
  uint64_t used; /* for eviction: the oldest goes */
} opened_event;

/* Per peer id (0..n-1): my map toward it, its map toward me inverted,
 * whether CUDA IPC reaches it. Encoding threads read the current table
 * without a lock; a dynamic group that outgrows it gets a larger copy and
 * the old one is kept (older) until the state is freed: doubling bounds
 * what is kept by the size of the current table. */
/* Per peer id: my map toward it, its map toward me reversed (NULL: none;
 * most peers of a large group have none, and a dev_map is 260 bytes), and
 * whether CUDA IPC reaches it. A map, once made for an id, stays at its
 * address and is rewritten in place (readers hold no lock); a grown table
 * shares its older one's maps, and the newest table frees them all. */
typedef struct dev_tab {
  int n;
  dev_map **mine;
  dev_map **reverse;
  bool *same_host;
  struct dev_tab *older;
} dev_tab;

static const dev_map no_map;

static const dev_map *map_or_none(const dev_map *m) {
  return m ? m : &no_map;
}

struct drpc_devstate {
  drpc_agent *agent;
  _Atomic(dev_tab *) tab;
  int ndevices; /* the agent's devices */
  drpc_device devices[DRPC_MAX_DEVICES];
  bool allow_ipc, allow_staged;

  /* Lends and IPC events: touched by encoding threads and the loop. */
  drpc_sync lock;
  /* Made at the first share or open (most agents never share by handle;
   * a simulated cluster starts thousands). */
  lend *lends; /* DEV_MAX_LENDS */
  int nlends;
  uint64_t next_lend;
  ipc_event *ev_pool; /* DEV_MAX_LENDS */
  int nev;
  /* Loop only: events opened from peers' handles. */
  opened_event *opened; /* DEV_EVENT_CACHE */
  int nopened;
  uint64_t use_clock;
  /* Loop only, made when recording: per device, the stream that reads
   * tensors received by handle back for the recording. */
  drpc_stream *rec_on[DRPC_DEVICE_MAX];
  _Atomic uint64_t shared_sent, staged_sent, shared_received, staged_chunks;
};

/* ---- small helpers ----------------------------------------------------- */

static bool dev_in(const drpc_device *list, int n, drpc_device d) {
  for (int i = 0; i < n; i++)
    if (drpc_device_equal(list[i], d))
      return true;
  return false;
}

static int dev_cmp(const void *x, const void *y) {
  const drpc_device *a = x, *b = y;
  if (a->type != b->type)
    return a->type - b->type;
  return a->index - b->index;
}

/* "[cuda:0, cuda:1]" into buf. */
static const char *dev_list(const drpc_device *l, int n, char *buf,
                            size_t cap) {
  size_t k = 0;
  k += (size_t)snprintf(buf + k, cap - k, "[");
  for (int i = 0; i < n && k < cap; i++) {
    char d[16];
    k += (size_t)snprintf(buf + k, cap - k, "%s%s", i ? ", " : "",
                          drpc_device_format(l[i], d, sizeof d));
  }
  if (k < cap)
    snprintf(buf + k, cap - k, "]");
  return buf;
}

static bool valid_on(drpc_device d, int count) {
  return d.type == DRPC_DEVICE_CPU ||
         (d.type == DRPC_DEVICE_CUDA && d.index >= 0 && d.index < count);
}

/* ---- published device information ------------------------------------- */

/* The second line of addrs/<name>, text so a person can read the store:
 *   drpc-devices count=2 host=H devices=cuda:0,cuda:1 maps=w1:cuda:0>cuda:1
 * devices and maps are "-" when empty; maps are peer:from>to,from>to;... */
#define DEVINFO_TAG "drpc-devices"

typedef struct sbuf {
  char *p;
  size_t len, cap;
  bool failed;
} sbuf;

static void sb_put(sbuf *b, const char *s) {
  size_t n = strlen(s);
  if (b->failed)
    return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = (b->len + n + 1) * 2;
    char *p = realloc(b->p, cap);
    if (!p) {
      b->failed = true;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n + 1);
  b->len += n;
}

static void sb_devs(sbuf *b, const drpc_device *l, int n) {
  if (n == 0)
    sb_put(b, "-");
  for (int i = 0; i < n; i++) {
    char d[16];
    if (i)
      sb_put(b, ",");
    sb_put(b, drpc_device_format(l[i], d, sizeof d));
  }
}

int drpc_agent_publish_devices(drpc_store *st, const char *name,
                               const char *addr, const drpc_options *o,
                               drpc_error *err) {
  sbuf b = {0};
  char num[32];
  sb_put(&b, addr);
  sb_put(&b, "\n" DEVINFO_TAG " count=");
  snprintf(num, sizeof num, "%d", drpc_device_count());
  sb_put(&b, num);
  /* The host name keeps to characters that cannot break the line up. */
  char host[128];
  size_t k = 0;
  for (const char *h = drpc_device_host(); *h && k + 1 < sizeof host; h++)
    host[k++] = (*h >= 'a' && *h <= 'z') || (*h >= 'A' && *h <= 'Z') ||
                        (*h >= '0' && *h <= '9') || *h == '-' || *h == '.' ||
                        *h == '/'
                    ? *h
                    : '_';
  host[k] = '\0';
  sb_put(&b, " host=");
  sb_put(&b, k ? host : "-");
  sb_put(&b, " devices=");
  sb_devs(&b, o->devices, o->n_devices);
  sb_put(&b, " maps=");
  if (o->n_device_maps == 0)
    sb_put(&b, "-");
  for (int i = 0; i < o->n_device_maps; i++) {
    const drpc_device_map_entry *m = &o->device_maps[i];
    if (i)
      sb_put(&b, ";");
    sb_put(&b, m->peer);
    sb_put(&b, ":");
    for (int j = 0; j < m->n; j++) {
      char f[16], t[16];
      if (j)
        sb_put(&b, ",");
      sb_put(&b, drpc_device_format(m->from[j], f, sizeof f));
      sb_put(&b, ">");
      sb_put(&b, drpc_device_format(m->to[j], t, sizeof t));
    }
  }
  if (b.failed) {
    free(b.p);
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  }
  char key[DRPC_MAX_NAME_LEN + 16];
  snprintf(key, sizeof key, "addrs/%s", name);
  int rc = drpc_store_set_str(st, key, b.p, err);
  free(b.p);
  return rc;
}

typedef struct node_info {
  const char *name;
  int count;
  int ndevices;
  drpc_device devices[DRPC_MAX_DEVICES];
  int nmaps;
  char (*peers)[DRPC_MAX_NAME_LEN + 1];
  dev_map *maps;
  char host[128];
} node_info;

/* Parses "a,b,c" (or "-") of at most max devices from s[0..n). */
static int parse_devs(const char *s, size_t n, drpc_device *out, int max,
                      int *count) {
  *count = 0;
  if (n == 1 && s[0] == '-')
    return 0;
  while (n > 0) {
    const char *c = memchr(s, ',', n);
    size_t len = c ? (size_t)(c - s) : n;
    char d[16];
    if (len == 0 || len >= sizeof d || *count >= max)
      return DRPC_EPROTO;
    memcpy(d, s, len);
    d[len] = '\0';
    if (drpc_device_parse(d, &out[(*count)++]))
      return DRPC_EPROTO;
    s += len;
    n -= len;
    if (c) {
      s++;
      n--;
      if (n == 0)
        return DRPC_EPROTO;
    }
  }
  return 0;
}

/* Finds " key=" in line and returns its value's extent (up to a space). */
static const char *field(const char *line, const char *key, size_t *n) {
  size_t kl = strlen(key);
  for (const char *p = strchr(line, ' '); p; p = strchr(p + 1, ' ')) {
    if (strncmp(p + 1, key, kl) == 0 && p[1 + kl] == '=') {
      const char *v = p + 2 + kl;
      const char *e = strchr(v, ' ');
      *n = e ? (size_t)(e - v) : strlen(v);
      return v;
    }
  }
  return NULL;
}

/* A peer that published nothing has no CUDA devices and no maps. */
static int parse_info(const char *line, node_info *ni) {
  if (!line)
    return 0; /* no device information: no maps */
  if (strncmp(line, DEVINFO_TAG " ", strlen(DEVINFO_TAG) + 1) != 0)
    return DRPC_EPROTO;
  size_t n = 0;
  const char *v = field(line, "count", &n);
  if (!v || n == 0 || n > 3)
    return DRPC_EPROTO;
  ni->count = 0;
  for (size_t i = 0; i < n; i++) {
    if (v[i] < '0' || v[i] > '9')
      return DRPC_EPROTO;
    ni->count = ni->count * 10 + (v[i] - '0');
  }
  if (!(v = field(line, "host", &n)) || n >= sizeof ni->host)
    return DRPC_EPROTO;
  if (!(n == 1 && v[0] == '-')) {
    memcpy(ni->host, v, n);
    ni->host[n] = '\0';
  }
  if (!(v = field(line, "devices", &n)) ||
      parse_devs(v, n, ni->devices, DRPC_MAX_DEVICES, &ni->ndevices))
    return DRPC_EPROTO;
  if (!(v = field(line, "maps", &n)))
    return DRPC_EPROTO;
  if (n == 1 && v[0] == '-')
    return 0; /* no maps: nothing allocated (most workers) */
  ni->maps = calloc(DRPC_MAX_DEVICE_MAPS, sizeof *ni->maps);
  ni->peers = calloc(DRPC_MAX_DEVICE_MAPS, sizeof *ni->peers);
  if (!ni->maps || !ni->peers)
    return DRPC_ENOMEM;
  while (n > 0) {
    const char *semi = memchr(v, ';', n);
    size_t len = semi ? (size_t)(semi - v) : n;
    const char *colon = memchr(v, ':', len);
    if (!colon || ni->nmaps >= DRPC_MAX_DEVICE_MAPS ||
        (size_t)(colon - v) > DRPC_MAX_NAME_LEN || colon == v)
      return DRPC_EPROTO;
    memcpy(ni->peers[ni->nmaps], v, (size_t)(colon - v));
    ni->peers[ni->nmaps][colon - v] = '\0';
    dev_map *m = &ni->maps[ni->nmaps++];
    const char *p = colon + 1, *end = v + len;
    while (p < end) {
      const char *c = memchr(p, ',', (size_t)(end - p));
      const char *ee = c ? c : end;
      const char *gt = memchr(p, '>', (size_t)(ee - p));
      int one = 0;
      if (!gt || m->n >= DRPC_MAX_DEVICES ||
          parse_devs(p, (size_t)(gt - p), &m->from[m->n], 1, &one) ||
          one != 1 ||
          parse_devs(gt + 1, (size_t)(ee - gt - 1), &m->to[m->n], 1, &one) ||
          one != 1)
        return DRPC_EPROTO;
      m->n++;
      p = c ? c + 1 : end;
    }
    v += len;
    n -= len;
    if (semi) {
      v++;
      n--;
    }
  }
  return 0;
}

static void info_free(node_info *ni) {
  free(ni->maps);
  free(ni->peers);
}

static const node_info *info_by_name(const node_info *all, int n,
                                     const char *name) {
  for (int i = 0; i < n; i++)
    if (all[i].name && strcmp(all[i].name, name) == 0)
      return &all[i];
  return NULL;
}

/* The reference's checks of one node's devices and maps against every
 * node's device information; the first problem fails the start. */
static int validate_node(const node_info *all, int n, const node_info *ni,
                         bool dynamic, drpc_error *err) {
  char a[512], b[512];
  for (int i = 0; i < ni->ndevices; i++)
    for (int j = i + 1; j < ni->ndevices; j++)
      if (drpc_device_equal(ni->devices[i], ni->devices[j]))
        return drpc_error_set(
            err, DRPC_EINVAL, "Node %s has duplicated devices\ndevices = %s",
            ni->name, dev_list(ni->devices, ni->ndevices, a, sizeof a));
  for (int i = 0; i < ni->ndevices; i++)
    if (ni->devices[i].type != DRPC_DEVICE_CUDA ||
        !valid_on(ni->devices[i], ni->count))
      return drpc_error_set(
          err, DRPC_EINVAL,
          "Node %s has devices with invalid indices\ndevices = %s\ndevice "
          "count = %d",
          ni->name, dev_list(ni->devices, ni->ndevices, a, sizeof a),
          ni->count);
  /* A dynamic group's maps may name workers that join later. */
  for (int k = 0; k < ni->nmaps && !dynamic; k++)
    if (!info_by_name(all, n, ni->peers[k]))
      return drpc_error_set(err, DRPC_EINVAL,
                            "Node %s has invalid target node names in its "
                            "device maps",
                            ni->name);
  for (int k = 0; k < ni->nmaps; k++) {
    const dev_map *m = &ni->maps[k];
    const node_info *tn = info_by_name(all, n, ni->peers[k]);
    const char *tname = ni->peers[k];
    for (int i = 0; i < m->n; i++)
      for (int j = i + 1; j < m->n; j++) {
        if (drpc_device_equal(m->from[i], m->from[j]))
          return drpc_error_set(err, DRPC_EINVAL,
                                "Node %s has duplicated source devices in its "
                                "device map for %s",
                                ni->name, tname);
        if (drpc_device_equal(m->to[i], m->to[j]))
          return drpc_error_set(err, DRPC_EINVAL,
                                "Node %s has duplicated target devices in its "
                                "device map for %s",
                                ni->name, tname);
      }
    for (int i = 0; i < m->n; i++) {
      drpc_device s = m->from[i];
      if (ni->ndevices > 0 && s.type == DRPC_DEVICE_CUDA &&
          !dev_in(ni->devices, ni->ndevices, s))
        return drpc_error_set(
            err, DRPC_EINVAL,
            "Node %s has unexpected source devices in its device map for "
            "%s\ndevice map = %s\ndevices = %s",
            ni->name, tname, dev_list(m->from, m->n, a, sizeof a),
            dev_list(ni->devices, ni->ndevices, b, sizeof b));
      if (ni->ndevices == 0 && !valid_on(s, ni->count))
        return drpc_error_set(
            err, DRPC_EINVAL,
            "Node %s has source devices with invalid indices "
            "in its device map for %s\ndevice map = %s\ndevice "
            "count = %d",
            ni->name, tname, dev_list(m->from, m->n, a, sizeof a), ni->count);
    }
    for (int i = 0; tn && i < m->n; i++) {
      drpc_device t = m->to[i];
      if (tn->ndevices > 0 && t.type == DRPC_DEVICE_CUDA &&
          !dev_in(tn->devices, tn->ndevices, t))
        return drpc_error_set(
            err, DRPC_EINVAL,
            "Node %s has unexpected target devices in its device map for "
            "%s\ndevice map = %s\ndevices = %s",
            ni->name, tname, dev_list(m->to, m->n, a, sizeof a),
            dev_list(tn->devices, tn->ndevices, b, sizeof b));
      if (tn->ndevices == 0 && !valid_on(t, tn->count))
        return drpc_error_set(
            err, DRPC_EINVAL,
            "Node %s has target devices with invalid indices "
            "in its device map for %s\ndevice map = %s\ndevice "
            "count = %d",
            ni->name, tname, dev_list(m->to, m->n, a, sizeof a), tn->count);
    }
  }
  return 0;
}

/* Hosts are "<host>/<process>": sharing needs the same host, and another
 * process unless the backend opens its own handles. */
static bool ipc_reachable(const char *peer, const char *me) {
  const char *ps = strrchr(peer, '/'), *ms = strrchr(me, '/');
  if (!peer[0] || !ps || !ms || ps - peer != ms - me ||
      strncmp(peer, me, (size_t)(ps - peer)) != 0)
    return false;
  const drpc_device_backend *b = drpc_device_backend_get(NULL);
  return (b && b->ipc_in_process) || strcmp(ps, ms) != 0;
}

/* Frees t's arrays; with maps, also the maps (t is the newest table). */
static void tab_free(dev_tab *t, bool maps) {
  for (int i = 0; maps && i < t->n; i++) {
    free(t->mine[i]);
    free(t->reverse[i]);
  }
  free(t->mine);
  free(t->reverse);
  free(t->same_host);
  free(t);
}

/* A table for ids 0..n-1 holding old's entries (old may be NULL). */
static dev_tab *tab_new(int n, const dev_tab *old) {
  dev_tab *t = calloc(1, sizeof *t);
  if (!t)
    return NULL;
  t->n = n;
  t->mine = calloc((size_t)n, sizeof *t->mine);
  t->reverse = calloc((size_t)n, sizeof *t->reverse);
  t->same_host = calloc((size_t)n, sizeof *t->same_host);
  if (!t->mine || !t->reverse || !t->same_host) {
    tab_free(t, false);
    return NULL;
  }
  if (old) {
    memcpy(t->mine, old->mine, sizeof *t->mine * (size_t)old->n);
    memcpy(t->reverse, old->reverse, sizeof *t->reverse * (size_t)old->n);
    memcpy(t->same_host, old->same_host, sizeof *t->same_host * (size_t)old->n);
  }
  return t;
}

void drpc_dev_free(drpc_devstate *d) {
  if (!d)
    return;
  drpc_agent *a = d->agent;
  const drpc_env *env = drpc_agent_env(a);
  for (int i = 0; i < d->nlends; i++)
    drpc_tensor_decref(d->lends[i].tensor);
  for (int i = 0; i < d->nev; i++)
    drpc_devevent_free(d->ev_pool[i].ev);
  for (int i = 0; i < d->nopened; i++)
    drpc_devevent_free(d->opened[i].ev);
  free(d->lends);
  free(d->ev_pool);
  free(d->opened);
  env->ops->sync_destroy(env->ctx, &d->lock);
  bool newest = true;
  for (dev_tab *t = atomic_load(&d->tab), *next; t; t = next) {
    next = t->older;
    tab_free(t, newest);
    newest = false;
  }
  free(d);
}

/* Entry id's map slot, made when there is a map to hold (NULL: out of
 * memory, or none needed). */
static dev_map *map_slot(dev_map **slot, bool need) {
  if (!*slot && need)
    *slot = calloc(1, sizeof **slot);
  return *slot;
}

/* Fills entry id of t from my information and peer pi's. Non-zero when
 * out of memory. */
static int tab_set(dev_tab *t, int id, const node_info *me, const node_info *pi,
                   const char *self_name) {
  t->same_host[id] = ipc_reachable(pi->host, me->host);
  const dev_map *mine = NULL, *theirs = NULL;
  for (int k = 0; k < me->nmaps; k++)
    if (strcmp(me->peers[k], pi->name) == 0)
      mine = &me->maps[k];
  for (int k = 0; k < pi->nmaps; k++)
    if (strcmp(pi->peers[k], self_name) == 0)
      theirs = &pi->maps[k];
  dev_map *m = map_slot(&t->mine[id], mine != NULL);
  dev_map *r = map_slot(&t->reverse[id], theirs != NULL);
  if ((mine && !m) || (theirs && !r))
    return DRPC_ENOMEM;
  if (m) {
    m->n = 0; /* readers see no map while it is rewritten */
    if (mine) {
      memcpy(m->from, mine->from, sizeof m->from);
      memcpy(m->to, mine->to, sizeof m->to);
      m->n = mine->n;
    }
  }
  if (r) {
    r->n = 0;
    for (int j = 0; theirs && j < theirs->n; j++) {
      r->from[j] = theirs->to[j];
      r->to[j] = theirs->from[j];
    }
    r->n = theirs ? theirs->n : 0;
  }
  return 0;
}

/* The agent's devices: as configured, else every CUDA device its maps and
 * its peers' maps toward it name. */
static void devices_compute(drpc_devstate *d, const drpc_options *o) {
  drpc_device devs[DRPC_MAX_DEVICES];
  int n = 0;
  const dev_tab *t = atomic_load(&d->tab);
  if (o->n_devices > 0) {
    n = o->n_devices;
    memcpy(devs, o->devices, sizeof(drpc_device) * (size_t)n);
  } else {
    for (int id = 0; t && id < t->n; id++)
      for (int pass = 0; pass < 2; pass++) {
        const dev_map *m = map_or_none(pass ? t->reverse[id] : t->mine[id]);
        for (int j = 0; j < m->n; j++)
          if (m->from[j].type == DRPC_DEVICE_CUDA &&
              !dev_in(devs, n, m->from[j]) && n < DRPC_MAX_DEVICES)
            devs[n++] = m->from[j];
      }
  }
  qsort(devs, (size_t)n, sizeof(drpc_device), dev_cmp);
  memcpy(d->devices, devs, sizeof(drpc_device) * (size_t)n);
  d->ndevices = n;
}

int drpc_dev_start(drpc_agent *a, drpc_devstate **out, drpc_error *err) {
  *out = NULL;
  const drpc_options *o = drpc_agent_options(a);
  const drpc_worker_info *self = drpc_agent_self(a);
  size_t nw = 0;
  const drpc_worker_info *ws = drpc_agent_workers(a, &nw);
  int rc = 0;
  node_info *all = calloc(nw ? nw : 1, sizeof *all);
  drpc_devstate *d = calloc(1, sizeof *d);
  if (!all || !d) {
    free(all);
    free(d);
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  }
  d->agent = a;
  const drpc_env *env = drpc_agent_env(a);
  env->ops->sync_init(env->ctx, &d->lock);
  for (size_t i = 0; i < nw && !rc; i++) {
    all[i].name = ws[i].name;
    if (parse_info(drpc_agent_peer_devinfo(a, ws[i].id), &all[i]))
      rc = drpc_error_set(err, DRPC_EPROTO,
                          "rendezvous: malformed device information of %s",
                          ws[i].name);
  }
  for (size_t i = 0; i < nw && !rc; i++)
    rc = validate_node(all, (int)nw, &all[i], !drpc_agent_is_static_group(a),
                       err);
  int maxid = 0;
  for (size_t i = 0; i < nw; i++)
    if (ws[i].id > maxid)
      maxid = ws[i].id;
  dev_tab *t = NULL;
  if (!rc) {
    /* Dynamic groups grow: room for a few more ids from the start. */
    int n = maxid + 1;
    if (!drpc_agent_is_static_group(a) && n < 16)
      n = 16;
    if (!(t = tab_new(n, NULL)))
      rc = drpc_error_set(err, DRPC_ENOMEM, "out of memory");
    atomic_store(&d->tab, t);
  }
  const node_info *me = info_by_name(all, (int)nw, self->name);
  for (size_t i = 0; i < nw && !rc && me; i++) {
    int id = ws[i].id;
    const node_info *pi = &all[i];
    if (tab_set(t, id, me, pi, self->name))
      rc = drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  }
  if (!rc) {
    /* The agent's devices: as configured, else every CUDA device its maps
     * and its peers' maps toward it name. */
    devices_compute(d, o);
    bool named = false;
    for (int i = 0; i < 4 && o->channels[i]; i++) {
      named = true;
      if (strcmp(o->channels[i], "cuda_ipc") == 0)
        d->allow_ipc = true;
      else if (strcmp(o->channels[i], "cuda_staged") == 0)
        d->allow_staged = true;
    }
    if (!named || (!d->allow_ipc && !d->allow_staged))
      d->allow_ipc = d->allow_staged = true;
    const drpc_device_backend *b = drpc_device_backend_get(NULL);
    if (!b || !b->ipc_export || !b->ipc_open || !b->ipc_event_new)
      d->allow_ipc = false;
  }
  for (size_t i = 0; i < nw; i++)
    info_free(&all[i]);
  free(all);
  if (rc) {
    drpc_dev_free(d);
    return rc;
  }
  *out = d;
  return 0;
}

int drpc_dev_devices(const drpc_devstate *d, drpc_device *out, int max) {
  if (!d)
    return 0;
  int n = d->ndevices < max ? d->ndevices : max;
  memcpy(out, d->devices, sizeof(drpc_device) * (size_t)(n > 0 ? n : 0));
  return d->ndevices;
}

int drpc_agent_devices(drpc_agent *a, drpc_device *out, int max) {
  return drpc_dev_devices(drpc_agent_devstate(a), out, max);
}

int drpc_agent_device_map(drpc_agent *a, const char *peer, drpc_device *from,
                          drpc_device *to, int max, int *n, drpc_error *err) {
  *n = 0;
  drpc_worker_info wi;
  int rc = drpc_agent_worker_by_name(a, peer, &wi, err);
  if (rc)
    return rc;
  const drpc_devstate *d = drpc_agent_devstate(a);
  const dev_tab *t = d ? atomic_load(&d->tab) : NULL;
  if (!t || wi.id >= t->n)
    return 0;
  const dev_map *m = map_or_none(t->mine[wi.id]);
  int k = m->n < max ? m->n : max;
  memcpy(from, m->from, sizeof(drpc_device) * (size_t)(k > 0 ? k : 0));
  memcpy(to, m->to, sizeof(drpc_device) * (size_t)(k > 0 ? k : 0));
  *n = m->n;
  return 0;
}

/* ---- sending ------------------------------------------------------------ */

/* Staging copies (device -> host) go in chunks of this size, each with
 * its event, so that a writer sends one chunk while the next is copied. */
#define DEV_STAGE_CHUNK ((size_t)4 << 20)
/* Chunks one frame may stage (beyond them, chunks grow). */
#define DEV_STAGE_MAX_CHUNKS 4096

/* One staged chunk: bytes [lo, hi) of host tensor `host` (a reference
 * held until the chunk is handed to the frame or waited for: the encoder
 * drops its own on failure), ready at ev. */
typedef struct stage_chunk {
  drpc_tensor *host;
  uint64_t lo, hi;
  drpc_devevent *ev;
} stage_chunk;

typedef struct plan_ctx {
  drpc_agent *agent;
  int16_t dst;
  bool response;
  drpc_stream *on[DRPC_DEVICE_MAX]; /* staging copies, per device */
  stage_chunk *chunks;
  uint32_t nchunks, cap;
} plan_ctx;

static int chunk_push(plan_ctx *pc, drpc_tensor *host, uint64_t lo, uint64_t hi,
                      drpc_devevent *ev, drpc_error *err) {
  if (pc->nchunks == pc->cap) {
    uint32_t cap = pc->cap ? pc->cap * 2 : 8;
    stage_chunk *p = realloc(pc->chunks, cap * sizeof *p);
    if (!p)
      return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
    pc->chunks = p;
    pc->cap = cap;
  }
  drpc_tensor_incref(host);
  pc->chunks[pc->nchunks++] = (stage_chunk){host, lo, hi, ev};
  return 0;
}

/* Copies t (contiguous, on a CUDA device) into pinned host memory after
 * the work queued so far on the calling thread's current stream: the
 * message's pool stream of that device (on[idx]) waits for it, the copy
 * goes in chunks with an event each, and nobody waits on the host here:
 * the frame carries the chunks (pending) and its writer waits for each
 * chunk before it writes it. */
static drpc_tensor *stage(plan_ctx *pc, drpc_tensor *t, drpc_error *err) {
  int idx = t->storage->device.index;
  drpc_stream *cur = drpc_stream_current(idx);
  if (!pc->on[idx])
    pc->on[idx] = drpc_stream_from_pool(idx);
  drpc_stream *s = pc->on[idx];
  if (!cur || !s) {
    drpc_error_set(err, DRPC_EINVAL, "no stream on cuda:%d", idx);
    return NULL;
  }
  if (drpc_stream_wait_stream(s, cur, err))
    return NULL;
  drpc_tensor *h = drpc_tensor_empty_pinned(t->dtype, t->ndim, t->shape, err);
  if (!h)
    return NULL;
  void *ctx = NULL;
  const drpc_device_backend *b = drpc_device_backend_get(&ctx);
  size_t n = drpc_tensor_nbytes(t), step = DEV_STAGE_CHUNK;
  while (n / step >= DEV_STAGE_MAX_CHUNKS)
    step *= 2;
  const uint8_t *src = drpc_tensor_data(t);
  uint8_t *dst = drpc_tensor_data(h);
  int rc = 0;
  for (size_t off = 0; off < n && !rc; off += step) {
    size_t len = n - off < step ? n - off : step;
    drpc_devevent *ev = drpc_devevent_new(idx, err);
    rc = ev ? b->copy(ctx, dst + off, DRPC_CPU, src + off, t->storage->device,
                      len, s, err)
            : (err && err->code ? err->code : DRPC_ENOMEM);
    if (!rc)
      rc = drpc_devevent_record(ev, s, err);
    if (!rc)
      rc = chunk_push(pc, h, off, off + len, ev, err);
    if (rc)
      drpc_devevent_free(ev);
  }
  if (rc) {
    /* Queued chunks still write h: let them finish before it goes. */
    (void)drpc_stream_sync(s, NULL);
    drpc_tensor_decref(h);
    return NULL;
  }
  /* t may be freed before the copies ran (a result, once encoded). */
  drpc_storage_record_stream(t->storage, s);
  return h;
}

static int lend_slot_event(drpc_devstate *d, int device, drpc_error *err) {
  for (int i = 0; i < d->nev; i++)
    if (!d->ev_pool[i].busy && d->ev_pool[i].device == device) {
      d->ev_pool[i].busy = true;
      return i;
    }
  if (d->nev >= DEV_MAX_LENDS)
    return drpc_error_set(err, DRPC_ETOOBIG, "too many interprocess events");
  if (!d->ev_pool && !(d->ev_pool = calloc(DEV_MAX_LENDS, sizeof *d->ev_pool)))
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  void *ctx = NULL;
  const drpc_device_backend *b = drpc_device_backend_get(&ctx);
  ipc_event *e = &d->ev_pool[d->nev];
  memset(e, 0, sizeof *e);
  e->ev = b->ipc_event_new(ctx, device, err);
  if (!e->ev)
    return err && err->code ? err->code : DRPC_EIO;
  size_t hlen = sizeof e->handle;
  int rc = b->ipc_event_export(ctx, e->ev, e->handle, &hlen, err);
  if (rc || hlen > DRPC_IPC_HANDLE_MAX) {
    drpc_devevent_free(e->ev);
    return rc ? rc : drpc_error_set(err, DRPC_EIO, "event handle too long");
  }
  e->hlen = (uint32_t)hlen;
  e->device = device;
  e->busy = true;
  return d->nev++;
}

static void put_u64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_u64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++)
    v |= (uint64_t)p[i] << (8 * i);
  return v;
}

/* Shares t (contiguous, on a CUDA device) by handle: records an event on
 * the caller's current stream, exports the memory and the event, and
 * keeps t until the peer releases it. The handle: magic u32, source
 * device u8, lend id u64, offset u64, bytes u64, memory handle (u8 length
 * + bytes), event handle (u8 length + bytes). Returns 1 when sharing is
 * not possible now (the caller stages instead). */
static int share(drpc_devstate *d, int16_t peer, drpc_tensor *t,
                 drpc_wire_tensor_plan *pl, drpc_error *err) {
  void *ctx = NULL;
  const drpc_device_backend *b = drpc_device_backend_get(&ctx);
  int idx = t->storage->device.index;
  uint8_t mh[DRPC_IPC_HANDLE_MAX];
  size_t mlen = sizeof mh, off = 0;
  const void *data = drpc_tensor_data(t);
  if (b->ipc_export(ctx, data, mh, &mlen, &off, NULL) != 0 ||
      mlen > DRPC_IPC_HANDLE_MAX)
    return 1; /* memory the backend cannot share (not its allocation) */
  const drpc_env *env = drpc_agent_env(d->agent);
  env->ops->sync_lock(env->ctx, &d->lock);
  int rc = 1;
  if (!d->lends)
    d->lends = calloc(DEV_MAX_LENDS, sizeof *d->lends);
  if (d->lends && d->nlends < DEV_MAX_LENDS) {
    /* No event to spare: staged instead. */
    int slot = lend_slot_event(d, idx, NULL);
    if (slot >= 0) {
      ipc_event *e = &d->ev_pool[slot];
      rc = drpc_devevent_record(e->ev, drpc_stream_current(idx), err);
      if (rc) {
        e->busy = false;
      } else {
        lend *l = &d->lends[d->nlends++];
        l->id = ++d->next_lend;
        l->peer = peer;
        l->tensor = t;
        drpc_tensor_incref(t);
        l->event = e->ev;
        l->event_slot = slot;
        uint8_t *h = pl->handle;
        size_t k = 0;
        put_u64(h, IPC_MAGIC); /* the low four bytes */
        k += 4;
        h[k++] = (uint8_t)idx;
        put_u64(h + k, l->id);
        k += 8;
        put_u64(h + k, off);
        k += 8;
        put_u64(h + k, drpc_tensor_nbytes(t));
        k += 8;
        h[k++] = (uint8_t)mlen;
        memcpy(h + k, mh, mlen);
        k += mlen;
        h[k++] = (uint8_t)e->hlen;
        memcpy(h + k, e->handle, e->hlen);
        k += e->hlen;
        pl->handle_len = (uint32_t)k;
      }
    }
  }
  env->ops->sync_unlock(env->ctx, &d->lock);
  return rc;
}

static int plan(void *vctx, drpc_tensor *t, drpc_wire_tensor_plan *pl,
                drpc_error *err) {
  plan_ctx *pc = vctx;
  drpc_devstate *d = drpc_agent_devstate(pc->agent);
  drpc_device dev = t->storage->device;
  const dev_map *m = NULL;
  const dev_tab *tab = d ? atomic_load(&d->tab) : NULL;
  if (tab && pc->dst >= 0 && pc->dst < tab->n)
    m = map_or_none(pc->response ? tab->reverse[pc->dst] : tab->mine[pc->dst]);
  char dn[16];
  if (pc->response && dev.type == DRPC_DEVICE_CUDA && d &&
      !dev_in(d->devices, d->ndevices, dev)) {
    char l[512];
    return drpc_error_set(
        err, DRPC_EINVAL,
        "RPC detected that a user-function output tensor on device %s. This "
        "device is not one of the input tensor devices: %s, which is not yet "
        "supported. Please file a feature request issue in PyTorch GitHub "
        "repo.",
        drpc_device_format(dev, dn, sizeof dn),
        dev_list(d->devices, d->ndevices, l, sizeof l));
  }
  pl->target = DRPC_CPU;
  bool found = false;
  for (int i = 0; m && i < m->n && !found; i++)
    if (drpc_device_equal(m->from[i], dev)) {
      pl->target = m->to[i];
      found = true;
    }
  if (!found && dev.type != DRPC_DEVICE_CPU) {
    drpc_worker_info wi = {0};
    drpc_agent_worker_by_id(pc->agent, pc->dst, &wi, NULL);
    return drpc_error_set(
        err, DRPC_EINVAL,
        "TensorPipe RPC backend only supports CPU tensors by default, please "
        "move your tensors to CPU before sending them over RPC, or call "
        "`set_device_map` on `TensorPipeRpcBackendOptions` to explicitly "
        "configure device mapping. %s device mapping is not available for "
        "destination %s, but found tensor on device: %s",
        pc->response ? "Response" : "Request", wi.name,
        drpc_device_format(dev, dn, sizeof dn));
  }
  if (dev.type == DRPC_DEVICE_CPU) {
    drpc_tensor_incref(t);
    pl->send = t;
    return 0;
  }
  drpc_tensor *c = t;
  bool own = false;
  if (!drpc_tensor_is_contiguous(t)) {
    /* Dense on its own device first, ordered on the current stream. */
    c = drpc_tensor_to(t, dev, drpc_stream_current(dev.index), err);
    if (!c)
      return err && err->code ? err->code : DRPC_ENOMEM;
    own = true;
  }
  int rc = 1;
  if (d && d->allow_ipc && pl->target.type == DRPC_DEVICE_CUDA && tab &&
      pc->dst >= 0 && pc->dst < tab->n && tab->same_host[pc->dst])
    rc = share(d, pc->dst, c, pl, err);
  if (rc == 0) {
    atomic_fetch_add(&d->shared_sent, 1);
  } else if (rc == 1 && d && !d->allow_staged) {
    rc = drpc_error_set(err, DRPC_EUNSUPPORTED,
                        "channel cuda_ipc cannot reach %d from this worker",
                        pc->dst);
  } else if (rc == 1) {
    uint32_t chunks_before = pc->nchunks;
    pl->send = stage(pc, c, err);
    rc = pl->send ? 0 : (err && err->code ? err->code : DRPC_ENOMEM);
    if (!rc && d) {
      atomic_fetch_add(&d->staged_sent, 1);
      atomic_fetch_add(&d->staged_chunks, pc->nchunks - chunks_before);
    }
  }
  if (own)
    drpc_tensor_decref(c);
  return rc;
}

/* Hands the staged chunks to the frame, with their places in it: the
 * data section lays tensors out in order, each aligned. */
static int attach_chunks(plan_ctx *pc, drpc_outframe *f, drpc_error *err) {
  drpc_devchunks *dc = drpc_devchunks_new();
  if (!dc)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  uint64_t pos = f->head_len;
  int rc = 0;
  for (uint32_t i = 0; i < f->ntensors && !rc; i++) {
    uint64_t nb = drpc_tensor_nbytes(f->tensors[i]);
    if (nb == 0)
      continue;
    uint64_t start =
        (pos + DRPC_TENSOR_ALIGN - 1) & ~(uint64_t)(DRPC_TENSOR_ALIGN - 1);
    for (uint32_t k = 0; k < pc->nchunks && !rc; k++) {
      stage_chunk *c = &pc->chunks[k];
      if (c->host != f->tensors[i] || !c->ev)
        continue;
      rc = drpc_devchunks_add(dc, start + c->lo, start + c->hi, c->ev, err);
      c->ev = NULL; /* the list owns it now */
    }
    pos = start + nb;
  }
  if (!rc && pos != f->total_len)
    rc = drpc_error_set(err, DRPC_EPROTO,
                        "staged tensors are not where the frame has them");
  if (rc) {
    drpc_devchunks_free(dc);
    return rc;
  }
  f->pending = dc;
  return 0;
}

int drpc_dev_encode(drpc_agent *a, uint8_t type, uint64_t id,
                    const drpc_value *body, int16_t dst,
                    drpc_wire_rref_fn rref_fn, void *rref_ctx,
                    drpc_outframe **out, drpc_error *err) {
  plan_ctx pc = {a, dst, drpc_msg_type_is_response(type), {0}, NULL, 0, 0};
  drpc_wire_hooks h = {rref_fn, rref_ctx, plan, &pc};
  int rc = drpc_wire_encode_hooks(type, 0, id, body, drpc_agent_wire_limits(a),
                                  &h, out, err);
  if (!rc && pc.nchunks)
    rc = attach_chunks(&pc, *out, err);
  /* Whatever was not handed to the frame is waited for here, before its
   * host memory can go. */
  for (uint32_t i = 0; i < pc.nchunks; i++) {
    if (pc.chunks[i].ev) {
      (void)drpc_devevent_sync(pc.chunks[i].ev, NULL);
      drpc_devevent_free(pc.chunks[i].ev);
    }
    drpc_tensor_decref(pc.chunks[i].host);
  }
  free(pc.chunks);
  if (rc && *out) {
    drpc_outframe_free(*out);
    *out = NULL;
  }
  return rc;
}

/* ---- receiving ---------------------------------------------------------- */

/* Makes tensor t (its storage is replaced in place, so every holder sees
 * it) a contiguous tensor of dtype/shape over storage s. */
static void adopt(drpc_tensor *t, drpc_dtype dt, int ndim, const int64_t *shape,
                  drpc_storage *s) {
  drpc_storage *old = t->storage;
  t->dtype = dt;
  t->ndim = ndim;
  int64_t stride = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    t->shape[i] = shape[i];
    t->strides[i] = stride;
    stride *= shape[i] > 1 ? shape[i] : 1;
  }
  t->offset = 0;
  t->storage = s;
  drpc_storage_decref(old);
}

static drpc_devevent *open_event(drpc_devstate *d, const uint8_t *h,
                                 size_t hlen, drpc_error *err) {
  for (int i = 0; i < d->nopened; i++)
    if (d->opened[i].hlen == hlen &&
        memcmp(d->opened[i].handle, h, hlen) == 0) {
      d->opened[i].used = ++d->use_clock;
      return d->opened[i].ev;
    }
  if (!d->opened && !(d->opened = calloc(DEV_EVENT_CACHE, sizeof *d->opened))) {
    drpc_error_set(err, DRPC_ENOMEM, "out of memory");
    return NULL;
  }
  void *ctx = NULL;
  const drpc_device_backend *b = drpc_device_backend_get(&ctx);
  drpc_devevent *ev = b->ipc_event_open(ctx, h, hlen, err);
  if (!ev)
    return NULL;
  int slot = d->nopened;
  if (slot == DEV_EVENT_CACHE) {
    slot = 0;
    for (int i = 1; i < d->nopened; i++)
      if (d->opened[i].used < d->opened[slot].used)
        slot = i;
    drpc_devevent_free(d->opened[slot].ev);
  } else {
    d->nopened++;
  }
  opened_event *o = &d->opened[slot];
  o->hlen = (uint32_t)hlen;
  memcpy(o->handle, h, hlen);
  o->ev = ev;
  o->used = ++d->use_clock;
  return ev;
}

/* The check that starts a DRPC_IN_VALUE_DEVICE payload. */
#define DEV_CHECK_LEN 8

/* Recording: the bytes a tensor shared by handle arrived with are an
 * input, since the handle names memory of this process that no replay can
 * open. They are read back from the copy (st, nbytes on dev, complete) and
 * recorded after their check (DRPC_IN_VALUE_DEVICE). The read goes on a
 * stream of its own rather than the message's, so that nothing waiting
 * for the tensor waits for the read too (in the simulator, a recorded run
 * keeps the virtual times of the same run unrecorded). A read that fails
 * is recorded empty: the run goes on, and its replay stops here. */
static void record_shared(drpc_devstate *d, int16_t from, uint64_t lend_id,
                          const drpc_storage *st, drpc_device dev,
                          uint64_t nbytes, drpc_stream *fallback) {
  void *ctx = NULL;
  const drpc_device_backend *b = drpc_device_backend_get(&ctx);
  int idx = dev.index;
  if (!d->rec_on[idx] && b->stream_new)
    d->rec_on[idx] = b->stream_new(ctx, idx, NULL);
  drpc_stream *s = d->rec_on[idx] ? d->rec_on[idx] : fallback;
  drpc_error err = DRPC_ERROR_INIT;
  uint8_t *buf = nbytes <= SIZE_MAX - DEV_CHECK_LEN
                     ? malloc(DEV_CHECK_LEN + (size_t)nbytes)
                     : NULL;
  int rc = buf ? 0 : drpc_error_set(&err, DRPC_ENOMEM, "out of memory");
  if (!rc)
    rc = b->copy(ctx, buf + DEV_CHECK_LEN, DRPC_CPU, st->data, dev,
                 (size_t)nbytes, s, &err);
  if (!rc)
    rc = drpc_stream_sync(s, &err);
  size_t n = 0;
  if (!rc) {
    put_u64(buf, drpc_in_value_device_check(from, lend_id, buf + DEV_CHECK_LEN,
                                            (size_t)nbytes));
    n = DEV_CHECK_LEN + (size_t)nbytes;
  } else {
    drpc_agent_logf(d->agent, DRPC_LOG_ERROR,
                    "could not record the bytes of a tensor worker %d shared "
                    "by handle: %s; the recording will not replay",
                    from, drpc_error_message(&err));
  }
  drpc_agent_record(d->agent, DRPC_EV_IN_VALUE, from, lend_id,
                    DRPC_IN_VALUE_DEVICE, n ? buf : NULL, n, NULL);
  free(buf);
  drpc_error_clear(&err);
}

/* Reaches one shared tensor from worker `from`: waits (on the message's
 * pool stream of the target device, on[idx]) for the sender's event,
 * copies device to device into fresh memory, and waits for that copy so
 * the sender's memory can be released at once. In replay the handle is
 * not opened (it names memory of the recording process): the copy is
 * filled with the bytes the recording kept instead. */
static int place_shared(drpc_devstate *d, int16_t from, drpc_wire_shared *sh,
                        uint64_t *lend_id, drpc_stream **on, drpc_error *err) {
  const uint8_t *h = sh->handle;
  size_t n = sh->handle_len, k = 0;
  if (n < 4 + 1 + 24 + 2 || (uint32_t)get_u64(h) != IPC_MAGIC)
    return drpc_error_set(err, DRPC_EPROTO, "malformed shared tensor handle");
  k = 4;
  int src = h[k++];
  *lend_id = get_u64(h + k);
  uint64_t off = get_u64(h + k + 8), nbytes = get_u64(h + k + 16);
  k += 24;
  size_t mlen = h[k++];
  if (k + mlen + 1 > n)
    return drpc_error_set(err, DRPC_EPROTO, "malformed shared tensor handle");
  const uint8_t *mh = h + k;
  k += mlen;
  size_t elen = h[k++];
  if (k + elen != n)
    return drpc_error_set(err, DRPC_EPROTO, "malformed shared tensor handle");
  const uint8_t *eh = h + k;
  uint64_t want = drpc_dtype_size(sh->dtype);
  for (int i = 0; i < sh->ndim; i++) {
    if (sh->shape[i] != 0 && want > UINT64_MAX / (uint64_t)sh->shape[i])
      return drpc_error_set(err, DRPC_EPROTO, "shared tensor size overflows");
    want *= (uint64_t)sh->shape[i];
  }
  if (want != nbytes)
    return drpc_error_set(err, DRPC_EPROTO,
                          "shared tensor handle names %" PRIu64
                          " bytes for a tensor of %" PRIu64,
                          nbytes, want);
  if (!drpc_device_valid(sh->device))
    return drpc_error_set(err, DRPC_EINVAL,
                          "a shared tensor is meant for cuda:%d, which this "
                          "worker does not have",
                          sh->device.index);
  void *ctx = NULL;
  const drpc_device_backend *b = drpc_device_backend_get(&ctx);
  /* Opened on the sender's device (same host: the same numbering); the
   * copy below crosses to the target device when they differ. */
  if (src >= drpc_device_count())
    return drpc_error_set(err, DRPC_EINVAL,
                          "a shared tensor comes from cuda:%d, which this "
                          "worker does not have",
                          src);
  const drpc_env *env = drpc_agent_env(d->agent);
  bool replay = env->ops->recorded_bytes != NULL;
  void *base = NULL;
  drpc_devevent *ev = NULL;
  if (!replay) {
    if (!(base = b->ipc_open(ctx, src, mh, mlen, err)))
      return err && err->code ? err->code : DRPC_EIO;
    if (!(ev = open_event(d, eh, elen, err)))
      return err && err->code ? err->code : DRPC_EIO;
  }
  int idx = sh->device.index;
  if (!on[idx])
    on[idx] = drpc_stream_from_pool(idx);
  drpc_stream *s = on[idx];
  int rc = ev ? drpc_stream_wait_event(s, ev, err) : 0;
  drpc_storage *st =
      rc ? NULL : drpc_device_storage_new(sh->device, (size_t)nbytes, s, err);
  if (!st)
    return rc ? rc : (err && err->code ? err->code : DRPC_ENOMEM);
  drpc_device sdev = {DRPC_DEVICE_CUDA, (int8_t)src};
  if (nbytes && replay) {
    const void *p =
        env->ops->recorded_bytes(env->ctx, from, *lend_id, (size_t)nbytes);
    rc = p ? b->copy(ctx, st->data, sh->device, p, DRPC_CPU, (size_t)nbytes, s,
                     err)
           : drpc_error_set(err, DRPC_EIO,
                            "the recording holds no usable bytes for the "
                            "tensor worker %d shared by handle (lend %" PRIu64
                            ")",
                            from, *lend_id);
  } else if (nbytes) {
    rc = b->copy(ctx, st->data, sh->device, (const uint8_t *)base + off, sdev,
                 (size_t)nbytes, s, err);
  }
  if (!rc)
    rc = drpc_stream_sync(s, err);
  if (rc) {
    drpc_storage_decref(st);
    return rc;
  }
  if (!replay && nbytes && drpc_agent_recording(d->agent))
    record_shared(d, from, *lend_id, st, sh->device, nbytes, s);
  adopt(sh->tensor, sh->dtype, sh->ndim, sh->shape, st);
  atomic_fetch_add(&d->shared_received, 1);
  return 0;
}

int drpc_dev_place(drpc_agent *a, uint64_t conn, int16_t from, drpc_msg *m,
                   drpc_devready **ready, drpc_error *err) {
  drpc_devstate *d = drpc_agent_devstate(a);
  int rc = 0;
  /* Staged tensors are copied in on one pool stream per device, with no
   * host wait: whoever uses them waits on the device (ready). */
  drpc_stream *on[DRPC_DEVICE_MAX] = {0};
  for (uint32_t i = 0; m->devices && i < m->ntensors && !rc; i++) {
    drpc_device dev = m->devices[i];
    if (dev.type == DRPC_DEVICE_CPU)
      continue;
    drpc_tensor *t = m->tensors[i];
    if (!drpc_device_valid(dev)) {
      char dn[16];
      rc = drpc_error_set(err, DRPC_EINVAL,
                          "a tensor is meant for %s, which this worker does "
                          "not have (%d CUDA devices)",
                          drpc_device_format(dev, dn, sizeof dn),
                          drpc_device_count());
      break;
    }
    if (!on[dev.index])
      on[dev.index] = drpc_stream_from_pool(dev.index);
    /* The host source may go once the copy is queued (pageable memory, as
     * cudaMemcpyAsync treats it). */
    drpc_tensor *g = drpc_tensor_to(t, dev, on[dev.index], err);
    if (!g) {
      rc = err && err->code ? err->code : DRPC_ENOMEM;
      break;
    }
    drpc_storage_incref(g->storage);
    adopt(t, t->dtype, t->ndim, t->shape, g->storage);
    drpc_tensor_decref(g);
  }
  drpc_value *released = NULL;
  for (uint32_t i = 0; i < m->nshared && !rc; i++) {
    uint64_t lid = 0;
    if (!d) {
      rc = drpc_error_set(err, DRPC_EUNSUPPORTED,
                          "shared tensors need the agent's device state");
      break;
    }
    rc = place_shared(d, from, &m->shared[i], &lid, on, err);
    if (!rc) {
      if (!released)
        released = drpc_value_list();
      if (!released || drpc_list_append(released, drpc_value_int((int64_t)lid)))
        rc = drpc_error_set(err, DRPC_ENOMEM, "out of memory");
    }
  }
  if (released) {
    drpc_agent_send_oneway(a, conn, DRPC_MSG_RELEASE, released);
    drpc_value_free(released);
  }
  drpc_devready *r = NULL;
  for (int i = 0; i < DRPC_DEVICE_MAX && !rc; i++) {
    if (!on[i])
      continue;
    if (ready && !r)
      r = drpc_devready_new();
    /* Without a place to say where the data is ready: wait for it here. */
    if (!r || drpc_devready_add(r, on[i], NULL) != 0)
      rc = drpc_stream_sync(on[i], err);
  }
  if (ready && !rc && drpc_devready_count(r) > 0) {
    *ready = r;
    r = NULL;
  }
  drpc_devready_free(r);
  return rc;
}

/* RELEASE [lend ids]: the peer is done reading these. */
void drpc_dev_on_release(drpc_agent *a, int16_t from, const drpc_value *body) {
  drpc_devstate *d = drpc_agent_devstate(a);
  if (!d || !body || body->kind != DRPC_VAL_LIST)
    return;
  const drpc_env *env = drpc_agent_env(a);
  env->ops->sync_lock(env->ctx, &d->lock);
  for (size_t k = 0; k < body->u.c.len; k++) {
    const drpc_value *v = body->u.c.items[k];
    if (v->kind != DRPC_VAL_INT)
      continue;
    for (int i = 0; i < d->nlends; i++) {
      lend *l = &d->lends[i];
      /* Only the peer the memory was lent to may release it. */
      if (l->id != (uint64_t)v->u.i || l->peer != from)
        continue;
      drpc_tensor_decref(l->tensor);
      d->ev_pool[l->event_slot].busy = false;
      d->lends[i] = d->lends[--d->nlends];
      break;
    }
  }
  env->ops->sync_unlock(env->ctx, &d->lock);
}

/* Dynamic groups: a member joined; its maps and mine toward it. */
int drpc_dev_peer_join(drpc_agent *a, int16_t id, const char *name,
                       const char *devinfo, drpc_error *err) {
  drpc_devstate *d = drpc_agent_devstate(a);
  if (!d || id < 0)
    return 0;
  const drpc_worker_info *self = drpc_agent_self(a);
  node_info me = {0}, pi = {0};
  me.name = self->name;
  pi.name = name;
  if (parse_info(drpc_agent_peer_devinfo(a, self->id), &me) ||
      parse_info(devinfo, &pi)) {
    info_free(&me);
    info_free(&pi);
    return drpc_error_set(err, DRPC_EPROTO,
                          "malformed device information of %s", name);
  }
  const drpc_env *env = drpc_agent_env(a);
  int rc = 0;
  env->ops->sync_lock(env->ctx, &d->lock);
  dev_tab *t = atomic_load(&d->tab);
  if (id >= t->n) {
    int n = t->n * 2 > id ? t->n * 2 : id + 1;
    dev_tab *nt = tab_new(n, t);
    if (nt) {
      nt->older = t;
      atomic_store(&d->tab, nt);
      t = nt;
    } else {
      rc = drpc_error_set(err, DRPC_ENOMEM, "out of memory");
    }
  }
  if (!rc && tab_set(t, id, &me, &pi, self->name))
    rc = drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  if (!rc)
    devices_compute(d, drpc_agent_options(a));
  env->ops->sync_unlock(env->ctx, &d->lock);
  info_free(&me);
  info_free(&pi);
  return rc;
}

void drpc_dev_peer_leave(drpc_agent *a, int16_t id) {
  drpc_devstate *d = drpc_agent_devstate(a);
  if (!d || id < 0)
    return;
  const drpc_env *env = drpc_agent_env(a);
  env->ops->sync_lock(env->ctx, &d->lock);
  dev_tab *t = atomic_load(&d->tab);
  if (id < t->n) {
    if (t->mine[id])
      t->mine[id]->n = 0;
    if (t->reverse[id])
      t->reverse[id]->n = 0;
    t->same_host[id] = false;
    devices_compute(d, drpc_agent_options(a));
  }
  env->ops->sync_unlock(env->ctx, &d->lock);
}

/* A peer is gone: what was lent to it is free again. */
void drpc_dev_peer_gone(drpc_agent *a, int16_t peer) {
  drpc_devstate *d = drpc_agent_devstate(a);
  if (!d)
    return;
  const drpc_env *env = drpc_agent_env(a);
  env->ops->sync_lock(env->ctx, &d->lock);
  for (int i = 0; i < d->nlends;) {
    lend *l = &d->lends[i];
    if (l->peer != peer) {
      i++;
      continue;
    }
    drpc_tensor_decref(l->tensor);
    d->ev_pool[l->event_slot].busy = false;
    d->lends[i] = d->lends[--d->nlends];
  }
  env->ops->sync_unlock(env->ctx, &d->lock);
}

int drpc_dev_metrics(drpc_agent *a, drpc_value *dict) {
  drpc_devstate *d = drpc_agent_devstate(a);
  if (!d)
    return 0;
  const drpc_env *env = drpc_agent_env(a);
  env->ops->sync_lock(env->ctx, &d->lock);
  int lent = d->nlends;
  env->ops->sync_unlock(env->ctx, &d->lock);
  const char *keys[5] = {"cuda.tensors_shared", "cuda.tensors_staged",
                         "cuda.tensors_received_shared", "cuda.lent",
                         "cuda.staging_chunks"};
  uint64_t vals[5] = {atomic_load(&d->shared_sent),
                      atomic_load(&d->staged_sent),
                      atomic_load(&d->shared_received), (uint64_t)lent,
                      atomic_load(&d->staged_chunks)};
  for (int i = 0; i < 5; i++) {
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRIu64, vals[i]);
    if (drpc_dict_set(dict, keys[i], drpc_value_str(buf)))
      return DRPC_ENOMEM;
  }
  return 0;
}
