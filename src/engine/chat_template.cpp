#include "pdvm/chat_template.h"

#include <array>
#include <optional>

#include <fmt/format.h>

#include "pdvm/error.h"
#include "pdvm/gguf.h"
#include "pdvm/tokenizer.h"

namespace pdvm {

namespace {

struct FormatName {
  ChatFormat format;
  const char* name;
};
constexpr std::array<FormatName, 5> kFormatNames{{
    {ChatFormat::kChatML, "chatml"},
    {ChatFormat::kLlama2, "llama2"},
    {ChatFormat::kLlama3, "llama3"},
    {ChatFormat::kMistral, "mistral"},
    {ChatFormat::kZephyr, "zephyr"},
}};

bool contains(std::string_view text, std::string_view needle) {
  return text.find(needle) != std::string_view::npos;
}

// Python's str.strip() (what Jinja's trim filter and the templates' .strip() call), limited to
// ASCII whitespace and the ASCII separators Python also strips.
std::string strip(std::string_view text) {
  const auto is_space = [](char c) {
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= '\x1c' && c <= '\x1f');
  };
  size_t begin = 0, end = text.size();
  while (begin < end && is_space(text[begin])) ++begin;
  while (end > begin && is_space(text[end - 1])) --end;
  return std::string(text.substr(begin, end - begin));
}

// Decodes the body of a Jinja string literal; nullopt if it is not a plain literal (it ends
// early at an unescaped quote, or contains template syntax).
std::optional<std::string> unescape_literal(std::string_view body) {
  std::string out;
  for (size_t i = 0; i < body.size(); ++i) {
    const char c = body[i];
    if (c == '\'' || c == '"') return std::nullopt;
    if (c == '{' && i + 1 < body.size() && (body[i + 1] == '{' || body[i + 1] == '%')) return std::nullopt;
    if (c != '\\' || i + 1 == body.size()) {
      out += c;
      continue;
    }
    const char e = body[++i];
    switch (e) {
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case 'r': out += '\r'; break;
      default: out += e; break;  // \\ \' \"
    }
  }
  return out;
}

// A ChatML template's built-in system prompt: the literal text of a
// '<|im_start|>system\n...<|im_end|>' string (SmolLM2, Qwen2 add one when the conversation
// starts without a system message).
std::string chatml_default_system(std::string_view jinja) {
  constexpr std::string_view kHeader = "<|im_start|>system";
  for (size_t at = jinja.find(kHeader); at != std::string_view::npos; at = jinja.find(kHeader, at + 1)) {
    if (at == 0 || (jinja[at - 1] != '\'' && jinja[at - 1] != '"')) continue;
    size_t body = at + kHeader.size();
    if (jinja.substr(body, 1) == "\n") {
      body += 1;
    } else if (jinja.substr(body, 2) == "\\n") {
      body += 2;
    } else {
      continue;
    }
    const size_t end = jinja.find("<|im_end|>", body);
    if (end == std::string_view::npos) break;
    if (auto text = unescape_literal(jinja.substr(body, end - body))) return *text;
  }
  return {};
}

void require_alternation(std::span<const ChatMessage> turns, std::string_view format) {
  for (size_t i = 0; i < turns.size(); ++i) {
    const char* want = i % 2 == 0 ? "user" : "assistant";
    if (turns[i].role != want) {
      throw_error(ErrorKind::kInvalidArgument,
                  fmt::format("the {} chat format needs alternating user/assistant messages; "
                              "message {} is '{}'", format, i + 1, turns[i].role));
    }
  }
}

void require_known_role(const ChatMessage& message) {
  if (message.role != "system" && message.role != "user" && message.role != "assistant") {
    throw_error(ErrorKind::kInvalidArgument,
                fmt::format("unknown chat role '{}' (use system, user or assistant)", message.role));
  }
}

}  // namespace

const std::vector<std::string>& ChatTemplate::names() {
  static const std::vector<std::string> all = [] {
    std::vector<std::string> v;
    for (const auto& f : kFormatNames) v.emplace_back(f.name);
    return v;
  }();
  return all;
}

ChatTemplate ChatTemplate::from_name(std::string_view name) {
  for (const auto& f : kFormatNames) {
    if (name == f.name) return ChatTemplate(f.format);
  }
  throw_error(ErrorKind::kInvalidArgument,
              fmt::format("unknown chat template '{}' (known: {})", name, fmt::join(names(), ", ")));
}

ChatTemplate ChatTemplate::from_jinja(std::string_view jinja) {
  if (contains(jinja, "<|im_start|>")) {
    ChatTemplate t(ChatFormat::kChatML);
    t.default_system_ = chatml_default_system(jinja);
    return t;
  }
  if (contains(jinja, "<|start_header_id|>") && contains(jinja, "<|eot_id|>")) return ChatTemplate(ChatFormat::kLlama3);
  if (contains(jinja, "[INST]") && contains(jinja, "<<SYS>>")) return ChatTemplate(ChatFormat::kLlama2);
  if (contains(jinja, "[INST]")) return ChatTemplate(ChatFormat::kMistral);
  // Phi-3 also says <|user|> but ends turns with <|end|>, not the EOS token.
  if (contains(jinja, "<|user|>") && contains(jinja, "<|assistant|>") && contains(jinja, "eos_token") &&
      !contains(jinja, "<|end|>")) {
    return ChatTemplate(ChatFormat::kZephyr);
  }
  throw_error(ErrorKind::kUnsupported,
              fmt::format("the model's chat template is not one pdvm recognizes; pass "
                          "--chat-template NAME ({})", fmt::join(names(), ", ")));
}

