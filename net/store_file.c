/* The file store: one file holds the whole table; every operation locks it,
 * reads it, applies the change and writes it back, so processes on one host
 * share a store without a server. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../core/store_proto.h"
#include "drpc/net.h"
#include "posix.h"

/* How often a waiting get or wait looks at the file again. */
#define FILE_POLL_FIRST_MS 1
#define FILE_POLL_MAX_MS 10

/* fcntl record locks belong to the process, so two store objects (or two
 * threads) in one process would not exclude each other through them, and
 * closing any descriptor of the file drops them. This mutex serialises all
 * file-store work in the process; the file lock then only has to exclude
 * other processes. Open-file-description locks (Linux) are used where they
 * exist, since they survive an unrelated close. */
static pthread_mutex_t process_mu = PTHREAD_MUTEX_INITIALIZER;
#ifdef F_OFD_SETLKW
#define LOCK_WAIT_CMD F_OFD_SETLKW
#define LOCK_CMD F_OFD_SETLK
#else
#define LOCK_WAIT_CMD F_SETLKW
#define LOCK_CMD F_SETLK
#endif

typedef struct file_store {
  drpc_store base;
  char *path;
  int fd;
  drpc_store_buf img; /* reused for writing the table back */
} file_store;

static int io_error(const file_store *f, const char *what, drpc_error *err) {
  return drpc_error_set(err, DRPC_EIO, "store file %s: %s failed: %s", f->path,
                        what, strerror(errno));
}

static int file_lock(file_store *f, drpc_error *err) {
  pthread_mutex_lock(&process_mu);
  struct flock fl = {0};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  int rc;
  do
    rc = fcntl(f->fd, LOCK_WAIT_CMD, &fl);
  while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    rc = io_error(f, "locking", err);
    pthread_mutex_unlock(&process_mu);
    return rc;
  }
  return 0;
}

static void file_unlock(file_store *f) {
  struct flock fl = {0};
  fl.l_type = F_UNLCK;
  fl.l_whence = SEEK_SET;
  fcntl(f->fd, LOCK_CMD, &fl);
  pthread_mutex_unlock(&process_mu);
}

/* Reads the whole file into a new table. Called with the lock held. */
static int file_load(file_store *f, drpc_store_table **out, drpc_error *err) {
  struct stat st;
  int rc;
  *out = NULL;
  if (fstat(f->fd, &st) != 0)
    return io_error(f, "stat", err);
  if ((unsigned long long)st.st_size > DRPC_STORE_FILE_MAX_BYTES)
    return drpc_error_set(err, DRPC_ETOOBIG,
                          "store file %s holds %lld bytes, more than the "
                          "limit %llu",
                          f->path, (long long)st.st_size,
                          (unsigned long long)DRPC_STORE_FILE_MAX_BYTES);
  size_t size = (size_t)st.st_size, got = 0;
  uint8_t *data = malloc(size ? size : 1);
  drpc_store_table *t = drpc_store_table_new();
  if (!data || !t) {
    rc = drpc_error_set(err, DRPC_ENOMEM, "out of memory reading store file");
    goto out;
  }
  while (got < size) {
    ssize_t r = pread(f->fd, data + got, size - got, (off_t)got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      rc = io_error(f, "reading", err);
      goto out;
    }
    if (r == 0)
      break; /* shrunk under us: impossible with the lock, but be safe */
    got += (size_t)r;
  }
  if ((rc = drpc_store_proto_decode_table(data, got, t, err))) {
    drpc_error_prefix(err, "store file %s is damaged", f->path);
    goto out;
  }
  *out = t;
  t = NULL;
out:
  drpc_store_table_free(t);
  free(data);
  return rc;
}

/* Writes t back over the file. Called with the lock held. */
static int file_save(file_store *f, const drpc_store_table *t,
                     drpc_error *err) {
  int rc = drpc_store_proto_encode_table(t, &f->img, err);
  if (rc) {
    drpc_error_prefix(err, "store file %s", f->path);
    return rc;
  }
  size_t done = 0;
  while (done < f->img.len) {
    ssize_t w =
        pwrite(f->fd, f->img.data + done, f->img.len - done, (off_t)done);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return io_error(f, "writing", err);
    done += (size_t)w;
  }
  if (ftruncate(f->fd, (off_t)f->img.len) != 0)
    return io_error(f, "truncating", err);
  /* A big image is not kept between operations. */
  if (f->img.cap > (1u << 20))
    drpc_store_buf_free(&f->img);
  return 0;
}

