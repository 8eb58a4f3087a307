"""Small LLaMA GGUF files with random weights, written with the gguf package's GGUFWriter.

Used by the differential tests: a handful of shapes cover GQA, tied heads, head sizes,
rope frequency factors and weight types without needing a real checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import gguf
from gguf import GGMLQuantizationType


@dataclass
class RandomLlamaSpec:
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    n_head_kv: int = 4
    head_dim: int = 32
    n_ff: int = 192
    n_vocab: int = 256
    n_ctx: int = 512
    tied: bool = False
    rope_freqs: bool = False
    weight_type: str = "F32"  # F32, F16, Q8_0, Q4_0 (norms stay F32)
    freq_base: float = 10000.0
    eps: float = 1e-5

    def label(self):
        return (f"L{self.n_layer}-E{self.n_embd}-H{self.n_head}/{self.n_head_kv}x{self.head_dim}"
                f"-{self.weight_type}{'-tied' if self.tied else ''}{'-ropefreqs' if self.rope_freqs else ''}")


def _add_matrix(writer, name, values, weight_type):
    qtype = GGMLQuantizationType[weight_type]
    if qtype == GGMLQuantizationType.F32:
        writer.add_tensor(name, values.astype(np.float32))
    elif qtype == GGMLQuantizationType.F16:
        writer.add_tensor(name, values.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(values.astype(np.float32), qtype), raw_dtype=qtype)


def write_random_llama(path, spec: RandomLlamaSpec, rng: np.random.Generator, tokenizer=False):
    """tokenizer=True adds a placeholder SentencePiece vocabulary so llama.cpp loads the file."""
    writer = gguf.GGUFWriter(str(path), "llama")
    if tokenizer:
        pieces = ["<unk>", "<s>", "</s>", "<0x0A>"] + [f"t{i}" for i in range(4, spec.n_vocab)]
        writer.add_tokenizer_model("llama")
        writer.add_token_list(pieces)
        writer.add_token_scores([0.0] * spec.n_vocab)
        types = [gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.BYTE] + [gguf.TokenType.NORMAL] * (spec.n_vocab - 4)
        writer.add_token_types(types)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
    writer.add_block_count(spec.n_layer)
    writer.add_context_length(spec.n_ctx)
    writer.add_embedding_length(spec.n_embd)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head_kv)
    if spec.head_dim != spec.n_embd // spec.n_head:
        writer.add_key_length(spec.head_dim)
        writer.add_value_length(spec.head_dim)
    writer.add_rope_dimension_count(spec.head_dim)
    writer.add_rope_freq_base(spec.freq_base)
    writer.add_layer_norm_rms_eps(spec.eps)
    writer.add_vocab_size(spec.n_vocab)

    def matrix(n_out, n_in, scale=None):
        # numpy shape (rows, contiguous) = GGUF shape [n_in, n_out]
        return rng.normal(0.0, scale if scale is not None else n_in ** -0.5, (n_out, n_in))

    def norm():
        return (1.0 + 0.2 * rng.standard_normal(spec.n_embd)).astype(np.float32)

    q_width, kv_width = spec.n_head * spec.head_dim, spec.n_head_kv * spec.head_dim
    # A tied head scores each token against its own embedding: small embeddings keep the
    # input token from dominating the logits.
    embd_scale = spec.n_embd ** -0.5 if spec.tied else 1.0
    _add_matrix(writer, "token_embd.weight", matrix(spec.n_vocab, spec.n_embd, embd_scale), spec.weight_type)
    writer.add_tensor("output_norm.weight", norm())
    if not spec.tied:
        _add_matrix(writer, "output.weight", matrix(spec.n_vocab, spec.n_embd), spec.weight_type)
    if spec.rope_freqs:
        factors = rng.uniform(1.0, 8.0, spec.head_dim // 2).astype(np.float32)
        writer.add_tensor("rope_freqs.weight", factors)
    for layer in range(spec.n_layer):
        p = f"blk.{layer}."
        writer.add_tensor(p + "attn_norm.weight", norm())
        _add_matrix(writer, p + "attn_q.weight", matrix(q_width, spec.n_embd), spec.weight_type)
        _add_matrix(writer, p + "attn_k.weight", matrix(kv_width, spec.n_embd), spec.weight_type)
        _add_matrix(writer, p + "attn_v.weight", matrix(kv_width, spec.n_embd), spec.weight_type)
        _add_matrix(writer, p + "attn_output.weight", matrix(spec.n_embd, q_width), spec.weight_type)
        writer.add_tensor(p + "ffn_norm.weight", norm())
        _add_matrix(writer, p + "ffn_gate.weight", matrix(spec.n_ff, spec.n_embd), spec.weight_type)
        _add_matrix(writer, p + "ffn_up.weight", matrix(spec.n_ff, spec.n_embd), spec.weight_type)
        _add_matrix(writer, p + "ffn_down.weight", matrix(spec.n_embd, spec.n_ff), spec.weight_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# Shapes the differential tests cover.
SPECS = [
    RandomLlamaSpec(),
    RandomLlamaSpec(n_head_kv=2, tied=True, weight_type="F16"),
    RandomLlamaSpec(n_embd=256, n_head=4, n_head_kv=1, head_dim=64, weight_type="Q8_0", rope_freqs=True),
    RandomLlamaSpec(n_embd=128, n_head=2, n_head_kv=2, head_dim=64, weight_type="Q4_0", tied=True,
                    freq_base=500000.0),
    RandomLlamaSpec(n_layer=3, n_embd=96, n_head=6, n_head_kv=3, head_dim=32, n_ff=160, weight_type="Q8_0"),
]
