/* Internal: the simulator's state, shared by the files of sim/ only. */
#ifndef DRPC_SIM_INTERNAL_H
#define DRPC_SIM_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <ucontext.h>

#include "drpc/device.h"
#include "drpc/drpc.h"
#include "drpc/sim.h"
#include "scenario.h"

/* Bounds: pending events, connections over a run, fibers alive at once,
 * queued jobs per node, inputs held for a node still starting, traced
 * events, request ids tracked per node. */
#define SIM_MAX_EVENTS (1u << 24)
#define SIM_MAX_CONNS (1u << 20)
#define SIM_MAX_FIBERS 4096u
#define SIM_MAX_JOBQ (1u << 20)
#define SIM_MAX_DEFERRED (1u << 16)
#define SIM_MAX_TRACE (1u << 22)
#define SIM_MAX_CALL_IDS (1u << 24)
/* Fiber stacks: usable bytes, plus one guard page below. */
#define SIM_STACK_BYTES (256u << 10)
/* Virtual time starts here so that node clocks with negative offsets stay
 * positive. */
#define SIM_BASE_NS 1000000000000ull

typedef enum sim_ev_kind {
  EV_FRAME = 1,      /* a frame reaches node (b: its connection end) */
  EV_ACCEPT = 2,     /* a connect reaches the acceptor (a: connection) */
  EV_OPEN = 3,       /* the accept reaches the dialer (a: connection) */
  EV_CLOSED = 4,     /* an end learns its connection closed (a: reason) */
  EV_TIMER = 5,      /* node's timer (b: generation) */
  EV_WAKE = 6,       /* fiber a resumes (b: its wait sequence) */
  EV_CMD = 7,        /* a posted command (p) applies on node */
  EV_JOB = 8,        /* a job (p) starts on a fiber of node */
  EV_FAULT = 9,      /* fault a begins (b = 0) or ends (b = 1) */
  EV_PHASE_END = 10, /* the fault phase ends */
  EV_NODE_FREE = 11, /* a finished node's agent is freed */
  EV_START = 12,     /* node's worker program starts */
  EV_RESET = 13,     /* connection a resets (a lost frame's timeout) */
  EV_SEND = 14,      /* traced only: a frame was sent */
  EV_RECORD = 15,    /* traced only: the core recorded an event */
  EV_REPLAY = 16,    /* inputs held while node started are handed over */
} sim_ev_kind;

/* Why a connection closed, as EV_CLOSED's a. */
enum { CLOSE_EOF = 0, CLOSE_RESET = 1, CLOSE_REFUSED = 2, CLOSE_TIMEOUT = 3 };

typedef struct sim_event {
  uint64_t time;
  /* Orders events of one time: drpc_sim_config.tie's key (0 without a
   * hook) above the push's sequence number (SIM_SEQ_BITS). */
  uint64_t ord;
  void *p;
  uint64_t b;
  uint32_t a;
  uint32_t len;
  int16_t node;
  uint8_t kind;
  uint8_t inc; /* the node's life when pushed (see sim_node.inc) */
} sim_event;
/* Pushes one run may make (a run stops with a violation past them). */
#define SIM_SEQ_BITS 40

typedef struct sim sim;
typedef struct sim_node sim_node;

/* A fiber parked on a drpc_sync: lives on the fiber's stack while parked. */
typedef struct sim_waiter {
  struct sim_waiter *prev, *next;
  struct sim_waitlist *list; /* NULL once woken or removed */
  uint32_t fiber;
} sim_waiter;

/* What a drpc_sync holds in the simulator: its parked fibers, in order. */
typedef struct sim_waitlist {
  uint64_t magic;
  sim_waiter *head, *tail;
} sim_waitlist;

enum { F_FREE = 0, F_RUNNING = 1, F_PARKED = 2, F_DONE = 3 };

