#!/usr/bin/env python3
# `pdvm convert` on the default model: to f16, then to q8_0, each tensor byte-identical to what
# the gguf package makes of the same conversion (dequantize, then quantize), metadata kept.
# ctest-label: model
import sys
import tempfile
from pathlib import Path

from gguf import GGMLQuantizationType as Q

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_synth_convert import check_convert  # noqa: E402
from default_model import MODEL, require_default_model  # noqa: E402


def main():
    require_default_model()
    with tempfile.TemporaryDirectory() as tmp:
        f16 = Path(tmp) / "f16.gguf"
        check_convert(MODEL, f16, "f16", Q.F16)
        check_convert(f16, Path(tmp) / "q8_0.gguf", "q8_0", Q.Q8_0)
    print("ok")


if __name__ == "__main__":
    main()
