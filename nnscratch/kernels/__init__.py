"""Kernel dispatch: the array decides which twin runs.

Kernels: im2col, col2im, max-pooling forward and backward, ReLU forward and
backward, the bias addition, the optimizers' fused updates (Adam, SGD), and the matrix product
(NumPy's BLAS on the CPU, cuBLAS called directly on a GPU: see ``cublas.py``).

    CuPy array            -> kernels/gpu.py       (CUDA, via CuPy)
    NumPy array, default  -> kernels/cpu.py       (numba)
    NumPy array, "reference" chosen, or numba missing -> kernels/reference.py

``set_cpu_kernels("reference")`` (or the environment variable
``NNSCRATCH_CPU_KERNELS=reference``) runs the plain-NumPy oracle on the CPU,
e.g. to see what numba changes.
"""
from __future__ import annotations

import contextlib
import importlib
import os

import numpy as np

from ..backend import is_gpu_array
from . import reference

CPU_CHOICES = ("numba", "reference")
_choice = {"cpu": os.environ.get("NNSCRATCH_CPU_KERNELS", "numba")}


def set_cpu_kernels(name: str):
    """Choose the CPU twin: "numba" (fast, the default) or "reference" (plain NumPy)."""
    if name not in CPU_CHOICES:
        raise ValueError(f"set_cpu_kernels: expected one of {CPU_CHOICES}, got {name!r}")
    _choice["cpu"] = name


def cpu_kernels() -> str:
    """The CPU twin in use: "numba", or "reference" when chosen or when numba is missing."""
    if _choice["cpu"] == "numba" and _numba() is not None:
        return "numba"
    return "reference"


_loaded = {}     # "cpu"/"gpu" -> the module, or None when it cannot be imported (numba missing)


def _twin(name: str):
    """The kernel module ``name``, imported on first use only: a CNN step dispatches some forty
    kernels, and importlib's lookup of an already imported module is slower than a dict's."""
    if name not in _loaded:
        try:
            _loaded[name] = importlib.import_module("." + name, __name__)
        except ImportError:
            if name == "gpu":
                raise
            _loaded[name] = None
    return _loaded[name]


def _numba():
    return _twin("cpu")


def serial_kernels():
    """A block in which the numba kernels run their serial copies only (several threads calling them
    at once; see ``threads.run_parallel``); nothing to do without numba."""
    cpu = _numba()
    return contextlib.nullcontext() if cpu is None else cpu.serial_only()


def serial() -> bool:
    """Whether the numba kernels run their serial copies only now (a part of a split batch, one core)."""
    cpu = _numba()
    return cpu is not None and cpu.serial()


def for_array(x):
    """The kernel module (reference, cpu or gpu) that handles ``x``."""
    if is_gpu_array(x):
        return _twin("gpu")
    return _numba() if cpu_kernels() == "numba" else reference


def matmul(a, b, out=None):
    """a (M, K) or (K,) @ b (K, N) -> (M, N) or (N,), into ``out`` if given."""
    if is_gpu_array(a):
        from . import cublas
        return cublas.matmul(a, b, out)
    return np.matmul(a, b, out=out)


def im2col(x, kh, kw, stride=1, padding=0, out=None, ones=False, out_hw=None):
    """x: (B, C, H, W) -> cols: (B * OH * OW, kh * kw * C), columns ordered (i, j, c); into ``out`` if given.
    ``ones`` appends a column of ones (for a bias folded into the weight matrix); ``out_hw`` = (OH, OW)
    keeps the output map's first OH rows and OW columns only (default: all of it)."""
    return for_array(x).im2col(x, kh, kw, stride, padding, out, ones, out_hw)


def col2im(cols, x_shape, kh, kw, stride=1, padding=0, out_hw=None, out=None):
    """cols: (B * OH * OW, kh * kw * C) -> dx: (B, C, H, W), the adjoint of im2col (same ``out_hw``); into
    ``out`` if given (on the CPU with numba: a channels-last array)."""
    return for_array(cols).col2im(cols, x_shape, kh, kw, stride, padding, out_hw, out)


