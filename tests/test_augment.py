"""Augmentation: each image gets one of the square's symmetries (and a shift), seeded and repeatable."""
import numpy as np
import pytest

import nnscratch as ns
from nnscratch.augment import SYMMETRIES, dihedral


def by_hand(images, seed, flips=True, rotations=True):
    """Image by image, in the words of the class: turn, then flip up-down, then flip left-right."""
    rng = np.random.default_rng(seed)
    B = len(images)
    turns = rng.integers(0, 4, B) if rotations else np.zeros(B, int)
    lr = rng.integers(0, 2, B) if flips else np.zeros(B, int)
    ud = rng.integers(0, 2, B) if flips else np.zeros(B, int)
    out = []
    for img, t, a, b in zip(images, turns, lr, ud):
        img = np.rot90(img, t, axes=(1, 2))
        img = img[:, ::-1] if b else img
        out.append(img[:, :, ::-1] if a else img)
    return np.stack(out)


@pytest.mark.parametrize("flips, rotations", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("channels", [1, 3, 5])
def test_each_image_gets_its_own_symmetry_as_drawn(flips, rotations, channels):
    x = np.random.default_rng(0).standard_normal((40, channels, 6, 6)).astype(np.float32)
    y = ns.Augment(flips, rotations)(x, np.random.default_rng(7))
    np.testing.assert_array_equal(y, by_hand(x, 7, flips, rotations))
    assert y.dtype == x.dtype and y.flags.c_contiguous


def test_the_eight_symmetries_are_distinct_and_equally_likely():
    img = np.arange(9.0).reshape(1, 1, 3, 3)
    images = {dihedral(img, k).tobytes() for k in range(SYMMETRIES)}
    assert len(images) == 8
    x = np.repeat(img, 8000, axis=0)
    y = ns.Augment()(x, np.random.default_rng(1))
    counts = [sum(bool((y[i] == dihedral(img, k)[0]).all()) for i in range(len(y))) for k in range(8)]
    assert all(abs(c - 1000) < 120 for c in counts), counts      # binomial sd ~30


def test_translation_shifts_in_zeros_by_at_most_t_pixels():
    x = np.ones((200, 2, 8, 8), np.float32)
    y = ns.Augment(flips=False, rotations=False, translate=2)(x, np.random.default_rng(0))
    zero_rows = (y[:, 0] == 0).all(axis=2).sum(axis=1)        # rows shifted in, per image
    zero_cols = (y[:, 0] == 0).all(axis=1).sum(axis=1)
    assert set(zero_rows) == {0, 1, 2} and set(zero_cols) == {0, 1, 2}
    shifted = np.roll(np.arange(64.0).reshape(1, 1, 8, 8), 0)
    z = ns.Augment(False, False, 1)(shifted, np.random.default_rng(3))
    dy, dx = np.random.default_rng(3).integers(0, 3, (1, 2))[0] - 1      # the draw the class made
    expected = np.zeros((8, 8))
    src = shifted[0, 0]
    for i in range(8):
        for j in range(8):
            if 0 <= i + dy < 8 and 0 <= j + dx < 8:
                expected[i, j] = src[i + dy, j + dx]
    np.testing.assert_array_equal(z[0, 0], expected)


def test_the_same_seed_gives_the_same_batch_and_the_input_is_untouched():
    x = np.random.default_rng(0).standard_normal((16, 3, 8, 8))
    keep = x.copy()
    a = ns.Augment(translate=2)(x, np.random.default_rng(5))
    b = ns.Augment(translate=2)(x, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(x, keep)


def test_bad_arguments():
    with pytest.raises(ValueError, match="square images"):
        ns.Augment()(np.zeros((1, 1, 4, 5)), np.random.default_rng(0))
    ns.Augment(rotations=False)(np.zeros((1, 1, 4, 5)), np.random.default_rng(0))
    with pytest.raises(ValueError, match="translate must be a non-negative int"):
        ns.Augment(translate=-1)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        ns.Augment()(np.zeros((4, 4)), np.random.default_rng(0))
