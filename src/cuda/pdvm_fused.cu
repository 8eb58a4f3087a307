// FusedDecoder: validates a llama model view, repacks its weights into the PDVM kernel layouts,
// owns the device state (activations, KV cache, counters) and runs tokens in layer or token mode.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <string>

#include "cuda/check.cuh"
#include "cuda/env_switch.h"
#include "cuda/graph_count.cuh"
#include "cuda/pdvm_kernel.cuh"
#include "cuda/pdvm_repack.h"
#include "cuda/top_logits.cuh"
#include "pdvm/communicator.h"
#include "pdvm/error.h"
#include "pdvm/fused_activations.h"
#include "pdvm/logits.h"
#include "pdvm/pdvm_fused.h"
#include "pdvm/upg_matrix.h"

namespace pdvm {

using fused::append_rows;
using fused::DevLayer;
using fused::format_of;
using fused::HostMatrix;
using fused::is_quantized;
using fused::row_bytes_of;
using fused::scale_stride_of;
using fused::DevMatrix;

namespace {

constexpr int kMaxChunks = 64;

std::vector<float> to_floats(const FusedWeightView& w) {
  std::vector<float> out(static_cast<size_t>(w.cols * w.rows));
  dequantize_row(w.type, w.data, out.data(), w.cols * w.rows);
  return out;
}

std::string check_matrix(const FusedWeightView& w, int64_t cols, int64_t rows) {
  if (!w.data) return "tensor " + w.name + " is missing";
  if (w.cols != cols || w.rows != rows)
    return "tensor " + w.name + " has shape {" + std::to_string(w.cols) + ", " + std::to_string(w.rows) +
           "}, expected {" + std::to_string(cols) + ", " + std::to_string(rows) + "}";
  const int format = format_of(w.type);
  if (format < 0)
    return "tensor " + w.name + " has type " + std::string(type_name(w.type)) +
           " (fused kernels support f16, bf16, q8_0, q4_0, q4_1, q4_k, q5_k, q6_k, upg4, upg3)";
  if (is_upg_type(w.type)) return fused::upg_unsupported_reason(w);
  const int chunk = is_quantized(format) ? fused::kQuantBlock : fused::weights_per_chunk(format);
  if (cols % chunk != 0 || cols % type_info(w.type).block_elems != 0 ||
      row_bytes_of(format, static_cast<int>(cols)) % 16 != 0)
    return "tensor " + w.name + ": rows of " + std::to_string(cols) + " elements do not fill 16-byte chunks";
  return {};
}

std::string check_vector(const FusedWeightView& w, int64_t n) {
  if (!w.data) return "tensor " + w.name + " is missing";
  if (w.cols * w.rows != n) return "tensor " + w.name + " has " + std::to_string(w.cols * w.rows) +
                                   " elements, expected " + std::to_string(n);
  if (!type_info(w.type).dequantizable) return "tensor " + w.name + " has unsupported type " +
                                               std::string(type_name(w.type));
  return {};
}

std::string check_config(const FusedConfig& c) {
  if (c.n_layer < 1 || c.n_embd < 1 || c.n_head < 1 || c.n_head_kv < 1 || c.n_ff < 1 || c.n_vocab < 1 ||
      c.n_ctx < 1)
    return "model dimensions must be positive";
  if (c.n_head % c.n_head_kv != 0) return "n_head is not a multiple of n_head_kv";
  if (c.n_head / c.n_head_kv > fused::kMaxGroup)
    return "more than " + std::to_string(fused::kMaxGroup) + " query heads per KV head";
  const int hd = c.head_dim;
  if (hd < 8 || hd > 256 || (hd & (hd - 1)) != 0) return "head_dim " + std::to_string(hd) + " is not a power of two in [8, 256]";
  if (c.n_rot < 2 || c.n_rot > hd || c.n_rot % 2 != 0) return "rope dimension count " + std::to_string(c.n_rot) + " is invalid";
  if (c.n_embd % 4 != 0 || c.n_ff % 4 != 0) return "n_embd and n_ff must be multiples of 4";
  return {};
}

// Real checkpoints quantized to Q4_1, Q4_K or Q6_K (the default SmolLM2 Q4_1 among them) lost
// exact greedy agreement with the unfused path to int8 activations (logits up to 0.115 relative
// off on the default model, the error of every layer adding up); such models multiply int16
// activations in every quantized matrix (float ones until session 19, at twice the time per
// token at 1B: docs/perf-notes.md, session 19). The layers decide (fused_activations_follow): a Q6_K
// head after Q4_0 layers, as llama.cpp writes Q4_0 files, multiplies int8 activations too: one
// matvec's rounding, where float activations everywhere for its sake ran llama-3-8b at 164 tok/s
// against 348 unfused (docs/perf-notes.md, session 11).
bool wants_int16_activations(const FusedModelView& model) {
  for (const FusedLayerView& l : model.layers) {
    for (const FusedWeightView* w : {&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down})
      if (fused_int16_activation_type(w->type)) return true;
  }
  // Q5_K runs in the int16 instance only, so a Q5_K head or embedding decides too.
  return model.token_embd.type == TensorType::kQ5_K || (model.output.data && model.output.type == TensorType::kQ5_K);
}

void use_int16_activations(DevMatrix& m) {
  if (is_quantized(m.format) && m.format != fused::kFmtUpg) m.format |= fused::kInt16Acts;
}


// Device milliseconds of the work that `enqueue` puts on `stream`.
float stream_ms(cudaStream_t stream, const std::function<void()>& enqueue) {
  cudaEvent_t start, stop;
  PDVM_CUDA_CHECK(cudaEventCreate(&start));
  PDVM_CUDA_CHECK(cudaEventCreate(&stop));
  PDVM_CUDA_CHECK(cudaEventRecord(start, stream));
  enqueue();
  PDVM_CUDA_CHECK(cudaEventRecord(stop, stream));
  PDVM_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  PDVM_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  PDVM_CUDA_CHECK(cudaEventDestroy(start));
  PDVM_CUDA_CHECK(cudaEventDestroy(stop));
  return ms;
}

}  // namespace

struct FusedDecoder::Impl {
  FusedConfig config;
  fused::Params params{};
  int device = 0;
  int grid = 0;
  cudaStream_t stream = nullptr;
  std::vector<void*> allocations;
  std::vector<DevLayer> layers;
  cudaGraphExec_t layer_graph = nullptr;
  int layer_graph_kernels = 0;
  uint64_t kernel_launches = 0;
  FusedFootprint footprint;
  Communicator* communicator = nullptr;  // tensor parallelism: x all-reduced between layer halves
  bool in_kernel_all_reduce = false;     // ... or inside the kernel (FusedAllReduce::kInKernel)
  std::vector<float> host_x;             // a non-recordable communicator's host copy of x
  float* head_pairs = nullptr;           // vocabulary-split head: every rank's (value, id)
  std::vector<float> host_pairs;         // their host copy for a non-recordable communicator

