/* Integration: drpc_init's validation errors with the reference's texts
 * (bad names, ranks out of range, bad init methods, duplicate names across
 * processes), "RPC is already initialized", "RPC has not been initialized"
 * before init and after shutdown, and re-initialising in one process. A
 * failed drpc_init returns promptly and leaves nothing running: no
 * current agent and no extra threads. */
#include <dirent.h>
#include <stdbool.h>
#include <unistd.h>

#include "test.h"

#include "it_util.h"

/* Every failure here is local or rendezvous-free: it must be quick. */
#define FAIL_FAST_S 3.0

static char store_file[200];

static int thread_count(void) {
  DIR *d = opendir("/proc/self/task");
  int n = 0;
  if (!d)
    return -1;
  for (struct dirent *e; (e = readdir(d));)
    n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

/* The thread count once it is back to want: a joined thread can stay
 * listed in /proc for a moment after pthread_join returned. */
static int threads_settle(int want) {
  int n = thread_count();
  for (int i = 0; i < 200 && n != want; i++) {
    it_sleep(0.005);
    n = thread_count();
  }
  return n;
}

static void file_init(char *buf, size_t n) {
  it_tmp_path(store_file, sizeof store_file, "store");
  snprintf(buf, n, "file://%s", store_file);
}

/* drpc_init must fail with code and a message containing want, quickly
 * and without leaving threads or a current agent behind. */
static void expect_init_error(const char *name, int64_t rank, int64_t world,
                              const drpc_options *o, int code,
                              const char *want) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_agent *a = (drpc_agent *)1;
  int threads = thread_count();
  double t0 = it_now();
  int rc = drpc_init(&a, name, rank, world, o, &err);
  double took = it_now() - t0;
  CHECK_EQ_INT(rc, code);
  CHECK(a == NULL);
  CHECK_CONTAINS(err.msg, want);
  CHECK(took < FAIL_FAST_S);
  CHECK(drpc_current_agent() == NULL);
  CHECK_EQ_INT(threads_settle(threads), threads);
  if (rc != code || took >= FAIL_FAST_S)
    fprintf(stderr, "  drpc_init(%s): %d after %.2f s: %s\n", name, rc, took,
            drpc_error_message(&err));
  drpc_error_clear(&err);
}

static void not_initialized(void *arg) {
  (void)arg;
  drpc_error err = DRPC_ERROR_INIT;
  drpc_value *v = (drpc_value *)1;
  CHECK(drpc_current_agent() == NULL);
  CHECK_EQ_INT(drpc_rpc_sync(NULL, "w0", DRPC_FUNCTION, "whoami", NULL, NULL,
                             -1, &v, &err),
               DRPC_ENOTINIT);
  CHECK(v == NULL);
  CHECK_STR_EQ(err.msg, "RPC has not been initialized. Call drpc_init first.");
  drpc_future *f = (drpc_future *)1;
  CHECK_EQ_INT(drpc_rpc_async(NULL, "w0", DRPC_BUILTIN, "aten::add", NULL, NULL,
                              -1, &f, &err),
               DRPC_ENOTINIT);
  CHECK(f == NULL);
  CHECK_EQ_INT(drpc_shutdown(NULL, true, 1, &err), DRPC_ENOTINIT);
  CHECK_CONTAINS(err.msg, "RPC has not been initialized");
  drpc_agent *a = NULL;
  CHECK_EQ_INT(drpc_get_current_agent(&a, &err), DRPC_ENOTINIT);
  drpc_error_clear(&err);
}

