// Tokenizer algorithms on small handmade vocabularies, checked against fixed expectations and
// against naive quadratic re-implementations of the merge rules on fresh random text.
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <string>
#include <vector>

#include "pdvm/error.h"
#include "pdvm/tokenizer.h"
#include "test_support.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/utf8.h"

namespace pdvm {
namespace {

const std::string kMark = "\xE2\x96\x81";

// <unk> <s> </s>, 256 byte tokens, then the given pieces with their scores.
TokenizerVocab spm_vocab(const std::vector<std::pair<std::string, float>>& pieces) {
  TokenizerVocab vocab;
  vocab.kind = TokenizerKind::kSentencePiece;
  vocab.model_name = "llama";
  vocab.tokens = {"<unk>", "<s>", "</s>"};
  vocab.types = {TokenType::kUnknown, TokenType::kControl, TokenType::kControl};
  vocab.scores = {0, 0, 0};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    vocab.tokens.push_back(name);
    vocab.types.push_back(TokenType::kByte);
    vocab.scores.push_back(0);
  }
  for (const auto& [text, score] : pieces) {
    vocab.tokens.push_back(text);
    vocab.types.push_back(TokenType::kNormal);
    vocab.scores.push_back(score);
  }
  vocab.unknown_id = 0;
  vocab.bos_id = 1;
  vocab.eos_id = 2;
  vocab.add_bos = true;
  vocab.add_space_prefix = true;
  return vocab;
}

int32_t id_of(const Tokenizer& tokenizer, const std::string& text) {
  const auto id = tokenizer.find_token(text);
  EXPECT_TRUE(id.has_value()) << text;
  return id.value_or(-1);
}

// SentencePiece BPE by its definition, quadratic: merge the best-scoring pair, leftmost first.
std::vector<int32_t> naive_spm(const Tokenizer& tokenizer, const TokenizerVocab& vocab, std::string text) {
  std::string escaped = kMark;
  for (char c : text) escaped += c == ' ' ? kMark : std::string(1, c);
  std::vector<std::string> symbols;
  for (size_t pos = 0; pos < escaped.size();) {
    const size_t length = utf8::char_length(escaped, pos);
    symbols.push_back(escaped.substr(pos, length));
    pos += length;
  }
  for (;;) {
    int best = -1;
    float best_score = 0;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      const auto id = tokenizer.find_token(symbols[i] + symbols[i + 1]);
      if (!id || vocab.types[*id] != TokenType::kNormal) continue;
      if (best < 0 || vocab.scores[*id] > best_score) {
        best = static_cast<int>(i);
        best_score = vocab.scores[*id];
      }
    }
    if (best < 0) break;
    symbols[best] += symbols[best + 1];
    symbols.erase(symbols.begin() + best + 1);
  }
  std::vector<int32_t> ids;
  for (const std::string& symbol : symbols) {
    const auto id = tokenizer.find_token(symbol);
    if (id && vocab.types[*id] == TokenType::kNormal) {
      ids.push_back(*id);
    } else {
      for (unsigned char c : symbol) ids.push_back(3 + c);
    }
  }
  return ids;
}

std::string random_text(const std::vector<std::string>& alphabet, size_t max_length) {
  std::uniform_int_distribution<size_t> length_dist(0, max_length);
  std::uniform_int_distribution<size_t> pick(0, alphabet.size() - 1);
  std::string text;
  for (size_t n = length_dist(test::rng()); n > 0; --n) text += alphabet[pick(test::rng())];
  return text;
}

TEST(SpmTokenizer, MergesByScoreAndFallsBackToBytes) {
  const Tokenizer tokenizer(spm_vocab({{kMark, -1}, {"a", -2}, {"b", -3}, {"c", -4}, {"ab", -5}, {"bc", -1.5f},
                                       {kMark + "a", -6}, {"abc", -7}, {kMark + "abc", -8}}));
  // "bc" outscores "ab", so "abc" forms from a + bc and is a piece.
  EXPECT_EQ(tokenizer.encode("abc", false, false), (std::vector<int32_t>{id_of(tokenizer, kMark + "abc")}));
  EXPECT_EQ(tokenizer.encode("abc", true, false), (std::vector<int32_t>{1, id_of(tokenizer, kMark + "abc")}));
  // "é" (C3 A9) is not a piece: two byte tokens.
  EXPECT_EQ(tokenizer.encode("\xC3\xA9", false, false),
            (std::vector<int32_t>{id_of(tokenizer, kMark), 3 + 0xC3, 3 + 0xA9}));
  // Invalid UTF-8 goes through byte fallback and decodes back unchanged.
  const std::string invalid = "a\xFF\xC3(b";
  EXPECT_EQ(tokenizer.decode(tokenizer.encode(invalid, true, false)), invalid);
  EXPECT_EQ(tokenizer.encode("", true, false), std::vector<int32_t>{1});
  EXPECT_TRUE(tokenizer.encode("", false, false).empty());
}

