// The "nccl" communicator group: one rank per GPU of this process (ncclCommInitAll), each
// all-reduce (and the head's gather, point to point to rank 0) enqueued on its rank's backend
// stream, so it stays in order with the ops and is captured into the decode step's CUDA graph
// like them.
//
// libnccl is opened when a group is first created rather than linked: a pdvm binary then still
// starts (and runs everything but --tp over NCCL) on machines without NCCL installed.
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <nccl.h>
#include <nccl_device.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "cuda/check.cuh"
#include "pdvm/communicator.h"
#include "pdvm/cuda_backend.h"
#include "pdvm/error.h"

namespace pdvm {
namespace {

struct NcclLibrary {
  decltype(&ncclGetVersion) get_version = nullptr;
  decltype(&ncclGetErrorString) error_string = nullptr;
  decltype(&ncclCommInitAll) comm_init_all = nullptr;
  decltype(&ncclCommFinalize) comm_finalize = nullptr;
  decltype(&ncclCommDestroy) comm_destroy = nullptr;
  decltype(&ncclCommAbort) comm_abort = nullptr;
  decltype(&ncclGroupStart) group_start = nullptr;
  decltype(&ncclGroupEnd) group_end = nullptr;
  decltype(&ncclAllReduce) all_reduce = nullptr;
  decltype(&ncclSend) send = nullptr;
  decltype(&ncclRecv) recv = nullptr;
  // NCCL >= 2.28's device API (in-kernel collectives); null where libnccl is older.
  decltype(&ncclMemAlloc) mem_alloc = nullptr;
  decltype(&ncclMemFree) mem_free = nullptr;
  decltype(&ncclCommWindowRegister) window_register = nullptr;
  decltype(&ncclCommWindowDeregister) window_deregister = nullptr;
  decltype(&ncclDevCommCreate) dev_comm_create = nullptr;
  decltype(&ncclDevCommDestroy) dev_comm_destroy = nullptr;
};

template <typename Function>
void resolve(void* handle, const char* symbol, Function& out) {
  out = reinterpret_cast<Function>(dlsym(handle, symbol));
  if (!out) throw_error(ErrorKind::kDevice, std::string("nccl: libnccl has no symbol ") + symbol);
}

NcclLibrary open_nccl() {
  void* handle = nullptr;
  std::string errors;
  for (const char* name : {"libnccl.so.2", "libnccl.so"}) {
    handle = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (handle) break;
    errors += std::string(errors.empty() ? "" : "; ") + dlerror();
  }
  if (!handle) {
    throw_error(ErrorKind::kDevice, "nccl: cannot load libnccl.so.2 (" + errors +
                                        "): install NCCL or add its folder to LD_LIBRARY_PATH, or use "
                                        "--tp-comm in-process");
  }
  NcclLibrary lib;
  resolve(handle, "ncclGetVersion", lib.get_version);
  resolve(handle, "ncclGetErrorString", lib.error_string);
  resolve(handle, "ncclCommInitAll", lib.comm_init_all);
  resolve(handle, "ncclCommFinalize", lib.comm_finalize);
  resolve(handle, "ncclCommDestroy", lib.comm_destroy);
  resolve(handle, "ncclCommAbort", lib.comm_abort);
  resolve(handle, "ncclGroupStart", lib.group_start);
  resolve(handle, "ncclGroupEnd", lib.group_end);
  resolve(handle, "ncclAllReduce", lib.all_reduce);
  resolve(handle, "ncclSend", lib.send);
  resolve(handle, "ncclRecv", lib.recv);
  auto optional = [&](const char* symbol, auto& out) {
    out = reinterpret_cast<std::remove_reference_t<decltype(out)>>(dlsym(handle, symbol));
  };
  optional("ncclMemAlloc", lib.mem_alloc);
  optional("ncclMemFree", lib.mem_free);
  optional("ncclCommWindowRegister", lib.window_register);
  optional("ncclCommWindowDeregister", lib.window_deregister);
  optional("ncclDevCommCreate", lib.dev_comm_create);
  optional("ncclDevCommDestroy", lib.dev_comm_destroy);
  return lib;
}

// Loaded once; a failed load throws and is retried by the next caller.
const NcclLibrary& nccl() {
  static const NcclLibrary lib = open_nccl();
  return lib;
}

void check(ncclResult_t result, const char* call) {
  if (result != ncclSuccess) {
    throw_error(ErrorKind::kDevice, std::string("nccl: ") + call + " failed: " + nccl().error_string(result));
  }
}

// The communicators of one group; finalized together from one thread (in an NCCL group) when
// the last rank lets go, since finalizing is collective.
struct Clique {
  Clique(std::vector<ncclComm_t> communicators, std::vector<int> rank_devices)
      : comms(std::move(communicators)),
        devices(std::move(rank_devices)),
        aborted(comms.size()),
        device_api(comms.size()) {}

