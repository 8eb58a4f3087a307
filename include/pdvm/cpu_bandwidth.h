// The host's achievable read bandwidth, the yardstick for the CPU backend's "% of bandwidth"
// figures (the counterpart of measure_cuda_read_bandwidth).
#pragma once

#include <cstdint>

namespace pdvm {

struct HostReadBandwidth {
  int threads = 0;        // threads that streamed (the pool the decode kernels use)
  uint64_t bytes = 0;     // bytes read per pass
  double seconds = 0.0;   // median pass time
  double gb_per_s = 0.0;  // bytes / seconds / 1e9
};

// Streams a buffer of `bytes` (far larger than the last-level cache) with `threads` persistent
// threads (0: all cores), each reading one contiguous slice with SIMD loads, `repeats` times
// after one warm-up pass, and reports the median pass.
HostReadBandwidth measure_cpu_read_bandwidth(int threads = 0, uint64_t bytes = uint64_t{512} << 20,
                                             int repeats = 9);

}  // namespace pdvm
