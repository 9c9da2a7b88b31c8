"""The one place that knows NumPy from CuPy.

Every layer asks ``get_array_module(x)`` for the array library of its input and
computes with it, so the same code runs on the CPU (NumPy) and the GPU (CuPy).
Nothing here keeps a "current device": the data decides, and moving data between
devices is always explicit (:func:`to_device`).
"""
from __future__ import annotations

import functools

import numpy as np

DEVICES = ("cpu", "gpu")


@functools.lru_cache(maxsize=None)
def _cupy():
    """Return the ``cupy`` module, or ``None`` where it is not installed or unusable."""
    try:
        import cupy  # noqa: PLC0415  (optional dependency, imported on first need)
    except Exception:  # ImportError, or a CUDA library that fails to load
        return None
    return cupy


@functools.lru_cache(maxsize=None)
def gpu_available() -> bool:
    """True when CuPy is installed and sees at least one CUDA device."""
    cupy = _cupy()
    if cupy is None:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no driver, no device
        return False


def is_gpu_array(x) -> bool:
    """True for a CuPy array (without importing CuPy when it is not loaded)."""
    return type(x).__module__.startswith("cupy")


def get_array_module(x):
    """``numpy`` or ``cupy``, whichever library ``x`` belongs to."""
    if is_gpu_array(x):
        return _cupy()
    return np


def device_of(x) -> str:
    """``"gpu"`` for a CuPy array, ``"cpu"`` otherwise."""
    return "gpu" if is_gpu_array(x) else "cpu"


def check_device(device: str) -> str:
    """Validate a device name and that the device can be used; returns it."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}: expected one of {', '.join(DEVICES)}")
    if device == "gpu" and not gpu_available():
        reason = "CuPy is not installed (pip install 'nnscratch[gpu]')" if _cupy() is None \
            else "CuPy found no CUDA device"
        raise RuntimeError(f"no GPU is available: {reason}; use device 'cpu'")
    return device


def to_device(x, device: str):
    """Return ``x`` on ``device`` ("cpu" or "gpu"); a no-op when it is already there."""
    check_device(device)
    if device == "cpu":
        return to_numpy(x)
    return _cupy().asarray(x)


def to_numpy(x) -> np.ndarray:
    """A NumPy array with the contents of ``x`` (copied from the GPU when needed)."""
    if is_gpu_array(x):
        return x.get()
    return np.asarray(x)
