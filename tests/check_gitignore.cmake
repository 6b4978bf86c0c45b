# check_gitignore (ctest): the files a running hogrec writes next to its
# database (the checkpoint file, the event log, SQLite's -wal/-shm beside
# each, a lock file) and the build directories are ignored by git.
#   cmake -DSOURCE_DIR=... -P check_gitignore.cmake
find_program(GIT git)
if(GIT)
  execute_process(COMMAND ${GIT} -C ${SOURCE_DIR} rev-parse --is-inside-work-tree
    OUTPUT_QUIET ERROR_QUIET RESULT_VARIABLE in_git)
endif()
if(NOT GIT OR NOT in_git EQUAL 0)
  message("[  SKIP    ] check_gitignore.cmake:check_gitignore: not a git checkout (or no git)")
  return()
endif()
foreach(f hogrec.db hogrec.db-wal hogrec.db-shm hogrec.db-events hogrec.db-events-wal
    hogrec.db-events-shm hogrec.db-lock data/other.db-events build-x/hogrec)
  execute_process(COMMAND ${GIT} -C ${SOURCE_DIR} check-ignore -q --no-index ${f} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${f} is not ignored by .gitignore")
  endif()
endforeach()
