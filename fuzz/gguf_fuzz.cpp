// libFuzzer target for the GGUF parser: any input must parse or raise pdvm::Error(kFileFormat),
// never read outside the buffer; what parses must survive a writer round trip unchanged.
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>

#include "pdvm/error.h"
#include "pdvm/gguf.h"

namespace {

std::string describe(const pdvm::GgufValue& value) {
  return std::string(pdvm::gguf_type_name(value.type())) + " " +
         value.to_display_string(std::numeric_limits<size_t>::max());
}

// Re-encodes a parsed image with GgufWriter and checks the result parses to the same content.
void check_round_trip(const pdvm::GgufFile& file) {
  // Huge (valid) alignments would make the writer pad the image to gigabytes.
  if (file.alignment() > 4096) return;
  pdvm::GgufWriter writer;
  std::vector<uint8_t> image;
  try {
    for (const pdvm::GgufKeyValue& kv : file.metadata()) writer.set(kv.key, kv.value);
    for (const pdvm::GgufTensor& tensor : file.tensors()) {
      writer.add_tensor(tensor.name, tensor.type, tensor.shape, tensor.bytes());
    }
    image = writer.write_to_memory();
  } catch (const pdvm::Error& e) {
    // The writer is stricter than the reader (a u32 general.alignment up to 2^30 only).
    if (e.kind() != pdvm::ErrorKind::kInvalidArgument) __builtin_trap();
    return;
  }
  const pdvm::GgufFile again = pdvm::GgufFile::parse(image, "<round trip>");
  if (again.metadata().size() != file.metadata().size() || again.tensors().size() != file.tensors().size()) {
    __builtin_trap();
  }
  for (size_t i = 0; i < file.metadata().size(); ++i) {
    if (again.metadata()[i].key != file.metadata()[i].key ||
        describe(again.metadata()[i].value) != describe(file.metadata()[i].value)) {
      __builtin_trap();
    }
  }
  for (size_t i = 0; i < file.tensors().size(); ++i) {
    const pdvm::GgufTensor& a = file.tensors()[i];
    const pdvm::GgufTensor& b = again.tensors()[i];
    if (a.name != b.name || a.type != b.type || a.shape != b.shape || a.n_bytes != b.n_bytes ||
        !std::equal(a.bytes().begin(), a.bytes().end(), b.bytes().begin())) {
      __builtin_trap();
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const pdvm::GgufFile file = pdvm::GgufFile::parse({data, size}, "<fuzz>");
    // Touch every tensor byte so AddressSanitizer sees any pointer outside the input.
    unsigned sum = 0;
    for (const pdvm::GgufTensor& tensor : file.tensors()) {
      for (uint8_t byte : tensor.bytes()) sum += byte;
    }
    for (const pdvm::GgufKeyValue& kv : file.metadata()) sum += static_cast<unsigned>(describe(kv.value).size());
    if (sum == 0xdeadbeefu) return 0;  // keeps the loop from being optimized away
    check_round_trip(file);
  } catch (const pdvm::Error& e) {
    if (e.kind() != pdvm::ErrorKind::kFileFormat) __builtin_trap();
  }
  return 0;
}
