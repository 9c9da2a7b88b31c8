"""Optimizers with PyTorch's update rules, updating parameters in place.

The arithmetic of one step lives in the kernels (``kernels/reference.py`` reads
like the formulas below; the numba and CuPy twins fuse it into one pass), so
this file holds the bookkeeping: parameters, per-parameter state, devices.
"""
from __future__ import annotations

import math

from . import kernels
from .backend import check_device, device_of, get_array_module, is_gpu_array, to_device, to_numpy


class Optimizer:
    """Holds the parameters (and per-parameter state) of one model.

    params: an iterable of ``Parameter`` (e.g. ``model.parameters()``).
    """

    def __init__(self, params, lr: float):
        if hasattr(params, "parameters") and callable(params.parameters):
            raise TypeError(f"{type(self).__name__}: expected the model's parameters, got a {type(params).__name__}; "
                            f"pass model.parameters()")
        try:
            self.params = list(params)
        except TypeError:
            raise TypeError(f"{type(self).__name__}: expected an iterable of Parameters (model.parameters()), "
                            f"got {type(params).__name__}") from None
        if not all(hasattr(p, "data") and hasattr(p, "grad") for p in self.params):
            raise TypeError(f"{type(self).__name__}: expected Parameters (model.parameters()), got "
                            f"{sorted({type(p).__name__ for p in self.params})}")
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"{type(self).__name__}: lr must be a positive number, got {lr!r}")
        self.lr = float(lr)
        self.state = [dict() for _ in self.params]   # one dict of arrays per parameter

    def zero_grad(self):
        for p in self.params:
            p.zero_grad()

    def step(self):
        """One update of every parameter from its ``.grad``."""
        self._prepare()
        self._apply()

    def _prepare(self):
        """The host's share of a step: devices checked, state created, step counts advanced.

        It launches no work that reads a gradient, so a CUDA graph that recorded ``_apply``
        (``step.py``) stays right when this part runs in Python before each replay.
        """
        for p, state in zip(self.params, self.state):
            self._check_device(p, state)
            self._prepare_one(p, state)

    def _prepare_one(self, p, state):
        pass

    def _graph_ready(self) -> bool:
        """After ``_prepare``: whether ``_apply`` reads every number that changes between steps from
        device memory, so that a recorded CUDA graph of it can be replayed (step.py)."""
        return True

    def _apply(self):
        """The device's share of a step: every parameter updated in place from its gradient."""
        for p, state in zip(self.params, self.state):
            self._update(p, state)

    def _update(self, p, state):
        raise NotImplementedError

    def _check_device(self, p, state):
        for name, buf in state.items():
            if hasattr(buf, "shape") and is_gpu_array(buf) != is_gpu_array(p.data):
                raise RuntimeError(
                    f"{type(self).__name__}: the state '{name}' is on the {device_of(buf).upper()} but its "
                    f"parameter on the {device_of(p.data).upper()}; after model.to('{device_of(p.data)}') "
                    f"call optimizer.to('{device_of(p.data)}')")

    def to(self, device: str):
        """Move the optimizer state to ``device``; returns ``self``."""
        check_device(device)
        for state in self.state:
            for k, v in state.items():
                if hasattr(v, "shape"):
                    state[k] = to_device(v, device)
        return self

    def state_dict(self, copy: bool = True) -> dict:
        """Hyperparameters and per-parameter state, as NumPy arrays: copies, or with ``copy=False`` (on
        the CPU) the optimizer's own arrays, which its next step changes (a checkpoint written at once)."""
        def array(v):
            v = to_numpy(v)
            return v.copy() if copy else v
        return {"hyper": self._hyper(),
                "state": [{k: array(v) if hasattr(v, "shape") else v for k, v in s.items()} for s in self.state]}

    def load_state_dict(self, sd: dict):
        if len(sd["state"]) != len(self.params):
            raise ValueError(f"{type(self).__name__}.load_state_dict: state for {len(sd['state'])} parameters, "
                             f"the optimizer has {len(self.params)}")
        for k, v in sd["hyper"].items():
            setattr(self, k, v)
        self.state = []
        for p, s in zip(self.params, sd["state"]):
            xp = get_array_module(p.data)
            # moments in the parameter's memory layout (Linear's weight is Fortran-ordered), so the fused
            # update kernels see one layout (see kernels.cpu._memory_views)
            order = "F" if p.data.flags.f_contiguous and not p.data.flags.c_contiguous else "C"
            self.state.append({k: xp.asarray(v, order=order) if hasattr(v, "shape") else v for k, v in s.items()})
        return self

    def _hyper(self) -> dict:
        return {"lr": self.lr}

    def __repr__(self):
        args = ", ".join(f"{k}={v}" for k, v in self._hyper().items())
        return f"{type(self).__name__}({args})"


