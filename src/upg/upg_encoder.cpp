// UPG encoder: per row, an importance-weighted Lloyd-Max fit of the row's table alternating
// with a least-squares fit of the block scales, started from a fixed non-linear table; the fit
// is kept only when it beats that fixed table. Outliers are the entries with the largest
// weighted error, excluded from a second fit and stored as exact f16 corrections.
#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "pdvm/error.h"
#include "pdvm/upg.h"
#include "util/parallel_rows.h"

namespace pdvm {
namespace {

// Starting tables (int8, ascending): the 4-bit one is the non-linear IQ4_NL grid, the 3-bit one
// the 8-level Lloyd-Max quantizer of a unit normal (+-0.245, 0.756, 1.344, 2.152) scaled to 127.
constexpr std::array<int, 16> kTable4 = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
constexpr std::array<int, 8> kTable3 = {-127, -79, -45, -14, 14, 45, 79, 127};
constexpr int kRefineRounds = 4;

// The work state of one row: float table, float block scales, codes.
struct RowFit {
  std::vector<float> table;   // ascending
  std::vector<float> sigma;   // per block
  std::vector<uint8_t> code;  // per element
};

struct RowProblem {
  const float* w;
  const float* h;  // importance, k values
  int64_t k;
  int64_t block;
};

uint8_t nearest(const std::vector<float>& table, float u) {
  // Table is ascending: the first midpoint above u ends the search.
  size_t i = 0;
  while (i + 1 < table.size() && u > 0.5f * (table[i] + table[i + 1])) ++i;
  return static_cast<uint8_t>(i);
}

// Codes of block b for scale sigma (0 maps every element to the entry nearest 0).
void assign_block(const RowProblem& p, RowFit& fit, int64_t b) {
  const float sigma = fit.sigma[b];
  const float inv = sigma != 0.0f ? 1.0f / sigma : 0.0f;
  for (int64_t j = b * p.block; j < (b + 1) * p.block; ++j) fit.code[j] = nearest(fit.table, p.w[j] * inv);
}

// Least-squares block scale for the current codes; keeps the old one when the block has no weight.
void refit_block_scale(const RowProblem& p, RowFit& fit, int64_t b) {
  double num = 0.0, den = 0.0;
  for (int64_t j = b * p.block; j < (b + 1) * p.block; ++j) {
    const double l = fit.table[fit.code[j]];
    num += p.h[j] * p.w[j] * l;
    den += p.h[j] * l * l;
  }
  if (den > 0.0) fit.sigma[b] = static_cast<float>(num / den);
}

double weighted_error(const RowProblem& p, const RowFit& fit) {
  double e = 0.0;
  for (int64_t j = 0; j < p.k; ++j) {
    const double d = p.w[j] - static_cast<double>(fit.sigma[j / p.block]) * fit.table[fit.code[j]];
    e += p.h[j] * d * d;
  }
  return e;
}

// Best block scale among a grid of candidates around amax / table extreme, both signs.
void search_block_scale(const RowProblem& p, RowFit& fit, int64_t b) {
  float amax = 0.0f;
  for (int64_t j = b * p.block; j < (b + 1) * p.block; ++j) amax = std::max(amax, std::fabs(p.w[j]));
  fit.sigma[b] = 0.0f;
  assign_block(p, fit, b);
  if (amax == 0.0f) return;
  double best = std::numeric_limits<double>::infinity();
  float best_sigma = 0.0f;
  for (int sign = -1; sign <= 1; sign += 2) {
    for (int t = -8; t <= 8; ++t) {
      fit.sigma[b] = sign * amax / (1.0f + 0.025f * static_cast<float>(t));
      assign_block(p, fit, b);
      refit_block_scale(p, fit, b);
      double e = 0.0;
      for (int64_t j = b * p.block; j < (b + 1) * p.block; ++j) {
        const double d = p.w[j] - static_cast<double>(fit.sigma[b]) * fit.table[fit.code[j]];
        e += p.h[j] * d * d;
      }
      if (e < best) {
        best = e;
        best_sigma = fit.sigma[b];
      }
    }
  }
  fit.sigma[b] = best_sigma;
  assign_block(p, fit, b);
}

// Weighted Lloyd step for the table with codes and scales fixed; empty levels keep their value.
void refit_table(const RowProblem& p, RowFit& fit) {
  std::vector<double> num(fit.table.size(), 0.0), den(fit.table.size(), 0.0);
  for (int64_t j = 0; j < p.k; ++j) {
    const double s = fit.sigma[j / p.block];
    num[fit.code[j]] += p.h[j] * s * p.w[j];
    den[fit.code[j]] += p.h[j] * s * s;
  }
  for (size_t l = 0; l < fit.table.size(); ++l) {
    if (den[l] > 0.0) fit.table[l] = static_cast<float>(num[l] / den[l]);
  }
  std::sort(fit.table.begin(), fit.table.end());
  // Keep max |table| = 1 so the int8 rounding later has the full range.
  float m = 0.0f;
  for (float v : fit.table) m = std::max(m, std::fabs(v));
  if (m == 0.0f) return;
  for (float& v : fit.table) v /= m;
  for (float& s : fit.sigma) s *= m;
}

// The stored form of a fit: int8 table and block scales, row scale, and the codes re-assigned
// for the rounded values, with the row scale refitted by least squares.
struct RowResult {
  std::vector<int8_t> lut, bscale;
  std::vector<uint8_t> code;
  float rscale = 0.0f;
  double error = 0.0;
};

RowResult finalize(const RowProblem& p, RowFit fit) {
  RowResult r;
  const int64_t n_blocks = p.k / p.block;
  r.lut.resize(fit.table.size());
  for (size_t l = 0; l < fit.table.size(); ++l) r.lut[l] = static_cast<int8_t>(std::lrint(std::clamp(fit.table[l], -1.0f, 1.0f) * 127.0f));
  float smax = 0.0f;
  for (float s : fit.sigma) smax = std::max(smax, std::fabs(s));
  r.bscale.assign(static_cast<size_t>(n_blocks), 0);
  r.code.assign(static_cast<size_t>(p.k), 0);
  std::vector<float> int_table(fit.table.size());
  for (size_t l = 0; l < fit.table.size(); ++l) int_table[l] = r.lut[l];
  std::sort(int_table.begin(), int_table.end());
  std::sort(r.lut.begin(), r.lut.end());
  if (smax == 0.0f) {
    fit.table = int_table;
    for (int64_t b = 0; b < n_blocks; ++b) {
      fit.sigma[b] = 0.0f;
      assign_block(p, fit, b);
    }
    r.code = fit.code;
    r.error = weighted_error(p, fit);
    return r;
  }
  const float d = smax / 127.0f;  // value = d * bscale * table, table in [-1, 1]
  fit.table = int_table;           // now in int8 units: value = (d / 127) * bscale * lut
  for (int64_t b = 0; b < n_blocks; ++b) {
    r.bscale[b] = static_cast<int8_t>(std::clamp<long>(std::lrint(fit.sigma[b] / d), -127, 127));
    fit.sigma[b] = d / 127.0f * r.bscale[b];
    assign_block(p, fit, b);
  }
  double num = 0.0, den = 0.0;
  for (int64_t j = 0; j < p.k; ++j) {
    const double u = static_cast<double>(r.bscale[j / p.block]) * int_table[fit.code[j]];
    num += p.h[j] * p.w[j] * u;
    den += p.h[j] * u * u;
  }
  r.rscale = den > 0.0 ? static_cast<float>(num / den) : d / 127.0f;
  for (int64_t b = 0; b < n_blocks; ++b) fit.sigma[b] = r.rscale * r.bscale[b];
  r.code = fit.code;
  r.error = weighted_error(p, fit);
  return r;
}

RowResult encode_row(const RowProblem& p, int bits) {
  const int64_t n_blocks = p.k / p.block;
  RowFit fit;
  if (bits == 4) {
    for (int v : kTable4) fit.table.push_back(static_cast<float>(v) / 127.0f);
  } else {
    for (int v : kTable3) fit.table.push_back(static_cast<float>(v) / 127.0f);
  }
  fit.sigma.assign(static_cast<size_t>(n_blocks), 0.0f);
  fit.code.assign(static_cast<size_t>(p.k), 0);
  for (int64_t b = 0; b < n_blocks; ++b) search_block_scale(p, fit, b);
  RowResult best = finalize(p, fit);  // the fixed-table baseline
  for (int round = 0; round < kRefineRounds; ++round) {
    refit_table(p, fit);
    for (int64_t b = 0; b < n_blocks; ++b) {
      assign_block(p, fit, b);
      refit_block_scale(p, fit, b);
      assign_block(p, fit, b);
    }
    RowResult candidate = finalize(p, fit);
    if (candidate.error < best.error) best = std::move(candidate);
  }
  return best;
}

void pack_codes(const std::vector<uint8_t>& code, int bits, uint8_t* out) {
  const int64_t k = static_cast<int64_t>(code.size());
  const int64_t group_bytes = kUpgGroup * bits / 8;
  std::fill(out, out + k / kUpgGroup * group_bytes, uint8_t{0});
  for (int64_t c = 0; c < k; ++c) {
    uint8_t* g = out + c / kUpgGroup * group_bytes;
    const int64_t e = c % kUpgGroup;
    if (bits == 4) {
      g[e % 16] |= static_cast<uint8_t>(code[c] << (e < 16 ? 0 : 4));
    } else {
      g[e % 8] |= static_cast<uint8_t>((code[c] & 3) << (2 * (e / 8)));
      g[8 + e / 8] |= static_cast<uint8_t>((code[c] >> 2) << (e % 8));
    }
  }
}

}  // namespace

RowError row_error(const float* w, const float* v, const float* importance, int64_t k) {
  RowError e;
  for (int64_t j = 0; j < k; ++j) {
    const double d = static_cast<double>(w[j]) - v[j];
    e.plain += d * d;
    e.weighted += (importance ? importance[j] : 1.0) * d * d;
  }
  return e;
}

UpgEncoded upg_encode(const float* w, int64_t k, int64_t n, const float* importance,
                      const UpgEncodeOptions& options, int threads) {
  if (options.bits != 4 && options.bits != 3) {
    throw_error(ErrorKind::kInvalidArgument, "UPG bits must be 4 or 3, not " + std::to_string(options.bits));
  }
  if (options.block != 32 && options.block != 64 && options.block != 128) {
    throw_error(ErrorKind::kInvalidArgument, "UPG block must be 32, 64 or 128, not " + std::to_string(options.block));
  }
  if (k <= 0 || k % options.block != 0) {
    throw_error(ErrorKind::kInvalidArgument, "UPG row length " + std::to_string(k) +
                                                 " is not a multiple of the block size " + std::to_string(options.block));
  }
  if (!(options.outlier_fraction >= 0.0 && options.outlier_fraction < 0.5)) {
    throw_error(ErrorKind::kInvalidArgument, "UPG outlier fraction must be in [0, 0.5)");
  }
  UpgEncoded e;
  e.bits = options.bits;
  e.k = k;
  e.n = n;
  e.block = options.block;
  const int64_t levels = int64_t{1} << options.bits, n_blocks = k / options.block;
  const int64_t code_bytes = k * options.bits / 8;
  const int64_t cap = static_cast<int64_t>(std::ceil(options.outlier_fraction * static_cast<double>(k)));
  e.codes.resize(static_cast<size_t>(n * code_bytes));
  e.bscale.resize(static_cast<size_t>(n * n_blocks));
  e.lut.resize(static_cast<size_t>(n * levels));
  e.rscale.resize(static_cast<size_t>(n));
  std::vector<std::vector<std::pair<uint32_t, uint16_t>>> outliers(static_cast<size_t>(cap > 0 ? n : 0));
  std::vector<float> ones(importance ? 0 : static_cast<size_t>(k), 1.0f);
  const float* h = importance ? importance : ones.data();

  parallel_rows(n, threads, [&](int64_t begin, int64_t end) {
    std::vector<float> row_h(h, h + k), rec(static_cast<size_t>(k));
    for (int64_t r = begin; r < end; ++r) {
      const float* row = w + r * k;
      RowProblem p{row, h, k, options.block};
      RowResult result = encode_row(p, options.bits);
      if (cap > 0) {
        // Largest weighted errors first (ties: lower column), then refit without them.
        const auto value = [&](const RowResult& res, int64_t j) {
          return res.rscale * static_cast<float>(res.bscale[j / options.block] * res.lut[res.code[j]]);
        };
        std::vector<int64_t> order(static_cast<size_t>(k));
        std::iota(order.begin(), order.end(), int64_t{0});
        std::vector<double> err(static_cast<size_t>(k));
        for (int64_t j = 0; j < k; ++j) {
          const double d = row[j] - value(result, j);
          err[j] = h[j] * d * d;
        }
        std::partial_sort(order.begin(), order.begin() + cap, order.end(),
                          [&](int64_t a, int64_t b) { return err[a] != err[b] ? err[a] > err[b] : a < b; });
        std::copy(h, h + k, row_h.begin());
        for (int64_t i = 0; i < cap; ++i) row_h[order[i]] = 0.0f;
        RowProblem without{row, row_h.data(), k, options.block};
        result = encode_row(without, options.bits);
        std::sort(order.begin(), order.begin() + cap);
        for (int64_t i = 0; i < cap; ++i) {
          const int64_t j = order[i];
          outliers[r].emplace_back(static_cast<uint32_t>(j), fp32_to_fp16(row[j] - value(result, j)));
        }
      }
      pack_codes(result.code, options.bits, e.codes.data() + r * code_bytes);
      std::copy(result.bscale.begin(), result.bscale.end(), e.bscale.begin() + r * n_blocks);
      std::copy(result.lut.begin(), result.lut.end(), e.lut.begin() + r * levels);
      e.rscale[r] = result.rscale;
    }
  });
  if (cap > 0) {
    e.sp_rowptr.push_back(0);
    for (const auto& row : outliers) {
      for (const auto& [col, val] : row) {
        if (k <= 65536) {
          e.sp_idx16.push_back(static_cast<uint16_t>(col));
        } else {
          e.sp_idx32.push_back(col);
        }
        e.sp_val.push_back(val);
      }
      e.sp_rowptr.push_back(static_cast<int32_t>(e.sp_val.size()));
    }
  }
  return e;
}

}  // namespace pdvm
