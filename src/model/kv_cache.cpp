#include "pdvm/kv_cache.h"

#include <optional>
#include <string>

#include <fmt/format.h>

#include "pdvm/error.h"

namespace pdvm {
namespace {

constexpr double kMiB = 1024.0 * 1024.0;

// Refuses a cache that cannot fit before allocating any of it: host allocations succeed lazily
// and the process would be killed when the pages are touched.
void check_fits(const Backend& backend, const KvCacheShape& shape) {
  uint64_t total = static_cast<uint64_t>(type_bytes(shape.type, shape.row_width));
  const bool overflow = __builtin_mul_overflow(total, static_cast<uint64_t>(shape.n_ctx), &total) ||
                        __builtin_mul_overflow(total, 2 * static_cast<uint64_t>(shape.n_layer), &total);
  const std::optional<uint64_t> available = backend.available_memory();
  if (!overflow && (!available || total <= *available)) return;
  const std::string need = overflow ? std::string("more bytes than a 64-bit address space holds")
                                    : fmt::format("{:.0f} MiB", static_cast<double>(total) / kMiB);
  const std::string have = available ? fmt::format("{:.0f} MiB", static_cast<double>(*available) / kMiB)
                                     : std::string("unknown");
  throw_error(ErrorKind::kResource,
              fmt::format("the KV cache for a context of {} tokens needs {} ({} layers, {} entries), memory "
                          "available: {}; use a smaller context size",
                          shape.n_ctx, need, shape.n_layer, type_name(shape.type), have));
}

}  // namespace

KvCache::KvCache(Backend& backend, const KvCacheShape& shape) : shape_(shape) {
  if (shape.n_ctx <= 0) {
    throw_error(ErrorKind::kInvalidArgument,
                "context size must be positive, got " + std::to_string(shape.n_ctx));
  }
  PDVM_CHECK(shape.n_layer >= 0 && shape.row_width > 0);
  check_fits(backend, shape);
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
