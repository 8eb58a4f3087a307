#include "pdvm/logits.h"

#include <cmath>
#include <limits>

#include "pdvm/error.h"

namespace pdvm {

int32_t finite_argmax(const float* logits, size_t n) {
  float best = -std::numeric_limits<float>::infinity();
  int32_t best_index = -1;
  for (size_t i = 0; i < n; ++i) {
    if (logits[i] > best) {  // false for NaN
      best = logits[i];
      best_index = static_cast<int32_t>(i);
    }
  }
  return std::isfinite(best) ? best_index : -1;
}

void throw_non_finite_logits(const std::string& where) {
  throw_error(ErrorKind::kNumeric, "the model produced non-finite logits (NaN or infinity) " + where +
                                       ": its weights hold NaN/inf values or its activations overflow");
}

}  // namespace pdvm
