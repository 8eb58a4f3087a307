#include "pdvm/engine.h"
#include "pdvm/error.h"
#include "pdvm/perplexity.h"

namespace pdvm {

void evaluate_window(Session& session, std::span<const int32_t> tokens, const PerplexityWindows& windows,
                     int64_t chunk,
                     const std::function<void(std::span<const float>, std::span<const int32_t>)>& use) {
  PDVM_CHECK(chunk >= 0 && chunk < windows.n_chunks);
  const auto n_ctx = static_cast<size_t>(windows.n_ctx);
  PDVM_CHECK((static_cast<size_t>(chunk) + 1) * n_ctx <= tokens.size());
  std::vector<int32_t> window(tokens.begin() + static_cast<ptrdiff_t>(static_cast<size_t>(chunk) * n_ctx),
                              tokens.begin() + static_cast<ptrdiff_t>((static_cast<size_t>(chunk) + 1) * n_ctx));
  if (windows.bos >= 0) window.front() = windows.bos;
  session.reset();
  const std::span<const float> logits = session.prefill_all(window);
  const auto n_vocab = static_cast<size_t>(session.n_vocab());
  PDVM_CHECK(logits.size() == n_ctx * n_vocab);
  const auto first = static_cast<size_t>(windows.first_scored());
  const auto scored = static_cast<size_t>(windows.scored_per_chunk());
  use(logits.subspan(first * n_vocab, scored * n_vocab), std::span<const int32_t>(window).subspan(first + 1, scored));
}

}  // namespace pdvm
