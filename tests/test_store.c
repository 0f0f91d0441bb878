/* Tests for the stores: the table and wire codec, the memory and prefix
 * stores, the TCP server and client, the file store and init_method. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../core/store_proto.h"
#include "drpc/net.h"
#include "drpc/store.h"
#include "test.h"

/* ---- helpers ----------------------------------------------------------- */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_s(double s) {
  struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
}

static char tmpdir[64];

/* A fresh path inside this run's temporary directory. */
static void tmp_path(char *buf, size_t n, const char *name) {
  snprintf(buf, n, "%s/%s", tmpdir, name);
  unlink(buf);
}

/* A port that was free a moment ago (bound, read, released). */
static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(sa);
  bind(fd, (struct sockaddr *)&sa, sizeof(sa));
  getsockname(fd, (struct sockaddr *)&sa, &len);
  close(fd);
  return ntohs(sa.sin_port);
}

/* Gets key and checks it holds the text want. */
static void check_get(drpc_store *s, const char *key, const char *want) {
  drpc_error err = DRPC_ERROR_INIT;
  void *v = NULL;
  size_t len = 0;
  int rc = drpc_store_get(s, key, 2.0, &v, &len, &err);
  CHECK_EQ_INT(rc, 0);
  if (rc == 0) {
    CHECK_EQ_INT(len, strlen(want));
    CHECK_STR_EQ((const char *)v, want);
  } else {
    fprintf(stderr, "  get %s: %s\n", key, drpc_error_message(&err));
  }
  free(v);
  drpc_error_clear(&err);
}

static void check_cas(drpc_store *s, const char *key, const char *expected,
                      const char *desired, const char *want_actual) {
  drpc_error err = DRPC_ERROR_INIT;
  void *a = NULL;
  size_t alen = 99;
  CHECK_EQ_INT(drpc_store_compare_set(s, key, expected, strlen(expected),
                                      desired, strlen(desired), &a, &alen,
                                      &err),
               0);
  CHECK_EQ_INT(alen, strlen(want_actual));
  CHECK_STR_EQ((const char *)a, want_actual);
  free(a);
  drpc_error_clear(&err);
}

/* Every operation on an empty store, the same for every implementation.
 * shown is what messages put before a key: a prefix view's "prefix/",
 * since messages name the keys as the base store holds them. */
static void check_basic_ops(drpc_store *s, const char *shown) {
  drpc_error err = DRPC_ERROR_INIT;
  char want[256];
  void *v = NULL;
  size_t len = 0;
  int64_t n = -1;
  bool deleted = false;

  CHECK_EQ_INT(drpc_store_num_keys(s, &n, &err), 0);
  CHECK_EQ_INT(n, 0);
  CHECK_EQ_INT(drpc_store_set_str(s, "a", "one", &err), 0);
  check_get(s, "a", "one");
  CHECK_EQ_INT(drpc_store_set_str(s, "a", "uno", &err), 0);
  check_get(s, "a", "uno");

  /* Values are bytes: NULs inside survive, and empty values exist. */
  const char bin[5] = {1, 0, 2, 0, 3};
  CHECK_EQ_INT(drpc_store_set(s, "bin", bin, sizeof(bin), &err), 0);
  CHECK_EQ_INT(drpc_store_get(s, "bin", 1.0, &v, &len, &err), 0);
  CHECK_EQ_INT(len, 5);
  CHECK(v && memcmp(v, bin, 5) == 0 && ((char *)v)[5] == 0);
  free(v);
  CHECK_EQ_INT(drpc_store_set(s, "empty", "", 0, &err), 0);
  CHECK_EQ_INT(drpc_store_get(s, "empty", 1.0, &v, &len, &err), 0);
  CHECK_EQ_INT(len, 0);
  CHECK(v && ((char *)v)[0] == 0);
  free(v);

  /* add keeps decimal text. */
  CHECK_EQ_INT(drpc_store_add(s, "ctr", 5, &n, &err), 0);
  CHECK_EQ_INT(n, 5);
  CHECK_EQ_INT(drpc_store_add(s, "ctr", -7, &n, &err), 0);
  CHECK_EQ_INT(n, -2);
  check_get(s, "ctr", "-2");
  CHECK_EQ_INT(drpc_store_add(s, "a", 1, &n, &err), DRPC_EINVAL);
  snprintf(want, sizeof(want),
           "add: value of key '%sa' is not an integer: 'uno'", shown);
  CHECK_STR_EQ(err.msg, want);
  CHECK_EQ_INT(drpc_store_set_str(s, "big", "9223372036854775807", &err), 0);
  CHECK_EQ_INT(drpc_store_add(s, "big", 1, &n, &err), DRPC_EINVAL);
  CHECK_CONTAINS(err.msg, "overflows int64");
  CHECK_EQ_INT(drpc_store_add(s, "big", -7, NULL, &err), 0);
  check_get(s, "big", "9223372036854775800");

  /* compare_set, PyTorch style. */
  check_cas(s, "cas", "", "first", "first");
  check_cas(s, "cas", "wrong", "second", "first");
  check_cas(s, "cas", "first", "second", "second");
  check_cas(s, "nokey", "x", "y", "");
  CHECK_EQ_INT(drpc_store_get(s, "nokey", 0.05, &v, &len, &err), DRPC_ETIMEOUT);
  CHECK(v == NULL);

  CHECK_EQ_INT(drpc_store_delete(s, "cas", &deleted, &err), 0);
  CHECK(deleted);
  CHECK_EQ_INT(drpc_store_delete(s, "cas", &deleted, &err), 0);
  CHECK(!deleted);

  CHECK_EQ_INT(drpc_store_num_keys(s, &n, &err), 0);
  CHECK_EQ_INT(n, 5); /* a, big, bin, ctr, empty */

  char **keys = NULL;
  size_t nk = 0;
  CHECK_EQ_INT(drpc_store_list(s, "", &keys, &nk, &err), 0);
  CHECK_EQ_INT(nk, 5);
  if (nk == 5) {
    CHECK_STR_EQ(keys[0], "a");
    CHECK_STR_EQ(keys[1], "big");
    CHECK_STR_EQ(keys[2], "bin");
    CHECK_STR_EQ(keys[3], "ctr");
    CHECK_STR_EQ(keys[4], "empty");
  }
  drpc_store_keys_free(keys, nk);
  drpc_store_set_str(s, "p/2", "x", &err);
  drpc_store_set_str(s, "p/1", "x", &err);
  drpc_store_set_str(s, "q/1", "x", &err);
  CHECK_EQ_INT(drpc_store_list(s, "p/", &keys, &nk, &err), 0);
  CHECK_EQ_INT(nk, 2);
  if (nk == 2) {
    CHECK_STR_EQ(keys[0], "p/1");
    CHECK_STR_EQ(keys[1], "p/2");
  }
  drpc_store_keys_free(keys, nk);
  CHECK_EQ_INT(drpc_store_list(s, "zzz", &keys, &nk, &err), 0);
  CHECK_EQ_INT(nk, 0);
  drpc_store_keys_free(keys, nk);

  /* Waits name the keys still missing. */
  const char *present[] = {"a", "ctr"};
  CHECK_EQ_INT(drpc_store_wait(s, present, 2, 1.0, &err), 0);
  const char *some[] = {"a", "names/2", "names/3"};
  double t0 = now_s();
  CHECK_EQ_INT(drpc_store_wait(s, some, 3, 0.2, &err), DRPC_ETIMEOUT);
  CHECK(now_s() - t0 >= 0.19);
  snprintf(want, sizeof(want),
           "timed out after 0.20 s waiting for keys: %snames/2, %snames/3",
           shown, shown);
  CHECK_STR_EQ(err.msg, want);
  CHECK_EQ_INT(drpc_store_get(s, "missing", 0.1, &v, &len, &err),
               DRPC_ETIMEOUT);
  snprintf(want, sizeof(want),
           "timed out after 0.10 s waiting for keys: %smissing", shown);
  CHECK_STR_EQ(err.msg, want);

  /* Argument checks come before the implementation. */
  CHECK_EQ_INT(drpc_store_set_str(s, "", "x", &err), DRPC_EINVAL);
  CHECK_STR_EQ(err.msg, "key is empty");
  CHECK_EQ_INT(drpc_store_get(s, NULL, 1, &v, &len, &err), DRPC_EINVAL);
  CHECK_STR_EQ(err.msg, "key is NULL");
  drpc_error_clear(&err);
}

