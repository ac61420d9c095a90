/* chat.c - chat templates, rendered natively.
 *
 * cinder has no Jinja interpreter: the template's family is recognized from its text and
 * rendered in C. ChatML templates (<|im_start|>) may put a default system message first when
 * the conversation has none (SmolLM2, Qwen); that message is taken from the template's own
 * string literal, so the rule holds for any model of the family. */
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "tokenizer_impl.h"

/* The string literal starting at s[0] (a quote) of a Jinja expression, unescaped, or NULL;
 * *end is set past the closing quote. */
static char *jinja_literal(const char *s, const char **end) {
    char q = s[0];
    tok_buf b = {0};
    const char *p = s + 1;
    for (; *p && *p != q; p++) {
        char c = *p;
        if (c == '\\' && p[1]) {
            switch (*++p) {
                case 'n':
                    c = '\n';
                    break;
                case 't':
                    c = '\t';
                    break;
                case 'r':
                    c = '\r';
                    break;
                default:
                    c = *p;
                    break; /* \\ \' \" */
            }
        }
        if (!tok_buf_append(&b, &c, 1)) goto fail;
    }
    if (*p != q || !tok_buf_append(&b, "", 0)) goto fail;
    *end = p + 1;
    return b.data;
fail:
    free(b.data);
    return NULL;
}

/* A ChatML template's default system message: the content of a literal
 * '<|im_start|>system\n...<|im_end|>\n' inside a {{ }} or {% %} tag. NULL when none. */
static char *chatml_default_system(const char *tpl) {
    static const char head[] = "<|im_start|>system\n", tail[] = "<|im_end|>\n";
    const size_t nh = sizeof(head) - 1, nt = sizeof(tail) - 1;
    bool in_tag = false;
    for (const char *p = tpl; *p;) {
        if (!in_tag) {
            in_tag = p[0] == '{' && (p[1] == '{' || p[1] == '%');
            p += in_tag ? 2 : 1;
            continue;
        }
        if ((p[0] == '}' || p[0] == '%') && p[1] == '}') {
            in_tag = false;
            p += 2;
            continue;
        }
        if (*p != '\'' && *p != '"') {
            p++;
            continue;
        }
        const char *after;
        char *lit = jinja_literal(p, &after);
        if (!lit) return NULL;
        size_t n = strlen(lit);
        if (n > nh + nt && memcmp(lit, head, nh) == 0 && memcmp(lit + n - nt, tail, nt) == 0) {
            memmove(lit, lit + nh, n - nh - nt);
            lit[n - nh - nt] = '\0';
            return lit;
        }
        free(lit);
        p = after;
    }
    return NULL;
}

cinder_status chat_detect(tokenizer *t, cinder_error *err) {
    t->chat_fmt = CHAT_FORMAT_NONE;
    free(t->chat_default_system);
    t->chat_default_system = NULL;
    const char *tpl = t->chat_template;
    if (!tpl) return CINDER_OK;
    if (strstr(tpl, "<|im_start|>")) {
        t->chat_fmt = CHAT_FORMAT_CHATML;
        t->chat_default_system = chatml_default_system(tpl);
    } else if (strstr(tpl, "<|start_header_id|>")) {
        t->chat_fmt = CHAT_FORMAT_LLAMA3;
    } else {
        LOG_WARN("chat template not recognized (neither ChatML nor Llama-3): chat is off");
    }
    return CINDER_OK;
}

chat_format tok_chat_format(const tokenizer *t) {
    return t->chat_fmt;
}

