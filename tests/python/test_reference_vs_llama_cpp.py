#!/usr/bin/env python3
# ctest-label: unit
"""Cross-checks the numpy reference (the yardstick of the C++ tests) against llama.cpp, through
llama-cpp-python, on random F32-weight models of every test shape: all-position logits with an
F32 KV cache must agree to 1e-5 of the largest. Skipped when llama_cpp is not installed."""
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see reference/pdvm_ref.py

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "reference"))
import pdvm_ref  # noqa: E402
import random_model  # noqa: E402

TOLERANCE = 1e-5
GGML_TYPE_F32 = 0


def main():
    try:
        from llama_cpp import Llama
    except ImportError:
        print("skipped: llama_cpp (llama-cpp-python) is not installed")
        return 0
    seed = int(os.environ.get("PDVM_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
    print(f"seed {seed} (set PDVM_TEST_SEED to replay)")
    rng = np.random.default_rng(seed)
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for index, spec in enumerate(random_model.SPECS):
            spec.weight_type = "F32"  # llama.cpp rounds activations for other weight types
            path = str(Path(tmp) / f"random{index}.gguf")
            random_model.write_random_llama(path, spec, rng, tokenizer=True)
            tokens = rng.integers(0, spec.n_vocab, int(rng.integers(2, 48))).tolist()
            llama = Llama(model_path=path, logits_all=True, verbose=False, n_ctx=128, n_threads=1,
                          type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
            llama.eval(tokens)
            theirs = np.array(llama.scores[:len(tokens)], dtype=np.float64)
            ours = pdvm_ref.LlamaReference(path).forward(tokens)
            error = float(np.abs(theirs - ours).max() / np.abs(ours).max())
            ok = error < TOLERANCE
            print(f"{spec.label()}: {len(tokens)} tokens, max|a-b|/max|b| = {error:.2g} {'ok' if ok else 'FAIL'}")
            failed |= not ok
            del llama
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
