#!/usr/bin/env python3
# `pdvm tokenize` as a user runs it: the table, --ids-only, --no-bos, --no-special, against
# sentencepiece on random text; a missing file and an unknown pre-tokenizer fail with one line.
# ctest-label: unit
import os
import subprocess
import sys
from pathlib import Path

import sentencepiece

from test_tokenizer_bpe_diff import seeded_rng

ROOT = Path(__file__).resolve().parents[2]
PDVM = os.environ.get("PDVM_BIN", str(ROOT / "build" / "pdvm"))
TESTDATA = Path(os.environ.get("PDVM_TESTDATA", ROOT.parent / "shared" / "testdata"))
GGUF = TESTDATA / "tokenizer" / "ggml-vocab-llama-spm.gguf"
SP_MODEL = TESTDATA / "tokenizer" / "llama2-tokenizer.model"


def pdvm(*args):
    return subprocess.run([PDVM, "tokenize", *map(str, args)], capture_output=True, text=True, check=False)


def main():
    rng = seeded_rng()
    sp = sentencepiece.SentencePieceProcessor(model_file=str(SP_MODEL))
    words = ["Hello", "world", "naïve", "日本語", "😀", "</s>", "  ", "42", "\t"]
    failures = []
    checks = 0
    for _ in range(5):
        text = " ".join(rng.choice(words) for _ in range(rng.randrange(1, 8)))
        expected = sp.encode(text)
        # sentencepiece reads "</s>" as text: so must we, with --no-special.
        ids_only = pdvm(GGUF, text, "--ids-only", "--no-special")
        table = pdvm(GGUF, text, "--no-special")
        no_bos = pdvm(GGUF, text, "--ids-only", "--no-bos", "--no-special")
        checks += 3
        table_ids = [int(line.split()[0]) for line in table.stdout.splitlines()[2:]]
        if [int(x) for x in ids_only.stdout.split()] != [sp.bos_id()] + expected:
            failures.append(f"--ids-only {text!r}: {ids_only.stdout!r} vs BOS + {expected}")
        if table_ids != [sp.bos_id()] + expected:
            failures.append(f"table {text!r}: {table.stdout!r}")
        if [int(x) for x in no_bos.stdout.split()] != expected:
            failures.append(f"--no-bos {text!r}: {no_bos.stdout!r}")
    parsed = pdvm(GGUF, "a</s>", "--ids-only", "--no-bos").stdout.split()
    as_text = pdvm(GGUF, "a</s>", "--ids-only", "--no-bos", "--no-special").stdout.split()
    if parsed[-1] != str(sp.eos_id()) or str(sp.eos_id()) in as_text:
        failures.append(f"special parsing: {parsed} / {as_text}")
    checks += 2
    missing = pdvm(TESTDATA / "no-such.gguf", "x")
    if missing.returncode == 0 or not missing.stderr.startswith("pdvm: error:"):
        failures.append(f"missing file: rc {missing.returncode} {missing.stderr!r}")
    for failure in failures:
        print(failure)
    print(f"{checks - len(failures)} checks passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
