"""The ResNet and its training recipe in PyTorch: the outside reference for nnscratch's ResNet.

    python benches/torch_resnet_reference.py [--recipe base] [--seeds 0] [--epochs N]

The network of ``ns.models.resnet()`` (layer for layer, ``benches/speed.py``'s ``torch_resnet``,
PyTorch's own initialisation), the recipe of ``benches/select_resnet_recipe.py`` (AdamW,
OneCycleLR per batch, label smoothing, batch 128), the same data pipeline: nnscratch.data's
normalised arrays, the same shuffling and the same augmentation (``ns.Augment``, on the NumPy
batch before it goes to PyTorch), the epoch chosen by validation accuracy, test metrics by
nnscratch.metrics, with and without test-time augmentation. Prints per seed the seconds per
training epoch and the test figures. PyTorch is used only here and in tests.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import nnscratch as ns
from nnscratch.augment import SYMMETRIES, dihedral
from nnscratch.data import batches, load
from nnscratch.metrics import classification_report

sys.path.insert(0, str(Path(__file__).resolve().parent))
from select_resnet_recipe import COMMON, RECIPES  # noqa: E402
from speed import torch_resnet  # noqa: E402


def probabilities(net, images, tta=False, batch=256):
    net.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(images), batch):
            xb = images[s:s + batch]
            views = [dihedral(xb, k) for k in range(SYMMETRIES)] if tta else [xb]
            p = sum(torch.softmax(net(torch.from_numpy(np.ascontiguousarray(v))), 1) for v in views) / len(views)
            out.append(p.numpy())
    net.train()
    return np.concatenate(out)


def train_one(recipe, ds, seed, epochs):
    r = {**COMMON, **RECIPES[recipe]}
    torch.manual_seed(seed)
    net = torch_resnet(r.get("widths", (32, 64, 128)), r.get("blocks", (1, 1, 1)), ds.num_classes)
    opt = torch.optim.AdamW(net.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
    steps = -(-len(ds.train) // r["batch_size"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=r["lr"], total_steps=epochs * steps)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=r["label_smoothing"])
    augment = ns.Augment(flips=r["augment"] != "none", rotations=r["augment"] == "dihedral",
                         translate=r.get("translate", 0))
    shuffle, aug_rng = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 2])
    best, best_state, seconds = -1.0, None, []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for xb, yb in batches(ds.train.images, ds.train.labels, r["batch_size"], shuffle=True, rng=shuffle):
            if augment.active:
                xb = augment(xb, aug_rng)
            opt.zero_grad()
            loss_fn(net(torch.from_numpy(xb)), torch.from_numpy(yb)).backward()
            opt.step()
            sched.step()
        seconds.append(time.perf_counter() - t0)
        val = float((probabilities(net, ds.val.images).argmax(1) == ds.val.labels).mean())
        if val > best:
            best, best_state = val, {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    plain = classification_report(ds.test.labels, probabilities(net, ds.test.images), ds.label_names)
    tta = classification_report(ds.test.labels, probabilities(net, ds.test.images, tta=True), ds.label_names)
    return best, plain, tta, statistics.median(seconds)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--recipe", choices=list(RECIPES), default="base")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the recipe's own, else 20)")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    args.epochs = args.epochs or RECIPES[args.recipe].get("epochs", 20)
    ds = load("bloodmnist", args.data_dir, progress=False)
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads; recipe {args.recipe}: "
          f"{ {**COMMON, **RECIPES[args.recipe]} }, {args.epochs} epochs\n")
    print("| seed | best val acc | test acc | test AUC | test acc with TTA | test AUC with TTA | s / training epoch |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for seed in args.seeds:
        best, plain, tta, sec = train_one(args.recipe, ds, seed, args.epochs)
        print(f"| {seed} | {best:.4f} | {plain['accuracy']:.4f} | {plain['auc']:.4f} | {tta['accuracy']:.4f} | "
              f"{tta['auc']:.4f} | {sec:.1f} |", flush=True)


if __name__ == "__main__":
    main()
