"""numba twins of :mod:`reference`: same arguments, same results, compiled loops.

Memory layout: the arrays are NCHW to every caller, but the kernels accept any
strides, and where they allocate a feature map they give it the layout of the
input it came from. A convolution's output, the matrix product's (B*OH*OW, OC)
rows seen through a transposed view, is "channels-last" in memory (the channel
is the fastest axis, as PyTorch's ``channels_last`` format); ReLU keeps that
layout, pooling keeps it, and the next convolution's im2col and backward
reshape then read it without a single transposing copy.

Each kernel runs its outer loop with ``prange`` over images, so threads never
write the same element and results do not depend on the thread count; small
calls run a serial copy of the same loops (see ``_twins``).
``cache=True`` keeps the machine code on disk, so only the first run compiles.
"""
from __future__ import annotations

import contextlib
import os
import types

import numba
import numpy as np
from numba import njit, prange

from . import reference
from .reference import map_size, out_size

# On a machine with few cores, OpenBLAS's threads and numba's OpenMP threads spin-wait
# for work and take the cores from each other between a matrix product and a kernel:
# a CNN training step ran twice as slowly. The workqueue layer does not spin. A layer
# named by the user (NUMBA_THREADING_LAYER) is respected.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"


# Waking numba's workqueue threads costs more than the whole of a small kernel (Adam on a bias),
# and a CNN step has a dozen small ones. A pass over memory gains at most half its time from a
# second core, so threads pay only from a few MB on; the threshold's measurements are in
# benches/NOTES.md ("Kernel thresholds").
SERIAL_BELOW = 1 << 20      # elements written by a call; below this the serial copy runs
# True while several threads run kernels at once (``threads.run_parallel``): numba's workqueue layer
# serves one caller at a time (a second one aborts the process), so every call runs its serial copy
_serial_only = [False]


@contextlib.contextmanager
def serial_only():
    """Within this block every kernel runs its serial copy, whatever its size."""
    before, _serial_only[0] = _serial_only[0], True
    try:
        yield
    finally:
        _serial_only[0] = before


def serial() -> bool:
    """Whether every kernel runs its serial copy now (inside ``serial_only``)."""
    return _serial_only[0]


def _twins(fn):
    """Compile ``fn`` twice, threaded (``prange`` runs in parallel) and serial (``prange`` is
    ``range``); returns ``run(work, *args)``, which picks the serial copy when ``work``, the
    number of elements the call writes, is below ``SERIAL_BELOW``. Both give the same results:
    every element is computed the same way, only by another thread."""
    # error_model="numpy": a float division by zero gives inf/nan as in NumPy instead of a Python
    # exception, so no check per division stands in the way of vectorising (Adam: 2x faster)
    # nogil: the threads of threads.run_parallel run kernels side by side
    threaded = njit(parallel=True, nogil=True, cache=True, error_model="numpy")(fn)
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__,
                              fn.__closure__)
    copy.__qualname__ = fn.__qualname__ + "_serial"    # numba's disk cache is keyed by the name
    serial = njit(nogil=True, cache=True, error_model="numpy")(copy)

    def run(work, *args):
        return (run.serial if work < SERIAL_BELOW or _serial_only[0] else run.threaded)(*args)
    run.threaded, run.serial, run.__doc__ = threaded, serial, fn.__doc__
    return run


def channels_last(x) -> bool:
    """True when the channel axis of an (B, C, H, W) array is the fastest-varying in memory."""
    return x.shape[1] > 1 and x.strides[1] < x.strides[3]


def empty_nchw(shape, dtype, last: bool):
    """An uninitialised (B, C, H, W) array, channels-last in memory when ``last``."""
    if last:
        B, C, H, W = shape
        return np.empty((B, H, W, C), dtype=dtype).transpose(0, 3, 1, 2)
    return np.empty(shape, dtype=dtype)


@njit(cache=True)
def _zero_image(a, b):
    """a[b] = 0 for a (B, C, H, W) array of any layout, channel innermost (contiguous when channels-last)."""
    for y in range(a.shape[2]):
        for xx in range(a.shape[3]):
            for c in range(a.shape[1]):
                a[b, c, y, xx] = 0


@_twins
def _im2col(x, kh, kw, stride, padding, OH, OW, cols):
    B, C, H, W = x.shape
    for b in prange(B):
        for oh in range(OH):
            for ow in range(OW):
                row = (b * OH + oh) * OW + ow
                y0, x0 = oh * stride - padding, ow * stride - padding
                for i in range(kh):
                    y = y0 + i
                    for j in range(kw):
                        xx = x0 + j
                        base = (i * kw + j) * C
                        if 0 <= y < H and 0 <= xx < W:
                            for c in range(C):      # contiguous for channels-last input
                                cols[row, base + c] = x[b, c, y, xx]
                        else:
                            for c in range(C):
                                cols[row, base + c] = 0
                if cols.shape[1] > kh * kw * C:     # the bias column (im2col's ``ones``)
                    cols[row, kh * kw * C] = 1


@_twins
def _im2col_cl(x, kh, kw, stride, padding, OH, OW, cols):
    # Channels-last twin on a contiguous (B, H, W, C) array: the same loops as _im2col, but numba
    # knows both inner runs of C values are contiguous and vectorises the copy.
    B, H, W, C = x.shape
    for b in prange(B):
        for oh in range(OH):
            for ow in range(OW):
                row = cols[(b * OH + oh) * OW + ow]
                y0, x0 = oh * stride - padding, ow * stride - padding
                for i in range(kh):
                    y = y0 + i
                    for j in range(kw):
                        xx = x0 + j
                        base = (i * kw + j) * C
                        if 0 <= y < H and 0 <= xx < W:
                            src = x[b, y, xx]
                            for c in range(C):
                                row[base + c] = src[c]
                        else:
                            for c in range(C):
                                row[base + c] = 0
                if row.shape[0] > kh * kw * C:      # the bias column (im2col's ``ones``)
                    row[kh * kw * C] = 1


@_twins
def _im2col_nchw(x, kh, kw, stride, padding, OH, OW, cols):
    # Twin for a C-contiguous (B, C, H, W) input with few channels (a network's RGB input): the
    # loops above would copy runs of C = 3 values; here each (i, j, c) column of an output row's
    # block of OW rows is filled from one contiguous image row. For 16 channels and more the loops
    # above copy long enough runs to win (benches/NOTES.md, "Kernel thresholds").
    B, C, H, W = x.shape
    K = kh * kw * C
    for b in prange(B):
        for oh in range(OH):
            r0 = (b * OH + oh) * OW
            for i in range(kh):
                y = oh * stride + i - padding
                for j in range(kw):
                    for c in range(C):
                        col = (i * kw + j) * C + c
                        if 0 <= y < H:
                            for ow in range(OW):
                                xx = ow * stride + j - padding
                                cols[r0 + ow, col] = x[b, c, y, xx] if 0 <= xx < W else 0
                        else:
                            for ow in range(OW):
                                cols[r0 + ow, col] = 0
            if cols.shape[1] > K:                   # the bias column (im2col's ``ones``)
                for ow in range(OW):
                    cols[r0 + ow, K] = 1


NCHW_TWIN_MAX_C = 8        # _im2col_nchw for a C-contiguous input of at most this many channels


@_twins
def _col2im(cols, kh, kw, stride, padding, OH, OW, dx):
    # On a contiguous (B, H, W, C) output (col2im makes it so): numba knows the runs of C values
    # in a row of cols and in dx are contiguous, and vectorises the sums. Each pixel's sum runs
    # over rows, then kernel offsets (reference.col2im adds in another order: tests allow rounding).
    B, H, W, C = dx.shape
    for b in prange(B):
        dx[b] = 0
        for oh in range(OH):
            for ow in range(OW):
                row = cols[(b * OH + oh) * OW + ow]
                y0, x0 = oh * stride - padding, ow * stride - padding
                for i in range(kh):
                    y = y0 + i
                    if y < 0 or y >= H:
                        continue
                    for j in range(kw):
                        xx = x0 + j
                        if xx < 0 or xx >= W:
                            continue
                        d, base = dx[b, y, xx], (i * kw + j) * C
                        for c in range(C):
                            d[c] += row[base + c]


@_twins
def _maxpool_forward(x, k, stride, out, argmax):
    B, C, H, W = x.shape
    OH, OW = out.shape[2], out.shape[3]
    for b in prange(B):
        for oh in range(OH):
            for ow in range(OW):
                y0, x0 = oh * stride, ow * stride
                for c in range(C):              # start from the window's first element
                    out[b, c, oh, ow] = x[b, c, y0, x0]
                    argmax[b, c, oh, ow] = 0
                for i in range(k):
                    for j in range(k):
                        for c in range(C):      # innermost: contiguous for channels-last maps
                            v = x[b, c, y0 + i, x0 + j]
                            if v > out[b, c, oh, ow]:   # strict: the first maximum wins a tie
                                out[b, c, oh, ow] = v
                                argmax[b, c, oh, ow] = i * k + j


