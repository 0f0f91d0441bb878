/* `drpc sim` (scenarios in the simulator: single seeds, determinism checks,
 * sweeps over many seeds in parallel, shrinking), `drpc run` (the same
 * scenarios as real processes over loopback) and `drpc bench sim`. */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "drpc/gpu.h"
#include "drpc/sim.h"
#include "drpc/trace.h"
#include "scenario.h"
#include "tools.h"

/* The planted bug of the simulator's self-test (core/agent.c). */
extern int drpc_test_fault_skip_fail_on_reset;

/* Most seeds one sweep runs; most parallel jobs. */
#define MAX_SWEEP_SEEDS 100000000ull
#define MAX_JOBS 256
/* Runs one shrink may spend. */
#define SHRINK_BUDGET 300

static double wall(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct sim_opts {
  const char *scenario;
  int workers, iters;
  uint64_t seed, seed_to;
  bool have_seed, sweep, swarm, faults, determinism, shrink, verbose;
  bool plant, quiet;
  int jobs;
  int devices;     /* --devices: -1 when not given */
  double copy_Bps; /* --copy-GBps in B/s: 0 when not given */
  const char *schedule, *shrink_out, *dump, *record;
} sim_opts;

static void usage_sim(FILE *f) {
  fprintf(
      f,
      "usage: drpc sim <scenario> [--workers N] [--iters N]\n"
      "                [--seed S | --seeds A..B [--jobs J]] [--swarm]\n"
      "                [--no-faults] [--schedule FILE] [--dump-schedule FILE]\n"
      "                [--check-determinism] [--shrink [--shrink-out FILE]]\n"
      "                [--verbose] [--plant-bug] [--record FILE.db]\n"
      "                [--devices N] [--copy-GBps G]\n"
      "       drpc sim --list\n"
      "\n"
      "Runs a scenario in the deterministic simulator: every worker, its\n"
      "agent and its functions in one process on virtual time, with a\n"
      "modelled network and faults drawn from the seed (--swarm: some fault\n"
      "kinds off, the rest at very different rates). Checks: no future\n"
      "completes twice or never, no request runs twice, every worker's\n"
      "work is done, and workers finish within a bound once faults stop.\n"
      "A violation prints the seed, the virtual time and the command that\n"
      "reproduces it. --seeds sweeps a range (forking J jobs); --shrink\n"
      "reduces a failing seed's faults to a minimal schedule, written as\n"
      "JSON that --schedule replays. --plant-bug turns on the core's\n"
      "test-only bug (lost connections do not fail their calls).\n"
      "--record FILE.db records the run (every event, for drpc replay and\n"
      "drpc trace export); in a sweep, each failing seed's run is recorded\n"
      "to FILE.seed<N>.db.\n"
      "--devices N gives the run N simulated CUDA devices (simcuda, shared\n"
      "by every worker as on one host; 0: none) on the virtual clock:\n"
      "copies take bytes / bandwidth, kernels a launch cost plus a cost per\n"
      "element, and a host sync parks the worker until the device is done.\n"
      "Scenarios that use devices get 2 by default (--swarm: 1 to 4, with\n"
      "bandwidths and the channel drawn). --copy-GBps sets the bandwidth of\n"
      "host <-> device copies in GB/s.\n");
}

static void list_scenarios(FILE *f) {
  size_t n;
  const drpc_scenario *const *all = drpc_scenario_list(&n);
  for (size_t i = 0; i < n; i++)
    fprintf(f, "  %-15s %s\n", all[i]->name, all[i]->summary);
}

static void repro(const sim_opts *o, uint64_t seed, char *buf, size_t n) {
  if (o->schedule) {
    snprintf(buf, n, "drpc sim %s --schedule %s%s", o->scenario, o->schedule,
             o->plant ? " --plant-bug" : "");
    return;
  }
  char iters[32] = "";
  if (o->iters)
    snprintf(iters, sizeof iters, " --iters %d", o->iters);
  char dev[64] = "";
  int w = 0;
  if (o->devices >= 0)
    w = snprintf(dev, sizeof dev, " --devices %d", o->devices);
  if (o->copy_Bps > 0 && w >= 0 && (size_t)w < sizeof dev)
    snprintf(dev + w, sizeof dev - (size_t)w, " --copy-GBps %g",
             o->copy_Bps / 1e9);
  snprintf(buf, n, "drpc sim %s --workers %d%s --seed %llu%s%s%s%s",
           o->scenario, o->workers, iters, (unsigned long long)seed,
           o->swarm ? " --swarm" : "", o->faults ? "" : " --no-faults", dev,
           o->plant ? " --plant-bug" : "");
}

static char *read_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  size_t cap = 4096, len = 0;
  char *buf = malloc(cap);
  size_t got;
  while (buf && (got = fread(buf + len, 1, cap - len - 1, f)) > 0) {
    len += got;
    if (len + 1 == cap) {
      if (cap >= (64u << 20)) {
        free(buf);
        buf = NULL;
        break;
      }
      char *nb = realloc(buf, cap * 2);
      if (!nb) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = nb;
      cap *= 2;
    }
  }
  fclose(f);
  if (buf)
    buf[len] = 0;
  return buf;
}

static int write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (!f)
    return -1;
  int rc = fputs(text, f) < 0 ? -1 : 0;
  if (fputc('\n', f) == EOF)
    rc = -1;
  if (fclose(f))
    rc = -1;
  return rc;
}

/* The configuration of seed under o: drawn, or the schedule file's. */
static int make_config(const sim_opts *o, uint64_t seed, drpc_sim_config *c,
                       drpc_error *err) {
  if (o->schedule) {
    char *text = read_file(o->schedule);
    if (!text)
      return drpc_error_set(err, DRPC_EIO, "cannot read %s: %s", o->schedule,
                            strerror(errno));
    int rc = drpc_sim_config_from_json(c, text, err);
    free(text);
    return rc;
  }
  int rc = drpc_sim_config_draw(c, o->scenario, o->workers, o->iters, seed,
                                o->swarm, o->faults, err);
  if (rc == 0 && o->devices >= 0)
    c->devices = o->devices;
  if (rc == 0 && o->copy_Bps > 0)
    c->dev_h2d_Bps = c->dev_d2h_Bps = o->copy_Bps;
  return rc;
}

static int run_config(const sim_opts *o, drpc_sim_config *c, drpc_sim_result *r,
                      drpc_error *err) {
  c->verbose = o->verbose;
  drpc_test_fault_skip_fail_on_reset = o->plant;
  int rc = drpc_sim_run(c, r, err);
  drpc_test_fault_skip_fail_on_reset = 0;
  return rc;
}

