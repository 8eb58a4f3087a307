#include "util/host_memory.h"

#include <algorithm>
#include <fstream>
#include <string>

namespace pdvm {
namespace {

std::optional<uint64_t> meminfo_available() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  uint64_t kib = 0;
  std::string unit;
  while (meminfo >> key >> kib) {
    std::getline(meminfo, unit);
    if (key == "MemAvailable:") return kib * 1024;
  }
  return std::nullopt;
}

std::optional<uint64_t> read_number(const char* path) {
  std::ifstream in(path);
  uint64_t value = 0;
  if (in >> value) return value;
  return std::nullopt;  // missing, or "max" (no limit)
}

std::optional<uint64_t> cgroup_room() {
  // The cgroup of this process as /proc/self/cgroup names it ("0::/path" under cgroup v2).
  std::ifstream cgroup("/proc/self/cgroup");
  std::string line;
  while (std::getline(cgroup, line)) {
    if (!line.starts_with("0::")) continue;
    const std::string dir = "/sys/fs/cgroup" + line.substr(3);
    const auto limit = read_number((dir + "/memory.max").c_str());
    const auto used = read_number((dir + "/memory.current").c_str());
    if (!limit || !used) return std::nullopt;
    return *limit > *used ? *limit - *used : 0;
  }
  return std::nullopt;
}

}  // namespace

std::optional<uint64_t> available_host_memory() {
  const auto system = meminfo_available();
  const auto cgroup = cgroup_room();
  if (system && cgroup) return std::min(*system, *cgroup);
  return system ? system : cgroup;
}

}  // namespace pdvm
