// Fused single-token decoders that a Session can hand its decode steps to (--gpu-mode).
// The CUDA library registers the PDVM fused decoder here (modes "layer" and "token"); the core
// library only knows this interface, so builds without CUDA simply have none.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "pdvm/fused_activations.h"
#include "pdvm/logits.h"

namespace pdvm {

class GgufFile;
struct GgufTensor;

class DecodeAccelerator {
 public:
  virtual ~DecodeAccelerator() = default;
  // Runs `token` at `position` (writing its K/V into the accelerator's own cache).
  virtual void decode(int32_t token, int64_t position) = 0;
  virtual int32_t last_argmax() = 0;
  // last_argmax() for a caller that decodes that token next, at the following position (greedy
  // decoding): the accelerator may start that step before it returns.
  virtual int32_t last_argmax_run_ahead() { return last_argmax(); }
  virtual void last_logits(std::span<float> out) = 0;
  // The last step's n largest logits in rank order (FusedDecoder::top_logits); false when this
  // accelerator cannot rank them or the row needs reading whole.
  virtual bool top_logits(size_t /*n*/, std::vector<LogitCandidate>& /*out*/) { return false; }
  // Samples the last step's token on the device (`draw`, Sampler::device_draw) into `token`;
  // with `run_ahead`, as last_argmax_run_ahead, the step that decodes it may start before this
  // returns. False when it cannot (the logits stay the last step's).
  virtual bool draw_token(const DeviceDraw& /*draw*/, bool /*run_ahead*/, int32_t& /*token*/) { return false; }
  // Device kernels launched so far, where counted (see Backend::kernel_launches).
  virtual std::optional<uint64_t> kernel_launches() const { return std::nullopt; }
  // Split over ranks (--tp): seconds per token of the all-reduces alone, as the decode runs them,
  // timed over `tokens` tokens (Session::time_token_all_reduces). Unsplit: 0.
  virtual double time_token_all_reduces(int /*tokens*/) { return 0.0; }
  // The accelerator's KV cache as a backend cache holds it (prompts run batched on the backend):
  // positions [first, first + count) of `layer` as f16 rows of n_head_kv * head_dim values, in
  // host memory or device memory of the accelerator's GPU.
  virtual void write_kv(int layer, int64_t first, int64_t count, const void* k_rows, const void* v_rows) = 0;
  virtual void read_kv(int layer, int64_t first, int64_t count, void* k_rows, void* v_rows) = 0;
};

// Tensor parallelism (--tp): rank r runs on GPU devices[r] and the ranks all-reduce through the
// registered communicator group `communicator`. No communicator: one GPU, no group.
struct AcceleratorSplit {
  std::vector<int> devices;
  std::string communicator;
};

// Returns an accelerator for `mode`, or throws Error(kUnsupported) saying why it cannot run
// this model (the caller may then fall back to the unfused path).
using DecodeAcceleratorFactory = std::function<std::unique_ptr<DecodeAccelerator>(
    const GgufFile& file, int64_t n_ctx, std::string_view mode, const AcceleratorSplit& split)>;

void register_decode_accelerator(DecodeAcceleratorFactory factory);

// The --gpu-mode values to try, in order, for `requested` on a backend named `backend`:
// "auto" (the default) gives the fastest path that supports the model on a CUDA backend
// (token, then layer, then unfused) and "unfused" elsewhere; "layer" or "token" that mode,
// then unfused; "unfused" itself. Error(kInvalidArgument) for unknown modes.
std::vector<std::string> gpu_mode_candidates(std::string_view requested, std::string_view backend);

// "unfused" returns nullptr. Other modes need a registered accelerator: Error(kUnsupported)
// when none is linked in or it rejects the model, Error(kInvalidArgument) for unknown modes.
std::unique_ptr<DecodeAccelerator> create_decode_accelerator(const GgufFile& file, int64_t n_ctx,
                                                             std::string_view mode,
                                                             const AcceleratorSplit& split = {});

struct DecodeAcceleratorRegistrar {
  explicit DecodeAcceleratorRegistrar(DecodeAcceleratorFactory factory) {
    register_decode_accelerator(std::move(factory));
  }
};

}  // namespace pdvm
