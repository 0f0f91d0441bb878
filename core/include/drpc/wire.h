/* The wire protocol: frame header, message types, value encoding, tensors
 * out of band. Layout (all integers little-endian):
 *
 *   header   32 bytes  magic "DRPC", version, type, flags, request id,
 *                      payload length, tensor count, data length
 *   payload  payload_len bytes: one encoded value (the message body)
 *   padding  to a multiple of DRPC_TENSOR_ALIGN from the frame start
 *   data     data_len bytes: each tensor's bytes, in the order the payload
 *            names them, each starting at a DRPC_TENSOR_ALIGN boundary
 *            (a tensor with no bytes takes no space and adds no padding;
 *            data_len ends at the last tensor's last byte)
 *
 * Value encoding (tag byte, then):
 *   0 nil | 1 false | 2 true | 3 int: zigzag varint | 4 float: 8 bytes
 *   5 str / 6 bytes: varint length, bytes | 7 list: varint count, items
 *   8 dict: varint count, (varint key length, key bytes, value)*
 *   9 tensor: dtype u8, device type u8, device index i8, ndim u8,
 *     ndim shape varints, varint tensor index (into the data section)
 *   10 worker: zigzag varint id, varint length, name bytes
 *   11 rref (fork data): zigzag owner, zigzag rref created_on, varint rref
 *     local_id, zigzag fork created_on, varint fork local_id, zigzag
 *     parent, varint type-name length, type-name bytes (0: unknown).
 *     Worker ids are 0..32767, local ids below 2^48.
 *   12 shared tensor (same host, no bytes in the data section): dtype u8,
 *     device type u8 (cuda), device index i8, ndim u8, ndim shape varints,
 *     varint handle length (1..DRPC_WIRE_MAX_HANDLE), handle bytes: how
 *     the receiver reaches the sender's device memory (gpu/ IPC).
 *
 * A tensor's device in a descriptor is where the receiver is to put it
 * (the sender's device map applied), not where the sender had it.
 */
#ifndef DRPC_WIRE_H
#define DRPC_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "drpc/error.h"
#include "drpc/value.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DRPC_WIRE_MAGIC 0x43505244u /* "DRPC" read as little-endian u32 */
#define DRPC_WIRE_VERSION 1
#define DRPC_WIRE_HEADER_SIZE 32
/* Default bound on header + payload + padding + data. */
#define DRPC_WIRE_DEFAULT_MAX_FRAME (1ull << 30)
/* Bound on the payload section alone (values are small; tensors go out of
 * band). */
#define DRPC_WIRE_DEFAULT_MAX_PAYLOAD (64u << 20)
/* Bound on tensors in one frame. */
#define DRPC_WIRE_MAX_TENSORS 4096
/* Bytes of a shared tensor's handle. */
#define DRPC_WIRE_MAX_HANDLE 256
/* Local ids of RRefs and forks stay below this (ids pack into 64 bits). */
#define DRPC_RREF_MAX_LOCAL_ID (1ull << 48)

typedef enum drpc_msg_type {
  DRPC_MSG_HELLO = 1,    /* connection opener: [version, id, name] */
  DRPC_MSG_CALL = 2,     /* request: [kind, name, args, kwargs] */
  DRPC_MSG_RESPONSE = 3, /* response: the result value */
  DRPC_MSG_ERROR = 4,    /* response: [code, message] */
  DRPC_MSG_REMOTE_CALL =
      5,                   /* request: [kind, name, args, kwargs, rref, fork] */
  DRPC_MSG_REMOTE_RET = 6, /* response to REMOTE_CALL */
  DRPC_MSG_RREF_FETCH = 7, /* request: to_here */
  DRPC_MSG_RREF_USER_DELETE = 8,
  DRPC_MSG_RREF_FORK_REQUEST = 9,
  DRPC_MSG_RREF_CHILD_ACCEPT = 10,
  DRPC_MSG_RREF_ACK = 11,
  DRPC_MSG_JOIN = 12,     /* dynamic membership: a worker joins */
  DRPC_MSG_LEAVE = 13,    /* dynamic membership: a worker leaves */
  DRPC_MSG_SHUTDOWN = 14, /* the sender is closing this connection cleanly */
  DRPC_MSG_RELEASE = 15,  /* one-way: [lend ids] of shared tensors read */
  DRPC_MSG_TYPE_MAX = 15
} drpc_msg_type;

const char *drpc_msg_type_name(int type);
/* True for types that expect a response with the same request id. */
bool drpc_msg_type_is_request(int type);
bool drpc_msg_type_is_response(int type);

typedef struct drpc_frame_header {
  uint32_t magic;
  uint8_t version;
  uint8_t type;
  uint16_t flags;
  uint64_t id;
  uint32_t payload_len;
  uint32_t ntensors;
  uint64_t data_len;
} drpc_frame_header;

