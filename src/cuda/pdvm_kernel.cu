// The PDVM fused decode kernel. One CTA per SM; every CTA walks the same phases and takes a
// static, contiguous share of each phase's rows, so it knows which weights it streams next and
// pulls their head into L2 before it waits on the counter of the activations they multiply.
//
// Per layer: QKV+RoPE+KV append -> attention partials per (KV head, context chunk), merged by
// the last chunk to arrive -> O-projection + residual -> RMSNorm + gate/up + SiLU*mul -> down +
// residual. Counters grow monotonically: phase targets are (epoch + 1) * arrivals, where the
// layer's epoch is bumped by the last CTA to finish its down projection.
//
// The kernel is compiled per activation kind (int8 or float, see kFloatActs) and per layer part
// (whole layers; one half of each, or whole layers with the in-kernel all-reduce, for tensor
// parallelism), and launch_fused picks the instance:
// the kernel sits at the 128-register cap, and every code path compiled into one instance shares
// its register allocation (docs/perf-notes.md: the float-activation and TP paths made the int8
// path spill).

#include <nccl_device.h>

#include <algorithm>
#include <cfloat>
#include <climits>
#include <cstdlib>
#include <string_view>

#include "cuda/check.cuh"
#include "cuda/pdvm_kernel.cuh"
#include "cuda/pdvm_matvec.cuh"
#include "cuda/pdvm_repack.h"

namespace pdvm::fused {
namespace {

constexpr int kSmemHeader = 64;  // floats for reductions and flags
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
};

__host__ __device__ inline size_t align16(size_t n) { return (n + 15) / 16 * 16; }

__host__ __device__ inline size_t vector_floats(const Params& p) {
  const int G = p.n_head / p.n_head_kv;
  const size_t vec = std::max({p.n_embd, p.n_ff, p.n_head * p.head_dim});
  const size_t attention = static_cast<size_t>(G) * p.head_dim * (1 + kWarps) + kWarps * G * 2;
  return std::max(vec, attention);
}

__host__ __device__ inline size_t max_activation(const Params& p) {
  return std::max({p.n_embd, p.n_ff, p.n_head * p.head_dim});
}

// Byte offsets of xq, q_scale, q_sum, part_sums, rope and the total.
__host__ __device__ inline void smem_layout(const Params& p, size_t (&offsets)[6]) {
  const size_t n = max_activation(p);
  offsets[0] = align16((kSmemHeader + vector_floats(p)) * sizeof(float));
  offsets[1] = offsets[0] + align16(n);
  offsets[2] = offsets[1] + align16(n / 32 * sizeof(float));
  offsets[3] = offsets[2] + align16(n / 32 * sizeof(int));
  offsets[4] = offsets[3] + kMaxSplitItems * sizeof(float);
  offsets[5] = offsets[4] + align16(p.n_rot / 2 * sizeof(float2));
}

__device__ Smem carve_smem(const Params& p, uint8_t* base) {
  size_t off[6];
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
  return s;
}

// Float4s each thread has in flight when a phase stages a vector from L2: issued back to back,
// so staging costs one round trip per batch instead of one per float4 (a plain loop left the
// remainder iterations, up to three for 13B's 13824-float h, as dependent round trips).
constexpr int kStageBatch = 8;

// x (global, written by other CTAs) -> xs = x * w * rsqrt(mean(x^2) + eps). Deterministic order;
// w is applied in the first pass so that its loads overlap x's instead of following the reduction.
__device__ void rms_norm_to_smem(const float* x, const float* w, int n, float eps, float* xs, float* red) {
  constexpr int kBatch = kStageBatch / 2;  // x and w
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float ss = 0.0f;
  for (int first = threadIdx.x * 4; first < n; first += kThreads * 4 * kBatch) {
    float4 v[kBatch], g[kBatch];
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const int i = first + k * kThreads * 4;
      v[k] = i < n ? __ldcg(reinterpret_cast<const float4*>(x + i)) : make_float4(0, 0, 0, 0);
      g[k] = i < n ? __ldg(reinterpret_cast<const float4*>(w + i)) : make_float4(0, 0, 0, 0);
    }
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const int i = first + k * kThreads * 4;
      if (i < n) {
        *reinterpret_cast<float4*>(xs + i) =
            make_float4(v[k].x * g[k].x, v[k].y * g[k].y, v[k].z * g[k].z, v[k].w * g[k].w);
        ss += v[k].x * v[k].x + v[k].y * v[k].y + v[k].z * v[k].z + v[k].w * v[k].w;
      }
    }
  }
  ss = warp_sum(ss);
  if (lane == 0) red[warp] = ss;
  __syncthreads();
  float total = 0.0f;
  for (int i = 0; i < kWarps; ++i) total += red[i];
  const float scale = rsqrtf(total / static_cast<float>(n) + eps);
  for (int i = threadIdx.x * 4; i < n; i += kThreads * 4) {
    float4 v = *reinterpret_cast<float4*>(xs + i);
    v.x *= scale;
    v.y *= scale;
    v.z *= scale;
    v.w *= scale;
    *reinterpret_cast<float4*>(xs + i) = v;
  }
  __syncthreads();
}

