#!/bin/sh
# kdc dump-ast as a command: the tree on stdout and exit 0; syntax errors on
# stderr and exit 1; usage errors exit 2; --help exits 0.
# Usage: test_dump_ast_cli.sh KDC (an absolute path: the test runs in a temporary folder)
kdc=$1
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
cd "$tmp" || exit 1
fail=0
expect_status() { # WANT CMD...
  want=$1; shift
  "$@" >out 2>err
  got=$?
  if [ "$got" != "$want" ]; then
    echo "FAIL: '$*' exited $got, wanted $want"; cat out err; fail=1
  fi
}

printf 'x = f(a, b = 2) # c\n' > ok.kd
expect_status 0 "$kdc" dump-ast ok.kd
cat > want <<'END'
file @1:1-1:16
  bind x @1:1-1:16
    call @1:5-1:16
      name f @1:5-1:6
      arg @1:7-1:8
        name a @1:7-1:8
      arg b @1:10-1:15
        number 2 @1:14-1:15
END
cmp -s out want || { echo "FAIL: dump differs:"; diff want out; fail=1; }
[ -s err ] && { echo "FAIL: dump-ast wrote to stderr:"; cat err; fail=1; }

printf 'data d {\n  seq\n}\n' > bad.kd
expect_status 1 "$kdc" dump-ast bad.kd
[ -s out ] && { echo "FAIL: a tree was printed for a broken file"; fail=1; }
grep -q "^bad.kd:3:1: error: unexpected '}'; expected an expression or 'every'$" err ||
  { echo "FAIL: message:"; cat err; fail=1; }

expect_status 1 "$kdc" dump-ast missing.kd
grep -q "cannot open 'missing.kd'" err || { echo "FAIL: missing file message:"; cat err; fail=1; }
expect_status 2 "$kdc" dump-ast
expect_status 2 "$kdc" dump-ast ok.kd ok.kd
expect_status 2 "$kdc" dump-ast --bogus ok.kd
expect_status 0 "$kdc" dump-ast --help
grep -q "^usage: kdc dump-ast FILE" out || { echo "FAIL: --help"; fail=1; }
exit $fail
