// Warp matvec of the PDVM phases: each warp takes one or two rows at a time (interleaved over
// the warps, so that a CTA's warps read neighbouring rows), holds 8 16-byte chunks per lane in
// flight in registers, and reduces with shuffles.
//
// Quantized formats multiply int8 weights/nibbles against int8 activations (per-32 blocks,
// quantized once per CTA per phase) with dp4a, accumulating exact integer sums per block.
// (A per-warp cp.async shared-memory ring measured slower: docs/perf-notes.md.)
#pragma once

#include "cuda/pdvm_device.cuh"

namespace pdvm::fused {

constexpr int kLoadsPerLane = 8;  // 16-byte chunks in flight per lane per iteration

// Activations in shared memory: floats for f16/bf16 weights, int8 blocks for quantized ones.
struct Acts {
  const float* x;
  const int8_t* q;
  const float* scale;  // per 32-block
  const int* sum;      // per 32-block, sum of q
};

// One row as the warp streams it: main data and (quantized formats) block scales; UPG rows
// find their side record and outliers through matrix and row.
struct RowRef {
  const uint8_t* data;
  const __half* scales;
  const DevMatrix* matrix;
  int row;
};

__device__ __forceinline__ RowRef row_ref(const DevMatrix& m, int row) {
  return RowRef{m.data + static_cast<int64_t>(row) * m.row_bytes,
                m.scales ? m.scales + static_cast<int64_t>(row) * m.scale_stride : nullptr, &m, row};
}

__device__ __forceinline__ int dp4a(uint32_t a, int b, int c) { return __dp4a(static_cast<int>(a), b, c); }

// Chunk c (16 bytes `w`; block scale ws.x and, for Q4_1, min ws.y) against the activations.
template <int kFormat>
__device__ __forceinline__ float chunk_value(uint4 w, float2 ws, int c, const Acts& acts) {
  if constexpr (kFormat == kFmtF16) {
    return dot8_f16(w, acts.x + c * 8);
  } else if constexpr (kFormat == kFmtBF16) {
    return dot8_bf16(w, acts.x + c * 8);
  } else if constexpr (kFormat == kFmtQ8_0 || kFormat == kFmtQ8_16) {
    const int4 a = *reinterpret_cast<const int4*>(acts.q + c * 16);
    int sum = dp4a(w.x, a.x, 0);
    sum = dp4a(w.y, a.y, sum);
    sum = dp4a(w.z, a.z, sum);
    sum = dp4a(w.w, a.w, sum);
    return static_cast<float>(sum) * ws.x * acts.scale[c >> 1];
  } else {
    // Byte i of a Q4_0/Q4_1 block holds element i (low nibble) and i + 16 (high nibble).
    const int4 lo = *reinterpret_cast<const int4*>(acts.q + c * 32);
    const int4 hi = *reinterpret_cast<const int4*>(acts.q + c * 32 + 16);
    constexpr uint32_t kNibbles = 0x0f0f0f0fu;
    int sum = dp4a(w.x & kNibbles, lo.x, 0);
    sum = dp4a(w.y & kNibbles, lo.y, sum);
    sum = dp4a(w.z & kNibbles, lo.z, sum);
    sum = dp4a(w.w & kNibbles, lo.w, sum);
    sum = dp4a((w.x >> 4) & kNibbles, hi.x, sum);
    sum = dp4a((w.y >> 4) & kNibbles, hi.y, sum);
    sum = dp4a((w.z >> 4) & kNibbles, hi.z, sum);
    sum = dp4a((w.w >> 4) & kNibbles, hi.w, sum);
    if constexpr (kFormat == kFmtQ4_0) {
      sum -= 8 * acts.sum[c];
      return static_cast<float>(sum) * ws.x * acts.scale[c];
    } else {
      return acts.scale[c] * (static_cast<float>(sum) * ws.x + static_cast<float>(acts.sum[c]) * ws.y);
    }
  }
}

// out[r] = dot(rows[r], activations) for kRows rows of n_chunks chunks; valid in every lane.
template <int kFormat, int kRows>
__device__ __forceinline__ void warp_dot(const RowRef (&rows)[kRows], int n_chunks, const Acts& acts,
                                         float (&out)[kRows]) {
  constexpr int kUnroll = kLoadsPerLane / kRows;
  const int lane = threadIdx.x & 31;
  float acc[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) acc[r] = 0.0f;
  for (int c0 = lane; c0 < n_chunks; c0 += 32 * kUnroll) {
    uint4 w[kRows][kUnroll];
    float2 ws[kRows][kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = c0 + 32 * u;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const bool in = c < n_chunks;
        w[r][u] = in ? load_stream(rows[r].data + c * 16) : make_uint4(0, 0, 0, 0);
        if constexpr (kFormat == kFmtQ4_1) {
          ws[r][u] = in ? __half22float2(__ldg(reinterpret_cast<const __half2*>(rows[r].scales) + c)) : make_float2(0, 0);
        } else if constexpr (is_quantized_format(kFormat)) {
          ws[r][u] = make_float2(in ? __half2float(__ldg(rows[r].scales + c / chunks_per_scale(kFormat))) : 0.0f, 0.0f);
        } else {
          ws[r][u] = make_float2(1.0f, 0.0f);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = c0 + 32 * u;
      if (c < n_chunks) {
#pragma unroll
        for (int r = 0; r < kRows; ++r) acc[r] += chunk_value<kFormat>(w[r][u], ws[r][u], c, acts);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) out[r] = warp_sum(acc[r]);
}

}  // namespace pdvm::fused

#include "cuda/pdvm_upg.cuh"

namespace pdvm::fused {

// Items [0, n_items) of this CTA, interleaved over the warps: rows_of(i, refs) names the kRows
// rows of item i, out(i, values) runs in lane 0.
template <int kRows, class RowsOf, class Out>
__device__ __forceinline__ void matvec_items(int format, int n_items, int n_chunks, const Acts& acts, RowsOf&& rows_of,
                                             Out&& out) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  dispatch_format(format, [&](auto tag) {
    constexpr int kF = decltype(tag)::value;
    for (int i = warp; i < n_items; i += kWarps) {
      RowRef refs[kRows];
      rows_of(i, refs);
      float values[kRows];
      if constexpr (kF == kFmtUpg) {
        warp_dot_upg<kRows>(refs, n_chunks, acts, values);
      } else {
        warp_dot<kF, kRows>(refs, n_chunks, acts, values);
      }
      if (lane == 0) out(i, values);
    }
  });
  __syncthreads();
}

// Per-32-block int8 quantization of xs[0, n) (n a multiple of 32), one warp per block.
__device__ __forceinline__ void quantize_activations(const float* xs, int n, int8_t* q, float* scale, int* sum) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int b = warp; b < n / 32; b += kWarps) {
    const float v = xs[b * 32 + lane];
    float amax = fabsf(v);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
    const float d = amax / 127.0f;
    const int qi = d > 0.0f ? __float2int_rn(v / d) : 0;
    q[b * 32 + lane] = static_cast<int8_t>(qi);
    int s = qi;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) {
      scale[b] = d;
      sum[b] = s;
    }
  }
  __syncthreads();
}

// Pulls up to `max_bytes` of rows [row_begin, row_end) into L2 (issued before a wait: the
// weights of the next phase stream while its activations are not ready yet).
__device__ __forceinline__ void prefetch_rows(const DevMatrix& m, int row_begin, int row_end, int max_bytes) {
  const uint8_t* begin = m.data + static_cast<int64_t>(row_begin) * m.row_bytes;
  int64_t bytes = static_cast<int64_t>(row_end - row_begin) * m.row_bytes;
  if (bytes > max_bytes) bytes = max_bytes;
  for (int64_t off = static_cast<int64_t>(threadIdx.x) * 128; off < bytes; off += kThreads * 128)
    asm volatile("prefetch.global.L2 [%0];" ::"l"(begin + off));
}

}  // namespace pdvm::fused
