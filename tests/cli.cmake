# The scripts and the `cinder` program, run as a user would.
add_test(NAME test_fetch_model
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/test_fetch_model.sh ${PROJECT_SOURCE_DIR}
                 ${CINDER_DEFAULT_MODEL})
add_test(NAME test_cli
         COMMAND python3 ${CMAKE_CURRENT_SOURCE_DIR}/test_cli.py $<TARGET_FILE:cinder>
                 ${CINDER_DEFAULT_MODEL} ${CMAKE_CURRENT_SOURCE_DIR}/data/tokenizer)
set_tests_properties(test_cli PROPERTIES SKIP_RETURN_CODE 77)
