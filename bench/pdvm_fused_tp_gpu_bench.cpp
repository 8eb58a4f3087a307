// Tensor-parallel PDVM fused decode speed (issue #9) on synthesized weights of real shapes:
// the unsplit fused decoder (layer and token mode), then FusedTensorParallel over NCCL with 1
// rank (the layers split in two launches with the all-reduces in the graph: the cost of the
// split itself) and with 2, 4, 8 ranks, as many as there are GPUs; then the same rank counts
// with the all-reduce inside the kernel (NCCL's device API: one launch per layer, "in-kernel",
// and one per token, "in-kernel token"). tg64 from position 0, median of 3; speed-up and
// scaling efficiency against the unsplit layer mode. Each split also reports its all-reduce
// time per token: the token's 2 x n_layer all-reduces of x alone, on the same buffers and
// ranks (NCCL's calls replayed as one graph per token, or the in-kernel exchange as one launch
// per token with the decode's grid), CUDA events, slowest rank, median of 3 runs of 64 tokens;
// "share" is that time over the split's layer-mode (two-launch) or token-mode time per token.
//   pdvm_fused_tp_gpu_bench [shape:type ...]   (shape: 1b, 8b or 13b: bench/fused_shapes.h)
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "cuda/check.cuh"
#include "fused_shapes.h"
#include "pdvm/error.h"
#include "pdvm/pdvm_fused.h"
#include "pdvm/pdvm_fused_tp.h"

namespace {

constexpr int kTokens = 64;

// Median ms per token of kTokens greedy tokens (after a warm-up that records the graph).
double ms_per_token(const std::function<double(int)>& time_tokens) {
  time_tokens(8);
  std::vector<double> runs;
  for (int r = 0; r < 3; ++r) runs.push_back(time_tokens(kTokens) / kTokens);
  std::sort(runs.begin(), runs.end());
  return runs[1];
}

void report(const std::string& label, double ms, double base_ms, int ranks) {
  const double speedup = base_ms / ms;
  std::printf("%-28s %8.1f tok/s %7.3f ms/tok  speed-up %5.2fx  efficiency %5.1f %%\n", label.c_str(), 1000.0 / ms, ms,
              speedup, 100.0 * speedup / ranks);
  std::fflush(stdout);
}

void report_all_reduces(const std::string& label, int per_token, double all_reduce_ms, double token_ms) {
  std::printf("%-28s all-reduce x%d alone %7.3f ms/tok (%6.2f us each, share %5.1f %%)\n", label.c_str(), per_token,
              all_reduce_ms, 1000.0 * all_reduce_ms / per_token, 100.0 * all_reduce_ms / token_ms);
  std::fflush(stdout);
}

void run_case(const std::string& spec, int n_gpus) {
  const size_t colon = spec.find(':');
  const std::string shape = spec.substr(0, colon);
  const std::string type_text = colon == std::string::npos ? "f16" : spec.substr(colon + 1);
  const auto type = pdvm::type_from_name(type_text);
  if (!type) pdvm::throw_error(pdvm::ErrorKind::kInvalidArgument, "unknown type '" + type_text + "'");
  const pdvm::FusedConfig config = pdvm::bench::fused_shape_config(shape, 1024);
  const std::string name = shape + " " + type_text;
  double base = 0;
  {
    PDVM_CUDA_CHECK(cudaSetDevice(0));
    auto whole = pdvm::FusedDecoder::synthesize(config, *type, 1234);
    base = ms_per_token([&](int n) { return whole->time_generate(1, 0, n, pdvm::FusedMode::kLayer); });
    report(name + " layer", base, base, 1);
    const double token = ms_per_token([&](int n) { return whole->time_generate(1, 0, n, pdvm::FusedMode::kToken); });
    report(name + " token", token, base, 1);
  }
  for (auto all_reduce : {pdvm::FusedAllReduce::kBetweenLaunches, pdvm::FusedAllReduce::kInKernel}) {
    const bool in_kernel = all_reduce == pdvm::FusedAllReduce::kInKernel;
    for (int tp : {1, 2, 4, 8}) {
      if (tp > n_gpus) break;
      std::vector<int> devices(static_cast<size_t>(tp));
      for (int r = 0; r < tp; ++r) devices[r] = r;
      auto split = pdvm::FusedTensorParallel::synthesize(config, *type, 1234, devices, "nccl", all_reduce);
      const std::string label = name + " tp" + std::to_string(tp) + (in_kernel ? " in-kernel" : " nccl");
      const double ms = ms_per_token([&](int n) { return split->time_generate(1, 0, n, pdvm::FusedMode::kLayer); });
      report(label + " layer", ms, base, tp);
      double token = ms;
      if (in_kernel) {
        token = ms_per_token([&](int n) { return split->time_generate(1, 0, n, pdvm::FusedMode::kToken); });
        report(label + " token", token, base, tp);
      }
      // Ranks agree on the tokens (checked by generate) and repeat them.
      const std::vector<int> ids = split->generate(1, 0, 32, pdvm::FusedMode::kLayer);
      if (split->generate(1, 0, 32, pdvm::FusedMode::kLayer) != ids)
        pdvm::throw_error(pdvm::ErrorKind::kInternal, label + ": greedy tokens differ between runs");
      const double all_reduces = ms_per_token([&](int n) { return split->time_all_reduces(n); });
      report_all_reduces(label, 2 * config.n_layer, all_reduces, token);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    int n_gpus = 0;
    PDVM_CUDA_CHECK(cudaGetDeviceCount(&n_gpus));
    std::printf("%d GPU(s)\n", n_gpus);
    std::vector<std::string> specs(argv + 1, argv + argc);
    if (specs.empty()) specs = {"13b:f16", "8b:q8_0"};
    for (const std::string& spec : specs) run_case(spec, n_gpus);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pdvm_fused_tp_gpu_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
