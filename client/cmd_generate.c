/* cmd_generate.c - `cinder generate`: one prompt, in this process, streamed to stdout. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "commands.h"
#include "engine.h"
#include "log.h"
#include "model.h"
#include "sampler.h"
#include "stop_text.h"
#include "tokenizer.h"

#define N_OPTS(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* Longest prompt chunk per step: long prompts are prefilled in pieces. */
#define GEN_PREFILL_CHUNK 512

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}


/* Writes text released by the stop matcher. */
static void gen_emit(stop_text *st, const char *piece, size_t len, bool *stopped) {
    const char *out;
    size_t n;
    if (stop_text_feed(st, piece, len, &out, &n)) *stopped = true;
    fwrite(out, 1, n, stdout);
    fflush(stdout);
}

/* The prompt's token ids (chat template applied when asked). */
static int32_t *gen_encode(const gen_args *a, const tokenizer *tok, size_t *n, cinder_error *err) {
    char *templated = NULL;
    const char *text = a->prompt;
    if (a->chat) {
        chat_message msgs[2];
        int n_msgs = 0;
        if (a->system) msgs[n_msgs++] = (chat_message){"system", a->system};
        msgs[n_msgs++] = (chat_message){"user", a->prompt};
        templated = tok_chat_apply(tok, msgs, n_msgs, true, err);
        if (!templated) return NULL;
        text = templated;
    }
    size_t len = strlen(text);
    int32_t *ids = NULL;
    cinder_status s = tok_encode(tok, text, len, true, true, NULL, 0, n, err);
    if (s == CINDER_OK || s == CINDER_ERR_RANGE) {
        ids = malloc((*n ? *n : 1) * sizeof *ids);
        if (ids && tok_encode(tok, text, len, true, true, ids, *n, n, err) != CINDER_OK) {
            free(ids);
            ids = NULL;
        }
    }
    free(templated);
    return ids;
}

