// The fast CPU backend's UPG kernels (src/cpu/upg_matmul.cpp: the per-row matvec, and the
// row decoder feeding the prefill GEMM in src/cpu/fast_gemm.cpp) on every SIMD target against
// the reference decompressor and a double-precision dot, on random shapes, bit widths, block
// sizes, outliers and token counts.
// Iterate the targets the kernels are compiled for, not Highway's default set (which has SVE).
#include "cpu/fast_simd_targets.h"  // must precede the Highway headers
#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <cmath>
#include <random>

#include "cpu/upg_kernels.h"
#include "pdvm/upg.h"
#include "test_support.h"

namespace pdvm::cpu {
namespace {

TEST(UpgCpuKernel, MatchesReferenceDecompressorOnEveryTarget) {
  std::uniform_int_distribution<int> groups(1, 24), rows(1, 40), tokens(1, 7), coin(0, 1), block_log2(5, 7);
  for (int trial = 0; trial < 12; ++trial) {
    const int bits = coin(test::rng()) ? 4 : 3;
    const int64_t block = int64_t{1} << block_log2(test::rng());
    const int64_t k = block * groups(test::rng()), n = rows(test::rng()), n_tokens = tokens(test::rng());
    const double outliers = coin(test::rng()) ? 0.02 : 0.0;
    SCOPED_TRACE("bits " + std::to_string(bits) + " block " + std::to_string(block) + " k " + std::to_string(k) +
                 " n " + std::to_string(n) + " tokens " + std::to_string(n_tokens) + " outliers " +
                 std::to_string(outliers));
    const std::vector<float> w = test::random_floats(static_cast<size_t>(k * n), 0.05f);
    const std::vector<float> x = test::random_floats(static_cast<size_t>(k * n_tokens), 1.0f);
    const UpgEncoded e = upg_encode(w.data(), k, n, nullptr, {bits, block, outliers}, 2);
    const UpgMatrix m = e.view();
    std::vector<double> expected(static_cast<size_t>(n * n_tokens)), magnitude(expected.size());
    std::vector<float> row(static_cast<size_t>(k));
    for (int64_t j = 0; j < n; ++j) {
      upg_dequantize_row(m, j, row.data());
      for (int64_t t = 0; t < n_tokens; ++t) {
        for (int64_t i = 0; i < k; ++i) {
          expected[t * n + j] += static_cast<double>(row[i]) * x[t * k + i];
          magnitude[t * n + j] += std::fabs(static_cast<double>(row[i]) * x[t * k + i]);
        }
      }
    }
    PreparedActivation act;
    prepare_activation(x.data(), k, n_tokens, DotMethod::kInt16, act);
    for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
      SCOPED_TRACE(hwy::TargetName(target));
      hwy::SetSupportedTargetsForTest(target);
      std::vector<float> out(expected.size(), -1.0f);
      upg_matmul_rows(m, act, out.data(), n, 0, n);
      for (size_t i = 0; i < out.size(); ++i) {
        // int16 activation rounding: at most 2^-15 of each block's largest |x| per element.
        ASSERT_NEAR(out[i], expected[i], 2e-4 * magnitude[i] + 1e-6) << "output " << i;
      }
    }
    hwy::SetSupportedTargetsForTest(0);
  }
}

TEST(UpgCpuKernel, GemmMatchesReferenceDecompressorOnEveryTarget) {
  std::uniform_int_distribution<int> groups(1, 24), rows(1, 40), tokens(8, 21), coin(0, 1);
  for (int trial = 0; trial < 8; ++trial) {
    const int bits = coin(test::rng()) ? 4 : 3;
    const int64_t block = coin(test::rng()) ? 32 : 64;
    const int64_t k = block * groups(test::rng()), n = rows(test::rng()), n_tokens = tokens(test::rng());
    const double outliers = coin(test::rng()) ? 0.02 : 0.0;
    SCOPED_TRACE("bits " + std::to_string(bits) + " block " + std::to_string(block) + " k " + std::to_string(k) +
                 " n " + std::to_string(n) + " tokens " + std::to_string(n_tokens) + " outliers " +
                 std::to_string(outliers));
    const std::vector<float> w = test::random_floats(static_cast<size_t>(k * n), 0.05f);
    const std::vector<float> x = test::random_floats(static_cast<size_t>(k * n_tokens), 1.0f);
    const UpgEncoded e = upg_encode(w.data(), k, n, nullptr, {bits, block, outliers}, 2);
    const UpgMatrix m = e.view();
    std::vector<float> rows_ref(static_cast<size_t>(k * n));
    for (int64_t j = 0; j < n; ++j) upg_dequantize_row(m, j, rows_ref.data() + j * k);
    std::vector<double> expected(static_cast<size_t>(n * n_tokens)), magnitude(expected.size());
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t t = 0; t < n_tokens; ++t) {
        for (int64_t i = 0; i < k; ++i) {
          const double p = static_cast<double>(rows_ref[j * k + i]) * x[t * k + i];
          expected[t * n + j] += p;
          magnitude[t * n + j] += std::fabs(p);
        }
      }
    }
    PreparedActivation act;
    act.k = k;
    act.n_tokens = n_tokens;
    act.x = x.data();
    for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
      SCOPED_TRACE(hwy::TargetName(target));
      hwy::SetSupportedTargetsForTest(target);
      std::vector<float> row(static_cast<size_t>(k));
      for (int64_t j = 0; j < n; ++j) {
        upg_dequantize_row_fast(m, j, row.data());
        for (int64_t i = 0; i < k; ++i) ASSERT_EQ(row[i], rows_ref[j * k + i]) << "row " << j << " col " << i;
      }
      std::vector<float> out(expected.size(), -1.0f);
      MatmulTask task;
      task.type = m.type();
      task.upg = &m;
      task.act = &act;
      task.out = out.data();
      task.out_stride = n;
      gemm_rows(task, 0, n);
      for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], expected[i], 1e-5 * magnitude[i] + 1e-6) << "output " << i;
    }
    hwy::SetSupportedTargetsForTest(0);
  }
}

}  // namespace
}  // namespace pdvm::cpu
