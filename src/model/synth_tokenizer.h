// A synthetic byte-level BPE vocabulary (GGUF tokenizer.ggml.model "gpt2") of any size, for
// random-weight test models: the 256 byte tokens first, then tokens built by merging two
// earlier tokens (so every token is reachable by BPE), then the control tokens.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace pdvm::synth {

struct SynthVocab {
  std::vector<std::string> tokens;   // in GPT-2's byte-to-unicode form, as GGUF stores them
  std::vector<int32_t> token_types;  // 1 normal, 3 control (llama.cpp's token type ids)
  std::vector<std::string> merges;   // "left right", highest priority first
  uint32_t bos_id = 0;
  uint32_t eos_id = 0;
};

// vocab_size must be at least 258 (bytes plus bos and eos). Deterministic for a seed.
SynthVocab make_byte_level_vocab(int64_t vocab_size, uint64_t seed);

// GPT-2's reversible byte -> printable code point mapping, UTF-8 encoded.
std::string byte_to_token_text(uint8_t byte);

}  // namespace pdvm::synth