/* Runs seed once more in a child, recording it to path; the child exits 1
 * when the run fails its checks again (it should: runs are deterministic),
 * 2 when it cannot record. */
static int record_seed(const sim_opts *o, uint64_t seed, const char *path) {
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0)
    return 2;
  if (pid == 0) {
    drpc_sim_config c;
    drpc_error err = DRPC_ERROR_INIT;
    drpc_recorder *rec = NULL;
    drpc_run_info ri = {0};
    if (make_config(o, seed, &c, &err))
      _exit(2);
    char *json = drpc_sim_config_to_json(&c);
    ri.backend = "sim";
    ri.scenario = c.scenario;
    ri.seed = c.seed;
    ri.has_seed = true;
    ri.commit = drpc_sim_commit();
    ri.config_json = json;
    if (drpc_recorder_open(&rec, path, &ri, false, true, &err))
      _exit(2);
    free(json);
    for (int i = 0; i < c.workers; i++) {
      char name[32];
      snprintf(name, sizeof name, "w%d", i);
      drpc_recorder_node(rec, (int16_t)i, name);
    }
    c.record = drpc_recorder_sink;
    c.record_ctx = rec;
    drpc_sim_result r;
    if (run_config(o, &c, &r, &err))
      _exit(2);
    if (drpc_recorder_close(rec, &err))
      _exit(2);
    _exit(r.ok ? 0 : 1);
  }
  int st = 0;
  if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st))
    return 2;
  return WEXITSTATUS(st);
}

static void print_result(const sim_opts *o, const drpc_sim_config *c,
                         const drpc_sim_result *r, FILE *f) {
  double ratio = r->wall_s > 0 ? (double)r->sim_ns / 1e9 / r->wall_s : 0;
  fprintf(f,
          "run: %s  sim %.6f s in %.3f s wall (%.0fx), %llu events, %llu "
          "deliveries, %llu calls, %llu executions, %llu faults, %d "
          "crashed, %d restarted, %llu failed calls tolerated, hash "
          "%016llx\n",
          r->ok ? "ok" : "FAIL", (double)r->sim_ns / 1e9, r->wall_s, ratio,
          (unsigned long long)r->events, (unsigned long long)r->deliveries,
          (unsigned long long)r->calls, (unsigned long long)r->executions,
          (unsigned long long)r->faults_applied, r->crashed, r->restarted,
          (unsigned long long)r->tolerated, (unsigned long long)r->hash);
  /* A run the faults kept from working passes its checks trivially: say
   * so rather than a bare ok. */
  if (r->start_failed)
    fprintf(f,
            "note: %d worker start%s failed under faults (tolerated; such a "
            "worker did no work), first: %s\n",
            r->start_failed, r->start_failed == 1 ? "" : "s", r->start_error);
  if (r->ok && r->calls == 0)
    fprintf(f, "note: no worker made a call in this run\n");
  if (c->devices > 0)
    fprintf(f,
            "devices: %llu ops timed (%.6f s of device time), %llu bytes "
            "copied, %llu host syncs waited %.6f s, %llu syncs outside a "
            "fiber\n",
            (unsigned long long)r->dev_ops, (double)r->dev_busy_ns / 1e9,
            (unsigned long long)r->dev_copy_bytes,
            (unsigned long long)r->dev_syncs_slept,
            (double)r->dev_slept_ns / 1e9,
            (unsigned long long)r->dev_syncs_unslept);
  if (r->rref_nodes_left)
    fprintf(f,
            "rrefs left at shutdown on %d workers: %lld owner RRefs, %lld "
            "pending futures, %lld pending users, %lld forks\n",
            r->rref_nodes_left, (long long)r->rref_left[0],
            (long long)r->rref_left[1], (long long)r->rref_left[2],
            (long long)r->rref_left[3]);
  if (!r->ok) {
    char cmd[512];
    repro(o, c->seed, cmd, sizeof cmd);
    fprintf(f, "VIOLATION seed=%llu t=%.9fs: %s\n  reproduce: %s\n",
            (unsigned long long)c->seed, (double)r->violation_ns / 1e9, r->what,
            cmd);
  }
}

/* Runs c twice and compares the event traces. */
static int check_determinism(const sim_opts *o, drpc_sim_config *c, FILE *f) {
  drpc_sim_result r1, r2;
  drpc_error err = DRPC_ERROR_INIT;
  c->trace = true;
  if (run_config(o, c, &r1, &err) || run_config(o, c, &r2, &err)) {
    fprintf(stderr, "drpc sim: %s\n", drpc_error_message(&err));
    drpc_error_clear(&err);
    return 2;
  }
  int rc = 0;
  size_t i = drpc_sim_trace_diff(&r1, &r2);
  if (i == SIZE_MAX) {
    fprintf(f, "determinism: ok, %llu events twice, hash %016llx\n",
            (unsigned long long)r1.events, (unsigned long long)r1.hash);
  } else {
    char a[256] = "(no event)", b[256] = "(no event)";
    if (i < r1.ntrace)
      drpc_sim_trace_format(&r1.trace[i], a, sizeof a);
    if (i < r2.ntrace)
      drpc_sim_trace_format(&r2.trace[i], b, sizeof b);
    fprintf(f,
            "determinism: MISMATCH seed=%llu at event #%zu\n  run 1: %s\n  "
            "run 2: %s\n",
            (unsigned long long)c->seed, i, a, b);
    rc = 1;
  }
  print_result(o, c, &r1, f);
  if (!r1.ok)
    rc = 1;
  drpc_sim_result_clear(&r1);
  drpc_sim_result_clear(&r2);
  return rc;
}

/* ---- shrinking ---------------------------------------------------------- */

/* Whether violation b is the same as a with the numbers (times, ids,
 * worker names' indices) left out: shrinking must keep the failure it
 * started from, not wander off to another one. */
static bool same_failure(const char *a, const char *b) {
  for (int n = 0; n < 80;) {
    while (*a >= '0' && *a <= '9')
      a++;
    while (*b >= '0' && *b <= '9')
      b++;
    if (*a != *b)
      return false;
    if (!*a)
      return true;
    a++;
    b++;
    n++;
  }
  return true;
}

/* Runs c; true when it fails as `want` names. */
static bool trial_fails(const sim_opts *o, drpc_sim_config *c, const char *want,
                        int *runs) {
  drpc_sim_result r;
  drpc_error err = DRPC_ERROR_INIT;
  (*runs)++;
  bool fails =
      run_config(o, c, &r, &err) == 0 && !r.ok && same_failure(want, r.what);
  drpc_sim_result_clear(&r);
  drpc_error_clear(&err);
  return fails;
}

