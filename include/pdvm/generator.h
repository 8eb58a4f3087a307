// The generation loop: feed tokens to a Session, then sample and decode until an
// end-of-generation token, a stop string, the token budget or the end of the context, streaming
// the text as it forms. Chat keeps one Generator across turns: its token history mirrors the
// session's KV cache, so a new turn only prefills what differs from the previous context.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "pdvm/sampling.h"

namespace pdvm {

class Session;
class Tokenizer;

struct GenerationOptions {
  int64_t n_predict = -1;  // tokens to generate; -1: until the end or a full context; 0: prefill only
  std::vector<std::string> stop_strings;  // generation ends before any of them; never printed
  SamplingParams sampling;
  // false: prefill the whole context even where it starts with the cached one (a cached prefix
  // decodes its last token alone, which can round differently from a batch prefill)
  bool reuse_cached_prefix = true;
};

enum class StopReason { kEndOfGeneration, kStopString, kTokenLimit, kContextFull, kInterrupted };
const char* stop_reason_name(StopReason reason);

struct GenerationStats {
  int64_t prompt_tokens = 0;     // prefilled in this call (after reusing the cached prefix)
  int64_t reused_tokens = 0;     // prefix already in the KV cache
  double prompt_seconds = 0;
  int64_t generated_tokens = 0;  // sampled tokens, including a final end-of-generation token
  double generation_seconds = 0;
  StopReason stop_reason = StopReason::kTokenLimit;
  std::string text;              // the generated text, as streamed

  double prompt_tokens_per_second() const;
  double generation_tokens_per_second() const;
};

class Generator {
 public:
  // Both must outlive the Generator. The session is reset.
  Generator(Session& session, const Tokenizer& tokenizer);

  // Brings the session to `context` (reusing the longest common prefix with what it holds),
  // then generates after it. on_text receives each chunk of text (complete UTF-8 only);
  // generation stops early once `interrupt` becomes true. Throws Error(kOutOfRange) before any
  // work if `context` does not fit the session's context.
  GenerationStats generate(std::span<const int32_t> context, const GenerationOptions& options,
                           const std::function<void(std::string_view)>& on_text,
                           const std::atomic<bool>* interrupt = nullptr);

  // Tokens currently in the session's cache (prompt and generated ones that were fed back).
  const std::vector<int32_t>& history() const { return history_; }
  void reset();

 private:
  Session& session_;
  const Tokenizer& tokenizer_;
  std::vector<int32_t> history_;
};

// Holds back text that might be the start of a stop string, and cuts before the first stop
// string to complete (the result does not depend on how the text is split into pieces).
class StopStringFilter {
 public:
  explicit StopStringFilter(std::vector<std::string> stop_strings);
  // Adds text; returns what can be released now. After a stop string is seen, stopped() is true
  // and the result ends just before it.
  std::string push(std::string_view text);
  std::string finish();  // releases the held-back text at the end of generation
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace pdvm
