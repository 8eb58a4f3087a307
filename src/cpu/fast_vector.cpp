// Vector helpers of the fast CPU backend (attention, KV cache conversion), compiled per
// SIMD target like the matmul kernels.
#include "cpu/fast_simd_targets.h"  // must precede the Highway headers

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cpu/fast_vector.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/contrib/math/math-inl.h"

#include <cmath>

#include "cpu/fast_half.h"
#include "cpu/fast_kernels.h"
#include "pdvm/tensor_type.h"

HWY_BEFORE_NAMESPACE();
namespace pdvm::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

const hwy::float16_t* AsHalf(const uint16_t* p) { return reinterpret_cast<const hwy::float16_t*>(p); }

float DotF32(const float* a, const float* b, int64_t n) {
  const hn::ScalableTag<float> df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  auto acc0 = hn::Zero(df), acc1 = hn::Zero(df);
  int64_t i = 0;
  for (; i + 2 * lanes <= n; i += 2 * lanes) {
    acc0 = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), acc0);
    acc1 = hn::MulAdd(hn::LoadU(df, a + i + lanes), hn::LoadU(df, b + i + lanes), acc1);
  }
  float sum = hn::GetLane(hn::SumOfLanes(df, hn::Add(acc0, acc1)));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

float DotF32F16(const float* a, const uint16_t* b, int64_t n) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<hwy::float16_t, decltype(df)> dh;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  auto acc = hn::Zero(df);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    acc = hn::MulAdd(hn::LoadU(df, a + i), hn::PromoteTo(df, hn::LoadU(dh, AsHalf(b + i))), acc);
  }
  float sum = hn::GetLane(hn::SumOfLanes(df, acc));
  for (; i < n; ++i) sum += a[i] * half_bits_to_float(b[i]);
  return sum;
}

void AxpyF32(float alpha, const float* x, float* y, int64_t n) {
  const hn::ScalableTag<float> df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  const auto a = hn::Set(df, alpha);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    hn::StoreU(hn::MulAdd(a, hn::LoadU(df, x + i), hn::LoadU(df, y + i)), df, y + i);
  }
  for (; i < n; ++i) y[i] += alpha * x[i];
}

void AxpyF16(float alpha, const uint16_t* x, float* y, int64_t n) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<hwy::float16_t, decltype(df)> dh;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  const auto a = hn::Set(df, alpha);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const auto xv = hn::PromoteTo(df, hn::LoadU(dh, AsHalf(x + i)));
    hn::StoreU(hn::MulAdd(a, xv, hn::LoadU(df, y + i)), df, y + i);
  }
  for (; i < n; ++i) y[i] += alpha * half_bits_to_float(x[i]);
}

void ScaleF32(float alpha, float* y, int64_t n) {
  const hn::ScalableTag<float> df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  const auto a = hn::Set(df, alpha);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) hn::StoreU(hn::Mul(a, hn::LoadU(df, y + i)), df, y + i);
  for (; i < n; ++i) y[i] *= alpha;
}

void F32ToF16(const float* x, uint16_t* y, int64_t n) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<hwy::float16_t, decltype(df)> dh;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    hn::StoreU(hn::DemoteTo(dh, hn::LoadU(df, x + i)), dh, reinterpret_cast<hwy::float16_t*>(y + i));
  }
  for (; i < n; ++i) y[i] = fp32_to_fp16(x[i]);
}

void SiluMul(const float* gate, const float* up, float* out, int64_t n) {
  const hn::ScalableTag<float> df;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  const auto one = hn::Set(df, 1.0f);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const auto g = hn::LoadU(df, gate + i);
    const auto silu = hn::Div(g, hn::Add(one, hn::Exp(df, hn::Neg(g))));
    hn::StoreU(hn::Mul(silu, hn::LoadU(df, up + i)), df, out + i);
  }
  for (; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

// XOR of all 64-bit words (n_bytes a multiple of 4 vectors): a pure read stream with four
// independent accumulators, the yardstick the decode kernels are compared against.
uint64_t XorReduce(const uint8_t* bytes, int64_t n_bytes) {
  const hn::ScalableTag<uint64_t> du;
  const auto* p = reinterpret_cast<const uint64_t*>(bytes);
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(du));
  const int64_t n = n_bytes / static_cast<int64_t>(sizeof(uint64_t));
  auto acc0 = hn::Zero(du), acc1 = hn::Zero(du), acc2 = hn::Zero(du), acc3 = hn::Zero(du);
  for (int64_t i = 0; i + 4 * lanes <= n; i += 4 * lanes) {
    acc0 = hn::Xor(acc0, hn::LoadU(du, p + i));
    acc1 = hn::Xor(acc1, hn::LoadU(du, p + i + lanes));
    acc2 = hn::Xor(acc2, hn::LoadU(du, p + i + 2 * lanes));
    acc3 = hn::Xor(acc3, hn::LoadU(du, p + i + 3 * lanes));
  }
  const auto all = hn::Xor(hn::Xor(acc0, acc1), hn::Xor(acc2, acc3));
  uint64_t result = 0;
  for (int64_t i = 0; i < lanes; ++i) result ^= hn::ExtractLane(all, static_cast<size_t>(i));
  return result;
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace pdvm::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace pdvm::cpu {

HWY_EXPORT(DotF32);
HWY_EXPORT(DotF32F16);
HWY_EXPORT(AxpyF32);
HWY_EXPORT(AxpyF16);
HWY_EXPORT(ScaleF32);
HWY_EXPORT(F32ToF16);
HWY_EXPORT(SiluMul);
HWY_EXPORT(XorReduce);

float dot_f32(const float* a, const float* b, int64_t n) { return HWY_DYNAMIC_DISPATCH(DotF32)(a, b, n); }
float dot_f32_f16(const float* a, const uint16_t* b, int64_t n) {
  return HWY_DYNAMIC_DISPATCH(DotF32F16)(a, b, n);
}
void axpy_f32(float alpha, const float* x, float* y, int64_t n) {
  HWY_DYNAMIC_DISPATCH(AxpyF32)(alpha, x, y, n);
}
void axpy_f16(float alpha, const uint16_t* x, float* y, int64_t n) {
  HWY_DYNAMIC_DISPATCH(AxpyF16)(alpha, x, y, n);
}
void scale_f32(float alpha, float* y, int64_t n) { HWY_DYNAMIC_DISPATCH(ScaleF32)(alpha, y, n); }
void f32_to_f16(const float* x, uint16_t* y, int64_t n) { HWY_DYNAMIC_DISPATCH(F32ToF16)(x, y, n); }
void silu_mul(const float* gate, const float* up, float* out, int64_t n) {
  HWY_DYNAMIC_DISPATCH(SiluMul)(gate, up, out, n);
}
uint64_t xor_reduce(const uint8_t* bytes, int64_t n_bytes) { return HWY_DYNAMIC_DISPATCH(XorReduce)(bytes, n_bytes); }

}  // namespace pdvm::cpu
#endif  // HWY_ONCE
