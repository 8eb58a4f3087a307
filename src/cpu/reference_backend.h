// The CPU reference backend: plain, readable fp32 arithmetic over host memory, the single
// source of truth for the math that the fast backends are tested against. Weights stay in
// their GGUF encoding (referencing the mapped file, no copy) and are dequantized one row at a
// time with pdvm::dequantize_row. Reductions (dot products, sums of squares, softmax sums)
// accumulate in double so the reference stays close to exact.
#pragma once

#include "pdvm/backend.h"
#include "util/host_memory.h"

namespace pdvm {

class ReferenceBackend final : public Backend {
 public:
  explicit ReferenceBackend(const BackendOptions& options = {});

  std::string name() const override { return "cpu-ref"; }
  TensorType default_kv_type() const override { return TensorType::kF32; }
  std::optional<uint64_t> available_memory() const override { return available_host_memory(); }

  Tensor alloc(TensorType type, std::array<int64_t, 4> ne) override;
  // References `bytes` without copying: they must outlive the tensor (the GgufFile's mapping).
  Tensor load_weight(TensorType type, std::array<int64_t, 4> ne, const void* bytes) override;
  void write(Tensor& dst, const void* src, uint64_t n_bytes, uint64_t offset) override;
  void read(const Tensor& src, void* dst, uint64_t n_bytes, uint64_t offset) override;

  void get_rows(const Tensor& table, const Tensor& ids, Tensor& out) override;
  void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) override;
  void matmul(const Tensor& w, const Tensor& x, Tensor& out) override;
  void rope(Tensor& x, const Tensor& positions, int n_heads, int head_dim,
            const RopeConfig& config) override;
  void kv_store(Tensor& k_cache, Tensor& v_cache, const Tensor& k, const Tensor& v,
                const Tensor& positions) override;
  void attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                 const Tensor& positions, const AttentionConfig& config, Tensor& out) override;
  void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) override;
  void add(const Tensor& a, const Tensor& b, Tensor& out) override;
  void argmax(const Tensor& logits, Tensor& ids) override;

 private:
  int n_threads_;
};

}  // namespace pdvm
