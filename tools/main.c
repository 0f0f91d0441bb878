/* The drpc command line: worker, store, bench, demo, sim, run. */
#include <dlfcn.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "drpc/gpu.h"
#include "tools.h"

static void usage_main(FILE *f) {
  fprintf(f, "usage: drpc <command> [options]\n"
             "\n"
             "commands:\n"
             "  worker   run a production worker until the group shuts down\n"
             "  store    run a standalone TCP rendezvous store\n"
             "  bench    measure latency, throughput and bandwidth over "
             "loopback\n"
             "  demo     run a 4-worker cluster over loopback and report\n"
             "  sim      run a scenario in the deterministic simulator\n"
             "  run      run a scenario as real processes over loopback\n"
             "  replay   replay a recording against fresh cores, checking "
             "every output\n"
             "  trace    export a recording as a Chrome trace; merge "
             "recordings\n"
             "  viz      write a recording as a self-contained HTML viewer\n"
             "\n"
             "`drpc <command> --help` describes each command.\n");
}

long long drpc_tools_parse_int(const char *opt, const char *s, long long min,
                               long long max) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || *end || v < min || v > max) {
    fprintf(stderr, "drpc: %s expects an integer in [%lld, %lld], got '%s'\n",
            opt, min, max, s);
    exit(2);
  }
  return v;
}

double drpc_tools_parse_double(const char *opt, const char *s, double min,
                               double max) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end || !(v >= min && v <= max)) {
    fprintf(stderr, "drpc: %s expects a number in [%g, %g], got '%s'\n", opt,
            min, max, s);
    exit(2);
  }
  return v;
}

int drpc_tools_free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) ||
      getsockname(fd, (struct sockaddr *)&a, &al)) {
    if (fd >= 0)
      close(fd);
    return 29500;
  }
  close(fd);
  return ntohs(a.sin_port);
}

pid_t drpc_tools_spawn_passive(const char *name, int rank, int world,
                               const drpc_options *o) {
  fflush(NULL);
  pid_t pid = fork();
  if (pid != 0)
    return pid;
  drpc_agent *a = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  if (drpc_tools_record_prefix) {
    char path[4096];
    snprintf(path, sizeof path, "%s.w%d.db", drpc_tools_record_prefix, rank);
    if (drpc_tools_record_begin(path, NULL, name, rank))
      _exit(1);
  }
  /* The CUDA backend (DRPC_CUDA; auto by default) starts after the fork:
   * CUDA does not survive one. */
  if (drpc_gpu_setup(NULL, &err) || drpc_init(&a, name, rank, world, o, &err) ||
      drpc_shutdown(a, true, -1, &err)) {
    fprintf(stderr, "worker %s: %s\n", name, drpc_error_message(&err));
    drpc_tools_record_end();
    _exit(1);
  }
  _exit(drpc_tools_record_end());
}

/* ---- worker ------------------------------------------------------------ */

static void usage_worker(FILE *f) {
  fprintf(f,
          "usage: drpc worker --name NAME --rank R [--world-size W]\n"
          "                   [--init-method URL] [--plugin LIB.so ...]\n"
          "                   [--threads N] [--rpc-timeout S]\n"
          "                   [--shutdown-timeout S] [--record FILE.db]\n"
          "\n"
          "Serves builtin operators, the standard functions (noop, echo, "
          "sleep,\nraise, whoami, forward, async_forward, nbytes) and every "
          "function a\nplugin registers, until the group shuts down (all "
          "workers reach\nshutdown with no calls in flight) or SIGINT/SIGTERM "
          "arrives (then it\nshuts down gracefully). A plugin is a shared "
          "library exporting\n  int drpc_plugin_register(drpc_registry *r);\n"
          "The init method defaults to env:// (MASTER_ADDR, MASTER_PORT, "
          "RANK,\nWORLD_SIZE). --record keeps every input and output of the "
          "core in\nFILE.db (drpc replay, drpc trace export).\n"
          "Without a world size (and no WORLD_SIZE in the init method) the "
          "worker\njoins a dynamic group: it serves until SIGINT/SIGTERM, then "
          "leaves the\ngroup gracefully.\n");
}

typedef struct worker_state {
  const char *name;
  int64_t rank, world;
  const drpc_options *opts;
  drpc_agent *agent;
  double shutdown_timeout_s;
  int rc;
  drpc_error err;
  _Atomic int started, done; /* set by the worker thread, read by main */
  _Atomic int leave;         /* dynamic groups: set by main on a signal */
} worker_state;

/* Starts the worker and then waits in the graceful shutdown until the
 * group agrees to stop. It runs off the main thread so that the main
 * thread can answer SIGINT / SIGTERM at any time, rendezvous included. */
