// The LLaMA model definition: hyper-parameters from GGUF metadata, weights loaded through a
// Backend, and the forward pass written only against Backend ops (no CUDA, no SIMD here).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "pdvm/backend.h"
#include "pdvm/gguf.h"

namespace pdvm {

class Communicator;
class KvCache;

// Megatron-style tensor parallelism: a LlamaModel may hold one rank's shard of the weights.
// Q/K/V and gate/up are split by output rows (whole heads, FFN columns), the attention output
// and down projections by input columns; each rank's partial sums meet in an all-reduce after
// the attention and after the MLP. Embedding and norms are replicated; the output head is split
// by rows (vocabulary: rank r holds rows r*V/N .. (r+1)*V/N - 1) and its logits are gathered
// on rank 0.
// The first of `rows` rows held by rank `rank` of `n_ranks` where a split need not divide evenly
// (the head's vocabulary): shares differ by one row at most, and rank n_ranks gives `rows`. The
// unfused model and the fused tensor-parallel shards cut the head alike through it.
inline int64_t split_first_row(int64_t rows, int rank, int n_ranks) { return rows * rank / n_ranks; }

struct TensorSplit {
  int rank = 0;
  int n_ranks = 1;
  Communicator* communicator = nullptr;  // required when n_ranks > 1 (or to test a 1-rank group)
};

struct LlamaConfig {
  std::string architecture;  // general.architecture (llama and llama-keyed variants)
  int n_layer = 0;           // block_count
  int n_embd = 0;            // embedding_length
  int n_ff = 0;              // feed_forward_length
  int n_head = 0;            // attention.head_count
  int n_head_kv = 0;         // attention.head_count_kv (default n_head)
  int head_dim = 0;          // attention.key_length (default n_embd / n_head)
  int n_rot = 0;             // rope.dimension_count (default head_dim)
  float rope_freq_base = 10000.0f;
  float rms_eps = 1e-5f;     // attention.layer_norm_rms_epsilon
  int64_t n_ctx_train = 0;   // context_length
  int64_t n_vocab = 0;       // vocab_size (default token_embd rows)
  bool tied_output = false;  // no output.weight: the head reuses token_embd
  bool has_rope_freqs = false;

  // Reads and validates the hyper-parameters; Error(kUnsupported) for other architectures,
  // Error(kFileFormat) naming the key for missing or inconsistent values.
  static LlamaConfig from_gguf(const GgufFile& file);
  std::string summary() const;  // one line for logs
};

struct LlamaLayerWeights {
  Tensor attn_norm, wq, wk, wv, wo;
  Tensor ffn_norm, ffn_gate, ffn_up, ffn_down;
};

struct LlamaWeights {
  Tensor token_embd;
  Tensor output_norm;
  Tensor output;  // a copy of the token_embd handle when tied; split: this rank's rows only
  std::optional<Tensor> rope_freqs;
  std::vector<LlamaLayerWeights> layers;
};

// Activation buffers for batches of up to `capacity` tokens. A workspace keeps its buffers for
// its lifetime, so a recorded op sequence (decode) can be replayed on it.
// Reports weight loading: bytes of tensor data loaded so far, and in all.
using LoadProgress = std::function<void(uint64_t done_bytes, uint64_t total_bytes)>;

struct ForwardWorkspace {
  int capacity = 0;
  Tensor token_ids, positions;           // I32 {capacity}
  Tensor x, x_norm, q, k, v, attn_out;   // F32 {width, capacity}
  Tensor ffn_gate, ffn_up, ffn_act;      // F32 {n_ff, capacity}
  Tensor logits;                         // F32 {n_vocab, capacity} (split: complete on rank 0 only)
  Tensor logits_part;                    // split: F32 {this rank's vocabulary share, capacity}
  Tensor argmax_ids;                     // I32 {capacity}
};

enum class LogitsMode {
  kLast,  // logits of the last token only
  kAll,   // logits of every token of the batch (perplexity)
  kNone,  // only the KV cache
};

class LlamaModel {
 public:
  // Loads every tensor through backend.load_weight. Host backends may reference the mapped
  // file bytes without copying: `file` and `backend` must outlive the model.
  // progress(done, total) is called after each tensor with bytes of the file's tensor data.
  // With a split, only this rank's rows/columns are loaded; Error(kInvalidArgument) when the
  // heads or the FFN width do not divide by n_ranks, Error(kUnsupported) when a split cuts
  // through quantization blocks or the weights are UPG.
  LlamaModel(const GgufFile& file, Backend& backend, const LoadProgress& progress = {},
             const TensorSplit& split = {});

  const LlamaConfig& config() const { return config_; }
  const LlamaWeights& weights() const { return weights_; }
  Backend& backend() const { return *backend_; }
  const TensorSplit& split() const { return split_; }
  // This rank's K/V cache row: head_dim * n_head_kv / n_ranks.
  int64_t kv_row_width() const { return int64_t{n_head_kv_local_} * config_.head_dim; }

  ForwardWorkspace make_workspace(int capacity) const;

  // Writes `tokens` and their positions (cache.n_past() ...) into ws, runs them through the
  // model, stores their K/V in the cache and advances it. Logits land in ws.logits: row 0
  // holds the last token's for kLast, row t token t's for kAll (split: on rank 0; every rank
  // must run the same mode, as the gather of the logits is collective). A single-token kLast
  // step runs under Backend::run_recorded. Throws Error(kOutOfRange) when the cache cannot hold the
  // tokens or a token id is outside the vocabulary; tokens.size() must be <= ws.capacity.
  void forward(ForwardWorkspace& ws, std::span<const int32_t> tokens, KvCache& cache,
               LogitsMode mode) const;
  // Error(kInvalidArgument) when the heads, KV heads or FFN width do not divide by n_ranks
  // (the constructor checks too; callers may check before setting up the ranks).
  static void check_split(const GgufFile& file, const LlamaConfig& config, int n_ranks);
  // Error(kOutOfRange) naming the first token id outside the vocabulary (forward checks too).
  void check_tokens(std::span<const int32_t> tokens) const;

 private:
  LlamaConfig config_;
  Backend* backend_;
  TensorSplit split_;
  int n_head_local_ = 0, n_head_kv_local_ = 0, n_ff_local_ = 0;  // this rank's share
  std::vector<int64_t> vocab_counts_;  // head rows of every rank; empty when not split
  LlamaWeights weights_;
};

}  // namespace pdvm