typedef struct getter {
  drpc_store *s;
  const char *keys[3];
  size_t nkeys; /* 0: get keys[0]; else wait for all */
  double timeout_s;
  int rc;
  char val[64];
  double elapsed_s;
  drpc_error err;
  _Atomic bool done; /* the call returned */
} getter;

static void *getter_main(void *arg) {
  getter *g = arg;
  double t0 = now_s();
  drpc_error_init(&g->err);
  if (g->nkeys == 0) {
    void *v = NULL;
    size_t len;
    g->rc = drpc_store_get(g->s, g->keys[0], g->timeout_s, &v, &len, &g->err);
    if (g->rc == 0)
      snprintf(g->val, sizeof(g->val), "%s", (char *)v);
    free(v);
  } else {
    g->rc = drpc_store_wait(g->s, g->keys, g->nkeys, g->timeout_s, &g->err);
  }
  g->elapsed_s = now_s() - t0;
  atomic_store(&g->done, true);
  return NULL;
}

/* A get in one thread waits until another store handle sets the key; a
 * wait on two keys waits for both. */
static void check_released(drpc_store *waiter, drpc_store *setter) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_store_delete(setter, "rel/k", NULL, &err);
  drpc_store_delete(setter, "rel/w1", NULL, &err);
  drpc_store_delete(setter, "rel/w2", NULL, &err);
  getter g = {.s = waiter, .keys = {"rel/k"}, .timeout_s = 10};
  pthread_t th;
  pthread_create(&th, NULL, getter_main, &g);
  sleep_s(0.1);
  /* Still waiting (no elapsed-time bounds: a loaded machine may start the
   * thread late; a get that returned early would show here). */
  CHECK(!atomic_load(&g.done));
  CHECK_EQ_INT(drpc_store_set_str(setter, "rel/k", "released", &err), 0);
  pthread_join(th, NULL);
  CHECK_EQ_INT(g.rc, 0);
  CHECK_STR_EQ(g.val, "released");
  drpc_error_clear(&g.err);

  getter w = {
      .s = waiter, .keys = {"rel/w1", "rel/w2"}, .nkeys = 2, .timeout_s = 10};
  pthread_create(&th, NULL, getter_main, &w);
  sleep_s(0.05);
  drpc_store_set_str(setter, "rel/w1", "1", &err);
  sleep_s(0.05);
  CHECK(!atomic_load(&w.done)); /* one key is not enough */
  drpc_store_add(setter, "rel/w2", 1, NULL, &err);
  pthread_join(th, NULL);
  CHECK_EQ_INT(w.rc, 0);
  drpc_error_clear(&w.err);
  drpc_error_clear(&err);
}

/* ---- the table ----------------------------------------------------------- */

static void test_table_basics(void) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_store_table *t = drpc_store_table_new();
  const uint8_t *v;
  size_t len;
  CHECK(!drpc_store_table_find(t, "k", 1, &v, &len));
  CHECK_EQ_INT(drpc_store_table_set(t, "k", 1, "v", 1, &err), 0);
  CHECK(drpc_store_table_find(t, "k", 1, &v, &len));
  CHECK_EQ_INT(len, 1);
  /* "k" sorts before "k0" and "k\x7f" before "l": byte order. */
  drpc_store_table_set(t, "l", 1, "", 0, &err);
  drpc_store_table_set(t, "k0", 2, "", 0, &err);
  const char *key;
  size_t klen, vlen;
  drpc_store_table_entry(t, 1, &key, &klen, &v, &vlen);
  CHECK_STR_EQ(key, "k0");
  CHECK(drpc_store_table_delete(t, "k0", 2));
  CHECK_EQ_INT(drpc_store_table_count(t), 2);
  /* Add parses strictly. */
  int64_t out;
  drpc_store_table_set(t, "n", 1, " 5", 2, &err);
  CHECK_EQ_INT(drpc_store_table_add(t, "n", 1, 1, &out, &err), DRPC_EINVAL);
  drpc_store_table_set(t, "n", 1, "-9223372036854775808", 20, &err);
  CHECK_EQ_INT(drpc_store_table_add(t, "n", 1, -1, &out, &err), DRPC_EINVAL);
  CHECK_EQ_INT(drpc_store_table_add(t, "n", 1, 1, &out, &err), 0);
  CHECK_EQ_INT(out, INT64_MIN + 1);
  drpc_store_table_set(t, "n", 1, "+12", 3, &err);
  CHECK_EQ_INT(drpc_store_table_add(t, "n", 1, 1, &out, &err), 0);
  CHECK_EQ_INT(out, 13);
  char binv[100];
  memset(binv, 1, sizeof(binv));
  drpc_store_table_set(t, "n", 1, binv, sizeof(binv), &err);
  CHECK_EQ_INT(drpc_store_table_add(t, "n", 1, 1, &out, &err), DRPC_EINVAL);
  CHECK_CONTAINS(err.msg, "a 100-byte value");
  drpc_store_table_free(t);
  drpc_error_clear(&err);
}

/* The key-count bound is reached and reported, not exceeded. */
static void test_table_key_limit(void) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_store_table *t = drpc_store_table_new();
  char key[16];
  int rc = 0;
  /* Ascending keys append at the end, so filling the table is linear. */
  for (unsigned i = 0; i < DRPC_STORE_MAX_KEYS && rc == 0; i++) {
    snprintf(key, sizeof(key), "%08u", i);
    rc = drpc_store_table_set(t, key, 8, NULL, 0, &err);
  }
  CHECK_EQ_INT(rc, 0);
  CHECK_EQ_INT(drpc_store_table_count(t), DRPC_STORE_MAX_KEYS);
  CHECK_EQ_INT(drpc_store_table_set(t, "zzz", 3, "", 0, &err), DRPC_ETOOBIG);
  CHECK_CONTAINS(err.msg, "its limit");
  /* Replacing an existing key is still allowed when full. */
  CHECK_EQ_INT(drpc_store_table_set(t, "00000001", 8, "x", 1, &err), 0);
  drpc_store_table_free(t);
  drpc_error_clear(&err);
}

/* ---- the codec ----------------------------------------------------------- */

/* Encodes a request whose fields the caller puts between begin and end. */
static void check_decode_fails(const drpc_store_buf *b, int code,
                               const char *needle) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_store_req q;
  CHECK_EQ_INT(drpc_store_proto_decode_req(b->data + 4, b->len - 4, &q, &err),
               code);
  CHECK_CONTAINS(err.msg, needle);
  drpc_error_clear(&err);
}

