"""Speed of nnscratch against PyTorch, per network and per layer, printed as tables.

    python benches/speed.py [--batch 64] [--repeats 15] [--arch cnn mlnn resnet] [--no-layers]

Per architecture: median time of one training step (forward, backward, Adam) and the epoch it
implies (11,959 BloodMNIST images), inference images per second at batch 256, the ratios of both
times to PyTorch's, and the fraction of the arithmetic floor reached (the step's FLOPs at the speed of one
large float32 matrix product on this machine). nnscratch and PyTorch are timed in alternating
rounds, each round in a fresh process of its own: in one process PyTorch's OpenMP workers keep
spinning after each operation and take the cores from the next engine (both ran 2-5x slower). Per layer of the CNN: forward and backward times with
the reference (plain NumPy), numba and, on a GPU, CuPy kernels. Every figure is a median after a
warm-up. PyTorch rows appear where it is installed. Nothing here asserts anything about speed.

Engines: ``nnscratch`` runs ``TrainStep`` (on a GPU with CUDA graphs; ``nnscratch-no-graphs``
without); ``nnscratch-loop`` the API contract's loop written out (``loss_fn(model(x), y)``,
``model.backward(loss_fn.backward())``, ``opt.step()``, ``opt.zero_grad()``), which also computes
the gradient of the input that ``backward`` returns.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np

import nnscratch as ns
from nnscratch.layers import Conv2d, Linear

TRAIN_IMAGES = 11959


# ---- arithmetic ------------------------------------------------------------------------------

def step_flops(model, batch: int) -> float:
    """FLOPs of one training step: forward, weight gradients, and input gradients but the first layer's;
    every Conv2d and Linear, nested ones (a ResNet's blocks) included; batch norm and the rest not counted."""
    shapes = {}
    layers = [m for m in model.modules() if isinstance(m, (Conv2d, Linear))]
    for m in layers:                              # record each layer's output shape on one image
        def recording(x, m=m, forward=type(m).forward):
            y = forward(m, x)
            shapes[id(m)] = y.shape
            return y
        m.forward = recording
    try:
        model(np.zeros((1, 3, 28, 28), np.float32))
    finally:
        for m in layers:
            del m.forward
    total = 0.0
    for k, m in enumerate(layers):
        y = shapes[id(m)]
        pixels = y[2] * y[3] if len(y) == 4 else 1
        f = 2.0 * m.weight.size * pixels * batch          # one multiply-add per weight per output pixel
        total += f * (2 if k == 0 else 3)                 # forward + dW (+ dX)
    return total


def matmul_gflops(repeats=5) -> float:
    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    a @ a
    t = min(_time(lambda: a @ a) for _ in range(repeats))
    return 2 * 2048 ** 3 / t / 1e9


def _time(fn, sync=lambda: None):
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


# ---- the two engines -----------------------------------------------------------------------------

def ours(arch, device, batch, graphs=True, loop=False):
    ns.manual_seed(0)
    model = getattr(ns.models, arch)()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, 28, 28)).astype(np.float32)
    xi = rng.standard_normal((256, 3, 28, 28)).astype(np.float32)
    y = rng.integers(0, 8, batch)
    sync = lambda: None  # noqa: E731
    if device == "gpu":
        import cupy as cp
        model.to("gpu")
        x, xi, y = cp.asarray(x), cp.asarray(xi), cp.asarray(y)
        sync = cp.cuda.Device().synchronize  # noqa: E731
    if arch == "resnet":            # the recipe's pieces that cost time: AdamW, label smoothing
        loss_fn, opt = ns.CrossEntropyLoss(label_smoothing=0.1), ns.AdamW(model.parameters(), weight_decay=0.05)
    else:
        loss_fn, opt = ns.CrossEntropyLoss(), ns.Adam(model.parameters())
    train_step = ns.TrainStep(model, loss_fn, opt, graph=graphs)

    def step():
        if loop:                    # the API contract's loop, written out; the input gradient is returned
            loss_fn(model(x), y)
            model.backward(loss_fn.backward())
            opt.step()
            opt.zero_grad()
        else:
            train_step(x, y)        # what a training loop runs: the loss and hit count come back to Python

    def infer():
        model.eval()
        model(xi)
        model.train()
    return step, infer, sync


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
    elif arch == "resnet":
        model = torch_resnet()
    else:
        model = nn.Sequential(nn.Flatten(), nn.Linear(2352, 1180), nn.ReLU(), nn.Linear(1180, 8))
    dev = "cuda" if device == "gpu" else "cpu"
    model.to(dev)
    x = torch.randn(batch, 3, 28, 28, device=dev)
    xi = torch.randn(256, 3, 28, 28, device=dev)
    y = torch.randint(0, 8, (batch,), device=dev)
    if arch == "resnet":
        opt = torch.optim.AdamW(model.parameters(), weight_decay=0.05)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    else:
        opt, loss_fn = torch.optim.Adam(model.parameters()), nn.CrossEntropyLoss()
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def step():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    def infer():
        with torch.no_grad():
            model.eval()
            model(xi)
            model.train()
    return step, infer, sync


