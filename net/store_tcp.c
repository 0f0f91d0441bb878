/* The TCP store: a poll-driven server thread that owns the table and parks
 * blocking requests, and a client store that speaks to it over one
 * connection. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../core/store_proto.h"
#include "drpc/net.h"
#include "posix.h"

/* Clients one server serves at once; more are accepted and closed at once
 * with a logged warning, so they fail fast instead of hanging. */
#define SERVER_MAX_CLIENTS 4096
/* Input buffers start (and shrink back to) this size; they grow only to
 * hold one frame, DRPC_STORE_PROTO_MAX_FRAME at most. */
#define CLIENT_BUF_SMALL 4096
/* A buffer above this size is released once it is idle again. */
#define CLIENT_BUF_KEEP (64u << 10)
/* Extra time a client waits beyond a GET or WAIT timeout, for the
 * server's own timeout answer to arrive. */
#define CLIENT_GRACE_S 5.0
/* Connect retry backoff bounds. */
#define CONNECT_BACKOFF_FIRST_MS 10
#define CONNECT_BACKOFF_MAX_MS 500
#define LISTEN_BACKLOG 1024

static void log_line(drpc_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void log_line(drpc_log_level level, const char *fmt, ...) {
  const drpc_env *env = drpc_posix_basic_env();
  if (!env->ops->log)
    return;
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  env->ops->log(env->ctx, level, msg);
}

/* The deadline timeout_s from now on the monotonic clock; 0 means none. */
static uint64_t deadline_after(double timeout_s) {
  if (timeout_s <= 0 || timeout_s >= 1e9)
    return 0;
  return drpc_posix_now_ns() + (uint64_t)(timeout_s * 1e9);
}

/* Milliseconds for poll until deadline_ns (0: -1, forever), capped so a
 * long wait still wakes now and then. */
static int poll_ms(uint64_t deadline_ns, int cap_ms) {
  if (!deadline_ns)
    return cap_ms;
  uint64_t now = drpc_posix_now_ns();
  if (now >= deadline_ns)
    return 0;
  uint64_t ms = (deadline_ns - now + 999999) / 1000000;
  if (cap_ms >= 0 && ms > (uint64_t)cap_ms)
    return cap_ms;
  return ms > 1000000000 ? 1000000000 : (int)ms;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
}

/* ==== server ============================================================= */

typedef struct client {
  int fd;
  char peer[80]; /* for log lines */
  uint8_t *in;   /* received bytes, at most one frame beyond in_len */
  size_t in_len, in_cap;
  drpc_store_buf out; /* the pending response */
  size_t out_off;     /* bytes of out already written */
  bool parked;        /* req is a GET or WAIT waiting for keys */
  drpc_store_req req; /* borrows from in while parked */
  size_t req_frame;   /* bytes of in the parked request spans */
  uint64_t deadline_ns;
  bool dead;
} client;

struct drpc_store_server {
  int listen_fd;
  int wake_rd, wake_wr; /* a byte on wake_wr stops the thread */
  int port;
  pthread_t thread;
  drpc_store_table *t; /* owned by the server thread once it runs */
  client **clients;
  size_t n, cap;
  struct pollfd *pfds;
  size_t pfds_cap;
};

static void client_close(client *c, const char *why) {
  if (why)
    log_line(DRPC_LOG_ERROR, "store server: closing client %s: %s", c->peer,
             why);
  c->dead = true;
}

static void client_free(client *c) {
  if (c->fd >= 0)
    close(c->fd);
  free(c->in);
  drpc_store_buf_free(&c->out);
  free(c);
}

static bool out_pending(const client *c) {
  return c->out_off < c->out.len;
}

/* Writes what the socket takes now; the rest waits for POLLOUT. */
static void client_flush(client *c) {
  while (!c->dead && out_pending(c)) {
    ssize_t w = send(c->fd, c->out.data + c->out_off, c->out.len - c->out_off,
                     MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        client_close(c, strerror(errno));
      return;
    }
    c->out_off += (size_t)w;
  }
  if (!out_pending(c)) {
    c->out_off = 0;
    if (c->out.cap > CLIENT_BUF_KEEP)
      drpc_store_buf_free(&c->out);
    else
      drpc_store_buf_reset(&c->out);
  }
}

/* Ends the response being built in c->out; a response too large for one
 * frame (a huge LIST) becomes an error response instead. */
static void respond_end(client *c, drpc_store_op op) {
  drpc_error err = DRPC_ERROR_INIT;
  if (drpc_store_proto_end(&c->out, &err)) {
    drpc_store_buf_reset(&c->out);
    drpc_store_proto_error_resp(&c->out, op, err.code,
                                drpc_error_message(&err));
    if (drpc_store_proto_end(&c->out, NULL))
      client_close(c, "out of memory for a response");
  }
  drpc_error_clear(&err);
}

static void respond_error(client *c, drpc_store_op op, const drpc_error *err) {
  drpc_store_buf_reset(&c->out);
  drpc_store_proto_error_resp(&c->out, op, err->code, drpc_error_message(err));
  respond_end(c, op);
}

/* Drops the frame just answered from the input buffer. */
static void consume(client *c, size_t n) {
  memmove(c->in, c->in + n, c->in_len - n);
  c->in_len -= n;
  if (c->in_cap > CLIENT_BUF_KEEP && c->in_len < CLIENT_BUF_SMALL) {
    uint8_t *p = realloc(c->in, CLIENT_BUF_SMALL);
    if (p) {
      c->in = p;
      c->in_cap = CLIENT_BUF_SMALL;
    }
  }
}

/* Whether a parked GET or WAIT can be answered; collects the missing keys
 * for a timeout message when named is given. */
static size_t parked_missing(const drpc_store_server *s, const client *c,
                             const char **named, size_t *lens,
                             size_t *named_n) {
  size_t missing = 0;
  if (named_n)
    *named_n = 0;
  drpc_store_bytes k = c->req.key;
  size_t pos = 0, n = c->req.op == DRPC_STORE_OP_GET ? 1 : c->req.nkeys;
  for (size_t i = 0; i < n; i++) {
    if (c->req.op == DRPC_STORE_OP_WAIT)
      drpc_store_proto_next_key(&c->req.keys, &pos, &k);
    if (drpc_store_table_find(s->t, (const char *)k.p, k.len, NULL, NULL))
      continue;
    if (named && missing < DRPC_STORE_TIMEOUT_NAMED_KEYS) {
      named[missing] = (const char *)k.p;
      lens[missing] = k.len;
      *named_n = missing + 1;
    }
    missing++;
  }
  return missing;
}

/* Answers a GET or WAIT whose keys are all there. */
static void answer_ready(drpc_store_server *s, client *c) {
  drpc_store_op op = c->req.op;
  drpc_store_buf_reset(&c->out);
  drpc_store_proto_begin_resp(&c->out, op, 0);
  if (op == DRPC_STORE_OP_GET) {
    const uint8_t *v;
    size_t vlen;
    drpc_store_table_find(s->t, (const char *)c->req.key.p, c->req.key.len, &v,
                          &vlen);
    drpc_store_proto_put_bytes(&c->out, v, vlen);
  }
  respond_end(c, op);
}

/* Ends a parked request once answered. Pipelined input behind it is left
 * for the server loop's drain pass, so answering never recurses. */
static void unpark(client *c) {
  c->parked = false;
  consume(c, c->req_frame);
  client_flush(c);
}

/* After any change, answers the parked requests the change satisfied. */
static void wake_parked(drpc_store_server *s) {
  for (size_t i = 0; i < s->n; i++) {
    client *c = s->clients[i];
    if (c->dead || !c->parked || parked_missing(s, c, NULL, NULL, NULL))
      continue;
    answer_ready(s, c);
    unpark(c);
  }
}

static void expire_parked(drpc_store_server *s) {
  uint64_t now = drpc_posix_now_ns();
  for (size_t i = 0; i < s->n; i++) {
    client *c = s->clients[i];
    if (c->dead || !c->parked || !c->deadline_ns || now < c->deadline_ns)
      continue;
    const char *named[DRPC_STORE_TIMEOUT_NAMED_KEYS];
    size_t lens[DRPC_STORE_TIMEOUT_NAMED_KEYS], named_n;
    size_t missing = parked_missing(s, c, named, lens, &named_n);
    if (missing == 0) {
      answer_ready(s, c);
    } else {
      drpc_error err = DRPC_ERROR_INIT;
      drpc_store_timeout_error(&err, (double)c->req.num / 1000.0, named, lens,
                               named_n, missing);
      respond_error(c, c->req.op, &err);
      drpc_error_clear(&err);
    }
    unpark(c);
  }
}

/* Applies one decoded request; GET and WAIT park when their keys are not
 * all there. Returns true when the table changed. */
static bool handle(drpc_store_server *s, client *c, const drpc_store_req *q) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_store_buf *o = &c->out;
  const char *key = (const char *)q->key.p;
  bool changed = false;
  int rc = 0;
  drpc_store_buf_reset(o);
  switch (q->op) {
  case DRPC_STORE_OP_SET:
    rc =
        drpc_store_table_set(s->t, key, q->key.len, q->val.p, q->val.len, &err);
    if (rc == 0) {
      drpc_store_proto_begin_resp(o, q->op, 0);
      changed = true;
    }
    break;
  case DRPC_STORE_OP_GET:
  case DRPC_STORE_OP_WAIT:
    c->req = *q;
    if (parked_missing(s, c, NULL, NULL, NULL) == 0) {
      answer_ready(s, c);
      return false;
    }
    c->parked = true;
    /* Timeouts beyond a year are as good as forever and would overflow. */
    c->deadline_ns = q->num && q->num < INT64_C(365) * 24 * 3600 * 1000
                         ? drpc_posix_now_ns() + (uint64_t)q->num * 1000000ull
                         : 0;
    return false;
  case DRPC_STORE_OP_ADD: {
    int64_t sum;
    rc = drpc_store_table_add(s->t, key, q->key.len, q->num, &sum, &err);
    if (rc == 0) {
      drpc_store_proto_begin_resp(o, q->op, 0);
      drpc_store_proto_put_i64(o, sum);
      changed = true;
    }
    break;
  }
  case DRPC_STORE_OP_COMPARE_SET: {
    const uint8_t *a;
    size_t alen;
    rc = drpc_store_table_compare_set(s->t, key, q->key.len, q->val.p,
                                      q->val.len, q->val2.p, q->val2.len, &a,
                                      &alen, &changed, &err);
    if (rc == 0) {
      drpc_store_proto_begin_resp(o, q->op, 0);
      drpc_store_proto_put_bytes(o, a, alen);
    }
    break;
  }
  case DRPC_STORE_OP_DELETE: {
    bool existed = drpc_store_table_delete(s->t, key, q->key.len);
    drpc_store_proto_begin_resp(o, q->op, 0);
    drpc_store_proto_put_u8(o, existed);
    break;
  }
  case DRPC_STORE_OP_NUM_KEYS:
    drpc_store_proto_begin_resp(o, q->op, 0);
    drpc_store_proto_put_i64(o, (int64_t)drpc_store_table_count(s->t));
    break;
  case DRPC_STORE_OP_LIST: {
    char **keys;
    size_t n;
    rc = drpc_store_table_list(s->t, key, q->key.len, &keys, &n, &err);
    if (rc == 0) {
      drpc_store_proto_begin_resp(o, q->op, 0);
      drpc_store_proto_put_u32(o, (uint32_t)n);
      for (size_t i = 0; i < n; i++)
        drpc_store_proto_put_bytes(o, keys[i], strlen(keys[i]));
      drpc_store_keys_free(keys, n);
    }
    break;
  }
  case DRPC_STORE_OP_PING:
    if (q->version != DRPC_STORE_PROTO_VERSION) {
      rc = drpc_error_set(&err, DRPC_EVERSION,
                          "store client speaks protocol version %u, this "
                          "server %d",
                          q->version, DRPC_STORE_PROTO_VERSION);
      break;
    }
    drpc_store_proto_begin_resp(o, q->op, 0);
    drpc_store_proto_put_u32(o, DRPC_STORE_PROTO_VERSION);
    break;
  }
  if (rc)
    respond_error(c, q->op, &err);
  else
    respond_end(c, q->op);
  drpc_error_clear(&err);
  return changed;
}

