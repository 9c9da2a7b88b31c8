"""Fully connected layer: y = x W^T + b."""
from __future__ import annotations

import numpy as np

from .. import init, kernels
from ..checks import check_array, check_positive_int, check_grad, check_matches_parameter, check_shape, no_forward
from .module import Module, Parameter


class Linear(Module):
    """y = x @ weight.T + bias.

    x: (B, in_features) -> y: (B, out_features).
    weight: (out_features, in_features), He-normal; bias: (out_features,), zeros.

    Backward, for g = dL/dy (B, out_features): dL/dW = g^T x, dL/db = the sum of g
    over the batch, dL/dx = g W.

    The weight is stored in Fortran order, i.e. as the transpose of an (in_features,
    out_features) C-ordered array, so that ``x @ weight.T`` multiplies two row-major
    matrices (which BLAS runs faster than a product with a transposed operand, with
    the same values). Everything else sees an ordinary (out_features, in_features) array.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=np.float32, rng=None):
        check_positive_int(type(self).__name__, in_features=in_features, out_features=out_features)
        self.in_features, self.out_features = int(in_features), int(out_features)
        # the same draws as a C-ordered weight (seeds give the same values), stored transposed (see above)
        self.weight = Parameter(np.asfortranarray(init.he_normal((out_features, in_features), dtype=dtype, rng=rng)))
        self.bias = Parameter(init.zeros((out_features,), dtype=dtype)) if bias else None
        self._x = None

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def check_input(self, x):
        """A clear error unless x is a (B, in_features) array of the weight's dtype and device."""
        check_array(self, x)
        check_shape(self, x, (None, self.in_features), "(B, in_features)")
        check_matches_parameter(self, x, self.weight)

    def forward(self, x):
        """x: (B, in_features) -> (B, out_features)."""
        self.check_input(x)
        self._x = x
        y = kernels.matmul(x, self.weight.data.T)
        if self.bias is not None:
            y += self.bias.data
        return y

    def backward(self, grad, need_input_grad: bool = True):
        """grad: (B, out_features) -> (B, in_features); accumulates weight.grad and bias.grad.

        With ``need_input_grad=False`` dL/dx is skipped and None returned.
        """
        if self._x is None:
            raise no_forward(self)
        check_grad(self, grad, (self._x.shape[0], self.out_features), self._x.dtype)
        self.weight.grad += kernels.matmul(grad.T, self._x)
        if self.bias is not None:
            self.bias.grad += grad.sum(axis=0)
        return kernels.matmul(grad, self.weight.data) if need_input_grad else None
