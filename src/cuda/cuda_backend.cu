// CudaBackend: the Backend ops on one CUDA device. Weights are uploaded once (repacked, see
// weights.cuh), activations and the KV cache stay on the device, and everything runs on the
// context's stream, so write() -> ops -> read() is ordered without host synchronisation until
// read(). run_recorded() captures an op sequence into a CUDA graph and replays it.
//
// Some ops are held back and launched by the next op, which may join them in one launch:
// matvecs of the same input (Q/K/V, gate/up; inside recorded sequences), a residual add and
// the RMSNorm of its result, the RoPE of Q and of K and the KV store of K and V, a SwiGLU and the product of its output
// (Q8_0/Q4_0 down projection of one token; F32/F16/BF16: the gate/up products compute the
// SwiGLU), and a one-token RMSNorm (with its residual add)
// and the products of its output (Q8_0/Q4_0 Q/K/V, gate/up and head; in recorded sequences). Every op, write(), read(),
// synchronize() and run_recorded() first launches whatever is held back and cannot join it.
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "cuda/env_switch.h"
#include "cuda/graph_count.cuh"
#include "cuda/ops.cuh"
#include "cuda/top_logits.cuh"
#include "cuda/upg.cuh"
#include "pdvm/backend_registry.h"
#include "pdvm/cuda_backend.h"

namespace pdvm {
namespace {

using cuda::CudaContext;

constexpr double kMiB = 1024.0 * 1024.0;

const float* f32(const Tensor& t) { return static_cast<const float*>(t.data); }
float* f32(Tensor& t) { return static_cast<float*>(t.data); }
const int32_t* i32(const Tensor& t) { return static_cast<const int32_t*>(t.data); }

void expect_type(const Tensor& t, TensorType type, const char* op, const char* what) {
  if (t.type != type)
    throw_error(ErrorKind::kUnsupported, std::string("cuda: ") + op + ": " + what + " must be " +
                                             std::string(type_name(type)) + ", got " + std::string(type_name(t.type)));
}

cuda::KvType kv_type_of(TensorType type) {
  switch (type) {
    case TensorType::kF32: return cuda::KvType::kF32;
    case TensorType::kF16: return cuda::KvType::kF16;
    case TensorType::kQ8_0: return cuda::KvType::kQ8_0;
    default: break;
  }
  throw_error(ErrorKind::kUnsupported,
              "cuda: KV cache type " + std::string(type_name(type)) + " is not supported (f32, f16, q8_0)");
}

cuda::KvCacheView kv_view(Tensor& k_cache, Tensor& v_cache) {
  PDVM_CHECK(k_cache.type == v_cache.type && k_cache.ne == v_cache.ne);
  cuda::KvCacheView view;
  view.type = kv_type_of(k_cache.type);
  view.k = k_cache.data;
  view.v = v_cache.data;
  view.row_width = k_cache.ne[0];
  view.n_ctx = k_cache.ne[1];
  return view;
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : ctx_(device) { cuda::configure_matvec(ctx_); }

  std::string name() const override { return "cuda"; }

  std::optional<uint64_t> available_memory() const override {
    PDVM_CUDA_CHECK(cudaSetDevice(ctx_.device));
    size_t free_bytes = 0, total_bytes = 0;
    PDVM_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    return free_bytes;
  }

  Tensor alloc(TensorType type, std::array<int64_t, 4> ne) override {
    activate();
    Tensor t;
    t.type = type;
    t.ne = ne;
    t.n_bytes = static_cast<uint64_t>(type_bytes(type, t.n_elems()));
    t.owner = cuda::device_alloc(t.n_bytes, "a tensor");
    t.data = t.owner.get();
    return t;
  }

  Tensor load_weight(TensorType type, std::array<int64_t, 4> ne, const void* bytes) override {
    activate();
    if (is_upg_type(type)) {
      Tensor t = cuda::upload_upg_weight(ctx_, type, ne, *static_cast<const UpgMatrix*>(bytes));
      weight_bytes_ += t.n_bytes;
      return t;
    }
    Tensor t;
    t.type = type;
    t.ne = ne;
    t.layout = cuda::layout_for(type);
    const int64_t k = ne[0];
    const int64_t n_rows = ne[1] * ne[2] * ne[3];
    t.n_bytes = cuda::repacked_bytes(type, k, n_rows);
    try {
      t.owner = cuda::device_alloc(t.n_bytes, "a weight");
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::kResource) throw;
      throw_error(ErrorKind::kResource, std::string(e.what()) + ", after " +
                                            std::to_string(static_cast<int64_t>(weight_bytes_ / kMiB)) +
                                            " MiB of weights were loaded: the model does not fit on this GPU");
    }
    t.data = t.owner.get();
    weight_bytes_ += t.n_bytes;
    // GGUF layouts and unpadded dense rows are uploaded as they are.
    const bool as_is = t.layout == cuda::kLayoutGguf ||
                       (t.layout == cuda::kLayoutDenseRows &&
                        t.n_bytes == static_cast<uint64_t>(type_bytes(type, k) * n_rows));
    if (as_is) {
      PDVM_CUDA_CHECK(cudaMemcpyAsync(t.data, bytes, t.n_bytes, cudaMemcpyHostToDevice, ctx_.stream));
    } else {
      staging_.resize(t.n_bytes);
      cuda::repack_weight(type, k, n_rows, static_cast<const uint8_t*>(bytes), staging_.data());
      PDVM_CUDA_CHECK(cudaMemcpyAsync(t.data, staging_.data(), t.n_bytes, cudaMemcpyHostToDevice, ctx_.stream));
    }
    // The source (mapped file or staging) must stay untouched until the copy is done.
    PDVM_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
    return t;
  }

