// Registers the PDVM fused decoder as the Session's decode accelerator (--gpu-mode layer|token).
#include <algorithm>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "pdvm/decode_accelerator.h"
#include "pdvm/error.h"
#include "pdvm/gguf.h"
#include "pdvm/pdvm_fused.h"

namespace pdvm {
namespace {

class FusedAccelerator final : public DecodeAccelerator {
 public:
  FusedAccelerator(const GgufFile& file, int64_t n_ctx, FusedMode mode)
      : decoder_(fused_view_from_gguf(file, checked_context(n_ctx))), mode_(mode) {}

  void decode(int32_t token, int64_t position) override {
    last_ = decoder_.execute_model(token, static_cast<int>(position), mode_);
  }
  int32_t last_argmax() override { return last_; }
  std::optional<uint64_t> kernel_launches() const override { return decoder_.kernel_launches(); }
  void write_kv(int layer, int64_t first, int64_t count, const void* k_rows, const void* v_rows) override {
    decoder_.write_kv(layer, checked_position(first), checked_position(count), k_rows, v_rows);
  }
  void read_kv(int layer, int64_t first, int64_t count, void* k_rows, void* v_rows) override {
    decoder_.read_kv(layer, checked_position(first), checked_position(count), k_rows, v_rows);
  }
  void last_logits(std::span<float> out) override {
    const std::vector<float> logits = decoder_.logits();
    PDVM_CHECK(out.size() == logits.size());
    std::copy(logits.begin(), logits.end(), out.begin());
  }

 private:
  static int checked_context(int64_t n_ctx) {
    if (n_ctx <= 0 || n_ctx > std::numeric_limits<int>::max() / 2)
      throw_error(ErrorKind::kInvalidArgument, "fused decode: context " + std::to_string(n_ctx) + " out of range");
    return static_cast<int>(n_ctx);
  }

  static int checked_position(int64_t position) {
    PDVM_CHECK(position >= 0 && position <= std::numeric_limits<int>::max());
    return static_cast<int>(position);
  }

  FusedDecoder decoder_;
  FusedMode mode_;
  int32_t last_ = -1;
};

const DecodeAcceleratorRegistrar kRegistrar([](const GgufFile& file, int64_t n_ctx, std::string_view mode) {
  return std::unique_ptr<DecodeAccelerator>(
      new FusedAccelerator(file, n_ctx, mode == "token" ? FusedMode::kToken : FusedMode::kLayer));
});

}  // namespace
}  // namespace pdvm
