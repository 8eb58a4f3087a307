// The fused layer kernel against the CPU reference, on random weights of every supported type
// and on GQA and non-GQA shapes: each step feeds a fresh random hidden state at the next
// position, so the K/V append, RoPE and the split-context attention are all exercised.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>

#include "cuda/pdvm_repack.h"
#include "pdvm/error.h"
#include "pdvm/pdvm_fused.h"
#include "pdvm_reference.h"

namespace pdvm {
namespace {

struct Shape {
  const char* name;
  FusedConfig config;
};

FusedConfig make_config(int n_embd, int n_head, int n_head_kv, int head_dim, int n_ff, int n_ctx) {
  FusedConfig c;
  c.n_layer = 2;
  c.n_embd = n_embd;
  c.n_head = n_head;
  c.n_head_kv = n_head_kv;
  c.head_dim = head_dim;
  c.n_ff = n_ff;
  c.n_vocab = 96;
  c.n_ctx = n_ctx;
  c.n_rot = head_dim;
  c.rms_eps = 1e-5f;
  c.rope_base = 10000.0f;
  return c;
}

const Shape kShapes[] = {
    {"gqa4_hd32", make_config(256, 8, 2, 32, 512, 512)},
    {"mha_hd64", make_config(256, 4, 4, 64, 768, 512)},
    {"gqa4_hd128", make_config(512, 4, 1, 128, 1024, 512)},
    {"gqa8_hd64", make_config(512, 8, 1, 64, 1024, 512)},
};

// f16/bf16 weights multiply fp32 activations; models of Q4_1, Q4_K and Q6_K multiply int16
// activations (a rounding of 2^-16 of each 32-block's largest value; Q4_K and Q6_K keep their
// exact scales since session 19, f16-rounded products before); Q8_0, Q4_0 and
// UPG multiply int8 activations quantized per 32-block (as llama.cpp does), which costs about
// 1e-3..1e-2 of relative error.
double update_tolerance(TensorType type) {
  if (type == TensorType::kF16 || type == TensorType::kBF16) return 2e-4;
  if (type == TensorType::kQ4_1 || type == TensorType::kQ4_K || type == TensorType::kQ5_K || type == TensorType::kQ6_K)
    return 5e-4;
  return 3e-2;
}

// Runs `steps` positions through layer 1 (layer 0 only appends K/V on the reference side when
// skipped), comparing the layer's update of the hidden state at `check_every` positions.
void check_layer(const FusedConfig& config, TensorType type, int steps, int check_every) {
  test::RefModel ref(config, type, /*tied=*/true);
  FusedDecoder decoder(ref.view());
  const int layer = 1;
  double worst = 0;
  for (int pos = 0; pos < steps; ++pos) {
    std::vector<float> x = test::random_floats(config.n_embd);
    const bool check = pos % check_every == 0 || pos == steps - 1;
    std::vector<float> expected = x;
    ref.layer(layer, expected, pos, check);
    decoder.set_hidden(x);
    decoder.execute_layer(layer, pos);
    if (!check) continue;
    std::vector<float> got = decoder.hidden();
    std::vector<float> got_delta(x.size()), expected_delta(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      ASSERT_TRUE(std::isfinite(got[i])) << "element " << i << " at position " << pos;
      got_delta[i] = got[i] - x[i];
      expected_delta[i] = expected[i] - x[i];
    }
    const double err = test::relative_error(got_delta, expected_delta);
    worst = std::max(worst, err);
    ASSERT_LT(err, update_tolerance(type)) << "position " << pos;
  }
  std::printf("  %s worst relative error of the layer update: %.2e\n", std::string(type_name(type)).c_str(), worst);
}

class FusedLayerTest : public ::testing::TestWithParam<std::tuple<int, TensorType>> {};

TEST_P(FusedLayerTest, MatchesCpuReference) {
  const Shape& shape = kShapes[std::get<0>(GetParam())];
  check_layer(shape.config, std::get<1>(GetParam()), test::decode_steps(80), 7);
}

INSTANTIATE_TEST_SUITE_P(
    AllTypes, FusedLayerTest,
    ::testing::Combine(::testing::Range(0, static_cast<int>(std::size(kShapes))),
                       ::testing::Values(TensorType::kF16, TensorType::kBF16, TensorType::kQ8_0, TensorType::kQ4_0,
                                         TensorType::kQ4_1, TensorType::kQ4_K, TensorType::kQ5_K, TensorType::kQ6_K,
                                         TensorType::kUpg4,
                                         TensorType::kUpg3)),
    [](const auto& test_info) {
      return std::string(kShapes[std::get<0>(test_info.param)].name) + "_" +
             std::string(type_name(std::get<1>(test_info.param)));
    });

// 4k positions: several position blocks per context chunk. (With head_dim 128 the attention
// splits the context from position 64 on, a new chunk every 64 positions, so a racecheck run
// capped at a few hundred steps still runs the split and the merge.)
TEST(FusedLayer, LongContext) {
  FusedConfig config = make_config(512, 4, 1, 128, 1024, 4096);
  check_layer(config, TensorType::kF16, test::decode_steps(4096), 1000);
}

// An attention item walks its positions in steps (640 positions a step at head_dim 32 with 20
// warps a CTA) and carries each query head's softmax maximum and sum from step to step. With at
// least as many KV heads as CTAs a head's whole context is one item, so 760 positions take two
// steps.
TEST(FusedLayer, AttentionItemsOfSeveralSteps) {
  const FusedConfig config = make_config(256, 512, 256, 32, 512, 768);
  check_layer(config, TensorType::kF16, test::decode_steps(760), 97);
}

// Decode splits the O and down rows between warps only where a CTA's share has few, long rows
// (13B shapes on an H100's 132 CTAs); PDVM_FUSED_SPLIT forces each split here, on every type
// that can take one, and the layer must still match the reference.
TEST(FusedLayer, SplitRowsMatchCpuReference) {
  const FusedConfig config = make_config(1024, 8, 2, 128, 8192, 128);
  for (const char* split : {"1", "2", "3"}) {
    setenv("PDVM_FUSED_SPLIT", split, 1);
    for (TensorType type : {TensorType::kF16, TensorType::kQ8_0, TensorType::kQ4_0, TensorType::kQ4_1,
                            TensorType::kQ6_K}) {
      SCOPED_TRACE(std::string("split ") + split + ", " + std::string(type_name(type)));
      const int format = fused::format_of(type);
      // The down rows (8192 wide) have the columns for every split: the path under test runs.
      // The largest split the CTA's warps allow, up to the one asked for.
      const int grid = 132;
      EXPECT_EQ(fused::row_parts_log2(format, config.n_embd, fused::row_bytes_of(format, config.n_ff), grid),
                std::min(split[0] - '0', fused::max_row_parts_log2()));
      check_layer(config, type, test::decode_steps(24), 5);
    }
  }
  unsetenv("PDVM_FUSED_SPLIT");
}

// h handed to the down phase as quantized blocks (int8, or int16 for the types that multiply
// int16 activations) from shares of whole blocks (PDVM_FUSED_H_BLOCKS=1; decode takes it on its
// own only where such shares stay balanced, as at llama-3.2-1b's size).
TEST(FusedLayer, QuantizedHandoffOfHMatchesCpuReference) {
  setenv("PDVM_FUSED_H_BLOCKS", "1", 1);
  for (const Shape& shape : kShapes) {
    for (TensorType type : {TensorType::kQ8_0, TensorType::kQ4_0, TensorType::kQ4_1, TensorType::kQ4_K,
                            TensorType::kQ5_K, TensorType::kQ6_K}) {
      SCOPED_TRACE(std::string(shape.name) + ", " + std::string(type_name(type)));
      test::RefModel ref(shape.config, type, true);
      const FusedDecoder decoder(ref.view());
      EXPECT_EQ(decoder.quantized_handoffs(), decoder.int16_activations() ? "h" : "attention output, h");
      check_layer(shape.config, type, test::decode_steps(40), 7);
    }
  }
  unsetenv("PDVM_FUSED_H_BLOCKS");
}

// The rule decode uses on its own, for an H100's 132 CTAs.
TEST(FusedLayer, SplitsOnlyLongRowsOfFewPerCta) {
  unsetenv("PDVM_FUSED_SPLIT");
  const auto parts_log2 = [](TensorType type, int rows, int cols) {
    const int format = fused::format_of(type);
    return fused::row_parts_log2(format, rows, fused::row_bytes_of(format, cols), 132);
  };
  // 20 warps (kThreads 640) allow 1, 2 or 4 parts.
  EXPECT_EQ(fused::max_row_parts_log2(), 2);
  // llama-3-8b down (4096 x 14336) in Q8_0: 32 rows a CTA, 2 on some warps; four parts of 7
  // columns even that out (9 batches of 6 loads on the longest warp instead of 10).
  EXPECT_EQ(parts_log2(TensorType::kQ8_0, 4096, 14336), 2);
  // Its Q4_0 walk (4 loads a batch) and llama-2-13b's down (5120 x 13824, 39 rows a CTA) gain no
  // batch from a split, nor does the 13B O projection or llama-3.2-1b's down projection.
  EXPECT_EQ(parts_log2(TensorType::kQ4_0, 4096, 14336), 0);
  EXPECT_EQ(parts_log2(TensorType::kQ4_0, 5120, 13824), 0);
  EXPECT_EQ(parts_log2(TensorType::kQ8_0, 5120, 13824), 0);
  EXPECT_EQ(parts_log2(TensorType::kQ4_0, 5120, 5120), 0);
  EXPECT_EQ(parts_log2(TensorType::kQ4_0, 2048, 8192), 0);
  // Float rows stream at full rate unsplit; UPG rows never split.
  EXPECT_EQ(parts_log2(TensorType::kF16, 1024, 8192), 0);
  EXPECT_EQ(parts_log2(TensorType::kUpg4, 4096, 14336), 0);
  setenv("PDVM_FUSED_SPLIT", "0", 1);
  EXPECT_EQ(parts_log2(TensorType::kQ8_0, 4096, 14336), 0);
  setenv("PDVM_FUSED_SPLIT", "all", 1);
  EXPECT_EQ(parts_log2(TensorType::kF16, 1024, 8192), 1);
  setenv("PDVM_FUSED_SPLIT", "3", 1);
  EXPECT_EQ(parts_log2(TensorType::kUpg4, 4096, 14336), 0);
  unsetenv("PDVM_FUSED_SPLIT");
}

TEST(FusedLayer, RejectsUnsupportedTypes) {
  test::RefModel ref(make_config(256, 4, 4, 64, 512, 64), TensorType::kQ5_0, true);
  try {
    FusedDecoder decoder(ref.view());
    FAIL() << "q5_0 weights were accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("q5_0"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("blk.0.attn_q.weight"), std::string::npos) << e.what();
  }
}

TEST(FusedLayer, RejectsPositionsPastTheContext) {
  test::RefModel ref(make_config(256, 4, 4, 64, 512, 16), TensorType::kF16, true);
  FusedDecoder decoder(ref.view());
  EXPECT_THROW(decoder.execute_layer(0, 16), Error);
  EXPECT_THROW(decoder.execute_layer(2, 0), Error);
}

}  // namespace
}  // namespace pdvm
