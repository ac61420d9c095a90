# GGUF: the reader and writer (round trips, refusals, fuzzing) and the GGUF model loader.
cinder_add_test(test_gguf SOURCES test_gguf.c LIBS cinder_gguf)
cinder_add_test(test_gguf_fuzz SOURCES test_gguf_fuzz.c LIBS cinder_gguf)
cinder_add_test(test_gguf_model SOURCES test_gguf_model.c)
set_tests_properties(test_gguf test_gguf_fuzz PROPERTIES LABELS "sanitize")
# 77: the default model is not downloaded (the generated-file checks still ran).
set_tests_properties(test_gguf_model PROPERTIES LABELS "sanitize" SKIP_RETURN_CODE 77)
