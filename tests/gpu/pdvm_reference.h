// CPU fp32/fp64 reference of a llama decoder for the PDVM fused-kernel tests: random weights
// quantized with pdvm::quantize_row and read back with pdvm::dequantize_row, so the device and
// the reference multiply exactly the same weights.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "pdvm/gguf.h"
#include "pdvm/pdvm_fused.h"
#include "pdvm/tensor_type.h"
#include "pdvm/upg.h"
#include "test_support.h"

namespace pdvm::test {

// A UPG matrix with its components and the view over them.
struct RefUpg {
  UpgEncoded encoded;
  UpgMatrix matrix;
};

struct RefWeight {
  TensorType type = TensorType::kF32;
  int64_t cols = 0;
  int64_t rows = 0;
  std::string name;
  std::vector<uint8_t> bytes;  // GGUF layout (plain types)
  std::shared_ptr<const RefUpg> upg;  // UPG types
  std::vector<float> values;   // dequantized, row-major

  FusedWeightView view() const {
    return {type, cols, rows, upg ? static_cast<const void*>(&upg->matrix) : bytes.data(), name};
  }
};

// UPG weights: UPG4 with 32-blocks, UPG3 with 64-blocks where the row allows and 1 % outliers
// (so both block sizes and the outlier path run), encoded by the engine's encoder and read back
// through the reference decompressor.
inline void encode_upg(RefWeight& w, const std::vector<float>& values) {
  UpgEncodeOptions options;
  options.bits = w.type == TensorType::kUpg3 ? 3 : 4;
  options.block = options.bits == 3 && w.cols % 64 == 0 ? 64 : 32;
  options.outlier_fraction = options.bits == 3 ? 0.01 : 0.0;
  auto upg = std::make_shared<RefUpg>();
  upg->encoded = upg_encode(values.data(), w.cols, w.rows, nullptr, options, 2);
  upg->matrix = upg->encoded.view();
  w.values.resize(values.size());
  for (int64_t r = 0; r < w.rows; ++r) upg_dequantize_row(upg->matrix, r, w.values.data() + r * w.cols);
  w.upg = std::move(upg);
}

inline RefWeight random_weight(std::string name, TensorType type, int64_t cols, int64_t rows, float stddev,
                               float center = 0.0f) {
  RefWeight w;
  w.type = type;
  w.cols = cols;
  w.rows = rows;
  w.name = std::move(name);
  std::vector<float> values = random_floats(static_cast<size_t>(cols * rows), stddev);
  for (float& v : values) v += center;
  if (is_upg_type(type)) {
    encode_upg(w, values);
    return w;
  }
  const int64_t row_bytes = type_bytes(type, cols);
  w.bytes.resize(static_cast<size_t>(row_bytes * rows));
  w.values.resize(values.size());
  for (int64_t r = 0; r < rows; ++r) {
    quantize_row(type, values.data() + r * cols, w.bytes.data() + r * row_bytes, cols);
    dequantize_row(type, w.bytes.data() + r * row_bytes, w.values.data() + r * cols, cols);
  }
  return w;
}

struct RefLayer {
  RefWeight attn_norm, wq, wk, wv, wo, ffn_norm, gate, up, down;
};

// The model and its own KV cache (values rounded to fp16 as the device cache stores them).
class RefModel {
 public:
  // `mixed_type` (default: type) is used for attn_v and ffn_down, as Q4_K_M files do with Q6_K;
  // `head_type` (default: type) for the LM head (output.weight, or the tied token_embd), as
  // llama.cpp's Q4_0 files do with Q6_K.
  RefModel(const FusedConfig& c, TensorType type, bool tied, std::optional<TensorType> mixed_type = {},
           std::optional<TensorType> head_type = {})
      : config_(c) {
    const TensorType mixed = mixed_type.value_or(type);
    const int64_t nq = int64_t{c.n_head} * c.head_dim, nkv = int64_t{c.n_head_kv} * c.head_dim;
    auto s = [](int64_t cols) { return 1.0f / std::sqrt(static_cast<float>(cols)); };
    for (int l = 0; l < c.n_layer; ++l) {
      const std::string b = "blk." + std::to_string(l) + ".";
      RefLayer L;
      L.attn_norm = random_weight(b + "attn_norm.weight", TensorType::kF32, c.n_embd, 1, 0.2f, 1.0f);
      L.wq = random_weight(b + "attn_q.weight", type, c.n_embd, nq, s(c.n_embd));
      L.wk = random_weight(b + "attn_k.weight", type, c.n_embd, nkv, s(c.n_embd));
      L.wv = random_weight(b + "attn_v.weight", mixed, c.n_embd, nkv, s(c.n_embd));
      L.wo = random_weight(b + "attn_output.weight", type, nq, c.n_embd, s(nq));
      L.ffn_norm = random_weight(b + "ffn_norm.weight", TensorType::kF32, c.n_embd, 1, 0.2f, 1.0f);
      L.gate = random_weight(b + "ffn_gate.weight", type, c.n_embd, c.n_ff, s(c.n_embd));
      L.up = random_weight(b + "ffn_up.weight", type, c.n_embd, c.n_ff, s(c.n_embd));
      L.down = random_weight(b + "ffn_down.weight", mixed, c.n_ff, c.n_embd, s(c.n_ff));
      layers_.push_back(std::move(L));
    }
    const TensorType head = head_type.value_or(type);
    token_embd_ = random_weight("token_embd.weight", tied ? head : type, c.n_embd, c.n_vocab, 1.0f);
    output_norm_ = random_weight("output_norm.weight", TensorType::kF32, c.n_embd, 1, 0.2f, 1.0f);
    if (!tied) output_ = random_weight("output.weight", head, c.n_embd, c.n_vocab, s(c.n_embd));
    const size_t cache = static_cast<size_t>(c.n_ctx) * nkv;
    k_cache_.assign(c.n_layer, std::vector<float>(cache));
    v_cache_.assign(c.n_layer, std::vector<float>(cache));
  }

