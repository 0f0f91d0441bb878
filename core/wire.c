/* The wire codec: frame headers, value encoding and out-of-band tensor data. */
#include "drpc/wire.h"
#include "drpc/device.h"

#include <assert.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* Layout of the data section, shared by every function below that walks it:
 * tensors follow in index order; a tensor with bytes starts at the next
 * multiple of DRPC_TENSOR_ALIGN counted from the frame start, and a tensor
 * with no bytes takes no space and adds no padding. data_len ends with the
 * last tensor's bytes, so a frame never ends in padding. */

#define ALIGN ((uint64_t)DRPC_TENSOR_ALIGN)

/* Rounds x up to the alignment; false when that would pass UINT64_MAX. */
static bool align_up(uint64_t x, uint64_t *out) {
  if (x > UINT64_MAX - (ALIGN - 1))
    return false;
  *out = (x + ALIGN - 1) & ~(ALIGN - 1);
  return true;
}

/* The same for offsets inside a layout that was already checked. */
static uint64_t aligned(uint64_t x) {
  assert(x <= UINT64_MAX - (ALIGN - 1));
  return (x + ALIGN - 1) & ~(ALIGN - 1);
}

/* Byte order is written out with shifts so the code means the same on any
 * host and never loads through a misaligned pointer. */
static void put_u16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}

static void put_u32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t get_u16(const uint8_t *p) {
  return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get_u32(const uint8_t *p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; i++)
    v |= (uint32_t)p[i] << (8 * i);
  return v;
}

static uint64_t get_u64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++)
    v |= (uint64_t)p[i] << (8 * i);
  return v;
}

static uint64_t zigzag(int64_t i) {
  /* Written without shifting a negative number, which C leaves undefined. */
  return i < 0 ? ~((uint64_t)i << 1) : (uint64_t)i << 1;
}

/* Converts two's-complement bits to int64 without relying on the
 * implementation-defined conversion of out-of-range unsigned values. */
static int64_t u64_to_i64(uint64_t u) {
  if (u <= (uint64_t)INT64_MAX)
    return (int64_t)u;
  return -(int64_t)(~u) - 1;
}

static int64_t unzigzag(uint64_t u) {
  uint64_t bits = (u >> 1) ^ (~(u & 1) + 1);
  return u64_to_i64(bits);
}

static size_t varint_size(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    n++;
  }
  return n;
}

static size_t put_varint(uint8_t *p, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    p[n++] = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  p[n++] = (uint8_t)v;
  return n;
}

/* Value tags, as listed at the top of wire.h. */
enum {
  TAG_NIL = 0,
  TAG_FALSE = 1,
  TAG_TRUE = 2,
  TAG_INT = 3,
  TAG_FLOAT = 4,
  TAG_STR = 5,
  TAG_BYTES = 6,
  TAG_LIST = 7,
  TAG_DICT = 8,
  TAG_TENSOR = 9,
  TAG_WORKER = 10,
  TAG_RREF = 11,
  TAG_SHARED = 12,
};

/* Bytes of a tensor descriptor before its shape: dtype, device type, device
 * index, ndim. */
#define TENSOR_FIXED 4

void drpc_wire_limits_default(drpc_wire_limits *lim) {
  lim->max_frame = DRPC_WIRE_DEFAULT_MAX_FRAME;
  lim->max_payload = DRPC_WIRE_DEFAULT_MAX_PAYLOAD;
  lim->max_depth = DRPC_VALUE_MAX_DEPTH;
}

/* Callers may pass NULL limits to mean the defaults. */
static const drpc_wire_limits *limits_or_default(const drpc_wire_limits *lim,
                                                 drpc_wire_limits *storage) {
  if (lim)
    return lim;
  drpc_wire_limits_default(storage);
  return storage;
}

uint64_t drpc_wire_data_offset(uint32_t payload_len) {
  /* Cannot overflow: 32 + UINT32_MAX is far from UINT64_MAX. */
  return aligned((uint64_t)DRPC_WIRE_HEADER_SIZE + payload_len);
}

int drpc_wire_frame_size(const drpc_frame_header *h, uint64_t *out) {
  uint64_t off = drpc_wire_data_offset(h->payload_len);
  if (h->data_len > UINT64_MAX - off)
    return DRPC_ETOOBIG;
  *out = off + h->data_len;
  return 0;
}

const char *drpc_msg_type_name(int type) {
  switch (type) {
  case DRPC_MSG_HELLO:
    return "HELLO";
  case DRPC_MSG_CALL:
    return "CALL";
  case DRPC_MSG_RESPONSE:
    return "RESPONSE";
  case DRPC_MSG_ERROR:
    return "ERROR";
  case DRPC_MSG_REMOTE_CALL:
    return "REMOTE_CALL";
  case DRPC_MSG_REMOTE_RET:
    return "REMOTE_RET";
  case DRPC_MSG_RREF_FETCH:
    return "RREF_FETCH";
  case DRPC_MSG_RREF_USER_DELETE:
    return "RREF_USER_DELETE";
  case DRPC_MSG_RREF_FORK_REQUEST:
    return "RREF_FORK_REQUEST";
  case DRPC_MSG_RREF_CHILD_ACCEPT:
    return "RREF_CHILD_ACCEPT";
  case DRPC_MSG_RREF_ACK:
    return "RREF_ACK";
  case DRPC_MSG_JOIN:
    return "JOIN";
  case DRPC_MSG_LEAVE:
    return "LEAVE";
  case DRPC_MSG_SHUTDOWN:
    return "SHUTDOWN";
  case DRPC_MSG_RELEASE:
    return "RELEASE";
  default:
    return "UNKNOWN";
  }
}

bool drpc_msg_type_is_request(int type) {
  switch (type) {
  case DRPC_MSG_CALL:
  case DRPC_MSG_REMOTE_CALL:
  case DRPC_MSG_RREF_FETCH:
  case DRPC_MSG_RREF_USER_DELETE:
  case DRPC_MSG_RREF_FORK_REQUEST:
  case DRPC_MSG_RREF_CHILD_ACCEPT:
  case DRPC_MSG_JOIN:
  case DRPC_MSG_LEAVE:
    return true;
  default:
    return false;
  }
}

bool drpc_msg_type_is_response(int type) {
  switch (type) {
  case DRPC_MSG_RESPONSE:
  case DRPC_MSG_ERROR:
  case DRPC_MSG_REMOTE_RET:
  case DRPC_MSG_RREF_ACK:
    return true;
  default:
    return false;
  }
}

static bool msg_type_known(unsigned type) {
  return type >= 1 && type <= DRPC_MSG_TYPE_MAX;
}

void drpc_wire_header_encode(const drpc_frame_header *h, uint8_t *buf) {
  put_u32(buf + 0, h->magic);
  buf[4] = h->version;
  buf[5] = h->type;
  put_u16(buf + 6, h->flags);
  put_u64(buf + 8, h->id);
  put_u32(buf + 16, h->payload_len);
  put_u32(buf + 20, h->ntensors);
  put_u64(buf + 24, h->data_len);
}

/* The checks a header must pass whether it was just read from bytes or was
 * handed to drpc_wire_decode_payload by a backend. */
static int header_check(const drpc_frame_header *h, const drpc_wire_limits *lim,
                        drpc_error *err) {
  if (h->magic != DRPC_WIRE_MAGIC)
    return drpc_error_set(err, DRPC_EPROTO,
                          "bad magic 0x%08x (expected 0x%08x)",
                          (unsigned)h->magic, (unsigned)DRPC_WIRE_MAGIC);
  if (h->version != DRPC_WIRE_VERSION)
    return drpc_error_set(
        err, DRPC_EVERSION,
        "unsupported protocol version %u (this build speaks %d)",
        (unsigned)h->version, DRPC_WIRE_VERSION);
  if (!msg_type_known(h->type))
    return drpc_error_set(err, DRPC_EPROTO, "unknown message type %u",
                          (unsigned)h->type);
  uint64_t size;
  if (drpc_wire_frame_size(h, &size) != 0)
    return drpc_error_set(err, DRPC_ETOOBIG,
                          "frame length overflows (data length %llu)",
                          (unsigned long long)h->data_len);
  if (size > lim->max_frame)
    return drpc_error_set(
        err, DRPC_ETOOBIG, "frame length %llu exceeds limit %llu",
        (unsigned long long)size, (unsigned long long)lim->max_frame);
  if (h->payload_len > lim->max_payload)
    return drpc_error_set(err, DRPC_ETOOBIG,
                          "payload length %u exceeds limit %u",
                          (unsigned)h->payload_len, (unsigned)lim->max_payload);
  if (h->ntensors > DRPC_WIRE_MAX_TENSORS)
    return drpc_error_set(err, DRPC_ETOOBIG, "tensor count %u exceeds limit %d",
                          (unsigned)h->ntensors, DRPC_WIRE_MAX_TENSORS);
  if (h->ntensors == 0 && h->data_len != 0)
    return drpc_error_set(err, DRPC_EPROTO,
                          "data length %llu in a frame with no tensors",
                          (unsigned long long)h->data_len);
  return 0;
}

