"""Input validation shared by layers and losses.

Every message names the layer (its ``repr``), what it expected and what it got,
so that a wrong shape deep inside a model points at the layer that refused it.
"""
from __future__ import annotations

import contextvars
import numbers

import numpy as np

from .backend import device_of, get_array_module, is_gpu_array
from .scoped import scoped

# Set while a Sequential runs its layers after the first: those layers are fed by the layer before
# them, not by a user, so they skip the one check that reads every element (finiteness), which on a
# GPU would also wait for the device at every layer. Overflow inside a model still surfaces: the
# loss then comes out NaN, and training stops naming the epoch and batch.
_TRUSTED = contextvars.ContextVar("nnscratch_trusted_input", default=False)


def trusted_inputs(trusted: bool = True):
    """Within this block, layers skip the finiteness check of their input (shapes are still checked);
    ``trusted=False`` turns the check back on inside such a block."""
    return scoped(_TRUSTED, trusted)


def inputs_trusted() -> bool:
    """True inside ``trusted_inputs()``."""
    return _TRUSTED.get()


def check_positive_int(owner, **sizes):
    """Each size is a positive integer (not a bool, not a float), or a ValueError naming it."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")


def _is_array(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(x, "ndim")


def check_array(owner, x, what: str = "input", finite: bool = True):
    """A NumPy/CuPy floating-point array (with only finite values, when ``finite``), or a clear error."""
    if not _is_array(x):
        raise TypeError(f"{owner}: expected the {what} as a NumPy or CuPy array, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(
            f"{owner}: expected a floating-point {what} (float32 or float64), got dtype {x.dtype}; "
            f"convert it with x.astype(np.float32)")
    if not finite or _TRUSTED.get():
        return
    xp = get_array_module(x)
    if x.size and not bool(xp.isfinite(x).all()):
        raise ValueError(f"{owner}: the {what} of shape {tuple(x.shape)} contains non-finite values (NaN or inf)")


def check_matches_parameter(owner, x, param, what: str = "input"):
    """``x`` lives on the same device and has the same dtype as ``param``'s data."""
    data = param.data
    if is_gpu_array(x) != is_gpu_array(data):
        raise TypeError(
            f"{owner}: the {what} is on the {device_of(x).upper()} ({type(x).__module__.split('.')[0]} array) "
            f"but the layer's parameters are on the {device_of(data).upper()}; move one of them: "
            f"ns.to_device(x, '{device_of(data)}') or model.to('{device_of(x)}')")
    if x.dtype != data.dtype:
        raise TypeError(
            f"{owner}: the {what} has dtype {x.dtype} but the layer's parameters are {data.dtype}; "
            f"convert the {what} (x.astype(np.{data.dtype})) or the model (model.to(dtype=np.{x.dtype}))")


def describe(shape) -> str:
    """Shape as text, with ``None`` shown as the name-free wildcard ``*``."""
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"


def check_shape(owner, x, expected: tuple, names: str, what: str = "input"):
    """``x.shape`` matches ``expected`` where ``None`` means any size.

    ``names`` spells the axes, e.g. "(B, C, H, W)", for the message.
    """
    shape = tuple(x.shape)
    if len(shape) != len(expected):
        raise ValueError(
            f"{owner}: expected a {len(expected)}-D {what} {names} = {describe(expected)}, "
            f"got a {len(shape)}-D array of shape {shape}")
    for got, want in zip(shape, expected):
        if want is not None and got != want:
            raise ValueError(f"{owner}: expected {what} of shape {names} = {describe(expected)}, got {shape}")


def check_grad(owner, grad, out_shape: tuple, dtype):
    """The gradient handed to ``backward`` has the shape of the forward output."""
    if not _is_array(grad):
        hint = ""
        if isinstance(grad, numbers.Number):
            # the usual slip: model.backward(loss) with the loss value a loss function returned
            hint = ("; backward takes dL/d(output), the array that loss_fn.backward() returns, not the loss "
                    "value: model.backward(loss_fn.backward())")
        raise TypeError(f"{owner}.backward: expected the gradient as an array, got {type(grad).__name__}{hint}")
    if tuple(grad.shape) != tuple(out_shape):
        raise ValueError(
            f"{owner}.backward: expected a gradient of the output's shape {tuple(out_shape)}, got {tuple(grad.shape)}")
    if grad.dtype != dtype:
        raise TypeError(f"{owner}.backward: expected a gradient of dtype {dtype}, got {grad.dtype}")


def no_forward(owner):
    """The error for ``backward`` called before ``forward``."""
    return RuntimeError(f"{owner}.backward was called before forward: run the forward pass first, "
                        f"it keeps what the backward pass needs")
