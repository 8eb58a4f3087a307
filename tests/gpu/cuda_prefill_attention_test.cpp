// Prefill attention (more than kMaxExactAttentionTokens query tokens: the tiled tensor-core
// kernel) against the CPU reference backend on fresh random inputs: token counts that are not
// multiples of the 64-token tile, GQA and not, head_dim 64 and 128, a prefix already in the
// cache, positions out of order, and every KV cache type.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "cuda_test_util.h"
#include "pdvm/backend_registry.h"

namespace pdvm::test {
namespace {

struct PrefillCase {
  int n_head, n_head_kv, head_dim;
  int64_t n_ctx;
  int n_past;    // keys stored before the prompt's own
  int n_tokens;  // query tokens
  bool shuffled; // positions are a permutation of n_past .. n_past + n_tokens - 1
};

// F16 Q, K, V and softmax weights with fp32 accumulation: ~1e-4 typical, bounded well below
// what a wrong mask or a lost key tile makes (a whole key's weight, >= 1e-2 on short rows).
constexpr double kAbsTol = 2e-3;
constexpr double kRelTol = 2e-3;

TEST(CudaPrefillAttention, MatchesTheReferenceBackend) {
  PDVM_CUDA_BACKEND_OR_SKIP(gpu);
  const std::unique_ptr<Backend> ref = create_backend("cpu-ref");
  const PrefillCase cases[] = {
      {32, 8, 64, 1024, 0, 200, false},   // llama-3.2-1b heads, 3 tiles + 8 tokens
      {6, 6, 128, 700, 131, 75, false},   // no GQA, prefix not a multiple of the key tile
      {8, 1, 128, 2048, 1000, 97, false}, // one KV head, long prefix
      {4, 2, 64, 512, 20, 9, false},      // just above the decode kernel's limit
      {5, 5, 64, 600, 37, 130, true},     // positions out of order
      {40, 40, 128, 600, 0, 65, false},   // llama-2-13b heads
  };
  for (TensorType cache_type : {TensorType::kF16, TensorType::kF32, TensorType::kQ8_0}) {
    for (const PrefillCase& c : cases) {
      const std::string what = std::string(type_name(cache_type)) + " heads " + std::to_string(c.n_head) + "/" +
                               std::to_string(c.n_head_kv) + " dim " + std::to_string(c.head_dim) + " past " +
                               std::to_string(c.n_past) + " tokens " + std::to_string(c.n_tokens) +
                               (c.shuffled ? " shuffled" : "");
      const int64_t width = int64_t{c.head_dim} * c.n_head_kv;
      const int64_t q_width = int64_t{c.head_dim} * c.n_head;
      const int total = c.n_past + c.n_tokens;
      const std::vector<float> keys = random_floats(static_cast<size_t>(width * total));
      const std::vector<float> values = random_floats(static_cast<size_t>(width * total));
      const std::vector<float> q = random_floats(static_cast<size_t>(q_width * c.n_tokens));
      std::vector<int32_t> all_pos(static_cast<size_t>(total));
      std::iota(all_pos.begin(), all_pos.end(), 0);
      std::vector<int32_t> pos(all_pos.begin() + c.n_past, all_pos.end());
      if (c.shuffled) std::shuffle(pos.begin(), pos.end(), rng());
      const AttentionConfig config{c.n_head, c.n_head_kv, c.head_dim,
                                   1.0f / std::sqrt(static_cast<float>(c.head_dim))};

      auto run = [&](Backend& backend, bool poison) {
        Tensor k_cache = poison ? alloc_poisoned(backend, cache_type, {width, c.n_ctx, 1, 1})
                                : backend.alloc(cache_type, {width, c.n_ctx, 1, 1});
        Tensor v_cache = poison ? alloc_poisoned(backend, cache_type, {width, c.n_ctx, 1, 1})
                                : backend.alloc(cache_type, {width, c.n_ctx, 1, 1});
        backend.kv_store(k_cache, v_cache, upload_f32(backend, keys, {width, total, 1, 1}),
                         upload_f32(backend, values, {width, total, 1, 1}), upload_i32(backend, all_pos));
        Tensor out = poison ? alloc_poisoned(backend, TensorType::kF32, {q_width, c.n_tokens, 1, 1})
                            : backend.alloc(TensorType::kF32, {q_width, c.n_tokens, 1, 1});
        backend.attention(upload_f32(backend, q, {q_width, c.n_tokens, 1, 1}), k_cache, v_cache,
                          upload_i32(backend, pos), config, out);
        return download<float>(backend, out);
      };
      const std::vector<float> want = run(*ref, false);
      const std::vector<float> got = run(*gpu, true);
      ASSERT_EQ(got.size(), want.size()) << what;
      int bad = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        if (!(std::fabs(got[i] - want[i]) <= kAbsTol + kRelTol * std::fabs(want[i])) && bad++ < 5)
          ADD_FAILURE() << what << ": token " << i / q_width << " head " << i % q_width / c.head_dim << " dim "
                        << i % c.head_dim << " got " << got[i] << " want " << want[i];
      }
      EXPECT_EQ(bad, 0) << what;
    }
  }
}

}  // namespace
}  // namespace pdvm::test
