"""Shared test settings and helpers."""
import atexit
import os
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import nnscratch as ns
from nnscratch import data

from synthetic import write_medmnist

# numba compiles on first call, so the first example of a test can be slow: no deadline.
settings.register_profile("default", deadline=None, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("thorough", deadline=None, max_examples=300,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# sets unpacked for streaming (nnscratch/stream.py) go to a folder of this test session, not ~/.cache
if "NNSCRATCH_CACHE_DIR" not in os.environ:
    os.environ["NNSCRATCH_CACHE_DIR"] = tempfile.mkdtemp(prefix="nnscratch-test-cache-")
    atexit.register(shutil.rmtree, os.environ["NNSCRATCH_CACHE_DIR"], True)

@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A data folder holding tinymnist.npz (3 classes of 12 x 12 RGB images), searched alone: the
    environment's data folder unset, HOME (~/.medmnist) inside tmp_path."""
    d = tmp_path / "data"
    d.mkdir()
    write_medmnist(d / "tinymnist.npz", classes=3, size=12, channels=3)
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return d


requires_gpu = pytest.mark.skipif(not ns.gpu_available(),
                                  reason="no GPU: CuPy is not installed or sees no CUDA device")


def away_from_zero(rng, shape, low=0.1, high=1.0):
    """Random values with |v| in [low, high): no ReLU kink within a difference step."""
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(low, high, size=shape)


def distinct(rng, shape, gap=0.01):
    """Values that differ pairwise by at least ``gap``: no max-pool ties within a difference step."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * gap + rng.uniform(0, gap / 10, n)).reshape(shape) - n * gap / 2
