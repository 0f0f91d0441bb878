/* init_method strings as PyTorch reads them (tcp://, file://, env://):
 * parsing, rank and world_size resolution, and the store each one builds. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "drpc/net.h"

/* The longest host name accepted (RFC 1035 names fit with room). */
#define HOST_MAX 256

/* What the query string and environment supplied; NULL when absent. */
typedef struct params {
  char rank[32], world_size[32];
  bool has_rank, has_world_size;
} params;

/* Parses a whole decimal int64; false for anything else. */
static bool parse_int(const char *s, size_t len, int64_t *out) {
  char buf[32];
  if (len == 0 || len >= sizeof(buf))
    return false;
  memcpy(buf, s, len);
  buf[len] = 0;
  char *end;
  errno = 0;
  long long v = strtoll(buf, &end, 10);
  if (errno || *end || end == buf || buf[0] == ' ' || buf[0] == '+')
    return false;
  *out = v;
  return true;
}

/* Reads rank and world_size from "a=1&b=2"; other names are ignored, as
 * PyTorch passes them on to the store. */
static int parse_query(const char *q, const char *url, params *p,
                       drpc_error *err) {
  memset(p, 0, sizeof(*p));
  while (q && *q) {
    const char *amp = strchr(q, '&');
    size_t len = amp ? (size_t)(amp - q) : strlen(q);
    const char *eq = memchr(q, '=', len);
    if (eq) {
      size_t nlen = (size_t)(eq - q), vlen = len - nlen - 1;
      char *dst = NULL;
      bool *has = NULL;
      if (nlen == 4 && memcmp(q, "rank", 4) == 0) {
        dst = p->rank;
        has = &p->has_rank;
      } else if (nlen == 10 && memcmp(q, "world_size", 10) == 0) {
        dst = p->world_size;
        has = &p->has_world_size;
      }
      if (dst) {
        if (vlen >= sizeof(p->rank))
          return drpc_error_set(err, DRPC_EINVAL,
                                "invalid %.*s '%.*s' in init_method %s",
                                (int)nlen, q, (int)vlen, eq + 1, url);
        memcpy(dst, eq + 1, vlen);
        dst[vlen] = 0;
        *has = true;
      }
    }
    q = amp ? amp + 1 : NULL;
  }
  return 0;
}

/* Combines the argument (*rank, negative: not given) with what the URL or
 * environment said (text, from source). */
static int resolve_rank(int64_t *rank, const char *text, const char *source,
                        const char *url, drpc_error *err) {
  int64_t v;
  if (!text)
    return 0;
  if (!parse_int(text, strlen(text), &v) || v < 0)
    return drpc_error_set(err, DRPC_EINVAL, "invalid rank '%s' in %s %s", text,
                          source, url);
  if (*rank >= 0 && *rank != v)
    return drpc_error_set(err, DRPC_EINVAL,
                          "rank %lld passed as an argument conflicts with "
                          "rank %lld in %s %s",
                          (long long)*rank, (long long)v, source, url);
  *rank = v;
  return 0;
}

static int resolve_world_size(int64_t *ws, const char *text, const char *source,
                              const char *url, drpc_error *err) {
  int64_t v;
  if (!text)
    return 0;
  if (!parse_int(text, strlen(text), &v) || (v <= 0 && v != -1))
    return drpc_error_set(err, DRPC_EINVAL,
                          "invalid world_size '%s' in %s %s (expected a "
                          "positive number, or -1 for a dynamic group)",
                          text, source, url);
  if (*ws > 0 && *ws != v)
    return drpc_error_set(err, DRPC_EINVAL,
                          "world_size %lld passed as an argument conflicts "
                          "with world_size %lld in %s %s",
                          (long long)*ws, (long long)v, source, url);
  if (*ws <= 0)
    *ws = v;
  return 0;
}

