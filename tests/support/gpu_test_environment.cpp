// Linked into every gpu-labelled test executable: without a CUDA device each test is reported
// skipped before its fixture is built (a failure instead when PDVM_REQUIRE_GPU is set), so tests
// that reach the device through the engine or the fused decoder, not through
// cuda_backend_or_skip(), skip too instead of throwing. A skip recorded at OnTestStart stops
// googletest from constructing and running the test; an Environment cannot do this in 1.12
// (its skip leaves the tests reported as passed).
#include <gtest/gtest.h>

#include <cstdlib>

#include "pdvm/cuda_backend.h"

namespace {

class SkipWithoutCudaDevice : public ::testing::EmptyTestEventListener {
 public:
  void OnTestStart(const ::testing::TestInfo&) override {
    static const bool has_device = pdvm::cuda_device_count() > 0;
    if (has_device) return;
    if (std::getenv("PDVM_REQUIRE_GPU")) {
      ADD_FAILURE() << "no CUDA device but PDVM_REQUIRE_GPU is set";
      return;
    }
    GTEST_SKIP() << "no CUDA device";
  }
};

// Registered during static initialisation, before gtest_main's main() runs the tests.
[[maybe_unused]] const bool skip_without_cuda_device_registered = [] {
  ::testing::UnitTest::GetInstance()->listeners().Append(new SkipWithoutCudaDevice);
  return true;
}();

}  // namespace
