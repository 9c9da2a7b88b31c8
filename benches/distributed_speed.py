"""Training steps over MPI ranks against one process: images per second and the collectives' share.

    python benches/distributed_speed.py [--arch resnet] [--batch 128] [--steps 20] [--ranks 2]

Runs the same TrainStep (random data, AdamW, label smoothing 0.1, a global batch of ``--batch``)
three ways, each in processes of its own, and prints a table:

- 1 process, the batch whole on one core (``workers=1``, OpenBLAS and numba at one thread);
- 1 process, the batch split over the cores in threads (TrainStep's default here);
- ``mpiexec -n RANKS``: each rank its share of every batch on one core, the gradients all-reduced
  (reduce-scatter + all-gather of one flat buffer) and batch norm's statistics all-gathered.

For the ranks, the time inside the collectives is measured per step (the gradient sum; batch
norm's statistics and gradient sums; the loss sum), as a share of the step: what overlapping the
gradient's all-reduce with the backward pass could save at most.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nnscratch as ns  # noqa: E402
from nnscratch import distributed, threads  # noqa: E402
from profile_step import timed_sum  # noqa: E402  (benches/, the script's folder)


def worker(args):
    """One process's (or rank's) timing, printed as one JSON line by rank 0."""
    size = distributed.init()
    if args.one_core:
        threads.set_blas_threads(1)
    spent = {"gradient sum": 0.0, "batch norm": 0.0, "loss sum": 0.0}
    distributed.allreduce_sum = timed_sum(spent, "gradient sum", distributed.allreduce_sum)
    distributed.gather_in_rank_order = timed_sum(spent, "batch norm", distributed.gather_in_rank_order)
    distributed.sum_in_rank_order = timed_sum(spent, "loss sum", distributed.sum_in_rank_order)
    ns.manual_seed(0)
    model = getattr(ns.models, args.arch)()
    step = ns.TrainStep(model, ns.CrossEntropyLoss(label_smoothing=0.1),
                        ns.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05),
                        workers=1 if args.one_core else None)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, 28, 28)).astype(np.float32)
    y = rng.integers(0, 8, args.batch)
    for _ in range(3):
        step(x, y)
    times = []
    for key in spent:
        spent[key] = 0.0
    for _ in range(args.steps):
        distributed.barrier()
        t0 = time.perf_counter()
        step(x, y)
        times.append(time.perf_counter() - t0)
    if distributed.is_main():
        ms = 1e3 * statistics.median(times)
        print(json.dumps({"ranks": size, "ms": ms, "img_s": args.batch / ms * 1e3,
                          "parts": 1 if size > 1 or args.one_core else step.parts_for(args.batch),
                          **{k: 1e3 * v / args.steps for k, v in spent.items()}}), flush=True)


def run(cmd: list) -> dict:
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", choices=["cnn", "mlnn", "resnet"], default="resnet")
    p.add_argument("--batch", type=int, default=128, help="the global batch")
    p.add_argument("--steps", type=int, default=20, help="timed steps (after 3 untimed)")
    p.add_argument("--ranks", type=int, default=2, help="processes of the MPI job")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--one-core", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    if mpiexec is None:
        raise SystemExit("no mpiexec: pip install -e '.[mpi]'")
    me = [sys.executable, __file__, "--worker", "--arch", args.arch, "--batch", str(args.batch),
          "--steps", str(args.steps)]
    rows = [("1 process, 1 core", run(me + ["--one-core"])),
            ("1 process, the batch split in threads", run(me)),
            (f"{args.ranks} processes (mpiexec), 1 core each", run([mpiexec, "-n", str(args.ranks)] + me))]
    print(f"{args.arch}, global batch {args.batch}, {os.cpu_count()} cores, median of {args.steps} steps; "
          f"collectives in ms per step (rank 0)\n")
    print("| how | ms / step | images / s | gradient all-reduce | batch-norm gathers | loss sum | collectives' share |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows:
        comm = r["gradient sum"] + r["batch norm"] + r["loss sum"]
        share = f"{100 * comm / r['ms']:.1f} %" if r["ranks"] > 1 else "-"
        cells = [f"{r[k]:.2f}" if r["ranks"] > 1 else "-" for k in ("gradient sum", "batch norm", "loss sum")]
        print(f"| {name} | {r['ms']:.2f} | {r['img_s']:,.0f} | " + " | ".join(cells) + f" | {share} |")


if __name__ == "__main__":
    main()
