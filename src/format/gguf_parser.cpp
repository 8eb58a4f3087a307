#include "format/gguf_parser.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <numeric>
#include <string_view>
#include <unordered_map>

#include "pdvm/error.h"

namespace pdvm {
namespace {

// Smallest encoding of one value of each type, used to bound untrusted counts by the bytes left.
uint64_t min_encoded_size(GgufType type) {
  switch (type) {
    case GgufType::kU8: case GgufType::kI8: case GgufType::kBool: return 1;
    case GgufType::kU16: case GgufType::kI16: return 2;
    case GgufType::kU32: case GgufType::kI32: case GgufType::kF32: return 4;
    case GgufType::kU64: case GgufType::kI64: case GgufType::kF64: return 8;
    case GgufType::kString: return 8;      // length only
    case GgufType::kArray: return 4 + 8;   // element type + count
  }
  return 1;
}

// key: u64 length + u32 type + at least one value byte.
constexpr uint64_t kMinKeyValueBytes = 8 + 4 + 1;
// name length + n_dims + one dim + type + offset.
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;

class Parser {
 public:
  Parser(std::span<const uint8_t> bytes, const std::string& source) : bytes_(bytes), source_(source) {}

  ParsedGguf parse() {
    ParsedGguf out;
    read_header(out);
    const uint64_t n_tensors = read_count("tensor count", kMinTensorInfoBytes);
    const uint64_t n_kv = read_count("metadata key count", kMinKeyValueBytes);
    read_metadata(n_kv, out);
    out.alignment = read_alignment(out.metadata);
    read_tensor_infos(n_tensors, out);
    place_tensor_data(out);
    return out;
  }

 private:
  [[noreturn]] void fail(uint64_t offset, std::string_view message) const {
    const std::string where = context_.empty() ? std::string() : context_ + ": ";
    throw Error(ErrorKind::kFileFormat,
                fmt::format("{}: {}{} (at byte offset {})", source_, where, message, offset));
  }

  uint64_t remaining() const { return bytes_.size() - pos_; }

  void need(uint64_t n, std::string_view what) const {
    if (n > remaining()) {
      fail(pos_, fmt::format("file truncated: {} needs {} bytes, only {} left", what, n, remaining()));
    }
  }

