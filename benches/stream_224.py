"""A 224-pixel set far larger than the memory budget: unpacking, reading and training from disk, with
each step's peak resident memory.

    python benches/stream_224.py [--gigabytes 16] [--dir /tmp/nnscratch-stream] [--train-images 1024]

Writes (once; reused while its size matches) a synthetic MedMNIST-format file ``synthmnist_224.npz``
in ``--dir``: ``--gigabytes`` of 3 x 224 x 224 uint8 images (16 GB: 106,000 images, PathMNIST at
224 pixels is about that; 1,000 each for validation and test), compressed as MedMNIST's files are,
8 classes. Then, each in its own
process (its peak resident set from ``wait4``), with the unpacked copy's pages dropped from the page
cache first (``posix_fadvise(DONTNEED)``) so that every read comes from the disk:

1. **unpack**: ``data.load`` with a budget of ``--budget`` GB, which unpacks the file into the cache;
2. **read**: one epoch's batches of every training image, in shuffled order, as training reads
   them (``data.batches``, the background reader), and nothing else: the disk's pace;
3. **train**: ``python -m nnscratch.train --arch ARCH --size 224 --epochs 1`` on the first
   ``--train-images`` images: the compute's pace, and the resident set of a training run.

Reading is not what limits an epoch when (2)'s images per second are many times (3)'s.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZE, CLASSES = 224, 8


def write_set(path: Path, gigabytes: float, seed: int = 0) -> dict:
    """The synthetic file, streamed into the zip a batch of images at a time (never all in memory)."""
    per_image = SIZE * SIZE * 3
    n = int(gigabytes * 1e9 // per_image)
    held_out = min(n // 20, 1000)          # validation and test images each: the run's evaluation stays short
    counts = {"train": n - 2 * held_out, "val": held_out, "test": held_out}
    record = path.with_suffix(".json")
    if path.is_file() and record.is_file() and json.loads(record.read_text()) == counts:
        return counts
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    pattern = (40 * np.sin(xx / 9.0) * np.cos(yy / 13.0)).astype(np.int16)
    tmp = path.with_name(path.name + ".tmp")
    t0 = time.perf_counter()
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for split, count in counts.items():
            labels = rng.integers(0, CLASSES, (count, 1)).astype(np.uint8)
            with z.open(f"{split}_labels.npy", "w") as f:
                np.lib.format.write_array(f, labels)
            with z.open(f"{split}_images.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(
                    f, {"descr": "|u1", "fortran_order": False, "shape": (count, SIZE, SIZE, 3)})
                for s in range(0, count, 256):
                    b = min(256, count - s)
                    # a class-coloured pattern with noise: about as compressible as MedMNIST's photographs
                    shade = (60 + 20 * labels[s:s + b, 0]).astype(np.int16)[:, None, None, None]
                    noise = rng.integers(0, 4, (b, SIZE, SIZE, 3), dtype=np.int16)
                    f.write(np.clip(shade + pattern[None, :, :, None] + noise, 0, 255).astype(np.uint8).tobytes())
                    print(f"\rwriting {path.name}: {split} {s + b}/{count}", end="", file=sys.stderr)
    os.replace(tmp, path)
    record.write_text(json.dumps(counts))
    print(f"\rwrote {path} ({path.stat().st_size / 1e9:.1f} GB compressed) in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)
    return counts


def measured(cmd, env) -> tuple[float, float, str]:
    """(seconds, peak resident GB, stdout) of one process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[:3]} failed (exit {os.waitstatus_to_exitcode(status)})")
    return seconds, usage.ru_maxrss * 1024 / 1e9, out


def evict(folder: Path):
    """Drop the unpacked files' pages from the page cache, so that the next reads come from the disk."""
    for f in folder.glob("*.npy"):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


UNPACK = """
import sys
from nnscratch import data
ds = data.load_file(sys.argv[1], memory_budget=int(float(sys.argv[2]) * 1e9), progress=False, log=lambda _: None)
print(ds.streamed_from)
"""

