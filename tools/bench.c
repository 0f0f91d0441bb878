/* `drpc bench`: two workers over loopback (two processes), measuring no-op
 * latency, pipelined throughput and tensor echo bandwidth the way the
 * PyTorch peer script does, so the figures compare directly. */
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "drpc/device.h"
#include "drpc/gpu.h"
#include "tools.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static long rss_kib(pid_t pid) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  long v = -1;
  if (!f)
    return -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "VmRSS: %ld kB", &v) == 1)
      break;
  fclose(f);
  return v;
}

static void usage(FILE *f) {
  fprintf(f, "usage: drpc bench [latency|throughput|bandwidth|rref|all] "
             "[--json]\n"
             "                  [--iters N] [--calls N] [--max-bytes B]\n"
             "                  [--threads N] [--record FILE.db]\n"
             "                  [--device cuda:N [--cuda SPEC] [--channel C]]\n"
             "\n"
             "Starts two workers (two processes) over loopback and prints\n"
             "noop_sync_p50_us, noop_sync_p99_us, async_calls_per_s and\n"
             "echo_<bytes>_GBps (GB/s = 2 x size / time) for 1 KiB .. 128 "
             "MiB,\nplus the idle worker's resident memory. rref: "
             "remote_to_here_us\n(remote() of aten::ones([4]) then to_here, "
             "p50) and forks_per_s (RRefs\nforked to the peer and deleted "
             "again).\n--record: both workers record every event (the cost of "
             "recording); the\nrecordings are merged into FILE.db and "
             "replayed (replay_s).\n--device cuda:N: the echo tensors live on "
             "that CUDA "
             "device on both\nworkers (a device map cuda:N -> cuda:N each way; "
             "sizes up to 512 MiB),\nand every figure is of the CUDA-enabled "
             "agent. --cuda picks the backend\n(cuda, the default, or sim:N "
             "for simcuda; see DRPC_CUDA); --channel forces cuda_ipc or "
             "cuda_staged.\n");
}

typedef struct result {
  char key[64];
  double value;
} result;

static long rref_counter(drpc_agent *a, const char *key) {
  drpc_value *d = drpc_rref_context_debug_info(a);
  const drpc_value *v = drpc_dict_get(d, key);
  long r = v && v->kind == DRPC_VAL_STR ? atol(v->u.s.data) : -1;
  drpc_value_free(d);
  return r;
}

/* remote(w1, aten::ones([4])).to_here() latency, and forks per second: an
 * owner RRef of w0 sent to w1's noop (early fork registration on w0, the
 * user RRef's delete and its ACK back), until every fork is gone again. */
static int bench_rref(drpc_agent *a, long long iters, result *res, int *nres) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_value *args = drpc_value_list_of(1, drpc_value_int(4));
  double *l = malloc((size_t)iters * sizeof *l);
  int failed = 0;
  for (long long i = -300; i < iters && !failed; i++) {
    double t0 = now_s();
    drpc_rref *r = NULL;
    drpc_value *v = NULL;
    if (drpc_remote(a, "w1", DRPC_BUILTIN, "aten::ones", args, NULL, -1, &r,
                    &err) ||
        drpc_rref_to_here(r, -1, &v, &err)) {
      fprintf(stderr, "drpc bench: rref: %s\n", drpc_error_message(&err));
      failed = 1;
    }
    if (i >= 0)
      l[i] = now_s() - t0;
    drpc_value_free(v);
    drpc_rref_decref(r);
  }
  if (!failed) {
    qsort(l, (size_t)iters, sizeof *l, cmp_d);
    snprintf(res[*nres].key, sizeof res[*nres].key, "remote_to_here_us");
    res[(*nres)++].value = l[iters / 2] * 1e6;
  }
  free(l);
  drpc_value_free(args);
  drpc_rref *own = NULL;
  if (!failed && drpc_rref_new_local(a, drpc_value_int(1), &own, &err)) {
    fprintf(stderr, "drpc bench: rref: %s\n", drpc_error_message(&err));
    failed = 1;
  }
  const long long forks = 20000, window = 500;
  drpc_future **fs = malloc((size_t)window * sizeof *fs);
  double t0 = now_s();
  for (long long done = 0; !failed && done < forks; done += window) {
    drpc_value *fa = drpc_value_list_of(1, drpc_value_rref(own));
    for (long long k = 0; k < window; k++)
      if (drpc_rpc_async(a, "w1", DRPC_FUNCTION, "noop", fa, NULL, -1, &fs[k],
                         &err)) {
        fprintf(stderr, "drpc bench: rref: %s\n", drpc_error_message(&err));
        failed = 1;
        fs[k] = NULL;
      }
    drpc_value_free(fa);
    for (long long k = 0; k < window; k++) {
      if (fs[k] && drpc_future_get(fs[k], -1, NULL, &err))
        failed = 1;
      drpc_future_decref(fs[k]);
    }
  }
  /* A fork is done when w1's delete has reached w0. */
  while (!failed && rref_counter(a, "num_forks") > 0 && now_s() - t0 < 60)
    usleep(50);
  double dt = now_s() - t0;
  free(fs);
  drpc_rref_decref(own);
  if (!failed) {
    snprintf(res[*nres].key, sizeof res[*nres].key, "forks_per_s");
    res[(*nres)++].value = (double)forks / dt;
  }
  drpc_error_clear(&err);
  return failed;
}

