// Every op of the fast CPU backend ("cpu") against the reference backend ("cpu-ref") on fresh
// random inputs: odd widths, 1..9 tokens (matvec and GEMM paths), grouped-query attention
// over f32, f16 and q8_0 KV caches.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <cmath>
#include <random>
#include <vector>

#include "pdvm/backend_registry.h"
#include "pdvm/error.h"
#include "pdvm/tensor_type.h"
#include "test_support.h"

namespace pdvm {
namespace {

class CpuFastOps : public testing::Test {
 protected:
  std::unique_ptr<Backend> fast_ = create_backend("cpu", BackendOptions{.n_threads = 2});
  std::unique_ptr<Backend> ref_ = create_backend("cpu-ref");

  static Tensor upload(Backend& b, TensorType type, std::array<int64_t, 4> ne, const void* bytes) {
    Tensor t = b.alloc(type, ne);
    b.write(t, bytes, t.n_bytes);
    return t;
  }
  static Tensor upload(Backend& b, const std::vector<float>& v, std::array<int64_t, 4> ne) {
    return upload(b, TensorType::kF32, ne, v.data());
  }
  static Tensor upload_ids(Backend& b, const std::vector<int32_t>& ids) {
    return upload(b, TensorType::kI32, {static_cast<int64_t>(ids.size()), 1, 1, 1}, ids.data());
  }
  static std::vector<float> download(Backend& b, const Tensor& t) {
    std::vector<float> v(static_cast<size_t>(t.n_elems()));
    b.read(t, v.data(), t.n_bytes);
    return v;
  }
  void check_attention(int head_dim, std::vector<TensorType> cache_types);
  static void expect_close(const std::vector<float>& actual, const std::vector<float>& expected,
                           float tolerance, const std::string& what) {
    ASSERT_EQ(actual.size(), expected.size());
    float scale = 0.0f;
    for (float e : expected) scale = std::max(scale, std::abs(e));
    for (size_t i = 0; i < actual.size(); ++i) {
      ASSERT_NEAR(actual[i], expected[i], tolerance * std::max(scale, 1e-3f)) << what << " element " << i;
    }
  }
};

TEST_F(CpuFastOps, RmsNormSwigluAdd) {
  for (int64_t n_tokens = 1; n_tokens <= 7; ++n_tokens) {
    const int64_t width = 67;
    const auto x = test::random_floats(static_cast<size_t>(width * n_tokens));
    const auto y = test::random_floats(static_cast<size_t>(width * n_tokens));
    const auto w = test::random_floats(static_cast<size_t>(width));
    std::vector<float> results[2][3];
    int i = 0;
    for (Backend* b : {fast_.get(), ref_.get()}) {
      Tensor tx = upload(*b, x, {width, n_tokens, 1, 1}), ty = upload(*b, y, {width, n_tokens, 1, 1});
      Tensor tw = upload(*b, w, {width, 1, 1, 1}), out = b->alloc(TensorType::kF32, {width, n_tokens, 1, 1});
      b->rms_norm(tx, tw, 1e-5f, out);
      results[i][0] = download(*b, out);
      b->swiglu(tx, ty, out);
      results[i][1] = download(*b, out);
      b->add(tx, ty, tx);  // out aliasing a
      results[i][2] = download(*b, tx);
      ++i;
    }
    expect_close(results[0][0], results[1][0], 1e-5f, "rms_norm");
    expect_close(results[0][1], results[1][1], 1e-5f, "swiglu");
    expect_close(results[0][2], results[1][2], 1e-6f, "add");
  }
}

TEST_F(CpuFastOps, RopeWithAndWithoutFrequencyFactors) {
  const int n_heads = 3, head_dim = 64;
  std::uniform_int_distribution<int32_t> position(0, 4000);
  for (int n_rot : {64, 32}) {
    for (bool factors : {false, true}) {
      const int64_t n_tokens = 5;
      const auto x = test::random_floats(static_cast<size_t>(n_heads * head_dim * n_tokens));
      std::vector<int32_t> pos(static_cast<size_t>(n_tokens));
      for (auto& p : pos) p = position(test::rng());
      std::vector<float> freq(static_cast<size_t>(n_rot / 2));
      for (auto& f : freq) f = std::uniform_real_distribution<float>(1.0f, 8.0f)(test::rng());
      std::vector<float> results[2];
      int i = 0;
      for (Backend* b : {fast_.get(), ref_.get()}) {
        Tensor tx = upload(*b, x, {n_heads * head_dim, n_tokens, 1, 1});
        Tensor tp = upload_ids(*b, pos);
        Tensor tf = upload(*b, freq, {n_rot / 2, 1, 1, 1});
        RopeConfig config{.n_rot = n_rot, .freq_base = 10000.0f, .freq_factors = factors ? &tf : nullptr};
        b->rope(tx, tp, n_heads, head_dim, config);
        results[i++] = download(*b, tx);
      }
      expect_close(results[0], results[1], 2e-5f, "rope n_rot " + std::to_string(n_rot));
    }
  }
}

TEST_F(CpuFastOps, KvStoreAndAttentionOnEveryCacheType) {
  check_attention(64, {TensorType::kF32, TensorType::kF16, TensorType::kQ8_0});
  check_attention(40, {TensorType::kF32, TensorType::kF16});  // the path for odd head sizes
}

void CpuFastOps::check_attention(int head_dim, std::vector<TensorType> cache_types) {
  const int n_head = 6, n_head_kv = 2;
  const int64_t width_q = n_head * head_dim, width_kv = n_head_kv * head_dim, n_ctx = 40;
  std::uniform_int_distribution<int> past(0, 25);
  for (TensorType cache_type : cache_types) {
    for (int64_t n_tokens = 1; n_tokens <= 7; ++n_tokens) {
      const int n_past = past(test::rng());
      const int64_t n_rows = n_past + n_tokens;
      const auto keys = test::random_floats(static_cast<size_t>(width_kv * n_rows));
      const auto values = test::random_floats(static_cast<size_t>(width_kv * n_rows));
      const auto q = test::random_floats(static_cast<size_t>(width_q * n_tokens));
      std::vector<int32_t> all_pos(static_cast<size_t>(n_rows)), pos(static_cast<size_t>(n_tokens));
      for (int64_t r = 0; r < n_rows; ++r) all_pos[r] = static_cast<int32_t>(r);
      for (int64_t t = 0; t < n_tokens; ++t) pos[t] = static_cast<int32_t>(n_past + t);
      std::vector<float> results[2];
      int i = 0;
      for (Backend* b : {fast_.get(), ref_.get()}) {
        Tensor k_cache = b->alloc(cache_type, {width_kv, n_ctx, 1, 1});
        Tensor v_cache = b->alloc(cache_type, {width_kv, n_ctx, 1, 1});
        Tensor tk = upload(*b, keys, {width_kv, n_rows, 1, 1}), tv = upload(*b, values, {width_kv, n_rows, 1, 1});
        Tensor all = upload_ids(*b, all_pos), tp = upload_ids(*b, pos);
        b->kv_store(k_cache, v_cache, tk, tv, all);
        Tensor tq = upload(*b, q, {width_q, n_tokens, 1, 1}), out = b->alloc(TensorType::kF32, {width_q, n_tokens, 1, 1});
        const AttentionConfig config{.n_head = n_head, .n_head_kv = n_head_kv, .head_dim = head_dim,
                                     .scale = 1.0f / std::sqrt(static_cast<float>(head_dim))};
        b->attention(tq, k_cache, v_cache, tp, config, out);
        results[i++] = download(*b, out);
      }
      expect_close(results[0], results[1], 1e-4f,
                   std::string(type_name(cache_type)) + " cache, head_dim " + std::to_string(head_dim) + ", " +
                       std::to_string(n_tokens) + " tokens");
    }
  }
}

TEST_F(CpuFastOps, MatmulMatvecAndGemmPaths) {
  const int64_t k = 32 * 9, n_rows = 37;
  for (TensorType type : {TensorType::kQ4_1, TensorType::kQ8_0, TensorType::kF16, TensorType::kQ6_K}) {
    const int64_t kk = type == TensorType::kQ6_K ? 256 * 2 : k;
    std::vector<uint8_t> w(static_cast<size_t>(type_bytes(type, kk) * n_rows));
    if (type_info(type).quantizable) {
      for (int64_t r = 0; r < n_rows; ++r) {
        const auto row = test::random_floats(static_cast<size_t>(kk), 0.3f);
        quantize_row(type, row.data(), w.data() + r * type_bytes(type, kk), kk);
      }
    } else {  // Q6_K: random bytes with a small finite scale per block
      for (auto& byte : w) byte = static_cast<uint8_t>(test::rng()());
      for (size_t block = 0; block < w.size(); block += 210) {
        const uint16_t d = fp32_to_fp16(0.01f);
        std::memcpy(w.data() + block + 208, &d, 2);
      }
    }
    for (int64_t n_tokens = 1; n_tokens <= 9; ++n_tokens) {
      const auto x = test::random_floats(static_cast<size_t>(kk * n_tokens));
      std::vector<float> results[2];
      int i = 0;
      for (Backend* b : {fast_.get(), ref_.get()}) {
        Tensor tw = b->load_weight(type, {kk, n_rows, 1, 1}, w.data());
        Tensor tx = upload(*b, x, {kk, n_tokens, 1, 1}), out = b->alloc(TensorType::kF32, {n_rows, n_tokens, 1, 1});
        b->matmul(tw, tx, out);
        results[i++] = download(*b, out);
      }
      expect_close(results[0], results[1], 1e-3f,
                   std::string(type_name(type)) + ", " + std::to_string(n_tokens) + " tokens");
    }
  }
}

// Q/K/V-like products of one input in one job (rows of 37, 13 and 13, not multiples of the
// GEMM's row tiles), against separate reference matmuls; the mixed-type case runs one by one.
TEST_F(CpuFastOps, MatmulSharedInputMatchesSeparateProducts) {
  const int64_t k = 32 * 5;
  const int64_t rows[] = {37, 13, 13};
  const std::vector<std::vector<TensorType>> type_sets = {
      {TensorType::kQ4_1, TensorType::kQ4_1, TensorType::kQ4_1},
      {TensorType::kF16, TensorType::kF16, TensorType::kF16},
      {TensorType::kQ8_0, TensorType::kQ4_0, TensorType::kQ8_0}};
  for (const auto& types : type_sets) {
    std::vector<std::vector<uint8_t>> w(3);
    for (int i = 0; i < 3; ++i) {
      w[i].resize(static_cast<size_t>(type_bytes(types[i], k) * rows[i]));
      for (int64_t r = 0; r < rows[i]; ++r) {
        const auto row = test::random_floats(static_cast<size_t>(k), 0.3f);
        quantize_row(types[i], row.data(), w[i].data() + r * type_bytes(types[i], k), k);
      }
    }
    for (int64_t n_tokens : {1, 3, 9}) {
      const auto x = test::random_floats(static_cast<size_t>(k * n_tokens));
      std::vector<Tensor> fast_w, fast_out;
      for (int i = 0; i < 3; ++i) {
        fast_w.push_back(fast_->load_weight(types[i], {k, rows[i], 1, 1}, w[i].data()));
        fast_out.push_back(fast_->alloc(TensorType::kF32, {rows[i], n_tokens, 1, 1}));
      }
      fast_->matmul_shared_input({&fast_w[0], &fast_w[1], &fast_w[2]}, upload(*fast_, x, {k, n_tokens, 1, 1}),
                                 {&fast_out[0], &fast_out[1], &fast_out[2]});
      for (int i = 0; i < 3; ++i) {
        Tensor ref_w = ref_->load_weight(types[i], {k, rows[i], 1, 1}, w[i].data());
        Tensor ref_out = ref_->alloc(TensorType::kF32, {rows[i], n_tokens, 1, 1});
        ref_->matmul(ref_w, upload(*ref_, x, {k, n_tokens, 1, 1}), ref_out);
        expect_close(download(*fast_, fast_out[i]), download(*ref_, ref_out), 1e-3f,
                     std::string(type_name(types[i])) + " product " + std::to_string(i) + ", " +
                         std::to_string(n_tokens) + " tokens");
      }
    }
  }
}

TEST_F(CpuFastOps, GetRowsAndArgmax) {
  const int64_t width = 64, n_vocab = 33;
  std::vector<uint8_t> table(static_cast<size_t>(type_bytes(TensorType::kQ8_0, width) * n_vocab));
  for (int64_t r = 0; r < n_vocab; ++r) {
    const auto row = test::random_floats(static_cast<size_t>(width));
    quantize_row(TensorType::kQ8_0, row.data(), table.data() + r * type_bytes(TensorType::kQ8_0, width), width);
  }
  const std::vector<int32_t> ids = {5, 0, 32, 5};
  auto logits = test::random_floats(static_cast<size_t>(n_vocab * 3));
  logits[7] = logits[20] = 100.0f;  // a tie in row 0: the lower index wins
  std::vector<float> rows[2];
  std::vector<int32_t> argmax[2];
  int i = 0;
  for (Backend* b : {fast_.get(), ref_.get()}) {
    Tensor t = b->load_weight(TensorType::kQ8_0, {width, n_vocab, 1, 1}, table.data());
    Tensor tid = upload_ids(*b, ids), out = b->alloc(TensorType::kF32, {width, 4, 1, 1});
    b->get_rows(t, tid, out);
    rows[i] = download(*b, out);
    Tensor tl = upload(*b, logits, {n_vocab, 3, 1, 1}), am = b->alloc(TensorType::kI32, {3, 1, 1, 1});
    b->argmax(tl, am);
    argmax[i].resize(3);
    b->read(am, argmax[i].data(), 12);
    ++i;
  }
  expect_close(rows[0], rows[1], 1e-6f, "get_rows");
  EXPECT_EQ(argmax[0], argmax[1]);
  EXPECT_EQ(argmax[0][0], 7);
}

TEST_F(CpuFastOps, OutOfRangeTokenIsAnError) {
  const std::vector<float> table = test::random_floats(4 * 8);
  Tensor t = upload(*fast_, table, {4, 8, 1, 1});
  Tensor ids = upload_ids(*fast_, {8});
  Tensor out = fast_->alloc(TensorType::kF32, {4, 1, 1, 1});
  EXPECT_THROW(fast_->get_rows(t, ids, out), Error);
}

}  // namespace
}  // namespace pdvm
