// The fast CPU backend's matmul kernels against the reference dequantization and plain
// double-precision loops, on fresh random inputs of awkward sizes.
// Iterate the targets the kernels are compiled for, not Highway's default set (which has SVE).
#include "cpu/fast_simd_targets.h"  // must precede the Highway headers
#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <cmath>
#include <cstring>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "cpu/fast_kernels.h"
#include "cpu/fast_thread_pool.h"
#include "pdvm/cpu_bandwidth.h"
#include "pdvm/error.h"
#include "pdvm/tensor_type.h"
#include "test_support.h"

namespace pdvm::cpu {
namespace {

// Random weight rows in the GGUF layout of `type`. Types without a reference quantizer get
// random bytes with sane half-precision scale fields.
std::vector<uint8_t> random_weights(TensorType type, int64_t k, int64_t n_rows) {
  const int64_t row_bytes = type_bytes(type, k);
  std::vector<uint8_t> bytes(static_cast<size_t>(row_bytes * n_rows));
  if (type_info(type).quantizable) {
    for (int64_t r = 0; r < n_rows; ++r) {
      const std::vector<float> values = test::random_floats(static_cast<size_t>(k), 0.5f);
      quantize_row(type, values.data(), bytes.data() + r * row_bytes, k);
    }
    return bytes;
  }
  std::uniform_int_distribution<int> byte(0, 255);
  for (uint8_t& b : bytes) b = static_cast<uint8_t>(byte(test::rng()));
  std::uniform_real_distribution<float> scale(0.001f, 0.05f);
  auto set_half = [&](uint8_t* p) {
    const uint16_t h = fp32_to_fp16(scale(test::rng()));
    std::memcpy(p, &h, 2);
  };
  const int64_t block_bytes = type_info(type).block_bytes;
  for (uint8_t* block = bytes.data(); block < bytes.data() + bytes.size(); block += block_bytes) {
    if (type == TensorType::kQ6_K) {
      set_half(block + 208);
    } else {  // Q4_K, Q5_K: d and dmin lead the block
      set_half(block);
      set_half(block + 2);
    }
  }
  return bytes;
}

struct Case {
  TensorType type;
  DotMethod method;
  bool gemm = false;  // the prefill GEMM instead of the matvec kernels
};

std::string case_name(const testing::TestParamInfo<Case>& info) {
  const char* method = info.param.method == DotMethod::kInt8    ? "_int8"
                       : info.param.method == DotMethod::kInt16 ? "_int16"
                                                                : "_dequant_fma";
  return std::string(type_name(info.param.type)) + (info.param.gemm ? "_gemm" : method);
}

class MatmulKernelTest : public testing::TestWithParam<Case> {};

void check_matmul_against_reference(TensorType type, DotMethod method, bool gemm);
void check_matmul_against_reference(TensorType type, DotMethod method, bool gemm, int64_t k);

// Every instruction set this machine can run, not only the one the dispatcher prefers.
TEST_P(MatmulKernelTest, MatchesReferenceDequantizedDotOnEveryTarget) {
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    SCOPED_TRACE(hwy::TargetName(target));
    hwy::SetSupportedTargetsForTest(target);
    check_matmul_against_reference(GetParam().type, GetParam().method, GetParam().gemm);
  }
  hwy::SetSupportedTargetsForTest(0);
}

void check_matmul_against_reference(TensorType type, DotMethod method, bool gemm) {
  const int64_t block = type_info(type).block_elems;
  // Odd numbers of blocks, one beyond the kernels' 64-block scale chunk; plain types get
  // lengths that are no multiple of any vector.
  for (int64_t k : block == 1 ? std::vector<int64_t>{7 * kQ8Block + 5, 67 * kQ8Block + 3}
                   : block == 256 ? std::vector<int64_t>{3 * block}
                                  : std::vector<int64_t>{7 * block, 67 * block}) {
    SCOPED_TRACE("k = " + std::to_string(k));
    check_matmul_against_reference(type, method, gemm, k);
  }
}

void check_matmul_against_reference(TensorType type, DotMethod method, bool gemm, int64_t k) {
  const int64_t n_rows = 13;
  const std::vector<uint8_t> w = random_weights(type, k, n_rows);
  std::vector<float> w_ref(static_cast<size_t>(k * n_rows));
  for (int64_t r = 0; r < n_rows; ++r) {
    dequantize_row(type, w.data() + r * type_bytes(type, k), w_ref.data() + r * k, k);
  }

  for (int64_t n_tokens = 1; n_tokens <= 7; ++n_tokens) {
    const std::vector<float> x = test::random_floats(static_cast<size_t>(k * n_tokens));
    PreparedActivation act;
    prepare_activation(x.data(), k, n_tokens, method, act);
    std::vector<float> out(static_cast<size_t>(n_rows * n_tokens), NAN);
    MatmulTask task;
    task.type = type;
    task.method = method;
    task.w = w.data();
    task.row_bytes = type_bytes(type, k);
    task.act = &act;
    task.out = out.data();
    task.out_stride = n_rows;
    // Uneven ranges: the kernels must honour row_begin and partial row tiles.
    const auto run = gemm ? gemm_rows : matmul_rows;
    run(task, 0, 3);
    run(task, 3, 5);
    run(task, 5, n_rows);

    for (int64_t t = 0; t < n_tokens; ++t) {
      for (int64_t j = 0; j < n_rows; ++j) {
        double expected = 0.0, magnitude = 0.0, quantization_bound = 0.0;
        for (int64_t i = 0; i < k; ++i) {
          const double wi = w_ref[j * k + i], xi = x[t * k + i];
          expected += wi * xi;
          magnitude += std::fabs(wi * xi);
        }
        if (method != DotMethod::kDequantFma) {
          // Rounding x to 8/16 bits moves each element by at most half a step of its block.
          for (int64_t b = 0; b < k / kQ8Block; ++b) {
            double amax = 0.0, wsum = 0.0;
            for (int64_t i = b * kQ8Block; i < (b + 1) * kQ8Block; ++i) {
              amax = std::max(amax, std::fabs(double{x[t * k + i]}));
              wsum += std::fabs(double{w_ref[j * k + i]});
            }
            quantization_bound += amax / activation_levels(method) / 2.0 * wsum;
          }
        }
        const double tolerance = 1e-5 * magnitude + 1.01 * quantization_bound + 1e-6;
        EXPECT_NEAR(out[t * n_rows + j], expected, tolerance)
            << type_name(type) << " row " << j << " token " << t << " of " << n_tokens;
      }
    }
  }
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (TensorType type : {TensorType::kF32, TensorType::kF16, TensorType::kBF16, TensorType::kQ4_0,
                          TensorType::kQ4_1, TensorType::kQ5_0, TensorType::kQ5_1, TensorType::kQ8_0,
                          TensorType::kQ4_K, TensorType::kQ5_K, TensorType::kQ6_K}) {
    cases.push_back({type, DotMethod::kDequantFma});
    cases.push_back({type, DotMethod::kDequantFma, true});
    for (DotMethod method : {DotMethod::kInt8, DotMethod::kInt16}) {
      if (has_matmul_kernel(type, method)) cases.push_back({type, method});
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(AllTypes, MatmulKernelTest, testing::ValuesIn(all_cases()), case_name);

TEST(ThreadPool, CoversEveryItemOnceAcrossManyJobs) {
  ThreadPool pool(3);
  std::uniform_int_distribution<int64_t> size(1, 5000);
  for (int job = 0; job < 200; ++job) {
    const int64_t n = size(test::rng());
    std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
    pool.parallel_for(n, 1 + job % 17, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) hits[i].fetch_add(1);
    });
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "item " << i << " of job " << job;
  }
}

// The "on every target" tests loop over these; listing them makes a run show what it covered
// (scripts/test-aarch64.sh greps the line). An ARM build must at least carry NEON.
TEST(SimdDispatch, PicksTheBestCompiledTargetThisMachineRuns) {
  const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();
  ASSERT_FALSE(targets.empty());
  std::string names;
  for (int64_t target : targets) names += std::string(" ") + hwy::TargetName(target);
  std::cout << "SIMD targets tested:" << names << "\n";
  EXPECT_STREQ(simd_target_name(), hwy::TargetName(targets.front()));
#if HWY_ARCH_ARM_A64
  EXPECT_NE(names.find(" NEON"), std::string::npos) << names;
#endif
}

TEST(ReadBandwidthProbe, XorReduceMatchesScalarOnEveryTarget) {
  std::uniform_int_distribution<uint64_t> word;
  std::vector<uint64_t> words(3 * 1024 + 32);  // 97 strides of 256 bytes (4 AVX-512 vectors)
  for (uint64_t& w : words) w = word(test::rng());
  uint64_t expected = 0;
  for (uint64_t w : words) expected ^= w;
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    SCOPED_TRACE(hwy::TargetName(target));
    hwy::SetSupportedTargetsForTest(target);
    EXPECT_EQ(xor_reduce(reinterpret_cast<const uint8_t*>(words.data()),
                         static_cast<int64_t>(words.size() * sizeof(uint64_t))),
              expected);
  }
  hwy::SetSupportedTargetsForTest(0);
}

TEST(ReadBandwidthProbe, ReportsTheBytesAndThreadsItStreamed) {
  // Small, so the test is quick; the probe checks every pass's checksum itself.
  const HostReadBandwidth bw = measure_cpu_read_bandwidth(2, uint64_t{8} << 20, 3);
  EXPECT_EQ(bw.threads, 2);
  EXPECT_EQ(bw.bytes, uint64_t{8} << 20);
  EXPECT_GT(bw.seconds, 0.0);
  EXPECT_NEAR(bw.gb_per_s, static_cast<double>(bw.bytes) / bw.seconds / 1e9, 1e-6 * bw.gb_per_s);
}

TEST(ThreadPool, RejectsZeroThreads) { EXPECT_THROW(ThreadPool pool(0), Error); }

}  // namespace
}  // namespace pdvm::cpu