/* Handles every complete frame in the input buffer, one at a time: the
 * next waits until the previous answer is written and nothing is parked,
 * which bounds what one client can make the server hold. Returns how many
 * frames it handled. */
static size_t process_input(drpc_store_server *s, client *c) {
  size_t handled = 0;
  while (!c->dead && !c->parked && !out_pending(c)) {
    drpc_error err = DRPC_ERROR_INIT;
    size_t body;
    if (drpc_store_proto_frame_len(c->in, c->in_len, &body, &err)) {
      client_close(c, drpc_error_message(&err));
      drpc_error_clear(&err);
      break;
    }
    if (body == 0 || c->in_len < 4 + body)
      break;
    drpc_store_req q;
    if (drpc_store_proto_decode_req(c->in + 4, body, &q, &err)) {
      client_close(c, drpc_error_message(&err));
      drpc_error_clear(&err);
      break;
    }
    handled++;
    bool changed = handle(s, c, &q);
    if (c->parked) {
      c->req_frame = 4 + body;
      break;
    }
    consume(c, 4 + body);
    client_flush(c);
    if (changed)
      wake_parked(s);
  }
  return handled;
}

/* Handles input that is already buffered for every client until none is
 * left to handle: answering one client can free another's pipelined
 * request, which no poll event would announce. Each pass consumes frames,
 * so the loop ends. */
