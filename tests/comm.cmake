# The communicators (comm/): the single rank, the wrappers' misuse aborts and the check macro;
# MPI on real ranks under mpirun, 2 and 3 of them (plus the one-rank singleton run).
cinder_add_test(test_comm_single SOURCES test_comm_single.c LIBS cinder_comm)
set_tests_properties(test_comm_single PROPERTIES LABELS "sanitize")

if(CINDER_MPI)
  # test_comm_mpi alone: a one-rank MPI job (singleton init, no mpirun).
  cinder_add_test(test_comm_mpi SOURCES test_comm_mpi.c LIBS cinder_comm)
  set(comm_mpi_tests test_comm_mpi)
  foreach(np 2 3)
    add_test(NAME test_comm_mpi_np${np}
             COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/comm_mpirun.sh "${MPIEXEC_EXECUTABLE}" ${np}
                     $<TARGET_FILE:test_comm_mpi>)
    set_tests_properties(test_comm_mpi_np${np} PROPERTIES SKIP_RETURN_CODE 77 PROCESSORS ${np})
    list(APPEND comm_mpi_tests test_comm_mpi_np${np})
  endforeach()
  # A hung collective fails after the timeout instead of holding the run. Under ASan, Open MPI's
  # own never-freed memory is suppressed (comm_lsan.supp) so that cinder's leaks still count.
  set_tests_properties(${comm_mpi_tests} PROPERTIES TIMEOUT 300 LABELS "sanitize")
  if(CINDER_SANITIZE)
    set_tests_properties(${comm_mpi_tests} PROPERTIES ENVIRONMENT
      "OMPI_MCA_mca_base_component_disable_dlclose=1;ASAN_OPTIONS=detect_leaks=1:fast_unwind_on_malloc=0;LSAN_OPTIONS=suppressions=${CMAKE_CURRENT_SOURCE_DIR}/comm_lsan.supp:print_suppressions=0")
  endif()
endif()

# The NCCL communicator on one GPU (tests/gpu/run.sh runs it; not a CPU ctest): built with
# -DCINDER_GPU_TESTS=ON where NCCL is found. Exits 77 without a GPU.
if(CINDER_GPU_TESTS AND CINDER_NCCL)
  add_executable(test_comm_nccl gpu/test_comm_nccl.c)
  target_link_libraries(test_comm_nccl PRIVATE cinder_comm CUDA::cudart)
  target_include_directories(test_comm_nccl PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
endif()
