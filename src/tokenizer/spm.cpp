// SentencePiece BPE: start from single characters and repeatedly merge the adjacent pair whose
// concatenation is the vocabulary piece with the highest score (leftmost on ties). Characters
// the vocabulary lacks are spelled with <0xXX> byte tokens, or else become the unknown token
// (dropped when there is none that text may produce).
#include <fmt/format.h>

#include <algorithm>

#include "tokenizer/merge_engine.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"

namespace pdvm {
namespace {

using tokenizer_detail::MergeResult;
using tokenizer_detail::MergeSymbol;

// Pieces SentencePiece lets merges produce; unused ones are split again on output.
bool is_mergeable(TokenType type) {
  return type == TokenType::kNormal || type == TokenType::kUserDefined || type == TokenType::kUnused;
}

uint64_t span_key(uint32_t start, uint32_t length) { return (uint64_t{start} << 32) | length; }

}  // namespace

void Tokenizer::Impl::prepare_spm() {
  byte_token_ids.fill(-1);
  for (int byte = 0; byte < 256; ++byte) {
    byte_token_ids[static_cast<size_t>(byte)] = find(fmt::format("<0x{:02X}>", byte));
  }
}

void Tokenizer::Impl::encode_spm(std::string_view text, std::vector<int32_t>& out) const {
  std::vector<MergeSymbol> symbols;
  symbols.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const size_t length = utf8::char_length(text, pos);
    symbols.push_back({static_cast<uint32_t>(pos), static_cast<uint32_t>(length), -1, -1, -1});
    pos += length;
  }
  // How merged spans were formed (left part length), needed only to split unused pieces again.
  std::unordered_map<uint64_t, uint32_t> left_lengths;
  auto lookup = [&](const MergeSymbol& left, const MergeSymbol& right) -> std::optional<MergeResult> {
    const int32_t id = find(text.substr(left.start, left.length + right.length));
    if (id < 0 || !is_mergeable(type_of(id))) return std::nullopt;
    return MergeResult{vocab.scores.empty() ? 0.0f : vocab.scores[static_cast<size_t>(id)], id};
  };
  auto on_merge = [&](const MergeSymbol& left, const MergeSymbol& right) {
    if (has_unused_tokens) left_lengths[span_key(left.start, left.length + right.length)] = left.length;
  };
  tokenizer_detail::merge_symbols(symbols, lookup, on_merge);

  auto emit = [&](auto&& self, uint32_t start, uint32_t length) -> void {
    const std::string_view piece = text.substr(start, length);
    const int32_t id = find(piece);
    const TokenType type = id >= 0 ? type_of(id) : TokenType::kUndefined;
    if (type == TokenType::kNormal || type == TokenType::kUserDefined) {
      out.push_back(id);
      return;
    }
    if (type == TokenType::kUnused) {
      const auto split = left_lengths.find(span_key(start, length));
      if (split != left_lengths.end()) {
        self(self, start, split->second);
        self(self, start + split->second, length - split->second);
        return;
      }
    }
    const bool spelled_in_bytes = std::all_of(piece.begin(), piece.end(), [&](char c) {
      return byte_token_ids[static_cast<unsigned char>(c)] >= 0;
    });
    if (spelled_in_bytes) {
      for (char c : piece) out.push_back(byte_token_ids[static_cast<unsigned char>(c)]);
    } else if (text_unknown_id >= 0) {
      out.push_back(text_unknown_id);
    }
  };
  for (int32_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[static_cast<size_t>(i)].next) {
    emit(emit, symbols[static_cast<size_t>(i)].start, symbols[static_cast<size_t>(i)].length);
  }
}

}  // namespace pdvm
