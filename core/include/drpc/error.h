/* Error codes (one X-macro table) and the rich error object that carries a
 * message. */
#ifndef DRPC_ERROR_H
#define DRPC_ERROR_H

#include <stdarg.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* X(name, value, description). Every fallible drpc function returns 0 or one
 * of these negative codes. */
#define DRPC_ERRORS(X)                                                         \
  X(OK, 0, "success")                                                          \
  X(NOMEM, -1, "out of memory")                                                \
  X(INVAL, -2, "invalid argument")                                             \
  X(PROTO, -3, "protocol error")                                               \
  X(TOOBIG, -4, "size exceeds limit")                                          \
  X(TRUNC, -5, "truncated input")                                              \
  X(VERSION, -6, "unsupported protocol version")                               \
  X(TIMEOUT, -7, "timed out")                                                  \
  X(REMOTE, -8, "error on remote worker")                                      \
  X(CONN, -9, "connection failed or lost")                                     \
  X(SHUTDOWN, -10, "RPC is shut down")                                         \
  X(NOTFOUND, -11, "not found")                                                \
  X(EXISTS, -12, "already exists")                                             \
  X(NOTINIT, -13, "RPC has not been initialized")                              \
  X(TYPE, -14, "wrong type")                                                   \
  X(IO, -15, "input/output error")                                             \
  X(UNSUPPORTED, -16, "not supported")                                         \
  X(DEADLOCK, -17, "operation would deadlock")                                 \
  X(STATE, -18, "invalid state")                                               \
  X(USER, -19, "user function failed")                                         \
  X(DIVERGED, -20, "replay diverged from the recording")

enum {
#define DRPC_X_ENUM(name, value, desc) DRPC_E##name = (value),
  DRPC_ERRORS(DRPC_X_ENUM)
#undef DRPC_X_ENUM
};

/* Returns the static description of code, "unknown error" for other values. */
const char *drpc_strerror(int code);

/* Returns the symbolic name ("DRPC_ETIMEOUT") of code. */
const char *drpc_errname(int code);

/* An error code plus a message written for people. Initialise with
 * DRPC_ERROR_INIT or drpc_error_init; release with drpc_error_clear. The
 * message is owned by the object. */
typedef struct drpc_error {
  int code;
  char *msg;
} drpc_error;

#define DRPC_ERROR_INIT                                                        \
  { 0, NULL }

void drpc_error_init(drpc_error *err);

/* Sets code and a printf-formatted message; returns code so callers can write
 * `return drpc_error_set(err, DRPC_EINVAL, "...")`. err may be NULL. If the
 * message cannot be allocated the code is still set. */
int drpc_error_set(drpc_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int drpc_error_setv(drpc_error *err, int code, const char *fmt, va_list ap);

/* Prepends "prefix: " to the current message, keeping the code. */
int drpc_error_prefix(drpc_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Copies src into dst (dst's previous message is freed). */
int drpc_error_copy(drpc_error *dst, const drpc_error *src);

/* Moves src into dst, leaving src cleared. */
void drpc_error_move(drpc_error *dst, drpc_error *src);

/* Frees the message and resets the code to 0. */
void drpc_error_clear(drpc_error *err);

/* Returns the message, or the code's description when there is none. */
const char *drpc_error_message(const drpc_error *err);

#ifdef __cplusplus
}
#endif
#endif
