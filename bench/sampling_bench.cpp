// Sampler cost per token on a 128k vocabulary (Llama 3 size) with fresh random logits.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "pdvm/sampling.h"

namespace {

constexpr size_t kVocab = 128256;

std::vector<float> random_logits() {
  std::mt19937_64 rng(42);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  std::vector<float> logits(kVocab);
  for (float& v : logits) v = dist(rng);
  return logits;
}

void run(benchmark::State& state, pdvm::SamplingParams params) {
  const std::vector<float> logits = random_logits();
  std::vector<int32_t> history(64);
  for (size_t i = 0; i < history.size(); ++i) history[i] = static_cast<int32_t>(i * 997 % kVocab);
  pdvm::Sampler sampler(params);
  for (auto _ : state) benchmark::DoNotOptimize(sampler.sample(logits, history));
}

void BM_Greedy(benchmark::State& state) {
  pdvm::SamplingParams p;
  p.temperature = 0;
  run(state, p);
}

void BM_Defaults(benchmark::State& state) {  // top-k 40, top-p 0.95, min-p 0.05, temp 0.8
  run(state, pdvm::SamplingParams{});
}

void BM_DefaultsWithPenalty(benchmark::State& state) {
  pdvm::SamplingParams p;
  p.repeat_penalty = 1.1f;
  run(state, p);
}

void BM_TopPOnly(benchmark::State& state) {  // no top-k: the nucleus needs a growing partial sort
  pdvm::SamplingParams p;
  p.top_k = 0;
  p.min_p = 0;
  p.top_p = 0.9f;
  run(state, p);
}

void BM_TemperatureOnly(benchmark::State& state) {
  pdvm::SamplingParams p;
  p.top_k = 0;
  p.top_p = 1;
  p.min_p = 0;
  run(state, p);
}

}  // namespace

BENCHMARK(BM_Greedy);
BENCHMARK(BM_Defaults);
BENCHMARK(BM_DefaultsWithPenalty);
BENCHMARK(BM_TopPOnly);
BENCHMARK(BM_TemperatureOnly);
BENCHMARK_MAIN();
