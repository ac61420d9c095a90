/* stop_text.h - stop strings over streamed text.
 *
 * Generated text arrives in pieces; a stop string may span pieces. The matcher holds back the
 * tail that could still be the start of a stop string and releases text only once it cannot
 * be, so a client never sees any part of a stop string. On a match, the text before it is
 * released and the rest is dropped (as vLLM and the OpenAI API do). */
#ifndef CINDER_STOP_TEXT_H
#define CINDER_STOP_TEXT_H

#include <stdbool.h>
#include <stddef.h>

#include "status.h"

typedef struct stop_text {
    char **stops; /* [n_stops] owned copies */
    int n_stops;
    size_t longest;
    char *held; /* text not yet released */
    size_t n_held, cap;
    char *out; /* the text released by the last call */
    size_t out_cap;
    bool stopped;
} stop_text;

/* Copies the stop strings (empty ones are refused with CINDER_ERR_ARG naming the index). */
cinder_status stop_text_init(stop_text *s, const char *const *stops, int n_stops,
                             cinder_error *err);
void stop_text_free(stop_text *s);

/* Adds a piece of text. Sets *out / *n_out to the text that may be released now (valid until
 * the next call). Returns true when a stop string was completed (then nothing more is
 * released; later pieces are ignored). */
bool stop_text_feed(stop_text *s, const char *piece, size_t len, const char **out, size_t *n_out);
/* At the end of generation: releases what was held back. */
void stop_text_finish(stop_text *s, const char **out, size_t *n_out);

#endif
