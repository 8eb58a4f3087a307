// The communicator-group registry and the "in-process" group: ranks are threads of this
// process, the all-reduce and the gather go through host memory. Each rank copies its tensor to a host
// buffer, and after a rendezvous every rank sums all buffers in rank order, so every rank gets
// the same bits whatever the thread timing.
#include <algorithm>
#include <condition_variable>
#include <map>
#include <mutex>

#include "pdvm/communicator.h"
#include "pdvm/error.h"

namespace pdvm {
namespace {

std::map<std::string, CommunicatorGroupFactory, std::less<>>& registry() {
  static std::map<std::string, CommunicatorGroupFactory, std::less<>> entries;
  return entries;
}

// A reusable barrier that a failing rank can break, so the others throw instead of waiting
// forever for it.
class Rendezvous {
 public:
  explicit Rendezvous(int n_ranks) : n_ranks_(n_ranks) {}

  void arrive_and_wait() {
    std::unique_lock lock(mutex_);
    if (aborted_) throw_aborted();
    const uint64_t generation = generation_;
    if (++arrived_ == n_ranks_) {
      arrived_ = 0;
      ++generation_;
      released_.notify_all();
      return;
    }
    released_.wait(lock, [&] { return generation_ != generation || aborted_; });
    if (generation_ == generation) throw_aborted();
  }

  void abort() {
    std::lock_guard lock(mutex_);
    aborted_ = true;
    released_.notify_all();
  }

 private:
  [[noreturn]] static void throw_aborted() {
    throw CollectiveAbandoned("in-process");
  }

  const int n_ranks_;
  std::mutex mutex_;
  std::condition_variable released_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
  bool aborted_ = false;
};

struct SharedState {
  explicit SharedState(int n_ranks) : rendezvous(n_ranks), inputs(n_ranks), counts(n_ranks) {}
  Rendezvous rendezvous;
  std::vector<const float*> inputs;  // each rank's host copy, valid between the two rendezvous
  std::vector<int64_t> counts;
};

class InProcessCommunicator final : public Communicator {
 public:
  InProcessCommunicator(std::shared_ptr<SharedState> shared, int rank)
      : shared_(std::move(shared)), rank_(rank) {}

  std::string name() const override { return "in-process"; }
  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(shared_->inputs.size()); }
  bool recordable() const override { return false; }
  void abort() override { shared_->rendezvous.abort(); }

  void all_reduce_sum(Backend& backend, Tensor& x) override {
    PDVM_CHECK(x.type == TensorType::kF32);
    const uint64_t bytes = static_cast<uint64_t>(x.n_elems()) * sizeof(float);
    staging_.resize(static_cast<size_t>(x.n_elems()));
    backend.read(x, staging_.data(), bytes);
    all_reduce_sum_host(staging_.data(), staging_.size());
    backend.write(x, staging_.data(), bytes);
  }

  void gather_columns(Backend& backend, const Tensor& part, Tensor& whole,
                      const std::vector<int64_t>& counts) override {
    PDVM_CHECK(part.type == TensorType::kF32 && static_cast<int>(counts.size()) == size() &&
               part.ne[0] == counts[rank_]);
    const int64_t rows = part.n_rows();
    staging_.resize(static_cast<size_t>(part.n_elems()));
    backend.read(part, staging_.data(), staging_.size() * sizeof(float));
    shared_->inputs[rank_] = staging_.data();
    shared_->counts[rank_] = part.n_elems();
    shared_->rendezvous.arrive_and_wait();
    if (rank_ == 0) {
      int64_t width = 0;
      for (int r = 0; r < size(); ++r) {
        PDVM_CHECK_MSG(shared_->counts[r] == counts[r] * rows, "tensor parallel: ranks gather different shapes");
        width += counts[r];
      }
      PDVM_CHECK(whole.type == TensorType::kF32 && whole.ne[0] == width && whole.n_rows() == rows);
      sum_.resize(static_cast<size_t>(width * rows));
      int64_t first = 0;
      for (int r = 0; r < size(); ++r) {
        for (int64_t row = 0; row < rows; ++row) {
          const float* in = shared_->inputs[r] + row * counts[r];
          std::copy(in, in + counts[r], sum_.begin() + row * width + first);
        }
        first += counts[r];
      }
    }
    // The peers keep their inputs until rank 0 has copied them.
    shared_->rendezvous.arrive_and_wait();
    if (rank_ == 0) backend.write(whole, sum_.data(), sum_.size() * sizeof(float));
  }

