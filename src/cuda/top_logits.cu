#include "cuda/top_logits.cuh"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <cub/device/device_radix_sort.cuh>

#include "cuda/check.cuh"
#include "sampling/sampling_exp.h"

namespace pdvm::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kStrip = 128;                        // logits a warp's maximum covers, 4 a lane
constexpr int kChunk = kThreads / 32 * kStrip;     // logits a block covers
constexpr int kMaxStrips = 4096;                   // rows up to 512k logits
constexpr int kMaxCandidates = 2048;               // logits at or above the threshold

// The float's bits made monotone; -0.0 counts as +0.0 (the host ranks them as equal). 0 is
// below every float's.
__device__ __forceinline__ uint32_t monotone(float value) {
  const uint32_t bits = __float_as_uint(value == 0.0f ? 0.0f : value);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// One integer per logit whose order is the rank order: the monotone bits, then the complemented
// id (lower ids rank first among equal logits).
__device__ __forceinline__ uint64_t rank_key(float value, int id) {
  return (static_cast<uint64_t>(monotone(value)) << 32) | ~static_cast<uint32_t>(id);
}

__host__ __device__ inline LogitCandidate from_key(uint64_t key) {
  uint32_t bits = static_cast<uint32_t>(key >> 32);
  bits = (bits & 0x80000000u) ? (bits & 0x7fffffffu) : ~bits;
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return {value, static_cast<int32_t>(~static_cast<uint32_t>(key))};
}

// Sampler::sample() after its top-k, on the k largest keys in rank order, run by warp 0 with
// the host's arithmetic (sampling_exp gives the same bits on both): the weights in parallel,
// their sums in the host's order by lane 0.
// kNotDrawn for an infinite candidate (the host's checks then decide).
__device__ int draw_token(const uint64_t* keys, int k, const DeviceDraw& d, double* nucleus_weights,
                          float* draw_weights) {
  const int lane = threadIdx.x;
  const float top = from_key(keys[0]).logit;
  bool finite = true;
  for (int i = lane; i < k; i += 32) {
    const float value = from_key(keys[i]).logit;
    finite = finite && isfinite(value);
    nucleus_weights[i] = sampling_exp(value - top);
    draw_weights[i] = sampling_exp((value - top) * d.inverse_temperature);
  }
  if (!__all_sync(0xffffffffu, finite)) return kNotDrawn;
  __syncwarp();
  int token = 0;
  if (lane == 0) {
    int kept = k;
    if (d.top_p < 1.0f) {
      double total = 0.0;
      for (int i = 0; i < kept; ++i) total += nucleus_weights[i];
      const double target = static_cast<double>(d.top_p) * total;
      double mass = 0.0;
      for (int i = 0; i < kept; ++i) {
        mass += nucleus_weights[i];
        if (mass >= target) {
          kept = i + 1;
          break;
        }
      }
    }
    if (d.min_p_on) {
      const float threshold = top + d.log_min_p;
      int i = 0;
      while (i < kept && !(from_key(keys[i]).logit < threshold)) ++i;
      kept = i;
    }
    double total = 0.0;
    for (int i = 0; i < kept; ++i) total += draw_weights[i];
    const double target = d.uniform * total;
    double mass = 0.0;
    token = from_key(keys[kept - 1]).id;
    for (int i = 0; i < kept; ++i) {
      mass += draw_weights[i];
      if (target < mass) {
        token = from_key(keys[i]).id;
        break;
      }
    }
  }
  return __shfl_sync(0xffffffffu, token, 0);
}

// The n-th largest of the strip maxima (so at least n are >= it), or 0 when there are fewer
// than n: a radix select by the whole block, 8 bits a pass, each pass's 256-bin histogram
// searched from the top by warp 0. `histogram` has 256 slots; `pick` carries the pass's result.
__device__ uint32_t select_bound(const uint32_t* maxima, int strips, int n, unsigned* histogram, uint32_t* pick) {
  const int lane = threadIdx.x % 32;
  uint32_t prefix = 0;
  int wanted = n;  // how many of the largest at this prefix are still to be passed
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += kThreads) histogram[i] = 0;
    __syncthreads();
    const uint32_t high = shift == 24 ? 0u : ~0u << (shift + 8);
    for (int i = threadIdx.x; i < strips; i += kThreads) {
      const uint32_t value = maxima[i];
      if ((value & high) == prefix) atomicAdd(&histogram[(value >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      unsigned mine = 0;
      for (int b = 0; b < 8; ++b) mine += histogram[8 * lane + b];
      unsigned from_here = mine;  // the bins of this lane and all above it
      for (int offset = 1; offset < 32; offset <<= 1) {
        const unsigned above = __shfl_down_sync(0xffffffffu, from_here, offset);
        if (lane + offset < 32) from_here += above;
      }
      const unsigned reaching = __ballot_sync(0xffffffffu, from_here >= static_cast<unsigned>(wanted));
      const int owner = reaching ? 31 - __clz(reaching) : -1;
      if (lane == (owner < 0 ? 0 : owner)) {
        uint32_t digit = 0, left = 0;
        bool found = false;
        if (owner >= 0) {
          unsigned count = from_here - mine;
          for (int b = 7; b >= 0 && !found; --b) {
            count += histogram[8 * lane + b];
            if (count >= static_cast<unsigned>(wanted)) {
              digit = 8 * lane + b;
              left = wanted - (count - histogram[digit]);
              found = true;
            }
          }
        }
        pick[0] = found ? 1u : 0u;
        pick[1] = digit;
        pick[2] = left;
      }
    }
    __syncthreads();
    if (!pick[0]) return 0;
    prefix |= pick[1] << shift;
    wanted = static_cast<int>(pick[2]);
    __syncthreads();  // the next pass clears the histogram
  }
  return prefix;
}

// Bitonic sort, largest first, of `count` (a power of two) keys in shared memory, by the block's
// first kGroup threads: all of them, or warp 0 alone (no block-wide barriers for a few keys).
template <int kGroup>
__device__ void sort_descending(uint64_t* keys, int count) {
  for (int size = 2; size <= count; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < count / 2; i += kGroup) {
        const int lo = 2 * i - (i & (stride - 1)), hi = lo + stride;
        const uint64_t a = keys[lo], b = keys[hi];
        if ((a < b) == ((lo & size) == 0)) {
          keys[lo] = b;
          keys[hi] = a;
        }
      }
      if constexpr (kGroup == 32) {
        __syncwarp();
      } else {
        __syncthreads();
      }
    }
  }
}

