// A one-line progress bar on stderr for long writes; silent when stderr is not a terminal.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

namespace pdvm::cli {

class ProgressBar {
 public:
  explicit ProgressBar(std::string label) : label_(std::move(label)), enabled_(isatty(STDERR_FILENO) == 1) {}
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;
  ~ProgressBar() {
    if (enabled_ && drawn_) std::fputc('\n', stderr);
  }

  void update(uint64_t done, uint64_t total) {
    if (!enabled_ || total == 0 || finished_) return;
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(kWidth * done / total);
    std::fprintf(stderr, "\r%s [%s%s] %3d%% %.2f/%.2f GB", label_.c_str(), std::string(filled, '#').c_str(),
                 std::string(kWidth - filled, ' ').c_str(), static_cast<int>(100 * done / total), done / 1e9,
                 total / 1e9);
    drawn_ = true;
    if (done >= total) {
      std::fputc('\n', stderr);
      drawn_ = false;
      finished_ = true;
    }
    std::fflush(stderr);
  }

 private:
  std::string label_;
  bool enabled_;
  bool drawn_ = false;
  bool finished_ = false;
};

}  // namespace pdvm::cli