  // A rank's in-kernel collectives (device_collectives()).
  struct DeviceApi {
    void* buffer = nullptr;  // ncclMemAlloc'd, registered as a symmetric window
    ncclWindow_t window = nullptr;
    ncclDevComm dev_comm{};
    ncclDevComm* dev_comm_on_device = nullptr;  // a copy the kernels take by pointer
    bool created = false;
    size_t window_bytes = 0;
    int lsa_barriers = 0;
  };

  std::vector<ncclComm_t> comms;
  std::vector<int> devices;
  std::vector<std::atomic<bool>> aborted;  // set from any rank's thread (abort())
  std::vector<DeviceApi> device_api;        // each rank's entry written by its own thread only

  // Returns once every rank has enqueued its copy of the current collective. Without it a rank
  // that enqueued an all-reduce may block in a CUDA call (a kernel's first, lazy load or a
  // cudaMalloc, which wait on their device while holding driver locks) whose device waits for
  // a peer that in turn needs that lock before it can enqueue its side: 2 GPUs hung in prefill.
  void all_enqueued() {
    std::unique_lock lock(mutex);
    if (broken) throw_abandoned();
    const uint64_t round = generation;
    if (++arrived == static_cast<int>(comms.size())) {
      arrived = 0;
      ++generation;
      released.notify_all();
      return;
    }
    released.wait(lock, [&] { return generation != round || broken; });
    if (generation == round) throw_abandoned();
  }

  void break_barrier() {
    std::lock_guard lock(mutex);
    broken = true;
    released.notify_all();
  }

  [[noreturn]] static void throw_abandoned() {
    throw CollectiveAbandoned("NCCL");
  }

  // Windows and device communicators go before their communicators. Both releases may be
  // collective: one thread per rank, as at creation (a single thread waiting on the first rank's
  // call could wait forever for the others). Skipped after an abort: the peers may be gone.
  void release_device_api(const NcclLibrary& lib) {
    if (std::any_of(aborted.begin(), aborted.end(), [](const std::atomic<bool>& a) { return a.load(); })) return;
    std::vector<std::thread> threads;
    for (size_t r = 0; r < comms.size(); ++r) {
      threads.emplace_back([&, r] {
        DeviceApi& d = device_api[r];
        cudaSetDevice(devices[r]);
        if (d.created) lib.dev_comm_destroy(comms[r], &d.dev_comm);
        if (d.window) lib.window_deregister(comms[r], d.window);
        if (d.dev_comm_on_device) cudaFree(d.dev_comm_on_device);
        if (d.buffer) lib.mem_free(d.buffer);
      });
    }
    for (std::thread& t : threads) t.join();
  }

  std::mutex mutex;
  std::condition_variable released;
  int arrived = 0;
  uint64_t generation = 0;
  bool broken = false;

  ~Clique() {
    const NcclLibrary& lib = nccl();
    release_device_api(lib);
    lib.group_start();
    for (size_t r = 0; r < comms.size(); ++r) {
      if (!aborted[r]) lib.comm_finalize(comms[r]);
    }
    lib.group_end();
    for (size_t r = 0; r < comms.size(); ++r) {
      if (!aborted[r]) lib.comm_destroy(comms[r]);
    }
  }
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(std::shared_ptr<Clique> clique, int rank) : clique_(std::move(clique)), rank_(rank) {}
  // The staging buffer is freed on the rank's device, as grow_staging allocated it, and the
  // caller's current device is left as it was.
  ~NcclCommunicator() override {
    if (!staging_) return;
    int current = 0;
    const bool restore = cudaGetDevice(&current) == cudaSuccess;
    cudaSetDevice(clique_->devices[rank_]);
    cudaFree(staging_);
    if (restore) cudaSetDevice(current);
  }
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  std::string name() const override { return "nccl"; }
  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(clique_->comms.size()); }
  bool recordable() const override { return true; }

  void abort() override {
    clique_->break_barrier();
    if (!clique_->aborted[rank_].exchange(true)) nccl().comm_abort(clique_->comms[rank_]);
  }

