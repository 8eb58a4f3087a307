// Matmul kernels of the fast CPU backend, compiled once per SIMD target (Highway
// foreach_target) and picked at run time. Block formats share one template: a format knows
// how to decode a 32-element block into integer lanes plus a scale and an offset
// coefficient, so value_i = scale * q_i + offset_coef, and
//   dot(block, x) = scale * sum(q_i * x_i) + offset_coef * sum(x_i).
// The DotMethod decides whether sum(q_i * x_i) runs in f32 or on 8-bit-quantized x.
#include "cpu/fast_simd_targets.h"  // must precede the Highway headers

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cpu/fast_matmul.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/fast_half.h"
#include "cpu/fast_kernels.h"
#include "pdvm/error.h"

HWY_BEFORE_NAMESPACE();
namespace pdvm::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// int16 lanes per vector: a whole block on AVX-512, else at most half a block so that a
// vector never straddles the low/high nibble halves of a 4-bit block.
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
constexpr size_t kI16Lanes = 32;
#else
constexpr size_t kI16Lanes = 16;
#endif
constexpr size_t kMaxVecsPerBlock = 32;  // the one-lane fallback target

// Lanes [first, first + Lanes(d)) of a 16-byte nibble array in GGML order (element i < 16 is
// the low nibble of byte i, element 16 + i its high nibble), as integers in [0, 15].
template <class D>
HWY_INLINE hn::VFromD<D> Nibbles(D d, const uint8_t* qs, size_t first) {
  const size_t n = hn::Lanes(d);
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
  if constexpr (sizeof(hn::TFromD<D>) == 2 && hn::MaxLanes(D()) == 32) {
    (void)n;
    (void)first;
    const hn::Half<D> dh;
    const auto bytes = hn::PromoteTo(dh, hn::LoadU(hn::Rebind<uint8_t, decltype(dh)>(), qs));
    const auto lo = hn::And(bytes, hn::Set(dh, 15));
    const auto hi = hn::ShiftRight<4>(bytes);
    return hn::Combine(d, hi, lo);
  } else  // NOLINT
#endif
  {
    const auto bytes = hn::PromoteTo(d, hn::LoadU(hn::Rebind<uint8_t, D>(), qs + (first & 15)));
    (void)n;
    return first < 16 ? hn::And(bytes, hn::Set(d, 15)) : hn::ShiftRight<4>(bytes);
  }
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
const HighBitTable& high_bits() {
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
struct Q4_0 {
  static constexpr int64_t kBytes = 18;
  static constexpr bool kHasOffset = true;
  static float scale(const uint8_t* b) { return load_half(b); }
  static float offset(const uint8_t* b) { return -8.0f * load_half(b); }
  template <class D>
  static void decode(D d, const uint8_t* b, hn::VFromD<D>* out) {
    const size_t n = hn::Lanes(d);
    for (size_t i = 0, v = 0; i < 32; i += n, ++v) out[v] = Nibbles(d, b + 2, i);
  }
};

struct Q4_1 {
  static constexpr int64_t kBytes = 20;
  static constexpr bool kHasOffset = true;
  static float scale(const uint8_t* b) { return load_half(b); }
  static float offset(const uint8_t* b) { return load_half(b + 2); }
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
  static float scale(const uint8_t* b) { return load_half(b); }
  static float offset(const uint8_t* b) {
    return kMinForm ? load_half(b + 2) : -16.0f * load_half(b);
  }
  template <class D>
  static void decode(D d, const uint8_t* b, hn::VFromD<D>* out) {
    HWY_ALIGN int16_t expanded[32];
    expand_high_bits(b + kHeader, expanded);
    const size_t n = hn::Lanes(d);
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
  static float scale(const uint8_t* b) { return load_half(b); }
  static float offset(const uint8_t*) { return 0.0f; }
  template <class D>
  static void decode(D d, const uint8_t* b, hn::VFromD<D>* out) {
    const hn::Rebind<int8_t, D> d8;
    const size_t n = hn::Lanes(d);
    const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
    for (size_t i = 0, v = 0; i < 32; i += n, ++v) out[v] = hn::PromoteTo(d, hn::LoadU(d8, qs + i));
  }
};

// ---- one weight row against kTokens tokens ----------------------------------------------
template <class Format, int kTokens>
HWY_INLINE void RowInteger(const uint8_t* row, const PreparedActivation& act, int64_t t0,
                        float* out, int64_t out_stride) {
  const hn::CappedTag<int16_t, kI16Lanes> d16;
  const hn::Repartition<int32_t, decltype(d16)> d32;
  const hn::Rebind<float, decltype(d32)> df;
  const size_t n = hn::Lanes(d16);
  const size_t vecs = 32 / n;
  const int64_t nb = act.k / kQ8Block;
  hn::Vec<decltype(d16)> w[kMaxVecsPerBlock];
  hn::Vec<decltype(df)> acc[kTokens];
  float offset_acc[kTokens];
  for (int t = 0; t < kTokens; ++t) {
    acc[t] = hn::Zero(df);
    offset_acc[t] = 0.0f;
  }
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* block = row + b * Format::kBytes;
    Format::decode(d16, block, w);
    const float scale = Format::scale(block);
    for (int t = 0; t < kTokens; ++t) {
      const int64_t tb = (t0 + t) * nb + b;
      const int16_t* xq = act.q.data() + tb * kQ8Block;
      auto sum0 = hn::Zero(d32);
      auto sum1 = hn::Zero(d32);
      for (size_t v = 0; v < vecs; ++v) {
        sum0 = hn::ReorderWidenMulAccumulate(d32, w[v], hn::LoadU(d16, xq + v * n), sum0, sum1);
      }
      const auto block_dot = hn::ConvertTo(df, hn::Add(sum0, sum1));
      acc[t] = hn::MulAdd(block_dot, hn::Set(df, scale * act.q_scale[tb]), acc[t]);
      if constexpr (Format::kHasOffset) offset_acc[t] += Format::offset(block) * act.block_sums[tb];
    }
  }
  for (int t = 0; t < kTokens; ++t) {
    out[(t0 + t) * out_stride] = hn::GetLane(hn::SumOfLanes(df, acc[t])) + offset_acc[t];
  }
}

template <class Format, int kTokens>
HWY_INLINE void RowDequantFma(const uint8_t* row, const PreparedActivation& act, int64_t t0,
                              float* out, int64_t out_stride) {
  const hn::CappedTag<float, 16> df;
  const hn::RebindToSigned<decltype(df)> di;
  const size_t n = hn::Lanes(df);
  const size_t vecs = 32 / n;
  const int64_t nb = act.k / kQ8Block;
  hn::Vec<decltype(di)> wi[kMaxVecsPerBlock];
  hn::Vec<decltype(df)> wf[kMaxVecsPerBlock];
  hn::Vec<decltype(df)> acc[kTokens];
  float offset_acc[kTokens];
  for (int t = 0; t < kTokens; ++t) {
    acc[t] = hn::Zero(df);
    offset_acc[t] = 0.0f;
  }
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* block = row + b * Format::kBytes;
    Format::decode(di, block, wi);
    for (size_t v = 0; v < vecs; ++v) wf[v] = hn::ConvertTo(df, wi[v]);
    const auto scale = hn::Set(df, Format::scale(block));
    for (int t = 0; t < kTokens; ++t) {
      const int64_t tb = (t0 + t) * nb + b;
      const float* x = act.x + (t0 + t) * act.k + b * kQ8Block;
      auto block_dot = hn::Mul(wf[0], hn::LoadU(df, x));
      for (size_t v = 1; v < vecs; ++v) block_dot = hn::MulAdd(wf[v], hn::LoadU(df, x + v * n), block_dot);
      acc[t] = hn::MulAdd(block_dot, scale, acc[t]);
      if constexpr (Format::kHasOffset) offset_acc[t] += Format::offset(block) * act.block_sums[tb];
    }
  }
  for (int t = 0; t < kTokens; ++t) {
    out[(t0 + t) * out_stride] = hn::GetLane(hn::SumOfLanes(df, acc[t])) + offset_acc[t];
  }
}

// Plain float rows: F32, F16 or BF16 weights converted lane-wise.
template <class DF>
HWY_INLINE hn::VFromD<DF> LoadAsFloat(DF df, const float* p) { return hn::LoadU(df, p); }
template <class DF>
HWY_INLINE hn::VFromD<DF> LoadAsFloat(DF df, const hwy::float16_t* p) {
  return hn::PromoteTo(df, hn::LoadU(hn::Rebind<hwy::float16_t, DF>(), p));
}
template <class DF>
HWY_INLINE hn::VFromD<DF> LoadAsFloat(DF df, const hwy::bfloat16_t* p) {
  return hn::PromoteTo(df, hn::LoadU(hn::Rebind<hwy::bfloat16_t, DF>(), p));
}
inline float ScalarAsFloat(float v) { return v; }
inline float ScalarAsFloat(hwy::float16_t v) {
  uint16_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return half_bits_to_float(bits);
}
inline float ScalarAsFloat(hwy::bfloat16_t v) {
  uint16_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &wide, sizeof(f));
  return f;
}

