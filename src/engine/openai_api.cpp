#include "engine/openai_api.h"

#include <cmath>
#include <limits>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "pdvm/error.h"

namespace pdvm::api {
namespace {

using nlohmann::json;

[[noreturn]] void refuse(const std::string& param, const std::string& message) {
  throw RequestError(400, kInvalidRequest, message, param);
}

const char* json_type_name(const json& value) {
  switch (value.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    case json::value_t::number_float: return "a non-integer number";
    default: return "an integer";
  }
}

[[noreturn]] void wrong_type(const std::string& param, const char* expected, const json& got) {
  refuse(param, fmt::format("'{}' must be {}, got {}", param, expected, json_type_name(got)));
}

// A field of the request object; JSON null counts as absent, as in OpenAI's API.
const json* find_field(const json& object, const char* name) {
  const auto it = object.find(name);
  return it == object.end() || it->is_null() ? nullptr : &*it;
}

double number_in(const json& value, const std::string& param, double lo, double hi) {
  if (!value.is_number()) wrong_type(param, "a number", value);
  const double x = value.get<double>();
  if (!std::isfinite(x) || x < lo || x > hi) {
    refuse(param, fmt::format("'{}' must be in [{}, {}], got {}", param, lo, hi, x));
  }
  return x;
}

int64_t integer_in(const json& value, const std::string& param, int64_t lo, int64_t hi) {
  if (value.is_number_unsigned()) {
    const uint64_t x = value.get<uint64_t>();
    if (x > static_cast<uint64_t>(hi)) refuse(param, fmt::format("'{}' must be in [{}, {}], got {}", param, lo, hi, x));
    return static_cast<int64_t>(x);
  }
  if (!value.is_number_integer()) wrong_type(param, "an integer", value);
  const int64_t x = value.get<int64_t>();
  if (x < lo || x > hi) refuse(param, fmt::format("'{}' must be in [{}, {}], got {}", param, lo, hi, x));
  return x;
}

bool boolean(const json& value, const std::string& param) {
  if (!value.is_boolean()) wrong_type(param, "true or false", value);
  return value.get<bool>();
}

std::string string(const json& value, const std::string& param) {
  if (!value.is_string()) wrong_type(param, "a string", value);
  return value.get<std::string>();
}

void refuse_unsupported(const std::string& param, const std::string& what) {
  refuse(param, fmt::format("'{}' is not supported by pdvm: {}", param, what));
}

// Deeply nested input would make every later recursive walk (and the destructor) recurse.
json parse_json(std::string_view body) {
  const json::parser_callback_t limit_depth = [](int depth, json::parse_event_t, json&) {
    if (depth >= kMaxJsonDepth) {
      throw RequestError(400, kInvalidRequest, fmt::format("the JSON body nests deeper than {} levels", kMaxJsonDepth));
    }
    return true;
  };
  try {
    return json::parse(body.begin(), body.end(), limit_depth);
  } catch (const json::exception& e) {
    throw RequestError(400, kInvalidRequest, fmt::format("the body is not valid JSON: {}", e.what()));
  }
}

void parse_prompt(const json& body, CompletionRequest& request) {
  const json* prompt = find_field(body, "prompt");
  if (!prompt) refuse("prompt", "'prompt' is required");
  if (prompt->is_string()) {
    request.prompt = prompt->get<std::string>();
    return;
  }
  if (!prompt->is_array()) wrong_type("prompt", "a string or an array of token ids", *prompt);
  if (prompt->size() == 1 && (*prompt)[0].is_string()) {
    request.prompt = (*prompt)[0].get<std::string>();
    return;
  }
  if (!prompt->empty() && (*prompt)[0].is_string()) {
    refuse_unsupported("prompt", "several prompts in one request (send one request each)");
  }
  request.prompt_is_tokens = true;
  for (size_t i = 0; i < prompt->size(); ++i) {
    const std::string param = fmt::format("prompt[{}]", i);
    const json& id = (*prompt)[i];
    if (!id.is_number_integer()) wrong_type(param, "a token id (an integer)", id);
    request.prompt_tokens.push_back(
        static_cast<int32_t>(integer_in(id, param, 0, std::numeric_limits<int32_t>::max())));
  }
}

std::string message_content(const json& content, const std::string& param) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) wrong_type(param, "a string or an array of text parts", content);
  std::string text;
  for (size_t i = 0; i < content.size(); ++i) {
    const std::string part_param = fmt::format("{}[{}]", param, i);
    const json& part = content[i];
    if (!part.is_object()) wrong_type(part_param, "an object", part);
    const json* type = find_field(part, "type");
    const std::string type_name = type ? string(*type, part_param + ".type") : "";
    if (type_name != "text") refuse_unsupported(part_param + ".type", "only text parts, not '" + type_name + "'");
    const json* part_text = find_field(part, "text");
    if (!part_text) refuse(part_param + ".text", fmt::format("'{}.text' is required", part_param));
    text += string(*part_text, part_param + ".text");
  }
  return text;
}

