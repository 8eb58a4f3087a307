#!/usr/bin/env python3
"""Independent numpy reference of the LLaMA forward pass over a GGUF file.

Everything is computed in float64: weights are dequantized with the gguf package (to float32,
exactly as stored) and widened once at load time. It is written from the model's math, not
from the C++ code, so the two can check each other.

    python3 reference/pdvm_ref.py MODEL --tokens 1,2,3 --out logits.npy [--greedy N]
"""
from __future__ import annotations

import argparse
import os
import sys

# One BLAS thread: the work is matrix-vector products, which threads only slow down on a
# loaded machine (measured 40x on 2 shared cores).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np


class LlamaReference:
    def __init__(self, path: str):
        from gguf import GGUFReader
        from gguf.quants import dequantize

        reader = GGUFReader(path)
        meta = {name: field.contents() for name, field in reader.fields.items()}
        arch = meta["general.architecture"]
        if arch != "llama":
            raise ValueError(f"{path}: architecture {arch!r} is not llama")
        weights = {}
        for t in reader.tensors:
            # numpy shape is the GGUF shape reversed: rows first, contiguous dimension last.
            values = dequantize(t.data, t.tensor_type)
            weights[t.name] = np.asarray(values, dtype=np.float64).reshape(tuple(reversed([int(d) for d in t.shape])))
        self._setup(weights, {key[len("llama."):]: v for key, v in meta.items() if key.startswith("llama.")}, path)

    @classmethod
    def from_weights(cls, weights: dict, hparams: dict) -> "LlamaReference":
        """A model from float64 arrays named as in GGUF and llama.* hyper-parameters (without
        the prefix), e.g. random weights of a real geometry for timing."""
        model = cls.__new__(cls)
        model._setup(weights, hparams, "weights")
        return model

    def _setup(self, weights, hparams, source):
        def hp(key, default=None):
            value = hparams.get(key, default)
            if value is None:
                raise ValueError(f"{source}: missing llama.{key}")
            return value

        self.weights = weights
        self.n_layer = int(hp("block_count"))
        self.n_embd = int(hp("embedding_length"))
        self.n_head = int(hp("attention.head_count"))
        self.n_head_kv = int(hp("attention.head_count_kv", self.n_head))
        self.head_dim = int(hp("attention.key_length", self.n_embd // self.n_head))
        self.n_rot = int(hp("rope.dimension_count", self.head_dim))
        self.freq_base = float(hp("rope.freq_base", 10000.0))
        self.eps = float(hp("attention.layer_norm_rms_epsilon", 1e-5))
        self.output = self.weights.get("output.weight", self.weights["token_embd.weight"])
        self.n_vocab = self.weights["token_embd.weight"].shape[0]

        # Rotation frequency of each adjacent pair (x[2i], x[2i+1]) of a head.
        pair = np.arange(self.n_rot // 2, dtype=np.float64)
        self.inv_freq = self.freq_base ** (-2.0 * pair / self.n_rot)
        if "rope_freqs.weight" in self.weights:
            self.inv_freq = self.inv_freq / self.weights["rope_freqs.weight"]
        self.reset()

    def reset(self):
        self.keys = [np.zeros((0, self.n_head_kv, self.head_dim)) for _ in range(self.n_layer)]
        self.values = [np.zeros((0, self.n_head_kv, self.head_dim)) for _ in range(self.n_layer)]

    def rms_norm(self, x, weight):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * weight

    def rotate(self, x, positions):
        """x: (tokens, heads, head_dim); turns each adjacent pair by position * inv_freq."""
        angle = positions[:, None] * self.inv_freq[None, :]  # (tokens, pairs)
        cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
        out = x.copy()
        even = x[:, :, 0:self.n_rot:2]
        odd = x[:, :, 1:self.n_rot:2]
        out[:, :, 0:self.n_rot:2] = even * cos - odd * sin
        out[:, :, 1:self.n_rot:2] = even * sin + odd * cos
        return out

    def attend(self, q, keys, values, positions):
        """q: (tokens, n_head, d); keys/values: (n_keys, n_head_kv, d). Causal by position."""
        group = self.n_head // self.n_head_kv
        k = np.repeat(keys, group, axis=1)  # query head h reads K/V head h // group
        v = np.repeat(values, group, axis=1)
        scores = np.einsum("thd,khd->htk", q, k) / np.sqrt(self.head_dim)
        future = np.arange(k.shape[0])[None, :] > positions[:, None]
        scores[:, future] = -np.inf
        scores -= scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        return np.einsum("htk,khd->thd", probs, v)

    def forward(self, tokens):
        """Appends tokens after the cached ones; returns their logits (tokens, n_vocab)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        n = len(tokens)
        start = self.keys[0].shape[0]
        positions = np.arange(start, start + n, dtype=np.float64)
        w = self.weights
        x = w["token_embd.weight"][tokens]
        for layer in range(self.n_layer):
            x = self.layer(layer, x, positions)
        return self.rms_norm(x, w["output_norm.weight"]) @ self.output.T

    def layer(self, layer, x, positions):
        """One transformer block on x (tokens, n_embd) at `positions`; appends to its K/V."""
        n = x.shape[0]
        w = self.weights
        p = f"blk.{layer}."
        h = self.rms_norm(x, w[p + "attn_norm.weight"])
        q = (h @ w[p + "attn_q.weight"].T).reshape(n, self.n_head, self.head_dim)
        k = (h @ w[p + "attn_k.weight"].T).reshape(n, self.n_head_kv, self.head_dim)
        v = (h @ w[p + "attn_v.weight"].T).reshape(n, self.n_head_kv, self.head_dim)
        q = self.rotate(q, positions)
        k = self.rotate(k, positions)
        self.keys[layer] = np.concatenate([self.keys[layer], k])
        self.values[layer] = np.concatenate([self.values[layer], v])
        attn = self.attend(q, self.keys[layer], self.values[layer], positions).reshape(n, -1)
        x = x + attn @ w[p + "attn_output.weight"].T
        h = self.rms_norm(x, w[p + "ffn_norm.weight"])
        gate = h @ w[p + "ffn_gate.weight"].T
        up = h @ w[p + "ffn_up.weight"].T
        x = x + (gate / (1.0 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].T
        return x

    def greedy(self, prompt, n):
        """Logits of the prompt, then n greedy tokens and the logits each was chosen from."""
        self.reset()
        prompt_logits = self.forward(prompt)
        logits = prompt_logits[-1]
        generated, step_logits = [], []
        for i in range(n):
            step_logits.append(logits)
            generated.append(int(np.argmax(logits)))
            if i + 1 < n:
                logits = self.forward([generated[-1]])[0]
        return prompt_logits, generated, np.array(step_logits).reshape(n, self.n_vocab)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--tokens", required=True, help="comma-separated token ids")
    parser.add_argument("--out", help="write the prompt's logits (n_tokens, n_vocab) as .npy")
    parser.add_argument("--greedy", type=int, default=0, help="continue greedily, print the ids")
    parser.add_argument("--greedy-out", help="write the logits of each greedy step as .npy")
    args = parser.parse_args(argv)
    prompt = [int(t) for t in args.tokens.split(",")]
    model = LlamaReference(args.model)
    prompt_logits, generated, step_logits = model.greedy(prompt, args.greedy)
    if args.out:
        np.save(args.out, prompt_logits.astype(np.float32))
    if args.greedy:
        print(",".join(str(t) for t in generated))
        if args.greedy_out:
            np.save(args.greedy_out, step_logits.astype(np.float32))
    return 0


if __name__ == "__main__":
    sys.exit(main())
