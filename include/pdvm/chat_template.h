// Chat prompt formats. Instead of a Jinja interpreter, pdvm recognizes the handful of template
// families that LLaMA-family instruct models use and renders them natively, producing exactly
// what the model's own Jinja template produces (Hugging Face settings: trim_blocks, lstrip_blocks).
//   chatml   <|im_start|>role\n...<|im_end|>\n   (SmolLM2, Qwen2, OpenHermes; keeps the template's
//            default system prompt, added when the first message is not a system one)
//   llama2   <s>[INST] <<SYS>>\n...\n<</SYS>>\n\n... [/INST] ... </s>
//   llama3   <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>
//   mistral  <s>[INST] ... [/INST]...</s>  (no system role in the template: pdvm prepends a
//            system message to the first user message, separated by a blank line)
//   zephyr   <|role|>\n...</s>\n
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace pdvm {

class GgufFile;
class Tokenizer;

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

enum class ChatFormat { kChatML, kLlama2, kLlama3, kMistral, kZephyr };

class ChatTemplate {
 public:
  // By family name (chatml, llama2, llama3, mistral, zephyr); Error(kInvalidArgument) otherwise.
  static ChatTemplate from_name(std::string_view name);
  // Recognizes a model's tokenizer.chat_template text by its distinctive markers;
  // Error(kUnsupported) suggesting --chat-template NAME when it is none of the families.
  static ChatTemplate from_jinja(std::string_view jinja);
  static const std::vector<std::string>& names();
  // The model's format: `name` if given (keeping the model's default system prompt when its own
  // template is of that family), else recognized from tokenizer.chat_template. BOS/EOS texts
  // come from the tokenizer. Error(kUnsupported) naming --chat-template when there is no
  // template or an unknown one.
  static ChatTemplate for_model(const GgufFile& gguf, const Tokenizer& tokenizer, std::string_view name = {});

  // The text of the tokenizer's BOS/EOS tokens, which some templates spell out.
  void set_special_tokens(std::string bos_token, std::string eos_token);
  // The system prompt the template adds when the conversation has none (may be empty).
  void set_default_system_prompt(std::string prompt) { default_system_ = std::move(prompt); }
  const std::string& default_system_prompt() const { return default_system_; }

  ChatFormat format() const { return format_; }
  std::string_view name() const;

  // Renders the conversation; add_generation_prompt appends the assistant turn's header.
  // Error(kInvalidArgument) for conversations the template rejects (llama2/mistral require
  // user/assistant alternation; roles other than system/user/assistant).
  std::string render(std::span<const ChatMessage> messages, bool add_generation_prompt) const;

 private:
  explicit ChatTemplate(ChatFormat format) : format_(format) {}

  ChatFormat format_;
  std::string bos_token_;
  std::string eos_token_;
  std::string default_system_;
};

// Tokens of a rendered conversation: special tokens written in the text are parsed, and the
// BOS token is prepended when the model wants one and the template did not write it.
std::vector<int32_t> tokenize_chat(const Tokenizer& tokenizer, std::string_view rendered);

}  // namespace pdvm
