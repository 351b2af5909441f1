"""A loss library called from Python with ctypes and the standard library
only (no numpy), as docs/abi.md shows: `kdc compile-loss -o libjsd.so`,
NAME_info, NAME_eval on random inputs against `kdc eval-loss --reference`,
and an error (vocab 0) returned as a status and a message.

usage: test_ctypes.py KDC EXAMPLES_DIR WORK_DIR

Tolerances: those of tests/aot/aot_test.c (KERNEL_REL 2e-6 on the loss,
KERNEL_ABS 1e-6 on gradient elements, relative above 1): the kernel computes
in f32 against a double reference; a wrong term of any real size is far
outside."""
import array
import ctypes
import os
import random
import struct
import subprocess
import sys

KERNEL_REL, KERNEL_ABS = 2e-6, 1e-6
N, V = 5, 77


class Info(ctypes.Structure):
    _fields_ = [("abi_version", ctypes.c_uint32), ("teacher_dtype", ctypes.c_int32),
                ("student_dtype", ctypes.c_int32), ("has_labels", ctypes.c_int32),
                ("has_grad", ctypes.c_int32), ("max_threads", ctypes.c_int32)]


def write_npy(path, descr, shape, data):
    d = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (
        descr, "".join("%d, " % s for s in shape))
    total = (10 + len(d) + 1 + 63) // 64 * 64
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", total - 10))
        f.write((d + " " * (total - 11 - len(d)) + "\n").encode())
        f.write(data.tobytes())


def read_npy_f32(path):
    with open(path, "rb") as f:
        raw = f.read()
    (hlen,) = struct.unpack("<H", raw[8:10])
    a = array.array("f")
    a.frombytes(raw[10 + hlen:])
    return a


def main():
    kdc, examples, work = sys.argv[1:4]
    lib = os.path.join(work, "libjsd.so")
    subprocess.run([kdc, "compile-loss", os.path.join(examples, "jsd.kd"), "--labels", "-o", lib],
                   check=True)
    rng = random.Random(7)
    t = array.array("f", (rng.uniform(-4, 4) for _ in range(N * V)))
    s = array.array("f", (rng.uniform(-4, 4) for _ in range(N * V)))
    labels = array.array("q", [1, -100, 76, 0, 9])
    for name, descr, shape, data in (("t", "<f4", (N, V), t), ("s", "<f4", (N, V), s),
                                     ("l", "<i8", (N,), labels)):
        write_npy(os.path.join(work, name + ".npy"), descr, shape, data)
    ref_grad_path = os.path.join(work, "ref_grad.npy")
    out = subprocess.run([kdc, "eval-loss", os.path.join(examples, "jsd.kd"),
                          "--teacher", os.path.join(work, "t.npy"),
                          "--student", os.path.join(work, "s.npy"),
                          "--labels", os.path.join(work, "l.npy"),
                          "--grad-out", ref_grad_path, "--reference"],
                         check=True, capture_output=True, text=True).stdout
    ref_loss = float(out.split("loss:")[1])
    ref_grad = read_npy_f32(ref_grad_path)

    so = ctypes.CDLL(lib)
    so.jsd_info.argtypes = [ctypes.POINTER(Info)]
    so.jsd_eval.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                            ctypes.c_int64, ctypes.c_void_p, ctypes.POINTER(ctypes.c_double),
                            ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    info = Info()
    failures = []
    if so.jsd_info(ctypes.byref(info)) != 0 or (info.abi_version, info.has_labels,
                                                info.has_grad, info.student_dtype) != (2, 1, 1, 0):
        failures.append("info: abi %d labels %d grad %d student %d" % (
            info.abi_version, info.has_labels, info.has_grad, info.student_dtype))

    def ptr(a):
        return a.buffer_info()[0]

    grad = array.array("f", bytes(4 * N * V))
    loss = ctypes.c_double()
    err = ctypes.create_string_buffer(256)
    st = so.jsd_eval(ptr(t), ptr(s), ptr(labels), N, V, ptr(grad), ctypes.byref(loss), 2, err,
                     len(err))
    if st != 0:
        failures.append("eval: status %d: %s" % (st, err.value.decode()))
    elif not abs(loss.value - ref_loss) <= KERNEL_REL * abs(ref_loss) + KERNEL_ABS:
        failures.append("loss %.9g, reference %.9g" % (loss.value, ref_loss))
    bad = [i for i in range(N * V)
           if not abs(grad[i] - ref_grad[i]) <= KERNEL_ABS * max(1.0, abs(ref_grad[i]))]
    if st == 0 and bad:
        failures.append("grad[%d] = %.9g, reference %.9g" % (bad[0], grad[bad[0]],
                                                             ref_grad[bad[0]]))
    st = so.jsd_eval(ptr(t), ptr(s), ptr(labels), N, 0, ptr(grad), ctypes.byref(loss), 1, err,
                     len(err))
    if st != 5 or b"vocab" not in err.value:
        failures.append("vocab 0: status %d, message %r" % (st, err.value))
    for f in failures:
        print("FAIL " + f)
    print("jsd via ctypes: loss %.9g (reference %.9g): %s" % (
        loss.value, ref_loss, "FAILED" if failures else "ok"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
