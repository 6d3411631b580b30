#!/usr/bin/env python3
"""Reference tokenizations by Hugging Face `tokenizers` for the byte-level BPE tokenizer.

Reads models/SmolLM2-135M-Instruct.Q4_1.gguf (only that file: the Hub is never contacted) and
writes, under Tests/QLoRATests/Fixtures/ and nowhere else:

  tokenizer-smollm2/           tokenizer.json (compact) and tokenizer_config.json, as
                               transformers saves the tokenizer it builds from the GGUF
  tokenizer-smollm2.json       ids and decoded text for every string of CORPUS
  tokenizer-pretokenizers.json the words each pre-tokenizer family cuts CORPUS into

transformers builds the GGUF's tokenizer as GPT2Tokenizer: the GGUF's vocabulary and merges,
its control tokens (type 3) as special added tokens, and -- since transformers has no entry for
tokenizer.ggml.pre = "smollm" -- GPT-2's ByteLevel(use_regex=True) pre-tokenizer. SmolLM2's own
tokenizer.json, and llama.cpp's "smollm" pre-tokenizer, first isolate every digit
(Digits(individual_digits=True), llama.cpp's "\\p{N}"), then apply the GPT-2 regex. The two
disagree only where the GPT-2 regex glues a space to a digit after a run of spaces ("x  1":
"x","Ġ","Ġ","1" against "x","ĠĠ","1"); "differs_from_transformers_gguf" lists those strings.

tokenizer-smollm2.json:
  "generator"   this script, pinned versions, the model file's name, size and sha256
  "cases"       [{"text", "decoded", "decoded_skip_special"}] in CORPUS order; decoded is
                tok.decode(ids of "smollm") (transformers, clean_up_tokenization_spaces False),
                the text itself unless it holds one of the 21 bytes the vocabulary has no
                token for (0x04, 0xF1, ...), which tokenizers drops
  "missing_bytes"  those bytes
  "variants"    the same vocabulary and merges under several pre-tokenizers, each with
                "pre_tokenizer" (the tokenizer.json object), "ignore_merges" and "ids" (one list
                per case, add_special_tokens=False):
      "smollm"                 Digits(individual_digits) then ByteLevel: SmolLM2's tokenizer
      "transformers_gguf"      ByteLevel only: what transformers builds from the GGUF, and what
                               tokenizer-smollm2/tokenizer.json says; asserted equal to
                               tok.encode(text, add_special_tokens=False)
      "llama3", "qwen2"        transformers' Split regex for tokenizer.ggml.pre "llama-bpe" /
                               "qwen2" then ByteLevel(use_regex=False); llama3 with
                               ignore_merges as Llama 3's tokenizer.json has it
  "decode_partial"  [{"ids", "decoded"}]: prefixes of a multi-byte character's ids, decoded
                    with U+FFFD for the incomplete UTF-8
  "differs_from_transformers_gguf"  indices of cases where "smollm" and "transformers_gguf" differ

tokenizer-pretokenizers.json: {"gpt2" | "llama3" | "qwen2" | "smollm": [[word, ...] per case]},
the words as pre_tokenize_str returns them before the byte-level mapping (plain text).

Environment (CPU only, Python 3.11):

    python3 -m venv /work/venv-fixtures
    /work/venv-fixtures/bin/pip install torch==2.15.0 transformers==5.23.0 tokenizers==0.23.3 \\
        gguf==0.19.0 numpy==2.4.6 safetensors==0.8.0
    /work/venv-fixtures/bin/python tools/make_tokenizer_fixtures.py

Deterministic: no randomness; JSON written with sorted keys.
"""

import hashlib
import json
import os
import shutil
import sys
import tempfile

import transformers
from tokenizers import Regex, Tokenizer, pre_tokenizers
from transformers import AutoTokenizer

import fixture_common as fc

PINNED = {"python": "3.11", "transformers": "5.23.0", "tokenizers": "0.23.3"}

MODEL_DIR = "models"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FIXTURES = "Tests/QLoRATests/Fixtures"

# transformers.integrations.gguf.gguf_tokenizer_mapping (_LLAMA3_SPLIT) and
# transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX, as of 5.23.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

LONG_PARAGRAPH = (
    "Byte-pair encoding was first described in 1994 as a data compression technique: the most "
    "frequent pair of adjacent bytes is replaced, again and again, by a byte that does not occur "
    "in the data. Language models use a variant. A vocabulary starts from the 256 possible bytes, "
    "and training adds one merged symbol at a time -- \"th\", then \"the\", then \" the\" -- until "
    "it holds 49,152 tokens (SmolLM2), 128,256 (Llama 3) or 151,936 (Qwen2). Encoding replays the "
    "merges in the order they were learned. Because every byte is a token, nothing is ever out of "
    "vocabulary: Ω, ñ, 中文 and 🦙 all survive the round trip, even when they cost several tokens "
    "each. Numbers are a known weak spot; some tokenizers split them into single digits, others "
    "into groups of up to three, which is why 3.14159 and 1,000,000 may look so different "
    "from one model to the next.\n"
)

