# The engine: sampling, paged KV cache, forward pass.
cinder_add_test(test_sampler SOURCES test_sampler.c LIBS cinder_engine)
set_tests_properties(test_sampler PROPERTIES LABELS "sanitize")
