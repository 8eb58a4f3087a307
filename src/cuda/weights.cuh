// Weight layouts on the device and the per-format device code that reads them.
//
// Every weight format is read in "chunks": one 16-byte (or smaller, for Q6_K) load of quants
// plus the scales that go with it. A format type provides
//   kChunk                 elements per chunk
//   Frag load(view, row, c)        the loads for chunk c of a row
//   kRows, kUnroll         rows a warp works on at once (x loads are shared by them), and
//                          chunks per row it loads before using them
//   accumulate<R>(frags, c, x, acc)   acc[r] += dot(chunk c of row r, x) for R rows at once
//   dequant(frag, c, out, k)        writes the chunk's elements (those < k) to out[element]
// so matvec, get_rows and the GEMM dequantizer are each written once for all formats.
//
// x is read as float4s through an accessor (XGlobal or XShared); the shared copy is permuted by
// xs_index() so that the float4 reads of a warp hit distinct banks whatever the chunk size.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "pdvm/backend.h"

namespace pdvm::cuda {

// Tensor::layout values of weights this backend created.
enum WeightLayout : uint32_t {
  kLayoutGguf = 0,         // bytes as in the file (Q4_K, Q5_K, Q6_K)
  kLayoutDenseRows = 1,    // F32/F16/BF16 rows, each padded with zeros to a whole chunk
  kLayoutSplitBlocks = 2,  // Q8_0/Q4_0/Q4_1: all rows' quants, then all rows' scales
  kLayoutConvertedF16 = 3, // any other dequantizable type, converted to F16 dense rows at load
};

enum class WeightFormat : int { kF32, kF16, kBF16, kQ8_0, kQ4_0, kQ4_1, kQ4_K, kQ5_K, kQ6_K };

struct WeightView {
  WeightFormat format = WeightFormat::kF32;
  const uint8_t* q = nullptr;       // quant (or plain value) stream
  const uint8_t* scales = nullptr;  // scale stream of split layouts
  int64_t n_rows = 0;
  int64_t k = 0;             // logical elements per row
  int64_t q_row_bytes = 0;   // stride of the quant stream
  int64_t n_chunks = 0;      // chunks per row
  int64_t blocks_per_row = 0;
};

// Host side: the layout a weight of this type gets, the repacked bytes, and the view of a
// tensor made by this backend. Throws Error(kUnsupported) for types with no device path.
uint32_t layout_for(TensorType type);
int chunk_elems(WeightFormat format);
uint64_t repacked_bytes(TensorType type, int64_t k, int64_t n_rows);
void repack_weight(TensorType type, int64_t k, int64_t n_rows, const uint8_t* src, uint8_t* dst);
WeightView weight_view(const Tensor& w);

// ---- device side ---------------------------------------------------------------------------

__device__ __forceinline__ int64_t xs_index(int64_t f) { return f ^ ((f >> 3) & 7); }

// Where accumulate() reads x (as float4 number f): a swizzled shared-memory copy (used when
// rows are padded past k), or straight from global memory, where L1 keeps it for the SM.
struct XShared {
  const float4* xs;
  __device__ float4 operator()(int64_t f) const { return xs[xs_index(f)]; }
};
struct XGlobal {
  const float4* x;
  __device__ float4 operator()(int64_t f) const { return __ldg(x + f); }
};

// x quantized to int8 per 32-element block (d = max |x| / 127), for the integer dot products
// of the Q8_0 and Q4_0 decode matvecs (the scheme llama.cpp's quantized matvec uses): per
// block, d and d * (sum of its int8 values).
struct XInt8 {
  const int4* q;     // 16 int8 per int4
  const float2* ds;  // per block: d, d * sum
};

// Byte b of v as float(byte + 2^23), via the exponent trick: one byte-permute, no I2F.
template <int B>
__device__ __forceinline__ float byte_plus_2p23(uint32_t v) {
  return __uint_as_float(__byte_perm(v, 0x4B000000u, 0x7440 | B));
}
constexpr float k2p23 = 8388608.0f;

template <typename T>
__device__ __forceinline__ T to_out(float v);
template <>
__device__ __forceinline__ float to_out<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half to_out<__half>(float v) { return __float2half_rn(v); }

template <typename T>
__device__ __forceinline__ void put(T* out, int64_t k, int64_t e, float v) {
  if (e < k) out[e] = to_out<T>(v);
}

__device__ __forceinline__ float dot4(float4 a, float4 b, float acc) {
  acc = fmaf(a.x, b.x, acc);
  acc = fmaf(a.y, b.y, acc);
  acc = fmaf(a.z, b.z, acc);
  return fmaf(a.w, b.w, acc);
}

struct F32Format {
  static constexpr int kChunk = 4;
  static constexpr int kRows = 2;
  static constexpr int kUnroll = 4;
  using Frag = uint4;
  __device__ static Frag load(const WeightView& w, int64_t row, int64_t c) {
    return __ldcs(reinterpret_cast<const uint4*>(w.q + row * w.q_row_bytes) + c);
  }
  template <int R, typename X>
  __device__ static void accumulate(const Frag (&f)[R], int64_t c, const X& xs, float (&acc)[R]) {
    const float4 x = xs(c);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float4 v = make_float4(__uint_as_float(f[r].x), __uint_as_float(f[r].y),
                                   __uint_as_float(f[r].z), __uint_as_float(f[r].w));
      acc[r] = dot4(v, x, acc[r]);
    }
  }
  template <typename T>
  __device__ static void dequant(const Frag& f, int64_t c, T* out, int64_t k) {
    put(out, k, 4 * c + 0, __uint_as_float(f.x));
    put(out, k, 4 * c + 1, __uint_as_float(f.y));
    put(out, k, 4 * c + 2, __uint_as_float(f.z));
    put(out, k, 4 * c + 3, __uint_as_float(f.w));
  }
};

