"""``Sequential``: layers applied in order, and their backward passes in reverse (the chain rule)."""
from __future__ import annotations

from .. import execution
from ..checks import trusted_inputs
from .module import Module


class Sequential(Module):
    """y = layer_n(... layer_2(layer_1(x))); backward runs the layers' backward passes in reverse.

    Children are named "0", "1", ... as in PyTorch, so ``state_dict`` keys match.

    How the layers run is the planner's business (``nnscratch/fast``): ``forward`` asks it once for
    a plan for this input, and runs the layers as written below when there is none
    (``ns.set_execution("reference")``, or no planner). A plan computes what these lines compute.
    """

    def __init__(self, *layers: Module):
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: argument {i} is a {type(layer).__name__}, not a Module")
        self.layers = list(layers)

    def named_children(self):
        for i, layer in enumerate(self.layers):
            yield str(i), layer

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    def forward(self, x):
        """x -> the last layer's output. The first layer checks the input fully (finite values); the
        others are fed by the layer before them and check shapes only (see ``checks.trusted_inputs``)."""
        plan = execution.plan_for(self, x)         # the one hand-off to the planner
        if plan is not None:
            return plan.forward(x)
        if not self.layers:
            return x
        x = self.layers[0](x)
        with trusted_inputs():
            for layer in self.layers[1:]:
                x = layer(x)
        return x

    def backward(self, grad, need_input_grad: bool = True):
        """dL/d(output) -> dL/d(input), each layer's backward in reverse order. With
        ``need_input_grad=False`` the layers before the first one with parameters are not run,
        that one skips its own input gradient, and None is returned."""
        plan = execution.last_plan(self)
        if plan is not None:
            return plan.backward(grad, need_input_grad)
        if not self.layers:
            return grad
        with_params = [i for i, layer in enumerate(self.layers) if layer.parameters()]
        first = 0 if need_input_grad else (with_params[0] if with_params else len(self.layers) - 1)
        for i in range(len(self.layers) - 1, first - 1, -1):
            grad = self.layers[i].backward(grad, need_input_grad=need_input_grad or i > first)
        return grad
