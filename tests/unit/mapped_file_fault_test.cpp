// A model file truncated on disk while mapped: reading a lost page ends the process with a
// one-line error naming the file (install_mapped_file_fault_handler), not a silent SIGBUS.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include "format/mapped_file.h"
#include "test_support.h"

namespace pdvm {
namespace {

std::filesystem::path write_random_file(size_t size) {
  const auto path = std::filesystem::temp_directory_path() /
                    ("pdvm_mapped_fault_" + std::to_string(getpid()) + "_" + std::to_string(test::rng()()) + ".bin");
  std::vector<char> bytes(size);
  for (char& b : bytes) b = static_cast<char>(test::rng()());
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return path;
}

uint8_t read_byte(const MappedFile& map, size_t offset) {
  return *static_cast<const volatile uint8_t*>(map.bytes().data() + offset);
}

TEST(MappedFileFault, ReadPastATruncationNamesTheFile) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t n_pages = std::uniform_int_distribution<size_t>(3, 12)(test::rng());
  const auto path = write_random_file(n_pages * page);
  const MappedFile map = MappedFile::open(path);
  const size_t kept_pages = std::uniform_int_distribution<size_t>(1, n_pages - 1)(test::rng());
  const size_t lost_offset = kept_pages * page + std::uniform_int_distribution<size_t>(0, page - 1)(test::rng());
  std::filesystem::resize_file(path, kept_pages * page);
  install_mapped_file_fault_handler();
  // What is still in the file reads normally.
  const uint8_t first = read_byte(map, 0);
  std::ifstream in(path, std::ios::binary);
  EXPECT_EQ(static_cast<uint8_t>(in.get()), first);
  EXPECT_EXIT(read_byte(map, lost_offset), testing::ExitedWithCode(1),
              "pdvm: error: '" + path.string() + "' was truncated or replaced on disk while in use \\(read at offset " +
                  std::to_string(lost_offset) + " ");
  std::filesystem::remove(path);
}

TEST(MappedFileFault, OtherBusErrorsKeepTheDefaultAction) {
  const auto path = write_random_file(4096);
  const MappedFile map = MappedFile::open(path);
  install_mapped_file_fault_handler();
  EXPECT_EXIT(raise(SIGBUS), testing::KilledBySignal(SIGBUS), "");
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace pdvm
