#include "cpu/reference_backend.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "pdvm/backend_registry.h"
#include "pdvm/error.h"
#include "pdvm/logits.h"
#include "pdvm/upg.h"

namespace pdvm {
namespace {

const float* f32_row(const Tensor& t, int64_t row) {
  PDVM_CHECK(t.type == TensorType::kF32);
  return static_cast<const float*>(t.data) + row * t.ne[0];
}

float* f32_row(Tensor& t, int64_t row) {
  PDVM_CHECK(t.type == TensorType::kF32);
  return static_cast<float*>(t.data) + row * t.ne[0];
}

const int32_t* i32_data(const Tensor& t) {
  PDVM_CHECK(t.type == TensorType::kI32);
  return static_cast<const int32_t*>(t.data);
}

const uint8_t* raw_row(const Tensor& t, int64_t row) {
  return static_cast<const uint8_t*>(t.data) + row * t.row_bytes();
}

// Row `row` of any dequantizable tensor, as fp32.
void load_row(const Tensor& t, int64_t row, float* out) {
  if (is_upg_type(t.type)) return upg_dequantize_row(*static_cast<const UpgMatrix*>(t.data), row, out);
  dequantize_row(t.type, raw_row(t, row), out, t.ne[0]);
}

void store_row(Tensor& t, int64_t row, const float* in) {
  void* dst = static_cast<uint8_t*>(t.data) + row * t.row_bytes();
  if (t.type == TensorType::kF32) {
    std::memcpy(dst, in, t.ne[0] * sizeof(float));
  } else if (t.type == TensorType::kF16) {
    auto* half = static_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < t.ne[0]; ++i) half[i] = fp32_to_fp16(in[i]);
  } else {
    quantize_row(t.type, in, dst, t.ne[0]);
  }
}

// Four interleaved partial sums, added in a fixed order: the same result for every call with
// the same inputs, and no single chain of dependent additions (4x faster than one sum).
double dot(const float* a, const float* b, int64_t n) {
  double partial[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int lane = 0; lane < 4; ++lane) partial[lane] += static_cast<double>(a[i + lane]) * b[i + lane];
  }
  for (; i < n; ++i) partial[0] += static_cast<double>(a[i]) * b[i];
  return (partial[0] + partial[1]) + (partial[2] + partial[3]);
}

// Runs body(begin, end) over [0, n) split into contiguous chunks, one per thread. Each index
// is computed by exactly one thread with the same code, so results do not depend on the split.
template <typename Body>
void parallel_for(int n_threads, int64_t n, const Body& body) {
  const int64_t n_chunks = std::min<int64_t>(n_threads, n);
  if (n_chunks <= 1) {
    body(int64_t{0}, n);
    return;
  }
  std::vector<std::thread> workers;
  const int64_t chunk = (n + n_chunks - 1) / n_chunks;
  for (int64_t begin = chunk; begin < n; begin += chunk) {
    workers.emplace_back([&body, begin, chunk, n] { body(begin, std::min(n, begin + chunk)); });
  }
  body(int64_t{0}, std::min(n, chunk));
  for (auto& worker : workers) worker.join();
}

}  // namespace

ReferenceBackend::ReferenceBackend(const BackendOptions& options)
    : n_threads_(options.n_threads > 0 ? options.n_threads
                                       : std::max(1, static_cast<int>(std::thread::hardware_concurrency()))) {}

Tensor ReferenceBackend::alloc(TensorType type, std::array<int64_t, 4> ne) {
  Tensor t;
  t.type = type;
  t.ne = ne;
  t.n_bytes = static_cast<uint64_t>(type_bytes(type, t.n_elems()));
  // Zeroed so that rows nobody wrote yet read as zeros rather than garbage.
  t.owner = std::shared_ptr<void>(std::calloc(std::max<uint64_t>(t.n_bytes, 1), 1), std::free);
  if (!t.owner) {
    throw_error(ErrorKind::kResource, "cpu-ref: cannot allocate " + std::to_string(t.n_bytes) + " bytes");
  }
  t.data = t.owner.get();
  return t;
}

Tensor ReferenceBackend::load_weight(TensorType type, std::array<int64_t, 4> ne, const void* bytes) {
  if (is_upg_type(type)) return host_upg_weight(type, ne, bytes);
  if (!type_info(type).dequantizable) {
    throw_error(ErrorKind::kUnsupported,
                "cpu-ref: no dequantization for tensor type " + std::string(type_name(type)));
  }
  Tensor t;
  t.type = type;
  t.ne = ne;
  t.n_bytes = static_cast<uint64_t>(type_bytes(type, t.n_elems()));
  t.data = const_cast<void*>(bytes);  // read-only by contract: ops never write to weights
  return t;
}

void ReferenceBackend::write(Tensor& dst, const void* src, uint64_t n_bytes, uint64_t offset) {
  PDVM_CHECK(offset + n_bytes <= dst.n_bytes);
  std::memcpy(static_cast<uint8_t*>(dst.data) + offset, src, n_bytes);
}

