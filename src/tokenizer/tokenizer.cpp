// Tokenizer: vocabulary checks, special-token splitting, and the public encode/decode API on
// top of the SPM and byte-level BPE encoders.
#include "pdvm/tokenizer.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>

#include "pdvm/error.h"
#include "tokenizer/tokenizer_impl.h"

namespace pdvm {
namespace {

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581, SentencePiece's space

// Control tokens that end a turn or a text, in the order eot_id() prefers them.
constexpr std::string_view kEndOfTurnTexts[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>",
                                                "<|endoftext|>"};
constexpr std::string_view kOtherEndTexts[] = {"<|eom_id|>", "<|end_of_text|>", "<EOT>"};

void check_id(const TokenizerVocab& vocab, int32_t id, const char* what) {
  if (id < -1 || id >= static_cast<int32_t>(vocab.tokens.size())) {
    throw Error(ErrorKind::kFileFormat, fmt::format("tokenizer {} {} is outside the vocabulary of {} tokens", what,
                                                    id, vocab.tokens.size()));
  }
}

void validate(const TokenizerVocab& vocab) {
  const size_t n = vocab.tokens.size();
  if (n == 0) throw Error(ErrorKind::kFileFormat, "tokenizer vocabulary is empty");
  if (n > static_cast<size_t>(INT32_MAX)) throw Error(ErrorKind::kFileFormat, "tokenizer vocabulary too large");
  if (!vocab.scores.empty() && vocab.scores.size() != n) {
    throw Error(ErrorKind::kFileFormat,
                fmt::format("tokenizer has {} scores for {} tokens", vocab.scores.size(), n));
  }
  if (!vocab.types.empty() && vocab.types.size() != n) {
    throw Error(ErrorKind::kFileFormat, fmt::format("tokenizer has {} token types for {} tokens", vocab.types.size(), n));
  }
  for (size_t i = 0; i < vocab.types.size(); ++i) {
    const auto raw = static_cast<int32_t>(vocab.types[i]);
    if (raw < 0 || raw > static_cast<int32_t>(TokenType::kByte)) {
      throw Error(ErrorKind::kFileFormat, fmt::format("token {} has unknown token type {}", i, raw));
    }
  }
  check_id(vocab, vocab.bos_id, "bos id");
  check_id(vocab, vocab.eos_id, "eos id");
  check_id(vocab, vocab.unknown_id, "unknown id");
  check_id(vocab, vocab.eot_id, "eot id");
  check_id(vocab, vocab.eom_id, "eom id");
}

std::string spm_piece(const std::string& text, TokenType type) {
  switch (type) {
    case TokenType::kControl:
      return {};
    case TokenType::kUnknown:
      return " \xE2\x81\x87 ";  // " ⁇ ", as SentencePiece shows unknown pieces
    case TokenType::kByte: {
      unsigned value = 0;
      const char* digits = text.data() + 3;
      if (text.size() == 6 && text.starts_with("<0x") && text.ends_with('>') &&
          std::from_chars(digits, digits + 2, value, 16).ptr == digits + 2) {
        return std::string(1, static_cast<char>(value));
      }
      return text;  // a byte token not spelled <0xXX>: keep its text
    }
    default:
      break;
  }
  std::string piece;
  piece.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    if (std::string_view(text).substr(pos).starts_with(kSpaceMark)) {
      piece += ' ';
      pos += kSpaceMark.size();
    } else {
      piece += text[pos++];
    }
  }
  return piece;
}

struct Fragment {
  std::string_view text;  // raw text when token < 0
  int32_t token = -1;
};

}  // namespace