/* What Python's str.isspace() accepts (Jinja's trim filter is str.strip()). */
static bool py_isspace(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
           cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
           cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/* Appends s with leading and trailing white space removed. s is valid UTF-8 (checked). */
static bool append_trimmed(tok_buf *b, const char *s) {
    const unsigned char *u = (const unsigned char *)s;
    size_t n = strlen(s), lo = 0, hi = n, i = 0;
    bool leading = true;
    while (i < n) {
        uint32_t cp;
        int bad, r = tok_utf8_next(u + i, n - i, &cp, &bad);
        if (r <= 0) r = 1, cp = 0xFFFD;
        if (!py_isspace(cp)) {
            if (leading) lo = i;
            leading = false;
            hi = i + (size_t)r;
        }
        i += (size_t)r;
    }
    if (leading) return true;
    return tok_buf_append(b, s + lo, hi - lo);
}

char *tok_chat_apply(const tokenizer *t, const chat_message *msgs, int n_msgs,
                     bool add_generation_prompt, cinder_error *err) {
    if (t->chat_fmt == CHAT_FORMAT_NONE) {
        cinder_error_set(err, CINDER_ERR_UNSUPPORTED,
                         t->chat_template ? "the model's chat template is not recognized"
                                          : "the model has no chat template");
        return NULL;
    }
    if (n_msgs <= 0 || !msgs) {
        cinder_error_set(err, CINDER_ERR_ARG, "a chat needs at least one message");
        return NULL;
    }
    for (int i = 0; i < n_msgs; i++) {
        const char *role = msgs[i].role;
        if (!role ||
            (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant"))) {
            cinder_error_set(err, CINDER_ERR_ARG,
                             "message %d: unknown role '%s' (system, user or assistant)", i,
                             role ? role : "(null)");
            return NULL;
        }
        if (!msgs[i].content) {
            cinder_error_set(err, CINDER_ERR_ARG, "message %d (%s): no content", i, role);
            return NULL;
        }
    }

    tok_buf b = {0};
    bool ok = tok_buf_append(&b, "", 0);
    if (t->chat_fmt == CHAT_FORMAT_CHATML) {
        if (t->chat_default_system && strcmp(msgs[0].role, "system") != 0) {
            ok = ok && tok_buf_appendz(&b, "<|im_start|>system\n") &&
                 tok_buf_appendz(&b, t->chat_default_system) && tok_buf_appendz(&b, "<|im_end|>\n");
        }
        for (int i = 0; i < n_msgs && ok; i++) {
            ok = tok_buf_appendz(&b, "<|im_start|>") && tok_buf_appendz(&b, msgs[i].role) &&
                 tok_buf_appendz(&b, "\n") && tok_buf_appendz(&b, msgs[i].content) &&
                 tok_buf_appendz(&b, "<|im_end|>\n");
        }
        if (add_generation_prompt) ok = ok && tok_buf_appendz(&b, "<|im_start|>assistant\n");
    } else {
        const char *bos = t->bos >= 0 ? tok_token_text(t, t->bos) : "<|begin_of_text|>";
        ok = ok && tok_buf_appendz(&b, bos);
        for (int i = 0; i < n_msgs && ok; i++) {
            ok = tok_buf_appendz(&b, "<|start_header_id|>") && tok_buf_appendz(&b, msgs[i].role) &&
                 tok_buf_appendz(&b, "<|end_header_id|>\n\n") &&
                 append_trimmed(&b, msgs[i].content) && tok_buf_appendz(&b, "<|eot_id|>");
        }
        if (add_generation_prompt)
            ok = ok && tok_buf_appendz(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    }
    if (!ok) {
        free(b.data);
        cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory rendering the chat");
        return NULL;
    }
    return b.data;
}

int tok_stop_ids(const tokenizer *t, int32_t *out, int cap) {
    static const char *const turn_ends[] = {"<|im_end|>", "<|eot_id|>", "<|end_of_text|>"};
    int32_t ids[1 + sizeof(turn_ends) / sizeof(turn_ends[0])];
    int n = 0;
    if (t->eos >= 0) ids[n++] = t->eos;
    for (size_t i = 0; i < sizeof(turn_ends) / sizeof(turn_ends[0]); i++) {
        int32_t id = tok_token_id(t, turn_ends[i]);
        bool seen = false;
        for (int j = 0; j < n; j++) seen = seen || ids[j] == id;
        if (id >= 0 && !seen) ids[n++] = id;
    }
    for (int i = 0; i < n && i < cap; i++) out[i] = ids[i];
    return n;
}