def maxpool_forward(x, k, stride, relu=False):
    """x: (B, C, H, W) -> (out, argmax), each (B, C, OH, OW); ``relu`` rectifies out in the same pass."""
    return for_array(x).maxpool_forward(x, k, stride, relu)


def maxpool_backward(grad, argmax, x_shape, k, stride, out=None):
    """grad, argmax: (B, C, OH, OW) -> dx: (B, C, H, W); given the rectified ``out`` of
    maxpool_forward(..., relu=True), the gradient passes only where out > 0."""
    return for_array(grad).maxpool_backward(grad, argmax, x_shape, k, stride, out)


def winograd_input(x, padding, tiles, out=None, first_tile=0, m=2):
    """x: (B, C, H, W) -> V: (a * a, B * TH * TW, C), a = m + 2, Winograd F(m x m, 3x3)'s input transform
    of every tile (m = 2 or 4; ``tiles`` = (TH, TW), reference.winograd_tiles); CPU only. Into ``out``
    (a * a, T, C) if given (its rows say m), x's tiles from tile ``first_tile`` on (a block of a larger
    batch). The other Winograd kernels read m from their arrays' a * a rows."""
    return for_array(x).winograd_input(x, padding, tiles, out, first_tile, m)


def winograd_output(M, out_hw, tiles, bias=None, out=None):
    """M: (a * a, B * TH * TW, OC) -> y: (B, OC, OH, OW), channels-last in memory, plus ``bias``; into
    ``out`` (channels-last) if given."""
    return for_array(M).winograd_output(M, out_hw, tiles, bias, out)


def winograd_grad_output(grad, tiles, out=None, first_tile=0, m=2):
    """grad: (B, OC, OH, OW) -> dM: (a * a, B * TH * TW, OC), the adjoint of winograd_output; into ``out``
    from tile ``first_tile`` on (as winograd_input). grad may be batch norm's deferred input gradient
    (batchnorm_backward(defer=True)): F(4x4)'s transform computes it tile by tile."""
    return for_array(grad).winograd_grad_output(grad, tiles, out, first_tile, m)


def is_deferred_grad(grad) -> bool:
    """Whether ``grad`` is batch norm's input gradient deferred as its terms (batchnorm_backward(defer=True))."""
    cpu = _numba()
    return cpu is not None and isinstance(grad, cpu.BatchNormInputGrad)


def winograd_output_pool(M, tiles, bias=None, relu=False, out=None):
    """winograd_output of the whole tile grid and the 2x2, stride-2 max-pooling of it (``relu``: of its
    rectified values) in one pass -> (pooled, argmax), (B, OC, TH, TW) each, as maxpool_forward's;
    into ``out`` = (pooled, argmax), channels-last, if given."""
    return for_array(M).winograd_output_pool(M, tiles, bias, relu, out)


def winograd_grad_output_pool(grad, argmax, tiles, rectified=None, out=None, first_tile=0):
    """grad: the pooled gradient (B, OC, TH, TW) -> dM: (16, B * TH * TW, OC), the adjoint of
    winograd_output_pool (``rectified``: its relu=True output, the ReLU's mask); into ``out`` from
    tile ``first_tile`` on."""
    return for_array(grad).winograd_grad_output_pool(grad, argmax, tiles, rectified, out, first_tile)


def winograd_grad_input(dV, x_shape, padding, tiles, out=None):
    """dV: (a * a, B * TH * TW, C) -> dx: (B, C, H, W), channels-last in memory: winograd_input's adjoint;
    into ``out`` (channels-last) if given."""
    return for_array(dV).winograd_grad_input(dV, x_shape, padding, tiles, out)


def winograd_weight(w, m=2):
    """w: (OC, C, 3, 3) -> U: (a * a, C, OC), Winograd F(m x m, 3x3)'s weight transform."""
    return for_array(w).winograd_weight(w, m)