__device__ void copy_to_smem(const float* src, int n, float* dst) {
  for (int first = threadIdx.x * 4; first < n; first += kThreads * 4 * kStageBatch) {
    float4 v[kStageBatch];
#pragma unroll
    for (int k = 0; k < kStageBatch; ++k) {
      const int i = first + k * kThreads * 4;
      v[k] = i < n ? __ldcg(reinterpret_cast<const float4*>(src + i)) : make_float4(0, 0, 0, 0);
    }
#pragma unroll
    for (int k = 0; k < kStageBatch; ++k) {
      const int i = first + k * kThreads * 4;
      if (i < n) *reinterpret_cast<float4*>(dst + i) = v[k];
    }
  }
  __syncthreads();
}

// Activations for matrices of these formats (int8 blocks are built only for quantized weights).
__device__ Acts prepare_acts(const Smem& sm, int format, int n, int other_format = kFmtF16) {
  if (is_quantized_format(format) || is_quantized_format(other_format))
    quantize_activations(sm.xs, n, sm.xq, sm.q_scale, sm.q_sum);
  return Acts{sm.xs, sm.xq, sm.q_scale, sm.q_sum};
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

// The CTA's share [begin, end) of the RoPE pairs of [Wq; Wk; Wv]: pairs of qk, then of v.
template <bool kFloatActivations>
__device__ void phase_qkv(const Params& p, const DevLayer& L, const float2* rope, int layer, int pos, int begin,
                          int end, const Acts& acts) {
  const int qk_pairs = L.qk.rows / 2;
  const int qk_end = min(end, qk_pairs), v_begin = max(begin, qk_pairs);
  matvec_items<kFloatActivations, 2>(
      L.qk.format, max(qk_end - begin, 0), L.qk.row_bytes / 16, acts,
      [&](int i, RowRef(&refs)[2]) {
        refs[0] = row_ref(L.qk, 2 * (begin + i));
        refs[1] = row_ref(L.qk, 2 * (begin + i) + 1);
      },
      [&](int i, const float(&v)[2]) { store_qkv_pair(p, rope, layer, pos, 2 * (begin + i), v[0], v[1]); });
  matvec_items<kFloatActivations, 2>(
      L.v.format, max(end - v_begin, 0), L.v.row_bytes / 16, acts,
      [&](int i, RowRef(&refs)[2]) {
        refs[0] = row_ref(L.v, 2 * (v_begin + i - qk_pairs));
        refs[1] = row_ref(L.v, 2 * (v_begin + i - qk_pairs) + 1);
      },
      [&](int i, const float(&v)[2]) { store_qkv_pair(p, rope, layer, pos, 2 * (v_begin + i), v[0], v[1]); });
}

// Pulls the head of the CTA's QKV share into L2.
__device__ void prefetch_qkv(const DevLayer& L, int begin, int end) {
  const int qk_pairs = L.qk.rows / 2;
  if (begin < qk_pairs) prefetch_rows(L.qk, 2 * begin, 2 * min(end, qk_pairs), kPrefetchBytes);
  else prefetch_rows(L.v, 2 * (begin - qk_pairs), 2 * (end - qk_pairs), kPrefetchBytes);
}

// Folds state b (max mb, sum lb, output ob) into a; -inf maxima contribute nothing.
__device__ __forceinline__ void merge_factors(float ma, float mb, float& fa, float& fb, float& m) {
  m = fmaxf(ma, mb);
  fa = ma == -INFINITY ? 0.0f : expf(ma - m);
  fb = mb == -INFINITY ? 0.0f : expf(mb - m);
}

// Chunks per KV head at position `pos`: as many as keep two rounds of position groups per item,
// at most p.n_chunks (one item per CTA).
__device__ __forceinline__ int attention_split(const Params& p, int pos) {
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
  float* qs = smem;                        // [G][hd], pre-scaled
  float* warp_o = qs + G * hd;             // [warp][G][hd]
  float* warp_ml = warp_o + kWarps * G * hd;  // [warp][G][2]
  const int part_stride = hd + 2;

  for (int item = blockIdx.x; item < p.n_head_kv * n_split; item += gridDim.x) {
    const int kvh = item % p.n_head_kv, chunk = item / p.n_head_kv;
    const int begin = chunk * chunk_len, end = min(n_pos, begin + chunk_len);
    const int64_t head_base = (static_cast<int64_t>(layer) * p.n_head_kv + kvh) * p.n_ctx * hd + sub * 8;
    const __half* kc = p.k_cache + head_base;
    const __half* vc = p.v_cache + head_base;
    // The first round's K rows are requested before the queries are staged, so the two round
    // trips overlap (at short context that round is every load of the item; V as well spilled).
    uint4 k_first = make_uint4(0, 0, 0, 0);
    if (begin + group < end) k_first = __ldcg(reinterpret_cast<const uint4*>(kc + static_cast<int64_t>(begin + group) * hd));
    for (int i = threadIdx.x; i < G * hd; i += kThreads) qs[i] = __ldcg(p.q + kvh * G * hd + i) * p.attn_scale;
    __syncthreads();

    float m[kMaxGroup], l[kMaxGroup], o[kMaxGroup][8];
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) {
      m[g] = -INFINITY;
      l[g] = 0.0f;
#pragma unroll
      for (int i = 0; i < 8; ++i) o[g][i] = 0.0f;
    }
    for (int base = begin; base < end; base += n_groups) {
      const int t = base + group;
      const bool valid = t < end;
      uint4 kraw = k_first, vraw = make_uint4(0, 0, 0, 0);
      if (valid) {
        if (base != begin) kraw = __ldcg(reinterpret_cast<const uint4*>(kc + static_cast<int64_t>(t) * hd));
        vraw = __ldcg(reinterpret_cast<const uint4*>(vc + static_cast<int64_t>(t) * hd));
      }
      float kf[8], vf[8];
      const __half2* kh = reinterpret_cast<const __half2*>(&kraw);
      const __half2* vh = reinterpret_cast<const __half2*>(&vraw);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 k2 = __half22float2(kh[i]), v2 = __half22float2(vh[i]);
        kf[2 * i] = k2.x;
        kf[2 * i + 1] = k2.y;
        vf[2 * i] = v2.x;
        vf[2 * i + 1] = v2.y;
      }
#pragma unroll
      for (int g = 0; g < kMaxGroup; ++g) {
        if (g < G) {
          const float* qv = qs + g * hd + sub * 8;
          float s = 0.0f;
#pragma unroll
          for (int i = 0; i < 8; ++i) s = fmaf(qv[i], kf[i], s);
          for (int off = lanes_per_pos / 2; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
          if (valid) {
            const float m_new = fmaxf(m[g], s);
            const float corr = m[g] == -INFINITY ? 0.0f : expf(m[g] - m_new);
            const float e = expf(s - m_new);
            l[g] = l[g] * corr + e;
#pragma unroll
            for (int i = 0; i < 8; ++i) o[g][i] = fmaf(o[g][i], corr, e * vf[i]);
            m[g] = m_new;
          }
        }
      }
    }
    // Combine the position groups of this warp (butterfly: same order every run).
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) {
      if (g < G) {
        for (int off = lanes_per_pos; off < 32; off <<= 1) {
          const float mo = __shfl_xor_sync(0xffffffffu, m[g], off);
          const float lo = __shfl_xor_sync(0xffffffffu, l[g], off);
          float fa, fb, mn;
          merge_factors(m[g], mo, fa, fb, mn);
          l[g] = l[g] * fa + lo * fb;
#pragma unroll
          for (int i = 0; i < 8; ++i) {
            const float oo = __shfl_xor_sync(0xffffffffu, o[g][i], off);
            o[g][i] = o[g][i] * fa + oo * fb;
          }
          m[g] = mn;
        }
        if (lane < lanes_per_pos) {
#pragma unroll
          for (int i = 0; i < 8; ++i) warp_o[(warp * G + g) * hd + sub * 8 + i] = o[g][i];
          if (sub == 0) {
            warp_ml[(warp * G + g) * 2] = m[g];
            warp_ml[(warp * G + g) * 2 + 1] = l[g];
          }
        }
      }
    }
    __syncthreads();
    // Warp g turns query head g's warp states into weights (lane w: warp w's, in place of its
    // maximum) and their sum (lane 0, in warp order), so the output threads below only
    // multiply-add; the queries in qs are spent, so qs[g] and qs[G + g] take the sum and maximum.
    if (warp < G) {
      const int g = warp;
      const float mw = lane < kWarps ? warp_ml[(lane * G + g) * 2] : -INFINITY;
      float mx = mw;
      for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float f = mw == -INFINITY ? 0.0f : expf(mw - mx);
      const float lw = lane < kWarps ? warp_ml[(lane * G + g) * 2 + 1] : 0.0f;
      float sum = 0.0f;
      for (int w = 0; w < kWarps; ++w)
        sum = fmaf(__shfl_sync(0xffffffffu, lw, w), __shfl_sync(0xffffffffu, f, w), sum);
      if (lane < kWarps) warp_ml[(lane * G + g) * 2] = f;
      if (lane == 0) {
        qs[g] = sum;
        qs[G + g] = mx;
      }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < G * hd; i += kThreads) {
      const int g = i / hd, d = i % hd;
      const float sum = qs[g], mx = qs[G + g];
      float acc = 0.0f;
      for (int w = 0; w < kWarps; ++w) acc = fmaf(warp_o[(w * G + g) * hd + d], warp_ml[(w * G + g) * 2], acc);
      if (n_split == 1) {
        __stcg(p.attn_out + (kvh * G + g) * hd + d, acc / sum);
        continue;
      }
      float* part = p.attn_part + (static_cast<int64_t>(kvh * G + g) * p.n_chunks + chunk) * part_stride;
      __stcg(part + d, acc);
      if (d == 0) {
        __stcg(part + hd, mx);
        __stcg(part + hd + 1, sum);
      }
    }
    __syncthreads();
    // Every token adds p.n_chunks to the head's counter whatever the split (chunk 0 adds the
    // difference), so the last-arrival targets stay (epoch + 1) * p.n_chunks.
    if (threadIdx.x == 0) {
      const unsigned arrivals = chunk == 0 ? p.n_chunks - n_split + 1 : 1;
      if (n_split == 1) {
        // The head's only item, so its last arrival: counted without waiting for the answer
        // (0.8 us of the item's critical path, docs/perf-notes.md session 7).
        count_relaxed(head_counters + kvh, arrivals);
        *flag = 1;
      } else {
        *flag = signal_is_last(head_counters + kvh, head_target, arrivals);
      }
    }
    __syncthreads();
    if (*flag && n_split > 1) {
      // Weights of the chunks per query head in shared memory first (one batch of loads), then
      // each output element's partials, loaded independently of the sums they feed.
      float* weight = warp_o;                 // [G][n_split]
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
      for (int i = threadIdx.x; i < G * hd; i += kThreads) {
        const int g = i / hd, d = i % hd;
        const float* part = p.attn_part + static_cast<int64_t>(kvh * G + g) * p.n_chunks * part_stride + d;
        float acc = 0.0f;
#pragma unroll 8
        for (int c = 0; c < n_split; ++c) acc += __ldcg(part + c * part_stride) * weight[g * n_split + c];
        __stcg(p.attn_out + (kvh * G + g) * hd + d, acc / total[g]);
      }
    }
    if (*flag) {
      __syncthreads();
      if (threadIdx.x == 0) signal_release(attn_counter);
    }
    __syncthreads();
  }
}

