/* The floor for a tensor echo over loopback TCP: one process sends N bytes
 * from an N-byte buffer, the other reads them into its own N-byte buffer and
 * sends them back, for N from 1 KiB to 128 MiB. Unlike a stream through a
 * small cache-resident buffer, this moves every byte through memory the way
 * an RPC echo of an N-byte tensor must. Prints echo_<N>B_GBps (2 x N / time),
 * the same figure `drpc bench` prints. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int io_full(int fd, char *b, size_t n, int wr) {
  while (n) {
    ssize_t k = wr ? write(fd, b, n) : read(fd, b, n);
    if (k <= 0)
      return -1;
    b += k;
    n -= (size_t)k;
  }
  return 0;
}

static const size_t sizes[] = {1u << 10, 1u << 16, 1u << 20,
                               1u << 24, 1u << 26, 1u << 27};
#define NSIZES (sizeof sizes / sizeof sizes[0])

static int reps_for(size_t n) {
  long r = (1l << 31) / (long)n;
  return r < 5 ? 5 : r > 500 ? 500 : (int)r;
}

int main(void) {
  int one = 1;
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 1) ||
      getsockname(ls, (struct sockaddr *)&a, &al)) {
    perror("listen");
    return 1;
  }
  pid_t p = fork();
  if (p == 0) {
    int c = accept(ls, NULL, NULL);
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    for (size_t k = 0; k < NSIZES; k++) {
      char *buf = malloc(sizes[k]);
      memset(buf, 0, sizes[k]);
      for (int i = 0; i < reps_for(sizes[k]) + 2; i++)
        if (io_full(c, buf, sizes[k], 0) || io_full(c, buf, sizes[k], 1))
          _exit(1);
      free(buf);
    }
    _exit(0);
  }
  int s = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(s, (struct sockaddr *)&a, sizeof a)) {
    perror("connect");
    return 1;
  }
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  for (size_t k = 0; k < NSIZES; k++) {
    size_t n = sizes[k];
    char *out = malloc(n), *in = malloc(n);
    memset(out, 1, n);
    memset(in, 0, n);
    for (int i = 0; i < 2; i++)
      if (io_full(s, out, n, 1) || io_full(s, in, n, 0))
        return 1;
    int reps = reps_for(n);
    double t0 = now_s();
    for (int i = 0; i < reps; i++)
      if (io_full(s, out, n, 1) || io_full(s, in, n, 0))
        return 1;
    double dt = (now_s() - t0) / reps;
    printf("raw_echo_%zuB_GBps %.3f\n", n, 2.0 * (double)n / dt / 1e9);
    free(out);
    free(in);
  }
  waitpid(p, NULL, 0);
  return 0;
}
