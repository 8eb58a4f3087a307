// Layout of the per-row side record of UPG matrices in the PDVM kernels (host repacking and
// device code share it): the 16-entry int8 table (UPG3 uses 8), the f32 row scale, the row's
// outlier range [begin, end) as two int32 (8-byte aligned), then one int8 scale per block;
// records are padded to 16 bytes.
#pragma once

namespace pdvm::fused {

constexpr int kUpgRowScale = 16;
constexpr int kUpgOutlierRange = 24;
constexpr int kUpgBlockScales = 32;

}  // namespace pdvm::fused
