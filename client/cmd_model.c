/* cmd_model.c - subcommands that read a model file: inspect, tokenize, detokenize. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "model.h"
#include "tokenizer.h"

#define N_OPTS(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* Parses a subcommand's options. Returns -1 to go on, else the exit status (0 after --help). */
static int cmd_parse(const char *usage, const char *summary, const cli_option *opts, int n_opts,
                     int argc, char **argv, const char **pos, int max_pos, int *n_pos) {
    cinder_error err = {0};
    switch (cli_parse(opts, n_opts, argc, argv, pos, max_pos, n_pos, &err)) {
        case CLI_RESULT_OK: return -1;
        case CLI_RESULT_HELP: cli_print_help(stdout, usage, summary, opts, n_opts); return 0;
        case CLI_RESULT_ERROR: break;
    }
    fprintf(stderr, "cinder: %s\nusage: %s\n", err.msg, usage);
    return 2;
}

static model *cmd_open_model(const char *path) {
    cinder_error err = {0};
    model *m = model_open(path, &err);
    if (!m) fprintf(stderr, "cinder: cannot load model: %s\n", err.msg);
    return m;
}

static const char *yes_no(bool b) {
    return b ? "yes" : "no";
}

static const char *rope_scaling_name(rope_scaling_type t) {
    static const char *names[] = {"none", "linear", "dynamic", "llama3", "yarn"};
    return (unsigned)t < 5 ? names[t] : "?";
}

/* Prints a token's text with control characters escaped. */
static void print_token(FILE *out, const tokenizer *t, int32_t id) {
    const char *s = id >= 0 ? tok_token_text(t, id) : NULL;
    if (!s) {
        fprintf(out, "none");
        return;
    }
    fprintf(out, "%d '", id);
    for (; *s; s++) {
        if ((unsigned char)*s < 0x20) fprintf(out, "\\x%02x", (unsigned char)*s);
        else fputc(*s, out);
    }
    fputc('\'', out);
}

static void inspect_tokenizer(const tokenizer *t) {
    static const char *chat_names[] = {"none", "chatml", "llama3"};
    printf("tokenizer:\n");
    printf("  vocab            %d\n", tok_vocab_size(t));
    printf("  pre-tokenizer    %s\n", tok_pre_name(t));
    printf("  bos              ");
    print_token(stdout, t, tok_bos(t));
    printf(" (added to prompts: %s)\n", yes_no(tok_add_bos(t)));
    printf("  eos              ");
    print_token(stdout, t, tok_eos(t));
    printf("\n  stop ids        ");
    int32_t stops[16];
    int n = tok_stop_ids(t, stops, 16);
    for (int i = 0; i < n; i++) printf(" %d", stops[i]);
    chat_format cf = tok_chat_format(t);
    printf("\n  chat template    %s\n", (unsigned)cf < 3 ? chat_names[cf] : "?");
}

