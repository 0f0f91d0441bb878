/* Unit tests for core/value.c: building, copying, comparing and printing. */
#include "drpc/error.h"
#include "drpc/value.h"

#include "test.h"

#include <math.h>

static drpc_tensor *tensor_2x3(void) {
  const float data[6] = {1, 2, 3, 4, 5, 6};
  int64_t shape[2] = {2, 3};
  return drpc_tensor_from_data(DRPC_FLOAT32, 2, shape, data, true);
}

static void test_scalars(void) {
  drpc_value *v = drpc_value_nil();
  CHECK(v && v->kind == DRPC_VAL_NIL);
  drpc_value_free(v);

  v = drpc_value_bool(true);
  CHECK(v && v->kind == DRPC_VAL_BOOL && v->u.b);
  drpc_value_free(v);

  v = drpc_value_int(INT64_MIN);
  CHECK(v && v->kind == DRPC_VAL_INT);
  CHECK(v->u.i == INT64_MIN);
  drpc_value_free(v);

  v = drpc_value_float(2.5);
  CHECK(v && v->kind == DRPC_VAL_FLOAT && v->u.f == 2.5);
  drpc_value_free(v);

  v = drpc_value_worker(-7, "w7");
  CHECK(v && v->kind == DRPC_VAL_WORKER);
  CHECK_EQ_INT(v->u.w.id, -7);
  CHECK_STR_EQ(v->u.w.name, "w7");
  drpc_value_free(v);

  drpc_value_free(NULL); /* freeing nothing is allowed */
}

static void test_strings_and_bytes(void) {
  drpc_value *s = drpc_value_str("hello");
  CHECK(s && s->kind == DRPC_VAL_STR);
  CHECK_EQ_INT(drpc_value_len(s), 5);
  CHECK_STR_EQ(s->u.s.data, "hello");

  /* strn keeps embedded NULs and still terminates the copy. */
  drpc_value *n = drpc_value_strn("a\0b", 3);
  CHECK_EQ_INT(drpc_value_len(n), 3);
  CHECK(memcmp(n->u.s.data, "a\0b", 4) == 0);

  drpc_value *b = drpc_value_bytes("\x00\x01\x02", 3);
  CHECK(b && b->kind == DRPC_VAL_BYTES);
  CHECK_EQ_INT(drpc_value_len(b), 3);
  CHECK_EQ_INT(b->u.s.data[3], 0);

  drpc_value *e = drpc_value_bytes(NULL, 0);
  CHECK(e && drpc_value_len(e) == 0);

  /* A str and bytes with the same content are different values. */
  drpc_value *sb = drpc_value_str("a\0b");
  CHECK(!drpc_value_equal(n, sb));
  drpc_value *bb = drpc_value_bytes("a\0b", 3);
  CHECK(!drpc_value_equal(n, bb));

  drpc_value_free(s);
  drpc_value_free(n);
  drpc_value_free(b);
  drpc_value_free(e);
  drpc_value_free(sb);
  drpc_value_free(bb);
}

static void test_list(void) {
  drpc_value *l = drpc_value_list();
  CHECK_EQ_INT(drpc_value_len(l), 0);
  CHECK(drpc_list_at(l, 0) == NULL);
  for (int i = 0; i < 1000; i++)
    CHECK_EQ_INT(drpc_list_append(l, drpc_value_int(i)), 0);
  CHECK_EQ_INT(drpc_value_len(l), 1000);
  CHECK(l->u.c.cap >= l->u.c.len);
  CHECK_EQ_INT(drpc_list_at(l, 999)->u.i, 999);
  CHECK(drpc_list_at(l, 1000) == NULL);

  /* Appending to a non-list fails and frees the item (ASan checks it). */
  drpc_value *notlist = drpc_value_int(1);
  CHECK_EQ_INT(drpc_list_append(notlist, drpc_value_str("x")), DRPC_ETYPE);
  CHECK_EQ_INT(drpc_list_append(l, NULL), DRPC_ENOMEM);
  drpc_value_free(notlist);
  drpc_value_free(l);
}