static void drain(drpc_store_server *s) {
  size_t handled;
  do {
    handled = 0;
    for (size_t i = 0; i < s->n; i++)
      handled += process_input(s, s->clients[i]);
  } while (handled);
}

/* Reads what is there, growing the buffer only to hold the current frame,
 * then handles complete frames. */
static void client_read(drpc_store_server *s, client *c) {
  for (;;) {
    size_t body = 0;
    drpc_error err = DRPC_ERROR_INIT;
    if (drpc_store_proto_frame_len(c->in, c->in_len, &body, &err)) {
      client_close(c, drpc_error_message(&err));
      drpc_error_clear(&err);
      return;
    }
    if (body && c->in_len >= 4 + body)
      break; /* a whole frame is here: handle it before reading more */
    size_t want = body ? 4 + body : CLIENT_BUF_SMALL;
    if (want > c->in_cap) {
      uint8_t *p = realloc(c->in, want);
      if (!p) {
        client_close(c, "out of memory for a request");
        return;
      }
      c->in = p;
      c->in_cap = want;
    }
    ssize_t r = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
    if (r == 0) {
      /* A peer that closes between requests is a normal goodbye. */
      if (c->in_len)
        client_close(c, "connection closed in the middle of a request");
      else
        client_close(c, NULL);
      return;
    }
    if (r < 0) {
      if (errno == EINTR)
        continue;
      if (errno == ECONNRESET && c->in_len == 0)
        client_close(c, NULL); /* an abrupt goodbye between requests */
      else if (errno != EAGAIN && errno != EWOULDBLOCK)
        client_close(c, strerror(errno));
      break;
    }
    c->in_len += (size_t)r;
  }
  process_input(s, c);
}

