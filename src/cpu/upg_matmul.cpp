// UPG matmul on the fast CPU backend, compiled per SIMD target (Highway foreach_target). Per
// group of 32 codes the row's 16-entry int8 table is applied with one byte shuffle per 16
// codes (TableLookupBytes: pshufb on x86, tbl on NEON), the int8 values are widened to int16
// and multiplied-added with the int16-rounded activation; each group's integer sum is scaled
// by (block scale * activation scale) in f32, the row by its fp32 scale, and the row's
// outliers are added in f32 at the end.
#include "cpu/fast_simd_targets.h"  // must precede the Highway headers

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cpu/upg_matmul.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

#include <cstring>

#include "cpu/fast_half.h"
#include "cpu/upg_kernels.h"
#include "pdvm/error.h"

HWY_BEFORE_NAMESPACE();
namespace pdvm::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// int16 lanes per vector: at most 16, on AVX-512 too. A 512-bit vector needs a lane-crossing
// combine of the two 16-byte shuffle results, and on Zen 4 its multiply-adds cost two 256-bit
// slots anyway; after 256-bit multiply-adds a group is 8 int32 lanes, so its convert and FMA run
// at half width (the block formats' lesson, docs/perf-notes.md).
constexpr size_t kUpgI16Lanes = 16;
constexpr size_t kUpgMaxVecs = 32;

// The 32 table values of one 4-bit group as int16 vectors of d16 (32 / Lanes(d16) of them),
// kept in registers: a store and a wider reload would defeat store forwarding.
template <class D16>
HWY_INLINE void LookupGroup4(D16 d16, const int8_t* lut, const uint8_t* group, hn::VFromD<D16>* w) {
#if HWY_TARGET == HWY_SCALAR
  const size_t n = hn::Lanes(d16);
  for (size_t i = 0, v = 0; i < 32; i += n, ++v) {
    const int e = static_cast<int>(i);
    w[v] = hn::Set(d16, lut[e < 16 ? group[e] & 15 : group[e - 16] >> 4]);
  }
#else
  const hn::Full128<uint8_t> d8;
  const hn::Full128<int8_t> di8;
  const auto table = hn::LoadU(di8, lut);
  const auto codes = hn::LoadU(d8, group);
  const auto lo = hn::TableLookupBytes(table, hn::BitCast(di8, hn::And(codes, hn::Set(d8, 15))));
  const auto hi = hn::TableLookupBytes(table, hn::BitCast(di8, hn::ShiftRight<4>(codes)));
  if constexpr (hn::MaxLanes(d16) == 16) {
    w[0] = hn::PromoteTo(d16, lo);
    w[1] = hn::PromoteTo(d16, hi);
  } else {
    static_assert(hn::MaxLanes(d16) == 8, "128-bit targets");
    const hn::Half<decltype(di8)> dh;
    w[0] = hn::PromoteTo(d16, hn::LowerHalf(dh, lo));
    w[1] = hn::PromoteTo(d16, hn::UpperHalf(dh, lo));
    w[2] = hn::PromoteTo(d16, hn::LowerHalf(dh, hi));
    w[3] = hn::PromoteTo(d16, hn::UpperHalf(dh, hi));
  }
#endif
}

// Evaluated per target (this file is compiled once per HWY_TARGET).
#define PDVM_UPG_WORD_TABLE (HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL)
#if PDVM_UPG_WORD_TABLE
// AVX-512: the row's table widened once to 16 int16 lanes (`table`), then one 16-bit lane
// permute (vpermw, which Highway 1.0 does not wrap) per 16 codes, indexed by the zero-extended
// code bytes: the widening of each looked-up byte and the shuffle's mask work go away.
template <class D16>
HWY_INLINE void LookupGroup4Words(D16 d16, hn::VFromD<D16> table, const uint8_t* group, hn::VFromD<D16>* w) {
  static_assert(hn::MaxLanes(d16) == 16, "one 256-bit vector per 16 codes");
  const hn::RebindToUnsigned<D16> du16;
  const auto codes = hn::PromoteTo(du16, hn::LoadU(hn::Rebind<uint8_t, D16>(), group));
  const auto lo = hn::BitCast(d16, hn::And(codes, hn::Set(du16, 15)));
  const auto hi = hn::BitCast(d16, hn::ShiftRight<4>(codes));
  w[0] = hn::VFromD<D16>{_mm256_permutexvar_epi16(lo.raw, table.raw)};
  w[1] = hn::VFromD<D16>{_mm256_permutexvar_epi16(hi.raw, table.raw)};
}

