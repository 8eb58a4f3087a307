#!/usr/bin/env bash
# Cross-compiles the CPU backend for aarch64 and runs its kernel tests under qemu-aarch64, so
# the Highway kernels are checked on ARM targets (NEON) from an x86-64 Debian 12 machine.
# Installs what it needs: the cross compiler and qemu-user (apt), and arm64 builds of our
# libraries unpacked into PDVM_ARM64_SYSROOT (default /opt/arm64-sysroot) with `dpkg -x`, so
# no amd64 package is replaced. With PDVM_ARM64_MODEL_CHECK=1 it also compares a greedy
# `pdvm run` on the default model with the host build's text (PDVM_HOST_BIN, default build/pdvm).
# In a git worktree, point PDVM_TESTDATA at the shared test data (see tests/support).
set -euo pipefail
cd "$(dirname "$0")/.."
export PDVM_ARM64_SYSROOT=${PDVM_ARM64_SYSROOT:-/opt/arm64-sysroot}
build_dir=${PDVM_ARM64_BUILD_DIR:-build-aarch64}
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo

host_packages=(g++-aarch64-linux-gnu qemu-user pkg-config)
missing=()
for p in "${host_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
arm64_packages=(libhwy-dev libhwy1 libfmt-dev libfmt9 libpcre2-dev libpcre2-8-0 libgtest-dev
  libgmock-dev libc6 libstdc++6 libgcc-s1)
if ((${#missing[@]})) || [ ! -f "$PDVM_ARM64_SYSROOT/.complete" ]; then
  dpkg --print-foreign-architectures | grep -qx arm64 || $SUDO dpkg --add-architecture arm64
  $SUDO apt-get update -qq
fi
if ((${#missing[@]})); then
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ! -f "$PDVM_ARM64_SYSROOT/.complete" ]; then
  $SUDO mkdir -p "$PDVM_ARM64_SYSROOT/debs"
  $SUDO chown "$(id -u)" "$PDVM_ARM64_SYSROOT" "$PDVM_ARM64_SYSROOT/debs"
  (cd "$PDVM_ARM64_SYSROOT/debs" && apt-get download -qq "${arm64_packages[@]/%/:arm64}" \
    libcli11-dev nlohmann-json3-dev)
  for deb in "$PDVM_ARM64_SYSROOT"/debs/*.deb; do dpkg -x "$deb" "$PDVM_ARM64_SYSROOT"; done
  touch "$PDVM_ARM64_SYSROOT/.complete"
fi

launcher=(); command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake \
  -DCMAKE_BUILD_TYPE=Release -DPDVM_CUDA=OFF -DPDVM_SERVE=OFF -DPDVM_BUILD_BENCH=OFF "${launcher[@]}" >/dev/null
# Every unit test (the SIMD kernels against the scalar reference on every compiled target, the
# formats, tokenizer, sampler, UPG, ...); ctest runs them through the toolchain's emulator. The
# Python tests are left out: they start the pdvm binary themselves, which needs binfmt_misc.
targets=(pdvm_cli)
for source in tests/unit/*_test.cpp; do targets+=("unit_$(basename "$source" .cpp)"); done
cmake --build "$build_dir" -j"$(nproc)" --target "${targets[@]}"

emulate=(qemu-aarch64 -L "$PDVM_ARM64_SYSROOT")
"${emulate[@]}" "$build_dir/tests/unit_cpu_fast_kernels_test" --gtest_filter='SimdDispatch.*' |
  grep "SIMD targets tested"
log=$build_dir/test-aarch64.log
if ! ctest --test-dir "$build_dir" -L unit -E '^py_' -j"$(nproc)" --timeout 600 --output-on-failure >"$log"; then
  tail -n 80 "$log"; echo "test-aarch64: unit tests FAILED (log: $log)"; exit 1
fi
grep "tests passed" "$log"

if [ "${PDVM_ARM64_MODEL_CHECK:-0}" = 1 ]; then
  model=models/SmolLM2-135M-Instruct.Q4_1.gguf
  host_bin=${PDVM_HOST_BIN:-build/pdvm}
  run_args=(run -m "$model" --backend cpu -p "The capital of France is" -n 16 --temp 0)
  arm_text=$("${emulate[@]}" "$build_dir/pdvm" "${run_args[@]}" 2>/dev/null)
  host_text=$("$host_bin" "${run_args[@]}" 2>/dev/null)
  echo "aarch64: $arm_text"
  echo "host:    $host_text"
  [ "$arm_text" = "$host_text" ] || { echo "test-aarch64: generated text differs from the host's"; exit 1; }
fi
echo "test-aarch64: all passed"