def torch_resnet(widths=(32, 64, 128), blocks=(1, 1, 1), classes=8):
    """ns.models.resnet() in PyTorch, layer for layer."""
    import torch
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                      nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
            self.shortcut = None
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            return torch.relu(self.body(x) + (x if self.shortcut is None else self.shortcut(x)))

    layers, ch = [nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()], widths[0]
    for stage, (w, n) in enumerate(zip(widths, blocks)):
        for b in range(n):
            layers.append(Block(ch, w, 2 if stage > 0 and b == 0 else 1))
            ch = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, classes))


def worker(engine, arch, device, batch, warmup, repeats) -> dict:
    """Run in a process of its own: step and inference times (seconds) of one engine."""
    if engine == "PyTorch":
        step, infer, sync = theirs(arch, device, batch)
    else:
        step, infer, sync = ours(arch, device, batch, graphs=engine == "nnscratch", loop=engine == "nnscratch-loop")
    for _ in range(warmup):
        step()
        infer()
    sync()
    return {"step": [_time(step, sync) for _ in range(repeats)],
            "infer": [_time(infer, sync) for _ in range(max(3, repeats // 3))]}


def race(engines: list, arch, device, args) -> dict:
    """Median step and inference seconds per engine over ``args.rounds`` alternating fresh processes."""
    times = {e: {"step": [], "infer": []} for e in engines}
    for _ in range(args.rounds):
        for e in engines:
            cmd = [sys.executable, __file__, "--worker", e, arch, device, "--batch", str(args.batch),
                   "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
            out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            for k in ("step", "infer"):
                times[e][k] += out[k]
    return {e: (statistics.median(t["step"]), statistics.median(t["infer"])) for e, t in times.items()}


# ---- per layer --------------------------------------------------------------------------------------

def layer_times(batch, warmup, repeats):
    """(layer name, kernels, forward ms, backward ms) for the CNN's layers."""
    variants = [("reference", "cpu"), ("numba", "cpu")] + ([("cupy", "gpu")] if ns.gpu_available() else [])
    rows = []
    for kernels, device in variants:
        ns.kernels.set_cpu_kernels("reference" if kernels == "reference" else "numba")
        ns.manual_seed(0)
        model = ns.models.cnn().to(device)
        x = ns.to_device(np.random.default_rng(0).standard_normal((batch, 3, 28, 28)).astype(np.float32), device)
        sync = lambda: None  # noqa: E731
        if device == "gpu":
            import cupy as cp
            sync = cp.cuda.Device().synchronize  # noqa: E731
        inputs, h = [], x
        for layer in model:
            inputs.append(h)
            h = layer(h)
        for i, layer in enumerate(model):
            if isinstance(layer, (Linear,)) or type(layer).__name__ == "Flatten":
                continue
            xin = inputs[i]
            out = layer(xin)
            g = ns.get_array_module(out).ones_like(out)
            fwd, bwd = [], []
            for r in range(warmup + repeats):
                tf = _time(lambda: layer(xin), sync)
                tb = _time(lambda: layer.backward(g, need_input_grad=i > 0), sync)
                if r >= warmup:
                    fwd.append(tf)
                    bwd.append(tb)
            rows.append((f"{i:2d} {layer}", kernels, statistics.median(fwd) * 1e3, statistics.median(bwd) * 1e3))
    ns.kernels.set_cpu_kernels("numba")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch", type=int, default=64, help="images per training step")
    p.add_argument("--repeats", type=int, default=15, help="timed rounds (medians are shown)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first (compilation, caches)")
    p.add_argument("--arch", nargs="+", default=["cnn", "mlnn"], choices=["cnn", "mlnn", "resnet"],
                   help="networks to time; resnet is ns.models.resnet() with AdamW and label smoothing, "
                        "beside the same network and recipe in PyTorch")
    p.add_argument("--rounds", type=int, default=3, help="alternating fresh processes per engine")
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer table")
    p.add_argument("--devices", nargs="+", default=["cpu", "gpu"], choices=["cpu", "gpu"],
                   help="where to time the networks (gpu only where CuPy sees one)")
    p.add_argument("--worker", nargs=3, metavar=("ENGINE", "ARCH", "DEVICE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.batch, args.warmup, args.repeats)))
        return
    try:
        import torch
        have_torch = True
        torch_note = f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        have_torch, torch_note = False, "PyTorch not installed: its rows are left out"
    devices = [d for d in args.devices if d == "cpu" or ns.gpu_available()]
    gflops = matmul_gflops()
    print(f"batch {args.batch}, float32, Adam; medians of {args.rounds} alternating processes x {args.repeats} steps, "
          f"each after {args.warmup} warm-up steps; {torch_note}; float32 2048^3 matrix product here: "
          f"{gflops:.0f} GFLOP/s\n")
    print("| arch | device | engine | ms / step | s / epoch | inference img/s (batch 256) | step time vs PyTorch "
          "| inference time vs PyTorch | floor reached |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    steps_per_epoch = -(-TRAIN_IMAGES // args.batch)
    for arch in args.arch:
        flops = step_flops(getattr(ns.models, arch)(), args.batch)
        for device in devices:
            engines = ["nnscratch"] + (["nnscratch-no-graphs"] if device == "gpu" else ["nnscratch-loop"])
            if have_torch and (device == "cpu" or torch.cuda.is_available()):
                engines.append("PyTorch")
            result = race(engines, arch, device, args)
            for name, (step_s, infer_s) in result.items():
                ratio = step_s / result["PyTorch"][0] if "PyTorch" in result else float("nan")
                infer_ratio = infer_s / result["PyTorch"][1] if "PyTorch" in result else float("nan")
                floor = (flops / (gflops * 1e9)) / step_s if device == "cpu" else float("nan")
                print(f"| {arch} | {device} | {name} | {step_s * 1e3:.2f} | {step_s * steps_per_epoch:.2f} | "
                      f"{256 / infer_s:,.0f} | {ratio:.2f}x | {infer_ratio:.2f}x | "
                      + (f"{floor:.0%}" if floor == floor else "-") + " |", flush=True)
        print(f"|  |  | ({arch}: {flops / 1e9:.2f} GFLOP per step) |  |  |  |  |  |  |")
    if not args.no_layers:
        print(f"\nCNN per layer, batch {args.batch}, ms (median of {args.repeats} after {args.warmup})\n")
        print("| layer | kernels | forward | backward |")
        print("| --- | --- | ---: | ---: |")
        for name, kernels, f, b in layer_times(args.batch, args.warmup, args.repeats):
            print(f"| {name} | {kernels} | {f:.2f} | {b:.2f} |")


if __name__ == "__main__":
    main()