def winograd_weight_grad(dU):
    """dU: (a * a, C, OC) -> dw: (OC, C, 3, 3), the adjoint of winograd_weight."""
    return for_array(dU).winograd_weight_grad(dU)


def add_bias(y, b, relu=False):
    """y: (N, F) += b: (F,), in place (a layer's bias); returns y. ``relu`` rectifies y in the same pass."""
    return for_array(y).add_bias(y, b, relu)


def add_bias_checked(y, b, relu=False) -> bool:
    """add_bias(y, b, relu), and whether every value of y + b (before the ReLU) was finite."""
    return for_array(y).add_bias_checked(y, b, relu)


def batchnorm_forward(x, weight, bias, eps: float, relu: bool = False, pool=None, keep_xhat: bool = True):
    """x: (B, C, H, W) -> (y, xhat, mean, var): batch norm with the batch's statistics (mean and var
    (C,) float64, var biased), y rectified with ``relu``; y and xhat in x's memory layout. ``pool``:
    for a part of a split batch, (n, mean, var) of the part -> (mean, var) of the whole batch. Without
    ``keep_xhat``, xhat is None and not written (one pass less: backward recomputes it from x)."""
    return for_array(x).batchnorm_forward(x, weight, bias, eps, relu, pool, keep_xhat)


def scale_shift(x, scale, shift, relu: bool = False):
    """x: (B, C, H, W) -> x * scale + shift per channel, rectified with ``relu`` (batch norm in eval mode)."""
    return for_array(x).scale_shift(x, scale, shift, relu)


def batchnorm_backward(grad, xhat, weight, inv_std, y=None, bias=None, pool=None, x=None, mean=None,
                       defer: bool = False):
    """-> (dx, dweight, dbias) of batchnorm_forward, the gradient masked by y > 0 when y (the rectified
    output) is given; with ``bias`` too, the mask may be recomputed from xhat (the same bits). ``pool``:
    for a part of a split batch, (n, this part's [dbias, dweight]) -> the whole batch's (n, sums).
    xhat None: recomputed from the forward pass's input ``x`` and ``mean`` as batchnorm_forward did.
    ``defer``: dx may come back as its terms, a ``cpu.BatchNormInputGrad`` (numba kernels, x given),
    which winograd_grad_output reads without dx being written out; ``.compute()`` gives dx."""
    module = for_array(grad)
    if defer and module is _numba():
        return module.batchnorm_backward(grad, xhat, weight, inv_std, y, bias, pool, x, mean, defer=True)
    return module.batchnorm_backward(grad, xhat, weight, inv_std, y, bias, pool, x, mean)


def relu_forward(x, inplace: bool = False):
    """x: any shape -> max(x, 0), in x's memory layout; ``inplace`` overwrites and returns x."""
    return for_array(x).relu_forward(x, inplace)


def add_relu(a, b, out=None):
    """a, b: the same shape -> max(a + b, 0), in a's memory layout; into ``out`` (a or b may be it)."""
    return for_array(a).add_relu(a, b, out)


def relu_backward(grad, y):
    """grad, y = relu_forward(x): same shape -> dx = grad where y > 0, else 0."""
    return for_array(grad).relu_backward(grad, y)


def adam_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """In place: parameter p, moments m and v (same shape) take one Adam step with gradient g."""
    return for_array(p).adam_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step)


def adam_update_coef(p, g, m, v, coef, beta1, beta2, eps, weight_decay):
    """adam_update with the step's two factors read from device memory, coef = (lr / (1 - beta1^t),
    sqrt(1 - beta2^t)) (float64, (2,)), so that a recorded CUDA graph replays it unchanged; GPU only."""
    if not is_gpu_array(p):
        raise TypeError("kernels.adam_update_coef runs on GPU arrays only (the factors live in device memory)")
    return _twin("gpu").adam_update_coef(p, g, m, v, coef, beta1, beta2, eps, weight_decay)


def sgd_update(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    """In place: parameter p (and momentum buffer ``buf``) take one SGD step with gradient g."""
    return for_array(p).sgd_update(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first)
