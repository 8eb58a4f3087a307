// Batch-1 decode speed of the PDVM fused kernels on synthesized (device-generated) weights of
// real model shapes, as tokens/s, ms per layer and % of the read bandwidth measured in the same
// run. Usage: pdvm_fused_gpu_bench [shape:type[:start_position] ...]   (shape: 1b | 8b | 13b)
// PDVM_BENCH_MODE=layer|token restricts the modes.
#include <cuda_runtime.h>

#include <cstdio>
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "cuda/check.cuh"
#include "fused_shapes.h"
#include "pdvm/error.h"
#include "pdvm/pdvm_fused.h"

namespace {

void run_case(const std::string& spec, double bandwidth) {
  const size_t first = spec.find(':');
  const size_t second = spec.find(':', first + 1);
  const std::string shape = spec.substr(0, first);
  const std::string type_text = first == std::string::npos ? "f16" : spec.substr(first + 1, second - first - 1);
  const int start = second == std::string::npos ? 0 : std::atoi(spec.c_str() + second + 1);
  const auto type = pdvm::type_from_name(type_text);
  if (!type) pdvm::throw_error(pdvm::ErrorKind::kInvalidArgument, "unknown type '" + type_text + "'");
  const pdvm::FusedConfig config = pdvm::bench::fused_shape_config(shape, 4608);
  auto decoder = pdvm::FusedDecoder::synthesize(config, *type, 1234);
  const pdvm::FusedFootprint fp = decoder->footprint();
  std::printf("%-4s %-5s kernel instance: %s; hand-offs as blocks: %s\n", shape.c_str(), type_text.c_str(),
              decoder->kernel_instance().c_str(), decoder->quantized_handoffs().c_str());
  const int n_tokens = 128;
  // PDVM_BENCH_MODE=layer|token times only that mode (e.g. under a profiler).
  const char* only = std::getenv("PDVM_BENCH_MODE");
  for (pdvm::FusedMode mode : {pdvm::FusedMode::kLayer, pdvm::FusedMode::kToken}) {
    if (only && std::string(only) != (mode == pdvm::FusedMode::kLayer ? "layer" : "token")) continue;
    decoder->time_generate(1, start, 16, mode);  // warm-up (graph capture, module load)
    std::vector<double> runs;
    for (int r = 0; r < 3; ++r) runs.push_back(decoder->time_generate(1, start, n_tokens, mode));
    std::sort(runs.begin(), runs.end());
    const double ms_per_token = runs[1] / n_tokens;
    const double mean_positions = start + (n_tokens + 1) / 2.0;
    const double bytes = static_cast<double>(fp.weight_bytes) + fp.kv_bytes_per_position * mean_positions;
    const double gbps = bytes / (ms_per_token * 1e6);
    std::printf("%-4s %-5s ctx%-5d %-5s %8.1f tok/s %7.3f ms/tok %6.4f ms/layer %6.2f GB/tok %7.0f GB/s %5.1f %%bw\n",
                shape.c_str(), type_text.c_str(), start, mode == pdvm::FusedMode::kLayer ? "layer" : "token",
                1000.0 / ms_per_token, ms_per_token, ms_per_token / config.n_layer, bytes / 1e9, gbps,
                100.0 * gbps / bandwidth);
    std::fflush(stdout);
  }
  // Determinism on the full shape: two token-mode runs and a layer-mode run give the same ids.
  const std::vector<int> ids = decoder->generate(1, start, 32, pdvm::FusedMode::kToken);
  const bool same = decoder->generate(1, start, 32, pdvm::FusedMode::kToken) == ids &&
                    decoder->generate(1, start, 32, pdvm::FusedMode::kLayer) == ids;
  uint32_t hash = 2166136261u;
  for (int id : ids) hash = (hash ^ static_cast<uint32_t>(id)) * 16777619u;
  std::printf("%-4s %-5s ctx%-5d 32 greedy ids: %s (token x2, layer), FNV-1a %08x\n", shape.c_str(),
              type_text.c_str(), start, same ? "identical" : "DIFFERENT", hash);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    cudaDeviceProp prop{};
    PDVM_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    const double bandwidth = pdvm::measure_read_bandwidth_gbps(uint64_t{4} << 30);
    std::printf("device %s, %d SMs; read bandwidth %.0f GB/s (4 GiB streamed, median of 9)\n", prop.name,
                prop.multiProcessorCount, bandwidth);
    std::vector<std::string> specs(argv + 1, argv + argc);
    if (specs.empty()) specs = {"1b:f16", "13b:f16"};
    for (const std::string& spec : specs) run_case(spec, bandwidth);
    std::printf("read bandwidth again: %.0f GB/s\n", pdvm::measure_read_bandwidth_gbps(uint64_t{4} << 30));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pdvm_fused_gpu_bench: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