// 16-bit float weights: 8 per 16-byte chunk. Format supplies unpack(), which turns two 32-bit
// words (four values) into floats; loading, the dot product and dequantization are shared.
template <typename Format>
struct SixteenBitFormat {
  static constexpr int kChunk = 8;
  static constexpr int kRows = 2;
  static constexpr int kUnroll = 4;
  using Frag = uint4;
  __device__ static Frag load(const WeightView& w, int64_t row, int64_t c) {
    return __ldcs(reinterpret_cast<const uint4*>(w.q + row * w.q_row_bytes) + c);
  }
  template <int R, typename X>
  __device__ static void accumulate(const Frag (&f)[R], int64_t c, const X& xs, float (&acc)[R]) {
    const float4 x0 = xs(2 * c), x1 = xs(2 * c + 1);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      acc[r] = dot4(Format::unpack(f[r].x, f[r].y), x0, acc[r]);
      acc[r] = dot4(Format::unpack(f[r].z, f[r].w), x1, acc[r]);
    }
  }
  template <typename T>
  __device__ static void dequant(const Frag& f, int64_t c, T* out, int64_t k) {
    const float4 a = Format::unpack(f.x, f.y), b = Format::unpack(f.z, f.w);
    const float v[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
    for (int j = 0; j < 8; ++j) put(out, k, 8 * c + j, v[j]);
  }
};

struct F16Format : SixteenBitFormat<F16Format> {
  __device__ static float4 unpack(uint32_t lo, uint32_t hi) {
    const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&lo));
    const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&hi));
    return make_float4(a.x, a.y, b.x, b.y);
  }
};

struct BF16Format : SixteenBitFormat<BF16Format> {
  __device__ static float4 unpack(uint32_t lo, uint32_t hi) {
    return make_float4(__uint_as_float(lo << 16), __uint_as_float(lo & 0xffff0000u),
                       __uint_as_float(hi << 16), __uint_as_float(hi & 0xffff0000u));
  }
};

