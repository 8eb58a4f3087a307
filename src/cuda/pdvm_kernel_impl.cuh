// The PDVM fused decode kernel. One CTA per SM; every CTA walks the same phases and takes a
// static, contiguous share of each phase's rows, so it knows which weights it streams next and
// pulls their head into L2 before it waits on the counter of the activations they multiply.
//
// Per layer: QKV+RoPE+KV append -> attention partials per (KV head, context chunk), merged by
// the last chunk to arrive -> O-projection + residual -> RMSNorm + gate/up + SiLU*mul -> down +
// residual. Counters grow monotonically: phase targets are (epoch + 1) * arrivals, where the
// layer's epoch is bumped by the last CTA to finish its down projection.
//
// The kernel is compiled per activation kind (int8 or int16, see kInt16Acts) and per layer part
// (whole layers; one half of each, or whole layers with the in-kernel all-reduce, for tensor
// parallelism), and for whole layers of int8-activation models whose matrices all have one
// format, once per format (pdvm_kernel_formats.cu); launch_fused picks the instance: the kernel
// sits at its register cap (96 at 640 threads), and every code path compiled into one instance
// shares its register allocation and its code (docs/perf-notes.md: the float-activation path,
// which the int16 one replaced, and the TP paths made the int8 path spill; an instance with one
// format's loops only is 2-8 % faster at 1B).
//
// This header holds the device code; pdvm_kernel.cu and pdvm_kernel_formats.cu instantiate it.

#pragma once

#include <nccl_device.h>

#include <algorithm>
#include <cfloat>
#include <climits>

#include "cuda/pdvm_kernel.cuh"
#include "cuda/pdvm_matvec.cuh"

namespace pdvm::fused {

using FusedKernel = void (*)(Params, int, int, int);

// Formats with an instance of their own (whole layers, int8 activations), and that instance
// (pdvm_kernel_formats.cu); nullptr for other formats.
constexpr int kSingleFormats[] = {kFmtF16, kFmtQ8_0, kFmtQ4_0, kFmtUpg};
FusedKernel single_format_kernel(int format);
// The instance for whole layers of int16-activation models that hand h over as int16 blocks
// (Params::h_q; pdvm_kernel_formats.cu).
FusedKernel int16_h_blocks_kernel();
// The instance for models with Q5_K matrices (Params::with_q5_k; whole layers, h's hand-off too).
FusedKernel q5_k_kernel();

namespace {


constexpr int kSmemHeader = 4 * kWarps;  // floats for reductions and flags
constexpr int kPrefetchBytes = 64 * 1024;

// Shared-memory regions; `xs` is also the attention phase's scratch.
struct Smem {
  float* red;
  int* flag;
  float* xs;
  int8_t* xq;
  float* q_scale;
  int* q_sum;
  float* part_sums;  // [kMaxSplitItems]
  float2* rope;      // [n_rot / 2]: cos, sin of this token's RoPE angles
  // int16 blocks (kInt16Acts matrices; empty in models without them).
  int8_t* q16_high;
  uint8_t* q16_low;
  float* scale16;
  int* sum16;
};

__host__ __device__ inline size_t align16(size_t n) { return (n + 15) / 16 * 16; }

// Positions one step of an attention item stages: kAttnRounds per position group, so the K/V
// rows a lane loads per step are kAttnRounds x 16 bytes each, and V's rows take kAttnRounds x
// kThreads x 16 bytes (40 KB) of shared memory whatever the head size.
constexpr int kAttnRounds = 4;
__host__ __device__ inline int attention_step_positions(int head_dim) { return kAttnRounds * kWarps * 32 * 8 / head_dim; }

// Shared-memory floats of an attention item: queries [G][hd], per-head state [kMaxGroup][4],
// scores and softmax weights [G][step], K rows [step][hd + 8] and V rows [step][hd] as halves
// (V's also take the slices' sums at the end).
__host__ __device__ inline size_t attention_floats(const Params& p) {
  const size_t G = p.n_head / p.n_head_kv, hd = p.head_dim, step = attention_step_positions(p.head_dim);
  return G * hd + 4 * kMaxGroup + G * step + step * (hd + 8) / 2 + std::max(step * hd / 2, size_t{2} * kThreads);
}

__host__ __device__ inline size_t vector_floats(const Params& p) {
  const size_t vec = std::max({p.n_embd, p.n_ff, p.n_head * p.head_dim});
  return std::max(vec, attention_floats(p));
}

__host__ __device__ inline size_t max_activation(const Params& p) {
  return std::max({p.n_embd, p.n_ff, p.n_head * p.head_dim});
}

// Byte offsets of xq, q_scale, q_sum, part_sums, rope, q16_high, q16_low, scale16, sum16 and the
// total. Models without kInt16Acts matrices (Params::int16_activations) take no int16 blocks.
constexpr int kSmemRegions = 10;
__host__ __device__ inline void smem_layout(const Params& p, size_t (&offsets)[kSmemRegions]) {
  const size_t n = max_activation(p), n16 = p.int16_activations ? n : 0;
  offsets[0] = align16((kSmemHeader + vector_floats(p)) * sizeof(float));
  offsets[1] = offsets[0] + align16(n);
  offsets[2] = offsets[1] + align16(n / 32 * sizeof(float));
  offsets[3] = offsets[2] + align16(n / 32 * sizeof(int));
  offsets[4] = offsets[3] + kMaxSplitItems * sizeof(float);
  offsets[5] = offsets[4] + align16(p.n_rot / 2 * sizeof(float2));
  offsets[6] = offsets[5] + align16(n16);
  offsets[7] = offsets[6] + align16(n16);
  offsets[8] = offsets[7] + align16(n16 / 32 * sizeof(float));
  offsets[9] = offsets[8] + align16(n16 / 32 * sizeof(int));
}

__device__ Smem carve_smem(const Params& p, uint8_t* base) {
  size_t off[kSmemRegions];
  smem_layout(p, off);
  Smem s;
  s.red = reinterpret_cast<float*>(base);
  s.flag = reinterpret_cast<int*>(s.red + kSmemHeader - 1);
  s.xs = s.red + kSmemHeader;
  s.xq = reinterpret_cast<int8_t*>(base + off[0]);
  s.q_scale = reinterpret_cast<float*>(base + off[1]);
  s.q_sum = reinterpret_cast<int*>(base + off[2]);
  s.part_sums = reinterpret_cast<float*>(base + off[3]);
  s.rope = reinterpret_cast<float2*>(base + off[4]);
  s.q16_high = reinterpret_cast<int8_t*>(base + off[5]);
  s.q16_low = base + off[6];
  s.scale16 = reinterpret_cast<float*>(base + off[7]);
  s.sum16 = reinterpret_cast<int*>(base + off[8]);
  return s;
}

// Float4s each thread has in flight when a phase stages a vector from L2: issued back to back,
// so staging costs one round trip per batch instead of one per float4 (a plain loop left the
// remainder iterations, up to three for 13B's 13824-float h, as dependent round trips).
constexpr int kStageBatch = 8;

// Where a phase's input vector goes: xs (floats) and, with `int8` (quantized weights), its int8
// blocks, with `int16` (kInt16Acts weights) its int16 blocks, quantized from the registers that
// hold xs's values as they are stored (no pass of its own over xs).
struct Staging {
  float* xs;
  int8_t* q;
  float* scale;
  int* sum;
  int8_t* q16_high;
  uint8_t* q16_low;
  float* scale16;
  int* sum16;
  bool int8;
  bool int16;
};

// Thread t's k-th float4 of a vector is elements 4 (t + k kThreads) .. + 3, i.e. part t % 8 of
// block (t + k kThreads) / 8: the layout of quantize_group. Every lane calls it (shuffles).
__device__ __forceinline__ void store_staged(const Staging& st, int i, int n, float4 v) {
  const bool valid = i < n;
  if (valid) *reinterpret_cast<float4*>(st.xs + i) = v;
  if (!valid) v = make_float4(0, 0, 0, 0);
  if (st.int8) quantize_group(v, valid, i / 32, threadIdx.x % 8, st.q, st.scale, st.sum);
  if (st.int16) quantize_group16(v, valid, i / 32, threadIdx.x % 8, st.q16_high, st.q16_low, st.scale16, st.sum16);
}

// x (global, written by other CTAs) -> xs = x * w and its int8 blocks, in one pass that also sums
// x^2; returns the norm's scale rsqrt(mean(x^2) + eps). The phase multiplies its row values by it
// (rows are linear in xs), so xs needs no second, scaling pass after the reduction. Deterministic
// order; w's loads overlap x's.
__device__ float rms_norm_to_smem(const float* x, const float* w, int n, float eps, const Staging& st, float* red) {
  constexpr int kBatch = kStageBatch / 2;  // x and w
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float ss = 0.0f;
  for (int base = 0; base < n; base += kThreads * 4 * kBatch) {  // uniform: store_staged shuffles
    float4 v[kBatch], g[kBatch];
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const int i = base + threadIdx.x * 4 + k * kThreads * 4;
      v[k] = i < n ? __ldcg(reinterpret_cast<const float4*>(x + i)) : make_float4(0, 0, 0, 0);
      g[k] = i < n ? __ldg(reinterpret_cast<const float4*>(w + i)) : make_float4(0, 0, 0, 0);
    }
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      if (base + k * kThreads * 4 >= n) break;  // no lane has a value here (uniform)
      ss += v[k].x * v[k].x + v[k].y * v[k].y + v[k].z * v[k].z + v[k].w * v[k].w;
      store_staged(st, base + threadIdx.x * 4 + k * kThreads * 4, n,
                   make_float4(v[k].x * g[k].x, v[k].y * g[k].y, v[k].z * g[k].z, v[k].w * g[k].w));
    }
  }
  ss = warp_sum(ss);
  if (lane == 0) red[warp] = ss;
  __syncthreads();  // also: xs and its blocks are complete
  float total = 0.0f;
  for (int i = 0; i < kWarps; ++i) total += red[i];
  return rsqrtf(total / static_cast<float>(n) + eps);
}

