/*
 * bench_machine.h - what every benchmark prints first: the machine it ran
 * on (CPU count and model), so its figures are read against it.
 */
#ifndef HOGREC_BENCH_MACHINE_H
#define HOGREC_BENCH_MACHINE_H

#include <stddef.h>

/* The CPU model from /proc/cpuinfo ("model name"), or "unknown", into out
 * (cap bytes, NUL-terminated). */
void bench_cpu_model(char *out, size_t cap);

/* Prints "machine: N cpus, MODEL" and a newline on stdout. */
void bench_print_machine(void);

#endif
