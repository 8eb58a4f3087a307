// Picking the greedy token, and what happens when a model's logits are broken. NaN or infinity
// in the logits means broken weights or an overflow; the engine stops with ErrorKind::kNumeric
// instead of emitting tokens chosen from garbage. Every backend's argmax follows finite_argmax.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace pdvm {

// A logit and its token id (a row's largest logits, ranked where the row lives).
struct LogitCandidate {
  float logit;
  int32_t id;
};

// Index of the largest of the n logits (the first of equal ones), passing over NaNs; -1 when that
// largest logit is not finite (every logit NaN or -inf, or one +inf). C++17, for the CUDA sources.
int32_t finite_argmax(const float* logits, size_t n);

// Throws ErrorKind::kNumeric for logits that are NaN or infinite (an argmax of -1, a log-sum-exp
// that is not finite), naming `where` (e.g. the position).
void throw_non_finite_logits(const std::string& where);

}  // namespace pdvm