  // Queued steps (queue_step): positions [chain_first, chain_end) since the last write_step, the
  // completion of position i recorded in step_done[i % kQueuedSteps]. Their tokens are read on
  // a stream of their own, so a read does not wait for the steps queued after it.
  int chain_first = 0, chain_end = 0;
  cudaEvent_t step_done[kQueuedSteps] = {};
  cudaStream_t read_stream = nullptr;
  int* read_token = nullptr;  // pinned

  std::unique_ptr<cuda::TopLogits> top;  // ranking(), made on first use

  ~Impl() {
    cudaSetDevice(device);
    if (layer_graph) cudaGraphExecDestroy(layer_graph);
    for (void* p : allocations) cudaFree(p);
    for (cudaEvent_t e : step_done) {
      if (e) cudaEventDestroy(e);
    }
    if (read_token) cudaFreeHost(read_token);
    if (read_stream) cudaStreamDestroy(read_stream);
    if (stream) cudaStreamDestroy(stream);
  }

  template <class T>
  T* alloc(size_t count) {
    void* p = nullptr;
    PDVM_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T)));
    allocations.push_back(p);
    PDVM_CUDA_CHECK(cudaMemsetAsync(p, 0, std::max<size_t>(count, 1) * sizeof(T), stream));
    return static_cast<T*>(p);
  }

  // `upg_block`: elements per block scale of a kFmtUpg matrix.
  DevMatrix alloc_matrix(int format, int rows, int cols, int upg_block = 0) {
    DevMatrix m;
    m.format = format;
    m.rows = rows;
    m.cols = cols;
    m.row_bytes = row_bytes_of(format, cols);
    m.data = alloc<uint8_t>(static_cast<size_t>(rows) * m.row_bytes);
    if (fused::has_scale_stream(format)) {
      m.scale_stride = scale_stride_of(format, cols);
      m.scales = alloc<__half>(static_cast<size_t>(rows) * m.scale_stride);
    }
    if (format == fused::kFmtUpg) {
      m.side_stride = fused::upg_side_stride(cols, upg_block);
      m.block_shift = upg_block == 32 ? 0 : upg_block == 64 ? 1 : 2;
      m.side = alloc<uint8_t>(static_cast<size_t>(rows) * m.side_stride);
    }
    footprint.weight_bytes += static_cast<uint64_t>(rows) * (m.row_bytes + m.side_stride) +
                              (m.scales ? static_cast<uint64_t>(rows) * fused::scales_per_row(format, cols) * 2 : 0);
    return m;
  }

  // Ordered after the allocations' memsets on `stream`; waits so `src` may go away.
  void copy_to_device(void* dst, const void* src, size_t bytes) {
    PDVM_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream));
    PDVM_CUDA_CHECK(cudaStreamSynchronize(stream));
  }

  DevMatrix upload(const HostMatrix& h) {
    DevMatrix m = alloc_matrix(h.format, h.rows, h.cols, 32 << std::max(h.block_shift, 0));
    copy_to_device(const_cast<uint8_t*>(m.data), h.data.data(), h.data.size());
    if (m.scales) copy_to_device(const_cast<__half*>(m.scales), h.scales.data(), h.scales.size() * 2);
    if (m.side) {
      copy_to_device(const_cast<uint8_t*>(m.side), h.side.data(), h.side.size());
      if (!h.outlier_col.empty()) {
        uint16_t* cols = alloc<uint16_t>(h.outlier_col.size());
        uint16_t* values = alloc<uint16_t>(h.outlier_val.size());
        copy_to_device(cols, h.outlier_col.data(), h.outlier_col.size() * 2);
        copy_to_device(values, h.outlier_val.data(), h.outlier_val.size() * 2);
        m.outlier_col = cols;
        m.outlier_val = reinterpret_cast<const __half*>(values);
        footprint.weight_bytes += h.outlier_col.size() * 4;
      }
    }
    return m;
  }

  DevMatrix upload(const FusedWeightView& w) {
    HostMatrix h;
    append_rows(h, w);
    return upload(h);
  }

  float* upload(const std::vector<float>& v) {
    float* d = alloc<float>(v.size());
    copy_to_device(d, v.data(), v.size() * sizeof(float));
    return d;
  }

  // Activations, KV cache, counters and the kernel parameters for `c`.
  void init_state(const FusedConfig& c) {
    config = c;
    PDVM_CUDA_CHECK(cudaGetDevice(&device));
    PDVM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    fused::Params& p = params;
    p.n_layer = c.n_layer;
    p.n_embd = c.n_embd;
    p.n_head = c.n_head;
    p.n_head_kv = c.n_head_kv;
    p.head_dim = c.head_dim;
    p.n_ff = c.n_ff;
    p.n_vocab = c.n_vocab;
    p.n_ctx = c.n_ctx;
    p.n_rot = c.n_rot;
    p.rms_eps = c.rms_eps;
    p.rope_base = c.rope_base;
    p.attn_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    grid = fused::fused_max_grid(p, device);
    // Chunks per KV head: one attention item per CTA. An item's fixed cost (the query load,
    // the merges, the arrival) outweighs streaming its share of the cache, so CTAs that queued
    // several items (chunks filling the grid a whole number of times) were slower.
    p.n_chunks = std::clamp(grid / c.n_head_kv, 1, kMaxChunks);

    const size_t q_floats = static_cast<size_t>(c.n_head) * c.head_dim;
    p.x = alloc<float>(c.n_embd);
    p.q = alloc<float>(q_floats);
    p.attn_part = alloc<float>(static_cast<size_t>(c.n_head) * p.n_chunks * (c.head_dim + 2));
    p.attn_out = alloc<float>(q_floats);
    p.h = alloc<float>(c.n_ff);
    p.logits = alloc<float>(c.n_vocab);
    const size_t cache = static_cast<size_t>(c.n_layer) * c.n_head_kv * c.n_ctx * c.head_dim;
    p.k_cache = alloc<__half>(cache);
    p.v_cache = alloc<__half>(cache);
    p.cta_best = alloc<float2>(grid);
    p.history = alloc<int>(c.n_ctx);
    p.layer_counters = alloc<unsigned>(static_cast<size_t>(c.n_layer) * fused::layer_counter_stride(c.n_head_kv));
    p.layer_epochs = alloc<unsigned>(c.n_layer);
    p.model_counters = alloc<unsigned>(fused::kModelCounters);
    p.model_epoch = alloc<unsigned>(1);
    p.step = alloc<fused::DevStep>(1);
    footprint.kv_bytes_per_position = static_cast<uint64_t>(c.n_layer) * 2 * c.n_head_kv * c.head_dim * 2;
  }

  // fn(matrix) for the embedding, the head and every layer matrix.
  template <class Fn>
  void for_each_matrix(Fn&& fn) {
    fn(params.token_embd);
    fn(params.output);
    for (DevLayer& layer : layers) {
      for (DevMatrix* m : {&layer.qk, &layer.v, &layer.wo, &layer.gate, &layer.up, &layer.down}) fn(*m);
    }
  }

  // Runs once the constructor has uploaded or synthesized every matrix and set
  // params.int16_activations.
  void finish_layers() {
    if (params.int16_activations) for_each_matrix([](DevMatrix& m) { use_int16_activations(m); });
    for (DevLayer& layer : layers) {
      for (DevMatrix* m : {&layer.wo, &layer.down}) m->parts_log2 = fused::row_parts_log2(m->format, m->rows, m->row_bytes, grid);
    }
    int format = params.token_embd.format;
    bool q5_k = false;
    for_each_matrix([&](const DevMatrix& m) {
      format = m.format == format ? format : -1;
      q5_k = q5_k || fused::base_format(m.format) == fused::kFmtQ5_K;
    });
    params.single_format = format;
    params.with_q5_k = q5_k;
    bool attention_blocks = config.head_dim % 32 == 0 && !params.int16_activations;  // see Params::attn_q
    for (const DevLayer& layer : layers)
      attention_blocks = attention_blocks && fused::reads_blocks_only(layer.wo.format);
    if (attention_blocks) params.attn_q = alloc_quant_vector(static_cast<size_t>(config.n_head) * config.head_dim);
    if (h_blocks()) params.h_q = alloc_quant_vector(config.n_ff);
    auto* d = alloc<DevLayer>(layers.size());
    copy_to_device(d, layers.data(), layers.size() * sizeof(DevLayer));
    params.layers = d;
  }

  // Blocks of the model's activation kind: int8, or int16 with a plane of low bytes.
  fused::QuantVector alloc_quant_vector(size_t n) {
    const size_t blocks = (n / 32 + 3) / 4 * 4;  // whole 16-byte copies for the reader
    return {alloc<int8_t>(n), params.int16_activations ? alloc<uint8_t>(n) : nullptr, alloc<float>(blocks),
            alloc<int>(blocks)};
  }

  // Whether the gate/up phase hands h to the down phase as quantized blocks: where every down
  // matrix reads blocks only and shares of whole blocks (at most kMaxSplitItems rows, the stash in
  // shared memory) cost the phase at most 5 % of balance (llama-3.2-1b: 256 blocks on 132 CTAs, 2 a
  // CTA at most against 1.94; llama-2-13b's 432 blocks would take 4 against 3.27, measured 2 %
  // slower). PDVM_FUSED_H_BLOCKS=0 or 1 forces it off, or on where possible (tests, A/B timing).
  bool h_blocks() const {
    bool possible = config.n_ff % 32 == 0;
    for (const DevLayer& layer : layers) possible = possible && fused::reads_blocks_only(layer.down.format);
    const int blocks = config.n_ff / 32, most = (blocks + grid - 1) / grid;
    possible = possible && most * 32 <= fused::kMaxSplitItems;
    if (cuda::env_equals("PDVM_FUSED_H_BLOCKS", "0")) return false;
    if (cuda::env_equals("PDVM_FUSED_H_BLOCKS", "1")) return possible;
    return possible && static_cast<double>(most) * grid <= 1.05 * blocks;
  }

  // Without waiting: a copy from pageable memory returns once the driver has staged the bytes.
  void write_step(int position, int token) {
    const fused::DevStep step{position, token, 0};
    PDVM_CUDA_CHECK(cudaMemcpyAsync(params.step, &step, sizeof(step), cudaMemcpyHostToDevice, stream));
    chain_first = chain_end = position;
  }

  void queue_token_step(FusedMode mode) {
    check_position(chain_end, 1);
    if (!read_stream) {
      PDVM_CUDA_CHECK(cudaStreamCreateWithFlags(&read_stream, cudaStreamNonBlocking));
      PDVM_CUDA_CHECK(cudaMallocHost(&read_token, sizeof(int)));
      for (cudaEvent_t& e : step_done) PDVM_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    }
    run_token(mode);
    PDVM_CUDA_CHECK(cudaEventRecord(step_done[chain_end % kQueuedSteps], stream));
    ++chain_end;
  }

  void check_position(int position, int n_tokens) const {
    if (position < 0 || n_tokens < 0 || static_cast<int64_t>(position) + n_tokens > config.n_ctx)
      throw_error(ErrorKind::kOutOfRange, "fused decode: positions " + std::to_string(position) + ".." +
                                              std::to_string(position + n_tokens) + " exceed the context of " +
                                              std::to_string(config.n_ctx));
  }

  void activate() const { PDVM_CUDA_CHECK(cudaSetDevice(device)); }

  // The head's rows ranked (top_logits, queue_draw): whole vocabulary heads only.
  cuda::TopLogits& ranking() {
    PDVM_CHECK(params.output.rows == config.n_vocab);
    if (!top) top = std::make_unique<cuda::TopLogits>(config.n_vocab);
    return *top;
  }

  // A token as 2 launches per layer with x all-reduced after each, then the head alone.
  // In a graph (NCCL) the launches are plain; run eagerly (host all-reduce, several ranks may
  // share a GPU) they are cooperative, so a launch never waits for CTAs that cannot be resident.
  void enqueue_split_token(bool eager) {
    for (int l = 0; l < config.n_layer; ++l) {
      for (int half : {fused::kFlagAttnHalf, fused::kFlagMlpHalf}) {
        const int flags = half | (l == 0 && half == fused::kFlagAttnHalf ? fused::kFlagEmbed : 0);
        fused::launch_fused(params, grid, l, l + 1, flags, eager, stream);
        all_reduce_x(eager);
      }
    }
    fused::launch_fused(params, grid, config.n_layer, config.n_layer, fused::kFlagHead, eager, stream);
    if (params.head_pair) pick_split_token(eager);
  }

  // A vocabulary-split head: every rank's (value, id) pair, each in its own slot of zeros, summed
  // into every rank's pairs (exact: one non-zero term per slot), then the best is the token.
  void pick_split_token(bool eager) {
    const size_t n = 2 * static_cast<size_t>(communicator->size());
    if (eager) {
      host_pairs.resize(n);
      copy_to_host(host_pairs.data(), head_pairs, n * sizeof(float));
      communicator->all_reduce_sum_host(host_pairs.data(), n);
      copy_to_device(head_pairs, host_pairs.data(), n * sizeof(float));
    } else {
      communicator->all_reduce_sum_on_stream(head_pairs, n, stream);
    }
    fused::launch_pick_split_token(params, head_pairs, communicator->size(), stream);
  }

  void all_reduce_x(bool eager) {
    if (!eager) return communicator->all_reduce_sum_on_stream(params.x, static_cast<size_t>(config.n_embd), stream);
    host_x.resize(static_cast<size_t>(config.n_embd));
    copy_to_host(host_x.data(), params.x, host_x.size() * sizeof(float));
    communicator->all_reduce_sum_host(host_x.data(), host_x.size());
    copy_to_device(params.x, host_x.data(), host_x.size() * sizeof(float));
  }

  bool records_graph() const { return !communicator || communicator->recordable(); }
  // Tensor parallelism through the host's all-reduce: two launches per layer.
  bool splits_layers() const { return communicator && !in_kernel_all_reduce; }
  int all_reduce_flag() const { return in_kernel_all_reduce ? fused::kFlagDeviceAllReduce : 0; }
  // A whole token in one launch (token mode).
  int token_flags() const { return fused::kFlagEmbed | fused::kFlagHead | all_reduce_flag(); }

  void record_layer_graph() {
    if (splits_layers()) {
      // NCCL connects the ranks on the first all-reduce: let that happen outside the capture (on
      // x, which the token's embedding overwrites).
      communicator->all_reduce_sum_on_stream(params.x, static_cast<size_t>(config.n_embd), stream);
      // The head pairs' all-reduce too: NCCL >= 2.22 connects per algorithm on first use, and
      // a few bytes may take another one than x. The pairs are all zeros here (alloc, or the
      // last pick), so the sum leaves them so.
      if (head_pairs)
        communicator->all_reduce_sum_on_stream(head_pairs, 2 * static_cast<size_t>(communicator->size()), stream);
      PDVM_CUDA_CHECK(cudaStreamSynchronize(stream));
    }
    cudaGraph_t graph;
    PDVM_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    if (splits_layers()) {
      enqueue_split_token(false);
    } else {
      for (int l = 0; l < config.n_layer; ++l) {
        int flags = (l == 0 ? fused::kFlagEmbed : fused::kFlagPdl) | all_reduce_flag();
        if (l == config.n_layer - 1) flags |= fused::kFlagHead;
        fused::launch_fused(params, grid, l, l + 1, flags, false, stream);
      }
    }
    PDVM_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    layer_graph_kernels = cuda::kernel_node_count(graph);
    PDVM_CUDA_CHECK(cudaGraphInstantiate(&layer_graph, graph, 0));
    PDVM_CUDA_CHECK(cudaGraphDestroy(graph));
  }

  void run_token(FusedMode mode) {
    if (splits_layers() && mode == FusedMode::kToken)
      throw_error(ErrorKind::kUnsupported, "fused decode: token mode (one launch per token) cannot all-reduce "
                                           "between layers; tensor parallelism runs in layer mode");
    if (!records_graph()) {
      enqueue_split_token(true);
      kernel_launches += 2 * config.n_layer + (params.head_pair ? 2 : 1);
    } else if (mode == FusedMode::kLayer) {
      if (!layer_graph) record_layer_graph();
      PDVM_CUDA_CHECK(cudaGraphLaunch(layer_graph, stream));
      kernel_launches += layer_graph_kernels;
    } else {
      fused::launch_fused(params, grid, 0, config.n_layer, token_flags(), true, stream);
      ++kernel_launches;
    }
  }

  void copy_to_host(void* dst, const void* src, size_t bytes) {
    // Wait first: a copy to pageable memory that waits on a stream blocks other threads' CUDA
    // calls, and with NCCL this stream may wait on a tensor-parallel peer's next launch.
    PDVM_CUDA_CHECK(cudaStreamSynchronize(stream));
    PDVM_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream));
    PDVM_CUDA_CHECK(cudaStreamSynchronize(stream));
  }

  // Positions [first, first + count) of one layer's cache (per KV head: head_dim halves per
  // position) <-> rows of n_head_kv * head_dim halves, one 2-D copy per KV head.
  void copy_kv(int layer, int first, int count, __half* cache, const void* rows, bool to_cache) {
    check_position(first, count);
    if (layer < 0 || layer >= config.n_layer)
      throw_error(ErrorKind::kOutOfRange, "fused decode: layer " + std::to_string(layer) + " out of range");
    const size_t head_bytes = static_cast<size_t>(config.head_dim) * sizeof(__half);
    const size_t row_bytes = head_bytes * config.n_head_kv;
    for (int h = 0; h < config.n_head_kv && count > 0; ++h) {
      __half* head = cache + ((static_cast<int64_t>(layer) * config.n_head_kv + h) * config.n_ctx + first) * config.head_dim;
      const auto* row = static_cast<const uint8_t*>(rows) + h * head_bytes;
      if (to_cache) {
        PDVM_CUDA_CHECK(cudaMemcpy2DAsync(head, head_bytes, row, row_bytes, head_bytes, count, cudaMemcpyDefault, stream));
      } else {
        PDVM_CUDA_CHECK(cudaMemcpy2DAsync(const_cast<uint8_t*>(row), row_bytes, head, head_bytes, head_bytes, count,
                                          cudaMemcpyDefault, stream));
      }
    }
    PDVM_CUDA_CHECK(cudaStreamSynchronize(stream));
  }

  std::vector<int> read_history(int n) {
    std::vector<int> out(n);
    copy_to_host(out.data(), params.history, n * sizeof(int));
    return out;
  }
};

