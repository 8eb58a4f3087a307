#!/usr/bin/env python3
# --tp on the CLI with the default model (9 heads, 3 KV heads: splits over 3 ranks, not 2):
# `pdvm run --tp 3` writes the same greedy text as `--tp 1`; `--tp 2` fails with one line naming
# the head count; `pdvm bench --tp 1,3 --json` reports the split and its all-reduce time;
# `pdvm serve --tp 3` answers a greedy completion with the text of `pdvm run --tp 1`.
# Reference backend (double dot products): the split's logits differ from --tp 1's only in how
# the ranks' float shares are summed, so texts may part only at a near-tie of --tp 1's logits.
# ctest-label: model
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

import numpy as np

from default_model import MODEL, require_default_model

ROOT = Path(__file__).resolve().parents[2]
PDVM = os.environ.get("PDVM_BIN", str(ROOT / "build" / "pdvm"))
WORDS = "the river old city history of science a small dog ran across green field music ocean story".split()
failures = []


def check(condition, message):
    if not condition:
        failures.append(message)
    return condition


def pdvm(*args, timeout=600):
    return subprocess.run([PDVM, *args], capture_output=True, text=True, timeout=timeout)


# tensor_parallel_model_test holds the split's logits within 1e-5 of the largest; two logits that
# move that much can swap only where the best leads the second by less than twice it.
NEAR_TIE = 2e-5
GREEDY_STEPS = 12


def reference_greedy(prompt, n):
    """--tp 1's first n greedy tokens through `pdvm logits`: (their text, each step's logits)."""
    with tempfile.TemporaryDirectory() as tmp:
        steps = Path(tmp) / "steps.npy"
        result = pdvm("logits", "-m", str(MODEL), "--backend", "cpu-ref", "--ctx", "256", "-p", prompt,
                      "--greedy", str(n), "--print-tokens", "--greedy-out", str(steps))
        if result.returncode != 0:
            raise AssertionError(f"pdvm logits failed: {result.stderr}")
        return result.stdout.partition("\n")[2][:-1], np.load(steps)


def same_text_up_to_a_near_tie(what, got, want, prompt):
    """Greedy texts of the split (got) and of --tp 1 (want) must be equal, or part at a step where
    --tp 1's best token leads its second by less than NEAR_TIE of the largest logit."""
    got, want = got.removesuffix("\n"), want.removesuffix("\n")  # run's closing newline
    if not check(got and want, f"{what}: no text") or got == want:
        return
    full_text, steps = reference_greedy(prompt, GREEDY_STEPS)
    if not check(full_text.startswith(want), f"{what}: pdvm logits {full_text!r} is not pdvm run's {want!r}"):
        return
    # The parting step: the most reference tokens whose text `got` begins with (texts grow with n).
    low, high = 0, GREEDY_STEPS
    while low < high:
        middle = (low + high + 1) // 2
        if got.startswith(reference_greedy(prompt, middle)[0]):
            low = middle
        else:
            high = middle - 1
    if not check(low < GREEDY_STEPS, f"{what}: {got!r} holds all of --tp 1's {full_text!r} yet differs"):
        return
    top2 = np.sort(steps[low])[-2:]
    lead = float((top2[1] - top2[0]) / np.abs(steps[low]).max())
    print(f"{what}: texts part at greedy step {low}, where --tp 1's best token leads by {lead:.2g} of the largest logit")
    check(lead < NEAR_TIE, f"{what}: {got!r} != --tp 1 {want!r}, parting at step {low} where --tp 1's best token "
                           f"leads by {lead:.3g} of the largest logit (a near-tie is < {NEAR_TIE})")


def run_text(prompt, n, tp):
    result = pdvm("run", "-m", str(MODEL), "--backend", "cpu-ref", "--ctx", "256", "--tp", str(tp), "-p", prompt,
                  "-n", str(n), "--temp", "0")
    check(result.returncode == 0, f"run --tp {tp} failed: {result.stderr}")
    return result.stdout


def test_run(prompt):
    one, three = run_text(prompt, GREEDY_STEPS, 1), run_text(prompt, GREEDY_STEPS, 3)
    same_text_up_to_a_near_tie("run --tp 3", three, one, prompt)
    bad = pdvm("run", "-m", str(MODEL), "--backend", "cpu-ref", "--tp", "2", "-p", prompt, "-n", "2")
    lines = bad.stderr.strip().splitlines()
    check(bad.returncode != 0 and len(lines) == 1 and lines[0].startswith("pdvm: error:")
          and "attention head count (9) divisible by 2" in lines[0], f"--tp 2: rc {bad.returncode}, {bad.stderr!r}")
    return one


def test_bench():
    result = pdvm("bench", "-m", str(MODEL), "--backend", "cpu", "-t", "2", "--tp", "1,3", "-p", "0", "-n", "4",
                  "-r", "1", "--json", "--no-probe")
    if not check(result.returncode == 0, f"bench failed: {result.stderr}"):
        return
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    check([r["tensor_parallel"] for r in reports] == [1, 3], f"bench reports: {result.stdout}")
    if len(reports) == 2:
        one, three = reports
        check(one["communicator"] == "" and one["all_reduce_ms_per_token"] == 0, f"tp 1: {one}")
        check(three["communicator"] == "in-process" and three["all_reduces_per_token"] == 60
              and three["all_reduce_bytes_per_token"] == 60 * 576 * 4 and three["all_reduce_ms_per_token"] > 0
              and three["tg"]["tokens_per_s"] > 0 and three["backend"] == "cpu tp3 in-process", f"tp 3: {three}")


def test_serve(prompt, expected):
    proc = subprocess.Popen([PDVM, "serve", "-m", str(MODEL), "--backend", "cpu-ref", "--ctx", "256", "--tp", "3",
                             "--port", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    port, ready = [], threading.Event()

    def read_stderr():
        for line in proc.stderr:
            if "listening on http://" in line:
                port.append(int(line.split("http://")[1].split()[0].rsplit(":", 1)[1]))
                ready.set()
        ready.set()

    threading.Thread(target=read_stderr, daemon=True).start()
    try:
        if not check(ready.wait(120) and port, "serve --tp 3 did not start"):
            return
        body = json.dumps({"prompt": prompt, "max_tokens": GREEDY_STEPS, "temperature": 0}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port[0]}/v1/completions", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as response:
            text = json.loads(response.read())["choices"][0]["text"]
        same_text_up_to_a_near_tie("serve --tp 3", text, expected, prompt)
    finally:
        proc.terminate()
        proc.wait(30)


def main():
    require_default_model()
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))).capitalize()
    print(f"prompt: {prompt!r}")
    expected = test_run(prompt)
    test_bench()
    if expected:
        test_serve(prompt, expected)
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
