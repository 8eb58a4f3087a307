// Backends by name. Each backend registers a factory from its own source file with
// PDVM_REGISTER_BACKEND, so linking a backend library in (e.g. pdvm_cuda) is all it takes to
// make "cuda" selectable; nothing central lists the backends.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "pdvm/backend.h"

namespace pdvm {

using BackendFactory = std::function<std::unique_ptr<Backend>(const BackendOptions&)>;

// Registers `factory` under `name`; registering a name twice is an internal error.
void register_backend(std::string name, std::string description, BackendFactory factory);

// Creates the backend registered under `name`; Error(kInvalidArgument) listing the known
// names when there is none.
std::unique_ptr<Backend> create_backend(std::string_view name, const BackendOptions& options = {});

struct BackendInfo {
  std::string name;
  std::string description;
};
std::vector<BackendInfo> registered_backends();  // sorted by name

struct BackendRegistrar {
  BackendRegistrar(std::string name, std::string description, BackendFactory factory) {
    register_backend(std::move(name), std::move(description), std::move(factory));
  }
};

}  // namespace pdvm

#define PDVM_BACKEND_CAT2(a, b) a##b
#define PDVM_BACKEND_CAT(a, b) PDVM_BACKEND_CAT2(a, b)
// At namespace scope in the backend's .cpp, e.g.
//   PDVM_REGISTER_BACKEND("cuda", "NVIDIA GPUs", [](const BackendOptions& o) { ... });
// The library holding it must be linked whole (see CMakeLists.txt) so the registrar is kept.
#define PDVM_REGISTER_BACKEND(name, description, factory)                             \
  static ::pdvm::BackendRegistrar PDVM_BACKEND_CAT(pdvm_backend_registrar_, __LINE__)( \
      name, description, factory)
