// The tokenizer's prepared tables, shared by the SPM and BPE encoders and by decoding.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "pdvm/tokenizer.h"
#include "tokenizer/pretokenizer.h"

namespace pdvm {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view text) const { return std::hash<std::string_view>{}(text); }
};

struct Tokenizer::Impl {
  TokenizerVocab vocab;
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> ids_by_text;
  // Special tokens matched as whole tokens, by first byte, longest first.
  std::array<std::vector<int32_t>, 256> specials_by_first_byte;
  std::vector<std::string> pieces;  // token_to_piece of every token
  std::unordered_set<int32_t> end_of_generation;
  int32_t eot_id = -1;
  // Stands for text the vocabulary cannot spell; -1 when the unknown id is a control token
  // (e.g. <|endoftext|>), which text must never produce: such bytes are dropped instead.
  int32_t text_unknown_id = -1;
  bool has_unused_tokens = false;

  // SPM: id of <0xXX> for each byte (-1 if absent).
  std::array<int32_t, 256> byte_token_ids{};

  // Byte-level BPE.
  std::array<std::string, 256> byte_to_char;        // byte -> its printable UTF-8 stand-in
  std::array<int32_t, 256> byte_char_ids{};           // id of the one-character token of each byte
  std::unordered_map<uint32_t, uint8_t> char_to_byte;  // stand-in code point -> byte
  struct Merge {
    int32_t rank;
    int32_t result;
  };
  std::unordered_map<uint64_t, Merge> merges;  // key: left id << 32 | right id
  std::unique_ptr<tokenizer_detail::PreTokenizer> pre_tokenizer;

  TokenType type_of(int32_t id) const {
    return vocab.types.empty() ? TokenType::kNormal : vocab.types[static_cast<size_t>(id)];
  }
  int32_t find(std::string_view text) const {
    const auto it = ids_by_text.find(text);
    return it == ids_by_text.end() ? -1 : it->second;
  }

  void prepare_spm();
  void prepare_bpe();
  // Appends the ids of one run of text without special tokens.
  void encode_spm(std::string_view text, std::vector<int32_t>& out) const;
  void encode_bpe(std::string_view text, std::vector<int32_t>& out) const;
  std::string bpe_piece(int32_t id) const;
};

}  // namespace pdvm
