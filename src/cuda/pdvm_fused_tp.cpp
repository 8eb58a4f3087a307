// FusedTensorParallel: the model split over the ranks (see pdvm/pdvm_fused_tp.h), one
// FusedDecoder per rank on its GPU, driven by TensorParallelPeers' threads.
#include "pdvm/pdvm_fused_tp.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <functional>

#include "cuda/check.cuh"
#include "engine/tensor_parallel.h"
#include "pdvm/communicator.h"
#include "pdvm/error.h"
#include "pdvm/model.h"

namespace pdvm {
namespace {

[[noreturn]] void refuse(const std::string& why) { throw_error(ErrorKind::kUnsupported, "fused tensor parallel: " + why); }

// Rows [rank * rows / n, (rank + 1) * rows / n): a contiguous part of the tensor.
FusedWeightView row_part(const FusedWeightView& w, int rank, int n_ranks) {
  if (!w.data || n_ranks == 1) return w;
  if (w.rows % n_ranks != 0) refuse(w.name + " has " + std::to_string(w.rows) + " rows, not divisible by " + std::to_string(n_ranks));
  FusedWeightView part = w;
  part.rows = w.rows / n_ranks;
  part.data = static_cast<const uint8_t*>(w.data) + rank * part.rows * type_bytes(w.type, w.cols);
  return part;
}

// Columns [rank * cols / n, ...) of every row, gathered into `storage`; the split must fall on
// the type's block boundaries.
FusedWeightView column_part(const FusedWeightView& w, int rank, int n_ranks, std::vector<std::vector<uint8_t>>& storage) {
  if (!w.data || n_ranks == 1) return w;
  const int64_t block = type_info(w.type).block_elems;
  const int64_t cols = w.cols / n_ranks;
  if (w.cols % n_ranks != 0 || cols % block != 0)
    refuse(w.name + " (" + std::string(type_name(w.type)) + ", blocks of " + std::to_string(block) + ") cannot be split into " +
           std::to_string(n_ranks) + " parts of " + std::to_string(w.cols) + " / " + std::to_string(n_ranks) + " columns");
  const int64_t row_bytes = type_bytes(w.type, w.cols), part_bytes = type_bytes(w.type, cols);
  const int64_t offset = type_bytes(w.type, rank * cols);
  std::vector<uint8_t>& out = storage.emplace_back(static_cast<size_t>(w.rows * part_bytes));
  const auto* in = static_cast<const uint8_t*>(w.data);
  for (int64_t r = 0; r < w.rows; ++r)
    std::copy_n(in + r * row_bytes + offset, part_bytes, out.data() + r * part_bytes);
  FusedWeightView part = w;
  part.cols = cols;
  part.data = out.data();
  return part;
}

bool has_upg_weight(const FusedModelView& model) {
  auto upg = [](const FusedWeightView& w) { return w.data && is_upg_type(w.type); };
  if (upg(model.token_embd) || upg(model.output)) return true;
  return std::any_of(model.layers.begin(), model.layers.end(), [&](const FusedLayerView& l) {
    return upg(l.wq) || upg(l.wk) || upg(l.wv) || upg(l.wo) || upg(l.gate) || upg(l.up) || upg(l.down);
  });
}

}  // namespace

struct FusedTensorParallel::Impl {
  FusedConfig config;
  std::vector<int> devices;
  FusedAllReduce all_reduce = FusedAllReduce::kBetweenLaunches;
  bool split_head = false;  // each rank runs its share of the head's rows (two launches a layer)
  std::unique_ptr<TensorParallelPeers> group;       // the communicators and the peers' threads
  std::vector<std::unique_ptr<FusedDecoder>> ranks;  // destroyed before the group

  void start(const FusedConfig& whole, const std::vector<int>& rank_devices, std::string_view communicator,
             FusedAllReduce how) {
    if (rank_devices.empty()) refuse("no ranks");
    config = whole;
    devices = rank_devices;
    all_reduce = how;
    split_head = rank_devices.size() > 1 && how == FusedAllReduce::kBetweenLaunches;
    group = std::make_unique<TensorParallelPeers>(create_communicator_group(communicator, devices));
    for (int r = 1; r < static_cast<int>(devices.size()); ++r) group->peers().emplace_back().rank = r;
    ranks.resize(devices.size());
  }