TEST(SpmTokenizer, MatchesNaiveMergeOnRandomText) {
  const TokenizerVocab vocab = spm_vocab({{kMark, -1}, {"a", -2}, {"b", -3}, {"ab", -2.5f}, {"ba", -2.5f},
                                          {"aa", -4}, {"aab", -3}, {"bab", -1}, {kMark + "a", -5}, {kMark + "b", -0.5f},
                                          {kMark + kMark, -6}, {"abab", -2}, {"\xC3\xA9", -1}, {"b\xC3\xA9", -1}});
  const Tokenizer tokenizer(vocab);
  const std::vector<std::string> alphabet = {"a", "b", " ", "\xC3\xA9", "x", "\xF0\x9F\x98\x81", "\xFF"};
  for (int round = 0; round < 500; ++round) {
    const std::string text = random_text(alphabet, 40);
    if (text.empty()) continue;
    ASSERT_EQ(tokenizer.encode(text, false, false), naive_spm(tokenizer, vocab, text)) << "text: " << text;
    ASSERT_EQ(tokenizer.decode(tokenizer.encode(text, true, false)), text);
  }
}

TEST(SpmTokenizer, DecodeDropsOnlyTheFirstPrefixSpace) {
  const Tokenizer tokenizer(spm_vocab({{kMark, -1}, {kMark + "hi", -1}, {"hi", -2}}));
  const int32_t space = id_of(tokenizer, kMark);
  const int32_t spaced_hi = id_of(tokenizer, kMark + "hi");
  EXPECT_EQ(tokenizer.decode(std::vector<int32_t>{1, spaced_hi, spaced_hi}), "hi hi");
  EXPECT_EQ(tokenizer.decode(std::vector<int32_t>{space, spaced_hi}), " hi");
  EXPECT_EQ(tokenizer.decode(std::vector<int32_t>{0, spaced_hi}), " \xE2\x81\x87  hi");
  EXPECT_EQ(tokenizer.token_to_piece(spaced_hi), " hi");
}

TEST(SpecialTokens, ParsedOnlyWhenAskedLongestFirstUserDefinedAlways) {
  TokenizerVocab vocab = spm_vocab({{kMark, -1}, {"<", -1}, {"|", -1}, {">", -1}, {"x", -1}});
  for (const auto& [text, type] : std::vector<std::pair<std::string, TokenType>>{
           {"<|a|>", TokenType::kControl}, {"<|a|>>", TokenType::kControl}, {"<u>", TokenType::kUserDefined}}) {
    vocab.tokens.push_back(text);
    vocab.types.push_back(type);
    vocab.scores.push_back(0);
  }
  const Tokenizer tokenizer(vocab);
  const int32_t control = id_of(tokenizer, "<|a|>");
  const int32_t longer = id_of(tokenizer, "<|a|>>");
  const int32_t user = id_of(tokenizer, "<u>");
  const std::vector<int32_t> parsed = tokenizer.encode("<|a|>x<|a|>><u>", false, true);
  // After a special token the prefix rule adds a space again (▁x).
  EXPECT_EQ(parsed, (std::vector<int32_t>{control, id_of(tokenizer, kMark), id_of(tokenizer, "x"), longer, user}));
  const std::vector<int32_t> as_text = tokenizer.encode("<|a|>x<u>", false, false);
  EXPECT_EQ(std::count(as_text.begin(), as_text.end(), control), 0);
  EXPECT_EQ(as_text.back(), user);
  EXPECT_TRUE(tokenizer.is_control(control));
  EXPECT_EQ(tokenizer.token_to_piece(control), "");
}

