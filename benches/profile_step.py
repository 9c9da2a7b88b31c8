"""Where one training step's time goes: every layer's forward and backward, timed inside real steps.

    python benches/profile_step.py [--arch cnn] [--batch 64] [--steps 40] [--warmup 5] [--products] [--kernels]
    python benches/profile_step.py --part [--kernels]      # one core's share of a split step
    python benches/profile_step.py --infer [--arch mlnn]

Runs the five lines of a step (forward, cross-entropy, backward without the input gradient, Adam,
zero_grad) on random data, the whole batch at once (``TrainStep(workers=1)``), and prints the median
time of each layer's forward and backward pass, of the three phases and of the whole step. Unlike the
per-layer table of ``speed.py``, which times each layer alone on warm inputs, these figures include
what a layer pays for running between the others: cold caches, threads waking up, OpenBLAS workers
still spinning after a product. ``speed.py``'s CNN step splits the batch across the cores
(``TrainStep``'s default); ``--part`` profiles what one core runs there.

To compare two commits on this noisy machine, use ``benches/ab_step.py`` (both in one process).
"""
from __future__ import annotations

import argparse
import collections
import statistics
import time

import numpy as np

import nnscratch as ns
from nnscratch import threads
from nnscratch.kernels import serial_kernels


def _names(step) -> str:
    """The layers a plan step stands for, as "Conv2d + ReLU + MaxPool2d"."""
    return " + ".join(type(layer).__name__ for _, layer in step.layers)


def timed(times, key, fn):
    """fn, with the duration of every call appended to times[key]."""
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        times[key].append(time.perf_counter() - t0)
        return out
    return wrapper


KERNELS = ("matmul", "im2col", "col2im", "maxpool_forward", "maxpool_backward", "add_bias", "add_bias_checked",
           "relu_forward", "relu_backward", "adam_update", "winograd_input", "winograd_output",
           "winograd_grad_output", "winograd_grad_input", "winograd_weight", "winograd_weight_grad",
           "winograd_output_pool", "winograd_grad_output_pool", "batchnorm_forward", "batchnorm_backward",
           "scale_shift", "add_relu")


def timed_sum(totals, key, fn):
    """fn, with the duration of every call added to totals[key]. The layers call the kernels as
    attributes of ``ns.kernels``, so replacing them there catches every call."""
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        totals[key] += time.perf_counter() - t0
        return out
    return wrapper


def conv_products(model, batch: int, repeats: int = 30):
    """Print the three matrix products of each convolution (forward, weight and input gradients) timed
    alone on random float32 data: the part of a convolution that BLAS does, for comparison with the
    layer's time in the step."""
    rng = np.random.default_rng(0)
    side, total = 28, 0.0
    print("| convolution | M x K x N | forward | weight grad | input grad | GFLOP/s |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for i, layer in enumerate(model):
        if isinstance(layer, ns.MaxPool2d):
            side //= 2
        if not isinstance(layer, ns.Conv2d):
            continue
        M, K, N = batch * side * side, layer.in_channels * 9, layer.out_channels
        cols, w, g = (rng.standard_normal(s, dtype=np.float32) for s in ((M, K), (N, K), (M, N)))
        ms = []
        for fn in (lambda: cols @ w.T, lambda: g.T @ cols, lambda: g @ w):
            for _ in range(3):
                fn()
            runs = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                runs.append(time.perf_counter() - t0)
            ms.append(1e3 * statistics.median(runs))
        if i == 0:
            ms[2] = 0.0            # the first layer computes no input gradient in training
        total += sum(ms)
        flops = 2 * M * K * N * (2 if i == 0 else 3)
        print(f"| {i} Conv2d | {M} x {K} x {N} | {ms[0]:.2f} | {ms[1]:.2f} | "
              f"{'-' if i == 0 else f'{ms[2]:.2f}'} | {flops / sum(ms) / 1e6:.0f} |")
    print(f"\nall convolution products: {total:.2f} ms")


def inference(args):
    """Print the median time of each layer's forward pass inside model(x) for a batch of 256, eval
    mode (as ``benches/speed.py`` times inference), and the first Linear's or Conv2d's product alone."""
    ns.manual_seed(0)
    model = getattr(ns.models, args.arch)().eval()
    x = np.random.default_rng(0).standard_normal((256, 3, 28, 28)).astype(np.float32)
    times = collections.defaultdict(list)
    for i, step in enumerate(ns.plan(model, x).plan.steps):      # the plan's steps, as model(x) runs them
        step.forward = timed(times, f"{i:2d} {_names(step)}", step.forward)
    whole = timed(times, "model(x)", model)
    for _ in range(args.warmup):
        whole(x)
    times.clear()
    for _ in range(args.steps):
        whole(x)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    print(f"{args.arch}, inference on 256 images, median of {args.steps} passes, ms\n")
    print("| plan step (layers) | forward |")
    print("| --- | ---: |")
    for name in (k for k in ms if k != "model(x)"):
        print(f"| {name} | {ms[name]:.2f} |")
    print(f"\nmodel(x): {ms['model(x)']:.2f} ms")
    first = next(m for m in model if isinstance(m, (ns.Linear, ns.Conv2d)))
    if isinstance(first, ns.Linear):                  # the product the first layer runs, alone
        a, w = x.reshape(256, -1), first.weight.data
        runs = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            a @ w.T
            runs.append(time.perf_counter() - t0)
        print(f"first layer's product alone ({a.shape[0]} x {a.shape[1]} x {w.shape[0]}): "
              f"{1e3 * statistics.median(runs):.2f} ms")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", choices=["cnn", "mlnn", "resnet"], default="cnn",
                   help="network (ns.models.<arch>(); a residual block is one row, its layers inside it)")
    p.add_argument("--batch", type=int, default=64, help="images per step")
    p.add_argument("--steps", type=int, default=40, help="timed steps (medians are shown)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, caches)")
    p.add_argument("--total", action="store_true", help="print the step's median only")
    p.add_argument("--products", action="store_true",
                   help="also time each convolution's three matrix products alone (--arch cnn)")
    p.add_argument("--kernels", action="store_true",
                   help="also time every kernel call inside the steps (matmul, im2col, ...), summed per step")
    p.add_argument("--part", action="store_true",
                   help="profile what one core runs in a split step (TrainStep's workers): the step on "
                        "batch / parts images, OpenBLAS at one thread, numba's serial kernels")
    p.add_argument("--infer", action="store_true",
                   help="time inference instead: the model's forward pass in eval mode on a batch of 256, "
                        "with each layer's share and the first layer's product alone")
    args = p.parse_args(argv)
    if args.infer:
        return inference(args)

    ns.manual_seed(0)
    model = getattr(ns.models, args.arch)()
    if args.part:
        parts = ns.TrainStep(model, ns.CrossEntropyLoss(), ns.Adam(model.parameters())).parts_for(args.batch)
        print(f"one part of {parts}: {args.batch // parts} images, single-threaded\n")
        args.batch //= parts
        with threads.blas_threads(1), serial_kernels():
            return profile(args, model)
    # the batch whole, every call on all cores: the model would otherwise split it itself (model.workers),
    # through replicas that the timing wrappers below do not reach
    model.workers = 1
    print(f"the whole batch of {args.batch}, every call on all cores\n")
    return profile(args, model)


