// Registers the PDVM fused decoder as the Session's decode accelerator (--gpu-mode layer|token),
// split over several GPUs with --tp (FusedTensorParallel): layer mode with the all-reduces
// between two launches per layer, token mode with the all-reduces inside its one launch per
// token (NCCL's device API).
#include <algorithm>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "pdvm/decode_accelerator.h"
#include "pdvm/error.h"
#include "pdvm/gguf.h"
#include "pdvm/pdvm_fused.h"
#include "pdvm/pdvm_fused_tp.h"

namespace pdvm {
namespace {

int checked_position(int64_t position) {
  PDVM_CHECK(position >= 0 && position <= std::numeric_limits<int>::max());
  return static_cast<int>(position);
}

// Decoder: FusedDecoder or FusedTensorParallel.
template <class Decoder>
class FusedAccelerator final : public DecodeAccelerator {
  static constexpr bool kSplit = std::is_same_v<Decoder, FusedTensorParallel>;

 public:
  FusedAccelerator(std::unique_ptr<Decoder> decoder, FusedMode mode) : decoder_(std::move(decoder)), mode_(mode) {}

  void decode(int32_t token, int64_t position) override {
    if constexpr (kSplit) {
      last_ = decoder_->execute_model(token, checked_position(position), mode_);
    } else {
      const bool queued = ahead_ && position == position_ + 1 && token == ahead_token_;
      ahead_ = false;
      drawn_ = false;
      if (!queued) decoder_->queue_step(token, checked_position(position), mode_);
      position_ = checked_position(position);
      token_ = token;
    }
  }
  int32_t last_argmax() override {
    if constexpr (kSplit) {
      return last_;
    } else {
      redo_if_drawn();
      return decoder_->queued_token(position_);
    }
  }
  // Queues the next step before waiting for this one, so the GPU runs it while the host takes
  // the token; a later decode of that token at that position finds it already running.
  int32_t last_argmax_run_ahead() override {
    if constexpr (kSplit) {
      return last_;
    } else {
      redo_if_drawn();
      if (ahead_) return decoder_->queued_token(position_);
      return token_queuing_next(true);
    }
  }
  std::optional<uint64_t> kernel_launches() const override { return decoder_->kernel_launches(); }
  double time_token_all_reduces(int tokens) override {
    if constexpr (kSplit) return decoder_->time_all_reduces(tokens) / 1e3 / tokens;
    else return 0.0;
  }
  // The Session shares K/V rows (batched prompts) with an unsplit decoder only.
  void write_kv(int layer, int64_t first, int64_t count, const void* k_rows, const void* v_rows) override {
    if constexpr (kSplit) {
      throw_error(ErrorKind::kUnsupported, "fused tensor parallel: no shared KV rows");
    } else {
      ahead_ = false;  // the queued step attended to the rows these replace
      decoder_->write_kv(layer, checked_position(first), checked_position(count), k_rows, v_rows);
    }
  }
  void read_kv(int layer, int64_t first, int64_t count, void* k_rows, void* v_rows) override {
    if constexpr (kSplit) throw_error(ErrorKind::kUnsupported, "fused tensor parallel: no shared KV rows");
    else decoder_->read_kv(layer, checked_position(first), checked_position(count), k_rows, v_rows);
  }
  void last_logits(std::span<float> out) override {
    if constexpr (!kSplit) redo_if_ahead();
    const std::vector<float> logits = decoder_->logits();
    PDVM_CHECK(out.size() == logits.size());
    std::copy(logits.begin(), logits.end(), out.begin());
  }
  bool top_logits(size_t n, std::vector<LogitCandidate>& out) override {
    if constexpr (kSplit) {
      return false;
    } else {
      if (n == 0 || n > static_cast<size_t>(decoder_->config().n_vocab)) return false;
      redo_if_ahead();
      return decoder_->top_logits(static_cast<int>(n), out);
    }
  }

  bool draw_token(const DeviceDraw& draw, bool run_ahead, int32_t& token) override {
    if constexpr (kSplit) {
      return false;
    } else {
      redo_if_ahead();
      if (!decoder_->queue_draw(position_, draw)) return false;
      drawn_ = true;
      const int32_t drawn = token_queuing_next(run_ahead);
      if (drawn == kNotDrawn) {
        redo_if_ahead();  // the host samples this step's logits
        return false;
      }
      token = drawn;
      return true;
    }
  }

 private:
  // This step's token (its argmax, or the draw queued after it); with `run_ahead` and room in
  // the context, the next step, fed that token on the device, is queued before the wait.
  int32_t token_queuing_next(bool run_ahead) {
    const bool ahead = run_ahead && position_ + 1 < decoder_->config().n_ctx;
    if (ahead) decoder_->queue_next_step(mode_);
    const int32_t token = decoder_->queued_token(position_);
    ahead_ = ahead;
    ahead_token_ = token;
    return token;
  }
  // The step queued ahead overwrote the logits: this step again (it rewrites the same K/V row).
  void redo_if_ahead() {
    if (ahead_) decode(token_, position_);
  }
  // A draw replaced the step's greedy token in the history: the step again for its argmax.
  void redo_if_drawn() {
    if (drawn_) decode(token_, position_);
  }

  std::unique_ptr<Decoder> decoder_;
  FusedMode mode_;
  int32_t last_ = -1;  // split decoders: the greedy token of the last step
  // Unsplit: the last step decoded, and whether the next one (its input ahead_token_) is queued.
  int position_ = -1;
  int32_t token_ = -1;
  bool ahead_ = false;
  int32_t ahead_token_ = -1;
  bool drawn_ = false;  // the last step's token in the history is a draw, not its argmax
};

int checked_context(int64_t n_ctx) {
  if (n_ctx <= 0 || n_ctx > std::numeric_limits<int>::max() / 2)
    throw_error(ErrorKind::kInvalidArgument, "fused decode: context " + std::to_string(n_ctx) + " out of range");
  return static_cast<int>(n_ctx);
}

std::unique_ptr<DecodeAccelerator> make_accelerator(const GgufFile& file, int64_t n_ctx, std::string_view mode,
                                                    const AcceleratorSplit& split) {
  const FusedMode fused_mode = mode == "token" ? FusedMode::kToken : FusedMode::kLayer;
  const FusedModelView view = fused_view_from_gguf(file, checked_context(n_ctx));
  if (split.communicator.empty())
    return std::make_unique<FusedAccelerator<FusedDecoder>>(std::make_unique<FusedDecoder>(view), fused_mode);
  // A token in one launch leaves no point between layers for the communicator's all-reduces:
  // the kernel all-reduces itself (NCCL 2.28.9+ only; otherwise kUnsupported, and the Session
  // falls back to the unfused split with a notice).
  const FusedAllReduce all_reduce =
      fused_mode == FusedMode::kToken ? FusedAllReduce::kInKernel : FusedAllReduce::kBetweenLaunches;
  return std::make_unique<FusedAccelerator<FusedTensorParallel>>(
      std::make_unique<FusedTensorParallel>(view, split.devices, split.communicator, all_reduce), fused_mode);
}

const DecodeAcceleratorRegistrar kRegistrar(make_accelerator);

}  // namespace
}  // namespace pdvm
