"""A plan: the steps that run a Sequential for one kind of input, forward in order, backward reversed."""
from __future__ import annotations

import numpy as np

from ..checks import check_array, inputs_trusted, trusted_inputs


class Plan:
    """steps: the ``Step``s in order; stand_in: the index of the LinearStep whose bias pass checks the
    input for NaN and inf (``input_check_in_bias``), or None; buffers: the model's kept arrays;
    first_layer: the model's first layer (errors about the input name it)."""

    def __init__(self, key_text: str, steps: list, stand_in, buffers, first_layer):
        self.key_text, self.steps, self.stand_in = key_text, steps, stand_in
        self.buffers, self.first_layer = buffers, first_layer
        self._ran = []
        self.output_owned = False       # whether nobody but the plan holds the last forward's output

    def forward(self, x):
        """The steps in order. The first checks the input fully; the others are fed by the step before
        them and check shapes only, unless a Linear's bias pass stands in for the input's check."""
        self.drop()                     # the last pass's arrays go before this pass's are made
        ran = self._ran
        owned = False                   # the caller's x: never overwritten
        stand_in = self.stand_in if isinstance(x, np.ndarray) and not inputs_trusted() else None
        steps, x0 = iter(enumerate(self.steps)), x
        if stand_in is None:
            for _, step in steps:       # the first step, checking its input
                x, owned = step.forward(x, owned), step.owns_output(owned)
                ran.append(step)
                break
        with trusted_inputs():
            for k, step in steps:
                if k == stand_in:
                    with np.errstate(invalid="ignore", over="ignore"):      # a NaN input is reported below
                        x, finite = step.forward_checked(x)
                    if not finite:      # the input's values, or an overflow: only a bad input is an error
                        with trusted_inputs(False):
                            check_array(self.first_layer, x0)
                elif stand_in is not None and k < stand_in:
                    with np.errstate(invalid="ignore", over="ignore"):
                        x = step.forward(x, owned)
                else:
                    x = step.forward(x, owned)
                owned = step.owns_output(owned)
                ran.append(step)
        self.output_owned = owned and x is not x0
        return x

    def backward(self, grad, need_input_grad: bool = True):
        """The steps' backward passes in reverse. With ``need_input_grad=False`` the steps before the
        first one with parameters are not run, that one skips its input gradient, and None is returned."""
        steps = self._ran or self.steps
        if not steps:
            return grad
        first = 0
        if not need_input_grad:
            with_params = [k for k, step in enumerate(steps) if step.has_parameters()]
            first = with_params[0] if with_params else len(steps) - 1
        for k in range(len(steps) - 1, first - 1, -1):
            grad = steps[k].backward(grad, need_input_grad=need_input_grad or k > first)
        return grad

    def drop(self):
        """Let go of what the last forward pass kept for backward."""
        for step in self._ran:
            step.drop()
        self._ran = []

    def __str__(self):
        lines = [f"Plan for {self.key_text}:"]
        lines += [f"  {k}. {step.describe()}" for k, step in enumerate(self.steps)]
        if self.stand_in is not None:
            lines.append(f"  the input's NaN/inf check rides step {self.stand_in}'s bias pass")
        kept = self.buffers.describe()
        lines.append("  kept buffers: " + (", ".join(kept) if kept else "none yet (made on the first pass)"))
        return "\n".join(lines)

    __repr__ = __str__
