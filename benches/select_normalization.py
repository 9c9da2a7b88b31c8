"""Choose the input normalisation on the validation split: MedMNIST's [-1, 1] or per-channel standardisation.

    python benches/select_normalization.py [--configs mlnn-test1] [--seeds 0 1 2] [--data-dir DIR]

Trains each configuration for the paper's 15 epochs twice per seed: on the images as nnscratch loads
them ((x / 255 - 0.5) / 0.5, MedMNIST's own transform) and on the same images standardised per channel
with the training split's mean and standard deviation. Prints the mean best validation accuracy (the
number the runs select their weights by); test metrics are neither computed for the choice nor shown.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile

import numpy as np

from nnscratch.data import load
from nnscratch.training import PRESETS, TrainConfig, run


def standardized(ds):
    """The dataset with every split standardised per channel by the training split's statistics."""
    train = ds.train.images
    mean = train.mean(axis=(0, 2, 3), keepdims=True)
    std = train.std(axis=(0, 2, 3), keepdims=True)
    splits = {s: dataclasses.replace(getattr(ds, s), images=((getattr(ds, s).images - mean) / std).astype(np.float32))
              for s in ("train", "val", "test")}
    return dataclasses.replace(ds, **splits)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["mlnn-test1"], choices=list(PRESETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    ds = load("bloodmnist", args.data_dir)
    variants = {"[-1, 1]": ds, "standardised": standardized(ds)}
    print("| config | inputs | mean best val acc | per seed |")
    print("| --- | --- | ---: | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for c in args.configs:
            for name, data in variants.items():
                vals = []
                for s in args.seeds:
                    cfg = TrainConfig(**PRESETS[c], preset=c, seed=s, out=f"{tmp}/{c}-{len(vals)}-{name[0]}-{s}")
                    result = run(cfg, data, progress=False, log=lambda *a: None, figures=False)
                    vals.append(max(h["val_acc"] for h in result.history))
                print(f"| {c} | {name} | {statistics.mean(vals):.4f} | {', '.join(f'{v:.4f}' for v in vals)} |",
                      flush=True)


if __name__ == "__main__":
    main()
