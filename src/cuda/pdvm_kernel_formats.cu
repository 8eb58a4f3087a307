// The fused kernel's single-format instances (see kSingleFormats), the int16 one with h's
// hand-off and the Q5_K one, compiled apart from the generic ones in pdvm_kernel.cu so that the
// two halves build in parallel.

#include "cuda/pdvm_kernel_impl.cuh"

namespace pdvm::fused {

FusedKernel single_format_kernel(int format) {
  switch (format) {
    case kFmtF16: return fused_decode_kernel<false, LayerPart::kWhole, kFmtF16>;
    case kFmtQ8_0: return fused_decode_kernel<false, LayerPart::kWhole, kFmtQ8_0>;
    case kFmtQ4_0: return fused_decode_kernel<false, LayerPart::kWhole, kFmtQ4_0>;
    case kFmtUpg: return fused_decode_kernel<false, LayerPart::kWhole, kFmtUpg>;
    default: return nullptr;
  }
}

FusedKernel int16_h_blocks_kernel() { return fused_decode_kernel<true, LayerPart::kWhole, -1, true>; }
FusedKernel q5_k_kernel() { return fused_decode_kernel<true, LayerPart::kWhole, kWithQ5K, true>; }

}  // namespace pdvm::fused
