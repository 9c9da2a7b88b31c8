"""Two versions of nnscratch in one process, their training steps (or inference) alternated.

    git worktree add /tmp/before <commit>
    python benches/ab_step.py /tmp/before . [--arch cnn] [--batch 64] [--rounds 20] [--per 5] [--infer]

This VM's speed drifts by tens of percent within minutes, more than many single changes are worth,
and comparing fresh processes (``profile_step.py --total``, alternated) needs many of them to see a
1 ms difference in a 30 ms step. Here both trees are imported side by side (as ``nnscratch_a`` and
``nnscratch_b``: the package imports itself by relative imports only), each builds the same model
from the same seed, and the two step in turns, ``--per`` timed steps each per round, the first of each
turn untimed: both meet the same drift. Prints the median, quartiles and the median of B's per-round
difference to A.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

import numpy as np

# the two trees are imported as nnscratch_a and nnscratch_b: numba's disk cache would record those
# module names beside the kernels, and a later plain import would fail to load them
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), "nnscratch-ab-numba-cache"))


def load(tree: str, name: str):
    """The package in ``tree``/nnscratch, imported under ``name``."""
    root = os.path.join(os.path.abspath(tree), "nnscratch")
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, "__init__.py"),
                                                  submodule_search_locations=[root])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def runner(ns, arch: str, batch: int, infer: bool):
    """A function that runs one training step (or one inference batch of 256) of ``arch``."""
    ns.manual_seed(0)
    model = getattr(ns.models, arch)()
    rng = np.random.default_rng(0)
    if infer:
        x = rng.standard_normal((256, 3, 28, 28)).astype(np.float32)
        model.eval()
        return lambda: model(x)
    x = rng.standard_normal((batch, 3, 28, 28)).astype(np.float32)
    y = rng.integers(0, 8, batch)
    step = ns.TrainStep(model, ns.CrossEntropyLoss(), ns.Adam(model.parameters()))
    return lambda: step(x, y)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("a", help="source tree of version A (holds nnscratch/)")
    p.add_argument("b", help="source tree of version B")
    p.add_argument("--arch", choices=["cnn", "mlnn", "resnet"], default="cnn")
    p.add_argument("--batch", type=int, default=64, help="images per training step")
    p.add_argument("--rounds", type=int, default=20, help="turns of each version")
    p.add_argument("--per", type=int, default=5, help="timed steps per turn")
    p.add_argument("--infer", action="store_true", help="time inference (batch 256) instead of training")
    args = p.parse_args(argv)
    runs = {"A": runner(load(args.a, "nnscratch_a"), args.arch, args.batch, args.infer),
            "B": runner(load(args.b, "nnscratch_b"), args.arch, args.batch, args.infer)}
    for run in runs.values():                       # compilation, caches, allocator
        for _ in range(5):
            run()
    times = {k: [] for k in runs}
    rounds = {k: [] for k in runs}
    for r in range(args.rounds):
        for k in (("A", "B") if r % 2 == 0 else ("B", "A")):
            runs[k]()
            turn = []
            for _ in range(args.per):
                t0 = time.perf_counter()
                runs[k]()
                turn.append(time.perf_counter() - t0)
            times[k] += turn
            rounds[k].append(statistics.median(turn))
    what = "inference batch of 256" if args.infer else f"training step, batch {args.batch}"
    print(f"{args.arch}, {what}: ms, {args.rounds} turns x {args.per} timed runs each")
    for k, tree in (("A", args.a), ("B", args.b)):
        t = np.array(times[k]) * 1e3
        print(f"  {k} ({tree}): median {np.median(t):.2f}  (quartiles {np.percentile(t, 25):.2f} - "
              f"{np.percentile(t, 75):.2f})")
    diff = statistics.median(b - a for a, b in zip(rounds["A"], rounds["B"])) * 1e3
    print(f"  B - A, median over rounds: {diff:+.2f} ms")


if __name__ == "__main__":
    main()
