// Weight x activation products: a warp-per-rows matvec for decode (weights streamed once, x
// read through L1 (Q8_0 and Q4_0: an int8 copy of x and integer dot products), split-k for few
// long rows) and, for batches, F16 tensor-core GEMMs (cuBLAS).
#include <algorithm>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "cuda/env_switch.h"
#include "cuda/int8_dot.cuh"
#include "cuda/launch.cuh"
#include "cuda/ops.cuh"
#include "cuda/swiglu.cuh"

namespace pdvm::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;

__host__ __device__ int64_t x_float4s(const WeightView& w, int chunk) {
  const int64_t f4 = (w.n_chunks * chunk + 3) / 4;
  return (f4 + 7) / 8 * 8;  // whole swizzle groups
}

// Up to kMaxMatvecBatch matrices sharing x (e.g. Q, K and V) in one launch. Each matrix's
// rows start at a multiple of kRows in the combined numbering, so a warp's rows never straddle
// two matrices. With swiglu_out, w[0] and w[1] are gate and up: a warp takes the same rows of
// both (numbered over gate's rows only) and also writes silu(gate) * up.
struct MatvecBatch {
  WeightView w[kMaxMatvecBatch];
  float* out[kMaxMatvecBatch];
  int64_t first_row[kMaxMatvecBatch + 1];
  int count;
  float* swiglu_out;
  int prefetch_steps;  // load steps of each warp's first rows warmed in L2 before the PDL wait
};

// Where a matvec reads x: float4s staged in shared memory (rows padded past k), float4s from
// global memory through L1, or the int8 copy made by quantize_x_kernel (Q8_0, Q4_0).
enum class XMode { kShared, kGlobal, kInt8 };

template <typename Format>
constexpr bool kInt8Activations = std::is_same_v<Format, Q8_0Format> || std::is_same_v<Format, Q4_0Format>;

