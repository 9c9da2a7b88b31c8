"""Time one training step (forward, backward, Adam) of the paper's networks on each available backend.

    python benches/step_timing.py [--batch 64] [--repeats 20] [--warmup 3] [--arch cnn mlnn]

Prints a table: median milliseconds per step over ``--repeats`` steps after ``--warmup``
steps, for nnscratch on NumPy (numba kernels), nnscratch on CuPy where a GPU is present, and
PyTorch (CPU, and CUDA where present) where it is installed, on random float32 data.
Asserts nothing about speed.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import nnscratch as ns


def median_ms(step, sync, warmup, repeats):
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def ours(arch, device, batch):
    ns.manual_seed(0)
    model = getattr(ns.models, arch)()
    x = np.random.default_rng(0).standard_normal((batch, 3, 28, 28)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 8, batch)
    sync = lambda: None  # noqa: E731
    if device == "gpu":
        import cupy as cp
        model.to("gpu")
        x, y = cp.asarray(x), cp.asarray(y)
        sync = cp.cuda.Device().synchronize  # noqa: E731
    opt, loss_fn = ns.Adam(model.parameters()), ns.CrossEntropyLoss()

    def step():
        loss_fn(model(x), y)
        model.backward(loss_fn.backward(), need_input_grad=False)
        opt.step()
        opt.zero_grad()
    return step, sync


def theirs(arch, device, batch):
    import torch
    nn = torch.nn
    torch.manual_seed(0)
    if arch == "cnn":
        model = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(1152, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 8))
    else:
        model = nn.Sequential(nn.Flatten(), nn.Linear(2352, 1180), nn.ReLU(), nn.Linear(1180, 8))
    dev = "cuda" if device == "gpu" else "cpu"
    model.to(dev)
    x = torch.randn(batch, 3, 28, 28, device=dev)
    y = torch.randint(0, 8, (batch,), device=dev)
    opt, loss_fn = torch.optim.Adam(model.parameters()), nn.CrossEntropyLoss()
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def step():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return step, sync


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="images per step")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per row (the median is shown)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, caches)")
    parser.add_argument("--arch", nargs="+", default=["cnn", "mlnn"], choices=["cnn", "mlnn"])
    args = parser.parse_args(argv)
    rows = []
    devices = ["cpu"] + (["gpu"] if ns.gpu_available() else [])
    try:
        import torch
        torch_devices = ["cpu"] + (["gpu"] if torch.cuda.is_available() else [])
    except ImportError:
        torch_devices = []
    for arch in args.arch:
        for device in devices:
            rows.append((arch, f"nnscratch ({'NumPy+numba' if device == 'cpu' else 'CuPy'})",
                         median_ms(*ours(arch, device, args.batch), args.warmup, args.repeats)))
        for device in torch_devices:
            rows.append((arch, f"PyTorch ({'CPU' if device == 'cpu' else 'CUDA eager'})",
                         median_ms(*theirs(arch, device, args.batch), args.warmup, args.repeats)))
    print(f"\ntraining step, batch {args.batch}, float32, Adam; median of {args.repeats} after {args.warmup} warm-up\n")
    print(f"| arch | engine | ms / step | epoch of 11,959 images (s) |")
    print(f"| --- | --- | ---: | ---: |")
    steps_per_epoch = -(-11959 // args.batch)
    for arch, engine, ms in rows:
        print(f"| {arch} | {engine} | {ms:.2f} | {ms * steps_per_epoch / 1e3:.2f} |")


if __name__ == "__main__":
    main()
