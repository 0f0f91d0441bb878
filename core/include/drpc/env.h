/* The environment: the only door between the sans-I/O core and the world.
 *
 * The core never reads a clock, opens a socket, starts a thread, sleeps,
 * draws randomness or writes a file. A backend (real sockets in net/, the
 * simulator in sim/, test doubles in tests/) implements drpc_env_ops and
 * drives the core through the drpc_agent_on_* input functions of agent.h.
 */
#ifndef DRPC_ENV_H
#define DRPC_ENV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "drpc/wire.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Storage for a backend's lock + condition pair, embedded in futures and
 * other shared objects so they need no extra allocation. */
typedef struct drpc_sync {
  _Alignas(16) unsigned char opaque[128];
} drpc_sync;

/* Work handed to the executor: run(job) on a worker thread (real backend) or
 * fiber (simulator). The job owns itself; run must free it. */
typedef struct drpc_job drpc_job;
struct drpc_job {
  void (*run)(drpc_job *job);
  drpc_job *next; /* for the backend's queues */
};

/* A user command posted to the thread that owns the core. */
typedef struct drpc_cmd drpc_cmd;
struct drpc_cmd {
  void (*apply)(drpc_cmd *cmd); /* runs on the owner thread; frees cmd */
  drpc_cmd *next;
};

/* Event kinds handed to the record sink. Inputs are what the core was given
 * (in the order it applied them), outputs what it did; replay feeds a
 * node's inputs to a fresh core and checks its outputs. Payload formats
 * are documented in traces/SCHEMA.md. */
typedef enum drpc_event_kind {
  /* inputs */
  DRPC_EV_IN_FRAME = 1,       /* bytes: the whole frame as received */
  DRPC_EV_IN_CONN_OPEN = 2,   /* aux: 1 outgoing connected, 0 accepted */
  DRPC_EV_IN_CONN_CLOSED = 3, /* aux: error code (0 = orderly) */
  DRPC_EV_IN_TIMER = 4,       /* aux: the time it fired */
  DRPC_EV_IN_COMMAND = 5,     /* aux: command type; bytes: its arguments */
  DRPC_EV_IN_JOB_DONE = 6,    /* a function's result; aux: result kind */
  DRPC_EV_IN_START = 7,       /* bytes: the configuration the core began with */
  DRPC_EV_IN_VALUE = 8,       /* what the core read of memory it does not
                                 own (aux: drpc_in_value_kind below) */
  /* outputs (each folded into the node's running hash) */
  DRPC_EV_OUT_SEND = 20,    /* bytes: the frame as sent */
  DRPC_EV_OUT_CONNECT = 21, /* peer; bytes: the address */
  DRPC_EV_OUT_CLOSE = 22,
  DRPC_EV_OUT_FUTURE = 23,  /* aux: error code; bytes: value or message */
  DRPC_EV_OUT_EXECUTE = 24, /* name: the function; a job starts */
  DRPC_EV_OUT_TIMER = 25,   /* aux: the armed deadline (0 = cancelled) */
  /* spans and annotations (not replayed, not hashed) */
  DRPC_EV_RPC_BEGIN = 40, /* peer: callee; name: function; aux: timeout ms */
  DRPC_EV_RPC_END = 41,   /* aux: error code */
  DRPC_EV_RREF = 50,      /* name: what happened; id: RRef key; aux: fork key */
  DRPC_EV_LOG = 60,       /* aux: level; bytes: the line */
  DRPC_EV_FAULT = 70,     /* name: fault kind; peer: other side; aux: param */
  DRPC_EV_PROFILE = 80,   /* name: event; aux: duration ns */
} drpc_event_kind;

/* What a DRPC_EV_IN_VALUE event holds (its aux). The two kinds' ids never
 * meet: an RRef key is at least 1 << 48 (its creator's id + 1 sits above
 * bit 47), a lend id is a per-sender counter far below that. */
typedef enum drpc_in_value_kind {
  /* A value shared with user code, as the core read it to answer a fetch
   * (id: the owner RRef's key; bytes: the value as a frame). */
  DRPC_IN_VALUE_RREF = 0,
  /* The bytes of a device tensor received by IPC handle (the cuda_ipc
   * channel), as the core's copy of them read back (peer: the sender;
   * id: the sender's lend id; bytes: a u64 check, then the tensor's
   * bytes; traces/EVENTS.md). The handle names memory of the recording
   * process, so replay fills the tensor from here instead. */
  DRPC_IN_VALUE_DEVICE = 1,
} drpc_in_value_kind;

typedef struct drpc_event {
  drpc_event_kind kind;
  int16_t node;      /* worker id of the recording core */
  int16_t peer;      /* the other worker, -1 when none or unknown */
  uint64_t time_ns;  /* env clock */
  uint64_t id;       /* request id, connection id, job id or RRef key */
  uint64_t aux;      /* kind-specific: message type, error code, deadline */
  const void *bytes; /* kind-specific payload (borrowed) */
  size_t len;
  const char *name; /* kind-specific label (borrowed), NULL when none */
} drpc_event;

/* True for the kinds replay feeds to a core / checks against its outputs. */
static inline bool drpc_event_is_input(drpc_event_kind k) {
  return k >= 1 && k < 20;
}
static inline bool drpc_event_is_output(drpc_event_kind k) {
  return k >= 20 && k < 40;
}
/* The running hash of a node's outputs: h' = fold(h, ev) over kind, peer,
 * id, aux and bytes (time is left out: replay re-derives it). Starts at
 * DRPC_EVENT_HASH_INIT. */
