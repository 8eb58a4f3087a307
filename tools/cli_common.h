// Pieces shared by the generation commands (run, chat, perplexity): the default model, the
// sampling flags, Ctrl-C handling and the timing report.
#pragma once

#include <CLI/CLI.hpp>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "pdvm/engine.h"
#include "pdvm/generator.h"
#include "pdvm/sampling.h"

namespace pdvm::cli {

inline constexpr const char* kDefaultModelName = "SmolLM2-135M-Instruct.Q4_1.gguf";

// `given` if not empty (it must exist), else the default model in ../models next to the
// executable or in ./models. Error(kIo) telling to run scripts/setup.sh when absent.
std::filesystem::path resolve_model_path(const std::string& given);

// The whole file; Error(kIo) naming `what` and the path when it is missing, a directory or
// unreadable.
std::string read_text_file(const std::string& path, std::string_view what);

// The tensor type `text` names, for flag `flag`; Error(kInvalidArgument) "FLAG: unknown tensor
// type 'TEXT'" when it names none.
TensorType tensor_type_flag(std::string_view flag, const std::string& text);

// "auto" (the GPU when usable, else the CPU) when registered, else "cpu".
std::string default_backend_name();

// Adds -m/--model, --ctx, --backend, -t/--threads, --kv-type, --gpu-mode, --fused-prompts, --tp and --tp-comm.
struct ModelFlags {
  std::string model;
  int64_t n_ctx = 0;
  std::string backend;
  int threads = 0;      // CPU backends; 0 = all cores
  std::string kv_type;  // empty: the backend's default (f16 on the fast backends)
  std::string gpu_mode = "auto";
  std::string fused_prompts = "batched";
  int tensor_parallel = 1;
  std::string communicator = "auto";
};
void add_model_flags(CLI::App& app, ModelFlags& flags);
// Adds --tp and --tp-comm (also used by commands with their own model flags, e.g. bench).
void add_tensor_parallel_flags(CLI::App& app, int& tensor_parallel, std::string& communicator);
// Copies --threads, --kv-type, --gpu-mode, --fused-prompts, --tp and --tp-comm into `options`; Error(kInvalidArgument) for a bad --kv-type.
void apply_backend_flags(const ModelFlags& flags, SessionOptions& options);
// Adds --gpu-mode (default auto) and --fused-prompts (default batched).
void add_gpu_mode_flags(CLI::App& app, std::string& gpu_mode, std::string& fused_prompts);

// Adds --temp, --top-k, --top-p, --min-p, --repeat-penalty, --repeat-last-n, --seed.
struct SamplingFlags {
  SamplingParams params;
  std::optional<uint64_t> seed;
  // The parameters with the seed filled in (a random one when --seed was not given).
  SamplingParams resolve() const;
};
void add_sampling_flags(CLI::App& app, SamplingFlags& flags);

// While alive, SIGINT sets interrupted() instead of killing the process (a second Ctrl-C
// while the first is pending kills it as usual). Blocking reads are not restarted.
class InterruptScope {
 public:
  InterruptScope();
  ~InterruptScope();
  InterruptScope(const InterruptScope&) = delete;
  InterruptScope& operator=(const InterruptScope&) = delete;
  static std::atomic<bool>& flag();
};
inline constexpr int kInterruptedExitCode = 130;

// Integer flags. CLI11 converts with strtoll/strtoull, which clamp what does not fit
// (-n 99999999999999999999 became INT64_MAX), wrap negatives for unsigned targets (--seed -5
// became 2^64-5) and read a leading 0 as octal. These check the text as a base-10 integer in
// range, with a one-line message, and pass it on in canonical form. build_app gives every
// integer flag the full range of its type; flags with a narrower range add integer_in.
CLI::Validator integer_in(int64_t lo, int64_t hi);
CLI::Validator unsigned_integer();
inline constexpr int64_t kMaxThreads = 1024;

double seconds_since(std::chrono::steady_clock::time_point start);
void print_load_time(double seconds);
void print_generation_stats(const GenerationStats& stats);

}  // namespace pdvm::cli
