#!/usr/bin/env python3
"""make_model_refs.py - golden references for cinder's model forward pass and greedy decoding.

Run by hand (not in CI); the outputs are small and committed, so the tests never need torch.

    pip install torch transformers accelerate gguf tokenizers safetensors numpy
    python3 tests/golden/make_model_refs.py [--gguf PATH] [--skip-smollm2] [--check]

Everything is computed with the reference implementation, Hugging Face `transformers`
(LlamaForCausalLM, eager attention) on `torch`, in float32 on the CPU. Outputs, in
tests/data/models/ (tests/golden/README-models.md documents the formats):

* tiny-mha-f32, tiny-gqa-f32, tiny-tied-f32, tiny-gqa-bf16, tiny-llama3rope-f32: tiny Llama
  models with random weights (fixed seeds), saved by save_pretrained (config.json +
  model.safetensors + generation_config.json), plus refs.json and caseN.f32 (the logits of every
  prompt position). The reference is always computed from the model loaded back from the saved
  folder (for tiny-gqa-bf16: the bf16 weights loaded with dtype=float32, so the reference is the
  float32 forward pass of the bf16-rounded weights).
* smollm2: SmolLM2-135M-Instruct Q4_1 GGUF, loaded by transformers' GGUF loader (dequantized to
  float32): last-position logits and greedy continuations of three prompts, the argmax of every
  position of a 256-token teacher-forced text, and the greedy answer to a ChatML chat prompt.

Checks done on the way: each tiny model's refs are re-derived by an independent numpy forward
pass that reads only the saved files (a safetensors parser, and only the config.json keys that
Hugging Face checkpoints have always had: rope_theta, rope_scaling, ...); the SmolLM2 logits are
re-derived by a numpy forward pass straight from the GGUF tensors with the GGUF (adjacent-pair)
RoPE layout, which also checks that transformers un-permutes Q/K; greedy tokens are checked
against a full-sequence (no KV cache) forward pass. --check only re-reads the committed files
and re-runs the numpy checks (no torch needed for the tiny models).
"""

import argparse
import hashlib
import json
import math
import os
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.normpath(os.path.join(HERE, "..", "data", "models"))
DEFAULT_GGUF = os.path.expanduser("~/.cache/cinder/SmolLM2-135M-Instruct.Q4_1.gguf")
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

N_GREEDY = 32
# A greedy step whose top-1/top-2 logit gap is below this is a near tie that float rounding
# could flip; prompts are re-drawn (deterministically, next seed) until every step clears it.
GREEDY_GAP_MIN = 0.02
EOS_ID = 2  # the tiny configs keep Llama's bos 1 / eos 2; greedy refs avoid eos (see below)

# name, config, weight dtype, prompt lengths, seed
TINY = [
    ("tiny-mha-f32", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=4, head_dim=16, intermediate_size=128,
                          vocab_size=300, tie_word_embeddings=False), "float32",
     [1, 7, 33, 100], 1001),
    ("tiny-gqa-f32", dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=8,
                          num_key_value_heads=2, head_dim=8, intermediate_size=128,
                          vocab_size=300, tie_word_embeddings=False), "float32",
     [1, 7, 33, 100], 1002),
    ("tiny-tied-f32", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=4, head_dim=16, intermediate_size=128,
                           vocab_size=300, tie_word_embeddings=True), "float32",
     [1, 7, 33, 100], 1003),
    # same seed and config as tiny-gqa-f32: the same weights, rounded to bf16
    ("tiny-gqa-bf16", dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=8,
                           num_key_value_heads=2, head_dim=8, intermediate_size=128,
                           vocab_size=300, tie_word_embeddings=False), "bfloat16",
     [1, 7, 33, 100], 1002),
    ("tiny-llama3rope-f32", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, head_dim=16, intermediate_size=128,
                                 vocab_size=300, tie_word_embeddings=False,
                                 max_position_embeddings=512,
                                 rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                               "original_max_position_embeddings": 64}),
     "float32", [5, 70, 150], 1005),
]
TINY_COMMON = dict(rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=256,
                   hidden_act="silu", bos_token_id=1, eos_token_id=EOS_ID, pad_token_id=None)
