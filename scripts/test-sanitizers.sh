#!/usr/bin/env bash
# Builds pdvm and its tests with AddressSanitizer + UndefinedBehaviorSanitizer (build folder
# build-asan, CPU only) and runs the tests of PDVM_SANITIZE_LABELS (a ctest -L regex, default
# unit; "unit|model" for everything the CPU suite runs, see docs/testing.md). Any sanitizer
# report fails the test that triggered it.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${PDVM_SANITIZE_BUILD_DIR:-build-asan}
labels=${PDVM_SANITIZE_LABELS:-unit}

cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPDVM_CUDA=OFF -DPDVM_SANITIZE=ON \
  -DPDVM_BUILD_BENCH=OFF >/dev/null
# Only what the chosen labels run: their GoogleTest executables and the pdvm binary the Python
# tests start (CI time on 2 cores).
targets=(pdvm_cli)
for folder in unit model slow; do
  if [[ $folder =~ ^($labels)$ ]]; then
    for source in tests/$folder/*_test.cpp; do targets+=("${folder}_$(basename "$source" .cpp)"); done
  fi
done
cmake --build "$build_dir" -j"$(nproc)" --target "${targets[@]}"
# Leaks and every UB kind abort; the Python tests' interpreter is not instrumented, the pdvm
# binary they start is.
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export PDVM_REQUIRE_MODEL=1
ctest --test-dir "$build_dir" -L "$labels" -LE gpu --output-on-failure -j"$(nproc)" --timeout 1800