ChatTemplate ChatTemplate::for_model(const GgufFile& gguf, const Tokenizer& tokenizer, std::string_view name) {
  const GgufValue* jinja = gguf.find("tokenizer.chat_template");
  const auto token_text = [&](int32_t id) { return id >= 0 ? tokenizer.token_text(id) : std::string(); };
  auto chosen = [&] {
    if (!name.empty()) {
      ChatTemplate by_name = from_name(name);
      if (jinja && jinja->type() == GgufType::kString) {
        try {
          ChatTemplate own = from_jinja(jinja->as_string());
          if (own.format_ == by_name.format_) by_name.default_system_ = own.default_system_;
        } catch (const Error&) {
          // The model's own template is of another family: nothing to keep from it.
        }
      }
      return by_name;
    }
    if (!jinja) {
      throw_error(ErrorKind::kUnsupported,
                  fmt::format("the model has no tokenizer.chat_template; pass --chat-template NAME ({})",
                              fmt::join(names(), ", ")));
    }
    return from_jinja(jinja->as_string());
  }();
  chosen.set_special_tokens(token_text(tokenizer.bos_id()), token_text(tokenizer.eos_id()));
  return chosen;
}

std::vector<int32_t> tokenize_chat(const Tokenizer& tokenizer, std::string_view rendered) {
  std::vector<int32_t> tokens = tokenizer.encode(rendered, /*add_special=*/false, /*parse_special=*/true);
  const int32_t bos = tokenizer.bos_id();
  if (tokenizer.add_bos() && bos >= 0 && (tokens.empty() || tokens.front() != bos)) {
    tokens.insert(tokens.begin(), bos);
  }
  return tokens;
}

void ChatTemplate::set_special_tokens(std::string bos_token, std::string eos_token) {
  bos_token_ = std::move(bos_token);
  eos_token_ = std::move(eos_token);
}

std::string_view ChatTemplate::name() const {
  for (const auto& f : kFormatNames) {
    if (f.format == format_) return f.name;
  }
  return "?";
}

std::string ChatTemplate::render(std::span<const ChatMessage> messages, bool add_generation_prompt) const {
  for (const ChatMessage& m : messages) require_known_role(m);
  const bool has_system = !messages.empty() && messages.front().role == "system";
  std::string out;
  switch (format_) {
    case ChatFormat::kChatML:
      for (size_t i = 0; i < messages.size(); ++i) {
        if (i == 0 && !has_system && !default_system_.empty()) {
          out += "<|im_start|>system\n" + default_system_ + "<|im_end|>\n";
        }
        out += "<|im_start|>" + messages[i].role + "\n" + messages[i].content + "<|im_end|>\n";
      }
      if (add_generation_prompt) out += "<|im_start|>assistant\n";
      break;

    case ChatFormat::kLlama2: {
      const auto turns = has_system ? messages.subspan(1) : messages;
      require_alternation(turns, "llama2");
      for (size_t i = 0; i < turns.size(); ++i) {
        std::string content = turns[i].content;
        if (i == 0 && has_system) {
          content = "<<SYS>>\n" + messages.front().content + "\n<</SYS>>\n\n" + content;
        }
        if (turns[i].role == "user") {
          out += fmt::format("{}[INST] {} [/INST]", bos_token_, strip(content));
        } else {
          out += fmt::format(" {} {}", strip(content), eos_token_);
        }
      }
      break;  // the template has no generation prompt: a prompt ending in [/INST] is one
    }

    case ChatFormat::kLlama3:
      for (size_t i = 0; i < messages.size(); ++i) {
        if (i == 0) out += bos_token_;
        out += "<|start_header_id|>" + messages[i].role + "<|end_header_id|>\n\n" +
               strip(messages[i].content) + "<|eot_id|>";
      }
      if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
      break;

    case ChatFormat::kMistral: {
      const auto turns = has_system ? messages.subspan(1) : messages;
      require_alternation(turns, "mistral");
      out += bos_token_;
      for (size_t i = 0; i < turns.size(); ++i) {
        if (turns[i].role == "user") {
          std::string content = turns[i].content;
          if (i == 0 && has_system) content = messages.front().content + "\n\n" + content;
          out += "[INST] " + content + " [/INST]";
        } else {
          out += turns[i].content + eos_token_;
        }
      }
      break;
    }

    case ChatFormat::kZephyr:
      for (const ChatMessage& m : messages) out += fmt::format("<|{}|>\n{}{}\n", m.role, m.content, eos_token_);
      if (add_generation_prompt && !messages.empty()) out += "<|assistant|>\n";
      break;
  }
  return out;
}

}  // namespace pdvm
