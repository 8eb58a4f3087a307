#!/usr/bin/env python3
"""The stages table of single-stream decode: Python reference -> CPU backend -> GPU unfused ->
GPU fused layer (PDVM) -> GPU megakernel, per model geometry (synthesized weights).

    python3 scripts/stages.py [--shape llama-2-13b --shape llama-3.2-1b] [--type f16]

Rows and how each is measured:
  Python reference  reference/pdvm_ref.py's layer() (numpy, float64 as the reference computes)
                    on random weights of the geometry; one layer timed, median of 3.
  CPU backend       `pdvm bench --backend cpu` on a synthesized one-layer model of the geometry
                    (vocabulary cut to 512 rows so the head is negligible); all cores.
  GPU rows          `pdvm bench --backend cuda --gpu-mode unfused|layer|token -p 0 -n 128` on the
                    whole synthesized model (written to --workdir, deleted afterwards).
Python and CPU tok/s are n_layer times their one-layer time (no head). GPU ms/layer is the
token time / n_layer. Launches/token are counted by pdvm (kernels of the replayed CUDA graphs
plus eager launches). % of bandwidth: bytes a token must stream (the weights in --type, plus the
KV cache on GPU rows) / time / one yardstick measured by `pdvm bench` in the same run: the GPU's
read bandwidth when there is a GPU (every row, so the stages compare on the card's limit), else
the host's. Without a GPU the GPU rows say unavailable.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "reference"))

from pdvm_ref import LlamaReference  # noqa: E402  (sets one BLAS thread before numpy loads)

import numpy as np  # noqa: E402

# pdvm synth's geometries (src/model/synth_model.cpp).
SHAPES = {
    "llama-3.2-1b": dict(n_embd=2048, n_layer=16, n_head=32, n_head_kv=8, n_ff=8192, n_vocab=128256, theta=500000.0),
    "llama-2-13b": dict(n_embd=5120, n_layer=40, n_head=40, n_head_kv=40, n_ff=13824, n_vocab=32000, theta=10000.0),
}
# Bytes per weight of each type (block bytes / block elements).
BYTES_PER_WEIGHT = {"f32": 4, "f16": 2, "bf16": 2, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32,
                    "q4_k": 144 / 256, "q6_k": 210 / 256}
GPU_MODES = (("GPU unfused (CUDA backend)", "unfused"), ("GPU fused layer (PDVM)", "layer"),
             ("GPU megakernel (token)", "token"))
CPU_LAYER_VOCAB = 512


def layer_weights(s):
    d = s["n_embd"]
    kv = d // s["n_head"] * s["n_head_kv"]
    return d * (d + 2 * kv) + d * d + 3 * d * s["n_ff"]


def time_python_layer(s, repeats=3):
    rng = np.random.default_rng(1)
    d, kv = s["n_embd"], s["n_embd"] // s["n_head"] * s["n_head_kv"]

    def matrix(rows, cols):
        return rng.standard_normal((rows, cols)) * (1.0 / np.sqrt(cols))

    weights = {
        "token_embd.weight": matrix(8, d), "output_norm.weight": np.ones(d),
        "blk.0.attn_norm.weight": np.ones(d), "blk.0.ffn_norm.weight": np.ones(d),
        "blk.0.attn_q.weight": matrix(d, d), "blk.0.attn_k.weight": matrix(kv, d),
        "blk.0.attn_v.weight": matrix(kv, d), "blk.0.attn_output.weight": matrix(d, d),
        "blk.0.ffn_gate.weight": matrix(s["n_ff"], d), "blk.0.ffn_up.weight": matrix(s["n_ff"], d),
        "blk.0.ffn_down.weight": matrix(d, s["n_ff"]),
    }
    model = LlamaReference.from_weights(weights, {
        "block_count": 1, "embedding_length": d, "attention.head_count": s["n_head"],
        "attention.head_count_kv": s["n_head_kv"], "rope.freq_base": s["theta"]})
    x = rng.standard_normal((1, d))
    times = []
    for _ in range(repeats):
        model.reset()
        start = time.perf_counter()
        model.layer(0, x, np.zeros(1))
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def run(cmd, timeout):
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}")
    return result.stdout


def bench(pdvm, model, backend, mode, n_gen, repetitions):
    out = run([pdvm, "bench", "-m", model, "--backend", backend, "--gpu-mode", mode, "-p", 0, "-n", n_gen,
               "-r", repetitions, "--json"], timeout=900)
    return json.loads(out.strip().splitlines()[-1])


def gpu_name():
    if not shutil.which("nvidia-smi"):
        return None
    result = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    names = result.stdout.strip().splitlines()
    return names[0] if result.returncode == 0 and names else None


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def stage_table(name, args, pdvm, workdir, gpu):
    s = SHAPES[name]
    rows = []  # (stage, ms/layer, tok/s, launches, % bw)
    host_bandwidth = None
    layer_bytes = layer_weights(s) * BYTES_PER_WEIGHT[args.type] + 2 * 4 * s["n_embd"]
    python_ms = time_python_layer(s)
    rows.append(["Python reference (numpy, 1 layer)", python_ms, 1e3 / (python_ms * s["n_layer"]), None, None])

    cpu_model = workdir / f"stages_{name}_{args.type}_1layer.gguf"
    try:
        run([pdvm, "synth", "--shape", name, "--type", args.type, "--layers", 1, "--vocab", CPU_LAYER_VOCAB,
             "-o", cpu_model], timeout=900)
        report = bench(pdvm, cpu_model, "cpu", "unfused", 16, 3)
        r = report["tg"]
        host_bandwidth = report["read_bandwidth_gb_per_s"] or None
        rows.append(["CPU backend (1 layer)", r["ms_per_token"], 1e3 / (r["ms_per_token"] * s["n_layer"]), None, None])
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        rows.append(["CPU backend (1 layer)", f"failed: {e}"])
    finally:
        cpu_model.unlink(missing_ok=True)

    bandwidth = None
    if gpu is None:
        for label, _ in GPU_MODES:
            rows.append([label, "unavailable: no CUDA device on this machine"])
    else:
        model = workdir / f"stages_{name}_{args.type}.gguf"
        try:
            run([pdvm, "synth", "--shape", name, "--type", args.type, "-o", model], timeout=900)
            for label, mode in GPU_MODES:
                try:
                    report = bench(pdvm, model, "cuda", mode, args.tokens, 3)
                    r = report["tg"]
                    bandwidth = report["read_bandwidth_gb_per_s"] or bandwidth
                    rows.append([label, r["ms_per_layer"], r["tokens_per_s"], r["launches_per_token"],
                                 r["pct_of_read_bandwidth"]])
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    rows.append([label, f"failed: {e}"])
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            rows.append(["GPU rows", f"failed: synth: {e}"])
        finally:
            model.unlink(missing_ok=True)

    lines = [f"### {name} ({s['n_embd']} wide, {s['n_layer']} layers, {s['n_head']} heads / {s['n_head_kv']} KV, "
             f"FFN {s['n_ff']}, vocab {s['n_vocab']}), {args.type}",
             "",
             "| stage | time/layer | tok/s | launches/token | % of bandwidth | speed-up vs Python |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        if isinstance(row[1], str):
            lines.append(f"| {row[0]} | {row[1]} | | | | |")
            continue
        label, ms, tok_s, launches, pct = row
        yardstick = bandwidth or host_bandwidth
        if pct is None and yardstick:  # a host row: one layer's bytes over its time
            pct = 100 * layer_bytes / (ms * 1e-3) / (yardstick * 1e9)
        lines.append(f"| {label} | {ms:.3f} ms | {tok_s:.2f} | {fmt(launches, '.1f')} | {fmt(pct, '.1f')} | "
                     f"{python_ms / ms:.1f}x |")
    lines.append("")
    measured = [f"{who} {value:.1f} GB/s" for who, value in (("host", host_bandwidth), ("GPU", bandwidth)) if value]
    lines.append("read bandwidth (pdvm bench probes, this run): " + (", ".join(measured) or "not measured") +
                 ("; % of bandwidth against the GPU's" if bandwidth else "; % of bandwidth against the host's"))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", action="append", choices=sorted(SHAPES), help="geometry (repeatable; default both)")
    parser.add_argument("--type", default="f16", choices=sorted(BYTES_PER_WEIGHT), help="weight type")
    parser.add_argument("--tokens", type=int, default=128, help="generated tokens per GPU run (tg)")
    parser.add_argument("--pdvm", default=os.environ.get("PDVM_BIN", ROOT / "build" / "pdvm"), help="pdvm binary")
    parser.add_argument("--workdir", default="/tmp", help="where the synthesized models go (deleted after)")
    args = parser.parse_args(argv)
    pdvm = Path(args.pdvm)
    if not pdvm.exists():
        parser.error(f"pdvm binary not found at {pdvm} (build it or pass --pdvm)")
    gpu = gpu_name()
    print(f"machine: {cpu_name()} ({os.cpu_count()} threads); GPU: {gpu or 'none'}")
    print()
    for name in args.shape or ["llama-2-13b", "llama-3.2-1b"]:
        print(stage_table(name, args, pdvm, Path(args.workdir), gpu), flush=True)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
