#include "pdvm/tokenizer.h"

#include "tokenizer/utf8.h"

namespace pdvm {

StreamingDecoder::StreamingDecoder(const Tokenizer& tokenizer, bool text_start)
    : tokenizer_(&tokenizer), strip_next_space_(text_start && tokenizer.strips_leading_space()) {}

std::string StreamingDecoder::push(int32_t id) {
  std::string piece = tokenizer_->token_to_piece(id);
  if (strip_next_space_ && !tokenizer_->is_control(id)) {
    // As SentencePiece: only the first visible token may lose the space the prefix rule added,
    // and only when it is a text piece starting with U+2581 (not a byte or unknown token).
    const TokenType type = tokenizer_->token_type(id);
    const bool text_piece = type == TokenType::kNormal || type == TokenType::kUserDefined || type == TokenType::kUnused;
    if (text_piece && tokenizer_->token_text(id).starts_with("\xE2\x96\x81")) piece.erase(0, 1);
    strip_next_space_ = false;
  }
  pending_ += piece;
  const size_t complete = utf8::complete_prefix_length(pending_);
  std::string out = pending_.substr(0, complete);
  pending_.erase(0, complete);
  return out;
}

std::string StreamingDecoder::flush() {
  std::string out = std::move(pending_);
  pending_.clear();
  return out;
}

}  // namespace pdvm
