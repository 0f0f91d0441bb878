/* Integration: bad input over a raw TCP socket to a running `drpc worker`
 * (w1), whose listening address the driver reads from the rendezvous
 * store (rpc_prefix_0/addrs/w1). Garbage, truncated frames, lengths above
 * the limits, unknown types, a wrong version, a CALL without HELLO and an
 * impostor's HELLO each close only that connection: after each one the
 * worker still serves calls from the driver and from another worker. A
 * well-formed raw session (HELLO, CALL, RESPONSE) shows the frames the
 * test builds are right where they should be. */
#include <signal.h>
#include <stdbool.h>
#include <unistd.h>

#include "test.h"

#include "it_util.h"

#define WORLD 3
#define TARGET "w1"
#define CLOSE_WITHIN_S 5.0

static char init[128];
static char target_log[200];
static int target_port;
static pid_t target_pid;

/* ---- frames ------------------------------------------------------------ */

/* A whole encoded frame in one malloc'd buffer. */
static uint8_t *frame(uint8_t type, uint64_t id, drpc_value *body,
                      size_t *len) {
  drpc_outframe *f = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  uint8_t *buf = NULL;
  if (drpc_wire_encode(type, 0, id, body, NULL, &f, &err) == 0)
    buf = drpc_outframe_flatten(f, len);
  drpc_outframe_free(f);
  drpc_value_free(body);
  drpc_error_clear(&err);
  CHECK(buf != NULL);
  return buf;
}

static uint8_t *hello(int id, const char *name, size_t *len) {
  return frame(DRPC_MSG_HELLO, 0,
               drpc_value_list_of(3, drpc_value_int(DRPC_WIRE_VERSION),
                                  drpc_value_int(id), drpc_value_str(name)),
               len);
}

static uint8_t *call_frame(uint64_t id, const char *fn, size_t *len) {
  return frame(DRPC_MSG_CALL, id,
               drpc_value_list_of(4, drpc_value_int(DRPC_FUNCTION),
                                  drpc_value_str(fn), drpc_value_list(),
                                  drpc_value_dict()),
               len);
}

static void header(uint8_t *buf, uint32_t magic, uint8_t version, uint8_t type,
                   uint32_t payload_len, uint32_t ntensors, uint64_t data_len) {
  drpc_frame_header h = {.magic = magic,
                         .version = version,
                         .type = type,
                         .id = 1,
                         .payload_len = payload_len,
                         .ntensors = ntensors,
                         .data_len = data_len};
  drpc_wire_header_encode(&h, buf);
}

/* Reads one frame (bounded) and decodes it; false on any failure. */
static bool read_frame(int fd, drpc_msg *m) {
  uint8_t h[DRPC_WIRE_HEADER_SIZE];
  drpc_frame_header fh;
  uint64_t total = 0;
  if (!it_recv_all(fd, h, sizeof h, 5) ||
      drpc_wire_header_decode(h, sizeof h, &fh, NULL, NULL) ||
      drpc_wire_frame_size(&fh, &total) || total > (1u << 20))
    return false;
  uint8_t *buf = malloc((size_t)total);
  if (!buf)
    return false;
  memcpy(buf, h, sizeof h);
  bool ok = it_recv_all(fd, buf + sizeof h, (size_t)total - sizeof h, 5) &&
            drpc_wire_decode(buf, (size_t)total, NULL, m, NULL) == 0;
  free(buf);
  return ok;
}

/* ---- the driver -------------------------------------------------------- */

/* The target survived and serves the driver and another worker (w2, which
 * forwards to it). */