static void test_proto_requests(void) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_store_buf b;
  drpc_store_req q;
  drpc_store_buf_init(&b);

  drpc_store_proto_begin_req(&b, DRPC_STORE_OP_COMPARE_SET);
  drpc_store_proto_put_bytes(&b, "key", 3);
  drpc_store_proto_put_bytes(&b, "", 0);
  drpc_store_proto_put_bytes(&b, "new", 3);
  CHECK_EQ_INT(drpc_store_proto_end(&b, &err), 0);
  size_t body;
  CHECK_EQ_INT(drpc_store_proto_frame_len(b.data, b.len, &body, &err), 0);
  CHECK_EQ_INT(body, b.len - 4);
  CHECK_EQ_INT(drpc_store_proto_decode_req(b.data + 4, body, &q, &err), 0);
  CHECK_EQ_INT(q.op, DRPC_STORE_OP_COMPARE_SET);
  CHECK(q.key.len == 3 && memcmp(q.key.p, "key", 3) == 0);
  CHECK_EQ_INT(q.val.len, 0);
  CHECK(q.val2.len == 3 && memcmp(q.val2.p, "new", 3) == 0);
  /* Every truncation of a valid request is an error, never a crash. */
  for (size_t cut = 0; cut < body; cut++) {
    CHECK(drpc_store_proto_decode_req(b.data + 4, cut, &q, &err) != 0);
  }

  drpc_store_buf_reset(&b);
  drpc_store_proto_begin_req(&b, DRPC_STORE_OP_WAIT);
  drpc_store_proto_put_i64(&b, 1500);
  drpc_store_proto_put_u32(&b, 2);
  drpc_store_proto_put_bytes(&b, "names/2", 7);
  drpc_store_proto_put_bytes(&b, "names/3", 7);
  drpc_store_proto_end(&b, &err);
  CHECK_EQ_INT(drpc_store_proto_decode_req(b.data + 4, b.len - 4, &q, &err), 0);
  CHECK_EQ_INT(q.num, 1500);
  CHECK_EQ_INT(q.nkeys, 2);
  size_t pos = 0;
  drpc_store_bytes k;
  drpc_store_proto_next_key(&q.keys, &pos, &k);
  drpc_store_proto_next_key(&q.keys, &pos, &k);
  CHECK(k.len == 7 && memcmp(k.p, "names/3", 7) == 0);
  CHECK_EQ_INT(pos, q.keys.len);

  /* Precise errors for malformed requests. */
  drpc_store_buf_reset(&b);
  drpc_store_proto_begin_req(&b, (drpc_store_op)42);
  drpc_store_proto_end(&b, &err);
  check_decode_fails(&b, DRPC_EPROTO, "unknown store request op 42");

  drpc_store_buf_reset(&b);
  drpc_store_proto_begin_req(&b, DRPC_STORE_OP_NUM_KEYS);
  drpc_store_proto_put_u8(&b, 7);
  drpc_store_proto_end(&b, &err);
  check_decode_fails(&b, DRPC_EPROTO,
                     "NUM_KEYS request has 1 trailing bytes at offset 1");

  drpc_store_buf_reset(&b);
  drpc_store_proto_begin_req(&b, DRPC_STORE_OP_GET);
  drpc_store_proto_put_u32(&b, 5000);
  drpc_store_proto_end(&b, &err);
  check_decode_fails(&b, DRPC_ETOOBIG,
                     "GET request key length 5000 at offset 1 exceeds limit "
                     "4096");

  drpc_store_buf_reset(&b);
  drpc_store_proto_begin_req(&b, DRPC_STORE_OP_GET);
  drpc_store_proto_put_u32(&b, 100);
  drpc_store_proto_put_bytes(&b, "abc", 3);
  drpc_store_proto_end(&b, &err);
  check_decode_fails(&b, DRPC_ETRUNC,
                     "GET request truncated in key: need 100 bytes at "
                     "offset 5, have 7");

  drpc_store_buf_reset(&b);
  drpc_store_proto_begin_req(&b, DRPC_STORE_OP_DELETE);
  drpc_store_proto_put_bytes(&b, "", 0);
  drpc_store_proto_end(&b, &err);
  check_decode_fails(&b, DRPC_EINVAL, "key is empty");

  drpc_store_buf_reset(&b);
  drpc_store_proto_begin_req(&b, DRPC_STORE_OP_DELETE);
  drpc_store_proto_put_bytes(&b, "ab\0c", 4);
  drpc_store_proto_end(&b, &err);
  check_decode_fails(&b, DRPC_EINVAL, "key has a NUL byte at index 2");

  drpc_store_buf_reset(&b);
  drpc_store_proto_begin_req(&b, DRPC_STORE_OP_GET);
  drpc_store_proto_put_bytes(&b, "k", 1);
  drpc_store_proto_put_i64(&b, -5);
  drpc_store_proto_end(&b, &err);
  check_decode_fails(&b, DRPC_EPROTO,
                     "GET request timeout_ms -5 at offset 6 is negative");

  drpc_store_buf_reset(&b);
  drpc_store_proto_begin_req(&b, DRPC_STORE_OP_WAIT);
  drpc_store_proto_put_i64(&b, 0);
  drpc_store_proto_put_u32(&b, DRPC_STORE_MAX_WAIT_KEYS + 1);
  drpc_store_proto_end(&b, &err);
  check_decode_fails(&b, DRPC_ETOOBIG, "key count 4097 at offset 9 exceeds");

  /* Frame lengths. */
  const uint8_t zero[4] = {0, 0, 0, 0}, huge[4] = {0xff, 0xff, 0xff, 0xff};
  CHECK_EQ_INT(drpc_store_proto_frame_len(zero, 4, &body, &err), DRPC_EPROTO);
  CHECK_EQ_INT(drpc_store_proto_frame_len(huge, 4, &body, &err), DRPC_ETOOBIG);
  CHECK_CONTAINS(err.msg, "store frame length 4294967295 exceeds limit");
  CHECK_EQ_INT(drpc_store_proto_frame_len(huge, 3, &body, &err), 0);
  CHECK_EQ_INT(body, 0);

  drpc_store_buf_free(&b);
  drpc_error_clear(&err);
}

static void test_proto_responses(void) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_store_buf b;
  drpc_store_resp r;
  drpc_store_buf_init(&b);

  drpc_store_proto_begin_resp(&b, DRPC_STORE_OP_LIST, 0);
  drpc_store_proto_put_u32(&b, 2);
  drpc_store_proto_put_bytes(&b, "a", 1);
  drpc_store_proto_put_bytes(&b, "bb", 2);
  CHECK_EQ_INT(drpc_store_proto_end(&b, &err), 0);
  CHECK_EQ_INT(drpc_store_proto_decode_resp(b.data + 4, b.len - 4,
                                            DRPC_STORE_OP_LIST, &r, &err),
               0);
  CHECK_EQ_INT(r.nkeys, 2);
  CHECK_EQ_INT(drpc_store_proto_decode_resp(b.data + 4, b.len - 4,
                                            DRPC_STORE_OP_GET, &r, &err),
               DRPC_EPROTO);
  CHECK_CONTAINS(err.msg, "GET response carries op 8 (LIST)");

  drpc_store_buf_reset(&b);
  drpc_store_proto_error_resp(&b, DRPC_STORE_OP_GET, DRPC_ETIMEOUT, "late");
  drpc_store_proto_end(&b, &err);
  CHECK_EQ_INT(drpc_store_proto_decode_resp(b.data + 4, b.len - 4,
                                            DRPC_STORE_OP_GET, &r, &err),
               0);
  CHECK_EQ_INT(r.code, DRPC_ETIMEOUT);
  CHECK(r.msg.len == 4 && memcmp(r.msg.p, "late", 4) == 0);

  drpc_store_buf_reset(&b);
  drpc_store_proto_begin_resp(&b, DRPC_STORE_OP_SET, 5);
  drpc_store_proto_end(&b, &err);
  CHECK_EQ_INT(drpc_store_proto_decode_resp(b.data + 4, b.len - 4,
                                            DRPC_STORE_OP_SET, &r, &err),
               DRPC_EPROTO);
  CHECK_CONTAINS(err.msg, "status 5 is not a drpc error code");

  drpc_store_buf_reset(&b);
  drpc_store_proto_begin_resp(&b, DRPC_STORE_OP_DELETE, 0);
  drpc_store_proto_put_u8(&b, 2);
  drpc_store_proto_end(&b, &err);
  CHECK_EQ_INT(drpc_store_proto_decode_resp(b.data + 4, b.len - 4,
                                            DRPC_STORE_OP_DELETE, &r, &err),
               DRPC_EPROTO);

  /* Long messages are cut to the limit rather than refused. */
  size_t big = DRPC_STORE_PROTO_MAX_MESSAGE + 100;
  char *msg = malloc(big + 1);
  memset(msg, 'm', big);
  msg[big] = 0;
  drpc_store_buf_reset(&b);
  drpc_store_proto_error_resp(&b, DRPC_STORE_OP_GET, DRPC_EIO, msg);
  CHECK_EQ_INT(drpc_store_proto_end(&b, &err), 0);
  CHECK_EQ_INT(drpc_store_proto_decode_resp(b.data + 4, b.len - 4,
                                            DRPC_STORE_OP_GET, &r, &err),
               0);
  CHECK_EQ_INT(r.msg.len, DRPC_STORE_PROTO_MAX_MESSAGE);
  free(msg);
  drpc_store_buf_free(&b);
  drpc_error_clear(&err);
}

/* Random bytes and random mutations of valid frames never crash the
 * decoders (run under the sanitizers, this is a small fuzzer). */
