#include "cpu/fast_backend.h"

#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "cpu/fast_attention.h"
#include "cpu/fast_half.h"
#include "cpu/fast_kernels.h"
#include "cpu/fast_thread_pool.h"
#include "cpu/upg_kernels.h"
#include "pdvm/backend_registry.h"
#include "pdvm/error.h"
#include "pdvm/logits.h"
#include "pdvm/upg.h"
#include "util/host_memory.h"

namespace pdvm::cpu {
namespace {

constexpr size_t kAlignment = 64;
constexpr size_t kHugePage = size_t{2} << 20;
// Batches of at least this many tokens run as a GEMM rather than as matvecs.
constexpr int64_t kGemmMinTokens = 8;

// Method per weight type, chosen by measurement (docs/perf-notes.md, "cpu-fast"). The
// environment variable PDVM_CPU_DOT=fma|int8|int16 overrides it, to measure the alternatives
// end to end.
std::optional<DotMethod> method_override() {
  const char* value = std::getenv("PDVM_CPU_DOT");
  if (!value || !*value) return std::nullopt;
  const std::string_view name(value);
  if (name == "fma") return DotMethod::kDequantFma;
  if (name == "int8") return DotMethod::kInt8;
  if (name == "int16") return DotMethod::kInt16;
  throw_error(ErrorKind::kInvalidArgument,
              "PDVM_CPU_DOT must be fma, int8 or int16, not '" + std::string(name) + "'");
}

DotMethod preferred_method(TensorType type, std::optional<DotMethod> override_method) {
  if (override_method && has_matmul_kernel(type, *override_method)) return *override_method;
  return has_matmul_kernel(type, DotMethod::kInt16) ? DotMethod::kInt16 : DotMethod::kDequantFma;
}

const float* f32_data(const Tensor& t) { return static_cast<const float*>(t.data); }
float* f32_data(Tensor& t) { return static_cast<float*>(t.data); }
const int32_t* i32_data(const Tensor& t) { return static_cast<const int32_t*>(t.data); }

void check_f32(const Tensor& t, const char* what) {
  if (t.type != TensorType::kF32) {
    throw_error(ErrorKind::kInvalidArgument,
                std::string("cpu backend: ") + what + " must be f32, got " + std::string(type_name(t.type)));
  }
}

// Rows of a KV cache: reading and writing one head slice in the cache's type.
struct CacheRow {
  TensorType type;
  const uint8_t* base;
  int64_t row_bytes;

  const uint8_t* at(int64_t row, int64_t first_elem) const {
    return base + row * row_bytes + type_bytes(type, first_elem);
  }
};

float dot_cache(const CacheRow& cache, int64_t row, int64_t first, const float* q, int64_t n) {
  const uint8_t* p = cache.at(row, first);
  switch (cache.type) {
    case TensorType::kF32: return dot_f32(q, reinterpret_cast<const float*>(p), n);
    case TensorType::kF16: return dot_f32_f16(q, reinterpret_cast<const uint16_t*>(p), n);
    default: {  // Q8_0: 2-byte scale + 32 int8 per block
      float sum = 0.0f;
      for (int64_t b = 0; b < n / kQ8Block; ++b, p += 34) {
        const int8_t* qs = reinterpret_cast<const int8_t*>(p + 2);
        float block = 0.0f;
        for (int i = 0; i < kQ8Block; ++i) block += q[b * kQ8Block + i] * static_cast<float>(qs[i]);
        sum += load_half(p) * block;
      }
      return sum;
    }
  }
}

void accumulate_cache(const CacheRow& cache, int64_t row, int64_t first, float weight, float* out,
                      int64_t n) {
  const uint8_t* p = cache.at(row, first);
  switch (cache.type) {
    case TensorType::kF32: return axpy_f32(weight, reinterpret_cast<const float*>(p), out, n);
    case TensorType::kF16: return axpy_f16(weight, reinterpret_cast<const uint16_t*>(p), out, n);
    default:
      for (int64_t b = 0; b < n / kQ8Block; ++b, p += 34) {
        const int8_t* qs = reinterpret_cast<const int8_t*>(p + 2);
        const float scale = weight * load_half(p);
        for (int i = 0; i < kQ8Block; ++i) out[b * kQ8Block + i] += scale * static_cast<float>(qs[i]);
      }
  }
}

class FastCpuBackend final : public Backend {
 public:
  explicit FastCpuBackend(const FastCpuOptions& options)
      : pool_(options.threads > 0 ? options.threads : default_thread_count()),
        method_override_(method_override()) {}

