"""BatchNorm2d as a plan step: the batch-norm kernels, with the ReLU after it fused in."""
from __future__ import annotations

import numpy as np

from .. import distributed, kernels, parallel
from ..checks import check_grad, no_forward
from .steps import Step


def pool_statistics(parts: list) -> tuple:
    """[(n_k, mean_k, var_k)] of the parts of a batch -> (n, mean, var) of the whole (Chan et al.):
    mean = sum n_k mean_k / n, var = sum n_k (var_k + (mean_k - mean)^2) / n, in the parts' order, so
    that every part computes the same numbers."""
    n = sum(p[0] for p in parts)
    mean = sum(p[0] * p[1] for p in parts) / n
    var = sum(p[0] * (p[2] + (p[1] - mean) ** 2) for p in parts) / n
    return n, mean, var


class BatchNormStep(Step):
    """A BatchNorm2d, and with ``relu`` the ReLU after it: what the layer computes (the layer's
    docstring has the formulas). With batch statistics (training) through
    ``kernels.batchnorm_forward``/``batchnorm_backward`` (the statistics summed in the map's dtype over
    chunks of 1,024 rows, the chunks' sums added in float64: ``kernels/cpu.py``), moving the
    layer's running statistics as the layer does; with the running statistics (eval mode) one pass of
    ``kernels.scale_shift``, y = x * scale + shift with scale = weight / sqrt(running_var + eps) and
    shift = bias - running_mean * scale.

    In a part of a split batch (``parallel.batch_group``) the parts pool their statistics, and in the
    backward pass their gradient sums, so that each computes what the whole batch would: the sums
    meet once per layer each way (``parallel.BatchGroup``). The ranks of an MPI job pool theirs the
    same way inside ``TrainStep``'s step (``distributed.synced``), all-gathered and added in rank
    order, so that every rank computes the same numbers."""

    def __init__(self, layers, relu: bool):
        super().__init__(layers)
        self.relu = relu
        self._cache = None
        self._fixed = False             # whether the last forward used the running statistics
        # batchnorm_grad_into_winograd: the step before reads the input gradient as its terms
        # (kernels.batchnorm_backward(defer=True)), so dx is never written out
        self.defer_input_grad = False

    def forward(self, x, owned: bool):
        bn = self.layer
        bn.check_input(x)
        C = bn.num_features
        n = x.size // C
        group, ranks = parallel.batch_group(), distributed.batch_norm_synced_now()
        if n < 2 and group is None and not ranks:
            return self._as_layers(x)           # the layer's own error (one value per channel)
        dt = x.dtype
        weight = bn.weight.data if bn.affine else np.ones(C, dt)
        bias = bn.bias.data if bn.affine else np.zeros(C, dt)
        if not bn.training and bn.track_running_stats:
            return self._fixed_statistics(x, weight, bias)
        pooled = [n]
        pool = None
        if group is not None:
            def pool(n_part, mean, var):
                pooled[0], mean, var = pool_statistics(group[0].exchange(group[1], (n_part, mean, var)))
                return mean, var
        elif ranks:
            def pool(n_part, mean, var):
                every = distributed.gather_in_rank_order(np.concatenate([[n_part], mean, var]))
                pooled[0], mean, var = pool_statistics([(int(e[0]), e[1:C + 1], e[C + 1:]) for e in every])
                return mean, var
        # xhat is not written out: backward recomputes it from x (which nobody else writes) and the
        # mean, the same bits, so the forward pass writes one map where it wrote two
        y, _, mean, var = kernels.batchnorm_forward(x, weight, bias, bn.eps, self.relu, pool, keep_xhat=False)
        n = pooled[0]
        # the parts of a split batch share the running statistics' arrays (parallel._replica) and
        # computed the same pooled mean and variance: the first part moves them, once
        if bn.track_running_stats and (group is None or group[1] == 0):
            bn.update_running_stats(mean.astype(dt), var.astype(dt), n)
        inv_std = (1 / np.sqrt(var + bn.eps)).astype(dt)
        self._cache, self._fixed = (x, mean, weight, bias, inv_std, y if self.relu else None), False
        return y

    def _fixed_statistics(self, x, weight, bias):
        bn, dt = self.layer, x.dtype
        inv_std = (1 / np.sqrt(bn.running_var.data.astype(np.float64) + bn.eps)).astype(dt)
        scale = weight * inv_std
        shift = bias - bn.running_mean.data * scale
        y = kernels.scale_shift(x, scale, shift, self.relu)
        self._cache, self._fixed = (x, inv_std, scale, y if self.relu else None), True
        return y

    def _fixed_backward(self, grad, need_input_grad):
        """dL/dx = g' * scale, g' the gradient masked by the fused ReLU; the parameters' gradients
        from xhat = (x - running_mean) * inv_std."""
        x, inv_std, scale, y = self._cache
        bn = self.layer
        check_grad(self.layers[-1][1], grad, x.shape, x.dtype)
        shape = (1, -1, 1, 1)
        g = grad if y is None else grad * (y > 0)
        if bn.affine:
            xhat = (x - bn.running_mean.data.reshape(shape)) * inv_std.reshape(shape)
            bn.weight.grad += (g * xhat).sum(axis=(0, 2, 3))
            bn.bias.grad += g.sum(axis=(0, 2, 3))
        return g * scale.reshape(shape) if need_input_grad else None

    def _as_layers(self, x):
        self._cache = None
        for _, layer in self.layers:
            x = layer.forward(x)
        return x

    def owns_output(self, owned: bool) -> bool:
        return not self.relu                    # with the ReLU inside, y is its mask: nobody may overwrite it

    def backward(self, grad, need_input_grad: bool):
        if self._cache is None:
            raise no_forward(self.layer)
        if self._fixed:
            return self._fixed_backward(grad, need_input_grad)
        x, mean, weight, bias, inv_std, y = self._cache
        check_grad(self.layers[-1][1], grad, x.shape, x.dtype)
        group, pool = parallel.batch_group(), None
        if group is not None:
            def pool(n_part, sums):
                parts = group[0].exchange(group[1], (n_part, sums))
                return sum(p[0] for p in parts), sum(p[1] for p in parts)
        elif distributed.batch_norm_synced_now():
            def pool(n_part, sums):
                every = distributed.gather_in_rank_order(np.concatenate([[n_part], sums.reshape(-1)]))
                return sum(int(e[0]) for e in every), sum(e[1:].reshape(sums.shape) for e in every)
        dx, dweight, dbias = kernels.batchnorm_backward(grad, None, weight, inv_std, y, bias, pool, x=x, mean=mean,
                                                        defer=self.defer_input_grad and need_input_grad)
        bn = self.layer
        if bn.affine:
            bn.weight.grad += dweight
            bn.bias.grad += dbias
        return dx if need_input_grad else None

    def describe(self) -> str:
        relu = ", the ReLU in its last pass" if self.relu else ""
        stats = "batch statistics" if self.layer.training or not self.layer.track_running_stats else \
            "running statistics, one scale-and-shift pass"
        deferred = "; its input gradient computed inside the convolution's transform" if self.defer_input_grad else ""
        return super().describe() + f": batch-norm kernels, {stats}{relu}{deferred}"


