/*
 * version.c - see version.h. The version and the git description come from
 * a header the build writes (cmake/version.cmake); the compiler from its own
 * macros; the library versions from the libraries themselves at run time (the
 * shared library loaded can differ from the header compiled against).
 */
#include "hogrec/version.h"

#include <cblas.h>
#include <jansson.h>
#include <microhttpd.h>
#include <sqlite3.h>

#include "hogrec/sgd.h"
#include "hogrec_version_gen.h"

#define STR_(x) #x
#define STR(x) STR_(x)
#if defined(__clang__)
#define COMPILER "clang " STR(__clang_major__) "." STR(__clang_minor__) "." STR(__clang_patchlevel__)
#elif defined(__GNUC__)
#define COMPILER "gcc " __VERSION__
#else
#define COMPILER "unknown compiler"
#endif

#if defined(__SANITIZE_ADDRESS__)
#define SANITIZERS ", AddressSanitizer"
#elif defined(__SANITIZE_THREAD__)
#define SANITIZERS ", ThreadSanitizer"
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZERS ", AddressSanitizer"
#elif __has_feature(thread_sanitizer)
#define SANITIZERS ", ThreadSanitizer"
#endif
#endif
#ifndef SANITIZERS
#define SANITIZERS ""
#endif

const char *hr_version_string(void)
{
    return HOGREC_VERSION;
}

void hr_version_print(FILE *out)
{
    fprintf(out, "hogrec %s", HOGREC_VERSION);
    if (HOGREC_GIT_DESCRIBE[0])
        fprintf(out, " (git %s)", HOGREC_GIT_DESCRIBE);
    fprintf(out, "\nbuilt with %s, %s%s\n", COMPILER, HOGREC_BUILD_TYPE, SANITIZERS);
    fprintf(out, "libmicrohttpd %s\n", MHD_get_version());
    fprintf(out, "jansson %s\n", jansson_version_str());
    fprintf(out, "SQLite %s\n", sqlite3_libversion());
    fprintf(out, "%s\n", openblas_get_config()); /* version, build options, kernel */
    char runs[64];
    hr_sgd_kernel_list(runs, sizeof runs);
    fprintf(out, "update kernel %s (this CPU runs: %s)\n", hr_sgd_kernel_name(), runs);
}
