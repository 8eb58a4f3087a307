// The attention KV cache: per layer one K and one V tensor of {head_dim * n_head_kv, n_ctx}
// allocated through the backend, filled in order. The forward pass stores a batch at rows
// n_past .. n_past + n - 1 and then advances n_past.
#pragma once

#include <cstdint>
#include <vector>

#include "pdvm/backend.h"

namespace pdvm {

struct KvCacheShape {
  int n_layer = 0;  // 0: positions only (a fused decoder holds the tensors)
  int64_t n_ctx = 0;
  int64_t row_width = 0;  // head_dim * n_head_kv
  TensorType type = TensorType::kF16;
};

class KvCache {
 public:
  KvCache(Backend& backend, const KvCacheShape& shape);

  int64_t n_ctx() const { return shape_.n_ctx; }
  int64_t n_past() const { return n_past_; }
  int64_t n_free() const { return shape_.n_ctx - n_past_; }
  TensorType type() const { return shape_.type; }
  const KvCacheShape& shape() const { return shape_; }

  // The layer's tensors, for kv_store and attention.
  Tensor& keys(int layer);
  Tensor& values(int layer);

  // Error(kOutOfRange) saying the context size and the request when n_tokens more tokens do
  // not fit.
  void check_room(int64_t n_tokens) const;
  // Marks n_tokens more rows as filled (after the forward pass stored them).
  void advance(int64_t n_tokens);
  // Forgets everything (the memory is kept and overwritten later).
  void reset() { n_past_ = 0; }
  // Keeps the first `n_keep` positions, e.g. a shared prompt prefix, and drops the rest.
  void truncate(int64_t n_keep);

  uint64_t n_bytes() const;

 private:
  KvCacheShape shape_;
  int64_t n_past_ = 0;
  std::vector<Tensor> keys_;
  std::vector<Tensor> values_;
};

}  // namespace pdvm
