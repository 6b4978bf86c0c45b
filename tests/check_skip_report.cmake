# check_skip_report (ctest): a test that skips says so where ctest and
# tools/test can see it. Runs the MovieLens case of test_replay alone (as its
# ctest entry does) with the shared data made absent, then checks that its
# output matches the SKIP_REGULAR_EXPRESSION its ctest entry has, and that
# tools/skipped counts it with its reason.
#   cmake -DTEST_BIN=... -DSKIP_REGEX=... -DSOURCE_DIR=... -DWORK_DIR=... -P check_skip_report.cmake
file(MAKE_DIRECTORY ${WORK_DIR})
set(ENV{HOGREC_SHARED_DATA} ${WORK_DIR}/no-such-dir)
set(ENV{HOGREC_TEST_FILTER} test_movielens_quality)
execute_process(COMMAND ${TEST_BIN} OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "test_replay exited ${rc}: ${out}${err}")
endif()
if(NOT out MATCHES "Running 1 test")
  message(FATAL_ERROR "HOGREC_TEST_FILTER did not select one test:\n${out}")
endif()
if(NOT out MATCHES "${SKIP_REGEX}")
  message(FATAL_ERROR "the skip is not marked (ctest would report it as passed):\n${out}")
endif()
file(WRITE ${WORK_DIR}/output.log "${out}")
execute_process(COMMAND ${SOURCE_DIR}/tools/skipped plain=${WORK_DIR}/output.log
  OUTPUT_VARIABLE report RESULT_VARIABLE rc)
if(NOT rc EQUAL 0 OR NOT report MATCHES "skipped: 1 test\\(s\\)\n  plain: test_replay.c:test_movielens_quality: ml-100k[^\n]*not found")
  message(FATAL_ERROR "tools/skipped did not report the skip and its reason:\n${report}")
endif()
message(STATUS "reported: ${report}")
