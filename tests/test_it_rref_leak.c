/* Integration: the RRef leak check over real TCP (PyTorch's test_rref_leak
 * and test_ignore_rref_leak). The owner w1 shuts down while w0 still holds
 * a user RRef of its value: with ignore_rref_leak off the shutdown returns
 * "Leaking RRef <id> with fork Id <id>"; with it on, it succeeds. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "test.h"

#include "it_util.h"

static char init[128];
static bool ignore_leak;

enum { BAD_INIT = 1, BAD_RREF = 2, BAD_STORE = 4, BAD_LEAK = 8, BAD_END = 16 };

static int worker(void *arg) {
  int rank = (int)(intptr_t)arg;
  char name[8];
  snprintf(name, sizeof name, "w%d", rank);
  it_register_functions();
  drpc_options o;
  drpc_options_default(&o);
  o.init_method = init;
  o.ignore_rref_leak = ignore_leak;
  drpc_error err = DRPC_ERROR_INIT;
  drpc_agent *a = it_init_driver(name, rank, 2, &o, &err);
  if (!a) {
    fprintf(stderr, "%s: %s\n", name, drpc_error_message(&err));
    return BAD_INIT;
  }
  drpc_store *s = drpc_agent_store(a);
  const char *held[1] = {"leak/held"}, *done[1] = {"leak/done"};
  int bad = 0;
  if (rank == 0) {
    /* Hold a confirmed user RRef of a value w1 owns. */
    drpc_rref *r = NULL;
    drpc_value *v = NULL;
    drpc_value *args = drpc_value_list_of(1, drpc_value_int(2));
    if (drpc_remote(a, "w1", DRPC_BUILTIN, "aten::ones", args, NULL, 10, &r,
                    &err) ||
        drpc_rref_to_here(r, 10, &v, &err)) {
      fprintf(stderr, "w0: %s\n", drpc_error_message(&err));
      bad |= BAD_RREF;
    }
    drpc_value_free(v);
    drpc_value_free(args);
    if (drpc_store_set_str(s, "leak/held", "1", &err) ||
        drpc_store_wait(s, done, 1, 20, &err))
      bad |= BAD_STORE;
    /* The owner is gone: stop without the agreement. */
    drpc_error_clear(&err);
    drpc_shutdown(a, false, 0, &err);
    drpc_rref_decref(r);
  } else {
    if (drpc_store_wait(s, held, 1, 20, &err))
      bad |= BAD_STORE;
    drpc_error_clear(&err);
    int rc = drpc_shutdown(a, false, 0, &err);
    if (ignore_leak) {
      if (rc != 0) {
        fprintf(stderr, "w1: %s\n", drpc_error_message(&err));
        bad |= BAD_LEAK;
      }
    } else {
      /* w0's first remote: RRef id local 0, fork id local 1. */
      const char *want = "Leaking RRef GloballyUniqueId(created_on=0, "
                         "local_id=0) with fork Id GloballyUniqueId("
                         "created_on=0, local_id=1)";
      if (rc == 0 || !err.msg || !strstr(err.msg, want)) {
        fprintf(stderr, "w1: expected the leak, got rc %d: %s\n", rc,
                drpc_error_message(&err));
        bad |= BAD_LEAK;
      }
    }
    /* Rank 0 hosts the store: tell it last. Its agent is gone, so reach
     * the store directly. */
    drpc_store *direct = NULL;
    drpc_error serr = DRPC_ERROR_INIT;
    int port = 0;
    sscanf(init, "tcp://127.0.0.1:%d", &port);
    if (drpc_store_tcp_new(&direct, "127.0.0.1", port, 10, &serr) ||
        drpc_store_set_str(direct, "rpc_prefix_0/leak/done", "1", &serr))
      bad |= BAD_END;
    if (direct)
      drpc_store_decref(direct);
    drpc_error_clear(&serr);
  }
  drpc_error_clear(&err);
  return bad;
}

static void run_pair(bool ignore) {
  ignore_leak = ignore;
  snprintf(init, sizeof init, "tcp://127.0.0.1:%d", it_free_port());
  pid_t p0 = it_fork(worker, (void *)(intptr_t)0, 60);
  pid_t p1 = it_fork(worker, (void *)(intptr_t)1, 60);
  int st = 0;
  bool ended = it_wait(p1, 40, &st);
  CHECK(ended);
  CHECK_EQ_INT(ended ? it_exit_code(st) : -1, 0);
  ended = it_wait(p0, 40, &st);
  CHECK(ended);
  CHECK_EQ_INT(ended ? it_exit_code(st) : -1, 0);
}

static void test_rref_leak(void) {
  run_pair(false);
}

static void test_ignore_rref_leak(void) {
  run_pair(true);
}

int main(void) {
  it_setup(120);
  RUN(test_rref_leak);
  RUN(test_ignore_rref_leak);
  return test_finish();
}
