#include "pdvm/error.h"

#include <cstdio>

namespace pdvm {

const char* error_kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kInvalidArgument: return "invalid argument";
    case ErrorKind::kFileFormat: return "file format";
    case ErrorKind::kIo: return "i/o";
    case ErrorKind::kUnsupported: return "unsupported";
    case ErrorKind::kOutOfRange: return "out of range";
    case ErrorKind::kResource: return "resource";
    case ErrorKind::kDevice: return "device";
    case ErrorKind::kNumeric: return "numeric";
    case ErrorKind::kInternal: return "internal";
  }
  return "unknown";
}

void throw_error(ErrorKind kind, const std::string& message) { throw Error(kind, message); }

void check_failed(const char* expr, const char* file, int line, const std::string& detail) {
  std::string message = std::string("internal check failed: ") + expr + " at " + file + ":" + std::to_string(line);
  if (!detail.empty()) message += " (" + detail + ")";
  throw Error(ErrorKind::kInternal, message);
}

}  // namespace pdvm