void ReferenceBackend::read(const Tensor& src, void* dst, uint64_t n_bytes, uint64_t offset) {
  PDVM_CHECK(offset + n_bytes <= src.n_bytes);
  std::memcpy(dst, static_cast<const uint8_t*>(src.data) + offset, n_bytes);
}

void ReferenceBackend::get_rows(const Tensor& table, const Tensor& ids, Tensor& out) {
  const int64_t n_tokens = ids.ne[0];
  PDVM_CHECK(out.ne[0] == table.ne[0] && out.ne[1] == n_tokens);
  const int32_t* id = i32_data(ids);
  for (int64_t t = 0; t < n_tokens; ++t) {
    PDVM_CHECK_MSG(id[t] >= 0 && id[t] < table.ne[1], "row id " + std::to_string(id[t]));
    load_row(table, id[t], f32_row(out, t));
  }
}

void ReferenceBackend::rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) {
  const int64_t width = x.ne[0];
  PDVM_CHECK(weight.ne[0] == width && out.ne[0] == width && out.ne[1] == x.ne[1]);
  std::vector<float> w(width);
  load_row(weight, 0, w.data());
  for (int64_t t = 0; t < x.ne[1]; ++t) {
    const float* in = f32_row(x, t);
    const double mean_square = dot(in, in, width) / static_cast<double>(width);
    const float scale = static_cast<float>(1.0 / std::sqrt(mean_square + eps));
    float* o = f32_row(out, t);
    for (int64_t i = 0; i < width; ++i) o[i] = in[i] * scale * w[i];
  }
}

void ReferenceBackend::matmul(const Tensor& w, const Tensor& x, Tensor& out) {
  const int64_t k = w.ne[0], n = w.ne[1], n_tokens = x.ne[1];
  PDVM_CHECK(x.ne[0] == k && out.ne[0] == n && out.ne[1] == n_tokens);
  PDVM_CHECK(x.type == TensorType::kF32 && out.type == TensorType::kF32);
  parallel_for(n_threads_, n, [&](int64_t begin, int64_t end) {
    std::vector<float> row(k);
    for (int64_t j = begin; j < end; ++j) {
      load_row(w, j, row.data());
      for (int64_t t = 0; t < n_tokens; ++t) {
        f32_row(out, t)[j] = static_cast<float>(dot(row.data(), f32_row(x, t), k));
      }
    }
  });
}

void ReferenceBackend::rope(Tensor& x, const Tensor& positions, int n_heads, int head_dim,
                            const RopeConfig& config) {
  PDVM_CHECK(x.ne[0] == static_cast<int64_t>(n_heads) * head_dim);
  PDVM_CHECK(config.n_rot > 0 && config.n_rot % 2 == 0 && config.n_rot <= head_dim);
  const int n_pairs = config.n_rot / 2;
  // Pair i turns at angle pos * freq_base^(-2i/n_rot), divided by the optional factor.
  std::vector<double> inv_freq(n_pairs);
  for (int i = 0; i < n_pairs; ++i) {
    inv_freq[i] = std::pow(static_cast<double>(config.freq_base), -2.0 * i / config.n_rot);
    if (config.freq_factors) {
      PDVM_CHECK(config.freq_factors->n_elems() >= n_pairs);
      inv_freq[i] /= f32_row(*config.freq_factors, 0)[i];
    }
  }
  const int32_t* pos = i32_data(positions);
  for (int64_t t = 0; t < x.ne[1]; ++t) {
    float* row = f32_row(x, t);
    for (int h = 0; h < n_heads; ++h) {
      float* head = row + static_cast<int64_t>(h) * head_dim;
      for (int i = 0; i < n_pairs; ++i) {
        const double angle = pos[t] * inv_freq[i];
        const float c = static_cast<float>(std::cos(angle)), s = static_cast<float>(std::sin(angle));
        const float a = head[2 * i], b = head[2 * i + 1];
        head[2 * i] = a * c - b * s;
        head[2 * i + 1] = a * s + b * c;
      }
    }
  }
}

void ReferenceBackend::kv_store(Tensor& k_cache, Tensor& v_cache, const Tensor& k, const Tensor& v,
                                const Tensor& positions) {
  PDVM_CHECK(k.ne[0] == k_cache.ne[0] && v.ne[0] == v_cache.ne[0] && k.ne[1] == v.ne[1]);
  const int32_t* pos = i32_data(positions);
  for (int64_t t = 0; t < k.ne[1]; ++t) {
    PDVM_CHECK(pos[t] >= 0 && pos[t] < k_cache.ne[1] && pos[t] < v_cache.ne[1]);
    store_row(k_cache, pos[t], f32_row(k, t));
    store_row(v_cache, pos[t], f32_row(v, t));
  }
}

