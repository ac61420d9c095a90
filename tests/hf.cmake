# Hugging Face folders: safetensors files, config.json, and the model they make.
cinder_add_test(test_safetensors SOURCES test_safetensors.c LIBS cinder_hf)
cinder_add_test(test_hf_model SOURCES test_hf_model.c LIBS cinder_common)
set_tests_properties(test_safetensors test_hf_model PROPERTIES LABELS "sanitize")
