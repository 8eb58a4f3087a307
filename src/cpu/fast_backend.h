// The fast CPU backend ("cpu"): SIMD kernels with run-time dispatch, a persistent thread
// pool, 8-bit activation dot products and batched prefill.
#pragma once

#include <memory>

#include "pdvm/backend.h"

namespace pdvm::cpu {

struct FastCpuOptions {
  int threads = 0;  // 0: every core this process may use
};

std::unique_ptr<Backend> make_fast_cpu_backend(const FastCpuOptions& options = {});

}  // namespace pdvm::cpu
