/* A deterministic, single-threaded env for unit tests: a manual clock,
 * connections that are queues of frames, and an executor the test pumps.
 * Several agents (nodes) share one tnet; tnet_run delivers everything that
 * is pending, in a fixed order, until nothing is left. */
#ifndef DRPC_TESTENV_H
#define DRPC_TESTENV_H

#include "drpc/drpc.h"

#define TNET_MAX_NODES 8
#define TNET_MAX_CONNS 64
/* The executor size each node reports through pool_stats. */
#define TNET_POOL_SIZE 4

typedef struct tnet tnet;
typedef struct tjob tjob;

typedef struct tnode {
  tnet *net;
  int index;
  drpc_env env;
  drpc_agent *agent;
  uint64_t timer_deadline;
  char addr[32];
  /* Counters the tests inspect. */
  int frames_sent, connects, closes, jobs_run, logs_error;
  int jobs_running; /* jobs of this node on the (pumped) executor now */
  char last_log[512];
} tnode;

typedef struct tconn {
  bool used, open, closed;
  int from, to;     /* node indices: from dialed to */
  uint64_t id_from; /* the id each side knows it by */
  uint64_t id_to;
} tconn;

typedef struct tevent tevent;

struct tnet {
  uint64_t now_ns;
  int nnodes;
  tnode nodes[TNET_MAX_NODES];
  tconn conns[TNET_MAX_CONNS];
  uint64_t next_conn_id;
  tevent *head, *tail; /* pending deliveries, FIFO */
  tjob *jobs_head, *jobs_tail;
  drpc_cmd *cmds_head, *cmds_tail;
  uint64_t rng;
  bool refuse_connect; /* connections fail to open */
  bool auto_run_jobs;  /* tnet_run also runs executor jobs */
  /* Called for every frame a node sends (to: the receiving node), with the
   * frame's bytes (borrowed), in send order: transcripts for tests. */
  void (*on_send)(void *user, int from, int to, const uint8_t *buf, size_t len);
  void *on_send_user;
};

void tnet_init(tnet *n);
/* Adds a node with address "tnet://<index>". */
tnode *tnet_node(tnet *n);
/* Delivers pending events, commands and (when auto_run_jobs) jobs until
 * nothing is left or max_steps is reached; returns the steps taken. */
int tnet_run(tnet *n, int max_steps);
/* Runs one queued executor job; false when none. */
bool tnet_run_job(tnet *n);
/* Moves the clock to t and fires due timers. */
void tnet_advance_to(tnet *n, uint64_t t_ns);
/* Breaks the connection between two nodes (both directions), reporting it
 * to both agents. */
void tnet_break(tnet *n, int a, int b);
/* Opens a connection from node `from` (which need not run an agent; frames
 * sent to it are dropped after on_send sees them) to node `to`'s agent,
 * which accepts it at once. *id_at_to gets the id `to` knows it by, for
 * injecting frames with drpc_agent_on_frame. Returns the conns index, or
 * -1 when the table is full. */
int tnet_raw_connect(tnet *n, int from, int to, uint64_t *id_at_to);
/* Drops undelivered events and runs leftover jobs and commands (they own
 * themselves). Those may touch their agent: drain with tnet_run and free
 * the agents (setting node->agent to NULL) only after that. */
void tnet_free(tnet *n);
/* A store shared by the nodes: every node's name and address are written
 * before the agents start, so agent start never blocks. */
drpc_store *tnet_store(tnet *n, int world, const char *const *names);

#endif
