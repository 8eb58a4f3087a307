// Which models the PDVM fused kernels run with int16 activations, shared by the kernels' host
// code (CUDA, C++17) and the engine.
#pragma once

#include <string_view>

#include "pdvm/tensor_type.h"

namespace pdvm {

// Weight types whose fused matrices multiply int16 activations instead of int8 ones (a model
// with any of them in its layers runs all its quantized fused matrices that way; pdvm_fused.h
// says why).
bool fused_int16_activation_type(TensorType type);

// Whether a model's tensor decides its fused activations: layer matrices do; the embedding and
// the LM head do not (llama.cpp's Q4_0 and Q8_0 files keep Q6_K there, and a head multiplies
// int8 activations as the layers before it do).
bool fused_activations_follow(std::string_view tensor_name);

}  // namespace pdvm
