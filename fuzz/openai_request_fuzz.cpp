// libFuzzer target for the HTTP request handling of `pdvm serve`: the first byte picks the
// endpoint (bit 0: chat completions) and the server defaults (bit 1: greedy), the rest is the
// request body, given to api::parse_request exactly as the server does. It must either return a
// request whose every value is in range, or throw api::RequestError with a 4xx status, which the
// server turns into error_json (which must be JSON). A parsed request then goes the server's way:
// chat messages are rendered with the chatml template (success or Error(kInvalidArgument)), and
// the prompt text comes back unchanged through a completion response and a stream chunk.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "engine/openai_api.h"
#include "pdvm/chat_template.h"
#include "pdvm/error.h"

namespace {

using nlohmann::json;
using pdvm::api::Endpoint;

void require(bool condition) {
  if (!condition) std::abort();
}

void check_request(const pdvm::api::CompletionRequest& request) {
  request.sampling.validate();  // throws (an uncaught exception: a finding) if out of range
  require(request.max_tokens >= -1);
  require(request.stop.size() <= pdvm::api::kMaxStopStrings);
  for (const std::string& stop : request.stop) require(!stop.empty());
  std::string text = request.prompt;
  if (request.endpoint == Endpoint::kChatCompletions) {
    require(!request.messages.empty());
    for (const pdvm::ChatMessage& m : request.messages) {
      require(m.role == "system" || m.role == "user" || m.role == "assistant");
      text += m.content;
    }
    const pdvm::ChatTemplate chat = pdvm::ChatTemplate::from_name("chatml");
    try {
      text += chat.render(request.messages, /*add_generation_prompt=*/true);
    } catch (const pdvm::Error& e) {
      require(e.kind() == pdvm::ErrorKind::kInvalidArgument);
    }
  } else {
    require(request.prompt_is_tokens || request.prompt_tokens.empty());
    for (int32_t id : request.prompt_tokens) require(id >= 0);
  }
  // Everything here came through the JSON parser, so it is valid UTF-8 and must come back as is.
  const pdvm::api::ResponseMeta meta{request.endpoint, "id", 0, request.model};
  const json response = json::parse(pdvm::api::completion_json(meta, text, pdvm::StopReason::kTokenLimit, {}));
  const json& choice = response.at("choices").at(0);
  require((request.endpoint == Endpoint::kChatCompletions ? choice.at("message").at("content") : choice.at("text")) ==
          text);
  const std::string event = pdvm::api::stream_text_event(meta, text, true);
  require(event.rfind("data: ", 0) == 0 && event.size() >= 8 && event.substr(event.size() - 2) == "\n\n");
  require(json::parse(event.substr(6, event.size() - 8)).at("model") == request.model);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const Endpoint endpoint = (data[0] & 1) ? Endpoint::kChatCompletions : Endpoint::kCompletions;
  pdvm::api::RequestDefaults defaults;
  if (data[0] & 2) defaults.sampling.temperature = 0;
  const std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    check_request(pdvm::api::parse_request(endpoint, body, defaults));
  } catch (const pdvm::api::RequestError& e) {
    require(e.status() >= 400 && e.status() < 500 && *e.what() != '\0' && !e.type().empty());
    const json error = json::parse(pdvm::api::error_json(e.what(), e.type(), e.param())).at("error");
    require(error.at("message").is_string() && error.at("type") == e.type());
  }
  return 0;
}
