// GGUF writer -> reader round trips: every value type, nested arrays, many tensors, alignments,
// files on disk and split models.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "gguf_test_util.h"
#include "pdvm/error.h"
#include "pdvm/gguf.h"
#include "test_support.h"

namespace pdvm {
namespace {

using test::random_bytes;
using test::random_int;
using test::same_value;

struct TensorSpec {
  std::string name;
  TensorType type;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

TensorSpec random_tensor(const std::string& name) {
  static const TensorType kTypes[] = {TensorType::kF32,  TensorType::kF16,  TensorType::kBF16, TensorType::kQ4_0,
                                      TensorType::kQ4_1, TensorType::kQ8_0, TensorType::kQ4_K, TensorType::kQ6_K,
                                      TensorType::kI8,   TensorType::kI32};
  TensorSpec spec{name, kTypes[random_int(0, std::size(kTypes) - 1)], {}, {}};
  const TypeInfo& info = type_info(spec.type);
  spec.shape.push_back(info.block_elems * random_int(1, 4));
  const int64_t n_dims = random_int(1, 4);
  for (int64_t d = 1; d < n_dims; ++d) spec.shape.push_back(random_int(1, 3));
  int64_t n_elems = 1;
  for (int64_t dim : spec.shape) n_elems *= dim;
  spec.bytes = random_bytes(static_cast<size_t>(n_elems / info.block_elems * info.block_bytes));
  return spec;
}

class Fixture {
 public:
  explicit Fixture(uint64_t alignment, int n_tensors = 12) : writer(alignment) {
    for (GgufType type : test::scalar_types()) {
      metadata.push_back({fmt::format("test.scalar.{}", gguf_type_name(type)), test::random_scalar(type)});
      metadata.push_back({fmt::format("test.array.{}", gguf_type_name(type)), test::random_array(type, 20)});
    }
    metadata.push_back({"test.array.empty", GgufValue::array(GgufType::kF32, {})});
    std::vector<GgufValue> outer;
    for (int i = 0; i < 3; ++i) {
      std::vector<GgufValue> middle;
      for (int j = 0; j < i + 1; ++j) middle.push_back(test::random_array(GgufType::kI32, 5));
      outer.push_back(GgufValue::array(GgufType::kArray, std::move(middle)));
    }
    metadata.push_back({"test.array.nested", GgufValue::array(GgufType::kArray, std::move(outer))});
    for (const GgufKeyValue& kv : metadata) writer.set(kv.key, kv.value);
    for (int i = 0; i < n_tensors; ++i) {
      tensors.push_back(random_tensor(fmt::format("blk.{}.weight", i)));
      writer.add_tensor(tensors.back().name, tensors.back().type, tensors.back().shape, tensors.back().bytes);
    }
  }

  void expect_matches(const GgufFile& file, uint64_t alignment) const {
    EXPECT_EQ(file.version(), 3u);
    EXPECT_EQ(file.alignment(), alignment);
    for (const GgufKeyValue& kv : metadata) {
      const GgufValue* value = file.find(kv.key);
      ASSERT_NE(value, nullptr) << kv.key;
      EXPECT_TRUE(same_value(*value, kv.value)) << kv.key;
    }
    // The reader reports exactly the keys written, in order (plus general.alignment if not default).
    size_t next = 0;
    for (const GgufKeyValue& kv : file.metadata()) {
      if (kv.key == "general.alignment") continue;
      ASSERT_LT(next, metadata.size());
      EXPECT_EQ(kv.key, metadata[next++].key);
    }
    EXPECT_EQ(next, metadata.size());
    ASSERT_EQ(file.tensors().size(), tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
      const GgufTensor& tensor = file.tensors()[i];
      EXPECT_EQ(tensor.name, tensors[i].name);
      EXPECT_EQ(tensor.type, tensors[i].type);
      EXPECT_EQ(tensor.shape, tensors[i].shape);
      EXPECT_EQ(tensor.n_bytes, tensors[i].bytes.size());
      EXPECT_EQ(tensor.offset % alignment, 0u);
      EXPECT_EQ((file.data_section_offset() + tensor.offset) % alignment, 0u);
      EXPECT_TRUE(std::equal(tensor.bytes().begin(), tensor.bytes().end(), tensors[i].bytes.begin()))
          << tensor.name;
      EXPECT_EQ(file.find_tensor(tensor.name), &tensor);
    }
  }

