#!/usr/bin/env python3
# The reference quantizers against GGML itself: llama.cpp's quantizer (through llama-cpp-python,
# no importance matrix) and `pdvm convert` turn the same F32 model into each type, and every
# tensor both put in the same type must be byte-identical. The model is a synthetic one whose
# rows are partly overwritten with edge cases (zeros, constants, spikes, ties, tiny and huge).
# ctest-label: unit
import ctypes
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGUFReader

ROOT = Path(__file__).resolve().parents[2]
PDVM = os.environ.get("PDVM_BIN", str(ROOT / "build" / "pdvm"))
SEED = int(os.environ.get("PDVM_TEST_SEED", random.SystemRandom().randrange(1 << 31)))
print(f"[pdvm test] random seed {SEED} (set PDVM_TEST_SEED to replay)")
# (llama.cpp file type id, our type name); q4_k is llama.cpp's Q4_K_S, which leaves a few tensors
# in other types: those are skipped, only tensors of equal type are compared. The FFN width of 288
# is no multiple of 256, so ffn_down exercises the K-quant fallback (to q5_0 / q5_1 / q8_0).
TYPES = [(1, "f16"), (32, "bf16"), (7, "q8_0"), (2, "q4_0"), (3, "q4_1"), (8, "q5_0"), (9, "q5_1"),
         (14, "q4_k"), (16, "q5_k"), (18, "q6_k")]


def edge_rows(rng, n_rows, width):
    rows = rng.standard_normal((n_rows, width)).astype(np.float32) * np.float32(0.02)
    kinds = [
        lambda r: r * 0,                                             # zeros
        lambda r: np.full_like(r, rng.standard_normal()),            # constant
        lambda r: np.where(np.arange(width) == rng.integers(width), np.float32(3.0), np.float32(0)),
        lambda r: (rng.integers(-16, 16, width) + 0.5).astype(np.float32) / 4,  # half steps
        lambda r: r * np.float32(1e-30),                             # subnormal scales
        lambda r: r * np.float32(1e5),                               # large
        lambda r: -np.abs(r),                                        # all negative
        lambda r: np.abs(r) + 1,                                     # all positive, offset
        lambda r: r * (10.0 ** rng.uniform(-6, 2, width)).astype(np.float32),  # wide dynamic range
    ]
    for i in range(n_rows):
        if i % 2 == 0:
            rows[i] = kinds[(i // 2) % len(kinds)](rows[i])
    return rows


def main():
    import llama_cpp
    rng = np.random.default_rng(SEED)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = tmp / "f32.gguf"
        subprocess.run([PDVM, "synth", "--shape", "tiny", "--width", "256", "--ffn", "288", "--layers", "3", "--type", "f32",
                        "--seed", str(SEED), "-o", source], check=True)
        reader = GGUFReader(source, "r+")
        for tensor in reader.tensors:
            if len(tensor.shape) == 2:
                rows = tensor.data.reshape(-1, int(tensor.shape[0]))
                rows[:] = edge_rows(rng, rows.shape[0], rows.shape[1])
        reader.data.flush()
        del reader
        check = next(t for t in GGUFReader(source).tensors if len(t.shape) == 2)
        assert not check.data.reshape(-1, int(check.shape[0]))[0].any(), "edge rows were not written"

        params = llama_cpp.llama_model_quantize_default_params()
        failures = []
        for ftype, name in TYPES:
            theirs_path, ours_path = tmp / f"llama-{name}.gguf", tmp / f"pdvm-{name}.gguf"
            params.ftype = ftype
            assert llama_cpp.llama_model_quantize(str(source).encode(), str(theirs_path).encode(),
                                                  ctypes.byref(params)) == 0, name
            subprocess.run([PDVM, "convert", source, ours_path, "--type", name], check=True)
            theirs = {t.name: t for t in GGUFReader(theirs_path).tensors}
            ours = {t.name: t for t in GGUFReader(ours_path).tensors}
            compared = 0
            for tensor_name, t in theirs.items():
                if t.tensor_type != ours[tensor_name].tensor_type or len(t.shape) == 1:
                    continue
                compared += 1
                a, b = t.data.reshape(-1).view(np.uint8), ours[tensor_name].data.reshape(-1).view(np.uint8)
                if not np.array_equal(a, b):
                    first = int(np.argmax(a != b))
                    failures.append(f"{name} {tensor_name}: {int((a != b).sum())} bytes differ, first at {first}")
            assert compared >= 18, f"{name}: only {compared} tensors in a common type"
            print(f"{name}: {compared} tensors byte-identical to llama.cpp" if not failures else name)
        if failures:
            sys.exit("\n".join(failures))
    print("ok")


if __name__ == "__main__":
    main()
