"""Winograd F(m x m, 3x3): a 3x3, stride-1 convolution in fewer multiplications than im2col's.

Each (m + 2) x (m + 2) tile of the (padded) input gives an m x m tile of outputs: V = B^T d B
transforms the input tile, U = G g G^T the 3x3 kernel, and y = A^T (U . V) A, where the K = (m + 2)^2
products U . V, summed over the input channels, are K matrix products: M[k] = V[k] @ U[k], V: (K,
tiles, C), U: (K, C, OC). ``kernels/reference.py`` writes out the transforms. F(2x2, 3x3) (m = 2, K =
16) takes 2.25x fewer multiplications than im2col, F(4x4, 3x3) (m = 4, K = 36, the ``winograd_4x4``
rule) 4x fewer and 1.78x fewer transformed values, with larger transforms that round more. The
results equal im2col's up to rounding.

With a 2x2, stride-2 MaxPool2d reading the convolution (``pool_into_winograd``), each 2x2 tile of
outputs is one pooling window: the output transform writes only the windows' maxima (rectified, with
the ReLU between them), and in backward the pooled gradient goes straight into the output gradient's
transform. The same bits as Winograd followed by the pooling.
"""
from __future__ import annotations

import numpy as np

from .. import kernels
from ..checks import check_grad, no_forward
from ..kernels.reference import winograd_tiles
from . import rules
from .steps import Step, image_blocks


# the fewest tiles (rows of its products) a block may have: a product of a single row is a matrix-vector
# product, which BLAS rounds otherwise than the whole batch's
MIN_BLOCK_TILES = 8