int cmd_inspect(int argc, char **argv) {
    const char *path = NULL;
    bool list = false;
    cli_option opts[] = {
        {"model", CLI_STR, &path, NULL, 0, 0, "PATH", "GGUF file or Hugging Face folder", true},
        {"tensors", CLI_FLAG, &list, NULL, 0, 0, NULL, "list every tensor", false},
    };
    const char *pos[1];
    int n_pos, rc = cmd_parse("cinder inspect --model PATH [--tensors]",
                              "Describes a model: architecture, sizes, tensor types, tokenizer.",
                              opts, N_OPTS(opts), argc, argv, pos, 0, &n_pos);
    if (rc >= 0) return rc;
    model *m = cmd_open_model(path);
    if (!m) return 1;
    const model_config *c = &m->config;
    printf("model: %s\n", m->path);
    printf("  format           %s\n", m->format == MODEL_FORMAT_GGUF ? "gguf" : "hugging face");
    printf("  name             %s\n", c->name[0] ? c->name : "-");
    printf("  architecture     %s (%s)\n", model_arch_name(c->arch), c->arch_name);
    printf("  layers           %d\n", c->n_layers);
    printf("  hidden size      %d\n", c->d_model);
    printf("  heads            %d (KV heads %d, head dim %d)\n", c->n_heads, c->n_kv_heads,
           c->head_dim);
    printf("  feed-forward     %d\n", c->d_ff);
    printf("  vocab            %d\n", c->vocab_size);
    printf("  context          %d\n", c->context_len);
    printf("  rms norm eps     %g\n", c->norm_eps);
    printf("  rope             theta %g, %d dims, %s pairs, scaling %s", c->rope_theta, c->rope_dim,
           c->rope_layout == ROPE_LAYOUT_INTERLEAVED ? "interleaved" : "half-split",
           rope_scaling_name(c->rope_scaling));
    if (c->rope_scaling != ROPE_SCALING_NONE) printf(" x%g", c->rope_scaling_factor);
    printf("\n  tied embeddings  %s\n", yes_no(c->tied_embeddings));
    if (c->sliding_window) printf("  sliding window   %d\n", c->sliding_window);
    if (c->n_experts) printf("  experts          %d (top %d)\n", c->n_experts, c->n_experts_used);

    int64_t params = 0, count[DTYPE_COUNT] = {0};
    size_t bytes[DTYPE_COUNT] = {0}, total = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const model_tensor *t = &m->tensors[i];
        params += model_tensor_numel(t);
        count[t->type]++;
        bytes[t->type] += t->nbytes;
        total += t->nbytes;
    }
    printf("tensors: %d, %.1f M parameters, %.1f MiB\n", m->n_tensors, params / 1e6,
           total / 1048576.0);
    for (int k = 0; k < DTYPE_COUNT; k++)
        if (count[k])
            printf("  %-5s %4lld tensors  %9.1f MiB\n", dtype_name((dtype)k),
                   (long long)count[k], bytes[k] / 1048576.0);
    if (list)
        for (int i = 0; i < m->n_tensors; i++) {
            const model_tensor *t = &m->tensors[i];
            printf("  %-40s %-5s [", t->name, dtype_name(t->type));
            for (int d = 0; d < t->n_dims; d++) printf("%s%lld", d ? ", " : "", (long long)t->shape[d]);
            printf("]\n");
        }
    if (m->tok) inspect_tokenizer(m->tok);
    else printf("tokenizer: none\n");
    model_free(m);
    return 0;
}

/* Reads all of stdin into a malloc'd buffer. */
static char *read_stdin(size_t *len) {
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    for (size_t got; buf && (got = fread(buf + n, 1, cap - n, stdin)) > 0;) {
        n += got;
        if (n == cap) {
            char *p = realloc(buf, cap *= 2);
            if (!p) free(buf);
            buf = p;
        }
    }
    *len = n;
    return buf;
}