/* Final checks shared by every scheme. */
static int check_resolved(const int64_t *rank, int64_t *ws, bool ws_required,
                          const char *missing_rank, const char *missing_ws,
                          drpc_error *err) {
  if (*rank < 0)
    return drpc_error_set(err, DRPC_EINVAL, "%s", missing_rank);
  if (*ws <= 0 && ws_required)
    return drpc_error_set(err, DRPC_EINVAL, "%s", missing_ws);
  if (*ws <= 0)
    *ws = -1;
  if (*ws > 0 && *rank >= *ws)
    return drpc_error_set(err, DRPC_EINVAL,
                          "rank %lld is out of range for world_size %lld",
                          (long long)*rank, (long long)*ws);
  return 0;
}

/* Splits "host:port" or "[v6]:port" (an optional trailing '/' allowed). */
static int parse_host_port(const char *auth, size_t len, const char *url,
                           char *host, int *port, drpc_error *err) {
  if (len && auth[len - 1] == '/')
    len--;
  const char *colon;
  size_t hlen;
  const char *hstart = auth;
  if (len && auth[0] == '[') {
    const char *close = memchr(auth, ']', len);
    if (!close)
      return drpc_error_set(err, DRPC_EINVAL,
                            "unterminated '[' in init_method %s", url);
    hstart = auth + 1;
    hlen = (size_t)(close - hstart);
    colon = close + 1 < auth + len && close[1] == ':' ? close + 1 : NULL;
  } else {
    colon = NULL;
    for (size_t i = len; i > 0; i--)
      if (auth[i - 1] == ':') {
        colon = auth + i - 1;
        break;
      }
    hlen = colon ? (size_t)(colon - auth) : len;
  }
  if (!colon || colon + 1 == auth + len)
    return drpc_error_set(err, DRPC_EINVAL,
                          "port number missing in init_method %s", url);
  if (hlen == 0)
    return drpc_error_set(err, DRPC_EINVAL, "host missing in init_method %s",
                          url);
  if (hlen >= HOST_MAX)
    return drpc_error_set(err, DRPC_EINVAL,
                          "host in init_method %s is longer than %d bytes", url,
                          HOST_MAX - 1);
  memcpy(host, hstart, hlen);
  host[hlen] = 0;
  int64_t p;
  size_t plen = (size_t)(auth + len - colon - 1);
  for (size_t i = 0; i < plen; i++)
    if (colon[1 + i] < '0' || colon[1 + i] > '9')
      plen = 0;
  if (!parse_int(colon + 1, plen, &p) || p < 1 || p > 65535)
    return drpc_error_set(err, DRPC_EINVAL,
                          "invalid port number '%.*s' in init_method %s "
                          "(expected 1..65535)",
                          (int)(auth + len - colon - 1), colon + 1, url);
  *port = (int)p;
  return 0;
}

/* Whether a store server that answers on host:port is a standalone one
 * (`drpc store`, which sets DRPC_STORE_STANDALONE_KEY); a client to it in
 * *out when it is. Another group's rank 0 store, or any other program,
 * is not. */
#define STORE_PROBE_S 2.0

static bool standalone_store(const char *host, int port, double timeout_s,
                             drpc_store **out) {
  drpc_store *c = NULL;
  void *v = NULL;
  size_t len = 0;
  if (drpc_store_tcp_new(&c, host, port, STORE_PROBE_S, NULL))
    return false;
  if (drpc_store_get(c, DRPC_STORE_STANDALONE_KEY, 1e-3, &v, &len, NULL)) {
    drpc_store_decref(c);
    return false;
  }
  free(v);
  c->timeout_s = timeout_s;
  *out = c;
  return true;
}

/* Rank 0 hosts the server; everyone, rank 0 included, then connects as a
 * client, so all ranks use the store the same way. Where a standalone
 * store already serves host:port, rank 0 uses it instead. */