void ReferenceBackend::attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                 const Tensor& positions, const AttentionConfig& config,
                                 Tensor& out) {
  const int n_head = config.n_head, n_head_kv = config.n_head_kv, head_dim = config.head_dim;
  PDVM_CHECK(n_head > 0 && n_head_kv > 0 && n_head % n_head_kv == 0);
  PDVM_CHECK(q.ne[0] == static_cast<int64_t>(n_head) * head_dim && out.ne[0] == q.ne[0]);
  PDVM_CHECK(k_cache.ne[0] == static_cast<int64_t>(n_head_kv) * head_dim && v_cache.ne[0] == k_cache.ne[0]);
  const int group = n_head / n_head_kv;  // query heads sharing one K/V head
  const int32_t* pos = i32_data(positions);
  std::vector<float> k_row(k_cache.ne[0]), v_row(v_cache.ne[0]);
  for (int64_t t = 0; t < q.ne[1]; ++t) {
    const int64_t n_keys = static_cast<int64_t>(pos[t]) + 1;  // causal: rows 0..pos[t]
    PDVM_CHECK(pos[t] >= 0 && n_keys <= k_cache.ne[1]);
    const float* q_row = f32_row(q, t);
    std::vector<float> scores(static_cast<size_t>(n_head * n_keys));
    for (int64_t r = 0; r < n_keys; ++r) {
      load_row(k_cache, r, k_row.data());
      for (int h = 0; h < n_head; ++h) {
        const float* key = k_row.data() + static_cast<int64_t>(h / group) * head_dim;
        scores[h * n_keys + r] =
            static_cast<float>(dot(q_row + static_cast<int64_t>(h) * head_dim, key, head_dim)) * config.scale;
      }
    }
    std::vector<double> denominators(n_head);
    for (int h = 0; h < n_head; ++h) {
      float* s = scores.data() + h * n_keys;
      const float max_score = *std::max_element(s, s + n_keys);
      double sum = 0.0;
      for (int64_t r = 0; r < n_keys; ++r) {
        s[r] = std::exp(s[r] - max_score);
        sum += s[r];
      }
      denominators[h] = sum;
    }
    std::vector<double> acc(q.ne[0], 0.0);
    for (int64_t r = 0; r < n_keys; ++r) {
      load_row(v_cache, r, v_row.data());
      for (int h = 0; h < n_head; ++h) {
        const float weight = scores[h * n_keys + r];
        const float* value = v_row.data() + static_cast<int64_t>(h / group) * head_dim;
        double* a = acc.data() + static_cast<int64_t>(h) * head_dim;
        for (int d = 0; d < head_dim; ++d) a[d] += static_cast<double>(weight) * value[d];
      }
    }
    float* o = f32_row(out, t);
    for (int h = 0; h < n_head; ++h) {
      for (int d = 0; d < head_dim; ++d) {
        const int64_t i = static_cast<int64_t>(h) * head_dim + d;
        o[i] = static_cast<float>(acc[i] / denominators[h]);
      }
    }
  }
}

void ReferenceBackend::swiglu(const Tensor& gate, const Tensor& up, Tensor& out) {
  PDVM_CHECK(gate.n_elems() == up.n_elems() && out.n_elems() == gate.n_elems());
  const float* g = f32_row(gate, 0);
  const float* u = f32_row(up, 0);
  float* o = f32_row(out, 0);
  for (int64_t i = 0; i < gate.n_elems(); ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void ReferenceBackend::add(const Tensor& a, const Tensor& b, Tensor& out) {
  PDVM_CHECK(a.n_elems() == b.n_elems() && out.n_elems() == a.n_elems());
  const float* x = f32_row(a, 0);
  const float* y = f32_row(b, 0);
  float* o = f32_row(out, 0);
  for (int64_t i = 0; i < a.n_elems(); ++i) o[i] = x[i] + y[i];
}

void ReferenceBackend::argmax(const Tensor& logits, Tensor& ids) {
  PDVM_CHECK(ids.type == TensorType::kI32 && ids.ne[0] >= logits.ne[1]);
  auto* id = static_cast<int32_t*>(ids.data);
  for (int64_t t = 0; t < logits.ne[1]; ++t) {
    id[t] = finite_argmax(f32_row(logits, t), static_cast<size_t>(logits.ne[0]));
  }
}

namespace {

std::unique_ptr<Backend> make_reference_backend(const BackendOptions& options) {
  return std::make_unique<ReferenceBackend>(options);
}

}  // namespace

// "cpu" is the fast backend (src/cpu/fast_backend.cpp).
PDVM_REGISTER_BACKEND("reference", "CPU reference (same as cpu-ref)", make_reference_backend);
PDVM_REGISTER_BACKEND("cpu-ref", "CPU reference: plain fp32, dequantizes weight rows on the fly",
                      make_reference_backend);

}  // namespace pdvm
