/* Runs a test body in a forked child: simulator runs that kill nodes
 * abandon what the killed fibers owned (as the OS would reclaim a killed
 * process), which the leak checker must not count against the test, so
 * the child leaves with _exit. Its failures count in the parent. */
#ifndef DRPC_SIM_CHILD_H
#define DRPC_SIM_CHILD_H

#include <sys/wait.h>
#include <unistd.h>

#include "test.h"

static inline void sim_in_child(void (*body)(void)) {
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    body();
    fflush(NULL);
    _exit(test_failed_ > 100 ? 100 : test_failed_);
  }
  int st = 0;
  if (pid < 0 || waitpid(pid, &st, 0) != pid) {
    test_failed_++;
    return;
  }
  if (WIFEXITED(st)) {
    test_failed_ += WEXITSTATUS(st);
    test_passed_ += WEXITSTATUS(st) == 0;
  } else {
    fprintf(stderr, "[%s] child died of signal %d\n", test_current_,
            WTERMSIG(st));
    test_failed_++;
  }
}

#endif
