#include "cpu/fast_thread_pool.h"

#include <sched.h>

#include <algorithm>

#include "pdvm/error.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PDVM_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define PDVM_CPU_RELAX() asm volatile("yield")
#else
#define PDVM_CPU_RELAX() ((void)0)
#endif

namespace pdvm::cpu {
namespace {
// About 50-100 microseconds of spinning: longer than the gap between ops of one forward
// pass, far shorter than the gap between user requests.
constexpr int kSpinIterations = 1 << 15;
template <class Done>
void spin_until(const Done& done) {
  for (int spin = 0; !done(); ++spin) {
    if (spin < kSpinIterations) {
      PDVM_CPU_RELAX();
    } else {
      std::this_thread::yield();
    }
  }
}

}  // namespace

int default_thread_count() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

ThreadPool::ThreadPool(int n_threads) : shares_(static_cast<size_t>(std::max(n_threads, 1))) {
  if (n_threads < 1) throw_error(ErrorKind::kInvalidArgument, "thread count must be >= 1");
  workers_.reserve(static_cast<size_t>(n_threads - 1));
  for (int i = 1; i < n_threads; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  stopping_.store(true);
  generation_.fetch_add(1);
  generation_.notify_all();
  for (std::thread& worker : workers_) worker.join();
}

void ThreadPool::run_chunks(int thread_index) {
  const int n_shares = static_cast<int>(shares_.size());
  int64_t done = 0;  // published once at the end: one write to the shared counter per thread
  for (int visited = 0; visited < n_shares; ++visited) {
    Share& share = shares_[static_cast<size_t>((thread_index + visited) % n_shares)];
    for (;;) {
      const int64_t chunk = share.next_chunk.fetch_add(1, std::memory_order_relaxed);
      if (chunk >= share.end_chunk) break;
      const int64_t begin = chunk * job_grain_;
      const int64_t end = std::min(job_items_, begin + job_grain_);
      (*job_)(begin, end);
      done += end - begin;
    }
  }
  if (done > 0) done_items_.fetch_add(done, std::memory_order_release);
}

void ThreadPool::worker_loop(int thread_index) {
  uint32_t seen = 0;  // the generation at construction: a job published before this thread
                      // first runs must still be seen as new
  for (;;) {
    uint32_t current = generation_.load(std::memory_order_acquire);
    for (int spin = 0; current == seen && spin < kSpinIterations; ++spin) {
      PDVM_CPU_RELAX();
      current = generation_.load(std::memory_order_acquire);
    }
    if (current == seen) {
      sleeping_workers_.fetch_add(1);
      generation_.wait(seen);
      sleeping_workers_.fetch_sub(1);
      continue;
    }
    seen = current;
    if (stopping_.load()) return;
    // Join only a job that is still open; once the caller has closed it and seen no joined
    // worker, it may reuse the job fields for the next one.
    joined_workers_.fetch_add(1);
    if (open_generation_.load() == current) run_chunks(thread_index);
    joined_workers_.fetch_sub(1, std::memory_order_release);
  }
}

void ThreadPool::parallel_for(int64_t n, int64_t grain, const RangeFn& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  if (workers_.empty() || n <= grain) {
    fn(0, n);
    return;
  }
  job_ = &fn;
  job_items_ = n;
  job_grain_ = grain;
  const int64_t n_chunks = (n + grain - 1) / grain;
  const int64_t n_shares = static_cast<int64_t>(shares_.size());
  for (int64_t i = 0; i < n_shares; ++i) {
    Share& share = shares_[static_cast<size_t>(i)];
    share.next_chunk.store(i * n_chunks / n_shares, std::memory_order_relaxed);
    share.end_chunk = (i + 1) * n_chunks / n_shares;
  }
  done_items_.store(0, std::memory_order_relaxed);
  const uint32_t generation = generation_.load(std::memory_order_relaxed) + 1;
  open_generation_.store(generation);
  generation_.store(generation);  // seq_cst: pairs with the sleepers' increment
  if (sleeping_workers_.load() > 0) generation_.notify_all();
  run_chunks(0);
  spin_until([&] { return done_items_.load(std::memory_order_acquire) == n; });
  open_generation_.store(0);
  spin_until([&] { return joined_workers_.load(std::memory_order_acquire) == 0; });
}

}  // namespace pdvm::cpu
