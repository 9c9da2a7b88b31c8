"""The steps a plan runs: each stands for one layer, or a few fused, and reads and writes their
``Parameter``s. Every step computes what its layers compute (``tests/test_fast.py`` holds it to them).

A step has ``forward(x, owned) -> y``, where ``owned`` says that nobody but the plan holds x (the
layer before created it), ``owns_output(owned)`` (may the next step overwrite y?), ``backward(grad,
need_input_grad)``, ``drop()`` (let go of what forward kept), and ``describe()`` for printing.
The Winograd convolution is in ``winograd.py``.
"""
from __future__ import annotations

import numpy as np

from .. import kernels
from ..backend import get_array_module
from ..checks import check_grad, no_forward
from ..layers import Flatten, Residual
from . import rules
from .buffers import accumulate_product


def image_blocks(B: int, size: int) -> list:
    """[(b0, b1), ...]: B images in consecutive blocks of ``size`` (size < B), the last, short block
    joined to the one before (the block rules of Im2colStep and WinogradStep)."""
    blocks = [(b, min(b + size, B)) for b in range(0, B, size)]
    if blocks[-1][1] - blocks[-1][0] < size:
        blocks[-2:] = [(blocks[-2][0], B)]
    return blocks


class Step:
    """Base: the layers a step stands for (``layers``: [(index in the Sequential, layer)])."""

    def __init__(self, layers: list):
        self.layers = layers

    @property
    def layer(self):
        """The step's main layer (the one with parameters, if any)."""
        return self.layers[0][1]

    def has_parameters(self) -> bool:
        return any(layer.parameters() for _, layer in self.layers)

    def owns_output(self, owned: bool) -> bool:
        return True

    def drop(self):
        self._cache = None

    def describe(self) -> str:
        names = " + ".join(f"{type(layer).__name__} [{i}]" for i, layer in self.layers)
        return f"{type(self).__name__}: {names}"


class LayerStep(Step):
    """A layer run as written (``layer.forward``/``backward``): Flatten, a nested model, any layer the
    planner has no rule for, or one whose forward or backward was replaced on the instance."""

    def forward(self, x, owned: bool):
        return self.layer.forward(x)

    def owns_output(self, owned: bool) -> bool:
        if type(self.layer) is Residual:
            return True                     # body(x) + shortcut(x): a fresh sum that nobody else holds
        return owned and type(self.layer) is Flatten        # a view of the input: owned as it was

    def backward(self, grad, need_input_grad: bool):
        return self.layer.backward(grad, need_input_grad=need_input_grad)

    def drop(self):
        pass


class ResidualReluStep(Step):
    """Residual then ReLU (``residual_relu``): y = max(body(x) + shortcut(x), 0) in one pass, written
    over the body's output when its plan says nobody else holds it (no new map, no second pass for
    the ReLU); in backward the input gradient's sum g_body + g_short written over the masked
    gradient g, which both branches have finished with. The same bits as the two layers."""

    def __init__(self, layers):
        super().__init__(layers)
        self._cache = None

    def forward(self, x, owned: bool):
        from .. import execution
        res = self.layer
        y = res.body.forward(x)
        s = x if res.shortcut is None else res.shortcut.forward(x)
        res.check_shapes(y, s)
        plan = execution.last_plan(res.body)            # None: a body the planner does not run
        mine = (plan is not None and getattr(plan, "output_owned", False) and y is not x and y is not s
                and y.dtype == s.dtype and y.flags.writeable)
        out = kernels.add_relu(y, s, out=y if mine else None)
        res._ran = True
        self._cache = out
        return out

    def owns_output(self, owned: bool) -> bool:
        return False                        # the output is the ReLU's mask

    def backward(self, grad, need_input_grad: bool):
        out = self._cache
        if out is None:
            raise no_forward(self.layers[-1][1])
        res = self.layer
        check_grad(self.layers[-1][1], grad, out.shape, out.dtype)
        g = kernels.relu_backward(grad, out)
        g_body = res.body.backward(g, need_input_grad=need_input_grad)
        g_short = g if res.shortcut is None else res.shortcut.backward(g, need_input_grad=need_input_grad)
        if not need_input_grad:
            return None
        xp = get_array_module(g)
        # g is this step's own array, read by both branches and now free: the sum goes there unless
        # a branch handed back (a view of) g itself
        if (g_body.shape == g.shape and g_short.shape == g.shape and g_body.dtype == g.dtype == g_short.dtype
                and not xp.may_share_memory(g_body, g)
                and (g_short is g or not xp.may_share_memory(g_short, g))):
            return xp.add(g_body, g_short, out=g)
        return g_body + g_short

    def describe(self) -> str:
        return super().describe() + ": the sum and the ReLU in one pass, over the body's output"