  std::string name() const override { return "cpu"; }
  std::optional<uint64_t> available_memory() const override { return available_host_memory(); }

  Tensor alloc(TensorType type, std::array<int64_t, 4> ne) override { return allocate(type, ne, true); }

  Tensor load_weight(TensorType type, std::array<int64_t, 4> ne, const void* bytes) override {
    if (is_upg_type(type)) return host_upg_weight(type, ne, bytes);
    Tensor t = allocate(type, ne, false);  // the copy touches every page once, no zeroing first
    std::memcpy(t.data, bytes, t.n_bytes);
    return t;
  }

  Tensor allocate(TensorType type, std::array<int64_t, 4> ne, bool zeroed) {
    Tensor t;
    t.type = type;
    t.ne = ne;
    for (int64_t d : ne) {
      if (d < 0) throw_error(ErrorKind::kInvalidArgument, "cpu backend: negative tensor dimension");
    }
    t.n_bytes = static_cast<uint64_t>(type_bytes(type, ne[0])) * static_cast<uint64_t>(t.n_rows());
    // Large tensors (weights, caches) on 2 MiB boundaries in transparent huge pages: decode
    // streams every weight once per token, and 4 KiB pages would cost a TLB miss every 64 lines.
    const size_t alignment = t.n_bytes >= kHugePage ? kHugePage : kAlignment;
    const size_t padded = (t.n_bytes + alignment - 1) / alignment * alignment + kAlignment;
    void* memory = std::aligned_alloc(alignment, (padded + alignment - 1) / alignment * alignment);
    if (!memory) throw_error(ErrorKind::kResource, "cpu backend: out of memory allocating " + std::to_string(padded) + " bytes");
    if (alignment == kHugePage) madvise(memory, padded, MADV_HUGEPAGE);  // a hint; failure is harmless
    if (zeroed) std::memset(memory, 0, padded);
    t.owner = std::shared_ptr<void>(memory, std::free);
    t.data = memory;
    return t;
  }

  void write(Tensor& dst, const void* src, uint64_t n_bytes, uint64_t offset) override {
    PDVM_CHECK(offset + n_bytes <= dst.n_bytes);
    std::memcpy(static_cast<uint8_t*>(dst.data) + offset, src, n_bytes);
  }

  void read(const Tensor& src, void* dst, uint64_t n_bytes, uint64_t offset) override {
    PDVM_CHECK(offset + n_bytes <= src.n_bytes);
    std::memcpy(dst, static_cast<const uint8_t*>(src.data) + offset, n_bytes);
  }

  void get_rows(const Tensor& table, const Tensor& ids, Tensor& out) override {
    check_f32(out, "get_rows output");
    const int64_t width = table.ne[0];
    const int64_t n_tokens = ids.ne[0];
    PDVM_CHECK(out.ne[0] == width && out.n_rows() >= n_tokens);
    for (int64_t t = 0; t < n_tokens; ++t) {
      const int32_t id = i32_data(ids)[t];
      if (id < 0 || id >= table.n_rows()) {
        throw_error(ErrorKind::kOutOfRange, "cpu backend: token id " + std::to_string(id) +
                                                " outside the table of " + std::to_string(table.n_rows()) + " rows");
      }
      if (is_upg_type(table.type)) {
        upg_dequantize_row(*static_cast<const UpgMatrix*>(table.data), id, f32_data(out) + t * width);
        continue;
      }
      const uint8_t* row = static_cast<const uint8_t*>(table.data) + id * table.row_bytes();
      dequantize_row(table.type, row, f32_data(out) + t * width, width);
    }
  }