  void all_reduce_sum(Backend& backend, Tensor& x) override {
    PDVM_CHECK(x.type == TensorType::kF32);
    void* stream = backend.device_queue();
    if (!stream) {
      throw_error(ErrorKind::kInvalidArgument, "nccl: the " + backend.name() + " backend has no device stream");
    }
    all_reduce_sum_on_stream(static_cast<float*>(x.data), static_cast<size_t>(x.n_elems()), stream);
  }

  void all_reduce_sum_on_stream(float* data, size_t n, void* stream) override {
    if (clique_->aborted[rank_]) Clique::throw_abandoned();
    check(nccl().all_reduce(data, data, n, ncclFloat32, ncclSum, clique_->comms[rank_],
                            static_cast<cudaStream_t>(stream)),
          "ncclAllReduce");
    clique_->all_enqueued();
  }

  // Rank 0 receives every peer's block: a single row straight into its columns of `whole`
  // (recordable), several rows into a staging buffer first, then a strided copy per rank.
  void gather_columns(Backend& backend, const Tensor& part, Tensor& whole,
                      const std::vector<int64_t>& counts) override {
    PDVM_CHECK(part.type == TensorType::kF32 && static_cast<int>(counts.size()) == size() &&
               part.ne[0] == counts[rank_]);
    if (clique_->aborted[rank_]) Clique::throw_abandoned();
    const auto stream = static_cast<cudaStream_t>(backend.device_queue());
    if (!stream) {
      throw_error(ErrorKind::kInvalidArgument, "nccl: the " + backend.name() + " backend has no device stream");
    }
    const NcclLibrary& lib = nccl();
    ncclComm_t comm = clique_->comms[rank_];
    const int64_t rows = part.n_rows();
    if (rank_ != 0) {
      check(lib.send(part.data, static_cast<size_t>(part.n_elems()), ncclFloat32, 0, comm, stream), "ncclSend");
      clique_->all_enqueued();
      return;
    }
    int64_t width = 0;
    for (int64_t count : counts) width += count;
    PDVM_CHECK(whole.type == TensorType::kF32 && whole.ne[0] == width && whole.n_rows() == rows);
    auto* out = static_cast<float*>(whole.data);
    // Before any of this gather is enqueued here (a blocking allocation must not wait on a peer).
    if (rows > 1) grow_staging(static_cast<size_t>((width - counts[0]) * rows));
    check(lib.group_start(), "ncclGroupStart");
    int64_t first = counts[0], staged = 0;
    for (int r = 1; r < size(); ++r) {
      float* target = rows == 1 ? out + first : staging_ + staged;
      check(lib.recv(target, static_cast<size_t>(counts[r] * rows), ncclFloat32, r, comm, stream), "ncclRecv");
      first += counts[r];
      staged += counts[r] * rows;
    }
    check(lib.group_end(), "ncclGroupEnd");
    clique_->all_enqueued();
    auto place = [&](const float* block, int64_t column, int64_t count) {
      const size_t row_bytes = static_cast<size_t>(count) * sizeof(float);
      PDVM_CUDA_CHECK(cudaMemcpy2DAsync(out + column, static_cast<size_t>(width) * sizeof(float), block, row_bytes,
                                        row_bytes, static_cast<size_t>(rows), cudaMemcpyDeviceToDevice, stream));
    };
    place(static_cast<const float*>(part.data), 0, counts[0]);
    if (rows == 1) return;
    first = counts[0];
    staged = 0;
    for (int r = 1; r < size(); ++r) {
      place(staging_ + staged, first, counts[r]);
      first += counts[r];
      staged += counts[r] * rows;
    }
  }

