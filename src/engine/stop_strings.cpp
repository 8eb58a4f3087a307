#include <algorithm>
#include <utility>

#include "pdvm/error.h"
#include "pdvm/generator.h"

namespace pdvm {

StopStringFilter::StopStringFilter(std::vector<std::string> stop_strings) : stops_(std::move(stop_strings)) {
  for (const std::string& s : stops_) {
    if (s.empty()) throw_error(ErrorKind::kInvalidArgument, "a stop string must not be empty");
  }
}

std::string StopStringFilter::push(std::string_view text) {
  if (stopped_) return {};
  pending_ += text;
  // The stop string that completes first wins (as it would have, had the text come in byte by
  // byte); among those ending together, the one starting first.
  size_t first = std::string::npos, first_end = std::string::npos;
  for (const std::string& s : stops_) {
    const size_t at = pending_.find(s);
    if (at == std::string::npos) continue;
    if (at + s.size() < first_end || (at + s.size() == first_end && at < first)) {
      first = at;
      first_end = at + s.size();
    }
  }
  if (first != std::string::npos) {
    stopped_ = true;
    std::string released = pending_.substr(0, first);
    pending_.clear();
    return released;
  }
  // Hold back the longest tail that could still grow into a stop string.
  size_t hold = 0;
  for (const std::string& s : stops_) {
    for (size_t len = std::min(s.size() - 1, pending_.size()); len > hold; --len) {
      if (pending_.compare(pending_.size() - len, len, s, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  std::string released = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return released;
}

std::string StopStringFilter::finish() {
  if (stopped_) return {};
  return std::exchange(pending_, {});
}

}  // namespace pdvm
