"""Which way a model runs: the textbook layers alone, or the plans that make them fast.

    ns.set_execution("reference")     # every Sequential runs its layers as written
    ns.set_execution("plan")          # the default: nnscratch.fast plans how they run

The environment variable ``NNSCRATCH_EXECUTION`` (``plan`` or ``reference``) sets the starting
choice. This module holds the switch and the hand-off only: ``Sequential`` asks ``plan_for``, and
the planner (``nnscratch.fast``, which registers itself on import) answers. Keeping the hand-off
here lets the layers know nothing of the planner, and the planner import the layers.
"""
from __future__ import annotations

import os

CHOICES = ("plan", "reference")
# The switch (documented module state): the starting choice, and the planner once registered
_state = {"execution": os.environ.get("NNSCRATCH_EXECUTION", "plan"), "planner": None}


def set_execution(name: str):
    """Run every model through its plan ("plan", the default) or as its textbook layers ("reference")."""
    if name not in CHOICES:
        raise ValueError(f"set_execution: expected one of {CHOICES}, got {name!r}")
    _state["execution"] = name


def get_execution() -> str:
    """The choice in force: "plan" or "reference" (also when no planner is registered)."""
    if _state["execution"] == "plan" and _state["planner"] is not None:
        return "plan"
    return "reference"


def register(planner):
    """Install the planner: an object with ``plan_for(model, x, enabled)``, ``last_plan(model)`` and
    ``batch_norm_synced(model)``."""
    _state["planner"] = planner


def plan_for(model, x):
    """The plan that runs ``model`` on ``x`` now, remembered for its backward pass; None when the model
    is to run as written (then the last plan is forgotten, so that backward runs the layers too)."""
    if _state["execution"] not in CHOICES:
        raise ValueError(f"NNSCRATCH_EXECUTION={_state['execution']!r}: expected one of {CHOICES}")
    planner = _state["planner"]
    if planner is None:
        return None
    return planner.plan_for(model, x, enabled=_state["execution"] == "plan")


def batch_norm_synced(model) -> bool:
    """Whether the parts of a split batch would pool every batch norm's statistics (the planner's
    batch-norm steps do, the textbook layers do not): False without a planner or in "reference"."""
    planner = _state["planner"]
    return get_execution() == "plan" and planner.batch_norm_synced(model)


def last_plan(model):
    """The plan that ran the model's last forward pass, or None."""
    planner = _state["planner"]
    return None if planner is None else planner.last_plan(model)
