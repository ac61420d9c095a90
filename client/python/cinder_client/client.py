"""cinder's Python client: a ZeroMQ DEALER to the coordinator, one cinder.Envelope per frame.

    from cinder_client import Client
    with Client("tcp://127.0.0.1:5555") as c:
        r = c.generate(chat=[{"role": "user", "content": "Hi"}], stream=False, max_tokens=32)
        print(r.text, r.finish_reason, r.usage)
        for chunk in c.generate(prompt="Once upon a time", temperature=0.8, seed=1):
            print(chunk.text, end="", flush=True)

One client may have several requests in flight (each stream reads the socket and hands the
other requests' messages to their own queues); it is not thread-safe.

ZeroMQ reconnects the socket by itself when the coordinator restarts on the same endpoint; a
request (generate, status, models) that then reaches a coordinator which has not seen this
client's Hello is answered HELLO_REQUIRED, and the client says Hello again and sends the same
request once more, unseen by the caller. A second HELLO_REQUIRED in a row, or a refused Hello,
raises. A request whose coordinator dies while it runs is not resumed: its wait runs out.
"""
import collections
import itertools
import os
import time

import zmq

from ._proto import pb

# The protocol version this client speaks (proto/protocol.h PROTO_VERSION_MAJOR / _MINOR).
PROTO_MAJOR = 1
PROTO_MINOR = 2  # 1.2: ERROR_CODE_HELLO_REQUIRED
SOFTWARE = "cinder-python 0.1.0"
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
MAX_FRAME_BYTES = 8 << 20


def _enum_name(enum, value, prefix):
    try:
        name = enum.Name(value)
    except ValueError:
        return f"UNKNOWN_{value}"
    return name[len(prefix):] if name.startswith(prefix) else name


class CinderError(Exception):
    """A refusal from the coordinator (code: "INVALID_ARGUMENT", "BUSY", ...), or a failure of
    the connection (code "TIMEOUT", "MALFORMED" for a frame that did not decode, "CLOSED")."""

    def __init__(self, code, message, request_id=""):
        super().__init__(f"{code}: {message}" + (f" (request {request_id})" if request_id else ""))
        self.code = code
        self.message = message
        self.request_id = request_id

    @classmethod
    def from_pb(cls, e):
        return cls(_enum_name(pb.ErrorCode, e.code, "ERROR_CODE_"), e.message, e.request_id)


class CinderTimeout(CinderError, TimeoutError):
    def __init__(self, message, request_id=""):
        super().__init__("TIMEOUT", message, request_id)


Chunk = collections.namedtuple("Chunk", "request_id text token_ids logprobs")


class Result:
    """How a request ended, with everything it produced."""

    def __init__(self, request_id):
        self.request_id = request_id
        self.text = ""
        self.token_ids = []
        self.logprobs = []
        self.chunks = 0
        self.finish_reason = None  # "stop", "length", "cancelled", "error", "timeout"
        self.usage = {}  # prompt_tokens, completion_tokens, cached_prompt_tokens
        self.timings = {}  # time_to_first_token_us, time_per_output_token_us, queue_us, total_us
        self.message = ""

    def __repr__(self):
        return (f"Result(request_id={self.request_id!r}, finish_reason={self.finish_reason!r}, "
                f"text={self.text!r}, usage={self.usage})")


