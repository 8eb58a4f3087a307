#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <vector>

#include "cpu/fast_kernels.h"
#include "cpu/fast_thread_pool.h"
#include "pdvm/cpu_bandwidth.h"
#include "pdvm/error.h"

namespace pdvm {

HostReadBandwidth measure_cpu_read_bandwidth(int threads, uint64_t bytes, int repeats) {
  cpu::ThreadPool pool(threads > 0 ? threads : cpu::default_thread_count());
  const int64_t n_slices = pool.size();
  // Whole 2 MiB pages (huge pages, as the weights use) split evenly over the threads.
  constexpr uint64_t kPage = uint64_t{2} << 20;
  const uint64_t slice = std::max<uint64_t>(1, bytes / kPage / static_cast<uint64_t>(n_slices)) * kPage;
  const uint64_t total = slice * static_cast<uint64_t>(n_slices);
  std::unique_ptr<uint8_t, decltype(&std::free)> buffer(static_cast<uint8_t*>(std::aligned_alloc(kPage, total)),
                                                        std::free);
  if (!buffer) throw_error(ErrorKind::kResource, "read-bandwidth probe: cannot allocate " + std::to_string(total) + " bytes");
  madvise(buffer.get(), total, MADV_HUGEPAGE);  // a hint; failure is harmless
  // Distinct words (a multiplicative hash of the index); each slice's XOR is known up front,
  // so the timed passes are checked to have read everything.
  auto* words = reinterpret_cast<uint64_t*>(buffer.get());
  const uint64_t words_per_slice = slice / sizeof(uint64_t);
  std::vector<uint64_t> expected(static_cast<size_t>(n_slices), 0);
  for (uint64_t i = 0; i < total / sizeof(uint64_t); ++i) {
    words[i] = (i + 1) * 0x9e3779b97f4a7c15u;
    expected[i / words_per_slice] ^= words[i];
  }

  std::vector<uint64_t> checksums(static_cast<size_t>(n_slices));
  std::vector<double> seconds;
  repeats = std::max(repeats, 1);
  for (int pass = 0; pass <= repeats; ++pass) {  // pass 0 warms up
    const auto start = std::chrono::steady_clock::now();
    pool.parallel_for(n_slices, 1, [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s)
        checksums[static_cast<size_t>(s)] = cpu::xor_reduce(buffer.get() + static_cast<uint64_t>(s) * slice,
                                                            static_cast<int64_t>(slice));
    });
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (pass > 0) seconds.push_back(elapsed);
  }
  PDVM_CHECK_MSG(checksums == expected, "read-bandwidth probe: the read kernel returned a wrong checksum");
  std::sort(seconds.begin(), seconds.end());
  HostReadBandwidth result;
  result.threads = static_cast<int>(n_slices);
  result.bytes = total;
  result.seconds = seconds[seconds.size() / 2];
  result.gb_per_s = static_cast<double>(total) / result.seconds / 1e9;
  return result;
}

}  // namespace pdvm
