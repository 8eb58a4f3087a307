// Kernel launchers, one per backend op family. Pointers are device pointers; activations are
// contiguous F32 rows (row t starts at t * width). Every launch is checked.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/context.cuh"
#include "cuda/weights.cuh"

namespace pdvm::cuda {

// ---- matmul.cu --------------------------------------------------------------------------
// Sets the shared-memory limits of the matvec kernels (once per context, before any capture).
void configure_matvec(const CudaContext& ctx);
// out[t][j] = dot(row j of w, x[t]) for t < n_tokens, reading each weight once per token.
void matvec(CudaContext& ctx, const WeightView& w, const float* x, float* out, int n_tokens);
// The same for up to kMaxMatvecBatch matrices of one format and row length sharing x, in one
// launch (Q/K/V, gate/up).
constexpr int kMaxMatvecBatch = 3;
void matvec(CudaContext& ctx, const WeightView* views, float* const* outs, int count, const float* x, int n_tokens);
// Whether gate and up (F32/F16/BF16 rows without padding, same shape) can run as one launch
// that also writes the SwiGLU of their products (PDVM_CUDA_SWIGLU_PAIR=0: never).
bool joins_swiglu(const WeightView& gate, const WeightView& up);
// gate_out and up_out as matvec() writes them, and swiglu_out = silu(gate_out) * up_out as
// swiglu() would write it, in one launch; needs joins_swiglu(gate, up).
void matvec_swiglu(CudaContext& ctx, const WeightView& gate, const WeightView& up, float* gate_out, float* up_out,
                   const float* x, int n_tokens, float* swiglu_out);
// ---- streaming_matvec.cu ----------------------------------------------------------------
// The same for one token of Q8_0 or Q4_0 weights on a persistent grid; false when the format
// or shape is not one it takes (matvec() then runs its own kernels).
bool streaming_matvec(CudaContext& ctx, const WeightView* views, float* const* outs, int count, const float* x,
                      int n_tokens);
// One token's out = w * swiglu(gate, up) in one launch (Q8_0 and Q4_0 weights, which quantize
// x in the kernel anyway); hidden receives swiglu(gate, up) as swiglu() would write it. False
// when w is not one it takes.
bool streaming_swiglu_matvec(CudaContext& ctx, const WeightView& w, float* out, const float* gate, const float* up,
                             float* hidden);
// One token's RMSNorm and the products of its result in one launch (Q8_0 and Q4_0 weights):
// x (+ residual) is normed in every block; sum_out (if set) receives x + residual and out the
// normed x, as add_rms_norm() / rms_norm() would write them (either may alias x or residual).
// False when the weights are not ones it takes.
struct NormInput {
  const float* x = nullptr;
  const float* residual = nullptr;
  const float* weight = nullptr;
  float eps = 0.0f;
  float* sum_out = nullptr;
  float* out = nullptr;
};
bool streaming_norm_matvec(CudaContext& ctx, const WeightView* views, float* const* outs, int count,
                           const NormInput& norm);
// Batched: dequantize to F16 (unless already dense F16) and multiply on the tensor cores.
void gemm(CudaContext& ctx, const WeightView& w, const float* x, float* out, int n_tokens);
// Rows of w as F16 into out (n_rows x k, dense).
void dequantize_f16(CudaContext& ctx, const WeightView& w, __half* out);

// ---- elementwise.cu ---------------------------------------------------------------------
void get_rows(CudaContext& ctx, const WeightView& table, const int32_t* ids, int n_tokens, float* out);
void rms_norm(CudaContext& ctx, const float* x, const float* weight, float eps, int64_t width, int n_tokens,
              float* out);
// sum_out = a + b, then norm_out = rms_norm(sum_out) * weight (any of them may alias).
void add_rms_norm(CudaContext& ctx, const float* a, const float* b, float* sum_out, const float* weight, float eps,
                  int64_t width, int n_tokens, float* norm_out);
struct RopeTarget {
  float* x = nullptr;  // {head_dim * n_heads, n_tokens}, rotated in place
  int n_heads = 0;
};
// Rotates the heads of first and second (n_heads 0: none) in one launch.
void rope(CudaContext& ctx, RopeTarget first, RopeTarget second, const int32_t* positions, int n_tokens, int head_dim,
          int n_rot, float freq_base, const float* freq_factors);
void swiglu(CudaContext& ctx, const float* gate, const float* up, float* out, int64_t n);
void add(CudaContext& ctx, const float* a, const float* b, float* out, int64_t n);
void argmax(CudaContext& ctx, const float* logits, int64_t n_vocab, int n_tokens, int32_t* ids);

// ---- attention.cu -----------------------------------------------------------------------
enum class KvType : int { kF32, kF16, kQ8_0 };

struct KvCacheView {
  KvType type = KvType::kF16;
  void* k = nullptr;
  void* v = nullptr;
  int64_t row_width = 0;  // head_dim * n_head_kv elements per cache row
  int64_t n_ctx = 0;      // rows
};

void kv_store(CudaContext& ctx, const KvCacheView& cache, const float* k, const float* v, const int32_t* positions,
              int n_tokens);

// rope(q, k) and then kv_store(k, v) in one launch (k's heads fill the cache row); false when
// the shapes do not allow it (a Q8_0 cache needs head_dim % 32 == 0).
bool rope_kv_store(CudaContext& ctx, RopeTarget q, RopeTarget k, const float* v, const KvCacheView& cache,
                   const int32_t* positions, int n_tokens, int head_dim, int n_rot, float freq_base,
                   const float* freq_factors);

struct AttentionShape {
  int n_head = 0, n_head_kv = 0, head_dim = 0;
  float scale = 0.0f;
};
// Up to kMaxExactAttentionTokens query tokens (decode) run the fp32 flash-decoding kernel;
// more (prefill) run tiled_attention when it supports the shape.
constexpr int kMaxExactAttentionTokens = 8;
void attention(CudaContext& ctx, const float* q, const KvCacheView& cache, const int32_t* positions,
               const AttentionShape& shape, int n_tokens, float* out);

// ---- tiled_attention.cu -----------------------------------------------------------------
// Many query tokens per block on the tensor cores: F16 Q, K, V and softmax weights, fp32
// scores, softmax and accumulation (~1e-3 relative). head_dim 64 or 128.
bool tiled_attention_supports(const AttentionShape& shape, const KvCacheView& cache);
void tiled_attention(CudaContext& ctx, const float* q, const KvCacheView& cache, const int32_t* positions,
                     const AttentionShape& shape, int n_tokens, float* out);

}  // namespace pdvm::cuda
