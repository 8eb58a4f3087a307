// `pdvm synth` library: plans of the named geometries (checked against the published parameter
// counts), metadata, determinism, weight statistics, and a written tiny model read back.
#include "model/synth_model.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <iterator>
#include <map>

#include "model/synth_tokenizer.h"
#include "pdvm/error.h"
#include "test_support.h"

namespace pdvm::synth {
namespace {

namespace fs = std::filesystem;

const GgufValue& find_key(const std::vector<GgufKeyValue>& kv, std::string_view key) {
  for (const GgufKeyValue& entry : kv) {
    if (entry.key == key) return entry.value;
  }
  throw std::runtime_error("missing key " + std::string(key));
}

uint64_t random_seed() { return test::rng()(); }

TEST(SynthPlan, NamedShapesHaveTheirPublishedParameterCounts) {
  // Parameter counts of the released checkpoints (model cards / safetensors headers).
  const std::map<std::string, int64_t> published = {
      {"smollm2-135m", 134515008},   {"llama-3.2-1b", 1235814400},  {"llama-2-7b", 6738415616},
      {"llama-3-8b", 8030261248},    {"llama-2-13b", 13015864320},
  };
  for (const auto& [name, params] : published) {
    SCOPED_TRACE(name);
    const ModelPlan plan = plan_model(shape_by_name(name), TensorType::kF16, random_seed());
    int64_t total = 0, f32_bytes = 0;
    for (const TensorPlan& t : plan.tensors) {
      total += t.n_elems();
      if (t.type == TensorType::kF32) f32_bytes += t.n_bytes();
    }
    EXPECT_EQ(total, params);
    EXPECT_EQ(plan.total_bytes(), static_cast<uint64_t>(2 * (params - f32_bytes / 4) + f32_bytes));
    const LlamaShape& s = plan.shape;
    EXPECT_EQ(plan.tensors.size(), static_cast<size_t>(2 + 9 * s.n_layer + (s.tied_embeddings ? 0 : 1)));
  }
}

TEST(SynthPlan, TensorNamesShapesAndTypes) {
  const ModelPlan plan = plan_model(shape_by_name("llama-3-8b"), TensorType::kQ4_0, random_seed());
  std::map<std::string, const TensorPlan*> by_name;
  for (const TensorPlan& t : plan.tensors) by_name[t.name] = &t;
  ASSERT_EQ(by_name.size(), plan.tensors.size()) << "duplicate names";
  EXPECT_EQ(by_name.at("token_embd.weight")->shape, (std::vector<int64_t>{4096, 128256}));
  EXPECT_EQ(by_name.at("blk.31.attn_k.weight")->shape, (std::vector<int64_t>{4096, 1024}));
  EXPECT_EQ(by_name.at("blk.0.ffn_down.weight")->shape, (std::vector<int64_t>{14336, 4096}));
  EXPECT_EQ(by_name.at("blk.7.ffn_gate.weight")->type, TensorType::kQ4_0);
  EXPECT_EQ(by_name.at("blk.7.ffn_norm.weight")->type, TensorType::kF32);
  EXPECT_EQ(by_name.at("output.weight")->shape, (std::vector<int64_t>{4096, 128256}));
  EXPECT_EQ(by_name.count("blk.32.attn_q.weight"), 0u);
  const ModelPlan tied = plan_model(shape_by_name("llama-3.2-1b"), TensorType::kQ8_0, 1);
  for (const TensorPlan& t : tied.tensors) EXPECT_NE(t.name, "output.weight");
}

// llama.cpp's quantized files keep the head in Q6_K: --head-type writes such a file.
TEST(SynthPlan, HeadTypeOfItsOwn) {
  const ModelPlan untied = plan_model(shape_by_name("llama-3-8b"), TensorType::kQ4_0, random_seed(), TensorType::kQ6_K);
  for (const TensorPlan& t : untied.tensors) {
    if (t.role != TensorRole::kWeight) continue;
    EXPECT_EQ(t.type, t.name == "output.weight" ? TensorType::kQ6_K : TensorType::kQ4_0) << t.name;
  }
  const ModelPlan tied = plan_model(shape_by_name("llama-3.2-1b"), TensorType::kQ4_0, random_seed(), TensorType::kQ8_0);
  EXPECT_EQ(tied.tensors.front().name, "token_embd.weight");
  EXPECT_EQ(tied.tensors.front().type, TensorType::kQ8_0);
  EXPECT_EQ(tied.tensors[2].type, TensorType::kQ4_0);  // blk.0.attn_q
  EXPECT_THROW(plan_model(shape_by_name("tiny"), TensorType::kQ4_0, 1, TensorType::kQ8_1), Error);
}

TEST(SynthPlan, MetadataOfABigShape) {
  const uint64_t seed = random_seed();
  const ModelPlan plan = plan_model(shape_by_name("llama-3-8b"), TensorType::kQ8_0, seed);
  const std::vector<GgufKeyValue> kv = model_metadata(plan);
  EXPECT_EQ(find_key(kv, "general.architecture").as_string(), "llama");
  EXPECT_EQ(find_key(kv, "general.file_type").as_int(), 7);
  EXPECT_EQ(find_key(kv, "llama.embedding_length").as_int(), 4096);
  EXPECT_EQ(find_key(kv, "llama.block_count").as_int(), 32);
  EXPECT_EQ(find_key(kv, "llama.attention.head_count").as_int(), 32);
  EXPECT_EQ(find_key(kv, "llama.attention.head_count_kv").as_int(), 8);
  EXPECT_EQ(find_key(kv, "llama.feed_forward_length").as_int(), 14336);
  EXPECT_EQ(find_key(kv, "llama.rope.dimension_count").as_int(), 128);
  EXPECT_EQ(find_key(kv, "llama.rope.freq_base").as_double(), 500000.0);
  EXPECT_EQ(find_key(kv, "pdvm.synth.seed").as_uint(), seed);
  const GgufArray& tokens = find_key(kv, "tokenizer.ggml.tokens").as_array();
  EXPECT_EQ(tokens.elements.size(), 128256u);
  EXPECT_EQ(find_key(kv, "tokenizer.ggml.merges").as_array().elements.size(), 128256u - 258);
  EXPECT_EQ(find_key(kv, "tokenizer.ggml.token_type").as_array().elements.size(), 128256u);
  EXPECT_EQ(tokens.elements[find_key(kv, "tokenizer.ggml.eos_token_id").as_uint()].as_string(), "<|end_of_text|>");
}

TEST(SynthTokenizer, ByteLevelVocabularyIsConsistent) {
  const SynthVocab vocab = make_byte_level_vocab(4000, random_seed());
  ASSERT_EQ(vocab.tokens.size(), 4000u);
  EXPECT_EQ(vocab.tokens[' '], "\xc4\xa0");  // GPT-2 maps space to U+0120
  EXPECT_EQ(vocab.tokens['a'], "a");
  EXPECT_EQ(vocab.tokens[0], "\xc4\x80");  // byte 0 -> U+0100
  std::map<std::string, size_t> id;
  for (size_t i = 0; i < vocab.tokens.size(); ++i) ASSERT_TRUE(id.emplace(vocab.tokens[i], i).second) << vocab.tokens[i];
  // Merge r joins two tokens that exist before token 256 + r, and produces token 256 + r.
  for (size_t r = 0; r < vocab.merges.size(); ++r) {
    const std::string& merge = vocab.merges[r];
    const size_t split = merge.find(' ');
    ASSERT_NE(split, std::string::npos);
    const std::string left = merge.substr(0, split), right = merge.substr(split + 1);
    ASSERT_LT(id.at(left), 256 + r);
    ASSERT_LT(id.at(right), 256 + r);
    ASSERT_EQ(vocab.tokens[256 + r], left + right);
  }
  EXPECT_EQ(vocab.token_types[vocab.bos_id], 3);
  EXPECT_THROW(make_byte_level_vocab(257, 1), Error);
}

TEST(SynthWeights, StatisticsMatchTheTargetDistribution) {
  const ModelPlan plan = plan_model(shape_by_name("smollm2-135m"), TensorType::kF32, random_seed());
  for (const char* name : {"blk.3.ffn_up.weight", "blk.0.attn_norm.weight", "token_embd.weight"}) {
    SCOPED_TRACE(name);
    const TensorPlan* tensor = nullptr;
    for (const TensorPlan& t : plan.tensors) tensor = t.name == name ? &t : tensor;
    ASSERT_NE(tensor, nullptr);
    const int64_t rows = std::min<int64_t>(tensor->n_elems() / tensor->shape[0], 2000);
    std::vector<float> v(static_cast<size_t>(rows * tensor->shape[0]));
    tensor_values(plan, *tensor, 0, rows, v.data());
    double sum = 0, sum_sq = 0;
    int64_t within_one_sigma = 0;
    const double expected_mean = tensor->role == TensorRole::kNorm ? 1.0 : 0.0;
    for (float x : v) {
      sum += x - expected_mean;
      sum_sq += (x - expected_mean) * (x - expected_mean);
      within_one_sigma += std::fabs(x - expected_mean) < 0.02;
    }
    const double n = static_cast<double>(v.size());
    const double mean = sum / n, stddev = std::sqrt(sum_sq / n - mean * mean);
    EXPECT_LT(std::fabs(mean), 6 * 0.02 / std::sqrt(n));
    EXPECT_NEAR(stddev, 0.02, 0.02 * 8 / std::sqrt(n) + 1e-5);
    EXPECT_NEAR(within_one_sigma / n, 0.6827, 6 * 0.47 / std::sqrt(n));
  }
}

TEST(SynthWeights, RowRangesAgreeWithTheWholeTensor) {
  const ModelPlan plan = plan_model(shape_by_name("tiny"), TensorType::kF32, random_seed());
  for (const TensorPlan* t : {&plan.tensors[1], &plan.tensors[2], &plan.tensors.back()}) {
    const int64_t rows = t->n_elems() / t->shape[0];
    std::vector<float> whole(static_cast<size_t>(t->n_elems())), parts(whole.size());
    tensor_values(plan, *t, 0, rows, whole.data());
    for (int64_t r = 0; r < rows; ++r) tensor_values(plan, *t, r, r + 1, parts.data() + r * t->shape[0]);
    EXPECT_EQ(whole, parts) << t->name;
  }
}

std::vector<uint8_t> read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST(SynthWrite, DeterministicForASeedAcrossThreadCounts) {
  const fs::path dir = fs::temp_directory_path() / ("pdvm_synth_test_" + std::to_string(getpid()));
  fs::create_directories(dir);
  const uint64_t seed = random_seed();
  const LlamaShape& tiny = shape_by_name("tiny");
  write_model(plan_model(tiny, TensorType::kQ4_1, seed), dir / "a.gguf", 1);
  write_model(plan_model(tiny, TensorType::kQ4_1, seed), dir / "b.gguf", 3);
  write_model(plan_model(tiny, TensorType::kQ4_1, seed + 1), dir / "c.gguf", 2);
  const std::vector<uint8_t> a = read_file(dir / "a.gguf");
  EXPECT_GT(a.size(), 100000u);
  EXPECT_EQ(a, read_file(dir / "b.gguf"));
  EXPECT_NE(a, read_file(dir / "c.gguf"));
  fs::remove_all(dir);
}

TEST(SynthWrite, TinyModelReadsBackWithinQuantizationError) {
  const fs::path path = fs::temp_directory_path() / ("pdvm_synth_tiny_" + std::to_string(getpid()) + ".gguf");
  const ModelPlan plan = plan_model(shape_by_name("tiny"), TensorType::kQ8_0, random_seed());
  write_model(plan, path, 2);
  const GgufFile file = GgufFile::open(path);
  EXPECT_EQ(file.get_int_required("llama.attention.head_count_kv"), 2);
  EXPECT_EQ(file.get_string_required("tokenizer.ggml.model"), "gpt2");
  ASSERT_EQ(file.tensors().size(), plan.tensors.size());
  for (const TensorPlan& planned : plan.tensors) {
    SCOPED_TRACE(planned.name);
    const GgufTensor& t = file.tensor_required(planned.name);
    EXPECT_EQ(t.type, planned.type);
    EXPECT_EQ(t.shape, planned.shape);
    std::vector<float> expected(static_cast<size_t>(t.n_elems())), got(expected.size());
    tensor_values(plan, planned, 0, t.n_rows(), expected.data());
    dequantize_row(t.type, t.data, got.data(), t.n_elems());
    for (size_t i = 0; i < got.size(); ++i) {
      // q8_0: half a step of absmax/127; Box-Muller on 24-bit uniforms never exceeds 5.8 sigma.
      const double tolerance = t.type == TensorType::kF32 ? 0.0 : 0.12 / 127 / 2 * 1.01;
      ASSERT_LE(std::fabs(got[i] - expected[i]), tolerance) << i;
    }
  }
  fs::remove(path);
}

TEST(SynthPlan, RejectsBadShapesAndTypes) {
  EXPECT_THROW(shape_by_name("llama-9"), Error);
  try {
    shape_by_name("llama-9");
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("smollm2-135m"), std::string::npos) << e.what();
  }
  LlamaShape odd = shape_by_name("tiny");
  odd.n_ff = 100;
  try {
    plan_model(odd, TensorType::kQ4_0, 1);
    ADD_FAILURE() << "accepted a row of 100 for q4_0";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("ffn_down"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(plan_model(odd, TensorType::kF16, 1));
  LlamaShape bad_heads = shape_by_name("tiny");
  bad_heads.n_head_kv = 3;
  EXPECT_THROW(plan_model(bad_heads, TensorType::kF16, 1), Error);
  EXPECT_THROW(plan_model(shape_by_name("tiny"), TensorType::kQ3_K, 1), Error);
  // K-quant super-blocks that do not fit a row fall back as in llama.cpp.
  for (const TensorPlan& t : plan_model(shape_by_name("smollm2-135m"), TensorType::kQ4_K, 1).tensors) {
    if (t.role == TensorRole::kWeight) {
      EXPECT_EQ(t.type, t.shape[0] == 1536 ? TensorType::kQ4_K : TensorType::kQ5_0) << t.name;
    }
  }
  for (const TensorPlan& t : plan_model(shape_by_name("tiny"), TensorType::kQ6_K, 1).tensors) {
    if (t.role == TensorRole::kWeight) {
      EXPECT_EQ(t.type, TensorType::kQ8_0) << t.name;
    }
  }
  EXPECT_NO_THROW(plan_model(shape_by_name("llama-2-7b"), TensorType::kQ4_K, 1));
  EXPECT_THROW(plan_model(shape_by_name("tiny"), TensorType::kQ8_1, 1), Error);
}

}  // namespace
}  // namespace pdvm::synth
