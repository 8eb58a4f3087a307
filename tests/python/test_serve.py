#!/usr/bin/env python3
# `pdvm serve` on the default model, driven over HTTP with urllib and raw sockets: completions and
# chat completions equal `pdvm run` for the same prompt and sampling settings, streamed chunks
# concatenate to the same text, concurrent requests are served one at a time, and bad requests
# get a 4xx JSON error while the server keeps serving. Prompts are random word sequences.
# ctest-label: model
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

from default_model import MODEL, require_default_model

ROOT = Path(__file__).resolve().parents[2]
PDVM = os.environ.get("PDVM_BIN", str(ROOT / "build" / "pdvm"))
CTX = 512
MAX_BODY = 65536
WORDS = ("the river old city history of science my favorite recipe is a small dog ran across green "
         "field every morning we learn that music computer ocean bright story begins when").split()
failures = []


def check(condition, message):
    if not condition:
        failures.append(message)
    return condition


def random_prompt(rng):
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 9))]
    return " ".join(words).capitalize()


class Server:
    def __init__(self, *extra):
        self.proc = subprocess.Popen([PDVM, "serve", "-m", str(MODEL), "--backend", "cpu", "--ctx", str(CTX),
                                      "--port", "0", "--max-body", str(MAX_BODY), *extra],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.stderr = []
        self.port = None
        ready = threading.Event()

        def read_stderr():
            for line in self.proc.stderr:
                self.stderr.append(line)
                if "listening on http://" in line:
                    self.port = int(line.split("http://")[1].split()[0].rsplit(":", 1)[1])
                    ready.set()
            ready.set()

        self.reader = threading.Thread(target=read_stderr, daemon=True)
        self.reader.start()
        if not ready.wait(120) or self.port is None:
            self.proc.kill()
            raise SystemExit(f"FAIL pdvm serve did not start: {''.join(self.stderr)}")

    def request(self, method, path, body=None, timeout=300):
        """Returns (status, content type, body bytes)."""
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, response.headers.get("Content-Type", ""), response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type", ""), e.read()

    def post(self, path, body):
        status, _, data = self.request("POST", path, body)
        return status, json.loads(data) if data.startswith(b"{") else data

    def stream(self, path, body):
        """Returns the decoded events of a streamed request, up to (without) [DONE]."""
        status, content_type, data = self.request("POST", path, {**body, "stream": True})
        check(status == 200 and content_type.startswith("text/event-stream"),
              f"stream {path}: status {status}, content type {content_type!r}: {data[:300]!r}")
        events = data.decode().split("\n\n")
        check(events[-2:] == ["data: [DONE]", ""], f"stream {path} does not end with [DONE]: {events[-3:]}")
        check(all(e.startswith("data: ") for e in events[:-1]), f"stream {path}: not all events are data: lines")
        return [json.loads(e[len("data: "):]) for e in events[:-2]]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = "hung"
        self.reader.join(10)
        return rc


def pdvm_run(*args, stop_reason=None):
    """pdvm run's text; with stop_reason (a list), also appends its OpenAI finish_reason."""
    result = subprocess.run([PDVM, "run", "-m", str(MODEL), "--backend", "cpu", "--ctx", str(CTX), *args],
                            capture_output=True, timeout=600)
    if result.returncode != 0:
        failures.append(f"pdvm run {args} failed: {result.stderr.decode(errors='replace')}")
        return None
    if stop_reason is not None:
        stopped = re.search(r"stopped: ([a-z ]+)", result.stderr.decode(errors="replace"))
        stop_reason.append({"token limit": "length"}.get(stopped[1] if stopped else "", "stop"))
    out = result.stdout.decode()
    return out[:-1] if out.endswith("\n") else out  # run ends its output with a newline


def run_matches(what, expected, actual):
    # run adds a newline only when the text does not end with one
    if expected is not None and not check(actual == expected or actual == expected + "\n",
                                          f"{what}: server text {actual!r} != pdvm run {expected!r}"):
        return False
    return True


def test_health_and_models(server):
    status, _, body = server.request("GET", "/health")
    check(status == 200 and json.loads(body) == {"status": "ok"}, f"/health: {status} {body!r}")
    status, _, body = server.request("GET", "/v1/models")
    models = json.loads(body)
    check(status == 200 and models["object"] == "list" and models["data"][0]["id"] == MODEL.stem,
          f"/v1/models: {status} {body!r}")


def test_completions_equal_run(server, rng):
    for _ in range(2):
        prompt, n = random_prompt(rng), rng.randint(8, 24)
        run_reason = []
        expected = pdvm_run("-p", prompt, "-n", str(n), "--temp", "0", stop_reason=run_reason)
        body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "cache_prompt": False}
        status, response = server.post("/v1/completions", body)
        if not check(status == 200, f"completion {prompt!r}: {status} {response}"):
            continue
        choice = response["choices"][0]
        run_matches(f"completion {prompt!r}", expected, choice["text"])
        usage = response["usage"]
        check(response["object"] == "text_completion" and usage["completion_tokens"] <= n
              and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"],
              f"completion {prompt!r}: bad envelope {response}")
        # An end of text as the n-th token is n tokens and "stop", as pdvm run reports it.
        full = usage["completion_tokens"] == n
        ended_on_eos = full and choice["finish_reason"] == "stop" and run_reason == ["stop"]
        check(choice["finish_reason"] == ("length" if full else "stop") or ended_on_eos,
              f"completion {prompt!r}: finish_reason {choice['finish_reason']} after {usage} (pdvm run: {run_reason})")

        events = server.stream("/v1/completions", body)
        streamed = "".join(e["choices"][0]["text"] for e in events)
        check(streamed == choice["text"], f"streamed completion {streamed!r} != {choice['text']!r}")
        check(events[-1]["choices"][0]["finish_reason"] == choice["finish_reason"],
              f"stream finish {events[-1]} != {choice['finish_reason']}")


