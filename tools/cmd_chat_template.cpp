// `pdvm chat-template`: shows the prompt a conversation renders to, to check what the model
// will see (and to test the renderer against the models' Jinja templates).
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

#include <nlohmann/json.hpp>

#include "command.h"
#include "pdvm/chat_template.h"
#include "pdvm/error.h"
#include "pdvm/gguf.h"
#include "pdvm/tokenizer.h"

namespace pdvm::cli {
namespace {

std::vector<ChatMessage> read_messages(std::istream& in) {
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  nlohmann::json doc = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!doc.is_array()) {
    throw_error(ErrorKind::kInvalidArgument,
                "stdin must hold a JSON array of {\"role\": ..., \"content\": ...} messages");
  }
  std::vector<ChatMessage> messages;
  for (const auto& m : doc) {
    if (!m.is_object() || !m.contains("role") || !m.contains("content") || !m["role"].is_string() ||
        !m["content"].is_string()) {
      throw_error(ErrorKind::kInvalidArgument,
                  "message " + std::to_string(messages.size() + 1) + " needs string fields role and content");
    }
    messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  return messages;
}

struct Options {
  std::string model;
  std::string name;
  std::string jinja_file;
  std::string bos = "<s>";
  std::string eos = "</s>";
  bool no_generation_prompt = false;
};

int run(const Options& opt) {
  if (!opt.model.empty()) {
    if (!opt.jinja_file.empty()) throw_error(ErrorKind::kInvalidArgument, "give -m or --template-file, not both");
    const GgufFile gguf = GgufFile::open(opt.model);
    const Tokenizer tokenizer = Tokenizer::from_gguf(gguf);
    const ChatTemplate chat = ChatTemplate::for_model(gguf, tokenizer, opt.name);
    std::cout << chat.render(read_messages(std::cin), !opt.no_generation_prompt) << std::flush;
    return 0;
  }
  if (opt.name.empty() == opt.jinja_file.empty()) {
    throw_error(ErrorKind::kInvalidArgument, "give -m MODEL, --chat-template NAME or --template-file FILE");
  }
  ChatTemplate chat = [&] {
    if (!opt.name.empty()) return ChatTemplate::from_name(opt.name);
    std::ifstream in(opt.jinja_file, std::ios::binary);
    if (!in) throw_error(ErrorKind::kIo, "cannot open " + opt.jinja_file);
    std::stringstream text;
    text << in.rdbuf();
    return ChatTemplate::from_jinja(text.str());
  }();
  chat.set_special_tokens(opt.bos, opt.eos);
  std::cout << chat.render(read_messages(std::cin), !opt.no_generation_prompt) << std::flush;
  return 0;
}

PDVM_REGISTER_COMMAND("chat-template", "render a JSON conversation read from stdin as a chat prompt",
                      [](CLI::App& app) {
                        auto opt = std::make_shared<Options>();
                        app.add_option("-m,--model", opt->model, "use this GGUF model's template and BOS/EOS tokens");
                        app.add_option("--chat-template", opt->name, "format name: chatml, llama2, llama3, mistral, zephyr");
                        app.add_option("--template-file", opt->jinja_file, "a model's Jinja chat template, to recognize");
                        app.add_option("--bos", opt->bos, "text of the BOS token (without -m)")->capture_default_str();
                        app.add_option("--eos", opt->eos, "text of the EOS token (without -m)")->capture_default_str();
                        app.add_flag("--no-generation-prompt", opt->no_generation_prompt,
                                     "do not open an assistant turn at the end");
                        return [opt] { return run(*opt); };
                      });

}  // namespace
}  // namespace pdvm::cli