// A block of kWarps warps works on kWarps / kSplit groups of Format::kRows rows (of gate and
// of up with kSwiglu); the kSplit warps of a group share the row's chunks (split-k) so that
// matrices with few, long rows still put enough loads in flight.
template <typename Format, int kSplit, XMode kX, bool kSwiglu = false>
__global__ void __launch_bounds__(kThreads) matvec_kernel(const __grid_constant__ MatvecBatch batch,
                                                           const float* __restrict__ x, const int8_t* __restrict__ xq,
                                                           const float2* __restrict__ x_ds) {
  constexpr int R = Format::kRows;
  constexpr int kMatrices = kSwiglu ? 2 : 1;  // matrices whose rows a warp walks together
  constexpr int RR = kMatrices * R;
  // Integer dot products are cheap enough to keep twice the loads in flight; gate and up
  // together keep the loads in flight of one matrix.
  constexpr int kUnroll = (kX == XMode::kInt8 ? 2 * Format::kUnroll : Format::kUnroll) / kMatrices;
  static_assert(kUnroll >= 1);
  constexpr int kGroups = kWarps / kSplit;
  constexpr int kStride = 32 * kSplit;
  extern __shared__ float4 xs[];
  __shared__ float partial[kWarps][RR];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = warp / kSplit, part = warp % kSplit;
  const int64_t total_rows = batch.first_row[kSwiglu ? 1 : batch.count];
  {
    // No kernel writes weights: warm L2 with each lane's first chunks while the previous
    // kernel finishes (the offset is exact for 16-byte chunk streams, close for K-quants).
    const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kGroups * R + group * R;
    if (row0 < total_rows) {
      int m = 0;
      while (!kSwiglu && m + 1 < batch.count && row0 >= batch.first_row[m + 1]) ++m;
#pragma unroll
      for (int i = 0; i < kMatrices; ++i) {
        const WeightView& w = batch.w[m + i];
        for (int u = 0; u < batch.prefetch_steps; ++u) {
          const int64_t c = part * 32 + lane + kStride * u;
          if (c < w.n_chunks) {
#pragma unroll
            for (int r = 0; r < R; ++r)
              prefetch_l2(w.q + min(row0 - batch.first_row[m] + r, w.n_rows - 1) * w.q_row_bytes +
                          c * w.q_row_bytes / w.n_chunks);
          }
        }
      }
    }
  }
  pdl_begin();
  const int64_t token = blockIdx.y;
  const int64_t k = batch.w[0].k;
  const float* xt = x + token * k;
  if constexpr (kX == XMode::kShared) {
    const int64_t n_f4 = x_float4s(batch.w[0], Format::kChunk);
    for (int64_t f = threadIdx.x; f < n_f4; f += kThreads) {
      float v[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = 4 * f + j < k ? xt[4 * f + j] : 0.0f;
      xs[xs_index(f)] = make_float4(v[0], v[1], v[2], v[3]);
    }
    __syncthreads();
  }
  using XAccess = std::conditional_t<kX == XMode::kShared, XShared, std::conditional_t<kX == XMode::kGlobal, XGlobal, XInt8>>;
  XAccess x_access;
  if constexpr (kX == XMode::kShared)
    x_access.xs = xs;
  else if constexpr (kX == XMode::kGlobal)
    x_access.x = reinterpret_cast<const float4*>(xt);
  else
    x_access = XInt8{reinterpret_cast<const int4*>(xq + token * k), x_ds + token * (k / 32)};

  // Every warp of the block runs the same iterations (the split-k reduction syncs the block).
  for (int64_t block_row = static_cast<int64_t>(blockIdx.x) * kGroups * R; block_row < total_rows;
       block_row += static_cast<int64_t>(gridDim.x) * kGroups * R) {
    const int64_t row0 = block_row + group * R;
    float acc[RR] = {};  // with kSwiglu: gate's rows, then up's
    int m = 0;
    int64_t local0 = 0;
    if (row0 < total_rows) {
      while (!kSwiglu && m + 1 < batch.count && row0 >= batch.first_row[m + 1]) ++m;
      const WeightView& w = batch.w[m];
      local0 = row0 - batch.first_row[m];
      int64_t rows[R];
#pragma unroll
      for (int r = 0; r < R; ++r) rows[r] = min(local0 + r, w.n_rows - 1);  // tail rows repeat the last
      for (int64_t c = part * 32 + lane; c < w.n_chunks; c += kStride * kUnroll) {
        typename Format::Frag frags[kUnroll][RR];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u)
          if (c + kStride * u < w.n_chunks)
#pragma unroll
            for (int i = 0; i < kMatrices; ++i)
#pragma unroll
              for (int r = 0; r < R; ++r) frags[u][i * R + r] = Format::load(batch.w[m + i], rows[r], c + kStride * u);
#pragma unroll
        for (int u = 0; u < kUnroll; ++u)
          if (c + kStride * u < w.n_chunks) {
            if constexpr (kX == XMode::kInt8)
              Format::template accumulate_int8<RR>(frags[u], c + kStride * u, x_access, acc);
            else
              Format::template accumulate<RR>(frags[u], c + kStride * u, x_access, acc);
          }
      }
    }
#pragma unroll
    for (int r = 0; r < RR; ++r) {
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], offset);
    }
    if constexpr (kSplit > 1) {
      if (lane == 0) {
#pragma unroll
        for (int r = 0; r < RR; ++r) partial[warp][r] = acc[r];
      }
      __syncthreads();
      if (part == 0 && lane == 0) {
        for (int other = 1; other < kSplit; ++other) {
#pragma unroll
          for (int r = 0; r < RR; ++r) acc[r] += partial[warp + other][r];
        }
      }
      __syncthreads();
    }
    if (part == 0 && lane == 0 && row0 < total_rows) {
      const int64_t n_rows = batch.w[m].n_rows;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        if (local0 + r >= n_rows) continue;
        const int64_t e = token * n_rows + local0 + r;
#pragma unroll
        for (int i = 0; i < kMatrices; ++i) batch.out[m + i][e] = acc[i * R + r];
        if constexpr (kSwiglu) batch.swiglu_out[e] = silu_times(acc[r], acc[R + r]);
      }
    }
  }
}

template <typename Format>
__global__ void dequantize_f16_kernel(WeightView w, __half* __restrict__ out) {
  pdl_begin();
  const int64_t row = blockIdx.y;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < w.n_chunks;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    Format::dequant(Format::load(w, row, c), c, out + row * w.k, w.k);
  }
}

