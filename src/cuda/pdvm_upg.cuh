// UPG rows in the PDVM matvec (included by pdvm_matvec.cuh, whose Acts it uses; the streaming
// loop, warp_stream_items, calls these per 32-group and per finished row).
//
// Codes are repacked at load as consecutive nibbles (nibble i of a 32-bit word = element i of 8),
// so the low 16 bits of a word are four ready byte_perm selectors. The row's 16-entry int8 table
// sits in one uint4: two byte_perms look a code's low three bits up in entries 0-7 and 8-15, a
// third picks per byte by the code's high bit. The four int8 values then go through dp4a against
// the int8 activations like the Q4/Q8 formats; each 32-group's integer sum is scaled by its
// activation scale and block scale, the row sum by the row scale, and the row's outliers are
// added in f32 by the same warp.
#pragma once

namespace pdvm::fused {

// Table entries of the four codes in `selectors` (low 16 bits); `pick` (0x3210 | high bit << 2
// per nibble) chooses the lower or upper half of the table for each byte.
__device__ __forceinline__ uint32_t upg_lookup4(uint32_t selectors, uint32_t pick, uint4 table) {
  const uint32_t lower = __byte_perm(table.x, table.y, selectors);
  const uint32_t upper = __byte_perm(table.z, table.w, selectors);
  return __byte_perm(lower, upper, pick);
}

// Eight codes of `word` against activations a0 (elements 0-3) and a1 (elements 4-7).
__device__ __forceinline__ int upg_dot8(uint32_t word, uint4 table, int a0, int a1, int sum) {
  const uint32_t pick = ((word >> 1) & 0x44444444u) | 0x32103210u;
  sum = dp4a(upg_lookup4(word, pick, table), a0, sum);
  return dp4a(upg_lookup4(word >> 16, pick >> 16, table), a1, sum);
}

// Group c (32 codes in `w`) against the int8 activations, times the activations' block scale.
__device__ __forceinline__ float upg_chunk_value(uint4 w, uint4 table, int c, const Acts& acts) {
  const int4 lo = *reinterpret_cast<const int4*>(acts.q + c * 32);
  const int4 hi = *reinterpret_cast<const int4*>(acts.q + c * 32 + 16);
  int sum = upg_dot8(w.x, table, lo.x, lo.y, 0);
  sum = upg_dot8(w.y, table, lo.z, lo.w, sum);
  sum = upg_dot8(w.z, table, hi.x, hi.y, sum);
  sum = upg_dot8(w.w, table, hi.z, hi.w, sum);
  return static_cast<float>(sum) * acts.scale[c];
}

// Row sum -> row value: times the row scale, plus the row's outliers against the f32
// activations (warp-collective; valid in every lane).
__device__ __forceinline__ float upg_finish_row(const DevMatrix& m, const uint8_t* side, float sum, const Acts& acts) {
  float value = sum * __ldg(reinterpret_cast<const float*>(side + kUpgRowScale));
  const int2 range = upg_outliers(side);
  if (range.y > range.x) {  // warp-uniform
    float extra = 0.0f;
    for (int j = range.x + (threadIdx.x & 31); j < range.y; j += 32)
      extra += __half2float(m.outlier_val[j]) * acts.x[__ldg(m.outlier_col + j)];
    value += warp_sum(extra);
  }
  return value;
}

}  // namespace pdvm::fused