// src (global, written by other CTAs) -> xs (and its int8 blocks).
__device__ void copy_to_smem(const float* src, int n, const Staging& st) {
  for (int base = 0; base < n; base += kThreads * 4 * kStageBatch) {
    float4 v[kStageBatch];
#pragma unroll
    for (int k = 0; k < kStageBatch; ++k) {
      const int i = base + threadIdx.x * 4 + k * kThreads * 4;
      v[k] = i < n ? __ldcg(reinterpret_cast<const float4*>(src + i)) : make_float4(0, 0, 0, 0);
    }
#pragma unroll
    for (int k = 0; k < kStageBatch; ++k) {
      if (base + k * kThreads * 4 >= n) break;  // no lane has a value here (uniform)
      store_staged(st, base + threadIdx.x * 4 + k * kThreads * 4, n, v[k]);
    }
  }
  __syncthreads();
}

// What the gate/up CTAs (and, int8 only, the attention items) hand to the next phase where
// Params::h_q (attn_q) are set: the instance's kind of blocks, or nothing (instances whose rows may
// read floats).
enum class Handoff { kNone, kInt8, kInt16 };

// A vector already quantized by its producers (Params::attn_q, h_q) -> the int8 or int16 staging,
// for rows that read nothing else: 16 bytes a load (codes, low bytes, four scales or four sums),
// one load a thread at llama-3.2-1b's int8 h (512 + 64 + 64), two for its int16 h. A batch of
// loads in flight per thread, as copy_to_smem has, made the kernel spill; asynchronous copies
// (cp.async) into shared memory were 0.5-1 % slower at 1B (docs/perf-notes.md, session 20).
template <Handoff kHandoff>
__device__ void copy_blocks_to_smem(const QuantVector& v, int n, const Smem& sm) {
  constexpr bool kInt16 = kHandoff == Handoff::kInt16;
  int8_t* codes = kInt16 ? sm.q16_high : sm.xq;
  float* scales = kInt16 ? sm.scale16 : sm.q_scale;
  int* sums = kInt16 ? sm.sum16 : sm.q_sum;
  const int n_chunks = n / 16, n_code_chunks = kInt16 ? 2 * n_chunks : n_chunks, n_quads = (n / 32 + 3) / 4;
  const int n_items = n_code_chunks + 2 * n_quads;
  for (int i = threadIdx.x; i < n_items; i += kThreads) {
    const void* src;
    void* dst;
    if (i < n_chunks) {
      src = v.q + 16 * i;
      dst = codes + 16 * i;
    } else if (i < n_code_chunks) {
      src = v.low + 16 * (i - n_chunks);
      dst = sm.q16_low + 16 * (i - n_chunks);
    } else if (i < n_code_chunks + n_quads) {
      src = v.scale + 4 * (i - n_code_chunks);
      dst = scales + 4 * (i - n_code_chunks);
    } else {
      src = v.sum + 4 * (i - n_code_chunks - n_quads);
      dst = sums + 4 * (i - n_code_chunks - n_quads);
    }
    *static_cast<int4*>(dst) = __ldcg(static_cast<const int4*>(src));
  }
  __syncthreads();
}

// The CTA's rows [begin, end) of h (whole blocks, stashed in shared memory by its gate/up rows)
// -> Params::h_q: each block quantized once, by its producer, instead of on every CTA after the
// wait. At most kMaxSplitItems rows, so 8 lanes a block take the first two warps at most.
template <Handoff kHandoff>
__device__ void quantize_h_share(const Params& p, const float* h, int begin, int end) {
  const int n_parts = (end - begin) / 4;
  if ((threadIdx.x & ~31) < n_parts) {  // whole warps (shuffles)
    const int t = threadIdx.x;
    const bool valid = t < n_parts;
    const float4 v = valid ? *reinterpret_cast<const float4*>(h + 4 * t) : make_float4(0, 0, 0, 0);
    const int block = begin / 32 + t / 8;
    if constexpr (kHandoff == Handoff::kInt16)
      quantize_group16(v, valid, block, t % 8, p.h_q.q, p.h_q.low, p.h_q.scale, p.h_q.sum);
    else
      quantize_group(v, valid, block, t % 8, p.h_q.q, p.h_q.scale, p.h_q.sum);
  }
  __syncthreads();  // every block stored before thread 0 signals
}

