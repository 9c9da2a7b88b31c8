"""Kill training processes at random moments, resume them, and check that they end with the same bits.

    python benches/kill_resume.py [--arch mlnn] [--kills 5] [--epochs 3] [--limit-train 2000] [--seed 0]

Trains one uninterrupted run of ``python -m nnscratch.train`` on BloodMNIST (the reference), then,
for each of ``--kills`` trials, starts the same run in a fresh folder and sends it SIGKILL after a
random delay (uniform over the reference's wall time, so the kills land in start-up, epochs,
validation, checkpoint writes and the final evaluation alike), then resumes it with ``--resume``
(again killed at a random moment, once), and lets the last resume finish. A kill before the first
checkpoint leaves nothing to resume: the trial then starts again with ``--overwrite``, as the error
message says. Each trial's model.npz, history (timings aside) and metrics (timings aside) are compared
bit for bit with the reference's. ``tests/test_resume.py`` does the same at fixed kill points.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def outcome(folder: Path):
    with np.load(folder / "model.npz") as z:
        arrays = {k: z[k] for k in z.files}
    history = [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads((folder / "history.json").read_text())]
    metrics = {k: v for k, v in json.loads((folder / "metrics.json").read_text()).items() if k != "timing"}
    return arrays, history, metrics


def same(a: Path, b: Path) -> bool:
    (xa, ha, ma), (xb, hb, mb) = outcome(a), outcome(b)
    return xa.keys() == xb.keys() and all(np.array_equal(xa[k], xb[k]) for k in xa) and ha == hb and ma == mb


def start(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "nnscratch.train", *args, "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def killed_after(proc: subprocess.Popen, delay: float) -> bool:
    """SIGKILL ``proc`` after ``delay`` seconds; False when it ended before."""
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def where(folder: Path) -> str:
    """Where the run stood when killed: its checkpoint's position."""
    ck = folder / "checkpoint.npz"
    if not ck.is_file():
        return "before the first checkpoint"
    from nnscratch import checkpoint
    p = checkpoint.load(ck).position
    return f"checkpoint after epoch {p.epoch}" + (f", batch {p.batch}" if p.batch else "")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", default="mlnn", choices=["mlnn", "cnn", "resnet"])
    p.add_argument("--kills", type=int, default=5, help="trials, each killed at random moments")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit-train", type=int, default=2000, help="training images (all: 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill times (the runs use seed 0)")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    flags = ["--arch", args.arch, "--epochs", str(args.epochs)]
    if args.arch == "resnet":
        flags += ["--preset", "resnet-bloodmnist", "--dropout", "0.2"]
    if args.limit_train:
        flags += ["--limit-train", str(args.limit_train)]
    if args.data_dir:
        flags += ["--data-dir", args.data_dir]
    with tempfile.TemporaryDirectory() as tmp:
        ref = Path(tmp) / "reference"
        t0 = time.perf_counter()
        proc = start([*flags, "--out", str(ref)])
        if proc.wait() != 0:
            sys.exit(f"the reference run failed: {proc.stderr.read()}")
        wall = time.perf_counter() - t0
        print(f"{args.arch}, {args.epochs} epochs: the uninterrupted run takes {wall:.1f} s\n")
        print("| trial | killed at (s) | stood at | resumed, killed at (s) | stood at | same bits |")
        print("| ---: | ---: | --- | ---: | --- | --- |")
        failures = 0
        for trial in range(1, args.kills + 1):
            folder = Path(tmp) / f"trial{trial}"
            first = rng.uniform(0, wall)
            killed = killed_after(start([*flags, "--out", str(folder)]), first)
            stood = where(folder) if killed else "finished first"
            second, stood2 = "-", "-"
            if killed:
                resume = ["--resume", str(folder)] if (folder / "checkpoint.npz").is_file() else \
                    [*flags, "--out", str(folder), "--overwrite"]
                second = rng.uniform(0, wall / 2)
                if killed_after(start(resume), second):
                    stood2 = where(folder)
                    resume = ["--resume", str(folder)] if (folder / "checkpoint.npz").is_file() else \
                        [*flags, "--out", str(folder), "--overwrite"]
                    proc = start(resume)
                    if proc.wait() != 0:
                        sys.exit(f"trial {trial}: the last resume failed: {proc.stderr.read()}")
                else:
                    second, stood2 = f"{second:.1f}", "finished first"
                second = second if isinstance(second, str) else f"{second:.1f}"
            ok = same(ref, folder)
            failures += not ok
            print(f"| {trial} | {first:.1f} | {stood} | {second} | {stood2} | {'yes' if ok else '**no**'} |")
        print(f"\n{args.kills - failures} of {args.kills} trials ended with the reference's bits")
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
