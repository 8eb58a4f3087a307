// Host-side repacking of GGUF weights into the PDVM kernel layouts (see pdvm_device.cuh).
#pragma once

#include <cstdint>
#include <vector>

#include "pdvm/pdvm_fused.h"

namespace pdvm::fused {

// Kernel format a GGUF type is repacked into (Q4_K -> Q4_1 blocks, Q6_K -> int8 with a scale
// per 16), or -1 when the fused kernels cannot run it.
int format_of(TensorType type);
bool is_quantized(int format);
int row_bytes_of(int format, int cols);
int scales_per_row(int format, int cols);   // f16 values in a row's scale stream
int scale_stride_of(int format, int cols);  // scales_per_row rounded up to a multiple of 8

// A matrix in the kernel layout on the host: main stream + block scales.
struct HostMatrix {
  int format = -1;
  int rows = 0;
  int cols = 0;
  std::vector<uint8_t> data;
  std::vector<uint16_t> scales;
};

// Appends w's rows (GGUF layout) to `out`, whose format and width must match.
void append_rows(HostMatrix& out, const FusedWeightView& w);

}  // namespace pdvm::fused
