/* cli.h - command-line options as data: one table per program (or subcommand) drives parsing,
 * validation and --help (conventions.md, habit 9).
 *
 *   double temp; int64_t n; const char *path = NULL; bool chat = false;
 *   cli_option opts[] = {
 *       {"model", CLI_STR, &path, NULL, 0, 0, "PATH", "GGUF file or HF folder", true},
 *       {"max-tokens", CLI_INT, &n, "256", 1, 1e6, "N", "tokens to generate", false},
 *       {"chat", CLI_FLAG, &chat, NULL, 0, 0, NULL, "apply the chat template", false},
 *   };
 * Options are `--name value` or `--name=value`; `--` ends them; `-h`/`--help` asks for help.
 * Defaults are written as text and parsed like user input, so --help shows them as given. */
#ifndef CINDER_CLI_H
#define CINDER_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "status.h"

typedef enum cli_type {
    CLI_STR = 0, /* dest: const char ** (points into argv or at the default) */
    CLI_INT,     /* dest: int64_t *, checked against [min, max] */
    CLI_FLOAT,   /* dest: double *, checked against [min, max] */
    CLI_FLAG,    /* dest: bool *, set to true when present */
} cli_type;

typedef struct cli_option {
    const char *name; /* without the leading "--" */
    cli_type type;
    void *dest;
    const char *def; /* default as text, or NULL (dest left as the caller set it) */
    double min, max; /* bounds for CLI_INT and CLI_FLOAT (both 0: unbounded) */
    const char *metavar;
    const char *help;
    bool required;
} cli_option;

typedef enum cli_result {
    CLI_RESULT_OK = 0,
    CLI_RESULT_HELP,  /* -h or --help was given */
    CLI_RESULT_ERROR, /* err says what was wrong */
} cli_result;

/* Parses argv[0..argc) (argv[0] is NOT skipped: pass argc - 1, argv + 1 for a program). The
 * arguments that are not options are stored in order in positional (up to max_positional);
 * *n_positional is their count. More than max_positional is an error. */
cli_result cli_parse(const cli_option *opts, int n_opts, int argc, char **argv,
                     const char **positional, int max_positional, int *n_positional,
                     cinder_error *err);

/* Prints "usage: <usage>\n\n<summary>\n\noptions:\n  --name METAVAR  help (default: X)". */
void cli_print_help(FILE *out, const char *usage, const char *summary, const cli_option *opts,
                    int n_opts);

#endif