class ReluStep(Step):
    """ReLU, overwriting its input when the plan owns it (``relu_in_place``)."""

    def __init__(self, layers, in_place: bool):
        super().__init__(layers)
        self.in_place = in_place
        self._cache = None

    def forward(self, x, owned: bool):
        self.layer.check_input(x)
        self._cache = y = kernels.relu_forward(x, inplace=self.in_place and owned)
        return y

    def backward(self, grad, need_input_grad: bool):
        y = self._cache
        if y is None:
            raise no_forward(self.layer)
        check_grad(self.layer, grad, y.shape, y.dtype)
        return kernels.relu_backward(grad, y) if need_input_grad else None

    def describe(self) -> str:
        return super().describe() + (" (in place on an input nobody else holds)" if self.in_place else "")


class PoolStep(Step):
    """MaxPool2d; with ``relu`` (the ReLU listed before it, ``relu_into_pool``) the pooling kernel
    rectifies what it outputs, and its backward applies the ReLU's mask: max(relu(x)) = relu(max(x))."""

    def __init__(self, layers, relu: bool):
        super().__init__(layers)
        self.relu = relu
        self._cache = None

    @property
    def pool(self):
        return self.layers[-1][1]

    def owns_output(self, owned: bool) -> bool:
        return not self.relu                     # with the ReLU the output is kept for its mask

    def forward(self, x, owned: bool):
        pool = self.pool
        pool.check_input(x)
        out, argmax = kernels.maxpool_forward(x, pool.kernel_size, pool.stride, relu=self.relu)
        self._cache = (x.shape, x.dtype, argmax, out if self.relu else None)
        return out

    def backward(self, grad, need_input_grad: bool):
        if self._cache is None:
            raise no_forward(self.pool)
        x_shape, dtype, argmax, rectified = self._cache
        pool = self.pool
        check_grad(pool, grad, pool.output_shape(x_shape), dtype)
        if not need_input_grad:
            return None
        return kernels.maxpool_backward(grad, argmax, x_shape, pool.kernel_size, pool.stride, out=rectified)


class LinearStep(Step):
    """Linear; with ``relu`` (the ReLU listed after it, ``relu_into_linear``) the bias and the ReLU in
    one pass over the output, the output kept as the ReLU's mask. ``forward_checked`` also reports
    whether every value before the ReLU was finite (``input_check_in_bias``)."""

    def __init__(self, layers, relu: bool):
        super().__init__(layers)
        self.relu = relu
        self._cache = None

    def owns_output(self, owned: bool) -> bool:
        return not self.relu                     # with the ReLU the output is kept for its mask

    def forward(self, x, owned: bool):
        return self._forward(x, check=False)[0]

    def forward_checked(self, x):
        """(y, whether every value of x W^T + b was finite)."""
        return self._forward(x, check=True)

    def _forward(self, x, check: bool):
        linear = self.layer
        linear.check_input(x)
        y = kernels.matmul(x, linear.weight.data.T)
        finite = True
        if linear.bias is not None and check:
            finite = kernels.add_bias_checked(y, linear.bias.data, relu=self.relu)
        elif linear.bias is not None:
            kernels.add_bias(y, linear.bias.data, relu=self.relu)
        elif self.relu:
            kernels.relu_forward(y, inplace=True)
        self._cache = (x, y if self.relu else None)
        return y, finite

    def backward(self, grad, need_input_grad: bool):
        if self._cache is None:
            raise no_forward(self.layer)
        x, y = self._cache
        linear = self.layer
        check_grad(linear, grad, (x.shape[0], linear.out_features), x.dtype)
        if y is not None:                        # the fused ReLU's backward first
            grad = kernels.relu_backward(grad, y)
        accumulate_product(linear.weight, grad.T, x)
        if linear.bias is not None:
            linear.bias.grad += grad.sum(axis=0)
        return kernels.matmul(grad, linear.weight.data) if need_input_grad else None


