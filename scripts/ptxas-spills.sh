#!/bin/bash
# Registers, stack frame and spills of every kernel (and non-inlined function) in one CUDA source,
# compile-only: reruns the build's own nvcc command for that object with -Xptxas -v, so the
# numbers are the build's. The PDVM fused kernel sits at the 128-register cap, and spills there
# cost decode speed (docs/perf-notes.md): check this before spending device time on a change.
# Usage: scripts/ptxas-spills.sh [BUILD_DIR] [SOURCE]   (defaults: build, src/cuda/pdvm_kernel.cu)
set -euo pipefail
build=${1:-build}
source=${2:-src/cuda/pdvm_kernel.cu}
object=CMakeFiles/pdvm_cuda.dir/$source.o
command=$(ninja -C "$build" -t commands "$object" | tail -1)
if [[ $command != *nvcc* ]]; then
  echo "ptxas-spills: no nvcc command for $object in $build (configure with -DPDVM_CUDA=ON and Ninja)" >&2
  exit 1
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# Without the compiler launcher (ccache would replay old output) and the depfile; into scratch.
command=$(sed -E "s/^ccache //; s/ -MD -MT [^ ]+ -MF [^ ]+//; s| -o [^ ]+$| -o $scratch/object.o|" <<<"$command")
(cd "$build" && eval "$command -Xptxas -v") > "$scratch/ptxas.txt" 2>&1 || { cat "$scratch/ptxas.txt" >&2; exit 1; }
printf "%-9s %-10s %-13s %-12s %s\n" registers frame spill-stores spill-loads function
awk '
  /Function properties for/ { name = $NF; next }
  /bytes stack frame/ {
    if (!(name in frame)) order[++n] = name
    frame[name] = $1; stores[name] = $5; loads[name] = $9; next
  }
  /Used [0-9]+ registers/ { for (i = 1; i <= NF; ++i) if ($i == "registers,") regs[name] = $(i - 1) }
  END { for (i = 1; i <= n; ++i) { f = order[i]; printf "%-9s %-10s %-13s %-12s %s\n", regs[f] == "" ? "-" : regs[f], frame[f], stores[f], loads[f], f } }
' "$scratch/ptxas.txt" | c++filt | sed -E 's/\(anonymous namespace\):://g; s/pdvm::fused:://g; s/_INTERNAL_[0-9a-z_]+:://g'
