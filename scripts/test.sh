#!/usr/bin/env bash
# Builds pdvm (installing what is missing) and runs the whole CPU test suite.
# GPU tests are separate: on a CUDA machine run `ctest --test-dir build -L gpu`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
python3 -m pip install -q -r tests/requirements.txt
export PDVM_REQUIRE_MODEL=1
ctest --test-dir "${PDVM_BUILD_DIR:-build}" -LE gpu --output-on-failure -j"$(nproc)"
