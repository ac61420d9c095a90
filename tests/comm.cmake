# The communicators (comm/): the single rank, the wrappers' misuse aborts and the check macro;
# MPI on real ranks under mpirun, 2 and 3 of them (plus the one-rank singleton run).
cinder_add_test(test_comm_single SOURCES test_comm_single.c LIBS cinder_comm)
set_tests_properties(test_comm_single PROPERTIES LABELS "sanitize")

if(CINDER_MPI)
  # test_comm_mpi alone: a one-rank MPI job (singleton init, no mpirun).
  cinder_add_test(test_comm_mpi SOURCES test_comm_mpi.c LIBS cinder_comm)
  set_tests_properties(test_comm_mpi PROPERTIES TIMEOUT 300)
  foreach(np 2 3)
    add_test(NAME test_comm_mpi_np${np}
             COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/comm_mpirun.sh "${MPIEXEC_EXECUTABLE}" ${np}
                     $<TARGET_FILE:test_comm_mpi>)
    # A hung collective fails after the timeout instead of holding the run.
    set_tests_properties(test_comm_mpi_np${np} PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300
                         PROCESSORS ${np})
  endforeach()
endif()
