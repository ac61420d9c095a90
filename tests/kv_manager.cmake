# The coordinator's KV block manager: allocation, prefix caching, LRU eviction, copy-on-write,
# out-of-blocks, and a seeded random stress run under the invariant checker.
cinder_add_test(test_kv_manager SOURCES test_kv_manager.c LIBS cinder_coordinator)
set_tests_properties(test_kv_manager PROPERTIES LABELS "sanitize")