std::string FusedDecoder::unsupported_reason(const FusedModelView& model) {
  const FusedConfig& c = model.config;
  if (std::string why = check_config(c); !why.empty()) return why;
  if (static_cast<int>(model.layers.size()) != c.n_layer) return "layer count does not match block_count";
  const int64_t nq = static_cast<int64_t>(c.n_head) * c.head_dim, nkv = static_cast<int64_t>(c.n_head_kv) * c.head_dim;
  for (const FusedLayerView& l : model.layers) {
    for (const std::string& why :
         {check_vector(l.attn_norm, c.n_embd), check_vector(l.ffn_norm, c.n_embd), check_matrix(l.wq, c.n_embd, nq),
          check_matrix(l.wk, c.n_embd, nkv), check_matrix(l.wv, c.n_embd, nkv), check_matrix(l.wo, nq, c.n_embd),
          check_matrix(l.gate, c.n_embd, c.n_ff), check_matrix(l.up, c.n_embd, c.n_ff),
          check_matrix(l.down, c.n_ff, c.n_embd)}) {
      if (!why.empty()) return why;
    }
    // Concatenated / paired matrices share one kernel layout.
    if (format_of(l.wq.type) != format_of(l.wk.type))
      return "tensors " + l.wq.name + " and " + l.wk.name + " differ in type";
    if (is_upg_type(l.wq.type) &&
        static_cast<const UpgMatrix*>(l.wq.data)->block != static_cast<const UpgMatrix*>(l.wk.data)->block)
      return "tensors " + l.wq.name + " and " + l.wk.name + " differ in UPG block size";
    if (format_of(l.gate.type) != format_of(l.up.type))
      return "tensors " + l.gate.name + " and " + l.up.name + " differ in type";
  }
  if (std::string why = check_matrix(model.token_embd, c.n_embd, c.n_vocab); !why.empty()) return why;
  if (std::string why = check_vector(model.output_norm, c.n_embd); !why.empty()) return why;
  if (model.output_split) {
    const int64_t first = model.output_first_row, rows = model.output.rows;
    if (!model.output.data || first < 0 || rows < 1 || first + rows > c.n_vocab)
      return "head rows " + std::to_string(first) + " .. " + std::to_string(first + rows - 1) +
             " are outside the vocabulary of " + std::to_string(c.n_vocab);
    if (std::string why = check_matrix(model.output, c.n_embd, rows); !why.empty()) return why;
  } else if (model.output.data) {
    if (std::string why = check_matrix(model.output, c.n_embd, c.n_vocab); !why.empty()) return why;
  }
  if (!model.rope_freq_factors.empty() && static_cast<int>(model.rope_freq_factors.size()) != c.n_rot / 2)
    return "rope_freqs has " + std::to_string(model.rope_freq_factors.size()) + " entries, expected " +
           std::to_string(c.n_rot / 2);
  return {};
}

