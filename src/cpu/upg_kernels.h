// UPG matmul kernel of the fast CPU backend (Highway-dispatched, src/cpu/upg_matmul.cpp).
#pragma once

#include <cstdint>

#include "cpu/fast_kernels.h"
#include "pdvm/upg.h"

namespace pdvm::cpu {

// out[t * out_stride + j] = dot(row j of m, x_t) for rows [row_begin, row_end) and every token
// of `act`, which must be prepared with DotMethod::kInt16 (or kInt8).
void upg_matmul_rows(const UpgMatrix& m, const PreparedActivation& act, float* out, int64_t out_stride,
                     int64_t row_begin, int64_t row_end);
// The same for a MatmulTask whose `upg` is set and whose activation is prepared as above: the
// decode kernel of the backend's pool jobs.
void upg_matmul_task_rows(const MatmulTask& task, int64_t row_begin, int64_t row_end);
// upg_dequantize_row (bit for bit) with SIMD table lookups, for the prefill GEMM.
void upg_dequantize_row_fast(const UpgMatrix& m, int64_t row, float* dst);

}  // namespace pdvm::cpu
