// Host-side repacking of GGUF weights into the PDVM kernel layouts (see pdvm_device.cuh).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pdvm/pdvm_fused.h"

namespace pdvm::fused {

// Kernel format a GGUF type is repacked into (Q4_K, Q5_K -> Q4_1's nibbles with their own scale
// records, Q5_K's with the fifth bits,
// Q6_K -> int8 with its own scale records), or -1 when the fused kernels cannot run it.
int format_of(TensorType type);
bool is_quantized(int format);
int row_bytes_of(int format, int cols);
int scales_per_row(int format, int cols);   // f16 values in a row's scale stream
int scale_stride_of(int format, int cols);  // scales_per_row rounded up to a multiple of 8

// How the fused O and down projections split the rows of a matrix of `format` on `grid` CTAs:
// log2 of the parts (0..3) that makes the longest warp's walk (load batches over its items)
// shortest, no split on ties, for UPG, or for float rows (F16, BF16). PDVM_FUSED_SPLIT=0 never
// splits, =all also float rows; =1..3 asks for that split (the largest valid one up to it) for
// every format but UPG (tests, experiments).
int row_parts_log2(int format, int rows, int row_bytes, int grid);
// The largest split the CTA's warps allow: a row's parts go to warps k, k + parts, ..., so the
// parts divide the warps (20 warps: up to 4 parts, log2 2).
int max_row_parts_log2();

// A matrix in the kernel layout on the host: main stream + block scales (kFmtUpg: side records
// and outliers instead of scales, see DevMatrix).
struct HostMatrix {
  int format = -1;
  int rows = 0;
  int cols = 0;
  std::vector<uint8_t> data;
  std::vector<uint16_t> scales;
  std::vector<uint8_t> side;
  int side_stride = 0;
  int block_shift = -1;
  std::vector<uint16_t> outlier_col;
  std::vector<uint16_t> outlier_val;  // f16 bits
};

// Appends w's rows (GGUF layout; UPG: w.data points to a UpgMatrix) to `out`, whose format and
// width (UPG: and block size) must match.
void append_rows(HostMatrix& out, const FusedWeightView& w);
// append_rows for UPG types (pdvm_upg_repack.cpp).
void append_upg_rows(HostMatrix& out, const FusedWeightView& w);
// Bytes of a UPG side record for rows of `cols` elements with `block`-element block scales.
int upg_side_stride(int cols, int block);
// Whether the fused kernels take this UPG matrix, or why not.
std::string upg_unsupported_reason(const FusedWeightView& w);

}  // namespace pdvm::fused
