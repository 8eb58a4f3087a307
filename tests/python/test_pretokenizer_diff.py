#!/usr/bin/env python3
# Differential test: the byte-level BPE pre-tokenizers of `pdvm pretokenize` (PCRE2) against
# Hugging Face `tokenizers` (Oniguruma) running the patterns the models' tokenizer.json files
# publish, on fresh random and adversarial text. Covers pre-tokenizers without a vocabulary
# in testdata (Llama 3, Qwen2) as well as GPT-2 and SmolLM/StarCoder.
# ctest-label: unit
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tokenizers import Regex, pre_tokenizers

from test_tokenizer_bpe_diff import seeded_rng
from tokenizer_fuzz import random_text

ROOT = Path(__file__).resolve().parents[2]
PDVM = os.environ.get("PDVM_BIN", str(ROOT / "build" / "pdvm"))
N_TEXTS = 1500

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
          r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
         r"\s*[\r\n]+|\s+(?!\S)|\s+")


def split(pattern):
    return pre_tokenizers.Split(Regex(pattern), behavior="isolated")


REFERENCES = {
    "gpt2": split(GPT2),
    "llama-bpe": split(LLAMA3),
    "qwen2": split(QWEN2),
    "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), split(GPT2)]),
}


def pdvm_pretokenize(pre, texts):
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps(text) + "\n")
        path = f.name
    try:
        result = subprocess.run([PDVM, "pretokenize", pre, "--jsonl", path], capture_output=True, check=False)
    finally:
        os.unlink(path)
    if result.returncode != 0:
        raise RuntimeError(f"pdvm pretokenize failed: {result.stderr.decode(errors='replace')}")
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


def main():
    rng = seeded_rng()
    total_failed = 0
    for pre, reference in REFERENCES.items():
        texts = [random_text(rng) for _ in range(N_TEXTS)]
        ours = pdvm_pretokenize(pre, texts)
        assert len(ours) == len(texts)
        failures = []
        for text, pieces in zip(texts, ours):
            expected = [piece for piece, _ in reference.pre_tokenize_str(text)]
            if pieces != expected:
                failures.append(f"{pre}: text {text!r}\n  ours     {pieces}\n  expected {expected}")
        for failure in failures[:5]:
            print(failure)
        print(f"{pre}: {len(texts) - len(failures)} passed, {len(failures)} failed")
        total_failed += len(failures)
    return 1 if total_failed else 0


if __name__ == "__main__":
    sys.exit(main())