CORPUS = [
    # plain text and casing
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "HELLO WORLD, ALL CAPS AND SHOUTING!!!",
    "",
    " ",
    "a",
    # contractions
    "I'm sure it's fine; we'll see, they've said, she'd go, you're right, don't.",
    "I'M SURE IT'S FINE; WE'LL SEE, THEY'VE SAID, SHE'D GO, YOU'RE RIGHT, DON'T.",
    "DON'T Don'T can'T 'tis ''s 'x 'RE 'Ll",
    "O'Neill's mother's-in-law's house",
    "It'\u017f a long s: \u017f",
    # numbers
    "1234567",
    "3.14159",
    "1,000 and 1,000,000 and 12,345.67",
    "x  1",
    "1  2   3    4",
    "in 2024, pi is 3.14 and e is 2.71828",
    "abc123def 456ghi 0x1F 1e-9 -42 +7",
    "Phone: +1 (555) 123-4567, ext. 89",
    "Fractions \u00bd \u00be and superscripts x\u00b2 y\u00b3, Roman \u2166, Arabic-Indic \u0661\u0662\u0663",
    # whitespace
    "trailing spaces   ",
    "   leading spaces",
    "two  spaces, three   spaces, four    spaces",
    "tabs\tand\t\tdouble tabs\t",
    "line one\nline two\n\nline four\n\n\n",
    "windows\r\nline\r\n\r\nendings",
    "  \n  mixed \t \n\t indentation\n    ",
    "\n",
    "\n\n\n\n",
    "\t\t\t",
    "    ",
    "non\u00a0breaking\u3000ideographic\u2009thin\u2028line sep",
    "x\u000by\u000cz\u0085w",
    # code
    "def f(x):\n    return x**2\n",
    "func add(_ a: Int, _ b: Int) -> Int {\n    return a + b\n}\n",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }\n",
    "const xs = [1, 2, 3].map((x) => x * 2); // doubled\n",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
    "fn main() {\n\tlet v: Vec<u8> = vec![0xff; 16];\n\tprintln!(\"{:?}\", v);\n}",
    "<div class=\"note\">&nbsp;a &amp; b</div>",
    "if (a && b || !c) { x += 1; } else { y -= 2; }",
    "    indented = {'key': \"value\", 'n': None}\n",
    # URLs and paths
    "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct?x=1&y=two#frag",
    "mailto:someone@example.com and /usr/share/common-licenses/GPL-3",
    # accented Latin and other scripts
    "na\u00efve caf\u00e9 \u2014 \u00e9migr\u00e9 r\u00e9sum\u00e9 Stra\u00dfe \u00c5ngstr\u00f6m",
    "e\u0301 vs \u00e9 (combining acute vs precomposed)",
    "\u0141\u00f3d\u017a, Z\u00fcrich, S\u00e3o Paulo, Reykjav\u00edk, \u0130stanbul",
    "\u4eca\u65e5\u306f\u3044\u3044\u5929\u6c17\u3067\u3059\u306d\u3002",
    "\u6211\u7231\u81ea\u7136\u8bed\u8a00\u5904\u7406\uff0c\u5b83\u5f88\u6709\u8da3\u3002",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8\uc785\ub2c8\ub2e4.",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac",
    "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e04\u0e23\u0e31\u0e1a",
    "\U0001d49c\U0001d4b7\U0001d4b8 \U00010348 math script and Gothic",
    "Unicode 17: x\u0c5cy \U00011de0\U00011de1 z\u088f",
    # emoji
    "\U0001f642 emoji",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 family",
    "\U0001f44d\U0001f3fd \U0001f44b\U0001f3ff skin tones",
    "\U0001f1fa\U0001f1f8 \U0001f1ef\U0001f1f5 flags, 1\ufe0f\u20e3 keycap, \u2764\ufe0f heart",
    "\U0001f999\U0001f999\U0001f999",
    # special tokens inside text
    "<|im_start|>user\nHi<|im_end|>\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text",
    "<|im_start|><|im_end|><|endoftext|>",
    "<|im_start partial <|im_end| <|im_end|x",
    "  <|im_end|>  ",
    "<repo_name>qlora<file_sep>main.swift",
    # odd characters
    "\x00nul and \x7f del and \x1b[31mred\x1b[0m",
    "replacement \ufffd and BOM \ufeff and ZWJ\u200d alone",
    # bytes SmolLM2's vocabulary has no token for: tokenizers drops them
    "ctrl \x04\x06\x13\x14\x16\x1d gone, \x05 kept",
    "!\U00050000! and \U000a1234x in planes 5 and 10 (lead bytes 0xF1, 0xF2)",
    "(hello) [world] {x} 'quoted' \"double\" `tick`",
    "...!!!???---___***",
    LONG_PARAGRAPH,
]


