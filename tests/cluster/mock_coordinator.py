"""A stand-in coordinator for client tests: speaks the client half of the protocol over a real
ZeroMQ ROUTER with a fake model, and misbehaves on demand, so that clients can be tested on
what a real coordinator never does (frames that do not decode, silence, stray messages).

    with MockCoordinator() as m:      # binds a free loopback port, serves in a thread
        Client(m.endpoint) ...

The fake model answers a text or chat prompt with the words "w0 w1 w2 ..." (token ids 100,
101, ...), one chunk per token every `step_s` seconds, until max_tokens (LENGTH) or a stop
string (STOP). Prompts that start with a command misbehave:
    "!garbage"  a frame that is not an Envelope, then nothing
    "!silent"   no answer at all
    "!stray"    first a chunk and a done for another request id, then the normal answer
    "!busy"     Error(BUSY)
    "!connerr"  an Error without a request id (about the connection)
    "!amnesia"  the normal answer, then the connection's Hello is forgotten (as by a restarted
                coordinator): the next message is answered HELLO_REQUIRED
    "!forget"   forgets the Hello and answers HELLO_REQUIRED, every time (also when resent)
A message before Hello is answered HELLO_REQUIRED (with the request id when it has one), as
cinder-coordinator does.
"""
import threading
import time

import zmq

from cinder_client import pb