static void test_proto_random(void) {
  uint64_t seed = (uint64_t)time(NULL);
  const char *env_seed = getenv("DRPC_TEST_SEED");
  if (env_seed)
    seed = strtoull(env_seed, NULL, 10);
  fprintf(stderr,
          "  test_proto_random seed %llu (DRPC_TEST_SEED=%llu to "
          "repeat)\n",
          (unsigned long long)seed, (unsigned long long)seed);
  uint64_t st = seed;
  drpc_store_buf b;
  drpc_store_buf_init(&b);
  drpc_store_proto_begin_req(&b, DRPC_STORE_OP_WAIT);
  drpc_store_proto_put_i64(&b, 10);
  drpc_store_proto_put_u32(&b, 2);
  drpc_store_proto_put_bytes(&b, "k1", 2);
  drpc_store_proto_put_bytes(&b, "key2", 4);
  drpc_store_proto_end(&b, NULL);
  drpc_store_req q0;
  CHECK_EQ_INT(drpc_store_proto_decode_req(b.data + 4, b.len - 4, &q0, NULL),
               0);
  int bad_keys = 0;
  for (int i = 0; i < 20000; i++) {
    uint8_t buf[64];
    size_t len = b.len - 4;
    memcpy(buf, b.data + 4, len);
    st = st * 6364136223846793005ull + 1442695040888963407ull;
    int flips = 1 + (int)((st >> 33) % 4);
    for (int f = 0; f < flips; f++) {
      st = st * 6364136223846793005ull + 1442695040888963407ull;
      buf[(st >> 33) % len] = (uint8_t)(st >> 20);
    }
    st = st * 6364136223846793005ull + 1442695040888963407ull;
    len -= (st >> 33) % 3;
    drpc_store_req q;
    drpc_store_resp r;
    drpc_error err = DRPC_ERROR_INIT;
    if (drpc_store_proto_decode_req(buf, len, &q, &err) == 0) {
      if (q.op == DRPC_STORE_OP_WAIT) {
        size_t pos = 0;
        for (size_t k = 0; k < q.nkeys; k++) {
          drpc_store_bytes key;
          drpc_store_proto_next_key(&q.keys, &pos, &key);
          bad_keys += key.len == 0 || key.len > DRPC_STORE_MAX_KEY;
        }
      }
    }
    drpc_store_proto_decode_resp(buf, len, (drpc_store_op)(1 + i % 9), &r,
                                 &err);
    drpc_store_table *t = drpc_store_table_new();
    drpc_store_proto_decode_table(buf, len, t, &err);
    drpc_store_table_free(t);
    drpc_error_clear(&err);
  }
  CHECK_EQ_INT(bad_keys, 0);
  drpc_store_buf_free(&b);
}

static void test_proto_table_image(void) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_store_table *t = drpc_store_table_new(), *u = drpc_store_table_new();
  drpc_store_table_set(t, "b", 1, "2", 1, &err);
  drpc_store_table_set(t, "a", 1, "", 0, &err);
  drpc_store_buf b;
  drpc_store_buf_init(&b);
  CHECK_EQ_INT(drpc_store_proto_encode_table(t, &b, &err), 0);
  CHECK_EQ_INT(drpc_store_proto_decode_table(b.data, b.len, u, &err), 0);
  CHECK_EQ_INT(drpc_store_table_count(u), 2);
  const uint8_t *v;
  size_t len;
  CHECK(drpc_store_table_find(u, "b", 1, &v, &len) && len == 1 && v[0] == '2');
  drpc_store_table_free(u);
  u = drpc_store_table_new();
  b.data[0] = 'X';
  CHECK_EQ_INT(drpc_store_proto_decode_table(b.data, b.len, u, &err),
               DRPC_EPROTO);
  CHECK_CONTAINS(err.msg, "magic");
  b.data[0] = 'D';
  CHECK_EQ_INT(drpc_store_proto_decode_table(b.data, b.len - 1, u, &err),
               DRPC_ETRUNC);
  CHECK_CONTAINS(err.msg, "record 1");
  drpc_store_buf_free(&b);
  drpc_store_table_free(t);
  drpc_store_table_free(u);
  drpc_error_clear(&err);
}

/* ---- memory and prefix stores ----------------------------------------------
 */

static void test_memory_ops(void) {
  drpc_store *s = drpc_store_memory_new(drpc_posix_basic_env());
  CHECK(s != NULL);
  CHECK(s->timeout_s == DRPC_STORE_DEFAULT_TIMEOUT_S);
  check_basic_ops(s, "");
  drpc_store_decref(s);
}

static void test_memory_args(void) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_store *s = drpc_store_memory_new(drpc_posix_basic_env());
  char *key = malloc(DRPC_STORE_MAX_KEY + 2);
  memset(key, 'k', DRPC_STORE_MAX_KEY + 1);
  key[DRPC_STORE_MAX_KEY + 1] = 0;
  CHECK_EQ_INT(drpc_store_set_str(s, key, "v", &err), DRPC_ETOOBIG);
  CHECK_STR_EQ(err.msg, "key length 4097 exceeds limit 4096");
  key[DRPC_STORE_MAX_KEY] = 0; /* exactly the limit is fine */
  CHECK_EQ_INT(drpc_store_set_str(s, key, "v", &err), 0);
  free(key);
  /* The length check comes before the bytes are read. */
  CHECK_EQ_INT(
      drpc_store_set(s, "k", "x", (size_t)DRPC_STORE_MAX_VALUE + 1, &err),
      DRPC_ETOOBIG);
  CHECK_STR_EQ(err.msg, "value length 16777217 exceeds limit 16777216");
  CHECK_EQ_INT(drpc_store_set(s, "k", NULL, 3, &err), DRPC_EINVAL);
  const char *many[DRPC_STORE_MAX_WAIT_KEYS + 1];
  for (size_t i = 0; i <= DRPC_STORE_MAX_WAIT_KEYS; i++)
    many[i] = "k";
  CHECK_EQ_INT(drpc_store_wait(s, many, DRPC_STORE_MAX_WAIT_KEYS + 1, 1, &err),
               DRPC_ETOOBIG);
  const char *bad[] = {"ok", ""};
  CHECK_EQ_INT(drpc_store_wait(s, bad, 2, 1, &err), DRPC_EINVAL);
  CHECK_STR_EQ(err.msg, "wait key 1: key is empty");
  CHECK_EQ_INT(drpc_store_wait(s, NULL, 0, 1, &err), 0);
  void *v = (void *)1;
  size_t len = 7;
  CHECK_EQ_INT(drpc_store_get(s, "k", 0.0 / 0.0, &v, &len, &err), DRPC_EINVAL);
  CHECK(v == NULL && len == 0);
  CHECK_EQ_INT(drpc_store_get(NULL, "k", 1, &v, &len, &err), DRPC_EINVAL);
  CHECK_STR_EQ(err.msg, "store is NULL");
  /* err may be NULL. */
  CHECK_EQ_INT(drpc_store_set_str(s, "", "x", NULL), DRPC_EINVAL);
  CHECK(drpc_store_memory_new(NULL) == NULL);
  drpc_store_decref(s);
  drpc_error_clear(&err);
}

static void test_memory_waiters(void) {
  drpc_store *s = drpc_store_memory_new(drpc_posix_basic_env());
  check_released(s, s);
  drpc_store_decref(s);
}

/* Timeouts: < 0 takes the store default, 0 is forever, > 0 seconds. */
static void test_memory_timeouts(void) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_store *s = drpc_store_memory_new(drpc_posix_basic_env());
  void *v;
  size_t len;
  s->timeout_s = 0.1;
  double t0 = now_s();
  CHECK_EQ_INT(drpc_store_get(s, "x", -1, &v, &len, &err), DRPC_ETIMEOUT);
  CHECK(now_s() - t0 < 2);
  CHECK_STR_EQ(err.msg, "timed out after 0.10 s waiting for keys: x");
  CHECK(drpc_store_resolve_timeout(s, -1) == 0.1);
  CHECK(drpc_store_resolve_timeout(s, 0) == 0);
  CHECK(drpc_store_resolve_timeout(s, 2.5) == 2.5);
  s->timeout_s = 0;
  CHECK(drpc_store_resolve_timeout(s, -1) == 0);

  /* timeout 0 waits past any short deadline, until the key appears. */
  getter g = {.s = s, .keys = {"late"}, .timeout_s = 0};
  pthread_t th;
  pthread_create(&th, NULL, getter_main, &g);
  sleep_s(0.3);
  drpc_store_set_str(s, "late", "v", &err);
  pthread_join(th, NULL);
  /* The key appeared only after 0.3 s: a get that found it waited for it
   * (no elapsed-time check: a loaded machine may start the thread late). */
  CHECK_EQ_INT(g.rc, 0);
  drpc_error_clear(&g.err);

  /* More missing keys than a message names are counted. */
  const char *keys[20];
  char names[20][16];
  for (int i = 0; i < 20; i++) {
    snprintf(names[i], sizeof(names[i]), "m%02d", i);
    keys[i] = names[i];
  }
  CHECK_EQ_INT(drpc_store_wait(s, keys, 20, 0.05, &err), DRPC_ETIMEOUT);
  CHECK_CONTAINS(err.msg, "waiting for keys: m00, m01, ");
  CHECK_CONTAINS(err.msg, "m15, and 4 more");
  drpc_store_decref(s);
  drpc_error_clear(&err);
}

