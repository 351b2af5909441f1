#!/usr/bin/env bash
# End-to-end tests of training: kdc run, kdc build, --resume and Ctrl-C on
# tiny.kd (a teacher trained with cross-entropy, then a student distilled
# from it), and the errors a user meets first. Usage: run.sh KDC WORKDIR
#
# What is compared, exactly: the "loss" and "val_loss" numbers of the metrics
# files (9 significant digits, enough to show any difference in a float).
# Every kernel is deterministic for a given thread count and these runs use
# the same count, so the numbers must be identical, not close.
set -u
kdc=$1
work=$2
here=$(cd "$(dirname "$0")" && pwd)
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
losses() { grep -o '"\(val_\)\?loss":[^,}]*' "$1"; }

rm -rf "$work" && mkdir -p "$work" && cd "$work" || exit 1
spec=$here/tiny.kd

# 1. kdc run: the teacher, then the student that loads it.
"$kdc" run "$spec" --out run --threads 2 --eval-batches 4 > run.out 2> run.err ||
  fail "kdc run exited $?: $(tail -3 run.err)"
for f in teacher.safetensors teacher.ckpt.safetensors teacher.metrics.jsonl \
         student.safetensors student.ckpt.safetensors student.metrics.jsonl; do
  [ -s "run/$f" ] || fail "kdc run did not write run/$f"
done
[ "$(grep -c '"type":"step"' run/student.metrics.jsonl)" = 6 ] || fail "student: not 6 step lines"
[ "$(grep -c '"type":"eval"' run/student.metrics.jsonl)" = 2 ] || fail "student: not 2 eval lines"
grep -q '^student: 6 steps, loss [0-9.]*, validation cross-entropy [0-9.]*, [0-9]* tokens/s$' run.out ||
  fail "kdc run's summary line: $(cat run.out)"
grep -q '^student: wrote run/student.safetensors, run/student.ckpt.safetensors, run/student.metrics.jsonl$' run.out ||
  fail "kdc run's files line: $(cat run.out)"
# the loss must go down: the first step's loss above the last's
first=$(losses run/teacher.metrics.jsonl | head -1 | cut -d: -f2)
last=$(losses run/teacher.metrics.jsonl | grep -v val | tail -1 | cut -d: -f2)
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a) }' || fail "teacher loss $first -> $last did not fall"

# 2. kdc build: a binary that trains the student exactly as kdc run did.
"$kdc" build "$spec" -o train_student > build.out 2> build.err &&
  fail "kdc build took a spec with two train blocks and no --train"
grep -q "2 train blocks: say which with --train NAME" build.err || fail "build: $(cat build.err)"
"$kdc" build "$spec" --train student -o train_student > build.out 2> build.err ||
  fail "kdc build exited $?: $(cat build.err)"
./train_student --help | grep -q "^usage: ./train_student" || fail "train_student --help"
./train_student --out bin --threads 2 --eval-batches 4 --teacher run/teacher.safetensors \
  > bin.out 2> bin.err || fail "train_student exited $?: $(tail -3 bin.err)"
[ "$(losses bin/student.metrics.jsonl)" = "$(losses run/student.metrics.jsonl)" ] ||
  fail "the built binary's losses differ from kdc run's"

# 2b. The thread count changes no number: products are split by shape and
# reductions keep their order, whatever the pool's size.
./train_student --out t1 --threads 1 --eval-batches 4 --teacher run/teacher.safetensors \
  > /dev/null 2> t1.err || fail "--threads 1 exited $?: $(tail -3 t1.err)"
[ "$(losses t1/student.metrics.jsonl)" = "$(losses run/student.metrics.jsonl)" ] ||
  fail "1 thread and 2 threads give different losses"

# 3. --resume: 3 steps, then the rest from the checkpoint = the 6-step run.
./train_student --out res --steps 3 --threads 2 --eval-batches 4 --teacher run/teacher.safetensors \
  > /dev/null 2>&1 || fail "3 steps"
./train_student --out res --resume --threads 2 --eval-batches 4 --teacher run/teacher.safetensors \
  > res.out 2> res.err || fail "--resume exited $?: $(tail -3 res.err)"
