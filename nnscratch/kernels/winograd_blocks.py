"""Winograd F(4x4, 3x3) a block of images at a time, the whole block loop one compiled call.

``WinogradStep`` on one core (``winograd_in_blocks``) runs, per block of images, the input transform,
the 36 products and the output transform (forward), or the output gradient's transform, the weight
gradient's and input gradient's products and the input gradient's transform (backward). Written as a
Python loop that is four to five kernel calls a block, each giving the interpreter lock back and taking
it again; with the two parts of a split batch in two threads of one interpreter, a part often waits
for the lock while the other runs Python (``benches/NOTES.md``, item 18). Here the loop is one call:
the same kernels (their serial copies), the products through NumPy's own BLAS (``cblas.batched``),
in the same order, so the same bits as the Python loop, which stays the path for everything else
(F(2x2), pooling inside, float64, a BLAS other than NumPy's bundled OpenBLAS).

Shapes: x, g, dx channels-last (B, H, W, C) / (B, OH, OW, OC); V (36, T, C) with T = B * TH * TW
tiles; U (36, C, OC), UT (36, OC, C); a block buffer (36, tiles of a block, channels), ``r`` for the
blocks of the regular size, ``l`` for the last (which may be larger: ``steps.image_blocks``).
``starts``: the blocks' first images, then B (int64).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .cblas import batched
from .cpu import _wino4_grad_input, _wino4_grad_output, _wino4_input, _wino4_output

_input, _output = _wino4_input.serial, _wino4_output.serial
_grad_output, _grad_input = _wino4_grad_output.serial, _wino4_grad_input.serial
# a block buffer's first tile: an int64, not the literal 0, for which numba would compile the kernels
# a second time (Literal[int](0) is a type of its own; 10 s of a cold start)
NO_OFFSET = np.int64(0)


@njit(nogil=True, cache=True, error_model="numpy")
def forward(x, TH, TW, padding, zero, starts, U, bias, y, keep, Vr, Vl, Mr, Ml):
    """y[b0:b1] = A^T (V_b[k] @ U[k]) A + bias for each block b0..b1; V_b = B^T d B of the block's
    tiles, written with ``keep`` into the block's rows of Vr, the whole batch's V (training: the
    weight gradient reads them), else into the block buffer Vr / Vl."""
    per = TH * TW
    count = starts.shape[0] - 1
    for i in range(count):
        b0, b1 = starts[i], starts[i + 1]
        last = i == count - 1
        M = Ml if last else Mr
        if keep:
            _input(x[b0:b1], TH, TW, padding, Vr, zero, b0 * per)
            batched(Vr[:, b0 * per:b1 * per], U, M)
        else:
            Vb = Vl if last else Vr
            _input(x[b0:b1], TH, TW, padding, Vb, zero, NO_OFFSET)
            batched(Vb, U, M)
        _output(M, TH, TW, bias, y[b0:b1])


@njit(nogil=True, cache=True, error_model="numpy")
def _add_into(a, b):
    # a += b elementwise, as np.add(a, b, out=a)
    fa, fb = a.reshape(-1), b.reshape(-1)
    for i in range(fa.shape[0]):
        fa[i] = fa[i] + fb[i]


@njit(nogil=True, cache=True, error_model="numpy")
def backward(g, TH, TW, padding, zero, starts, V, UT, dU, part, dx, dMr, dMl, dVr, dVl,
             bn, bx, mean, inv_std, w, bb, masked, scale, n, dbias, dweight):
    """For each block b0..b1: dM_b = A q A^T of the block's output gradient q (with ``bn``, q is batch
    norm's input gradient from its terms bx, mean, ...: see cpu.BatchNormInputGrad; else g itself),
    dU = sum over the blocks of V_b[k]^T dM_b[k] (the first block's product, then each next added),
    dV_b = dM_b[k] @ UT[k], and dx[b0:b1] = the input transform's adjoint of dV_b."""
    per = TH * TW
    count = starts.shape[0] - 1
    for i in range(count):
        b0, b1 = starts[i], starts[i + 1]
        last = i == count - 1
        dM = dMl if last else dMr
        _grad_output(g[b0:b1], TH, TW, dM, zero, NO_OFFSET, bn, bx[b0:b1], mean, inv_std, w, bb, masked, scale, n,
                     dbias, dweight)
        Vt = V[:, b0 * per:b1 * per].transpose(0, 2, 1)
        if i == 0:
            batched(Vt, dM, dU)
        else:
            batched(Vt, dM, part)
            _add_into(dU, part)
        dV = dVl if last else dVr
        batched(dM, UT, dV)
        _grad_input(dV, TH, TW, padding, dx[b0:b1])