static bool has_sides(int kind) {
  return kind == DRPC_SIM_PARTITION || kind == DRPC_SIM_ONEWAY ||
         kind == DRPC_SIM_CLOG || kind == DRPC_SIM_RESET;
}

static bool has_duration(int kind) {
  return kind == DRPC_SIM_PARTITION || kind == DRPC_SIM_ONEWAY ||
         kind == DRPC_SIM_CLOG || kind == DRPC_SIM_SLOW;
}

/* Reduces c's fault schedule to a smaller one that fails the same way:
 * drop chunks of faults, halving the chunk size (delta debugging), then
 * single faults; then make each fault left smaller: nodes taken off its
 * sides one at a time, its duration halved while it still fails. All
 * within SHRINK_BUDGET runs. */
static int shrink(const sim_opts *o, drpc_sim_config *c, FILE *f) {
  int runs = 0;
  size_t start = c->nfaults;
  drpc_sim_fault *cur = c->faults;
  size_t n = c->nfaults;
  char want[sizeof((drpc_sim_result *)0)->what];
  {
    drpc_sim_result r;
    drpc_error err = DRPC_ERROR_INIT;
    runs++;
    int rc = run_config(o, c, &r, &err);
    bool ok = rc != 0 || r.ok;
    snprintf(want, sizeof want, "%s", rc ? "" : r.what);
    drpc_sim_result_clear(&r);
    drpc_error_clear(&err);
    if (ok) {
      fprintf(f, "shrink: the run does not fail; nothing to shrink\n");
      return 0;
    }
  }
  drpc_sim_fault *trial = malloc((n ? n : 1) * sizeof *trial);
  if (!trial)
    return 2;
  for (size_t chunk = n / 2 ? n / 2 : 1; chunk >= 1 && runs < SHRINK_BUDGET;
       chunk /= 2) {
    for (size_t i = 0; i < n && runs < SHRINK_BUDGET;) {
      size_t end = i + chunk < n ? i + chunk : n;
      size_t m = 0;
      for (size_t k = 0; k < n; k++)
        if (k < i || k >= end)
          trial[m++] = cur[k];
      c->faults = trial;
      c->nfaults = m;
      if (trial_fails(o, c, want, &runs)) {
        /* Keep the smaller schedule; the same i now names the next chunk. */
        memcpy(cur, trial, m * sizeof *cur);
        n = m;
      } else {
        i = end;
      }
    }
    if (chunk == 1)
      break;
  }
  free(trial);
  c->faults = cur;
  c->nfaults = n;
  int nodes_off = 0, halved = 0;
  int bits = c->workers < 64 ? c->workers : 64;
  for (size_t k = 0; k < n && runs < SHRINK_BUDGET; k++) {
    drpc_sim_fault *ft = &cur[k];
    if (has_sides(ft->kind)) {
      uint64_t *side[2] = {&ft->a, &ft->b};
      for (int sd = 0; sd < 2; sd++)
        for (int bit = 0; bit < bits && runs < SHRINK_BUDGET; bit++) {
          uint64_t m = *side[sd] & ((bits == 64 ? 0 : 1ull << bits) - 1);
          if (!(m >> bit & 1) || (m & (m - 1)) == 0)
            continue; /* not there, or the side's last node */
          uint64_t save = *side[sd];
          *side[sd] &= ~(1ull << bit);
          if (trial_fails(o, c, want, &runs))
            nodes_off++;
          else
            *side[sd] = save;
        }
    }
    while (has_duration(ft->kind) && ft->dur_ns > 1000 &&
           runs < SHRINK_BUDGET) {
      uint64_t save = ft->dur_ns;
      ft->dur_ns /= 2;
      if (!trial_fails(o, c, want, &runs)) {
        ft->dur_ns = save;
        break;
      }
      halved++;
    }
  }
  fprintf(f,
          "shrink: %zu faults -> %zu in %d runs (%d nodes taken off fault "
          "sides, %d durations halved)\n",
          start, n, runs, nodes_off, halved);
  return 0;
}

static int shrink_and_write(const sim_opts *o, drpc_sim_config *c, FILE *f) {
  if (shrink(o, c, f))
    return 2;
  char path[512];
  if (o->shrink_out)
    snprintf(path, sizeof path, "%s", o->shrink_out);
  else
    snprintf(path, sizeof path, "drpc-sim-%s-%llu-shrunk.json", c->scenario,
             (unsigned long long)c->seed);
  char *text = drpc_sim_config_to_json(c);
  if (!text || write_file(path, text)) {
    free(text);
    fprintf(stderr, "drpc sim: cannot write %s\n", path);
    return 2;
  }
  free(text);
  drpc_sim_result r;
  drpc_error err = DRPC_ERROR_INIT;
  if (run_config(o, c, &r, &err) == 0)
    fprintf(f,
            "shrunk schedule: %s (%zu faults, %s: %s)\n  replay: drpc sim %s "
            "--schedule %s%s\n",
            path, c->nfaults, r.ok ? "passes" : "fails", r.ok ? "-" : r.what,
            c->scenario, path, o->plant ? " --plant-bug" : "");
  drpc_sim_result_clear(&r);
  drpc_error_clear(&err);
  return 0;
}

/* ---- sweeps ---------------------------------------------------------------
 */

typedef struct job_pipe {
  pid_t pid;
  int fd;
  char buf[4096];
  size_t len;
  uint64_t running_seed;
  bool has_running;
} job_pipe;

typedef struct failure {
  uint64_t seed;
  char what[600];
} failure;

/* A child's share: seeds first, first + jobs, ... each reported on one
 * line ("S seed" when it starts, "R seed ok sim_ns wall_s what" after). */