static void bad_arguments(void *arg) {
  (void)arg;
  char init[256];
  file_init(init, sizeof init);
  drpc_options o;
  drpc_options_default(&o);
  o.init_method = init;
  o.num_worker_threads = 2;
  static const char rule[] = "Worker name must match ^[A-Za-z0-9-_:]*$, and "
                             "must be non-empty and shorter than 128 chars, "
                             "but got ";
  char want[300];
  snprintf(want, sizeof want, "%sbad name!", rule);
  expect_init_error("bad name!", 0, 1, &o, DRPC_EINVAL, want);
  expect_init_error("", 0, 1, &o, DRPC_EINVAL, rule);
  expect_init_error("w/0", 0, 1, &o, DRPC_EINVAL, rule);
  char longname[129];
  memset(longname, 'a', 128);
  longname[128] = 0;
  expect_init_error(longname, 0, 1, &o, DRPC_EINVAL, rule);

  /* Ranks. */
  expect_init_error("w5", 5, 2, &o, DRPC_EINVAL,
                    "rank 5 is out of range for world_size 2");
  expect_init_error("w0", 40000, 40001, &o, DRPC_EINVAL,
                    "RPC worker id 40000 out of bound of int16_t.");
  char want_rank[300];
  snprintf(want_rank, sizeof want_rank,
           "rank parameter missing in init_method %s", init);
  expect_init_error("w0", -1, 1, &o, DRPC_EINVAL, want_rank);

  /* Options. */
  drpc_options bad = o;
  bad.num_worker_threads = 0;
  expect_init_error("w0", 0, 1, &bad, DRPC_EINVAL,
                    "num_worker_threads must be positive, got 0");
  bad = o;
  bad.rpc_timeout_s = -1;
  expect_init_error("w0", 0, 1, &bad, DRPC_EINVAL,
                    "RPC Timeout must be non-negative");
  bad = o;
  bad.transports[0] = "carrier-pigeon";
  expect_init_error("w0", 0, 1, &bad, DRPC_EINVAL,
                    "Unknown transport: carrier-pigeon");

  /* Init methods. */
  bad = o;
  bad.init_method = "tcp://127.0.0.1";
  expect_init_error("w0", 0, 1, &bad, DRPC_EINVAL,
                    "port number missing in init_method tcp://127.0.0.1");
  bad.init_method = "tcp://127.0.0.1:29500";
  expect_init_error("w0", 0, 0, &bad, DRPC_EINVAL,
                    "world_size parameter missing in init_method");
  bad.init_method = "file://";
  expect_init_error("w0", 0, 1, &bad, DRPC_EINVAL,
                    "path missing in init_method file://");
  bad.init_method = "foo://bar";
  expect_init_error("w0", 0, 1, &bad, DRPC_EINVAL,
                    "unsupported init_method scheme 'foo://'");
  bad.init_method = "env://";
  unsetenv("RANK");
  unsetenv("WORLD_SIZE");
  unsetenv("MASTER_ADDR");
  unsetenv("MASTER_PORT");
  expect_init_error("w0", -1, 0, &bad, DRPC_EINVAL,
                    "environment variable RANK expected, but not set");
  setenv("RANK", "0", 1);
  setenv("WORLD_SIZE", "1", 1);
  expect_init_error("w0", -1, 0, &bad, DRPC_EINVAL,
                    "environment variable MASTER_ADDR expected, but not set");
  setenv("MASTER_ADDR", "127.0.0.1", 1);
  expect_init_error("w0", -1, 0, &bad, DRPC_EINVAL,
                    "environment variable MASTER_PORT expected, but not set");
  unlink(store_file);
}

/* Two processes claim the same name (over a file store, so neither waits
 * on the other's store server). */
static char dup_init[256];

static void duplicate(void *arg) {
  int rank = *(int *)arg;
  drpc_options o;
  drpc_options_default(&o);
  o.init_method = dup_init;
  o.num_worker_threads = 2;
  o.rpc_timeout_s = 20;
  int threads = thread_count();
  drpc_error err = DRPC_ERROR_INIT;
  drpc_agent *a = NULL;
  double t0 = it_now();
  CHECK_EQ_INT(drpc_init(&a, "dup", rank, 2, &o, &err), DRPC_EEXISTS);
  CHECK(it_now() - t0 < 10);
  CHECK(a == NULL);
  CHECK_STR_EQ(err.msg, "RPC worker name dup is not unique. Workers 0 and 1 "
                        "share the same name.");
  CHECK(drpc_current_agent() == NULL);
  CHECK_EQ_INT(threads_settle(threads), threads);
  drpc_error_clear(&err);
}

