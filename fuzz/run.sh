#!/usr/bin/env bash
# Runs the parser's libFuzzer target for a bounded time, from a seed corpus of
# every .kd file in examples/, tests/ and prelude/, and fails on any crash,
# leak, timeout or broken fmt property (see fuzz_parser.c).
# Usage: fuzz/run.sh BINARY SECONDS
# The corpus, the log and any crashing input go to a scratch folder next to
# BINARY, inside the build tree.
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: fuzz/run.sh BINARY SECONDS" >&2
  exit 2
fi
bin=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
seconds=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(dirname "$bin")/fuzz_parser.run
rm -rf "$work"
mkdir -p "$work/corpus" "$work/artifacts"

# Seed names carry their path, so that two files called core.kd both stay.
cd "$here"
nseeds=0
while IFS= read -r -d '' f; do
  cp "$f" "$work/corpus/$(printf '%s' "${f#./}" | tr '/' '_')"
  nseeds=$((nseeds + 1))
done < <(find examples tests prelude -name '*.kd' -type f -print0 2>/dev/null)

echo "fuzz: $nseeds seed files, ${seconds}s, log in $work/log"
# One process on one core; 64 KB inputs at most; a 10 s hang is a failure.
status=0
"$bin" -max_len=65536 -rss_limit_mb=2048 -timeout=10 -max_total_time="$seconds" \
  -dict="$here/fuzz/kd.dict" -artifact_prefix="$work/artifacts/" -print_final_stats=1 \
  "$work/corpus" >"$work/log" 2>&1 || status=$?

runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log" | tail -n 1)
if [ "$status" -ne 0 ] || [ -z "$runs" ]; then
  tail -n 60 "$work/log" >&2
  echo "fuzz: FAILED (status $status); the input is in $work/artifacts/:" >&2
  ls "$work/artifacts" >&2
  exit 1
fi
echo "fuzz: $runs inputs executed in ${seconds}s without a crash ($(ls "$work/corpus" | wc -l) corpus files)"
