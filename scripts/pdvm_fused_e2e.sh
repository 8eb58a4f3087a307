#!/bin/bash
# End-to-end on the GPU machine: a synthesized llama-3.2-1b GGUF through the pdvm CLI, the
# unfused CUDA backend vs --gpu-mode layer/token (greedy ids and tg128). Run from a folder that
# holds the pdvm binary and the shared libraries it needs (see docs/perf-notes.md, PDVM).
set -u
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=$PWD:/usr/local/cuda/lib64
for type in q4_0 f16; do
  m=/tmp/m_$type.gguf
  /usr/bin/time -f "synth $type %es" ./pdvm synth --shape llama-3.2-1b --type $type -o $m --threads 16 > /dev/null || exit 1
  for mode in unfused layer token; do
    echo "== $type $mode"
    timeout 120 ./pdvm logits -m $m --backend cuda --gpu-mode $mode --tokens 1,2,3,4 --greedy 24 2>&1 | tail -2
    timeout 180 ./pdvm bench -m $m --backend cuda --gpu-mode $mode -p 0 -n 128 --no-probe 2>&1 | tail -1
  done
  rm -f $m
done
