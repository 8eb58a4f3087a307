// GgufWriter: GGUF v3 with tensor data streamed one tensor at a time through its Filler.
#include <fmt/format.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>

#include "format/gguf_parser.h"
#include "pdvm/error.h"
#include "pdvm/gguf.h"

namespace pdvm {
namespace {

constexpr uint32_t kWrittenVersion = 3;

[[noreturn]] void invalid(const std::string& message) { throw Error(ErrorKind::kInvalidArgument, message); }

void check_alignment(uint64_t alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0 || alignment > (uint64_t{1} << 30)) {
    invalid(fmt::format("GGUF alignment {} is not a power of two up to 2^30", alignment));
  }
}

uint64_t align_up(uint64_t offset, uint64_t alignment) { return (offset + alignment - 1) / alignment * alignment; }

// Bytes a tensor of this type and shape occupies; rejects what a reader would reject.
uint64_t tensor_bytes(const std::string& name, TensorType type, const std::vector<int64_t>& shape) {
  if (shape.empty() || shape.size() > kGgufMaxDims) invalid(fmt::format("tensor '{}': {} dimensions", name, shape.size()));
  int64_t n_elems = 1;
  for (int64_t dim : shape) {
    if (dim < 1 || __builtin_mul_overflow(n_elems, dim, &n_elems)) {
      invalid(fmt::format("tensor '{}': bad dimension {}", name, dim));
    }
  }
  const TypeInfo& info = type_info(type);
  if (shape[0] % info.block_elems != 0) {
    invalid(fmt::format("tensor '{}': row length {} is not a multiple of the {} block size {}", name, shape[0],
                        info.name, info.block_elems));
  }
  int64_t n_bytes = 0;
  if (__builtin_mul_overflow(n_elems / info.block_elems, info.block_bytes, &n_bytes)) {
    invalid(fmt::format("tensor '{}': byte size overflows", name));
  }
  return static_cast<uint64_t>(n_bytes);
}

class HeaderEncoder {
 public:
  template <typename T>
  void put(T value) {
    const size_t at = out_.size();
    out_.resize(at + sizeof(T));
    std::memcpy(out_.data() + at, &value, sizeof(T));
  }
  void put_string(std::string_view text) {
    put<uint64_t>(text.size());
    out_.insert(out_.end(), text.begin(), text.end());
  }
  void put_value(const GgufValue& value) {
    std::visit(
        [&](const auto& v) {
          using T = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<T, std::string>) {
            put_string(v);
          } else if constexpr (std::is_same_v<T, std::shared_ptr<GgufArray>>) {
            put<uint32_t>(static_cast<uint32_t>(v->element_type));
            put<uint64_t>(v->elements.size());
            for (const GgufValue& element : v->elements) put_value(element);
          } else if constexpr (std::is_same_v<T, bool>) {
            put<uint8_t>(v ? 1 : 0);
          } else {
            put<T>(v);
          }
        },
        value.storage());
  }
  void pad_to(uint64_t alignment) { out_.resize(align_up(out_.size(), alignment), 0); }
  std::vector<uint8_t>& bytes() { return out_; }

 private:
  std::vector<uint8_t> out_;
};

}  // namespace

GgufWriter::GgufWriter(uint64_t alignment) : alignment_(alignment) {
  check_alignment(alignment);
  if (alignment != kGgufDefaultAlignment) {
    metadata_.push_back({"general.alignment", GgufValue(static_cast<uint32_t>(alignment))});
  }
}

void GgufWriter::set(std::string key, GgufValue value) {
  if (key.empty()) invalid("empty GGUF metadata key");
  if (key == "general.alignment") {
    if (value.type() != GgufType::kU32) invalid("general.alignment must be a u32");
    check_alignment(value.as_uint());
    alignment_ = value.as_uint();
  }
  for (GgufKeyValue& kv : metadata_) {
    if (kv.key == key) {
      kv.value = std::move(value);
      return;
    }
  }
  metadata_.push_back({std::move(key), std::move(value)});
}

void GgufWriter::add_tensor(std::string name, TensorType type, std::vector<int64_t> shape, Filler filler) {
  tensor_bytes(name, type, shape);  // validate now, where the caller can see which call was wrong
  for (const PendingTensor& tensor : tensors_) {
    if (tensor.name == name) invalid(fmt::format("duplicate tensor name '{}'", name));
  }
  tensors_.push_back({std::move(name), type, std::move(shape), std::move(filler)});
}

