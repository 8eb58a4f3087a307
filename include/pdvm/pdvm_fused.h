// PDVM fused decode for LLaMA-family models on CUDA (batch 1).
//
// Two ways to run a token, over the same weights, KV cache and device kernels:
//  * layer mode: one kernel launch per layer (RMSNorm, QKV + RoPE + KV append, split-context
//    attention, O-projection + residual, RMSNorm, gate/up + SiLU*mul, down + residual), the
//    per-token sequence recorded once as a CUDA graph with programmatic dependent launch;
//  * token mode: one persistent cooperative launch per token running every layer, the final
//    norm, the LM head and the greedy argmax.
// Inside a launch, the phases wait for each other through global counters that only grow
// (targets derive from per-layer epochs), never by returning to the host.
//
// Weights are repacked at load into kernel layouts (16-byte aligned streams, block scales split
// out). Supported matrix types: F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K (Q4_1's nibble layout with
// Q4_K's own scale records, exact, 4.625 bits per weight), Q6_K (as int8
// with its own scale records, exact, 8.625 bits per weight), UPG4 and UPG3
// (codes as nibbles, table lookups by byte_perm). Anything else is rejected with
// Error(kUnsupported) naming the tensor, so the engine can fall back to the unfused path.
//
// Activations: F16/BF16 matrices multiply float activations. Quantized matrices multiply int8
// activations (per-32 blocks, dp4a; ~1.5e-2 relative on the logits, as llama.cpp's quantized
// matvec) for speed, except in models with a Q4_1, Q4_K or Q6_K matrix in a layer (real
// checkpoints such as the default SmolLM2 Q4_1, where int8 activations moved the logits up to
// 0.115 relative and broke greedy agreement): there every quantized matrix but UPG multiplies
// int16 activations (int16_activations(); per-32 blocks, two dp4a per word, a rounding of 2^-16
// of a block's largest value), at the cost of a few more instructions per weight. The
// embedding and the LM head do not decide: llama.cpp's Q4_0 files keep a Q6_K head, which then
// multiplies int8 activations like the layers.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "pdvm/logits.h"
#include "pdvm/tensor_type.h"

namespace pdvm {

class Communicator;
class GgufFile;
struct UpgMatrix;

struct FusedConfig {
  int n_layer = 0;
  int n_embd = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  int n_ff = 0;
  int n_vocab = 0;
  int n_ctx = 0;  // KV-cache positions
  int n_rot = 0;  // rotated dimensions per head (<= head_dim)
  float rms_eps = 1e-5f;
  float rope_base = 10000.0f;
};

// Host view of one weight in GGUF layout: `rows` rows of `cols` elements. For UPG types
// (kUpg4/kUpg3) `data` points to a UpgMatrix (pdvm/upg_matrix.h).
struct FusedWeightView {
  TensorType type = TensorType::kF32;
  int64_t cols = 0;
  int64_t rows = 0;
  const void* data = nullptr;
  std::string name;  // for error messages
};

struct FusedLayerView {
  FusedWeightView attn_norm, wq, wk, wv, wo, ffn_norm, gate, up, down;
};

struct FusedModelView {
  FusedConfig config;
  FusedWeightView token_embd;
  FusedWeightView output_norm;
  FusedWeightView output;  // data == nullptr: tied to token_embd
  // A tensor-parallel shard's vocabulary-split head (FusedTensorParallel::shard): `output` holds
  // vocabulary rows output_first_row .. output_first_row + output.rows - 1.
  bool output_split = false;
  int64_t output_first_row = 0;
  std::vector<float> rope_freq_factors;  // empty, or n_rot / 2 divisors (Llama 3)
  std::vector<FusedLayerView> layers;
  std::vector<std::shared_ptr<const UpgMatrix>> upg_matrices;  // what UPG weights' data point to
};

// Reads a llama-architecture GGUF into a view (pointers into the mapped file).
FusedModelView fused_view_from_gguf(const GgufFile& file, int n_ctx);

// Read bandwidth of the current device in GB/s: a streaming read of `bytes` (median of 9 runs).
double measure_read_bandwidth_gbps(uint64_t bytes);

enum class FusedMode { kLayer, kToken };

// How the ranks of a tensor-parallel decoder all-reduce the residual stream (docs/multi-gpu.md).
enum class FusedAllReduce {
  kBetweenLaunches,  // each layer as two launches, the communicator's all-reduce after each
  kInKernel,         // one launch per layer: the kernel all-reduces through NCCL's device API
};

// Per-phase bookkeeping of one device run, for benchmarks.
struct FusedFootprint {
  uint64_t weight_bytes = 0;         // every byte of every matrix a token streams
  uint64_t kv_bytes_per_position = 0;  // K+V bytes read per attended position, all layers
};

class FusedDecoder {
 public:
  // Repacks and uploads `model` to the current CUDA device. Throws Error(kUnsupported) for a
  // weight type or shape the kernels do not handle.
  explicit FusedDecoder(const FusedModelView& model);
  // Random weights generated deterministically on the device, directly in the kernel layouts
  // (benchmarks of large shapes without host files). Every matrix has type `type`. head_rows > 0:
  // a vocabulary-split head of its own (rows head_first .. of a tensor-parallel shard) instead
  // of the whole head tied to the embedding.
  static std::unique_ptr<FusedDecoder> synthesize(const FusedConfig& config, TensorType type,
                                                  uint64_t seed, int head_first = 0, int head_rows = 0);
  ~FusedDecoder();
  FusedDecoder(const FusedDecoder&) = delete;
  FusedDecoder& operator=(const FusedDecoder&) = delete;

