// `pdvm perplexity`: perplexity of a model on a text file, optionally saving the scored tokens'
// log-probabilities or comparing with those of another run (KL divergence, top-1 agreement).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>

#include <fmt/format.h>

#include "cli_common.h"
#include "command.h"
#include "pdvm/engine.h"
#include "pdvm/error.h"
#include "pdvm/perplexity.h"
#include "pdvm/tokenizer.h"

namespace pdvm::cli {
namespace {

constexpr int64_t kDefaultPerplexityContext = 512;

struct PerplexityOptions {
  ModelFlags model;
  std::string text_file;
  int64_t max_chunks = -1;
  std::string save_logits;
  std::string kl_base;
};

// "chunk 3/10, 1.2 s per chunk, 8 s left" on the terminal, overwritten in place.
void show_progress(int64_t done, int64_t total, double elapsed) {
  const double per_chunk = elapsed / static_cast<double>(done);
  std::fprintf(stderr, "\rchunk %lld/%lld, %.2f s per chunk, %.0f s left   ", static_cast<long long>(done),
               static_cast<long long>(total), per_chunk, per_chunk * static_cast<double>(total - done));
  if (done == total) std::fputc('\n', stderr);
  std::fflush(stderr);
}

int run(const PerplexityOptions& opt) {
  const int64_t n_ctx = opt.model.n_ctx > 0 ? opt.model.n_ctx : kDefaultPerplexityContext;
  const std::string text = read_text_file(opt.text_file, "text file");
  const auto model_path = resolve_model_path(opt.model.model);
  std::optional<LogProbReader> base;
  if (!opt.kl_base.empty()) {
    base.emplace(opt.kl_base);
    if (base->n_ctx() != static_cast<uint64_t>(n_ctx)) {
      throw_error(ErrorKind::kInvalidArgument, fmt::format("{} was made with --ctx {}, this run uses --ctx {}",
                                                           opt.kl_base, base->n_ctx(), n_ctx));
    }
  }

  const auto load_start = std::chrono::steady_clock::now();
  const GgufFile gguf = GgufFile::open(model_path);
  const Tokenizer tokenizer = Tokenizer::from_gguf(gguf);
  const std::vector<int32_t> tokens = tokenizer.encode(text, /*add_special=*/true, /*parse_special=*/false);
  const int32_t bos = tokenizer.add_bos() ? tokenizer.bos_id() : -1;
  const PerplexityWindows windows = plan_windows(static_cast<int64_t>(tokens.size()), n_ctx, opt.max_chunks, bos);
  SessionOptions session_options;
  session_options.model_path = model_path;
  session_options.backend = opt.model.backend.empty() ? default_backend_name() : opt.model.backend;
  session_options.n_ctx = n_ctx;
  apply_backend_flags(opt.model, session_options);
  Session session(session_options);
  if (base && base->n_vocab() != static_cast<uint64_t>(session.n_vocab())) {
    throw_error(ErrorKind::kInvalidArgument, fmt::format("{} has a vocabulary of {} tokens, this model {}",
                                                         opt.kl_base, base->n_vocab(), session.n_vocab()));
  }
  std::optional<LogProbWriter> writer;
  if (!opt.save_logits.empty()) {
    writer.emplace(opt.save_logits, static_cast<uint32_t>(session.n_vocab()), static_cast<uint32_t>(n_ctx));
  }
  print_load_time(seconds_since(load_start));
  std::fprintf(stderr, "%zu tokens, %lld chunks of %lld, scoring %lld tokens each\n", tokens.size(),
               static_cast<long long>(windows.n_chunks), static_cast<long long>(n_ctx),
               static_cast<long long>(windows.scored_per_chunk()));

  const bool progress = isatty(STDERR_FILENO);
  const auto n_vocab = static_cast<size_t>(session.n_vocab());
  MeanEstimate nll, base_nll, kl;
  int64_t same_top1 = 0;
  QuantizedLogProbs current_row, base_row;
  InterruptScope interrupt;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t chunk = 0; chunk < windows.n_chunks && !InterruptScope::flag(); ++chunk) {
    evaluate_window(session, tokens, windows, chunk, [&](std::span<const float> rows, std::span<const int32_t> targets) {
      for (size_t j = 0; j < targets.size(); ++j) {
        const auto row = rows.subspan(j * n_vocab, n_vocab);
        nll.add(-log_softmax_at(row, targets[j]));
        if (!writer && !base) continue;
        quantize_logprobs(row, targets[j], current_row);
        if (writer) writer->add(current_row);
        if (base) {
          base->read(base_row);
          const TokenDivergence d = compare_logprobs(base_row, current_row);
          kl.add(d.kl);
          same_top1 += d.same_top1;
          base_nll.add(-base_row.target_logprob);
        }
      }
    });
    std::printf("[%lld]%.4f%s", static_cast<long long>(chunk + 1), perplexity(nll),
                chunk + 1 < windows.n_chunks ? "," : "\n");
    std::fflush(stdout);
    if (progress) show_progress(chunk + 1, windows.n_chunks, seconds_since(start));
  }
  if (InterruptScope::flag()) std::printf("\n");
  if (writer) writer->close();
  std::printf("Final estimate: PPL = %.4f +/- %.5f (%lld tokens)\n", perplexity(nll), perplexity_error(nll),
              static_cast<long long>(nll.count()));
  if (base) {
    const double agreement = static_cast<double>(same_top1) / static_cast<double>(kl.count());
    const double agreement_error = std::sqrt(agreement * (1 - agreement) / static_cast<double>(kl.count()));
    std::printf("Base PPL = %.4f +/- %.5f\n", perplexity(base_nll), perplexity_error(base_nll));
    std::printf("KL divergence (base || this) = %.6g +/- %.3g nats per token\n", kl.mean(), kl.standard_error());
    std::printf("Top-1 agreement = %.3f +/- %.3f %%\n", 100 * agreement, 100 * agreement_error);
  }
  return InterruptScope::flag() ? kInterruptedExitCode : 0;
}

PDVM_REGISTER_COMMAND("perplexity", "perplexity of a model on a text, and KL divergence between two runs",
                      [](CLI::App& app) {
  auto opt = std::make_shared<PerplexityOptions>();
  add_model_flags(app, opt->model);
  app.add_option("-f,--file", opt->text_file, "text file to score (scripts/bible-text.sh makes one)")->required();
  app.add_option("--chunks", opt->max_chunks, "score at most this many windows; -1 = all")->capture_default_str();
  app.add_option("--save-logits", opt->save_logits,
                 "write the scored tokens' log-probabilities to FILE (16 + 2 x vocabulary bytes a token)");
  app.add_option("--kl-divergence", opt->kl_base,
                 "compare with a --save-logits FILE of another run of the same text and --ctx");
  app.footer(fmt::format("--ctx defaults to {} here. Each window is scored on its second half only.",
                         kDefaultPerplexityContext));
  return [opt] { return run(*opt); };
});

}  // namespace
}  // namespace pdvm::cli