  void all_reduce_sum_host(float* data, size_t count) override {
    const int64_t n = static_cast<int64_t>(count);
    sum_.resize(count);
    shared_->inputs[rank_] = data;
    shared_->counts[rank_] = n;
    shared_->rendezvous.arrive_and_wait();
    for (int r = 0; r < size(); ++r) {
      PDVM_CHECK_MSG(shared_->counts[r] == n, "tensor parallel: ranks all-reduce tensors of different sizes");
    }
    std::copy(shared_->inputs[0], shared_->inputs[0] + n, sum_.begin());
    for (int r = 1; r < size(); ++r) {
      const float* in = shared_->inputs[r];
      for (int64_t i = 0; i < n; ++i) sum_[i] += in[i];
    }
    // Nobody may overwrite its input before every rank has read it.
    shared_->rendezvous.arrive_and_wait();
    std::copy(sum_.begin(), sum_.end(), data);
  }

 private:
  std::shared_ptr<SharedState> shared_;
  const int rank_;
  std::vector<float> staging_, sum_;  // sum_: the all-reduce's result, or rank 0's gathered rows
};

std::vector<std::unique_ptr<Communicator>> make_in_process_group(const std::vector<int>& devices) {
  PDVM_CHECK(!devices.empty());
  auto shared = std::make_shared<SharedState>(static_cast<int>(devices.size()));
  std::vector<std::unique_ptr<Communicator>> group;
  for (int r = 0; r < static_cast<int>(devices.size()); ++r) {
    group.push_back(std::make_unique<InProcessCommunicator>(shared, r));
  }
  return group;
}

}  // namespace

void Communicator::all_reduce_sum_on_stream(float*, size_t, void*) {
  throw_error(ErrorKind::kUnsupported, "the " + name() + " communicator cannot all-reduce on a device stream");
}

void Communicator::all_reduce_sum_host(float*, size_t) {
  throw_error(ErrorKind::kUnsupported, "the " + name() + " communicator cannot all-reduce host memory");
}

Communicator::DeviceCollectives Communicator::device_collectives(size_t, int) {
  throw_error(ErrorKind::kUnsupported, "the " + name() + " communicator has no in-kernel collectives (use nccl)");
}

void register_communicator_group(std::string name, CommunicatorGroupFactory factory) {
  PDVM_CHECK_MSG(!registry().contains(name), "communicator group '" + name + "' registered twice");
  registry().emplace(std::move(name), std::move(factory));
}

std::vector<std::unique_ptr<Communicator>> create_communicator_group(std::string_view name,
                                                                     const std::vector<int>& devices) {
  auto it = registry().find(name);
  if (it == registry().end()) {
    std::string known;
    for (const std::string& k : registered_communicator_groups()) known += (known.empty() ? "" : ", ") + k;
    throw_error(ErrorKind::kInvalidArgument,
                "unknown communicator '" + std::string(name) + "' (available: " + known + ")");
  }
  return it->second(devices);
}

std::vector<std::string> registered_communicator_groups() {
  std::vector<std::string> names;
  for (const auto& [name, factory] : registry()) names.push_back(name);
  return names;
}

PDVM_REGISTER_COMMUNICATOR_GROUP("in-process", make_in_process_group);

}  // namespace pdvm
