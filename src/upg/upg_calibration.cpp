// Importance of each matmul input column, h_j = E[x_j^2], measured by running a short text
// through the model on the CPU reference backend wrapped in a backend that watches matmuls.
#include "upg/upg_calibration.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <sstream>

#include "pdvm/backend_registry.h"
#include "pdvm/error.h"
#include "pdvm/kv_cache.h"
#include "pdvm/model.h"
#include "pdvm/tokenizer.h"

namespace pdvm {
namespace {

// Varied everyday prose, code and numbers, so that no single topic dominates the statistics.
constexpr std::string_view kBuiltinText =
    "The morning train was late again, so Maria walked the last two miles to the harbour. "
    "Fishing boats were coming in with their nets folded, and gulls argued over whatever fell "
    "on the stones. She had promised her brother that she would check the engine of his small "
    "boat before the storm arrived on Thursday.\n"
    "Question: If a recipe needs 3 eggs for 12 pancakes, how many eggs are needed for 30? "
    "Answer: 30 / 12 = 2.5, and 2.5 * 3 = 7.5, so about 8 eggs.\n"
    "def mean(values):\n    return sum(values) / len(values) if values else 0.0\n"
    "In 1869 the first transcontinental railroad in the United States was completed, linking "
    "the networks of the east with the Pacific coast. Travel that once took months now took "
    "about a week.\n"
    "User: Can you suggest a name for a bakery that sells bread made with old grains?\n"
    "Assistant: A few ideas: Ancient Crust, The Spelt Shed, Millstone & Ember, or Heritage Loaf.\n"
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. Most of it "
    "happens in the leaves, inside chloroplasts that hold the green pigment chlorophyll.\n";

struct ColumnStats {
  std::vector<double> sum_squares;
  int64_t count = 0;
};

// Forwards every op to `inner`; matmul also adds x^2 of its input to the weight's statistics.
class ImportanceBackend final : public Backend {
 public:
  explicit ImportanceBackend(std::unique_ptr<Backend> inner) : inner_(std::move(inner)) {}

  std::string name() const override { return "importance(" + inner_->name() + ")"; }
  TensorType default_kv_type() const override { return inner_->default_kv_type(); }
  Tensor alloc(TensorType type, std::array<int64_t, 4> ne) override { return inner_->alloc(type, ne); }
  Tensor load_weight(TensorType type, std::array<int64_t, 4> ne, const void* bytes) override {
    return inner_->load_weight(type, ne, bytes);
  }
  void write(Tensor& dst, const void* src, uint64_t n_bytes, uint64_t offset) override {
    inner_->write(dst, src, n_bytes, offset);
  }
  void read(const Tensor& src, void* dst, uint64_t n_bytes, uint64_t offset) override {
    inner_->read(src, dst, n_bytes, offset);
  }
  void get_rows(const Tensor& table, const Tensor& ids, Tensor& out) override { inner_->get_rows(table, ids, out); }
  void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) override {
    inner_->rms_norm(x, weight, eps, out);
  }
  void matmul(const Tensor& w, const Tensor& x, Tensor& out) override {
    ColumnStats& stats = stats_[w.data];
    const int64_t k = x.ne[0];
    stats.sum_squares.resize(static_cast<size_t>(k), 0.0);
    std::vector<float> host(static_cast<size_t>(x.n_elems()));
    inner_->read(x, host.data(), host.size() * sizeof(float));
    for (int64_t t = 0; t < x.n_rows(); ++t) {
      for (int64_t j = 0; j < k; ++j) stats.sum_squares[j] += static_cast<double>(host[t * k + j]) * host[t * k + j];
    }
    stats.count += x.n_rows();
    inner_->matmul(w, x, out);
  }
  void rope(Tensor& x, const Tensor& positions, int n_heads, int head_dim, const RopeConfig& config) override {
    inner_->rope(x, positions, n_heads, head_dim, config);
  }
  void kv_store(Tensor& k_cache, Tensor& v_cache, const Tensor& k, const Tensor& v, const Tensor& positions) override {
    inner_->kv_store(k_cache, v_cache, k, v, positions);
  }
  void attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& positions,
                 const AttentionConfig& config, Tensor& out) override {
    inner_->attention(q, k_cache, v_cache, positions, config, out);
  }
  void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) override { inner_->swiglu(gate, up, out); }
  void add(const Tensor& a, const Tensor& b, Tensor& out) override { inner_->add(a, b, out); }
  void argmax(const Tensor& logits, Tensor& ids) override { inner_->argmax(logits, ids); }

  const std::map<const void*, ColumnStats>& stats() const { return stats_; }

 private:
  std::unique_ptr<Backend> inner_;
  std::map<const void*, ColumnStats> stats_;
};

}  // namespace

