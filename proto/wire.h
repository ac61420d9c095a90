/* wire.h - one Envelope per ZeroMQ frame (docs/protocol.md), on ROUTER and DEALER sockets.
 *
 * A ROUTER socket prefixes every message with the peer's identity frame; a DEALER sends and
 * receives the Envelope frame alone. wire_recv takes both shapes, checks that exactly one body
 * frame follows (a peer that sends more is refused, its frames drained), decodes and validates
 * the body (proto_decode) and keeps the raw frame so that a refusal can quote the request id.
 *
 *   wire_msg m;
 *   if (wire_recv(sock, true, &limits, &m, &err) == CINDER_OK) { ... m.env ... }
 *   wire_msg_clear(&m);
 *
 * Sends never block: a ROUTER with ZMQ_ROUTER_MANDATORY reports a peer that is gone
 * (CINDER_ERR_NOT_FOUND) instead of dropping the message silently, and a full pipe (a peer
 * that does not read) is CINDER_ERR_RANGE. */
#ifndef CINDER_WIRE_H
#define CINDER_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "protocol.h"

#define WIRE_MAX_IDENTITY 255 /* ZeroMQ routing ids are at most 255 bytes */

typedef struct wire_msg {
    uint8_t identity[WIRE_MAX_IDENTITY];
    size_t identity_len;   /* 0 on a DEALER socket */
    Cinder__Envelope *env; /* NULL when the body was refused (err says why) */
    uint8_t *raw;          /* the body frame as received (for proto_refusal_reply) */
    size_t raw_len;
} wire_msg;

/* Receives one message without waiting: CINDER_ERR_NOT_FOUND when none is queued. With
 * router, the first frame is the peer's identity. Any other failure (a body that does not
 * decode, extra frames) returns its status with m->identity set so that the caller can answer
 * the peer (wire_send_refusal). */
cinder_status wire_recv(void *sock, bool router, const proto_limits *limits, wire_msg *m,
                        cinder_error *err);
void wire_msg_clear(wire_msg *m);

/* Sends env to identity (NULL, 0 on a DEALER socket) without blocking. */
cinder_status wire_send(void *sock, const uint8_t *identity, size_t identity_len,
                        const Cinder__Envelope *env, cinder_error *err);
/* Sends an Error (request_id may be NULL; the message is formatted, cut to its bound and made
 * valid UTF-8 by proto_error_reply). Failures to send are ignored (the peer is gone). */
void wire_send_error(void *sock, const uint8_t *identity, size_t identity_len,
                     const char *request_id, Cinder__ErrorCode code, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* Answers a refused message m (status and err from wire_recv) with an Error, unless the
 * refused message was itself an Error. Failures to send are ignored (the peer is gone). */
void wire_send_refusal(void *sock, const wire_msg *m, const proto_limits *limits,
                       const cinder_error *why);

/* Sets the options every cinder socket uses: linger 0, ZMTP heartbeats (a dead TCP peer is
 * dropped after a few seconds), no send queue limit worth hitting, the frame size bound, and on
 * a ROUTER, ZMQ_ROUTER_MANDATORY. */
cinder_status wire_socket_setup(void *sock, bool router, size_t max_frame_bytes, cinder_error *err);

/* Monotonic clock in microseconds. */
uint64_t wire_now_us(void);

#endif
