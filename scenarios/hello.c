/* The README's example program: two workers, one named function call. */
#include <drpc/drpc.h>
#include <drpc/net.h>
#include <stdio.h>

/* A function other workers can call by name. */
static drpc_value *scale(drpc_call *call, const drpc_value *args,
                         const drpc_value *kwargs, drpc_error *err) {
  (void)call; /* who is calling, which agent: unused here */
  const drpc_value *x = drpc_list_at(args, 0);
  const drpc_value *k = drpc_dict_get(kwargs, "by");
  if (!x || x->kind != DRPC_VAL_INT) {
    drpc_error_set(err, DRPC_ETYPE, "scale: expected an int");
    return NULL;
  }
  return drpc_value_int(x->u.i * (k ? k->u.i : 2));
}

int main(int argc, char **argv) {
  int rank = argv[1][0] - '0';
  drpc_register_function(drpc_registry_default(), "scale", scale, NULL);

  drpc_options o;
  drpc_options_default(&o);
  o.init_method =
      argc > 2 ? argv[2] : "tcp://127.0.0.1:29500"; /* rank 0 hosts the store */

  drpc_agent *a;
  drpc_error err = DRPC_ERROR_INIT;
  if (drpc_init(&a, rank == 0 ? "w0" : "w1", rank, 2, &o, &err)) {
    fprintf(stderr, "%s\n", drpc_error_message(&err));
    return 1;
  }
  if (rank == 0) {
    drpc_value *args = drpc_value_list_of(1, drpc_value_int(21));
    drpc_value *kw = drpc_value_dict();
    drpc_dict_set(kw, "by", drpc_value_int(2));
    drpc_value *out = NULL;
    /* rpc_sync; drpc_rpc_async returns a drpc_future instead. */
    if (drpc_rpc_sync(a, "w1", DRPC_FUNCTION, "scale", args, kw,
                      DRPC_UNSET_RPC_TIMEOUT, &out, &err) == 0)
      printf("w1 says %lld\n", (long long)out->u.i); /* 42 */
    drpc_value_free(out);
    drpc_value_free(args);
    drpc_value_free(kw);
  }
  /* Graceful: waits until no worker has calls in flight, bounded. */
  return drpc_shutdown(a, true, DRPC_UNSET_RPC_TIMEOUT, &err) != 0;
}
