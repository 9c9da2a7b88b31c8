"""Plain-NumPy kernels: the readable oracle every fast twin is tested against.

Shapes (NCHW, as in PyTorch):
    x:    (B, C, H, W) input
    cols: (B * OH * OW, kh * kw * C)   one row per output pixel (a "patch"),
          columns ordered (i, j, c): kernel row, kernel column, then channel,
          which matches ``weight.transpose(0, 2, 3, 1).reshape(out_channels, -1)``.
          (Channel last, so that a channels-last image is copied C values at a time.)
    OH = (H + 2 * padding - kh) // stride + 1, and OW likewise.

The loops run over the kernel offsets (i, j) only, never over pixels: each
offset copies one strided view of the padded image, as Chainer's ``im2col`` does.
"""
from __future__ import annotations

import numpy as np


def out_size(size: int, kernel: int, stride: int, padding: int = 0) -> int:
    """Output length of a sliding window along one axis (floor, as PyTorch)."""
    return (size + 2 * padding - kernel) // stride + 1


def map_size(H: int, W: int, kh: int, kw: int, stride: int, padding: int, out_hw=None) -> tuple:
    """(OH, OW): the output map of a (kh, kw) window over an H x W input, or, given ``out_hw``, its
    first out_hw[0] rows and out_hw[1] columns only (a convolution whose output a pooling reads in
    part: see Conv2d). Raises ValueError when ``out_hw`` is larger than the map."""
    OH, OW = out_size(H, kh, stride, padding), out_size(W, kw, stride, padding)
    if out_hw is None:
        return OH, OW
    oh, ow = (int(v) for v in out_hw)
    if not (1 <= oh <= OH and 1 <= ow <= OW):
        raise ValueError(f"out_hw {tuple(out_hw)} must lie within the output map {(OH, OW)} of a "
                         f"{kh}x{kw} window over {H}x{W} pixels (stride {stride}, padding {padding})")
    return oh, ow


