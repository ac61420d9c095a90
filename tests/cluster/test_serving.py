#!/usr/bin/env python3
"""Serving tests against a real cluster: cinder-coordinator + `mpirun -np 1 cinder-worker` (the
worker alone where mpirun is missing or CINDER_NO_MPIRUN=1) on loopback, the real SmolLM2
model, real sockets.

    test_serving.py MODEL SCENARIO     (SCENARIO: concurrency, prefix, preemption, lifecycle,
                                        bad_input, failover, no_mpirun, restart, kv_type,
                                        kv_type_errors, static)

Every scenario ends by checking that the KV pool is whole again (no block used, nothing running
or waiting). Exit 77 (ctest SKIP) when the model or the programs are missing.
"""
import os
import re
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import Cluster, build_dir, programs, skip_unless_runnable  # noqa: E402

import zmq  # noqa: E402
from cinder_client import CinderError, Client  # noqa: E402
from cinder_client import pb  # noqa: E402

FAILURES = []
PROTO_MINOR = 3  # proto/protocol.h: PROTO_VERSION_MINOR


def check(cond, what):
    if cond:
        print(f"  ok   {what}")
    else:
        print(f"  FAIL {what}")
        FAILURES.append(what)


def wait_idle(cl, timeout_s=20):
    """Waits until nothing runs or waits and no KV block is referenced; returns the status."""
    deadline = time.time() + timeout_s
    while True:
        st = cl.status()
        if (st.running_seqs == 0 and st.queue_waiting == 0 and st.kv.blocks_used == 0) or \
                time.time() > deadline:
            return st
        time.sleep(0.1)


def check_pool_whole(cl, what):
    st = wait_idle(cl)
    check(st.kv.blocks_used == 0 and st.running_seqs == 0 and st.queue_waiting == 0 and
          st.kv.blocks_free == st.kv.blocks_total,
          f"{what}: pool whole again (used {st.kv.blocks_used}, free {st.kv.blocks_free} of "
          f"{st.kv.blocks_total}, running {st.running_seqs}, waiting {st.queue_waiting})")
    return st


SENTENCES = [
    "The river runs past the old mill and under the stone bridge.",
    "Every morning the baker lights the oven before sunrise.",
    "Mathematics is the language in which the universe is written.",
    "A small robot learned to paint by watching the clouds.",
    "The library keeps maps of coastlines that no longer exist.",
    "Trains leave the northern station every fifteen minutes.",
]


def prompt_of(i, n_sentences):
    body = " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(n_sentences))
    return f"Request {i}. {body} Summarize the text above in one sentence."


