#!/bin/bash
# Warp-stall profile of the PDVM fused kernel (on a machine with a GPU and Nsight Compute): one
# token-mode launch of `pdvm_fused_gpu_bench CASE`, past the warm-up, under ncu's PC sampling
# (SourceCounters); writes OUT_DIR/CASE.ncu-rep, the per-instruction page OUT_DIR/CASE-source.csv
# (SASS, executions, stall samples) and its summary OUT_DIR/CASE-stalls.md (scripts/ncu_stalls.py).
# Usage: scripts/ncu-fused.sh CASE [OUT_DIR]   e.g. scripts/ncu-fused.sh 13b:q4_0 /tmp/ncu
#   PDVM_BENCH   the bench binary (default build/bench/pdvm_fused_gpu_bench)
#   NCU          ncu (default: ncu on PATH, else /usr/local/cuda/bin/ncu)
#   NCU_SKIP     launches skipped before the profiled one (default 40: past the bench's warm-up)
#   NCU_ARGS     more ncu options, e.g. "--warp-sampling-interval 4" for more samples (0-31; fewer is finer)
set -euo pipefail
cd "$(dirname "$0")/.."
case=${1:?usage: scripts/ncu-fused.sh CASE [OUT_DIR]}
out=${2:-ncu}
bench=${PDVM_BENCH:-build/bench/pdvm_fused_gpu_bench}
ncu=${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}
[ -x "$bench" ] || { echo "ncu-fused: no bench binary at $bench (set PDVM_BENCH)" >&2; exit 1; }
[ -x "$ncu" ] || { echo "ncu-fused: no ncu at $ncu (set NCU)" >&2; exit 1; }
mkdir -p "$out"
name=${case//:/_}
PDVM_BENCH_MODE=token "$ncu" -k regex:fused_decode --launch-skip "${NCU_SKIP:-40}" --launch-count 1 \
  --section SourceCounters --section WarpStateStats ${NCU_ARGS:-} -o "$out/$name" -f "$bench" "$case" > "$out/$name-ncu.log" 2>&1 ||
  { tail -5 "$out/$name-ncu.log" >&2; exit 1; }
"$ncu" -i "$out/$name.ncu-rep" --page source --csv --print-source sass > "$out/$name-source.csv"
python3 scripts/ncu_stalls.py "$out/$name-source.csv" > "$out/$name-stalls.md"
echo "ncu-fused: $out/$name-stalls.md"
