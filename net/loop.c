/* The real backend: one epoll loop thread owns the agent core and every
 * socket; user threads post commands to it; a pool of worker threads runs
 * user functions. Frames are written with writev (coalesced per loop turn)
 * and tensor data is read straight into tensor storage. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "../core/map.h"
#include "drpc/net.h"
#include "posix.h"

/* Bulk read buffer per connection; frames whose header + payload exceed it
 * get a buffer of their own (bounded by the payload limit). */
#define RBUF_SIZE (256u << 10)
/* A peer that stops reading may not make us buffer without bound. */
#define MAX_OUT_QUEUE_BYTES (3ull << 30)
#define MAX_IOV 512
#define MAX_EVENTS 128

typedef struct nconn {
  uint64_t id;
  int fd;
  bool outgoing, connecting, close_after_flush, dirty, want_out, overflow;
  /* Send queue. */
  drpc_outframe *oq_head, *oq_tail;
  uint64_t oq_off; /* bytes of the head frame already written */
  uint64_t oq_bytes;
  /* Receive state. */
  uint8_t *rbuf;
  size_t rcap, rlen, rpos;
  int rstate; /* 0: header+payload, 1: tensor data */
  drpc_frame_header hdr;
  drpc_msg msg;
  uint64_t frame_pos; /* bytes of the current frame consumed in state 1 */
  uint64_t frame_len;
  struct nconn *next_dirty;
} nconn;

struct drpc_net {
  drpc_net_config cfg;
  char host[64];
  char prefix[DRPC_MAX_NAME_LEN + 8];
  drpc_env env;
  int epfd, listen_fd, wake_fd, port;
  pthread_t loop_thread;
  bool loop_started;
  _Atomic bool stop;
  _Atomic(drpc_agent *) agent;
  bool listening; /* listen fd registered with epoll (after attach) */

  /* Whoever holds core_mu owns the agent core and the sockets: the loop
   * thread while it handles events, or a thread posting a command. */
  pthread_mutex_t core_mu;
  uint64_t sleep_until; /* the timer deadline the sleeping loop waits for */
  pthread_mutex_t q_mu;
  drpc_cmd *q_head, *q_tail;
  bool sleeping, wake_pending;

  uint64_t timer_deadline;
  drpc_map conns;
  uint64_t next_conn;
  nconn *dirty;
  uint8_t *pad_zero; /* zero bytes written as padding */
  uint8_t *pad;      /* where received padding is discarded */

  pthread_mutex_t pool_mu;
  pthread_cond_t pool_cv;
  drpc_job *j_head, *j_tail;
  pthread_t *workers;
  int nworkers, idle;
  int waking; /* signalled workers that have not woken up yet */
  bool pool_stop;

  uint64_t rng;
};

static _Thread_local drpc_net *tls_owner;

/* ---- logging ----------------------------------------------------------- */

