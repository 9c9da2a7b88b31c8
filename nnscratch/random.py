"""Seeding: one call makes weight initialisation and training repeatable.

``manual_seed(0)`` replaces the package's default generator; every layer that is
built without an explicit ``rng`` draws its initial weights from it. Pass your
own ``numpy.random.Generator`` as ``rng=`` to keep a model's weights independent
of anything else that draws random numbers.
"""
from __future__ import annotations

import numpy as np

# The package's only mutable module state: the default generator, as in PyTorch's
# torch.manual_seed. It is replaced, never mutated from outside, by manual_seed().
_default = {"rng": np.random.default_rng()}


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed the default generator; returns it. Same seed, same weights, bit for bit."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"manual_seed: expected a non-negative integer seed, got {seed!r}")
    _default["rng"] = np.random.default_rng(int(seed))
    return _default["rng"]


def default_rng() -> np.random.Generator:
    """The generator used where no ``rng`` is given."""
    return _default["rng"]


def resolve_rng(rng=None) -> np.random.Generator:
    """``rng`` itself, a new generator seeded by an int, or the default generator."""
    if rng is None:
        return default_rng()
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng: expected None, an int seed or a numpy.random.Generator, got {type(rng).__name__}")
