/* Values as JSON text (cJSON), for metrics, the CLI and benchmarks. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>

#include "drpc/net.h"

static cJSON *to_json(const drpc_value *v, int depth) {
  if (!v || depth > DRPC_VALUE_MAX_DEPTH)
    return cJSON_CreateNull();
  switch (v->kind) {
  case DRPC_VAL_NIL:
    return cJSON_CreateNull();
  case DRPC_VAL_BOOL:
    return cJSON_CreateBool(v->u.b);
  case DRPC_VAL_INT:
    return cJSON_CreateNumber((double)v->u.i);
  case DRPC_VAL_FLOAT:
    return cJSON_CreateNumber(v->u.f);
  case DRPC_VAL_STR:
    return cJSON_CreateString(v->u.s.data);
  case DRPC_VAL_BYTES: {
    char buf[64];
    snprintf(buf, sizeof buf, "<%zu bytes>", v->u.s.len);
    return cJSON_CreateString(buf);
  }
  case DRPC_VAL_LIST:
  case DRPC_VAL_DICT: {
    bool dict = v->kind == DRPC_VAL_DICT;
    cJSON *o = dict ? cJSON_CreateObject() : cJSON_CreateArray();
    for (size_t i = 0; o && i < v->u.c.len; i++) {
      cJSON *item = to_json(v->u.c.items[i], depth + 1);
      if (dict)
        cJSON_AddItemToObject(o, v->u.c.keys[i], item);
      else
        cJSON_AddItemToArray(o, item);
    }
    return o;
  }
  case DRPC_VAL_TENSOR: {
    cJSON *o = cJSON_CreateObject();
    const drpc_tensor *t = v->u.t;
    cJSON_AddStringToObject(o, "tensor", drpc_dtype_name(t->dtype));
    cJSON *shape = cJSON_AddArrayToObject(o, "shape");
    for (int i = 0; i < t->ndim; i++)
      cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[i]));
    return o;
  }
  case DRPC_VAL_WORKER: {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "id", v->u.w.id);
    cJSON_AddStringToObject(o, "name", v->u.w.name);
    return o;
  }
  default: {
    char buf[256];
    drpc_value_format(v, buf, sizeof buf);
    return cJSON_CreateString(buf);
  }
  }
}

char *drpc_value_to_json(const drpc_value *v, bool pretty) {
  cJSON *j = to_json(v, 0);
  if (!j)
    return NULL;
  char *s = pretty ? cJSON_Print(j) : cJSON_PrintUnformatted(j);
  cJSON_Delete(j);
  return s;
}
