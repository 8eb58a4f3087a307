// GgufValue: typed access and display of one metadata value.
#include <fmt/format.h>

#include <limits>

#include "pdvm/error.h"
#include "pdvm/gguf.h"

namespace pdvm {
namespace {

[[noreturn]] void wrong_type(const char* wanted, GgufType actual) {
  throw Error(ErrorKind::kFileFormat,
              fmt::format("expected {} value, got {}", wanted, gguf_type_name(actual)));
}

void append_escaped(std::string& out, const std::string& text) {
  out += '"';
  for (char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += fmt::format("\\x{:02x}", static_cast<unsigned char>(c));
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

}  // namespace

const char* gguf_type_name(GgufType type) {
  switch (type) {
    case GgufType::kU8: return "u8";
    case GgufType::kI8: return "i8";
    case GgufType::kU16: return "u16";
    case GgufType::kI16: return "i16";
    case GgufType::kU32: return "u32";
    case GgufType::kI32: return "i32";
    case GgufType::kF32: return "f32";
    case GgufType::kBool: return "bool";
    case GgufType::kString: return "string";
    case GgufType::kArray: return "array";
    case GgufType::kU64: return "u64";
    case GgufType::kI64: return "i64";
    case GgufType::kF64: return "f64";
  }
  return "unknown";
}

GgufValue GgufValue::array(GgufType element_type, std::vector<GgufValue> elements) {
  for (size_t i = 0; i < elements.size(); ++i) {
    if (elements[i].type() != element_type) {
      throw Error(ErrorKind::kInvalidArgument,
                  fmt::format("array of {}: element {} is {}", gguf_type_name(element_type), i,
                              gguf_type_name(elements[i].type())));
    }
  }
  return GgufValue(std::make_shared<GgufArray>(GgufArray{element_type, std::move(elements)}));
}

// The variant's alternatives are declared in GgufType order, so the index is the type id.
GgufType GgufValue::type() const { return static_cast<GgufType>(storage_.index()); }

bool GgufValue::is_integer() const {
  switch (type()) {
    case GgufType::kU8: case GgufType::kI8: case GgufType::kU16: case GgufType::kI16:
    case GgufType::kU32: case GgufType::kI32: case GgufType::kU64: case GgufType::kI64:
      return true;
    default:
      return false;
  }
}

bool GgufValue::is_float() const { return type() == GgufType::kF32 || type() == GgufType::kF64; }

int64_t GgufValue::as_int() const {
  if (!is_integer()) wrong_type("integer", type());
  if (const auto* big = std::get_if<uint64_t>(&storage_)) {
    if (*big > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      throw Error(ErrorKind::kFileFormat, fmt::format("u64 value {} does not fit in int64", *big));
    }
    return static_cast<int64_t>(*big);
  }
  return std::visit(
      [](const auto& v) -> int64_t {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) return static_cast<int64_t>(v);
        return 0;  // unreachable: is_integer() was checked
      },
      storage_);
}

uint64_t GgufValue::as_uint() const {
  if (const auto* big = std::get_if<uint64_t>(&storage_)) return *big;
  const int64_t value = as_int();
  if (value < 0) throw Error(ErrorKind::kFileFormat, fmt::format("expected unsigned value, got {}", value));
  return static_cast<uint64_t>(value);
}

double GgufValue::as_double() const {
  if (const auto* f = std::get_if<float>(&storage_)) return *f;
  if (const auto* d = std::get_if<double>(&storage_)) return *d;
  if (is_integer()) {
    if (const auto* big = std::get_if<uint64_t>(&storage_)) return static_cast<double>(*big);
    return static_cast<double>(as_int());
  }
  wrong_type("numeric", type());
}

bool GgufValue::as_bool() const {
  if (const auto* b = std::get_if<bool>(&storage_)) return *b;
  wrong_type("bool", type());
}

const std::string& GgufValue::as_string() const {
  if (const auto* s = std::get_if<std::string>(&storage_)) return *s;
  wrong_type("string", type());
}

const GgufArray& GgufValue::as_array() const {
  if (const auto* a = std::get_if<std::shared_ptr<GgufArray>>(&storage_)) {
    PDVM_CHECK(*a != nullptr);
    return **a;
  }
  wrong_type("array", type());
}

std::string GgufValue::to_display_string(size_t max_elems) const {
  if (const auto* text = std::get_if<std::string>(&storage_)) {
    std::string out;
    append_escaped(out, *text);
    return out;
  }
  if (const auto* array = std::get_if<std::shared_ptr<GgufArray>>(&storage_)) {
    const std::vector<GgufValue>& elements = (*array)->elements;
    const size_t shown = std::min(max_elems, elements.size());
    std::string out(1, '[');
    for (size_t i = 0; i < shown; ++i) {
      if (i > 0) out.append(", ");
      out.append(elements[i].to_display_string(max_elems));
    }
    if (shown == elements.size()) return out.append("]");
    return out.append(shown > 0 ? ", ...]" : "...]").append(fmt::format(" ({} items)", elements.size()));
  }
  return std::visit(
      [](const auto& v) -> std::string {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool>) return v ? "true" : "false";
        else if constexpr (std::is_same_v<T, uint8_t> || std::is_same_v<T, int8_t>) return fmt::format("{}", int{v});
        else if constexpr (std::is_arithmetic_v<T>) return fmt::format("{}", v);
        else return {};  // strings and arrays are handled above
      },
      storage_);
}

}  // namespace pdvm
