/* Value trees from fuzzer bytes (and back, for the corpus generator), and
 * the strict comparison the round-trip checks use. */
#ifndef DRPC_FUZZ_VALGEN_H
#define DRPC_FUZZ_VALGEN_H

#include "consumer.h"

#include "drpc/value.h"

/* The grammar vg_value reads, one tag byte (taken modulo VG_KINDS) then:
 *   NIL -                     BOOL  u8 (low bit)
 *   INT u64 (two's complement) FLOAT u64 (IEEE bits)
 *   STR blob (<= VG_MAX_STR)   BYTES blob (<= VG_MAX_BYTES)
 *   LIST count (0..VG_MAX_ITEMS), items
 *   DICT count, (key blob (<= VG_MAX_KEY; cut at a NUL), value)*
 *   TENSOR u8 flags (bit0: reuse the last tensor, bit1: a transposed view
 *          when 2-d), dtype (0..5), ndim (0..3), dims (0..4 each), then
 *          element bytes from the front (zero when the input runs out)
 *   WORKER u16 id, name blob (<= VG_MAX_NAME; cut at a NUL)
 *   RREF   u16 owner, u16 rref created_on, u64 rref local id, u16 fork
 *          created_on, u64 fork local id, u16 parent, type-name blob; taken
 *          as they are, so most random ones are out of range (the encoder
 *          must refuse them). With small_rrefs set instead six u8s taken
 *          modulo 3 (worker ids) or 8 (local ids), then the type name: fork
 *          data that names the workers and RRefs of a small test
 *   NEST   levels (1..VG_MAX_NEST), then one value wrapped in that many
 *          one-item lists (deep trees from a few bytes)
 * "blob" and "count" are fz_blob / fz_range (see consumer.h). Past the node
 * budget or VG_MAX_DEPTH every value is nil (NEST stops at the bound). */
enum {
  VG_NIL = 0,
  VG_BOOL,
  VG_INT,
  VG_FLOAT,
  VG_STR,
  VG_BYTES,
  VG_LIST,
  VG_DICT,
  VG_TENSOR,
  VG_WORKER,
  VG_RREF,
  VG_NEST,
  VG_KINDS
};

#define VG_MAX_STR 64
#define VG_MAX_BYTES 256
#define VG_MAX_ITEMS 16
#define VG_MAX_KEY 16
#define VG_MAX_NAME 32
#define VG_MAX_NEST 80
#define VG_MAX_DIM 4
#define VG_MAX_NDIM 3
/* Trees never get deeper than this (the root at 1): the recursive walks of
 * value.c and of the checks must not run out of stack. */
#define VG_MAX_DEPTH 200

typedef struct vg {
  fz *in;
  int nodes, max_nodes;
  int depth;         /* of the value being read, the root at 1 */
  bool allow_rref;   /* otherwise RREF reads its fields but yields nil */
  bool small_rrefs;  /* RREF reads the small form (see above) */
  drpc_tensor *last; /* the last tensor made (a reference), for sharing */
} vg;

void vg_init(vg *g, fz *in, int max_nodes, bool allow_rref);
/* Drops the reference to the last tensor. */
void vg_done(vg *g);
/* Reads one value; never NULL unless memory runs out (then it aborts). */
drpc_value *vg_value(vg *g);

/* Structural equality for round trips: kinds, ints, float bits, bytes,
 * dict keys in order, tensors by dtype, shape and element bytes, worker and
 * rref fields (a NULL name equals ""). */
bool vg_same(const drpc_value *a, const drpc_value *b);

/* True when the tensors of a decoded message (ts, in data-section order)
 * are first referenced in that order by a depth-first walk of body: the
 * numbering the encoder gives them, so only then can the bytes re-encode
 * exactly. */
bool vg_tensors_in_order(const drpc_value *body, drpc_tensor *const *ts,
                         uint32_t n);
/* Whether any float (value or float tensor element) in v is a NaN, which
 * drpc_value_equal never calls equal. */
bool vg_has_nan(const drpc_value *v);

/* ---- writing the grammar (corpus generator) ----------------------------- */

void vgo_nil(fzo *o);
void vgo_bool(fzo *o, bool b);
void vgo_int(fzo *o, int64_t i);
void vgo_float(fzo *o, double d);
void vgo_str(fzo *o, const char *s);
void vgo_bytes(fzo *o, const void *p, size_t n);
/* Followed by n values. */
void vgo_list(fzo *o, size_t n);
/* Followed by n (vgo_key, value) pairs. */
void vgo_dict(fzo *o, size_t n);
void vgo_key(fzo *o, const char *key);
/* dims has ndim entries; data supplies the elements (may be short). */
void vgo_tensor(fzo *o, uint8_t flags, int dtype, int ndim,
                const unsigned *dims, const void *data, size_t len);
void vgo_worker(fzo *o, int16_t id, const char *name);
void vgo_rref(fzo *o, int16_t owner, int16_t rc, uint64_t rl, int16_t fc,
              uint64_t fl, int16_t parent, const char *type_name);
/* The small form (small_rrefs): worker ids below 3, local ids below 8. */
void vgo_rref_small(fzo *o, int owner, int rc, int rl, int fc, int fl,
                    int parent, const char *type_name);
/* Followed by one value. */
void vgo_nest(fzo *o, unsigned levels);

#endif
