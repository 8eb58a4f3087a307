// Reading KV cache elements of any cache type as floats (F32, F16, GGUF Q8_0 blocks), shared
// by the decode and prefill attention kernels.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "cuda/ops.cuh"

namespace pdvm::cuda {

template <KvType T>
struct Kv;

template <>
struct Kv<KvType::kF32> {
  __device__ static void load8(const void* base, int64_t e, float (&v)[8]) {
    const float4* p = reinterpret_cast<const float4*>(static_cast<const float*>(base) + e);
    const float4 a = __ldg(p), b = __ldg(p + 1);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  }
  __device__ static float load1(const void* base, int64_t e) { return __ldg(static_cast<const float*>(base) + e); }
};

template <>
struct Kv<KvType::kF16> {
  __device__ static void load8(const void* base, int64_t e, float (&v)[8]) {
    const uint4 u = __ldg(reinterpret_cast<const uint4*>(static_cast<const __half*>(base) + e));
    const uint32_t words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&words[i]));
      v[2 * i] = f.x;
      v[2 * i + 1] = f.y;
    }
  }
  __device__ static float load1(const void* base, int64_t e) {
    return __half2float(__ldg(static_cast<const __half*>(base) + e));
  }
};

// GGUF Q8_0 blocks of 34 bytes: fp16 d, then 32 int8.
template <>
struct Kv<KvType::kQ8_0> {
  __device__ static void load8(const void* base, int64_t e, float (&v)[8]) {
    const uint8_t* block = static_cast<const uint8_t*>(base) + (e / 32) * 34;
    const float d = __half2float(__ldg(reinterpret_cast<const __half*>(block)));
    const uint16_t* q = reinterpret_cast<const uint16_t*>(block + 2 + e % 32);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint16_t pair = __ldg(q + i);
      v[2 * i] = d * static_cast<float>(static_cast<int8_t>(pair & 0xff));
      v[2 * i + 1] = d * static_cast<float>(static_cast<int8_t>(pair >> 8));
    }
  }
  __device__ static float load1(const void* base, int64_t e) {
    const uint8_t* block = static_cast<const uint8_t*>(base) + (e / 32) * 34;
    const float d = __half2float(__ldg(reinterpret_cast<const __half*>(block)));
    return d * static_cast<float>(static_cast<int8_t>(__ldg(block + 2 + e % 32)));
  }
};

// Calls fn(std::integral_constant<KvType, ...>{}) for the cache type.
template <typename Fn>
void dispatch_kv(KvType type, Fn&& fn) {
  switch (type) {
    case KvType::kF32: return fn(std::integral_constant<KvType, KvType::kF32>{});
    case KvType::kF16: return fn(std::integral_constant<KvType, KvType::kF16>{});
    case KvType::kQ8_0: return fn(std::integral_constant<KvType, KvType::kQ8_0>{});
  }
}

}  // namespace pdvm::cuda
