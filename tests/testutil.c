/* testutil.c - see testutil.h. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *tu_shared_data(const char *relpath)
{
    static char path[4096];
    const char *env = getenv("HOGREC_SHARED_DATA");
    const char *src = getenv("HOGREC_SOURCE_DIR");
    if (env && *env) {
        snprintf(path, sizeof path, "%s/%s", env, relpath);
        return access(path, R_OK) == 0 ? path : NULL;
    }
    if (src && *src) {
        snprintf(path, sizeof path, "%s/../shared/data/%s", src, relpath);
        if (access(path, R_OK) == 0)
            return path;
    }
    return NULL;
}

const char *tu_tmpdir(void)
{
    static char path[256];
    const char *base = getenv("TMPDIR");
    snprintf(path, sizeof path, "%s/hogrec-test-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(path)) {
        perror("mkdtemp");
        abort();
    }
    return path;
}

void tu_rmtree(const char *path)
{
    char cmd[4352];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0)
        fprintf(stderr, "warning: could not remove %s\n", path);
}

void tu_skip_marker(const char *file, const char *func)
{
    const char *base = strrchr(file, '/');
    print_message(TU_SKIP_MARKER "%s:%s: ", base ? base + 1 : file, func);
}

__attribute__((constructor)) static void tu_select_tests(void)
{
    const char *only = getenv("HOGREC_TEST_FILTER");
    const char *leave = getenv("HOGREC_TEST_SKIP_FILTER");
    if (only && *only)
        cmocka_set_test_filter(only);
    if (leave && *leave)
        cmocka_set_skip_filter(leave);
}