static int rendezvous_tcp(const char *host, int port, int64_t rank,
                          double timeout_s, drpc_store **out,
                          drpc_store_server **server, drpc_error *err) {
  drpc_store_server *srv = NULL;
  int rc;
  if (rank == 0 && !server)
    return drpc_error_set(err, DRPC_EINVAL,
                          "rank 0 hosts the store server, so the server "
                          "output must not be NULL");
  if (rank == 0) {
    if ((rc = drpc_store_server_start(&srv, host, port, err))) {
      if (rc == DRPC_EIO && standalone_store(host, port, timeout_s, out)) {
        drpc_error_clear(err);
        return 0;
      }
      drpc_error_prefix(err, "rank 0 could not start the store server");
      return rc;
    }
  }
  if ((rc = drpc_store_tcp_new(out, host, port, timeout_s, err))) {
    drpc_store_server_stop(srv);
    return rc;
  }
  if (server)
    *server = srv;
  return 0;
}

/* getenv with PyTorch's message for a missing variable. */
static int need_env(const char *name, const char **out, drpc_error *err) {
  *out = getenv(name);
  if (!*out || !**out)
    return drpc_error_set(err, DRPC_EINVAL,
                          "environment variable %s expected, but not set",
                          name);
  return 0;
}

static int from_tcp(const char *url, const char *rest, int64_t *rank,
                    int64_t *ws, bool ws_required, double timeout_s,
                    drpc_store **out, drpc_store_server **server,
                    drpc_error *err) {
  char host[HOST_MAX];
  int port = 0, rc;
  params p;
  const char *q = strchr(rest, '?');
  size_t alen = q ? (size_t)(q - rest) : strlen(rest);
  char missing_rank[512], missing_ws[512];
  if ((rc = parse_host_port(rest, alen, url, host, &port, err)) ||
      (rc = parse_query(q ? q + 1 : NULL, url, &p, err)) ||
      (rc = resolve_rank(rank, p.has_rank ? p.rank : NULL, "init_method", url,
                         err)) ||
      (rc = resolve_world_size(ws, p.has_world_size ? p.world_size : NULL,
                               "init_method", url, err)))
    return rc;
  snprintf(missing_rank, sizeof(missing_rank),
           "rank parameter missing in init_method %s", url);
  snprintf(missing_ws, sizeof(missing_ws),
           "world_size parameter missing in init_method %s", url);
  if ((rc = check_resolved(rank, ws, ws_required, missing_rank, missing_ws,
                           err)))
    return rc;
  return rendezvous_tcp(host, port, *rank, timeout_s, out, server, err);
}

static int from_env(const char *url, const char *rest, int64_t *rank,
                    int64_t *ws, bool ws_required, double timeout_s,
                    drpc_store **out, drpc_store_server **server,
                    drpc_error *err) {
  params p;
  const char *q = strchr(rest, '?');
  const char *addr, *port_text, *v;
  int rc;
  if ((rc = parse_query(q ? q + 1 : NULL, url, &p, err)) ||
      (rc = resolve_rank(rank, p.has_rank ? p.rank : NULL, "init_method", url,
                         err)) ||
      (rc = resolve_world_size(ws, p.has_world_size ? p.world_size : NULL,
                               "init_method", url, err)))
    return rc;
  /* The environment fills only what the arguments and the URL left open,
   * in PyTorch's order: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT. */
  if (*rank < 0) {
    if ((rc = need_env("RANK", &v, err)) ||
        (rc = resolve_rank(rank, v, "environment variable", "RANK", err)))
      return rc;
  }
  if (*ws <= 0) {
    v = getenv("WORLD_SIZE");
    if (ws_required && (rc = need_env("WORLD_SIZE", &v, err)))
      return rc;
    if (v && *v &&
        (rc = resolve_world_size(ws, v, "environment variable", "WORLD_SIZE",
                                 err)))
      return rc;
  }
  if ((rc = need_env("MASTER_ADDR", &addr, err)) ||
      (rc = need_env("MASTER_PORT", &port_text, err)))
    return rc;
  int64_t port;
  if (!parse_int(port_text, strlen(port_text), &port) || port < 1 ||
      port > 65535)
    return drpc_error_set(err, DRPC_EINVAL,
                          "environment variable MASTER_PORT has invalid value "
                          "'%s' (expected 1..65535)",
                          port_text);
  if (strlen(addr) >= HOST_MAX)
    return drpc_error_set(err, DRPC_EINVAL,
                          "environment variable MASTER_ADDR is longer than %d "
                          "bytes",
                          HOST_MAX - 1);
  if ((rc = check_resolved(rank, ws, ws_required,
                           "environment variable RANK expected, but not set",
                           "environment variable WORLD_SIZE expected, but "
                           "not set",
                           err)))
    return rc;
  return rendezvous_tcp(addr, (int)port, *rank, timeout_s, out, server, err);
}

