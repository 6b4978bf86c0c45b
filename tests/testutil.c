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
        if (access(path, R_OK) == 0)
            return path;
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