static void server_accept(drpc_store_server *s) {
  for (;;) {
    struct sockaddr_storage sa;
    socklen_t salen = sizeof(sa);
    int fd = accept4(s->listen_fd, (struct sockaddr *)&sa, &salen,
                     SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR)
        continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        log_line(DRPC_LOG_WARN, "store server: accept failed: %s",
                 strerror(errno));
      return;
    }
    char host[64] = "?", serv[16] = "?";
    getnameinfo((struct sockaddr *)&sa, salen, host, sizeof(host), serv,
                sizeof(serv), NI_NUMERICHOST | NI_NUMERICSERV);
    if (s->n >= SERVER_MAX_CLIENTS) {
      log_line(DRPC_LOG_WARN,
               "store server: refusing client %s:%s: %d clients already", host,
               serv, SERVER_MAX_CLIENTS);
      close(fd);
      continue;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    client *c = calloc(1, sizeof(*c));
    if (c && s->n == s->cap) {
      size_t cap = s->cap ? s->cap * 2 : 16;
      client **cs = realloc(s->clients, cap * sizeof(*cs));
      if (cs) {
        s->clients = cs;
        s->cap = cap;
      }
    }
    if (!c || s->n == s->cap) {
      log_line(DRPC_LOG_ERROR, "store server: out of memory for client %s:%s",
               host, serv);
      free(c);
      close(fd);
      continue;
    }
    c->fd = fd;
    snprintf(c->peer, sizeof(c->peer), "%s:%s", host, serv);
    drpc_store_buf_init(&c->out);
    s->clients[s->n++] = c;
  }
}

static uint64_t earliest_deadline(const drpc_store_server *s) {
  uint64_t d = 0;
  for (size_t i = 0; i < s->n; i++) {
    const client *c = s->clients[i];
    if (c->parked && c->deadline_ns && (!d || c->deadline_ns < d))
      d = c->deadline_ns;
  }
  return d;
}

static void reap_dead(drpc_store_server *s) {
  size_t j = 0;
  for (size_t i = 0; i < s->n; i++) {
    if (s->clients[i]->dead)
      client_free(s->clients[i]);
    else
      s->clients[j++] = s->clients[i];
  }
  s->n = j;
}

static void *server_main(void *arg) {
  drpc_store_server *s = arg;
  for (;;) {
    size_t need = s->n + 2;
    if (need > s->pfds_cap) {
      struct pollfd *p = realloc(s->pfds, need * sizeof(*p));
      if (!p) {
        /* Keep serving who we can; a later round retries. */
        sleep_ms(10);
        continue;
      }
      s->pfds = p;
      s->pfds_cap = need;
    }
    s->pfds[0] = (struct pollfd){.fd = s->wake_rd, .events = POLLIN};
    s->pfds[1] = (struct pollfd){.fd = s->listen_fd, .events = POLLIN};
    for (size_t i = 0; i < s->n; i++) {
      client *c = s->clients[i];
      /* A busy client is only watched for hang-up and writability, so it
       * cannot push more requests in while one is outstanding. */
      short ev = POLLRDHUP;
      if (out_pending(c))
        ev |= POLLOUT;
      else if (!c->parked)
        ev |= POLLIN;
      s->pfds[i + 2] = (struct pollfd){.fd = c->fd, .events = ev};
    }
    int rc = poll(s->pfds, s->n + 2, poll_ms(earliest_deadline(s), -1));
    if (rc < 0 && errno != EINTR) {
      log_line(DRPC_LOG_ERROR, "store server: poll failed: %s",
               strerror(errno));
      sleep_ms(10);
    }
    if (rc > 0 && (s->pfds[0].revents & POLLIN))
      break;
    size_t polled = s->n;
    for (size_t i = 0; rc > 0 && i < polled; i++) {
      client *c = s->clients[i];
      short re = s->pfds[i + 2].revents;
      if (c->dead || !re)
        continue;
      if (re & POLLIN) {
        client_read(s, c);
      } else if (re & (POLLERR | POLLHUP | POLLNVAL | POLLRDHUP)) {
        /* Only a busy client lands here: it left before its answer. */
        client_close(c, NULL);
        continue;
      }
      if (!c->dead && (re & POLLOUT))
        client_flush(c);
    }
    expire_parked(s);
    drain(s);
    reap_dead(s);
    if (rc > 0 && (s->pfds[1].revents & POLLIN))
      server_accept(s);
  }
  return NULL;
}

/* Opens a listening socket on host:port; host NULL or "" listens on every
 * address. */
static int server_listen(const char *host, int port, int *out_fd,
                         drpc_error *err) {
  struct addrinfo hints = {0}, *res = NULL;
  char portstr[16];
  const char *shown = host && *host ? host : "*";
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  snprintf(portstr, sizeof(portstr), "%d", port);
  int gai = getaddrinfo(host && *host ? host : NULL, portstr, &hints, &res);
  if (gai)
    return drpc_error_set(err, DRPC_EINVAL,
                          "cannot resolve store server host '%s': %s", shown,
                          gai_strerror(gai));
  int last = 0;
  for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
    int fd =
        socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
               ai->ai_protocol);
    if (fd < 0) {
      last = errno;
      continue;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
        listen(fd, LISTEN_BACKLOG) == 0) {
      freeaddrinfo(res);
      *out_fd = fd;
      return 0;
    }
    last = errno;
    close(fd);
  }
  freeaddrinfo(res);
  if (last == EADDRINUSE)
    return drpc_error_set(err, DRPC_EIO,
                          "cannot listen on %s:%d: address already in use "
                          "(another store server or program holds this port)",
                          shown, port);
  return drpc_error_set(err, DRPC_EIO, "cannot listen on %s:%d: %s", shown,
                        port, strerror(last ? last : EADDRNOTAVAIL));
}