static void sweep_child(const sim_opts *o, int fd, uint64_t first,
                        uint64_t step) {
  bool abandoned = false;
  for (uint64_t seed = first; seed <= o->seed_to; seed += step) {
    char line[1024];
    int len = snprintf(line, sizeof line, "S %llu\n", (unsigned long long)seed);
    if (write(fd, line, (size_t)len) < 0)
      _exit(3);
    drpc_sim_config c;
    drpc_sim_result r;
    memset(&r, 0, sizeof r);
    drpc_error err = DRPC_ERROR_INIT;
    bool ok = false;
    const char *what = "";
    uint64_t sim_ns = 0;
    double wall_s = 0;
    if (make_config(o, seed, &c, &err) == 0) {
      if (run_config(o, &c, &r, &err) == 0) {
        ok = r.ok;
        what = r.what;
        sim_ns = r.sim_ns;
        wall_s = r.wall_s;
        abandoned |= r.abandoned;
        if (ok && o->determinism) {
          drpc_sim_result r2;
          if (run_config(o, &c, &r2, &err) == 0 && r2.hash != r.hash) {
            ok = false;
            snprintf(r.what, sizeof r.what,
                     "determinism: two runs hashed %016llx and %016llx "
                     "(rerun with --check-determinism for the first "
                     "differing event)",
                     (unsigned long long)r.hash, (unsigned long long)r2.hash);
          }
          abandoned |= r2.abandoned;
        }
      } else {
        what = drpc_error_message(&err);
      }
      drpc_sim_config_clear(&c);
    } else {
      what = drpc_error_message(&err);
    }
    len = snprintf(line, sizeof line, "R %llu %d %llu %.6f t=%.6fs %s\n",
                   (unsigned long long)seed, ok ? 1 : 0,
                   (unsigned long long)sim_ns, wall_s,
                   ok ? 0.0 : (double)r.violation_ns / 1e9, what);
    for (char *p = line; p < line + len - 1; p++)
      if (*p == '\n')
        *p = ' ';
    if (write(fd, line, (size_t)len) < 0)
      _exit(3);
    drpc_error_clear(&err);
  }
  close(fd);
  /* Objects held by killed or stuck fibers were abandoned on purpose (see
   * drpc_sim_result.abandoned): skip the leak check then. */
  if (abandoned)
    _exit(0);
  exit(0);
}

/* Failing seeds of a sweep that --record records (the first ones). */
#define MAX_RECORDED_FAILURES 10