int drpc_wire_header_decode(const uint8_t *buf, size_t len,
                            drpc_frame_header *out, const drpc_wire_limits *lim,
                            drpc_error *err) {
  drpc_wire_limits defaults;
  lim = limits_or_default(lim, &defaults);
  if (len < DRPC_WIRE_HEADER_SIZE)
    return drpc_error_set(err, DRPC_ETRUNC, "truncated header: %zu of %d bytes",
                          len, DRPC_WIRE_HEADER_SIZE);
  drpc_frame_header h;
  h.magic = get_u32(buf + 0);
  h.version = buf[4];
  h.type = buf[5];
  h.flags = get_u16(buf + 6);
  h.id = get_u64(buf + 8);
  h.payload_len = get_u32(buf + 16);
  h.ntensors = get_u32(buf + 20);
  h.data_len = get_u64(buf + 24);
  int rc = header_check(&h, lim, err);
  if (rc)
    return rc;
  *out = h;
  return 0;
}

/* Bytes of a tensor's data on the wire, or false when they overflow. */
static bool tensor_wire_bytes(const drpc_tensor *t, uint64_t *out) {
  uint64_t n = drpc_dtype_size(t->dtype);
  for (int d = 0; d < t->ndim; d++) {
    uint64_t dim = (uint64_t)t->shape[d];
    if (dim != 0 && n > UINT64_MAX / dim)
      return false;
    n *= dim;
  }
  *out = n;
  return true;
}

/* Bytes of a tensor the codec has already checked (decoded, or held by an
 * outframe), computed the same way as the layout was. */
static uint64_t checked_bytes(const drpc_tensor *t) {
  uint64_t nb = 0;
  bool ok = tensor_wire_bytes(t, &nb);
  assert(ok);
  (void)ok;
  return nb;
}

void drpc_msg_clear(drpc_msg *m) {
  if (!m)
    return;
  drpc_value_free(m->body);
  for (uint32_t i = 0; i < m->ntensors; i++)
    drpc_tensor_decref(m->tensors[i]);
  free(m->tensors);
  free(m->devices);
  for (uint32_t i = 0; i < m->nshared; i++)
    drpc_tensor_decref(m->shared[i].tensor);
  free(m->shared);
  memset(m, 0, sizeof(*m));
}

/* ---- Decoding ---------------------------------------------------------- */

/* What the payload declares about one tensor of the data section. The
 * first reference fixes it; later references must agree. */
typedef struct tensor_decl {
  bool used;
  uint8_t dtype;
  drpc_device device;
  int ndim;
  int64_t shape[DRPC_TENSOR_MAX_DIMS];
  uint64_t nbytes;
} tensor_decl;

/* A tensor value node waiting for its tensor, which exists only once the
 * whole payload has been checked. */
typedef struct tensor_ref {
  drpc_value *v;
  uint32_t index;
} tensor_ref;

typedef struct reader {
  const uint8_t *p;
  size_t len;
  size_t pos;
  uint32_t max_depth;
  drpc_error *err;
  tensor_decl *decls;
  uint32_t ndecls;
  tensor_ref *refs;
  size_t nrefs;
  size_t refcap;
  uint32_t nrrefs;          /* rref nodes decoded */
  drpc_wire_shared *shared; /* shared tensors decoded, in payload order */
  uint32_t nshared, sharedcap;
  /* Room for the declarations and references of a message with few
   * tensors, most of them: no allocation. */
  tensor_decl decls_small[2];
  tensor_ref refs_small[4];
} reader;

static void reader_free_tables(reader *r) {
  if (r->decls != r->decls_small)
    free(r->decls);
  if (r->refs != r->refs_small)
    free(r->refs);
}

static size_t remaining(const reader *r) {
  return r->len - r->pos;
}

/* Reads a LEB128 varint. It must be minimally encoded, so that each value
 * has exactly one encoding and re-encoding a decoded frame gives its bytes
 * back. `what` names the field for the truncation message. */
static int read_varint(reader *r, uint64_t *out, const char *what) {
  size_t start = r->pos;
  uint64_t v = 0;
  for (int i = 0;; i++) {
    if (r->pos >= r->len)
      return drpc_error_set(r->err, DRPC_ETRUNC,
                            "payload truncated: %s at offset %zu", what, start);
    uint8_t b = r->p[r->pos++];
    if (i == 9) {
      if (b & 0x80)
        return drpc_error_set(r->err, DRPC_EPROTO,
                              "varint at offset %zu is longer than 10 bytes",
                              start);
      if (b > 1)
        return drpc_error_set(r->err, DRPC_EPROTO,
                              "varint at offset %zu overflows 64 bits", start);
    }
    v |= (uint64_t)(b & 0x7f) << (7 * i);
    if (!(b & 0x80)) {
      if (b == 0 && i > 0)
        return drpc_error_set(r->err, DRPC_EPROTO,
                              "varint at offset %zu is not minimally encoded",
                              start);
      *out = v;
      return 0;
    }
  }
}

/* Reads a length and checks that that many bytes remain. */
static int read_len(reader *r, size_t at, const char *what, size_t *out) {
  uint64_t n;
  int rc = read_varint(r, &n, what);
  if (rc)
    return rc;
  if (n > remaining(r))
    return drpc_error_set(
        r->err, DRPC_ETRUNC,
        "payload truncated: %s %llu at offset %zu exceeds remaining %zu bytes",
        what, (unsigned long long)n, at, remaining(r));
  *out = (size_t)n;
  return 0;
}

static int read_value(reader *r, uint32_t depth, drpc_value **out);

static int read_list(reader *r, size_t at, uint32_t depth, drpc_value **out) {
  size_t count = 0;
  /* Every item takes at least one byte, so a count above the bytes left is
   * a lie; checking it first keeps a tiny frame from asking for a huge
   * allocation. */
  int rc = read_len(r, at, "list count", &count);
  if (rc)
    return rc;
  drpc_value *v = drpc_value_list();
  if (!v)
    return drpc_error_set(r->err, DRPC_ENOMEM, "out of memory decoding a list");
  if (count) {
    v->u.c.items = malloc(count * sizeof(*v->u.c.items));
    if (!v->u.c.items) {
      drpc_value_free(v);
      return drpc_error_set(r->err, DRPC_ENOMEM,
                            "out of memory decoding a list of %zu", count);
    }
    v->u.c.cap = count;
  }
  for (size_t i = 0; i < count; i++) {
    drpc_value *item;
    rc = read_value(r, depth + 1, &item);
    if (rc) {
      drpc_value_free(v);
      return rc;
    }
    v->u.c.items[v->u.c.len++] = item;
  }
  *out = v;
  return 0;
}

