# check_version (ctest): `hogrec --version` and `hogrec version` exit 0 and
# print the same text: "hogrec <project VERSION>", the git description when
# the source is a git checkout, the compiler, a line per library, and the
# update kernel variant (sgd_fast.c) with the variants this CPU runs.
#   cmake -DHOGREC_BIN=... -DVERSION=... -DSOURCE_DIR=... -P check_version.cmake
foreach(arg --version version)
  execute_process(COMMAND ${HOGREC_BIN} ${arg} OUTPUT_VARIABLE out_${arg} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "hogrec ${arg} exited ${rc}:\n${out_${arg}}")
  endif()
endforeach()
set(out "${out_--version}")
if(NOT out STREQUAL out_version)
  message(FATAL_ERROR "hogrec --version and hogrec version differ:\n${out}\n---\n${out_version}")
endif()
string(REPLACE "." "\\." v "${VERSION}")
foreach(re "^hogrec ${v}[ \n]" "\nbuilt with (gcc|clang) [0-9]" "\nlibmicrohttpd [0-9]+\\.[0-9]+"
    "\njansson [0-9]+\\.[0-9]+" "\nSQLite 3\\.[0-9]+" "\nOpenBLAS [0-9]+\\.[0-9]+"
    "\nupdate kernel (generic|avx2|avx512) \\(this CPU runs:( [a-z0-9]+)+\\)\n")
  if(NOT out MATCHES "${re}")
    message(FATAL_ERROR "hogrec --version: no match for '${re}' in:\n${out}")
  endif()
endforeach()
find_program(GIT git)
if(GIT)
  execute_process(COMMAND ${GIT} -C ${SOURCE_DIR} rev-parse --is-inside-work-tree
    OUTPUT_QUIET ERROR_QUIET RESULT_VARIABLE in_git)
  if(in_git EQUAL 0 AND NOT out MATCHES "^hogrec ${v} \\(git [0-9a-z.-]+\\)\n")
    message(FATAL_ERROR "built from a git checkout but no git description:\n${out}")
  endif()
endif()
message(STATUS "${out}")
