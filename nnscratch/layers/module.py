"""``Parameter`` and ``Module``: the skeleton every layer hangs on.

A module owns parameters and child modules as plain attributes, in the order
they were assigned; that order names them in ``state_dict`` ("0.weight",
"fc1.bias", ...) exactly as PyTorch does. There is no autograd graph: each layer
keeps from ``forward`` what its own ``backward`` needs, and ``Sequential``
(``sequential.py``) runs the layers' backward passes in reverse order (the chain
rule, one layer at a time).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ..backend import check_device, get_array_module, to_device, to_numpy
from ..errors import CheckpointError


class _Held:
    """An array a module holds (``data``), with its shape and dtype; ``Parameter`` and ``Buffer``."""

    def __init__(self, data):
        self.data = data

    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    def __repr__(self):
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype})"


class Parameter(_Held):
    """A trainable array and its gradient.

    data: the values, any shape; grad: same shape and dtype, accumulated by
    ``backward`` (``+=``) and cleared by ``zero_grad``.

    ``zero_grad`` is lazy: it only marks the gradient as zero, and the zeros are
    written when ``grad`` is next read. Until then the gradient's memory may be
    overwritten whole (``gradient_written``) instead of being added to zeros.
    """

    def __init__(self, data):
        super().__init__(data)
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

    @property
    def grad_is_zero(self) -> bool:
        """True between ``zero_grad`` and the next use of the gradient: its memory holds no value yet."""
        return self._zero_pending

    def gradient_written(self):
        """Say that the gradient's memory now holds the whole gradient (written over, not added to)."""
        self._zero_pending = False

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


class Buffer(_Held):
    """A module's array that is state but not trained: batch norm's running mean, say.

    data: any shape and dtype. It is saved in ``state_dict`` and moved by ``to``, as a
    parameter is, but has no gradient and is not in ``parameters()`` (PyTorch's
    ``register_buffer``). ``to(dtype=...)`` casts floating buffers only, so a counter
    stays an integer.
    """


class Module:
    """Base class: ``forward(x)`` computes, ``backward(grad_out)`` returns ``grad_in``.

    Subclasses implement ``forward`` and ``backward``; everything else
    (parameters, modes, state, devices) is shared here.
    """

    training = True

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

    # ---- structure --------------------------------------------------------------
    def named_children(self):
        """(name, module) for each direct child, in assignment order."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def _named(self, kind, prefix: str = ""):
        """(dotted name, value) for this module's and every descendant's attributes of class ``kind``."""
        for name, value in vars(self).items():
            if isinstance(value, kind):
                yield prefix + name, value
        for name, child in self.named_children():
            yield from child._named(kind, prefix + name + ".")

    def named_parameters(self, prefix: str = ""):
        """(dotted name, Parameter) for this module's and every descendant's parameters."""
        return self._named(Parameter, prefix)

    def named_buffers(self, prefix: str = ""):
        """(dotted name, Buffer) for this module's and every descendant's buffers."""
        return self._named(Buffer, prefix)

    def named_state(self, prefix: str = ""):
        """(dotted name, Parameter or Buffer) in PyTorch's ``state_dict`` order: a module's own
        parameters, then its own buffers, then each child's state in turn."""
        own = vars(self).items()
        yield from ((prefix + name, v) for name, v in own if isinstance(v, Parameter))
        yield from ((prefix + name, v) for name, v in own if isinstance(v, Buffer))
        for name, child in self.named_children():
            yield from child.named_state(prefix + name + ".")

    def parameters(self) -> list:
        """Every parameter of the model, in ``state_dict`` order."""
        return [p for _, p in self.named_parameters()]

    def modules(self):
        """This module and all its descendants, depth first."""
        yield self
        for _, child in self.named_children():
            yield from child.modules()

    def named_modules(self, prefix: str = ""):
        """(dotted name, module) for this module ("" at the top) and all its descendants, depth first."""
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def num_parameters(self) -> int:
        """Total count of trainable numbers."""
        return sum(p.size for p in self.parameters())

    # ---- modes ------------------------------------------------------------------
    def train(self, mode: bool = True):
        """Training mode (the default); returns ``self``. Dropout and batch norm act differently in
        the two modes (``training``); the other layers do not."""
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
        """name -> NumPy copy of each parameter and buffer (safe to keep: later steps do not change it),
        in PyTorch's order and with its names ("0.weight", "1.running_mean", ...)."""
        return OrderedDict((name, to_numpy(v.data).copy()) for name, v in self.named_state())

    def load_state_dict(self, state, strict: bool = True):
        """Copy values from ``state`` (name -> array) into the parameters and buffers, in place.

        Shapes must match; values are cast to each parameter's dtype and moved to
        its device. With ``strict`` every name must appear on both sides. A state that does not fit
        raises ``CheckpointError`` (a ``ValueError``) naming what is wrong.
        """
        if not hasattr(state, "keys") or not hasattr(state, "__getitem__"):
            raise CheckpointError(f"{type(self).__name__}.load_state_dict: expected a mapping of names to "
                                  f"arrays (model.state_dict()), got {type(state).__name__}")
        own = dict(self.named_state())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise CheckpointError(f"{type(self).__name__}.load_state_dict: missing keys {missing}, "
                                  f"unexpected keys {unexpected}")
        for name, p in own.items():
            if name not in state:
                continue
            value = np.asarray(to_numpy(state[name]))
            if value.shape != p.shape:
                raise CheckpointError(f"{type(self).__name__}.load_state_dict: {name} has shape {value.shape} "
                                      f"in the state but {p.shape} in the model")
            if not (np.issubdtype(value.dtype, np.number) or value.dtype == bool):
                raise CheckpointError(f"{type(self).__name__}.load_state_dict: {name} holds {value.dtype} "
                                      f"values, not numbers")
            xp = get_array_module(p.data)
            p.data[...] = xp.asarray(value.astype(p.dtype, copy=False))
        return self

    def to(self, device: str | None = None, dtype=None):
        """Move every parameter and buffer to ``device`` ("cpu" or "gpu") and/or cast to ``dtype`` (floating
        buffers only); returns ``self``.

        The Parameter objects stay the same, so an optimizer built earlier still
        holds them (its own state moves with ``optimizer.to(device)``).
        Gradients are reset to zero.
        """
        if device is not None:
            check_device(device)
        if dtype is not None and np.dtype(dtype).kind != "f":
            raise TypeError(f"{type(self).__name__}.to: dtype must be a floating type (float32, float64), got "
                            f"{np.dtype(dtype)}: parameters and their gradients need fractions")
        for p in self.parameters():
            data = p.data
            if dtype is not None:
                data = data.astype(dtype, copy=False)
            if device is not None:
                data = to_device(data, device)
            if data is not p.data:
                p._replace(data)
        for _, b in self.named_buffers():
            data = b.data
            if dtype is not None and np.dtype(data.dtype).kind == "f":
                data = data.astype(dtype, copy=False)
            if device is not None:
                data = to_device(data, device)
            b.data = data
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
