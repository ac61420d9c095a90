/* protocol.h - cinder's wire protocol: one Envelope (proto/cinder.proto) per ZeroMQ frame,
 * decoded and validated before anyone reads it.
 *
 *   Cinder__Envelope *env;
 *   if (proto_decode(frame, len, &limits, &env, &err) != CINDER_OK) {
 *       Cinder__Envelope *reply = proto_refusal_reply(frame, len, &limits, &err);
 *       ... send reply (never in answer to an Error) ...
 *       proto_envelope_free(reply);
 *   } else {
 *       switch (env->body_case) { ... }
 *       proto_envelope_free(env);
 *   }
 *
 * A decoded envelope has passed every rule below: known enum values, UTF-8 strings, finite
 * floats, sizes within the PROTO_MAX_* bounds, ids and counts in range and consistent with each
 * other. What needs state (a request id already in flight, a prompt over the model's context
 * after tokenizing, Hello being the first message) is the receiver's to check.
 *
 * Status codes: CINDER_ERR_FORMAT for structure (bytes that do not decode, a missing body or
 * required part, an unknown enum value, counts that do not add up, bad UTF-8),
 * CINDER_ERR_UNSUPPORTED for another protocol major or a body type this version does not know,
 * CINDER_ERR_ARG for a value out of its range, CINDER_ERR_RANGE for a size over its bound. The
 * message always names the field: "generate_request.sampling.top_p 0 is outside (0, 1]". */
#ifndef CINDER_PROTOCOL_H
#define CINDER_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cinder.pb-c.h"
#include "dtype.h"
#include "sampling_bounds.h"
#include "status.h"

/* The majors of two peers must match; the minors may differ (docs/protocol.md). Bump the minor
 * for an added field, message or enum value; the major for anything that changes the meaning
 * of bytes an older peer would accept. */
#define PROTO_VERSION_MAJOR 1
/* 1.1: StatusReply.preemptions, GenerateRequest.ignore_eos; 1.2: ERROR_CODE_HELLO_REQUIRED;
 * 1.3: KvType in ShardPlan.kv_type, Ready.kv_type, KvUsage.kv_type (+ KvUsage.block_bytes) */
#define PROTO_VERSION_MINOR 3

/* Sizes. Frames over the limit are refused before they are unpacked (unpacking allocates up to
 * ~50x a frame of empty repeated messages, so keep the limit modest where clients connect; set
 * the same bound as ZMQ_MAXMSGSIZE on the socket). */
#define PROTO_MAX_FRAME_BYTES      (8u << 20) /* default of proto_limits.max_frame_bytes */
#define PROTO_MAX_REQUEST_ID_BYTES 128
#define PROTO_MAX_NAME_BYTES       256       /* model, host, device, role names, software */
#define PROTO_MAX_MESSAGE_BYTES    4096      /* error texts, reasons, paths */
#define PROTO_MAX_PROMPT_BYTES     (4 << 20) /* prompt text, or all chat contents together */
#define PROTO_MAX_CONTEXT          (1 << 21) /* tokens: positions, prompt token ids */
#define PROTO_MAX_CHAT_MESSAGES    1024
#define PROTO_MAX_NEW_TOKENS       (1 << 20) /* max_tokens */
#define PROTO_MAX_STOP_STRINGS     16
#define PROTO_MAX_STOP_BYTES       256
#define PROTO_MAX_STOP_IDS         64
#define PROTO_MAX_TEXT_BYTES       (1 << 20) /* one GenerateChunk's text */
#define PROTO_MAX_WORLD_SIZE       4096      /* ranks in a group; also the bound on group ids */
#define PROTO_MAX_MODELS           64
#define PROTO_MAX_BLOCK_SIZE       1024 /* tokens per KV block */
#define PROTO_MAX_STEP_SEQS        4096
#define PROTO_MAX_STEP_TOKENS      (1 << 20) /* tokens of one step, or of one chunk */
#define PROTO_MAX_SEQ_BLOCKS       (1 << 20) /* entries of one block table */

