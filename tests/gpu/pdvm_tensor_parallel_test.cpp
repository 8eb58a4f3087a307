// The PDVM fused decoder split over ranks (FusedTensorParallel, --gpu-mode layer --tp N): every
// rank runs each layer as two fused launches with the residual stream all-reduced between them.
// Against the unsplit fused decoder on the same random GGUF model: logits per step within the
// fused tests' tolerance and the same greedy tokens (F16; up to near-ties with quantized
// activations), at tp 2 and 4 on one GPU (in-process
// group: host all-reduce), through a one-rank NCCL group (the all-reduces inside the token's
// CUDA graph) and, with 2+ GPUs, NCCL at tp 2 (and 4) with one GPU per rank. Q4_1 runs the
// kernel instances built for int16 activations. The in-kernel all-reduce
// (FusedAllReduce::kInKernel, NCCL's device API: one launch per layer) against the same, through
// a one-rank NCCL group and over 2 (and 4) GPUs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>

#include "pdvm/cuda_backend.h"
#include "pdvm/engine.h"
#include "pdvm/error.h"
#include "pdvm/fused_activations.h"
#include "pdvm/gguf.h"
#include "pdvm/pdvm_fused.h"
#include "pdvm/pdvm_fused_tp.h"
#include "pdvm_reference.h"
#include "random_llama.h"

namespace pdvm {
namespace {

const int kSteps = test::decode_steps(24);
const int kGreedy = test::decode_steps(64);

double rms(const std::vector<float>& v) {
  double ss = 0;
  for (float x : v) ss += double{x} * x;
  return std::sqrt(ss / static_cast<double>(v.size()));
}

class FusedTensorParallelTest : public ::testing::TestWithParam<TensorType> {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) {
      if (std::getenv("PDVM_REQUIRE_GPU")) ADD_FAILURE() << "no CUDA device but PDVM_REQUIRE_GPU is set";
      GTEST_SKIP() << "no CUDA device";
    }
    // GQA with heads, KV heads and FFN columns divisible by 4; O and down split into whole
    // 32-element blocks at 4 ranks.
    config_.n_layer = 3;
    config_.n_embd = 256;
    config_.n_head = 8;
    config_.n_head_kv = 4;
    config_.head_dim = 32;
    config_.n_ff = 768;
    config_.n_vocab = 1001;  // the two-launch split's head shares: 500/501, 250 x 3 / 251
    config_.n_ctx = 128;
    config_.n_rot = 32;
    const bool tied = std::uniform_int_distribution<int>(0, 1)(test::rng()) == 1;
    std::printf("random model: %s head\n", tied ? "tied" : "untied");
    ref_ = std::make_unique<test::RefModel>(config_, GetParam(), tied);
    image_ = test::write_gguf(*ref_).write_to_memory();
    file_ = std::make_unique<GgufFile>(GgufFile::parse(image_));
    view_ = fused_view_from_gguf(*file_, config_.n_ctx);
    FusedDecoder whole(view_);
    start_ = test::random_tokens(1, config_.n_vocab)[0];
    int token = start_;
    for (int pos = 0; pos < kSteps; ++pos) {
      token = whole.execute_model(token, pos, FusedMode::kLayer);
      want_logits_.push_back(whole.logits());
    }
    want_tokens_ = whole.generate(start_, 0, kGreedy, FusedMode::kLayer);
  }

