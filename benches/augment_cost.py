"""What on-the-fly augmentation costs a training epoch.

    python benches/augment_cost.py [--batch 128] [--repeats 30] [--arch resnet cnn]

Times ``ns.Augment`` on a batch of BloodMNIST-sized images (3 x 28 x 28, float32) for each setting,
and one training step of each network on the same batch (TrainStep: forward, backward, AdamW), in
one process, alternating, medians. The share is the augmentation's time over the step's: what it
adds to a training epoch (the epoch is those steps, one per batch).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import nnscratch as ns

SETTINGS = {"flips": dict(flips=True, rotations=False), "dihedral": dict(flips=True, rotations=True),
            "dihedral+shift 2": dict(flips=True, rotations=True, translate=2)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--arch", nargs="+", default=["resnet", "cnn"], choices=["resnet", "cnn"])
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, 28, 28)).astype(np.float32)
    y = rng.integers(0, 8, args.batch)
    augments = {name: ns.Augment(**kw) for name, kw in SETTINGS.items()}
    steps = {}
    for arch in args.arch:
        ns.manual_seed(0)
        model = getattr(ns.models, arch)()
        steps[arch] = ns.TrainStep(model, ns.CrossEntropyLoss(), ns.AdamW(model.parameters()))
        for _ in range(3):
            steps[arch](x, y)
    times = {k: [] for k in list(augments) + list(steps)}
    aug_rng = np.random.default_rng(1)
    for _ in range(args.repeats):
        for name, augment in augments.items():
            t = time.perf_counter()
            augment(x, aug_rng)
            times[name].append(time.perf_counter() - t)
        for arch, step in steps.items():
            t = time.perf_counter()
            step(x, y)
            times[arch].append(time.perf_counter() - t)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"batch {args.batch}, medians of {args.repeats} in turns, one process\n")
    print("| augmentation | ms / batch | " + " | ".join(f"share of a {a} step ({med[a]:.1f} ms)" for a in steps) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in steps) + " |")
    for name in augments:
        print(f"| {name} | {med[name]:.2f} | " + " | ".join(f"{100 * med[name] / med[a]:.1f} %" for a in steps) + " |")


if __name__ == "__main__":
    main()
