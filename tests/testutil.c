/* testutil.c - see testutil.h. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
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

int tu_terminates(void (*fn)(void *), void *arg, unsigned seconds)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        abort();
    }
    if (pid == 0) {
        fn(arg);
        _exit(0);
    }
    int status = 0;
    for (unsigned i = 0; i < seconds * 20u; i++) { /* polls every 50 ms */
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            return WIFEXITED(status) && WEXITSTATUS(status) == 0;
        nanosleep(&(struct timespec){0, 50000000L}, NULL);
    }
    fprintf(stderr, "tu_terminates: still running after %u s; killing it\n", seconds);
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return 0;
}
