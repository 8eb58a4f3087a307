// Reads the real files: the default model and llama.cpp's vocab-only GGUFs.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <chrono>
#include <set>

#include "pdvm/gguf.h"
#include "test_support.h"

namespace pdvm {
namespace {

TEST(GgufModel, DefaultModelIsConsistent) {
  if (!test::require_default_model()) GTEST_SKIP() << "default model absent";
  const auto start = std::chrono::steady_clock::now();
  const GgufFile file = GgufFile::open(test::default_model_path());
  const double open_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "opened %s in %.2f ms\n", file.path().c_str(), open_ms);

  EXPECT_EQ(file.version(), 3u);
  EXPECT_EQ(file.get_string_required("general.architecture"), "llama");
  const int64_t n_embd = file.get_int_required("llama.embedding_length");
  const int64_t n_layers = file.get_int_required("llama.block_count");
  const GgufArray& tokens = file.find("tokenizer.ggml.tokens")->as_array();
  EXPECT_EQ(tokens.element_type, GgufType::kString);
  EXPECT_EQ(file.find("tokenizer.ggml.scores") == nullptr ? tokens.elements.size()
                                                          : file.find("tokenizer.ggml.scores")->as_array().elements.size(),
            tokens.elements.size());

  const GgufTensor& embedding = file.tensor_required("token_embd.weight");
  ASSERT_EQ(embedding.shape.size(), 2u);
  EXPECT_EQ(embedding.shape[0], n_embd);
  EXPECT_EQ(embedding.shape[1], static_cast<int64_t>(tokens.elements.size()));

  std::set<int64_t> blocks;
  uint64_t total_bytes = 0;
  const uint8_t* base = file.tensors().front().data - file.tensors().front().offset;
  for (const GgufTensor& tensor : file.tensors()) {
    if (tensor.name.rfind("blk.", 0) == 0) blocks.insert(std::stoll(tensor.name.substr(4)));
    EXPECT_EQ(tensor.data, base + tensor.offset) << tensor.name;
    EXPECT_LE(file.data_section_offset() + tensor.offset + tensor.n_bytes, file.file_size()) << tensor.name;
    EXPECT_EQ(static_cast<int64_t>(tensor.n_bytes), type_bytes(tensor.type, tensor.n_elems())) << tensor.name;
    total_bytes += tensor.n_bytes;
  }
  EXPECT_EQ(static_cast<int64_t>(blocks.size()), n_layers);
  EXPECT_EQ(*blocks.rbegin(), n_layers - 1);
  // Tensor data fills the file after the header up to alignment padding.
  EXPECT_LE(file.data_section_offset() + total_bytes, file.file_size());
  EXPECT_GT(file.data_section_offset() + total_bytes + file.tensors().size() * file.alignment(), file.file_size());
}

TEST(GgufModel, VocabOnlyFiles) {
  const auto dir = test::testdata_dir() / "tokenizer";
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << dir << " absent";
  for (const char* name : {"ggml-vocab-gpt-2.gguf", "ggml-vocab-llama-spm.gguf", "ggml-vocab-starcoder.gguf"}) {
    SCOPED_TRACE(name);
    const GgufFile file = GgufFile::open(dir / name);
    EXPECT_TRUE(file.tensors().empty());
    const std::string model = file.get_string_required("tokenizer.ggml.model");
    EXPECT_TRUE(model == "gpt2" || model == "llama") << model;
    const GgufArray& tokens = file.find("tokenizer.ggml.tokens")->as_array();
    EXPECT_GT(tokens.elements.size(), 1000u);
    const int64_t bos = file.get_int("tokenizer.ggml.bos_token_id", 0);
    ASSERT_GE(bos, 0);
    ASSERT_LT(bos, static_cast<int64_t>(tokens.elements.size()));
    if (model == "gpt2") {
      EXPECT_GT(file.find("tokenizer.ggml.merges")->as_array().elements.size(), 1000u);
    } else {
      EXPECT_EQ(tokens.elements[static_cast<size_t>(bos)].as_string(), "<s>");
    }
  }
}

}  // namespace
}  // namespace pdvm
