// Per-target (Highway -inl) decoding of the 32-element block formats, shared by the matvec
// and GEMM kernels of the fast CPU backend. Include after hwy/highway.h inside the
// foreach_target loop.
#if defined(PDVM_CPU_FAST_BLOCK_FORMATS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef PDVM_CPU_FAST_BLOCK_FORMATS_INL_H_
#undef PDVM_CPU_FAST_BLOCK_FORMATS_INL_H_
#else
#define PDVM_CPU_FAST_BLOCK_FORMATS_INL_H_
#endif

#include <cstdint>
#include <cstring>

#include "cpu/fast_half.h"
#include "pdvm/tensor_type.h"
#include "tensor/reference_blocks.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace pdvm::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// int16 lanes per vector of the integer kernels: at most half a block, so that a vector never
// straddles the low/high nibble halves of a 4-bit block. AVX-512 too: after the 256-bit
// multiply-adds a block is 8 int32 lanes, so its convert and FMA run at half width, which
// measured faster than whole-block 512-bit vectors (docs/perf-notes.md).
constexpr size_t kI16Lanes = 16;
constexpr size_t kMaxVecsPerBlock = 32;  // the one-lane fallback target

// Lanes [first, first + Lanes(d)) of a 16-byte nibble array in GGML order (element i < 16 is
// the low nibble of byte i, element 16 + i its high nibble), as integers in [0, 15].
template <class D>
HWY_INLINE hn::VFromD<D> Nibbles(D d, const uint8_t* qs, size_t first) {
  const auto bytes = hn::PromoteTo(d, hn::LoadU(hn::Rebind<uint8_t, D>(), qs + (first & 15)));
  return first < 16 ? hn::And(bytes, hn::Set(d, 15)) : hn::ShiftRight<4>(bytes);
}

// 0 or 16 for each element: the fifth bit of the Q5 formats, expanded through a table.
struct HighBitTable {
  int16_t values[256][8];
  HighBitTable() {
    for (int byte = 0; byte < 256; ++byte) {
      for (int bit = 0; bit < 8; ++bit) values[byte][bit] = ((byte >> bit) & 1) ? 16 : 0;
    }
  }
};
inline const HighBitTable& high_bits() {
  static const HighBitTable table;
  return table;
}

template <class D>
HWY_INLINE hn::VFromD<D> HighBits(D d, const int16_t* expanded, size_t first) {
  if constexpr (sizeof(hn::TFromD<D>) == 2) {
    return hn::LoadU(d, expanded + first);
  } else {
    return hn::PromoteTo(d, hn::LoadU(hn::Rebind<int16_t, D>(), expanded + first));
  }
}

inline void expand_high_bits(const uint8_t* qh, int16_t* out) {
  const HighBitTable& table = high_bits();
  for (int i = 0; i < 4; ++i) std::memcpy(out + 8 * i, table.values[qh[i]], sizeof(table.values[0]));
}

// ---- block formats (GGUF layouts) --------------------------------------------------------
// kHasMin: a second half (the min) follows the scale, and the offset coefficient is that min;
// otherwise the offset coefficient is kOffsetPerScale * scale.
struct Q4_0 {
  static constexpr int64_t kBytes = 18;
  static constexpr bool kHasOffset = true;
  static constexpr bool kHasMin = false;
  static constexpr float kOffsetPerScale = -8.0f;
  template <class D>
  static void decode(D d, const uint8_t* b, hn::VFromD<D>* out) {
    const size_t n = hn::Lanes(d);
    for (size_t i = 0, v = 0; i < 32; i += n, ++v) out[v] = Nibbles(d, b + 2, i);
  }
};

struct Q4_1 {
  static constexpr int64_t kBytes = 20;
  static constexpr bool kHasOffset = true;
  static constexpr bool kHasMin = true;
  static constexpr float kOffsetPerScale = 0.0f;
  template <class D>
  static void decode(D d, const uint8_t* b, hn::VFromD<D>* out) {
    const size_t n = hn::Lanes(d);
    for (size_t i = 0, v = 0; i < 32; i += n, ++v) out[v] = Nibbles(d, b + 4, i);
  }
};

template <int64_t kHeader, bool kMinForm>
struct Q5Format {
  static constexpr int64_t kBytes = kHeader + 4 + 16;
  static constexpr bool kHasOffset = true;
  static constexpr bool kHasMin = kMinForm;
  static constexpr float kOffsetPerScale = kMinForm ? 0.0f : -16.0f;
  template <class D>
  static void decode(D d, const uint8_t* b, hn::VFromD<D>* out) {
    const size_t n = hn::Lanes(d);
    const uint8_t* qh = b + kHeader;
    if (n % 8 == 0) {  // whole bytes of qh per vector: the bits become a lane mask directly
      const auto sixteen = hn::Set(d, 16);
      for (size_t i = 0, v = 0; i < 32; i += n, ++v) {
        out[v] = hn::Or(Nibbles(d, b + kHeader + 4, i), hn::IfThenElseZero(hn::LoadMaskBits(d, qh + i / 8), sixteen));
      }
      return;
    }
    HWY_ALIGN int16_t expanded[32];
    expand_high_bits(qh, expanded);
    for (size_t i = 0, v = 0; i < 32; i += n, ++v) {
      out[v] = hn::Or(Nibbles(d, b + kHeader + 4, i), HighBits(d, expanded, i));
    }
  }
};
using Q5_0 = Q5Format<2, false>;
using Q5_1 = Q5Format<4, true>;