static int sweep(const sim_opts *o) {
  uint64_t nseeds = o->seed_to - o->seed + 1;
  int jobs = o->jobs > 0 ? o->jobs : 1;
  if ((uint64_t)jobs > nseeds)
    jobs = (int)nseeds;
  job_pipe *jp = calloc((size_t)jobs, sizeof *jp);
  size_t fcap = 64, nfail = 0;
  failure *fails = malloc(fcap * sizeof *fails);
  if (!jp || !fails) {
    free(jp);
    free(fails);
    return 2;
  }
  double t0 = wall(), last = 0;
  fflush(NULL);
  for (int j = 0; j < jobs; j++) {
    int p[2];
    if (pipe(p)) {
      perror("pipe");
      return 2;
    }
    pid_t pid = fork();
    if (pid < 0) {
      perror("fork");
      return 2;
    }
    if (pid == 0) {
      close(p[0]);
      for (int k = 0; k < j; k++)
        close(jp[k].fd);
      sweep_child(o, p[1], o->seed + (uint64_t)j, (uint64_t)jobs);
    }
    close(p[1]);
    jp[j].pid = pid;
    jp[j].fd = p[0];
  }
  uint64_t done = 0, sim_ns = 0;
  double wall_sum = 0;
  int open = jobs;
  bool tty = isatty(2);
  struct pollfd *pfd = calloc((size_t)jobs, sizeof *pfd);
  while (open > 0 && pfd) {
    for (int j = 0; j < jobs; j++) {
      pfd[j].fd = jp[j].fd;
      pfd[j].events = POLLIN;
    }
    if (poll(pfd, (nfds_t)jobs, 500) < 0 && errno != EINTR)
      break;
    for (int j = 0; j < jobs; j++) {
      if (jp[j].fd < 0 || !(pfd[j].revents & (POLLIN | POLLHUP | POLLERR)))
        continue;
      ssize_t got = read(jp[j].fd, jp[j].buf + jp[j].len,
                         sizeof jp[j].buf - 1 - jp[j].len);
      if (got <= 0) {
        close(jp[j].fd);
        jp[j].fd = -1;
        open--;
        int st = 0;
        waitpid(jp[j].pid, &st, 0);
        if (jp[j].has_running) {
          /* The child died inside a run: that seed crashed the process. */
          if (nfail == fcap) {
            fcap *= 2;
            failure *nf = realloc(fails, fcap * sizeof *fails);
            if (nf)
              fails = nf;
          }
          if (nfail < fcap) {
            fails[nfail].seed = jp[j].running_seed;
            snprintf(fails[nfail].what, sizeof fails[nfail].what,
                     "the simulator process died (%s %d)",
                     WIFSIGNALED(st) ? "signal" : "exit status",
                     WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
            nfail++;
          }
          done++;
        }
        continue;
      }
      jp[j].len += (size_t)got;
      jp[j].buf[jp[j].len] = 0;
      char *line = jp[j].buf, *nl;
      while ((nl = strchr(line, '\n'))) {
        *nl = 0;
        unsigned long long seed = 0, sns = 0;
        int ok = 0, off = 0;
        double ws = 0;
        if (line[0] == 'S' && sscanf(line, "S %llu", &seed) == 1) {
          jp[j].running_seed = seed;
          jp[j].has_running = true;
        } else if (line[0] == 'R' && sscanf(line, "R %llu %d %llu %lf %n",
                                            &seed, &ok, &sns, &ws, &off) == 4) {
          jp[j].has_running = false;
          done++;
          sim_ns += sns;
          wall_sum += ws;
          if (!ok) {
            if (nfail == fcap) {
              fcap *= 2;
              failure *nf = realloc(fails, fcap * sizeof *fails);
              if (nf)
                fails = nf;
            }
            if (nfail < fcap) {
              fails[nfail].seed = seed;
              snprintf(fails[nfail].what, sizeof fails[nfail].what, "%s",
                       line + off);
              nfail++;
            }
          }
        }
        line = nl + 1;
      }
      jp[j].len = strlen(line);
      memmove(jp[j].buf, line, jp[j].len + 1);
    }
    double now = wall();
    if (!o->quiet && (now - last >= (tty ? 0.2 : 2.0) || open == 0)) {
      last = now;
      double ratio = wall_sum > 0 ? (double)sim_ns / 1e9 / wall_sum : 0;
      fprintf(stderr,
              "%s[sweep %s] %llu/%llu seeds, %zu failing, sim/wall %.0fx, "
              "%.1f s%s",
              tty ? "\r" : "", o->scenario, (unsigned long long)done,
              (unsigned long long)nseeds, nfail, ratio, now - t0,
              tty ? "" : "\n");
    }
  }
  if (tty && !o->quiet)
    fprintf(stderr, "\n");
  free(pfd);
  double elapsed = wall() - t0;
  double ratio = wall_sum > 0 ? (double)sim_ns / 1e9 / wall_sum : 0;
  printf("sweep %s seeds %llu..%llu%s, %d workers, %d jobs, commit %s: %llu "
         "done, %zu failing; sim %.3f s in %.3f s of runs (%.0fx), %.2f s "
         "elapsed\n",
         o->scenario, (unsigned long long)o->seed,
         (unsigned long long)o->seed_to, o->swarm ? " (swarm)" : "", o->workers,
         jobs, drpc_sim_commit(), (unsigned long long)done, nfail,
         (double)sim_ns / 1e9, wall_sum, ratio, elapsed);
  /* Children report in their own order: list failures by seed. */
  for (size_t i = 1; i < nfail; i++)
    for (size_t k = i; k > 0 && fails[k - 1].seed > fails[k].seed; k--) {
      failure t = fails[k];
      fails[k] = fails[k - 1];
      fails[k - 1] = t;
    }
  if (nfail)
    printf("failing seeds:\n");
  for (size_t i = 0; i < nfail; i++) {
    char cmd[512];
    repro(o, fails[i].seed, cmd, sizeof cmd);
    printf("  seed %llu: %s\n    reproduce: %s\n",
           (unsigned long long)fails[i].seed, fails[i].what, cmd);
    if (o->record && i < MAX_RECORDED_FAILURES) {
      /* A failure reproduces from its recording alone, too. */
      char path[4096];
      size_t len = strlen(o->record);
      if (len > 3 && strcmp(o->record + len - 3, ".db") == 0)
        len -= 3;
      snprintf(path, sizeof path, "%.*s.seed%llu.db", (int)len, o->record,
               (unsigned long long)fails[i].seed);
      int rr = record_seed(o, fails[i].seed, path);
      printf("    recording: %s%s\n", path,
             rr == 1   ? (o->plant ? " (drpc replay --plant-bug / drpc trace "
                                     "export it)"
                                   : " (drpc replay / drpc trace export it)")
             : rr == 0 ? " (the recorded run passed: not reproduced)"
                       : " (could not record)");
    }
  }
  int rc = nfail ? 1 : 0;
  bool shrunk = false;
  if (nfail && o->shrink) {
    drpc_sim_config c;
    drpc_error err = DRPC_ERROR_INIT;
    if (make_config(o, fails[0].seed, &c, &err) == 0) {
      printf("shrinking seed %llu\n", (unsigned long long)fails[0].seed);
      shrink_and_write(o, &c, stdout);
      drpc_sim_config_clear(&c);
      shrunk = true;
    }
    drpc_error_clear(&err);
  }
  free(fails);
  free(jp);
  if (shrunk) {
    /* Shrinking ran failing runs in this process, which abandon what
     * their stranded fibers owned (as the OS reclaims a killed process):
     * skip the exit-time leak check, as a single failing run does. */
    fflush(NULL);
    _exit(rc);
  }
  return rc;
}

/* ---- drpc sim -------------------------------------------------------------
 */

static int parse_seeds(const char *s, uint64_t *a, uint64_t *b) {
  char *end;
  errno = 0;
  unsigned long long x = strtoull(s, &end, 10);
  if (errno || end == s || strncmp(end, "..", 2) != 0)
    return -1;
  const char *t = end + 2;
  unsigned long long y = strtoull(t, &end, 10);
  if (errno || end == t || *end || y < x || y - x >= MAX_SWEEP_SEEDS)
    return -1;
  *a = x;
  *b = y;
  return 0;
}

int drpc_cmd_sim(int argc, char **argv) {
  static const struct option opts[] = {
      {"workers", required_argument, 0, 'w'},
      {"iters", required_argument, 0, 'i'},
      {"seed", required_argument, 0, 's'},
      {"seeds", required_argument, 0, 'S'},
      {"swarm", no_argument, 0, 'W'},
      {"no-faults", no_argument, 0, 'n'},
      {"jobs", required_argument, 0, 'j'},
      {"schedule", required_argument, 0, 'f'},
      {"dump-schedule", required_argument, 0, 'd'},
      {"check-determinism", no_argument, 0, 'D'},
      {"shrink", no_argument, 0, 'k'},
      {"shrink-out", required_argument, 0, 'o'},
      {"verbose", no_argument, 0, 'v'},
      {"quiet", no_argument, 0, 'q'},
      {"plant-bug", no_argument, 0, 'P'},
      {"record", required_argument, 0, 'R'},
      {"devices", required_argument, 0, 'G'},
      {"copy-GBps", required_argument, 0, 'B'},
      {"list", no_argument, 0, 'l'},
      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  sim_opts o = {0};
  o.faults = true;
  o.jobs = 1;
  o.devices = -1;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'w':
      o.workers =
          (int)drpc_tools_parse_int("--workers", optarg, 1, DRPC_SIM_MAX_NODES);
      break;
    case 'i':
      o.iters = (int)drpc_tools_parse_int("--iters", optarg, 1, 100000000);
      break;
    case 's':
      o.seed = (uint64_t)drpc_tools_parse_int("--seed", optarg, 0, INT64_MAX);
      o.have_seed = true;
      break;
    case 'S':
      if (parse_seeds(optarg, &o.seed, &o.seed_to)) {
        fprintf(stderr, "drpc sim: --seeds expects A..B, got '%s'\n", optarg);
        return 2;
      }
      o.sweep = o.have_seed = true;
      break;
    case 'W':
      o.swarm = true;
      break;
    case 'n':
      o.faults = false;
      break;
    case 'j':
      o.jobs = (int)drpc_tools_parse_int("--jobs", optarg, 1, MAX_JOBS);
      break;
    case 'f':
      o.schedule = optarg;
      break;
    case 'd':
      o.dump = optarg;
      break;
    case 'D':
      o.determinism = true;
      break;
    case 'k':
      o.shrink = true;
      break;
    case 'o':
      o.shrink_out = optarg;
      break;
    case 'v':
      o.verbose = true;
      break;
    case 'q':
      o.quiet = true;
      break;
    case 'P':
      o.plant = true;
      break;
    case 'R':
      o.record = optarg;
      break;
    case 'G':
      o.devices = (int)drpc_tools_parse_int("--devices", optarg, 0,
                                            DRPC_SIM_MAX_DEVICES);
      break;
    case 'B':
      o.copy_Bps =
          drpc_tools_parse_double("--copy-GBps", optarg, 1e-6, 1e6) * 1e9;
      break;
    case 'l':
      list_scenarios(stdout);
      return 0;
    case 'h':
      usage_sim(stdout);
      printf("\nscenarios:\n");
      list_scenarios(stdout);
      return 0;
    default:
      usage_sim(stderr);
      return 2;
    }
  }
  if (optind + 1 != argc) {
    usage_sim(stderr);
    return 2;
  }
  o.scenario = argv[optind];
  const drpc_scenario *scn = drpc_scenario_find(o.scenario);
  if (!scn) {
    fprintf(stderr, "drpc sim: unknown scenario '%s'; scenarios:\n",
            o.scenario);
    list_scenarios(stderr);
    return 2;
  }
  if (scn->needs_rrefs) {
    fprintf(stderr,
            "drpc sim: scenario '%s' needs remote references, which the core "
            "does not have yet\n",
            o.scenario);
    return 2;
  }
  if (!o.workers)
    o.workers = scn->default_workers;
  if (!o.have_seed) {
    /* No seed given: pick one, and say which, so the run can be repeated. */
    o.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20);
    o.seed &= INT64_MAX;
  }
  if (o.sweep)
    return sweep(&o);

  drpc_sim_config cfg;
  drpc_error err = DRPC_ERROR_INIT;
  if (make_config(&o, o.seed, &cfg, &err)) {
    fprintf(stderr, "drpc sim: %s\n", drpc_error_message(&err));
    drpc_error_clear(&err);
    return 2;
  }
  if (o.schedule) {
    o.scenario = cfg.scenario;
    o.workers = cfg.workers;
  }
  printf("drpc sim %s: seed=%llu workers=%d commit=%s\n", cfg.scenario,
         (unsigned long long)cfg.seed, cfg.workers, drpc_sim_commit());
  drpc_sim_config_describe(&cfg, stdout);
  if (o.dump) {
    char *text = drpc_sim_config_to_json(&cfg);
    if (!text || write_file(o.dump, text))
      fprintf(stderr, "drpc sim: cannot write %s\n", o.dump);
    free(text);
  }
  int rc;
  bool abandoned = false;
  drpc_recorder *rec = NULL;
  if (o.record) {
    if (o.determinism) {
      fprintf(stderr, "drpc sim: --record records one run (--seed S), or "
                      "the failing seeds of a sweep\n");
      drpc_sim_config_clear(&cfg);
      return 2;
    }
    char *json = drpc_sim_config_to_json(&cfg);
    drpc_run_info ri = {0};
    ri.backend = "sim";
    ri.scenario = cfg.scenario;
    ri.seed = cfg.seed;
    ri.has_seed = true;
    ri.commit = drpc_sim_commit();
    ri.config_json = json;
    rc = drpc_recorder_open(&rec, o.record, &ri, false, true, &err);
    free(json);
    if (rc) {
      fprintf(stderr, "drpc sim: %s\n", drpc_error_message(&err));
      drpc_error_clear(&err);
      drpc_sim_config_clear(&cfg);
      return 2;
    }
    for (int i = 0; i < cfg.workers; i++) {
      char name[32];
      snprintf(name, sizeof name, "w%d", i);
      drpc_recorder_node(rec, (int16_t)i, name);
    }
    cfg.record = drpc_recorder_sink;
    cfg.record_ctx = rec;
  }
  if (o.determinism) {
    rc = check_determinism(&o, &cfg, stdout);
    abandoned = true; /* two runs: either may have abandoned objects */
  } else {
    drpc_sim_result r;
    if (run_config(&o, &cfg, &r, &err)) {
      fprintf(stderr, "drpc sim: %s\n", drpc_error_message(&err));
      drpc_error_clear(&err);
      drpc_recorder_close(rec, NULL);
      drpc_sim_config_clear(&cfg);
      return 2;
    }
    print_result(&o, &cfg, &r, stdout);
    rc = r.ok ? 0 : 1;
    abandoned = r.abandoned;
    if (rec) {
      drpc_recorder_stats st;
      drpc_recorder_stats_get(rec, &st);
      if (drpc_recorder_close(rec, &err)) {
        fprintf(stderr, "drpc sim: recording %s: %s\n", o.record,
                drpc_error_message(&err));
        drpc_error_clear(&err);
        rc = 2;
      } else {
        printf("recorded %llu events (%llu payload bytes) to %s\n",
               (unsigned long long)st.events, (unsigned long long)st.bytes,
               o.record);
      }
      rec = NULL;
      cfg.record = NULL;
    }
    drpc_sim_result_clear(&r);
    if (!r.ok && o.shrink) {
      shrink_and_write(&o, &cfg, stdout);
      abandoned = true;
    }
  }
  drpc_sim_config_clear(&cfg);
  fflush(NULL);
  /* Runs that killed or stranded fibers abandon what those fibers owned,
   * as the OS reclaims a killed process: skip the exit-time leak check. */
  if (abandoned)
    _exit(rc);
  return rc;
}

