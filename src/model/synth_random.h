// Counter-based random numbers for synthetic models: value i of a stream depends only on
// (seed, stream name, i), so tensors can be generated in any order, in parallel, streamed.
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>
#include <string_view>

namespace pdvm::synth {

inline uint64_t mix64(uint64_t x) {  // splitmix64's finaliser: a bijective avalanche
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

class CounterRng {
 public:
  CounterRng(uint64_t seed, std::string_view stream) {
    uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a of the stream name
    for (char c : stream) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
    key_ = mix64(mix64(seed) ^ h);
  }

  uint64_t bits(uint64_t counter) const { return mix64(key_ ^ mix64(counter)); }

  // Standard normal pair number `counter` (Box-Muller on two 24-bit uniforms of one draw).
  void normal_pair(uint64_t counter, float& z0, float& z1) const {
    const uint64_t r = bits(counter);
    const float u1 = static_cast<float>((r >> 40) + 1) * 0x1p-24f;  // (0, 1]: log is finite
    const float u2 = static_cast<float>(r & 0xffffff) * 0x1p-24f;
    const float radius = std::sqrt(-2.0f * std::log(u1));
    const float angle = 2.0f * std::numbers::pi_v<float> * u2;
    z0 = radius * std::cos(angle);
    z1 = radius * std::sin(angle);
  }

 private:
  uint64_t key_;
};

}  // namespace pdvm::synth