// The same for a 3-bit group (layout in docs/upg.md): element e = 8j + i takes two bits from
// byte i at bit 2j, and its third bit is bit e of the 4 bytes that follow, i.e. a lane mask.
template <class D16>
HWY_INLINE void LookupGroup3Words(D16 d16, hn::VFromD<D16> table, const uint8_t* group, hn::VFromD<D16>* w) {
  static_assert(hn::MaxLanes(d16) == 16, "one 256-bit vector per 16 codes");
  const hn::RebindToUnsigned<D16> du16;
  const hn::Half<decltype(du16)> dh;
  const auto pairs = hn::PromoteTo(dh, hn::LoadU(hn::Rebind<uint8_t, decltype(dh)>(), group));
  const auto both = hn::Combine(du16, pairs, pairs);  // byte i in lanes i and 8 + i
  const auto first_shift = hn::ShiftLeft<1>(hn::ShiftRight<3>(hn::Iota(du16, 0)));  // 2j: 0 or 2
  const auto four = hn::Set(du16, 4);
  for (size_t half = 0; half < 2; ++half) {
    const auto shift = hn::Add(first_shift, hn::Set(du16, static_cast<uint16_t>(4 * half)));
    const auto low = hn::And(both >> shift, hn::Set(du16, 3));
    const auto code = hn::Or(low, hn::IfThenElseZero(hn::LoadMaskBits(du16, group + 8 + 2 * half), four));
    w[half] = hn::VFromD<D16>{_mm256_permutexvar_epi16(hn::BitCast(d16, code).raw, table.raw)};
  }
}
#endif

// The 32 table values of one 4-bit group as int8, in element order.
HWY_INLINE void LookupValues4(const int8_t* lut, const uint8_t* group, int8_t* values) {
#if HWY_TARGET == HWY_SCALAR
  for (int e = 0; e < 32; ++e) values[e] = lut[e < 16 ? group[e] & 15 : group[e - 16] >> 4];
#else
  const hn::Full128<uint8_t> d8;
  const hn::Full128<int8_t> di8;
  const auto table = hn::LoadU(di8, lut);
  const auto codes = hn::LoadU(d8, group);
  hn::StoreU(hn::TableLookupBytes(table, hn::BitCast(di8, hn::And(codes, hn::Set(d8, 15)))), di8, values);
  hn::StoreU(hn::TableLookupBytes(table, hn::BitCast(di8, hn::ShiftRight<4>(codes))), di8, values + 16);
#endif
}

// The 32 table values of one 3-bit group (layout in docs/upg.md).
HWY_INLINE void LookupGroup3(const int8_t* lut, const uint8_t* group, int8_t* values) {
  for (int e = 0; e < 32; ++e) {
    const int code = ((group[e % 8] >> (2 * (e / 8))) & 3) | (((group[8 + e / 8] >> (e % 8)) & 1) << 2);
    values[e] = lut[code];
  }
}

// The group's values as int16 vectors of d16 (32 / Lanes(d16) of them).
template <class D16>
HWY_INLINE void WidenGroup(D16 d16, const int8_t* values, hn::VFromD<D16>* w) {
  const hn::Rebind<int8_t, D16> d8;
  const size_t n = hn::Lanes(d16);
  for (size_t i = 0, v = 0; i < 32; i += n, ++v) w[v] = hn::PromoteTo(d16, hn::LoadU(d8, values + i));
}

// One group of 32 weights (w) against kTokens tokens (x of token t at xq + t * x_stride): the
// integer dot times the group's activation scale (act_scale[t * scale_stride]), into acc[t].
template <int kTokens, class D16, class DF>
HWY_INLINE void GroupDot(D16 d16, DF df, const hn::VFromD<D16>* w, const int16_t* xq, int64_t x_stride,
                         const float* act_scale, int64_t scale_stride, hn::VFromD<DF>* acc) {
  const hn::Repartition<int32_t, D16> d32;
  const size_t n = hn::Lanes(d16);
  for (int t = 0; t < kTokens; ++t) {
    const int16_t* x = xq + t * x_stride;
    auto sum0 = hn::Zero(d32);
    auto sum1 = hn::Zero(d32);
    for (size_t v = 0; v < 32 / n; ++v) sum0 = hn::ReorderWidenMulAccumulate(d32, w[v], hn::LoadU(d16, x + v * n), sum0, sum1);
    acc[t] = hn::MulAdd(hn::ConvertTo(df, hn::Add(sum0, sum1)), hn::Set(df, act_scale[t * scale_stride]), acc[t]);
  }
}