/* ---- drpc run: the same scenario as real processes ------------------------
 */

static atomic_int real_violations;

static void real_compute(const drpc_scn_host *h, drpc_agent *a, uint64_t ns) {
  (void)h;
  (void)a;
  struct timespec ts = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
  while (nanosleep(&ts, &ts) && errno == EINTR)
    ;
}

static void real_violation(const drpc_scn_host *h, drpc_agent *a,
                           const char *msg) {
  (void)h;
  (void)a;
  atomic_fetch_add(&real_violations, 1);
  fprintf(stderr, "VIOLATION: %s\n", msg);
}

static void usage_run(FILE *f) {
  fprintf(f, "usage: drpc run <scenario> [--workers N] [--iters N] "
             "[--timeout S]\n"
             "                      [--record FILE.db]\n"
             "\n"
             "Runs a scenario as N real processes over loopback TCP (rank 0 "
             "hosts\nthe store on a free port), with the scenario's own "
             "checks, and\nreports each worker's outcome. --timeout bounds "
             "the whole run\n(default 120 s). --record: each worker records to "
             "FILE.db.w<rank>.db,\nmerged into FILE.db at the end.\n");
}

/* A real worker of a dynamic-group scenario leaves (drpc_shutdown) and
 * joins again (drpc_init) with the same options. */
typedef struct real_worker {
  const char *name;
  int rank;
  const drpc_options *opts;
  drpc_agent *agent; /* the current one */
} real_worker;

static int real_rejoin(const drpc_scn_host *h, drpc_agent **a, uint64_t away_ns,
                       drpc_error *err) {
  real_worker *w = h->user;
  int rc = drpc_shutdown(*a, true, w->opts->shutdown_timeout_s, err);
  *a = w->agent = NULL;
  if (rc)
    return rc;
  real_compute(h, NULL, away_ns);
  if ((rc = drpc_init(&w->agent, w->name, w->rank, -1, w->opts, err)))
    return rc;
  *a = w->agent;
  return 0;
}