  GgufWriter writer;
  std::vector<GgufKeyValue> metadata;
  std::vector<TensorSpec> tensors;
};

TEST(Gguf, RoundTripInMemoryEveryTypeAndAlignment) {
  for (uint64_t alignment : {1, 8, 32, 64, 256, 4096}) {
    SCOPED_TRACE(alignment);
    Fixture fixture(alignment);
    const std::vector<uint8_t> image = fixture.writer.write_to_memory();
    const GgufFile file = GgufFile::parse(image);
    fixture.expect_matches(file, alignment);
    EXPECT_EQ(file.file_size(), image.size());
    EXPECT_EQ(file.n_splits(), 1u);
  }
}

TEST(Gguf, RoundTripThroughFileMatchesMemoryImage) {
  Fixture fixture(64, 40);
  const auto dir = std::filesystem::temp_directory_path() / fmt::format("pdvm_gguf_{}", test::rng()());
  std::filesystem::create_directories(dir);
  const auto path = dir / "model.gguf";
  std::vector<std::pair<uint64_t, uint64_t>> progress;
  fixture.writer.write(path, [&](uint64_t done, uint64_t total) { progress.emplace_back(done, total); });
  EXPECT_FALSE(std::filesystem::exists(dir / "model.gguf.tmp"));
  ASSERT_EQ(progress.size(), fixture.tensors.size());
  for (size_t i = 1; i < progress.size(); ++i) EXPECT_GT(progress[i].first, progress[i - 1].first);
  EXPECT_EQ(progress.back().first, progress.back().second);

  const std::vector<uint8_t> image = fixture.writer.write_to_memory();
  std::ifstream in(path, std::ios::binary);
  const std::vector<uint8_t> on_disk{std::istreambuf_iterator<char>(in), {}};
  EXPECT_EQ(on_disk, image);

  {
    GgufFile file = GgufFile::open(path);
    GgufFile moved = std::move(file);  // the mapping and tensor pointers survive a move
    fixture.expect_matches(moved, 64);
    EXPECT_EQ(moved.path(), path.string());
  }
  std::filesystem::remove_all(dir);
}

TEST(Gguf, TypedAccessors) {
  GgufWriter writer;
  const auto big = static_cast<uint64_t>(random_int(1, 1000)) + (uint64_t{1} << 63);
  const auto small = static_cast<int32_t>(random_int(-1000000, 1000000));
  writer.set("a.int", GgufValue(small));
  writer.set("a.big", GgufValue(big));
  writer.set("a.float", GgufValue(1.5f));
  writer.set("a.bool", GgufValue(true));
  writer.set("a.text", GgufValue("hello"));
  writer.set("a.int", GgufValue(small + 1));  // replaces, keeps position
  const std::vector<uint8_t> image = writer.write_to_memory();
  const GgufFile file = GgufFile::parse(image, "acc.gguf");
  EXPECT_EQ(file.metadata().front().key, "a.int");
  EXPECT_EQ(file.get_int("a.int", 0), small + 1);
  EXPECT_EQ(file.get_int_required("a.int"), small + 1);
  EXPECT_EQ(file.find("a.big")->as_uint(), big);
  EXPECT_DOUBLE_EQ(file.get_float("a.float", 0), 1.5);
  EXPECT_DOUBLE_EQ(file.get_float("a.int", 0), small + 1);
  EXPECT_TRUE(file.get_bool("a.bool", false));
  EXPECT_EQ(file.get_string("a.text", ""), "hello");
  EXPECT_EQ(file.get_string("missing", "fallback"), "fallback");
  EXPECT_EQ(file.get_int("missing", -7), -7);
  auto message_of = [](auto&& action) -> std::string {
    try {
      action();
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kFileFormat);
      return e.what();
    }
    return "no error";
  };
  EXPECT_NE(message_of([&] { file.get_int("a.big", 0); }).find("a.big"), std::string::npos);
  EXPECT_NE(message_of([&] { file.get_int("a.text", 0); }).find("expected integer"), std::string::npos);
  EXPECT_NE(message_of([&] { file.get_string_required("nope"); }).find("'nope'"), std::string::npos);
  EXPECT_NE(message_of([&] { file.tensor_required("output.weight"); }).find("output.weight"), std::string::npos);
  EXPECT_EQ(file.find_tensor("output.weight"), nullptr);
}

TEST(Gguf, DisplayStrings) {
  EXPECT_EQ(GgufValue("a\"b\n").to_display_string(), "\"a\\\"b\\n\"");
  EXPECT_EQ(GgufValue(static_cast<int8_t>(-3)).to_display_string(), "-3");
  std::vector<GgufValue> many;
  for (int32_t i = 0; i < 10; ++i) many.push_back(GgufValue(i));
  EXPECT_EQ(GgufValue::array(GgufType::kI32, many).to_display_string(3), "[0, 1, 2, ...] (10 items)");
  EXPECT_THROW(GgufValue::array(GgufType::kU8, many), Error);
}

TEST(Gguf, WriterRejectsInvalidTensors) {
  GgufWriter writer;
  const std::vector<uint8_t> bytes(64);
  EXPECT_THROW(writer.add_tensor("q", TensorType::kQ4_0, {31}, [](std::span<uint8_t>) {}), Error);
  EXPECT_THROW(writer.add_tensor("z", TensorType::kF32, {0}, [](std::span<uint8_t>) {}), Error);
  EXPECT_THROW(writer.add_tensor("n", TensorType::kF32, {8}, std::span<const uint8_t>(bytes.data(), 31)), Error);
  writer.add_tensor("t", TensorType::kF32, {16}, bytes);
  EXPECT_THROW(writer.add_tensor("t", TensorType::kF32, {16}, bytes), Error);
  EXPECT_THROW(GgufWriter(3), Error);
  EXPECT_THROW(writer.set("general.alignment", GgufValue(uint32_t{0})), Error);
}

// Writes a model split over `count` files the way llama.cpp's gguf-split names and tags them.
std::vector<TensorSpec> write_split_model(const std::filesystem::path& dir, int count, int per_split) {
  std::vector<TensorSpec> all;
  for (int split = 0; split < count; ++split) {
    GgufWriter writer;
    writer.set("split.no", GgufValue(static_cast<uint16_t>(split)));
    writer.set("split.count", GgufValue(static_cast<uint16_t>(count)));
    writer.set("split.tensors.count", GgufValue(static_cast<int32_t>(count * per_split)));
    if (split == 0) writer.set("general.name", GgufValue("split test"));
    for (int i = 0; i < per_split; ++i) {
      all.push_back(random_tensor(fmt::format("t.{}.{}", split, i)));
      writer.add_tensor(all.back().name, all.back().type, all.back().shape, all.back().bytes);
    }
    writer.write(dir / fmt::format("model-{:05d}-of-{:05d}.gguf", split + 1, count));
  }
  return all;
}

std::string open_error(const std::filesystem::path& path) {
  try {
    GgufFile::open(path);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFileFormat) << e.what();
    return e.what();
  }
  return "no error";
}

TEST(Gguf, SplitModelLoadsAsOne) {
  const auto dir = std::filesystem::temp_directory_path() / fmt::format("pdvm_split_{}", test::rng()());
  std::filesystem::create_directories(dir);
  const std::vector<TensorSpec> specs = write_split_model(dir, 3, 4);
  const GgufFile file = GgufFile::open(dir / "model-00001-of-00003.gguf");
  EXPECT_EQ(file.n_splits(), 3u);
  EXPECT_EQ(file.get_string("general.name", ""), "split test");
  uint64_t total_size = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) total_size += entry.file_size();
  EXPECT_EQ(file.file_size(), total_size);
  ASSERT_EQ(file.tensors().size(), specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    const GgufTensor& tensor = file.tensor_required(specs[i].name);
    EXPECT_EQ(tensor.file_index, i / 4);
    EXPECT_EQ(tensor.shape, specs[i].shape);
    EXPECT_TRUE(std::equal(tensor.bytes().begin(), tensor.bytes().end(), specs[i].bytes.begin()));
  }

