#!/usr/bin/env bash
# Builds pdvm (installing what is missing) and runs the whole CPU test suite.
# GPU tests are separate: on a CUDA machine run `ctest --test-dir build -L gpu`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# llama-cpp-python compiles llama.cpp at install time; a native build uses whatever the CPU
# advertises (AMX on recent Xeons), which a VM may not let a process use (SIGILL in the tests).
CMAKE_ARGS="${CMAKE_ARGS:-} -DGGML_NATIVE=OFF" python3 -m pip install -q -r tests/requirements.txt
export PDVM_REQUIRE_MODEL=1
ctest --test-dir "${PDVM_BUILD_DIR:-build}" -LE gpu --output-on-failure -j"$(nproc)"