def profile(args, model):
    """Time the five lines of a step on ``model`` and print the tables (see the module notes)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, 28, 28)).astype(np.float32)
    y = rng.integers(0, 8, args.batch)
    opt, loss_fn = ns.Adam(model.parameters()), ns.CrossEntropyLoss()
    times = collections.defaultdict(list)
    kernel_times = collections.defaultdict(float)
    if args.kernels:
        for name in KERNELS:
            setattr(ns.kernels, name, timed_sum(kernel_times, name, getattr(ns.kernels, name)))
    if not args.total:
        for i, plan_step in enumerate(ns.plan(model, x).plan.steps):     # the steps model(x) runs
            name = f"{i:2d} {_names(plan_step)}"
            plan_step.forward = timed(times, (name, "forward"), plan_step.forward)
            plan_step.backward = timed(times, (name, "backward"), plan_step.backward)

    def step():
        t0 = time.perf_counter()
        loss_fn(model(x), y)
        t1 = time.perf_counter()
        model.backward(loss_fn.backward(), need_input_grad=False)
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad()
        t3 = time.perf_counter()
        for key, dt in (("forward + loss", t1 - t0), ("backward", t2 - t1), ("Adam + zero_grad", t3 - t2),
                        ("step", t3 - t0)):
            times[key].append(dt)

    for _ in range(args.warmup):
        step()
    times.clear()
    kernel_times.clear()
    for _ in range(args.steps):
        step()
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    if args.kernels:
        print(f"kernels inside the steps, ms per step (mean of {args.steps} steps):")
        for name, total in sorted(kernel_times.items(), key=lambda kv: -kv[1]):
            print(f"  {name}: {1e3 * total / args.steps:.2f}")
        print(f"  all kernels: {1e3 * sum(kernel_times.values()) / args.steps:.2f}\n")
    if args.total:
        print(f"{args.arch} step {ms['step']:.2f} ms")
        return
    print(f"{args.arch}, batch {args.batch}, median of {args.steps} steps, ms\n")
    print("| plan step (layers) | forward | backward |")
    print("| --- | ---: | ---: |")
    for name in dict.fromkeys(k[0] for k in ms if isinstance(k, tuple)):
        back = ms.get((name, "backward"))
        print(f"| {name} | {ms[(name, 'forward')]:.2f} | {'-' if back is None else f'{back:.2f}'} |")
    print()
    for key in ("forward + loss", "backward", "Adam + zero_grad", "step"):
        print(f"{key}: {ms[key]:.2f} ms")
    if args.products and args.arch == "cnn":
        print()
        conv_products(model, args.batch)


if __name__ == "__main__":
    main()
