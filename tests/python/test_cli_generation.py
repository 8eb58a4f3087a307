#!/usr/bin/env python3
# End-to-end tests of `pdvm run`, `pdvm chat`, `pdvm perplexity` and `pdvm chat-template -m` on
# the default model, driven as subprocesses; and their error cases.
# ctest-label: model
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import gguf
import jinja2.sandbox
import numpy as np
from pdvm_ref import LlamaReference

from default_model import MODEL, require_default_model

ROOT = Path(__file__).resolve().parents[2]
PDVM = os.environ.get("PDVM_BIN", str(ROOT / "build" / "pdvm"))
BUILD = Path(os.environ.get("PDVM_BINARY_DIR", ROOT / "build"))
GREEDY = ["--temp", "0"]
failures = []


def pdvm(*args, stdin=None, cwd=None, timeout=600):
    return subprocess.run([PDVM, *args], input=stdin.encode() if stdin is not None else None,
                          capture_output=True, cwd=cwd, timeout=timeout)


def check(condition, message, result=None):
    if condition:
        return
    if result is not None:
        message += f"\n  rc={result.returncode}\n  stdout={result.stdout.decode(errors='replace')[-2000:]!r}" \
                   f"\n  stderr={result.stderr.decode(errors='replace')[-2000:]!r}"
    failures.append(message)
    print("FAIL", message)


def check_one_line_error(result, what, must_contain):
    err = result.stderr.decode()
    check(result.returncode != 0, f"{what}: expected a non-zero exit", result)
    check(err.startswith("pdvm: error: ") and err.count("\n") == 1, f"{what}: expected a one-line error", result)
    check(must_contain in err, f"{what}: the error should mention {must_contain!r}", result)


def test_run_greedy_is_deterministic():
    args = ["run", "-m", str(MODEL), "-p", "The three primary colors are", "-n", "24", *GREEDY]
    first, second = pdvm(*args), pdvm(*args)
    check(first.returncode == 0, "run failed", first)
    text = first.stdout.decode()
    check(len(text.strip()) > 10 and re.search(r"[a-z]{3,} [a-z]{3,}", text) is not None,
          "run produced no text", first)
    check(first.stdout == second.stdout, "greedy run is not deterministic", second)
    from_stdin = pdvm("run", "-m", str(MODEL), "-f", "-", "-n", "24", *GREEDY, stdin="The three primary colors are")
    check(from_stdin.stdout == first.stdout, "the prompt from -f - gives other text", from_stdin)
    err = first.stderr.decode()
    for label in ("load:", "prompt:", "generation:", "tokens/s"):
        check(label in err, f"run stats lack {label!r}", first)
    check(re.search(r"generation: 24 tokens", err) is not None, "-n 24 did not generate 24 tokens", first)


def test_run_uses_the_default_model():
    result = pdvm("run", "-p", "Hello", "-n", "4", *GREEDY)
    check(result.returncode == 0 and result.stdout.strip(), "run without -m failed", result)


def test_run_chat_answers():
    result = pdvm("run", "-m", str(MODEL), "--chat", "-p", "What is the capital of France?", "-n", "48", *GREEDY)
    check(result.returncode == 0 and "Paris" in result.stdout.decode(), "chat answer lacks Paris", result)


def test_run_sampling_seed():
    args = ["run", "-m", str(MODEL), "-p", "Once upon a time", "-n", "24", "--temp", "1.0", "--top-k", "0",
            "--top-p", "1", "--min-p", "0"]
    a, b, c = pdvm(*args, "--seed", "7"), pdvm(*args, "--seed", "7"), pdvm(*args, "--seed", "8")
    check(a.returncode == 0 and a.stdout == b.stdout, "same seed, different text", b)
    check(a.stdout != c.stdout, "different seeds gave the same 24 sampled tokens", c)


def test_run_stop_string():
    full = pdvm("run", "-m", str(MODEL), "--chat", "-p", "Count from 1 to 10, separated by commas.", "-n", "40",
                *GREEDY).stdout.decode()
    check("5" in full, f"the counting answer has no 5: {full!r}")
    cut = pdvm("run", "-m", str(MODEL), "--chat", "-p", "Count from 1 to 10, separated by commas.", "-n", "40",
               "--stop", "5", *GREEDY)
    text = cut.stdout.decode().rstrip("\n")
    check(cut.returncode == 0 and "5" not in text and full.startswith(text), "--stop 5 did not cut before 5", cut)
    check("stopped: stop string" in cut.stderr.decode(), "stop reason not reported", cut)


def test_run_prefill_only():
    result = pdvm("run", "-m", str(MODEL), "-p", "Hello there", "-n", "0")
    check(result.returncode == 0 and result.stdout.strip() == b"", "-n 0 should print no text", result)
    check("generation: 0 tokens" in result.stderr.decode(), "-n 0 stats", result)


