#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "model/shape_string.h"
#include "pdvm/communicator.h"
#include "pdvm/error.h"
#include "pdvm/kv_cache.h"
#include "pdvm/model.h"
#include "pdvm/upg.h"

namespace pdvm {
namespace {

// A UPG matrix (pdvm/upg.h): validated from its components and handed to the backend as a
// UpgMatrix view.
Tensor load_upg(const GgufFile& file, Backend& backend, const std::string& name,
                const std::vector<int64_t>& expected) {
  const UpgMatrix m = upg_matrix(file, name);
  const std::vector<int64_t> shape{m.k, m.n};
  if (shape != expected) {
    throw_error(ErrorKind::kFileFormat, file.path() + ": UPG tensor " + name + " has shape " + shape_string(shape) +
                                            ", expected " + shape_string(expected));
  }
  try {
    return backend.load_weight(m.type(), {m.k, m.n, 1, 1}, &m);
  } catch (const Error& e) {
    throw Error(e.kind(), file.path() + ": tensor " + name + ": " + e.what());
  }
}

// The part of a weight one tensor-parallel rank holds: rows (output features) or columns
// (input features) [first, first + count). Empty: the whole tensor.
struct Slice {
  enum class Axis { kWhole, kRows, kColumns } axis = Axis::kWhole;
  int64_t first = 0, count = 0;
};

// Columns [first, first + count) of every row of a GGUF tensor, gathered into host memory
// (rows of a row-parallel shard are not contiguous in the file). Error(kUnsupported) when the
// cut falls inside a quantization block.
std::shared_ptr<uint8_t[]> gather_columns(const GgufFile& file, const GgufTensor& t, const Slice& slice) {
  const TypeInfo& info = type_info(t.type);
  if (slice.first % info.block_elems != 0 || slice.count % info.block_elems != 0) {
    throw_error(ErrorKind::kUnsupported,
                file.path() + ": tensor " + t.name + " (" + std::string(type_name(t.type)) + ", blocks of " +
                    std::to_string(info.block_elems) + ") cannot be split for tensor parallelism: a rank's part, columns " +
                    std::to_string(slice.first) + " .. " + std::to_string(slice.first + slice.count - 1) +
                    ", is not whole blocks");
  }
  const int64_t row_bytes = type_bytes(t.type, t.shape[0]);
  const int64_t offset = type_bytes(t.type, slice.first), part_bytes = type_bytes(t.type, slice.count);
  const int64_t n_rows = t.n_rows();
  std::shared_ptr<uint8_t[]> part(new uint8_t[static_cast<size_t>(part_bytes * n_rows)]);
  const auto* src = static_cast<const uint8_t*>(t.data);
  for (int64_t r = 0; r < n_rows; ++r) {
    std::memcpy(part.get() + r * part_bytes, src + r * row_bytes + offset, static_cast<size_t>(part_bytes));
  }
  return part;
}

// Checks that `name` exists with exactly `expected` shape and loads it (or this rank's slice
// of it) through the backend.
Tensor load(const GgufFile& file, Backend& backend, const std::string& name,
            const std::vector<int64_t>& expected, const Slice& slice = {}) {
  if (file.find_tensor(name) == nullptr && has_upg_weight(file, name)) {
    if (slice.axis != Slice::Axis::kWhole) {
      throw_error(ErrorKind::kUnsupported, file.path() + ": tensor " + name +
                                               " is UPG-coded; tensor parallelism needs GGUF tensor types");
    }
    return load_upg(file, backend, name, expected);
  }
  const GgufTensor& t = file.tensor_required(name);
  if (t.shape != expected) {
    throw_error(ErrorKind::kFileFormat, file.path() + ": tensor " + name + " has shape " +
                                            shape_string(t.shape) + ", expected " +
                                            shape_string(expected));
  }
  std::array<int64_t, 4> ne{1, 1, 1, 1};
  for (size_t i = 0; i < t.shape.size(); ++i) ne[i] = t.shape[i];
  const void* bytes = t.data;
  std::shared_ptr<uint8_t[]> gathered;
  if (slice.axis == Slice::Axis::kRows) {
    PDVM_CHECK(t.shape.size() == 2 && slice.first + slice.count <= t.shape[1]);
    ne[1] = slice.count;
    bytes = static_cast<const uint8_t*>(t.data) + slice.first * type_bytes(t.type, t.shape[0]);
  } else if (slice.axis == Slice::Axis::kColumns) {
    PDVM_CHECK(t.shape.size() == 2 && slice.first + slice.count <= t.shape[0]);
    gathered = gather_columns(file, t, slice);
    ne[0] = slice.count;
    bytes = gathered.get();
  }
  try {
    Tensor weight = backend.load_weight(t.type, ne, bytes);
    // A weight without an owner is a view of the bytes it was given (host backends): it
    // keeps the gathered copy alive; backends that copied let it go.
    if (gathered && !weight.owner) weight.owner = gathered;
    return weight;
  } catch (const Error& e) {
    throw Error(e.kind(), file.path() + ": tensor " + name + ": " + e.what());
  }
}

// Bytes of file data behind a weight: the tensor itself or, for UPG weights, its components.
uint64_t weight_file_bytes(const GgufFile& file, const std::string& name) {
  if (const GgufTensor* t = file.find_tensor(name)) return t->n_bytes;
  const std::string component_prefix = name + ".upg.";
  uint64_t bytes = 0;
  for (const GgufTensor& t : file.tensors()) {
    if (t.name.starts_with(component_prefix)) bytes += t.n_bytes;
  }
  return bytes;
}

Tensor rows(const Tensor& t, int64_t first, int64_t count) {
  PDVM_CHECK(first >= 0 && count >= 0 && first + count <= t.ne[1] && t.ne[2] == 1 && t.ne[3] == 1);
  return row_view(t, first, count);
}

// The first `count` elements of a 1-D tensor.
Tensor prefix(const Tensor& t, int64_t count) {
  PDVM_CHECK(count <= t.ne[0] && t.n_rows() == 1);
  Tensor view;
  view.type = t.type;
  view.ne = {count, 1, 1, 1};
  view.data = t.data;
  view.n_bytes = static_cast<uint64_t>(type_bytes(t.type, count));
  return view;
}

}  // namespace

void LlamaModel::check_split(const GgufFile& file, const LlamaConfig& config, int n_ranks) {
  auto check_divides = [&](int64_t count, const char* what) {
    if (count % n_ranks != 0) {
      throw_error(ErrorKind::kInvalidArgument, file.path() + ": tensor parallelism over " + std::to_string(n_ranks) +
                                                   " ranks needs " + what + " (" + std::to_string(count) +
                                                   ") divisible by " + std::to_string(n_ranks));
    }
  };
  check_divides(config.n_head, "the attention head count");
  check_divides(config.n_head_kv, "the KV head count");
  check_divides(config.n_ff, "the feed-forward width");
}

LlamaModel::LlamaModel(const GgufFile& file, Backend& backend, const LoadProgress& progress,
                       const TensorSplit& split)
    : config_(LlamaConfig::from_gguf(file)), backend_(&backend), split_(split) {
  const LlamaConfig& c = config_;
  const int n_ranks = split.n_ranks;
  PDVM_CHECK(n_ranks >= 1 && split.rank >= 0 && split.rank < n_ranks);
  PDVM_CHECK(n_ranks == 1 || (split.communicator && split.communicator->size() == n_ranks &&
                              split.communicator->rank() == split.rank));
  check_split(file, c, n_ranks);
  n_head_local_ = c.n_head / n_ranks;
  n_head_kv_local_ = c.n_head_kv / n_ranks;
  n_ff_local_ = c.n_ff / n_ranks;
  const uint64_t total_bytes = file.tensor_data_bytes();
  uint64_t done_bytes = 0;
  auto load_weight = [&](const std::string& name, const std::vector<int64_t>& expected, const Slice& slice = {}) {
    Tensor weight = load(file, backend, name, expected, slice);
    if (progress) {
      done_bytes += weight_file_bytes(file, name);
      progress(done_bytes, total_bytes);
    }
    return weight;
  };
  const int64_t embd = c.n_embd, q_width = int64_t{c.n_head} * c.head_dim,
                kv_width = int64_t{c.n_head_kv} * c.head_dim, ff = c.n_ff;
  weights_.token_embd = load_weight("token_embd.weight", {embd, c.n_vocab});
  weights_.output_norm = load_weight("output_norm.weight", {embd});
  // Split, each rank holds its share of the head's rows (vocabulary); a tied head's share is
  // loaded again from token_embd, whose whole table every rank keeps for its lookups.
  if (n_ranks > 1) {
    for (int r = 0; r < n_ranks; ++r)
      vocab_counts_.push_back(split_first_row(c.n_vocab, r + 1, n_ranks) - split_first_row(c.n_vocab, r, n_ranks));
    const Slice head_rows{Slice::Axis::kRows, split_first_row(c.n_vocab, split.rank, n_ranks),
                          vocab_counts_[split.rank]};
    weights_.output = c.tied_output ? load(file, backend, "token_embd.weight", {embd, c.n_vocab}, head_rows)
                                    : load_weight("output.weight", {embd, c.n_vocab}, head_rows);
  } else if (c.tied_output) {
    weights_.output = weights_.token_embd;
  } else {
    weights_.output = load_weight("output.weight", {embd, c.n_vocab});
  }
  if (c.has_rope_freqs) {
    weights_.rope_freqs = load_weight("rope_freqs.weight", {c.n_rot / 2});
    if (weights_.rope_freqs->type != TensorType::kF32) {
      throw_error(ErrorKind::kUnsupported, file.path() + ": tensor rope_freqs.weight must be F32");
    }
  }
  // This rank's heads and FFN columns; one rank takes whole tensors.
  auto part = [&](Slice::Axis axis, int64_t total) {
    if (n_ranks == 1) return Slice{};
    const int64_t count = total / n_ranks;
    return Slice{axis, split.rank * count, count};
  };
  const Slice q_rows = part(Slice::Axis::kRows, q_width), kv_rows = part(Slice::Axis::kRows, kv_width),
              ff_rows = part(Slice::Axis::kRows, ff), q_columns = part(Slice::Axis::kColumns, q_width),
              ff_columns = part(Slice::Axis::kColumns, ff);
  // Grown layer by layer: a corrupt block_count fails at the first missing tensor instead of
  // reserving memory for it.
  for (int i = 0; i < c.n_layer; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    LlamaLayerWeights& l = weights_.layers.emplace_back();
    l.attn_norm = load_weight(p + "attn_norm.weight", {embd});
    l.wq = load_weight(p + "attn_q.weight", {embd, q_width}, q_rows);
    l.wk = load_weight(p + "attn_k.weight", {embd, kv_width}, kv_rows);
    l.wv = load_weight(p + "attn_v.weight", {embd, kv_width}, kv_rows);
    l.wo = load_weight(p + "attn_output.weight", {q_width, embd}, q_columns);
    l.ffn_norm = load_weight(p + "ffn_norm.weight", {embd});
    l.ffn_gate = load_weight(p + "ffn_gate.weight", {embd, ff}, ff_rows);
    l.ffn_up = load_weight(p + "ffn_up.weight", {embd, ff}, ff_rows);
    l.ffn_down = load_weight(p + "ffn_down.weight", {ff, embd}, ff_columns);
  }
  // Tensors the model does not use never report; loading is complete all the same.
  if (progress && done_bytes < total_bytes) progress(total_bytes, total_bytes);
}

ForwardWorkspace LlamaModel::make_workspace(int capacity) const {
  PDVM_CHECK(capacity > 0);
  const LlamaConfig& c = config_;
  Backend& b = *backend_;
  const int64_t n = capacity, q_width = int64_t{n_head_local_} * c.head_dim, kv_width = kv_row_width();
  ForwardWorkspace ws;
  ws.capacity = capacity;
  ws.token_ids = b.alloc(TensorType::kI32, {n, 1, 1, 1});
  ws.positions = b.alloc(TensorType::kI32, {n, 1, 1, 1});
  ws.x = b.alloc(TensorType::kF32, {c.n_embd, n, 1, 1});
  ws.x_norm = b.alloc(TensorType::kF32, {c.n_embd, n, 1, 1});
  ws.q = b.alloc(TensorType::kF32, {q_width, n, 1, 1});
  ws.k = b.alloc(TensorType::kF32, {kv_width, n, 1, 1});
  ws.v = b.alloc(TensorType::kF32, {kv_width, n, 1, 1});
  ws.attn_out = b.alloc(TensorType::kF32, {q_width, n, 1, 1});
  ws.ffn_gate = b.alloc(TensorType::kF32, {n_ff_local_, n, 1, 1});
  ws.ffn_up = b.alloc(TensorType::kF32, {n_ff_local_, n, 1, 1});
  ws.ffn_act = b.alloc(TensorType::kF32, {n_ff_local_, n, 1, 1});
  ws.logits = b.alloc(TensorType::kF32, {c.n_vocab, n, 1, 1});
  if (!vocab_counts_.empty()) ws.logits_part = b.alloc(TensorType::kF32, {vocab_counts_[split_.rank], n, 1, 1});
  ws.argmax_ids = b.alloc(TensorType::kI32, {n, 1, 1, 1});
  return ws;
}

void LlamaModel::check_tokens(std::span<const int32_t> tokens) const {
  for (size_t t = 0; t < tokens.size(); ++t) {
    if (tokens[t] < 0 || tokens[t] >= config_.n_vocab) {
      throw_error(ErrorKind::kOutOfRange, "token id " + std::to_string(tokens[t]) + " at index " +
                                              std::to_string(t) + " is outside the vocabulary (0 .. " +
                                              std::to_string(config_.n_vocab - 1) + ")");
    }
  }
}

void LlamaModel::forward(ForwardWorkspace& ws, std::span<const int32_t> tokens, KvCache& cache,
                         LogitsMode mode) const {
  const LlamaConfig& c = config_;
  Backend& b = *backend_;
  const int64_t n = static_cast<int64_t>(tokens.size());
  PDVM_CHECK(n > 0 && n <= ws.capacity);
  PDVM_CHECK(mode == LogitsMode::kNone || weights_.output.data != nullptr);
  PDVM_CHECK(cache.shape().n_layer == c.n_layer && cache.shape().row_width == kv_row_width());
  cache.check_room(n);
  check_tokens(tokens);
  std::vector<int32_t> positions(n);
  for (int64_t t = 0; t < n; ++t) positions[t] = static_cast<int32_t>(cache.n_past() + t);
  b.write(ws.token_ids, tokens.data(), n * sizeof(int32_t));
  b.write(ws.positions, positions.data(), n * sizeof(int32_t));

  const Tensor ids = prefix(ws.token_ids, n);
  const Tensor pos = prefix(ws.positions, n);
  Tensor x = rows(ws.x, 0, n), x_norm = rows(ws.x_norm, 0, n);
  Tensor q = rows(ws.q, 0, n), k = rows(ws.k, 0, n), v = rows(ws.v, 0, n);
  Tensor attn_out = rows(ws.attn_out, 0, n);
  Tensor gate = rows(ws.ffn_gate, 0, n), up = rows(ws.ffn_up, 0, n), act = rows(ws.ffn_act, 0, n);
  const RopeConfig rope{c.n_rot, c.rope_freq_base,
                        weights_.rope_freqs ? &*weights_.rope_freqs : nullptr};
  const AttentionConfig attention{n_head_local_, n_head_kv_local_, c.head_dim,
                                  static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim)))};

  Communicator* comm = split_.communicator;
  auto ops = [&] {
    b.get_rows(weights_.token_embd, ids, x);
    for (int layer = 0; layer < c.n_layer; ++layer) {
      const LlamaLayerWeights& w = weights_.layers[layer];
      b.rms_norm(x, w.attn_norm, c.rms_eps, x_norm);
      b.matmul_shared_input({&w.wq, &w.wk, &w.wv}, x_norm, {&q, &k, &v});
      b.rope(q, pos, n_head_local_, c.head_dim, rope);
      b.rope(k, pos, n_head_kv_local_, c.head_dim, rope);
      b.kv_store(cache.keys(layer), cache.values(layer), k, v, pos);
      b.attention(q, cache.keys(layer), cache.values(layer), pos, attention, attn_out);
      b.matmul(w.wo, attn_out, x_norm);
      if (comm) comm->all_reduce_sum(b, x_norm);
      b.add(x, x_norm, x);

      b.rms_norm(x, w.ffn_norm, c.rms_eps, x_norm);
      b.matmul_shared_input({&w.ffn_gate, &w.ffn_up}, x_norm, {&gate, &up});
      b.swiglu(gate, up, act);
      b.matmul(w.ffn_down, act, x_norm);
      if (comm) comm->all_reduce_sum(b, x_norm);
      b.add(x, x_norm, x);
    }
    if (mode == LogitsMode::kNone) return;
    b.rms_norm(x, weights_.output_norm, c.rms_eps, x_norm);
    const Tensor head_in = mode == LogitsMode::kLast ? rows(x_norm, n - 1, 1) : x_norm;
    Tensor logits = rows(ws.logits, 0, head_in.ne[1]);
    if (vocab_counts_.empty()) {
      b.matmul(weights_.output, head_in, logits);
      return;
    }
    // This rank's vocabulary share, gathered into rank 0's logits.
    Tensor part = rows(ws.logits_part, 0, head_in.ne[1]);
    b.matmul(weights_.output, head_in, part);
    comm->gather_columns(b, part, logits, vocab_counts_);
  };
  if (n == 1 && mode != LogitsMode::kAll && (!comm || comm->recordable())) {
    // The step only reads buffers of this workspace and cache, so they (and whether it ends
    // with the head) name the recording.
    char key[96];
    std::snprintf(key, sizeof key, "llama-decode%s:%p:%p", mode == LogitsMode::kNone ? "-cache" : "", ws.x.data,
                  cache.keys(0).data);
    b.run_recorded(key, ops);
  } else {
    ops();
  }
  cache.advance(n);
}

}  // namespace pdvm