static int from_file(const char *url, const char *rest, int64_t *rank,
                     int64_t *ws, bool ws_required, double timeout_s,
                     drpc_store **out, drpc_error *err) {
  params p;
  const char *q = strchr(rest, '?');
  size_t plen = q ? (size_t)(q - rest) : strlen(rest);
  char missing_rank[512], missing_ws[512];
  int rc;
  if (plen == 0)
    return drpc_error_set(err, DRPC_EINVAL, "path missing in init_method %s",
                          url);
  if ((rc = parse_query(q ? q + 1 : NULL, url, &p, err)) ||
      (rc = resolve_rank(rank, p.has_rank ? p.rank : NULL, "init_method", url,
                         err)) ||
      (rc = resolve_world_size(ws, p.has_world_size ? p.world_size : NULL,
                               "init_method", url, err)))
    return rc;
  snprintf(missing_rank, sizeof(missing_rank),
           "rank parameter missing in init_method %s", url);
  snprintf(missing_ws, sizeof(missing_ws),
           "world_size parameter missing in init_method %s", url);
  if ((rc = check_resolved(rank, ws, ws_required, missing_rank, missing_ws,
                           err)))
    return rc;
  char *path = strndup(rest, plen);
  if (!path)
    return drpc_error_set(err, DRPC_ENOMEM, "out of memory");
  rc = drpc_store_file_new(out, path, timeout_s, err);
  free(path);
  return rc;
}

int drpc_store_from_init_method(const char *init_method, int64_t *rank,
                                int64_t *world_size, double timeout_s,
                                drpc_store **out, drpc_store_server **server,
                                drpc_error *err) {
  if (out)
    *out = NULL;
  if (server)
    *server = NULL;
  if (!init_method)
    return drpc_error_set(err, DRPC_EINVAL, "init_method is NULL");
  if (!rank || !world_size || !out)
    return drpc_error_set(err, DRPC_EINVAL,
                          "init_method needs rank, world_size and out");
  if (timeout_s != timeout_s || timeout_s < 0)
    return drpc_error_set(err, DRPC_EINVAL,
                          "rendezvous timeout_s must be >= 0 (0: forever)");
  /* world_size 0 asks for a static group whose size the URL or the
   * environment must give; below 0 a dynamic group that may take one. */
  bool ws_required = *world_size == 0;
  int64_t r = *rank, ws = *world_size;
  const char *sep = strstr(init_method, "://");
  int rc;
  if (!sep)
    return drpc_error_set(err, DRPC_EINVAL,
                          "init_method '%s' has no scheme (expected tcp://, "
                          "file:// or env://)",
                          init_method);
  size_t slen = (size_t)(sep - init_method);
  const char *rest = sep + 3;
  if (slen == 3 && memcmp(init_method, "tcp", 3) == 0)
    rc = from_tcp(init_method, rest, &r, &ws, ws_required, timeout_s, out,
                  server, err);
  else if (slen == 3 && memcmp(init_method, "env", 3) == 0)
    rc = from_env(init_method, rest, &r, &ws, ws_required, timeout_s, out,
                  server, err);
  else if (slen == 4 && memcmp(init_method, "file", 4) == 0)
    rc =
        from_file(init_method, rest, &r, &ws, ws_required, timeout_s, out, err);
  else
    return drpc_error_set(err, DRPC_EINVAL,
                          "unsupported init_method scheme '%.*s://'",
                          (int)(slen > 64 ? 64 : slen), init_method);
  if (rc == 0) {
    *rank = r;
    *world_size = ws;
  }
  return rc;
}
