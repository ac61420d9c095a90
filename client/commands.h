/* commands.h - the subcommands of the `cinder` program, each `int cmd_X(int argc, char **argv)`
 * taking the arguments after its name and returning the process exit status. */
#ifndef CINDER_COMMANDS_H
#define CINDER_COMMANDS_H

int cmd_inspect(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_write_model(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_models(int argc, char **argv);

#include <stdbool.h>
#include <stdint.h>

/* `cinder generate`'s options: local generation (--model) or through a coordinator
 * (--server, cmd_remote.c). */
typedef struct gen_args {
    const char *model, *prompt, *system, *stop, *server, *device, *kv_type;
    bool chat, f32, ignore_eos, no_stream_stats;
    int64_t max_tokens, top_k, seed, threads, block_size, kv_blocks, timeout_ms, gpu;
    double temperature, top_p, min_p, repeat_penalty;
} gen_args;

/* `cinder generate --server`: streams the answer of a coordinator; the exit status. */
int generate_remote(const gen_args *a);

#endif
