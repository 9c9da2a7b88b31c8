"""The paper's two networks (Cabral Pinto & Silva, Algorithms 1 and 2).

Both default to BloodMNIST (3 x 28 x 28 RGB images, 8 classes) and take
``in_channels``, ``image_size`` and ``num_classes`` so other MedMNIST sets fit.
"""
from __future__ import annotations

import numpy as np

from .checks import check_positive_int
from .kernels.reference import out_size
from .layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential
from .random import resolve_rng


def mlnn(hidden_size: int | None = None, hidden_layers: int = 1, in_channels: int = 3, image_size: int = 28,
         num_classes: int = 8, dtype=np.float32, rng=None) -> Sequential:
    """The multi-layer network: Flatten, then ``hidden_layers`` x (Linear + ReLU), then Linear.

    x: (B, in_channels, image_size, image_size) -> logits (B, num_classes).
    ``hidden_size`` defaults to the paper's (n_input + n_classes) / 2, which is
    (2352 + 8) / 2 = 1180 for BloodMNIST (2,785,988 parameters).
    """
    check_positive_int("models.mlnn", hidden_layers=hidden_layers, in_channels=in_channels, image_size=image_size,
                 num_classes=num_classes)
    n_input = in_channels * image_size * image_size
    if hidden_size is None:
        hidden_size = (n_input + num_classes) // 2
    check_positive_int("models.mlnn", hidden_size=hidden_size)
    rng = resolve_rng(rng)
    layers, width = [Flatten()], n_input
    for _ in range(hidden_layers):
        layers += [Linear(width, hidden_size, dtype=dtype, rng=rng), ReLU()]
        width = hidden_size
    layers.append(Linear(width, num_classes, dtype=dtype, rng=rng))
    return Sequential(*layers)


CNN_CHANNELS = (32, 64, 128)
CNN_HIDDEN = (256, 128)


def cnn(in_channels: int = 3, image_size: int = 28, num_classes: int = 8, dtype=np.float32,
        rng=None) -> Sequential:
    """The convolutional network: three blocks of Conv2d(3x3, padding 1) + ReLU + MaxPool2d(2),
    channels 32 -> 64 -> 128, then Linear 256 -> 128 -> ``num_classes``.

    x: (B, in_channels, S, S) -> logits (B, num_classes). For S = 28 the maps go
    28 -> 14 -> 7 -> 3, the flattened features are 128 * 3 * 3 = 1152, and the
    network has 422,344 parameters.
    """
    check_positive_int("models.cnn", in_channels=in_channels, image_size=image_size, num_classes=num_classes)
    side = image_size
    for _ in CNN_CHANNELS:
        side = out_size(side, 2, 2)
        if side < 1:
            raise ValueError(f"models.cnn: image_size {image_size} is too small for three 2x2 poolings "
                             f"(it needs at least 8 pixels)")
    rng = resolve_rng(rng)
    layers, ch = [], in_channels
    for out_ch in CNN_CHANNELS:
        layers += [Conv2d(ch, out_ch, 3, padding=1, dtype=dtype, rng=rng), ReLU(), MaxPool2d(2)]
        ch = out_ch
    layers.append(Flatten())
    width = ch * side * side
    for hidden in CNN_HIDDEN:
        layers += [Linear(width, hidden, dtype=dtype, rng=rng), ReLU()]
        width = hidden
    layers.append(Linear(width, num_classes, dtype=dtype, rng=rng))
    return Sequential(*layers)


ARCHS = ("mlnn", "cnn")


def build(arch: str, in_channels: int, image_size: int, num_classes: int, hidden_size: int | None = None,
          hidden_layers: int = 1, dtype=np.float32, rng=None) -> Sequential:
    """One of the paper's networks by name ("mlnn" or "cnn"), sized for a dataset."""
    if arch == "mlnn":
        return mlnn(hidden_size, hidden_layers, in_channels, image_size, num_classes, dtype=dtype, rng=rng)
    if arch == "cnn":
        return cnn(in_channels, image_size, num_classes, dtype=dtype, rng=rng)
    raise ValueError(f"unknown architecture {arch!r}: expected one of {', '.join(ARCHS)}")