static int bound_port(int fd) {
  struct sockaddr_storage sa;
  socklen_t len = sizeof(sa);
  if (getsockname(fd, (struct sockaddr *)&sa, &len) != 0)
    return -1;
  if (sa.ss_family == AF_INET)
    return ntohs(((struct sockaddr_in *)&sa)->sin_port);
  if (sa.ss_family == AF_INET6)
    return ntohs(((struct sockaddr_in6 *)&sa)->sin6_port);
  return -1;
}

int drpc_store_server_start(drpc_store_server **out, const char *host, int port,
                            drpc_error *err) {
  int rc;
  int fds[2];
  *out = NULL;
  if (port < 0 || port > 65535)
    return drpc_error_set(err, DRPC_EINVAL,
                          "store server port %d out of range 0..65535", port);
  drpc_store_server *s = calloc(1, sizeof(*s));
  if (!s)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory for store server");
  s->t = drpc_store_table_new();
  if (!s->t) {
    rc = drpc_error_set(err, DRPC_ENOMEM, "out of memory for store table");
    goto fail_table;
  }
  if ((rc = server_listen(host, port, &s->listen_fd, err)))
    goto fail_listen;
  s->port = bound_port(s->listen_fd);
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
    rc = drpc_error_set(err, DRPC_EIO, "cannot make a wake-up pipe: %s",
                        strerror(errno));
    goto fail_pipe;
  }
  s->wake_rd = fds[0];
  s->wake_wr = fds[1];
  if ((rc = pthread_create(&s->thread, NULL, server_main, s)) != 0) {
    rc = drpc_error_set(err, DRPC_EIO, "cannot start store server thread: %s",
                        strerror(rc));
    goto fail_thread;
  }
  *out = s;
  return 0;

fail_thread:
  close(s->wake_rd);
  close(s->wake_wr);
fail_pipe:
  close(s->listen_fd);
fail_listen:
  drpc_store_table_free(s->t);
fail_table:
  free(s);
  return rc;
}

int drpc_store_server_port(drpc_store_server *s) {
  return s ? s->port : -1;
}

void drpc_store_server_stop(drpc_store_server *s) {
  if (!s)
    return;
  ssize_t w;
  do
    w = write(s->wake_wr, "x", 1);
  while (w < 0 && errno == EINTR);
  pthread_join(s->thread, NULL);
  for (size_t i = 0; i < s->n; i++)
    client_free(s->clients[i]);
  free(s->clients);
  free(s->pfds);
  close(s->wake_rd);
  close(s->wake_wr);
  close(s->listen_fd);
  drpc_store_table_free(s->t);
  free(s);
}

/* ==== client ============================================================= */

typedef struct tcp_store {
  drpc_store base;
  pthread_mutex_t mu; /* one request at a time on the connection */
  int fd;             /* -1 once the connection is lost */
  char *host;
  int port;
  drpc_store_buf req;
  uint8_t *in; /* the last response */
  size_t in_cap;
  char lost[256]; /* why the connection was dropped */
} tcp_store;

/* One connect attempt to every address of host:port, each bounded by
 * deadline_ns. Returns the connected fd or -1 with *last_errno set. */
static int connect_once(const struct addrinfo *res, uint64_t deadline_ns,
                        int *last_errno) {
  for (const struct addrinfo *ai = res; ai; ai = ai->ai_next) {
    int fd =
        socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
               ai->ai_protocol);
    if (fd < 0) {
      *last_errno = errno;
      continue;
    }
    int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      struct pollfd p = {.fd = fd, .events = POLLOUT};
      int pr;
      do
        pr = poll(&p, 1, poll_ms(deadline_ns, 1000));
      while (pr < 0 && errno == EINTR);
      int soerr = ETIMEDOUT;
      socklen_t len = sizeof(soerr);
      if (pr > 0)
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
      rc = soerr ? -1 : 0;
      errno = soerr;
    }
    if (rc == 0)
      return fd;
    *last_errno = errno;
    close(fd);
  }
  return -1;
}

/* Connects with retries and backoff until deadline_ns (0: forever), so a
 * client may start before its server. */
static int connect_retry(const char *host, int port, double timeout_s,
                         int *out_fd, drpc_error *err) {
  uint64_t deadline_ns = deadline_after(timeout_s);
  int backoff_ms = CONNECT_BACKOFF_FIRST_MS;
  int last = 0;
  char portstr[16];
  snprintf(portstr, sizeof(portstr), "%d", port);
  for (;;) {
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    int gai = getaddrinfo(host, portstr, &hints, &res);
    if (gai && gai != EAI_AGAIN)
      return drpc_error_set(err, DRPC_EINVAL,
                            "cannot resolve store host '%s': %s", host,
                            gai_strerror(gai));
    if (gai == 0) {
      int fd = connect_once(res, deadline_ns, &last);
      freeaddrinfo(res);
      if (fd >= 0) {
        *out_fd = fd;
        return 0;
      }
    } else {
      last = EAGAIN;
    }
    int left_ms = poll_ms(deadline_ns, backoff_ms);
    if (deadline_ns && left_ms == 0)
      return drpc_error_set(err, DRPC_ETIMEOUT,
                            "could not connect to store at %s:%d within "
                            "%.2f s: %s",
                            host, port, timeout_s, strerror(last));
    sleep_ms(left_ms);
    backoff_ms = backoff_ms * 2 > CONNECT_BACKOFF_MAX_MS
                     ? CONNECT_BACKOFF_MAX_MS
                     : backoff_ms * 2;
  }
}

