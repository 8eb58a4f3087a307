// Collectives between the ranks of a tensor-parallel model (see docs/multi-gpu.md). One
// Communicator per rank; every rank calls the same collectives in the same order. The model
// definition talks to this interface only, so the same forward pass runs over NCCL (one GPU
// per rank) or in one process over host memory (any backend, e.g. one CPU backend per rank).
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "pdvm/backend.h"
#include "pdvm/error.h"

namespace pdvm {

// Thrown by a collective that another rank's failure abandoned; a group runner reports that
// rank's own error (the cause) in preference to these.
class CollectiveAbandoned : public Error {
 public:
  explicit CollectiveAbandoned(const std::string& group)
      : Error(ErrorKind::kInternal, "tensor parallel: " + group + " collective abandoned because another rank failed") {}
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual std::string name() const = 0;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Replaces x (F32, memory of `backend`, this rank's backend) by the element-wise sum of x
  // over all ranks. Every rank ends with the same bits.
  virtual void all_reduce_sum(Backend& backend, Tensor& x) = 0;

  // Gathers column blocks onto rank 0 (the vocabulary-split output head): rank r's `part` (F32
  // {counts[r], rows}, memory of `backend`) becomes columns counts[0] + .. + counts[r-1] onward
  // of every row of rank 0's `whole` (F32 {counts[0] + .. + counts[N-1], rows}). Only rank 0
  // writes `whole`; the others' is not touched. Every rank passes the same counts and rows.
  // Recordable groups may run it inside Backend::run_recorded for rows == 1.
  virtual void gather_columns(Backend& backend, const Tensor& part, Tensor& whole,
                              const std::vector<int64_t>& counts) = 0;

  // The same for code that owns its device memory and stream without a Backend (the fused
  // decoder): `n` floats at `device_data`, enqueued on `stream` (a cudaStream_t). Recordable
  // groups only; the others throw Error(kUnsupported).
  virtual void all_reduce_sum_on_stream(float* device_data, size_t n, void* stream);
  // The same over host memory, for groups that are not recordable (the caller copies its
  // device data out and back); the others throw Error(kUnsupported).
  virtual void all_reduce_sum_host(float* data, size_t n);

  // In-kernel collectives (NCCL's device API, docs/multi-gpu.md "In-kernel all-reduce"): a
  // symmetric window of `window_bytes` (zeroed) that every rank's kernels may load and store, and
  // a device communicator with `lsa_barriers` barriers. `dev_comm` is a device pointer to an
  // ncclDevComm, `window` an ncclWindow_t. Collective: every rank calls it from its own thread
  // with the same sizes; both live as long as the group. Other groups throw Error(kUnsupported).
  struct DeviceCollectives {
    const void* dev_comm = nullptr;
    void* window = nullptr;
  };
  virtual DeviceCollectives device_collectives(size_t window_bytes, int lsa_barriers);

  // Whether all_reduce_sum may be called inside Backend::run_recorded (it only enqueues device
  // work, as NCCL does); host-side collectives must run every time instead.
  virtual bool recordable() const = 0;

  // Called when another rank failed: collectives in flight or later throw instead of waiting
  // for a rank that will never arrive.
  virtual void abort() = 0;
};

// Creates the communicators of a group of `devices.size()` ranks, rank i on devices[i].
using CommunicatorGroupFactory =
    std::function<std::vector<std::unique_ptr<Communicator>>(const std::vector<int>& devices)>;

// Group kinds by name ("in-process" always; "nccl" when the CUDA library is linked).
void register_communicator_group(std::string name, CommunicatorGroupFactory factory);
// Error(kInvalidArgument) listing the known names when `name` is not registered.
std::vector<std::unique_ptr<Communicator>> create_communicator_group(std::string_view name,
                                                                     const std::vector<int>& devices);
std::vector<std::string> registered_communicator_groups();  // sorted

struct CommunicatorGroupRegistrar {
  CommunicatorGroupRegistrar(std::string name, CommunicatorGroupFactory factory) {
    register_communicator_group(std::move(name), std::move(factory));
  }
};

}  // namespace pdvm

#define PDVM_COMM_CAT2(a, b) a##b
#define PDVM_COMM_CAT(a, b) PDVM_COMM_CAT2(a, b)
// At namespace scope in the implementation's .cpp (its library is linked whole).
#define PDVM_REGISTER_COMMUNICATOR_GROUP(name, factory) \
  static ::pdvm::CommunicatorGroupRegistrar PDVM_COMM_CAT(pdvm_comm_registrar_, __LINE__)(name, factory)
