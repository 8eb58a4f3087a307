#!/usr/bin/env bash
# Installs everything pdvm needs on a fresh Debian 12 machine, fetches the default model and
# builds. Idempotent: re-running skips what is already there.
#   PDVM_BUILD_DIR   build folder (default: build)
#   PDVM_CUDA        AUTO|ON|OFF (default AUTO: on when nvcc is found)
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(build-essential cmake ninja-build pkg-config python3 python3-pip unzip
  googletest libgtest-dev libbenchmark-dev libpcre2-dev libfmt-dev libcli11-dev
  nlohmann-json3-dev libhwy-dev libcpp-httplib-dev bible-kjv)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python3 -m pip install -q -r reference/requirements.txt

scripts/fetch-model.sh

build_dir=${PDVM_BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPDVM_CUDA="${PDVM_CUDA:-AUTO}" >/dev/null
cmake --build "$build_dir" -j"$(nproc)"