// Q8_0, split: a chunk is half a block (16 int8); one fp16 scale per 32.
struct Q8_0Format {
  static constexpr int kChunk = 16;
  static constexpr int kRows = 2;
  static constexpr int kUnroll = 2;
  struct Frag {
    uint4 q;
    float d;
  };
  __device__ static Frag load(const WeightView& w, int64_t row, int64_t c) {
    Frag f;
    f.q = __ldcs(reinterpret_cast<const uint4*>(w.q + row * w.q_row_bytes) + c);
    f.d = __half2float(reinterpret_cast<const __half*>(w.scales)[row * w.blocks_per_row + c / 2]);
    return f;
  }
  // int8 bytes of v as floats (+2^23+128 bias): flip the sign bit to make them unsigned.
  __device__ static float4 unpack(uint32_t v) {
    v ^= 0x80808080u;
    constexpr float kBias = k2p23 + 128.0f;
    return make_float4(byte_plus_2p23<0>(v) - kBias, byte_plus_2p23<1>(v) - kBias,
                       byte_plus_2p23<2>(v) - kBias, byte_plus_2p23<3>(v) - kBias);
  }
  template <int R, typename X>
  __device__ static void accumulate(const Frag (&f)[R], int64_t c, const X& xs, float (&acc)[R]) {
    float4 x[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) x[i] = xs(4 * c + i);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float s = 0.0f;
      s = dot4(unpack(f[r].q.x), x[0], s);
      s = dot4(unpack(f[r].q.y), x[1], s);
      s = dot4(unpack(f[r].q.z), x[2], s);
      s = dot4(unpack(f[r].q.w), x[3], s);
      acc[r] = fmaf(f[r].d, s, acc[r]);
    }
  }
  // Chunk c is the first or second half of x block c / 2.
  template <int R>
  __device__ static void accumulate_int8(const Frag (&f)[R], int64_t c, const XInt8& x, float (&acc)[R]) {
    const int4 xq = __ldg(x.q + c);
    const float xd = __ldg(x.ds + c / 2).x;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      int s = __dp4a(static_cast<int>(f[r].q.x), xq.x, 0);
      s = __dp4a(static_cast<int>(f[r].q.y), xq.y, s);
      s = __dp4a(static_cast<int>(f[r].q.z), xq.z, s);
      s = __dp4a(static_cast<int>(f[r].q.w), xq.w, s);
      acc[r] = fmaf(f[r].d * xd, static_cast<float>(s), acc[r]);
    }
  }
  template <typename T>
  __device__ static void dequant(const Frag& f, int64_t c, T* out, int64_t k) {
    const uint32_t words[4] = {f.q.x, f.q.y, f.q.z, f.q.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float4 v = unpack(words[i]);
      put(out, k, 16 * c + 4 * i + 0, f.d * v.x);
      put(out, k, 16 * c + 4 * i + 1, f.d * v.y);
      put(out, k, 16 * c + 4 * i + 2, f.d * v.z);
      put(out, k, 16 * c + 4 * i + 3, f.d * v.w);
    }
  }
};

// Q4_0 / Q4_1, split: a chunk is one block's 16 bytes; byte j holds element j (low nibble)
// and element j + 16 (high nibble).
template <bool kHasMin>
struct Q4Format {
  static constexpr int kChunk = 32;
  static constexpr int kRows = 2;
  static constexpr int kUnroll = 2;
  struct Frag {
    uint4 q;
    float d;
    float m;
  };
  __device__ static Frag load(const WeightView& w, int64_t row, int64_t c) {
    Frag f;
    f.q = __ldcs(reinterpret_cast<const uint4*>(w.q + row * w.q_row_bytes) + c);
    const int64_t b = row * w.blocks_per_row + c;
    if constexpr (kHasMin) {
      const float2 dm = __half22float2(reinterpret_cast<const __half2*>(w.scales)[b]);
      f.d = dm.x;
      f.m = dm.y;
    } else {
      f.d = __half2float(reinterpret_cast<const __half*>(w.scales)[b]);
      f.m = 0.0f;
    }
    return f;
  }
  static constexpr float kBias = kHasMin ? k2p23 : k2p23 + 8.0f;
  __device__ static float4 nibbles(uint32_t v) {
    return make_float4(byte_plus_2p23<0>(v) - kBias, byte_plus_2p23<1>(v) - kBias,
                       byte_plus_2p23<2>(v) - kBias, byte_plus_2p23<3>(v) - kBias);
  }
  template <int R, typename X>
  __device__ static void accumulate(const Frag (&f)[R], int64_t c, const X& xs, float (&acc)[R]) {
    float4 xl[4], xh[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      xl[i] = xs(8 * c + i);
      xh[i] = xs(8 * c + 4 + i);
    }
    float x_sum = 0.0f;
    if constexpr (kHasMin) {
#pragma unroll
      for (int i = 0; i < 4; ++i)
        x_sum += (xl[i].x + xl[i].y) + (xl[i].z + xl[i].w) + (xh[i].x + xh[i].y) + (xh[i].z + xh[i].w);
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const uint32_t words[4] = {f[r].q.x, f[r].q.y, f[r].q.z, f[r].q.w};
      float s = 0.0f;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        s = dot4(nibbles(words[i] & 0x0f0f0f0fu), xl[i], s);
        s = dot4(nibbles((words[i] >> 4) & 0x0f0f0f0fu), xh[i], s);
      }
      acc[r] = fmaf(f[r].d, s, acc[r]);
      if constexpr (kHasMin) acc[r] = fmaf(f[r].m, x_sum, acc[r]);
    }
  }
  // Q4_0 (nibbles n - 8): chunk c is x block c, low nibbles against its first 16 int8.
  template <int R>
  __device__ static void accumulate_int8(const Frag (&f)[R], int64_t c, const XInt8& x, float (&acc)[R]) {
    static_assert(!kHasMin, "Q4_1 keeps fp32 activations");
    const int4 lo = __ldg(x.q + 2 * c), hi = __ldg(x.q + 2 * c + 1);
    const float2 ds = __ldg(x.ds + c);
    constexpr uint32_t kNibbles = 0x0f0f0f0fu;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const uint4 w = f[r].q;
      int s = __dp4a(static_cast<int>(w.x & kNibbles), lo.x, 0);
      s = __dp4a(static_cast<int>(w.y & kNibbles), lo.y, s);
      s = __dp4a(static_cast<int>(w.z & kNibbles), lo.z, s);
      s = __dp4a(static_cast<int>(w.w & kNibbles), lo.w, s);
      s = __dp4a(static_cast<int>((w.x >> 4) & kNibbles), hi.x, s);
      s = __dp4a(static_cast<int>((w.y >> 4) & kNibbles), hi.y, s);
      s = __dp4a(static_cast<int>((w.z >> 4) & kNibbles), hi.z, s);
      s = __dp4a(static_cast<int>((w.w >> 4) & kNibbles), hi.w, s);
      acc[r] = fmaf(f[r].d, fmaf(ds.x, static_cast<float>(s), -8.0f * ds.y), acc[r]);
    }
  }
  template <typename T>
  __device__ static void dequant(const Frag& f, int64_t c, T* out, int64_t k) {
    const uint32_t words[4] = {f.q.x, f.q.y, f.q.z, f.q.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float4 lo = nibbles(words[i] & 0x0f0f0f0fu), hi = nibbles((words[i] >> 4) & 0x0f0f0f0fu);
      const float l[4] = {lo.x, lo.y, lo.z, lo.w}, h[4] = {hi.x, hi.y, hi.z, hi.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        put(out, k, 32 * c + 4 * i + j, fmaf(f.d, l[j], f.m));
        put(out, k, 32 * c + 16 + 4 * i + j, fmaf(f.d, h[j], f.m));
      }
    }
  }
};
using Q4_0Format = Q4Format<false>;
using Q4_1Format = Q4Format<true>;

