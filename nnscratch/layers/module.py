"""``Parameter``, ``Module`` and ``Sequential``: the skeleton every layer hangs on.

A module owns parameters and child modules as plain attributes, in the order
they were assigned; that order names them in ``state_dict`` ("0.weight",
"fc1.bias", ...) exactly as PyTorch does. There is no autograd graph: each layer
keeps from ``forward`` what its own ``backward`` needs, and ``Sequential`` runs
the layers' backward passes in reverse order (the chain rule, one layer at a time).
"""
from __future__ import annotations

import functools
from collections import OrderedDict

import numpy as np

from .. import kernels, split
from ..backend import check_device, get_array_module, to_device, to_numpy
from ..checks import check_array, check_grad, inputs_trusted as _TRUSTED_NOW, trusted_inputs
from ..threads import run_parallel


class Parameter:
    """A trainable array and its gradient.

    data: the values, any shape; grad: same shape and dtype, accumulated by
    ``backward`` (``+=``) and cleared by ``zero_grad``.

    ``zero_grad`` is lazy: it only marks the gradient as zero, and the zeros are
    written when ``grad`` is next read. ``accumulate_product`` then writes a
    layer's gradient straight into the array instead of adding a temporary to
    zeros (the MLNN's first weight gradient is 11 MB: a fill, a temporary and an
    addition pass over it cost about as much as the product itself).
    """

    def __init__(self, data):
        self.data = data
        self.grad = get_array_module(data).zeros_like(data)

    @property
    def grad(self):
        if self._zero_pending:
            self._grad.fill(0)
            self._zero_pending = False
        return self._grad

    @grad.setter
    def grad(self, value):
        self._grad, self._zero_pending = value, False

    def accumulate_product(self, a, b):
        """grad += a @ b, for a 2-D product of the gradient's shape (written in place after ``zero_grad``).

        A gradient stored transposed (Fortran order, as ``Linear``'s weight is) gets the transposed
        product b^T a^T written into its C-ordered transpose: BLAS writes row-major results only, and
        the values are the same dot products either way."""
        grad = self._grad
        if grad.ndim == 2 and not grad.flags.c_contiguous and grad.T.flags.c_contiguous:
            grad, a, b = grad.T, b.T, a.T
        if self._zero_pending:
            kernels.matmul(a, b, out=grad)
            self._zero_pending = False
        else:
            grad += kernels.matmul(a, b)

    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self) -> int:
        return int(self.data.size)

    def zero_grad(self):
        """Mark the gradient as zero; the zeros are written when it is next used (see the class notes)."""
        self._zero_pending = True

    def _replace(self, data):
        """Swap in moved or cast data; a fresh zero gradient follows it."""
        self.data = data
        self.grad = get_array_module(data).zeros_like(data)

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