static void net_log(drpc_net *n, drpc_log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void env_log(void *ctx, drpc_log_level level, const char *msg) {
  drpc_net *n = ctx;
  static int verbose = -1;
  if (verbose < 0) {
    const char *v = getenv("DRPC_LOG");
    verbose = v && strcmp(v, "debug") == 0 ? 2 : (v && *v == 'i') ? 1 : 0;
  }
  int min = verbose == 2 ? DRPC_LOG_DEBUG
            : verbose    ? DRPC_LOG_INFO
                         : DRPC_LOG_WARN;
  if (!n->cfg.log_stderr || (int)level < min)
    return;
  static const char *names[] = {"debug", "info", "warning", "error"};
  fprintf(stderr, "drpc[%s] %s: %s\n", n->prefix, names[level & 3], msg);
}

static void net_log(drpc_net *n, drpc_log_level lvl, const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  env_log(n, lvl, buf);
}

/* ---- env callbacks ----------------------------------------------------- */

static uint64_t env_now(void *ctx) {
  (void)ctx;
  return drpc_posix_now_ns();
}

static void env_timer_arm(void *ctx, uint64_t deadline_ns) {
  ((drpc_net *)ctx)->timer_deadline = deadline_ns;
}

static void wake(drpc_net *n) {
  uint64_t one = 1;
  ssize_t r = write(n->wake_fd, &one, sizeof one);
  (void)r;
}

static bool drain_commands(drpc_net *n);
static void flush_dirty(drpc_net *n);

/* Wakes the loop when it sleeps (or is about to) with work it must see. */
static void wake_if_sleeping(drpc_net *n) {
  pthread_mutex_lock(&n->q_mu);
  bool need_wake = n->sleeping && !n->wake_pending;
  if (need_wake)
    n->wake_pending = true;
  pthread_mutex_unlock(&n->q_mu);
  if (need_wake)
    wake(n);
}

/* Queues cmd for the core. When the core is free, the posting thread takes
 * it (the core mutex) and applies the queue itself, then writes what that
 * produced: a call leaves for the socket without waking the loop thread,
 * which saves a thread hand-off on every request and every response. The
 * order in which commands are applied is still one total order (the
 * mutex's), which is what the recorder sees. */
static void env_post(void *ctx, drpc_cmd *cmd) {
  drpc_net *n = ctx;
  cmd->next = NULL;
  pthread_mutex_lock(&n->q_mu);
  /* Only an idle agent (queue empty, loop asleep) is worth taking over:
   * under load the loop is awake and batches commands into fewer, larger
   * writes, which is what throughput needs. */
  bool idle = !n->q_head && n->sleeping;
  if (n->q_tail)
    n->q_tail->next = cmd;
  else
    n->q_head = cmd;
  n->q_tail = cmd;
  pthread_mutex_unlock(&n->q_mu);
  if (tls_owner == n)
    return; /* the holder drains the queue before letting go */
  if (idle && atomic_load(&n->agent) &&
      pthread_mutex_trylock(&n->core_mu) == 0) {
    tls_owner = n;
    while (drain_commands(n))
      ;
    flush_dirty(n);
    bool earlier_timer =
        n->timer_deadline &&
        (!n->sleep_until || n->timer_deadline < n->sleep_until);
    tls_owner = NULL;
    pthread_mutex_unlock(&n->core_mu);
    if (!earlier_timer)
      return;
  }
  wake_if_sleeping(n);
}

static bool env_is_owner(void *ctx) {
  return tls_owner == ctx;
}

static void env_execute(void *ctx, drpc_job *job) {
  drpc_net *n = ctx;
  job->next = NULL;
  pthread_mutex_lock(&n->pool_mu);
  if (n->j_tail)
    n->j_tail->next = job;
  else
    n->j_head = job;
  n->j_tail = job;
  /* One wake-up in flight at a time: the woken worker wakes the next one
   * if jobs remain, so a burst costs a chain of wake-ups instead of a
   * storm, and blocking jobs still spread over every thread. */
  if (n->idle > n->waking && n->waking == 0) {
    n->waking++;
    pthread_cond_signal(&n->pool_cv);
  }
  pthread_mutex_unlock(&n->pool_mu);
}

static uint64_t env_random(void *ctx) {
  return drpc_posix_random(&((drpc_net *)ctx)->rng);
}

static void env_pool_stats(void *ctx, int *size, int *idle) {
  drpc_net *n = ctx;
  pthread_mutex_lock(&n->pool_mu);
  *size = n->nworkers;
  *idle = n->idle;
  pthread_mutex_unlock(&n->pool_mu);
}

static int env_listen_addr(void *ctx, char *buf, size_t len) {
  drpc_net *n = ctx;
  int k = snprintf(buf, len, "tcp://%s:%d", n->host, n->port);
  return k > 0 && (size_t)k < len ? 0 : DRPC_ETOOBIG;
}

static int set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void set_nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static nconn *conn_new(drpc_net *n, int fd, bool outgoing) {
  nconn *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  c->fd = fd;
  c->outgoing = outgoing;
  c->id = ++n->next_conn;
  if (drpc_map_put(&n->conns, c->id, c)) {
    free(c);
    return NULL;
  }
  return c;
}

static int parse_tcp_addr(const char *addr, char *host, size_t hn, int *port) {
  const char *p = strncmp(addr, "tcp://", 6) == 0 ? addr + 6 : addr;
  const char *colon = strrchr(p, ':');
  if (!colon || (size_t)(colon - p) >= hn)
    return DRPC_EINVAL;
  memcpy(host, p, (size_t)(colon - p));
  host[colon - p] = 0;
  char *end;
  long v = strtol(colon + 1, &end, 10);
  if (*end || v <= 0 || v > 65535)
    return DRPC_EINVAL;
  *port = (int)v;
  return 0;
}

static int env_connect(void *ctx, int16_t peer, const char *addr,
                       uint64_t *out) {
  drpc_net *n = ctx;
  char host[256];
  int port;
  (void)peer;
  if (parse_tcp_addr(addr, host, sizeof host, &port))
    return DRPC_EINVAL;
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  struct addrinfo *res = NULL;
  char ps[16];
  snprintf(ps, sizeof ps, "%d", port);
  if (getaddrinfo(host, ps, &hints, &res) || !res)
    return DRPC_ECONN;
  int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    freeaddrinfo(res);
    return DRPC_ECONN;
  }
  set_nonblock(fd);
  set_nodelay(fd);
  int rc = connect(fd, res->ai_addr, res->ai_addrlen);
  freeaddrinfo(res);
  if (rc < 0 && errno != EINPROGRESS) {
    close(fd);
    return DRPC_ECONN;
  }
  nconn *c = conn_new(n, fd, true);
  if (!c) {
    close(fd);
    return DRPC_ENOMEM;
  }
  c->connecting = true;
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP,
                           .data.u64 = c->id};
  epoll_ctl(n->epfd, EPOLL_CTL_ADD, fd, &ev);
  c->want_out = true;
  *out = c->id;
  return 0;
}