def variant(base_json, pre_tokenizer, ignore_merges):
    spec = json.loads(base_json)
    spec["pre_tokenizer"] = json.loads(pre_tokenizer.__getstate__())  # the tokenizer.json object
    spec["model"]["ignore_merges"] = ignore_merges
    return spec["pre_tokenizer"], Tokenizer.from_str(json.dumps(spec))


def split_then_bytes(regex):
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])


def main():
    path = os.path.join(MODEL_DIR, MODEL_FILE)
    if not os.path.exists(path):
        sys.exit(f"run from the repository root; {path} not found")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    versions = fc.check_versions(PINNED)
    with open(path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()

    tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=MODEL_FILE)
    backend = tok.backend_tokenizer
    base_json = backend.to_str()

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    families = {
        "smollm": (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]), False),
        "transformers_gguf": (byte_level, False),
        "llama3": (split_then_bytes(LLAMA3_SPLIT), True),
        "qwen2": (split_then_bytes(QWEN2_SPLIT), False),
    }
    variants = {}
    for name, (pre, ignore_merges) in families.items():
        pre_json, t = variant(base_json, pre, ignore_merges)
        ids = [t.encode(s, add_special_tokens=False).ids for s in CORPUS]
        variants[name] = {"pre_tokenizer": pre_json, "ignore_merges": ignore_merges, "ids": ids}

    reference = [tok.encode(s, add_special_tokens=False) for s in CORPUS]
    assert reference == variants["transformers_gguf"]["ids"], "rebuilt tokenizer differs from transformers'"
    smollm = variants["smollm"]["ids"]
    differs = [i for i, (a, b) in enumerate(zip(smollm, reference)) if a != b]
    vocab = json.loads(base_json)["model"]["vocab"]
    spelling = transformers.convert_slow_tokenizer.bytes_to_unicode()
    missing = {b for b in range(256) if spelling[b] not in vocab}
    cases = []
    for s, ids in zip(CORPUS, smollm):
        decoded = tok.decode(ids)
        assert (decoded == s) == (not missing & set(s.encode("utf-8"))), (s, decoded)
        cases.append({"text": s, "decoded": decoded, "decoded_skip_special": tok.decode(ids, skip_special_tokens=True)})

    partial = []
    for s in ["\U0001f999", "\U0001f468\u200d\U0001f469", "\u4eca\u65e5"]:
        ids = tok.encode(s, add_special_tokens=False)
        for n in range(1, len(ids)):
            partial.append({"ids": ids[:n], "decoded": tok.decode(ids[:n])})

    words = {
        "gpt2": byte_level_words(CORPUS, pre_tokenizers.Split(Regex(
            r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"), behavior="isolated")),
        "llama3": byte_level_words(CORPUS, pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated")),
        "qwen2": byte_level_words(CORPUS, pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated")),
        "smollm": byte_level_words(CORPUS, pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Split(Regex(
                r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"), behavior="isolated"),
        ])),
    }
    # The GPT-2 Split above must cut exactly as ByteLevel(use_regex=True) does.
    unspell = {c: b for b, c in spelling.items()}
    for s, ws in zip(CORPUS, words["gpt2"]):
        via_bytes = [bytes(unspell[c] for c in w).decode("utf-8") for w, _ in byte_level.pre_tokenize_str(s)]
        assert via_bytes == ws, (s, via_bytes, ws)

    generator = {"script": "tools/make_tokenizer_fixtures.py", "versions": versions, "model_file": MODEL_FILE,
                 "model_bytes": os.path.getsize(path), "model_sha256": sha}
    os.makedirs(FIXTURES, exist_ok=True)
    write_json(os.path.join(FIXTURES, "tokenizer-smollm2.json"), {
        "generator": generator, "cases": cases, "variants": variants, "decode_partial": partial,
        "missing_bytes": sorted(missing),
        "differs_from_transformers_gguf": differs})
    write_json(os.path.join(FIXTURES, "tokenizer-pretokenizers.json"), {"generator": generator, **words})

    folder = os.path.join(FIXTURES, "tokenizer-smollm2")
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        backend.save(os.path.join(folder, "tokenizer.json"), pretty=False)  # 1.5 MB instead of 3.5
        shutil.copy(os.path.join(tmp, "tokenizer_config.json"), folder)
    print(f"{len(CORPUS)} strings; smollm and transformers' GGUF tokenizer differ on {len(differs)}: {differs}")


def byte_level_words(corpus, pre):
    return [[w for w, _ in pre.pre_tokenize_str(s)] for s in corpus]


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, sort_keys=True, indent=None, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
