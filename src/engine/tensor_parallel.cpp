#include "engine/tensor_parallel.h"

#include "pdvm/error.h"

namespace pdvm {
namespace {

bool is_abandoned_collective(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const CollectiveAbandoned&) {
    return true;
  } catch (...) {
    return false;
  }
}

}  // namespace

TensorParallelPeers::TensorParallelPeers(std::vector<std::unique_ptr<Communicator>> communicators)
    : communicators_(std::move(communicators)) {
  PDVM_CHECK(!communicators_.empty());
  const size_t n_peers = communicators_.size() - 1;
  errors_.resize(n_peers);
  for (size_t i = 0; i < n_peers; ++i) threads_.emplace_back([this, i] { worker(i); });
}

TensorParallelPeers::~TensorParallelPeers() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  job_posted_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void TensorParallelPeers::abort_all() {
  for (auto& c : communicators_) c->abort();
}

void TensorParallelPeers::worker(size_t index) {
  uint64_t seen = 0;
  for (;;) {
    const std::function<void(PeerRank&)>* job = nullptr;
    {
      std::unique_lock lock(mutex_);
      job_posted_.wait(lock, [&] { return stopping_ || job_generation_ != seen; });
      if (stopping_) return;
      seen = job_generation_;
      job = job_;
    }
    std::exception_ptr error;
    try {
      (*job)(peers_[index]);
    } catch (...) {
      error = std::current_exception();
      abort_all();
    }
    {
      std::lock_guard lock(mutex_);
      errors_[index] = error;
      ++n_done_;
    }
    job_done_.notify_one();
  }
}

void TensorParallelPeers::run(const std::function<void()>& rank0, const std::function<void(PeerRank&)>& peer) {
  if (failed_) {
    throw_error(ErrorKind::kInternal, "tensor parallel: a rank failed earlier; open a new session");
  }
  PDVM_CHECK(peers_.size() == threads_.size());
  {
    std::lock_guard lock(mutex_);
    job_ = &peer;
    n_done_ = 0;
    ++job_generation_;
  }
  job_posted_.notify_all();
  std::exception_ptr error;
  try {
    rank0();
  } catch (...) {
    error = std::current_exception();
    abort_all();
  }
  std::unique_lock lock(mutex_);
  job_done_.wait(lock, [&] { return n_done_ == threads_.size(); });
  job_ = nullptr;
  // The ranks that only saw their collective abandoned hide the cause: report the failed rank's.
  for (std::exception_ptr& e : errors_) {
    if (e && (!error || (is_abandoned_collective(error) && !is_abandoned_collective(e)))) error = e;
    e = nullptr;
  }
  if (error) {
    failed_ = true;
    std::rethrow_exception(error);
  }
}

}  // namespace pdvm
