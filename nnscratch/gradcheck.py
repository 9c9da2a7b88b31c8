"""Numerical gradient checking: is ``backward`` the derivative of ``forward``?

Central differences in float64, (f(x + eps) - f(x - eps)) / (2 eps), compared with
what ``backward`` returns, for the input and every parameter of a layer (or the
prediction of a loss). Two modes:

* ``"full"``: the whole Jacobian, one column per perturbed element and one row per
  output element from a backward pass of each unit vector. Exact and exhaustive;
  for small inputs.
* ``"random"``: one directional derivative per tensor, as Chainer's
  ``check_backward`` does: for a random direction d and a random output weight r,
  d/dt sum(r * f(x + t d)) at t = 0 must equal sum(backward(r) * d). A few
  forward passes whatever the size; for large inputs.

On failure the report names the worst element (tensor, index, analytic and
numeric values).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .backend import get_array_module, to_numpy
from .layers.module import Module
from .losses import Loss


class GradcheckError(AssertionError):
    """The analytic and numerical gradients disagree; ``.result`` holds the report."""

    def __init__(self, result):
        super().__init__(str(result))
        self.result = result


@dataclass
class TensorReport:
    name: str
    shape: tuple
    max_abs_error: float
    max_rel_error: float
    worst: str            # where the largest violation sits, with both values
    ok: bool


@dataclass
class GradcheckResult:
    ok: bool
    mode: str
    tensors: list = field(default_factory=list)

    @property
    def worst(self) -> TensorReport:
        return max(self.tensors, key=lambda t: (not t.ok, t.max_rel_error))

    def __str__(self):
        head = f"gradcheck ({self.mode}): {'passed' if self.ok else 'FAILED'}"
        rows = [f"  {'ok ' if t.ok else 'BAD'} {t.name} {t.shape}: max abs err {t.max_abs_error:.3e}, "
                f"max rel err {t.max_rel_error:.3e}; worst {t.worst}" for t in self.tensors]
        return "\n".join([head] + rows)


def _targets(fn, inputs):
    """The tensors to differentiate: [(name, array)], float64 only."""
    if isinstance(fn, Loss):
        if len(inputs) != 2:
            raise TypeError("gradcheck of a loss takes (loss, prediction, target)")
        tensors = [("prediction", inputs[0])]
    elif isinstance(fn, Module):
        if len(inputs) != 1:
            raise TypeError("gradcheck of a module takes (module, x)")
        tensors = [("input", inputs[0])] + [(n, p.data) for n, p in fn.named_parameters()]
    else:
        raise TypeError(f"gradcheck: expected a Module or a Loss, got {type(fn).__name__}")
    for name, arr in tensors:
        if arr.dtype != np.float64:
            raise TypeError(f"gradcheck needs float64 for precise differences; {name} is {arr.dtype} "
                            f"(use x.astype(np.float64) and module.to(dtype=np.float64))")
    return tensors


def gradcheck(fn, *inputs, mode: str = "auto", eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-4,
              max_full: int = 2000, seed: int = 0, raise_exception: bool = True) -> GradcheckResult:
    """Check ``fn.backward`` against central differences of ``fn.forward``.

    fn: a ``Module`` called as ``gradcheck(module, x)`` (checks x and every
    parameter) or a ``Loss`` called as ``gradcheck(loss, pred, target)`` (checks
    pred). Arrays and parameters must be float64. An element passes when
    |analytic - numeric| <= atol + rtol * |numeric|.
    mode: "full", "random" or "auto" (full when the input and parameter
    elements number at most ``max_full``). Raises ``GradcheckError`` on failure
    unless ``raise_exception`` is False; returns the ``GradcheckResult``.
    """
    if mode not in ("auto", "full", "random"):
        raise ValueError(f"gradcheck: mode must be 'auto', 'full' or 'random', got {mode!r}")
    inputs = list(inputs)
    inputs[0] = inputs[0].copy()          # perturbed in place below; the caller's array stays untouched
    tensors = _targets(fn, inputs)
    tensors[0] = (tensors[0][0], inputs[0])
    if mode == "auto":
        mode = "full" if sum(t.size for _, t in tensors) <= max_full else "random"
    saved = [p.grad.copy() for p in _params(fn)]
    try:
        check = _full if mode == "full" else _random
        reports = [check(fn, inputs, name, arr, eps, atol, rtol, np.random.default_rng(seed + i))
                   for i, (name, arr) in enumerate(tensors)]
    finally:
        for p, g in zip(_params(fn), saved):
            p.grad[...] = g
    result = GradcheckResult(all(r.ok for r in reports), mode, reports)
    if raise_exception and not result.ok:
        raise GradcheckError(result)
    return result


def _params(fn):
    return fn.parameters() if isinstance(fn, Module) else []


def _forward(fn, inputs):
    """The output, flattened, as a float64 NumPy array (a loss gives shape (1,))."""
    out = fn.forward(*inputs)
    return np.array(to_numpy(out), dtype=np.float64).reshape(-1)   # a copy: out may view the input


def _backward(fn, inputs, name, arr, cotangent):
    """Gradient of sum(cotangent * f) with respect to ``arr``, as a NumPy array."""
    for p in _params(fn):
        p.zero_grad()
    out = fn.forward(*inputs)
    if isinstance(fn, Loss):
        grad = fn.backward() * float(cotangent.reshape(-1)[0])
    else:
        xp = get_array_module(out)
        grad = fn.backward(xp.asarray(cotangent.reshape(out.shape)))
    if name != "input" and name != "prediction":
        grad = dict(fn.named_parameters())[name].grad
    return to_numpy(grad).astype(np.float64).copy()


def _compare(name, shape, analytic, numeric, atol, rtol, label) -> TensorReport:
    err = np.abs(analytic - numeric)
    bound = atol + rtol * np.abs(numeric)
    rel = err / np.maximum(np.abs(numeric), atol)
    k = int(np.argmax(err / bound))           # nearest to failing, or failing worst
    worst = f"{label(k)}: analytic {analytic.flat[k]:.9g}, numeric {numeric.flat[k]:.9g}"
    return TensorReport(name, shape, float(err.max()), float(rel.max()), worst,
                        bool((err <= bound).all()))


def _full(fn, inputs, name, arr, eps, atol, rtol, rng) -> TensorReport:
    """Every d out[m] / d arr[k] from differences, against one backward pass per output element."""
    n_out = _forward(fn, inputs).size
    # arr is written element by element, in place (it may be a layer's parameter, in any memory
    # layout: reshape(-1) would copy a Fortran-ordered one), in C order, as the analytic rows below
    numeric = np.empty((n_out, arr.size))
    for k, at in enumerate(np.ndindex(*arr.shape)):
        orig = arr[at].item()
        arr[at] = orig + eps
        plus = _forward(fn, inputs)
        arr[at] = orig - eps
        minus = _forward(fn, inputs)
        arr[at] = orig
        numeric[:, k] = (plus - minus) / (2 * eps)
    analytic = np.empty_like(numeric)
    for m in range(n_out):
        e = np.zeros(n_out)
        e[m] = 1.0
        analytic[m] = _backward(fn, inputs, name, arr, e).reshape(-1)
    shape = tuple(arr.shape)

    def label(i):
        m, k = divmod(i, arr.size)
        return f"d out.flat[{m}] / d {name}{[int(i) for i in np.unravel_index(k, shape)]}"
    return _compare(name, shape, analytic, numeric, atol, rtol, label)


def _random(fn, inputs, name, arr, eps, atol, rtol, rng) -> TensorReport:
    """One directional derivative along a random direction, with random output weights."""
    r = rng.standard_normal(_forward(fn, inputs).shape)
    d = rng.standard_normal(arr.shape)
    xp = get_array_module(arr)
    d_dev = xp.asarray(d)
    orig = arr.copy()
    arr += eps * d_dev
    plus = float((r * _forward(fn, inputs)).sum())
    arr[...] = orig - eps * d_dev
    minus = float((r * _forward(fn, inputs)).sum())
    arr[...] = orig
    numeric = np.array([(plus - minus) / (2 * eps)])
    analytic = np.array([float((_backward(fn, inputs, name, arr, r) * d).sum())])
    return _compare(name, tuple(arr.shape), analytic, numeric, atol, rtol, lambda i: f"directional derivative along d of {name}")