class Module:
    """Base class: ``forward(x)`` computes, ``backward(grad_out)`` returns ``grad_in``.

    Subclasses implement ``forward`` and ``backward``; everything else
    (parameters, modes, state, devices) is shared here.
    """

    training = True
    # True only while a Sequential runs this layer on an array that the layer before it created and
    # nobody else holds: the layer may then overwrite its input (ReLU does, instead of allocating an
    # output of the same size: CNN inference at batch 256, 74 -> 63 ms). Never for a Sequential's
    # first layer, so an array a caller passes in is never changed.
    _input_owned = False
    _relu_inside = False      # set by a Sequential for one call of a MaxPool2d or Linear that runs a ReLU fused in
    # A layer whose forward returns a new array it keeps no use for sets this (Linear, Conv2d; with a
    # ReLU fused in, Linear and MaxPool2d keep their output for the mask and answer output_owned so)
    new_output = False

    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, grad, need_input_grad: bool = True):
        """grad: dL/d(output) -> dL/d(input), accumulating every parameter's ``.grad``.

        ``need_input_grad=False`` says the caller will not use dL/d(input) (the
        model's first layer, in training): a layer may then skip computing it and
        return None.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def __call__(self, x):
        return self.forward(x)

    def _drop_state(self):
        """Let go of what the last forward pass kept for backward (a Sequential calls this on its layers
        before a forward pass: the old activations are freed before the new ones are allocated, so the
        allocator hands back memory that is still in cache, and the model holds one set, not two)."""

    def output_owned(self, input_owned: bool) -> bool:
        """Whether this layer's last output is an array it created and keeps no use for, which the next
        layer may overwrite: ``new_output``, False unless a layer says so (an unknown layer may return
        its input or keep its output)."""
        return self.new_output

    # ---- structure --------------------------------------------------------------
    def named_children(self):
        """(name, module) for each direct child, in assignment order."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def named_parameters(self, prefix: str = ""):
        """(dotted name, Parameter) for this module's and every descendant's parameters."""
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, value
        for name, child in self.named_children():
            yield from child.named_parameters(prefix + name + ".")

    def parameters(self) -> list:
        """Every parameter of the model, in ``state_dict`` order."""
        return [p for _, p in self.named_parameters()]

    def modules(self):
        """This module and all its descendants, depth first."""
        yield self
        for _, child in self.named_children():
            yield from child.modules()

    def num_parameters(self) -> int:
        """Total count of trainable numbers."""
        return sum(p.size for p in self.parameters())

    # ---- modes ------------------------------------------------------------------
    def train(self, mode: bool = True):
        """Training mode (the default); returns ``self``. No layer here acts differently yet,
        but code written against the API keeps working when one (dropout, batch norm) is added."""
        for m in self.modules():
            m.training = bool(mode)
        return self

    def eval(self):
        """Evaluation mode; returns ``self``."""
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.zero_grad()

    # ---- state ------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """name -> NumPy copy of each parameter (safe to keep: later steps do not change it)."""
        return OrderedDict((name, to_numpy(p.data).copy()) for name, p in self.named_parameters())

    def load_state_dict(self, state, strict: bool = True):
        """Copy values from ``state`` (name -> array) into the parameters, in place.

        Shapes must match; values are cast to each parameter's dtype and moved to
        its device. With ``strict`` every name must appear on both sides.
        """
        own = dict(self.named_parameters())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"{type(self).__name__}.load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for name, p in own.items():
            if name not in state:
                continue
            value = np.asarray(to_numpy(state[name]))
            if value.shape != p.shape:
                raise ValueError(f"{type(self).__name__}.load_state_dict: {name} has shape {value.shape} "
                                 f"in the state but {p.shape} in the model")
            xp = get_array_module(p.data)
            p.data[...] = xp.asarray(value.astype(p.dtype, copy=False))
        return self

    def to(self, device: str | None = None, dtype=None):
        """Move every parameter to ``device`` ("cpu" or "gpu") and/or cast to ``dtype``; returns ``self``.

        The Parameter objects stay the same, so an optimizer built earlier still
        holds them (its own state moves with ``optimizer.to(device)``).
        Gradients are reset to zero.
        """
        if device is not None:
            check_device(device)
        for p in self.parameters():
            data = p.data
            if dtype is not None:
                data = data.astype(dtype, copy=False)
            if device is not None:
                data = to_device(data, device)
            if data is not p.data:
                p._replace(data)
        return self

    # ---- printing ---------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        children = list(self.named_children())
        if not children:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"  ({name}): " + repr(child).replace("\n", "\n  ") for name, child in children]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"


