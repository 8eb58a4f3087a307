// The ranks 1..N-1 of a tensor-parallel Session (rank 0 is the Session's own backend, model
// and cache) and the threads that drive them: each peer rank has its own backend (a GPU, or a
// CPU backend for the in-process group), its shard of the model and its share of the KV cache
// (its KV heads), and runs every forward pass on its own persistent thread, in step with rank
// 0 through the communicators.
#pragma once

#include <condition_variable>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "pdvm/backend.h"
#include "pdvm/communicator.h"
#include "pdvm/kv_cache.h"
#include "pdvm/model.h"

namespace pdvm {

struct PeerRank {
  int rank = 0;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<KvCache> cache;
  ForwardWorkspace batch_ws, decode_ws;
};

class TensorParallelPeers {
 public:
  // Owns the group's communicators (rank r's is communicator(r)) and starts one thread for
  // each rank >= 1; the caller then fills peers() (peers()[r - 1] is rank r) before run().
  explicit TensorParallelPeers(std::vector<std::unique_ptr<Communicator>> communicators);
  ~TensorParallelPeers();
  TensorParallelPeers(const TensorParallelPeers&) = delete;
  TensorParallelPeers& operator=(const TensorParallelPeers&) = delete;

  int n_ranks() const { return static_cast<int>(communicators_.size()); }
  Communicator& communicator(int rank) { return *communicators_[static_cast<size_t>(rank)]; }
  std::vector<PeerRank>& peers() { return peers_; }

  // Runs rank0() on the calling thread and peer(p) on each peer's thread, and returns when all
  // are done. If any rank throws, the communicators are aborted (so no rank waits for it in a
  // collective) and the failed rank's error is rethrown (not a CollectiveAbandoned of a rank that
  // waited for it); the group refuses to run afterwards.
  void run(const std::function<void()>& rank0, const std::function<void(PeerRank&)>& peer);

 private:
  void worker(size_t index);
  void abort_all();

  std::vector<std::unique_ptr<Communicator>> communicators_;
  std::vector<PeerRank> peers_;
  std::mutex mutex_;
  std::condition_variable job_posted_, job_done_;
  const std::function<void(PeerRank&)>* job_ = nullptr;
  uint64_t job_generation_ = 0;
  size_t n_done_ = 0;
  bool stopping_ = false;
  bool failed_ = false;
  std::vector<std::exception_ptr> errors_;
  std::vector<std::thread> threads_;
};

}  // namespace pdvm
