// `pdvm logits`: runs a token sequence through a model and saves the logits as .npy, and
// optionally continues greedily (ids on one line, then the text with --print-tokens). Used by
// the differential tests against the numpy reference.
#include <cstdio>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "cli_common.h"
#include "command.h"
#include "npy_writer.h"
#include "pdvm/backend_registry.h"
#include "pdvm/engine.h"
#include "pdvm/error.h"
#include "pdvm/tokenizer.h"

namespace pdvm::cli {
namespace {

std::vector<int32_t> parse_token_list(const std::string& text) {
  std::vector<int32_t> tokens;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t end = std::min(text.find(',', start), text.size());
    const std::string item = text.substr(start, end - start);
    size_t used = 0;
    long long value = -1;
    try {
      value = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || value < 0 || value > INT32_MAX) {
      throw_error(ErrorKind::kInvalidArgument,
                  "--tokens: '" + item + "' is not a token id (expected e.g. 1,2,3)");
    }
    tokens.push_back(static_cast<int32_t>(value));
    start = end + 1;
  }
  return tokens;
}

struct LogitsArgs {
  std::string model;
  std::string tokens;
  std::string prompt;
  bool print_tokens = false;
  std::string out;
  std::string backend = "cpu";
  std::string greedy_out;
  std::string gpu_mode = "auto";
  std::string fused_prompts = "batched";
  int greedy = 0;
  int64_t n_ctx = 0;
  int threads = 0;
};

int run_logits(const LogitsArgs& args) {
  if (args.tokens.empty() == args.prompt.empty()) {
    throw_error(ErrorKind::kInvalidArgument, "give exactly one of --tokens and --prompt");
  }
  SessionOptions options;
  options.model_path = args.model;
  options.backend = args.backend;
  options.backend_options.n_threads = args.threads;
  options.n_ctx = args.n_ctx;
  options.gpu_mode = args.gpu_mode;
  options.fused_batched_prompts = args.fused_prompts == "batched";
  Session session(options);
  const int64_t vocab = session.n_vocab();
  std::optional<Tokenizer> tokenizer;
  if (!args.prompt.empty() || args.print_tokens) tokenizer = Tokenizer::from_gguf(session.gguf());
  const std::vector<int32_t> prompt = args.prompt.empty()
                                          ? parse_token_list(args.tokens)
                                          : tokenizer->encode(args.prompt, true, true);
  if (prompt.empty()) throw_error(ErrorKind::kInvalidArgument, "--prompt: the text gives no tokens");

  if (!args.out.empty()) {
    const auto logits = session.prefill_all(prompt);
    write_npy(args.out, logits, {static_cast<int64_t>(prompt.size()), vocab});
  } else {
    session.eval(prompt);
  }
  if (args.greedy > 0) {
    std::vector<int32_t> generated;
    std::vector<float> step_logits;
    for (int i = 0; i < args.greedy; ++i) {
      if (!args.greedy_out.empty()) {
        const auto logits = session.last_logits();
        step_logits.insert(step_logits.end(), logits.begin(), logits.end());
      }
      generated.push_back(session.last_argmax());
      if (i + 1 < args.greedy) session.eval({&generated.back(), 1});
    }
    std::string line;
    for (int32_t id : generated) line += (line.empty() ? "" : ",") + std::to_string(id);
    std::printf("%s\n", line.c_str());
    if (args.print_tokens) std::printf("%s\n", tokenizer->decode(generated).c_str());
    if (!args.greedy_out.empty()) {
      write_npy(args.greedy_out, step_logits, {static_cast<int64_t>(args.greedy), vocab});
    }
  }
  return 0;
}

std::string backend_names() {
  std::string names;
  for (const auto& info : registered_backends()) names += (names.empty() ? "" : ", ") + info.name;
  return names;
}

PDVM_REGISTER_COMMAND("logits", "Run tokens through a model and save the logits as .npy",
                      [](CLI::App& app) -> std::function<int()> {
                        auto args = std::make_shared<LogitsArgs>();
                        app.add_option("-m,--model", args->model, "GGUF model file")->required();
                        app.add_option("--tokens", args->tokens, "Prompt token ids, e.g. 1,2,3");
                        app.add_option("-p,--prompt", args->prompt,
                                       "Prompt text, tokenized with the model's tokenizer");
                        app.add_flag("--print-tokens", args->print_tokens,
                                     "Also print the greedy continuation as text");
                        app.add_option("--out", args->out,
                                       "Write the prompt's logits, shape (n_tokens, n_vocab)");
                        app.add_option("--backend", args->backend, "Backend: " + backend_names());
                        add_gpu_mode_flags(app, args->gpu_mode, args->fused_prompts);
                        app.add_option("--greedy", args->greedy,
                                       "Continue greedily for N tokens and print their ids")
                            ->check(integer_in(0, std::numeric_limits<int32_t>::max()));
                        app.add_option("--greedy-out", args->greedy_out,
                                       "Write the logits each greedy token was chosen from, (N, n_vocab)");
                        app.add_option("-c,--ctx", args->n_ctx, "Context size (0: model default)")
                            ->check(integer_in(0, std::numeric_limits<int64_t>::max()));
                        app.add_option("-t,--threads", args->threads, "Threads (0: all cores)")
                            ->check(integer_in(0, kMaxThreads));
                        return [args] { return run_logits(*args); };
                      });

}  // namespace
}  // namespace pdvm::cli
