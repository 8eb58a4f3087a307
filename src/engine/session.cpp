#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "engine/tensor_parallel.h"
#include "pdvm/backend_registry.h"
#include "pdvm/communicator.h"
#include "pdvm/engine.h"
#include "pdvm/error.h"
#include "pdvm/logits.h"
#include "pdvm/sampling.h"

namespace pdvm {
namespace {

constexpr int64_t kDefaultContext = 4096;

std::vector<int> rank_devices(const SessionOptions& options) {
  const int tp = options.tensor_parallel;
  if (options.tp_devices.empty()) {
    std::vector<int> devices(static_cast<size_t>(tp));
    for (int r = 0; r < tp; ++r) devices[r] = options.backend_options.device + r;
    return devices;
  }
  if (static_cast<int>(options.tp_devices.size()) != tp) {
    throw_error(ErrorKind::kInvalidArgument, "tensor parallel: " + std::to_string(options.tp_devices.size()) +
                                                 " devices given for " + std::to_string(tp) + " ranks");
  }
  return options.tp_devices;
}

// Host backends share the machine's cores: each rank gets its part of the thread budget.
BackendOptions rank_backend_options(const SessionOptions& options, int device) {
  BackendOptions o = options.backend_options;
  o.device = device;
  const int tp = options.tensor_parallel;
  if (tp > 1) {
    const int total = o.n_threads > 0 ? o.n_threads : static_cast<int>(std::thread::hardware_concurrency());
    o.n_threads = std::max(1, total / tp);
  }
  return o;
}

}  // namespace

Session::Session(const SessionOptions& options) {
  if (options.max_batch <= 0) {
    throw_error(ErrorKind::kInvalidArgument,
                "max batch must be positive, got " + std::to_string(options.max_batch));
  }
  if (options.n_ctx < 0) {
    throw_error(ErrorKind::kInvalidArgument,
                "context size must be positive, got " + std::to_string(options.n_ctx));
  }
  const int tp = options.tensor_parallel;
  if (tp < 1) throw_error(ErrorKind::kInvalidArgument, "--tp must be at least 1, got " + std::to_string(tp));
  const std::vector<int> devices = rank_devices(options);
  file_ = std::make_unique<GgufFile>(GgufFile::open(options.model_path));
  backend_ = create_backend(options.backend, rank_backend_options(options, devices[0]));
  config_ = LlamaConfig::from_gguf(*file_);
  KvCacheShape shape;
  shape.n_layer = config_.n_layer;
  shape.n_ctx = options.n_ctx > 0 ? options.n_ctx : std::min(config_.n_ctx_train, kDefaultContext);
  const int batch = static_cast<int>(std::min<int64_t>(options.max_batch, shape.n_ctx));
  std::string communicator = options.communicator;
  if (communicator == "auto") communicator = tp == 1 ? "" : backend_->name() == "cuda" ? "nccl" : "in-process";
  if (communicator == "nccl" && backend_->device_queue() == nullptr) {
    throw_error(ErrorKind::kInvalidArgument, "the nccl communicator needs a GPU backend, not " + backend_->name() +
                                                 " (use --tp-comm in-process)");
  }
  split_ranks_ = tp;
  split_communicator_ = communicator;
  std::vector<std::string> modes = gpu_mode_candidates(options.gpu_mode, backend_->name());
  // Split (or any group), the fused decoder runs only when asked for (--gpu-mode layer): its
  // prompts go one token at a time, while the unfused split runs them batched.
  if (!communicator.empty() && options.gpu_mode == "auto") modes = {"unfused"};
  if (options.gpu_mode == "auto" && options.kv_type && *options.kv_type != TensorType::kF16 && modes.size() > 1) {
    std::fprintf(stderr,
                 "pdvm: notice: --gpu-mode auto: using the unfused path (--kv-type %s: the fused modes keep an f16 "
                 "cache)\n",
                 std::string(type_name(*options.kv_type)).c_str());
    modes = {"unfused"};
  }
  open_accelerator(modes, shape.n_ctx, {devices, communicator});
  if (accelerator_) {
    // The fused decoder keeps an f16 KV cache; a backend cache that shares rows with it too.
    if (options.kv_type && *options.kv_type != TensorType::kF16)
      throw_error(ErrorKind::kInvalidArgument, "--kv-type " + std::string(type_name(*options.kv_type)) +
                                                   ": --gpu-mode " + gpu_mode_ + " keeps an f16 KV cache");
    shape.type = TensorType::kF16;
    shape.row_width = int64_t{config_.n_head_kv} * config_.head_dim;
    // Batched prompts share K/V rows with one fused decoder, not with a split one.
    if (options.fused_batched_prompts && communicator.empty() && backend_copy_fits(shape, batch)) {
      try {
        model_ = std::make_unique<LlamaModel>(*file_, *backend_, options.load_progress, TensorSplit{});
        cache_ = std::make_unique<KvCache>(*backend_, shape);
        batch_ws_ = model_->make_workspace(batch);
        return;
      } catch (const Error& e) {
        if (e.kind() != ErrorKind::kResource) throw;
        std::fprintf(stderr, "pdvm: notice: --gpu-mode %s: prompts run one token at a time (%s)\n",
                     gpu_mode_.c_str(), e.what());
        batch_ws_ = {};
        cache_.reset();
        model_.reset();
      }
    }
    // Every token, prompt included, runs on the accelerator, which holds the only copy of the
    // weights and the KV cache; the session keeps just the positions.
    shape.n_layer = 0;
    cache_ = std::make_unique<KvCache>(*backend_, shape);
    return;
  }
  LlamaModel::check_split(*file_, config_, tp);  // before the ranks and their threads start
  if (!communicator.empty()) {
    tp_ = std::make_unique<TensorParallelPeers>(create_communicator_group(communicator, devices));
  }
  auto split = [&](int rank) {
    return tp_ ? TensorSplit{rank, tp, &tp_->communicator(rank)} : TensorSplit{};
  };
  model_ = std::make_unique<LlamaModel>(*file_, *backend_, options.load_progress, split(0));
  shape.row_width = model_->kv_row_width();
  shape.type = options.kv_type.value_or(backend_->default_kv_type());
  cache_ = std::make_unique<KvCache>(*backend_, shape);
  batch_ws_ = model_->make_workspace(batch);
  decode_ws_ = model_->make_workspace(1);
  for (int rank = 1; rank < tp; ++rank) {
    PeerRank& peer = tp_->peers().emplace_back();
    peer.rank = rank;
    peer.backend = create_backend(options.backend, rank_backend_options(options, devices[rank]));
    peer.model = std::make_unique<LlamaModel>(*file_, *peer.backend, LoadProgress{}, split(rank));
    peer.cache = std::make_unique<KvCache>(*peer.backend, shape);
    peer.batch_ws = peer.model->make_workspace(batch);
    peer.decode_ws = peer.model->make_workspace(1);
  }
}

Session::~Session() = default;

void Session::open_accelerator(const std::vector<std::string>& modes, int64_t n_ctx, const AcceleratorSplit& split) {
  std::string failed, why;  // the first mode that could not run, for one notice
  for (const std::string& mode : modes) {
    if (mode != "unfused") {
      try {
        accelerator_ = create_decode_accelerator(*file_, n_ctx, mode, split);
      } catch (const Error& e) {
        if (e.kind() != ErrorKind::kUnsupported) throw;
        if (failed.empty()) {
          failed = mode;
          why = e.what();
        }
        continue;
      }
    }
    gpu_mode_ = mode;
    break;
  }
  if (!failed.empty()) {
    // The fused decoder cannot run this model (type, shape, build): a slower path can.
    std::fprintf(stderr, "pdvm: notice: --gpu-mode %s unavailable (%s); using %s\n", failed.c_str(), why.c_str(),
                 gpu_mode_ == "unfused" ? "the unfused path" : ("--gpu-mode " + gpu_mode_).c_str());
  }
}

bool Session::backend_copy_fits(const KvCacheShape& shape, int batch) const {
  const std::optional<uint64_t> available = backend_->available_memory();
  if (!available) return true;  // unknown: the loads report a shortage as kResource
  const uint64_t weights = file_->tensor_data_bytes();
  const uint64_t kv = 2 * static_cast<uint64_t>(config_.n_layer) * shape.n_ctx * shape.row_width * 2;
  // Batch activations and logits, with room for scratch buffers and repacking.
  const uint64_t activations = static_cast<uint64_t>(batch) *
                               (config_.n_vocab + 8 * int64_t{config_.n_embd} + 3 * int64_t{config_.n_ff}) * 4;
  const uint64_t needed = (weights + kv + activations) / 10 * 11 + (uint64_t{256} << 20);
  if (needed <= *available) return true;
  std::fprintf(stderr,
               "pdvm: notice: --gpu-mode %s: prompts run one token at a time (batched prompts need a second copy "
               "of the weights: ~%llu MiB, %llu MiB free)\n",
               gpu_mode_.c_str(), static_cast<unsigned long long>(needed >> 20),
               static_cast<unsigned long long>(*available >> 20));
  return false;
}

void Session::sync_kv(bool to_accelerator) {
  int64_t& behind = to_accelerator ? accelerator_kv_ : backend_kv_;
  const int64_t n = cache_->n_past() - behind;
  if (n <= 0) return;
  backend_->synchronize();
  for (int layer = 0; layer < config_.n_layer; ++layer) {
    Tensor& k = cache_->keys(layer);
    Tensor& v = cache_->values(layer);
    PDVM_CHECK(k.type == TensorType::kF16 && k.layout == 0 && v.type == TensorType::kF16 && v.layout == 0);
    void* k_rows = row_view(k, behind, n).data;
    void* v_rows = row_view(v, behind, n).data;
    if (to_accelerator) {
      accelerator_->write_kv(layer, behind, n, k_rows, v_rows);
    } else {
      accelerator_->read_kv(layer, behind, n, k_rows, v_rows);
    }
  }
  behind = cache_->n_past();
}

std::optional<uint64_t> Session::kernel_launches() const {
  const std::optional<uint64_t> backend = backend_->kernel_launches();
  if (!accelerator_) return backend;
  const std::optional<uint64_t> accelerator = accelerator_->kernel_launches();
  if (!accelerator) return std::nullopt;
  return *accelerator + backend.value_or(0);
}

void Session::run(std::span<const int32_t> tokens, LogitsMode mode, std::vector<float>* all_logits) {
  if (tokens.empty()) throw_error(ErrorKind::kInvalidArgument, "no tokens to evaluate");
  // Checked up front so that an overflowing request leaves the session untouched.
  cache_->check_room(static_cast<int64_t>(tokens.size()));
  const size_t vocab = static_cast<size_t>(n_vocab());
  if (all_logits) all_logits->assign(tokens.size() * vocab, 0.0f);
  if (accelerator_ && (!model_ || tokens.size() == 1)) {
    if (model_) sync_kv(true);
    for (size_t i = 0; i < tokens.size(); ++i) {
      accelerator_->decode(tokens[i], cache_->n_past());
      cache_->advance(1);
      if (all_logits) accelerator_->last_logits({all_logits->data() + i * vocab, vocab});
    }
    accelerator_kv_ = cache_->n_past();
    accelerator_has_logits_ = true;
    return;
  }
  model_->check_tokens(tokens);
  if (accelerator_) {
    // A batched prompt on the backend; the accelerator takes its K/V rows before its next step.
    sync_kv(false);
    accelerator_has_logits_ = false;
  }
  if (tokens.size() == 1 && mode == LogitsMode::kLast) {
    forward(true, tokens, mode);
    last_ws_ = &decode_ws_;
    return;
  }
  const size_t chunk = static_cast<size_t>(batch_ws_.capacity);
  for (size_t first = 0; first < tokens.size(); first += chunk) {
    const auto part = tokens.subspan(first, std::min(chunk, tokens.size() - first));
    forward(false, part, mode);
    if (all_logits) {
      backend_->read(batch_ws_.logits, all_logits->data() + first * vocab,
                     part.size() * vocab * sizeof(float));
    }
  }
  last_ws_ = &batch_ws_;
  if (mode == LogitsMode::kAll) last_row_ = static_cast<int64_t>((tokens.size() - 1) % chunk);
  backend_kv_ = cache_->n_past();
}

void Session::forward(bool decode, std::span<const int32_t> tokens, LogitsMode mode) {
  ForwardWorkspace& ws = decode ? decode_ws_ : batch_ws_;
  if (!tp_) return model_->forward(ws, tokens, *cache_, mode);
  tp_->run([&] { model_->forward(ws, tokens, *cache_, mode); },
           [&](PeerRank& peer) {
             peer.model->forward(decode ? peer.decode_ws : peer.batch_ws, tokens, *peer.cache, mode);
           });
}

int Session::tensor_parallel() const { return split_ranks_; }

std::string Session::communicator_name() const { return split_communicator_; }

double Session::time_token_all_reduces(int tokens) {
  PDVM_CHECK(tokens > 0);
  // The fused split decodes: its all-reduces (between its launches or inside its kernel).
  if (accelerator_) return accelerator_->time_token_all_reduces(tokens);
  if (!tp_) return 0.0;
  const int per_token = 2 * config().n_layer;
  // A recordable group replays the token's all-reduces as one graph, as a decode step does:
  // launched one by one from the host they would mostly time NCCL's host-side enqueue.
  auto reduce = [&](int rank, Backend& backend, ForwardWorkspace& ws, int n_tokens) {
    Communicator& comm = tp_->communicator(rank);
    Tensor x = row_view(ws.x_norm, 0, 1);
    auto token = [&] {
      for (int i = 0; i < per_token; ++i) comm.all_reduce_sum(backend, x);
    };
    for (int t = 0; t < n_tokens; ++t) {
      if (comm.recordable()) backend.run_recorded("tp-token-all-reduces", token);
      else token();
    }
    backend.synchronize();
  };
  auto round = [&](int n_tokens) {
    tp_->run([&] { reduce(0, *backend_, decode_ws_, n_tokens); },
             [&](PeerRank& peer) { reduce(peer.rank, *peer.backend, peer.decode_ws, n_tokens); });
  };
  round(2);  // warm-up: connections, buffers, the recording
  const auto start = std::chrono::steady_clock::now();
  round(tokens);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / tokens;
}

void Session::eval(std::span<const int32_t> tokens) {
  last_row_ = 0;
  run(tokens, LogitsMode::kLast, nullptr);
}

std::span<const float> Session::prefill(std::span<const int32_t> tokens) {
  eval(tokens);
  return last_logits();
}

std::span<const float> Session::prefill_all(std::span<const int32_t> tokens) {
  run(tokens, LogitsMode::kAll, &host_logits_);
  return host_logits_;
}

std::span<const float> Session::decode(int32_t token) { return prefill({&token, 1}); }

std::span<const float> Session::last_logits() {
  if (accelerator_has_logits_) {
    host_logits_.resize(static_cast<size_t>(n_vocab()));
    accelerator_->last_logits(host_logits_);
    return host_logits_;
  }
  if (!last_ws_) throw_error(ErrorKind::kInvalidArgument, "no logits yet: evaluate tokens first");
  const size_t vocab = static_cast<size_t>(n_vocab());
  host_logits_.resize(vocab);
  backend_->read(last_ws_->logits, host_logits_.data(), vocab * sizeof(float),
                 static_cast<uint64_t>(last_row_) * vocab * sizeof(float));
  return host_logits_;
}

int32_t Session::last_argmax() {
  if (accelerator_has_logits_) return accelerator_->last_argmax();
  if (!last_ws_) throw_error(ErrorKind::kInvalidArgument, "no logits yet: evaluate tokens first");
  ForwardWorkspace& ws = *last_ws_;
  backend_->argmax(row_view(ws.logits, last_row_, 1), ws.argmax_ids);
  int32_t id = 0;
  backend_->read(ws.argmax_ids, &id, sizeof id);
  if (id < 0) throw_non_finite_logits("at position " + std::to_string(n_past() - 1));
  return id;
}

int32_t Session::greedy_token() {
  if (accelerator_has_logits_) return accelerator_->last_argmax_run_ahead();
  return last_argmax();
}

bool Session::top_logits(size_t n, std::vector<LogitCandidate>& out) {
  if (accelerator_has_logits_) return accelerator_->top_logits(n, out);
  if (!last_ws_ || n > static_cast<size_t>(n_vocab())) return false;
  return backend_->top_logits(row_view(last_ws_->logits, last_row_, 1), static_cast<int>(n), out);
}

std::optional<int32_t> Session::draw_token(Sampler& sampler, std::span<const int32_t> history, bool run_ahead) {
  if (!accelerator_has_logits_) return std::nullopt;
  const std::optional<DeviceDraw> draw = sampler.device_draw(static_cast<size_t>(n_vocab()), history);
  if (!draw) return std::nullopt;
  int32_t token = 0;
  if (accelerator_->draw_token(*draw, run_ahead, token)) return token;
  sampler.put_back(*draw);
  return std::nullopt;
}

std::vector<int32_t> Session::generate_greedy(std::span<const int32_t> prompt, int n) {
  std::vector<int32_t> generated;
  eval(prompt);
  for (int i = 0; i < n; ++i) {
    generated.push_back(i + 1 < n ? greedy_token() : last_argmax());
    if (i + 1 < n) eval({&generated.back(), 1});
  }
  return generated;
}

void Session::reset() {
  cache_->reset();
  backend_kv_ = accelerator_kv_ = 0;
  if (tp_) {
    for (PeerRank& peer : tp_->peers()) peer.cache->reset();
  }
  last_ws_ = nullptr;
  accelerator_has_logits_ = false;
}

void Session::truncate(int64_t n_keep) {
  cache_->truncate(n_keep);
  backend_kv_ = std::min(backend_kv_, cache_->n_past());
  accelerator_kv_ = std::min(accelerator_kv_, cache_->n_past());
  if (tp_) {
    for (PeerRank& peer : tp_->peers()) peer.cache->truncate(n_keep);
  }
  last_ws_ = nullptr;
  accelerator_has_logits_ = false;
}

}  // namespace pdvm
