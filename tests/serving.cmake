# Serving against a real cluster (cinder-coordinator + mpirun cinder-worker, the real model):
# continuous batching equal to alone, prefix cache, preemption, cancel/timeout/disconnect, bad
# input, a worker started without mpirun, clients that outlive a coordinator restart, an F16 KV
# cache (--kv-type) and the refusals around it, static batches (--no-continuous-batching). One ctest per scenario; skipped (77) without the
# model or the programs (one-rank groups start without mpirun where it is not installed).
if(CINDER_PY_ENV AND TARGET cinder-coordinator AND TARGET cinder-worker)
  foreach(scenario concurrency prefix preemption lifecycle bad_input failover no_mpirun restart
                   kv_type kv_type_errors static)
    add_test(NAME test_serving_${scenario}
             COMMAND ${CINDER_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/cluster/test_serving.py
                     ${CINDER_DEFAULT_MODEL} ${scenario})
    set_tests_properties(test_serving_${scenario} PROPERTIES
      ENVIRONMENT "${CINDER_PY_ENV}" SKIP_RETURN_CODE 77 RESOURCE_LOCK cinder_cluster
      LABELS cluster TIMEOUT 900)
  endforeach()
  # The coordinator's handling of bad input, cancel, timeout and disconnects again under ASan +
  # UBSan (scripts/test.sh points CINDER_WORKER_BIN at the optimized build's worker).
  set_tests_properties(test_serving_bad_input test_serving_lifecycle test_serving_preemption
                       test_serving_kv_type_errors test_serving_static
                       PROPERTIES LABELS "cluster;sanitize")
endif()

# cinder-worker's refusals, checked without a coordinator: an unknown --device; --device cuda
# in a build without CUDA or on a machine without a GPU (a clear message, exit 1, at once); a
# build without MPI started as one of several mpirun ranks.
if(TARGET cinder-worker)
  if(CINDER_MPI)
    set(_worker_mpi mpi)
  else()
    set(_worker_mpi nompi)
  endif()
  add_test(NAME test_worker_cli
           COMMAND python3 ${CMAKE_CURRENT_SOURCE_DIR}/test_worker_cli.py
                   $<TARGET_FILE:cinder-worker> ${_worker_mpi})
  set_tests_properties(test_worker_cli PROPERTIES TIMEOUT 60)
endif()
