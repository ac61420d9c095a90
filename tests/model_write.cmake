# The model-writing tool: quantizers, streamed GGUF/safetensors writers, random models of every
# type in both formats read back through model_open, and `cinder write-model` (its source is
# compiled in, so the command runs in-process).
cinder_add_test(test_model_write SOURCES test_model_write.c ${PROJECT_SOURCE_DIR}/client/cmd_write.c)
target_include_directories(test_model_write PRIVATE ${PROJECT_SOURCE_DIR}/client)
set_tests_properties(test_model_write PROPERTIES LABELS "sanitize")
