#include "stop_text.h"

#include <stdlib.h>
#include <string.h>

cinder_status stop_text_init(stop_text *s, const char *const *stops, int n_stops,
                             cinder_error *err) {
    memset(s, 0, sizeof *s);
    if (n_stops <= 0) return CINDER_OK;
    s->stops = calloc((size_t)n_stops, sizeof *s->stops);
    if (!s->stops) return cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n_stops; i++) {
        if (!stops[i] || !stops[i][0]) {
            stop_text_free(s);
            return cinder_error_set(err, CINDER_ERR_ARG, "stop string %d is empty", i);
        }
        s->stops[i] = strdup(stops[i]);
        if (!s->stops[i]) {
            stop_text_free(s);
            return cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory");
        }
        s->n_stops = i + 1;
        size_t len = strlen(stops[i]);
        if (len > s->longest) s->longest = len;
    }
    return CINDER_OK;
}

void stop_text_free(stop_text *s) {
    for (int i = 0; i < s->n_stops; i++) free(s->stops[i]);
    free(s->stops);
    free(s->held);
    free(s->out);
    memset(s, 0, sizeof *s);
}

/* Bytes at the end of held that are a proper prefix of some stop string. */
static size_t stop_text_pending(const stop_text *s) {
    size_t best = 0;
    for (int i = 0; i < s->n_stops; i++) {
        size_t len = strlen(s->stops[i]);
        for (size_t k = len - 1; k > best; k--)
            if (k <= s->n_held && memcmp(s->held + s->n_held - k, s->stops[i], k) == 0) {
                best = k;
                break;
            }
    }
    return best;
}

bool stop_text_feed(stop_text *s, const char *piece, size_t len, const char **out,
                    size_t *n_out) {
    *out = "";
    *n_out = 0;
    if (s->stopped) return true;
    if (s->n_stops == 0) {
        *out = piece;
        *n_out = len;
        return false;
    }
    /* Drop what was released by the previous call, then append. */
    if (s->n_held + len + 1 > s->cap) {
        size_t cap = (s->n_held + len + 1) * 2;
        char *p = realloc(s->held, cap);
        if (!p) { /* cannot hold back: release as is, never lose text */
            *out = piece;
            *n_out = len;
            return false;
        }
        s->held = p;
        s->cap = cap;
    }
    memcpy(s->held + s->n_held, piece, len);
    s->n_held += len;
    s->held[s->n_held] = '\0';
    /* The earliest complete stop string wins. A match can only end inside the new piece,
     * so the search starts longest - 1 bytes before it. */
    size_t from = s->n_held - len > s->longest ? s->n_held - len - s->longest : 0;
    const char *first = NULL;
    for (int i = 0; i < s->n_stops; i++) {
        const char *hit = strstr(s->held + from, s->stops[i]);
        if (hit && (!first || hit < first)) first = hit;
    }
    if (first) {
        s->stopped = true;
        *out = s->held;
        *n_out = (size_t)(first - s->held);
        return true;
    }
    /* Release the front into out (valid until the next call), keep the possible prefix. */
    size_t keep = stop_text_pending(s), release = s->n_held - keep;
    if (release + 1 > s->out_cap) {
        char *p = realloc(s->out, (release + 1) * 2);
        if (!p) return false; /* nothing released now; it stays held, not lost */
        s->out = p;
        s->out_cap = (release + 1) * 2;
    }
    memcpy(s->out, s->held, release);
    memmove(s->held, s->held + release, keep);
    s->n_held = keep;
    *out = s->out;
    *n_out = release;
    return false;
}

void stop_text_finish(stop_text *s, const char **out, size_t *n_out) {
    *out = s->held ? s->held : "";
    *n_out = s->stopped ? 0 : s->n_held;
    s->n_held = 0;
}
