"""Parameter-free layers: ReLU and Flatten."""
from __future__ import annotations

from .. import kernels
from ..checks import check_array, check_grad, check_shape, no_forward
from .module import Module


class ReLU(Module):
    """max(x, 0), elementwise. Any shape in, the same shape out.

    The gradient passes where the input was positive and is zero elsewhere
    (at exactly 0 the derivative is taken as 0, as in PyTorch).
    """

    def __init__(self):
        self._y = None

    def forward(self, x):
        """x: any shape -> max(x, 0), the same shape (and memory layout)."""
        check_array(self, x)
        # the output is kept for the backward pass: y > 0 exactly where x > 0, and the next
        # layer holds y anyway, so no separate mask is stored. Inside a Sequential the input is
        # usually the fresh output of the layer before (a convolution's, a Linear's) that nothing
        # else needs: it is then overwritten instead of allocating another array of its size.
        self._y = kernels.relu_forward(x, inplace=self._input_owned)
        return self._y

    def _drop_state(self):
        self._y = None

    def output_owned(self, input_owned: bool) -> bool:
        return True                 # a new array, or the owned input overwritten; its max(., 0) is idempotent

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

    def forward(self, x):
        check_array(self, x)
        if x.ndim < 2:
            check_shape(self, x, (None, None), "(B, ...)")
        self._shape, self._dtype = x.shape, x.dtype
        return x.reshape(x.shape[0], -1)

    def output_owned(self, input_owned: bool) -> bool:
        return input_owned           # a view of the input: owned exactly when the input was

    def backward(self, grad, need_input_grad: bool = True):
        if self._shape is None:
            raise no_forward(self)
        B = self._shape[0]
        n = 1
        for d in self._shape[1:]:
            n *= d
        check_grad(self, grad, (B, n), self._dtype)
        return grad.reshape(self._shape) if need_input_grad else None
