// UPG rows in the PDVM warp matvec (included by pdvm_matvec.cuh, whose Acts/RowRef it uses).
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

// warp_dot for kFmtUpg rows: out[r] valid in every lane.
template <int kRows>
__device__ __forceinline__ void warp_dot_upg(const RowRef (&rows)[kRows], int n_chunks, const Acts& acts,
                                             float (&out)[kRows]) {
  constexpr int kUnroll = kLoadsPerLane / kRows;
  const int lane = threadIdx.x & 31;
  const uint8_t* side[kRows];
  uint4 table[kRows];
  int block_shift[kRows];
  float acc[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    side[r] = upg_side(*rows[r].matrix, rows[r].row);
    table[r] = __ldg(reinterpret_cast<const uint4*>(side[r]));
    block_shift[r] = rows[r].matrix->block_shift;
    acc[r] = 0.0f;
  }
  for (int c0 = lane; c0 < n_chunks; c0 += 32 * kUnroll) {
    uint4 w[kRows][kUnroll];
    float block_scale[kRows][kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = c0 + 32 * u;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const bool in = c < n_chunks;
        w[r][u] = in ? load_stream(rows[r].data + c * 16) : make_uint4(0, 0, 0, 0);
        const auto* scales = reinterpret_cast<const int8_t*>(side[r] + kUpgBlockScales);
        block_scale[r][u] = in ? static_cast<float>(__ldg(scales + (c >> block_shift[r]))) : 0.0f;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = c0 + 32 * u;
      if (c < n_chunks) {
#pragma unroll
        for (int r = 0; r < kRows; ++r) acc[r] += upg_chunk_value(w[r][u], table[r], c, acts) * block_scale[r][u];
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    float value = warp_sum(acc[r]) * __ldg(reinterpret_cast<const float*>(side[r] + kUpgRowScale));
    const int2 range = upg_outliers(side[r]);
    if (range.y > range.x) {  // warp-uniform
      const DevMatrix& m = *rows[r].matrix;
      float extra = 0.0f;
      for (int j = range.x + lane; j < range.y; j += 32)
        extra += __half2float(m.outlier_val[j]) * acts.x[__ldg(m.outlier_col + j)];
      value += warp_sum(extra);
    }
    out[r] = value;
  }
}

}  // namespace pdvm::fused