// The staging of an input for matrices of these formats (int8 blocks are built only for quantized
// weights, int16 blocks only for kInt16Acts ones; kOnly >= 0: every matrix has that format).
template <bool kInt16Activations, int kOnly>
__device__ Staging staging_for(const Smem& sm, int format, int other_format = kFmtF16) {
  const bool int8 = kOnly >= 0 ? is_quantized_format(kOnly) : is_quantized_format(format) || is_quantized_format(other_format);
  const bool int16 = kInt16Activations && ((format | other_format) & kInt16Acts) != 0;
  return Staging{sm.xs, sm.xq, sm.q_scale, sm.q_sum, sm.q16_high, sm.q16_low, sm.scale16, sm.sum16, int8, int16};
}

__device__ __forceinline__ Acts acts_of(const Smem& sm) {
  return Acts{sm.xs, sm.xq, sm.q_scale, sm.q_sum, sm.q16_high, sm.q16_low, sm.scale16, sm.sum16};
}

// cos and sin of the RoPE angles pos x freq(i) (in double, then rounded), for the QKV rows of
// every layer this launch runs: once per CTA, not once per row pair inside the QKV stream,
// where lane 0's pow and sincos held up its warp's next loads.
__device__ void fill_rope_table(const Params& p, int pos, float2* table) {
  for (int i = threadIdx.x; i < p.n_rot / 2; i += kThreads) {
    double freq = pow(static_cast<double>(p.rope_base), -2.0 * i / p.n_rot);
    if (p.rope_factors) freq /= p.rope_factors[i];
    double s, c;
    sincos(static_cast<double>(pos) * freq, &s, &c);
    table[i] = make_float2(static_cast<float>(c), static_cast<float>(s));
  }
}

// Rows `row`, `row + 1` of [Wq; Wk; Wv] (a RoPE pair for q and k): rotate by the angle in
// `rope`, then store q or append to the KV cache at `pos`.
__device__ void store_qkv_pair(const Params& p, const float2* rope, int layer, int pos, int row, float a, float b) {
  const int hd = p.head_dim, nq = p.n_head * hd, nkv = p.n_head_kv * hd;
  if (row < nq + nkv) {
    const int d = row % hd;
    if (d < p.n_rot) {
      const float fc = rope[d / 2].x, fs = rope[d / 2].y;
      const float ra = a * fc - b * fs, rb = a * fs + b * fc;
      a = ra;
      b = rb;
    }
  }
  if (row < nq) {
    __stcg(p.q + row, a);
    __stcg(p.q + row + 1, b);
    return;
  }
  const bool is_k = row < nq + nkv;
  const int r = row - nq - (is_k ? 0 : nkv);
  const int kvh = r / hd, d = r % hd;
  __half* cache = is_k ? p.k_cache : p.v_cache;
  const int64_t at = ((static_cast<int64_t>(layer) * p.n_head_kv + kvh) * p.n_ctx + pos) * hd + d;
  *reinterpret_cast<__half2*>(cache + at) = __floats2half2_rn(a, b);
}

// The CTA's share [begin, end) of the RoPE pairs of [Wq; Wk; Wv]: pairs of qk, then of v. The
// rows' values times norm_scale (rms_norm_to_smem).
template <bool kInt16Activations, int kOnly>
__device__ void phase_qkv(const Params& p, const DevLayer& L, const float2* rope, int layer, int pos, int begin,
                          int end, const Acts& acts, float norm_scale) {
  const int qk_pairs = L.qk.rows / 2;
  const int qk_end = min(end, qk_pairs), v_begin = max(begin, qk_pairs);
  matvec_items<kInt16Activations, kOnly, 2>(
      L.qk.format, max(qk_end - begin, 0), L.qk.row_bytes / 16, acts,
      [&](int i, RowRef(&refs)[2]) {
        refs[0] = row_ref(L.qk, 2 * (begin + i));
        refs[1] = row_ref(L.qk, 2 * (begin + i) + 1);
      },
      [&](int i, const float(&v)[2]) {
        store_qkv_pair(p, rope, layer, pos, 2 * (begin + i), v[0] * norm_scale, v[1] * norm_scale);
      });
  matvec_items<kInt16Activations, kOnly, 2>(
      L.v.format, max(end - v_begin, 0), L.v.row_bytes / 16, acts,
      [&](int i, RowRef(&refs)[2]) {
        refs[0] = row_ref(L.v, 2 * (v_begin + i - qk_pairs));
        refs[1] = row_ref(L.v, 2 * (v_begin + i - qk_pairs) + 1);
      },
      [&](int i, const float(&v)[2]) {
        store_qkv_pair(p, rope, layer, pos, 2 * (v_begin + i), v[0] * norm_scale, v[1] * norm_scale);
      });
}

// Pulls the head of the CTA's QKV share into L2.
__device__ void prefetch_qkv(const DevLayer& L, int begin, int end) {
  const int qk_pairs = L.qk.rows / 2;
  if (begin < qk_pairs) prefetch_rows(L.qk, 2 * begin, 2 * min(end, qk_pairs), kPrefetchBytes);
  else prefetch_rows(L.v, 2 * (begin - qk_pairs), 2 * (end - qk_pairs), kPrefetchBytes);
}

// Chunks per KV head at position `pos`. One while the whole context fits one step of an item:
// shorter chunks would take as many steps (one) and add the partials, the arrival and the merge.
// Beyond it, as many as keep two rounds of position groups per item, at most p.n_chunks (one
// item per CTA): more items in flight than chunks of one step (docs/perf-notes.md, session 11).
__device__ __forceinline__ int attention_split(const Params& p, int pos) {
  if (pos < attention_step_positions(p.head_dim)) return 1;
  const int n_groups = kWarps * (32 / (p.head_dim / 8));
  return min(p.n_chunks, max(1, (pos + 2 * n_groups) / (2 * n_groups)));
}