def im2col(x, kh: int, kw: int, stride: int = 1, padding: int = 0, out=None, ones: bool = False, out_hw=None):
    """x: (B, C, H, W) -> cols: (B * OH * OW, kh * kw * C), into ``out`` if given.

    With ``ones`` the matrix has one more column, all ones: multiplied by a weight matrix whose last
    column is the bias, the product adds the bias (and its weight gradient is the bias gradient).
    With ``out_hw`` = (OH, OW) only the output map's first OH rows and OW columns get a row of cols.
    """
    B, C, H, W = x.shape
    OH, OW = map_size(H, W, kh, kw, stride, padding, out_hw)
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    patches = np.empty((B, OH, OW, kh, kw, C), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            # every output pixel's (i, j) neighbour, for all pixels and channels at once
            patches[:, :, :, i, j, :] = xp[:, :, i:i + stride * OH:stride, j:j + stride * OW:stride].transpose(0, 2, 3, 1)
    cols = patches.reshape(B * OH * OW, kh * kw * C)            # one patch per row
    if ones:
        cols = np.concatenate([cols, np.ones((cols.shape[0], 1), dtype=cols.dtype)], axis=1)
    if out is None:
        return cols
    out[...] = cols
    return out


def col2im(cols, x_shape: tuple, kh: int, kw: int, stride: int = 1, padding: int = 0, out_hw=None):
    """The adjoint of :func:`im2col`: cols (B * OH * OW, kh * kw * C) -> dx (B, C, H, W).

    A pixel that appears in several patches receives the sum of their values,
    which is exactly the gradient of the copy that ``im2col`` made. ``out_hw`` as for im2col.
    """
    B, C, H, W = x_shape
    OH, OW = map_size(H, W, kh, kw, stride, padding, out_hw)
    patches = cols.reshape(B, OH, OW, kh, kw, C)
    dxp = np.zeros((B, C, H + 2 * padding, W + 2 * padding), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i:i + stride * OH:stride, j:j + stride * OW:stride] += patches[:, :, :, i, j].transpose(0, 3, 1, 2)
    return np.ascontiguousarray(dxp[:, :, padding:padding + H, padding:padding + W])


def maxpool_forward(x, k: int, stride: int, relu: bool = False):
    """x: (B, C, H, W) -> (out, argmax), both (B, C, OH, OW).

    ``argmax`` is the winner's offset inside its window, i * k + j; on a tie
    the first offset in row-major order wins, as in PyTorch. With ``relu`` the
    output is rectified too: relu(maxpool(x)), which equals maxpool(relu(x)).
    """
    B, C, H, W = x.shape
    OH, OW = out_size(H, k, stride), out_size(W, k, stride)
    windows = np.stack([x[:, :, i:i + stride * OH:stride, j:j + stride * OW:stride]
                        for i in range(k) for j in range(k)])          # (k*k, B, C, OH, OW)
    argmax = windows.argmax(axis=0)                                    # first maximum on ties
    out = np.take_along_axis(windows, argmax[None], axis=0)[0]
    if relu:
        out = relu_forward(out)
    return out, argmax.astype(np.int32)


def maxpool_backward(grad, argmax, x_shape: tuple, k: int, stride: int, out=None):
    """grad, argmax: (B, C, OH, OW) -> dx: (B, C, H, W).

    Only the winner of each window influenced the output, so only it receives
    the gradient; pixels shared by overlapping windows add up their shares.
    ``out``, the rectified output of ``maxpool_forward(..., relu=True)``, first
    passes the gradient through the ReLU: only where out > 0.
    """
    if out is not None:
        grad = relu_backward(grad, out)
    B, C, OH, OW = grad.shape
    dx = np.zeros(x_shape, dtype=grad.dtype)
    for i in range(k):
        for j in range(k):
            won = argmax == i * k + j
            dx[:, :, i:i + stride * OH:stride, j:j + stride * OW:stride] += np.where(won, grad, 0)
    return dx


def add_bias(y, b, relu: bool = False):
    """y: (N, F), b: (F,) -> y += b, row by row, in place; returns y. ``relu`` then rectifies y in
    place (a ReLU after the layer, fused in: the same values as relu_forward(y, inplace=True))."""
    y += b
    if relu:
        relu_forward(y, inplace=True)
    return y


def add_bias_checked(y, b, relu: bool = False) -> bool:
    """add_bias(y, b, relu), returning whether every value of y + b (before the ReLU) was finite."""
    y += b
    finite = bool(np.isfinite(y).all())
    if relu:
        relu_forward(y, inplace=True)
    return finite


def relu_forward(x, inplace: bool = False):
    """max(x, 0) elementwise, any shape; NaN stays NaN (so a diverging run is still caught).
    ``inplace`` writes the result into x and returns x."""
    return np.maximum(x, 0, out=x if inplace else None)


def relu_backward(grad, y):
    """grad, y = relu_forward(x): the same shape -> dx: grad where y > 0 (i.e. x > 0), else 0."""
    return grad * (y > 0)


# ---- optimizer updates, in place (PyTorch's rules; see optim.py) -------------------------------

def adam_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """One Adam step on arrays of any one shape, all updated in place: p (parameter), m and v (moments).

        g = g + weight_decay * p
        m = beta1 * m + (1 - beta1) * g           v = beta2 * v + (1 - beta2) * g^2
        p = p - lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
    """
    if weight_decay:
        g = g + weight_decay * p
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * (g * g)
    denom = np.sqrt(v) / np.sqrt(1 - beta2 ** step) + eps
    p -= (lr / (1 - beta1 ** step)) * (m / denom)


def sgd_update(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    """One SGD step, in place; ``buf`` (the momentum buffer) is used only when momentum > 0.

        g = g + weight_decay * p
        buf = g on the first step, else momentum * buf + (1 - dampening) * g
        p = p - lr * (g + momentum * buf if nesterov else buf)      (p - lr * g without momentum)
    """
    if weight_decay:
        g = g + weight_decay * p
    if momentum:
        if first:
            buf[...] = g
        else:
            buf *= momentum
            buf += (1 - dampening) * g
        g = g + momentum * buf if nesterov else buf
    p -= lr * g
