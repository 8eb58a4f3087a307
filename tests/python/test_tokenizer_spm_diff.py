#!/usr/bin/env python3
# Differential test: `pdvm tokenize --jsonl` with ggml-vocab-llama-spm.gguf against the
# sentencepiece library with llama2-tokenizer.model (the same vocabulary), on a few thousand
# fresh random and adversarial strings. Text with invalid UTF-8 (which sentencepiece turns into
# U+FFFD) is checked against our documented rule instead: every byte comes back unchanged when
# the ids are spelled out with sentencepiece's own piece table.
# ctest-label: unit
import os
import random
import sys
from pathlib import Path

import sentencepiece

from tokenizer_fuzz import is_valid_utf8, pdvm_tokenize, random_text, with_invalid_bytes

ROOT = Path(__file__).resolve().parents[2]
PDVM = os.environ.get("PDVM_BIN", str(ROOT / "build" / "pdvm"))
TESTDATA = Path(os.environ.get("PDVM_TESTDATA", ROOT.parent / "shared" / "testdata"))
GGUF = TESTDATA / "tokenizer" / "ggml-vocab-llama-spm.gguf"
SP_MODEL = TESTDATA / "tokenizer" / "llama2-tokenizer.model"
N_VALID = 3000
N_INVALID = 500

def spell_out(sp, ids):
    """Bytes of the ids by sentencepiece's piece table: U+2581 is a space, <0xXX> a byte."""
    out = bytearray()
    for i in ids:
        piece = sp.id_to_piece(i)
        if sp.is_byte(i):
            out.append(int(piece[3:5], 16))
        else:
            out += piece.replace("\u2581", " ").encode("utf-8")
    return bytes(out[1:] if out.startswith(b" ") else out)  # the prefix rule's space


def main():
    seed = int(os.environ.get("PDVM_TEST_SEED", random.SystemRandom().randrange(2 ** 32)))
    print(f"random seed {seed} (set PDVM_TEST_SEED to replay)")
    rng = random.Random(seed)
    valid = [random_text(rng) for _ in range(N_VALID)]
    invalid = [b for b in (with_invalid_bytes(rng) for _ in range(N_INVALID)) if not is_valid_utf8(b)]

    ours = pdvm_tokenize(PDVM, GGUF, valid + invalid)

    sp = sentencepiece.SentencePieceProcessor(model_file=str(SP_MODEL))
    failures = []
    for text, ids in zip(valid, ours):
        expected = sp.encode(text)
        if ids != expected:
            failures.append(f"text {text!r}\n  ours     {ids}\n  expected {expected}")
        elif "\u2581" not in text and sp.decode(ids) != text:  # a literal U+2581 decodes as a space
            failures.append(f"text {text!r} does not decode back")
    for data, ids in zip(invalid, ours[len(valid):]):
        if spell_out(sp, ids) != data.replace("\u2581".encode(), b" "):
            failures.append(f"bytes {data!r}: ids {ids} spell {spell_out(sp, ids)!r}")
    for failure in failures[:10]:
        print(failure)
    total = len(valid) + len(invalid)
    print(f"{total - len(failures)} passed, {len(failures)} failed "
          f"({len(valid)} valid UTF-8 texts vs sentencepiece, {len(invalid)} with invalid bytes)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
