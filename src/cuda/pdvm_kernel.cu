// Host side of the PDVM fused decode kernel (pdvm_kernel_impl.cuh): the generic instances, the
// choice of instance for a launch, shared memory and grid, and the launches.

#include <cstdlib>
#include <string>
#include <string_view>

#include "cuda/check.cuh"
#include "cuda/pdvm_kernel_impl.cuh"
#include "cuda/pdvm_repack.h"

namespace pdvm::fused {
namespace {

// The in-kernel all-reduce alone (benchmarks): `n_reduces` exchanges of x with the rows cut as
// the O and down projections cut them (n_embd rows over the grid), slots alternating. A kernel of
// its own, so the decode instances' register allocation does not see it.
__global__ void __launch_bounds__(kThreads, 1) all_reduce_only_kernel(const __grid_constant__ Params p, int n_reduces) {
  int begin, end;
  cta_share(p.n_embd, begin, end);
  for (int i = 0; i < n_reduces; ++i) tp_all_reduce_rows(p, i & 1, begin, end);
}

// A kernel instance and what names it: a single-format instance's format (-1 for the generic
// ones), the activation kind, and what else sets it apart (the layer part for tensor
// parallelism, or a specialized whole-layer instance's feature).
struct Instance {
  FusedKernel kernel;
  int format;
  bool int16_activations;
  const char* variant;  // nullptr: the plain whole-layer instance
};

template <bool kInt16Activations>
Instance instance_for_part(int flags) {
  if (flags & kFlagAttnHalf)
    return {fused_decode_kernel<kInt16Activations, LayerPart::kAttentionHalf>, -1, kInt16Activations, "attention half"};
  if (flags & kFlagMlpHalf)
    return {fused_decode_kernel<kInt16Activations, LayerPart::kMlpHalf>, -1, kInt16Activations, "MLP half"};
  if (flags & kFlagDeviceAllReduce)
    return {fused_decode_kernel<kInt16Activations, LayerPart::kWholeAllReduce>, -1, kInt16Activations,
            "in-kernel all-reduce"};
  return {fused_decode_kernel<kInt16Activations, LayerPart::kWhole>, -1, kInt16Activations, nullptr};
}

const char* single_format_name(int format) {
  switch (format) {
    case kFmtF16: return "f16";
    case kFmtQ8_0: return "q8_0";
    case kFmtQ4_0: return "q4_0";
    case kFmtUpg: return "upg";
    default: return "?";
  }
}

// The instance for a launch: the model's activation kind, the layer part its flags ask for. A
// half never runs the head, the MLP half never the embedding (its instance leaves them out); the
// in-kernel all-reduce runs whole layers only, with a device communicator.
Instance choose_instance(const Params& p, int flags) {
  const bool half = flags & (kFlagAttnHalf | kFlagMlpHalf);
  PDVM_CHECK(!half || !(flags & kFlagHead));
  PDVM_CHECK(!(flags & kFlagDeviceAllReduce) || (!half && p.tp_comm && p.tp_window));
  PDVM_CHECK(!(flags & kFlagMlpHalf) || !(flags & (kFlagEmbed | kFlagAttnHalf)));
  static const bool single_format_kernels = [] {
    const char* env = std::getenv("PDVM_FUSED_FORMAT_KERNEL");
    return !(env && std::string_view(env) == "0");
  }();
  if (single_format_kernels && !p.int16_activations && !half && !(flags & kFlagDeviceAllReduce)) {
    if (FusedKernel kernel = single_format_kernel(p.single_format)) return {kernel, p.single_format, false, nullptr};
  }
  // Q5_K has one instance, whole layers on one GPU (FusedTensorParallel rejects such models).
  PDVM_CHECK(!p.with_q5_k || (p.int16_activations && !half && !(flags & kFlagDeviceAllReduce)));
  if (p.with_q5_k) return {q5_k_kernel(), -1, true, "q5_k"};
  // Only the whole-layer instance compiles h's int16 hand-off (set_tensor_parallel drops h_q).
  PDVM_CHECK(!p.int16_activations || !p.h_q.q || (!half && !(flags & kFlagDeviceAllReduce)));
  if (p.int16_activations && p.h_q.q) return {int16_h_blocks_kernel(), -1, true, "h as int16 blocks"};
  return p.int16_activations ? instance_for_part<true>(flags) : instance_for_part<false>(flags);
}

constexpr FusedKernel kAllInstances[] = {
    fused_decode_kernel<false, LayerPart::kWhole>,        fused_decode_kernel<false, LayerPart::kAttentionHalf>,
    fused_decode_kernel<false, LayerPart::kMlpHalf>,      fused_decode_kernel<true, LayerPart::kWhole>,
    fused_decode_kernel<true, LayerPart::kAttentionHalf>, fused_decode_kernel<true, LayerPart::kMlpHalf>,
    fused_decode_kernel<false, LayerPart::kWholeAllReduce>, fused_decode_kernel<true, LayerPart::kWholeAllReduce>,
};

}  // namespace

std::string fused_kernel_name(const Params& p, int flags) {
  const Instance instance = choose_instance(p, flags);
  std::string name = instance.format >= 0 ? std::string(single_format_name(instance.format)) + " only" : "generic";
  if (instance.int16_activations) name += ", int16 activations";
  if (instance.variant) name += std::string(", ") + instance.variant;
  return name;
}

int max_row_parts_log2() {
  int s = 3;
  while (kWarps % (1 << s) != 0) --s;
  return s;
}

int row_parts_log2(int format, int rows, int row_bytes, int grid) {
  const int base = base_format(format);
  const char* env = std::getenv("PDVM_FUSED_SPLIT");
  const std::string_view choice = env ? env : "";
  const int forced = choice.size() == 1 && choice[0] >= '1' && choice[0] <= '3' ? choice[0] - '0' : -1;
  if (base == kFmtUpg || choice == "0" || (!is_quantized_format(base) && forced < 0 && choice != "all")) return 0;
  const int n_chunks = row_bytes / 16, columns = part_columns(n_chunks, 1), max_rows = (rows + grid - 1) / grid;
  const int max_s = max_row_parts_log2(), loads = loads_per_lane(format);
  int best = 0, best_batches = INT_MAX;
  for (int s = 0; s <= max_s; ++s) {
    const int parts = 1 << s, columns_per_part = part_columns(n_chunks, parts);
    if ((parts - 1) * columns_per_part >= columns || max_rows * parts > kMaxSplitItems) continue;
    if (forced >= 0) {
      if (s <= forced) best = s;
      continue;
    }
    const int walk = (max_rows * parts + kWarps - 1) / kWarps * columns_per_part;
    const int batches = (walk + loads - 1) / loads;
    if (batches < best_batches) {
      best = s;
      best_batches = batches;
    }
  }
  return best;
}

size_t fused_smem_bytes(const Params& p) {
  size_t offsets[kSmemRegions];
  smem_layout(p, offsets);
  return offsets[kSmemRegions - 1];
}

int fused_max_grid(const Params& p, int device) {
  const size_t smem = fused_smem_bytes(p);
  // The opt-in maximum, so decoders of different shapes can coexist.
  int smem_optin = 0;
  PDVM_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (smem > static_cast<size_t>(smem_optin))
    throw_error(ErrorKind::kUnsupported, "fused decode: needs " + std::to_string(smem) +
                                             " bytes of shared memory per block, the device has " +
                                             std::to_string(smem_optin));
  // Every instance, so that the grid fits whichever a launch picks.
  int per_sm = INT_MAX;
  auto fit = [&](FusedKernel kernel) {
    PDVM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_optin));
    int instance_per_sm = 0;
    PDVM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&instance_per_sm, kernel, kThreads, smem));
    per_sm = std::min(per_sm, instance_per_sm);
  };
  for (FusedKernel kernel : kAllInstances) fit(kernel);
  for (int format : kSingleFormats) fit(single_format_kernel(format));
  fit(int16_h_blocks_kernel());
  fit(q5_k_kernel());
  // Loaded now too (a lazy load may wait for the device while a peer's kernel spins on it).
  cudaFuncAttributes attributes{};
  PDVM_CUDA_CHECK(cudaFuncGetAttributes(&attributes, all_reduce_only_kernel));
  int sms = 0;
  PDVM_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  if (per_sm < 1)
    throw_error(ErrorKind::kUnsupported, "fused decode: the kernel does not fit on an SM with " +
                                             std::to_string(smem) + " bytes of shared memory");
  return sms;
}