static void conn_lost(tcp_store *t, const drpc_error *why) {
  if (t->fd >= 0)
    close(t->fd);
  t->fd = -1;
  snprintf(t->lost, sizeof(t->lost), "%s", drpc_error_message(why));
}

/* Sends all of buf before deadline_ns. */
static int send_all(tcp_store *t, const uint8_t *p, size_t len,
                    uint64_t deadline_ns, drpc_error *err) {
  while (len) {
    ssize_t w = send(t->fd, p, len, MSG_NOSIGNAL);
    if (w > 0) {
      p += w;
      len -= (size_t)w;
      continue;
    }
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
      return drpc_error_set(err, DRPC_ECONN,
                            "sending to store at %s:%d failed: %s", t->host,
                            t->port, strerror(errno));
    struct pollfd pf = {.fd = t->fd, .events = POLLOUT};
    int ms = poll_ms(deadline_ns, -1);
    if (deadline_ns && ms == 0)
      return drpc_error_set(err, DRPC_ETIMEOUT,
                            "store at %s:%d did not take a request in time",
                            t->host, t->port);
    poll(&pf, 1, ms);
  }
  return 0;
}

/* Receives exactly len bytes into t->in at off before deadline_ns. */
static int recv_all(tcp_store *t, size_t off, size_t len, uint64_t deadline_ns,
                    const char *opname, drpc_error *err) {
  while (len) {
    ssize_t r = recv(t->fd, t->in + off, len, 0);
    if (r > 0) {
      off += (size_t)r;
      len -= (size_t)r;
      continue;
    }
    if (r == 0)
      return drpc_error_set(err, DRPC_ECONN,
                            "store at %s:%d closed the connection during %s",
                            t->host, t->port, opname);
    if (errno == EINTR)
      continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      return drpc_error_set(err, DRPC_ECONN,
                            "receiving from store at %s:%d failed: %s", t->host,
                            t->port, strerror(errno));
    struct pollfd pf = {.fd = t->fd, .events = POLLIN};
    int ms = poll_ms(deadline_ns, -1);
    if (deadline_ns && ms == 0)
      return drpc_error_set(err, DRPC_ETIMEOUT,
                            "store at %s:%d did not answer %s in time", t->host,
                            t->port, opname);
    poll(&pf, 1, ms);
  }
  return 0;
}

static int grow_in(tcp_store *t, size_t n, drpc_error *err) {
  if (n <= t->in_cap)
    return 0;
  uint8_t *p = realloc(t->in, n);
  if (!p)
    return drpc_error_set(err, DRPC_ENOMEM,
                          "out of memory for a %zu-byte store response", n);
  t->in = p;
  t->in_cap = n;
  return 0;
}

/* Sends the request built in t->req and decodes the answer into *r (which
 * borrows t->in). wait_s bounds the whole exchange (0: forever). A remote
 * error becomes the return code and message; a transport or protocol
 * failure also drops the connection, since its framing is then unknown.
 * Called with t->mu held. */
static int roundtrip(tcp_store *t, drpc_store_op op, double wait_s,
                     drpc_store_resp *r, drpc_error *err) {
  const char *opname = drpc_store_proto_op_name(op);
  int rc = drpc_store_proto_end(&t->req, err);
  if (rc)
    return rc;
  if (t->fd < 0)
    return drpc_error_set(err, DRPC_ECONN,
                          "connection to store at %s:%d was lost earlier: %s",
                          t->host, t->port, t->lost);
  uint64_t deadline_ns = deadline_after(wait_s);
  size_t body;
  if ((rc = send_all(t, t->req.data, t->req.len, deadline_ns, err)) ||
      (rc = grow_in(t, CLIENT_BUF_SMALL, err)) ||
      (rc = recv_all(t, 0, 4, deadline_ns, opname, err)) ||
      (rc = drpc_store_proto_frame_len(t->in, 4, &body, err)) ||
      (rc = grow_in(t, 4 + body, err)) ||
      (rc = recv_all(t, 4, body, deadline_ns, opname, err)) ||
      (rc = drpc_store_proto_decode_resp(t->in + 4, body, op, r, err))) {
    /* Whatever failed, the stream position is unknown now. */
    conn_lost(t, err);
    return rc;
  }
  if (r->code)
    return drpc_error_set(err, r->code, "%.*s", (int)r->msg.len,
                          (const char *)r->msg.p);
  return 0;
}

/* How long a request may take: the server answers non-blocking requests at
 * once, so the store's default bounds them; GET and WAIT add a grace
 * period to their own timeout for the server's answer to arrive. */
static double request_wait_s(const tcp_store *t, drpc_store_op op,
                             double timeout_s) {
  if (op == DRPC_STORE_OP_GET || op == DRPC_STORE_OP_WAIT)
    return timeout_s > 0 ? timeout_s + CLIENT_GRACE_S : 0;
  return t->base.timeout_s > 0 ? t->base.timeout_s + CLIENT_GRACE_S : 0;
}