int cmd_tokenize(int argc, char **argv) {
    const char *path = NULL;
    bool chat = false, no_special = false, no_bos = false;
    cli_option opts[] = {
        {"model", CLI_STR, &path, NULL, 0, 0, "PATH", "GGUF file or Hugging Face folder", true},
        {"chat", CLI_FLAG, &chat, NULL, 0, 0, NULL,
         "TEXT is one user message, put in the model's chat template", false},
        {"no-special", CLI_FLAG, &no_special, NULL, 0, 0, NULL,
         "treat special-token text (<|im_start|>) as plain text", false},
        {"no-bos", CLI_FLAG, &no_bos, NULL, 0, 0, NULL,
         "never prepend BOS (by default the tokenizer's own setting decides)", false},
    };
    const char *usage = "cinder tokenize --model PATH [--chat] [--no-special] [--no-bos] [TEXT]";
    const char *pos[1];
    int n_pos, rc = cmd_parse(usage,
                              "Prints the token ids of TEXT (or of standard input when TEXT is "
                              "absent), separated by spaces, on one line.",
                              opts, N_OPTS(opts), argc, argv, pos, 1, &n_pos);
    if (rc >= 0) return rc;
    model *m = cmd_open_model(path);
    if (!m) return 1;
    cinder_error err = {0};
    char *owned = NULL;
    const char *text;
    size_t len;
    int32_t *ids = NULL;
    rc = 1;
    if (!m->tok) {
        fprintf(stderr, "cinder: %s has no tokenizer\n", path);
        goto out;
    }
    if (n_pos) {
        text = pos[0];
        len = strlen(text);
    } else {
        text = owned = read_stdin(&len);
        if (!owned) {
            fprintf(stderr, "cinder: out of memory reading standard input\n");
            goto out;
        }
    }
    if (chat) {
        char *msg = strndup(text, len);
        chat_message user = {"user", msg};
        char *prompt = msg ? tok_chat_apply(m->tok, &user, 1, true, &err) : NULL;
        free(msg);
        if (!prompt) {
            fprintf(stderr, "cinder: %s\n", err.msg[0] ? err.msg : "out of memory");
            goto out;
        }
        free(owned);
        text = owned = prompt;
        len = strlen(prompt);
        no_special = false; /* the template's markers are special tokens */
    }
    size_t n = 0;
    cinder_status s = tok_encode(m->tok, text, len, !no_bos, !no_special, NULL, 0, &n, &err);
    if (s == CINDER_ERR_RANGE || (s == CINDER_OK && n > 0)) {
        ids = malloc((n ? n : 1) * sizeof *ids);
        s = ids ? tok_encode(m->tok, text, len, !no_bos, !no_special, ids, n, &n, &err)
                : CINDER_ERR_NOMEM;
    }
    if (s != CINDER_OK) {
        fprintf(stderr, "cinder: cannot tokenize: %s\n", err.msg[0] ? err.msg : "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
    printf("\n");
    rc = 0;
out:
    free(ids);
    free(owned);
    model_free(m);
    return rc;
}

int cmd_detokenize(int argc, char **argv) {
    enum { MAX_IDS = 1 << 16 };
    const char *path = NULL;
    bool no_special = false;
    cli_option opts[] = {
        {"model", CLI_STR, &path, NULL, 0, 0, "PATH", "GGUF file or Hugging Face folder", true},
        {"no-special", CLI_FLAG, &no_special, NULL, 0, 0, NULL,
         "leave special tokens (<|im_end|>) out of the text", false},
    };
    const char *usage = "cinder detokenize --model PATH [--no-special] ID...";
    static const char *pos[MAX_IDS];
    int n_pos, rc = cmd_parse(usage, "Prints the text of the token ids.", opts, N_OPTS(opts), argc,
                              argv, pos, MAX_IDS, &n_pos);
    if (rc >= 0) return rc;
    int32_t *ids = malloc((size_t)(n_pos ? n_pos : 1) * sizeof *ids);
    if (!ids) return 1;
    for (int i = 0; i < n_pos; i++) {
        char *end;
        errno = 0;
        long v = strtol(pos[i], &end, 10);
        if (errno || end == pos[i] || *end || v < 0 || v > INT32_MAX) {
            fprintf(stderr, "cinder: argument %d: '%s' is not a token id\n", i + 1, pos[i]);
            free(ids);
            return 2;
        }
        ids[i] = (int32_t)v;
    }
    model *m = cmd_open_model(path);
    if (!m) {
        free(ids);
        return 1;
    }
    cinder_error err = {0};
    char *text = NULL;
    size_t len = 0;
    rc = 1;
    if (!m->tok) {
        fprintf(stderr, "cinder: %s has no tokenizer\n", path);
        goto out;
    }
    cinder_status s = tok_decode(m->tok, ids, (size_t)n_pos, !no_special, NULL, 0, &len, &err);
    if (s == CINDER_OK || s == CINDER_ERR_RANGE) {
        text = malloc(len + 1);
        s = text ? tok_decode(m->tok, ids, (size_t)n_pos, !no_special, text, len + 1, &len, &err)
                 : CINDER_ERR_NOMEM;
    }
    if (s != CINDER_OK) {
        fprintf(stderr, "cinder: cannot detokenize: %s\n", err.msg[0] ? err.msg : "out of memory");
        goto out;
    }
    fwrite(text, 1, len, stdout);
    printf("\n");
    rc = 0;
out:
    free(text);
    free(ids);
    model_free(m);
    return rc;
}
