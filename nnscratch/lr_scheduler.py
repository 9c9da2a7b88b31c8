"""Learning-rate schedules, with PyTorch's formulas and calling convention.

    opt = ns.AdamW(model.parameters(), lr=1e-3)
    sched = ns.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * steps_per_epoch)
    for x, y in batches:
        ...; opt.step(); opt.zero_grad(); sched.step()       # per optimizer step (or per epoch: StepLR)

A schedule sets ``optimizer.lr`` (and, for OneCycleLR, the momentum) from the number of
``step()`` calls t so far, by a closed formula of t and the base rate ``optimizer.initial_lr``
(the optimizer's lr when the first schedule was made, as PyTorch's ``initial_lr``). Making a
schedule already sets the rate for t = 0.
"""
from __future__ import annotations

import bisect
import math


class LRScheduler:
    """Base: ``step()`` advances t (``last_epoch``) and sets the optimizer's lr to ``lr_at(t)``."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        if getattr(optimizer, "initial_lr", None) is None:
            optimizer.initial_lr = optimizer.lr
        self.base_lr = optimizer.initial_lr
        self.last_epoch = -1
        self.step()

    def lr_at(self, t: int) -> float:
        raise NotImplementedError

    def step(self):
        """Advance one step (or epoch) and set the optimizer's learning rate for it."""
        self.last_epoch += 1
        self.optimizer.lr = self.lr_at(self.last_epoch)

    def get_last_lr(self) -> list:
        """[the learning rate the optimizer now has], a list as PyTorch returns one per group."""
        return [self.optimizer.lr]

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch, "base_lr": self.base_lr}

    def load_state_dict(self, state: dict):
        """Resume at the saved step (the optimizer's own state_dict restores its lr)."""
        self.last_epoch, self.base_lr = int(state["last_epoch"]), float(state["base_lr"])
        return self

    def __repr__(self):
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, lr={self.optimizer.lr:.6g})"


