#!/usr/bin/env python3
# `pdvm convert` on the default model: to f16, then to q8_0, each tensor byte-identical to what
# the gguf package makes of the same conversion (dequantize, then quantize), metadata kept.
# ctest-label: model
import os
import sys
import tempfile
from pathlib import Path

from gguf import GGMLQuantizationType as Q

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_synth_convert import ROOT, check_convert  # noqa: E402


def main():
    model = Path(os.environ.get("PDVM_MODEL", ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    if not model.exists():
        if os.environ.get("PDVM_REQUIRE_MODEL"):
            sys.exit(f"default model missing at {model}")
        print(f"skipped: no default model at {model}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        f16 = Path(tmp) / "f16.gguf"
        check_convert(model, f16, "f16", Q.F16)
        check_convert(f16, Path(tmp) / "q8_0.gguf", "q8_0", Q.Q8_0)
    print("ok")


if __name__ == "__main__":
    main()