class Sequential(Module):
    """Layers applied in order; the backward pass runs them in reverse.

    Children are named "0", "1", ... as in PyTorch, so ``state_dict`` keys match.
    """

    def __init__(self, *layers: Module):
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: argument {i} is a {type(layer).__name__}, not a Module")
        self.layers = list(layers)

    # ReLU then max-pooling gives exactly what max-pooling then ReLU gives, and the same gradients
    # bit for bit (ReLU is monotonic, so it does not change which element wins a window, and a window
    # whose maximum is <= 0 passes no gradient either way). So such a pair runs as one pooling kernel
    # that rectifies what it outputs (and masks the gradient in its backward pass): ReLU costs no pass
    # of its own, and touches a quarter of the values. False runs every layer as listed (tests
    # compare the two).
    fuse_relu_pool = True
    # Likewise a Linear directly followed by a ReLU: the bias and the ReLU in one pass over the output
    # (kernels.add_bias(..., relu=True)), the mask applied by the Linear's backward; the same bits.
    fuse_linear_relu = True
    # A Conv2d whose output goes straight to a MaxPool2d (or through a ReLU fused into it) computes
    # only the rows and columns the pooling's windows read (Conv2d._pooled_by): floor pooling of an
    # odd map leaves the last ones out (the CNN's conv3: 13 of 49 pixels, a quarter of its products).
    # The pooling's output and the gradients are the same up to rounding. False computes every pixel.
    crop_before_pool = True
    # And such a Conv2d that runs as Winograd F(2x2, 3x3) (see Conv2d.winograd) under a 2x2, stride-2
    # pooling: each 2x2 tile of its outputs is one pooling window, so the convolution writes only the
    # windows' maxima (ReLU'd when the ReLU is fused) and takes the pooled gradient in its backward
    # pass (Conv2d._fuses_pool): the same bits as the three layers in turn. False runs them in turn.
    fuse_conv_pool = True

    def _steps(self) -> list:
        """What forward runs, in order (backward runs it reversed): (i,) for layer i, and (j, i) for a
        layer j that runs ReLU i fused in: a MaxPool2d j directly after ReLU i (``fuse_relu_pool``), or
        a Linear j directly before it (``fuse_linear_relu``). Only exact ReLU, MaxPool2d and Linear
        instances are fused: a subclass may do something else."""
        from .activation import ReLU
        from .linear import Linear
        from .pool import MaxPool2d
        steps, i, n = [], 0, len(self.layers)
        while i < n:
            if (self.fuse_relu_pool and i + 1 < n and type(self.layers[i]) is ReLU
                    and type(self.layers[i + 1]) is MaxPool2d):
                steps.append((i + 1, i))
                i += 2
            elif (self.fuse_linear_relu and i + 1 < n and type(self.layers[i]) is Linear
                    and type(self.layers[i + 1]) is ReLU
                    and not (self.fuse_relu_pool and i + 2 < n and type(self.layers[i + 2]) is MaxPool2d)):
                steps.append((i, i + 1))
                i += 2
            else:
                steps.append((i,))
                i += 1
        return steps

    def named_children(self):
        for i, layer in enumerate(self.layers):
            yield str(i), layer

    def named_parameters(self, prefix: str = ""):
        for name, child in self.named_children():
            yield from child.named_parameters(prefix + name + ".")

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    # How many parts a CPU batch is split into in training mode, one thread and core each (see
    # nnscratch/split.py): None chooses (a network with a Conv2d: one part per core, at least
    # split.MIN_PART images each; otherwise 1), 1 runs every batch whole. The numbers differ from
    # the whole batch's only in rounding (the order of the gradient's sums).
    workers = None

    def forward(self, x):
        """The layers in order. The first checks the input fully; the rest trust their predecessor's
        output for finiteness (see checks.trusted_inputs) and check shapes only. In training mode a
        CPU batch may be split across the cores (``workers``)."""
        ways = self._ways(x)
        if ways > 1:
            return self._forward_split(x, ways)
        self._split_state = None
        return self._forward_whole(x)

    def _ways(self, x) -> int:
        """How many parts forward splits x into (1: none): only a CPU batch in training mode, at the top
        of a model (not inside a part or another Sequential), with forward and backward as defined here."""
        if (not self.training or not self.layers or self._input_owned or not split.allowed()
                or not isinstance(x, np.ndarray) or x.ndim < 1 or x.shape[0] < 2
                or type(self).forward is not Sequential.forward or type(self).backward is not Sequential.backward):
            return 1
        split.check_workers(self, self.workers)
        return split.parts_for(self, x.shape[0], self.workers)

    def _forward_split(self, x, ways: int):
        """forward on ``ways`` parts of the batch at once, each through a replica of this model."""
        parts = split.replicas_of(self).parts(self, ways)
        cuts = split.cuts(x.shape[0], ways)
        self._split_state = None
        try:
            outs = run_parallel([functools.partial(model._forward_whole, x[cut])
                                 for (model, _), cut in zip(parts, cuts)])
        except (ValueError, TypeError) as e:
            failed = e
        else:
            failed = None
        if failed is not None:
            self._forward_whole(x)        # raises the whole batch's error (a part's shape would mislead)
            raise failed
        y = np.concatenate(outs)
        self._split_state = (parts, cuts, y.shape, y.dtype)
        self._last_owned = True
        return y

    def __getstate__(self):
        # copies (deepcopy, pickle) leave out the last split pass and the replicas: they belong to this model
        state = self.__dict__.copy()
        state.pop("_split_state", None)
        state.pop("_replicas", None)
        return state

    def _forward_whole(self, x):
        if not self.layers:
            return x
        steps = self._steps()
        self._drop_state()
        ran = self._ran = []                          # the steps run, which backward runs reversed
        owned = self._input_owned                     # set when this Sequential sits inside another
        checker = self._input_checker(steps, x)
        t = 0
        if checker is None:
            x, owned, t = self._run(steps, t, x, owned, ran)
        else:
            checker._check_output, x0 = True, x
        try:
            with trusted_inputs():
                while t < len(steps):
                    if checker is None:
                        x, owned, t = self._run(steps, t, x, owned, ran)
                        continue
                    with np.errstate(invalid="ignore", over="ignore"):   # a NaN input is reported below
                        x, owned, t = self._run(steps, t, x, owned, ran)
                    if self.layers[ran[-1][0]] is checker:
                        checker._check_output = False
                        if not checker._output_finite:     # the input's values, or an overflow
                            with trusted_inputs(False):
                                check_array(self.layers[0], x0)
                        checker = None
        finally:
            if checker is not None:
                checker._check_output = False
        self._last_owned = owned
        return x

    def _input_checker(self, steps, x):
        """The Linear whose output check stands in for the input's finiteness check, or None.

        Checking a network's input for NaN and inf reads every value (the MLNN's 256 images:
        0.13 ms of a 5 ms inference batch). When the first step with parameters is a Linear with a
        bias, reached through Flatten only, its bias pass checks its output for free instead
        (kernels.add_bias_checked): an input row with a NaN or an inf gives an output row of NaN
        or inf, since the product multiplies every input value (NaN * w and inf * 0 are NaN,
        inf * w is inf). Only then is the input read, to raise the first layer's usual error
        (a finite input whose output overflowed goes on, as overflow inside a model does).
        NumPy arrays only: on a GPU the check would wait for the device."""
        from .activation import Flatten
        from .linear import Linear
        if not isinstance(x, np.ndarray) or _TRUSTED_NOW():
            return None
        for step in steps:
            layer = self.layers[step[0]]
            if type(layer) is Linear:
                return layer if layer.bias is not None else None
            if type(layer) is not Flatten:
                return None
        return None

    def _pooled_by(self, steps, t):
        """(k, stride) of the MaxPool2d that step t + 1 runs, when step t is a Conv2d whose output only
        that pooling reads (see ``crop_before_pool``); else None. Exact types only, as for fusing."""
        from .conv import Conv2d
        from .pool import MaxPool2d
        if not self.crop_before_pool or t + 1 >= len(steps) or type(self.layers[steps[t][0]]) is not Conv2d:
            return None
        pool = self.layers[steps[t + 1][0]]
        return (pool.kernel_size, pool.stride) if type(pool) is MaxPool2d else None

    def _run(self, steps, t, x, owned: bool, ran: list):
        """Step t of forward, appended to ``ran``: (output, whether it is owned, the next step's index).
        The layer is told for this one call whether it may overwrite x (see Module._input_owned), a
        fused pooling that it rectifies, and a convolution the pooling that reads its output, or that
        it runs that pooling itself (``fuse_conv_pool``: then step t + 1 is done too)."""
        step = steps[t]
        layer = self.layers[step[0]]
        fused = len(step) == 2
        layer._input_owned, layer._relu_inside = owned, fused
        pooled_by = self._pooled_by(steps, t)
        pool_step = None
        if pooled_by is not None:
            layer._pooled_by = pooled_by
            pool_step = steps[t + 1]
            if self.fuse_conv_pool and layer._fuses_pool(x, self.layers[pool_step[0]]):
                layer._pool_inside = len(pool_step) == 2      # with the ReLU between them, if fused
            else:
                pool_step = None
        try:
            y = layer(x)
        finally:
            layer._input_owned = layer._relu_inside = False
            if pooled_by is not None:
                layer._pooled_by = layer._pool_inside = None
        if fused:
            self.layers[step[1]]._y = y                # the ReLU's state, as if it had run
        ran.append(step)
        if pool_step is None:
            return y, layer.output_owned(owned), t + 1
        if len(pool_step) == 2:
            self.layers[pool_step[1]]._y = y           # the ReLU's state: its rectified maxima
        return y, False, t + 2                          # kept as the ReLU's mask (see MaxPool2d)

    def output_owned(self, input_owned: bool) -> bool:
        return bool(self.layers) and getattr(self, "_last_owned", False)

    def _drop_state(self):
        for layer in self.layers:
            layer._drop_state()

    def backward(self, grad, need_input_grad: bool = True):
        """Each layer's backward in reverse order (the chain rule). With ``need_input_grad=False``
        the layers before the first one with parameters are not run at all, and that one skips
        its own input gradient; None is returned. After a split forward pass, each part runs its
        own backward pass and the parts' parameter gradients are summed into this model's."""
        state = getattr(self, "_split_state", None)
        if state is None:
            return self._backward_whole(grad, need_input_grad)
        parts, cuts, out_shape, dtype = state
        check_grad(self.layers[-1], grad, out_shape, dtype)
        try:
            outs = run_parallel([functools.partial(model._backward_whole, grad[cut], need_input_grad)
                                 for (model, _), cut in zip(parts, cuts)])
        except BaseException:
            split.clear_replica_grads(parts)
            raise
        split.gather_grads(parts)
        return np.concatenate(outs) if need_input_grad else None

    def _backward_whole(self, grad, need_input_grad: bool = True):
        if not self.layers:
            return grad
        steps = getattr(self, "_ran", None) or self._steps()     # the steps of the last forward pass
        first = 0
        if not need_input_grad:
            with_params = [k for k, step in enumerate(steps) if self.layers[step[0]].parameters()]
            first = with_params[0] if with_params else len(steps) - 1
        for k in range(len(steps) - 1, first - 1, -1):
            # a fused ReLU + MaxPool2d: the pooling's backward applies the ReLU's mask itself
            grad = self.layers[steps[k][0]].backward(grad, need_input_grad=need_input_grad or k > first)
        return grad
