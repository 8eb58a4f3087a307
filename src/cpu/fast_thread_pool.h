// A persistent pool of worker threads for the fast CPU backend. Ops hand it short parallel
// loops hundreds of times per token, so workers spin briefly between jobs (a futex wake
// costs more than a typical op) and only then sleep.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

namespace pdvm::cpu {

class ThreadPool {
 public:
  // n_threads counts the calling thread; 1 means everything runs on the caller.
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(begin, end) on chunks of at most `grain` items covering [0, n), on all threads,
  // and returns once every chunk is done. Chunks are claimed dynamically and the caller
  // waits for chunks, not for workers: a worker that another process keeps off its core
  // simply takes no part, instead of stalling the op. Each thread first claims, in order, the
  // chunks of its own contiguous share of [0, n) (so it streams one run of memory, which the
  // hardware prefetchers follow), then helps with the other shares.
  using RangeFn = std::function<void(int64_t begin, int64_t end)>;
  void parallel_for(int64_t n, int64_t grain, const RangeFn& fn);

 private:
  // The next unclaimed chunk of one thread's share, on its own cache line.
  struct alignas(64) Share {
    std::atomic<int64_t> next_chunk{0};
    int64_t end_chunk = 0;
  };

  void worker_loop(int thread_index);
  void run_chunks(int thread_index);

  std::vector<std::thread> workers_;
  std::vector<Share> shares_;  // one per thread; index 0 is the caller's
  // Three cache lines: what workers spin on between jobs, the job (read-only while it runs),
  // and the counters written as threads finish, so no write evicts a line another thread
  // keeps reading.
  alignas(64) std::atomic<uint32_t> generation_{0};
  std::atomic<uint32_t> open_generation_{0};  // the job workers may still join; 0: none
  std::atomic<int> sleeping_workers_{0};
  std::atomic<bool> stopping_{false};
  alignas(64) const RangeFn* job_ = nullptr;
  int64_t job_items_ = 0;
  int64_t job_grain_ = 1;
  alignas(64) std::atomic<int> joined_workers_{0};
  std::atomic<int64_t> done_items_{0};
};

// Default thread count: the cores this process may run on.
int default_thread_count();

}  // namespace pdvm::cpu
