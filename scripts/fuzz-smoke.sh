#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (build folder build-fuzz) and runs each for
# PDVM_FUZZ_SECONDS (default 60) on its checked-in seed corpus. Any crash, leak, timeout or
# failed check fails the script; the reproducer is left in build-fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${PDVM_FUZZ_BUILD_DIR:-build-fuzz}
seconds=${PDVM_FUZZ_SECONDS:-60}
export PDVM_TESTDATA=${PDVM_TESTDATA:-$(cd .. && pwd)/shared/testdata}

# clang with its libFuzzer/sanitizer runtimes (Debian 12: clang 14).
if ! dpkg-query -W -f='${Status}' clang libclang-rt-14-dev 2>/dev/null | grep -q "ok installed"; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq clang libclang-rt-14-dev >/dev/null
fi

cmake -S . -B "$build_dir" -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang -DPDVM_CUDA=OFF \
  -DPDVM_FUZZ=ON -DPDVM_BUILD_TESTS=OFF -DPDVM_BUILD_BENCH=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
targets=(gguf_fuzz tokenizer_fuzz chat_template_fuzz openai_request_fuzz cli_fuzz http_request_fuzz)
cmake --build "$build_dir" -j"$(nproc)" --target "${targets[@]}" gguf_fuzz_corpus

mkdir -p "$build_dir/artifacts"
gguf_seeds=$build_dir/corpus-seeds/gguf
rm -rf "$gguf_seeds" && mkdir -p "$gguf_seeds"
"$build_dir/fuzz/gguf_fuzz_corpus" "$gguf_seeds" >/dev/null
for target in "${targets[@]}"; do
  name=${target%_fuzz}
  seeds=fuzz/corpus/$name
  [ "$name" = gguf ] && seeds=$gguf_seeds
  work=$build_dir/corpus-work/$name
  mkdir -p "$work"
  echo "fuzz-smoke: $target for ${seconds} s"
  if ! "$build_dir/fuzz/$target" -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="$build_dir/artifacts/$name-" "$work" "$seeds" >"$build_dir/$name.log" 2>&1; then
    tail -n 40 "$build_dir/$name.log"
    echo "fuzz-smoke: $target FAILED (log: $build_dir/$name.log)"
    exit 1
  fi
  grep -E "^#[0-9]+[[:space:]]+DONE" "$build_dir/$name.log" | tail -n 1 || true
done
echo "fuzz-smoke: all targets ran ${seconds} s without a finding"