typedef struct sim_fiber {
  ucontext_t uc; /* first entry (and every switch without fast switches) */
  void *sp;      /* saved stack pointer while switched out (fast switches) */
  bool started;  /* fiber_main runs on the stack (else uc enters it) */
  void *map;     /* the mapping: guard page, then the stack */
  void *stack;   /* usable stack, above the guard page */
  size_t stack_size;
  uint32_t slot;
  uint32_t next_free;
  int16_t node;
  int state;
  bool is_job, is_main;
  bool dirty; /* abandoned while running: ASan shadow needs clearing */
  bool signaled;
  uint64_t wait_seq;
  sim_waiter *waiter;
  void (*fn)(void *arg);
  void *arg;
  void *fake_stack; /* ASan's fake stack while switched out */
  /* Runs with devices: the fiber's current stream per device while it is
   * switched out (NULL: the default stream). Current streams are per OS
   * thread in core/device.c, and every fiber runs on one thread; the
   * scheduler swaps them so that each fiber keeps its own, as a thread
   * would. */
  drpc_stream *streams[DRPC_DEVICE_MAX];
} sim_fiber;

/* Executions of one request of one caller (key: the caller and request id,
 * 0 for an empty slot), and the connection it came on: a caller that
 * joined again (a new incarnation) numbers its requests from 1 again, on
 * new connections. */
typedef struct sim_exec {
  uint64_t key;
  uint64_t conn;
  uint8_t n;
} sim_exec;

/* What the checkers know of one call a node made. */
typedef struct sim_call {
  uint64_t begin_ns; /* virtual, from the start */
  int16_t dst;
  uint8_t state; /* 0 unknown, 1 begun, 2 completed */
} sim_call;

typedef struct sim_link {
  uint64_t busy_until; /* bandwidth: when the link is free again */
  uint64_t clog_until;
  uint32_t block;  /* partitions (symmetric or one-way) blocking a -> b */
  uint32_t oneway; /* of those, one-way ones */
  double factor;   /* latency multiplier */
} sim_link;

typedef struct sim_conn {
  int16_t from, to; /* dialer, acceptor */
  bool broken;      /* reset or refused: nothing more is delivered */
  bool accepted, open;
  bool closed[2];           /* the end (0: dialer, 1: acceptor) closed itself */
  bool told[2];             /* the end was told the connection closed */
  bool reset_pending;       /* a lost frame will reset it */
  uint64_t last_arrival[2]; /* per direction: 0 is dialer -> acceptor */
} sim_conn;

enum {
  NODE_IDLE = 0,
  NODE_STARTING = 1, /* program started, agent not attached yet */
  NODE_RUNNING = 2,
  NODE_FINISHED = 3, /* agent freed */
  NODE_DEAD = 4,     /* crashed */
};

struct sim_node {
  sim *s;
  int16_t index; /* -1 for the store's env */
  int state;
  /* The node's life, counted up at each crash (mod 256): the node's own
   * events (timers, commands, jobs, wakes, frees, starts) pushed in an
   * earlier life are dropped, so a restarted process never sees them. */
  uint8_t inc;
  unsigned crashes, starts; /* lives ended by a crash; program starts */
  unsigned agents;          /* agents started (each a later incarnation) */
  drpc_env env;
  drpc_agent *agent;
  /* Agents of earlier incarnations in a dynamic group (a worker that left
   * and joined again): stopped, freed with the node. */
  drpc_agent **retired;
  size_t nretired;
  char name[16], addr[32];
  uint64_t rng;
  int64_t clock_offset_ns;
  int32_t drift_ppm;
  double slow;
  /* The armed timer (global time, 0: none) and the earliest timer event
   * in the queue for it (0: none). Re-arming later (every call re-arms)
   * pushes nothing; the queued event re-pushes itself when it fires
   * early, so stale timer events do not pile up in the queue. */
  uint64_t timer_at, timer_event_at;
  /* Executor: a concurrency limit and a FIFO of jobs waiting for it. */
  int threads, jobs_running;
  drpc_job *jq_head, *jq_tail;
  size_t jq_len;
  bool main_done, free_queued;
  uint64_t finish_ns;
  /* Inputs that arrived before the agent was attached. */
  sim_event *deferred;
  size_t ndeferred, capdeferred;
  /* Checkers: per request id of this node's calls: 0 none, 1 begun,
   * 2 completed; per caller, executions per request id. */
  sim_call *calls;
  size_t call_cap;
  /* Executions seen here, an open-addressed table (a power of two of
   * slots, at most half full): sized by the requests served, not by the
   * callers' request ids, so a large cluster holds no callers x ids
   * arrays. */
  sim_exec *execs;
  size_t exec_cap, exec_len;
  int16_t last_exec_peer;
  uint64_t last_exec_id;
  bool last_exec_valid;
  uint64_t calls_begun, calls_done;
};

