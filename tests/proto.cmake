# The wire protocol: round trips of every message, validation that names the field, fuzzing.
if(TARGET cinder_proto)
  cinder_add_test(test_proto SOURCES test_proto.c LIBS cinder_proto)
  set_tests_properties(test_proto PROPERTIES LABELS "sanitize")
endif()