static void test_list_of(void) {
  drpc_value *l = drpc_value_list_of(3, drpc_value_int(1), drpc_value_str("x"),
                                     drpc_value_nil());
  CHECK(l && drpc_value_len(l) == 3);
  CHECK_EQ_INT(drpc_list_at(l, 0)->u.i, 1);
  CHECK(drpc_list_at(l, 2)->kind == DRPC_VAL_NIL);
  drpc_value_free(l);

  /* A NULL item fails the call; the other items are freed, not leaked. */
  l = drpc_value_list_of(3, drpc_value_int(1), NULL, drpc_value_str("y"));
  CHECK(l == NULL);

  l = drpc_value_list_of(0);
  CHECK(l && drpc_value_len(l) == 0);
  drpc_value_free(l);
}

static void test_dict(void) {
  drpc_value *d = drpc_value_dict();
  CHECK_EQ_INT(drpc_dict_set(d, "b", drpc_value_int(1)), 0);
  CHECK_EQ_INT(drpc_dict_set(d, "a", drpc_value_int(2)), 0);
  CHECK_EQ_INT(drpc_dict_set(d, "c", drpc_value_int(3)), 0);
  CHECK_EQ_INT(drpc_value_len(d), 3);
  /* Replacing keeps the key's first position. */
  CHECK_EQ_INT(drpc_dict_set(d, "b", drpc_value_str("new")), 0);
  CHECK_EQ_INT(drpc_value_len(d), 3);
  CHECK_STR_EQ(d->u.c.keys[0], "b");
  CHECK_STR_EQ(d->u.c.keys[1], "a");
  CHECK_STR_EQ(d->u.c.keys[2], "c");
  const drpc_value *b = drpc_dict_get(d, "b");
  CHECK(b && b->kind == DRPC_VAL_STR);
  CHECK_STR_EQ(b->u.s.data, "new");
  CHECK(drpc_dict_get(d, "zz") == NULL);
  CHECK(drpc_dict_get(NULL, "a") == NULL);
  CHECK_EQ_INT(drpc_list_at(d, 1)->u.i, 2);

  drpc_value *l = drpc_value_list();
  CHECK_EQ_INT(drpc_dict_set(l, "k", drpc_value_int(1)), DRPC_ETYPE);
  CHECK(drpc_dict_get(l, "k") == NULL);
  CHECK_EQ_INT(drpc_dict_set(d, "k", NULL), DRPC_ENOMEM);
  drpc_value_free(l);

  for (int i = 0; i < 300; i++) {
    char key[16];
    snprintf(key, sizeof(key), "k%d", i);
    CHECK_EQ_INT(drpc_dict_set(d, key, drpc_value_int(i)), 0);
  }
  CHECK_EQ_INT(drpc_value_len(d), 303);
  CHECK_EQ_INT(drpc_dict_get(d, "k299")->u.i, 299);
  drpc_value_free(d);
}

static drpc_value *sample_tree(drpc_tensor *t) {
  drpc_value *d = drpc_value_dict();
  drpc_dict_set(d, "k", drpc_value_bytes("abc", 3));
  drpc_dict_set(d, "t", drpc_value_tensor(t));
  return drpc_value_list_of(7, drpc_value_int(1), drpc_value_float(2.5),
                            drpc_value_str("x"), d, drpc_value_tensor(t),
                            drpc_value_worker(1, "w1"), drpc_value_bool(false));
}

static void test_clone_and_equal(void) {
  drpc_tensor *t = tensor_2x3();
  int refs = t->refcount;
  drpc_value *a = sample_tree(t);
  CHECK_EQ_INT(t->refcount, refs + 2);
  drpc_value *b = drpc_value_clone(a);
  CHECK(b != NULL);
  /* Tensors are shared by the copy, not copied. */
  CHECK_EQ_INT(t->refcount, refs + 4);
  CHECK(drpc_value_equal(a, b));
  CHECK(drpc_list_at(b, 4)->u.t == t);

  /* The copy is deep: changing it leaves the original alone. */
  drpc_list_append(b, drpc_value_nil());
  CHECK(!drpc_value_equal(a, b));
  CHECK_EQ_INT(drpc_value_len(a), 7);
  drpc_value_free(b);
  CHECK_EQ_INT(t->refcount, refs + 2);

  /* Tensors compare by value. */
  drpc_tensor *t2 = tensor_2x3();
  drpc_value *c = sample_tree(t2);
  CHECK(drpc_value_equal(a, c));
  ((float *)drpc_tensor_data(t2))[5] = 7;
  CHECK(!drpc_value_equal(a, c));
  drpc_value_free(c);
  drpc_tensor_decref(t2);

  drpc_value_free(a);
  CHECK_EQ_INT(t->refcount, refs);
  drpc_tensor_decref(t);
}

