/* Internal: the sans-I/O half of the stores: the key-value table behind the
 * memory store, the TCP server and the file store (core/store.c), and the
 * TCP store's wire codec (core/store_proto.c). Nothing here does I/O.
 *
 * Wire format (all integers little-endian):
 *
 *   frame    u32 body length (1 .. DRPC_STORE_PROTO_MAX_FRAME), body
 *   request  u8 op, then the op's fields:
 *              SET         key, value
 *              GET         key, i64 timeout_ms (0 = forever)
 *              ADD         key, i64 delta
 *              WAIT        i64 timeout_ms, u32 n (<= DRPC_STORE_MAX_WAIT_KEYS),
 *                          n keys
 *              COMPARE_SET key, expected, desired
 *              DELETE      key
 *              NUM_KEYS    -
 *              LIST        prefix (may be empty)
 *              PING        u32 protocol version
 *   response u8 op (echoes the request), i32 code (0 or a negative drpc
 *            error code); on error the message as bytes, otherwise:
 *              GET value | ADD i64 | COMPARE_SET value | DELETE u8 existed |
 *              NUM_KEYS i64 | LIST u32 n, n keys | PING u32 version |
 *              nothing for SET and WAIT
 *
 * A key, value or message is "bytes": u32 length then that many bytes. Keys
 * are 1 .. DRPC_STORE_MAX_KEY bytes without NUL; values at most
 * DRPC_STORE_MAX_VALUE; messages at most DRPC_STORE_PROTO_MAX_MESSAGE (the
 * encoder truncates longer ones). Every length is checked before use and
 * trailing bytes are an error, so a decoder never reads past its input.
 *
 * The file store keeps its table in the same vocabulary: the magic
 * DRPC_STORE_FILE_MAGIC, u32 record count, then (key, value) pairs. */
#ifndef DRPC_CORE_STORE_PROTO_H
#define DRPC_CORE_STORE_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "drpc/error.h"
#include "drpc/store.h"

#define DRPC_STORE_PROTO_VERSION 1
/* Longest error message carried in a response. */
#define DRPC_STORE_PROTO_MAX_MESSAGE (128u << 10)
/* Longest frame body: COMPARE_SET with two maximal values is the largest
 * request; responses (LIST included) are held to the same bound. */
#define DRPC_STORE_PROTO_MAX_FRAME                                             \
  ((size_t)2 * DRPC_STORE_MAX_VALUE + 2 * DRPC_STORE_MAX_KEY + (64u << 10))
/* Keys named in a timeout message; the rest are counted. */
#define DRPC_STORE_TIMEOUT_NAMED_KEYS 16

#define DRPC_STORE_FILE_MAGIC "DRPCSTO1"
#define DRPC_STORE_FILE_MAGIC_LEN 8
/* The largest image a full table makes: magic, count and two length words
 * per record beside DRPC_STORE_MAX_BYTES of keys and values. */
#define DRPC_STORE_FILE_MAX_BYTES                                              \
  (DRPC_STORE_MAX_BYTES + 8ull * DRPC_STORE_MAX_KEYS + 12)

typedef enum drpc_store_op {
  DRPC_STORE_OP_SET = 1,
  DRPC_STORE_OP_GET = 2,
  DRPC_STORE_OP_ADD = 3,
  DRPC_STORE_OP_WAIT = 4,
  DRPC_STORE_OP_COMPARE_SET = 5,
  DRPC_STORE_OP_DELETE = 6,
  DRPC_STORE_OP_NUM_KEYS = 7,
  DRPC_STORE_OP_LIST = 8,
  DRPC_STORE_OP_PING = 9,
} drpc_store_op;

/* The op's name ("COMPARE_SET"), "unknown" for other values. */
const char *drpc_store_proto_op_name(int op);

/* ---- the table (core/store.c) ---------------------------------------- */

/* A sorted table of keys (byte strings without NUL) and values. Not
 * thread-safe: its owner locks. Bounded by DRPC_STORE_MAX_KEYS and
 * DRPC_STORE_MAX_BYTES. */
typedef struct drpc_store_table drpc_store_table;

drpc_store_table *drpc_store_table_new(void);
void drpc_store_table_free(drpc_store_table *t);
/* Finds key; *val (borrowed, NUL-terminated beyond *len) stays valid until
 * the table next changes. val and len may be NULL. */
bool drpc_store_table_find(const drpc_store_table *t, const char *key,
                           size_t klen, const uint8_t **val, size_t *len);
/* Copies key and value in. DRPC_ENOMEM, DRPC_ETOOBIG when full. */
int drpc_store_table_set(drpc_store_table *t, const char *key, size_t klen,
                         const void *val, size_t len, drpc_error *err);
/* The store's add: DRPC_EINVAL for a non-integer value or an overflow. */
int drpc_store_table_add(drpc_store_table *t, const char *key, size_t klen,
                         int64_t delta, int64_t *out, drpc_error *err);
/* The store's compare_set; *actual is borrowed like find's value (an empty
 * static string when the key stays missing). *changed tells whether the
 * table changed (may be NULL). */
int drpc_store_table_compare_set(drpc_store_table *t, const char *key,
                                 size_t klen, const void *expected, size_t elen,
                                 const void *desired, size_t dlen,
                                 const uint8_t **actual, size_t *alen,
                                 bool *changed, drpc_error *err);
/* Removes key; false when it was missing. */
bool drpc_store_table_delete(drpc_store_table *t, const char *key, size_t klen);
size_t drpc_store_table_count(const drpc_store_table *t);
/* Sorted malloc'd copies of the keys starting with prefix. */
int drpc_store_table_list(const drpc_store_table *t, const char *prefix,
                          size_t plen, char ***keys, size_t *n,
                          drpc_error *err);
