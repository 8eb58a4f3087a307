#include "tokenizer/utf8.h"

namespace pdvm::utf8 {
namespace {

bool is_continuation(unsigned char byte) { return (byte & 0xC0) == 0x80; }

// Expected sequence length from a lead byte; 0 for bytes that cannot start a sequence.
size_t expected_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

// The allowed range of the second byte, which rules out overlong forms, surrogates and
// code points above U+10FFFF.
bool second_byte_allowed(unsigned char lead, unsigned char second) {
  if (!is_continuation(second)) return false;
  if (lead == 0xE0) return second >= 0xA0;
  if (lead == 0xED) return second <= 0x9F;
  if (lead == 0xF0) return second >= 0x90;
  if (lead == 0xF4) return second <= 0x8F;
  return true;
}

}  // namespace

size_t char_length(std::string_view text, size_t pos) {
  const auto lead = static_cast<unsigned char>(text[pos]);
  const size_t length = expected_length(lead);
  if (length <= 1 || pos + length > text.size()) return 1;
  if (!second_byte_allowed(lead, static_cast<unsigned char>(text[pos + 1]))) return 1;
  for (size_t i = 2; i < length; ++i) {
    if (!is_continuation(static_cast<unsigned char>(text[pos + i]))) return 1;
  }
  return length;
}

uint32_t decode_char(std::string_view text, size_t pos, size_t length) {
  const auto lead = static_cast<unsigned char>(text[pos]);
  if (length == 1) return lead;
  uint32_t codepoint = lead & (0x7F >> length);
  for (size_t i = 1; i < length; ++i) {
    codepoint = (codepoint << 6) | (static_cast<unsigned char>(text[pos + i]) & 0x3F);
  }
  return codepoint;
}

void append_codepoint(std::string& out, uint32_t codepoint) {
  if (codepoint < 0x80) {
    out += static_cast<char>(codepoint);
  } else if (codepoint < 0x800) {
    out += static_cast<char>(0xC0 | (codepoint >> 6));
    out += static_cast<char>(0x80 | (codepoint & 0x3F));
  } else if (codepoint < 0x10000) {
    out += static_cast<char>(0xE0 | (codepoint >> 12));
    out += static_cast<char>(0x80 | ((codepoint >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (codepoint & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (codepoint >> 18));
    out += static_cast<char>(0x80 | ((codepoint >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((codepoint >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (codepoint & 0x3F));
  }
}

size_t complete_prefix_length(std::string_view bytes) {
  // Only the last three bytes can belong to an unfinished sequence.
  const size_t first = bytes.size() > 3 ? bytes.size() - 3 : 0;
  for (size_t start = first; start < bytes.size(); ++start) {
    const auto lead = static_cast<unsigned char>(bytes[start]);
    const size_t length = expected_length(lead);
    const size_t available = bytes.size() - start;
    if (length <= 1 || available >= length) continue;
    bool could_complete = available < 2 || second_byte_allowed(lead, static_cast<unsigned char>(bytes[start + 1]));
    for (size_t i = 2; i < available && could_complete; ++i) {
      could_complete = is_continuation(static_cast<unsigned char>(bytes[start + i]));
    }
    if (could_complete) return start;
  }
  return bytes.size();
}

}  // namespace pdvm::utf8