// Pulls this CTA's first attention item's cached K/V rows (written by earlier tokens, long gone
// from L2) into L2, up to 32 KB of each, so the item's first rounds do not wait on HBM.
__device__ void prefetch_attention(const Params& p, int layer, int pos) {
  const int n_split = attention_split(p, pos);
  if (static_cast<int>(blockIdx.x) >= p.n_head_kv * n_split) return;
  const int kvh = blockIdx.x % p.n_head_kv, chunk = blockIdx.x / p.n_head_kv;
  const int chunk_len = (pos + n_split) / n_split;
  const int begin = chunk * chunk_len, end = min(pos, begin + chunk_len);
  const int64_t row_bytes = static_cast<int64_t>(p.head_dim) * sizeof(__half);
  const int64_t bytes = min(max(end - begin, 0) * row_bytes, int64_t{32 * 1024});
  const int64_t at = ((static_cast<int64_t>(layer) * p.n_head_kv + kvh) * p.n_ctx + begin) * p.head_dim;
  const uint8_t* k = reinterpret_cast<const uint8_t*>(p.k_cache + at);
  const uint8_t* v = reinterpret_cast<const uint8_t*>(p.v_cache + at);
  for (int64_t off = static_cast<int64_t>(threadIdx.x) * 128; off < bytes; off += kThreads * 128) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(k + off));
    asm volatile("prefetch.global.L2 [%0];" ::"l"(v + off));
  }
}

