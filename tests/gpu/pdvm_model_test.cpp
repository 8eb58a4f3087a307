// Whole-model fused decode (layer mode and the one-launch-per-token megakernel) on small random
// llama models written as GGUF: logits against the CPU reference, greedy tokens for 128 steps
// (test::decode_steps), both modes bit-identical, and repeated runs deterministic.
#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>

#include "pdvm/fused_activations.h"
#include "pdvm/gguf.h"
#include "pdvm/pdvm_fused.h"
#include "pdvm_reference.h"

namespace pdvm {
namespace {

FusedConfig small_config(int n_head, int n_head_kv, int n_ff = 640) {
  FusedConfig c;
  c.n_layer = 4;
  c.n_embd = 256;
  c.n_head = n_head;
  c.n_head_kv = n_head_kv;
  c.head_dim = 256 / n_head;
  c.n_ff = n_ff;
  c.n_vocab = 1000;
  c.n_ctx = 256;
  c.n_rot = c.head_dim;
  c.rms_eps = 1e-5f;
  c.rope_base = 10000.0f;
  return c;
}

double rms(const std::vector<float>& v) {
  double ss = 0;
  for (float x : v) ss += double{x} * x;
  return std::sqrt(ss / v.size());
}

// The reference follows the device's tokens; each device token must be the reference argmax or
// within rounding of it (random models can have near-ties). Q8_0, Q4_0 and UPG weights multiply
// int8 activations on the device, hence their looser tolerance; models with Q4_1, Q4_K or Q6_K
// multiply int16 activations (with exact block scales since session 19; f16-rounded ones for
// Q4_K and Q6_K before, with a tolerance of 1e-2).
void check_against_reference(const FusedConfig& config, TensorType type, bool tied,
                             std::optional<TensorType> mixed_type = {}, std::optional<TensorType> head_type = {}) {
  auto is_float = [](TensorType t) { return t == TensorType::kF16 || t == TensorType::kBF16; };
  const TensorType other = mixed_type.value_or(type);
  double tolerance = 5e-2;
  if (is_float(type) && is_float(other)) tolerance = 1e-3;
  else if (fused_int16_activation_type(type) || fused_int16_activation_type(other)) tolerance = 2e-3;
  test::RefModel ref(config, type, tied, mixed_type, head_type);
  const std::vector<uint8_t> image = test::write_gguf(ref).write_to_memory();
  const GgufFile file = GgufFile::parse(image);
  FusedDecoder decoder(fused_view_from_gguf(file, config.n_ctx));

  std::uniform_int_distribution<int> pick(0, config.n_vocab - 1);
  int token = pick(test::rng());
  const int start = token;
  std::vector<int> layer_tokens;
  double worst = 0;
  const int steps = test::decode_steps(128);
  for (int pos = 0; pos < steps; ++pos) {
    const int next = decoder.execute_model(token, pos, FusedMode::kLayer);
    const std::vector<float> logits = decoder.logits();
    const std::vector<float> expected = ref.forward(token, pos);
    const double err = test::relative_error(logits, expected);
    worst = std::max(worst, err);
    ASSERT_LT(err, tolerance) << "position " << pos;
    const float best = *std::max_element(expected.begin(), expected.end());
    ASSERT_GE(expected[next], best - 4 * tolerance * rms(expected)) << "position " << pos;
    ASSERT_EQ(next, static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin()));
    layer_tokens.push_back(next);
    token = next;
  }
  std::printf("  worst relative logits error over %d steps: %.2e\n", steps, worst);