  // Step by step against the unsplit logits (each step fed the unsplit model's token), then
  // greedy decoding with the tokens fed back on the devices.
  void expect_matches_unsplit(FusedTensorParallel& split) {
    // F16: the split changes only the order of the O and down projections' fp32 sums (2.6e-5
    // measured). Q4_1 (int16 activations) moved up to 1.1e-4 at 4 ranks with float activations
    // (H100, session 15), and 9.7e-5 with int16 ones (session 19), likely because its rows add
    // two terms that largely cancel (a block's scaled codes and its min times the sum of x).
    // Q8_0 multiplies int8-quantized activations, and an x that moved by that much rounds some of
    // them the other way: 1.1e-2 measured, within the fused tests' 5e-2.
    const bool int8_activations = GetParam() != TensorType::kF16 && !fused_int16_activation_type(GetParam());
    const bool quantized_activations = GetParam() != TensorType::kF16;
    const double tolerance = int8_activations ? 5e-2 : GetParam() == TensorType::kQ4_1 ? 5e-4 : 1e-4;
    const bool in_kernel = split.all_reduce() == FusedAllReduce::kInKernel;
    const std::string what = std::to_string(split.n_ranks()) + " ranks, " + split.communicator_name() +
                             (in_kernel ? " in-kernel, " : ", ") + std::string(type_name(GetParam()));
    int token = start_;
    double worst = 0;
    for (int pos = 0; pos < kSteps; ++pos) {
      const int next = split.execute_model(token, pos, FusedMode::kLayer);
      const double error = test::relative_error(split.logits(), want_logits_[pos]);
      worst = std::max(worst, error);
      ASSERT_LT(error, tolerance) << what << ", position " << pos;
      const std::vector<float>& want = want_logits_[pos];
      token = static_cast<int>(std::max_element(want.begin(), want.end()) - want.begin());
      // Quantized activations: the split's token may be another one only at a near-tie (as in the
      // fused tests against the reference; session 19 saw one in the int16 Q4_1 model's greedy run).
      if (quantized_activations) {
        EXPECT_GE(want[next], want[token] - 4 * tolerance * rms(want)) << what << ", position " << pos;
      } else {
        EXPECT_EQ(next, token) << what << ", position " << pos;
      }
    }
    if (!quantized_activations) {
      EXPECT_EQ(split.generate(start_, 0, kGreedy, FusedMode::kLayer), want_tokens_) << what;
    }
    std::printf("  %s: worst relative logits error %.2e over %d steps\n", what.c_str(), worst, kSteps);
  }

  FusedConfig config_;
  std::unique_ptr<test::RefModel> ref_;
  std::vector<uint8_t> image_;
  std::unique_ptr<GgufFile> file_;
  FusedModelView view_;
  int start_ = 0;
  std::vector<std::vector<float>> want_logits_;
  std::vector<int> want_tokens_;
};

TEST_P(FusedTensorParallelTest, InProcessRanksOnOneGpuMatchTheUnsplitDecoder) {
  for (int tp : {2, 4}) {
    FusedTensorParallel split(view_, std::vector<int>(static_cast<size_t>(tp), 0), "in-process");
    expect_matches_unsplit(split);
  }
}

TEST_P(FusedTensorParallelTest, NcclGroupOfOneRunsTheSplitLayersInTheGraph) {
  FusedTensorParallel split(view_, {0}, "nccl");
  expect_matches_unsplit(split);
  // 2 fused launches per layer and the head, plus whatever NCCL puts in the graph for one rank.
  const uint64_t before = split.kernel_launches();
  split.generate(start_, 0, 4, FusedMode::kLayer);
  EXPECT_GE(split.kernel_launches() - before, 4u * (2 * config_.n_layer + 1));
  EXPECT_LE(split.kernel_launches() - before, 4u * (4 * config_.n_layer + 1));
  try {
    split.generate(start_, 0, 1, FusedMode::kToken);
    ADD_FAILURE() << "token mode ran split";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported) << e.what();
  }
}

TEST_P(FusedTensorParallelTest, NcclOverSeveralGpusMatchesTheUnsplitDecoder) {
  const int n_gpus = cuda_device_count();
  if (n_gpus < 2) GTEST_SKIP() << "needs 2 GPUs, found " << n_gpus;
  for (int tp : {2, 4}) {
    if (tp > n_gpus) break;
    std::vector<int> devices(static_cast<size_t>(tp));
    for (int r = 0; r < tp; ++r) devices[r] = r;
    FusedTensorParallel split(view_, devices, "nccl");
    expect_matches_unsplit(split);
    // Two ranks sum the same two partials in either order: bit-identical to the in-process
    // group on one GPU, so the greedy tokens must agree whatever the type.
    if (tp == 2) {
      FusedTensorParallel one_gpu(view_, {0, 0}, "in-process");
      EXPECT_EQ(split.generate(start_, 0, kGreedy, FusedMode::kLayer),
                one_gpu.generate(start_, 0, kGreedy, FusedMode::kLayer));
      EXPECT_EQ(split.logits(), one_gpu.logits());
    }
  }
}

