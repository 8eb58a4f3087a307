// The engine session: one model file, one backend, one KV cache, and the position
// bookkeeping around them. Sampling, chat and the CLI build on this API.
//
//   pdvm::Session session(pdvm::SessionOptions{.model_path = "m.gguf", .backend = "cpu"});
//   auto logits = session.prefill(prompt_ids);      // last token's logits
//   while (...) logits = session.decode(next_id);   // one token at a time
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "pdvm/backend.h"
#include "pdvm/decode_accelerator.h"
#include "pdvm/gguf.h"
#include "pdvm/kv_cache.h"
#include "pdvm/model.h"

namespace pdvm {

class Sampler;

struct SessionOptions {
  std::filesystem::path model_path;
  std::string backend = "cpu";            // a name from registered_backends()
  BackendOptions backend_options;
  int64_t n_ctx = 0;                      // 0: min(model context_length, 4096)
  std::optional<TensorType> kv_type;      // default: the backend's default_kv_type()
  int max_batch = 512;                    // prefill runs in chunks of at most this many tokens
  // "unfused": every token through the backend ops. "layer" / "token": decode steps through
  // the PDVM fused decoder (one launch per layer / per token), which keeps its own repacked
  // weights and f16 KV cache on the GPU; needs a CUDA build. "auto": on the cuda backend the
  // fastest of token, layer, unfused that supports the model (a notice names the reason for
  // each fallback); elsewhere unfused. gpu_mode() tells which one runs. Split over ranks (or
  // with a communicator), "auto" runs unfused and "layer" splits the fused decoder too
  // (FusedTensorParallel, prompts one step per token); "token" falls back to unfused.
  std::string gpu_mode = "auto";
  // With a fused mode: prompts (batches of more than one token) run batched through the
  // backend's prefill, which loads the unfused weights besides the fused decoder's copy and
  // shares the KV rows with it. Done only when the backend has the memory for that second
  // copy (else a notice, and prompts run one fused step per token, as with false: one copy).
  bool fused_batched_prompts = true;
  LoadProgress load_progress;             // optional, called while the weights load
  // Tensor parallelism (docs/multi-gpu.md): the model split over this many ranks, each with its
  // own backend, shard of the weights and share of the KV cache. 1: no split.
  int tensor_parallel = 1;
  // How the ranks sum their partial results: "auto" (nccl on cuda, in-process otherwise; none
  // for one rank), "nccl" (one GPU per rank) or "in-process" (host memory, any backend).
  std::string communicator = "auto";
  std::vector<int> tp_devices;  // GPU of each rank; empty: backend_options.device + rank
};

class TensorParallelPeers;

class Session {
 public:
  // Opens the file, creates the backend, loads the weights and allocates the cache.
  explicit Session(const SessionOptions& options);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const GgufFile& gguf() const { return *file_; }  // metadata, e.g. for the tokenizer
  const LlamaConfig& config() const { return config_; }
  Backend& backend() { return *backend_; }
  int64_t n_ctx() const { return cache_->n_ctx(); }
  int64_t n_past() const { return cache_->n_past(); }
  int64_t n_vocab() const { return config().n_vocab; }
  TensorType kv_type() const { return cache_->type(); }
  int tensor_parallel() const;
  // The --gpu-mode in effect: "unfused", "layer" or "token".
  const std::string& gpu_mode() const { return gpu_mode_; }
  // Whether prompts run batched on the backend while decode steps run fused.
  bool fused_batched_prompts() const { return accelerator_ && model_; }
  std::string communicator_name() const;  // empty when the model is not split

  // Seconds one decoded token spends in collectives (two all-reduces of n_embd floats per
  // layer), timed alone over `tokens` tokens' worth, on the path that decodes (the unfused
  // ranks, or the fused split: DecodeAccelerator::time_token_all_reduces); 0 without a
  // communicator.
  double time_token_all_reduces(int tokens);
  // Device kernels launched so far by the backend and the accelerator; nullopt when neither
  // counts (host backends).
  std::optional<uint64_t> kernel_launches() const;

