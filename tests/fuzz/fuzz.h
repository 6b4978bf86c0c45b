/*
 * fuzz.h - what every harness in tests/fuzz shares.
 *
 * A harness is one file fuzz_<name>.c that defines LLVMFuzzerTestOneInput
 * (nothing else: no LLVMFuzzerInitialize, no custom mutator), built with
 * fuzz_common.c (the helpers below). It is linked twice: with libFuzzer (HOGREC_FUZZ builds, tools/fuzz) and with replay.c,
 * a plain main() that feeds it every file of its corpus, which every test
 * build runs as the ctest test fuzz_<name>. A harness checks the contract of
 * the code it drives with FUZZ_CHECK, so a wrong answer is a crash like any
 * memory error; it must not keep state from one input to the next.
 */
#ifndef HOGREC_FUZZ_H
#define HOGREC_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "hogrec/model.h"

/* Runs one input (data is borrowed); always returns 0. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Aborts, naming the check, when cond is false. */
#define FUZZ_CHECK(cond)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);       \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

/* A fresh model of 16 users, 16 items and 16 context rows, k 4, the
 * default schedule; loss "logistic" or "squared" (NULL: the default). New
 * (hr_model_destroy); a failure to build it is a check failure. */
hr_model *fuzz_small_model(const char *loss);

#endif