  void write(Tensor& dst, const void* src, uint64_t n_bytes, uint64_t offset) override {
    flush_pending();
    activate();
    PDVM_CHECK(offset + n_bytes <= dst.n_bytes);
    // Pageable source: the copy is staged before the call returns, and it stays ordered
    // before later ops on the stream (and graph replays).
    PDVM_CUDA_CHECK(cudaMemcpyAsync(static_cast<uint8_t*>(dst.data) + offset, src, n_bytes, cudaMemcpyHostToDevice,
                                    ctx_.stream));
  }

  void read(const Tensor& src, void* dst, uint64_t n_bytes, uint64_t offset) override {
    flush_pending();
    activate();
    PDVM_CHECK(offset + n_bytes <= src.n_bytes);
    PDVM_CUDA_CHECK(cudaMemcpyAsync(dst, static_cast<const uint8_t*>(src.data) + offset, n_bytes,
                                    cudaMemcpyDeviceToHost, ctx_.stream));
    PDVM_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
  }

  std::optional<uint64_t> kernel_launches() const override { return ctx_.kernel_launches; }

  void synchronize() override {
    flush_pending();
    activate();
    PDVM_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
  }

  void* device_queue() override {
    flush_pending();
    activate();
    return ctx_.stream;
  }

  // First call: run directly (lazy scratch allocations happen here, outside any capture).
  // Second call: capture into a graph. Later calls: replay the graph.
  void run_recorded(std::string_view key, const std::function<void()>& ops) override {
    flush_pending();
    activate();
    auto& recording = ctx_.recordings[std::string(key)];
    if (recording.exec) {
      PDVM_CUDA_CHECK(cudaGraphLaunch(recording.exec, ctx_.stream));
      ctx_.kernel_launches += recording.kernel_nodes;
      return;
    }
    if (recording.calls++ == 0) {
      run_ops(ops);
      return;
    }
    PDVM_CUDA_CHECK(cudaStreamBeginCapture(ctx_.stream, cudaStreamCaptureModeThreadLocal));
    ctx_.capturing = true;
    cudaGraph_t graph = nullptr;
    try {
      run_ops(ops);
    } catch (...) {
      ctx_.capturing = false;
      if (cudaStreamEndCapture(ctx_.stream, &graph) == cudaSuccess && graph) cudaGraphDestroy(graph);
      (void)cudaGetLastError();
      throw;
    }
    ctx_.capturing = false;
    PDVM_CUDA_CHECK(cudaStreamEndCapture(ctx_.stream, &graph));
    recording.kernel_nodes = cuda::kernel_node_count(graph);
    const cudaError_t status = cudaGraphInstantiate(&recording.exec, graph, 0);
    cudaGraphDestroy(graph);
    PDVM_CUDA_CHECK(status);
    PDVM_CUDA_CHECK(cudaGraphLaunch(recording.exec, ctx_.stream));
    ctx_.kernel_launches += recording.kernel_nodes;
  }

