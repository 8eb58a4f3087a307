// The backend interface: the ops a LLaMA-family forward pass needs, implemented with the same
// names by every backend (cpu reference, cpu fast, cuda). The model definition is written
// against this interface only and never knows which backend runs it.
//
// Conventions
//  * Shapes use GGUF order: ne[0] is the contiguous dimension. A weight matrix W of shape
//    {k, n} has n rows of k elements; activations are F32 {width, n_tokens}.
//  * matmul computes out[t][j] = sum_i W[j][i] * x[t][i] for every token t (batched prefill
//    and decode alike).
//  * Positions live in a backend tensor (I32 {n_tokens}) rather than in host arguments, so a
//    backend can record a decode step once (e.g. a CUDA graph) and replay it for every token.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pdvm/logits.h"
#include "pdvm/tensor_type.h"

namespace pdvm {

struct Tensor {
  TensorType type = TensorType::kF32;
  std::array<int64_t, 4> ne{1, 1, 1, 1};
  void* data = nullptr;          // backend memory (host or device pointer)
  uint64_t n_bytes = 0;
  std::shared_ptr<void> owner;   // keeps the storage alive; empty for views
  uint32_t layout = 0;           // backend-private tag for repacked weight layouts (0 = GGUF layout)

  int64_t n_elems() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
  int64_t n_rows() const { return ne[1] * ne[2] * ne[3]; }
  // Bytes of one row of ne[0] elements in the GGUF layout of `type`.
  int64_t row_bytes() const { return type_bytes(type, ne[0]); }
};

// Rows [first, first + count) of a 2-D tensor {width, n}, sharing its storage (a view). Works
// for device pointers too: it only offsets `data`.
inline Tensor row_view(const Tensor& t, int64_t first, int64_t count) {
  Tensor view;
  view.type = t.type;
  view.ne = {t.ne[0], count, 1, 1};
  view.data = static_cast<uint8_t*>(t.data) + first * t.row_bytes();
  view.n_bytes = static_cast<uint64_t>(count * t.row_bytes());
  view.layout = t.layout;
  return view;
}

struct RopeConfig {
  int n_rot = 0;              // rotated dimensions per head (rope.dimension_count), <= head_dim
  float freq_base = 10000.0f;
  const Tensor* freq_factors = nullptr;  // Llama 3 rope_freqs: F32 {n_rot / 2}, divides the frequencies
};

// Options every backend factory receives; a backend ignores what does not apply to it.
struct BackendOptions {
  int n_threads = 0;  // host threads for CPU backends; 0 = the machine's hardware concurrency
  int device = 0;     // GPU ordinal for device backends
};

struct AttentionConfig {
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  float scale = 0.0f;  // usually 1/sqrt(head_dim)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  // KV cache element type used when the caller does not choose one (F32 on the reference,
  // F16 elsewhere). kv_store/attention must support at least this type and F32.
  virtual TensorType default_kv_type() const { return TensorType::kF16; }

  // ---- memory --------------------------------------------------------------------------
  // Bytes alloc() can still hand out, where the backend knows (host backends: the memory the
  // system reports available). Large buffers such as the KV cache are checked against it
  // first, so that a size that cannot fit fails with a message instead of an OOM kill.
  virtual std::optional<uint64_t> available_memory() const { return std::nullopt; }
  virtual Tensor alloc(TensorType type, std::array<int64_t, 4> ne) = 0;
  // Creates a weight from host bytes in GGUF layout. A backend may repack it (and mark
  // `layout`); the logical type and shape stay those of the source.
  virtual Tensor load_weight(TensorType type, std::array<int64_t, 4> ne, const void* bytes) = 0;
  virtual void write(Tensor& dst, const void* src, uint64_t n_bytes, uint64_t offset = 0) = 0;
  virtual void read(const Tensor& src, void* dst, uint64_t n_bytes, uint64_t offset = 0) = 0;
  // Device kernels launched so far (graph replays count their kernels), where the backend
  // launches any: launches per token = difference over a run / tokens.
  virtual std::optional<uint64_t> kernel_launches() const { return std::nullopt; }
  // Waits for outstanding work (a no-op on synchronous backends).
  virtual void synchronize() {}
  // For libraries that enqueue their own device work in order with the ops (NCCL
  // collectives): the device queue (a cudaStream_t on CUDA) after everything issued so far has
  // been enqueued on it; nullptr on host backends.
  virtual void* device_queue() { return nullptr; }
  // Runs `ops` (a fixed sequence of op calls); a backend may record it under `key` the first
  // time and replay the recording afterwards. Inputs must change only through write().
  virtual void run_recorded(std::string_view key, const std::function<void()>& ops) {
    (void)key;
    ops();
  }

  // ---- ops ------------------------------------------------------------------------------
  // out[t] = table[ids[t]] converted to F32; ids is I32 {n_tokens}.
  virtual void get_rows(const Tensor& table, const Tensor& ids, Tensor& out) = 0;
  virtual void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) = 0;
  virtual void matmul(const Tensor& w, const Tensor& x, Tensor& out) = 0;
  // outs[i] = matmul(*weights[i], x) for each i (at most 4): products of one input, such as a
  // layer's Q, K and V, which a backend may run as one job. The default runs them one by one.
  // (Lists, not spans: this header is also compiled as C++17 by nvcc.)
  virtual void matmul_shared_input(std::initializer_list<const Tensor*> weights, const Tensor& x,
                                   std::initializer_list<Tensor*> outs) {
    auto out = outs.begin();
    for (const Tensor* w : weights) {
      if (out == outs.end()) break;
      matmul(*w, x, **out++);
    }
  }
  // Rotates, in place, adjacent pairs (GGUF/GGML "normal" convention) of every head of x
  // (F32 {head_dim * n_heads, n_tokens}) by positions[t].
  virtual void rope(Tensor& x, const Tensor& positions, int n_heads, int head_dim,
                    const RopeConfig& config) = 0;
  // Stores k and v (F32 {head_dim * n_head_kv, n_tokens}) into the layer's caches
  // ({head_dim * n_head_kv, n_ctx}, any cache type the backend supports) at rows positions[t].
  virtual void kv_store(Tensor& k_cache, Tensor& v_cache, const Tensor& k, const Tensor& v,
                        const Tensor& positions) = 0;
  // Causal attention: token t attends to cache rows 0..positions[t] (inclusive).
  // q is F32 {head_dim * n_head, n_tokens}; out has the same shape.
  virtual void attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                         const Tensor& positions, const AttentionConfig& config, Tensor& out) = 0;
  // out = silu(gate) * up, element-wise.
  virtual void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) = 0;
  // out = a + b, element-wise (out may alias a).
  virtual void add(const Tensor& a, const Tensor& b, Tensor& out) = 0;
  // ids[t] = argmax of logits row t (I32 {n_tokens}); ties go to the lowest index, NaNs are passed
  // over, and -1 marks a row whose largest logit is not finite (finite_argmax, pdvm/logits.h).
  virtual void argmax(const Tensor& logits, Tensor& ids) = 0;
  // The n largest logits of one row (F32 {n_vocab}) with their ids, larger first and lower id
  // first among equal ones, where the backend ranks them itself so that only they are read back
  // (sampling with top-k). False where it does not, or when the row holds NaN or one of the n is
  // infinite: the caller then reads the row.
  virtual bool top_logits(const Tensor& /*row*/, int /*n*/, std::vector<LogitCandidate>& /*out*/) { return false; }
};

}  // namespace pdvm
