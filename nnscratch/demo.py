"""A one-minute demo: a small CNN learns to tell line orientations apart.

    python -m nnscratch.demo [--epochs 5] [--seed 0]

Synthetic 1 x 12 x 12 images hold one noisy line, horizontal, vertical or
diagonal; a Conv2d -> ReLU -> MaxPool2d -> Linear network learns the three
classes with Adam. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from tqdm import tqdm

import nnscratch as ns
from nnscratch.progress import bars

SIZE, CLASSES = 12, ("horizontal", "vertical", "diagonal")


def make_lines(n: int, rng: np.random.Generator):
    """n noisy images (n, 1, 12, 12) float32 and their labels (n,) in {0, 1, 2}."""
    y = rng.integers(0, len(CLASSES), n)
    x = rng.normal(0, 0.3, (n, 1, SIZE, SIZE)).astype(np.float32)
    pos = rng.integers(2, SIZE - 2, n)
    idx = np.arange(SIZE)
    for i in range(n):
        if y[i] == 0:
            x[i, 0, pos[i], :] += 1.0
        elif y[i] == 1:
            x[i, 0, :, pos[i]] += 1.0
        else:
            x[i, 0, idx, (idx + pos[i]) % SIZE] += 1.0
    return x, y


def build(seed: int):
    rng = np.random.default_rng(seed)
    return ns.Sequential(ns.Conv2d(1, 8, 3, padding=1, rng=rng), ns.ReLU(), ns.MaxPool2d(2),
                         ns.Flatten(), ns.Linear(8 * 6 * 6, len(CLASSES), rng=rng))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5, help="passes over the 2,000 training images")
    parser.add_argument("--seed", type=int, default=0, help="seed for the data, the weights and the shuffling")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    rng = np.random.default_rng(args.seed)
    x_train, y_train = make_lines(2000, rng)
    x_test, y_test = make_lines(500, rng)
    model, loss_fn = build(args.seed), ns.CrossEntropyLoss()
    opt = ns.Adam(model.parameters(), lr=1e-2)
    print(f"{model}\n{model.num_parameters()} parameters, CPU kernels: {ns.kernels.cpu_kernels()}")
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(x_train))
        bar = tqdm(range(0, len(order), 64), desc=f"epoch {epoch}/{args.epochs}", leave=False, disable=not bars())
        for s in bar:
            b = order[s:s + 64]
            loss = loss_fn(model(x_train[b]), y_train[b])
            model.backward(loss_fn.backward())
            opt.step()
            opt.zero_grad()
            bar.set_postfix(loss=f"{loss:.3f}")
        acc = float((model(x_test).argmax(axis=1) == y_test).mean())
        print(f"epoch {epoch}: last batch loss {loss:.3f}, test accuracy {acc:.3f}")
    print(f"trained in {time.perf_counter() - start:.1f} s; chance is {1 / len(CLASSES):.3f}")
    return acc


if __name__ == "__main__":
    main()
