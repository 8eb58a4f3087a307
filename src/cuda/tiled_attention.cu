// Prefill attention on the tensor cores, flash-attention style: a block takes 64 query tokens
// of one head (16 per warp) and walks the cache rows 0..(largest position among its tokens)
// in tiles of 64 keys. Each K/V tile is converted to F16 in shared memory once and used by all
// four warps; S = Q K^T and O += P V are mma.sync m16n8k16 products with fp32 accumulation,
// and the softmax is online in fp32 with each token masked by its own position. Compared with
// one block per query token (the decode kernel), K and V are read once per 64 tokens instead
// of once per token, and the dot products run on the tensor cores.
#include <string>

#include "cuda/kv_access.cuh"
#include "cuda/launch.cuh"
#include "cuda/ops.cuh"

namespace pdvm::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRowsPerWarp = 16;  // the M of one mma
constexpr int kQueryTile = kWarps * kRowsPerWarp;
constexpr int kKeyTile = 64;
constexpr int kPad = 8;  // halves after each shared row: rows start 4 banks apart, so fragment loads don't conflict

template <int kHeadDim>
constexpr size_t smem_bytes() {
  return sizeof(__half) * static_cast<size_t>(kQueryTile + 2 * kKeyTile) * (kHeadDim + kPad) +
         sizeof(int) * kQueryTile;
}

__device__ __forceinline__ uint32_t load_pair(const __half* p) { return *reinterpret_cast<const uint32_t*>(p); }