#define SIM_BUF_MIN_SHIFT 8
#define SIM_BUF_CLASSES 13 /* 256 B .. 1 MiB */
#define SIM_BUF_DEPTH 32

struct sim {
  const drpc_sim_config *cfg;
  const drpc_scenario *scn;
  drpc_sim_result *res;
  uint64_t now, seq;
  sim_event *heap;
  size_t nheap, capheap;
  /* Events due now, in push order (a ring): without a tie hook they need
   * no heap, as everything pushed for now runs after what the heap holds
   * for now (pushed at an earlier instant, so with smaller sequence
   * numbers) and in sequence order among themselves. */
  sim_event *nowq;
  size_t nowq_head, nowq_len, nowq_cap;
  int nnodes;
  sim_node *nodes; /* nnodes of them */
  sim_node store_node;
  drpc_store *store;
  drpc_registry *reg;
  drpc_scn_host host;
  drpc_options opts;
  sim_link *links; /* nnodes x nnodes, row-major: SIM_LINK(s, from, to) */
  sim_conn *conns;
  size_t nconns, capconns;
  sim_fiber **fibers;
  uint32_t nfibers, free_fiber, live_fibers;
  sim_fiber *cur;
  ucontext_t sched_uc;
  void *sched_sp; /* the scheduler's saved stack pointer (fast switches) */
  const void *sched_bottom;
  size_t sched_size;
  uint64_t net_rng;
  uint64_t fault_end, deadline; /* global times */
  bool phase_over;
  bool stop;
  int nodes_left; /* not finished and not dead */
  size_t trace_cap;
  /* Devices (config.devices > 0): simcuda's context and per-node options
   * (the scenario's device maps), NULL without. */
  int ndevices;
  void *gpu;
  drpc_options *node_opts;
  /* Frame buffers in flight, recycled by size class (powers of two from
   * SIM_BUF_MIN_SHIFT; larger frames are malloc'd each time): a frame is
   * one buffer from its send to its delivery. */
  void *bufs[SIM_BUF_CLASSES][SIM_BUF_DEPTH];
  uint8_t nbufs[SIM_BUF_CLASSES];
};

/* The options node n starts its agents with. */
static inline const drpc_options *sim_node_opts(const sim *s,
                                                const sim_node *n) {
  return s->node_opts && n->index >= 0 ? &s->node_opts[n->index] : &s->opts;
}

/* The options for node n's next agent: each one is a later incarnation,
 * whose RRef ids never repeat those of the agents before it. */
static inline drpc_options sim_next_opts(sim_node *n, const drpc_options *o) {
  drpc_options c = *o;
  c.incarnation = n->agents++ % 65536;
  return c;
}

/* The link from node x to node y. */
#define SIM_LINK(s, x, y)                                                      \
  ((s)->links[(size_t)(x) * (size_t)(s)->nnodes + (size_t)(y)])
/* Fault masks have a bit per class of nodes: bit i stands for every node n
 * with n % 64 == i (node i itself in clusters of up to 64). */
#define SIM_MASK_NODES 64
static inline bool sim_in_mask(uint64_t mask, int node) {
  return node >= 0 && ((mask >> (node % SIM_MASK_NODES)) & 1);
}

/* The simulator running on this thread (one at a time). */
extern sim *sim_current;

/* sched.c */
void sim_push(sim *s, uint8_t kind, int16_t node, uint64_t time, uint32_t a,
              uint64_t b, void *p, uint32_t len);
/* Takes the earliest event; false when none is left. */
bool sim_pop(sim *s, sim_event *out);
void sim_hash(sim *s, uint8_t kind, int16_t node, uint64_t x, uint64_t y,
              const void *bytes, size_t len);
/* A buffer for a frame of len bytes (NULL when out of memory) and its
 * return; sim_frame_free takes the len it was allocated with. */
