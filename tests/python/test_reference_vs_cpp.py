#!/usr/bin/env python3
# ctest-label: model
"""C++ CPU reference vs the numpy reference on the default model: logits of three prompts and
64 greedy steps each (tokens must agree; logits within 1e-4 of the largest)."""
import subprocess
import sys

import model_compare
from default_model import MODEL, require_default_model

# Token ids of fixed prompts (SmolLM2 vocabulary): "The capital of France is", a chat turn
# asking for it, and "def fib(n):\n    if n <= 1:\n".
PROMPTS = [
    [504, 3575, 282, 4649, 314],
    [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198],
    [1604, 3987, 24, 94, 25, 42, 198, 333, 585, 304, 2067, 45, 216, 33, 42, 198],
]
GREEDY_STEPS = 64


def main():
    require_default_model()
    reference = model_compare.pdvm_ref.LlamaReference(str(MODEL))
    failed = False
    for prompt in PROMPTS:
        failures, worst = model_compare.compare(MODEL, prompt, GREEDY_STEPS, reference)
        print(f"prompt of {len(prompt)} tokens: max error {worst:.2g}, {'ok' if not failures else '; '.join(failures)}")
        failed |= bool(failures)
    # End to end from text: the tokenizer gives the first prompt's ids, and the model knows.
    result = subprocess.run([model_compare.pdvm_bin(), "logits", "-m", str(MODEL), "--backend", "cpu-ref",
                             "-p", "The capital of France is", "--greedy", "2", "--print-tokens"],
                            capture_output=True, text=True, check=False)
    ids_line, _, text = result.stdout.partition("\n")
    print(f"text prompt: exit {result.returncode}, continuation {text.strip()!r}")
    if result.returncode != 0 or "Paris" not in text:
        print(f"FAIL: expected ' Paris' from the text prompt, got {result.stdout!r} {result.stderr!r}")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