static void test_equal_cases(void) {
  drpc_value *i1 = drpc_value_int(1), *f1 = drpc_value_float(1.0);
  CHECK(!drpc_value_equal(i1, f1)); /* kinds differ */
  CHECK(drpc_value_equal(NULL, NULL));
  CHECK(!drpc_value_equal(i1, NULL));

  drpc_value *nan1 = drpc_value_float(NAN), *nan2 = drpc_value_float(NAN);
  CHECK(!drpc_value_equal(nan1, nan2));
  drpc_value *pz = drpc_value_float(0.0), *nz = drpc_value_float(-0.0);
  CHECK(drpc_value_equal(pz, nz));

  /* Dicts are equal whatever their insertion order, like Python's. */
  drpc_value *d1 = drpc_value_dict(), *d2 = drpc_value_dict();
  drpc_dict_set(d1, "x", drpc_value_int(1));
  drpc_dict_set(d1, "y", drpc_value_int(2));
  drpc_dict_set(d2, "y", drpc_value_int(2));
  drpc_dict_set(d2, "x", drpc_value_int(1));
  CHECK(drpc_value_equal(d1, d2));
  drpc_dict_set(d2, "x", drpc_value_int(3));
  CHECK(!drpc_value_equal(d1, d2));

  drpc_value *w1 = drpc_value_worker(1, "a"), *w2 = drpc_value_worker(1, "b");
  drpc_value *w3 = drpc_value_worker(2, "a");
  CHECK(!drpc_value_equal(w1, w2));
  CHECK(!drpc_value_equal(w1, w3));

  drpc_value *l1 = drpc_value_list_of(1, drpc_value_int(1));
  drpc_value *l2 = drpc_value_list_of(2, drpc_value_int(1), drpc_value_nil());
  CHECK(!drpc_value_equal(l1, l2));

  drpc_value *vals[] = {i1, f1, nan1, nan2, pz, nz, d1, d2, w1, w2, w3, l1, l2};
  for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++)
    drpc_value_free(vals[i]);
}

static drpc_value *make_rref(const char *type_name) {
  drpc_value *v = drpc_value_nil();
  v->kind = DRPC_VAL_RREF;
  v->u.r.owner = 1;
  v->u.r.rref_created_on = 2;
  v->u.r.rref_local_id = 30;
  v->u.r.fork_created_on = 3;
  v->u.r.fork_local_id = 40;
  v->u.r.parent = 2;
  v->u.r.type_name = NULL;
  if (type_name) {
    v->u.r.type_name = malloc(strlen(type_name) + 1);
    strcpy(v->u.r.type_name, type_name);
  }
  return v;
}

static void test_rref(void) {
  drpc_value *a = make_rref("Tensor");
  drpc_value *b = drpc_value_clone(a);
  CHECK(b && b->kind == DRPC_VAL_RREF);
  CHECK(b->u.r.type_name != a->u.r.type_name);
  CHECK(drpc_value_equal(a, b));
  b->u.r.fork_local_id++;
  CHECK(!drpc_value_equal(a, b));
  char buf[200];
  drpc_value_format(a, buf, sizeof(buf));
  CHECK_STR_EQ(buf, "RRef(owner=1, rref_id=(2, 30), fork_id=(3, 40), "
                    "parent=2, type=Tensor)");
  drpc_value *c = make_rref(NULL);
  CHECK(!drpc_value_equal(a, c));
  drpc_value *d = drpc_value_clone(c);
  CHECK(drpc_value_equal(c, d));
  CHECK_STR_EQ(drpc_value_kind_name(a->kind), "rref");
  drpc_value_free(a);
  drpc_value_free(b);
  drpc_value_free(c);
  drpc_value_free(d);
}

