/*
 * bench_machine.c - see bench_machine.h.
 */
#include "bench_machine.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

void bench_cpu_model(char *out, size_t cap)
{
    snprintf(out, cap, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "model name", 10) == 0) {
            char *c = strchr(line, ':');
            if (c) {
                snprintf(out, cap, "%.200s", c + 2);
                out[strcspn(out, "\n")] = 0;
            }
            break;
        }
    fclose(f);
}

void bench_print_machine(void)
{
    char model[256];
    bench_cpu_model(model, sizeof model);
    printf("machine: %ld cpus, %s\n", sysconf(_SC_NPROCESSORS_ONLN), model);
}
