"""Average pooling: the mean of each window, and global average pooling."""
from __future__ import annotations

from ..backend import get_array_module
from ..checks import check_array, check_grad, check_positive_int, check_shape, no_forward
from ..kernels.reference import out_size
from .module import Module


class AvgPool2d(Module):
    """The mean of each k x k window, as PyTorch's AvgPool2d (count_include_pad, floor).

    x: (B, C, H, W) -> (B, C, OH, OW), OH = (H + 2 * padding - k) // stride + 1; ``stride``
    defaults to ``kernel_size``. Padding counts as zeros in the mean, so every window divides
    by k * k.

    Forward: y = (1 / k^2) * sum over the window offsets (i, j) of the strided slice of the
    padded input that starts at (i, j), one slice per offset instead of one loop per window.
    Backward: each window's gradient, divided by k^2, is added to every element of the window:
    the same slices, written the other way.
    """

    def __init__(self, kernel_size: int, stride: int | None = None, padding: int = 0):
        stride = kernel_size if stride is None else stride
        check_positive_int("AvgPool2d", kernel_size=kernel_size, stride=stride)
        if not isinstance(padding, int) or isinstance(padding, bool) or not 0 <= padding <= kernel_size // 2:
            raise ValueError(f"AvgPool2d: padding must be an int in [0, kernel_size // 2], got {padding!r}")
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self._cache = None

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def output_shape(self, x_shape: tuple) -> tuple:
        B, C, H, W = x_shape
        k, s, p = self.kernel_size, self.stride, self.padding
        return B, C, out_size(H, k, s, p), out_size(W, k, s, p)

    def check_input(self, x):
        check_array(self, x)
        check_shape(self, x, (None, None, None, None), "(B, C, H, W)")
        if min(x.shape[2], x.shape[3]) + 2 * self.padding < self.kernel_size:
            k = self.kernel_size
            raise ValueError(f"{self}: input of {x.shape[2]}x{x.shape[3]} pixels (padding {self.padding}) is "
                             f"smaller than the {k}x{k} window; got shape {tuple(x.shape)}")

    def _windows(self, OH, OW):
        """(i, j, rows, cols): for each offset in the window, the padded input's slices it reads."""
        k, s = self.kernel_size, self.stride
        for i in range(k):
            for j in range(k):
                yield slice(i, i + s * (OH - 1) + 1, s), slice(j, j + s * (OW - 1) + 1, s)

    def forward(self, x):
        """x: (B, C, H, W) -> (B, C, OH, OW)."""
        self.check_input(x)
        xp, p = get_array_module(x), self.padding
        B, C, OH, OW = self.output_shape(x.shape)
        xpad = xp.pad(x, ((0, 0), (0, 0), (p, p), (p, p))) if p else x
        y = xp.zeros((B, C, OH, OW), dtype=x.dtype)
        for rows, cols in self._windows(OH, OW):
            y += xpad[:, :, rows, cols]
        self._cache = (x.shape, x.dtype)
        return y / x.dtype.type(self.kernel_size ** 2)

    def backward(self, grad, need_input_grad: bool = True):
        """grad: (B, C, OH, OW) -> (B, C, H, W)."""
        if self._cache is None:
            raise no_forward(self)
        x_shape, dtype = self._cache
        check_grad(self, grad, self.output_shape(x_shape), dtype)
        if not need_input_grad:
            return None
        xp, p = get_array_module(grad), self.padding
        B, C, H, W = x_shape
        dxpad = xp.zeros((B, C, H + 2 * p, W + 2 * p), dtype=dtype)
        share = grad / dtype.type(self.kernel_size ** 2)
        for rows, cols in self._windows(grad.shape[2], grad.shape[3]):
            dxpad[:, :, rows, cols] += share
        return dxpad[:, :, p:p + H, p:p + W] if p else dxpad


class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed output size, as PyTorch's AdaptiveAvgPool2d.

    x: (B, C, H, W) -> (B, C, OH, OW) for output_size (OH, OW) (an int means square). Output
    cell (i, j) is the mean of rows floor(i H / OH) to ceil((i + 1) H / OH) - 1 and the columns
    likewise, so the cells cover the map whatever its size. ``AdaptiveAvgPool2d(1)`` is global
    average pooling: one mean per channel, y[b, c] = mean of x[b, c]. Backward spreads each
    cell's gradient evenly over the cell's elements.
    """

    def __init__(self, output_size):
        size = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size, output_size)
        if len(size) != 2:
            raise ValueError(f"AdaptiveAvgPool2d: output_size must be an int or a pair, got {output_size!r}")
        check_positive_int("AdaptiveAvgPool2d", output_height=size[0], output_width=size[1])
        self.output_size = size
        self._cache = None

    def extra_repr(self):
        return f"output_size={self.output_size if self.output_size[0] != self.output_size[1] else self.output_size[0]}"

    def output_shape(self, x_shape: tuple) -> tuple:
        return (x_shape[0], x_shape[1]) + self.output_size

    def check_input(self, x):
        check_array(self, x)
        check_shape(self, x, (None, None, None, None), "(B, C, H, W)")
        if x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f"{self}: expected a map of at least 1x1 pixels, got shape {tuple(x.shape)}")

    def _cells(self, H: int, W: int):
        """(i, j, rows, cols) of each output cell: the input rows and columns it averages."""
        OH, OW = self.output_size
        for i in range(OH):
            rows = slice(i * H // OH, -(-(i + 1) * H // OH))
            for j in range(OW):
                yield i, j, rows, slice(j * W // OW, -(-(j + 1) * W // OW))

    def forward(self, x):
        """x: (B, C, H, W) -> (B, C, OH, OW)."""
        self.check_input(x)
        xp = get_array_module(x)
        if self.output_size == (1, 1):
            y = x.mean(axis=(2, 3), keepdims=True)          # the common case, one pass
        else:
            y = xp.empty(self.output_shape(x.shape), dtype=x.dtype)
            for i, j, rows, cols in self._cells(x.shape[2], x.shape[3]):
                y[:, :, i, j] = x[:, :, rows, cols].mean(axis=(2, 3))
        self._cache = (x.shape, x.dtype)
        return y

    def backward(self, grad, need_input_grad: bool = True):
        """grad: (B, C, OH, OW) -> (B, C, H, W)."""
        if self._cache is None:
            raise no_forward(self)
        x_shape, dtype = self._cache
        check_grad(self, grad, self.output_shape(x_shape), dtype)
        if not need_input_grad:
            return None
        xp = get_array_module(grad)
        H, W = x_shape[2], x_shape[3]
        if self.output_size == (1, 1):
            return xp.broadcast_to(grad / dtype.type(H * W), x_shape).copy()
        dx = xp.zeros(x_shape, dtype=dtype)
        for i, j, rows, cols in self._cells(H, W):
            area = (rows.stop - rows.start) * (cols.stop - cols.start)
            dx[:, :, rows, cols] += (grad[:, :, i, j] / dtype.type(area))[:, :, None, None]
        return dx