// The same, one row at a time through shared memory: the formats write single elements
// (scattered in the 4-bit and K-quant layouts), which costs little in shared memory, and the
// row leaves in 16-byte stores (as 2-byte global stores the GEMM dequantization of a 13B
// Q8_0 model took ~140 ms per prefill batch). Needs k % 8 == 0.
template <typename Format>
__global__ void __launch_bounds__(256) dequantize_rows_f16_kernel(WeightView w, __half* __restrict__ out) {
  pdl_begin();
  extern __shared__ uint4 row_vectors[];
  __half* row = reinterpret_cast<__half*>(row_vectors);
  const int64_t n_vectors = w.k / 8;
  for (int64_t r = blockIdx.x; r < w.n_rows; r += gridDim.x) {
    for (int64_t c = threadIdx.x; c < w.n_chunks; c += blockDim.x) Format::dequant(Format::load(w, r, c), c, row, w.k);
    __syncthreads();
    uint4* dst = reinterpret_cast<uint4*>(out + r * w.k);
    for (int64_t i = threadIdx.x; i < n_vectors; i += blockDim.x) dst[i] = row_vectors[i];
    __syncthreads();  // the row buffer is rewritten next
  }
}

// x as int8 per 32-block for XMode::kInt8: one warp per block.
__global__ void quantize_x_kernel(const float* __restrict__ x, int64_t k, int8_t* __restrict__ xq,
                                  float2* __restrict__ x_ds) {
  pdl_begin();
  const int lane = threadIdx.x % 32;
  const int64_t token = blockIdx.y, n_blocks = k / 32;
  const int warps = blockDim.x / 32;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * warps + threadIdx.x / 32; b < n_blocks;
       b += static_cast<int64_t>(gridDim.x) * warps) {
    const int64_t e = token * k + b * 32 + lane;
    const auto codes = int8_dot::quantize_block<32>({x[e]});
    xq[e] = static_cast<int8_t>(codes.q[0]);
    if (lane == 0) x_ds[token * n_blocks + b] = make_float2(codes.d, codes.d * static_cast<float>(codes.sum));
  }
}

__global__ void to_f16_kernel(const float* __restrict__ x, __half* __restrict__ out, int64_t n) {
  pdl_begin();
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = __float2half_rn(x[i]);
}

// Only the shared-x variants (dense formats, for rows padded past k) use dynamic shared memory.
template <typename Format>
constexpr bool kHasSharedXVariant =
    std::is_same_v<Format, F32Format> || std::is_same_v<Format, F16Format> || std::is_same_v<Format, BF16Format>;

// Largest dynamic shared memory the shared-x kernel may use (the opt-in limit less its static
// reduction buffer).
template <typename Format>
int shared_x_limit(const CudaContext& ctx) {
  cudaFuncAttributes attributes{};
  PDVM_CUDA_CHECK(cudaFuncGetAttributes(&attributes, matvec_kernel<Format, 1, XMode::kShared>));
  return ctx.max_smem_per_block - static_cast<int>(attributes.sharedSizeBytes);
}

// PDVM_CUDA_SWIGLU_PAIR=0 keeps SwiGLU out of the gate/up products (A/B timing).
bool swiglu_pairing_enabled() {
  static const bool enabled = !env_equals("PDVM_CUDA_SWIGLU_PAIR", "0");
  return enabled;
}

// Load steps of each warp's first rows warmed in L2 before the PDL wait: one (its first
// chunk of each row). The whole first batch (4 steps) made 13B F16 decode 2.7 % slower on an
// H100 (docs/perf-notes.md, session 4 cuda-f16); PDVM_CUDA_MATVEC_PREFETCH=N sets it (A/B timing).
int prefetch_steps() {
  static const int steps = [] {
    const char* env = std::getenv("PDVM_CUDA_MATVEC_PREFETCH");
    return env ? std::max(0, std::atoi(env)) : 1;
  }();
  return steps;
}

