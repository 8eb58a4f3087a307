#!/usr/bin/env python3
"""Writes test vectors for the C++ reference conversions (tests/unit/tensor_type_test.cpp).

usage: gen_quant_vectors.py OUTDIR SEED

For every type NAME (GGML lower-case name) it writes, when the type has a conversion:
  NAME.blocks / NAME.dequant   raw blocks and their float32 dequantization
  NAME.input  / NAME.quant     float32 inputs and their quantized bytes
Expected values come from the gguf package (an independent implementation of the formats);
types it does not cover (q8_1, q8_k, the integer types) are written out here in plain numpy.
Deterministic for a seed.
"""
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import quants

# Block geometry (elements, bytes) and the byte offsets of the fp16 scale fields.
BLOCKS = {
    "q4_0": (Q.Q4_0, 32, 18, [0]),
    "q4_1": (Q.Q4_1, 32, 20, [0, 2]),
    "q5_0": (Q.Q5_0, 32, 22, [0]),
    "q5_1": (Q.Q5_1, 32, 24, [0, 2]),
    "q8_0": (Q.Q8_0, 32, 34, [0]),
    "q2_k": (Q.Q2_K, 256, 84, [80, 82]),
    "q3_k": (Q.Q3_K, 256, 110, [108]),
    "q4_k": (Q.Q4_K, 256, 144, [0, 2]),
    "q5_k": (Q.Q5_K, 256, 176, [0, 2]),
    "q6_k": (Q.Q6_K, 256, 210, [208]),
}
QUANTIZABLE = {"f16": Q.F16, "bf16": Q.BF16, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1, "q5_0": Q.Q5_0,
               "q5_1": Q.Q5_1, "q8_0": Q.Q8_0}

# fp16 scales worth covering: zeros of both signs, subnormals, the normal limits, one.
SPECIAL_F16 = np.array([0x0000, 0x8000, 0x0001, 0x03FF, 0x0400, 0x7BFF, 0xFBFF, 0x3C00, 0x8001],
                       dtype=np.uint16)


def f16_scales(rng, n):
    """Random finite fp16 bit patterns, a quarter of them drawn from SPECIAL_F16."""
    bits = rng.integers(0, 1 << 16, size=n, dtype=np.uint16)
    bits = np.where((bits & 0x7C00) == 0x7C00, bits & 0xBFFF, bits)  # exponent 31 -> 15
    special = rng.random(n) < 0.25
    return np.where(special, rng.choice(SPECIAL_F16, size=n), bits).astype(np.uint16)


