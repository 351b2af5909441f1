#!/usr/bin/env bash
# Installs what a fresh Debian bookworm machine lacks, then configures and builds kdc.
# Idempotent: when every package is present it only (re)builds, which is quick.
# Usage: scripts/setup.sh [build-dir]        (default: build)
set -euo pipefail

# Every system package kdc needs, with the versions it is built and tested against.
LLVM_MAJOR=19
PACKAGES=(
  gcc libc6-dev cmake ninja-build flex bison pkg-config
  "llvm-${LLVM_MAJOR}-dev" "llvm-${LLVM_MAJOR}-tools"
  "clang-${LLVM_MAJOR}" "libclang-rt-${LLVM_MAJOR}-dev"
  libopenblas-dev libcjson-dev
)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-"$here/build"}

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

cmake -S "$here" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build"