static void *worker_thread(void *arg) {
  worker_state *w = arg;
  /* CUDA devices as DRPC_CUDA says (auto: the CUDA runtime when present). */
  if (drpc_gpu_setup(NULL, &w->err) ||
      drpc_init(&w->agent, w->name, w->rank, w->world, w->opts, &w->err)) {
    w->rc = DRPC_EINVAL;
    fprintf(stderr, "drpc worker %s: %s\n", w->name,
            drpc_error_message(&w->err));
  } else {
    /* Started before it says so: a signal sent on reading "serving" must
     * find it started. */
    atomic_store(&w->started, 1);
    fprintf(stderr, "drpc worker %s (rank %lld) serving\n", w->name,
            (long long)drpc_agent_self(w->agent)->id);
    /* A dynamic group member serves until told to leave; a static one
     * waits in the graceful shutdown for the whole group. */
    while (!drpc_agent_is_static_group(w->agent) && !atomic_load(&w->leave)) {
      struct timespec tick = {0, 20 * 1000 * 1000};
      nanosleep(&tick, NULL);
    }
    w->rc = drpc_shutdown(w->agent, true, w->shutdown_timeout_s, &w->err);
    if (w->rc)
      fprintf(stderr, "drpc worker %s: shutdown: %s\n", w->name,
              drpc_error_message(&w->err));
  }
  atomic_store(&w->done, 1);
  kill(getpid(), SIGUSR1); /* wake the main thread */
  return NULL;
}

int drpc_cmd_worker(int argc, char **argv) {
  static const struct option opts[] = {
      {"name", required_argument, 0, 'n'},
      {"rank", required_argument, 0, 'r'},
      {"world-size", required_argument, 0, 'w'},
      {"init-method", required_argument, 0, 'i'},
      {"plugin", required_argument, 0, 'p'},
      {"threads", required_argument, 0, 't'},
      {"rpc-timeout", required_argument, 0, 'T'},
      {"shutdown-timeout", required_argument, 0, 'S'},
      {"record", required_argument, 0, 'R'},
      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  const char *name = NULL, *init = NULL, *record = NULL;
  const char *plugins[32];
  int nplugins = 0;
  long long rank = -1, world = -1;
  drpc_options o;
  drpc_options_default(&o);
  double shutdown_s = 0;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'n':
      name = optarg;
      break;
    case 'r':
      rank = drpc_tools_parse_int("--rank", optarg, 0, INT16_MAX);
      break;
    case 'w':
      world = drpc_tools_parse_int("--world-size", optarg, 1, 32768);
      break;
    case 'i':
      init = optarg;
      break;
    case 'p':
      if (nplugins == 32) {
        fprintf(stderr, "drpc worker: at most 32 plugins\n");
        return 2;
      }
      plugins[nplugins++] = optarg;
      break;
    case 't':
      o.num_worker_threads =
          (int)drpc_tools_parse_int("--threads", optarg, 1, 4096);
      break;
    case 'T':
      o.rpc_timeout_s =
          drpc_tools_parse_double("--rpc-timeout", optarg, 0, 1e9);
      break;
    case 'S':
      shutdown_s =
          drpc_tools_parse_double("--shutdown-timeout", optarg, 0, 1e9);
      break;
    case 'R':
      record = optarg;
      break;
    case 'h':
      usage_worker(stdout);
      return 0;
    default:
      usage_worker(stderr);
      return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "drpc worker: unexpected argument '%s'\n", argv[optind]);
    return 2;
  }
  if (!name) {
    fprintf(stderr, "drpc worker: --name is required\n");
    return 2;
  }
  if (init)
    o.init_method = init;
  drpc_registry *reg = drpc_registry_default();
  drpc_tools_register_std(reg);
  for (int i = 0; i < nplugins; i++) {
    void *h = dlopen(plugins[i], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      fprintf(stderr, "drpc worker: cannot load plugin %s: %s\n", plugins[i],
              dlerror());
      return 1;
    }
    int (*reg_fn)(drpc_registry *) =
        (int (*)(drpc_registry *))dlsym(h, "drpc_plugin_register");
    if (!reg_fn) {
      fprintf(stderr,
              "drpc worker: plugin %s does not export drpc_plugin_register\n",
              plugins[i]);
      return 1;
    }
    int rc = reg_fn(reg);
    if (rc) {
      fprintf(stderr, "drpc worker: plugin %s failed to register: %s\n",
              plugins[i], drpc_strerror(rc));
      return 1;
    }
  }

  /* Signals go to the main thread only, which waits for them. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &set, NULL);

  if (record && drpc_tools_record_begin(record, NULL, name, (int)rank))
    return 1;
  worker_state w = {0};
  w.name = name;
  w.rank = rank;
  w.world = world;
  w.opts = &o;
  w.shutdown_timeout_s = shutdown_s;
  pthread_t th;
  if (pthread_create(&th, NULL, worker_thread, &w)) {
    fprintf(stderr, "drpc worker %s: cannot start a thread\n", name);
    return 1;
  }
  for (;;) {
    int sig = 0;
    sigwait(&set, &sig);
    if (atomic_load(&w.done))
      break;
    if (sig == SIGINT || sig == SIGTERM) {
      if (!atomic_load(&w.started)) {
        /* Still in rendezvous: there is nothing to shut down yet. */
        fprintf(stderr, "drpc worker %s: signal %d during start-up; exiting\n",
                name, sig);
        fflush(stderr);
        _exit(1);
      }
      /* The worker thread is already in the graceful protocol (or, in a
       * dynamic group, starts leaving now); give it a bounded time. */
      atomic_store(&w.leave, 1);
      double grace = shutdown_s > 0 ? shutdown_s : 10;
      fprintf(stderr,
              "drpc worker %s: signal %d, shutting down (up to %.0f s)\n", name,
              sig, grace);
      struct timespec until;
      clock_gettime(CLOCK_REALTIME, &until);
      until.tv_sec += (time_t)grace;
      struct timespec left;
      while (!atomic_load(&w.done)) {
        clock_gettime(CLOCK_REALTIME, &left);
        if (left.tv_sec > until.tv_sec)
          break;
        struct timespec tick = {0, 20 * 1000 * 1000};
        sigtimedwait(&set, NULL, &tick);
      }
      if (!atomic_load(&w.done)) {
        fprintf(stderr,
                "drpc worker %s: graceful shutdown did not finish in %.0f s; "
                "exiting\n",
                name, grace);
        _exit(1);
      }
      break;
    }
  }
  pthread_join(th, NULL);
  drpc_error_clear(&w.err);
  if (drpc_tools_record_end())
    return 1;
  if (w.rc)
    return 1;
  fprintf(stderr, "drpc worker %s: shut down cleanly\n", name);
  return 0;
}