static void mark_dirty(drpc_net *n, nconn *c) {
  if (!c->dirty) {
    c->dirty = true;
    c->next_dirty = n->dirty;
    n->dirty = c;
  }
}

static void conn_destroy(drpc_net *n, nconn *c, int code, const char *why);

static void env_send(void *ctx, uint64_t id, drpc_outframe *f) {
  drpc_net *n = ctx;
  nconn *c = drpc_map_get(&n->conns, id);
  if (!c || c->close_after_flush) {
    drpc_outframe_free(f);
    return;
  }
  f->next = NULL;
  if (c->oq_tail)
    c->oq_tail->next = f;
  else
    c->oq_head = f;
  c->oq_tail = f;
  c->oq_bytes += f->total_len;
  /* Destroying here would re-enter the agent from inside its own send;
   * the flush at the end of this loop turn does it. */
  if (c->oq_bytes > MAX_OUT_QUEUE_BYTES)
    c->overflow = true;
  mark_dirty(n, c);
}

static void env_close(void *ctx, uint64_t id) {
  drpc_net *n = ctx;
  nconn *c = drpc_map_get(&n->conns, id);
  if (!c)
    return;
  c->close_after_flush = true;
  mark_dirty(n, c);
}

static void env_record(void *ctx, const drpc_event *ev) {
  drpc_net *n = ctx;
  n->cfg.record(n->cfg.record_ctx, ev);
}

static bool env_recording(void *ctx) {
  (void)ctx;
  return true;
}

#define NET_OPS_COMMON                                                         \
  .now_ns = env_now, .timer_arm = env_timer_arm, .connect = env_connect,       \
  .send = env_send, .close = env_close, .execute = env_execute,                \
  .post = env_post, .is_owner = env_is_owner,                                  \
  .sync_init = drpc_posix_env_sync_init,                                       \
  .sync_destroy = drpc_posix_env_sync_destroy,                                 \
  .sync_lock = drpc_posix_env_sync_lock,                                       \
  .sync_unlock = drpc_posix_env_sync_unlock,                                   \
  .sync_wait = drpc_posix_env_sync_wait,                                       \
  .sync_broadcast = drpc_posix_env_sync_broadcast, .random = env_random,       \
  .log = env_log, .pool_stats = env_pool_stats,                                \
  .listen_addr = env_listen_addr, .sends_staged = true

/* With a recorder: the same, plus the record sink. */
static const drpc_env_ops net_ops_recording = {
    NET_OPS_COMMON,
    .record = env_record,
    .recording = env_recording,
};

static const drpc_env_ops net_ops = {
    .now_ns = env_now,
    .timer_arm = env_timer_arm,
    .connect = env_connect,
    .send = env_send,
    .close = env_close,
    .execute = env_execute,
    .post = env_post,
    .is_owner = env_is_owner,
    .sync_init = drpc_posix_env_sync_init,
    .sync_destroy = drpc_posix_env_sync_destroy,
    .sync_lock = drpc_posix_env_sync_lock,
    .sync_unlock = drpc_posix_env_sync_unlock,
    .sync_wait = drpc_posix_env_sync_wait,
    .sync_broadcast = drpc_posix_env_sync_broadcast,
    .random = env_random,
    .record = NULL,
    .log = env_log,
    .pool_stats = env_pool_stats,
    .listen_addr = env_listen_addr,
    .sends_staged = true,
};

/* ---- connections: teardown, writing ----------------------------------- */

static void free_queue(nconn *c) {
  while (c->oq_head) {
    drpc_outframe *f = c->oq_head;
    c->oq_head = f->next;
    drpc_outframe_free(f);
  }
  c->oq_tail = NULL;
  c->oq_bytes = 0;
  c->oq_off = 0;
}

/* Closes the socket and tells the agent (unless the agent asked for the
 * close itself, in which case it already forgot the connection). */