static int cmp_keys(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Rejects a dict that names a key twice, which no encoder produces and which
 * would make lookups depend on order. Sorting keeps large dicts from turning
 * the check quadratic. */
static int check_unique_keys(reader *r, size_t at, const drpc_value *d) {
  size_t n = d->u.c.len;
  const char *dup = NULL;
  if (n <= 16) {
    for (size_t i = 0; i < n && !dup; i++)
      for (size_t j = i + 1; j < n && !dup; j++)
        if (strcmp(d->u.c.keys[i], d->u.c.keys[j]) == 0)
          dup = d->u.c.keys[i];
  } else {
    char **sorted = malloc(n * sizeof(*sorted));
    if (!sorted)
      return drpc_error_set(r->err, DRPC_ENOMEM,
                            "out of memory checking dict keys");
    memcpy(sorted, d->u.c.keys, n * sizeof(*sorted));
    qsort(sorted, n, sizeof(*sorted), cmp_keys);
    for (size_t i = 1; i < n && !dup; i++)
      if (strcmp(sorted[i - 1], sorted[i]) == 0)
        dup = sorted[i];
    free(sorted);
  }
  if (dup)
    return drpc_error_set(r->err, DRPC_EPROTO,
                          "duplicate dict key \"%.64s\" in dict at offset %zu",
                          dup, at);
  return 0;
}

static int read_dict(reader *r, size_t at, uint32_t depth, drpc_value **out) {
  size_t count = 0;
  int rc = read_len(r, at, "dict count", &count);
  if (rc)
    return rc;
  drpc_value *v = drpc_value_dict();
  if (!v)
    return drpc_error_set(r->err, DRPC_ENOMEM, "out of memory decoding a dict");
  if (count) {
    v->u.c.items = malloc(count * sizeof(*v->u.c.items));
    v->u.c.keys = malloc(count * sizeof(*v->u.c.keys));
    if (!v->u.c.items || !v->u.c.keys) {
      drpc_value_free(v);
      return drpc_error_set(r->err, DRPC_ENOMEM,
                            "out of memory decoding a dict of %zu", count);
    }
    v->u.c.cap = count;
  }
  for (size_t i = 0; i < count; i++) {
    size_t key_at = r->pos, klen = 0;
    rc = read_len(r, key_at, "dict key length", &klen);
    if (rc)
      goto fail;
    const uint8_t *kp = r->p + r->pos;
    /* Keys are C strings in memory, so an embedded NUL would silently
     * shorten one. */
    if (klen && memchr(kp, 0, klen)) {
      rc = drpc_error_set(r->err, DRPC_EPROTO,
                          "dict key at offset %zu contains a NUL byte", key_at);
      goto fail;
    }
    char *key = malloc(klen + 1);
    if (!key) {
      rc = drpc_error_set(r->err, DRPC_ENOMEM, "out of memory decoding a key");
      goto fail;
    }
    if (klen)
      memcpy(key, kp, klen);
    key[klen] = '\0';
    r->pos += klen;
    drpc_value *item;
    rc = read_value(r, depth + 1, &item);
    if (rc) {
      free(key);
      goto fail;
    }
    v->u.c.keys[v->u.c.len] = key;
    v->u.c.items[v->u.c.len++] = item;
  }
  rc = check_unique_keys(r, at, v);
  if (rc)
    goto fail;
  *out = v;
  return 0;
fail:
  drpc_value_free(v);
  return rc;
}

static int add_ref(reader *r, drpc_value *v, uint32_t index) {
  if (r->nrefs == r->refcap) {
    size_t small = sizeof(r->refs_small) / sizeof(r->refs_small[0]);
    size_t cap = r->refcap ? r->refcap * 2 : small;
    if (cap > SIZE_MAX / sizeof(*r->refs))
      return DRPC_ENOMEM;
    tensor_ref *refs;
    if (!r->refcap) {
      refs = r->refs_small;
    } else if (r->refs == r->refs_small) {
      refs = malloc(cap * sizeof(*refs));
      if (refs)
        memcpy(refs, r->refs_small, sizeof(r->refs_small));
    } else {
      refs = realloc(r->refs, cap * sizeof(*refs));
    }
    if (!refs)
      return DRPC_ENOMEM;
    r->refs = refs;
    r->refcap = cap;
  }
  r->refs[r->nrefs].v = v;
  r->refs[r->nrefs].index = index;
  r->nrefs++;
  return 0;
}

/* The part of a descriptor that tensors and shared tensors have in common:
 * dtype, device, ndim, shape; checks them and sizes the data. */
static int read_tensor_head(reader *r, size_t at, tensor_decl *out) {
  if (remaining(r) < TENSOR_FIXED)
    return drpc_error_set(r->err, DRPC_ETRUNC,
                          "payload truncated: tensor descriptor at offset %zu",
                          at);
  tensor_decl d;
  memset(&d, 0, sizeof(d));
  const uint8_t *p = r->p + r->pos;
  unsigned dtype = p[0], devtype = p[1], ndim = p[3];
  int devindex = p[2] >= 128 ? (int)p[2] - 256 : (int)p[2];
  r->pos += TENSOR_FIXED;
  if (dtype >= DRPC_DTYPE_COUNT)
    return drpc_error_set(r->err, DRPC_EPROTO,
                          "invalid dtype %u in tensor at offset %zu", dtype,
                          at);
  if (devtype == DRPC_DEVICE_CPU) {
    if (devindex != -1)
      return drpc_error_set(
          r->err, DRPC_EPROTO,
          "cpu device index %d in tensor at offset %zu (must be -1)", devindex,
          at);
  } else if (devtype == DRPC_DEVICE_CUDA) {
    if (devindex < 0)
      return drpc_error_set(r->err, DRPC_EPROTO,
                            "cuda device index %d in tensor at offset %zu",
                            devindex, at);
  } else {
    return drpc_error_set(r->err, DRPC_EPROTO,
                          "unknown device type %u in tensor at offset %zu",
                          devtype, at);
  }
  if (ndim > DRPC_TENSOR_MAX_DIMS)
    return drpc_error_set(r->err, DRPC_EPROTO,
                          "tensor ndim %u exceeds %d in tensor at offset %zu",
                          ndim, DRPC_TENSOR_MAX_DIMS, at);
  d.used = true;
  d.dtype = (uint8_t)dtype;
  d.device.type = (int8_t)devtype;
  d.device.index = (int8_t)devindex;
  d.ndim = (int)ndim;
  /* Strides are products of max(dim, 1), so that product times the element
   * size must fit int64 even when a zero dimension empties the tensor; each
   * step is checked so that no product can wrap. */
  int64_t esize = (int64_t)drpc_dtype_size((drpc_dtype)dtype);
  int64_t span = 1;
  bool empty = false;
  for (unsigned i = 0; i < ndim; i++) {
    uint64_t dim;
    int rc = read_varint(r, &dim, "tensor shape");
    if (rc)
      return rc;
    if (dim > (uint64_t)INT64_MAX)
      return drpc_error_set(r->err, DRPC_EPROTO,
                            "tensor dimension %u is negative (%llu) in tensor "
                            "at offset %zu",
                            i, (unsigned long long)dim, at);
    d.shape[i] = (int64_t)dim;
    if (dim == 0) {
      empty = true;
    } else if (span > INT64_MAX / (int64_t)dim) {
      return drpc_error_set(r->err, DRPC_EPROTO,
                            "tensor shape product overflows in tensor at "
                            "offset %zu",
                            at);
    } else {
      span *= (int64_t)dim;
    }
  }
  if (span > INT64_MAX / esize)
    return drpc_error_set(r->err, DRPC_EPROTO,
                          "tensor size overflows in tensor at offset %zu", at);
  int64_t numel = empty ? 0 : span;
  d.nbytes = (uint64_t)numel * (uint64_t)esize;
  *out = d;
  return 0;
}

static int read_tensor(reader *r, size_t at, drpc_value **out) {
  tensor_decl d;
  int rc = read_tensor_head(r, at, &d);
  if (rc)
    return rc;
  uint64_t index;
  rc = read_varint(r, &index, "tensor index");
  if (rc)
    return rc;
  if (index >= r->ndecls)
    return drpc_error_set(r->err, DRPC_EPROTO,
                          "tensor index %llu out of range (frame has %u "
                          "tensors)",
                          (unsigned long long)index, (unsigned)r->ndecls);
  tensor_decl *first = &r->decls[index];
  if (!first->used) {
    *first = d;
  } else if (first->dtype != d.dtype || first->ndim != d.ndim ||
             !drpc_device_equal(first->device, d.device) ||
             memcmp(first->shape, d.shape, sizeof(d.shape)) != 0) {
    return drpc_error_set(r->err, DRPC_EPROTO,
                          "tensor %llu at offset %zu does not match its first "
                          "reference (dtype, device or shape differ)",
                          (unsigned long long)index, at);
  }
  drpc_value *v = drpc_value_tensor(NULL);
  if (!v || add_ref(r, v, (uint32_t)index) != 0) {
    drpc_value_free(v);
    return drpc_error_set(r->err, DRPC_ENOMEM,
                          "out of memory decoding a tensor");
  }
  *out = v;
  return 0;
}

/* A shared tensor: the descriptor, then the handle. The body gets an empty
 * placeholder; the same descriptor and handle twice is the same tensor. */
static int read_shared(reader *r, size_t at, drpc_value **out) {
  tensor_decl d;
  int rc = read_tensor_head(r, at, &d);
  if (rc)
    return rc;
  if (d.device.type != DRPC_DEVICE_CUDA)
    return drpc_error_set(r->err, DRPC_EPROTO,
                          "shared tensor at offset %zu is not on a CUDA "
                          "device",
                          at);
  size_t hlen = 0;
  rc = read_len(r, at, "shared tensor handle length", &hlen);
  if (rc)
    return rc;
  if (hlen == 0 || hlen > DRPC_WIRE_MAX_HANDLE)
    return drpc_error_set(r->err, DRPC_EPROTO,
                          "shared tensor handle of %zu bytes at offset %zu "
                          "(1..%d)",
                          hlen, at, DRPC_WIRE_MAX_HANDLE);
  const uint8_t *hp = r->p + r->pos;
  r->pos += hlen;
  drpc_wire_shared *sh = NULL;
  for (uint32_t i = 0; i < r->nshared && !sh; i++) {
    drpc_wire_shared *c = &r->shared[i];
    if (c->handle_len == hlen && memcmp(c->handle, hp, hlen) == 0 &&
        c->dtype == (drpc_dtype)d.dtype && c->ndim == d.ndim &&
        drpc_device_equal(c->device, d.device) &&
        memcmp(c->shape, d.shape, sizeof c->shape) == 0)
      sh = c;
  }
  if (!sh) {
    if (r->nshared >= DRPC_WIRE_MAX_TENSORS)
      return drpc_error_set(r->err, DRPC_EPROTO,
                            "more than %d shared tensors in one frame",
                            DRPC_WIRE_MAX_TENSORS);
    if (r->nshared == r->sharedcap) {
      uint32_t cap = r->sharedcap ? r->sharedcap * 2 : 4;
      drpc_wire_shared *p = realloc(r->shared, cap * sizeof(*p));
      if (!p)
        return drpc_error_set(r->err, DRPC_ENOMEM,
                              "out of memory decoding a shared tensor");
      r->shared = p;
      r->sharedcap = cap;
    }
    int64_t zero = 0;
    drpc_tensor *ph = drpc_tensor_new((drpc_dtype)d.dtype, 1, &zero);
    if (!ph)
      return drpc_error_set(r->err, DRPC_ENOMEM,
                            "out of memory decoding a shared tensor");
    sh = &r->shared[r->nshared++];
    memset(sh, 0, sizeof(*sh));
    sh->tensor = ph;
    sh->dtype = (drpc_dtype)d.dtype;
    sh->ndim = d.ndim;
    memcpy(sh->shape, d.shape, sizeof sh->shape);
    sh->device = d.device;
    sh->handle_len = (uint32_t)hlen;
    memcpy(sh->handle, hp, hlen);
  }
  drpc_value *v = drpc_value_tensor(sh->tensor);
  if (!v)
    return drpc_error_set(r->err, DRPC_ENOMEM,
                          "out of memory decoding a shared tensor");
  *out = v;
  return 0;
}

static int read_worker(reader *r, size_t at, drpc_value **out) {
  uint64_t zz;
  int rc = read_varint(r, &zz, "worker id");
  if (rc)
    return rc;
  int64_t id = unzigzag(zz);
  if (id < INT16_MIN || id > INT16_MAX)
    return drpc_error_set(r->err, DRPC_EPROTO,
                          "worker id %lld at offset %zu does not fit int16",
                          (long long)id, at);
  size_t nlen = 0;
  rc = read_len(r, at, "worker name length", &nlen);
  if (rc)
    return rc;
  const uint8_t *np = r->p + r->pos;
  if (nlen && memchr(np, 0, nlen))
    return drpc_error_set(r->err, DRPC_EPROTO,
                          "worker name at offset %zu contains a NUL byte", at);
  char *name = malloc(nlen + 1);
  if (!name)
    return drpc_error_set(r->err, DRPC_ENOMEM,
                          "out of memory decoding a worker");
  if (nlen)
    memcpy(name, np, nlen);
  name[nlen] = '\0';
  r->pos += nlen;
  drpc_value *v = drpc_value_worker((int16_t)id, name);
  free(name);
  if (!v)
    return drpc_error_set(r->err, DRPC_ENOMEM,
                          "out of memory decoding a worker");
  *out = v;
  return 0;
}

/* A zigzag varint that must hold a worker id (0 .. INT16_MAX). */
static int read_worker_id(reader *r, size_t at, const char *what,
                          int16_t *out) {
  uint64_t zz;
  int rc = read_varint(r, &zz, what);
  if (rc)
    return rc;
  int64_t id = unzigzag(zz);
  if (id < 0 || id > INT16_MAX)
    return drpc_error_set(r->err, DRPC_EPROTO,
                          "rref %s %lld at offset %zu is not a worker id", what,
                          (long long)id, at);
  *out = (int16_t)id;
  return 0;
}

/* A varint local id: below 2^48, so (created_on, local_id) packs into one
 * 64-bit key. */
static int read_local_id(reader *r, size_t at, const char *what, int64_t *out) {
  uint64_t v;
  int rc = read_varint(r, &v, what);
  if (rc)
    return rc;
  if (v >= DRPC_RREF_MAX_LOCAL_ID)
    return drpc_error_set(r->err, DRPC_EPROTO,
                          "rref %s %llu at offset %zu exceeds 2^48", what,
                          (unsigned long long)v, at);
  *out = (int64_t)v;
  return 0;
}

static int read_rref(reader *r, size_t at, drpc_value **out) {
  drpc_value tmp;
  memset(&tmp, 0, sizeof(tmp));
  int rc;
  if ((rc = read_worker_id(r, at, "owner", &tmp.u.r.owner)) ||
      (rc = read_worker_id(r, at, "rref created_on",
                           &tmp.u.r.rref_created_on)) ||
      (rc = read_local_id(r, at, "rref local_id", &tmp.u.r.rref_local_id)) ||
      (rc = read_worker_id(r, at, "fork created_on",
                           &tmp.u.r.fork_created_on)) ||
      (rc = read_local_id(r, at, "fork local_id", &tmp.u.r.fork_local_id)) ||
      (rc = read_worker_id(r, at, "parent", &tmp.u.r.parent)))
    return rc;
  size_t tlen = 0;
  if ((rc = read_len(r, at, "rref type name length", &tlen)))
    return rc;
  const uint8_t *tp = r->p + r->pos;
  if (tlen && memchr(tp, 0, tlen))
    return drpc_error_set(r->err, DRPC_EPROTO,
                          "rref type name at offset %zu contains a NUL byte",
                          at);
  drpc_value *v = drpc_value_nil();
  char *tn = tlen ? malloc(tlen + 1) : NULL;
  if (!v || (tlen && !tn)) {
    drpc_value_free(v);
    free(tn);
    return drpc_error_set(r->err, DRPC_ENOMEM,
                          "out of memory decoding an rref");
  }
  if (tlen) {
    memcpy(tn, tp, tlen);
    tn[tlen] = '\0';
  }
  r->pos += tlen;
  v->kind = DRPC_VAL_RREF;
  v->u.r = tmp.u.r;
  v->u.r.type_name = tn;
  v->u.r.handle = NULL;
  r->nrrefs++;
  *out = v;
  return 0;
}

static int read_value(reader *r, uint32_t depth, drpc_value **out) {
  *out = NULL;
  /* The depth is checked before recursing, so hostile nesting costs a
   * bounded amount of stack. */
  if (depth > r->max_depth)
    return drpc_error_set(r->err, DRPC_ETOOBIG,
                          "value nesting deeper than %u at offset %zu",
                          (unsigned)r->max_depth, r->pos);
  size_t at = r->pos;
  if (r->pos >= r->len)
    return drpc_error_set(r->err, DRPC_ETRUNC,
                          "payload truncated: value tag at offset %zu", at);
  uint8_t tag = r->p[r->pos++];
  drpc_value *v = NULL;
  int rc;
  switch (tag) {
  case TAG_NIL:
    v = drpc_value_nil();
    break;
  case TAG_FALSE:
  case TAG_TRUE:
    v = drpc_value_bool(tag == TAG_TRUE);
    break;
  case TAG_INT: {
    uint64_t zz;
    rc = read_varint(r, &zz, "int");
    if (rc)
      return rc;
    v = drpc_value_int(unzigzag(zz));
    break;
  }
  case TAG_FLOAT: {
    if (remaining(r) < 8)
      return drpc_error_set(r->err, DRPC_ETRUNC,
                            "payload truncated: float at offset %zu needs 8 "
                            "bytes, %zu remain",
                            at, remaining(r));
    uint64_t bits = get_u64(r->p + r->pos);
    r->pos += 8;
    double f;
    memcpy(&f, &bits, sizeof(f));
    v = drpc_value_float(f);
    break;
  }
  case TAG_STR:
  case TAG_BYTES: {
    size_t n = 0;
    rc = read_len(r, at, tag == TAG_STR ? "string length" : "bytes length", &n);
    if (rc)
      return rc;
    const char *s = (const char *)(r->p + r->pos);
    r->pos += n;
    v = tag == TAG_STR ? drpc_value_strn(s, n) : drpc_value_bytes(s, n);
    break;
  }
  case TAG_LIST:
    return read_list(r, at, depth, out);
  case TAG_DICT:
    return read_dict(r, at, depth, out);
  case TAG_TENSOR:
    return read_tensor(r, at, out);
  case TAG_WORKER:
    return read_worker(r, at, out);
  case TAG_RREF:
    return read_rref(r, at, out);
  case TAG_SHARED:
    return read_shared(r, at, out);
  default:
    return drpc_error_set(r->err, DRPC_EPROTO,
                          "unknown value tag %u at offset %zu", (unsigned)tag,
                          at);
  }
  if (!v)
    return drpc_error_set(r->err, DRPC_ENOMEM, "out of memory decoding a %s",
                          "value");
  *out = v;
  return 0;
}

int drpc_wire_decode_payload(const drpc_frame_header *h, const uint8_t *payload,
                             const drpc_wire_limits *lim, drpc_msg *out,
                             drpc_error *err) {
  drpc_wire_limits defaults;
  lim = limits_or_default(lim, &defaults);
  memset(out, 0, sizeof(*out));
  int rc = header_check(h, lim, err);
  if (rc)
    return rc;

  reader r;
  /* The small tables are cleared when used. */
  memset(&r, 0, offsetof(reader, decls_small));
  r.p = payload;
  r.len = h->payload_len;
  r.max_depth = lim->max_depth;
  r.err = err;
  r.ndecls = h->ntensors;
  drpc_value *body = NULL;
  if (h->ntensors <= sizeof(r.decls_small) / sizeof(r.decls_small[0])) {
    r.decls = r.decls_small;
    memset(r.decls, 0, h->ntensors * sizeof(*r.decls));
  } else {
    r.decls = calloc(h->ntensors, sizeof(*r.decls));
    if (!r.decls) {
      rc = drpc_error_set(err, DRPC_ENOMEM, "out of memory decoding a frame");
      goto fail;
    }
  }

  rc = read_value(&r, 1, &body);
  if (rc)
    goto fail;
  if (r.pos != r.len) {
    rc = drpc_error_set(err, DRPC_EPROTO,
                        "trailing %zu bytes after the body value at offset %zu",
                        r.len - r.pos, r.pos);
    goto fail;
  }

  /* The layout must account for data_len exactly before any storage is
   * allocated, so a header cannot make us reserve memory the payload does
   * not justify. */
  uint64_t pos = 0;
  for (uint32_t i = 0; i < h->ntensors; i++) {
    if (!r.decls[i].used) {
      rc = drpc_error_set(err, DRPC_EPROTO,
                          "tensor %u declared but never referenced",
                          (unsigned)i);
      goto fail;
    }
    uint64_t nb = r.decls[i].nbytes;
    if (nb == 0)
      continue;
    if (!align_up(pos, &pos) || nb > UINT64_MAX - pos) {
      rc = drpc_error_set(err, DRPC_EPROTO, "tensors' bytes overflow");
      goto fail;
    }
    pos += nb;
  }
  if (pos != h->data_len) {
    rc = drpc_error_set(
        err, DRPC_EPROTO, "data length %llu does not match tensors' %llu bytes",
        (unsigned long long)h->data_len, (unsigned long long)pos);
    goto fail;
  }

  if (h->ntensors) {
    out->tensors = calloc(h->ntensors, sizeof(*out->tensors));
    if (!out->tensors) {
      rc = drpc_error_set(err, DRPC_ENOMEM, "out of memory decoding a frame");
      goto fail;
    }
  }
  for (uint32_t i = 0; i < h->ntensors; i++) {
    const tensor_decl *d = &r.decls[i];
    if (d->nbytes > SIZE_MAX) {
      rc = drpc_error_set(err, DRPC_ETOOBIG,
                          "tensor %u of %llu bytes does not fit in memory",
                          (unsigned)i, (unsigned long long)d->nbytes);
      goto fail;
    }
    /* Uninitialised: the data section is about to overwrite every byte. */
    drpc_storage *s = drpc_storage_new((size_t)d->nbytes, false);
    drpc_tensor *t = NULL;
    if (s) {
      t = drpc_tensor_from_storage(s, (drpc_dtype)d->dtype, d->ndim, d->shape,
                                   0);
      drpc_storage_decref(s);
    }
    if (!t) {
      rc = drpc_error_set(err, DRPC_ENOMEM,
                          "out of memory allocating tensor %u (%llu bytes)",
                          (unsigned)i, (unsigned long long)d->nbytes);
      goto fail;
    }
    out->tensors[out->ntensors++] = t;
  }
  for (size_t i = 0; i < r.nrefs; i++) {
    drpc_tensor *t = out->tensors[r.refs[i].index];
    drpc_tensor_incref(t);
    r.refs[i].v->u.t = t;
  }

  for (uint32_t i = 0; i < h->ntensors && !out->devices; i++) {
    if (r.decls[i].device.type == DRPC_DEVICE_CPU)
      continue;
    out->devices = malloc(h->ntensors * sizeof(*out->devices));
    if (!out->devices) {
      rc = drpc_error_set(err, DRPC_ENOMEM, "out of memory decoding a frame");
      goto fail;
    }
    for (uint32_t k = 0; k < h->ntensors; k++)
      out->devices[k] = r.decls[k].device;
  }

  out->type = h->type;
  out->flags = h->flags;
  out->id = h->id;
  out->body = body;
  out->nrrefs = r.nrrefs;
  out->shared = r.shared;
  out->nshared = r.nshared;
  reader_free_tables(&r);
  return 0;

fail:
  drpc_value_free(body);
  drpc_msg_clear(out);
  for (uint32_t i = 0; i < r.nshared; i++)
    drpc_tensor_decref(r.shared[i].tensor);
  free(r.shared);
  reader_free_tables(&r);
  return rc;
}

size_t drpc_wire_data_iov(const drpc_msg *m, uint64_t data_offset,
                          struct iovec *iov, size_t max, void *pad_sink) {
  size_t count = 0;
  uint64_t pos = data_offset;
  for (uint32_t i = 0; i < m->ntensors; i++) {
    const drpc_tensor *t = m->tensors[i];
    uint64_t nb = checked_bytes(t);
    if (nb == 0)
      continue;
    uint64_t start = aligned(pos);
    if (start > pos) {
      if (count < max) {
        iov[count].iov_base = pad_sink;
        iov[count].iov_len = (size_t)(start - pos);
      }
      count++;
    }
    if (count < max) {
      iov[count].iov_base = drpc_tensor_data(t);
      iov[count].iov_len = (size_t)nb;
    }
    count++;
    pos = start + nb;
  }
  return count;
}

int drpc_wire_decode(const uint8_t *buf, size_t len,
                     const drpc_wire_limits *lim, drpc_msg *out,
                     drpc_error *err) {
  memset(out, 0, sizeof(*out));
  drpc_frame_header h;
  int rc = drpc_wire_header_decode(buf, len, &h, lim, err);
  if (rc)
    return rc;
  uint64_t size = 0;
  drpc_wire_frame_size(&h, &size); /* checked by the header decode */
  if ((uint64_t)len < size)
    return drpc_error_set(err, DRPC_ETRUNC,
                          "frame truncated: %zu of %llu bytes", len,
                          (unsigned long long)size);
  if ((uint64_t)len > size)
    return drpc_error_set(
        err, DRPC_EPROTO, "%llu trailing bytes after a frame of %llu bytes",
        (unsigned long long)(len - size), (unsigned long long)size);
  rc = drpc_wire_decode_payload(&h, buf + DRPC_WIRE_HEADER_SIZE, lim, out, err);
  if (rc)
    return rc;
  /* The payload decode checked that the layout ends exactly at data_len,
   * so every copy below stays inside buf. */
  uint64_t pos = drpc_wire_data_offset(h.payload_len);
  for (uint32_t i = 0; i < out->ntensors; i++) {
    uint64_t nb = checked_bytes(out->tensors[i]);
    if (nb == 0)
      continue;
    pos = aligned(pos);
    assert(pos + nb <= size);
    memcpy(drpc_tensor_data(out->tensors[i]), buf + pos, (size_t)nb);
    pos += nb;
  }
  assert(pos == size);
  return 0;
}

/* ---- Encoding ---------------------------------------------------------- */

/* Distinct tensors of one message, found by pointer through a small
 * open-addressing table. Indices follow first use in a depth-first walk, so
 * the encoding never depends on pointer values. */
typedef struct tensor_slot {
  const drpc_tensor *key;
  uint32_t index;
} tensor_slot;

typedef struct encoder {
  const drpc_wire_limits *lim;
  drpc_error *err;
  drpc_tensor **list; /* distinct tensors, borrowed, in index order */
  uint32_t n;
  uint32_t listcap;
  tensor_slot *slots;
  size_t nslots; /* a power of two, at least twice n */
  uint64_t payload_len;
  uint8_t *out; /* pass two only */
  size_t pos;
  drpc_wire_rref_fn rref_fn; /* NULL: rref nodes travel as they are */
  void *rref_ctx;
  drpc_value *forks; /* fork data chosen in pass one, in payload order */
  size_t nforks, capforks, fork_pos;
  drpc_wire_tensor_fn tensor_fn; /* NULL: tensors travel as they are */
  void *tensor_ctx;
  drpc_wire_tensor_plan *plans; /* per distinct tensor, parallel to list */
  uint32_t *data_idx;           /* per distinct tensor: data-section index, or
                                   UINT32_MAX when shared by handle */
  uint32_t ndata;
  struct encoder_small *small; /* room for the first tensors, or NULL */
} encoder;

/* The tensor index of a message with few tensors, most of them, on the
 * encoder's stack: no allocation. Not zeroed as a whole (the plans are
 * large): the slots are cleared when taken. */
#define SMALL_TENSORS 2
typedef struct encoder_small {
  tensor_slot slots[4 * SMALL_TENSORS];
  drpc_tensor *list[SMALL_TENSORS];
  drpc_wire_tensor_plan plans[SMALL_TENSORS];
  uint32_t data_idx[SMALL_TENSORS];
} encoder_small;

static bool is_small_slots(const encoder *e) {
  return e->small && e->slots == e->small->slots;
}

static bool is_small_list(const encoder *e) {
  return e->small && e->list == e->small->list;
}

static size_t slot_of(const encoder *e, const drpc_tensor *t) {
  uint64_t h = (uint64_t)(uintptr_t)t * 0x9e3779b97f4a7c15ull;
  size_t i = (size_t)(h >> 32) & (e->nslots - 1);
  while (e->slots[i].key && e->slots[i].key != t)
    i = (i + 1) & (e->nslots - 1);
  return i;
}

/* Finds the tensor's index, adding it when new. Fails with DRPC_ETOOBIG
 * past DRPC_WIRE_MAX_TENSORS distinct tensors, or DRPC_ENOMEM. */
static int tensor_index(encoder *e, drpc_tensor *t, uint32_t *index) {
  if (e->nslots) {
    size_t i = slot_of(e, t);
    if (e->slots[i].key) {
      *index = e->slots[i].index;
      return 0;
    }
  }
  if (e->n >= DRPC_WIRE_MAX_TENSORS)
    return drpc_error_set(e->err, DRPC_ETOOBIG,
                          "message has more than %d distinct tensors",
                          DRPC_WIRE_MAX_TENSORS);
  if (!e->nslots && e->small) {
    memset(e->small->slots, 0, sizeof(e->small->slots));
    e->slots = e->small->slots;
    e->nslots = 4 * SMALL_TENSORS;
  }
  if ((size_t)(e->n + 1) * 2 > e->nslots) {
    size_t nslots = e->nslots ? e->nslots * 2 : 16;
    tensor_slot *slots = calloc(nslots, sizeof(*slots));
    if (!slots)
      goto nomem;
    tensor_slot *old = e->slots;
    size_t oldn = e->nslots;
    bool was_small = is_small_slots(e);
    e->slots = slots;
    e->nslots = nslots;
    for (size_t i = 0; i < oldn; i++)
      if (old[i].key)
        e->slots[slot_of(e, old[i].key)] = old[i];
    if (!was_small)
      free(old);
  }
  if (!e->listcap && e->small) {
    e->list = e->small->list;
    e->plans = e->small->plans;
    e->data_idx = e->small->data_idx;
    e->listcap = SMALL_TENSORS;
  }
  if (e->n == e->listcap) {
    uint32_t cap = e->listcap ? e->listcap * 2 : 8;
    if (is_small_list(e)) {
      /* Off the stack: the first tensors move to the heap. */
      drpc_tensor **list = malloc(cap * sizeof(*list));
      drpc_wire_tensor_plan *plans = malloc(cap * sizeof(*plans));
      uint32_t *didx = malloc(cap * sizeof(*didx));
      if (!list || !plans || !didx) {
        free(list);
        free(plans);
        free(didx);
        goto nomem;
      }
      memcpy(list, e->list, e->n * sizeof(*list));
      memcpy(plans, e->plans, e->n * sizeof(*plans));
      memcpy(didx, e->data_idx, e->n * sizeof(*didx));
      e->list = list;
      e->plans = plans;
      e->data_idx = didx;
      e->listcap = cap;
    }
  }
  if (e->n == e->listcap) {
    uint32_t cap = e->listcap ? e->listcap * 2 : 8;
    drpc_tensor **list = realloc(e->list, cap * sizeof(*list));
    if (!list)
      goto nomem;
    e->list = list;
    drpc_wire_tensor_plan *plans = realloc(e->plans, cap * sizeof(*plans));
    if (!plans)
      goto nomem;
    e->plans = plans;
    uint32_t *didx = realloc(e->data_idx, cap * sizeof(*didx));
    if (!didx)
      goto nomem;
    e->data_idx = didx;
    e->listcap = cap;
  }
  size_t i = slot_of(e, t);
  e->slots[i].key = t;
  e->slots[i].index = e->n;
  e->list[e->n] = t;
  *index = e->n++;
  return 0;
nomem:
  return drpc_error_set(e->err, DRPC_ENOMEM, "out of memory encoding tensors");
}

static int check_tensor(encoder *e, const drpc_tensor *t) {
  if (!t)
    return drpc_error_set(e->err, DRPC_EINVAL, "tensor value with no tensor");
  if (drpc_dtype_size(t->dtype) == 0)
    return drpc_error_set(e->err, DRPC_EINVAL, "tensor has invalid dtype %d",
                          (int)t->dtype);
  if (t->ndim < 0 || t->ndim > DRPC_TENSOR_MAX_DIMS)
    return drpc_error_set(e->err, DRPC_EINVAL, "tensor ndim %d out of range",
                          t->ndim);
  for (int d = 0; d < t->ndim; d++)
    if (t->shape[d] < 0)
      return drpc_error_set(e->err, DRPC_EINVAL,
                            "tensor dimension %d is negative (%lld)", d,
                            (long long)t->shape[d]);
  if (!t->storage)
    return drpc_error_set(e->err, DRPC_EINVAL, "tensor has no storage");
  if (t->storage->device.type != DRPC_DEVICE_CPU && !e->tensor_fn) {
    char dev[32];
    return drpc_error_set(
        e->err, DRPC_EUNSUPPORTED,
        "a tensor on %s can only be sent through an agent (device maps)",
        drpc_device_format(t->storage->device, dev, sizeof(dev)));
  }
  /* The decoder's rule: the product of max(dim, 1) times the element size
   * fits int64, so that every tensor sent can be received. */
  int64_t span = (int64_t)drpc_dtype_size(t->dtype);
  for (int d = 0; d < t->ndim; d++) {
    if (t->shape[d] > 1 && span > INT64_MAX / t->shape[d])
      return drpc_error_set(e->err, DRPC_ETOOBIG, "tensor size overflows");
    if (t->shape[d] > 1)
      span *= t->shape[d];
  }
  return 0;
}

/* Pass one: checks the tree, sizes its encoding and numbers its tensors. */
static bool rref_fields_valid(const drpc_value *fd) {
  return fd->u.r.owner >= 0 && fd->u.r.rref_created_on >= 0 &&
         fd->u.r.fork_created_on >= 0 && fd->u.r.parent >= 0 &&
         fd->u.r.rref_local_id >= 0 &&
         fd->u.r.rref_local_id < (int64_t)DRPC_RREF_MAX_LOCAL_ID &&
         fd->u.r.fork_local_id >= 0 &&
         fd->u.r.fork_local_id < (int64_t)DRPC_RREF_MAX_LOCAL_ID;
}

/* Pass one of an rref node: asks the hook (when there is one) for the fork
 * data to write and keeps it for pass two. A handle cannot travel without
 * a hook: only an agent can run the fork protocol for it. */
static int fork_of(encoder *e, const drpc_value *v) {
  if (e->nforks == e->capforks) {
    size_t cap = e->capforks ? e->capforks * 2 : 4;
    drpc_value *p = realloc(e->forks, cap * sizeof(*p));
    if (!p)
      return drpc_error_set(e->err, DRPC_ENOMEM,
                            "out of memory encoding an rref");
    e->forks = p;
    e->capforks = cap;
  }
  drpc_value *fd = &e->forks[e->nforks];
  memset(fd, 0, sizeof(*fd));
  fd->kind = DRPC_VAL_RREF;
  if (e->rref_fn) {
    int rc = e->rref_fn(e->rref_ctx, v, fd, e->err);
    if (rc)
      return rc;
  } else if (v->u.r.handle) {
    return drpc_error_set(e->err, DRPC_EUNSUPPORTED,
                          "an RRef handle can only be sent through an agent");
  } else {
    fd->u.r = v->u.r;
  }
  if (!rref_fields_valid(fd))
    return drpc_error_set(e->err, DRPC_EINVAL,
                          "rref fork data out of range (worker ids must be "
                          "0..32767, local ids 0..2^48-1)");
  e->nforks++;
  return 0;
}

/* Pass one of a tensor met for the first time (list index i): asks the
 * hook how it travels, and checks the answer. */
static int plan_tensor(encoder *e, uint32_t i) {
  drpc_tensor *t = e->list[i];
  drpc_wire_tensor_plan *pl = &e->plans[i];
  memset(pl, 0, sizeof(*pl));
  pl->dtype = t->dtype;
  pl->ndim = t->ndim;
  memcpy(pl->shape, t->shape, sizeof pl->shape);
  e->data_idx[i] = UINT32_MAX;
  if (!e->tensor_fn) {
    pl->target = DRPC_CPU;
    pl->send = t;
    drpc_tensor_incref(t);
  } else {
    int rc = e->tensor_fn(e->tensor_ctx, t, pl, e->err);
    if (rc) {
      drpc_tensor_decref(pl->send);
      pl->send = NULL;
      return rc;
    }
  }
  if (pl->send) {
    drpc_tensor *c = pl->send;
    uint64_t a = 0, b = 0;
    if (!c->storage || c->storage->device.type != DRPC_DEVICE_CPU ||
        c->dtype != t->dtype || !tensor_wire_bytes(c, &a) ||
        !tensor_wire_bytes(t, &b) || a != b)
      return drpc_error_set(e->err, DRPC_EINVAL,
                            "tensor hook gave data that is not a CPU copy of "
                            "the tensor");
    if (pl->target.type == DRPC_DEVICE_CPU
            ? pl->target.index != -1
            : pl->target.type != DRPC_DEVICE_CUDA || pl->target.index < 0)
      return drpc_error_set(e->err, DRPC_EINVAL,
                            "tensor hook chose an invalid target device");
    e->data_idx[i] = e->ndata++;
    return 0;
  }
  if (pl->target.type != DRPC_DEVICE_CUDA || pl->target.index < 0 ||
      pl->handle_len == 0 || pl->handle_len > DRPC_WIRE_MAX_HANDLE ||
      drpc_dtype_size(pl->dtype) == 0 || pl->ndim < 0 ||
      pl->ndim > DRPC_TENSOR_MAX_DIMS)
    return drpc_error_set(e->err, DRPC_EINVAL,
                          "tensor hook shared a tensor without a valid "
                          "handle, descriptor or CUDA target");
  for (int d = 0; d < pl->ndim; d++)
    if (pl->shape[d] < 0)
      return drpc_error_set(e->err, DRPC_EINVAL,
                            "tensor hook shared a tensor with a negative "
                            "dimension");
  return 0;
}

static int measure(encoder *e, const drpc_value *v, uint32_t depth) {
  if (depth > e->lim->max_depth)
    return drpc_error_set(e->err, DRPC_EINVAL, "value nesting deeper than %u",
                          (unsigned)e->lim->max_depth);
  if (!v)
    return drpc_error_set(e->err, DRPC_EINVAL, "NULL value inside the body");
  uint64_t n = 1;
  switch (v->kind) {
  case DRPC_VAL_NIL:
  case DRPC_VAL_BOOL:
    break;
  case DRPC_VAL_INT:
    n += varint_size(zigzag(v->u.i));
    break;
  case DRPC_VAL_FLOAT:
    n += 8;
    break;
  case DRPC_VAL_STR:
  case DRPC_VAL_BYTES:
    if (!v->u.s.data && v->u.s.len)
      return drpc_error_set(e->err, DRPC_EINVAL, "string with no data");
    n += varint_size(v->u.s.len) + v->u.s.len;
    break;
  case DRPC_VAL_LIST:
  case DRPC_VAL_DICT:
    n += varint_size(v->u.c.len);
    for (size_t i = 0; i < v->u.c.len; i++) {
      if (v->kind == DRPC_VAL_DICT) {
        if (!v->u.c.keys[i])
          return drpc_error_set(e->err, DRPC_EINVAL, "dict key is NULL");
        size_t klen = strlen(v->u.c.keys[i]);
        n += varint_size(klen) + klen;
      }
      int rc = measure(e, v->u.c.items[i], depth + 1);
      if (rc)
        return rc;
    }
    break;
  case DRPC_VAL_TENSOR: {
    int rc = check_tensor(e, v->u.t);
    if (rc)
      return rc;
    uint32_t index = 0, before = e->n;
    rc = tensor_index(e, v->u.t, &index);
    if (rc)
      return rc;
    if (e->n != before && (rc = plan_tensor(e, index)))
      return rc;
    const drpc_wire_tensor_plan *pl = &e->plans[index];
    if (e->data_idx[index] != UINT32_MAX)
      n += TENSOR_FIXED + varint_size(e->data_idx[index]);
    else
      n += TENSOR_FIXED + varint_size(pl->handle_len) + pl->handle_len;
    for (int d = 0; d < pl->ndim; d++)
      n += varint_size((uint64_t)pl->shape[d]);
    break;
  }
  case DRPC_VAL_WORKER: {
    size_t nlen = v->u.w.name ? strlen(v->u.w.name) : 0;
    n += varint_size(zigzag(v->u.w.id)) + varint_size(nlen) + nlen;
    break;
  }
  case DRPC_VAL_RREF: {
    int rc = fork_of(e, v);
    if (rc)
      return rc;
    const drpc_value *fd = &e->forks[e->nforks - 1];
    size_t tlen = fd->u.r.type_name ? strlen(fd->u.r.type_name) : 0;
    n += varint_size(zigzag(fd->u.r.owner)) +
         varint_size(zigzag(fd->u.r.rref_created_on)) +
         varint_size((uint64_t)fd->u.r.rref_local_id) +
         varint_size(zigzag(fd->u.r.fork_created_on)) +
         varint_size((uint64_t)fd->u.r.fork_local_id) +
         varint_size(zigzag(fd->u.r.parent)) + varint_size(tlen) + tlen;
    break;
  }
  default:
    return drpc_error_set(e->err, DRPC_EINVAL, "invalid value kind %d",
                          (int)v->kind);
  }
  e->payload_len += n;
  return 0;
}

/* Pass two: writes what pass one measured; it cannot fail. */
static void emit(encoder *e, const drpc_value *v) {
  uint8_t *p = e->out;
  switch (v->kind) {
  case DRPC_VAL_NIL:
    p[e->pos++] = TAG_NIL;
    break;
  case DRPC_VAL_BOOL:
    p[e->pos++] = v->u.b ? TAG_TRUE : TAG_FALSE;
    break;
  case DRPC_VAL_INT:
    p[e->pos++] = TAG_INT;
    e->pos += put_varint(p + e->pos, zigzag(v->u.i));
    break;
  case DRPC_VAL_FLOAT: {
    uint64_t bits;
    memcpy(&bits, &v->u.f, sizeof(bits));
    p[e->pos++] = TAG_FLOAT;
    put_u64(p + e->pos, bits);
    e->pos += 8;
    break;
  }
  case DRPC_VAL_STR:
  case DRPC_VAL_BYTES:
    p[e->pos++] = v->kind == DRPC_VAL_STR ? TAG_STR : TAG_BYTES;
    e->pos += put_varint(p + e->pos, v->u.s.len);
    if (v->u.s.len)
      memcpy(p + e->pos, v->u.s.data, v->u.s.len);
    e->pos += v->u.s.len;
    break;
  case DRPC_VAL_LIST:
  case DRPC_VAL_DICT:
    p[e->pos++] = v->kind == DRPC_VAL_LIST ? TAG_LIST : TAG_DICT;
    e->pos += put_varint(p + e->pos, v->u.c.len);
    for (size_t i = 0; i < v->u.c.len; i++) {
      if (v->kind == DRPC_VAL_DICT) {
        size_t klen = strlen(v->u.c.keys[i]);
        e->pos += put_varint(p + e->pos, klen);
        memcpy(p + e->pos, v->u.c.keys[i], klen);
        e->pos += klen;
      }
      emit(e, v->u.c.items[i]);
    }
    break;
  case DRPC_VAL_TENSOR: {
    const drpc_tensor *t = v->u.t;
    size_t slot = slot_of(e, t);
    assert(e->slots[slot].key == t);
    uint32_t i = e->slots[slot].index;
    const drpc_wire_tensor_plan *pl = &e->plans[i];
    p[e->pos++] = e->data_idx[i] != UINT32_MAX ? TAG_TENSOR : TAG_SHARED;
    p[e->pos++] = (uint8_t)pl->dtype;
    p[e->pos++] = (uint8_t)pl->target.type;
    /* Two's complement by arithmetic, so -1 is written as 0xff anywhere. */
    p[e->pos++] = (uint8_t)(pl->target.index & 0xff);
    p[e->pos++] = (uint8_t)pl->ndim;
    for (int d = 0; d < pl->ndim; d++)
      e->pos += put_varint(p + e->pos, (uint64_t)pl->shape[d]);
    if (e->data_idx[i] != UINT32_MAX) {
      e->pos += put_varint(p + e->pos, e->data_idx[i]);
    } else {
      e->pos += put_varint(p + e->pos, pl->handle_len);
      memcpy(p + e->pos, pl->handle, pl->handle_len);
      e->pos += pl->handle_len;
    }
    break;
  }
  case DRPC_VAL_WORKER: {
    size_t nlen = v->u.w.name ? strlen(v->u.w.name) : 0;
    p[e->pos++] = TAG_WORKER;
    e->pos += put_varint(p + e->pos, zigzag(v->u.w.id));
    e->pos += put_varint(p + e->pos, nlen);
    if (nlen)
      memcpy(p + e->pos, v->u.w.name, nlen);
    e->pos += nlen;
    break;
  }
  case DRPC_VAL_RREF: {
    const drpc_value *fd = &e->forks[e->fork_pos++];
    size_t tlen = fd->u.r.type_name ? strlen(fd->u.r.type_name) : 0;
    p[e->pos++] = TAG_RREF;
    e->pos += put_varint(p + e->pos, zigzag(fd->u.r.owner));
    e->pos += put_varint(p + e->pos, zigzag(fd->u.r.rref_created_on));
    e->pos += put_varint(p + e->pos, (uint64_t)fd->u.r.rref_local_id);
    e->pos += put_varint(p + e->pos, zigzag(fd->u.r.fork_created_on));
    e->pos += put_varint(p + e->pos, (uint64_t)fd->u.r.fork_local_id);
    e->pos += put_varint(p + e->pos, zigzag(fd->u.r.parent));
    e->pos += put_varint(p + e->pos, tlen);
    if (tlen)
      memcpy(p + e->pos, fd->u.r.type_name, tlen);
    e->pos += tlen;
    break;
  }
  default:
    assert(!"measure() rejects every other kind");
    break;
  }
}

int drpc_wire_encode(uint8_t type, uint16_t flags, uint64_t id,
                     const drpc_value *body, const drpc_wire_limits *lim,
                     drpc_outframe **out, drpc_error *err) {
  return drpc_wire_encode_ex(type, flags, id, body, lim, NULL, NULL, out, err);
}

int drpc_wire_encode_ex(uint8_t type, uint16_t flags, uint64_t id,
                        const drpc_value *body, const drpc_wire_limits *lim,
                        drpc_wire_rref_fn rref_fn, void *rref_ctx,
                        drpc_outframe **out, drpc_error *err) {
  drpc_wire_hooks hooks = {rref_fn, rref_ctx, NULL, NULL};
  return drpc_wire_encode_hooks(type, flags, id, body, lim, &hooks, out, err);
}

/* Frees what pass one gathered. */
static void encoder_release(encoder *e) {
  for (uint32_t i = 0; i < e->n; i++)
    drpc_tensor_decref(e->plans[i].send);
  if (!is_small_list(e)) {
    free(e->list);
    free(e->plans);
    free(e->data_idx);
  }
  if (!is_small_slots(e))
    free(e->slots);
  free(e->forks);
}

int drpc_wire_encode_hooks(uint8_t type, uint16_t flags, uint64_t id,
                           const drpc_value *body, const drpc_wire_limits *lim,
                           const drpc_wire_hooks *hooks, drpc_outframe **out,
                           drpc_error *err) {
  *out = NULL;
  drpc_wire_limits defaults;
  lim = limits_or_default(lim, &defaults);
  if (!msg_type_known(type))
    return drpc_error_set(err, DRPC_EINVAL, "unknown message type %u",
                          (unsigned)type);
  drpc_value nil;
  memset(&nil, 0, sizeof(nil));
  nil.kind = DRPC_VAL_NIL;
  if (!body)
    body = &nil;

  encoder e;
  encoder_small small;
  memset(&e, 0, sizeof(e));
  e.lim = lim;
  e.err = err;
  e.small = &small;
  if (hooks) {
    e.rref_fn = hooks->rref_fn;
    e.rref_ctx = hooks->rref_ctx;
    e.tensor_fn = hooks->tensor_fn;
    e.tensor_ctx = hooks->tensor_ctx;
  }
  drpc_outframe *f = NULL;
  int rc = measure(&e, body, 1);
  if (rc)
    goto fail;
  if (e.payload_len > lim->max_payload) {
    rc = drpc_error_set(
        err, DRPC_ETOOBIG, "payload length %llu exceeds limit %u",
        (unsigned long long)e.payload_len, (unsigned)lim->max_payload);
    goto fail;
  }

  drpc_frame_header h;
  h.magic = DRPC_WIRE_MAGIC;
  h.version = DRPC_WIRE_VERSION;
  h.type = type;
  h.flags = flags;
  h.id = id;
  h.payload_len = (uint32_t)e.payload_len;
  h.ntensors = e.ndata;
  uint64_t data_len = 0;
  for (uint32_t i = 0; i < e.n; i++) {
    if (e.data_idx[i] == UINT32_MAX)
      continue;
    uint64_t nb = checked_bytes(e.list[i]);
    if (nb == 0)
      continue;
    if (!align_up(data_len, &data_len) || nb > UINT64_MAX - data_len) {
      rc = drpc_error_set(err, DRPC_ETOOBIG, "tensors' bytes overflow");
      goto fail;
    }
    data_len += nb;
  }
  h.data_len = data_len;
  uint64_t total = UINT64_MAX;
  if (drpc_wire_frame_size(&h, &total) != 0 || total > lim->max_frame) {
    rc = drpc_error_set(
        err, DRPC_ETOOBIG, "frame length %llu exceeds limit %llu",
        (unsigned long long)total, (unsigned long long)lim->max_frame);
    goto fail;
  }
  uint64_t head_len = drpc_wire_data_offset(h.payload_len);
  if (head_len > SIZE_MAX) {
    rc = drpc_error_set(err, DRPC_ETOOBIG, "frame does not fit in memory");
    goto fail;
  }

  /* One block: the frame, its tensor list, its head. Zero-filled so that
   * the padding after the payload is zero bytes. */
  size_t list_bytes = (size_t)e.ndata * sizeof(*f->tensors);
  if ((size_t)head_len > SIZE_MAX - sizeof(*f) - list_bytes) {
    rc = drpc_error_set(err, DRPC_ETOOBIG, "frame does not fit in memory");
    goto fail;
  }
  f = calloc(1, sizeof(*f) + list_bytes + (size_t)head_len);
  if (!f)
    goto nomem;
  if (e.ndata)
    f->tensors = (drpc_tensor **)(void *)(f + 1);
  f->head = (uint8_t *)(f + 1) + list_bytes;
  f->one_block = true;
  f->head_len = (size_t)head_len;
  f->total_len = total;
  for (uint32_t i = 0; i < e.n; i++) {
    if (e.data_idx[i] == UINT32_MAX)
      continue;
    /* A contiguous tensor is shared as is; a strided view is copied so its
     * bytes can go out in one piece. */
    drpc_tensor *c = drpc_tensor_contiguous(e.plans[i].send);
    if (!c)
      goto nomem;
    f->tensors[f->ntensors++] = c;
  }

  drpc_wire_header_encode(&h, f->head);
  e.out = f->head;
  e.pos = DRPC_WIRE_HEADER_SIZE;
  emit(&e, body);
  assert(e.pos == DRPC_WIRE_HEADER_SIZE + e.payload_len);
  assert(e.fork_pos == e.nforks);
  encoder_release(&e);
  *out = f;
  return 0;

nomem:
  rc = drpc_error_set(err, DRPC_ENOMEM, "out of memory encoding a frame");
fail:
  drpc_outframe_free(f);
  encoder_release(&e);
  return rc;
}

/* drpc_wire_encode_msg's hook: each tensor travels as it arrived. */
static int msg_plan(void *ctx, drpc_tensor *t, drpc_wire_tensor_plan *plan,
                    drpc_error *err) {
  const drpc_msg *m = ctx;
  for (uint32_t i = 0; i < m->nshared; i++) {
    if (m->shared[i].tensor != t)
      continue;
    plan->target = m->shared[i].device;
    plan->dtype = m->shared[i].dtype;
    plan->ndim = m->shared[i].ndim;
    memcpy(plan->shape, m->shared[i].shape, sizeof plan->shape);
    plan->handle_len = m->shared[i].handle_len;
    memcpy(plan->handle, m->shared[i].handle, m->shared[i].handle_len);
    return 0;
  }
  if (!t->storage || t->storage->device.type != DRPC_DEVICE_CPU)
    return drpc_error_set(err, DRPC_EUNSUPPORTED,
                          "a message placed on devices cannot be re-encoded");
  plan->target = DRPC_CPU;
  for (uint32_t i = 0; m->devices && i < m->ntensors; i++)
    if (m->tensors[i] == t)
      plan->target = m->devices[i];
  drpc_tensor_incref(t);
  plan->send = t;
  return 0;
}

int drpc_wire_encode_msg(const drpc_msg *m, const drpc_wire_limits *lim,
                         drpc_outframe **out, drpc_error *err) {
  drpc_wire_hooks hooks = {NULL, NULL, msg_plan, (void *)m};
  return drpc_wire_encode_hooks(m->type, m->flags, m->id, m->body, lim, &hooks,
                                out, err);
}

void drpc_outframe_set_id(drpc_outframe *f, uint64_t id) {
  put_u64(f->head + 8, id);
}

/* Appends the part of [base, base+len) at or after `from`, given that the
 * piece starts at frame offset *pos. */
/* The part of piece [*pos, *pos + len) inside [from, to). */
static void add_piece(const void *base, uint64_t len, uint64_t from,
                      uint64_t to, uint64_t *pos, struct iovec *iov, size_t max,
                      size_t *count) {
  uint64_t start = *pos;
  *pos += len;
  if (len == 0 || *pos <= from || start >= to)
    return;
  uint64_t skip = from > start ? from - start : 0;
  uint64_t end = *pos < to ? *pos : to;
  if (*count < max) {
    iov[*count].iov_base = (void *)((const uint8_t *)base + skip);
    iov[*count].iov_len = (size_t)(end - start - skip);
  }
  (*count)++;
}

size_t drpc_outframe_iov_upto(const drpc_outframe *f, uint64_t from,
                              uint64_t to, struct iovec *iov, size_t max,
                              const void *pad_zero) {
  size_t count = 0;
  uint64_t pos = 0;
  add_piece(f->head, f->head_len, from, to, &pos, iov, max, &count);
  for (uint32_t i = 0; i < f->ntensors && pos < to; i++) {
    uint64_t nb = checked_bytes(f->tensors[i]);
    if (nb == 0)
      continue;
    add_piece(pad_zero, aligned(pos) - pos, from, to, &pos, iov, max, &count);
    add_piece(drpc_tensor_data(f->tensors[i]), nb, from, to, &pos, iov, max,
              &count);
  }
  assert(to < f->total_len || pos == f->total_len);
  return count;
}

size_t drpc_outframe_iov(const drpc_outframe *f, uint64_t from,
                         struct iovec *iov, size_t max, const void *pad_zero) {
  return drpc_outframe_iov_upto(f, from, UINT64_MAX, iov, max, pad_zero);
}

uint64_t drpc_outframe_ready_end(drpc_outframe *f, uint64_t from, int *rc,
                                 drpc_error *err) {
  *rc = 0;
  if (!f->pending)
    return f->total_len;
  uint64_t end = drpc_devchunks_wait(f->pending, from, rc, err);
  if (*rc)
    return from;
  if (end >= f->total_len) {
    drpc_devchunks_free(f->pending); /* all there */
    f->pending = NULL;
    return f->total_len;
  }
  return end;
}

uint8_t *drpc_outframe_flatten(const drpc_outframe *f, size_t *len) {
  if (f->total_len > SIZE_MAX)
    return NULL;
  uint8_t *buf = malloc((size_t)f->total_len);
  if (!buf)
    return NULL;
  memcpy(buf, f->head, f->head_len);
  uint64_t pos = f->head_len;
  for (uint32_t i = 0; i < f->ntensors; i++) {
    uint64_t nb = checked_bytes(f->tensors[i]);
    if (nb == 0)
      continue;
    uint64_t start = aligned(pos);
    memset(buf + pos, 0, (size_t)(start - pos));
    memcpy(buf + start, drpc_tensor_data(f->tensors[i]), (size_t)nb);
    pos = start + nb;
  }
  assert(pos == f->total_len);
  if (len)
    *len = (size_t)f->total_len;
  return buf;
}

int drpc_outframe_wait(drpc_outframe *f, drpc_error *err) {
  if (!f || !f->pending)
    return 0;
  int rc = 0;
  (void)drpc_outframe_ready_end(f, f->total_len, &rc, err);
  return rc;
}

void drpc_outframe_free(drpc_outframe *f) {
  if (!f)
    return;
  drpc_devchunks_free(f->pending); /* waits: the copies write f's tensors */
  for (uint32_t i = 0; i < f->ntensors; i++)
    drpc_tensor_decref(f->tensors[i]);
  if (!f->one_block) {
    free(f->tensors);
    free(f->head);
  }
  free(f);
}