template <class T, int kTokens>
HWY_INLINE void RowFloat(const T* row, const PreparedActivation& act, int64_t t0, float* out,
                         int64_t out_stride) {
  const hn::ScalableTag<float> df;
  const size_t n = hn::Lanes(df);
  const int64_t k = act.k;
  hn::Vec<decltype(df)> acc0[kTokens], acc1[kTokens];
  for (int t = 0; t < kTokens; ++t) acc0[t] = acc1[t] = hn::Zero(df);
  const float* x = act.x + t0 * k;
  int64_t i = 0;
  for (; i + 2 * static_cast<int64_t>(n) <= k; i += 2 * n) {
    const auto w0 = LoadAsFloat(df, row + i);
    const auto w1 = LoadAsFloat(df, row + i + n);
    for (int t = 0; t < kTokens; ++t) {
      acc0[t] = hn::MulAdd(w0, hn::LoadU(df, x + t * k + i), acc0[t]);
      acc1[t] = hn::MulAdd(w1, hn::LoadU(df, x + t * k + i + n), acc1[t]);
    }
  }
  for (int t = 0; t < kTokens; ++t) {
    float sum = hn::GetLane(hn::SumOfLanes(df, hn::Add(acc0[t], acc1[t])));
    for (int64_t tail = i; tail < k; ++tail) sum += ScalarAsFloat(row[tail]) * x[t * k + tail];
    out[(t0 + t) * out_stride] = sum;
  }
}

