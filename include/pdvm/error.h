// Error handling: two tiers.
//  * pdvm::Error for untrusted input (files, flags, requests): typed, with context, caught at the edges.
//  * PDVM_CHECK for broken internal invariants: prints file:line and throws InternalError.
#pragma once

#include <stdexcept>
#include <string>

namespace pdvm {

enum class ErrorKind {
  kInvalidArgument,  // bad flag, bad API argument
  kFileFormat,       // malformed GGUF / UPG / tokenizer data
  kIo,               // open/read/write/mmap failures
  kUnsupported,      // valid input we do not handle (unknown tensor type, architecture)
  kOutOfRange,       // context overflow, index out of range
  kResource,         // out of memory (host or device)
  kDevice,           // CUDA / driver failures
  kNumeric,          // NaN or infinity where a finite value is needed (broken weights, overflow)
  kInternal,         // broken invariant
};

const char* error_kind_name(ErrorKind kind);

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

[[noreturn]] void throw_error(ErrorKind kind, const std::string& message);
[[noreturn]] void check_failed(const char* expr, const char* file, int line, const std::string& detail);

}  // namespace pdvm

#define PDVM_CHECK(cond)                                                   \
  do {                                                                     \
    if (!(cond)) ::pdvm::check_failed(#cond, __FILE__, __LINE__, {});      \
  } while (0)

#define PDVM_CHECK_MSG(cond, msg)                                          \
  do {                                                                     \
    if (!(cond)) ::pdvm::check_failed(#cond, __FILE__, __LINE__, (msg));   \
  } while (0)
