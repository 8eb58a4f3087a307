// Prefill GEMM of the fast CPU backend: a tile of weight rows is dequantized to f32 once
// (it stays in L1) and then meets every token of the batch in a register-blocked
// rows x tokens micro-kernel, so each weight byte is read from memory once per matmul and
// decoded once per batch instead of once per token.
#include "cpu/fast_simd_targets.h"  // must precede the Highway headers

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cpu/fast_gemm.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "cpu/fast_block_formats-inl.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/fast_half.h"
#include "cpu/fast_kernels.h"
#include "cpu/upg_kernels.h"
#include "pdvm/tensor_type.h"

HWY_BEFORE_NAMESPACE();
namespace pdvm::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Rows x tokens accumulators must fit the register file: 32 vector registers on AVX-512,
// 16 (or fewer) elsewhere.
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
constexpr int kTileRows = 4;
#else
constexpr int kTileRows = 2;
#endif
constexpr int kTileTokens = 4;

template <class Format>
void DequantizeBlocks(const uint8_t* row, int64_t k, float* dst) {
  const hn::CappedTag<float, 16> df;
  const hn::RebindToSigned<decltype(df)> di;
  const size_t n = hn::Lanes(df);
  hn::Vec<decltype(di)> wi[kMaxVecsPerBlock];
  for (int64_t b = 0; b < k / kQ8Block; ++b) {
    const uint8_t* block = row + b * Format::kBytes;
    Format::decode(di, block, wi);
    const auto scale = hn::Set(df, BlockScale<Format>(block));
    const auto offset = hn::Set(df, BlockOffset<Format>(block));
    for (size_t i = 0, v = 0; i < static_cast<size_t>(kQ8Block); i += n, ++v) {
      hn::StoreU(hn::MulAdd(hn::ConvertTo(df, wi[v]), scale, offset), df, dst + b * kQ8Block + i);
    }
  }
}

template <class T>
void WidenRow(const T* row, int64_t k, float* dst) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<T, decltype(df)> dh;
  const int64_t n = static_cast<int64_t>(hn::Lanes(df));
  int64_t i = 0;
  for (; i + n <= k; i += n) hn::StoreU(hn::PromoteTo(df, hn::LoadU(dh, row + i)), df, dst + i);
  for (; i < k; ++i) {
    uint16_t bits;
    std::memcpy(&bits, row + i, sizeof(bits));
    if constexpr (std::is_same_v<T, hwy::float16_t>) {
      dst[i] = half_bits_to_float(bits);
    } else {
      const uint32_t wide = static_cast<uint32_t>(bits) << 16;
      std::memcpy(dst + i, &wide, sizeof(wide));
    }
  }
}

// Row j of the weights as f32: a pointer into the weights for F32, else decoded into dst.
const float* RowAsFloat(const MatmulTask& task, int64_t j, float* dst) {
  if (task.upg) {
    upg_dequantize_row_fast(*task.upg, j, dst);
    return dst;
  }
  const uint8_t* row = task.w + j * task.row_bytes;
  const int64_t k = task.act->k;
  switch (task.type) {
    case TensorType::kF32: return reinterpret_cast<const float*>(row);
    case TensorType::kF16: WidenRow(reinterpret_cast<const hwy::float16_t*>(row), k, dst); break;
    case TensorType::kBF16: WidenRow(reinterpret_cast<const hwy::bfloat16_t*>(row), k, dst); break;
    case TensorType::kQ4_0: DequantizeBlocks<Q4_0>(row, k, dst); break;
    case TensorType::kQ4_1: DequantizeBlocks<Q4_1>(row, k, dst); break;
    case TensorType::kQ5_0: DequantizeBlocks<Q5_0>(row, k, dst); break;
    case TensorType::kQ5_1: DequantizeBlocks<Q5_1>(row, k, dst); break;
    case TensorType::kQ8_0: DequantizeBlocks<Q8_0>(row, k, dst); break;
    default:
      if (!DequantizeKQuantRow(task.type, row, k, dst)) dequantize_row(task.type, row, dst, k);
      break;
  }
  return dst;
}

template <int kRows, int kTokens>
HWY_INLINE void Tile(const float* const* w, const float* x, int64_t k, float* out,
                     int64_t out_stride) {
  const hn::ScalableTag<float> df;
  const int64_t n = static_cast<int64_t>(hn::Lanes(df));
  hn::Vec<decltype(df)> acc[kRows][kTokens];
  for (int r = 0; r < kRows; ++r) {
    for (int t = 0; t < kTokens; ++t) acc[r][t] = hn::Zero(df);
  }
  int64_t i = 0;
  for (; i + n <= k; i += n) {
    hn::Vec<decltype(df)> wv[kRows];
    for (int r = 0; r < kRows; ++r) wv[r] = hn::LoadU(df, w[r] + i);
    for (int t = 0; t < kTokens; ++t) {
      const auto xv = hn::LoadU(df, x + t * k + i);
      for (int r = 0; r < kRows; ++r) acc[r][t] = hn::MulAdd(wv[r], xv, acc[r][t]);
    }
  }
  for (int t = 0; t < kTokens; ++t) {
    for (int r = 0; r < kRows; ++r) {
      float sum = hn::GetLane(hn::SumOfLanes(df, acc[r][t]));
      for (int64_t tail = i; tail < k; ++tail) sum += w[r][tail] * x[t * k + tail];
      out[t * out_stride + r] = sum;
    }
  }
}

template <int kRows>
HWY_INLINE void TileRows(const float* const* w, const PreparedActivation& act, float* out,
                         int64_t out_stride) {
  const int64_t k = act.k;
  int64_t t = 0;
  for (; t + kTileTokens <= act.n_tokens; t += kTileTokens) {
    Tile<kRows, kTileTokens>(w, act.x + t * k, k, out + t * out_stride, out_stride);
  }
  float* tail_out = out + t * out_stride;
  const float* tail_x = act.x + t * k;
  switch (act.n_tokens - t) {
    case 3: Tile<kRows, 3>(w, tail_x, k, tail_out, out_stride); break;
    case 2: Tile<kRows, 2>(w, tail_x, k, tail_out, out_stride); break;
    case 1: Tile<kRows, 1>(w, tail_x, k, tail_out, out_stride); break;
    default: break;
  }
}

void GemmRows(const MatmulTask& task, int64_t row_begin, int64_t row_end) {
  const int64_t k = task.act->k;
  thread_local std::vector<float> scratch;
  scratch.resize(static_cast<size_t>(kTileRows * k));
  for (int64_t j0 = row_begin; j0 < row_end; j0 += kTileRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kTileRows, row_end - j0));
    const float* w[kTileRows];
    for (int r = 0; r < rows; ++r) w[r] = RowAsFloat(task, j0 + r, scratch.data() + r * k);
    float* out = task.out + j0;
    switch (rows) {
      case 4: TileRows<4 <= kTileRows ? 4 : 1>(w, *task.act, out, task.out_stride); break;
      case 3: TileRows<3 <= kTileRows ? 3 : 1>(w, *task.act, out, task.out_stride); break;
      case 2: TileRows<2>(w, *task.act, out, task.out_stride); break;
      default: TileRows<1>(w, *task.act, out, task.out_stride); break;
    }
  }
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace pdvm::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace pdvm::cpu {

HWY_EXPORT(GemmRows);

void gemm_rows(const MatmulTask& task, int64_t row_begin, int64_t row_end) {
  HWY_DYNAMIC_DISPATCH(GemmRows)(task, row_begin, row_end);
}

}  // namespace pdvm::cpu
#endif  // HWY_ONCE
