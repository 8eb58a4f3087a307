// `pdvm run`: generate text from a prompt, streamed to stdout; timings go to stderr.
#include <chrono>
#include <limits>
#include <cstdio>
#include <iostream>
#include <iterator>
#include <memory>

#include <fmt/format.h>

#include "cli_common.h"
#include "command.h"
#include "pdvm/chat_template.h"
#include "pdvm/engine.h"
#include "pdvm/error.h"
#include "pdvm/gguf.h"
#include "pdvm/tokenizer.h"

namespace pdvm::cli {
namespace {

struct RunOptions {
  ModelFlags model;
  SamplingFlags sampling;
  std::string prompt;
  std::string prompt_file;
  int64_t n_predict = 256;
  std::vector<std::string> stops;
  bool chat = false;
  std::string system;
  std::string chat_template;
};

std::vector<int32_t> prompt_tokens(const RunOptions& opt, const GgufFile& gguf, const Tokenizer& tokenizer) {
  if (!opt.chat) return tokenizer.encode(opt.prompt, /*add_special=*/true, /*parse_special=*/true);
  const ChatTemplate chat = ChatTemplate::for_model(gguf, tokenizer, opt.chat_template);
  std::vector<ChatMessage> messages;
  if (!opt.system.empty()) messages.push_back({"system", opt.system});
  messages.push_back({"user", opt.prompt});
  return tokenize_chat(tokenizer, chat.render(messages, /*add_generation_prompt=*/true));
}

std::string read_prompt_file(const std::string& path) {
  if (path != "-") return read_text_file(path, "prompt file");
  return {std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>()};
}

int run(RunOptions opt) {
  if (opt.prompt.empty() == opt.prompt_file.empty()) {
    throw_error(ErrorKind::kInvalidArgument, "give the prompt with -p TEXT or -f FILE (one of them)");
  }
  if (!opt.prompt_file.empty()) opt.prompt = read_prompt_file(opt.prompt_file);
  if (opt.n_predict < -1) throw_error(ErrorKind::kInvalidArgument, "-n must be >= -1 (-1 = no limit)");
  opt.chat = opt.chat || !opt.system.empty() || !opt.chat_template.empty();
  const SamplingParams sampling = opt.sampling.resolve();
  const auto model_path = resolve_model_path(opt.model.model);

  const auto load_start = std::chrono::steady_clock::now();
  // The tokenizer first, so that a prompt too long for --ctx fails before the weights load.
  const GgufFile gguf = GgufFile::open(model_path);
  const Tokenizer tokenizer = Tokenizer::from_gguf(gguf);
  const std::vector<int32_t> tokens = prompt_tokens(opt, gguf, tokenizer);
  if (opt.model.n_ctx > 0 && static_cast<int64_t>(tokens.size()) > opt.model.n_ctx) {
    throw_error(ErrorKind::kOutOfRange, fmt::format("the prompt is {} tokens but --ctx is {}",
                                                    tokens.size(), opt.model.n_ctx));
  }
  SessionOptions session_options;
  session_options.model_path = model_path;
  session_options.backend = opt.model.backend.empty() ? default_backend_name() : opt.model.backend;
  session_options.n_ctx = opt.model.n_ctx;
  apply_backend_flags(opt.model, session_options);
  Session session(session_options);
  Generator generator(session, tokenizer);
  print_load_time(seconds_since(load_start));

  GenerationOptions generation;
  generation.n_predict = opt.n_predict;
  generation.stop_strings = opt.stops;
  generation.sampling = sampling;
  InterruptScope interrupt;
  bool ends_with_newline = true;
  const GenerationStats stats = generator.generate(
      tokens, generation,
      [&](std::string_view text) {
        std::fwrite(text.data(), 1, text.size(), stdout);
        std::fflush(stdout);
        ends_with_newline = text.back() == '\n';
      },
      &InterruptScope::flag());
  if (!ends_with_newline) std::fputc('\n', stdout);
  std::fflush(stdout);
  print_generation_stats(stats);
  if (sampling.temperature > 0) std::fprintf(stderr, "sampling:   %s\n", sampling.describe().c_str());
  return stats.stop_reason == StopReason::kInterrupted ? kInterruptedExitCode : 0;
}

PDVM_REGISTER_COMMAND("run", "generate text from a prompt", [](CLI::App& app) {
  auto opt = std::make_shared<RunOptions>();
  add_model_flags(app, opt->model);
  app.add_option("-p,--prompt", opt->prompt, "the prompt");
  app.add_option("-f,--file", opt->prompt_file, "read the prompt from a file (- for stdin)");
  app.add_option("-n,--n-predict", opt->n_predict, "tokens to generate; -1 = until the model stops")
      ->capture_default_str()
      ->check(integer_in(-1, std::numeric_limits<int64_t>::max()));
  app.add_option("--stop", opt->stops, "stop before this text (repeatable)");
  app.add_flag("--chat", opt->chat, "wrap the prompt in the model's chat template");
  app.add_option("--system", opt->system, "system message (implies --chat)");
  app.add_option("--chat-template", opt->chat_template,
                 "chat format instead of the model's: chatml, llama2, llama3, mistral, zephyr (implies --chat)");
  add_sampling_flags(app, opt->sampling);
  return [opt] { return run(*opt); };
});

}  // namespace
}  // namespace pdvm::cli