@_twins
def _maxpool_backward(grad, argmax, k, stride, dx):
    B, C, OH, OW = grad.shape
    for b in prange(B):
        _zero_image(dx, b)
        for oh in range(OH):
            for ow in range(OW):
                for c in range(C):
                    a = argmax[b, c, oh, ow]
                    dx[b, c, oh * stride + a // k, ow * stride + a % k] += grad[b, c, oh, ow]


@_twins
def _maxpool_forward_cl(x, k, stride, out, argmax, relu, zero):
    # Channels-last twin on contiguous (B, H, W, C) arrays: the innermost loop runs over C
    # contiguous values with selects instead of branches, which LLVM vectorises (8x here).
    # ``relu`` rectifies each output as it is finished (NaN passes, as in _relu_forward); ``zero``
    # is 0 in the arrays' dtype (an int literal would make numba compute in float64).
    B, H, W, C = x.shape
    OH, OW = out.shape[1], out.shape[2]
    for b in prange(B):
        for oh in range(OH):
            for ow in range(OW):
                y0, x0 = oh * stride, ow * stride
                o, a, first = out[b, oh, ow], argmax[b, oh, ow], x[b, y0, x0]
                for c in range(C):
                    o[c] = first[c]
                    a[c] = 0
                for i in range(k):
                    for j in range(k):
                        if i == 0 and j == 0:
                            continue
                        row, w = x[b, y0 + i, x0 + j], i * k + j
                        for c in range(C):
                            better = row[c] > o[c]       # strict: the first maximum wins a tie
                            o[c] = row[c] if better else o[c]
                            a[c] = w if better else a[c]
                if relu:
                    for c in range(C):
                        o[c] = zero if o[c] < zero else o[c]


@_twins
def _maxpool_backward_cl(grad, argmax, k, stride, dx, tiles, zero, out, masked):
    # Channels-last twin: every window adds its gradient where its winner sits (0 elsewhere), in
    # the same window order as the general kernel, so the sums come out bit for bit the same.
    # When the windows tile the map exactly (``tiles``: 2x2 windows, stride 2, even sides), each
    # element is written once instead, with no zeroing pass first: zero + g is what 0 += g gave.
    # ``zero`` is 0 in the arrays' dtype (an int literal would make numba compute in float64).
    # ``masked``: the ReLU that ran inside the forward pass (see _maxpool_forward_cl) passes the
    # gradient only where its output ``out`` is > 0.
    B, OH, OW, C = grad.shape
    for b in prange(B):
        if not tiles:
            dx[b] = 0
        for oh in range(OH):
            for ow in range(OW):
                g, a, y = grad[b, oh, ow], argmax[b, oh, ow], out[b, oh, ow]
                for i in range(k):
                    for j in range(k):
                        d, w = dx[b, oh * stride + i, ow * stride + j], i * k + j
                        for c in range(C):
                            won = a[c] == w and (not masked or y[c] > zero)
                            d[c] = (zero if tiles else d[c]) + (g[c] if won else zero)


def _as_channels_last(x):
    """(B, C, H, W) -> contiguous (B, H, W, C): a free view for channels-last memory, else a copy."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def im2col(x, kh: int, kw: int, stride: int = 1, padding: int = 0, out=None, ones: bool = False, out_hw=None):
    """x: (B, C, H, W), any memory layout -> cols: (B * OH * OW, kh * kw * C [+ 1 if ones]), into
    ``out`` if given; see reference.im2col (and ``out_hw`` there: the kernels loop over OH x OW)."""
    B, C, H, W = x.shape
    OH, OW = map_size(H, W, kh, kw, stride, padding, out_hw)
    cols = np.empty((B * OH * OW, C * kh * kw + bool(ones)), dtype=x.dtype) if out is None else out
    if channels_last(x) and x.transpose(0, 2, 3, 1).flags.c_contiguous and cols.flags.c_contiguous:
        _im2col_cl(cols.size, x.transpose(0, 2, 3, 1), kh, kw, stride, padding, OH, OW, cols)
    elif C <= NCHW_TWIN_MAX_C and x.flags.c_contiguous and cols.flags.c_contiguous:
        _im2col_nchw(cols.size, x, kh, kw, stride, padding, OH, OW, cols)
    else:
        _im2col(cols.size, x, kh, kw, stride, padding, OH, OW, cols)
    return cols


def col2im(cols, x_shape: tuple, kh: int, kw: int, stride: int = 1, padding: int = 0, out_hw=None, out=None):
    """cols: (B * OH * OW, kh * kw * C) -> dx: (B, C, H, W), channels-last in memory, overlaps summed;
    into ``out`` (a channels-last (B, C, H, W) array) if given."""
    B, C, H, W = x_shape
    OH, OW = map_size(H, W, kh, kw, stride, padding, out_hw)
    dx = empty_nchw(x_shape, cols.dtype, last=True) if out is None else out
    if tuple(dx.shape) != tuple(x_shape) or dx.dtype != cols.dtype or not dx.transpose(0, 2, 3, 1).flags.c_contiguous:
        raise ValueError(f"col2im: out must be a channels-last {cols.dtype} array of shape {tuple(x_shape)}, "
                         f"got {dx.shape} {dx.dtype}")
    _col2im(dx.size, np.ascontiguousarray(cols), kh, kw, stride, padding, OH, OW, dx.transpose(0, 2, 3, 1))
    return dx


def maxpool_forward(x, k: int, stride: int, relu: bool = False):
    """x: (B, C, H, W) -> (out, argmax): (B, C, OH, OW) each, in x's memory layout; argmax = i * k + j.
    ``relu`` rectifies out (in the same pass for channels-last input)."""
    B, C, H, W = x.shape
    shape = (B, C, out_size(H, k, stride), out_size(W, k, stride))
    last = channels_last(x)
    out = empty_nchw(shape, x.dtype, last)
    argmax = empty_nchw(shape, np.int32, last)
    if last and x.transpose(0, 2, 3, 1).flags.c_contiguous:
        _maxpool_forward_cl(out.size, x.transpose(0, 2, 3, 1), k, stride, out.transpose(0, 2, 3, 1),
                            argmax.transpose(0, 2, 3, 1), relu, x.dtype.type(0))
    else:
        _maxpool_forward(out.size, x, k, stride, out, argmax)
        if relu:
            relu_forward(out, inplace=True)
    return out, argmax


def maxpool_backward(grad, argmax, x_shape: tuple, k: int, stride: int, out=None):
    """grad, argmax: (B, C, OH, OW) -> dx: (B, C, H, W), in the memory layout of ``argmax``; with
    ``out`` (see reference.maxpool_backward) the ReLU's mask is applied in the same pass."""
    last = channels_last(argmax)
    dx = empty_nchw(x_shape, grad.dtype, last)
    if last and argmax.transpose(0, 2, 3, 1).flags.c_contiguous and (out is None or channels_last(out)):
        B, C, H, W = x_shape
        tiles = stride == k and H == argmax.shape[2] * k and W == argmax.shape[3] * k
        g = _as_channels_last(grad)
        y = g if out is None else _as_channels_last(out)
        _maxpool_backward_cl(dx.size, g, argmax.transpose(0, 2, 3, 1), k, stride, dx.transpose(0, 2, 3, 1),
                             tiles, dx.dtype.type(0), y, out is not None)
    else:
        if out is not None:
            grad = relu_backward(grad, out)
        _maxpool_backward(dx.size, grad, argmax, k, stride, dx)
    return dx


# ---- Winograd F(2x2, 3x3) transforms (see reference.py), channels-last --------------------------------
#
# Every loop below has one store stream and runs over C contiguous values: the 16 outputs of a tile
# written by one loop made LLVM give up vectorising (it cannot tell the output rows from the input,
# so it assumes they may alias). Each tile's intermediate rows live in
# a small per-image buffer.

@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _block(x, b, top, left, d, zero):
    # d (n, n, C) = image b's n x n block of the channels-last x (B, H, W, C) from row ``top`` and column
    # ``left`` on, zeros outside it (the padding, or the rows and columns past a map)
    H, W, C = x.shape[1], x.shape[2], x.shape[3]
    for r in range(d.shape[0]):
        yy = top + r
        for j in range(d.shape[1]):
            xx = left + j
            if 0 <= yy < H and 0 <= xx < W:
                for c in range(C):
                    d[r, j, c] = x[b, yy, xx, c]
            else:
                for c in range(C):
                    d[r, j, c] = zero


@_twins
def _winograd_input(x, TH, TW, padding, V, zero, t0):
    # x: channels-last input (B, H, W, C); V: (16, T, C), x's tiles written from tile t0 on; zero: 0 in
    # x's dtype. Each tile's 4x4 block (zeros outside the input: the padding) is first copied into a
    # small buffer
    B, H, W, C = x.shape
    for b in prange(B):
        d = np.empty((4, 4, C), dtype=x.dtype)              # the tile's block
        m = np.empty((4, 4, C), dtype=x.dtype)              # BT d: rows combined, per column j
        for ty in range(TH):
            for tx in range(TW):
                t = t0 + (b * TH + ty) * TW + tx
                _block(x, b, 2 * ty - padding, 2 * tx - padding, d, zero)
                for j in range(4):
                    for c in range(C):
                        m[0, j, c] = d[0, j, c] - d[2, j, c]
                    for c in range(C):
                        m[1, j, c] = d[1, j, c] + d[2, j, c]
                    for c in range(C):
                        m[2, j, c] = d[2, j, c] - d[1, j, c]
                    for c in range(C):
                        m[3, j, c] = d[1, j, c] - d[3, j, c]
                for i in range(4):                             # (BT d) B: columns combined
                    for c in range(C):
                        V[4 * i, t, c] = m[i, 0, c] - m[i, 2, c]
                    for c in range(C):
                        V[4 * i + 1, t, c] = m[i, 1, c] + m[i, 2, c]
                    for c in range(C):
                        V[4 * i + 2, t, c] = m[i, 2, c] - m[i, 1, c]
                    for c in range(C):
                        V[4 * i + 3, t, c] = m[i, 1, c] - m[i, 3, c]


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _winograd_rows_out(M, t, m):
    # AT M for tile t: its two output rows combined from M's four, per column j; m: (2, 4, OC)
    OC = m.shape[2]
    for j in range(4):
        for o in range(OC):
            m[0, j, o] = M[j, t, o] + M[4 + j, t, o] + M[8 + j, t, o]
        for o in range(OC):
            m[1, j, o] = M[4 + j, t, o] - M[8 + j, t, o] - M[12 + j, t, o]


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _winograd_tile_grad(q, h, dM, t):
    # dM[:, t] = A q AT for tile t's 2x2 output gradient q (2, 2, OC); h: (4, 2, OC), A q by rows
    OC = q.shape[2]
    for e in range(2):
        for o in range(OC):
            h[0, e, o] = q[0, e, o]
        for o in range(OC):
            h[1, e, o] = q[0, e, o] + q[1, e, o]
        for o in range(OC):
            h[2, e, o] = q[0, e, o] - q[1, e, o]
        for o in range(OC):
            h[3, e, o] = -q[1, e, o]
    for i in range(4):
        for o in range(OC):
            dM[4 * i, t, o] = h[i, 0, o]
        for o in range(OC):
            dM[4 * i + 1, t, o] = h[i, 0, o] + h[i, 1, o]
        for o in range(OC):
            dM[4 * i + 2, t, o] = h[i, 0, o] - h[i, 1, o]
        for o in range(OC):
            dM[4 * i + 3, t, o] = -h[i, 1, o]


@_twins
def _winograd_output(M, TH, TW, bias, y):
    # M: (16, B * TH * TW, OC); y: channels-last (B, OH, OW, OC), bias (OC,) added
    B, OH, OW, OC = y.shape
    for b in prange(B):
        m = np.empty((2, 4, OC), dtype=M.dtype)             # AT M: rows combined, per column j
        for ty in range(TH):
            for tx in range(TW):
                t = (b * TH + ty) * TW + tx
                _winograd_rows_out(M, t, m)
                for a in range(2):
                    yy, xx = 2 * ty + a, 2 * tx
                    if yy >= OH:
                        continue
                    for o in range(OC):
                        y[b, yy, xx, o] = m[a, 0, o] + m[a, 1, o] + m[a, 2, o] + bias[o]
                    if xx + 1 < OW:
                        for o in range(OC):
                            y[b, yy, xx + 1, o] = m[a, 1, o] - m[a, 2, o] - m[a, 3, o] + bias[o]


@_twins
def _winograd_grad_output(g, TH, TW, dM, zero, t0):
    # g: channels-last output gradient (B, OH, OW, OC); dM: (16, T, OC), g's tiles written from tile t0
    # on; zero: 0 in g's dtype
    B, OH, OW, OC = g.shape
    for b in prange(B):
        q = np.empty((2, 2, OC), dtype=g.dtype)              # the tile's 2x2 gradients, 0 past the map
        h = np.empty((4, 2, OC), dtype=g.dtype)              # A g: rows, per column
        for ty in range(TH):
            for tx in range(TW):
                t = t0 + (b * TH + ty) * TW + tx
                _block(g, b, 2 * ty, 2 * tx, q, zero)
                _winograd_tile_grad(q, h, dM, t)


@_twins
def _winograd_output_pool(M, TH, TW, bias, out, argmax, relu, zero):
    # _winograd_output with the 2x2 max-pooling that reads it fused in: every tile is one pooling
    # window, so only its maximum (and the winner's offset) is written, in the pooling kernel's order
    # (the first element, then a strict > in row-major order) and with the same sums as
    # _winograd_output: the same bits as the two kernels in turn. out, argmax: channels-last
    # (B, TH, TW, OC); ``relu`` rectifies the maxima (_maxpool_forward_cl's fused ReLU)
    B, OC = out.shape[0], out.shape[3]
    for b in prange(B):
        m = np.empty((2, 4, OC), dtype=M.dtype)
        for ty in range(TH):
            for tx in range(TW):
                t = (b * TH + ty) * TW + tx
                _winograd_rows_out(M, t, m)
                mx, a = out[b, ty, tx], argmax[b, ty, tx]
                for o in range(OC):
                    mx[o] = m[0, 0, o] + m[0, 1, o] + m[0, 2, o] + bias[o]
                    a[o] = 0
                for r in range(2):
                    for e in range(2):
                        w = 2 * r + e
                        if w == 0:
                            continue
                        for o in range(OC):
                            if e == 0:
                                v = m[r, 0, o] + m[r, 1, o] + m[r, 2, o] + bias[o]
                            else:
                                v = m[r, 1, o] - m[r, 2, o] - m[r, 3, o] + bias[o]
                            better = v > mx[o]
                            mx[o] = v if better else mx[o]
                            a[o] = w if better else a[o]
                if relu:
                    for o in range(OC):
                        mx[o] = zero if mx[o] < zero else mx[o]


@_twins
def _winograd_grad_output_pool(gp, argmax, out, TH, TW, dM, masked, zero, t0):
    # _maxpool_backward_cl (2x2 windows tiling the map) and _winograd_grad_output in one: each tile's
    # 2x2 gradient is zero + the window's gradient at its winner (where ``out`` > 0 when ``masked``)
    # and zero + zero elsewhere, as the pooling kernel writes it, then transformed as there (from tile t0 on)
    B, OC = gp.shape[0], gp.shape[3]
    for b in prange(B):
        q = np.empty((2, 2, OC), dtype=gp.dtype)
        h = np.empty((4, 2, OC), dtype=gp.dtype)
        for ty in range(TH):
            for tx in range(TW):
                t = t0 + (b * TH + ty) * TW + tx
                g, a, y = gp[b, ty, tx], argmax[b, ty, tx], out[b, ty, tx]
                for r in range(2):
                    for e in range(2):
                        w = 2 * r + e
                        for o in range(OC):
                            won = a[o] == w and (not masked or y[o] > zero)
                            q[r, e, o] = zero + (g[o] if won else zero)
                _winograd_tile_grad(q, h, dM, t)


@_twins
def _winograd_grad_input(dV, TH, TW, padding, dx):
    # dV: (16, B * TH * TW, C); dx: channels-last (B, H, W, C), each tile's B dV BT added in
    B, H, W, C = dx.shape
    for b in prange(B):
        dx[b] = 0
        h = np.empty((4, 4, C), dtype=dV.dtype)              # B dV: rows, per column j
        dd = np.empty((4, C), dtype=dV.dtype)                # one row r of B dV BT
        for ty in range(TH):
            for tx in range(TW):
                t = (b * TH + ty) * TW + tx
                for j in range(4):
                    for c in range(C):
                        h[0, j, c] = dV[j, t, c]
                    for c in range(C):
                        h[1, j, c] = dV[4 + j, t, c] - dV[8 + j, t, c] + dV[12 + j, t, c]
                    for c in range(C):
                        h[2, j, c] = dV[4 + j, t, c] + dV[8 + j, t, c] - dV[j, t, c]
                    for c in range(C):
                        h[3, j, c] = -dV[12 + j, t, c]
                for r in range(4):
                    yy = 2 * ty + r - padding
                    if yy < 0 or yy >= H:
                        continue
                    for c in range(C):
                        dd[0, c] = h[r, 0, c]
                    for c in range(C):
                        dd[1, c] = h[r, 1, c] - h[r, 2, c] + h[r, 3, c]
                    for c in range(C):
                        dd[2, c] = h[r, 1, c] + h[r, 2, c] - h[r, 0, c]
                    for c in range(C):
                        dd[3, c] = -h[r, 3, c]
                    for s in range(4):
                        xx = 2 * tx + s - padding
                        if 0 <= xx < W:
                            for c in range(C):
                                dx[b, yy, xx, c] += dd[s, c]


# ---- Winograd F(4x4, 3x3) transforms, channels-last ----------------------------------------------------
#
# The same passes as F(2x2, 3x3)'s above over 6x6 blocks (tiles of 4x4 outputs overlap by 2 inputs),
# each row of a transform (reference.WINOGRAD[4]) written out as one loop over C contiguous values of
# arrays indexed whole (a view passed to a helper has unknown strides, and its loops were 2x slower).
# The coefficients are of the arrays' dtype (an int literal would make numba compute in float64).

@_twins
def _wino4_input(x, TH, TW, padding, V, zero, t0):
    # x: channels-last (B, H, W, C); V: (36, T, C) from tile t0 on: BT d B of each tile's 6x6 block d
    B, H, W, C = x.shape
    k2, k4, k5 = x.dtype.type(2), x.dtype.type(4), x.dtype.type(5)
    for b in prange(B):
        d = np.empty((6, 6, C), dtype=x.dtype)              # the block
        m = np.empty((6, 6, C), dtype=x.dtype)              # BT d, by row i then column j
        for ty in range(TH):
            for tx in range(TW):
                t = t0 + (b * TH + ty) * TW + tx
                _block(x, b, 4 * ty - padding, 4 * tx - padding, d, zero)
                for j in range(6):                                 # BT d: rows combined, per column j
                    for c in range(C):
                        m[0, j, c] = k4 * d[0, j, c] - k5 * d[2, j, c] + d[4, j, c]
                    for c in range(C):
                        m[1, j, c] = -k4 * d[1, j, c] - k4 * d[2, j, c] + d[3, j, c] + d[4, j, c]
                    for c in range(C):
                        m[2, j, c] = k4 * d[1, j, c] - k4 * d[2, j, c] - d[3, j, c] + d[4, j, c]
                    for c in range(C):
                        m[3, j, c] = -k2 * d[1, j, c] - d[2, j, c] + k2 * d[3, j, c] + d[4, j, c]
                    for c in range(C):
                        m[4, j, c] = k2 * d[1, j, c] - d[2, j, c] - k2 * d[3, j, c] + d[4, j, c]
                    for c in range(C):
                        m[5, j, c] = k4 * d[1, j, c] - k5 * d[3, j, c] + d[5, j, c]
                for i in range(6):                                 # (BT d) B: columns combined
                    for c in range(C):
                        V[6 * i, t, c] = k4 * m[i, 0, c] - k5 * m[i, 2, c] + m[i, 4, c]
                    for c in range(C):
                        V[6 * i + 1, t, c] = -k4 * m[i, 1, c] - k4 * m[i, 2, c] + m[i, 3, c] + m[i, 4, c]
                    for c in range(C):
                        V[6 * i + 2, t, c] = k4 * m[i, 1, c] - k4 * m[i, 2, c] - m[i, 3, c] + m[i, 4, c]
                    for c in range(C):
                        V[6 * i + 3, t, c] = -k2 * m[i, 1, c] - m[i, 2, c] + k2 * m[i, 3, c] + m[i, 4, c]
                    for c in range(C):
                        V[6 * i + 4, t, c] = k2 * m[i, 1, c] - m[i, 2, c] - k2 * m[i, 3, c] + m[i, 4, c]
                    for c in range(C):
                        V[6 * i + 5, t, c] = k4 * m[i, 1, c] - k5 * m[i, 3, c] + m[i, 5, c]


@_twins
def _wino4_output(M, TH, TW, bias, y):
    # M: (36, B * TH * TW, OC); y: channels-last (B, OH, OW, OC) = AT M A + bias
    B, OH, OW, OC = y.shape
    k2, k4, k8 = M.dtype.type(2), M.dtype.type(4), M.dtype.type(8)
    for b in prange(B):
        h = np.empty((4, 6, OC), dtype=M.dtype)             # AT M, by row a then column j
        r = np.empty((4, OC), dtype=M.dtype)                # one row a of AT M A
        for ty in range(TH):
            for tx in range(TW):
                t = (b * TH + ty) * TW + tx
                for j in range(6):                                 # AT M: rows combined, per column j
                    for o in range(OC):
                        h[0, j, o] = M[j, t, o] + M[6 + j, t, o] + M[12 + j, t, o] + M[18 + j, t, o] + M[24 + j, t, o]
                    for o in range(OC):
                        h[1, j, o] = M[6 + j, t, o] - M[12 + j, t, o] + k2 * M[18 + j, t, o] - k2 * M[24 + j, t, o]
                    for o in range(OC):
                        h[2, j, o] = M[6 + j, t, o] + M[12 + j, t, o] + k4 * M[18 + j, t, o] + k4 * M[24 + j, t, o]
                    for o in range(OC):
                        h[3, j, o] = M[6 + j, t, o] - M[12 + j, t, o] + k8 * M[18 + j, t, o] - k8 * M[24 + j, t, o] + M[30 + j, t, o]
                for a in range(4):
                    yy = 4 * ty + a
                    if yy >= OH:
                        continue
                    for o in range(OC):
                        r[0, o] = h[a, 0, o] + h[a, 1, o] + h[a, 2, o] + h[a, 3, o] + h[a, 4, o]
                    for o in range(OC):
                        r[1, o] = h[a, 1, o] - h[a, 2, o] + k2 * h[a, 3, o] - k2 * h[a, 4, o]
                    for o in range(OC):
                        r[2, o] = h[a, 1, o] + h[a, 2, o] + k4 * h[a, 3, o] + k4 * h[a, 4, o]
                    for o in range(OC):
                        r[3, o] = h[a, 1, o] - h[a, 2, o] + k8 * h[a, 3, o] - k8 * h[a, 4, o] + h[a, 5, o]
                    for e in range(4):
                        xx = 4 * tx + e
                        if xx < OW:
                            for o in range(OC):
                                y[b, yy, xx, o] = r[e, o] + bias[o]


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _bn_grad_block(g, x, mean, inv_std, w, bb, masked, scale, n, dbias, dweight, b, top, left, d, zero):
    # d (n, n, C) = image b's block of batch norm's input gradient, computed as _bn_grad_input computes
    # it (from_x: xhat recomputed from x; the same expression, so the same bits), zeros past the map
    H, W, C = g.shape[1], g.shape[2], g.shape[3]
    for r in range(d.shape[0]):
        yy = top + r
        for j in range(d.shape[1]):
            xx = left + j
            if 0 <= yy < H and 0 <= xx < W:
                for c in range(C):
                    h = (x[b, yy, xx, c] - mean[c]) * inv_std[c]
                    v = g[b, yy, xx, c] if (not masked or w[c] * h + bb[c] > zero) else zero
                    d[r, j, c] = scale[c] * (n * v - dbias[c] - h * dweight[c])
            else:
                for c in range(C):
                    d[r, j, c] = zero


@_twins
def _wino4_grad_output(g, TH, TW, dM, zero, t0, bn, x, mean, inv_std, w, bb, masked, scale, n, dbias, dweight):
    # g: channels-last (B, OH, OW, OC); dM: (36, T, OC) from tile t0 on: A q AT of each tile's 4x4
    # gradient q (zeros past the map). With ``bn``, q is batch norm's input gradient computed from its
    # terms (g the gradient batch norm received, x its input, ...: see BatchNormInputGrad), never
    # written out as a map
    B, OH, OW, OC = g.shape
    k2, k4, k8 = g.dtype.type(2), g.dtype.type(4), g.dtype.type(8)
    for b in prange(B):
        q = np.empty((4, 4, OC), dtype=g.dtype)              # the gradient, 0 past the map
        h = np.empty((6, 4, OC), dtype=g.dtype)              # A q, by row i then column e
        for ty in range(TH):
            for tx in range(TW):
                t = t0 + (b * TH + ty) * TW + tx
                if bn:
                    _bn_grad_block(g, x, mean, inv_std, w, bb, masked, scale, n, dbias, dweight, b, 4 * ty, 4 * tx,
                                   q, zero)
                else:
                    _block(g, b, 4 * ty, 4 * tx, q, zero)
                for e in range(4):                                 # A q: rows, per column e
                    for o in range(OC):
                        h[0, e, o] = q[0, e, o]
                    for o in range(OC):
                        h[1, e, o] = q[0, e, o] + q[1, e, o] + q[2, e, o] + q[3, e, o]
                    for o in range(OC):
                        h[2, e, o] = q[0, e, o] - q[1, e, o] + q[2, e, o] - q[3, e, o]
                    for o in range(OC):
                        h[3, e, o] = q[0, e, o] + k2 * q[1, e, o] + k4 * q[2, e, o] + k8 * q[3, e, o]
                    for o in range(OC):
                        h[4, e, o] = q[0, e, o] - k2 * q[1, e, o] + k4 * q[2, e, o] - k8 * q[3, e, o]
                    for o in range(OC):
                        h[5, e, o] = q[3, e, o]
                for i in range(6):                                 # (A q) AT: columns
                    for o in range(OC):
                        dM[6 * i, t, o] = h[i, 0, o]
                    for o in range(OC):
                        dM[6 * i + 1, t, o] = h[i, 0, o] + h[i, 1, o] + h[i, 2, o] + h[i, 3, o]
                    for o in range(OC):
                        dM[6 * i + 2, t, o] = h[i, 0, o] - h[i, 1, o] + h[i, 2, o] - h[i, 3, o]
                    for o in range(OC):
                        dM[6 * i + 3, t, o] = h[i, 0, o] + k2 * h[i, 1, o] + k4 * h[i, 2, o] + k8 * h[i, 3, o]
                    for o in range(OC):
                        dM[6 * i + 4, t, o] = h[i, 0, o] - k2 * h[i, 1, o] + k4 * h[i, 2, o] - k8 * h[i, 3, o]
                    for o in range(OC):
                        dM[6 * i + 5, t, o] = h[i, 3, o]


@_twins
def _wino4_grad_input(dV, TH, TW, padding, dx):
    # dV: (36, B * TH * TW, C); dx: channels-last (B, H, W, C), each tile's BT^T dV BT added in
    B, H, W, C = dx.shape
    k2, k4, k5 = dV.dtype.type(2), dV.dtype.type(4), dV.dtype.type(5)
    for b in prange(B):
        dx[b] = 0
        h = np.empty((6, 6, C), dtype=dV.dtype)              # BT^T dV, by row r then column j
        dd = np.empty((6, C), dtype=dV.dtype)                # one row r of BT^T dV BT
        for ty in range(TH):
            for tx in range(TW):
                t = (b * TH + ty) * TW + tx
                for j in range(6):                                 # BT^T dV: rows, per column j
                    for c in range(C):
                        h[0, j, c] = k4 * dV[j, t, c]
                    for c in range(C):
                        h[1, j, c] = -k4 * dV[6 + j, t, c] + k4 * dV[12 + j, t, c] - k2 * dV[18 + j, t, c] + k2 * dV[24 + j, t, c] + k4 * dV[30 + j, t, c]
                    for c in range(C):
                        h[2, j, c] = -k5 * dV[j, t, c] - k4 * dV[6 + j, t, c] - k4 * dV[12 + j, t, c] - dV[18 + j, t, c] - dV[24 + j, t, c]
                    for c in range(C):
                        h[3, j, c] = dV[6 + j, t, c] - dV[12 + j, t, c] + k2 * dV[18 + j, t, c] - k2 * dV[24 + j, t, c] - k5 * dV[30 + j, t, c]
                    for c in range(C):
                        h[4, j, c] = dV[j, t, c] + dV[6 + j, t, c] + dV[12 + j, t, c] + dV[18 + j, t, c] + dV[24 + j, t, c]
                    for c in range(C):
                        h[5, j, c] = dV[30 + j, t, c]
                for r in range(6):
                    yy = 4 * ty + r - padding
                    if yy < 0 or yy >= H:
                        continue
                    for c in range(C):
                        dd[0, c] = k4 * h[r, 0, c]
                    for c in range(C):
                        dd[1, c] = -k4 * h[r, 1, c] + k4 * h[r, 2, c] - k2 * h[r, 3, c] + k2 * h[r, 4, c] + k4 * h[r, 5, c]
                    for c in range(C):
                        dd[2, c] = -k5 * h[r, 0, c] - k4 * h[r, 1, c] - k4 * h[r, 2, c] - h[r, 3, c] - h[r, 4, c]
                    for c in range(C):
                        dd[3, c] = h[r, 1, c] - h[r, 2, c] + k2 * h[r, 3, c] - k2 * h[r, 4, c] - k5 * h[r, 5, c]
                    for c in range(C):
                        dd[4, c] = h[r, 0, c] + h[r, 1, c] + h[r, 2, c] + h[r, 3, c] + h[r, 4, c]
                    for c in range(C):
                        dd[5, c] = h[r, 5, c]
                    for s in range(6):
                        xx = 4 * tx + s - padding
                        if 0 <= xx < W:
                            for c in range(C):
                                dx[b, yy, xx, c] += dd[s, c]


@njit(nogil=True, cache=True, error_model="numpy")
def _wino4_weight(wt, G, U):
    # wt: the weight as (C, 3, 3, OC); U: (36, C, OC) = G w GT per channel pair; G (6, 3) in wt's dtype
    C, OC = wt.shape[0], wt.shape[3]
    t = np.empty((6, 3, OC), dtype=wt.dtype)             # G w: rows combined, per column j
    for c in range(C):
        for a in range(6):
            for j in range(3):
                for o in range(OC):
                    t[a, j, o] = G[a, 0] * wt[c, 0, j, o] + G[a, 1] * wt[c, 1, j, o] + G[a, 2] * wt[c, 2, j, o]
        for a in range(6):
            for b in range(6):
                for o in range(OC):
                    U[6 * a + b, c, o] = G[b, 0] * t[a, 0, o] + G[b, 1] * t[a, 1, o] + G[b, 2] * t[a, 2, o]


@njit(nogil=True, cache=True, error_model="numpy")
def _wino4_weight_grad(dU, G, dw):
    # the adjoint of _wino4_weight: dw (C, 3, 3, OC) = GT dU G per channel pair
    C, OC = dU.shape[1], dU.shape[2]
    t = np.empty((6, 3, OC), dtype=dU.dtype)             # dU G: columns combined, per row a
    for c in range(C):
        for a in range(6):
            for j in range(3):
                for o in range(OC):
                    t[a, j, o] = (G[0, j] * dU[6 * a, c, o] + G[1, j] * dU[6 * a + 1, c, o]
                                  + G[2, j] * dU[6 * a + 2, c, o] + G[3, j] * dU[6 * a + 3, c, o]
                                  + G[4, j] * dU[6 * a + 4, c, o] + G[5, j] * dU[6 * a + 5, c, o])
        for i in range(3):
            for j in range(3):
                for o in range(OC):
                    dw[c, i, j, o] = (G[0, i] * t[0, j, o] + G[1, i] * t[1, j, o] + G[2, i] * t[2, j, o]
                                      + G[3, i] * t[3, j, o] + G[4, i] * t[4, j, o] + G[5, i] * t[5, j, o])


@njit(nogil=True, cache=True, error_model="numpy")
def _winograd_weight(wt, U):
    # wt: the weight as (C, 3, 3, OC); U: (16, C, OC) = G w GT per channel pair, G's rows (1, 0, 0),
    # (1, 1, 1) / 2, (1, -1, 1) / 2, (0, 0, 1). Inner loops over OC contiguous values, one store each
    C, OC = wt.shape[0], wt.shape[3]
    half = wt.dtype.type(0.5)
    t = np.empty((4, 3, OC), dtype=wt.dtype)             # G w: rows combined, per column j
    for c in range(C):
        g = wt[c]
        for j in range(3):
            for o in range(OC):
                t[0, j, o] = g[0, j, o]
            for o in range(OC):
                t[1, j, o] = (g[0, j, o] + g[1, j, o] + g[2, j, o]) * half
            for o in range(OC):
                t[2, j, o] = (g[0, j, o] - g[1, j, o] + g[2, j, o]) * half
            for o in range(OC):
                t[3, j, o] = g[2, j, o]
        for a in range(4):
            for o in range(OC):
                U[4 * a, c, o] = t[a, 0, o]
            for o in range(OC):
                U[4 * a + 1, c, o] = (t[a, 0, o] + t[a, 1, o] + t[a, 2, o]) * half
            for o in range(OC):
                U[4 * a + 2, c, o] = (t[a, 0, o] - t[a, 1, o] + t[a, 2, o]) * half
            for o in range(OC):
                U[4 * a + 3, c, o] = t[a, 2, o]


@njit(nogil=True, cache=True, error_model="numpy")
def _winograd_weight_grad(dU, dw):
    # the adjoint of _winograd_weight: dw (OC, C, 3, 3) = GT dU G per channel pair
    C, OC = dU.shape[1], dU.shape[2]
    half = dU.dtype.type(0.5)
    t = np.empty((4, 3), dtype=dU.dtype)                 # dU G: columns combined, per row a
    for c in range(C):
        for o in range(OC):
            for a in range(4):
                u0, u1, u2, u3 = dU[4 * a, c, o], dU[4 * a + 1, c, o], dU[4 * a + 2, c, o], dU[4 * a + 3, c, o]
                t[a, 0] = u0 + (u1 + u2) * half
                t[a, 1] = (u1 - u2) * half
                t[a, 2] = (u1 + u2) * half + u3
            for j in range(3):
                dw[o, c, 0, j] = t[0, j] + (t[1, j] + t[2, j]) * half
                dw[o, c, 1, j] = (t[1, j] - t[2, j]) * half
                dw[o, c, 2, j] = (t[1, j] + t[2, j]) * half + t[3, j]


def winograd_weight(w, m: int = 2):
    """Twin of reference.winograd_weight."""
    if m == 4:
        U = np.empty((36, w.shape[1], w.shape[0]), dtype=w.dtype)
        _wino4_weight(np.ascontiguousarray(w.transpose(1, 2, 3, 0)), reference.WINOGRAD[4]["G"].astype(w.dtype), U)
        return U
    U = np.empty((16, w.shape[1], w.shape[0]), dtype=w.dtype)
    _winograd_weight(np.ascontiguousarray(w.transpose(1, 2, 3, 0)), U)
    return U


def winograd_weight_grad(dU):
    """Twin of reference.winograd_weight_grad."""
    if dU.shape[0] == 36:
        dw = np.empty((dU.shape[1], 3, 3, dU.shape[2]), dtype=dU.dtype)
        _wino4_weight_grad(np.ascontiguousarray(dU), reference.WINOGRAD[4]["G"].astype(dU.dtype), dw)
        return np.ascontiguousarray(dw.transpose(3, 0, 1, 2))
    dw = np.empty((dU.shape[2], dU.shape[1], 3, 3), dtype=dU.dtype)
    _winograd_weight_grad(np.ascontiguousarray(dU), dw)
    return dw


def winograd_input(x, padding: int, tiles: tuple, out=None, first_tile: int = 0, m: int = 2):
    """Twin of reference.winograd_input."""
    B, C, H, W = x.shape
    TH, TW = tiles
    m = m if out is None else reference.winograd_size(out.shape[0])
    V = np.empty(((m + 2) ** 2, B * TH * TW, C), dtype=x.dtype) if out is None else out
    _check_tiles(V, first_tile, B * TH * TW)
    if m == 4:
        _wino4_input(V.shape[0] * B * TH * TW * C, _as_channels_last(x), TH, TW, padding, V, x.dtype.type(0),
                     first_tile)
        return V
    _winograd_input(16 * B * TH * TW * C, _as_channels_last(x), TH, TW, padding, V, x.dtype.type(0), first_tile)
    return V



def _check_tiles(V, first_tile: int, count: int):
    """A (16, T, C) array that holds ``count`` tiles from ``first_tile`` on, contiguous (the kernels
    index it as such)."""
    if not V.flags.c_contiguous or not 0 <= first_tile <= V.shape[1] - count:
        raise ValueError(f"winograd: out must be a contiguous ({V.shape[0]}, T, C) array with room for tiles "
                         f"{first_tile}..{first_tile + count - 1}, got shape {V.shape}")


def _channels_last_out(out, shape: tuple, dtype):
    """The channels-last (B, H, W, C) array behind ``out`` (B, C, H, W), or a new one of ``shape``."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    cl = out.transpose(0, 2, 3, 1)
    if cl.shape != shape or cl.dtype != dtype or not cl.flags.c_contiguous:
        raise ValueError(f"winograd: out must be a channels-last {dtype} array of shape "
                         f"{(shape[0], shape[3]) + shape[1:3]}, got {out.shape} {out.dtype}")
    return cl


def _output_args(M, tiles: tuple, bias):
    """For the output transforms: (M contiguous, images B, channels OC, the bias as a contiguous array
    of M's dtype, zeros without one)."""
    OC = M.shape[2]
    bias = np.zeros(OC, dtype=M.dtype) if bias is None else np.ascontiguousarray(bias, dtype=M.dtype)
    return np.ascontiguousarray(M), M.shape[1] // (tiles[0] * tiles[1]), OC, bias


def _grad_output_buffer(grad, tiles: tuple, out, m: int = 2):
    """``out``, or a new dM (a * a, B * TH * TW, OC) for the output gradient ``grad`` (B, OC, ...)."""
    B, OC = grad.shape[:2]
    return np.empty(((m + 2) ** 2, B * tiles[0] * tiles[1], OC), dtype=grad.dtype) if out is None else out


def winograd_output(M, out_hw: tuple, tiles: tuple, bias=None, out=None):
    """Twin of reference.winograd_output (``out``: a channels-last (B, OC, OH, OW) array to write into)."""
    M, B, OC, bias = _output_args(M, tiles, bias)
    y = _channels_last_out(out, (B, out_hw[0], out_hw[1], OC), M.dtype)
    if M.shape[0] == 36:
        _wino4_output(y.size, M, tiles[0], tiles[1], bias, y)
    else:
        _winograd_output(y.size, M, tiles[0], tiles[1], bias, y)
    return y.transpose(0, 3, 1, 2)


def wino4_grad_output_args(grad) -> tuple:
    """(g, terms) for _wino4_grad_output(g, TH, TW, dM, zero, t0, *terms): batch norm's deferred input
    gradient (a BatchNormInputGrad with from_x) as its terms, or a gradient's channels-last array with
    stand-ins for the terms, which the kernel then does not read."""
    if isinstance(grad, BatchNormInputGrad):
        t = grad
        return t.g, (True, t.x, t.mean, t.inv_std, t.weight, t.bias, t.masked, t.scale, t.n, t.dbias, t.dweight)
    g = _as_channels_last(grad)
    s = g[0, 0, 0]
    return g, (False, g, s, s, s, s, False, s, g.dtype.type(0), s, s)


def winograd_grad_output(grad, tiles: tuple, out=None, first_tile: int = 0, m: int = 2):
    """Twin of reference.winograd_grad_output."""
    dM = _grad_output_buffer(grad, tiles, out, m)
    count = grad.shape[0] * tiles[0] * tiles[1]
    _check_tiles(dM, first_tile, count)
    if isinstance(grad, BatchNormInputGrad) and (dM.shape[0] != 36 or not grad.from_x):
        return winograd_grad_output(grad.compute(), tiles, dM, first_tile, m)
    if dM.shape[0] == 36:
        g, terms = wino4_grad_output_args(grad)
        _wino4_grad_output(36 * count * grad.shape[1], g, tiles[0], tiles[1], dM, g.dtype.type(0), first_tile, *terms)
        return dM
    _winograd_grad_output(16 * count * grad.shape[1], _as_channels_last(grad), tiles[0], tiles[1], dM,
                          grad.dtype.type(0), first_tile)
    return dM


def winograd_output_pool(M, tiles: tuple, bias=None, relu: bool = False, out=None):
    """Twin of reference.winograd_output_pool (``out``: channels-last (pooled, argmax) to write into)."""
    M, B, OC, bias = _output_args(M, tiles, bias)
    TH, TW = tiles
    pooled = _channels_last_out(None if out is None else out[0], (B, TH, TW, OC), M.dtype)
    argmax = _channels_last_out(None if out is None else out[1], (B, TH, TW, OC), np.dtype(np.int32))
    _winograd_output_pool(pooled.size, M, TH, TW, bias, pooled, argmax, relu, M.dtype.type(0))
    return pooled.transpose(0, 3, 1, 2), argmax.transpose(0, 3, 1, 2)


def winograd_grad_output_pool(grad, argmax, tiles: tuple, rectified=None, out=None, first_tile: int = 0):
    """Twin of reference.winograd_grad_output_pool."""
    TH, TW = tiles
    dM = _grad_output_buffer(grad, tiles, out)
    count = grad.shape[0] * TH * TW
    _check_tiles(dM, first_tile, count)
    g = _as_channels_last(grad)
    y = g if rectified is None else _as_channels_last(rectified)
    _winograd_grad_output_pool(16 * count * grad.shape[1], g, _as_channels_last(argmax), y, TH, TW, dM,
                               rectified is not None, grad.dtype.type(0), first_tile)
    return dM


def winograd_grad_input(dV, x_shape: tuple, padding: int, tiles: tuple, out=None):
    """Twin of reference.winograd_grad_input (``out``: a channels-last (B, C, H, W) array to write into)."""
    B, C, H, W = x_shape
    dx = _channels_last_out(out, (B, H, W, C), dV.dtype)
    if dV.shape[0] == 36:
        _wino4_grad_input(dx.size, np.ascontiguousarray(dV), tiles[0], tiles[1], padding, dx)
        return dx.transpose(0, 3, 1, 2)
    _winograd_grad_input(dx.size, np.ascontiguousarray(dV), tiles[0], tiles[1], padding, dx)
    return dx.transpose(0, 3, 1, 2)


# ---- bias: one pass, rows in parallel --------------------------------------------------------------

@_twins
def _add_bias(y, b, relu, zero, bad):
    # NumPy's broadcast y += b runs its short inner loop (32 or 64 channels) at a third of this speed.
    # ``relu``: the ReLU after the layer in the same pass (NaN passes, as in _relu_forward); ``zero``
    # is 0 in y's dtype (an int literal would make numba compute in float64). bad[i] is set when row
    # i had a NaN or inf before the ReLU (v - v is NaN exactly then): an or of flags vectorises, so
    # the check adds no pass over memory
    for i in prange(y.shape[0]):
        row = y[i]
        nonfinite = False
        if relu:
            for j in range(row.shape[0]):
                v = row[j] + b[j]
                nonfinite |= (v - v) != zero
                row[j] = zero if v < zero else v
        else:
            for j in range(row.shape[0]):
                v = row[j] + b[j]
                nonfinite |= (v - v) != zero
                row[j] = v
        bad[i] = nonfinite


# Below this many values NumPy's broadcast add runs first: a numba call with its flag array costs
# more than the work on an array that small (an MLNN's logits; benches/NOTES.md, "Kernel thresholds")
BIAS_NUMPY_BELOW = 1 << 14


def _bias_by_numpy(y, b) -> bool:
    return (y.size < BIAS_NUMPY_BELOW or y.ndim != 2 or not y.flags.c_contiguous or not b.flags.c_contiguous
            or y.dtype != b.dtype)


def add_bias(y, b, relu: bool = False):
    """Twin of reference.add_bias (the same additions and comparisons, so the same bits)."""
    if _bias_by_numpy(y, b):
        return reference.add_bias(y, b, relu)
    add_bias_checked(y, b, relu)
    return y


def add_bias_checked(y, b, relu: bool = False) -> bool:
    """Twin of reference.add_bias_checked."""
    if _bias_by_numpy(y, b):
        return reference.add_bias_checked(y, b, relu)
    bad = np.empty(y.shape[0], dtype=np.bool_)
    _add_bias(y.size, y, b, relu, y.dtype.type(0), bad)
    return not bad.any()


# ---- ReLU: one pass over the flat memory, whatever the layout ----------------------------------

@_twins
def _relu_forward(x, y):
    for i in prange(x.size):
        v = x[i]
        y[i] = 0 if v < 0 else v        # NaN passes through, as np.maximum's does


@_twins
def _add_relu(a, b, y):
    # y = max(a + b, 0): the sum rounded as NumPy's a + b, then _relu_forward's select (the same bits)
    for i in prange(a.size):
        v = a[i] + b[i]
        y[i] = 0 if v < 0 else v


@_twins
def _relu_backward(grad, y, dx):
    for i in prange(grad.size):
        dx[i] = grad[i] if y[i] > 0 else 0


def _flat(a):
    """(1-D view of ``a``'s memory, layout) for a C-contiguous ("c") or channels-last ("cl") (B, C, H, W)
    array; (None, None) for any other layout."""
    if a.flags.c_contiguous:
        return a.reshape(-1), "c"
    if a.ndim == 4 and a.transpose(0, 2, 3, 1).flags.c_contiguous:
        return a.transpose(0, 2, 3, 1).reshape(-1), "cl"
    return None, None


def _shaped(flat, shape, layout):
    """The inverse of _flat: a 1-D array seen as ``shape`` in the given layout."""
    if layout == "c":
        return flat.reshape(shape)
    B, C, H, W = shape
    return flat.reshape(B, H, W, C).transpose(0, 3, 1, 2)


def relu_forward(x, inplace: bool = False):
    """Twin of reference.relu_forward; the output has x's memory layout (is x, with ``inplace``)."""
    xf, layout = _flat(x)
    if xf is None:
        return reference.relu_forward(x, inplace)
    yf = xf if inplace else np.empty_like(xf)
    _relu_forward(x.size, xf, yf)                 # elementwise: reading and writing one array is safe
    return x if inplace else _shaped(yf, x.shape, layout)


def add_relu(a, b, out=None):
    """Twin of reference.add_relu: one pass when a, b (and out) share a memory layout."""
    af, layout = _flat(a)
    bf, b_layout = _flat(b)
    of, o_layout = _flat(out) if out is not None else (None, layout)
    if af is None or b_layout != layout or o_layout != layout or a.shape != b.shape or a.dtype != b.dtype:
        return reference.add_relu(a, b, out)
    if out is None:
        of = np.empty_like(af)
    _add_relu(a.size, af, bf, of)                 # elementwise: out may be a or b
    return out if out is not None else _shaped(of, a.shape, layout)


def relu_backward(grad, y):
    """Twin of reference.relu_backward; one pass when grad and y share a memory layout."""
    yf, y_layout = _flat(y)
    if yf is not None and _flat(grad)[1] != y_layout:
        # e.g. the gradient from Flatten (NCHW) for a ReLU whose output is channels-last: a copy
        # into y's layout, then one contiguous pass, reads memory in order where NumPy's where() on
        # mixed strides would jump between them
        grad = _as_channels_last(grad).transpose(0, 3, 1, 2) if y_layout == "cl" else np.ascontiguousarray(grad)
    gf, g_layout = _flat(grad)
    if gf is None or yf is None or g_layout != y_layout:
        return reference.relu_backward(grad, y)
    df = np.empty_like(yf)
    _relu_backward(grad.size, gf, yf, df)
    return _shaped(df, y.shape, y_layout)


# ---- batch normalization: per-channel sums over an (N, C) matrix, channel innermost ---------------
#
# A channels-last map (what a convolution's product writes) is an (N = B*H*W, C) matrix whose rows
# hold one pixel's channels. Each sum over the rows is split into fixed chunks of BN_CHUNK_ROWS rows,
# each summed in the map's dtype, and the chunks' sums are then added in float64, in order: the same
# result on one core or many. Float32 sums (training's dtype) run eight channels to a vector where
# float64 runs four, with no conversions; a chunk keeps each float32 sum to at most BN_CHUNK_ROWS
# values (a relative error of about sqrt(BN_CHUNK_ROWS) * 6e-8, 2e-6, typically), and the float64
# sums of the chunks' sums carry that to maps of any size. PyTorch's CPU batch norm sums float32 maps
# in float32 too (benches/NOTES.md, "The ResNet", item 17, for what the float64 sums cost).

BN_CHUNK_ROWS = 1024


def _chunks(N: int) -> int:
    """The number of BN_CHUNK_ROWS-row chunks of an N-row map (the last may be shorter)."""
    return max(1, -(-N // BN_CHUNK_ROWS))


@_twins
def _bn_sums(a, shift, rows, out):
    # out[k, 0, c], out[k, 1, c] = the sums of (a - shift[c]) and of its square over the ``rows`` rows
    # of chunk k, in a's dtype: one pass for mean and variance, shifted by a sample so that the
    # square's sum does not cancel against the mean's
    N, C = a.shape
    for k in prange(out.shape[0]):
        acc = np.zeros((2, C), dtype=a.dtype)
        for i in range(k * rows, min((k + 1) * rows, N)):
            for c in range(C):
                u = a[i, c] - shift[c]
                acc[0, c] += u
                acc[1, c] += u * u
        out[k] = acc


@_twins
def _bn_apply(x, mean, inv_std, w, b, relu, store, zero, xhat, y):
    # xhat = (x - mean) * inv_std (written out with ``store``); y = w * xhat + b (rectified with relu),
    # row by row
    N, C = x.shape
    for i in prange(N):
        for c in range(C):
            h = (x[i, c] - mean[c]) * inv_std[c]
            if store:
                xhat[i, c] = h
            v = w[c] * h + b[c]
            y[i, c] = (zero if v < zero else v) if relu else v


@_twins
def _bn_scale_shift(x, scale, shift, relu, zero, y):
    # y = x * scale + shift per channel (rectified with relu), row by row: batch norm with fixed statistics
    N, C = x.shape
    for i in prange(N):
        for c in range(C):
            v = x[i, c] * scale[c] + shift[c]
            y[i, c] = (zero if v < zero else v) if relu else v


@_twins
def _bn_grad_sums(g, xs, mean, inv_std, from_x, w, b, masked, rows, zero, out):
    # out[k, 0, c] = sum of g', out[k, 1, c] = sum of g' * xhat over the ``rows`` rows of chunk k, in
    # g's dtype, where g' = g, or with ``masked`` g where the forward pass's y = w * xhat + b was > 0
    # (recomputed: the same bits as y). xs is xhat, or with ``from_x`` the layer's input x, and
    # xhat = (x - mean) * inv_std is recomputed as _bn_apply computed it (the same bits)
    N, C = g.shape
    for k in prange(out.shape[0]):
        acc = np.zeros((2, C), dtype=g.dtype)
        for i in range(k * rows, min((k + 1) * rows, N)):
            for c in range(C):
                h = (xs[i, c] - mean[c]) * inv_std[c] if from_x else xs[i, c]
                v = g[i, c] if (not masked or w[c] * h + b[c] > zero) else zero
                acc[0, c] += v
                acc[1, c] += v * h
        out[k] = acc


@_twins
def _bn_grad_input(g, xs, mean, inv_std, from_x, w, b, masked, scale, n, dbias, dweight, zero, dx):
    # dx = scale * (n * g' - dbias - xhat * dweight), row by row (xs, from_x: as in _bn_grad_sums)
    N, C = g.shape
    for i in prange(N):
        for c in range(C):
            h = (xs[i, c] - mean[c]) * inv_std[c] if from_x else xs[i, c]
            v = g[i, c] if (not masked or w[c] * h + b[c] > zero) else zero
            dx[i, c] = scale[c] * (n * v - dbias[c] - h * dweight[c])


def _rows(a):
    """(N, C) view of a channels-last (B, C, H, W) array's memory, or None for any other layout."""
    flat, layout = _flat(a)
    return flat.reshape(-1, a.shape[1]) if layout == "cl" else None


def batchnorm_forward(x, weight, bias, eps: float, relu: bool = False, pool=None, keep_xhat: bool = True):
    """Twin of reference.batchnorm_forward for a channels-last (B, C, H, W) x: two passes (the sums for
    mean and variance, then xhat and y in one), every row of C values contiguous."""
    rows = _rows(x) if x.ndim == 4 else None
    if rows is None:
        return reference.batchnorm_forward(x, weight, bias, eps, relu, pool, keep_xhat)
    n, C, dt = rows.shape[0], rows.shape[1], x.dtype
    parts = np.empty((_chunks(n), 2, C), dtype=np.float64)
    shift = rows[0].copy()
    _bn_sums(rows.size, rows, shift, BN_CHUNK_ROWS, parts)
    s1, s2 = parts.sum(axis=0) / n
    mean = shift + s1
    var = np.maximum(s2 - s1 * s1, 0.0)
    if pool is not None:
        mean, var = pool(n, mean, var)
    inv_std = (1 / np.sqrt(var + eps)).astype(dt)
    y = np.empty_like(rows)
    xhat = np.empty_like(rows) if keep_xhat else y          # (unwritten without keep_xhat)
    _bn_apply(rows.size, rows, mean.astype(dt), inv_std, weight, bias, relu, keep_xhat, dt.type(0), xhat, y)
    return (_shaped(y.reshape(-1), x.shape, "cl"), _shaped(xhat.reshape(-1), x.shape, "cl") if keep_xhat else None,
            mean, var)


def scale_shift(x, scale, shift, relu: bool = False):
    """Twin of reference.scale_shift: one pass over a channels-last map's rows."""
    rows = _rows(x) if x.ndim == 4 else None
    if rows is None:
        return reference.scale_shift(x, scale, shift, relu)
    y = np.empty_like(rows)
    _bn_scale_shift(rows.size, rows, scale, shift, relu, x.dtype.type(0), y)
    return _shaped(y.reshape(-1), x.shape, "cl")


class BatchNormInputGrad:
    """Batch norm's input gradient before it is computed: dx = scale * (n * g' - dbias - xhat * dweight),
    xhat = (x - mean) * inv_std (``from_x``; else x is xhat itself), g' = g, or g where weight * xhat +
    bias > 0 with ``masked`` (the fused ReLU); g and x channels-last (B, H, W, C), the rest per channel
    (C,), scale, n, dbias and dweight as batchnorm_backward computed them. ``winograd_grad_output``
    reads it (from_x only) without writing dx out; ``compute()`` gives dx; ``[b0:b1]`` the images
    b0..b1. shape and dtype are dx's, (B, C, H, W)."""

    def __init__(self, g, x, mean, inv_std, weight, bias, masked, scale, n, dbias, dweight, from_x=True):
        self.g, self.x, self.mean, self.inv_std, self.weight, self.bias = g, x, mean, inv_std, weight, bias
        self.masked, self.scale, self.n, self.dbias, self.dweight = masked, scale, n, dbias, dweight
        self.from_x = from_x
        B, H, W, C = x.shape
        self.shape, self.dtype = (B, C, H, W), x.dtype

    def __getitem__(self, images: slice):
        if not isinstance(images, slice) or images.step not in (None, 1):
            raise TypeError("BatchNormInputGrad: only a range of images, [b0:b1], can be taken")
        return BatchNormInputGrad(self.g[images], self.x[images], self.mean, self.inv_std, self.weight, self.bias,
                                  self.masked, self.scale, self.n, self.dbias, self.dweight, self.from_x)

    def compute(self):
        """dx, channels-last (B, C, H, W): batch norm's second backward pass, row by row."""
        C = self.shape[1]
        grows, xrows = self.g.reshape(-1, C), self.x.reshape(-1, C)
        dx = np.empty_like(xrows)
        _bn_grad_input(grows.size, grows, xrows, self.mean, self.inv_std, self.from_x, self.weight, self.bias,
                       self.masked, self.scale, self.n, self.dbias, self.dweight, self.dtype.type(0), dx)
        return _shaped(dx.reshape(-1), self.shape, "cl")


def batchnorm_backward(grad, xhat, weight, inv_std, y=None, bias=None, pool=None, x=None, mean=None,
                       defer: bool = False):
    """Twin of reference.batchnorm_backward for channels-last xhat (or x): two passes, the sums, then dx;
    a gradient in another layout is copied into xhat's first. Given ``bias`` as well as y, the ReLU's
    mask is recomputed from xhat (y = weight * xhat + bias, the same bits) instead of read from y; given
    x and mean instead of xhat, xhat is recomputed in both passes as the forward pass computed it.
    With ``defer`` and x given, dx is returned as its terms (BatchNormInputGrad: the second pass left
    to whoever reads dx)."""
    from_x = xhat is None
    saved = x if from_x else xhat
    xrows = _rows(saved)
    if xrows is None or (y is not None and bias is None):
        return reference.batchnorm_backward(grad, xhat, weight, inv_std, y, bias, pool, x, mean)
    grows = _rows(grad)
    if grows is None:
        grows = _as_channels_last(grad).reshape(-1, grad.shape[1])
    n, C, dt = xrows.shape[0], xrows.shape[1], saved.dtype
    masked = y is not None
    b = bias if masked else weight          # unread without the mask; any (C,) array of the dtype will do
    mean = mean.astype(dt) if from_x else weight        # (unread without from_x)
    parts = np.empty((_chunks(n), 2, C), dtype=np.float64)
    _bn_grad_sums(grows.size, grows, xrows, mean, inv_std, from_x, weight, b, masked, BN_CHUNK_ROWS, dt.type(0),
                  parts)
    sums = parts.sum(axis=0)
    dbias, dweight = sums.astype(dt)
    total_bias, total_weight = dbias, dweight
    if pool is not None:
        n, sums = pool(n, sums)
        total_bias, total_weight = sums.astype(dt)
    scale = (weight * inv_std / dt.type(n)).astype(dt)
    B, _, H, W = saved.shape
    terms = BatchNormInputGrad(grows.reshape(B, H, W, C), xrows.reshape(B, H, W, C), mean, inv_std, weight, b,
                               masked, scale, dt.type(n), total_bias, total_weight, from_x)
    return (terms if defer and from_x else terms.compute()), dweight, dbias


# ---- optimizer updates: one fused pass over the flattened arrays instead of NumPy's ~8 ----------

@_twins
def _adam(p, g, m, v, step_size, beta1, beta2, one_minus_beta1, one_minus_beta2, eps, weight_decay, bias2_sqrt,
          tiny):
    # Every scalar arrives in the arrays' dtype, and the zero below is one too: numba gives a variable
    # that holds a float32 and an int literal the type float64, and the whole update would then run in
    # double precision, slower and rounded differently from the float32 reference.
    zero = tiny - tiny
    for i in prange(p.size):
        gi = g[i] + weight_decay * p[i]
        mi = beta1 * m[i] + one_minus_beta1 * gi
        vi = beta2 * v[i] + one_minus_beta2 * (gi * gi)
        # Moments that decay below the smallest normal number become subnormal, and arithmetic on
        # subnormals is ~20x slower on x86: a late epoch ran 2-4x slower than the first. Flush them
        # to zero (what the GPU and PyTorch's set_flush_denormal do); the update changes by < 1e-38.
        if abs(mi) < tiny:
            mi = zero
        if vi < tiny:
            vi = zero
        m[i] = mi
        v[i] = vi
        p[i] -= step_size * (mi / (np.sqrt(vi) / bias2_sqrt + eps))


@_twins
def _sgd(p, g, buf, lr, momentum, one_minus_dampening, weight_decay, nesterov, first, tiny):
    zero = tiny - tiny              # a zero of the arrays' dtype (see _adam)
    for i in prange(p.size):
        gi = g[i] + weight_decay * p[i]
        if momentum != 0:
            b = gi if first else momentum * buf[i] + one_minus_dampening * gi
            if abs(b) < tiny:       # a buffer decaying under zero gradients: keep it off subnormals
                b = zero
            buf[i] = b
            gi = gi + momentum * b if nesterov else b
        p[i] -= lr * gi


def _memory_views(*arrays):
    """1-D views of arrays of one shape that share one contiguous layout (C, or Fortran as
    ``Linear``'s weight), all in memory order; None when they do not (the caller then takes the
    layout-blind reference). ``reshape(-1)`` would silently copy a Fortran-ordered array and the
    in-place update would be lost."""
    first = arrays[0]
    if any(a.strides != first.strides for a in arrays):
        return None
    if first.flags.c_contiguous:
        return [a.reshape(-1) for a in arrays]
    if first.flags.f_contiguous:
        return [a.T.reshape(-1) for a in arrays]
    return None


def adam_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """Fused twin of reference.adam_update (arrays of one shape; contiguous ones in one layout take
    the fused kernel, any others the reference)."""
    flat = _memory_views(p, g, m, v)
    if flat is None:
        return reference.adam_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step)
    # scalars in the arrays' dtype: float32 arithmetic vectorises twice as wide as float64
    f = p.dtype.type
    _adam(p.size, *flat, f(lr / (1 - beta1 ** step)), f(beta1), f(beta2),
          f(1 - beta1), f(1 - beta2), f(eps), f(weight_decay), f(np.sqrt(1 - beta2 ** step)),
          np.finfo(p.dtype).tiny)


def sgd_update(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    """Fused twin of reference.sgd_update (arrays of one shape; contiguous ones in one layout take
    the fused kernel, any others the reference)."""
    flat = _memory_views(p, g) if buf is None else _memory_views(p, g, buf)
    if flat is None:
        return reference.sgd_update(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first)
    f = p.dtype.type
    _sgd(p.size, flat[0], flat[1], flat[0] if buf is None else flat[2], f(lr), f(momentum), f(1 - dampening),
         f(weight_decay), nesterov, first, np.finfo(p.dtype).tiny)