def test_chat_remembers_previous_turns():
    # (SmolLM2-135M takes "What is my name?" as a question about its own name, so the fact to
    # remember is a secret word.)
    first_only = pdvm("chat", "-m", str(MODEL), *GREEDY, "-n", "16", stdin="The secret word is banana.\n")
    both = pdvm("chat", "-m", str(MODEL), *GREEDY, "-n", "16", "--stats",
                stdin="The secret word is banana.\nWhat is the secret word?\n")
    check(first_only.returncode == 0 and both.returncode == 0, "chat failed", both)
    out = both.stdout.decode()
    first_reply = first_only.stdout.decode()
    check(out.startswith(first_reply), "the first reply differs between runs", both)
    check("banana" in out[len(first_reply):], "the second reply does not know the word", both)
    reused = [int(n) for n in re.findall(r"(\d+) reused", both.stderr.decode())]
    check(len(reused) >= 1 and reused[0] > 10, "the second turn did not reuse the cached prefix", both)
    control = pdvm("chat", "-m", str(MODEL), *GREEDY, "-n", "16", stdin="What is the secret word?\n")
    check(control.returncode == 0 and "banana" not in control.stdout.decode(),
          "the word appears without being given", control)


def test_chat_reset_and_exit():
    result = pdvm("chat", "-m", str(MODEL), *GREEDY, "-n", "4", "--stats",
                  stdin="The secret word is banana.\n/reset\nWhat is the secret word?\n/exit\nNever read.\n")
    check(result.returncode == 0, "chat with /reset failed", result)
    prompts = [line for line in result.stderr.decode().splitlines() if line.startswith("prompt:")]
    check(len(prompts) == 2, "expected two replies (and nothing after /exit)", result)
    check(len(prompts) == 2 and "reused" not in prompts[1], "after /reset nothing should be reused", result)


