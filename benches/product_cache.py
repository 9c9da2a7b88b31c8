"""The ResNet's Winograd products with their operands in the core's cache and out of it.

    python benches/product_cache.py [--pool-mb 96] [--calls 200]

A Winograd layer's product multiplies, for each of the 36 transform points k, a block's transformed
tiles V[k] (tiles x C) by the transformed weight U[k] (C x OC) into M[k] (tiles x OC). With C = OC =
32 (the ResNet's first stage) each value of V is used 32 times, so the product does 2 * 32 = 64
floating-point operations per 4-byte value read and per 4-byte value written: 8 FLOP a byte. A core
that streams V and M from beyond its caches at B GB/s cannot run the product faster than 8 B GFLOP/s,
however fast its arithmetic.

On one thread, for the block shapes the ResNet's part of a split batch runs (``WINOGRAD_BLOCK_BYTES``),
this prints the median time of ``np.matmul(V, U, out=M)``:

- hot: the same V and M every call (both in the cache after the first);
- cold V / cold M / cold both: V, M or both taken in turn from a pool of ``--pool-mb`` MB of blocks,
  so that each call finds them where a step leaves them, out of the core's 2 MB cache;

and the GB/s the product's reads and writes of V and M would need at each rate, beside the core's own
copy speed (``np.copyto`` between two arrays of ``--pool-mb`` MB). Nothing is asserted; see
benches/NOTES.md, "The ResNet", item 16.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from tqdm import tqdm

from nnscratch import progress, threads
from nnscratch.fast import rules

POINTS = 36


def shapes():
    """(tiles, C, OC) of the ResNet's Winograd products in a part of 64 images: stages 1 and 2 a block
    of images at a time (as many as ``rules.WINOGRAD_BLOCK_BYTES`` of tiles hold), stage 3 whole (below
    the blocks' threshold)."""
    out = []
    for side, channels in ((28, 32), (14, 64)):
        tiles = (-(-side // 4)) ** 2                   # 4x4 output tiles, the last ones partly outside
        images = max(1, rules.WINOGRAD_BLOCK_BYTES // (POINTS * tiles * 2 * channels * 4))
        out.append((images * tiles, channels, channels))
    return out + [(64 * 4, 128, 128)]


def _median_us(fn, calls: int) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[calls // 10:]) * 1e6


def copy_gbs(pool_mb: int, calls: int = 20) -> float:
    """The core's copy speed, GB/s read plus written, between two arrays of pool_mb MB."""
    a = np.ones(pool_mb << 18, np.float32)
    b = np.empty_like(a)
    us = _median_us(lambda: np.copyto(b, a), calls)
    return 2 * a.nbytes / us / 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--pool-mb", type=int, default=96, help="MB of blocks the cold operands are taken from in turn")
    p.add_argument("--calls", type=int, default=200, help="products timed per case (the median is shown)")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    with threads.blas_threads(1):
        print(f"one thread; the core's copy speed: {copy_gbs(args.pool_mb):.1f} GB/s (read + written)\n")
        print("| V[k] @ U[k], 36 k | MB of V, of M | FLOP a byte | hot | cold V | cold M | cold both |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for tiles, C, OC in tqdm(shapes(), desc="shapes", leave=False, disable=not progress.bars()):
            V0 = rng.standard_normal((POINTS, tiles, C)).astype(np.float32)
            U = rng.standard_normal((POINTS, C, OC)).astype(np.float32)
            count = max(2, (args.pool_mb << 20) // (V0.nbytes + V0.nbytes * OC // C))
            Vs = [V0] + [V0.copy() for _ in range(count - 1)]
            Ms = [np.full((POINTS, tiles, OC), 0.0, np.float32) for _ in range(count)]     # written once:
            # their pages mapped now, so that no call below pays a page fault
            flop = 2 * POINTS * tiles * C * OC
            moved = Vs[0].nbytes + Ms[0].nbytes
            cells = []
            for cold_v, cold_m in ((False, False), (True, False), (False, True), (True, True)):
                turn = [0]

                def call():
                    i = turn[0] = (turn[0] + 1) % count
                    np.matmul(Vs[i if cold_v else 0], U, out=Ms[i if cold_m else 0])
                us = _median_us(call, args.calls)
                cells.append(f"{us:.0f} us, {flop / us / 1e3:.0f} GFLOP/s, {moved / us / 1e3:.1f} GB/s")
            print(f"| {tiles} x {C} x {OC} | {Vs[0].nbytes / 2**20:.2f}, {Ms[0].nbytes / 2**20:.2f} | "
                  f"{flop / moved:.0f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
