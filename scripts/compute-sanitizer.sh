#!/usr/bin/env bash
# Runs every CUDA test binary under compute-sanitizer's memcheck (with leak check) and racecheck:
# one process per test case or shard, spread over the GPUs and the CPU cores (the tools are mostly
# CPU-bound), longest runs first, all inside one wall-clock budget. Each run keeps its whole log;
# runs.log gets one line per run (rc, seconds, the tool's summary line) and
# scripts/sanitizer_report.py writes summary.txt: every report attributed to pdvm's code or to a
# library (cuBLAS, NCCL), per run and per binary.
#   usage: scripts/compute-sanitizer.sh BIN_DIR OUT_DIR [--budget S] [--jobs N] [--model GGUF]
#                                       [--only REGEX] [--list]
#   BIN_DIR   gpu_* test binaries (-DPDVM_CUDA=ON) and the shared libraries they need (libfmt,
#             libpcre2-8, libhwy); docs/testing.md says how to build and carry them
#   --budget  seconds from the start by which every run has ended (default 450): a run gets what
#             is left of it, and one with less than 30 s left is not started
#   --jobs    runs at once (default: three quarters of the cores)
#   --model   also the default-model tests, on this GGUF (no such runs when the file is absent)
#   --only    only the runs whose name matches this extended regex
#   --list    print the runs and exit (needs no GPU)
# GPUs: those in CUDA_VISIBLE_DEVICES, else every GPU nvidia-smi lists. SANITIZER names the
# compute-sanitizer to use (a stand-in that runs the test directly checks this script's flow on a
# machine without a GPU: every run then fails fast).
set -uo pipefail
script_dir=$(cd "$(dirname "$0")" && pwd)
bin=${1:?usage: compute-sanitizer.sh BIN_DIR OUT_DIR [options]}
out=${2:?usage: compute-sanitizer.sh BIN_DIR OUT_DIR [options]}
shift 2
budget=450
parallel=$(( $(nproc) * 3 / 4 ))
model=""
only=""
list_only=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --budget) budget=$2; shift 2 ;;
    --jobs) parallel=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --list) list_only=1; shift ;;
    *) echo "compute-sanitizer.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
(( parallel >= 1 )) || parallel=1
bin=$(cd "$bin" && pwd)
sanitizer=${SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}

