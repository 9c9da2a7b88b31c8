"""2-D convolution as im2col plus one matrix product."""
from __future__ import annotations

import numpy as np

from .. import init, kernels
from ..checks import check_array, check_positive_int, check_grad, check_matches_parameter, check_shape, no_forward
from ..kernels.reference import out_size
from .module import Module, Parameter


def _pair(name: str, value) -> tuple:
    """An int or a pair of ints, as a pair."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"Conv2d: {name} must be an int or a pair of ints, got {value!r}")
    return tuple(int(v) for v in pair)


class Conv2d(Module):
    """Cross-correlation, as in PyTorch.

    x: (B, in_channels, H, W) -> y: (B, out_channels, OH, OW),
    OH = (H + 2 * padding - kh) // stride + 1 (and OW likewise).
    weight: (out_channels, in_channels, kh, kw), He-normal; bias: (out_channels,), zeros.

    Forward: cols = im2col(x), (B*OH*OW, kh*kw*C), one patch per row with its columns
    ordered (i, j, c) (``kernels/reference.py`` shows how); y = cols @ Wm^T + b, where Wm
    is the weight in that same order, (out_channels, kh*kw*C). Every output pixel is one
    row of a single matrix product.

    Backward is that product's backward: with g = dL/dy as (B*OH*OW, out_channels),
    dL/dWm = g^T cols, dL/db = the sum of g over the pixels, dL/dcols = g Wm, and
    dL/dx = col2im(dL/dcols), the adjoint of im2col: each patch value's gradient is added
    back to the input pixel it was copied from.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, dtype=np.float32, rng=None):
        check_positive_int("Conv2d", in_channels=in_channels, out_channels=out_channels)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _pair("kernel_size", kernel_size)
        self.stride = _pair("stride", stride)
        self.padding = _pair("padding", padding)
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"Conv2d: kernel_size and stride must be >= 1 and padding >= 0, got "
                             f"kernel_size={kernel_size}, stride={stride}, padding={padding}")
        if self.stride[0] != self.stride[1] or self.padding[0] != self.padding[1]:
            raise ValueError("Conv2d: the kernels support equal stride and padding along H and W only, "
                             f"got stride={self.stride}, padding={self.padding}")
        kh, kw = self.kernel_size
        self.weight = Parameter(init.he_normal((out_channels, in_channels, kh, kw), dtype=dtype, rng=rng))
        self.bias = Parameter(init.zeros((out_channels,), dtype=dtype)) if bias else None
        self._cache = None

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")

    def output_shape(self, x_shape: tuple) -> tuple:
        """(B, C, H, W) -> (B, out_channels, OH, OW)."""
        (kh, kw), s, p = self.kernel_size, self.stride[0], self.padding[0]
        return (x_shape[0], self.out_channels, out_size(x_shape[2], kh, s, p), out_size(x_shape[3], kw, s, p))

    def weight_matrix(self):
        """The weight as Wm: (out_channels, kh * kw * C), columns in im2col's (i, j, c) order."""
        return self.weight.data.transpose(0, 2, 3, 1).reshape(self.out_channels, -1)

    def check_input(self, x):
        """A clear error unless x is a (B, in_channels, H, W) array of the weight's dtype and device, at
        least as large as the kernel (with the padding)."""
        check_array(self, x)
        check_shape(self, x, (None, self.in_channels, None, None), "(B, C, H, W)")
        check_matches_parameter(self, x, self.weight)
        (kh, kw), p = self.kernel_size, self.padding[0]
        if x.shape[2] + 2 * p < kh or x.shape[3] + 2 * p < kw:
            raise ValueError(f"{self}: input of {x.shape[2]}x{x.shape[3]} pixels (padding {p}) is smaller "
                             f"than the {kh}x{kw} kernel; got shape {tuple(x.shape)}")

    def forward(self, x):
        """x: (B, in_channels, H, W) -> (B, out_channels, OH, OW)."""
        self.check_input(x)
        (kh, kw), s, p = self.kernel_size, self.stride[0], self.padding[0]
        B, _, OH, OW = self.output_shape(x.shape)
        cols = kernels.im2col(x, kh, kw, s, p)                          # (B*OH*OW, kh*kw*C)
        y = kernels.matmul(cols, self.weight_matrix().T)                # (B*OH*OW, OC)
        if self.bias is not None:
            y = y + self.bias.data
        self._cache = (x.shape, cols)
        # the rows are pixels (b, oh, ow), so the product is channels-last: an NCHW view of it
        return y.reshape(B, OH, OW, self.out_channels).transpose(0, 3, 1, 2)

    def backward(self, grad, need_input_grad: bool = True):
        """grad: (B, out_channels, OH, OW) -> (B, in_channels, H, W); accumulates weight and bias grads.

        With ``need_input_grad=False`` (the first layer of a network) the input
        gradient, a matrix product and a col2im, is skipped and None returned.
        """
        if self._cache is None:
            raise no_forward(self)
        x_shape, cols = self._cache
        check_grad(self, grad, self.output_shape(x_shape), cols.dtype)
        (kh, kw), s, p = self.kernel_size, self.stride[0], self.padding[0]
        OC = self.out_channels
        g = grad.transpose(0, 2, 3, 1).reshape(-1, OC)                  # (B*OH*OW, OC), rows as cols'
        dwm = kernels.matmul(g.T, cols)                                 # (OC, kh*kw*C)
        self.weight.grad += dwm.reshape(OC, kh, kw, self.in_channels).transpose(0, 3, 1, 2)
        if self.bias is not None:
            self.bias.grad += g.sum(axis=0)
        if not need_input_grad:
            return None
        dcols = kernels.matmul(g, self.weight_matrix())                 # (B*OH*OW, kh*kw*C)
        return kernels.col2im(dcols, x_shape, kh, kw, s, p)
