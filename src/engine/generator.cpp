#include "pdvm/generator.h"

#include <algorithm>
#include <chrono>

#include <fmt/format.h>

#include "pdvm/engine.h"
#include "pdvm/error.h"
#include "pdvm/tokenizer.h"

namespace pdvm {

const char* stop_reason_name(StopReason reason) {
  switch (reason) {
    case StopReason::kEndOfGeneration: return "end of generation";
    case StopReason::kStopString: return "stop string";
    case StopReason::kTokenLimit: return "token limit";
    case StopReason::kContextFull: return "context full";
    case StopReason::kInterrupted: return "interrupted";
  }
  return "?";
}

double GenerationStats::prompt_tokens_per_second() const {
  return prompt_seconds > 0 ? static_cast<double>(prompt_tokens) / prompt_seconds : 0.0;
}

double GenerationStats::generation_tokens_per_second() const {
  return generation_seconds > 0 ? static_cast<double>(generated_tokens) / generation_seconds : 0.0;
}

Generator::Generator(Session& session, const Tokenizer& tokenizer) : session_(session), tokenizer_(tokenizer) {
  session_.reset();
}

void Generator::reset() {
  session_.reset();
  history_.clear();
}

GenerationStats Generator::generate(std::span<const int32_t> context, const GenerationOptions& options,
                                    const std::function<void(std::string_view)>& on_text,
                                    const std::atomic<bool>* interrupt) {
  using Clock = std::chrono::steady_clock;
  const auto seconds_since = [](Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
  };
  const int64_t n_ctx = session_.n_ctx();
  if (context.empty()) throw_error(ErrorKind::kInvalidArgument, "the prompt is empty");
  if (static_cast<int64_t>(context.size()) > n_ctx) {
    throw_error(ErrorKind::kOutOfRange,
                fmt::format("the prompt is {} tokens but the context holds {} (raise --ctx)",
                            context.size(), n_ctx));
  }
  Sampler sampler(options.sampling);
  StopStringFilter filter(options.stop_strings);
  GenerationStats stats;
  const auto interrupted = [interrupt] { return interrupt && interrupt->load(); };

  // Reuse the cached prefix; at least one token is fed so that there are logits to sample from.
  size_t common = options.reuse_cached_prefix
                      ? static_cast<size_t>(std::mismatch(history_.begin(), history_.end(), context.begin(),
                                                          context.end()).first - history_.begin())
                      : 0;
  common = std::min(common, context.size() - 1);
  session_.truncate(static_cast<int64_t>(common));
  history_.resize(common);
  stats.reused_tokens = static_cast<int64_t>(common);
  if (interrupted()) {
    stats.stop_reason = StopReason::kInterrupted;
    return stats;
  }

  // Plain greedy decoding takes the argmax on the backend: 4 bytes come back instead of the
  // whole logits row (ties go to the lowest id there too).
  const SamplingParams& sp = options.sampling;
  const bool backend_argmax = sp.temperature <= 0 && (sp.repeat_penalty == 1.0f || sp.repeat_last_n == 0);
  const auto prompt_start = Clock::now();
  const auto fresh = context.subspan(common);
  session_.eval(fresh);
  // With top-k on, the fused decoder draws on the GPU (then queues the next step at once), or
  // only the largest logits come back; elsewhere the sampler reads the row.
  const size_t vocab = static_cast<size_t>(session_.n_vocab());
  std::vector<LogitCandidate> top;
  const auto sample = [&](bool feeds_back) {
    if (const std::optional<int32_t> drawn = session_.draw_token(sampler, history_, feeds_back)) return *drawn;
    const size_t needed = sampler.candidates_needed(vocab, history_);
    if (needed > 0 && session_.top_logits(needed, top)) return sampler.sample_top(top, vocab, history_);
    return sampler.sample(session_.last_logits(), history_);
  };
  history_.insert(history_.end(), fresh.begin(), fresh.end());
  stats.prompt_tokens = static_cast<int64_t>(fresh.size());
  stats.prompt_seconds = seconds_since(prompt_start);

  const auto emit = [&](std::string text) {
    if (text.empty()) return;
    stats.text += text;
    if (on_text) on_text(text);
  };
  StreamingDecoder decoder(tokenizer_, /*text_start=*/false);
  const auto generation_start = Clock::now();
  stats.stop_reason = StopReason::kTokenLimit;
  while (options.n_predict < 0 || stats.generated_tokens < options.n_predict) {
    if (interrupted()) {
      stats.stop_reason = StopReason::kInterrupted;
      break;
    }
    const bool feeds_back = options.n_predict < 0 || stats.generated_tokens + 1 < options.n_predict;
    const int32_t token = !backend_argmax ? sample(feeds_back)
                          : feeds_back    ? session_.greedy_token()
                                          : session_.last_argmax();
    ++stats.generated_tokens;
    if (tokenizer_.is_end_of_generation(token)) {
      stats.stop_reason = StopReason::kEndOfGeneration;
      break;
    }
    emit(filter.push(decoder.push(token)));
    if (filter.stopped()) {
      stats.stop_reason = StopReason::kStopString;
      break;
    }
    if (stats.generated_tokens == options.n_predict) break;  // no need to feed the last one
    if (session_.n_past() >= n_ctx) {
      stats.stop_reason = StopReason::kContextFull;
      break;
    }
    session_.eval(std::span<const int32_t>(&token, 1));
    history_.push_back(token);
  }
  emit(filter.push(decoder.flush()));
  emit(filter.finish());
  stats.generation_seconds = seconds_since(generation_start);
  return stats;
}

}  // namespace pdvm
