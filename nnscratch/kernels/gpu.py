"""CuPy twins of :mod:`reference`: one CUDA thread per output element.

Inputs are indexed by their logical (B, C, H, W) position, which CuPy maps through the
array's strides, so channels-last views need no copy. Every kernel *gathers* (each thread
computes its own output from its inputs)
instead of scattering with atomics, so results are deterministic: ``col2im`` and
the pooling backward pass sum, for one input pixel, the windows that contain it.
The kernels are compiled by CuPy on first use and cached by it.
"""
from __future__ import annotations

import functools

from ..backend import _cupy
from .reference import map_size, out_size


@functools.lru_cache(maxsize=None)
def _kernels():
    cp = _cupy()
    im2col = cp.ElementwiseKernel(
        "raw T x, int32 C, int32 H, int32 W, int32 kh, int32 kw, int32 s, int32 p, int32 OH, int32 OW, "
        "int32 Kc",
        "T col",
        """
        int K = C * kh * kw;                        // Kc = K, or K + 1 with the bias column of ones
        int row = i / Kc, k = i % Kc;               // column k = (di * kw + dj) * C + c
        int b = row / (OH * OW), ohw = row % (OH * OW);
        int oh = ohw / OW, ow = ohw % OW;
        int c = k % C, ij = k / C;
        int y = oh * s - p + ij / kw, xx = ow * s - p + ij % kw;
        col = k == K ? (T)1
            : (y >= 0 && y < H && xx >= 0 && xx < W) ? x[((b * C + c) * H + y) * W + xx] : (T)0;
        """,
        "nnscratch_im2col")
    col2im = cp.ElementwiseKernel(
        "raw T cols, int32 C, int32 H, int32 W, int32 kh, int32 kw, int32 s, int32 p, int32 OH, int32 OW",
        "T dx",
        """
        int xx = i % W, y = (i / W) % H, c = (i / (W * H)) % C, b = i / (W * H * C);
        int K = C * kh * kw;
        T acc = 0;
        for (int di = 0; di < kh; ++di) {
            int t = y + p - di;                 // = oh * s when (y, xx) sits at offset di of row oh
            if (t < 0 || t % s != 0) continue;
            int oh = t / s;
            if (oh >= OH) continue;
            for (int dj = 0; dj < kw; ++dj) {
                int u = xx + p - dj;
                if (u < 0 || u % s != 0) continue;
                int ow = u / s;
                if (ow >= OW) continue;
                acc += cols[((b * OH + oh) * OW + ow) * K + (di * kw + dj) * C + c];
            }
        }
        dx = acc;
        """,
        "nnscratch_col2im")
    pool_fwd = cp.ElementwiseKernel(
        "raw T x, int32 H, int32 W, int32 k, int32 s, int32 OH, int32 OW",
        "T out, int32 argmax",
        """
        int ow = i % OW, oh = (i / OW) % OH, bc = i / (OW * OH);
        long long plane = (long long)bc * H * W;       // logical index: x may be channels-last in memory
        int y0 = oh * s, x0 = ow * s;
        T best = x[plane + y0 * W + x0];
        int where = 0;
        for (int a = 0; a < k; ++a)
            for (int b = 0; b < k; ++b) {
                T v = x[plane + (y0 + a) * W + x0 + b];
                if (v > best) { best = v; where = a * k + b; }   // first maximum wins a tie
            }
        out = best;
        argmax = where;
        """,
        "nnscratch_maxpool_forward")
    pool_bwd = cp.ElementwiseKernel(
        "raw T grad, raw int32 argmax, int32 H, int32 W, int32 k, int32 s, int32 OH, int32 OW",
        "T dx",
        """
        int xx = i % W, y = (i / W) % H, bc = i / (W * H);
        long long base = (long long)bc * OH * OW;
        T acc = 0;
        for (int a = 0; a < k; ++a) {
            int t = y - a;
            if (t < 0 || t % s != 0 || t / s >= OH) continue;
            for (int b = 0; b < k; ++b) {
                int u = xx - b;
                if (u < 0 || u % s != 0 || u / s >= OW) continue;
                long long o = base + (t / s) * OW + u / s;
                if (argmax[o] == a * k + b) acc += grad[o];
            }
        }
        dx = acc;
        """,
        "nnscratch_maxpool_backward")
    return im2col, col2im, pool_fwd, pool_bwd


def im2col(x, kh: int, kw: int, stride: int = 1, padding: int = 0, out=None, ones: bool = False, out_hw=None):
    """x: (B, C, H, W) -> cols: (B * OH * OW, kh * kw * C [+ 1 if ones]), into ``out`` if given
    (``out_hw``: see reference.im2col)."""
    cp = _cupy()
    B, C, H, W = x.shape
    OH, OW = map_size(H, W, kh, kw, stride, padding, out_hw)
    K = C * kh * kw + bool(ones)
    cols = cp.empty((B * OH * OW, K), dtype=x.dtype) if out is None else out
    _kernels()[0](x, C, H, W, kh, kw, stride, padding, OH, OW, K, cols)  # x indexed logically: any layout
    return cols


