"""A residual connection: y = body(x) + shortcut(x)."""
from __future__ import annotations

from ..checks import no_forward
from .module import Module


class Residual(Module):
    """y = body(x) + shortcut(x), the shortcut the identity when None (He et al., 2016).

    body and shortcut: any modules whose outputs have the same shape (a ResNet's basic block:
    body = conv-bn-relu-conv-bn, shortcut = None, or a strided 1x1 conv and batch norm where the
    shape changes). The block is data, not code: ``Sequential(Residual(...), ReLU())``.

    Backward: x reaches y along two paths, so dL/dx is the sum of what each path sends back,
    body.backward(g) + shortcut.backward(g), where g = dL/dy reaches both unchanged (the
    derivative of a sum). With an identity shortcut the gradient flows to x undiminished,
    which is why deep residual networks train.
    """

    def __init__(self, body: Module, shortcut: Module | None = None):
        for name, m in (("body", body), ("shortcut", shortcut)):
            if m is not None and not isinstance(m, Module):
                raise TypeError(f"Residual: {name} must be a Module, got {type(m).__name__}")
        self.body, self.shortcut = body, shortcut
        self._ran = False

    def forward(self, x):
        """x -> body(x) + shortcut(x), the body's output shape (which the shortcut's must equal)."""
        y = self.body.forward(x)
        s = x if self.shortcut is None else self.shortcut.forward(x)
        self.check_shapes(y, s)
        self._ran = True
        return y + s

    def check_shapes(self, y, s):
        """The body's output y and the shortcut's s must have one shape, or a ValueError says so."""
        if tuple(y.shape) != tuple(s.shape):
            raise ValueError(f"Residual: the body's output has shape {tuple(y.shape)} but the shortcut's "
                             f"{tuple(s.shape)}; give a shortcut that maps the input to the body's output shape "
                             f"(a 1x1 Conv2d with the body's stride, say)")

    def backward(self, grad, need_input_grad: bool = True):
        """grad: dL/dy -> dL/dx, the sum of the two paths' gradients."""
        if not self._ran:
            raise no_forward(self)
        g_body = self.body.backward(grad, need_input_grad=need_input_grad)
        g_short = grad if self.shortcut is None else self.shortcut.backward(grad, need_input_grad=need_input_grad)
        return g_body + g_short if need_input_grad else None