/* Locks and loads; on failure nothing stays locked. */
static int file_begin(file_store *f, drpc_store_table **t, drpc_error *err) {
  int rc = file_lock(f, err);
  if (rc)
    return rc;
  if ((rc = file_load(f, t, err)))
    file_unlock(f);
  return rc;
}

static void file_end(file_store *f, drpc_store_table *t) {
  drpc_store_table_free(t);
  file_unlock(f);
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
}

static int file_set(drpc_store *s, const char *key, const void *val, size_t len,
                    drpc_error *err) {
  file_store *f = (file_store *)s;
  drpc_store_table *t;
  int rc = file_begin(f, &t, err);
  if (rc)
    return rc;
  if ((rc = drpc_store_table_set(t, key, strlen(key), val, len, err)) == 0)
    rc = file_save(f, t, err);
  file_end(f, t);
  return rc;
}

/* Polls the file until every key is there or timeout_s passes; on success
 * the lock is still held and *out is the loaded table. */
static int file_await(file_store *f, const char *const *keys, size_t n,
                      double timeout_s, drpc_store_table **out,
                      drpc_error *err) {
  uint64_t start_ns = drpc_posix_now_ns();
  int pause_ms = FILE_POLL_FIRST_MS;
  for (;;) {
    drpc_store_table *t;
    int rc = file_begin(f, &t, err);
    if (rc)
      return rc;
    const char *named[DRPC_STORE_TIMEOUT_NAMED_KEYS];
    size_t lens[DRPC_STORE_TIMEOUT_NAMED_KEYS], named_n = 0, missing = 0;
    for (size_t i = 0; i < n; i++) {
      size_t klen = strlen(keys[i]);
      if (drpc_store_table_find(t, keys[i], klen, NULL, NULL))
        continue;
      if (missing < DRPC_STORE_TIMEOUT_NAMED_KEYS) {
        named[missing] = keys[i];
        lens[missing] = klen;
        named_n = missing + 1;
      }
      missing++;
    }
    if (missing == 0) {
      *out = t;
      return 0;
    }
    file_end(f, t);
    double waited_s = (double)(drpc_posix_now_ns() - start_ns) / 1e9;
    if (timeout_s > 0 && waited_s >= timeout_s)
      return drpc_store_timeout_error(err, timeout_s, named, lens, named_n,
                                      missing);
    int ms = pause_ms;
    if (timeout_s > 0 && (timeout_s - waited_s) * 1000 < ms)
      ms = (int)((timeout_s - waited_s) * 1000) + 1;
    sleep_ms(ms);
    if (pause_ms < FILE_POLL_MAX_MS)
      pause_ms *= 2;
  }
}

static int file_get(drpc_store *s, const char *key, double timeout_s,
                    void **val, size_t *len, drpc_error *err) {
  file_store *f = (file_store *)s;
  drpc_store_table *t;
  int rc =
      file_await(f, &key, 1, drpc_store_resolve_timeout(s, timeout_s), &t, err);
  if (rc)
    return rc;
  const uint8_t *v;
  size_t vlen;
  drpc_store_table_find(t, key, strlen(key), &v, &vlen);
  *val = malloc(vlen + 1);
  if (*val) {
    memcpy(*val, v, vlen + 1);
    *len = vlen;
  } else {
    rc = drpc_error_set(err, DRPC_ENOMEM,
                        "out of memory copying a %zu-byte value", vlen);
  }
  file_end(f, t);
  return rc;
}

static int file_add(drpc_store *s, const char *key, int64_t delta, int64_t *out,
                    drpc_error *err) {
  file_store *f = (file_store *)s;
  drpc_store_table *t;
  int rc = file_begin(f, &t, err);
  if (rc)
    return rc;
  if ((rc = drpc_store_table_add(t, key, strlen(key), delta, out, err)) == 0)
    rc = file_save(f, t, err);
  file_end(f, t);
  return rc;
}

static int file_wait(drpc_store *s, const char *const *keys, size_t n,
                     double timeout_s, drpc_error *err) {
  file_store *f = (file_store *)s;
  drpc_store_table *t;
  int rc =
      file_await(f, keys, n, drpc_store_resolve_timeout(s, timeout_s), &t, err);
  if (rc == 0)
    file_end(f, t);
  return rc;
}

