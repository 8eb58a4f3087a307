// `pdvm bench`: pp/tg throughput of models (see pdvm/bench.h), with GPU columns (ms per layer,
// bytes per token, GB/s and % of the measured read bandwidth of the card, or of the host's
// memory with the bench's threads when the backend is cpu).
// `--kernels` times the decode matvec kernels alone.
#include <cstdio>
#include <limits>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "cli_common.h"
#include "command.h"
#include "pdvm/bench.h"
#include "pdvm/cpu_bandwidth.h"
#include "pdvm/engine.h"
#include "pdvm/error.h"
#ifdef PDVM_HAVE_CUDA
#include "pdvm/cuda_backend.h"
#endif

namespace pdvm::cli {
namespace {

struct BenchArgs {
  std::vector<std::string> models;
  std::string backend = "auto";
  int device = 0;
  int threads = 0;
  int n_prompt = 512;
  int n_gen = 128;
  int repetitions = 3;
  int64_t n_ctx = 0;
  std::string kv_type;
  std::string gpu_mode = "auto";
  std::string fused_prompts = "batched";
  bool json = false;
  bool kernels = false;
  std::vector<std::string> kernel_types{"f16", "bf16", "q8_0", "q4_0", "q4_1"};
  bool probe = true;
  std::vector<int> tensor_parallel{1};
  std::string communicator = "auto";
};

double measure_bandwidth(const BenchArgs& args, const std::string& backend_name) {
#ifdef PDVM_HAVE_CUDA
  if (backend_name == "cuda" && args.probe) {
    const ReadBandwidth bw = measure_cuda_read_bandwidth(args.device);
    if (!args.json)
      std::printf("read bandwidth of %s: %.1f GB/s (%.2f GiB read-only reduction, median of 9)\n",
                  bw.device_name.c_str(), bw.gb_per_s, bw.bytes / double(1 << 30));
    return bw.gb_per_s;
  }
#endif
  if (backend_name == "cpu" && args.probe) {
    const HostReadBandwidth bw = measure_cpu_read_bandwidth(args.threads);
    if (!args.json)
      std::printf("read bandwidth of the CPU: %.1f GB/s (%d threads, %.2f GiB read, median of 9)\n", bw.gb_per_s,
                  bw.threads, bw.bytes / double(1 << 30));
    return bw.gb_per_s;
  }
  return 0.0;
}

int run_kernels(const BenchArgs& args) {
#ifdef PDVM_HAVE_CUDA
  // Decode shapes of llama-3.2-1b (2048 wide, ffn 8192) and llama-2-13b (5120, ffn 13824).
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{2048, 2048}, {2048, 8192}, {8192, 2048},
                                                           {5120, 5120}, {5120, 13824}, {13824, 5120}};
  const double bandwidth = measure_bandwidth(args, "cuda");
  if (!args.json) std::printf("%-6s %7s %7s %9s %9s %8s %7s\n", "type", "k", "rows", "MB", "us", "GB/s", "% bw");
  for (const std::string& name : args.kernel_types) {
    const auto type = type_from_name(name);
    if (!type) throw_error(ErrorKind::kInvalidArgument, "--kernel-types: unknown type '" + name + "'");
    for (auto [k, rows] : shapes) {
      const MatvecTiming t = time_cuda_matvec(args.device, *type, k, rows);
      const double pct = bandwidth > 0 ? 100.0 * t.gb_per_s / bandwidth : 0.0;
      if (args.json)
        std::printf("{\"kernel\":\"matvec\",\"type\":\"%s\",\"k\":%lld,\"rows\":%lld,\"bytes\":%llu,\"us\":%.3f,"
                    "\"gb_per_s\":%.1f,\"pct_of_read_bandwidth\":%.1f}\n",
                    name.c_str(), static_cast<long long>(k), static_cast<long long>(rows),
                    static_cast<unsigned long long>(t.bytes), t.microseconds, t.gb_per_s, pct);
      else
        std::printf("%-6s %7lld %7lld %9.2f %9.2f %8.1f %7.1f\n", name.c_str(),
                    static_cast<long long>(k), static_cast<long long>(rows), t.bytes / 1e6, t.microseconds,
                    t.gb_per_s, pct);
    }
  }
  return 0;
#else
  (void)args;
  throw_error(ErrorKind::kUnsupported, "--kernels: this build has no CUDA backend");
#endif
}

// One line per split size after the first: tg speed-up over the first and its efficiency
// (speed-up / ranks relative to the first's ranks).
void print_scaling(const std::vector<BenchReport>& reports) {
  if (reports.size() < 2 || reports.front().tg_tokens_per_s <= 0.0) return;
  const BenchReport& base = reports.front();
  for (size_t i = 1; i < reports.size(); ++i) {
    const BenchReport& r = reports[i];
    const double speedup = r.tg_tokens_per_s / base.tg_tokens_per_s;
    const double efficiency = speedup * base.tensor_parallel / r.tensor_parallel;
    std::printf("%s: tp %d tg%d %.1f tok/s, %.2fx tp %d (%.0f %% scaling efficiency)\n", r.model.c_str(),
                r.tensor_parallel, r.n_gen, r.tg_tokens_per_s, speedup, base.tensor_parallel, 100.0 * efficiency);
  }
}

int run_bench_command(const BenchArgs& args) {
  if (args.kernels) return run_kernels(args);
  if (args.models.empty()) throw_error(ErrorKind::kInvalidArgument, "bench: give at least one model (-m)");
  double bandwidth = -1.0;
  for (const std::string& model : args.models) {
    std::vector<BenchReport> reports;
    for (int tp : args.tensor_parallel) {
      SessionOptions options;
      options.model_path = model;
      options.backend = args.backend;
      options.backend_options.device = args.device;
      options.backend_options.n_threads = args.threads;
      options.n_ctx = args.n_ctx;
      options.gpu_mode = args.gpu_mode;
      options.fused_batched_prompts = args.fused_prompts == "batched";
      options.tensor_parallel = tp;
      options.communicator = args.communicator;
      if (!args.kv_type.empty()) {
        const auto type = type_from_name(args.kv_type);
        if (!type) throw_error(ErrorKind::kInvalidArgument, "--kv-type: unknown type '" + args.kv_type + "'");
        options.kv_type = *type;
      }
      Session session(options);
      if (bandwidth < 0.0) {  // the probe's line goes above the table
        bandwidth = measure_bandwidth(args, session.backend().name());
        if (!args.json) std::printf("%s\n", bench_table_header().c_str());
      }
      BenchConfig config;
      config.n_prompt = args.n_prompt;
      config.n_gen = args.n_gen;
      config.repetitions = args.repetitions;
      config.n_threads = args.threads > 0 ? args.threads : static_cast<int>(std::thread::hardware_concurrency());
      if (!args.json && session.backend().name() == "cuda") {
        std::printf("gpu mode: %s%s\n", session.gpu_mode().c_str(),
                    session.gpu_mode() == "unfused"      ? ""
                    : session.fused_batched_prompts() ? " (prompts batched on the unfused backend)"
                                                         : " (prompts one fused step per token)");
      }
      reports.push_back(run_bench(session, std::filesystem::path(model).filename().string(), config, bandwidth));
      std::printf("%s\n", args.json ? bench_json(reports.back()).c_str() : bench_table_row(reports.back()).c_str());
      std::fflush(stdout);
    }
    if (!args.json) print_scaling(reports);
  }
  return 0;
}

PDVM_REGISTER_COMMAND("bench", "throughput of models: prompt processing and generation (tokens/s, GB/s)",
                      [](CLI::App& app) -> std::function<int()> {
                        auto args = std::make_shared<BenchArgs>();
                        app.add_option("-m,--model", args->models, "GGUF model(s) to benchmark");
                        app.add_option("--backend", args->backend, "cuda, cpu or auto")->capture_default_str();
                        app.add_option("--device", args->device, "GPU ordinal")->capture_default_str()->check(integer_in(0, 1023));
                        app.add_option("-t,--threads", args->threads, "CPU threads (0: all)")->check(integer_in(0, kMaxThreads));
                        app.add_option("-p,--n-prompt", args->n_prompt, "pp: prompt tokens (0 skips)")
                            ->capture_default_str()
                            ->check(integer_in(0, std::numeric_limits<int32_t>::max()));
                        app.add_option("-n,--n-gen", args->n_gen, "tg: generated tokens (0 skips)")
                            ->capture_default_str()
                            ->check(integer_in(0, std::numeric_limits<int32_t>::max()));
                        app.add_option("-r,--repetitions", args->repetitions, "timed runs of each test (median, stddev)")
                            ->capture_default_str()
                            ->check(integer_in(1, 1000000));
                        app.add_option("-c,--ctx", args->n_ctx, "context size (0: model default, max 4096)")
                            ->check(integer_in(0, std::numeric_limits<int64_t>::max()));
                        app.add_option("--kv-type", args->kv_type, "KV cache type (f32, f16, q8_0)");
                        add_gpu_mode_flags(app, args->gpu_mode, args->fused_prompts);
                        app.add_option("--tp", args->tensor_parallel,
                                       "tensor parallelism: ranks to split the model over; a list (1,2,4) "
                                       "benchmarks each and prints the scaling")
                            ->delimiter(',')
                            ->check(integer_in(1, 1024));
                        app.add_option("--tp-comm", args->communicator, "auto, nccl or in-process")
                            ->check(CLI::IsMember({"auto", "nccl", "in-process"}))
                            ->capture_default_str();
                        app.add_flag("--json", args->json, "one JSON object per line");
                        app.add_flag("--kernels", args->kernels, "time the CUDA decode matvec kernels alone");
                        app.add_option("--kernel-types", args->kernel_types, "weight types --kernels times")
                            ->delimiter(',')
                            ->capture_default_str();
                        app.add_flag("!--no-probe", args->probe, "skip the read-bandwidth probe (GPU or CPU)");
                        return [args] { return run_bench_command(*args); };
                      });

}  // namespace
}  // namespace pdvm::cli
