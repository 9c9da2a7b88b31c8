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

    The weight is stored in Fortran order, i.e. as the transpose of an (in_features,
    out_features) C-ordered array, so ``x @ weight.T`` is a product of two row-major
    matrices: OpenBLAS runs it faster than with a transposed operand (the MLNN's
    256 x 2352 x 1180 inference product 6.0 -> 5.3 ms), with the same values.
    Everything else sees an ordinary (out_features, in_features) array.
    """

    new_output = True                # forward returns a new array it keeps no reference to
    _check_output = False            # set by a Sequential for one call: report in _output_finite whether
    _output_finite = True            # every value before the ReLU was finite

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=np.float32, rng=None):
        check_positive_int(type(self).__name__, in_features=in_features, out_features=out_features)
        self.in_features, self.out_features = int(in_features), int(out_features)
        # the same draws as a C-ordered weight (seeds give the same values), stored transposed (see above)
        self.weight = Parameter(np.asfortranarray(init.he_normal((out_features, in_features), dtype=dtype, rng=rng)))
        self.bias = Parameter(init.zeros((out_features,), dtype=dtype)) if bias else None
        self._x = None
        self._y = None                    # the output, when a ReLU ran fused in (its mask)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def forward(self, x):
        """x: (B, in_features) -> (B, out_features)."""
        check_array(self, x)
        check_shape(self, x, (None, self.in_features), "(B, in_features)")
        check_matches_parameter(self, x, self.weight)
        self._x = x
        y = kernels.matmul(x, self.weight.data.T)
        # inside a Sequential, a ReLU listed just after this layer may run fused in (_relu_inside, see
        # Sequential.fuse_linear_relu): rectified with the bias in one pass, the output kept for the mask
        relu = self._relu_inside
        if self.bias is not None and self._check_output:
            # asked by a Sequential whose input check this stands in for (see Sequential._input_checker)
            self._output_finite = kernels.add_bias_checked(y, self.bias.data, relu=relu)
        elif self.bias is not None:
            kernels.add_bias(y, self.bias.data, relu=relu)
        elif relu:
            kernels.relu_forward(y, inplace=True)
        self._y = y if relu else None
        return y

    def _drop_state(self):
        self._x = self._y = None

    def output_owned(self, input_owned: bool) -> bool:
        # a new array, but with a ReLU fused in it is kept for the backward mask: nobody may overwrite it
        return self._y is None and self.new_output

    def backward(self, grad, need_input_grad: bool = True):
        """grad: (B, out_features) -> (B, in_features); accumulates weight.grad and bias.grad.

        dL/dW = grad^T x, dL/db = sum over the batch of grad, dL/dx = grad W.
        With ``need_input_grad=False`` dL/dx is skipped and None returned.
        """
        if self._x is None:
            raise no_forward(self)
        check_grad(self, grad, (self._x.shape[0], self.out_features), self._x.dtype)
        if self._y is not None:           # the fused ReLU's backward first
            grad = kernels.relu_backward(grad, self._y)
        self.weight.accumulate_product(grad.T, self._x)
        if self.bias is not None:
            self.bias.grad += grad.sum(axis=0)
        return kernels.matmul(grad, self.weight.data) if need_input_grad else None

