/* Helpers for the multi-process integration tests: see it_util.h. */
#include "it_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tools.h"

int drpc_plugin_register(drpc_registry *r);

/* Children of this process that have not been reaped yet. */
static pid_t children[IT_MAX_CHILDREN];
static int nchildren;
static pid_t owner; /* the process the table belongs to */

double it_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void it_sleep(double s) {
  if (s <= 0)
    return;
  struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
}

/* ---- clean-up ---------------------------------------------------------- */

static void kill_children_signal_safe(void) {
  for (int i = 0; i < nchildren; i++)
    if (children[i] > 0)
      kill(children[i], SIGKILL);
}

static void on_watchdog(int sig) {
  (void)sig;
  static const char msg[] = "it_util: watchdog fired; killing children\n";
  ssize_t w = write(2, msg, sizeof msg - 1);
  (void)w;
  kill_children_signal_safe();
  for (int i = 0; i < nchildren; i++)
    if (children[i] > 0)
      waitpid(children[i], NULL, 0);
  _exit(3);
}

static void at_exit(void) {
  if (getpid() != owner)
    return;
  if (nchildren)
    fprintf(stderr, "it_util: killing %d leftover children\n", nchildren);
  it_kill_all();
}

void it_setup(int watchdog_s) {
  owner = getpid();
  atexit(at_exit);
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_watchdog;
  sigaction(SIGALRM, &sa, NULL);
  alarm((unsigned)watchdog_s);
}

void it_child_prepare(int watchdog_s) {
  /* Die with the parent, even when it is killed outright. */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() == 1)
    _exit(3);
  nchildren = 0;
  owner = getpid();
  signal(SIGALRM, SIG_DFL);
  alarm((unsigned)watchdog_s);
}

void it_track(pid_t pid) {
  if (nchildren < IT_MAX_CHILDREN) {
    children[nchildren++] = pid;
    return;
  }
  fprintf(stderr, "it_util: more than %d children; killing %d\n",
          IT_MAX_CHILDREN, (int)pid);
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
}

static void untrack(pid_t pid) {
  for (int i = 0; i < nchildren; i++)
    if (children[i] == pid) {
      children[i] = children[--nchildren];
      return;
    }
}

int it_free_port(void) {
  for (int attempt = 0; attempt < 100; attempt++) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (fd < 0)
      continue;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &al) == 0) {
      close(fd);
      return ntohs(a.sin_port);
    }
    close(fd);
  }
  return -1;
}

void it_tmp_path(char *buf, size_t n, const char *tag) {
  static int counter;
  snprintf(buf, n, "/tmp/drpc-it-%d-%d-%s", (int)getpid(), ++counter, tag);
}

/* ---- child processes --------------------------------------------------- */

pid_t it_fork(int (*fn)(void *), void *arg, int watchdog_s) {
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    it_child_prepare(watchdog_s);
    exit(fn(arg)); /* exit, not _exit: under ASan the leak check runs */
  }
  if (pid > 0)
    it_track(pid);
  return pid;
}

static void redirect(const char *path, int fd) {
  if (!path)
    return;
  int f = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (f >= 0) {
    dup2(f, fd);
    close(f);
  }
}

pid_t it_spawn(char *const argv[], char *const env[], const char *out_path,
               const char *err_path, int watchdog_s) {
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    /* The death signal and the alarm both survive exec. */
    it_child_prepare(watchdog_s);
    for (size_t i = 0; env && env[i]; i++)
      putenv(env[i]);
    redirect(out_path, 1);
    redirect(err_path, 2);
    execv(argv[0], argv);
    fprintf(stderr, "it_spawn: cannot exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  if (pid > 0)
    it_track(pid);
  return pid;
}

/* Statuses of reaped children, so a child can be waited for again. */
static struct {
  pid_t pid;
  int status;
} reaped[IT_MAX_CHILDREN];
static int nreaped;

static void remember(pid_t pid, int status) {
  reaped[nreaped % IT_MAX_CHILDREN].pid = pid;
  reaped[nreaped % IT_MAX_CHILDREN].status = status;
  nreaped++;
}

static int recalled(pid_t pid) {
  for (int i = 0; i < IT_MAX_CHILDREN && i < nreaped; i++)
    if (reaped[i].pid == pid)
      return reaped[i].status;
  return 0;
}

bool it_wait(pid_t pid, double timeout_s, int *status) {
  double deadline = it_now() + timeout_s;
  int st = 0;
  for (;;) {
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) {
      untrack(pid);
      remember(pid, st);
    } else if (r < 0 && errno == ECHILD) {
      st = recalled(pid);
    }
    if (r == pid || (r < 0 && errno == ECHILD)) {
      if (status)
        *status = st;
      return true;
    }
    if (it_now() >= deadline)
      return false;
    it_sleep(0.005);
  }
}