void parse_messages(const json& body, CompletionRequest& request) {
  const json* messages = find_field(body, "messages");
  if (!messages) refuse("messages", "'messages' is required");
  if (!messages->is_array()) wrong_type("messages", "an array", *messages);
  if (messages->empty()) refuse("messages", "'messages' must not be empty");
  for (size_t i = 0; i < messages->size(); ++i) {
    const std::string param = fmt::format("messages[{}]", i);
    const json& message = (*messages)[i];
    if (!message.is_object()) wrong_type(param, "an object", message);
    const json* role = find_field(message, "role");
    if (!role) refuse(param + ".role", fmt::format("'{}.role' is required", param));
    std::string role_name = string(*role, param + ".role");
    if (role_name == "developer") role_name = "system";  // OpenAI's newer name for it
    if (role_name != "system" && role_name != "user" && role_name != "assistant") {
      refuse(param + ".role", fmt::format("'{}.role' must be system, user or assistant, got '{}'", param, role_name));
    }
    const json* content = find_field(message, "content");
    if (!content) refuse(param + ".content", fmt::format("'{}.content' is required", param));
    if (const json* name = find_field(message, "name")) string(*name, param + ".name");
    request.messages.push_back({role_name, message_content(*content, param + ".content")});
  }
}

void parse_stop(const json& stop, CompletionRequest& request) {
  if (stop.is_string()) {
    request.stop.push_back(stop.get<std::string>());
  } else if (stop.is_array()) {
    if (stop.size() > kMaxStopStrings) {
      refuse("stop", fmt::format("'stop' may hold at most {} strings, got {}", kMaxStopStrings, stop.size()));
    }
    for (size_t i = 0; i < stop.size(); ++i) request.stop.push_back(string(stop[i], fmt::format("stop[{}]", i)));
  } else {
    wrong_type("stop", "a string or an array of strings", stop);
  }
  for (const std::string& s : request.stop) {
    if (s.empty()) refuse("stop", "'stop' strings must not be empty");
  }
}

void parse_sampling(const json& body, CompletionRequest& request) {
  SamplingParams& p = request.sampling;
  constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
  constexpr double kFloatMax = std::numeric_limits<float>::max();
  if (const json* v = find_field(body, "temperature")) p.temperature = static_cast<float>(number_in(*v, "temperature", 0, kFloatMax));
  if (const json* v = find_field(body, "top_p")) p.top_p = static_cast<float>(number_in(*v, "top_p", 0, 1));
  if (p.top_p <= 0) refuse("top_p", "'top_p' must be in (0, 1]");
  if (const json* v = find_field(body, "top_k")) p.top_k = static_cast<int32_t>(integer_in(*v, "top_k", 0, kInt32Max));
  if (const json* v = find_field(body, "min_p")) p.min_p = static_cast<float>(number_in(*v, "min_p", 0, 1));
  if (const json* v = find_field(body, "repeat_penalty")) {
    p.repeat_penalty = static_cast<float>(number_in(*v, "repeat_penalty", 0, kFloatMax));
    if (p.repeat_penalty <= 0) refuse("repeat_penalty", "'repeat_penalty' must be > 0 (1 = off)");
  }
  if (const json* v = find_field(body, "repeat_last_n")) p.repeat_last_n = static_cast<int32_t>(integer_in(*v, "repeat_last_n", -1, kInt32Max));
  if (const json* v = find_field(body, "seed")) {
    // OpenAI documents a 64-bit integer seed; negative ones are kept as their two's complement.
    request.seed = v->is_number_unsigned()
                       ? v->get<uint64_t>()
                       : static_cast<uint64_t>(integer_in(*v, "seed", std::numeric_limits<int64_t>::min(),
                                                          std::numeric_limits<int64_t>::max()));
  }
  for (const char* penalty : {"presence_penalty", "frequency_penalty"}) {
    if (const json* v = find_field(body, penalty)) {
      if (number_in(*v, penalty, -2, 2) != 0) refuse_unsupported(penalty, "only 0 (use repeat_penalty)");
    }
  }
  try {
    p.validate();
  } catch (const Error& e) {
    refuse("", e.what());
  }
}

