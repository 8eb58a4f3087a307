// One query head attending over a KV cache slice (fast CPU backend).
#pragma once

#include <cstdint>

#include "pdvm/tensor_type.h"

namespace pdvm::cpu {

struct AttentionHead {
  TensorType type = TensorType::kF16;  // cache type: f32, f16 or q8_0
  const float* query = nullptr;        // head_dim floats
  const uint8_t* keys = nullptr;       // this head's slice of cache row 0
  const uint8_t* values = nullptr;
  int64_t row_bytes = 0;               // stride between cache rows
  int64_t n_keys = 0;                  // rows 0..n_keys-1
  int64_t head_dim = 0;                // a multiple of 32 for q8_0 and of 16 otherwise
  float scale = 1.0f;
};

// out = softmax(scale * q . k_r) weighted sum of v_r; scores holds n_keys floats of scratch.
void attend_head(const AttentionHead& head, float* scores, float* out);

}  // namespace pdvm::cpu
