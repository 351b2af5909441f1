#!/usr/bin/env python3
"""PyTorch eager reference losses for distillation, written the way TRL and
torchtune write them, and a timer for their forward + backward.

This is the "what users write today" column of kdc's benchmark tables: the
benchmark harness imports it (LOSSES, measure, measure_isolated) and prints
these figures next to kdc's, and it doubles as a second, independent
reference for kdc's loss values.

PyTorch is NOT a dependency of kdc; nothing installs it. To run this:
    pip install torch numpy          (PyPI wheel), or on Debian/Ubuntu:
    apt-get install python3-torch libopenblas0-pthread
(Debian's python3-torch needs libopenblas0-pthread, not the openmp or serial
OpenBLAS variant, or it runs single-threaded / fails to import; run it
with /usr/bin/python3.)

Conventions (the same as kdc's prelude, examples/losses/*.kd):
  s, t       student and teacher logits [N, V]; p = softmax(t / T),
             q = softmax(s / T)
  labels     [N] int64; rows whose label == ignore_index (-100) count in no
             mean and get a zero gradient
  reduction  mean over valid rows of the per-row sum over V (PyTorch's
             "batchmean" per token); no T^2 factor (a spec writes it)

  fkl        KL(p || q)      F.kl_div(log q, log p, log_target=True)   (TRL, beta = 0)
  rkl        KL(q || p)      F.kl_div(log p, log q, log_target=True)   (TRL, beta = 1)
  skl        KL(p||q) + KL(q||p)
  jsd        TRL's generalized JSD: m = beta p + (1 - beta) q (as log-sum-exp
             of the log-probabilities), beta KL(p || m) + (1 - beta) KL(q || m)
  tvd        0.5 sum |p - q|                                  (Liger's TVD)
  sfkl       skew forward KL, KL(p || a p + (1 - a) q)        (DistiLLM's mixture)
  srkl       skew reverse KL, KL(q || a q + (1 - a) p)
  ce         F.cross_entropy(s, labels, ignore_index=-100)
DistiLLM writes its skew KLs, and torchtune its ForwardKLLoss, in
cross-entropy form (without the teacher's entropy): the same gradient, a
loss that differs by a constant. Here every divergence is the true
divergence, so values compare with kdc's directly.

Command line:
  torch_losses.py --shape 512x32000 --shape 4096x50257 --threads 1,2 [--loss fkl,jsd]
  torch_losses.py --selftest        # identities and gradients on tiny inputs
Effective GB/s = 3 x N x V x 4 bytes / time (read t, read s, write the
gradient: the floor kdc is measured against); extra memory is the process's
peak RSS above what the inputs occupy, measured in a fresh process per row.

The allocator matters more than anything else for this baseline: every eager
op allocates an N x V temporary, glibc serves blocks over 32 MiB with fresh
mmaps, and on a VM the page faults of that fresh memory can take 3/4 of the
time (fkl 512x32000: 590 ms with glibc, 136 ms with a caching allocator, on
the 2-core development VM). So by default (--allocator auto) each
measurement runs with jemalloc set to keep freed memory
(apt-get install libjemalloc2), the stronger baseline, and glibc where
jemalloc is absent; the allocator used is printed with every figure.
"""
import argparse
import ctypes.util
import json
import os
import resource
import subprocess
import sys
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the harness checks HAVE_TORCH and says how to get it
    torch = None
    F = None

HAVE_TORCH = torch is not None
IGNORE_INDEX = -100
INSTALL_HINT = ("PyTorch is not installed: pip install torch "
                "(or apt-get install python3-torch libopenblas0-pthread, then use /usr/bin/python3)")


# ---- the losses -------------------------------------------------------------

def _mean_valid(per_row, labels):
    """Per-row values [N] -> mean over rows whose label is not ignored."""
    if labels is None:
        return per_row.mean()
    mask = labels != IGNORE_INDEX
    # An all-masked batch has loss 0 (and zero gradient), as in torchtune;
    # where() rather than a product, so a masked row's NaN cannot leak in.
    return torch.where(mask, per_row, 0).sum() / mask.sum().clamp(min=1)


def _f32(x):
    """Computes in float32 (bf16 inputs are upcast, as TRL's callers do);
    float64 stays float64 for the self-test."""
    return x if x.dtype == torch.float64 else x.float()