static void conn_destroy(drpc_net *n, nconn *c, int code, const char *why) {
  bool tell = !c->close_after_flush;
  uint64_t id = c->id;
  epoll_ctl(n->epfd, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  drpc_map_remove(&n->conns, id);
  free_queue(c);
  drpc_msg_clear(&c->msg);
  free(c->rbuf);
  if (c->dirty) {
    /* Unlink from the dirty list. */
    for (nconn **pp = &n->dirty; *pp; pp = &(*pp)->next_dirty)
      if (*pp == c) {
        *pp = c->next_dirty;
        break;
      }
  }
  free(c);
  drpc_agent *a = atomic_load(&n->agent);
  if (tell && a) {
    drpc_error e = {code, (char *)why};
    drpc_agent_on_conn_closed(a, id, &e);
  }
}

static void update_out_interest(drpc_net *n, nconn *c, bool want) {
  if (c->want_out == want)
    return;
  c->want_out = want;
  struct epoll_event ev = {.events =
                               EPOLLIN | EPOLLRDHUP | (want ? EPOLLOUT : 0),
                           .data.u64 = c->id};
  epoll_ctl(n->epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Writes as much of the queue as the socket takes. Returns false when the
 * connection was destroyed. */
static bool conn_flush(drpc_net *n, nconn *c) {
  if (c->overflow) {
    conn_destroy(n, c, DRPC_ETOOBIG,
                 "send queue exceeded its bound: the peer is not reading");
    return false;
  }
  if (c->connecting)
    return true;
  while (c->oq_head) {
    struct iovec iov[MAX_IOV];
    size_t cnt = 0;
    uint64_t off = c->oq_off;
    for (drpc_outframe *f = c->oq_head; f && cnt < MAX_IOV; f = f->next) {
      /* A frame with device tensors still being staged is written as far
       * as its copies are done: this waits for the next chunk while the
       * device copies the ones after it. */
      int rc = 0;
      drpc_error err = DRPC_ERROR_INIT;
      uint64_t lim = drpc_outframe_ready_end(f, off, &rc, &err);
      if (rc) {
        char why[300];
        snprintf(why, sizeof why, "a device copy for a frame failed: %s",
                 drpc_error_message(&err));
        drpc_error_clear(&err);
        conn_destroy(n, c, DRPC_EIO, why);
        return false;
      }
      size_t need = drpc_outframe_iov_upto(f, off, lim, iov + cnt,
                                           MAX_IOV - cnt, n->pad_zero);
      if (need > MAX_IOV - cnt) {
        cnt = MAX_IOV;
        break;
      }
      cnt += need;
      off = 0;
      if (lim < f->total_len)
        break;
    }
    ssize_t w = writev(c->fd, iov, (int)cnt);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        update_out_interest(n, c, true);
        return true;
      }
      char why[128];
      snprintf(why, sizeof why, "write failed: %s", strerror(errno));
      conn_destroy(n, c, DRPC_ECONN, why);
      return false;
    }
    uint64_t left = (uint64_t)w;
    while (left && c->oq_head) {
      drpc_outframe *f = c->oq_head;
      uint64_t rest = f->total_len - c->oq_off;
      if (left >= rest) {
        left -= rest;
        c->oq_head = f->next;
        if (!c->oq_head)
          c->oq_tail = NULL;
        c->oq_bytes -= f->total_len;
        c->oq_off = 0;
        drpc_outframe_free(f);
      } else {
        c->oq_off += left;
        left = 0;
      }
    }
  }
  update_out_interest(n, c, false);
  if (c->close_after_flush) {
    conn_destroy(n, c, 0, "closed");
    return false;
  }
  return true;
}

static void flush_dirty(drpc_net *n) {
  while (n->dirty) {
    nconn *c = n->dirty;
    n->dirty = c->next_dirty;
    c->dirty = false;
    c->next_dirty = NULL;
    conn_flush(n, c);
  }
}

/* ---- connections: reading ---------------------------------------------- */

static void malformed(drpc_net *n, nconn *c, const char *what) {
  net_log(n, DRPC_LOG_ERROR,
          "malformed frame on connection %llu: %s; closing that connection",
          (unsigned long long)c->id, what);
  conn_destroy(n, c, DRPC_EPROTO, what);
}

static uint64_t align_up(uint64_t x) {
  return (x + DRPC_TENSOR_ALIGN - 1) & ~(uint64_t)(DRPC_TENSOR_ALIGN - 1);
}

/* Where frame byte `pos` (within the data section) goes: fills one iovec
 * for as many bytes as are contiguous there, up to max. */
static size_t data_iov(nconn *c, drpc_net *n, uint64_t pos, struct iovec *iov,
                       size_t max) {
  size_t cnt = 0;
  uint64_t p = drpc_wire_data_offset(c->hdr.payload_len);
  for (uint32_t i = 0; i < c->msg.ntensors && cnt < max; i++) {
    uint64_t start = align_up(p);
    size_t nb = drpc_tensor_nbytes(c->msg.tensors[i]);
    if (nb == 0)
      continue; /* empty tensors take no space and no padding */
    if (pos < start && cnt < max) {
      iov[cnt].iov_base = n->pad;
      iov[cnt].iov_len = (size_t)(start - pos);
      cnt++;
      pos = start;
    }
    if (pos < start + nb && cnt < max) {
      iov[cnt].iov_base =
          (uint8_t *)drpc_tensor_data(c->msg.tensors[i]) + (pos - start);
      iov[cnt].iov_len = (size_t)(start + nb - pos);
      cnt++;
      pos = start + nb;
    }
    p = start + nb;
  }
  return cnt;
}

/* Hands the decoded frame to the agent; raw: the whole frame's bytes when
 * they are still in the read buffer (frames without tensor data), which a
 * recording agent records instead of re-encoding the message. */
static void deliver(drpc_net *n, nconn *c, const uint8_t *raw, size_t raw_len) {
  drpc_agent *a = atomic_load(&n->agent);
  drpc_msg m = c->msg;
  memset(&c->msg, 0, sizeof c->msg);
  c->rstate = 0;
  if (a)
    drpc_agent_on_message_raw(a, c->id, &m, raw, raw_len);
  drpc_msg_clear(&m);
}

/* Copies buffered bytes of the data section into tensors. */
static void consume_data_from_buffer(drpc_net *n, nconn *c) {
  while (c->rstate == 1 && c->rpos < c->rlen) {
    struct iovec iov[8];
    size_t cnt = data_iov(c, n, c->frame_pos, iov, 8);
    if (cnt == 0)
      break;
    for (size_t i = 0; i < cnt && c->rpos < c->rlen; i++) {
      size_t k = iov[i].iov_len < c->rlen - c->rpos ? iov[i].iov_len
                                                    : c->rlen - c->rpos;
      if (iov[i].iov_base != n->pad)
        memcpy(iov[i].iov_base, c->rbuf + c->rpos, k);
      c->rpos += k;
      c->frame_pos += k;
      if (k < iov[i].iov_len)
        break;
    }
    if (c->frame_pos == c->frame_len)
      deliver(n, c, NULL, 0);
  }
}

/* Parses complete frames from the buffer. Returns false when the
 * connection was destroyed. */
static bool parse_buffer(drpc_net *n, nconn *c) {
  drpc_agent *a = atomic_load(&n->agent);
  const drpc_wire_limits *lim = drpc_agent_wire_limits(a);
  for (;;) {
    if (c->close_after_flush)
      return true; /* the agent dropped this connection: read no further */
    if (c->rstate == 1) {
      consume_data_from_buffer(n, c);
      if (!drpc_map_get(&n->conns, c->id))
        return false;
      if (c->rstate == 1)
        break; /* the rest of the data is still in the socket */
      continue;
    }
    size_t avail = c->rlen - c->rpos;
    if (avail < DRPC_WIRE_HEADER_SIZE)
      break;
    drpc_error err = DRPC_ERROR_INIT;
    if (drpc_wire_header_decode(c->rbuf + c->rpos, avail, &c->hdr, lim, &err)) {
      malformed(n, c, drpc_error_message(&err));
      drpc_error_clear(&err);
      return false;
    }
    /* The head (header, payload, padding to the alignment) comes first;
     * tensor data follows. */
    size_t need = (size_t)drpc_wire_data_offset(c->hdr.payload_len);
    if (avail < need) {
      if (need > c->rcap) {
        /* Grow (bounded by the header's payload limit check). */
        uint8_t *nb = malloc(need);
        if (!nb) {
          malformed(n, c, "out of memory for frame payload");
          return false;
        }
        memcpy(nb, c->rbuf + c->rpos, avail);
        free(c->rbuf);
        c->rbuf = nb;
        c->rcap = need;
        c->rlen = avail;
        c->rpos = 0;
      }
      break;
    }
    if (drpc_wire_decode_payload(&c->hdr, c->rbuf + c->rpos + 32, lim, &c->msg,
                                 &err)) {
      malformed(n, c, drpc_error_message(&err));
      drpc_error_clear(&err);
      return false;
    }
    drpc_wire_frame_size(&c->hdr, &c->frame_len);
    c->rpos += need;
    if (c->hdr.data_len == 0) {
      deliver(n, c, c->rbuf + c->rpos - need, need);
      if (!drpc_map_get(&n->conns, c->id))
        return false;
      continue;
    }
    /* frame_pos counts bytes from the frame start; header and payload are
     * consumed, the padding before the first tensor comes next. */
    c->rstate = 1;
    c->frame_pos = need;
  }
  /* Compact the buffer. */
  if (c->rpos == c->rlen) {
    c->rpos = c->rlen = 0;
    if (c->rcap > RBUF_SIZE) {
      free(c->rbuf);
      c->rbuf = malloc(RBUF_SIZE);
      c->rcap = c->rbuf ? RBUF_SIZE : 0;
    }
  } else if (c->rpos > 0) {
    memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
    c->rlen -= c->rpos;
    c->rpos = 0;
  }
  return true;
}

static void conn_readable(drpc_net *n, nconn *c) {
  if (!c->rbuf) {
    c->rbuf = malloc(RBUF_SIZE);
    if (!c->rbuf) {
      conn_destroy(n, c, DRPC_ENOMEM, "out of memory");
      return;
    }
    c->rcap = RBUF_SIZE;
  }
  for (int rounds = 0; rounds < 64; rounds++) {
    ssize_t r;
    if (c->rstate == 1 && c->rpos == c->rlen &&
        c->frame_len - c->frame_pos >= 4096) {
      /* Large tensor data: read straight into tensor storage. */
      struct iovec iov[16];
      size_t cnt = data_iov(c, n, c->frame_pos, iov, 16);
      r = readv(c->fd, iov, (int)cnt);
      if (r > 0) {
        c->frame_pos += (uint64_t)r;
        if (c->frame_pos == c->frame_len) {
          deliver(n, c, NULL, 0);
          if (!drpc_map_get(&n->conns, c->id))
            return;
        }
        continue;
      }
    } else {
      if (c->rlen == c->rcap) {
        if (!parse_buffer(n, c))
          return;
        if (c->rlen == c->rcap)
          return; /* cannot happen: parse always frees room or grows */
      }
      r = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);
      if (r > 0) {
        c->rlen += (size_t)r;
        if (!parse_buffer(n, c))
          return;
        continue;
      }
    }
    if (r == 0) {
      conn_destroy(n, c, DRPC_ECONN, "connection closed by peer (EOF)");
      return;
    }
    if (errno == EINTR)
      continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      return;
    char why[128];
    snprintf(why, sizeof why, "read failed: %s", strerror(errno));
    conn_destroy(n, c, DRPC_ECONN, why);
    return;
  }
}

