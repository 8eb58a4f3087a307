// How much host memory this process can still use.
#pragma once

#include <cstdint>
#include <optional>

namespace pdvm {

// The smaller of the kernel's MemAvailable estimate and the room left under this process's
// cgroup (v2) memory limit; nullopt when neither can be read.
std::optional<uint64_t> available_host_memory();

}  // namespace pdvm
