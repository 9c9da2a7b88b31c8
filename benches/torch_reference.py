"""The paper's configurations trained with PyTorch, as an outside reference for nnscratch's accuracy.

    python benches/torch_reference.py [--configs mlnn-test1 cnn-test1] [--seeds 0] [--batch-size 64] [--loss mse]

Same data (nnscratch.data: MedMNIST normalisation to [-1, 1]), same networks, He-normal weights
and zero biases, same optimizers and learning rates, 15 epochs, the same selection of the epoch
by validation accuracy. Prints test accuracy and macro F1 (nnscratch.metrics) per configuration.
PyTorch is used only here and in tests, never by nnscratch itself.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn

from nnscratch.data import load
from nnscratch.metrics import classification_report
from nnscratch.training import BATCH_SIZES, PRESETS


def build(arch, channels=3, size=28, classes=8):
    if arch == "mlnn":
        n = channels * size * size
        net = nn.Sequential(nn.Flatten(), nn.Linear(n, (n + classes) // 2), nn.ReLU(), nn.Linear((n + classes) // 2, classes))
    else:
        net = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(128 * (size // 8) ** 2, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, classes))
    for m in net.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return net


def train_one(preset, ds, seed, batch_size, epochs, loss_override=None):
    cfg = PRESETS[preset]
    torch.manual_seed(seed)
    net = build(cfg["arch"], ds.channels, ds.image_size, ds.num_classes)
    opt = (torch.optim.SGD(net.parameters(), lr=cfg["lr"], momentum=cfg.get("momentum", 0.9))
           if cfg["optimizer"] == "sgd" else torch.optim.Adam(net.parameters(), lr=cfg["lr"]))
    loss = loss_override or cfg["loss"]
    mse = loss != "ce"
    loss_fn = nn.MSELoss() if mse else nn.CrossEntropyLoss()
    x, y = torch.from_numpy(ds.train.images), torch.from_numpy(ds.train.labels)
    rng = np.random.default_rng([seed, 1])
    best, best_state, t_train = -1.0, None, 0.0
    for _ in range(epochs):
        t0 = time.perf_counter()
        net.train()
        order = torch.from_numpy(rng.permutation(len(y)))
        for s in range(0, len(y), batch_size):
            idx = order[s:s + batch_size]
            out = net(x[idx])
            if loss == "mse":                       # nnscratch's SoftmaxMSELoss: squared error after softmax
                out = torch.softmax(out, 1)
            target = nn.functional.one_hot(y[idx], ds.num_classes).float() if mse else y[idx]
            opt.zero_grad()
            loss_fn(out, target).backward()
            opt.step()
        t_train += time.perf_counter() - t0
        val = predict(net, ds.val.images).argmax(1)
        acc = float((val == ds.val.labels).mean())
        if acc > best:
            best, best_state = acc, {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    report = classification_report(ds.test.labels, predict(net, ds.test.images), ds.label_names)
    return report["accuracy"], report["macro"]["f1"], best, t_train / epochs


@torch.no_grad()
def predict(net, images):
    net.eval()
    return torch.cat([torch.softmax(net(torch.from_numpy(images[s:s + 256])), 1)
                      for s in range(0, len(images), 256)]).numpy()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["mlnn-test1", "cnn-test1"], choices=list(PRESETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per step (default: each architecture's, as nnscratch's presets)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--loss", choices=["ce", "mse", "mse-logits"], default=None,
                   help="override the presets' loss (mse: squared error after the softmax, as nnscratch's "
                        "SoftmaxMSELoss; mse-logits: on the raw logits); default: each preset's own")
    args = p.parse_args(argv)
    ds = load("bloodmnist", args.data_dir)
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size or BATCH_SIZES}, "
          f"{args.epochs} epochs, seeds {args.seeds}\n")
    print("| config | test accuracy | macro F1 | best val acc | train s / epoch |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for c in args.configs:
        batch = args.batch_size or BATCH_SIZES[PRESETS[c]["arch"]]
        rows = [train_one(c, ds, s, batch, args.epochs, args.loss) for s in args.seeds]
        cols = list(zip(*rows))
        fmt = [", ".join(f"{v:.4f}" for v in col) for col in cols[:3]]
        name = c if args.loss is None else f"{c} (--loss {args.loss})"
        print(f"| {name} | {fmt[0]} | {fmt[1]} | {fmt[2]} | {statistics.mean(cols[3]):.2f} |", flush=True)


if __name__ == "__main__":
    main()