  void rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) override {
    check_f32(x, "rms_norm input");
    check_f32(weight, "rms_norm weight");
    const int64_t width = x.ne[0];
    const float* w = f32_data(weight);
    for (int64_t t = 0; t < x.n_rows(); ++t) {
      const float* in = f32_data(x) + t * width;
      float* dst = f32_data(out) + t * width;
      const float mean_square = dot_f32(in, in, width) / static_cast<float>(width);
      const float scale = 1.0f / std::sqrt(mean_square + eps);
      for (int64_t i = 0; i < width; ++i) dst[i] = in[i] * scale * w[i];
    }
  }

  void matmul(const Tensor& w, const Tensor& x, Tensor& out) override { matmul_shared_input({&w}, x, {&out}); }

  // Products of one input with weights of one type run as a single pool job over their rows
  // concatenated: the activation is prepared once, and a layer's Q/K/V (or gate/up) cost one
  // synchronization instead of three (two).
  void matmul_shared_input(std::initializer_list<const Tensor*> weight_list, const Tensor& x,
                           std::initializer_list<Tensor*> out_list) override {
    const std::span<const Tensor* const> weights(weight_list.begin(), weight_list.size());
    const std::span<Tensor* const> outs(out_list.begin(), out_list.size());
    PDVM_CHECK(weights.size() == outs.size() && !weights.empty());
    check_f32(x, "matmul input");
    const int64_t k = x.ne[0];
    const int64_t n_tokens = x.n_rows();
    const TensorType type = weights[0]->type;
    for (size_t i = 0; i < weights.size(); ++i) {
      check_f32(*outs[i], "matmul output");
      PDVM_CHECK_MSG(weights[i]->ne[0] == k && outs[i]->ne[0] == weights[i]->n_rows() && outs[i]->n_rows() == n_tokens,
                     "matmul shapes do not match");
    }
    // Batches go to the GEMM (weights decoded once per batch); see docs/perf-notes.md.
    const bool gemm = n_tokens >= kGemmMinTokens;
    const bool one_type = std::all_of(weights.begin(), weights.end(), [&](const Tensor* w) { return w->type == type; });
    if (!one_type) {
      for (size_t i = 0; i < weights.size(); ++i) matmul(*weights[i], x, *outs[i]);
      return;
    }
    const bool upg = is_upg_type(type);
    // UPG's row kernel takes the activation in 16-bit blocks.
    const DotMethod method = gemm  ? DotMethod::kDequantFma
                             : upg ? DotMethod::kInt16
                                   : preferred_method(type, method_override_);
    if (gemm) {  // the GEMM reads x only
      activation_.k = k;
      activation_.n_tokens = n_tokens;
      activation_.x = f32_data(x);
    } else {
      prepare_activation(f32_data(x), k, n_tokens, method, activation_);
    }
    constexpr size_t kMaxShared = 4;
    PDVM_CHECK(weights.size() <= kMaxShared);
    MatmulTask tasks[kMaxShared];
    int64_t first_row[kMaxShared + 1] = {0};
    for (size_t i = 0; i < weights.size(); ++i) {
      const Tensor& w = *weights[i];
      MatmulTask& task = tasks[i];
      task.type = type;
      task.method = method;
      if (upg) {
        task.upg = static_cast<const UpgMatrix*>(w.data);
      } else {
        task.w = static_cast<const uint8_t*>(w.data);
        task.row_bytes = w.row_bytes();
      }
      task.act = &activation_;
      task.out = f32_data(*outs[i]);
      task.out_stride = w.n_rows();
      first_row[i + 1] = first_row[i] + w.n_rows();
    }
    const int64_t n_rows = first_row[weights.size()];
    // Enough chunks per thread to even out a core that another process slows down; whole
    // row tiles for the GEMM.
    const int64_t grain = (std::max<int64_t>(4, n_rows / (static_cast<int64_t>(pool_.size()) * 8)) + 3) / 4 * 4;
    const auto kernel = gemm ? gemm_rows : upg ? upg_matmul_task_rows : matmul_rows;
    pool_.parallel_for(n_rows, grain, [&](int64_t begin, int64_t end) {
      for (size_t i = 0; i < weights.size(); ++i) {  // the parts of [begin, end) in each matrix
        const int64_t lo = std::max(begin, first_row[i]), hi = std::min(end, first_row[i + 1]);
        if (lo < hi) kernel(tasks[i], lo - first_row[i], hi - first_row[i]);
      }
    });
  }

