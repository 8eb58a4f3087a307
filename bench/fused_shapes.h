// The fused GPU benchmarks' model shapes by short name, taken from `pdvm synth`'s named shapes
// so a geometry is written down once.
#pragma once

#include <string>
#include <utility>

#include "model/synth_model.h"
#include "pdvm/error.h"
#include "pdvm/pdvm_fused.h"

namespace pdvm::bench {

inline FusedConfig fused_shape_config(const std::string& short_name, int n_ctx) {
  static const std::pair<const char*, const char*> kShapes[] = {
      {"1b", "llama-3.2-1b"}, {"8b", "llama-3-8b"}, {"13b", "llama-2-13b"}};
  for (const auto& [name, full_name] : kShapes) {
    if (short_name != name) continue;
    const synth::LlamaShape& shape = synth::shape_by_name(full_name);
    FusedConfig c;
    c.n_layer = static_cast<int>(shape.n_layer);
    c.n_embd = static_cast<int>(shape.n_embd);
    c.n_head = static_cast<int>(shape.n_head);
    c.n_head_kv = static_cast<int>(shape.n_head_kv);
    c.head_dim = c.n_embd / c.n_head;
    c.n_rot = c.head_dim;
    c.n_ff = static_cast<int>(shape.n_ff);
    c.n_vocab = static_cast<int>(shape.n_vocab);
    c.n_ctx = n_ctx;
    c.rms_eps = shape.rms_norm_eps;
    c.rope_base = shape.rope_theta;
    return c;
  }
  throw_error(ErrorKind::kInvalidArgument, "unknown shape '" + short_name + "' (1b, 8b or 13b)");
}

}  // namespace pdvm::bench
