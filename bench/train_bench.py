#!/usr/bin/env python3
"""Training throughput: kdc against PyTorch eager on the CPU, in one run.

    python3 bench/train_bench.py [--threads 2] [--steps 60] [--torch-steps 10] [--rounds 3]

The workload is examples/fkl.kd's training step: the teacher of
examples/teacher.kd (3 layers, width 128) forward, the student (1 layer,
width 64) forward and backward, the objective 0.5 T^2 fkl + 0.5 CE at T = 2,
AdamW; 16 windows of 64 bytes (1024 tokens) a step. Printed, in order:

  - this machine's memory bandwidth now (build/bench/kdc_stream, a STREAM-like
    copy), so the figures below can be read against a noisy shared machine;
  - kdc: `kdc run examples/fkl.kd --steps N` with a random teacher written by
    `kdc init` (speed does not depend on the weights), its tokens/s over the
    training steps (kdc's own count, evaluation excluded: --eval-batches 1)
    and the process's peak resident memory;
  - PyTorch: bench/torch_train.py --objective fkl_ce on the same model sizes
    and threads, its tokens/s (mean over its steps after warmup) and peak
    resident memory;
  - kdc and PyTorch alternate --rounds times (a shared machine's load
    drifts over a minute): one row per round with both figures and their
    ratio, then the median ratio (target: 1.5 or more).

PyTorch runs from $KDC_PYTHON, else /usr/bin/python3 when it imports torch
(Debian's python3-torch), else python3; without torch its rows say so.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_torch_python():
    for py in (os.environ.get("KDC_PYTHON"), "/usr/bin/python3", sys.executable, "python3"):
        if not py:
            continue
        try:
            if subprocess.run([py, "-c", "import torch"], capture_output=True).returncode == 0:
                return py
        except OSError:
            pass
    return None


# Runs argv[2:] and writes its peak RSS (KiB) to the file argv[1]: a fresh
# process per measurement, so no other child's peak is mixed in.
_MEASURE = ("import resource, subprocess, sys\n"
            "r = subprocess.run(sys.argv[2:])\n"
            "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
            "sys.exit(r.returncode)\n")


def run_measured(cmd, work):
    """Runs cmd; returns (completed process, its peak RSS in MiB)."""
    rss = os.path.join(work, "rss.txt")
    p = subprocess.run([sys.executable, "-c", _MEASURE, rss] + cmd, capture_output=True, text=True)
    with open(rss) as f:
        return p, int(f.read()) / 1024.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60, help="kdc's steps (> the 50 warmup steps)")
    ap.add_argument("--torch-steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3,
                    help="kdc and PyTorch runs, alternating (the machine's load drifts)")
    ap.add_argument("--kdc", default=os.path.join(ROOT, "build", "kdc"))
    a = ap.parse_args()
    stream = os.path.join(os.path.dirname(a.kdc), "bench", "kdc_stream")
    print("# training throughput, examples/fkl.kd (teacher 3x128 forward, student 1x64 fwd+bwd, "
          "1024 tokens/step), %d threads" % a.threads)
    if os.path.exists(stream):
        out = subprocess.run([stream, "--threads", str(a.threads)], capture_output=True,
                             text=True).stdout.strip().splitlines()
        print("# memory bandwidth (kdc_stream):")
        for line in out:
            print("#   " + line)
    work = tempfile.mkdtemp(prefix="kdc-train-bench-")
    try:
        teacher = os.path.join(work, "teacher.safetensors")
        subprocess.run([a.kdc, "init", os.path.join(ROOT, "examples", "teacher.kd"), "--model",
                        "teacher", "-o", teacher], check=True, capture_output=True)
        py = find_torch_python()
        print("%-6s %12s %14s %12s %14s %8s" % ("round", "kdc tok/s", "kdc RSS MiB",
                                               "torch tok/s", "torch RSS MiB", "ratio"))
        ratios = []
        for r in range(a.rounds):
            p, kdc_rss = run_measured([a.kdc, "run", os.path.join(ROOT, "examples", "fkl.kd"),
                                       "--out", work, "--steps", str(a.steps), "--threads",
                                       str(a.threads), "--eval-batches", "1"], work)
            if p.returncode != 0:
                sys.exit("kdc run failed:\n" + p.stderr[-2000:])
            m = re.search(r"student: \d+ steps, .*, (\d+) tokens/s", p.stdout)
            kdc_tps = float(m.group(1))
            if not py:
                print("%-6d %12.0f %14.0f %12s" % (r + 1, kdc_tps, kdc_rss, "no torch"))
                continue
            p = subprocess.run([py, os.path.join(ROOT, "bench", "torch_train.py"), "--threads",
                                str(a.threads), "--steps", str(a.torch_steps), "--objective",
                                "fkl_ce", "--teacher-layers", "3", "--teacher-dim", "128",
                                "--teacher-heads", "4", "--dim", "64", "--heads", "4",
                                "--seq", "64", "--ctx", "64"],
                               capture_output=True, text=True)
            if p.returncode != 0:
                sys.exit("torch_train.py failed:\n" + p.stderr[-2000:])
            t = json.loads(p.stdout.strip().splitlines()[-1])
            ratios.append(kdc_tps / t["tokens_per_s"])
            print("%-6d %12.0f %14.0f %12.0f %14.0f %7.2fx" % (r + 1, kdc_tps, kdc_rss,
                                                              t["tokens_per_s"], t["peak_rss_mb"],
                                                              ratios[-1]))
        if ratios:
            print("kdc / pytorch tokens/s, median of %d alternating rounds: %.2fx (target 1.5x)"
                  % (len(ratios), statistics.median(ratios)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
