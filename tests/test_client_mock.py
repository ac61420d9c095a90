#!/usr/bin/env python3
"""Every client against the stand-in coordinator (tests/cluster/mock_coordinator.py): the C
library (test_client ... mock), `cinder generate --server`, `cinder status`, `cinder models`
and the Python client, misbehaviour of the server included. Needs no model and no mpirun.

usage: test_client_mock.py CINDER_BINARY TEST_CLIENT_BINARY
(environment: PYTHONPATH with client/python and tests/cluster; CINDER_PB2_DIR)
"""
import json
import signal
import subprocess
import sys
import time

from cinder_client import CinderError, CinderTimeout, Client, pb
from mock_coordinator import MockCoordinator

cinder, test_client = sys.argv[1:3]
failures = 0


def check(cond, what):
    global failures
    if not cond:
        failures += 1
        print(f"FAIL: {what}")


def run(*args, timeout=60):
    p = subprocess.run([cinder, *args], capture_output=True, timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


with MockCoordinator() as m:
    ep = m.endpoint
    # The C library, every path.
    p = subprocess.run([test_client, ep, "mock"], capture_output=True, timeout=120)
    sys.stdout.write(p.stdout.decode() + p.stderr.decode())
    check(p.returncode == 0, "test_client against the stand-in")

    # cinder generate --server
    rc, out, err = run("generate", "--server", ep, "--prompt", "hello", "--temperature", "0", "--max-tokens", "5")
    check(rc == 0 and out == "w0 w1 w2 w3 w4\n", f"generate --server: rc {rc} {out!r} {err!r}")
    check("generated 5 tokens" in err and "finished by length" in err and "tokens/s" in err,
          f"generate --server report: {err!r}")
    rc, out, err = run("generate", "--server", ep, "--chat", "--system", "be brief", "--prompt", "hello",
                       "--max-tokens", "9", "--stop", " w2", "--seed", "3", "--top-k", "5")
    check(rc == 0 and out == "w0 w1\n" and "finished by stop" in err, f"generate --server --stop: {out!r} {err!r}")
    rc, out, err = run("generate", "--server", ep, "--prompt", "!busy")
    check(rc == 1 and "the coordinator refused: BUSY: the queue is full" in err, f"refused: rc {rc} {err!r}")
    rc, out, err = run("generate", "--server", ep, "--prompt", "!garbage")
    check(rc == 1 and "bad frame" in err, f"a frame that does not decode: rc {rc} {err!r}")
    for flags, msg in [(("--model", "x.gguf"), "--model"), (("--f32",), "--f32"), (("--threads", "2"), "--threads"),
                       (("--ignore-eos",), "--ignore-eos"), (("--top-p", "0"), "outside")]:
        rc, _, err = run("generate", "--server", ep, "--prompt", "hi", *flags)
        check(rc == 2 and msg in err, f"generate --server {flags}: rc {rc} {err!r}")
    rc, _, err = run("generate", "--prompt", "hi", "--timeout-ms", "5")
    check(rc == 2 and "--model PATH is required" in err, f"generate without --model or --server: {err!r}")

    # Ctrl-C cancels the request: the coordinator's Done(CANCELLED), exit 1.
    proc = subprocess.Popen([cinder, "generate", "--server", ep, "--prompt", "long", "--max-tokens", "100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.read(2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    check(first == b"w0" and proc.returncode == 1 and b"finished by cancelled" in err,
          f"SIGINT: rc {proc.returncode} {err!r}")

    # status and models
    rc, out, err = run("status", "--server", ep, "--json")
    try:
        st = json.loads(out)
    except ValueError:
        st = {}
    check(rc == 0 and st.get("groups", [{}])[0].get("state") == "GROUP_STATE_READY"
          and st.get("kv", {}).get("blocks_total") == 1024 and st.get("model") == "mock-model",
          f"status --json: rc {rc} {out[:300]!r} {err!r}")
    check(st.get("groups", [{}])[0].get("ranks", [{}])[0].get("device") == "cpu", "status --json ranks")
    rc, out, err = run("status", "--server", ep)
    check(rc == 0 and "group 0     ready, 1 rank" in out and "1024 blocks of 16 tokens" in out, f"status: {out!r}")
    rc, out, err = run("models", "--server", ep)
    check(rc == 0 and "mock-model" in out and "Q4_1" in out, f"models: {out!r} {err!r}")
    rc, out, err = run("models", "--server", ep, "--json")
    check(rc == 0 and json.loads(out)["models"][0]["eos_token_ids"] == [2], f"models --json: {out!r}")

    # The Python client.
    with Client(ep) as c:
        check(c.server_hello.software == "mock-coordinator", "python: hello")
        s = c.generate(prompt="hi", max_tokens=6)
        chunks = list(s)
        whole = c.generate(prompt="hi", max_tokens=6, stream=False)
        check(len(chunks) == 6 and "".join(ch.text for ch in chunks) == whole.text == s.result.text
              == "w0 w1 w2 w3 w4 w5", f"python: stream vs whole {chunks} {whole}")
        check(whole.chunks == 1 and whole.token_ids == list(range(100, 106)) and whole.finish_reason == "length"
              and whole.usage["completion_tokens"] == 6, f"python: result {whole}")
        r = c.generate(chat=[{"role": "user", "content": "a b"}], max_tokens=3, stream=False, logprobs=True)
        check(r.usage["prompt_tokens"] == 2 and r.logprobs == [-0.5] * 3, f"python: chat + logprobs {r}")
        # cancel mid-stream
        s = c.generate(prompt="long", max_tokens=100000)
        n = 0
        for ch in s:
            n += 1
            if n == 3:
                s.cancel()
        check(s.result.finish_reason == "cancelled" and 3 <= n < 1000, f"python: cancel {s.result} after {n}")
        # two requests in flight on one client, read in turn
        a = c.generate(prompt="x", max_tokens=4)
        b = c.generate(prompt="y", max_tokens=4)
        rb, ra = b.collect(), a.collect()
        check(ra.text == rb.text == "w0 w1 w2 w3", f"python: two in flight {ra} {rb}")
        # status in the middle of a stream files the chunks away
        a = c.generate(prompt="x", max_tokens=5)
        next(a)
        check(c.status().groups[0].state == pb.GROUP_STATE_READY, "python: status during a stream")
        check(a.collect().text == "w0 w1 w2 w3 w4", "python: stream after status")
        check(c.models().models[0].name == "mock-model", "python: models")
        # refusals: raw protobuf with top_p 0 (the stand-in's check), BUSY
        req = pb.GenerateRequest(text="hi", max_tokens=5)
        req.sampling.top_p = 0
        req.sampling.repetition_penalty = 1
        try:
            c.generate_request(req).collect()
            check(False, "python: top_p 0 accepted")
        except CinderError as e:
            check(e.code == "INVALID_ARGUMENT" and "top_p" in e.message, f"python: top_p 0: {e}")
        try:
            c.generate(prompt="!busy", stream=False)
            check(False, "python: BUSY not raised")
        except CinderError as e:
            check(e.code == "BUSY", f"python: busy: {e}")
        try:
            c.cancel("nope")
            check(False, "python: cancel of nothing")
        except CinderError as e:
            check(e.code == "NOT_FOUND", f"python: cancel of nothing: {e}")
        # silence: the wait ends the call
        t0 = time.monotonic()
        try:
            c.generate(prompt="!silent", stream=False, wait_ms=200)
            check(False, "python: silence not noticed")
        except CinderTimeout as e:
            check(time.monotonic() - t0 < 2 and "within 200 ms" in str(e), f"python: silence: {e}")
        try:
            c.generate(prompt="!garbage", stream=False)
            check(False, "python: garbage accepted")
        except CinderError as e:
            check(e.code == "MALFORMED", f"python: garbage: {e}")
        check(c.generate(prompt="after", max_tokens=2, stream=False).text == "w0 w1", "python: works after errors")
        # The stand-in forgets the connection (as a restarted coordinator would not know it):
        # generate, status and models each say Hello again by themselves.
        hellos = sum(1 for _, b in m.received if b == "hello")
        c.generate(prompt="!amnesia", max_tokens=2, stream=False)
        r = c.generate(prompt="after amnesia", max_tokens=3, stream=False)
        check(r.text == "w0 w1 w2" and r.finish_reason == "length", f"python: generate after amnesia {r}")
        c.generate(prompt="!amnesia", max_tokens=2, stream=False)
        check(c.status().model == "mock-model", "python: status after amnesia")
        c.generate(prompt="!amnesia", max_tokens=2, stream=False)
        check(c.models().models[0].name == "mock-model", "python: models after amnesia")
        c.generate(prompt="!amnesia", max_tokens=2, stream=False)
        a = c.generate(prompt="x", max_tokens=3)
        b = c.generate(prompt="y", max_tokens=3)
        rb, ra = b.collect(), a.collect()
        check(ra.text == rb.text == "w0 w1 w2", f"python: two in flight after amnesia {ra} {rb}")
        check(sum(1 for _, b in m.received if b == "hello") - hellos >= 4, "python: said Hello again")
        try:
            c.generate(prompt="!forget", stream=False)
            check(False, "python: a second HELLO_REQUIRED in a row accepted")
        except CinderError as e:
            check(e.code == "HELLO_REQUIRED", f"python: forget: {e}")
        check(c.generate(prompt="after forget", max_tokens=2, stream=False).text == "w0 w1",
              "python: works after a second HELLO_REQUIRED")

# No coordinator: a clear error, quickly, non-zero exit.
t0 = time.monotonic()
rc, out, err = run("generate", "--server", "tcp://127.0.0.1:1", "--prompt", "hi", timeout=30)
check(rc == 1 and "no answer from tcp://127.0.0.1:1 within 5000 ms" in err and "cinder-coordinator" in err,
      f"dead endpoint: rc {rc} {err!r}")
rc, out, err = run("status", "--server", "tcp://127.0.0.1:1", "--timeout-ms", "300", timeout=30)
check(rc == 1 and "within 300 ms" in err, f"status on a dead endpoint: {err!r}")
check(time.monotonic() - t0 < 15, "dead endpoints took too long")
rc, out, err = run("status", "--server", "not-an-endpoint")
check(rc == 1 and "tcp://HOST:PORT" in err, f"status on a bad endpoint: {err!r}")
try:
    Client("tcp://127.0.0.1:1", connect_timeout_ms=300)
    check(False, "python: dead endpoint")
except CinderTimeout as e:
    check("is a cinder-coordinator listening" in str(e), f"python: dead endpoint: {e}")

print("test_client_mock: all passed" if not failures else f"test_client_mock: {failures} failures")
sys.exit(1 if failures else 0)
