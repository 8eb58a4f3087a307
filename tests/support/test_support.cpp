#include "test_support.h"

#include "pdvm/gguf.h"
#include "pdvm/tensor_type.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace pdvm::test {

std::filesystem::path source_dir() { return PDVM_SOURCE_DIR; }

std::filesystem::path testdata_dir() {
  if (const char* env = std::getenv("PDVM_TESTDATA")) return env;
  return source_dir().parent_path() / "shared" / "testdata";
}

std::filesystem::path default_model_path() {
  if (const char* env = std::getenv("PDVM_MODEL")) return env;
  return source_dir() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf";
}

bool require_default_model() {
  if (std::filesystem::exists(default_model_path())) return true;
  if (std::getenv("PDVM_REQUIRE_MODEL")) {
    ADD_FAILURE() << "default model missing at " << default_model_path() << " (run scripts/setup.sh)";
  }
  return false;
}

std::mt19937_64& rng() {
  static std::mt19937_64 generator = [] {
    uint64_t seed = std::random_device{}();
    if (const char* env = std::getenv("PDVM_TEST_SEED")) seed = std::strtoull(env, nullptr, 10);
    std::fprintf(stderr, "[pdvm test] random seed %llu (set PDVM_TEST_SEED to replay)\n",
                 static_cast<unsigned long long>(seed));
    return std::mt19937_64(seed);
  }();
  return generator;
}

int decode_steps(int n) {
  static const int cap = [] {
    const char* env = std::getenv("PDVM_TEST_MAX_STEPS");
    if (!env) return 0;
    char* end = nullptr;
    const long value = std::strtol(env, &end, 10);
    if (end == env || *end != '\0' || value < 1 || value > 1'000'000) {
      std::fprintf(stderr, "[pdvm test] PDVM_TEST_MAX_STEPS='%s' is not a step count from 1 to 1000000\n", env);
      std::abort();
    }
    std::fprintf(stderr, "[pdvm test] decode steps capped at %ld (PDVM_TEST_MAX_STEPS)\n", value);
    return static_cast<int>(value);
  }();
  return cap > 0 ? std::min(n, cap) : n;
}

std::vector<float> random_floats(size_t n, float stddev) {
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> out(n);
  for (float& v : out) v = dist(rng());
  return out;
}

std::vector<float> dequantized(const GgufTensor& t) {
  std::vector<float> out(static_cast<size_t>(t.n_elems()));
  dequantize_row(t.type, t.data, out.data(), t.n_elems());
  return out;
}

float relative_difference(std::span<const float> a, std::span<const float> b) {
  EXPECT_EQ(a.size(), b.size());
  float diff = 0.0f, scale = 0.0f;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    diff = std::max(diff, std::abs(a[i] - b[i]));
    scale = std::max(scale, std::abs(b[i]));
  }
  return diff / scale;
}

}  // namespace pdvm::test
