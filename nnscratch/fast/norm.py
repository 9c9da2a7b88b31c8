"""BatchNorm2d in training as a plan step: the batch-norm kernels, with the ReLU after it fused in."""
from __future__ import annotations

import numpy as np

from .. import kernels
from ..checks import check_grad, no_forward
from .steps import Step


class BatchNormStep(Step):
    """A BatchNorm2d in training mode (batch statistics), and with ``relu`` the ReLU after it, through
    ``kernels.batchnorm_forward``/``batchnorm_backward``: what the layer computes (the layer's
    docstring has the formulas), with the statistics summed in float64. It moves the layer's running
    statistics as the layer does."""

    def __init__(self, layers, relu: bool):
        super().__init__(layers)
        self.relu = relu
        self._cache = None

    def forward(self, x, owned: bool):
        bn = self.layer
        bn.check_input(x)
        C = bn.num_features
        n = x.size // C
        if n < 2:
            return self._as_layers(x)           # the layer's own error (one value per channel)
        dt = x.dtype
        weight = bn.weight.data if bn.affine else np.ones(C, dt)
        bias = bn.bias.data if bn.affine else np.zeros(C, dt)
        y, xhat, mean, var = kernels.batchnorm_forward(x, weight, bias, bn.eps, self.relu)
        if bn.track_running_stats:
            bn.update_running_stats(mean.astype(dt), var.astype(dt), n)
        inv_std = (1 / np.sqrt(var + bn.eps)).astype(dt)
        self._cache = (xhat, weight, bias, inv_std, y if self.relu else None)
        return y

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
        xhat, weight, bias, inv_std, y = self._cache
        check_grad(self.layers[-1][1], grad, xhat.shape, xhat.dtype)
        dx, dweight, dbias = kernels.batchnorm_backward(grad, xhat, weight, inv_std, y, bias)
        bn = self.layer
        if bn.affine:
            bn.weight.grad += dweight
            bn.bias.grad += dbias
        return dx if need_input_grad else None

    def describe(self) -> str:
        relu = ", the ReLU in its last pass" if self.relu else ""
        return super().describe() + f": batch-norm kernels, batch statistics{relu}"