static void test_prefix(void) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_store *base = drpc_store_memory_new(drpc_posix_basic_env());
  drpc_store *p = drpc_store_prefix_new(base, "rpc_prefix_0");
  CHECK(p != NULL);
  CHECK(drpc_store_prefix_new(base, "") == NULL);
  CHECK(drpc_store_prefix_new(NULL, "x") == NULL);
  drpc_store_set_str(base, "outside", "1", &err);
  check_basic_ops(p, "rpc_prefix_0/");
  check_get(base, "rpc_prefix_0/a", "uno");
  char **keys;
  size_t n;
  CHECK_EQ_INT(drpc_store_list(base, "rpc_prefix_0/p/", &keys, &n, &err), 0);
  CHECK_EQ_INT(n, 2);
  drpc_store_keys_free(keys, n);
  int64_t count;
  CHECK_EQ_INT(drpc_store_num_keys(p, &count, &err), 0);
  CHECK_EQ_INT(count, 8);
  CHECK_EQ_INT(drpc_store_num_keys(base, &count, &err), 0);
  CHECK_EQ_INT(count, 9); /* 8 under the prefix, 1 outside */

  /* Nested views join with "/"; timeouts name the full key. */
  drpc_store *q = drpc_store_prefix_new(p, "names");
  void *v;
  size_t len;
  CHECK_EQ_INT(drpc_store_get(q, "3", 0.05, &v, &len, &err), DRPC_ETIMEOUT);
  CHECK_STR_EQ(err.msg, "timed out after 0.05 s waiting for keys: "
                        "rpc_prefix_0/names/3");
  drpc_store_set_str(q, "3", "w3", &err);
  check_get(base, "rpc_prefix_0/names/3", "w3");
  drpc_store *q2 = drpc_store_prefix_new(base, "rpc_prefix_0/names");
  check_released(q, q2);
  drpc_store_decref(q2);

  /* Keys too long once prefixed are refused by the base's check. */
  char *key = malloc(DRPC_STORE_MAX_KEY + 1);
  memset(key, 'k', DRPC_STORE_MAX_KEY);
  key[DRPC_STORE_MAX_KEY] = 0;
  CHECK_EQ_INT(drpc_store_set_str(p, key, "v", &err), DRPC_ETOOBIG);
  free(key);

  /* Views keep their base alive. */
  drpc_store_decref(base);
  drpc_store_decref(p);
  check_get(q, "3", "w3");
  drpc_store_decref(q);
  drpc_error_clear(&err);
}

/* The view's default timeout is its own, not the base's. */
static void test_prefix_timeout(void) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_store *base = drpc_store_memory_new(drpc_posix_basic_env());
  drpc_store *p = drpc_store_prefix_new(base, "x");
  base->timeout_s = 100;
  p->timeout_s = 0.05;
  const char *k[] = {"a"};
  double t0 = now_s();
  CHECK_EQ_INT(drpc_store_wait(p, k, 1, -1, &err), DRPC_ETIMEOUT);
  CHECK(now_s() - t0 < 5);
  CHECK_STR_EQ(err.msg, "timed out after 0.05 s waiting for keys: x/a");
  drpc_store_decref(p);
  drpc_store_decref(base);
  drpc_error_clear(&err);
}

/* ---- TCP store ---------------------------------------------------------- */

static drpc_store_server *start_server(void) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_store_server *srv = NULL;
  int rc = drpc_store_server_start(&srv, "127.0.0.1", 0, &err);
  CHECK_EQ_INT(rc, 0);
  if (rc)
    fprintf(stderr, "  server: %s\n", drpc_error_message(&err));
  drpc_error_clear(&err);
  return srv;
}

static drpc_store *connect_client(drpc_store_server *srv) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_store *s = NULL;
  int rc = drpc_store_tcp_new(&s, "127.0.0.1", drpc_store_server_port(srv), 5.0,
                              &err);
  CHECK_EQ_INT(rc, 0);
  if (rc)
    fprintf(stderr, "  client: %s\n", drpc_error_message(&err));
  drpc_error_clear(&err);
  return s;
}

static void test_tcp_ops(void) {
  drpc_store_server *srv = start_server();
  CHECK(drpc_store_server_port(srv) > 0);
  drpc_store *s = connect_client(srv);
  check_basic_ops(s, "");
  /* A prefix view over a TCP store works the same way. */
  drpc_store *p = drpc_store_prefix_new(s, "view");
  check_basic_ops(p, "view/");
  drpc_store_decref(p);
  drpc_store_decref(s);
  drpc_store_server_stop(srv);
}

/* A GET parked on the server neither blocks other clients nor the server,
 * and another client's set releases it. */
static void test_tcp_blocking_get(void) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_store_server *srv = start_server();
  drpc_store *a = connect_client(srv), *b = connect_client(srv);
  drpc_store *c = connect_client(srv);
  getter g = {.s = a, .keys = {"blocked"}, .timeout_s = 10};
  pthread_t th;
  pthread_create(&th, NULL, getter_main, &g);
  sleep_s(0.1);
  double t0 = now_s();
  int64_t n;
  for (int i = 0; i < 50; i++)
    CHECK_EQ_INT(drpc_store_add(c, "busy", 1, &n, &err), 0);
  CHECK(now_s() - t0 < 2);
  CHECK_EQ_INT(n, 50);
  CHECK_EQ_INT(drpc_store_set_str(b, "blocked", "go", &err), 0);
  pthread_join(th, NULL);
  CHECK_EQ_INT(g.rc, 0);
  CHECK_STR_EQ(g.val, "go");
  check_released(a, b);
  drpc_store_decref(a);
  drpc_store_decref(b);
  drpc_store_decref(c);
  drpc_store_server_stop(srv);
  drpc_error_clear(&err);
}

static void test_tcp_wait_timeout(void) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_store_server *srv = start_server();
  drpc_store *s = connect_client(srv);
  drpc_store_set_str(s, "names/1", "w1", &err);
  const char *keys[] = {"names/1", "names/2", "names/3"};
  double t0 = now_s();
  CHECK_EQ_INT(drpc_store_wait(s, keys, 3, 1.5, &err), DRPC_ETIMEOUT);
  double took = now_s() - t0;
  CHECK(took >= 1.45 && took < 4);
  CHECK_STR_EQ(err.msg,
               "timed out after 1.50 s waiting for keys: names/2, names/3");
  /* The connection is still usable after a timeout. */
  check_get(s, "names/1", "w1");
  drpc_store_decref(s);
  drpc_store_server_stop(srv);
  drpc_error_clear(&err);
}

typedef struct adder {
  drpc_store *s;
  int n;
  int64_t *seen; /* each returned value, to check they are all distinct */
  int rc;
} adder;

static void *adder_main(void *arg) {
  adder *a = arg;
  drpc_error err = DRPC_ERROR_INIT;
  for (int i = 0; i < a->n && a->rc == 0; i++)
    a->rc = drpc_store_add(a->s, "sum", 1, &a->seen[i], &err);
  drpc_error_clear(&err);
  return NULL;
}

/* Adds from many threads, some with their own connection and some sharing
 * one, sum exactly, and every intermediate value is seen once. */
static void test_tcp_add_threads(void) {
  enum { THREADS = 8, EACH = 200 };
  drpc_store_server *srv = start_server();
  drpc_store *shared = connect_client(srv);
  drpc_store *own[THREADS];
  adder ad[THREADS];
  pthread_t th[THREADS];
  static int64_t seen[THREADS * EACH];
  for (int i = 0; i < THREADS; i++) {
    own[i] = i % 2 ? connect_client(srv) : NULL;
    ad[i] = (adder){own[i] ? own[i] : shared, EACH, seen + i * EACH, 0};
    pthread_create(&th[i], NULL, adder_main, &ad[i]);
  }
  for (int i = 0; i < THREADS; i++) {
    pthread_join(th[i], NULL);
    CHECK_EQ_INT(ad[i].rc, 0);
    drpc_store_decref(own[i]);
  }
  check_get(shared, "sum", "1600");
  static bool hit[THREADS * EACH + 1];
  int dup = 0;
  for (int i = 0; i < THREADS * EACH; i++) {
    int64_t v = seen[i];
    if (v < 1 || v > THREADS * EACH || hit[v])
      dup++;
    else
      hit[v] = true;
  }
  CHECK_EQ_INT(dup, 0);
  drpc_store_decref(shared);
  drpc_store_server_stop(srv);
}

