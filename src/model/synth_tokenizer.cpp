#include "model/synth_tokenizer.h"

#include <string_view>
#include <unordered_set>

#include "model/synth_random.h"
#include "pdvm/error.h"

namespace pdvm::synth {

namespace {

constexpr int32_t kNormalToken = 1;
constexpr int32_t kControlToken = 3;
constexpr size_t kMaxTokenBytes = 16;

std::string utf8(uint32_t code_point) {
  std::string out;
  if (code_point < 0x80) {
    out += static_cast<char>(code_point);
  } else {  // the mapping never goes beyond two bytes (code points < 0x800)
    out += static_cast<char>(0xc0 | (code_point >> 6));
    out += static_cast<char>(0x80 | (code_point & 0x3f));
  }
  return out;
}

constexpr const char* kLettersByFrequency = "etaoinshrdlcumwfgypbvkjxqzETAOINSHRDLCUMWFGYPBVKJXQZ";

}  // namespace

std::string byte_to_token_text(uint8_t byte) {
  // Printable bytes stand for themselves; the rest (controls, space, 127..160, 173) take code
  // points 256, 257, ... in byte order.
  const auto printable = [](uint32_t b) { return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174; };
  if (printable(byte)) return utf8(byte);
  uint32_t next = 256;
  for (uint32_t b = 0; b < byte; ++b) {
    if (!printable(b)) ++next;
  }
  return utf8(next);
}

SynthVocab make_byte_level_vocab(int64_t vocab_size, uint64_t seed) {
  if (vocab_size < 258) {
    throw Error(ErrorKind::kInvalidArgument,
                "vocabulary size " + std::to_string(vocab_size) + " is below the 258 tokens of a byte-level vocabulary");
  }
  SynthVocab vocab;
  vocab.tokens.reserve(static_cast<size_t>(vocab_size));
  for (int b = 0; b < 256; ++b) vocab.tokens.push_back(byte_to_token_text(static_cast<uint8_t>(b)));
  vocab.token_types.assign(256, kNormalToken);

  // Word-like tokens: letters, optionally after the mapped space (as the GPT-2 pre-tokenizer
  // produces them). Words may start a merge; only space-free ones may end it. Picks favour early
  // (short) tokens and frequent English letters, so ordinary text does merge into longer tokens.
  const std::string space = byte_to_token_text(' ');
  std::vector<std::string> word_starts{space};
  std::vector<std::string> word_parts;
  for (char c : std::string_view(kLettersByFrequency)) {
    word_starts.push_back(std::string(1, c));
    word_parts.push_back(std::string(1, c));
  }
  std::unordered_set<std::string> known(vocab.tokens.begin(), vocab.tokens.end());
  const CounterRng rng(seed, "tokenizer.merges");
  uint64_t draw = 0;
  const auto pick_early = [&](const std::vector<std::string>& pool) -> const std::string& {
    const double u = static_cast<double>(rng.bits(draw++) >> 11) * 0x1p-53;
    return pool[static_cast<size_t>(static_cast<double>(pool.size()) * u * u * u)];
  };
  const auto n_merged = static_cast<size_t>(vocab_size - 256 - 2);
  while (vocab.merges.size() < n_merged) {
    const std::string left = pick_early(word_starts);
    const std::string right = pick_early(word_parts);
    std::string merged = left + right;
    if (merged.size() > kMaxTokenBytes || !known.insert(merged).second) continue;
    vocab.merges.push_back(left + " " + right);
    vocab.tokens.push_back(merged);
    vocab.token_types.push_back(kNormalToken);
    word_starts.push_back(merged);
    if (merged.compare(0, space.size(), space) != 0) word_parts.push_back(merged);
  }
  vocab.bos_id = static_cast<uint32_t>(vocab.tokens.size());
  vocab.tokens.push_back("<|begin_of_text|>");
  vocab.eos_id = static_cast<uint32_t>(vocab.tokens.size());
  vocab.tokens.push_back("<|end_of_text|>");
  vocab.token_types.insert(vocab.token_types.end(), 2, kControlToken);
  return vocab;
}

}  // namespace pdvm::synth
