"""Batch normalization: each channel standardised by its mean and variance, then scaled and shifted."""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..checks import check_array, check_grad, check_matches_parameter, check_positive_int, check_shape, no_forward
from .module import Buffer, Module, Parameter


class _BatchNorm(Module):
    """The maths shared by ``BatchNorm1d`` and ``BatchNorm2d``; they differ only in the input's shape.

    Channel c's statistics run over every axis but the channel axis (1): with n values per channel,

        mean = sum(x) / n,  var = sum((x - mean)^2) / n  (biased),  xhat = (x - mean) / sqrt(var + eps),
        y = weight * xhat + bias.

    In training the batch's own statistics are used, and the running ones move towards them:
    running = (1 - momentum) * running + momentum * batch, with the unbiased variance var * n / (n - 1)
    (``momentum=None``: a plain average over the batches seen, 1 / num_batches_tracked). In eval
    mode the running statistics stand in for the batch's, so each sample is treated alone.

    Backward, with g = dL/dy and s = 1 / sqrt(var + eps): dL/dweight = sum(g * xhat), dL/dbias =
    sum(g), and, writing d = weight * g (dL/dxhat),

        batch statistics:   dL/dx = s / n * (n * d - sum(d) - xhat * sum(d * xhat)),
        running statistics: dL/dx = s * d,

    the first because mean and var depend on every x of the channel (``examples/11_batch_norm.py``
    derives it). The sums run over the same axes as the statistics.

    weight: (C,) ones; bias: (C,) zeros (with ``affine``); buffers running_mean (C,) zeros,
    running_var (C,) ones, num_batches_tracked () int64, as PyTorch names them.
    """

    _axes_names = ""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, dtype=np.float32):
        check_positive_int(type(self).__name__, num_features=num_features)
        if not eps > 0:
            raise ValueError(f"{type(self).__name__}: eps must be positive, got {eps!r}")
        if momentum is not None and not 0 <= momentum <= 1:
            raise ValueError(f"{type(self).__name__}: momentum must be in [0, 1] or None, got {momentum!r}")
        C = self.num_features = int(num_features)
        self.eps, self.momentum = float(eps), momentum
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        self.weight = Parameter(np.ones(C, dtype=dtype)) if affine else None
        self.bias = Parameter(np.zeros(C, dtype=dtype)) if affine else None
        if track_running_stats:
            self.running_mean = Buffer(np.zeros(C, dtype=dtype))
            self.running_var = Buffer(np.ones(C, dtype=dtype))
            self.num_batches_tracked = Buffer(np.array(0, dtype=np.int64))
        self._cache = None

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")

    def _stats_axes(self, x) -> tuple:
        return (0,) + tuple(range(2, x.ndim))

    def _per_channel(self, v, ndim: int):
        """(C,) -> a shape that broadcasts along the channel axis of an ndim-D input."""
        return v.reshape((1, -1) + (1,) * (ndim - 2))

    def check_input(self, x):
        check_array(self, x)
        if x.ndim not in self._ranks:
            check_shape(self, x, (None, self.num_features) + (None,) * (self._ranks[0] - 2), self._axes_names)
        check_shape(self, x, (None, self.num_features) + (None,) * (x.ndim - 2), self._axes_names)
        if self.affine:
            check_matches_parameter(self, x, self.weight)
        elif self.track_running_stats:
            check_matches_parameter(self, x, self.running_mean, what="input")

    def forward(self, x):
        """x: (B, C, ...) -> y, the same shape."""
        self.check_input(x)
        xp = get_array_module(x)
        axes, n = self._stats_axes(x), x.size // self.num_features
        batch_stats = self.training or not self.track_running_stats
        if batch_stats:
            if n < 2 and self.training:
                raise ValueError(f"{self}: expected more than 1 value per channel in training, got input of shape "
                                 f"{tuple(x.shape)}; use a larger batch, or model.eval() to use the running statistics")
            mean = x.mean(axis=axes)
            xc = x - self._per_channel(mean, x.ndim)
            var = (xc * xc).mean(axis=axes)                                   # biased: divides by n
            if self.training and self.track_running_stats:
                self.update_running_stats(mean, var, n)
        else:
            mean, var = self.running_mean.data, self.running_var.data
            xc = x - self._per_channel(mean, x.ndim)
        inv_std = 1 / xp.sqrt(var + x.dtype.type(self.eps))                   # s, (C,)
        xhat = xc * self._per_channel(inv_std, x.ndim)
        self._cache = (xhat, inv_std, batch_stats)
        if not self.affine:
            return xhat
        return xhat * self._per_channel(self.weight.data, x.ndim) + self._per_channel(self.bias.data, x.ndim)

    def update_running_stats(self, mean, var, n: int):
        """running <- (1 - f) running + f batch, f = momentum (or 1 / batches seen), var unbiased;
        mean and var: the batch's (C,), var biased, over n values per channel."""
        self.num_batches_tracked.data += 1
        f = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked.data
        self.running_mean.data[...] = (1 - f) * self.running_mean.data + f * mean
        self.running_var.data[...] = (1 - f) * self.running_var.data + f * var * (n / (n - 1))

    def backward(self, grad, need_input_grad: bool = True):
        """grad: dL/dy, the input's shape -> dL/dx; accumulates dL/dweight and dL/dbias."""
        if self._cache is None:
            raise no_forward(self)
        xhat, inv_std, batch_stats = self._cache
        check_grad(self, grad, xhat.shape, xhat.dtype)
        axes, ndim = self._stats_axes(grad), grad.ndim
        if self.affine:
            self.weight.grad += (grad * xhat).sum(axis=axes)
            self.bias.grad += grad.sum(axis=axes)
        if not need_input_grad:
            return None
        d = grad * self._per_channel(self.weight.data, ndim) if self.affine else grad     # dL/dxhat
        s = self._per_channel(inv_std, ndim)
        if not batch_stats:
            return d * s
        n = grad.size // self.num_features
        d_sum = self._per_channel(d.sum(axis=axes), ndim)
        dx_sum = self._per_channel((d * xhat).sum(axis=axes), ndim)
        return (s / n) * (n * d - d_sum - xhat * dx_sum)


class BatchNorm2d(_BatchNorm):
    """Batch normalization over (B, C, H, W) inputs: statistics per channel over B, H and W."""

    _ranks, _axes_names = (4,), "(B, C, H, W)"


class BatchNorm1d(_BatchNorm):
    """Batch normalization over (B, C) or (B, C, L) inputs: statistics per channel over B (and L)."""

    _ranks, _axes_names = (2, 3), "(B, C) or (B, C, L)"
