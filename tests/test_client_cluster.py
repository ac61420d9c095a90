#!/usr/bin/env python3
"""libcinder-client and the `cinder` CLI against a real coordinator and one worker rank
(tests/cluster/cluster.py) serving SmolLM2: the greedy chat answer through the server equals
local `cinder generate` with the same flags and names Paris; `cinder status --json` shows a
ready group and its KV blocks; `cinder models`; the C library's own checks (test_client real).
Skips (77) without the model, mpirun or the coordinator/worker programs.

usage: test_client_cluster.py CINDER_BINARY TEST_CLIENT_BINARY   (environment: see client.cmake)
"""
import json
import os
import subprocess
import sys

from cluster import Cluster, skip_unless_runnable

cinder, test_client = sys.argv[1:3]
model = os.environ.get("CINDER_MODEL", os.path.expanduser("~/.cache/cinder/SmolLM2-135M-Instruct.Q4_1.gguf"))
skip_unless_runnable(model, name="test_client_cluster")
failures = 0


def check(cond, what):
    global failures
    if not cond:
        failures += 1
        print(f"FAIL: {what}")


def run(*args, timeout=600):
    p = subprocess.run([cinder, *args], capture_output=True, timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


question = ["--chat", "--prompt", "What is the capital of France?", "--temperature", "0", "--max-tokens", "64"]
rc, local, err = run("generate", "--model", model, "--threads", "1", *question)
check(rc == 0 and "Paris" in local, f"local generate: rc {rc} {local!r} {err!r}")

with Cluster(model, ranks=1) as cl:
    rc, remote, err = run("generate", "--server", cl.endpoint, *question)
    print(f"remote: {remote!r}\n{err}")
    check(rc == 0 and "Paris" in remote, f"generate --server: rc {rc} {remote!r} {err!r}")
    check(remote == local, f"generate --server differs from local generate:\n  {remote!r}\n  {local!r}")
    check("finished by stop" in err and "tokens/s" in err, f"generate --server report: {err!r}")

    rc, out, err = run("status", "--server", cl.endpoint, "--json")
    try:
        st = json.loads(out)
    except ValueError:
        st = {}
    groups = st.get("groups", [])
    check(rc == 0 and groups and groups[0].get("state") == "GROUP_STATE_READY", f"status --json: {out[:400]!r} {err!r}")
    check(groups and groups[0].get("kv", {}).get("blocks_total", 0) > 0 and st.get("kv", {}).get("blocks_total", 0) > 0,
          f"status --json KV blocks: {out[:600]!r}")
    check(st.get("requests_finished", 0) >= 1 and st.get("output_tokens_total", 0) >= 1, f"status counters: {out[:800]!r}")
    rc, out, err = run("status", "--server", cl.endpoint)
    check(rc == 0 and "ready" in out and "blocks of" in out, f"status: {out!r} {err!r}")
    rc, out, err = run("models", "--server", cl.endpoint)
    check(rc == 0 and "49152" in out, f"models: {out!r} {err!r}")

    p = subprocess.run([test_client, cl.endpoint, "real"], capture_output=True, timeout=600)
    sys.stdout.write(p.stdout.decode() + p.stderr.decode())
    check(p.returncode == 0, "test_client against the cluster")
    if failures:
        cl.report()

print("test_client_cluster: all passed" if not failures else f"test_client_cluster: {failures} failures")
sys.exit(1 if failures else 0)
