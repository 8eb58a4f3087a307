// Perplexity and KL divergence between two runs of a model (e.g. two quantizations).
//
// Windows as llama.cpp's perplexity tool makes them: the text's tokens are cut into
// non-overlapping windows of n_ctx tokens, each evaluated from an empty cache (its first token
// replaced by BOS when the model adds one), and only the second half is scored: the
// predictions at positions n_ctx/2 .. n_ctx-2 of the tokens after them, so every scored token
// sees at least n_ctx/2 tokens of context.
//
// Log-probability file (--save-logits), little-endian:
//   header   "PDVMLP01", u32 n_vocab, u32 n_ctx
//   records  one per scored token, in order: i32 target token, f32 its exact log-probability,
//            f32 max log-probability `hi`, f32 `step`, then n_vocab u16 `q`: the log-probability
//            of token i is hi - q[i] * step (the range below hi is capped at kLogProbRange).
// 16 + 2 * n_vocab bytes a token. KL divergence compares such rows, the current run's
// quantized the same way, so that a run compared with its own file gives exactly 0.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace pdvm {

class Session;

// Mean of a sample with its standard error (negative log-likelihoods, KL divergences).
class MeanEstimate {
 public:
  void add(double value);
  int64_t count() const { return count_; }
  double mean() const;
  double standard_error() const;

 private:
  int64_t count_ = 0;
  double sum_ = 0;
  double sum_sq_ = 0;
};

// Perplexity exp(mean NLL) and its first-order error exp(mean) * stderr(mean).
inline double perplexity(const MeanEstimate& nll) { return std::exp(nll.mean()); }
inline double perplexity_error(const MeanEstimate& nll) { return std::exp(nll.mean()) * nll.standard_error(); }

struct PerplexityWindows {
  int64_t n_ctx = 0;
  int64_t n_chunks = 0;
  int32_t bos = -1;  // replaces each window's first token when >= 0
  int64_t first_scored() const { return n_ctx / 2; }
  int64_t scored_per_chunk() const { return n_ctx - 1 - first_scored(); }
};

// Windows over `n_tokens` tokens: as many as fit, at most max_chunks (-1: no limit).
// Error(kInvalidArgument) when not even one fits or n_ctx < 4.
PerplexityWindows plan_windows(int64_t n_tokens, int64_t n_ctx, int64_t max_chunks, int32_t bos);

// Runs window `chunk` through the session (reset first) and hands over the logits rows of the
// scored positions (scored_per_chunk rows of n_vocab floats) with the tokens they predict.
void evaluate_window(Session& session, std::span<const int32_t> tokens, const PerplexityWindows& windows,
                     int64_t chunk,
                     const std::function<void(std::span<const float> rows, std::span<const int32_t> targets)>& use);

// log softmax(row)[target], in double precision.
double log_softmax_at(std::span<const float> row, int32_t target);

inline constexpr float kLogProbRange = 40.0f;

struct QuantizedLogProbs {
  int32_t target = 0;
  float target_logprob = 0;
  float hi = 0;
  float step = 0;
  std::vector<uint16_t> q;
};
void quantize_logprobs(std::span<const float> logits, int32_t target, QuantizedLogProbs& out);

class LogProbWriter {
 public:
  LogProbWriter(const std::filesystem::path& path, uint32_t n_vocab, uint32_t n_ctx);
  ~LogProbWriter();
  LogProbWriter(const LogProbWriter&) = delete;
  LogProbWriter& operator=(const LogProbWriter&) = delete;
  void add(const QuantizedLogProbs& row);
  void close();  // flushes and checks for write errors (Error(kIo))

 private:
  std::filesystem::path path_;
  std::FILE* file_ = nullptr;
};

class LogProbReader {
 public:
  explicit LogProbReader(const std::filesystem::path& path);
  ~LogProbReader();
  LogProbReader(const LogProbReader&) = delete;
  LogProbReader& operator=(const LogProbReader&) = delete;
  uint32_t n_vocab() const { return n_vocab_; }
  uint32_t n_ctx() const { return n_ctx_; }
  // Error(kFileFormat) when the file ends early.
  void read(QuantizedLogProbs& row);

 private:
  std::filesystem::path path_;
  std::FILE* file_ = nullptr;
  uint32_t n_vocab_ = 0;
  uint32_t n_ctx_ = 0;
  uint64_t rows_read_ = 0;
};

struct TokenDivergence {
  double kl = 0;          // KL(base || current), nats
  bool same_top1 = false;  // both give the highest probability to the same token
};
// Both rows over the same vocabulary and target (Error(kInvalidArgument) otherwise).
TokenDivergence compare_logprobs(const QuantizedLogProbs& base, const QuantizedLogProbs& current);

}  // namespace pdvm
