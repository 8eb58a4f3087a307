// Which models the PDVM fused kernels run with float activations, shared by the kernels' host
// code (CUDA, C++17) and the engine's --gpu-mode choice.
#pragma once

#include <cstdint>
#include <string_view>

#include "pdvm/tensor_type.h"

namespace pdvm {

// Weight types whose fused matrices multiply float activations instead of int8 ones (a model
// with any of them in its layers runs all its quantized fused matrices that way; pdvm_fused.h
// says why).
bool fused_float_activation_type(TensorType type);

// Whether a model's tensor decides its fused activations: layer matrices do; the embedding and
// the LM head do not (llama.cpp's Q4_0 and Q8_0 files keep Q6_K there, and a head multiplies
// int8 activations as the layers before it do).
bool fused_activations_follow(std::string_view tensor_name);

// Weight bytes above which a model with float-activation types decodes slower fused than
// unfused: the float path is instruction-bound (H100: SmolLM2-135M-shaped Q4_1, 80 MiB, token
// mode 919 tok/s vs unfused 892; Llama-3.2-1B-shaped Q4_1 fused 643 tok/s, where Q4_0 runs
// 955 unfused), so --gpu-mode auto takes the unfused path for them (docs/cuda-backend.md).
constexpr uint64_t kFusedFloatActivationLimitBytes = uint64_t{128} << 20;

}  // namespace pdvm
