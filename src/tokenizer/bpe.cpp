// Byte-level BPE (GPT-2 family): the pre-tokenizer cuts text into words, every byte of a word
// becomes a printable stand-in character, and adjacent symbols merge in the order of the
// merge list (lowest rank first, leftmost on ties). A byte the vocabulary has no token for
// (some omit bytes that never or rarely occur in UTF-8) becomes the unknown token or, as in
// Hugging Face tokenizers, is dropped.
#include <fmt/format.h>

#include "pdvm/error.h"
#include "tokenizer/merge_engine.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"

namespace pdvm {
namespace {

using tokenizer_detail::MergeResult;
using tokenizer_detail::MergeSymbol;

// Printable bytes stand for themselves; the others (controls, space, DEL, NBSP, soft hyphen)
// take code points from U+0100 upwards in byte order.
bool stands_for_itself(int byte) {
  return (byte >= 0x21 && byte <= 0x7E) || (byte >= 0xA1 && byte <= 0xAC) || (byte >= 0xAE && byte <= 0xFF);
}

uint64_t pair_key(int32_t left, int32_t right) {
  return (uint64_t{static_cast<uint32_t>(left)} << 32) | static_cast<uint32_t>(right);
}

}  // namespace

void Tokenizer::Impl::prepare_bpe() {
  uint32_t next_stand_in = 0x100;
  for (int byte = 0; byte < 256; ++byte) {
    const uint32_t codepoint = stands_for_itself(byte) ? static_cast<uint32_t>(byte) : next_stand_in++;
    std::string& text = byte_to_char[static_cast<size_t>(byte)];
    utf8::append_codepoint(text, codepoint);
    char_to_byte[codepoint] = static_cast<uint8_t>(byte);
    byte_char_ids[static_cast<size_t>(byte)] = find(text);
  }
  merges.reserve(vocab.merges.size());
  for (size_t rank = 0; rank < vocab.merges.size(); ++rank) {
    const std::string& merge = vocab.merges[rank];
    const size_t space = merge.find(' ', 1);
    if (space == std::string::npos) {
      throw Error(ErrorKind::kFileFormat,
                  fmt::format("tokenizer.ggml.merges[{}] = \"{}\" is not two tokens separated by a space", rank, merge));
    }
    const int32_t left = find(std::string_view(merge).substr(0, space));
    const int32_t right = find(std::string_view(merge).substr(space + 1));
    const int32_t result = find(merge.substr(0, space) + merge.substr(space + 1));
    // A merge of or into text outside the vocabulary can never apply to token symbols.
    if (left < 0 || right < 0 || result < 0) continue;
    merges.emplace(pair_key(left, right), Merge{static_cast<int32_t>(rank), result});
  }
}

void Tokenizer::Impl::encode_bpe(std::string_view text, std::vector<int32_t>& out) const {
  std::vector<MergeSymbol> symbols;
  std::string mapped;
  for (std::string_view word : pre_tokenizer->split(text)) {
    if (pre_tokenizer->prefers_whole_words()) {
      mapped.clear();
      for (char c : word) mapped += byte_to_char[static_cast<unsigned char>(c)];
      const int32_t id = find(mapped);
      if (id >= 0 && type_of(id) == TokenType::kNormal) {
        out.push_back(id);
        continue;
      }
    }
    symbols.clear();
    for (size_t pos = 0; pos < word.size(); ++pos) {
      int32_t id = byte_char_ids[static_cast<unsigned char>(word[pos])];
      if (id < 0) id = text_unknown_id;
      // As in Hugging Face tokenizers, a dropped byte leaves its neighbours adjacent.
      if (id >= 0) symbols.push_back({static_cast<uint32_t>(pos), 1, id, -1, -1});
    }
    auto lookup = [&](const MergeSymbol& left, const MergeSymbol& right) -> std::optional<MergeResult> {
      const auto it = merges.find(pair_key(left.id, right.id));
      if (it == merges.end()) return std::nullopt;
      return MergeResult{-static_cast<float>(it->second.rank), it->second.result};
    };
    tokenizer_detail::merge_symbols(symbols, lookup, [](const MergeSymbol&, const MergeSymbol&) {});
    for (int32_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[static_cast<size_t>(i)].next) {
      out.push_back(symbols[static_cast<size_t>(i)].id);
    }
  }
}

std::string Tokenizer::Impl::bpe_piece(int32_t id) const {
  const std::string& text = vocab.tokens[static_cast<size_t>(id)];
  const TokenType type = type_of(id);
  if (type == TokenType::kControl) return {};
  if (type == TokenType::kUserDefined) return text;
  std::string bytes;
  for (size_t pos = 0; pos < text.size();) {
    const size_t length = utf8::char_length(text, pos);
    const auto byte = length > 1 || static_cast<unsigned char>(text[pos]) < 0x80
                          ? char_to_byte.find(utf8::decode_char(text, pos, length))
                          : char_to_byte.end();
    if (byte != char_to_byte.end()) {
      bytes += static_cast<char>(byte->second);
    } else {
      bytes.append(text, pos, length);  // not a stand-in: a malformed vocabulary, keep the text
    }
    pos += length;
  }
  return bytes;
}

}  // namespace pdvm