def _log_probs(s, t, T):
    return F.log_softmax(_f32(s) / T, dim=-1), F.log_softmax(_f32(t) / T, dim=-1)


def fkl(s, t, labels=None, T=1.0):
    logq, logp = _log_probs(s, t, T)
    return _mean_valid(F.kl_div(logq, logp, reduction="none", log_target=True).sum(-1), labels)


def rkl(s, t, labels=None, T=1.0):
    logq, logp = _log_probs(s, t, T)
    return _mean_valid(F.kl_div(logp, logq, reduction="none", log_target=True).sum(-1), labels)


def skl(s, t, labels=None, T=1.0):
    logq, logp = _log_probs(s, t, T)
    kl = F.kl_div(logq, logp, reduction="none", log_target=True)
    kl = kl + F.kl_div(logp, logq, reduction="none", log_target=True)
    return _mean_valid(kl.sum(-1), labels)


def jsd(s, t, labels=None, T=1.0, beta=0.5):
    """TRL's GKDTrainer.generalized_jsd_loss, per-row sums, mean over valid rows."""
    logq, logp = _log_probs(s, t, T)
    if beta == 0:
        div = F.kl_div(logq, logp, reduction="none", log_target=True)
    elif beta == 1:
        div = F.kl_div(logp, logq, reduction="none", log_target=True)
    else:
        b = torch.tensor(beta, dtype=logq.dtype)
        logm = torch.logsumexp(torch.stack([logq + torch.log(1 - b), logp + torch.log(b)]), dim=0)
        kl_teacher = F.kl_div(logm, logp, reduction="none", log_target=True)
        kl_student = F.kl_div(logm, logq, reduction="none", log_target=True)
        div = beta * kl_teacher + (1 - beta) * kl_student
    return _mean_valid(div.sum(-1), labels)


def tvd(s, t, labels=None, T=1.0):
    q = F.softmax(_f32(s) / T, dim=-1)
    p = F.softmax(_f32(t) / T, dim=-1)
    return _mean_valid(0.5 * (p - q).abs().sum(-1), labels)


def sfkl(s, t, labels=None, T=1.0, alpha=0.1):
    """DistiLLM's skewed forward KL with the teacher entropy kept."""
    q = F.softmax(_f32(s) / T, dim=-1)
    p = F.softmax(_f32(t) / T, dim=-1)
    logp = F.log_softmax(_f32(t) / T, dim=-1)
    mixed = torch.log(alpha * p + (1 - alpha) * q)
    # 0 * log 0 is 0: DistiLLM masks infinite logits the same way.
    row = torch.masked_fill(p * (logp - mixed), p == 0, 0).sum(-1)
    return _mean_valid(row, labels)


def srkl(s, t, labels=None, T=1.0, alpha=0.1):
    """DistiLLM's skewed reverse KL."""
    q = F.softmax(_f32(s) / T, dim=-1)
    p = F.softmax(_f32(t) / T, dim=-1)
    logq = F.log_softmax(_f32(s) / T, dim=-1)
    mixed = torch.log(alpha * q + (1 - alpha) * p)
    row = torch.masked_fill(q * (logq - mixed), q == 0, 0).sum(-1)
    return _mean_valid(row, labels)


def ce(s, t, labels=None, T=1.0):
    """Hard-label cross-entropy; the teacher is not used."""
    if labels is None:
        raise ValueError("ce needs labels")
    return F.cross_entropy(_f32(s), labels, ignore_index=IGNORE_INDEX)


LOSSES = {"fkl": fkl, "rkl": rkl, "skl": skl, "jsd": jsd, "tvd": tvd,
          "sfkl": sfkl, "srkl": srkl, "ce": ce}


# ---- timing -----------------------------------------------------------------

def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_inputs(n, v, dtype="f32", seed=0, masked=0.0):
    """Teacher and student logits [n, v] (scale 3, as trained LMs' logits
    spread), labels [n] with a fraction `masked` set to ignore_index."""
    g = torch.Generator().manual_seed(seed)
    td = torch.bfloat16 if dtype == "bf16" else torch.float32
    t = (torch.randn(n, v, generator=g) * 3).to(td)
    s = (torch.randn(n, v, generator=g) * 3).to(td).requires_grad_(True)
    labels = torch.randint(0, v, (n,), generator=g)
    if masked > 0:
        labels[torch.rand(n, generator=g) < masked] = IGNORE_INDEX
    return t, s, labels


