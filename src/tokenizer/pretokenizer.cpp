#include "tokenizer/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <fmt/format.h>

#include <array>

#include "pdvm/error.h"

namespace pdvm::tokenizer_detail {
namespace {

// Whitespace is the Unicode White_Space property, as in the Python `regex` module GPT-2 used and
// in Hugging Face tokenizers; PCRE2's \s would also take U+180E.
// The GPT-2 pattern: contractions, letters, numbers, other symbols, each optionally after one
// space, then whitespace (a trailing run of spaces leaves its last space to the next word).
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\p{White_Space}\p{L}\p{N}]+|\p{White_Space}+(?!\P{White_Space})|\p{White_Space}+)";
// Llama 3: case-insensitive contractions, letters after at most one non-letter, numbers in
// groups of up to three digits, newlines kept apart from other whitespace.
constexpr const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\p{White_Space}\p{L}\p{N}]+[\r\n]*|\p{White_Space}*[\r\n]+|\p{White_Space}+(?!\P{White_Space})|\p{White_Space}+)";
// Qwen2: as Llama 3 but every digit is a piece of its own.
constexpr const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\p{White_Space}\p{L}\p{N}]+[\r\n]*|\p{White_Space}*[\r\n]+|\p{White_Space}+(?!\P{White_Space})|\p{White_Space}+)";
constexpr const char* kSingleDigitPattern = R"(\p{N})";

struct PreTokenizerSpec {
  const char* name;
  std::vector<const char*> patterns;
  bool prefers_whole_words;
};

const std::vector<PreTokenizerSpec>& specs() {
  static const std::vector<PreTokenizerSpec> all = {
      {"default", {kGpt2Pattern}, false},
      {"gpt2", {kGpt2Pattern}, false},
      {"gpt-2", {kGpt2Pattern}, false},
      {"llama-bpe", {kLlama3Pattern}, true},
      {"llama3", {kLlama3Pattern}, true},
      {"smollm", {kSingleDigitPattern, kGpt2Pattern}, false},
      {"starcoder", {kSingleDigitPattern, kGpt2Pattern}, false},
      {"refact", {kSingleDigitPattern, kGpt2Pattern}, false},
      {"qwen2", {kQwen2Pattern}, false},
  };
  return all;
}

}  // namespace

struct PreTokenizer::Stage {
  pcre2_code* code = nullptr;
  ~Stage() { pcre2_code_free(code); }
};

PreTokenizer::PreTokenizer(std::string_view pre_name) {
  const PreTokenizerSpec* spec = nullptr;
  for (const auto& candidate : specs()) {
    if (pre_name == candidate.name) spec = &candidate;
  }
  if (!spec) {
    throw Error(ErrorKind::kUnsupported,
                fmt::format("unsupported pre-tokenizer tokenizer.ggml.pre = \"{}\" (known: {})", pre_name,
                            fmt::join(known_names(), ", ")));
  }
  prefers_whole_words_ = spec->prefers_whole_words;
  for (const char* pattern : spec->patterns) {
    int error_code = 0;
    PCRE2_SIZE error_offset = 0;
    auto stage = std::make_unique<Stage>();
    // MATCH_INVALID_UTF: invalid bytes in the subject never match and never make matching fail.
    stage->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED,
                                PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error_code,
                                &error_offset, nullptr);
    if (!stage->code) {
      std::array<PCRE2_UCHAR, 256> message{};
      pcre2_get_error_message(error_code, message.data(), message.size());
      throw Error(ErrorKind::kInternal, fmt::format("pre-tokenizer pattern of \"{}\" does not compile at {}: {}",
                                                    pre_name, error_offset,
                                                    reinterpret_cast<const char*>(message.data())));
    }
    // JIT is an optimization only: the interpreter gives the same matches if it is unavailable.
    pcre2_jit_compile(stage->code, PCRE2_JIT_COMPLETE);
    stages_.push_back(std::move(stage));
  }
}

PreTokenizer::~PreTokenizer() = default;

std::vector<std::string> PreTokenizer::known_names() {
  std::vector<std::string> names;
  for (const auto& spec : specs()) names.emplace_back(spec.name);
  return names;
}

std::vector<std::string_view> PreTokenizer::split(std::string_view text) const {
  std::vector<std::string_view> pieces;
  if (!text.empty()) pieces.push_back(text);
  for (const auto& stage : stages_) {
    pcre2_match_data* match = pcre2_match_data_create_from_pattern(stage->code, nullptr);
    if (!match) throw Error(ErrorKind::kResource, "out of memory for pre-tokenizer match data");
    std::vector<std::string_view> next_pieces;
    next_pieces.reserve(pieces.size() * 2);
    for (std::string_view piece : pieces) {
      const auto* subject = reinterpret_cast<PCRE2_SPTR>(piece.data());
      size_t offset = 0;
      size_t unmatched_from = 0;
      while (offset < piece.size()) {
        const int rc = pcre2_match(stage->code, subject, piece.size(), offset, 0, match, nullptr);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
          pcre2_match_data_free(match);
          throw Error(ErrorKind::kInternal, fmt::format("pre-tokenizer match failed with PCRE2 error {}", rc));
        }
        const PCRE2_SIZE* range = pcre2_get_ovector_pointer(match);
        const size_t begin = range[0];
        const size_t end = range[1];
        PDVM_CHECK_MSG(end > begin, "pre-tokenizer patterns never match empty text");
        if (begin > unmatched_from) next_pieces.push_back(piece.substr(unmatched_from, begin - unmatched_from));
        next_pieces.push_back(piece.substr(begin, end - begin));
        offset = end;
        unmatched_from = end;
      }
      if (unmatched_from < piece.size()) next_pieces.push_back(piece.substr(unmatched_from));
    }
    pcre2_match_data_free(match);
    pieces = std::move(next_pieces);
  }
  return pieces;
}

}  // namespace pdvm::tokenizer_detail
