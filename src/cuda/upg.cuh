// UPG matrices on the CUDA backend (src/cuda/upg_matvec.cu): the components uploaded as they
// are in the file, a warp-per-row matvec and a row gather for the embedding.
#pragma once

#include <array>
#include <cstdint>

#include "cuda/context.cuh"
#include "pdvm/backend.h"
#include "pdvm/upg_matrix.h"

namespace pdvm::cuda {

// Device pointers of one UPG matrix; a weight Tensor of a UPG type on this backend has `data`
// pointing to one of these (host memory), `owner` keeping it and the device copy alive.
struct UpgDeviceMatrix {
  int bits = 4;
  int64_t k = 0, n = 0, block = 32, nnz = 0;
  const uint8_t* codes = nullptr;
  const int8_t* bscale = nullptr;
  const int8_t* lut = nullptr;
  const float* rscale = nullptr;
  const int32_t* rowptr = nullptr;
  const uint16_t* idx16 = nullptr;
  const uint32_t* idx32 = nullptr;
  const uint16_t* val = nullptr;
};

Tensor upload_upg_weight(CudaContext& ctx, TensorType type, std::array<int64_t, 4> ne, const UpgMatrix& m);
// out[t * n + j] = dot(row j, x_t) for n_tokens tokens (x: n_tokens rows of k floats).
void upg_matmul(CudaContext& ctx, const UpgDeviceMatrix& w, const float* x, float* out, int n_tokens);
// out[t] = row ids[t] decompressed.
void upg_get_rows(CudaContext& ctx, const UpgDeviceMatrix& w, const int32_t* ids, int n_tokens, float* out);

}  // namespace pdvm::cuda
