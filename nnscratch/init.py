"""Weight initialisation: He (Kaiming) for ReLU networks, zeros for biases.

He et al. (2015) keep the variance of activations constant through ReLU layers
by drawing weights with variance 2 / fan_in, where fan_in is the number of
inputs that feed one output unit: ``in_features`` for a Linear weight (out, in),
``in_channels * kh * kw`` for a Conv2d weight (out, in, kh, kw).
Weights are drawn in float64 on the CPU, then cast, so a seed gives the same
values whatever the target dtype.
"""
from __future__ import annotations

import math

import numpy as np

from .random import resolve_rng


def fan_in(shape: tuple) -> int:
    """Inputs per output unit for a weight of ``shape`` (out, in, *kernel)."""
    if len(shape) < 2:
        raise ValueError(f"fan_in needs a weight of at least 2 dimensions, got shape {shape}")
    return int(np.prod(shape[1:]))


def he_normal(shape: tuple, dtype=np.float32, rng=None) -> np.ndarray:
    """N(0, 2 / fan_in) samples of ``shape``; PyTorch's ``kaiming_normal_(nonlinearity='relu')``."""
    std = math.sqrt(2.0 / fan_in(shape))
    return (resolve_rng(rng).standard_normal(shape) * std).astype(dtype)


def he_uniform(shape: tuple, dtype=np.float32, rng=None) -> np.ndarray:
    """U(-b, b) with b = sqrt(6 / fan_in): the same variance as :func:`he_normal`."""
    bound = math.sqrt(6.0 / fan_in(shape))
    return resolve_rng(rng).uniform(-bound, bound, size=shape).astype(dtype)


def zeros(shape: tuple, dtype=np.float32) -> np.ndarray:
    """An array of zeros (biases start at zero)."""
    return np.zeros(shape, dtype=dtype)