// Flash-decoding over (KV head, context chunk) items; the last chunk of a head to finish merges
// that head's partials in chunk order and signals the attention counter. At short context
// (attention_split 1) a head's item writes its output directly, with no partials, arrival and
// second merge on the way.
//
// An item walks its positions in steps of attention_step_positions. Position groups of hd / 8
// lanes load the step's K and V rows (all of them at once, one round trip) into shared memory;
// a thread per (query head, position) computes a score; one warp per query head turns the
// scores into softmax weights, online over the steps (the head's running maximum and sum); and
// every thread adds weights times V for its pair of output dimensions over a slice of the
// positions. Nothing but two floats per dimension pair lives in registers across the steps, so
// the item does not set the kernel's register budget, and no step waits on a shuffle chain
// (the per-lane online softmax this replaced held 80 registers and reduced every score and
// state across lanes: docs/perf-notes.md, session 10).
template <bool kInt8Out>
__device__ void phase_attention(const Params& p, int layer, int pos, unsigned* head_counters,
                                unsigned head_target, unsigned* attn_counter, float* smem, int* flag) {
  const int hd = p.head_dim, G = p.n_head / p.n_head_kv;
  const int lanes_per_pos = hd / 8, groups_per_warp = 32 / lanes_per_pos;
  const int n_groups = kWarps * groups_per_warp;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int group = warp * groups_per_warp + lane / lanes_per_pos, sub = lane % lanes_per_pos;
  const int n_pos = pos + 1;
  const int n_split = attention_split(p, pos);
  const int chunk_len = (n_pos + n_split - 1) / n_split;
  const int step = attention_step_positions(hd);
  // Output dimension pairs, and the position slices that share them out over the threads.
  const int n_pairs = G * hd / 2;
  const int n_slices = max(1, kThreads / n_pairs);
  constexpr int kMaxPairsPerThread = (kMaxGroup * 256 / 2 + kThreads - 1) / kThreads;
  float* qs = smem;                            // [G][hd], pre-scaled
  float* state = qs + G * hd;                  // [kMaxGroup][4]: running max, sum, this step's rescale
  float* weights = state + 4 * kMaxGroup;      // [G][step]
  // K rows padded by 16 bytes, so that the score threads' loads of neighbouring rows spread
  // over the banks.
  const int k_stride = hd + 8;
  __half* kh = reinterpret_cast<__half*>(weights + G * step);  // [step][k_stride]
  float* vs = weights + G * step + step * k_stride / 2;        // [step][hd] halves; the slices' sums at the end
  __half* vh = reinterpret_cast<__half*>(vs);
  const int part_stride = hd + 2;

  for (int item = blockIdx.x; item < p.n_head_kv * n_split; item += gridDim.x) {
    const int kvh = item % p.n_head_kv, chunk = item / p.n_head_kv;
    const int begin = chunk * chunk_len, end = min(n_pos, begin + chunk_len);
    const int64_t head_base = (static_cast<int64_t>(layer) * p.n_head_kv + kvh) * p.n_ctx * hd + sub * 8;
    const __half* kc = p.k_cache + head_base;
    const __half* vc = p.v_cache + head_base;
    uint4 kraw[kAttnRounds], vraw[kAttnRounds];
    auto load_step = [&](int first) {
#pragma unroll
      for (int j = 0; j < kAttnRounds; ++j) {
        const int t = first + j * n_groups + group;
        kraw[j] = vraw[j] = make_uint4(0, 0, 0, 0);
        if (t < end) {
          kraw[j] = __ldcg(reinterpret_cast<const uint4*>(kc + static_cast<int64_t>(t) * hd));
          vraw[j] = __ldcg(reinterpret_cast<const uint4*>(vc + static_cast<int64_t>(t) * hd));
        }
      }
    };
    // The first step's rows are requested before the queries are staged: the round trips overlap.
    load_step(begin);
    for (int i = threadIdx.x; i < G * hd; i += kThreads) qs[i] = __ldcg(p.q + kvh * G * hd + i) * p.attn_scale;
    if (threadIdx.x < G) {
      state[4 * threadIdx.x] = -INFINITY;
      state[4 * threadIdx.x + 1] = 0.0f;
    }
    float2 acc[kMaxPairsPerThread];
#pragma unroll
    for (int k = 0; k < kMaxPairsPerThread; ++k) acc[k] = make_float2(0.0f, 0.0f);
    const int pair0 = threadIdx.x % n_pairs, slice = threadIdx.x / n_pairs;
    __syncthreads();

    for (int first = begin; first < end; first += step) {
      const int n = min(step, end - first);
      // K and V rows of this step to shared memory, then one thread per (query head, position)
      // score, so a score is a run of shared-memory loads and FMAs with no shuffles.
#pragma unroll
      for (int j = 0; j < kAttnRounds; ++j) {
        const int t = j * n_groups + group;
        if (t < n) {
          *reinterpret_cast<uint4*>(kh + t * k_stride + sub * 8) = kraw[j];
          *reinterpret_cast<uint4*>(vh + t * hd + sub * 8) = vraw[j];
        }
      }
      __syncthreads();
      // The next step's rows load while this one's scores, softmax and sums run.
      if (first + step < end) load_step(first + step);
      for (int i = threadIdx.x; i < G * n; i += kThreads) {
        const int g = i / n, t = i % n;
        const float4* qv = reinterpret_cast<const float4*>(qs + g * hd);
        const uint4* kv = reinterpret_cast<const uint4*>(kh + t * k_stride);
        float a = 0.0f, b = 0.0f;
        for (int c = 0; c < hd / 8; ++c) {
          const uint4 k8 = kv[c];
          const float4 qa = qv[2 * c], qb = qv[2 * c + 1];
          const float2 k0 = __half22float2(*reinterpret_cast<const __half2*>(&k8.x));
          const float2 k1 = __half22float2(*reinterpret_cast<const __half2*>(&k8.y));
          const float2 k2 = __half22float2(*reinterpret_cast<const __half2*>(&k8.z));
          const float2 k3 = __half22float2(*reinterpret_cast<const __half2*>(&k8.w));
          a = fmaf(qa.x, k0.x, fmaf(qa.y, k0.y, fmaf(qa.z, k1.x, fmaf(qa.w, k1.y, a))));
          b = fmaf(qb.x, k2.x, fmaf(qb.y, k2.y, fmaf(qb.z, k3.x, fmaf(qb.w, k3.y, b))));
        }
        weights[g * step + t] = a + b;
      }
      __syncthreads();
      if (warp < G) {
        const int g = warp;
        float* w = weights + g * step;
        const float m_old = state[4 * g];
        float mx = m_old;
        for (int t = lane; t < n; t += 32) mx = fmaxf(mx, w[t]);
        for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
        float sum = 0.0f;
        for (int t = lane; t < n; t += 32) {
          const float e = expf(w[t] - mx);
          w[t] = e;
          sum += e;
        }
        sum = warp_sum(sum);
        __syncwarp();  // every lane has read the state before lane 0 replaces it
        if (lane == 0) {
          const float rescale = m_old == -INFINITY ? 0.0f : expf(m_old - mx);
          state[4 * g] = mx;
          state[4 * g + 1] = state[4 * g + 1] * rescale + sum;
          state[4 * g + 2] = rescale;
        }
      }
      __syncthreads();
      if (slice < n_slices) {
#pragma unroll
        for (int k = 0; k < kMaxPairsPerThread; ++k) {
          const int pair = pair0 + k * kThreads;
          if (pair < n_pairs) {
            const int g = pair / (hd / 2), d2 = pair % (hd / 2);
            const float* w = weights + g * step;
            const __half2* v2 = reinterpret_cast<const __half2*>(vh) + d2;
            const float rescale = state[4 * g + 2];
            float2 a = make_float2(acc[k].x * rescale, acc[k].y * rescale);
            for (int t = slice; t < n; t += n_slices) {
              const float e = w[t];
              const float2 v = __half22float2(v2[t * (hd / 2)]);
              a.x = fmaf(e, v.x, a.x);
              a.y = fmaf(e, v.y, a.y);
            }
            acc[k] = a;
          }
        }
      }
      __syncthreads();
    }
    // The slices' sums, added in slice order.
    float2* slice_sums = reinterpret_cast<float2*>(vs);  // [n_slices][n_pairs] (n_slices > 1 only)
    if (n_slices > 1) {
      if (slice < n_slices) slice_sums[slice * n_pairs + pair0] = acc[0];
      __syncthreads();
    }
#pragma unroll
    for (int k = 0; k < kMaxPairsPerThread; ++k) {
      const int pair = threadIdx.x + k * kThreads;
      // With int8 output whole warps leave (the blocks' shuffles need every lane; n_pairs is a
      // multiple of 16 then).
      if ((kInt8Out ? pair - lane : pair) >= n_pairs) continue;
      const bool valid = !kInt8Out || pair < n_pairs;
      float2 o = valid ? acc[k] : make_float2(0.0f, 0.0f);
      if (n_slices > 1 && valid) {
        o = slice_sums[pair];
        for (int s2 = 1; s2 < n_slices; ++s2) {
          const float2 b = slice_sums[s2 * n_pairs + pair];
          o.x += b.x;
          o.y += b.y;
        }
      }
      const int g = valid ? pair / (hd / 2) : 0, d = 2 * (pair % (hd / 2));
      const float mx = state[4 * g], sum = state[4 * g + 1];
      if (n_split == 1) {
        const int e = (kvh * G + g) * hd + d;
        const float2 out = make_float2(o.x / sum, o.y / sum);
        if (kInt8Out && p.attn_q.q) {
          // 16 lanes hold a 32-value block.
          const auto codes = int8_dot::quantize_block<16>({out.x, out.y});
          if (valid) {
            __stcg(reinterpret_cast<char2*>(p.attn_q.q + e),
                   make_char2(static_cast<signed char>(codes.q[0]), static_cast<signed char>(codes.q[1])));
            if (d % 32 == 0) {
              __stcg(p.attn_q.scale + e / 32, codes.d);
              __stcg(p.attn_q.sum + e / 32, codes.sum);
            }
          }
        } else if (valid) {
          __stcg(p.attn_out + e, out.x);
          __stcg(p.attn_out + e + 1, out.y);
        }
        continue;
      }
      if (!valid) continue;
      float* part = p.attn_part + (static_cast<int64_t>(kvh * G + g) * p.n_chunks + chunk) * part_stride;
      __stcg(part + d, o.x);
      __stcg(part + d + 1, o.y);
      if (d == 0) {
        __stcg(part + hd, mx);
        __stcg(part + hd + 1, sum);
      }
    }
    __syncthreads();
    // Every token adds p.n_chunks to the head's counter whatever the split (chunk 0 adds the
    // difference), so the last-arrival targets stay (epoch + 1) * p.n_chunks.
    const unsigned arrivals = chunk == 0 ? p.n_chunks - n_split + 1 : 1;
    if (n_split == 1) {
      // The head's only item, so its last arrival: counted without waiting for the answer (0.8 us
      // of the item's critical path, docs/perf-notes.md session 7), and the output published at
      // once. No barrier after it: no thread reads shared memory after the one above.
      if (threadIdx.x == 0) {
        count_relaxed(head_counters + kvh, arrivals);
        signal_release(attn_counter);
      }
      continue;
    }
    if (threadIdx.x == 0) *flag = signal_is_last(head_counters + kvh, head_target, arrivals);
    __syncthreads();
    if (*flag) {
      // Weights of the chunks per query head in shared memory first (one batch of loads), then
      // each output element's partials, loaded independently of the sums they feed.
      float* weight = vs;                     // [G][n_split]
      float* ml = weight + G * n_split;       // [G][n_split][2], then the sums [G]
      float* total = ml + 2 * G * n_split;
      for (int i = threadIdx.x; i < G * n_split; i += kThreads) {
        const int g = i / n_split, c = i % n_split;
        const float* part = p.attn_part + (static_cast<int64_t>(kvh * G + g) * p.n_chunks + c) * part_stride;
        ml[2 * i] = __ldcg(part + hd);
        ml[2 * i + 1] = __ldcg(part + hd + 1);
      }
      __syncthreads();
      if (threadIdx.x < G) {
        const int g = threadIdx.x;
        float mx = -INFINITY;
        for (int c = 0; c < n_split; ++c) mx = fmaxf(mx, ml[2 * (g * n_split + c)]);
        float sum = 0.0f;
        for (int c = 0; c < n_split; ++c) {
          const float mc = ml[2 * (g * n_split + c)];
          const float f = mc == -INFINITY ? 0.0f : expf(mc - mx);
          sum += ml[2 * (g * n_split + c) + 1] * f;
          weight[g * n_split + c] = f;
        }
        total[g] = sum;
      }
      __syncthreads();
      // A warp's 32 outputs are one int8 block (hd is a multiple of 32 where attn_q is set).
      for (int i = threadIdx.x; i < G * hd; i += kThreads) {
        const int g = i / hd, d = i % hd;
        const float* part = p.attn_part + static_cast<int64_t>(kvh * G + g) * p.n_chunks * part_stride + d;
        float acc_out = 0.0f;
#pragma unroll 8
        for (int c = 0; c < n_split; ++c) acc_out += __ldcg(part + c * part_stride) * weight[g * n_split + c];
        const int e = (kvh * G + g) * hd + d;
        if (kInt8Out && p.attn_q.q) {
          const auto codes = int8_dot::quantize_block<32>({acc_out / total[g]});
          __stcg(reinterpret_cast<signed char*>(p.attn_q.q + e), static_cast<signed char>(codes.q[0]));
          if (lane == 0) {
            __stcg(p.attn_q.scale + e / 32, codes.d);
            __stcg(p.attn_q.sum + e / 32, codes.sum);
          }
        } else {
          __stcg(p.attn_out + e, acc_out / total[g]);
        }
      }
      __syncthreads();
      if (threadIdx.x == 0) signal_release(attn_counter);
    }
    __syncthreads();
  }
}

