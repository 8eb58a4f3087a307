// Tensor-parallel PDVM fused decode (issue #9, docs/multi-gpu.md): one FusedDecoder per rank,
// each holding 1/N of the attention heads, KV heads and FFN columns (Q/K/V and gate/up split by
// rows, O and down by columns, embedding and norms replicated), driven in step by one thread per
// rank. Every rank runs each layer as two fused launches with the residual stream all-reduced
// after each (NCCL inside the token's CUDA graph, one GPU per rank; or the in-process group
// through host memory, where ranks may share a GPU), then its share of the LM head's rows
// (vocabulary); the ranks' best (logit, id) pairs are all-reduced and every rank picks the same
// greedy token and feeds it back on its own device. With FusedAllReduce::kInKernel (NCCL only)
// each layer is one launch per rank instead: the kernel all-reduces x itself through NCCL's
// device API, and every rank runs the whole head.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "pdvm/pdvm_fused.h"

namespace pdvm {

class FusedTensorParallel {
 public:
  // Rank r on GPU devices[r]; `communicator`: a registered group ("nccl", "in-process").
  // Throws Error(kUnsupported) when the model cannot be split that way or run fused, or the
  // group cannot all-reduce that way.
  FusedTensorParallel(const FusedModelView& model, const std::vector<int>& devices, std::string_view communicator,
                      FusedAllReduce all_reduce = FusedAllReduce::kBetweenLaunches);
  // Random weights on every rank (benchmarks): the replicated tensors are the same on all ranks.
  static std::unique_ptr<FusedTensorParallel> synthesize(const FusedConfig& config, TensorType type, uint64_t seed,
                                                         const std::vector<int>& devices,
                                                         std::string_view communicator,
                                                         FusedAllReduce all_reduce = FusedAllReduce::kBetweenLaunches);
  ~FusedTensorParallel();
  FusedTensorParallel(const FusedTensorParallel&) = delete;
  FusedTensorParallel& operator=(const FusedTensorParallel&) = delete;

  int n_ranks() const;
  std::string communicator_name() const;
  FusedAllReduce all_reduce() const;
  const FusedConfig& config() const;  // of the whole model
  FusedFootprint footprint() const;   // of all ranks together
  uint64_t kernel_launches() const;   // all ranks, NCCL kernels included
  std::string quantized_handoffs() const;  // FusedDecoder's, of rank 0 (every rank has the same shapes)

  // As FusedDecoder's (layer mode only, unless kInKernel); logits: every rank's share of the head in
  // rank order (rank 0's whole head with kInKernel). generate checks that every rank produced the
  // same tokens.
  int execute_model(int token, int position, FusedMode mode);
  std::vector<float> logits() const;
  std::vector<int> generate(int token, int position, int n_tokens, FusedMode mode);
  // Device milliseconds of n_tokens on the slowest rank.
  double time_generate(int token, int position, int n_tokens, FusedMode mode);
  // Device milliseconds of n_tokens tokens' all-reduces alone (2 per layer, as the decode runs
  // them: FusedDecoder::time_all_reduces) on the slowest rank.
  double time_all_reduces(int n_tokens);

  // Rank `rank` of `n_ranks`'s part of `model`: views into `model`, except column splits, which
  // are gathered into `storage` (keep it alive while the view is used). Throws Error(kUnsupported)
  // naming what does not divide. split_head: the LM head's rows rank*V/N .. (of the embedding
  // when tied) instead of the whole head.
  static FusedModelView shard(const FusedModelView& model, int rank, int n_ranks,
                              std::vector<std::vector<uint8_t>>& storage, bool split_head = false);
  static FusedConfig shard_config(const FusedConfig& config, int n_ranks);

  struct Impl;

 private:
  FusedTensorParallel();
  std::unique_ptr<Impl> impl_;
};

}  // namespace pdvm