static void check_serving(drpc_agent *a, const char *after) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_value *v = NULL;
  CHECK(kill(target_pid, 0) == 0);
  int rc = drpc_rpc_sync(a, TARGET, DRPC_FUNCTION, "whoami", NULL, NULL, 10, &v,
                         &err);
  CHECK_EQ_INT(rc, 0);
  CHECK(v && v->kind == DRPC_VAL_STR && strcmp(v->u.s.data, TARGET) == 0);
  drpc_value_free(v);
  drpc_value *args =
      drpc_value_list_of(2, drpc_value_str(TARGET), drpc_value_str("whoami"));
  int rc2 = drpc_rpc_sync(a, "w2", DRPC_FUNCTION, "forward", args, NULL, 10, &v,
                          &err);
  CHECK_EQ_INT(rc2, 0);
  CHECK(v && v->kind == DRPC_VAL_STR && strcmp(v->u.s.data, TARGET) == 0);
  drpc_value_free(v);
  drpc_value_free(args);
  if (rc || rc2)
    fprintf(stderr, "  not serving after %s: %s\n", after,
            drpc_error_message(&err));
  drpc_error_clear(&err);
}

/* Sends bytes on a fresh connection and checks the worker closes it. */
static void expect_closed(drpc_agent *a, const char *what, const void *bytes,
                          size_t len) {
  int fd = it_tcp_connect(target_port);
  CHECK(fd >= 0);
  if (fd < 0)
    return;
  CHECK(it_send_all(fd, bytes, len));
  bool closed = it_wait_closed(fd, CLOSE_WITHIN_S);
  CHECK(closed);
  if (!closed)
    fprintf(stderr, "  %s: connection not closed\n", what);
  close(fd);
  check_serving(a, what);
}

/* Sends bytes, then closes from this side before the frame is whole. */
static void send_and_hang_up(drpc_agent *a, const char *what, const void *bytes,
                             size_t len) {
  int fd = it_tcp_connect(target_port);
  CHECK(fd >= 0);
  if (fd < 0)
    return;
  CHECK(it_send_all(fd, bytes, len));
  close(fd);
  check_serving(a, what);
}

