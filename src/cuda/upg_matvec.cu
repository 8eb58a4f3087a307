// UPG on the GPU. Matvec: one warp per row; each lane takes whole groups of 32 codes (one
// 16-byte load for 4-bit codes), looks the values up in the row's table held in four 32-bit
// registers (__byte_perm selects the byte), and accumulates against x in f32; the group sum
// is scaled by its block scale, the warp sum by the row scale, and the row's outliers are
// added by the same warp (no atomics).
#include <cuda_fp16.h>

#include <cstring>
#include <memory>

#include "cuda/check.cuh"
#include "cuda/upg.cuh"

namespace pdvm::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;

struct UpgHolder {
  UpgDeviceMatrix view;
  std::shared_ptr<void> memory;
};

__device__ __forceinline__ float table_value(const uint32_t (&lut)[4], uint32_t code) {
  const uint32_t word = lut[code >> 2];
  return static_cast<float>(static_cast<int8_t>(__byte_perm(word, 0, code & 3)));
}

__device__ __forceinline__ uint32_t code3(const uint8_t* group, int e) {
  return ((group[e % 8] >> (2 * (e / 8))) & 3) | (((group[8 + e / 8] >> (e % 8)) & 1) << 2);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__global__ void upg_matvec_kernel(UpgDeviceMatrix w, const float* __restrict__ x, float* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  const int64_t token = blockIdx.y;
  if (row >= w.n) return;
  const float* xt = x + token * w.k;
  const int levels = 1 << w.bits;
  uint32_t lut[4] = {0, 0, 0, 0};
  for (int l = 0; l < levels; ++l) lut[l >> 2] |= static_cast<uint32_t>(static_cast<uint8_t>(w.lut[row * levels + l])) << (8 * (l & 3));
  const int64_t groups = w.k / 32, group_bytes = 32 * w.bits / 8, groups_per_block = w.block / 32;
  const uint8_t* codes = w.codes + row * (w.k * w.bits / 8);
  const int8_t* bscale = w.bscale + row * (w.k / w.block);
  float acc = 0.0f;
  for (int64_t g = lane; g < groups; g += 32) {
    const float* xg = xt + g * 32;
    float sum = 0.0f;
    if (w.bits == 4) {
      const uint4 packed = *reinterpret_cast<const uint4*>(codes + g * 16);
      const uint32_t words[4] = {packed.x, packed.y, packed.z, packed.w};
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        const uint32_t byte = (words[i >> 2] >> (8 * (i & 3))) & 0xFF;
        sum += table_value(lut, byte & 15) * xg[i] + table_value(lut, byte >> 4) * xg[16 + i];
      }
    } else {
      const uint8_t* group = codes + g * group_bytes;
      for (int e = 0; e < 32; ++e) sum += table_value(lut, code3(group, e)) * xg[e];
    }
    acc += static_cast<float>(bscale[g / groups_per_block]) * sum;
  }
  acc = w.rscale[row] * warp_sum(acc);
  if (w.nnz > 0) {
    float extra = 0.0f;
    for (int64_t i = w.rowptr[row] + lane; i < w.rowptr[row + 1]; i += 32) {
      const uint32_t col = w.idx16 ? w.idx16[i] : w.idx32[i];
      extra += __half2float(__ushort_as_half(w.val[i])) * xt[col];
    }
    acc += warp_sum(extra);
  }
  if (lane == 0) out[token * w.n + row] = acc;
}

__global__ void upg_get_rows_kernel(UpgDeviceMatrix w, const int32_t* __restrict__ ids, float* __restrict__ out) {
  const int64_t token = blockIdx.x;
  const int64_t row = ids[token];
  float* dst = out + token * w.k;
  const int levels = 1 << w.bits;
  for (int64_t c = threadIdx.x; c < w.k; c += blockDim.x) {
    const uint8_t* group = w.codes + row * (w.k * w.bits / 8) + (c / 32) * (32 * w.bits / 8);
    const int e = static_cast<int>(c % 32);
    const uint32_t code = w.bits == 4 ? (e < 16 ? group[e] & 15 : group[e - 16] >> 4) : code3(group, e);
    dst[c] = w.rscale[row] * static_cast<float>(w.bscale[row * (w.k / w.block) + c / w.block] * w.lut[row * levels + code]);
  }
  __syncthreads();
  if (w.nnz > 0 && threadIdx.x == 0) {
    for (int64_t i = w.rowptr[row]; i < w.rowptr[row + 1]; ++i) {
      dst[w.idx16 ? w.idx16[i] : w.idx32[i]] += __half2float(__ushort_as_half(w.val[i]));
    }
  }
}

}  // namespace