/* ---- store ------------------------------------------------------------- */

static void usage_store(FILE *f) {
  fprintf(f, "usage: drpc store --port P [--host H]\n"
             "\n"
             "Runs a standalone TCP rendezvous store until SIGINT/SIGTERM. "
             "Workers\nreach it with --init-method tcp://H:P; rank 0 then "
             "uses it instead of\nstarting its own. One store serves one "
             "group.\n");
}

int drpc_cmd_store(int argc, char **argv) {
  static const struct option opts[] = {{"port", required_argument, 0, 'p'},
                                       {"host", required_argument, 0, 'H'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  long long port = -1;
  const char *host = "127.0.0.1";
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'p':
      port = drpc_tools_parse_int("--port", optarg, 0, 65535);
      break;
    case 'H':
      host = optarg;
      break;
    case 'h':
      usage_store(stdout);
      return 0;
    default:
      usage_store(stderr);
      return 2;
    }
  }
  if (port < 0 || optind < argc) {
    fprintf(stderr, "drpc store: --port is required\n");
    return 2;
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  drpc_store_server *s = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  if (drpc_store_server_start(&s, host, (int)port, &err)) {
    fprintf(stderr, "drpc store: %s\n", drpc_error_message(&err));
    drpc_error_clear(&err);
    return 1;
  }
  /* Mark the store as standalone, so that rank 0 uses it. */
  drpc_store *self = NULL;
  const char *self_host = *host && strcmp(host, "0.0.0.0") && strcmp(host, "::")
                              ? host
                              : "127.0.0.1";
  if (drpc_store_tcp_new(&self, self_host, drpc_store_server_port(s), 5,
                         &err) ||
      drpc_store_set_str(self, DRPC_STORE_STANDALONE_KEY, "1", &err)) {
    fprintf(stderr, "drpc store: %s\n", drpc_error_message(&err));
    drpc_error_clear(&err);
    drpc_store_decref(self);
    drpc_store_server_stop(s);
    return 1;
  }
  drpc_store_decref(self);
  printf("drpc store listening on %s:%d\n", host, drpc_store_server_port(s));
  fflush(stdout);
  int sig;
  sigwait(&set, &sig);
  drpc_store_server_stop(s);
  fprintf(stderr, "drpc store: stopped\n");
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage_main(stderr);
    return 2;
  }
  const char *cmd = argv[1];
  if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
    usage_main(stdout);
    return 0;
  }
  if (!strcmp(cmd, "--version")) {
    printf("drpc %s\n", DRPC_VERSION_STRING);
    return 0;
  }
  if (!strcmp(cmd, "worker"))
    return drpc_cmd_worker(argc - 1, argv + 1);
  if (!strcmp(cmd, "store"))
    return drpc_cmd_store(argc - 1, argv + 1);
  if (!strcmp(cmd, "bench") && argc > 2 && !strcmp(argv[2], "sim"))
    return drpc_cmd_bench_sim(argc - 2, argv + 2);
  if (!strcmp(cmd, "bench"))
    return drpc_cmd_bench(argc - 1, argv + 1);
  if (!strcmp(cmd, "sim"))
    return drpc_cmd_sim(argc - 1, argv + 1);
  if (!strcmp(cmd, "run"))
    return drpc_cmd_run(argc - 1, argv + 1);
  if (!strcmp(cmd, "demo"))
    return drpc_cmd_demo(argc - 1, argv + 1);
  if (!strcmp(cmd, "replay"))
    return drpc_cmd_replay(argc - 1, argv + 1);
  if (!strcmp(cmd, "trace"))
    return drpc_cmd_trace(argc - 1, argv + 1);
  if (!strcmp(cmd, "viz"))
    return drpc_cmd_viz(argc - 1, argv + 1);
  fprintf(stderr, "drpc: unknown command '%s'\n\n", cmd);
  usage_main(stderr);
  return 2;
}
