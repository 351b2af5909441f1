#!/usr/bin/env bash
# The proof that distillation works: trains the teacher of examples/, then
# every student of examples/ with the same plan and seed (examples/fkl.kd,
# rkl.kd, jsd.kd, custom_divergence.kd, and ce_only.kd, the baseline on the
# labels alone), and prints each student's validation cross-entropy after
# the same number of steps as a Markdown table.
#
#   scripts/distill_table.sh [--data FILE] [--out DIR] [--threads N] [--steps N]
#
# --data defaults to the shared corpus ../shared/data/tinyshakespeare.txt
# when it exists (beside the repository), else the slice in examples/data.
# --steps overrides the students' steps (the teacher keeps its own). A
# teacher already in DIR (teacher.safetensors) is reused; delete it to
# retrain. The table is also written to DIR/table.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
kdc=${KDC:-$root/build/kdc}
data=$root/../shared/data/tinyshakespeare.txt
[ -f "$data" ] || data=$root/examples/data/shakespeare.txt
out=$root/runs/table
threads=
steps=
while [ $# -gt 0 ]; do
  case $1 in
    --data) data=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --threads) threads="--threads $2"; shift 2 ;;
    --steps) steps="--steps $2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "distill_table.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[ -x "$kdc" ] || { echo "distill_table.sh: no $kdc (run scripts/setup.sh first)" >&2; exit 1; }
mkdir -p "$out"
log=$out/log.txt
: > "$log"
echo "data: $data ($(wc -c < "$data") bytes); outputs and logs in $out" >&2

if [ -f "$out/teacher.safetensors" ]; then
  echo "teacher: reusing $out/teacher.safetensors" >&2
else
  echo "teacher: training (examples/teacher.kd)" >&2
  # shellcheck disable=SC2086
  "$kdc" run "$root/examples/teacher.kd" --out "$out" --data "$data" $threads \
    > "$out/teacher.out" 2>> "$log"
fi
teacher_ce=$(sed -n 's/.*validation cross-entropy \([0-9.]*\).*/\1/p' "$out/teacher.out" | tail -1)

table=$out/table.md
{
  echo "| student | objective | validation cross-entropy (nats/byte) | tokens/s |"
  echo "|---|---|---|---|"
} > "$table"
for s in ce_only fkl rkl jsd custom_divergence; do
  echo "student: $s (examples/$s.kd)" >&2
  # shellcheck disable=SC2086
  "$kdc" run "$root/examples/$s.kd" --out "$out" --data "$data" $threads $steps \
    > "$out/$s.out" 2>> "$log"
  line=$(grep '^student: [0-9]* steps' "$out/$s.out")
  ce=$(sed -n 's/.*validation cross-entropy \([0-9.]*\).*/\1/p' <<< "$line")
  tps=$(sed -n 's/.*, \([0-9]*\) tokens\/s$/\1/p' <<< "$line")
  case $s in
    ce_only) what="cross-entropy on the labels only" ;;
    fkl) what="0.5 T^2 fkl + 0.5 CE, T = 2" ;;
    rkl) what="0.5 T^2 rkl + 0.5 CE, T = 2" ;;
    jsd) what="0.5 T^2 jsd(beta 0.5) + 0.5 CE, T = 2" ;;
    custom_divergence) what="0.5 T^2 clipped_kl (user-defined) + 0.5 CE, T = 2" ;;
  esac
  echo "| $s | $what | $ce | $tps |" >> "$table"
done
echo "| (teacher) | cross-entropy, examples/teacher.kd | $teacher_ce | |" >> "$table"
cat "$table"
