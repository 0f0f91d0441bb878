/* fuzz_replay: arbitrary bytes as a recording database (traces/SCHEMA.md)
 * through every path that reads one: drpc_trace_open's validation, the run
 * and node rows, a walk over every event (traces/reader.c), the replay of
 * each node against a fresh core (traces/replay_node.c, core/replay.c) and
 * the Chrome trace export (traces/export_chrome.c), which `drpc trace
 * export` runs on any SQLite file, recording or not.
 *
 * A file that is not a recording must be refused with an error that says
 * why; a recording whose rows break the schema must stop the walk with an
 * error; replay may diverge or fail, never crash. ASan/UBSan watch memory,
 * libFuzzer's -timeout and -rss_limit_mb the time and memory each input
 * takes (inputs are small, so every bound is too).
 *
 * The bytes go to a file in a private temporary directory (the reader
 * takes a path and checks the file's size against its SQLite header),
 * rewritten for each input. The seeds are small real recordings (page size
 * 512) and copies with broken rows: see gen_replay_corpus.sh. */
#define _POSIX_C_SOURCE 200809L

#include "fuzz.h"

#include "drpc/trace.h"
#include "drpc/trace_export.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

/* Most nodes replayed per input: each one starts a core. */
#define MAX_REPLAY_NODES 4
/* Most events walked per input (the file bounds them anyway). */
#define MAX_EVENTS 100000

static char dir[256], db_path[300], json_path[300], side[320];
static FILE *devnull;

static void cleanup(void) {
  static const char *const ext[] = {"", "-wal", "-shm", "-journal"};
  for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++) {
    snprintf(side, sizeof side, "%s%s", db_path, ext[i]);
    unlink(side);
  }
  unlink(json_path);
  snprintf(side, sizeof side, "%s.tmp", json_path);
  unlink(side);
  if (dir[0])
    rmdir(dir);
}

static void setup_once(void) {
  if (dir[0])
    return;
  const char *tmp = getenv("TMPDIR");
  snprintf(dir, sizeof dir, "%s/drpc-fuzz-replay-XXXXXX",
           tmp && tmp[0] ? tmp : "/tmp");
  FUZZ_CHECK(mkdtemp(dir) != NULL, "mkdtemp %s: %s", dir, strerror(errno));
  snprintf(db_path, sizeof db_path, "%s/in.db", dir);
  snprintf(json_path, sizeof json_path, "%s/out.json", dir);
  devnull = fopen("/dev/null", "w");
  FUZZ_CHECK(devnull != NULL, "/dev/null: %s", strerror(errno));
  atexit(cleanup);
}

static void write_input(const uint8_t *data, size_t size) {
  static const char *const ext[] = {"-wal", "-shm", "-journal"};
  for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++) {
    snprintf(side, sizeof side, "%s%s", db_path, ext[i]);
    unlink(side);
  }
  int fd = open(db_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  FUZZ_CHECK(fd >= 0, "%s: %s", db_path, strerror(errno));
  size_t off = 0;
  while (off < size) {
    ssize_t w = write(fd, data + off, size - off);
    FUZZ_CHECK(w > 0, "writing %s: %s", db_path, strerror(errno));
    off += (size_t)w;
  }
  close(fd);
}

/* A failure must come with a code and a message. */
static void check_error(int rc, drpc_error *err, const char *what) {
  if (rc == 0)
    return;
  FUZZ_CHECK(rc < 0, "%s returned %d", what, rc);
  FUZZ_CHECK(err->msg != NULL && err->msg[0],
             "%s failed (%d) without a message", what, rc);
  drpc_error_clear(err);
}

typedef struct walk {
  uint64_t events;
} walk;

static int count_event(void *arg, const drpc_trace_event *e) {
  walk *w = arg;
  FUZZ_CHECK(e->ev.len == 0 || e->ev.bytes != NULL,
             "event %lld: %zu bytes without a pointer", (long long)e->row,
             e->ev.len);
  FUZZ_CHECK(drpc_trace_kind_name(e->ev.kind) != NULL,
             "event %lld: kind %d passed the reader", (long long)e->row,
             e->ev.kind);
  return ++w->events >= MAX_EVENTS;
}

static void read_trace(drpc_trace *t) {
  drpc_error err = DRPC_ERROR_INIT;
  drpc_trace_run_info ri;
  int rc = drpc_trace_run(t, &ri, &err);
  check_error(rc, &err, "drpc_trace_run");
  if (rc == 0)
    drpc_trace_run_info_free(&ri);

  walk w = {0};
  rc = drpc_trace_foreach(t, -1, count_event, &w, &err);
  check_error(rc < 0 ? rc : 0, &err, "drpc_trace_foreach");

  int16_t *ids = NULL;
  char **names = NULL;
  size_t n = 0;
  rc = drpc_trace_nodes(t, &ids, &names, &n, &err);
  check_error(rc, &err, "drpc_trace_nodes");
  drpc_trace_replay_result *res = malloc(sizeof *res);
  FUZZ_CHECK(res != NULL, "out of memory");
  size_t replayed = 0;
  for (size_t i = 0; rc == 0 && i < n && replayed < MAX_REPLAY_NODES; i++) {
    if (ids[i] < 0)
      continue;
    replayed++;
    int r = drpc_trace_replay_node(t, ids[i], 8, res, &err);
    check_error(r, &err, "drpc_trace_replay_node");
    FUZZ_CHECK(res->ncontext <= 8, "%zu context events", res->ncontext);
  }
  free(res);
  drpc_trace_nodes_free(ids, names, n);

  /* The export of a validated recording with the other options (the
   * file-based export below runs on every input). */
  drpc_trace_export_opts o;
  drpc_trace_export_opts_default(&o);
  o.raw_clocks = true;
  o.run = drpc_trace_run_id(t);
  drpc_trace_export_stats st;
  rc = drpc_trace_export_chrome_db(drpc_trace_db(t), devnull, &o, &st, &err);
  check_error(rc, &err, "drpc_trace_export_chrome_db (raw clocks)");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  setup_once();
  write_input(data, size);
  drpc_error err = DRPC_ERROR_INIT;
  drpc_trace *t = NULL;
  int rc = drpc_trace_open(&t, db_path, &err);
  if (rc) {
    FUZZ_CHECK(t == NULL, "a failed open returned a trace");
    check_error(rc, &err, "drpc_trace_open");
  } else {
    read_trace(t);
    drpc_trace_close(t);
  }
  /* `drpc trace export` opens the file itself, without the reader's
   * validation: any SQLite file gets this far. */
  rc = drpc_trace_export_chrome(db_path, json_path, &err);
  check_error(rc, &err, "drpc_trace_export_chrome");
  return 0;
}
