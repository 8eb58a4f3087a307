// One-token decode matvec of Q8_0 and Q4_0 weights on a persistent grid.
//
// The matvec of matmul.cu gives each warp two rows for one pass and ends, so a 13B row of
// Q4_0 (160 16-byte chunks) filled 5 of a lane's 8 load slots and every block paid its start
// and tail; it also needs a separate kernel to quantize x. Here each warp takes rows
// round-robin over the whole grid (neighbouring warps read neighbouring rows) and walks their
// 32-chunk columns in batches of kLoads that run across row boundaries, so every load slot
// carries weights. Weights are never written by a kernel, so a warp issues its first batch
// before the programmatic-launch wait: the loads overlap the end of the previous kernel. Each
// block quantizes x to int8 in shared memory itself after the wait (the arithmetic of
// quantize_x_kernel), which saves that kernel's launch. Where the rows are long and fewer than
// a few per warp (the 13B down projection), each row is split between 2-8 warps of a block.
//
// Dense (F16/BF16/F32) rows measured slower this way than with matmul.cu's two-row split-k
// kernel (13B shapes 2025-2525 GB/s against 2594-2897: a row is a warp's unit of work, so with
// few rows per warp the load is uneven, and x is read once per row instead of once per pair),
// so they stay there (docs/perf-notes.md, session 3).
#include <algorithm>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "cuda/env_switch.h"
#include "cuda/int8_dot.cuh"
#include "cuda/launch.cuh"
#include "cuda/ops.cuh"
#include "cuda/swiglu.cuh"