FusedDecoder::FusedDecoder() : impl_(std::make_unique<Impl>()) {}

FusedDecoder::FusedDecoder(const FusedModelView& model) : FusedDecoder() {
  if (std::string why = unsupported_reason(model); !why.empty())
    throw_error(ErrorKind::kUnsupported, "fused decode: " + why);
  Impl& m = *impl_;
  m.init_state(model.config);
  m.params.int16_activations = wants_int16_activations(model);
  for (const FusedLayerView& l : model.layers) {
    DevLayer d{};
    d.attn_norm = m.upload(to_floats(l.attn_norm));
    d.ffn_norm = m.upload(to_floats(l.ffn_norm));
    HostMatrix qk;
    append_rows(qk, l.wq);
    append_rows(qk, l.wk);
    d.qk = m.upload(qk);
    d.v = m.upload(l.wv);
    d.wo = m.upload(l.wo);
    d.gate = m.upload(l.gate);
    d.up = m.upload(l.up);
    d.down = m.upload(l.down);
    m.layers.push_back(d);
  }
  // The embedding is read one row per token; only the LM head's bytes count as streamed.
  const uint64_t before_embd = m.footprint.weight_bytes;
  m.params.token_embd = m.upload(model.token_embd);
  if (model.output.data) {
    m.footprint.weight_bytes = before_embd;
    m.params.output = m.upload(model.output);
    if (model.output_split) m.params.vocab_first = static_cast<int>(model.output_first_row);
  } else {
    m.params.output = m.params.token_embd;
  }
  m.params.output_norm = m.upload(to_floats(model.output_norm));
  if (!model.rope_freq_factors.empty()) m.params.rope_factors = m.upload(model.rope_freq_factors);
  m.finish_layers();
}

