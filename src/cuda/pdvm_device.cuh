// Device-side building blocks of the PDVM fused kernels: the parameter block, repacked weight
// formats, streaming loads, inter-CTA counters, and the warp matvec.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/pdvm_upg_layout.h"

struct ncclDevComm;        // nccl_device.h, for the in-kernel all-reduce
struct ncclWindow_vidmem;  // nccl.h's ncclWindow_t

namespace pdvm::fused {

// Threads of a fused-kernel CTA (one CTA per SM): 20 warps, 5 per scheduler to hide a weight
// load's round trip behind the others' arithmetic, at a cap of 96 registers a thread (65536 /
// 640). 13B gained 2-14 % over 512 threads, 1B Q4_0 4 %, 1B F16 lost 3 % (perf-notes session 11).
constexpr int kThreads = 640;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxGroup = 8;  // query heads per KV head the attention phase handles
constexpr int kQuantBlock = 32;
constexpr int kMaxSplitItems = 256;  // row parts of a CTA's share (sums in shared memory)

// Repacked weight formats. Every format streams 16-byte chunks from a row-major main stream;
// quantized formats keep their per-32 block scales in a separate f16 stream.
// kFmtQ6_K: int8 quants (q - 32); its scale stream keeps Q6_K's own scales, one record per
// super-block of 256 (q6_k_scale): exact, 8.625 bits a weight (9 with an f16 scale per 16).
// kFmtQ4_K: Q4_1's nibbles; its scale stream keeps Q4_K's own scales, one record per super-block
// of 256 (q4_k_scale_min), so the weights stay exact at 4.625 bits a weight (5 as Q4_1 blocks).
// kFmtQ5_K: Q4_K's nibbles and records, each record followed by its chunks' fifth bits
// (q5_k_fifth_bits): exact, 5.625 bits a weight (5.5 in GGUF).
// kFmtUpg: UPG4/UPG3 codes as consecutive nibbles with a per-row side stream (pdvm_upg.cuh).
enum Format : int {
  kFmtF16 = 0, kFmtBF16 = 1, kFmtQ8_0 = 2, kFmtQ4_0 = 3, kFmtQ4_1 = 4, kFmtQ6_K = 5, kFmtUpg = 6, kFmtQ4_K = 7,
  kFmtQ5_K = 8
};

// Flag on a quantized format (not UPG) in DevMatrix::format: the matrix multiplies int16 blocks
// of the activations instead of int8 ones (set per model by FusedDecoder, see pdvm_fused.h). The
// weight layout is the base format's; is_quantized_format() is false for flagged formats, so no
// int8 blocks are built for them.
constexpr int kInt16Acts = 16;
__host__ __device__ constexpr int base_format(int format) { return format & ~kInt16Acts; }

__host__ __device__ constexpr int weights_per_chunk(int format) {
  return format == kFmtQ8_0 || format == kFmtQ6_K ? 16
         : format == kFmtQ4_0 || format == kFmtQ4_1 || format == kFmtQ4_K || format == kFmtQ5_K || format == kFmtUpg
             ? 32
                                                                          : 8;
}
// Formats multiplied against int8 activations.
__host__ __device__ constexpr bool is_quantized_format(int format) {
  return format == kFmtQ8_0 || format == kFmtQ4_0 || format == kFmtQ4_1 || format == kFmtQ6_K || format == kFmtUpg ||
         format == kFmtQ4_K || format == kFmtQ5_K;
}
// Formats with an f16 block-scale stream.
__host__ __device__ constexpr bool has_scale_stream(int format) { return is_quantized_format(format) && format != kFmtUpg; }
// Formats whose rows read the quantized blocks of the activations only (int8 blocks, or int16 ones
// where flagged kInt16Acts): those with a block-scale stream (UPG's outliers also read the floats).
__host__ __device__ constexpr bool reads_blocks_only(int format) { return has_scale_stream(base_format(format)); }
// 16-byte chunks sharing one scale entry.
__host__ __device__ constexpr int chunks_per_scale(int format) { return format == kFmtQ8_0 ? 2 : 1; }
// Halves per block in the scale stream: Q4_1 keeps (scale, min) pairs.
__host__ __device__ constexpr int scale_halves(int format) { return format == kFmtQ4_1 ? 2 : 1; }
// A Q4_K super-block's scale record: eight (scale, min) 6-bit pairs as bytes (u16 scale | min <<
// 8), then d and -dmin as halves. A Q6_K one: sixteen int8 scales, d, and a half of padding.
constexpr int kQ4KRecordHalves = 10;
constexpr int kQ6KRecordHalves = 10;
// A Q5_K record: Q4_K's, then the fifth bits of its eight chunks as one 32-bit word each.
constexpr int kQ5KRecordHalves = kQ4KRecordHalves + 16;
// Halves from a row's scale stream to the entry of its chunk `chunk` (Q4_K, Q6_K: the start of a
// super-block's record, where `chunk` starts one).
__host__ __device__ constexpr int scale_offset(int format, int chunk) {
  return format == kFmtQ4_K   ? chunk / 8 * kQ4KRecordHalves
         : format == kFmtQ5_K ? chunk / 8 * kQ5KRecordHalves
         : format == kFmtQ6_K ? chunk / 16 * kQ6KRecordHalves
                              : chunk / chunks_per_scale(format) * scale_halves(format);
}

struct DevMatrix {
  const uint8_t* data = nullptr;  // rows x row_bytes
  const __half* scales = nullptr;  // rows x scale_stride (quantized formats), rows 16-byte aligned
  int scale_stride = 0;            // halves per scale row: blocks x scale_halves, rounded up to 8
  int rows = 0;
  int cols = 0;
  int row_bytes = 0;
  int format = kFmtF16;
  // Rows split into 2^parts_log2 runs of whole 32-chunk columns, one warp each, where a CTA's
  // share has too few rows to keep its warps evenly busy (O and down projections only; set by
  // the host for the launch grid, see row_parts_log2).
  int parts_log2 = 0;
  // kFmtUpg only: per-row side records (table, row scale, outlier range, block scales; layout in
  // pdvm_upg.cuh), block scales per 32 << block_shift elements, outliers as CSR columns/values.
  const uint8_t* side = nullptr;
  int side_stride = 0;
  int block_shift = 0;
  const uint16_t* outlier_col = nullptr;
  const __half* outlier_val = nullptr;
};

struct DevLayer {
  const float* attn_norm;
  const float* ffn_norm;
  DevMatrix qk;  // [Wq; Wk] rows
  DevMatrix v;   // Wv: its own matrix, so it may have another type (Q4_K_M files mix Q6_K in)
  DevMatrix wo;
  DevMatrix gate;
  DevMatrix up;
  DevMatrix down;
};

// Token-level state shared by host and kernels.
struct DevStep {
  int position;  // of the token being computed
  int token;     // its id (embedding input)
  int n_out;     // tokens appended to history
};

// A vector as quantized blocks of 32: codes, and each block's scale and code sum. int8 blocks
// leave `low` null; int16 blocks (for kInt16Acts rows) keep the codes' high bytes in q and their
// low bytes in `low`, as the int16 staging does.
struct QuantVector {
  int8_t* q = nullptr;
  uint8_t* low = nullptr;
  float* scale = nullptr;
  int* sum = nullptr;
};

// Counter slots per layer; then one per KV head for the attention merge.
enum LayerCounter : int { kCtrQkv = 0, kCtrAttn, kCtrO, kCtrUp, kCtrDown, kLayerCounters };
enum ModelCounter : int { kCtrEmbed = 0, kCtrHead, kModelCounters };

struct Params {
  int n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab, n_ctx, n_rot;
  int n_chunks;  // attention context splits per KV head
  float rms_eps, attn_scale, rope_base;
  const float* rope_factors;  // n_rot/2 or null