typedef struct drpc_wire_limits {
  uint64_t max_frame;   /* whole frame */
  uint32_t max_payload; /* payload section */
  uint32_t max_depth;   /* value nesting */
} drpc_wire_limits;

void drpc_wire_limits_default(drpc_wire_limits *lim);

/* Offset of the data section from the frame start. */
uint64_t drpc_wire_data_offset(uint32_t payload_len);
/* Total frame size for a header; fails with DRPC_ETOOBIG on overflow. */
int drpc_wire_frame_size(const drpc_frame_header *h, uint64_t *out);

/* Writes the 32-byte header. */
void drpc_wire_header_encode(const drpc_frame_header *h, uint8_t *buf);
/* Reads and checks a header: magic, version, known type, payload and frame
 * size against lim, tensor count. Errors: DRPC_EPROTO (bad magic, unknown
 * type, inconsistent lengths), DRPC_EVERSION, DRPC_ETOOBIG; err->msg says
 * exactly what was wrong. */
int drpc_wire_header_decode(const uint8_t *buf, size_t len,
                            drpc_frame_header *out, const drpc_wire_limits *lim,
                            drpc_error *err);

/* A decoded message: the header fields, the body value and the tensors
 * the body refers to (in data-section order). */
/* A shared tensor as decoded: the body holds `tensor`, an empty CPU
 * placeholder, until the agent reaches the memory through the handle and
 * puts the data in place (drpc_agent's device code). */
typedef struct drpc_wire_shared {
  drpc_tensor *tensor; /* owned reference */
  drpc_dtype dtype;
  int ndim;
  int64_t shape[DRPC_TENSOR_MAX_DIMS];
  drpc_device device;
  uint32_t handle_len;
  uint8_t handle[DRPC_WIRE_MAX_HANDLE];
} drpc_wire_shared;

typedef struct drpc_msg {
  uint8_t type;
  uint16_t flags;
  uint64_t id;
  drpc_value *body;
  drpc_tensor **tensors; /* ntensors references, owned, all on the CPU */
  uint32_t ntensors;
  uint32_t nrrefs; /* rref nodes (fork data) in the body */
  /* Per tensor, the device its descriptor names (where the sender wants it
   * put); NULL when every one names the CPU. */
  drpc_device *devices;
  drpc_wire_shared *shared; /* shared tensors, in payload order */
  uint32_t nshared;
} drpc_msg;

void drpc_msg_clear(drpc_msg *m);

/* Step 1 of a streamed decode: given the header and the payload bytes,
 * decode the body and allocate (uninitialised) storage for every tensor so
 * the data section can be read straight into it. */
int drpc_wire_decode_payload(const drpc_frame_header *h, const uint8_t *payload,
                             const drpc_wire_limits *lim, drpc_msg *out,
                             drpc_error *err);
/* Step 2: the places the data section must be read into, in order. Padding
 * between tensors goes to pad_sink (at least DRPC_TENSOR_ALIGN bytes).
 * Returns the iovec count needed (may exceed max; call again with more). */
size_t drpc_wire_data_iov(const drpc_msg *m, uint64_t data_offset,
                          struct iovec *iov, size_t max, void *pad_sink);

/* Decodes a whole frame held in one buffer (simulator, fuzzers, tests). */
int drpc_wire_decode(const uint8_t *buf, size_t len,
                     const drpc_wire_limits *lim, drpc_msg *out,
                     drpc_error *err);

/* An encoded frame ready to send: a head buffer (header, payload, padding)
 * and the tensors whose bytes follow, each padded to the alignment. Holds a
 * reference to every tensor until freed, so tensor data is written from its
 * own storage with no copy. */
typedef struct drpc_outframe {
  uint8_t *head;
  size_t head_len;
  drpc_tensor **tensors;
  uint32_t ntensors;
  uint64_t total_len;
  struct drpc_outframe *next; /* for the backend's send queues */
  /* Device copies still filling tensor bytes, chunk by chunk (NULL:
   * none): bytes are read only once their chunk is done (see
   * drpc_outframe_wait and drpc_outframe_ready_end). */
  struct drpc_devchunks *pending;
  /* tensors and head live in the frame's own allocation (the encoder's
   * frames); otherwise each is malloc'd (or NULL) and freed with it. */
  bool one_block;
} drpc_outframe;

/* Encodes a message of type/flags/id with the given body (borrowed; NULL
 * means nil). Non-contiguous tensors are copied to contiguous storage; a
 * tensor that appears twice is sent once. Fails with DRPC_ETOOBIG when the
 * frame would exceed lim, DRPC_EUNSUPPORTED for a non-CPU tensor, DRPC_EINVAL
 * for values nested too deep. */
int drpc_wire_encode(uint8_t type, uint16_t flags, uint64_t id,
                     const drpc_value *body, const drpc_wire_limits *lim,
                     drpc_outframe **out, drpc_error *err);
