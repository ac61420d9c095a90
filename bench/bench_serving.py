#!/usr/bin/env python3
"""Serving benchmark: requests with Poisson arrivals and mixed prompt/output lengths against a
real cluster (cinder-coordinator + mpirun cinder-worker), once with continuous batching and
once with static batches (--no-continuous-batching), the same workload both times.

    bench/bench_serving.py --model PATH [--requests 64] [--rate 32] [--concurrency 32]
                           [--threads 2] [--seed 1] [--mode both|continuous|static]

Prints per mode: makespan, output tokens/s, requests/s, time to first token and time per
output token (p50, p99, measured at the client from each request's arrival), then the ratio
of the two. Prompts are random token ids (16..256 tokens, log-uniform), outputs 16..256
tokens (log-uniform) with ignore_eos so every request makes exactly its length. Not a test:
nothing here passes or fails.
"""
import argparse
import math
import os
import random
import sys
import threading
import time

_ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(_ROOT, "tests", "cluster"))
sys.path.insert(0, os.path.join(_ROOT, "client", "python"))
from cluster import Cluster, skip_reason  # noqa: E402

from cinder_client import Client  # noqa: E402
from cinder_client import pb  # noqa: E402


def log_uniform(rng, lo, hi):
    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


def workload(n, rate, seed, prompt_max=256, output_max=256):
    rng = random.Random(seed)
    t = 0.0
    out = []
    for i in range(n):
        t += rng.expovariate(rate)
        n_prompt = log_uniform(rng, 16, prompt_max)
        out.append(dict(arrival=t, prompt=[rng.randrange(1000, 40000) for _ in range(n_prompt)],
                        max_tokens=log_uniform(rng, 16, output_max)))
    return out


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def run(endpoint, reqs, concurrency):
    sem = threading.Semaphore(concurrency)
    res = [None] * len(reqs)
    t0 = time.monotonic() + 0.2

    def one(i):
        r = reqs[i]
        delay = t0 + r["arrival"] - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        arrival = time.monotonic()
        with sem:
            with Client(endpoint, timeout_ms=600000) as c:
                q = pb.GenerateRequest()
                q.tokens.ids.extend(r["prompt"])
                q.max_tokens = r["max_tokens"]
                q.stream = True
                q.ignore_eos = True
                st = c.generate_request(q)
                first = None
                n = 0
                for ch in st:
                    if ch.token_ids and first is None:
                        first = time.monotonic()
                    n += len(ch.token_ids)
                done = time.monotonic()
        res[i] = dict(arrival=arrival, first=first, done=done, tokens=n,
                      finish=st.result.finish_reason)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return res, t0


def report(name, res, t0):
    ok = [r for r in res if r and r["first"] is not None]
    end = max(r["done"] for r in ok)
    span = end - t0
    toks = sum(r["tokens"] for r in ok)
    ttft = [(r["first"] - r["arrival"]) * 1000 for r in ok]
    tpot = [(r["done"] - r["first"]) * 1000 / (r["tokens"] - 1) for r in ok if r["tokens"] > 1]
    row = dict(mode=name, n=len(ok), span=span, tok_s=toks / span, req_s=len(ok) / span,
               ttft50=percentile(ttft, 50), ttft99=percentile(ttft, 99),
               tpot50=percentile(tpot, 50), tpot99=percentile(tpot, 99))
    print(f"{name:<11} {row['n']:>4} {span:>8.1f} {row['tok_s']:>10.1f} {row['req_s']:>7.2f} "
          f"{row['ttft50']:>9.0f} {row['ttft99']:>9.0f} {row['tpot50']:>8.1f} {row['tpot99']:>8.1f}",
          flush=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.expanduser("~/.cache/cinder/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--rate", type=float, default=32.0,
                    help="arrivals per second (Poisson); the default keeps 32 requests in flight")
    ap.add_argument("--concurrency", type=int, default=32, help="requests in flight at most")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mode", choices=["both", "continuous", "static"], default="both")
    ap.add_argument("--max-batch-tokens", type=int, default=512)
    ap.add_argument("--prompt-max", type=int, default=256, help="longest prompt (log-uniform from 16)")
    ap.add_argument("--output-max", type=int, default=256, help="longest output (log-uniform from 16)")
    a = ap.parse_args()
    why = skip_reason(a.model)
    if why:
        print(f"bench_serving: {why}")
        return 1
    reqs = workload(a.requests, a.rate, a.seed, a.prompt_max, a.output_max)
    n_prompt = sum(len(r["prompt"]) for r in reqs)
    n_out = sum(r["max_tokens"] for r in reqs)
    print(f"bench_serving: {a.requests} requests, Poisson {a.rate}/s, at most {a.concurrency} in "
          f"flight; {n_prompt} prompt and {n_out} output tokens in all; worker: 1 rank, "
          f"{a.threads} threads; load {os.getloadavg()[0]:.1f}")
    print(f"{'mode':<11} {'reqs':>4} {'span s':>8} {'out tok/s':>10} {'req/s':>7} "
          f"{'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>8} {'TPOT p99':>8}   (ms)")
    rows = {}
    modes = ["continuous", "static"] if a.mode == "both" else [a.mode]
    for mode in modes:
        args = ["--max-batch-tokens", str(a.max_batch_tokens), "--max-seqs", str(a.concurrency),
                "--kv-mib", "1024"]
        if mode == "static":
            args.append("--no-continuous-batching")
        with Cluster(a.model, coordinator_args=args, worker_args=["--threads", str(a.threads)]) as cl:
            with cl.client() as c:  # warm up: the first step pays for page faults
                c.generate(tokens=reqs[0]["prompt"], max_tokens=8, stream=False)
            res, t0 = run(cl.endpoint, reqs, a.concurrency)
            rows[mode] = report(mode, res, t0)
    if len(rows) == 2:
        c, s = rows["continuous"], rows["static"]
        print(f"continuous / static: throughput {c['tok_s'] / s['tok_s']:.2f}x (target >= 2x), "
              f"p99 TTFT {c['ttft99'] / s['ttft99']:.2f}x (target < 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