static void bad_input(drpc_agent *a) {
  uint8_t buf[256];
  size_t len = 0;

  /* A slow client holding half a frame for the whole test. */
  int slow = it_tcp_connect(target_port);
  uint8_t *h = hello(2, "w2", &len);
  CHECK(slow >= 0 && it_send_all(slow, h, 10));

  /* Positive control: a well-formed session gets its answer. */
  int fd = it_tcp_connect(target_port);
  CHECK(fd >= 0);
  CHECK(it_send_all(fd, h, len));
  size_t clen = 0;
  uint8_t *c = call_frame(7, "whoami", &clen);
  CHECK(it_send_all(fd, c, clen));
  drpc_msg m = {0};
  CHECK(read_frame(fd, &m));
  CHECK_EQ_INT(m.type, DRPC_MSG_RESPONSE);
  CHECK_EQ_INT(m.id, 7);
  CHECK(m.body && m.body->kind == DRPC_VAL_STR &&
        strcmp(m.body->u.s.data, TARGET) == 0);
  drpc_msg_clear(&m);
  /* A known request with a malformed body gets an error, not a close. */
  size_t ulen = 0;
  uint8_t *u = frame(DRPC_MSG_RREF_FETCH, 8, drpc_value_list(), &ulen);
  CHECK(it_send_all(fd, u, ulen));
  CHECK(read_frame(fd, &m));
  CHECK_EQ_INT(m.type, DRPC_MSG_ERROR);
  CHECK_EQ_INT(m.id, 8);
  const drpc_value *etext = drpc_list_at(m.body, 1);
  CHECK(etext && etext->kind == DRPC_VAL_STR &&
        strstr(etext->u.s.data, "Error on Node 1: ") &&
        strstr(etext->u.s.data, "malformed RREF_FETCH"));
  drpc_msg_clear(&m);
  CHECK(it_send_all(fd, c, clen));
  CHECK(read_frame(fd, &m));
  CHECK_EQ_INT(m.type, DRPC_MSG_RESPONSE);
  drpc_msg_clear(&m);
  close(fd);
  free(u);

  /* Garbage. */
  static const char http[] = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
                             "and some more bytes to fill a header";
  expect_closed(a, "garbage", http, sizeof http - 1);
  memset(buf, 0xff, sizeof buf);
  expect_closed(a, "0xff bytes", buf, sizeof buf);

  /* Truncated: part of a header, part of a payload, then hang up. */
  send_and_hang_up(a, "truncated header", h, 12);
  send_and_hang_up(a, "truncated payload", h, len - 3);

  /* Lengths above the limits (nothing may be allocated for them). */
  header(buf, DRPC_WIRE_MAGIC, DRPC_WIRE_VERSION, DRPC_MSG_CALL,
         DRPC_WIRE_DEFAULT_MAX_PAYLOAD + 1, 0, 0);
  expect_closed(a, "payload length above the limit", buf, 32);
  header(buf, DRPC_WIRE_MAGIC, DRPC_WIRE_VERSION, DRPC_MSG_CALL, 0xffffffffu, 0,
         0);
  expect_closed(a, "payload length 2^32-1", buf, 32);
  header(buf, DRPC_WIRE_MAGIC, DRPC_WIRE_VERSION, DRPC_MSG_CALL, 16, 1,
         1ull << 40);
  expect_closed(a, "frame length above the limit", buf, 32);
  header(buf, DRPC_WIRE_MAGIC, DRPC_WIRE_VERSION, DRPC_MSG_CALL, 16, 100000,
         64);
  expect_closed(a, "tensor count above the limit", buf, 32);

  /* Unknown message types, a wrong version. */
  memcpy(buf, h, len);
  buf[5] = 99;
  expect_closed(a, "unknown message type 99", buf, len);
  buf[5] = 0;
  expect_closed(a, "message type 0", buf, len);
  memcpy(buf, h, len);
  buf[4] = DRPC_WIRE_VERSION + 1;
  expect_closed(a, "wrong version", buf, len);

  /* A valid header over a payload that does not decode. */
  memcpy(buf, h, len);
  memset(buf + 32, 0xee, len - 32);
  expect_closed(a, "garbage payload", buf, len);

  /* Protocol order and identity. */
  expect_closed(a, "CALL without HELLO", c, clen);
  size_t ilen = 0;
  uint8_t *imp = hello(2, "mallory", &ilen);
  expect_closed(a, "HELLO from an unknown worker", imp, ilen);
  free(imp);
  imp = hello(9, "w9", &ilen);
  expect_closed(a, "HELLO with an id out of range", imp, ilen);
  free(imp);
  uint8_t two[512];
  memcpy(two, h, len);
  memcpy(two + len, h, len);
  expect_closed(a, "HELLO twice", two, 2 * len);

  /* Many bad connections at once. */
  enum { MANY = 40 };
  int fds[MANY];
  for (int i = 0; i < MANY; i++) {
    fds[i] = it_tcp_connect(target_port);
    if (fds[i] >= 0)
      it_send_all(fds[i], http, sizeof http - 1);
  }
  int closed = 0;
  for (int i = 0; i < MANY; i++) {
    if (fds[i] >= 0) {
      closed += it_wait_closed(fds[i], CLOSE_WITHIN_S);
      close(fds[i]);
    }
  }
  CHECK_EQ_INT(closed, MANY);
  check_serving(a, "many bad connections");

  /* The slow client was left alone all along. */
  CHECK(!it_wait_closed(slow, 0.05));
  close(slow);
  check_serving(a, "the slow client");
  free(h);
  free(c);
}

