# The scripts and the `cinder` program, run as a user would.
add_test(NAME test_fetch_model
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/test_fetch_model.sh ${PROJECT_SOURCE_DIR}
                 ${CINDER_DEFAULT_MODEL})
