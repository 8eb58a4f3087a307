#!/usr/bin/env bash
# Runs CUDA test binaries under compute-sanitizer (memcheck with leak check, racecheck) on the GPU
# machine, several lanes side by side (one GPU; the tools are mostly CPU-bound). Each invocation
# has its own timeout; a lane's log gets the summary lines and the tail of each invocation.
#   usage: scripts/compute-sanitizer.sh BIN_DIR OUT_DIR [SECONDS_PER_CASE] [SET] [MODEL]
# SET (default quick):
#   quick          a few cases per binary of the model, fused-decode, prefill and UPG tests
#   long           whole tests the quick set cuts short: the unfused synthesized-model test and
#                  racecheck of the fused GqaQ4/GqaUpg4 models, the tensor-parallel tests under
#                  both tools, memcheck of the fused session's memory test
#   kernels        the unfused backend's op and matmul tests (every kernel, in all their shapes)
#   default-model  the tests that need the default model, at MODEL (a GGUF path)
# BIN_DIR holds gpu_* test binaries (built with -DPDVM_CUDA=ON) and the shared libraries they
# need (libfmt, libpcre2-8, libhwy); see docs/testing.md.
set -uo pipefail
bin=$1
out=$2
limit=${3:-150}
set_name=${4:-quick}
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
export PDVM_REQUIRE_GPU=1  # no device must fail, not skip
export LD_LIBRARY_PATH=$bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# pdvm opens libnccl.so.2 at run time; without one in the toolkit, take PyTorch's (nvidia-nccl).
if ! ls /usr/local/cuda/lib64/libnccl.so.2 >/dev/null 2>&1; then
  wheel=$(python3 -c "import nvidia.nccl; print(list(nvidia.nccl.__path__)[0] + '/lib')" 2>/dev/null || true)
  if [[ -n "$wheel" ]]; then export LD_LIBRARY_PATH="$wheel:$LD_LIBRARY_PATH"; fi
fi
mkdir -p "$out"

layer_cases='AllTypes/FusedLayerTest.MatchesCpuReference/gqa4_hd32_q4_1:AllTypes/FusedLayerTest.MatchesCpuReference/mha_hd64_q8_0:AllTypes/FusedLayerTest.MatchesCpuReference/gqa4_hd128_upg3:AllTypes/FusedLayerTest.MatchesCpuReference/gqa4_hd32_q4_k:FusedLayer.RejectsPositionsPastTheContext'
model_cases='FusedModel.GqaQ4MatchesReference:FusedModel.MhaQ4_1MatchesReference:FusedModel.GqaQ4KMatchesReference:FusedModel.GqaUpg4MatchesReference'

check() {  # lane tool binary filter
  local lane=$1 tool=$2 binary=$3 filter=$4 log
  log=$(mktemp)
  local extra=()
  [ "$tool" = memcheck ] && extra=(--leak-check full)
  local start=$SECONDS
  timeout -s INT "$limit" "$sanitizer" --tool "$tool" "${extra[@]}" --error-exitcode 9 "$bin/$binary" \
    --gtest_filter="$filter" >"$log" 2>&1
  local rc=$?
  {
    echo "=== $tool $binary --gtest_filter=$filter: rc=$rc in $((SECONDS - start)) s$([ $rc = 124 ] && echo ' (TIMED OUT)')"
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY|^\[  (PASSED|FAILED|SKIPPED) |^\[       OK|Invalid|Hazard|leaked" "$log" | head -40
    echo "--- sanitizer reports (first 80 lines)"
    grep -E "^=========" "$log" | grep -vE "COMPUTE-SANITIZER|SUMMARY" | head -80
    echo "--- tail"
    tail -n 15 "$log"
  } >>"$out/$lane.log"
  rm -f "$log"
}

case $set_name in
  quick)
    lane_a() {
      check memcheck_a memcheck gpu_pdvm_model_test "$model_cases"
      check memcheck_a memcheck gpu_pdvm_layer_test "$layer_cases"
    }
    lane_b() {
      check memcheck_b memcheck gpu_cuda_model_test 'CudaModel.SynthesizedModelsMatchTheReference'
      check memcheck_b memcheck gpu_pdvm_session_test 'FusedSessionTest.FusedModesMatchTheUnfusedBackend'
      check memcheck_b memcheck gpu_cuda_prefill_attention_test '*'
      check memcheck_b memcheck gpu_upg_cuda_test 'UpgCuda.MatmulAndGetRowsMatchTheReferenceDecompressor'
    }
    lane_c() {
      check racecheck racecheck gpu_pdvm_layer_test "$layer_cases"
      check racecheck racecheck gpu_pdvm_model_test 'FusedModel.GqaQ4MatchesReference:FusedModel.GqaUpg4MatchesReference'
      check racecheck racecheck gpu_cuda_prefill_attention_test '*'
      check racecheck racecheck gpu_cuda_model_test 'CudaModel.SynthesizedModelsMatchTheReference'
    }
    lane_a & lane_b & lane_c &
    ;;
  long)
    check memcheck_model memcheck gpu_cuda_model_test 'CudaModel.SynthesizedModelsMatchTheReference' &
    check racecheck_model racecheck gpu_cuda_model_test 'CudaModel.SynthesizedModelsMatchTheReference' &
    check racecheck_q4 racecheck gpu_pdvm_model_test 'FusedModel.GqaQ4MatchesReference' &
    check racecheck_upg4 racecheck gpu_pdvm_model_test 'FusedModel.GqaUpg4MatchesReference' &
    check memcheck_tp memcheck gpu_tensor_parallel_cuda_test '*' &
    check racecheck_tp racecheck gpu_tensor_parallel_cuda_test '*' &
    check memcheck_memory memcheck gpu_pdvm_session_memory_test '*' &
    ;;
  kernels)
    # The bandwidth probe's rate check fails under racecheck's slowdown, not a finding.
    lane_memcheck() {
      check memcheck_kernels memcheck gpu_cuda_matmul_test '*'
      check memcheck_kernels memcheck gpu_cuda_ops_test '*'
    }
    lane_racecheck() {
      check racecheck_kernels racecheck gpu_cuda_matmul_test '*'
      check racecheck_kernels racecheck gpu_cuda_ops_test '-CudaBandwidth.*'
    }
    lane_memcheck & lane_racecheck &
    ;;
  default-model)
    export PDVM_MODEL=${5:?default-model needs the model path}
    [ -f "$PDVM_MODEL" ] || { echo "no model at $PDVM_MODEL" >&2; exit 2; }
    # No racecheck of the unfused test: on this model it reports hazards inside cuBLAS's own
    # GEMM kernels (nvjet_*), which pdvm cannot change (docs/testing.md); the fused test's
    # racecheck covers pdvm's kernels on the model.
    check memcheck_unfused memcheck gpu_cuda_model_test 'CudaModel.DefaultModelGreedyOutputMatchesTheReference' &
    check memcheck_fused memcheck gpu_pdvm_default_model_test '*' &
    check racecheck_fused racecheck gpu_pdvm_default_model_test '*' &
    ;;
  *)
    echo "unknown set '$set_name' (quick, long, kernels, default-model)" >&2
    exit 2
    ;;
esac
wait
grep -h "^===" "$out"/*.log