void it_kill(pid_t pid) {
  if (pid <= 0)
    return;
  for (int i = 0; i < nchildren; i++)
    if (children[i] == pid) {
      int st = 0;
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
      untrack(pid);
      remember(pid, st);
      return;
    }
}

void it_kill_all(void) {
  while (nchildren > 0)
    it_kill(children[nchildren - 1]);
}

bool it_exited_ok(int status) {
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

int it_exit_code(int status) {
  if (WIFEXITED(status))
    return WEXITSTATUS(status);
  if (WIFSIGNALED(status))
    return -WTERMSIG(status);
  return -999;
}

void it_read_file(const char *path, char *buf, size_t n) {
  buf[0] = 0;
  FILE *f = fopen(path, "rb");
  if (!f)
    return;
  size_t k = fread(buf, 1, n - 1, f);
  buf[k] = 0;
  fclose(f);
}

int it_run(char *const argv[], char *const env[], double timeout_s, char *out,
           size_t outn, char *err, size_t errn) {
  char op[128], ep[128];
  it_tmp_path(op, sizeof op, "out");
  it_tmp_path(ep, sizeof ep, "err");
  pid_t pid = it_spawn(argv, env, op, ep, (int)timeout_s + 5);
  int status = 0, code = -1000;
  if (pid > 0) {
    if (it_wait(pid, timeout_s, &status))
      code = it_exit_code(status);
    else
      it_kill(pid);
  }
  if (out)
    it_read_file(op, out, outn);
  if (err)
    it_read_file(ep, err, errn);
  unlink(op);
  unlink(ep);
  return code;
}

/* ---- workers ----------------------------------------------------------- */

void it_register_functions(void) {
  drpc_registry *r = drpc_registry_default();
  if (drpc_tools_register_std(r) || drpc_plugin_register(r)) {
    fprintf(stderr, "it_util: cannot register the test functions\n");
    _exit(1);
  }
}

const char *it_drpc_bin(void) {
  const char *p = getenv("DRPC_BIN");
  return p && *p ? p : "./drpc";
}

const char *it_plugin_path(void) {
  const char *p = getenv("DRPC_TEST_PLUGIN");
  return p && *p ? p : "./tests/libdrpc_test_plugin.so";
}

void it_worker_default(it_worker *w) {
  memset(w, 0, sizeof *w);
  w->rank = w->world = -1;
  w->rpc_timeout_s = -1;
  w->shutdown_timeout_s = 30;
  w->watchdog_s = 50;
}

static int forked_worker(void *arg) {
  const it_worker *w = arg;
  for (int i = 0; w->env[i]; i++)
    putenv((char *)w->env[i]);
  it_register_functions();
  drpc_options o;
  drpc_options_default(&o);
  if (w->init_method)
    o.init_method = w->init_method;
  if (w->threads > 0)
    o.num_worker_threads = w->threads;
  if (w->rpc_timeout_s >= 0)
    o.rpc_timeout_s = w->rpc_timeout_s;
  drpc_agent *a = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  if (drpc_init(&a, w->name, w->rank, w->world < 0 ? 0 : w->world, &o, &err)) {
    fprintf(stderr, "worker %s: init: %s\n", w->name, drpc_error_message(&err));
    drpc_error_clear(&err);
    return 1;
  }
  if (drpc_shutdown(a, true, w->shutdown_timeout_s, &err)) {
    fprintf(stderr, "worker %s: shutdown: %s\n", w->name,
            drpc_error_message(&err));
    drpc_error_clear(&err);
    return 1;
  }
  return 0;
}

pid_t it_start_worker(const it_worker *w) {
  if (w->style == IT_FORK)
    return it_fork(forked_worker, (void *)w, w->watchdog_s);
  char rank[16], world[16], threads[16], rto[32], sto[32];
  const char *argv[24];
  int n = 0;
  argv[n++] = it_drpc_bin();
  argv[n++] = "worker";
  argv[n++] = "--name";
  argv[n++] = w->name;
  if (w->rank >= 0) {
    snprintf(rank, sizeof rank, "%d", w->rank);
    argv[n++] = "--rank";
    argv[n++] = rank;
  }
  if (w->world >= 0) {
    snprintf(world, sizeof world, "%d", w->world);
    argv[n++] = "--world-size";
    argv[n++] = world;
  }
  if (w->init_method) {
    argv[n++] = "--init-method";
    argv[n++] = w->init_method;
  }
  argv[n++] = "--plugin";
  argv[n++] = it_plugin_path();
  if (w->threads > 0) {
    snprintf(threads, sizeof threads, "%d", w->threads);
    argv[n++] = "--threads";
    argv[n++] = threads;
  }
  if (w->rpc_timeout_s >= 0) {
    snprintf(rto, sizeof rto, "%g", w->rpc_timeout_s);
    argv[n++] = "--rpc-timeout";
    argv[n++] = rto;
  }
  snprintf(sto, sizeof sto, "%g", w->shutdown_timeout_s);
  argv[n++] = "--shutdown-timeout";
  argv[n++] = sto;
  argv[n] = NULL;
  return it_spawn((char *const *)argv, (char *const *)w->env, NULL, w->err_path,
                  w->watchdog_s);
}

drpc_agent *it_init_driver(const char *name, int64_t rank, int64_t world,
                           const drpc_options *o, drpc_error *err) {
  drpc_agent *a = NULL;
  if (drpc_init(&a, name, rank, world, o, err) == 0)
    return a;
  if (err->code == DRPC_EIO && err->msg &&
      strstr(err->msg, "address already in use")) {
    fprintf(stderr, "%s: rendezvous port taken (%s); retrying\n", name,
            err->msg);
    fflush(NULL);
    _exit(IT_EXIT_RETRY);
  }
  return NULL;
}

/* ---- values ------------------------------------------------------------ */

drpc_tensor *it_tensor_f32(int ndim, const int64_t *shape, const float *vals) {
  drpc_tensor *t = drpc_tensor_new(DRPC_FLOAT32, ndim, shape);
  if (!t)
    return NULL;
  int64_t n = drpc_tensor_numel(t);
  float *p = drpc_tensor_data(t);
  for (int64_t i = 0; i < n; i++)
    p[i] = vals ? vals[i] : (float)i;
  return t;
}

double it_tensor_at(const drpc_value *v, int64_t i) {
  if (!v || v->kind != DRPC_VAL_TENSOR)
    return NAN;
  return drpc_tensor_get_f64(v->u.t, i);
}

/* ---- raw sockets ------------------------------------------------------- */

int it_tcp_connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_port = htons((uint16_t)port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    close(fd);
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

bool it_send_all(int fd, const void *buf, size_t len) {
  const uint8_t *p = buf;
  while (len) {
    ssize_t w = send(fd, p, len, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return false;
    p += w;
    len -= (size_t)w;
  }
  return true;
}

bool it_wait_closed(int fd, double timeout_s) {
  double deadline = it_now() + timeout_s;
  char buf[4096];
  for (;;) {
    double left = deadline - it_now();
    if (left <= 0)
      return false;
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    int k = poll(&pf, 1, (int)(left * 1000) + 1);
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0)
      continue;
    ssize_t r = recv(fd, buf, sizeof buf, 0);
    if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN))
      return true;
  }
}

bool it_recv_all(int fd, void *buf, size_t len, double timeout_s) {
  double deadline = it_now() + timeout_s;
  uint8_t *p = buf;
  while (len) {
    double left = deadline - it_now();
    if (left <= 0)
      return false;
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    int k = poll(&pf, 1, (int)(left * 1000) + 1);
    if (k <= 0)
      continue;
    ssize_t r = recv(fd, p, len, 0);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      return false;
    p += r;
    len -= (size_t)r;
  }
  return true;
}