Tokenizer::Tokenizer(TokenizerVocab vocab) {
  validate(vocab);
  auto impl = std::make_shared<Impl>();
  impl->vocab = std::move(vocab);
  Impl& self = *impl;
  const auto n = static_cast<int32_t>(self.vocab.tokens.size());
  self.ids_by_text.reserve(self.vocab.tokens.size());
  for (int32_t id = 0; id < n; ++id) {
    self.ids_by_text.emplace(self.vocab.tokens[static_cast<size_t>(id)], id);
    const TokenType type = self.type_of(id);
    const std::string& text = self.vocab.tokens[static_cast<size_t>(id)];
    if ((type == TokenType::kControl || type == TokenType::kUserDefined || type == TokenType::kUnknown) &&
        !text.empty()) {
      self.specials_by_first_byte[static_cast<unsigned char>(text[0])].push_back(id);
    }
    self.has_unused_tokens |= type == TokenType::kUnused;
  }
  for (auto& candidates : self.specials_by_first_byte) {
    std::stable_sort(candidates.begin(), candidates.end(), [&](int32_t a, int32_t b) {
      return self.vocab.tokens[static_cast<size_t>(a)].size() > self.vocab.tokens[static_cast<size_t>(b)].size();
    });
  }

  if (self.vocab.unknown_id >= 0 && self.type_of(self.vocab.unknown_id) != TokenType::kControl) {
    self.text_unknown_id = self.vocab.unknown_id;
  }
  self.eot_id = self.vocab.eot_id;
  for (std::string_view text : kEndOfTurnTexts) {
    const int32_t id = self.find(text);
    if (id < 0 || self.type_of(id) != TokenType::kControl) continue;
    if (self.eot_id < 0) self.eot_id = id;
    self.end_of_generation.insert(id);
  }
  for (std::string_view text : kOtherEndTexts) {
    const int32_t id = self.find(text);
    if (id >= 0 && self.type_of(id) == TokenType::kControl) self.end_of_generation.insert(id);
  }
  for (int32_t id : {self.vocab.eos_id, self.eot_id, self.vocab.eom_id}) {
    if (id >= 0) self.end_of_generation.insert(id);
  }

  if (self.vocab.kind == TokenizerKind::kSentencePiece) {
    self.prepare_spm();
  } else {
    self.pre_tokenizer = std::make_unique<tokenizer_detail::PreTokenizer>(
        self.vocab.pre_name.empty() ? std::string_view("default") : std::string_view(self.vocab.pre_name));
    self.prepare_bpe();
  }
  self.pieces.reserve(self.vocab.tokens.size());
  for (int32_t id = 0; id < n; ++id) {
    self.pieces.push_back(self.vocab.kind == TokenizerKind::kSentencePiece
                              ? spm_piece(self.vocab.tokens[static_cast<size_t>(id)], self.type_of(id))
                              : self.bpe_piece(id));
  }
  impl_ = std::move(impl);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
  const Impl& self = *impl_;
  // Split out special tokens: at each position the longest one that may match there.
  std::vector<Fragment> fragments;
  size_t raw_start = 0;
  for (size_t pos = 0; pos < text.size();) {
    int32_t match = -1;
    for (int32_t id : self.specials_by_first_byte[static_cast<unsigned char>(text[pos])]) {
      if (!parse_special && self.type_of(id) != TokenType::kUserDefined) continue;
      if (text.substr(pos).starts_with(self.vocab.tokens[static_cast<size_t>(id)])) {
        match = id;
        break;
      }
    }
    if (match < 0) {
      ++pos;
      continue;
    }
    if (pos > raw_start) fragments.push_back({text.substr(raw_start, pos - raw_start)});
    fragments.push_back({{}, match});
    pos += self.vocab.tokens[static_cast<size_t>(match)].size();
    raw_start = pos;
  }
  if (raw_start < text.size()) fragments.push_back({text.substr(raw_start)});

  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 2);
  if (add_special && self.vocab.add_bos && self.vocab.bos_id >= 0) ids.push_back(self.vocab.bos_id);
  bool after_special = true;  // the text start counts as following a special token
  std::string escaped;
  for (const Fragment& fragment : fragments) {
    if (fragment.token >= 0) {
      ids.push_back(fragment.token);
      after_special = true;
      continue;
    }
    if (self.vocab.kind == TokenizerKind::kSentencePiece) {
      escaped.clear();
      if (self.vocab.add_space_prefix && after_special) escaped += kSpaceMark;
      for (char c : fragment.text) {
        if (c == ' ') {
          escaped += kSpaceMark;
        } else {
          escaped += c;
        }
      }
      self.encode_spm(escaped, ids);
    } else {
      self.encode_bpe(fragment.text, ids);
    }
    after_special = false;
  }
  if (add_special && self.vocab.add_eos && self.vocab.eos_id >= 0) ids.push_back(self.vocab.eos_id);
  return ids;
}

std::string Tokenizer::token_to_piece(int32_t id) const {
  token_type(id);  // range check
  return impl_->pieces[static_cast<size_t>(id)];
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  StreamingDecoder decoder(*this, /*text_start=*/true);
  std::string text;
  for (int32_t id : ids) text += decoder.push(id);
  text += decoder.flush();
  return text;
}

int32_t Tokenizer::n_vocab() const { return static_cast<int32_t>(impl_->vocab.tokens.size()); }
int32_t Tokenizer::bos_id() const { return impl_->vocab.bos_id; }
int32_t Tokenizer::eos_id() const { return impl_->vocab.eos_id; }
int32_t Tokenizer::eot_id() const { return impl_->eot_id; }
bool Tokenizer::add_bos() const { return impl_->vocab.add_bos; }
bool Tokenizer::add_eos() const { return impl_->vocab.add_eos; }
bool Tokenizer::is_end_of_generation(int32_t id) const { return impl_->end_of_generation.contains(id); }
bool Tokenizer::is_control(int32_t id) const { return token_type(id) == TokenType::kControl; }

TokenType Tokenizer::token_type(int32_t id) const {
  if (id < 0 || id >= n_vocab()) {
    throw Error(ErrorKind::kOutOfRange, fmt::format("token id {} is outside the vocabulary of {} tokens", id, n_vocab()));
  }
  return impl_->type_of(id);
}

const std::string& Tokenizer::token_text(int32_t id) const {
  token_type(id);  // range check
  return impl_->vocab.tokens[static_cast<size_t>(id)];
}

std::optional<int32_t> Tokenizer::find_token(std::string_view text) const {
  const int32_t id = impl_->find(text);
  return id >= 0 ? std::optional<int32_t>(id) : std::nullopt;
}

TokenizerKind Tokenizer::kind() const { return impl_->vocab.kind; }
std::string_view Tokenizer::model_name() const { return impl_->vocab.model_name; }
std::string_view Tokenizer::pre_name() const { return impl_->vocab.pre_name; }
bool Tokenizer::strips_leading_space() const {
  return impl_->vocab.kind == TokenizerKind::kSentencePiece && impl_->vocab.add_space_prefix;
}

}  // namespace pdvm
