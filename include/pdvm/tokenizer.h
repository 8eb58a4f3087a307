// Tokenizers described by GGUF metadata (tokenizer.ggml.*):
//  * SentencePiece BPE (tokenizer.ggml.model = "llama"): best-score merges over characters,
//    spaces escaped as U+2581, optional leading-space prefix, byte fallback (<0xXX> tokens).
//  * Byte-level BPE (tokenizer.ggml.model = "gpt2"): a regex pre-tokenizer chosen by
//    tokenizer.ggml.pre, bytes mapped to printable characters, lowest-rank merges.
//
// Special tokens: user-defined tokens (type 4) are always matched as whole tokens (as
// SentencePiece and llama.cpp do); control tokens (type 3) only when parse_special is set,
// otherwise their text is tokenized like any other text. Where several special tokens match
// at one position the longest wins.
//
// Invalid UTF-8 in the input never fails: every byte that is not part of a valid sequence is
// its own character, which SPM encodes through byte fallback and byte-level BPE through the
// byte mapping, so decode(encode(s)) == s still holds. (SentencePiece itself turns such bytes
// into U+FFFD, a lossy choice we do not copy.)
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pdvm {

class GgufFile;

// Values are the GGUF tokenizer.ggml.token_type codes.
enum class TokenType : int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

enum class TokenizerKind { kSentencePiece, kByteLevelBpe };

// Everything a tokenizer needs, as plain data. from_gguf fills it from metadata; tests build
// small ones by hand.
struct TokenizerVocab {
  TokenizerKind kind = TokenizerKind::kSentencePiece;
  std::string model_name;  // tokenizer.ggml.model, e.g. "llama", "gpt2"
  std::string pre_name;    // tokenizer.ggml.pre, selects the BPE pre-tokenizer ("default" if absent)
  std::vector<std::string> tokens;
  std::vector<float> scores;      // SPM merge priority (higher merges first); empty = all 0
  std::vector<TokenType> types;   // empty = all normal
  std::vector<std::string> merges;  // BPE "left right", rank = index
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t unknown_id = -1;
  int32_t eot_id = -1;  // -1: found by name (<|eot_id|>, <|im_end|>, <|end|>, ...)
  int32_t eom_id = -1;  // -1: <|eom_id|> if present
  bool add_bos = false;
  bool add_eos = false;
  bool add_space_prefix = false;  // SPM: prepend one space to the text (and after special tokens)
};

class Tokenizer {
 public:
  // Reads tokenizer.ggml.* keys. Throws Error(kFileFormat) for missing or inconsistent data,
  // Error(kUnsupported) naming an unknown tokenizer.ggml.model or tokenizer.ggml.pre.
  static Tokenizer from_gguf(const GgufFile& file);
  // Validates the vocabulary (Error(kFileFormat)) and prepares lookup tables.
  explicit Tokenizer(TokenizerVocab vocab);

  // add_special: prepend BOS / append EOS where the model's add_bos/add_eos flags ask for it.
  // parse_special: match control tokens written in the text as single tokens.
  std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special) const;

  // The raw bytes this token contributes to decoded text: control tokens give "", SPM byte
  // tokens their byte, SPM U+2581 becomes a space, byte-level BPE tokens are unmapped.
  std::string token_to_piece(int32_t id) const;
  // Decodes a whole text from its start: like SentencePiece, the leading space the prefix rule
  // added (on the first non-control SPM token) is dropped.
  std::string decode(std::span<const int32_t> ids) const;

  int32_t n_vocab() const;
  int32_t bos_id() const;  // -1 when the model has none
  int32_t eos_id() const;
  int32_t eot_id() const;  // end of turn, e.g. <|im_end|>, <|eot_id|>, <|end|>; -1 if none
  bool add_bos() const;
  bool add_eos() const;
  // EOS, EOT, EOM and the other end-of-text control tokens the vocabulary names.
  bool is_end_of_generation(int32_t id) const;
  bool is_control(int32_t id) const;
  TokenType token_type(int32_t id) const;
  // The token's text as stored in the vocabulary (SPM with U+2581, BPE byte-mapped).
  const std::string& token_text(int32_t id) const;
  std::optional<int32_t> find_token(std::string_view text) const;
  TokenizerKind kind() const;
  std::string_view model_name() const;
  std::string_view pre_name() const;
  // Whether decode() drops the leading space of the first token (SPM with the prefix rule).
  bool strips_leading_space() const;

  struct Impl;

 private:
  std::shared_ptr<const Impl> impl_;
};

// Turns a stream of generated ids into text without ever splitting a UTF-8 sequence: bytes of
// an incomplete (but so far valid) sequence are held back until it completes. Bytes that can
// never become valid UTF-8 are passed through as they are, so the concatenation of every
// push() and flush() equals Tokenizer::decode of the same ids (with text_start = true) or the
// concatenated token_to_piece()s (text_start = false, e.g. a continuation after a prompt).
class StreamingDecoder {
 public:
  explicit StreamingDecoder(const Tokenizer& tokenizer, bool text_start = false);
  std::string push(int32_t id);
  // Returns whatever is held back (an incomplete sequence at the very end).
  std::string flush();

 private:
  const Tokenizer* tokenizer_;
  bool strip_next_space_;
  std::string pending_;
};

}  // namespace pdvm
