// Opening a GGUF model: mapping plus parsing and validating the header (49k token strings for
// the default model). Run from the repository root, or set PDVM_MODEL.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <fstream>
#include <iterator>

#include "pdvm/gguf.h"

namespace {

std::string model_path() {
  const char* env = std::getenv("PDVM_MODEL");
  return env != nullptr ? env : "models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

void BM_OpenModel(benchmark::State& state) {
  const std::string path = model_path();
  for (auto _ : state) {
    pdvm::GgufFile file = pdvm::GgufFile::open(path);
    benchmark::DoNotOptimize(file.tensors().data());
  }
}
BENCHMARK(BM_OpenModel)->Unit(benchmark::kMillisecond);

// The header alone, parsed from memory: no mmap or page faults in the measurement.
void BM_ParseHeaderInMemory(benchmark::State& state) {
  std::ifstream in(model_path(), std::ios::binary);
  std::vector<uint8_t> bytes{std::istreambuf_iterator<char>(in), {}};
  if (bytes.empty()) {
    state.SkipWithError("model not found");
    return;
  }
  for (auto _ : state) {
    pdvm::GgufFile file = pdvm::GgufFile::parse(bytes);
    benchmark::DoNotOptimize(file.metadata().data());
  }
}
BENCHMARK(BM_ParseHeaderInMemory)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