// One row of kBits codes against kTokens tokens. Per block, its groups' activation-scaled dots
// are summed, then times the block scale (one int8 -> f32 conversion per block, not per group);
// blocks alternate between two accumulators so that consecutive blocks do not wait on each
// other's FMA latency. One horizontal sum per row and token.
template <int kBits, int kTokens>
HWY_INLINE void UpgRow(const UpgMatrix& m, int64_t row, const PreparedActivation& act, int64_t t0, float* out,
                       int64_t out_stride) {
  const hn::CappedTag<int16_t, kUpgI16Lanes> d16;
  const hn::Rebind<float, hn::Repartition<int32_t, decltype(d16)>> df;
  constexpr int64_t kGroupBytes = kUpgGroup * kBits / 8;
  // Locals, since the int8 stores of the 3-bit path may alias anything reached through m or act.
  const int64_t k = m.k, groups = k / kUpgGroup, groups_per_block = m.block / kUpgGroup;
  const int64_t blocks = k / m.block;
  const int16_t* xq = act.q.data() + t0 * k;
  const float* act_scale = act.q_scale.data() + t0 * groups;
  const uint8_t* codes = m.codes + row * m.code_row_bytes();
  const int8_t* bscale = m.bscale + row * blocks;
  // A 4-bit row's table is read in place; a 3-bit row's 8 entries are padded to 16 bytes.
  HWY_ALIGN int8_t padded_lut[16] = {};
  const int8_t* lut = m.lut + row * m.levels();
  if constexpr (kBits == 3) {
    std::memcpy(padded_lut, lut, 8);
    lut = padded_lut;
  }
#if PDVM_UPG_WORD_TABLE
  const auto word_table = hn::PromoteTo(d16, hn::LoadU(hn::Rebind<int8_t, decltype(d16)>(), lut));
#else
  HWY_ALIGN int8_t values[32];
#endif
  hn::Vec<decltype(d16)> w[kUpgMaxVecs];
  hn::Vec<decltype(df)> acc0[kTokens], acc1[kTokens], block_acc[kTokens];
  for (int t = 0; t < kTokens; ++t) acc0[t] = acc1[t] = hn::Zero(df);
  auto block_step = [&](int64_t b, hn::Vec<decltype(df)>* acc) HWY_ATTR {
    for (int t = 0; t < kTokens; ++t) block_acc[t] = hn::Zero(df);
    for (int64_t g = b * groups_per_block; g < (b + 1) * groups_per_block; ++g) {
      if constexpr (kBits == 4) {
#if PDVM_UPG_WORD_TABLE
        LookupGroup4Words(d16, word_table, codes + g * kGroupBytes, w);
#else
        LookupGroup4(d16, lut, codes + g * kGroupBytes, w);
#endif
      } else {
#if PDVM_UPG_WORD_TABLE
        LookupGroup3Words(d16, word_table, codes + g * kGroupBytes, w);
#else
        LookupGroup3(lut, codes + g * kGroupBytes, values);
        WidenGroup(d16, values, w);
#endif
      }
      GroupDot<kTokens>(d16, df, w, xq + g * kUpgGroup, k, act_scale + g, groups, block_acc);
    }
    const auto block_scale = hn::Set(df, static_cast<float>(bscale[b]));
    for (int t = 0; t < kTokens; ++t) acc[t] = hn::MulAdd(block_acc[t], block_scale, acc[t]);
  };
  int64_t b = 0;
  for (; b + 2 <= blocks; b += 2) {
    block_step(b, acc0);
    block_step(b + 1, acc1);
  }
  if (b < blocks) block_step(b, acc0);
  for (int t = 0; t < kTokens; ++t) {
    float sum = m.rscale[row] * hn::GetLane(hn::SumOfLanes(df, hn::Add(acc0[t], acc1[t])));
    if (m.nnz > 0) {
      const float* x = act.x + (t0 + t) * k;
      for (int64_t i = m.sp_rowptr[row]; i < m.sp_rowptr[row + 1]; ++i) {
        sum += half_bits_to_float(m.sp_val[i]) * x[m.outlier_column(i)];
      }
    }
    out[(t0 + t) * out_stride] = sum;
  }
}

// Row `row` as f32, equal to upg_dequantize_row: the int8 product bscale * lut is exact in f32
// (|product| < 2^15), then times the row scale, then the outliers. For the prefill GEMM.
void UpgDequantizeRow(const UpgMatrix& m, int64_t row, float* dst) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<int8_t, decltype(df)> d8;
  const size_t n = hn::Lanes(df);
  const int64_t groups = m.k / kUpgGroup, group_bytes = kUpgGroup * m.bits / 8;
  const int64_t groups_per_block = m.block / kUpgGroup;
  const uint8_t* codes = m.codes + row * m.code_row_bytes();
  const int8_t* bscale = m.bscale + row * (m.k / m.block);
  HWY_ALIGN int8_t lut[16] = {};
  for (int64_t l = 0; l < m.levels(); ++l) lut[l] = m.lut[row * m.levels() + l];
  const auto rscale = hn::Set(df, m.rscale[row]);