std::unique_ptr<FusedDecoder> FusedDecoder::synthesize(const FusedConfig& config, TensorType type, uint64_t seed,
                                                       int head_first, int head_rows) {
  if (std::string why = check_config(config); !why.empty()) throw_error(ErrorKind::kInvalidArgument, "fused synth: " + why);
  if (head_first < 0 || head_rows < 0 || head_first + head_rows > config.n_vocab)
    throw_error(ErrorKind::kInvalidArgument, "fused synth: head rows outside the vocabulary");
  const int format = format_of(type);
  if (format < 0) throw_error(ErrorKind::kUnsupported, "fused synth: unsupported type " + std::string(type_name(type)));
  std::unique_ptr<FusedDecoder> decoder(new FusedDecoder());
  Impl& m = *decoder->impl_;
  m.init_state(config);
  m.params.int16_activations = fused_int16_activation_type(type);
  const FusedConfig& c = config;
  const int nq = c.n_head * c.head_dim, nkv = c.n_head_kv * c.head_dim;
  uint64_t tensor = seed * 1000003;
  auto matrix = [&](int rows, int cols) {
    DevMatrix d = m.alloc_matrix(format, rows, cols, cols % 64 == 0 ? 64 : 32);  // UPG: the encoder's block
    fused::fill_random_matrix(d, ++tensor, std::sqrt(3.0f / static_cast<float>(cols)), m.stream);
    return d;
  };
  auto norm = [&] {
    float* d = m.alloc<float>(c.n_embd);
    fused::fill_random_floats(d, c.n_embd, ++tensor, 1.0f, 0.2f, m.stream);
    return d;
  };
  for (int l = 0; l < c.n_layer; ++l) {
    DevLayer d{};
    d.attn_norm = norm();
    d.ffn_norm = norm();
    d.qk = matrix(nq + nkv, c.n_embd);
    d.v = matrix(nkv, c.n_embd);
    d.wo = matrix(c.n_embd, nq);
    d.gate = matrix(c.n_ff, c.n_embd);
    d.up = matrix(c.n_ff, c.n_embd);
    d.down = matrix(c.n_embd, c.n_ff);
    m.layers.push_back(d);
  }
  m.params.output = m.params.token_embd = matrix(c.n_vocab, c.n_embd);
  if (head_rows > 0) {
    m.params.output = matrix(head_rows, c.n_embd);
    m.params.vocab_first = head_first;
  }
  m.params.output_norm = norm();
  m.finish_layers();
  return decoder;
}

