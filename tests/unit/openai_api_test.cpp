// The OpenAI-compatible request parser and response formatter of `pdvm serve`
// (src/engine/openai_api.h): random valid requests come back as the values sent, every field
// with a wrong type or range is refused naming it, and responses are JSON that the independent
// nlohmann parser reads back to the text that went in.
#include "engine/openai_api.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <limits>
#include <string>

#include "test_support.h"

namespace pdvm::api {
namespace {

using nlohmann::json;

std::string random_text(size_t max_len) {
  // ASCII, a few multi-byte characters and the JSON escapes
  static const std::vector<std::string> pieces = {"a", "Z", " ", "\n", "\"", "\\", "\t", "é", "日本", "🦙", "{", "}", "\x01"};
  std::uniform_int_distribution<size_t> len(0, max_len), pick(0, pieces.size() - 1);
  std::string s;
  for (size_t i = len(test::rng()); i > 0; --i) s += pieces[pick(test::rng())];
  return s;
}

RequestDefaults defaults() {
  RequestDefaults d;
  d.sampling.temperature = 0.7f;
  d.sampling.top_k = 33;
  return d;
}

TEST(OpenAiApi, RandomCompletionRequestsParseToTheirValues) {
  auto& rng = test::rng();
  std::uniform_real_distribution<double> unit(0.01, 1.0);
  std::uniform_int_distribution<int64_t> tokens(0, 4096);
  for (int i = 0; i < 200; ++i) {
    json body = {{"prompt", random_text(40)}, {"model", random_text(8)}};
    const double temperature = 2 * unit(rng), top_p = unit(rng), min_p = unit(rng);
    const int64_t max_tokens = tokens(rng), top_k = tokens(rng);
    const uint64_t seed = rng();
    const std::string stop = random_text(5) + "x";
    body["temperature"] = temperature;
    body["top_p"] = top_p;
    body["min_p"] = min_p;
    body["top_k"] = top_k;
    body["max_tokens"] = max_tokens;
    body["seed"] = seed;
    body["stop"] = (i % 2) ? json(stop) : json::array({stop, "yz"});
    body["stream"] = i % 3 == 0;
    if (i % 5 < 2) body["cache_prompt"] = i % 5 == 1;
    const CompletionRequest r = parse_request(Endpoint::kCompletions, body.dump(), defaults());
    EXPECT_EQ(r.prompt, body["prompt"].get<std::string>());
    EXPECT_FALSE(r.prompt_is_tokens);
    EXPECT_EQ(r.model, body["model"].get<std::string>());
    EXPECT_FLOAT_EQ(r.sampling.temperature, static_cast<float>(temperature));
    EXPECT_FLOAT_EQ(r.sampling.top_p, static_cast<float>(top_p));
    EXPECT_FLOAT_EQ(r.sampling.min_p, static_cast<float>(min_p));
    EXPECT_EQ(r.sampling.top_k, top_k);
    EXPECT_EQ(r.max_tokens, max_tokens);
    ASSERT_TRUE(r.seed.has_value());
    EXPECT_EQ(*r.seed, seed);
    EXPECT_EQ(r.stop.front(), stop);
    EXPECT_EQ(r.stop.size(), (i % 2) ? 1u : 2u);
    EXPECT_EQ(r.stream, i % 3 == 0);
    EXPECT_EQ(r.cache_prompt, i % 5 != 0);  // left out: true
  }
}

TEST(OpenAiApi, DefaultsFillWhatIsLeftOut) {
  const CompletionRequest c = parse_request(Endpoint::kCompletions, R"({"prompt":"hi","temperature":null})", defaults());
  EXPECT_FLOAT_EQ(c.sampling.temperature, 0.7f);  // null counts as absent
  EXPECT_EQ(c.sampling.top_k, 33);
  EXPECT_EQ(c.max_tokens, 16);
  EXPECT_FALSE(c.seed);
  const CompletionRequest chat =
      parse_request(Endpoint::kChatCompletions, R"({"messages":[{"role":"user","content":"hi"}]})", defaults());
  EXPECT_EQ(chat.max_tokens, -1);
}

TEST(OpenAiApi, PromptAsTokenIdsAndChatMessages) {
  std::uniform_int_distribution<int32_t> id(0, std::numeric_limits<int32_t>::max());
  std::vector<int32_t> ids(1 + test::rng()() % 50);
  for (auto& t : ids) t = id(test::rng());
  const CompletionRequest r = parse_request(Endpoint::kCompletions, json{{"prompt", ids}}.dump(), defaults());
  EXPECT_TRUE(r.prompt_is_tokens);
  EXPECT_EQ(r.prompt_tokens, ids);

  const std::string a = random_text(30), b = random_text(30), c = random_text(30);
  const json body = {{"messages",
                      {{{"role", "developer"}, {"content", a}},
                       {{"role", "user"}, {"content", {{{"type", "text"}, {"text", b}}, {{"type", "text"}, {"text", c}}}}},
                       {{"role", "assistant"}, {"content", c}, {"name", "bot"}}}}};
  const CompletionRequest chat = parse_request(Endpoint::kChatCompletions, body.dump(), defaults());
  ASSERT_EQ(chat.messages.size(), 3u);
  EXPECT_EQ(chat.messages[0].role, "system");
  EXPECT_EQ(chat.messages[0].content, a);
  EXPECT_EQ(chat.messages[1].content, b + c);
  EXPECT_EQ(chat.messages[2].role, "assistant");
}

void expect_refused(Endpoint endpoint, const std::string& body, const std::string& param, const std::string& needle = "") {
  try {
    parse_request(endpoint, body, defaults());
    ADD_FAILURE() << "accepted: " << body;
  } catch (const RequestError& e) {
    EXPECT_EQ(e.status(), 400) << body;
    EXPECT_EQ(e.type(), kInvalidRequest);
    EXPECT_EQ(e.param(), param) << body << ": " << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
  }
}

TEST(OpenAiApi, WrongTypesAndRangesNameTheField) {
  const auto c = Endpoint::kCompletions;
  const std::vector<std::pair<std::string, json>> wrong = {
      {"temperature", "hot"}, {"temperature", -0.5}, {"top_p", 0}, {"top_p", 1.5}, {"top_k", 2.5}, {"top_k", -1},
      {"top_k", int64_t{1} << 40}, {"min_p", true}, {"repeat_penalty", 0}, {"repeat_last_n", -2},
      {"max_tokens", -1}, {"max_tokens", "10"}, {"max_completion_tokens", 1.0}, {"seed", 1.5}, {"seed", "1"},
      {"stop", 3}, {"stream", 1}, {"stream_options", "x"}, {"n", 2}, {"n", 0}, {"best_of", 3}, {"echo", true},
      {"logprobs", 1}, {"presence_penalty", 0.5}, {"frequency_penalty", 3}, {"logit_bias", {{"1", 2}}},
      {"tools", {1}}, {"user", 5}, {"cache_prompt", 0}, {"model", 5}, {"suffix", "end"}};
  for (const auto& [field, value] : wrong) {
    json body = {{"prompt", "x"}};
    body[field] = value;
    expect_refused(c, body.dump(), field, field);
  }
  expect_refused(c, R"({"prompt":"x","stop":["a",""]})", "stop");
  expect_refused(c, R"({"prompt":"x","stop":["a",1]})", "stop[1]");
  expect_refused(c, json{{"prompt", "x"}, {"stop", std::vector<std::string>(kMaxStopStrings + 1, "s")}}.dump(), "stop");
  expect_refused(c, R"({"prompt":"x","response_format":{"type":"json_object"}})", "response_format.type");
  expect_refused(c, R"({"prompt":"x","stream_options":{"include_usage":"yes"}})", "stream_options.include_usage");
  expect_refused(c, R"({"max_tokens":1})", "prompt", "required");
  expect_refused(c, R"({"prompt":["a","b"]})", "prompt", "not supported");
  expect_refused(c, R"({"prompt":[1,-1]})", "prompt[1]");
  expect_refused(c, R"({"prompt":[1,"a"]})", "prompt[1]");
  expect_refused(c, R"({"prompt":[1,3000000000]})", "prompt[1]");
  expect_refused(c, R"({"prompt":{}})", "prompt");
  const auto chat = Endpoint::kChatCompletions;
  expect_refused(chat, R"({"prompt":"x"})", "messages", "required");
  expect_refused(chat, R"({"messages":{}})", "messages");
  expect_refused(chat, R"({"messages":[]})", "messages", "empty");
  expect_refused(chat, R"({"messages":["hi"]})", "messages[0]");
  expect_refused(chat, R"({"messages":[{"content":"hi"}]})", "messages[0].role");
  expect_refused(chat, R"({"messages":[{"role":"tool","content":"hi"}]})", "messages[0].role", "tool");
  expect_refused(chat, R"({"messages":[{"role":"user"}]})", "messages[0].content");
  expect_refused(chat, R"({"messages":[{"role":"user","content":[{"type":"image_url"}]}]})", "messages[0].content[0].type");
  expect_refused(chat, R"({"messages":[{"role":"user","content":[{"type":"text"}]}]})", "messages[0].content[0].text");
  expect_refused(chat, R"({"messages":[{"role":"user","content":"x","name":3}]})", "messages[0].name");
  expect_refused(chat, R"({"messages":[{"role":"user","content":"x"}],"logprobs":true})", "logprobs");
}

TEST(OpenAiApi, MalformedBodies) {
  for (const std::string body : {"", "{", "{\"prompt\":}", "[1,2]", "\"x\"", "nul", "{\"prompt\":\"\xff\"}",
                                 "{\"prompt\":\"x\"} trailing", "{\"prompt\":1e999}"}) {
    expect_refused(Endpoint::kCompletions, body, "");
  }
  const std::string deep = std::string(kMaxJsonDepth + 1, '[') + std::string(kMaxJsonDepth + 1, ']');
  expect_refused(Endpoint::kCompletions, deep, "", "nests deeper");
  const std::string bomb = "{\"prompt\":\"x\",\"a\":" + std::string(100000, '[') + std::string(100000, ']') + "}";
  expect_refused(Endpoint::kCompletions, bomb, "", "nests deeper");
}

TEST(OpenAiApi, ResponsesReadBackToTheirText) {
  for (int i = 0; i < 100; ++i) {
    const std::string text = random_text(60);
    const Endpoint endpoint = i % 2 ? Endpoint::kChatCompletions : Endpoint::kCompletions;
    const ResponseMeta meta{endpoint, "id-" + std::to_string(i), 1700000000 + i, random_text(10)};
    const Usage usage{i, 2 * i, i / 2};
    const json r = json::parse(completion_json(meta, text, StopReason::kTokenLimit, usage));
    const json& choice = r["choices"][0];
    EXPECT_EQ(endpoint == Endpoint::kChatCompletions ? choice["message"]["content"] : choice["text"], text);
    EXPECT_EQ(choice["finish_reason"], "length");
    EXPECT_EQ(r["usage"]["total_tokens"], 3 * i);
    EXPECT_EQ(r["usage"]["prompt_tokens_details"]["cached_tokens"], i / 2);
    EXPECT_EQ(r["model"], meta.model);

    const std::string event = stream_text_event(meta, text, i % 4 < 2);
    ASSERT_EQ(event.rfind("data: ", 0), 0u);
    ASSERT_EQ(event.substr(event.size() - 2), "\n\n");
    const json chunk = json::parse(event.substr(6));
    EXPECT_EQ(endpoint == Endpoint::kChatCompletions ? chunk["choices"][0]["delta"]["content"] : chunk["choices"][0]["text"],
              text);
    EXPECT_EQ(json::parse(stream_finish_event(meta, StopReason::kStopString).substr(6))["choices"][0]["finish_reason"],
              "stop");
  }
  // Bytes that are not UTF-8 (a model can emit them) become U+FFFD instead of breaking the JSON.
  const json r = json::parse(completion_json({}, "a\xff" "b\xc3", StopReason::kEndOfGeneration, {}));
  EXPECT_EQ(r["choices"][0]["text"], "a\xEF\xBF\xBD" "b\xEF\xBF\xBD");
  const json e = json::parse(error_json("bad \xff", "invalid_request_error", "top_k"));
  EXPECT_EQ(e["error"]["param"], "top_k");
  EXPECT_EQ(e["error"]["type"], "invalid_request_error");
}

}  // namespace
}  // namespace pdvm::api
