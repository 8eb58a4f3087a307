// The CUDA backend ("cuda" in the backend registry) and device utilities. Available when the
// build has PDVM_HAVE_CUDA (link pdvm_cuda).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "pdvm/backend.h"

namespace pdvm {

// Number of usable CUDA devices; 0 when there is no driver or no device (never throws).
int cuda_device_count();

// Throws Error(kDevice) when the device cannot be used.
std::unique_ptr<Backend> make_cuda_backend(int device = 0);

struct ReadBandwidth {
  std::string device_name;
  uint64_t bytes = 0;      // bytes read per pass
  double seconds = 0.0;    // median pass time
  double gb_per_s = 0.0;   // bytes / seconds / 1e9
};

// Streams a large device buffer (`bytes`, e.g. 2 GiB) through a read-only reduction kernel
// `repeats` times and reports the median: the card's achievable read bandwidth, the yardstick
// for "% of bandwidth" figures.
ReadBandwidth measure_cuda_read_bandwidth(int device = 0, uint64_t bytes = uint64_t{2} << 30, int repeats = 9);

}  // namespace pdvm

namespace pdvm {

struct MatvecTiming {
  TensorType type = TensorType::kF16;
  int64_t k = 0;       // row length
  int64_t n_rows = 0;
  uint64_t bytes = 0;  // weight bytes one product streams
  double microseconds = 0.0;  // median per product, inside a CUDA graph
  double gb_per_s = 0.0;
};

// Times the decode matvec kernel alone on random weights (enough copies to stream from DRAM,
// not L2), for tuning and for `pdvm bench --kernels`.
MatvecTiming time_cuda_matvec(int device, TensorType type, int64_t k, int64_t n_rows);

}  // namespace pdvm
