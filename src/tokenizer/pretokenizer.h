// Regex pre-tokenizers of byte-level BPE models, chosen by tokenizer.ggml.pre. Each stage is a
// PCRE2 pattern (UTF + UCP, JIT) applied to every piece the previous stage produced; text
// between matches stays a piece of its own, and so do bytes that are not valid UTF-8.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace pdvm::tokenizer_detail {

class PreTokenizer {
 public:
  // Throws Error(kUnsupported) naming `pre_name` when it is not a known pre-tokenizer.
  explicit PreTokenizer(std::string_view pre_name);
  ~PreTokenizer();
  PreTokenizer(const PreTokenizer&) = delete;
  PreTokenizer& operator=(const PreTokenizer&) = delete;

  // Pieces of `text`, in order; their concatenation is `text`.
  std::vector<std::string_view> split(std::string_view text) const;

  // Whether whole pieces found in the vocabulary skip the merges (Llama 3's ignore_merges).
  bool prefers_whole_words() const { return prefers_whole_words_; }

  static std::vector<std::string> known_names();

 private:
  struct Stage;
  std::vector<std::unique_ptr<Stage>> stages_;
  bool prefers_whole_words_ = false;
};

}  // namespace pdvm::tokenizer_detail
