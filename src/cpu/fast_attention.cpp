// Attention of one query head over the KV cache, for the fast CPU backend: scores, softmax and
// the weighted sum of values in one per-target function (no per-key dispatch), for f32, f16
// and q8_0 caches.
#include "cpu/fast_simd_targets.h"  // must precede the Highway headers

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cpu/fast_attention.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/contrib/math/math-inl.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu/fast_attention.h"
#include "cpu/fast_half.h"

HWY_BEFORE_NAMESPACE();
namespace pdvm::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Lanes [i, i + Lanes) of a cache row slice as f32. Q8_0: 2-byte scale + 32 int8 per block;
// a vector never straddles two blocks (at most 16 lanes).
template <class DF>
HWY_INLINE hn::VFromD<DF> LoadCache(DF df, TensorType type, const uint8_t* p, size_t i) {
  switch (type) {
    case TensorType::kF32: return hn::LoadU(df, reinterpret_cast<const float*>(p) + i);
    case TensorType::kF16:
      return hn::PromoteTo(df, hn::LoadU(hn::Rebind<hwy::float16_t, DF>(),
                                         reinterpret_cast<const hwy::float16_t*>(p) + i));
    default: {
      const uint8_t* block = p + (i / 32) * 34;
      const auto q = hn::PromoteTo(hn::RebindToSigned<DF>(),
                                   hn::LoadU(hn::Rebind<int8_t, DF>(), reinterpret_cast<const int8_t*>(block + 2) + i % 32));
      return hn::Mul(hn::ConvertTo(df, q), hn::Set(df, load_half(block)));
    }
  }
}

void AttendHead(const AttentionHead& head, float* scores, float* out) {
  const hn::CappedTag<float, 16> df;
  const size_t n = hn::Lanes(df);
  const size_t dim = static_cast<size_t>(head.head_dim);
  float max_score = -std::numeric_limits<float>::infinity();
  for (int64_t r = 0; r < head.n_keys; ++r) {
    const uint8_t* key = head.keys + r * head.row_bytes;
    auto acc = hn::Zero(df);
    for (size_t i = 0; i < dim; i += n) {
      acc = hn::MulAdd(hn::LoadU(df, head.query + i), LoadCache(df, head.type, key, i), acc);
    }
    scores[r] = head.scale * hn::GetLane(hn::SumOfLanes(df, acc));
    max_score = std::max(max_score, scores[r]);
  }
  const auto max_v = hn::Set(df, max_score);
  auto total_v = hn::Zero(df);
  int64_t r = 0;
  for (; r + static_cast<int64_t>(n) <= head.n_keys; r += n) {
    const auto e = hn::Exp(df, hn::Sub(hn::LoadU(df, scores + r), max_v));
    hn::StoreU(e, df, scores + r);
    total_v = hn::Add(total_v, e);
  }
  float total = hn::GetLane(hn::SumOfLanes(df, total_v));
  for (; r < head.n_keys; ++r) {
    scores[r] = std::exp(scores[r] - max_score);
    total += scores[r];
  }
  const float inverse = 1.0f / total;
  for (size_t i = 0; i < dim; i += n) {
    auto acc = hn::Zero(df);
    for (int64_t key = 0; key < head.n_keys; ++key) {
      acc = hn::MulAdd(hn::Set(df, scores[key]), LoadCache(df, head.type, head.values + key * head.row_bytes, i), acc);
    }
    hn::StoreU(hn::Mul(acc, hn::Set(df, inverse)), df, out + i);
  }
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace pdvm::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace pdvm::cpu {

HWY_EXPORT(AttendHead);

void attend_head(const AttentionHead& head, float* scores, float* out) {
  HWY_DYNAMIC_DISPATCH(AttendHead)(head, scores, out);
}

}  // namespace pdvm::cpu
#endif  // HWY_ONCE