  const DevLayer* layers;  // device array
  DevMatrix token_embd;
  DevMatrix output;
  const float* output_norm;

  float* x;          // residual stream [n_embd]
  float* q;          // roped queries [n_head * head_dim]
  float* attn_part;  // [n_head][n_chunks][head_dim + 2]: O (unnormalized), max, sum
  float* attn_out;   // [n_head * head_dim]
  // Vectors handed from their producers to the next phase as quantized blocks (QuantVector; null
  // where not): the attention output as int8 blocks, written by the items where every layer's O
  // matrix reads int8 blocks only (not int16 ones: the items' quantization on the critical path
  // cost more than the copy saved, docs/perf-notes.md session 20), and h, quantized by the gate/up
  // CTAs from shares of whole blocks (int16 ones in int16-activation models) where every down
  // matrix reads blocks only and such shares stay balanced. The next phase then copies them
  // instead of quantizing the floats on every CTA.
  QuantVector attn_q;  // [n_head * head_dim]
  QuantVector h_q;     // [n_ff]
  float* h;          // [n_ff]
  float* logits;     // [n_vocab]
  __half* k_cache;   // [layer][kv head][n_ctx][head_dim]
  __half* v_cache;
  float2* cta_best;  // [grid] (value, index) of each CTA's argmax
  int* history;      // greedy tokens, indexed by DevStep::n_out

