"""Parameter-free layers: ReLU and Flatten."""
from __future__ import annotations

from ..backend import get_array_module
from ..checks import check_array, check_grad, check_shape, no_forward
from .module import Module


class ReLU(Module):
    """max(x, 0), elementwise. Any shape in, the same shape out.

    The gradient passes where the input was positive and is zero elsewhere
    (at exactly 0 the derivative is taken as 0, as in PyTorch).
    """

    def __init__(self):
        self._positive = None

    def forward(self, x):
        check_array(self, x)
        self._positive, self._dtype = x > 0, x.dtype
        return get_array_module(x).maximum(x, 0)

    def backward(self, grad, need_input_grad: bool = True):
        if self._positive is None:
            raise no_forward(self)
        check_grad(self, grad, self._positive.shape, self._dtype)
        return grad * self._positive if need_input_grad else None


class Flatten(Module):
    """(B, d1, d2, ...) -> (B, d1 * d2 * ...): the bridge from feature maps to Linear layers."""

    def __init__(self):
        self._shape = None

    def forward(self, x):
        check_array(self, x)
        if x.ndim < 2:
            check_shape(self, x, (None, None), "(B, ...)")
        self._shape, self._dtype = x.shape, x.dtype
        return x.reshape(x.shape[0], -1)

    def backward(self, grad, need_input_grad: bool = True):
        if self._shape is None:
            raise no_forward(self)
        B = self._shape[0]
        n = 1
        for d in self._shape[1:]:
            n *= d
        check_grad(self, grad, (B, n), self._dtype)
        return grad.reshape(self._shape) if need_input_grad else None