/* Supplies the fork data written for an rref node (the encoder's caller
 * runs the fork protocol; see core/rref.c). Called once per rref node, in
 * payload order, before anything is written; fills out->u.r (type_name
 * borrowed until the encode returns). Non-zero fails the encode. */
typedef int (*drpc_wire_rref_fn)(void *ctx, const drpc_value *node,
                                 drpc_value *out, drpc_error *err);
/* drpc_wire_encode with an rref hook. Without a hook (NULL), rref nodes
 * travel as the fork data they hold, and a node holding a handle fails
 * with DRPC_EUNSUPPORTED. */
int drpc_wire_encode_ex(uint8_t type, uint16_t flags, uint64_t id,
                        const drpc_value *body, const drpc_wire_limits *lim,
                        drpc_wire_rref_fn rref_fn, void *rref_ctx,
                        drpc_outframe **out, drpc_error *err);
/* How one tensor travels, chosen by an encoder's tensor hook. */
typedef struct drpc_wire_tensor_plan {
  /* Written in the descriptor: the device the receiver puts it on. */
  drpc_device target;
  /* The CPU tensor whose bytes fill the data section (the encoder takes
   * this reference; it may be the tensor itself, increfed). NULL: the
   * tensor is shared by handle instead. */
  drpc_tensor *send;
  uint32_t handle_len; /* when send is NULL: 1..DRPC_WIRE_MAX_HANDLE */
  uint8_t handle[DRPC_WIRE_MAX_HANDLE];
  /* A shared tensor's descriptor: preset from the tensor (a hook that
   * re-sends a decoded placeholder sets the real ones). */
  drpc_dtype dtype;
  int ndim;
  int64_t shape[DRPC_TENSOR_MAX_DIMS];
} drpc_wire_tensor_plan;
/* Called once per distinct tensor, in payload order, before anything is
 * written. Non-zero fails the encode (the plan's reference, if set, is
 * dropped by the encoder). */
typedef int (*drpc_wire_tensor_fn)(void *ctx, drpc_tensor *t,
                                   drpc_wire_tensor_plan *plan,
                                   drpc_error *err);
typedef struct drpc_wire_hooks {
  drpc_wire_rref_fn rref_fn; /* NULL: see drpc_wire_encode_ex */
  void *rref_ctx;
  /* NULL: CPU tensors travel as they are; other devices fail with
   * DRPC_EUNSUPPORTED. */
  drpc_wire_tensor_fn tensor_fn;
  void *tensor_ctx;
} drpc_wire_hooks;
int drpc_wire_encode_hooks(uint8_t type, uint16_t flags, uint64_t id,
                           const drpc_value *body, const drpc_wire_limits *lim,
                           const drpc_wire_hooks *hooks, drpc_outframe **out,
                           drpc_error *err);
/* Re-encodes a decoded message as it arrived (devices and shared tensors
 * included): the encoding is canonical, so the bytes are the frame's. The
 * message must not have been placed on devices yet. */
int drpc_wire_encode_msg(const drpc_msg *m, const drpc_wire_limits *lim,
                         drpc_outframe **out, drpc_error *err);
/* Changes the request id in an encoded frame. */
void drpc_outframe_set_id(drpc_outframe *f, uint64_t id);
/* Fills iov with the frame's pieces starting at byte offset `from`; returns
 * the count needed (may exceed max). pad_zero must point at
 * DRPC_TENSOR_ALIGN zero bytes. */
size_t drpc_outframe_iov(const drpc_outframe *f, uint64_t from,
                         struct iovec *iov, size_t max, const void *pad_zero);
/* The same for bytes [from, to) only. */
size_t drpc_outframe_iov_upto(const drpc_outframe *f, uint64_t from,
                              uint64_t to, struct iovec *iov, size_t max,
                              const void *pad_zero);
/* For a writer that sends a frame as its device copies finish: waits for
 * the chunk holding byte `from` (and those before it) and returns how far
 * the frame may be read now (total_len when everything is there). On a
 * failed copy returns `from` with *rc set (and err). */
uint64_t drpc_outframe_ready_end(drpc_outframe *f, uint64_t from, int *rc,
                                 drpc_error *err);
/* Copies the whole frame into one new buffer (caller frees with free()). */
uint8_t *drpc_outframe_flatten(const drpc_outframe *f, size_t *len);
/* Frees f; pending device copies are waited for first (they write f's
 * tensors). */
void drpc_outframe_free(drpc_outframe *f);
/* Waits on the host for all of f's pending device copies, if any; then
 * f's bytes may be read. Non-zero (err set) when a copy failed. */
int drpc_outframe_wait(drpc_outframe *f, drpc_error *err);

#ifdef __cplusplus
}
#endif
#endif
