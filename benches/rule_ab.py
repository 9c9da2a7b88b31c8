"""One model in one process, its training steps alternated between settings of the planner's rules.

    python benches/rule_ab.py [--arch resnet] [--batch 128] [--rounds 10] [--per 3] [--part] SETTING ...

Each SETTING is ``-`` (the defaults) or comma-separated ``name=value`` pairs: a rule switched on or off
(``im2col_in_blocks=0``) or one of ``nnscratch.fast.rules``' constants (``WINOGRAD_BLOCK_BYTES=4194304``).
Every round runs each setting in turn, from the defaults: one untimed step (the plan is built
again), then ``--per`` timed ones. ``--part`` times one part of a split step on one core
(``profile_step.py --part``) instead of ``TrainStep`` on the whole batch.

Why a third way to compare: ``ab_step.py`` imports two trees into one process, which then holds two
models' arrays, twice the working set of a training run; here a change that saves passes over memory
read 3-6x larger there than here (benches/NOTES.md, "The ResNet", item 11). Fresh processes
(``speed.py``) vary by +-5 ms a step from one to the next, more than most changes are worth. One model
whose rules are switched between steps meets the same memory, the same process and the same drift.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np
from tqdm import tqdm

import nnscratch as ns
from nnscratch import progress
from nnscratch import threads
from nnscratch.fast import rules
from nnscratch.kernels import serial_kernels


def parse(setting: str) -> dict:
    """'-' -> {}; 'a=0,B=5' -> {'a': False, 'B': 5}: lower-case names are rules, upper-case constants."""
    if setting == "-":
        return {}
    out = {}
    for pair in setting.split(","):
        name, _, value = pair.partition("=")
        if name.islower():
            if name not in rules.RULES:
                raise SystemExit(f"rule_ab: unknown rule {name!r}; the rules are {sorted(rules.RULES)}")
            out[name] = value not in ("0", "false", "False", "off")
        else:
            if not hasattr(rules, name):
                raise SystemExit(f"rule_ab: nnscratch.fast.rules has no constant {name!r}")
            out[name] = type(getattr(rules, name))(value)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("settings", nargs="+", help="'-' for the defaults, or name=value pairs joined by commas")
    p.add_argument("--arch", default="resnet", choices=["cnn", "mlnn", "resnet"], help="network")
    p.add_argument("--batch", type=int, default=128, help="images a step (the whole batch, before any split)")
    p.add_argument("--rounds", type=int, default=10, help="rounds, each running every setting in turn")
    p.add_argument("--per", type=int, default=3, help="timed steps per setting and round")
    p.add_argument("--part", action="store_true", help="one part of the split step on one core, not TrainStep")
    args = p.parse_args(argv)
    settings = [parse(s) for s in args.settings]
    defaults = dict(rules.RULES), {k: getattr(rules, k) for k in dir(rules) if k.isupper() and k != "RULES"}

    ns.manual_seed(0)
    model = getattr(ns.models, args.arch)()
    rng = np.random.default_rng(0)
    loss_fn, opt = ns.CrossEntropyLoss(label_smoothing=0.1), ns.AdamW(model.parameters(), weight_decay=0.05)
    batch = args.batch
    if args.part:
        batch //= ns.TrainStep(model, loss_fn, opt).parts_for(args.batch)
    x = rng.standard_normal((batch, 3, 28, 28)).astype(np.float32)
    y = rng.integers(0, 8, batch)
    if args.part:
        def step():
            loss_fn(model(x), y)
            model.backward(loss_fn.backward(), need_input_grad=False)
            opt.step()
            opt.zero_grad()
    else:
        train_step = ns.TrainStep(model, loss_fn, opt)

        def step():
            train_step(x, y)

    def apply(setting):
        rules.RULES.clear()
        rules.RULES.update(defaults[0])
        for name, value in defaults[1].items():
            setattr(rules, name, value)
        for name, value in setting.items():
            if name.isupper():
                setattr(rules, name, value)
        rules.set_rules(**{k: v for k, v in setting.items() if k.islower()})     # a new version: plans anew

    times = [[] for _ in settings]
    one_core = contextlib.ExitStack()
    if args.part:                       # as a part runs inside TrainStep: OpenBLAS at one thread, serial kernels
        one_core.enter_context(threads.blas_threads(1))
        one_core.enter_context(serial_kernels())
    with one_core:
        try:
            for _ in tqdm(range(args.rounds), desc="rounds", disable=not progress.bars()):
                for k, setting in enumerate(settings):
                    apply(setting)
                    step()
                    for _ in range(args.per):
                        t0 = time.perf_counter()
                        step()
                        times[k].append(time.perf_counter() - t0)
        finally:
            apply({})
    what = "one part on one core" if args.part else "TrainStep"
    print(f"{args.arch}, batch {args.batch}, {what}: ms a step, {args.rounds} rounds x {args.per} timed steps\n")
    print("| setting | median | quartiles | median of the per-round difference to the first |")
    print("| --- | ---: | ---: | ---: |")
    per_round = [[statistics.median(ts[r * args.per:(r + 1) * args.per]) for r in range(args.rounds)] for ts in times]
    for text, ts, rounds_k in zip(args.settings, times, per_round):
        q = statistics.quantiles(ts, n=4)
        diff = statistics.median(b - a for a, b in zip(per_round[0], rounds_k))
        print(f"| `{text}` | {1e3 * statistics.median(ts):.2f} | {1e3 * q[0]:.2f} - {1e3 * q[2]:.2f} | "
              f"{1e3 * diff:+.2f} |")


if __name__ == "__main__":
    main()
