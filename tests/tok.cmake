# Tokenizer tests: byte-level BPE against Hugging Face `tokenizers` references (made by
# tests/golden/make_tokenizer_refs.py, committed in data/tokenizer), the streaming decoder, the
# chat templates, errors and long inputs.
set(CINDER_TOK_DATA ${CMAKE_CURRENT_SOURCE_DIR}/data/tokenizer)

# Meta's Llama-3 tokenizer.json is not in the repository: scripts/fetch-test-data.sh puts it
# in the model cache (scripts/test.sh runs it), and the tests that need it skip (77) without it.
set(CINDER_TOK_LLAMA3_DIR ${CINDER_MODEL_CACHE}/llama3)

foreach(t test_tokenizer test_tokenizer_golden)
  cinder_add_test(${t} SOURCES ${t}.c LIBS cinder_tok)
  target_compile_definitions(${t} PRIVATE CINDER_TOK_LLAMA3_DIR="${CINDER_TOK_LLAMA3_DIR}")
endforeach()
set_tests_properties(test_tokenizer test_tokenizer_golden PROPERTIES LABELS "sanitize")
# The golden references again through the GGUF front end, on the default model; 77 (skipped)
# when the model is not downloaded.
add_test(NAME test_tokenizer_golden_gguf COMMAND test_tokenizer_golden --gguf)
set_tests_properties(test_tokenizer_golden_gguf PROPERTIES LABELS "sanitize" SKIP_RETURN_CODE 77)
add_test(NAME test_tokenizer_golden_llama3 COMMAND test_tokenizer_golden --llama3)
set_tests_properties(test_tokenizer_golden_llama3 PROPERTIES LABELS "sanitize" SKIP_RETURN_CODE 77)
