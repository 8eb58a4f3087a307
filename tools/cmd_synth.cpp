// `pdvm synth`: writes a random-weight llama model of a real geometry, for benchmarks and tests
// at sizes we cannot download.
#include <cstdio>
#include <limits>
#include <memory>
#include <optional>
#include <string>

#include "cli_common.h"
#include "command.h"
#include "model/synth_model.h"
#include "progress_bar.h"
#include "util/parallel_rows.h"

namespace pdvm::cli {
namespace {

struct Options {
  std::string shape;
  std::string type = "f16";
  std::string head_type;
  uint64_t seed = 1;
  std::string output;
  int threads = default_thread_count();
  int64_t layers = 0, width = 0, heads = 0, kv_heads = 0, ffn = 0, vocab = 0;
};

int run(const Options& opt) {
  synth::LlamaShape shape = synth::shape_by_name(opt.shape);
  const auto override_dim = [](int64_t value, int64_t& dim) {
    if (value > 0) dim = value;
  };
  override_dim(opt.layers, shape.n_layer);
  override_dim(opt.width, shape.n_embd);
  override_dim(opt.heads, shape.n_head);
  override_dim(opt.kv_heads, shape.n_head_kv);
  override_dim(opt.ffn, shape.n_ff);
  override_dim(opt.vocab, shape.n_vocab);
  const TensorType type = tensor_type_flag("--type", opt.type);
  std::optional<TensorType> head_type;
  if (!opt.head_type.empty()) head_type = tensor_type_flag("--head-type", opt.head_type);
  const synth::ModelPlan plan = synth::plan_model(shape, type, opt.seed, head_type);
  ProgressBar bar("synth " + shape.name);
  synth::write_model(plan, opt.output, opt.threads, [&bar](uint64_t done, uint64_t total) { bar.update(done, total); });
  return 0;
}

}  // namespace

PDVM_REGISTER_COMMAND("synth", "write a random-weight llama model of a named geometry", [](CLI::App& app) {
  auto opt = std::make_shared<Options>();
  app.add_option("--shape", opt->shape,
                 "tiny, smollm2-135m, llama-3.2-1b, llama-2-7b, llama-3-8b or llama-2-13b")->required();
  app.add_option("--type", opt->type, "weight type: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k")
      ->capture_default_str();
  app.add_option("--head-type", opt->head_type,
                 "the LM head's type (output.weight, or the tied embedding), as llama.cpp's quantized files keep "
                 "q6_k there (default: --type)");
  app.add_option("--seed", opt->seed, "random seed (same seed, same bytes)")->capture_default_str();
  app.add_option("-o,--output", opt->output, "output .gguf path")->required();
  app.add_option("--threads", opt->threads, "generator threads")->capture_default_str()->check(integer_in(1, kMaxThreads));
  app.add_option("--layers", opt->layers, "override the number of layers")->check(integer_in(1, std::numeric_limits<int64_t>::max()));
  app.add_option("--width", opt->width, "override the embedding width")->check(integer_in(1, std::numeric_limits<int64_t>::max()));
  app.add_option("--heads", opt->heads, "override the number of attention heads")->check(integer_in(1, std::numeric_limits<int64_t>::max()));
  app.add_option("--kv-heads", opt->kv_heads, "override the number of key/value heads")->check(integer_in(1, std::numeric_limits<int64_t>::max()));
  app.add_option("--ffn", opt->ffn, "override the feed-forward width")->check(integer_in(1, std::numeric_limits<int64_t>::max()));
  app.add_option("--vocab", opt->vocab, "override the vocabulary size")->check(integer_in(1, std::numeric_limits<int64_t>::max()));
  return [opt] { return run(*opt); };
});

}  // namespace pdvm::cli
