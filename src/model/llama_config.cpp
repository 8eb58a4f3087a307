#include <string>

#include "model/shape_string.h"
#include "pdvm/error.h"
#include "pdvm/upg.h"
#include "pdvm/model.h"

namespace pdvm {
namespace {

class ConfigReader {
 public:
  ConfigReader(const GgufFile& file, std::string prefix) : file_(file), prefix_(std::move(prefix)) {}

  // A positive integer hyper-parameter; `fallback` < 0 means required.
  int positive(std::string_view key, int64_t fallback = -1) const {
    const std::string full = prefix_ + std::string(key);
    const int64_t value = fallback < 0 ? file_.get_int_required(full) : file_.get_int(full, fallback);
    if (value <= 0 || value > (int64_t{1} << 30)) {
      throw_error(ErrorKind::kFileFormat,
                  file_.path() + ": metadata key " + full + " = " + std::to_string(value) +
                      " is out of range (expected 1 .. 2^30)");
    }
    return static_cast<int>(value);
  }

  float real(std::string_view key, double fallback) const {
    return static_cast<float>(file_.get_float(prefix_ + std::string(key), fallback));
  }

  [[noreturn]] void fail(const std::string& what) const {
    throw_error(ErrorKind::kFileFormat, file_.path() + ": " + what);
  }

 private:
  const GgufFile& file_;
  std::string prefix_;
};

}  // namespace

LlamaConfig LlamaConfig::from_gguf(const GgufFile& file) {
  LlamaConfig c;
  c.architecture = file.get_string_required("general.architecture");
  if (c.architecture != "llama") {
    throw_error(ErrorKind::kUnsupported, file.path() + ": architecture '" + c.architecture +
                                             "' is not supported (only llama)");
  }
  const ConfigReader r(file, c.architecture + ".");
  c.n_layer = r.positive("block_count");
  c.n_embd = r.positive("embedding_length");
  c.n_ff = r.positive("feed_forward_length");
  c.n_head = r.positive("attention.head_count");
  c.n_head_kv = r.positive("attention.head_count_kv", c.n_head);
  if (c.n_head % c.n_head_kv != 0) {
    r.fail("attention.head_count " + std::to_string(c.n_head) +
           " is not a multiple of attention.head_count_kv " + std::to_string(c.n_head_kv));
  }
  if (!file.find(c.architecture + ".attention.key_length") && c.n_embd % c.n_head != 0) {
    r.fail("embedding_length " + std::to_string(c.n_embd) + " is not a multiple of head_count " +
           std::to_string(c.n_head) + " and attention.key_length is absent");
  }
  c.head_dim = r.positive("attention.key_length", c.n_embd / c.n_head);
  if (r.positive("attention.value_length", c.head_dim) != c.head_dim) {
    throw_error(ErrorKind::kUnsupported,
                file.path() + ": attention.value_length differs from attention.key_length");
  }
  c.n_rot = r.positive("rope.dimension_count", c.head_dim);
  if (c.n_rot % 2 != 0 || c.n_rot > c.head_dim) {
    r.fail("rope.dimension_count " + std::to_string(c.n_rot) + " must be even and <= head dim " +
           std::to_string(c.head_dim));
  }
  c.rope_freq_base = r.real("rope.freq_base", 10000.0);
  c.rms_eps = r.real("attention.layer_norm_rms_epsilon", 1e-5);
  if (!(c.rope_freq_base > 0.0f) || !(c.rms_eps > 0.0f)) {
    r.fail("rope.freq_base and attention.layer_norm_rms_epsilon must be positive");
  }
  c.n_ctx_train = r.positive("context_length", 2048);

  const std::vector<int64_t> embd_shape = weight_shape(file, "token_embd.weight");  // plain or UPG
  if (embd_shape.size() != 2 || embd_shape[0] != c.n_embd) {
    r.fail("tensor token_embd.weight has shape " + shape_string(embd_shape) + ", expected [" +
           std::to_string(c.n_embd) + ", n_vocab]");
  }
  c.n_vocab = r.positive("vocab_size", embd_shape[1]);
  if (c.n_vocab != embd_shape[1]) {
    r.fail("vocab_size " + std::to_string(c.n_vocab) + " differs from token_embd.weight rows " +
           std::to_string(embd_shape[1]));
  }
  c.tied_output = !has_weight(file, "output.weight");
  c.has_rope_freqs = file.find_tensor("rope_freqs.weight") != nullptr;
  return c;
}

std::string LlamaConfig::summary() const {
  return architecture + ": " + std::to_string(n_layer) + " layers, width " + std::to_string(n_embd) +
         ", ffn " + std::to_string(n_ff) + ", heads " + std::to_string(n_head) + "/" +
         std::to_string(n_head_kv) + " x " + std::to_string(head_dim) + ", rope " +
         std::to_string(n_rot) + " base " + std::to_string(rope_freq_base) +
         (has_rope_freqs ? " with freq factors" : "") + ", vocab " + std::to_string(n_vocab) +
         ", context " + std::to_string(n_ctx_train) + (tied_output ? ", tied output" : "");
}

}  // namespace pdvm
