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
#include "hwy/cache_control.h"
#include "cpu/fast_block_formats-inl.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/fast_half.h"
#include "cpu/fast_kernels.h"
#include "pdvm/error.h"

HWY_BEFORE_NAMESPACE();
namespace pdvm::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// ---- block scales, a vector of blocks at a time ------------------------------------------
// Half-precision bits in the low 16 bits of each lane to f32. Scales of real weights are
// finite; an inf/nan scale yields a meaningless (but harmless) large value.
template <class DF, class VU>
HWY_INLINE hn::VFromD<DF> HalvesToFloat(DF df, VU bits) {
  const hn::RebindToUnsigned<DF> du;
  const auto sign = hn::ShiftLeft<16>(hn::And(bits, hn::Set(du, 0x8000u)));
  const auto magnitude = hn::ShiftLeft<13>(hn::And(bits, hn::Set(du, 0x7fffu)));
  const auto value = hn::Mul(hn::BitCast(df, magnitude), hn::Set(df, 0x1p112f));
  return hn::BitCast(df, hn::Or(hn::BitCast(du, value), sign));
}

constexpr int64_t kScaleChunk = 64;  // blocks whose scales are converted ahead of the dot loop
constexpr int64_t kScaleRow = kScaleChunk + 16;  // room for the last vector store

// For blocks [b0, b0 + n) of a row (n <= kScaleChunk): scales[t][i] = weight scale times the
// activation's block scale (1 for the f32 method), and offset_acc[t] += offset coefficient x
// block sum. Gathers the scale fields of a whole vector of blocks at once.
template <class Format, int kTokens, class DF>
HWY_INLINE void BlockScales(DF df, const uint8_t* row, int64_t b0, int64_t n,
                            const PreparedActivation& act, bool with_act_scale, int64_t t0,
                            float (*scales)[kScaleRow], hn::VFromD<DF>* offset_acc) {
  const hn::RebindToSigned<DF> di;
  const hn::RebindToUnsigned<DF> du;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  const int64_t nb = act.k / kQ8Block;
  for (int64_t i = 0; i < n; i += lanes) {
    // Lanes past the last block re-read the last block instead of reading past the row.
    const auto index = hn::Min(hn::Iota(di, 0), hn::Set(di, static_cast<int32_t>(n - 1 - i)));
    const auto fields = hn::BitCast(du, hn::GatherOffset(
        di, reinterpret_cast<const int32_t*>(row + (b0 + i) * Format::kBytes),
        hn::Mul(index, hn::Set(di, static_cast<int32_t>(Format::kBytes)))));
    const auto scale = HalvesToFloat(df, fields);
    const auto valid = hn::FirstN(df, static_cast<size_t>(n - i));
    for (int t = 0; t < kTokens; ++t) {
      const int64_t tb = (t0 + t) * nb + b0 + i;
      const auto total = with_act_scale ? hn::Mul(scale, hn::LoadU(df, act.q_scale.data() + tb)) : scale;
      hn::StoreU(total, df, scales[t] + i);
      if constexpr (Format::kHasOffset) {
        const auto coef = Format::kHasMin ? HalvesToFloat(df, hn::ShiftRight<16>(fields))
                                          : hn::Mul(scale, hn::Set(df, Format::kOffsetPerScale));
        const auto sums = hn::IfThenElseZero(valid, hn::LoadU(df, act.block_sums.data() + tb));
        offset_acc[t] = hn::MulAdd(coef, sums, offset_acc[t]);
      }
    }
  }
}

// ---- one weight row against kTokens tokens ----------------------------------------------
// One block against kTokens tokens (x of token t at xq + t * x_stride), into acc[t].
template <class Format, int kTokens, class D16, class DF>
HWY_INLINE void IntegerBlock(D16 d16, DF df, const uint8_t* block, const int16_t* xq,
                             int64_t x_stride, const float (*scales)[kScaleRow], int64_t i,
                             hn::VFromD<DF>* acc) {
  const hn::Repartition<int32_t, D16> d32;
  const size_t n = hn::Lanes(d16);
  hn::VFromD<D16> w[kMaxVecsPerBlock];
  Format::decode(d16, block, w);
  for (int t = 0; t < kTokens; ++t) {
    const int16_t* x = xq + t * x_stride;
    auto sum0 = hn::Zero(d32);
    auto sum1 = hn::Zero(d32);
    for (size_t v = 0; v < 32 / n; ++v) {
      sum0 = hn::ReorderWidenMulAccumulate(d32, w[v], hn::LoadU(d16, x + v * n), sum0, sum1);
    }
    acc[t] = hn::MulAdd(hn::ConvertTo(df, hn::Add(sum0, sum1)), hn::Set(df, scales[t][i]), acc[t]);
  }
}

