#!/bin/bash
# The CPU backend's targets (issue 4): `pdvm bench -t 2 -p 128 -n 64 -r 3` on the default Q4_1
# model and its F16/Q8_0/Q4_0 conversions (made once under $MODELS), and an A/B mode that
# alternates two binaries round by round so both see the same machine load.
#
#   scripts/cpu-bench.sh [PDVM]                   all four models, one table each
#   scripts/cpu-bench.sh --ab ROUNDS OLD NEW [MODEL...]   tg64 only, alternating
#
# PRIORITY=1 runs each benchmark in its own session with the scheduler autogroup at nice -20, so
# that other users' builds on a shared machine are preempted (nice alone acts only inside one
# autogroup). Caches and memory stay shared, so this is close to, not equal to, a quiet machine.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODELS=${MODELS:-/tmp/models}
DEFAULT_MODEL=${DEFAULT_MODEL:-$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf}

prioritized() {
  if [[ "${PRIORITY:-0}" == 1 ]]; then
    setsid bash -c 'echo -20 > /proc/self/autogroup; exec nice -n -20 "$@"' _ "$@"
  else
    "$@"
  fi
}

make_models() {
  local pdvm=$1
  mkdir -p "$MODELS"
  for type in f16 q8_0 q4_0; do
    [[ -f "$MODELS/smol-$type.gguf" ]] || "$pdvm" convert "$DEFAULT_MODEL" "$MODELS/smol-$type.gguf" --type "$type" >/dev/null
  done
}

all_models() { echo "$DEFAULT_MODEL" "$MODELS/smol-f16.gguf" "$MODELS/smol-q8_0.gguf" "$MODELS/smol-q4_0.gguf"; }

if [[ "${1:-}" == --ab ]]; then
  rounds=$2 old=$3 new=$4
  shift 4
  make_models "$new"
  models=("$@")
  [[ ${#models[@]} -gt 0 ]] || read -r -a models <<<"$(all_models)"
  for model in "${models[@]}"; do
    for round in $(seq "$rounds"); do
      for bin in "$old" "$new"; do
        rate=$(prioritized "$bin" bench -m "$model" --backend cpu -t 2 -p 0 -n 64 -r 3 --no-probe | tail -1 | cut -d'|' -f9)
        echo "$(basename "$model") round $round $(basename "$bin"):$rate (load $(cut -d' ' -f1 /proc/loadavg))"
      done
    done
  done
  exit 0
fi

pdvm=${1:-$ROOT/build/pdvm}
make_models "$pdvm"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for model in $(all_models); do
  prioritized "$pdvm" bench -m "$model" --backend cpu -t 2 -p 128 -n 64 -r 3
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
