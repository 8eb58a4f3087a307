#!/bin/bash
# Issue 9's benchmark on a machine with several GPUs: tg128 tokens/s, scaling efficiency and
# all-reduce time per token of tensor-parallel decode over NCCL, for the llama-2-13b (F16) and
# llama-3-8b (Q8_0) shapes at tp 1, 2, 4, 8 (as many as the machine has GPUs), on the unfused
# path (pdvm bench) and the fused PDVM path (pdvm_fused_tp_gpu_bench, weights synthesized on
# the devices), plus the GPU tests of both. Unfused models are synthesized once under $MODELS.
#
#   scripts/tp-bench.sh [BUILD_DIR]        (default: build; needs a CUDA build)
#
# pdvm opens libnccl.so.2 at run time: if the CUDA toolkit's lib folder has none, the one of
# the PyTorch wheel (nvidia-nccl) is used. Leave NCCL_NVLS_ENABLE=0 set where it is.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$ROOT/build}
PDVM=$BUILD/pdvm
MODELS=${MODELS:-/tmp/tp-models}
mkdir -p "$MODELS"

if ! ls /usr/local/cuda/lib64/libnccl.so.2 >/dev/null 2>&1; then
  wheel=$(python3 -c "import nvidia.nccl; print(list(nvidia.nccl.__path__)[0] + '/lib')" 2>/dev/null || true)
  if [[ -n "$wheel" ]]; then export LD_LIBRARY_PATH="$wheel:${LD_LIBRARY_PATH:-}"; fi
fi

n_gpus=$(nvidia-smi -L | wc -l)
sizes=1
for tp in 2 4 8; do
  if ((tp <= n_gpus)); then sizes="$sizes,$tp"; fi
done
echo "GPUs: $n_gpus, tensor-parallel sizes: $sizes"

PDVM_REQUIRE_GPU=1 "$BUILD/tests/gpu_tensor_parallel_cuda_test"
PDVM_REQUIRE_GPU=1 "$BUILD/tests/gpu_pdvm_tensor_parallel_test"
"$BUILD/bench/pdvm_fused_tp_gpu_bench" 13b:f16 13b:q8_0 8b:f16 8b:q8_0

for spec in llama-2-13b:f16 llama-3-8b:q8_0; do
  shape=${spec%:*} type=${spec#*:}
  model=$MODELS/$shape-$type.gguf
  if [[ ! -f "$model" ]]; then "$PDVM" synth --shape "$shape" --type "$type" --threads "$(nproc)" -o "$model" >/dev/null; fi
  for mode in unfused layer token; do
    "$PDVM" bench -m "$model" --backend cuda --gpu-mode "$mode" -p 0 -n 128 -r 3 --tp "$sizes"
  done
done