static int64_t timeout_ms(double timeout_s) {
  if (timeout_s <= 0)
    return 0;
  if (timeout_s >= 1e12)
    return INT64_C(1) << 50;
  int64_t ms = (int64_t)(timeout_s * 1000.0);
  if ((double)ms < timeout_s * 1000.0)
    ms++;
  return ms > 0 ? ms : 1;
}

static void begin(tcp_store *t, drpc_store_op op) {
  pthread_mutex_lock(&t->mu);
  drpc_store_buf_reset(&t->req);
  drpc_store_proto_begin_req(&t->req, op);
}

static void end(tcp_store *t) {
  /* Large buffers are released so an idle client holds little memory. */
  if (t->req.cap > CLIENT_BUF_KEEP)
    drpc_store_buf_free(&t->req);
  if (t->in_cap > CLIENT_BUF_KEEP) {
    free(t->in);
    t->in = NULL;
    t->in_cap = 0;
  }
  pthread_mutex_unlock(&t->mu);
}

static int copy_out(const drpc_store_bytes *b, void **val, size_t *len,
                    drpc_error *err) {
  *val = malloc(b->len + 1);
  if (!*val)
    return drpc_error_set(err, DRPC_ENOMEM,
                          "out of memory copying a %zu-byte value", b->len);
  if (b->len)
    memcpy(*val, b->p, b->len);
  ((char *)*val)[b->len] = 0;
  *len = b->len;
  return 0;
}

static int tcp_set(drpc_store *s, const char *key, const void *val, size_t len,
                   drpc_error *err) {
  tcp_store *t = (tcp_store *)s;
  drpc_store_resp r;
  begin(t, DRPC_STORE_OP_SET);
  drpc_store_proto_put_bytes(&t->req, key, strlen(key));
  drpc_store_proto_put_bytes(&t->req, val, len);
  int rc = roundtrip(t, DRPC_STORE_OP_SET,
                     request_wait_s(t, DRPC_STORE_OP_SET, 0), &r, err);
  end(t);
  return rc;
}

static int tcp_get(drpc_store *s, const char *key, double timeout_s, void **val,
                   size_t *len, drpc_error *err) {
  tcp_store *t = (tcp_store *)s;
  drpc_store_resp r;
  timeout_s = drpc_store_resolve_timeout(s, timeout_s);
  begin(t, DRPC_STORE_OP_GET);
  drpc_store_proto_put_bytes(&t->req, key, strlen(key));
  drpc_store_proto_put_i64(&t->req, timeout_ms(timeout_s));
  int rc = roundtrip(t, DRPC_STORE_OP_GET,
                     request_wait_s(t, DRPC_STORE_OP_GET, timeout_s), &r, err);
  if (rc == 0)
    rc = copy_out(&r.val, val, len, err);
  end(t);
  return rc;
}

static int tcp_add(drpc_store *s, const char *key, int64_t delta, int64_t *out,
                   drpc_error *err) {
  tcp_store *t = (tcp_store *)s;
  drpc_store_resp r;
  begin(t, DRPC_STORE_OP_ADD);
  drpc_store_proto_put_bytes(&t->req, key, strlen(key));
  drpc_store_proto_put_i64(&t->req, delta);
  int rc = roundtrip(t, DRPC_STORE_OP_ADD,
                     request_wait_s(t, DRPC_STORE_OP_ADD, 0), &r, err);
  if (rc == 0)
    *out = r.num;
  end(t);
  return rc;
}

static int tcp_wait(drpc_store *s, const char *const *keys, size_t n,
                    double timeout_s, drpc_error *err) {
  tcp_store *t = (tcp_store *)s;
  drpc_store_resp r;
  timeout_s = drpc_store_resolve_timeout(s, timeout_s);
  begin(t, DRPC_STORE_OP_WAIT);
  drpc_store_proto_put_i64(&t->req, timeout_ms(timeout_s));
  drpc_store_proto_put_u32(&t->req, (uint32_t)n);
  for (size_t i = 0; i < n; i++)
    drpc_store_proto_put_bytes(&t->req, keys[i], strlen(keys[i]));
  int rc = roundtrip(t, DRPC_STORE_OP_WAIT,
                     request_wait_s(t, DRPC_STORE_OP_WAIT, timeout_s), &r, err);
  end(t);
  return rc;
}

static int tcp_compare_set(drpc_store *s, const char *key, const void *expected,
                           size_t elen, const void *desired, size_t dlen,
                           void **actual, size_t *alen, drpc_error *err) {
  tcp_store *t = (tcp_store *)s;
  drpc_store_resp r;
  begin(t, DRPC_STORE_OP_COMPARE_SET);
  drpc_store_proto_put_bytes(&t->req, key, strlen(key));
  drpc_store_proto_put_bytes(&t->req, expected, elen);
  drpc_store_proto_put_bytes(&t->req, desired, dlen);
  int rc = roundtrip(t, DRPC_STORE_OP_COMPARE_SET,
                     request_wait_s(t, DRPC_STORE_OP_COMPARE_SET, 0), &r, err);
  if (rc == 0)
    rc = copy_out(&r.val, actual, alen, err);
  end(t);
  return rc;
}

