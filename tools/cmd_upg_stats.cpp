// `pdvm upg-stats`: bits per weight and weight-space error of UPG against the GGML 4-bit
// formats, on a model's (dequantized) matrices or on synthetic heavy-tailed weights.
#include <cmath>
#include <limits>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cli_common.h"
#include "command.h"
#include "pdvm/error.h"
#include "pdvm/gguf.h"
#include "pdvm/upg.h"
#include "upg/upg_calibration.h"
#include "upg/upg_convert.h"
#include "util/parallel_rows.h"

namespace pdvm::cli {
namespace {

struct Options {
  std::string model;
  bool synthetic = false;
  std::string calibration = "default";
  int64_t rows_per_matrix = 64;
  uint64_t seed = 1;
  int threads = default_thread_count();
};

// One format's accumulated error over every sampled row.
struct Tally {
  std::string name;
  double err = 0, werr = 0, ref = 0, wref = 0, bits = 0;
  int64_t elems = 0;
  void add(const float* w, const float* v, const float* h, int64_t k, double row_bits) {
    const RowError e = row_error(w, v, h, k);
    const RowError r = row_error(w, std::vector<float>(static_cast<size_t>(k), 0.0f).data(), h, k);
    err += e.plain;
    werr += e.weighted;
    ref += r.plain;
    wref += r.weighted;
    bits += row_bits;
    elems += k;
  }
};

// A sampled matrix: rows of k floats with the importance of its columns.
struct Sample {
  std::string name;
  int64_t k = 0, n = 0;
  std::vector<float> w, h;
};

void measure(const Sample& s, std::vector<Tally>& tallies, int threads) {
  std::vector<float> out(static_cast<size_t>(s.k));
  const std::vector<TensorType> ggml = {TensorType::kQ4_0, TensorType::kQ4_1, TensorType::kQ4_K};
  for (size_t f = 0; f < ggml.size(); ++f) {
    const int64_t block = type_info(ggml[f]).block_elems;
    if (s.k % block != 0) continue;  // Q4_K needs rows of whole 256-element super-blocks
    std::vector<uint8_t> q(static_cast<size_t>(type_bytes(ggml[f], s.k)));
    for (int64_t r = 0; r < s.n; ++r) {
      const float* row = s.w.data() + r * s.k;
      quantize_row(ggml[f], row, q.data(), s.k);
      dequantize_row(ggml[f], q.data(), out.data(), s.k);
      tallies[f].add(row, out.data(), s.h.data(), s.k, 8.0 * static_cast<double>(q.size()));
    }
  }
  const UpgEncodeOptions upg[] = {{4, 32, 0.0}, {4, 64, 0.0}, {3, upg_block_for(s.k), 0.0035}};
  for (size_t u = 0; u < std::size(upg); ++u) {
    if (s.k % upg[u].block != 0) continue;
    const UpgEncoded e = upg_encode(s.w.data(), s.k, s.n, s.h.data(), upg[u], threads);
    const UpgMatrix m = e.view();
    const double row_bits = 8.0 * static_cast<double>(m.n_bytes()) / static_cast<double>(s.n);
    for (int64_t r = 0; r < s.n; ++r) {
      upg_dequantize_row(m, r, out.data());
      tallies[ggml.size() + u].add(s.w.data() + r * s.k, out.data(), s.h.data(), s.k, row_bits);
    }
  }
}

std::vector<Sample> model_samples(const Options& opt) {
  const GgufFile file = GgufFile::open(opt.model);
  Importance importance;
  if (opt.calibration != "none") {
    const std::string text = opt.calibration == "default" ? std::string(builtin_calibration_text())
                                                          : read_calibration_file(opt.calibration);
    importance = measure_importance(file, text, 256, opt.threads);
  }
  std::vector<Sample> samples;
  for (const GgufTensor& t : file.tensors()) {
    if (t.shape.size() != 2 || t.shape[0] % 32 != 0) continue;
    Sample& s = samples.emplace_back();
    s.name = t.name;
    s.k = t.shape[0];
    s.n = std::min(opt.rows_per_matrix, t.shape[1]);
    s.w.resize(static_cast<size_t>(s.k * s.n));
    const int64_t row_bytes = type_bytes(t.type, s.k);
    for (int64_t i = 0; i < s.n; ++i) {
      const int64_t r = i * t.shape[1] / s.n;  // spread over the matrix
      dequantize_row(t.type, t.data + r * row_bytes, s.w.data() + i * s.k, s.k);
    }
    const auto h = importance.columns.find(t.name);
    s.h = h != importance.columns.end() ? h->second : std::vector<float>(static_cast<size_t>(s.k), 1.0f);
  }
  return samples;
}

// Heavy-tailed rows (Student-t, 4 degrees of freedom) with per-row spread, a few columns 8x
// larger, and importance that is log-normal with a few hot columns, as in real activations.
std::vector<Sample> synthetic_samples(const Options& opt) {
  std::mt19937_64 rng(opt.seed);
  std::vector<Sample> samples;
  for (int64_t k : {1024, 4096}) {
    Sample& s = samples.emplace_back();
    s.name = "synthetic k=" + std::to_string(k);
    s.k = k;
    s.n = opt.rows_per_matrix;
    std::student_t_distribution<float> t4(4.0f);
    std::lognormal_distribution<float> spread(0.0f, 0.3f), hot(0.0f, 1.0f);
    std::uniform_real_distribution<float> u01(0.0f, 1.0f);
    std::vector<float> column_gain(static_cast<size_t>(k), 1.0f);
    s.h.resize(static_cast<size_t>(k));
    for (int64_t j = 0; j < k; ++j) {
      const bool outlier = u01(rng) < 0.005f;
      column_gain[j] = outlier ? 8.0f : 1.0f;
      s.h[j] = hot(rng) * (u01(rng) < 0.01f ? 50.0f : 1.0f);
    }
    for (int64_t r = 0; r < s.n; ++r) {
      const float row_scale = 0.02f * spread(rng);
      for (int64_t j = 0; j < k; ++j) s.w.push_back(row_scale * column_gain[j] * t4(rng));
    }
  }
  return samples;
}

int run(const Options& opt) {
  if (!opt.synthetic && opt.model.empty()) throw Error(ErrorKind::kInvalidArgument, "give a model or --synthetic");
  const std::vector<Sample> samples = opt.synthetic ? synthetic_samples(opt) : model_samples(opt);
  std::vector<Tally> tallies = {{"q4_0"}, {"q4_1"}, {"q4_k"}, {"upg4 b32"}, {"upg4 b64"}, {"upg3 +0.35% outliers"}};
  for (const Sample& s : samples) measure(s, tallies, opt.threads);
  std::printf("%s: %zu matrices, up to %lld rows each\n", opt.synthetic ? "synthetic" : opt.model.c_str(),
              samples.size(), static_cast<long long>(opt.rows_per_matrix));
  std::printf("%-22s %9s %12s %14s %10s\n", "format", "bits/w", "rel. RMSE", "rel. wRMSE", "coverage");
  const int64_t all = tallies[0].elems;
  for (const Tally& t : tallies) {
    if (t.elems == 0) continue;
    std::printf("%-22s %9.3f %12.5f %14.5f %9.0f%%\n", t.name.c_str(), t.bits / static_cast<double>(t.elems),
                std::sqrt(t.err / t.ref), std::sqrt(t.werr / t.wref), 100.0 * static_cast<double>(t.elems) / static_cast<double>(all));
  }
  return 0;
}

}  // namespace

PDVM_REGISTER_COMMAND("upg-stats", "UPG vs Q4_0/Q4_1/Q4_K: bits per weight and weight-space error", [](CLI::App& app) {
  auto opt = std::make_shared<Options>();
  app.add_option("model", opt->model, "GGUF model whose matrices are measured");
  app.add_flag("--synthetic", opt->synthetic, "measure synthetic heavy-tailed weights instead");
  app.add_option("--calibration", opt->calibration, "importance: default, none or a text file")->capture_default_str();
  app.add_option("--rows", opt->rows_per_matrix, "rows sampled per matrix")->capture_default_str()->check(integer_in(1, std::numeric_limits<int32_t>::max()));
  app.add_option("--seed", opt->seed, "synthetic weights' seed")->capture_default_str();
  app.add_option("--threads", opt->threads, "worker threads")->capture_default_str()->check(integer_in(1, kMaxThreads));
  return [opt] { return run(*opt); };
});

}  // namespace pdvm::cli