  // Appends tokens at position n_past() and returns the last token's logits (n_vocab floats).
  // The span stays valid until the next call on this session.
  std::span<const float> prefill(std::span<const int32_t> tokens);
  // Same, returning every token's logits: tokens.size() rows of n_vocab floats (perplexity).
  std::span<const float> prefill_all(std::span<const int32_t> tokens);
  // Appends one token and returns its logits.
  std::span<const float> decode(int32_t token);

  // Variants that leave the logits on the backend: eval() runs the tokens, then either read
  // the logits of the last token or take their argmax on the backend (4 bytes copied back).
  void eval(std::span<const int32_t> tokens);
  std::span<const float> last_logits();
  int32_t last_argmax();
  // last_argmax() for greedy decoding that evaluates that token next: a fused decoder starts
  // that step before returning, so the GPU does not wait for the host between tokens.
  int32_t greedy_token();
  // The n largest of the last token's logits in rank order (larger first, lower id first among
  // equal ones), where the fused decoder or the backend ranks them on the GPU (only they are
  // copied back); false otherwise, or when the row holds NaN or one of them is infinite: read
  // last_logits().
  bool top_logits(size_t n, std::vector<LogitCandidate>& out);
  // sampler.sample() of the last token's logits drawn on the GPU, where the fused decoder holds
  // them and the sampler allows (Sampler::device_draw); with `run_ahead` (the caller evaluates
  // the token next) the decoder queues that step before returning, as greedy_token() does.
  // nullopt, the sampler's draw kept for a host pick, when it cannot.
  std::optional<int32_t> draw_token(Sampler& sampler, std::span<const int32_t> history, bool run_ahead);

  // Appends `prompt` and then n greedy tokens (each the argmax after the previous input, fed
  // back in except for the last); returns the n tokens.
  std::vector<int32_t> generate_greedy(std::span<const int32_t> prompt, int n);

  // Forget everything / keep only the first n_keep positions (reuse a shared prefix).
  void reset();
  void truncate(int64_t n_keep);

 private:
  void run(std::span<const int32_t> tokens, LogitsMode mode, std::vector<float>* all_logits);
  // model forward on every rank (decode: the single-token workspaces, else the batch ones).
  void forward(bool decode, std::span<const int32_t> tokens, LogitsMode mode);
  // Fused decoding with batched prompts: creates the accelerator for the first mode of
  // `modes` that takes the model; then whether the backend copy fits (loads it if so).
  void open_accelerator(const std::vector<std::string>& modes, int64_t n_ctx, const AcceleratorSplit& split);
  bool backend_copy_fits(const KvCacheShape& shape, int batch) const;
  // Copies the KV rows the accelerator (to_accelerator) or the backend lacks from the other.
  void sync_kv(bool to_accelerator);

  std::unique_ptr<GgufFile> file_;
  // The communicators and ranks >= 1, when split. Destroyed after rank 0's backend: NCCL
  // communicators must outlive the CUDA graphs that hold their all-reduces (a 2-GPU session
  // hung at exit the other way round).
  std::unique_ptr<TensorParallelPeers> tp_;
  std::unique_ptr<Backend> backend_;
  LlamaConfig config_;
  std::string gpu_mode_ = "unfused";
  // Null with an accelerator unless prompts run batched (fused_batched_prompts()).
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<KvCache> cache_;
  std::unique_ptr<DecodeAccelerator> accelerator_;  // --gpu-mode layer|token
  int split_ranks_ = 1;                 // --tp, on the accelerator or the unfused ranks
  std::string split_communicator_;      // their group's name, empty for one rank without one
  bool accelerator_has_logits_ = false;
  // With batched prompts: positions whose K/V the backend's and the accelerator's caches hold
  // (the larger is n_past; the other catches up before its next use).
  int64_t backend_kv_ = 0;
  int64_t accelerator_kv_ = 0;
  ForwardWorkspace batch_ws_;   // prefill chunks
  ForwardWorkspace decode_ws_;  // single tokens (recorded by graph-capable backends)
  ForwardWorkspace* last_ws_ = nullptr;  // holds the logits of the most recent call
  int64_t last_row_ = 0;                 // their row of the last token
  std::vector<float> host_logits_;
};

}  // namespace pdvm