enum : unsigned { kRankedAll = 0, kSawNan = 1, kTooManyCandidates = 2 };

// Every warp takes the maximum of a strip of the row. If at least n strip maxima are >= t, so
// are the n largest logits: the last block to finish finds the largest such t (the n-th largest
// maximum),
// gathers the logits >= t from the strips whose maximum is, sorts them and writes the n best,
// then kRankedAll, kSawNan or kTooManyCandidates. With `draw` it then draws from the n best
// (n = top_k) and leaves the token (or kNotDrawn) in target.history[*target.count - 1] and as
// the next step's input (0 for kNotDrawn). state: [0] blocks done, [1] NaN seen; both left at 0.
__global__ void __launch_bounds__(kThreads) rank_largest(const float* logits, int vocab, int n,
                                                         uint32_t* strip_max, unsigned* state, uint64_t* out,
                                                         bool draw, DeviceDraw params, TopLogits::DrawTarget target) {
  __shared__ uint32_t maxima[kMaxStrips];
  __shared__ uint64_t candidates[kMaxCandidates];
  __shared__ double nucleus_weights[TopLogits::kMaxFiltered];
  __shared__ float draw_weights[TopLogits::kMaxFiltered];
  __shared__ unsigned histogram[256];
  __shared__ uint32_t pick[3];
  __shared__ unsigned found;
  __shared__ bool last;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int strips = (vocab + kStrip - 1) / kStrip;
  const int strip = blockIdx.x * (kThreads / 32) + warp;
  uint32_t best = 0;
  int nan = 0;
  for (int j = 0; j < kStrip; j += 32) {
    const int id = strip * kStrip + j + lane;
    if (id < vocab) {
      const float value = logits[id];
      if (isnan(value)) nan = 1;
      else best = max(best, monotone(value));
    }
  }
  best = __reduce_max_sync(0xffffffffu, best);
  if (lane == 0 && strip < strips) strip_max[strip] = best;
  if (__syncthreads_or(nan) && threadIdx.x == 0) atomicOr(&state[1], 1u);
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(&state[0], 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int i = threadIdx.x; i < strips; i += kThreads) maxima[i] = __ldcg(strip_max + i);
  if (threadIdx.x == 0) found = 0;
  __syncthreads();
  const uint32_t threshold = select_bound(maxima, strips, n, histogram, pick);
  for (int s = warp; s < strips; s += kThreads / 32) {
    if (maxima[s] < threshold) continue;
    float values[kStrip / 32];
#pragma unroll
    for (int j = 0; j < kStrip / 32; ++j) {
      const int id = s * kStrip + 32 * j + lane;
      values[j] = id < vocab ? __ldcg(logits + id) : NAN;
    }
#pragma unroll
    for (int j = 0; j < kStrip / 32; ++j) {
      if (isnan(values[j]) || monotone(values[j]) < threshold) continue;
      const unsigned slot = atomicAdd(&found, 1u);
      if (slot < kMaxCandidates) candidates[slot] = rank_key(values[j], s * kStrip + 32 * j + lane);
    }
  }
  __syncthreads();
  const unsigned count = found;
  if (count <= kMaxCandidates) {
    int size = 1;
    while (size < static_cast<int>(count) || size < n) size <<= 1;
    for (int i = count + threadIdx.x; i < size; i += kThreads) candidates[i] = 0;
    __syncthreads();
    if (size <= 256) {
      if (warp == 0) sort_descending<32>(candidates, size);
      __syncthreads();
    } else {
      sort_descending<kThreads>(candidates, size);
    }
    for (int i = threadIdx.x; i < n; i += kThreads) out[i] = candidates[i];
  }
  if (warp != 0) return;
  const unsigned saw_nan = lane == 0 ? atomicExch(&state[1], 0u) : 0u;
  const bool ranked = __shfl_sync(0xffffffffu, saw_nan, 0) == 0 && count <= kMaxCandidates;
  const int token = draw && ranked ? draw_token(candidates, n, params, nucleus_weights, draw_weights) : kNotDrawn;
  if (lane == 0) {
    out[n] = saw_nan ? kSawNan : count > kMaxCandidates ? kTooManyCandidates : kRankedAll;
    if (draw) {
      target.history[*target.count - 1] = token;
      *target.next_token = token < 0 ? 0 : token;
    }
    state[0] = 0;
  }
}