// Byte-level BPE vocabulary: the 256 byte stand-ins, then the results of `merges`.
TokenizerVocab bpe_vocab(const std::vector<std::string>& merges, const std::string& pre) {
  TokenizerVocab vocab;
  vocab.kind = TokenizerKind::kByteLevelBpe;
  vocab.model_name = "gpt2";
  vocab.pre_name = pre;
  int next = 0x100;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    std::string text;
    utf8::append_codepoint(text, printable ? b : next++);
    vocab.tokens.push_back(text);
  }
  for (const std::string& merge : merges) {
    const size_t space = merge.find(' ');
    vocab.tokens.push_back(merge.substr(0, space) + merge.substr(space + 1));
  }
  vocab.merges = merges;
  vocab.tokens.push_back("<|end|>");
  vocab.types.assign(vocab.tokens.size(), TokenType::kNormal);
  vocab.types.back() = TokenType::kControl;
  vocab.eos_id = static_cast<int32_t>(vocab.tokens.size()) - 1;
  return vocab;
}

// Byte-level BPE by its definition on one pre-tokenized word: apply the lowest-rank merge
// present, leftmost first, until none applies.
std::vector<std::string> naive_bpe_word(const std::vector<std::string>& merges, const std::string& mapped) {
  std::vector<std::string> symbols;
  for (size_t pos = 0; pos < mapped.size();) {
    const size_t length = utf8::char_length(mapped, pos);
    symbols.push_back(mapped.substr(pos, length));
    pos += length;
  }
  for (;;) {
    size_t best_rank = SIZE_MAX;
    size_t best = 0;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      const auto it = std::find(merges.begin(), merges.end(), symbols[i] + " " + symbols[i + 1]);
      const auto rank = static_cast<size_t>(it - merges.begin());
      if (it != merges.end() && rank < best_rank) {
        best_rank = rank;
        best = i;
      }
    }
    if (best_rank == SIZE_MAX) return symbols;
    symbols[best] += symbols[best + 1];
    symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(best) + 1);
  }
}

TEST(BpeTokenizer, MatchesNaiveMergeOnRandomText) {
  const std::string space = "\xC4\xA0";  // Ġ, the stand-in for ' '
  const std::vector<std::string> merges = {"a b", space + " a", "b b", "ab b", space + "a b", "a a", "aa a",
                                           "1 2", "\xC3 \xA9"};
  const TokenizerVocab vocab = bpe_vocab(merges, "gpt2");
  const Tokenizer tokenizer(vocab);
  const tokenizer_detail::PreTokenizer pre("gpt2");
  const std::vector<std::string> alphabet = {"a", "b", " ", "1", "2", "\n", "\xC3\xA9", "!", "\xFF"};
  for (int round = 0; round < 500; ++round) {
    const std::string text = random_text(alphabet, 40);
    std::vector<int32_t> expected;
    for (std::string_view word : pre.split(text)) {
      std::string mapped;
      for (unsigned char c : word) mapped += tokenizer.token_text(c);
      for (const std::string& symbol : naive_bpe_word(merges, mapped)) expected.push_back(id_of(tokenizer, symbol));
    }
    ASSERT_EQ(tokenizer.encode(text, true, true), expected) << "text: " << text;
    ASSERT_EQ(tokenizer.decode(expected), text);
  }
}

TEST(BpeTokenizer, ByteWithoutTokenNeverBecomesAControlToken) {
  TokenizerVocab vocab = bpe_vocab({}, "smollm");
  vocab.tokens[0xFF] = "<unused-byte>";  // the vocabulary cannot spell byte 0xFF
  vocab.unknown_id = vocab.eos_id;         // and its unknown id is a control token
  const Tokenizer tokenizer(vocab);
  EXPECT_EQ(tokenizer.encode("a\xFF" "b", false, false), (std::vector<int32_t>{'a', 'b'}));
  vocab.types[0xFE] = TokenType::kUnknown;
  vocab.unknown_id = 0xFE;
  EXPECT_EQ(Tokenizer(vocab).encode("a\xFF" "b", false, false), (std::vector<int32_t>{'a', 0xFE, 'b'}));
}

TEST(BpeTokenizer, Llama3TakesWholeWordsFromTheVocabulary) {
  // "abc" is a token no merge sequence reaches (there is no "ab c" or "a bc" merge).
  TokenizerVocab vocab = bpe_vocab({"a b"}, "llama-bpe");
  vocab.tokens.push_back("abc");
  vocab.types.push_back(TokenType::kNormal);
  const int32_t abc = static_cast<int32_t>(vocab.tokens.size()) - 1;
  EXPECT_EQ(Tokenizer(vocab).encode("abc", false, false), std::vector<int32_t>{abc});
  vocab.pre_name = "gpt2";
  const Tokenizer gpt2(vocab);
  EXPECT_EQ(gpt2.encode("abc", false, false), (std::vector<int32_t>{*gpt2.find_token("ab"), 'c'}));
}

