// KV cache stores and causal attention over the cache. Attention is flash-decoding: the keys
// 0..pos of each (token, KV head) are split into n_chunks chunks, one block each, and each
// block keeps an online softmax over its chunk; a merge kernel combines the chunks. All query
// heads of a GQA group share one block so K and V are read once per group. Positions are
// read on the device, so one recorded launch serves every position. Prefill batches (more
// than kMaxExactAttentionTokens tokens) go to the tensor-core kernel in tiled_attention.cu.
#include <algorithm>
#include <string>
#include <type_traits>

#include "cuda/kv_access.cuh"
#include "cuda/launch.cuh"
#include "cuda/ops.cuh"
#include "cuda/rope.cuh"

namespace pdvm::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxGroup = 16;
constexpr int kMaxSlots = 2;  // head_dim <= 2 * kThreads

__device__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

int parts_for(int head_dim) { return head_dim <= kThreads && kThreads % head_dim == 0 ? kThreads / head_dim : 1; }

size_t attention_smem(int group, int head_dim) {
  const int n_parts = parts_for(head_dim);
  return sizeof(float) * static_cast<size_t>(group) *
         (head_dim + kThreads + kWarps + kThreads + n_parts);
}

// kGroupCap >= the query heads per KV head: the per-thread arrays are sized by it, so a
// model without GQA keeps ~40 registers instead of ~120 (3x the resident blocks).
template <KvType T, int kGroupCap>
__global__ void __launch_bounds__(kThreads)
    attention_kernel(const float* __restrict__ q, KvCacheView cache, const int32_t* __restrict__ positions,
                     AttentionShape shape, int n_chunks, float* __restrict__ part_o, float* __restrict__ part_ml,
                     float* __restrict__ out) {
  pdl_begin();
  extern __shared__ float smem[];
  const int chunk = blockIdx.x, kv_head = blockIdx.y;
  const int64_t token = blockIdx.z;
  const int hd = shape.head_dim, group = shape.n_head / shape.n_head_kv;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int n_parts = hd <= kThreads && kThreads % hd == 0 ? kThreads / hd : 1;
  float* q_s = smem;                          // group x hd, pre-scaled
  float* p_s = q_s + group * hd;              // group x kThreads softmax weights of the tile
  float* red = p_s + group * kThreads;        // group x kWarps
  float* comb = red + group * kWarps;         // group x kThreads partial outputs of other parts
  float* comb_l = comb + group * kThreads;    // group x n_parts

  const int64_t pos = min(static_cast<int64_t>(positions[token]), cache.n_ctx - 1);
  const int64_t n_keys = pos + 1;
  const int64_t chunk_len = (n_keys + n_chunks - 1) / n_chunks;
  const int64_t begin = chunk * chunk_len, end = min(begin + chunk_len, n_keys);

  const float* qt = q + (token * shape.n_head + static_cast<int64_t>(kv_head) * group) * hd;
  for (int i = tid; i < group * hd; i += kThreads) q_s[i] = qt[i] * shape.scale;

  const int part = n_parts > 1 ? tid / hd : 0;
  const int d0 = n_parts > 1 ? tid % hd : tid;
  float m[kGroupCap], l[kGroupCap], acc[kGroupCap][kMaxSlots];
#pragma unroll
  for (int g = 0; g < kGroupCap; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int s = 0; s < kMaxSlots; ++s) acc[g][s] = 0.0f;
  }
  const int64_t head_offset = static_cast<int64_t>(kv_head) * hd;
  __syncthreads();

  for (int64_t tile = begin; tile < end; tile += kThreads) {
    // Scores: one key per thread.
    const int64_t p = tile + tid;
    float score[kGroupCap];
#pragma unroll
    for (int g = 0; g < kGroupCap; ++g) score[g] = p < end ? 0.0f : -INFINITY;
    if (p < end) {
      const int64_t row = p * cache.row_width + head_offset;
      for (int j = 0; j < hd; j += 8) {
        float kv[8];
        Kv<T>::load8(cache.k, row + j, kv);
#pragma unroll
        for (int g = 0; g < kGroupCap; ++g) {
          if (g < group) {
#pragma unroll
            for (int i = 0; i < 8; ++i) score[g] = fmaf(q_s[g * hd + j + i], kv[i], score[g]);
          }
        }
      }
    }
#pragma unroll
    for (int g = 0; g < kGroupCap; ++g) {
      if (g < group) {
        const float mx = warp_max(score[g]);
        if (lane == 0) red[g * kWarps + warp] = mx;
      }
    }
    __syncthreads();
#pragma unroll
    for (int g = 0; g < kGroupCap; ++g) {
      if (g < group) {
        float tile_max = red[g * kWarps];
        for (int w = 1; w < kWarps; ++w) tile_max = fmaxf(tile_max, red[g * kWarps + w]);
        const float new_m = fmaxf(m[g], tile_max);  // finite: the tile has at least one key
        p_s[g * kThreads + tid] = p < end ? expf(score[g] - new_m) : 0.0f;
        const float correction = expf(m[g] - new_m);
        l[g] *= correction;
#pragma unroll
        for (int s = 0; s < kMaxSlots; ++s) acc[g][s] *= correction;
        m[g] = new_m;
      }
    }
    __syncthreads();
    // Values: thread owns dimension(s) d, part `part` takes every n_parts-th key.
    const int n_in_tile = static_cast<int>(min(static_cast<int64_t>(kThreads), end - tile));
    for (int j = part; j < n_in_tile; j += n_parts) {
      const int64_t row = (tile + j) * cache.row_width + head_offset;
      float v[kMaxSlots];
#pragma unroll
      for (int s = 0; s < kMaxSlots; ++s) {
        const int d = d0 + s * kThreads;
        v[s] = (d < hd && (s == 0 || n_parts == 1)) ? Kv<T>::load1(cache.v, row + d) : 0.0f;
      }
#pragma unroll
      for (int g = 0; g < kGroupCap; ++g) {
        if (g < group) {
          const float pj = p_s[g * kThreads + j];
          l[g] += pj;
#pragma unroll
          for (int s = 0; s < kMaxSlots; ++s) acc[g][s] = fmaf(pj, v[s], acc[g][s]);
        }
      }
    }
    __syncthreads();
  }

  if (n_parts > 1) {
#pragma unroll
    for (int g = 0; g < kGroupCap; ++g) {
      if (g < group) {
        comb[g * kThreads + tid] = acc[g][0];
        if (d0 == 0) comb_l[g * n_parts + part] = l[g];
      }
    }
    __syncthreads();
    if (part != 0) return;
#pragma unroll
    for (int g = 0; g < kGroupCap; ++g) {
      if (g < group) {
        for (int other = 1; other < n_parts; ++other) {
          acc[g][0] += comb[g * kThreads + other * hd + d0];
          l[g] += comb_l[g * n_parts + other];
        }
      }
    }
  }

