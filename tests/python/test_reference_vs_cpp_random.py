#!/usr/bin/env python3
# ctest-label: unit
"""C++ CPU reference vs the numpy reference on small random LLaMA models (fresh weights and
prompts each run; seed printed): GQA or not, tied head or not, head sizes 32 and 64, with and
without rope frequency factors, F32/F16/Q8_0/Q4_0 weights, and Q4_K/Q6_K through pdvm convert."""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see reference/pdvm_ref.py

import numpy as np

import model_compare
import random_model


def main():
    seed = int(os.environ.get("PDVM_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
    print(f"seed {seed} (set PDVM_TEST_SEED to replay)")
    rng = np.random.default_rng(seed)
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for index, spec in enumerate(random_model.SPECS):
            path = Path(tmp) / f"random{index}.gguf"
            random_model.write_random_llama(path, spec, rng)
            prompt = rng.integers(0, spec.n_vocab, int(rng.integers(1, 40))).tolist()
            failures, worst = model_compare.compare(path, prompt, 24, allow_near_ties=True)
            print(f"{spec.label()}: max error {worst:.2g}, {'ok' if not failures else '; '.join(failures)}")
            failed |= bool(failures)
        # K-quants: the gguf package cannot write them, `pdvm convert` can (rows of 256).
        spec = random_model.RandomLlamaSpec(n_embd=256, n_head=4, n_head_kv=2, head_dim=64, n_ff=512)
        source = Path(tmp) / "kquant_source.gguf"
        random_model.write_random_llama(source, spec, rng)
        for kquant in ("q4_k", "q6_k"):
            path = Path(tmp) / f"{kquant}.gguf"
            subprocess.run([model_compare.pdvm_bin(), "convert", str(source), str(path), "--type", kquant],
                           check=True, capture_output=True)
            prompt = rng.integers(0, spec.n_vocab, int(rng.integers(1, 40))).tolist()
            failures, worst = model_compare.compare(path, prompt, 24, allow_near_ties=True)
            print(f"{spec.label()} as {kquant}: max error {worst:.2g}, "
                  f"{'ok' if not failures else '; '.join(failures)}")
            failed |= bool(failures)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