// One row per item: rows [begin, end) of m; out(row, value).
template <bool kInt16Activations, int kOnly, class Out>
__device__ __forceinline__ void matvec_rows(const DevMatrix& m, int begin, int end, const Acts& acts, Out&& out) {
  matvec_items<kInt16Activations, kOnly, 1>(
      m.format, end - begin, m.row_bytes / 16, acts, [&](int i, RowRef(&refs)[1]) { refs[0] = row_ref(m, begin + i); },
      [&](int i, const float(&v)[1]) { out(begin + i, v[0]); });
}

// Whole 32-chunk columns in each part of a row of `n_chunks` chunks split into `parts` (the last
// part may be shorter); row_parts_log2 only picks splits that leave every part some columns.
__host__ __device__ inline int part_columns(int n_chunks, int parts) {
  return ((n_chunks + 31) / 32 + parts - 1) / parts;
}

// Rows [begin, end) of m with each row split into m.parts_log2 parts (one row per item where it
// is 0): part k of every row is a run of whole 32-chunk columns that warps k, k + parts, ... walk
// (items go round-robin over the warps, and the parts divide kWarps), against the activations
// from that column on. The parts' sums meet in shared memory and are added in part order, so a
// row's value does not depend on which warps ran it. out(row, value).
template <bool kInt16Activations, int kOnly, class Out>
__device__ __forceinline__ void matvec_split_rows(const DevMatrix& m, int begin, int end, const Acts& acts,
                                                  float* part_sums, Out&& out) {
  const int s = m.parts_log2;
  if (s == 0) {
    matvec_rows<kInt16Activations, kOnly>(m, begin, end, acts, out);
    return;
  }
  const int n_chunks = m.row_bytes / 16, parts = 1 << s;
  const int part_chunks = part_columns(n_chunks, parts) * 32;
  const int first = ((threadIdx.x >> 5) & (parts - 1)) * part_chunks;
  const int base = base_format(m.format);
  const int first_weight = first * weights_per_chunk(base);
  const int first_block = first_weight / kQuantBlock;
  const Acts part_acts{acts.x + first_weight,         acts.q + first_weight,      acts.scale + first_block,
                       acts.sum + first_block,         acts.q16_high + first_weight, acts.q16_low + first_weight,
                       acts.scale16 + first_block,     acts.sum16 + first_block};
  const int first_scale = scale_offset(base, first);
  matvec_items<kInt16Activations, kOnly, 1>(
      m.format, (end - begin) << s, min(part_chunks, n_chunks - first), part_acts,
      [&](int i, RowRef(&refs)[1]) {
        refs[0] = row_ref(m, begin + (i >> s));
        refs[0].data += first * 16;
        if (refs[0].scales) refs[0].scales += first_scale;
      },
      [&](int i, const float(&v)[1]) { part_sums[i] = v[0]; });
  for (int r = threadIdx.x; r < end - begin; r += kThreads) {
    float sum = part_sums[r << s];
    for (int k = 1; k < parts; ++k) sum += part_sums[(r << s) + k];
    out(begin + r, sum);
  }
  __syncthreads();
}

template <bool kInt16Activations, int kOnly>
__device__ void phase_embed(const Params& p, int token) {
  int begin, end;
  cta_share(p.n_embd, begin, end);
  dispatch_format<kInt16Activations, kOnly>(p.token_embd.format, [&](auto tag) {
    constexpr int kF = decltype(tag)::value;
    for (int i = begin + threadIdx.x; i < end; i += kThreads) __stcg(p.x + i, matrix_element<kF>(p.token_embd, token, i));
  });
  __syncthreads();
}

// Appends the greedy token to the history and makes it the next step's input. A step whose
// logits had no finite maximum (INT_MAX from the reductions, or a non-finite winner) records -1,
// which the host raises as an error, and feeds token 0 so the launch's later steps stay in bounds.
__device__ __forceinline__ void advance_token(DevStep* s, int* history, int token, float value) {
  if (token == INT_MAX || !isfinite(value)) token = -1;
  history[s->n_out] = token;
  s->n_out += 1;
  s->token = token < 0 ? 0 : token;
  s->position += 1;
}

// Final norm, LM head rows of this CTA, argmax (ties: lowest index). The last CTA to arrive
// reduces the per-CTA winners in CTA order and advances the token state.
template <bool kInt16Activations, int kOnly>
__device__ void phase_head(const Params& p, unsigned model_epoch, const Smem& sm) {
  const float norm_scale =
      rms_norm_to_smem(p.x, p.output_norm, p.n_embd, p.rms_eps,
                       staging_for<kInt16Activations, kOnly>(sm, p.output.format), sm.red);
  const Acts acts = acts_of(sm);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float best = -FLT_MAX;
  int best_index = INT_MAX;
  int begin, end;
  cta_share(p.output.rows, begin, end);
  matvec_rows<kInt16Activations, kOnly>(p.output, begin, end, acts, [&](int row, float v) {
    v *= norm_scale;
    __stcg(p.logits + row, v);
    if (v > best || (v == best && row < best_index)) {
      best = v;
      best_index = row;
    }
  });
  float* warp_best = sm.red + kWarps;
  int* warp_index = reinterpret_cast<int*>(sm.red + 2 * kWarps);
  if (lane == 0) {
    warp_best[warp] = best;
    warp_index[warp] = best_index;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 0; w < kWarps; ++w) {
      if (warp_best[w] > best || (warp_best[w] == best && warp_index[w] < best_index)) {
        best = warp_best[w];
        best_index = warp_index[w];
      }
    }
    __stcg(p.cta_best + blockIdx.x, make_float2(best, __int_as_float(best_index)));
    *sm.flag = signal_is_last(p.model_counters + kCtrHead, (model_epoch + 1) * gridDim.x);
  }
  __syncthreads();
  // The last CTA's first warp picks the token from every CTA's best: a few loads per lane at
  // once, then a butterfly (the order is total, so the winner is the serial scan's).
  if (*sm.flag && warp == 0) {
    best = -FLT_MAX;
    best_index = INT_MAX;
    for (unsigned b = lane; b < gridDim.x; b += 32) {
      const float2 c = __ldcg(p.cta_best + b);
      const int ci = __float_as_int(c.y);
      if (c.x > best || (c.x == best && ci < best_index)) {
        best = c.x;
        best_index = ci;
      }
    }
    for (int off = 16; off > 0; off >>= 1) {
      const float other = __shfl_xor_sync(0xffffffffu, best, off);
      const int other_index = __shfl_xor_sync(0xffffffffu, best_index, off);
      if (other > best || (other == best && other_index < best_index)) {
        best = other;
        best_index = other_index;
      }
    }
    if (lane == 0) {
      if (p.head_pair) {
        p.head_pair[0] = best;
        p.head_pair[1] = best_index == INT_MAX ? -1.0f : static_cast<float>(best_index + p.vocab_first);
      } else {
        advance_token(p.step, p.history, best_index, best);
      }
      __threadfence();
      *p.model_epoch = model_epoch + 1;
    }
  }
  __syncthreads();
}

