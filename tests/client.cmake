# Clients: libcinder-client, `cinder generate --server` / `status` / `models`, the Python client,
# against a stand-in coordinator (always) and against a real coordinator + worker group started
# by tests/cluster/cluster.py (skipped, exit 77, without the model file or the programs).
if(TARGET cinder_client)
  # Not a ctest of its own (it needs a server): the scripts below run it against one. Linked
  # to the shared libcinder-client, so that its exports are what is tested.
  add_executable(test_client test_client.c)
  target_link_libraries(test_client PRIVATE cinder_client_shared)
  target_include_directories(test_client PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})

  # The Python client's cinder_pb2.py, generated from proto/cinder.proto (never committed).
  find_program(PROTOC protoc)
  # A Python that has pyzmq and protobuf (Debian's python3-zmq/python3-protobuf live under
  # /usr/bin/python3, which a pyenv or venv python3 earlier on PATH does not see).
  if(NOT CINDER_PYTHON)
    foreach(py python3 /usr/bin/python3)
      find_program(_py NAMES ${py} NO_CACHE)
      if(_py)
        execute_process(COMMAND ${_py} -c "import zmq, google.protobuf"
                        RESULT_VARIABLE _py_rc OUTPUT_QUIET ERROR_QUIET)
        if(_py_rc EQUAL 0)
          set(CINDER_PYTHON ${_py} CACHE FILEPATH "Python with pyzmq and protobuf (client tests)")
          break()
        endif()
      endif()
      unset(_py)
    endforeach()
  endif()
  if(PROTOC AND CINDER_PYTHON)
    set(CINDER_PB2_DIR ${PROJECT_BINARY_DIR}/python)
    add_custom_command(
      OUTPUT ${CINDER_PB2_DIR}/cinder_pb2.py
      COMMAND ${CMAKE_COMMAND} -E make_directory ${CINDER_PB2_DIR}
      COMMAND ${PROTOC} --proto_path=${PROJECT_SOURCE_DIR}/proto --python_out=${CINDER_PB2_DIR}
              ${PROJECT_SOURCE_DIR}/proto/cinder.proto
      DEPENDS ${PROJECT_SOURCE_DIR}/proto/cinder.proto
      COMMENT "protoc --python_out cinder.proto"
      VERBATIM)
    add_custom_target(cinder_python_proto ALL DEPENDS ${CINDER_PB2_DIR}/cinder_pb2.py)

    set(CINDER_PY_ENV
      "PYTHONPATH=${PROJECT_SOURCE_DIR}/client/python:${CMAKE_CURRENT_SOURCE_DIR}/cluster"
      "CINDER_PB2_DIR=${CINDER_PB2_DIR}"
      "CINDER_BUILD=${PROJECT_BINARY_DIR}"
      "CINDER_MODEL=${CINDER_DEFAULT_MODEL}")
    add_test(NAME test_client_mock
             COMMAND ${CINDER_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/test_client_mock.py
                     $<TARGET_FILE:cinder> $<TARGET_FILE:test_client>)
    add_test(NAME test_client_cluster
             COMMAND ${CINDER_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/test_client_cluster.py
                     $<TARGET_FILE:cinder> $<TARGET_FILE:test_client>)
    add_test(NAME test_python_client
             COMMAND ${CINDER_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/test_python_client.py)
    set_tests_properties(test_client_mock test_client_cluster test_python_client PROPERTIES
      ENVIRONMENT "${CINDER_PY_ENV}" SKIP_RETURN_CODE 77)
    set_tests_properties(test_client_mock PROPERTIES LABELS "sanitize")
    # Real clusters: one at a time, they share two cores with everything else.
    set_tests_properties(test_client_cluster test_python_client PROPERTIES
      RESOURCE_LOCK cinder_cluster LABELS cluster TIMEOUT 900)
  else()
    message(STATUS "cinder: protoc or a Python with pyzmq + protobuf not found - client tests off "
                   "(scripts/install-deps.sh installs them)")
  endif()
endif()