static void conn_event(drpc_net *n, nconn *c, uint32_t events) {
  uint64_t id = c->id;
  if (c->connecting) {
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
    if (soerr || (events & (EPOLLERR | EPOLLHUP))) {
      conn_destroy(n, c, DRPC_ECONN, strerror(soerr ? soerr : ECONNREFUSED));
      return;
    }
    if (!(events & EPOLLOUT))
      return;
    c->connecting = false;
    drpc_agent *a = atomic_load(&n->agent);
    if (a)
      drpc_agent_on_conn_open(a, id);
    if (!(c = drpc_map_get(&n->conns, id)))
      return;
    mark_dirty(n, c);
  }
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
    conn_readable(n, c);
    if (!(c = drpc_map_get(&n->conns, id)))
      return;
  }
  if (events & EPOLLOUT)
    conn_flush(n, c);
}

static void accept_all(drpc_net *n) {
  drpc_agent *a = atomic_load(&n->agent);
  for (int i = 0; i < 64; i++) {
    int fd = accept4(n->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
      return;
    set_nodelay(fd);
    nconn *c = conn_new(n, fd, false);
    if (!c) {
      close(fd);
      continue;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.u64 = c->id};
    epoll_ctl(n->epfd, EPOLL_CTL_ADD, fd, &ev);
    drpc_agent_on_conn_accept(a, c->id);
  }
}

/* ---- the loop ---------------------------------------------------------- */

static bool drain_commands(drpc_net *n) {
  pthread_mutex_lock(&n->q_mu);
  drpc_cmd *list = n->q_head;
  n->q_head = n->q_tail = NULL;
  pthread_mutex_unlock(&n->q_mu);
  if (!list)
    return false;
  while (list) {
    drpc_cmd *next = list->next;
    list->apply(list);
    list = next;
  }
  return true;
}

static void *loop_main(void *arg) {
  drpc_net *n = arg;
  struct epoll_event evs[MAX_EVENTS];
  pthread_mutex_lock(&n->core_mu);
  tls_owner = n;
  while (!atomic_load(&n->stop)) {
    drpc_agent *a = atomic_load(&n->agent);
    if (a && !n->listening) {
      struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0};
      epoll_ctl(n->epfd, EPOLL_CTL_ADD, n->listen_fd, &ev);
      n->listening = true;
    }
    for (int i = 0; i < 16 && drain_commands(n); i++)
      ;
    flush_dirty(n);
    int timeout_ms = -1;
    if (n->timer_deadline) {
      uint64_t now = drpc_posix_now_ns();
      timeout_ms = n->timer_deadline <= now
                       ? 0
                       : (int)((n->timer_deadline - now + 999999) / 1000000);
    }
    n->sleep_until = n->timer_deadline;
    pthread_mutex_lock(&n->q_mu);
    if (n->q_head)
      timeout_ms = 0;
    n->sleeping = timeout_ms != 0;
    pthread_mutex_unlock(&n->q_mu);
    tls_owner = NULL;
    pthread_mutex_unlock(&n->core_mu);
    int k = epoll_wait(n->epfd, evs, MAX_EVENTS, timeout_ms);
    pthread_mutex_lock(&n->core_mu);
    tls_owner = n;
    pthread_mutex_lock(&n->q_mu);
    n->sleeping = false;
    pthread_mutex_unlock(&n->q_mu);
    for (int i = 0; i < k; i++) {
      uint64_t id = evs[i].data.u64;
      if (id == 0) {
        accept_all(n);
      } else if (id == UINT64_MAX) {
        uint64_t v;
        ssize_t r = read(n->wake_fd, &v, sizeof v);
        (void)r;
        pthread_mutex_lock(&n->q_mu);
        n->wake_pending = false;
        pthread_mutex_unlock(&n->q_mu);
      } else {
        nconn *c = drpc_map_get(&n->conns, id);
        if (c)
          conn_event(n, c, evs[i].events);
      }
    }
    if (a && n->timer_deadline && drpc_posix_now_ns() >= n->timer_deadline) {
      n->timer_deadline = 0;
      drpc_agent_on_timer(a);
    }
  }
  tls_owner = NULL;
  pthread_mutex_unlock(&n->core_mu);
  return NULL;
}