class MockCoordinator:
    def __init__(self, step_s=0.01, model="mock-model"):
        self.step_s = step_s
        self.model = model
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.hello = set()  # identities that said Hello
        self.running = {}  # (identity, request id) -> state dict
        self.received = []  # (identity, body name) of every envelope, for tests
        self.stop_flag = False
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag = True
        self.thread.join(5)
        self.sock.close(0)
        self.ctx.term()

    # -- sending ----------------------------------------------------------------------------

    def _send(self, ident, env):
        self.sock.send_multipart([ident, env.SerializeToString()])

    def _error(self, ident, rid, code, message):
        env = pb.Envelope()
        env.error.request_id = rid
        env.error.code = code
        env.error.message = message
        self._send(ident, env)

    def _done(self, ident, st, reason, message=""):
        env = pb.Envelope()
        d = env.generate_done
        d.request_id = st["id"]
        d.finish_reason = reason
        d.usage.prompt_tokens = st["prompt_tokens"]
        d.usage.completion_tokens = st["n"]
        d.timings.time_to_first_token_us = 1000
        d.timings.time_per_output_token_us = int(self.step_s * 1e6)
        d.timings.queue_us = 10
        d.timings.total_us = 1000 + st["n"] * int(self.step_s * 1e6)
        d.message = message
        self._send(ident, env)

    def _chunk(self, ident, rid, text, ids, logprobs=None):
        env = pb.Envelope()
        c = env.generate_chunk
        c.request_id = rid
        c.text = text
        c.token_ids.extend(ids)
        if logprobs:
            c.logprobs.extend(logprobs)
        self._send(ident, env)

    # -- the protocol ----------------------------------------------------------------------

    def _on_generate(self, ident, g):
        rid = g.request_id
        which = g.WhichOneof("prompt")
        if which == "text":
            text = g.text
        elif which == "chat":
            text = " ".join(m.content for m in g.chat.messages)
        elif which == "tokens":
            text = " ".join(map(str, g.tokens.ids))
        else:
            return self._error(ident, rid, pb.ERROR_CODE_MALFORMED, "generate_request has no prompt")
        if g.max_tokens < 1:
            return self._error(ident, rid, pb.ERROR_CODE_INVALID_ARGUMENT,
                               f"generate_request.max_tokens {g.max_tokens} is outside [1, 1048576]")
        if g.HasField("sampling") and not 0 < g.sampling.top_p <= 1:
            return self._error(ident, rid, pb.ERROR_CODE_INVALID_ARGUMENT,
                               f"generate_request.sampling.top_p {g.sampling.top_p:g} is outside (0, 1]")
        if (ident, rid) in self.running:
            return self._error(ident, rid, pb.ERROR_CODE_DUPLICATE, f"request {rid} is already in flight")
        if text.startswith("!garbage"):
            return self.sock.send_multipart([ident, b"\xff\xff\xff\xff not an envelope"])
        if text.startswith("!silent"):
            return
        if text.startswith("!busy"):
            return self._error(ident, rid, pb.ERROR_CODE_BUSY, "the queue is full")
        if text.startswith("!connerr"):
            return self._error(ident, "", pb.ERROR_CODE_INTERNAL, "something broke")
        if text.startswith("!forget"):
            self.hello.discard(ident)
            return self._error(ident, rid, pb.ERROR_CODE_HELLO_REQUIRED, "forgot you: say Hello first")
        if text.startswith("!stray"):
            self._chunk(ident, "someone-else", "stray", [1])
            self._done(ident, {"id": "someone-else", "prompt_tokens": 1, "n": 1}, pb.FINISH_REASON_STOP)
        st = {"id": rid, "prompt_tokens": len(text.split()), "n": 0, "max": g.max_tokens,
              "stop": list(g.stop), "stream": g.stream, "logprobs": g.logprobs, "text": "",
              "ids": [], "next": time.monotonic() + self.step_s, "amnesia": text.startswith("!amnesia")}
        self.running[(ident, rid)] = st

    def _step(self, now):
        for key in list(self.running):
            st = self.running[key]
            if now < st["next"]:
                continue
            ident = key[0]
            st["next"] = now + self.step_s
            word = ("" if st["n"] == 0 else " ") + f"w{st['n']}"
            tid = 100 + st["n"]
            st["n"] += 1
            full = st["text"] + word
            hit = next((s for s in st["stop"] if s in full), None)
            if hit:
                word = word[: max(0, full.index(hit) - len(st["text"]))]
            st["text"] += word
            st["ids"].append(tid)
            if st["stream"]:
                self._chunk(ident, st["id"], word, [tid], [-0.5] if st["logprobs"] else None)
            if hit or st["n"] >= st["max"]:
                if not st["stream"]:
                    self._chunk(ident, st["id"], st["text"], st["ids"],
                                [-0.5] * len(st["ids"]) if st["logprobs"] else None)
                self._done(ident, st, pb.FINISH_REASON_STOP if hit else pb.FINISH_REASON_LENGTH)
                del self.running[key]
                if st["amnesia"]:
                    self.hello.discard(ident)

    def _on_frame(self, ident, frame):
        env = pb.Envelope()
        try:
            env.ParseFromString(frame)
        except Exception:
            return self._error(ident, "", pb.ERROR_CODE_MALFORMED, "the frame does not decode")
        body = env.WhichOneof("body")
        self.received.append((ident, body))
        if ident not in self.hello or body == "hello":  # a second Hello is answered too
            if body != "hello":
                if body == "error":
                    return
                rid = getattr(env, body).request_id if body in ("generate_request", "cancel") else ""
                return self._error(ident, rid, pb.ERROR_CODE_HELLO_REQUIRED, f"{body} before Hello: say Hello first")
            self.hello.add(ident)
            reply = pb.Envelope()
            reply.hello.major = 1
            reply.hello.minor = 0
            reply.hello.role = pb.ROLE_COORDINATOR
            reply.hello.software = "mock-coordinator"
            return self._send(ident, reply)
        if body == "generate_request":
            self._on_generate(ident, env.generate_request)
        elif body == "cancel":
            st = self.running.pop((ident, env.cancel.request_id), None)
            if st is None:
                self._error(ident, env.cancel.request_id, pb.ERROR_CODE_NOT_FOUND, "no such request")
            else:
                self._done(ident, st, pb.FINISH_REASON_CANCELLED)
        elif body == "status_request":
            reply = pb.Envelope()
            s = reply.status_reply
            s.model = self.model
            s.uptime_ms = 1234
            g = s.groups.add(group=0, state=pb.GROUP_STATE_READY, world_size=1, running_seqs=len(self.running))
            g.ranks.add(rank=0, host="localhost", device="cpu", mem_bytes=1 << 30)
            for kv in (g.kv, s.kv):
                kv.blocks_total, kv.blocks_used, kv.blocks_free, kv.block_size = 1024, 10, 1014, 16
            s.running_seqs = len(self.running)
            self._send(ident, reply)
        elif body == "models_request":
            reply = pb.Envelope()
            reply.models_reply.models.add(name=self.model, architecture="llama", vocab_size=49152,
                                          context_length=8192, weight_type="Q4_1", chat=True,
                                          eos_token_ids=[2])
            self._send(ident, reply)
        else:
            self._error(ident, "", pb.ERROR_CODE_UNSUPPORTED, f"{body} is not for clients")

    def _serve(self):
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self.stop_flag:
            for _ in poller.poll(2):
                frames = self.sock.recv_multipart()
                if len(frames) == 2:
                    self._on_frame(frames[0], frames[1])
            self._step(time.monotonic())
