/* Helpers for the multi-process integration tests (tests/test_it_*.c):
 * children that never outlive the test, bounded waits, free ports, workers
 * started by fork (drpc_init in the child) or by exec of `drpc worker`,
 * command runs with captured output, and raw loopback sockets. */
#ifndef DRPC_IT_UTIL_H
#define DRPC_IT_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "drpc/drpc.h"
#include "drpc/net.h"

/* Most children one test process tracks at a time. */
#define IT_MAX_CHILDREN 64
/* Exit code of a driver whose rendezvous port was taken by someone else
 * between picking it and binding it: the orchestrator retries. */
#define IT_EXIT_RETRY 75
/* How many times an orchestrator retries after IT_EXIT_RETRY. */
#define IT_PORT_ATTEMPTS 4

/* Monotonic seconds. */
double it_now(void);
void it_sleep(double s);

/* Call first in main: every child still running when the test exits (or
 * when watchdog_s passes, which also fails the test) is killed with
 * SIGKILL and reaped. */
void it_setup(int watchdog_s);

/* A loopback port that was free a moment ago (bind port 0, read it back). */
int it_free_port(void);
/* A fresh path /tmp/drpc-it-<pid>-<n>-<tag> (nothing created). */
void it_tmp_path(char *buf, size_t n, const char *tag);

/* ---- child processes --------------------------------------------------- */

/* For code that forks by itself: the child half (dies with the test via
 * PR_SET_PDEATHSIG, SIGALRM after watchdog_s, forgets the parent's
 * children) and the parent half (tracks pid for the clean-up). */
void it_child_prepare(int watchdog_s);
void it_track(pid_t pid);

/* Forks a child that runs fn(arg) and exits with its return value. */
pid_t it_fork(int (*fn)(void *), void *arg, int watchdog_s);
/* Execs argv[0] with env (NULL-terminated "K=V" entries added to the
 * environment; may be NULL), stdout and stderr sent to files (NULL: keep
 * the test's). */
pid_t it_spawn(char *const argv[], char *const env[], const char *out_path,
               const char *err_path, int watchdog_s);
/* Waits up to timeout_s for pid to end: true with its wait status, or
 * false while it still runs. */
bool it_wait(pid_t pid, double timeout_s, int *status);
/* SIGKILLs pid if it still runs and reaps it. */
void it_kill(pid_t pid);
void it_kill_all(void);
bool it_exited_ok(int status);
/* The exit code, or -signal for a child killed by one. */
int it_exit_code(int status);
/* Runs argv to completion within timeout_s, capturing up to outn-1 and
 * errn-1 bytes of stdout and stderr (out / err may be NULL). Returns the
 * exit code, -signal, or -1000 when it had to be killed. */
int it_run(char *const argv[], char *const env[], double timeout_s, char *out,
           size_t outn, char *err, size_t errn);
/* Reads a whole small file into buf (NUL-terminated); "" when missing. */
void it_read_file(const char *path, char *buf, size_t n);

/* ---- workers ----------------------------------------------------------- */

typedef enum it_style {
  IT_FORK = 0, /* fork, then drpc_init / drpc_shutdown in the child */
  IT_EXEC = 1, /* exec `$DRPC_BIN worker ... --plugin $DRPC_TEST_PLUGIN` */
} it_style;

typedef struct it_worker {
  const char *name;
  int rank, world; /* < 0: not passed (env:// reads RANK / WORLD_SIZE) */
  const char *init_method;
  const char *env[8];   /* "K=V" entries for this worker, NULL-terminated */
  int threads;          /* 0: the default */
  double rpc_timeout_s; /* < 0: the default */
  double shutdown_timeout_s; /* bound of the final graceful shutdown */
  it_style style;
  const char *err_path; /* exec'd workers: stderr to this file (NULL: ours) */
  int watchdog_s;
} it_worker;

void it_worker_default(it_worker *w);
/* Starts a passive worker: it serves until the group shuts down
 * gracefully, then exits 0 (1 on any error, printed on stderr). */
pid_t it_start_worker(const it_worker *w);

/* The functions every test worker serves: the drpc CLI's standard set
 * (tools/stdfns.c) and the test plugin's t::* (tests/test_plugin.c). */
void it_register_functions(void);
const char *it_drpc_bin(void);
const char *it_plugin_path(void);

/* drpc_init for a driver child; exits the child with IT_EXIT_RETRY when
 * its rendezvous port was taken meanwhile. NULL with err set on other
 * failures. */
drpc_agent *it_init_driver(const char *name, int64_t rank, int64_t world,
                           const drpc_options *o, drpc_error *err);

/* ---- values ------------------------------------------------------------ */

