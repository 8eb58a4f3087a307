// Tokenizer throughput on ~100 KB of text: the llama.cpp vector inputs repeated (mixed scripts,
// whitespace, digits), and one unsplittable 100 KB word (the merge loop's worst case).
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "pdvm/gguf.h"
#include "pdvm/tokenizer.h"

namespace {

namespace fs = std::filesystem;

fs::path tokenizer_dir() {
  if (const char* env = std::getenv("PDVM_TESTDATA")) return fs::path(env) / "tokenizer";
  return fs::path(__FILE__).parent_path().parent_path().parent_path() / "shared" / "testdata" / "tokenizer";
}

const pdvm::Tokenizer& tokenizer(const std::string& vocab) {
  static std::map<std::string, pdvm::Tokenizer> cache;
  auto it = cache.find(vocab);
  if (it == cache.end()) {
    it = cache.emplace(vocab, pdvm::Tokenizer::from_gguf(pdvm::GgufFile::open(tokenizer_dir() / vocab))).first;
  }
  return it->second;
}

std::string mixed_text() {
  std::ifstream in(tokenizer_dir() / "ggml-vocab-llama-spm.gguf.inp", std::ios::binary);
  std::ostringstream inputs;
  inputs << in.rdbuf();
  std::string text;
  while (text.size() < 100000) text += inputs.str();
  return text;
}

void encode(benchmark::State& state, const std::string& vocab, const std::string& text) {
  const pdvm::Tokenizer& tok = tokenizer(vocab);
  size_t n_tokens = 0;
  for (auto _ : state) {
    const auto ids = tok.encode(text, true, true);
    n_tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
  state.counters["tokens"] = static_cast<double>(n_tokens);
}

void BM_EncodeMixed(benchmark::State& state, const char* vocab) { encode(state, vocab, mixed_text()); }
void BM_EncodeLongWord(benchmark::State& state, const char* vocab) { encode(state, vocab, std::string(100000, 'a')); }

void BM_DecodeMixed(benchmark::State& state, const char* vocab) {
  const pdvm::Tokenizer& tok = tokenizer(vocab);
  const std::string text = mixed_text();
  const auto ids = tok.encode(text, false, false);
  for (auto _ : state) benchmark::DoNotOptimize(tok.decode(ids).data());
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
}

// Building the tables from already parsed metadata (token map, merge ranks, regex JIT).
void BM_FromGguf(benchmark::State& state, const char* vocab) {
  const pdvm::GgufFile file = pdvm::GgufFile::open(tokenizer_dir() / vocab);
  for (auto _ : state) benchmark::DoNotOptimize(pdvm::Tokenizer::from_gguf(file).n_vocab());
}

BENCHMARK_CAPTURE(BM_FromGguf, spm, "ggml-vocab-llama-spm.gguf")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_FromGguf, gpt2, "ggml-vocab-gpt-2.gguf")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_EncodeMixed, spm, "ggml-vocab-llama-spm.gguf")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_EncodeMixed, gpt2, "ggml-vocab-gpt-2.gguf")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_EncodeMixed, starcoder, "ggml-vocab-starcoder.gguf")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_EncodeLongWord, spm, "ggml-vocab-llama-spm.gguf")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_EncodeLongWord, gpt2, "ggml-vocab-gpt-2.gguf")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_DecodeMixed, spm, "ggml-vocab-llama-spm.gguf")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_DecodeMixed, gpt2, "ggml-vocab-gpt-2.gguf")->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
