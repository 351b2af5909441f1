#!/usr/bin/env python3
"""Checks kdc's .npy and safetensors code against NumPy and the Python
safetensors package, both ways: files they write, kdc reads (same dtype,
shape and bytes); files kdc writes, they read (same values).

Usage: interop.py RT_TOOL. Exits 77 (ctest: skipped) when numpy is missing;
the safetensors half is skipped, with a note, when only that package is
missing (pip install numpy safetensors)."""
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
except ImportError:
    print("skipped: numpy is not installed (pip install numpy safetensors)")
    sys.exit(77)

TOOL = sys.argv[1]
failures = 0


def check(ok, what):
    global failures
    if not ok:
        failures += 1
        print("FAIL:", what)


def fnv1a(b):
    h = 0xCBF29CE484222325
    for x in b:
        h = ((h ^ x) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def tool(*args):
    r = subprocess.run([TOOL, *args], capture_output=True, text=True)
    return r.returncode, r.stdout.strip(), r.stderr.strip()


# kd_dtype name for each NumPy dtype kdc reads; uint16 is bfloat16 bits.
KD_NAME = {"<f4": "f32", "<f8": "f64", "<i4": "i32", "<i8": "i64", "<u2": "bf16", "|b1": "bool"}
SHAPES = [(), (7,), (3, 5), (2, 3, 4), (2, 1, 3, 2), (0, 4)]


def pattern(dtype, shape):
    """The values rt_tool npy-write fills in (see pattern() there)."""
    i = np.arange(int(np.prod(shape)), dtype=np.int64)
    if dtype == "bool":
        return (i % 3 == 0).reshape(shape)
    if dtype in ("i32", "i64"):
        return (7 * i - 5).astype(np.int32 if dtype == "i32" else np.int64).reshape(shape)
    f = (i - 3) / 2
    if dtype == "bf16":  # exact in bf16, so the top half of the f32 bits
        return (f.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).reshape(shape)
    return f.astype(np.float32 if dtype == "f32" else np.float64).reshape(shape)


def test_npy(d):
    rng = np.random.default_rng(0)
    for descr, kd in KD_NAME.items():
        for shape in SHAPES:
            a = (rng.standard_normal(shape) * 1000).astype(np.dtype(descr))
            p = os.path.join(d, "np.npy")
            np.save(p, a)
            rc, out, err = tool("npy-info", p)
            want = "%s [%s] %s" % (kd, ",".join(map(str, shape)), fnv1a(a.tobytes()))
            check(rc == 0 and out == want, "numpy %s %s: got %r %r, want %r" % (descr, shape, out, err, want))
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    for version in [(1, 0), (2, 0), (3, 0)]:
        p = os.path.join(d, "v.npy")
        with open(p, "wb") as f:
            np.lib.format.write_array(f, a, version=version)
        rc, out, err = tool("npy-info", p)
        check(rc == 0 and out.endswith(fnv1a(a.tobytes())), "version %s: %r %r" % (version, out, err))
    bad = [
        ("Fortran-order", np.asfortranarray(a)),
        ("big-endian", a.astype(">f4")),
        ("object arrays", np.array([1, "a"], dtype=object)),
        ("unsupported dtype", a.astype(np.complex64)),
    ]
    for want, arr in bad:
        p = os.path.join(d, "bad.npy")
        np.save(p, arr, allow_pickle=True)
        rc, out, err = tool("npy-info", p)
        check(rc == 1 and want in err, "%s: rc %d, %r" % (want, rc, err))
    for kd in KD_NAME.values():
        for shape in SHAPES:
            p = os.path.join(d, "kd.npy")
            rc, _, err = tool("npy-write", p, kd, *map(str, shape))
            check(rc == 0, "npy-write %s %s: %s" % (kd, shape, err))
            if rc == 0:
                got, want = np.load(p), pattern(kd, shape)
                ok = got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
                check(ok, "numpy reads kdc's %s %s: %r" % (kd, shape, got))


def test_safetensors(d):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    tensors = {
        "model.embed.weight": rng.standard_normal((5, 3)).astype(np.float32),
        "blocks.0.ln.bias": rng.standard_normal((3,)).astype(np.float64),
        "half": rng.standard_normal((2, 2)).astype(np.float16),
        "ids": np.arange(-3, 4, dtype=np.int32),
        "big": np.arange(6, dtype=np.int64).reshape(1, 2, 3),
        "bytes": np.arange(5, dtype=np.uint8),
        "flags": np.array([True, False, True]),
        "scalar": np.array(2.5, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }
    st_name = {np.float32: "F32", np.float64: "F64", np.float16: "F16", np.int32: "I32",
               np.int64: "I64", np.uint8: "U8", np.bool_: "BOOL"}
    p = os.path.join(d, "py.safetensors")
    save_file(tensors, p, metadata={"format": "np", "step": "7"})
    rc, out, err = tool("st-info", p)
    check(rc == 0, "st-info on the package's file: %s" % err)
    lines = set(out.splitlines())
    for name, a in tensors.items():
        want = "tensor %s %s [%s] %s" % (name, st_name[a.dtype.type], ",".join(map(str, a.shape)),
                                         fnv1a(a.tobytes()))
        check(want in lines, "package file, %s: want %r in %r" % (name, want, sorted(lines)))
    check("meta format=np" in lines and "meta step=7" in lines, "metadata: %r" % sorted(lines))

    p = os.path.join(d, "kd.safetensors")
    rc, _, err = tool("st-write", p)
    check(rc == 0, "st-write: %s" % err)
    if rc != 0:
        return
    # The package validates the whole header on open; NumPy has no bfloat16,
    # so "b" is checked through the raw bytes below.
    with safe_open(p, framework="np") as f:
        got = {k: f.get_tensor(k) for k in f.keys() if k != "b"}
        check(sorted(f.keys()) == ["a", "b", "c", "d", "e.f16"], "keys: %r" % sorted(f.keys()))
    f32 = np.arange(6, dtype=np.float32).reshape(2, 3) * 0.25
    check(np.array_equal(got["a"], f32) and got["a"].dtype == np.float32, "a: %r" % got["a"])
    check(got["c"].tolist() == [-1, 0, 5] and got["c"].dtype == np.int64, "c: %r" % got["c"])
    check(got["d"].tolist() == [1, 2, 3, 4, 250], "d: %r" % got["d"])
    check(got["e.f16"].tolist() == [1.0, -2.0] and got["e.f16"].dtype == np.float16, "e: %r" % got["e.f16"])
    with safe_open(p, framework="np") as f:
        meta = f.metadata()
        check(meta == {"format": "np", "note": 'kdc test "quoted" \u00e9'}, "metadata: %r" % meta)
    with open(p, "rb") as f:
        raw = f.read()
    import json
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    check((8 + n) % 8 == 0, "data section not 8-byte aligned")
    b0, b1 = header["b"]["data_offsets"]
    bits = np.frombuffer(raw[8 + n + b0:8 + n + b1], dtype="<u2")
    check(header["b"]["dtype"] == "BF16" and bits.tolist() == [0x3F80, 0x4000, 0xBF00, 0], "bf16: %r" % bits)


with tempfile.TemporaryDirectory() as d:
    test_npy(d)
    try:
        import safetensors  # noqa: F401
    except ImportError:
        print("note: the safetensors half is skipped (pip install safetensors)")
    else:
        test_safetensors(d)

print("interop: %s" % ("%d failure(s)" % failures if failures else "all checks passed"))
sys.exit(1 if failures else 0)