/* A float32 tensor of the given shape holding vals (numel of them). */
drpc_tensor *it_tensor_f32(int ndim, const int64_t *shape, const float *vals);
/* Element i of a float tensor result (NaN when v is not a tensor). */
double it_tensor_at(const drpc_value *v, int64_t i);

/* ---- raw sockets ------------------------------------------------------- */

/* A blocking TCP connection to 127.0.0.1:port; -1 on failure. */
int it_tcp_connect(int port);
/* Writes all of buf; false when the peer is gone. */
bool it_send_all(int fd, const void *buf, size_t len);
/* Reads (discarding) until the peer closes the connection: true when it
 * did (EOF or reset) within timeout_s. */
bool it_wait_closed(int fd, double timeout_s);
/* Reads exactly len bytes within timeout_s. */
bool it_recv_all(int fd, void *buf, size_t len, double timeout_s);

/* ---- checked children (need tests/test.h included first) -------------- */

#ifdef DRPC_TEST_H
#include <errno.h>
#include <unistd.h>

/* A forked child running checks; its pass / fail counts come back to the
 * parent through a pipe. */
typedef struct it_checked {
  pid_t pid;
  int fd;
  const char *what;
} it_checked;

static inline it_checked it_fork_checked(const char *what, void (*fn)(void *),
                                         void *arg, int watchdog_s) {
  it_checked c = {-1, -1, what};
  int p[2];
  if (pipe(p) != 0) {
    CHECK(!"pipe");
    return c;
  }
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    close(p[0]);
    it_child_prepare(watchdog_s);
    test_passed_ = test_failed_ = 0;
    test_current_ = what;
    fn(arg);
    int counts[2] = {test_passed_, test_failed_};
    ssize_t w = write(p[1], counts, sizeof counts);
    (void)w;
    /* exit, not _exit: under ASan the leak check runs in the child. */
    exit(test_failed_ ? 1 : 0);
  }
  close(p[1]);
  if (pid < 0) {
    close(p[0]);
    CHECK(!"fork");
    return c;
  }
  it_track(pid);
  c.pid = pid;
  c.fd = p[0];
  return c;
}

/* Waits (bounded) for a checked child and adds its counts. While it
 * waits, a watched process (n of them; may be 0) that ends with an error
 * fails the test at once and the child is killed: a worker that died
 * early must not leave the driver waiting for it. Returns the child's
 * exit code (-signal when killed, -1000 when it had to be killed).
 * IT_EXIT_RETRY is returned without counting a failure. */
static inline int it_join_watch(it_checked *c, double timeout_s,
                                const pid_t *watch, int n) {
  if (c->pid <= 0)
    return -1000;
  int status = 0, code = -1000;
  double deadline = it_now() + timeout_s;
  for (;;) {
    if (it_wait(c->pid, 0.02, &status)) {
      code = it_exit_code(status);
      break;
    }
    int dead = -1;
    for (int i = 0; i < n && dead < 0; i++) {
      int st = 0;
      if (watch[i] > 0 && it_wait(watch[i], 0, &st) && !it_exited_ok(st)) {
        dead = i;
        fprintf(stderr, "[%s] process %d ended early with code %d\n", c->what,
                (int)watch[i], it_exit_code(st));
      }
    }
    if (dead >= 0 || it_now() >= deadline) {
      if (dead < 0)
        fprintf(stderr, "[%s] child %d still running after %.0f s\n", c->what,
                (int)c->pid, timeout_s);
      it_kill(c->pid);
      break;
    }
  }
  int counts[2] = {0, 0};
  ssize_t r;
  do
    r = read(c->fd, counts, sizeof counts);
  while (r < 0 && errno == EINTR);
  close(c->fd);
  c->pid = -1;
  if (code == IT_EXIT_RETRY)
    return code;
  if (r == (ssize_t)sizeof counts) {
    test_passed_ += counts[0];
    test_failed_ += counts[1];
  }
  if (r != (ssize_t)sizeof counts || (code != 0 && counts[1] == 0)) {
    test_failed_++;
    fprintf(stderr, "[%s] child ended with code %d%s\n", c->what, code,
            r == (ssize_t)sizeof counts ? "" : " before reporting its checks");
  }
  return code;
}

static inline int it_join_checked(it_checked *c, double timeout_s) {
  return it_join_watch(c, timeout_s, NULL, 0);
}

/* Kills a checked child whose results no longer matter (a retried run). */
static inline void it_discard_checked(it_checked *c) {
  if (c->pid > 0)
    it_kill(c->pid);
  if (c->fd >= 0)
    close(c->fd);
  c->pid = -1;
  c->fd = -1;
}
#endif

#endif