#pragma unroll
  for (int g = 0; g < kGroupCap; ++g) {
    if (g < group) {
      const int64_t q_head = token * shape.n_head + static_cast<int64_t>(kv_head) * group + g;
#pragma unroll
      for (int s = 0; s < kMaxSlots; ++s) {
        const int d = d0 + s * kThreads;
        if (d >= hd || (s > 0 && n_parts > 1)) continue;
        if (n_chunks == 1)
          out[q_head * hd + d] = acc[g][s] / l[g];
        else
          part_o[(q_head * n_chunks + chunk) * hd + d] = acc[g][s];
      }
      if (n_chunks > 1 && tid == 0) {
        part_ml[(q_head * n_chunks + chunk) * 2] = m[g];
        part_ml[(q_head * n_chunks + chunk) * 2 + 1] = l[g];
      }
    }
  }
}

__global__ void attention_merge_kernel(const float* __restrict__ part_o, const float* __restrict__ part_ml,
                                       int n_chunks, int head_dim, float* __restrict__ out) {
  pdl_begin();
  const int64_t q_head = blockIdx.x;  // token * n_head + head
  const float* ml = part_ml + q_head * n_chunks * 2;
  float max_m = -INFINITY;
  for (int c = 0; c < n_chunks; ++c)
    if (ml[2 * c + 1] > 0.0f) max_m = fmaxf(max_m, ml[2 * c]);
  float total_l = 0.0f;
  for (int c = 0; c < n_chunks; ++c)
    if (ml[2 * c + 1] > 0.0f) total_l += ml[2 * c + 1] * expf(ml[2 * c] - max_m);
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float o = 0.0f;
    for (int c = 0; c < n_chunks; ++c)
      if (ml[2 * c + 1] > 0.0f) o += part_o[(q_head * n_chunks + c) * head_dim + d] * expf(ml[2 * c] - max_m);
    out[q_head * head_dim + d] = o / total_l;
  }
}