static void call_self(drpc_agent *a, const char *name) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_value *v = NULL;
  /* NULL: the process-default agent. */
  CHECK_EQ_INT(
      drpc_rpc_sync(a, name, DRPC_FUNCTION, "whoami", NULL, NULL, 10, &v, &err),
      0);
  CHECK(v && v->kind == DRPC_VAL_STR && strcmp(v->u.s.data, name) == 0);
  drpc_value_free(v);
  drpc_value *args =
      drpc_value_list_of(2, drpc_value_int(2), drpc_value_int(3));
  CHECK_EQ_INT(drpc_rpc_sync(a, name, DRPC_BUILTIN, "aten::mul", args, NULL, 10,
                             &v, &err),
               0);
  drpc_value_free(v);
  drpc_value_free(args);
  drpc_error_clear(&err);
}

static void reinit(void *arg) {
  (void)arg;
  it_register_functions();
  char init[256];
  file_init(init, sizeof init);
  drpc_options o;
  drpc_options_default(&o);
  o.init_method = init;
  o.num_worker_threads = 2;
  drpc_error err = DRPC_ERROR_INIT;
  drpc_agent *a = NULL;
  int threads = thread_count();
  CHECK_EQ_INT(drpc_init(&a, "solo", 0, 1, &o, &err), 0);
  CHECK(a != NULL && drpc_current_agent() == a);
  if (!a)
    return;
  call_self(NULL, "solo");

  /* A second init in the same process, with any arguments. */
  drpc_agent *b = (drpc_agent *)1;
  CHECK_EQ_INT(drpc_init(&b, "other", 0, 1, &o, &err), DRPC_EEXISTS);
  CHECK_STR_EQ(err.msg, "RPC is already initialized");
  CHECK(b == NULL);
  drpc_options t = o;
  char tcp[64];
  snprintf(tcp, sizeof tcp, "tcp://127.0.0.1:%d", it_free_port());
  t.init_method = tcp;
  CHECK_EQ_INT(drpc_init(&b, "solo", 0, 1, &t, &err), DRPC_EEXISTS);
  CHECK_STR_EQ(err.msg, "RPC is already initialized");
  CHECK(drpc_current_agent() == a);
  call_self(a, "solo"); /* undisturbed */
  CHECK_EQ_INT(drpc_shutdown(a, true, 10, &err), 0);

  /* After shutdown: not initialized again; then a fresh init works. */
  drpc_value *v = NULL;
  CHECK_EQ_INT(drpc_rpc_sync(NULL, "solo", DRPC_FUNCTION, "whoami", NULL, NULL,
                             -1, &v, &err),
               DRPC_ENOTINIT);
  CHECK_CONTAINS(err.msg, "RPC has not been initialized");
  CHECK_EQ_INT(threads_settle(threads), threads);
  a = NULL;
  CHECK_EQ_INT(drpc_init(&a, "again", 0, 1, &t, &err), 0);
  if (a) {
    call_self(NULL, "again");
    CHECK_EQ_INT(drpc_shutdown(NULL, true, 10, &err), 0);
  }
  CHECK(drpc_current_agent() == NULL);
  CHECK_EQ_INT(threads_settle(threads), threads);
  unlink(store_file);
  drpc_error_clear(&err);
}

static void test_not_initialized(void) {
  it_checked c = it_fork_checked("not initialized", not_initialized, NULL, 30);
  it_join_checked(&c, 30);
}

static void test_bad_arguments(void) {
  it_checked c = it_fork_checked("bad arguments", bad_arguments, NULL, 50);
  it_join_checked(&c, 50);
}

static void test_duplicate_names(void) {
  char path[200];
  it_tmp_path(path, sizeof path, "dup");
  snprintf(dup_init, sizeof dup_init, "file://%s", path);
  static int ranks[2] = {0, 1};
  it_checked c0 = it_fork_checked("dup rank 0", duplicate, &ranks[0], 30);
  it_checked c1 = it_fork_checked("dup rank 1", duplicate, &ranks[1], 30);
  it_join_checked(&c0, 30);
  it_join_checked(&c1, 30);
  unlink(path);
}

static void test_reinit(void) {
  it_checked c = it_fork_checked("reinit", reinit, NULL, 50);
  it_join_checked(&c, 50);
}

int main(void) {
  it_setup(110);
  RUN(test_not_initialized);
  RUN(test_bad_arguments);
  RUN(test_duplicate_names);
  RUN(test_reinit);
  return test_finish();
}
