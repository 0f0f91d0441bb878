/* The program format fuzz_agent reads (and gen_corpus writes): a config
 * byte, then up to AP_MAX_STEPS operations, each an op byte (modulo
 * AP_OPS) and its arguments, read from the front with consumer.h. */
#ifndef DRPC_FUZZ_AGENT_PROG_H
#define DRPC_FUZZ_AGENT_PROG_H

/* Config byte. */
#define AP_CFG_TWO_AGENTS 0x01 /* w1 runs too (else only its name exists) */
#define AP_CFG_AUTO_JOBS 0x02  /* delivering events also runs jobs */
#define AP_CFG_GRACEFUL 0x04   /* one agent: graceful shutdown at the end */
#define AP_CFG_DROP_FIRST 0x08 /* drop held RRefs before shutting down */
/* Bits 4-5: the default rpc timeout, 1 s << (bits) ... (0: 1 s). */
#define AP_CFG_TIMEOUT_SHIFT 4

#define AP_MAX_STEPS 256

/* Operations and their arguments ("val" is one valgen value with small
 * rrefs; "args" is u8 count (0..4) then per item a u8 (bit7 set: a held
 * RRef, picked by the low bits, when there is one) and a val unless an
 * RRef was taken; "kwargs" is u8 count (0..2) then (u8 key, val) pairs). */
enum {
  AP_FRAME = 0, /* u8 conn, u8 type (0..15), u16 flags, u8 id (bit7: recent
                   request id [low 4 bits], else the low 7 bits), u8 body
                   mode (0 template, 1 val, 2 nil), body */
  AP_RAW,       /* u8 conn, u8 mode (0: blob as a frame; 1: u8 type, u8 id,
                   blob as the payload of a valid header), blob (<= 4096) */
  AP_TICK,      /* u8: < 200: that many 10 ms; else (u8 - 199) * 30 s */
  AP_TIMER,     /* the clock jumps to the earliest armed timer */
  AP_RUN,       /* u8 steps (1..64) of tnet_run */
  AP_JOB,       /* one executor job */
  AP_SETTLE,    /* tnet_run until quiet, jobs included */
  AP_RPC,       /* u8 agent, u8 dst, u8 kind, u8 fn, args, kwargs, u8
                   timeout */
  AP_REMOTE,    /* as AP_RPC, through drpc_remote */
  AP_TO_HERE,   /* u8 rref, u8 timeout (jobs run while it waits) */
  AP_PROXY,     /* u8 rref, u8 kind, u8 fn, args, u8 timeout */
  AP_DROP,      /* u8 rref */
  AP_LOCAL,     /* u8 agent, val: an owner RRef */
  AP_BREAK,     /* u8 pair: 0 w0-w1, 1 intruder-w0, 2 intruder-w1 */
  AP_CONNECT,   /* u8 agent, u8 hello (0 none, else claims worker hello-1
                   modulo 3) */
  AP_COMPLETE,  /* u8 held future, u8 how (even: value val, odd: error) */
  AP_TIMEOUT,   /* u8 agent, u8 tenths of a second */
  AP_METRICS,   /* u8 agent */
  AP_OPS
};

/* Function names AP_RPC's u8 fn picks from (modulo the count). No
 * aten::ones or aten::zeros: a few bytes of shape make them fill up to
 * 4 GiB, which only slows the search (see README.md). */
#define AP_FN_NAMES                                                            \
  {                                                                            \
    "aten::add", "aten::mul", "aten::sum", "aten::matmul", "aten::clone",      \
        "aten::nope", "f::echo", "f::fail", "f::hold", "f::mkref", "f::chain", \
        "f::nope", "drpc::rref_type"                                           \
  }
#define AP_NFN 13

/* Destination names for u8 dst (modulo the count). */
#define AP_DST_NAMES                                                           \
  { "w0", "w1", "w9", "" }
#define AP_NDST 4

/* Timeouts for u8 timeout (modulo the count), seconds; -1 is unset. */
#define AP_TIMEOUTS                                                            \
  { -1.0, 0.0, 0.001, 0.5, 5.0, -2.0 }
#define AP_NTIMEOUTS 6

/* Keys for kwargs. */
#define AP_KW_NAMES                                                            \
  { "alpha", "dim", "keepdim", "dtype", "size", "other" }
#define AP_NKW 6

#endif