// Fields of OpenAI's API that pdvm does not implement: accepted only at their neutral value.
void refuse_unsupported_features(const json& body, Endpoint endpoint) {
  if (const json* n = find_field(body, "n"); n && integer_in(*n, "n", 1, 128) != 1) {
    refuse_unsupported("n", "one choice per request");
  }
  if (const json* best_of = find_field(body, "best_of"); best_of && integer_in(*best_of, "best_of", 1, 128) != 1) {
    refuse_unsupported("best_of", "only 1");
  }
  if (const json* echo = find_field(body, "echo"); echo && boolean(*echo, "echo")) {
    refuse_unsupported("echo", "only false");
  }
  if (const json* logprobs = find_field(body, "logprobs")) {
    const bool wanted = endpoint == Endpoint::kChatCompletions ? boolean(*logprobs, "logprobs")
                                                               : integer_in(*logprobs, "logprobs", 0, 20) > 0;
    if (wanted) refuse_unsupported("logprobs", "log probabilities are not returned");
  }
  if (const json* top_logprobs = find_field(body, "top_logprobs");
      top_logprobs && integer_in(*top_logprobs, "top_logprobs", 0, 20) != 0) {
    refuse_unsupported("top_logprobs", "log probabilities are not returned");
  }
  if (const json* suffix = find_field(body, "suffix"); suffix && !string(*suffix, "suffix").empty()) {
    refuse_unsupported("suffix", "no insertion");
  }
  if (const json* bias = find_field(body, "logit_bias")) {
    if (!bias->is_object()) wrong_type("logit_bias", "an object", *bias);
    if (!bias->empty()) refuse_unsupported("logit_bias", "no logit bias");
  }
  for (const char* tools : {"tools", "functions"}) {
    if (const json* v = find_field(body, tools)) {
      if (!v->is_array()) wrong_type(tools, "an array", *v);
      if (!v->empty()) refuse_unsupported(tools, "no tool calls");
    }
  }
  if (const json* format = find_field(body, "response_format")) {
    if (!format->is_object()) wrong_type("response_format", "an object", *format);
    const json* type = find_field(*format, "type");
    if (type && string(*type, "response_format.type") != "text") {
      refuse_unsupported("response_format.type", "only \"text\"");
    }
  }
  if (const json* user = find_field(body, "user")) string(*user, "user");
}

}  // namespace

CompletionRequest parse_request(Endpoint endpoint, std::string_view body_text, const RequestDefaults& defaults) {
  const json body = parse_json(body_text);
  if (!body.is_object()) {
    throw RequestError(400, kInvalidRequest,
                       fmt::format("the body must be a JSON object, got {}", json_type_name(body)));
  }
  CompletionRequest request;
  request.endpoint = endpoint;
  request.sampling = defaults.sampling;
  if (const json* model = find_field(body, "model")) request.model = string(*model, "model");
  if (endpoint == Endpoint::kCompletions) {
    parse_prompt(body, request);
  } else {
    parse_messages(body, request);
  }
  request.max_tokens = endpoint == Endpoint::kCompletions ? defaults.completion_max_tokens : defaults.chat_max_tokens;
  constexpr int64_t kMaxInt = std::numeric_limits<int64_t>::max();
  for (const char* name : {"max_tokens", "max_completion_tokens"}) {
    if (const json* v = find_field(body, name)) request.max_tokens = integer_in(*v, name, 0, kMaxInt);
  }
  parse_sampling(body, request);
  if (const json* stop = find_field(body, "stop")) parse_stop(*stop, request);
  if (const json* stream = find_field(body, "stream")) request.stream = boolean(*stream, "stream");
  if (const json* options = find_field(body, "stream_options")) {
    if (!options->is_object()) wrong_type("stream_options", "an object", *options);
    if (const json* usage = find_field(*options, "include_usage")) {
      request.include_usage = boolean(*usage, "stream_options.include_usage");
    }
  }
  if (const json* cache = find_field(body, "cache_prompt")) request.cache_prompt = boolean(*cache, "cache_prompt");
  refuse_unsupported_features(body, endpoint);
  return request;
}

