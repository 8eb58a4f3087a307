"""Random and adversarial texts for the tokenizer differential tests: mixed scripts, emoji,
whitespace runs, digits, long unsplittable words, special-token look-alikes, invalid UTF-8."""
import json
import os
import subprocess
import tempfile
import unicodedata

WORDS = ["Hello", "world", "the", "tokenizer", "llama", "don't", "I'm", "Über", "naïve", "façade",
         "привет", "мир", "日本語", "中文字符", "한국어", "مرحبا", "שלום", "नमस्ते", "ភាសាខ្មែរ", "ελληνικά",
         "😀", "👩‍👩‍👧", "🏳️‍🌈", "❤️", "✅", "🤖", "e\u0301", "a\u0308\u0323", "ﬁ", "Ａ", "①", "½", "³",
         "<s>", "</s>", "<unk>", "<0x41>", "<0xFF>", "\u2581", "\u2581\u2581x", "▁▁", "<|im_end|>", "[INST]",
         "3.14159", "1,000,000", "0x1F", "42", "007", "int main() {", "}", "->", "::", "==", "'''", "\"\"\"",
         "http://example.com/a?b=c", "\ufeff", "\u200b", "\u00a0", "\u3000", "\u0000", "\x7f", "\x1b[0m",
         "\u180e", "\x1c", "\x85", "\u2028", "\u2029", "\u1680", "\u202f", "\x0b", "\x0c",
         "IT'S", "WE'LL", "'Re", "'d", "(hello)", "@user", "#tag", "$100", "\r\n\r\n", " \r"]
SPACES = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\t\t", "        "]


def random_codepoint(rng):
    while True:
        plane = rng.random()
        cp = rng.randrange(0x20, 0x80) if plane < 0.4 else rng.randrange(0x80, 0x10000) if plane < 0.9 \
            else rng.randrange(0x10000, 0x110000)
        # Only code points assigned in Python's Unicode tables (14.0, the version of Debian 12's
        # PCRE2 10.42): the references classify newer characters by a later Unicode (U+1D2CA, a
        # Unicode 15 digit, is a number to them and unassigned to PCRE2), which is a version
        # difference, not a tokenizer bug.
        if not 0xD800 <= cp <= 0xDFFF and unicodedata.category(chr(cp)) != "Cn":
            return chr(cp)


def random_text(rng):
    kind = rng.random()
    if kind < 0.05:  # long words with no spaces, long digit and whitespace runs
        return rng.choice(["a", "ab", "xyz", "9", " ", "é", "😀", "\n"]) * rng.randrange(50, 3000)
    parts = []
    for _ in range(rng.randrange(0, 25)):
        r = rng.random()
        if r < 0.45:
            parts.append(rng.choice(WORDS))
        elif r < 0.7:
            parts.append(rng.choice(SPACES))
        elif r < 0.85:
            parts.append("".join(random_codepoint(rng) for _ in range(rng.randrange(1, 6))))
        else:
            parts.append(str(rng.randrange(0, 10 ** rng.randrange(1, 12))))
    return "".join(parts)


def with_invalid_bytes(rng):
    data = bytearray(random_text(rng).encode("utf-8"))
    for _ in range(rng.randrange(1, 6)):
        bad = rng.choice([b"\xff", b"\xfe", b"\x80", b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98", b"\xc0\xaf",
                          b"\xed\xa0\x80", b"\xf4\x90\x80\x80", bytes([rng.randrange(0x80, 0x100)])])
        pos = rng.randrange(0, len(data) + 1)
        data[pos:pos] = bad
    return bytes(data)


def is_valid_utf8(data):
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def pdvm_tokenize(pdvm, gguf, items):
    """Ids from one `pdvm tokenize --jsonl` run (no BOS, special-token text as text) for each
    item: a str, or bytes that need not be valid UTF-8."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item if isinstance(item, str) else list(item)) + "\n")
        path = f.name
    try:
        result = subprocess.run([pdvm, "tokenize", str(gguf), "--jsonl", path, "--no-bos", "--no-special"],
                                capture_output=True, check=False)
    finally:
        os.unlink(path)
    if result.returncode != 0:
        raise RuntimeError(f"pdvm tokenize failed: {result.stderr.decode(errors='replace')}")
    ids = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert len(ids) == len(items), (len(ids), len(items))
    return ids
