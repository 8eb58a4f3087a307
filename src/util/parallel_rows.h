// Splits [0, n_rows) into one contiguous range per thread and runs them concurrently.
// The first exception thrown by any range is rethrown in the caller.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace pdvm {

inline int default_thread_count() { return static_cast<int>(std::max(1u, std::thread::hardware_concurrency())); }

template <typename RangeFn>
void parallel_rows(int64_t n_rows, int threads, RangeFn fn) {
  const int64_t n_chunks = std::clamp<int64_t>(threads, 1, std::max<int64_t>(n_rows, 1));
  if (n_chunks == 1) {
    fn(int64_t{0}, n_rows);
    return;
  }
  std::exception_ptr first_error;
  std::mutex error_mutex;
  std::vector<std::thread> workers;
  workers.reserve(static_cast<size_t>(n_chunks));
  for (int64_t c = 0; c < n_chunks; ++c) {
    const int64_t begin = n_rows * c / n_chunks, end = n_rows * (c + 1) / n_chunks;
    workers.emplace_back([&, begin, end] {
      try {
        fn(begin, end);
      } catch (...) {
        std::lock_guard lock(error_mutex);
        if (!first_error) first_error = std::current_exception();
      }
    });
  }
  for (std::thread& worker : workers) worker.join();
  if (first_error) std::rethrow_exception(first_error);
}

}  // namespace pdvm
