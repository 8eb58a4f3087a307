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

// Sampler::sample() as a device can run it on a row's top_k largest logits (no repetition
// penalty): top-k, then top-p and min-p on what is left, then the draw at `uniform`, the host
// having computed the float constants so that the device repeats its arithmetic.
struct DeviceDraw {
  int top_k = 0;
  float top_p = 1.0f;                 // >= 1: off
  bool min_p_on = false;
  float log_min_p = 0.0f;             // std::log(min_p)
  float inverse_temperature = 1.0f;  // 1.0f / temperature
  double uniform = 0.0;               // the random stream's draw, in [0, 1)
};

// What a device draw leaves in the token history when it cannot pick: too many logits tie at the
// top for its bound (the host then samples the same row with the same draw).
constexpr int32_t kNotDrawn = -2;

// Index of the largest of the n logits (the first of equal ones), passing over NaNs; -1 when that
// largest logit is not finite (every logit NaN or -inf, or one +inf). C++17, for the CUDA sources.
int32_t finite_argmax(const float* logits, size_t n);

// Throws ErrorKind::kNumeric for logits that are NaN or infinite (an argmax of -1, a log-sum-exp
// that is not finite), naming `where` (e.g. the position).
void throw_non_finite_logits(const std::string& where);

}  // namespace pdvm
