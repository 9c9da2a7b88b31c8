"""2-D convolution as im2col plus one matrix product."""
from __future__ import annotations

import numpy as np

from .. import init, kernels
from ..backend import get_array_module, is_gpu_array
from ..checks import check_array, check_positive_int, check_grad, check_matches_parameter, check_shape, no_forward
from ..kernels.reference import out_size, winograd_tiles
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
    same order, (out_channels, kh*kw*C). With a bias, cols has one more column of
    ones and Wm one more column, b, so that one product computes y. The backward
    pass is that matrix product's backward plus col2im, the adjoint of im2col; the
    input gradient's columns reuse the memory of ``cols`` (rebuilt from x should
    backward run again).
    The output is an NCHW view of channels-last memory (the product's rows are
    pixels), which the kernels read without copying; see ``kernels/cpu.py``.

    Inside a ``Sequential``, when a MaxPool2d reads this layer's output (directly or through a
    ReLU) and its windows leave the last rows or columns out (floor pooling of an odd map: the
    CNN's 7 x 7 -> 3 x 3 drops a quarter of the pixels), only the pixels the pooling reads are
    computed: the output is then (B, out_channels, rows read, columns read). What the pooling
    outputs, and every gradient, is the same (``Sequential.crop_before_pool``).
    """

    new_output = True                # forward returns a new array it keeps no reference to
    _pooled_by = None                # (k, stride) of the MaxPool2d reading the output, set by a Sequential per call
    # A 3x3, stride-1 convolution of at least WINOGRAD_MIN_CHANNELS input channels on the CPU (with the
    # numba kernels) runs as Winograd F(2x2, 3x3) (see kernels/reference.py): 16 matrix products of
    # 2.25x fewer multiplications in all than im2col's, and no column matrix. The CNN's conv2 and
    # conv3, one core, batch 32: forward + backward 6.95 -> ~5.2 and 4.65 -> ~2.7 ms. The results
    # equal im2col's up to rounding. With few input channels (an RGB input) the transforms cost more
    # than the products save. False runs every convolution through im2col.
    winograd = True
    WINOGRAD_MIN_CHANNELS = 16
    _pool_inside = None              # set by a Sequential for one call: None, or a fused 2x2 pooling's relu flag
    _pooled = None                   # (argmax, rectified output or None) of the last forward with a pooling fused in

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
        self._kept = {}                   # arrays reused across steps (see _buffer)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")

    def output_shape(self, x_shape: tuple) -> tuple:
        """(B, C, H, W) -> (B, out_channels, OH, OW)."""
        (kh, kw), s, p = self.kernel_size, self.stride[0], self.padding[0]
        return (x_shape[0], self.out_channels, out_size(x_shape[2], kh, s, p), out_size(x_shape[3], kw, s, p))

    def _computed_size(self, x_shape: tuple) -> tuple:
        """(OH, OW) that forward computes: the whole map, or with ``_pooled_by`` = (k, stride) the rows
        and columns that pooling's windows read, (n - 1) * stride + k for its n = (OH - k) // stride + 1."""
        OH, OW = self.output_shape(x_shape)[2:]
        if self._pooled_by is None:
            return OH, OW
        k, stride = self._pooled_by
        return tuple(((n - k) // stride) * stride + k if n >= k else n for n in (OH, OW))

    def _weight_matrix(self, with_bias: bool = False):
        """The weight as (out_channels, kh * kw * C), columns in im2col's (i, j, c) order; with
        ``with_bias`` (and a bias) the bias is one more, last column, facing im2col's column of ones."""
        wm = self.weight.data.transpose(0, 2, 3, 1).reshape(self.out_channels, -1)
        if not with_bias or self.bias is None:
            return wm
        return get_array_module(wm).concatenate([wm, self.bias.data[:, None]], axis=1)

    def forward(self, x):
        """x: (B, in_channels, H, W) -> (B, out_channels, OH, OW)."""
        check_array(self, x)
        check_shape(self, x, (None, self.in_channels, None, None), "(B, C, H, W)")
        check_matches_parameter(self, x, self.weight)
        (kh, kw), s, p = self.kernel_size, self.stride[0], self.padding[0]
        if x.shape[2] + 2 * p < kh or x.shape[3] + 2 * p < kw:
            raise ValueError(f"{self}: input of {x.shape[2]}x{x.shape[3]} pixels (padding {p}) is smaller "
                             f"than the {kh}x{kw} kernel; got shape {tuple(x.shape)}")
        B = x.shape[0]
        OH, OW = self._computed_size(x.shape)
        if self._use_winograd(x):
            return self._forward_winograd(x, (OH, OW))
        # with a bias, cols ends in a column of ones and the weight matrix in the bias: the product
        # adds the bias (no pass of its own over the output), and backward gets its gradient with
        # the weight's (CNN step about -1 ms)
        bias = self.bias is not None
        cols = kernels.im2col(x, kh, kw, s, p, ones=bias, out_hw=(OH, OW),
                              out=self._buffer(x, (B * OH * OW, kh * kw * self.in_channels + bias)))
        y = kernels.matmul(cols, self._weight_matrix(with_bias=True).T)            # (B*OH*OW, OC)
        self._cache = (x, cols, (OH, OW))
        self._cols_hold_x = True          # False once backward has written the input gradient's columns there
        return y.reshape(B, OH, OW, self.out_channels).transpose(0, 3, 1, 2)   # NCHW view, no copy

    def _drop_state(self):
        self._cache = self._pooled = None          # the kept buffers (_kept) stay

    def _use_winograd(self, x) -> bool:
        return (self.winograd and self.kernel_size == (3, 3) and self.stride[0] == 1
                and self.in_channels >= self.WINOGRAD_MIN_CHANNELS and not is_gpu_array(x)
                and kernels.cpu_kernels() == "numba")

    def _forward_winograd(self, x, out_hw):
        """forward as Winograd F(2x2, 3x3): V = input transform (16, tiles, C), U = weight transform
        (16, C, OC), M = V[k] @ U[k] for the 16 k, y = output transform of M plus the bias."""
        tiles = winograd_tiles(*out_hw)
        T = x.shape[0] * tiles[0] * tiles[1]
        V = kernels.winograd_input(x, self.padding[0], tiles, out=self._buffer(x, (16, T, self.in_channels)))
        U = kernels.winograd_weight(self.weight.data)
        # M's buffer is kept, as the column matrix is (a fresh 6 MB array per call costs page faults);
        # backward reuses it for dM, which has its shape
        M = kernels.matmul(V, U, out=self._buffer(x, (16, T, self.out_channels), "M"))
        bias = None if self.bias is None else self.bias.data
        self._cache = (x, V, out_hw)
        self._cols_hold_x = True          # False once backward has written dV into V's buffer
        self._winograd_cache = (U, tiles)
        self._pooled = None
        if self._pool_inside is None:
            return kernels.winograd_output(M, out_hw, tiles, bias)
        # a 2x2 max-pooling (and the ReLU before it) fused in by a Sequential: see _fuses_pool
        out, argmax = kernels.winograd_output_pool(M, tiles, bias, relu=self._pool_inside)
        self._pooled = (argmax, out if self._pool_inside else None)
        return out

    def _fuses_pool(self, x, pool) -> bool:
        """Whether this layer, called on x, can run the 2x2 max-pooling ``pool`` that reads its output
        (with the ReLU between them) inside its Winograd output transform (Sequential.fuse_conv_pool):
        each 2x2 tile of outputs is then one pooling window, so only the windows' maxima are written,
        and in backward the pooled gradient goes straight into the output gradient's transform (the
        CNN's conv2 and conv3: no 1.6 and 0.6 MB maps and no pooling passes over them)."""
        if pool.kernel_size != 2 or pool.stride != 2 or x.ndim != 4 or not self._use_winograd(x):
            return False
        OH, OW = self._computed_size(x.shape)
        return OH % 2 == 0 and OW % 2 == 0

    def _backward_winograd(self, grad, need_input_grad: bool):
        """The adjoint of each step of _forward_winograd: dM = the output gradient's transform,
        dU = V[k]^T dM[k] (the weight gradient through the weight transform's adjoint), and for the
        input dV = dM[k] U[k]^T through the input transform's adjoint."""
        x, V, out_hw = self._cache
        U, tiles = self._winograd_cache
        if not self._cols_hold_x:         # a second backward after one forward: V again
            kernels.winograd_input(x, self.padding[0], tiles, out=V)
            self._cols_hold_x = True
        dM = self._buffer(x, (16, V.shape[1], self.out_channels), "M")
        if self._pooled is None:
            kernels.winograd_grad_output(grad, tiles, out=dM)
            gsum = grad
        else:                             # grad is the fused pooling's: (B, OC, TH, TW)
            argmax, rectified = self._pooled
            kernels.winograd_grad_output_pool(grad, argmax, tiles, rectified, out=dM)
            # each window passes its gradient to one pixel (none where the ReLU's output is 0)
            gsum = grad if rectified is None else grad * (rectified > 0)
        self.weight.grad += kernels.winograd_weight_grad(kernels.matmul(V.transpose(0, 2, 1), dM))
        if self.bias is not None:
            self.bias.grad += gsum.transpose(0, 2, 3, 1).reshape(-1, self.out_channels).sum(axis=0)
        if not need_input_grad:
            return None
        # dV into V's buffer, which the weight gradient above has finished with
        self._cols_hold_x = False
        dV = kernels.matmul(dM, U.transpose(0, 2, 1), out=V)
        return kernels.winograd_grad_input(dV, x.shape, self.padding[0], tiles)

    def _buffer(self, x, shape, name: str = "cols"):
        """The array kept under ``name`` (the column matrix, by default) if it has ``shape`` and x's dtype
        and device, else a new one, kept for the next step: a fresh 10 MB array per step costs page
        faults that are a visible share of a CNN step on the CPU."""
        kept = self._kept.get(name)
        if kept is None or kept.shape != shape or kept.dtype != x.dtype or type(kept) is not type(x):
            kept = self._kept[name] = get_array_module(x).empty(shape, dtype=x.dtype)
        return kept

    def backward(self, grad, need_input_grad: bool = True):
        """grad: (B, out_channels, OH, OW) -> (B, in_channels, H, W); accumulates weight and bias grads.

        With ``need_input_grad=False`` (the first layer of a network) the input
        gradient, a matrix product and a col2im, is skipped and None returned.
        """
        if self._cache is None:
            raise no_forward(self)
        x, cols, (OH, OW) = self._cache
        pooled = cols.ndim == 3 and self._pooled is not None
        check_grad(self, grad, (x.shape[0], self.out_channels) + ((OH // 2, OW // 2) if pooled else (OH, OW)),
                   cols.dtype)
        if cols.ndim == 3:                # forward ran Winograd: cols holds its input transform V
            return self._backward_winograd(grad, need_input_grad)
        (kh, kw), s, p = self.kernel_size, self.stride[0], self.padding[0]
        bias = self.bias is not None
        if not self._cols_hold_x:         # a second backward after one forward: the columns again
            kernels.im2col(x, kh, kw, s, p, out=cols, ones=bias, out_hw=(OH, OW))
            self._cols_hold_x = True
        OC, K = self.out_channels, kh * kw * self.in_channels
        g = grad.transpose(0, 2, 3, 1).reshape(-1, OC)     # (B*OH*OW, OC); free for channels-last grad
        # (OC, K), then the bias's column if any; computed with the longer side as the product's rows,
        # which OpenBLAS runs faster here (conv2 at batch 64: 2.9 -> 2.5 ms, conv3 2.2 -> 2.1)
        dwb = kernels.matmul(cols.T, g).T if cols.shape[1] > OC else kernels.matmul(g.T, cols)
        self.weight.grad += dwb[:, :K].reshape(OC, kh, kw, self.in_channels).transpose(0, 3, 1, 2)
        if bias:
            self.bias.grad += dwb[:, K]                     # the column of ones: sum of g over pixels
        if not need_input_grad:
            return None
        # The input gradient's columns go into the memory of the column matrix, which the weight
        # gradient above has finished with: one 14 MB matrix instead of two for conv2 at batch 64,
        # so the product writes into memory that is still in cache (CNN step about -1.4 ms)
        self._cols_hold_x = False
        dcols = cols.reshape(-1)[:g.shape[0] * K].reshape(g.shape[0], K)
        return kernels.col2im(kernels.matmul(g, self._weight_matrix(), out=dcols), x.shape, kh, kw, s, p,
                              out_hw=(OH, OW))