static int file_compare_set(drpc_store *s, const char *key,
                            const void *expected, size_t elen,
                            const void *desired, size_t dlen, void **actual,
                            size_t *alen, drpc_error *err) {
  file_store *f = (file_store *)s;
  drpc_store_table *t;
  const uint8_t *a;
  size_t al;
  bool changed;
  int rc = file_begin(f, &t, err);
  if (rc)
    return rc;
  rc = drpc_store_table_compare_set(t, key, strlen(key), expected, elen,
                                    desired, dlen, &a, &al, &changed, err);
  if (rc == 0) {
    *actual = malloc(al + 1);
    if (!*actual) {
      rc = drpc_error_set(err, DRPC_ENOMEM,
                          "out of memory copying a %zu-byte value", al);
    } else {
      memcpy(*actual, a, al + 1);
      *alen = al;
      if (changed)
        rc = file_save(f, t, err);
    }
  }
  file_end(f, t);
  return rc;
}

static int file_del(drpc_store *s, const char *key, bool *deleted,
                    drpc_error *err) {
  file_store *f = (file_store *)s;
  drpc_store_table *t;
  int rc = file_begin(f, &t, err);
  if (rc)
    return rc;
  *deleted = drpc_store_table_delete(t, key, strlen(key));
  if (*deleted)
    rc = file_save(f, t, err);
  file_end(f, t);
  return rc;
}

static int file_num_keys(drpc_store *s, int64_t *out, drpc_error *err) {
  file_store *f = (file_store *)s;
  drpc_store_table *t;
  int rc = file_begin(f, &t, err);
  if (rc)
    return rc;
  *out = (int64_t)drpc_store_table_count(t);
  file_end(f, t);
  return 0;
}

static int file_list(drpc_store *s, const char *prefix, char ***keys, size_t *n,
                     drpc_error *err) {
  file_store *f = (file_store *)s;
  drpc_store_table *t;
  int rc = file_begin(f, &t, err);
  if (rc)
    return rc;
  rc = drpc_store_table_list(t, prefix, strlen(prefix), keys, n, err);
  file_end(f, t);
  return rc;
}

static void file_free(drpc_store *s) {
  file_store *f = (file_store *)s;
  /* Closed under the mutex: with classic fcntl locks a close drops this
   * process's lock, which must not happen while another store holds it. */
  pthread_mutex_lock(&process_mu);
  close(f->fd);
  pthread_mutex_unlock(&process_mu);
  drpc_store_buf_free(&f->img);
  free(f->path);
  free(f);
}

static const drpc_store_ops file_ops = {
    .set = file_set,
    .get = file_get,
    .add = file_add,
    .wait = file_wait,
    .compare_set = file_compare_set,
    .del = file_del,
    .num_keys = file_num_keys,
    .list = file_list,
    .free = file_free,
};

int drpc_store_file_new(drpc_store **out, const char *path, double timeout_s,
                        drpc_error *err) {
  int rc;
  *out = NULL;
  if (!path || !*path)
    return drpc_error_set(err, DRPC_EINVAL, "store file path is empty");
  if (timeout_s != timeout_s || timeout_s < 0)
    return drpc_error_set(err, DRPC_EINVAL,
                          "store timeout_s must be >= 0 (0: forever)");
  file_store *f = calloc(1, sizeof(*f));
  if (!f)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory for file store");
  f->path = strdup(path);
  if (!f->path) {
    rc = drpc_error_set(err, DRPC_ENOMEM, "out of memory for file store");
    goto fail_path;
  }
  f->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (f->fd < 0) {
    rc = io_error(f, "opening", err);
    goto fail_open;
  }
  drpc_store_buf_init(&f->img);
  f->base.ops = &file_ops;
  f->base.timeout_s = timeout_s;
  f->base.refcount = 1;
  /* Reading it once now reports a file that is not a store at once. */
  drpc_store_table *t;
  if ((rc = file_begin(f, &t, err))) {
    file_free(&f->base);
    return rc;
  }
  file_end(f, t);
  *out = &f->base;
  return 0;

fail_open:
  free(f->path);
fail_path:
  free(f);
  return rc;
}
