// Greedy tokens of two computations that are not bit-identical (another backend, a tensor-parallel
// split, another summation order): equal, up to a near-tie of the reference's logits.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "pdvm/engine.h"

namespace pdvm::test {

// `got` (the greedy tokens of the computation under test) must be `want` (the reference's from
// the same prompt), except that they may part at a step where the reference's token leads the
// other one by at most `lead_bound` of that step's largest |logit| (set it to twice the logits
// tolerance of the two: each may move a logit by that much). From there on they are different
// sequences and the comparison ends. The reference session replays `want` up to that step.
inline void expect_same_greedy_up_to_a_near_tie(Session& reference, std::span<const int32_t> prompt,
                                                const std::vector<int32_t>& got,
                                                const std::vector<int32_t>& want, float lead_bound,
                                                const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t step = 0;
  while (step < want.size() && got[step] == want[step]) ++step;
  if (step == want.size()) return;
  reference.reset();
  std::span<const float> span = reference.prefill(prompt);
  for (size_t i = 0; i < step; ++i) span = reference.decode(want[i]);
  const std::vector<float> logits(span.begin(), span.end());
  float largest = 0.0f;
  for (float v : logits) largest = std::max(largest, std::fabs(v));
  const float lead = logits[static_cast<size_t>(want[step])] - logits[static_cast<size_t>(got[step])];
  EXPECT_LE(lead, lead_bound * largest) << what << ": greedy tokens part at step " << step << " of "
                                        << want.size() << " where the reference's token " << want[step]
                                        << " leads " << got[step] << " by " << lead / largest
                                        << " of the largest logit (near-tie bound " << lead_bound << ")";
  std::printf("%s: greedy tokens part at step %zu of %zu at a near-tie (lead %.1e of the largest logit)\n",
              what.c_str(), step, want.size(), lead / largest);
}

}  // namespace pdvm::test