# The runs: name|tool|binary|gtest filter|shards ("each": one run per test case)|PDVM_TEST_MAX_STEPS
# |GPUs (1, or all: the tensor-parallel tests, the least loaded first)|expected seconds (measured
# on 4 H200s with 40 runs at once; orders the runs and balances the GPUs)|environment (VAR=value).
# The unfused tensor-parallel tests ask for eager module loading (a 2-GPU NCCL prefill hung with
# lazy loading), which under the sanitizers instruments every cuBLAS kernel up front: 350 s before
# the first test ran; only the several-GPU test needs it, the others run with lazy loading. Racecheck tracks every shared-memory access on the GPU (~0.3 s a
# fused layer launch): its runs cap the decode steps and leave out the tests whose stepwise prompts
# or 1B shape run thousands of fused layers; docs/testing.md says what stays covered.
plan() {
  cat <<'EOF'
mc_ops|memcheck|gpu_cuda_ops_test|*|1||1|40
mc_matmul|memcheck|gpu_cuda_matmul_test|*|each||1|40
mc_prefill_attention|memcheck|gpu_cuda_prefill_attention_test|*|1||1|40
mc_cuda_model|memcheck|gpu_cuda_model_test|FamiliesAndTypes/*|each||1|60
mc_upg|memcheck|gpu_upg_cuda_test|*|each||1|40
mc_layer|memcheck|gpu_pdvm_layer_test|AllTypes/*|4||1|60
mc_layer_long|memcheck|gpu_pdvm_layer_test|-AllTypes/*|1||1|250
mc_model|memcheck|gpu_pdvm_model_test|-FusedModel.SynthesizedLargeShapeRuns|each||1|40
mc_model_large|memcheck|gpu_pdvm_model_test|FusedModel.SynthesizedLargeShapeRuns|1|8|1|25
mc_session|memcheck|gpu_pdvm_session_test|*|each||1|40
mc_prompts|memcheck|gpu_pdvm_fused_prompts_test|*|each|8|1|150
mc_memory|memcheck|gpu_pdvm_session_memory_test|*|1||1|60
mc_fused_tp|memcheck|gpu_pdvm_tensor_parallel_test|*|each||all|120
mc_tp|memcheck|gpu_tensor_parallel_cuda_test|-*OverSeveralGpus*|each||all|150|CUDA_MODULE_LOADING=LAZY
mc_tp_gpus|memcheck|gpu_tensor_parallel_cuda_test|*OverSeveralGpus*|1||all|400
rc_ops|racecheck|gpu_cuda_ops_test|-CudaBandwidth.*|1||1|60
rc_matmul|racecheck|gpu_cuda_matmul_test|*|each||1|30
rc_prefill_attention|racecheck|gpu_cuda_prefill_attention_test|*|1||1|60
rc_cuda_model|racecheck|gpu_cuda_model_test|FamiliesAndTypes/*|each|8|1|90
rc_upg|racecheck|gpu_upg_cuda_test|*|each||1|60
rc_layer|racecheck|gpu_pdvm_layer_test|AllTypes/*|12|24|1|100
rc_layer_long|racecheck|gpu_pdvm_layer_test|-AllTypes/*|1|160|1|210
rc_model|racecheck|gpu_pdvm_model_test|-FusedModel.SynthesizedLargeShapeRuns|each|8|1|100
rc_session|racecheck|gpu_pdvm_session_test|*|each|8|1|100
rc_prompts|racecheck|gpu_pdvm_fused_prompts_test|FusedPrompts.DefaultMode*|each|1|1|45
rc_fused_tp|racecheck|gpu_pdvm_tensor_parallel_test|*|each|8|all|200
rc_tp|racecheck|gpu_tensor_parallel_cuda_test|-*OverSeveralGpus*|each||all|150|CUDA_MODULE_LOADING=LAZY
rc_tp_gpus|racecheck|gpu_tensor_parallel_cuda_test|*OverSeveralGpus*|1||all|400
EOF
  if [[ -n $model && -f $model ]]; then
    cat <<'EOF'
mc_default_unfused|memcheck|gpu_cuda_model_test|CudaModel.DefaultModel*|1|16|1|300
mc_default_fused|memcheck|gpu_pdvm_default_model_test|*|each|16|1|200
rc_default_unfused|racecheck|gpu_cuda_model_test|CudaModel.DefaultModel*|1|8|1|380
EOF
  fi
}

# The test cases of a binary that a filter selects (gtest's listing needs no GPU).
list_cases() {  # binary filter
  "$bin/$1" --gtest_list_tests --gtest_filter="$2" 2>/dev/null | awk '
    /^[^ ]/ { suite = $1; next }
    /^  [^ ]/ { print suite $1 }'
}

# Expands the plan to one line per process: name|tool|binary|filter|shard/total|steps|gpus|weight.
expand_plan() {
  local name tool binary filter shards steps gpus weight environment case k
  while IFS='|' read -r name tool binary filter shards steps gpus weight environment; do
    if [[ ! -x $bin/$binary ]]; then
      echo "$name|$tool|$binary|$filter|missing|$steps|$gpus|$weight|$environment"
    elif [[ $shards == each ]]; then
      while read -r case; do  # named by test and parameter: Prefix/Suite.Test/param -> Test.param
        local short=${case#*/}
        short=${short#*.}
        echo "$name.${short//\//.}|$tool|$binary|$case||$steps|$gpus|$weight|$environment"
      done < <(list_cases "$binary" "$filter")
    elif (( shards > 1 )); then
      for ((k = 0; k < shards; k++)); do
        echo "$name.$k|$tool|$binary|$filter|$k/$shards|$steps|$gpus|$weight|$environment"
      done
    else
      echo "$name|$tool|$binary|$filter||$steps|$gpus|$weight|$environment"
    fi
  done < <(plan) | { if [[ -n $only ]]; then grep -E "^[^|]*($only)[^|]*\|"; else cat; fi; } | sort -t'|' -k8,8nr -s
}

if (( list_only )); then
  expand_plan | column -t -s'|'
  exit 0
fi

# libnccl.so.2 is opened at run time: a 2.28 release from 2.28.9 on first (the in-kernel
# all-reduce needs that series), else the newest of the toolkit's and PyTorch's (nvidia-nccl).
nccl_version() {  # dir: the ncclGetVersion of its libnccl.so.2, or 0
  python3 -c "
import ctypes
try:
    lib = ctypes.CDLL('$1/libnccl.so.2'); v = ctypes.c_int(); lib.ncclGetVersion(ctypes.byref(v)); print(v.value)
except OSError:
    print(0)" 2>/dev/null || echo 0
}
nccl_dir=""
nccl_best=0
nccl_fits=0
nccl_wheel=$(python3 -c "import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], 'lib'))" 2>/dev/null)
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib $nccl_wheel; do
  [[ -e $d/libnccl.so.2 ]] || continue
  v=$(nccl_version "$d")
  fits=$(( v >= 22809 && v < 22900 ))
  if (( fits > nccl_fits || (fits == nccl_fits && v > nccl_best) )); then nccl_dir=$d; nccl_best=$v; nccl_fits=$fits; fi
