#!/usr/bin/env bash
# Runs the whole test suite: the normal build, the same tests under
# AddressSanitizer + UndefinedBehaviorSanitizer, a -O3 (Release) build (GCC
# warns at -O3 about what -O2 does not see, and warnings are errors), and
# bounded libFuzzer runs of the parser and of the file readers. Expects
# scripts/setup.sh to have installed the toolchain.
# Environment: KDC_FUZZ_SECONDS (default 60 for the parser, a third of it for
# the readers; 0 skips both).
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

echo "== Release (-O3) build"
cmake -S . -B build-release -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-release

seconds=${KDC_FUZZ_SECONDS:-60}
if [ "$seconds" -gt 0 ] && [ -f fuzz/CMakeLists.txt ]; then
  echo "== libFuzzer: the parser for ${seconds}s"
  CC=clang-19 cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DKDC_FUZZ=ON >/dev/null
  cmake --build build-fuzz --target fuzz_parser fuzz_formats
  fuzz/run.sh build-fuzz/fuzz/fuzz_parser "$seconds"

  echo "== libFuzzer: the .npy and safetensors readers for $((seconds / 3))s"
  # fuzz_formats reads a selector byte (odd: .npy, even: safetensors), then the file.
  work=build-fuzz/fuzz_formats.run
  rm -rf "$work" && mkdir -p "$work/corpus" "$work/artifacts"
  for f in examples/losses/*.npy; do
    { printf '\001'; cat "$f"; } >"$work/corpus/$(basename "$f")"
  done
  build-fuzz/tests/runtime/fuzz_formats -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
    -max_total_time=$((seconds / 3)) -artifact_prefix="$work/artifacts/" "$work/corpus" \
    >"$work/log" 2>&1 || { tail -n 40 "$work/log" >&2; echo "fuzz_formats: FAILED" >&2; exit 1; }
  echo "fuzz: $(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$work/log") reader inputs without a crash"
fi
