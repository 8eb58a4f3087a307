// GgufFile: one model over one or more mapped GGUF files (gguf-split naming), plus lookups.
#include <fmt/format.h>

#include <charconv>
#include <unordered_map>

#include "format/gguf_parser.h"
#include "format/mapped_file.h"
#include "pdvm/error.h"
#include "pdvm/gguf.h"

namespace pdvm {
namespace {

[[noreturn]] void format_error(const std::string& message) { throw Error(ErrorKind::kFileFormat, message); }

const GgufValue* find_in(const std::vector<GgufKeyValue>& metadata, std::string_view key) {
  for (const GgufKeyValue& kv : metadata) {
    if (kv.key == key) return &kv.value;
  }
  return nullptr;
}

uint64_t split_key(const std::vector<GgufKeyValue>& metadata, std::string_view key, const std::string& path) {
  const GgufValue* value = find_in(metadata, key);
  if (value == nullptr) format_error(fmt::format("{}: split file lacks key '{}'", path, key));
  if (!value->is_integer()) {
    format_error(fmt::format("{}: key '{}' must be an integer, got {}", path, key, gguf_type_name(value->type())));
  }
  return value->as_uint();
}

// "dir/name-00001-of-00003.gguf" -> "dir/name"; nullopt when the name does not follow the pattern.
std::optional<std::string> split_prefix(const std::filesystem::path& path, uint64_t count) {
  const std::string name = path.filename().string();
  const std::string suffix = fmt::format("-00001-of-{:05d}.gguf", count);
  if (name.size() <= suffix.size() || name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) {
    return std::nullopt;
  }
  return (path.parent_path() / name.substr(0, name.size() - suffix.size())).string();
}

}  // namespace

int64_t GgufTensor::n_elems() const {
  int64_t n = 1;
  for (int64_t dim : shape) n *= dim;
  return n;
}

int64_t GgufTensor::n_rows() const { return shape.empty() ? 0 : n_elems() / shape[0]; }

struct GgufFile::Impl {
  std::string path;
  std::vector<MappedFile> maps;  // one per split; empty for parse()
  uint32_t version = 0;
  uint64_t alignment = kGgufDefaultAlignment;
  uint64_t file_size = 0;
  size_t n_splits = 1;
  std::vector<uint64_t> data_offsets;
  std::vector<GgufKeyValue> metadata;
  std::vector<GgufTensor> tensors;
  // Views into metadata/tensors, built once they no longer change.
  std::unordered_map<std::string_view, size_t> key_index;
  std::unordered_map<std::string_view, size_t> tensor_index;

  void adopt_first(ParsedGguf parsed, uint64_t size) {
    version = parsed.version;
    alignment = parsed.alignment;
    file_size = size;
    data_offsets.push_back(parsed.data_offset);
    metadata = std::move(parsed.metadata);
    tensors = std::move(parsed.tensors);
  }

  void build_indices() {
    key_index.reserve(metadata.size());
    for (size_t i = 0; i < metadata.size(); ++i) key_index.emplace(metadata[i].key, i);
    tensor_index.reserve(tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
      if (!tensor_index.emplace(tensors[i].name, i).second) {
        format_error(fmt::format("{}: tensor '{}' appears in more than one split (again in split {})", path,
                                 tensors[i].name, tensors[i].file_index + 1));
      }
    }
  }

