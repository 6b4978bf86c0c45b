/*
 * version.h - what this binary is: hogrec's version (CMake project VERSION),
 * the git commit it was built from (`git describe` at build time, when the
 * source was a git checkout), the compiler, and the versions of the libraries
 * it runs with (as loaded at run time). `hogrec --version` prints it.
 */
#ifndef HOGREC_VERSION_H
#define HOGREC_VERSION_H

#include <stdio.h>

/* The version, e.g. "0.1.0"; a static string. */
const char *hr_version_string(void);

/* Prints the version, build and library lines to out. Any thread. */
void hr_version_print(FILE *out);

#endif