// One launch per layer and rank, the head in the last, nothing else: the all-reduce is in the
// kernel. Token mode (one launch per token) gives the same bits as layer mode.
void expect_one_launch_per_layer(FusedTensorParallel& split, int start) {
  const uint64_t before = split.kernel_launches();
  const std::vector<int> layer_tokens = split.generate(start, 0, 4, FusedMode::kLayer);
  EXPECT_EQ(split.kernel_launches() - before, 4u * split.n_ranks() * split.config().n_layer);
  const std::vector<float> layer_logits = split.logits();
  EXPECT_EQ(split.generate(start, 0, 4, FusedMode::kToken), layer_tokens);
  EXPECT_EQ(split.logits(), layer_logits);
}

TEST_P(FusedTensorParallelTest, InKernelAllReduceInAOneRankNcclGroup) {
  FusedTensorParallel split(view_, {0}, "nccl", FusedAllReduce::kInKernel);
  expect_matches_unsplit(split);
  expect_one_launch_per_layer(split, start_);
}

TEST_P(FusedTensorParallelTest, InKernelAllReduceOverSeveralGpusMatchesTheUnsplitDecoder) {
  const int n_gpus = cuda_device_count();
  if (n_gpus < 2) GTEST_SKIP() << "needs 2 GPUs, found " << n_gpus;
  for (int tp : {2, 4}) {
    if (tp > n_gpus) break;
    std::vector<int> devices(static_cast<size_t>(tp));
    for (int r = 0; r < tp; ++r) devices[r] = r;
    FusedTensorParallel split(view_, devices, "nccl", FusedAllReduce::kInKernel);
    expect_matches_unsplit(split);
    expect_one_launch_per_layer(split, start_);
    // Every rank sums the same partials in rank order: at 2 ranks that is NCCL's sum of the
    // two, so the two-launch path gives the same bits.
    if (tp == 2) {
      FusedTensorParallel between(view_, devices, "nccl");
      EXPECT_EQ(split.generate(start_, 0, kGreedy, FusedMode::kLayer),
                between.generate(start_, 0, kGreedy, FusedMode::kLayer));
      EXPECT_EQ(split.logits(), between.logits());
    }
  }
}

// h handed to the down phase as quantized blocks, forced on (these shapes are too small for the
// automatic rule): layer halves run the MLP half's instance, which has no such hand-off, and drop
// it; the in-kernel all-reduce's whole layers keep int8 blocks. Both still match the unsplit decoder.
TEST_P(FusedTensorParallelTest, OnlyWholeLayersHandHOverAsBlocks) {
  struct ForceHBlocks {
    ForceHBlocks() { setenv("PDVM_FUSED_H_BLOCKS", "1", 1); }
    ~ForceHBlocks() { unsetenv("PDVM_FUSED_H_BLOCKS"); }
  } force;
  // Q8_0 hands over the attention output and h as int8 blocks; Q4_1's int16 h hand-off runs in
  // single-GPU whole layers only.
  const TensorType type = GetParam();
  {
    FusedTensorParallel halves(view_, {0, 0}, "in-process");
    EXPECT_EQ(halves.quantized_handoffs(), type == TensorType::kQ8_0 ? "attention output" : "none");
    expect_matches_unsplit(halves);
  }
  FusedTensorParallel whole(view_, {0}, "nccl", FusedAllReduce::kInKernel);
  EXPECT_EQ(whole.quantized_handoffs(), type == TensorType::kQ8_0 ? "attention output, h" : "none");
  expect_matches_unsplit(whole);
}

TEST_P(FusedTensorParallelTest, InKernelAllReduceNeedsNccl) {
  try {
    FusedTensorParallel split(view_, {0, 0}, "in-process", FusedAllReduce::kInKernel);
    ADD_FAILURE() << "the in-process group accepted the in-kernel all-reduce";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported) << e.what();
    EXPECT_NE(std::string(e.what()).find("in-kernel"), std::string::npos) << e.what();
  }
}