  template <typename T>
  T read(std::string_view what) {
    need(sizeof(T), what);
    T value;
    std::memcpy(&value, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }

  std::string_view read_string(std::string_view what) {
    const uint64_t at = pos_;
    const auto length = read<uint64_t>(what);
    if (length > remaining()) {
      fail(at, fmt::format("{} length {} exceeds the {} bytes left", what, length, remaining()));
    }
    std::string_view text(reinterpret_cast<const char*>(bytes_.data() + pos_), length);
    pos_ += length;
    return text;
  }

  // A count of items, each at least min_bytes_each long, checked against the bytes left.
  uint64_t read_count(std::string_view what, uint64_t min_bytes_each) {
    const uint64_t at = pos_;
    const auto count = read<uint64_t>(what);
    if (count > remaining() / min_bytes_each) {
      fail(at, fmt::format("{} {} cannot fit in the {} bytes left", what, count, remaining()));
    }
    return count;
  }

  GgufType read_type(std::string_view what) {
    const uint64_t at = pos_;
    const auto raw = read<uint32_t>(what);
    if (raw > static_cast<uint32_t>(GgufType::kF64)) fail(at, fmt::format("unknown {} {}", what, raw));
    return static_cast<GgufType>(raw);
  }

  void read_header(ParsedGguf& out) {
    need(4, "magic");
    if (std::memcmp(bytes_.data(), "GGUF", 4) != 0) {
      fail(0, fmt::format("bad magic {:02x} {:02x} {:02x} {:02x} (expected \"GGUF\")", bytes_[0], bytes_[1],
                          bytes_[2], bytes_[3]));
    }
    pos_ = 4;
    out.version = read<uint32_t>("version");
    if (out.version == 1) fail(4, "GGUF version 1 is not supported (only versions 2 and 3)");
    if (out.version != 2 && out.version != 3) {
      const bool byte_swapped = (out.version & 0xffffu) == 0;
      fail(4, fmt::format("unsupported GGUF version {}{}", out.version,
                          byte_swapped ? " (a big-endian file?)" : " (only versions 2 and 3)"));
    }
  }

  GgufValue read_value(GgufType type, uint32_t depth) {
    switch (type) {
      case GgufType::kU8: return GgufValue(read<uint8_t>("u8 value"));
      case GgufType::kI8: return GgufValue(read<int8_t>("i8 value"));
      case GgufType::kU16: return GgufValue(read<uint16_t>("u16 value"));
      case GgufType::kI16: return GgufValue(read<int16_t>("i16 value"));
      case GgufType::kU32: return GgufValue(read<uint32_t>("u32 value"));
      case GgufType::kI32: return GgufValue(read<int32_t>("i32 value"));
      case GgufType::kF32: return GgufValue(read<float>("f32 value"));
      case GgufType::kU64: return GgufValue(read<uint64_t>("u64 value"));
      case GgufType::kI64: return GgufValue(read<int64_t>("i64 value"));
      case GgufType::kF64: return GgufValue(read<double>("f64 value"));
      case GgufType::kBool: {
        const uint64_t at = pos_;
        const auto raw = read<uint8_t>("bool value");
        if (raw > 1) fail(at, fmt::format("bool value {} is neither 0 nor 1", raw));
        return GgufValue(raw == 1);
      }
      case GgufType::kString: return GgufValue(std::string(read_string("string")));
      case GgufType::kArray: return read_array(depth);
    }
    PDVM_CHECK_MSG(false, "read_type admitted an unknown type");
  }

  GgufValue read_array(uint32_t depth) {
    const uint64_t at = pos_;
    if (depth >= kGgufMaxArrayDepth) {
      fail(at, fmt::format("arrays nested deeper than {} levels", kGgufMaxArrayDepth));
    }
    const GgufType element_type = read_type("array element type");
    const uint64_t count = read_count("array length", min_encoded_size(element_type));
    auto array = std::make_shared<GgufArray>();
    array->element_type = element_type;
    array->elements.reserve(count);  // bounded by the bytes left
    for (uint64_t i = 0; i < count; ++i) array->elements.push_back(read_value(element_type, depth + 1));
    return GgufValue(std::move(array));
  }

  void read_metadata(uint64_t n_kv, ParsedGguf& out) {
    std::vector<uint64_t> key_offsets;
    for (uint64_t i = 0; i < n_kv; ++i) {
      key_offsets.push_back(pos_);
      const std::string_view key = read_string("metadata key");
      if (key.empty()) fail(key_offsets.back(), "empty metadata key");
      context_ = fmt::format("key '{}'", key);
      const GgufType type = read_type("value type");
      GgufValue value = read_value(type, 0);
      out.metadata.push_back({std::string(key), std::move(value)});
      context_.clear();
    }
    std::unordered_map<std::string_view, size_t> seen;
    for (size_t i = 0; i < out.metadata.size(); ++i) {
      if (!seen.emplace(out.metadata[i].key, i).second) {
        fail(key_offsets[i], fmt::format("duplicate metadata key '{}'", out.metadata[i].key));
      }
    }
  }

  uint64_t read_alignment(const std::vector<GgufKeyValue>& metadata) {
    for (const GgufKeyValue& kv : metadata) {
      if (kv.key != "general.alignment") continue;
      if (!kv.value.is_integer()) {
        fail(pos_, fmt::format("general.alignment must be an integer, got {}", gguf_type_name(kv.value.type())));
      }
      const int64_t alignment = kv.value.as_int();
      if (alignment <= 0 || (alignment & (alignment - 1)) != 0) {
        fail(pos_, fmt::format("general.alignment {} is not a non-zero power of two", alignment));
      }
      return static_cast<uint64_t>(alignment);
    }
    return kGgufDefaultAlignment;
  }

  void read_tensor_infos(uint64_t n_tensors, ParsedGguf& out) {
    info_offsets_.clear();
    for (uint64_t i = 0; i < n_tensors; ++i) {
      info_offsets_.push_back(pos_);
      GgufTensor tensor;
      tensor.name = std::string(read_string("tensor name"));
      context_ = fmt::format("tensor '{}'", tensor.name);
      read_shape(tensor);
      read_type_and_size(tensor);
      tensor.offset = read<uint64_t>("tensor data offset");
      out.tensors.push_back(std::move(tensor));
      context_.clear();
    }
    std::unordered_map<std::string_view, size_t> seen;
    for (size_t i = 0; i < out.tensors.size(); ++i) {
      if (!seen.emplace(out.tensors[i].name, i).second) {
        fail(info_offsets_[i], fmt::format("duplicate tensor name '{}'", out.tensors[i].name));
      }
    }
  }

  void read_shape(GgufTensor& tensor) {
    const uint64_t at = pos_;
    const auto n_dims = read<uint32_t>("n_dims");
    if (n_dims < 1 || n_dims > kGgufMaxDims) {
      fail(at, fmt::format("n_dims {} is outside 1..{}", n_dims, kGgufMaxDims));
    }
    int64_t n_elems = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t dim_at = pos_;
      const auto dim = read<uint64_t>("dimension");
      if (dim == 0) fail(dim_at, fmt::format("dimension {} is 0", d));
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          __builtin_mul_overflow(n_elems, static_cast<int64_t>(dim), &n_elems)) {
        fail(dim_at, fmt::format("element count overflows at dimension {} ({})", d, dim));
      }
      tensor.shape.push_back(static_cast<int64_t>(dim));
    }
  }

