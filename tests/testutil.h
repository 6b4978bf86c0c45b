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

/* Path of a file under the shared data folder (../shared/data next to the
 * source tree, or $HOGREC_SHARED_DATA), or NULL if absent. Returns a static
 * buffer. Tests that need it skip, saying so, when it is NULL. */
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

/* Prints a line saying why a test skips, then calls cmocka's skip(). */
#define TU_SKIP(...)                                                           \
    do {                                                                       \
        print_message("[  SKIP    ] " __VA_ARGS__);                            \
        print_message("\n");                                                   \
        skip();                                                                \
    } while (0)

#endif