// ---- in-kernel all-reduce (kFlagDeviceAllReduce) ------------------------------------------

// Bytes into the window of `rank`'s partial in `slot` (0: after O, 1: after down). Two slots, so
// a rank that ran ahead into the next phase never overwrites a partial a peer has yet to read:
// CTA b reuses a slot only after the barrier b in between, which the peer's CTA b passes only
// after its reads.
__device__ __forceinline__ size_t tp_window_offset(const Params& p, int slot, int rank) {
  return (static_cast<size_t>(slot) * p.tp_comm->lsaSize + rank) * p.n_embd * sizeof(float);
}

// Where this rank's partial of `slot` goes: its own part of its window.
__device__ __forceinline__ float* tp_own_partial(const Params& p, int slot) {
  return static_cast<float*>(ncclGetLocalPointer(p.tp_window, tp_window_offset(p, slot, p.tp_comm->lsaRank)));
}

// The CTA's rows [begin, end) of this rank's partial (in its own window) are stored into every
// peer's window; LSA barrier b with CTA b of every rank (release/acquire over NVLink); then x's
// rows = the sum of all ranks' partials in rank order, so every rank gets the same bits. Inlined:
// a call's ABI (registers saved around it) doubled the kernel's spills (ptxas, perf-notes).
__device__ __forceinline__ void tp_all_reduce_rows(const Params& p, int slot, int begin, int end) {
  const ncclDevComm& comm = *p.tp_comm;
  const int rank = comm.lsaRank, n_ranks = comm.lsaSize;
  __syncthreads();
  const size_t own_offset = tp_window_offset(p, slot, rank);
  const float* own = static_cast<const float*>(ncclGetLocalPointer(p.tp_window, own_offset));
  for (int peer = 0; peer < n_ranks; ++peer) {
    if (peer == rank) continue;
    float* remote = static_cast<float*>(ncclGetLsaPointer(p.tp_window, own_offset, peer));
    for (int row = begin + static_cast<int>(threadIdx.x); row < end; row += kThreads) remote[row] = __ldcg(own + row);
  }
  ncclCoopCta cta;
  ncclLsaBarrierSession<ncclCoopCta> barrier(cta, comm, ncclTeamTagLsa(), blockIdx.x);
  barrier.sync(cta, ::cuda::memory_order_acq_rel);
  const float* partials = static_cast<const float*>(ncclGetLocalPointer(p.tp_window, tp_window_offset(p, slot, 0)));
  for (int row = begin + static_cast<int>(threadIdx.x); row < end; row += kThreads) {
    float sum = __ldcg(partials + row);
    for (int r = 1; r < n_ranks; ++r) sum += __ldcg(partials + static_cast<size_t>(r) * p.n_embd + row);
    __stcg(p.x + row, sum);
  }
}  // the barrier's destructor ends with __syncthreads()

// Which phases of a layer one kernel instance runs: tensor parallelism launches each layer as its
// attention half (norm, QKV, attention, O projection) and its MLP half (norm, gate/up, down), with
// x all-reduced between them, and the head in a whole-layer launch of its own; or, with the
// in-kernel all-reduce, whole layers that all-reduce x after the O and the down projection.
enum class LayerPart { kWhole, kAttentionHalf, kMlpHalf, kWholeAllReduce };

