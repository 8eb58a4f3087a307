// The KV cache refuses sizes that cannot fit before allocating (a clear error instead of an
// OOM kill), and the host memory estimate it uses is plausible.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <limits>
#include <random>
#include <string>

#include "pdvm/backend_registry.h"
#include "pdvm/error.h"
#include "pdvm/kv_cache.h"
#include "test_support.h"
#include "util/host_memory.h"

namespace pdvm {
namespace {

KvCacheShape random_shape(TensorType type) {
  KvCacheShape shape;
  shape.n_layer = std::uniform_int_distribution<int>(1, 40)(test::rng());
  shape.row_width = 64 * std::uniform_int_distribution<int>(1, 16)(test::rng());
  shape.type = type;
  return shape;
}

TEST(HostMemory, AvailableIsPositiveAndAtMostPhysical) {
  const auto available = available_host_memory();
  ASSERT_TRUE(available.has_value());
  const uint64_t physical = static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  EXPECT_GT(*available, 0u);
  EXPECT_LE(*available, physical);
}

TEST(KvCacheMemory, ContextBeyondAvailableMemoryIsRefusedUpFront) {
  auto backend = create_backend("cpu-ref");
  const auto available = backend->available_memory();
  ASSERT_TRUE(available.has_value());
  for (TensorType type : {TensorType::kF32, TensorType::kF16}) {
    KvCacheShape shape = random_shape(type);
    const uint64_t per_position = 2ull * shape.n_layer * static_cast<uint64_t>(type_bytes(type, shape.row_width));
    // Just past what fits, up to 1000 times more.
    const uint64_t fits = *available / per_position;
    shape.n_ctx = static_cast<int64_t>(fits + 1 + std::uniform_int_distribution<uint64_t>(0, fits * 1000)(test::rng()));
    try {
      KvCache cache(*backend, shape);
      FAIL() << "a KV cache of " << shape.n_ctx << " positions was allocated";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kResource);
      const std::string message = e.what();
      EXPECT_NE(message.find("KV cache"), std::string::npos) << message;
      EXPECT_NE(message.find(std::to_string(shape.n_ctx)), std::string::npos) << message;
      EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    }
  }
}

TEST(KvCacheMemory, ByteCountOverflowIsRefused) {
  auto backend = create_backend("cpu-ref");
  KvCacheShape shape = random_shape(TensorType::kF32);
  shape.n_ctx = std::numeric_limits<int64_t>::max() - std::uniform_int_distribution<int64_t>(0, 1000)(test::rng());
  try {
    KvCache cache(*backend, shape);
    FAIL() << "a KV cache of " << shape.n_ctx << " positions was allocated";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kResource);
    EXPECT_NE(std::string(e.what()).find("64-bit"), std::string::npos) << e.what();
  }
}

TEST(KvCacheMemory, ContextThatFitsIsAllocated) {
  for (const char* name : {"cpu-ref", "cpu"}) {
    auto backend = create_backend(name);
    KvCacheShape shape = random_shape(TensorType::kF32);
    shape.n_ctx = std::uniform_int_distribution<int64_t>(1, 256)(test::rng());
    KvCache cache(*backend, shape);
    EXPECT_EQ(cache.n_bytes(), 2ull * shape.n_layer * shape.n_ctx * shape.row_width * sizeof(float)) << name;
  }
}

}  // namespace
}  // namespace pdvm