  unsigned* layer_counters;  // [n_layer][kLayerCounters + n_head_kv]
  unsigned* layer_epochs;    // [n_layer]
  unsigned* model_counters;  // [kModelCounters]
  unsigned* model_epoch;
  DevStep* step;
  // The format of every matrix (layers, embedding, head), or -1: such models run a kernel
  // instance compiled for that format alone (kSingleFormats, pdvm_kernel_impl.cuh).
  int single_format = -1;

  // Tensor parallelism (layer halves, see kFlagAttnHalf): 0 on rank 0 (and without TP), where the
  // O and down projections add into x; 1 on the other ranks, where they replace x by this rank's
  // partial sums, so an in-place all-reduce of x leaves every rank with x + all partials.
  int partial_output;
  // Set with the kInt16Acts formats: launch_fused runs the kernel instances built for int16
  // activations, which stage them in shared memory (smem_layout).
  int int16_activations;
  // Some matrix is Q5_K (int16 activations then): launch_fused runs the one instance built for it.
  int with_q5_k;
  // In-kernel all-reduce (kFlagDeviceAllReduce, NCCL's device API): the partials go through a
  // symmetric window of [2 slots][ranks][n_embd] floats; CTA b meets CTA b of the other ranks at
  // LSA barrier b (the grids are equal), after the O and after the down projection.
  const ncclDevComm* tp_comm;
  ncclWindow_vidmem* tp_window;
  // Vocabulary-split head (two-launch tensor parallelism): `output` holds head rows vocab_first ..;
  // the head's last CTA leaves the token state alone and writes this rank's best (value, id as a
  // float) to head_pair, a slot of zeros elsewhere that the host all-reduces and
  // launch_pick_split_token reads. Null without a split head.
  int vocab_first;
  float* head_pair;
};

__host__ __device__ inline int layer_counter_stride(int n_head_kv) { return kLayerCounters + n_head_kv; }

// ---- memory access -----------------------------------------------------------------------

// Q4_K/Q5_K: scale d * sc and min -dmin * m of chunk j (0..7) of a super-block, from its record
// (kQ4KRecordHalves, or the head of a Q5_K one); exact in fp32, as the reference computes them.
__device__ __forceinline__ float2 k4_record_scale_min(const __half* record, int j) {
  const unsigned pair = __ldg(reinterpret_cast<const unsigned short*>(record) + j);
  const float2 d = __half22float2(__ldg(reinterpret_cast<const __half2*>(record + 8)));
  return make_float2(d.x * static_cast<float>(pair & 0xff), d.y * static_cast<float>(pair >> 8));
}
__device__ __forceinline__ float2 q4_k_scale_min(const __half* row_scales, int chunk) {
  return k4_record_scale_min(row_scales + chunk / 8 * kQ4KRecordHalves, chunk % 8);
}
__device__ __forceinline__ float2 q5_k_scale_min(const __half* row_scales, int chunk) {
  return k4_record_scale_min(row_scales + chunk / 8 * kQ5KRecordHalves, chunk % 8);
}

// Q5_K: the fifth bits of 32-weight `chunk`, laid out for the nibble words: bit 8b + k is element
// 4k + b (k < 4, the low nibbles of word k) and bit 8b + 4 + k element 16 + 4k + b (its high ones),
// so one shift and mask put word k's bits beside its nibbles (q5_k_bytes).
__host__ __device__ constexpr int q5_k_fifth_bit(int element) {
  return 8 * (element % 4) + (element < 16 ? element / 4 : 4 + (element - 16) / 4);
}
__device__ __forceinline__ uint32_t q5_k_fifth_bits(const __half* row_scales, int chunk) {
  const __half* record = row_scales + chunk / 8 * kQ5KRecordHalves;
  return __ldg(reinterpret_cast<const uint32_t*>(record + kQ4KRecordHalves) + chunk % 8);
}

// Q6_K: scale d * sc of 16-weight `chunk` of a row, from its super-block's record
// (kQ6KRecordHalves); exact in fp32, as the reference computes it.
__device__ __forceinline__ float q6_k_scale(const __half* row_scales, int chunk) {
  const __half* record = row_scales + chunk / 16 * kQ6KRecordHalves;
  const int scale = __ldg(reinterpret_cast<const signed char*>(record) + chunk % 16);
  return __half2float(__ldg(record + 8)) * static_cast<float>(scale);
}

// Weights: read once per token, never written by the kernels: skip L1, pull 256 B into L2.
__device__ __forceinline__ uint4 load_stream(const void* ptr) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(ptr));
  return v;
}