__global__ void fill_ids(int* ids, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) ids[i] = i;
}

template <class T>
T* device_alloc(size_t count) {
  void* p = nullptr;
  PDVM_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T)));
  return static_cast<T*>(p);
}

}  // namespace

TopLogits::TopLogits(int vocab) : vocab_(vocab), blocks_((vocab + kChunk - 1) / kChunk) {
  PDVM_CHECK(vocab > 0);
  strip_max_ = device_alloc<uint32_t>(static_cast<size_t>(blocks_) * kChunk / kStrip);
  state_ = device_alloc<unsigned>(2);
  PDVM_CUDA_CHECK(cudaMemset(state_, 0, 2 * sizeof(unsigned)));
  largest_ = device_alloc<uint64_t>(kMaxFiltered + 1);
  PDVM_CUDA_CHECK(cudaMallocHost(&host_keys_, (kMaxFiltered + 1) * sizeof(uint64_t)));
}

TopLogits::~TopLogits() {
  for (void* p : {static_cast<void*>(strip_max_), static_cast<void*>(state_), static_cast<void*>(largest_),
                  static_cast<void*>(ids_), static_cast<void*>(sorted_logits_), static_cast<void*>(sorted_ids_),
                  scratch_}) {
    if (p) cudaFree(p);
  }
  for (void* p : {static_cast<void*>(host_keys_), static_cast<void*>(host_logits_), static_cast<void*>(host_ids_)}) {
    if (p) cudaFreeHost(p);
  }
}