// The decode matvec of views (count matrices sharing x); with swiglu_out, views are gate and
// up (count 2, same shape) and the SwiGLU of their products is written too.
void launch_matvec(CudaContext& ctx, const WeightView* views, float* const* outs, int count, const float* x,
                   int n_tokens, float* swiglu_out) {
  const WeightView& w = views[0];
  dispatch_format(w.format, [&](auto f) {
    using Format = decltype(f);
    constexpr int R = Format::kRows;
    MatvecBatch batch{};
    batch.count = count;
    batch.swiglu_out = swiglu_out;
    batch.prefetch_steps = prefetch_steps();
    for (int m = 0; m < count; ++m) {
      PDVM_CHECK(views[m].format == w.format && views[m].k == w.k);
      batch.w[m] = views[m];
      batch.out[m] = outs[m];
      batch.first_row[m + 1] = batch.first_row[m] + (views[m].n_rows + R - 1) / R * R;
    }
    // x straight from global memory needs every chunk inside k (no padded rows).
    const bool shared_x = w.n_chunks * Format::kChunk != w.k;
    PDVM_CHECK(!shared_x || kHasSharedXVariant<Format>);
    PDVM_CHECK(!swiglu_out || (count == 2 && !shared_x && views[1].n_rows == w.n_rows));
    const int64_t smem = shared_x ? x_float4s(w, Format::kChunk) * 16 : 0;
    if (shared_x && smem > shared_x_limit<Format>(ctx))
      throw_error(ErrorKind::kUnsupported, "cuda: matmul with rows of " + std::to_string(w.k) +
                                               " elements exceeds the shared memory of the device");
    // Split rows across warps when there are too few row groups to fill the device
    // (~24 warps per SM), as long as each warp still gets a whole pass of chunks.
    const int64_t groups = batch.first_row[swiglu_out ? 1 : count] / R;
    const bool split = !shared_x && groups < int64_t{ctx.sm_count} * 24 && w.n_chunks >= 32 * 4;
    const int split_factor = split ? 4 : 1;
    const int64_t blocks = (groups * split_factor + kWarps - 1) / kWarps;
    const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(n_tokens));
    int8_t* xq = nullptr;
    float2* x_ds = nullptr;
    if constexpr (kInt8Activations<Format>) {
      // k is whole 32-blocks for these formats; one quantized copy serves the whole batch.
      const int64_t n_blocks = w.k / 32;
      auto* base = static_cast<uint8_t*>(ctx.matvec_x8.get(
          static_cast<uint64_t>(n_tokens * (w.k + n_blocks * 8)), "int8 matvec activations", ctx.capturing));
      xq = reinterpret_cast<int8_t*>(base);  // whole 32-byte blocks: the scales after it stay aligned
      x_ds = reinterpret_cast<float2*>(base + n_tokens * w.k);
      constexpr int kQuantizeThreads = 256;
      const dim3 quantize_grid(static_cast<unsigned>(grid_for(n_blocks * 32, kQuantizeThreads, ctx.sm_count)),
                               static_cast<unsigned>(n_tokens));
      launch(ctx, "quantize_x_kernel", quantize_x_kernel, quantize_grid, dim3(kQuantizeThreads), 0, x, w.k, xq, x_ds);
    }
    auto start = [&](auto kernel) {
      launch(ctx, "matvec_kernel", kernel, grid, dim3(kThreads), static_cast<size_t>(smem), batch, x,
             static_cast<const int8_t*>(xq), static_cast<const float2*>(x_ds));
    };
    constexpr XMode kStreamed = kInt8Activations<Format> ? XMode::kInt8 : XMode::kGlobal;
    if (swiglu_out) {
      if constexpr (kHasSharedXVariant<Format>) {
        if (split)
          start(matvec_kernel<Format, 4, XMode::kGlobal, true>);
        else
          start(matvec_kernel<Format, 1, XMode::kGlobal, true>);
      }
    } else if (shared_x) {
      if constexpr (kHasSharedXVariant<Format>) start(matvec_kernel<Format, 1, XMode::kShared>);
    } else if (split) {
      start(matvec_kernel<Format, 4, kStreamed>);
    } else {
      start(matvec_kernel<Format, 1, kStreamed>);
    }
  });
}

}  // namespace

void configure_matvec(const CudaContext& ctx) {
  const WeightFormat formats[] = {WeightFormat::kF32, WeightFormat::kF16, WeightFormat::kBF16};
  for (WeightFormat format : formats) {
    dispatch_format(format, [&](auto f) {
      using Format = decltype(f);
      if constexpr (kHasSharedXVariant<Format>) {
        PDVM_CUDA_CHECK(cudaFuncSetAttribute(matvec_kernel<Format, 1, XMode::kShared>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             shared_x_limit<Format>(ctx)));
      }
    });
  }
}

void matvec(CudaContext& ctx, const WeightView* views, float* const* outs, int count, const float* x, int n_tokens) {
  PDVM_CHECK(count >= 1 && count <= kMaxMatvecBatch);
  if (streaming_matvec(ctx, views, outs, count, x, n_tokens)) return;
  launch_matvec(ctx, views, outs, count, x, n_tokens, nullptr);
}