READ = """
import sys, time
import numpy as np
from nnscratch import data
ds = data.load_file(sys.argv[1], memory_budget=int(float(sys.argv[2]) * 1e9), progress=False, log=lambda _: None)
t0 = time.perf_counter()
n = 0
for xb, yb in data.batches(ds.train.images, ds.train.labels, int(sys.argv[3]), shuffle=True,
                           rng=np.random.default_rng(0)):
    n += len(yb)
print(n, time.perf_counter() - t0)
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--gigabytes", type=float, default=16.0, help="uncompressed size of the synthetic images")
    p.add_argument("--dir", default="/tmp/nnscratch-stream", help="where the file and the unpacked cache go")
    p.add_argument("--budget", type=float, default=2.0, help="--memory-budget in GB (the set is far above it)")
    p.add_argument("--arch", default="cnn", choices=["cnn", "resnet", "mlnn"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--train-images", type=int, default=1024, help="images of the timed training epoch")
    p.add_argument("--keep", action="store_true", help="keep the unpacked cache (default: removed at the end)")
    args = p.parse_args(argv)
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"synthmnist_{SIZE}.npz"
    counts = write_set(path, args.gigabytes)
    cache = folder / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), NNSCRATCH_CACHE_DIR=str(cache))
    py = sys.executable
    rows = []

    seconds, peak, out = measured([py, "-c", UNPACK, str(path), str(args.budget)], env)
    unpacked = Path(out.strip())
    size = sum(f.stat().st_size for f in unpacked.glob("*.npy"))
    rows.append(("unpack (MD5 check, inflate, write)", f"{seconds:.0f} s", f"{size / 1e9 / seconds * 1e3:.0f} MB/s",
                 f"{peak:.2f}"))

    evict(unpacked)
    seconds, peak, out = measured([py, "-c", READ, str(path), str(args.budget), str(args.batch_size)], env)
    n, read_s = out.split()
    read_rate = int(n) / float(read_s)
    rows.append((f"read an epoch, shuffled ({int(n):,} images, batch {args.batch_size})", f"{float(read_s):.0f} s",
                 f"{read_rate:,.0f} images/s", f"{peak:.2f}"))

    evict(unpacked)
    run = folder / "run"
    shutil.rmtree(run, ignore_errors=True)
    cmd = [py, "-m", "nnscratch.train", "--dataset", "synthmnist", "--size", str(SIZE), "--data-dir", str(folder),
           "--arch", args.arch, "--epochs", "1", "--batch-size", str(args.batch_size), "--limit-train",
           str(args.train_images), "--memory-budget", str(args.budget), "--out", str(run), "--quiet"]
    seconds, peak, _ = measured(cmd, env)
    epoch = json.loads((run / "history.json").read_text())[0]
    train_rate = args.train_images / epoch["seconds"]
    rows.append((f"train the {args.arch.upper()} one epoch of {args.train_images:,} images (+ val/test "
                 f"{counts['val']:,}/{counts['test']:,})", f"{epoch['seconds']:.0f} s ({seconds:.0f} s in all)",
                 f"{train_rate:,.1f} images/s", f"{peak:.2f}"))

    print(f"\nsynthmnist_{SIZE}: {sum(counts.values()):,} images of 3 x {SIZE} x {SIZE} "
          f"({args.gigabytes:g} GB uint8, {4 * args.gigabytes:g} GB as float32), budget {args.budget:g} GB\n")
    print("| step | time | rate | peak resident GB |\n| --- | ---: | ---: | ---: |")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"\nfull training epoch at this pace: {counts['train'] / train_rate / 60:.0f} min of compute, "
          f"{counts['train'] / read_rate / 60:.1f} min of reading in the background thread "
          f"({train_rate / read_rate:.1%} of the epoch)")
    if not args.keep:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