/* ---- the pool ---------------------------------------------------------- */

static void *worker_main(void *arg) {
  drpc_net *n = arg;
  pthread_mutex_lock(&n->pool_mu);
  for (;;) {
    while (!n->j_head && !n->pool_stop) {
      n->idle++;
      pthread_cond_wait(&n->pool_cv, &n->pool_mu);
      n->idle--;
      if (n->waking > 0)
        n->waking--;
    }
    drpc_job *j = n->j_head;
    if (!j)
      break; /* stopping and the queue is empty */
    n->j_head = j->next;
    if (!n->j_head)
      n->j_tail = NULL;
    else if (n->idle > n->waking && n->waking == 0) {
      n->waking++;
      pthread_cond_signal(&n->pool_cv);
    }
    pthread_mutex_unlock(&n->pool_mu);
    j->run(j);
    pthread_mutex_lock(&n->pool_mu);
  }
  pthread_mutex_unlock(&n->pool_mu);
  return NULL;
}

/* ---- life cycle -------------------------------------------------------- */

void drpc_net_config_default(drpc_net_config *c) {
  memset(c, 0, sizeof *c);
  c->listen_host = "127.0.0.1";
  c->num_worker_threads = DRPC_DEFAULT_NUM_WORKER_THREADS;
  c->log_stderr = true;
  c->log_prefix = "";
}