def col2im(cols, x_shape: tuple, kh: int, kw: int, stride: int = 1, padding: int = 0, out_hw=None, out=None):
    """cols: (B * OH * OW, kh * kw * C) -> dx: (B, C, H, W), overlaps summed; into ``out`` if given."""
    cp = _cupy()
    B, C, H, W = x_shape
    OH, OW = map_size(H, W, kh, kw, stride, padding, out_hw)
    dx = cp.empty(x_shape, dtype=cols.dtype)
    _kernels()[1](cp.ascontiguousarray(cols), C, H, W, kh, kw, stride, padding, OH, OW, dx)
    if out is not None:
        out[...] = dx
        return out
    return dx


def maxpool_forward(x, k: int, stride: int, relu: bool = False):
    """x: (B, C, H, W) -> (out, argmax): (B, C, OH, OW) each; argmax = i * k + j; ``relu`` rectifies out."""
    cp = _cupy()
    B, C, H, W = x.shape
    shape = (B, C, out_size(H, k, stride), out_size(W, k, stride))
    out = cp.empty(shape, dtype=x.dtype)
    argmax = cp.empty(shape, dtype=cp.int32)
    _kernels()[2](x, H, W, k, stride, shape[2], shape[3], out, argmax)
    if relu:
        relu_forward(out, inplace=True)
    return out, argmax


def maxpool_backward(grad, argmax, x_shape: tuple, k: int, stride: int, out=None):
    """grad, argmax: (B, C, OH, OW) -> dx: (B, C, H, W); ``out`` (rectified) masks grad first."""
    cp = _cupy()
    if out is not None:
        grad = relu_backward(grad, out)
    B, C, OH, OW = grad.shape
    dx = cp.empty(x_shape, dtype=grad.dtype)
    _kernels()[3](grad, argmax, x_shape[2], x_shape[3], k, stride, OH, OW, dx)
    return dx


def add_bias(y, b, relu: bool = False):
    """y += b, row by row, in place, then rectified with ``relu``; returns y."""
    y += b
    if relu:
        relu_forward(y, inplace=True)
    return y


def add_bias_checked(y, b, relu: bool = False) -> bool:
    """add_bias, returning whether every value of y + b was finite (waits for the device)."""
    y += b
    finite = bool(_cupy().isfinite(y).all())
    if relu:
        relu_forward(y, inplace=True)
    return finite


def relu_forward(x, inplace: bool = False):
    """max(x, 0); CuPy's elementwise kernels keep the input's layout. ``inplace`` writes into x."""
    return _cupy().maximum(x, 0, out=x if inplace else None)


def add_relu(a, b, out=None):
    """max(a + b, 0), into ``out`` if given."""
    cp = _cupy()
    y = cp.add(a, b, out=out)
    return cp.maximum(y, 0, out=y)


def relu_backward(grad, y):
    """grad where y > 0, else 0."""
    return grad * (y > 0)


_ADAM_BODY = """
        double gi = (double)g + wd * (double)p;
        double mi = b1 * (double)m + (1 - b1) * gi;
        double vi = b2 * (double)v + (1 - b2) * gi * gi;
        m = (T)mi;
        v = (T)vi;
        p = (T)((double)p - step_size * (mi / (sqrt(vi) / bias2_sqrt + eps)));
        """


@functools.lru_cache(maxsize=None)
def _optimizer_kernels():
    cp = _cupy()
    # one Adam body, given step_size and bias2_sqrt either as arguments or read from device memory
    adam = cp.ElementwiseKernel(
        "T g, float64 step_size, float64 b1, float64 b2, float64 eps, float64 wd, float64 bias2_sqrt",
        "T p, T m, T v", _ADAM_BODY, "nnscratch_adam")
    adam_coef = cp.ElementwiseKernel(
        "T g, raw float64 coef, float64 b1, float64 b2, float64 eps, float64 wd",
        "T p, T m, T v", "\n        double step_size = coef[0], bias2_sqrt = coef[1];" + _ADAM_BODY,
        "nnscratch_adam_coef")
    sgd = cp.ElementwiseKernel(
        "T g, float64 lr, float64 mom, float64 damp, float64 wd, bool nesterov, bool first",
        "T p, T buf",
        """
        double gi = (double)g + wd * (double)p;
        if (mom != 0) {
            double b = first ? gi : mom * (double)buf + (1 - damp) * gi;
            buf = (T)b;
            gi = nesterov ? gi + mom * b : b;
        }
        p = (T)((double)p - lr * gi);
        """,
        "nnscratch_sgd")
    return adam, sgd, adam_coef


def adam_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """Fused twin of reference.adam_update, one CUDA thread per element."""
    _optimizer_kernels()[0](g, lr / (1 - beta1 ** step), beta1, beta2, eps, weight_decay,
                            (1 - beta2 ** step) ** 0.5, p, m, v)


def adam_update_coef(p, g, m, v, coef, beta1, beta2, eps, weight_decay):
    """adam_update with the step's two factors read from device memory: coef = (lr / (1 - beta1^t),
    sqrt(1 - beta2^t)), float64 (2,). A recorded CUDA graph replays this launch unchanged while the
    optimizer writes each step's factors into ``coef`` before the replay."""
    _optimizer_kernels()[2](g, coef, beta1, beta2, eps, weight_decay, p, m, v)


def sgd_update(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    """Fused twin of reference.sgd_update."""
    _optimizer_kernels()[1](g, lr, momentum, dampening, weight_decay, nesterov, first, p, p if buf is None else buf)
