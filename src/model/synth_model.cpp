#include "model/synth_model.h"

#include <algorithm>

#include "format/gguf_convert.h"
#include "model/synth_random.h"
#include "model/synth_tokenizer.h"
#include "pdvm/error.h"
#include "util/parallel_rows.h"

namespace pdvm::synth {

namespace {

constexpr float kWeightStddev = 0.02f;
constexpr int64_t kRowsPerBatch = 16;  // rows generated per float scratch buffer

LlamaShape make_shape(std::string name, int64_t embd, int64_t layers, int64_t heads, int64_t kv_heads, int64_t ff,
                      int64_t vocab, bool tied, float theta, int64_t context) {
  LlamaShape s;
  s.name = std::move(name);
  s.n_embd = embd;
  s.n_layer = layers;
  s.n_head = heads;
  s.n_head_kv = kv_heads;
  s.n_ff = ff;
  s.n_vocab = vocab;
  s.tied_embeddings = tied;
  s.rope_theta = theta;
  s.context_length = context;
  return s;
}

void require(bool ok, const std::string& message) {
  if (!ok) throw Error(ErrorKind::kInvalidArgument, message);
}

GgufValue string_array(const std::vector<std::string>& strings) {
  std::vector<GgufValue> values;
  values.reserve(strings.size());
  for (const std::string& s : strings) values.emplace_back(s);
  return GgufValue::array(GgufType::kString, std::move(values));
}

}  // namespace

const std::vector<LlamaShape>& named_shapes() {
  static const std::vector<LlamaShape> shapes = {
      make_shape("tiny", 64, 2, 4, 2, 160, 512, false, 10000.0f, 256),
      make_shape("smollm2-135m", 576, 30, 9, 3, 1536, 49152, true, 100000.0f, 8192),
      make_shape("llama-3.2-1b", 2048, 16, 32, 8, 8192, 128256, true, 500000.0f, 131072),
      make_shape("llama-2-7b", 4096, 32, 32, 32, 11008, 32000, false, 10000.0f, 4096),
      make_shape("llama-3-8b", 4096, 32, 32, 8, 14336, 128256, false, 500000.0f, 8192),
      make_shape("llama-2-13b", 5120, 40, 40, 40, 13824, 32000, false, 10000.0f, 4096),
  };
  return shapes;
}

const LlamaShape& shape_by_name(std::string_view name) {
  std::string known;
  for (const LlamaShape& shape : named_shapes()) {
    if (shape.name == name) return shape;
    known += (known.empty() ? "" : ", ") + shape.name;
  }
  throw Error(ErrorKind::kInvalidArgument, "unknown model shape '" + std::string(name) + "' (known: " + known + ")");
}

int64_t TensorPlan::n_elems() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t TensorPlan::n_bytes() const { return type_bytes(type, n_elems()); }

uint64_t ModelPlan::total_bytes() const {
  uint64_t total = 0;
  for (const TensorPlan& t : tensors) total += static_cast<uint64_t>(t.n_bytes());
  return total;
}

ModelPlan plan_model(const LlamaShape& shape, TensorType weight_type, uint64_t seed,
                     std::optional<TensorType> head_type) {
  const LlamaShape& s = shape;
  require(s.n_embd > 0 && s.n_layer > 0 && s.n_head > 0 && s.n_head_kv > 0 && s.n_ff > 0 && s.n_vocab > 0,
          "model shape '" + s.name + "' has a non-positive dimension");
  require(s.n_embd % s.n_head == 0 && (s.n_embd / s.n_head) % 2 == 0,
          "width " + std::to_string(s.n_embd) + " is not an even head size times " + std::to_string(s.n_head) + " heads");
  require(s.n_head % s.n_head_kv == 0, std::to_string(s.n_head) + " heads are not a multiple of " +
                                           std::to_string(s.n_head_kv) + " kv heads");
  for (TensorType type : {weight_type, head_type.value_or(weight_type)}) {
    const TypeInfo& info = type_info(type);
    require(info.quantizable && type != TensorType::kQ8_1,
            std::string("cannot write weights of type ") + info.name +
                " (supported: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k)");
  }

  ModelPlan plan{s, weight_type, seed, {}};
  const int64_t kv_width = s.n_embd / s.n_head * s.n_head_kv;
  const auto weight = [&](std::string name, int64_t row, int64_t rows, TensorType target) {
    const TensorType type = matrix_type(target, row, name);
    plan.tensors.push_back({std::move(name), type, {row, rows}, TensorRole::kWeight});
  };
  const TensorType head = head_type.value_or(weight_type);
  const auto norm = [&](std::string name) {
    plan.tensors.push_back({std::move(name), TensorType::kF32, {s.n_embd}, TensorRole::kNorm});
  };
  weight("token_embd.weight", s.n_embd, s.n_vocab, s.tied_embeddings ? head : weight_type);
  for (int64_t layer = 0; layer < s.n_layer; ++layer) {
    const std::string blk = "blk." + std::to_string(layer) + ".";
    norm(blk + "attn_norm.weight");
    weight(blk + "attn_q.weight", s.n_embd, s.n_embd, weight_type);
    weight(blk + "attn_k.weight", s.n_embd, kv_width, weight_type);
    weight(blk + "attn_v.weight", s.n_embd, kv_width, weight_type);
    weight(blk + "attn_output.weight", s.n_embd, s.n_embd, weight_type);
    norm(blk + "ffn_norm.weight");
    weight(blk + "ffn_gate.weight", s.n_embd, s.n_ff, weight_type);
    weight(blk + "ffn_up.weight", s.n_embd, s.n_ff, weight_type);
    weight(blk + "ffn_down.weight", s.n_ff, s.n_embd, weight_type);
  }
  norm("output_norm.weight");
  if (!s.tied_embeddings) weight("output.weight", s.n_embd, s.n_vocab, head);
  return plan;
}

std::vector<GgufKeyValue> model_metadata(const ModelPlan& plan) {
  const LlamaShape& s = plan.shape;
  const auto u32 = [](int64_t v) { return GgufValue(static_cast<uint32_t>(v)); };
  std::vector<GgufKeyValue> kv = {
      {"general.architecture", GgufValue(std::string("llama"))},
      {"general.name", GgufValue("pdvm synthetic " + s.name)},
      {"general.file_type", GgufValue(llama_file_type(plan.weight_type))},
      {"general.quantization_version", GgufValue(uint32_t{2})},
      {"pdvm.synth.seed", GgufValue(plan.seed)},
      {"llama.context_length", u32(s.context_length)},
      {"llama.embedding_length", u32(s.n_embd)},
      {"llama.block_count", u32(s.n_layer)},
      {"llama.feed_forward_length", u32(s.n_ff)},
      {"llama.rope.dimension_count", u32(s.n_embd / s.n_head)},
      {"llama.attention.head_count", u32(s.n_head)},
      {"llama.attention.head_count_kv", u32(s.n_head_kv)},
      {"llama.attention.layer_norm_rms_epsilon", GgufValue(s.rms_norm_eps)},
      {"llama.rope.freq_base", GgufValue(s.rope_theta)},
      {"llama.vocab_size", u32(s.n_vocab)},
  };
  const SynthVocab vocab = make_byte_level_vocab(s.n_vocab, plan.seed);
  std::vector<GgufValue> types;
  types.reserve(vocab.token_types.size());
  for (int32_t t : vocab.token_types) types.emplace_back(t);
  kv.push_back({"tokenizer.ggml.model", GgufValue(std::string("gpt2"))});
  kv.push_back({"tokenizer.ggml.pre", GgufValue(std::string("gpt-2"))});  // llama.cpp's name
  kv.push_back({"tokenizer.ggml.tokens", string_array(vocab.tokens)});
  kv.push_back({"tokenizer.ggml.token_type", GgufValue::array(GgufType::kI32, std::move(types))});
  kv.push_back({"tokenizer.ggml.merges", string_array(vocab.merges)});
  kv.push_back({"tokenizer.ggml.bos_token_id", GgufValue(vocab.bos_id)});
  kv.push_back({"tokenizer.ggml.eos_token_id", GgufValue(vocab.eos_id)});
  kv.push_back({"tokenizer.ggml.add_bos_token", GgufValue(true)});
  return kv;
}

void tensor_values(const ModelPlan& plan, const TensorPlan& tensor, int64_t row_begin, int64_t row_end, float* out) {
  const CounterRng rng(plan.seed, tensor.name);
  const int64_t row = tensor.shape[0];
  const int64_t first = row_begin * row, last = row_end * row;
  const float offset = tensor.role == TensorRole::kNorm ? 1.0f : 0.0f;
  float z[2];
  for (int64_t e = first; e < last; ++e) {
    if (e == first || e % 2 == 0) rng.normal_pair(static_cast<uint64_t>(e / 2), z[0], z[1]);
    out[e - first] = offset + kWeightStddev * z[e % 2];
  }
}

void fill_tensor(const ModelPlan& plan, const TensorPlan& tensor, std::span<uint8_t> out, int threads) {
  const int64_t row = tensor.shape[0];
  const int64_t n_rows = tensor.n_elems() / row;
  const int64_t row_bytes = type_bytes(tensor.type, row);
  PDVM_CHECK(static_cast<int64_t>(out.size()) == n_rows * row_bytes);
  parallel_rows(n_rows, threads, [&](int64_t begin, int64_t end) {
    std::vector<float> values(static_cast<size_t>(std::min(kRowsPerBatch, end - begin) * row));
    for (int64_t r = begin; r < end; r += kRowsPerBatch) {
      const int64_t batch_end = std::min(end, r + kRowsPerBatch);
      tensor_values(plan, tensor, r, batch_end, values.data());
      quantize_row(tensor.type, values.data(), out.data() + r * row_bytes, (batch_end - r) * row);
    }
  });
}

void write_model(const ModelPlan& plan, const std::filesystem::path& path, int threads,
                 const std::function<void(uint64_t, uint64_t)>& progress) {
  GgufWriter writer;
  for (GgufKeyValue& kv : model_metadata(plan)) writer.set(std::move(kv.key), std::move(kv.value));
  for (const TensorPlan& tensor : plan.tensors) {
    writer.add_tensor(tensor.name, tensor.type, tensor.shape,
                      [&plan, &tensor, threads](std::span<uint8_t> out) { fill_tensor(plan, tensor, out, threads); });
  }
  writer.write(path, progress);
}

}  // namespace pdvm::synth
