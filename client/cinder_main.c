/* cinder_main.c - the `cinder` program: one binary, one subcommand per job. */
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "log.h"

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} commands[] = {
    {"inspect", cmd_inspect, "describe a model file: architecture, sizes, tensors, tokenizer"},
    {"tokenize", cmd_tokenize, "print the token ids of a text"},
    {"detokenize", cmd_detokenize, "print the text of token ids"},
    {"generate", cmd_generate,
     "generate text from a prompt, in this process (CPU engine) or on a coordinator (--server)"},
#ifdef CINDER_HAVE_CLIENT
    {"status", cmd_status, "a coordinator's state: worker groups, KV blocks, queue, counters"},
    {"models", cmd_models, "the models a coordinator serves"},
#endif
    {"write-model", cmd_write_model,
     "write a random-weight Llama model of any shape (GGUF or HF folder)"},
};

static void usage(FILE *out) {
    fprintf(out, "usage: cinder COMMAND [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-12s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\n`cinder COMMAND --help` describes a command's options.\n"
                 "CINDER_LOG=error|warn|info|debug sets the log level.\n");
}

int main(int argc, char **argv) {
    log_init_from_env();
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 2, argv + 2);
    fprintf(stderr, "cinder: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