  // fn(rank) on every rank's thread at once; the first error is rethrown.
  void each(const std::function<void(int)>& fn) {
    group->run([&] { fn(0); }, [&](PeerRank& peer) { fn(peer.rank); });
  }

  void make_rank(int rank, const std::function<std::unique_ptr<FusedDecoder>()>& make) {
    PDVM_CUDA_CHECK(cudaSetDevice(devices[rank]));
    ranks[rank] = make();
    ranks[rank]->set_tensor_parallel(rank, &group->communicator(rank), all_reduce);
  }
};

FusedConfig FusedTensorParallel::shard_config(const FusedConfig& config, int n_ranks) {
  if (n_ranks < 1) refuse("needs at least one rank, got " + std::to_string(n_ranks));
  for (auto [what, count] : {std::pair<const char*, int>{"attention heads", config.n_head},
                             {"KV heads", config.n_head_kv},
                             {"FFN columns", config.n_ff}}) {
    if (count % n_ranks != 0)
      refuse(std::to_string(count) + " " + what + " cannot be split over " + std::to_string(n_ranks) + " ranks");
  }
  FusedConfig part = config;
  part.n_head /= n_ranks;
  part.n_head_kv /= n_ranks;
  part.n_ff /= n_ranks;
  return part;
}

FusedModelView FusedTensorParallel::shard(const FusedModelView& model, int rank, int n_ranks,
                                          std::vector<std::vector<uint8_t>>& storage, bool split_head) {
  PDVM_CHECK(rank >= 0 && rank < n_ranks);
  FusedModelView part;
  part.config = shard_config(model.config, n_ranks);
  if (n_ranks > 1 && has_upg_weight(model)) refuse("UPG weights cannot be split");
  part.token_embd = model.token_embd;
  part.output_norm = model.output_norm;
  part.output = model.output;
  if (split_head && n_ranks > 1) {
    // Tied: the share comes from the embedding, which stays whole for the lookups.
    const FusedWeightView& head = model.output.data ? model.output : model.token_embd;
    const int64_t first = split_first_row(head.rows, rank, n_ranks);
    part.output = head;
    part.output.rows = split_first_row(head.rows, rank + 1, n_ranks) - first;
    part.output.data = static_cast<const uint8_t*>(head.data) + first * type_bytes(head.type, head.cols);
    part.output_split = true;
    part.output_first_row = first;
  }
  part.rope_freq_factors = model.rope_freq_factors;
  part.upg_matrices = model.upg_matrices;
  for (const FusedLayerView& l : model.layers) {
    FusedLayerView p = l;
    p.wq = row_part(l.wq, rank, n_ranks);
    p.wk = row_part(l.wk, rank, n_ranks);
    p.wv = row_part(l.wv, rank, n_ranks);
    p.gate = row_part(l.gate, rank, n_ranks);
    p.up = row_part(l.up, rank, n_ranks);
    p.wo = column_part(l.wo, rank, n_ranks, storage);
    p.down = column_part(l.down, rank, n_ranks, storage);
    part.layers.push_back(std::move(p));
  }
  return part;
}

FusedTensorParallel::FusedTensorParallel() : impl_(std::make_unique<Impl>()) {}

FusedTensorParallel::FusedTensorParallel(const FusedModelView& model, const std::vector<int>& devices,
                                         std::string_view communicator, FusedAllReduce all_reduce)
    : FusedTensorParallel() {
  const int n_ranks = static_cast<int>(devices.size());
  shard_config(model.config, n_ranks);  // before any rank starts
  impl_->start(model.config, devices, communicator, all_reduce);
  impl_->each([&](int rank) {
    std::vector<std::vector<uint8_t>> storage;
    const FusedModelView part = shard(model, rank, n_ranks, storage, impl_->split_head);
    impl_->make_rank(rank, [&] { return std::make_unique<FusedDecoder>(part); });
  });
}

std::unique_ptr<FusedTensorParallel> FusedTensorParallel::synthesize(const FusedConfig& config, TensorType type,
                                                                     uint64_t seed, const std::vector<int>& devices,
                                                                     std::string_view communicator,
                                                                     FusedAllReduce all_reduce) {
  const FusedConfig part = shard_config(config, static_cast<int>(devices.size()));
  std::unique_ptr<FusedTensorParallel> tp(new FusedTensorParallel());
  tp->impl_->start(config, devices, communicator, all_reduce);
  // One seed for all: the replicated tensors (embedding, norms, head) come out the same.
  const int n_ranks = static_cast<int>(devices.size());
  tp->impl_->each([&](int rank) {
    const int64_t first = split_first_row(config.n_vocab, rank, n_ranks);
    const int64_t rows = tp->impl_->split_head ? split_first_row(config.n_vocab, rank + 1, n_ranks) - first : 0;
    tp->impl_->make_rank(rank, [&] {
      return FusedDecoder::synthesize(part, type, seed, static_cast<int>(first), static_cast<int>(rows));
    });
  });
  return tp;
}

FusedTensorParallel::~FusedTensorParallel() = default;

int FusedTensorParallel::n_ranks() const { return static_cast<int>(impl_->ranks.size()); }
std::string FusedTensorParallel::communicator_name() const { return impl_->group->communicator(0).name(); }
FusedAllReduce FusedTensorParallel::all_reduce() const { return impl_->all_reduce; }
const FusedConfig& FusedTensorParallel::config() const { return impl_->config; }

FusedFootprint FusedTensorParallel::footprint() const {
  FusedFootprint total;
  for (const auto& rank : impl_->ranks) {
    total.weight_bytes += rank->footprint().weight_bytes;
    total.kv_bytes_per_position += rank->footprint().kv_bytes_per_position;
  }
  return total;
}

uint64_t FusedTensorParallel::kernel_launches() const {
  uint64_t total = 0;
  for (const auto& rank : impl_->ranks) total += rank->kernel_launches();
  return total;
}

std::string FusedTensorParallel::quantized_handoffs() const { return impl_->ranks.front()->quantized_handoffs(); }

int FusedTensorParallel::execute_model(int token, int position, FusedMode mode) {
  return generate(token, position, 1, mode)[0];
}

std::vector<float> FusedTensorParallel::logits() const {
  if (!impl_->split_head) return impl_->ranks[0]->logits();
  // Rank 0 read last: its device stays the calling thread's current one, as without the split.
  std::vector<std::vector<float>> shares(impl_->ranks.size());
  for (size_t r = shares.size(); r-- > 0;) shares[r] = impl_->ranks[r]->logits();
  std::vector<float> all;
  for (const std::vector<float>& share : shares) all.insert(all.end(), share.begin(), share.end());
  return all;
}

std::vector<int> FusedTensorParallel::generate(int token, int position, int n_tokens, FusedMode mode) {
  std::vector<std::vector<int>> tokens(impl_->ranks.size());
  impl_->each([&](int rank) { tokens[rank] = impl_->ranks[rank]->generate(token, position, n_tokens, mode); });
  // Every rank feeds its own argmax back: they must agree (the all-reduce gives all the same x).
  for (size_t r = 1; r < tokens.size(); ++r) {
    if (tokens[r] != tokens[0])
      throw_error(ErrorKind::kInternal, "fused tensor parallel: rank " + std::to_string(r) +
                                            " generated other tokens than rank 0");
  }
  return tokens[0];
}

double FusedTensorParallel::time_generate(int token, int position, int n_tokens, FusedMode mode) {
  std::vector<double> ms(impl_->ranks.size());
  impl_->each([&](int rank) { ms[rank] = impl_->ranks[rank]->time_generate(token, position, n_tokens, mode); });
  return *std::max_element(ms.begin(), ms.end());
}

double FusedTensorParallel::time_all_reduces(int n_tokens) {
  std::vector<double> ms(impl_->ranks.size());
  impl_->each([&](int rank) { ms[rank] = impl_->ranks[rank]->time_all_reduces(n_tokens); });
  return *std::max_element(ms.begin(), ms.end());
}

}  // namespace pdvm
