/*
 * testutil.h - helpers shared by the cmocka tests.
 */
#ifndef HOGREC_TESTUTIL_H
#define HOGREC_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

/* Path of a file under the shared data folder, or NULL if absent: under
 * $HOGREC_SHARED_DATA when that is set (and only there), else under
 * ../shared/data next to the source tree. Returns a static buffer. Tests that
 * need it skip, saying so, when it is NULL. */
const char *tu_shared_data(const char *relpath);

/* Creates a fresh temporary directory; returns a static buffer. */
const char *tu_tmpdir(void);

/* Removes a directory tree (best effort). */
void tu_rmtree(const char *path);

/* Runs fn(arg) in a forked child and reports whether it returned (the child
 * exits 0) within `seconds`, a generous bound for code that must end on any
 * input; a child still running then is killed. Assert on the result, then
 * call fn again in the test process to check what it computed. */
int tu_terminates(void (*fn)(void *), void *arg, unsigned seconds);


/* Prints the skip marker line, then calls cmocka's skip(). The line is
 *   [  SKIP    ] <file>:<test function>: <reason>
 * tests/CMakeLists.txt marks a ctest entry that prints it as skipped
 * (SKIP_REGULAR_EXPRESSION) and tools/skipped lists the reasons. The reason
 * is printf-style. */
#define TU_SKIP_MARKER "[  SKIP    ] "
#define TU_SKIP(...)                                                           \
    do {                                                                       \
        tu_skip_marker(__FILE__, __func__);                                    \
        print_message(__VA_ARGS__);                                            \
        print_message("\n");                                                   \
        skip();                                                                \
    } while (0)

/* Prints the start of the skip marker line (TU_SKIP). */
void tu_skip_marker(const char *file, const char *func);

/* Test selection from the environment, applied before main() runs (so every
 * test program gets it without code of its own):
 *   HOGREC_TEST_FILTER=name       run only the cmocka tests matching name
 *   HOGREC_TEST_SKIP_FILTER=name  leave out the tests matching name
 * (cmocka patterns: '*' and '?'). tests/CMakeLists.txt uses them to run a
 * test that may skip as a ctest entry of its own. */

#endif
