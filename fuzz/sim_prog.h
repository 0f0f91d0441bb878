/* The input format fuzz_sim reads (and gen_corpus writes), front to back
 * with consumer.h:
 *
 *   u8 scenario (modulo SP_NSCENARIOS)
 *   workers: fz_range(min_workers, min(max_workers, SP_MAX_WORKERS))
 *   iters: fz_range(1, SP_MAX_ITERS); threads: fz_range(1, 4)
 *   u32 seed (latency draws, link factors, start times, node randomness)
 *   u8 net: bit 0 SP_NET_QUANTISED, bits 1-3 latency index, bits 4-5 rto
 *     index, bit 6 SP_NET_CLOCKS, bit 7 SP_NET_TWICE
 *   faults: fz_range(0, SP_MAX_FAULTS) count, u8 window ((1 + u8) ms: the
 *     fault phase), then per fault: u8 kind (SP_FAULT_KINDS), u16 start
 *     and u16 duration (in 1/65536 of the window), u8 mask a, u8 mask b
 *     (b loses a's nodes; link faults with an empty b are dropped), u8
 *     node, u8 factor (2 + u8 % 49, slow)
 *   the rest (up to SP_MAX_TIES bytes): the tie-break table */
#ifndef DRPC_FUZZ_SIM_PROG_H
#define DRPC_FUZZ_SIM_PROG_H

#define SP_SCENARIOS                                                           \
  {                                                                            \
    "echo", "fanout", "timeouts", "rref_chain", "ps", "shutdown_storm",        \
        "membership"                                                           \
  }
#define SP_NSCENARIOS 7
#define SP_MAX_WORKERS 4
#define SP_MAX_ITERS 4
#define SP_MAX_FAULTS 12
#define SP_MAX_TIES 64

#define SP_NET_QUANTISED 0x01 /* no jitter, tail, bandwidth or job cost */
#define SP_NET_CLOCKS 0x40    /* skewed clocks and drifts */
#define SP_NET_TWICE 0x80     /* run twice, compare the hashes */

/* One-way latencies (bits 1-3 of net, modulo the count), ns. */
#define SP_LATENCIES                                                           \
  { 1000, 50000, 200000, 1000000, 5000000, 20000000 }
#define SP_NLATENCIES 6
/* Retransmission timeouts (bits 4-5 of net), ns. */
#define SP_RTOS                                                                \
  { 10000000, 50000000, 200000000, 1000000000 }
#define SP_NRTOS 4

/* Fault kinds a fault's u8 picks from: every kind but crash. */
#define SP_FAULT_KINDS                                                         \
  {                                                                            \
    DRPC_SIM_PARTITION, DRPC_SIM_ONEWAY, DRPC_SIM_CLOG, DRPC_SIM_RESET,        \
        DRPC_SIM_SLOW                                                          \
  }
#define SP_NFAULT_KINDS 5

#endif