__device__ __forceinline__ uint32_t pack_pair(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// c += a (16x16, row-major fragment) * b (16x8, column fragment).
__device__ __forceinline__ void mma_16x8x16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 F16 matrices, transposed: lanes 8i..8i+7 give the row addresses of matrix i.
__device__ __forceinline__ void load_matrices_transposed(const __half* row, uint32_t (&r)[4]) {
  const auto address = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// Eight cache elements from element e on, as F16.
template <KvType T>
__device__ uint4 load8_f16(const void* base, int64_t e) {
  if constexpr (T == KvType::kF16) {
    return __ldg(reinterpret_cast<const uint4*>(static_cast<const __half*>(base) + e));
  } else {
    float v[8];
    Kv<T>::load8(base, e, v);
    return make_uint4(pack_pair(v[0], v[1]), pack_pair(v[2], v[3]), pack_pair(v[4], v[5]), pack_pair(v[6], v[7]));
  }
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Fragment coordinates (mma.m16n8k16): lane = 4 * g + t; an accumulator holds rows g and g + 8,
// columns 2t and 2t + 1 of its 16x8 tile.
template <KvType T, int kHeadDim>
__global__ void __launch_bounds__(kThreads)
    tiled_attention_kernel(const float* __restrict__ q, KvCacheView cache, const int32_t* __restrict__ positions,
                           AttentionShape shape, int n_tokens, float* __restrict__ out) {
  pdl_begin();
  constexpr int kStride = kHeadDim + kPad;
  constexpr int kDimSteps = kHeadDim / 16;   // k-steps of S = Q K^T
  constexpr int kKeyBlocks = kKeyTile / 8;   // n-blocks of S
  constexpr int kDimBlocks = kHeadDim / 8;   // n-blocks of O
  extern __shared__ __align__(16) unsigned char smem[];
  __half* q_s = reinterpret_cast<__half*>(smem);
  __half* k_s = q_s + kQueryTile * kStride;
  __half* v_s = k_s + kKeyTile * kStride;
  int* pos_s = reinterpret_cast<int*>(v_s + kKeyTile * kStride);

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int g = lane / 4, t = lane % 4;
  // The latest tokens see the most keys: start their tiles first.
  const int64_t first_token = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * kQueryTile;
  const int head = blockIdx.y;
  const int64_t kv_offset = static_cast<int64_t>(head / (shape.n_head / shape.n_head_kv)) * kHeadDim;
  const int64_t q_width = static_cast<int64_t>(shape.n_head) * kHeadDim;

  if (tid < kQueryTile) {
    const int64_t token = first_token + tid;
    pos_s[tid] = token < n_tokens ? min(positions[token], static_cast<int>(cache.n_ctx - 1)) : -1;
  }
  // Q pre-scaled by scale * log2(e): the softmax uses exp2.
  const float q_scale = shape.scale * 1.44269504088896341f;
  for (int i = tid; i < kQueryTile * kHeadDim / 4; i += kThreads) {
    const int r = i / (kHeadDim / 4), c = i % (kHeadDim / 4) * 4;
    const int64_t token = first_token + r;
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (token < n_tokens) v = *reinterpret_cast<const float4*>(q + token * q_width + head * kHeadDim + c);
    uint2 packed;
    packed.x = pack_pair(v.x * q_scale, v.y * q_scale);
    packed.y = pack_pair(v.z * q_scale, v.w * q_scale);
    *reinterpret_cast<uint2*>(q_s + r * kStride + c) = packed;
  }
  __syncthreads();

  int block_last = -1, warp_last = -1;
  for (int r = 0; r < kQueryTile; ++r) block_last = max(block_last, pos_s[r]);
  for (int r = 0; r < kRowsPerWarp; ++r) warp_last = max(warp_last, pos_s[warp * kRowsPerWarp + r]);
  const int row_lo = warp * kRowsPerWarp + g, row_hi = row_lo + 8;
  const int pos_lo = pos_s[row_lo], pos_hi = pos_s[row_hi];

  uint32_t qf[kDimSteps][4];
#pragma unroll
  for (int s = 0; s < kDimSteps; ++s) {
    const __half* lo = q_s + row_lo * kStride + s * 16 + 2 * t;
    const __half* hi = q_s + row_hi * kStride + s * 16 + 2 * t;
    qf[s][0] = load_pair(lo);
    qf[s][1] = load_pair(hi);
    qf[s][2] = load_pair(lo + 8);
    qf[s][3] = load_pair(hi + 8);
  }
  float o[kDimBlocks][4];
#pragma unroll
  for (int n = 0; n < kDimBlocks; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.0f, l_hi = 0.0f;  // l: this thread's columns only

  for (int key0 = 0; key0 <= block_last; key0 += kKeyTile) {
    __syncthreads();  // the previous tile is consumed
    constexpr int kVectors = kHeadDim / 8;
    for (int i = tid; i < kKeyTile * kVectors; i += kThreads) {
      const int r = i / kVectors, c = i % kVectors * 8;
      const int64_t p = key0 + r;
      uint4 kw = make_uint4(0, 0, 0, 0), vw = kw;  // rows past the block's last position: zeros, never NaN
      if (p <= block_last) {
        const int64_t e = p * cache.row_width + kv_offset + c;
        kw = load8_f16<T>(cache.k, e);
        vw = load8_f16<T>(cache.v, e);
      }
      *reinterpret_cast<uint4*>(k_s + r * kStride + c) = kw;
      *reinterpret_cast<uint4*>(v_s + r * kStride + c) = vw;
    }
    __syncthreads();
    if (key0 > warp_last) continue;  // every key of the tile is in the future of this warp's tokens

    float s[kKeyBlocks][4];
#pragma unroll
    for (int j = 0; j < kKeyBlocks; ++j) {
      s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
      const __half* key = k_s + (j * 8 + g) * kStride + 2 * t;
#pragma unroll
      for (int d = 0; d < kDimSteps; ++d) mma_16x8x16(s[j], qf[d], load_pair(key + d * 16), load_pair(key + d * 16 + 8));
    }
    float max_lo = -INFINITY, max_hi = -INFINITY;
#pragma unroll
    for (int j = 0; j < kKeyBlocks; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int key = key0 + j * 8 + 2 * t + e;
        if (key > pos_lo) s[j][e] = -INFINITY;
        if (key > pos_hi) s[j][2 + e] = -INFINITY;
        max_lo = fmaxf(max_lo, s[j][e]);
        max_hi = fmaxf(max_hi, s[j][2 + e]);
      }
    }
    const float new_lo = fmaxf(m_lo, quad_max(max_lo)), new_hi = fmaxf(m_hi, quad_max(max_hi));
    // A row with no visible key yet keeps m = -inf; subtracting 0 then keeps exp2 at 0, not NaN.
    const float base_lo = new_lo == -INFINITY ? 0.0f : new_lo, base_hi = new_hi == -INFINITY ? 0.0f : new_hi;
    const float corr_lo = exp2f(m_lo - base_lo), corr_hi = exp2f(m_hi - base_hi);
    m_lo = new_lo;
    m_hi = new_hi;
    l_lo *= corr_lo;
    l_hi *= corr_hi;
#pragma unroll
    for (int n = 0; n < kDimBlocks; ++n) {
      o[n][0] *= corr_lo;
      o[n][1] *= corr_lo;
      o[n][2] *= corr_hi;
      o[n][3] *= corr_hi;
    }
#pragma unroll
    for (int j = 0; j < kKeyBlocks; ++j) {
      s[j][0] = exp2f(s[j][0] - base_lo);
      s[j][1] = exp2f(s[j][1] - base_lo);
      s[j][2] = exp2f(s[j][2] - base_hi);
      s[j][3] = exp2f(s[j][3] - base_hi);
      l_lo += s[j][0] + s[j][1];
      l_hi += s[j][2] + s[j][3];
    }
    // O += P V: the S accumulators of key blocks 2k and 2k + 1 are the A fragment of key step k.
#pragma unroll
    for (int k = 0; k < kKeyTile / 16; ++k) {
      const uint32_t a[4] = {pack_pair(s[2 * k][0], s[2 * k][1]), pack_pair(s[2 * k][2], s[2 * k][3]),
                             pack_pair(s[2 * k + 1][0], s[2 * k + 1][1]), pack_pair(s[2 * k + 1][2], s[2 * k + 1][3])};
      const __half* v_row = v_s + (k * 16 + (lane & 7) + (lane >> 3 & 1) * 8) * kStride + (lane >> 4) * 8;
#pragma unroll
      for (int n = 0; n < kDimBlocks; n += 2) {
        uint32_t b[4];
        load_matrices_transposed(v_row + n * 8, b);
        mma_16x8x16(o[n], a, b[0], b[1]);
        mma_16x8x16(o[n + 1], a, b[2], b[3]);
      }
    }
  }

  l_lo = quad_sum(l_lo);
  l_hi = quad_sum(l_hi);
  const float inv_lo = l_lo > 0.0f ? 1.0f / l_lo : 0.0f, inv_hi = l_hi > 0.0f ? 1.0f / l_hi : 0.0f;
  const int64_t token_lo = first_token + row_lo, token_hi = first_token + row_hi;
  float* out_lo = out + token_lo * q_width + head * kHeadDim + 2 * t;
  float* out_hi = out + token_hi * q_width + head * kHeadDim + 2 * t;
#pragma unroll
  for (int n = 0; n < kDimBlocks; ++n) {
    if (token_lo < n_tokens) *reinterpret_cast<float2*>(out_lo + n * 8) = make_float2(o[n][0] * inv_lo, o[n][1] * inv_lo);
    if (token_hi < n_tokens) *reinterpret_cast<float2*>(out_hi + n * 8) = make_float2(o[n][2] * inv_hi, o[n][3] * inv_hi);
  }
}

template <KvType T, int kHeadDim>
void start(CudaContext& ctx, const float* q, const KvCacheView& cache, const int32_t* positions,
           const AttentionShape& shape, int n_tokens, float* out) {
  auto* kernel = tiled_attention_kernel<T, kHeadDim>;
  constexpr size_t kSmem = smem_bytes<kHeadDim>();
  PDVM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmem)));
  const dim3 grid(static_cast<unsigned>((n_tokens + kQueryTile - 1) / kQueryTile), static_cast<unsigned>(shape.n_head));
  launch(ctx, "tiled_attention_kernel", kernel, grid, dim3(kThreads), kSmem, q, cache, positions, shape, n_tokens, out);
}

}  // namespace

bool tiled_attention_supports(const AttentionShape& shape, const KvCacheView& cache) {
  return (shape.head_dim == 64 || shape.head_dim == 128) && shape.n_head_kv > 0 &&
         shape.n_head % shape.n_head_kv == 0 && (cache.type != KvType::kQ8_0 || shape.head_dim % 32 == 0);
}

void tiled_attention(CudaContext& ctx, const float* q, const KvCacheView& cache, const int32_t* positions,
                     const AttentionShape& shape, int n_tokens, float* out) {
  PDVM_CHECK(tiled_attention_supports(shape, cache));
  dispatch_kv(cache.type, [&](auto type) {
    constexpr KvType kType = decltype(type)::value;
    if (shape.head_dim == 64)
      start<kType, 64>(ctx, q, cache, positions, shape, n_tokens, out);
    else
      start<kType, 128>(ctx, q, cache, positions, shape, n_tokens, out);
  });
}

}  // namespace pdvm::cuda