static int gen_run(const gen_args *a) {
    cinder_error err = {0};
    int rc = 1;
    model *m = model_open(a->model, &err);
    engine *e = NULL;
    sampler *smp = NULL;
    int32_t *ids = NULL;
    float *logits = NULL;
    kv_seq kv = {0};
    stop_text st = {0};
    if (!m) {
        fprintf(stderr, "cinder: cannot load model: %s\n", err.msg);
        return 1;
    }
    if (engine_model_supported(m, &err)) {
        fprintf(stderr, "cinder: cannot run %s: %s\n", a->model, err.msg);
        goto out;
    }
    if (!m->tok) {
        fprintf(stderr, "cinder: %s has no tokenizer; generate needs one\n", a->model);
        goto out;
    }
    size_t n_prompt = 0;
    ids = gen_encode(a, m->tok, &n_prompt, &err);
    if (!ids) {
        fprintf(stderr, "cinder: cannot encode the prompt: %s\n", err.msg[0] ? err.msg : "out of memory");
        goto out;
    }
    int ctx = m->config.context_len;
    if (n_prompt == 0 || (int64_t)n_prompt >= ctx) {
        fprintf(stderr, "cinder: the prompt is %zu tokens; it must be 1 to %d\n", n_prompt, ctx - 1);
        goto out;
    }
    int64_t max_new = a->max_tokens;
    if ((int64_t)n_prompt + max_new > ctx) max_new = ctx - (int64_t)n_prompt;

    sampler_params sp = {.temperature = (float)a->temperature, .top_k = (int)a->top_k,
                         .top_p = (float)a->top_p, .min_p = (float)a->min_p,
                         .repetition_penalty = (float)a->repeat_penalty,
                         .seed = a->seed >= 0 ? (uint64_t)a->seed : (uint64_t)time(NULL)};
    if (sampler_params_check(&sp, &err)) {
        fprintf(stderr, "cinder: %s\n", err.msg);
        rc = 2;
        goto out;
    }
    const char *stops[1] = {a->stop};
    if (stop_text_init(&st, stops, a->stop ? 1 : 0, &err)) {
        fprintf(stderr, "cinder: --stop: %s\n", err.msg);
        rc = 2;
        goto out;
    }

    engine_options o = engine_options_default();
    if (!engine_backend_parse(a->device, &o.backend)) {
        fprintf(stderr, "cinder: --device is cpu or cuda, not '%s'\n", a->device);
        rc = 2;
        goto out;
    }
    kv_cache_type_parse(a->kv_type, &o.kv_type); /* checked by cmd_generate */
    o.device = (int)a->gpu;
    o.n_threads = (int)a->threads;
    o.block_size = (int)a->block_size;
    o.f32_weights = a->f32;
    o.max_batch_tokens = GEN_PREFILL_CHUNK;
    o.max_seqs = 1;
    int64_t need = ((int64_t)n_prompt + max_new + o.block_size - 1) / o.block_size;
    if (a->kv_blocks > 0 && a->kv_blocks < need) {
        fprintf(stderr,
                "cinder: a KV pool of %lld blocks of %d tokens holds %lld tokens; the prompt (%zu) "
                "and --max-tokens (%lld) need %lld blocks\n",
                (long long)a->kv_blocks, o.block_size, (long long)a->kv_blocks * o.block_size,
                n_prompt, (long long)max_new, (long long)need);
        rc = 2;
        goto out;
    }
    o.kv_blocks = (int32_t)(a->kv_blocks > 0 ? a->kv_blocks : need + 1);
    e = engine_create(m, &o, &err);
    smp = e ? sampler_create(m->config.vocab_size, &err) : NULL;
    if (!e || !smp) {
        fprintf(stderr, "cinder: %s\n", err.msg);
        goto out;
    }
    int vocab = m->config.vocab_size;
    logits = malloc((size_t)vocab * sizeof(float));
    int32_t *history = realloc(ids, ((size_t)n_prompt + (size_t)max_new + 1) * sizeof *ids);
    if (!logits || !history) {
        fprintf(stderr, "cinder: out of memory\n");
        goto out;
    }
    ids = history;
    int32_t stop_ids[8];
    int n_stop_ids = a->ignore_eos ? 0 : tok_stop_ids(m->tok, stop_ids, 8);

    /* Prefill in chunks; the last chunk's logits give the first token. */
    double t0 = now_s();
    int32_t pos = 0;
    while ((size_t)pos < n_prompt) {
        int32_t n = (int32_t)(n_prompt - (size_t)pos);
        if (n > GEN_PREFILL_CHUNK) n = GEN_PREFILL_CHUNK;
        if (kv_seq_reserve(engine_kv(e), &kv, pos + n, &err)) break;
        engine_seq q = {ids + pos, n, pos, kv.blocks, kv.n_blocks, false};
        if (engine_step(e, &q, 1, logits, &err)) break;
        pos += n;
    }
    if ((size_t)pos < n_prompt) {
        fprintf(stderr, "cinder: prefill failed: %s\n", err.msg);
        goto out;
    }
    double t1 = now_s();

    sampler_rng rng;
    sampler_rng_seed(&rng, sp.seed);
    tok_stream ts;
    tok_stream_init(&ts, m->tok, false);
    char piece[4096];
    int64_t n_gen = 0;
    bool stopped = false;
    const char *reason = "length";
    while (n_gen < max_new && !stopped) {
        int32_t next = sampler_sample(smp, &sp, &rng, logits, ids, pos);
        n_gen++;
        bool is_stop = false;
        for (int i = 0; i < n_stop_ids; i++) is_stop |= next == stop_ids[i];
        if (is_stop) {
            reason = "stop token";
            break;
        }
        int len = tok_stream_feed(&ts, next, piece, sizeof piece, &err);
        if (len < 0) {
            fprintf(stderr, "\ncinder: %s\n", err.msg);
            goto out;
        }
        gen_emit(&st, piece, (size_t)len, &stopped);
        if (stopped) {
            reason = "stop string";
            break;
        }
        ids[pos] = next;
        if (n_gen == max_new) break;
        if (kv_seq_reserve(engine_kv(e), &kv, pos + 1, &err)) break;
        engine_seq q = {ids + pos, 1, pos, kv.blocks, kv.n_blocks, false};
        if (engine_step(e, &q, 1, logits, &err)) {
            fprintf(stderr, "\ncinder: step failed: %s\n", err.msg);
            goto out;
        }
        pos++;
    }
    if (!stopped) {
        int len = tok_stream_flush(&ts, piece, sizeof piece);
        if (len > 0) gen_emit(&st, piece, (size_t)len, &stopped);
        const char *rest;
        size_t n_rest;
        stop_text_finish(&st, &rest, &n_rest);
        fwrite(rest, 1, n_rest, stdout);
    }
    printf("\n");
    fflush(stdout); /* the text before the speed report on stderr */
    double t2 = now_s();
    fprintf(stderr,
            "cinder: prompt %zu tokens in %.2f s (%.1f tokens/s); generated %lld tokens in %.2f s "
            "(%.1f tokens/s); stopped by %s; %s, %s, seed %llu\n",
            n_prompt, t1 - t0, n_prompt / (t1 - t0), (long long)n_gen, t2 - t1,
            n_gen > 1 ? (n_gen - 1) / (t2 - t1) : 0.0, reason, engine_backend_ops(e)->name,
            a->f32 ? "F32 weights" : "file's weights", (unsigned long long)sp.seed);
    rc = 0;
out:
    kv_seq_free(e ? engine_kv(e) : NULL, &kv);
    stop_text_free(&st);
    free(logits);
    free(ids);
    sampler_free(smp);
    engine_free(e);
    model_free(m);
    return rc;
}