template <class Format, int kTokens, class DF>
HWY_INLINE void FloatBlock(DF df, const uint8_t* block, const float* x0, int64_t x_stride,
                           const float (*scales)[kScaleRow], int64_t i, hn::VFromD<DF>* acc) {
  const hn::RebindToSigned<DF> di;
  const size_t n = hn::Lanes(df);
  hn::VFromD<decltype(di)> wi[kMaxVecsPerBlock];
  hn::VFromD<DF> wf[kMaxVecsPerBlock];
  Format::decode(di, block, wi);
  for (size_t v = 0; v < 32 / n; ++v) wf[v] = hn::ConvertTo(df, wi[v]);
  const auto scale = hn::Set(df, scales[0][i]);
  for (int t = 0; t < kTokens; ++t) {
    const float* x = x0 + t * x_stride;
    auto block_dot = hn::Mul(wf[0], hn::LoadU(df, x));
    for (size_t v = 1; v < 32 / n; ++v) block_dot = hn::MulAdd(wf[v], hn::LoadU(df, x + v * n), block_dot);
    acc[t] = hn::MulAdd(block_dot, scale, acc[t]);
  }
}

// One row against kTokens tokens with either method. Even and odd blocks go to separate
// accumulators (the loop is unrolled by two so they stay in registers), so consecutive blocks
// do not wait on each other's multiply-add latency.
template <class Format, int kTokens, bool kInteger>
HWY_INLINE void RowBlocks(const uint8_t* row, const PreparedActivation& act, int64_t t0,
                          float* out, int64_t out_stride) {
  const hn::CappedTag<int16_t, kI16Lanes> d16;
  const hn::ScalableTag<float> df_full;
  const int64_t nb = act.k / kQ8Block;
  // The integer path converts int32 sums of one i16 vector; the float path uses up to 16 lanes.
  using DAcc = std::conditional_t<kInteger, hn::Rebind<float, hn::Repartition<int32_t, decltype(d16)>>,
                                  hn::CappedTag<float, 16>>;
  const DAcc df;
  hn::Vec<DAcc> acc0[kTokens], acc1[kTokens];
  hn::Vec<decltype(df_full)> offset_acc[kTokens];
  HWY_ALIGN float scales[kTokens][kScaleRow];
  for (int t = 0; t < kTokens; ++t) {
    acc0[t] = acc1[t] = hn::Zero(df);
    offset_acc[t] = hn::Zero(df_full);
  }
  for (int64_t b0 = 0; b0 < nb; b0 += kScaleChunk) {
    const int64_t chunk = std::min(kScaleChunk, nb - b0);
    BlockScales<Format, kTokens>(df_full, row, b0, chunk, act, kInteger, t0, scales, offset_acc);
    const uint8_t* blocks = row + b0 * Format::kBytes;
    auto step = [&](int64_t i, hn::Vec<DAcc>* acc) HWY_ATTR {
      if constexpr (kInteger) {
        IntegerBlock<Format, kTokens>(d16, df, blocks + i * Format::kBytes,
                                      act.q.data() + t0 * act.k + (b0 + i) * kQ8Block, act.k, scales, i, acc);
      } else {
        FloatBlock<Format, kTokens>(df, blocks + i * Format::kBytes, act.x + t0 * act.k + (b0 + i) * kQ8Block,
                                    act.k, scales, i, acc);
      }
    };
    int64_t i = 0;
    for (; i + 2 <= chunk; i += 2) {
      step(i, acc0);
      step(i + 1, acc1);
    }
    if (i < chunk) step(i, acc0);
  }
  for (int t = 0; t < kTokens; ++t) {
    const auto acc = hn::Add(acc0[t], acc1[t]);
    if constexpr (std::is_same_v<hn::Vec<DAcc>, hn::Vec<decltype(df_full)>>) {
      // One horizontal sum per row instead of two (rows are short: 18 blocks in SmolLM2).
      out[(t0 + t) * out_stride] = hn::GetLane(hn::SumOfLanes(df, hn::Add(acc, offset_acc[t])));
    } else {
      out[(t0 + t) * out_stride] =
          hn::GetLane(hn::SumOfLanes(df, acc)) + hn::GetLane(hn::SumOfLanes(df_full, offset_acc[t]));
    }
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
  // Rows are short (a few hundred bytes): ask for the row ~kPrefetchBytes ahead while this
  // one computes, so the first touch of each row does not wait on DRAM.
  // Plain float rows skip it: they are pure streams, which the hardware prefetchers follow
  // better alone (F16 decode +20-30% without; docs/perf-notes.md).
  constexpr int64_t kPrefetchBytes = 2048;
  const int64_t ahead = (kPrefetchBytes + task.row_bytes - 1) / task.row_bytes;
  for (int64_t j = row_begin; j < row_end; ++j) {
    if (RowKernel<0>::kPrefetch && j + ahead < row_end) {
      const uint8_t* next = task.w + (j + ahead) * task.row_bytes;
      for (int64_t offset = 0; offset < task.row_bytes; offset += 64) hwy::Prefetch(next + offset);
    }
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
    static constexpr bool kPrefetch = true;
    static void prepare(const MatmulTask&, int64_t) {}
    HWY_INLINE static void run(const MatmulTask& task, int64_t j, int64_t t0, float* out) {
      RowBlocks<Format, kTokens, true>(task.w + j * task.row_bytes, *task.act, t0, out, task.out_stride);
    }
  };
};

template <class Format>
struct DequantRows {
  template <int kTokens>
  struct Kernel {
    static constexpr bool kPrefetch = true;
    static void prepare(const MatmulTask&, int64_t) {}
    HWY_INLINE static void run(const MatmulTask& task, int64_t j, int64_t t0, float* out) {
      RowBlocks<Format, kTokens, false>(task.w + j * task.row_bytes, *task.act, t0, out, task.out_stride);
    }
  };
};

template <class T>
struct FloatRows {
  template <int kTokens>
  struct Kernel {
    static constexpr bool kPrefetch = false;
    static void prepare(const MatmulTask&, int64_t) {}
    static void run(const MatmulTask& task, int64_t j, int64_t t0, float* out) {
      const T* row = reinterpret_cast<const T*>(task.w + j * task.row_bytes);
      RowFloat<T, kTokens>(row, *task.act, t0, out, task.out_stride);
    }
  };
};

// K-quants (SIMD dequantization of the row into L1, then the F32 kernel) and any other type
// the reference can dequantize. Scratch row per thread.
std::vector<float>& GenericScratch() {
  thread_local std::vector<float> scratch;
  return scratch;
}

template <int kTokens>
struct GenericRowsKernel {
  static constexpr bool kPrefetch = true;
  static void prepare(const MatmulTask& task, int64_t j) {
    std::vector<float>& scratch = GenericScratch();
    scratch.resize(static_cast<size_t>(task.act->k));
    const uint8_t* row = task.w + j * task.row_bytes;
    if (!DequantizeKQuantRow(task.type, row, task.act->k, scratch.data())) {
      dequantize_row(task.type, row, scratch.data(), task.act->k);
    }
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

// Per block of 32: the sum of x, and (when q is given) x rounded to `levels` steps of
// max|x| / levels, with that step in q_scale.
void QuantizeBlocks(const float* x, int64_t n_blocks, float levels, float* block_sums, int16_t* q,
                    float* q_scale) {
  const hn::CappedTag<float, 16> df;
  const hn::Rebind<int16_t, decltype(df)> d16;
  const size_t n = hn::Lanes(df);
  for (int64_t b = 0; b < n_blocks; ++b) {
    const float* block = x + b * kQ8Block;
    auto sum = hn::Zero(df);
    auto amax = hn::Zero(df);
    for (size_t i = 0; i < static_cast<size_t>(kQ8Block); i += n) {
      const auto v = hn::LoadU(df, block + i);
      sum = hn::Add(sum, v);
      amax = hn::Max(amax, hn::Abs(v));
    }
    block_sums[b] = hn::GetLane(hn::SumOfLanes(df, sum));
    if (!q) continue;
    const float scale = hn::GetLane(hn::MaxOfLanes(df, amax)) / levels;
    const auto inverse = hn::Set(df, scale > 0.0f ? 1.0f / scale : 0.0f);
    for (size_t i = 0; i < static_cast<size_t>(kQ8Block); i += n) {
      const auto rounded = hn::NearestInt(hn::Mul(hn::LoadU(df, block + i), inverse));
      hn::StoreU(hn::DemoteTo(d16, rounded), d16, q + b * kQ8Block + i);
    }
    q_scale[b] = scale;
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
HWY_EXPORT(QuantizeBlocks);
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
    case TensorType::kQ4_K:
    case TensorType::kQ5_K:
    case TensorType::kQ6_K:
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
  // One vector of slack: scale loads of a row's last blocks read whole vectors.
  constexpr int64_t kSlack = 16;
  act.block_sums.resize(static_cast<size_t>(n_tokens * nb + kSlack));
  if (with_int) {
    act.q.resize(static_cast<size_t>(n_tokens * k));
    act.q_scale.resize(static_cast<size_t>(n_tokens * nb + kSlack));
  }
  HWY_DYNAMIC_DISPATCH(QuantizeBlocks)(x, n_tokens * nb, levels, act.block_sums.data(),
                                       with_int ? act.q.data() : nullptr, act.q_scale.data());
}

}  // namespace pdvm::cpu
#endif  // HWY_ONCE
