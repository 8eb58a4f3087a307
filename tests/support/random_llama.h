// Tiny LLaMA GGUF files with fresh random weights (test::rng()), written with pdvm::GgufWriter,
// for tests of the model, KV cache and session that must not depend on a real checkpoint.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "pdvm/gguf.h"
#include "pdvm/tensor_type.h"
#include "test_support.h"

namespace pdvm::test {

struct RandomLlama {
  int n_layer = 2;
  int n_embd = 64;
  int n_head = 4;
  int n_head_kv = 2;
  int n_ff = 96;
  int n_vocab = 97;
  int n_ctx = 256;
  bool tied = false;
  TensorType weight_type = TensorType::kQ8_0;
  // Tensors to leave out or give a wrong shape, for the error-path tests.
  std::string omit_tensor;
  std::string misshape_tensor;
  std::string nan_tensor;  // a norm weight (F32) written as NaNs: the broken-weights tests
  std::string architecture = "llama";
  int declared_layers = 0;  // block_count written to the metadata when non-zero
};

inline void add_random_tensor(GgufWriter& writer, const RandomLlama& spec, const std::string& name,
                              std::vector<int64_t> shape, float stddev, float mean = 0.0f) {
  if (name == spec.omit_tensor) return;
  if (name == spec.misshape_tensor) shape.back() += 1;
  const bool is_norm = shape.size() == 1;
  const TensorType type = is_norm ? TensorType::kF32 : spec.weight_type;
  const int64_t n_rows = is_norm ? 1 : shape[1];
  auto values = random_floats(static_cast<size_t>(shape[0] * n_rows), stddev);
  for (float& v : values) v = name == spec.nan_tensor ? std::nanf("") : v + mean;
  std::vector<uint8_t> bytes(static_cast<size_t>(type_bytes(type, shape[0]) * n_rows));
  const int64_t row_bytes = type_bytes(type, shape[0]);
  for (int64_t r = 0; r < n_rows; ++r) {
    quantize_row(type, values.data() + r * shape[0], bytes.data() + r * row_bytes, shape[0]);
  }
  writer.add_tensor(name, type, std::move(shape), [bytes = std::move(bytes)](std::span<uint8_t> out) {
    std::copy(bytes.begin(), bytes.end(), out.begin());
  });
}

// Writes the model to a file in the temp directory (named with the pid) and returns its path.
inline std::filesystem::path write_random_llama(const RandomLlama& spec, const std::string& file_name) {
  GgufWriter writer;
  const std::string a = spec.architecture + ".";
  writer.set("general.architecture", GgufValue(spec.architecture));
  const int declared_layers = spec.declared_layers ? spec.declared_layers : spec.n_layer;
  writer.set(a + "block_count", GgufValue(static_cast<uint32_t>(declared_layers)));
  writer.set(a + "context_length", GgufValue(static_cast<uint32_t>(spec.n_ctx)));
  writer.set(a + "embedding_length", GgufValue(static_cast<uint32_t>(spec.n_embd)));
  writer.set(a + "feed_forward_length", GgufValue(static_cast<uint32_t>(spec.n_ff)));
  writer.set(a + "attention.head_count", GgufValue(static_cast<uint32_t>(spec.n_head)));
  writer.set(a + "attention.head_count_kv", GgufValue(static_cast<uint32_t>(spec.n_head_kv)));
  writer.set(a + "attention.layer_norm_rms_epsilon", GgufValue(1e-5f));
  writer.set(a + "rope.freq_base", GgufValue(10000.0f));

  const int64_t embd = spec.n_embd, head_dim = spec.n_embd / spec.n_head;
  const int64_t kv = head_dim * spec.n_head_kv, ff = spec.n_ff, vocab = spec.n_vocab;
  const float in_scale = 1.0f / std::sqrt(static_cast<float>(embd));
  add_random_tensor(writer, spec, "token_embd.weight", {embd, vocab}, spec.tied ? in_scale : 1.0f);
  add_random_tensor(writer, spec, "output_norm.weight", {embd}, 0.2f, 1.0f);
  if (!spec.tied) add_random_tensor(writer, spec, "output.weight", {embd, vocab}, in_scale);
  for (int i = 0; i < spec.n_layer; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    add_random_tensor(writer, spec, p + "attn_norm.weight", {embd}, 0.2f, 1.0f);
    add_random_tensor(writer, spec, p + "attn_q.weight", {embd, embd}, in_scale);
    add_random_tensor(writer, spec, p + "attn_k.weight", {embd, kv}, in_scale);
    add_random_tensor(writer, spec, p + "attn_v.weight", {embd, kv}, in_scale);
    add_random_tensor(writer, spec, p + "attn_output.weight", {embd, embd}, in_scale);
    add_random_tensor(writer, spec, p + "ffn_norm.weight", {embd}, 0.2f, 1.0f);
    add_random_tensor(writer, spec, p + "ffn_gate.weight", {embd, ff}, in_scale);
    add_random_tensor(writer, spec, p + "ffn_up.weight", {embd, ff}, in_scale);
    add_random_tensor(writer, spec, p + "ffn_down.weight", {ff, embd},
                      1.0f / std::sqrt(static_cast<float>(ff)));
  }
  const auto path = std::filesystem::temp_directory_path() /
                    ("pdvm_" + std::to_string(::getpid()) + "_" + file_name);
  writer.write(path);
  return path;
}

inline std::vector<int32_t> random_tokens(size_t n, int n_vocab) {
  std::uniform_int_distribution<int32_t> dist(0, n_vocab - 1);
  std::vector<int32_t> tokens(n);
  for (auto& t : tokens) t = dist(rng());
  return tokens;
}

}  // namespace pdvm::test