__device__ void quantize_q8_0_block(float x, uint8_t* block, int lane) {
  float amax = fabsf(x);
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  block[2 + lane] = static_cast<uint8_t>(static_cast<int8_t>(roundf(x * id)));
  if (lane == 0) *reinterpret_cast<__half*>(block) = __float2half_rn(d);
}

// Stores n values of K and of V at column `offset` of cache row `pos`, converted to the cache's
// type, by all threads of the block (Q8_0: offset and n whole 32-blocks, one warp per block).
template <KvType T>
__device__ void store_kv_span(const KvCacheView& cache, int64_t pos, int64_t offset, const float* k, const float* v,
                              int64_t n) {
  if constexpr (T == KvType::kQ8_0) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    const int64_t row_bytes = cache.row_width / 32 * 34;
    uint8_t* k_row = static_cast<uint8_t*>(cache.k) + pos * row_bytes + offset / 32 * 34;
    uint8_t* v_row = static_cast<uint8_t*>(cache.v) + pos * row_bytes + offset / 32 * 34;
    for (int64_t b = warp; b < n / 32; b += n_warps) {
      quantize_q8_0_block(k[b * 32 + lane], k_row + b * 34, lane);
      quantize_q8_0_block(v[b * 32 + lane], v_row + b * 34, lane);
    }
  } else {
    using Elem = std::conditional_t<T == KvType::kF16, __half, float>;
    Elem* k_row = static_cast<Elem*>(cache.k) + pos * cache.row_width + offset;
    Elem* v_row = static_cast<Elem*>(cache.v) + pos * cache.row_width + offset;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      if constexpr (T == KvType::kF16) {
        k_row[i] = __float2half_rn(k[i]);
        v_row[i] = __float2half_rn(v[i]);
      } else {
        k_row[i] = k[i];
        v_row[i] = v[i];
      }
    }
  }
}

template <KvType T>
__global__ void kv_store_kernel(KvCacheView cache, const float* __restrict__ k, const float* __restrict__ v,
                                const int32_t* __restrict__ positions) {
  pdl_begin();
  const int64_t token = blockIdx.x;
  const int64_t pos = positions[token];
  if (pos < 0 || pos >= cache.n_ctx) return;  // the model checks room before storing
  store_kv_span<T>(cache, pos, 0, k + token * cache.row_width, v + token * cache.row_width, cache.row_width);
}

// The RoPE of Q and K and the store of K and V in one launch: one block per (token, head) of Q
// and K, as rope_kernel; a K block then stores its rotated head and the same head of V, with
// kv_store_kernel's conversions (a Q8_0 head is whole 32-blocks: head_dim % 32 == 0).
template <KvType T>
__global__ void rope_kv_store_kernel(RopeTarget q, RopeTarget k, const float* __restrict__ v, KvCacheView cache,
                                     const int32_t* __restrict__ positions, int head_dim, int n_rot, float freq_base,
                                     const float* __restrict__ freq_factors) {
  pdl_begin();
  const int heads = q.n_heads + k.n_heads;
  const int token = blockIdx.x / heads, index = blockIdx.x % heads;
  const bool is_k = index >= q.n_heads;
  const RopeTarget& target = is_k ? k : q;
  const int head = is_k ? index - q.n_heads : index;
  float* h = target.x + (static_cast<int64_t>(token) * target.n_heads + head) * head_dim;
  const int64_t pos = positions[token];
  rope_head(h, static_cast<float>(pos), n_rot, freq_base, freq_factors);
  if (!is_k || pos < 0 || pos >= cache.n_ctx) return;  // the model checks room before storing
  __syncthreads();  // the rotated head, written by other threads of the block
  const int64_t offset = static_cast<int64_t>(head) * head_dim;
  store_kv_span<T>(cache, pos, offset, h, v + token * cache.row_width + offset, head_dim);
}

}  // namespace