TEST(PreTokenizer, SplitsLikeTheReferencePatterns) {
  using Pieces = std::vector<std::string_view>;
  EXPECT_EQ(tokenizer_detail::PreTokenizer("gpt2").split("Hello world  it's 123!!\n"),
            (Pieces{"Hello", " world", " ", " it", "'s", " 123", "!!", "\n"}));
  EXPECT_EQ(tokenizer_detail::PreTokenizer("smollm").split("ab123 c"), (Pieces{"ab", "1", "2", "3", " c"}));
  EXPECT_EQ(tokenizer_detail::PreTokenizer("llama-bpe").split("x 12345 IT'S\n\n y"),
            (Pieces{"x", " ", "123", "45", " IT", "'S", "\n\n", " y"}));
  EXPECT_EQ(tokenizer_detail::PreTokenizer("qwen2").split("a12"), (Pieces{"a", "1", "2"}));
  // U+180E is no longer White_Space (PCRE2's \s would still take it).
  EXPECT_EQ(tokenizer_detail::PreTokenizer("gpt2").split("a  \xE1\xA0\x8E" "b"),
            (Pieces{"a", " ", " \xE1\xA0\x8E", "b"}));
  // Invalid bytes never match and stay pieces of their own.
  EXPECT_EQ(tokenizer_detail::PreTokenizer("gpt2").split("ab\xFF\xFE" "cd"), (Pieces{"ab", "\xFF\xFE", "cd"}));
  try {
    tokenizer_detail::PreTokenizer unknown("no-such-pre");
    FAIL() << "unknown pre-tokenizer accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("no-such-pre"), std::string::npos);
  }
}

TEST(StreamingDecoder, NeverSplitsUtf8AndMatchesDecode) {
  const Tokenizer tokenizer(spm_vocab({{kMark, -1}, {kMark + "a", -1}, {"\xC3\xA9", -1}}));
  std::uniform_int_distribution<int32_t> pick(0, tokenizer.n_vocab() - 1);
  for (int round = 0; round < 200; ++round) {
    std::vector<int32_t> ids(20);
    for (int32_t& id : ids) id = pick(test::rng());
    StreamingDecoder decoder(tokenizer, /*text_start=*/true);
    std::string streamed;
    std::vector<size_t> boundaries;
    for (int32_t id : ids) {
      streamed += decoder.push(id);
      boundaries.push_back(streamed.size());
    }
    streamed += decoder.flush();
    // No chunk boundary falls inside a valid character of the whole text.
    std::vector<bool> inside_char(streamed.size() + 1, false);
    for (size_t pos = 0; pos < streamed.size();) {
      const size_t length = utf8::char_length(streamed, pos);
      for (size_t i = 1; i < length; ++i) inside_char[pos + i] = true;
      pos += length;
    }
    for (size_t boundary : boundaries) EXPECT_FALSE(inside_char[boundary]) << "split at byte " << boundary;
    EXPECT_EQ(streamed, tokenizer.decode(ids));
  }
  // The three bytes of "€" arrive one token at a time and leave as one piece.
  StreamingDecoder decoder(tokenizer);
  EXPECT_EQ(decoder.push(3 + 0xE2), "");
  EXPECT_EQ(decoder.push(3 + 0x82), "");
  EXPECT_EQ(decoder.push(3 + 0xAC), "\xE2\x82\xAC");
  EXPECT_EQ(decoder.push(3 + 0xF0), "");
  EXPECT_EQ(decoder.flush(), "\xF0");
}

TEST(TokenizerVocab, RejectsInconsistentData) {
  TokenizerVocab vocab = spm_vocab({{"a", 0}});
  vocab.scores.pop_back();
  EXPECT_THROW(Tokenizer{vocab}, Error);
  vocab = spm_vocab({{"a", 0}});
  vocab.eos_id = 100000;
  EXPECT_THROW(Tokenizer{vocab}, Error);
  EXPECT_THROW(Tokenizer(spm_vocab({})).token_to_piece(-1), Error);
  EXPECT_THROW(Tokenizer(bpe_vocab({"nospace"}, "gpt2")), Error);
}

}  // namespace
}  // namespace pdvm