  void read_type_and_size(GgufTensor& tensor) {
    const uint64_t at = pos_;
    const auto raw_type = read<uint32_t>("tensor type");
    const std::optional<TypeInfo> info = type_info(raw_type);
    if (!info) fail(at, fmt::format("unknown tensor type id {}", raw_type));
    tensor.type = info->type;
    if (tensor.shape[0] % info->block_elems != 0) {
      fail(at, fmt::format("row length {} is not a multiple of the {} block size {}", tensor.shape[0], info->name,
                           info->block_elems));
    }
    const int64_t n_blocks = tensor.n_elems() / info->block_elems;
    int64_t n_bytes = 0;
    if (__builtin_mul_overflow(n_blocks, info->block_bytes, &n_bytes)) {
      fail(at, fmt::format("byte size of {} {} blocks overflows", n_blocks, info->name));
    }
    tensor.n_bytes = static_cast<uint64_t>(n_bytes);
  }

  void place_tensor_data(ParsedGguf& out) {
    const uint64_t misalignment = pos_ % out.alignment;
    const uint64_t padding = misalignment == 0 ? 0 : out.alignment - misalignment;
    // pos_ <= file size, so it has 64-bit room unless the alignment is astronomically large.
    if (padding > std::numeric_limits<uint64_t>::max() - pos_) fail(pos_, "data section offset overflows");
    out.data_offset = pos_ + padding;
    const uint64_t data_size = out.data_offset < bytes_.size() ? bytes_.size() - out.data_offset : 0;
    for (size_t i = 0; i < out.tensors.size(); ++i) {
      GgufTensor& tensor = out.tensors[i];
      context_ = fmt::format("tensor '{}'", tensor.name);
      if (tensor.offset % out.alignment != 0) {
        fail(info_offsets_[i], fmt::format("data offset {} is not a multiple of the alignment {}", tensor.offset,
                                           out.alignment));
      }
      if (tensor.offset > data_size || tensor.n_bytes > data_size - tensor.offset) {
        fail(info_offsets_[i], fmt::format("data offset {} + {} bytes lies outside the {}-byte data section",
                                           tensor.offset, tensor.n_bytes, data_size));
      }
      tensor.data = bytes_.data() + out.data_offset + tensor.offset;
    }
    context_.clear();
    check_overlaps(out.tensors);
  }

  void check_overlaps(const std::vector<GgufTensor>& tensors) const {
    std::vector<size_t> order(tensors.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::sort(order.begin(), order.end(),
              [&](size_t a, size_t b) { return tensors[a].offset < tensors[b].offset; });
    for (size_t i = 1; i < order.size(); ++i) {
      const GgufTensor& prev = tensors[order[i - 1]];
      const GgufTensor& next = tensors[order[i]];
      if (prev.offset + prev.n_bytes > next.offset) {
        fail(info_offsets_[order[i]], fmt::format("tensor '{}' data at offset {} overlaps tensor '{}' ({} bytes at {})",
                                                 next.name, next.offset, prev.name, prev.n_bytes, prev.offset));
      }
    }
  }

  std::span<const uint8_t> bytes_;
  const std::string& source_;
  uint64_t pos_ = 0;
  std::string context_;  // the key or tensor being read, named in errors
  std::vector<uint64_t> info_offsets_;
};

}  // namespace

ParsedGguf parse_gguf(std::span<const uint8_t> bytes, const std::string& source) {
  return Parser(bytes, source).parse();
}

}  // namespace pdvm
