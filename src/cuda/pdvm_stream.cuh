// Weight streaming for the PDVM matvec phases. Each warp owns a ring of kStages shared-memory
// slots and copies its static work list (two rows at a time, kStepChunks 16-byte chunks of each
// per step) into it with cp.async, kStages steps ahead of the arithmetic. Weights do not depend on
// activations, so a phase's first steps are issued BEFORE the CTA waits for the activations:
// the memory pipeline stays busy across the inter-CTA dependencies.
//
// Quantized formats multiply int8 weights/nibbles against int8 activations (per-32 blocks,
// quantized once per CTA per phase) with dp4a, accumulating exact integer sums per block.
#pragma once

#include "cuda/pdvm_device.cuh"

namespace pdvm::fused {

constexpr int kStages = 4;
constexpr int kChunksPerLane = 2;  // 16-byte chunks per lane per row per step
constexpr int kStepChunks = 32 * kChunksPerLane;
constexpr int kScaleSegment = kStepChunks * 2;  // scale bytes per row per step (Q4_0; Q8_0 uses half)

struct Slot {
  uint4 data[2][kChunksPerLane][32];
  uint4 scales[2][kScaleSegment / 16];
};
constexpr int kRingBytes = kWarps * kStages * static_cast<int>(sizeof(Slot));

// Activations in shared memory: floats for f16/bf16 weights, int8 blocks for quantized ones.
struct Acts {
  const float* x;
  const int8_t* q;
  const float* scale;  // per 32-block
  const int* sum;      // per 32-block, sum of q
};

enum ItemKind : int {
  kPairRows,        // item i: rows 2(begin+i), 2(begin+i)+1 of a (RoPE pairs)
  kConsecutiveRows, // item i: rows begin+2i, begin+2i+1 (< end) of a
  kTwoMatrices,     // item i: row begin+i of a and of b (gate/up, same shape and format)
};

// One phase's work for this CTA. Its items x steps are split evenly over the warps in
// contiguous ranges; an item cut between warps is summed in warp order (deterministic).
struct Plan {
  const uint8_t* a;
  const uint8_t* b;
  const __half* a_scales;
  const __half* b_scales;
  int row_bytes, scale_stride, format, kind;
  int begin, end;  // CTA share of pairs (kPairRows) or rows
  int n_items;
  int n_iter;    // steps per item
  int n_chunks;  // 16-byte chunks per row
};

__device__ __forceinline__ Plan make_plan(const DevMatrix& a, const DevMatrix& b, int kind, int total) {
  Plan pl;
  pl.a = a.data;
  pl.a_scales = a.scales;
  pl.b = kind == kTwoMatrices ? b.data : a.data;
  pl.b_scales = kind == kTwoMatrices ? b.scales : a.scales;
  pl.row_bytes = a.row_bytes;
  pl.scale_stride = a.scale_stride;
  pl.format = a.format;
  pl.kind = kind;
  cta_share(total, pl.begin, pl.end);
  const int span = pl.end - pl.begin;
  pl.n_items = kind == kConsecutiveRows ? (span + 1) / 2 : span;
  pl.n_chunks = a.row_bytes / 16;
  pl.n_iter = (pl.n_chunks + kStepChunks - 1) / kStepChunks;
  return pl;
}

__device__ __forceinline__ void item_rows(const Plan& pl, int i, int& r0, int& r1) {
  if (pl.kind == kPairRows) {
    r0 = 2 * (pl.begin + i);
    r1 = r0 + 1;
  } else if (pl.kind == kConsecutiveRows) {
    r0 = pl.begin + 2 * i;
    r1 = r0 + 1 < pl.end ? r0 + 1 : r0;
  } else {
    r0 = r1 = pl.begin + i;
  }
}

// This warp's contiguous range [s0, s1) of the CTA's item-major steps.
__device__ __forceinline__ void warp_steps(const Plan& pl, int& s0, int& s1) {
  const int warp = threadIdx.x >> 5;
  const int total = pl.n_items * pl.n_iter;
  s0 = total * warp / kWarps;
  s1 = total * (warp + 1) / kWarps;
}

__device__ __forceinline__ Slot* warp_ring(uint8_t* ring_base) {
  return reinterpret_cast<Slot*>(ring_base) + (threadIdx.x >> 5) * kStages;
}

// Partial sums of items cut between warps: [warp][first, last].
struct Fragment {
  int item;
  float v0, v1;
};
constexpr int kFragmentFloats = kWarps * 2 * 3;

__device__ __forceinline__ void cp_async16(void* smem, const void* global) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;" ::"r"(dst), "l"(global) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_stages() {
  asm volatile("cp.async.wait_group %0;" ::"n"(kStages - 1) : "memory");
}

