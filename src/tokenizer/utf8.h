// Small UTF-8 helpers shared by the tokenizers. Invalid input is never an error here: a byte
// that does not start a valid sequence counts as a one-byte character.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace pdvm::utf8 {

// Length of the valid UTF-8 sequence starting at text[pos] (1..4), or 1 when the bytes there
// do not form one (overlong forms, surrogates and values above U+10FFFF are invalid).
size_t char_length(std::string_view text, size_t pos);

// The code point of the valid sequence of `length` bytes at text[pos] (see char_length).
uint32_t decode_char(std::string_view text, size_t pos, size_t length);

void append_codepoint(std::string& out, uint32_t codepoint);

// Length of the longest prefix of `bytes` that does not end inside a sequence that is still
// incomplete but could become valid with more bytes.
size_t complete_prefix_length(std::string_view bytes);

}  // namespace pdvm::utf8