def test_chat_equals_run(server, rng):
    prompt, n = random_prompt(rng) + "?", rng.randint(8, 24)
    expected = pdvm_run("--chat", "-p", prompt, "-n", str(n), "--temp", "0")
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": n, "temperature": 0,
            "cache_prompt": False}
    status, response = server.post("/v1/chat/completions", body)
    if not check(status == 200, f"chat {prompt!r}: {status} {response}"):
        return
    message = response["choices"][0]["message"]
    check(message["role"] == "assistant" and response["object"] == "chat.completion", f"chat envelope {response}")
    run_matches(f"chat {prompt!r}", expected, message["content"])

    events = server.stream("/v1/chat/completions", {**body, "stream_options": {"include_usage": True}})
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    check(deltas[0].get("role") == "assistant", f"first chat delta has no role: {deltas[0]}")
    streamed = "".join(d.get("content", "") for d in deltas)
    check(streamed == message["content"], f"streamed chat {streamed!r} != {message['content']!r}")
    check(events[-1]["usage"] == response["usage"], f"stream usage {events[-1]} != {response['usage']}")

    # content as an array of text parts renders the same prompt
    parts = {**body, "messages": [{"role": "user", "content": [{"type": "text", "text": prompt}]}]}
    status, again = server.post("/v1/chat/completions", parts)
    check(status == 200 and again["choices"][0]["message"] == message, f"chat with text parts: {status} {again}")


def test_seeded_sampling_equals_run(server, rng):
    prompt, seed, temp = random_prompt(rng), rng.randint(0, 2**63), round(rng.uniform(0.6, 1.2), 2)
    expected = pdvm_run("-p", prompt, "-n", "24", "--temp", str(temp), "--seed", str(seed))
    body = {"prompt": prompt, "max_tokens": 24, "temperature": temp, "seed": seed, "cache_prompt": False}
    status, response = server.post("/v1/completions", body)
    if check(status == 200, f"seeded completion: {status} {response}"):
        run_matches(f"seeded completion {prompt!r} seed {seed}", expected, response["choices"][0]["text"])
        status, again = server.post("/v1/completions", body)
        check(again["choices"][0]["text"] == response["choices"][0]["text"], "same seed, different text")


def test_stop_strings_and_token_prompt(server, rng):
    prompt = random_prompt(rng)
    body = {"prompt": prompt, "max_tokens": 24, "temperature": 0, "cache_prompt": False}
    status, response = server.post("/v1/completions", body)
    text = response["choices"][0]["text"]
    if len(text) < 8:
        return
    cut = rng.randint(2, len(text) - 3)
    stop = text[cut:cut + 3]
    status, stopped = server.post("/v1/completions", {**body, "stop": ["\x00never", stop]})
    choice = stopped["choices"][0]
    check(status == 200 and choice["text"] == text[:text.index(stop)] and choice["finish_reason"] == "stop",
          f"stop {stop!r} in {text!r}: got {choice}")

    ids = subprocess.run([PDVM, "tokenize", str(MODEL), prompt, "--ids-only"], capture_output=True, text=True)
    tokens = [int(t) for t in ids.stdout.split()]
    status, by_ids = server.post("/v1/completions", {**body, "prompt": tokens})
    check(status == 200 and by_ids["choices"][0]["text"] == text, f"prompt as token ids {tokens}: {by_ids}")