// Where the next copy of this warp's work list goes: step, item, step within the item, and
// how many steps were issued (selects the ring slot).
struct IssueCursor {
  int s, k, iter, n;
};

__device__ __forceinline__ IssueCursor cursor_at(const Plan& pl, int s, int n) {
  return IssueCursor{s, s / pl.n_iter, s % pl.n_iter, n};
}

// Copies the cursor's step into its ring slot and advances it (always one commit group, empty
// past s_end, so that group counting stays uniform).
__device__ __forceinline__ void pipe_issue(const Plan& pl, Slot* ring, IssueCursor& cur, int s_end) {
  if (cur.s < s_end) {
    const int lane = threadIdx.x & 31;
    int r0, r1;
    item_rows(pl, cur.k, r0, r1);
    Slot& slot = ring[cur.n % kStages];
    const uint8_t* row0 = pl.a + static_cast<int64_t>(r0) * pl.row_bytes;
    const uint8_t* row1 = pl.b + static_cast<int64_t>(r1) * pl.row_bytes;
#pragma unroll
    for (int j = 0; j < kChunksPerLane; ++j) {
      const int c = cur.iter * kStepChunks + 32 * j + lane;
      if (c < pl.n_chunks) {
        cp_async16(&slot.data[0][j][lane], row0 + c * 16);
        cp_async16(&slot.data[1][j][lane], row1 + c * 16);
      }
    }
    if (pl.a_scales) {
      const int segment = pl.format == kFmtQ4_0 ? kScaleSegment : kScaleSegment / 2;
      const int r = lane / (kScaleSegment / 16), part = lane % (kScaleSegment / 16);
      if (r < 2 && part * 16 < segment) {
        const __half* scales = r == 0 ? pl.a_scales + static_cast<int64_t>(r0) * pl.scale_stride
                                      : pl.b_scales + static_cast<int64_t>(r1) * pl.scale_stride;
        cp_async16(&slot.scales[r][part], reinterpret_cast<const uint8_t*>(scales) + cur.iter * segment + part * 16);
      }
    }
    if (++cur.iter == pl.n_iter) {
      cur.iter = 0;
      ++cur.k;
    }
  }
  ++cur.s;
  ++cur.n;
  cp_async_commit();
}

// Issues the first kStages steps of the warp's range (before waiting on activations).
__device__ __forceinline__ void pipe_begin(const Plan& pl, uint8_t* ring_base) {
  Slot* ring = warp_ring(ring_base);
  int s0, s1;
  warp_steps(pl, s0, s1);
  IssueCursor cur = cursor_at(pl, s0, 0);
  __syncwarp();
#pragma unroll
  for (int s = 0; s < kStages; ++s) pipe_issue(pl, ring, cur, s1);
}

__device__ __forceinline__ int dp4a(uint32_t a, int b, int c) { return __dp4a(static_cast<int>(a), b, c); }

