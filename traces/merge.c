/* Merging per-worker recordings into one: a k-way merge of the inputs'
 * time-ordered cursors, written through the recorder so payloads and
 * strings are deduplicated across inputs. */
#include "drpc/trace.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct input {
  const char *path;
  drpc_trace *t;
  drpc_trace_cursor *c;
  drpc_trace_event head; /* valid while live */
  bool live;
} input;

/* The order drpc_trace_foreach(node < 0) walks: t_ns as stored (signed),
 * then node, then seq. */
static bool before(const drpc_trace_event *a, const drpc_trace_event *b) {
  int64_t ta = (int64_t)a->ev.time_ns, tb = (int64_t)b->ev.time_ns;
  if (ta != tb)
    return ta < tb;
  if (a->ev.node != b->ev.node)
    return a->ev.node < b->ev.node;
  return a->seq < b->seq;
}

/* A binary min-heap of input indices keyed by their head event. */
static void sift_down(size_t *heap, size_t n, size_t i, const input *in) {
  for (;;) {
    size_t l = 2 * i + 1, m = i;
    if (l < n && before(&in[heap[l]].head, &in[heap[m]].head))
      m = l;
    if (l + 1 < n && before(&in[heap[l + 1]].head, &in[heap[m]].head))
      m = l + 1;
    if (m == i)
      return;
    size_t tmp = heap[i];
    heap[i] = heap[m];
    heap[m] = tmp;
    i = m;
  }
}

static int advance(input *in, drpc_error *err) {
  int rc = drpc_trace_cursor_next(in->c, &in->head, err);
  if (rc < 0) {
    drpc_error_prefix(err, "%s", in->path);
    return rc;
  }
  in->live = rc == 1;
  return 0;
}

static int count_runs(input *in, drpc_error *err) {
  sqlite3_stmt *s;
  sqlite3 *db = drpc_trace_db(in->t);
  int rc = sqlite3_prepare_v2(db, "SELECT count(*) FROM runs", -1, &s, NULL);
  long long n = -1;
  if (rc == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW)
    n = sqlite3_column_int64(s, 0);
  sqlite3_finalize(s);
  if (n < 0)
    return drpc_error_set(err, DRPC_EIO, "%s: cannot count runs: %s", in->path,
                          sqlite3_errmsg(db));
  if (n != 1)
    return drpc_error_set(err, DRPC_EINVAL,
                          "%s holds %lld runs; merge takes per-worker "
                          "recordings with one run each",
                          in->path, n);
  return 0;
}

/* {"merged_from": [{"path", "run", "backend", "config"}...]}; config is
 * the input's JSON when it parses, else its text. */
static char *merged_config(input *in, size_t n) {
  cJSON *root = cJSON_CreateObject();
  cJSON *arr = root ? cJSON_AddArrayToObject(root, "merged_from") : NULL;
  if (!arr)
    goto fail;
  for (size_t i = 0; i < n; i++) {
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddItemToArray(arr, o)) {
      cJSON_Delete(o);
      goto fail;
    }
    drpc_trace_run_info ri;
    if (drpc_trace_run(in[i].t, &ri, NULL))
      goto fail;
    cJSON *cfg = ri.config_json ? cJSON_Parse(ri.config_json) : NULL;
    if (!cfg)
      cfg = ri.config_json ? cJSON_CreateString(ri.config_json)
                           : cJSON_CreateNull();
    bool ok = cfg && cJSON_AddItemToObject(o, "config", cfg);
    if (!ok)
      cJSON_Delete(cfg);
    ok = ok && cJSON_AddStringToObject(o, "path", in[i].path) &&
         cJSON_AddNumberToObject(o, "run", (double)ri.id) &&
         (ri.backend ? cJSON_AddStringToObject(o, "backend", ri.backend)
                     : cJSON_AddNullToObject(o, "backend"));
    drpc_trace_run_info_free(&ri);
    if (!ok)
      goto fail;
  }
  char *s = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  return s;
fail:
  cJSON_Delete(root);
  return NULL;
}

/* Removes a half-written output and what SQLite kept beside it. */
static void remove_output(const char *path) {
  char buf[4096];
  unlink(path);
  if (snprintf(buf, sizeof buf, "%s-wal", path) < (int)sizeof buf)
    unlink(buf);
}

/* Refuses to write over one of the inputs (truncate would delete it). */
static int check_output(const char *out_path, input *in, size_t n,
                        drpc_error *err) {
  struct stat so, si;
  if (stat(out_path, &so) != 0)
    return 0;
  for (size_t i = 0; i < n; i++)
    if (stat(in[i].path, &si) == 0 && si.st_dev == so.st_dev &&
        si.st_ino == so.st_ino)
      return drpc_error_set(err, DRPC_EINVAL,
                            "output %s is also input %zu (%s)", out_path, i,
                            in[i].path);
  return 0;
}

/* Opens every input, checks they have one run each and disjoint nodes,
 * and names the nodes in r. owner[node] remembers which input had it. */