// Producer side: after the CTA's writes and a __syncthreads, one thread publishes them. The
// barrier orders the other threads' writes before this thread's release (PTX causality order is
// transitive through bar.sync), so no separate fence is needed.
__device__ __forceinline__ void signal_release(unsigned* counter) {
  asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(counter) : "memory");
}

// Adds `arrivals` without ordering anything and without waiting: a count nobody waits on now
// (a later acquire of a counter this thread releases after it sees it).
__device__ __forceinline__ void count_relaxed(unsigned* counter, unsigned arrivals) {
  asm volatile("red.relaxed.gpu.global.add.u32 [%0], %1;" ::"l"(counter), "r"(arrivals) : "memory");
}

// Like signal_release (adding `arrivals`), but returns true for the arrival that completes
// `target`; the acquire half makes the other arrivals' writes visible to the CTA after a barrier.
__device__ __forceinline__ bool signal_is_last(unsigned* counter, unsigned target, unsigned arrivals = 1) {
  unsigned old;
  asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], %2;" : "=r"(old) : "l"(counter), "r"(arrivals) : "memory");
  return old + arrivals == target;
}

__device__ __forceinline__ unsigned load_acquire(const unsigned* counter) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(counter) : "memory");
  return v;
}

// Consumer side: the whole CTA waits until `counter` reaches `target` (wrap-safe).
__device__ __forceinline__ void cta_wait(const unsigned* counter, unsigned target) {
  if (threadIdx.x == 0) {
    while (static_cast<int>(load_acquire(counter) - target) < 0) __nanosleep(40);
  }
  __syncthreads();
}

// ---- chunk decoding ------------------------------------------------------------------------

