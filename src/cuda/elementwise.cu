// Per-token and element-wise ops: embedding lookup, RMSNorm (alone or after a residual add),
// RoPE, SwiGLU, add, argmax.
#include <algorithm>
#include <cfloat>

#include "cuda/launch.cuh"
#include "cuda/ops.cuh"
#include "cuda/rope.cuh"
#include "cuda/swiglu.cuh"

namespace pdvm::cuda {
namespace {

template <typename Format>
__global__ void get_rows_kernel(WeightView table, const int32_t* __restrict__ ids, float* __restrict__ out) {
  pdl_begin();
  const int64_t token = blockIdx.y;
  float* row_out = out + token * table.k;
  const int32_t id = ids[token];
  if (id < 0 || id >= table.n_rows) {  // the model validates ids; a bad one shows up as NaN
    for (int64_t i = threadIdx.x; i < table.k; i += blockDim.x) row_out[i] = __int_as_float(0x7fc00000);
    return;
  }
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < table.n_chunks;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x)
    Format::dequant(Format::load(table, id, c), c, row_out, table.k);
}

// Sum over the block; every thread gets the result. `scratch` holds 32 floats.
__device__ float block_sum(float v, float* scratch) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.0f;
  const int n_warps = (blockDim.x + 31) / 32;
  for (int w = 0; w < n_warps; ++w) total += scratch[w];
  return total;
}

// RMSNorm rows: one block of kNormThreads per token, each thread holding up to kNormValues of
// the row in registers, so all its loads are issued before the first use (a 256-thread loop
// waited on 20 dependent L2 round trips per pass at width 5120, ~5 us per norm). Rows wider
// than kNormThreads * kNormValues finish in a loop.
constexpr int kNormThreads = 1024;
constexpr int kNormValues = 8;

// The row's squares (values into v and, past the registers, into `rest_out`), its scale, and
// then out = value * scale * weight. `value(i)` reads element i before the reduction.
template <class Value>
__device__ __forceinline__ void norm_row(Value&& value, float* rest_out, const float* __restrict__ weight, float eps,
                                         int64_t width, float* out) {
  __shared__ float scratch[32];
  float v[kNormValues];
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < kNormValues; ++j) {
    const int64_t i = threadIdx.x + j * kNormThreads;
    v[j] = i < width ? value(i) : 0.0f;
    sum += v[j] * v[j];
  }
  for (int64_t i = threadIdx.x + kNormValues * kNormThreads; i < width; i += kNormThreads) {
    const float x = value(i);
    rest_out[i] = x;
    sum += x * x;
  }
  sum = block_sum(sum, scratch);
  const float scale = 1.0f / sqrtf(sum / static_cast<float>(width) + eps);
#pragma unroll
  for (int j = 0; j < kNormValues; ++j) {
    const int64_t i = threadIdx.x + j * kNormThreads;
    if (i < width) out[i] = v[j] * scale * weight[i];
  }
  for (int64_t i = threadIdx.x + kNormValues * kNormThreads; i < width; i += kNormThreads)
    out[i] = rest_out[i] * scale * weight[i];
}

// Past the registers the row is staged in out itself (out may be x).
__global__ void __launch_bounds__(kNormThreads) rms_norm_kernel(const float* __restrict__ x,
                                                                const float* __restrict__ weight, float eps,
                                                                int64_t width, float* out) {
  pdl_begin();
  const float* xt = x + blockIdx.x * width;
  float* ot = out + blockIdx.x * width;
  norm_row([&](int64_t i) { return xt[i]; }, ot, weight, eps, width, ot);
}

// The residual add and the norm after it in one pass: sum_out = a + b, norm_out =
// rms_norm(sum_out) * weight. Buffers may alias (x = x + y, then y = norm(x)): a and b are read
// before the reduction's barrier, norm_out written after it.
__global__ void __launch_bounds__(kNormThreads) add_rms_norm_kernel(const float* a, const float* b, float* sum_out,
                                                                    const float* __restrict__ weight, float eps,
                                                                    int64_t width, float* norm_out) {
  pdl_begin();
  const int64_t offset = blockIdx.x * width;
  float* st = sum_out + offset;
  norm_row(
      [&](int64_t i) {
        const float v = a[offset + i] + b[offset + i];
        st[i] = v;
        return v;
      },
      st, weight, eps, width, norm_out + offset);
}