def _positive_int(owner, **values):
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{owner}: {name} must be a positive int, got {v!r}")


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (t // step_size): multiplied by gamma every ``step_size`` steps."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1):
        _positive_int("StepLR", step_size=step_size)
        self.step_size, self.gamma = step_size, float(gamma)
        super().__init__(optimizer)

    def lr_at(self, t):
        return self.base_lr * self.gamma ** (t // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) (1 + cos(pi t / T_max)) / 2: half a cosine from base_lr
    down to eta_min over T_max steps (and back up after, as PyTorch's)."""

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0):
        _positive_int("CosineAnnealingLR", T_max=T_max)
        self.T_max, self.eta_min = T_max, float(eta_min)
        super().__init__(optimizer)

    def lr_at(self, t):
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2


class LinearLR(LRScheduler):
    """lr = base_lr * (start_factor + (end_factor - start_factor) min(t, total_iters) / total_iters):
    a linear warmup from start_factor * base_lr, then constant."""

    def __init__(self, optimizer, start_factor: float = 1 / 3, end_factor: float = 1.0, total_iters: int = 5):
        if not 0 < start_factor <= 1 or not 0 <= end_factor <= 1:
            raise ValueError(f"LinearLR: start_factor must lie in (0, 1] and end_factor in [0, 1], got "
                             f"{start_factor!r} and {end_factor!r}")
        _positive_int("LinearLR", total_iters=total_iters)
        self.start_factor, self.end_factor, self.total_iters = float(start_factor), float(end_factor), total_iters
        super().__init__(optimizer)

    def lr_at(self, t):
        fraction = min(t, self.total_iters) / self.total_iters
        return self.base_lr * (self.start_factor + (self.end_factor - self.start_factor) * fraction)


class SequentialLR(LRScheduler):
    """Schedules one after another: ``schedulers[i]`` from step ``milestones[i - 1]`` on, counting its
    own steps from 0 there (a warmup, then a cosine: ``SequentialLR(opt, [LinearLR(...),
    CosineAnnealingLR(...)], milestones=[warmup_steps])``)."""

    def __init__(self, optimizer, schedulers: list, milestones: list):
        if len(milestones) != len(schedulers) - 1 or list(milestones) != sorted(milestones):
            raise ValueError(f"SequentialLR: expected {len(schedulers) - 1} increasing milestones for "
                             f"{len(schedulers)} schedulers, got {list(milestones)}")
        if any(s.optimizer is not optimizer for s in schedulers):
            raise ValueError("SequentialLR: every scheduler must drive the optimizer it is given")
        self.schedulers, self.milestones = list(schedulers), list(milestones)
        super().__init__(optimizer)

    def lr_at(self, t):
        i = bisect.bisect_right(self.milestones, t)
        start = self.milestones[i - 1] if i else 0
        return self.schedulers[i].lr_at(t - start)


class OneCycleLR(LRScheduler):
    """The one-cycle policy (Smith & Topin), PyTorch's formulas: over ``total_steps`` steps the rate
    rises from max_lr / div_factor to max_lr in the first ``pct_start`` of the steps, then falls to
    max_lr / div_factor / final_div_factor; the momentum (Adam's beta1, SGD's momentum) moves the
    other way, max_momentum -> base_momentum -> max_momentum, when ``cycle_momentum``.

    Each phase anneals from its start value s to its end value e by a half cosine,
    e + (s - e) (1 + cos(pi f)) / 2, f the fraction of the phase done (or linearly, s + (e - s) f).
    Phase ends, in steps: pct_start * total_steps - 1 and total_steps - 1 (with ``three_phase`` a
    symmetric fall back to the initial rate comes between). Step it once per batch.
    """

    def __init__(self, optimizer, max_lr: float, total_steps: int | None = None, epochs: int | None = None,
                 steps_per_epoch: int | None = None, pct_start: float = 0.3, anneal_strategy: str = "cos",
                 cycle_momentum: bool = True, base_momentum: float = 0.85, max_momentum: float = 0.95,
                 div_factor: float = 25.0, final_div_factor: float = 1e4, three_phase: bool = False):
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError("OneCycleLR: give total_steps, or epochs and steps_per_epoch")
            _positive_int("OneCycleLR", epochs=epochs, steps_per_epoch=steps_per_epoch)
            total_steps = epochs * steps_per_epoch
        _positive_int("OneCycleLR", total_steps=total_steps)
        if not 0 < pct_start < 1:
            raise ValueError(f"OneCycleLR: pct_start must lie in (0, 1), got {pct_start!r}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"OneCycleLR: anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.total_steps, self.anneal_strategy = total_steps, anneal_strategy
        initial = max_lr / div_factor
        low = initial / final_div_factor
        if three_phase:
            self.phases = [(pct_start * total_steps - 1, initial, max_lr, max_momentum, base_momentum),
                           (2 * pct_start * total_steps - 2, max_lr, initial, base_momentum, max_momentum),
                           (total_steps - 1, initial, low, max_momentum, max_momentum)]
        else:
            self.phases = [(pct_start * total_steps - 1, initial, max_lr, max_momentum, base_momentum),
                           (total_steps - 1, max_lr, low, base_momentum, max_momentum)]
        self.cycle_momentum = cycle_momentum
        if cycle_momentum and not (hasattr(optimizer, "betas") or hasattr(optimizer, "momentum")):
            raise ValueError(f"OneCycleLR: {type(optimizer).__name__} has no momentum to cycle; "
                             f"pass cycle_momentum=False")
        optimizer.initial_lr = initial              # PyTorch's OneCycleLR sets it so, whatever lr was
        super().__init__(optimizer)

    def _anneal(self, start, end, f):
        if self.anneal_strategy == "linear":
            return (end - start) * f + start
        return end + (start - end) / 2.0 * (math.cos(math.pi * f) + 1)

    def _phase(self, t):
        """(fraction done, the phase) of step t."""
        if t > self.total_steps:
            raise ValueError(f"OneCycleLR: tried to step {t} times, but total_steps is {self.total_steps}")
        begin = 0.0
        for i, phase in enumerate(self.phases):
            end = phase[0]
            if t <= end or i == len(self.phases) - 1:
                return (t - begin) / (end - begin), phase
            begin = end

    def lr_at(self, t):
        f, (_, lr0, lr1, _, _) = self._phase(t)
        return self._anneal(lr0, lr1, f)

    def momentum_at(self, t):
        f, (_, _, _, m0, m1) = self._phase(t)
        return self._anneal(m0, m1, f)

    def step(self):
        super().step()
        if self.cycle_momentum:
            m = self.momentum_at(self.last_epoch)
            if hasattr(self.optimizer, "betas"):
                self.optimizer.betas = (m, self.optimizer.betas[1])
            else:
                self.optimizer.momentum = m
