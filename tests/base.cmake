# Shared pieces: errors, option tables, half floats, dequantization.
cinder_add_test(test_base SOURCES test_base.c LIBS cinder_base)
set_tests_properties(test_base PROPERTIES LABELS "sanitize")