namespace {

std::string dump(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

json usage_json(const Usage& usage) {
  return {{"prompt_tokens", usage.prompt_tokens},
          {"completion_tokens", usage.completion_tokens},
          {"total_tokens", usage.prompt_tokens + usage.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", usage.cached_tokens}}}};
}

json response_base(const ResponseMeta& meta, bool chunk) {
  const bool chat = meta.endpoint == Endpoint::kChatCompletions;
  const char* object = chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion";
  return {{"id", meta.id}, {"object", object}, {"created", meta.created}, {"model", meta.model}};
}

std::string event(const json& data) { return "data: " + dump(data) + "\n\n"; }

}  // namespace

std::string error_json(std::string_view message, std::string_view type, std::string_view param) {
  json error = {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}};
  if (!param.empty()) error["param"] = param;
  return dump(json{{"error", error}});
}

const char* finish_reason(StopReason reason) {
  switch (reason) {
    case StopReason::kEndOfGeneration:
    case StopReason::kStopString: return "stop";
    case StopReason::kTokenLimit:
    case StopReason::kContextFull: return "length";
    case StopReason::kInterrupted: return "cancelled";
  }
  return "stop";
}

std::string completion_json(const ResponseMeta& meta, std::string_view text, StopReason reason, const Usage& usage) {
  json choice = {{"index", 0}, {"finish_reason", finish_reason(reason)}, {"logprobs", nullptr}};
  if (meta.endpoint == Endpoint::kChatCompletions) {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  } else {
    choice["text"] = text;
  }
  json response = response_base(meta, false);
  response["choices"] = json::array({choice});
  response["usage"] = usage_json(usage);
  return dump(response);
}

std::string stream_text_event(const ResponseMeta& meta, std::string_view text, bool first) {
  json choice = {{"index", 0}, {"finish_reason", nullptr}, {"logprobs", nullptr}};
  if (meta.endpoint == Endpoint::kChatCompletions) {
    choice["delta"] = {{"content", text}};
    if (first) choice["delta"]["role"] = "assistant";
  } else {
    choice["text"] = text;
  }
  json chunk = response_base(meta, true);
  chunk["choices"] = json::array({choice});
  return event(chunk);
}

std::string stream_finish_event(const ResponseMeta& meta, StopReason reason) {
  json choice = {{"index", 0}, {"finish_reason", finish_reason(reason)}, {"logprobs", nullptr}};
  if (meta.endpoint == Endpoint::kChatCompletions) {
    choice["delta"] = json::object();
  } else {
    choice["text"] = "";
  }
  json chunk = response_base(meta, true);
  chunk["choices"] = json::array({choice});
  return event(chunk);
}

std::string stream_usage_event(const ResponseMeta& meta, const Usage& usage) {
  json chunk = response_base(meta, true);
  chunk["choices"] = json::array();
  chunk["usage"] = usage_json(usage);
  return event(chunk);
}

std::string stream_error_event(std::string_view message, std::string_view type) {
  return "data: " + error_json(message, type) + "\n\n";
}

std::string models_json(std::string_view model_id, int64_t created) {
  const json model = {{"id", model_id}, {"object", "model"}, {"created", created}, {"owned_by", "pdvm"}};
  return dump(json{{"object", "list"}, {"data", json::array({model})}});
}

}  // namespace pdvm::api