__device__ __forceinline__ float dot8_f16(uint4 w, const float* x) {
  const __half2* h = reinterpret_cast<const __half2*>(&w);
  const float4 x0 = *reinterpret_cast<const float4*>(x);
  const float4 x1 = *reinterpret_cast<const float4*>(x + 4);
  float2 a = __half22float2(h[0]), b = __half22float2(h[1]);
  float2 c = __half22float2(h[2]), d = __half22float2(h[3]);
  float s = a.x * x0.x;
  s = fmaf(a.y, x0.y, s);
  s = fmaf(b.x, x0.z, s);
  s = fmaf(b.y, x0.w, s);
  s = fmaf(c.x, x1.x, s);
  s = fmaf(c.y, x1.y, s);
  s = fmaf(d.x, x1.z, s);
  s = fmaf(d.y, x1.w, s);
  return s;
}

__device__ __forceinline__ float bf16_lo(uint32_t v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t v) { return __uint_as_float(v & 0xffff0000u); }

__device__ __forceinline__ float dot8_bf16(uint4 w, const float* x) {
  const float4 x0 = *reinterpret_cast<const float4*>(x);
  const float4 x1 = *reinterpret_cast<const float4*>(x + 4);
  float s = bf16_lo(w.x) * x0.x;
  s = fmaf(bf16_hi(w.x), x0.y, s);
  s = fmaf(bf16_lo(w.y), x0.z, s);
  s = fmaf(bf16_hi(w.y), x0.w, s);
  s = fmaf(bf16_lo(w.z), x1.x, s);
  s = fmaf(bf16_hi(w.z), x1.y, s);
  s = fmaf(bf16_lo(w.w), x1.z, s);
  s = fmaf(bf16_hi(w.w), x1.w, s);
  return s;
}

// A UPG row's side record (layout: pdvm_upg_layout.h).
__device__ __forceinline__ const uint8_t* upg_side(const DevMatrix& m, int row) {
  return m.side + static_cast<int64_t>(row) * m.side_stride;
}

// The row's outlier range [begin, end).
__device__ __forceinline__ int2 upg_outliers(const uint8_t* side) {
  return __ldg(reinterpret_cast<const int2*>(side + kUpgOutlierRange));
}

// Element `i` of row `row`, for the embedding lookup.
template <int kFlaggedFormat>
__device__ __forceinline__ float matrix_element(const DevMatrix& m, int row, int i) {
  constexpr int kFormat = base_format(kFlaggedFormat);
  const uint8_t* r = m.data + static_cast<int64_t>(row) * m.row_bytes;
  if constexpr (kFormat == kFmtUpg) {
    // In the format's order: the exact int8 product, then the row scale, then the outlier.
    const uint8_t* side = upg_side(m, row);
    const int code = (r[i / 2] >> (4 * (i & 1))) & 15;
    const int8_t block_scale = static_cast<int8_t>(side[kUpgBlockScales + (i >> (5 + m.block_shift))]);
    float value = *reinterpret_cast<const float*>(side + kUpgRowScale) *
                  static_cast<float>(block_scale * static_cast<int8_t>(side[code]));
    const int2 range = upg_outliers(side);
    for (int j = range.x; j < range.y; ++j) {
      if (m.outlier_col[j] == i) value += __half2float(m.outlier_val[j]);
    }
    return value;
  } else if constexpr (kFormat == kFmtF16) {
    return __half2float(reinterpret_cast<const __half*>(r)[i]);
  } else if constexpr (kFormat == kFmtBF16) {
    return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(r)[i]);
  } else {
    const __half* row_scales = m.scales + static_cast<int64_t>(row) * m.scale_stride;
    const int chunk = i / weights_per_chunk(kFormat);
    if constexpr (kFormat == kFmtQ8_0 || kFormat == kFmtQ6_K) {
      const float scale =
          kFormat == kFmtQ6_K ? q6_k_scale(row_scales, chunk) : __half2float(row_scales[scale_offset(kFormat, chunk)]);
      return scale * static_cast<float>(reinterpret_cast<const int8_t*>(r)[i]);
    } else {
      const int in_block = i % kQuantBlock;
      const uint8_t byte = r[(i / kQuantBlock) * 16 + (in_block & 15)];
      const int q = in_block < 16 ? (byte & 0xf) : (byte >> 4);
      if constexpr (kFormat == kFmtQ4_K) {
        const float2 scale_min = q4_k_scale_min(row_scales, chunk);
        return scale_min.x * static_cast<float>(q) + scale_min.y;
      } else if constexpr (kFormat == kFmtQ5_K) {
        const float2 scale_min = q5_k_scale_min(row_scales, chunk);
        const int fifth = static_cast<int>((q5_k_fifth_bits(row_scales, chunk) >> q5_k_fifth_bit(in_block)) & 1);
        const int q5 = q | fifth << 4;
        return scale_min.x * static_cast<float>(q5) + scale_min.y;
      }
      const __half* block_scales = row_scales + scale_offset(kFormat, chunk);
      const float scale = __half2float(block_scales[0]);
      if constexpr (kFormat == kFmtQ4_1) return scale * static_cast<float>(q) + __half2float(block_scales[1]);
      return scale * static_cast<float>(q - 8);
    }
  }
}