  // The megakernel computes the same sums in the same order: identical tokens and logits.
  const std::vector<float> last_layer_logits = decoder.logits();
  const std::vector<int> token_tokens = decoder.generate(start, 0, steps, FusedMode::kToken);
  EXPECT_EQ(token_tokens, layer_tokens);
  EXPECT_EQ(decoder.logits(), last_layer_logits);
  // Device-side feedback in layer mode (CUDA graph) gives the same tokens again.
  EXPECT_EQ(decoder.generate(start, 0, steps, FusedMode::kLayer), layer_tokens);
}

TEST(FusedModel, GqaF16MatchesReference) { check_against_reference(small_config(8, 2), TensorType::kF16, true); }
TEST(FusedModel, MhaF16UntiedMatchesReference) { check_against_reference(small_config(4, 4), TensorType::kF16, false); }
TEST(FusedModel, GqaQ8MatchesReference) { check_against_reference(small_config(8, 2), TensorType::kQ8_0, true); }
TEST(FusedModel, GqaQ4MatchesReference) { check_against_reference(small_config(8, 2), TensorType::kQ4_0, false); }
TEST(FusedModel, MhaQ4_1MatchesReference) { check_against_reference(small_config(4, 4), TensorType::kQ4_1, true); }
// K-quants need rows of whole 256-element super-blocks.
TEST(FusedModel, GqaQ4KMatchesReference) { check_against_reference(small_config(8, 2, 768), TensorType::kQ4_K, false); }
// Q5_K_M-style mix: attn_v and ffn_down in Q6_K, the rest Q5_K (the Q5_K instance).
TEST(FusedModel, MixedQ5KQ6KMatchesReference) {
  check_against_reference(small_config(8, 2, 768), TensorType::kQ5_K, true, TensorType::kQ6_K);
}
// Q4_K_M-style mix: attn_v and ffn_down in Q6_K, the rest Q4_K.
TEST(FusedModel, MixedQ4KQ6KMatchesReference) {
  check_against_reference(small_config(8, 2, 768), TensorType::kQ4_K, false, TensorType::kQ6_K);
}
// f16 with q8_0 V and down projections: float and int8 activations in one phase.
TEST(FusedModel, MixedF16Q8MatchesReference) {
  check_against_reference(small_config(8, 2), TensorType::kF16, true, TensorType::kQ8_0);
}
// Q4_1 with q8_0 V and down projections: the q8_0 matrices multiply int16 activations too.
TEST(FusedModel, MixedQ4_1Q8MatchesReference) {
  check_against_reference(small_config(8, 2), TensorType::kQ4_1, true, TensorType::kQ8_0);
}
// llama.cpp's Q4_0 files: Q4_0 layers, a Q6_K head (untied and tied), all int8 activations.
TEST(FusedModel, Q4_0WithQ6KHeadMatchesReference) {
  check_against_reference(small_config(8, 2), TensorType::kQ4_0, false, std::nullopt, TensorType::kQ6_K);
}
TEST(FusedModel, Q4_0WithTiedQ6KHeadMatchesReference) {
  check_against_reference(small_config(4, 2), TensorType::kQ4_0, true, std::nullopt, TensorType::kQ6_K);
}

// A Q5_K head runs in the Q5_K instance only, which puts the whole model on int16 activations.
TEST(FusedModel, Q4_0WithQ5KHeadMatchesReference) {
  check_against_reference(small_config(8, 2), TensorType::kQ4_0, false, std::nullopt, TensorType::kQ5_K);
}

TEST(FusedModel, GqaQ6KMatchesReference) { check_against_reference(small_config(8, 2, 768), TensorType::kQ6_K, true); }
TEST(FusedModel, Bf16MatchesReference) { check_against_reference(small_config(4, 2), TensorType::kBF16, true); }

// UPG: UPG4 with 32-blocks; UPG3 with 64-blocks and outliers (pdvm_reference.h), also mixed
// with Q8_0 V and down projections.
TEST(FusedModel, GqaUpg4MatchesReference) { check_against_reference(small_config(8, 2), TensorType::kUpg4, false); }
TEST(FusedModel, MhaUpg3MatchesReference) { check_against_reference(small_config(4, 4), TensorType::kUpg3, true); }
TEST(FusedModel, MixedUpg4Q8MatchesReference) {
  check_against_reference(small_config(8, 2), TensorType::kUpg4, true, TensorType::kQ8_0);
}

// Models whose matrices all share an int8-activation format run the instance compiled for that
// format alone; mixed ones and int16-activation ones the generic instances (the other tests
// pass through whichever is picked, so only this one sees a wrong pick).
TEST(FusedModel, KernelInstanceFollowsTheFormats) {
  const FusedConfig config = small_config(8, 2);
  const std::pair<TensorType, const char*> singles[] = {{TensorType::kF16, "f16 only"},
                                                        {TensorType::kQ8_0, "q8_0 only"},
                                                        {TensorType::kQ4_0, "q4_0 only"},
                                                        {TensorType::kUpg4, "upg only"},
                                                        {TensorType::kBF16, "generic"},
                                                        {TensorType::kQ4_1, "generic, int16 activations"}};
  for (const auto& [type, name] : singles) {
    const auto decoder = FusedDecoder::synthesize(config, type, test::rng()());
    EXPECT_EQ(decoder->kernel_instance(), name) << type_name(type);
    // O reads int8 blocks only for Q8_0 and Q4_0 here (Q4_1's int16 attention output is handed
    // over as floats); h is not handed off at this size.
    const bool int8_o = type == TensorType::kQ8_0 || type == TensorType::kQ4_0;
    EXPECT_EQ(decoder->quantized_handoffs(), int8_o ? "attention output" : "none") << type_name(type);
  }
  // The decoder keeps no pointer into the GGUF image (its weights are repacked on the device).
  auto from_gguf = [](const FusedConfig& c, TensorType type, bool tied, std::optional<TensorType> mixed,
                      std::optional<TensorType> head = std::nullopt) {
    test::RefModel ref(c, type, tied, mixed, head);
    const std::vector<uint8_t> image = test::write_gguf(ref).write_to_memory();
    return std::make_unique<FusedDecoder>(fused_view_from_gguf(GgufFile::parse(image), c.n_ctx));
  };
  EXPECT_EQ(from_gguf(config, TensorType::kQ4_0, false, std::nullopt)->kernel_instance(), "q4_0 only");
  EXPECT_EQ(from_gguf(config, TensorType::kQ4_0, true, TensorType::kQ8_0)->kernel_instance(), "generic");
  EXPECT_EQ(from_gguf(config, TensorType::kF16, true, TensorType::kQ8_0)->kernel_instance(), "generic");
  EXPECT_EQ(from_gguf(small_config(8, 2, 768), TensorType::kQ4_0, false, TensorType::kQ6_K)->kernel_instance(),
            "generic, int16 activations");
  EXPECT_EQ(from_gguf(small_config(8, 2, 768), TensorType::kQ5_K, false, TensorType::kQ6_K)->kernel_instance(),
            "generic, int16 activations, q5_k");
  // The head does not decide the activations (llama.cpp's Q4_0 files).
  const auto q6k_head = from_gguf(config, TensorType::kQ4_0, false, std::nullopt, TensorType::kQ6_K);
  EXPECT_EQ(q6k_head->kernel_instance(), "generic");
  EXPECT_FALSE(q6k_head->int16_activations());
  // A Q5_K head does: only the Q5_K instance reads it.
  const auto q5k_head = from_gguf(config, TensorType::kQ4_0, false, std::nullopt, TensorType::kQ5_K);
  EXPECT_EQ(q5k_head->kernel_instance(), "generic, int16 activations, q5_k");
  EXPECT_TRUE(q5k_head->int16_activations());
}

// The hand-offs quantize the same floats by the same rule as the CTAs that read them would: forcing
// h's on (PDVM_FUSED_H_BLOCKS=1; these shapes are too small for the automatic rule) and off must
// give bit-identical logits and tokens, with int8 blocks and with int16 ones (Q4_1, Q4_K, Q6_K),
// and the reference within the usual tolerance.
TEST(FusedModel, QuantizedHandoffOfHIsBitIdentical) {
  for (const auto& [type, mixed] : {std::pair{TensorType::kQ4_0, TensorType::kQ4_0},
                                    std::pair{TensorType::kQ8_0, TensorType::kQ8_0},
                                    std::pair{TensorType::kQ4_0, TensorType::kQ8_0},
                                    std::pair{TensorType::kQ4_1, TensorType::kQ4_1},
                                    std::pair{TensorType::kQ4_K, TensorType::kQ6_K}}) {
    SCOPED_TRACE(std::string(type_name(type)) + " with " + std::string(type_name(mixed)));
    const bool k_types = type == TensorType::kQ4_K;
    const FusedConfig config = small_config(8, 2, k_types ? 768 : 640);  // K types: rows of 256-blocks
    test::RefModel ref(config, type, true, mixed);
    const std::vector<uint8_t> image = test::write_gguf(ref).write_to_memory();
    const GgufFile file = GgufFile::parse(image);
    const int steps = test::decode_steps(128);
    std::vector<int> tokens[2];
    std::vector<float> logits[2];
    for (int forced : {0, 1}) {
      setenv("PDVM_FUSED_H_BLOCKS", forced ? "1" : "0", 1);
      FusedDecoder decoder(fused_view_from_gguf(file, config.n_ctx));
      const bool int16 = decoder.int16_activations();
      EXPECT_EQ(decoder.quantized_handoffs(), forced ? (int16 ? "h" : "attention output, h")
                                                     : (int16 ? "none" : "attention output"));
      tokens[forced] = decoder.generate(5, 0, steps, FusedMode::kToken);
      logits[forced] = decoder.logits();
    }
    unsetenv("PDVM_FUSED_H_BLOCKS");
    EXPECT_EQ(tokens[1], tokens[0]);
    EXPECT_EQ(logits[1], logits[0]);
  }
  setenv("PDVM_FUSED_H_BLOCKS", "1", 1);
  check_against_reference(small_config(8, 2), TensorType::kQ4_0, false);
  check_against_reference(small_config(4, 4), TensorType::kQ8_0, true);
  check_against_reference(small_config(4, 4), TensorType::kQ4_1, true);
  unsetenv("PDVM_FUSED_H_BLOCKS");
}

TEST(FusedModel, RepeatedRunsAreIdentical) {
  FusedConfig config = small_config(8, 2);
  config.n_ctx = 600;
  auto decoder = FusedDecoder::synthesize(config, TensorType::kF16, test::rng()());
  const int steps = test::decode_steps(512);
  const std::vector<int> first = decoder->generate(3, 0, steps, FusedMode::kToken);
  const std::vector<float> first_logits = decoder->logits();
  for (int run = 0; run < 3; ++run) {
    EXPECT_EQ(decoder->generate(3, 0, steps, FusedMode::kToken), first) << "run " << run;
    EXPECT_EQ(decoder->logits(), first_logits) << "run " << run;
  }
  EXPECT_EQ(decoder->generate(3, 0, steps, FusedMode::kLayer), first);
}

TEST(FusedModel, SynthesizedLargeShapeRuns) {
  // Llama-3.2-1B geometry, fewer layers: the benchmark's code path with real dimensions.
  FusedConfig c;
  c.n_layer = 2;
  c.n_embd = 2048;
  c.n_head = 32;
  c.n_head_kv = 8;
  c.head_dim = 64;
  c.n_ff = 8192;
  c.n_vocab = 128256;
  c.n_ctx = 1024;
  c.n_rot = 64;
  c.rope_base = 500000.0f;
  for (TensorType type :
       {TensorType::kF16, TensorType::kQ8_0, TensorType::kQ4_0, TensorType::kQ4_1, TensorType::kUpg4}) {
    auto decoder = FusedDecoder::synthesize(c, type, 7);
    const std::vector<int> a = decoder->generate(1, 0, test::decode_steps(64), FusedMode::kToken);
    const std::vector<int> b = decoder->generate(1, 0, test::decode_steps(64), FusedMode::kLayer);
    EXPECT_EQ(a, b) << type_name(type);
    for (float v : decoder->logits()) ASSERT_TRUE(std::isfinite(v));
  }
}

}  // namespace
}  // namespace pdvm
