/* A plain main() for fuzz targets: runs LLVMFuzzerTestOneInput over every
 * file named on the command line or found (not recursively) in a named
 * directory, in name order. ctest uses it to replay the corpora under any
 * compiler and sanitizer; a crash or failed check ends the run. */
#define _POSIX_C_SOURCE 200809L

#include "fuzz.h"

#include <dirent.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

/* Reads a whole file; NULL (and a message) when it cannot. */
static uint8_t *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "driver: %s: %s\n", path, strerror(errno));
    return NULL;
  }
  size_t cap = 4096, n = 0;
  uint8_t *buf = malloc(cap);
  for (;;) {
    if (!buf)
      break;
    n += fread(buf + n, 1, cap - n, f);
    if (n < cap)
      break;
    cap *= 2;
    uint8_t *p = realloc(buf, cap);
    if (!p) {
      free(buf);
      buf = NULL;
    } else {
      buf = p;
    }
  }
  bool failed = ferror(f) || !buf;
  fclose(f);
  if (failed) {
    fprintf(stderr, "driver: %s: read failed\n", path);
    free(buf);
    return NULL;
  }
  *len = n;
  return buf;
}

static int run_file(const char *path) {
  size_t len = 0;
  uint8_t *buf = read_file(path, &len);
  if (!buf)
    return -1;
  /* A copy of exactly len bytes, so ASan catches reads past the input as
   * it does under libFuzzer. */
  uint8_t *exact = malloc(len ? len : 1);
  if (!exact) {
    free(buf);
    return -1;
  }
  memcpy(exact, buf, len);
  free(buf);
  LLVMFuzzerTestOneInput(exact, len);
  free(exact);
  return 0;
}

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Runs every regular file in dir; returns the count, -1 on an error. */
static long run_dir(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) {
    fprintf(stderr, "driver: %s: %s\n", dir, strerror(errno));
    return -1;
  }
  char **names = NULL;
  size_t n = 0, cap = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.')
      continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 64;
      char **p = realloc(names, cap * sizeof(*names));
      if (!p)
        abort();
      names = p;
    }
    size_t plen = strlen(dir) + strlen(e->d_name) + 2;
    names[n] = malloc(plen);
    if (!names[n])
      abort();
    snprintf(names[n], plen, "%s/%s", dir, e->d_name);
    n++;
  }
  closedir(d);
  qsort(names, n, sizeof(*names), cmp_names);
  long ran = 0;
  for (size_t i = 0; i < n; i++) {
    struct stat st;
    if (stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) {
      if (run_file(names[i]) != 0) {
        ran = -1;
        break;
      }
      ran++;
    }
  }
  for (size_t i = 0; i < n; i++)
    free(names[i]);
  free(names);
  return ran;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr,
            "usage: %s FILE_OR_DIR...\n"
            "Runs the fuzz target over each file (directories: each "
            "file in them).\n",
            argv[0]);
    return 2;
  }
  if (LLVMFuzzerInitialize)
    LLVMFuzzerInitialize(&argc, &argv);
  long total = 0;
  for (int i = 1; i < argc; i++) {
    struct stat st;
    if (stat(argv[i], &st) != 0) {
      fprintf(stderr, "driver: %s: %s\n", argv[i], strerror(errno));
      return 1;
    }
    long ran;
    if (S_ISDIR(st.st_mode)) {
      ran = run_dir(argv[i]);
    } else {
      ran = run_file(argv[i]) == 0 ? 1 : -1;
    }
    if (ran < 0)
      return 1;
    total += ran;
  }
  if (total == 0) {
    fprintf(stderr, "driver: no inputs found\n");
    return 1;
  }
  printf("%s: %ld inputs ran\n", argv[0], total);
  return 0;
}
