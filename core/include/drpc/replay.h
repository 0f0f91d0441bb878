/* Replay: feeds one node's recorded inputs to a fresh agent core, in the
 * recorded order and at the recorded times, and checks every output the
 * core produces against the recorded outputs. Function results come from
 * the recording (user code never runs), so replay needs no registry and
 * user code need not be deterministic. The events come from wherever they
 * were kept (traces/ reads them from SQLite). */
#ifndef DRPC_REPLAY_H
#define DRPC_REPLAY_H

#include "drpc/env.h"
#include "drpc/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct drpc_replay drpc_replay;

typedef struct drpc_replay_stats {
  uint64_t inputs, outputs, skipped; /* skipped: spans, logs, faults */
  uint64_t first_ns, last_ns;        /* recorded times of the first/last */
} drpc_replay_stats;

/* Starts a replay from the node's DRPC_EV_IN_START event (its payload is
 * the configuration the core began with). */
int drpc_replay_new(drpc_replay **out, const drpc_event *start,
                    drpc_error *err);
/* Connection ids are the backend's choice, and the core orders some work
 * by them: next(arg) gives the id of the node's next recorded OUT_CONNECT
 * (0 when there is none), which the replayed core's next connect gets. */
void drpc_replay_set_connect_ids(drpc_replay *r, uint64_t (*next)(void *arg),
                                 void *arg);
/* User code may change a value it shares with the core (an owner RRef's
 * value) in place, and a tensor received by IPC handle names memory of
 * the recording process; the recording keeps each such value as the core
 * read it (DRPC_EV_IN_VALUE, either kind), and next(arg, key, &p, &n)
 * hands the node's next one over when its id is key (false: none, or
 * another id: an RRef's live value is read, a tensor fails). The core
 * reads them in recorded order, so one queue serves both kinds (their
 * ids never meet). *p stays valid until the replay is freed. */
void drpc_replay_set_values(drpc_replay *r,
                            bool (*next)(void *arg, uint64_t key,
                                         const void **p, size_t *n),
                            void *arg);
/* Feeds the node's next recorded event. Inputs are applied; each output
 * is compared with the next output the replayed core produced. On the
 * first difference returns DRPC_EDIVERGED with err saying what the
 * recording holds and what replay produced; the replay cannot go on. */
int drpc_replay_feed(drpc_replay *r, const drpc_event *ev, drpc_error *err);
/* After the last event: outputs the core produced that the recording does
 * not hold are a divergence too. Then shuts the core down. */
int drpc_replay_finish(drpc_replay *r, drpc_error *err);
void drpc_replay_stats_get(const drpc_replay *r, drpc_replay_stats *st);
void drpc_replay_free(drpc_replay *r);

/* A one-line description of an event ("out_send peer=1 id=7 aux=2 (CALL)
 * 120 bytes"), for reports. */
const char *drpc_event_kind_name(drpc_event_kind k);
size_t drpc_event_describe(const drpc_event *ev, char *buf, size_t n);

#ifdef __cplusplus
}
#endif
#endif