// Walks rows and groups of up to four tokens, so that each decoded weight block serves
// several tokens (prefill) while the row stays in L1.
template <template <int> class RowKernel>
HWY_INLINE void ForRowsAndTokens(const MatmulTask& task, int64_t row_begin, int64_t row_end) {
  const int64_t n_tokens = task.act->n_tokens;
  for (int64_t j = row_begin; j < row_end; ++j) {
    RowKernel<0>::prepare(task, j);
    float* out = task.out + j;
    int64_t t0 = 0;
    for (; t0 + 4 <= n_tokens; t0 += 4) RowKernel<4>::run(task, j, t0, out);
    switch (n_tokens - t0) {
      case 3: RowKernel<3>::run(task, j, t0, out); break;
      case 2: RowKernel<2>::run(task, j, t0, out); break;
      case 1: RowKernel<1>::run(task, j, t0, out); break;
      default: break;
    }
  }
}

template <class Format>
struct IntegerRows {
  template <int kTokens>
  struct Kernel {
    static void prepare(const MatmulTask&, int64_t) {}
    static void run(const MatmulTask& task, int64_t j, int64_t t0, float* out) {
      RowInteger<Format, kTokens>(task.w + j * task.row_bytes, *task.act, t0, out, task.out_stride);
    }
  };
};

template <class Format>
struct DequantRows {
  template <int kTokens>
  struct Kernel {
    static void prepare(const MatmulTask&, int64_t) {}
    static void run(const MatmulTask& task, int64_t j, int64_t t0, float* out) {
      RowDequantFma<Format, kTokens>(task.w + j * task.row_bytes, *task.act, t0, out,
                                     task.out_stride);
    }
  };
};

template <class T>
struct FloatRows {
  template <int kTokens>
  struct Kernel {
    static void prepare(const MatmulTask&, int64_t) {}
    static void run(const MatmulTask& task, int64_t j, int64_t t0, float* out) {
      const T* row = reinterpret_cast<const T*>(task.w + j * task.row_bytes);
      RowFloat<T, kTokens>(row, *task.act, t0, out, task.out_stride);
    }
  };
};

// Scratch row for the generic path, one per thread.
std::vector<float>& GenericScratch() {
  thread_local std::vector<float> scratch;
  return scratch;
}

template <int kTokens>
struct GenericRowsKernel {
  static void prepare(const MatmulTask& task, int64_t j) {
    std::vector<float>& scratch = GenericScratch();
    scratch.resize(static_cast<size_t>(task.act->k));
    dequantize_row(task.type, task.w + j * task.row_bytes, scratch.data(), task.act->k);
  }
  static void run(const MatmulTask& task, int64_t, int64_t t0, float* out) {
    RowFloat<float, kTokens>(GenericScratch().data(), *task.act, t0, out, task.out_stride);
  }
};

