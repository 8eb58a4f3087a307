// Shared helpers for the C++ tests: well-known paths and fresh random inputs.
#pragma once

#include <cstdint>
#include <filesystem>
#include <random>
#include <span>
#include <string>
#include <vector>

namespace pdvm {
struct GgufTensor;
}

namespace pdvm::test {

std::filesystem::path source_dir();
// ../shared/testdata next to the checkout (PDVM_TESTDATA overrides).
std::filesystem::path testdata_dir();
// The default model (PDVM_MODEL overrides); tests of label "model" skip only if it is absent
// AND PDVM_REQUIRE_MODEL is unset, CI sets it so a missing model fails loudly.
std::filesystem::path default_model_path();
bool require_default_model();

// A generator seeded freshly per run (printed so a failure can be replayed with PDVM_TEST_SEED).
std::mt19937_64& rng();
std::vector<float> random_floats(size_t n, float stddev = 1.0f);

// How many decode steps (positions) a GPU test runs: `n`, or PDVM_TEST_MAX_STEPS if that is
// smaller. compute-sanitizer's racecheck makes each fused kernel launch ~100x slower; the
// sanitizer script caps the steps so whole test binaries finish (docs/testing.md).
int decode_steps(int n);

// A tensor's values as floats (the reference dequantization of its type).
std::vector<float> dequantized(const GgufTensor& t);

// max |a - b| / max |b|; a size mismatch is a test failure.
float relative_difference(std::span<const float> a, std::span<const float> b);

}  // namespace pdvm::test