// One row per item: rows [begin, end) of m; out(row, value).
template <bool kFloatActivations, class Out>
__device__ __forceinline__ void matvec_rows(const DevMatrix& m, int begin, int end, const Acts& acts, Out&& out) {
  matvec_items<kFloatActivations, 1>(
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
template <bool kFloatActivations, class Out>
__device__ __forceinline__ void matvec_split_rows(const DevMatrix& m, int begin, int end, const Acts& acts,
                                                  float* part_sums, Out&& out) {
  const int s = m.parts_log2;
  if (s == 0) {
    matvec_rows<kFloatActivations>(m, begin, end, acts, out);
    return;
  }
  const int n_chunks = m.row_bytes / 16, parts = 1 << s;
  const int part_chunks = part_columns(n_chunks, parts) * 32;
  const int first = ((threadIdx.x >> 5) & (parts - 1)) * part_chunks;
  const int base = base_format(m.format);
  const int first_weight = first * weights_per_chunk(base);
  const Acts part_acts{acts.x + first_weight, acts.q + first_weight, acts.scale + first_weight / kQuantBlock,
                       acts.sum + first_weight / kQuantBlock};
  const int first_scale = first / chunks_per_scale(base) * scale_halves(base);
  matvec_items<kFloatActivations, 1>(
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

template <bool kFloatActivations>
__device__ void phase_embed(const Params& p, int token) {
  int begin, end;
  cta_share(p.n_embd, begin, end);
  dispatch_format<kFloatActivations>(p.token_embd.format, [&](auto tag) {
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
template <bool kFloatActivations>
__device__ void phase_head(const Params& p, unsigned model_epoch, const Smem& sm) {
  rms_norm_to_smem(p.x, p.output_norm, p.n_embd, p.rms_eps, sm.xs, sm.red);
  const Acts acts = prepare_acts(sm, p.output.format, p.n_embd);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float best = -FLT_MAX;
  int best_index = INT_MAX;
  int begin, end;
  cta_share(p.output.rows, begin, end);
  matvec_rows<kFloatActivations>(p.output, begin, end, acts, [&](int row, float v) {
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

template <bool kFloatActivations, LayerPart kPart>
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
    phase_embed<kFloatActivations>(p, __ldcg(&p.step->token));
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
      rms_norm_to_smem(p.x, L.attn_norm, p.n_embd, p.rms_eps, sm.xs, sm.red);
      phase_qkv<kFloatActivations>(p, L, sm.rope, layer, pos, begin, end,
                                   prepare_acts(sm, L.qk.format, p.n_embd, L.v.format));
      if (threadIdx.x == 0) signal_release(ctr + kCtrQkv);

      cta_share(L.wo.rows, begin, end);
      prefetch_rows(L.wo, begin, end, kPrefetchBytes);
      cta_wait(ctr + kCtrQkv, all_ctas);
      phase_attention(p, layer, pos, ctr + kLayerCounters, (epoch + 1) * p.n_chunks, ctr + kCtrAttn, sm.xs,
                      sm.flag);
      cta_wait(ctr + kCtrAttn, (epoch + 1) * p.n_head_kv);
      copy_to_smem(p.attn_out, p.n_head * p.head_dim, sm.xs);
      matvec_split_rows<kFloatActivations>(L.wo, begin, end, prepare_acts(sm, L.wo.format, p.n_head * p.head_dim),
                                           sm.part_sums, add_to_x_via(0));
      if constexpr (kAllReduce) tp_all_reduce_rows(p, 0, begin, end);
      if (threadIdx.x == 0) signal_release(ctr + kCtrO);
    }
    if constexpr (!kMlpPart) continue;

    cta_share(p.n_ff, begin, end);
    prefetch_rows(L.gate, begin, end, kPrefetchBytes / 2);
    prefetch_rows(L.up, begin, end, kPrefetchBytes / 2);
    cta_wait(ctr + kCtrO, all_ctas);
    rms_norm_to_smem(p.x, L.ffn_norm, p.n_embd, p.rms_eps, sm.xs, sm.red);
    matvec_items<kFloatActivations, 2>(
        L.gate.format, end - begin, L.gate.row_bytes / 16, prepare_acts(sm, L.gate.format, p.n_embd),
        [&](int i, RowRef(&refs)[2]) {
          refs[0] = row_ref(L.gate, begin + i);
          refs[1] = row_ref(L.up, begin + i);
        },
        [&](int i, const float(&v)[2]) { __stcg(p.h + begin + i, v[0] / (1.0f + expf(-v[0])) * v[1]); });
    if (threadIdx.x == 0) signal_release(ctr + kCtrUp);

    cta_share(L.down.rows, begin, end);
    prefetch_rows(L.down, begin, end, kPrefetchBytes);
    cta_wait(ctr + kCtrUp, all_ctas);
    copy_to_smem(p.h, p.n_ff, sm.xs);
    matvec_split_rows<kFloatActivations>(L.down, begin, end, prepare_acts(sm, L.down.format, p.n_ff), sm.part_sums,
                                         add_to_x_via(1));
    if constexpr (kAllReduce) tp_all_reduce_rows(p, 1, begin, end);
    if (threadIdx.x == 0 && signal_is_last(ctr + kCtrDown, all_ctas)) p.layer_epochs[layer] = epoch + 1;
    wait_counter = ctr + kCtrDown;
    wait_target = all_ctas;
  }
  if (kHeadPart && (flags & kFlagHead)) {
    cta_share(p.output.rows, begin, end);
    prefetch_rows(p.output, begin, end, kPrefetchBytes);
    if (wait_counter) cta_wait(wait_counter, wait_target);
    phase_head<kFloatActivations>(p, model_epoch, sm);
  }
}

// The in-kernel all-reduce alone (benchmarks): `n_reduces` exchanges of x with the rows cut as
// the O and down projections cut them (n_embd rows over the grid), slots alternating. A kernel of
// its own, so the decode instances' register allocation does not see it.
__global__ void __launch_bounds__(kThreads, 1) all_reduce_only_kernel(const __grid_constant__ Params p, int n_reduces) {
  int begin, end;
  cta_share(p.n_embd, begin, end);
  for (int i = 0; i < n_reduces; ++i) tp_all_reduce_rows(p, i & 1, begin, end);
}

using FusedKernel = void (*)(Params, int, int, int);

template <bool kFloatActivations>
FusedKernel kernel_for_part(int flags) {
  if (flags & kFlagAttnHalf) return fused_decode_kernel<kFloatActivations, LayerPart::kAttentionHalf>;
  if (flags & kFlagMlpHalf) return fused_decode_kernel<kFloatActivations, LayerPart::kMlpHalf>;
  if (flags & kFlagDeviceAllReduce) return fused_decode_kernel<kFloatActivations, LayerPart::kWholeAllReduce>;
  return fused_decode_kernel<kFloatActivations, LayerPart::kWhole>;
}

// The instance for a launch: the model's activation kind, the layer part its flags ask for. A
// half never runs the head, the MLP half never the embedding (its instance leaves them out); the
// in-kernel all-reduce runs whole layers only, with a device communicator.
FusedKernel fused_kernel(const Params& p, int flags) {
  const bool half = flags & (kFlagAttnHalf | kFlagMlpHalf);
  PDVM_CHECK(!half || !(flags & kFlagHead));
  PDVM_CHECK(!(flags & kFlagDeviceAllReduce) || (!half && p.tp_comm && p.tp_window));
  PDVM_CHECK(!(flags & kFlagMlpHalf) || !(flags & (kFlagEmbed | kFlagAttnHalf)));
  return p.float_activations ? kernel_for_part<true>(flags) : kernel_for_part<false>(flags);
}

constexpr FusedKernel kAllInstances[] = {
    fused_decode_kernel<false, LayerPart::kWhole>,        fused_decode_kernel<false, LayerPart::kAttentionHalf>,
    fused_decode_kernel<false, LayerPart::kMlpHalf>,      fused_decode_kernel<true, LayerPart::kWhole>,
    fused_decode_kernel<true, LayerPart::kAttentionHalf>, fused_decode_kernel<true, LayerPart::kMlpHalf>,
    fused_decode_kernel<false, LayerPart::kWholeAllReduce>, fused_decode_kernel<true, LayerPart::kWholeAllReduce>,
};

}  // namespace

int row_parts_log2(int format, int rows, int row_bytes, int grid) {
  const int base = base_format(format);
  const char* env = std::getenv("PDVM_FUSED_SPLIT");
  const std::string_view choice = env ? env : "";
  const int forced = choice.size() == 1 && choice[0] >= '1' && choice[0] <= '3' ? choice[0] - '0' : -1;
  if (base == kFmtUpg || choice == "0" || (!is_quantized_format(base) && forced < 0 && choice != "all")) return 0;
  const int n_chunks = row_bytes / 16, columns = part_columns(n_chunks, 1), max_rows = (rows + grid - 1) / grid;
  int best = 0, best_batches = INT_MAX;
  for (int s = 0; s <= 3; ++s) {
    const int parts = 1 << s, columns_per_part = part_columns(n_chunks, parts);
    if ((parts - 1) * columns_per_part >= columns || max_rows * parts > kMaxSplitItems) continue;
    if (forced >= 0) {
      if (s <= forced) best = s;
      continue;
    }
    const int walk = (max_rows * parts + kWarps - 1) / kWarps * columns_per_part;
    const int batches = (walk + kLoadsPerLane - 1) / kLoadsPerLane;
    if (batches < best_batches) {
      best = s;
      best_batches = batches;
    }
  }
  return best;
}

size_t fused_smem_bytes(const Params& p) {
  size_t offsets[6];
  smem_layout(p, offsets);
  return offsets[5];
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
  for (FusedKernel kernel : kAllInstances) {
    PDVM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_optin));
    int instance_per_sm = 0;
    PDVM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&instance_per_sm, kernel, kThreads, smem));
    per_sm = std::min(per_sm, instance_per_sm);
  }
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
  PDVM_CUDA_CHECK(cudaLaunchKernelEx(&config, fused_kernel(p, flags), p, layer_begin, layer_end, flags));
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