int drpc_cmd_bench(int argc, char **argv) {
  static const struct option opts[] = {{"json", no_argument, 0, 'j'},
                                       {"iters", required_argument, 0, 'i'},
                                       {"calls", required_argument, 0, 'c'},
                                       {"max-bytes", required_argument, 0, 'm'},
                                       {"threads", required_argument, 0, 't'},
                                       {"record", required_argument, 0, 'R'},
                                       {"device", required_argument, 0, 'd'},
                                       {"cuda", required_argument, 0, 'C'},
                                       {"channel", required_argument, 0, 'H'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  bool json = false;
  const char *record = NULL, *cuda = NULL, *channel = NULL;
  drpc_device dev = DRPC_CPU;
  bool max_set = false;
  long long iters = 3000, calls = 20000, max_bytes = 128ll << 20;
  int threads = DRPC_DEFAULT_NUM_WORKER_THREADS;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'j':
      json = true;
      break;
    case 'i':
      iters = drpc_tools_parse_int("--iters", optarg, 10, 10000000);
      break;
    case 'c':
      calls = drpc_tools_parse_int("--calls", optarg, 10, 100000000);
      break;
    case 'm':
      max_bytes = drpc_tools_parse_int("--max-bytes", optarg, 1024, 1ll << 30);
      max_set = true;
      break;
    case 'd':
      if (drpc_device_parse(optarg, &dev)) {
        fprintf(stderr, "drpc bench: --device %s: expected cpu or cuda:N\n",
                optarg);
        return 2;
      }
      break;
    case 'C':
      cuda = optarg;
      break;
    case 'H':
      channel = optarg;
      break;
    case 't':
      threads = (int)drpc_tools_parse_int("--threads", optarg, 1, 4096);
      break;
    case 'R':
      record = optarg;
      break;
    case 'h':
      usage(stdout);
      return 0;
    default:
      usage(stderr);
      return 2;
    }
  }
  const char *what = optind < argc ? argv[optind] : "all";
  bool lat = !strcmp(what, "all") || !strcmp(what, "latency");
  bool thr = !strcmp(what, "all") || !strcmp(what, "throughput");
  bool bw = !strcmp(what, "all") || !strcmp(what, "bandwidth");
  bool rr = !strcmp(what, "all") || !strcmp(what, "rref");
  if (!lat && !thr && !bw && !rr) {
    fprintf(stderr, "drpc bench: unknown benchmark '%s'\n", what);
    usage(stderr);
    return 2;
  }

  drpc_tools_register_std(drpc_registry_default());
  char init[64];
  snprintf(init, sizeof init, "tcp://127.0.0.1:%d", drpc_tools_free_port());
  drpc_options o;
  drpc_options_default(&o);
  o.init_method = init;
  o.num_worker_threads = threads;
  o.rpc_timeout_s = 300;
  o.shutdown_timeout_s = 600;
  o.channels[0] = channel; /* NULL: every channel, the best one chosen */
  char devname[16];
  drpc_device_format(dev, devname, sizeof devname);
  if (dev.type == DRPC_DEVICE_CUDA) {
    /* Both workers pick the backend after the fork (CUDA does not survive
     * one); the map sends the tensors device to device both ways. */
    setenv("DRPC_CUDA", cuda ? cuda : "cuda", 1);
    if (!max_set)
      max_bytes = 512ll << 20;
    drpc_error merr = DRPC_ERROR_INIT;
    if (drpc_options_set_device_map(&o, "w1", &dev, &dev, 1, &merr) ||
        drpc_options_set_device_map(&o, "w0", &dev, &dev, 1, &merr)) {
      fprintf(stderr, "drpc bench: %s\n", drpc_error_message(&merr));
      drpc_error_clear(&merr);
      return 2;
    }
  }
  drpc_tools_record_prefix = record;
  pid_t child = drpc_tools_spawn_passive("w1", 1, 2, &o);
  if (child < 0) {
    perror("fork");
    return 1;
  }
  if (record && drpc_tools_record_begin_part(record, "w0", 0)) {
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    return 1;
  }
  drpc_agent *a = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  if (dev.type == DRPC_DEVICE_CUDA &&
      (drpc_gpu_setup(NULL, &err) || !drpc_device_valid(dev))) {
    fprintf(stderr, "drpc bench: --device %s: %s\n", devname,
            err.code ? drpc_error_message(&err) : "no such device");
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    return 1;
  }
  if (drpc_init(&a, "w0", 0, 2, &o, &err)) {
    fprintf(stderr, "drpc bench: %s\n", drpc_error_message(&err));
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    return 1;
  }
  result res[64];
  int nres = 0;
  int failed = 0;
  drpc_value *out = NULL;
  /* Let the peer settle, then read its idle footprint. */
  for (int i = 0; i < 10; i++) {
    if (drpc_rpc_sync(a, "w1", DRPC_FUNCTION, "noop", NULL, NULL, -1, &out,
                      &err)) {
      fprintf(stderr, "drpc bench: %s\n", drpc_error_message(&err));
      failed = 1;
      goto done;
    }
    drpc_value_free(out);
  }
  long rss = rss_kib(child);
  snprintf(res[nres].key, sizeof res[nres].key, "idle_worker_rss_kib");
  res[nres++].value = (double)rss;

  if (lat) {
    double *l = malloc((size_t)iters * sizeof *l);
    for (int i = 0; i < 300; i++) {
      drpc_rpc_sync(a, "w1", DRPC_FUNCTION, "noop", NULL, NULL, -1, &out, &err);
      drpc_value_free(out);
    }
    for (long long i = 0; i < iters; i++) {
      double t0 = now_s();
      if (drpc_rpc_sync(a, "w1", DRPC_FUNCTION, "noop", NULL, NULL, -1, &out,
                        &err)) {
        fprintf(stderr, "drpc bench: %s\n", drpc_error_message(&err));
        failed = 1;
        free(l);
        goto done;
      }
      l[i] = now_s() - t0;
      drpc_value_free(out);
    }
    qsort(l, (size_t)iters, sizeof *l, cmp_d);
    snprintf(res[nres].key, sizeof res[nres].key, "noop_sync_p50_us");
    res[nres++].value = l[iters / 2] * 1e6;
    snprintf(res[nres].key, sizeof res[nres].key, "noop_sync_p99_us");
    res[nres++].value = l[(long long)(iters * 0.99)] * 1e6;
    free(l);
  }
  if (thr) {
    drpc_future **fs = malloc((size_t)calls * sizeof *fs);
    double t0 = now_s();
    for (long long i = 0; i < calls; i++)
      if (drpc_rpc_async(a, "w1", DRPC_FUNCTION, "noop", NULL, NULL, -1, &fs[i],
                         &err)) {
        fprintf(stderr, "drpc bench: %s\n", drpc_error_message(&err));
        failed = 1;
        for (long long k = 0; k < i; k++)
          drpc_future_wait(fs[k], -1), drpc_future_decref(fs[k]);
        free(fs);
        goto done;
      }
    int rc = drpc_future_wait_all(fs, (size_t)calls, -1, &err);
    double dt = now_s() - t0;
    for (long long i = 0; i < calls; i++)
      drpc_future_decref(fs[i]);
    free(fs);
    if (rc) {
      fprintf(stderr, "drpc bench: %s\n", drpc_error_message(&err));
      failed = 1;
      goto done;
    }
    snprintf(res[nres].key, sizeof res[nres].key, "async_calls_per_s");
    res[nres++].value = (double)calls / dt;
  }
  if (bw) {
    static const long long sizes[] = {1ll << 10, 1ll << 16, 1ll << 20,
                                      1ll << 24, 1ll << 26, 1ll << 27,
                                      1ll << 28, 1ll << 29};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
      long long size = sizes[k];
      if (size > max_bytes)
        break;
      int64_t shape[1] = {size / 4};
      drpc_tensor *t = drpc_tensor_new(DRPC_FLOAT32, 1, shape);
      float *p = drpc_tensor_data(t);
      for (int64_t i = 0; i < shape[0]; i++)
        p[i] = 1.0f;
      if (dev.type == DRPC_DEVICE_CUDA) {
        drpc_tensor *g = drpc_tensor_to(t, dev, NULL, &err);
        drpc_tensor_decref(t);
        if (!g || drpc_stream_sync(drpc_stream_current(dev.index), &err)) {
          fprintf(stderr, "drpc bench: %s: %s\n", devname,
                  drpc_error_message(&err));
          drpc_tensor_decref(g);
          failed = 1;
          goto done;
        }
        t = g;
      }
      drpc_value *args = drpc_value_list_of(1, drpc_value_tensor(t));
      drpc_tensor_decref(t);
      long long reps = (1ll << 31) / size;
      reps = reps < 5 ? 5 : reps > 500 ? 500 : reps;
      for (int i = 0; i < 3; i++) {
        drpc_rpc_sync(a, "w1", DRPC_FUNCTION, "echo", args, NULL, -1, &out,
                      &err);
        drpc_value_free(out);
      }
      double t0 = now_s();
      for (long long i = 0; i < reps; i++) {
        if (drpc_rpc_sync(a, "w1", DRPC_FUNCTION, "echo", args, NULL, -1, &out,
                          &err)) {
          fprintf(stderr, "drpc bench: echo %lld: %s\n", size,
                  drpc_error_message(&err));
          failed = 1;
          drpc_value_free(args);
          goto done;
        }
        drpc_value_free(out);
      }
      /* As torch.cuda.synchronize() after PyTorch's loop. */
      if (dev.type == DRPC_DEVICE_CUDA)
        drpc_stream_sync(drpc_stream_current(dev.index), NULL);
      double dt = (now_s() - t0) / (double)reps;
      drpc_value_free(args);
      const char *pre = dev.type == DRPC_DEVICE_CUDA ? devname : "";
      const char *sep = dev.type == DRPC_DEVICE_CUDA ? "_" : "";
      snprintf(res[nres].key, sizeof res[nres].key, "echo_%s%s%lldB_GBps", pre,
               sep, size);
      res[nres++].value = 2.0 * (double)size / dt / 1e9;
      snprintf(res[nres].key, sizeof res[nres].key, "echo_%s%s%lldB_us", pre,
               sep, size);
      res[nres++].value = dt * 1e6;
    }
  }
  if (rr && bench_rref(a, iters, res, &nres) != 0)
    failed = 1;
  if (dev.type == DRPC_DEVICE_CUDA) {
    drpc_value *dbg = drpc_agent_debug_info(a);
    static const char *const keys[] = {"cuda.tensors_shared",
                                       "cuda.tensors_staged"};
    for (int k = 0; k < 2; k++) {
      const drpc_value *v = drpc_dict_get(dbg, keys[k]);
      snprintf(res[nres].key, sizeof res[nres].key, "%s", keys[k]);
      res[nres++].value = v && v->kind == DRPC_VAL_STR ? atof(v->u.s.data) : -1;
    }
    drpc_value_free(dbg);
  }
done:
  drpc_error_clear(&err);
  if (drpc_shutdown(a, true, 60, &err)) {
    fprintf(stderr, "drpc bench: shutdown: %s\n", drpc_error_message(&err));
    drpc_error_clear(&err);
    failed = 1;
  }
  int status = 0;
  waitpid(child, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status))
    failed = 1;
  if (record) {
    double t0 = now_s();
    if (drpc_tools_record_end() || drpc_tools_record_replay(record, 2))
      failed = 1;
    snprintf(res[nres].key, sizeof res[nres].key, "replay_s");
    res[nres++].value = now_s() - t0;
  }
  if (json) {
    printf("{\n \"drpc\": \"%s\",\n \"device\": \"%s\",\n \"cuda\": \"%s\"",
           DRPC_VERSION_STRING, devname, drpc_gpu_describe());
    for (int i = 0; i < nres; i++)
      printf(",\n \"%s\": %.6g", res[i].key, res[i].value);
    printf("\n}\n");
  } else {
    for (int i = 0; i < nres; i++)
      printf("%-28s %12.3f\n", res[i].key, res[i].value);
  }
  return failed;
}