# Weight init: std large enough that logits are far from flat (random Llamas with the default
# 0.02 give near-uniform logits whose argmax float rounding flips).
EMB_STD, PROJ_STD, HEAD_STD, NORM_RANGE = 0.5, 0.15, 0.25, (0.6, 1.4)

SMOL_PROMPTS = [
    "The capital of France is",
    "In a small village at the edge of the forest, an old clockmaker spent his evenings "
    "repairing watches for neighbours who could not afford new ones, and he never once asked "
    "them for payment.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) +",
]
SMOL_TEACHER = (
    "The history of the lighthouse is, in many ways, the history of coastal trade itself. "
    "Long before electric lamps and automatic lenses, keepers climbed narrow spiral stairs every "
    "evening to trim wicks, polish brass and wind the clockwork that turned the great glass "
    "prisms. A single keeper might spend thirty years on a rock no larger than a tennis court, "
    "watching storms roll in from the west and counting the ships that passed safely in the "
    "night.\n\nToday most lighthouses run on their own. Solar panels charge batteries during the "
    "day, and a small computer switches the light on at dusk. Engineers visit a few times a year "
    "to replace worn parts. Some towers have become museums, hotels or nesting sites for seabirds; "
    "others stand empty, their paint peeling in the salt air.\n\nScientists, meanwhile, study the "
    "old logbooks for a different reason. Keepers recorded wind, rain, fog and temperature three "
    "times a day, and those records, stretching back two centuries, help researchers understand "
    "how the climate of the coast has changed. One notebook from 1854 describes a winter so cold "
    "that the sea froze between the island and the shore, something that has not happened since. "
    "Reading these pages, you can almost hear the wind rattling the windows and smell the oil "
    "burning in the lamp room above."
)
SMOL_CHAT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
SMOL_CHAT_USER = "What is the capital of France?"
SMOL_CHAT_MAX = 48
SMOL_TEACHER_LEN = 256


# ---------------------------------------------------------------------------------------------
# Output helpers
# ---------------------------------------------------------------------------------------------

