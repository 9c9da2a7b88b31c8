"""Choose the training batch size on the validation split (the paper does not state one).

    python benches/select_batch_size.py [--sizes 32 64 128] [--configs mlnn-test1 cnn-test1] [--seeds 0 1]

Trains each configuration at each batch size for the paper's 15 epochs and prints the best
validation accuracy (the number the runs select their weights by), the epoch it came at, and
the training seconds per epoch. Test metrics are neither computed for the choice nor shown.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile

from nnscratch.data import load
from nnscratch.training import PRESETS, TrainConfig, run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128], help="batch sizes to compare")
    p.add_argument("--configs", nargs="+", default=["mlnn-test1", "cnn-test1"], choices=list(PRESETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds per cell (the mean is shown)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    dataset = load("bloodmnist", args.data_dir)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for c in args.configs:
            for b in args.sizes:
                vals, epochs, secs = [], [], []
                for s in args.seeds:
                    cfg = TrainConfig(**PRESETS[c], preset=c, batch_size=b, seed=s, epochs=args.epochs,
                                      out=f"{tmp}/{c}-{b}-{s}")
                    result = run(cfg, dataset, progress=False, log=lambda *a: None, figures=False)
                    best = max(result.history, key=lambda h: h["val_acc"])
                    vals.append(best["val_acc"])
                    epochs.append(best["epoch"])
                    secs.append(result.metrics["timing"]["train_seconds_per_epoch"])
                rows.append((c, b, statistics.mean(vals), vals, epochs, statistics.mean(secs)))
                print(f"{c} batch {b}: best val acc {vals} at epochs {epochs}", flush=True)
    print(f"\nbest validation accuracy over {args.epochs} epochs, seeds {args.seeds}\n")
    print("| config | batch | mean best val acc | per seed | best epoch | train s / epoch |")
    print("| --- | ---: | ---: | --- | --- | ---: |")
    for c, b, mean, vals, epochs, sec in rows:
        print(f"| {c} | {b} | {mean:.4f} | {', '.join(f'{v:.4f}' for v in vals)} | "
              f"{', '.join(map(str, epochs))} | {sec:.2f} |")


if __name__ == "__main__":
    main()