static void driver(void *arg) {
  (void)arg;
  it_register_functions();
  drpc_options o;
  drpc_options_default(&o);
  o.init_method = init;
  o.num_worker_threads = 4;
  drpc_error err = DRPC_ERROR_INIT;
  drpc_agent *a = it_init_driver("w0", 0, WORLD, &o, &err);
  CHECK(a != NULL);
  if (!a) {
    fprintf(stderr, "  drpc_init: %s\n", drpc_error_message(&err));
    drpc_error_clear(&err);
    return;
  }
  /* Where the target listens, from the rendezvous store (the agent's view
   * is already under rpc_prefix_0/), and cross-checked with a store client
   * of our own on the full key. */
  void *addr = NULL;
  size_t alen = 0;
  CHECK_EQ_INT(drpc_store_get(drpc_agent_store(a), "addrs/" TARGET, 5, &addr,
                              &alen, &err),
               0);
  int port = 0;
  CHECK(addr && sscanf(addr, "tcp://127.0.0.1:%d", &port) == 1);
  drpc_store *s = NULL;
  int store_port = 0;
  sscanf(init, "tcp://127.0.0.1:%d", &store_port);
  CHECK_EQ_INT(drpc_store_tcp_new(&s, "127.0.0.1", store_port, 5, &err), 0);
  void *addr2 = NULL;
  CHECK_EQ_INT(
      drpc_store_get(s, "rpc_prefix_0/addrs/" TARGET, 5, &addr2, &alen, &err),
      0);
  CHECK(addr && addr2 && strcmp(addr, addr2) == 0);
  drpc_store_decref(s);
  free(addr);
  free(addr2);
  drpc_value *v = NULL;
  CHECK_EQ_INT(drpc_rpc_sync(a, TARGET, DRPC_FUNCTION, "t::pid", NULL, NULL, 10,
                             &v, &err),
               0);
  target_pid = v && v->kind == DRPC_VAL_INT ? (pid_t)v->u.i : 0;
  drpc_value_free(v);
  target_port = port;
  CHECK(port > 0 && target_pid > 0);
  if (port > 0 && target_pid > 0)
    bad_input(a);
  CHECK_EQ_INT(drpc_shutdown(a, true, 20, &err), 0);
  if (err.code)
    fprintf(stderr, "  shutdown: %s\n", drpc_error_message(&err));
  drpc_error_clear(&err);
}

static void test_bad_input(void) {
  it_tmp_path(target_log, sizeof target_log, "w1.err");
  for (int attempt = 0; attempt < IT_PORT_ATTEMPTS; attempt++) {
    snprintf(init, sizeof init, "tcp://127.0.0.1:%d", it_free_port());
    it_worker w1, w2;
    it_worker_default(&w1);
    w1.name = TARGET;
    w1.rank = 1;
    w1.world = WORLD;
    w1.init_method = init;
    w1.threads = 4;
    w1.style = IT_EXEC;
    w1.err_path = target_log;
    w2 = w1;
    w2.name = "w2";
    w2.rank = 2;
    w2.style = IT_FORK;
    w2.err_path = NULL;
    pid_t pids[2] = {it_start_worker(&w1), it_start_worker(&w2)};
    it_checked d = it_fork_checked("bad input", driver, NULL, 55);
    int code = it_join_watch(&d, 55, pids, 2);
    if (code == IT_EXIT_RETRY) {
      it_kill(pids[0]);
      it_kill(pids[1]);
      continue;
    }
    for (int i = 0; i < 2; i++) {
      int st = 0;
      bool ended = it_wait(pids[i], 15, &st);
      CHECK(ended && it_exited_ok(st));
      it_kill(pids[i]);
    }
    /* The worker said why it closed each connection. */
    static char log[1 << 16];
    it_read_file(target_log, log, sizeof log);
    unlink(target_log);
    CHECK_CONTAINS(log, "bad magic");
    CHECK_CONTAINS(log, "payload length 67108865 exceeds limit 67108864");
    CHECK_CONTAINS(log, "frame length 4294967360 exceeds limit 1073741824");
    CHECK_CONTAINS(log, "frame length 1099511627840 exceeds limit");
    CHECK_CONTAINS(log, "tensor count 100000 exceeds limit");
    CHECK_CONTAINS(log, "unknown message type 99");
    CHECK_CONTAINS(log, "unknown message type 0");
    CHECK_CONTAINS(log, "unsupported protocol version 2");
    CHECK_CONTAINS(log, "unknown value tag 238");
    CHECK_CONTAINS(log, "first frame on a connection must be HELLO");
    CHECK_CONTAINS(log, "HELLO from unknown worker mallory");
    CHECK_CONTAINS(log, "unexpected HELLO");
    CHECK_CONTAINS(log, "shut down cleanly");
    return;
  }
  CHECK(!"the rendezvous port was taken on every attempt");
}

int main(void) {
  it_setup(110);
  RUN(test_bad_input);
  return test_finish();
}