static int run_worker(const drpc_scenario *scn, int rank, int world, int iters,
                      const char *init, const char *record) {
  real_worker rw = {0};
  drpc_scn_host h = {real_compute, real_violation, false, iters, 0, &rw};
  h.rejoin = scn->dynamic ? real_rejoin : NULL;
  drpc_registry *reg = drpc_registry_default();
  if (scn->register_fns(reg, &h))
    return 1;
  drpc_options o;
  drpc_options_default(&o);
  o.init_method = init;
  o.rpc_timeout_s = scn->rpc_timeout_s;
  o.shutdown_timeout_s = scn->shutdown_timeout_s;
  char name[16];
  drpc_scn_worker_name(rank, name, sizeof name);
  drpc_agent *a = NULL;
  drpc_error err = DRPC_ERROR_INIT;
  /* Scenarios with devices: the backend DRPC_CUDA names (sim:N for
   * simcuda), installed after the fork as CUDA requires. */
  if (scn->min_devices > 0 || scn->options) {
    if (drpc_gpu_setup(NULL, &err)) {
      fprintf(stderr, "%s: DRPC_CUDA: %s\n", name, drpc_error_message(&err));
      return 1;
    }
    if (drpc_device_count() < scn->min_devices) {
      fprintf(stderr,
              "%s: scenario %s needs %d CUDA device%s, %s has %d (set "
              "DRPC_CUDA=sim:2 for simcuda)\n",
              name, scn->name, scn->min_devices,
              scn->min_devices == 1 ? "" : "s", drpc_gpu_describe(),
              drpc_device_count());
      return 1;
    }
    if (scn->options && scn->options(&o, rank, world, &err)) {
      fprintf(stderr, "%s: %s\n", name, drpc_error_message(&err));
      return 1;
    }
  }
  if (record) {
    char path[4096];
    snprintf(path, sizeof path, "%s.w%d.db", record, rank);
    if (drpc_tools_record_begin(path, scn->name, name, rank))
      return 1;
  }
  if (drpc_init(&a, name, rank, scn->dynamic ? -1 : world, &o, &err)) {
    fprintf(stderr, "%s: %s\n", name, drpc_error_message(&err));
    drpc_tools_record_end();
    return 1;
  }
  rw.name = name;
  rw.rank = rank;
  rw.opts = &o;
  rw.agent = a;
  int rc = scn->run(a, rank, world, &h, &err);
  if (rc)
    fprintf(stderr, "%s: program failed: %s\n", name, drpc_error_message(&err));
  drpc_error_clear(&err);
  a = rw.agent; /* a dynamic scenario may have joined again */
  if (a && drpc_shutdown(a, true, scn->shutdown_timeout_s, &err)) {
    fprintf(stderr, "%s: shutdown: %s\n", name, drpc_error_message(&err));
    rc = 1;
  }
  drpc_error_clear(&err);
  if (drpc_tools_record_end())
    rc = 1;
  drpc_gpu_teardown();
  return rc || atomic_load(&real_violations) ? 1 : 0;
}

int drpc_cmd_run(int argc, char **argv) {
  static const struct option opts[] = {{"workers", required_argument, 0, 'w'},
                                       {"iters", required_argument, 0, 'i'},
                                       {"timeout", required_argument, 0, 't'},
                                       {"record", required_argument, 0, 'R'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  int workers = 0, iters = 0;
  double timeout_s = 120;
  const char *record = NULL;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'w':
      workers = (int)drpc_tools_parse_int("--workers", optarg, 1, 256);
      break;
    case 'R':
      record = optarg;
      break;
    case 'i':
      iters = (int)drpc_tools_parse_int("--iters", optarg, 1, 100000000);
      break;
    case 't':
      timeout_s = drpc_tools_parse_double("--timeout", optarg, 0.1, 1e6);
      break;
    case 'h':
      usage_run(stdout);
      return 0;
    default:
      usage_run(stderr);
      return 2;
    }
  }
  if (optind + 1 != argc) {
    usage_run(stderr);
    return 2;
  }
  const drpc_scenario *scn = drpc_scenario_find(argv[optind]);
  if (!scn || scn->needs_rrefs || !scn->run) {
    fprintf(stderr, "drpc run: %s scenario '%s'\n",
            scn ? "not yet runnable:" : "unknown", argv[optind]);
    return 2;
  }
  if (!workers)
    workers = scn->default_workers;
  if (workers < scn->min_workers || workers > scn->max_workers) {
    fprintf(stderr, "drpc run: %s runs with %d to %d workers\n", scn->name,
            scn->min_workers, scn->max_workers);
    return 2;
  }
  if (!iters)
    iters = scn->default_iters;
  char init[64];
  snprintf(init, sizeof init, "tcp://127.0.0.1:%d", drpc_tools_free_port());
  pid_t *pids = calloc((size_t)workers, sizeof *pids);
  int *status = calloc((size_t)workers, sizeof *status);
  if (!pids || !status)
    return 2;
  double t0 = wall();
  fflush(NULL);
  for (int r = 0; r < workers; r++) {
    pids[r] = fork();
    if (pids[r] == 0)
      _exit(run_worker(scn, r, workers, iters, init, record));
    if (pids[r] < 0) {
      perror("fork");
      workers = r;
      break;
    }
  }
  int left = workers;
  bool timed_out = false;
  while (left > 0) {
    for (int r = 0; r < workers; r++) {
      if (pids[r] <= 0)
        continue;
      int st;
      if (waitpid(pids[r], &st, WNOHANG) == pids[r]) {
        status[r] = st;
        pids[r] = 0;
        left--;
      }
    }
    if (left > 0 && wall() - t0 > timeout_s) {
      timed_out = true;
      for (int r = 0; r < workers; r++)
        if (pids[r] > 0) {
          kill(pids[r], SIGKILL);
          waitpid(pids[r], &status[r], 0);
          pids[r] = -1;
        }
      break;
    }
    struct timespec tick = {0, 5 * 1000 * 1000};
    nanosleep(&tick, NULL);
  }
  int failed = 0;
  for (int r = 0; r < workers; r++) {
    int st = status[r];
    bool ok = pids[r] == 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    if (!ok) {
      failed++;
      fprintf(stderr, "drpc run %s: w%d %s\n", scn->name, r,
              pids[r] < 0       ? "killed at the timeout"
              : WIFSIGNALED(st) ? "died of a signal"
                                : "failed");
    }
  }
  printf("drpc run %s: %d workers over %s, %d iters: %s in %.3f s%s\n",
         scn->name, workers, init, iters, failed ? "FAIL" : "ok", wall() - t0,
         timed_out ? " (timed out)" : "");
  if (record) {
    if (drpc_tools_record_merge(record, record, workers))
      failed++;
    else
      printf("recorded to %s\n", record);
  }
  free(pids);
  free(status);
  return failed ? 1 : 0;
}

/* ---- drpc bench sim ------------------------------------------------------ */

#define MAX_REPEAT 21

static int cmp_wall(const void *x, const void *y) {
  double a = ((const drpc_sim_result *)x)->wall_s;
  double b = ((const drpc_sim_result *)y)->wall_s;
  return (a > b) - (a < b);
}