FusedDecoder::~FusedDecoder() = default;

const FusedConfig& FusedDecoder::config() const { return impl_->config; }
FusedFootprint FusedDecoder::footprint() const { return impl_->footprint; }
int FusedDecoder::grid_size() const { return impl_->grid; }
uint64_t FusedDecoder::kernel_launches() const { return impl_->kernel_launches; }
bool FusedDecoder::int16_activations() const { return impl_->params.int16_activations != 0; }
std::string FusedDecoder::quantized_handoffs() const {
  const fused::Params& p = impl_->params;
  if (p.attn_q.q && p.h_q.q) return "attention output, h";
  return p.attn_q.q ? "attention output" : p.h_q.q ? "h" : "none";
}

std::string FusedDecoder::kernel_instance() const {
  return fused::fused_kernel_name(impl_->params, impl_->splits_layers() ? fused::kFlagAttnHalf : impl_->token_flags());
}

void FusedDecoder::write_kv(int layer, int first, int count, const void* k_rows, const void* v_rows) {
  impl_->copy_kv(layer, first, count, impl_->params.k_cache, k_rows, true);
  impl_->copy_kv(layer, first, count, impl_->params.v_cache, v_rows, true);
}

void FusedDecoder::read_kv(int layer, int first, int count, void* k_rows, void* v_rows) const {
  impl_->copy_kv(layer, first, count, impl_->params.k_cache, k_rows, false);
  impl_->copy_kv(layer, first, count, impl_->params.v_cache, v_rows, false);
}

