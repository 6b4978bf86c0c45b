/*
 * main.c - the hogrec command: dispatches to a subcommand.
 *   hogrec serve  [options]        the HTTP server (serve.c, http.c)
 *   hogrec replay [options] FILE   offline training from a file (replay.c)
 *   hogrec version | --version     version, build and libraries (version.c)
 */
#include <stdio.h>
#include <string.h>

#include "hogrec/replay.h"
#include "hogrec/serve.h"
#include "hogrec/topk.h"
#include "hogrec/version.h"

static int usage(FILE *out)
{
    fprintf(out, "usage: hogrec serve [options]       run the server (--help for options)\n"
                 "       hogrec replay [options] FILE train from a file, print a JSON summary\n"
                 "       hogrec --version             version, compiler and library versions\n");
    return out == stdout ? 0 : 2;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage(stderr);
    if (strcmp(argv[1], "serve") == 0) {
        hr_topk_select_blas(argv);
        return hr_serve_main(argc - 1, argv + 1);
    }
    if (strcmp(argv[1], "replay") == 0)
        return hr_replay_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
        hr_version_print(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)
        return usage(stdout);
    fprintf(stderr, "hogrec: unknown command '%s'\n", argv[1]);
    return usage(stderr);
}
