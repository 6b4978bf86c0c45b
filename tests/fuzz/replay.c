/*
 * replay.c - runs a fuzz harness over its corpus without libFuzzer: the
 * main() of the ctest tests fuzz_<name>, so every seed and every input that
 * once crashed is a regression test of every build (gcc, ASan, TSan).
 *
 *   fuzz_replay_<name> [--shared RELPATH]... DIR_OR_FILE...
 *
 * Each file (the files of a directory in name order, not recursing) is read
 * into a buffer of exactly its size and passed to LLVMFuzzerTestOneInput. A
 * --shared path is looked up under $HOGREC_SHARED_DATA, then under
 * $HOGREC_SOURCE_DIR/../shared/data, and skipped (saying so) when absent.
 * Exits non-zero if a path cannot be read or no input was run; a failing
 * input aborts inside the harness.
 */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

/* Reads path into a new buffer of exactly its size; NULL on error. */
static uint8_t *read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    uint8_t *buf = NULL;
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && st.st_size >= 0) {
        *size = (size_t)st.st_size;
        buf = malloc(*size ? *size : 1);
        if (buf && fread(buf, 1, *size, f) != *size) {
            free(buf);
            buf = NULL;
        }
    }
    fclose(f);
    return buf;
}

static int run_file(const char *path)
{
    size_t size;
    uint8_t *data = read_file(path, &size);
    if (!data) {
        fprintf(stderr, "cannot read %s\n", path);
        return -1;
    }
    fprintf(stderr, "%s\n", path); /* names the input that fails */
    LLVMFuzzerTestOneInput(data, size);
    free(data);
    return 1;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Runs every regular file of dir; returns how many, or -1. */
static int run_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "cannot open %s\n", dir);
        return -1;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            char **grown = realloc(names, cap * sizeof *names);
            if (!grown)
                abort();
            names = grown;
        }
        names[n] = malloc(strlen(dir) + strlen(e->d_name) + 2);
        if (!names[n])
            abort();
        sprintf(names[n++], "%s/%s", dir, e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, by_name);
    int count = 0;
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        if (count >= 0 && stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) {
            int r = run_file(names[i]);
            count = r < 0 ? -1 : count + r;
        }
        free(names[i]);
    }
    free(names);
    return count;
}

static int run_path(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "cannot find %s\n", path);
        return -1;
    }
    return S_ISDIR(st.st_mode) ? run_dir(path) : run_file(path);
}

/* The shared data path of rel, or NULL when absent; *buf holds it. */
static const char *shared_path(const char *rel, char *buf, size_t size)
{
    const char *env = getenv("HOGREC_SHARED_DATA"), *src = getenv("HOGREC_SOURCE_DIR");
    struct stat st;
    if (env && *env && (size_t)snprintf(buf, size, "%s/%s", env, rel) < size &&
        stat(buf, &st) == 0)
        return buf;
    if (src && *src && (size_t)snprintf(buf, size, "%s/../shared/data/%s", src, rel) < size &&
        stat(buf, &st) == 0)
        return buf;
    return NULL;
}

int main(int argc, char **argv)
{
    long total = 0;
    for (int i = 1; i < argc; i++) {
        const char *path = argv[i];
        char buf[4096];
        if (strcmp(argv[i], "--shared") == 0 && i + 1 < argc) {
            path = shared_path(argv[++i], buf, sizeof buf);
            if (!path) {
                printf("skipped: %s not found under $HOGREC_SHARED_DATA or ../shared/data\n",
                       argv[i]);
                continue;
            }
        }
        int n = run_path(path);
        if (n < 0)
            return 1;
        printf("%d inputs from %s\n", n, path);
        total += n;
    }
    if (total == 0) {
        fprintf(stderr, "no input was run\n");
        return 1;
    }
    printf("%ld inputs, no failure\n", total);
    return 0;
}