std::string_view builtin_calibration_text() { return kBuiltinText; }

std::string read_calibration_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_error(ErrorKind::kIo, "--calibration: cannot read " + path.string());
  std::ostringstream text;
  text << in.rdbuf();
  if (text.str().empty()) throw_error(ErrorKind::kInvalidArgument, "--calibration: " + path.string() + " is empty");
  return text.str();
}

Importance measure_importance(const GgufFile& file, std::string_view text, int max_tokens, int threads) {
  const Tokenizer tokenizer = Tokenizer::from_gguf(file);
  std::vector<int32_t> tokens = tokenizer.encode(text, true, false);
  if (static_cast<int>(tokens.size()) > max_tokens) tokens.resize(static_cast<size_t>(max_tokens));
  if (tokens.empty()) throw_error(ErrorKind::kInvalidArgument, "calibration text gives no tokens");

  BackendOptions options;
  options.n_threads = threads;
  ImportanceBackend backend(create_backend("cpu-ref", options));
  const LlamaModel model(file, backend);
  const LlamaConfig& c = model.config();
  KvCacheShape shape;
  shape.n_layer = c.n_layer;
  shape.n_ctx = static_cast<int64_t>(tokens.size());
  shape.row_width = int64_t{c.n_head_kv} * c.head_dim;
  shape.type = TensorType::kF32;
  KvCache cache(backend, shape);
  constexpr int kBatch = 64;
  ForwardWorkspace ws = model.make_workspace(kBatch);
  for (size_t first = 0; first < tokens.size(); first += kBatch) {
    const size_t count = std::min<size_t>(kBatch, tokens.size() - first);
    // Every position's logits, so the output matrix sees as many inputs as the others.
    model.forward(ws, std::span(tokens).subspan(first, count), cache, LogitsMode::kAll);
  }

  // Weight handles back to tensor names.
  std::map<const void*, std::string> names;
  const LlamaWeights& w = model.weights();
  names[w.output.data] = c.tied_output ? "token_embd.weight" : "output.weight";
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    const LlamaLayerWeights& l = w.layers[i];
    names[l.wq.data] = p + "attn_q.weight";
    names[l.wk.data] = p + "attn_k.weight";
    names[l.wv.data] = p + "attn_v.weight";
    names[l.wo.data] = p + "attn_output.weight";
    names[l.ffn_gate.data] = p + "ffn_gate.weight";
    names[l.ffn_up.data] = p + "ffn_up.weight";
    names[l.ffn_down.data] = p + "ffn_down.weight";
  }
  Importance result;
  result.n_tokens = static_cast<int64_t>(tokens.size());
  for (const auto& [handle, stats] : backend.stats()) {
    const auto name = names.find(handle);
    PDVM_CHECK(name != names.end());
    std::vector<float>& h = result.columns[name->second];
    h.resize(stats.sum_squares.size());
    // A small floor keeps columns that never fired from being ignored entirely.
    double mean = 0.0;
    for (double s : stats.sum_squares) mean += s / static_cast<double>(stats.count);
    mean /= static_cast<double>(std::max<size_t>(stats.sum_squares.size(), 1));
    for (size_t j = 0; j < h.size(); ++j) {
      h[j] = static_cast<float>(std::max(stats.sum_squares[j] / static_cast<double>(stats.count), 1e-3 * mean));
    }
  }
  return result;
}

}  // namespace pdvm
