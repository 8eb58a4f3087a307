// Isolated timing of the decode matvec: random weights of the requested type, copied enough
// times that the rotation does not fit in L2, launched from a CUDA graph like a decode step.
#include <algorithm>
#include <random>
#include <vector>

#include "cuda/ops.cuh"
#include "pdvm/cuda_backend.h"

namespace pdvm {

MatvecTiming time_cuda_matvec(int device, TensorType type, int64_t k, int64_t n_rows) {
  cuda::CudaContext ctx(device);
  cuda::configure_matvec(ctx);
  // Random rows through the reference quantizer (or random bytes with sane scales).
  std::mt19937_64 rng(42);
  std::normal_distribution<float> normal(0.0f, 0.5f);
  const int64_t row_bytes = type_bytes(type, k);
  std::vector<uint8_t> gguf(static_cast<size_t>(row_bytes * n_rows));
  std::vector<float> row(static_cast<size_t>(k));
  const int64_t distinct_rows = std::min<int64_t>(n_rows, 64);  // quantizing every row is slow; repeat 64
  for (int64_t r = 0; r < n_rows; ++r) {
    if (r < distinct_rows) {
      for (float& v : row) v = normal(rng);
      quantize_row(type, row.data(), gguf.data() + r * row_bytes, k);
    } else {
      std::copy_n(gguf.data() + (r % distinct_rows) * row_bytes, row_bytes, gguf.data() + r * row_bytes);
    }
  }
  const uint64_t bytes = cuda::repacked_bytes(type, k, n_rows);
  std::vector<uint8_t> packed(bytes);
  cuda::repack_weight(type, k, n_rows, gguf.data(), packed.data());
  const int copies = static_cast<int>(std::clamp<uint64_t>((uint64_t{400} << 20) / bytes + 1, 2, 64));
  std::vector<std::shared_ptr<void>> weights;
  for (int i = 0; i < copies; ++i) {
    weights.push_back(cuda::device_alloc(bytes, "matvec timing weights"));
    PDVM_CUDA_CHECK(cudaMemcpy(weights.back().get(), packed.data(), bytes, cudaMemcpyHostToDevice));
  }
  auto x = cuda::device_alloc(static_cast<uint64_t>(k) * 4, "matvec timing x");
  auto y = cuda::device_alloc(static_cast<uint64_t>(n_rows) * 4, "matvec timing y");
  std::vector<float> xs(static_cast<size_t>(k));
  for (float& v : xs) v = normal(rng);
  PDVM_CUDA_CHECK(cudaMemcpy(x.get(), xs.data(), xs.size() * 4, cudaMemcpyHostToDevice));

  Tensor tensor;
  tensor.type = type;
  tensor.ne = {k, n_rows, 1, 1};
  tensor.layout = cuda::layout_for(type);
  std::vector<cuda::WeightView> views;
  for (auto& w : weights) {
    tensor.data = w.get();
    views.push_back(cuda::weight_view(tensor));
  }
  const int launches = std::max(copies, 32);
  auto run_all = [&] {
    for (int i = 0; i < launches; ++i)
      cuda::matvec(ctx, views[static_cast<size_t>(i % copies)], static_cast<const float*>(x.get()),
                   static_cast<float*>(y.get()), 1);
  };
  run_all();  // warm-up outside the capture
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  PDVM_CUDA_CHECK(cudaStreamBeginCapture(ctx.stream, cudaStreamCaptureModeThreadLocal));
  run_all();
  PDVM_CUDA_CHECK(cudaStreamEndCapture(ctx.stream, &graph));
  PDVM_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t start, stop;
  PDVM_CUDA_CHECK(cudaEventCreate(&start));
  PDVM_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<float> ms;
  for (int rep = 0; rep < 7; ++rep) {
    PDVM_CUDA_CHECK(cudaEventRecord(start, ctx.stream));
    PDVM_CUDA_CHECK(cudaGraphLaunch(exec, ctx.stream));
    PDVM_CUDA_CHECK(cudaEventRecord(stop, ctx.stream));
    PDVM_CUDA_CHECK(cudaEventSynchronize(stop));
    float elapsed = 0.0f;
    PDVM_CUDA_CHECK(cudaEventElapsedTime(&elapsed, start, stop));
    ms.push_back(elapsed);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  std::sort(ms.begin(), ms.end());
  MatvecTiming t;
  t.type = type;
  t.k = k;
  t.n_rows = n_rows;
  t.bytes = bytes;
  t.microseconds = 1e3 * ms[ms.size() / 2] / launches;
  t.gb_per_s = static_cast<double>(bytes) / (t.microseconds * 1e-6) / 1e9;
  return t;
}

}  // namespace pdvm