  EXPECT_NE(open_error(dir / "model-00002-of-00003.gguf").find("open the first split"), std::string::npos);
  std::filesystem::remove(dir / "model-00003-of-00003.gguf");
  const std::string missing = open_error(dir / "model-00001-of-00003.gguf");
  EXPECT_NE(missing.find("missing"), std::string::npos) << missing;
  EXPECT_NE(missing.find("model-00003-of-00003.gguf"), std::string::npos) << missing;
  std::filesystem::remove_all(dir);
}

TEST(Gguf, SplitModelsMustAgree) {
  const auto dir = std::filesystem::temp_directory_path() / fmt::format("pdvm_split_bad_{}", test::rng()());
  std::filesystem::create_directories(dir);
  write_split_model(dir, 2, 2);
  {  // second split claims another total tensor count
    GgufWriter writer;
    writer.set("split.no", GgufValue(uint16_t{1}));
    writer.set("split.count", GgufValue(uint16_t{2}));
    writer.set("split.tensors.count", GgufValue(int32_t{5}));
    writer.write(dir / "model-00002-of-00002.gguf");
  }
  EXPECT_NE(open_error(dir / "model-00001-of-00002.gguf").find("disagree"), std::string::npos);
  {  // agreeing keys but a tensor missing from the total
    GgufWriter writer;
    writer.set("split.no", GgufValue(uint16_t{1}));
    writer.set("split.count", GgufValue(uint16_t{2}));
    writer.set("split.tensors.count", GgufValue(int32_t{4}));
    writer.write(dir / "model-00002-of-00002.gguf");
  }
  const std::string message = open_error(dir / "model-00001-of-00002.gguf");
  EXPECT_NE(message.find("split.tensors.count is 4"), std::string::npos) << message;
  {  // a split file whose name does not follow the pattern
    std::filesystem::copy_file(dir / "model-00001-of-00002.gguf", dir / "renamed.gguf");
    EXPECT_NE(open_error(dir / "renamed.gguf").find("-00001-of-00002.gguf"), std::string::npos);
  }
  std::filesystem::remove_all(dir);
}

TEST(Gguf, OpenReportsIoErrors) {
  try {
    GgufFile::open("/nonexistent/dir/model.gguf");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/dir/model.gguf"), std::string::npos);
  }
}

}  // namespace
}  // namespace pdvm
