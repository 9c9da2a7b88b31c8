"""Parameter-free layers: ReLU and Flatten."""
from __future__ import annotations

from .. import kernels
from ..checks import check_array, check_grad, check_shape, no_forward
from .module import Module


class ReLU(Module):
    """max(x, 0), elementwise. Any shape in, the same shape out.

    The gradient passes where the input was positive and is zero elsewhere
    (at exactly 0 the derivative is taken as 0, as in PyTorch). The plain NumPy
    kernels are ``relu_forward`` and ``relu_backward`` in ``kernels/reference.py``.
    """

    def __init__(self):
        self._y = None

    def check_input(self, x):
        check_array(self, x)

    def forward(self, x):
        """x: any shape -> max(x, 0), the same shape (and memory layout)."""
        self.check_input(x)
        # the output is kept for the backward pass: y > 0 exactly where x > 0
        self._y = kernels.relu_forward(x)
        return self._y

    def backward(self, grad, need_input_grad: bool = True):
        """grad: the output's shape -> the input's gradient, grad where x > 0 and 0 elsewhere."""
        if self._y is None:
            raise no_forward(self)
        check_grad(self, grad, self._y.shape, self._y.dtype)
        return kernels.relu_backward(grad, self._y) if need_input_grad else None


class Flatten(Module):
    """(B, d1, d2, ...) -> (B, d1 * d2 * ...): the bridge from feature maps to Linear layers."""

    def __init__(self):
        self._shape = None

    def check_input(self, x):
        check_array(self, x)
        if x.ndim < 2:
            check_shape(self, x, (None, None), "(B, ...)")

    def forward(self, x):
        """x: (B, ...) -> (B, n), a view of x."""
        self.check_input(x)
        self._shape, self._dtype = x.shape, x.dtype
        return x.reshape(x.shape[0], -1)

    def backward(self, grad, need_input_grad: bool = True):
        """grad: (B, n) -> the input's shape."""
        if self._shape is None:
            raise no_forward(self)
        n = 1
        for d in self._shape[1:]:
            n *= d
        check_grad(self, grad, (self._shape[0], n), self._dtype)
        return grad.reshape(self._shape) if need_input_grad else None
