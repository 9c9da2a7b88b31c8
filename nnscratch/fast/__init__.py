"""How the layers run fast: a planner that lowers a model to an execution plan.

The layers (``nnscratch/layers``) say what a network computes, in the textbook's terms. This
package says how it runs fast: for a model and an input's shape, dtype, device and mode, the planner
builds a list of steps, each a small class that reads and writes the layers' ``Parameter``s (a
convolution with its pooling fused, Winograd for 3x3 kernels, a ReLU in place, kept buffers, a batch
split over the cores). Every rule can be switched off (``rules``), and each is tested equal to the
layers it replaces.

    print(ns.plan(model, x))           # what will run for this input
    ns.set_execution("reference")      # the textbook layers alone (or NNSCRATCH_EXECUTION=reference)
    with ns.fast.switched(winograd=False): ...
"""
from __future__ import annotations

from .. import execution
from . import planner
from .planner import SplitPlan, kept_arrays, whole_plan
from .rules import RULES, all_off, set_rules, switched

__all__ = ["plan", "switched", "set_rules", "all_off", "RULES", "kept_arrays", "whole_plan", "Explained"]


class Explained:
    """What ``plan`` returns: prints as the plan for that input (``.plan`` is the plan itself)."""

    def __init__(self, plan, text: str):
        self.plan, self.text = plan, text

    def __str__(self):
        return self.text

    __repr__ = __str__


def plan(model, x) -> Explained:
    """The plan that ``model(x)`` runs now, to print: which layers are fused, which algorithm each
    convolution uses, which buffers are kept. Builds the plan if needed; runs nothing."""
    if execution.get_execution() != "plan":
        return Explained(None, "no plan: execution is 'reference', so every layer runs as written")
    if not hasattr(model, "layers"):
        return Explained(None, f"no plan: a {type(model).__name__} runs as written")
    p = planner.lookup(model, x)
    return Explained(p, p.explain(x) if isinstance(p, SplitPlan) else str(p))


execution.register(planner)