def _check_range(owner, name, value, lo, hi=math.inf, hi_open=False, lo_open=False):
    ok = (isinstance(value, (int, float)) and (lo < value if lo_open else lo <= value)
          and (value < hi if hi_open else value <= hi))
    if not ok:
        raise ValueError(f"{owner}: {name} must lie in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}, "
                         f"got {value!r}")


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, as ``torch.optim.SGD``.

        g = grad + weight_decay * p
        b = g on the first step, else momentum * b + (1 - dampening) * g
        g = g + momentum * b if nesterov else b        (when momentum > 0)
        p = p - lr * g
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 dampening: float = 0.0, nesterov: bool = False):
        super().__init__(params, lr)
        _check_range("SGD", "momentum", momentum, 0.0)
        _check_range("SGD", "weight_decay", weight_decay, 0.0)
        _check_range("SGD", "dampening", dampening, 0.0, 1.0)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov needs momentum > 0 and dampening = 0")
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)
        self.dampening, self.nesterov = float(dampening), bool(nesterov)

    def _hyper(self):
        return {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
                "dampening": self.dampening, "nesterov": self.nesterov}

    def _prepare(self):
        self._first = set()                   # ids of the parameters taking their first step
        super()._prepare()

    def _prepare_one(self, p, state):
        if "momentum_buffer" not in state:
            self._first.add(id(p))
            if self.momentum:
                state["momentum_buffer"] = get_array_module(p.data).empty_like(p.data)

    def _update(self, p, state):
        kernels.sgd_update(p.data, p.grad, state.get("momentum_buffer"), self.lr, self.momentum, self.dampening,
                           self.weight_decay, self.nesterov, id(p) in self._first)


class Adam(Optimizer):
    """Adam (Kingma & Ba), as ``torch.optim.Adam`` (L2 ``weight_decay`` added to the gradient).

        g = grad + weight_decay * p
        m = b1 * m + (1 - b1) * g;   v = b2 * v + (1 - b2) * g^2;   t = t + 1
        p = p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    The bias corrections undo the pull of m and v towards their zero start.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"Adam: betas must be a pair, got {betas!r}")
        for i, b in enumerate(betas):
            _check_range("Adam", f"betas[{i}]", b, 0.0, 1.0, hi_open=True)
        # eps = 0 (which PyTorch accepts) divides 0 by 0 for a weight whose gradient has always been 0: NaN
        _check_range("Adam", "eps", eps, 0.0, lo_open=True)
        _check_range("Adam", "weight_decay", weight_decay, 0.0)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps, self.weight_decay = float(eps), float(weight_decay)

    def _hyper(self):
        return {"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay}

    def _prepare_one(self, p, state):
        if "exp_avg" not in state:
            xp = get_array_module(p.data)
            state.update(step=0, exp_avg=xp.zeros_like(p.data), exp_avg_sq=xp.zeros_like(p.data))
        state["step"] += 1

    def _prepare(self):
        super()._prepare()
        self._coef = None
        steps = {s["step"] for s in self.state}
        if len(steps) == 1 and all(is_gpu_array(p.data) for p in self.params):
            # On a GPU the two step-dependent factors go to the kernels through device memory, written
            # here, so that a recorded CUDA graph of _apply reads each step's own values
            t = steps.pop()
            # (2,) float64: the step size lr / (1 - beta1^t) and sqrt(1 - beta2^t)
            self._coef = self._kept("_coef_kept", 2, "float64")
            self._coef[0:1].fill(self.lr / (1 - self.betas[0] ** t))
            self._coef[1:2].fill((1 - self.betas[1] ** t) ** 0.5)

    def _graph_ready(self) -> bool:
        return self._coef is not None

    def _kept(self, name: str, size: int, dtype):
        """A (size,) array on the parameters' device, made once and kept across steps (a recorded CUDA
        graph reads the step's numbers from it)."""
        kept = self.__dict__.get(name)
        if kept is None:
            kept = self.__dict__[name] = get_array_module(self.params[0].data).empty(size, dtype=dtype)
        return kept

    def _l2(self) -> float:
        """The weight decay added to the gradient (Adam's L2 term; AdamW decays apart from it)."""
        return self.weight_decay

    def _update(self, p, state):
        if self._coef is not None:
            kernels.adam_update_coef(p.data, p.grad, state["exp_avg"], state["exp_avg_sq"], self._coef,
                                     self.betas[0], self.betas[1], self.eps, self._l2())
            return
        kernels.adam_update(p.data, p.grad, state["exp_avg"], state["exp_avg_sq"], self.lr, self.betas[0],
                            self.betas[1], self.eps, self._l2(), state["step"])


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``.

        p = p * (1 - lr * weight_decay)                      (the decay, apart from the gradient)
        then Adam's step on p with the gradient alone (no L2 term in g)

    Adam's L2 term is divided by sqrt(v) like the gradient, so parameters with large gradients
    are barely decayed; here every parameter shrinks by the same factor each step.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)

    def _prepare(self):
        super()._prepare()
        if self._coef is not None:
            # the decay factor goes through device memory too, so a recorded graph reads each step's lr
            self._decay = self._kept("_decay_kept", 1, self.params[0].dtype)
            self._decay.fill(1 - self.lr * self.weight_decay)
        else:
            self._decay = 1 - self.lr * self.weight_decay

    def _l2(self) -> float:
        return 0.0

    def _update(self, p, state):
        if self.weight_decay:
            p.data *= self._decay
        super()._update(p, state)