// The all-reduces timed alone (the TP bench's all-reduce column) take time in every kind of
// group and leave the decode as it was (the next token's embedding replaces the x they reduce).
TEST_P(FusedTensorParallelTest, AllReducesTimedAloneLeaveTheDecodeUnchanged) {
  const int n_gpus = cuda_device_count();
  const int ranks = n_gpus >= 4 ? 4 : n_gpus >= 2 ? 2 : 1;
  std::vector<int> devices(static_cast<size_t>(ranks));
  for (int r = 0; r < ranks; ++r) devices[r] = r;
  struct Group {
    std::vector<int> devices;
    const char* communicator;
    FusedAllReduce all_reduce;
  };
  const Group groups[] = {{{0, 0}, "in-process", FusedAllReduce::kBetweenLaunches},
                          {devices, "nccl", FusedAllReduce::kBetweenLaunches},
                          {devices, "nccl", FusedAllReduce::kInKernel}};
  for (const Group& group : groups) {
    FusedTensorParallel split(view_, group.devices, group.communicator, group.all_reduce);
    const std::string what = std::to_string(split.n_ranks()) + " ranks, " + group.communicator +
                             (group.all_reduce == FusedAllReduce::kInKernel ? " in-kernel" : "");
    const std::vector<int> tokens = split.generate(start_, 0, 8, FusedMode::kLayer);
    const std::vector<float> logits = split.logits();
    const double ms = split.time_all_reduces(4);
    EXPECT_GT(ms, 0.0) << what;
    EXPECT_EQ(split.generate(start_, 0, 8, FusedMode::kLayer), tokens) << what;
    EXPECT_EQ(split.logits(), logits) << what;
    std::printf("  %s: %d all-reduces of x a token take %.1f us alone\n", what.c_str(), 2 * config_.n_layer,
                1000.0 * ms / 4);
  }
}

