// SIMD kernels of the fast CPU backend. Each entry point dispatches at run time (Highway) to
// the best instruction set of the machine: AVX-512, AVX2, SSE4, NEON, SVE or portable code.
#pragma once

#include <cstdint>
#include <vector>

#include "pdvm/tensor_type.h"

namespace pdvm {
struct UpgMatrix;
}

namespace pdvm::cpu {

// Elements per quantization block of the activation (and of the 32-element weight formats).
constexpr int64_t kQ8Block = 32;

// How a quantized weight row meets the activation.
enum class DotMethod {
  kDequantFma,  // decode weights to f32 and FMA with the f32 activation
  kInt8,        // quantize the activation to 8-bit blocks once, integer dot per block
  kInt16,       // same kernel, activation blocks rounded to 16 bits (int16 x int16 -> int32
                // multiply-adds cost the same, and the rounding error is 256x smaller)
};

// The activation of a matmul prepared once for all weight rows: f32 values, per-block sums,
// and (for the integer methods) blocks rounded to 8 or 16 bits, stored as int16, with scales.
struct PreparedActivation {
  int64_t k = 0;
  int64_t n_tokens = 0;
  const float* x = nullptr;        // n_tokens rows of k floats
  std::vector<float> block_sums;   // [n_tokens][k/32] sum of x over each block
  std::vector<int16_t> q;          // [n_tokens][k] quantized values (int8 or int16 range)
  std::vector<float> q_scale;      // [n_tokens][k/32] scale d of each block: x ~ d*q
  std::vector<float> q_sum;        // [n_tokens][k/32] d * sum(q) of each block
};

// Fills `act` for x (n_tokens rows of k floats) as `method` needs it; k must be a multiple of
// 32 when the activation meets a block format.
void prepare_activation(const float* x, int64_t k, int64_t n_tokens, DotMethod method,
                        PreparedActivation& act);
// Largest quantized magnitude of an integer method: 127 or 32767.
int activation_levels(DotMethod method);

// Does the kernel set have a direct kernel for `type` with `method`?
bool has_matmul_kernel(TensorType type, DotMethod method);

// out[t * out_stride + j] = dot(row j of w, x_t) for rows [row_begin, row_end) and all tokens.
// `w` holds whole rows of `row_bytes` bytes in GGUF layout; for UPG types (gemm_rows only)
// `upg` is the matrix instead.
struct MatmulTask {
  TensorType type = TensorType::kF32;
  DotMethod method = DotMethod::kDequantFma;
  const uint8_t* w = nullptr;
  int64_t row_bytes = 0;
  const PreparedActivation* act = nullptr;
  float* out = nullptr;
  int64_t out_stride = 0;
  const UpgMatrix* upg = nullptr;
};
void matmul_rows(const MatmulTask& task, int64_t row_begin, int64_t row_end);
// The same product for a batch of tokens (prefill) as a register-blocked f32 GEMM over
// weight rows dequantized once per call; `method` is ignored, only act->x is used.
void gemm_rows(const MatmulTask& task, int64_t row_begin, int64_t row_end);

// ---- small vector helpers used by attention and the element-wise ops ----
float dot_f32(const float* a, const float* b, int64_t n);
// dot(a, f16 b) and y += alpha * f16 x
float dot_f32_f16(const float* a, const uint16_t* b, int64_t n);
void axpy_f32(float alpha, const float* x, float* y, int64_t n);
void axpy_f16(float alpha, const uint16_t* x, float* y, int64_t n);
void scale_f32(float alpha, float* y, int64_t n);
void f32_to_f16(const float* x, uint16_t* y, int64_t n);
// out = silu(gate) * up
void silu_mul(const float* gate, const float* up, float* out, int64_t n);

// XOR of the 64-bit words of bytes[0, n_bytes), n_bytes a multiple of 256: a read stream.
uint64_t xor_reduce(const uint8_t* bytes, int64_t n_bytes);

// Name of the instruction set the dispatcher picked (for bench output and logs).
const char* simd_target_name();

}  // namespace pdvm::cpu
