// Weight x activation products: a warp-per-rows matvec for decode (weights streamed once,
// x in shared memory) and, for batches, F16 tensor-core GEMMs through cuBLAS.
#include <algorithm>
#include <string>

#include "cuda/ops.cuh"

namespace pdvm::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
// Rows per warp (x loads reused across them) and chunks in flight per lane.
constexpr int kRows = 2;
constexpr int kUnroll = 2;

__host__ __device__ int64_t x_float4s(const WeightView& w, int chunk) {
  const int64_t f4 = (w.n_chunks * chunk + 3) / 4;
  return (f4 + 7) / 8 * 8;  // whole swizzle groups
}

// Up to kMaxMatvecBatch matrices sharing x (e.g. Q, K and V) in one launch. Each matrix's
// rows start at a multiple of kRows in the combined numbering, so a warp's rows never straddle
// two matrices.
struct MatvecBatch {
  WeightView w[kMaxMatvecBatch];
  float* out[kMaxMatvecBatch];
  int64_t first_row[kMaxMatvecBatch + 1];
  int count;
};

template <typename Format>
__global__ void __launch_bounds__(kThreads) matvec_kernel(const __grid_constant__ MatvecBatch batch,
                                                           const float* __restrict__ x) {
  extern __shared__ float4 xs[];
  const int64_t token = blockIdx.y;
  const int64_t k = batch.w[0].k;
  const float* xt = x + token * k;
  const int64_t n_f4 = x_float4s(batch.w[0], Format::kChunk);
  for (int64_t f = threadIdx.x; f < n_f4; f += kThreads) {
    float v[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = 4 * f + j < k ? xt[4 * f + j] : 0.0f;
    xs[xs_index(f)] = make_float4(v[0], v[1], v[2], v[3]);
  }
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kWarps * kRows;
  const int64_t total_rows = batch.first_row[batch.count];
  for (int64_t row0 = (static_cast<int64_t>(blockIdx.x) * kWarps + warp) * kRows; row0 < total_rows; row0 += step) {
    int m = 0;
    while (m + 1 < batch.count && row0 >= batch.first_row[m + 1]) ++m;
    const WeightView& w = batch.w[m];
    const int64_t local0 = row0 - batch.first_row[m];
    int64_t rows[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) rows[r] = min(local0 + r, w.n_rows - 1);  // tail rows repeat the last
    float acc[kRows] = {};
    for (int64_t c = lane; c < w.n_chunks; c += 32 * kUnroll) {
      typename Format::Frag frags[kUnroll][kRows];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (c + 32 * u < w.n_chunks)
#pragma unroll
          for (int r = 0; r < kRows; ++r) frags[u][r] = Format::load(w, rows[r], c + 32 * u);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (c + 32 * u < w.n_chunks) Format::template accumulate<kRows>(frags[u], c + 32 * u, xs, acc);
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], offset);
    }
    if (lane == 0) {
#pragma unroll
      for (int r = 0; r < kRows; ++r)
        if (local0 + r < w.n_rows) batch.out[m][token * w.n_rows + local0 + r] = acc[r];
    }
  }
}

template <typename Format>
__global__ void dequantize_f16_kernel(WeightView w, __half* __restrict__ out) {
  const int64_t row = blockIdx.y;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < w.n_chunks;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    Format::dequant(Format::load(w, row, c), c, out + row * w.k, w.k);
  }
}

__global__ void to_f16_kernel(const float* __restrict__ x, __half* __restrict__ out, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = __float2half_rn(x[i]);
}

int grid_for(int64_t n, int threads, int sm_count) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), int64_t{sm_count} * 16));
}

}  // namespace

void configure_matvec(const CudaContext& ctx) {
  const WeightFormat formats[] = {WeightFormat::kF32,  WeightFormat::kF16,  WeightFormat::kBF16, WeightFormat::kQ8_0,
                                  WeightFormat::kQ4_0, WeightFormat::kQ4_1, WeightFormat::kQ4_K, WeightFormat::kQ6_K};
  for (WeightFormat format : formats) {
    dispatch_format(format, [&](auto f) {
      PDVM_CUDA_CHECK(cudaFuncSetAttribute(matvec_kernel<decltype(f)>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           ctx.max_smem_per_block));
    });
  }
}

void matvec(CudaContext& ctx, const WeightView* views, float* const* outs, int count, const float* x, int n_tokens) {
  PDVM_CHECK(count >= 1 && count <= kMaxMatvecBatch);
  MatvecBatch batch{};
  batch.count = count;
  for (int m = 0; m < count; ++m) {
    PDVM_CHECK(views[m].format == views[0].format && views[m].k == views[0].k);
    batch.w[m] = views[m];
    batch.out[m] = outs[m];
    batch.first_row[m + 1] = batch.first_row[m] + (views[m].n_rows + kRows - 1) / kRows * kRows;
  }
  const WeightView& w = views[0];
  dispatch_format(w.format, [&](auto f) {
    using Format = decltype(f);
    const int64_t smem = x_float4s(w, Format::kChunk) * 16;
    if (smem > ctx.max_smem_per_block)
      throw_error(ErrorKind::kUnsupported, "cuda: matmul with rows of " + std::to_string(w.k) +
                                               " elements exceeds the shared memory of the device");
    int blocks_per_sm = 0;
    PDVM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, matvec_kernel<Format>, kThreads,
                                                                  static_cast<size_t>(smem)));
    const int64_t needed = (batch.first_row[count] + kWarps * kRows - 1) / (kWarps * kRows);
    const int64_t resident = int64_t{ctx.sm_count} * std::max(blocks_per_sm, 1);
    const dim3 grid(static_cast<unsigned>(std::min(needed, resident)), static_cast<unsigned>(n_tokens));
    matvec_kernel<Format><<<grid, kThreads, static_cast<size_t>(smem), ctx.stream>>>(batch, x);
    PDVM_CUDA_CHECK_LAUNCH("matvec_kernel");
  });
}

void matvec(CudaContext& ctx, const WeightView& w, const float* x, float* out, int n_tokens) {
  matvec(ctx, &w, &out, 1, x, n_tokens);
}

void dequantize_f16(CudaContext& ctx, const WeightView& w, __half* out) {
  dispatch_format(w.format, [&](auto f) {
    using Format = decltype(f);
    constexpr int kBlock = 128;
    const dim3 grid(static_cast<unsigned>((w.n_chunks + kBlock - 1) / kBlock), static_cast<unsigned>(w.n_rows));
    dequantize_f16_kernel<Format><<<grid, kBlock, 0, ctx.stream>>>(w, out);
    PDVM_CUDA_CHECK_LAUNCH("dequantize_f16_kernel");
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
  to_f16_kernel<<<grid_for(n_x, 256, ctx.sm_count), 256, 0, ctx.stream>>>(x, x16, n_x);
  PDVM_CUDA_CHECK_LAUNCH("to_f16_kernel");
  // Column-major view: out (n_rows x T) = W^T (W is k x n_rows column-major) * X (k x T).
  const float alpha = 1.0f, beta = 0.0f;
  PDVM_CUBLAS_CHECK(cublasGemmEx(ctx.cublas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(w.n_rows), n_tokens,
                                 static_cast<int>(w.k), &alpha, w16, CUDA_R_16F, static_cast<int>(w.k), x16,
                                 CUDA_R_16F, static_cast<int>(w.k), &beta, out, CUDA_R_32F,
                                 static_cast<int>(w.n_rows), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

}  // namespace pdvm::cuda