// Q4_K (kFifthBit false) and Q5_K in GGUF layout (144- and 176-byte super-blocks of 256, so
// 16-byte aligned): chunk t (0..7) of a super-block is 16 bytes of quants covering two
// sub-blocks' halves; the 16-byte header (d, dmin, packed 6-bit scales and mins) comes with it,
// and for Q5_K the 16 bytes of qh (the fifth bits, bit `sub` of qh[l]) of the same halves.
template <bool kFifthBit>
struct K4Format {
  static constexpr int kChunk = 32;
  static constexpr int kBlockBytes = kFifthBit ? 176 : 144;
  static constexpr int kQuantsOffset = kFifthBit ? 48 : 16;
  static constexpr int kRows = 2;
  static constexpr int kUnroll = 2;
  struct Frag {
    uint4 q;
    uint4 head;
    uint4 qh;  // Q5_K only
  };
  __device__ static Frag load(const WeightView& w, int64_t row, int64_t c) {
    const uint8_t* block = w.q + row * w.q_row_bytes + (c / 8) * kBlockBytes;
    Frag f;
    f.head = __ldg(reinterpret_cast<const uint4*>(block));
    f.q = __ldcs(reinterpret_cast<const uint4*>(block + kQuantsOffset) + c % 8);
    if constexpr (kFifthBit) f.qh = __ldg(reinterpret_cast<const uint4*>(block + 16) + c % 2);
    return f;
  }
  // Word i of the chunk's quants as bytes: elements of the low sub-block (lo) and of the high one.
  __device__ static void quant_bytes(const Frag& f, int64_t c, int i, uint32_t& lo, uint32_t& hi) {
    const uint32_t words[4] = {f.q.x, f.q.y, f.q.z, f.q.w};
    lo = words[i] & 0x0f0f0f0fu;
    hi = (words[i] >> 4) & 0x0f0f0f0fu;
    if constexpr (kFifthBit) {
      const uint32_t fifth[4] = {f.qh.x, f.qh.y, f.qh.z, f.qh.w};
      const int sub = 2 * static_cast<int>((c % 8) / 2);
      lo |= ((fifth[i] >> sub) & 0x01010101u) << 4;
      hi |= ((fifth[i] >> (sub + 1)) & 0x01010101u) << 4;
    }
  }
  __device__ static void scale_min(const uint8_t* s, int j, float& scale, float& min) {
    if (j < 4) {
      scale = s[j] & 63;
      min = s[j + 4] & 63;
    } else {
      scale = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
      min = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
  }
  // Per chunk: low nibbles belong to sub-block 2*(t/2), high nibbles to the next one.
  __device__ static void coefficients(const Frag& f, int t, float& d_lo, float& m_lo, float& d_hi, float& m_hi) {
    const uint32_t h0 = f.head.x;
    const float d = __half2float(__ushort_as_half(static_cast<unsigned short>(h0 & 0xffff)));
    const float dmin = __half2float(__ushort_as_half(static_cast<unsigned short>(h0 >> 16)));
    const uint32_t packed[3] = {f.head.y, f.head.z, f.head.w};
    const uint8_t* s = reinterpret_cast<const uint8_t*>(packed);
    const int sub = 2 * (t / 2);
    float sc, mn;
    scale_min(s, sub, sc, mn);
    d_lo = d * sc;
    m_lo = dmin * mn;
    scale_min(s, sub + 1, sc, mn);
    d_hi = d * sc;
    m_hi = dmin * mn;
  }
  __device__ static float4 nibbles(uint32_t v) {
    return make_float4(byte_plus_2p23<0>(v) - k2p23, byte_plus_2p23<1>(v) - k2p23,
                       byte_plus_2p23<2>(v) - k2p23, byte_plus_2p23<3>(v) - k2p23);
  }
  // First float4 index of the chunk's low-nibble elements (the high ones follow 8 later).
  __device__ static int64_t first_f4(int64_t c) {
    const int64_t t = c % 8;
    return (c / 8) * 64 + (t / 2) * 16 + (t % 2) * 4;
  }
  template <int R, typename X>
  __device__ static void accumulate(const Frag (&f)[R], int64_t c, const X& xs, float (&acc)[R]) {
    const int64_t f0 = first_f4(c);
    float4 xl[4], xh[4];
    float sum_lo = 0.0f, sum_hi = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      xl[i] = xs(f0 + i);
      xh[i] = xs(f0 + 8 + i);
      sum_lo += (xl[i].x + xl[i].y) + (xl[i].z + xl[i].w);
      sum_hi += (xh[i].x + xh[i].y) + (xh[i].z + xh[i].w);
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float d_lo, m_lo, d_hi, m_hi;
      coefficients(f[r], static_cast<int>(c % 8), d_lo, m_lo, d_hi, m_hi);
      float s_lo = 0.0f, s_hi = 0.0f;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        uint32_t lo, hi;
        quant_bytes(f[r], c, i, lo, hi);
        s_lo = dot4(nibbles(lo), xl[i], s_lo);
        s_hi = dot4(nibbles(hi), xh[i], s_hi);
      }
      acc[r] += d_lo * s_lo - m_lo * sum_lo + d_hi * s_hi - m_hi * sum_hi;
    }
  }
  template <typename T>
  __device__ static void dequant(const Frag& f, int64_t c, T* out, int64_t k) {
    float d_lo, m_lo, d_hi, m_hi;
    coefficients(f, static_cast<int>(c % 8), d_lo, m_lo, d_hi, m_hi);
    const int64_t e0 = 4 * first_f4(c);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      uint32_t lo_bytes, hi_bytes;
      quant_bytes(f, c, i, lo_bytes, hi_bytes);
      const float4 lo = nibbles(lo_bytes), hi = nibbles(hi_bytes);
      const float l[4] = {lo.x, lo.y, lo.z, lo.w}, h[4] = {hi.x, hi.y, hi.z, hi.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        put(out, k, e0 + 4 * i + j, d_lo * l[j] - m_lo);
        put(out, k, e0 + 32 + 4 * i + j, d_hi * h[j] - m_hi);
      }
    }
  }
};
using Q4_KFormat = K4Format<false>;
using Q5_KFormat = K4Format<true>;