template <class Format>
void BlockRows(const MatmulTask& task, int64_t row_begin, int64_t row_end) {
  if (task.method != DotMethod::kDequantFma) {
    ForRowsAndTokens<IntegerRows<Format>::template Kernel>(task, row_begin, row_end);
  } else {
    ForRowsAndTokens<DequantRows<Format>::template Kernel>(task, row_begin, row_end);
  }
}

void MatmulRows(const MatmulTask& task, int64_t row_begin, int64_t row_end) {
  switch (task.type) {
    case TensorType::kF32:
      return ForRowsAndTokens<FloatRows<float>::template Kernel>(task, row_begin, row_end);
    case TensorType::kF16:
      return ForRowsAndTokens<FloatRows<hwy::float16_t>::template Kernel>(task, row_begin, row_end);
    case TensorType::kBF16:
      return ForRowsAndTokens<FloatRows<hwy::bfloat16_t>::template Kernel>(task, row_begin, row_end);
    case TensorType::kQ4_0: return BlockRows<Q4_0>(task, row_begin, row_end);
    case TensorType::kQ4_1: return BlockRows<Q4_1>(task, row_begin, row_end);
    case TensorType::kQ5_0: return BlockRows<Q5_0>(task, row_begin, row_end);
    case TensorType::kQ5_1: return BlockRows<Q5_1>(task, row_begin, row_end);
    case TensorType::kQ8_0: return BlockRows<Q8_0>(task, row_begin, row_end);
    default:
      return ForRowsAndTokens<GenericRowsKernel>(task, row_begin, row_end);
  }
}

const char* TargetName() { return hwy::TargetName(HWY_TARGET); }

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace pdvm::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace pdvm::cpu {

HWY_EXPORT(MatmulRows);
HWY_EXPORT(TargetName);

void matmul_rows(const MatmulTask& task, int64_t row_begin, int64_t row_end) {
  HWY_DYNAMIC_DISPATCH(MatmulRows)(task, row_begin, row_end);
}

const char* simd_target_name() { return HWY_DYNAMIC_DISPATCH(TargetName)(); }

bool has_matmul_kernel(TensorType type, DotMethod method) {
  switch (type) {
    case TensorType::kF32:
    case TensorType::kF16:
    case TensorType::kBF16:
      return method == DotMethod::kDequantFma;
    case TensorType::kQ4_0:
    case TensorType::kQ4_1:
    case TensorType::kQ5_0:
    case TensorType::kQ5_1:
    case TensorType::kQ8_0:
      return true;
    default:
      return false;
  }
}

int activation_levels(DotMethod method) { return method == DotMethod::kInt16 ? 32767 : 127; }

void prepare_activation(const float* x, int64_t k, int64_t n_tokens, DotMethod method,
                        PreparedActivation& act) {
  const bool with_int = method != DotMethod::kDequantFma;
  const float levels = static_cast<float>(activation_levels(method));
  act.k = k;
  act.n_tokens = n_tokens;
  act.x = x;
  if (k % kQ8Block != 0) return;  // plain float weights only
  const int64_t nb = k / kQ8Block;
  act.block_sums.resize(static_cast<size_t>(n_tokens * nb));
  if (with_int) {
    act.q.resize(static_cast<size_t>(n_tokens * k));
    act.q_scale.resize(static_cast<size_t>(n_tokens * nb));
  }
  for (int64_t tb = 0; tb < n_tokens * nb; ++tb) {
    const float* block = x + tb * kQ8Block;
    float sum = 0.0f, amax = 0.0f;
    for (int64_t i = 0; i < kQ8Block; ++i) {
      sum += block[i];
      amax = std::max(amax, std::fabs(block[i]));
    }
    act.block_sums[tb] = sum;
    if (!with_int) continue;
    const float scale = amax / levels;
    const float inverse = scale > 0.0f ? 1.0f / scale : 0.0f;
    int16_t* q = act.q.data() + tb * kQ8Block;
    for (int64_t i = 0; i < kQ8Block; ++i) q[i] = static_cast<int16_t>(std::lrintf(block[i] * inverse));
    act.q_scale[tb] = scale;
  }
}

}  // namespace pdvm::cpu
#endif  // HWY_ONCE
