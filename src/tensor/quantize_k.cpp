// Reference quantizers for the K-quant super-blocks Q4_K, Q5_K and Q6_K without an importance matrix,
// following GGML's reference search step for step (same float operations in the same order, so
// llama.cpp's `quantize` produces the same bytes; tests compare against it).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "tensor/reference_blocks.h"

namespace pdvm::reference {

namespace {

constexpr float kGroupMaxEps = 1e-15f;  // GGML's threshold below which a group counts as zero

// Round half to even through the float adder, valid for |x| < 2^22 (GGML's nearest_int).
int nearest_int(float x) {
  const float shifted = x + 12582912.0f;  // 1.5 * 2^23: the integer lands in the low mantissa bits
  int32_t bits;
  std::memcpy(&bits, &shifted, sizeof bits);
  return (bits & 0x007fffff) - 0x00400000;
}

int clamp_int(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Asymmetric search for Q4_K/Q5_K sub-blocks: quants 0..nmax with x ~ scale * q - min, weighted
// least squares over a sweep of candidate inverse scales. Returns the scale; *neg_min = -min.
float search_scale_min(int n, int nmax, const float* x, const float* weights, uint8_t* q, float* neg_min,
                       uint8_t* q_try, float rmin, float rdelta, int nstep) {
  float min = x[0], max = x[0];
  float sum_w = weights[0], sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    const float w = weights[i];
    sum_w += w;
    sum_x += w * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    for (int i = 0; i < n; ++i) q[i] = 0;
    *neg_min = -min;
    return 0.0f;
  }
  float iscale = static_cast<float>(nmax) / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    const int l = nearest_int(iscale * (x[i] - min));
    q[i] = static_cast<uint8_t>(clamp_int(l, 0, nmax));
    const float diff = scale * q[i] + min - x[i];
    best_error += weights[i] * (diff * diff);
  }
  for (int step = 0; step <= nstep; ++step) {
    iscale = (rmin + rdelta * static_cast<float>(step) + static_cast<float>(nmax)) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = clamp_int(nearest_int(iscale * (x[i] - min)), 0, nmax);
      q_try[i] = static_cast<uint8_t>(l);
      const float w = weights[i];
      sum_l += w * static_cast<float>(l);
      sum_l2 += w * static_cast<float>(l) * static_cast<float>(l);
      sum_xl += w * static_cast<float>(l) * x[i];
    }
    const float det = sum_w * sum_l2 - sum_l * sum_l;
    if (det > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float error = 0;
      for (int i = 0; i < n; ++i) {
        const float diff = this_scale * q_try[i] + this_min - x[i];
        error += weights[i] * (diff * diff);
      }
      if (error < best_error) {
        std::memcpy(q, q_try, static_cast<size_t>(n));
        best_error = error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *neg_min = -min;
  return scale;
}

// Symmetric search for Q6_K sub-blocks: quants -nmax..nmax-1 stored offset by nmax, weights x^2,
// nineteen candidate inverse scales around nmax / max.
float search_scale_symmetric(int n, int nmax, const float* x, uint8_t* q) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    for (int i = 0; i < n; ++i) q[i] = 0;
    return 0.0f;
  }
  const auto sums = [&](float iscale, float& sum_lx, float& sum_l2) {
    sum_lx = 0;
    sum_l2 = 0;
    for (int i = 0; i < n; ++i) {
      const int l = clamp_int(nearest_int(iscale * x[i]), -nmax, nmax - 1);
      const float w = x[i] * x[i];
      sum_lx += w * x[i] * static_cast<float>(l);
      sum_l2 += w * static_cast<float>(l) * static_cast<float>(l);
    }
  };
  const auto store = [&](float iscale) {
    for (int i = 0; i < n; ++i) q[i] = static_cast<uint8_t>(nmax + clamp_int(nearest_int(iscale * x[i]), -nmax, nmax - 1));
  };
  float iscale = static_cast<float>(-nmax) / max;
  float sum_lx, sum_l2;
  sums(iscale, sum_lx, sum_l2);
  store(iscale);
  float scale = sum_l2 != 0 ? sum_lx / sum_l2 : 0.0f;
  float best = scale * sum_lx;
  for (int step = -9; step <= 9; ++step) {
    if (step == 0) continue;
    iscale = -(static_cast<float>(nmax) + 0.1f * static_cast<float>(step)) / max;
    sums(iscale, sum_lx, sum_l2);
    if (sum_l2 > 0 && sum_lx * sum_lx > best * sum_l2) {
      store(iscale);
      scale = sum_lx / sum_l2;
      best = scale * sum_lx;
    }
  }
  return scale;
}

// Q4_K (kFifthBit false: 4-bit quants) and Q5_K (a fifth bit per quant in qh, bit `sub` of qh[l]
// for element 32 sub + l): the same sub-block search (GGML's parameters for each) and the same
// packed 6-bit scales and mins.
template <bool kFifthBit>
void quantize_k4_family(const float* x, uint8_t* block) {
  constexpr int kMaxQuant = kFifthBit ? 31 : 15;
  constexpr float kSearchMin = kFifthBit ? -0.5f : -1.0f;  // GGML's sweep for each
  constexpr int kSearchSteps = kFifthBit ? 15 : 20;
  uint8_t q[kQKK], q_try[32];
  float weights[32], scales[8], mins[8];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    const float* xs = x + 32 * j;
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
    const float av_x = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(xs[l]);
    scales[j] =
        search_scale_min(32, kMaxQuant, xs, weights, q + 32 * j, &mins[j], q_try, kSearchMin, 0.1f, kSearchSteps);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
  const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
  uint8_t* packed = block + 4;
  std::memset(packed, 0, 12);
  for (int j = 0; j < 8; ++j) {
    const int ls = std::min(63, nearest_int(inv_scale * scales[j]));
    const int lm = std::min(63, nearest_int(inv_min * mins[j]));
    if (j < 4) {
      packed[j] = static_cast<uint8_t>(ls);
      packed[j + 4] = static_cast<uint8_t>(lm);
    } else {
      packed[j + 4] = static_cast<uint8_t>((ls & 0x0f) | ((lm & 0x0f) << 4));
      packed[j - 4] = static_cast<uint8_t>(packed[j - 4] | ((ls >> 4) << 6));
      packed[j] = static_cast<uint8_t>(packed[j] | ((lm >> 4) << 6));
    }
  }
  store_f16(block, max_scale / 63.0f);
  store_f16(block + 2, max_min / 63.0f);
  const float d_all = load_f16(block), dmin_all = load_f16(block + 2);
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    k4_scale_min(packed, j, sc, m);
    const float d = d_all * static_cast<float>(sc);
    if (d == 0) continue;  // keeps the search's quants, as GGML does
    const float dm = dmin_all * static_cast<float>(m);
    for (int l = 0; l < 32; ++l)
      q[32 * j + l] = static_cast<uint8_t>(clamp_int(nearest_int((x[32 * j + l] + dm) / d), 0, kMaxQuant));
  }
  uint8_t* qh = block + 16;
  uint8_t* qs = block + (kFifthBit ? 48 : 16);
  if (kFifthBit) std::memset(qh, 0, 32);
  for (int chunk = 0; chunk < 4; ++chunk) {  // 64 elements: low nibbles then high nibbles
    for (int l = 0; l < 32; ++l) {
      const int lo = q[64 * chunk + l], hi = q[64 * chunk + l + 32];
      qs[32 * chunk + l] = static_cast<uint8_t>((lo & 0x0f) | ((hi & 0x0f) << 4));
      if (kFifthBit) qh[l] = static_cast<uint8_t>(qh[l] | ((lo >> 4) << (2 * chunk)) | ((hi >> 4) << (2 * chunk + 1)));
    }
  }
}

}  // namespace

