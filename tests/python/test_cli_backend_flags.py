#!/usr/bin/env python3
# `pdvm run` with the fast cpu backend's flags on the default model: the exact KV types (f32,
# f16) give the same greedy text as the reference backend at every thread count; the lossy q8_0
# cache is held to a KL divergence and top-1 agreement against the reference on real text (its
# rounding may flip a near-tied greedy pick); a bad --kv-type is a one-line error.
# ctest-label: model
import os
import re
import subprocess
import tempfile
from pathlib import Path

from default_model import MODEL, require_default_model

ROOT = Path(__file__).resolve().parents[2]
PDVM = os.environ.get("PDVM_BIN", str(ROOT / "build" / "pdvm"))
PROMPT = "The three primary colors are"
# Measured on this text (2 windows of 256): KL 1.3e-3 nats/token, top-1 99.6 % for q8_0 (f16: 1e-6).
MAX_Q8_KL = 0.01
MIN_Q8_TOP1 = 95.0


def run(*flags):
    cmd = [PDVM, "run", "-m", str(MODEL), "-p", PROMPT, "-n", "24", "--temp", "0", *flags]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def perplexity(text, *flags):
    cmd = [PDVM, "perplexity", "-m", str(MODEL), "-f", str(text), "--ctx", "256", "--chunks", "2", *flags]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def check_q8_cache_against_reference():
    with tempfile.TemporaryDirectory() as tmp:
        text, logits = Path(tmp) / "genesis.txt", Path(tmp) / "reference.logits"
        subprocess.run([str(ROOT / "scripts" / "bible-text.sh"), str(text), "Genesis1:1-3:24"], check=True)
        perplexity(text, "--backend", "cpu-ref", "--kv-type", "f32", "--save-logits", str(logits))
        for threads in ("1", "2"):
            out = perplexity(text, "--backend", "cpu", "--kv-type", "q8_0", "-t", threads, "--kl-divergence", str(logits))
            kl = float(re.search(r"KL divergence \(base \|\| this\) = ([0-9.e+-]+)", out).group(1))
            top1 = float(re.search(r"Top-1 agreement = ([0-9.]+)", out).group(1))
            print(f"q8_0 cache, {threads} thread(s): KL {kl:.2e} nats/token, top-1 agreement {top1:.1f} %")
            assert kl < MAX_Q8_KL and top1 >= MIN_Q8_TOP1, out


def main():
    require_default_model()
    reference = run("--backend", "cpu-ref")
    assert reference.returncode == 0, reference.stderr
    for kv_type in ("f32", "f16"):
        for threads in ("1", "2"):
            result = run("--backend", "cpu", "--kv-type", kv_type, "-t", threads)
            assert result.returncode == 0, result.stderr
            assert result.stdout == reference.stdout, (kv_type, threads, result.stdout, reference.stdout)
    check_q8_cache_against_reference()
    bad = run("--backend", "cpu", "--kv-type", "q4_0")
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "--kv-type" in bad.stderr, bad.stderr
    print("cli backend flags: ok")


if __name__ == "__main__":
    main()