# the 3-step run evaluates at its end (step 3), as the full run does at step 3
[ "$(losses res/student.metrics.jsonl)" = "$(losses run/student.metrics.jsonl)" ] ||
  fail "resumed losses differ: $(losses res/student.metrics.jsonl | tr '\n' ' ')"

# 4. Ctrl-C: SIGINT between steps saves the checkpoint, exits 130, and
# --resume carries on from it.
./train_student --out int --steps 100000 --threads 1 --teacher run/teacher.safetensors \
  > int.out 2> int.err &
pid=$!
for _ in $(seq 1 1200); do  # up to a minute for the first step (sanitiser builds)
  [ -s int/student.metrics.jsonl ] && break
  sleep 0.05
done
kill -INT $pid
wait $pid
status=$?
[ $status = 130 ] || fail "Ctrl-C: exit status $status, not 130"
grep -q "^interrupted: the checkpoint is int/student.ckpt.safetensors (step [0-9]*); --resume continues$" int.err ||
  fail "Ctrl-C message: $(tail -2 int.err)"
[ -s int/student.ckpt.safetensors ] || fail "Ctrl-C wrote no checkpoint"

# 4b. Accumulation: 2 micro-batches of 4 windows make the same step as one
# batch of 8 (the loader draws the same 8 windows in the same order; "mean"
# weights each micro-batch by its share of the valid tokens, so the step's
# loss is the mean over all 8 windows' tokens, not a mean of means: tiny.kd
# ignores spaces, so the two micro-batches hold different counts). Not
# bit-identical: the gradients are summed in another order (two products of 4
# windows added, against one product of 8), so the losses of steps 1-3 agree
# to about 1e-7 relative; 1e-5 leaves room for Adam to amplify that over two
# updates and still fails for a mean of means or a missed micro-batch.
sed 's/^  accumulate 2$/  accumulate 1/; s/^  batch 4$/  batch 8/
     s#"../../examples/data/#"'"$here"'/../../examples/data/#' "$spec" > acc1.kd
mkdir -p acc1 acc2 && cp run/teacher.safetensors acc1/ && cp run/teacher.safetensors acc2/
"$kdc" run acc1.kd --train student --out acc1 --steps 3 --threads 2 --eval-batches 1 \
  > /dev/null 2> acc1.err || fail "accumulate 1 x batch 8: $(tail -2 acc1.err)"
"$kdc" run "$spec" --train student --out acc2 --steps 3 --threads 2 --eval-batches 1 \
  > /dev/null 2> acc2.err || fail "accumulate 2 x batch 4: $(tail -2 acc2.err)"
paste <(grep '"type":"step"' acc1/student.metrics.jsonl | grep -o '"loss":[^,]*' | cut -d: -f2) \
      <(grep '"type":"step"' acc2/student.metrics.jsonl | grep -o '"loss":[^,]*' | cut -d: -f2) |
  awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * $1) bad = 1; n++ }
       END { exit !(n == 3 && !bad) }' ||
  fail "accumulation: $(paste <(grep -o '"loss":[^,]*' acc1/student.metrics.jsonl) <(grep -o '"loss":[^,]*' acc2/student.metrics.jsonl) | tr '\n' ' ')"

# 5. Errors a user meets first, pinned.
printf 'too short' > short.txt
sed 's#"../../examples/data/shakespeare.txt"#"short.txt"#' "$spec" > short.kd
"$kdc" run short.kd --out run2 > /dev/null 2> err2 && fail "a 9-byte corpus trained"
grep -qx "kdc run: the train split holds 8 tokens, fewer than one window of seq + 1 = 17 (use a longer file, a shorter seq, or a different split)" err2 ||
  fail "short corpus: $(cat err2)"
"$kdc" run short.kd --train student > /dev/null 2> err3 && fail "a missing teacher trained"
grep -qx "kdc run: teacher 'teacher': teacher.safetensors does not exist (train the teacher first)" err3 ||
  fail "missing teacher: $(cat err3)"
"$kdc" run short.kd --train nobody > /dev/null 2> err4 && fail "--train nobody"
grep -qx "kdc run: short.kd: no train block trains 'nobody'" err4 || fail "--train nobody: $(cat err4)"

[ $fails = 0 ] && echo "train_cli: all passed"
exit $((fails > 0))