  void rope(Tensor& x, const Tensor& positions, int n_heads, int head_dim,
            const RopeConfig& config) override {
    check_f32(x, "rope input");
    const int64_t n_tokens = positions.ne[0];
    const int half_rot = config.n_rot / 2;
    PDVM_CHECK(config.n_rot <= head_dim && x.ne[0] == int64_t{n_heads} * head_dim);
    std::vector<float> cos_table(half_rot), sin_table(half_rot);
    for (int64_t t = 0; t < n_tokens; ++t) {
      const double pos = i32_data(positions)[t];
      for (int i = 0; i < half_rot; ++i) {
        double theta = pos * std::pow(static_cast<double>(config.freq_base), -2.0 * i / config.n_rot);
        if (config.freq_factors) theta /= f32_data(*config.freq_factors)[i];
        cos_table[i] = static_cast<float>(std::cos(theta));
        sin_table[i] = static_cast<float>(std::sin(theta));
      }
      float* row = f32_data(x) + t * x.ne[0];
      for (int h = 0; h < n_heads; ++h) {
        float* head = row + int64_t{h} * head_dim;
        for (int i = 0; i < half_rot; ++i) {
          const float a = head[2 * i], b = head[2 * i + 1];
          head[2 * i] = a * cos_table[i] - b * sin_table[i];
          head[2 * i + 1] = a * sin_table[i] + b * cos_table[i];
        }
      }
    }
  }

  void kv_store(Tensor& k_cache, Tensor& v_cache, const Tensor& k, const Tensor& v,
                const Tensor& positions) override {
    check_f32(k, "kv_store k");
    check_f32(v, "kv_store v");
    store_rows(k_cache, k, positions);
    store_rows(v_cache, v, positions);
  }

  void attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                 const Tensor& positions, const AttentionConfig& config, Tensor& out) override {
    check_f32(q, "attention q");
    check_f32(out, "attention output");
    const int64_t n_tokens = positions.ne[0];
    const int64_t head_dim = config.head_dim;
    const int64_t group = config.n_head / config.n_head_kv;
    const CacheRow keys{k_cache.type, static_cast<const uint8_t*>(k_cache.data), k_cache.row_bytes()};
    const CacheRow values{v_cache.type, static_cast<const uint8_t*>(v_cache.data), v_cache.row_bytes()};
    const bool same_layout = k_cache.type == v_cache.type && k_cache.row_bytes() == v_cache.row_bytes();
    for (int64_t t = 0; t < n_tokens; ++t) {
      const int32_t pos = i32_data(positions)[t];
      if (pos < 0 || pos >= k_cache.ne[1]) {
        throw_error(ErrorKind::kOutOfRange, "cpu backend: position " + std::to_string(pos) +
                                                " outside the KV cache of " + std::to_string(k_cache.ne[1]));
      }
    }
    const int64_t n_jobs = n_tokens * config.n_head;
    pool_.parallel_for(n_jobs, 1, [&](int64_t begin, int64_t end) {
      thread_local std::vector<float> scores;
      for (int64_t job = begin; job < end; ++job) {
        const int64_t t = job / config.n_head;
        const int64_t h = job % config.n_head;
        const int64_t first = (h / group) * head_dim;  // this head's kv slice in a cache row
        const int64_t n_keys = i32_data(positions)[t] + 1;
        const float* query = f32_data(q) + t * q.ne[0] + h * head_dim;
        float* dst = f32_data(out) + t * out.ne[0] + h * head_dim;
        scores.resize(static_cast<size_t>(n_keys));
        if (same_layout && head_dim % kQ8Block == 0) {  // whole SIMD vectors and q8_0 blocks
          const AttentionHead head{k_cache.type, query, keys.at(0, first), values.at(0, first),
                                   keys.row_bytes, n_keys, head_dim, config.scale};
          attend_head(head, scores.data(), dst);
          continue;
        }
        float max_score = -std::numeric_limits<float>::infinity();
        for (int64_t r = 0; r < n_keys; ++r) {
          scores[r] = config.scale * dot_cache(keys, r, first, query, head_dim);
          max_score = std::max(max_score, scores[r]);
        }
        float total = 0.0f;
        for (int64_t r = 0; r < n_keys; ++r) {
          scores[r] = std::exp(scores[r] - max_score);
          total += scores[r];
        }
        std::fill(dst, dst + head_dim, 0.0f);
        for (int64_t r = 0; r < n_keys; ++r) accumulate_cache(values, r, first, scores[r], dst, head_dim);
        scale_f32(1.0f / total, dst, head_dim);
      }
    });
  }

