"""The CPU training step for each way of splitting its batch across the cores (TrainStep's ``workers``).

    python benches/workers.py [--arch cnn] [--batch 64] [--workers 1 2 4] [--rounds 20] [--per 5]

One process, one model per setting (the same weights), stepping in turns so that the machine's drift
hits every setting alike (as ``ab_step.py`` does for two source trees). Prints the median step time
of each setting and which one ``workers=None`` picks on this machine. On this project's 2-core VM
the default is 2 parts for the CNN; use this to see whether that choice holds on a machine with more
cores.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import nnscratch as ns
from nnscratch import threads


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", choices=["cnn", "mlnn"], default="cnn")
    p.add_argument("--batch", type=int, default=64, help="images per training step")
    p.add_argument("--workers", type=int, nargs="+", default=None,
                   help="settings to compare (default: 1, 2, 4, ... up to OpenBLAS's thread count)")
    p.add_argument("--rounds", type=int, default=20, help="turns of each setting")
    p.add_argument("--per", type=int, default=5, help="timed steps per turn")
    args = p.parse_args(argv)
    cores = threads.blas_thread_count() or 1
    settings = args.workers or sorted({1, *(2 ** k for k in range(1, 8) if 2 ** k <= cores), cores})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, 28, 28)).astype(np.float32)
    y = rng.integers(0, 8, args.batch)
    steps = {}
    for w in settings:
        ns.manual_seed(0)
        model = getattr(ns.models, args.arch)()
        steps[w] = ns.TrainStep(model, ns.CrossEntropyLoss(), ns.Adam(model.parameters()), workers=w)
        for _ in range(5):                                  # compilation, caches, allocator
            steps[w](x, y)
    some = steps[settings[0]]
    default = ns.TrainStep(some.model, some.loss_fn, some.optimizer).parts_for(args.batch)
    times = {w: [] for w in settings}
    for r in range(args.rounds):
        order = settings if r % 2 == 0 else settings[::-1]
        for w in order:
            steps[w](x, y)
            for _ in range(args.per):
                t0 = time.perf_counter()
                steps[w](x, y)
                times[w].append(time.perf_counter() - t0)
    print(f"{args.arch}, batch {args.batch}, OpenBLAS threads {cores}: median ms per training step, "
          f"{args.rounds} turns x {args.per} steps\n")
    print("| workers | parts | ms / step |")
    print("| ---: | ---: | ---: |")
    for w in settings:
        print(f"| {w} | {steps[w].parts_for(args.batch)} | {1e3 * statistics.median(times[w]):.2f} |")
    print(f"\nworkers=None picks {default} part(s) here")


if __name__ == "__main__":
    main()
