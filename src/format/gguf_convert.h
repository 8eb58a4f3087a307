// Re-quantizing GGUF files (`pdvm convert`): every weight matrix goes through the reference
// dequantizer and round-to-nearest quantizer; 1-D tensors (norms, biases) become F32.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

#include "pdvm/gguf.h"
#include "pdvm/tensor_type.h"

namespace pdvm {

// llama.cpp's general.file_type for a model whose matrices are `weight_type`;
// Error(kInvalidArgument) for types that are no whole-model file type.
uint32_t llama_file_type(TensorType weight_type);

// The type a matrix with rows of `row_length` is stored in when `target` is wanted: target, or
// where K-quant super-blocks do not fit the row, llama.cpp's fallback (q4_k -> q5_0,
// q6_k -> q8_0). Error(kInvalidArgument) naming `tensor_name` when no block size fits.
TensorType matrix_type(TensorType target, int64_t row_length, const std::string& tensor_name);

// The type a tensor gets when converting to `target`: matrix_type for matrices, F32 for the rest.
TensorType converted_type(const GgufTensor& tensor, TensorType target);

// Writes `in` re-quantized to `target` (metadata kept, general.file_type updated) to `out`
// through a temporary file, one tensor at a time on `threads` threads.
void convert_gguf(const GgufFile& in, const std::filesystem::path& out, TensorType target, int threads,
                  const std::function<void(uint64_t, uint64_t)>& progress = {});

}  // namespace pdvm
