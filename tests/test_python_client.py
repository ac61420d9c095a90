#!/usr/bin/env python3
"""The Python client (client/python/cinder_client) against a real coordinator and one worker
rank serving SmolLM2 (tests/cluster/cluster.py): the greedy chat answer names Paris and equals
local `cinder generate`; streamed chunks add up to the non-streamed answer; cancel mid-stream
ends with "cancelled"; refused requests (raw protobuf the client would not build) raise with
INVALID_ARGUMENT; seeds repeat; limits, logprobs, status and models.
Skips (77) without the model, mpirun or the coordinator/worker programs.
"""
import os
import subprocess
import sys

import zmq

from cinder_client import CinderError, pb
from cluster import Cluster, build_dir, skip_unless_runnable

model = os.environ.get("CINDER_MODEL", os.path.expanduser("~/.cache/cinder/SmolLM2-135M-Instruct.Q4_1.gguf"))
skip_unless_runnable(model, name="test_python_client")
failures = 0


def check(cond, what):
    global failures
    if not cond:
        failures += 1
        print(f"FAIL: {what}")


question = [{"role": "user", "content": "What is the capital of France?"}]
local = subprocess.run([os.path.join(build_dir(), "cinder"), "generate", "--model", model, "--threads", "1", "--chat",
                        "--prompt", question[0]["content"], "--temperature", "0", "--max-tokens", "64"],
                       capture_output=True, timeout=600).stdout.decode()

with Cluster(model, ranks=1) as cl, cl.client() as c:
    r = c.generate(chat=question, temperature=0, max_tokens=64, stream=False)
    print(r)
    check("Paris" in r.text and r.finish_reason == "stop", f"Paris: {r}")
    check(r.text + "\n" == local, f"differs from local generate: {r.text!r} vs {local!r}")
    check(r.usage["prompt_tokens"] > 0 and r.usage["completion_tokens"] >= len(r.token_ids) > 0, f"usage {r.usage}")
    check(r.timings["total_us"] > 0, f"timings {r.timings}")

    s = c.generate(chat=question, temperature=0, max_tokens=64)
    chunks = list(s)
    check(len(chunks) > 1 and "".join(ch.text for ch in chunks) == r.text, f"stream: {chunks}")
    check(sum((ch.token_ids for ch in chunks), []) == r.token_ids, "stream token ids")
    check(s.result.finish_reason == "stop", f"stream result {s.result}")

    s = c.generate(prompt="1, 2, 3, 4, 5, 6, 7,", temperature=0, max_tokens=2000)
    n = 0
    for ch in s:
        n += 1
        if n == 3:
            s.cancel()
    check(s.result.finish_reason == "cancelled" and n < 1000, f"cancel: {s.result} after {n} chunks")

    for field, value in [("top_p", 0.0), ("max_tokens", 0)]:
        req = pb.GenerateRequest(text="Hello", max_tokens=8)
        req.sampling.top_p, req.sampling.repetition_penalty = 1, 1
        if field == "top_p":
            req.sampling.top_p = value
        else:
            req.max_tokens = value
        try:
            c.generate_request(req).collect()
            check(False, f"{field} {value} accepted")
        except CinderError as e:
            check(e.code == "INVALID_ARGUMENT" and field in e.message, f"{field} {value}: {e}")

    a = c.generate(prompt="Once upon a time", temperature=0.9, top_p=0.95, seed=5, max_tokens=16, stream=False)
    b = c.generate(prompt="Once upon a time", temperature=0.9, top_p=0.95, seed=5, max_tokens=16, stream=False)
    check(a.token_ids == b.token_ids and len(a.token_ids) > 0, f"seeded: {a} vs {b}")
    r = c.generate(prompt="1, 2, 3,", temperature=0, max_tokens=5, stream=False, logprobs=True)
    check(r.finish_reason == "length" and r.usage["completion_tokens"] == 5 and len(r.token_ids) == 5,
          f"max_tokens 5: {r}")
    check(len(r.logprobs) == 5 and all(lp <= 0 for lp in r.logprobs), f"logprobs {r.logprobs}")
    r = c.generate(tokens=[1, 2, 3, 4], temperature=0, max_tokens=3, stream=False)
    check(r.usage["prompt_tokens"] == 4, f"token prompt: {r}")

    st = c.status()
    check(len(st.groups) == 1 and st.groups[0].state == pb.GROUP_STATE_READY and st.kv.blocks_total > 0,
          f"status: {st}")
    check(st.requests_finished >= 5, f"status counters: {st}")
    m = c.models()
    check(len(m.models) == 1 and m.models[0].vocab_size == 49152 and m.models[0].chat, f"models: {m}")

    # Before Hello: Error(HELLO_REQUIRED), "Hello first".
    ctx = zmq.Context()
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(cl.endpoint)
    env = pb.Envelope()
    env.status_request.SetInParent()
    raw.send(env.SerializeToString())
    if raw.poll(5000):
        env.ParseFromString(raw.recv())
        check(env.WhichOneof("body") == "error" and env.error.code == pb.ERROR_CODE_HELLO_REQUIRED
              and "Hello" in env.error.message, f"before Hello: {env}")
    else:
        check(False, "no answer to a StatusRequest before Hello")
    raw.close()
    ctx.term()
    if failures:
        cl.report()

print("test_python_client: all passed" if not failures else f"test_python_client: {failures} failures")
sys.exit(1 if failures else 0)
