// --gpu-mode layer|token with stepwise prompts holds one copy of the weights on the GPU: the
// fused decoder's repacked matrices, not the unfused backend's besides; with batched prompts
// (the default where they fit) it holds both. Device memory a Session takes (cudaMemGetInfo
// before and after) is compared between the unfused and the fused sessions of one synthesized
// f16 model, whose prompt logits still agree.
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "model/synth_model.h"
#include "pdvm/engine.h"
#include "pdvm_reference.h"

namespace pdvm::test {
namespace {

uint64_t free_device_bytes() {
  size_t free = 0, total = 0;
  EXPECT_EQ(cudaMemGetInfo(&free, &total), cudaSuccess);
  return free;
}

TEST(FusedSessionMemory, StepwisePromptsHoldOneCopyOfTheWeights) {
  PDVM_CUDA_BACKEND_OR_SKIP(probe);
  probe.reset();
  // ~280 MB of f16 weights: large against the sessions' other allocations.
  synth::LlamaShape shape = synth::shape_by_name("tiny");
  shape.name = "memory";
  shape.n_embd = 1024;
  shape.n_layer = 8;
  shape.n_head = 16;
  shape.n_head_kv = 4;
  shape.n_ff = 4096;
  shape.n_vocab = 8000;
  shape.tied_embeddings = false;
  shape.context_length = 256;
  const auto path = std::filesystem::temp_directory_path() / ("pdvm_memory_" + std::to_string(getpid()) + ".gguf");
  synth::write_model(synth::plan_model(shape, TensorType::kF16, rng()()), path, 8);

  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(shape.n_vocab - 1));
  std::vector<int32_t> prompt(12);
  for (int32_t& t : prompt) t = pick(rng());

  auto measure = [&](const std::string& mode, bool batched, std::vector<float>& logits, uint64_t& weight_bytes) {
    SessionOptions options;
    options.model_path = path;
    options.backend = "cuda";
    options.n_ctx = 256;
    options.kv_type = TensorType::kF16;
    options.gpu_mode = mode;
    options.fused_batched_prompts = batched;
    const uint64_t before = free_device_bytes();
    Session session(options);
    EXPECT_EQ(session.fused_batched_prompts(), mode != "unfused" && batched);
    const std::span<const float> l = session.prefill(prompt);
    logits.assign(l.begin(), l.end());
    weight_bytes = 0;
    for (const GgufTensor& t : session.gguf().tensors()) weight_bytes += t.n_bytes;
    return before - free_device_bytes();
  };
  std::vector<float> unfused_logits, fused_logits, batched_logits;
  uint64_t weight_bytes = 0;
  const uint64_t unfused = measure("unfused", false, unfused_logits, weight_bytes);
  const uint64_t fused = measure("layer", false, fused_logits, weight_bytes);
  const uint64_t both = measure("layer", true, batched_logits, weight_bytes);
  std::filesystem::remove(path);
  EXPECT_LT(relative_error(batched_logits, unfused_logits), 1e-6);
  EXPECT_LT(relative_error(fused_logits, unfused_logits), 1e-2);
  if (under_compute_sanitizer()) GTEST_SKIP() << "no device-memory accounting under compute-sanitizer";
  std::printf("  device memory: unfused session %.1f MiB, fused session %.1f MiB (stepwise prompts), %.1f MiB "
              "(batched prompts), weights %.1f MiB\n",
              unfused / 1048576.0, fused / 1048576.0, both / 1048576.0, weight_bytes / 1048576.0);
  EXPECT_GE(both, fused + weight_bytes) << "batched prompts load the backend's copy too";
  EXPECT_GE(unfused, weight_bytes);
  EXPECT_GE(fused, weight_bytes * 9 / 10);  // the fused decoder's copy (the embedding may shrink)
  EXPECT_LT(fused, unfused + weight_bytes / 4) << "a second copy of the weights";
}

}  // namespace
}  // namespace pdvm::test
