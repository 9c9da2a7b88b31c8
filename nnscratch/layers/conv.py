"""2-D convolution as im2col plus one matrix product."""
from __future__ import annotations

import numpy as np

from .. import init, kernels
from ..backend import get_array_module
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

    Forward: cols = im2col(x): (B*OH*OW, kh*kw*C), one patch per row with its
    columns ordered (i, j, c); y = cols @ Wm^T + b, where Wm is the weight in that
    same order, (out_channels, kh*kw*C). The backward pass is that matrix
    product's backward plus col2im, the adjoint of im2col; the input gradient's
    columns reuse the memory of ``cols`` (rebuilt from x should backward run again).
    The output is an NCHW view of channels-last memory (the product's rows are
    pixels), which the kernels read without copying; see ``kernels/cpu.py``.
    """

    new_output = True                # forward returns a new array it keeps no reference to

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
        self._kept = {}                   # arrays reused across steps (see _keep)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")

    def output_shape(self, x_shape: tuple) -> tuple:
        """(B, C, H, W) -> (B, out_channels, OH, OW)."""
        (kh, kw), s, p = self.kernel_size, self.stride[0], self.padding[0]
        return (x_shape[0], self.out_channels, out_size(x_shape[2], kh, s, p), out_size(x_shape[3], kw, s, p))

    def _weight_matrix(self):
        """The weight as (out_channels, kh * kw * C), columns in im2col's (i, j, c) order."""
        return self.weight.data.transpose(0, 2, 3, 1).reshape(self.out_channels, -1)

    def forward(self, x):
        """x: (B, in_channels, H, W) -> (B, out_channels, OH, OW)."""
        check_array(self, x)
        check_shape(self, x, (None, self.in_channels, None, None), "(B, C, H, W)")
        check_matches_parameter(self, x, self.weight)
        (kh, kw), s, p = self.kernel_size, self.stride[0], self.padding[0]
        if x.shape[2] + 2 * p < kh or x.shape[3] + 2 * p < kw:
            raise ValueError(f"{self}: input of {x.shape[2]}x{x.shape[3]} pixels (padding {p}) is smaller "
                             f"than the {kh}x{kw} kernel; got shape {tuple(x.shape)}")
        B, _, OH, OW = self.output_shape(x.shape)
        cols = kernels.im2col(x, kh, kw, s, p, out=self._buffer(x, (B * OH * OW, kh * kw * self.in_channels)))
        y = kernels.matmul(cols, self._weight_matrix().T)            # (B*OH*OW, OC)
        if self.bias is not None:
            kernels.add_bias(y, self.bias.data)
        self._cache = (x, cols)
        self._cols_hold_x = True          # False once backward has written the input gradient's columns there
        return y.reshape(B, OH, OW, self.out_channels).transpose(0, 3, 1, 2)   # NCHW view, no copy

    def _keep(self, name, like, shape, make):
        """The array kept under ``name`` from an earlier step if it has ``shape`` and ``like``'s dtype and
        device, else a new one from ``make`` ("empty" or "ones" of the array module), kept for next time."""
        kept = self._kept.get(name)
        if kept is None or kept.shape != shape or kept.dtype != like.dtype or type(kept) is not type(like):
            kept = self._kept[name] = getattr(get_array_module(like), make)(shape, dtype=like.dtype)
        return kept

    def _buffer(self, x, shape):
        """The column matrix of the last forward pass, reused when it fits: a fresh 10 MB array per
        step costs page faults that are a visible share of a CNN step on the CPU."""
        return self._keep("cols", x, shape, "empty")

    def _ones(self, g):
        """A vector of len(g) ones in g's dtype and device, for the bias gradient."""
        return self._keep("ones", g, (g.shape[0],), "ones")

    def backward(self, grad, need_input_grad: bool = True):
        """grad: (B, out_channels, OH, OW) -> (B, in_channels, H, W); accumulates weight and bias grads.

        With ``need_input_grad=False`` (the first layer of a network) the input
        gradient, a matrix product and a col2im, is skipped and None returned.
        """
        if self._cache is None:
            raise no_forward(self)
        x, cols = self._cache
        check_grad(self, grad, self.output_shape(x.shape), cols.dtype)
        (kh, kw), s, p = self.kernel_size, self.stride[0], self.padding[0]
        if not self._cols_hold_x:         # a second backward after one forward: the columns again
            kernels.im2col(x, kh, kw, s, p, out=cols)
            self._cols_hold_x = True
        OC = self.out_channels
        g = grad.transpose(0, 2, 3, 1).reshape(-1, OC)     # (B*OH*OW, OC); free for channels-last grad
        dw = kernels.matmul(g.T, cols).reshape(OC, kh, kw, self.in_channels)
        self.weight.grad += dw.transpose(0, 3, 1, 2)
        if self.bias is not None:
            # the column sums as a matrix-vector product: BLAS reads g once on every core, where
            # g.sum(axis=0) ran at a third of the speed (conv1: 1.1 ms -> 0.24 ms at batch 64)
            self.bias.accumulate_product(self._ones(g), g)
        if not need_input_grad:
            return None
        # The input gradient's columns (the same shape) go into the column matrix, which the weight
        # gradient above has finished with: one 14 MB matrix instead of two for conv2 at batch 64,
        # so the product writes into memory that is still in cache (CNN step about -1.4 ms)
        self._cols_hold_x = False
        return kernels.col2im(kernels.matmul(g, self._weight_matrix(), out=cols), x.shape, kh, kw, s, p)