  const FusedConfig& config() const;
  FusedFootprint footprint() const;
  int grid_size() const;
  // Kernels launched so far (a layer-mode token counts its graph's kernels: one per layer).
  uint64_t kernel_launches() const;

  // Makes this decoder rank `rank` of a tensor-parallel group (FusedTensorParallel, built from
  // a shard of the model). kBetweenLaunches: each layer runs as two launches with x all-reduced
  // through `communicator` after each, in a CUDA graph when it is recordable. kInKernel: one
  // launch per layer (or per token) as without TP, the kernel all-reducing x through the
  // communicator's device_collectives() (NCCL only; collective: every rank calls this at once,
  // and all ranks need the same grid). Before the first token.
  void set_tensor_parallel(int rank, Communicator* communicator,
                           FusedAllReduce all_reduce = FusedAllReduce::kBetweenLaunches);

  // ---- layer-level API (hidden state of n_embd floats kept on the device) ----------------
  void set_hidden(const std::vector<float>& values);
  std::vector<float> hidden() const;
  // Runs one layer for the token at `position` (appends its K/V to the cache).
  void execute_layer(int layer, int position);

  // ---- token-level API --------------------------------------------------------------------
  // Runs the whole model on `token` at `position`; returns the greedy next token.
  int execute_model(int token, int position, FusedMode mode);
  // Of the last execute_model / generate step: the head's rows (the whole vocabulary unless split).
  std::vector<float> logits() const;
  // The same step's n largest logits with their ids, larger first and lower id first among equal
  // ones, ranked on the device so that only they come back (sampling with top-k). False, with
  // `out` unspecified, when a logit is NaN or one of the n is infinite: the caller then needs the
  // whole row. Unsplit heads, 0 < n <= the vocabulary.
  bool top_logits(int n, std::vector<LogitCandidate>& out);
  // Greedy decoding of `n_tokens` tokens fed back on the device; returns them.
  std::vector<int> generate(int token, int position, int n_tokens, FusedMode mode);
  // Pipelined greedy steps, for a decode loop on the host: queue_step starts `token` at
  // `position` and returns without waiting; queue_next_step starts the position after the last
  // queued step, its input that step's greedy token on the device; queued_token waits for the
  // step at `position` (one of the last kQueuedSteps queued since the last queue_step) and returns
  // its greedy token. So the host can read a token while the GPU already runs the next one.
  static constexpr int kQueuedSteps = 4;
  void queue_step(int token, int position, FusedMode mode);
  void queue_next_step(FusedMode mode);
  int queued_token(int position);
  // Queues a draw (Sampler::device_draw) from the logits of the last queued step, at `position`:
  // its token, not the greedy one, feeds the next queued step, and queued_token(position)
  // returns it, or kNotDrawn where the device could not pick (the row's logits are left as
  // they were). False, queuing nothing, when this decoder cannot draw so (a split head, top_k
  // above what the device ranks).
  bool queue_draw(int position, const DeviceDraw& draw);
  // Like generate, but returns the device time in milliseconds (CUDA events) of the n tokens.
  double time_generate(int token, int position, int n_tokens, FusedMode mode);
  // Tensor-parallel ranks (benchmarks): the device time in milliseconds (CUDA events) of
  // n_tokens tokens' all-reduces of x alone, two per layer as the decode runs them: the
  // communicator's calls, in one CUDA graph per token when it is recordable, or the in-kernel
  // exchange (kInKernel) in one launch per token. Overwrites x (the next token's embedding
  // replaces it). Collective: every rank calls it at once.
  double time_all_reduces(int n_tokens);

  // ---- KV cache exchange (prompts run batched on a backend) ----------------------------
  // Positions [first, first + count) of `layer`'s keys and values, as rows of n_head_kv *
  // head_dim f16 values (a backend cache's layout; row i is position first + i), in host
  // memory or device memory of this GPU.
  void write_kv(int layer, int first, int count, const void* k_rows, const void* v_rows);
  void read_kv(int layer, int first, int count, void* k_rows, void* v_rows) const;

  // Whether matrices of quantized types multiply int16 activations (see FusedDecoder(model)).
  bool int16_activations() const;
  // The kernel instance a token's layers run (the attention half's, when layers run as two
  // halves): "q4_0 only" for a model whose every matrix is Q4_0 and whose activations are int8
  // (compiled for that format alone: F16, Q8_0, Q4_0, UPG), else "generic" or "generic, int16
  // activations" (int16_activations()), with the layer part for tensor parallelism, or ", h as
  // int16 blocks" where an int16 model hands h over as blocks (quantized_handoffs()).
  std::string kernel_instance() const;
  // The vectors handed to the next phase as quantized blocks (int8, or int16 where
  // int16_activations()), quantized once by the CTAs that produce them instead of on every CTA
  // that reads them: "attention output" (int8 only, where every O matrix multiplies int8 blocks
  // only), "h" (where every down matrix multiplies blocks only and shares of whole 32-row blocks
  // keep the gate/up phase balanced), both joined by ", ", or "none".
  std::string quantized_handoffs() const;

  // The reason `model` cannot run fused, or empty when it can.
  static std::string unsupported_reason(const FusedModelView& model);

  struct Impl;

 private:
  FusedDecoder();
  std::unique_ptr<Impl> impl_;
};

}  // namespace pdvm