// kOnly >= 0: an instance for models whose every matrix has that format (Params::single_format),
// which compiles that format's loops only; -1: every format; kWithQ5K: every int16 format and
// Q5_K. kInt16HBlocks: the int16 instance that hands h over as int16 blocks; the other int16
// instances compile no hand-off (added code cost shapes without one 2-4 %, docs/perf-notes.md
// session 20).
template <bool kInt16Activations, LayerPart kPart, int kOnly = -1, bool kInt16HBlocks = false>
__global__ void __launch_bounds__(kThreads, 1)
    fused_decode_kernel(const __grid_constant__ Params p, int layer_begin, int layer_end, int flags) {
  extern __shared__ float4 smem_raw[];
  const Smem sm = carve_smem(p, reinterpret_cast<uint8_t*>(smem_raw));
  const int stride = layer_counter_stride(p.n_head_kv);
  const unsigned grid = gridDim.x;
  int begin, end;

  constexpr bool kAttentionPart = kPart != LayerPart::kMlpHalf, kMlpPart = kPart != LayerPart::kAttentionHalf;
  constexpr bool kAllReduce = kPart == LayerPart::kWholeAllReduce;
  constexpr bool kHeadPart = kPart == LayerPart::kWhole || kAllReduce;
  // Int8 instances whose rows may read blocks only compile the int8 hand-offs (Params::attn_q, h_q;
  // h's not in the MLP half, with which it spilled); int16 ones only kInt16HBlocks's.
  static_assert(!kInt16HBlocks || (kInt16Activations && kPart == LayerPart::kWhole));
  static_assert(kOnly != kWithQ5K || kInt16HBlocks);
  constexpr Handoff kInt16Handoff = kInt16HBlocks ? Handoff::kInt16 : Handoff::kNone;
  constexpr Handoff kHandoff = kInt16Activations                     ? kInt16Handoff
                               : kOnly < 0 || reads_blocks_only(kOnly) ? Handoff::kInt8
                                                                       : Handoff::kNone;
  constexpr bool kAttentionBlocks = kHandoff == Handoff::kInt8;
  const bool h_blocks = kHandoff != Handoff::kNone && kPart != LayerPart::kMlpHalf && p.h_q.q;

  // Weights never depend on activations: start pulling the first phase's before any wait.
  if (kAttentionPart && layer_begin < layer_end) {
    cta_share((p.layers[layer_begin].qk.rows + p.layers[layer_begin].v.rows) / 2, begin, end);
    prefetch_qkv(p.layers[layer_begin], begin, end);
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (flags & kFlagPdl) {
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  }
#endif
  const int pos = __ldcg(&p.step->position);
  if (kAttentionPart) fill_rope_table(p, pos, sm.rope);  // read after the barriers of the phases before QKV
  const unsigned model_epoch = (flags & (kFlagEmbed | kFlagHead)) ? __ldcg(p.model_epoch) : 0u;
  const unsigned* wait_counter = nullptr;
  unsigned wait_target = 0;
  if (kAttentionPart && (flags & kFlagEmbed)) {
    phase_embed<kInt16Activations, kOnly>(p, __ldcg(&p.step->token));
    if (threadIdx.x == 0) signal_release(p.model_counters + kCtrEmbed);
    wait_counter = p.model_counters + kCtrEmbed;
    wait_target = (model_epoch + 1) * grid;
  }
  for (int layer = layer_begin; layer < layer_end; ++layer) {
    const DevLayer& L = p.layers[layer];
    unsigned* ctr = p.layer_counters + layer * stride;
    const unsigned epoch = __ldcg(p.layer_epochs + layer);
    const unsigned all_ctas = (epoch + 1) * grid;
    // O and down rows: x + partial on rank 0 (and without TP), the partial alone on the other
    // tensor-parallel ranks (only layer halves and all-reduce instances see those); into x, or
    // with the in-kernel all-reduce into this rank's part of window slot `slot`. Into x itself
    // the add is a reduction in L2 (one writer per row, the same sum): lane 0 would otherwise
    // wait for x's row before its warp issues the next loads.
    auto add_to_x_via = [&](int slot) {
      return [&p, slot](int row, float v) {
        if (kPart != LayerPart::kWhole && p.partial_output) {
          __stcg((kAllReduce ? tp_own_partial(p, slot) : p.x) + row, v);
        } else if constexpr (kAllReduce) {
          __stcg(tp_own_partial(p, slot) + row, __ldcg(p.x + row) + v);
        } else {
          atomicAdd(p.x + row, v);
        }
      };
    };

    if constexpr (kAttentionPart) {
      // QKV in RoPE pairs, K/V appended to the cache.
      cta_share((L.qk.rows + L.v.rows) / 2, begin, end);
      if (wait_counter) {
        prefetch_qkv(L, begin, end);
        prefetch_attention(p, layer, pos);
        cta_wait(wait_counter, wait_target);
      }
      const float norm_scale =
          rms_norm_to_smem(p.x, L.attn_norm, p.n_embd, p.rms_eps,
                           staging_for<kInt16Activations, kOnly>(sm, L.qk.format, L.v.format), sm.red);
      phase_qkv<kInt16Activations, kOnly>(p, L, sm.rope, layer, pos, begin, end, acts_of(sm), norm_scale);
      if (threadIdx.x == 0) signal_release(ctr + kCtrQkv);

      cta_share(L.wo.rows, begin, end);
      prefetch_rows(L.wo, begin, end, kPrefetchBytes);
      cta_wait(ctr + kCtrQkv, all_ctas);
      phase_attention<kAttentionBlocks>(p, layer, pos, ctr + kLayerCounters, (epoch + 1) * p.n_chunks, ctr + kCtrAttn,
                                        sm.xs, sm.flag);
      cta_wait(ctr + kCtrAttn, (epoch + 1) * p.n_head_kv);
      if (kAttentionBlocks && p.attn_q.q)
        copy_blocks_to_smem<Handoff::kInt8>(p.attn_q, p.n_head * p.head_dim, sm);
      else
        copy_to_smem(p.attn_out, p.n_head * p.head_dim, staging_for<kInt16Activations, kOnly>(sm, L.wo.format));
      matvec_split_rows<kInt16Activations, kOnly>(L.wo, begin, end, acts_of(sm), sm.part_sums, add_to_x_via(0));
      if constexpr (kAllReduce) tp_all_reduce_rows(p, 0, begin, end);
      if (threadIdx.x == 0) signal_release(ctr + kCtrO);
    }
    if constexpr (!kMlpPart) continue;

    if (h_blocks) {
      cta_share(p.n_ff / 32, begin, end);
      begin *= 32;
      end *= 32;
    } else {
      cta_share(p.n_ff, begin, end);
    }
    prefetch_rows(L.gate, begin, end, kPrefetchBytes / 2);
    prefetch_rows(L.up, begin, end, kPrefetchBytes / 2);
    cta_wait(ctr + kCtrO, all_ctas);
    const float norm_scale =
        rms_norm_to_smem(p.x, L.ffn_norm, p.n_embd, p.rms_eps,
                         staging_for<kInt16Activations, kOnly>(sm, L.gate.format), sm.red);
    matvec_items<kInt16Activations, kOnly, 2>(
        L.gate.format, end - begin, L.gate.row_bytes / 16, acts_of(sm),
        [&](int i, RowRef(&refs)[2]) {
          refs[0] = row_ref(L.gate, begin + i);
          refs[1] = row_ref(L.up, begin + i);
        },
        [&](int i, const float(&v)[2]) {
          const float gate = v[0] * norm_scale, h = gate / (1.0f + expf(-gate)) * (v[1] * norm_scale);
          __stcg(p.h + begin + i, h);
          // Stashed for quantize_h_share whether it runs or not: one shared-memory store, and no
          // flag tested in the stream loop.
          if (i < kMaxSplitItems) sm.part_sums[i] = h;
        });
    if (h_blocks) quantize_h_share<kHandoff>(p, sm.part_sums, begin, end);
    if (threadIdx.x == 0) signal_release(ctr + kCtrUp);

    cta_share(L.down.rows, begin, end);
    prefetch_rows(L.down, begin, end, kPrefetchBytes);
    cta_wait(ctr + kCtrUp, all_ctas);
    if (h_blocks)
      copy_blocks_to_smem<kHandoff>(p.h_q, p.n_ff, sm);
    else
      copy_to_smem(p.h, p.n_ff, staging_for<kInt16Activations, kOnly>(sm, L.down.format));
    matvec_split_rows<kInt16Activations, kOnly>(L.down, begin, end, acts_of(sm), sm.part_sums, add_to_x_via(1));
    if constexpr (kAllReduce) tp_all_reduce_rows(p, 1, begin, end);
    if (threadIdx.x == 0 && signal_is_last(ctr + kCtrDown, all_ctas)) p.layer_epochs[layer] = epoch + 1;
    wait_counter = ctr + kCtrDown;
    wait_target = all_ctas;
  }
  if (kHeadPart && (flags & kFlagHead)) {
    cta_share(p.output.rows, begin, end);
    prefetch_rows(p.output, begin, end, kPrefetchBytes);
    if (wait_counter) cta_wait(wait_counter, wait_target);
    phase_head<kInt16Activations, kOnly>(p, model_epoch, sm);
  }
}

}  // namespace
}  // namespace pdvm::fused
