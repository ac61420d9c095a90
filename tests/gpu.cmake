# GPU tests (tests/gpu/): every CUDA op against the CPU op, the CUDA engine against the CPU
# engine. Built whenever the CUDA backend is (so CI compiles them), registered with ctest only
# with CINDER_GPU_TESTS=ON (tests/gpu/run.sh sets it), labelled "gpu". Without a device they
# exit 77 (skipped).
option(CINDER_GPU_TESTS "Register the GPU tests with ctest (needs a CUDA device)" OFF)
if(CINDER_CUDA)
  add_executable(test_cuda_ops gpu/test_cuda_ops.c)
  target_link_libraries(test_cuda_ops PRIVATE cinder_kernels_cuda)
  target_include_directories(test_cuda_ops PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
  add_executable(test_cuda_engine gpu/test_cuda_engine.c)
  target_link_libraries(test_cuda_engine PRIVATE cinder_engine)
  target_include_directories(test_cuda_engine PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
  if(CINDER_GPU_TESTS)
    add_test(NAME test_cuda_ops COMMAND test_cuda_ops)
    set_tests_properties(test_cuda_ops PROPERTIES LABELS "gpu" SKIP_RETURN_CODE 77)
    # the engine tests need models written by tests/gpu/run.sh into CINDER_GPU_MODELS
    set(CINDER_GPU_MODELS "${PROJECT_BINARY_DIR}/gpu-models" CACHE PATH "Models for GPU tests")
    add_test(NAME test_cuda_engine_tiny_f32
             COMMAND test_cuda_engine ${CINDER_GPU_MODELS}/tiny-f32.gguf --max-rel 1e-3)
    add_test(NAME test_cuda_engine_tiny_f32_bf16kv
             COMMAND test_cuda_engine ${CINDER_GPU_MODELS}/tiny-f32.gguf --kv bf16 --min-agree 0.95)
    add_test(NAME test_cuda_engine_1b_bf16
             COMMAND test_cuda_engine ${CINDER_GPU_MODELS}/llama-1b-bf16.gguf --min-agree 0.99)
    add_test(NAME test_cuda_engine_1b_bf16_bf16kv
             COMMAND test_cuda_engine ${CINDER_GPU_MODELS}/llama-1b-bf16.gguf --kv bf16 --min-agree 0.95)
    add_test(NAME test_cuda_engine_1b_q4_1
             COMMAND test_cuda_engine ${CINDER_GPU_MODELS}/llama-1b-q4_1.gguf --min-agree 0.97)
    set_tests_properties(test_cuda_engine_tiny_f32 test_cuda_engine_tiny_f32_bf16kv
                         test_cuda_engine_1b_bf16 test_cuda_engine_1b_bf16_bf16kv
                         test_cuda_engine_1b_q4_1
                         PROPERTIES LABELS "gpu" SKIP_RETURN_CODE 77)
  endif()
endif()
