#include "pdvm/backend_registry.h"

#include <map>

#include "pdvm/error.h"

namespace pdvm {
namespace {

struct Entry {
  std::string description;
  BackendFactory factory;
};

// Function-local so registrars in other translation units may run in any order.
std::map<std::string, Entry, std::less<>>& registry() {
  static std::map<std::string, Entry, std::less<>> entries;
  return entries;
}

}  // namespace

void register_backend(std::string name, std::string description, BackendFactory factory) {
  PDVM_CHECK_MSG(!registry().contains(name), "backend '" + name + "' registered twice");
  registry().emplace(std::move(name), Entry{std::move(description), std::move(factory)});
}

std::unique_ptr<Backend> create_backend(std::string_view name, const BackendOptions& options) {
  auto it = registry().find(name);
  if (it == registry().end()) {
    std::string known;
    for (const auto& [known_name, entry] : registry()) known += (known.empty() ? "" : ", ") + known_name;
    throw_error(ErrorKind::kInvalidArgument,
                "unknown backend '" + std::string(name) + "' (available: " + known + ")");
  }
  return it->second.factory(options);
}

std::vector<BackendInfo> registered_backends() {
  std::vector<BackendInfo> infos;
  for (const auto& [name, entry] : registry()) infos.push_back({name, entry.description});
  return infos;
}

}  // namespace pdvm