bool TopLogits::rank(const float* logits, int n, cudaStream_t stream, std::vector<LogitCandidate>& out) {
  PDVM_CHECK(n > 0 && n <= vocab_);
  if (ranks_in_one_launch(n)) {
    rank_largest<<<blocks_, kThreads, 0, stream>>>(logits, vocab_, n, strip_max_, state_, largest_, false, {}, {});
    PDVM_CUDA_CHECK_LAUNCH("rank_largest");
    PDVM_CUDA_CHECK(cudaMemcpyAsync(host_keys_, largest_, (n + 1) * sizeof(uint64_t), cudaMemcpyDeviceToHost, stream));
    PDVM_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (host_keys_[n] == kSawNan) return false;
    if (host_keys_[n] == kRankedAll) {
      out.resize(static_cast<size_t>(n));
      for (int i = 0; i < n; ++i) {
        out[i] = from_key(host_keys_[i]);
        if (!std::isfinite(out[i].logit)) return false;
      }
      return true;
    }
  }
  return rank_sorted(logits, n, stream, out);
}

bool TopLogits::ranks_in_one_launch(int n) const {
  return n > 0 && n <= kMaxFiltered && n <= vocab_ && vocab_ <= kMaxStrips * kStrip;
}

void TopLogits::queue_draw(const float* logits, const DeviceDraw& draw, const DrawTarget& target, cudaStream_t stream) {
  PDVM_CHECK(ranks_in_one_launch(draw.top_k));
  rank_largest<<<blocks_, kThreads, 0, stream>>>(logits, vocab_, draw.top_k, strip_max_, state_, largest_, true, draw,
                                                  target);
  PDVM_CUDA_CHECK_LAUNCH("rank_largest");
}

// A stable descending radix sort of the row keeps equal logits in id order (CUB ranks -0.0 and
// +0.0 as equal); NaNs land first (sign clear, above +inf) or last (sign set).
bool TopLogits::rank_sorted(const float* logits, int n, cudaStream_t stream, std::vector<LogitCandidate>& out) {
  if (!ids_) {
    ids_ = device_alloc<int>(vocab_);
    sorted_logits_ = device_alloc<float>(vocab_);
    sorted_ids_ = device_alloc<int>(vocab_);
    fill_ids<<<(vocab_ + 255) / 256, 256, 0, stream>>>(ids_, vocab_);
    PDVM_CUDA_CHECK_LAUNCH("fill_ids");
    PDVM_CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(nullptr, scratch_bytes_, logits, sorted_logits_, ids_,
                                                              sorted_ids_, vocab_));
    scratch_ = device_alloc<uint8_t>(scratch_bytes_);
  }
  PDVM_CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(scratch_, scratch_bytes_, logits, sorted_logits_, ids_,
                                                            sorted_ids_, vocab_, 0, 32, stream));
  if (n > host_capacity_) {
    if (host_logits_) PDVM_CUDA_CHECK(cudaFreeHost(host_logits_));
    if (host_ids_) PDVM_CUDA_CHECK(cudaFreeHost(host_ids_));
    host_logits_ = nullptr;
    host_ids_ = nullptr;
    host_capacity_ = 0;
    PDVM_CUDA_CHECK(cudaMallocHost(&host_logits_, (n + 1) * sizeof(float)));
    PDVM_CUDA_CHECK(cudaMallocHost(&host_ids_, n * sizeof(int)));
    host_capacity_ = n;
  }
  PDVM_CUDA_CHECK(cudaMemcpyAsync(host_logits_, sorted_logits_, n * sizeof(float), cudaMemcpyDeviceToHost, stream));
  PDVM_CUDA_CHECK(cudaMemcpyAsync(host_ids_, sorted_ids_, n * sizeof(int), cudaMemcpyDeviceToHost, stream));
  PDVM_CUDA_CHECK(cudaMemcpyAsync(host_logits_ + n, sorted_logits_ + vocab_ - 1, sizeof(float), cudaMemcpyDeviceToHost,
                                  stream));
  PDVM_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (std::isnan(host_logits_[0]) || std::isnan(host_logits_[n])) return false;
  out.resize(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    if (!std::isfinite(host_logits_[i])) return false;
    out[i] = {host_logits_[i], host_ids_[i]};
  }
  return true;
}

}  // namespace pdvm::cuda