struct Q8_0 {
  static constexpr int64_t kBytes = 34;
  static constexpr bool kHasOffset = false;
  static constexpr bool kHasMin = false;
  static constexpr float kOffsetPerScale = 0.0f;
  template <class D>
  static void decode(D d, const uint8_t* b, hn::VFromD<D>* out) {
    const hn::Rebind<int8_t, D> d8;
    const size_t n = hn::Lanes(d);
    const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
    for (size_t i = 0, v = 0; i < 32; i += n, ++v) out[v] = hn::PromoteTo(d, hn::LoadU(d8, qs + i));
  }
};

// Scale and offset coefficient of one block, for code that dequantizes block by block.
template <class Format>
HWY_INLINE float BlockScale(const uint8_t* block) {
  return load_half(block);
}
template <class Format>
HWY_INLINE float BlockOffset(const uint8_t* block) {
  return Format::kHasMin ? load_half(block + 2) : Format::kOffsetPerScale * load_half(block);
}

// ---- K-quants (256-element super-blocks), dequantized a row at a time --------------------
// Lanes [first, first + Lanes(d)) of 4-bit values held in the low (or high) nibbles of
// consecutive bytes, as integers.
template <class D>
HWY_INLINE hn::VFromD<D> NibbleRun(D d, const uint8_t* bytes, size_t first, bool high) {
  const auto v = hn::PromoteTo(d, hn::LoadU(hn::Rebind<uint8_t, D>(), bytes + first));
  return high ? hn::ShiftRight<4>(v) : hn::And(v, hn::Set(d, 15));
}

// Q4_K (kHighBits = false) and Q5_K (true): sub-block s of 32 takes nibbles from
// qs[(s / 2) * 32 + l] (low for even s), the fifth bit from bit s of qh[l];
// value = d * scale_s * q - dmin * min_s.
template <bool kHighBits>
HWY_INLINE void DequantizeQ45K(const uint8_t* block, float* y) {
  const hn::CappedTag<float, 16> df;
  const hn::RebindToSigned<decltype(df)> di;
  const size_t n = hn::Lanes(df);
  const float d = load_half(block), dmin = load_half(block + 2);
  const uint8_t* scales = block + 4;
  const uint8_t* qh = block + 16;
  const uint8_t* qs = block + (kHighBits ? 48 : 16);
  for (int sub = 0; sub < 8; ++sub) {
    int scale, min;
    reference::k4_scale_min(scales, sub, scale, min);
    const auto ds = hn::Set(df, d * static_cast<float>(scale));
    const auto dm = hn::Set(df, -dmin * static_cast<float>(min));
    for (size_t l = 0; l < 32; l += n) {
      auto q = NibbleRun(di, qs + (sub / 2) * 32, l, sub % 2 == 1);
      if constexpr (kHighBits) {
        const auto bits = hn::PromoteTo(di, hn::LoadU(hn::Rebind<uint8_t, decltype(di)>(), qh + l));
        q = hn::Or(q, hn::ShiftLeft<4>(hn::And(hn::ShiftRightSame(bits, sub), hn::Set(di, 1))));
      }
      hn::StoreU(hn::MulAdd(hn::ConvertTo(df, q), ds, dm), df, y + sub * 32 + l);
    }
  }
}

// Q6_K: in each half of 128 elements, group g (0..3) of 32 takes its low nibbles from
// ql[(g % 2) * 32 + l] (high nibbles for g >= 2) and two high bits from qh[l] >> 2g; int8
// scales per 16 elements; value = d * scale * (q - 32).
HWY_INLINE void DequantizeQ6K(const uint8_t* block, float* y) {
  const hn::CappedTag<float, 16> df;
  const hn::RebindToSigned<decltype(df)> di;
  const size_t n = hn::Lanes(df);
  const float d = load_half(block + 208);
  const int8_t* scales = reinterpret_cast<const int8_t*>(block + 192);
  for (int half = 0; half < 2; ++half) {
    const uint8_t* ql = block + half * 64;
    const uint8_t* qh = block + 128 + half * 32;
    for (int group = 0; group < 4; ++group) {
      for (size_t l = 0; l < 32; l += n) {
        const auto low = NibbleRun(di, ql + (group % 2) * 32, l, group >= 2);
        const auto bits = hn::PromoteTo(di, hn::LoadU(hn::Rebind<uint8_t, decltype(di)>(), qh + l));
        const auto high = hn::And(hn::ShiftRightSame(bits, 2 * group), hn::Set(di, 3));
        const auto q = hn::Sub(hn::Or(low, hn::ShiftLeft<4>(high)), hn::Set(di, 32));
        // n <= 16 lanes never straddle the two 16-element scale groups.
        const int e = half * 128 + group * 32 + static_cast<int>(l);
        const auto scale = hn::Set(df, d * static_cast<float>(scales[e / 16]));
        hn::StoreU(hn::Mul(hn::ConvertTo(df, q), scale), df, y + e);
      }
    }
  }
}

// Dequantizes a K-quant row with SIMD; false for other types.
HWY_INLINE bool DequantizeKQuantRow(TensorType type, const uint8_t* row, int64_t k, float* y) {
  const int64_t n_blocks = k / 256;
  switch (type) {
    case TensorType::kQ4_K:
      for (int64_t b = 0; b < n_blocks; ++b) DequantizeQ45K<false>(row + b * 144, y + b * 256);
      return true;
    case TensorType::kQ5_K:
      for (int64_t b = 0; b < n_blocks; ++b) DequantizeQ45K<true>(row + b * 176, y + b * 256);
      return true;
    case TensorType::kQ6_K:
      for (int64_t b = 0; b < n_blocks; ++b) DequantizeQ6K(row + b * 210, y + b * 256);
      return true;
    default:
      return false;
  }
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace pdvm::cpu
HWY_AFTER_NAMESPACE();

#endif  // PDVM_CPU_FAST_BLOCK_FORMATS_INL_H_
