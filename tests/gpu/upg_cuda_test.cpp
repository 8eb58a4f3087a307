// UPG on the CUDA backend: matvec/matmul and the row gather against the reference
// decompressor on random shapes, and a converted synthetic model decoding the same greedy
// tokens on cuda as on cpu-ref.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <random>

#include "cuda_test_util.h"
#include "model/synth_model.h"
#include "pdvm/engine.h"
#include "pdvm/upg.h"
#include "upg/upg_convert.h"

namespace pdvm {
namespace {

TEST(UpgCuda, MatmulAndGetRowsMatchTheReferenceDecompressor) {
  PDVM_CUDA_BACKEND_OR_SKIP(backend);
  std::uniform_int_distribution<int> groups(1, 40), rows(1, 300), tokens(1, 5), coin(0, 1);
  for (int trial = 0; trial < 10; ++trial) {
    const int bits = coin(test::rng()) ? 4 : 3;
    const int64_t block = coin(test::rng()) ? 32 : 64;
    const int64_t k = block * groups(test::rng()), n = rows(test::rng()), n_tokens = tokens(test::rng());
    const double outliers = coin(test::rng()) ? 0.02 : 0.0;
    SCOPED_TRACE("bits " + std::to_string(bits) + " k " + std::to_string(k) + " n " + std::to_string(n) +
                 " tokens " + std::to_string(n_tokens) + " outliers " + std::to_string(outliers));
    const std::vector<float> w = test::random_floats(static_cast<size_t>(k * n), 0.05f);
    const std::vector<float> x = test::random_floats(static_cast<size_t>(k * n_tokens), 1.0f);
    const UpgEncoded e = upg_encode(w.data(), k, n, nullptr, {bits, block, outliers}, 2);
    const UpgMatrix m = e.view();
    Tensor weight = backend->load_weight(m.type(), {k, n, 1, 1}, &m);
    Tensor xt = test::upload_f32(*backend, x, {k, n_tokens, 1, 1});
    Tensor out = backend->alloc(TensorType::kF32, {n, n_tokens, 1, 1});
    backend->matmul(weight, xt, out);
    std::vector<float> got(static_cast<size_t>(n * n_tokens));
    backend->read(out, got.data(), got.size() * sizeof(float));
    std::vector<float> row(static_cast<size_t>(k));
    for (int64_t j = 0; j < n; ++j) {
      upg_dequantize_row(m, j, row.data());
      for (int64_t t = 0; t < n_tokens; ++t) {
        double expected = 0.0, magnitude = 0.0;
        for (int64_t i = 0; i < k; ++i) {
          expected += static_cast<double>(row[i]) * x[t * k + i];
          magnitude += std::fabs(static_cast<double>(row[i]) * x[t * k + i]);
        }
        ASSERT_NEAR(got[t * n + j], expected, 1e-5 * magnitude + 1e-6) << "row " << j << " token " << t;
      }
    }
    std::vector<int32_t> ids(static_cast<size_t>(n_tokens));
    for (int32_t& id : ids) id = std::uniform_int_distribution<int32_t>(0, static_cast<int32_t>(n - 1))(test::rng());
    Tensor id_tensor = test::upload_i32(*backend, ids);
    Tensor gathered = backend->alloc(TensorType::kF32, {k, n_tokens, 1, 1});
    backend->get_rows(weight, id_tensor, gathered);
    std::vector<float> rows_out(static_cast<size_t>(k * n_tokens));
    backend->read(gathered, rows_out.data(), rows_out.size() * sizeof(float));
    for (int64_t t = 0; t < n_tokens; ++t) {
      upg_dequantize_row(m, ids[t], row.data());
      for (int64_t i = 0; i < k; ++i) ASSERT_EQ(rows_out[t * k + i], row[i]) << "token " << t << " col " << i;
    }
  }
}

TEST(UpgCuda, ConvertedModelDecodesLikeTheReference) {
  PDVM_CUDA_BACKEND_OR_SKIP(probe);
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("pdvm_upg_cuda_test_" + std::to_string(getpid()));
  fs::create_directories(dir);
  const synth::ModelPlan plan = synth::plan_model(synth::shape_by_name("tiny"), TensorType::kF32, test::rng()());
  synth::write_model(plan, dir / "in.gguf", 2);
  UpgConvertOptions options;
  options.calibration = "none";
  options.threads = 2;
  convert_gguf_upg(GgufFile::open(dir / "in.gguf"), dir / "upg4.gguf", options);
  const auto session = [&](const std::string& backend) {
    SessionOptions o;
    o.model_path = dir / "upg4.gguf";
    o.backend = backend;
    o.n_ctx = 64;
    o.kv_type = TensorType::kF32;
    o.gpu_mode = "unfused";
    return std::make_unique<Session>(o);
  };
  const std::vector<int32_t> prompt = {1, 11, 4, 8};
  EXPECT_EQ(session("cuda")->generate_greedy(prompt, 24), session("cpu-ref")->generate_greedy(prompt, 24));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace pdvm