static int merge_nodes(drpc_recorder *r, input *in, size_t n, drpc_error *err) {
  int32_t *owner = malloc(65536 * sizeof *owner);
  if (!owner)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  for (size_t i = 0; i < 65536; i++)
    owner[i] = -1;
  int rc = 0;
  for (size_t i = 0; i < n && !rc; i++) {
    int16_t *ids;
    char **names;
    size_t k;
    if ((rc = drpc_trace_nodes(in[i].t, &ids, &names, &k, err))) {
      drpc_error_prefix(err, "%s", in[i].path);
      break;
    }
    for (size_t j = 0; j < k && !rc; j++) {
      int32_t *o = &owner[(uint16_t)ids[j]];
      if (*o >= 0)
        rc = drpc_error_set(err, DRPC_EINVAL,
                            "node %d is in both %s and %s; merge takes "
                            "recordings of disjoint nodes",
                            ids[j], in[*o].path, in[i].path);
      else
        *o = (int32_t)i;
      if (!rc && r)
        drpc_recorder_node(r, ids[j], names[j]);
    }
    drpc_trace_nodes_free(ids, names, k);
  }
  free(owner);
  return rc;
}

static int merge_events(drpc_recorder *r, input *in, size_t n,
                        drpc_error *err) {
  size_t *heap = malloc(n * sizeof *heap);
  if (!heap)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  size_t live = 0;
  int rc = 0;
  for (size_t i = 0; i < n && !rc; i++) {
    if ((rc = drpc_trace_cursor_open(in[i].t, -1, &in[i].c, err)) ||
        (rc = advance(&in[i], err)))
      break;
    if (in[i].live)
      heap[live++] = i;
  }
  for (size_t i = live; i-- > 0 && !rc;)
    sift_down(heap, live, i, in);
  /* Each step consumes one input row, so the loop ends after the total
   * number of rows in the inputs. */
  while (live > 0 && !rc) {
    input *top = &in[heap[0]];
    const drpc_trace_event *e = &top->head;
    drpc_recorder_record_raw(r, &e->ev, e->seq, e->has_hash ? &e->hash : NULL);
    if ((rc = advance(top, err)))
      break;
    if (!top->live)
      heap[0] = heap[--live];
    sift_down(heap, live, 0, in);
  }
  free(heap);
  return rc;
}

int drpc_trace_merge(const char *out_path, const char *const *inputs, size_t n,
                     bool truncate, drpc_error *err) {
  if (!out_path || !inputs)
    return drpc_error_set(err, DRPC_EINVAL, "output or inputs is NULL");
  if (n == 0 || n > DRPC_TRACE_MERGE_MAX_INPUTS)
    return drpc_error_set(err, DRPC_EINVAL,
                          "merge takes 1 to %d inputs, got %zu",
                          DRPC_TRACE_MERGE_MAX_INPUTS, n);
  input *in = calloc(n, sizeof *in);
  if (!in)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  int rc = 0;
  for (size_t i = 0; i < n && !rc; i++) {
    in[i].path = inputs[i];
    if (!inputs[i])
      rc = drpc_error_set(err, DRPC_EINVAL, "input %zu is NULL", i);
    else if ((rc = drpc_trace_open(&in[i].t, inputs[i], err)))
      drpc_error_prefix(err, "merge input %zu", i);
    else
      rc = count_runs(&in[i], err);
  }
  if (!rc)
    rc = check_output(out_path, in, n, err);
  if (!rc)
    rc = merge_nodes(NULL, in, n, err); /* reject before creating output */

  drpc_trace_run_info first = {0};
  char *config = NULL;
  drpc_recorder *r = NULL;
  if (!rc && !(rc = drpc_trace_run(in[0].t, &first, err))) {
    config = merged_config(in, n);
    if (!config)
      rc = drpc_error_set(err, DRPC_ENOMEM, "out of memory writing config");
  }
  if (!rc) {
    drpc_run_info info = {.backend = "real",
                          .scenario = first.scenario,
                          .seed = first.seed,
                          .has_seed = first.has_seed,
                          .commit = first.commit,
                          .config_json = config,
                          .started_at = first.started_at,
                          .host = first.host,
                          .pid = first.pid,
                          .has_pid = first.has_pid};
    rc = drpc_recorder_open(&r, out_path, &info, true, truncate, err);
  }
  if (!rc)
    rc = merge_nodes(r, in, n, err);
  if (!rc)
    rc = merge_events(r, in, n, err);
  if (r) {
    drpc_error cerr = DRPC_ERROR_INIT;
    int crc = drpc_recorder_close(r, &cerr);
    if (!rc && crc) {
      rc = crc;
      drpc_error_move(err ? err : &cerr, &cerr);
    }
    drpc_error_clear(&cerr);
    if (rc)
      remove_output(out_path);
  }
  free(config);
  drpc_trace_run_info_free(&first);
  for (size_t i = 0; i < n; i++) {
    drpc_trace_cursor_close(in[i].c);
    drpc_trace_close(in[i].t);
  }
  free(in);
  return rc;
}
