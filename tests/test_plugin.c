int drpc_plugin_register(void *r);
int drpc_plugin_register(void *r) {
  (void)r;
  return 0;
}
