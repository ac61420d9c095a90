# The kernel layer: every CPU op against double-precision references, every SIMD level this
# CPU has (and the AVX-512 code under emulation where SIMDe is installed), thread counts.
cinder_add_test(test_kernels_cpu SOURCES test_kernels_cpu.c LIBS cinder_kernels)
target_include_directories(test_kernels_cpu PRIVATE ${PROJECT_SOURCE_DIR}/kernels/cpu)
set_tests_properties(test_kernels_cpu PROPERTIES LABELS "sanitize")
if(CINDER_KERNELS_EMULATED)
  cinder_add_test(test_kernels_avx512_emulated SOURCES test_kernels_cpu.c
                  LIBS cinder_kernels_avx512_emulated)
  target_compile_definitions(test_kernels_avx512_emulated PRIVATE TEST_AVX512_EMULATED)
  target_include_directories(test_kernels_avx512_emulated PRIVATE ${PROJECT_SOURCE_DIR}/kernels/cpu)
endif()
