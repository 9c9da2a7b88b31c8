"""What the checkpoints cost: their size, their write time, and their share of the training time.

    python benches/checkpoint_cost.py [--archs mlnn cnn] [--epochs 4] [--data-dir DIR]

Trains each architecture's Test1 preset on BloodMNIST for a few epochs (``training.run``, the code of
``python -m nnscratch.train``) with every ``checkpoint.save`` timed, and prints per architecture the
checkpoint's size, the median write time, how many epochs got one, and the writes' share of the
run's epoch time (the issue's bound: 2 %). The writer skips an epoch's checkpoint when writing it
would take more than 1 % of the time since the last one (``checkpoint.Writer``); the last
epoch always gets one.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from nnscratch import checkpoint, training
from nnscratch.data import load


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--archs", nargs="+", default=["mlnn", "cnn"], choices=["mlnn", "cnn", "resnet"])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    dataset = load("bloodmnist", args.data_dir, progress=False)
    rows = []
    real_save = checkpoint.save
    for arch in args.archs:
        writes = []

        def timed_save(*a, **k):
            t0 = time.perf_counter()
            real_save(*a, **k)
            writes.append(time.perf_counter() - t0)
        checkpoint.save = timed_save
        try:
            with tempfile.TemporaryDirectory() as tmp:
                preset = "resnet-bloodmnist" if arch == "resnet" else f"{arch}-test1"
                config = training.TrainConfig(**{**training.PRESETS[preset], "epochs": args.epochs}, preset=preset,
                                              out=str(Path(tmp) / "run"))
                result = training.run(config, dataset, progress=False, log=lambda *a: None, figures=False)
                size = (Path(tmp) / "run" / checkpoint.FILE).stat().st_size
        finally:
            checkpoint.save = real_save
        epoch_seconds = sum(h["seconds"] for h in result.history)
        rows.append((arch, size / 1e6, 1e3 * statistics.median(writes), len(writes), len(result.history),
                     statistics.median(h["seconds"] for h in result.history), 100 * sum(writes) / epoch_seconds))
    print("| arch | checkpoint MB | write ms (median) | checkpoints / epochs | s / epoch (median) | share of epoch time |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for arch, mb, ms, n, epochs, sec, share in rows:
        print(f"| {arch} | {mb:.1f} | {ms:.1f} | {n} / {epochs} | {sec:.2f} | {share:.2f} % |")


if __name__ == "__main__":
    main()
