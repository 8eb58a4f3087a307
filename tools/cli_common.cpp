#include "cli_common.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <limits>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <cstdio>
#include <random>
#include <system_error>
#include <vector>

#include <fmt/format.h>

#include "pdvm/backend_registry.h"
#include "pdvm/error.h"
#include "progress_bar.h"

namespace pdvm::cli {

namespace fs = std::filesystem;

std::filesystem::path resolve_model_path(const std::string& given) {
  if (!given.empty()) {
    if (!fs::exists(given)) throw_error(ErrorKind::kIo, fmt::format("model file {} does not exist", given));
    return given;
  }
  std::vector<std::string> candidates;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) candidates.push_back((exe.parent_path().parent_path() / "models" / kDefaultModelName).string());
  candidates.push_back((fs::path("models") / kDefaultModelName).string());
  for (const std::string& p : candidates) {
    if (fs::exists(p)) return p;
  }
  throw_error(ErrorKind::kIo, fmt::format("no -m MODEL given and the default model {} is not in {}: "
                                          "run scripts/setup.sh to fetch it",
                                          kDefaultModelName, fmt::join(candidates, " or ")));
}

std::string read_text_file(const std::string& path, std::string_view what) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) throw_error(ErrorKind::kIo, fmt::format("{} {} is a directory", what, path));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_error(ErrorKind::kIo, fmt::format("cannot open {} {}: {}", what, path, std::strerror(errno)));
  std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (in.bad()) throw_error(ErrorKind::kIo, fmt::format("cannot read {} {}: {}", what, path, std::strerror(errno)));
  return text;
}

TensorType tensor_type_flag(std::string_view flag, const std::string& text) {
  const auto type = type_from_name(text);
  if (!type) throw_error(ErrorKind::kInvalidArgument, std::string(flag) + ": unknown tensor type '" + text + "'");
  return *type;
}

std::string default_backend_name() {
  for (const BackendInfo& b : registered_backends()) {
    if (b.name == "auto") return "auto";
  }
  return "cpu";
}

void add_model_flags(CLI::App& app, ModelFlags& flags) {
  app.add_option("-m,--model", flags.model,
                 fmt::format("GGUF model file (default: models/{})", kDefaultModelName));
  app.add_option("-c,--ctx", flags.n_ctx, "context size in tokens (default: the model's, at most 4096)")
      ->check(integer_in(0, std::numeric_limits<int64_t>::max()));
  std::vector<std::string> names;
  for (const BackendInfo& b : registered_backends()) names.push_back(b.name);
  app.add_option("--backend", flags.backend,
                 fmt::format("compute backend: {} (default: {})", fmt::join(names, ", "), default_backend_name()));
  app.add_option("-t,--threads", flags.threads, "CPU threads (default: all cores)")->check(integer_in(0, kMaxThreads));
  app.add_option("--kv-type", flags.kv_type, "KV cache type: f32, f16 or q8_0 (default: the backend's, f16 on cpu)");
  add_gpu_mode_flags(app, flags.gpu_mode, flags.fused_prompts);
  add_tensor_parallel_flags(app, flags.tensor_parallel, flags.communicator);
}

void add_gpu_mode_flags(CLI::App& app, std::string& gpu_mode, std::string& fused_prompts) {
  app.add_option("--gpu-mode", gpu_mode, "auto: on cuda the fastest fused mode that supports the model (token, else layer, else unfused; a notice says why); unfused; or PDVM fused decode: layer or token")
      ->check(CLI::IsMember({"auto", "unfused", "layer", "token"}))
      ->capture_default_str();
  app.add_option("--fused-prompts", fused_prompts, "with a fused --gpu-mode: batched (prompts through the backend's batched prefill, which loads a second, unfused copy of the weights when it fits) or stepwise (one copy; prompts one fused step per token)")
      ->check(CLI::IsMember({"batched", "stepwise"}))
      ->capture_default_str();
}

void add_tensor_parallel_flags(CLI::App& app, int& tensor_parallel, std::string& communicator) {
  app.add_option("--tp", tensor_parallel,
                 "tensor parallelism: split the model over N ranks (GPUs device..device+N-1, or CPU backends)")
      ->check(integer_in(1, 1024))
      ->capture_default_str();
  app.add_option("--tp-comm", communicator,
                 "how ranks all-reduce: auto (nccl on cuda, else in-process), nccl or in-process")
      ->check(CLI::IsMember({"auto", "nccl", "in-process"}))
      ->capture_default_str();
}