  void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) override {
    const int64_t n = gate.n_elems();
    const float* g = f32_data(gate);
    const float* u = f32_data(up);
    float* dst = f32_data(out);
    silu_mul(g, u, dst, n);
  }

  void add(const Tensor& a, const Tensor& b, Tensor& out) override {
    const int64_t n = a.n_elems();
    const float* pa = f32_data(a);
    const float* pb = f32_data(b);
    float* dst = f32_data(out);
    for (int64_t i = 0; i < n; ++i) dst[i] = pa[i] + pb[i];
  }

  void argmax(const Tensor& logits, Tensor& ids) override {
    check_f32(logits, "argmax input");
    const int64_t width = logits.ne[0];
    for (int64_t t = 0; t < logits.n_rows(); ++t) {
      const float* row = f32_data(logits) + t * width;
      static_cast<int32_t*>(ids.data)[t] = finite_argmax(row, static_cast<size_t>(width));
    }
  }

 private:
  void store_rows(Tensor& cache, const Tensor& src, const Tensor& positions) {
    const int64_t width = src.ne[0];
    PDVM_CHECK(cache.ne[0] == width);
    for (int64_t t = 0; t < positions.ne[0]; ++t) {
      const int32_t pos = i32_data(positions)[t];
      if (pos < 0 || pos >= cache.ne[1]) {
        throw_error(ErrorKind::kOutOfRange, "cpu backend: position " + std::to_string(pos) +
                                                " outside the KV cache of " + std::to_string(cache.ne[1]));
      }
      const float* row = f32_data(src) + t * width;
      uint8_t* dst = static_cast<uint8_t*>(cache.data) + pos * cache.row_bytes();
      switch (cache.type) {
        case TensorType::kF32: std::memcpy(dst, row, width * sizeof(float)); break;
        case TensorType::kF16: f32_to_f16(row, reinterpret_cast<uint16_t*>(dst), width); break;
        case TensorType::kQ8_0: quantize_row(TensorType::kQ8_0, row, dst, width); break;
        default:
          throw_error(ErrorKind::kUnsupported, "cpu backend: KV cache type " +
                                                   std::string(type_name(cache.type)) + " (use f32, f16 or q8_0)");
      }
    }
  }

  ThreadPool pool_;
  std::optional<DotMethod> method_override_;
  PreparedActivation activation_;
};

}  // namespace

std::unique_ptr<Backend> make_fast_cpu_backend(const FastCpuOptions& options) {
  return std::make_unique<FastCpuBackend>(options);
}

PDVM_REGISTER_BACKEND("cpu", "CPU, SIMD kernels (AVX-512/AVX2/SSE4/NEON, chosen at run time) on all cores",
                      [](const BackendOptions& options) {
                        return make_fast_cpu_backend(FastCpuOptions{.threads = options.n_threads});
                      });

}  // namespace pdvm::cpu
