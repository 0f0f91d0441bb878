/* A small assertion kit for drpc's test programs: each failed check prints
 * where and why, and the program ends with "N passed, N failed". */
#ifndef DRPC_TEST_H
#define DRPC_TEST_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_passed_, test_failed_;
static const char *test_current_ = "";

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (cond) {                                                                \
      test_passed_++;                                                          \
    } else {                                                                   \
      test_failed_++;                                                          \
      fprintf(stderr, "%s:%d: [%s] check failed: %s\n", __FILE__, __LINE__,    \
              test_current_, #cond);                                           \
    }                                                                          \
  } while (0)

#define CHECK_EQ_INT(a, b)                                                     \
  do {                                                                         \
    long long a_ = (long long)(a), b_ = (long long)(b);                        \
    if (a_ == b_) {                                                            \
      test_passed_++;                                                          \
    } else {                                                                   \
      test_failed_++;                                                          \
      fprintf(stderr, "%s:%d: [%s] %s == %s failed: %lld vs %lld\n", __FILE__, \
              __LINE__, test_current_, #a, #b, a_, b_);                        \
    }                                                                          \
  } while (0)

#define CHECK_STR_EQ(a, b)                                                     \
  do {                                                                         \
    const char *a_ = (a), *b_ = (b);                                           \
    if (a_ && b_ && strcmp(a_, b_) == 0) {                                     \
      test_passed_++;                                                          \
    } else {                                                                   \
      test_failed_++;                                                          \
      fprintf(stderr, "%s:%d: [%s] %s == %s failed: \"%s\" vs \"%s\"\n",       \
              __FILE__, __LINE__, test_current_, #a, #b, a_ ? a_ : "(null)",   \
              b_ ? b_ : "(null)");                                             \
    }                                                                          \
  } while (0)

/* The message contains needle. */
#define CHECK_CONTAINS(hay, needle)                                            \
  do {                                                                         \
    const char *h_ = (hay), *n_ = (needle);                                    \
    if (h_ && n_ && strstr(h_, n_)) {                                          \
      test_passed_++;                                                          \
    } else {                                                                   \
      test_failed_++;                                                          \
      fprintf(stderr, "%s:%d: [%s] \"%s\" does not contain \"%s\"\n",          \
              __FILE__, __LINE__, test_current_, h_ ? h_ : "(null)",           \
              n_ ? n_ : "(null)");                                             \
    }                                                                          \
  } while (0)

#define RUN(fn)                                                                \
  do {                                                                         \
    test_current_ = #fn;                                                       \
    int before_ = test_failed_;                                                \
    fn();                                                                      \
    fprintf(stderr, "%s %s\n", test_failed_ == before_ ? "ok  " : "FAIL",      \
            #fn);                                                              \
  } while (0)

#define TEST_SKIP_EXIT 77

static inline int test_finish(void) {
  printf("%d passed, %d failed\n", test_passed_, test_failed_);
  return test_failed_ ? 1 : 0;
}

#endif
