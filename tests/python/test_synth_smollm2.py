#!/usr/bin/env python3
# A full-size synthetic smollm2-135m: llama.cpp loads and runs it, its tokenizer round-trips
# text, and its llama.* geometry keys equal those of the released SmolLM2 file.
# ctest-label: slow
import os
import sys
import tempfile
from pathlib import Path

from gguf import GGUFReader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_synth_convert import ROOT, SEED, check_llama_cpp, pdvm  # noqa: E402


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        smol = tmp / "smol.gguf"
        pdvm("synth", "--shape", "smollm2-135m", "--type", "q4_0", "--seed", SEED, "-o", smol)
        check_llama_cpp(smol, 49152)
        real = Path(os.environ.get("PDVM_MODEL", ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
        if real.exists():  # the geometry keys agree with the released model's
            ours, theirs = GGUFReader(smol).fields, GGUFReader(real).fields
            for key in theirs:
                if key.startswith("llama."):
                    assert theirs[key].parts[-1].tolist() == ours[key].parts[-1].tolist(), key
    print("ok")


if __name__ == "__main__":
    main()
