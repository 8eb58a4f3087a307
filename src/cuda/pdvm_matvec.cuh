// Warp matvec of the PDVM phases: each warp streams the rows of its items (interleaved over the
// warps, so that a CTA's warps read neighbouring rows) with 8 16-byte chunks per lane in flight
// in registers, batches running across row boundaries, and reduces with shuffles.
//
// Quantized formats multiply int8 weights/nibbles against int8 activations (per-32 blocks,
// quantized once per CTA per phase) with dp4a, accumulating exact integer sums per block; models
// that need more precision (kInt16Acts) multiply int16 blocks the same way, in two dp4a per word.
// (A per-warp cp.async shared-memory ring measured slower: docs/perf-notes.md.)
#pragma once

#include "cuda/int8_dot.cuh"
#include "cuda/pdvm_device.cuh"

namespace pdvm::fused {

// 16-byte chunks in flight per lane per batch (with 16 warps 12 lost to 8; with 24, 8 spilled
// and lost to 6: perf-notes sessions 10 and 11).
constexpr int kLoadsPerLane = 6;

// Chunks per lane per batch for `format` (shared by an item's rows): 8 for float rows (F16, BF16:
// little arithmetic per load; 1B F16 +1.3 % over 6), 4 for the 4-bit formats against int8 or
// int16 activations (at 20 warps 4 beat 6 by 1-6 % at 13B and 1B). The batching does not change
// any sum (see warp_stream_items).
__host__ __device__ constexpr int loads_per_lane(int format) {
  if (!is_quantized_format(base_format(format))) return 8;
  return weights_per_chunk(base_format(format)) == 32 ? 4 : kLoadsPerLane;
}

// Activations in shared memory: floats for f16/bf16 weights, int8 blocks for quantized ones, and
// int16 blocks for kInt16Acts ones, as the codes' high (signed) and low (unsigned) bytes.
struct Acts {
  const float* x;
  const int8_t* q;
  const float* scale;  // per 32-block
  const int* sum;      // per 32-block, sum of q
  const int8_t* q16_high;
  const uint8_t* q16_low;
  const float* scale16;
  const int* sum16;
};

// One row as the warp streams it: main data and (quantized formats) block scales; UPG rows
// their side record (pdvm_upg_layout.h) and, through matrix, the outliers.
struct RowRef {
  const uint8_t* data;
  const __half* scales;
  const uint8_t* side;
  const DevMatrix* matrix;
};

__device__ __forceinline__ RowRef row_ref(const DevMatrix& m, int row) {
  return RowRef{m.data + static_cast<int64_t>(row) * m.row_bytes,
                m.scales ? m.scales + static_cast<int64_t>(row) * m.scale_stride : nullptr,
                m.side ? upg_side(m, row) : nullptr, &m};
}

using int8_dot::dp4a;

}  // namespace pdvm::fused

#include "cuda/pdvm_upg.cuh"

namespace pdvm::fused {

// Q5_K chunk: the nibble words with their fifth bits (q5_k_fifth_bits' layout) as weight bytes
// 0..31, elements 4k.. in lo[k] and 16 + 4k.. in hi[k].
__device__ __forceinline__ void q5_k_bytes(uint4 w, uint32_t fifth, uint32_t (&lo)[4], uint32_t (&hi)[4]) {
  const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    lo[k] = (words[k] & 0x0f0f0f0fu) | ((fifth << (4 - k)) & 0x10101010u);
    hi[k] = ((words[k] >> 4) & 0x0f0f0f0fu) | ((fifth >> k) & 0x10101010u);
  }
}