static int tcp_del(drpc_store *s, const char *key, bool *deleted,
                   drpc_error *err) {
  tcp_store *t = (tcp_store *)s;
  drpc_store_resp r;
  begin(t, DRPC_STORE_OP_DELETE);
  drpc_store_proto_put_bytes(&t->req, key, strlen(key));
  int rc = roundtrip(t, DRPC_STORE_OP_DELETE,
                     request_wait_s(t, DRPC_STORE_OP_DELETE, 0), &r, err);
  if (rc == 0)
    *deleted = r.flag;
  end(t);
  return rc;
}

static int tcp_num_keys(drpc_store *s, int64_t *out, drpc_error *err) {
  tcp_store *t = (tcp_store *)s;
  drpc_store_resp r;
  begin(t, DRPC_STORE_OP_NUM_KEYS);
  int rc = roundtrip(t, DRPC_STORE_OP_NUM_KEYS,
                     request_wait_s(t, DRPC_STORE_OP_NUM_KEYS, 0), &r, err);
  if (rc == 0)
    *out = r.num;
  end(t);
  return rc;
}

static int tcp_list(drpc_store *s, const char *prefix, char ***keys, size_t *n,
                    drpc_error *err) {
  tcp_store *t = (tcp_store *)s;
  drpc_store_resp r;
  begin(t, DRPC_STORE_OP_LIST);
  drpc_store_proto_put_bytes(&t->req, prefix, strlen(prefix));
  int rc = roundtrip(t, DRPC_STORE_OP_LIST,
                     request_wait_s(t, DRPC_STORE_OP_LIST, 0), &r, err);
  if (rc == 0) {
    char **out = calloc(r.nkeys + 1, sizeof(*out));
    size_t pos = 0, i = 0;
    for (; out && i < r.nkeys; i++) {
      drpc_store_bytes k;
      drpc_store_proto_next_key(&r.keys, &pos, &k);
      if (!(out[i] = malloc(k.len + 1)))
        break;
      memcpy(out[i], k.p, k.len);
      out[i][k.len] = 0;
    }
    if (!out || i < r.nkeys) {
      drpc_store_keys_free(out, i);
      rc = drpc_error_set(err, DRPC_ENOMEM, "out of memory listing keys");
    } else {
      *keys = out;
      *n = r.nkeys;
    }
  }
  end(t);
  return rc;
}

static void tcp_free(drpc_store *s) {
  tcp_store *t = (tcp_store *)s;
  if (t->fd >= 0)
    close(t->fd);
  pthread_mutex_destroy(&t->mu);
  drpc_store_buf_free(&t->req);
  free(t->in);
  free(t->host);
  free(t);
}

static const drpc_store_ops tcp_ops = {
    .set = tcp_set,
    .get = tcp_get,
    .add = tcp_add,
    .wait = tcp_wait,
    .compare_set = tcp_compare_set,
    .del = tcp_del,
    .num_keys = tcp_num_keys,
    .list = tcp_list,
    .free = tcp_free,
};

/* Checks that the peer is a store server speaking our protocol. */
static int ping(tcp_store *t, double wait_s, drpc_error *err) {
  drpc_store_resp r;
  begin(t, DRPC_STORE_OP_PING);
  drpc_store_proto_put_u32(&t->req, DRPC_STORE_PROTO_VERSION);
  int rc = roundtrip(t, DRPC_STORE_OP_PING, wait_s, &r, err);
  end(t);
  /* Not `return drpc_error_prefix(...)`: with a NULL err that is 0. */
  if (rc)
    drpc_error_prefix(err, "store at %s:%d did not answer PING", t->host,
                      t->port);
  return rc;
}

int drpc_store_tcp_new(drpc_store **out, const char *host, int port,
                       double timeout_s, drpc_error *err) {
  int rc;
  *out = NULL;
  if (!host || !*host)
    return drpc_error_set(err, DRPC_EINVAL, "store host is empty");
  if (port <= 0 || port > 65535)
    return drpc_error_set(err, DRPC_EINVAL,
                          "store port %d out of range 1..65535", port);
  if (timeout_s != timeout_s || timeout_s < 0)
    return drpc_error_set(err, DRPC_EINVAL,
                          "store timeout_s must be >= 0 (0: forever)");
  tcp_store *t = calloc(1, sizeof(*t));
  if (!t)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory for TCP store");
  t->host = strdup(host);
  if (!t->host) {
    rc = drpc_error_set(err, DRPC_ENOMEM, "out of memory for TCP store");
    goto fail_host;
  }
  t->port = port;
  t->fd = -1;
  drpc_store_buf_init(&t->req);
  pthread_mutex_init(&t->mu, NULL);
  t->base.ops = &tcp_ops;
  t->base.timeout_s = timeout_s;
  t->base.refcount = 1;
  uint64_t start_ns = drpc_posix_now_ns();
  if ((rc = connect_retry(host, port, timeout_s, &t->fd, err)))
    goto fail_connect;
  int one = 1;
  setsockopt(t->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  /* The PING shares the connect budget, but gets at least a second so a
   * connect late in the window can still be confirmed. */
  double left_s = 0;
  if (timeout_s > 0) {
    left_s = timeout_s - (double)(drpc_posix_now_ns() - start_ns) / 1e9;
    if (left_s < 1)
      left_s = 1;
  }
  if ((rc = ping(t, left_s, err)))
    goto fail_connect;
  *out = &t->base;
  return 0;

fail_connect:
  tcp_free(&t->base);
  return rc;
fail_host:
  free(t);
  return rc;
}
