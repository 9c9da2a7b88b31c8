"""The paper's two networks (Cabral Pinto & Silva, Algorithms 1 and 2), and a small ResNet beyond it.

All default to BloodMNIST (3 x 28 x 28 RGB images, 8 classes) and take
``in_channels``, ``image_size`` and ``num_classes`` so other MedMNIST sets fit.
"""
from __future__ import annotations

import numpy as np

from .checks import check_positive_int
from .kernels.reference import out_size
from .layers import (AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Residual,
                     Sequential)
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


def basic_block(in_channels: int, out_channels: int, stride: int = 1, dtype=np.float32, rng=None) -> Sequential:
    """A ResNet basic block (He et al., 2016) as data: Residual(body, shortcut) then ReLU, where

        body = Conv2d(3x3, stride) - BatchNorm2d - ReLU - Conv2d(3x3) - BatchNorm2d
        shortcut = the identity, or Conv2d(1x1, stride) - BatchNorm2d when the shape changes.

    x: (B, in_channels, H, W) -> (B, out_channels, ceil(H / stride), ceil(W / stride)). The
    convolutions have no bias: the batch norm after each adds its own.
    """
    rng = resolve_rng(rng)
    body = Sequential(Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False, dtype=dtype, rng=rng),
                      BatchNorm2d(out_channels, dtype=dtype), ReLU(),
                      Conv2d(out_channels, out_channels, 3, padding=1, bias=False, dtype=dtype, rng=rng),
                      BatchNorm2d(out_channels, dtype=dtype))
    shortcut = None
    if stride != 1 or in_channels != out_channels:
        shortcut = Sequential(Conv2d(in_channels, out_channels, 1, stride=stride, bias=False, dtype=dtype, rng=rng),
                              BatchNorm2d(out_channels, dtype=dtype))
    return Sequential(Residual(body, shortcut), ReLU())


RESNET_WIDTHS = (32, 64, 128)
RESNET_BLOCKS = (1, 1, 1)


def resnet(in_channels: int = 3, image_size: int = 28, num_classes: int = 8, widths=RESNET_WIDTHS,
           blocks=RESNET_BLOCKS, dropout: float = 0.0, dtype=np.float32, rng=None) -> Sequential:
    """A small residual network for MedMNIST's 28-pixel images (and larger ones).

    stem: Conv2d(3x3, ``widths[0]``) - BatchNorm2d - ReLU, at full resolution;
    stage i: ``blocks[i]`` basic blocks of ``widths[i]`` channels, the first of stages 1, 2, ...
    with stride 2 (28 -> 14 -> 7 pixels for three stages);
    head: AdaptiveAvgPool2d(1) - Flatten - Dropout(``dropout``, when > 0) - Linear(num_classes).

    x: (B, in_channels, S, S) -> logits (B, num_classes). The defaults, widths (32, 64, 128) and
    one block per stage, have 308,392 parameters; ResNet-18 is widths (64, 128, 256, 512) and
    blocks (2, 2, 2, 2).
    """
    check_positive_int("models.resnet", in_channels=in_channels, image_size=image_size, num_classes=num_classes)
    widths, blocks = tuple(widths), tuple(blocks)
    if not widths or len(widths) != len(blocks):
        raise ValueError(f"models.resnet: widths and blocks must have one entry per stage, got {widths} and {blocks}")
    check_positive_int("models.resnet", **{f"widths[{i}]": w for i, w in enumerate(widths)},
                       **{f"blocks[{i}]": b for i, b in enumerate(blocks)})
    if not 0 <= dropout < 1:
        raise ValueError(f"models.resnet: dropout must lie in [0, 1), got {dropout!r}")
    if image_size < 2 ** (len(widths) - 1):
        raise ValueError(f"models.resnet: image_size {image_size} is too small for {len(widths) - 1} "
                         f"stride-2 stages")
    rng = resolve_rng(rng)
    layers = [Conv2d(in_channels, widths[0], 3, padding=1, bias=False, dtype=dtype, rng=rng),
              BatchNorm2d(widths[0], dtype=dtype), ReLU()]
    ch = widths[0]
    for stage, (width, count) in enumerate(zip(widths, blocks)):
        for b in range(count):
            stride = 2 if stage > 0 and b == 0 else 1
            layers.append(basic_block(ch, width, stride, dtype=dtype, rng=rng))
            ch = width
    layers += [AdaptiveAvgPool2d(1), Flatten()]
    if dropout > 0:
        layers.append(Dropout(dropout))
    layers.append(Linear(ch, num_classes, dtype=dtype, rng=rng))
    return Sequential(*layers)


ARCHS = ("mlnn", "cnn", "resnet")


def build(arch: str, in_channels: int, image_size: int, num_classes: int, hidden_size: int | None = None,
          hidden_layers: int = 1, dtype=np.float32, rng=None, widths=None, blocks=None,
          dropout: float = 0.0) -> Sequential:
    """A network by name ("mlnn", "cnn" or "resnet"), sized for a dataset; hidden_size and hidden_layers
    size the MLNN, widths, blocks and dropout the ResNet (None: its defaults)."""
    if arch == "mlnn":
        return mlnn(hidden_size, hidden_layers, in_channels, image_size, num_classes, dtype=dtype, rng=rng)
    if arch == "cnn":
        return cnn(in_channels, image_size, num_classes, dtype=dtype, rng=rng)
    if arch == "resnet":
        return resnet(in_channels, image_size, num_classes, widths or RESNET_WIDTHS, blocks or RESNET_BLOCKS,
                      dropout, dtype=dtype, rng=rng)
    raise ValueError(f"unknown architecture {arch!r}: expected one of {', '.join(ARCHS)}")