def measure(name, n, v, threads, repeats=5, dtype="f32", seed=0, **params):
    """Times forward + backward of LOSSES[name] on [n, v] logits with
    `threads` intra-op threads. Returns a dict: ms (best of repeats after
    one warm-up), median_ms, gbs (3 N V 4 bytes / best time), extra_mb (the
    peak RSS above the inputs: meaningful for the first call in a process,
    see measure_isolated), loss."""
    if not HAVE_TORCH:
        raise RuntimeError(INSTALL_HINT)
    torch.set_num_threads(threads)
    fn = LOSSES[name]
    t, s, labels = make_inputs(n, v, dtype, seed)
    base = _rss_bytes()
    times = []
    loss = None
    for r in range(repeats + 1):
        s.grad = None
        t0 = time.perf_counter()
        loss = fn(s, t, labels, **params)
        loss.backward()
        dt = time.perf_counter() - t0
        if r > 0:  # run 0 warms up the allocator and the thread pool
            times.append(dt)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    times.sort()
    best = times[0]
    return {"loss": name, "n": n, "v": v, "threads": threads, "dtype": dtype,
            "ms": 1e3 * best, "median_ms": 1e3 * times[len(times) // 2],
            "gbs": 3.0 * n * v * 4 / best / 1e9,
            "extra_mb": max(0, peak - base) / 2**20, "value": float(loss),
            "torch": torch.__version__}


JEMALLOC = "libjemalloc.so.2"
# Keep freed memory (no decay) and serve large blocks from the normal arenas,
# so a repeated step reuses its temporaries instead of faulting in new pages.
JEMALLOC_CONF = "oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1"


def pick_allocator(choice="auto"):
    """'jemalloc' or 'glibc' for a choice of auto, jemalloc or glibc."""
    if choice == "glibc":
        return "glibc"
    # Found, not loaded: jemalloc cannot be dlopen'ed into a running Python
    # (static TLS), only preloaded into a new one.
    if ctypes.util.find_library("jemalloc") == JEMALLOC:
        return "jemalloc"
    if choice == "jemalloc":
        raise RuntimeError("%s not found: apt-get install libjemalloc2" % JEMALLOC)
    return "glibc"


def measure_isolated(name, n, v, threads, repeats=5, dtype="f32", seed=0, allocator="auto"):
    """measure() in a fresh Python process, so the peak-memory figure is
    this loss's alone, with the allocator pick_allocator(allocator) gives.
    Uses the interpreter running this file."""
    cmd = [sys.executable, os.path.abspath(__file__), "--one", name, "--shape", "%dx%d" % (n, v),
           "--threads", str(threads), "--repeats", str(repeats), "--dtype", dtype, "--seed", str(seed)]
    env = dict(os.environ)
    alloc = pick_allocator(allocator)
    if alloc == "jemalloc":
        env["LD_PRELOAD"] = (JEMALLOC + " " + env.get("LD_PRELOAD", "")).strip()
        env["MALLOC_CONF"] = JEMALLOC_CONF
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(cmd), r.stderr.strip()[-2000:]))
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["allocator"] = alloc
    return out


# ---- self-test ----------------------------------------------------------------