def dump_json(obj, path):
    """Indented JSON with lists of numbers kept on one line (diff-friendly, still plain JSON)."""
    def enc(o, ind):
        pad, pad1 = " " * ind, " " * (ind + 1)
        if isinstance(o, dict):
            if not o:
                return "{}"
            items = [pad1 + json.dumps(k) + ": " + enc(v, ind + 1) for k, v in o.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(o, list):
            if all(not isinstance(x, (dict, list)) for x in o):
                return "[" + ", ".join(json.dumps(x) for x in o) + "]"
            return "[\n" + ",\n".join(pad1 + enc(x, ind + 1) for x in o) + "\n" + pad + "]"
        return json.dumps(o, ensure_ascii=False)
    with open(path, "w", encoding="utf-8") as f:
        f.write(enc(obj, 0) + "\n")


def write_f32(path, a):
    np.ascontiguousarray(a, dtype="<f4").tofile(path)


def read_f32(path, rows, cols):
    a = np.fromfile(path, dtype="<f4")
    assert a.size == rows * cols, (path, a.size, rows, cols)
    return a.reshape(rows, cols)


def rnd(x):
    return float(f"{float(x):.6g}")


def top2_gap(logits):
    """top-1 minus top-2 logit for each row of a [P, V] array."""
    s = np.sort(np.asarray(logits, dtype=np.float64), axis=-1)
    return s[..., -1] - s[..., -2]


def versions():
    import torch
    import transformers
    return {"torch": torch.__version__, "transformers": transformers.__version__}


# ---------------------------------------------------------------------------------------------
# Independent numpy Llama forward pass (reads only the saved files)
# ---------------------------------------------------------------------------------------------

def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        raw = data[a:b]
        if info["dtype"] == "F32":
            t = np.frombuffer(raw, dtype="<f4").astype(np.float64)
        elif info["dtype"] == "BF16":
            t = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
            t = t.astype(np.float64)
        else:
            raise ValueError(f"{path}: {name}: dtype {info['dtype']}")
        out[name] = t.reshape(info["shape"])
    return out


def rope_inv_freq(dim, theta, scaling):
    inv = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    if not scaling or scaling.get("rope_type", scaling.get("type")) in (None, "default"):
        return inv
    assert scaling["rope_type"] == "llama3", scaling
    factor, lo, hi = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    out = np.where(wavelen > old / lo, inv / factor, inv)           # low frequencies: / factor
    smooth = (old / wavelen - lo) / (hi - lo)
    medium = (wavelen >= old / hi) & (wavelen <= old / lo)           # in between: interpolate
    return np.where(medium, (1 - smooth) * inv / factor + smooth * inv, out)


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def np_llama_forward(cfg, W, ids, interleaved=False):
    """Logits [len(ids), V] of a Llama model. W: HF names (model.layers.N.self_attn.q_proj.weight,
    [out, in]). interleaved=True rotates adjacent pairs (GGUF layout) instead of halves."""
    H = cfg["hidden_size"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or H // nh
    eps = cfg["rms_norm_eps"]
    T = len(ids)
    inv = rope_inv_freq(hd, cfg.get("rope_theta", 10000.0), cfg.get("rope_scaling"))
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]     # [T, hd/2]
    cos, sin = np.cos(ang), np.sin(ang)

    def rope(x):                                                     # x [T, heads, hd]
        c, s = cos[:, None, :], sin[:, None, :]
        if interleaved:
            a, b = x[..., 0::2], x[..., 1::2]
            y = np.empty_like(x)
            y[..., 0::2], y[..., 1::2] = a * c - b * s, a * s + b * c
            return y
        a, b = x[..., : hd // 2], x[..., hd // 2:]
        return np.concatenate([a * c - b * s, a * s + b * c], axis=-1)

    x = W["model.embed_tokens.weight"][ids]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rmsnorm(x, W[p + "input_layernorm.weight"], eps)
        q = rope((h @ W[p + "self_attn.q_proj.weight"].T).reshape(T, nh, hd))
        k = rope((h @ W[p + "self_attn.k_proj.weight"].T).reshape(T, nkv, hd))
        v = (h @ W[p + "self_attn.v_proj.weight"].T).reshape(T, nkv, hd)
        att = np.empty((T, nh, hd))
        for i in range(nh):
            j = i // (nh // nkv)
            s = q[:, i] @ k[:, j].T / math.sqrt(hd) + mask
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            att[:, i] = (s / s.sum(axis=-1, keepdims=True)) @ v[:, j]
        x = x + att.reshape(T, nh * hd) @ W[p + "self_attn.o_proj.weight"].T
        h = rmsnorm(x, W[p + "post_attention_layernorm.weight"], eps)
        g = h @ W[p + "mlp.gate_proj.weight"].T
        u = h @ W[p + "mlp.up_proj.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ W[p + "mlp.down_proj.weight"].T
    x = rmsnorm(x, W["model.norm.weight"], eps)
    head = W.get("lm_head.weight")
    if head is None or cfg.get("tie_word_embeddings"):
        head = W["model.embed_tokens.weight"]
    return x @ head.T


def np_check_tiny(folder):
    """Re-derive a tiny model's refs from its saved files only; returns the max |logit diff|."""
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    legacy = {k: v for k, v in cfg.items() if k != "rope_parameters"}   # what old readers see
    W = read_safetensors(os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "refs.json")) as f:
        refs = json.load(f)
    worst = 0.0
    for case in refs["cases"]:
        P, V = case["n_positions"], case["vocab"]
        want = read_f32(os.path.join(folder, case["logits_file"]), P, V)
        full = case["prompt"] + case["greedy"]
        got = np_llama_forward(legacy, W, full)
        worst = max(worst, float(np.abs(got[:P] - want).max()))
        am = got[P - 1: P - 1 + N_GREEDY].argmax(-1).tolist()
        assert am == case["greedy"], (folder, case["logits_file"], am, case["greedy"])
    assert worst < 1e-3, (folder, worst)
    return worst


# ---------------------------------------------------------------------------------------------
# Tiny random models
# ---------------------------------------------------------------------------------------------

# transformers >= 5.2x calls the KV cache `cache` (it was `past_key_values`).
_CACHE_KW = "past_key_values"


def _cache_of(r):
    global _CACHE_KW
    if getattr(r, "cache", None) is not None:
        _CACHE_KW = "cache"
        return r.cache
    return r.past_key_values


def torch_greedy(model, prompt, n, stop_id=None):
    """Greedy decoding with the KV cache; no stopping unless stop_id (then stop_id is included)."""
    import torch
    out = []
    with torch.no_grad():
        r = model(torch.tensor([prompt]), use_cache=True)
        past, logits = _cache_of(r), r.logits[0, -1]
        for _ in range(n):
            t = int(logits.argmax())
            out.append(t)
            if t == stop_id:
                break
            r = model(torch.tensor([[t]]), **{_CACHE_KW: past}, use_cache=True)
            past, logits = _cache_of(r), r.logits[0, -1]
    return out


def torch_logits(model, ids):
    import torch
    with torch.no_grad():
        return model(torch.tensor([ids]), use_cache=False).logits[0].float().numpy()


def add_legacy_keys(folder, dtype):
    """transformers 5 writes rope_parameters/dtype; checkpoints on the hub (and cinder's parser)
    use rope_theta/rope_scaling/torch_dtype. Write both, so old and new readers agree."""
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    rp = dict(cfg.get("rope_parameters") or {})
    cfg["rope_theta"] = rp.pop("rope_theta")
    cfg["rope_scaling"] = None if rp.get("rope_type", "default") == "default" else rp
    cfg["torch_dtype"] = dtype
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    return cfg


def make_tiny(name, arch, dtype, lengths, seed, vers):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = os.path.join(OUT, name)
    os.makedirs(folder, exist_ok=True)
    for fn in os.listdir(folder):
        os.remove(os.path.join(folder, fn))
    kw = dict(TINY_COMMON)
    kw.update(arch)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**kw))
    with torch.no_grad():
        for pname, p in model.named_parameters():     # tied lm_head is not listed separately
            if "norm" in pname:
                p.uniform_(*NORM_RANGE)
            elif "embed_tokens" in pname:
                p.normal_(0.0, EMB_STD)
            elif "lm_head" in pname:
                p.normal_(0.0, HEAD_STD)
            else:
                p.normal_(0.0, PROJ_STD)
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    os.chmod(os.path.join(folder, "model.safetensors"), 0o644)
    cfg = add_legacy_keys(folder, dtype)

    # The reference: the saved folder loaded back, run in float32.
    ref = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                           attn_implementation="eager").eval()
    assert ref.model.embed_tokens.weight.dtype == torch.float32
    if dtype == "bfloat16":
        w = ref.model.layers[0].self_attn.q_proj.weight
        assert torch.equal(w, w.to(torch.bfloat16).float()), "bf16 weights not bf16-exact"
    V = cfg["vocab_size"]
    cases = []
    for ci, P in enumerate(lengths):
        for attempt in range(100):
            pseed = seed * 100 + ci * 1000 + attempt
            g = torch.Generator().manual_seed(pseed)
            prompt = torch.randint(0, V, (P,), generator=g).tolist()
            greedy = torch_greedy(ref, prompt, N_GREEDY)
            full = torch_logits(ref, prompt + greedy)
            gaps = top2_gap(full[P - 1: P - 1 + N_GREEDY])
            if (full[P - 1: P - 1 + N_GREEDY].argmax(-1).tolist() == greedy
                    and gaps.min() >= GREEDY_GAP_MIN and len(set(greedy)) >= 4
                    and EOS_ID not in greedy):
                break
        else:
            raise RuntimeError(f"{name}: no usable prompt of length {P}")
        logits = torch_logits(ref, prompt)
        assert np.allclose(logits, full[:P], atol=1e-4), "prompt logits depend on the suffix"
        fn = f"case{ci}.f32"
        write_f32(os.path.join(folder, fn), logits)
        cases.append({
            "prompt": prompt, "prompt_seed": pseed,
            "logits_file": fn, "first_position": 0, "n_positions": P, "vocab": V,
            "greedy": greedy,
            "min_gap": rnd(top2_gap(logits).min()),
            "greedy_gaps": [rnd(x) for x in gaps],
            "logit_absmax": rnd(np.abs(logits).max()),
        })
    refs = {
        "model": name, "dtype": dtype, "compute_dtype": "float32",
        "generator": "tests/golden/make_model_refs.py", **vers,
        "architecture": "LlamaForCausalLM", "seed": seed,
        "init": {"embed_std": EMB_STD, "proj_std": PROJ_STD, "lm_head_std": HEAD_STD,
                 "norm_uniform": list(NORM_RANGE)},
        "n_greedy": N_GREEDY, "cases": cases,
    }
    dump_json(refs, os.path.join(folder, "refs.json"))
    return refs