class FoldedConvStep(Step):
    """In eval mode, a Conv2d and the BatchNorm2d after it as one convolution (``batchnorm_into_conv``):
    with the running statistics fixed, batch norm is y = s * conv(x) + t per output channel, s =
    gamma / sqrt(running_var + eps), t = beta - running_mean * s, which is the convolution with the
    weight W' = s W and the bias b' = s b + t (b = 0 for a conv without bias). The folded weights go
    into a twin Conv2d, refreshed from the layers at every pass, which ``inner`` (the conv step the
    planner chose for the twin: im2col or Winograd) runs. No pass of its own for batch norm.

    Backward maps the twin's gradients back by the chain rule: dW = s dW', db = s db',
    ds = sum(dW' * W) + db' * (b - running_mean), dgamma = ds / sqrt(running_var + eps), dbeta = db'."""

    def __init__(self, layers, twin, make_inner):
        super().__init__(layers)
        self.twin = twin
        self.inner = make_inner(twin)

    def _folded(self):
        """(s, inv_std) after writing W' and b' into the twin."""
        conv, bn = self.layers[0][1], self.layers[1][1]
        dt = conv.weight.dtype
        inv_std = (1 / np.sqrt(bn.running_var.data.astype(np.float64) + bn.eps)).astype(dt)
        gamma = bn.weight.data if bn.affine else np.ones_like(inv_std)
        beta = bn.bias.data if bn.affine else np.zeros_like(inv_std)
        s = gamma * inv_std
        b = conv.bias.data if conv.bias is not None else np.zeros_like(s)
        self.twin.weight.data[...] = conv.weight.data * s[:, None, None, None]
        self.twin.bias.data[...] = s * (b - bn.running_mean.data) + beta
        return s, inv_std

    def forward(self, x, owned: bool):
        self._scales = self._folded()
        self.twin.zero_grad()
        return self.inner.forward(x, owned)

    def backward(self, grad, need_input_grad: bool):
        dx = self.inner.backward(grad, need_input_grad)
        conv, bn = self.layers[0][1], self.layers[1][1]
        s, inv_std = self._scales
        dw, db = self.twin.weight.grad, self.twin.bias.grad
        conv.weight.grad += dw * s[:, None, None, None]
        b = conv.bias.data if conv.bias is not None else np.zeros_like(s)
        if conv.bias is not None:
            conv.bias.grad += db * s
        if bn.affine:
            ds = (dw * conv.weight.data).sum(axis=(1, 2, 3)) + db * (b - bn.running_mean.data)
            bn.weight.grad += ds * inv_std
            bn.bias.grad += db
        self.twin.zero_grad()
        return dx

    def drop(self):
        self.inner.drop()

    def describe(self) -> str:
        inner = self.inner.describe().split(": ", 2)[-1]         # what the twin's step does
        return super().describe() + f": batch norm folded into the convolution's weights; {inner}"