void FusedDecoder::set_hidden(const std::vector<float>& values) {
  if (static_cast<int>(values.size()) != impl_->config.n_embd)
    throw_error(ErrorKind::kInvalidArgument, "fused decode: hidden state has " + std::to_string(values.size()) +
                                                 " values, expected " + std::to_string(impl_->config.n_embd));
  impl_->copy_to_device(impl_->params.x, values.data(), values.size() * sizeof(float));
}

std::vector<float> FusedDecoder::hidden() const {
  std::vector<float> out(impl_->config.n_embd);
  impl_->copy_to_host(out.data(), impl_->params.x, out.size() * sizeof(float));
  return out;
}

void FusedDecoder::set_tensor_parallel(int rank, Communicator* communicator, FusedAllReduce all_reduce) {
  Impl& m = *impl_;
  PDVM_CHECK(communicator && rank == communicator->rank() && !m.layer_graph && m.kernel_launches == 0);
  if (m.params.with_q5_k)
    throw_error(ErrorKind::kUnsupported, "fused tensor parallelism: q5_k weights run on one GPU only");
  m.communicator = communicator;
  m.params.partial_output = rank > 0;
  // Layer halves run the MLP half's instance, which has no hand-off of h, and int16 models' in-kernel
  // all-reduce an instance without int16 hand-offs.
  if (all_reduce != FusedAllReduce::kInKernel || m.params.int16_activations) m.params.h_q = {};
  if (m.params.output.rows < m.config.n_vocab) {
    if (all_reduce == FusedAllReduce::kInKernel)
      throw_error(ErrorKind::kUnsupported, "fused decode: a vocabulary-split head needs the all-reduce between launches");
    m.activate();
    m.head_pairs = m.alloc<float>(2 * static_cast<size_t>(communicator->size()));
    m.params.head_pair = m.head_pairs + 2 * rank;
  }
  if (all_reduce == FusedAllReduce::kInKernel) {
    m.activate();
    // Two slots of every rank's partial x; one LSA barrier per CTA (CTA b meets CTA b).
    const size_t window_bytes = 2 * static_cast<size_t>(communicator->size()) * m.config.n_embd * sizeof(float);
    const Communicator::DeviceCollectives collectives = communicator->device_collectives(window_bytes, m.grid);
    m.params.tp_comm = static_cast<const ncclDevComm*>(collectives.dev_comm);
    m.params.tp_window = static_cast<ncclWindow_vidmem*>(collectives.window);
    m.in_kernel_all_reduce = true;
  }
}

void FusedDecoder::execute_layer(int layer, int position) {
  Impl& m = *impl_;
  if (m.communicator)
    throw_error(ErrorKind::kUnsupported, "fused decode: a single layer cannot run tensor-parallel");
  if (layer < 0 || layer >= m.config.n_layer)
    throw_error(ErrorKind::kOutOfRange, "fused decode: layer " + std::to_string(layer) + " out of range");
  m.check_position(position, 1);
  m.write_step(position, 0);
  fused::launch_fused(m.params, m.grid, layer, layer + 1, 0, true, m.stream);
  ++m.kernel_launches;
  PDVM_CUDA_CHECK(cudaStreamSynchronize(m.stream));
}

int FusedDecoder::execute_model(int token, int position, FusedMode mode) {
  return generate(token, position, 1, mode)[0];
}

std::vector<float> FusedDecoder::logits() const {
  impl_->activate();
  std::vector<float> out(static_cast<size_t>(impl_->params.output.rows));
  impl_->copy_to_host(out.data(), impl_->params.logits, out.size() * sizeof(float));
  return out;
}