// Chunk c of a quantized format against int16 activations (kInt16Acts): the exact integer sum
// of weights times codes, as 256 x (against the codes' high bytes) + (against their low bytes),
// then the block scales (and, for Q4_1, Q4_K and Q5_K, min x the block's code sum). `fifth`: Q5_K's
// fifth bits.
template <int kBase>
__device__ __forceinline__ float int16_chunk_value(uint4 w, float2 ws, int c, const Acts& acts, uint32_t fifth) {
  if constexpr (kBase == kFmtQ5_K) {
    const int4* high = reinterpret_cast<const int4*>(acts.q16_high + c * 32);
    const uint4* low = reinterpret_cast<const uint4*>(acts.q16_low + c * 32);
    uint32_t lo[4], hi[4];
    q5_k_bytes(w, fifth, lo, hi);
    const int sum =
        256 * int8_dot::u8_chunk_dot(lo, hi, high[0], high[1]) + int8_dot::u8_chunk_dot(lo, hi, low[0], low[1]);
    return acts.scale16[c] * (static_cast<float>(sum) * ws.x + static_cast<float>(acts.sum16[c]) * ws.y);
  } else if constexpr (kBase == kFmtQ8_0 || kBase == kFmtQ6_K) {
    const int4 high = *reinterpret_cast<const int4*>(acts.q16_high + c * 16);
    const uint4 low = *reinterpret_cast<const uint4*>(acts.q16_low + c * 16);
    const int sum = 256 * int8_dot::q8_chunk_dot(w, high) + int8_dot::q8_chunk_dot(w, low);
    return static_cast<float>(sum) * ws.x * acts.scale16[c >> 1];
  } else {
    const int4* high = reinterpret_cast<const int4*>(acts.q16_high + c * 32);
    const uint4* low = reinterpret_cast<const uint4*>(acts.q16_low + c * 32);
    int sum = 256 * int8_dot::q4_chunk_dot(w, high[0], high[1]) + int8_dot::q4_chunk_dot(w, low[0], low[1]);
    if constexpr (kBase == kFmtQ4_0) {
      sum -= 8 * acts.sum16[c];
      return static_cast<float>(sum) * ws.x * acts.scale16[c];
    } else {
      return acts.scale16[c] * (static_cast<float>(sum) * ws.x + static_cast<float>(acts.sum16[c]) * ws.y);
    }
  }
}

// Chunk c (16 bytes `w`; block scale ws.x and, for Q4_1, min ws.y) against the activations.
template <int kFormat>
__device__ __forceinline__ float chunk_value(uint4 w, float2 ws, int c, const Acts& acts, uint32_t fifth) {
  if constexpr (kFormat != base_format(kFormat)) {
    return int16_chunk_value<base_format(kFormat)>(w, ws, c, acts, fifth);
  } else if constexpr (kFormat == kFmtF16) {
    return dot8_f16(w, acts.x + c * 8);
  } else if constexpr (kFormat == kFmtBF16) {
    return dot8_bf16(w, acts.x + c * 8);
  } else if constexpr (kFormat == kFmtQ8_0 || kFormat == kFmtQ6_K) {
    const int4 a = *reinterpret_cast<const int4*>(acts.q + c * 16);
    return static_cast<float>(int8_dot::q8_chunk_dot(w, a)) * ws.x * acts.scale[c >> 1];
  } else {
    const int4 lo = *reinterpret_cast<const int4*>(acts.q + c * 32);
    const int4 hi = *reinterpret_cast<const int4*>(acts.q + c * 32 + 16);
    int sum = int8_dot::q4_chunk_dot(w, lo, hi);
    if constexpr (kFormat == kFmtQ4_0) {
      sum -= 8 * acts.sum[c];
      return static_cast<float>(sum) * ws.x * acts.scale[c];
    } else {
      return acts.scale[c] * (static_cast<float>(sum) * ws.x + static_cast<float>(acts.sum[c]) * ws.y);
    }
  }
}

