#include "cuda/top_logits.cuh"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <cub/device/device_radix_sort.cuh>

#include "cuda/check.cuh"

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

LogitCandidate from_key(uint64_t key) {
  uint32_t bits = static_cast<uint32_t>(key >> 32);
  bits = (bits & 0x80000000u) ? (bits & 0x7fffffffu) : ~bits;
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return {value, static_cast<int32_t>(~static_cast<uint32_t>(key))};
}

// Bitonic sort, largest first, of `count` (a power of two) keys in shared memory.
__device__ void sort_descending(uint64_t* keys, int count) {
  for (int size = 2; size <= count; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < count / 2; i += kThreads) {
        const int lo = 2 * i - (i & (stride - 1)), hi = lo + stride;
        const uint64_t a = keys[lo], b = keys[hi];
        if ((a < b) == ((lo & size) == 0)) {
          keys[lo] = b;
          keys[hi] = a;
        }
      }
      __syncthreads();
    }
  }
}

enum : unsigned { kRankedAll = 0, kSawNan = 1, kTooManyCandidates = 2 };

// Every warp takes the maximum of a strip of the row. If at least n strip maxima are >= t, so
// are the n largest logits: the last block to finish finds the largest such t by bisection,
// gathers the logits >= t from the strips whose maximum is, sorts them and writes the n best,
// then kRankedAll, kSawNan or kTooManyCandidates. state: [0] blocks done, [1] NaN seen; both
// left at 0.
__global__ void __launch_bounds__(kThreads) rank_largest(const float* logits, int vocab, int n,
                                                         uint32_t* strip_max, unsigned* state, uint64_t* out) {
  __shared__ uint32_t maxima[kMaxStrips];
  __shared__ uint64_t candidates[kMaxCandidates];
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
  uint32_t threshold = 0;
  for (int bit = 31; bit >= 0; --bit) {
    const uint32_t probe = threshold | (1u << bit);
    int at_least = 0;
    for (int first = 0; first < strips; first += kThreads) {
      const int i = first + threadIdx.x;
      at_least += __syncthreads_count(i < strips && maxima[i] >= probe);
    }
    if (at_least >= n) threshold = probe;
  }
  for (int s = warp; s < strips; s += kThreads / 32) {
    if (maxima[s] < threshold) continue;
    for (int j = 0; j < kStrip; j += 32) {
      const int id = s * kStrip + j + lane;
      if (id >= vocab) continue;
      const float value = __ldcg(logits + id);
      if (isnan(value) || monotone(value) < threshold) continue;
      const unsigned slot = atomicAdd(&found, 1u);
      if (slot < kMaxCandidates) candidates[slot] = rank_key(value, id);
    }
  }
  __syncthreads();
  const unsigned count = found;
  if (count <= kMaxCandidates) {
    int size = 1;
    while (size < static_cast<int>(count) || size < n) size <<= 1;
    for (int i = count + threadIdx.x; i < size; i += kThreads) candidates[i] = 0;
    __syncthreads();
    sort_descending(candidates, size);
    for (int i = threadIdx.x; i < n; i += kThreads) out[i] = candidates[i];
  }
  if (threadIdx.x == 0) {
    const unsigned saw_nan = atomicExch(&state[1], 0u);
    out[n] = saw_nan ? kSawNan : count > kMaxCandidates ? kTooManyCandidates : kRankedAll;
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
  if (n <= kMaxFiltered && vocab_ <= kMaxStrips * kStrip) {
    rank_largest<<<blocks_, kThreads, 0, stream>>>(logits, vocab_, n, strip_max_, state_, largest_);
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