  DeviceCollectives device_collectives(size_t window_bytes, int lsa_barriers) override {
    const NcclLibrary& lib = nccl();
    // The kernels inline the device API of the headers they were built with (the layouts of
    // ncclDevComm, of the window record and of the requirements): those changed within 2.28 and
    // again in 2.29, so the library must be the headers' release series, no older patch.
    const int found = version(), series = NCCL_VERSION_CODE / 100 * 100;
    if (!lib.mem_alloc || !lib.window_register || !lib.dev_comm_create || found < NCCL_VERSION_CODE ||
        found >= series + 100) {
      throw_error(ErrorKind::kUnsupported,
                  "nccl: in-kernel all-reduce needs the libnccl release series it was built with (" +
                      std::to_string(NCCL_VERSION_CODE) + " .. " + std::to_string(series + 99) + "), found " +
                      std::to_string(found));
    }
    Clique::DeviceApi& d = clique_->device_api[rank_];
    PDVM_CHECK_MSG(!d.buffer, "nccl: device collectives requested twice");
    d.window_bytes = window_bytes;
    d.lsa_barriers = lsa_barriers;
    clique_->all_enqueued();  // every rank's sizes are written
    for (const Clique::DeviceApi& other : clique_->device_api) {
      if (other.window_bytes != window_bytes || other.lsa_barriers != lsa_barriers) {
        throw_error(ErrorKind::kInvalidArgument,
                    "nccl: the ranks asked for different device collectives (" + std::to_string(window_bytes) +
                        " bytes, " + std::to_string(lsa_barriers) + " barriers on rank " + std::to_string(rank_) + ")");
      }
    }
    PDVM_CUDA_CHECK(cudaSetDevice(clique_->devices[rank_]));
    constexpr size_t kAlign = NCCL_WIN_REQUIRED_ALIGNMENT;
    const size_t bytes = (window_bytes + kAlign - 1) / kAlign * kAlign;
    check(lib.mem_alloc(&d.buffer, bytes), "ncclMemAlloc");
    PDVM_CUDA_CHECK(cudaMemset(d.buffer, 0, bytes));
    check(lib.window_register(clique_->comms[rank_], d.buffer, bytes, &d.window, NCCL_WIN_COLL_SYMMETRIC),
          "ncclCommWindowRegister");
    ncclDevCommRequirements requirements{};
    requirements.lsaBarrierCount = lsa_barriers;
    check(lib.dev_comm_create(clique_->comms[rank_], &requirements, &d.dev_comm), "ncclDevCommCreate");
    d.created = true;
    if (d.dev_comm.lsaSize != size()) {
      throw_error(ErrorKind::kUnsupported,
                  "nccl: only " + std::to_string(d.dev_comm.lsaSize) + " of " + std::to_string(size()) +
                      " ranks can load/store each other's memory; in-kernel all-reduce needs all");
    }
    PDVM_CUDA_CHECK(cudaMalloc(&d.dev_comm_on_device, sizeof(ncclDevComm)));
    PDVM_CUDA_CHECK(cudaMemcpy(d.dev_comm_on_device, &d.dev_comm, sizeof(ncclDevComm), cudaMemcpyHostToDevice));
    return {d.dev_comm_on_device, d.window};
  }

 private:
  static int version() {
    int v = 0;
    nccl().get_version(&v);
    return v;
  }

  void grow_staging(size_t n) {
    if (n <= staging_size_) return;
    PDVM_CUDA_CHECK(cudaSetDevice(clique_->devices[rank_]));
    if (staging_) PDVM_CUDA_CHECK(cudaFree(staging_));
    staging_ = nullptr;
    staging_size_ = 0;
    PDVM_CUDA_CHECK(cudaMalloc(&staging_, n * sizeof(float)));
    staging_size_ = n;
  }

  std::shared_ptr<Clique> clique_;
  const int rank_;
  float* staging_ = nullptr;  // rank 0's receive buffer for gathers of several rows
  size_t staging_size_ = 0;
};

std::vector<std::unique_ptr<Communicator>> make_nccl_group(const std::vector<int>& devices) {
  const NcclLibrary& lib = nccl();
  const int n_devices = cuda_device_count();
  const int n_ranks = static_cast<int>(devices.size());
  for (int r = 0; r < n_ranks; ++r) {
    if (devices[r] < 0 || devices[r] >= n_devices) {
      throw_error(ErrorKind::kDevice, "nccl: rank " + std::to_string(r) + " needs GPU " + std::to_string(devices[r]) +
                                          ", but " + std::to_string(n_devices) + " GPU(s) are visible");
    }
    if (std::count(devices.begin(), devices.end(), devices[r]) > 1) {
      throw_error(ErrorKind::kInvalidArgument,
                  "nccl: GPU " + std::to_string(devices[r]) +
                      " is given to several ranks; NCCL needs one GPU per rank (--tp-comm in-process "
                      "runs several ranks on one GPU)");
    }
  }
  std::vector<ncclComm_t> comms(devices.size());
  check(lib.comm_init_all(comms.data(), n_ranks, devices.data()), "ncclCommInitAll");
  auto clique = std::make_shared<Clique>(std::move(comms), devices);
  std::vector<std::unique_ptr<Communicator>> group;
  for (int r = 0; r < n_ranks; ++r) group.push_back(std::make_unique<NcclCommunicator>(clique, r));
  return group;
}

}  // namespace

PDVM_REGISTER_COMMUNICATOR_GROUP("nccl", make_nccl_group);

}  // namespace pdvm