void *sim_frame_alloc(sim *s, size_t len);
void sim_frame_free(sim *s, void *p, size_t len);
void sim_frame_pool_free(sim *s);
void sim_violation(sim *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
uint64_t sim_rel(const sim *s, uint64_t t);

/* fiber.c */
int sim_fiber_spawn(sim *s, int16_t node, void (*fn)(void *), void *arg,
                    sim_fiber **out);
void sim_fiber_resume(sim *s, sim_fiber *f);
void sim_fiber_park(sim *s);
/* Parks the running fiber until global time t. */
void sim_fiber_sleep(sim *s, uint64_t t);
/* Wakes f (parked) through an event at now, if seq still names its wait. */
void sim_fiber_wake_event(sim *s, uint32_t slot, uint64_t seq);
sim_fiber *sim_fiber_at(sim *s, uint32_t slot);
/* Freezes every fiber of a crashed node for good. */
void sim_fiber_kill_node(sim *s, int16_t node);
void sim_fiber_free_all(sim *s);
/* The env's sync primitives: parked fibers, woken in FIFO order. */
void sim_sync_init(void *ctx, drpc_sync *sy);
void sim_sync_destroy(void *ctx, drpc_sync *sy);
void sim_sync_nop(void *ctx, drpc_sync *sy);
bool sim_sync_wait(void *ctx, drpc_sync *sy, uint64_t deadline);
void sim_sync_broadcast(void *ctx, drpc_sync *sy);

/* env.c */
extern const drpc_env_ops sim_env_ops;
void sim_node_init(sim *s, sim_node *n, int16_t index);
uint64_t sim_node_now(const sim_node *n);
uint64_t sim_node_to_global(const sim_node *n, uint64_t t);
/* Handles the events aimed at a node's core or executor. */
void sim_deliver(sim *s, sim_event *ev);
/* Frees what an event that will never run owns (payload bytes). */
void sim_event_drop(sim *s, sim_event *ev);
void sim_crash(sim *s, int16_t node);
/* Starts a crashed node again at now as a fresh process (EV_START): false
 * when the node is not down. The host hook for any later start of a
 * node's program (a restart; a late or repeated start would use it too). */
bool sim_restart(sim *s, int16_t node);

void sim_break_links(sim *s, uint64_t a, uint64_t b, bool oneway);
void sim_reset_between(sim *s, uint64_t a, uint64_t b);
void sim_node_job_done(sim *s, sim_node *n);
void sim_node_maybe_free(sim *s, sim_node *n);
void sim_node_free_agent(sim *s, sim_node *n);
void sim_attach(sim *s, sim_node *n, drpc_agent *a);
/* Frees the node's retired agents (see sim_node.retired). */
void sim_node_free_retired(sim_node *n);

/* devices.c: simcuda on the run's virtual clock. */
int sim_devices_setup(sim *s, drpc_error *err);
void sim_devices_teardown(sim *s);

/* run.c: checkers fed by the core's record output. */
void sim_check_record(sim *s, sim_node *n, const drpc_event *ev);
void sim_count_exec(sim *s, sim_node *n, int16_t caller, uint64_t id,
                    uint64_t conn);
/* Forgets the executions of caller's requests (its own, at a restart). */
void sim_forget_execs(sim_node *n, int16_t caller);

/* True for an event of a node's process (not of the network: frames and
 * connection events follow their connection's state) pushed in an earlier
 * life of the node. */
static inline bool sim_event_stale(const sim *s, const sim_event *ev) {
  if (ev->node < 0 || ev->inc == s->nodes[ev->node].inc)
    return false;
  switch (ev->kind) {
  case EV_TIMER:
  case EV_WAKE:
  case EV_CMD:
  case EV_JOB:
  case EV_NODE_FREE:
  case EV_START:
  case EV_REPLAY:
    return true;
  default:
    return false;
  }
}

/* rng */
static inline uint64_t sim_rand(uint64_t *st) {
  uint64_t z = (*st += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static inline double sim_unit(uint64_t *st) {
  return (double)(sim_rand(st) >> 11) * 0x1.0p-53;
}
/* A stream of its own for each purpose, so adding draws to one does not
 * shift another. */
static inline uint64_t sim_stream(uint64_t seed, uint64_t label) {
  uint64_t st = seed ^ (label * 0xd1b54a32d192ed03ull);
  return sim_rand(&st);
}

#endif
