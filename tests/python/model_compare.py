"""Shared helpers for the differential tests of the C++ forward pass against reference/pdvm_ref.py."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see reference/pdvm_ref.py

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "reference"))
import pdvm_ref  # noqa: E402

RELATIVE_TOLERANCE = 1e-4


def pdvm_bin() -> str:
    path = os.environ.get("PDVM_BIN")
    if not path:
        raise SystemExit("PDVM_BIN is not set (run through ctest)")
    return path


def relative_error(actual, expected) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def run_cpp(model, prompt, greedy, backend="cpu-ref"):
    """Runs `pdvm logits`; returns (prompt logits, greedy ids, logits of each greedy step)."""
    with tempfile.TemporaryDirectory() as tmp:
        out, greedy_out = Path(tmp) / "prompt.npy", Path(tmp) / "greedy.npy"
        cmd = [pdvm_bin(), "logits", "-m", str(model), "--backend", backend,
               "--tokens", ",".join(map(str, prompt)), "--out", str(out)]
        if greedy:
            cmd += ["--greedy", str(greedy), "--greedy-out", str(greedy_out)]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed: {result.stderr}")
        ids = [int(t) for t in result.stdout.split(",")] if greedy else []
        return np.load(out), ids, (np.load(greedy_out) if greedy else None)


def compare(model, prompt, greedy, reference=None, allow_near_ties=False):
    """Checks the C++ logits (prompt and every greedy step) and greedy tokens against numpy.

    With allow_near_ties, the greedy sequences may part where the reference's top two logits
    are closer than the tolerance (random models can tie); the comparison stops there.
    Returns (failure messages, empty when everything matches; largest relative error seen)."""
    reference = reference or pdvm_ref.LlamaReference(str(model))
    ref_prompt, ref_ids, ref_steps = reference.greedy(prompt, greedy)
    cpp_prompt, cpp_ids, cpp_steps = run_cpp(model, prompt, greedy)
    failures = []
    error = worst = relative_error(cpp_prompt, ref_prompt)
    if error >= RELATIVE_TOLERANCE:
        failures.append(f"prompt logits differ: max|a-b|/max|b| = {error:.3g}")
    for step in range(greedy):
        error = relative_error(cpp_steps[step], ref_steps[step])
        worst = max(worst, error)
        if error >= RELATIVE_TOLERANCE:
            failures.append(f"step {step} logits differ: {error:.3g}")
            break
        if cpp_ids[step] != ref_ids[step]:
            top2 = np.sort(ref_steps[step])[-2:]
            margin = (top2[1] - top2[0]) / np.abs(ref_steps[step]).max()
            if not (allow_near_ties and margin < RELATIVE_TOLERANCE):
                failures.append(f"greedy token {step} differs: C++ {cpp_ids[step]}, numpy {ref_ids[step]} "
                                f"(reference margin {margin:.3g})")
            break
    return failures, worst