// Q6_K in GGUF layout (210-byte super-blocks: only 2-byte aligned, so 16-bit loads). Chunk
// (half h, u) covers l = 4u..4u+3 of the four 32-element groups of that half.
struct Q6_KFormat {
  static constexpr int kChunk = 16;
  static constexpr int kRows = 2;
  static constexpr int kUnroll = 2;
  struct Frag {
    uint32_t ql0, ql1, qh;  // ql[64h + l], ql[64h + 32 + l], qh[32h + l] for the 4 l's
    uint32_t scales;        // the 4 int8 group scales
    float d;
  };
  __device__ static uint32_t load_u32(const uint8_t* p) {
    const uint16_t* p16 = reinterpret_cast<const uint16_t*>(p);
    return static_cast<uint32_t>(__ldcs(p16)) | (static_cast<uint32_t>(__ldcs(p16 + 1)) << 16);
  }
  __device__ static Frag load(const WeightView& w, int64_t row, int64_t c) {
    const uint8_t* block = w.q + row * w.q_row_bytes + (c / 16) * 210;
    const int h = static_cast<int>((c % 16) / 8), u = static_cast<int>(c % 8);
    Frag f;
    f.ql0 = load_u32(block + 64 * h + 4 * u);
    f.ql1 = load_u32(block + 64 * h + 32 + 4 * u);
    f.qh = load_u32(block + 128 + 32 * h + 4 * u);
    const uint8_t* sc = block + 192 + 8 * h + u / 4;
    f.scales = static_cast<uint32_t>(__ldg(sc)) | (static_cast<uint32_t>(__ldg(sc + 2)) << 8) |
               (static_cast<uint32_t>(__ldg(sc + 4)) << 16) | (static_cast<uint32_t>(__ldg(sc + 6)) << 24);
    f.d = __half2float(__ldg(reinterpret_cast<const __half*>(block + 208)));
    return f;
  }
  // The 6-bit quants of group g for the 4 l's, as floats q - 32.
  __device__ static float4 group(const Frag& f, int g) {
    const uint32_t low = ((g % 2 == 0 ? f.ql0 : f.ql1) >> (4 * (g / 2))) & 0x0f0f0f0fu;
    const uint32_t high = ((f.qh >> (2 * g)) & 0x03030303u) << 4;
    const uint32_t v = low | high;
    constexpr float kBias = k2p23 + 32.0f;
    return make_float4(byte_plus_2p23<0>(v) - kBias, byte_plus_2p23<1>(v) - kBias,
                       byte_plus_2p23<2>(v) - kBias, byte_plus_2p23<3>(v) - kBias);
  }
  __device__ static float group_scale(const Frag& f, int g) {
    return f.d * static_cast<float>(static_cast<int8_t>((f.scales >> (8 * g)) & 0xff));
  }
  __device__ static int64_t first_f4(int64_t c) { return (c / 16) * 64 + ((c % 16) / 8) * 32 + c % 8; }
  template <int R, typename X>
  __device__ static void accumulate(const Frag (&f)[R], int64_t c, const X& xs, float (&acc)[R]) {
    const int64_t f0 = first_f4(c);
    float4 x[4];
#pragma unroll
    for (int g = 0; g < 4; ++g) x[g] = xs(f0 + 8 * g);
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int g = 0; g < 4; ++g) acc[r] = fmaf(group_scale(f[r], g), dot4(group(f[r], g), x[g], 0.0f), acc[r]);
    }
  }
  template <typename T>
  __device__ static void dequant(const Frag& f, int64_t c, T* out, int64_t k) {
    const int64_t e0 = 4 * first_f4(c);
#pragma unroll
    for (int g = 0; g < 4; ++g) {
      const float4 v = group(f, g);
      const float s = group_scale(f, g);
      put(out, k, e0 + 32 * g + 0, s * v.x);
      put(out, k, e0 + 32 * g + 1, s * v.y);
      put(out, k, e0 + 32 * g + 2, s * v.z);
      put(out, k, e0 + 32 * g + 3, s * v.w);
    }
  }
};

// Calls fn(Format{}) with the format type matching the view.
template <typename Fn>
void dispatch_format(WeightFormat format, Fn&& fn) {
  switch (format) {
    case WeightFormat::kF32: return fn(F32Format{});
    case WeightFormat::kF16: return fn(F16Format{});
    case WeightFormat::kBF16: return fn(BF16Format{});
    case WeightFormat::kQ8_0: return fn(Q8_0Format{});
    case WeightFormat::kQ4_0: return fn(Q4_0Format{});
    case WeightFormat::kQ4_1: return fn(Q4_1Format{});
    case WeightFormat::kQ4_K: return fn(Q4_KFormat{});
    case WeightFormat::kQ5_K: return fn(Q5_KFormat{});
    case WeightFormat::kQ6_K: return fn(Q6_KFormat{});
  }
}

}  // namespace pdvm::cuda
