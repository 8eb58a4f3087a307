#!/usr/bin/env python3
# Differential test: byte-level BPE of `pdvm tokenize --jsonl` against Hugging Face
# `tokenizers` (an independent implementation) built from the same GGUF vocabulary and merges
# with the pre-tokenizer pipeline each model uses: GPT-2 (byte-level regex) and StarCoder
# (individual digits, then the byte-level regex). Text with invalid UTF-8, which `tokenizers`
# cannot take, is checked against our rule: its bytes come back unchanged through the byte map.
# ctest-label: unit
import os
import random
import sys
from pathlib import Path

import gguf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from tokenizer_fuzz import is_valid_utf8, pdvm_tokenize, random_text, with_invalid_bytes

ROOT = Path(__file__).resolve().parents[2]
PDVM = os.environ.get("PDVM_BIN", str(ROOT / "build" / "pdvm"))
TESTDATA = Path(os.environ.get("PDVM_TESTDATA", ROOT.parent / "shared" / "testdata"))
VOCABS = {"ggml-vocab-gpt-2.gguf": False, "ggml-vocab-starcoder.gguf": True}  # name: digits split
N_VALID = 1500
N_INVALID = 250


def read_vocab(path):
    reader = gguf.GGUFReader(path)

    def strings(key):
        field = reader.fields[key]
        return [bytes(field.parts[i]).decode("utf-8") for i in field.data]

    return strings("tokenizer.ggml.tokens"), strings("tokenizer.ggml.merges")


def hf_tokenizer(tokens, merges, split_digits):
    vocab = {text: i for i, text in reversed(list(enumerate(tokens)))}  # first id wins on duplicates
    tokenizer = Tokenizer(models.BPE(vocab, [tuple(m.split(" ", 1)) for m in merges]))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                               if split_digits else byte_level)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def byte_stand_ins():
    """The GPT-2 byte -> printable character map, written from its definition."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(0x100, 0x200))
    return {chr(b if b in printable else next(extra)): b for b in range(256)}


def check_vocab(path, split_digits, rng, n_valid=N_VALID, n_invalid=N_INVALID):
    """Runs the comparison on one GGUF vocabulary; prints the first mismatches and a summary
    line, returns the number of failures."""
    name = Path(path).name
    to_byte = byte_stand_ins()
    tokens, merges = read_vocab(path)
    hf = hf_tokenizer(tokens, merges, split_digits)
    valid = [random_text(rng) for _ in range(n_valid)]
    invalid = [b for b in (with_invalid_bytes(rng) for _ in range(n_invalid)) if not is_valid_utf8(b)]
    ours = pdvm_tokenize(PDVM, path, valid + invalid)
    # Bytes without a token (StarCoder lacks some, e.g. 0xF1) are dropped, as by `tokenizers`.
    vocab = set(tokens)
    unspellable = {b for c, b in to_byte.items() if c not in vocab}

    def spellable(data):
        return bytes(b for b in data if b not in unspellable)

    def spelled(ids):
        return bytes(to_byte[c] for i in ids for c in tokens[i])

    failures = []
    for text, ids in zip(valid, ours):
        expected = hf.encode(text).ids
        if ids != expected:
            failures.append(f"{name}: text {text!r}\n  ours     {ids}\n  expected {expected}")
        elif spelled(ids) != spellable(text.encode()):
            failures.append(f"{name}: text {text!r} does not decode back")
    for data, ids in zip(invalid, ours[len(valid):]):
        if spelled(ids) != spellable(data):
            failures.append(f"{name}: bytes {data!r}: ids {ids} spell {spelled(ids)!r}")
    for failure in failures[:10]:
        print(failure)
    n = len(valid) + len(invalid)
    print(f"{name}: {n - len(failures)} passed, {len(failures)} failed "
          f"({len(valid)} valid UTF-8 texts vs tokenizers, {len(invalid)} with invalid bytes)")
    return len(failures)


def seeded_rng():
    seed = int(os.environ.get("PDVM_TEST_SEED", random.SystemRandom().randrange(2 ** 32)))
    print(f"random seed {seed} (set PDVM_TEST_SEED to replay)")
    return random.Random(seed)


def main():
    rng = seeded_rng()
    failed = sum(check_vocab(TESTDATA / "tokenizer" / name, split_digits, rng)
                 for name, split_digits in VOCABS.items())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
