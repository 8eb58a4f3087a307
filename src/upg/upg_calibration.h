// Calibration for the UPG encoder: per weight matrix, the mean square of each input column.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "pdvm/gguf.h"

namespace pdvm {

struct Importance {
  std::map<std::string, std::vector<float>> columns;  // weight name -> E[x_j^2], k values
  int64_t n_tokens = 0;
};

std::string_view builtin_calibration_text();
std::string read_calibration_file(const std::filesystem::path& path);

// Runs up to max_tokens tokens of `text` through the model in `file` (CPU reference backend)
// and returns the importance of every matmul weight.
Importance measure_importance(const GgufFile& file, std::string_view text, int max_tokens, int threads);

}  // namespace pdvm
