"""numba twins of :mod:`reference`: same arguments, same results, compiled loops.

Each kernel runs its outer loop with ``prange`` over independent slices (images,
or image-channel planes), so threads never write the same element and results do
not depend on the thread count. ``cache=True`` keeps the machine code on disk,
so only the first run pays for compilation.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .reference import out_size


@njit(parallel=True, cache=True)
def _im2col(x, kh, kw, stride, padding, OH, OW, cols):
    B, C, H, W = x.shape
    for b in prange(B):
        for oh in range(OH):
            for ow in range(OW):
                row = (b * OH + oh) * OW + ow
                col = 0
                for c in range(C):
                    for i in range(kh):
                        y = oh * stride - padding + i
                        for j in range(kw):
                            xx = ow * stride - padding + j
                            if 0 <= y < H and 0 <= xx < W:
                                cols[row, col] = x[b, c, y, xx]
                            else:
                                cols[row, col] = 0
                            col += 1


@njit(parallel=True, cache=True)
def _col2im(cols, kh, kw, stride, padding, OH, OW, dx):
    B, C, H, W = dx.shape
    for b in prange(B):
        for oh in range(OH):
            for ow in range(OW):
                row = (b * OH + oh) * OW + ow
                col = 0
                for c in range(C):
                    for i in range(kh):
                        y = oh * stride - padding + i
                        for j in range(kw):
                            xx = ow * stride - padding + j
                            if 0 <= y < H and 0 <= xx < W:
                                dx[b, c, y, xx] += cols[row, col]
                            col += 1


@njit(parallel=True, cache=True)
def _maxpool_forward(x, k, stride, out, argmax):
    B, C, H, W = x.shape
    OH, OW = out.shape[2], out.shape[3]
    for bc in prange(B * C):
        b, c = bc // C, bc % C
        for oh in range(OH):
            for ow in range(OW):
                y0, x0 = oh * stride, ow * stride
                best = x[b, c, y0, x0]
                where = 0
                for i in range(k):
                    for j in range(k):
                        v = x[b, c, y0 + i, x0 + j]
                        if v > best:  # strict: the first maximum wins a tie
                            best = v
                            where = i * k + j
                out[b, c, oh, ow] = best
                argmax[b, c, oh, ow] = where


@njit(parallel=True, cache=True)
def _maxpool_backward(grad, argmax, k, stride, dx):
    B, C, OH, OW = grad.shape
    for bc in prange(B * C):
        b, c = bc // C, bc % C
        for oh in range(OH):
            for ow in range(OW):
                a = argmax[b, c, oh, ow]
                dx[b, c, oh * stride + a // k, ow * stride + a % k] += grad[b, c, oh, ow]


def im2col(x, kh: int, kw: int, stride: int = 1, padding: int = 0):
    """x: (B, C, H, W) -> cols: (B * OH * OW, C * kh * kw)."""
    B, C, H, W = x.shape
    OH, OW = out_size(H, kh, stride, padding), out_size(W, kw, stride, padding)
    cols = np.empty((B * OH * OW, C * kh * kw), dtype=x.dtype)
    _im2col(x, kh, kw, stride, padding, OH, OW, cols)
    return cols


def col2im(cols, x_shape: tuple, kh: int, kw: int, stride: int = 1, padding: int = 0):
    """cols: (B * OH * OW, C * kh * kw) -> dx: (B, C, H, W), overlaps summed."""
    B, C, H, W = x_shape
    OH, OW = out_size(H, kh, stride, padding), out_size(W, kw, stride, padding)
    dx = np.zeros(x_shape, dtype=cols.dtype)
    _col2im(cols, kh, kw, stride, padding, OH, OW, dx)
    return dx


def maxpool_forward(x, k: int, stride: int):
    """x: (B, C, H, W) -> (out, argmax): (B, C, OH, OW) each; argmax = i * k + j."""
    B, C, H, W = x.shape
    shape = (B, C, out_size(H, k, stride), out_size(W, k, stride))
    out = np.empty(shape, dtype=x.dtype)
    argmax = np.empty(shape, dtype=np.int32)
    _maxpool_forward(x, k, stride, out, argmax)
    return out, argmax


def maxpool_backward(grad, argmax, x_shape: tuple, k: int, stride: int):
    """grad, argmax: (B, C, OH, OW) -> dx: (B, C, H, W)."""
    dx = np.zeros(x_shape, dtype=grad.dtype)
    _maxpool_backward(grad, argmax, k, stride, dx)
    return dx