done
echo "libnccl: ${nccl_dir:-none found} (version $nccl_best)"
export LD_LIBRARY_PATH=$bin${nccl_dir:+:$nccl_dir}:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PDVM_REQUIRE_GPU=1  # no device must fail, not skip
export NCCL_NVLS_ENABLE=0   # no NVLink multicast: it can take a shared host's GPUs out of service
export PDVM_UNDER_COMPUTE_SANITIZER=1  # the tests drop their bandwidth and device-memory bounds
[[ -n $model ]] && export PDVM_MODEL=$model

if [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
  IFS=',' read -r -a gpus <<<"$CUDA_VISIBLE_DEVICES"
else
  mapfile -t gpus < <(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null)
fi
(( ${#gpus[@]} > 0 )) || gpus=(0)
# Many sanitizer processes at once: give each its own range of ports to reach its target with.
port_option=0
timeout 30 "$sanitizer" --help 2>&1 | grep -q -- '--base-port' && port_option=1

mkdir -p "$out/logs"
: >"$out/runs.log"
expand_plan >"$out/plan.txt"
echo "$(wc -l <"$out/plan.txt") runs, $parallel at once, GPUs ${gpus[*]}, budget $budget s, $(timeout 30 "$sanitizer" --version 2>&1 | grep -m1 -i version)"

start=$SECONDS
run_one() {  # index, visible GPUs, seconds, then the fields of a plan line
  local index=$1 visible=$2 seconds=$3 name=$4 tool=$5 binary=$6 filter=$7 shard=$8 steps=$9 environment=${10}
  local log=$out/logs/$name.log args=() env=() rc t0=$SECONDS
  args+=(--print-limit 10000)  # the default 100 leaves the rest of a run's reports unread
  [[ $tool == memcheck ]] && args+=(--leak-check full)
  (( port_option )) && args+=(--base-port $((20000 + 10 * index)) --max-connections 10)
  [[ -n $steps ]] && env+=(PDVM_TEST_MAX_STEPS=$steps)
  [[ -n $shard ]] && env+=(GTEST_TOTAL_SHARDS=${shard#*/} GTEST_SHARD_INDEX=${shard%/*})
  [[ -n $environment ]] && env+=("$environment")
  {
    echo "# $tool $binary --gtest_filter=$filter ${shard:+shard $shard }${steps:+max steps $steps }${environment:+$environment }GPUs $visible limit $seconds s"
    env CUDA_VISIBLE_DEVICES="$visible" "${env[@]}" timeout -k 20 -s INT "$seconds" \
      "$sanitizer" --tool "$tool" "${args[@]}" --error-exitcode 9 "$bin/$binary" --gtest_filter="$filter"
  } >"$log" 2>&1
  rc=$?
  echo "# rc=$rc seconds=$((SECONDS - t0))" >>"$log"
  local summary
  summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$log" | grep -v "not printed" | tail -1 | sed 's/^=* *//')
  printf '%-48s rc=%-3s %4d s  %s\n' "$name" "$rc" $((SECONDS - t0)) "${summary:-no sanitizer summary}" >>"$out/runs.log"
}

# Each run starts on the GPU with the least expected seconds so far (tensor-parallel runs see the
# others after it).
loads=()
for ((g = 0; g < ${#gpus[@]}; g++)); do loads[g]=0; done
least_loaded() {
  local best=0 g
  for ((g = 1; g < ${#gpus[@]}; g++)); do (( loads[g] < loads[best] )) && best=$g; done
  echo "$best"
}

index=0
while IFS='|' read -r name tool binary filter shard steps gpu_count weight environment; do
  if [[ $shard == missing ]]; then
    printf '%-48s not run: %s is not in %s\n' "$name" "$binary" "$bin" >>"$out/runs.log"
    continue
  fi
  while (( $(jobs -rp | wc -l) >= parallel )); do wait -n; done
  left=$(( budget - (SECONDS - start) ))
  if (( left < 30 )); then
    printf '%-48s not started: %d s of the budget left\n' "$name" "$left" >>"$out/runs.log"
    continue
  fi
  first=$(least_loaded)
  loads[first]=$(( loads[first] + weight ))
  visible=${gpus[first]}
  if [[ $gpu_count == all ]]; then
    for ((g = 1; g < ${#gpus[@]}; g++)); do visible+=",${gpus[(first + g) % ${#gpus[@]}]}"; done
  fi
  run_one "$index" "$visible" "$left" "$name" "$tool" "$binary" "$filter" "$shard" "$steps" "$environment" </dev/null &
  index=$((index + 1))
done <"$out/plan.txt"
wait
echo "all runs ended after $((SECONDS - start)) s"
python3 "$script_dir/sanitizer_report.py" "$out" || cat "$out/runs.log"
