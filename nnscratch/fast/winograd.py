"""Winograd F(2x2, 3x3): a 3x3, stride-1 convolution in 2.25x fewer multiplications than im2col's.

Each 4x4 tile of the (padded) input gives a 2x2 tile of outputs: V = B^T d B transforms the input
tile, U = G g G^T the 3x3 kernel, and y = A^T (U . V) A, where the 16 products U . V, summed over the
input channels, are 16 matrix products: M[k] = V[k] @ U[k], V: (16, tiles, C), U: (16, C, OC).
``kernels/reference.py`` writes out the transforms. The results equal im2col's up to rounding.

With a 2x2, stride-2 MaxPool2d reading the convolution (``pool_into_winograd``), each 2x2 tile of
outputs is one pooling window: the output transform writes only the windows' maxima (rectified, with
the ReLU between them), and in backward the pooled gradient goes straight into the output gradient's
transform. The same bits as Winograd followed by the pooling.
"""
from __future__ import annotations

from .. import kernels
from ..checks import check_grad, no_forward
from ..kernels.reference import winograd_tiles
from .steps import Step


class WinogradStep(Step):
    """Conv2d [+ ReLU] [+ MaxPool2d(2)] as Winograd F(2x2, 3x3) on the CPU.

    out_hw: the (OH, OW) computed (the whole map, or the pixels a pooling reads); pool: whether the
    step's last layer is a 2x2 max-pooling run inside the output transform, and relu whether a ReLU
    sits between them."""

    def __init__(self, layers, out_hw: tuple, buffers, pool: bool = False, relu: bool = False):
        super().__init__(layers)
        self.out_hw, self.buffers, self.pool, self.relu = out_hw, buffers, pool, relu
        self.tiles = winograd_tiles(*out_hw)
        self._cache = None

    def describe(self) -> str:
        what = ", 2x2 max-pooling" + (" of the ReLU" if self.relu else "") + " in its output transform"
        return (super().describe() + f": Winograd F(2x2, 3x3) on {self.out_hw[0]}x{self.out_hw[1]} outputs"
                + (what if self.pool else ""))

    def owns_output(self, owned: bool) -> bool:
        return not self.pool                     # the pooled output is kept as the ReLU's mask / for argmax

    def forward(self, x, owned: bool):
        """forward as Winograd: V = input transform (16, T, C), U = weight transform (16, C, OC),
        M = V[k] @ U[k] for the 16 k, y = output transform of M plus the bias."""
        conv = self.layer
        conv.check_input(x)
        T = x.shape[0] * self.tiles[0] * self.tiles[1]
        V = kernels.winograd_input(x, conv.padding[0], self.tiles,
                                   out=self.buffers.get(conv, "V", (16, T, conv.in_channels), x))
        U = kernels.winograd_weight(conv.weight.data)
        # M's buffer is kept too; backward reuses it for dM, which has its shape
        M = kernels.matmul(V, U, out=self.buffers.get(conv, "M", (16, T, conv.out_channels), x))
        bias = None if conv.bias is None else conv.bias.data
        self._cache = (x, V, U, None)
        self._v_holds_x = True          # False once backward has written dV into V's buffer
        if not self.pool:
            return kernels.winograd_output(M, self.out_hw, self.tiles, bias)
        out, argmax = kernels.winograd_output_pool(M, self.tiles, bias, relu=self.relu)
        self._cache = (x, V, U, (argmax, out if self.relu else None))
        return out

    def backward(self, grad, need_input_grad: bool):
        """The adjoint of each step of forward: dM = the output gradient's transform, dU = V[k]^T dM[k]
        (the weight gradient through the weight transform's adjoint), and for the input
        dV = dM[k] U[k]^T through the input transform's adjoint."""
        conv = self.layer
        if self._cache is None:
            raise no_forward(self.layers[-1][1])
        x, V, U, pooled = self._cache
        OH, OW = self.out_hw
        shape = (x.shape[0], conv.out_channels) + ((OH // 2, OW // 2) if self.pool else (OH, OW))
        check_grad(self.layers[-1][1], grad, shape, V.dtype)
        if not self._v_holds_x:         # a second backward after one forward: V again
            kernels.winograd_input(x, conv.padding[0], self.tiles, out=V)
            self._v_holds_x = True
        dM = self.buffers.get(conv, "M", (16, V.shape[1], conv.out_channels), x)
        if pooled is None:
            kernels.winograd_grad_output(grad, self.tiles, out=dM)
            gsum = grad
        else:                           # grad is the pooling's: (B, OC, OH / 2, OW / 2)
            argmax, rectified = pooled
            kernels.winograd_grad_output_pool(grad, argmax, self.tiles, rectified, out=dM)
            # each window passes its gradient to one pixel (none where the ReLU's output is 0)
            gsum = grad if rectified is None else grad * (rectified > 0)
        conv.weight.grad += kernels.winograd_weight_grad(kernels.matmul(V.transpose(0, 2, 1), dM))
        if conv.bias is not None:
            conv.bias.grad += gsum.transpose(0, 2, 3, 1).reshape(-1, conv.out_channels).sum(axis=0)
        if not need_input_grad:
            return None
        # dV into V's buffer, which the weight gradient above has finished with
        self._v_holds_x = False
        dV = kernels.matmul(dM, U.transpose(0, 2, 1), out=V)
        return kernels.winograd_grad_input(dV, x.shape, conv.padding[0], self.tiles)