def summarize_tiny(folder):
    with open(os.path.join(folder, "refs.json")) as f:
        refs = json.load(f)
    for c in refs["cases"]:
        print(f"  P={c['n_positions']:4d}  greedy distinct={len(set(c['greedy'])):2d}  "
              f"min_gap(prompt)={c['min_gap']:.4g}  min_gap(greedy)={min(c['greedy_gaps']):.4g}  "
              f"absmax={c['logit_absmax']:.3g}  seed={c['prompt_seed']}  "
              f"greedy[:10]={c['greedy'][:10]}")


# ---------------------------------------------------------------------------------------------
# SmolLM2 (GGUF)
# ---------------------------------------------------------------------------------------------

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def smollm2_tokenizer(gguf_path):
    """SmolLM2's tokenizer as its tokenizer.json defines it, rebuilt from the GGUF vocab/merges."""
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    r = GGUFReader(gguf_path)

    def arr(key):
        f = r.fields[key]
        if f.types[1].name == "STRING":
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [int(f.parts[i][0]) for i in f.data]

    tokens, types = arr("tokenizer.ggml.tokens"), arr("tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in arr("tokenizer.ggml.merges")]
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, ty in zip(tokens, types) if ty == 3])
    for text, want in [("The capital of France is", [504, 3575, 282, 4649, 314]),
                       ("Hello world! 123", [19556, 905, 17, 216, 33, 34, 35])]:
        got = tk.encode(text, add_special_tokens=False).ids
        assert got == want, (text, got, want)
    return tk


