#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Stores text as the option's value after checking its type and bounds. */
static cli_result cli_set(const cli_option *o, const char *text, cinder_error *err) {
    bool bounded = o->min != 0 || o->max != 0;
    char *end;
    switch (o->type) {
        case CLI_STR: *(const char **)o->dest = text; return CLI_RESULT_OK;
        case CLI_FLAG: *(bool *)o->dest = true; return CLI_RESULT_OK;
        case CLI_INT: {
            errno = 0;
            long long v = strtoll(text, &end, 10);
            if (errno || end == text || *end) {
                cinder_error_set(err, CINDER_ERR_ARG, "--%s: '%s' is not an integer", o->name, text);
                return CLI_RESULT_ERROR;
            }
            if (bounded && (v < o->min || v > o->max)) {
                cinder_error_set(err, CINDER_ERR_ARG, "--%s: %lld is outside [%.17g, %.17g]",
                                 o->name, v, o->min, o->max);
                return CLI_RESULT_ERROR;
            }
            *(int64_t *)o->dest = v;
            return CLI_RESULT_OK;
        }
        case CLI_FLOAT: {
            errno = 0;
            double v = strtod(text, &end);
            if (errno || end == text || *end || !isfinite(v)) {
                cinder_error_set(err, CINDER_ERR_ARG, "--%s: '%s' is not a finite number", o->name,
                                 text);
                return CLI_RESULT_ERROR;
            }
            if (bounded && (v < o->min || v > o->max)) {
                cinder_error_set(err, CINDER_ERR_ARG, "--%s: %g is outside [%g, %g]", o->name, v,
                                 o->min, o->max);
                return CLI_RESULT_ERROR;
            }
            *(double *)o->dest = v;
            return CLI_RESULT_OK;
        }
    }
    return CLI_RESULT_ERROR;
}

cli_result cli_parse(const cli_option *opts, int n_opts, int argc, char **argv,
                     const char **positional, int max_positional, int *n_positional,
                     cinder_error *err) {
    bool seen[64] = {0};
    if (n_opts > 64) {
        cinder_error_set(err, CINDER_ERR_ARG, "too many options in the table (%d)", n_opts);
        return CLI_RESULT_ERROR;
    }
    for (int i = 0; i < n_opts; i++)
        if (opts[i].def && opts[i].type != CLI_FLAG && cli_set(&opts[i], opts[i].def, err))
            return CLI_RESULT_ERROR;
    *n_positional = 0;
    bool options_done = false;
    for (int a = 0; a < argc; a++) {
        const char *arg = argv[a];
        if (options_done || arg[0] != '-' || arg[1] == '\0') {
            if (*n_positional >= max_positional) {
                cinder_error_set(err, CINDER_ERR_ARG, "unexpected argument '%s'", arg);
                return CLI_RESULT_ERROR;
            }
            positional[(*n_positional)++] = arg;
            continue;
        }
        if (strcmp(arg, "--") == 0) {
            options_done = true;
            continue;
        }
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) return CLI_RESULT_HELP;
        if (arg[1] != '-') {
            cinder_error_set(err, CINDER_ERR_ARG, "unknown option '%s' (options are --name)", arg);
            return CLI_RESULT_ERROR;
        }
        const char *name = arg + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        int k = 0;
        while (k < n_opts && !(strlen(opts[k].name) == len && !strncmp(opts[k].name, name, len))) k++;
        if (k == n_opts) {
            cinder_error_set(err, CINDER_ERR_ARG, "unknown option '--%.*s'", (int)len, name);
            return CLI_RESULT_ERROR;
        }
        const cli_option *o = &opts[k];
        seen[k] = true;
        if (o->type == CLI_FLAG) {
            if (eq) {
                cinder_error_set(err, CINDER_ERR_ARG, "--%s takes no value", o->name);
                return CLI_RESULT_ERROR;
            }
            *(bool *)o->dest = true;
            continue;
        }
        const char *value = eq ? eq + 1 : NULL;
        if (!value) {
            if (a + 1 >= argc) {
                cinder_error_set(err, CINDER_ERR_ARG, "--%s needs a value (%s)", o->name,
                                 o->metavar ? o->metavar : "VALUE");
                return CLI_RESULT_ERROR;
            }
            value = argv[++a];
        }
        if (cli_set(o, value, err)) return CLI_RESULT_ERROR;
    }
    for (int i = 0; i < n_opts; i++)
        if (opts[i].required && !seen[i]) {
            cinder_error_set(err, CINDER_ERR_ARG, "--%s %s is required", opts[i].name,
                             opts[i].metavar ? opts[i].metavar : "VALUE");
            return CLI_RESULT_ERROR;
        }
    return CLI_RESULT_OK;
}

void cli_print_help(FILE *out, const char *usage, const char *summary, const cli_option *opts,
                    int n_opts) {
    fprintf(out, "usage: %s\n\n%s\n", usage, summary);
    if (n_opts) fprintf(out, "\noptions:\n");
    for (int i = 0; i < n_opts; i++) {
        char left[64];
        snprintf(left, sizeof left, "--%s%s%s", opts[i].name, opts[i].metavar ? " " : "",
                 opts[i].metavar ? opts[i].metavar : "");
        fprintf(out, "  %-24s %s", left, opts[i].help);
        if (opts[i].required) fprintf(out, " (required)");
        else if (opts[i].def) fprintf(out, " (default: %s)", opts[i].def);
        fputc('\n', out);
    }
    fprintf(out, "  %-24s %s\n", "-h, --help", "show this help");
}
