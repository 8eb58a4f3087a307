#!/usr/bin/env python3
# ctest-label: unit
"""Fault tests: bad input to the pdvm CLI gives a one-line `pdvm: error:` and a non-zero exit
(or the correct result), never a crash, hang or OOM kill. Random models keep it fast; every
call has a timeout, so a hang fails the test. (Interrupting generation with SIGINT is tested in
test_cli_generation.py.)"""
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import model_compare
import random_model

PDVM = model_compare.pdvm_bin()
failures = []


def pdvm(*args, timeout=120):
    try:
        return subprocess.run([PDVM, *args], capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        failures.append(f"pdvm {' '.join(args)}: hung for {timeout} s")
        return None


def describe(result):
    return f"rc={result.returncode} stdout={result.stdout[-500:]!r} stderr={result.stderr[-1000:]!r}"


def expect_error(what, result, must_contain, rc=None):
    if result is None:
        return
    err = result.stderr.decode(errors="replace")
    ok = (result.returncode > 0 and (rc is None or result.returncode == rc) and err.startswith("pdvm: error: ")
          and err.count("\n") == 1 and must_contain in err)
    if not ok:
        failures.append(f"{what}: expected a one-line error mentioning {must_contain!r}"
                        f"{'' if rc is None else f' and exit {rc}'}: {describe(result)}")


def expect_stopped_by_error(what, result, must_contain):
    """An error met while running (after the load report): exit 1, stderr ends with a one-line
    error mentioning must_contain, and no text was printed."""
    if result is None:
        return
    lines = result.stderr.decode(errors="replace").strip().split("\n")
    if not (result.returncode == 1 and lines[-1].startswith("pdvm: error: ") and must_contain in lines[-1]
            and not result.stdout.strip()):
        failures.append(f"{what}: expected exit 1, no text and a last line 'pdvm: error: ...{must_contain}...': "
                        f"{describe(result)}")


def expect_success(what, result, stderr_contains=""):
    if result is None:
        return
    if result.returncode != 0 or stderr_contains not in result.stderr.decode(errors="replace"):
        failures.append(f"{what}: expected success{f' with {stderr_contains!r}' if stderr_contains else ''}: "
                        f"{describe(result)}")


def expect_generates(what, result, n):
    """Success with n generated tokens, or fewer when the (random) model ended the text itself."""
    expect_success(what, result)
    if result is None or result.returncode != 0:
        return
    err = result.stderr.decode(errors="replace")
    m = re.search(r"generation: (\d+) tokens .*stopped: ([a-z ]+)", err)
    if not m or not (int(m[1]) == n and m[2] == "token limit" or 0 < int(m[1]) <= n and m[2] == "end of generation"):
        failures.append(f"{what}: expected {n} tokens (or fewer ending at end of generation): {describe(result)}")


def test_bad_model_files(tmp, model, text):
    truncated = tmp / "truncated.gguf"
    truncated.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    header_only = tmp / "header.gguf"
    header_only.write_bytes(model.read_bytes()[:6])
    empty = tmp / "empty.gguf"
    empty.write_bytes(b"")
    not_gguf = tmp / "notes.txt"
    not_gguf.write_text("these are not the weights you are looking for\n" * 100)
    directory = tmp / "a_directory.gguf"
    directory.mkdir()
    cases = {"missing": tmp / "missing.gguf", "directory": directory, "empty": empty, "not GGUF": not_gguf,
             "header only": header_only, "truncated": truncated}
    for what, path in cases.items():
        p = str(path)
        expect_error(f"info, {what} file", pdvm("info", p), p)
        expect_error(f"tokenize, {what} file", pdvm("tokenize", p, "hello"), p)
        expect_error(f"run, {what} file", pdvm("run", "-m", p, "-p", "hello", "-n", "2"), p)
        expect_error(f"logits, {what} file", pdvm("logits", "-m", p, "--tokens", "1,2"), p)
        expect_error(f"perplexity, {what} file", pdvm("perplexity", "-m", p, "-f", str(text)), p)
    expect_error("run, character device", pdvm("run", "-m", "/dev/null", "-p", "x"), "/dev/null")


def test_bad_text_files(tmp, model):
    m = str(model)
    for what, path in {"missing": tmp / "missing.txt", "directory": tmp}.items():
        expect_error(f"run -f {what}", pdvm("run", "-m", m, "-f", str(path)), str(path), rc=1)
        expect_error(f"perplexity -f {what}", pdvm("perplexity", "-m", m, "-f", str(path)), str(path), rc=1)


def test_bad_flags(model):
    m = str(model)
    bad = [
        (["run", "-m", m, "-p", "x", "--ctx", "-1"], "--ctx"),
        (["run", "-m", m, "-p", "x", "--ctx", "many"], "--ctx"),
        (["run", "-m", m, "-p", "x", "-n", "-5"], "-n"),
        # integers that do not fit their type: CLI11 alone would clamp or wrap them
        (["run", "-m", m, "-p", "x", "-n", "99999999999999999999999"], "--n-predict: '99999999999999999999999'"),
        (["run", "-m", m, "-p", "x", "--ctx", "99999999999999999999"], "--ctx: '99999999999999999999'"),
        (["run", "-m", m, "-p", "x", "--seed", "-5"], "--seed: '-5'"),
        (["run", "-m", m, "-p", "x", "--seed", "18446744073709551616"], "--seed"),
        (["run", "-m", m, "-p", "x", "--top-k", "4294967296"], "--top-k: '4294967296'"),
        (["run", "-m", m, "-p", "x", "--repeat-last-n", "-2"], "--repeat-last-n"),
        (["run", "-m", m, "-p", "x", "-t", "-1"], "--threads: '-1' is not an integer from 0 to"),
        (["run", "-m", m, "-p", "x", "-t", "100000"], "--threads: '100000'"),
        (["run", "-m", m, "-p", "x", "--ctx", "0x100"], "--ctx: '0x100'"),
        (["synth", "--shape", "tiny", "-o", m + ".out", "--layers", "-3"], "--layers: '-3'"),
        (["bench", "-m", m, "-n", "3000000000"], "--n-gen"),
        (["run", "-m", m, "-p", "x", "--temp", "nan"], "temperature"),
        (["run", "-m", m, "-p", "x", "--temp", "-1"], "temperature"),
        (["run", "-m", m, "-p", "x", "--top-p", "2"], "top-p"),
        (["run", "-m", m, "-p", "x", "--top-k", "-1"], "top-k"),
        (["run", "-m", m, "-p", "x", "--seed", "soon"], "--seed"),
        (["run", "-m", m, "-p", "x", "--backend", "abacus"], "abacus"),
        (["perplexity", "-m", m, "-f", m, "--kv-type", "q2_k"], "q2_k"),
        (["run", "-m", m, "-p", "x", "--no-such-flag"], "--no-such-flag"),
        (["no-such-command"], "no-such-command"),
        ([], "no command given"),
        (["--bogus"], "unknown option '--bogus'"),
        (["logits", "-m", m, "--tokens", "1,x"], "x"),
    ]
    for args, mention in bad:
        expect_error(f"pdvm {' '.join(args)}", pdvm(*args), mention, rc=2)
    expect_error("logits, id outside the vocabulary", pdvm("logits", "-m", m, "--tokens", "1,999999"), "999999")


def test_huge_context(model):
    # Must fail up front (milliseconds), not allocate lazily and be OOM-killed.
    for ctx in ["100000000", "9223372036854775807"]:
        start = time.monotonic()
        result = pdvm("run", "-m", str(model), "-p", "x", "--ctx", ctx, timeout=60)
        expect_error(f"run --ctx {ctx}", result, "KV cache", rc=1)
        if time.monotonic() - start > 30:
            failures.append(f"run --ctx {ctx}: took {time.monotonic() - start:.0f} s to refuse")


def test_prompts(model, rng):
    m = str(model)
    expect_error("empty prompt", pdvm("run", "-m", m, "-p", ""), "prompt", rc=2)
    # Far more tokens than --ctx. Only words whose prefixes are pieces too become tokens in the
    # placeholder vocabulary (t40..t99 via t4..t9; t100 has no "t1"): 300 words of t4..t255 made
    # 64 tokens for seed 3318316072, and no error.
    long_prompt = " ".join(f"t{i}" for i in rng.integers(40, 100, 1000))
    expect_error("prompt longer than --ctx", pdvm("run", "-m", m, "-p", long_prompt, "--ctx", "64"), "--ctx")
    zero = pdvm("run", "-m", m, "-p", "t5 t6", "-n", "0", "--temp", "0")
    expect_success("-n 0", zero, "generation: 0 tokens")
    if zero is not None and zero.stdout.strip():
        failures.append(f"-n 0 printed text: {zero.stdout!r}")
    invalid_utf8 = bytes(rng.integers(128, 256, 12, dtype=np.uint8)).decode("latin-1").encode("latin-1")
    prompt_file = Path(tempfile.mkstemp(suffix=".txt")[1])
    prompt_file.write_bytes(b"t7 " + invalid_utf8 + b"\xc3\x28 \xf0\x9f t9")
    expect_generates("invalid UTF-8 prompt (file)", pdvm("run", "-m", m, "-f", str(prompt_file), "-n", "3", "--temp", "0"), 3)
    prompt_file.unlink()
    expect_generates("unknown special-token text", pdvm("run", "-m", m, "-p", "<|im_start|><|bogus|></s><s>[INST]",
                                                         "-n", "3", "--temp", "0"), 3)
    expect_generates("prompt of only a control token", pdvm("run", "-m", m, "-p", "<s>", "-n", "2", "--temp", "0"), 2)


def test_nan_weights(tmp, model):
    """NaN weights (a corrupted or crafted file that parses) make the logits NaN: generation stops
    with a one-line numeric error, greedy or sampled, instead of printing tokens picked from NaNs."""
    import gguf
    broken = tmp / "nan_weights.gguf"
    broken.write_bytes(model.read_bytes())
    reader = gguf.GGUFReader(broken, "r+")
    norm = next(t for t in reader.tensors if t.name == "output_norm.weight")
    norm.data[:] = np.nan
    reader.data.flush()
    del reader, norm
    b = str(broken)
    for backend in ["cpu", "cpu-ref"]:
        for temp in ["0", "0.8"]:
            expect_stopped_by_error(f"NaN weights, --backend {backend} --temp {temp}",
                                    pdvm("run", "-m", b, "-p", "t5 t6", "-n", "4", "--temp", temp, "--backend", backend),
                                    "non-finite logits (NaN or infinity) at")
    text = tmp / "nan_text.txt"
    text.write_text("t5 t6 t7 t8 " * 40)
    expect_stopped_by_error("NaN weights, perplexity", pdvm("perplexity", "-m", b, "-f", str(text), "--ctx", "64"),
                            "non-finite logits (NaN or infinity) while scoring")


def test_model_truncated_while_running(tmp, rng):
    """The model file shrinks under a running process (weights read through the mapping by the
    reference backend): it must stop with a one-line error naming the file, not die of SIGBUS."""
    spec = random_model.RandomLlamaSpec(n_layer=2, n_embd=512, n_head=8, n_head_kv=8, head_dim=64, n_ff=1536,
                                        n_ctx=256)
    model = tmp / "shrinking.gguf"
    random_model.write_random_llama(model, spec, rng, tokenizer=True)
    text = tmp / "long.txt"
    text.write_text(" ".join(f"t{i}" for i in rng.integers(4, 256, 200_000)))
    proc = subprocess.Popen([PDVM, "perplexity", "-m", str(model), "--backend", "cpu-ref", "--ctx", "256",
                             "-f", str(text)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Truncate only once the weights are loaded and scoring runs (the whole text takes many
    # minutes): a fixed sleep raced the load on a busy machine or under ASan.
    err_lines, scoring = [], threading.Event()

    def read_stderr():
        for line in proc.stderr:
            err_lines.append(line)
            if b"chunks of" in line:
                scoring.set()
        scoring.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    scoring.wait(300)
    time.sleep(1)
    if proc.poll() is not None:
        failures.append(f"truncation: perplexity ended before the file was truncated: rc={proc.returncode} "
                        f"{b''.join(err_lines)[-1000:]!r}")
        return
    os.truncate(model, 4096)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        failures.append("truncation: still running 120 s after the model file was truncated")
        return
    reader.join(10)
    err = b"".join(err_lines)
    last_line = err.decode(errors="replace").replace("\r", "\n").strip().split("\n")[-1]
    if proc.returncode != 1 or not last_line.startswith(f"pdvm: error: '{model}' was truncated or replaced on disk"):
        failures.append(f"truncation: expected exit 1 and a one-line error naming the file, got "
                        f"rc={proc.returncode} (signal {-proc.returncode if proc.returncode < 0 else 0}) "
                        f"last line {last_line!r}")


def main():
    seed = int(os.environ.get("PDVM_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
    print(f"seed {seed} (set PDVM_TEST_SEED to replay)")
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = tmp / "model.gguf"
        random_model.write_random_llama(model, random_model.RandomLlamaSpec(n_ctx=512), rng, tokenizer=True)
        text = tmp / "text.txt"
        text.write_text(" ".join(f"t{i}" for i in rng.integers(4, 256, 2000)))
        for name, test in [("bad model files", lambda: test_bad_model_files(tmp, model, text)),
                           ("bad text files", lambda: test_bad_text_files(tmp, model)),
                           ("bad flags", lambda: test_bad_flags(model)),
                           ("huge context", lambda: test_huge_context(model)),
                           ("prompts", lambda: test_prompts(model, rng)),
                           ("NaN weights", lambda: test_nan_weights(tmp, model)),
                           ("model truncated while running", lambda: test_model_truncated_while_running(tmp, rng))]:
            print("RUN", name, flush=True)
            before = len(failures)
            test()
            print("FAIL" if len(failures) > before else "OK", name, flush=True)
    for failure in failures:
        print("FAIL", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
