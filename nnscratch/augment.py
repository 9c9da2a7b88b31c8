"""Data augmentation on batches of images: random flips, 90-degree turns and small translations.

    augment = ns.Augment(flips=True, rotations=True, translate=2)
    x_aug = augment(x, rng)            # x: (B, C, H, W), any C; a new array, x untouched

Blood cells (and most microscope images) have no up, down, left or right, so every flip and
quarter turn of an image is another valid image of its class: training on them teaches the
network that symmetry instead of asking it to learn it from the data. Each image of a batch
gets its own transform, drawn from ``rng`` (a ``numpy.random.Generator``), so a seed gives
the same augmented batches on every run and device.

Flips and quarter turns together are the 8 symmetries of the square (the dihedral group):
``dihedral(x, k)`` applies symmetry k, and evaluation can average a model's predictions over
all 8 (test-time augmentation, ``training.predict(..., tta=True)``).
"""
from __future__ import annotations

import numpy as np

from .backend import get_array_module

SYMMETRIES = 8


def dihedral(images, k: int):
    """images: (B, C, H, W) -> symmetry k of the square applied to each: k % 4 quarter turns
    (counter-clockwise), then, for k >= 4, a left-right flip. Odd turns need H == W."""
    xp = get_array_module(images)
    out = xp.rot90(images, k % 4, axes=(2, 3))
    return out[..., ::-1] if k >= 4 else out


class Augment:
    """A random transform per image: with ``flips`` a left-right and an up-down flip, each with
    probability 1/2; with ``rotations`` a quarter turn by 0, 90, 180 or 270 degrees, each with
    probability 1/4 (flips and turns together: each of the 8 symmetries with probability 1/8);
    with ``translate`` = t > 0 a shift by dy, dx drawn uniformly from -t..t pixels, the pixels
    shifted in being zeros (mid-grey after ``data.normalize``), as PyTorch's
    ``RandomCrop(size, padding=t)`` gives on normalised images.
    """

    def __init__(self, flips: bool = True, rotations: bool = True, translate: int = 0):
        if isinstance(translate, bool) or not isinstance(translate, (int, np.integer)) or translate < 0:
            raise ValueError(f"Augment: translate must be a non-negative int (pixels), got {translate!r}")
        self.flips, self.rotations, self.translate = bool(flips), bool(rotations), int(translate)

    def __repr__(self):
        return f"Augment(flips={self.flips}, rotations={self.rotations}, translate={self.translate})"

    @property
    def active(self) -> bool:
        return self.flips or self.rotations or self.translate > 0

    def __call__(self, images, rng: np.random.Generator):
        """images: (B, C, H, W) -> a new (B, C, H, W) array of the same dtype and device."""
        if images.ndim != 4:
            raise ValueError(f"Augment: expected images of shape (B, C, H, W), got {tuple(images.shape)}")
        if self.rotations and images.shape[2] != images.shape[3]:
            raise ValueError(f"Augment: quarter turns need square images, got {images.shape[2]}x{images.shape[3]}; "
                             f"use rotations=False")
        xp = get_array_module(images)
        B = images.shape[0]
        turns = rng.integers(0, 4, B) if self.rotations else np.zeros(B, dtype=np.int64)
        lr = rng.integers(0, 2, B) if self.flips else np.zeros(B, dtype=np.int64)
        ud = rng.integers(0, 2, B) if self.flips else np.zeros(B, dtype=np.int64)
        # an up-down flip is a half turn then a left-right flip, so every image's transform is one
        # of the 8 symmetries: k = (turns + 2 ud) % 4 + 4 (lr xor ud)
        codes = (turns + 2 * ud) % 4 + 4 * (lr ^ ud)
        out = xp.empty_like(images)
        for k in np.unique(codes):
            idx = np.flatnonzero(codes == k)
            sel = xp.asarray(idx)
            out[sel] = dihedral(images[sel], int(k))
        if self.translate:
            out = self._shift(out, rng, xp)
        return out

    def _shift(self, images, rng, xp):
        """Each image moved by its own (dy, dx), zeros shifted in: a crop of the zero-padded image."""
        t, (B, _, H, W) = self.translate, images.shape
        padded = xp.pad(images, ((0, 0), (0, 0), (t, t), (t, t)))
        offsets = rng.integers(0, 2 * t + 1, (B, 2))            # the crop's corner in the padded image
        out = xp.empty_like(images)
        for dy, dx in np.unique(offsets, axis=0):
            sel = xp.asarray(np.flatnonzero((offsets[:, 0] == dy) & (offsets[:, 1] == dx)))
            out[sel] = padded[sel, :, dy:dy + H, dx:dx + W]
        return out
