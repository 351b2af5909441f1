#!/usr/bin/env python3
"""PyTorch CPU baseline for kdc's training benchmark: the example GPT
(examples/distill.kd) in eager PyTorch, one distillation step timed.

The model is the one passes/layers.c and passes/lower_model.c build, op for
op, so that the same safetensors weights give the same logits:

  x = embed_1(tokens) + embed_2(positions)          positions 0 .. T-1
  per block:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
  logits = linear(ln(x))                             with a bias
  layernorm   biased variance, eps 1e-5 (kd_layers_init's L->eps)
  linear      weights stored [in, out]: y = x W + b (GPT-2's Conv1D)
  attn        qkv = one linear D -> 3D; its output viewed [B, T, 3, D] gives
              q, k, v in that order (kd_layers_part), each split into heads
              as [B, T, H, Dh]; softmax(q k^T / sqrt(Dh)) over keys j <= i;
              proj D -> D
  mlp         proj(gelu_tanh(fc(x))), fc D -> 4D, both with biases
Parameter names are lower_model.h's: embed_1.weight, embed_2.weight,
blocks.0.ln_1.weight, blocks.0.attn.qkv.weight, blocks.0.attn.proj.bias,
blocks.0.mlp.fc.weight, ..., ln.weight, linear.weight, linear.bias.
Initialisation as layers.h: normal(0, 0.02), the two projections into the
residual stream normal(0, 0.02 / sqrt(2 layers)), biases 0, gains 1.

Modes:
  --mode train-step (default): a fixed teacher (4 layers, dim 256, 8 heads)
      runs forward under no_grad, the student (1 layer, dim 128, 4 heads)
      forward and backward through the objective, then AdamW (lr 1e-3, weight
      decay 0.1 on matrices only, as kdc's convention). Batch 16 x 128 of
      seeded random tokens, a fresh batch per step (drawn outside the timer).
      Prints one JSON line:
        tokens_per_s, ms_per_step (mean over --steps after --warmup),
        ms_best, ms_teacher_fwd / ms_student_fwd_bwd / ms_optimizer (means
        of the split), cpu_ms_per_step (CPU seconds of all threads: what a
        busy machine stretches less than the wall time), peak_rss_mb (getrusage's ru_maxrss after the steps),
        rss_import_mb (the same just after importing torch: the interpreter
        and libraries, before any model), threads, objective, loss, torch,
        allocator.
  --mode logits --weights W.safetensors --tokens TOK.npy [--out L.npy]:
      the logits [B, T, V] of the model in W (layers, dim, vocabulary and
      context read from the tensors' shapes; --heads says the heads) on the
      integer tokens [B, T] of TOK; saved as float32 .npy to --out, or
      summarised on stdout. For comparing kdc's logits with PyTorch's.

Objectives (--objective), on logits s (student) and t (teacher), T = 2:
  fkl      T^2 KL(softmax(t/T) || softmax(s/T)), mean over tokens
  ce       cross-entropy of s against the next tokens
  fkl_ce   examples/fkl.kd's: 0.5 T^2 fkl + 0.5 ce
  distill  examples/distill.kd's: 0.5 T^2 skew_kl(alpha 0.1) + 0.5 ce
The divergences are bench/torch_losses.py's (TRL's formulation).

Interpreter: PyTorch is not a dependency of kdc. When this interpreter
cannot import torch, the script re-runs itself under $KDC_PYTHON, else
/usr/bin/python3 (Debian's python3-torch imports from there only); with
none it prints "skipped: no torch" and exits 77 (ctest's skip code), as
bench/loss_bench.c and torch_losses.py treat a missing torch.

Allocator (--allocator, as torch_losses.py): auto uses jemalloc keeping
freed memory when libjemalloc2 is installed (the run is re-executed with it
preloaded), else glibc; the JSON says which.

  torch_train.py --threads 2                       # the benchmark row
  torch_train.py --threads 1 --objective ce --steps 20
  torch_train.py --mode logits --weights W.safetensors --heads 4 --tokens T.npy --out L.npy
"""
import argparse
import importlib.util
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time

REEXEC_ENV = "KDC_TORCH_TRAIN_CHILD"  # set in a re-executed run: never re-execute twice
SKIP_EXIT = 77


# ---- finding an interpreter with torch ---------------------------------------

def _has_torch_here():
    return importlib.util.find_spec("torch") is not None