  void get_rows(const Tensor& table, const Tensor& ids, Tensor& out) override {
    flush_pending();
    expect_type(ids, TensorType::kI32, "get_rows", "ids");
    expect_type(out, TensorType::kF32, "get_rows", "out");
    const int n_tokens = static_cast<int>(ids.ne[0]);
    PDVM_CHECK(out.ne[0] == table.ne[0] && out.ne[1] >= n_tokens);
    if (is_upg_type(table.type)) {
      return cuda::upg_get_rows(ctx_, *static_cast<const cuda::UpgDeviceMatrix*>(table.data), i32(ids), n_tokens, f32(out));
    }
    cuda::get_rows(ctx_, cuda::weight_view(table), i32(ids), n_tokens, f32(out));
  }

  void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) override {
    expect_type(x, TensorType::kF32, "rms_norm", "x");
    expect_type(weight, TensorType::kF32, "rms_norm", "weight");
    expect_type(out, TensorType::kF32, "rms_norm", "out");
    PDVM_CHECK(weight.ne[0] == x.ne[0] && out.ne[0] == x.ne[0] && out.ne[1] >= x.ne[1]);
    const int n_tokens = static_cast<int>(x.ne[1]);
    PendingNorm norm{{f32(x), nullptr, f32(weight), eps, nullptr, f32(out)}, x.ne[0], n_tokens};
    if (pending_add_.out == f32(x) && pending_add_.n == x.n_elems()) {
      norm.input.x = pending_add_.a;
      norm.input.residual = pending_add_.b;
      norm.input.sum_out = pending_add_.out;
      pending_add_ = {};
    }
    flush_pending();
    if (fuse_ops_ && join_norms_ && in_recorded_ops_ && n_tokens == 1) {
      pending_norm_ = norm;
      return;
    }
    launch_norm(norm);
  }

  void matmul(const Tensor& w, const Tensor& x, Tensor& out) override {
    // A held SwiGLU whose output is this product's input joins it (the down projection).
    const PendingSwiglu swiglu = pending_swiglu_.out == f32(x) ? pending_swiglu_ : PendingSwiglu{};
    if (swiglu.out) pending_swiglu_ = {};
    // A held norm stays held if this product or the held ones read its output.
    const bool keeps_norm = pending_norm_.input.out == f32(x) ||
                            (pending_.count > 0 && pending_.x == pending_norm_.input.out);
    flush_add_and_rope(keeps_norm);
    expect_type(x, TensorType::kF32, "matmul", "x");
    expect_type(out, TensorType::kF32, "matmul", "out");
    if (is_upg_type(w.type)) {
      if (swiglu.out) launch_swiglu(swiglu);
      flush_pending();
      const auto& upg = *static_cast<const cuda::UpgDeviceMatrix*>(w.data);
      PDVM_CHECK(x.ne[0] == upg.k && out.ne[0] == upg.n && out.ne[1] == x.ne[1]);
      return cuda::upg_matmul(ctx_, upg, f32(x), f32(out), static_cast<int>(x.ne[1]));
    }
    const cuda::WeightView view = cuda::weight_view(w);
    PDVM_CHECK(x.ne[0] == view.k && out.ne[0] == view.n_rows && out.ne[1] == x.ne[1]);
    const int n_tokens = static_cast<int>(x.ne[1]);
    if (swiglu.out) {
      flush_pending();
      if (n_tokens == 1 && swiglu.n == view.k &&
          cuda::streaming_swiglu_matvec(ctx_, view, f32(out), swiglu.gate, swiglu.up, swiglu.out))
        return;
      launch_swiglu(swiglu);
    }
    if (n_tokens > kMaxMatvecTokens) {
      flush_pending();
      cuda::gemm(ctx_, view, f32(x), f32(out), n_tokens);
      return;
    }
    // Inside a recorded sequence, consecutive products of the same input (Q/K/V, gate/up)
    // are collected and launched together by the next op.
    if (!fuse_ops_ || !in_recorded_ops_) {
      flush_pending();
      cuda::matvec(ctx_, view, f32(x), f32(out), n_tokens);
      return;
    }
    Pending& p = pending_;
    if (p.count > 0 && (p.x != f32(x) || p.n_tokens != n_tokens || p.views[0].format != view.format ||
                        p.views[0].k != view.k || p.count == cuda::kMaxMatvecBatch))
      flush_pending();
    p.views[p.count] = view;
    p.outs[p.count] = f32(out);
    p.x = f32(x);
    p.n_tokens = n_tokens;
    ++p.count;
  }

