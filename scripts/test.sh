#!/usr/bin/env bash
# Runs the whole test suite: the normal build, the same tests under
# AddressSanitizer + UndefinedBehaviorSanitizer, and a bounded libFuzzer run of
# the parser. Expects scripts/setup.sh to have installed the toolchain.
# Environment: KDC_FUZZ_SECONDS (default 60; 0 skips the fuzz run).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
jobs=$(nproc)

echo "== release build and tests"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build
ctest --test-dir build --output-on-failure -j "$jobs"

echo "== ASan + UBSan build and tests"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DKDC_SANITIZE=ON >/dev/null
cmake --build build-asan
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -j "$jobs"

seconds=${KDC_FUZZ_SECONDS:-60}
if [ "$seconds" -gt 0 ] && [ -f fuzz/CMakeLists.txt ]; then
  echo "== libFuzzer: the parser for ${seconds}s"
  CC=clang-19 cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DKDC_FUZZ=ON >/dev/null
  cmake --build build-fuzz --target fuzz_parser
  fuzz/run.sh build-fuzz/fuzz/fuzz_parser "$seconds"
fi