def _python_with_torch():
    """$KDC_PYTHON, else /usr/bin/python3, if it can import torch; else None."""
    for py in (os.environ.get("KDC_PYTHON"), "/usr/bin/python3"):
        path = py and shutil.which(py)
        if not path:
            continue
        r = subprocess.run([path, "-c", "import torch"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        if r.returncode == 0:
            return path
    return None


def _reexec(python, argv, extra_env):
    env = dict(os.environ)
    env.update(extra_env)
    env[REEXEC_ENV] = "1"
    sys.stdout.flush()
    os.execve(python, [python, os.path.abspath(__file__)] + argv, env)


# ---- safetensors (read only; the package may be absent) ----------------------

_ST_DTYPES = {"F32": "float32", "F64": "float64", "F16": "float16", "BF16": "bfloat16",
              "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
              "BOOL": "bool"}


def load_safetensors(path):
    """{name: tensor} of a safetensors file: an 8-byte little-endian header
    length N, N bytes of JSON ({name: {dtype, shape, data_offsets}} and an
    optional __metadata__), then the data, offsets relative to its start.
    Tensors are copies (writable, aligned)."""
    import torch
    raw = bytearray(os.path.getsize(path))  # writable: torch.frombuffer warns on bytes
    with open(path, "rb") as f:
        f.readinto(raw)
    if len(raw) < 8:
        raise ValueError("%s: shorter than a safetensors header" % path)
    n = int.from_bytes(raw[:8], "little")
    if 8 + n > len(raw):
        raise ValueError("%s: header length %d past the end of the file" % (path, n))
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = memoryview(raw)[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _ST_DTYPES:
            raise ValueError("%s: %s has dtype %s" % (path, name, info["dtype"]))
        dtype = getattr(torch, _ST_DTYPES[info["dtype"]])
        b, e = info["data_offsets"]
        shape = info["shape"]
        numel = math.prod(shape)
        if not 0 <= b <= e <= len(data) or e - b != numel * torch.empty(0, dtype=dtype).element_size():
            raise ValueError("%s: %s's data_offsets %s do not fit its shape %s" % (path, name, [b, e], shape))
        t = torch.empty(shape, dtype=dtype)
        if numel:
            t.view(-1).copy_(torch.frombuffer(data[b:e], dtype=dtype))
        out[name] = t
    return out


# ---- the model ------------------------------------------------------------------

def build_model_classes(torch):
    nn, F = torch.nn, torch.nn.functional

    class Linear(nn.Module):
        """y = x W + b with W stored [in, out] (layers.h; GPT-2's Conv1D)."""

        def __init__(self, n_in, n_out, std):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(n_in, n_out) * std)
            self.bias = nn.Parameter(torch.zeros(n_out))

        def forward(self, x):
            y = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)
            return y.view(*x.shape[:-1], y.shape[-1])

    class Attention(nn.Module):
        def __init__(self, dim, heads, resid_std):
            super().__init__()
            self.heads = heads
            self.qkv = Linear(dim, 3 * dim, 0.02)
            self.proj = Linear(dim, dim, resid_std)

        def forward(self, x):
            b, t, d = x.shape
            h = self.heads
            # [B, T, 3, D] -> part k as [B, T, H, Dh] -> [B, H, T, Dh]
            q, k, v = self.qkv(x).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
            if hasattr(F, "scaled_dot_product_attention"):  # PyTorch >= 2.0
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:  # nanoGPT's fallback, the fastest eager form on 1.x
                s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d // h))
                mask = torch.ones(t, t, dtype=torch.bool).tril()
                o = F.softmax(s.masked_fill(~mask, float("-inf")), dim=-1) @ v
            return self.proj(o.transpose(1, 2).reshape(b, t, d))

    class MLP(nn.Module):
        def __init__(self, dim, hidden, resid_std):
            super().__init__()
            self.fc = Linear(dim, hidden, 0.02)
            self.proj = Linear(hidden, dim, resid_std)

        def forward(self, x):
            return self.proj(F.gelu(self.fc(x), approximate="tanh"))

    class Block(nn.Module):
        def __init__(self, dim, heads, resid_std):
            super().__init__()
            self.ln_1 = nn.LayerNorm(dim, eps=1e-5)
            self.attn = Attention(dim, heads, resid_std)
            self.ln_2 = nn.LayerNorm(dim, eps=1e-5)
            self.mlp = MLP(dim, 4 * dim, resid_std)

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        """examples/distill.kd's gpt(layers, dim, heads, vocab, ctx)."""

        def __init__(self, layers, dim, heads, vocab=256, ctx=128):
            super().__init__()
            if dim % heads:
                raise ValueError("%d heads do not divide the width %d" % (heads, dim))
            resid_std = 0.02 / math.sqrt(2 * layers) if layers else 0.02
            self.embed_1 = nn.Embedding(vocab, dim)
            self.embed_2 = nn.Embedding(ctx, dim)
            nn.init.normal_(self.embed_1.weight, 0.0, 0.02)
            nn.init.normal_(self.embed_2.weight, 0.0, 0.02)
            self.blocks = nn.ModuleList(Block(dim, heads, resid_std) for _ in range(layers))
            self.ln = nn.LayerNorm(dim, eps=1e-5)
            self.linear = Linear(dim, vocab, 0.02)

        def forward(self, tokens):
            x = self.embed_1(tokens) + self.embed_2(torch.arange(tokens.shape[1]))
            for blk in self.blocks:
                x = blk(x)
            return self.linear(self.ln(x))

    return GPT


def gpt_from_weights(torch, weights, heads):
    """A GPT whose sizes are read from lower_model.h's tensor names and
    shapes, with those weights loaded (every name must match, both ways)."""
    GPT = build_model_classes(torch)
    if "embed_1.weight" not in weights or "embed_2.weight" not in weights:
        raise ValueError("the weights have no embed_1.weight / embed_2.weight")
    vocab, dim = weights["embed_1.weight"].shape
    ctx = weights["embed_2.weight"].shape[0]
    layers = len({k.split(".")[1] for k in weights if k.startswith("blocks.")})
    model = GPT(layers, dim, heads, vocab, ctx)
    want = model.state_dict()
    missing = sorted(set(want) - set(weights))
    extra = sorted(set(weights) - set(want))
    if missing or extra:
        raise ValueError("the weights do not match gpt(layers=%d, dim=%d, heads=%d, vocab=%d, ctx=%d):"
                         " missing %s, unexpected %s" % (layers, dim, heads, vocab, ctx, missing, extra))
    for k, v in weights.items():
        if tuple(v.shape) != tuple(want[k].shape):
            raise ValueError("%s is %s, the model wants %s" % (k, list(v.shape), list(want[k].shape)))
    model.load_state_dict({k: v.float() for k, v in weights.items()})
    return model


# ---- the objective ---------------------------------------------------------------

def make_objective(name, temperature=2.0, alpha=0.1):
    """loss(student_logits [N, V], teacher_logits [N, V], labels [N])."""
    import torch_losses as TL  # bench/: this file's directory is on sys.path
    t2 = temperature * temperature
    if name == "fkl":
        return lambda s, t, y: t2 * TL.fkl(s, t, None, T=temperature)
    if name == "ce":
        return lambda s, t, y: TL.ce(s, t, y)
    if name == "fkl_ce":
        return lambda s, t, y: 0.5 * t2 * TL.fkl(s, t, None, T=temperature) + 0.5 * TL.ce(s, t, y)
    if name == "distill":
        return lambda s, t, y: (0.5 * t2 * TL.sfkl(s, t, None, T=temperature, alpha=alpha)
                                + 0.5 * TL.ce(s, t, y))
    raise ValueError("unknown objective " + name)


# ---- modes -----------------------------------------------------------------------

def _maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def train_step(torch, a, rss_import_mb, allocator):
    torch.manual_seed(a.seed)
    GPT = build_model_classes(torch)
    teacher = GPT(a.teacher_layers, a.teacher_dim, a.teacher_heads, a.vocab, a.ctx)
    student = GPT(a.student_layers, a.dim, a.heads, a.vocab, a.ctx)
    if a.teacher_weights:
        teacher.load_state_dict(load_safetensors(a.teacher_weights))
    teacher.requires_grad_(False)
    decay = [p for p in student.parameters() if p.dim() >= 2]
    no_decay = [p for p in student.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=a.lr)
    objective = make_objective(a.objective)
    gen = torch.Generator().manual_seed(a.seed + 1)
    b, t, v = a.batch, a.seq, a.vocab
    times, split = [], [0.0, 0.0, 0.0]
    loss = cpu0 = None
    for step in range(a.warmup + a.steps):
        if step == a.warmup:
            cpu0 = time.process_time()
        window = torch.randint(0, v, (b, t + 1), generator=gen)
        tokens, labels = window[:, :-1], window[:, 1:].reshape(-1)
        t0 = time.perf_counter()
        with torch.no_grad():
            tl = teacher(tokens)
        t1 = time.perf_counter()
        sl = student(tokens)
        loss = objective(sl.reshape(-1, v), tl.reshape(-1, v), labels)
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        if step >= a.warmup:
            times.append(t3 - t0)
            split[0] += t1 - t0
            split[1] += t2 - t1
            split[2] += t3 - t2
    cpu = time.process_time() - cpu0  # all threads' CPU time (a batch draw per step: noise)
    n = len(times)
    total = sum(times)
    return {"tokens_per_s": b * t * n / total, "ms_per_step": 1e3 * total / n,
            "ms_best": 1e3 * min(times),
            "ms_teacher_fwd": 1e3 * split[0] / n, "ms_student_fwd_bwd": 1e3 * split[1] / n,
            "ms_optimizer": 1e3 * split[2] / n, "cpu_ms_per_step": 1e3 * cpu / n,
            "peak_rss_mb": _maxrss_mb(), "rss_import_mb": rss_import_mb,
            "threads": torch.get_num_threads(), "objective": a.objective,
            "batch": b, "seq": t, "steps": n, "loss": float(loss),
            "torch": torch.__version__, "allocator": allocator,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}


def logits_mode(torch, a):
    import numpy as np
    if not a.weights or not a.tokens:
        raise ValueError("--mode logits needs --weights and --tokens")
    model = gpt_from_weights(torch, load_safetensors(a.weights), a.heads)
    tokens = np.load(a.tokens)
    if tokens.ndim != 2 or tokens.dtype.kind not in "iu":
        raise ValueError("%s: tokens must be integers [B, T], got %s %s" % (a.tokens, tokens.dtype, tokens.shape))
    with torch.no_grad():
        logits = model(torch.from_numpy(tokens.astype(np.int64))).numpy().astype(np.float32)
    if a.out:
        np.save(a.out, logits)
    print(json.dumps({"shape": list(logits.shape), "out": a.out,
                      "mean": float(logits.mean()), "std": float(logits.std())}))


# ---- command line ------------------------------------------------------------------

def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["train-step", "logits"], default="train-step")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    ap.add_argument("--objective", choices=["fkl", "fkl_ce", "ce", "distill"], default="fkl")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--ctx", type=int, default=128, help="rows of the position table (>= --seq)")
    ap.add_argument("--teacher-layers", type=int, default=4)
    ap.add_argument("--teacher-dim", type=int, default=256)
    ap.add_argument("--teacher-heads", type=int, default=8)
    ap.add_argument("--student-layers", type=int, default=1)
    ap.add_argument("--dim", type=int, default=128, help="the student's width")
    ap.add_argument("--heads", type=int, default=4, help="the student's heads (logits mode: the model's)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--teacher-weights", help="safetensors for the teacher (default: random init)")
    ap.add_argument("--weights", help="logits mode: the model's safetensors")
    ap.add_argument("--tokens", help="logits mode: integer tokens [B, T] (.npy)")
    ap.add_argument("--out", help="logits mode: where to save the logits (.npy)")
    ap.add_argument("--allocator", choices=["auto", "jemalloc", "glibc"], default="auto",
                    help="auto: jemalloc keeping freed memory if installed, else glibc")
    a = ap.parse_args(argv)
    if a.seq > a.ctx:
        ap.error("--seq %d is longer than the position table (--ctx %d)" % (a.seq, a.ctx))
    if min(a.threads, a.steps, a.batch, a.seq) < 1 or a.warmup < 0:
        ap.error("--threads, --steps, --batch and --seq must be positive, --warmup >= 0")
    return a


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    a = parse(argv)
    child = os.environ.get(REEXEC_ENV) == "1"
    python = sys.executable
    if not _has_torch_here():
        python = None if child else _python_with_torch()
        if python is None:
            print("skipped: no torch")
            return SKIP_EXIT
    # Threads and allocator are fixed before torch loads: OpenMP and OpenBLAS
    # size their pools at start-up, and jemalloc can only be preloaded.
    # Torch's elementwise ops run on an OpenMP pool and its matmuls on
    # OpenBLAS's own threads; OpenMP's default of spinning after each region
    # keeps the cores from OpenBLAS, and a passive wait halves the 2-thread
    # step on the 2-core development VM (437 -> 209 ms): the stronger
    # baseline, unless the caller sets OMP_WAIT_POLICY.
    env = {"OMP_NUM_THREADS": str(a.threads), "OPENBLAS_NUM_THREADS": str(a.threads),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch_losses as TL
    allocator = TL.pick_allocator(a.allocator) if a.mode == "train-step" else "glibc"
    preloaded = TL.JEMALLOC in os.environ.get("LD_PRELOAD", "")
    if allocator == "jemalloc" and not preloaded:
        env["LD_PRELOAD"] = (TL.JEMALLOC + " " + os.environ.get("LD_PRELOAD", "")).strip()
        env["MALLOC_CONF"] = TL.JEMALLOC_CONF
    if not child and (python != sys.executable or any(os.environ.get(k) != v for k, v in env.items())):
        _reexec(python, argv, env)  # does not return
    allocator = "jemalloc" if preloaded else "glibc"  # what this process runs with
    import torch
    torch.set_num_threads(a.threads)
    if a.mode == "logits":
        logits_mode(torch, a)
        return 0
    print(json.dumps(train_step(torch, a, _maxrss_mb(), allocator)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