// Chunk j of this lane (global chunk index c, index e within the step) of row r of the slot.
template <int kFormat>
__device__ __forceinline__ float chunk_value(const Slot& slot, int r, int j, int c, int e, const Acts& acts) {
  const uint4 w = slot.data[r][j][e & 31];
  if constexpr (kFormat == kFmtF16) {
    return dot8_f16(w, acts.x + c * 8);
  } else if constexpr (kFormat == kFmtBF16) {
    return dot8_bf16(w, acts.x + c * 8);
  } else if constexpr (kFormat == kFmtQ8_0) {
    const int4 a = *reinterpret_cast<const int4*>(acts.q + c * 16);
    int sum = dp4a(w.x, a.x, 0);
    sum = dp4a(w.y, a.y, sum);
    sum = dp4a(w.z, a.z, sum);
    sum = dp4a(w.w, a.w, sum);
    const float ws = __half2float(reinterpret_cast<const __half*>(slot.scales[r])[e >> 1]);
    return static_cast<float>(sum) * ws * acts.scale[c >> 1];
  } else {
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
    sum -= 8 * acts.sum[c];
    const float ws = __half2float(reinterpret_cast<const __half*>(slot.scales[r])[e]);
    return static_cast<float>(sum) * ws * acts.scale[c];
  }
}

// Consumes the warp's range (pipe_begin must have issued its head). out(i, v0, v1) runs in
// lane 0 for items the warp computed whole; cut items are recorded in `fragments`, and after a
// CTA barrier thread 0 sums them in warp order and calls out. Ends with a CTA barrier.
template <int kFormat, class Out>
__device__ __forceinline__ void pipe_run(const Plan& pl, uint8_t* ring_base, const Acts& acts,
                                         Fragment* fragments, Out&& out) {
  Slot* ring = warp_ring(ring_base);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int s0, s1;
  warp_steps(pl, s0, s1);
  IssueCursor cur = cursor_at(pl, s0 + kStages, kStages);
  Fragment* mine = fragments + 2 * warp;
  if (lane == 0) mine[0].item = mine[1].item = -1;
  float acc0 = 0.0f, acc1 = 0.0f;
  int k = s0 / pl.n_iter, iter = s0 % pl.n_iter;
  bool whole = iter == 0;
  for (int n = 0; n < s1 - s0; ++n) {
    cp_async_wait_stages();
    __syncwarp();
    const Slot& slot = ring[n % kStages];
#pragma unroll
    for (int j = 0; j < kChunksPerLane; ++j) {
      const int e = 32 * j + lane;
      const int c = iter * kStepChunks + e;
      if (c < pl.n_chunks) {
        acc0 += chunk_value<kFormat>(slot, 0, j, c, e, acts);
        acc1 += chunk_value<kFormat>(slot, 1, j, c, e, acts);
      }
    }
    __syncwarp();
    pipe_issue(pl, ring, cur, s1);
    if (++iter == pl.n_iter) {
      const float v0 = warp_sum(acc0), v1 = warp_sum(acc1);
      if (lane == 0) {
        if (whole) out(k, v0, v1);
        else mine[0] = Fragment{k, v0, v1};
      }
      acc0 = acc1 = 0.0f;
      iter = 0;
      ++k;
      whole = true;
    }
  }
  if (iter != 0) {
    const float v0 = warp_sum(acc0), v1 = warp_sum(acc1);
    if (lane == 0) mine[1] = Fragment{k, v0, v1};
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    Fragment sum{-1, 0.0f, 0.0f};
    for (int f = 0; f < 2 * kWarps; ++f) {
      const Fragment frag = fragments[f];
      if (frag.item < 0) continue;
      if (frag.item != sum.item) {
        if (sum.item >= 0) out(sum.item, sum.v0, sum.v1);
        sum = frag;
      } else {
        sum.v0 += frag.v0;
        sum.v1 += frag.v1;
      }
    }
    if (sum.item >= 0) out(sum.item, sum.v0, sum.v1);
  }
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

}  // namespace pdvm::fused