def test_run_interrupt_stops_cleanly():
    proc = subprocess.Popen([PDVM, "run", "-m", str(MODEL), "-p", "Once upon a time", "-n", "-1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Wait for the first generated text, then press Ctrl-C.
    first = proc.stdout.read(1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    check(proc.returncode == 130, f"SIGINT should exit 130, got {proc.returncode}: {err.decode()!r}")
    check(first and "stopped: interrupted" in err.decode() and "generation:" in err.decode(),
          f"no stats after SIGINT: {err.decode()!r}")


def test_chat_turn_too_long_for_the_context():
    long_line = "word " * 100
    result = pdvm("chat", "-m", str(MODEL), "--ctx", "64", *GREEDY, "-n", "4", stdin=f"{long_line}\nHi\n")
    err = result.stderr.decode()
    check(result.returncode == 0 and "the context holds 64" in err and "/reset" in err,
          "an over-long turn should be refused with a message, and the chat go on", result)
    check(result.stdout.strip() != b"", "the next turn got no reply", result)


def test_chat_template_matches_jinja():
    reader = gguf.GGUFReader(str(MODEL))

    def field(key):
        f = reader.fields[key]
        return f.parts[f.data[0]]

    template = bytes(field("tokenizer.chat_template")).decode()
    tokens = reader.fields["tokenizer.ggml.tokens"]
    token = lambda i: bytes(tokens.parts[tokens.data[int(i)]]).decode()
    bos, eos = token(field("tokenizer.ggml.bos_token_id")[0]), token(field("tokenizer.ggml.eos_token_id")[0])
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    for messages in ([{"role": "user", "content": "Hi"}],
                     [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]):
        want = env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                                 bos_token=bos, eos_token=eos)
        got = pdvm("chat-template", "-m", str(MODEL), stdin=json.dumps(messages))
        check(got.returncode == 0 and got.stdout.decode() == want, f"chat-template -m differs: {want!r}", got)


def read_logprob_file(path):
    """The --save-logits format (include/pdvm/perplexity.h), read independently."""
    data = path.read_bytes()
    assert data[:8] == b"PDVMLP01", "bad magic"
    n_vocab, n_ctx = np.frombuffer(data[8:16], dtype="<u4")
    record = 16 + 2 * int(n_vocab)
    rows = []
    for offset in range(16, len(data), record):
        target, = np.frombuffer(data[offset:offset + 4], dtype="<i4")
        target_lp, hi, step = np.frombuffer(data[offset + 4:offset + 16], dtype="<f4")
        q = np.frombuffer(data[offset + 16:offset + record], dtype="<u2")
        rows.append((int(target), float(target_lp), hi - q.astype(np.float64) * step))
    return int(n_vocab), int(n_ctx), rows


def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_perplexity_against_the_numpy_reference():
    text = BUILD / "test_cli_generation" / "genesis.txt"
    subprocess.run([str(ROOT / "scripts" / "bible-text.sh"), str(text), "Genesis36:1-37:36"], check=True)
    logits = BUILD / "test_cli_generation" / "genesis.logprobs"
    n_ctx, n_chunks = 64, 2
    args = ["perplexity", "-m", str(MODEL), "-f", str(text), "--ctx", str(n_ctx), "--chunks", str(n_chunks)]
    base = pdvm(*args, "--save-logits", str(logits))
    check(base.returncode == 0, "perplexity failed", base)
    out = base.stdout.decode()
    match = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", out)
    check(match is not None and re.search(r"\[1\][0-9.]+,\[2\][0-9.]+\n", out) is not None,
          "no running values and final estimate", base)
    if not match:
        return
    ppl, err = float(match.group(1)), float(match.group(2))
    check(5 < ppl < 60 and 0 < err < ppl, f"implausible perplexity {ppl} +/- {err}")

    # The same windows through the numpy reference: same scored tokens, same log-probabilities.
    ids = pdvm("tokenize", str(MODEL), "--ids-only", "--no-special", text.read_text())
    tokens = [int(t) for t in ids.stdout.split()]
    n_vocab, file_ctx, rows = read_logprob_file(logits)
    check(file_ctx == n_ctx and len(rows) == n_chunks * (n_ctx - 1 - n_ctx // 2), "log-probability file shape")
    reference = LlamaReference(str(MODEL))
    nll, kl, row_index = [], [], 0
    for chunk in range(n_chunks):
        window = tokens[chunk * n_ctx:(chunk + 1) * n_ctx]
        reference.reset()
        lp = log_softmax(reference.forward(window))
        for j in range(n_ctx // 2, n_ctx - 1):
            target, target_lp, row = rows[row_index]
            row_index += 1
            check(target == window[j + 1], f"scored token {row_index} is {target}, expected {window[j + 1]}")
            nll.append(-lp[j, target])
            check(abs(target_lp - lp[j, target]) < 0.05, f"token {row_index}: log-prob {target_lp} vs {lp[j, target]}")
            p = np.exp(lp[j])
            kl.append(float(np.sum(p * (lp[j] - log_softmax(row)))))
    ref_ppl = math.exp(sum(nll) / len(nll))
    print(f"perplexity: pdvm {ppl}, numpy reference {ref_ppl:.4f}; KL(reference || pdvm) mean {np.mean(kl):.2e}")
    check(abs(ppl / ref_ppl - 1) < 0.01, f"perplexity {ppl} differs from the reference's {ref_ppl}")
    check(np.mean(kl) < 2e-3, f"KL(reference || pdvm) = {np.mean(kl)}")

    again = pdvm(*args, "--kl-divergence", str(logits))
    out = again.stdout.decode()
    check(again.returncode == 0 and "KL divergence (base || this) = 0 +/- 0 nats" in out,
          "KL of a run against itself is not 0", again)
    check("Top-1 agreement = 100.000" in out, "top-1 agreement with itself is not 100%", again)
    mismatch = pdvm("perplexity", "-m", str(MODEL), "-f", str(text), "--ctx", "32", "--kl-divergence", str(logits))
    check_one_line_error(mismatch, "KL with another --ctx", "--ctx")


def test_errors():
    check_one_line_error(pdvm("run", "-m", "/nonexistent/model.gguf", "-p", "x"), "missing model", "/nonexistent")
    check_one_line_error(pdvm("run", "-m", str(MODEL), "-p", "x", "--temp", "warm"), "bad --temp", "--temp")
    check_one_line_error(pdvm("run", "-m", str(MODEL), "-p", "x", "--top-p", "0"), "bad --top-p", "top-p")
    check_one_line_error(pdvm("run", "-m", str(MODEL), "-p", "x", "--bogus"), "unknown flag", "--bogus")
    check_one_line_error(pdvm("run", "-m", str(MODEL)), "no prompt", "-p TEXT or -f FILE")
    long_prompt = " ".join(["word"] * 200)
    check_one_line_error(pdvm("run", "-m", str(MODEL), "-p", long_prompt, "--ctx", "32"), "prompt > ctx", "ctx")
    check_one_line_error(pdvm("perplexity", "-m", str(MODEL), "-f", "/nonexistent.txt"), "missing text", "nonexistent")
    with tempfile.TemporaryDirectory() as tmp:
        # A copy of the binary with no models/ beside it or in the working directory.
        (Path(tmp) / "bin").mkdir()
        lonely = Path(tmp) / "bin" / "pdvm"
        shutil.copy(PDVM, lonely)
        result = subprocess.run([str(lonely), "run", "-p", "x"], capture_output=True, cwd=tmp)
        check_one_line_error(result, "no default model", "scripts/setup.sh")


def main():
    require_default_model()
    tests = [v for k, v in sorted(globals().items()) if k.startswith("test_")]
    for test in tests:
        print("RUN", test.__name__, flush=True)
        test()
    print(f"{len(tests)} tests, {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