// The CTA's items [0, n_items) go to the warps round-robin (neighbouring warps read
// neighbouring rows). A warp walks the chunk columns of its items (column j: chunks 32 j + lane
// of each of the item's kRows rows) in batches of loads_per_lane / kRows columns that run across
// item boundaries, so every load slot carries weights even where a row is shorter than a batch
// or its length is not a multiple of one. Each lane accumulates its chunks of a row in column
// order and the warp reduces with shuffles, so a row's sum does not depend on the batching;
// out(i, values) runs in lane 0 once item i is complete.
template <int kFormat, int kRows, class RowsOf, class Out>
__device__ __forceinline__ void warp_stream_items(int n_items, int n_chunks, const Acts& acts, RowsOf&& rows_of,
                                                  Out&& out) {
  constexpr int kColumns = loads_per_lane(kFormat) / kRows;
  constexpr int kBase = base_format(kFormat);  // the weight layout (kInt16Acts aside)
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (warp >= n_items) return;
  const int columns_per_item = (n_chunks + 31) / 32;
  const int total = (n_items - warp + kWarps - 1) / kWarps * columns_per_item;
  int load_column = 0;          // next column to load
  int item = 0, column = 0;     // next column to accumulate
  // Item i + kWarps's rows lie a fixed step after item i's in every phase.
  RowRef refs[kRows], next[kRows];
  rows_of(warp, refs);
  rows_of(warp + kWarps, next);
  int data_step[kRows], scale_step[kRows];
  // UPG: side records step like the data; the accumulating side (`side`) trails the loading one.
  int side_step[kRows], block_shift[kRows];
  const uint8_t* side[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    data_step[r] = static_cast<int>(next[r].data - refs[r].data);
    scale_step[r] = static_cast<int>(next[r].scales - refs[r].scales);
    if constexpr (kFormat == kFmtUpg) {
      side_step[r] = static_cast<int>(next[r].side - refs[r].side);
      block_shift[r] = refs[r].matrix->block_shift;
      side[r] = refs[r].side;
    }
  }
  float acc[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) acc[r] = 0.0f;
  for (int done = 0; done < total; done += kColumns) {
    uint4 w[kRows][kColumns];
    float2 ws[kRows][kColumns];
    uint32_t fifth[kRows][kColumns];  // Q5_K only
#pragma unroll
    for (int u = 0; u < kColumns; ++u) {
      const int c = load_column * 32 + lane;
      const bool in = done + u < total && c < n_chunks;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        w[r][u] = in ? load_stream(refs[r].data + c * 16) : make_uint4(0, 0, 0, 0);
        if constexpr (kFormat == kFmtUpg) {
          const auto* block_scales = reinterpret_cast<const int8_t*>(refs[r].side + kUpgBlockScales);
          ws[r][u] = make_float2(in ? static_cast<float>(__ldg(block_scales + (c >> block_shift[r]))) : 0.0f, 0.0f);
        } else if constexpr (kBase == kFmtQ6_K) {
          ws[r][u] = make_float2(in ? q6_k_scale(refs[r].scales, c) : 0.0f, 0.0f);
        } else if constexpr (kBase == kFmtQ4_K) {
          ws[r][u] = in ? q4_k_scale_min(refs[r].scales, c) : make_float2(0, 0);
        } else if constexpr (kBase == kFmtQ5_K) {
          ws[r][u] = in ? q5_k_scale_min(refs[r].scales, c) : make_float2(0, 0);
          fifth[r][u] = in ? q5_k_fifth_bits(refs[r].scales, c) : 0u;
        } else if constexpr (kBase == kFmtQ4_1) {
          ws[r][u] = in ? __half22float2(__ldg(reinterpret_cast<const __half2*>(refs[r].scales) + c)) : make_float2(0, 0);
        } else if constexpr (is_quantized_format(kBase)) {
          ws[r][u] = make_float2(in ? __half2float(__ldg(refs[r].scales + c / chunks_per_scale(kBase))) : 0.0f, 0.0f);
        } else {
          ws[r][u] = make_float2(1.0f, 0.0f);
        }
      }
      if (++load_column == columns_per_item) {
        load_column = 0;
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          refs[r].data += data_step[r];
          refs[r].scales += scale_step[r];
          if constexpr (kFormat == kFmtUpg) refs[r].side += side_step[r];
        }
      }
    }
    // Items completed in this batch keep their sums in lane k (k-th completion) until out()
    // runs below, outside the unrolled loop.
    const int first_item = item;
    int completed = 0;
    float held[kRows] = {};
#pragma unroll
    for (int u = 0; u < kColumns; ++u) {
      if (done + u < total) {
        const int c = column * 32 + lane;
        if (c < n_chunks) {
#pragma unroll
          for (int r = 0; r < kRows; ++r) {
            if constexpr (kFormat == kFmtUpg) {
              const uint4 table = __ldg(reinterpret_cast<const uint4*>(side[r]));
              acc[r] += upg_chunk_value(w[r][u], table, c, acts) * ws[r][u].x;
            } else {
              acc[r] += chunk_value<kFormat>(w[r][u], ws[r][u], c, acts, kBase == kFmtQ5_K ? fifth[r][u] : 0u);
            }
          }
        }
        if (++column == columns_per_item) {
#pragma unroll
          for (int r = 0; r < kRows; ++r) {
            const float sum = warp_sum(acc[r]);
            if (lane == completed) held[r] = sum;
            acc[r] = 0.0f;
            if constexpr (kFormat == kFmtUpg) side[r] += side_step[r];
          }
          column = 0;
          ++item;
          ++completed;
        }
      }
    }