class Stream:
    """The chunks of one request, as they come; .result once iteration has ended. Iterating
    raises CinderError when the coordinator refused the request."""

    def __init__(self, client, request_id, wait_ms, frame):
        self._client = client
        self.request_id = request_id
        self._wait_ms = wait_ms
        self.result = None
        self._partial = Result(request_id)
        self._frame = frame  # the encoded request until its first answer (sent again once)
        self._resent = False
        self._cancelled = False

    def __iter__(self):
        return self

    def __next__(self):
        if self.result is not None:
            raise StopIteration
        while True:
            env = self._client._next_for(self.request_id, self._wait_ms)
            body = env.WhichOneof("body")
            if body == "error" and env.error.code == pb.ERROR_CODE_HELLO_REQUIRED and \
                    self._frame is not None and self._cancelled:
                # Cancelled before the coordinator ever took it: nothing to send again.
                self._client._inflight.pop(self.request_id, None)
                self.result = self._partial
                self.result.finish_reason = "cancelled"
                raise StopIteration
            if body == "error" and env.error.code == pb.ERROR_CODE_HELLO_REQUIRED and \
                    self._frame is not None and not self._resent:
                # The coordinator does not know this connection (it restarted): Hello, then the
                # same request once more.
                self._resent = True
                try:
                    self._client._hello(self._client.connect_timeout_ms)
                    self._client._send_frame(self._frame)
                except BaseException:
                    self._client._inflight.pop(self.request_id, None)
                    raise
                continue
            self._frame = None
            break
        if body == "generate_chunk":
            g = env.generate_chunk
            r = self._partial
            r.text += g.text
            r.token_ids.extend(g.token_ids)
            r.logprobs.extend(g.logprobs)
            r.chunks += 1
            return Chunk(g.request_id, g.text, list(g.token_ids), list(g.logprobs))
        self._client._inflight.pop(self.request_id, None)
        if body == "error":
            self.result = self._partial
            self.result.finish_reason = "error"
            self.result.message = env.error.message
            raise CinderError.from_pb(env.error)
        d = env.generate_done
        r = self._partial
        r.finish_reason = _enum_name(pb.FinishReason, d.finish_reason, "FINISH_REASON_").lower()
        r.usage = {f: getattr(d.usage, f) for f in ("prompt_tokens", "completion_tokens",
                                                    "cached_prompt_tokens")}
        r.timings = {f: getattr(d.timings, f) for f in ("time_to_first_token_us",
                                                        "time_per_output_token_us", "queue_us",
                                                        "total_us")}
        r.message = d.message
        self.result = r
        raise StopIteration

    def cancel(self):
        """Asks the coordinator to end the request; iteration then ends with "cancelled"."""
        self._cancelled = True
        self._client.cancel(self.request_id)

    def collect(self):
        """Reads the rest and returns the Result."""
        for _ in self:
            pass
        return self.result


