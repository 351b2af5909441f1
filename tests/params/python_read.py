#!/usr/bin/env python3
"""kdc init's files through the Python safetensors package, and files that
package writes through kdc params --check.

Usage: python_read.py KDC TINY.kd WORK_DIR. Exits 77 (ctest: skipped) when
numpy or safetensors is missing (pip install numpy safetensors)."""
import os
import shutil
import subprocess
import sys

try:
    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file
except ImportError:
    print("skipped: numpy or safetensors is not installed (pip install numpy safetensors)")
    sys.exit(77)

KDC, SPEC, WORK = sys.argv[1:4]
failures = 0


def check(ok, what):
    global failures
    if not ok:
        failures += 1
        print("FAIL:", what)


def kdc(*args):
    return subprocess.run([KDC, *args], capture_output=True, text=True)


shutil.rmtree(WORK, ignore_errors=True)
os.makedirs(WORK)
path = os.path.join(WORK, "teacher.safetensors")
r = kdc("init", SPEC, "--model", "teacher", "-o", path, "--seed", "11")
check(r.returncode == 0, f"kdc init: {r.stderr}")

# The listing gives the names, shapes and init specs to compare with.
r = kdc("params", SPEC, "--model", "teacher")
rows = [line.split(None, 1) for line in r.stdout.splitlines()[1:-1]]
want = {}
for name, rest in rows:
    shape, init = rest.rsplit("]", 1)
    want[name] = ([int(d) for d in shape.strip(" [").split(",") if d.strip()], init.strip())
check(len(want) == 30, f"{len(want)} parameters listed, want 30")

tensors = load_file(path)
check(set(tensors) == set(want), f"names {sorted(set(tensors) ^ set(want))} differ")
for name, (shape, init) in want.items():
    t = tensors.get(name)
    if t is None:
        continue
    check(t.dtype == np.float32 and list(t.shape) == shape, f"{name}: {t.dtype} {t.shape}")
    if init == "ones":
        check(np.all(t == 1), f"{name}: not all ones")
    elif init == "zeros":
        check(np.all(t == 0), f"{name}: not all zeros")
    else:
        # normal(0, s): the sample std within 5 standard errors (s / sqrt(2 n)).
        s = float(init[len("normal(0, "):-1])
        n = t.size
        check(abs(t.std() - s) < 5 * s / np.sqrt(2 * n), f"{name}: std {t.std()} for {init}")
with safe_open(path, "np") as f:
    meta = f.metadata()
check(meta.get("format") == "kdc-params" and meta.get("model") == "teacher"
      and meta.get("seed") == "11" and meta.get("kdc_version"), f"metadata {meta}")

# One more block leaves every tensor the teacher has, drawn from the same
# spec, bit for bit as it was: streams come from (seed, name), not from the
# order. (The residual projections' std depends on the depth, so those
# differ, and must.)
deep_path = os.path.join(WORK, "deep.safetensors")
r = kdc("init", SPEC, "--model", "deep", "-o", deep_path, "--seed", "11")
check(r.returncode == 0, f"kdc init deep: {r.stderr}")
deep = load_file(deep_path)
r = kdc("params", SPEC, "--model", "deep")
deep_init = {line.split()[0]: line.rsplit("]", 1)[1].strip() for line in r.stdout.splitlines()[1:-1]}
same = [k for k in tensors if deep_init.get(k) == want[k][1]]
check(len(same) == 26 and len(deep) == 42, f"{len(same)} tensors share a spec, {len(deep)} in deep")
for k in same:
    check(np.array_equal(deep[k], tensors[k]), f"{k} changed when a block was added")
for k in set(tensors) - set(same):
    check(not np.array_equal(deep[k], tensors[k]), f"{k} kept its values under another std")

# A foreign file: the same tensors as F16 pass --check; one as F64 does not.
half = os.path.join(WORK, "half.safetensors")
save_file({k: v.astype(np.float16) for k, v in tensors.items()}, half)
r = kdc("params", SPEC, "--model", "teacher", "--check", half)
check(r.returncode == 0 and r.stdout.endswith("matches teacher\n"), f"F16 file: {r.stderr}")
wide = dict(tensors)
wide["ln.bias"] = wide["ln.bias"].astype(np.float64)
save_file(wide, half)
r = kdc("params", SPEC, "--model", "teacher", "--check", half)
check(r.returncode == 1 and r.stderr == f'{half}: tensor "ln.bias": dtype F64, not F32, BF16 or F16\n',
      f"F64 file: {r.returncode} {r.stderr!r}")

print("python_read.py:", "all checks passed" if not failures else f"{failures} failed")
sys.exit(1 if failures else 0)
