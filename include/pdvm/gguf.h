// GGUF v2/v3 reader (over mmap or a byte span) and writer.
// The reader validates every count, length, shape and offset before use: a malformed file
// raises pdvm::Error(kFileFormat) with a one-line message naming the offset, key or tensor.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "pdvm/tensor_type.h"

namespace pdvm {

enum class GgufType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};
const char* gguf_type_name(GgufType type);

struct GgufArray;

// One metadata value. Arrays hold their element type plus the elements (nested arrays allowed).
class GgufValue {
 public:
  using Storage = std::variant<uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float, bool,
                               std::string, std::shared_ptr<GgufArray>, uint64_t, int64_t, double>;
  GgufValue() = default;
  template <typename T>
  explicit GgufValue(T v) : storage_(std::move(v)) {}
  // Text always becomes a string (a bare `const char*` would otherwise risk converting to bool).
  explicit GgufValue(const char* text) : storage_(std::string(text)) {}
  explicit GgufValue(std::string_view text) : storage_(std::string(text)) {}
  // Throws Error(kInvalidArgument) when an element's type differs from element_type.
  static GgufValue array(GgufType element_type, std::vector<GgufValue> elements);

  GgufType type() const;
  const Storage& storage() const { return storage_; }

  bool is_integer() const;
  bool is_float() const;
  // Converting accessors: throw Error(kFileFormat) when the value is not of a compatible type.
  int64_t as_int() const;
  uint64_t as_uint() const;
  double as_double() const;
  bool as_bool() const;
  const std::string& as_string() const;
  const GgufArray& as_array() const;
  // Human-readable: strings quoted and escaped, arrays as "[a, b, ...] (N items)" past max_elems.
  std::string to_display_string(size_t max_elems = 8) const;

 private:
  Storage storage_;
};

struct GgufArray {
  GgufType element_type;
  std::vector<GgufValue> elements;
};

struct GgufKeyValue {
  std::string key;
  GgufValue value;
};

struct GgufTensor {
  std::string name;
  TensorType type;
  std::vector<int64_t> shape;  // GGUF order: shape[0] is the contiguous (row) dimension
  uint64_t offset = 0;         // relative to its file's data section
  uint64_t n_bytes = 0;
  uint32_t file_index = 0;     // which split holds it
  const uint8_t* data = nullptr;  // points into the mapped file

  int64_t n_elems() const;
  int64_t n_rows() const;  // product of shape[1..]
  std::span<const uint8_t> bytes() const { return {data, n_bytes}; }
};

class GgufFile {
 public:
  // Opens and maps a file; "name-00001-of-0000N.gguf" loads every split as one model.
  static GgufFile open(const std::filesystem::path& path);
  // Parses an in-memory image (no copy: bytes must outlive the result). Used by tests and fuzzers.
  static GgufFile parse(std::span<const uint8_t> bytes, std::string source_name = "<memory>");

  GgufFile(GgufFile&&) noexcept;
  GgufFile& operator=(GgufFile&&) noexcept;
  ~GgufFile();

  uint32_t version() const;
  uint64_t alignment() const;
  const std::string& path() const;
  uint64_t file_size() const;  // sum over splits
  size_t n_splits() const;
  // Absolute byte offset of a split's data section (tensor offsets are relative to it).
  uint64_t data_section_offset(size_t file_index = 0) const;

  const std::vector<GgufKeyValue>& metadata() const;
  const GgufValue* find(std::string_view key) const;
  // Typed lookups: missing key -> fallback (or Error(kFileFormat) naming the key for get_*_required).
  int64_t get_int(std::string_view key, int64_t fallback) const;
  double get_float(std::string_view key, double fallback) const;
  bool get_bool(std::string_view key, bool fallback) const;
  std::string get_string(std::string_view key, std::string_view fallback) const;
  int64_t get_int_required(std::string_view key) const;
  std::string get_string_required(std::string_view key) const;

  const std::vector<GgufTensor>& tensors() const;
  uint64_t tensor_data_bytes() const;  // all tensors' data together
  const GgufTensor* find_tensor(std::string_view name) const;
  const GgufTensor& tensor_required(std::string_view name) const;  // Error(kFileFormat) naming it

 private:
  struct Impl;
  explicit GgufFile(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Writes GGUF v3. Tensor data is produced on demand by a callback, one tensor at a time,
// so files larger than memory can be written. Writes to PATH.tmp and renames on success.
class GgufWriter {
 public:
  using Filler = std::function<void(std::span<uint8_t> out)>;

  explicit GgufWriter(uint64_t alignment = 32);
  // Replaces an existing key, keeping its position. Setting "general.alignment" (a u32) also
  // changes the alignment used for the tensor data.
  void set(std::string key, GgufValue value);
  void add_tensor(std::string name, TensorType type, std::vector<int64_t> shape, Filler filler);
  void add_tensor(std::string name, TensorType type, std::vector<int64_t> shape,
                  std::span<const uint8_t> bytes);  // bytes must outlive write()
  // progress(done_bytes, total_bytes) is called after each tensor.
  void write(const std::filesystem::path& path,
             const std::function<void(uint64_t, uint64_t)>& progress = {}) const;
  std::vector<uint8_t> write_to_memory() const;

 private:
  struct PendingTensor {
    std::string name;
    TensorType type;
    std::vector<int64_t> shape;
    Filler filler;
  };
  // Produces the whole image in order, handing it to sink piece by piece.
  void emit(const std::function<void(std::span<const uint8_t>)>& sink,
            const std::function<void(uint64_t, uint64_t)>& progress) const;
  uint64_t alignment_;
  std::vector<GgufKeyValue> metadata_;
  std::vector<PendingTensor> tensors_;
};

}  // namespace pdvm