static int listen_on(drpc_net *n, drpc_error *err) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC,
                           .ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_PASSIVE};
  struct addrinfo *res = NULL;
  char ps[16];
  snprintf(ps, sizeof ps, "%d", n->cfg.listen_port);
  if (getaddrinfo(n->host, ps, &hints, &res) || !res)
    return drpc_error_set(err, DRPC_EINVAL, "cannot resolve listen host %s",
                          n->host);
  int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  if (fd >= 0)
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) ||
      listen(fd, SOMAXCONN)) {
    int e = errno;
    if (fd >= 0)
      close(fd);
    freeaddrinfo(res);
    return drpc_error_set(err, DRPC_EIO, "cannot listen on %s:%d: %s", n->host,
                          n->cfg.listen_port, strerror(e));
  }
  freeaddrinfo(res);
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  getsockname(fd, (struct sockaddr *)&ss, &sl);
  n->port = ss.ss_family == AF_INET6
                ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                : ntohs(((struct sockaddr_in *)&ss)->sin_port);
  set_nonblock(fd);
  n->listen_fd = fd;
  return 0;
}

int drpc_net_new(drpc_net **out, const drpc_net_config *cfg, drpc_error *err) {
  *out = NULL;
  drpc_net_config defaults;
  if (!cfg) {
    drpc_net_config_default(&defaults);
    cfg = &defaults;
  }
  if (cfg->num_worker_threads <= 0)
    return drpc_error_set(err, DRPC_EINVAL,
                          "num_worker_threads must be positive, got %d",
                          cfg->num_worker_threads);
  drpc_net *n = calloc(1, sizeof *n);
  if (!n)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  n->cfg = *cfg;
  snprintf(n->host, sizeof n->host, "%s",
           cfg->listen_host ? cfg->listen_host : "127.0.0.1");
  snprintf(n->prefix, sizeof n->prefix, "%s",
           cfg->log_prefix ? cfg->log_prefix : "");
  n->cfg.listen_host = NULL;
  n->cfg.log_prefix = NULL;
  n->env.ops = n->cfg.record ? &net_ops_recording : &net_ops;
  n->env.ctx = n;
  n->epfd = n->listen_fd = n->wake_fd = -1;
  n->rng = drpc_posix_now_ns() ^ ((uint64_t)getpid() << 32);
  drpc_map_init(&n->conns);
  pthread_mutex_init(&n->q_mu, NULL);
  pthread_mutex_init(&n->core_mu, NULL);
  pthread_mutex_init(&n->pool_mu, NULL);
  pthread_cond_init(&n->pool_cv, NULL);
  n->pad = calloc(1, DRPC_TENSOR_ALIGN);
  n->pad_zero = calloc(1, DRPC_TENSOR_ALIGN);
  int rc;
  if (!n->pad || !n->pad_zero) {
    rc = drpc_error_set(err, DRPC_ENOMEM, "out of memory");
    goto fail;
  }
  if ((rc = listen_on(n, err)))
    goto fail;
  n->epfd = epoll_create1(EPOLL_CLOEXEC);
  n->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (n->epfd < 0 || n->wake_fd < 0) {
    rc = drpc_error_set(err, DRPC_EIO, "epoll/eventfd: %s", strerror(errno));
    goto fail;
  }
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = UINT64_MAX};
  epoll_ctl(n->epfd, EPOLL_CTL_ADD, n->wake_fd, &ev);
  n->workers = calloc((size_t)cfg->num_worker_threads, sizeof *n->workers);
  if (!n->workers) {
    rc = drpc_error_set(err, DRPC_ENOMEM, "out of memory");
    goto fail;
  }
  for (int i = 0; i < cfg->num_worker_threads; i++) {
    if (pthread_create(&n->workers[i], NULL, worker_main, n)) {
      rc = drpc_error_set(err, DRPC_EIO, "cannot start worker thread");
      goto fail;
    }
    n->nworkers++;
  }
  if (pthread_create(&n->loop_thread, NULL, loop_main, n)) {
    rc = drpc_error_set(err, DRPC_EIO, "cannot start the event loop thread");
    goto fail;
  }
  n->loop_started = true;
  *out = n;
  return 0;