def selftest():
    """Identities that hold for the formulations above, in float64 on small
    inputs; returns the number of failures. Tolerances: 1e-10 absolute is
    far above float64 rounding over V = 37 terms (about 1e-14) and far below
    any formulation error (the losses are O(1))."""
    torch.manual_seed(0)
    fails = 0

    def check(ok, what):
        nonlocal fails
        if not ok:
            fails += 1
            print("FAIL:", what)

    n, v = 6, 37
    t = torch.randn(n, v, dtype=torch.float64) * 3
    s = (torch.randn(n, v, dtype=torch.float64) * 3).requires_grad_(True)
    labels = torch.randint(0, v, (n,))
    labels[1] = IGNORE_INDEX

    def d(f, **kw):
        return f(s.detach(), t, labels, **kw).item()

    check(abs(d(jsd, beta=0.0) - d(fkl)) < 1e-10, "jsd(beta=0) == fkl")
    check(abs(d(jsd, beta=1.0) - d(rkl)) < 1e-10, "jsd(beta=1) == rkl")
    check(abs(d(skl) - d(fkl) - d(rkl)) < 1e-10, "skl == fkl + rkl")
    for name in ("fkl", "rkl", "skl", "jsd", "tvd", "sfkl", "srkl"):
        f = LOSSES[name]
        check(d(f) > 0, name + " > 0 on different rows")
        same = f(s.detach(), s.detach(), labels).item()
        check(abs(same) < 1e-10, name + "(p, p) == 0, got %g" % same)
        s.grad = None
        f(s, t, labels).backward()
        check(torch.all(s.grad[1] == 0).item(), name + ": a masked row gets zero gradient")
    # fkl's gradient is (q - p) / T over valid rows / count, the identity
    # kdc's simplifier derives.
    s.grad = None
    T = 2.0
    fkl(s, t, labels, T=T).backward()
    q, p = F.softmax(s.detach() / T, -1), F.softmax(t / T, -1)
    want = (q - p) / T / (labels != IGNORE_INDEX).sum()
    want[1] = 0
    check(torch.allclose(s.grad, want, atol=1e-12), "fkl gradient == (q - p) / T / valid")
    # tvd's value by hand.
    hand = 0.5 * (F.softmax(t, -1) - F.softmax(s.detach(), -1)).abs().sum(-1)
    hand = hand[labels != IGNORE_INDEX].mean().item()
    check(abs(d(tvd) - hand) < 1e-10, "tvd by hand")
    want_ce = F.nll_loss(F.log_softmax(s.detach(), -1), labels, ignore_index=IGNORE_INDEX).item()
    check(abs(d(ce) - want_ce) < 1e-10, "ce == nll(log_softmax)")
    # All rows masked: loss 0, gradient 0.
    s.grad = None
    allm = torch.full((n,), IGNORE_INDEX)
    lv = fkl(s, t, allm)
    lv.backward()
    check(lv.item() == 0 and torch.all(s.grad == 0).item(), "all-masked batch: 0 loss, 0 gradient")
    print("selftest: %s" % ("%d failure(s)" % fails if fails else "all checks passed"))
    return fails


# ---- command line ---------------------------------------------------------------

def _shape(text):
    n, v = text.lower().split("x")
    return int(n), int(v)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", action="append", type=_shape, help="NxV (repeatable); default 512x32000")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--loss", default=",".join(LOSSES), help="comma-separated: " + ", ".join(LOSSES))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--allocator", choices=["auto", "jemalloc", "glibc"], default="auto",
                    help="auto: jemalloc (keeping freed memory) if installed, else glibc")
    ap.add_argument("--json", action="store_true", help="one JSON object per row")
    ap.add_argument("--selftest", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # measure_isolated's child
    a = ap.parse_args(argv)
    if not HAVE_TORCH:
        print(INSTALL_HINT, file=sys.stderr)
        return 77
    if a.selftest:
        return 1 if selftest() else 0
    shapes = a.shape or [(512, 32000)]
    if a.one:
        n, v = shapes[0]
        preloaded = JEMALLOC in os.environ.get("LD_PRELOAD", "")
        if pick_allocator(a.allocator) == "jemalloc" and not preloaded:
            # Callers such as bench/loss_bench.c run --one directly: start
            # the child with the allocator in place.
            r = measure_isolated(a.one, n, v, int(a.threads), a.repeats, a.dtype, a.seed, "jemalloc")
        else:
            r = measure(a.one, n, v, int(a.threads), a.repeats, a.dtype, a.seed)
            r["allocator"] = "jemalloc" if preloaded else "glibc"
        print(json.dumps(r))
        return 0
    threads = [int(x) for x in a.threads.split(",")]
    names = a.loss.split(",")
    alloc = pick_allocator(a.allocator)
    if not a.json:
        print("PyTorch %s eager, forward + backward, %s, %s allocator, best of %d; GB/s = 3 N V 4 bytes / time"
              % (torch.__version__, a.dtype, alloc, a.repeats))
        print("%-6s %-12s %7s %10s %8s %10s %12s" % ("loss", "shape", "threads", "ms", "GB/s", "extra MB", "value"))
    for (n, v) in shapes:
        for name in names:
            for th in threads:
                r = measure_isolated(name, n, v, th, a.repeats, a.dtype, a.seed, alloc)
                if a.json:
                    print(json.dumps(r))
                else:
                    print("%-6s %-12s %7d %10.2f %8.2f %10.0f %12.6f"
                          % (name, "%dx%d" % (n, v), th, r["ms"], r["gbs"], r["extra_mb"], r["value"]))
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