class Im2colStep(Step):
    """Conv2d as im2col and one product, as the layer computes it, plus: the bias folded into the
    product (a column of ones in ``cols``, the bias as the weight matrix's last column: no pass of its
    own, and its gradient comes with the weight's); ``cols`` kept from step to step, and reused for the
    input gradient's columns once the weight gradient is done with it; and, given ``out_hw``, only the
    output pixels a pooling reads (``crop_before_pool``)."""

    def __init__(self, layers, out_hw: tuple | None, buffers):
        super().__init__(layers)
        self.out_hw, self.buffers = out_hw, buffers
        self._cache = None

    def describe(self) -> str:
        crop = f", only the {self.out_hw[0]}x{self.out_hw[1]} pixels the pooling reads" if self.out_hw else ""
        bias = ", bias folded in" if self.layer.bias is not None else ""
        return super().describe() + f": im2col + one product{bias}{crop}"

    def _weight_matrix(self, with_bias: bool):
        """Wm (out_channels, kh*kw*C); with ``with_bias`` and a bias, the bias as one more last column,
        facing im2col's column of ones."""
        conv = self.layer
        wm = conv.weight_matrix()
        if not with_bias or conv.bias is None:
            return wm
        return get_array_module(wm).concatenate([wm, conv.bias.data[:, None]], axis=1)

    def _blocks(self, B: int, pixels: int, K: int, dtype) -> list:
        """The image ranges [(b0, b1), ...] run one after the other: the whole batch, or with
        ``im2col_in_blocks`` on one core blocks whose columns (``pixels`` rows of K a image) fit the
        core's cache (float32 only: ``rules.BLOCKED_DTYPES``)."""
        dtype = np.dtype(dtype)
        per_image = pixels * K * dtype.itemsize
        size = max(1, rules.IM2COL_BLOCK_BYTES // per_image)
        if (not rules.on("im2col_in_blocks") or not kernels.serial() or size >= B
                or dtype not in rules.BLOCKED_DTYPES or per_image * B <= rules.IM2COL_BLOCKS_ABOVE):
            return [(0, B)]
        return image_blocks(B, size)

    def forward(self, x, owned: bool):
        """y = cols @ Wm^T: im2col's columns of the whole batch (kept for the weight gradient), and the
        product; in blocks of images (``_blocks``), each block's product while its columns are in the
        cache."""
        conv = self.layer
        conv.check_input(x)
        (kh, kw), s, p = conv.kernel_size, conv.stride[0], conv.padding[0]
        B = x.shape[0]
        OH, OW = self.out_hw or conv.output_shape(x.shape)[2:]
        bias = conv.bias is not None
        K = kh * kw * conv.in_channels + bias
        cols = self.buffers.get(conv, "cols", (B * OH * OW, K), x)
        blocks = self._blocks(B, OH * OW, K, x.dtype) if isinstance(x, np.ndarray) else [(0, B)]
        if len(blocks) == 1:
            kernels.im2col(x, kh, kw, s, p, ones=bias, out_hw=(OH, OW), out=cols)
            y = kernels.matmul(cols, self._weight_matrix(with_bias=True).T)        # (B*OH*OW, OC)
        else:
            y = np.empty((B * OH * OW, conv.out_channels), x.dtype)
            wt = self._weight_matrix(with_bias=True).T
            for b0, b1 in blocks:
                r0, r1 = b0 * OH * OW, b1 * OH * OW
                kernels.im2col(x[b0:b1], kh, kw, s, p, ones=bias, out_hw=(OH, OW), out=cols[r0:r1])
                kernels.matmul(cols[r0:r1], wt, out=y[r0:r1])
        self._cache = (x, cols, (OH, OW))
        self._cols_hold_x = True      # False once backward has written the input gradient's columns there
        return y.reshape(B, OH, OW, conv.out_channels).transpose(0, 3, 1, 2)   # NCHW view, no copy

    def backward(self, grad, need_input_grad: bool):
        conv = self.layer
        if self._cache is None:
            raise no_forward(conv)
        x, cols, (OH, OW) = self._cache
        check_grad(conv, grad, (x.shape[0], conv.out_channels, OH, OW), cols.dtype)
        (kh, kw), s, p = conv.kernel_size, conv.stride[0], conv.padding[0]
        bias = conv.bias is not None
        if not self._cols_hold_x:     # a second backward after one forward: the columns again
            kernels.im2col(x, kh, kw, s, p, out=cols, ones=bias, out_hw=(OH, OW))
            self._cols_hold_x = True
        OC, K = conv.out_channels, kh * kw * conv.in_channels
        g = grad.transpose(0, 2, 3, 1).reshape(-1, OC)     # (B*OH*OW, OC); free for channels-last grad
        # (OC, K), then the bias's column if any; the longer side as the product's rows, which
        # OpenBLAS runs faster (same values: the same dot products)
        dwb = kernels.matmul(cols.T, g).T if cols.shape[1] > OC else kernels.matmul(g.T, cols)
        conv.weight.grad += dwb[:, :K].reshape(OC, kh, kw, conv.in_channels).transpose(0, 3, 1, 2)
        if bias:
            conv.bias.grad += dwb[:, K]                     # the column of ones: sum of g over pixels
        if not need_input_grad:
            return None
        # the input gradient's columns go into the column matrix's memory, which the weight gradient
        # above has finished with: one matrix instead of two; in blocks of images, a block's columns
        # go to col2im while in the cache
        self._cols_hold_x = False
        wm = self._weight_matrix(with_bias=False)
        blocks = self._blocks(x.shape[0], OH * OW, cols.shape[1], cols.dtype) if isinstance(x, np.ndarray) \
            else [(0, x.shape[0])]
        if len(blocks) == 1:
            dcols = cols.reshape(-1)[:g.shape[0] * K].reshape(g.shape[0], K)
            return kernels.col2im(kernels.matmul(g, wm, out=dcols), x.shape, kh, kw, s, p, out_hw=(OH, OW))
        dx = np.empty((x.shape[0],) + x.shape[2:] + (x.shape[1],), cols.dtype).transpose(0, 3, 1, 2)  # channels-last
        for b0, b1 in blocks:
            r0, r1 = b0 * OH * OW, b1 * OH * OW
            dcols = cols.reshape(-1)[:(r1 - r0) * K].reshape(r1 - r0, K)     # the block's, at the start
            kernels.col2im(kernels.matmul(g[r0:r1], wm, out=dcols), (b1 - b0,) + x.shape[1:], kh, kw, s, p,
                           out_hw=(OH, OW), out=dx[b0:b1])
        return dx

