"""Work arrays a plan keeps from one step to the next, and gradients written in place."""
from __future__ import annotations

from .. import kernels
from ..backend import get_array_module
from . import rules


class Buffers:
    """Arrays kept under (owner, name): a fresh 10 MB column matrix every step costs page faults that
    are a visible share of a CNN step on the CPU. A kept array is replaced when asked for another
    shape, dtype or device (the last, smaller batch of an epoch), so a model holds one set."""

    def __init__(self):
        self._kept = {}

    def get(self, owner, name: str, shape: tuple, like):
        """An uninitialised array of ``shape`` with ``like``'s dtype and device: the one kept under
        (owner, name) when it fits, else a new one, kept (with the ``kept_buffers`` rule on)."""
        key = (id(owner), name)
        kept = self._kept.get(key)
        if kept is None or kept.shape != shape or kept.dtype != like.dtype or type(kept) is not type(like):
            kept = get_array_module(like).empty(shape, dtype=like.dtype)
            if rules.on("kept_buffers"):
                self._kept[key] = kept
        return kept

    def arrays(self) -> list:
        return list(self._kept.values())

    def describe(self) -> list:
        """'name (shape)' for each kept array."""
        return [f"{name} {tuple(a.shape)}" for (_, name), a in self._kept.items()]


def accumulate_product(param, a, b):
    """param.grad += a @ b, for a 2-D product of the gradient's shape. Right after ``zero_grad`` the
    product is written straight into the gradient's memory (no fill with zeros, no temporary: the
    MLNN's first weight gradient is 11 MB). A gradient stored transposed (Fortran order, as Linear's
    weight is) gets the transposed product b^T a^T written into its C-ordered transpose: BLAS writes
    row-major results only, and the values are the same dot products either way."""
    grad = param._grad
    if grad.ndim == 2 and not grad.flags.c_contiguous and grad.T.flags.c_contiguous:
        grad, a, b = grad.T, b.T, a.T
    if param.grad_is_zero:
        kernels.matmul(a, b, out=grad)
        param.gradient_written()
    else:
        grad += kernels.matmul(a, b)