template <int kFormat>
struct FormatTag {
  static constexpr int value = kFormat;
};

// The formats one kernel instance handles: its quantized matrices (UPG aside) all multiply int8
// activations or all float ones (kInt16Acts), as FusedDecoder flags them per model. Each instance
// compiles only its own kind's matvec loops: with both kinds in one kernel, the float loops'
// register demand made the int8 ones spill (docs/perf-notes.md, session 3, fused-spills).
// kOnly >= 0: the instance of a model whose matrices all have format kOnly compiles its loops alone.
// kOnly == kWithQ5K: the generic int16 formats and Q5_K (whose code would cost the other int16
// models in their instance).
constexpr int kWithQ5K = -2;
template <bool kInt16Activations, int kOnly, class Fn>
__device__ __forceinline__ void dispatch_format(int format, Fn&& fn) {
  constexpr int kActs = kInt16Activations ? kInt16Acts : 0;
  if constexpr (kOnly >= 0) {
    fn(FormatTag<kOnly>{});
  } else if (kOnly == kWithQ5K && format == (kFmtQ5_K | kInt16Acts)) {
    if constexpr (kOnly == kWithQ5K) fn(FormatTag<kFmtQ5_K | kInt16Acts>{});
  } else if (kInt16Activations && format == (kFmtQ4_K | kInt16Acts)) {
    // Q4_K layers always make a model's activations int16 (fused_int16_activation_type).
    if constexpr (kInt16Activations) fn(FormatTag<kFmtQ4_K | kInt16Acts>{});
  } else {
    switch (format) {
      case kFmtF16: fn(FormatTag<kFmtF16>{}); break;
      case kFmtBF16: fn(FormatTag<kFmtBF16>{}); break;
      case kFmtQ8_0 | kActs: fn(FormatTag<kFmtQ8_0 | kActs>{}); break;
      case kFmtQ4_0 | kActs: fn(FormatTag<kFmtQ4_0 | kActs>{}); break;
      case kFmtQ4_1 | kActs: fn(FormatTag<kFmtQ4_1 | kActs>{}); break;
      case kFmtUpg: fn(FormatTag<kFmtUpg>{}); break;
      default: fn(FormatTag<kFmtQ6_K | kActs>{}); break;
    }
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Contiguous share [begin, end) of n items for CTA b of g.
__device__ __forceinline__ void cta_share(int n, int& begin, int& end) {
  begin = static_cast<int>(static_cast<int64_t>(n) * blockIdx.x / gridDim.x);
  end = static_cast<int>(static_cast<int64_t>(n) * (blockIdx.x + 1) / gridDim.x);
}

}  // namespace pdvm::fused
