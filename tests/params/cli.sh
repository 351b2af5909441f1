#!/bin/sh
# kdc init and kdc params on tests/params/tiny.kd: outputs and exit codes.
# usage: cli.sh KDC SOURCE_DIR WORK_DIR
# Runs in WORK_DIR with a copy of tiny.kd, so that paths in messages are
# relative and the teacher's `load` file lands there, not in the sources.
set -u
kdc=$1 src=$2 work=$3
rm -rf "$work" && mkdir -p "$work" && cp "$src/tiny.kd" "$work/" && cd "$work" || exit 1
fails=0

# expect CODE STDOUT STDERR -- kdc ARGS...: the exit code and both outputs,
# exactly; STDOUT "*" leaves stdout unchecked (out.txt keeps it).
expect() {
  code=$1 out=$2 err=$3
  shift 4
  "$kdc" "$@" >out.txt 2>err.txt
  got=$?
  if [ "$got" != "$code" ] || { [ "$out" != "*" ] && [ "$(cat out.txt)" != "$out" ]; } || [ "$(cat err.txt)" != "$err" ]; then
    echo "FAIL: kdc $*"
    echo "  exit $got, want $code"
    echo "  stdout:"; cat out.txt; echo "  want:"; echo "$out"
    echo "  stderr:"; cat err.txt; echo "  want:"; echo "$err"
    fails=$((fails + 1))
  fi
}

student_table='name                       shape    init
embed_1.weight             [16, 4]  normal(0, 0.02)
embed_2.weight             [8, 4]   normal(0, 0.02)
blocks.0.ln_1.weight       [4]      ones
blocks.0.ln_1.bias         [4]      zeros
blocks.0.attn.qkv.weight   [4, 12]  normal(0, 0.02)
blocks.0.attn.qkv.bias     [12]     zeros
blocks.0.attn.proj.weight  [4, 4]   normal(0, 0.0141421)
blocks.0.attn.proj.bias    [4]      zeros
blocks.0.ln_2.weight       [4]      ones
blocks.0.ln_2.bias         [4]      zeros
blocks.0.mlp.fc.weight     [4, 16]  normal(0, 0.02)
blocks.0.mlp.fc.bias       [16]     zeros
blocks.0.mlp.proj.weight   [16, 4]  normal(0, 0.0141421)
blocks.0.mlp.proj.bias     [4]      zeros
ln.weight                  [4]      ones
ln.bias                    [4]      zeros
linear.weight              [4, 16]  normal(0, 0.02)
linear.bias                [16]     zeros
total: 428 parameters in 18 tensors'

# The listing: GPT-2's count for 1 layer, width 4, vocabulary 16, context 8:
# 16*4 + 8*4 + (12*16 + 13*4) + 2*4 + 4*16 + 16 = 428.
expect 0 "$student_table" "" -- params tiny.kd --model student

# init: the train block's seed (3) by default; the teacher's `load` file by
# default; the same seed gives the same bytes, another seed other bytes.
expect 0 "student: 428 parameters in 18 tensors, seed 3 -> s.safetensors" "" \
  -- init tiny.kd --model student -o s.safetensors
expect 1 "" "kdc init: s.safetensors exists; --force replaces it" \
  -- init tiny.kd --model student -o s.safetensors
expect 0 "student: 428 parameters in 18 tensors, seed 3 -> s3.safetensors" "" \
  -- init tiny.kd --model student -o s3.safetensors --seed 3
expect 0 "student: 428 parameters in 18 tensors, seed 4 -> s.safetensors" "" \
  -- init tiny.kd --model student -o s.safetensors --seed 4 --force
cmp -s s.safetensors s3.safetensors && { echo "FAIL: seeds 3 and 4 wrote the same file"; fails=$((fails + 1)); }
expect 0 "student: 428 parameters in 18 tensors, seed 3 -> s.safetensors" "" \
  -- init tiny.kd --model student -o s.safetensors --force
cmp s.safetensors s3.safetensors || { echo "FAIL: seed 3 twice wrote different files"; fails=$((fails + 1)); }
expect 0 "teacher: 2096 parameters in 30 tensors, seed 1 -> tiny_teacher.safetensors" "" \
  -- init tiny.kd --model teacher
[ -f tiny_teacher.safetensors ] || { echo "FAIL: no tiny_teacher.safetensors"; fails=$((fails + 1)); }

# params --check: a match, and a file of another model.
expect 0 "$student_table
s.safetensors: matches student" "" -- params tiny.kd --model student --check s.safetensors
expect 1 "*" \
'tiny_teacher.safetensors: 12 unexpected tensors: "blocks.1.attn.proj.bias" (did you mean "blocks.0.attn.proj.bias"?), "blocks.1.attn.proj.weight" (did you mean "blocks.0.attn.proj.weight"?), "blocks.1.attn.qkv.bias" (did you mean "blocks.0.attn.qkv.bias"?), "blocks.1.attn.qkv.weight" (did you mean "blocks.0.attn.qkv.weight"?), "blocks.1.ln_1.bias" (did you mean "blocks.0.ln_1.bias"?) and 7 more
tiny_teacher.safetensors: tensor "embed_1.weight": shape [16, 8] in the file, [16, 6] in the model
tiny_teacher.safetensors: tensor "embed_2.weight": shape [8, 8] in the file, [8, 6] in the model
tiny_teacher.safetensors: tensor "blocks.0.ln_1.weight": shape [8] in the file, [6] in the model
tiny_teacher.safetensors: tensor "blocks.0.ln_1.bias": shape [8] in the file, [6] in the model
tiny_teacher.safetensors: tensor "blocks.0.attn.qkv.weight": shape [8, 24] in the file, [6, 18] in the model
tiny_teacher.safetensors: ... and 12 more mismatches' \
  -- params tiny.kd --model wide --check tiny_teacher.safetensors
# wide (width 6): 16*6 + 8*6 + (12*36 + 13*6) + 2*6 + 6*16 + 16 = 778.
[ "$(sed -n '$p' out.txt)" = "total: 778 parameters in 18 tensors" ] || { echo "FAIL: wide's total: $(sed -n '$p' out.txt)"; fails=$((fails + 1)); }

# User errors (1) and usage errors (2).
expect 2 "" "kdc init: 'student' has no \`load\` file: give one with -o FILE.safetensors" \
  -- init tiny.kd --model student
expect 1 "" "kdc init: tiny.kd: no model instance 'nosuch' (instances: teacher, student, wide, deep)" \
  -- init tiny.kd --model nosuch -o x.safetensors
expect 1 "" "kdc params: tiny.kd: 'gpt' is a model definition, not an instance (instances: teacher, student, wide, deep)" \
  -- params tiny.kd --model gpt
expect 2 "" "kdc init: no --model NAME (see 'kdc init --help')" -- init tiny.kd
expect 2 "" "kdc params: no SPEC.kd (see 'kdc params --help')" -- params --model student
expect 2 "" "kdc init: --seed takes an integer >= 0, not '-1'" -- init tiny.kd --model student --seed -1
expect 2 "" "kdc params: unexpected argument '-o' (see 'kdc params --help')" -- params tiny.kd --model student -o x
[ -f x.safetensors ] && { echo "FAIL: a failed init wrote x.safetensors"; fails=$((fails + 1)); }

[ "$fails" = 0 ] && echo "cli.sh: all checks passed"
exit "$fails"
