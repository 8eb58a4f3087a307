// The CUDA matmul (matvec for few tokens, F16 GEMM for batches) and get_rows against plain
// loops over the reference dequantization, for every weight format, at awkward sizes.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <tuple>
#include <utility>

#include "cuda_test_util.h"

namespace pdvm::test {
namespace {

struct Case {
  TensorType type;
  int64_t k;
  int64_t n_rows;
};

// Rows: not a multiple of a warp's rows or a block's; k: whole blocks but an odd count.
std::vector<Case> cases() {
  std::vector<Case> out;
  for (TensorType type : {TensorType::kF32, TensorType::kF16, TensorType::kBF16, TensorType::kQ8_0, TensorType::kQ4_0,
                          TensorType::kQ4_1, TensorType::kQ5_0}) {
    out.push_back({type, 96, 37});
    out.push_back({type, 2080, 301});
  }
  for (TensorType type : {TensorType::kF32, TensorType::kF16, TensorType::kBF16}) out.push_back({type, 13, 5});
  // More rows than the streaming matvec's persistent grid has warps (several rows per warp),
  // rows of 33 Q4_0 chunks (a second column with one chunk, batches crossing rows).
  for (TensorType type : {TensorType::kF16, TensorType::kQ8_0, TensorType::kQ4_0}) out.push_back({type, 1056, 9001});
  for (TensorType type : {TensorType::kQ4_K, TensorType::kQ5_K, TensorType::kQ6_K}) {
    out.push_back({type, 768, 37});
    out.push_back({type, 2816, 129});
  }
  return out;
}

// |got - want| <= rel * sum |w x| + 1e-6: the error a float (or f16) dot product can make.
void expect_matmul_close(const std::vector<float>& w, const std::vector<float>& x, const std::vector<float>& got,
                         int64_t k, int64_t n_rows, int n_tokens, double rel, const std::string& what) {
  int bad = 0;
  for (int t = 0; t < n_tokens; ++t) {
    for (int64_t j = 0; j < n_rows; ++j) {
      double want = 0.0, magnitude = 0.0;
      for (int64_t i = 0; i < k; ++i) {
        const double p = static_cast<double>(w[j * k + i]) * x[t * k + i];
        want += p;
        magnitude += std::fabs(p);
      }
      const double value = got[t * n_rows + j];
      if (!(std::fabs(value - want) <= rel * magnitude + 1e-6) && bad++ < 5)
        ADD_FAILURE() << what << " token " << t << " row " << j << ": got " << value << " want " << want
                      << " (magnitude " << magnitude << ")";
    }
  }
  EXPECT_EQ(bad, 0) << what;
}

TEST(CudaMatmul, MatchesReferenceForEveryFormat) {
  PDVM_CUDA_BACKEND_OR_SKIP(backend);
  for (const Case& c : cases()) {
    const std::vector<uint8_t> bytes = random_weight_bytes(c.type, c.k, c.n_rows);
    const std::vector<float> w = dequantize_rows(c.type, bytes, c.k, c.n_rows);
    const Tensor weight = backend->load_weight(c.type, {c.k, c.n_rows, 1, 1}, bytes.data());
    // 1 and 3 tokens take the matvec path, 19 the GEMM path (F16 operands: looser bound).
    for (int n_tokens : {1, 3, 19}) {
      const std::vector<float> x = random_floats(static_cast<size_t>(c.k * n_tokens));
      const Tensor xt = upload_f32(*backend, x, {c.k, n_tokens, 1, 1});
      Tensor out = alloc_poisoned(*backend, TensorType::kF32, {c.n_rows, n_tokens, 1, 1});
      backend->matmul(weight, xt, out);
      const std::vector<float> got = download<float>(*backend, out);
      const std::string what = std::string(type_name(c.type)) + " k=" + std::to_string(c.k) +
                               " rows=" + std::to_string(c.n_rows) + " tokens=" + std::to_string(n_tokens);
      // Q5_0 has no native kernel: it is converted to F16 at load, which rounds.
      const double rel = n_tokens > 8 ? 4e-3 : (c.type == TensorType::kQ5_0 ? 1e-3 : 2e-5);
      expect_matmul_close(w, int8_activations(c.type, n_tokens) ? int8_rounded(x) : x, got, c.k, c.n_rows, n_tokens,
                          rel, what);
    }
  }
}

// Products of one input inside a recorded sequence are launched together (Q/K/V): matrices of
// different row counts sharing x, replayed from the graph with fresh x.
TEST(CudaMatmul, BatchedMatvecsMatchReference) {
  PDVM_CUDA_BACKEND_OR_SKIP(backend);
  const int64_t k = 1056;
  const int64_t rows[3] = {301, 77, 4500};
  for (TensorType type : {TensorType::kF32, TensorType::kF16, TensorType::kBF16, TensorType::kQ8_0, TensorType::kQ4_0,
                          TensorType::kQ4_1}) {
    std::vector<std::vector<float>> w;
    std::vector<Tensor> weights, outs;
    for (int64_t n : rows) {
      const std::vector<uint8_t> bytes = random_weight_bytes(type, k, n);
      w.push_back(dequantize_rows(type, bytes, k, n));
      weights.push_back(backend->load_weight(type, {k, n, 1, 1}, bytes.data()));
      outs.push_back(alloc_poisoned(*backend, TensorType::kF32, {n, 1, 1, 1}));
    }
    Tensor xt = backend->alloc(TensorType::kF32, {k, 1, 1, 1});
    const std::string key = std::string("batched matvec ") + std::string(type_name(type));
    for (int call = 0; call < 3; ++call) {  // direct run, capture, replay
      const std::vector<float> x = random_floats(static_cast<size_t>(k));
      backend->write(xt, x.data(), x.size() * sizeof(float));
      backend->run_recorded(key, [&] {
        for (int m = 0; m < 3; ++m) backend->matmul(weights[m], xt, outs[m]);
      });
      for (int m = 0; m < 3; ++m) {
        const std::vector<float> got = download<float>(*backend, outs[m]);
        expect_matmul_close(w[m], int8_activations(type, 1) ? int8_rounded(x) : x, got, k, rows[m], 1, 2e-5,
                            key + " call " + std::to_string(call) + " matrix " + std::to_string(m));
      }
    }
  }
}

// Long rows and fewer rows than the grid has warps (the 13B down projection, 13824 wide): the
// streaming matvec splits each row between 2-8 warps and adds the parts in a
// fixed order, so a second run gives the same bits. 13856 = 433 Q4_0 chunks, a last column of
// one chunk.
TEST(CudaMatmul, LongRowsSplitBetweenWarpsMatchReferenceAndRepeat) {
  PDVM_CUDA_BACKEND_OR_SKIP(backend);
  for (TensorType type : {TensorType::kQ4_0, TensorType::kQ8_0}) {
    for (auto [k, n_rows] : {std::pair<int64_t, int64_t>{13824, 300}, {13856, 77}, {13824, 5120}}) {
      const std::vector<uint8_t> bytes = random_weight_bytes(type, k, n_rows);
      const std::vector<float> w = dequantize_rows(type, bytes, k, n_rows);
      const Tensor weight = backend->load_weight(type, {k, n_rows, 1, 1}, bytes.data());
      const std::vector<float> x = random_floats(static_cast<size_t>(k));
      const Tensor xt = upload_f32(*backend, x, {k, 1, 1, 1});
      Tensor out = alloc_poisoned(*backend, TensorType::kF32, {n_rows, 1, 1, 1});
      backend->matmul(weight, xt, out);
      const std::vector<float> got = download<float>(*backend, out);
      const std::string what =
          std::string(type_name(type)) + " k=" + std::to_string(k) + " rows=" + std::to_string(n_rows);
      expect_matmul_close(w, int8_rounded(x), got, k, n_rows, 1, 2e-5, what);
      Tensor again = alloc_poisoned(*backend, TensorType::kF32, {n_rows, 1, 1, 1});
      backend->matmul(weight, xt, again);
      EXPECT_EQ(download<float>(*backend, again), got) << what << ": a second run differs";
    }
  }
}

TEST(CudaGetRows, MatchesReferenceDequantization) {
  PDVM_CUDA_BACKEND_OR_SKIP(backend);
  for (const Case& c : cases()) {
    const std::vector<uint8_t> bytes = random_weight_bytes(c.type, c.k, c.n_rows);
    const std::vector<float> w = dequantize_rows(c.type, bytes, c.k, c.n_rows);
    const Tensor table = backend->load_weight(c.type, {c.k, c.n_rows, 1, 1}, bytes.data());
    std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(c.n_rows - 1));
    std::vector<int32_t> ids = {static_cast<int32_t>(c.n_rows - 1), 0};
    for (int i = 0; i < 5; ++i) ids.push_back(pick(rng()));
    const Tensor id_tensor = upload_i32(*backend, ids);
    Tensor out = alloc_poisoned(*backend, TensorType::kF32, {c.k, static_cast<int64_t>(ids.size()), 1, 1});
    backend->get_rows(table, id_tensor, out);
    const std::vector<float> got = download<float>(*backend, out);
    int bad = 0;
    for (size_t t = 0; t < ids.size(); ++t) {
      for (int64_t i = 0; i < c.k; ++i) {
        const float want = w[ids[t] * c.k + i];
        // The converted (Q5_0 -> F16) layout rounds to F16; the others are exact up to FMA.
        const float tol = c.type == TensorType::kQ5_0 ? 1e-3f * std::fabs(want) + 1e-6f : 1e-6f * std::fabs(want) + 1e-7f;
        if (!(std::fabs(got[t * c.k + i] - want) <= tol) && bad++ < 5)
          ADD_FAILURE() << type_name(c.type) << " id " << ids[t] << " elem " << i << ": got " << got[t * c.k + i]
                        << " want " << want;
      }
    }
    EXPECT_EQ(bad, 0) << type_name(c.type) << " k=" << c.k;
  }
}

}  // namespace
}  // namespace pdvm::test