static void usage_bench_sim(FILE *f) {
  fprintf(f, "usage: drpc bench sim [--json] [--workers N] [--iters N]\n"
             "                      [--think-ms M] [--repeat R]\n"
             "\n"
             "Runs the ps scenario (a parameter server over RRefs; default 16 "
             "workers,\nno faults) in the simulator twice: dense (trainers "
             "update again at once)\nfor simulated message deliveries per "
             "wall second, and with M ms of\nwork per round (default 100, a "
             "training step) for the simulated-to-wall\ntime ratio. A third, "
             "dense run of fanout gives a line for comparison.\nEach run "
             "is made R times (default 5; they must hash the same)\nand the "
             "one of median wall time reported, with the range of\nthe "
             "dense rate.\n");
}

/* One fault-free bench run of scn. */
static int bench_run(const char *scn, int workers, int iters, uint64_t think_ns,
                     drpc_sim_result *r) {
  drpc_sim_config cfg;
  drpc_error err = DRPC_ERROR_INIT;
  int rc =
      drpc_sim_config_draw(&cfg, scn, workers, iters, 1, false, false, &err);
  if (rc == 0) {
    cfg.threads = 16;
    cfg.think_ns = think_ns;
    rc = drpc_sim_run(&cfg, r, &err);
    drpc_sim_config_clear(&cfg);
  }
  if (rc || !r->ok) {
    fprintf(stderr, "drpc bench sim: %s: %s\n", scn,
            rc ? drpc_error_message(&err) : r->what);
    rc = 1;
  }
  drpc_error_clear(&err);
  return rc;
}

int drpc_cmd_bench_sim(int argc, char **argv) {
  static const struct option opts[] = {{"json", no_argument, 0, 'j'},
                                       {"workers", required_argument, 0, 'w'},
                                       {"iters", required_argument, 0, 'i'},
                                       {"think-ms", required_argument, 0, 't'},
                                       {"repeat", required_argument, 0, 'r'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  bool json = false;
  int workers = 16, iters = 200, repeat = 5;
  double think_ms = 100;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'j':
      json = true;
      break;
    case 'w':
      workers =
          (int)drpc_tools_parse_int("--workers", optarg, 2, DRPC_SIM_MAX_NODES);
      break;
    case 'i':
      iters = (int)drpc_tools_parse_int("--iters", optarg, 1, 512);
      break;
    case 't':
      think_ms = drpc_tools_parse_double("--think-ms", optarg, 0, 1e6);
      break;
    case 'r':
      repeat = (int)drpc_tools_parse_int("--repeat", optarg, 1, MAX_REPEAT);
      break;
    case 'h':
      usage_bench_sim(stdout);
      return 0;
    default:
      usage_bench_sim(stderr);
      return 2;
    }
  }
  /* r[0]: ps dense, r[1]: ps stepped, r[2]: fanout dense; each run
   * `repeat` times, the one of median wall time kept (the runs are the
   * same events: only the wall time differs, on a shared machine much). */
  drpc_sim_result r[3];
  double lo[3], hi[3];
  const char *const scn[3] = {"ps", "ps", "fanout"};
  const uint64_t think[3] = {0, (uint64_t)(think_ms * 1e6), 0};
  for (int k = 0; k < 3; k++) {
    drpc_sim_result runs[MAX_REPEAT];
    for (int i = 0; i < repeat; i++) {
      if (bench_run(scn[k], workers, iters, think[k], &runs[i]))
        return 1;
      if (runs[i].hash != runs[0].hash) {
        fprintf(stderr,
                "drpc bench sim: %s: two runs of the same configuration "
                "differ (hash %016llx, then %016llx)\n",
                scn[k], (unsigned long long)runs[0].hash,
                (unsigned long long)runs[i].hash);
        return 1;
      }
    }
    qsort(runs, (size_t)repeat, sizeof runs[0], cmp_wall);
    lo[k] = runs[0].wall_s;
    hi[k] = runs[repeat - 1].wall_s;
    r[k] = runs[repeat / 2];
  }
  double dps = (double)r[0].deliveries / r[0].wall_s;
  double dps_lo = (double)r[0].deliveries / hi[0];
  double dps_hi = (double)r[0].deliveries / lo[0];
  double eps = (double)r[0].events / r[0].wall_s;
  double ratio_dense = (double)r[0].sim_ns / 1e9 / r[0].wall_s;
  double ratio = (double)r[1].sim_ns / 1e9 / r[1].wall_s;
  double fdps = (double)r[2].deliveries / r[2].wall_s;
  if (json) {
    printf("{\"scenario\": \"ps\", \"workers\": %d, \"iters\": %d, "
           "\"commit\": \"%s\", \"deliveries_per_s\": %.0f, "
           "\"events_per_s\": %.0f, \"dense_sim_to_wall\": %.2f, "
           "\"think_ms\": %.1f, \"sim_to_wall\": %.1f, "
           "\"dense_deliveries\": %llu, \"dense_wall_s\": %.3f, "
           "\"stepped_sim_s\": %.3f, \"stepped_wall_s\": %.3f, "
           "\"fanout_deliveries_per_s\": %.0f, \"fanout_deliveries\": %llu, "
           "\"fanout_wall_s\": %.3f, \"repeat\": %d, "
           "\"deliveries_per_s_min\": %.0f, \"deliveries_per_s_max\": %.0f}\n",
           workers, iters, drpc_sim_commit(), dps, eps, ratio_dense, think_ms,
           ratio, (unsigned long long)r[0].deliveries, r[0].wall_s,
           (double)r[1].sim_ns / 1e9, r[1].wall_s, fdps,
           (unsigned long long)r[2].deliveries, r[2].wall_s, repeat, dps_lo,
           dps_hi);
  } else {
    printf("bench sim (ps, %d workers, %d rounds, commit %s)\n", workers, iters,
           drpc_sim_commit());
    printf("  dense:   %llu deliveries in %.3f s wall: %.0f deliveries/s "
           "(median of %d runs; %.0f to %.0f), %.0f events/s; sim/wall "
           "%.2fx\n",
           (unsigned long long)r[0].deliveries, r[0].wall_s, dps, repeat,
           dps_lo, dps_hi, eps, ratio_dense);
    printf("  stepped: %.0f ms of work per round: %.3f s simulated in %.3f s "
           "wall: sim/wall %.0fx\n",
           think_ms, (double)r[1].sim_ns / 1e9, r[1].wall_s, ratio);
    printf("  fanout dense: %llu deliveries in %.3f s wall: %.0f "
           "deliveries/s\n",
           (unsigned long long)r[2].deliveries, r[2].wall_s, fdps);
  }
  return 0;
}