void GgufWriter::add_tensor(std::string name, TensorType type, std::vector<int64_t> shape,
                            std::span<const uint8_t> bytes) {
  const uint64_t expected = tensor_bytes(name, type, shape);
  if (bytes.size() != expected) {
    invalid(fmt::format("tensor '{}': {} bytes given, its shape and type need {}", name, bytes.size(), expected));
  }
  add_tensor(std::move(name), type, std::move(shape),
             [bytes](std::span<uint8_t> out) { std::memcpy(out.data(), bytes.data(), bytes.size()); });
}

void GgufWriter::emit(const std::function<void(std::span<const uint8_t>)>& sink,
                      const std::function<void(uint64_t, uint64_t)>& progress) const {
  std::vector<uint64_t> sizes;
  std::vector<uint64_t> offsets;
  uint64_t data_size = 0;
  for (const PendingTensor& tensor : tensors_) {
    sizes.push_back(tensor_bytes(tensor.name, tensor.type, tensor.shape));
    offsets.push_back(data_size);
    data_size = align_up(data_size + sizes.back(), alignment_);
  }

  HeaderEncoder header;
  header.put<uint32_t>(0x46554747);  // "GGUF" read as a little-endian u32
  header.put<uint32_t>(kWrittenVersion);
  header.put<uint64_t>(tensors_.size());
  header.put<uint64_t>(metadata_.size());
  for (const GgufKeyValue& kv : metadata_) {
    header.put_string(kv.key);
    header.put<uint32_t>(static_cast<uint32_t>(kv.value.type()));
    header.put_value(kv.value);
  }
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const PendingTensor& tensor = tensors_[i];
    header.put_string(tensor.name);
    header.put<uint32_t>(static_cast<uint32_t>(tensor.shape.size()));
    for (int64_t dim : tensor.shape) header.put<uint64_t>(static_cast<uint64_t>(dim));
    header.put<uint32_t>(static_cast<uint32_t>(tensor.type));
    header.put<uint64_t>(offsets[i]);
  }
  header.pad_to(alignment_);
  sink(header.bytes());

  std::vector<uint8_t> buffer;
  uint64_t done = 0;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const uint64_t padded = align_up(sizes[i], alignment_);
    buffer.assign(padded, 0);
    tensors_[i].filler(std::span<uint8_t>(buffer.data(), sizes[i]));
    sink(buffer);
    done += padded;
    if (progress) progress(done, data_size);
  }
}

void GgufWriter::write(const std::filesystem::path& path,
                       const std::function<void(uint64_t, uint64_t)>& progress) const {
  std::filesystem::path temp = path;
  temp += ".tmp";
  std::FILE* file = std::fopen(temp.c_str(), "wb");
  if (file == nullptr) {
    throw Error(ErrorKind::kIo, fmt::format("cannot create '{}': {}", temp.string(), std::strerror(errno)));
  }
  try {
    emit(
        [&](std::span<const uint8_t> bytes) {
          if (std::fwrite(bytes.data(), 1, bytes.size(), file) != bytes.size()) {
            throw Error(ErrorKind::kIo, fmt::format("cannot write '{}': {}", temp.string(), std::strerror(errno)));
          }
        },
        progress);
  } catch (...) {
    std::fclose(file);
    std::filesystem::remove(temp);
    throw;
  }
  if (std::fclose(file) != 0) {
    std::filesystem::remove(temp);
    throw Error(ErrorKind::kIo, fmt::format("cannot write '{}': {}", temp.string(), std::strerror(errno)));
  }
  std::error_code error;
  std::filesystem::rename(temp, path, error);
  if (error) {
    std::filesystem::remove(temp);
    throw Error(ErrorKind::kIo, fmt::format("cannot rename '{}' to '{}': {}", temp.string(), path.string(),
                                            error.message()));
  }
}

std::vector<uint8_t> GgufWriter::write_to_memory() const {
  std::vector<uint8_t> image;
  emit([&](std::span<const uint8_t> bytes) { image.insert(image.end(), bytes.begin(), bytes.end()); }, {});
  return image;
}

}  // namespace pdvm
