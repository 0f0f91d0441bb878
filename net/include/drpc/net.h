/* The real backend: TCP sockets driven by one epoll loop thread that owns the
 * agent core, a pool of worker threads for user functions, the monotonic
 * clock, and the TCP and file stores. */
#ifndef DRPC_NET_H
#define DRPC_NET_H

#include <stdbool.h>
#include <stdint.h>

#include "drpc/agent.h"
#include "drpc/store.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- one-call set-up, PyTorch style --------------------------------- */

/* Like init_rpc: builds the store from opts->init_method (rank 0 hosts the
 * TCP store for tcp:// and env://), starts the backend and the agent, and
 * makes it the process-default agent. world_size > 0: a static group.
 * Errors: "RPC is already initialized", rendezvous and option errors. */
int drpc_init(drpc_agent **out, const char *name, int64_t rank,
              int64_t world_size, const drpc_options *opts, drpc_error *err);
/* Shuts down an agent made by drpc_init (NULL: the default agent), stops
 * and frees its backend, and clears the default agent. timeout_s < 0 uses
 * the options' shutdown timeout. The agent is freed even when graceful
 * shutdown reports an error. */
int drpc_shutdown(drpc_agent *a, bool graceful, double timeout_s,
                  drpc_error *err);
/* The record sink the next drpc_init calls in this process give their
 * backend (see drpc_net_config.record); NULL turns recording off. */
void drpc_init_set_record_sink(void (*record)(void *ctx, const drpc_event *ev),
                               void *ctx);

/* ---- the backend itself --------------------------------------------- */

typedef struct drpc_net drpc_net;

typedef struct drpc_net_config {
  const char *listen_host; /* default "127.0.0.1" */
  int listen_port;         /* 0: any free port */
  int num_worker_threads;  /* executor size (> 0) */
  bool log_stderr;         /* print warnings and errors to stderr */
  const char *log_prefix;  /* e.g. the worker name */
  /* The record sink (NULL: nothing recorded): every input the core applies
   * and every output it makes, with payloads, from the thread that owns
   * the core at that moment (one total order). It must be thread-safe and
   * outlive the backend. */
  void (*record)(void *ctx, const drpc_event *ev);
  void *record_ctx;
} drpc_net_config;

void drpc_net_config_default(drpc_net_config *c);
/* Starts the listener, the loop thread and the pool; the env is usable at
 * once (the loop serves nothing until an agent is attached). */
int drpc_net_new(drpc_net **out, const drpc_net_config *c, drpc_error *err);
const drpc_env *drpc_net_env(drpc_net *n);
/* Hands the loop its agent; inputs flow from now on. */
void drpc_net_attach(drpc_net *n, drpc_agent *a);
/* Stops the loop and the pool (waiting for running jobs) and closes every
 * socket; no input reaches the agent afterwards. */
void drpc_net_stop(drpc_net *n);
void drpc_net_free(drpc_net *n);
/* The listening port. */
int drpc_net_port(drpc_net *n);

/* ---- stores --------------------------------------------------------- */

/* A TCP store server on host:port (port 0 picks one; see
 * drpc_store_server_port; host NULL or "" listens on every address). Runs
 * its own poll thread holding the table; GET and WAIT requests wait there
 * without blocking other clients; a malformed request closes only its
 * client (logged). Errors: DRPC_EINVAL (bad host or port), DRPC_EIO
 * ("cannot listen on 127.0.0.1:29500: address already in use ..."). */
typedef struct drpc_store_server drpc_store_server;
int drpc_store_server_start(drpc_store_server **out, const char *host, int port,
                            drpc_error *err);
/* The bound port; -1 for NULL. */
int drpc_store_server_port(drpc_store_server *s);
/* Stops the thread, closes every client and frees the server (NULL-safe).
 * Clients see their connection close. */
void drpc_store_server_stop(drpc_store_server *s);

/* A client of a TCP store server; connect retries with backoff until
 * timeout_s (0: forever), so clients may start before their server. One
 * connection per store object; requests from several threads take turns.
 * timeout_s is also the store's default wait timeout. Errors: DRPC_EINVAL,
 * DRPC_ETIMEOUT ("could not connect to store at h:p within 2.00 s: ..."),
 * DRPC_EVERSION. A store whose connection broke fails later calls with
 * DRPC_ECONN. */
int drpc_store_tcp_new(drpc_store **out, const char *host, int port,
                       double timeout_s, drpc_error *err);
/* A store kept in one file shared by processes on one host (locking with
 * fcntl); waits poll the file every few ms. A missing file is created; a
 * file that is not a store fails with DRPC_EPROTO. timeout_s (0: forever)
 * is the default wait timeout. */
int drpc_store_file_new(drpc_store **out, const char *path, double timeout_s,
                        drpc_error *err);

/* Parses init_method and returns the store for this rank:
 *   tcp://host:port[?rank=R&world_size=W]   ([v6addr]:port also works)
 *   file:///path[?rank=R&world_size=W]
 *   env://[?rank=R&world_size=W]  MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE
 * For tcp:// and env:// rank 0 starts the server on host:port (returned in
 * *server, NULL otherwise; stop it after the store is released; server
 * may be NULL only for ranks other than 0) and then connects to it as a client
 * like every other rank; others connect with retries up to timeout_s. When
 * a standalone store (one holding DRPC_STORE_STANDALONE_KEY, as `drpc
 * store` does) already serves host:port, rank 0 uses it instead and
 * *server stays NULL; any other holder of the port is an error. A
 * standalone store should serve one group: the keys a group leaves behind
 * would confuse the next one.
 * *rank >= 0 is given (< 0: from the URL or RANK). *world_size > 0 is
 * given; 0 asks for a static group whose size the URL or WORLD_SIZE must
 * give; < 0 is a dynamic group that takes a size only if one is there (-1
 * written back otherwise). An argument that contradicts the URL is an
 * error. The resolved values are written back on success.
 * Errors (DRPC_EINVAL unless said): "port number missing in init_method
 * tcp://host", "rank parameter missing in init_method ...", "world_size
 * parameter missing in init_method ...", "path missing in init_method
 * file://", "environment variable MASTER_ADDR expected, but not set" (and
 * MASTER_PORT, RANK, WORLD_SIZE), "unsupported init_method scheme
 * 'foo://'", "rank 3 is out of range for world_size 2"; the server's
 * DRPC_EIO when rank 0 cannot bind; the client's connect errors. */
/* The key a standalone store server (`drpc store`) sets in itself, so that
 * rank 0 of a tcp:// or env:// group uses it instead of starting one. */
#define DRPC_STORE_STANDALONE_KEY "drpc/standalone_store"

int drpc_store_from_init_method(const char *init_method, int64_t *rank,
                                int64_t *world_size, double timeout_s,
                                drpc_store **out, drpc_store_server **server,
                                drpc_error *err);

/* An env with only the clock, sync primitives, randomness and logging of
 * the real backend (no network, no executor): for stores and tools. */
const drpc_env *drpc_posix_basic_env(void);

/* ---- JSON ---------------------------------------------------------- */

/* Renders a value as JSON text (malloc'd; NULL on no memory). Tensors
 * become {"tensor": dtype, "shape": [...]}, bytes a base64 string. */
char *drpc_value_to_json(const drpc_value *v, bool pretty);

#ifdef __cplusplus
}
#endif
#endif
