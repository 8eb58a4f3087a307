#include "pdvm/perplexity.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "pdvm/error.h"
#include "pdvm/logits.h"

namespace pdvm {

void MeanEstimate::add(double value) {
  ++count_;
  sum_ += value;
  sum_sq_ += value * value;
}

double MeanEstimate::mean() const { return count_ ? sum_ / static_cast<double>(count_) : 0.0; }

double MeanEstimate::standard_error() const {
  if (count_ < 2) return 0.0;
  const double n = static_cast<double>(count_);
  const double variance = std::max(0.0, sum_sq_ / n - mean() * mean());
  return std::sqrt(variance / (n - 1));
}

PerplexityWindows plan_windows(int64_t n_tokens, int64_t n_ctx, int64_t max_chunks, int32_t bos) {
  if (n_ctx < 4) throw_error(ErrorKind::kInvalidArgument, fmt::format("--ctx must be at least 4, got {}", n_ctx));
  PerplexityWindows w;
  w.n_ctx = n_ctx;
  w.bos = bos;
  w.n_chunks = n_tokens / n_ctx;
  if (max_chunks >= 0) w.n_chunks = std::min(w.n_chunks, max_chunks);
  if (w.n_chunks == 0) {
    throw_error(ErrorKind::kInvalidArgument,
                fmt::format("the text is {} tokens, fewer than one window of --ctx {}", n_tokens, n_ctx));
  }
  return w;
}

namespace {

// log(sum(exp(row))) in double precision; a NaN or infinity in the row makes it non-finite,
// which is an error rather than a perplexity of NaN.
double log_sum_exp(std::span<const float> row) {
  const float max_value = *std::max_element(row.begin(), row.end());
  double sum = 0;
  for (float v : row) sum += std::exp(static_cast<double>(v) - max_value);
  const double lse = max_value + std::log(sum);
  if (!std::isfinite(lse)) throw_non_finite_logits("while scoring the text");
  return lse;
}

}  // namespace

double log_softmax_at(std::span<const float> row, int32_t target) {
  PDVM_CHECK(target >= 0 && static_cast<size_t>(target) < row.size());
  return static_cast<double>(row[static_cast<size_t>(target)]) - log_sum_exp(row);
}

void quantize_logprobs(std::span<const float> logits, int32_t target, QuantizedLogProbs& out) {
  PDVM_CHECK(target >= 0 && static_cast<size_t>(target) < logits.size());
  const double lse = log_sum_exp(logits);
  const auto [min_it, max_it] = std::minmax_element(logits.begin(), logits.end());
  out.target = target;
  out.target_logprob = static_cast<float>(logits[static_cast<size_t>(target)] - lse);
  out.hi = static_cast<float>(*max_it - lse);
  const double lo = std::max(static_cast<double>(*min_it) - lse, static_cast<double>(out.hi) - kLogProbRange);
  out.step = static_cast<float>((out.hi - lo) / 65535.0);
  out.q.resize(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) {
    const double below = static_cast<double>(out.hi) - (logits[i] - lse);
    const double q = out.step > 0 ? std::round(below / out.step) : 0.0;
    out.q[i] = static_cast<uint16_t>(std::clamp(q, 0.0, 65535.0));
  }
}

LogProbWriter::LogProbWriter(const std::filesystem::path& path, uint32_t n_vocab, uint32_t n_ctx) : path_(path) {
  file_ = std::fopen(path.c_str(), "wb");
  if (!file_) throw_error(ErrorKind::kIo, fmt::format("cannot create {}: {}", path.string(), std::strerror(errno)));
  std::fwrite("PDVMLP01", 1, 8, file_);
  std::fwrite(&n_vocab, sizeof n_vocab, 1, file_);
  std::fwrite(&n_ctx, sizeof n_ctx, 1, file_);
}

LogProbWriter::~LogProbWriter() {
  if (file_) std::fclose(file_);
}

void LogProbWriter::add(const QuantizedLogProbs& row) {
  PDVM_CHECK(file_ != nullptr);
  std::fwrite(&row.target, sizeof row.target, 1, file_);
  std::fwrite(&row.target_logprob, sizeof(float), 1, file_);
  std::fwrite(&row.hi, sizeof(float), 1, file_);
  std::fwrite(&row.step, sizeof(float), 1, file_);
  std::fwrite(row.q.data(), sizeof(uint16_t), row.q.size(), file_);
}

void LogProbWriter::close() {
  if (!file_) return;
  const bool failed = std::ferror(file_) != 0;
  const bool close_failed = std::fclose(file_) != 0;
  file_ = nullptr;
  if (failed || close_failed) throw_error(ErrorKind::kIo, fmt::format("writing {} failed", path_.string()));
}

LogProbReader::LogProbReader(const std::filesystem::path& path) : path_(path) {
  file_ = std::fopen(path.c_str(), "rb");
  if (!file_) throw_error(ErrorKind::kIo, fmt::format("cannot open {}: {}", path.string(), std::strerror(errno)));
  char magic[8];
  if (std::fread(magic, 1, 8, file_) != 8 || std::memcmp(magic, "PDVMLP01", 8) != 0 ||
      std::fread(&n_vocab_, sizeof n_vocab_, 1, file_) != 1 || std::fread(&n_ctx_, sizeof n_ctx_, 1, file_) != 1) {
    throw_error(ErrorKind::kFileFormat,
                fmt::format("{} is not a pdvm log-probability file (made by perplexity --save-logits)", path.string()));
  }
  if (n_vocab_ == 0 || n_vocab_ > (1u << 24)) {
    throw_error(ErrorKind::kFileFormat, fmt::format("{}: implausible vocabulary size {}", path.string(), n_vocab_));
  }
}

LogProbReader::~LogProbReader() {
  if (file_) std::fclose(file_);
}

void LogProbReader::read(QuantizedLogProbs& row) {
  row.q.resize(n_vocab_);
  const bool ok = std::fread(&row.target, sizeof row.target, 1, file_) == 1 &&
                  std::fread(&row.target_logprob, sizeof(float), 1, file_) == 1 &&
                  std::fread(&row.hi, sizeof(float), 1, file_) == 1 &&
                  std::fread(&row.step, sizeof(float), 1, file_) == 1 &&
                  std::fread(row.q.data(), sizeof(uint16_t), n_vocab_, file_) == n_vocab_;
  if (!ok) {
    throw_error(ErrorKind::kFileFormat,
                fmt::format("{} ends after {} tokens: it holds fewer than this run scores", path_.string(), rows_read_));
  }
  if (row.target < 0 || static_cast<uint32_t>(row.target) >= n_vocab_ || !std::isfinite(row.hi) ||
      !std::isfinite(row.step) || row.step < 0) {
    throw_error(ErrorKind::kFileFormat, fmt::format("{}: record {} is corrupt", path_.string(), rows_read_));
  }
  ++rows_read_;
}

namespace {

// Dequantized log-probabilities, renormalized (rounding leaves their sum a hair off 1).
void normalized_logprobs(const QuantizedLogProbs& row, std::vector<double>& out) {
  out.resize(row.q.size());
  double max_value = -INFINITY;
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = static_cast<double>(row.hi) - static_cast<double>(row.q[i]) * row.step;
    max_value = std::max(max_value, out[i]);
  }
  double sum = 0;
  for (double v : out) sum += std::exp(v - max_value);
  const double lse = max_value + std::log(sum);
  for (double& v : out) v -= lse;
}

size_t top1(const QuantizedLogProbs& row) {
  return static_cast<size_t>(std::min_element(row.q.begin(), row.q.end()) - row.q.begin());
}

}  // namespace

TokenDivergence compare_logprobs(const QuantizedLogProbs& base, const QuantizedLogProbs& current) {
  if (base.q.size() != current.q.size()) {
    throw_error(ErrorKind::kInvalidArgument,
                fmt::format("the base run has {} vocabulary entries, this model {}", base.q.size(), current.q.size()));
  }
  if (base.target != current.target) {
    throw_error(ErrorKind::kInvalidArgument,
                "the base log-probabilities were made from other text or another tokenizer (targets differ)");
  }
  thread_local std::vector<double> p, q;
  normalized_logprobs(base, p);
  normalized_logprobs(current, q);
  double kl = 0;
  for (size_t i = 0; i < p.size(); ++i) kl += std::exp(p[i]) * (p[i] - q[i]);
  return {std::max(kl, 0.0), top1(base) == top1(current)};
}

}  // namespace pdvm