#if PDVM_UPG_WORD_TABLE
  // The decode kernel's in-register lookups, 16 values per int16 vector (16 f32 lanes here).
  const hn::CappedTag<int16_t, 16> d16;
  static_assert(hn::MaxLanes(df) == 16, "AVX-512: one f32 vector per 16 values");
  const auto word_table = hn::PromoteTo(d16, hn::LoadU(hn::Rebind<int8_t, decltype(d16)>(), lut));
  hn::Vec<decltype(d16)> w[2];
  for (int64_t g = 0; g < groups; ++g) {
    if (m.bits == 4) {
      LookupGroup4Words(d16, word_table, codes + g * group_bytes, w);
    } else {
      LookupGroup3Words(d16, word_table, codes + g * group_bytes, w);
    }
    const auto block_scale = hn::Set(df, static_cast<float>(bscale[g / groups_per_block]));
    for (size_t v = 0; v < 2; ++v) {
      const auto product = hn::Mul(hn::ConvertTo(df, hn::PromoteTo(hn::RebindToSigned<decltype(df)>(), w[v])), block_scale);
      hn::StoreU(hn::Mul(product, rscale), df, dst + g * kUpgGroup + 16 * v);
    }
  }
#else
  HWY_ALIGN int8_t values[32];
  for (int64_t g = 0; g < groups; ++g) {
    if (m.bits == 4) {
      LookupValues4(lut, codes + g * group_bytes, values);
    } else {
      LookupGroup3(lut, codes + g * group_bytes, values);
    }
    const auto block_scale = hn::Set(df, static_cast<float>(bscale[g / groups_per_block]));
    for (size_t i = 0; i < 32; i += n) {
      const auto product = hn::Mul(hn::ConvertTo(df, hn::PromoteTo(hn::RebindToSigned<decltype(df)>(), hn::LoadU(d8, values + i))), block_scale);
      hn::StoreU(hn::Mul(product, rscale), df, dst + g * kUpgGroup + i);
    }
  }
#endif
  if (m.nnz == 0) return;
  for (int64_t i = m.sp_rowptr[row]; i < m.sp_rowptr[row + 1]; ++i) dst[m.outlier_column(i)] += half_bits_to_float(m.sp_val[i]);
}

template <int kBits>
void UpgRows(const UpgMatrix& m, const PreparedActivation& act, float* out, int64_t out_stride, int64_t row_begin,
             int64_t row_end) {
  const int64_t n_tokens = act.n_tokens;
  for (int64_t j = row_begin; j < row_end; ++j) {
    float* row_out = out + j;
    int64_t t0 = 0;
    for (; t0 + 4 <= n_tokens; t0 += 4) UpgRow<kBits, 4>(m, j, act, t0, row_out, out_stride);
    switch (n_tokens - t0) {
      case 3: UpgRow<kBits, 3>(m, j, act, t0, row_out, out_stride); break;
      case 2: UpgRow<kBits, 2>(m, j, act, t0, row_out, out_stride); break;
      case 1: UpgRow<kBits, 1>(m, j, act, t0, row_out, out_stride); break;
      default: break;
    }
  }
}

void UpgMatmulRows(const UpgMatrix& m, const PreparedActivation& act, float* out, int64_t out_stride,
                   int64_t row_begin, int64_t row_end) {
  if (m.bits == 4) {
    UpgRows<4>(m, act, out, out_stride, row_begin, row_end);
  } else {
    UpgRows<3>(m, act, out, out_stride, row_begin, row_end);
  }
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace pdvm::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace pdvm::cpu {

HWY_EXPORT(UpgMatmulRows);
HWY_EXPORT(UpgDequantizeRow);

void upg_dequantize_row_fast(const UpgMatrix& m, int64_t row, float* dst) {
  HWY_DYNAMIC_DISPATCH(UpgDequantizeRow)(m, row, dst);
}

void upg_matmul_rows(const UpgMatrix& m, const PreparedActivation& act, float* out, int64_t out_stride,
                     int64_t row_begin, int64_t row_end) {
  PDVM_CHECK(act.k == m.k && !act.q.empty());
  HWY_DYNAMIC_DISPATCH(UpgMatmulRows)(m, act, out, out_stride, row_begin, row_end);
}

void upg_matmul_task_rows(const MatmulTask& task, int64_t row_begin, int64_t row_end) {
  upg_matmul_rows(*task.upg, *task.act, task.out, task.out_stride, row_begin, row_end);
}

}  // namespace pdvm::cpu
#endif  // HWY_ONCE
