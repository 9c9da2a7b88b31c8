"""nnscratch and PyTorch from the same weights on the same batches: do they train the same?

    python benches/same_start.py [--arch mlnn] [--loss mse] [--seed 0] [--steps 187] [--every 20]

Builds the paper's network with nnscratch (He-normal weights from ``--seed``), copies the weights into
the same network in PyTorch, and trains both with Adam (lr 0.001) on the same BloodMNIST batches (the
shuffling order of ``python -m nnscratch.train``). Prints both losses and the mean spread between an
image's largest and smallest logit, as each step computes them before its update, for the first four
steps and every ``--every`` steps. Equal columns mean that a surprising run (e.g. an MSE run stuck on
one class) comes from the setup and its random draw, not from the engine.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

import nnscratch as ns
from nnscratch.data import load


def torch_twin(model: ns.Sequential) -> nn.Sequential:
    """The PyTorch network with the layers and weights of an nnscratch Sequential."""
    layers = []
    for layer in model:
        if isinstance(layer, ns.Linear):
            layers.append(nn.Linear(layer.in_features, layer.out_features))
        elif isinstance(layer, ns.Conv2d):
            layers.append(nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                                    stride=layer.stride, padding=layer.padding))
        elif isinstance(layer, ns.MaxPool2d):
            layers.append(nn.MaxPool2d(layer.kernel_size, layer.stride))
        elif isinstance(layer, ns.ReLU):
            layers.append(nn.ReLU())
        else:
            layers.append(nn.Flatten())
    net = nn.Sequential(*layers)
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()})
    return net


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", choices=["mlnn", "cnn"], default="mlnn")
    p.add_argument("--loss", choices=["ce", "mse", "mse-logits"], default="mse",
                   help="as python -m nnscratch.train --loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=187, help="training steps (187 = one epoch at batch 64)")
    p.add_argument("--every", type=int, default=20, help="print every this many steps")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)

    ds = load("bloodmnist", args.data_dir, progress=False)
    ns.manual_seed(args.seed)
    model = getattr(ns.models, args.arch)()
    net = torch_twin(model)
    opt, topt = ns.Adam(model.parameters(), lr=1e-3), torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = {"ce": ns.CrossEntropyLoss(), "mse": ns.SoftmaxMSELoss(), "mse-logits": ns.MSELoss()}[args.loss]
    order = np.random.default_rng([args.seed, 1]).permutation(len(ds.train.labels))
    print("| step | nnscratch loss | PyTorch loss | nnscratch logit spread | PyTorch logit spread |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for step in range(args.steps):
        idx = order[(step * 64) % len(order):][:64]
        x, y = ds.train.images[idx], ds.train.labels[idx]
        onehot = ns.one_hot(y, ds.num_classes)
        z = model(x)
        loss = loss_fn(z, onehot if args.loss == "mse-logits" else y)
        model.backward(loss_fn.backward(), need_input_grad=False)
        opt.step()
        opt.zero_grad()

        tz = net(torch.from_numpy(x))
        if args.loss == "ce":
            tloss = nn.functional.cross_entropy(tz, torch.from_numpy(y))
        else:
            out = torch.softmax(tz, 1) if args.loss == "mse" else tz
            tloss = nn.functional.mse_loss(out, torch.from_numpy(onehot))
        topt.zero_grad()
        tloss.backward()
        topt.step()
        if step < 4 or step % args.every == 0 or step == args.steps - 1:
            spread, tspread = np.ptp(z, axis=1).mean(), np.ptp(tz.detach().numpy(), axis=1).mean()
            print(f"| {step} | {loss:.4f} | {tloss.item():.4f} | {spread:.1f} | {tspread:.1f} |", flush=True)


if __name__ == "__main__":
    main()
