#!/usr/bin/env python3
# `pdvm synth` and `pdvm convert` checked by independent implementations: llama.cpp (through
# llama-cpp-python) loads a tiny synthetic model, tokenizes and detokenizes text with its
# vocabulary and runs it; the gguf package re-quantizes the tensors that convert wrote.
# (test_synth_smollm2.py does the same for a full-size smollm2-135m geometry.)
# ctest-label: unit
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType as Q
from gguf import quants

ROOT = Path(__file__).resolve().parents[2]
PDVM = os.environ.get("PDVM_BIN", str(ROOT / "build" / "pdvm"))
SEED = int(os.environ.get("PDVM_TEST_SEED", random.SystemRandom().randrange(1 << 31)))
print(f"[pdvm test] random seed {SEED} (set PDVM_TEST_SEED to replay)")
rng = random.Random(SEED)
WORDS = ["the", "cat", "sat", "on", "mat", "Hello", "World", "tokenizer", "synthetic", "ünïcödé", "日本語",
         "🙂", "123", "4567", "!", "?", "--", "\n", "\t", "  ", "it's", "don't", "A", "zebra"]


def pdvm(*args, expect_ok=True):
    result = subprocess.run([PDVM, *map(str, args)], capture_output=True, text=True)
    if expect_ok and result.returncode != 0:
        sys.exit(f"pdvm {' '.join(map(str, args))} failed: {result.stderr}")
    return result


def random_text():
    return "".join(rng.choice(WORDS) + rng.choice(["", " ", " ", ", "]) for _ in range(rng.randrange(1, 30)))


def check_llama_cpp(path, vocab_size):
    from llama_cpp import Llama
    vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)
    assert vocab.n_vocab() == vocab_size, vocab.n_vocab()
    merged = 0
    for _ in range(50):
        text = random_text()
        tokens = vocab.tokenize(text.encode(), add_bos=False)
        assert vocab.detokenize(tokens).decode() == text, (text, tokens)
        merged += sum(len(vocab.detokenize([t])) > 1 for t in tokens)
    assert merged > 0, "no multi-byte token was ever used"
    model = Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, seed=SEED)
    tokens = model.tokenize(random_text().encode(), add_bos=True)[:32]
    model.eval(tokens)
    logits = np.array(model.scores[: len(tokens)])
    assert np.all(np.isfinite(logits)) and logits.std() > 0, "llama.cpp produced degenerate logits"


def requantized(tensor, target):
    """What the gguf package makes of a tensor converted to `target` (F32 for 1-D tensors)."""
    values = quants.dequantize(tensor.data, tensor.tensor_type)
    if len(tensor.shape) == 1:
        return values.astype(np.float32).tobytes()
    return quants.quantize(values, target).tobytes()


def check_convert(source_path, out_path, target_name, target):
    pdvm("convert", source_path, out_path, "--type", target_name)
    source, converted = GGUFReader(source_path), GGUFReader(out_path)
    assert converted.fields["general.file_type"].parts[-1][0] == {Q.F16: 1, Q.BF16: 32, Q.Q8_0: 7, Q.Q4_0: 2,
                                                                   Q.Q4_1: 3, Q.Q5_0: 8, Q.Q5_1: 9}[target]
    assert set(source.fields) == set(converted.fields)
    for key in source.fields:
        if key not in ("general.file_type",) and not key.startswith("GGUF."):
            assert [bytes(p) for p in source.fields[key].parts] == [bytes(p) for p in converted.fields[key].parts], key
    out_tensors = {t.name: t for t in converted.tensors}
    for tensor in source.tensors:
        got = out_tensors[tensor.name]
        assert list(got.shape) == list(tensor.shape), tensor.name
        assert bytes(got.data.tobytes()) == requantized(tensor, target), f"{tensor.name} differs from gguf's {target_name}"


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny = tmp / "tiny.gguf"
        pdvm("synth", "--shape", "tiny", "--type", "f32", "--seed", SEED, "-o", tiny)
        check_llama_cpp(tiny, 512)
        for name, qtype in [("f16", Q.F16), ("bf16", Q.BF16), ("q8_0", Q.Q8_0), ("q4_0", Q.Q4_0), ("q4_1", Q.Q4_1),
                            ("q5_0", Q.Q5_0), ("q5_1", Q.Q5_1)]:
            check_convert(tiny, tmp / f"tiny-{name}.gguf", name, qtype)

        bad = pdvm("synth", "--shape", "llama-9", "-o", tmp / "x.gguf", expect_ok=False)
        assert bad.returncode == 2 and bad.stderr.startswith("pdvm: error: unknown model shape"), bad.stderr
        bad = pdvm("convert", tiny, tmp / "y.gguf", "--type", "q3_k", expect_ok=False)
        assert bad.returncode == 2 and "q3_k" in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr
        assert not (tmp / "y.gguf").exists()
    print("ok")


if __name__ == "__main__":
    main()
