/* Error codes from the DRPC_ERRORS table and the drpc_error message object. */
#include "drpc/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *drpc_strerror(int code) {
  switch (code) {
#define X_DESC(name, value, desc)                                              \
  case value:                                                                  \
    return desc;
    DRPC_ERRORS(X_DESC)
#undef X_DESC
  default:
    return "unknown error";
  }
}

const char *drpc_errname(int code) {
  switch (code) {
#define X_NAME(name, value, desc)                                              \
  case value:                                                                  \
    return "DRPC_E" #name;
    DRPC_ERRORS(X_NAME)
#undef X_NAME
  default:
    return "unknown";
  }
}

void drpc_error_init(drpc_error *err) {
  err->code = 0;
  err->msg = NULL;
}

/* Formats into a new heap string, sizing it first so that messages of any
 * length fit. Returns NULL when memory runs out or the format fails. */
static char *vformat(const char *fmt, va_list ap) {
  va_list ap2;
  va_copy(ap2, ap);
  int n = vsnprintf(NULL, 0, fmt, ap2);
  va_end(ap2);
  if (n < 0)
    return NULL;
  char *s = malloc((size_t)n + 1);
  if (!s)
    return NULL;
  vsnprintf(s, (size_t)n + 1, fmt, ap);
  return s;
}

int drpc_error_setv(drpc_error *err, int code, const char *fmt, va_list ap) {
  if (!err)
    return code;
  /* The new message is formatted before the old one is freed, because the
   * arguments may point into the old message. */
  char *msg = fmt ? vformat(fmt, ap) : NULL;
  free(err->msg);
  err->msg = msg;
  err->code = code;
  return code;
}

int drpc_error_set(drpc_error *err, int code, const char *fmt, ...) {
  if (!err)
    return code;
  va_list ap;
  va_start(ap, fmt);
  drpc_error_setv(err, code, fmt, ap);
  va_end(ap);
  return code;
}

int drpc_error_prefix(drpc_error *err, const char *fmt, ...) {
  if (!err)
    return 0;
  va_list ap;
  va_start(ap, fmt);
  char *prefix = vformat(fmt, ap);
  va_end(ap);
  if (!prefix)
    return err->code;
  const char *rest = drpc_error_message(err);
  size_t plen = strlen(prefix), rlen = strlen(rest);
  char *msg = malloc(plen + 2 + rlen + 1);
  if (msg) {
    memcpy(msg, prefix, plen);
    memcpy(msg + plen, ": ", 2);
    memcpy(msg + plen + 2, rest, rlen + 1);
    free(err->msg);
    err->msg = msg;
  }
  /* Without memory the old message stays: it is still true, only shorter. */
  free(prefix);
  return err->code;
}

int drpc_error_copy(drpc_error *dst, const drpc_error *src) {
  if (dst == src)
    return 0;
  char *msg = NULL;
  int rc = 0;
  if (src->msg) {
    size_t len = strlen(src->msg);
    msg = malloc(len + 1);
    if (msg)
      memcpy(msg, src->msg, len + 1);
    else
      rc = DRPC_ENOMEM;
  }
  free(dst->msg);
  dst->msg = msg;
  dst->code = src->code;
  return rc;
}

void drpc_error_move(drpc_error *dst, drpc_error *src) {
  if (dst == src)
    return;
  free(dst->msg);
  dst->code = src->code;
  dst->msg = src->msg;
  src->code = 0;
  src->msg = NULL;
}

void drpc_error_clear(drpc_error *err) {
  if (!err)
    return;
  free(err->msg);
  err->msg = NULL;
  err->code = 0;
}

const char *drpc_error_message(const drpc_error *err) {
  if (!err)
    return drpc_strerror(0);
  return err->msg ? err->msg : drpc_strerror(err->code);
}