bool FusedDecoder::top_logits(int n, std::vector<LogitCandidate>& out) {
  Impl& m = *impl_;
  m.activate();
  return m.ranking().rank(m.params.logits, n, m.stream, out);
}

std::vector<int> FusedDecoder::generate(int token, int position, int n_tokens, FusedMode mode) {
  Impl& m = *impl_;
  if (token < 0 || token >= m.config.n_vocab)
    throw_error(ErrorKind::kOutOfRange, "fused decode: token " + std::to_string(token) + " out of range");
  m.check_position(position, n_tokens);
  m.activate();
  m.write_step(position, token);
  for (int i = 0; i < n_tokens; ++i) m.run_token(mode);
  std::vector<int> tokens = m.read_history(n_tokens);
  // -1: that step's logits had no finite maximum (the kernel fed token 0 on, in bounds).
  const auto broken = std::find_if(tokens.begin(), tokens.end(), [](int t) { return t < 0; });
  if (broken != tokens.end())
    throw_non_finite_logits("at position " + std::to_string(position + (broken - tokens.begin())));
  return tokens;
}

void FusedDecoder::queue_step(int token, int position, FusedMode mode) {
  Impl& m = *impl_;
  if (token < 0 || token >= m.config.n_vocab)
    throw_error(ErrorKind::kOutOfRange, "fused decode: token " + std::to_string(token) + " out of range");
  m.check_position(position, 1);
  m.activate();
  m.write_step(position, token);
  m.queue_token_step(mode);
}

void FusedDecoder::queue_next_step(FusedMode mode) {
  Impl& m = *impl_;
  PDVM_CHECK(m.chain_end > m.chain_first);
  m.activate();
  m.queue_token_step(mode);
}

int FusedDecoder::queued_token(int position) {
  Impl& m = *impl_;
  PDVM_CHECK(position >= std::max(m.chain_first, m.chain_end - kQueuedSteps) && position < m.chain_end);
  m.activate();
  PDVM_CUDA_CHECK(cudaEventSynchronize(m.step_done[position % kQueuedSteps]));
  PDVM_CUDA_CHECK(cudaMemcpyAsync(m.read_token, m.params.history + (position - m.chain_first), sizeof(int),
                                  cudaMemcpyDeviceToHost, m.read_stream));
  PDVM_CUDA_CHECK(cudaStreamSynchronize(m.read_stream));
  if (*m.read_token < 0 && *m.read_token != kNotDrawn) throw_non_finite_logits("at position " + std::to_string(position));
  return *m.read_token;
}

bool FusedDecoder::queue_draw(int position, const DeviceDraw& draw) {
  Impl& m = *impl_;
  PDVM_CHECK(m.chain_end > m.chain_first && position == m.chain_end - 1);
  if (m.params.output.rows != m.config.n_vocab) return false;
  m.activate();
  cuda::TopLogits& ranking = m.ranking();
  if (!ranking.ranks_in_one_launch(draw.top_k)) return false;
  fused::DevStep* step = m.params.step;
  ranking.queue_draw(m.params.logits, draw, {&step->token, &step->n_out, m.params.history}, m.stream);
  PDVM_CUDA_CHECK(cudaEventRecord(m.step_done[position % kQueuedSteps], m.stream));
  return true;
}

double FusedDecoder::time_all_reduces(int n_tokens) {
  Impl& m = *impl_;
  PDVM_CHECK(m.communicator && n_tokens >= 0);
  m.activate();
  const int per_token = 2 * m.config.n_layer;
  const size_t n = static_cast<size_t>(m.config.n_embd);
  cudaGraphExec_t graph = nullptr;
  std::function<void()> token;
  if (m.in_kernel_all_reduce) {
    token = [&] { fused::launch_all_reduce_only(m.params, m.grid, per_token, m.stream); };
  } else if (m.records_graph()) {
    // Connected outside the capture first, as record_layer_graph does.
    m.communicator->all_reduce_sum_on_stream(m.params.x, n, m.stream);
    cudaGraph_t captured;
    PDVM_CUDA_CHECK(cudaStreamBeginCapture(m.stream, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < per_token; ++i) m.communicator->all_reduce_sum_on_stream(m.params.x, n, m.stream);
    PDVM_CUDA_CHECK(cudaStreamEndCapture(m.stream, &captured));
    PDVM_CUDA_CHECK(cudaGraphInstantiate(&graph, captured, 0));
    PDVM_CUDA_CHECK(cudaGraphDestroy(captured));
    token = [&] { PDVM_CUDA_CHECK(cudaGraphLaunch(graph, m.stream)); };
  } else {
    token = [&] {
      for (int i = 0; i < per_token; ++i) m.all_reduce_x(true);
    };
  }
  token();  // warm-up
  PDVM_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  const float ms = stream_ms(m.stream, [&] {
    for (int t = 0; t < n_tokens; ++t) token();
  });
  if (graph) PDVM_CUDA_CHECK(cudaGraphExecDestroy(graph));
  return ms;
}

double FusedDecoder::time_generate(int token, int position, int n_tokens, FusedMode mode) {
  Impl& m = *impl_;
  m.check_position(position, n_tokens);
  m.activate();
  if (mode == FusedMode::kLayer && !m.layer_graph && m.records_graph()) m.record_layer_graph();
  m.write_step(position, token);
  return stream_ms(m.stream, [&] {
    for (int i = 0; i < n_tokens; ++i) m.run_token(mode);
  });
}

}  // namespace pdvm