def test_prompt_cache(server, rng):
    # A repeated prompt reuses all but its last token; cache_prompt false prefills it whole.
    prompt = random_prompt(rng)
    body = {"prompt": prompt, "max_tokens": 4, "temperature": 0}
    for cache_prompt, expected_cached in ((False, lambda n: 0), (True, lambda n: n - 1), (False, lambda n: 0)):
        status, response = server.post("/v1/completions", {**body, "cache_prompt": cache_prompt})
        usage = response["usage"] if status == 200 else {}
        check(status == 200 and usage["prompt_tokens_details"]["cached_tokens"] == expected_cached(usage["prompt_tokens"]),
              f"cache_prompt {cache_prompt}: {status} {response}")
    # Prefill (a batch) and decode (one token) round differently, so greedy text may differ between
    # a fresh and a cached prompt at a near-tie; the same path gives the same text.
    texts = [server.post("/v1/completions", body)[1]["choices"][0]["text"] for _ in range(2)]
    check(texts[0] == texts[1], f"the same cached prompt gave {texts}")


def test_concurrent_requests_are_serialized(server, rng):
    prompt = random_prompt(rng)
    body = {"prompt": prompt, "max_tokens": 16, "temperature": 0}
    server.post("/v1/completions", body)  # from here on every request reuses the same prefix
    _, expected = server.post("/v1/completions", body)
    results = [None] * 3

    def worker(i):
        results[i] = server.post("/v1/completions", body) if i != 1 else server.stream("/v1/completions", body)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    text = expected["choices"][0]["text"]
    check(results[0][1]["choices"][0]["text"] == text and results[2][1]["choices"][0]["text"] == text
          and "".join(e["choices"][0]["text"] for e in results[1]) == text,
          f"concurrent requests differ from {text!r}: {results}")


