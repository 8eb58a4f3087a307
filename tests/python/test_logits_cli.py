#!/usr/bin/env python3
# ctest-label: unit
"""`pdvm logits` on a random model: .npy shapes and the one-line errors for bad flags, token ids
outside the vocabulary and context overflow."""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import model_compare
import random_model


def run(*args):
    return subprocess.run([model_compare.pdvm_bin(), "logits", *args], capture_output=True, text=True)


def main():
    seed = int(os.environ.get("PDVM_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
    print(f"seed {seed} (set PDVM_TEST_SEED to replay)")
    rng = np.random.default_rng(seed)
    failures = []

    def expect(condition, what):
        if not condition:
            failures.append(what)

    with tempfile.TemporaryDirectory() as tmp:
        spec = random_model.RandomLlamaSpec(n_vocab=300)
        model = str(Path(tmp) / "model.gguf")
        random_model.write_random_llama(model, spec, rng)
        out, steps = str(Path(tmp) / "out.npy"), str(Path(tmp) / "steps.npy")
        tokens = ",".join(str(t) for t in rng.integers(0, 300, 7))

        result = run("-m", model, "--backend", "cpu-ref", "--tokens", tokens, "--out", out,
                     "--greedy", "3", "--greedy-out", steps)
        expect(result.returncode == 0, f"plain run failed: {result.stderr}")
        if result.returncode == 0:
            expect(np.load(out).shape == (7, 300), f"prompt logits shape {np.load(out).shape}")
            expect(np.load(steps).shape == (3, 300), f"greedy logits shape {np.load(steps).shape}")
            ids = [int(t) for t in result.stdout.split(",")]
            expect(ids == [int(np.argmax(row)) for row in np.load(steps)], "greedy ids are not the argmax")

        cases = [
            (["--tokens", "1,x,3"], 2, "'x' is not a token id"),
            (["--tokens", "1,,3"], 2, "is not a token id"),
            (["--tokens", "5,300"], 1, "outside the vocabulary"),
            (["--tokens", tokens, "--ctx", "8", "--greedy", "4"], 1, "context size 8"),
            (["--tokens", tokens, "--backend", "abacus"], 2, "unknown backend 'abacus'"),
        ]
        for args, code, message in cases:
            result = run("-m", model, *args)
            lines = result.stderr.strip().splitlines()
            expect(result.returncode == code and len(lines) == 1 and message in lines[0],
                   f"{args}: exit {result.returncode}, stderr {result.stderr!r}")
    for failure in failures:
        print("FAIL:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
