// `pdvm chat`: multi-turn chat in the terminal (or through a pipe). Each turn renders the whole
// conversation, but only the tokens after the prefix already in the KV cache are prefilled.
#include <unistd.h>

#include <chrono>
#include <limits>
#include <cstdio>
#include <iostream>
#include <memory>

#include <fmt/format.h>

#include "cli_common.h"
#include "command.h"
#include "pdvm/chat_template.h"
#include "pdvm/engine.h"
#include "pdvm/error.h"
#include "pdvm/tokenizer.h"

namespace pdvm::cli {
namespace {

struct ChatOptions {
  ModelFlags model;
  SamplingFlags sampling;
  std::string system;
  std::string chat_template;
  int64_t n_predict = -1;
  bool show_stats = false;
};

constexpr const char* kHelp = "commands: /reset forgets the conversation, /exit (or end of input) quits\n";

int chat(const ChatOptions& opt) {
  if (opt.n_predict < -1) throw_error(ErrorKind::kInvalidArgument, "-n must be >= -1 (-1 = no limit)");
  const bool interactive = isatty(STDIN_FILENO);
  SessionOptions session_options;
  session_options.model_path = resolve_model_path(opt.model.model);
  session_options.backend = opt.model.backend.empty() ? default_backend_name() : opt.model.backend;
  session_options.n_ctx = opt.model.n_ctx;
  apply_backend_flags(opt.model, session_options);

  const auto load_start = std::chrono::steady_clock::now();
  Session session(session_options);
  const Tokenizer tokenizer = Tokenizer::from_gguf(session.gguf());
  const ChatTemplate chat_template = ChatTemplate::for_model(session.gguf(), tokenizer, opt.chat_template);
  Generator generator(session, tokenizer);
  const double load_seconds = seconds_since(load_start);
  if (interactive) std::fprintf(stderr, "%s", kHelp);

  GenerationOptions generation;
  generation.n_predict = opt.n_predict;
  generation.sampling = opt.sampling.resolve();
  std::vector<ChatMessage> conversation;
  if (!opt.system.empty()) conversation.push_back({"system", opt.system});
  const size_t n_fixed = conversation.size();

  InterruptScope interrupt;
  GenerationStats totals;
  std::string line;
  while (true) {
    if (interactive) std::fputs("> ", stderr);
    if (!std::getline(std::cin, line)) break;
    if (line == "/exit" || line == "/quit") break;
    if (line == "/reset") {
      conversation.resize(n_fixed);
      generator.reset();
      continue;
    }
    if (line == "/help") {
      std::fputs(kHelp, stderr);
      continue;
    }
    if (line.empty()) continue;

    conversation.push_back({"user", line});
    const std::vector<int32_t> tokens =
        tokenize_chat(tokenizer, chat_template.render(conversation, /*add_generation_prompt=*/true));
    if (static_cast<int64_t>(tokens.size()) >= session.n_ctx()) {
      conversation.pop_back();
      std::fprintf(stderr, "pdvm: error: the conversation would be %zu tokens, the context holds %lld: "
                   "/reset to start over\n", tokens.size(), static_cast<long long>(session.n_ctx()));
      continue;
    }
    const GenerationStats stats = generator.generate(
        tokens, generation,
        [](std::string_view text) {
          std::fwrite(text.data(), 1, text.size(), stdout);
          std::fflush(stdout);
        },
        &InterruptScope::flag());
    std::fputc('\n', stdout);
    std::fflush(stdout);
    conversation.push_back({"assistant", stats.text});
    if (opt.show_stats) print_generation_stats(stats);
    totals.prompt_tokens += stats.prompt_tokens;
    totals.prompt_seconds += stats.prompt_seconds;
    totals.generated_tokens += stats.generated_tokens;
    totals.generation_seconds += stats.generation_seconds;
    InterruptScope::flag() = false;  // Ctrl-C ends the reply, not the chat
  }
  const bool interrupted = InterruptScope::flag().load();
  if (interactive || opt.show_stats) {
    print_load_time(load_seconds);
    std::fprintf(stderr, "session:    %lld prompt tokens (%.1f tokens/s), %lld generated (%.1f tokens/s)\n",
                 static_cast<long long>(totals.prompt_tokens), totals.prompt_tokens_per_second(),
                 static_cast<long long>(totals.generated_tokens), totals.generation_tokens_per_second());
  }
  return interrupted ? kInterruptedExitCode : 0;
}

PDVM_REGISTER_COMMAND("chat", "chat with the model, one line of input per turn", [](CLI::App& app) {
  auto opt = std::make_shared<ChatOptions>();
  add_model_flags(app, opt->model);
  app.add_option("--system", opt->system, "system message");
  app.add_option("--chat-template", opt->chat_template,
                 "chat format instead of the model's: chatml, llama2, llama3, mistral, zephyr");
  app.add_option("-n,--n-predict", opt->n_predict, "most tokens per reply; -1 = until the model stops")
      ->capture_default_str()
      ->check(integer_in(-1, std::numeric_limits<int64_t>::max()));
  app.add_flag("--stats", opt->show_stats, "print timings after every reply");
  add_sampling_flags(app, opt->sampling);
  return [opt] { return chat(*opt); };
});

}  // namespace
}  // namespace pdvm::cli
