// Host entry points of the PDVM fused kernels (see pdvm_kernel.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <string>

#include "cuda/pdvm_device.cuh"

namespace pdvm::fused {

enum LaunchFlags : int {
  kFlagEmbed = 1,  // look up the input token's embedding into x first
  kFlagHead = 2,   // finish with the final norm, LM head and argmax
  kFlagPdl = 4,    // launched as a programmatic dependent of the previous kernel
  // Tensor parallelism: only one half of each layer, so that the host can all-reduce x between
  // the halves. Attention half: norm, QKV, attention, O projection; MLP half: norm, gate/up, down.
  kFlagAttnHalf = 8,
  kFlagMlpHalf = 16,
  // Tensor parallelism in one launch per layer: the kernel all-reduces x itself after the O and
  // the down projection (Params::tp_comm, tp_window).
  kFlagDeviceAllReduce = 32,
};

// Dynamic shared memory the kernel needs for this model shape.
size_t fused_smem_bytes(const Params& p);
// Largest co-resident grid (one CTA per SM when the shape fits) for fused_smem_bytes(p).
int fused_max_grid(const Params& p, int device);

// Runs layers [layer_begin, layer_end) of one token with `grid` CTAs (none, with kFlagHead: the
// head alone).
void launch_fused(const Params& p, int grid, int layer_begin, int layer_end, int flags, bool cooperative,
                  cudaStream_t stream);

// Which instance of the kernel launch_fused(p, ..., flags, ...) runs: "q4_0 only" (compiled for
// models whose matrices all have that format), "generic", "generic, int16 activations, MLP
// half", ...
std::string fused_kernel_name(const Params& p, int flags);

// The in-kernel all-reduce alone, `n_reduces` times in one launch (kFlagDeviceAllReduce's
// exchange of x, benchmarks): every rank of the group at once, with the decode's grid.
void launch_all_reduce_only(const Params& p, int grid, int n_reduces, cudaStream_t stream);

// After the head launch of a vocabulary-split head and the all-reduce of the ranks' pairs
// (Params::head_pair; `pairs` holds n_ranks of them): appends the best as the greedy token.
void launch_pick_split_token(const Params& p, float* pairs, int n_ranks, cudaStream_t stream);

// Device-side synthesis of random weights in the kernel layout (benchmarks).
void fill_random_matrix(DevMatrix& m, uint64_t seed, float amplitude, cudaStream_t stream);
void fill_random_floats(float* data, int64_t n, uint64_t seed, float center, float amplitude,
                        cudaStream_t stream);

// Streams `bytes` of `data` once and returns the achieved read bandwidth in GB/s (median of runs).
double measure_read_bandwidth(const void* data, size_t bytes, int runs, cudaStream_t stream);

}  // namespace pdvm::fused