/* Sampling bounds: the same as the sampler's (common/sampling_bounds.h). */
#define PROTO_TEMPERATURE_MAX        SAMPLING_TEMPERATURE_MAX
#define PROTO_REPETITION_PENALTY_MAX SAMPLING_REPETITION_PENALTY_MAX

/* What the receiver knows of its side; zero fields are unknown and skip their check. */
typedef struct proto_limits {
    int32_t vocab_size;     /* token ids must be below it */
    int32_t kv_blocks;      /* block ids must be below it */
    size_t max_frame_bytes; /* 0: PROTO_MAX_FRAME_BYTES */
} proto_limits;

/* Unpacks one frame and validates it (limits may be NULL). On success *out owns the message
 * (proto_envelope_free); on failure *out is NULL and err says what and where. */
cinder_status proto_decode(const void *buf, size_t len, const proto_limits *limits,
                           Cinder__Envelope **out, cinder_error *err);

/* The rules proto_decode applies after unpacking, for a message built in memory. */
cinder_status proto_validate(const Cinder__Envelope *env, const proto_limits *limits,
                             cinder_error *err);

/* Bytes proto_encode writes for env. */
size_t proto_encoded_size(const Cinder__Envelope *env);
/* Validates env (no limits) and packs it into buf [cap]; *len gets the size. A message the
 * receiver would refuse is refused here, naming the field; a too small buf: CINDER_ERR_RANGE. */
cinder_status proto_encode(const Cinder__Envelope *env, uint8_t *buf, size_t cap, size_t *len,
                           cinder_error *err);
/* Same into a malloc'd buffer (*buf, the caller frees). */
cinder_status proto_encode_alloc(const Cinder__Envelope *env, uint8_t **buf, size_t *len,
                                 cinder_error *err);

/* Frees a decoded envelope, or one built by proto_error_reply / proto_refusal_reply. NULL is
 * fine. Not for envelopes built on the stack. */
void proto_envelope_free(Cinder__Envelope *env);

/* A heap Error envelope (proto_envelope_free). request_id may be NULL; it and the formatted
 * message are cut to their bounds and made valid UTF-8 (bad bytes become '?'). NULL when out
 * of memory. */
Cinder__Envelope *proto_error_reply(const char *request_id, Cinder__ErrorCode code, const char *fmt,
                                    ...) __attribute__((format(printf, 3, 4)));
/* The Error code for a status from proto_decode (or elsewhere). */
Cinder__ErrorCode proto_error_code(cinder_status status);
/* The Error reply for a frame proto_decode refused with err: the frame's request id when it
 * carries a well-formed one (so the client can match it), else none. */
Cinder__Envelope *proto_refusal_reply(const void *buf, size_t len, const proto_limits *limits,
                                      const cinder_error *err);

/* The request id of a body that carries one (GenerateRequest, GenerateChunk, GenerateDone,
 * Cancel, Error), else NULL. */
const char *proto_envelope_request_id(const Cinder__Envelope *env);
/* The body's field name ("generate_request"), or "none". */
const char *proto_body_name(Cinder__Envelope__BodyCase body);

/* This side's Hello: the version constants, role and software name. */
void proto_hello_init(Cinder__Hello *hello, Cinder__Role role);
/* Sampling defaults: greedy, filters off (top_p 1, repetition_penalty 1), no seed. */
void proto_sampling_default(Cinder__SamplingParams *s);

/* KV pool element types on the wire and in the engine. proto_kv_type_to_dtype returns false
 * for a value this side has no type for; proto_kv_type_from_dtype returns false for a dtype
 * that is no KV type (a quantized one). */
bool proto_kv_type_to_dtype(Cinder__KvType t, dtype *out);
bool proto_kv_type_from_dtype(dtype t, Cinder__KvType *out);

#endif
