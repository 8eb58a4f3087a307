// The CUDA element-wise, norm, rope, KV-cache and attention ops, and graph recording,
// against plain double-precision loops on fresh random inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <tuple>

#include "cuda_test_util.h"

namespace pdvm::test {
namespace {

TEST(CudaOps, RmsNorm) {
  PDVM_CUDA_BACKEND_OR_SKIP(backend);
  const int64_t width = 1000;
  const int n_tokens = 3;
  const std::vector<float> x = random_floats(static_cast<size_t>(width * n_tokens), 2.0f);
  const std::vector<float> w = random_floats(static_cast<size_t>(width));
  const Tensor weight = backend->load_weight(TensorType::kF32, {width, 1, 1, 1}, w.data());
  const Tensor xt = upload_f32(*backend, x, {width, n_tokens, 1, 1});
  Tensor out = alloc_poisoned(*backend, TensorType::kF32, {width, n_tokens, 1, 1});
  const float eps = 1e-5f;
  backend->rms_norm(xt, weight, eps, out);
  const std::vector<float> got = download<float>(*backend, out);
  for (int t = 0; t < n_tokens; ++t) {
    double sum = 0.0;
    for (int64_t i = 0; i < width; ++i) sum += double(x[t * width + i]) * x[t * width + i];
    const double scale = 1.0 / std::sqrt(sum / width + eps);
    for (int64_t i = 0; i < width; ++i) {
      const double want = x[t * width + i] * scale * w[i];
      ASSERT_NEAR(got[t * width + i], want, 1e-5 * std::fabs(want) + 1e-6) << "token " << t << " elem " << i;
    }
  }
}

TEST(CudaOps, RopeAdjacentPairsWithAndWithoutFreqFactors) {
  PDVM_CUDA_BACKEND_OR_SKIP(backend);
  const int n_heads = 5, head_dim = 64, n_tokens = 4;
  for (int n_rot : {64, 32}) {
    for (bool with_factors : {false, true}) {
      const std::vector<float> x = random_floats(static_cast<size_t>(n_heads * head_dim * n_tokens));
      const std::vector<int32_t> pos = {0, 7, 301, 999};
      std::vector<float> factors(static_cast<size_t>(n_rot / 2));
      std::uniform_real_distribution<float> factor(1.0f, 8.0f);
      for (float& f : factors) f = factor(rng());
      Tensor xt = upload_f32(*backend, x, {n_heads * head_dim, n_tokens, 1, 1});
      const Tensor positions = upload_i32(*backend, pos);
      const Tensor factor_tensor = backend->load_weight(TensorType::kF32, {n_rot / 2, 1, 1, 1}, factors.data());
      RopeConfig config;
      config.n_rot = n_rot;
      config.freq_base = 10000.0f;
      config.freq_factors = with_factors ? &factor_tensor : nullptr;
      backend->rope(xt, positions, n_heads, head_dim, config);
      const std::vector<float> got = download<float>(*backend, xt);
      for (int t = 0; t < n_tokens; ++t) {
        for (int h = 0; h < n_heads; ++h) {
          const size_t base = static_cast<size_t>((t * n_heads + h) * head_dim);
          for (int i = 0; i < head_dim / 2; ++i) {
            double y0 = x[base + 2 * i], y1 = x[base + 2 * i + 1];
            if (2 * i < n_rot) {
              double theta = pos[t] * std::pow(10000.0, -2.0 * i / n_rot);
              if (with_factors) theta /= factors[i];
              const double x0 = y0, x1 = y1;
              y0 = x0 * std::cos(theta) - x1 * std::sin(theta);
              y1 = x0 * std::sin(theta) + x1 * std::cos(theta);
            }
            const double tol = 1e-3 * (std::fabs(y0) + std::fabs(y1)) + 1e-5;
            ASSERT_NEAR(got[base + 2 * i], y0, tol) << "n_rot " << n_rot << " t " << t << " h " << h << " i " << i;
            ASSERT_NEAR(got[base + 2 * i + 1], y1, tol) << "n_rot " << n_rot << " t " << t << " h " << h << " i " << i;
          }
        }
      }
    }
  }
}

TEST(CudaOps, SwigluAndAdd) {
  PDVM_CUDA_BACKEND_OR_SKIP(backend);
  const int64_t n = 4099;
  const std::vector<float> a = random_floats(n, 3.0f), b = random_floats(n);
  const Tensor at = upload_f32(*backend, a, {n, 1, 1, 1});
  Tensor bt = upload_f32(*backend, b, {n, 1, 1, 1});
  Tensor out = alloc_poisoned(*backend, TensorType::kF32, {n, 1, 1, 1});
  backend->swiglu(at, bt, out);
  const std::vector<float> got = download<float>(*backend, out);
  for (int64_t i = 0; i < n; ++i) {
    const double want = a[i] / (1.0 + std::exp(-double(a[i]))) * b[i];
    ASSERT_NEAR(got[i], want, 1e-5 * std::fabs(want) + 1e-6) << i;
  }
  backend->add(at, bt, bt);  // out aliasing an input, as the residual adds do
  const std::vector<float> sum = download<float>(*backend, bt);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(sum[i], a[i] + b[i]) << i;
}

// The backend holds a residual add back and runs it with the RMSNorm of its result, and runs
// the RoPE of Q and K in one launch; results must be those of the separate ops.
TEST(CudaOps, JoinedAddNormAndRopePairMatchTheSeparateOps) {
  PDVM_CUDA_BACKEND_OR_SKIP(backend);
  const int64_t width = 1000;
  const int n_tokens = 3;
  const std::vector<float> a = random_floats(static_cast<size_t>(width * n_tokens), 2.0f);
  const std::vector<float> b = random_floats(static_cast<size_t>(width * n_tokens));
  const std::vector<float> w = random_floats(static_cast<size_t>(width));
  const Tensor weight = backend->load_weight(TensorType::kF32, {width, 1, 1, 1}, w.data());
  Tensor x = upload_f32(*backend, a, {width, n_tokens, 1, 1});
  Tensor y = upload_f32(*backend, b, {width, n_tokens, 1, 1});
  const float eps = 1e-5f;
  backend->add(x, y, x);  // as the model: x += y, then y = norm(x)
  backend->rms_norm(x, weight, eps, y);
  const std::vector<float> sum = download<float>(*backend, x), norm = download<float>(*backend, y);
  for (int t = 0; t < n_tokens; ++t) {
    double squares = 0.0;
    for (int64_t i = 0; i < width; ++i) {
      const size_t e = static_cast<size_t>(t * width + i);
      ASSERT_EQ(sum[e], a[e] + b[e]) << "token " << t << " elem " << i;
      squares += double(sum[e]) * sum[e];
    }
    const double scale = 1.0 / std::sqrt(squares / width + eps);
    for (int64_t i = 0; i < width; ++i) {
      const size_t e = static_cast<size_t>(t * width + i);
      const double want = sum[e] * scale * w[i];
      ASSERT_NEAR(norm[e], want, 1e-5 * std::fabs(want) + 1e-6) << "token " << t << " elem " << i;
    }
  }

  const int head_dim = 64, q_heads = 6, k_heads = 2;
  const std::vector<int32_t> pos = {5, 77, 1030};
  const std::vector<float> q = random_floats(static_cast<size_t>(q_heads * head_dim * n_tokens));
  const std::vector<float> k = random_floats(static_cast<size_t>(k_heads * head_dim * n_tokens));
  Tensor qt = upload_f32(*backend, q, {q_heads * head_dim, n_tokens, 1, 1});
  Tensor kt = upload_f32(*backend, k, {k_heads * head_dim, n_tokens, 1, 1});
  const Tensor positions = upload_i32(*backend, pos);
  RopeConfig config;
  config.n_rot = head_dim;
  config.freq_base = 500000.0f;
  backend->rope(qt, positions, q_heads, head_dim, config);
  backend->rope(kt, positions, k_heads, head_dim, config);
  auto check = [&](const std::vector<float>& in, const std::vector<float>& got, int n_heads, const char* what) {
    for (int t = 0; t < n_tokens; ++t) {
      for (int h = 0; h < n_heads; ++h) {
        const size_t base = static_cast<size_t>((t * n_heads + h) * head_dim);
        for (int i = 0; i < head_dim / 2; ++i) {
          const double theta = pos[t] * std::pow(500000.0, -2.0 * i / head_dim);
          const double x0 = in[base + 2 * i], x1 = in[base + 2 * i + 1];
          const double y0 = x0 * std::cos(theta) - x1 * std::sin(theta), y1 = x0 * std::sin(theta) + x1 * std::cos(theta);
          const double tol = 1e-3 * (std::fabs(y0) + std::fabs(y1)) + 1e-5;
          ASSERT_NEAR(got[base + 2 * i], y0, tol) << what << " t " << t << " h " << h << " i " << i;
          ASSERT_NEAR(got[base + 2 * i + 1], y1, tol) << what << " t " << t << " h " << h << " i " << i;
        }
      }
    }
  };
  check(q, download<float>(*backend, qt), q_heads, "q");
  check(k, download<float>(*backend, kt), k_heads, "k");
}

// The RoPE pair of Q and K is held until the KV store of K, which joins it in one launch (a
// Q8_0 cache with head_dim 48, not whole 32-blocks per head, takes the separate launches): Q and
// K must be rotated as by the reference, and the cache rows must be exactly the reference
// conversion of the rotated K and of V.
TEST(CudaOps, RopePairThenKvStoreMatchReference) {
  PDVM_CUDA_BACKEND_OR_SKIP(backend);
  struct Case {
    int head_dim, n_rot;
    std::vector<int32_t> pos;
  };
  const int q_heads = 6, k_heads = 2, n_ctx = 1100;
  for (TensorType cache_type : {TensorType::kF32, TensorType::kF16, TensorType::kQ8_0}) {
    for (const Case& c : {Case{128, 128, {37}}, Case{64, 32, {5, 77, 1030}}, Case{48, 48, {1099, 0}}}) {
      const int n_tokens = static_cast<int>(c.pos.size()), hd = c.head_dim;
      const int64_t width = int64_t{k_heads} * hd;
      const std::string what = std::string(type_name(cache_type)) + " head_dim " + std::to_string(hd) + " n_rot " +
                               std::to_string(c.n_rot) + " tokens " + std::to_string(n_tokens);
      const std::vector<float> q = random_floats(static_cast<size_t>(q_heads * hd * n_tokens));
      const std::vector<float> k = random_floats(static_cast<size_t>(width * n_tokens));
      const std::vector<float> v = random_floats(static_cast<size_t>(width * n_tokens));
      Tensor qt = upload_f32(*backend, q, {q_heads * hd, n_tokens, 1, 1});
      Tensor kt = upload_f32(*backend, k, {width, n_tokens, 1, 1});
      const Tensor vt = upload_f32(*backend, v, {width, n_tokens, 1, 1});
      Tensor k_cache = alloc_poisoned(*backend, cache_type, {width, n_ctx, 1, 1});
      Tensor v_cache = alloc_poisoned(*backend, cache_type, {width, n_ctx, 1, 1});
      const Tensor positions = upload_i32(*backend, c.pos);
      RopeConfig config;
      config.n_rot = c.n_rot;
      config.freq_base = 10000.0f;
      backend->rope(qt, positions, q_heads, hd, config);
      backend->rope(kt, positions, k_heads, hd, config);
      backend->kv_store(k_cache, v_cache, kt, vt, positions);

      const std::vector<float> got_q = download<float>(*backend, qt), got_k = download<float>(*backend, kt);
      auto check = [&](const std::vector<float>& in, const std::vector<float>& got, int n_heads, const char* name) {
        for (int t = 0; t < n_tokens; ++t) {
          for (int h = 0; h < n_heads; ++h) {
            const size_t base = static_cast<size_t>((t * n_heads + h) * hd);
            for (int i = 0; i < hd / 2; ++i) {
              double y0 = in[base + 2 * i], y1 = in[base + 2 * i + 1];
              if (2 * i < c.n_rot) {
                const double theta = c.pos[t] * std::pow(10000.0, -2.0 * i / c.n_rot), x0 = y0, x1 = y1;
                y0 = x0 * std::cos(theta) - x1 * std::sin(theta);
                y1 = x0 * std::sin(theta) + x1 * std::cos(theta);
              }
              const double tol = 1e-3 * (std::fabs(y0) + std::fabs(y1)) + 1e-5;
              ASSERT_NEAR(got[base + 2 * i], y0, tol) << what << " " << name << " t " << t << " h " << h << " i " << i;
              ASSERT_NEAR(got[base + 2 * i + 1], y1, tol) << what << " " << name << " t " << t << " h " << h;
            }
          }
        }
      };
      check(q, got_q, q_heads, "q");
      check(k, got_k, k_heads, "k");
      const int64_t row_bytes = type_bytes(cache_type, width);
      const std::vector<uint8_t> k_bytes = download<uint8_t>(*backend, k_cache);
      const std::vector<uint8_t> v_bytes = download<uint8_t>(*backend, v_cache);
      std::vector<uint8_t> want(static_cast<size_t>(row_bytes));
      for (int t = 0; t < n_tokens; ++t) {
        const int64_t at = int64_t{c.pos[t]} * row_bytes;
        quantize_row(cache_type, got_k.data() + t * width, want.data(), width);
        ASSERT_EQ(0, std::memcmp(want.data(), k_bytes.data() + at, want.size())) << what << " K row " << c.pos[t];
        quantize_row(cache_type, v.data() + t * width, want.data(), width);
        ASSERT_EQ(0, std::memcmp(want.data(), v_bytes.data() + at, want.size())) << what << " V row " << c.pos[t];
      }
    }
  }
}

TEST(CudaOps, ArgmaxTakesTheLowestIndexOnTies) {
  PDVM_CUDA_BACKEND_OR_SKIP(backend);
  const int64_t n_vocab = 49157;
  const int n_tokens = 3;
  std::vector<float> logits = random_floats(static_cast<size_t>(n_vocab * n_tokens));
  std::uniform_int_distribution<int64_t> pick(0, n_vocab - 1);
  std::vector<int32_t> want(n_tokens);
  for (int t = 0; t < n_tokens; ++t) {
    float* row = logits.data() + t * n_vocab;
    const int64_t a = pick(rng()), b = pick(rng());
    row[a] = row[b] = 100.0f + t;  // a tie (or one maximum when a == b)
    want[t] = static_cast<int32_t>(std::min(a, b));
  }
  const Tensor lt = upload_f32(*backend, logits, {n_vocab, n_tokens, 1, 1});
  Tensor ids = alloc_poisoned(*backend, TensorType::kI32, {n_tokens, 1, 1, 1});
  backend->argmax(lt, ids);
  EXPECT_EQ(download<int32_t>(*backend, ids), want);
}

// Reference cache contents for a row of floats stored into a cache of `type`.
std::vector<float> stored_row(TensorType type, const float* src, int64_t width) {
  std::vector<uint8_t> bytes(static_cast<size_t>(type_bytes(type, width)));
  quantize_row(type, src, bytes.data(), width);
  std::vector<float> out(static_cast<size_t>(width));
  dequantize_row(type, bytes.data(), out.data(), width);
  return out;
}

struct AttentionCase {
  int n_head, n_head_kv, head_dim;
  int64_t n_ctx;
  int n_past;    // keys already stored before the query tokens
  int n_tokens;  // query tokens (1 = decode)
};

TEST(CudaOps, KvStoreAndAttentionMatchReference) {
  PDVM_CUDA_BACKEND_OR_SKIP(backend);
  const AttentionCase cases[] = {
      {4, 4, 64, 700, 650, 1},    {8, 2, 128, 3000, 2999, 1}, {6, 1, 32, 300, 10, 5}, {16, 1, 64, 1024, 700, 1},
      {2, 2, 256, 600, 300, 3},   {3, 1, 96, 2048, 1500, 1},  {32, 8, 64, 4096, 4000, 1}, {4, 2, 64, 512, 0, 37},
  };
  for (TensorType cache_type : {TensorType::kF32, TensorType::kF16, TensorType::kQ8_0}) {
    for (const AttentionCase& c : cases) {
      const int64_t width = int64_t{c.head_dim} * c.n_head_kv;
      const int total = c.n_past + c.n_tokens;
      const std::string what = std::string(type_name(cache_type)) + " heads " + std::to_string(c.n_head) + "/" +
                               std::to_string(c.n_head_kv) + " dim " + std::to_string(c.head_dim) + " ctx " +
                               std::to_string(c.n_ctx) + " past " + std::to_string(c.n_past) + " tokens " +
                               std::to_string(c.n_tokens);
      Tensor k_cache = alloc_poisoned(*backend, cache_type, {width, c.n_ctx, 1, 1});
      Tensor v_cache = alloc_poisoned(*backend, cache_type, {width, c.n_ctx, 1, 1});
      const std::vector<float> keys = random_floats(static_cast<size_t>(width * total));
      const std::vector<float> values = random_floats(static_cast<size_t>(width * total));
      // Past keys in one batch, then the query tokens' own keys, as the model does.
      auto store = [&](int first, int count) {
        std::vector<int32_t> pos(static_cast<size_t>(count));
        std::iota(pos.begin(), pos.end(), first);
        const Tensor kt = upload_f32(*backend, std::vector<float>(keys.begin() + first * width, keys.begin() + (first + count) * width), {width, count, 1, 1});
        const Tensor vt = upload_f32(*backend, std::vector<float>(values.begin() + first * width, values.begin() + (first + count) * width), {width, count, 1, 1});
        backend->kv_store(k_cache, v_cache, kt, vt, upload_i32(*backend, pos));
      };
      if (c.n_past > 0) store(0, c.n_past);
      store(c.n_past, c.n_tokens);

      // kv_store: the stored rows are exactly the reference conversion of the inputs.
      const int64_t row_bytes = type_bytes(cache_type, width);
      const std::vector<uint8_t> k_bytes = download<uint8_t>(*backend, k_cache);
      const std::vector<uint8_t> v_bytes = download<uint8_t>(*backend, v_cache);
      std::vector<float> k_ref(static_cast<size_t>(width * total)), v_ref(k_ref.size());
      for (int p = 0; p < total; ++p) {
        std::vector<uint8_t> want(static_cast<size_t>(row_bytes));
        quantize_row(cache_type, keys.data() + p * width, want.data(), width);
        ASSERT_EQ(0, std::memcmp(want.data(), k_bytes.data() + p * row_bytes, want.size())) << what << " K row " << p;
        quantize_row(cache_type, values.data() + p * width, want.data(), width);
        ASSERT_EQ(0, std::memcmp(want.data(), v_bytes.data() + p * row_bytes, want.size())) << what << " V row " << p;
        const std::vector<float> kr = stored_row(cache_type, keys.data() + p * width, width);
        const std::vector<float> vr = stored_row(cache_type, values.data() + p * width, width);
        std::copy(kr.begin(), kr.end(), k_ref.begin() + p * width);
        std::copy(vr.begin(), vr.end(), v_ref.begin() + p * width);
      }

      const int64_t q_width = int64_t{c.head_dim} * c.n_head;
      const std::vector<float> q = random_floats(static_cast<size_t>(q_width * c.n_tokens));
      std::vector<int32_t> pos(static_cast<size_t>(c.n_tokens));
      std::iota(pos.begin(), pos.end(), c.n_past);
      const Tensor qt = upload_f32(*backend, q, {q_width, c.n_tokens, 1, 1});
      Tensor out = alloc_poisoned(*backend, TensorType::kF32, {q_width, c.n_tokens, 1, 1});
      AttentionConfig config{c.n_head, c.n_head_kv, c.head_dim, 1.0f / std::sqrt(static_cast<float>(c.head_dim))};
      backend->attention(qt, k_cache, v_cache, upload_i32(*backend, pos), config, out);
      const std::vector<float> got = download<float>(*backend, out);

      const int group = c.n_head / c.n_head_kv;
      // Decode is fp32 throughout; prefill batches (> 8 tokens) multiply F16 operands.
      const double tol = c.n_tokens > 8 ? 2e-3 : 1e-4;
      int bad = 0;
      for (int t = 0; t < c.n_tokens; ++t) {
        for (int h = 0; h < c.n_head; ++h) {
          const float* qh = q.data() + t * q_width + h * c.head_dim;
          const int64_t kv_off = int64_t{h / group} * c.head_dim;
          std::vector<double> s(static_cast<size_t>(pos[t] + 1));
          for (int p = 0; p <= pos[t]; ++p) {
            double dot = 0.0;
            for (int d = 0; d < c.head_dim; ++d) dot += double(qh[d]) * k_ref[p * width + kv_off + d];
            s[p] = dot * config.scale;
          }
          const double mx = *std::max_element(s.begin(), s.end());
          double sum = 0.0;
          for (double& v : s) sum += (v = std::exp(v - mx));
          for (int d = 0; d < c.head_dim; ++d) {
            double want = 0.0;
            for (int p = 0; p <= pos[t]; ++p) want += s[p] * v_ref[p * width + kv_off + d];
            want /= sum;
            const float value = got[t * q_width + h * c.head_dim + d];
            if (!(std::fabs(value - want) <= tol + tol * std::fabs(want)) && bad++ < 5)
              ADD_FAILURE() << what << ": token " << t << " head " << h << " dim " << d << " got " << value
                            << " want " << want;
          }
        }
      }
      EXPECT_EQ(bad, 0) << what;
    }
  }
}

// A recorded sequence replays with new inputs written between replays. Its products of one
// input are launched together (three of one format, then one of another), which must not
// change any result.
TEST(CudaOps, RecordedSequenceReplaysWithNewInputs) {
  PDVM_CUDA_BACKEND_OR_SKIP(backend);
  const int64_t k = 512;
  struct Product {
    TensorType type;
    int64_t n;
    std::vector<float> w;
    Tensor weight, out;
  };
  std::vector<Product> products;
  for (auto [type, n] : {std::pair{TensorType::kQ4_0, int64_t{300}}, {TensorType::kQ4_0, 77}, {TensorType::kQ4_0, 5},
                         {TensorType::kQ8_0, 64}}) {
    const std::vector<uint8_t> bytes = random_weight_bytes(type, k, n);
    products.push_back({type, n, dequantize_rows(type, bytes, k, n), backend->load_weight(type, {k, n, 1, 1}, bytes.data()),
                        backend->alloc(TensorType::kF32, {n, 1, 1, 1})});
  }
  Tensor x = backend->alloc(TensorType::kF32, {k, 1, 1, 1});
  Tensor bias = backend->alloc(TensorType::kF32, {300, 1, 1, 1});
  Tensor ids = backend->alloc(TensorType::kI32, {1, 1, 1, 1});
  for (int step = 0; step < 5; ++step) {
    const std::vector<float> xv = random_floats(static_cast<size_t>(k)), bv = random_floats(300);
    backend->write(x, xv.data(), xv.size() * 4);
    backend->write(bias, bv.data(), bv.size() * 4);
    backend->run_recorded("test", [&] {
      for (Product& p : products) backend->matmul(p.weight, x, p.out);
      backend->add(products[0].out, bias, products[0].out);
      backend->argmax(products[0].out, ids);
    });
    for (size_t m = 0; m < products.size(); ++m) {
      const Product& p = products[m];
      const std::vector<float> x_used = int8_activations(p.type, 1) ? int8_rounded(xv) : xv;
      const std::vector<float> got = download<float>(*backend, p.out);
      for (int64_t j = 0; j < p.n; ++j) {
        double want = m == 0 ? bv[j] : 0.0;
        for (int64_t i = 0; i < k; ++i) want += double(p.w[j * k + i]) * x_used[i];
        ASSERT_NEAR(got[j], want, 1e-3) << "step " << step << " product " << m << " row " << j;
      }
    }
    const std::vector<float> y = download<float>(*backend, products[0].out);
    const int best = static_cast<int>(std::max_element(y.begin(), y.end()) - y.begin());
    EXPECT_EQ(download<int32_t>(*backend, ids)[0], best) << "step " << step;
  }
}

// A SwiGLU followed by a product of its output (the down projection) may run as one launch:
// the product and the SwiGLU output must be those of the separate ops, in and out of a
// recorded sequence, for types that join (Q8_0, Q4_0) and types that do not. 13824-wide rows
// (the 13B down projection's) are split between warps in the joined launch.
TEST(CudaOps, SwigluThenMatmulMatchesTheSeparateOps) {
  PDVM_CUDA_BACKEND_OR_SKIP(backend);
  for (auto [k, n, type] : {std::tuple{int64_t{1376}, int64_t{333}, TensorType::kQ4_0},
                            {int64_t{1376}, int64_t{333}, TensorType::kQ8_0},
                            {int64_t{1376}, int64_t{333}, TensorType::kF16},
                            {int64_t{13824}, int64_t{300}, TensorType::kQ4_0},
                            {int64_t{13824}, int64_t{5120}, TensorType::kQ4_0},
                            {int64_t{13824}, int64_t{5120}, TensorType::kQ8_0}}) {
    const std::vector<uint8_t> bytes = random_weight_bytes(type, k, n);
    const std::vector<float> w = dequantize_rows(type, bytes, k, n);
    const Tensor weight = backend->load_weight(type, {k, n, 1, 1}, bytes.data());
    Tensor gate = backend->alloc(TensorType::kF32, {k, 1, 1, 1}), up = backend->alloc(TensorType::kF32, {k, 1, 1, 1});
    Tensor hidden = alloc_poisoned(*backend, TensorType::kF32, {k, 1, 1, 1});
    Tensor out = alloc_poisoned(*backend, TensorType::kF32, {n, 1, 1, 1});
    for (int step = 0; step < 4; ++step) {  // eager, then recorded: direct run, capture, replay
      const std::vector<float> g = random_floats(static_cast<size_t>(k), 3.0f), u = random_floats(static_cast<size_t>(k));
      backend->write(gate, g.data(), g.size() * 4);
      backend->write(up, u.data(), u.size() * 4);
      auto ops = [&] {
        backend->swiglu(gate, up, hidden);
        backend->matmul(weight, hidden, out);
      };
      if (step == 0)
        ops();
      else
        backend->run_recorded("swiglu then matmul " + std::string(type_name(type)) + " " + std::to_string(k) + "x" +
                                  std::to_string(n),
                              ops);
      const std::vector<float> h = download<float>(*backend, hidden);
      for (int64_t i = 0; i < k; ++i) {
        const double want = g[i] / (1.0 + std::exp(-double(g[i]))) * u[i];
        ASSERT_NEAR(h[i], want, 1e-5 * std::fabs(want) + 1e-6) << type_name(type) << " step " << step << " " << i;
      }
      const std::vector<float> x_used = int8_activations(type, 1) ? int8_rounded(h) : h;
      const std::vector<float> got = download<float>(*backend, out);
      for (int64_t j = 0; j < n; ++j) {
        double want = 0.0, magnitude = 0.0;
        for (int64_t i = 0; i < k; ++i) {
          want += double(w[j * k + i]) * x_used[i];
          magnitude += std::fabs(double(w[j * k + i]) * x_used[i]);
        }
        ASSERT_NEAR(got[j], want, 2e-5 * magnitude + 1e-6) << type_name(type) << " step " << step << " row " << j;
      }
    }
  }
}

// A one-token RMSNorm (after a residual add or alone) followed by products of its output (Q/K/V,
// gate/up) may run as one launch in a recorded sequence: every block norms x itself and the
// last one to have read x writes the add's sum and the norm's output, which here alias the
// inputs as in the model (x = x + y, then y = norm(x)). Sum, norm and products must be those
// of the separate ops; F16 does not join. Q8_0 rows of 5120 and 8192 bytes are also split
// between warps (8192: the two-batch variant).
TEST(CudaOps, RmsNormThenMatmulsMatchTheSeparateOps) {
  setenv("PDVM_CUDA_JOIN_NORM", "1", 1);  // the join is opt-in; read when the backend is made
  PDVM_CUDA_BACKEND_OR_SKIP(backend);
  unsetenv("PDVM_CUDA_JOIN_NORM");
  struct Case {
    TensorType type;
    int64_t k;
    std::vector<int64_t> rows;
  };
  for (const Case& c : {Case{TensorType::kQ4_0, 5120, {300, 77, 129}}, Case{TensorType::kQ8_0, 5120, {300, 77, 129}},
                        Case{TensorType::kQ4_0, 2048, {1000, 1000}}, Case{TensorType::kQ8_0, 8192, {200}},
                        Case{TensorType::kF16, 1024, {96, 33}}}) {
    const int64_t k = c.k;
    std::vector<std::vector<float>> w;
    std::vector<Tensor> weights, outs;
    for (int64_t n : c.rows) {
      const std::vector<uint8_t> bytes = random_weight_bytes(c.type, k, n);
      w.push_back(dequantize_rows(c.type, bytes, k, n));
      weights.push_back(backend->load_weight(c.type, {k, n, 1, 1}, bytes.data()));
      outs.push_back(alloc_poisoned(*backend, TensorType::kF32, {n, 1, 1, 1}));
    }
    const std::vector<float> gain = random_floats(static_cast<size_t>(k));
    const Tensor norm_weight = backend->load_weight(TensorType::kF32, {k, 1, 1, 1}, gain.data());
    Tensor x = backend->alloc(TensorType::kF32, {k, 1, 1, 1}), y = backend->alloc(TensorType::kF32, {k, 1, 1, 1});
    const float eps = 1e-5f;
    for (bool with_add : {true, false}) {
      for (int step = 0; step < 4; ++step) {  // eager, then recorded: direct run, capture, replay
        const std::string what = std::string(type_name(c.type)) + " k=" + std::to_string(k) +
                                 (with_add ? " add" : "") + " step " + std::to_string(step);
        const std::vector<float> x0 = random_floats(static_cast<size_t>(k), 2.0f), y0 = random_floats(static_cast<size_t>(k));
        backend->write(x, x0.data(), x0.size() * 4);
        backend->write(y, y0.data(), y0.size() * 4);
        auto ops = [&] {
          if (with_add) backend->add(x, y, x);
          backend->rms_norm(x, norm_weight, eps, y);
          for (size_t m = 0; m < weights.size(); ++m) backend->matmul(weights[m], y, outs[m]);
        };
        if (step == 0)
          ops();
        else
          backend->run_recorded("norm then matmuls " + what.substr(0, what.find(" step")), ops);
        std::vector<double> sum(static_cast<size_t>(k));
        double squares = 0.0;
        for (size_t i = 0; i < sum.size(); ++i) {
          sum[i] = with_add ? double(x0[i] + y0[i]) : double(x0[i]);
          squares += sum[i] * sum[i];
        }
        const double scale = 1.0 / std::sqrt(squares / double(k) + eps);
        const std::vector<float> got_x = download<float>(*backend, x), got_y = download<float>(*backend, y);
        for (int64_t i = 0; i < k; ++i) {
          ASSERT_EQ(got_x[i], float(sum[i])) << what << " sum " << i;
          const double want = sum[i] * scale * gain[i];
          ASSERT_NEAR(got_y[i], want, 1e-5 * std::fabs(want) + 1e-6) << what << " norm " << i;
        }
        const std::vector<float> x_used = int8_activations(c.type, 1) ? int8_rounded(got_y) : got_y;
        for (size_t m = 0; m < weights.size(); ++m) {
          const std::vector<float> got = download<float>(*backend, outs[m]);
          for (int64_t j = 0; j < c.rows[m]; ++j) {
            double want = 0.0, magnitude = 0.0;
            for (int64_t i = 0; i < k; ++i) {
              want += double(w[m][j * k + i]) * x_used[i];
              magnitude += std::fabs(double(w[m][j * k + i]) * x_used[i]);
            }
            ASSERT_NEAR(got[j], want, 2e-5 * magnitude + 1e-6) << what << " matrix " << m << " row " << j;
          }
        }
      }
    }
  }
}

// RMSNorm, the gate and up products of its output, their SwiGLU and the down projection, as
// in a model's feed-forward half: in a recorded sequence the gate/up products of F32/F16/BF16
// rows compute the SwiGLU in their launch (split between warps for few rows, e.g. 333), padded
// rows (k = 1001) and Q8_0 take the separate ops. Every output must be the separate ops'.
TEST(CudaOps, GateUpThenSwigluMatchTheSeparateOps) {
  PDVM_CUDA_BACKEND_OR_SKIP(backend);
  struct Case {
    TensorType type;
    int64_t k, n;
    int n_tokens;
  };
  const int64_t n_out = 45;
  for (const Case& c : {Case{TensorType::kF16, 5120, 13824, 1}, Case{TensorType::kF16, 1032, 333, 2},
                        Case{TensorType::kBF16, 1000, 77, 1}, Case{TensorType::kF32, 2048, 301, 3},
                        Case{TensorType::kF16, 1001, 64, 1}, Case{TensorType::kQ8_0, 1024, 200, 1}}) {
    const int64_t k = c.k, n = c.n;
    const int T = c.n_tokens;
    const std::vector<uint8_t> gate_bytes = random_weight_bytes(c.type, k, n), up_bytes = random_weight_bytes(c.type, k, n);
    const std::vector<uint8_t> down_bytes = random_weight_bytes(TensorType::kF16, n, n_out);
    const std::vector<float> wg = dequantize_rows(c.type, gate_bytes, k, n), wu = dequantize_rows(c.type, up_bytes, k, n);
    const std::vector<float> wd = dequantize_rows(TensorType::kF16, down_bytes, n, n_out);
    const Tensor w_gate = backend->load_weight(c.type, {k, n, 1, 1}, gate_bytes.data());
    const Tensor w_up = backend->load_weight(c.type, {k, n, 1, 1}, up_bytes.data());
    const Tensor w_down = backend->load_weight(TensorType::kF16, {n, n_out, 1, 1}, down_bytes.data());
    const std::vector<float> gain = random_floats(static_cast<size_t>(k));
    const Tensor norm_weight = backend->load_weight(TensorType::kF32, {k, 1, 1, 1}, gain.data());
    Tensor x = backend->alloc(TensorType::kF32, {k, T, 1, 1}), y = backend->alloc(TensorType::kF32, {k, T, 1, 1});
    Tensor gate = alloc_poisoned(*backend, TensorType::kF32, {n, T, 1, 1});
    Tensor up = alloc_poisoned(*backend, TensorType::kF32, {n, T, 1, 1});
    Tensor hidden = alloc_poisoned(*backend, TensorType::kF32, {n, T, 1, 1});
    Tensor out = alloc_poisoned(*backend, TensorType::kF32, {n_out, T, 1, 1});
    const std::string name = std::string(type_name(c.type)) + " " + std::to_string(k) + "x" + std::to_string(n) +
                             " tokens " + std::to_string(T);
    // Rows of matrix w (width `width`) times vectors v (one per token) in double, checked
    // against got within float rounding of the terms' magnitudes.
    auto expect_products = [&](const std::vector<float>& w, int64_t width, int64_t rows, const std::vector<float>& v,
                               const std::vector<float>& got, const std::string& what) {
      for (int t = 0; t < T; ++t)
        for (int64_t j = 0; j < rows; ++j) {
          double want = 0.0, magnitude = 0.0;
          for (int64_t i = 0; i < width; ++i) {
            const double term = double(w[j * width + i]) * v[t * width + i];
            want += term;
            magnitude += std::fabs(term);
          }
          ASSERT_NEAR(got[t * rows + j], want, 2e-5 * magnitude + 1e-6) << what << " token " << t << " row " << j;
        }
    };
    for (int step = 0; step < 4; ++step) {  // eager, then recorded: direct run, capture, replay
      const std::string what = name + " step " + std::to_string(step);
      const std::vector<float> x0 = random_floats(static_cast<size_t>(k * T), 2.0f);
      backend->write(x, x0.data(), x0.size() * 4);
      auto ops = [&] {
        backend->rms_norm(x, norm_weight, 1e-5f, y);
        backend->matmul_shared_input({&w_gate, &w_up}, y, {&gate, &up});
        backend->swiglu(gate, up, hidden);
        backend->matmul(w_down, hidden, out);
      };
      if (step == 0)
        ops();
      else
        backend->run_recorded("gate/up then swiglu " + name, ops);
      const std::vector<float> got_y = download<float>(*backend, y);
      const std::vector<float> y_used = int8_activations(c.type, T) ? int8_rounded(got_y) : got_y;
      const std::vector<float> got_gate = download<float>(*backend, gate), got_up = download<float>(*backend, up);
      expect_products(wg, k, n, y_used, got_gate, what + " gate");
      expect_products(wu, k, n, y_used, got_up, what + " up");
      const std::vector<float> got_hidden = download<float>(*backend, hidden);
      for (int64_t i = 0; i < n * T; ++i) {
        const double g = got_gate[i];
        const double want = g / (1.0 + std::exp(-g)) * got_up[i];
        ASSERT_NEAR(got_hidden[i], want, 1e-5 * std::fabs(want) + 1e-6) << what << " swiglu " << i;
      }
      expect_products(wd, n, n_out, got_hidden, download<float>(*backend, out), what + " down");
    }
  }
}

TEST(CudaBandwidth, ProbeReportsAPlausibleRate) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const ReadBandwidth bw = measure_cuda_read_bandwidth(0, uint64_t{256} << 20, 3);
  EXPECT_EQ(bw.bytes, uint64_t{256} << 20);
  EXPECT_LT(bw.gb_per_s, 20000.0) << bw.device_name;
  if (under_compute_sanitizer()) GTEST_SKIP() << "no lower bound on the rate under compute-sanitizer";
  EXPECT_GT(bw.gb_per_s, 50.0) << bw.device_name;
}

}  // namespace
}  // namespace pdvm::test