def run_requests(endpoint, reqs, concurrent):
    """reqs: list of dicts of generate() arguments. Returns the Results in order."""
    out = [None] * len(reqs)
    errors = []

    def one(i):
        try:
            with Client(endpoint, timeout_ms=300000) as c:
                out[i] = c.generate(stream=True, **reqs[i]).collect()
        except Exception as e:  # reported below
            errors.append((i, e))

    if concurrent:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(reqs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for i in range(len(reqs)):
            one(i)
    for i, e in errors:
        check(False, f"request {i} raised {e!r}")
    return out


def compare(alone, together, what):
    same = 0
    for i, (a, b) in enumerate(zip(alone, together)):
        if a is None or b is None:
            continue
        if a.token_ids == b.token_ids and a.text == b.text and a.finish_reason == b.finish_reason:
            same += 1
        else:
            print(f"    request {i} differs:\n      alone:    {a.token_ids}\n      together: {b.token_ids}")
    check(same == len(alone), f"{what}: {same}/{len(alone)} outputs equal to the request served alone")


# ------------------------------------------------------------------------------------------

def scenario_concurrency(model):
    """16 concurrent clients with different prompts and lengths equal each request served
    alone; steps of 128 tokens force chunked prefill next to running decodes."""
    reqs = []
    for i in range(16):
        r = dict(chat=[("user", prompt_of(i, 1 + (i * 5) % 23))], max_tokens=6 + (i * 7) % 29,
                 temperature=0.0)
        if i % 5 == 4:  # seeded sampling: the random stream must not depend on the batch
            r.update(temperature=0.9, top_p=0.95, seed=1000 + i)
        reqs.append(r)
    with Cluster(model, coordinator_args=["--max-batch-tokens", "128"]) as cl:
        alone = run_requests(cl.endpoint, reqs, concurrent=False)
        check(all(r is not None and r.finish_reason in ("stop", "length") for r in alone),
              "16 requests alone finished")
        t0 = time.time()
        together = run_requests(cl.endpoint, reqs, concurrent=True)
        print(f"    16 concurrent requests in {time.time() - t0:.1f} s")
        compare(alone, together, "16 concurrent clients")
        long_prompts = [r.usage["prompt_tokens"] for r in alone if r and r.usage["prompt_tokens"] > 128]
        check(len(long_prompts) >= 4, f"{len(long_prompts)} prompts longer than a step's budget (chunked)")
        st = check_pool_whole(cl, "after the concurrent run")
        check(st.requests_finished == 32 and st.output_tokens_total > 0,
              f"status counts 32 finished requests ({st.requests_finished})")


def scenario_prefix(model):
    """Requests sharing a long system prompt hit the prefix cache, and their outputs equal the
    uncached engine's (`cinder generate` in one process, no cache)."""
    system = "You are a careful assistant. " + " ".join(SENTENCES * 5)
    questions = ["What is 2 + 2?", "Name a color.", "What is the capital of France?",
                 "Say hello."]
    with Cluster(model) as cl:
        with cl.client() as c:
            results = [c.generate(chat=[("system", system), ("user", q)], max_tokens=12,
                                  temperature=0.0, stream=False) for q in questions]
            st = c.status()
        cached = [r.usage["cached_prompt_tokens"] for r in results]
        prompt = results[0].usage["prompt_tokens"]
        check(prompt > 200, f"the shared prompt is long ({prompt} tokens)")
        check(cached[0] == 0, f"the first request found nothing cached ({cached[0]})")
        check(all(x >= prompt - 32 - 16 for x in cached[1:]),
              f"the later requests found the system prompt cached ({cached[1:]} of ~{prompt})")
        check(st.prefix_cache_hits > 0 and st.prefix_cache_hits <= st.prefix_cache_queries,
              f"Status counts prefix-cache hits ({st.prefix_cache_hits} of "
              f"{st.prefix_cache_queries} blocks)")
        cinder = os.path.join(build_dir(), "cinder")
        for q, r in zip(questions, results):
            local = subprocess.run([cinder, "generate", "--model", model, "--chat", "--system", system,
                                    "--prompt", q, "--temperature", "0", "--max-tokens", "12",
                                    "--threads", "1"], capture_output=True, text=True, timeout=300)
            text = local.stdout[:-1] if local.stdout.endswith("\n") else local.stdout
            check(local.returncode == 0 and text == r.text,
                  f"cached output equals the uncached engine's for {q!r} ({r.text!r} vs {text!r})")
        check_pool_whole(cl, "after the prefix-cache run")


def scenario_preemption(model):
    """A KV pool of 24 blocks and 8 requests that need ~10 each: the scheduler preempts and
    recomputes, every request finishes, outputs unchanged."""
    reqs = []
    for i in range(8):
        r = dict(chat=[("user", prompt_of(i, 4 + i % 3))], max_tokens=48, temperature=0.0)
        if i % 4 == 1:
            r.update(temperature=0.8, seed=77 + i, repetition_penalty=1.1)
        reqs.append(r)
    args = ["--kv-blocks", "24", "--block-size", "16", "--max-batch-tokens", "96"]
    with Cluster(model, coordinator_args=args) as cl:
        alone = run_requests(cl.endpoint, reqs, concurrent=False)
        before = cl.status().preemptions
        together = run_requests(cl.endpoint, reqs, concurrent=True)
        st = check_pool_whole(cl, "after the preemption run")
        check(st.kv.blocks_total == 24, f"the pool has 24 blocks ({st.kv.blocks_total})")
        check(st.preemptions > before, f"requests were preempted ({st.preemptions - before} times)")
        check(all(r is not None for r in together), "every request finished")
        compare(alone, together, "under preemption")


def run_static_batch(cl, reqs):
    """Sends a request that holds the group, then reqs while it runs, so that a static batch
    takes them all at once; polls Status until they are done. Returns their Results and the
    largest excess of running sequences over the requests not yet done at the client."""
    out = [None] * len(reqs)
    errors = []

    def one(i, req, store):
        try:
            with Client(cl.endpoint, timeout_ms=300000) as c:
                store[i] = c.generate(stream=True, **req).collect()
        except Exception as e:  # reported below
            errors.append((i, e))

    holder = [None]
    h = threading.Thread(target=one, args=(0, dict(chat=[("user", prompt_of(99, 2))],
                                                   max_tokens=24, temperature=0.0), holder))
    h.start()
    while cl.status().running_seqs == 0:
        time.sleep(0.01)
    threads = [threading.Thread(target=one, args=(i, r, out)) for i, r in enumerate(reqs)]
    for t in threads:
        t.start()
    h.join()
    excess = -len(reqs)
    while any(t.is_alive() for t in threads):
        st = cl.status()
        not_done = sum(1 for r in out if r is None)
        excess = max(excess, st.running_seqs - not_done)
        time.sleep(0.02)
    for t in threads:
        t.join()
    for i, e in errors:
        check(False, f"request {i} raised {e!r}")
    return out, excess


def scenario_static(model):
    """Static batches (--no-continuous-batching): a batch of 8 requests (6 short, 2 long)
    gives each the output it has alone; while the long ones run, the short ones' slots stay in
    the steps (Status counts them running: a fixed-shape batch) and end with the batch; with
    --static-early-exit they leave at once. The pool is whole again after each."""
    reqs = [dict(chat=[("user", prompt_of(i, 1 + i % 3))], max_tokens=4 if i < 6 else 96,
                 temperature=0.0) for i in range(8)]
    reqs[2].update(temperature=0.9, seed=42)
    reqs[7].update(temperature=0.8, top_p=0.9, seed=7)
    for mode, args in (("padded", ["--no-continuous-batching"]),
                       ("early exit", ["--no-continuous-batching", "--static-early-exit"])):
        with Cluster(model, coordinator_args=args) as cl:
            alone = run_requests(cl.endpoint, reqs, concurrent=False)
            together, excess = run_static_batch(cl, reqs)
            compare(alone, together, f"static batch ({mode})")
            if mode == "padded":
                check(excess >= 4, f"padded: ended requests' slots stay in the batch until it "
                                   f"ends (running - not done reached {excess}, want >= 4)")
            else:
                check(excess <= 0, f"early exit: ended requests leave the batch at once "
                                   f"(running - not done reached {excess}, want <= 0)")
            check_pool_whole(cl, f"after the static batch ({mode})")
    bad = subprocess.run([programs()[0], "--model", model, "--static-early-exit"],
                         capture_output=True, text=True, timeout=60)
    check(bad.returncode == 2 and "--no-continuous-batching" in bad.stderr,
          f"--static-early-exit alone is refused (exit {bad.returncode}: {bad.stderr.strip()[:80]!r})")


def raw_socket(endpoint, hello=True):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    if hello:
        env = pb.Envelope()
        env.hello.major = 1
        env.hello.role = pb.ROLE_CLIENT
        s.send(env.SerializeToString())
        assert recv(s).WhichOneof("body") == "hello"
    return s


def recv(s, timeout_ms=60000):
    if not s.poll(timeout_ms):
        raise TimeoutError("no reply")
    env = pb.Envelope()
    env.ParseFromString(s.recv())
    return env


def send_request(s, rid, **fields):
    env = pb.Envelope()
    q = env.generate_request
    q.request_id = rid
    q.max_tokens = fields.pop("max_tokens", 16)
    q.text = fields.pop("text", "Hello there")
    for k, v in fields.items():
        if k == "sampling":
            q.sampling.top_p = 1.0
            q.sampling.repetition_penalty = 1.0
            for sk, sv in v.items():
                setattr(q.sampling, sk, sv)
        elif k == "tokens":
            q.tokens.ids.extend(v)
        else:
            setattr(q, k, v)
    s.send(env.SerializeToString())


def scenario_lifecycle(model):
    """Cancel, timeout and a client that disconnects mid-stream all give their blocks back."""
    story = [("user", "Write a very long story about a dragon who learns to cook. Make it long.")]
    with Cluster(model) as cl:
        with cl.client() as c:
            st = c.generate(chat=story, max_tokens=400, temperature=0.0)
            n = 0
            for _ in st:
                n += 1
                if n == 3:
                    st.cancel()
            r = st.result
            check(r.finish_reason == "cancelled" and r.usage["completion_tokens"] < 400,
                  f"cancel mid-stream ends the request as cancelled ({r.finish_reason}, "
                  f"{r.usage.get('completion_tokens')} tokens)")
        check_pool_whole(cl, "after cancel")

        with cl.client() as c:
            r = c.generate(chat=story, max_tokens=400, temperature=0.0, timeout_ms=700, stream=False)
            check(r.finish_reason == "timeout" and r.timings["total_us"] >= 700000,
                  f"a 700 ms timeout ends the request as timeout ({r.finish_reason}, "
                  f"{r.timings.get('total_us', 0) / 1000:.0f} ms)")
        check_pool_whole(cl, "after timeout")

        before = cl.status().output_tokens_total
        s = raw_socket(cl.endpoint)
        env = pb.Envelope()
        env.generate_request.request_id = "gone"
        env.generate_request.max_tokens = 400
        env.generate_request.stream = True
        env.generate_request.chat.messages.add(role="user", content=story[0][1])
        s.send(env.SerializeToString())
        got = 0
        while got < 2:
            if recv(s).WhichOneof("body") == "generate_chunk":
                got += 1
        s.close(0)
        time.sleep(0.5)
        st = check_pool_whole(cl, "after a client disconnected mid-stream")
        made = st.output_tokens_total - before
        check(st.requests_finished == 3 and made < 50,
              f"the disconnected request was ended early ({made} of up to 400 tokens made)")

        s = raw_socket(cl.endpoint)
        env = pb.Envelope()
        env.cancel.request_id = "nobody"
        s.send(env.SerializeToString())
        e = recv(s)
        check(e.WhichOneof("body") == "error" and e.error.code == pb.ERROR_CODE_NOT_FOUND,
              "cancel of an unknown request: NOT_FOUND")
        s.close(0)


def expect_error(s, code, what, rid=None):
    e = recv(s)
    ok = e.WhichOneof("body") == "error" and e.error.code == code and \
        (rid is None or e.error.request_id == rid)
    msg = e.error.message if e.WhichOneof("body") == "error" else e.WhichOneof("body")
    check(ok and len(msg) > 10, f"{what}: {pb.ErrorCode.Name(code)} ({msg!r})")


def scenario_bad_input(model):
    """Each bad input gets an Error with a reason; the coordinator keeps serving the others."""
    with Cluster(model, coordinator_args=["--max-queue", "4", "--max-batch-tokens", "64"]) as cl:
        s = raw_socket(cl.endpoint, hello=False)
        send_request(s, "early")
        expect_error(s, pb.ERROR_CODE_HELLO_REQUIRED, "a request before Hello", "early")
        env = pb.Envelope()
        env.status_request.SetInParent()
        s.send(env.SerializeToString())
        expect_error(s, pb.ERROR_CODE_HELLO_REQUIRED, "a status request before Hello", "")
        env = pb.Envelope()
        env.hello.major = 2
        env.hello.role = pb.ROLE_CLIENT
        s.send(env.SerializeToString())
        expect_error(s, pb.ERROR_CODE_UNSUPPORTED, "a Hello of protocol major 2")
        s.close(0)

        s = raw_socket(cl.endpoint)
        s.send(b"\xff\xff\xff\xff not protobuf")
        expect_error(s, pb.ERROR_CODE_MALFORMED, "a malformed frame")
        s.send_multipart([b"\x0a\x00", b"\x0a\x00"])
        expect_error(s, pb.ERROR_CODE_MALFORMED, "a message of two frames")
        env = pb.Envelope()
        env.hello.major = 1
        env.hello.role = 77
        s.send(env.SerializeToString())
        expect_error(s, pb.ERROR_CODE_MALFORMED, "an unknown enum value")
        send_request(s, "ctx", tokens=[1] * 9000)
        expect_error(s, pb.ERROR_CODE_TOO_LARGE, "a prompt over the context", "ctx")
        send_request(s, "vocab", tokens=[1, 2, 60000])
        expect_error(s, pb.ERROR_CODE_INVALID_ARGUMENT, "a token id outside the vocabulary", "vocab")
        for rid, sampling in [("temp", {"temperature": -1.0}), ("topp", {"top_p": 0.0}),
                              ("topk", {"top_k": -5}), ("rep", {"repetition_penalty": 1e9}),
                              ("hot", {"temperature": 1e6})]:
            send_request(s, rid, sampling=sampling)
            expect_error(s, pb.ERROR_CODE_INVALID_ARGUMENT, f"sampling {sampling}", rid)
        send_request(s, "zero", max_tokens=0)
        expect_error(s, pb.ERROR_CODE_INVALID_ARGUMENT, "max_tokens 0", "zero")
        send_request(s, "huge", max_tokens=1 << 30)
        expect_error(s, pb.ERROR_CODE_INVALID_ARGUMENT, "max_tokens 2^30", "huge")
        send_request(s, "model", model="gpt-99")
        expect_error(s, pb.ERROR_CODE_NOT_FOUND, "an unknown model", "model")
        send_request(s, "dup", max_tokens=64)
        send_request(s, "dup", max_tokens=64)
        expect_error(s, pb.ERROR_CODE_DUPLICATE, "a request id already in flight", "dup")
        while recv(s).WhichOneof("body") != "generate_done":
            pass

        # A flood beyond the queue bound: each request gets exactly one answer, some "busy".
        n = 40
        for i in range(n):
            send_request(s, f"flood{i}", max_tokens=4)
        ends = {}
        while len(ends) < n:
            e = recv(s)
            b = e.WhichOneof("body")
            if b == "error":
                ends[e.error.request_id] = ("error", e.error.code, e.error.message)
            elif b == "generate_done":
                ends[e.generate_done.request_id] = ("done", e.generate_done.finish_reason, "")
        busy = [v for v in ends.values() if v[0] == "error"]
        done = [v for v in ends.values() if v[0] == "done"]
        check(len(ends) == n and all(v[1] == pb.ERROR_CODE_BUSY and "busy" in v[2] for v in busy)
              and len(busy) > 0 and len(done) >= 4,
              f"a flood of {n}: {len(done)} served, {len(busy)} refused as busy")
        s.close(0)

        with cl.client() as c:
            r = c.generate(chat=[("user", "What is the capital of France?")], max_tokens=16,
                           temperature=0.0, stream=False)
            check("Paris" in r.text, f"still serving after all that ({r.text!r})")
        check_pool_whole(cl, "after bad input")
        cl.check_alive()


def scenario_failover(model):
    """Two worker groups; one is killed (SIGKILL) while requests run on both: its requests are
    recomputed on the survivor, every request finishes, outputs unchanged, nothing is lost."""
    reqs = [dict(chat=[("user", prompt_of(i, 2 + i % 4))], max_tokens=40, temperature=0.0)
            for i in range(8)]
    reqs[3].update(temperature=0.7, seed=5)
    with Cluster(model, groups=2) as cl:
        alone = run_requests(cl.endpoint, reqs, concurrent=False)
        out = [None]

        def run():
            out[0] = run_requests(cl.endpoint, reqs, concurrent=True)

        t = threading.Thread(target=run)
        t.start()
        deadline = time.time() + 60
        while time.time() < deadline:  # until both groups run something
            st = cl.status()
            if all(g.running_seqs > 0 for g in st.groups):
                break
            time.sleep(0.05)
        busy = [g.running_seqs for g in cl.status().groups]
        cl.kill_group(1)
        t.join()
        # A group found dead while it runs something is lost at once (its Step cannot be sent);
        # one whose last sequence ended just before the kill is found by the heartbeat timeout
        # (20 s), so wait for that rather than read the state once.
        deadline = time.time() + 30
        while True:
            states = {g.group: pb.GroupState.Name(g.state) for g in cl.status().groups}
            if states.get(1) == "GROUP_STATE_LOST" or time.time() > deadline:
                break
            time.sleep(0.2)
        check(states.get(1) == "GROUP_STATE_LOST" and states.get(0) == "GROUP_STATE_READY",
              f"the killed group is lost, the other ready ({states}; running before: {busy})")
        check(all(r is not None for r in out[0]), "every request finished")
        compare(alone, out[0], "after losing a group mid-run")
        st = wait_idle(cl)
        check(st.running_seqs == 0 and st.queue_waiting == 0, "nothing left running or waiting")


def scenario_no_mpirun(model):
    """A one-rank group started without mpirun (cinder-worker as a plain process: a build
    without MPI runs one rank, an MPI build alone is a one-rank MPI job) registers as a CPU
    rank, serves concurrent requests exactly as alone, and answers greedily as `cinder
    generate` does in one process."""
    reqs = [dict(chat=[("user", prompt_of(i, 1 + i % 3))], max_tokens=8 + 3 * i, temperature=0.0)
            for i in range(6)]
    reqs[4].update(temperature=0.8, seed=21)
    with Cluster(model, mpirun=False) as cl:
        argv0 = cl.groups[0].argv[0]
        check(argv0 == cl.worker_bin, f"the worker was started without mpirun ({argv0})")
        ranks = [r for g in cl.status().groups for r in g.ranks]
        check(len(ranks) == 1 and ranks[0].device == "cpu" and ranks[0].mem_bytes > 0,
              f"one CPU rank with its free memory ({[(r.device, r.mem_bytes) for r in ranks]})")
        alone = run_requests(cl.endpoint, reqs, concurrent=False)
        check(all(r is not None and r.finish_reason in ("stop", "length") for r in alone),
              "6 requests alone finished")
        compare(alone, run_requests(cl.endpoint, reqs, concurrent=True), "6 concurrent clients")
        q = prompt_of(0, 1)
        local = subprocess.run([os.path.join(build_dir(), "cinder"), "generate", "--model", model,
                                "--chat", "--prompt", q, "--temperature", "0", "--max-tokens",
                                "8", "--threads", "1"], capture_output=True, text=True, timeout=300)
        text = local.stdout[:-1] if local.stdout.endswith("\n") else local.stdout
        check(local.returncode == 0 and alone[0] is not None and text == alone[0].text,
              f"the answer equals the one-process engine's ({text!r})")
        check_pool_whole(cl, "after the run without mpirun")


def scenario_restart(model):
    """The coordinator restarts on the same endpoint (SIGTERM, a new one on the same ports, the
    worker group started again). Clients connected before it keep working without reconnecting
    by hand: their next request reaches a coordinator that has not seen their Hello, is answered
    HELLO_REQUIRED, and the client says Hello again and resends it - libcinder-client (two
    clients of tests/test_client.c: generate, then status and models) and the Python client
    (one asks status first, another generates first)."""
    question = [("user", "What is the capital of France?")]
    test_client = os.path.join(build_dir(), "tests", "test_client")
    check(os.access(test_client, os.X_OK), f"{test_client} is built")
    with Cluster(model) as cl:
        c1, c2 = cl.client(), cl.client()
        r = c1.generate(chat=question, max_tokens=16, temperature=0.0, stream=False)
        check("Paris" in r.text, f"before the restart: {r.text!r}")
        uptime = c2.status().uptime_ms
        proc = subprocess.Popen([test_client, cl.endpoint, "restart"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = proc.stdout.readline()
        check(line.strip() == "connected", f"the C clients connected and generated ({line!r})")

        t0 = time.time()
        cl.restart_coordinator()
        print(f"    the coordinator restarted, its group ready again in {time.time() - t0:.1f} s")
        out, _ = proc.communicate("go\n", timeout=600)
        sys.stdout.write("".join(f"    | {x}\n" for x in out.splitlines()))
        check(proc.returncode == 0, "libcinder-client: generate, status and models after the restart")

        try:
            st = c1.status()
            check(st.requests_total == 1 and st.uptime_ms < uptime + (time.time() - t0) * 1000,
                  f"python: status after the restart is the new coordinator's ({st.requests_total} "
                  f"requests, up {st.uptime_ms} ms)")
        except CinderError as e:
            check(False, f"python: status after the restart: {e}")
        try:
            r = c2.generate(chat=question, max_tokens=16, temperature=0.0, stream=False)
            check("Paris" in r.text, f"python: generate after the restart: {r.text!r}")
            check(c2.models().models[0].vocab_size > 0, "python: models after the restart")
        except CinderError as e:
            check(False, f"python: generate after the restart: {e}")
        c1.close()
        c2.close()
        check_pool_whole(cl, "after the restart")
        cl.check_alive()


# SmolLM2-135M's KV block of 16 tokens in F32: 30 layers x 3 KV heads x 64 dims x 16 tokens x
# (K + V) x 4 bytes.
SMOLLM2_F32_BLOCK_BYTES = 30 * 3 * 64 * 16 * 2 * 4


def local_generate(model, prompt, max_tokens, *extra, chat=True):
    """`cinder generate` in one process (greedy): (exit status, text, tokens it generated)."""
    argv = [os.path.join(build_dir(), "cinder"), "generate", "--model", model, "--prompt", prompt,
            "--temperature", "0", "--max-tokens", str(max_tokens), "--threads", "1", *extra]
    if chat:
        argv.append("--chat")
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    text = p.stdout[:-1] if p.stdout.endswith("\n") else p.stdout
    m = re.search(r"generated (\d+) tokens", p.stderr)
    return p.returncode, text, int(m.group(1)) if m else -1


def scenario_kv_type(model):
    """--kv-type f16: the workers make F16 pools; --kv-mib holds twice the F32 blocks; Status
    (the protocol, `cinder status` and --json) says F16; answers equal `cinder generate
    --kv-type f16` token for token. A bad --kv-type is refused at once."""
    coordinator = os.path.join(build_dir(), "cinder-coordinator")
    p = subprocess.run([coordinator, "--model", model, "--kv-type", "fp8"], capture_output=True,
                       text=True, timeout=60)
    check(p.returncode == 2 and "--kv-type is f32, f16 or bf16, not 'fp8'" in p.stderr,
          f"--kv-type fp8: exit {p.returncode}, {p.stderr.strip()[:120]!r}")
    kv_mib = 16
    with Cluster(model, coordinator_args=["--kv-type", "f16", "--kv-mib", str(kv_mib)]) as cl:
        st = cl.status()
        half = SMOLLM2_F32_BLOCK_BYTES // 2
        want = (kv_mib << 20) // half
        check(st.kv.kv_type == pb.KV_TYPE_F16 and st.groups[0].kv.kv_type == pb.KV_TYPE_F16,
              f"Status says F16 ({pb.KvType.Name(st.kv.kv_type)}, group "
              f"{pb.KvType.Name(st.groups[0].kv.kv_type)})")
        check(st.kv.block_bytes == half and st.groups[0].kv.block_bytes == half,
              f"a block takes half its F32 bytes ({st.kv.block_bytes}, F32 {SMOLLM2_F32_BLOCK_BYTES})")
        check(st.kv.blocks_total == want,
              f"--kv-mib {kv_mib} holds {st.kv.blocks_total} F16 blocks (want {want}; F32: "
              f"{(kv_mib << 20) // SMOLLM2_F32_BLOCK_BYTES})")
        cinder = os.path.join(build_dir(), "cinder")
        out = subprocess.run([cinder, "status", "--server", cl.endpoint], capture_output=True,
                             text=True, timeout=60).stdout
        check(f"{want} blocks of 16 tokens, F16 (360.0 KiB a block" in out,
              f"cinder status shows the type and the bytes: "
              f"{[x.strip() for x in out.splitlines() if x.startswith('kv')]}")
        js = subprocess.run([cinder, "status", "--server", cl.endpoint, "--json"],
                            capture_output=True, text=True, timeout=60).stdout
        check('"kv_type":\t"KV_TYPE_F16"' in js and f'"block_bytes":\t{half}' in js,
              "cinder status --json shows kv_type and block_bytes")

        with cl.client() as c:
            r = c.generate(chat=[("user", "What is the capital of France?")], max_tokens=16,
                           temperature=0.0, stream=False)
            check("Paris" in r.text, f"F16 KV: the capital of France is {r.text!r}")
            for q in ["Write a long story about a lighthouse keeper and a storm.",
                      prompt_of(2, 3)]:
                r = c.generate(chat=[("user", q)], max_tokens=24, temperature=0.0, stream=False)
                rc, text, n = local_generate(model, q, 24, "--kv-type", "f16")
                check(rc == 0 and r.finish_reason == "length" and n == len(r.token_ids) == 24
                      and text == r.text,
                      f"greedy with F16 KV equals `cinder generate --kv-type f16` for {q[:30]!r}...: "
                      f"{len(r.token_ids)} and {n} tokens, {r.text[:40]!r} vs {text[:40]!r}")
        check_pool_whole(cl, "after the F16 run")


def fake_worker(control, group, minor=PROTO_MINOR):
    """A DEALER that joins as one rank of group: Hello, Register. Returns (socket, ShardPlan)."""
    s = raw_socket(control, hello=False)
    env = pb.Envelope()
    env.hello.major = 1
    env.hello.minor = minor
    env.hello.role = pb.ROLE_WORKER
    s.send(env.SerializeToString())
    assert recv(s, 10000).WhichOneof("body") == "hello"
    env = pb.Envelope()
    r = env.register_rank
    r.rank, r.group, r.world_size, r.host, r.device, r.mem_bytes = 0, group, 1, "fake", "fake-gpu", 1 << 30
    s.send(env.SerializeToString())
    while True:
        e = recv(s, 10000)
        if e.WhichOneof("body") == "shard_plan":
            return s, e.shard_plan


def fake_coordinator_join(model, plan_edit, timeout_s=30):
    """A real cinder-worker against a ROUTER that answers its Register with a ShardPlan changed
    by plan_edit. Returns (the worker's first message after Register, exit status, stderr)."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    _, worker = programs(build_dir())
    p = subprocess.Popen([worker, "--coordinator", f"tcp://127.0.0.1:{port}", "--threads", "1",
                          "--timeout-ms", "10000"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    answer = None
    try:
        deadline = time.time() + timeout_s
        while time.time() < deadline and answer is None:
            if not router.poll(500):
                if p.poll() is not None:
                    break
                continue
            ident, frame = router.recv_multipart()
            env = pb.Envelope()
            env.ParseFromString(frame)
            body = env.WhichOneof("body")
            if body == "hello":
                h = pb.Envelope()
                h.hello.major, h.hello.minor, h.hello.role = 1, PROTO_MINOR, pb.ROLE_COORDINATOR
                router.send_multipart([ident, h.SerializeToString()])
            elif body == "register_rank":
                e = pb.Envelope()
                sp = e.shard_plan
                sp.group, sp.rank, sp.world_size, sp.model_path = env.register_rank.group, 0, 1, model
                sp.tp_size, sp.ep_size, sp.block_size, sp.kv_blocks = 1, 1, 16, 64
                sp.max_batch_tokens, sp.max_seqs = 64, 4
                sp.q_heads.count, sp.kv_heads.count, sp.ffn.count, sp.vocab.count = 9, 3, 1536, 49152
                plan_edit(sp)
                router.send_multipart([ident, e.SerializeToString()])
            elif body != "heartbeat":
                answer = env
        out, _ = p.communicate(timeout=timeout_s)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        router.close(0)
    return answer, p.returncode, out


def scenario_kv_type_errors(model):
    """What cannot have the asked KV type says so and nobody crashes: a worker given a KvType it
    does not know (a newer coordinator's) refuses the plan by name, and one that cannot load
    its plan says why, back to the coordinator, and exits 1; the coordinator logs a rank's
    refusal and drops its group, and turns away a rank (from before 1.3) that made another type."""
    a, rc, out = fake_coordinator_join(model, lambda sp: setattr(sp, "kv_type", 9))
    msg = a.error.message if a is not None and a.WhichOneof("body") == "error" else repr(a)
    check(a is not None and a.WhichOneof("body") == "error" and "shard_plan.kv_type" in msg,
          f"an unknown kv_type: the worker answers Error ({msg!r})")
    check(rc == 1 and "could not join" in out, f"... and exits 1 ({rc}): {out.strip()[-160:]!r}")

    def bad_path(sp):
        sp.kv_type = pb.KV_TYPE_F16
        sp.model_path = "/nonexistent/model.gguf"
    a, rc, out = fake_coordinator_join(model, bad_path)
    msg = a.error.message if a is not None and a.WhichOneof("body") == "error" else repr(a)
    check(a is not None and a.WhichOneof("body") == "error" and "cannot take the shard plan" in msg
          and "/nonexistent/model.gguf" in msg,
          f"a plan the worker cannot load: Error back to the coordinator ({msg!r})")
    check(rc == 1, f"... and exits 1 ({rc})")

    with Cluster(model, coordinator_args=["--kv-type", "f16", "--kv-blocks", "64"]) as cl:
        s, plan = fake_worker(cl.control, 5)
        check(plan.kv_type == pb.KV_TYPE_F16 and plan.kv_blocks == 64,
              f"the plan asks for F16 ({pb.KvType.Name(plan.kv_type)}, {plan.kv_blocks} blocks)")
        env = pb.Envelope()
        env.error.code = pb.ERROR_CODE_UNSUPPORTED
        env.error.message = "cannot take the shard plan: the fake backend has no F16 KV cache"
        s.send(env.SerializeToString())
        deadline = time.time() + 10
        state = None
        while time.time() < deadline:
            g5 = [g for g in cl.status().groups if g.group == 5]
            state = pb.GroupState.Name(g5[0].state) if g5 else None
            if state == "GROUP_STATE_LOST":
                break
            time.sleep(0.1)
        s.close(0)
        log = cl.coordinator.tail(200)
        check(state == "GROUP_STATE_LOST" and "group 5 rank 0 cannot join: cannot take the shard "
              "plan: the fake backend has no F16 KV cache" in log,
              f"the coordinator logs a rank's refusal and drops its group ({state})")

        s, plan = fake_worker(cl.control, 6, minor=2)  # before 1.3: makes F32 pools
        env = pb.Envelope()
        rd = env.ready
        rd.group, rd.rank, rd.kv_blocks, rd.block_size = 6, 0, 64, 16
        rd.max_batch_tokens, rd.max_seqs, rd.vocab_size = 64, 4, 49152
        s.send(env.SerializeToString())
        e = recv(s, 10000)
        while e.WhichOneof("body") == "heartbeat":
            e = recv(s, 10000)
        s.close(0)
        log = cl.coordinator.tail(200)
        check(e.WhichOneof("body") == "shutdown" and "64 F32 blocks" in log and "F16 blocks" in log
              and "protocol 1.3" in log,
              f"a rank ready with F32 for an F16 plan is sent away ({e.WhichOneof('body')})")
        g6 = [g for g in cl.status().groups if g.group == 6]
        check(g6 and g6[0].state != pb.GROUP_STATE_READY, "... and its group is not ready")
        with cl.client() as c:
            r = c.generate(chat=[("user", "What is the capital of France?")], max_tokens=16,
                           temperature=0.0, stream=False)
            check("Paris" in r.text, f"the real group still serves ({r.text!r})")
        cl.check_alive()


SCENARIOS = {
    "concurrency": scenario_concurrency,
    "prefix": scenario_prefix,
    "preemption": scenario_preemption,
    "lifecycle": scenario_lifecycle,
    "bad_input": scenario_bad_input,
    "failover": scenario_failover,
    "no_mpirun": scenario_no_mpirun,
    "restart": scenario_restart,
    "kv_type": scenario_kv_type,
    "kv_type_errors": scenario_kv_type_errors,
    "static": scenario_static,
}


def main():
    if len(sys.argv) != 3 or sys.argv[2] not in SCENARIOS:
        print(f"usage: {sys.argv[0]} MODEL {{{','.join(SCENARIOS)}}}")
        return 2
    model, name = sys.argv[1], sys.argv[2]
    skip_unless_runnable(model, name=f"test_serving {name}")
    print(f"test_serving {name}:")
    SCENARIOS[name](model)
    if FAILURES:
        print(f"test_serving {name}: {len(FAILURES)} check(s) failed")
        return 1
    print(f"test_serving {name}: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
