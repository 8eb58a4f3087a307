// Random-weight llama models of real geometries (`pdvm synth`): the plan (metadata and tensor
// list, cheap even for 13B shapes) and the streamed, multi-threaded writing of the weights.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "pdvm/gguf.h"
#include "pdvm/tensor_type.h"

namespace pdvm::synth {

struct LlamaShape {
  std::string name;
  int64_t n_embd = 0;
  int64_t n_layer = 0;
  int64_t n_head = 0;
  int64_t n_head_kv = 0;
  int64_t n_ff = 0;
  int64_t n_vocab = 0;
  bool tied_embeddings = false;
  float rope_theta = 10000.0f;
  int64_t context_length = 4096;
  float rms_norm_eps = 1e-5f;
};

const std::vector<LlamaShape>& named_shapes();
// Error(kInvalidArgument) listing the known names when `name` is not one of them.
const LlamaShape& shape_by_name(std::string_view name);

enum class TensorRole { kWeight, kNorm };

struct TensorPlan {
  std::string name;
  TensorType type;
  std::vector<int64_t> shape;  // GGUF order: shape[0] is the row length
  TensorRole role;
  int64_t n_elems() const;
  int64_t n_bytes() const;
};

struct ModelPlan {
  LlamaShape shape;
  TensorType weight_type;
  uint64_t seed;
  std::vector<TensorPlan> tensors;  // in llama.cpp's file order
  uint64_t total_bytes() const;
};

// Validates the geometry (heads divide the width, rows fit the block size) and lists the
// tensors with llama.cpp's names. weight_type must be quantizable; norms stay F32. head_type,
// when given, is the LM head's type instead (output.weight, or token_embd where they are tied),
// as llama.cpp's quantized files keep Q6_K there.
ModelPlan plan_model(const LlamaShape& shape, TensorType weight_type, uint64_t seed,
                     std::optional<TensorType> head_type = {});

// All llama.* and general.* keys and the synthetic byte-level BPE tokenizer.
std::vector<GgufKeyValue> model_metadata(const ModelPlan& plan);

// Float values of rows [row_begin, row_end) of a tensor: weights ~ N(0, 0.02), norms 1 + N(0, 0.02).
void tensor_values(const ModelPlan& plan, const TensorPlan& tensor, int64_t row_begin, int64_t row_end,
                   float* out);
// The tensor's bytes in its type, generated on `threads` threads.
void fill_tensor(const ModelPlan& plan, const TensorPlan& tensor, std::span<uint8_t> out, int threads);

// Writes the model one tensor at a time (memory stays about one tensor).
void write_model(const ModelPlan& plan, const std::filesystem::path& path, int threads,
                 const std::function<void(uint64_t, uint64_t)>& progress = {});

}  // namespace pdvm::synth