static int raw_connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* True when the server closes fd within timeout_s (reads skip data). */
static bool closed_by_peer(int fd, double timeout_s) {
  double end = now_s() + timeout_s;
  while (now_s() < end) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 100) > 0) {
      char buf[256];
      ssize_t r = recv(fd, buf, sizeof(buf), 0);
      if (r == 0 || (r < 0 && errno == ECONNRESET))
        return true;
    }
  }
  return false;
}

/* Malformed bytes close only the client that sent them. */
static void test_tcp_malformed(void) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_store_server *srv = start_server();
  int port = drpc_store_server_port(srv);
  drpc_store *good = connect_client(srv);
  CHECK_EQ_INT(drpc_store_set_str(good, "before", "1", &err), 0);

  /* An unknown op in a well-framed request. */
  int fd = raw_connect(port);
  const uint8_t bad_op[] = {1, 0, 0, 0, 42};
  CHECK_EQ_INT(send(fd, bad_op, sizeof(bad_op), 0), (int)sizeof(bad_op));
  CHECK(closed_by_peer(fd, 3));
  close(fd);

  /* A frame length far over the limit is refused from its header. */
  fd = raw_connect(port);
  const uint8_t huge[] = {0xff, 0xff, 0xff, 0x7f, 1};
  send(fd, huge, sizeof(huge), 0);
  CHECK(closed_by_peer(fd, 3));
  close(fd);

  /* A key with a NUL inside. */
  fd = raw_connect(port);
  const uint8_t nul_key[] = {
      10, 0, 0, 0, DRPC_STORE_OP_DELETE, 5, 0, 0, 0, 'a', 0, 'b', 'c', 'd'};
  send(fd, nul_key, sizeof(nul_key), 0);
  CHECK(closed_by_peer(fd, 3));
  close(fd);

  /* A client leaving in the middle of a frame is just dropped. */
  fd = raw_connect(port);
  send(fd, bad_op, 3, 0);
  close(fd);

  /* The earlier client and a new one still work. */
  check_get(good, "before", "1");
  drpc_store *late = connect_client(srv);
  CHECK_EQ_INT(drpc_store_set_str(late, "after", "2", &err), 0);
  check_get(good, "after", "2");
  drpc_store_decref(late);
  drpc_store_decref(good);
  drpc_store_server_stop(srv);
  drpc_error_clear(&err);
}

/* Requests written back to back on one connection are answered in order,
 * including one parked behind a GET that another client releases. */
static void test_tcp_pipelined(void) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_store_server *srv = start_server();
  drpc_store *other = connect_client(srv);
  int fd = raw_connect(drpc_store_server_port(srv));
  drpc_store_buf b;
  drpc_store_buf_init(&b);
  drpc_store_proto_begin_req(&b, DRPC_STORE_OP_GET);
  drpc_store_proto_put_bytes(&b, "gate", 4);
  drpc_store_proto_put_i64(&b, 5000);
  drpc_store_proto_end(&b, &err);
  drpc_store_proto_begin_req(&b, DRPC_STORE_OP_NUM_KEYS);
  drpc_store_proto_end(&b, &err);
  CHECK_EQ_INT(send(fd, b.data, b.len, 0), (int)b.len);
  sleep_s(0.1);
  drpc_store_set_str(other, "gate", "open", &err);
  /* Expect a GET response then a NUM_KEYS response. */
  uint8_t in[256];
  size_t got = 0;
  double end = now_s() + 3;
  while (got < 4 + 13 + 4 + 13 && now_s() < end) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 100) > 0) {
      ssize_t r = recv(fd, in + got, sizeof(in) - got, 0);
      if (r <= 0)
        break;
      got += (size_t)r;
    }
  }
  /* GET: len 4 + op 1 + code 4 + bytes(4 + 4) = 13; NUM_KEYS: 1+4+8 = 13 */
  CHECK_EQ_INT(got, 34);
  drpc_store_resp r;
  if (got == 34) {
    CHECK_EQ_INT(
        drpc_store_proto_decode_resp(in + 4, 13, DRPC_STORE_OP_GET, &r, &err),
        0);
    CHECK(r.val.len == 4 && memcmp(r.val.p, "open", 4) == 0);
    CHECK_EQ_INT(drpc_store_proto_decode_resp(in + 21, 13,
                                              DRPC_STORE_OP_NUM_KEYS, &r, &err),
                 0);
    CHECK_EQ_INT(r.num, 1);
  }
  close(fd);
  drpc_store_buf_free(&b);
  drpc_store_decref(other);
  drpc_store_server_stop(srv);
  drpc_error_clear(&err);
}

typedef struct late_client {
  int port;
  int rc;
  drpc_store *s;
  drpc_error err;
} late_client;

static void *late_client_main(void *arg) {
  late_client *l = arg;
  drpc_error_init(&l->err);
  l->rc = drpc_store_tcp_new(&l->s, "127.0.0.1", l->port, 10.0, &l->err);
  return NULL;
}

/* A client started before its server connects once the server is up. */
static void test_tcp_client_first(void) {
  drpc_error err = DRPC_ERROR_INIT;
  late_client l = {.port = free_port()};
  pthread_t th;
  pthread_create(&th, NULL, late_client_main, &l);
  sleep_s(0.3);
  drpc_store_server *srv = NULL;
  CHECK_EQ_INT(drpc_store_server_start(&srv, "127.0.0.1", l.port, &err), 0);
  pthread_join(th, NULL);
  CHECK_EQ_INT(l.rc, 0);
  if (l.rc == 0) {
    CHECK_EQ_INT(drpc_store_set_str(l.s, "k", "v", &err), 0);
    check_get(l.s, "k", "v");
  } else {
    fprintf(stderr, "  late client: %s\n", drpc_error_message(&l.err));
  }
  drpc_store_decref(l.s);
  drpc_store_server_stop(srv);
  drpc_error_clear(&l.err);
  drpc_error_clear(&err);
}

static void test_tcp_errors(void) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_store *s = NULL;
  int port = free_port();
  double t0 = now_s();
  CHECK_EQ_INT(drpc_store_tcp_new(&s, "127.0.0.1", port, 0.3, &err),
               DRPC_ETIMEOUT);
  double took = now_s() - t0;
  CHECK(took >= 0.25 && took < 3);
  CHECK(s == NULL);
  char want[128];
  snprintf(want, sizeof(want),
           "could not connect to store at 127.0.0.1:%d within 0.30 s", port);
  CHECK_CONTAINS(err.msg, want);
  CHECK_EQ_INT(drpc_store_tcp_new(&s, "127.0.0.1", 0, 1, &err), DRPC_EINVAL);
  CHECK_EQ_INT(drpc_store_tcp_new(&s, "", 1, 1, &err), DRPC_EINVAL);
  CHECK_EQ_INT(drpc_store_tcp_new(&s, "no-such-host.invalid", 1, 1, &err),
               DRPC_EINVAL);
  CHECK_CONTAINS(err.msg, "cannot resolve store host 'no-such-host.invalid'");

  /* A second server on a taken port says so. */
  drpc_store_server *srv = start_server(), *dup = NULL;
  CHECK_EQ_INT(drpc_store_server_start(&dup, "127.0.0.1",
                                       drpc_store_server_port(srv), &err),
               DRPC_EIO);
  CHECK_CONTAINS(err.msg, "address already in use");
  CHECK(dup == NULL);
  CHECK_EQ_INT(drpc_store_server_start(&dup, "127.0.0.1", 70000, &err),
               DRPC_EINVAL);

  /* Stopping the server fails a parked get and later calls promptly. */
  s = connect_client(srv);
  getter g = {.s = s, .keys = {"never"}, .timeout_s = 30};
  pthread_t th;
  pthread_create(&th, NULL, getter_main, &g);
  sleep_s(0.1);
  drpc_store_server_stop(srv);
  pthread_join(th, NULL);
  CHECK_EQ_INT(g.rc, DRPC_ECONN);
  CHECK(g.elapsed_s < 5);
  CHECK_CONTAINS(g.err.msg, "closed the connection during GET");
  drpc_error_clear(&g.err);
  CHECK_EQ_INT(drpc_store_set_str(s, "k", "v", &err), DRPC_ECONN);
  CHECK_CONTAINS(err.msg, "was lost earlier");
  drpc_store_decref(s);
  CHECK(drpc_store_server_port(NULL) == -1);
  drpc_store_server_stop(NULL);
  drpc_error_clear(&err);
}