int cmd_generate(int argc, char **argv) {
    gen_args a = {0};
    cli_option opts[] = {
        {"model", CLI_STR, &a.model, NULL, 0, 0, "PATH",
         "GGUF file or Hugging Face folder (required without --server)", false},
        {"server", CLI_STR, &a.server, NULL, 0, 0, "ENDPOINT",
         "generate on a coordinator (tcp://HOST:PORT) instead of in this process", false},
        {"prompt", CLI_STR, &a.prompt, NULL, 0, 0, "TEXT", "the prompt", true},
        {"chat", CLI_FLAG, &a.chat, NULL, 0, 0, NULL,
         "the prompt is a user message in the model's chat template", false},
        {"system", CLI_STR, &a.system, NULL, 0, 0, "TEXT",
         "with --chat: a system message (else the template's default)", false},
        {"max-tokens", CLI_INT, &a.max_tokens, "256", 1, 1 << 20, "N", "tokens to generate", false},
        {"temperature", CLI_FLOAT, &a.temperature, "0.8", 0, 100, "T", "0 is greedy", false},
        {"top-k", CLI_INT, &a.top_k, "0", 0, 1 << 30, "K", "keep the K most likely (0: off)", false},
        {"top-p", CLI_FLOAT, &a.top_p, "1", 1e-6, 1, "P", "nucleus sampling (1: off)", false},
        {"min-p", CLI_FLOAT, &a.min_p, "0", 0, 1, "P",
         "drop tokens below P times the best one's probability (0: off)", false},
        {"repeat-penalty", CLI_FLOAT, &a.repeat_penalty, "1", 1e-3, 100, "R",
         "repetition penalty on prompt and output tokens (1: off)", false},
        {"seed", CLI_INT, &a.seed, "-1", -1, 9.2e18, "S", "random seed (-1: from the clock)",
         false},
        {"stop", CLI_STR, &a.stop, NULL, 0, 0, "TEXT", "stop when this text is generated", false},
        {"timeout-ms", CLI_INT, &a.timeout_ms, "0", 0, 4294967295.0, "N",
         "with --server: the coordinator ends the request after N ms (0: none)", false},
        {"ignore-eos", CLI_FLAG, &a.ignore_eos, NULL, 0, 0, NULL,
         "do not stop at the model's end tokens (local only)", false},
        {"threads", CLI_INT, &a.threads, "0", 0, 1024, "N", "CPU threads (0: all; local only)",
         false},
        {"block-size", CLI_INT, &a.block_size, "16", 1, 4096, "N",
         "tokens per KV block (local only)", false},
        {"kv-blocks", CLI_INT, &a.kv_blocks, "0", 0, 1 << 30, "N",
         "KV pool size in blocks (0: what the prompt and --max-tokens need; local only)", false},
        {"kv-type", CLI_STR, &a.kv_type, "f32", 0, 0, "f32|f16|bf16",
         "KV cache type: f16 and bf16 halve its memory and what attention reads (cpu: all "
         "three; cuda: f32, bf16; local only)",
         false},
        {"f32", CLI_FLAG, &a.f32, NULL, 0, 0, NULL,
         "dequantize the weights to F32 (reference precision, slower; local only)", false},
        {"device", CLI_STR, &a.device, "cpu", 0, 0, "cpu|cuda",
         "where the forward pass runs (cuda: builds with the CUDA backend; local only)", false},
        {"gpu", CLI_INT, &a.gpu, "0", 0, 1024, "N",
         "with --device cuda: the CUDA device (local only)", false},
    };
    cinder_error err = {0};
    const char *pos[1];
    int n_pos;
    const char *usage = "cinder generate (--model PATH | --server ENDPOINT) --prompt TEXT [--chat] "
                        "[--max-tokens N] [--temperature T] [--top-p P] [--top-k K] [--seed S] "
                        "[--threads N]";
    switch (cli_parse(opts, N_OPTS(opts), argc, argv, pos, 0, &n_pos, &err)) {
        case CLI_RESULT_HELP:
            cli_print_help(stdout, usage,
                           "Generates text from a prompt in this process (--model) or on a "
                           "cinder coordinator (--server) and streams it to standard output; "
                           "prompt and generation speed go to standard error.",
                           opts, N_OPTS(opts));
            return 0;
        case CLI_RESULT_ERROR: fprintf(stderr, "cinder: %s\nusage: %s\n", err.msg, usage); return 2;
        case CLI_RESULT_OK: break;
    }
    if (a.server) {
        /* What only the local engine has is refused rather than silently ignored. */
        const char *local_only = a.model        ? "--model (the coordinator serves its own)"
                                 : a.f32        ? "--f32"
                                 : a.ignore_eos ? "--ignore-eos"
                                 : a.kv_blocks  ? "--kv-blocks"
                                 : strcmp(a.kv_type, "f32") != 0 ? "--kv-type"
                                 : a.threads                     ? "--threads"
                                 : a.block_size != 16            ? "--block-size"
                                 : strcmp(a.device, "cpu") != 0  ? "--device"
                                 : a.gpu                         ? "--gpu"
                                                                 : NULL;
        if (local_only) {
            fprintf(stderr, "cinder: %s applies to local generation, not with --server\nusage: %s\n",
                    local_only, usage);
            return 2;
        }
#ifdef CINDER_HAVE_CLIENT
        return generate_remote(&a);
#else
        fprintf(stderr, "cinder: this build has no client (built without ZeroMQ/protobuf-c)\n");
        return 1;
#endif
    }
    if (!a.model) {
        fprintf(stderr, "cinder: --model PATH is required (or --server ENDPOINT)\nusage: %s\n",
                usage);
        return 2;
    }
    dtype kv_type;
    if (!kv_cache_type_parse(a.kv_type, &kv_type)) {
        fprintf(stderr, "cinder: --kv-type is " KV_CACHE_TYPE_NAMES ", not '%s'\nusage: %s\n",
                a.kv_type, usage);
        return 2;
    }
    if (a.timeout_ms) {
        fprintf(stderr, "cinder: --timeout-ms applies with --server only\nusage: %s\n", usage);
        return 2;
    }
    return gen_run(&a);
}