#pragma unroll 1
    for (int k = 0; k < completed; ++k) {
      float values[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        values[r] = __shfl_sync(0xffffffffu, held[r], k);
        if constexpr (kFormat == kFmtUpg) {
          // Row scale and outliers of the k-th completed item (its side record lies behind).
          const int back = completed - k;
          values[r] = upg_finish_row(*refs[r].matrix, side[r] - back * side_step[r], values[r], acts);
        }
      }
      if (lane == 0) out(warp + (first_item + k) * kWarps, values);
    }
  }
}


// Items [0, n_items) of this CTA: rows_of(i, refs) names the kRows rows of item i (item
// i + kWarps's rows a fixed step after item i's), out(i, values) runs in lane 0.
template <bool kInt16Activations, int kOnly, int kRows, class RowsOf, class Out>
__device__ __forceinline__ void matvec_items(int format, int n_items, int n_chunks, const Acts& acts, RowsOf&& rows_of,
                                             Out&& out) {
  dispatch_format<kInt16Activations, kOnly>(format, [&](auto tag) {
    constexpr int kF = decltype(tag)::value;
    warp_stream_items<kF, kRows>(n_items, n_chunks, acts, rows_of, out);
  });
  __syncthreads();
}

// Block b of an int8 quantization, by eight lanes (part 0..7 of the 32 values, four each: lanes
// 8j..8j+7 of a warp hold one block). Every lane calls it; `valid` false lanes (a whole group past
// the vector) store nothing.
__device__ __forceinline__ void quantize_group(float4 v, bool valid, int b, int part, int8_t* q, float* scale, int* sum) {
  const auto codes = int8_dot::quantize_block<8>({v.x, v.y, v.z, v.w});
  if (valid) {
    *reinterpret_cast<char4*>(q + b * 32 + part * 4) =
        make_char4(static_cast<signed char>(codes.q[0]), static_cast<signed char>(codes.q[1]),
                   static_cast<signed char>(codes.q[2]), static_cast<signed char>(codes.q[3]));
    if (part == 0) {
      scale[b] = codes.d;
      sum[b] = codes.sum;
    }
  }
}

// quantize_group's int16 blocks (kInt16Acts matrices): codes split into high and low bytes.
__device__ __forceinline__ void quantize_group16(float4 v, bool valid, int b, int part, int8_t* high, uint8_t* low,
                                                 float* scale, int* sum) {
  const auto codes = int8_dot::quantize_block<8, 32767>({v.x, v.y, v.z, v.w});
  if (valid) {
    *reinterpret_cast<char4*>(high + b * 32 + part * 4) =
        make_char4(static_cast<signed char>(codes.q[0] >> 8), static_cast<signed char>(codes.q[1] >> 8),
                   static_cast<signed char>(codes.q[2] >> 8), static_cast<signed char>(codes.q[3] >> 8));
    *reinterpret_cast<uchar4*>(low + b * 32 + part * 4) =
        make_uchar4(static_cast<unsigned char>(codes.q[0] & 255), static_cast<unsigned char>(codes.q[1] & 255),
                    static_cast<unsigned char>(codes.q[2] & 255), static_cast<unsigned char>(codes.q[3] & 255));
    if (part == 0) {
      scale[b] = codes.d;
      sum[b] = codes.sum;
    }
  }
}

// Pulls the head of rows [row_begin, row_end) into L2 (issued before a wait: the weights of the
// next phase stream while its activations are not ready yet): at most half of the rows, and at
// most `max_bytes`, half of that for quantized rows. The prefetches compete with the CTAs still
// streaming the phase before: quantized phases gained from a shorter head start where float rows
// lost, and small shares (1B) from prefetching less than all of them (perf-notes sessions 12, 13).
__device__ __forceinline__ void prefetch_rows(const DevMatrix& m, int row_begin, int row_end, int max_bytes) {
  if (is_quantized_format(base_format(m.format))) max_bytes /= 2;
  const uint8_t* begin = m.data + static_cast<int64_t>(row_begin) * m.row_bytes;
  int64_t bytes = static_cast<int64_t>(row_end - row_begin) * m.row_bytes / 2;
  if (bytes > max_bytes) bytes = max_bytes;
  for (int64_t off = static_cast<int64_t>(threadIdx.x) * 128; off < bytes; off += kThreads * 128)
    asm volatile("prefetch.global.L2 [%0];" ::"l"(begin + off));
}

}  // namespace pdvm::fused
