// Matvec micro-benchmarks of the fast CPU backend: one kernel per weight type and method,
// on a SmolLM2-135M feed-forward shaped matrix (1536 x 576), reporting weight bytes streamed
// per second. Arguments: {n_tokens}; 1 is generation, more is a prefill batch. Iterations
// cycle through copies of the matrix totalling 128 MiB, so weights stream from DRAM as in a
// real forward pass rather than sitting in cache.
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <vector>

#include "cpu/fast_kernels.h"
#include "cpu/fast_thread_pool.h"
#include "pdvm/tensor_type.h"

namespace pdvm::cpu {
namespace {

constexpr int64_t kInputs = 576;
constexpr int64_t kRows = 1536;

std::vector<uint8_t> make_weights(TensorType type, int64_t k, int64_t n_rows, std::mt19937& gen) {
  std::normal_distribution<float> normal(0.0f, 0.5f);
  const int64_t row_bytes = type_bytes(type, k);
  std::vector<uint8_t> bytes(static_cast<size_t>(row_bytes * n_rows));
  std::vector<float> row(static_cast<size_t>(k));
  if (type_info(type).quantizable) {
    for (int64_t r = 0; r < n_rows; ++r) {
      for (float& v : row) v = normal(gen);
      quantize_row(type, row.data(), bytes.data() + r * row_bytes, k);
    }
  } else {
    for (uint8_t& b : bytes) b = static_cast<uint8_t>(gen());
  }
  return bytes;
}

void run_matvec(benchmark::State& state, TensorType type, DotMethod method, int threads) {
  std::mt19937 gen(1);
  const int64_t n_tokens = state.range(0);
  // K-quants need whole 256-element super-blocks: 768 inputs instead of 576.
  const int64_t k = type_info(type).block_elems == 256 ? 768 : kInputs;
  const std::vector<uint8_t> one_copy = make_weights(type, k, kRows, gen);
  const size_t n_copies = (size_t{128} << 20) / one_copy.size() + 1;
  std::vector<uint8_t> weights(one_copy.size() * n_copies);
  for (size_t c = 0; c < n_copies; ++c) std::memcpy(weights.data() + c * one_copy.size(), one_copy.data(), one_copy.size());
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(k * n_tokens));
  for (float& v : x) v = normal(gen);
  std::vector<float> out(static_cast<size_t>(kRows * n_tokens));
  ThreadPool pool(threads);
  PreparedActivation act;
  size_t copy = 0;
  for (auto _ : state) {
    prepare_activation(x.data(), k, n_tokens, method, act);
    const uint8_t* matrix = weights.data() + (copy++ % n_copies) * one_copy.size();
    MatmulTask task{type, method, matrix, type_bytes(type, k), &act, out.data(), kRows};
    pool.parallel_for(kRows, 32, [&](int64_t begin, int64_t end) { matmul_rows(task, begin, end); });
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(one_copy.size()));
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(state.iterations() * n_tokens),
                                                  benchmark::Counter::kIsRate);
  state.SetLabel(simd_target_name());
}

void register_all() {
  for (TensorType type : {TensorType::kF32, TensorType::kF16, TensorType::kBF16, TensorType::kQ4_0,
                          TensorType::kQ4_1, TensorType::kQ5_0, TensorType::kQ5_1, TensorType::kQ8_0,
                          TensorType::kQ4_K, TensorType::kQ5_K, TensorType::kQ6_K}) {
    for (DotMethod method : {DotMethod::kDequantFma, DotMethod::kInt8, DotMethod::kInt16}) {
      if (!has_matmul_kernel(type, method)) continue;
      for (int threads : {1, 2}) {
        const std::string name = std::string("matvec/") + std::string(type_name(type)) +
                                 (method == DotMethod::kInt8 ? "/int8" : method == DotMethod::kInt16 ? "/int16" : "/dequant_fma") + "/threads:" +
                                 std::to_string(threads);
        benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& state) {
          run_matvec(state, type, method, threads);
        })->Arg(1)->Arg(16)->UseRealTime();
      }
    }
  }
}

}  // namespace
}  // namespace pdvm::cpu

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  pdvm::cpu::register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