def gguf_tensors(path):
    """name -> float64 numpy [ne1, ne0] (row-major as in HF), dequantized with the gguf package."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    r = GGUFReader(path)
    out, types = {}, {}
    for t in r.tensors:
        a = dequantize(t.data, t.tensor_type)
        out[t.name] = np.asarray(a, dtype=np.float64).reshape(list(reversed(t.shape.tolist())))
        types[t.name] = t.tensor_type.name
    return out, types


def hf_permute(w, n_head):
    """llama.cpp convert_hf_to_gguf's permute (HF half-split rows -> GGUF interleaved rows)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def make_smollm2(gguf_path, vers):
    import torch
    from transformers import AutoModelForCausalLM

    folder = os.path.join(OUT, "smollm2")
    os.makedirs(folder, exist_ok=True)
    for fn in os.listdir(folder):
        os.remove(os.path.join(folder, fn))
    digest = sha256(gguf_path)
    if digest != GGUF_SHA256:
        print(f"WARNING: {gguf_path}: sha256 {digest}, expected {GGUF_SHA256}")
    tk = smollm2_tokenizer(gguf_path)
    d, fn = os.path.split(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=fn, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    cfg = model.config
    V = cfg.vocab_size
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads

    # transformers' GGUF tokenizer conversion vs ours, on the texts used here.
    try:
        from transformers import AutoTokenizer
        htk = AutoTokenizer.from_pretrained(d, gguf_file=fn)
        texts = SMOL_PROMPTS + [SMOL_TEACHER]
        same = sum(htk(t, add_special_tokens=False)["input_ids"] ==
                   tk.encode(t, add_special_tokens=False).ids for t in texts)
        print(f"smollm2: transformers' GGUF tokenizer agrees on {same}/{len(texts)} texts")
    except Exception as e:  # informational only
        print(f"smollm2: transformers' GGUF tokenizer not compared: {e}")

    # How the loaded weights relate to the GGUF tensors: Q/K rows un-permuted, the rest as is.
    G, gtypes = gguf_tensors(gguf_path)
    sd = {k: v.float().numpy().astype(np.float64) for k, v in model.state_dict().items()}
    fixups = []
    for l in range(cfg.num_hidden_layers):
        p = f"model.layers.{l}.self_attn."
        for hf, gg, n in [("q_proj", "attn_q", nh), ("k_proj", "attn_k", nkv)]:
            a, b = sd[p + hf + ".weight"], G[f"blk.{l}.{gg}.weight"]
            assert np.array_equal(hf_permute(a, n), b), (l, hf)
            if l == 0 and not np.array_equal(a, b):
                fixups.append(f"{hf}: rows reverse-permuted (GGUF interleaved -> HF half-split)")
        assert np.array_equal(sd[p + "v_proj.weight"], G[f"blk.{l}.attn_v.weight"])
    assert np.array_equal(sd["model.embed_tokens.weight"], G["token_embd.weight"])
    assert "output.weight" not in G and cfg.tie_word_embeddings
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    print("smollm2: loaded weights == gguf dequantized;", "; ".join(fixups))

    # numpy forward from the raw GGUF tensors with the GGUF (adjacent-pair) RoPE.
    gname = {"token_embd.weight": "model.embed_tokens.weight",
             "output_norm.weight": "model.norm.weight"}
    sub = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj",
           "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
           "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
           "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    W = {}
    for k, v in G.items():
        if k in gname:
            W[gname[k]] = v
        else:
            _, l, t, _ = k.split(".")
            W[f"model.layers.{l}.{sub[t]}.weight"] = v
    np_cfg = {"hidden_size": cfg.hidden_size, "num_attention_heads": nh,
              "num_key_value_heads": nkv, "head_dim": cfg.head_dim,
              "num_hidden_layers": cfg.num_hidden_layers, "rms_norm_eps": cfg.rms_norm_eps,
              "rope_theta": cfg.rope_parameters["rope_theta"], "tie_word_embeddings": True}

    cases = []
    for ci, text in enumerate(SMOL_PROMPTS):
        ids = tk.encode(text, add_special_tokens=False).ids
        logits = torch_logits(model, ids)
        last = logits[-1]
        if ci == 0:
            npl = np_llama_forward(np_cfg, W, ids, interleaved=True)
            diff = float(np.abs(npl - logits).max())
            print(f"smollm2: numpy GGUF-layout forward vs transformers: max |diff| {diff:.3g}")
            assert diff < 1e-2
        greedy = torch_greedy(model, ids, N_GREEDY)
        full = torch_logits(model, ids + greedy)
        P = len(ids)
        assert full[P - 1: P - 1 + N_GREEDY].argmax(-1).tolist() == greedy
        gaps = top2_gap(full[P - 1: P - 1 + N_GREEDY])
        fn = f"case{ci}.f32"
        write_f32(os.path.join(folder, fn), last[None, :])
        cases.append({
            "text": text, "prompt": ids,
            "logits_file": fn, "first_position": P - 1, "n_positions": 1, "vocab": V,
            "greedy": greedy, "greedy_text": tk.decode(greedy, skip_special_tokens=False),
            "greedy_gaps": [rnd(x) for x in gaps],
            "logit_absmax": rnd(np.abs(last).max()),
        })
        print(f"smollm2 case {ci}: {len(ids)} tokens -> {cases[-1]['greedy_text']!r}")

    ids = tk.encode(SMOL_TEACHER, add_special_tokens=False).ids
    assert len(ids) >= SMOL_TEACHER_LEN, len(ids)
    ids = ids[:SMOL_TEACHER_LEN]
    logits = torch_logits(model, ids)
    teacher = {"text": tk.decode(ids), "n_tokens": len(ids), "ids": ids,
               "argmax": logits.argmax(-1).tolist(),
               "gaps": [rnd(x) for x in top2_gap(logits)],
               "min_agreement": 0.98}

    chat_text = (f"<|im_start|>system\n{SMOL_CHAT_SYSTEM}<|im_end|>\n"
                 f"<|im_start|>user\n{SMOL_CHAT_USER}<|im_end|>\n<|im_start|>assistant\n")
    chat_ids = tk.encode(chat_text, add_special_tokens=False).ids
    assert chat_ids[0] == 1, chat_ids
    answer = torch_greedy(model, chat_ids, SMOL_CHAT_MAX, stop_id=EOS_ID)
    stopped = answer[-1] == EOS_ID
    body = answer[:-1] if stopped else answer
    full = torch_logits(model, chat_ids + answer)
    P = len(chat_ids)
    assert full[P - 1: P - 1 + len(answer)].argmax(-1).tolist() == answer
    chat = {"messages": [{"role": "user", "content": SMOL_CHAT_USER}],
            "default_system": SMOL_CHAT_SYSTEM, "text": chat_text, "prompt": chat_ids,
            "max_new_tokens": SMOL_CHAT_MAX, "stop_id": EOS_ID,
            "greedy": answer, "stopped_at_eos": stopped,
            "answer": tk.decode(body, skip_special_tokens=False),
            "greedy_gaps": [rnd(x) for x in top2_gap(full[P - 1: P - 1 + len(answer)])]}
    print(f"smollm2 chat: {len(chat_ids)} prompt tokens -> {chat['answer']!r} "
          f"(stopped at eos: {stopped})")
    assert "Paris" in chat["answer"]
    assert "Paris" in cases[0]["greedy_text"]

    refs = {
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf", "gguf_sha256": digest,
        "dtype": "gguf: blk.* 2-D weights " + gtypes["blk.0.attn_q.weight"] + ", token_embd "
                 + gtypes["token_embd.weight"] + ", norms " + gtypes["output_norm.weight"],
        "compute_dtype": "float32 (the GGUF weights dequantized to float32 by transformers)",
        "generator": "tests/golden/make_model_refs.py", **vers,
        "loader_fixups": fixups, "vocab": V, "n_greedy": N_GREEDY,
        "cases": cases, "teacher_forced": teacher, "chat": chat,
    }
    dump_json(refs, os.path.join(folder, "refs.json"))
    return refs


def check_smollm2(folder):
    with open(os.path.join(folder, "refs.json")) as f:
        refs = json.load(f)
    for c in refs["cases"]:
        a = read_f32(os.path.join(folder, c["logits_file"]), c["n_positions"], c["vocab"])
        assert int(a[-1].argmax()) == c["greedy"][0], c["logits_file"]
        assert len(c["greedy"]) == refs["n_greedy"]
    t = refs["teacher_forced"]
    assert len(t["ids"]) == len(t["argmax"]) == len(t["gaps"]) == 256
    ch = refs["chat"]
    assert ch["prompt"][0] == 1 and "Paris" in ch["answer"]
    near = sum(g < 0.1 for g in t["gaps"])
    print(f"smollm2: {len(refs['cases'])} cases, teacher 256 tokens (gap < 0.1 at {near} "
          f"positions, min gap {min(t['gaps']):.3g}), chat answer {ch['answer']!r}")


# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", default=DEFAULT_GGUF)
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--check", action="store_true",
                    help="only re-read the committed outputs and re-run the numpy checks")
    args = ap.parse_args()

    if not args.check:
        import torch
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
        vers = versions()
        print("versions:", vers)
        for name, arch, dtype, lengths, seed in TINY:
            make_tiny(name, arch, dtype, lengths, seed, vers)
        if not args.skip_smollm2:
            make_smollm2(args.gguf, vers)

    for name, *_ in TINY:
        folder = os.path.join(OUT, name)
        worst = np_check_tiny(folder)
        print(f"{name}: numpy forward from the saved files agrees, max |diff| {worst:.3g}")
        summarize_tiny(folder)
    if os.path.exists(os.path.join(OUT, "smollm2", "refs.json")):
        check_smollm2(os.path.join(OUT, "smollm2"))
    total = 0
    for root, _, files in os.walk(OUT):
        size = sum(os.path.getsize(os.path.join(root, f)) for f in files)
        total += size
        if files:
            print(f"  {os.path.relpath(root, OUT):22s} {size / 1024:8.1f} KiB")
    print(f"  total {total / 1024:.1f} KiB")


if __name__ == "__main__":
    sys.exit(main())
