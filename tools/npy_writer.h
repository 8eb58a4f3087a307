// Writes float32 arrays as NumPy .npy files (format version 1.0), for tests and analysis.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <vector>

namespace pdvm::cli {

// Error(kIo) naming the path when the file cannot be written.
void write_npy(const std::filesystem::path& path, std::span<const float> data,
               const std::vector<int64_t>& shape);

}  // namespace pdvm::cli
