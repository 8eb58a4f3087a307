#include "format/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <signal.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "pdvm/error.h"

namespace pdvm {
namespace {

[[noreturn]] void throw_io(const std::filesystem::path& path, const char* action, int err) {
  throw Error(ErrorKind::kIo, "cannot " + std::string(action) + " '" + path.string() + "': " + std::strerror(err));
}

// Closes the descriptor on every path out of open(); the mapping outlives it.
struct FdCloser {
  int fd;
  ~FdCloser() { ::close(fd); }
};

// Live mappings, readable from the signal handler: a slot is claimed with `used`, filled, then
// published by storing `begin` (0 = empty).
struct MappingSlot {
  std::atomic<bool> used{false};
  std::atomic<uintptr_t> begin{0};
  size_t size = 0;
  char path[480] = {};
};
std::array<MappingSlot, 64> g_mappings;

void register_mapping(const uint8_t* data, size_t size, const std::filesystem::path& path) {
  for (MappingSlot& slot : g_mappings) {
    if (slot.used.exchange(true)) continue;
    slot.size = size;
    const std::string name = path.string();
    const size_t n = std::min(name.size(), sizeof slot.path - 1);
    std::memcpy(slot.path, name.data(), n);
    slot.path[n] = '\0';
    slot.begin.store(reinterpret_cast<uintptr_t>(data), std::memory_order_release);
    return;
  }
  // More than 64 files mapped at once: this one goes unguarded (a plain SIGBUS if truncated).
}

void unregister_mapping(const uint8_t* data) {
  for (MappingSlot& slot : g_mappings) {
    if (slot.begin.load(std::memory_order_acquire) == reinterpret_cast<uintptr_t>(data)) {
      slot.begin.store(0, std::memory_order_release);
      slot.used.store(false, std::memory_order_release);
      return;
    }
  }
}

// Only async-signal-safe calls from here on: write() and _exit().
void write_text(const char* text) { [[maybe_unused]] auto n = ::write(STDERR_FILENO, text, std::strlen(text)); }

void write_number(uint64_t value) {
  char digits[24];
  char* end = digits + sizeof digits;
  char* p = end;
  *--p = '\0';
  do {
    *--p = static_cast<char>('0' + value % 10);
    value /= 10;
  } while (value != 0);
  write_text(p);
}

void on_bus_error(int signal_number, siginfo_t* info, void*) {
  const auto address = reinterpret_cast<uintptr_t>(info->si_addr);
  for (const MappingSlot& slot : g_mappings) {
    const uintptr_t begin = slot.begin.load(std::memory_order_acquire);
    if (begin == 0 || address < begin || address - begin >= slot.size) continue;
    // Worker threads reading the same lost pages fault together: one reports, the rest wait
    // for its _exit.
    static std::atomic<bool> reporting{false};
    if (reporting.exchange(true)) {
      for (;;) ::pause();
    }
    write_text("pdvm: error: '");
    write_text(slot.path);
    write_text("' was truncated or replaced on disk while in use (read at offset ");
    write_number(address - begin);
    write_text(" of ");
    write_number(slot.size);
    write_text(" bytes mapped)\n");
    ::_exit(1);
  }
  // Not ours: the default action (core dump), for a fault when the access is retried and for
  // a sent signal through the raise (pending until this handler returns).
  ::signal(signal_number, SIG_DFL);
  ::raise(signal_number);
}

}  // namespace

void install_mapped_file_fault_handler() {
  struct sigaction action {};
  action.sa_sigaction = on_bus_error;
  action.sa_flags = SA_SIGINFO;
  sigemptyset(&action.sa_mask);
  ::sigaction(SIGBUS, &action, nullptr);
}

MappedFile MappedFile::open(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_io(path, "open", errno);
  FdCloser closer{fd};
  struct stat info {};
  if (::fstat(fd, &info) != 0) throw_io(path, "stat", errno);
  if (!S_ISREG(info.st_mode)) {
    throw Error(ErrorKind::kIo, "cannot map '" + path.string() + "': not a regular file");
  }
  const auto size = static_cast<size_t>(info.st_size);
  if (size == 0) return MappedFile(nullptr, 0);  // mmap rejects empty lengths
  void* data = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (data == MAP_FAILED) throw_io(path, "mmap", errno);
  register_mapping(static_cast<const uint8_t*>(data), size, path);
  return MappedFile(static_cast<const uint8_t*>(data), size);
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    unmap();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

MappedFile::~MappedFile() { unmap(); }

void MappedFile::unmap() {
  if (data_ != nullptr) {
    unregister_mapping(data_);
    ::munmap(const_cast<uint8_t*>(data_), size_);
  }
  data_ = nullptr;
  size_ = 0;
}

}  // namespace pdvm
