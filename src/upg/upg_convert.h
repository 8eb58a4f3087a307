// `pdvm convert --type upg4|upg3`: writes a GGUF whose weight matrices are UPG matrices
// (docs/upg.md); 1-D tensors become F32, everything else in the file is kept.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

#include "pdvm/gguf.h"

namespace pdvm {

struct UpgConvertOptions {
  int bits = 4;                   // 4 or 3; embedding and output matrices always get 4
  double outlier_fraction = -1;   // < 0: the default of the bit width (0 at 4 bits, 0.0035 at 3)
  std::string calibration = "default";  // "default" (built-in text), "none" (h = 1) or a text file
  int calibration_tokens = 256;
  int threads = 1;
};

// Block size of the block scales for rows of k elements (docs/upg.md, "Block size").
int64_t upg_block_for(int64_t k);

void convert_gguf_upg(const GgufFile& in, const std::filesystem::path& out, const UpgConvertOptions& options,
                      const std::function<void(uint64_t, uint64_t)>& progress = {});

}  // namespace pdvm
