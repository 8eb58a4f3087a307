#!/usr/bin/env bash
# Runs CUDA test binaries under compute-sanitizer (memcheck with leak check, racecheck) on the GPU
# machine, a few test cases per binary so that the whole run stays within a few minutes. Three
# lanes run side by side (one GPU; the tools are CPU-bound). Each invocation has its own timeout;
# a lane's log gets the summary lines and the tail of each invocation.
#   usage: scripts/compute-sanitizer.sh BIN_DIR OUT_DIR [SECONDS_PER_CASE]
# BIN_DIR holds gpu_* test binaries (built with -DPDVM_CUDA=ON) and the shared libraries they
# need (libfmt, libpcre2-8, libhwy); see docs/testing.md.
set -uo pipefail
bin=$1
out=$2
limit=${3:-150}
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
export LD_LIBRARY_PATH=$bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
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
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY|^\[  (PASSED|FAILED) |^\[       OK|Invalid|Hazard|leaked" "$log" | head -40
    echo "--- tail"
    tail -n 15 "$log"
  } >>"$out/$lane.log"
  rm -f "$log"
}

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
wait
grep -h "^===" "$out"/*.log
