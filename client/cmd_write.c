/* cmd_write.c - `cinder write-model`: a random-weight Llama model of any shape, as a GGUF file
 * or a Hugging Face folder (model_write.h), for tests and benchmarks. */
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "cli.h"
#include "commands.h"
#include "model_write.h"

#define N_OPTS(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* Shapes to start from; the individual options override them. */
static const struct {
    const char *name;
    int layers, hidden, heads, kv_heads, ffn, vocab, context;
    float rope_theta;
    bool tied;
} write_presets[] = {
    {"tiny", 2, 64, 4, 2, 128, 320, 256, 10000.0f, false},
    /* SmolLM2-135M (model-notes.md): 134.5 M parameters. */
    {"smollm2-135m", 30, 576, 9, 3, 1536, 49152, 8192, 100000.0f, true},
    /* Llama 3.2 1B's shape (its 128256-token vocabulary, tied): 1.24 B parameters. The
     * context is cut to 8192 since no llama3 RoPE scaling is written. */
    {"llama-1b", 16, 2048, 32, 8, 8192, 128256, 8192, 500000.0f, true},
};

static bool write_parse_type(const char *s, dtype *out) {
    for (int t = 0; t < DTYPE_COUNT; t++)
        if (strcasecmp(s, dtype_name((dtype)t)) == 0) {
            *out = (dtype)t;
            return true;
        }
    return false;
}

