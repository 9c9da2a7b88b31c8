"""Dropout: in training, each value is zeroed with probability p and the survivors scaled by 1 / (1 - p)."""
from __future__ import annotations

import numpy as np

from .. import distributed
from ..backend import is_gpu_array, to_device
from ..checks import check_array, check_grad, no_forward
from ..random import default_rng, resolve_rng
from .module import Module


class Dropout(Module):
    """Inverted dropout, as in PyTorch. Any shape in, the same shape out.

    Training: y = x * m, where m = keep / (1 - p) and keep is 1 with probability 1 - p, drawn
    anew for every value on every forward pass. The scaling keeps each value's expectation,
    E[y] = x, so evaluation needs no correction: in eval mode (and for p = 0) y = x.

    Backward: dL/dx = dL/dy * m, the same mask (the identity in eval mode).

    rng: None draws from the package's default generator at each pass (``ns.manual_seed``
    makes runs repeatable, as ``torch.manual_seed`` does), or an int seed or a
    ``numpy.random.Generator`` of the layer's own. The mask is drawn on the CPU and moved
    to a GPU input's device, so a seed gives the same masks on both. In a rank's step of a
    data-parallel job (``ns.distributed``) the mask is drawn for the whole global batch and the
    rank keeps its rows: the masks one process would draw.
    """

    def __init__(self, p: float = 0.5, rng=None):
        if isinstance(p, bool) or not isinstance(p, (int, float, np.floating)) or not 0 <= p <= 1:
            raise ValueError(f"Dropout: p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)
        self._rng = None if rng is None else resolve_rng(rng)
        self._cache = None

    def extra_repr(self):
        return f"p={self.p}"

    def check_input(self, x):
        check_array(self, x)

    def forward(self, x):
        """x: any shape -> the same shape."""
        self.check_input(x)
        if not self.training or self.p == 0:
            self._cache = (x.shape, x.dtype, None)          # no mask: the gradient passes unchanged
            return x
        rng = self._rng if self._rng is not None else default_rng()
        dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
        rows = distributed.batch_rows()             # a rank of a data-parallel job: its rows of the batch's mask
        if rows is not None and x.ndim >= 1 and x.shape[0] == rows[1].stop - rows[1].start:
            keep = rng.random((rows[0],) + x.shape[1:], dtype=dtype)[rows[1]] >= self.p
        else:
            keep = rng.random(x.shape, dtype=dtype) >= self.p
        scale = 0.0 if self.p == 1 else 1 / (1 - self.p)
        mask = keep.astype(x.dtype) * x.dtype.type(scale)
        mask = to_device(mask, "gpu") if is_gpu_array(x) else mask
        self._cache = (x.shape, x.dtype, mask)
        return x * mask

    def backward(self, grad, need_input_grad: bool = True):
        """grad: the output's shape -> grad * mask."""
        if self._cache is None:
            raise no_forward(self)
        shape, dtype, mask = self._cache
        check_grad(self, grad, shape, dtype)
        if not need_input_grad:
            return None
        return grad if mask is None else grad * mask