void quantize_q4_k(const float* x, uint8_t* block) { quantize_k4_family<false>(x, block); }
void quantize_q5_k(const float* x, uint8_t* block) { quantize_k4_family<true>(x, block); }

void quantize_q6_k(const float* x, uint8_t* block) {
  uint8_t q[kQKK];
  float scales[16];
  float max_scale = 0, max_abs_scale = 0;
  for (int ib = 0; ib < 16; ++ib) {
    scales[ib] = search_scale_symmetric(16, 32, x + 16 * ib, q + 16 * ib);
    const float abs_scale = std::fabs(scales[ib]);
    if (abs_scale > max_abs_scale) {
      max_abs_scale = abs_scale;
      max_scale = scales[ib];
    }
  }
  if (max_abs_scale < kGroupMaxEps) {
    std::memset(block, 0, 210);
    return;
  }
  const float iscale = -128.0f / max_scale;
  store_f16(block + 208, 1 / iscale);
  auto* block_scales = reinterpret_cast<int8_t*>(block + 192);
  for (int ib = 0; ib < 16; ++ib) block_scales[ib] = static_cast<int8_t>(std::min(127, nearest_int(iscale * scales[ib])));
  const float d_all = load_f16(block + 208);
  for (int j = 0; j < 16; ++j) {
    const float d = d_all * static_cast<float>(block_scales[j]);
    if (d == 0) continue;
    for (int i = 0; i < 16; ++i) q[16 * j + i] = static_cast<uint8_t>(clamp_int(nearest_int(x[16 * j + i] / d), -32, 31) + 32);
  }
  // Layout as in dequantize_q6_k: per 128 elements, 64 bytes of nibbles and 32 bytes of top bits.
  for (int half = 0; half < 2; ++half) {
    uint8_t* ql = block + 64 * half;
    uint8_t* qh = block + 128 + 32 * half;
    const uint8_t* qq = q + 128 * half;
    for (int l = 0; l < 32; ++l) {
      ql[l] = static_cast<uint8_t>((qq[l] & 0x0f) | ((qq[l + 64] & 0x0f) << 4));
      ql[l + 32] = static_cast<uint8_t>((qq[l + 32] & 0x0f) | ((qq[l + 96] & 0x0f) << 4));
      qh[l] = static_cast<uint8_t>((qq[l] >> 4) | ((qq[l + 32] >> 4) << 2) | ((qq[l + 64] >> 4) << 4) | ((qq[l + 96] >> 4) << 6));
    }
  }
}

}  // namespace pdvm::reference