def random_blocks(rng, n_blocks, block_bytes, scale_offsets):
    blocks = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for offset in scale_offsets:
        blocks[:, offset:offset + 2] = f16_scales(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return blocks


def quant_inputs(rng, n_blocks, block):
    """Gaussian blocks at scales from 1e-8 to 1e4, plus blocks that stress edge cases."""
    scale = 10.0 ** rng.uniform(-8, 4, size=(n_blocks, 1))
    x = (rng.standard_normal((n_blocks, block)) * scale).astype(np.float32)
    x[0] = 0.0                                   # all zero: d = 0
    x[1] = np.float32(rng.standard_normal())     # constant block
    x[2] = -0.0                                  # negative zeros
    x[3] = 0.0
    x[3, rng.integers(block)] = -3.5             # single negative extreme
    # Values on exact half steps of the quant grid, where rounding ties happen.
    x[4] = (rng.integers(-16, 16, size=block) + 0.5).astype(np.float32) * np.float32(0.25)
    x[5] = rng.integers(-127, 128, size=block).astype(np.float32)
    x[5, 0] = 127.0
    x[6] = np.abs(x[6])                          # all positive
    x[7] = -np.abs(x[7])                         # all negative
    return x.reshape(-1)


def f16_inputs(rng, n):
    """Float32 values around the fp16 grid: ties between neighbours, subnormals, overflow."""
    h = rng.integers(0, 0x7BFF, size=n, dtype=np.uint16)
    lo = h.view(np.float16).astype(np.float32)
    hi = (h + 1).view(np.float16).astype(np.float32)
    ties = (lo + hi) / np.float32(2)             # exact in float32
    noise = (rng.standard_normal(n) * 10.0 ** rng.uniform(-9, 5.5, size=n)).astype(np.float32)
    limits = np.array([65504, 65519.996, 65520, 65536, 1e30, 2.0 ** -24, 2.0 ** -25, 2.0 ** -26,
                       1.5 * 2.0 ** -25, 2.0 ** -14, np.inf], dtype=np.float32)
    signs = np.where(rng.random(2 * n + limits.size) < 0.5, -1, 1).astype(np.float32)
    return np.concatenate([ties, noise, limits]) * signs


def bf16_inputs(rng, n):
    bits = rng.integers(0, 1 << 32, size=n, dtype=np.uint32)
    bits[: n // 4] |= 0x7F800000  # exponent all ones: inf and nan patterns
    return bits.view(np.float32)


def write(outdir, name, suffix, array):
    (outdir / f"{name}.{suffix}").write_bytes(np.ascontiguousarray(array).tobytes())


def main():
    outdir, seed = Path(sys.argv[1]), int(sys.argv[2])
    outdir.mkdir(parents=True, exist_ok=True)
    np.seterr(over="ignore")  # overflow to infinity is one of the cases under test
    rng = np.random.default_rng(seed)

    # Dequantization of raw blocks.
    all_f16 = np.arange(1 << 16, dtype=np.uint16)
    write(outdir, "f16", "blocks", all_f16)
    write(outdir, "f16", "dequant", quants.dequantize(all_f16.view(np.uint8), Q.F16))
    write(outdir, "bf16", "blocks", all_f16)
    write(outdir, "bf16", "dequant", quants.dequantize(all_f16.view(np.uint8), Q.BF16))
    f32_raw = rng.integers(0, 256, size=4096, dtype=np.uint8)
    write(outdir, "f32", "blocks", f32_raw)
    write(outdir, "f32", "dequant", quants.dequantize(f32_raw, Q.F32))
    for name, (qtype, _, block_bytes, scale_offsets) in BLOCKS.items():
        n_blocks = 64 if block_bytes < 40 else 24
        raw = random_blocks(rng, n_blocks, block_bytes, scale_offsets)
        write(outdir, name, "blocks", raw)
        write(outdir, name, "dequant", quants.dequantize(raw.reshape(-1), qtype))

    # Not in the gguf package: q8_1 (fp16 d, fp16 sum, 32 int8), q8_k (fp32 d, 256 int8,
    # 16 int16 sums) and the plain integer/f64 types.
    q8_1 = random_blocks(rng, 64, 36, [0, 2])
    write(outdir, "q8_1", "blocks", q8_1)
    d = q8_1[:, 0:2].copy().view(np.float16).astype(np.float32)
    write(outdir, "q8_1", "dequant", d * q8_1[:, 4:].view(np.int8).astype(np.float32))
    q8_k = rng.integers(0, 256, size=(16, 292), dtype=np.uint8)
    q8_k[:, 0:4] = (rng.standard_normal((16, 1)) * 10.0 ** rng.uniform(-6, 6, (16, 1))).astype(
        np.float32).view(np.uint8)
    write(outdir, "q8_k", "blocks", q8_k)
    d = q8_k[:, 0:4].copy().view(np.float32)
    write(outdir, "q8_k", "dequant", d * q8_k[:, 4:260].view(np.int8).astype(np.float32))
    for name, dtype in [("i8", np.int8), ("i16", np.int16), ("i32", np.int32), ("i64", np.int64)]:
        raw = rng.integers(0, 256, size=4096, dtype=np.uint8)
        write(outdir, name, "blocks", raw)
        write(outdir, name, "dequant", raw.view(dtype).astype(np.float32))
    f64 = rng.standard_normal(512) * 10.0 ** rng.uniform(-50, 50, size=512)
    f64[:4] = [np.inf, -np.inf, 1e300, -0.0]
    write(outdir, "f64", "blocks", f64)
    write(outdir, "f64", "dequant", f64.astype(np.float32))

    # Quantization.
    for name, qtype in QUANTIZABLE.items():
        if name == "f16":
            x = f16_inputs(rng, 4096)
        elif name == "bf16":
            x = bf16_inputs(rng, 4096)
        else:
            x = quant_inputs(rng, 128, 32)
        write(outdir, name, "input", x)
        write(outdir, name, "quant", quants.quantize(x, qtype))
    x = quant_inputs(rng, 128, 32).reshape(-1, 32)
    amax = np.abs(x).max(axis=1, keepdims=True)
    d = amax / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
    scaled = np.abs(x * inv)
    rounded = np.floor(scaled) + (scaled - np.floor(scaled) >= 0.5)  # ties away from zero
    q = (np.sign(x) * rounded).astype(np.int8)
    s = (q.astype(np.int32).sum(axis=1, keepdims=True).astype(np.float32) * d)
    blocks = np.concatenate([d.astype(np.float16).view(np.uint8), s.astype(np.float16).view(np.uint8),
                             q.view(np.uint8)], axis=1)
    write(outdir, "q8_1", "input", x.reshape(-1))
    write(outdir, "q8_1", "quant", blocks)


if __name__ == "__main__":
    main()
