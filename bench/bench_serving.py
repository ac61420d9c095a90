#!/usr/bin/env python3
"""Serving benchmark: requests with Poisson arrivals and mixed prompt/output lengths against a
real cluster (cinder-coordinator + one cinder-worker rank, under mpirun or started directly:
tests/cluster/cluster.py), once with continuous batching and once with static batches
(--no-continuous-batching: a batch keeps its shape until its longest request ends), the same
workload each time; --mode all adds static batches whose ended requests leave at once
(--static-early-exit).

    bench/bench_serving.py --model PATH [--requests 64] [--rate 32] [--concurrency 32]
                           [--threads 2] [--seed 1] [--mode both|all|continuous|static|static-exit]
                           [--device cpu|cuda] [--no-mpirun] [--worker-arg ARG]... [--tsv FILE]
                           [--temperature T] [--kv-mib MIB] [--kv-type f32|f16|bf16]

Prints per mode: makespan, output tokens/s, requests/s, time to first token and time per
output token (p50, p99, measured at the client from each request's arrival), then the ratios
of continuous batching to each static mode. Prompts are random token ids (16..256 tokens,
log-uniform), outputs 16..256 tokens (log-uniform) with ignore_eos so every request makes
exactly its length; greedy unless --temperature (seeded sampling). The model's tokenizer
must know every id below 40000 (the prompts' ids, and the ids it may sample). --tsv appends
the throughputs, their ratio and the p99 TTFTs as name/value/unit/ratio/note lines
(tests/gpu/run.sh). Not a test: no figure passes or fails; the exit status is 1 only when
requests did not make their tokens.
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
from cluster import Cluster, skip_reason, use_mpirun  # noqa: E402

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


def run(endpoint, reqs, concurrency, temperature=None):
    sem = threading.Semaphore(concurrency)
    res = [None] * len(reqs)
    t0 = time.monotonic() + 0.2

    def one(i):
        try:
            one_request(i)
        except Exception as e:  # noqa: BLE001 - counted as a failed request, reported below
            res[i] = dict(error=f"{type(e).__name__}: {e}")

    def one_request(i):
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
                if temperature is not None:  # a whole SamplingParams: the defaults but this
                    q.sampling.temperature = temperature
                    q.sampling.top_p = 1.0
                    q.sampling.repetition_penalty = 1.0
                    q.sampling.seed = 1000 + i
                    q.sampling.has_seed = True
                st = c.generate_request(q)
                first = None
                n = 0
                for ch in st:
                    if ch.token_ids and first is None:
                        first = time.monotonic()
                    n += len(ch.token_ids)
                done = time.monotonic()
        res[i] = dict(arrival=arrival, first=first, done=done, tokens=n,
                      finish=st.result.finish_reason, message=st.result.message,
                      error=None if n == r["max_tokens"] else
                      f"{n} of {r['max_tokens']} tokens, finish {st.result.finish_reason}"
                      f" {st.result.message}".rstrip())

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return res, t0


def report(name, res, t0):
    bad = [r["error"] if r else "no answer" for r in res if not r or r["error"]]
    if bad:
        print(f"bench_serving: {name}: {len(bad)} of {len(res)} requests did not make their "
              f"tokens, e.g.: {bad[0]}", flush=True)
    ok = [r for r in res if r and not r["error"] and r["first"] is not None]
    if not ok:
        return None
    end = max(r["done"] for r in ok)
    span = end - t0
    toks = sum(r["tokens"] for r in ok)
    ttft = [(r["first"] - r["arrival"]) * 1000 for r in ok]
    tpot = [(r["done"] - r["first"]) * 1000 / (r["tokens"] - 1) for r in ok if r["tokens"] > 1]
    row = dict(mode=name, n=len(ok), span=span, tok_s=toks / span, req_s=len(ok) / span,
               ttft50=percentile(ttft, 50), ttft99=percentile(ttft, 99),
               tpot50=percentile(tpot, 50), tpot99=percentile(tpot, 99))
    print(f"{name:<12} {row['n']:>4} {span:>8.1f} {row['tok_s']:>10.1f} {row['req_s']:>7.2f} "
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
    ap.add_argument("--mode", choices=["both", "all", "continuous", "static", "static-exit"],
                    default="both", help="both: continuous and static; all: static-exit too")
    ap.add_argument("--max-batch-tokens", type=int, default=512)
    ap.add_argument("--prompt-max", type=int, default=256, help="longest prompt (log-uniform from 16)")
    ap.add_argument("--output-max", type=int, default=256, help="longest output (log-uniform from 16)")
    ap.add_argument("--kv-mib", type=int, default=1024,
                    help="the coordinator's --kv-mib (a CUDA worker sizes its pool by --kv-fraction)")
    ap.add_argument("--kv-type", choices=["f32", "f16", "bf16"], default="f32",
                    help="the coordinator's --kv-type: the workers' KV cache element type (16-bit "
                         "types hold twice the blocks in --kv-mib; CUDA workers take f32, bf16)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="the worker's --device")
    ap.add_argument("--no-mpirun", action="store_true",
                    help="start the worker without mpirun (automatic when mpirun is not installed)")
    ap.add_argument("--worker-arg", action="append", default=[], metavar="ARG",
                    help="one more cinder-worker argument (repeat it: --worker-arg=--kv-fraction --worker-arg=0.5)")
    ap.add_argument("--temperature", type=float, default=None,
                    help="sample at this temperature (seeded per request); default: greedy, the "
                         "server's default (no softmax over the vocabulary on the worker's host)")
    ap.add_argument("--tsv", help="append the results to this file (tests/gpu/run.sh's table)")
    a = ap.parse_args()
    mpirun = False if a.no_mpirun else None
    why = skip_reason(a.model)
    if why:
        print(f"bench_serving: {why}")
        return 1
    reqs = workload(a.requests, a.rate, a.seed, a.prompt_max, a.output_max)
    n_prompt = sum(len(r["prompt"]) for r in reqs)
    n_out = sum(r["max_tokens"] for r in reqs)
    print(f"bench_serving: {a.requests} requests, Poisson {a.rate}/s, at most {a.concurrency} in "
          f"flight; {n_prompt} prompt and {n_out} output tokens in all; worker: 1 rank, "
          f"{a.device}, {a.threads} threads, {a.kv_type.upper()} KV, "
          f"{'without' if not use_mpirun(1, mpirun) else 'under'} "
          f"mpirun; load {os.getloadavg()[0]:.1f}")
    print(f"{'mode':<12} {'reqs':>4} {'span s':>8} {'out tok/s':>10} {'req/s':>7} "
          f"{'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>8} {'TPOT p99':>8}   (ms)")
    rows, failed = {}, False
    modes = {"both": ["continuous", "static"],
             "all": ["continuous", "static", "static-exit"]}.get(a.mode, [a.mode])
    for mode in modes:
        args = ["--max-batch-tokens", str(a.max_batch_tokens), "--max-seqs", str(a.concurrency),
                "--kv-mib", str(a.kv_mib), "--kv-type", a.kv_type]
        if mode != "continuous":
            args.append("--no-continuous-batching")
        if mode == "static-exit":
            args.append("--static-early-exit")
        wargs = ["--threads", str(a.threads), "--device", a.device, *a.worker_arg]
        with Cluster(a.model, coordinator_args=args, worker_args=wargs, mpirun=mpirun) as cl:
            with cl.client() as c:  # warm up: the first step pays for page faults
                c.generate(tokens=reqs[0]["prompt"], max_tokens=8, stream=False)
            res, t0 = run(cl.endpoint, reqs, a.concurrency, a.temperature)
            row = report(mode, res, t0)
            failed |= row is None or row["n"] < len(reqs)
            if row:
                rows[mode] = row
    c = rows.get("continuous")
    for name in ("static", "static-exit"):
        s = rows.get(name)
        if c and s:
            print(f"continuous / {name}: throughput {c['tok_s'] / s['tok_s']:.2f}x"
                  f"{' (target >= 2x)' if name == 'static' else ''}, "
                  f"p99 TTFT {c['ttft99'] / s['ttft99']:.2f}x (target < 1)")
    if a.tsv:
        write_tsv(a.tsv, rows, a)
    return 1 if failed else 0


def write_tsv(path, rows, a):
    """name, value, unit, ratio (-1: none), note: the lines tests/gpu/run.sh tabulates."""
    c, s = rows.get("continuous"), rows.get("static")
    tput = c["tok_s"] / s["tok_s"] if c and s else -1
    ttft = c["ttft99"] / s["ttft99"] if c and s else -1
    what = f"{a.requests} reqs, {a.concurrency} in flight, out 16-{a.output_max}"
    if a.kv_type != "f32":
        what += f", {a.kv_type.upper()} KV"
    lines = []
    for name, r in (("continuous", c), ("static", s), ("static-exit", rows.get("static-exit"))):
        if not r:
            continue
        lines.append((f"serving {name} {a.device}", r["tok_s"], "tok/s",
                      tput if name == "continuous" else -1,
                      f"cont/static (target 2.00); {what}" if name == "continuous" else what))
        lines.append((f"serving {name} TTFT p99", r["ttft99"], "ms",
                      ttft if name == "continuous" else -1,
                      "cont/static (target < 1)" if name == "continuous" else ""))
    with open(path, "a") as f:
        for name, v, unit, ratio, note in lines:
            f.write(f"{name}\t{v:.2f}\t{unit}\t{ratio:.3f}\t{note}\n")


if __name__ == "__main__":
    sys.exit(main())