class Client:
    def __init__(self, endpoint=DEFAULT_ENDPOINT, timeout_ms=60000, connect_timeout_ms=5000):
        """Connects and says Hello; CinderTimeout when nothing answers within connect_timeout_ms,
        CinderError when the coordinator refuses. timeout_ms: the longest wait for the next
        message of a call (0: forever)."""
        self.endpoint = endpoint
        self.timeout_ms = timeout_ms
        self.connect_timeout_ms = connect_timeout_ms
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        self._sock.setsockopt(zmq.SNDTIMEO, connect_timeout_ms)
        self._ids = itertools.count(1)
        self._inflight = {}  # request id -> deque of envelopes not yet read by its stream
        self.server_hello = None
        try:
            try:
                self._sock.connect(endpoint)
            except zmq.ZMQError as e:
                raise CinderError("INVALID_ARGUMENT", f"cannot connect to {endpoint!r}: {e} "
                                  "(an endpoint reads tcp://HOST:PORT)") from None
            self._hello(connect_timeout_ms)
        except BaseException:
            self.close()
            raise

    def _hello(self, timeout_ms):
        """Says Hello and reads the coordinator's: when connecting, and again when a request is
        answered HELLO_REQUIRED. Messages of requests in flight that come first are filed."""
        env = pb.Envelope()
        env.hello.major = PROTO_MAJOR
        env.hello.minor = PROTO_MINOR
        env.hello.role = pb.ROLE_CLIENT
        env.hello.software = SOFTWARE
        self._send(env)
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            try:
                reply = self._recv(max(1, int((deadline - time.monotonic()) * 1000)))
            except CinderTimeout:
                raise CinderTimeout(f"no answer from {self.endpoint} within {timeout_ms} ms: is a "
                                    "cinder-coordinator listening there?") from None
            body = reply.WhichOneof("body")
            if body in ("generate_chunk", "generate_done") or (body == "error" and reply.error.request_id):
                self._dispatch(reply)
                continue
            if body == "error":
                raise CinderError.from_pb(reply.error)
            if body != "hello" or reply.hello.role != pb.ROLE_COORDINATOR:
                raise CinderError("MALFORMED", f"{self.endpoint} answered the hello with {body}, not a "
                                  "coordinator's hello")
            if reply.hello.major != PROTO_MAJOR:
                raise CinderError("UNSUPPORTED", f"the coordinator speaks protocol {reply.hello.major}."
                                  f"{reply.hello.minor}, this client {PROTO_MAJOR}.{PROTO_MINOR}")
            self.server_hello = reply.hello
            return

    # -- frames ---------------------------------------------------------------------------

    def _send(self, env):
        self._send_frame(env.SerializeToString())

    def _send_frame(self, frame):
        try:
            self._sock.send(frame)
        except zmq.Again:
            raise CinderTimeout(f"cannot send to {self.endpoint}: the coordinator is not reading") from None

    def _recv(self, timeout_ms):
        """One envelope, parsed; CinderTimeout after timeout_ms (0 or None: forever)."""
        if self._sock is None:
            raise CinderError("CLOSED", "the client is closed")
        if timeout_ms:
            if not self._sock.poll(timeout_ms, zmq.POLLIN):
                raise CinderTimeout(f"no answer from {self.endpoint} within {timeout_ms} ms")
        frames = self._sock.recv_multipart()
        if len(frames) != 1:
            raise CinderError("MALFORMED", f"the coordinator sent a message of {len(frames)} frames")
        env = pb.Envelope()
        try:
            env.ParseFromString(frames[0])
        except Exception as e:  # google.protobuf.message.DecodeError
            raise CinderError("MALFORMED", f"the coordinator sent a frame that does not decode: {e}") from None
        if env.WhichOneof("body") is None:
            raise CinderError("MALFORMED", "the coordinator sent an envelope without a body")
        return env

    def _wait(self, wait_ms):
        return self.timeout_ms if wait_ms is None else wait_ms

    def _dispatch(self, env):
        """Files a generate message under its request; True when it was one. A connection Error
        (no request id) is raised."""
        body = env.WhichOneof("body")
        if body in ("generate_chunk", "generate_done", "error"):
            rid = getattr(env, body).request_id
            if body == "error" and not rid:
                raise CinderError.from_pb(env.error)
            q = self._inflight.get(rid)
            if q is not None:
                q.append(env)
            # else: a late message of a request already over (a Cancel racing its Done): dropped
            return True
        return False

    def _next_for(self, request_id, wait_ms):
        q = self._inflight.get(request_id)
        if q is None:
            raise CinderError("NOT_FOUND", f"request {request_id!r} is not in flight", request_id)
        wait = self._wait(wait_ms)
        deadline = time.monotonic() + wait / 1000 if wait else None
        while not q:
            left = None
            if deadline is not None:
                left = max(1, int((deadline - time.monotonic()) * 1000))
            try:
                env = self._recv(left)
            except CinderTimeout:
                self.cancel(request_id)
                self._inflight.pop(request_id, None)
                raise CinderTimeout(f"no message for request {request_id} within {wait} ms (cancelled)",
                                    request_id) from None
            self._dispatch(env)
        return q.popleft()

    def _query(self, env, want, timeout_ms):
        self._send(env)
        wait = self._wait(timeout_ms)
        deadline = time.monotonic() + wait / 1000 if wait else None
        resent = False
        while True:
            left = None if deadline is None else max(1, int((deadline - time.monotonic()) * 1000))
            reply = self._recv(left)
            if reply.WhichOneof("body") == want:
                return getattr(reply, want)
            if reply.WhichOneof("body") == "error" and not reply.error.request_id and \
                    reply.error.code == pb.ERROR_CODE_HELLO_REQUIRED and not resent:
                resent = True  # as for a GenerateRequest: Hello, then the same query once more
                self._hello(self.connect_timeout_ms)
                self._send(env)
                continue
            self._dispatch(reply)

    # -- the API --------------------------------------------------------------------------

    def generate(self, prompt=None, chat=None, tokens=None, max_tokens=256, temperature=0.0, top_k=0,
                 top_p=1.0, min_p=0.0, repetition_penalty=1.0, seed=None, stop=None,
                 stop_token_ids=None, stream=True, logprobs=False, timeout_ms=0, request_id=None,
                 model="", wait_ms=None):
        """Exactly one of prompt (text), chat ([{"role", "content"}] or [(role, content)]) and
        tokens (ids). stream=True: a Stream of Chunks (its .result at the end); stream=False:
        the Result. timeout_ms is the coordinator's limit for the request; wait_ms the longest
        wait here for its next message (None: the client's timeout_ms)."""
        if sum(x is not None for x in (prompt, chat, tokens)) != 1:
            raise ValueError("generate needs exactly one of prompt, chat and tokens")
        req = pb.GenerateRequest()
        if prompt is not None:
            req.text = prompt
        elif tokens is not None:
            req.tokens.ids.extend(tokens)
        else:
            for m in chat:
                role, content = (m["role"], m["content"]) if isinstance(m, dict) else m
                req.chat.messages.add(role=role, content=content)
        s = req.sampling
        s.temperature = temperature
        s.top_k = top_k
        s.top_p = top_p
        s.min_p = min_p
        s.repetition_penalty = repetition_penalty
        if seed is not None:
            s.seed = seed
            s.has_seed = True
        req.max_tokens = max_tokens
        if isinstance(stop, str):
            stop = [stop]
        req.stop.extend(stop or [])
        req.stop_token_ids.extend(stop_token_ids or [])
        req.stream = stream
        req.logprobs = logprobs
        req.timeout_ms = timeout_ms
        req.model = model
        if request_id is not None:
            req.request_id = request_id
        st = self.generate_request(req, wait_ms=wait_ms)
        return st if stream else st.collect()

    def generate_request(self, req, wait_ms=None):
        """Sends a GenerateRequest as given (no checks here: the coordinator's to make) and
        returns its Stream. An empty request_id is filled in."""
        if not req.request_id:
            req.request_id = f"py{os.getpid()}-{next(self._ids)}"
        if req.request_id in self._inflight:
            raise CinderError("DUPLICATE", f"request {req.request_id!r} is already in flight", req.request_id)
        env = pb.Envelope()
        env.generate_request.CopyFrom(req)
        frame = env.SerializeToString()
        self._inflight[req.request_id] = collections.deque()
        try:
            self._send_frame(frame)
        except BaseException:
            self._inflight.pop(req.request_id, None)
            raise
        return Stream(self, req.request_id, wait_ms, frame)

    def cancel(self, request_id):
        """Asks the coordinator to end a request in flight on this client; its stream ends with
        finish_reason "cancelled". CinderError NOT_FOUND when it is not in flight here."""
        if request_id not in self._inflight:
            raise CinderError("NOT_FOUND", f"request {request_id!r} is not in flight", request_id)
        env = pb.Envelope()
        env.cancel.request_id = request_id
        self._send(env)

    def status(self, timeout_ms=None):
        """The coordinator's StatusReply (a cinder_pb2 message)."""
        env = pb.Envelope()
        env.status_request.SetInParent()
        return self._query(env, "status_reply", timeout_ms)

    def models(self, timeout_ms=None):
        """The coordinator's ModelsReply (a cinder_pb2 message)."""
        env = pb.Envelope()
        env.models_request.SetInParent()
        return self._query(env, "models_reply", timeout_ms)

    def close(self):
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