/* The i-th entry in key order (i < count), borrowed. */
void drpc_store_table_entry(const drpc_store_table *t, size_t i,
                            const char **key, size_t *klen, const uint8_t **val,
                            size_t *vlen);

/* Sets err to DRPC_ETIMEOUT with "timed out after 1.50 s waiting for keys:
 * a, b" naming named_n keys (key i has length lens[i]) and counting
 * total_missing - named_n more. Returns DRPC_ETIMEOUT. */
int drpc_store_timeout_error(drpc_error *err, double timeout_s,
                             const char *const *keys, const size_t *lens,
                             size_t named_n, size_t total_missing);

/* Checks a key: non-empty, at most DRPC_STORE_MAX_KEY bytes, no NUL.
 * what names it in the message ("GET key"). */
int drpc_store_check_key(const char *what, const char *key, size_t klen,
                         drpc_error *err);

/* ---- the codec (core/store_proto.c) ---------------------------------- */

/* A growable output buffer; a failed allocation or an oversized frame is
 * remembered and reported by drpc_store_proto_end. */
typedef struct drpc_store_buf {
  uint8_t *data;
  size_t len, cap;
  size_t limit;       /* most bytes it grows to: one frame by default */
  size_t frame_start; /* where the current frame's length word sits */
  int failed;         /* 0, DRPC_ENOMEM or DRPC_ETOOBIG */
} drpc_store_buf;

void drpc_store_buf_init(drpc_store_buf *b);
void drpc_store_buf_free(drpc_store_buf *b);
/* Drops the contents but keeps the memory. */
void drpc_store_buf_reset(drpc_store_buf *b);

/* Starts a request frame for op. */
void drpc_store_proto_begin_req(drpc_store_buf *b, drpc_store_op op);
/* Starts a response frame; code 0 is followed by the op's payload. */
void drpc_store_proto_begin_resp(drpc_store_buf *b, drpc_store_op op, int code);
/* A complete error response (message truncated to the limit). */
void drpc_store_proto_error_resp(drpc_store_buf *b, drpc_store_op op, int code,
                                 const char *msg);
void drpc_store_proto_put_u8(drpc_store_buf *b, uint8_t v);
void drpc_store_proto_put_u32(drpc_store_buf *b, uint32_t v);
void drpc_store_proto_put_i32(drpc_store_buf *b, int32_t v);
void drpc_store_proto_put_i64(drpc_store_buf *b, int64_t v);
void drpc_store_proto_put_bytes(drpc_store_buf *b, const void *p, size_t len);
/* Writes the frame length. DRPC_ENOMEM, or DRPC_ETOOBIG when the body
 * exceeds DRPC_STORE_PROTO_MAX_FRAME. */
int drpc_store_proto_end(drpc_store_buf *b, drpc_error *err);

/* A borrowed byte range inside decoded input. */
typedef struct drpc_store_bytes {
  const uint8_t *p;
  size_t len;
} drpc_store_bytes;

/* Reads a frame header from avail bytes at p: *body_len is 0 while fewer
 * than 4 bytes are there, else the body length. DRPC_ETOOBIG / DRPC_EPROTO
 * for a length over the limit or zero. */
int drpc_store_proto_frame_len(const uint8_t *p, size_t avail, size_t *body_len,
                               drpc_error *err);

typedef struct drpc_store_req {
  drpc_store_op op;
  drpc_store_bytes key;  /* SET GET ADD COMPARE_SET DELETE; LIST prefix */
  drpc_store_bytes val;  /* SET value; COMPARE_SET expected */
  drpc_store_bytes val2; /* COMPARE_SET desired */
  int64_t num;           /* GET WAIT timeout_ms; ADD delta */
  uint32_t version;      /* PING */
  size_t nkeys;          /* WAIT */
  drpc_store_bytes keys; /* WAIT: the n encoded keys, already checked */
} drpc_store_req;

/* Decodes a request body (without its length word). The result borrows
 * from body. DRPC_EPROTO / DRPC_ETRUNC / DRPC_ETOOBIG with a message that
 * says what was wrong and where. */
int drpc_store_proto_decode_req(const uint8_t *body, size_t len,
                                drpc_store_req *r, drpc_error *err);

typedef struct drpc_store_resp {
  drpc_store_op op;
  int code;              /* 0 or a negative drpc code */
  drpc_store_bytes msg;  /* code != 0 */
  drpc_store_bytes val;  /* GET COMPARE_SET */
  int64_t num;           /* ADD NUM_KEYS */
  bool flag;             /* DELETE */
  uint32_t version;      /* PING */
  size_t nkeys;          /* LIST */
  drpc_store_bytes keys; /* LIST: the n encoded keys, already checked */
} drpc_store_resp;

/* Decodes a response body for a request of op expect. */
int drpc_store_proto_decode_resp(const uint8_t *body, size_t len,
                                 drpc_store_op expect, drpc_store_resp *r,
                                 drpc_error *err);

/* The file store's image of a table: the magic, u32 count, then (key,
 * value) bytes pairs in key order. encode replaces b's contents. */
int drpc_store_proto_encode_table(const drpc_store_table *t, drpc_store_buf *b,
                                  drpc_error *err);
/* Loads an image into t (which should be empty); an empty input is an
 * empty table. DRPC_EPROTO / DRPC_ETRUNC / DRPC_ETOOBIG for a damaged
 * image, naming the record. */
int drpc_store_proto_decode_table(const uint8_t *p, size_t len,
                                  drpc_store_table *t, drpc_error *err);

/* Steps through keys checked by a decoder: reads the key at *pos into *key
 * and advances *pos. Only for ranges a decoder accepted. */
void drpc_store_proto_next_key(const drpc_store_bytes *keys, size_t *pos,
                               drpc_store_bytes *key);

#endif