class WinogradStep(Step):
    """Conv2d [+ ReLU] [+ MaxPool2d(2)] as Winograd F(m x m, 3x3) on the CPU.

    out_hw: the (OH, OW) computed (the whole map, or the pixels a pooling reads); pool: whether the
    step's last layer is a 2x2 max-pooling run inside the output transform (m = 2 only: each tile is
    one window), and relu whether a ReLU sits between them; m: the output tile's side, 2 or 4."""

    def __init__(self, layers, out_hw: tuple, buffers, pool: bool = False, relu: bool = False, m: int = 2):
        super().__init__(layers)
        if pool and m != 2:
            raise ValueError("WinogradStep: the pooling runs inside F(2x2, 3x3)'s output transform only")
        self.out_hw, self.buffers, self.pool, self.relu, self.m = out_hw, buffers, pool, relu, m
        self.points = (m + 2) ** 2               # K: the transform's values per tile and channel
        self.tiles = winograd_tiles(*out_hw, m)
        self._cache = None

    def describe(self) -> str:
        what = ", 2x2 max-pooling" + (" of the ReLU" if self.relu else "") + " in its output transform"
        return (super().describe() + f": Winograd F({self.m}x{self.m}, 3x3) on {self.out_hw[0]}x{self.out_hw[1]} "
                f"outputs" + (what if self.pool else ""))

    def owns_output(self, owned: bool) -> bool:
        return not self.pool                     # the pooled output is kept as the ReLU's mask / for argmax

    def takes_deferred_grad(self) -> bool:
        """Whether backward reads batch norm's deferred input gradient in its output gradient's transform
        (``batchnorm_grad_into_winograd``): F(4x4), no pooling inside, no bias (whose gradient would
        need the map)."""
        return self.m == 4 and not self.pool and self.layer.bias is None

    def _blocks(self, x) -> list:
        """The image ranges [(b0, b1), ...] run one after the other: the whole batch, or with
        ``winograd_in_blocks`` on one core blocks whose transformed tiles fit the core's cache."""
        B, conv = x.shape[0], self.layer
        tiles = self.tiles[0] * self.tiles[1]
        C, OC = conv.in_channels, conv.out_channels
        per_image = self.points * tiles * (C + OC) * x.itemsize
        size = max(-(-MIN_BLOCK_TILES // tiles), rules.WINOGRAD_BLOCK_BYTES // per_image)
        # (one input or output channel: the products have one column, which BLAS computes as a
        # matrix-vector product, rounded otherwise for few rows than for many; float64: see
        # rules.BLOCKED_DTYPES)
        if (not rules.on("winograd_in_blocks") or not kernels.serial() or size >= B
                or x.dtype not in rules.BLOCKED_DTYPES
                or per_image * B <= rules.WINOGRAD_BLOCKS_ABOVE or min(C, OC) < 2):
            return [(0, B)]
        return image_blocks(B, size)

    def _block_buffer(self, name: str, tiles: int, channels: int, like):
        """A kept (K, tiles, channels) array for one block (the last, smaller block has its own)."""
        return self.buffers.get(self.layer, f"{name} of {tiles} tiles", (self.points, tiles, channels), like)

    def _compiled(self, x, blocks) -> bool:
        """Whether the block loop runs as one compiled call (``winograd_blocks_compiled``): F(4x4) without
        pooling, in blocks (so float32, numba's kernels, one core), products by NumPy's bundled BLAS."""
        if (len(blocks) < 2 or self.m != 4 or self.pool or not rules.on("winograd_blocks_compiled")
                or kernels.cpu_kernels() != "numba"):
            return False
        from ..kernels import cblas
        return cblas.AVAILABLE and x.dtype == np.float32

    def _two_buffers(self, name: str, blocks, channels: int, like) -> tuple:
        """The block buffers of the regular blocks and of the last (``steps.image_blocks``)."""
        per_image = self.tiles[0] * self.tiles[1]
        return tuple(self._block_buffer(name, (b1 - b0) * per_image, channels, like)
                     for b0, b1 in (blocks[0], blocks[-1]))

    @staticmethod
    def _starts(blocks) -> np.ndarray:
        """The blocks' first images, then the last one's end: the compiled loops' ``starts``."""
        return np.array([b0 for b0, _ in blocks] + [blocks[-1][1]], dtype=np.int64)

    def _forward_compiled(self, x, blocks, U, bias, out, V):
        """forward's block loop through kernels.winograd_blocks.forward; V: the whole batch's, kept for
        the weight gradient, or None (eval mode: a block's own)."""
        from ..kernels import cpu, winograd_blocks
        conv = self.layer
        Mr, Ml = self._two_buffers("M", blocks, conv.out_channels, x)
        Vr, Vl = (V, V) if V is not None else self._two_buffers("V", blocks, conv.in_channels, x)
        bias = np.zeros(conv.out_channels, x.dtype) if bias is None else np.ascontiguousarray(bias, x.dtype)
        winograd_blocks.forward(cpu._as_channels_last(x), self.tiles[0], self.tiles[1], conv.padding[0],
                                x.dtype.type(0), self._starts(blocks), U, bias, out.transpose(0, 2, 3, 1),
                                V is not None, Vr, Vl, Mr, Ml)

    def _backward_compiled(self, grad, x, blocks, V, UT, dx):
        """backward's block loop through kernels.winograd_blocks.backward: writes dx, returns dU."""
        from ..kernels import cpu, winograd_blocks
        conv = self.layer
        C, OC = conv.in_channels, conv.out_channels
        dMr, dMl = self._two_buffers("dM", blocks, OC, x)
        dVr, dVl = self._two_buffers("dV", blocks, C, x)
        dU, part = np.empty((self.points, C, OC), x.dtype), np.empty((self.points, C, OC), x.dtype)
        g, terms = cpu.wino4_grad_output_args(grad)        # (batch norm's deferred gradient as its terms)
        winograd_blocks.backward(g, self.tiles[0], self.tiles[1], conv.padding[0], x.dtype.type(0),
                                 self._starts(blocks), V, UT, dU, part, dx.transpose(0, 2, 3, 1), dMr, dMl, dVr, dVl,
                                 *terms)
        return dU

    def forward(self, x, owned: bool):
        """forward as Winograd: V = input transform (K, T, C), U = weight transform (K, C, OC),
        M = V[k] @ U[k] for the K k, y = output transform of M plus the bias; a block of images at a
        time (``_blocks``), V kept whole for the weight gradient in training (in eval mode, a block's
        V only: backward, if it comes, computes V again)."""
        conv = self.layer
        conv.check_input(x)
        per_image = self.tiles[0] * self.tiles[1]
        T = x.shape[0] * per_image
        U = kernels.winograd_weight(conv.weight.data, self.m)
        bias = None if conv.bias is None else conv.bias.data
        blocks = self._blocks(x)
        keep = conv.training or len(blocks) == 1
        V = self.buffers.get(conv, "V", (self.points, T, conv.in_channels), x) if keep else None
        self._v_holds_x = keep          # False once backward has written dV into V's buffer
        if len(blocks) == 1:
            kernels.winograd_input(x, conv.padding[0], self.tiles, out=V)
            # M's buffer is kept too; backward reuses it for dM, which has its shape
            M = kernels.matmul(V, U, out=self.buffers.get(conv, "M", (self.points, T, conv.out_channels), x))
        B, OC = x.shape[0], conv.out_channels
        if self.pool:
            shape = (B, self.tiles[0], self.tiles[1], OC)
            out = (np.empty(shape, x.dtype).transpose(0, 3, 1, 2), np.empty(shape, np.int32).transpose(0, 3, 1, 2))
        else:
            out = np.empty((B,) + tuple(self.out_hw) + (OC,), x.dtype).transpose(0, 3, 1, 2)
        if self._compiled(x, blocks):   # the loop below as one compiled call (the same bits)
            self._forward_compiled(x, blocks, U, bias, out, V if keep else None)
            blocks = []
        for b0, b1 in blocks:
            if len(blocks) > 1:
                t0, t1 = b0 * per_image, b1 * per_image
                if keep:
                    kernels.winograd_input(x[b0:b1], conv.padding[0], self.tiles, out=V, first_tile=t0)
                    Vb = V[:, t0:t1]
                else:
                    Vb = kernels.winograd_input(x[b0:b1], conv.padding[0], self.tiles,
                                            out=self._block_buffer("V", t1 - t0, conv.in_channels, x))
                M = kernels.matmul(Vb, U, out=self._block_buffer("M", t1 - t0, OC, x))
            if self.pool:
                kernels.winograd_output_pool(M, self.tiles, bias, relu=self.relu,
                                             out=(out[0][b0:b1], out[1][b0:b1]))
            else:
                kernels.winograd_output(M, self.out_hw, self.tiles, bias, out=out[b0:b1])
        if not self.pool:
            self._cache = (x, V, U, None)
            return out
        self._cache = (x, V, U, (out[1], out[0] if self.relu else None))
        return out[0]

    def backward(self, grad, need_input_grad: bool):
        """The adjoint of each step of forward: dM = the output gradient's transform, dU = V[k]^T dM[k]
        (the weight gradient through the weight transform's adjoint), and for the input
        dV = dM[k] U[k]^T through the input transform's adjoint; a block of images at a time as in
        forward, dM kept whole for the weight gradient, or with ``winograd_weight_grad_in_blocks`` dU
        summed over the blocks, each block's dM used while it is in the cache and never written whole."""
        conv = self.layer
        if self._cache is None:
            raise no_forward(self.layers[-1][1])
        x, V, U, pooled = self._cache
        if kernels.is_deferred_grad(grad) and not self.takes_deferred_grad():
            grad = grad.compute()
        OH, OW = self.out_hw
        shape = (x.shape[0], conv.out_channels) + ((OH // 2, OW // 2) if self.pool else (OH, OW))
        if not kernels.is_deferred_grad(grad):  # (batch norm's step checked the gradient it was given)
            check_grad(self.layers[-1][1], grad, shape, x.dtype)
        T = x.shape[0] * self.tiles[0] * self.tiles[1]
        if not self._v_holds_x:         # a second backward after one forward, or eval mode: V again
            V = self.buffers.get(conv, "V", (self.points, T, conv.in_channels), x)
            kernels.winograd_input(x, conv.padding[0], self.tiles, out=V)
            self._cache = (x, V, U, pooled)
            self._v_holds_x = True
        blocks = self._blocks(x) if need_input_grad else [(0, x.shape[0])]
        summed_in_blocks = len(blocks) > 1 and rules.on("winograd_weight_grad_in_blocks")
        dM = None if summed_in_blocks else self.buffers.get(conv, "M", (self.points, T, conv.out_channels), x)
        per_image = self.tiles[0] * self.tiles[1]
        # U^T copied: OpenBLAS multiplies a few rows by a transposed matrix with other roundings than
        # many rows (its small-matrix path), by a plain one with the same, so blocks keep the bits
        UT = np.ascontiguousarray(U.transpose(0, 2, 1))
        dx = None
        if len(blocks) > 1:
            dx = np.empty((x.shape[0],) + x.shape[2:] + (x.shape[1],), x.dtype).transpose(0, 3, 1, 2)
        dU = None
        if (summed_in_blocks and pooled is None and dx is not None and self._compiled(x, blocks)
                and (not kernels.is_deferred_grad(grad) or grad.from_x)):
            dU = self._backward_compiled(grad, x, blocks, V, UT, dx)    # the loop below, one call, the same bits
            blocks = []
        for b0, b1 in blocks:
            t0, t1 = b0 * per_image, b1 * per_image
            # the block's dM: rows t0..t1 of the whole batch's, or a block's own buffer
            out, first = (self._block_buffer("dM", t1 - t0, conv.out_channels, x), 0) if summed_in_blocks else (dM, t0)
            if pooled is None:
                kernels.winograd_grad_output(grad[b0:b1], self.tiles, out=out, first_tile=first)
            else:                       # grad is the pooling's: (B, OC, OH / 2, OW / 2)
                argmax, rectified = pooled
                kernels.winograd_grad_output_pool(grad[b0:b1], argmax[b0:b1], self.tiles,
                                                  None if rectified is None else rectified[b0:b1],
                                                  out=out, first_tile=first)
            dMb = out[:, first:first + t1 - t0]
            if summed_in_blocks:        # this block's share of dU while its dM is in the cache
                part = kernels.matmul(V[:, t0:t1].transpose(0, 2, 1), dMb)
                dU = part if dU is None else np.add(dU, part, out=dU)
            if dx is not None:          # this block's input gradient while its dM is in the cache
                dV = kernels.matmul(dMb, UT, out=self._block_buffer("dV", t1 - t0, conv.in_channels, x))
                kernels.winograd_grad_input(dV, (b1 - b0,) + x.shape[1:], conv.padding[0], self.tiles,
                                            out=dx[b0:b1])
        # each window passes its gradient to one pixel (none where the ReLU's output is 0)
        gsum = grad if pooled is None or pooled[1] is None else grad * (pooled[1] > 0)
        if dU is None:
            dU = kernels.matmul(V.transpose(0, 2, 1), dM)
        conv.weight.grad += kernels.winograd_weight_grad(dU)
        if conv.bias is not None:
            conv.bias.grad += gsum.transpose(0, 2, 3, 1).reshape(-1, conv.out_channels).sum(axis=0)
        if not need_input_grad or dx is not None:
            return dx
        # dV into V's buffer, which the weight gradient above has finished with
        self._v_holds_x = False
        dV = kernels.matmul(dM, UT, out=V)
        return kernels.winograd_grad_input(dV, x.shape, conv.padding[0], self.tiles)
