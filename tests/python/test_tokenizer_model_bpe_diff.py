#!/usr/bin/env python3
# The default model's tokenizer (SmolLM2: byte-level BPE, pre-tokenizer "smollm" = individual
# digits then the GPT-2 regex) against Hugging Face `tokenizers` built from the same GGUF data,
# on fresh random and adversarial texts (see test_tokenizer_bpe_diff.py).
# ctest-label: model
import sys

from test_tokenizer_bpe_diff import check_vocab, seeded_rng
from default_model import MODEL, require_default_model



def main():
    require_default_model()
    return 1 if check_vocab(MODEL, True, seeded_rng()) else 0


if __name__ == "__main__":
    sys.exit(main())
