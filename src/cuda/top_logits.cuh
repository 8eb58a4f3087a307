// A row of logits' n largest with their ids, ranked on the device, so that sampling with top-k
// copies back n pairs instead of the row. Rank order is the Sampler's: larger logit first, lower
// id first among equal ones (-0.0 ranks as +0.0).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "pdvm/logits.h"

namespace pdvm::cuda {

class TopLogits {
 public:
  // For rows of `vocab` logits on the current device.
  explicit TopLogits(int vocab);
  ~TopLogits();
  TopLogits(const TopLogits&) = delete;
  TopLogits& operator=(const TopLogits&) = delete;

  // Ranks `logits` once the work queued on `stream` is done, waits, and fills `out` with the n
  // (0 < n <= vocab) largest. False, `out` unspecified, when the row holds a NaN or one of the n
  // is infinite.
  bool rank(const float* logits, int n, cudaStream_t stream, std::vector<LogitCandidate>& out);

  // Where a draw leaves its token: history[*count - 1], and *next_token (the next step's input).
  struct DrawTarget {
    int* next_token;
    const int* count;
    int* history;
  };
  int vocab() const { return vocab_; }
  // Whether one launch ranks the n largest (rank's fast path; queue_draw needs it for top_k).
  bool ranks_in_one_launch(int n) const;
  // Queues the ranking of `logits` and a draw from its top_k largest (Sampler::sample()'s steps
  // after top-k) on `stream`, without waiting; the token, or kNotDrawn when the device cannot
  // pick (NaN in the row, an infinite candidate, too many ties at the bound), goes to `target`.
  void queue_draw(const float* logits, const DeviceDraw& draw, const DrawTarget& target, cudaStream_t stream);

  // Up to this n, one launch bounds the n largest by the maxima of strips of the row and sorts
  // only the logits above that bound; above it (or when too many logits tie there), a radix
  // sort of the whole row.
  static constexpr int kMaxFiltered = 256;

 private:
  bool rank_sorted(const float* logits, int n, cudaStream_t stream, std::vector<LogitCandidate>& out);

  int vocab_ = 0;
  int blocks_ = 0;
  // Filtered: the strips' maxima, the blocks done and a NaN flag, the n best keys + an outcome.
  uint32_t* strip_max_ = nullptr;
  unsigned* state_ = nullptr;
  uint64_t* largest_ = nullptr;
  uint64_t* host_keys_ = nullptr;  // pinned, kMaxFiltered + 1
  // Sorted: ids, the sorted row and its ids, CUB's scratch; pinned copies of the n best.
  int* ids_ = nullptr;
  float* sorted_logits_ = nullptr;
  int* sorted_ids_ = nullptr;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
  float* host_logits_ = nullptr;
  int* host_ids_ = nullptr;
  int host_capacity_ = 0;
};

}  // namespace pdvm::cuda