static void test_tcp_large_values(void) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_store_server *srv = start_server();
  drpc_store *a = connect_client(srv), *b = connect_client(srv);
  size_t n = 4u << 20;
  char *big = malloc(n);
  for (size_t i = 0; i < n; i++)
    big[i] = (char)(i * 7);
  CHECK_EQ_INT(drpc_store_set(a, "big", big, n, &err), 0);
  void *v;
  size_t len;
  CHECK_EQ_INT(drpc_store_get(b, "big", 5, &v, &len, &err), 0);
  CHECK(len == n && memcmp(v, big, n) == 0);
  free(v);
  /* compare_set with two large values. */
  void *a2;
  size_t alen;
  CHECK_EQ_INT(
      drpc_store_compare_set(b, "big", big, n, "small", 5, &a2, &alen, &err),
      0);
  CHECK_EQ_INT(alen, 5);
  free(a2);
  free(big);
  drpc_store_decref(a);
  drpc_store_decref(b);
  drpc_store_server_stop(srv);
  drpc_error_clear(&err);
}

/* ---- file store -----------------------------------------------------------
 */

static void test_file_ops(void) {
  drpc_error err = DRPC_ERROR_INIT;
  char path[128];
  tmp_path(path, sizeof(path), "ops.store");
  drpc_store *s = NULL;
  CHECK_EQ_INT(drpc_store_file_new(&s, path, 5, &err), 0);
  struct stat st;
  CHECK(stat(path, &st) == 0); /* created */
  check_basic_ops(s, "");
  drpc_store_decref(s);
  /* The data outlives the store object. */
  CHECK_EQ_INT(drpc_store_file_new(&s, path, 5, &err), 0);
  check_get(s, "a", "uno");
  drpc_store_decref(s);
  drpc_error_clear(&err);
}

/* Two store objects on one file behave like one store. */
static void test_file_shared(void) {
  drpc_error err = DRPC_ERROR_INIT;
  char path[128];
  tmp_path(path, sizeof(path), "shared.store");
  drpc_store *a = NULL, *b = NULL;
  CHECK_EQ_INT(drpc_store_file_new(&a, path, 5, &err), 0);
  CHECK_EQ_INT(drpc_store_file_new(&b, path, 5, &err), 0);
  drpc_store_set_str(a, "x", "1", &err);
  check_get(b, "x", "1");
  check_released(b, a);
  check_released(a, b);
  adder ad[4];
  pthread_t th[4];
  static int64_t seen[4 * 50];
  for (int i = 0; i < 4; i++) {
    ad[i] = (adder){i % 2 ? a : b, 50, seen + i * 50, 0};
    pthread_create(&th[i], NULL, adder_main, &ad[i]);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    CHECK_EQ_INT(ad[i].rc, 0);
  }
  check_get(a, "sum", "200");
  drpc_store_decref(a);
  drpc_store_decref(b);
  drpc_error_clear(&err);
}

/* Another process adding through its own store object sums with ours:
 * the file lock, not only the in-process mutex, keeps adds whole. */
static void test_file_processes(void) {
  drpc_error err = DRPC_ERROR_INIT;
  char path[128];
  tmp_path(path, sizeof(path), "procs.store");
  drpc_store *s = NULL;
  CHECK_EQ_INT(drpc_store_file_new(&s, path, 5, &err), 0);
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    drpc_store *c = NULL;
    int bad = drpc_store_file_new(&c, path, 5, NULL) != 0;
    for (int i = 0; i < 100 && !bad; i++)
      bad = drpc_store_add(c, "sum", 1, NULL, NULL) != 0;
    drpc_store_decref(c);
    _exit(bad);
  }
  for (int i = 0; i < 100; i++)
    CHECK_EQ_INT(drpc_store_add(s, "sum", 1, NULL, &err), 0);
  int status = -1;
  waitpid(pid, &status, 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  check_get(s, "sum", "200");
  drpc_store_decref(s);
  drpc_error_clear(&err);
}

static void test_file_errors(void) {
  drpc_error err = DRPC_ERROR_INIT;
  char path[128];
  tmp_path(path, sizeof(path), "junk.store");
  FILE *f = fopen(path, "w");
  fputs("this is not a store", f);
  fclose(f);
  drpc_store *s = NULL;
  CHECK_EQ_INT(drpc_store_file_new(&s, path, 5, &err), DRPC_EPROTO);
  CHECK(s == NULL);
  CHECK_CONTAINS(err.msg, "is damaged");
  CHECK_CONTAINS(err.msg, "magic");
  CHECK_EQ_INT(drpc_store_file_new(&s, "", 5, &err), DRPC_EINVAL);
  CHECK_EQ_INT(drpc_store_file_new(&s, "/nonexistent-dir/x/y", 5, &err),
               DRPC_EIO);
  CHECK_CONTAINS(err.msg, "opening failed");
  drpc_error_clear(&err);
}

/* ---- init_method ----------------------------------------------------------
 */

/* Expects init_method to fail before any network or file work. */
static void check_init_error(const char *url, int64_t rank, int64_t ws,
                             int code, const char *msg) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_store *s = (drpc_store *)1;
  drpc_store_server *srv = (drpc_store_server *)1;
  int rc = drpc_store_from_init_method(url, &rank, &ws, 1.0, &s, &srv, &err);
  CHECK_EQ_INT(rc, code);
  CHECK_STR_EQ(err.msg, msg);
  CHECK(s == NULL && srv == NULL);
  drpc_error_clear(&err);
}

static void test_init_method_errors(void) {
  unsetenv("MASTER_ADDR");
  unsetenv("MASTER_PORT");
  unsetenv("RANK");
  unsetenv("WORLD_SIZE");
  check_init_error("tcp://127.0.0.1", 0, 2, DRPC_EINVAL,
                   "port number missing in init_method tcp://127.0.0.1");
  check_init_error("tcp://127.0.0.1:", 0, 2, DRPC_EINVAL,
                   "port number missing in init_method tcp://127.0.0.1:");
  check_init_error("tcp://[::1]", 0, 2, DRPC_EINVAL,
                   "port number missing in init_method tcp://[::1]");
  check_init_error("tcp://127.0.0.1:29500", -1, 2, DRPC_EINVAL,
                   "rank parameter missing in init_method "
                   "tcp://127.0.0.1:29500");
  check_init_error("tcp://127.0.0.1:29500?rank=1", -1, 0, DRPC_EINVAL,
                   "world_size parameter missing in init_method "
                   "tcp://127.0.0.1:29500?rank=1");
  check_init_error("tcp://127.0.0.1:http", 0, 2, DRPC_EINVAL,
                   "invalid port number 'http' in init_method "
                   "tcp://127.0.0.1:http (expected 1..65535)");
  check_init_error("tcp://127.0.0.1:0", 0, 2, DRPC_EINVAL,
                   "invalid port number '0' in init_method "
                   "tcp://127.0.0.1:0 (expected 1..65535)");
  check_init_error("tcp://:29500", 0, 2, DRPC_EINVAL,
                   "host missing in init_method tcp://:29500");
  check_init_error("tcp://h:1?rank=2", 1, 4, DRPC_EINVAL,
                   "rank 1 passed as an argument conflicts with rank 2 in "
                   "init_method tcp://h:1?rank=2");
  check_init_error("tcp://h:1?rank=x", -1, 4, DRPC_EINVAL,
                   "invalid rank 'x' in init_method tcp://h:1?rank=x");
  check_init_error("tcp://h:1?rank=3&world_size=2", -1, 0, DRPC_EINVAL,
                   "rank 3 is out of range for world_size 2");
  check_init_error("tcp://h:1?rank=1&world_size=0", -1, 0, DRPC_EINVAL,
                   "invalid world_size '0' in init_method "
                   "tcp://h:1?rank=1&world_size=0 (expected a positive "
                   "number, or -1 for a dynamic group)");
  check_init_error("file://", 0, 2, DRPC_EINVAL,
                   "path missing in init_method file://");
  check_init_error("file://?rank=0", 0, 2, DRPC_EINVAL,
                   "path missing in init_method file://?rank=0");
  check_init_error("file:///tmp/x", -1, 2, DRPC_EINVAL,
                   "rank parameter missing in init_method file:///tmp/x");
  check_init_error("foo://x", 0, 2, DRPC_EINVAL,
                   "unsupported init_method scheme 'foo://'");
  check_init_error("localhost:29500", 0, 2, DRPC_EINVAL,
                   "init_method 'localhost:29500' has no scheme (expected "
                   "tcp://, file:// or env://)");

  /* env:// reads what the arguments leave open, in PyTorch's order. */
  check_init_error("env://", -1, 2, DRPC_EINVAL,
                   "environment variable RANK expected, but not set");
  check_init_error("env://", 1, 0, DRPC_EINVAL,
                   "environment variable WORLD_SIZE expected, but not set");
  check_init_error("env://", 1, 2, DRPC_EINVAL,
                   "environment variable MASTER_ADDR expected, but not set");
  setenv("MASTER_ADDR", "127.0.0.1", 1);
  check_init_error("env://", 1, -1, DRPC_EINVAL,
                   "environment variable MASTER_PORT expected, but not set");
  setenv("MASTER_PORT", "99999", 1);
  check_init_error("env://", 1, 2, DRPC_EINVAL,
                   "environment variable MASTER_PORT has invalid value "
                   "'99999' (expected 1..65535)");
  setenv("RANK", "-4", 1);
  check_init_error("env://", -1, 2, DRPC_EINVAL,
                   "invalid rank '-4' in environment variable RANK");
  setenv("MASTER_PORT", "29500", 1);
  setenv("RANK", "5", 1);
  setenv("WORLD_SIZE", "3", 1);
  check_init_error("env://", -1, 0, DRPC_EINVAL,
                   "rank 5 is out of range for world_size 3");
  unsetenv("MASTER_ADDR");
  unsetenv("MASTER_PORT");
  unsetenv("RANK");
  unsetenv("WORLD_SIZE");

  /* Rank 0 reports a taken port clearly. */
  drpc_store_server *srv = start_server();
  char url[64];
  snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", drpc_store_server_port(srv));
  drpc_error err = DRPC_ERROR_INIT;
  int64_t rank = 0, ws = 2;
  drpc_store *s = NULL;
  drpc_store_server *mine = NULL;
  CHECK_EQ_INT(drpc_store_from_init_method(url, &rank, &ws, 1, &s, &mine, &err),
               DRPC_EIO);
  CHECK_CONTAINS(err.msg, "rank 0 could not start the store server: cannot "
                          "listen on 127.0.0.1:");
  CHECK_CONTAINS(err.msg, "address already in use");
  CHECK(s == NULL && mine == NULL);
  drpc_store_server_stop(srv);
  drpc_error_clear(&err);
}

