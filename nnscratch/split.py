"""A CPU batch split into parts, one per core: how many parts, and the model copies that run them.

A CNN step at the paper's batch of 64 is some forty calls; left whole, each call is split across
the cores by whoever runs it (OpenBLAS's threads, numba's), which wake up and wait for each other
forty times a step. Split by images instead, each core runs every call single-threaded on its own
part, start to end (``threads.run_parallel``), and the cores meet once per pass. Two callers do
this:

- ``Sequential.forward`` / ``backward`` in training mode, so the plain loop of the API contract
  (``loss_fn(model(x), y)``, ``model.backward(loss_fn.backward())``) is split: the parts meet after
  the forward pass (the loss sees the whole batch's output) and after the backward pass (the
  parameters' gradients are summed);
- ``TrainStep``, which meets once a step: each part also computes its own loss.

Each part runs through a replica of the model: a deep copy that shares the model's parameter
arrays (so an optimizer's in-place update reaches every replica) and has its own gradients and
layer buffers. Part 0 is the model itself. Only the order of the gradient's sums differs from the
whole batch's.
"""
from __future__ import annotations

import copy

import numpy as np

from .threads import blas_thread_count, splitting_allowed as allowed, whole_batches  # noqa: F401 (re-exported)

MIN_PART = 16          # images per part at least, when the number of parts is left to choose


def parts_for(model, batch: int, workers: int | None) -> int:
    """``workers`` parts (at most one per image), or when it is None the default: one per OpenBLAS
    thread (that is, per core, or ``OPENBLAS_NUM_THREADS``), at most one per ``MIN_PART`` images, and
    only for a network with a Conv2d. Convolutions reuse each weight at every pixel, so their
    gradients are small next to the work; the MLNN's 2.8 M gradient sums would cost more than the
    split gains (its step at batch 64: 6.8 -> 12.1 ms on two cores). Without a reachable OpenBLAS
    (whose threads could not be held to one per part) nothing is split by default.

    A model with a layer whose ``forward`` or ``backward`` was replaced on the instance (a timing
    wrapper, a hook) runs whole: its replicas would copy the replacement, which still calls the
    original layer."""
    from .layers import Conv2d
    convolutional = False
    for m in model.modules():
        own = vars(m)
        if "forward" in own or "backward" in own:
            return 1
        convolutional = convolutional or isinstance(m, Conv2d)
    if workers is not None:
        return max(1, min(int(workers), batch))
    if not convolutional:
        return 1
    cores = blas_thread_count()
    return 1 if cores is None else max(1, min(cores, batch // MIN_PART))


def check_workers(owner, workers):
    """None or a positive int, or a ValueError naming ``owner`` (a name, or a module shown by its repr)."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, (int, np.integer))
                                or workers < 1):
        raise ValueError(f"{owner}: workers must be a positive int or None, got {workers!r}")


def cuts(batch: int, ways: int) -> list:
    """``ways`` slices of ``range(batch)`` whose sizes differ by at most one, in order."""
    return [slice(batch * k // ways, batch * (k + 1) // ways) for k in range(ways)]


class Replicas:
    """The copies of a model that run parts 1, 2, ... of a split batch (part 0 is the model).

    A copy is made again when the model's parameter arrays were replaced (``model.to``, a loaded
    state of another dtype). Copies and deep copies of a model carry no replicas: they would share
    nothing with the copy."""

    def __init__(self):
        self._copies = []                 # [(model, parameters)]

    def parts(self, model, ways: int) -> list:
        """[(model, parameters)] for ``ways`` parts: the model first, then its replicas."""
        params = model.parameters()
        stale = len(self._copies) != ways - 1 or any(
            len(p) != len(params) or any(a.data is not b.data for a, b in zip(p, params)) for _, p in self._copies)
        if stale:
            self._copies = [_replica(model) for _ in range(ways - 1)]
        for copy_, _ in self._copies:
            if copy_.training != model.training:
                copy_.train(model.training)
        return [(model, params)] + self._copies

    def __deepcopy__(self, memo):
        return Replicas()

    def __getstate__(self):
        return {"_copies": []}


def replicas_of(model) -> Replicas:
    """The model's replicas (kept on the model, made on first use)."""
    replicas = model.__dict__.get("_replicas")
    if replicas is None:
        replicas = model._replicas = Replicas()
    return replicas


def _replica(model) -> tuple:
    """(copy, its parameters): a deep copy whose parameter values are the model's own arrays; its
    gradients start at zero."""
    shared = {id(p.data): p.data for p in model.parameters()}
    twin = copy.deepcopy(model, shared)
    params = twin.parameters()
    for p in params:
        p.zero_grad()
    return twin, params


def gather_grads(parts: list):
    """Add the replicas' gradients to the model's (part 0's) and clear the replicas'."""
    for own, *others in zip(parts[0][1], *(p[1] for p in parts[1:])):
        for other in others:
            own.grad += other.grad
            other.zero_grad()


def clear_replica_grads(parts: list):
    """Clear the replicas' gradients (after a failed pass: what it added is dropped)."""
    for _, params in parts[1:]:
        for p in params:
            p.zero_grad()