void apply_backend_flags(const ModelFlags& flags, SessionOptions& options) {
  options.backend_options.n_threads = flags.threads;
  options.gpu_mode = flags.gpu_mode;
  options.fused_batched_prompts = flags.fused_prompts == "batched";
  options.tensor_parallel = flags.tensor_parallel;
  options.communicator = flags.communicator;
  auto bar = std::make_shared<ProgressBar>("loading");
  options.load_progress = [bar](uint64_t done, uint64_t total) { bar->update(done, total); };
  if (flags.kv_type.empty()) return;
  const auto type = type_from_name(flags.kv_type);
  if (!type || (*type != TensorType::kF32 && *type != TensorType::kF16 && *type != TensorType::kQ8_0)) {
    throw_error(ErrorKind::kInvalidArgument, "--kv-type must be f32, f16 or q8_0, not '" + flags.kv_type + "'");
  }
  options.kv_type = *type;
}

void add_sampling_flags(CLI::App& app, SamplingFlags& flags) {
  SamplingParams& p = flags.params;
  app.add_option("--temp", p.temperature, "temperature; 0 = greedy")->capture_default_str();
  constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
  app.add_option("--top-k", p.top_k, "keep the K most likely tokens; 0 = off")
      ->capture_default_str()
      ->check(integer_in(0, kInt32Max));
  app.add_option("--top-p", p.top_p, "keep the smallest set of tokens with this much probability; 1 = off")
      ->capture_default_str();
  app.add_option("--min-p", p.min_p, "drop tokens less likely than P times the best one; 0 = off")
      ->capture_default_str();
  app.add_option("--repeat-penalty", p.repeat_penalty, "penalty for recently seen tokens; 1 = off")
      ->capture_default_str();
  app.add_option("--repeat-last-n", p.repeat_last_n, "how many recent tokens the penalty looks at; -1 = all")
      ->capture_default_str()
      ->check(integer_in(-1, kInt32Max));
  app.add_option("--seed", flags.seed, "random seed (default: a random one, printed at the end)");
}

SamplingParams SamplingFlags::resolve() const {
  SamplingParams p = params;
  if (seed) {
    p.seed = *seed;
  } else {
    std::random_device device;
    p.seed = (static_cast<uint64_t>(device()) << 32) | device();
  }
  p.validate();
  return p;
}

namespace {

struct sigaction g_previous_action;

void on_interrupt(int) {
  if (InterruptScope::flag().exchange(true)) {
    // Second Ctrl-C before the first was handled: give up the clean stop.
    sigaction(SIGINT, &g_previous_action, nullptr);
    raise(SIGINT);
  }
}

}  // namespace

std::atomic<bool>& InterruptScope::flag() {
  static std::atomic<bool> interrupted{false};
  return interrupted;
}

InterruptScope::InterruptScope() {
  flag() = false;
  struct sigaction action {};
  action.sa_handler = on_interrupt;
  sigemptyset(&action.sa_mask);
  action.sa_flags = 0;  // no SA_RESTART: a blocking read of the chat prompt returns
  sigaction(SIGINT, &action, &g_previous_action);
}

InterruptScope::~InterruptScope() { sigaction(SIGINT, &g_previous_action, nullptr); }

namespace {

template <typename T>
CLI::Validator base10_integer(T lo, T hi) {
  return CLI::Validator(
      [lo, hi](std::string& text) -> std::string {
        T value{};
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
        if (text.empty() || ec != std::errc() || end != text.data() + text.size() || value < lo || value > hi) {
          return fmt::format("'{}' is not an integer from {} to {}", text, lo, hi);
        }
        text = std::to_string(value);
        return {};
      },
      "");
}

}  // namespace

CLI::Validator integer_in(int64_t lo, int64_t hi) { return base10_integer<int64_t>(lo, hi); }

CLI::Validator unsigned_integer() { return base10_integer<uint64_t>(0, std::numeric_limits<uint64_t>::max()); }

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void print_load_time(double seconds) { std::fprintf(stderr, "load:       %.1f ms\n", seconds * 1e3); }

void print_generation_stats(const GenerationStats& stats) {
  std::fprintf(stderr, "prompt:     %lld tokens in %.1f ms (%.1f tokens/s)",
               static_cast<long long>(stats.prompt_tokens), stats.prompt_seconds * 1e3,
               stats.prompt_tokens_per_second());
  if (stats.reused_tokens > 0) std::fprintf(stderr, ", %lld reused", static_cast<long long>(stats.reused_tokens));
  std::fprintf(stderr, "\ngeneration: %lld tokens in %.1f ms (%.1f tokens/s), stopped: %s\n",
               static_cast<long long>(stats.generated_tokens), stats.generation_seconds * 1e3,
               stats.generation_tokens_per_second(), stop_reason_name(stats.stop_reason));
}

}  // namespace pdvm::cli