bool rope_kv_store(CudaContext& ctx, RopeTarget q, RopeTarget k, const float* v, const KvCacheView& cache,
                   const int32_t* positions, int n_tokens, int head_dim, int n_rot, float freq_base,
                   const float* freq_factors) {
  if (int64_t{k.n_heads} * head_dim != cache.row_width || (cache.type == KvType::kQ8_0 && head_dim % 32 != 0))
    return false;
  const int threads = std::clamp((n_rot / 2 + 31) / 32 * 32, 32, 256);
  dispatch_kv(cache.type, [&](auto type) {
    launch(ctx, "rope_kv_store_kernel", rope_kv_store_kernel<decltype(type)::value>,
           dim3(n_tokens * (q.n_heads + k.n_heads)), dim3(threads), 0, q, k, v, cache, positions, head_dim, n_rot,
           freq_base, freq_factors);
  });
  return true;
}

void kv_store(CudaContext& ctx, const KvCacheView& cache, const float* k, const float* v, const int32_t* positions,
              int n_tokens) {
  dispatch_kv(cache.type, [&](auto type) {
    launch(ctx, "kv_store_kernel", kv_store_kernel<decltype(type)::value>, dim3(n_tokens), dim3(256), 0, cache, k, v,
           positions);
  });
}

void attention(CudaContext& ctx, const float* q, const KvCacheView& cache, const int32_t* positions,
               const AttentionShape& shape, int n_tokens, float* out) {
  const int group = shape.n_head / shape.n_head_kv;
  if (shape.n_head_kv <= 0 || shape.n_head % shape.n_head_kv != 0 || group > kMaxGroup || shape.head_dim % 8 != 0 ||
      shape.head_dim > kMaxSlots * kThreads || (cache.type == KvType::kQ8_0 && shape.head_dim % 32 != 0))
    throw_error(ErrorKind::kUnsupported,
                "cuda: attention with " + std::to_string(shape.n_head) + " heads, " + std::to_string(shape.n_head_kv) +
                    " KV heads and head_dim " + std::to_string(shape.head_dim) + " is not supported");
  if (n_tokens > kMaxExactAttentionTokens && tiled_attention_supports(shape, cache))
    return tiled_attention(ctx, q, cache, positions, shape, n_tokens, out);
  // Enough blocks to fill the device twice over, but chunks of at least 256 keys at full context.
  const int64_t work = int64_t{shape.n_head_kv} * n_tokens;
  const int64_t wanted = (2 * int64_t{ctx.sm_count} + work - 1) / work;
  const int n_chunks = static_cast<int>(std::clamp<int64_t>(wanted, 1, std::max<int64_t>(1, cache.n_ctx / 256)));
  float* part_o = nullptr;
  float* part_ml = nullptr;
  if (n_chunks > 1) {
    const int64_t n_partials = int64_t{n_tokens} * shape.n_head * n_chunks;
    auto* base = static_cast<float*>(ctx.attention_partials.get(
        static_cast<uint64_t>(n_partials * (shape.head_dim + 2)) * sizeof(float), "attention partials", ctx.capturing));
    part_o = base;
    part_ml = base + n_partials * shape.head_dim;
  }
  const dim3 grid(static_cast<unsigned>(n_chunks), static_cast<unsigned>(shape.n_head_kv),
                  static_cast<unsigned>(n_tokens));
  dispatch_kv(cache.type, [&](auto type) {
    constexpr KvType kType = decltype(type)::value;
    auto start = [&](auto kernel) {
      launch(ctx, "attention_kernel", kernel, grid, dim3(kThreads), attention_smem(group, shape.head_dim), q, cache,
             positions, shape, n_chunks, part_o, part_ml, out);
    };
    if (group == 1)
      start(attention_kernel<kType, 1>);
    else if (group <= 4)
      start(attention_kernel<kType, 4>);
    else if (group <= 8)
      start(attention_kernel<kType, 8>);
    else
      start(attention_kernel<kType, kMaxGroup>);
  });
  if (n_chunks > 1) {
    launch(ctx, "attention_merge_kernel", attention_merge_kernel, dim3(n_tokens * shape.n_head),
           dim3(std::min(shape.head_dim, 256)), 0, static_cast<const float*>(part_o), static_cast<const float*>(part_ml),
           n_chunks, shape.head_dim, out);
  }
}

}  // namespace pdvm::cuda