#define DRPC_EVENT_HASH_INIT 0xcbf29ce484222325ull
uint64_t drpc_event_fold(uint64_t h, const drpc_event *ev);

/* The check a DRPC_IN_VALUE_DEVICE payload starts with: the fold of the
 * event it belongs to (kind, sender, lend id, aux) over the n tensor bytes
 * p that follow it. The bytes reach no output replay compares (functions
 * do not run in replay), so without it an altered record would replay as
 * identical; binding sender and lend id also catches bytes taken for
 * another tensor. */
static inline uint64_t drpc_in_value_device_check(int16_t peer,
                                                  uint64_t lend_id,
                                                  const void *p, size_t n) {
  drpc_event ev = {.kind = DRPC_EV_IN_VALUE,
                   .peer = peer,
                   .id = lend_id,
                   .aux = DRPC_IN_VALUE_DEVICE,
                   .bytes = p,
                   .len = n};
  return drpc_event_fold(DRPC_EVENT_HASH_INIT, &ev);
}

typedef enum drpc_log_level {
  DRPC_LOG_DEBUG = 0,
  DRPC_LOG_INFO = 1,
  DRPC_LOG_WARN = 2,
  DRPC_LOG_ERROR = 3,
} drpc_log_level;

typedef struct drpc_env_ops {
  /* Clock: nanoseconds on a monotonic timeline. */
  uint64_t (*now_ns)(void *ctx);
  /* Asks for drpc_agent_on_timer at or after deadline_ns; a later call
   * replaces the earlier one; 0 cancels. */
  void (*timer_arm)(void *ctx, uint64_t deadline_ns);

  /* Opens an outgoing connection to addr (as the peer published it). The
   * backend picks the id, returns it at once, and later reports
   * drpc_agent_on_conn_open or drpc_agent_on_conn_closed for it. */
  int (*connect)(void *ctx, int16_t peer, const char *addr, uint64_t *conn);
  /* Queues a frame on a connection; takes ownership of f in all cases (an
   * unknown or closed connection frees it). */
  void (*send)(void *ctx, uint64_t conn, drpc_outframe *f);
  /* Closes a connection after its queued frames are written (best effort);
   * no further events are reported for it. */
  void (*close)(void *ctx, uint64_t conn);

  /* Runs job on the executor (never inline). */
  void (*execute)(void *ctx, drpc_job *job);
  /* Posts a command to the owner of the core. When the caller already is
   * the owner the backend may apply it inline. */
  void (*post)(void *ctx, drpc_cmd *cmd);
  /* True when the calling thread owns the core (blocking there would stop
   * the agent, so blocking calls refuse to run). */
  bool (*is_owner)(void *ctx);

  /* Lock + condition primitives over drpc_sync storage. wait returns false
   * when deadline_ns (env clock; 0 = none) passed first. */
  void (*sync_init)(void *ctx, drpc_sync *s);
  void (*sync_destroy)(void *ctx, drpc_sync *s);
  void (*sync_lock)(void *ctx, drpc_sync *s);
  void (*sync_unlock)(void *ctx, drpc_sync *s);
  bool (*sync_wait)(void *ctx, drpc_sync *s, uint64_t deadline_ns);
  void (*sync_broadcast)(void *ctx, drpc_sync *s);

  /* Seeded randomness. */
  uint64_t (*random)(void *ctx);
  /* The record sink; may be NULL (nothing recorded). */
  void (*record)(void *ctx, const drpc_event *ev);
  /* True when the sink keeps payloads (a recorder is attached): the core
   * then also serializes frames, commands and function results for replay.
   * NULL: never. Asked once, when an agent starts. */
  bool (*recording)(void *ctx);
  /* Replay only (NULL otherwise): the value the recording says the core
   * read for the owner RRef `key` (user code may change an owner's value
   * in place, which no other input shows); NULL: read the live one. The
   * caller frees it. */
  drpc_value *(*recorded_value)(void *ctx, uint64_t key);
  /* Replay only (NULL otherwise): the n bytes the recording says the core
   * received from worker `peer` for the device tensor that worker lent it
   * by IPC handle (lend id `key`; DRPC_IN_VALUE_DEVICE). The handle names
   * memory of the recording process, so the core never opens it in replay
   * and fills its copy with these bytes instead. NULL when the recording
   * holds no such bytes (the core then fails the tensor, and the replay
   * reports where); else borrowed, valid until the input being applied
   * ends. */
  const void *(*recorded_bytes)(void *ctx, int16_t peer, uint64_t key,
                                size_t n);
  /* Log lines; may be NULL (dropped). */
  void (*log)(void *ctx, drpc_log_level level, const char *msg);

  /* Executor statistics for metrics; may be NULL. */
  void (*pool_stats)(void *ctx, int *size, int *idle);
  /* The address peers should connect to (e.g. "tcp://127.0.0.1:4242"),
   * written into buf. */
  int (*listen_addr)(void *ctx, char *buf, size_t n);
  /* True when send takes frames whose device copies may still be running
   * (outframe->pending) and reads each byte only once its chunk is done
   * (drpc_outframe_ready_end), overlapping the copies with the writes.
   * False: the core waits for the copies before it calls send. */
  bool sends_staged;
} drpc_env_ops;

typedef struct drpc_env {
  const drpc_env_ops *ops;
  void *ctx;
} drpc_env;

/* Convenience wrappers used by the core. */
static inline uint64_t drpc_env_now(const drpc_env *e) {
  return e->ops->now_ns(e->ctx);
}

/* A record sink that drops everything (the default until a recorder is
 * plugged in). */
void drpc_record_null(void *ctx, const drpc_event *ev);

#ifdef __cplusplus
}
#endif
#endif
