// The OpenAI-compatible HTTP API of `pdvm serve`, without the HTTP: request bodies are parsed
// and validated into typed requests, responses and stream chunks are formatted as JSON. Pure
// functions (no model, no I/O), so the fuzzer (fuzz/openai_request_fuzz.cpp) and the unit tests
// drive exactly what the server runs.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "pdvm/chat_template.h"
#include "pdvm/generator.h"
#include "pdvm/sampling.h"

namespace pdvm::api {

enum class Endpoint { kCompletions, kChatCompletions };

// A request the server refuses, with the HTTP status and OpenAI's error type
// ("invalid_request_error", ...) and the offending field when there is one.
class RequestError : public std::runtime_error {
 public:
  RequestError(int status, std::string type, const std::string& message, std::string param = {})
      : std::runtime_error(message), status_(status), type_(std::move(type)), param_(std::move(param)) {}
  int status() const { return status_; }
  const std::string& type() const { return type_; }
  const std::string& param() const { return param_; }

 private:
  int status_;
  std::string type_;
  std::string param_;
};

inline constexpr const char* kInvalidRequest = "invalid_request_error";

// What a request gets for the fields it leaves out: the server's sampling flags, and OpenAI's
// token budgets (16 for completions, no limit for chat).
struct RequestDefaults {
  SamplingParams sampling;
  int64_t completion_max_tokens = 16;
  int64_t chat_max_tokens = -1;
};

inline constexpr size_t kMaxStopStrings = 16;
inline constexpr int kMaxJsonDepth = 32;

struct CompletionRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string model;                   // as sent (the server has one model and ignores it)
  std::string prompt;                  // completions given as text
  std::vector<int32_t> prompt_tokens;  // completions given as token ids (range checked later)
  bool prompt_is_tokens = false;
  std::vector<ChatMessage> messages;   // chat completions
  int64_t max_tokens = -1;             // -1: until the model stops or the context is full
  SamplingParams sampling;             // validated; seed meaningful only when `seed` is set
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;          // stream_options.include_usage
  bool cache_prompt = true;            // false: prefill the whole prompt, as `pdvm run` does
};

// Parses and validates a request body. Unknown fields are ignored (clients send extras); known
// fields must have the documented type and range, and features pdvm does not implement (n > 1,
// logprobs, penalties other than 0, tools, ...) are refused rather than ignored. Throws
// RequestError (status 400) naming the field.
CompletionRequest parse_request(Endpoint endpoint, std::string_view body, const RequestDefaults& defaults);

// {"error":{"message":...,"type":...,"param":...,"code":null}}
std::string error_json(std::string_view message, std::string_view type, std::string_view param = {});

// "stop" (end of generation, stop string), "length" (token limit, full context) or, for a
// generation cut short because the client went away, "cancelled".
const char* finish_reason(StopReason reason);

// Identity of one response, shared by its stream chunks.
struct ResponseMeta {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string id;
  int64_t created = 0;  // Unix seconds
  std::string model;
};

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_tokens = 0;  // prompt tokens whose KV entries an earlier request left
};

// The whole response of a non-streamed request. Text that is not valid UTF-8 is written with
// U+FFFD replacement characters.
std::string completion_json(const ResponseMeta& meta, std::string_view text, StopReason reason, const Usage& usage);

// One server-sent event ("data: {...}\n\n") carrying a piece of text; for chat the first one
// also carries the role. finish: the final chunk (empty text, the finish reason).
std::string stream_text_event(const ResponseMeta& meta, std::string_view text, bool first);
std::string stream_finish_event(const ResponseMeta& meta, StopReason reason);
std::string stream_usage_event(const ResponseMeta& meta, const Usage& usage);
std::string stream_error_event(std::string_view message, std::string_view type);
inline constexpr std::string_view kStreamDone = "data: [DONE]\n\n";

// GET /v1/models
std::string models_json(std::string_view model_id, int64_t created);

}  // namespace pdvm::api
