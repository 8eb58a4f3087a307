#include <algorithm>
#include <string>

#include "pdvm/backend_registry.h"
#include "pdvm/engine.h"
#include "pdvm/error.h"

namespace pdvm {
namespace {

constexpr int64_t kDefaultContext = 4096;

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
  file_ = std::make_unique<GgufFile>(GgufFile::open(options.model_path));
  backend_ = create_backend(options.backend, options.backend_options);
  model_ = std::make_unique<LlamaModel>(*file_, *backend_, options.load_progress);
  const LlamaConfig& c = model_->config();
  KvCacheShape shape;
  shape.n_layer = c.n_layer;
  shape.n_ctx = options.n_ctx > 0 ? options.n_ctx : std::min(c.n_ctx_train, kDefaultContext);
  shape.row_width = int64_t{c.n_head_kv} * c.head_dim;
  shape.type = options.kv_type.value_or(backend_->default_kv_type());
  cache_ = std::make_unique<KvCache>(*backend_, shape);
  const int batch = static_cast<int>(std::min<int64_t>(options.max_batch, shape.n_ctx));
  batch_ws_ = model_->make_workspace(batch);
  decode_ws_ = model_->make_workspace(1);
  accelerator_ = create_decode_accelerator(*file_, shape.n_ctx, options.gpu_mode);
}

Session::~Session() = default;

void Session::run(std::span<const int32_t> tokens, LogitsMode mode, std::vector<float>* all_logits) {
  if (tokens.empty()) throw_error(ErrorKind::kInvalidArgument, "no tokens to evaluate");
  // Checked up front so that an overflowing request leaves the session untouched.
  cache_->check_room(static_cast<int64_t>(tokens.size()));
  const size_t vocab = static_cast<size_t>(n_vocab());
  if (all_logits) all_logits->assign(tokens.size() * vocab, 0.0f);
  if (accelerator_) {
    for (size_t i = 0; i < tokens.size(); ++i) {
      accelerator_->decode(tokens[i], cache_->n_past());
      cache_->advance(1);
      if (all_logits) accelerator_->last_logits({all_logits->data() + i * vocab, vocab});
    }
    accelerator_has_logits_ = true;
    return;
  }
  if (tokens.size() == 1 && mode == LogitsMode::kLast) {
    model_->forward(decode_ws_, tokens, *cache_, mode);
    last_ws_ = &decode_ws_;
    return;
  }
  const size_t chunk = static_cast<size_t>(batch_ws_.capacity);
  for (size_t first = 0; first < tokens.size(); first += chunk) {
    const auto part = tokens.subspan(first, std::min(chunk, tokens.size() - first));
    model_->forward(batch_ws_, part, *cache_, mode);
    if (all_logits) {
      backend_->read(batch_ws_.logits, all_logits->data() + first * vocab,
                     part.size() * vocab * sizeof(float));
    }
  }
  last_ws_ = &batch_ws_;
  if (mode == LogitsMode::kAll) last_row_ = static_cast<int64_t>((tokens.size() - 1) % chunk);
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
  return id;
}

std::vector<int32_t> Session::generate_greedy(std::span<const int32_t> prompt, int n) {
  std::vector<int32_t> generated;
  eval(prompt);
  for (int i = 0; i < n; ++i) {
    generated.push_back(last_argmax());
    if (i + 1 < n) eval({&generated.back(), 1});
  }
  return generated;
}

void Session::reset() {
  cache_->reset();
  last_ws_ = nullptr;
  accelerator_has_logits_ = false;
}

void Session::truncate(int64_t n_keep) {
  cache_->truncate(n_keep);
  last_ws_ = nullptr;
  accelerator_has_logits_ = false;
}

}  // namespace pdvm
