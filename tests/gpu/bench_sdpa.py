#!/usr/bin/env python3
"""bench_sdpa.py - PyTorch's scaled_dot_product_attention on the shape of bench_cuda's flash
prefill (8 sequences x 2048 tokens, 32 query / 8 KV heads, head dim 128, causal, BF16), in
the same FLOP count (4 * heads * head_dim * causal pairs per sequence), for tests/gpu/run.sh.

    bench_sdpa.py [--tsv FILE] [--ours TFLOPS]
"""
import argparse
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tsv")
    ap.add_argument("--ours", type=float, default=0.0, help="bench_cuda's flash prefill TFLOP/s")
    a = ap.parse_args()
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        print(f"bench_sdpa: no torch ({e})")
        return 0
    if not torch.cuda.is_available():
        print("bench_sdpa: no CUDA device")
        return 0
    B, T, H, KVH, D = 8, 2048, 32, 8, 128
    torch.manual_seed(0)
    q = torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, KVH, T, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(B, KVH, T, D, device="cuda", dtype=torch.bfloat16)
    # GQA: repeat KV heads (enable_gqa where this torch has it)
    try:
        run = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        run()
    except TypeError:
        k2, v2 = k.repeat_interleave(H // KVH, 1), v.repeat_interleave(H // KVH, 1)
        run = lambda: F.scaled_dot_product_attention(q, k2, v2, is_causal=True)
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        run()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    times.sort()
    ms = times[len(times) // 2]
    flops = 4.0 * B * H * D * T * (T + 1) / 2
    tf = flops / (ms * 1e-3) / 1e12
    ratio = a.ours / tf if a.ours > 0 else -1
    note = "ours / SDPA (target 0.80)" if ratio >= 0 else ""
    print(f"{'PyTorch SDPA 8x2048 bf16':<28} {tf:10.2f} TFLOP/s  ({ms:.3f} ms)"
          + (f"  ours {ratio:.2f} of it" if ratio >= 0 else ""))
    if a.tsv:
        with open(a.tsv, "a") as f:
            f.write(f"PyTorch SDPA 8x2048 bf16\t{tf:.2f}\tTFLOP/s\t{ratio:.3f}\t{note}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
