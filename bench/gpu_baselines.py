#!/usr/bin/env python3
"""GPU baselines for kdc's PTX losses: PyTorch CUDA eager and Liger-Kernel.

The figures kdc_gpu_bench (bench/gpu_bench.c) prints for kdc are put next
to these, on the same GPU: forward + backward (d loss / d student logits)
of a distillation loss over [BT, V] logits, median of --repeats timed with
CUDA events after warm-up, and the bandwidth of the least traffic such a
loss needs, 3 s BT V bytes (read teacher and student once, write the
gradient once, which PyTorch and Liger keep in the logits' dtype; s = 4 for
f32 logits, 2 for bf16) / time: kdc_gpu_bench's (2 s + g) formula for PTX
compiled with --grad-dtype bf16 when the logits are bf16, so compare bf16
rows with kdc's compiled that way. Peak memory: torch.cuda.max_memory_allocated
above the inputs.

Shapes are Liger-Kernel's own benchmark shapes: kl_div at BT = 16384,
V = 131072 (8 GiB per f32 tensor: an 80 GB GPU holds inputs, gradient and
one temporary or two) and jsd / tvd at BT = 8192, V = 131072.

Rows:
  eager     bench/torch_losses.py's fkl / jsd / tvd (what TRL and torchtune
            write), from logits
  liger     LigerKLDIVLoss (fkl), LigerJSD (beta 0.5), LigerTVDLoss on
            log-probabilities / probabilities, plus the log_softmax /
            softmax that turns logits into their input (Liger takes no
            logits), since kdc starts from logits too
  liger-k   the Liger kernel alone, its inputs precomputed (a lower bound)

Needs a CUDA GPU, torch and (for the Liger rows) liger-kernel:
    pip install torch liger-kernel
Nothing of kdc depends on either. Usage:
    python3 bench/gpu_baselines.py [--dtype f32|bf16] [--repeats 20]
        [--loss fkl,jsd,tvd] [--shape fkl=16384x131072 ...]
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_losses  # noqa: E402  (the eager definitions, shared with the CPU benchmark)

SHAPES = {"fkl": (16384, 131072), "jsd": (8192, 131072), "tvd": (8192, 131072)}


def liger_modules():
    try:
        from liger_kernel.transformers import LigerJSD, LigerKLDIVLoss, LigerTVDLoss
    except ImportError as e:
        print(f"# liger-kernel not importable ({e}): no Liger rows", file=sys.stderr)
        return None
    return {
        "fkl": LigerKLDIVLoss(reduction="batchmean", log_target=True),
        "jsd": LigerJSD(beta=0.5),
        "tvd": LigerTVDLoss(reduction="batchmean"),
    }


def liger_call(name, mod, s, t):
    """Liger's loss from logits: forward(input, target) in each module's convention."""
    if name == "fkl":  # KL(p || q): input log q, target log p
        return mod(F.log_softmax(s.float(), -1), F.log_softmax(t.float(), -1))
    if name == "jsd":  # LigerJSD(log_q student, log_p teacher)
        return mod(F.log_softmax(s.float(), -1), F.log_softmax(t.float(), -1))
    return mod(F.softmax(t.float(), -1), F.softmax(s.float(), -1))  # tvd(p, q)


def timed(fn, repeats):
    """median ms of fn() (forward + backward), and peak bytes allocated during it"""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    ms = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ms.append(a.elapsed_time(b))
    ms.sort()
    return ms[len(ms) // 2], torch.cuda.max_memory_allocated() - base


def bench(name, n, v, dtype, repeats, liger):
    torch.manual_seed(0)
    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    # 64 distinct rows tiled over BT, as kdc_gpu_bench does
    t = (torch.rand(64, v, device="cuda") * 12 - 6).to(dt).repeat(n // 64 + 1, 1)[:n].contiguous()
    s0 = (torch.rand(64, v, device="cuda") * 12 - 6).to(dt).repeat(n // 64 + 1, 1)[:n].contiguous()
    s = s0.clone().requires_grad_(True)
    es = 2 if dtype == "bf16" else 4
    ideal = 3 * es * n * v  # the gradient in the logits' dtype
    eager = getattr(torch_losses, name)
    rows = [("eager", lambda: eager(s, t).backward())]
    if liger:
        mod = liger[name]
        rows.append(("liger", lambda: liger_call(name, mod, s, t).backward()))
        # the kernel alone: inputs in Liger's form, precomputed
        with torch.no_grad():
            if name == "tvd":
                x0, y = F.softmax(t.float(), -1), F.softmax(s.float(), -1)
            else:
                x0, y = F.log_softmax(s.float(), -1), F.log_softmax(t.float(), -1)
        x = x0.clone().requires_grad_(True)
        if name == "tvd":
            rows.append(("liger-k", lambda: mod(y, x).backward()))
        else:
            rows.append(("liger-k", lambda: mod(x, y).backward()))
    for label, fn in rows:
        try:
            ms, extra = timed(fn, repeats)
        except torch.cuda.OutOfMemoryError:
            print(f"{name:4s} {label:8s} {dtype:4s} BT={n} V={v}  out of memory")
            torch.cuda.empty_cache()
            continue
        gbs = ideal / (ms * 1e-3) / 1e9
        print(f"{name:4s} {label:8s} {dtype:4s} BT={n} V={v}  {ms:9.3f} ms  {gbs:7.1f} GB/s"
              f"  extra {extra / 2**30:6.2f} GiB")
        s.grad = None
        torch.cuda.empty_cache()


def copy_bandwidth():
    x = torch.empty(1 << 28, device="cuda")  # 1 GiB
    y = torch.empty_like(x)
    ms, _ = timed(lambda: y.copy_(x), 20)
    return 2 * x.numel() * 4 / (ms * 1e-3) / 1e9


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--loss", default="fkl,jsd,tvd")
    ap.add_argument("--shape", action="append", default=[], help="LOSS=BTxV")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device visible to torch", file=sys.stderr)
        return 1
    shapes = dict(SHAPES)
    for spec in args.shape:
        name, _, dims = spec.partition("=")
        shapes[name] = tuple(int(d) for d in dims.split("x"))
    print(f"# device: {torch.cuda.get_device_name()}  torch {torch.__version__}"
          f"  copy {copy_bandwidth():.1f} GB/s (read + write, 1 GiB)")
    liger = liger_modules()
    for name in args.loss.split(","):
        n, v = shapes[name]
        bench(name, n, v, args.dtype, args.repeats, liger)
    return 0


if __name__ == "__main__":
    sys.exit(main())
