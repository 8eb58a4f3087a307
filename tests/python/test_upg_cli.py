#!/usr/bin/env python3
# `pdvm convert --type upg4|upg3` end to end: the file is a valid GGUF for the gguf package,
# a numpy decoder written from docs/upg.md reconstructs every matrix close to its source, the
# model runs (`pdvm logits`), and bad flags are one-line errors.
# ctest-label: unit
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf import quants

ROOT = Path(__file__).resolve().parents[2]
PDVM = os.environ.get("PDVM_BIN", str(ROOT / "build" / "pdvm"))
SEED = int(os.environ.get("PDVM_TEST_SEED", random.SystemRandom().randrange(1 << 31)))
print(f"[pdvm test] random seed {SEED} (set PDVM_TEST_SEED to replay)")


def pdvm(*args, expect_ok=True):
    result = subprocess.run([PDVM, *map(str, args)], capture_output=True, text=True)
    if expect_ok and result.returncode != 0:
        sys.exit(f"pdvm {' '.join(map(str, args))} failed: {result.stderr}")
    return result


def field(reader, key):
    f = reader.fields[key]
    value = f.parts[f.data[0]]
    return bytes(value).decode() if f.types[0].name == "STRING" else int(value[0])


def decode(reader, name):
    """docs/upg.md, as numpy: rscale * (bscale * lut[code]) (+ outliers)."""
    t = {x.name: x for x in reader.tensors}
    codes = np.asarray(t[name + ".upg.codes"].data).view(np.uint8)
    bscale = np.asarray(t[name + ".upg.bscale"].data).astype(np.int32)
    lut = np.asarray(t[name + ".upg.lut"].data).astype(np.int32)
    rscale = np.asarray(t[name + ".upg.rscale"].data).astype(np.float32)
    n, levels = lut.shape
    bits = 4 if levels == 16 else 3
    k = codes.shape[1] * 8 // bits
    groups = codes.reshape(n, k // 32, 32 * bits // 8)
    if bits == 4:
        code = np.concatenate([groups & 15, groups >> 4], axis=2)
    else:
        low = np.concatenate([(groups[:, :, :8] >> s) & 3 for s in (0, 2, 4, 6)], axis=2)
        high = np.concatenate([(groups[:, :, 8 + m : 9 + m] >> np.arange(8)) & 1 for m in range(4)], axis=2)
        code = low | (high << 2)
    code = code.reshape(n, k)
    block = k // bscale.shape[1]
    product = np.repeat(bscale, block, axis=1) * np.take_along_axis(lut, code.astype(np.int64), axis=1)
    w = rscale[:, None] * product.astype(np.float32)
    if name + ".upg.sp_rowptr" in t:
        rowptr = np.asarray(t[name + ".upg.sp_rowptr"].data)
        idx = np.asarray(t[name + ".upg.sp_idx"].data).view(np.uint16)
        val = np.asarray(t[name + ".upg.sp_val"].data).astype(np.float32)
        assert np.all(np.diff(rowptr) >= 0)
        for r in range(n):
            w[r, idx[rowptr[r] : rowptr[r + 1]]] += val[rowptr[r] : rowptr[r + 1]]
    return w, bits


def main():
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.gguf"
        pdvm("synth", "--shape", "tiny", "--type", "f32", "--seed", SEED % 100000, "-o", src)
        source = {t.name: t for t in GGUFReader(src).tensors}
        for kind, extra, bound in (("upg4", [], 0.15), ("upg3", ["--outliers", "0.01"], 0.3)):
            out = Path(tmp) / f"{kind}.gguf"
            pdvm("convert", src, out, "--type", kind, "--threads", 2, *extra)
            reader = GGUFReader(out)
            assert field(reader, "upg.version") == 1
            assert field(reader, "upg.bits") == int(kind[-1])
            assert "built-in text" in field(reader, "upg.calibration")
            matrices = 0
            for name, t in source.items():
                if len(t.shape) < 2:
                    continue
                original = quants.dequantize(t.data, t.tensor_type).reshape(-1, int(t.shape[0]))
                w, bits = decode(reader, name)
                assert w.shape == original.shape, (name, w.shape, original.shape)
                expected_bits = 4 if name in ("token_embd.weight", "output.weight") else int(kind[-1])
                assert bits == expected_bits, (name, bits)
                rel = np.sqrt(np.sum((w - original) ** 2) / np.sum(original**2))
                assert rel < bound, (kind, name, rel)
                matrices += 1
            assert matrices > 0
            run = pdvm("logits", "-m", out, "--tokens", "1,5,9,2", "--greedy", 4, "--backend", "cpu")
            assert len(run.stdout.strip().split(",")) == 4, run.stdout
            # `pdvm bench` counts the logical weights (the source's elements), not component bytes.
            bench = pdvm("bench", "-m", out, "--backend", "cpu", "-t", 1, "-p", 4, "-n", 2, "-r", 1, "--json")
            report = json.loads(bench.stdout.strip().splitlines()[-1])
            n_params = sum(int(np.prod(t.shape)) for t in source.values())
            assert report["n_params"] == n_params, (kind, report["n_params"], n_params)

        bad = pdvm("convert", src, Path(tmp) / "x.gguf", "--type", "q4_0", "--outliers", "0.01", expect_ok=False)
        assert bad.returncode != 0 and "--outliers" in bad.stderr, bad.stderr
        bad = pdvm("convert", src, Path(tmp) / "x.gguf", "--type", "upg4", "--calibration", Path(tmp) / "missing.txt",
                   expect_ok=False)
        assert bad.returncode != 0 and "missing.txt" in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    print("ok")


if __name__ == "__main__":
    main()
