"""The MLNN's first-layer product through NumPy's BLAS and through PyTorch's, side by side.

    python benches/blas_product.py [--rows 64 128 192 256 384 512] [--rounds 6] [--repeats 40]

MLNN inference at batch 256 is, to 93 %, one float32 product: the images (B x 2352) times the first
Linear's weight (2352 x 1180). nnscratch hands it to NumPy, i.e. to the OpenBLAS that NumPy ships;
PyTorch's CPU build hands it to Intel's MKL. This prints, per batch size B, the median time of that
product alone in each library (the operands laid out as each engine lays them out: NumPy ``x @ W``
with W row-major (2352, 1180), as ``Linear`` stores it; PyTorch ``x @ weight.t()``, the addmm of
``nn.Linear`` without its bias), the rate in GFLOP/s and the ratio. Each library runs in fresh
processes of its own, alternating, ``--rounds`` times: in one process the two thread pools take
each other's cores. Figures are medians after a warm-up; nothing is asserted.

A second table sets the product against the whole inference pass at batch 256 (``model(x)`` in eval
mode, as ``benches/speed.py`` times it), both timed in the same process in turns, so "the rest" (bias,
ReLU, the 1180 x 8 layer, Python) is each engine's own overhead around the product.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

import numpy as np
from speed import _time, ours, theirs    # benches/speed.py: its timer, and the same models and pass

IN_FEATURES, OUT_FEATURES = 2352, 1180       # the MLNN's first Linear on BloodMNIST


def _median_ms(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(_time(fn) for _ in range(repeats)) * 1e3


def _product(library: str, x, w):
    """The product x @ w as each engine runs it, as a callable: NumPy ``x @ W`` with W row-major
    (in, out), as ``Linear`` stores it; PyTorch ``x @ weight.t()`` with nn.Linear's (out, in) weight.
    x (B, 2352) and w (2352, 1180) are float32 NumPy arrays."""
    if library == "numpy":
        return lambda: np.matmul(x, w)
    import torch
    tx, tw = torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(w.T))

    def run():
        with torch.no_grad():
            torch.mm(tx, tw.t())
    return run


def worker(library: str, rows: list, warmup: int, repeats: int) -> dict:
    """Run in a process of its own: {B: median ms of the (B x 2352) @ (2352 x 1180) product}, and under
    "pass" [whole inference pass ms, product ms] at batch 256, timed in turns."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((IN_FEATURES, OUT_FEATURES)).astype(np.float32)
    x = rng.standard_normal((256, IN_FEATURES)).astype(np.float32)
    out = {"pass": _pass_and_product(library, _product(library, x, w), warmup, repeats)}
    for b in rows:
        x = rng.standard_normal((b, IN_FEATURES)).astype(np.float32)
        out[b] = _median_ms(_product(library, x, w), warmup, repeats)
    return out


PASS_TURNS = 4          # alternating blocks of the whole pass and the product alone, per process


def _pass_and_product(library: str, product, warmup: int, repeats: int) -> list:
    """[median ms of the MLNN's whole inference pass at batch 256, median ms of ``product`` (its first
    product at batch 256) alone], the two timed in ``PASS_TURNS`` alternating blocks in this process."""
    _, infer, _ = (ours if library == "numpy" else theirs)("mlnn", "cpu", 64)
    whole, alone = [], []
    for _ in range(PASS_TURNS):
        whole.append(_median_ms(infer, warmup, repeats))
        alone.append(_median_ms(product, warmup, repeats))
    return [statistics.median(whole), statistics.median(alone)]


def blas_names() -> tuple:
    """(NumPy's BLAS, PyTorch's BLAS or None when PyTorch is not installed), as the libraries report them."""
    numpy_blas = "NumPy's BLAS"
    try:
        from threadpoolctl import threadpool_info
        info = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        if info:
            numpy_blas = f"{info[0]['internal_api']} {info[0].get('version', '')} ({info[0].get('architecture', '')})"
    except ImportError:
        pass
    try:
        import torch
    except ImportError:
        return numpy_blas, None
    config = torch.__config__.show()
    torch_blas = "MKL" if "MKL" in config else "its BLAS"
    return numpy_blas, f"PyTorch {torch.__version__}, {torch_blas}, {torch.get_num_threads()} threads"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[64, 128, 192, 256, 384, 512],
                   help="batch sizes B (rows of the product)")
    p.add_argument("--rounds", type=int, default=6, help="alternating fresh processes per library")
    p.add_argument("--repeats", type=int, default=40, help="timed products per batch size and process")
    p.add_argument("--warmup", type=int, default=5, help="untimed products first")
    p.add_argument("--worker", metavar="LIBRARY", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.rows, args.warmup, args.repeats)))
        return
    numpy_blas, torch_blas = blas_names()
    libraries = ["numpy"] + (["torch"] if torch_blas else [])
    times = {lib: {b: [] for b in args.rows} for lib in libraries}
    passes = {lib: [] for lib in libraries}
    for _ in range(args.rounds):
        for lib in libraries:
            cmd = [sys.executable, __file__, "--worker", lib, "--rows", *map(str, args.rows),
                   "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
            result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            passes[lib].append(result.pop("pass"))
            for b, ms in result.items():
                times[lib][int(b)].append(ms)
    print(f"float32 (B x {IN_FEATURES}) @ ({IN_FEATURES} x {OUT_FEATURES}); medians of {args.rounds} alternating "
          f"processes x {args.repeats} products; NumPy: {numpy_blas}; "
          + (torch_blas if torch_blas else "PyTorch not installed: its columns are left out") + "\n")
    print("| B | NumPy ms | NumPy GFLOP/s | PyTorch ms | PyTorch GFLOP/s | NumPy time vs PyTorch |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for b in args.rows:
        flop = 2.0 * b * IN_FEATURES * OUT_FEATURES
        ms = statistics.median(times["numpy"][b])
        row = f"| {b} | {ms:.3f} | {flop / ms / 1e6:.0f} |"
        if torch_blas:
            tms = statistics.median(times["torch"][b])
            row += f" {tms:.3f} | {flop / tms / 1e6:.0f} | {ms / tms:.2f}x |"
        else:
            row += " - | - | - |"
        print(row)
    print("\nThe MLNN's whole inference pass at batch 256 and its first product alone, in the same process, "
          f"ms (medians over the processes of the medians of {PASS_TURNS} turns)\n")
    print("| engine | whole pass | product alone | the rest |")
    print("| --- | ---: | ---: | ---: |")
    for lib in libraries:
        whole = statistics.median(p[0] for p in passes[lib])
        alone = statistics.median(p[1] for p in passes[lib])
        name = "nnscratch (NumPy)" if lib == "numpy" else "PyTorch"
        print(f"| {name} | {whole:.3f} | {alone:.3f} | {whole - alone:.3f} |")


if __name__ == "__main__":
    main()