bool joins_swiglu(const WeightView& gate, const WeightView& up) {
  if (!swiglu_pairing_enabled() || gate.format != up.format || gate.k != up.k || gate.n_rows != up.n_rows) return false;
  bool joins = false;
  dispatch_format(gate.format, [&](auto f) {
    using Format = decltype(f);
    joins = kHasSharedXVariant<Format> && gate.n_chunks * Format::kChunk == gate.k;
  });
  return joins;
}

void matvec_swiglu(CudaContext& ctx, const WeightView& gate, const WeightView& up, float* gate_out, float* up_out,
                   const float* x, int n_tokens, float* swiglu_out) {
  PDVM_CHECK(joins_swiglu(gate, up));
  const WeightView views[2] = {gate, up};
  float* const outs[2] = {gate_out, up_out};
  launch_matvec(ctx, views, outs, 2, x, n_tokens, swiglu_out);
}

void matvec(CudaContext& ctx, const WeightView& w, const float* x, float* out, int n_tokens) {
  matvec(ctx, &w, &out, 1, x, n_tokens);
}

void dequantize_f16(CudaContext& ctx, const WeightView& w, __half* out) {
  dispatch_format(w.format, [&](auto f) {
    using Format = decltype(f);
    const int64_t row_smem = w.k * static_cast<int64_t>(sizeof(__half));
    if (w.k % 8 == 0 && row_smem <= ctx.max_smem_per_block) {
      auto* kernel = dequantize_rows_f16_kernel<Format>;
      // The device's limit, not this row's size: the attribute is the process's, and threads
      // driving other ranks on the same GPU dequantize other widths; a smaller size set between
      // another thread's call and its launch failed that launch (cudaErrorInvalidValue, in 3 of
      // 45 runs of in-process ranks sharing one H200).
      PDVM_CUDA_CHECK(
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, ctx.max_smem_per_block));
      const int64_t blocks = std::min<int64_t>(w.n_rows, int64_t{ctx.sm_count} * 8);
      launch(ctx, "dequantize_rows_f16_kernel", kernel, dim3(static_cast<unsigned>(blocks)), dim3(256),
             static_cast<size_t>(row_smem), w, out);
      return;
    }
    constexpr int kBlock = 128;
    const dim3 grid(static_cast<unsigned>((w.n_chunks + kBlock - 1) / kBlock), static_cast<unsigned>(w.n_rows));
    launch(ctx, "dequantize_f16_kernel", dequantize_f16_kernel<Format>, grid, dim3(kBlock), 0, w, out);
  });
}

void gemm(CudaContext& ctx, const WeightView& w, const float* x, float* out, int n_tokens) {
  const bool dense_f16 = w.format == WeightFormat::kF16 && w.q_row_bytes == w.k * 2;
  const __half* w16 = reinterpret_cast<const __half*>(w.q);
  if (!dense_f16) {
    auto* scratch = static_cast<__half*>(
        ctx.gemm_weights.get(static_cast<uint64_t>(w.n_rows * w.k) * 2, "dequantized GEMM weights", ctx.capturing));
    dequantize_f16(ctx, w, scratch);
    w16 = scratch;
  }
  const int64_t n_x = w.k * n_tokens;
  auto* x16 = static_cast<__half*>(
      ctx.gemm_activations.get(static_cast<uint64_t>(n_x) * 2, "GEMM activations", ctx.capturing));
  launch(ctx, "to_f16_kernel", to_f16_kernel, dim3(grid_for(n_x, 256, ctx.sm_count)), dim3(256), 0, x, x16, n_x);
  // Column-major view: out (n_rows x T) = W^T (W is k x n_rows column-major) * X (k x T).
  const float alpha = 1.0f, beta = 0.0f;
  PDVM_CUBLAS_CHECK(cublasGemmEx(ctx.cublas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(w.n_rows), n_tokens,
                                 static_cast<int>(w.k), &alpha, w16, CUDA_R_16F, static_cast<int>(w.k), x16,
                                 CUDA_R_16F, static_cast<int>(w.k), &beta, out, CUDA_R_32F,
                                 static_cast<int>(w.n_rows), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

}  // namespace pdvm::cuda
