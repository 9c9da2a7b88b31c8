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


def col2im(cols, x_shape: tuple, kh: int, kw: int, stride: int = 1, padding: int = 0, out_hw=None, out=None):
    """The adjoint of :func:`im2col`: cols (B * OH * OW, kh * kw * C) -> dx (B, C, H, W), into ``out``
    if given.

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
    if out is not None:
        out[...] = dxp[:, :, padding:padding + H, padding:padding + W]
        return out
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


# ---- Winograd F(m x m, 3x3): a 3x3, stride-1 convolution with fewer multiplications ------------------
#
# Lavin & Gray (2016): each m x m block ("tile") of output pixels is computed from the a x a block
# (a = m + 2) of padded input around it as Y = AT [(G g GT) * (BT d B)] A, with * elementwise over the
# a * a positions. Summed over the input channels, the elementwise products become a * a matrix products:
#   V[k] (tiles, C) = the input transform of every tile and channel, k = a * row + column,
#   U[k] (C, OC)    = the weight transform,
#   M[k] = V[k] @ U[k], and the output transform of M gives the m x m outputs of each tile.
# F(2x2, 3x3): 16 multiplications per 4 outputs (2.25x fewer than 9 each); F(4x4, 3x3): 36 per 16
# (4x fewer), with larger transforms whose fractions (G's sixths and twenty-fourths) round more.
# The backward pass is the adjoint of each step: the output gradient's transform (adjoint of the
# output transform), dU = V^T dM for the weight, dV = dM U^T for the input, and the input transform's
# adjoint, which adds each tile's a x a block back into the (overlapping) input. Tiles are numbered
# (b, ty, tx) row-major; an output size that m does not divide gets a last, part-used tile (its
# extra outputs are not written; their gradient is zero). The tile size m is read from the arrays
# where it can be (V and M have a * a rows) and given as ``m`` where not.
WINOGRAD = {
    2: dict(BT=[[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
            G=[[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],
            AT=[[1, 1, 1, 0], [0, 1, -1, -1]]),
    4: dict(BT=[[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
            G=[[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
               [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
            AT=[[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]),
}
WINOGRAD = {m: {k: np.array(v, dtype=np.float64) for k, v in d.items()} for m, d in WINOGRAD.items()}
WINOGRAD_BT, WINOGRAD_G, WINOGRAD_AT = (WINOGRAD[2][k] for k in ("BT", "G", "AT"))


def winograd_size(points: int) -> int:
    """The output tile's side m of a transform with ``points`` = (m + 2)^2 rows (16 -> 2, 36 -> 4)."""
    m = {16: 2, 36: 4}.get(points)
    if m is None:
        raise ValueError(f"Winograd: {points} transform points is neither F(2x2, 3x3)'s 16 nor F(4x4, 3x3)'s 36")
    return m


