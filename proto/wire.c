/* wire.c - Envelope frames over ZeroMQ sockets. */
#include "wire.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

uint64_t wire_now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void wire_msg_clear(wire_msg *m) {
    proto_envelope_free(m->env);
    free(m->raw);
    m->env = NULL;
    m->raw = NULL;
    m->raw_len = 0;
    m->identity_len = 0;
}

/* Reads and drops the rest of a multipart message; returns how many frames it had. */
static int wire_drain(void *sock) {
    int more = 1, n = 0;
    size_t sz = sizeof more;
    while (zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &sz) == 0 && more) {
        zmq_msg_t f;
        zmq_msg_init(&f);
        if (zmq_msg_recv(&f, sock, 0) < 0) {
            zmq_msg_close(&f);
            break;
        }
        zmq_msg_close(&f);
        n++;
    }
    return n;
}

cinder_status wire_recv(void *sock, bool router, const proto_limits *limits, wire_msg *m,
                        cinder_error *err) {
    memset(m, 0, sizeof *m);
    zmq_msg_t f;
    zmq_msg_init(&f);
    if (zmq_msg_recv(&f, sock, ZMQ_DONTWAIT) < 0) {
        int e = zmq_errno();
        zmq_msg_close(&f);
        if (e == EAGAIN) return cinder_error_set(err, CINDER_ERR_NOT_FOUND, "no message");
        return cinder_error_set(err, CINDER_ERR_IO, "zmq_msg_recv: %s", zmq_strerror(e));
    }
    if (router) {
        size_t n = zmq_msg_size(&f);
        if (n > WIRE_MAX_IDENTITY) n = WIRE_MAX_IDENTITY;
        memcpy(m->identity, zmq_msg_data(&f), n);
        m->identity_len = n;
        int more = zmq_msg_more(&f);
        zmq_msg_close(&f);
        zmq_msg_init(&f);
        if (!more || zmq_msg_recv(&f, sock, 0) < 0) {
            zmq_msg_close(&f);
            return cinder_error_set(err, CINDER_ERR_FORMAT, "a message without a body frame");
        }
    }
    int extra = zmq_msg_more(&f) ? wire_drain(sock) : 0;
    size_t len = zmq_msg_size(&f);
    m->raw = malloc(len ? len : 1);
    if (!m->raw) {
        zmq_msg_close(&f);
        return cinder_error_set(err, CINDER_ERR_NOMEM, "out of memory for a %zu-byte frame", len);
    }
    memcpy(m->raw, zmq_msg_data(&f), len);
    m->raw_len = len;
    zmq_msg_close(&f);
    if (extra)
        return cinder_error_set(err, CINDER_ERR_FORMAT,
                                "a message of %d frames: cinder sends one Envelope per frame",
                                extra + 1);
    return proto_decode(m->raw, len, limits, &m->env, err);
}

cinder_status wire_send(void *sock, const uint8_t *identity, size_t identity_len,
                        const Cinder__Envelope *env, cinder_error *err) {
    uint8_t *buf;
    size_t len;
    cinder_status s = proto_encode_alloc(env, &buf, &len, err);
    if (s) return s;
    int rc = 0;
    if (identity_len) rc = zmq_send(sock, identity, identity_len, ZMQ_SNDMORE | ZMQ_DONTWAIT);
    if (rc >= 0) rc = zmq_send(sock, buf, len, ZMQ_DONTWAIT);
    free(buf);
    if (rc >= 0) return CINDER_OK;
    int e = zmq_errno();
    if (e == EHOSTUNREACH) return cinder_error_set(err, CINDER_ERR_NOT_FOUND, "the peer is gone");
    if (e == EAGAIN)
        return cinder_error_set(err, CINDER_ERR_RANGE, "the peer does not read (send queue full)");
    return cinder_error_set(err, CINDER_ERR_IO, "zmq_send: %s", zmq_strerror(e));
}

void wire_send_error(void *sock, const uint8_t *identity, size_t identity_len,
                     const char *request_id, Cinder__ErrorCode code, const char *fmt, ...) {
    char msg[PROTO_MAX_MESSAGE_BYTES + 1];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    Cinder__Envelope *env = proto_error_reply(request_id, code, "%s", msg);
    if (!env) return;
    cinder_error ignored = {0};
    wire_send(sock, identity, identity_len, env, &ignored);
    proto_envelope_free(env);
}

void wire_send_refusal(void *sock, const wire_msg *m, const proto_limits *limits,
                       const cinder_error *why) {
    /* Never answer an Error with an Error: two peers would bounce them forever. */
    Cinder__Envelope *peek = m->raw ? cinder__envelope__unpack(NULL, m->raw_len, m->raw) : NULL;
    bool was_error = peek && peek->body_case == CINDER__ENVELOPE__BODY_ERROR;
    if (peek) cinder__envelope__free_unpacked(peek, NULL);
    if (was_error) return;
    Cinder__Envelope *reply =
        m->raw ? proto_refusal_reply(m->raw, m->raw_len, limits, why)
               : proto_error_reply(NULL, proto_error_code(why->status), "%s", why->msg);
    if (!reply) return;
    cinder_error ignored = {0};
    wire_send(sock, m->identity, m->identity_len, reply, &ignored);
    proto_envelope_free(reply);
}

cinder_status wire_socket_setup(void *sock, bool router, size_t max_frame_bytes,
                                cinder_error *err) {
    int zero = 0, ivl = 1000, ttl = 10000, timeout = 5000, hwm = 1 << 20, one = 1;
    int64_t max = (int64_t)(max_frame_bytes ? max_frame_bytes : PROTO_MAX_FRAME_BYTES);
    struct {
        int opt;
        const void *val;
        size_t len;
        const char *name;
    } opts[] = {
        {ZMQ_LINGER, &zero, sizeof zero, "ZMQ_LINGER"},
        {ZMQ_HEARTBEAT_IVL, &ivl, sizeof ivl, "ZMQ_HEARTBEAT_IVL"},
        {ZMQ_HEARTBEAT_TTL, &ttl, sizeof ttl, "ZMQ_HEARTBEAT_TTL"},
        {ZMQ_HEARTBEAT_TIMEOUT, &timeout, sizeof timeout, "ZMQ_HEARTBEAT_TIMEOUT"},
        {ZMQ_SNDHWM, &hwm, sizeof hwm, "ZMQ_SNDHWM"},
        {ZMQ_RCVHWM, &hwm, sizeof hwm, "ZMQ_RCVHWM"},
        {ZMQ_MAXMSGSIZE, &max, sizeof max, "ZMQ_MAXMSGSIZE"},
        {ZMQ_ROUTER_MANDATORY, &one, sizeof one, "ZMQ_ROUTER_MANDATORY"},
    };
    int n = (int)(sizeof opts / sizeof opts[0]) - (router ? 0 : 1);
    for (int i = 0; i < n; i++)
        if (zmq_setsockopt(sock, opts[i].opt, opts[i].val, opts[i].len) != 0)
            return cinder_error_set(err, CINDER_ERR_IO, "zmq_setsockopt(%s): %s", opts[i].name,
                                    zmq_strerror(zmq_errno()));
    return CINDER_OK;
}