TEST_P(FusedTensorParallelTest, IndivisibleSplitsAreRefused) {
  for (int tp : {3, 16}) {
    try {
      FusedTensorParallel split(view_, std::vector<int>(static_cast<size_t>(tp), 0), "in-process");
      ADD_FAILURE() << "tp " << tp << " accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kUnsupported) << e.what();
      EXPECT_NE(std::string(e.what()).find("cannot be split over " + std::to_string(tp)), std::string::npos)
          << e.what();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Types, FusedTensorParallelTest, ::testing::Values(TensorType::kF16, TensorType::kQ8_0, TensorType::kQ4_1),
                         [](const auto& param_info) { return std::string(type_name(param_info.param)); });

std::vector<float> dequantized(const FusedWeightView& w) {
  std::vector<float> out(static_cast<size_t>(w.rows * w.cols));
  dequantize_row(w.type, w.data, out.data(), w.rows * w.cols);
  return out;
}

// Elements [col_begin, col_begin + cols) of rows [row_begin, row_begin + rows) of `w`.
std::vector<float> block_of(const FusedWeightView& w, int64_t row_begin, int64_t rows, int64_t col_begin, int64_t cols) {
  const std::vector<float> all = dequantized(w);
  std::vector<float> out;
  for (int64_t r = row_begin; r < row_begin + rows; ++r) {
    const auto first = all.begin() + r * w.cols + col_begin;
    out.insert(out.end(), first, first + cols);
  }
  return out;
}

// With split_head, rank r's head is rows r*V/N .. of the output (of the embedding when tied,
// which stays whole); V = 301 gives uneven shares.
void expect_head_rows(const FusedModelView& whole, int n) {
  const FusedWeightView& head = whole.output.data ? whole.output : whole.token_embd;
  int64_t next = 0;
  for (int r = 0; r < n; ++r) {
    std::vector<std::vector<uint8_t>> storage;
    const FusedModelView part = FusedTensorParallel::shard(whole, r, n, storage, /*split_head=*/true);
    const int64_t first = head.rows * r / n, rows = head.rows * (r + 1) / n - first;
    EXPECT_TRUE(part.output_split);
    EXPECT_EQ(part.output_first_row, first);
    EXPECT_EQ(first, next);
    EXPECT_EQ(part.output.rows, rows);
    EXPECT_EQ(dequantized(part.output), block_of(head, first, rows, 0, head.cols)) << n << " ranks, rank " << r;
    EXPECT_EQ(part.token_embd.data, whole.token_embd.data);
    EXPECT_EQ(part.token_embd.rows, whole.token_embd.rows);
    next = first + rows;
  }
  EXPECT_EQ(next, head.rows);
}

// The shards' weights are the right parts of the GGUF tensors (host only: runs without a GPU).
TEST(FusedTensorParallelShard, EachRankGetsItsHeadsAndFfnColumns) {
  FusedConfig c;
  c.n_layer = 2;
  c.n_embd = 256;
  c.n_head = 8;
  c.n_head_kv = 4;
  c.head_dim = 32;
  c.n_ff = 512;
  c.n_vocab = 301;
  c.n_ctx = 64;
  c.n_rot = 32;
  const test::RefModel ref(c, TensorType::kQ8_0, /*tied=*/false);
  const std::vector<uint8_t> image = test::write_gguf(ref).write_to_memory();
  const GgufFile file = GgufFile::parse(image);
  const FusedModelView whole = fused_view_from_gguf(file, c.n_ctx);
  for (int n : {2, 4}) {
    for (int r = 0; r < n; ++r) {
      std::vector<std::vector<uint8_t>> storage;
      const FusedModelView part = FusedTensorParallel::shard(whole, r, n, storage);
      EXPECT_EQ(part.config.n_head, c.n_head / n);
      EXPECT_EQ(part.config.n_head_kv, c.n_head_kv / n);
      EXPECT_EQ(part.config.n_ff, c.n_ff / n);
      EXPECT_EQ(part.config.n_embd, c.n_embd);
      EXPECT_EQ(part.token_embd.data, whole.token_embd.data);
      EXPECT_EQ(part.output.data, whole.output.data);
      for (int l = 0; l < c.n_layer; ++l) {
        const FusedLayerView& p = part.layers[l];
        const FusedLayerView& w = whole.layers[l];
        EXPECT_EQ(p.attn_norm.data, w.attn_norm.data);
        for (auto [got, all] : {std::pair{&p.wq, &w.wq}, {&p.wk, &w.wk}, {&p.wv, &w.wv}, {&p.gate, &w.gate},
                                {&p.up, &w.up}}) {
          const int64_t rows = all->rows / n;
          EXPECT_EQ(dequantized(*got), block_of(*all, r * rows, rows, 0, all->cols)) << all->name << " rank " << r;
        }
        for (auto [got, all] : {std::pair{&p.wo, &w.wo}, {&p.down, &w.down}}) {
          const int64_t cols = all->cols / n;
          EXPECT_EQ(got->rows, all->rows);
          EXPECT_EQ(dequantized(*got), block_of(*all, 0, all->rows, r * cols, cols)) << all->name << " rank " << r;
        }
      }
    }
  }
  for (int n : {2, 4}) expect_head_rows(whole, n);
  const test::RefModel tied_ref(c, TensorType::kQ8_0, /*tied=*/true);
  const std::vector<uint8_t> tied_image = test::write_gguf(tied_ref).write_to_memory();
  const GgufFile tied_file = GgufFile::parse(tied_image);
  const FusedModelView tied = fused_view_from_gguf(tied_file, c.n_ctx);
  ASSERT_EQ(tied.output.data, nullptr);
  for (int n : {2, 4}) expect_head_rows(tied, n);
  std::vector<std::vector<uint8_t>> storage;
  try {
    FusedTensorParallel::shard(whole, 0, 16, storage);  // 8 heads over 16 ranks
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported) << e.what();
  }
}

// The Session tests' model: F16, GQA, small enough to run prompts step by step.
test::RandomLlama session_model(int n_layer) {
  test::RandomLlama spec;
  spec.n_layer = n_layer;
  spec.n_embd = 256;
  spec.n_head = 8;
  spec.n_head_kv = 4;
  spec.n_ff = 512;
  spec.n_vocab = 800;
  spec.weight_type = TensorType::kF16;
  return spec;
}

// A fused Session of `mode` split `tp` ways (the caller picks the communicator), prompts through
// the fused steps, as the split runs them.
SessionOptions fused_session_options(const std::filesystem::path& path, const std::string& mode, int tp) {
  SessionOptions o;
  o.model_path = path;
  o.backend = "cuda";
  o.n_ctx = 96;
  o.gpu_mode = mode;
  o.fused_batched_prompts = false;
  o.tensor_parallel = tp;
  return o;
}

// The Session glue: --gpu-mode layer with --tp 2 (two in-process ranks on GPU 0) decodes the
// same greedy tokens as --gpu-mode layer alone; token mode with --tp needs NCCL's in-kernel
// all-reduce, so over the in-process group it falls back to unfused.
TEST(FusedTensorParallelSession, LayerModeSplitsTheFusedDecoder) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const test::RandomLlama spec = session_model(2);
  const auto path = test::write_random_llama(spec, "fused_tensor_parallel_session.gguf");
  auto options = [&](const std::string& mode, int tp) {
    SessionOptions o = fused_session_options(path, mode, tp);
    if (tp > 1) {
      o.communicator = "in-process";
      o.tp_devices = std::vector<int>(static_cast<size_t>(tp), 0);
    }
    return o;
  };
  const auto prompt = test::random_tokens(6, spec.n_vocab);
  Session whole(options("layer", 1));
  Session split(options("layer", 2));
  ASSERT_EQ(split.gpu_mode(), "layer");
  EXPECT_EQ(split.tensor_parallel(), 2);
  EXPECT_EQ(split.communicator_name(), "in-process");
  EXPECT_EQ(split.generate_greedy(prompt, 32), whole.generate_greedy(prompt, 32));
  Session token_mode(options("token", 2));
  EXPECT_EQ(token_mode.gpu_mode(), "unfused");
  EXPECT_EQ(token_mode.tensor_parallel(), 2);
  std::filesystem::remove(path);
}

