#!/usr/bin/env python3
# The default model's tokenizer (SmolLM2: byte-level BPE, pre-tokenizer "smollm" = individual
# digits then the GPT-2 regex) against Hugging Face `tokenizers` built from the same GGUF data,
# on fresh random and adversarial texts (see test_tokenizer_bpe_diff.py).
# ctest-label: model
import os
import sys
from pathlib import Path

from test_tokenizer_bpe_diff import ROOT, check_vocab, seeded_rng

MODEL = Path(os.environ.get("PDVM_MODEL", ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))


def main():
    if not MODEL.exists():
        print(f"default model missing at {MODEL}")
        return 1 if os.environ.get("PDVM_REQUIRE_MODEL") else 0
    return 1 if check_vocab(MODEL, True, seeded_rng()) else 0


if __name__ == "__main__":
    sys.exit(main())