  void rope(Tensor& x, const Tensor& positions, int n_heads, int head_dim, const RopeConfig& config) override {
    expect_type(x, TensorType::kF32, "rope", "x");
    expect_type(positions, TensorType::kI32, "rope", "positions");
    PDVM_CHECK(x.ne[0] == int64_t{n_heads} * head_dim && positions.ne[0] >= x.ne[1]);
    PDVM_CHECK(config.n_rot > 0 && config.n_rot <= head_dim && config.n_rot % 2 == 0);
    const float* factors = nullptr;
    if (config.freq_factors) {
      expect_type(*config.freq_factors, TensorType::kF32, "rope", "freq_factors");
      PDVM_CHECK(config.freq_factors->ne[0] >= config.n_rot / 2);
      factors = f32(*config.freq_factors);
    }
    const PendingRope rope{{f32(x), n_heads}, i32(positions), static_cast<int>(x.ne[1]), head_dim, config.n_rot,
                           config.freq_base, factors};
    const PendingRope& held = pending_rope_;
    if (held.target.x && !held.second.x && held.target.x != rope.target.x && held.positions == rope.positions &&
        held.n_tokens == rope.n_tokens && held.head_dim == head_dim && held.n_rot == rope.n_rot &&
        held.freq_base == rope.freq_base && held.freq_factors == factors) {
      // The pair stays held: a KV store of the second (K) may join it.
      PendingRope pair = held;
      pair.second = rope.target;
      pending_rope_ = {};
      flush_pending();
      pending_rope_ = pair;
      return;
    }
    flush_pending();
    if (!fuse_ops_) return launch_rope(rope);
    pending_rope_ = rope;
  }

  void kv_store(Tensor& k_cache, Tensor& v_cache, const Tensor& k, const Tensor& v,
                const Tensor& positions) override {
    expect_type(k, TensorType::kF32, "kv_store", "k");
    expect_type(v, TensorType::kF32, "kv_store", "v");
    expect_type(positions, TensorType::kI32, "kv_store", "positions");
    const cuda::KvCacheView cache = kv_view(k_cache, v_cache);
    PDVM_CHECK(k.ne[0] == cache.row_width && v.ne == k.ne && positions.ne[0] >= k.ne[1]);
    const int n_tokens = static_cast<int>(k.ne[1]);
    const PendingRope rope = pending_rope_;
    if (rope.second.x == f32(k) && rope.positions == i32(positions) && rope.n_tokens == n_tokens) {
      pending_rope_ = {};
      flush_pending();
      if (cuda::rope_kv_store(ctx_, rope.target, rope.second, f32(v), cache, rope.positions, n_tokens, rope.head_dim,
                              rope.n_rot, rope.freq_base, rope.freq_factors))
        return;
      launch_rope(rope);
    }
    flush_pending();
    cuda::kv_store(ctx_, cache, f32(k), f32(v), i32(positions), n_tokens);
  }

