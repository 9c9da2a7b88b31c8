"""Small MedMNIST-format .npz files for tests: same arrays, same dtypes, learnable classes."""
import numpy as np


def make_images_labels(n, classes, size, channels, rng):
    """uint8 images whose class shows as a bright horizontal band at a class-specific height."""
    labels = rng.integers(0, classes, n)
    shape = (n, size, size) if channels == 1 else (n, size, size, channels)
    images = rng.integers(0, 80, shape).astype(np.uint8)
    band = max(1, size // classes)
    for i, y in enumerate(labels):
        images[i, y * band:(y + 1) * band] = 230
    return images, labels.reshape(-1, 1).astype(np.uint8)


def write_medmnist(path, classes=3, size=12, channels=3, n=(60, 24, 30), seed=0, compressed=False, **overrides):
    """Write a MedMNIST-format file (``compressed``: as MedMNIST's own, np.savez_compressed);
    ``overrides`` replace or (with value None) drop arrays."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = make_images_labels(count, classes, size, channels, rng)
    for k, v in overrides.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def write_multilabel(path, labels=14, size=28, channels=1, n=(80, 30, 40), seed=0):
    """A ChestMNIST-format file: each image has any subset of ``labels`` findings, finding j showing as
    a bright row at height j; labels (N, labels) of 0 and 1."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        y = (rng.random((count, labels)) < 0.3).astype(np.uint8)
        y[0], y[1] = 1, 0                                  # every finding both present and absent
        shape = (count, size, size) if channels == 1 else (count, size, size, channels)
        images = rng.integers(0, 60, shape).astype(np.uint8)
        for i in range(count):
            for j in np.flatnonzero(y[i]):
                images[i, j % size] = 230
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, y
    np.savez(path, **arrays)
    return path