  const FusedConfig& config() const { return config_; }
  const std::vector<RefLayer>& layers() const { return layers_; }
  const RefWeight& token_embd() const { return token_embd_; }
  const RefWeight& output_norm() const { return output_norm_; }
  const RefWeight* output() const { return output_.bytes.empty() ? nullptr : &output_; }

  FusedModelView view() const {
    FusedModelView v;
    v.config = config_;
    v.token_embd = token_embd_.view();
    v.output_norm = output_norm_.view();
    if (output()) v.output = output_.view();
    for (const RefLayer& L : layers_) {
      v.layers.push_back({L.attn_norm.view(), L.wq.view(), L.wk.view(), L.wv.view(), L.wo.view(),
                          L.ffn_norm.view(), L.gate.view(), L.up.view(), L.down.view()});
    }
    return v;
  }

  // One layer on x at `pos`; appends K/V. With full == false only the K/V append happens.
  void layer(int l, std::vector<float>& x, int pos, bool full = true) {
    const FusedConfig& c = config_;
    const RefLayer& L = layers_[l];
    const int hd = c.head_dim, nkv = c.n_head_kv * hd, G = c.n_head / c.n_head_kv;
    std::vector<float> xn = rms_norm(x, L.attn_norm.values);
    std::vector<float> q = matvec(L.wq, xn), k = matvec(L.wk, xn), v = matvec(L.wv, xn);
    rope(q, pos);
    rope(k, pos);
    for (int i = 0; i < nkv; ++i) {
      k_cache_[l][static_cast<size_t>(pos) * nkv + i] = fp16_to_fp32(fp32_to_fp16(k[i]));
      v_cache_[l][static_cast<size_t>(pos) * nkv + i] = fp16_to_fp32(fp32_to_fp16(v[i]));
    }
    if (!full) return;
    std::vector<float> attn(q.size());
    std::vector<double> scores(pos + 1);
    for (int h = 0; h < c.n_head; ++h) {
      const int kvh = h / G;
      double mx = -INFINITY;
      for (int t = 0; t <= pos; ++t) {
        double s = 0;
        for (int d = 0; d < hd; ++d) s += double{q[h * hd + d]} * k_cache_[l][static_cast<size_t>(t) * nkv + kvh * hd + d];
        scores[t] = s / std::sqrt(static_cast<double>(hd));
        mx = std::max(mx, scores[t]);
      }
      double sum = 0;
      for (int t = 0; t <= pos; ++t) sum += scores[t] = std::exp(scores[t] - mx);
      for (int d = 0; d < hd; ++d) {
        double acc = 0;
        for (int t = 0; t <= pos; ++t) acc += scores[t] * v_cache_[l][static_cast<size_t>(t) * nkv + kvh * hd + d];
        attn[h * hd + d] = static_cast<float>(acc / sum);
      }
    }
    std::vector<float> o = matvec(L.wo, attn);
    for (int i = 0; i < c.n_embd; ++i) x[i] += o[i];
    xn = rms_norm(x, L.ffn_norm.values);
    std::vector<float> g = matvec(L.gate, xn), u = matvec(L.up, xn);
    for (int i = 0; i < c.n_ff; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    std::vector<float> d = matvec(L.down, g);
    for (int i = 0; i < c.n_embd; ++i) x[i] += d[i];
  }

  std::vector<float> forward(int token, int pos) {
    const int n = config_.n_embd;
    std::vector<float> x(token_embd_.values.begin() + int64_t{token} * n, token_embd_.values.begin() + int64_t{token + 1} * n);
    for (int l = 0; l < config_.n_layer; ++l) layer(l, x, pos);
    return matvec(output() ? output_ : token_embd_, rms_norm(x, output_norm_.values));
  }

 private:
  std::vector<float> rms_norm(const std::vector<float>& x, const std::vector<float>& w) const {
    double ss = 0;
    for (float v : x) ss += double{v} * v;
    const float scale = static_cast<float>(1.0 / std::sqrt(ss / x.size() + config_.rms_eps));
    std::vector<float> out(x.size());
    for (size_t i = 0; i < x.size(); ++i) out[i] = x[i] * scale * w[i];
    return out;
  }

  static std::vector<float> matvec(const RefWeight& w, const std::vector<float>& x) {
    std::vector<float> out(static_cast<size_t>(w.rows));
    for (int64_t r = 0; r < w.rows; ++r) {
      double acc = 0;
      const float* row = w.values.data() + r * w.cols;
      for (int64_t i = 0; i < w.cols; ++i) acc += double{row[i]} * x[i];
      out[r] = static_cast<float>(acc);
    }
    return out;
  }

  void rope(std::vector<float>& v, int pos) const {
    const int hd = config_.head_dim;
    for (size_t head = 0; head < v.size() / hd; ++head) {
      for (int i = 0; 2 * i < config_.n_rot; ++i) {
        const double theta = pos * std::pow(static_cast<double>(config_.rope_base), -2.0 * i / config_.n_rot);
        const double c = std::cos(theta), s = std::sin(theta);
        float& a = v[head * hd + 2 * i];
        float& b = v[head * hd + 2 * i + 1];
        const double ra = a * c - b * s, rb = a * s + b * c;
        a = static_cast<float>(ra);
        b = static_cast<float>(rb);
      }
    }
  }

  FusedConfig config_;
  std::vector<RefLayer> layers_;
  RefWeight token_embd_, output_norm_, output_;
  std::vector<std::vector<float>> k_cache_, v_cache_;
};

// The model as a llama GGUF (the writer references the model's bytes: keep `ref` alive).
inline GgufWriter write_gguf(const RefModel& ref) {
  const FusedConfig& c = ref.config();
  GgufWriter writer;
  writer.set("general.architecture", GgufValue(std::string("llama")));
  writer.set("llama.block_count", GgufValue(static_cast<uint32_t>(c.n_layer)));
  writer.set("llama.embedding_length", GgufValue(static_cast<uint32_t>(c.n_embd)));
  writer.set("llama.feed_forward_length", GgufValue(static_cast<uint32_t>(c.n_ff)));
  writer.set("llama.attention.head_count", GgufValue(static_cast<uint32_t>(c.n_head)));
  writer.set("llama.attention.head_count_kv", GgufValue(static_cast<uint32_t>(c.n_head_kv)));
  writer.set("llama.attention.layer_norm_rms_epsilon", GgufValue(c.rms_eps));
  writer.set("llama.rope.freq_base", GgufValue(c.rope_base));
  int64_t outlier_cap = 0;
  bool any_upg = false;
  auto add_upg = [&](const RefWeight& w) {
    any_upg = true;
    const UpgEncoded& e = w.upg->encoded;
    auto bytes = [](const auto& v) {
      return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(v[0]));
    };
    writer.add_tensor(upg_component_name(w.name, "codes"), TensorType::kI8, {e.k * e.bits / 8, e.n}, bytes(e.codes));
    writer.add_tensor(upg_component_name(w.name, "bscale"), TensorType::kI8, {e.k / e.block, e.n}, bytes(e.bscale));
    writer.add_tensor(upg_component_name(w.name, "lut"), TensorType::kI8, {int64_t{1} << e.bits, e.n}, bytes(e.lut));
    writer.add_tensor(upg_component_name(w.name, "rscale"), TensorType::kF32, {e.n}, bytes(e.rscale));
    if (e.sp_rowptr.empty()) return;
    outlier_cap = std::max(outlier_cap, e.outlier_cap());
    const int64_t nnz = static_cast<int64_t>(e.sp_val.size());
    writer.add_tensor(upg_component_name(w.name, "sp_rowptr"), TensorType::kI32, {e.n + 1}, bytes(e.sp_rowptr));
    writer.add_tensor(upg_component_name(w.name, "sp_idx"), TensorType::kI16, {nnz}, bytes(e.sp_idx16));
    writer.add_tensor(upg_component_name(w.name, "sp_val"), TensorType::kF16, {nnz}, bytes(e.sp_val));
  };
  auto add = [&](const RefWeight& w) {
    if (w.upg) return add_upg(w);
    std::vector<int64_t> shape = w.rows == 1 ? std::vector<int64_t>{w.cols} : std::vector<int64_t>{w.cols, w.rows};
    writer.add_tensor(w.name, w.type, shape, std::span<const uint8_t>(w.bytes));
  };
  add(ref.token_embd());
  add(ref.output_norm());
  if (ref.output()) add(*ref.output());
  for (const RefLayer& L : ref.layers()) {
    for (const RefWeight* w : {&L.attn_norm, &L.wq, &L.wk, &L.wv, &L.wo, &L.ffn_norm, &L.gate, &L.up, &L.down}) add(*w);
  }
  if (any_upg) {
    writer.set("upg.version", GgufValue(kUpgVersion));
    writer.set("upg.outlier_cap", GgufValue(static_cast<uint32_t>(outlier_cap)));
  }
  return writer;
}

// ||a - b|| / ||b||
inline double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = double{a[i]} - b[i];
    num += d * d;
    den += double{b[i]} * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

}  // namespace pdvm::test