fail:
  drpc_net_stop(n);
  drpc_net_free(n);
  return rc;
}

const drpc_env *drpc_net_env(drpc_net *n) {
  return &n->env;
}
int drpc_net_port(drpc_net *n) {
  return n->port;
}

void drpc_net_attach(drpc_net *n, drpc_agent *a) {
  atomic_store(&n->agent, a);
  pthread_mutex_lock(&n->q_mu);
  bool need = !n->wake_pending;
  n->wake_pending = true;
  pthread_mutex_unlock(&n->q_mu);
  if (need)
    wake(n);
}

void drpc_net_stop(drpc_net *n) {
  if (!n)
    return;
  if (n->loop_started) {
    atomic_store(&n->stop, true);
    wake(n);
    pthread_join(n->loop_thread, NULL);
    n->loop_started = false;
  }
  pthread_mutex_lock(&n->pool_mu);
  n->pool_stop = true;
  pthread_cond_broadcast(&n->pool_cv);
  pthread_mutex_unlock(&n->pool_mu);
  for (int i = 0; i < n->nworkers; i++)
    pthread_join(n->workers[i], NULL);
  n->nworkers = 0;
  /* Commands posted by the last jobs: apply them (the agent is stopped, so
   * they only release what they hold). */
  pthread_mutex_lock(&n->core_mu);
  tls_owner = n;
  while (drain_commands(n))
    ;
  tls_owner = NULL;
  pthread_mutex_unlock(&n->core_mu);
  /* Close every socket without telling the agent (it is going away). */
  size_t cnt;
  uint64_t *keys = drpc_map_sorted_keys(&n->conns, &cnt);
  for (size_t i = 0; keys && i < cnt; i++) {
    nconn *c = drpc_map_get(&n->conns, keys[i]);
    c->close_after_flush = true;
    conn_destroy(n, c, 0, "stopped");
  }
  free(keys);
  n->dirty = NULL;
}

void drpc_net_free(drpc_net *n) {
  if (!n)
    return;
  if (n->listen_fd >= 0)
    close(n->listen_fd);
  if (n->epfd >= 0)
    close(n->epfd);
  if (n->wake_fd >= 0)
    close(n->wake_fd);
  drpc_map_free(&n->conns);
  pthread_mutex_destroy(&n->q_mu);
  pthread_mutex_destroy(&n->core_mu);
  pthread_mutex_destroy(&n->pool_mu);
  pthread_cond_destroy(&n->pool_cv);
  free(n->workers);
  free(n->pad);
  free(n->pad_zero);
  free(n);
}