void launch_fused(const Params& p, int grid, int layer_begin, int layer_end, int flags, bool cooperative,
                  cudaStream_t stream) {
  // The whole-layer instances add into x: partial sums come only from tensor-parallel halves and
  // the in-kernel all-reduce.
  PDVM_CHECK(!p.partial_output || layer_begin == layer_end ||
             (flags & (kFlagAttnHalf | kFlagMlpHalf | kFlagDeviceAllReduce)));
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(grid);
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = fused_smem_bytes(p);
  config.stream = stream;
  cudaLaunchAttribute attributes[2];
  int n_attributes = 0;
  if (cooperative) {
    attributes[n_attributes].id = cudaLaunchAttributeCooperative;
    attributes[n_attributes].val.cooperative = 1;
    ++n_attributes;
  }
  if (flags & kFlagPdl) {
    attributes[n_attributes].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attributes[n_attributes].val.programmaticStreamSerializationAllowed = 1;
    ++n_attributes;
  }
  config.attrs = attributes;
  config.numAttrs = n_attributes;
  PDVM_CUDA_CHECK(cudaLaunchKernelEx(&config, choose_instance(p, flags).kernel, p, layer_begin, layer_end, flags));
  PDVM_CUDA_CHECK_LAUNCH("fused_decode_kernel");
}

// The token of a vocabulary-split head: the best of the ranks' (value, id) pairs, lowest id on
// ties as in phase_head (a rank without a winner sent id -1); the pairs are zeroed for the next
// token's own slot.
__global__ void pick_split_token_kernel(DevStep* step, int* history, float* pairs, int n_ranks) {
  float best = -FLT_MAX;
  int best_index = INT_MAX;
  for (int r = 0; r < n_ranks; ++r) {
    const float v = pairs[2 * r];
    const int index = static_cast<int>(pairs[2 * r + 1]);
    if (v > best || (v == best && index < best_index)) {
      best = v;
      best_index = index;
    }
    pairs[2 * r] = pairs[2 * r + 1] = 0.0f;
  }
  advance_token(step, history, best_index < 0 ? INT_MAX : best_index, best);
}

void launch_pick_split_token(const Params& p, float* pairs, int n_ranks, cudaStream_t stream) {
  PDVM_CHECK(p.head_pair && n_ranks > 0);
  pick_split_token_kernel<<<1, 1, 0, stream>>>(p.step, p.history, pairs, n_ranks);
  PDVM_CUDA_CHECK_LAUNCH("pick_split_token_kernel");
}

void launch_all_reduce_only(const Params& p, int grid, int n_reduces, cudaStream_t stream) {
  PDVM_CHECK(p.tp_comm && p.tp_window && n_reduces >= 0);
  all_reduce_only_kernel<<<grid, kThreads, 0, stream>>>(p, n_reduces);
  PDVM_CUDA_CHECK_LAUNCH("all_reduce_only_kernel");
}

}  // namespace pdvm::fused
