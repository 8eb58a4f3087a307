// The llama.cpp tokenizer test vectors (testdata/tokenizer/*.gguf.inp/.out): every input must
// encode to exactly the recorded ids (no BOS/EOS: the .out lines carry none) and decode back.
#include <gtest/gtest.h>

#include <algorithm>
#include <ctime>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "pdvm/error.h"
#include "pdvm/gguf.h"
#include "pdvm/tokenizer.h"
#include "test_support.h"

namespace pdvm {
namespace {

namespace fs = std::filesystem;

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << path;
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::vector<std::string> read_inputs(const fs::path& path) {
  const std::string separator = "\n__ggml_vocab_test__\n";
  const std::string text = read_file(path);
  std::vector<std::string> inputs;
  for (size_t start = 0; start < text.size();) {
    const size_t end = text.find(separator, start);
    if (end == std::string::npos) break;
    inputs.push_back(text.substr(start, end - start));
    start = end + separator.size();
  }
  return inputs;
}

std::vector<std::vector<int32_t>> read_expected(const fs::path& path) {
  std::istringstream lines(read_file(path));
  std::vector<std::vector<int32_t>> expected;
  for (std::string line; std::getline(lines, line);) {
    std::istringstream ids(line);
    expected.emplace_back();
    for (int32_t id; ids >> id;) expected.back().push_back(id);
  }
  return expected;
}

std::vector<fs::path> vocab_files() {
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(test::testdata_dir() / "tokenizer")) {
    if (entry.path().string().ends_with(".gguf.inp")) files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

TEST(TokenizerVectors, EveryCaseMatchesAndRoundTrips) {
  const std::vector<fs::path> files = vocab_files();
  ASSERT_GE(files.size(), 3u) << "tokenizer test vectors missing in " << test::testdata_dir();
  for (const fs::path& input_path : files) {
    fs::path gguf_path = input_path;
    gguf_path.replace_extension();  // drop .inp
    const GgufFile file = GgufFile::open(gguf_path);
    const Tokenizer tokenizer = Tokenizer::from_gguf(file);
    const std::vector<std::string> inputs = read_inputs(input_path);
    const std::vector<std::vector<int32_t>> expected = read_expected(gguf_path.string() + ".out");
    ASSERT_EQ(inputs.size(), expected.size()) << input_path;
    int failures = 0;
    for (size_t i = 0; i < inputs.size(); ++i) {
      const std::vector<int32_t> ids = tokenizer.encode(inputs[i], false, false);
      EXPECT_EQ(ids, expected[i]) << gguf_path.filename() << " case " << i << ": \"" << inputs[i] << "\"";
      EXPECT_EQ(tokenizer.decode(ids), inputs[i]) << gguf_path.filename() << " case " << i;
      failures += ids != expected[i];
    }
    std::printf("%s: %zu cases, %d mismatches\n", gguf_path.filename().c_str(), inputs.size(), failures);
  }
}

double thread_cpu_seconds() {
  timespec now{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) + static_cast<double>(now.tv_nsec) * 1e-9;
}

TEST(TokenizerVectors, EncodesHundredKilobytesWellUnderASecond) {
  for (const fs::path& input_path : vocab_files()) {
    fs::path gguf_path = input_path;
    gguf_path.replace_extension();
    const Tokenizer tokenizer = Tokenizer::from_gguf(GgufFile::open(gguf_path));
    // Mixed text from the vectors, plus a long word and a long digit run that pre-tokenizers
    // cannot split, shuffled afresh each run.
    std::vector<std::string> parts = read_inputs(input_path);
    parts.push_back(std::string(20000, 'a'));
    parts.push_back(std::string(5000, '7'));
    std::string text;
    std::uniform_int_distribution<size_t> pick(0, parts.size() - 1);
    while (text.size() < 100000) text += parts[pick(test::rng())];
    // CPU time of this thread, not wall time: CI runs this under ASan beside other tests on two
    // shared cores (wall 0.73 s for the whole binary there); a quadratic split of the long
    // word takes seconds of CPU however idle the machine.
    const double start = thread_cpu_seconds();
    const std::vector<int32_t> ids = tokenizer.encode(text, true, true);
    const double seconds = thread_cpu_seconds() - start;
    std::printf("%s: %zu bytes -> %zu tokens in %.1f ms\n", gguf_path.filename().c_str(), text.size(), ids.size(),
                seconds * 1e3);
    EXPECT_LT(seconds, 1.0);
    EXPECT_EQ(tokenizer.decode(ids), text);
  }
}

// Random bytes (with control-token text and U+2581 mixed in) never crash, and where the
// vocabulary can spell every byte they come back unchanged.
TEST(TokenizerVectors, RandomBytesRoundTrip) {
  const std::vector<std::string> fragments = {"<s>", "</s>", "<|endoftext|>", "<fim_prefix>", "\xE2\x96\x81", " ",
                                              "\n", "  ", "\xF0\x9F\x98\x80", "\xC3\xA9", "12", "'s"};
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<size_t> pick(0, fragments.size() - 1);
  std::uniform_int_distribution<int> length(0, 60);
  for (const fs::path& input_path : vocab_files()) {
    fs::path gguf_path = input_path;
    gguf_path.replace_extension();
    const Tokenizer tokenizer = Tokenizer::from_gguf(GgufFile::open(gguf_path));
    const bool spells_every_byte = gguf_path.filename() != "ggml-vocab-starcoder.gguf";
    for (int round = 0; round < 1000; ++round) {
      std::string text;
      for (int n = length(test::rng()); n > 0; --n) {
        if (byte(test::rng()) < 64) {
          text += fragments[pick(test::rng())];
        } else {
          text += static_cast<char>(byte(test::rng()));
        }
      }
      const std::vector<int32_t> as_text = tokenizer.encode(text, true, false);
      const std::vector<int32_t> parsed = tokenizer.encode(text, true, true);
      for (int32_t id : as_text) ASSERT_FALSE(tokenizer.is_control(id) && id != tokenizer.bos_id()) << text;
      if (spells_every_byte) {
        // A literal U+2581 decodes as a space in SPM.
        const bool spm = tokenizer.kind() == TokenizerKind::kSentencePiece;
        std::string expected;
        for (size_t pos = 0; pos < text.size();) {
          if (spm && text.compare(pos, 3, "\xE2\x96\x81") == 0) {
            expected += ' ';
            pos += 3;
          } else {
            expected += text[pos++];
          }
        }
        ASSERT_EQ(tokenizer.decode(as_text), expected) << gguf_path.filename();
      }
      ASSERT_LE(tokenizer.decode(parsed).size(), text.size() + 1);
    }
  }
}

// The gpt-2 vocabulary's tokenizer metadata with `key` replaced (or removed when value is empty).
std::vector<uint8_t> gpt2_metadata_with(const std::string& key, std::optional<GgufValue> value) {
  const GgufFile file = GgufFile::open(test::testdata_dir() / "tokenizer" / "ggml-vocab-gpt-2.gguf");
  GgufWriter writer;
  for (const GgufKeyValue& entry : file.metadata()) {
    if (!entry.key.starts_with("tokenizer.")) continue;
    if (entry.key != key) {
      writer.set(entry.key, entry.value);
    } else if (value) {
      writer.set(entry.key, *value);
    }
  }
  return writer.write_to_memory();
}

void expect_error(const std::string& key, std::optional<GgufValue> value, ErrorKind kind, const std::string& needle) {
  const std::vector<uint8_t> image = gpt2_metadata_with(key, std::move(value));
  try {
    Tokenizer::from_gguf(GgufFile::parse(image));
    ADD_FAILURE() << key << ": accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(TokenizerVectors, BadMetadataIsAClearError) {
  expect_error("tokenizer.ggml.pre", GgufValue("mystery-pre"), ErrorKind::kUnsupported, "mystery-pre");
  expect_error("tokenizer.ggml.model", GgufValue("wordpiece"), ErrorKind::kUnsupported, "wordpiece");
  expect_error("tokenizer.ggml.merges", std::nullopt, ErrorKind::kFileFormat, "tokenizer.ggml.merges");
  expect_error("tokenizer.ggml.tokens", GgufValue(uint32_t{5}), ErrorKind::kFileFormat, "tokenizer.ggml.tokens");
  expect_error("tokenizer.ggml.token_type",
               GgufValue::array(GgufType::kString, {GgufValue("x")}), ErrorKind::kFileFormat,
               "tokenizer.ggml.token_type");
  expect_error("tokenizer.ggml.token_type", GgufValue::array(GgufType::kI32, {GgufValue(int32_t{1})}),
               ErrorKind::kFileFormat, "token types");
  expect_error("tokenizer.ggml.eos_token_id", GgufValue(uint32_t{1u << 30}), ErrorKind::kFileFormat, "eos");
  expect_error("tokenizer.ggml.merges", GgufValue::array(GgufType::kString, {GgufValue("nospace")}),
               ErrorKind::kFileFormat, "nospace");
}

}  // namespace
}  // namespace pdvm
