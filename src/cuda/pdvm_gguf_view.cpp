// Reads the llama tensors and hyper-parameters of a GGUF file into a FusedModelView.
#include <string>

#include "pdvm/error.h"
#include "pdvm/gguf.h"
#include "pdvm/pdvm_fused.h"
#include "pdvm/upg.h"

namespace pdvm {
namespace {

// A plain tensor, or a UPG matrix (validated; its view is kept in `view.upg_matrices`).
FusedWeightView weight(const GgufFile& file, FusedModelView& view, const std::string& name, bool required = true) {
  const GgufTensor* t = file.find_tensor(name);
  FusedWeightView w;
  w.name = name;
  if (!t && has_upg_weight(file, name)) {
    auto m = std::make_shared<const UpgMatrix>(upg_matrix(file, name));
    w.type = m->type();
    w.cols = m->k;
    w.rows = m->n;
    w.data = m.get();
    view.upg_matrices.push_back(std::move(m));
    return w;
  }
  if (!t) {
    if (required) throw_error(ErrorKind::kFileFormat, "fused decode: tensor " + name + " is missing");
    return w;
  }
  w.type = t->type;
  w.cols = t->shape.empty() ? 0 : t->shape[0];
  w.rows = t->shape.empty() ? 0 : t->n_rows();
  w.data = t->data;
  return w;
}

}  // namespace

FusedModelView fused_view_from_gguf(const GgufFile& file, int n_ctx) {
  const std::string arch = file.get_string_required("general.architecture");
  if (arch != "llama")
    throw_error(ErrorKind::kUnsupported, "fused decode: architecture '" + arch + "' is not llama");
  const std::string p = arch + ".";
  FusedModelView view;
  FusedConfig& c = view.config;
  c.n_layer = static_cast<int>(file.get_int_required(p + "block_count"));
  c.n_embd = static_cast<int>(file.get_int_required(p + "embedding_length"));
  c.n_ff = static_cast<int>(file.get_int_required(p + "feed_forward_length"));
  c.n_head = static_cast<int>(file.get_int_required(p + "attention.head_count"));
  c.n_head_kv = static_cast<int>(file.get_int(p + "attention.head_count_kv", c.n_head));
  if (c.n_head <= 0 || c.n_layer <= 0 || c.n_layer > 4096)
    throw_error(ErrorKind::kFileFormat, "fused decode: invalid head or block count");
  c.head_dim = static_cast<int>(file.get_int(p + "attention.key_length", c.n_embd / c.n_head));
  c.n_rot = static_cast<int>(file.get_int(p + "rope.dimension_count", c.head_dim));
  c.rms_eps = static_cast<float>(file.get_float(p + "attention.layer_norm_rms_epsilon", 1e-5));
  c.rope_base = static_cast<float>(file.get_float(p + "rope.freq_base", 10000.0));
  c.n_ctx = n_ctx;

  view.token_embd = weight(file, view, "token_embd.weight");
  c.n_vocab = static_cast<int>(view.token_embd.rows);
  view.output_norm = weight(file, view, "output_norm.weight");
  view.output = weight(file, view, "output.weight", false);
  if (const GgufTensor* f = file.find_tensor("rope_freqs.weight")) {
    if (f->type != TensorType::kF32)
      throw_error(ErrorKind::kUnsupported, "fused decode: rope_freqs.weight is not f32");
    const auto* v = reinterpret_cast<const float*>(f->data);
    view.rope_freq_factors.assign(v, v + f->n_elems());
  }
  for (int l = 0; l < c.n_layer; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    FusedLayerView layer;
    layer.attn_norm = weight(file, view, b + "attn_norm.weight");
    layer.wq = weight(file, view, b + "attn_q.weight");
    layer.wk = weight(file, view, b + "attn_k.weight");
    layer.wv = weight(file, view, b + "attn_v.weight");
    layer.wo = weight(file, view, b + "attn_output.weight");
    layer.ffn_norm = weight(file, view, b + "ffn_norm.weight");
    layer.gate = weight(file, view, b + "ffn_gate.weight");
    layer.up = weight(file, view, b + "ffn_up.weight");
    layer.down = weight(file, view, b + "ffn_down.weight");
    view.layers.push_back(std::move(layer));
  }
  return view;
}

}  // namespace pdvm