typedef struct ranker {
  const char *url;
  int64_t rank, ws;
  int world;
  int rc;
  drpc_store *s;
  drpc_store_server *srv;
  drpc_error err;
} ranker;

/* One rank of a rendezvous: publish a name, wait for everyone's. */
static void *ranker_main(void *arg) {
  ranker *r = arg;
  drpc_error_init(&r->err);
  r->rc = drpc_store_from_init_method(r->url, &r->rank, &r->ws, 10, &r->s,
                                      &r->srv, &r->err);
  if (r->rc)
    return NULL;
  char key[32], val[32];
  snprintf(key, sizeof(key), "names/%lld", (long long)r->rank);
  snprintf(val, sizeof(val), "worker%lld", (long long)r->rank);
  if ((r->rc = drpc_store_set_str(r->s, key, val, &r->err)))
    return NULL;
  char names[8][32];
  const char *keys[8];
  for (int i = 0; i < r->world; i++) {
    snprintf(names[i], sizeof(names[i]), "names/%d", i);
    keys[i] = names[i];
  }
  r->rc = drpc_store_wait(r->s, keys, (size_t)r->world, 10, &r->err);
  if (r->rc == 0)
    r->rc = drpc_store_add(r->s, "done", 1, NULL, &r->err);
  return NULL;
}

/* Runs world ranks in threads; rank order is reversed so the clients start
 * before rank 0's server. */
static void run_rendezvous(ranker *rs, int world) {
  pthread_t th[8];
  for (int i = world - 1; i >= 0; i--) {
    pthread_create(&th[i], NULL, ranker_main, &rs[i]);
    sleep_s(0.05);
  }
  for (int i = 0; i < world; i++) {
    pthread_join(th[i], NULL);
    CHECK_EQ_INT(rs[i].rc, 0);
    if (rs[i].rc)
      fprintf(stderr, "  rank %d: %s\n", i, drpc_error_message(&rs[i].err));
  }
  if (rs[0].rc == 0)
    check_get(rs[0].s, "done", world == 3 ? "3" : "2");
  for (int i = 0; i < world; i++) {
    CHECK(i == 0 || rs[i].srv == NULL);
    drpc_store_decref(rs[i].s);
    drpc_store_server_stop(rs[i].srv);
    drpc_error_clear(&rs[i].err);
  }
}

static void test_init_method_tcp(void) {
  char url[128];
  snprintf(url, sizeof(url), "tcp://127.0.0.1:%d?world_size=3", free_port());
  ranker rs[3];
  for (int i = 0; i < 3; i++)
    rs[i] = (ranker){.url = url, .rank = i, .ws = 0, .world = 3};
  run_rendezvous(rs, 3);
  CHECK(rs[0].ws == 3 && rs[2].ws == 3);
  CHECK(rs[0].srv != NULL);

  /* Dynamic group: no world_size anywhere, -1 comes back. */
  snprintf(url, sizeof(url), "tcp://localhost:%d", free_port());
  for (int i = 0; i < 2; i++)
    rs[i] = (ranker){.url = url, .rank = i, .ws = -1, .world = 2};
  run_rendezvous(rs, 2);
  CHECK(rs[1].ws == -1);
}

static void test_init_method_env(void) {
  char port[16];
  snprintf(port, sizeof(port), "%d", free_port());
  setenv("MASTER_ADDR", "127.0.0.1", 1);
  setenv("MASTER_PORT", port, 1);
  setenv("RANK", "1", 1);
  setenv("WORLD_SIZE", "2", 1);
  /* Rank 1 from RANK; rank 0 from the query string. */
  ranker rs[2] = {{.url = "env://?rank=0", .rank = -1, .ws = 0, .world = 2},
                  {.url = "env://", .rank = -1, .ws = 0, .world = 2}};
  run_rendezvous(rs, 2);
  CHECK(rs[0].rank == 0 && rs[1].rank == 1);
  CHECK(rs[1].ws == 2);
  unsetenv("MASTER_ADDR");
  unsetenv("MASTER_PORT");
  unsetenv("RANK");
  unsetenv("WORLD_SIZE");
}

static void test_init_method_file(void) {
  char path[128], url[160];
  tmp_path(path, sizeof(path), "init.store");
  snprintf(url, sizeof(url), "file://%s?world_size=2", path);
  ranker rs[2] = {{.url = url, .rank = 0, .ws = 0, .world = 2},
                  {.url = url, .rank = 1, .ws = 0, .world = 2}};
  run_rendezvous(rs, 2);
  CHECK(rs[0].srv == NULL);
}

int main(void) {
  snprintf(tmpdir, sizeof(tmpdir), "/tmp/drpc_test_store.XXXXXX");
  if (!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    return 1;
  }
  RUN(test_table_basics);
  RUN(test_table_key_limit);
  RUN(test_proto_requests);
  RUN(test_proto_responses);
  RUN(test_proto_random);
  RUN(test_proto_table_image);
  RUN(test_memory_ops);
  RUN(test_memory_args);
  RUN(test_memory_waiters);
  RUN(test_memory_timeouts);
  RUN(test_prefix);
  RUN(test_prefix_timeout);
  RUN(test_file_processes); /* forks: runs before any thread exists */
  RUN(test_tcp_ops);
  RUN(test_tcp_blocking_get);
  RUN(test_tcp_wait_timeout);
  RUN(test_tcp_add_threads);
  RUN(test_tcp_malformed);
  RUN(test_tcp_pipelined);
  RUN(test_tcp_client_first);
  RUN(test_tcp_errors);
  RUN(test_tcp_large_values);
  RUN(test_file_ops);
  RUN(test_file_shared);
  RUN(test_file_errors);
  RUN(test_init_method_errors);
  RUN(test_init_method_tcp);
  RUN(test_init_method_env);
  RUN(test_init_method_file);
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", tmpdir);
  return test_finish();
}
