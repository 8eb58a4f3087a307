#!/usr/bin/env python3
# `pdvm run` with the fast cpu backend's flags on the default model: every --kv-type and
# thread count gives the same greedy text as the reference backend; a bad --kv-type is a
# one-line error.
# ctest-label: model
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PDVM = os.environ.get("PDVM_BIN", str(ROOT / "build" / "pdvm"))
MODEL = Path(os.environ.get("PDVM_MODEL", ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
PROMPT = "The three primary colors are"


def run(*flags):
    cmd = [PDVM, "run", "-m", str(MODEL), "-p", PROMPT, "-n", "24", "--temp", "0", *flags]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def main():
    if not MODEL.exists():
        if os.environ.get("PDVM_REQUIRE_MODEL"):
            sys.exit(f"default model missing at {MODEL}")
        print("skipped: no default model")
        return
    reference = run("--backend", "cpu-ref")
    assert reference.returncode == 0, reference.stderr
    for kv_type in ("f32", "f16", "q8_0"):
        for threads in ("1", "2"):
            result = run("--backend", "cpu", "--kv-type", kv_type, "-t", threads)
            assert result.returncode == 0, result.stderr
            assert result.stdout == reference.stdout, (kv_type, threads, result.stdout, reference.stdout)
    bad = run("--backend", "cpu", "--kv-type", "q4_0")
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "--kv-type" in bad.stderr, bad.stderr
    print("cli backend flags: ok")


if __name__ == "__main__":
    main()