namespace pdvm::cuda {
namespace {

constexpr int kStreamWarps = 16;
constexpr int kStreamThreads = kStreamWarps * 32;
constexpr int kBlocksPerSm = 2;
constexpr int kLoads = 8;  // 16-byte chunks in flight per lane
constexpr int kMaxRowParts = 8;  // parts of a split row; at most the warps of a block
// Rows are split only from this many quantized bytes: on an H200 (session 4) the split cut
// Q8_0 rows of 5120 bytes (k = 5120: 12.0 -> 11.2 us) and longer, and Q4_0 rows of 6912
// (k = 13824: 20.7 -> 19.9 us), but slowed every shorter row (Q4_0 k = 8192, 4096 bytes: 6.5
// -> 7.5 us; k = 5120: 7.9 -> 9.1; all k = 2048): a short row's parts add more reduction than
// they save walk.
constexpr int64_t kMinSplitRowBytes = 5120;
// From this many bytes the two-batch variant runs (one block per SM): it measured 14 % and 8 %
// faster than the one-batch split at k = 13824 (Q4_0 6912 bytes: 19.9 -> 17.2 us, Q8_0: 26.6
// -> 24.4), even at 8192 bytes of Q8_0, and slower at 5120 (11.2 -> 11.6).
constexpr int64_t kMinPipelinedRowBytes = 6144;

// The matrices of one launch share x, format and row length; rows are numbered across them.
struct StreamBatch {
  const uint8_t* q[kMaxMatvecBatch];
  const __half* scales[kMaxMatvecBatch];
  float* out[kMaxMatvecBatch];
  int64_t first_row[kMaxMatvecBatch + 1];
  int count;
  int64_t q_row_bytes;
  int64_t blocks_per_row;
  int n_chunks;
  int columns;       // 32-chunk columns per row
  int parts_log2;    // each row is split into 2^parts_log2 parts ...
  int part_columns;  // ... of this many columns (the last may have fewer)
  int max_rounds;    // items per warp at most (the parts' sums in shared memory), if split
};

// Elements per 16-byte chunk.
template <WeightFormat kFormat>
constexpr int kChunkElems = kFormat == WeightFormat::kQ8_0 ? 16 : 32;

// Where the int8 copy of x lives in shared memory. Q4_0 chunk c needs x block c's two halves:
// they are kept in two arrays so that a warp's 16-byte reads of consecutive chunks are
// consecutive (one array with 32-byte steps between lanes would conflict in banks). Q8_0 chunk
// c is the 16 bytes at 16 c. Per block: (d, d * sum of its int8 values).
template <WeightFormat kFormat>
struct SharedX {
  int4* low;   // Q4_0: first halves; Q8_0: all of x
  int4* high;  // Q4_0: second halves
  float2* ds;
  __device__ SharedX(uint8_t* base, int64_t k) {
    low = reinterpret_cast<int4*>(base);
    high = reinterpret_cast<int4*>(base + k / 2);
    ds = reinterpret_cast<float2*>(base + k);
  }
};

// x of a launch: a vector, or SwiGLU of two (x = silu(gate) * up, the arithmetic of
// swiglu_kernel), which block 0 also writes to `hidden` so the op's output still exists, or
// the RMSNorm of x (+ residual): see stage_norm_input.
struct XInput {
  const float* x;
  const float* up;
  float* hidden;
  NormInput norm;  // norm.weight null: no norm
  unsigned* arrivals;
};

// Shared memory of a launch: int8 x, then (d, d * sum) per 32-block, then the parts' sums of
// split rows, then (RMSNorm input) x as floats at a 16-byte boundary.
__host__ __device__ constexpr int64_t staged_x_offset(int64_t k, int max_rounds) {
  return (k + k / 32 * 8 + int64_t{max_rounds} * kStreamWarps * 4 + 15) / 16 * 16;
}

__device__ __forceinline__ float4 silu_times4(float4 g, float4 u) {
  return make_float4(silu_times(g.x, u.x), silu_times(g.y, u.y), silu_times(g.z, u.z), silu_times(g.w, u.w));
}

// RMSNorm input, the arithmetic of elementwise.cu's norm_row (only its sum order differs):
// stages s = x (+ residual) in shared memory and returns 1 / sqrt(mean(s^2) + eps). Each block
// needs all of s, so the op's outputs (s, and s * scale * weight) cannot be written while other
// blocks may still read x and residual, which they may alias (x = x + y; y = norm(x)): a block
// counts itself in *arrivals once it has read them, and the last one writes the outputs
// (norm_outputs_if_last) and resets the count for the next launch. `last` is valid after the
// next __syncthreads.
__device__ float stage_norm_input(const XInput& in, int64_t k, float* staged, bool* last) {
  __shared__ float warp_sums[kStreamWarps];
  float squares = 0.0f;
#pragma unroll 1  // the weights loaded before the wait hold half the registers
  for (int e = static_cast<int>(threadIdx.x) * 4; e < k; e += kStreamThreads * 4) {
    float4 v = *reinterpret_cast<const float4*>(in.x + e);
    if (in.norm.residual) {
      const float4 r = *reinterpret_cast<const float4*>(in.norm.residual + e);
      v = make_float4(v.x + r.x, v.y + r.y, v.z + r.z, v.w + r.w);
    }
    *reinterpret_cast<float4*>(staged + e) = v;
    squares += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) squares += __shfl_xor_sync(0xffffffffu, squares, offset);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = squares;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    *last = atomicAdd(in.arrivals, 1u) == gridDim.x - 1;
  }
  float total = 0.0f;
#pragma unroll
  for (int w = 0; w < kStreamWarps; ++w) total += warp_sums[w];
  return 1.0f / sqrtf(total / static_cast<float>(k) + in.norm.eps);
}

__device__ __forceinline__ float4 normed(const float* staged, const float* weight, float scale, int e) {
  const float4 s = *reinterpret_cast<const float4*>(staged + e), w = *reinterpret_cast<const float4*>(weight + e);
  return make_float4(s.x * scale * w.x, s.y * scale * w.y, s.z * scale * w.z, s.w * scale * w.w);
}

__device__ void norm_outputs_if_last(const XInput& in, int64_t k, const float* staged, float scale, bool last) {
  if (!last) return;
  for (int e = static_cast<int>(threadIdx.x) * 4; e < k; e += kStreamThreads * 4) {
    if (in.norm.sum_out) *reinterpret_cast<float4*>(in.norm.sum_out + e) = *reinterpret_cast<const float4*>(staged + e);
    *reinterpret_cast<float4*>(in.norm.out + e) = normed(staged, in.norm.weight, scale, e);
  }
  if (threadIdx.x == 0) *in.arrivals = 0;
}

// Per 32-block d = max |x| / 127 and q = round(x * (1 / d)), as quantize_x_kernel computes them;
// eight lanes per block, four values each. x is in.x, SwiGLU(in.x, in.up), or (kNorm) the
// normed staged values.
template <WeightFormat kFormat, bool kNorm>
__device__ void quantize_x_to_shared(const XInput& in, int64_t k, const SharedX<kFormat>& xs, const float* staged,
                                     float norm_scale) {
  constexpr int kLanesPerBlock = 8, kBlocksPerPass = kStreamThreads / kLanesPerBlock;
  const int n_blocks = static_cast<int>(k / 32), part = threadIdx.x % kLanesPerBlock;
  for (int b0 = 0; b0 < n_blocks; b0 += kBlocksPerPass) {
    const int b = b0 + static_cast<int>(threadIdx.x) / kLanesPerBlock;
    const bool valid = b < n_blocks;
    const int e = b * 32 + part * 4;
    float4 v;
    if constexpr (kNorm) {
      v = valid ? normed(staged, in.norm.weight, norm_scale, e) : make_float4(0, 0, 0, 0);
    } else {
      v = valid ? *reinterpret_cast<const float4*>(in.x + e) : make_float4(0, 0, 0, 0);
      if (in.up && valid) {
        v = silu_times4(v, *reinterpret_cast<const float4*>(in.up + e));
        if (blockIdx.x == 0) *reinterpret_cast<float4*>(in.hidden + e) = v;
      }
    }
    const auto codes = int8_dot::quantize_block<kLanesPerBlock>({v.x, v.y, v.z, v.w});
    if (valid) {
      const char4 packed = make_char4(static_cast<signed char>(codes.q[0]), static_cast<signed char>(codes.q[1]),
                                      static_cast<signed char>(codes.q[2]), static_cast<signed char>(codes.q[3]));
      char4* dst;
      if constexpr (kFormat == WeightFormat::kQ4_0)
        dst = reinterpret_cast<char4*>(part < 4 ? xs.low + b : xs.high + b) + part % 4;
      else
        dst = reinterpret_cast<char4*>(xs.low + 2 * b) + part;
      *dst = packed;
      if (part == 0) xs.ds[b] = make_float2(codes.d, codes.d * static_cast<float>(codes.sum));
    }
  }
}

// acc += chunk c of a row (16 bytes w, block scale ws) times x.
template <WeightFormat kFormat>
__device__ __forceinline__ float accumulate_chunk(uint4 w, float ws, int c, const SharedX<kFormat>& xs, float acc) {
  if constexpr (kFormat == WeightFormat::kQ8_0) {
    const int sum = int8_dot::q8_chunk_dot(w, xs.low[c]);
    return fmaf(ws * xs.ds[c / 2].x, static_cast<float>(sum), acc);
  } else {
    // Byte i holds elements i (low nibble) and i + 16 (high nibble), each nibble n - 8.
    const int s = int8_dot::q4_chunk_dot(w, xs.low[c], xs.high[c]);
    const float2 ds = xs.ds[c];
    return fmaf(ws, fmaf(ds.x, static_cast<float>(s), -8.0f * ds.y), acc);
  }
}

// A row's position in the launch: which matrix, and its row there.
struct RowPlace {
  int m;
  int row;
};
__device__ __forceinline__ RowPlace place_of(const StreamBatch& b, int row) {
  int m = 0;
  while (m + 1 < b.count && row >= b.first_row[m + 1]) ++m;
  return {m, row - static_cast<int>(b.first_row[m])};
}

// One batch of a lane's loads: kLoads chunks and their block scales, two per register (as
// floats, 64 registers did not suffice).
struct LoadBatch {
  uint4 w[kLoads];
  __half2 ws[kLoads / 2];
};

// A warp's unit of work is an item: part (item % parts) of row (item / parts), where parts =
// 2^parts_log2 splits a row into runs of whole 32-chunk columns. Items go round-robin over the
// grid's warps, and the warp count is a multiple of 16, so the parts of a row are neighbouring
// warps of one block in the same round: each stores its sum in shared memory and the block
// adds them in part order at the end (the result does not depend on which warp finishes
// first). kPipelined keeps two batches of loads in flight per warp (one block per SM for the
// registers) instead of one.
template <WeightFormat kFormat, bool kSplit, bool kPipelined, bool kNorm>
__global__ void __launch_bounds__(kStreamThreads, kPipelined ? 1 : kBlocksPerSm)
    streaming_matvec_kernel(const __grid_constant__ StreamBatch b, const XInput in) {
  extern __shared__ int4 shared_words[];
  const int lane = threadIdx.x % 32;
  const int warp = static_cast<int>(threadIdx.x / 32);
  // 32-bit counters (the host checks rows x columns fits): 64-bit ones spilled registers.
  const int n_warps = static_cast<int>(gridDim.x) * kStreamWarps;
  const int first_item = static_cast<int>(blockIdx.x) * kStreamWarps + warp;
  const int parts_log2 = kSplit ? b.parts_log2 : 0;  // a separate instance: the split's counters cost registers
  const int total_items = static_cast<int>(b.first_row[b.count]) << parts_log2;
  const int items = first_item < total_items ? (total_items - first_item + n_warps - 1) / n_warps : 0;
  // Every item of this warp is the same part of its row.
  const int column_begin = (warp & ((1 << parts_log2) - 1)) * b.part_columns;
  const int column_end = kSplit ? min(b.columns, column_begin + b.part_columns) : b.columns;
  const int steps = items * (column_end - column_begin);  // (item, column) pairs of this warp

  // Load cursor: the next column to load and its row's streams.
  int load_item = first_item;
  int load_column = column_begin;
  const uint4* q_row = nullptr;
  const __half* scale_row = nullptr;
  auto seek = [&](int row) {
    const RowPlace p = place_of(b, row);
    q_row = reinterpret_cast<const uint4*>(b.q[p.m] + static_cast<int64_t>(p.row) * b.q_row_bytes);
    scale_row = b.scales[p.m] + static_cast<int64_t>(p.row) * b.blocks_per_row;
  };
  if (items > 0) seek(load_item >> parts_log2);

  auto load_batch = [&](LoadBatch& batch, int done) {
#pragma unroll
    for (int u = 0; u < kLoads; ++u) {
      const int c = load_column * 32 + lane;
      const bool live = done + u < steps;
      const bool present = live && c < b.n_chunks;
      batch.w[u] = present ? __ldcs(q_row + c) : make_uint4(0, 0, 0, 0);
      const __half scale = present ? __ldg(scale_row + (kFormat == WeightFormat::kQ4_0 ? c : c / 2)) : __half{};
      if (u % 2 == 0)
        batch.ws[u / 2].x = scale;
      else
        batch.ws[u / 2].y = scale;
      if (live && ++load_column == column_end) {
        load_column = column_begin;
        load_item += n_warps;
        if (load_item < total_items) seek(load_item >> parts_log2);
      }
    }
  };
  LoadBatch front;
  [[maybe_unused]] LoadBatch back;
  load_batch(front, 0);  // weights only: allowed before the wait
  if constexpr (kPipelined) load_batch(back, kLoads);
  pdl_begin();

  const int64_t k = static_cast<int64_t>(b.n_chunks) * kChunkElems<kFormat>;
  SharedX<kFormat> xs(reinterpret_cast<uint8_t*>(shared_words), k);
  float* part_sums = reinterpret_cast<float*>(reinterpret_cast<uint8_t*>(shared_words) + k + k / 32 * 8);
  float* staged = reinterpret_cast<float*>(reinterpret_cast<uint8_t*>(shared_words) + staged_x_offset(k, b.max_rounds));
  __shared__ bool last_to_read;
  const float norm_scale = kNorm ? stage_norm_input(in, k, staged, &last_to_read) : 0.0f;
  quantize_x_to_shared<kFormat, kNorm>(in, k, xs, staged, norm_scale);
  __syncthreads();
  if constexpr (kNorm) norm_outputs_if_last(in, k, staged, norm_scale, last_to_read);

  int acc_item = first_item;
  int round = 0;  // items of this warp finished (split rows)
  int acc_column = column_begin;
  float acc = 0.0f;
  auto consume = [&](const LoadBatch& batch, int done) {
#pragma unroll
    for (int u = 0; u < kLoads; ++u) {
      if (done + u < steps) {
        const int c = acc_column * 32 + lane;
        if (c < b.n_chunks) {
          const float scale = __half2float(u % 2 == 0 ? batch.ws[u / 2].x : batch.ws[u / 2].y);
          acc = accumulate_chunk<kFormat>(batch.w[u], scale, c, xs, acc);
        }
        if (++acc_column == column_end) {
#pragma unroll
          for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
          if (lane == 0) {
            if constexpr (!kSplit) {
              const RowPlace p = place_of(b, acc_item);
              b.out[p.m][p.row] = acc;
            } else {
              part_sums[round * kStreamWarps + warp] = acc;
            }
          }
          acc = 0.0f;
          acc_column = column_begin;
          if constexpr (kSplit)
            ++round;
          else
            acc_item += n_warps;
        }
      }
    }
  };
  constexpr int kStride = kPipelined ? 2 * kLoads : kLoads;
  for (int done = 0; done < steps; done += kStride) {
    consume(front, done);
    if (done + kStride < steps) load_batch(front, done + kStride);
    if constexpr (kPipelined) {
      consume(back, done + kLoads);
      if (done + kStride + kLoads < steps) load_batch(back, done + kStride + kLoads);
    }
  }

  if constexpr (kSplit) {
    __syncthreads();
    const int parts = 1 << parts_log2, rows_per_round = kStreamWarps >> parts_log2;
    for (int t = static_cast<int>(threadIdx.x); t < b.max_rounds * rows_per_round; t += kStreamThreads) {
      const int r = t / rows_per_round, first_warp = (t % rows_per_round) << parts_log2;
      const int item = static_cast<int>(blockIdx.x) * kStreamWarps + first_warp + r * n_warps;
      if (item >= total_items) continue;
      float sum = 0.0f;
      for (int p = 0; p < parts; ++p) sum += part_sums[r * kStreamWarps + first_warp + p];
      const RowPlace place = place_of(b, item >> parts_log2);
      b.out[place.m][place.row] = sum;
    }
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Calls f with std::true_type / std::false_type for each runtime flag (kernel instances).
template <class F>
void with_constants(F&& f) {
  f();
}
template <class F, class... Flags>
void with_constants(F&& f, bool flag, Flags... rest) {
  if (flag)
    with_constants([&](auto... tags) { f(std::true_type{}, tags...); }, rest...);
  else
    with_constants([&](auto... tags) { f(std::false_type{}, tags...); }, rest...);
}

// The split of each row into 2^s parts that makes the longest warp's walk (rounds x columns of
// a part) shortest; no split on ties. Every part must keep at least one column, and the item
// count must fit the kernel's 32-bit counters.
int row_parts_log2(int64_t rows, int columns, int64_t n_warps) {
  int best = 0;
  int64_t best_steps = ceil_div(rows, n_warps) * columns;
  for (int s = 1; (1 << s) <= kMaxRowParts; ++s) {
    const int parts = 1 << s, part_columns = static_cast<int>(ceil_div(columns, parts));
    if ((parts - 1) * part_columns >= columns || rows * parts > (int64_t{1} << 30)) continue;
    const int64_t steps = ceil_div(rows * parts, n_warps) * part_columns;
    if (steps < best_steps) {
      best = s;
      best_steps = steps;
    }
  }
  return best;
}

bool launch_streaming(CudaContext& ctx, const WeightView* views, float* const* outs, int count, const XInput& in) {
  // A/B switches for timing: PDVM_CUDA_STREAM_MATVEC=0 keeps matmul.cu's matvec for every
  // shape, PDVM_CUDA_STREAM_SPLIT=0 never splits rows, PDVM_CUDA_STREAM_PIPELINE=0 never takes
  // the two-batch variant and =1 takes it for every shape.
  static const bool enabled = !env_equals("PDVM_CUDA_STREAM_MATVEC", "0");
  static const bool split_allowed = !env_equals("PDVM_CUDA_STREAM_SPLIT", "0");
  static const bool never_pipelined = env_equals("PDVM_CUDA_STREAM_PIPELINE", "0");
  static const bool always_pipelined = env_equals("PDVM_CUDA_STREAM_PIPELINE", "1");
  const WeightView& w = views[0];
  if (!enabled || (w.format != WeightFormat::kQ8_0 && w.format != WeightFormat::kQ4_0)) return false;
  StreamBatch batch{};
  batch.count = count;
  batch.q_row_bytes = w.q_row_bytes;
  batch.blocks_per_row = w.blocks_per_row;
  batch.n_chunks = static_cast<int>(w.n_chunks);
  batch.columns = static_cast<int>((w.n_chunks + 31) / 32);
  for (int m = 0; m < count; ++m) {
    PDVM_CHECK(views[m].format == w.format && views[m].k == w.k && views[m].q_row_bytes == w.q_row_bytes &&
               views[m].blocks_per_row == w.blocks_per_row);
    batch.q[m] = views[m].q;
    batch.scales[m] = reinterpret_cast<const __half*>(views[m].scales);
    batch.out[m] = outs[m];
    batch.first_row[m + 1] = batch.first_row[m] + views[m].n_rows;
  }
  const int64_t rows = batch.first_row[count];
  if (rows * batch.columns > (int64_t{1} << 30)) return false;  // the kernel counts in 32 bits
  const bool pipelined = always_pipelined || (!never_pipelined && w.q_row_bytes >= kMinPipelinedRowBytes);
  const bool split = split_allowed && w.q_row_bytes >= kMinSplitRowBytes;
  const int64_t max_warps = int64_t{ctx.sm_count} * (pipelined ? 1 : kBlocksPerSm) * kStreamWarps;
  batch.parts_log2 = split ? row_parts_log2(rows, batch.columns, max_warps) : 0;
  batch.part_columns = static_cast<int>(ceil_div(batch.columns, int64_t{1} << batch.parts_log2));
  const int64_t items = rows << batch.parts_log2;
  const int64_t blocks = std::min(max_warps, ceil_div(items, kStreamWarps) * kStreamWarps) / kStreamWarps;
  batch.max_rounds = batch.parts_log2 > 0 ? static_cast<int>(ceil_div(items, blocks * kStreamWarps)) : 0;
  const int64_t smem = staged_x_offset(w.k, batch.max_rounds) + (in.norm.weight ? w.k * 4 : 0);
  // The default limit (static shared memory included); longer rows keep the old kernel.
  if (smem > 48 * 1024 - 256) return false;
  with_constants(
      [&](auto split_tag, auto pipelined_tag, auto norm_tag) {
        constexpr bool kSplit = decltype(split_tag)::value, kPipelined = decltype(pipelined_tag)::value,
                       kNorm = decltype(norm_tag)::value;
        auto* kernel = w.format == WeightFormat::kQ8_0
                           ? streaming_matvec_kernel<WeightFormat::kQ8_0, kSplit, kPipelined, kNorm>
                           : streaming_matvec_kernel<WeightFormat::kQ4_0, kSplit, kPipelined, kNorm>;
        launch(ctx, "streaming_matvec_kernel", kernel, dim3(static_cast<unsigned>(blocks)), dim3(kStreamThreads),
               static_cast<size_t>(smem), batch, in);
      },
      batch.parts_log2 > 0, pipelined, in.norm.weight != nullptr);
  return true;
}

}  // namespace

bool streaming_matvec(CudaContext& ctx, const WeightView* views, float* const* outs, int count, const float* x,
                      int n_tokens) {
  return n_tokens == 1 && launch_streaming(ctx, views, outs, count, XInput{x, nullptr, nullptr, {}, nullptr});
}

bool streaming_swiglu_matvec(CudaContext& ctx, const WeightView& w, float* out, const float* gate, const float* up,
                             float* hidden) {
  return launch_streaming(ctx, &w, &out, 1, XInput{gate, up, hidden, {}, nullptr});
}

bool streaming_norm_matvec(CudaContext& ctx, const WeightView* views, float* const* outs, int count,
                           const NormInput& norm) {
  PDVM_CHECK(norm.weight && norm.out);
  return launch_streaming(ctx, views, outs, count,
                          XInput{norm.x, nullptr, nullptr, norm, static_cast<unsigned*>(ctx.grid_arrivals.get())});
}

}  // namespace pdvm::cuda
