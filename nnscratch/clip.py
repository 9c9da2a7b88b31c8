"""Gradient clipping by the global norm of all gradients, as ``torch.nn.utils.clip_grad_norm_``."""
from __future__ import annotations

import math

from .backend import get_array_module


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0) -> float:
    """Scale every gradient by min(1, max_norm / (total + 1e-6)), where total is the norm of all the
    gradients taken together as one vector: (sum over every element g of |g|^p)^(1/p), or the
    largest |g| for ``norm_type=inf``. Returns total (a float), the norm before clipping.

    One factor for all gradients keeps the update's direction and bounds its length, so a
    single bad batch cannot throw the weights far. The 1e-6 is PyTorch's.
    """
    params = [p for p in parameters]
    if not max_norm > 0:
        raise ValueError(f"clip_grad_norm_: max_norm must be positive, got {max_norm!r}")
    if not params:
        return 0.0
    p_norm = float(norm_type)
    norms = []
    for p in params:
        g = p.grad
        if p_norm == 2:
            flat = g.ravel()
            norms.append(float(get_array_module(g).vdot(flat, flat).real))     # sum of squares, one pass
        elif p_norm == math.inf:
            norms.append(float(abs(g).max()))
        else:
            norms.append(float((abs(g) ** p_norm).sum()))
    total = max(norms) if p_norm == math.inf else sum(norms) ** (1 / p_norm)
    coef = min(1.0, max_norm / (total + 1e-6))
    if coef < 1.0:
        for p in params:
            p.grad *= p.grad.dtype.type(coef)
    return total
