# The engine: sampling, paged KV cache, forward pass.
cinder_add_test(test_sampler SOURCES test_sampler.c LIBS cinder_engine)
set_tests_properties(test_sampler PROPERTIES LABELS "sanitize")
cinder_add_test(test_engine_golden SOURCES test_engine_golden.c LIBS cinder_engine)
set_tests_properties(test_engine_golden PROPERTIES LABELS "sanitize")
cinder_add_test(test_engine_smollm2 SOURCES test_engine_smollm2.c LIBS cinder_engine)
set_tests_properties(test_engine_smollm2 PROPERTIES SKIP_RETURN_CODE 77)
cinder_add_test(test_engine_batch SOURCES test_engine_batch.c LIBS cinder_engine)
set_tests_properties(test_engine_batch PROPERTIES LABELS "sanitize")
