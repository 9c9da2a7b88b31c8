"""Max-pooling."""
from __future__ import annotations

from .. import kernels
from ..checks import check_array, check_positive_int, check_grad, check_shape, no_forward
from ..kernels.reference import out_size
from .module import Module


class MaxPool2d(Module):
    """The largest value of each k x k window.

    x: (B, C, H, W) -> (B, C, OH, OW), OH = (H - k) // stride + 1 (floor, as
    PyTorch: 7 -> 3 for k = stride = 2). ``stride`` defaults to ``kernel_size``.
    Forward also records which element of each window won (argmax); the backward
    pass sends each window's gradient to that element, and zero to the others.
    ``kernels/reference.py`` shows both in plain NumPy.
    """

    def __init__(self, kernel_size: int, stride: int | None = None):
        stride = kernel_size if stride is None else stride
        check_positive_int("MaxPool2d", kernel_size=kernel_size, stride=stride)
        self.kernel_size, self.stride = kernel_size, stride
        self._cache = None

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"

    def output_shape(self, x_shape: tuple) -> tuple:
        B, C, H, W = x_shape
        return B, C, out_size(H, self.kernel_size, self.stride), out_size(W, self.kernel_size, self.stride)

    def check_input(self, x):
        """A clear error unless x is a (B, C, H, W) array with at least one whole window."""
        check_array(self, x)
        check_shape(self, x, (None, None, None, None), "(B, C, H, W)")
        if min(x.shape[2], x.shape[3]) < self.kernel_size:
            raise ValueError(f"{self}: input of {x.shape[2]}x{x.shape[3]} pixels is smaller than the "
                             f"{self.kernel_size}x{self.kernel_size} window; got shape {tuple(x.shape)}")

    def forward(self, x):
        """x: (B, C, H, W) -> (B, C, OH, OW)."""
        self.check_input(x)
        out, argmax = kernels.maxpool_forward(x, self.kernel_size, self.stride)
        self._cache = (x.shape, x.dtype, argmax)
        return out

    def backward(self, grad, need_input_grad: bool = True):
        """grad: (B, C, OH, OW) -> (B, C, H, W)."""
        if self._cache is None:
            raise no_forward(self)
        x_shape, dtype, argmax = self._cache
        check_grad(self, grad, self.output_shape(x_shape), dtype)
        if not need_input_grad:
            return None
        return kernels.maxpool_backward(grad, argmax, x_shape, self.kernel_size, self.stride)