// One block per (token, head) of up to two tensors sharing positions (Q and K in one launch);
// thread i rotates the pair (2i, 2i+1).
__global__ void rope_kernel(RopeTarget first, RopeTarget second, const int32_t* __restrict__ positions, int head_dim,
                            int n_rot, float freq_base, const float* __restrict__ freq_factors) {
  pdl_begin();
  const int heads = first.n_heads + second.n_heads;
  const int token = blockIdx.x / heads, index = blockIdx.x % heads;
  const bool in_first = index < first.n_heads;
  const RopeTarget& target = in_first ? first : second;
  const int head = in_first ? index : index - first.n_heads;
  float* h = target.x + (static_cast<int64_t>(token) * target.n_heads + head) * head_dim;
  rope_head(h, static_cast<float>(positions[token]), n_rot, freq_base, freq_factors);
}

__global__ void swiglu_kernel(const float* __restrict__ gate, const float* __restrict__ up, float* out, int64_t n) {
  pdl_begin();
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = silu_times(gate[i], up[i]);
  }
}

__global__ void add_kernel(const float* a, const float* b, float* out, int64_t n) {
  pdl_begin();
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = a[i] + b[i];
}

struct MaxAt {
  float value;
  int64_t index;
};

__device__ MaxAt better(MaxAt a, MaxAt b) {
  if (b.value > a.value || (b.value == a.value && b.index < a.index)) return b;
  return a;
}

__global__ void argmax_kernel(const float* __restrict__ logits, int64_t n_vocab, int32_t* ids) {
  pdl_begin();
  __shared__ MaxAt scratch[32];
  const float* row = logits + blockIdx.x * n_vocab;
  MaxAt best{-INFINITY, n_vocab};
  for (int64_t i = threadIdx.x; i < n_vocab; i += blockDim.x) best = better(best, MaxAt{row[i], i});
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    MaxAt other{__shfl_xor_sync(0xffffffffu, best.value, offset),
                static_cast<int64_t>(__shfl_xor_sync(0xffffffffu, best.index, offset))};
    best = better(best, other);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = best;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) best = better(best, scratch[w]);
    ids[blockIdx.x] = best.index < n_vocab && isfinite(best.value) ? static_cast<int32_t>(best.index) : -1;
  }
}

}  // namespace

void get_rows(CudaContext& ctx, const WeightView& table, const int32_t* ids, int n_tokens, float* out) {
  dispatch_format(table.format, [&](auto f) {
    using Format = decltype(f);
    constexpr int kBlock = 128;
    const dim3 grid(static_cast<unsigned>((table.n_chunks + kBlock - 1) / kBlock), static_cast<unsigned>(n_tokens));
    launch(ctx, "get_rows_kernel", get_rows_kernel<Format>, grid, dim3(kBlock), 0, table, ids, out);
  });
}

void rms_norm(CudaContext& ctx, const float* x, const float* weight, float eps, int64_t width, int n_tokens,
              float* out) {
  launch(ctx, "rms_norm_kernel", rms_norm_kernel, dim3(n_tokens), dim3(kNormThreads), 0, x, weight, eps, width, out);
}

void add_rms_norm(CudaContext& ctx, const float* a, const float* b, float* sum_out, const float* weight, float eps,
                  int64_t width, int n_tokens, float* norm_out) {
  launch(ctx, "add_rms_norm_kernel", add_rms_norm_kernel, dim3(n_tokens), dim3(kNormThreads), 0, a, b, sum_out,
         weight, eps, width, norm_out);
}

void rope(CudaContext& ctx, RopeTarget first, RopeTarget second, const int32_t* positions, int n_tokens, int head_dim,
          int n_rot, float freq_base, const float* freq_factors) {
  const int threads = std::clamp((n_rot / 2 + 31) / 32 * 32, 32, 256);
  launch(ctx, "rope_kernel", rope_kernel, dim3(n_tokens * (first.n_heads + second.n_heads)), dim3(threads), 0, first,
         second, positions, head_dim, n_rot, freq_base, freq_factors);
}

void swiglu(CudaContext& ctx, const float* gate, const float* up, float* out, int64_t n) {
  launch(ctx, "swiglu_kernel", swiglu_kernel, dim3(grid_for(n, 256, ctx.sm_count)), dim3(256), 0, gate, up, out, n);
}

void add(CudaContext& ctx, const float* a, const float* b, float* out, int64_t n) {
  launch(ctx, "add_kernel", add_kernel, dim3(grid_for(n, 256, ctx.sm_count)), dim3(256), 0, a, b, out, n);
}

void argmax(CudaContext& ctx, const float* logits, int64_t n_vocab, int n_tokens, int32_t* ids) {
  launch(ctx, "argmax_kernel", argmax_kernel, dim3(n_tokens), dim3(1024), 0, logits, n_vocab, ids);
}

}  // namespace pdvm::cuda
