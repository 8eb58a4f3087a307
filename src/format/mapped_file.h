// A read-only memory mapping of a whole file, unmapped when destroyed.
//
// A file truncated by another process while mapped makes reads of the lost pages raise SIGBUS
// (MAP_PRIVATE does not protect pages that were never read). Programs call
// install_mapped_file_fault_handler() once: a SIGBUS inside a live mapping then ends the
// process with a one-line error naming the file, instead of a silent "Bus error".
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>

namespace pdvm {

class MappedFile {
 public:
  // Throws Error(kIo) naming the path when the file cannot be opened or mapped.
  static MappedFile open(const std::filesystem::path& path);

  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  size_t size() const { return size_; }

 private:
  MappedFile(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  void unmap();

  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Installs the SIGBUS handler described above (idempotent). Faults outside any mapping keep
// the default action.
void install_mapped_file_fault_handler();

}  // namespace pdvm
