#!/bin/sh
# `kdc fmt` as a command: the in-place rewrite (atomic, mode kept, through
# symbolic links), --check, standard input, files with syntax errors (never
# touched), several files at once, --help and usage errors.
# Usage: test_fmt_cli.sh KDC GOLDEN_DIR
set -u
kdc=$1
golden=$2
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kdc-fmt-cli.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
fails=0
fail() {
  echo "FAIL: $*" >&2
  fails=$((fails + 1))
}
messy=$golden/layout.in.kd
tidy=$golden/layout.out.kd
printf 'data d {\n  seq 128 +\n}\n' >"$tmp/bad.kd"
cp "$tmp/bad.kd" "$tmp/bad.orig"

# Rewrites in place, keeps the mode, leaves no temporary file behind.
cp "$messy" "$tmp/a.kd"
chmod 640 "$tmp/a.kd"
"$kdc" fmt "$tmp/a.kd" >"$tmp/out" 2>&1 || fail "fmt FILE: exit status $?"
cmp -s "$tmp/a.kd" "$tidy" || fail "fmt FILE: the rewritten file differs from $tidy"
[ "$(stat -c %a "$tmp/a.kd")" = 640 ] || fail "fmt FILE: the file mode changed"
[ ! -s "$tmp/out" ] || fail "fmt FILE: printed something: $(cat "$tmp/out")"
leftover=$(ls -A "$tmp" | grep -c kdfmt)
[ "$leftover" -eq 0 ] || fail "fmt FILE: left a temporary file"

# --check: silent and 0 on a canonical file; the name and 1 on another, untouched.
"$kdc" fmt --check "$tmp/a.kd" >"$tmp/out" 2>&1 || fail "--check canonical: exit status $?"
[ ! -s "$tmp/out" ] || fail "--check canonical: printed $(cat "$tmp/out")"
cp "$messy" "$tmp/b.kd"
"$kdc" fmt --check "$tmp/a.kd" "$tmp/b.kd" >"$tmp/out" 2>&1
[ $? -eq 1 ] || fail "--check messy: exit status is not 1"
[ "$(cat "$tmp/out")" = "$tmp/b.kd" ] || fail "--check messy: printed '$(cat "$tmp/out")'"
cmp -s "$tmp/b.kd" "$messy" || fail "--check messy: the file was changed"

# Standard input to standard output, with no FILE and with '-'.
"$kdc" fmt <"$messy" >"$tmp/out" || fail "fmt <stdin: exit status $?"
cmp -s "$tmp/out" "$tidy" || fail "fmt <stdin: output differs from $tidy"
"$kdc" fmt - <"$messy" >"$tmp/out" || fail "fmt - : exit status $?"
cmp -s "$tmp/out" "$tidy" || fail "fmt - : output differs from $tidy"
"$kdc" fmt --check - <"$messy" >"$tmp/out"
[ $? -eq 1 ] || fail "fmt --check - : exit status is not 1"

# A syntax error: a diagnostic, status 1, the file untouched; the other files
# on the command line are still formatted.
cp "$messy" "$tmp/c.kd"
"$kdc" fmt "$tmp/bad.kd" "$tmp/c.kd" >"$tmp/out" 2>"$tmp/err"
[ $? -eq 1 ] || fail "syntax error: exit status is not 1"
grep -q "bad.kd:3:1: error" "$tmp/err" || fail "syntax error: no diagnostic: $(cat "$tmp/err")"
cmp -s "$tmp/bad.kd" "$tmp/bad.orig" || fail "syntax error: the file was changed"
cmp -s "$tmp/c.kd" "$tidy" || fail "syntax error: the next file was not formatted"
"$kdc" fmt <"$tmp/bad.kd" >"$tmp/out" 2>/dev/null
[ $? -eq 1 ] || fail "syntax error on stdin: exit status is not 1"
[ ! -s "$tmp/out" ] || fail "syntax error on stdin: printed text"

# Through a symbolic link the target is rewritten and the link stays a link.
cp "$messy" "$tmp/target.kd"
ln -s target.kd "$tmp/link.kd"
"$kdc" fmt "$tmp/link.kd" || fail "symlink: exit status $?"
[ -L "$tmp/link.kd" ] || fail "symlink: the link was replaced by a file"
cmp -s "$tmp/target.kd" "$tidy" || fail "symlink: the target was not formatted"

# Usage: --help, an unknown option, a missing file.
"$kdc" fmt --help >"$tmp/out" || fail "--help: exit status $?"
grep -q "^usage: kdc fmt" "$tmp/out" || fail "--help: no usage line"
"$kdc" fmt --frobnicate "$tmp/a.kd" >/dev/null 2>&1
[ $? -eq 2 ] || fail "unknown option: exit status is not 2"
"$kdc" fmt "$tmp/missing.kd" >/dev/null 2>&1
[ $? -eq 1 ] || fail "missing file: exit status is not 1"

[ "$fails" -eq 0 ] && echo "fmt_cli: all checks passed"
[ "$fails" -eq 0 ]