static double write_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int cmd_write_model(int argc, char **argv) {
    const char *out = NULL, *format = "gguf", *type_s = "f32", *embed_s = NULL, *preset = "tiny",
               *name = NULL, *tok_from = NULL;
    int64_t layers = 0, hidden = 0, heads = 0, kv_heads = 0, head_dim = 0, ffn = 0, vocab = 0,
            context = 0, seed = 0;
    double rope_theta = 0, eps = 0, std = 0;
    bool tied = false, untied = false, no_tok = false;
    cli_option opts[] = {
        {"out", CLI_STR, &out, NULL, 0, 0, "PATH", "the GGUF file or HF folder to write", true},
        {"format", CLI_STR, &format, "gguf", 0, 0, "gguf|hf", "GGUF file or Hugging Face folder",
         false},
        {"type", CLI_STR, &type_s, "f32", 0, 0, "TYPE",
         "type of the layers' 2-D weights: f32, f16, bf16, q8_0, q4_0, q4_1 (hf: f32, f16, bf16)",
         false},
        {"embed-type", CLI_STR, &embed_s, NULL, 0, 0, "TYPE",
         "type of token_embd and output (default: --type, but q8_0 for q4_*)", false},
        {"preset", CLI_STR, &preset, "tiny", 0, 0, "NAME",
         "shape to start from: tiny (2 layers, hidden 64), smollm2-135m, llama-1b (Llama 3.2 "
         "1B's shape, 1.24 B parameters)",
         false},
        {"layers", CLI_INT, &layers, NULL, 1, 1e6, "N", "layers (default: the preset's)", false},
        {"hidden", CLI_INT, &hidden, NULL, 1, 1e7, "N", "hidden size", false},
        {"heads", CLI_INT, &heads, NULL, 1, 1e5, "N", "query heads", false},
        {"kv-heads", CLI_INT, &kv_heads, NULL, 1, 1e5, "N",
         "key/value heads (default: the preset's; with --heads, as many as heads)", false},
        {"head-dim", CLI_INT, &head_dim, NULL, 2, 1e5, "N", "head size (default: hidden / heads)",
         false},
        {"ffn", CLI_INT, &ffn, NULL, 1, 1e7, "N", "feed-forward size", false},
        {"vocab", CLI_INT, &vocab, NULL, 1, 1e8, "N",
         "vocabulary size (default: the preset's, raised to fit --tokenizer-from)", false},
        {"context", CLI_INT, &context, NULL, 1, 1e8, "N", "context length", false},
        {"rope-theta", CLI_FLOAT, &rope_theta, NULL, 1e-3, 1e12, "X", "RoPE base", false},
        {"eps", CLI_FLOAT, &eps, NULL, 1e-12, 0.5, "X", "RMSNorm epsilon (default 1e-5)", false},
        {"tied", CLI_FLAG, &tied, NULL, 0, 0, NULL,
         "tie the LM head to token_embd (smollm2-135m and llama-1b are tied)", false},
        {"untied", CLI_FLAG, &untied, NULL, 0, 0, NULL, "give the model its own output.weight",
         false},
        {"seed", CLI_INT, &seed, "0", 0, 9007199254740992.0, "N", "random seed", false},
        {"std", CLI_FLOAT, &std, "0.02", 1e-9, 1e3, "X", "standard deviation of the weights",
         false},
        {"name", CLI_STR, &name, NULL, 0, 0, "TEXT", "general.name (default: random-PRESET)",
         false},
        {"tokenizer-from", CLI_STR, &tok_from, NULL, 0, 0, "PATH",
         "copy the tokenizer of this GGUF file (gguf) or HF folder (hf); default: a built-in "
         "byte-level tokenizer of 259 tokens",
         false},
        {"no-tokenizer", CLI_FLAG, &no_tok, NULL, 0, 0, NULL,
         "write no tokenizer (model_open then refuses a GGUF file)", false},
    };
    const char *usage = "cinder write-model --out PATH [--format gguf|hf] [--type TYPE] "
                        "[--preset NAME] [shape options]";
    cinder_error err = {0};
    const char *pos[1];
    int n_pos;
    switch (cli_parse(opts, N_OPTS(opts), argc, argv, pos, 0, &n_pos, &err)) {
        case CLI_RESULT_OK:
            break;
        case CLI_RESULT_HELP:
            cli_print_help(stdout, usage,
                           "Writes a Llama model with random weights (deterministic from --seed) "
                           "of any shape.",
                           opts, N_OPTS(opts));
            return 0;
        case CLI_RESULT_ERROR:
            fprintf(stderr, "cinder: %s\nusage: %s\n", err.msg, usage);
            return 2;
    }

    int p = -1;
    for (int i = 0; i < N_OPTS(write_presets); i++)
        if (strcmp(preset, write_presets[i].name) == 0) p = i;
    if (p < 0) {
        fprintf(stderr, "cinder: unknown preset '%s' (tiny, smollm2-135m, llama-1b)\n", preset);
        return 2;
    }
    model_write_options o;
    memset(&o, 0, sizeof o);
    if (strcmp(format, "gguf") == 0) {
        o.format = MODEL_FORMAT_GGUF;
    } else if (strcmp(format, "hf") == 0) {
        o.format = MODEL_FORMAT_HF;
    } else {
        fprintf(stderr, "cinder: --format is gguf or hf, not '%s'\n", format);
        return 2;
    }
    const char *bad_type = !write_parse_type(type_s, &o.type)                     ? type_s
                           : embed_s && !write_parse_type(embed_s, &o.embed_type) ? embed_s
                                                                                  : NULL;
    if (bad_type) {
        fprintf(stderr, "cinder: unknown type '%s' (f32, f16, bf16, q8_0, q4_0, q4_1)\n", bad_type);
        return 2;
    }
    if (!embed_s) o.embed_type = o.type == DTYPE_Q4_0 || o.type == DTYPE_Q4_1 ? DTYPE_Q8_0 : o.type;
    if (tied && untied) {
        fprintf(stderr, "cinder: --tied and --untied contradict each other\n");
        return 2;
    }

    model_config *c = &o.cfg;
    c->arch = MODEL_ARCH_LLAMA;
    c->n_layers = layers ? (int)layers : write_presets[p].layers;
    c->d_model = hidden ? (int)hidden : write_presets[p].hidden;
    c->n_heads = heads ? (int)heads : write_presets[p].heads;
    /* A preset's KV heads make no sense for other head counts: then MHA unless told. */
    c->n_kv_heads = kv_heads ? (int)kv_heads : heads ? 0 : write_presets[p].kv_heads;
    c->head_dim = (int)head_dim;
    c->d_ff = ffn ? (int)ffn : write_presets[p].ffn;
    c->vocab_size = vocab ? (int)vocab : write_presets[p].vocab;
    c->context_len = context ? (int)context : write_presets[p].context;
    c->rope_theta = rope_theta ? (float)rope_theta : write_presets[p].rope_theta;
    c->norm_eps = (float)eps;
    c->tied_embeddings = tied || (!untied && write_presets[p].tied);
    snprintf(c->name, sizeof c->name, "%s%s", name ? "" : "random-", name ? name : preset);
    o.seed = (uint64_t)seed;
    o.init_std = (float)std;
    o.tokenizer_from = tok_from;
    o.no_tokenizer = no_tok;
    if (tok_from && no_tok) {
        fprintf(stderr, "cinder: --tokenizer-from and --no-tokenizer contradict each other\n");
        return 2;
    }
    if (tok_from && !vocab) { /* grow the preset's vocabulary to the tokenizer's */
        int n;
        if (model_write_tokenizer_vocab(tok_from, &n, &err) != CINDER_OK) {
            fprintf(stderr, "cinder: %s\n", err.msg);
            return 1;
        }
        if (n > c->vocab_size) c->vocab_size = n;
    }

    int64_t params, bytes;
    if (model_write_check(&o, &err) != CINDER_OK ||
        model_write_size(&o, &params, &bytes, &err) != CINDER_OK) {
        fprintf(stderr, "cinder: %s\n", err.msg);
        return err.status == CINDER_ERR_ARG || err.status == CINDER_ERR_UNSUPPORTED ? 2 : 1;
    }
    double t0 = write_now();
    if (model_write_random(&o, out, &err) != CINDER_OK) {
        fprintf(stderr, "cinder: cannot write %s: %s\n", out, err.msg);
        return 1;
    }
    double secs = write_now() - t0;
    printf("wrote %s (%s): %s, %d layers, hidden %d, heads %d/%d, ffn %d, vocab %d%s\n", out,
           o.format == MODEL_FORMAT_GGUF ? "gguf" : "hf", c->name, c->n_layers, c->d_model,
           c->n_heads, c->n_kv_heads ? c->n_kv_heads : c->n_heads, c->d_ff, c->vocab_size,
           c->tied_embeddings ? ", tied" : "");
    printf("  %.1f M parameters, %s weights, %s embeddings, %.1f MiB of tensors, %.2f s "
           "(%.0f MiB/s)\n",
           params / 1e6, dtype_name(o.type), dtype_name(o.embed_type), bytes / 1048576.0, secs,
           secs > 0 ? bytes / 1048576.0 / secs : 0.0);
    return 0;
}