def test_client_disconnect_mid_stream(server, rng):
    body = json.dumps({"prompt": random_prompt(rng), "max_tokens": 400, "temperature": 0.8, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        first = s.recv(4096)
    check(first.startswith(b"HTTP/1.1 200"), f"stream start: {first[:200]!r}")
    status, response = server.post("/v1/completions", {"prompt": "Hello", "max_tokens": 2, "temperature": 0})
    check(status == 200, f"request after a client went away mid-stream: {status} {response}")


def expect_error(server, what, path, body, status=400, param=None, contains=""):
    got_status, _, data = server.request("POST", path, body)
    try:
        error = json.loads(data)["error"]
    except (ValueError, KeyError, TypeError):
        failures.append(f"{what}: not a JSON error: {got_status} {data[:300]!r}")
        return
    ok = (got_status == status and isinstance(error.get("message"), str) and error["message"]
          and error.get("type") and (param is None or error.get("param") == param) and contains in error["message"])
    check(ok, f"{what}: expected {status} (param {param}, {contains!r}), got {got_status} {error}")


def test_bad_requests(server, rng):
    prompt = random_prompt(rng)
    c, chat = "/v1/completions", "/v1/chat/completions"
    expect_error(server, "malformed JSON", c, b'{"prompt": "x",', contains="not valid JSON")
    expect_error(server, "invalid UTF-8", c, b'{"prompt": "\xff\xfe"}', contains="not valid JSON")
    expect_error(server, "empty body", c, b"", contains="not valid JSON")
    expect_error(server, "not an object", c, [1, 2], contains="JSON object")
    expect_error(server, "deep nesting", c, b"[" * 20000 + b"]" * 20000, contains="nests deeper")
    expect_error(server, "no prompt", c, {"max_tokens": 3}, param="prompt")
    expect_error(server, "prompt a number", c, {"prompt": 7}, param="prompt")
    expect_error(server, "two prompts", c, {"prompt": ["a", "b"]}, param="prompt", contains="not supported")
    expect_error(server, "bad token id", c, {"prompt": [1, 10**9]}, param="prompt[1]")
    expect_error(server, "negative token id", c, {"prompt": [1, -3]}, param="prompt[1]")
    expect_error(server, "temperature a string", c, {"prompt": prompt, "temperature": "hot"}, param="temperature")
    expect_error(server, "negative temperature", c, {"prompt": prompt, "temperature": -1}, param="temperature")
    expect_error(server, "top_p 0", c, {"prompt": prompt, "top_p": 0}, param="top_p")
    expect_error(server, "top_k fractional", c, {"prompt": prompt, "top_k": 1.5}, param="top_k")
    expect_error(server, "top_k huge", c, {"prompt": prompt, "top_k": 2**40}, param="top_k")
    expect_error(server, "max_tokens negative", c, {"prompt": prompt, "max_tokens": -5}, param="max_tokens")
    expect_error(server, "max_tokens beyond 64 bits", c, {"prompt": prompt, "max_tokens": 2**70}, param="max_tokens")
    expect_error(server, "seed a string", c, {"prompt": prompt, "seed": "x"}, param="seed")
    expect_error(server, "stop a number", c, {"prompt": prompt, "stop": 5}, param="stop")
    expect_error(server, "stop empty", c, {"prompt": prompt, "stop": [""]}, param="stop")
    expect_error(server, "stream a string", c, {"prompt": prompt, "stream": "yes"}, param="stream")
    expect_error(server, "n = 2", c, {"prompt": prompt, "n": 2}, param="n", contains="not supported")
    expect_error(server, "logprobs", c, {"prompt": prompt, "logprobs": 3}, param="logprobs")
    expect_error(server, "presence penalty", c, {"prompt": prompt, "presence_penalty": 1}, param="presence_penalty")
    expect_error(server, "user not a string", c, {"prompt": prompt, "user": {"id": 1}}, param="user")
    expect_error(server, "prompt longer than the context", c, {"prompt": " ".join([prompt] * 200)},
                 param="prompt", contains="context")
    expect_error(server, "messages missing", chat, {"prompt": prompt}, param="messages")
    expect_error(server, "messages not an array", chat, {"messages": "hi"}, param="messages")
    expect_error(server, "messages empty", chat, {"messages": []}, param="messages")
    expect_error(server, "role unknown", chat, {"messages": [{"role": "robot", "content": "x"}]},
                 param="messages[0].role")
    expect_error(server, "content a number", chat, {"messages": [{"role": "user", "content": 3}]},
                 param="messages[0].content")
    expect_error(server, "image part", chat, {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
                 param="messages[0].content[0].type")
    expect_error(server, "chat longer than the context", chat,
                 {"messages": [{"role": "user", "content": " ".join([prompt] * 200)}]}, param="messages")
    expect_error(server, "oversized body", c, {"prompt": "x" * (MAX_BODY + 10)}, status=413, contains="too large")
    expect_error(server, "unknown path", "/v1/embeddings", {"input": "x"}, status=404, contains="/v1/embeddings")

    status, response = server.post(c, {"prompt": prompt, "max_tokens": 2, "frobnicate": {"a": [1]}, "user": "u",
                                       "logit_bias": {}, "n": 1, "presence_penalty": 0})
    check(status == 200, f"unknown fields and neutral values should be accepted: {status} {response}")

    for raw in (b"GARBAGE\r\n\r\n", b"POST /v1/completions HTTP/1.1\r\nContent-Length: nope\r\n\r\n{}",
                b"\x00\xff" * 50 + b"\r\n\r\n", b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        check(reply.startswith(b"HTTP/1.1 4") or reply == b"", f"raw request {raw[:40]!r}: reply {reply[:200]!r}")
    status, _, _ = server.request("GET", "/health")
    check(status == 200, "server unhealthy after bad requests")


def test_startup_errors():
    for args, needle in ((["--port", "70000"], "--port"), (["--temp", "-1"], "temperature"),
                         (["--chat-template", "nonesuch"], "nonesuch"), (["-m", "/nonexistent.gguf"], "/nonexistent.gguf")):
        result = subprocess.run([PDVM, "serve", *args], capture_output=True, text=True, timeout=120)
        check(result.returncode != 0 and result.stderr.startswith("pdvm: error: ") and needle in result.stderr,
              f"serve {args}: rc {result.returncode} stderr {result.stderr!r}")


def main():
    require_default_model()
    if subprocess.run([PDVM, "serve", "--help"], capture_output=True).returncode != 0:
        print("SKIP pdvm was built without `serve` (cpp-httplib missing)")
        return 0
    seed = int(os.environ.get("PDVM_TEST_SEED", random.SystemRandom().randrange(2**32)))
    print(f"seed {seed} (set PDVM_TEST_SEED to replay)")
    rng = random.Random(seed)
    test_startup_errors()
    server = Server()
    try:
        for test in (test_health_and_models, test_completions_equal_run, test_chat_equals_run,
                     test_seeded_sampling_equals_run, test_stop_strings_and_token_prompt, test_prompt_cache,
                     test_concurrent_requests_are_serialized, test_client_disconnect_mid_stream):
            print("RUN", test.__name__, flush=True)
            test(server, rng) if test is not test_health_and_models else test(server)
        print("RUN test_bad_requests", flush=True)
        test_bad_requests(server, rng)
    finally:
        rc = server.stop()
    check(rc == 0 and any("stopped" in line for line in server.stderr), f"SIGTERM: exit {rc}, {server.stderr[-3:]}")
    for f in failures:
        print("FAIL", f)
    print(f"{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
