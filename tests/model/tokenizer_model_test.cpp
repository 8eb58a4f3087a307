// The default model's tokenizer (SmolLM2: byte-level BPE, pre-tokenizer "smollm"): metadata,
// chat special tokens, end-of-generation ids, lossless round trips and streaming decode.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "pdvm/gguf.h"
#include "pdvm/tokenizer.h"
#include "test_support.h"
#include "tokenizer/utf8.h"

namespace pdvm {
namespace {

class SmolLmTokenizer : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!test::require_default_model()) GTEST_SKIP() << "default model missing";
    tokenizer_ = std::make_unique<Tokenizer>(Tokenizer::from_gguf(GgufFile::open(test::default_model_path())));
  }
  std::unique_ptr<Tokenizer> tokenizer_;
};

// Text from scripts and emoji whose bytes the vocabulary can all spell.
std::string random_text() {
  const std::vector<std::string> pool = {"Hello", " world", "  ", "\n", "\t", "123", "4", "Über", " naïve",
                                         "привет", "日本語", "😀", "👩\u200d👩\u200d👧", "<|im_end|>", "'s", "!?", " 0.5"};
  std::uniform_int_distribution<size_t> pick(0, pool.size() - 1);
  std::uniform_int_distribution<int> length(0, 30);
  std::string text;
  for (int n = length(test::rng()); n > 0; --n) text += pool[pick(test::rng())];
  return text;
}

bool is_valid_utf8(std::string_view text) {
  for (size_t pos = 0; pos < text.size();) {
    const size_t length = utf8::char_length(text, pos);
    if (length == 1 && static_cast<unsigned char>(text[pos]) >= 0x80) return false;
    pos += length;
  }
  return true;
}

TEST_F(SmolLmTokenizer, ReadsTheModelMetadata) {
  const Tokenizer& tok = *tokenizer_;
  EXPECT_EQ(tok.model_name(), "gpt2");
  EXPECT_EQ(tok.pre_name(), "smollm");
  EXPECT_EQ(tok.kind(), TokenizerKind::kByteLevelBpe);
  EXPECT_EQ(tok.n_vocab(), 49152);
  EXPECT_FALSE(tok.add_bos());  // tokenizer.ggml.add_bos_token = false
  EXPECT_EQ(tok.token_text(tok.eos_id()), "<|im_end|>");
  EXPECT_EQ(tok.eot_id(), tok.eos_id());
  EXPECT_TRUE(tok.is_end_of_generation(tok.eos_id()));
  EXPECT_TRUE(tok.is_end_of_generation(*tok.find_token("<|endoftext|>")));
  EXPECT_FALSE(tok.is_end_of_generation(*tok.find_token("<|im_start|>")));
  EXPECT_FALSE(tok.is_end_of_generation(*tok.find_token("Hello")));
}

TEST_F(SmolLmTokenizer, ChatSpecialTokensAreSingleIdsOnlyWhenParsed) {
  const Tokenizer& tok = *tokenizer_;
  const int32_t im_start = *tok.find_token("<|im_start|>");
  const int32_t im_end = *tok.find_token("<|im_end|>");
  const std::string prompt = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n";
  const std::vector<int32_t> parsed = tok.encode(prompt, true, true);
  EXPECT_EQ(parsed.front(), im_start);
  EXPECT_EQ(std::count(parsed.begin(), parsed.end(), im_start), 2);
  EXPECT_EQ(std::count(parsed.begin(), parsed.end(), im_end), 1);
  EXPECT_TRUE(tok.is_control(im_start));
  // Control tokens decode to nothing; the text between them survives.
  std::string visible;
  for (int32_t id : parsed) visible += tok.token_to_piece(id);
  EXPECT_EQ(visible, "user\nWhat is 2+2?\nassistant\n");

  const std::vector<int32_t> as_text = tok.encode(prompt, true, false);
  EXPECT_EQ(std::count(as_text.begin(), as_text.end(), im_start), 0);
  EXPECT_EQ(std::count(as_text.begin(), as_text.end(), im_end), 0);
  EXPECT_EQ(tok.decode(as_text), prompt);
}

TEST_F(SmolLmTokenizer, RoundTripsAndStreamsRandomText) {
  const Tokenizer& tok = *tokenizer_;
  for (int round = 0; round < 200; ++round) {
    const std::string text = random_text();
    const std::vector<int32_t> ids = tok.encode(text, true, false);
    ASSERT_EQ(tok.decode(ids), text);
    StreamingDecoder decoder(tok, /*text_start=*/true);
    std::string streamed;
    for (int32_t id : ids) {
      const std::string chunk = decoder.push(id);
      // The input was valid UTF-8, so every chunk must be valid on its own.
      ASSERT_TRUE(is_valid_utf8(chunk)) << "chunk after token " << id;
      streamed += chunk;
    }
    streamed += decoder.flush();
    ASSERT_EQ(streamed, text);
  }
}

}  // namespace
}  // namespace pdvm