  void load_other_splits(const std::filesystem::path& first_path);
};

void GgufFile::Impl::load_other_splits(const std::filesystem::path& first_path) {
  const GgufValue* count_value = find_in(metadata, "split.count");
  if (count_value == nullptr) return;
  const uint64_t count = split_key(metadata, "split.count", path);
  const uint64_t number = split_key(metadata, "split.no", path);
  const uint64_t total_tensors = split_key(metadata, "split.tensors.count", path);
  if (count == 0 || count > 99999) format_error(fmt::format("{}: split.count {} is out of range", path, count));
  if (number >= count) format_error(fmt::format("{}: split.no {} is not below split.count {}", path, number, count));
  if (number != 0) {
    format_error(fmt::format("{}: this is split {} of {}; open the first split (…-00001-of-{:05d}.gguf)", path,
                             number + 1, count, count));
  }
  if (count > 1) {
    const std::optional<std::string> prefix = split_prefix(first_path, count);
    if (!prefix) {
      format_error(fmt::format("{}: split.count is {} but the name does not end in -00001-of-{:05d}.gguf", path,
                               count, count));
    }
    for (uint64_t i = 1; i < count; ++i) {
      const std::string split_path = fmt::format("{}-{:05d}-of-{:05d}.gguf", *prefix, i + 1, count);
      if (!std::filesystem::exists(split_path)) {
        format_error(fmt::format("{}: split {} of {} is missing: {}", path, i + 1, count, split_path));
      }
      MappedFile map = MappedFile::open(split_path);
      ParsedGguf parsed = parse_gguf(map.bytes(), split_path);
      if (split_key(parsed.metadata, "split.no", split_path) != i ||
          split_key(parsed.metadata, "split.count", split_path) != count ||
          split_key(parsed.metadata, "split.tensors.count", split_path) != total_tensors) {
        format_error(fmt::format("{}: split.no/split.count/split.tensors.count disagree with the first split "
                                 "(expected {}/{}/{})",
                                 split_path, i, count, total_tensors));
      }
      for (GgufTensor& tensor : parsed.tensors) {
        tensor.file_index = static_cast<uint32_t>(i);
        tensors.push_back(std::move(tensor));
      }
      data_offsets.push_back(parsed.data_offset);
      file_size += map.size();
      maps.push_back(std::move(map));
    }
  }
  n_splits = count;
  if (tensors.size() != total_tensors) {
    format_error(fmt::format("{}: split.tensors.count is {} but the {} splits hold {} tensors", path, total_tensors,
                             count, tensors.size()));
  }
}

GgufFile GgufFile::open(const std::filesystem::path& path) {
  auto impl = std::make_unique<Impl>();
  impl->path = path.string();
  MappedFile map = MappedFile::open(path);
  const uint64_t size = map.size();
  ParsedGguf parsed = parse_gguf(map.bytes(), impl->path);
  impl->maps.push_back(std::move(map));
  impl->adopt_first(std::move(parsed), size);
  impl->load_other_splits(path);
  impl->build_indices();
  return GgufFile(std::move(impl));
}

GgufFile GgufFile::parse(std::span<const uint8_t> bytes, std::string source_name) {
  auto impl = std::make_unique<Impl>();
  impl->path = std::move(source_name);
  impl->adopt_first(parse_gguf(bytes, impl->path), bytes.size());
  impl->build_indices();
  return GgufFile(std::move(impl));
}

GgufFile::GgufFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GgufFile::GgufFile(GgufFile&&) noexcept = default;
GgufFile& GgufFile::operator=(GgufFile&&) noexcept = default;
GgufFile::~GgufFile() = default;

uint32_t GgufFile::version() const { return impl_->version; }
uint64_t GgufFile::alignment() const { return impl_->alignment; }
const std::string& GgufFile::path() const { return impl_->path; }
uint64_t GgufFile::file_size() const { return impl_->file_size; }
size_t GgufFile::n_splits() const { return impl_->n_splits; }
uint64_t GgufFile::data_section_offset(size_t file_index) const {
  PDVM_CHECK(file_index < impl_->data_offsets.size());
  return impl_->data_offsets[file_index];
}

const std::vector<GgufKeyValue>& GgufFile::metadata() const { return impl_->metadata; }

const GgufValue* GgufFile::find(std::string_view key) const {
  const auto it = impl_->key_index.find(key);
  return it == impl_->key_index.end() ? nullptr : &impl_->metadata[it->second].value;
}

namespace {

// Runs a typed accessor, prefixing a type mismatch with the file and key it concerns.
template <typename Accessor>
auto typed(const std::string& path, std::string_view key, Accessor accessor) {
  try {
    return accessor();
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kFileFormat) throw;
    format_error(fmt::format("{}: key '{}': {}", path, key, e.what()));
  }
}

}  // namespace

int64_t GgufFile::get_int(std::string_view key, int64_t fallback) const {
  const GgufValue* value = find(key);
  return value == nullptr ? fallback : typed(path(), key, [&] { return value->as_int(); });
}

double GgufFile::get_float(std::string_view key, double fallback) const {
  const GgufValue* value = find(key);
  return value == nullptr ? fallback : typed(path(), key, [&] { return value->as_double(); });
}

bool GgufFile::get_bool(std::string_view key, bool fallback) const {
  const GgufValue* value = find(key);
  return value == nullptr ? fallback : typed(path(), key, [&] { return value->as_bool(); });
}

std::string GgufFile::get_string(std::string_view key, std::string_view fallback) const {
  const GgufValue* value = find(key);
  return value == nullptr ? std::string(fallback) : typed(path(), key, [&] { return value->as_string(); });
}

int64_t GgufFile::get_int_required(std::string_view key) const {
  const GgufValue* value = find(key);
  if (value == nullptr) format_error(fmt::format("{}: missing required key '{}'", path(), key));
  return typed(path(), key, [&] { return value->as_int(); });
}

std::string GgufFile::get_string_required(std::string_view key) const {
  const GgufValue* value = find(key);
  if (value == nullptr) format_error(fmt::format("{}: missing required key '{}'", path(), key));
  return typed(path(), key, [&] { return value->as_string(); });
}

const std::vector<GgufTensor>& GgufFile::tensors() const { return impl_->tensors; }

uint64_t GgufFile::tensor_data_bytes() const {
  uint64_t total = 0;
  for (const GgufTensor& t : impl_->tensors) total += t.n_bytes;
  return total;
}

const GgufTensor* GgufFile::find_tensor(std::string_view name) const {
  const auto it = impl_->tensor_index.find(name);
  return it == impl_->tensor_index.end() ? nullptr : &impl_->tensors[it->second];
}

const GgufTensor& GgufFile::tensor_required(std::string_view name) const {
  const GgufTensor* tensor = find_tensor(name);
  if (tensor == nullptr) format_error(fmt::format("{}: missing tensor '{}'", path(), name));
  return *tensor;
}

}  // namespace pdvm
