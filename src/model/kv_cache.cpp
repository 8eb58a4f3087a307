#include "pdvm/kv_cache.h"

#include <string>

#include "pdvm/error.h"

namespace pdvm {

KvCache::KvCache(Backend& backend, const KvCacheShape& shape) : shape_(shape) {
  if (shape.n_ctx <= 0) {
    throw_error(ErrorKind::kInvalidArgument,
                "context size must be positive, got " + std::to_string(shape.n_ctx));
  }
  PDVM_CHECK(shape.n_layer > 0 && shape.row_width > 0);
  keys_.reserve(shape.n_layer);
  values_.reserve(shape.n_layer);
  for (int layer = 0; layer < shape.n_layer; ++layer) {
    keys_.push_back(backend.alloc(shape.type, {shape.row_width, shape.n_ctx, 1, 1}));
    values_.push_back(backend.alloc(shape.type, {shape.row_width, shape.n_ctx, 1, 1}));
  }
}

Tensor& KvCache::keys(int layer) {
  PDVM_CHECK(layer >= 0 && layer < shape_.n_layer);
  return keys_[layer];
}

Tensor& KvCache::values(int layer) {
  PDVM_CHECK(layer >= 0 && layer < shape_.n_layer);
  return values_[layer];
}

void KvCache::check_room(int64_t n_tokens) const {
  if (n_tokens < 0 || n_tokens > n_free()) {
    throw_error(ErrorKind::kOutOfRange,
                "context overflow: " + std::to_string(n_tokens) + " more tokens requested with " +
                    std::to_string(n_past_) + " of " + std::to_string(shape_.n_ctx) +
                    " positions already used (context size " + std::to_string(shape_.n_ctx) + ")");
  }
}

void KvCache::advance(int64_t n_tokens) {
  check_room(n_tokens);
  n_past_ += n_tokens;
}

void KvCache::truncate(int64_t n_keep) {
  if (n_keep < 0 || n_keep > n_past_) {
    throw_error(ErrorKind::kOutOfRange, "cannot truncate the KV cache to " + std::to_string(n_keep) +
                                            " positions: it holds " + std::to_string(n_past_));
  }
  n_past_ = n_keep;
}

uint64_t KvCache::n_bytes() const {
  uint64_t total = 0;
  for (const auto& t : keys_) total += t.n_bytes;
  for (const auto& t : values_) total += t.n_bytes;
  return total;
}

}  // namespace pdvm
