"""Backend helpers on the CPU (the GPU half lives in test_gpu.py)."""
import numpy as np
import pytest

import nnscratch as ns


def test_numpy_arrays_stay_on_the_cpu():
    x = np.ones(3)
    assert ns.get_array_module(x) is np
    assert ns.to_device(x, "cpu") is x
    assert ns.to_numpy(x) is x


def test_gpu_request_without_gpu_is_a_clear_error():
    if ns.gpu_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="no GPU is available.*use device 'cpu'"):
        ns.to_device(np.ones(2), "gpu")


def test_one_hot():
    np.testing.assert_array_equal(ns.one_hot(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])
