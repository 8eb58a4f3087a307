// The "auto" backend: the GPU when one is usable, otherwise the CPU.
#include <string>

#include "pdvm/backend_registry.h"
#include "pdvm/error.h"

namespace pdvm {
namespace {

bool is_registered(const std::string& name) {
  for (const BackendInfo& info : registered_backends())
    if (info.name == name) return true;
  return false;
}

std::unique_ptr<Backend> make_auto_backend(const BackendOptions& options) {
  if (is_registered("cuda")) {
    try {
      return create_backend("cuda", options);
    } catch (const Error& e) {
      // No device or no driver here: fall back. Other failures are real errors.
      if (e.kind() != ErrorKind::kDevice) throw;
    }
  }
  return create_backend("cpu", options);
}

PDVM_REGISTER_BACKEND("auto", "cuda when a GPU is usable, else cpu", make_auto_backend);

}  // namespace
}  // namespace pdvm