  void attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& positions,
                 const AttentionConfig& config, Tensor& out) override {
    flush_pending();
    expect_type(q, TensorType::kF32, "attention", "q");
    expect_type(out, TensorType::kF32, "attention", "out");
    expect_type(positions, TensorType::kI32, "attention", "positions");
    const cuda::KvCacheView cache = kv_view(const_cast<Tensor&>(k_cache), const_cast<Tensor&>(v_cache));
    PDVM_CHECK(q.ne[0] == int64_t{config.n_head} * config.head_dim && out.ne[0] == q.ne[0] && out.ne[1] >= q.ne[1]);
    PDVM_CHECK(cache.row_width == int64_t{config.n_head_kv} * config.head_dim && positions.ne[0] >= q.ne[1]);
    const cuda::AttentionShape shape{config.n_head, config.n_head_kv, config.head_dim, config.scale};
    cuda::attention(ctx_, f32(q), cache, i32(positions), shape, static_cast<int>(q.ne[1]), f32(out));
  }

  void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) override {
    expect_type(gate, TensorType::kF32, "swiglu", "gate");
    expect_type(up, TensorType::kF32, "swiglu", "up");
    expect_type(out, TensorType::kF32, "swiglu", "out");
    PDVM_CHECK(up.n_elems() == gate.n_elems() && out.n_elems() >= gate.n_elems());
    const PendingSwiglu swiglu{f32(gate), f32(up), f32(out), gate.n_elems()};
    if (join_swiglu_with_products(swiglu)) return;
    flush_pending();
    if (!fuse_ops_) return launch_swiglu(swiglu);
    pending_swiglu_ = swiglu;
  }

  void add(const Tensor& a, const Tensor& b, Tensor& out) override {
    flush_pending();
    expect_type(a, TensorType::kF32, "add", "a");
    expect_type(b, TensorType::kF32, "add", "b");
    expect_type(out, TensorType::kF32, "add", "out");
    PDVM_CHECK(b.n_elems() == a.n_elems() && out.n_elems() >= a.n_elems());
    const PendingAdd add{f32(a), f32(b), f32(out), a.n_elems()};
    if (!fuse_ops_) return launch_add(add);
    pending_add_ = add;
  }

  void argmax(const Tensor& logits, Tensor& ids) override {
    flush_pending();
    expect_type(logits, TensorType::kF32, "argmax", "logits");
    expect_type(ids, TensorType::kI32, "argmax", "ids");
    PDVM_CHECK(ids.ne[0] >= logits.ne[1]);
    cuda::argmax(ctx_, f32(logits), logits.ne[0], static_cast<int>(logits.ne[1]), static_cast<int32_t*>(ids.data));
  }

  bool top_logits(const Tensor& row, int n, std::vector<LogitCandidate>& out) override {
    flush_pending();
    expect_type(row, TensorType::kF32, "top_logits", "row");
    const int vocab = static_cast<int>(row.ne[0]);
    if (n <= 0 || n > vocab) return false;
    activate();
    if (!top_ || top_->vocab() != vocab) top_ = std::make_unique<cuda::TopLogits>(vocab);
    return top_->rank(f32(row), n, ctx_.stream, out);
  }

 private:
  // Up to this many tokens a matmul streams the weights once per token (cheaper than
  // dequantizing them for a GEMM).
  static constexpr int kMaxMatvecTokens = 8;

  void activate() { PDVM_CUDA_CHECK(cudaSetDevice(ctx_.device)); }

  // Runs a recorded op sequence with matvec batching on; all its launches are issued on return
  // (a failed sequence drops what it held back).
  void run_ops(const std::function<void()>& ops) {
    in_recorded_ops_ = true;
    try {
      ops();
      flush_pending();
    } catch (...) {
      in_recorded_ops_ = false;
      pending_.count = 0;
      pending_norm_ = {};
      pending_add_ = {};
      pending_rope_ = {};
      pending_swiglu_ = {};
      throw;
    }
    in_recorded_ops_ = false;
  }

  struct PendingAdd {
    const float* a = nullptr;
    const float* b = nullptr;
    float* out = nullptr;
    int64_t n = 0;
  };
  struct PendingRope {
    cuda::RopeTarget target;
    const int32_t* positions = nullptr;
    int n_tokens = 0, head_dim = 0, n_rot = 0;
    float freq_base = 0.0f;
    const float* freq_factors = nullptr;
    cuda::RopeTarget second;  // x null: one tensor
  };

  struct PendingNorm {
    cuda::NormInput input;  // input.out null: none held
    int64_t width = 0;
    int n_tokens = 0;
  };

  struct PendingSwiglu {
    const float* gate = nullptr;
    const float* up = nullptr;
    float* out = nullptr;
    int64_t n = 0;
  };

  void launch_norm(const PendingNorm& norm) {
    const cuda::NormInput& in = norm.input;
    if (in.residual)
      cuda::add_rms_norm(ctx_, in.x, in.residual, in.sum_out, in.weight, in.eps, norm.width, norm.n_tokens, in.out);
    else
      cuda::rms_norm(ctx_, in.x, in.weight, in.eps, norm.width, norm.n_tokens, in.out);
  }
  void launch_add(const PendingAdd& add) { cuda::add(ctx_, add.a, add.b, add.out, add.n); }
  void launch_swiglu(const PendingSwiglu& swiglu) { cuda::swiglu(ctx_, swiglu.gate, swiglu.up, swiglu.out, swiglu.n); }
  void launch_rope(const PendingRope& rope) {
    cuda::rope(ctx_, rope.target, rope.second, rope.positions, rope.n_tokens, rope.head_dim, rope.n_rot, rope.freq_base,
               rope.freq_factors);
  }

  void flush_add_and_rope(bool keep_norm = false) {
    if (pending_norm_.input.out && !keep_norm) {
      const PendingNorm norm = pending_norm_;
      pending_norm_ = {};
      launch_norm(norm);
    }
    if (pending_add_.out) {
      const PendingAdd add = pending_add_;
      pending_add_ = {};
      launch_add(add);
    }
    if (pending_rope_.target.x) {
      const PendingRope rope = pending_rope_;
      pending_rope_ = {};
      launch_rope(rope);
    }
    if (pending_swiglu_.out) {
      const PendingSwiglu swiglu = pending_swiglu_;
      pending_swiglu_ = {};
      launch_swiglu(swiglu);
    }
  }

  // Held products that made gate and up (of one input, F32/F16/BF16) compute the SwiGLU of
  // their rows too: one launch fewer than a SwiGLU kernel between them and the down projection.
  bool join_swiglu_with_products(const PendingSwiglu& swiglu) {
    const Pending p = pending_;
    if (p.count != 2 || p.outs[0] != swiglu.gate || p.outs[1] != swiglu.up ||
        swiglu.n != p.views[0].n_rows * p.n_tokens || !cuda::joins_swiglu(p.views[0], p.views[1]))
      return false;
    pending_.count = 0;
    flush_add_and_rope();  // what else is held (the norm of x, which these formats do not join) goes first
    cuda::matvec_swiglu(ctx_, p.views[0], p.views[1], p.outs[0], p.outs[1], p.x, p.n_tokens, swiglu.out);
    return true;
  }

  void flush_pending() {
    // Products of a held norm's output go first: they launch it (joined or not).
    if (pending_.count > 0 && pending_.x == pending_norm_.input.out) flush_matvecs();
    flush_add_and_rope();
    flush_matvecs();
  }

  void flush_matvecs() {
    if (pending_.count == 0) return;
    const int count = pending_.count;
    pending_.count = 0;
    if (pending_norm_.input.out && pending_norm_.input.out == pending_.x) {
      const PendingNorm norm = pending_norm_;
      pending_norm_ = {};
      if (pending_.n_tokens == 1 && norm.n_tokens == 1 &&
          cuda::streaming_norm_matvec(ctx_, pending_.views, pending_.outs, count, norm.input))
        return;
      launch_norm(norm);
    }
    cuda::matvec(ctx_, pending_.views, pending_.outs, count, pending_.x, pending_.n_tokens);
  }

  struct Pending {
    cuda::WeightView views[cuda::kMaxMatvecBatch];
    float* outs[cuda::kMaxMatvecBatch] = {};
    const float* x = nullptr;
    int n_tokens = 0;
    int count = 0;
  };
  Pending pending_;
  PendingAdd pending_add_;
  PendingRope pending_rope_;
  PendingSwiglu pending_swiglu_;
  PendingNorm pending_norm_;
  bool in_recorded_ops_ = false;
  // PDVM_CUDA_FUSE=0 launches every op alone (for A/B timing).
  bool fuse_ops_ = !cuda::env_equals("PDVM_CUDA_FUSE", "0");
  // PDVM_CUDA_JOIN_NORM=1 computes one-token RMSNorms inside the Q8_0/Q4_0 products of their
  // output. Off by default: it measured within noise (13B Q4_0 on an H100), and its per-block
  // norm rounds unlike the norm kernel, so recorded and direct decodes (the NCCL and in-process
  // tensor-parallel groups) no longer gave the same bits.
  bool join_norms_ = cuda::env_equals("PDVM_CUDA_JOIN_NORM", "1");

  CudaContext ctx_;
  std::unique_ptr<cuda::TopLogits> top_;  // top_logits' ranking, made on first use
  uint64_t weight_bytes_ = 0;
  std::vector<uint8_t> staging_;
};

}  // namespace

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

std::unique_ptr<Backend> make_cuda_backend(int device) { return std::make_unique<CudaBackend>(device); }

}  // namespace pdvm

namespace pdvm {
namespace {

PDVM_REGISTER_BACKEND("cuda", "NVIDIA GPU: repacked weights, CUDA-graph decode, cuBLAS prefill",
                      [](const BackendOptions& options) { return make_cuda_backend(options.device); });

}  // namespace
}  // namespace pdvm