Tensor upload_upg_weight(CudaContext& ctx, TensorType type, std::array<int64_t, 4> ne, const UpgMatrix& m) {
  PDVM_CHECK(m.type() == type && ne[0] == m.k && ne[1] == m.n);
  // One allocation, each array at a 16-byte aligned offset (the 16-byte code loads need it).
  const auto align = [](uint64_t v) { return (v + 15) / 16 * 16; };
  struct Part {
    const void* src;
    uint64_t bytes;
    uint64_t offset;
  };
  const uint64_t idx_bytes = m.sp_idx16 ? 2 : 4;
  Part parts[] = {{m.codes, static_cast<uint64_t>(m.n * m.code_row_bytes()), 0},
                  {m.bscale, static_cast<uint64_t>(m.n * (m.k / m.block)), 0},
                  {m.lut, static_cast<uint64_t>(m.n * m.levels()), 0},
                  {m.rscale, static_cast<uint64_t>(m.n) * 4, 0},
                  {m.sp_rowptr, m.nnz > 0 ? static_cast<uint64_t>(m.n + 1) * 4 : 0, 0},
                  {m.sp_idx16 ? static_cast<const void*>(m.sp_idx16) : m.sp_idx32, static_cast<uint64_t>(m.nnz) * idx_bytes, 0},
                  {m.sp_val, static_cast<uint64_t>(m.nnz) * 2, 0}};
  uint64_t total = 0;
  for (Part& p : parts) {
    p.offset = total;
    total = align(total + p.bytes);
  }
  auto holder = std::make_shared<UpgHolder>();
  holder->memory = device_alloc(total, "a UPG weight");
  auto* base = static_cast<uint8_t*>(holder->memory.get());
  for (const Part& p : parts) {
    if (p.bytes > 0) PDVM_CUDA_CHECK(cudaMemcpyAsync(base + p.offset, p.src, p.bytes, cudaMemcpyHostToDevice, ctx.stream));
  }
  PDVM_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  UpgDeviceMatrix& v = holder->view;
  v.bits = m.bits;
  v.k = m.k;
  v.n = m.n;
  v.block = m.block;
  v.nnz = m.nnz;
  v.codes = base + parts[0].offset;
  v.bscale = reinterpret_cast<const int8_t*>(base + parts[1].offset);
  v.lut = reinterpret_cast<const int8_t*>(base + parts[2].offset);
  v.rscale = reinterpret_cast<const float*>(base + parts[3].offset);
  if (m.nnz > 0) {
    v.rowptr = reinterpret_cast<const int32_t*>(base + parts[4].offset);
    if (m.sp_idx16) {
      v.idx16 = reinterpret_cast<const uint16_t*>(base + parts[5].offset);
    } else {
      v.idx32 = reinterpret_cast<const uint32_t*>(base + parts[5].offset);
    }
    v.val = reinterpret_cast<const uint16_t*>(base + parts[6].offset);
  }
  Tensor t;
  t.type = type;
  t.ne = ne;
  t.n_bytes = total;
  t.data = &holder->view;
  t.owner = std::move(holder);
  return t;
}

void upg_matmul(CudaContext& ctx, const UpgDeviceMatrix& w, const float* x, float* out, int n_tokens) {
  const dim3 grid(static_cast<unsigned>((w.n + kWarpsPerBlock - 1) / kWarpsPerBlock), static_cast<unsigned>(n_tokens));
  upg_matvec_kernel<<<grid, kWarpsPerBlock * 32, 0, ctx.stream>>>(w, x, out);
  PDVM_CUDA_CHECK(cudaGetLastError());
}

void upg_get_rows(CudaContext& ctx, const UpgDeviceMatrix& w, const int32_t* ids, int n_tokens, float* out) {
  upg_get_rows_kernel<<<n_tokens, 256, 0, ctx.stream>>>(w, ids, out);
  PDVM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace pdvm::cuda
