#!/usr/bin/env bash
# Rewrites the expectations of golden diagnostic cases from what kdc prints
# now. Deliberate use only: read `git diff` afterwards, every changed line is
# a changed message.
#   tests/frontend/diag/regen.sh build/kdc             # every case
#   tests/frontend/diag/regen.sh build/kdc split_range # some cases (names without .kd)
set -euo pipefail
kdc=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
shift
cd "$(dirname "${BASH_SOURCE[0]}")"
if [ $# -eq 0 ]; then
  set -- $(ls *.kd *.args | sed 's/\.[a-z]*$//' | sort -u)
fi
for name in "$@"; do
  if [ -f "$name.args" ]; then
    read -r -a args < "$name.args"
  else
    args=(check "$name.kd")
  fi
  tmp=$(mktemp)
  rc=0
  "$kdc" "${args[@]}" >/dev/null 2>"$tmp" || rc=$?
  { printf 'exit: %s\n' "$rc"; cat "$tmp"; } > "$name.expected"
  rm -f "$tmp"
done
