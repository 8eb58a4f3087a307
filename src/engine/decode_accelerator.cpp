#include "pdvm/decode_accelerator.h"

#include "pdvm/error.h"
#include "pdvm/gguf.h"

namespace pdvm {
namespace {

DecodeAcceleratorFactory& registered_factory() {
  static DecodeAcceleratorFactory factory;
  return factory;
}

}  // namespace

void register_decode_accelerator(DecodeAcceleratorFactory factory) {
  PDVM_CHECK_MSG(!registered_factory(), "a decode accelerator is already registered");
  registered_factory() = std::move(factory);
}

bool fused_int16_activation_type(TensorType type) {
  return type == TensorType::kQ4_1 || type == TensorType::kQ4_K || type == TensorType::kQ5_K ||
         type == TensorType::kQ6_K;
}

bool fused_activations_follow(std::string_view tensor_name) { return tensor_name.starts_with("blk."); }

std::vector<std::string> gpu_mode_candidates(std::string_view requested, std::string_view backend) {
  if (requested == "auto") {
    if (backend == "cuda") return {"token", "layer", "unfused"};
    return {"unfused"};
  }
  if (requested == "layer" || requested == "token") return {std::string(requested), "unfused"};
  if (requested == "unfused") return {"unfused"};
  throw_error(ErrorKind::kInvalidArgument,
              "unknown --gpu-mode '" + std::string(requested) + "' (auto, unfused, layer or token)");
}

std::unique_ptr<DecodeAccelerator> create_decode_accelerator(const GgufFile& file, int64_t n_ctx,
                                                             std::string_view mode, const AcceleratorSplit& split) {
  if (mode == "unfused") return nullptr;
  if (mode != "layer" && mode != "token")
    throw_error(ErrorKind::kInvalidArgument,
                "unknown --gpu-mode '" + std::string(mode) + "' (auto, unfused, layer or token)");
  if (!registered_factory())
    throw_error(ErrorKind::kUnsupported, "--gpu-mode " + std::string(mode) + " needs a build with CUDA");
  return registered_factory()(file, n_ctx, mode, split);
}

}  // namespace pdvm
