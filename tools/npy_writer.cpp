#include "npy_writer.h"

#include <cstring>
#include <fstream>
#include <string>

#include "pdvm/error.h"

namespace pdvm::cli {

void write_npy(const std::filesystem::path& path, std::span<const float> data,
               const std::vector<int64_t>& shape) {
  std::string dims;
  int64_t n_elems = 1;
  for (int64_t d : shape) {
    dims += std::to_string(d) + ",";
    n_elems *= d;
  }
  PDVM_CHECK(static_cast<size_t>(n_elems) == data.size());
  if (shape.size() > 1) dims.pop_back();  // (n,) needs the comma, (a, b) does not
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  // Magic (6) + version (2) + length (2) + header, padded with spaces to a multiple of 64.
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  const auto header_len = static_cast<uint16_t>(header.size());

  std::ofstream out(path, std::ios::binary);
  if (!out) throw_error(ErrorKind::kIo, "cannot write " + path.string());
  out.write("\x93NUMPY\x01\x00", 8);
  const char len_bytes[2] = {static_cast<char>(header_len & 0xff), static_cast<char>(header_len >> 8)};
  out.write(len_bytes, 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size_bytes()));
  if (!out) throw_error(ErrorKind::kIo, "failed writing " + path.string());
}

}  // namespace pdvm::cli