def winograd_tiles(OH: int, OW: int, m: int = 2) -> tuple:
    """(TH, TW): m x m output tiles per column and row covering an OH x OW output map."""
    return -(-OH // m), -(-OW // m)


def winograd_input(x, padding: int, tiles: tuple, out=None, first_tile: int = 0, m: int = 2):
    """x: (B, C, H, W) -> V: (a * a, B * TH * TW, C), a = m + 2, the input transform BT d B of every
    tile's a x a block of the zero-padded input (rows m * ty ... m * ty + a - 1 of it, and likewise for
    tx). Given ``out`` (a * a, T, C) (its rows say m), x's tiles go to out[:, first_tile:first_tile +
    B * TH * TW] (a block of images' tiles in a larger batch's array)."""
    B, C, H, W = x.shape
    TH, TW = tiles
    m = m if out is None else winograd_size(out.shape[0])
    BT = WINOGRAD[m]["BT"]
    d = _padded_tiles(x, padding, tiles, m)                                # (a, a, B, TH, TW, C)
    V = np.einsum("ir,rsbyxc,js->ijbyxc", BT, d, BT).reshape(len(BT) ** 2, B * TH * TW, C)
    if out is None:
        return V.astype(x.dtype)
    out[:, first_tile:first_tile + V.shape[1]] = V
    return out


def _padded_tiles(x, padding, tiles, m):
    """The a x a input block of every tile: (a, a, B, TH, TW, C), zeros outside the input."""
    B, C, H, W = x.shape
    TH, TW = tiles
    a = m + 2
    xp = np.zeros((B, max(m * TH + 2, H + padding), max(m * TW + 2, W + padding), C), dtype=np.float64)
    xp[:, padding:padding + H, padding:padding + W] = x.transpose(0, 2, 3, 1)
    return np.stack([np.stack([xp[:, r:r + m * TH:m, s:s + m * TW:m] for s in range(a)]) for r in range(a)])


def winograd_output(M, out_hw: tuple, tiles: tuple, bias=None, out=None):
    """M: (a * a, B * TH * TW, OC) -> y: (B, OC, OH, OW) (channels-last in memory): each tile's m x m
    outputs AT M A, the rows and columns past out_hw = (OH, OW) left out; plus ``bias`` (OC,);
    written into ``out`` if given."""
    TH, TW = tiles
    OH, OW = out_hw
    OC = M.shape[2]
    m = winograd_size(M.shape[0])
    AT = WINOGRAD[m]["AT"]
    B = M.shape[1] // (TH * TW)
    mm = M.astype(np.float64).reshape(m + 2, m + 2, B, TH, TW, OC)
    y = np.einsum("ai,ijbyxo,cj->byaxco", AT, mm, AT).reshape(B, m * TH, m * TW, OC)
    y = y[:, :OH, :OW]
    if bias is not None:
        y = y + bias
    return _into(out, np.ascontiguousarray(y.astype(M.dtype)).transpose(0, 3, 1, 2))


def _into(out, a):
    """a, or a copied into ``out`` (and out returned)."""
    if out is None:
        return a
    out[...] = a
    return out


def winograd_grad_output(grad, tiles: tuple, out=None, first_tile: int = 0, m: int = 2):
    """grad: (B, OC, OH, OW) -> dM: (a * a, B * TH * TW, OC), the adjoint of winograd_output (no bias);
    into ``out`` if given (its rows say m), from tile ``first_tile`` on (as winograd_input)."""
    B, OC, OH, OW = grad.shape
    TH, TW = tiles
    m = m if out is None else winograd_size(out.shape[0])
    AT = WINOGRAD[m]["AT"]
    g = np.zeros((B, m * TH, m * TW, OC))
    g[:, :OH, :OW] = grad.transpose(0, 2, 3, 1)
    g = g.reshape(B, TH, m, TW, m, OC)
    dM = np.einsum("ai,byaxco,cj->ijbyxo", AT, g, AT).reshape((m + 2) ** 2, B * TH * TW, OC)
    if out is None:
        return dM.astype(grad.dtype)
    out[:, first_tile:first_tile + dM.shape[1]] = dM
    return out


def winograd_output_pool(M, tiles: tuple, bias=None, relu: bool = False, out=None):
    """F(2x2, 3x3)'s winograd_output of the whole tile grid, then maxpool_forward(k=2, stride=2, relu):
    every tile is one pooling window. -> (pooled, argmax), (B, OC, TH, TW) each; written into ``out`` =
    (pooled, argmax) if given."""
    y = winograd_output(M, (2 * tiles[0], 2 * tiles[1]), tiles, bias)
    pooled, argmax = maxpool_forward(y, 2, 2, relu=relu)
    if out is None:
        return pooled, argmax
    return _into(out[0], pooled), _into(out[1], argmax)


def winograd_grad_output_pool(grad, argmax, tiles: tuple, rectified=None, out=None, first_tile: int = 0):
    """The adjoint of winograd_output_pool: maxpool_backward (its ReLU mask from ``rectified``, the
    output of a relu=True pass), then winograd_grad_output."""
    B, OC, TH, TW = grad.shape
    dy = maxpool_backward(grad, argmax, (B, OC, 2 * TH, 2 * TW), 2, 2, out=rectified)
    return winograd_grad_output(dy, tiles, out=out, first_tile=first_tile)


def winograd_grad_input(dV, x_shape: tuple, padding: int, tiles: tuple, out=None):
    """dV: (a * a, B * TH * TW, C) -> dx: (B, C, H, W) (channels-last in memory), the adjoint of
    winograd_input: each tile's B dV BT added into its a x a block, the padding dropped; written into
    ``out`` if given."""
    B, C, H, W = x_shape
    TH, TW = tiles
    m = winograd_size(dV.shape[0])
    a, BT = m + 2, WINOGRAD[m]["BT"]
    dd = np.einsum("ir,ijbyxc,js->rsbyxc", BT, dV.astype(np.float64).reshape(a, a, B, TH, TW, C), BT)
    dxp = np.zeros((B, max(m * TH + 2, H + padding), max(m * TW + 2, W + padding), C))
    for r in range(a):
        for s in range(a):
            dxp[:, r:r + m * TH:m, s:s + m * TW:m] += dd[r, s]
    dx = np.ascontiguousarray(dxp[:, padding:padding + H, padding:padding + W].astype(dV.dtype))
    return _into(out, dx.transpose(0, 3, 1, 2))


def winograd_weight(w, m: int = 2):
    """w: (OC, C, 3, 3) -> U: (a * a, C, OC), the weight transform G g GT of every (out, in) channel pair."""
    OC, C = w.shape[:2]
    G = WINOGRAD[m]["G"]
    u = np.tensordot(np.tensordot(G, w, axes=([1], [2])), G, axes=([3], [1]))      # (a, OC, C, a)
    return np.ascontiguousarray(u.transpose(0, 3, 2, 1).reshape(len(G) ** 2, C, OC).astype(w.dtype))


def winograd_weight_grad(dU):
    """dU: (a * a, C, OC) -> dw: (OC, C, 3, 3), the adjoint of winograd_weight."""
    K, C, OC = dU.shape
    m = winograd_size(K)
    G = WINOGRAD[m]["G"]
    d = np.tensordot(G, dU.reshape(m + 2, m + 2, C, OC), axes=([0], [0]))          # (3, a, C, OC): i, b, c, o
    d = np.tensordot(d, G, axes=([1], [0]))                                         # (3, C, OC, 3): i, c, o, j
    return np.ascontiguousarray(d.transpose(2, 1, 0, 3).astype(dU.dtype))


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


def add_relu(a, b, out=None):
    """max(a + b, 0) elementwise (a residual sum and the ReLU after it), into ``out`` if given (which
    may be a or b)."""
    y = np.add(a, b, out=out)
    return relu_forward(y, inplace=True)


def relu_backward(grad, y):
    """grad, y = relu_forward(x): the same shape -> dx: grad where y > 0 (i.e. x > 0), else 0."""
    return grad * (y > 0)


# ---- batch normalization in training, per channel of a (B, C, H, W) array ---------------------

def batchnorm_forward(x, weight, bias, eps: float, relu: bool = False, pool=None, keep_xhat: bool = True):
    """x: (B, C, H, W) -> (y, xhat, mean, var), with the batch's statistics per channel (over B, H, W):
    mean, var (biased), xhat = (x - mean) / sqrt(var + eps), y = weight * xhat + bias, rectified with
    ``relu`` (a ReLU after the layer, fused in). mean and var: (C,) float64. ``pool``, for a part of a
    split batch: (n, mean, var) of this part -> (mean, var) of the whole batch. Without ``keep_xhat``
    xhat is None (the backward pass recomputes it from x and mean)."""
    axes, shape = (0, 2, 3), (1, -1, 1, 1)
    mean = x.mean(axis=axes, dtype=np.float64)
    var = ((x.astype(np.float64) - mean.reshape(shape)) ** 2).mean(axis=axes)
    if pool is not None:
        mean, var = pool(x.size // x.shape[1], mean, var)
    xc = x - mean.reshape(shape).astype(x.dtype)
    inv_std = (1 / np.sqrt(var + eps)).astype(x.dtype)
    xhat = xc * inv_std.reshape(shape)
    y = xhat * weight.reshape(shape) + bias.reshape(shape)
    if relu:
        relu_forward(y, inplace=True)
    return y, xhat if keep_xhat else None, mean, var


def scale_shift(x, scale, shift, relu: bool = False):
    """x: (B, C, H, W) -> x * scale + shift per channel (scale, shift: (C,)), rectified with ``relu``:
    batch norm with fixed statistics (evaluation mode), scale = weight / sqrt(var + eps) and
    shift = bias - mean * scale."""
    y = x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)
    return relu_forward(y, inplace=True) if relu else y


def batchnorm_backward(grad, xhat, weight, inv_std, y=None, bias=None, pool=None, x=None, mean=None):
    """The backward pass of batchnorm_forward: grad, xhat, y: (B, C, H, W); weight, inv_std: (C,) ->
    (dx, dweight, dbias). Given the rectified ``y``, the gradient passes only where y > 0 (the fused ReLU);
    ``bias`` (the layer's) lets a kernel recompute that mask from xhat instead of reading y. xhat may be
    None, given the layer's input x and the batch's ``mean`` instead: xhat = (x - mean) * inv_std.

        g = grad (masked),  dbias = sum(g),  dweight = sum(g * xhat),  n = B * H * W,
        dx = weight * inv_std / n * (n * g - dbias - xhat * dweight)    (sums per channel)

    ``pool``, for a part of a split batch: (n, (2, C) float64 [dbias, dweight] of this part) -> (n, sums)
    of the whole batch; dx then uses the whole batch's, and dweight and dbias stay this part's (the
    parts' gradients are added up afterwards).
    """
    axes, shape = (0, 2, 3), (1, -1, 1, 1)
    if xhat is None:
        xhat = (x - mean.reshape(shape).astype(x.dtype)) * inv_std.reshape(shape)
    g = grad if y is None else grad * (y > 0)
    dbias = g.sum(axis=axes)
    dweight = (g * xhat).sum(axis=axes)
    n = g.size // g.shape[1]
    total_bias, total_weight = dbias, dweight
    if pool is not None:
        n, (total_bias, total_weight) = pool(n, np.stack([dbias, dweight]).astype(np.float64))
        total_bias, total_weight = total_bias.astype(g.dtype), total_weight.astype(g.dtype)
    scale = (weight * inv_std / n).reshape(shape)
    dx = scale * (n * g - total_bias.reshape(shape) - xhat * total_weight.reshape(shape))
    return dx, dweight, dbias


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