static void test_format(void) {
  drpc_tensor *t = tensor_2x3();
  drpc_value *v = drpc_value_list_of(
      6, drpc_value_int(1), drpc_value_float(2.5), drpc_value_str("x"),
      drpc_value_dict(), drpc_value_tensor(t), drpc_value_worker(1, "w1"));
  drpc_dict_set(v->u.c.items[3], "k", drpc_value_bytes("abc", 3));
  const char *want = "[1, 2.5, \"x\", {\"k\": b'3 bytes'}, "
                     "tensor(float32, [2, 3]), WorkerInfo(id=1, name=w1)]";
  char buf[256];
  size_t n = drpc_value_format(v, buf, sizeof(buf));
  CHECK_STR_EQ(buf, want);
  CHECK_EQ_INT(n, strlen(want));

  /* Every short buffer holds a prefix ending in "..." and stays
   * terminated. */
  for (size_t cap = 1; cap < strlen(want) + 1; cap++) {
    char small[256];
    memset(small, 'Z', sizeof(small));
    size_t m = drpc_value_format(v, small, cap);
    CHECK_EQ_INT(m, cap - 1);
    CHECK_EQ_INT(small[cap - 1], '\0');
    CHECK_EQ_INT(small[cap], 'Z');
    if (cap > 4) {
      CHECK(strncmp(small, want, cap - 4) == 0);
      CHECK_STR_EQ(small + cap - 4, "...");
    }
  }
  /* The exact size fits with no marker. */
  n = drpc_value_format(v, buf, strlen(want) + 1);
  CHECK_STR_EQ(buf, want);
  CHECK_EQ_INT(drpc_value_format(v, NULL, 0), 0);
  drpc_value_free(v);
  drpc_tensor_decref(t);
}

static void format_is(drpc_value *v, const char *want) {
  char buf[128];
  drpc_value_format(v, buf, sizeof(buf));
  CHECK_STR_EQ(buf, want);
  drpc_value_free(v);
}

static void test_format_scalars(void) {
  format_is(drpc_value_nil(), "None");
  format_is(drpc_value_bool(true), "True");
  format_is(drpc_value_bool(false), "False");
  format_is(drpc_value_int(-42), "-42");
  format_is(drpc_value_int(INT64_MIN), "-9223372036854775808");
  format_is(drpc_value_float(1.0), "1.0");
  format_is(drpc_value_float(0.1), "0.1");
  format_is(drpc_value_float(-0.0), "-0.0");
  format_is(drpc_value_float(1e100), "1e+100");
  format_is(drpc_value_float(1.0 / 3), "0.3333333333333333");
  format_is(drpc_value_float(INFINITY), "inf");
  format_is(drpc_value_float(-INFINITY), "-inf");
  format_is(drpc_value_float(NAN), "nan");
  format_is(drpc_value_str("a\"b\\c\n\x01"), "\"a\\\"b\\\\c\\n\\x01\"");
  format_is(drpc_value_bytes("", 0), "b'0 bytes'");
  format_is(drpc_value_list(), "[]");
  format_is(drpc_value_dict(), "{}");
  format_is(drpc_value_tensor(NULL), "tensor(null)");
  drpc_tensor *s = drpc_tensor_new(DRPC_INT64, 0, NULL);
  format_is(drpc_value_tensor(s), "tensor(int64, [])");
  drpc_tensor_decref(s);
  format_is(drpc_value_worker(0, ""), "WorkerInfo(id=0, name=)");
}

static void test_format_deep(void) {
  /* Printing stops at the wire's depth bound instead of recursing without
   * end. */
  drpc_value *v = drpc_value_int(0);
  for (int i = 0; i < 200; i++)
    v = drpc_value_list_of(1, v);
  char buf[1024];
  size_t n = drpc_value_format(v, buf, sizeof(buf));
  CHECK(n > 0 && n < sizeof(buf) - 1);
  CHECK_CONTAINS(buf, "[...]");
  drpc_value_free(v);
}

static void test_kind_names(void) {
  const char *names[] = {"nil",  "bool", "int",    "float",  "str", "bytes",
                         "list", "dict", "tensor", "worker", "rref"};
  for (int k = 0; k < DRPC_VAL_KIND_COUNT; k++)
    CHECK_STR_EQ(drpc_value_kind_name((drpc_value_kind)k), names[k]);
  CHECK_STR_EQ(drpc_value_kind_name(DRPC_VAL_KIND_COUNT), "invalid");
}

int main(void) {
  RUN(test_scalars);
  RUN(test_strings_and_bytes);
  RUN(test_list);
  RUN(test_list_of);
  RUN(test_dict);
  RUN(test_clone_and_equal);
  RUN(test_equal_cases);
  RUN(test_rref);
  RUN(test_format);
  RUN(test_format_scalars);
  RUN(test_format_deep);
  RUN(test_kind_names);
  return test_finish();
}
