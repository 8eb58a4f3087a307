// The CUDA backend's A/B switches: environment variables read for timing experiments.
#pragma once

#include <cstdlib>
#include <string_view>

namespace pdvm::cuda {

// Whether environment variable `name` is set to exactly `value`.
inline bool env_equals(const char* name, std::string_view value) {
  const char* env = std::getenv(name);
  return env && value == env;
}

}  // namespace pdvm::cuda
