#!/usr/bin/env bash
# Writes plain text of the King James Bible (Debian package bible-kjv) to OUT: one verse per
# line, without the verse references. The perplexity corpus of the tests and benchmarks.
#   scripts/bible-text.sh OUT [RANGE]     RANGE defaults to the whole of Genesis: Genesis1:1-50:26
#                                         (other examples: Exodus1:1-40:38, Gen1:1-Exo2:3)
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 OUT [RANGE]" >&2
  exit 2
fi
out=$1
range=${2:-Genesis1:1-50:26}
if ! command -v bible >/dev/null; then
  echo "$0: the 'bible' program is missing: run scripts/setup.sh (Debian package bible-kjv)" >&2
  exit 1
fi
mkdir -p "$(dirname "$out")"
# -f prints "Ge1:1 In the beginning ..." one verse a line; drop the reference.
bible -f "$range" | sed -e 's/^[^ ]* //' >"$out.tmp"
if [ ! -s "$out.tmp" ]; then
  rm -f "$out.tmp"
  echo "$0: no text for range '$range'" >&2
  exit 1
fi
mv "$out.tmp" "$out"