// --tp over NCCL with one GPU per rank, as many ranks as GPUs (1, 2 or 4): --gpu-mode layer (the
// all-reduces between two launches per layer) and --gpu-mode token (inside the one launch per
// token) give the prompt's logits of the unsplit fused decoder within the split's tolerance and
// its greedy tokens, and report their all-reduce time (pdvm bench's all-reduce row).
TEST(FusedTensorParallelSession, NcclSplitsMatchTheUnsplitSession) {
  const int n_gpus = cuda_device_count();
  if (n_gpus == 0) GTEST_SKIP() << "no CUDA device";
  const int ranks = n_gpus >= 4 ? 4 : n_gpus >= 2 ? 2 : 1;
  const test::RandomLlama spec = session_model(3);
  const auto path = test::write_random_llama(spec, "fused_tensor_parallel_nccl_session.gguf");
  // The splits always go through NCCL (on one GPU a group of one rank); the reference does not.
  auto options = [&](const std::string& mode, int tp, bool nccl) {
    SessionOptions o = fused_session_options(path, mode, tp);
    if (nccl) o.communicator = "nccl";
    return o;
  };
  const auto prompt = test::random_tokens(6, spec.n_vocab);
  Session whole(options("layer", 1, false));
  const std::span<const float> whole_logits = whole.prefill_all(prompt);
  const std::vector<float> want_logits(whole_logits.begin(), whole_logits.end());
  whole.reset();
  const std::vector<int32_t> want_tokens = whole.generate_greedy(prompt, 32);
  for (const std::string mode : {"layer", "token"}) {
    Session split(options(mode, ranks, true));
    ASSERT_EQ(split.gpu_mode(), mode);
    EXPECT_EQ(split.tensor_parallel(), ranks);
    EXPECT_EQ(split.communicator_name(), "nccl");
    const std::span<const float> got = split.prefill_all(prompt);
    // F16: only the O/down sum order differs (the decoder tests' measure and tolerance).
    const double error = test::relative_error(std::vector<float>(got.begin(), got.end()), want_logits);
    EXPECT_LE(error, 1e-4) << mode << ", tp " << ranks;
    split.reset();
    EXPECT_EQ(split.generate_greedy(prompt, 32), want_tokens) << mode << ", tp " << ranks;
    const double seconds = split.time_token_all_reduces(16);
    EXPECT_GT(seconds, 0.0) << mode;
    std::printf("  session --gpu-mode %s --tp %d (nccl): prompt logits within %.2e, %d all-reduces a token take "
                "%.1f us alone\n",
                mode.c_str(), ranks, error, 2 * spec.n_layer, seconds * 1e6);
  }
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace pdvm
